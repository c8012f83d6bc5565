"""Bundle <-> Hugging Face: a bundle loaded into transformers, and PEFT LoRA adapters (as croco writes
them) merged into a full HF checkpoint (`python -m tools.export merge-adapter BUNDLE ADAPTER_DIR OUT_DIR`).

PEFT adapter format: `adapter_model.safetensors` with float32 tensors
`base_model.model.model.layers.{l}.{self_attn|mlp}.{module}.lora_{A,B}.weight` (A `[r, in]`, B `[out, r]`)
and `adapter_config.json` (`peft_type` "LORA", `r`, `lora_alpha`, `target_modules`, ...). The merged
weight is W + (lora_alpha / r) * B @ A (`use_rslora`: lora_alpha / sqrt(r)).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tomllib

import torch


def load_bundle(bundle):
    """(manifest, {weight name: float32 tensor} in the manifest's (graph input) order)."""
    from safetensors.torch import load_file

    man = tomllib.load(open(os.path.join(bundle, "croco-model.toml"), "rb"))
    sd = load_file(os.path.join(bundle, man["weights"]["file"]))
    order = [t["name"] for t in man["weights"]["tensors"]]
    if sorted(order) != sorted(sd):
        raise SystemExit(f"{bundle}: safetensors tensors differ from the manifest's [weights]")
    return man, {n: sd[n].float().contiguous() for n in order}


def hf_config(man, W):
    """transformers config of a policy bundle (static default rope only: other rope types are baked into
    the graphs and not recorded in the manifest)."""
    from transformers import AutoConfig

    a, t = man["architecture"], man["tokenizer"]
    if a.get("rope_type", "default") != "default":
        raise SystemExit(f"rope_type {a['rope_type']!r} cannot be rebuilt from a manifest; re-export from the "
                         "HF checkpoint instead")
    kw = dict(vocab_size=a["vocab_size"], hidden_size=a["hidden_size"], num_hidden_layers=a["num_layers"],
              num_attention_heads=a["num_attention_heads"], num_key_value_heads=a["num_kv_heads"],
              head_dim=a["head_dim"], intermediate_size=a["intermediate_size"], rms_norm_eps=a["rms_norm_eps"],
              rope_theta=a["rope_theta"], max_position_embeddings=a["max_position_embeddings"],
              tie_word_embeddings=a["tie_word_embeddings"], hidden_act=a["hidden_act"],
              pad_token_id=t["pad_token_id"], eos_token_id=t["stop_token_ids"],
              bos_token_id=t["bos_token_id"] if t.get("bos_token_id", -1) >= 0 else None)
    if a["family"] not in ("llama", "mistral", "qwen2", "qwen3"):
        raise SystemExit(f"family {a['family']!r} cannot be rebuilt from a manifest; re-export from the HF checkpoint")
    windows = [w for w in a.get("attention_windows", []) if w > 0]
    if a["family"] == "mistral":
        kw["sliding_window"] = windows[0] if windows else None
    elif windows:
        raise SystemExit("sliding-window layers cannot be rebuilt from a manifest; re-export from the HF checkpoint")
    if a["family"] in ("llama", "mistral", "qwen3") and any(n.endswith("q_proj.bias") for n in W):
        kw["attention_bias"] = True
    return AutoConfig.for_model(a["family"], **kw)


def hf_model_from_bundle(bundle, attn="eager"):
    """(manifest, weights, transformers *ForCausalLM (policy) or *ForSequenceClassification (reward, one label)
    with the bundle's weights, float32, eval)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    man, W = load_bundle(bundle)
    cfg = hf_config(man, W)
    cfg._attn_implementation = attn
    if man["kind"] == "reward":
        cfg.num_labels = 1
    cls = AutoModelForCausalLM if man["kind"] == "policy" else AutoModelForSequenceClassification
    model = cls.from_config(cfg, dtype=torch.float32)
    sd = dict(W)
    if man["kind"] == "policy" and man["architecture"]["tie_word_embeddings"]:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise SystemExit(f"bundle -> transformers: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return man, W, model.float().eval()


def checkpoint_from_bundle(bundle, out):
    """Writes the bundle as a Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json): how a
    bundle is re-exported in a newer format from the same weights. Returns the bundle's manifest."""
    man, _, model = hf_model_from_bundle(bundle)
    os.makedirs(out, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    shutil.copyfile(os.path.join(bundle, man["tokenizer"]["file"]), os.path.join(out, "tokenizer.json"))
    return man


# ---------------------------------------------------------------- PEFT adapters
def read_adapter(adapter_dir):
    """(adapter_config dict, {peft tensor name: tensor}, scale)."""
    from safetensors.torch import load_file

    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise SystemExit(f"{adapter_dir}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("bias", "none") != "none":
        raise SystemExit(f"{adapter_dir}: bias {cfg['bias']!r} is not supported (only \"none\")")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return cfg, load_file(os.path.join(adapter_dir, "adapter_model.safetensors")), scale


def merge_weights(W, tensors, scale):
    """W with every adapted weight replaced by W + scale * B @ A (float32). Tensor names without the
    `base_model.model.` prefix and with PEFT's adapter name (`.lora_A.default.weight`) are accepted."""
    merged, used = dict(W), set()
    for name in tensors:
        n = name.replace(".default.weight", ".weight")
        if not n.endswith(".lora_A.weight"):
            continue
        base = n[: -len(".lora_A.weight")]
        w = base.removeprefix("base_model.model.") + ".weight"
        bname = name.replace("lora_A", "lora_B")
        if w not in W or bname not in tensors:
            raise SystemExit(f"adapter tensor {name}: no weight {w} in the bundle, or no {bname}")
        a, b = tensors[name].float(), tensors[bname].float()
        if a.shape[1] != W[w].shape[1] or b.shape[0] != W[w].shape[0] or a.shape[0] != b.shape[1]:
            raise SystemExit(f"adapter {base}: A {tuple(a.shape)} B {tuple(b.shape)} do not fit {w} {tuple(W[w].shape)}")
        merged[w] = (W[w] + scale * (b @ a)).contiguous()
        used |= {name, bname}
    left = sorted(set(tensors) - used)
    if left:
        raise SystemExit(f"adapter tensors not understood: {left[:5]}")
    return merged


def merge_adapter(bundle, adapter_dir, out, log=print):
    """Writes a full HF checkpoint (config.json, model.safetensors, tokenizer.json) of bundle + adapter."""
    from safetensors.torch import save_file

    man, W, model = hf_model_from_bundle(bundle)
    acfg, tensors, scale = read_adapter(adapter_dir)
    merged = merge_weights(W, tensors, scale)
    os.makedirs(out, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    save_file({n: t.contiguous() for n, t in merged.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copyfile(os.path.join(bundle, man["tokenizer"]["file"]), os.path.join(out, "tokenizer.json"))
    n = sum(1 for k in tensors if "lora_A" in k)
    log(f"merged {n} LoRA modules (r={acfg['r']}, lora_alpha={acfg['lora_alpha']}, scale={scale:g}) into {out}")
    return out
