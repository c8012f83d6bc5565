"""What every bundle writer shares: a small functional re-implementation of the Llama family (the model the
DPO training-step graph is traced from, dpo.py), torch.onnx tracing for that graph, the manifest (TOML writer,
[files], [graphs] entries), token roles and the parity check helpers. The inference graphs are not traced:
graphs.py builds them from the config (bundle.py)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .dropout import lora_dropout

FORMAT_VERSION = 2
OPSET = 18  # the traced training graphs' opset (graphs.OPSET: the built inference graphs')
ATOL = 1e-4
GRAD_RTOL = 1e-3  # training graphs: max relative L2 error of a LoRA gradient, ORT vs torch
MAX_CONST_ELEMS = 4096  # largest constant an exported graph may hold: bigger initializers are taken for
# baked weights (_export fails), and the optimizer folds nothing into a constant bigger than this
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- the functional model (dpo.py traces it)
def rope_inv_freq(hf_model) -> tuple[torch.Tensor, float]:
    """inv_freq and attention scaling exactly as transformers computes them (all rope types
    that are static: default, linear, llama3, yarn ...); baked into the graphs as constants."""
    base = getattr(hf_model, "model", hf_model)
    re = base.rotary_emb
    return re.inv_freq.detach().clone().float(), float(getattr(re, "attention_scaling", 1.0))


def _rms(x, w, eps):
    """RMSNorm as transformers computes it: statistics in float32, the normed values cast back to x's dtype
    before the weight (a no-op in float32)."""
    xf = x.float()
    # xf * xf, not xf.pow(2): the same values, and ONNX Runtime's CPU Pow is several times slower than a Mul
    xf = xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _layer_norm(x, w, eps):
    """cohere2's LayerNorm: no bias, statistics and the weight in float32, cast back to x's dtype."""
    xf = x.float()
    centred = xf - xf.mean(-1, keepdim=True)
    return (w.float() * (centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps))).to(x.dtype)


def norm(A, x, w):
    """The family's norm: LayerNorm without bias (cohere2) or RMSNorm."""
    if A["family"] == "cohere2":
        return _layer_norm(x, w, A["layer_norm_eps"])
    return _rms(x, w, A["rms_norm_eps"])


