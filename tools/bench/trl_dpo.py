"""PyTorch references for croco's DPO (LoRA) training-step benchmark, on the CPU.

Loads a croco policy bundle into transformers the same way as `hf_reference.py` (manifest,
`model.safetensors`; the export tool is not needed for `--engine trl`), and times DPO optimizer steps
on `--pairs` preference pairs of exactly `--seq-len` tokens each side (`--prompt-len` prompt tokens +
the rest response tokens; no padding), LoRA on all 7 projections of every layer (`--rank`, `--alpha`,
`--lora-dropout`), AdamW (`--lr`, weight decay 0), loss `sigmoid`, `--beta`:

* `--engine trl` (default): trl's `DPOTrainer` on a peft model; `per_device_train_batch_size = --pairs`,
  `gradient_accumulation_steps = 1`, `max_length = --seq-len`, no eval, no saving, `report_to = none`,
  gradient clipping 1.0 (trl's default), `disable_dropout=False` so that `--lora-dropout` applies (the
  model's own dropouts are 0 in the config; trl's default would zero the LoRA dropout too). Reference log-probs are **precomputed** by default
  (`precompute_ref_log_probs=True`, before training, not timed): the like-for-like setting for croco's
  step, which takes `ref_logps` as an input. `--no-precompute-ref` lets trl run the reference
  forward (adapter disabled) inside every step instead. Step times come from a callback
  (`on_step_begin` -> `on_step_end`: forward, backward, clipping, optimizer step, trl's metrics).
* `--engine torch-step`: the functional Llama of `tools/export` with LoRA, the same loss through
  `torch.func.grad_and_value` (the model croco's training graphs are traced from, run eagerly; `--torch-autograd`:
  `loss.backward()` instead), clipping 1.0 and `torch.optim.AdamW` on the LoRA tensors (PEFT's init:
  A kaiming-uniform, B zero); reference log-probs precomputed once (not timed).

The first `--warmup` steps are not timed; then `--steps` steps are. Prints ONE json line at the end:
`{"engine","pairs_per_s","tokens_per_s","step_s","peak_rss_mb","pairs","seq_len","rank",...}` with
tokens = 2 · pairs · seq_len per step and step_s the mean of the timed steps. croco's bench runs it
as a subprocess with the venv that holds torch, transformers, peft and trl, and reads the last line:

    /opt/export-venv/bin/python tools/bench/trl_dpo.py --bundle data/models/policy --pairs 4 --seq-len 128
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_reference import REPO, load_manifest, load_model  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="croco policy bundle directory")
    p.add_argument("--engine", choices=["trl", "torch-step"], default="trl")
    p.add_argument("--pairs", type=int, default=4, help="preference pairs per optimizer step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (prompt + response)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens of each sequence")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path,
                   help="jsonl of {prompt, chosen, rejected}; chat template applied, prompt cut to its last "
                        "--prompt-len tokens, responses to their first seq-len - prompt-len tokens, shorter ones "
                        "skipped (default: synthetic random token ids)")
    p.add_argument("--no-precompute-ref", action="store_true",
                   help="trl: reference forward in every step instead of precomputed reference log-probs")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="trl: recompute each layer in the backward (use_reentrant=False), as croco's layer-wise step")
    p.add_argument("--torch-autograd", action="store_true",
                   help="torch-step: loss.backward() on the same functional loss instead of torch.func.grad_and_value")
    a = p.parse_args(argv)
    if not 0 < a.prompt_len < a.seq_len:
        p.error("need 0 < --prompt-len < --seq-len")
    return a


# ---------------------------------------------------------------- data
def make_pairs(a, manifest):
    """[{prompt_ids, chosen_ids, rejected_ids}] * steps_needed, every sequence exactly seq_len tokens."""
    n = a.pairs * (a.warmup + a.steps)
    resp = a.seq_len - a.prompt_len
    if a.data:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(a.bundle / manifest["tokenizer"]["file"]))
        enc = lambda t: tok.encode(t, add_special_tokens=manifest["chat"]["add_special_tokens"]).ids  # noqa: E731
        tmpl = manifest["chat"]["template"]
        rows = []
        for line in open(a.data, encoding="utf-8"):
            if not line.strip():
                continue
            ex = json.loads(line)
            pi = enc(manifest["chat"]["prompt_template"].replace("{prompt}", ex["prompt"]))
            ci = enc(tmpl.replace("{prompt}", ex["prompt"]).replace("{response}", ex["chosen"]))[len(pi):]
            ri = enc(tmpl.replace("{prompt}", ex["prompt"]).replace("{response}", ex["rejected"]))[len(pi):]
            if len(pi) >= a.prompt_len and len(ci) >= resp and len(ri) >= resp:
                rows.append({"prompt_ids": pi[-a.prompt_len:], "chosen_ids": ci[:resp], "rejected_ids": ri[:resp]})
        if not rows:
            raise SystemExit(f"{a.data}: no pair is long enough for --prompt-len {a.prompt_len} --seq-len {a.seq_len}")
        return [rows[i % len(rows)] for i in range(n)]
    g = torch.Generator().manual_seed(a.seed)
    lo, hi = len(manifest["tokenizer"]["special_tokens"]), manifest["architecture"]["vocab_size"]
    ids = lambda k: torch.randint(lo, hi, (k,), generator=g).tolist()  # noqa: E731
    return [{"prompt_ids": ids(a.prompt_len), "chosen_ids": ids(resp), "rejected_ids": ids(resp)} for _ in range(n)]


def peak_rss_mb():
    """This process's peak RSS: VmHWM, which starts afresh at exec. (ru_maxrss does not: Linux carries the
    parent's high-water mark into a spawned child, so under croco's bench it read croco's own peak.)"""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- trl
