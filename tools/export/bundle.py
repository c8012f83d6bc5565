"""Version-2 bundles from a Hugging Face checkpoint, without holding the model: the weights streamed shard by shard
into the bundle in the dtype the checkpoint ships (checkpoint.py), the graphs built from config and shapes per
precision (graphs.py), and parity against transformers on a depth-truncated copy read from the same checkpoint
(`parity_layers`, default 2; 0 = the whole model), run through ortrun.py exactly as croco runs the graphs.
Reward bundles are finished here; policy.py adds the policy's checks and the DPO graph."""
from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np

from . import ortrun
from .checkpoint import arch_from_config, list_tensors, load_config, rotary_of, weights_dtype, write_safetensors
from .export import (ATOL, ParityError, _check, _special_tokens, _tok_fixture, _tok_ids, fill_template,
                     finish_manifest, left_pad, positions_from_mask, token_roles)
from .graphs import BUILDERS, OPSET

KIND_GRAPHS = {"policy": ["decode", "logprob"], "reward": ["score"]}
DEFAULT_PARITY_LAYERS = 2


def precisions_for(dtype: str) -> list[str]:
    """float32 graphs always (the CPU's; half-precision weights are widened at load), and the checkpoint's own
    half precision for CUDA."""
    return ["float32"] + ([dtype] if dtype != "float32" else [])


def graph_file(name: str, precision: str) -> str:
    return f"{name}.{precision}.onnx"


def graph_io(name: str, A: dict) -> tuple[list, list]:
    """The manifest's data inputs and outputs of a graph; dtype `compute` is the variant's precision."""
    KV, D = A["num_kv_heads"], A["head_dim"]
    common = [io("input_ids", "int64", ["batch", "seq"]), io("seqlens_k", "int32", ["batch"]),
              io("total_sequence_length", "int32", [])]
    if name == "decode":
        cache = [(i, part) for i in range(A["num_layers"]) for part in ("key", "value")]
        inputs = common + [io(f"past_key_values.{i}.{p}", "compute", ["batch", KV, "capacity", D]) for i, p in cache]
        outputs = [io("logits", "float32", ["batch", A["vocab_size"]])]
        outputs += [io(f"present.{i}.{p}", "compute", ["batch", KV, "capacity", D]) for i, p in cache]
        return inputs, outputs
    if name == "logprob":
        inputs = common + [io("target_positions", "int64", ["batch", "targets"]),
                           io("target_ids", "int64", ["batch", "targets"])]
        return inputs, [io("target_logprobs", "float32", ["batch", "targets"])]
    return common, [io("score", "float32", ["batch"])]


