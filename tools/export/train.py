"""Tokenizer training, policy pretraining and English-only reward-model training for the demo world."""
from __future__ import annotations

import json
import math
import random
import time

import torch
import torch.nn.functional as F

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|end|>"]
# One string with {prompt} and {response}; the prompt part ends right before {response}.
CHAT_TEMPLATE = "<|bos|><|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"


def chat_prompt(prompt: str) -> str:
    return CHAT_TEMPLATE.split("{response}")[0].format(prompt=prompt)


def chat_full(prompt: str, response: str) -> str:
    return CHAT_TEMPLATE.format(prompt=prompt, response=response)


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(texts, vocab_size=4096, log=print):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, normalizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t0 = time.time()
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    log(f"tokenizer: vocab {tok.get_vocab_size()} trained in {time.time() - t0:.1f}s")
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


# ---------------------------------------------------------------- models
def policy_config(vocab_size=4096, hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512, max_pos=512):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden // heads, max_position_embeddings=max_pos, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        hidden_act="silu", pad_token_id=0, bos_token_id=1, eos_token_id=5,
        attn_implementation="eager")


def _balanced(examples, min_chars=800_000, max_repeat=20, seed=0):
    by = {}
    for e in examples:
        by.setdefault(e["lang"], []).append(e)
    out = []
    for lang, ex in sorted(by.items()):
        n = sum(len(e["prompt"]) + len(e["response"]) for e in ex)
        rep = max(1, min(max_repeat, math.ceil(min_chars / max(n, 1))))
        out.extend(ex * rep)
    random.Random(seed).shuffle(out)
    return out


