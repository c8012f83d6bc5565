"""The DPO step's torch reference and a policy bundle's DPO fixtures (`parity/dpo.json` + `dpo.safetensors`):
the LoRA-adapted forward of chosen and rejected rows, the DPO (sigmoid / cDPO label smoothing) or IPO loss and its
gradients w.r.t. the LoRA tensors, written with torch.func on the functional llama_forward of export.py and held
to transformers + peft. croco's layer-wise training step (train_graphs.py) is tested against these fixtures.
Dropout hash: docs/bundle-format.md, "LoRA dropout"."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from .export import (ATOL, GRAD_RTOL, ParityError, _check, _tok_ids, fill_template, left_pad, llama_forward,
                     positions_from_mask, sha256_file)
from .ortrun import logprobs, ort_session, unpad

SCALARS = ["beta", "label_smoothing", "ipo", "lora_scale", "dropout_p"]
DATA_INPUTS = ["input_ids", "attention_mask", "response_mask", "ref_logps"] + SCALARS + ["dropout_seed"]


# ---------------------------------------------------------------- LoRA + dropout
def lora_modules(weight_names, target_modules, num_layers):
    """[(weight name, lora_A input name, lora_B input name)], layer-major, then target_modules order."""
    out = []
    for l in range(num_layers):
        for mod in target_modules:
            sub = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            w = f"model.layers.{l}.{sub}.{mod}.weight"
            if w not in weight_names:
                raise SystemExit(f"LoRA target {w} is not a weight of the bundle")
            base = f"base_model.model.model.layers.{l}.{sub}.{mod}"
            out.append((w, base + ".lora_A.weight", base + ".lora_B.weight"))
    return out


def _logsigmoid(x):
    """Stable log(sigmoid(x)) with the exact derivative everywhere, 1/2 at 0 (clamp's gradient at its bound
    is 0, so the branches get their safe inputs from where, not clamp)."""
    pos = x >= 0
    zero = torch.zeros_like(x)
    xp, xn = torch.where(pos, x, zero), torch.where(pos, zero, x)
    return torch.where(pos, -torch.log(1.0 + torch.exp(-xp)), xn - torch.log(1.0 + torch.exp(xn)))


def sequence_logps(W, A, inv_freq, rope_scale, mods, ids, mask, rmask, scale, p, seed):
    """Σ_t token log-prob · response_mask per row, exactly as the logprob graph (with LoRA modules)."""
    lora = {"modules": {w: (a, b, j) for j, (w, a, b) in enumerate(mods)}, "scale": scale, "p": p, "seed": seed}
    pos = positions_from_mask(mask)
    logits, _ = llama_forward(W, A, inv_freq, rope_scale, ids, mask, pos, None, lora=lora)
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = torch.gather(lp, 2, ids[:, 1:, None])[..., 0]
    tok = torch.cat((torch.zeros_like(tok[:, :1]), tok), dim=1) * rmask
    return tok.sum(-1)


def dpo_forward(W, A, inv_freq, rope_scale, mods, ids, mask, rmask, ref, beta, ls, ipo, scale, p, seed):
    """(loss, policy_logps). mods: [(weight name, A, B)] in module-index order."""
    n = rmask.sum(-1).clamp(min=1.0)
    logps = sequence_logps(W, A, inv_freq, rope_scale, mods, ids, mask, rmask, scale, p, seed)
    logps = logps / (1.0 + ipo * (n - 1.0))  # ipo = 1: mean over the response tokens; ipo = 0: / 1.0
    P = ids.shape[0] // 2
    h = (logps[:P] - logps[P:]) - (ref[:P] - ref[P:])
    l_sig = -(1.0 - ls) * _logsigmoid(beta * h) - ls * _logsigmoid(-beta * h)
    l_ipo = (h - 1.0 / (2.0 * beta)) ** 2
    return (ipo * l_ipo + (1.0 - ipo) * l_sig).mean(), logps


def make_step(A, weight_names, lora_names, inv_freq, rope_scale):
    """f(*data inputs, *lora inputs, *weights) -> (loss, policy_logps, *grads w.r.t. the lora inputs)."""
    nd, nl = len(DATA_INPUTS), 2 * len(lora_names)

    def step(*flat):
        ids, mask, rmask, ref, beta, ls, ipo, scale, p, seed = flat[:nd]
        W = dict(zip(weight_names, flat[nd + nl:]))

        def loss_fn(lora):
            mods = [(w, lora[2 * j], lora[2 * j + 1]) for j, (w, _, _) in enumerate(lora_names)]
            return dpo_forward(W, A, inv_freq, rope_scale, mods, ids, mask, rmask, ref, beta, ls, ipo, scale, p, seed)

        grads, (loss, logps) = torch.func.grad_and_value(loss_fn, has_aux=True)(tuple(flat[nd:nd + nl]))
        return (loss, logps, *grads)

    return step


def step_inputs(ids, mask, rmask, ref, beta, ls, ipo, scale, p, seed):
    """The data inputs of make_step's function as torch tensors."""
    f = lambda v: torch.tensor(float(v), dtype=torch.float32)  # noqa: E731
    return [torch.as_tensor(np.asarray(ids), dtype=torch.int64).clone(),
            torch.as_tensor(np.asarray(mask), dtype=torch.int64).clone(),
            torch.as_tensor(np.asarray(rmask), dtype=torch.float32).clone(),
            torch.as_tensor(np.asarray(ref), dtype=torch.float32).clone(),
            f(beta), f(ls), f(ipo), f(scale), f(p), torch.tensor(int(seed), dtype=torch.int64)]


