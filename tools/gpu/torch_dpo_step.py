"""PyTorch baseline for croco's DPO tune step: the same LoRA-adapted Llama forward as the bundle's
training graphs (tools/export/export.py llama_forward, imported), the DPO sigmoid loss against fixed reference
log-probs, backward, gradient clipping and a torch.optim.AdamW step on the LoRA parameters.

Needs torch + numpy only (and the repository's tools/export, imported). Reads BUNDLE/croco-model.toml ([architecture]) and
BUNDLE/model.safetensors (header parsed by hand; float32 only).

    python3 tools/gpu/torch_dpo_step.py BUNDLE --device cuda --pairs 8 --prompt-len 32 --response-len 96

Random token ids, no padding: every row is prompt-len + response-len tokens, chosen rows then
rejected rows (2 * pairs rows), chosen and rejected share the prompt. The reference log-probs are
the base model's (computed once, untimed). Warm-up steps, then the median of --steps timed steps
(each synchronised). Prints one JSON line; tokens per step = 2 * pairs * (prompt-len + response-len).

Float32 throughout; on CUDA, TF32 matmuls by default (--tf32 on), as ONNX Runtime's CUDA provider.
Differences from croco that remain: dropout is torch's (Bernoulli from the torch RNG; croco's graph
uses a deterministic hash mask, --hash-dropout reproduces that mask here), and torch autograd
runs the backward instead of the exported gradient graph.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# The model and croco's dropout mask are the export tool's own (torch + numpy only at import),
# so this baseline runs exactly the forward the training graphs were traced from.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from tools.export.dropout import dropout_keep  # noqa: E402
from tools.export.export import llama_forward  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = {"F32": np.float32}


# ---------------------------------------------------------------- bundle
def read_architecture(bundle):
    path = os.path.join(bundle, "croco-model.toml")
    try:
        import tomllib

        return tomllib.load(open(path, "rb"))["architecture"]
    except ImportError:  # Python < 3.11: the flat [architecture] table only
        A, inside = {}, False
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if line.startswith("["):
                inside = line == "[architecture]"
                continue
            m = re.match(r'([A-Za-z0-9_]+)\s*=\s*(.+)$', line) if inside else None
            if m:
                v = m.group(2).strip()
                A[m.group(1)] = json.loads(v) if v[0] in '"[' or v in ("true", "false") else (
                    float(v) if any(c in v for c in ".eEn") else int(v))
        return A


def load_safetensors(path, device):
    """{name: tensor on device}, read tensor by tensor (one tensor at a time in host memory)."""
    W = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
        base = 8 + n
        for name, v in sorted(((k, v) for k, v in hdr.items() if k != "__metadata__"),
                              key=lambda kv: kv[1]["data_offsets"][0]):
            if v["dtype"] not in DTYPES:
                raise SystemExit(f"{name}: dtype {v['dtype']} is not supported (float32 only)")
            a, b = v["data_offsets"]
            f.seek(base + a)
            arr = np.frombuffer(f.read(b - a), dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
            W[name] = torch.from_numpy(arr.copy()).to(device)
    return W


class Lora:
    def __init__(self, W, A, r, alpha, p, device, seed, hash_dropout):
        self.scale, self.p, self.hash_dropout, self.seed = alpha / r, p, hash_dropout, seed
        g = torch.Generator().manual_seed(seed)
        self.modules = {}
        j = 0
        for l in range(A["num_layers"]):
            for mod in LORA_TARGETS:
                sub = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                w = f"model.layers.{l}.{sub}.{mod}.weight"
                o, i = W[w].shape
                a = torch.empty(r, i)
                # PEFT's init: A Kaiming-uniform (a = sqrt(5)), B zeros
                bound = 1.0 / math.sqrt(i)
                a.uniform_(-bound, bound, generator=g)
                self.modules[w] = (a.to(device).requires_grad_(), torch.zeros(o, r, device=device).requires_grad_(), j)
                j += 1

    def params(self):
        return [t for a, b, _ in self.modules.values() for t in (a, b)]

    def dropout(self, x, j, training):
        if not training or self.p == 0.0:
            return x
        if self.hash_dropout:
            return x * (dropout_keep(x, torch.tensor(self.p), torch.tensor(self.seed, device=x.device), j).to(x.dtype) * (1.0 / (1.0 - self.p)))
        return F.dropout(x, self.p, training=True)


def sequence_logps(W, A, inv_freq, rope_scale, ids, mask, rmask, lora, training, sdpa):
    pos = mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(mask == 0, 1)
    adapter = None if lora is None else {
        "modules": lora.modules, "scale": lora.scale, "dropout": lambda x, j: lora.dropout(x, j, training)}
    logits, _ = llama_forward(W, A, inv_freq, rope_scale, ids, mask, pos, lora=adapter, sdpa=sdpa)
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = torch.gather(lp, 2, ids[:, 1:, None])[..., 0]
    tok = torch.cat((torch.zeros_like(tok[:, :1]), tok), dim=1) * rmask
    return tok.sum(-1)


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=96)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--hash-dropout", action="store_true", help="croco's deterministic dropout mask instead of torch's")
    ap.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention instead of the graph's eager attention")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping as croco's tune stage (0: off)")
    ap.add_argument("--tf32", choices=["on", "off"], default="on",
                    help="TF32 matmuls on CUDA (on: as ONNX Runtime's CUDA provider by default)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.device.startswith("cuda"):
        # ONNX Runtime's CUDA provider runs float32 MatMul/Gemm with TF32 by default (use_tf32 = 1, which
        # croco keeps); torch's default is full fp32 matmuls. --tf32 on (default) matches ORT.
        torch.backends.cuda.matmul.allow_tf32 = a.tf32 == "on"
        torch.backends.cudnn.allow_tf32 = a.tf32 == "on"
    dev = torch.device(a.device)
    A = read_architecture(a.bundle)
    if A.get("rope_type", "default") != "default":
        raise SystemExit(f"rope_type {A['rope_type']!r}: only 'default' is implemented")
    t0 = time.time()
    W = load_safetensors(os.path.join(a.bundle, "model.safetensors"), dev)
    load_s = time.time() - t0
    n_params = sum(t.numel() for t in W.values())
    if A.get("tie_word_embeddings") and "lm_head.weight" in W:
        raise SystemExit("manifest says tied embeddings but the weights have lm_head.weight")
    if not A.get("tie_word_embeddings") and "lm_head.weight" not in W:
        raise SystemExit("manifest says untied embeddings but the weights lack lm_head.weight")
    D = A["head_dim"]
    inv_freq = (1.0 / (A["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))).to(dev)
    rope_scale = 1.0
    lora = Lora(W, A, a.rank, a.alpha, a.dropout, dev, a.seed, a.hash_dropout)
    lparams = lora.params()
    opt = torch.optim.AdamW(lparams, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=a.weight_decay)

    P, S = a.pairs, a.prompt_len + a.response_len
    rows = 2 * P
    g = torch.Generator().manual_seed(a.seed + 1)
    V = A["vocab_size"]
    prompt = torch.randint(6, V, (P, a.prompt_len), generator=g)
    resp = torch.randint(6, V, (rows, a.response_len), generator=g)
    ids = torch.cat((torch.cat((prompt, prompt)), resp), 1).to(dev)
    mask = torch.ones(rows, S, dtype=torch.int64, device=dev)
    rmask = torch.zeros(rows, S, device=dev)
    rmask[:, a.prompt_len:] = 1.0
    with torch.no_grad():  # reference log-probs: the base model (LoRA B = 0), as croco's ref_logps stage
        ref = sequence_logps(W, A, inv_freq, rope_scale, ids, mask, rmask, None, False, a.sdpa)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        logps = sequence_logps(W, A, inv_freq, rope_scale, ids, mask, rmask, lora, True, a.sdpa)
        h = (logps[:P] - logps[P:]) - (ref[:P] - ref[P:])
        loss = -F.logsigmoid(a.beta * h).mean()
        loss.backward()
        if a.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(lparams, a.max_grad_norm)
        opt.step()
        return loss

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses = [], []
    for s in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        loss = step()
        sync()
        dt = time.perf_counter() - t
        losses.append(float(loss.detach()))
        if s >= a.warmup:
            times.append(dt)
        print(f"step {s + 1}/{a.warmup + a.steps}: {dt * 1e3:.1f} ms, loss {losses[-1]:.6f}"
              f"{' (warm-up)' if s < a.warmup else ''}", file=sys.stderr, flush=True)
    med = statistics.median(times)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        dname = f"cuda:{torch.cuda.get_device_name(dev)}"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        dname = f"cpu ({a.threads} threads)"
    tokens = rows * S
    print(json.dumps({
        "engine": "torch", "device": dname, "pairs_per_s": round(P / med, 3), "tokens_per_s": round(tokens / med, 1),
        "step_ms": round(med * 1e3, 2), "peak_mem_mb": round(peak, 1),
        "pairs": P, "prompt_len": a.prompt_len, "response_len": a.response_len, "tokens_per_step": tokens,
        "steps": a.steps, "warmup": a.warmup, "step_ms_all": [round(t * 1e3, 2) for t in times],
        "params": n_params, "lora_params": sum(t.numel() for t in lparams), "rank": a.rank, "alpha": a.alpha,
        "dropout": a.dropout, "hash_dropout": a.hash_dropout, "sdpa": a.sdpa,
        "tf32": a.tf32 if dev.type == "cuda" else "n/a", "loss_first": losses[0],
        "loss_last": losses[-1], "weights_load_s": round(load_s, 1), "torch": torch.__version__,
        "bundle": os.path.basename(os.path.normpath(a.bundle)),
    }), flush=True)


if __name__ == "__main__":
    main()
