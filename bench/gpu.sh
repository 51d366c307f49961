#!/usr/bin/env bash
# bench/gpu.sh: run an 8B-shaped model slice on CUDA and print its per-block figures as JSON lines.
#
# Run it by hand on a machine with an NVIDIA GPU, CUDA 12 and cuDNN 9; CI never runs it (CI has
# no GPU). From the repository root:
#     bash bench/gpu.sh                 # build, install the CUDA provider, generate, measure, prune
# Steps:
#   1. npm ci + tsc (ONNXRUNTIME_NODE_INSTALL=skip), then the CUDA build of onnxruntime-node:
#      ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js
#      (downloads the CUDA binaries: the GPU host needs network for this step only);
#   2. checks that the CUDA provider library and nvidia-smi are there, then prunes a one-block toy
#      model on CUDA (seconds): a provider without the CUDA 12 / cuDNN 9 libraries it loads stops
#      here with onnxruntime's own message. Any of these failing stops the script with exit 3,
#      before gigabytes of weights are generated;
#   3. `atvp gen-model`: GPU_LAYERS (3) blocks at Llama-3-8B width (hidden 4096, intermediate
#      14336, 32 heads, 8 kv heads, GQA), a small vocabulary (the embedding is not pruned);
#   4. bench/blockFigures.ts on CUDA, once per statistics setting (GPU_STATS: host, then graph):
#      every block through the engine (sequential propagation, nothing written), one JSON line
#      per block, then one summing the blocks:
#        {"bench":"gpu","block":i,"label":..,"device":"cuda","stats":"host"|"graph","seconds":..,
#         "tokensPerSecond":..,"maskSeconds":..,"hostBytes":..,"weightBytes":..}
#        {"bench":"gpu","device":"cuda","stats":..,"method":..,"threads":..,"blocks":..,"samples":..,
#         "tokens":..,"seconds":..,"tokensPerSecond":..,"maskSeconds":..,"hostBytes":..,"weightBytes":..}
#      Every figure is measured (no nulls): seconds and tokensPerSecond are the engine's own (as in
#      report.json), maskSeconds the wall time of the block's mask selection, hostBytes the bytes
#      the block's onnxruntime runs copy back to the host beside the hidden states (whole
#      activations with host statistics, [in]-sized sums with graph), weightBytes the block's
#      prunable weights;
#   5. `atvp prune --device cuda` (the CLI path, writing a pruned model; GPU_PRUNE=0 skips it), and
#      one line from its report.json:
#        {"bench":"gpu_prune","device":"cuda","method":..,"blocks":..,"samples":..,"tokens":..,"seconds":..,"sparsity":..}
#   6. `atvp plan --calibrate --device cuda --method GPU_METHOD --out $GPU_WORK/cost-cuda.json`: the cost table
#      `atvp plan --cost` predicts GPU jobs from (GPU_PLAN=0 skips it), and one line:
#        {"bench":"gpu_cost_table","device":"cuda","method":..,"secondsPerTokenParam":..,"secondsPerSample":..,"secondsPerCompressUnit":..}
# Environment: GPU_LAYERS, GPU_SAMPLES (8), GPU_SEQ_LEN (256), GPU_METHOD (atv), GPU_STATS ("host graph"),
# GPU_THREADS (onnxruntime threads; default: the machine's cores), GPU_PRUNE (1), GPU_PLAN (1), GPU_WORK (.work/gpu),
# GPU_SKIP_SETUP=1 (no npm ci / tsc / provider install: use what is built), GPU_HIDDEN (4096),
# GPU_INTERMEDIATE (14336), GPU_HEADS (32), GPU_KV_HEADS (8): the slice's shape,
# GPU_DEVICE (cuda): cpu runs every step on onnxruntime's CPU provider instead (no provider or
# nvidia-smi check, no provider install): how the script itself is tested on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$(scripts/node-runtime.sh):$PATH"

layers=${GPU_LAYERS:-3}
samples=${GPU_SAMPLES:-8}
seq_len=${GPU_SEQ_LEN:-256}
method=${GPU_METHOD:-atv}
stats_settings=${GPU_STATS:-host graph}
threads=${GPU_THREADS:-}
work=${GPU_WORK:-.work/gpu}
device=${GPU_DEVICE:-cuda}
case "$device" in
  cuda | cpu) ;;
  *) echo "bench/gpu.sh: GPU_DEVICE must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac

