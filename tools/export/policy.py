"""Policy bundles: a checkpoint exported as decode and logprob graphs (export.py) plus, by default, the DPO
training-step graph (dpo.py), each held to the checkpoint by parity checks; and a randomly initialised Llama
policy for benchmarks. Above export.py and dpo.py in the exporter's import line."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from .dpo import dpo_parity, export_dpo
from .export import (ATOL, LORA_TARGETS, ParityError, _check, _finish_manifest, _np_weights, _tok_fixture, _tok_ids,
                     fill_template, left_pad, ort_greedy, ort_session, positions_from_mask, token_roles, write_bundle)


def export_policy(ckpt, tokenizer_path, out, chat_template, parity_prompts, log=print, name="policy",
                  max_new=24, stop_tokens=None, dpo=True):
    """dpo: also the DPO training-step graph dpo.onnx with its fixtures (tools/export/dpo.py)."""
    cfg, model, W, A, inv_freq, scale, tok, graphs, specials = write_bundle(
        "policy", ckpt, tokenizer_path, out, chat_template, name, log)
    Wnp = _np_weights(W)
    roles = token_roles(tok, cfg, specials, stop_tokens)
    pad_id, stop_ids = roles["pad_token_id"], roles["stop_token_ids"]
    report = {}
    texts = [fill_template(chat_template, p) for p in parity_prompts]
    seqs = [_tok_ids(tok, t) for t in texts]
    sess = ort_session(os.path.join(out, "decode.onnx"))
    cases = []
    # (a) one prompt at a time, (b) all prompts as one left-padded batch
    batches = [[i] for i in range(min(3, len(seqs)))] + [list(range(len(seqs)))]
    for bi, idx in enumerate(batches):
        ids, mask = left_pad([seqs[i] for i in idx], pad_id)
        with torch.no_grad():
            g = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=max_new,
                               do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id,
                               output_logits=True, return_dict_in_generate=True)
        hf_new = g.sequences[:, ids.shape[1]:].tolist()
        hf_tokens = []
        for row in hf_new:
            r = []
            for t in row:
                r.append(t)
                if t in stop_ids:
                    break
            hf_tokens.append(r)
        ort_tokens, ort_logits = ort_greedy(sess, Wnp, A, ids, mask, max_new, stop_ids, pad_id)
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
            "expected_text": [tok.decode([t for t in r if t not in stop_ids], skip_special_tokens=True) for r in ort_tokens],
            "expected_first_step_logits_head": [r[:16].tolist() for r in g.logits[0].numpy()],
            "expected_first_step_argmax": g.logits[0].argmax(-1).tolist(),
            "expected_first_step_logsumexp": torch.logsumexp(g.logits[0], -1).tolist(),
        })
    json.dump({"atol": ATOL, "cases": cases}, open(os.path.join(out, "parity", "greedy.json"), "w"),
              ensure_ascii=False, indent=1)
    # logprob graph: prompt + response (the greedy response and a fixed text), left-padded
    pairs = []
    for i, p in enumerate(parity_prompts):
        resp = cases[-1]["expected_text"][i] or "ok"
        pairs.append((p, resp))
    pairs.append((parity_prompts[0], "The quick brown fox jumps over the lazy dog."))
    full_seqs, rmask_seqs = [], []
    for p, r in pairs:
        pi = _tok_ids(tok, fill_template(chat_template, p))
        fi = _tok_ids(tok, fill_template(chat_template, p, r))
        if fi[: len(pi)] != pi:
            raise ParityError(f"prompt tokens are not a prefix of prompt+response tokens for {p!r}")
        full_seqs.append(fi)
        rmask_seqs.append([0] * len(pi) + [1] * (len(fi) - len(pi)))
    ids, mask = left_pad(full_seqs, pad_id)
    rm = np.zeros_like(mask)
    for i, r in enumerate(rmask_seqs):
        rm[i, ids.shape[1] - len(r):] = r
    with torch.no_grad():
        pos = positions_from_mask(torch.from_numpy(mask))
        lg = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), position_ids=pos).logits
        lp = torch.log_softmax(lg[:, :-1].float(), -1)
        tlp = torch.gather(lp, 2, torch.from_numpy(ids)[:, 1:, None])[..., 0]
        tlp = torch.cat([torch.zeros_like(tlp[:, :1]), tlp], 1) * torch.from_numpy(rm).float()
        hf_sum = tlp.sum(-1)
    # unpadded reference too: left padding must not change the log-probs
    for i, s in enumerate(full_seqs):
        with torch.no_grad():
            li = model(input_ids=torch.tensor([s])).logits[0, :-1].log_softmax(-1)
            t1 = li.gather(1, torch.tensor(s)[1:, None])[:, 0]
            t1 = torch.cat([torch.zeros(1), t1]) * torch.tensor(rmask_seqs[i]).float()
        _check(f"logprob_padding_invariance_{i}", float((t1 - tlp[i, ids.shape[1] - len(s):]).abs().max()), ATOL, report)
    lsess = ort_session(os.path.join(out, "logprob.onnx"))
    o_tok, o_sum = lsess.run(None, {"input_ids": ids, "attention_mask": mask, "response_mask": rm, **Wnp})
    _check("logprob_token", float(np.abs(o_tok - tlp.numpy()).max()), ATOL, report)
    _check("logprob_sum", float(np.abs(o_sum - hf_sum.numpy()).max()), ATOL, report)
    json.dump({"atol": ATOL, "pairs": [{"prompt": p, "response": r} for p, r in pairs],
               "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "response_mask": rm.tolist(),
               "expected_token_logprobs": tlp.tolist(), "expected_logprob_sum": hf_sum.tolist()},
              open(os.path.join(out, "parity", "logprob.json"), "w"), ensure_ascii=False, indent=1)
    # tokenizer fixture (Rust tokenizers must produce the same ids)
    _tok_fixture(tok, out, [fill_template(chat_template, p, r) for p, r in pairs])
    rel = None
    if dpo:
        graphs["dpo"], step, lnames = export_dpo(A, W, inv_freq, scale, LORA_TARGETS, out, log)
        rep, rel = dpo_parity(out, A, W, inv_freq, scale, LORA_TARGETS, step, lnames, tok, chat_template, pad_id,
                              model, log)
        report.update(rep)
    man = _finish_manifest(out, "policy", name, A, W, graphs, specials, chat_template, cfg, report, roles=roles,
                           rel_report=rel)
    log(f"policy bundle {out}: parity OK {report}")
    return report


def random_llama(out, tokenizer_path, hidden, layers, heads, kv_heads, intermediate, vocab, seed, log=print, dpo=True):
    """Randomly initialised Llama policy bundle (for GPU benchmarks; never committed)."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    from .train import CHAT_TEMPLATE

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                      max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                      eos_token_id=5)
    m = LlamaForCausalLM(cfg)
    log(f"random llama: {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M parameters")
    with tempfile.TemporaryDirectory() as d:
        m.save_pretrained(d)
        del m
        export_policy(d, tokenizer_path, out, CHAT_TEMPLATE, ["Hello!", "Wie geht es dir?"], log=log,
                      name=f"random-llama-{hidden}x{layers}", max_new=8, dpo=dpo)
