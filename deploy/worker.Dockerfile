# syntax=docker/dockerfile:1
# atv-prune GPU worker: WorkerService on CUDA 12 + cuDNN 9 with onnxruntime-node's CUDA
# execution provider. Build from the repository root (the build context must be the root;
# deploy/worker.Dockerfile.dockerignore keeps it to the sources):
#
#   docker build -f deploy/worker.Dockerfile -t atv-prune/worker:0.1.0 .
#
# The CUDA base needs a node driver that runs CUDA 12.6 (R560+, or a datacenter driver the
# image's NVIDIA_REQUIRE_CUDA accepts); for older drivers build with
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
# (both ship cuDNN 9, which onnxruntime's CUDA 12 build needs).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# 1. Compile the TypeScript (dev dependencies included).
FROM node:24-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json .npmrc ./
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --omit=optional
COPY tsconfig.json ./
COPY services ./services
RUN npx tsc -p tsconfig.json

# 2. Production dependencies, with the CUDA build of onnxruntime-node: its install script
#    fetches the CUDA execution provider (not shipped in the npm package) for CUDA 12. The
#    project's package.json denies that script to npm (allowScripts), so it runs here explicitly,
#    whatever npm version the base image bundles.
FROM node:24-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --omit=optional --no-audit --no-fund \
 && ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js \
 && test -f node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so

# 3. Runtime: the CUDA/cuDNN runtime libraries, the official Node 24 binary (from the
#    official node image, where it is installed from the verified nodejs.org tarball), the
#    production node_modules and the compiled services. No compiler, no npm.
FROM ${CUDA_IMAGE}
COPY --from=deps /usr/local/bin/node /usr/local/bin/node
RUN groupadd --system --gid 10001 atvp \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin atvp \
 && node --version
WORKDIR /app
ENV NODE_ENV=production \
    CUDA_CACHE_PATH=/tmp/cuda-cache
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist/services ./dist/services
# "type": "module": Node reads it to load dist/**/*.js as ES modules.
COPY package.json ./
USER 10001:10001
EXPOSE 50051 9090
# Node options: services/worker/src/nodeFlags.ts (V8 reads heap sizes only at start).
ENTRYPOINT ["node", "--initial-old-space-size=256", "dist/services/worker/src/main.js"]
CMD ["--listen", "0.0.0.0:50051", "--device", "auto", "--metrics-port", "9090"]