if [ "${GPU_SKIP_SETUP:-0}" != 1 ]; then
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
  npx tsc -p tsconfig.json
  if [ "$device" = cuda ]; then ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js; fi
fi

if [ "$device" = cuda ]; then
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
else
  echo "bench/gpu.sh: GPU_DEVICE=$device: every step runs on onnxruntime's CPU provider (a check of the script, not GPU figures)" >&2
fi

rm -rf "$work"
mkdir -p "$work"
# A one-block toy first: the provider loads its CUDA and cuDNN libraries only when a session
# starts, so this is where a host with the provider but the wrong CUDA stops, in seconds.
node dist/services/cli/src/main.js gen-model --layers 1 --hidden 64 --samples 2 --seq-len 16 --out "$work/smoke" >"$work/smoke-gen.json"
if ! node dist/services/cli/src/main.js prune --model "$work/smoke/model.onnx" --calib "$work/smoke/calib.jsonl" \
    --sparsity 0.5 --device "$device" --out "$work/smoke-pruned" >/dev/null 2>"$work/smoke.log"; then
  cat "$work/smoke.log" >&2
  echo "bench/gpu.sh: a one-block prune with --device $device failed (above): onnxruntime-node $(node -p 'require("onnxruntime-node/package.json").version')'s" \
       "CUDA provider needs the CUDA 12 runtime, cuBLAS 12 and cuDNN 9 libraries where the loader finds them (ldconfig or LD_LIBRARY_PATH)" >&2
  exit 3
fi
node dist/services/cli/src/main.js gen-model --layers "$layers" --hidden "${GPU_HIDDEN:-4096}" --intermediate "${GPU_INTERMEDIATE:-14336}" \
  --heads "${GPU_HEADS:-32}" --kv-heads "${GPU_KV_HEADS:-8}" --attention gqa --vocab 1024 --samples "$samples" --seq-len "$seq_len" \
  --out "$work/model" >"$work/gen.json"
model=$(node -e 'console.log(JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")).modelPath)' "$work/gen.json")
calib=$(node -e 'console.log(JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")).calibPath)' "$work/gen.json")
threads_flag=()
if [ -n "$threads" ]; then threads_flag=(--threads "$threads"); fi
for stats in $stats_settings; do
  node dist/bench/blockFigures.js --model "$model" --calib "$calib" --device "$device" --stats "$stats" \
    --method "$method" ${threads_flag[@]+"${threads_flag[@]}"} 2>"$work/figures-$stats.log" \
    || { cat "$work/figures-$stats.log" >&2; echo "bench/gpu.sh: blockFigures --device $device --stats $stats failed (see above)" >&2; exit 1; }
done

if [ "${GPU_PRUNE:-1}" != 0 ]; then
  node dist/services/cli/src/main.js prune --model "$model" --calib "$calib" \
    --method "$method" --sparsity 0.5 --device "$device" ${threads_flag[@]+"${threads_flag[@]}"} --out "$work/pruned" >"$work/prune.events" 2>"$work/prune.log" \
    || { cat "$work/prune.log" >&2; echo "bench/gpu.sh: prune --device $device failed (see above)" >&2; exit 1; }
  node -e '
const t = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
console.log(JSON.stringify({ bench: "gpu_prune", device: t.totals.device, method: t.method, blocks: t.totals.blocks, samples: t.totals.samples,
  tokens: t.totals.tokens, seconds: t.totals.seconds, sparsity: t.totals.sparsity }));
' "$work/pruned/report.json"
fi

if [ "${GPU_PLAN:-1}" != 0 ]; then
  node dist/services/cli/src/main.js plan --calibrate --device "$device" --method "$method" ${threads_flag[@]+"${threads_flag[@]}"} \
    --out "$work/cost-$device.json" >/dev/null 2>"$work/calibrate.log" \
    || { cat "$work/calibrate.log" >&2; echo "bench/gpu.sh: plan --calibrate --device $device failed (see above)" >&2; exit 1; }
  node -e '
const t = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
for (const [method, c] of Object.entries(t.methods)) console.log(JSON.stringify({ bench: "gpu_cost_table", device: t.machine.device, method,
  secondsPerTokenParam: c.secondsPerTokenParam, secondsPerSample: c.secondsPerSample, secondsPerCompressUnit: c.secondsPerCompressUnit }));
' "$work/cost-$device.json"
fi
