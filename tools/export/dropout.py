"""croco's LoRA dropout: a deterministic counter hash of (seed, step, module, position, feature), computed
bit-identically by torch and by ONNX Runtime (docs/bundle-format.md, "LoRA dropout"), so a resumed run draws the
masks an uninterrupted one draws. Shared by the functional model (export.llama_forward), the DPO fixtures (dpo.py)
and the training graphs traced from it (train_graphs.py)."""
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


def _scramble(h):
    """Two rounds of squaring mod 2^31 - 1 around a _mix round: the _mix rounds are nearly affine in a small
    counter, and the ratio of two positions' hashes must look random (see dropout_keep)."""
    h = torch.remainder(h * h, HASH_P)
    h = _mix(h, 1597334677, 777)
    return torch.remainder(h * h, HASH_P)


def _nonzero(h):
    """h mapped into [1, 2^31 - 2]: an invertible element of the field."""
    return torch.remainder(h, HASH_P - 1) + 1


def row_hashes(seed, module_index, positions):
    """hr[n] of dropout_keep for the position indices n (int64, any shape)."""
    k = _module_key(seed, module_index)
    return _nonzero(_scramble(_mix(_mix(positions, 1597334677, k), 1103515245, 12345)))


def feature_hashes(seed, module_index, features, device=None):
    """hf[i] of dropout_keep for the features 0..features-1: odd, below 2^32 (the multipliers of the
    multiply-shift hash)."""
    k = _module_key(seed, module_index)
    feat = torch.arange(features, dtype=torch.int64, device=device)
    return _nonzero(_scramble(_mix(_mix(feat, 1103515245, k), 1597334677, 54321))) * 2 + 1


def _module_key(seed, module_index):
    return _mix(_mix(torch.remainder(seed, HASH_P), 1103515245, module_index + 1), 1597334677, 7)


def keep_mask(hr, hf, p):
    """The mask from a position hash hr [..., 1] and the feature hashes hf [in]: the low 32 bits of the exact
    int64 product (< 2^63) as a signed int32 (a two's-complement cast: no mod, no overflow), kept iff at least
    trunc(p * 2^32) - 2^31."""
    h = (hr * hf).to(torch.int32)
    return h >= ((p * 4294967296.0).long() - 2147483648).to(torch.int32)


def dropout_keep(x, p, seed, module_index):
    """bool mask of x's shape [rows, seq, in] (docs/bundle-format.md, "LoRA dropout"): keep element (n, i) of
    module j, n = r * seq + s the position, i the feature, iff h(n, i) >= trunc(p * 2^32) - 2^31, where
    h(n, i) is the low 32 bits, as a signed int32, of hr[n] * hf[i]: a per-position hash times an odd
    per-feature multiplier, the multiply-shift hash (its top bits decide). The strong hash (_mix rounds) runs
    on the small per-module key and the per-position and per-feature vectors only; per element the cost is one
    exact int64 multiply (< 2^63), a cast and a compare. A product, not a sum: a sum would make two positions'
    masks shifts h + d of each other (correlated)."""
    F = x.shape[-1]
    pos = torch.arange(x.numel() // F, dtype=torch.int64, device=x.device).view(*x.shape[:-1], 1)
    return keep_mask(row_hashes(seed, module_index, pos), feature_hashes(seed, module_index, F, x.device), p)


def apply_dropout(x, keep, p):
    """Inverted dropout of x with the mask keep; p = 0 is an exact identity (x * 1.0)."""
    return x * (keep.to(x.dtype) * (1.0 / (1.0 - p)))


def lora_dropout(x, p, seed, module_index):
    """Inverted dropout with the deterministic mask; p = 0 is an exact identity (x * 1.0)."""
    return apply_dropout(x, dropout_keep(x, p, seed, module_index), p)