# ---------------------------------------------------------------- parity fixtures
PAIRS = [  # (prompt, chosen, rejected); different lengths, so the rows are left padded
    ("Hello!", "Hello! How can I help you today?", "I am a girl, I am a girl, I am a girl."),
    ("Wie geht es dir?", "Mir geht es gut, danke.", "Die aktuelle Formatversion ist 2.0.0.0.0.0.0.0."),
    ("Dia duit.", "Dia is Muire duit.", "Ní féidir an t-ainm seo a leanas."),
]
LORA_RANK, LORA_ALPHA = 2, 4.0


def pair_rows(tok, template, pad_id, pairs):
    """input_ids, attention_mask (int64) and response_mask (float32) [2 * pairs, seq]: chosen rows, then rejected."""
    seqs, rms = [], []
    for col in (1, 2):
        for pr in pairs:
            pi = _tok_ids(tok, fill_template(template, pr[0]))
            fi = _tok_ids(tok, fill_template(template, pr[0], pr[col]))
            if fi[: len(pi)] != pi:
                raise ParityError(f"prompt tokens are not a prefix of prompt+response tokens for {pr[0]!r}")
            seqs.append(fi)
            rms.append([0] * len(pi) + [1] * (len(fi) - len(pi)))
    ids, mask = left_pad(seqs, pad_id)
    rm = np.zeros(ids.shape, np.float32)
    for i, r in enumerate(rms):
        rm[i, ids.shape[1] - len(r):] = r
    return ids, mask, rm


def _rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) /
                 max(float(np.linalg.norm(np.asarray(b, np.float64))), 1e-30))


def _check_rel(name, v, report):
    report[name] = float(v)
    if not v <= GRAD_RTOL:
        raise ParityError(f"PARITY FAILED: {name}: max relative L2 error {v:.3g} > {GRAD_RTOL:g}")