def pretrain(tok, examples, config, steps=300, batch=8, seq=256, lr=3e-3, seed=0, log=print, max_minutes=None,
             device="cpu"):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"policy: {n_params} parameters")
    data = _balanced(examples, seed=seed)
    ids = []
    for enc in tok.encode_batch([chat_full(e["prompt"], e["response"]) for e in data]):
        ids.extend(enc.ids)
    ids = torch.tensor(ids, dtype=torch.long)
    n_rows = len(ids) // seq
    rows = ids[: n_rows * seq].view(n_rows, seq)
    log(f"pretrain: {len(ids)} tokens in {n_rows} rows of {seq}; {steps} steps x {batch} rows "
        f"= {steps * batch * seq} tokens ({steps * batch / n_rows:.2f} epochs)")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_rows, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 40)

    def lr_at(step, elapsed):
        # cosine to 10 %, over whichever ends first: the planned steps or the wall-clock cap
        prog = step / steps
        if max_minutes:
            prog = max(prog, elapsed / (60 * max_minutes))
        return lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))

    model.train()
    t0, losses = time.time(), []
    for step in range(steps):
        idx = order[(torch.arange(batch) + step * batch) % n_rows]
        x = rows[idx].to(device)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, time.time() - t0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        stop = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        if step % 20 == 0 or step == steps - 1 or stop:
            log(f"pretrain step {step}/{steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"({time.time() - t0:.0f}s)")
        if stop:
            log(f"pretrain: wall-clock cap of {max_minutes} min reached after {step + 1} steps")
            break
    model.eval().cpu()
    done = len(losses)
    return model, {"device": str(device), "params": n_params, "steps_planned": steps, "steps": done, "stopped_by_time_cap": done < steps, "batch_rows": batch, "seq": seq, "lr": lr,
                   "tokens_seen": done * batch * seq, "corpus_tokens": len(ids),
                   "first_loss": sum(losses[:10]) / 10, "final_loss": sum(losses[-20:]) / 20,
                   "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------- preference pairs
CORRUPTIONS = ["shuffle", "drop_chars", "repeat_loop", "wrong_language"]


def corrupt(text: str, kind: str, rng: random.Random, other_lang_texts) -> str:
    w = text.split()
    if kind == "shuffle":
        w2 = w[:]
        for _ in range(5):
            rng.shuffle(w2)
            if w2 != w:
                break
        return " ".join(w2)
    if kind == "drop_chars":
        return "".join(c for c in text if c == " " or rng.random() > 0.25)
    if kind == "repeat_loop":
        k = max(2, min(6, len(w) // 3))
        start = rng.randrange(0, max(1, len(w) - k))
        piece = w[start:start + k]
        return " ".join(w[:start] + piece * max(3, len(w) // k))[: max(len(text), 40) + 20]
    if kind == "wrong_language":
        return rng.choice(other_lang_texts)
    raise ValueError(kind)


def make_pairs(examples, all_examples, seed=0, per_example=1):
    """(prompt, chosen, rejected, kind, lang) with rejected = a corruption of the fluent response."""
    rng = random.Random(seed)
    by_lang = {}
    for e in all_examples:
        by_lang.setdefault(e["lang"], []).append(e["response"])
    pairs = []
    for i, e in enumerate(examples):
        others = [t for l, ts in sorted(by_lang.items()) if l != e["lang"] for t in ts[:200]]
        for j in range(per_example):
            kind = CORRUPTIONS[(i * per_example + j) % len(CORRUPTIONS)]
            rej = corrupt(e["response"], kind, rng, others)
            if rej.strip() == e["response"].strip():
                continue
            pairs.append({"lang": e["lang"], "kind": kind, "prompt": e["prompt"],
                          "chosen": e["response"], "rejected": rej})
    return pairs


def _encode_batch(tok, texts, max_len, pad_id=0):
    encs = [e.ids[:max_len] for e in tok.encode_batch(texts)]
    L = max(len(x) for x in encs)
    ids = torch.full((len(encs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), L), dtype=torch.long)
    for i, x in enumerate(encs):  # right padding for training
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return ids, mask


def reward_scores(model, tok, prompts, responses, max_len=192, batch=32):
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            texts = [chat_full(p, r) for p, r in zip(prompts[i:i + batch], responses[i:i + batch])]
            ids, mask = _encode_batch(tok, texts, max_len)
            out.append(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].cpu())
    return torch.cat(out)


def train_reward(tok, policy, train_pairs, steps=200, batch=16, lr=2e-4, max_len=192, seed=0, log=print,
                 device="cpu"):
    from transformers import LlamaForSequenceClassification

    cfg = policy.config.__class__.from_dict(policy.config.to_dict())
    cfg.num_labels = 1
    cfg.tie_word_embeddings = False
    cfg.pad_token_id = 0
    torch.manual_seed(seed)
    rm = LlamaForSequenceClassification(cfg)
    missing, unexpected = rm.model.load_state_dict(policy.model.state_dict(), strict=True), None
    torch.nn.init.normal_(rm.score.weight, std=0.02)
    rm.to(device)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    rng = random.Random(seed)
    order = list(range(len(train_pairs)))
    rng.shuffle(order)
    rm.train()
    t0, losses, accs = time.time(), [], []
    for step in range(steps):
        bp = [train_pairs[order[(step * batch + k) % len(order)]] for k in range(batch)]
        texts = [chat_full(p["prompt"], p["chosen"]) for p in bp] + [chat_full(p["prompt"], p["rejected"]) for p in bp]
        ids, mask = _encode_batch(tok, texts, max_len)
        r = rm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
        rc, rr = r[:batch], r[batch:]
        loss = -F.logsigmoid(rc - rr).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        accs.append((rc > rr).float().mean().item())
        if step % 20 == 0 or step == steps - 1:
            log(f"reward step {step}/{steps} BT loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"acc {sum(accs[-20:]) / len(accs[-20:]):.3f} ({time.time() - t0:.0f}s)")
    rm.eval()
    return rm, {"device": str(device), "steps": steps, "batch_pairs": batch, "lr": lr, "train_pairs": len(train_pairs),
                "first_loss": sum(losses[:10]) / 10, "final_loss": sum(losses[-20:]) / 20,
                "final_train_acc": sum(accs[-20:]) / 20, "seconds": round(time.time() - t0, 1)}


def pairwise_accuracy(rm, tok, pairs):
    """Per language and per corruption kind: fraction of pairs with score(chosen) > score(rejected)."""
    rc = reward_scores(rm, tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rr = reward_scores(rm, tok, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    res = {}
    for i, p in enumerate(pairs):
        d = res.setdefault(p["lang"], {"n": 0, "correct": 0, "by_kind": {}})
        ok = bool(rc[i] > rr[i])
        d["n"] += 1
        d["correct"] += ok
        k = d["by_kind"].setdefault(p["kind"], [0, 0])
        k[0] += ok
        k[1] += 1
    for d in res.values():
        d["accuracy"] = d["correct"] / d["n"]
        d["by_kind"] = {k: v[0] / v[1] for k, v in d["by_kind"].items()}
    return res


def greedy_samples(model, tok, prompts, max_new=40):
    out = []
    device = next(model.parameters()).device
    for p in prompts:
        ids = torch.tensor([tok.encode(chat_prompt(p)).ids]).to(device)
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                               do_sample=False, eos_token_id=5, pad_token_id=0)
        out.append(tok.decode(g[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
    return out
