#!/usr/bin/env bash
# bench/gpu.sh: prune an 8B-shaped model slice on CUDA and print its figures as JSON lines.
#
# Run it by hand on a machine with an NVIDIA GPU, CUDA 12 and cuDNN 9; CI never runs it (CI has
# no GPU). From the repository root:
#     bash bench/gpu.sh                 # build, install the CUDA provider, generate, prune, report
# Steps:
#   1. npm ci + tsc (ONNXRUNTIME_NODE_INSTALL=skip), then the CUDA build of onnxruntime-node:
#      ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js
#      (downloads the CUDA binaries: the GPU host needs network for this step only);
#   2. checks that the CUDA provider library is there, and stops with exit 3 if it is not;
#   3. `atvp gen-model`: GPU_LAYERS (3) blocks at Llama-3-8B width (hidden 4096, intermediate
#      14336, 32 heads, 8 kv heads, GQA), a small vocabulary (the embedding is not pruned);
#   4. `atvp prune --device cuda` (ATV, sequential propagation) on the generated calibration set;
#   5. one JSON line per block, then one for the job, from report.json and the prune events:
#        {"bench":"gpu","block":i,"seconds":..,"tokensPerSecond":..,"maskSeconds":..,"hostBytes":..,"weightBytes":..}
#      maskSeconds / hostBytes are null where the engine does not report them (yet).
# Environment: GPU_LAYERS, GPU_SAMPLES (8), GPU_SEQ_LEN (256), GPU_METHOD (atv), GPU_WORK (.work/gpu),
# GPU_SKIP_SETUP=1 (no npm ci / tsc / provider install: use what is built).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$(scripts/node-runtime.sh):$PATH"

layers=${GPU_LAYERS:-3}
samples=${GPU_SAMPLES:-8}
seq_len=${GPU_SEQ_LEN:-256}
method=${GPU_METHOD:-atv}
work=${GPU_WORK:-.work/gpu}

if [ "${GPU_SKIP_SETUP:-0}" != 1 ]; then
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
  npx tsc -p tsconfig.json
  ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js
fi

# Before generating gigabytes of weights: is there a CUDA provider at all?
provider=$(find node_modules/onnxruntime-node/bin -name 'libonnxruntime_providers_cuda.so*' 2>/dev/null | head -n 1 || true)
if [ -z "$provider" ]; then
  echo "bench/gpu.sh: no CUDA provider found (node_modules/onnxruntime-node/bin/**/libonnxruntime_providers_cuda.so);" \
       "run ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js on a host with network, CUDA 12 and cuDNN 9" >&2
  exit 3
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "bench/gpu.sh: no nvidia-smi: this host has no NVIDIA driver, --device cuda cannot run" >&2
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2

rm -rf "$work"
mkdir -p "$work"
node dist/services/cli/src/main.js gen-model --layers "$layers" --hidden 4096 --intermediate 14336 \
  --heads 32 --kv-heads 8 --attention gqa --vocab 1024 --samples "$samples" --seq-len "$seq_len" \
  --out "$work/model" >"$work/gen.json"
model=$(node -e 'console.log(JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")).modelPath)' "$work/gen.json")
calib=$(node -e 'console.log(JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")).calibPath)' "$work/gen.json")
node dist/services/cli/src/main.js prune --model "$model" --calib "$calib" \
  --method "$method" --sparsity 0.5 --device cuda --out "$work/pruned" 2>"$work/prune.log" \
  || { cat "$work/prune.log" >&2; echo "bench/gpu.sh: prune --device cuda failed (see above)" >&2; exit 1; }

node - "$work/pruned/report.json" <<'EOF'
const fs = require("node:fs");
const report = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const bytesOf = { float: 4, float32: 4, float16: 2, fp16: 2, fp32: 4 };
for (const b of report.blocks) {
  const layers = report.layers.filter((l) => l.block === b.index);
  const weightBytes = layers.reduce((a, l) => a + l.params * (bytesOf[String(l.dataType).toLowerCase()] ?? 4), 0);
  console.log(JSON.stringify({
    bench: "gpu", block: b.index, label: b.label, seconds: b.seconds, tokensPerSecond: b.tokensPerSecond,
    maskSeconds: b.maskSeconds ?? null, hostBytes: b.hostBytes ?? null, weightBytes,
  }));
}
const t = report.totals;
console.log(JSON.stringify({ bench: "gpu", device: t.device, blocks: t.blocks, samples: t.samples, tokens: t.tokens, seconds: t.seconds, method: report.method }));
EOF