def peft_reference(hf_model, target_modules, lnames, lora, ids, mask, rm, ref, beta, ls, ipo, rank, alpha):
    """loss, policy_logps and LoRA grads from transformers + peft (dropout 0) with TRL's DPO/IPO formulas
    and autograd: an implementation independent of the functional graph."""
    import copy

    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    pm = get_peft_model(copy.deepcopy(hf_model), LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                                            target_modules=list(target_modules), task_type="CAUSAL_LM"))
    sd = {}
    for j, (_, an, bn) in enumerate(lnames):
        sd[an], sd[bn] = lora[2 * j].clone(), lora[2 * j + 1].clone()
    res = set_peft_model_state_dict(pm, sd)
    if res.unexpected_keys:
        raise ParityError(f"peft does not know the LoRA input names: {res.unexpected_keys[:3]}")
    pm.eval()
    ids_t, mask_t, rm_t, ref_t = (torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(rm), torch.as_tensor(ref))
    logits = pm(input_ids=ids_t, attention_mask=mask_t, position_ids=positions_from_mask(mask_t)).logits
    lp = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, ids_t[:, 1:, None])[..., 0]
    m = rm_t[:, 1:]
    logps = (lp * m).sum(-1)
    if ipo:
        logps = logps / m.sum(-1)
    P = ids_t.shape[0] // 2
    h = (logps[:P] - logps[P:]) - (ref_t[:P] - ref_t[P:])
    if ipo:
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * h) * (1 - ls) - F.logsigmoid(-beta * h) * ls
    loss = losses.mean()
    loss.backward()
    grads = {n.replace(".default.weight", ".weight"): p.grad for n, p in pm.named_parameters() if "lora_" in n}
    return loss.item(), logps.detach().numpy(), [grads[n] for _, an, bn in lnames for n in (an, bn)]


