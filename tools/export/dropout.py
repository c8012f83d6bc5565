"""croco's LoRA dropout: a deterministic counter hash of (seed, step, module, position, feature), computed
bit-identically by torch and by ONNX Runtime (docs/bundle-format.md, dpo), so a resumed run draws the masks an
uninterrupted one draws. Shared by the graphs' forward pass (export.llama_forward) and the training-step graph
(dpo)."""
from __future__ import annotations

import torch

HASH_P = 2147483647  # 2^31 - 1


def _mix(h, mul, add):
    """One round of the dropout hash on int64 values in [0, 2^31): h += (h mod 2^16) * 2^15, then
    h = (h * mul + add) mod (2^31 - 1). Sums stay below 2^32 and products below 2^63; no division,
    no shifts and no bitwise ops, so that torch and ONNX Runtime compute bit-identical values (ONNX
    integer floor-division is exported through float32 by torch.onnx and loses bits) and every op has
    a CUDA kernel in ONNX Runtime (its Bitwise* ops are CPU-only: a mask of x's size would cross to
    the host and back for every adapted module)."""
    h = h + torch.remainder(h, 65536) * 32768
    return torch.remainder(h * mul + add, HASH_P)


def dropout_keep(x, p, seed, module_index):
    """bool mask of x's shape [rows, seq, in] (docs/bundle-format.md, dpo): keep element (n, i) of module j,
    n = r * seq + s the position, i the feature, iff h(n, i) >= trunc(p * 2^31). The strong hash (_mix
    rounds) runs on the small per-module key, per-position and per-feature vectors only; per element
    the cost is two (add, multiply, mod 2^31 - 1) rounds and a compare, all exact int64 (< 2^63)."""
    F = x.shape[-1]
    n = x.numel() // F
    k = _mix(_mix(torch.remainder(seed, HASH_P), 1103515245, module_index + 1), 1597334677, 7)
    pos = torch.arange(n, dtype=torch.int64, device=x.device).view(*x.shape[:-1], 1)
    hr = _mix(_mix(pos, 1597334677, k), 1103515245, 12345)
    feat = torch.arange(F, dtype=torch.int64, device=x.device)
    hf = _mix(_mix(feat, 1103515245, k), 1597334677, 54321)
    hf2 = _mix(hf, 1597334677, 777)
    # x -> x^2 mod Q is the non-linear step: without it h would be A(n) + B(i) mod Q and two
    # positions' masks would be shifts of each other (correlated).
    h = torch.remainder(hr + hf, HASH_P)
    h = torch.remainder(h * h, HASH_P)
    h = torch.remainder((h + hf2) * 1103515245, HASH_P)
    h = torch.remainder(h * h, HASH_P)
    return h >= (p * 2147483648.0).long()


def lora_dropout(x, p, seed, module_index):
    """Inverted dropout with the deterministic mask; p = 0 is an exact identity (x * 1.0)."""
    return x * (dropout_keep(x, p, seed, module_index).to(x.dtype) * (1.0 / (1.0 - p)))
