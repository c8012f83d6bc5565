"""Recreates a bundle's model.safetensors from its saved header, with random weights (numpy only).

A random-llama bundle's weights are GBs and cannot travel to the GPU machine; what travels is the
bundle without model.safetensors, plus `model.safetensors.header`: the file's first 8 + N bytes
(N as 8-byte little-endian, then the JSON header). This script writes the header bytes back and,
for each tensor in data-offset order, values in its dtype (F32, BF16 rounded to nearest even, or F16):
normal with std 0.02, and 1.0 for RMSNorm weights (names ending `layernorm.weight` or `norm.weight`),
from one fixed seed (the same values whatever the dtype, before rounding). The result has
the manifest's size, which is all croco checks when it opens a bundle (Verify::Sizes); the sha256
and the parity fixtures of the manifest do not match the new values.

    python3 tools/gpu/make_weights.py BUNDLE_DIR [--seed 0] [--std 0.02]

On the export machine:

    python3 tools/gpu/make_weights.py BUNDLE_DIR --pack CARRY_DIR   # copy without the weights, plus the header
    python3 tools/gpu/make_weights.py BUNDLE_DIR --save-header      # only BUNDLE_DIR/model.safetensors.header
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import time

import numpy as np

CHUNK = 1 << 24  # elements generated at a time (64 MiB of float32)


def bfloat16_bits(x):
    """float32 values as bfloat16 bits (round to nearest even), little-endian uint16."""
    bits = x.view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")


# safetensors dtype -> (bytes per element, float32 values -> little-endian bytes)
ENCODERS = {
    "F32": (4, lambda x: x.astype("<f4", copy=False).tobytes()),
    "BF16": (2, lambda x: bfloat16_bits(x).tobytes()),
    "F16": (2, lambda x: x.astype("<f2").tobytes()),
}


def manifest_files(bundle):
    """{path: bytes} of croco-model.toml's [files] (tomllib when present, else a regex on its lines)."""
    path = os.path.join(bundle, "croco-model.toml")
    try:
        import tomllib

        return {k: v["bytes"] for k, v in tomllib.load(open(path, "rb"))["files"].items()}
    except ImportError:
        text = open(path, encoding="utf-8").read()
        text = text[text.index("\n[files]\n"):]
        return {m.group(1) or m.group(2): int(m.group(3)) for m in
                re.finditer(r'^(?:"([^"]+)"|([A-Za-z0-9_.-]+))\s*=\s*\{[^}]*\bbytes\s*=\s*(\d+)', text, re.M)}


def check_sizes(bundle):
    """What croco's Bundle::open(Verify::Sizes) checks of the files: each [files] entry exists with its size."""
    bad = []
    files = manifest_files(bundle)
    for rel, n in files.items():
        p = os.path.join(bundle, rel)
        got = os.path.getsize(p) if os.path.exists(p) else None
        if got != n:
            bad.append(f"{rel}: {got} bytes, manifest {n}")
    if bad:
        raise SystemExit("size check failed: " + "; ".join(bad))
    return len(files)


def read_header(path):
    raw = open(path, "rb").read()
    if len(raw) < 8:
        raise SystemExit(f"{path}: too short")
    (n,) = struct.unpack("<Q", raw[:8])
    if len(raw) < 8 + n:
        raise SystemExit(f"{path}: header says {n} bytes, the file has {len(raw) - 8} after the length")
    return raw[:8 + n], json.loads(raw[8:8 + n])


def is_norm(name):
    return name.endswith("layernorm.weight") or name.endswith("norm.weight")


def make(bundle, seed, std, out=None):
    hdr_bytes, hdr = read_header(os.path.join(bundle, "model.safetensors.header"))
    tensors = sorted(((k, v) for k, v in hdr.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
    expected = manifest_files(bundle)["model.safetensors"]
    out = out or os.path.join(bundle, "model.safetensors")
    rng = np.random.default_rng(seed)
    t0 = time.time()
    pos = params = 0
    with open(out + ".part", "wb") as f:
        f.write(hdr_bytes)
        for name, v in tensors:
            if v["dtype"] not in ENCODERS:
                raise SystemExit(f"{name}: dtype {v['dtype']}, only {', '.join(ENCODERS)} are supported")
            width, encode = ENCODERS[v["dtype"]]
            a, b = v["data_offsets"]
            n = int(np.prod(v["shape"], dtype=np.int64))
            params += n
            if a != pos or b - a != width * n:
                raise SystemExit(f"{name}: data_offsets {a}..{b} do not follow {pos} / shape {v['shape']}")
            left = n
            while left:
                k = min(left, CHUNK)
                if is_norm(name):
                    x = np.ones(k, np.float32)
                else:
                    x = rng.standard_normal(k, dtype=np.float32)
                    x *= np.float32(std)
                f.write(encode(x))
                left -= k
            pos = b
    size = os.path.getsize(out + ".part")
    if size != expected:
        os.remove(out + ".part")
        raise SystemExit(f"recreated file has {size} bytes, the manifest says {expected}")
    os.replace(out + ".part", out)
    checked = check_sizes(bundle) if os.path.abspath(out) == os.path.abspath(os.path.join(bundle, "model.safetensors")) else 0
    print(json.dumps({"file": out, "bytes": size, "manifest_bytes": expected, "tensors": len(tensors),
                      "params": params, "seconds": round(time.time() - t0, 1), "files_size_checked": checked}))


def save_header(bundle):
    src = os.path.join(bundle, "model.safetensors")
    with open(src, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head)
        body = f.read(n)
    json.loads(body)
    open(src + ".header", "wb").write(head + body)
    print(f"wrote {src}.header ({8 + n} bytes)")


def pack(bundle, dest):
    """Copies the bundle without model.safetensors to dest, plus dest/model.safetensors.header."""
    import shutil

    if os.path.exists(dest):
        raise SystemExit(f"{dest} exists")
    shutil.copytree(bundle, dest, ignore=lambda d, names: [n for n in names if os.path.join(d, n) ==
                                                            os.path.join(bundle, "model.safetensors")])
    src = os.path.join(bundle, "model.safetensors")
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(0)
        head = f.read(8 + n)
    json.loads(head[8:])
    open(os.path.join(dest, "model.safetensors.header"), "wb").write(head)
    total = sum(os.path.getsize(os.path.join(r, x)) for r, _, fs in os.walk(dest) for x in fs)
    print(json.dumps({"packed": dest, "bytes": total, "header_bytes": 8 + n}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std", type=float, default=0.02)
    p.add_argument("--out", help="output file (default BUNDLE/model.safetensors)")
    p.add_argument("--save-header", action="store_true", help="write BUNDLE/model.safetensors.header and exit")
    p.add_argument("--pack", metavar="DEST", help="copy BUNDLE without model.safetensors, plus the header, to DEST and exit")
    a = p.parse_args(argv)
    if a.pack:
        pack(a.bundle, a.pack)
    elif a.save_header:
        save_header(a.bundle)
    else:
        make(a.bundle, a.seed, a.std, a.out)


if __name__ == "__main__":
    sys.exit(main())