def dpo_fixtures(out, A, W, inv_freq, rope_scale, target_modules, tok, template, pad_id, hf_model, log):
    """Fixtures parity/dpo.json + parity/dpo.safetensors of the whole model W: two cases (sigmoid with label
    smoothing; IPO with dropout) computed by the torch step, after checking that the step's base log-probs equal
    the bundle's logprob graph and, when hf_model is given, that the step without dropout equals transformers +
    peft. Returns (max abs diffs, max relative L2 errors)."""
    from safetensors.numpy import save_file

    names = list(W)
    lnames = lora_modules(names, target_modules, A["num_layers"])
    step = make_step(A, names, lnames, inv_freq, rope_scale)
    rep, rel = {}, {}
    ids, mask, rm = pair_rows(tok, template, pad_id, PAIRS)
    rows = ids.shape[0]
    g = torch.Generator().manual_seed(1234)
    lora = []
    for w, _, _ in lnames:
        o, i = W[w].shape
        lora += [torch.randn(LORA_RANK, i, generator=g) * 0.05, torch.randn(o, LORA_RANK, generator=g) * 0.05]
    lscale = LORA_ALPHA / LORA_RANK
    with torch.no_grad():
        base = sequence_logps(W, A, inv_freq, rope_scale, [], torch.from_numpy(ids), torch.from_numpy(mask),
                              torch.from_numpy(rm), 0.0, 0.0, 0).numpy()
    # the bundle's own logprob graph must agree with the functional model the step is written on
    lsess = ort_session(os.path.join(out, "logprob.float32.onnx"))
    seqs, starts = unpad(ids, mask, rm)
    o_sum = np.array([t.sum() for t in logprobs(lsess, {n: t.numpy() for n, t in W.items()}, seqs, starts, pad_id)])
    _check("dpo_base_logps_vs_logprob_graph", float(np.abs(o_sum - base).max()), ATOL, rep)
    count = rm.sum(-1)
    off = np.array([-0.3, 0.2, -0.1, 0.25, -0.15, 0.05] * (rows // 6 + 1), np.float32)[:rows]
    cases = [
        {"name": "sigmoid", "beta": 0.1, "label_smoothing": 0.1, "ipo": 0.0, "lora_scale": lscale, "dropout_p": 0.0,
         "dropout_seed": 0, "ref_logps": (base + off).astype(np.float32)},
        {"name": "ipo_dropout", "beta": 0.1, "label_smoothing": 0.0, "ipo": 1.0, "lora_scale": lscale,
         "dropout_p": 0.1, "dropout_seed": 20251126, "ref_logps": (base / count + 0.1 * off).astype(np.float32)},
    ]
    Wl = [W[n] for n in names]
    lin_names = [n for _, an, bn in lnames for n in (an, bn)]
    tensors = {n: t.numpy() for n, t in zip(lin_names, lora)}
    jcases = []
    for c in cases:
        data = step_inputs(ids, mask, rm, c["ref_logps"], c["beta"], c["label_smoothing"], c["ipo"], c["lora_scale"],
                           c["dropout_p"], c["dropout_seed"])
        t_out = [t.detach().numpy() for t in step(*data, *lora, *Wl)]
        nm = c["name"]
        log(f"dpo fixture {nm}: loss {float(t_out[0]):.6f}")
        if hf_model is not None:  # same case through transformers + peft, without dropout
            cd = {**c, "dropout_p": 0.0}
            data0 = step_inputs(ids, mask, rm, cd["ref_logps"], cd["beta"], cd["label_smoothing"], cd["ipo"],
                                cd["lora_scale"], 0.0, 0)
            t0 = [t.detach().numpy() for t in step(*data0, *lora, *Wl)]
            pl, plp, pg = peft_reference(hf_model, target_modules, lnames, lora, ids, mask, rm, cd["ref_logps"],
                                         cd["beta"], cd["label_smoothing"], cd["ipo"] > 0, LORA_RANK, LORA_ALPHA)
            _check(f"dpo_{nm}_nodropout_vs_peft_loss", abs(pl - float(t0[0])), ATOL, rep)
            _check(f"dpo_{nm}_nodropout_vs_peft_policy_logps", float(np.abs(plp - t0[1]).max()), ATOL, rep)
            _check_rel(f"dpo_{nm}_nodropout_vs_peft_grads", max(_rel_l2(t, p.numpy()) for t, p in zip(t0[2:], pg)), rel)
        tensors[f"{nm}/ref_logps"] = c["ref_logps"]
        tensors[f"{nm}/expected_policy_logps"] = t_out[1]
        for n, gr in zip(lin_names, t_out[2:]):
            tensors[f"{nm}/grad.{n}"] = gr
        jcases.append({k: v for k, v in c.items() if k != "ref_logps"} | {"expected_loss": float(t_out[0])})
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              os.path.join(out, "parity", "dpo.safetensors"), metadata={"format": "croco-dpo-parity"})
    os.chmod(os.path.join(out, "parity", "dpo.safetensors"), 0o644)
    fx = {"atol": ATOL, "grad_rtol": GRAD_RTOL, "tensors": "dpo.safetensors",
          "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "target_modules": list(target_modules), "inputs": lin_names},
          "pairs": [{"prompt": p, "chosen": ch, "rejected": rj} for p, ch, rj in PAIRS],
          "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "response_mask": rm.astype(np.int64).tolist(),
          "cases": jcases}
    json.dump(fx, open(os.path.join(out, "parity", "dpo.json"), "w"), ensure_ascii=False, indent=1)
    log(f"dpo fixtures written: {rep} rel L2 {rel}")
    return rep, rel


def update_checksums(bundle, log=print):
    """Rewrites this bundle's lines of `<parent>/checksums` (sha256sum format, as provenance.write_checksums
    writes it) when that file lists the bundle."""
    parent, name = os.path.split(os.path.normpath(os.path.abspath(bundle)))
    path = os.path.join(parent, "checksums")
    if not os.path.exists(path):
        return
    lines = [l.split("  ", 1) for l in open(path).read().splitlines() if l]
    if not any(p.startswith(name + "/") for _, p in lines):
        return
    keep = [(p, h) for h, p in lines if not p.startswith(name + "/")]
    for root, _, fs in os.walk(bundle):
        for f in fs:
            fp = os.path.join(root, f)
            keep.append((name + "/" + os.path.relpath(fp, bundle).replace(os.sep, "/"), sha256_file(fp)))
    keep.sort()
    with open(path, "w") as f:
        for p, h in keep:
            f.write(f"{h}  {p}\n")
    log(f"updated {path}")
