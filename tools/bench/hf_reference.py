"""PyTorch/transformers reference for croco's generation and reward-scoring benchmarks.

Loads a croco model bundle (docs/bundle-format.md) straight into transformers -- manifest,
`tokenizer.json`, `model.safetensors`; the export tool is not used -- and times the same work
croco's benchmarks time, on the CPU:

* `--mode generate` (policy bundle): the first `--n-prompts` prompts, `--batch-size` prompts per
  `model.generate` call, `--samples` sequences per prompt, `--max-new-tokens`, temperature/top-p
  sampling with no top-k (temperature 0 = greedy), stopping on the manifest's stop tokens. Only
  the generate calls are timed, after one warm-up call; a sequence's tokens are counted up to and
  including its first stop token. Prints
  `{"mode":"generate","engine":"transformers","tokens","seconds","tokens_per_s","sequences",...}`.
* `--mode score` (reward bundle): the first `--n-sequences` (prompt, response) pairs of
  `--responses`, chat `template` filled, sorted by length, `--batch-size` sequences per forward
  pass under `torch.inference_mode`, explicit `position_ids` so left padding does not change the
  scores. Prints `{"mode":"score","engine":"transformers","sequences","seconds","sequences_per_s",...}`.

The best of `--repeats` runs is reported. croco's bench runs it as a subprocess with the venv that
holds torch and transformers, and reads the last line of stdout, e.g.

    /opt/export-venv/bin/python tools/bench/hf_reference.py --bundle data/models/policy --mode generate
    /opt/export-venv/bin/python tools/bench/hf_reference.py --bundle data/models/reward --mode score

Attention is `sdpa` by default (`--attn eager` to compare): on the demo bundles, 2 threads, shared
2-core machine, sdpa vs eager was 403 vs 396 tokens/s (generate) and 37.3 vs 21.4 sequences/s (score).
"""

import argparse
import hashlib
import json
import time
import tomllib
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

REPO = Path(__file__).resolve().parents[2]


def add_generation_arguments(p):
    """The generation workload's flags, shared with ortgenai_reference.py."""
    p.add_argument("--bundle", type=Path, required=True, help="croco model bundle directory")
    p.add_argument("--prompts", type=Path, default=REPO / "data/prompts/demo.jsonl")
    p.add_argument("--languages", default="", help="comma list; default all")
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-new-tokens per sequence")


def parse_languages(a):
    a.languages = {s.strip() for s in a.languages.split(",") if s.strip()}
    return a


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_generation_arguments(p)
    p.add_argument("--mode", choices=["generate", "score"], required=True)
    p.add_argument("--responses", type=Path, default=REPO / "data/demo/scored_generations.jsonl")
    p.add_argument("--n-sequences", type=int, default=512)
    p.add_argument("--batch-size", type=int, help="prompts per generate call (8) / sequences per score batch (32)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    a = p.parse_args(argv)
    a.batch_size = a.batch_size or (8 if a.mode == "generate" else 32)
    return parse_languages(a)


# ---------------------------------------------------------------- bundle
def load_manifest(bundle):
    return tomllib.loads((bundle / "croco-model.toml").read_text(encoding="utf-8"))


def llama_config(manifest, attn):
    a, t = manifest["architecture"], manifest["tokenizer"]
    return LlamaConfig(
        vocab_size=a["vocab_size"], hidden_size=a["hidden_size"], num_hidden_layers=a["num_layers"],
        num_attention_heads=a["num_attention_heads"], num_key_value_heads=a["num_kv_heads"],
        head_dim=a["head_dim"], intermediate_size=a["intermediate_size"], rms_norm_eps=a["rms_norm_eps"],
        rope_theta=a["rope_theta"], max_position_embeddings=a["max_position_embeddings"],
        tie_word_embeddings=a["tie_word_embeddings"], hidden_act=a["hidden_act"],
        pad_token_id=t["pad_token_id"], eos_token_id=t["stop_token_ids"], num_labels=1,
        attn_implementation=attn)


def load_model(bundle, manifest, attn):
    cls = LlamaForCausalLM if manifest["kind"] == "policy" else LlamaForSequenceClassification
    model = cls(llama_config(manifest, attn))
    weights = load_file(str(bundle / manifest["weights"]["file"]))
    if manifest["architecture"]["tie_word_embeddings"] and manifest["kind"] == "policy":
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]  # same tensor: stays tied
    model.load_state_dict(weights, strict=True)
    return model.float().eval()


def encoder(bundle, manifest):
    tok = Tokenizer.from_file(str(bundle / manifest["tokenizer"]["file"]))
    special = manifest["chat"]["add_special_tokens"]
    return lambda text: tok.encode(text, add_special_tokens=special).ids


