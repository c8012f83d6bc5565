"""onnxruntime-genai reference for croco's generation benchmark: the same runtime as croco (ONNX
Runtime, CPU, fp32), with its own graphs from its own model builder.

The croco policy bundle (docs/bundle-format.md) is written out as a Hugging Face checkpoint
(config.json + model.safetensors, via transformers), `onnxruntime_genai.models.builder` builds
its model from that checkpoint (`-p fp32 -e cpu`, cached under `--cache`), and the same work
as `hf_reference.py --mode generate` is timed: the first `--n-prompts` prompts, `--batch-size`
prompts per generator, `--samples` rows per prompt (the prompt repeated, as onnxruntime-genai
samples one sequence per row; a batch beyond its limit of 32 rows runs as several generators), `--max-new-tokens`, temperature/top-p sampling without top-k,
stopping on the manifest's stop tokens (`--ignore-eos`: never, for fixed lengths). Prompt ids
come from the bundle's tokenizer, so every engine gets the same ids. Only generation is timed,
after a warm-up; a sequence's tokens are counted up to and including its first stop token.
Prints `{"mode":"generate","engine":"onnxruntime-genai","tokens","seconds","tokens_per_s",...}`.

    /opt/export-venv/bin/python tools/bench/ortgenai_reference.py --bundle data/models/policy
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_reference as hf  # noqa: E402  (same bundle loading and prompt selection)


# The most rows one onnxruntime-genai 0.18 generator accepts.
MAX_ROWS = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    hf.add_generation_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generator")
    p.add_argument("--prompt-ids", type=Path, help="JSON list of prompt id lists (instead of --prompts)")
    p.add_argument("--cache", type=Path, default=hf.REPO / "target/croco-bench/ortgenai")
    return hf.parse_languages(p.parse_args(argv))


def build(bundle, manifest, cache, threads):
    """The onnxruntime-genai model folder built from the bundle's checkpoint (cached by checksum)."""
    key = hf.hashlib.sha256((bundle / manifest["weights"]["file"]).read_bytes()).hexdigest()[:16]
    out = cache / key
    if (out / "genai_config.json").exists():
        return out
    checkpoint = cache / f"{key}-hf"
    model = hf.load_model(bundle, manifest, "sdpa")
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(checkpoint, safe_serialization=True)
    # The builder copies the tokenizer too: the bundle's, as a fast tokenizer.
    (checkpoint / "tokenizer.json").write_bytes((bundle / manifest["tokenizer"]["file"]).read_bytes())
    tok = manifest["tokenizer"]
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": tok["pad_token"], "eos_token": tok["stop_tokens"][0]}))
    built = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o",
                            str(out), "-p", "fp32", "-e", "cpu", "-c", str(cache / "builder-cache")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise SystemExit(f"onnxruntime-genai's builder failed on {checkpoint}:\n{built.stderr[-4000:]}")
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["eos_token_id"] = tok["stop_token_ids"]
    config["model"]["pad_token_id"] = tok["pad_token_id"]
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    config_path.write_text(json.dumps(config, indent=2))
    return out


def prompt_ids(a, manifest, encode):
    if a.prompt_ids:
        return json.loads(a.prompt_ids.read_text())
    template = manifest["chat"]["prompt_template"]
    return [encode(template.replace("{prompt}", p["prompt"])) for p in hf.select_prompts(a)]


def count_tokens(rows, prompt_width, stops, ignore_eos):
    total = 0
    for row in rows:
        new = list(row[prompt_width:])
        if not ignore_eos:
            first = next((i for i, t in enumerate(new) if t in stops), None)
            new = new if first is None else new[:first + 1]
        total += len(new)
    return total


def main(argv=None):
    import onnxruntime_genai as og

    a = parse_args(argv)
    manifest = hf.load_manifest(a.bundle)
    model_dir = build(a.bundle, manifest, a.cache, a.threads)
    model = og.Model(str(model_dir))
    tok = manifest["tokenizer"]
    prompts = prompt_ids(a, manifest, hf.encoder(a.bundle, manifest))
    batches = hf.batches(prompts, a.batch_size)

    def run(batch, max_new):
        rows = [p for p in batch for _ in range(a.samples)]
        # Its static generator takes at most 32 rows ("batch_size must be in [1, 32]").
        if len(rows) > MAX_ROWS:
            parts = [run_rows(rows[i:i + MAX_ROWS], max_new) for i in range(0, len(rows), MAX_ROWS)]
            return sum(t for t, _ in parts), len(rows)
        return run_rows(rows, max_new)

    def run_rows(rows, max_new):
        width = max(map(len, rows))
        ids = np.array([[tok["pad_token_id"]] * (width - len(r)) + r for r in rows], dtype=np.int32)
        params = og.GeneratorParams(model)
        options = dict(batch_size=len(rows), max_length=width + max_new, do_sample=a.temperature > 0,
                       random_seed=a.seed)
        if a.temperature > 0:
            options.update(temperature=a.temperature, top_p=a.top_p, top_k=0)
        if a.ignore_eos:
            options.update(min_length=width + max_new)
        params.set_search_options(**options)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        out = [generator.get_sequence(i) for i in range(len(rows))]
        return count_tokens(out, width, set(tok["stop_token_ids"]), a.ignore_eos), len(rows)

    run(batches[0][:1], 2)

    def once():
        tokens, seqs, t0 = 0, 0, time.perf_counter()
        for batch in batches:
            t, s = run(batch, a.max_new_tokens)
            tokens, seqs = tokens + t, seqs + s
        return time.perf_counter() - t0, tokens, seqs

    seconds, tokens, seqs = min(once() for _ in range(a.repeats))
    print(json.dumps({"mode": "generate", "engine": "onnxruntime-genai", "tokens": tokens,
                      "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1), "sequences": seqs,
                      "threads": a.threads, "onnxruntime_genai": og.__version__}), flush=True)


if __name__ == "__main__":
    main()
