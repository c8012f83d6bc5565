"""A Hugging Face checkpoint read without loading the model: its config as croco's architecture numbers, its
rotary frequencies, and its weights streamed tensor by tensor from the safetensors shards into the bundle's one
safetensors file (written header first, so at most one tensor is in memory at a time). Below graphs.py's users
in the exporter's import line; imports nothing of the exporter."""
from __future__ import annotations

import importlib
import json
import os
import struct

import numpy as np

from .graphs import FAMILIES, HEAD_DIM_MULTIPLE

# safetensors dtype names <-> bundle dtype names
DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
ST_DTYPES = {v: k for k, v in DTYPES.items()}
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class CheckpointError(SystemExit):
    pass


def load_config(ckpt):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(ckpt)


def arch_from_config(cfg) -> dict:
    """[architecture] of the manifest: the numbers every graph and the Rust loader need, per-layer attention
    windows (-1: global) and which layers apply rotary."""
    mt = cfg.model_type
    if mt not in FAMILIES:
        raise CheckpointError(f"unsupported model_type {mt!r}; supported: {sorted(FAMILIES)}")
    if cfg.hidden_act not in ("silu",):
        raise CheckpointError(f"hidden_act {cfg.hidden_act!r} is not supported (silu only)")
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if head_dim % HEAD_DIM_MULTIPLE:
        raise CheckpointError(f"head_dim {head_dim} is not a multiple of {HEAD_DIM_MULTIPLE}: ONNX Runtime's "
                              "GroupQueryAttention (CPU) refuses it")
    layers = cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        windows = [int(window) if t == "sliding_attention" and window else -1 for t in types[:layers]]
    else:  # mistral: one window for every layer when set
        windows = [int(window) if window else -1] * layers
    rp = getattr(cfg, "rope_parameters", None) or {}
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    cohere = mt == "cohere2"
    return {
        "family": mt, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_layers": layers,
        "num_attention_heads": heads, "num_kv_heads": getattr(cfg, "num_key_value_heads", None) or heads,
        "head_dim": head_dim, "intermediate_size": cfg.intermediate_size,
        # transformers' names: layer_norm_eps for cohere2's LayerNorm, rms_norm_eps for the RMSNorm families
        **({"layer_norm_eps": float(cfg.layer_norm_eps)} if cohere else {"rms_norm_eps": float(cfg.rms_norm_eps)}),
        "rope_theta": float(theta), "rope_type": rp.get("rope_type", "default"),
        # cohere2: rotary on the sliding-window layers only, neighbours paired (interleaved)
        "rotary_layers": [w > 0 for w in windows] if cohere else [True] * layers,
        "rotary_interleaved": cohere,
        "attention_windows": windows,
        "parallel_block": cohere,
        "logit_scale": float(getattr(cfg, "logit_scale", 1.0) or 1.0),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "hidden_act": cfg.hidden_act,
    }


def rotary_of(cfg) -> dict:
    """inv_freq and attention scaling exactly as the family's transformers rotary module computes them (every
    static rope type: default, linear, llama3, yarn, ...), without building the model."""
    mt = cfg.model_type
    modeling = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}")
    cls = next(getattr(modeling, n) for n in dir(modeling) if n.endswith("RotaryEmbedding"))
    rotary = cls(config=cfg)
    return {"inv_freq": rotary.inv_freq.detach().double().numpy(),
            "attention_scaling": float(getattr(rotary, "attention_scaling", 1.0))}


