#!/usr/bin/env bash
# Preference tuning on the CUDA execution provider, next to PyTorch on the
# same GPU:
#   1. the whole demo pipeline (generate .. tune) with device = "cuda";
#   2. one LoRA DPO optimizer step (benches/tune.rs on CUDA) against
#      tools/gpu/torch_dpo_step.py on CUDA, demo policy and, when given, a
#      larger random Llama bundle (weights recreated by tools/gpu/make_weights.py);
#   3. the tune stage itself on that larger bundle (imported en/fr demo pairs).
# Peak GPU memory is the maximum of nvidia-smi's memory.used while each
# command runs, minus the idle value before it (CUDA context included, for
# both engines alike).
#
#   ORT_DYLIB_PATH=.../libonnxruntime.so.1.31.1 LD_LIBRARY_PATH=<CUDA 13 + cuDNN 9 libs> \
#   tools/gpu/tune_check.sh CROCO BENCH_TUNE [BIG_BUNDLE] [PYTHON]
#
# CROCO: the croco binary; BENCH_TUNE: the compiled benches/tune.rs
# (`cargo bench --bench tune --no-run` prints its path); PYTHON: one with torch.
# A BIG_BUNDLE of a bfloat16 checkpoint (`python -m tools.export random-llama
# --dtype bfloat16`) runs its bfloat16 training graphs; the demo policy is
# float32, so its parts measure the float32 graphs (their attention's
# GroupQueryAttention has no float32 CUDA kernel in the inference graphs:
# generate and ref_logps attend on the CPU there).
set -euo pipefail
croco=$1
bench=$2
big=${3:-}
[[ -z "$big" ]] || big=$(cd "$big" && pwd)
python=${4:-python3}
device=${CROCO_CHECK_DEVICE:-cuda}   # cpu: a dry run of this script without a GPU
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)

# Runs "$@" while sampling GPU memory; prints "peak_gpu_mb=N" after its output.
with_gpu_memory() {
  local samples="$work/mem.$RANDOM" idle
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$samples" &
  local poller=$!
  "$@"
  kill "$poller"
  wait "$poller" 2>/dev/null || true
  echo "peak_gpu_mb=$(( $(sort -n "$samples" | tail -1) - idle ))" >&2
}

pipeline() { # source device root -> pipeline file on stdout
  sed -e '/^device = /d' -e "s|^root = .*|root = \"$3\"\ndevice = \"$2\"|" \
      -e "s|\"\.\./data/|\"$repo/data/|g" "$1"
}

step_pair() { # bundle pairs
  echo "-- croco (ONNX Runtime CUDA EP), $1, $2 pairs"
  with_gpu_memory env CROCO_BENCH_BUNDLE="$1" CROCO_BENCH_DEVICE="$device" CROCO_BENCH_PAIRS="$2" "$bench" | grep -v '^$'
  echo "-- PyTorch (eager, CUDA), $1, $2 pairs"
  with_gpu_memory "$python" "$repo/tools/gpu/torch_dpo_step.py" "$1" --device "$device" --pairs "$2" \
    --prompt-len 32 --response-len 96 --rank 16 --steps 10 | tail -2
}

# CROCO_CHECK_ONLY_BIG=1 skips the demo-policy parts (1 and 2) when GPU time is short.
if [[ -z "${CROCO_CHECK_ONLY_BIG:-}" ]]; then
echo "== 1. demo pipeline, device = $device"
pipeline "$repo/pipelines/demo.toml" "$device" "$work/demo" >"$work/demo.toml"
with_gpu_memory "$croco" run "$work/demo.toml" --json >"$work/demo.json"
python3 - "$work/demo.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["stages"]:
    print(f"  {s['stage']:<10} {s['status']:<7} rows {s['rows']:>6}  {s['seconds']:7.2f} s")
PY
"$croco" sql "$work/demo.toml" --format csv \
  "SELECT COUNT(*) AS steps, ROUND(MEDIAN(tokens_per_s)) AS median_tokens_per_s, ROUND(MIN(loss), 4) AS min_loss, ROUND(MAX(reward_accuracy), 3) AS max_acc FROM train_log"

echo "== 2. one LoRA DPO step (r=16, all 7 projections, 32 + 96 tokens per sequence)"
step_pair "$repo/data/models/policy" 4
step_pair "$repo/data/models/policy" 32
fi
if [[ -n "$big" ]]; then
  [[ -f "$big/model.safetensors" ]] || "$python" "$repo/tools/gpu/make_weights.py" "$big"
  step_pair "$big" 4
  step_pair "$big" 16

  echo "== 3. tune stage on $big, device = $device (imported en/fr demo pairs)"
  pipeline "$repo/pipelines/demo-import.toml" "$device" "$work/big" |
    sed -e 's|^languages = .*|languages = ["en", "fr"]|' >"$work/big.toml"
  cat >>"$work/big.toml" <<EOF

[models]
policy = "$big"

[stages.ref_logps]
max_length = 256
max_prompt_length = 128

[stages.tune]
learning_rate = 1e-4
micro_batch = 4
grad_accumulation = 2
EOF
  with_gpu_memory "$croco" run "$work/big.toml" --json >"$work/big.json"
  "$croco" sql "$work/big.toml" --format csv \
    "SELECT COUNT(*) AS steps, ROUND(MEDIAN(tokens_per_s)) AS median_tokens_per_s, ROUND(AVG(loss), 4) AS mean_loss FROM train_log"
  python3 - "$work/big.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["stages"]:
    print(f"  {s['stage']:<10} {s['status']:<7} rows {s['rows']:>6}  {s['seconds']:7.2f} s")
PY
fi
