"""HF checkpoint -> croco bundle: functional Llama graphs exported to ONNX with the weights as
graph inputs, weights in safetensors, a TOML manifest with sha256 checksums, and parity fixtures.

The graphs are traced from a small functional re-implementation of the Llama family (Llama,
Mistral without sliding window, Qwen2 attention biases, Qwen3 q/k norms) so that every weight
stays a named graph input; parity against transformers proves the re-implementation right.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

from .dropout import lora_dropout

FORMAT_VERSION = 1
OPSET = 18
ATOL = 1e-4
GRAD_RTOL = 1e-3  # dpo graph: max relative L2 error of a LoRA gradient, ORT vs torch
MAX_CONST_ELEMS = 4096  # largest constant an exported graph may hold: bigger initializers are taken for
# baked weights (_export fails), and the optimizer folds nothing into a constant bigger than this
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}


# ---------------------------------------------------------------- architecture
def arch_from_config(cfg) -> dict:
    mt = cfg.model_type
    if mt not in SUPPORTED:
        raise SystemExit(f"unsupported model_type {mt!r}; supported: {sorted(SUPPORTED)}")
    if getattr(cfg, "sliding_window", None) and mt == "mistral":
        print(f"warning: sliding_window={cfg.sliding_window} is not applied; exact only up to that length")
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rp = getattr(cfg, "rope_parameters", None) or {}
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return {
        "family": mt, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_hidden_layers, "num_attention_heads": heads,
        "num_kv_heads": getattr(cfg, "num_key_value_heads", None) or heads, "head_dim": head_dim,
        "intermediate_size": cfg.intermediate_size, "rms_norm_eps": float(cfg.rms_norm_eps),
        "rope_theta": float(theta), "rope_type": rp.get("rope_type", "default"),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "hidden_act": cfg.hidden_act,
    }


def rope_inv_freq(hf_model) -> tuple[torch.Tensor, float]:
    """inv_freq and attention scaling exactly as transformers computes them (all rope types
    that are static: default, linear, llama3, yarn ...); baked into the graphs as constants."""
    base = getattr(hf_model, "model", hf_model)
    re = base.rotary_emb
    return re.inv_freq.detach().clone().float(), float(getattr(re, "attention_scaling", 1.0))


def _rms(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf


def _rot_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def llama_forward(W: dict, A: dict, inv_freq, rope_scale, input_ids, attention_mask, position_ids, past=None,
                  head="lm", lora=None, sdpa=False):
    """Returns (logits or hidden, presents). past: list of (k, v) [B, KVH, P, D] or None.
    lora: None, or {"modules": {weight name: (A [r, in], B [out, r], module index)}, "scale", and either
    "p" and "seed" (croco's hash dropout, dropout.lora_dropout) or "dropout": a function (x, module index) -> x}:
    every listed linear becomes x W^T + scale * (dropout(x) A^T) B^T (PEFT LoRA).
    sdpa: attention by F.scaled_dot_product_attention instead of the graphs' eager softmax (the GPU
    benchmark's option; exports use the default)."""
    B, S = input_ids.shape
    H, KV, D, L = A["num_attention_heads"], A["num_kv_heads"], A["head_dim"], A["num_layers"]
    eps = A["rms_norm_eps"]
    x = F.embedding(input_ids, W["model.embed_tokens.weight"])
    freqs = position_ids.float()[..., None] * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * rope_scale)[:, None]
    sin = (emb.sin() * rope_scale)[:, None]
    P = past[0][0].shape[2] if past is not None else 0
    T = P + S
    key_pos = torch.arange(T, device=input_ids.device)
    q_pos = torch.arange(S, device=input_ids.device) + P
    allowed = (key_pos[None, :] <= q_pos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
    bias = torch.where(allowed, torch.zeros((), dtype=torch.float32, device=x.device),
                       torch.full((), torch.finfo(torch.float32).min, device=x.device))
    presents = []
    for i in range(L):
        p = f"model.layers.{i}."
        h = _rms(x, W[p + "input_layernorm.weight"], eps)

        def lin(name, t):
            y = t @ W[p + name + ".weight"].T
            b = W.get(p + name + ".bias")
            y = y + b if b is not None else y
            if lora is not None and p + name + ".weight" in lora["modules"]:
                la, lb, j = lora["modules"][p + name + ".weight"]
                dropped = lora["dropout"](t, j) if "dropout" in lora else lora_dropout(t, lora["p"], lora["seed"], j)
                y = y + lora["scale"] * ((dropped @ la.T) @ lb.T)
            return y

        q = lin("self_attn.q_proj", h).view(B, S, H, D).transpose(1, 2)
        k = lin("self_attn.k_proj", h).view(B, S, KV, D).transpose(1, 2)
        v = lin("self_attn.v_proj", h).view(B, S, KV, D).transpose(1, 2)
        if p + "self_attn.q_norm.weight" in W:
            q = _rms(q, W[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, W[p + "self_attn.k_norm.weight"], eps)
        q = q * cos + _rot_half(q) * sin
        k = k * cos + _rot_half(k) * sin
        if past is not None:
            k = torch.cat((past[i][0], k), dim=2)
            v = torch.cat((past[i][1], v), dim=2)
        presents.append((k, v))
        rep = H // KV
        kk = k[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
        vv = v[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
        if sdpa:
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=bias)
        else:
            att = (q @ kk.transpose(2, 3)) * (1.0 / math.sqrt(D)) + bias
            o = torch.softmax(att, dim=-1) @ vv
        o = o.transpose(1, 2).reshape(B, S, H * D)
        x = x + lin("self_attn.o_proj", o)
        h = _rms(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + lin("mlp.down_proj", F.silu(lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h))
    x = _rms(x, W["model.norm.weight"], eps)
    if head == "lm":
        wl = W.get("lm_head.weight", W["model.embed_tokens.weight"])
        return x @ wl.T, presents
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


class DecodeGraph(torch.nn.Module):
    def __init__(self, A, names, inv_freq, scale):
        super().__init__()
        self.A, self.names, self.scale = A, names, scale
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, input_ids, attention_mask, position_ids, past, weights):
        W = dict(zip(self.names, weights))
        pkv = [(past[2 * i], past[2 * i + 1]) for i in range(self.A["num_layers"])]
        logits, pres = llama_forward(W, self.A, self.inv_freq, self.scale, input_ids, attention_mask, position_ids, pkv)
        out = [logits]
        for k, v in pres:
            out += [k, v]
        return tuple(out)


class LogprobGraph(torch.nn.Module):
    def __init__(self, A, names, inv_freq, scale):
        super().__init__()
        self.A, self.names, self.scale = A, names, scale
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, input_ids, attention_mask, response_mask, weights):
        W = dict(zip(self.names, weights))
        pos = positions_from_mask(attention_mask)
        logits, _ = llama_forward(W, self.A, self.inv_freq, self.scale, input_ids, attention_mask, pos, None)
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tok = torch.gather(lp, 2, input_ids[:, 1:, None])[..., 0]
        tok = torch.cat((torch.zeros_like(tok[:, :1]), tok), dim=1) * response_mask.float()
        return tok, tok.sum(-1)


class ScoreGraph(torch.nn.Module):
    def __init__(self, A, names, inv_freq, scale):
        super().__init__()
        self.A, self.names, self.scale = A, names, scale
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, input_ids, attention_mask, weights):
        W = dict(zip(self.names, weights))
        pos = positions_from_mask(attention_mask)
        h, _ = llama_forward(W, self.A, self.inv_freq, self.scale, input_ids, attention_mask, pos, None, head="hidden")
        T = input_ids.shape[1]
        last = (torch.arange(T, device=input_ids.device)[None, :] * (attention_mask > 0).long()).argmax(-1)
        hl = torch.gather(h, 1, last[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]
        return (hl @ W["score.weight"].T)[:, 0]


# ---------------------------------------------------------------- ONNX export
def _optimize(model, input_names, output_names):
    """What torch.onnx.export(optimize=True, input_names=, output_names=) does after the translation
    (onnxscript constant folding + rewrites + ONNX fusions, then the io renaming, in this order: a graph
    that exported fine before comes out byte-identical), except that no op is folded into a constant of
    more than MAX_CONST_ELEMS elements. With onnxscript's default limit (512^2) shape-only terms were
    folded into big constants: in dpo.onnx the dropout hash of the feature index, arange(in_features) *
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
    if strip_metadata:
        for node in m.graph.node:
            del node.metadata_props[:]
    onnx.save(m, path)
    onnx.checker.check_model(path)
    log(f"exported {os.path.basename(path)} in {time.time() - t0:.1f}s ({os.path.getsize(path)} bytes, "
        f"{len(m.graph.node)} nodes)")


def _io_spec(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def export_graphs(kind, A, W, inv_freq, scale, out, log):
    from torch.export import Dim

    names = list(W.keys())
    wlist = [W[n] for n in names]
    L, KV, D, V = A["num_layers"], A["num_kv_heads"], A["head_dim"], A["vocab_size"]
    wspec = {n: list(W[n].shape) for n in names}
    graphs = {}
    dyn = Dim.DYNAMIC
    if kind == "policy":
        B, S, P = 2, 3, 4
        ids = torch.randint(3, V, (B, S))
        past = []
        for _ in range(L):
            past += [torch.randn(B, KV, P, D), torch.randn(B, KV, P, D)]
        mask = torch.ones(B, P + S, dtype=torch.long)
        pos = torch.arange(P, P + S)[None].expand(B, S).contiguous()
        in_names = ["input_ids", "attention_mask", "position_ids"]
        out_names = ["logits"]
        pnames = []
        for i in range(L):
            pnames += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
            out_names += [f"present.{i}.key", f"present.{i}.value"]
        dims = {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "total"],
                "position_ids": ["batch", "seq"], "logits": ["batch", "seq", V]}
        for n in pnames:
            dims[n] = ["batch", KV, "past", D]
        for n in out_names[1:]:
            dims[n] = ["batch", KV, "total", D]
        ds = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}, [{0: dyn, 2: dyn}] * (2 * L), [None] * len(names))
        _export(DecodeGraph(A, names, inv_freq, scale), (ids, mask, pos, past, wlist), os.path.join(out, "decode.onnx"),
                in_names + pnames + names, out_names, ds, dims, log)
        graphs["decode"] = {
            "file": "decode.onnx",
            "inputs": [_io_spec(n, "int64", dims[n]) for n in in_names] + [_io_spec(n, "float32", dims[n]) for n in pnames],
            "outputs": [_io_spec(n, "float32", dims[n]) for n in out_names],
            "weight_inputs": names,
        }
        # logprob
        B, T = 2, 7
        ids = torch.randint(3, V, (B, T))
        mask = torch.ones(B, T, dtype=torch.long)
        rmask = torch.ones(B, T, dtype=torch.long)
        dims = {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"], "response_mask": ["batch", "seq"],
                "token_logprobs": ["batch", "seq"], "logprob_sum": ["batch"]}
        ds = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}, [None] * len(names))
        _export(LogprobGraph(A, names, inv_freq, scale), (ids, mask, rmask, wlist), os.path.join(out, "logprob.onnx"),
                ["input_ids", "attention_mask", "response_mask"] + names, ["token_logprobs", "logprob_sum"], ds, dims, log)
        graphs["logprob"] = {
            "file": "logprob.onnx",
            "inputs": [_io_spec(n, "int64", dims[n]) for n in ["input_ids", "attention_mask", "response_mask"]],
            "outputs": [_io_spec(n, "float32", dims[n]) for n in ["token_logprobs", "logprob_sum"]],
            "weight_inputs": names,
        }
    else:
        B, T = 2, 7
        ids = torch.randint(3, V, (B, T))
        mask = torch.ones(B, T, dtype=torch.long)
        dims = {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"], "score": ["batch"]}
        ds = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, [None] * len(names))
        _export(ScoreGraph(A, names, inv_freq, scale), (ids, mask, wlist), os.path.join(out, "score.onnx"),
                ["input_ids", "attention_mask"] + names, ["score"], ds, dims, log)
        graphs["score"] = {
            "file": "score.onnx",
            "inputs": [_io_spec(n, "int64", dims[n]) for n in ["input_ids", "attention_mask"]],
            "outputs": [_io_spec("score", "float32", dims["score"])],
            "weight_inputs": names,
        }
    return graphs


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


# ---------------------------------------------------------------- ORT helpers
def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _np_weights(W):
    return {n: t.detach().cpu().numpy() for n, t in W.items()}


def ort_greedy(sess, Wnp, A, ids, mask, max_new, stop_ids, pad_id):
    """Greedy decoding with the decode graph, mirroring transformers.generate (left padding)."""
    B = ids.shape[0]
    L, KV, D = A["num_layers"], A["num_kv_heads"], A["head_dim"]
    past = {}
    for i in range(L):
        past[f"past_key_values.{i}.key"] = np.zeros((B, KV, 0, D), np.float32)
        past[f"past_key_values.{i}.value"] = np.zeros((B, KV, 0, D), np.float32)
    cur_ids, cur_mask = ids, mask
    pos = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1).astype(np.int64)
    done = np.zeros(B, bool)
    out_tokens, step_logits = [[] for _ in range(B)], []
    for step in range(max_new):
        feeds = {"input_ids": cur_ids, "attention_mask": cur_mask, "position_ids": pos, **past, **Wnp}
        res = sess.run(None, feeds)
        logits = res[0][:, -1]
        step_logits.append(logits)
        nxt = logits.argmax(-1)
        nxt = np.where(done, pad_id, nxt)
        for b in range(B):
            if not done[b]:
                out_tokens[b].append(int(nxt[b]))
                if int(nxt[b]) in stop_ids:
                    done[b] = True
        for i in range(L):
            past[f"past_key_values.{i}.key"] = res[1 + 2 * i]
            past[f"past_key_values.{i}.value"] = res[2 + 2 * i]
        if done.all():
            break
        cur_mask = np.concatenate([cur_mask, np.ones((B, 1), np.int64)], 1)
        pos = pos[:, -1:] + 1
        cur_ids = nxt[:, None].astype(np.int64)
    return out_tokens, step_logits


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


# ---------------------------------------------------------------- bundle
def _load_checkpoint(ckpt, kind):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(ckpt)
    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    model = cls.from_pretrained(ckpt, attn_implementation="eager", dtype=torch.float32).eval()
    if kind == "reward" and model.config.num_labels != 1:
        raise SystemExit(f"reward model must have num_labels=1, has {model.config.num_labels}")
    sd = model.state_dict()
    W = {}
    for n, t in sd.items():
        if n == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue
        if n.endswith("rotary_emb.inv_freq"):
            continue
        W[n] = t.detach().float().contiguous()
    return cfg, model, W


def _special_tokens(tok, chat_template):
    vocab = tok.get_vocab(with_added_tokens=True)
    added = {t.content: vocab[t.content] for t in tok.get_added_tokens_decoder().values() if t.special} \
        if hasattr(tok, "get_added_tokens_decoder") else {}
    return dict(sorted(added.items(), key=lambda kv: kv[1]))


def _tok_ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def write_bundle(kind, ckpt, tokenizer_path, out, chat_template, name, log):
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "parity"))
    cfg, model, W = _load_checkpoint(ckpt, kind)
    A = arch_from_config(cfg)
    inv_freq, scale = rope_inv_freq(model)
    tok = Tokenizer.from_file(tokenizer_path)
    shutil.copyfile(tokenizer_path, os.path.join(out, "tokenizer.json"))
    save_file(W, os.path.join(out, "model.safetensors"), metadata={"format": "pt", "croco_kind": kind})
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)
    graphs = export_graphs(kind, A, W, inv_freq, scale, out, log)
    specials = _special_tokens(tok, chat_template)
    return cfg, model, W, A, inv_freq, scale, tok, graphs, specials


def token_roles(tok, cfg, specials, stop_tokens=None):
    """bos / eos / pad / stop tokens: the demo's names when present, else the model config's ids."""
    def name(i):
        return tok.id_to_token(i) if i is not None and i >= 0 and tok.id_to_token(i) is not None else ""

    eos = cfg.eos_token_id
    eos_list = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    if stop_tokens:
        stop = list(stop_tokens)
    elif any(t in specials for t in ["<|end|>", "<|eos|>"]):
        stop = [t for t in ["<|end|>", "<|eos|>"] if t in specials]
    else:
        stop = [name(i) for i in eos_list if name(i)]
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


def _finish_manifest(out, kind, name, A, W, graphs, specials, chat_template, cfg, parity_report, extra=None,
                     roles=None, rel_report=None):
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
        "weights": {"file": "model.safetensors", "dtype": "float32",
                    "tensors": [{"name": n, "dtype": "float32", "shape": list(t.shape)} for n, t in W.items()]},
        "lora": {"target_modules": LORA_TARGETS,
                 "target_weights": [n for n in W if any(f".{t}.weight" in n for t in LORA_TARGETS)]},
        "graphs": {},
        "parity": {"dir": "parity", "atol": ATOL, "measured_max_abs_diff": {**parity_report, "__inline__": True}},
    }
    if extra:
        man.update(extra)
    if rel_report:
        man["parity"]["grad_rtol"] = GRAD_RTOL
        man["parity"]["measured_max_rel_l2"] = {**rel_report, "__inline__": True}
    for gname, g in graphs.items():
        man["graphs"][gname] = graph_entry(g, W)
    man["files"] = file_table(out)
    write_manifest(out, man)
    return man


def graph_entry(g, W):
    """[graphs.<name>] of the manifest for a graph spec of export_graphs / dpo.export_dpo."""
    return {"file": g["file"], "opset": OPSET, "weights_as_inputs": True,
            "weight_inputs": "all" if g["weight_inputs"] == list(W) else g["weight_inputs"],
            "inputs": g["inputs"], "outputs": g["outputs"]}


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


def export_reward(ckpt, tokenizer_path, out, chat_template, parity_pairs, log=print, name="reward", stop_tokens=None):
    cfg, model, W, A, inv_freq, scale, tok, graphs, specials = write_bundle(
        "reward", ckpt, tokenizer_path, out, chat_template, name, log)
    Wnp = _np_weights(W)
    roles = token_roles(tok, cfg, specials, stop_tokens)
    pad_id = roles["pad_token_id"]
    texts = [fill_template(chat_template, p, r) for p, r in parity_pairs]
    seqs = [_tok_ids(tok, t) for t in texts]
    report = {}
    sess = ort_session(os.path.join(out, "score.onnx"))
    # unpadded, one at a time (HF's own pooling), and as one left-padded batch
    single = []
    with torch.no_grad():
        for s in seqs:
            single.append(float(model(input_ids=torch.tensor([s])).logits[0, 0]))
    ids, mask = left_pad(seqs, pad_id)
    with torch.no_grad():
        hf_b = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=positions_from_mask(torch.from_numpy(mask))).logits[:, 0].numpy()
    (o_b,) = sess.run(None, {"input_ids": ids, "attention_mask": mask, **Wnp})
    o_single = [float(sess.run(None, {"input_ids": np.array([s], np.int64),
                                      "attention_mask": np.ones((1, len(s)), np.int64), **Wnp})[0][0]) for s in seqs]
    _check("score_single", float(np.abs(np.array(o_single) - np.array(single)).max()), ATOL, report)
    _check("score_left_padded_batch", float(np.abs(o_b - hf_b).max()), ATOL, report)
    _check("score_padding_invariance", float(np.abs(o_b - np.array(single)).max()), ATOL, report)
    json.dump({"atol": ATOL, "pairs": [{"prompt": p, "response": r} for p, r in parity_pairs], "texts": texts,
               "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "expected_scores": hf_b.tolist(),
               "expected_scores_unpadded": single},
              open(os.path.join(out, "parity", "score.json"), "w"), ensure_ascii=False, indent=1)
    _tok_fixture(tok, out, texts)
    _finish_manifest(out, "reward", name, A, W, graphs, specials, chat_template, cfg, report, roles=roles)
    log(f"reward bundle {out}: parity OK {report}")
    return report
