#!/usr/bin/env bash
# The demo's generate and score stages on the CUDA execution provider and on
# the CPU, on the same machine, with tokens/s and scores/s side by side.
#
#   ORT_DYLIB_PATH=.../onnxruntime/capi/libonnxruntime.so.1.31.1 \
#   LD_LIBRARY_PATH=<CUDA 13 + cuDNN 9 libs> tools/gpu/check.sh [CROCO] [BATCHES]
#
# ORT_DYLIB_PATH must point at the onnxruntime-gpu 1.31.1 library (its
# provider libraries beside it). BATCHES: prompts per batch to try on CUDA
# (default "8 64"); the CPU runs the demo's own setting.
set -euo pipefail
croco=${1:-croco}
batches=${2:-8 64}
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)

pipeline() { # device batch -> pipeline file
  local file="$work/$1-$2.toml"
  sed -e "s|^root = .*|root = \"$work/$1-$2\"|" \
      -e "s|^device = .*|device = \"$1\"|" \
      -e "s|^batch_size = 8$|batch_size = $2|" \
      -e "s|\"\.\./data/|\"$repo/data/|g" "$repo/pipelines/demo.toml" >"$file"
  echo "$file"
}

runs=()
for batch in $batches; do runs+=("cuda $batch"); done
runs+=("cpu 8")
for run in "${runs[@]}"; do
  set -- $run
  "$croco" run "$(pipeline "$1" "$2")" --json >"$work/$1-$2.json"
done

python3 - "$work" "${runs[@]}" <<'PY'
import json, sys
work, runs = sys.argv[1], sys.argv[2:]
print(f"{'device':<6} {'batch':>5} {'generate s':>10} {'tokens/s':>10} {'score s':>8} {'scores/s':>9}")
for run in runs:
    device, batch = run.split()
    stages = {s["stage"]: s for s in json.load(open(f"{work}/{device}-{batch}.json"))["stages"]}
    g, s = stages["generate"], stages["score"]
    print(f"{device:<6} {batch:>5} {g['seconds']:>10.2f} {g['stats']['new_tokens'] / g['seconds']:>10.0f} "
          f"{s['seconds']:>8.2f} {s['rows'] / s['seconds']:>9.0f}")
PY