def io(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def build_graphs(kind, A, tensors, rotary, precisions, out, log) -> dict:
    """Writes every graph of `kind` in every precision into `out`; returns their [graphs] entries."""
    import onnx

    spec = [(t["name"], t["shape"]) for t in tensors]
    entries = {}
    for name in KIND_GRAPHS[kind]:
        files = {}
        for precision in precisions:
            model = BUILDERS[name](A, spec, rotary, precision)
            files[precision] = graph_file(name, precision)
            onnx.save(model, os.path.join(out, files[precision]))
            log(f"built {files[precision]} ({len(model.graph.node)} nodes)")
        inputs, outputs = graph_io(name, A)
        entries[name] = {"files": files, "opset": OPSET, "weight_inputs": "all", "inputs": inputs, "outputs": outputs}
    return entries


def truncated(A: dict, layers: int) -> dict:
    """The architecture of the checkpoint's first `layers` decoder layers."""
    short = copy.deepcopy(A)
    short["num_layers"] = layers
    for key in ("rotary_layers", "attention_windows"):
        short[key] = A[key][:layers]
    return short


def parity_depth(A, parity_layers) -> int:
    return A["num_layers"] if not parity_layers or parity_layers >= A["num_layers"] else parity_layers


def reference_weights(hf, tensors) -> dict:
    """{name: float32 array} of `tensors`, as views of the transformers reference's own parameters: the parity
    run holds the (truncated) weights once, not once for transformers and once more for ONNX Runtime."""
    state = hf.state_dict()
    return {t["name"]: state[t["name"]].detach().numpy() for t in tensors}


def hf_reference(kind, cfg, layers, tensors):
    """transformers' model of the checkpoint's first `layers` layers, float32, eager attention, holding exactly
    `tensors` (read one at a time from the shards into the model's own float32 parameters): no more than the
    truncated model is ever in memory (transformers' own loader maps whole shards and converts them)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = copy.deepcopy(cfg)
    if layers < cfg.num_hidden_layers:
        cfg.num_hidden_layers = layers
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = cfg.layer_types[:layers]
    cfg._attn_implementation = "eager"
    if kind == "reward":
        cfg.num_labels = 1
    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = cls.from_config(cfg, dtype=torch.float32)
    model.to_empty(device="cpu")
    base = model.model
    base.rotary_emb = type(base.rotary_emb)(config=cfg)  # a buffer to_empty left uninitialised
    params = dict(model.named_parameters())
    for shard in dict.fromkeys(t["shard"] for t in tensors):
        with safe_open(shard, framework="pt") as f:
            for t in tensors:
                if t["shard"] == shard:
                    params.pop(t["name"]).data.copy_(f.get_tensor(t["name"]))
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
        params.pop("lm_head.weight", None)
    if params:
        raise SystemExit(f"{sorted(params)[:5]}: parameters of the reference model not in the checkpoint")
    return model.eval()


class Exported:
    """What write_bundle produced and what the parity checks need."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def parity_sessions(self, names):
        """float32 sessions of the depth-truncated graphs, built in memory."""
        spec = [(t["name"], t["shape"]) for t in self.parity_tensors]
        return {n: ortrun.ort_session(BUILDERS[n](self.parity_arch, spec, self.rotary, "float32")) for n in names}


def write_bundle(kind, ckpt, tokenizer_path, out, chat_template, log, parity_layers=DEFAULT_PARITY_LAYERS,
                 stop_tokens=None):
    """Weights, graphs and tokenizer of a bundle in `out` (replaced), and the truncated parity setting."""
    from tokenizers import Tokenizer

    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "parity"))
    cfg = load_config(ckpt)
    A = arch_from_config(cfg)
    rotary = rotary_of(cfg)
    tensors = list_tensors(ckpt, kind, A["tie_word_embeddings"])
    dtype = weights_dtype(tensors)
    write_safetensors(os.path.join(out, "model.safetensors"), tensors, dtype,
                      metadata={"format": "pt", "croco_kind": kind}, log=log)
    tokenizer_path = tokenizer_path or os.path.join(ckpt, "tokenizer.json")
    tok = Tokenizer.from_file(tokenizer_path)
    shutil.copyfile(tokenizer_path, os.path.join(out, "tokenizer.json"))
    graphs = build_graphs(kind, A, tensors, rotary, precisions_for(dtype), out, log)
    specials = _special_tokens(tok, chat_template)
    roles = token_roles(tok, cfg, specials, stop_tokens, generation_stop_ids(ckpt))
    depth = parity_depth(A, parity_layers)
    parity_tensors = tensors if depth == A["num_layers"] else list_tensors(ckpt, kind, A["tie_word_embeddings"], depth)
    log(f"parity on {depth} of {A['num_layers']} layers")
    hf = hf_reference(kind, cfg, depth, parity_tensors)
    return Exported(kind=kind, ckpt=ckpt, out=out, cfg=cfg, A=A, rotary=rotary, tensors=tensors, dtype=dtype, tok=tok,
                    graphs=graphs, specials=specials, roles=roles, chat_template=chat_template,
                    parity_layers=depth, parity_arch=truncated(A, depth), parity_tensors=parity_tensors,
                    parity_weights=reference_weights(hf, parity_tensors), hf=hf)


def generation_stop_ids(ckpt) -> list[int]:
    """eos_token_id of the checkpoint's generation_config.json (an int or a list), if it has one."""
    path = os.path.join(ckpt, "generation_config.json")
    if not os.path.exists(path):
        return []
    eos = json.load(open(path)).get("eos_token_id")
    return [] if eos is None else list(eos) if isinstance(eos, list) else [eos]


CHAT_CHECK_PROMPTS = ["Hello, how are you?", "Wie geht es dir heute?", "Как дела?", "你好，今天怎么样？",
                      "مرحبا، كيف حالك؟", "नमस्ते, आप कैसे हैं?"]