# ---------------------------------------------------------------- data
def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prompt_id(p):
    return hashlib.sha256(f"{p['language']}\x1f{p['prompt']}".encode()).hexdigest()[:16]


def select_prompts(a):
    rows = [p for p in read_jsonl(a.prompts) if not a.languages or p["language"] in a.languages]
    return rows[:a.n_prompts]


def select_pairs(a):
    prompts = {prompt_id(p): p for p in read_jsonl(a.prompts)}
    pairs = [(prompts[r["prompt_id"]], r["text"]) for r in read_jsonl(a.responses)]
    return [(p["prompt"], r) for p, r in pairs if not a.languages or p["language"] in a.languages][:a.n_sequences]


def batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def left_pad(seqs, pad_id):
    width = max(map(len, seqs))
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids, mask


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------- generate
def generate_kwargs(a, manifest):
    tok = manifest["tokenizer"]
    kw = dict(do_sample=a.temperature > 0, max_new_tokens=a.max_new_tokens, num_return_sequences=a.samples,
              pad_token_id=tok["pad_token_id"], eos_token_id=tok["stop_token_ids"])
    if a.temperature > 0:
        kw.update(temperature=a.temperature, top_p=a.top_p, top_k=0)
    if a.ignore_eos:
        kw.update(min_new_tokens=a.max_new_tokens)
    return kw


def new_tokens(out, prompt_len, stop_ids, ignore_eos=False):
    gen = out[:, prompt_len:]
    if ignore_eos:
        return gen.numel()
    is_stop = torch.isin(gen, torch.tensor(stop_ids))
    first = torch.where(is_stop.any(-1), is_stop.int().argmax(-1) + 1, gen.shape[1])
    return int(first.sum())


def run_generate(a, manifest, model, encode):
    pad, stop = manifest["tokenizer"]["pad_token_id"], manifest["tokenizer"]["stop_token_ids"]
    template = manifest["chat"]["prompt_template"]
    inputs = [left_pad([encode(template.replace("{prompt}", p["prompt"])) for p in b], pad)
              for b in batches(select_prompts(a), a.batch_size)]
    kw = generate_kwargs(a, manifest)
    with torch.inference_mode():
        model.generate(input_ids=inputs[0][0][:1], attention_mask=inputs[0][1][:1], **{**kw, "max_new_tokens": 2})

    def once():
        torch.manual_seed(a.seed)
        tokens, seqs, t0 = 0, 0, time.perf_counter()
        with torch.inference_mode():
            for ids, mask in inputs:
                out = model.generate(input_ids=ids, attention_mask=mask, **kw)
                tokens, seqs = tokens + new_tokens(out, ids.shape[1], stop, a.ignore_eos), seqs + out.shape[0]
        return time.perf_counter() - t0, tokens, seqs

    seconds, tokens, seqs = min(once() for _ in range(a.repeats))
    return {"mode": "generate", "engine": "transformers", "tokens": tokens, "seconds": round(seconds, 4),
            "tokens_per_s": round(tokens / seconds, 1), "sequences": seqs}


# ---------------------------------------------------------------- score
def run_score(a, manifest, model, encode):
    pad, template = manifest["tokenizer"]["pad_token_id"], manifest["chat"]["template"]
    seqs = sorted((encode(template.replace("{prompt}", p).replace("{response}", r)) for p, r in select_pairs(a)),
                  key=len)
    inputs = [left_pad(b, pad) for b in batches(seqs, a.batch_size)]

    def once():
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in inputs:
                model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        return time.perf_counter() - t0

    with torch.inference_mode():
        model(input_ids=inputs[0][0][:1], attention_mask=inputs[0][1][:1])  # warm-up
    seconds = min(once() for _ in range(a.repeats))
    return {"mode": "score", "engine": "transformers", "sequences": len(seqs), "seconds": round(seconds, 4),
            "sequences_per_s": round(len(seqs) / seconds, 1)}


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    manifest = load_manifest(a.bundle)
    want = "policy" if a.mode == "generate" else "reward"
    if manifest["kind"] != want:
        raise SystemExit(f"--mode {a.mode} needs a {want} bundle, {a.bundle} is a {manifest['kind']} bundle")
    model, encode = load_model(a.bundle, manifest, a.attn), encoder(a.bundle, manifest)
    result = (run_generate if a.mode == "generate" else run_score)(a, manifest, model, encode)
    print(json.dumps({**result, "threads": a.threads, "attn": a.attn, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