def shard_files(ckpt) -> list[str]:
    """The checkpoint's safetensors files, in index order."""
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = json.load(open(index))["weight_map"]
        return [os.path.join(ckpt, f) for f in dict.fromkeys(weight_map.values())]
    single = os.path.join(ckpt, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise CheckpointError(f"{ckpt}: no model.safetensors or model.safetensors.index.json (pytorch_model.bin "
                          "checkpoints: save them with safetensors first)")


def keep_tensor(name: str, kind: str, tied: bool) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return False
    if name == "lm_head.weight":
        return kind == "policy" and not tied
    if name == "score.weight":
        return kind == "reward"
    return name.startswith("model.")


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[:2] == ["model", "layers"] else None


def list_tensors(ckpt, kind, tied, layers=None) -> list[dict]:
    """(name, dtype, shape, shard) of every kept tensor, read from the shards' headers only; `layers`: keep only
    decoder layers below it (the depth-truncated copy that parity runs on)."""
    from safetensors import safe_open

    out = []
    for shard in shard_files(ckpt):
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():
                layer = layer_of(name)
                if not keep_tensor(name, kind, tied) or (layers is not None and layer is not None and layer >= layers):
                    continue
                sl = f.get_slice(name)
                dtype = DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise CheckpointError(f"{shard}: tensor {name} is {sl.get_dtype()}; float32/bfloat16/float16 only")
                out.append({"name": name, "dtype": dtype, "shape": list(sl.get_shape()), "shard": shard})
    if kind == "reward" and not any(t["name"] == "score.weight" for t in out):
        raise CheckpointError(f"{ckpt}: no score.weight: a reward checkpoint is a *ForSequenceClassification")
    return sorted(out, key=_manifest_order)


# A layer's tensors in transformers' module order (attention, MLP, norms), as its state_dict lists them.
LAYER_ORDER = [f"self_attn.{m}_proj.{p}" for m in "qkvo" for p in ("weight", "bias")] + [
    "self_attn.q_norm.weight", "self_attn.k_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]


def _manifest_order(t):
    """embeddings, layers in order (each in transformers' module order), final norm, heads."""
    name, layer = t["name"], layer_of(t["name"])
    if layer is not None:
        suffix = name.split(".", 3)[3]
        return (1, layer, LAYER_ORDER.index(suffix) if suffix in LAYER_ORDER else len(LAYER_ORDER), suffix)
    return (0 if "embed_tokens" in name else 2, 0, 0, name)


def weights_dtype(tensors) -> str:
    """The dtype the bundle stores: that of most of the checkpoint's bytes (norms shipped in float32 beside
    bfloat16 matrices are converted, as transformers' torch_dtype loading does)."""
    total = {}
    for t in tensors:
        total[t["dtype"]] = total.get(t["dtype"], 0) + int(np.prod(t["shape"])) * ELEMENT_BYTES[t["dtype"]]
    return max(total, key=total.get)


def _tensor_bytes(tensor, dtype) -> bytes:
    import torch

    target = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    t = tensor.to(target).contiguous()
    return (t.view(torch.int16) if dtype != "float32" else t.view(torch.int32)).numpy().tobytes()


def write_safetensors(path, tensors, dtype, metadata=None, log=print):
    """Streams `tensors` (from list_tensors) into one safetensors file, every tensor as `dtype`: the header is
    written from the shapes first, then each tensor is read from its shard, converted and appended."""
    from safetensors import safe_open

    header, offset = {}, 0
    for t in tensors:
        size = int(np.prod(t["shape"])) * ELEMENT_BYTES[dtype]
        header[t["name"]] = {"dtype": ST_DTYPES[dtype], "shape": t["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    by_shard = {}
    for t in tensors:
        by_shard.setdefault(t["shard"], []).append(t["name"])
    with open(path + ".partial", "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        start = out.tell()
        # Shard by shard (each opened once), writing each tensor at its own offset.
        for shard, names in by_shard.items():
            with safe_open(shard, framework="pt") as f:
                for name in names:
                    out.seek(start + header[name]["data_offsets"][0])
                    out.write(_tensor_bytes(f.get_tensor(name), dtype))
            log(f"weights: {os.path.basename(shard)} -> {os.path.basename(path)} ({len(names)} tensors)")
        out.truncate(start + offset)
    os.replace(path + ".partial", path)