def check_chat_template(ckpt, tok, chat_template, log) -> dict:
    """croco's prompt ids against the checkpoint's own chat template (tokenizer_config.json's, rendered by
    transformers' apply_chat_template) for prompts in several scripts. Returns what was checked."""
    from transformers import AutoTokenizer

    try:
        hf_tok = AutoTokenizer.from_pretrained(ckpt)
    except (OSError, ValueError) as e:
        log(f"chat template: no tokenizer in {ckpt} ({e}); croco's template is used as given")
        return {"checked": False}
    if not getattr(hf_tok, "chat_template", None):
        log("chat template: the checkpoint has none; croco's template is used as given")
        return {"checked": False}
    for prompt in CHAT_CHECK_PROMPTS:
        rendered = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)
        theirs = _tok_ids(tok, rendered)
        ours = _tok_ids(tok, fill_template(chat_template, prompt))
        if theirs != ours:
            raise ParityError(f"PARITY FAILED: the chat template's prompt ids differ from the checkpoint's "
                              f"apply_chat_template for {prompt!r}:\n croco {ours}\n hf    {theirs}\n"
                              f" hf text {rendered!r}")
    log(f"chat template: prompt ids equal to apply_chat_template's for {len(CHAT_CHECK_PROMPTS)} prompts")
    return {"checked": True, "prompts": len(CHAT_CHECK_PROMPTS)}


def finish(ex: Exported, name, report, fixtures_note, extra_graphs=None, rel_report=None):
    graphs = dict(ex.graphs)
    graphs.update(extra_graphs or {})
    return finish_manifest(ex.out, ex.kind, name, ex.A, ex.tensors, ex.dtype, graphs, ex.specials, ex.chat_template,
                           report, ex.roles, parity_layers=ex.parity_layers, rel_report=rel_report,
                           fixtures_note=fixtures_note)


def export_reward(ckpt, tokenizer_path, out, chat_template, parity_pairs, log=print, name="reward", stop_tokens=None,
                  parity_layers=DEFAULT_PARITY_LAYERS):
    import torch

    ex = write_bundle("reward", ckpt, tokenizer_path, out, chat_template, log, parity_layers, stop_tokens)
    pad_id = ex.roles["pad_token_id"]
    texts = [fill_template(chat_template, p, r) for p, r in parity_pairs]
    seqs = [_tok_ids(ex.tok, t) for t in texts]
    report = {}
    with torch.no_grad():
        single = [float(ex.hf(input_ids=torch.tensor([s])).logits[0, 0]) for s in seqs]
        ids, mask = left_pad(seqs, pad_id)
        hf_b = ex.hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=positions_from_mask(torch.from_numpy(mask))).logits[:, 0].numpy()
    sess = ex.parity_sessions(["score"])["score"]
    batched = ortrun.scores(sess, ex.parity_weights, seqs, pad_id)
    alone = np.array([ortrun.scores(sess, ex.parity_weights, [s], pad_id)[0] for s in seqs])
    _check("score_single", float(np.abs(alone - np.array(single)).max()), ATOL, report)
    _check("score_batch", float(np.abs(batched - hf_b).max()), ATOL, report)
    _check("score_padding_invariance", float(np.abs(batched - np.array(single)).max()), ATOL, report)
    json.dump({"atol": ATOL, "pairs": [{"prompt": p, "response": r} for p, r in parity_pairs], "texts": texts,
               "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "expected_scores": hf_b.tolist(),
               "expected_scores_unpadded": single},
              open(os.path.join(out, "parity", "score.json"), "w"), ensure_ascii=False, indent=1)
    _tok_fixture(ex.tok, out, texts)
    report_chat = check_chat_template(ckpt, ex.tok, chat_template, log)
    finish(ex, name, report, fixtures_note(ex, report_chat))
    log(f"reward bundle {out}: parity OK {report}")
    return report


def fixtures_note(ex: Exported, chat: dict) -> str:
    depth = f"the whole model ({ex.A['num_layers']} layers)" if ex.parity_layers == ex.A["num_layers"] else \
        f"the first {ex.parity_layers} of {ex.A['num_layers']} layers"
    template = "checked against the checkpoint's apply_chat_template" if chat.get("checked") else \
        "not checked (the checkpoint has no chat template)"
    return f"fixtures of {depth}; chat template {template}"

