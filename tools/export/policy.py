"""Policy bundles: a checkpoint written as a version-2 bundle (bundle.py: decode and logprob graphs) plus, by
default, the layer-wise training graphs (train_graphs.py) and the DPO fixtures (dpo.py), each held to the
checkpoint by parity checks; and a randomly initialised Llama policy for benchmarks. Above bundle.py, dpo.py and
train_graphs.py in the exporter's import line."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from . import ortrun
from .bundle import DEFAULT_PARITY_LAYERS, check_chat_template, finish, fixtures_note, precisions_for, write_bundle
from .dpo import dpo_fixtures
from .export import (ATOL, LORA_TARGETS, ParityError, _check, _tok_fixture, _tok_ids, fill_template, left_pad,
                     positions_from_mask)
from .train_graphs import check_half_parity
from .train_graphs import check_parity as check_train_parity
from .train_graphs import export_train_graphs


def export_policy(ckpt, tokenizer_path, out, chat_template, parity_prompts, log=print, name="policy",
                  max_new=24, stop_tokens=None, train=True, parity_layers=DEFAULT_PARITY_LAYERS):
    """A version-2 policy bundle (bundle.write_bundle) held to transformers: greedy tokens identical and logits,
    log-probs within ATOL on the depth-truncated copy, single prompts and a padded batch. train: also the
    layer-wise training graphs, held to torch autograd on the same copy (one layer's graph serves every layer), and
    when that copy is the whole model the DPO fixtures the Rust tests replay (tools/export/dpo.py)."""
    ex = write_bundle("policy", ckpt, tokenizer_path, out, chat_template, log, parity_layers, stop_tokens)
    pad_id, stop_ids = ex.roles["pad_token_id"], ex.roles["stop_token_ids"]
    report = {}
    sessions = ex.parity_sessions(["decode", "logprob"])
    texts = [fill_template(chat_template, p) for p in parity_prompts]
    seqs = [_tok_ids(ex.tok, t) for t in texts]
    cases = []
    # (a) one prompt at a time, (b) all prompts as one padded batch
    batches = [[i] for i in range(min(3, len(seqs)))] + [list(range(len(seqs)))]
    for bi, idx in enumerate(batches):
        ids, mask = left_pad([seqs[i] for i in idx], pad_id)
        with torch.no_grad():
            g = ex.hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=max_new,
                               do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id,
                               output_logits=True, return_dict_in_generate=True)
        hf_tokens = [_until_stop(row, stop_ids) for row in g.sequences[:, ids.shape[1]:].tolist()]
        ort_tokens, ort_logits = ortrun.greedy(sessions["decode"], ex.parity_weights, ex.parity_arch,
                                               [seqs[i] for i in idx], max_new, stop_ids, pad_id)
        if hf_tokens != ort_tokens:
            raise ParityError(f"PARITY FAILED: greedy tokens differ for batch {idx}:\n hf  {hf_tokens}\n ort {ort_tokens}")
        md = 0.0
        for s, lg in enumerate(ort_logits):
            live = [b for b in range(len(idx)) if s < len(ort_tokens[b])]
            md = max(md, float(np.abs(g.logits[s].numpy()[live] - lg[live]).max()))
        _check(f"decode_logits_batch{bi}", md, ATOL, report)
        cases.append({
            "name": f"greedy_{'single' if len(idx) == 1 else 'left_padded_batch'}_{bi}",
            "prompts": [parity_prompts[i] for i in idx], "texts": [texts[i] for i in idx],
            "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "position_ids": np.where(mask == 0, 1, np.cumsum(mask, -1) - 1).tolist(),
            "max_new_tokens": max_new, "stop_token_ids": stop_ids, "pad_token_id": pad_id,
            "expected_tokens": ort_tokens,
            "expected_text": [ex.tok.decode([t for t in r if t not in stop_ids], skip_special_tokens=True)
                              for r in ort_tokens],
            "expected_first_step_logits_head": [r[:16].tolist() for r in g.logits[0].numpy()],
            "expected_first_step_argmax": g.logits[0].argmax(-1).tolist(),
            "expected_first_step_logsumexp": torch.logsumexp(g.logits[0], -1).tolist(),
        })
    json.dump({"atol": ATOL, "cases": cases}, open(os.path.join(out, "parity", "greedy.json"), "w"),
              ensure_ascii=False, indent=1)
    pairs = [(p, cases[-1]["expected_text"][i] or "ok") for i, p in enumerate(parity_prompts)]
    pairs.append((parity_prompts[0], "The quick brown fox jumps over the lazy dog."))
    logprob_parity(ex, sessions["logprob"], pairs, chat_template, pad_id, report)
    _tok_fixture(ex.tok, out, [fill_template(chat_template, p, r) for p, r in pairs])
    chat = check_chat_template(ckpt, ex.tok, chat_template, log)
    extra, rel = {}, None
    if train:
        W = {n: torch.from_numpy(w) for n, w in ex.parity_weights.items()}
        inv_freq = torch.from_numpy(ex.rotary["inv_freq"]).float()
        scale = ex.rotary["attention_scaling"]
        # the whole model's architecture: its per-layer tables (rotary, windows) are indexed by `layer`; the
        # truncated copy's weights only give the shapes
        precisions = precisions_for(ex.dtype)
        extra = export_train_graphs(ex.A, W, inv_freq, scale, LORA_TARGETS, out, log, precisions=precisions)
        rel = check_train_parity(out, ex.parity_arch, W, inv_freq, scale, LORA_TARGETS)
        for precision in precisions[1:]:
            rel |= check_half_parity(out, ex.parity_arch, W, inv_freq, scale, LORA_TARGETS, precision)
        log(f"training graphs vs torch autograd: {rel}")
        if not parity_depth_is_partial(ckpt, parity_layers):
            rep, dpo_rel = dpo_fixtures(out, ex.A, W, inv_freq, scale, LORA_TARGETS, ex.tok, chat_template, pad_id,
                                        ex.hf, log)
            report.update(rep)
            rel |= dpo_rel
    finish(ex, name, report, fixtures_note(ex, chat), extra_graphs=extra, rel_report=rel)
    log(f"policy bundle {out}: parity OK {report}")
    return report


def _until_stop(row, stop_ids):
    out = []
    for t in row:
        out.append(t)
        if t in stop_ids:
            break
    return out


def parity_depth_is_partial(ckpt, parity_layers) -> bool:
    from .checkpoint import load_config

    layers = load_config(ckpt).num_hidden_layers
    return bool(parity_layers) and parity_layers < layers


def logprob_parity(ex, sess, pairs, chat_template, pad_id, report):
    """The logprob graph's response-token log-probs against transformers (left-padded batch, and each row
    alone); writes parity/logprob.json."""
    full_seqs, starts = [], []
    for p, r in pairs:
        pi = _tok_ids(ex.tok, fill_template(chat_template, p))
        fi = _tok_ids(ex.tok, fill_template(chat_template, p, r))
        if fi[: len(pi)] != pi:
            raise ParityError(f"prompt tokens are not a prefix of prompt+response tokens for {p!r}")
        full_seqs.append(fi)
        starts.append(len(pi))
    ids, mask = left_pad(full_seqs, pad_id)
    rm = np.zeros_like(mask)
    for i, (s, st) in enumerate(zip(full_seqs, starts)):
        rm[i, ids.shape[1] - len(s) + st:] = 1
    with torch.no_grad():
        pos = positions_from_mask(torch.from_numpy(mask))
        lg = ex.hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), position_ids=pos).logits
        lp = torch.log_softmax(lg[:, :-1].float(), -1)
        tlp = torch.gather(lp, 2, torch.from_numpy(ids)[:, 1:, None])[..., 0]
        tlp = torch.cat([torch.zeros_like(tlp[:, :1]), tlp], 1) * torch.from_numpy(rm).float()
    got = ortrun.logprobs(sess, ex.parity_weights, full_seqs, starts, pad_id)
    worst = max(float(np.abs(g - tlp[i, ids.shape[1] - len(s) + st:].numpy()).max())
                for i, (g, s, st) in enumerate(zip(got, full_seqs, starts)))
    _check("logprob_token", worst, ATOL, report)
    sums = np.array([g.sum() for g in got])
    _check("logprob_sum", float(np.abs(sums - tlp.sum(-1).numpy()).max()), ATOL, report)
    json.dump({"atol": ATOL, "pairs": [{"prompt": p, "response": r} for p, r in pairs],
               "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "response_mask": rm.tolist(),
               "expected_token_logprobs": tlp.tolist(), "expected_logprob_sum": tlp.sum(-1).tolist()},
              open(os.path.join(ex.out, "parity", "logprob.json"), "w"), ensure_ascii=False, indent=1)


def random_llama(out, tokenizer_path, hidden, layers, heads, kv_heads, intermediate, vocab, seed, log=print, train=True,
                 dtype="float32", max_positions=4096):
    """Randomly initialised Llama policy bundle (for benchmarks; never committed), saved in `dtype` first so
    that the bundle stores what such a checkpoint ships; parity on the default truncated copy."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    from .train import CHAT_TEMPLATE

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                      eos_token_id=5)
    m = LlamaForCausalLM(cfg)
    log(f"random llama: {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M parameters")
    with tempfile.TemporaryDirectory() as d:
        m.to({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]).save_pretrained(d)
        del m
        export_policy(d, tokenizer_path, out, CHAT_TEMPLATE, ["Hello!", "Wie geht es dir?"], log=log,
                      name=f"random-llama-{hidden}x{layers}", max_new=8, train=train)