def _rot_half(x):
    """(x1, x2) -> (-x2, x1) for the two halves of the last axis. Split, not slices: the backward of a split is a
    concatenation, that of a slice a scatter into zeros (traced, a transposed ScatterND per rotation)."""
    x1, x2 = torch.split(x, x.shape[-1] // 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rot_pairs(x):
    """cohere2's rotation: neighbours (2i, 2i + 1) paired, where _rot_half pairs i with i + D/2 (unbound, not
    strided slices, for _rot_half's reason)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-odd, even), dim=-1).flatten(-2)


def rotate(A, t, cos, sin):
    """Rotary embedding of t [B, heads, S, D] with the family's pairing; cos and sin (float32) in t's dtype, as
    transformers casts them."""
    cos, sin = cos.to(t.dtype), sin.to(t.dtype)
    return t * cos + (_rot_pairs(t) if A.get("rotary_interleaved") else _rot_half(t)) * sin


def rotary(inv_freq, rope_scale, position_ids, interleaved=False):
    """(cos, sin) [B, 1, S, D] of the positions, the attention scaling folded in; interleaved: each angle
    repeated for a pair of neighbours (cohere2) instead of for both halves."""
    freqs = position_ids.float()[..., None] * inv_freq[None, None, :]
    emb = torch.repeat_interleave(freqs, 2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * rope_scale)[:, None], (emb.sin() * rope_scale)[:, None]


def attention_bias(attention_mask, S, past_length=0, window=-1):
    """The additive attention bias [B, 1, S, past + S]: key j is visible to query q iff j <= past + q,
    attention_mask[b, j] == 1 and, with a sliding window w > 0, past + q - j < w (transformers' sliding mask)."""
    device = attention_mask.device
    key_pos = torch.arange(past_length + S, device=device)
    q_pos = torch.arange(S, device=device) + past_length
    visible = key_pos[None, :] <= q_pos[:, None]
    if window > 0:
        visible = visible & (q_pos[:, None] - key_pos[None, :] < window)
    allowed = visible[None, None] & (attention_mask[:, None, None, :] > 0)
    return torch.where(allowed, torch.zeros((), dtype=torch.float32, device=device),
                       torch.full((), torch.finfo(torch.float32).min, device=device))


def project(W, name, t, lora=None):
    """The linear W[name] on t (t W^T, plus its bias if any), plus PEFT LoRA's scale * (dropout(t) A^T) B^T when
    lora (as llama_forward's) adapts W[name]. As peft does with half-precision weights, the adapter branch runs
    in the adapter's dtype (float32) on t cast to it, and the sum is cast back to t's dtype (no-ops in float32)."""
    y = t @ W[name].T
    b = W.get(name[:-len("weight")] + "bias")
    y = y + b if b is not None else y
    if lora is not None and name in lora["modules"]:
        la, lb, j = lora["modules"][name]
        tl = t.to(la.dtype)
        dropped = lora["dropout"](tl, j) if "dropout" in lora else lora_dropout(tl, lora["p"], lora["seed"], j)
        y = (y + lora["scale"] * ((dropped @ la.T) @ lb.T)).to(t.dtype)
    return y


def qkv(A, W, p, h, lora=None):
    """Queries [B, heads, S, D], keys and values [B, kv_heads, S, D] of a layer's normed input h [B, S, hidden]
    (weights W[p + suffix]), q and k normed per head where the family does (qwen3); rotary is the caller's."""
    B, S = h.shape[0], h.shape[1]
    H, KV, D = A["num_attention_heads"], A["num_kv_heads"], A["head_dim"]
    q = project(W, p + "self_attn.q_proj.weight", h, lora).view(B, S, H, D).transpose(1, 2)
    k = project(W, p + "self_attn.k_proj.weight", h, lora).view(B, S, KV, D).transpose(1, 2)
    v = project(W, p + "self_attn.v_proj.weight", h, lora).view(B, S, KV, D).transpose(1, 2)
    if p + "self_attn.q_norm.weight" in W:
        q = norm(A, q, W[p + "self_attn.q_norm.weight"])
        k = norm(A, k, W[p + "self_attn.k_norm.weight"])
    return q, k, v


def after_attention(A, W, p, x, attended, lora=None):
    """A layer's output from its input x and attention's projected output: sequential for the Llama family
    (attention added, then the MLP of the updated stream's norm), parallel for cohere2 (attention and the MLP of
    the input's norm, both added to x)."""
    stream, h = mlp_input(A, W, p, x, attended)
    return stream + mlp_output(W, p, *mlp_products(W, p, h, lora), lora)


def mlp_input(A, W, p, x, attended):
    """(the residual stream after attention, the MLP's input): the stream's norm (sequential) or, for cohere2's
    parallel block, the layer input's."""
    if A.get("parallel_block"):
        return x + attended, norm(A, x, W[p + "input_layernorm.weight"])
    x = x + attended
    return x, norm(A, x, W[p + "post_attention_layernorm.weight"])


def mlp_products(W, p, h, lora):
    """The MLP's gate and up projections of its input h, before the activation."""
    return project(W, p + "mlp.gate_proj.weight", h, lora), project(W, p + "mlp.up_proj.weight", h, lora)


def mlp_output(W, p, gate, up, lora):
    """The MLP's output from its two products: down(silu(gate) * up)."""
    return project(W, p + "mlp.down_proj.weight", F.silu(gate) * up, lora)


def decoder_layer(W, p, A, cos, sin, bias, x, lora=None, past=None, sdpa=False, rotary=True):
    """One decoder layer on x [B, S, hidden]: the weights are W[p + suffix]. Returns (x, (k, v)); the block is
    after_attention's. lora and sdpa as in llama_forward; past: this layer's (k, v) [B, KVH, P, D] or None;
    rotary: whether this layer rotates q and k (cohere2's global layers do not)."""
    B, S = x.shape[0], x.shape[1]
    H, KV, D = A["num_attention_heads"], A["num_kv_heads"], A["head_dim"]
    q, k, v = qkv(A, W, p, norm(A, x, W[p + "input_layernorm.weight"]), lora)
    if rotary:
        q, k = rotate(A, q, cos, sin), rotate(A, k, cos, sin)
    if past is not None:
        k = torch.cat((past[0], k), dim=2)
        v = torch.cat((past[1], v), dim=2)
    T = k.shape[2]
    rep = H // KV
    kk = k[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
    vv = v[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
    if sdpa:
        o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=bias)
    else:
        # the softmax in float32 (transformers' eager attention): no-ops in float32
        att = ((q @ kk.transpose(2, 3)) * (1.0 / math.sqrt(D))).float() + bias
        o = torch.softmax(att, dim=-1).to(q.dtype) @ vv
    o = o.transpose(1, 2).reshape(B, S, H * D)
    return after_attention(A, W, p, x, project(W, p + "self_attn.o_proj.weight", o, lora), lora), (k, v)


def llama_forward(W: dict, A: dict, inv_freq, rope_scale, input_ids, attention_mask, position_ids, past=None,
                  head="lm", lora=None, sdpa=False):
    """Returns (logits or hidden, presents). past: list of (k, v) [B, KVH, P, D] or None.
    lora: None, or {"modules": {weight name: (A [r, in], B [out, r], module index)}, "scale", and either
    "p" and "seed" (croco's hash dropout, dropout.lora_dropout) or "dropout": a function (x, module index) -> x}:
    every listed linear becomes x W^T + scale * (dropout(x) A^T) B^T (PEFT LoRA).
    sdpa: attention by F.scaled_dot_product_attention instead of the graphs' eager softmax (the GPU
    benchmark's option; exports use the default). Every family of the training graphs: per-layer rotary and
    sliding windows (A["rotary_layers"], A["attention_windows"]), cohere2's parallel blocks, LayerNorm and
    logit scale."""
    x = F.embedding(input_ids, W["model.embed_tokens.weight"])
    P = past[0][0].shape[2] if past is not None else 0
    S = input_ids.shape[1]
    cos, sin = rotary(inv_freq, rope_scale, position_ids, A.get("rotary_interleaved", False))
    windows = A.get("attention_windows") or [-1] * A["num_layers"]
    biases = {w: attention_bias(attention_mask, S, P, w) for w in set(windows)}
    rotary_layers = A.get("rotary_layers") or [True] * A["num_layers"]
    presents = []
    for i in range(A["num_layers"]):
        x, kv = decoder_layer(W, f"model.layers.{i}.", A, cos, sin, biases[windows[i]], x, lora,
                              past[i] if past else None, sdpa, rotary_layers[i])
        presents.append(kv)
    x = norm(A, x, W["model.norm.weight"])
    if head == "lm":
        wl = W.get("lm_head.weight", W["model.embed_tokens.weight"])
        logits = x @ wl.T
        return (logits * A["logit_scale"] if A.get("logit_scale", 1.0) != 1.0 else logits), presents
    return x, presents


def fill_template(template, prompt, response=None):
    """template with {prompt} (and {response}) filled in; other braces are literal. With response=None,
    the prompt part (everything before {response})."""
    pre, rest = template.split("{prompt}", 1)
    mid, post = rest.split("{response}", 1)
    return pre + prompt + mid if response is None else pre + prompt + mid + response + post


def positions_from_mask(mask):
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


# ---------------------------------------------------------------- ONNX export
def _optimize(model, input_names, output_names):
    """What torch.onnx.export(optimize=True, input_names=, output_names=) does after the translation
    (onnxscript constant folding + rewrites + ONNX fusions, then the io renaming, in this order: a graph
    that exported fine before comes out byte-identical), except that no op is folded into a constant of
    more than MAX_CONST_ELEMS elements. With onnxscript's default limit (512^2) shape-only terms were
    folded into big constants: in the training graphs the dropout hash of the feature index, arange(in_features) *
    32769 * 1103515245 (dropout.dropout_keep), became an int64 [in_features] initializer per LoRA module, which
    the baked-weights check rejects once in_features > MAX_CONST_ELEMS (down_proj with intermediate_size
    4608). Such terms now stay ops (Range, Mul ...) that compute the same exact int64 values at run time."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    onnxscript.optimizer.optimize_ir(model, output_size_limit=MAX_CONST_ELEMS)
    onnxscript.rewriter.onnx_fusions.fuse(model)
    # as torch.onnx's _ir_passes.rename_inputs / rename_outputs (a count mismatch is reported by _export)
    for values, names in ((model.graph.inputs, input_names), (model.graph.outputs, output_names)):
        for v, n in zip(values, names):
            v.metadata_props["pkg.torch.onnx.original_node_name"] = str(v.name)
            v.name = n


def _export(module, args, path, input_names, output_names, dynamic_shapes, dim_names, log, strip_metadata=False):
    """strip_metadata: drop the per-node debug metadata (fx node text, scopes; most of a large graph's bytes)."""
    import onnx

    t0 = time.time()
    prog = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes,
                             external_data=False, optimize=False, verbose=False)
    _optimize(prog.model, input_names, output_names)
    prog.save(path)
    m = onnx.load(path)
    got_in = [i.name for i in m.graph.input]
    got_out = [o.name for o in m.graph.output]
    if got_in != input_names or got_out != output_names:
        raise SystemExit(f"export of {path}: io names differ\n in:{got_in}\n out:{got_out}")
    big = [t.name for t in m.graph.initializer if np.prod(t.dims) > MAX_CONST_ELEMS]
    if big:
        raise SystemExit(f"export of {path}: weights were baked as initializers: {big[:5]}")
    # give the symbolic dims stable names (the Rust loader reads them from the manifest)
    for vi in list(m.graph.input) + list(m.graph.output):
        names = dim_names.get(vi.name)
        if names is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        assert len(dims) == len(names), (vi.name, len(dims), names)
        for d, n in zip(dims, names):
            if isinstance(n, str):
                d.ClearField("dim_value")
                d.dim_param = n
            else:
                d.dim_value = n
    nodes = half_constants_expanded(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    if strip_metadata:
        for node in m.graph.node:
            del node.metadata_props[:]
    onnx.save(m, path)
    onnx.checker.check_model(path)
    log(f"exported {os.path.basename(path)} in {time.time() - t0:.1f}s ({os.path.getsize(path)} bytes, "
        f"{len(m.graph.node)} nodes)")


def half_constants_expanded(nodes):
    """nodes with each half-precision ConstantOfShape (torch's zeros in a traced backward) replaced by a scalar
    Constant expanded to the shape: ONNX allows ConstantOfShape a bfloat16 value only from opset 20, and
    ONNX Runtime refuses such a graph at opset 18."""
    import onnx

    out = []
    for node in nodes:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type != "ConstantOfShape" or value is None \
                or value.data_type not in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16):
            out.append(node)
            continue
        scalar = onnx.TensorProto()
        scalar.CopyFrom(value)
        del scalar.dims[:]
        const = node.output[0] + "/scalar"
        out += [onnx.helper.make_node("Constant", [], [const], value=scalar),
                onnx.helper.make_node("Expand", [const, node.input[0]], list(node.output), name=node.name)]
    return out


def _io_spec(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


# ---------------------------------------------------------------- manifest (TOML writer)
def _toml_val(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return r if ("." in r or "e" in r or "inf" in r or "nan" in r) else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_val(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _toml_key(k):
    import re

    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def to_toml(d, prefix=""):
    lines, tables, arrays = [], [], []
    for k, v in d.items():
        if isinstance(v, dict) and not v.get("__inline__"):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            if isinstance(v, dict):
                v = {a: b for a, b in v.items() if a != "__inline__"}
            lines.append(f"{_toml_key(k)} = {_toml_val(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}{_toml_key(k)}"
        out += f"\n[{name}]\n" + to_toml(v, name + ".")
    for k, v in arrays:
        name = f"{prefix}{_toml_key(k)}"
        for item in v:
            out += f"\n[[{name}]]\n" + to_toml(item, name + ".")
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def left_pad(seqs, pad_id):
    Lm = max(len(s) for s in seqs)
    ids = np.full((len(seqs), Lm), pad_id, np.int64)
    mask = np.zeros((len(seqs), Lm), np.int64)
    for i, s in enumerate(seqs):
        ids[i, Lm - len(s):] = s
        mask[i, Lm - len(s):] = 1
    return ids, mask


class ParityError(SystemExit):
    pass


def _check(name, diff, tol, report):
    report[name] = float(diff)
    if not diff <= tol:
        raise ParityError(f"PARITY FAILED: {name}: max abs diff {diff:.3g} > {tol:g}")


# ---------------------------------------------------------------- tokens and manifest
def _special_tokens(tok, chat_template):
    vocab = tok.get_vocab(with_added_tokens=True)
    added = {t.content: vocab[t.content] for t in tok.get_added_tokens_decoder().values() if t.special} \
        if hasattr(tok, "get_added_tokens_decoder") else {}
    return dict(sorted(added.items(), key=lambda kv: kv[1]))


def _tok_ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def token_roles(tok, cfg, specials, stop_tokens=None, generation_stop_ids=()):
    """bos / eos / pad / stop tokens: the demo's names when present, else the ids of the model config and of
    generation_config.json (its eos_token_id often lists the chat's end-of-turn token too)."""
    def name(i):
        return tok.id_to_token(i) if i is not None and i >= 0 and tok.id_to_token(i) is not None else ""

    eos = cfg.eos_token_id
    eos_list = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    if stop_tokens:
        stop = list(stop_tokens)
    elif any(t in specials for t in ["<|end|>", "<|eos|>"]):
        stop = [t for t in ["<|end|>", "<|eos|>"] if t in specials]
    else:
        stop = list(dict.fromkeys(name(i) for i in [*eos_list, *generation_stop_ids] if name(i)))
    stop_ids = [tok.token_to_id(t) for t in stop]
    if not stop or None in stop_ids:
        raise SystemExit(f"cannot determine stop tokens ({stop}); pass --stop-token")
    bos = "<|bos|>" if "<|bos|>" in specials else name(getattr(cfg, "bos_token_id", None))
    pad_id = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else (eos_list[0] if eos_list else 0)
    pad = "<|pad|>" if "<|pad|>" in specials else name(pad_id)
    return {"bos_token": bos, "bos_token_id": tok.token_to_id(bos) if bos else -1,
            "eos_token_id": int(eos_list[0]) if eos_list else -1,
            "pad_token": pad, "pad_token_id": tok.token_to_id(pad) if pad else int(pad_id),
            "stop_tokens": stop, "stop_token_ids": stop_ids}


def finish_manifest(out, kind, name, A, tensors, dtype, graphs, specials, chat_template, parity_report, roles,
                    parity_layers, rel_report=None, fixtures_note=""):
    """Writes croco-model.toml (format version 2) for the bundle in `out`: tensors are list_tensors entries
    stored as `dtype`; graphs maps a name to its entry (bundle.build_graphs, or graph_entry of a traced one)."""
    names = [t["name"] for t in tensors]
    man = {
        "format": "croco-model", "format_version": FORMAT_VERSION, "kind": kind, "name": name,
        "created_by": "tools/export (python -m tools.export)",
        "architecture": {**A},
        "tokenizer": {
            "file": "tokenizer.json", **roles,
            "special_tokens": {**specials, "__inline__": True},
        },
        "chat": {"template": chat_template, "add_special_tokens": False,
                 "prompt_template": chat_template.split("{response}")[0]},
        "weights": {"file": "model.safetensors", "dtype": dtype,
                    "tensors": [{"name": t["name"], "dtype": dtype, "shape": list(t["shape"])} for t in tensors]},
        "lora": {"target_modules": LORA_TARGETS,
                 "target_weights": [n for n in names if any(f".{t}.weight" in n for t in LORA_TARGETS)]},
        "graphs": graphs,
        "parity": {"dir": "parity", "atol": ATOL, "layers": parity_layers, "note": fixtures_note,
                   "measured_max_abs_diff": {**parity_report, "__inline__": True}},
    }
    if rel_report:
        man["parity"]["grad_rtol"] = GRAD_RTOL
        man["parity"]["measured_max_rel_l2"] = {**rel_report, "__inline__": True}
    man["files"] = file_table(out)
    write_manifest(out, man)
    return man


def graph_entry(g, weight_names):
    """[graphs.<name>] of a traced graph: its files by precision (`files`; else one float32 `file`)."""
    entry = {"files": g.get("files") or {"float32": g["file"]}, "opset": OPSET,
             "weight_inputs": "all" if g["weight_inputs"] == list(weight_names) else g["weight_inputs"],
             "inputs": g["inputs"], "outputs": g["outputs"]}
    if "sequence_chunks" in g:
        entry["sequence_chunks"] = g["sequence_chunks"]
    return entry


def file_table(out):
    """[files]: sha256 and size of every file of the bundle except the manifest, sorted by path."""
    files = {}
    for root, _, fs in os.walk(out):
        for f in sorted(fs):
            p = os.path.join(root, f)
            rel = os.path.relpath(p, out).replace(os.sep, "/")
            if rel == "croco-model.toml":
                continue
            files[rel] = {"sha256": sha256_file(p), "bytes": os.path.getsize(p), "__inline__": True}
    return dict(sorted(files.items()))


def write_manifest(out, man):
    """Writes croco-model.toml. Works on a manifest read back with tomllib too (the inline tables are
    marked again), so that rewriting an unchanged manifest reproduces it byte for byte."""
    import tomllib

    man["tokenizer"]["special_tokens"]["__inline__"] = True
    for k in ("measured_max_abs_diff", "measured_max_rel_l2"):
        if k in man["parity"]:
            man["parity"][k]["__inline__"] = True
    for v in man["files"].values():
        v["__inline__"] = True
    text = "# croco model bundle manifest; format described in docs/bundle-format.md\n" + to_toml(man)
    tomllib.loads(text)  # round-trip check
    open(os.path.join(out, "croco-model.toml"), "w").write(text)


def _tok_fixture(tok, out, texts):
    cases = [{"text": t, "ids": _tok_ids(tok, t), "decoded": tok.decode(_tok_ids(tok, t), skip_special_tokens=False)}
             for t in texts]
    json.dump({"add_special_tokens": False, "cases": cases},
              open(os.path.join(out, "parity", "tokenizer.json"), "w"), ensure_ascii=False, indent=1)
