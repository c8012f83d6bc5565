#!/usr/bin/env bash
# A half-precision bundle's graphs on CUDA against the same bundle's float32
# graphs on the CPU (its weights widened), same prompts, same settings:
#   1. greedy generation (top_k = 1, 24 new tokens) of the demo prompts in
#      three languages: how many texts are identical, and where the others
#      part (characters in common);
#   2. the reward bundle's scores of each side's generations: the largest
#      difference over the texts both sides generated alike;
#   3. log-probs of the demo's imported pairs (the ref_logps stage, the
#      logprob graph): the largest difference per response token.
# Each device's run prints its stages' seconds.
#
#   ORT_DYLIB_PATH=.../libonnxruntime.so.1.31.1 LD_LIBRARY_PATH=<CUDA 13 + cuDNN 9 libs> \
#   tools/gpu/bf16_check.sh CROCO POLICY_BUNDLE REWARD_BUNDLE
#
# The bundles come from half-precision checkpoints (`python -m tools.export
# random-llama --dtype bfloat16`; tools/gpu/make_weights.py recreates their
# weights on the GPU machine). CROCO_CHECK_DEVICE=cpu: a dry run with the CPU
# on both sides (the plumbing only).
set -euo pipefail
croco=$1
policy=$(cd "$2" && pwd)
reward=$(cd "$3" && pwd)
device=${CROCO_CHECK_DEVICE:-cuda}
max_length=${CROCO_CHECK_MAX_LENGTH:-256}   # ref_logps' tokens per sequence (at most the bundle's context)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)

greedy() { # side device -> pipeline file on stdout
  cat <<EOF
[run]
name = "bf16-check-greedy"
root = "$work/greedy-$1"
languages = ["en", "fr", "de"]
device = "$2"

[models]
policy = "$policy"
reward = "$reward"

[stages.prompts]
source = "$repo/data/prompts/demo.jsonl"
columns = { text = "prompt", language = "language", source_id = "source_id" }
eval_fraction = 0.0
split_seed = 0

[stages.generate]
samples = 1
temperature = 1.0
top_k = 1
max_new_tokens = 24
seed = 0
batch_size = 8

[stages.score]
batch_size = 32
EOF
}

imported() { # side device -> pipeline file on stdout: the demo's imported pairs and their log-probs
  sed -e "s|^root = .*|root = \"$work/import-$1\"\ndevice = \"$2\"|" -e '/^device = "auto"/d' \
      -e "s|\"\.\./data/|\"$repo/data/|g" -e 's|^languages = .*|languages = ["en", "fr", "de"]|' \
      "$repo/pipelines/demo-import.toml" | sed -e '/^\[stages.tune\]/,$d'
  cat <<EOF

[models]
policy = "$policy"

[stages.ref_logps]
max_length = $max_length
max_prompt_length = $((max_length / 2))
EOF
}

# side "reference": the float32 graphs on the CPU; side "test": the device's graphs
for side in reference test; do
  [[ $side == reference ]] && on=cpu || on=$device
  echo "== $side: device = $on"
  greedy "$side" "$on" >"$work/greedy-$side.toml"
  imported "$side" "$on" >"$work/import-$side.toml"
  for pipeline in greedy import; do
    "$croco" run "$work/$pipeline-$side.toml" --json >"$work/$pipeline-$side.json"
    python3 - "$work/$pipeline-$side.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["stages"]:
    print(f"  {s['stage']:<10} {s['status']:<7} rows {s['rows']:>6}  {s['seconds']:7.2f} s")
PY
  done
  "$croco" sql "$work/greedy-$side.toml" --format csv \
    "SELECT g.prompt_id, g.text, s.reward FROM generations g JOIN scores s USING (generation_id) ORDER BY g.prompt_id" \
    >"$work/greedy-$side.csv"
  "$croco" sql "$work/import-$side.toml" --format csv \
    "SELECT pair_id, chosen_logp, rejected_logp, chosen_tokens, rejected_tokens FROM ref_logps ORDER BY pair_id" \
    >"$work/logps-$side.csv"
done

python3 - "$work" reference test <<'PY'
import csv, os, sys
work, a, b = sys.argv[1:]
rows = lambda name, side: list(csv.DictReader(open(os.path.join(work, f"{name}-{side}.csv"))))
ga, gb = rows("greedy", a), rows("greedy", b)
assert [r["prompt_id"] for r in ga] == [r["prompt_id"] for r in gb], "different prompts"
same = sum(x["text"] == y["text"] for x, y in zip(ga, gb))
common = sorted(len(os.path.commonprefix([x["text"], y["text"]])) for x, y in zip(ga, gb) if x["text"] != y["text"])
print(f"greedy texts: {same} of {len(ga)} identical; the others share their first {common} characters")
print(f"scores of each side's texts: largest |difference| "
      f"{max(abs(float(x['reward']) - float(y['reward'])) for x, y in zip(ga, gb)):.4f} (identical texts only: "
      f"{max([abs(float(x['reward']) - float(y['reward'])) for x, y in zip(ga, gb) if x['text'] == y['text']] or [0]):.4f})")
la, lb = rows("logps", a), rows("logps", b)
assert [r["pair_id"] for r in la] == [r["pair_id"] for r in lb], "different pairs"
per_token = max(abs(float(x[k]) - float(y[k])) / max(int(x[k.replace("logp", "tokens")]), 1)
                for x, y in zip(la, lb) for k in ("chosen_logp", "rejected_logp"))
print(f"log-probs of {len(la)} pairs: largest |difference| per response token {per_token:.4f}")
PY