def run_trl(a, manifest, pairs):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Pretokenized(DPOTrainer):
        """The pairs are token ids of exact lengths already; trl's tokenization would re-derive them from text."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    t = manifest["tokenizer"]
    tok = PreTrainedTokenizerFast(tokenizer_file=str(a.bundle / t["file"]), pad_token=t["pad_token"],
                                  eos_token=t["stop_tokens"][0], bos_token=t.get("bos_token") or None)
    model = load_model(a.bundle, manifest, a.attn)
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=a.lora_dropout,
                                             target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=a.pairs, gradient_accumulation_steps=1,
                        max_steps=a.warmup + a.steps, learning_rate=a.lr, lr_scheduler_type="constant",
                        weight_decay=0.0, optim="adamw_torch", loss_type=["sigmoid"], beta=a.beta,
                        max_length=a.seq_len, precompute_ref_log_probs=not a.no_precompute_ref,
                        eval_strategy="no", save_strategy="no", report_to="none", logging_strategy="no",
                        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=a.seed,
                        gradient_checkpointing=a.gradient_checkpointing,
                        gradient_checkpointing_kwargs={"use_reentrant": False} if a.gradient_checkpointing else None,
                        pad_to_multiple_of=None,
                        disable_dropout=False)  # trl's default True would also zero peft's lora_dropout
        trainer = Pretokenized(model=model, args=cfg, train_dataset=Dataset.from_list(pairs), processing_class=tok,
                               callbacks=[timer])
        torch.set_num_threads(a.threads)  # accelerate may have changed it
        trainer.train()
    timed = timer.times[a.warmup:]
    if len(timed) != a.steps:
        raise SystemExit(f"expected {a.steps} timed steps, the callback saw {len(timer.times)} steps in all")
    return timed, {"precompute_ref_logps": not a.no_precompute_ref, "gradient_checkpointing": a.gradient_checkpointing}


# ---------------------------------------------------------------- torch-step (functional model of tools/export)
def run_torch_step(a, manifest, pairs):
    sys.path.insert(0, str(REPO))
    from tools.export import dpo
    from tools.export.adapter import hf_model_from_bundle
    from tools.export.export import rope_inv_freq

    man, W, hf = hf_model_from_bundle(str(a.bundle))
    A = man["architecture"]
    inv_freq, rope_scale = rope_inv_freq(hf)
    del hf
    names = list(W)
    lnames = dpo.lora_modules(names, man["lora"]["target_modules"], A["num_layers"])
    step = dpo.make_step(A, names, lnames, inv_freq, rope_scale)
    g = torch.Generator().manual_seed(a.seed)
    lora = []
    for w, _, _ in lnames:  # PEFT's init: A kaiming-uniform(a=sqrt(5)), B zero
        o, i = W[w].shape
        bound = 1.0 / i ** 0.5
        lora += [((torch.rand(a.rank, i, generator=g) * 2 - 1) * bound).requires_grad_(), torch.zeros(o, a.rank, requires_grad=True)]
    opt = torch.optim.AdamW(lora, lr=a.lr, weight_decay=0.0)
    Wl = [W[n] for n in names]
    batches = []
    for i in range(0, len(pairs), a.pairs):
        chunk = pairs[i:i + a.pairs]
        seqs = [p["prompt_ids"] + p["chosen_ids"] for p in chunk] + [p["prompt_ids"] + p["rejected_ids"] for p in chunk]
        ids = torch.tensor(seqs, dtype=torch.long)
        mask = torch.ones_like(ids)
        rm = torch.zeros(ids.shape)
        rm[:, a.prompt_len:] = 1.0
        with torch.no_grad():  # reference = the base model (adapter off), precomputed as croco does
            ref = dpo.sequence_logps(W, A, inv_freq, rope_scale, [], ids, mask, rm, 0.0, 0.0, 0)
        batches.append((ids, mask, rm, ref))
    times = []
    for k, (ids, mask, rm, ref) in enumerate(batches):
        t0 = time.perf_counter()
        data = dpo.step_inputs(ids, mask, rm, ref, a.beta, 0.0, 0.0, a.alpha / a.rank, a.lora_dropout, a.seed + k)
        if a.torch_autograd:
            mods = [(w, lora[2 * j], lora[2 * j + 1]) for j, (w, _, _) in enumerate(lnames)]
            loss, _ = dpo.dpo_forward(W, A, inv_freq, rope_scale, mods, *data)
            loss.backward()
        else:
            out = step(*data, *[t.detach() for t in lora], *Wl)
            for t, gr in zip(lora, out[2:]):
                t.grad = gr
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[a.warmup:], {"precompute_ref_logps": True, "grad": "autograd" if a.torch_autograd else "torch.func"}


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    manifest = load_manifest(a.bundle)
    if manifest["kind"] != "policy":
        raise SystemExit(f"{a.bundle} is a {manifest['kind']} bundle, a policy bundle is needed")
    pairs = make_pairs(a, manifest)
    times, extra = (run_trl if a.engine == "trl" else run_torch_step)(a, manifest, pairs)
    step_s = sum(times) / len(times)
    import peft
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    if a.engine == "trl":
        import trl

        versions["trl"] = trl.__version__
    print(json.dumps({"engine": a.engine, "pairs_per_s": round(a.pairs / step_s, 3),
                      "tokens_per_s": round(2 * a.pairs * a.seq_len / step_s, 1), "step_s": round(step_s, 4),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "pairs": a.pairs, "seq_len": a.seq_len, "rank": a.rank,
                      "prompt_len": a.prompt_len, "alpha": a.alpha, "lora_dropout": a.lora_dropout, "beta": a.beta,
                      "steps": a.steps, "warmup": a.warmup, "threads": a.threads, "attn": a.attn, **extra,
                      **versions}), flush=True)


if __name__ == "__main__":
    main()
