# syntax=docker/dockerfile:1
# atv-prune coordinator: JobService, job state in NATS JetStream, Kubernetes worker discovery.
# CPU only: it loads the engine for graph analysis with the CPU binaries that ship inside the
# onnxruntime-node npm package, so the CUDA download is skipped. Build from the repository root
# (deploy/coordinator.Dockerfile.dockerignore keeps the context to the sources):
#
#   docker build -f deploy/coordinator.Dockerfile -t atv-prune/coordinator:0.1.0 .

# 1. Compile the TypeScript (dev dependencies included).
FROM node:24-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json .npmrc ./
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --omit=optional
COPY tsconfig.json ./
COPY services ./services
RUN npx tsc -p tsconfig.json

# 2. Production dependencies; onnxruntime-node keeps its bundled CPU binaries.
FROM node:24-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# --omit=optional: the only optional dependencies are the node-linux-* binaries that pin the
# development runtime; the image has its own Node 24.
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --omit=optional --no-audit --no-fund \
 && test -f node_modules/onnxruntime-node/bin/napi-v6/linux/x64/onnxruntime_binding.node

# 3. Runtime.
FROM node:24-bookworm-slim
RUN groupadd --system --gid 10001 atvp \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin atvp
WORKDIR /app
ENV NODE_ENV=production
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist/services ./dist/services
# "type": "module": Node reads it to load dist/**/*.js as ES modules.
COPY package.json ./
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["node", "dist/services/coordinator/src/main.js"]
CMD ["--listen", "0.0.0.0:50051", "--metrics-port", "9090"]
