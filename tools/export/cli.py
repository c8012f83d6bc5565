"""Entry command: python -m tools.export {demo-world,policy,reward,random-llama,rebundle,train-graphs,merge-adapter} ..."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _setup_torch(threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def cmd_demo_world(a):
    """Builds the whole demo world: corpus -> tokenizer -> policy -> reward -> bundles.
    Intermediate results are cached in --work so an interrupted run resumes."""
    _setup_torch(a.threads)
    import random

    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from . import corpus, train

    os.makedirs(a.work, exist_ok=True)
    prov = {}
    prov_path = os.path.join(a.work, "provenance.json")
    if os.path.exists(prov_path):
        prov = json.load(open(prov_path))

    def save_prov():
        json.dump(prov, open(prov_path, "w"), indent=1, ensure_ascii=False)

    # 1. corpus
    cpath = os.path.join(a.work, "corpus.jsonl")
    if not os.path.exists(cpath):
        ex, stats = corpus.build_corpus(max_chars_per_lang=a.max_chars_per_lang, seed=a.seed, log=_log)
        with open(cpath, "w") as f:
            for e in ex:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        prov["corpus"] = stats
        save_prov()
    examples = [json.loads(l) for l in open(cpath)]
    train_ex, held_ex = corpus.split_heldout(examples)
    _log(f"corpus: {len(examples)} examples, {len(train_ex)} train, {len(held_ex)} held out")

    # 2. tokenizer
    tpath = os.path.join(a.work, "tokenizer.json")
    if not os.path.exists(tpath):
        texts = [e["prompt"] for e in examples] + [e["response"] for e in examples]
        if os.path.exists(a.demo_prompts):
            for l in open(a.demo_prompts):
                l = l.strip()
                if l:
                    o = json.loads(l)
                    texts.append(o.get("prompt", "") if isinstance(o, dict) else str(o))
            prov["tokenizer_included_demo_prompts"] = True
        tok = train.train_tokenizer(texts, vocab_size=a.vocab, log=_log)
        tok.save(tpath)
        save_prov()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tpath)
    if a.prepare_only:
        _log("corpus and tokenizer ready (--prepare-only)")
        return
    if "tokenizer_stats" not in prov:
        import unicodedata

        st = {}
        for e in examples[::10]:
            text = e["prompt"] + " " + e["response"]
            ids = tok.encode(text).ids
            d = st.setdefault(e["lang"], {"texts": 0, "exact_roundtrip": 0, "chars": 0, "tokens": 0})
            d["texts"] += 1
            d["exact_roundtrip"] += tok.decode(ids) == unicodedata.normalize("NFC", text)
            d["chars"] += len(text)
            d["tokens"] += len(ids)
        prov["tokenizer_stats"] = st
        save_prov()

    # 3. policy pretraining
    ppath = os.path.join(a.work, "policy-hf")
    if not os.path.exists(os.path.join(ppath, "config.json")):
        cfg = train.policy_config(vocab_size=tok.get_vocab_size())
        model, st = train.pretrain(tok, train_ex, cfg, steps=a.pretrain_steps, batch=a.batch_rows, lr=a.lr,
                                   seed=a.seed, log=_log, max_minutes=a.pretrain_max_minutes, device=a.device)
        held_text = [train.chat_full(e["prompt"], e["response"]) for e in held_ex]
        model.save_pretrained(ppath)
        prov["policy_training"] = st
        save_prov()
    policy = LlamaForCausalLM.from_pretrained(ppath, attn_implementation="eager").eval().to(a.device)

    if "policy_heldout" not in prov:
        # held-out loss per language and greedy samples
        per_lang = {}
        with torch.no_grad():
            for lang in corpus.LANGS:
                ex = [e for e in held_ex if e["lang"] == lang][:40]
                if not ex:
                    continue
                tot, n = 0.0, 0
                for e in ex:
                    ids = torch.tensor([tok.encode(train.chat_full(e["prompt"], e["response"])).ids]).to(a.device)
                    out = policy(input_ids=ids, labels=ids)
                    tot += out.loss.item() * (ids.shape[1] - 1)
                    n += ids.shape[1] - 1
                per_lang[lang] = round(tot / n, 3)
        prov["policy_heldout"] = {"loss_per_token_by_lang": per_lang}
        samples = {}
        for lang in corpus.LANGS:
            ex = [e for e in held_ex if e["lang"] == lang][:2]
            if ex:
                outs = train.greedy_samples(policy, tok, [e["prompt"] for e in ex])
                samples[lang] = [{"prompt": e["prompt"], "greedy": o} for e, o in zip(ex, outs)]
        prov["policy_samples"] = samples
        save_prov()
        _log(f"policy held-out loss per lang: {per_lang}")

    # 4. reward model, English pairs only
    rpath = os.path.join(a.work, "reward-hf")
    if not os.path.exists(os.path.join(rpath, "config.json")):
        en_train = [e for e in train_ex if e["lang"] == "en"]
        pairs = train.make_pairs(en_train, train_ex, seed=a.seed, per_example=2)
        rm, st = train.train_reward(tok, policy.cpu(), pairs, steps=a.reward_steps, batch=a.reward_batch,
                                    lr=a.reward_lr, seed=a.seed, log=_log, device=a.device)
        rm.cpu()
        rm.save_pretrained(rpath)
        prov["reward_training"] = st
        save_prov()
    rm = LlamaForSequenceClassification.from_pretrained(rpath, attn_implementation="eager").eval().to(a.device)
    if "reward_heldout" not in prov:
        held_pairs = []
        for lang in corpus.LANGS:
            ex = [e for e in held_ex if e["lang"] == lang][: a.eval_per_lang]
            held_pairs += train.make_pairs(ex, examples, seed=a.seed + 1, per_example=4)
        acc = train.pairwise_accuracy(rm, tok, held_pairs)
        prov["reward_heldout"] = acc
        save_prov()
        _log("reward held-out pairwise accuracy: " + ", ".join(f"{l}={d['accuracy']:.3f}(n={d['n']})" for l, d in acc.items()))

    if a.stop_before_export:
        _log("stopping before export (--stop-before-export)")
        return
    rm.cpu()
    policy.cpu()

    # 5. bundles
    from .bundle import export_reward
    from .policy import export_policy

    demo_prompts = _parity_prompts(held_ex, policy, tok)
    res_p = export_policy(ppath, tpath, os.path.join(a.out, "policy"), chat_template=train.CHAT_TEMPLATE,
                          parity_prompts=demo_prompts, log=_log, name="croco-demo-policy", max_new=64, parity_layers=0)
    res_r = export_reward(rpath, tpath, os.path.join(a.out, "reward"), chat_template=train.CHAT_TEMPLATE,
                          parity_pairs=[(p, "") for p in demo_prompts[:2]] + [
                              (e["prompt"], e["response"]) for e in held_ex[:6]],
                          log=_log, name="croco-demo-reward", parity_layers=0)
    prov["parity"] = {"policy": res_p, "reward": res_r}
    prov["command"] = " ".join(["python -m tools.export"] + sys.argv[1:])
    save_prov()
    from .provenance import write_checksums, write_provenance

    total = write_checksums(a.out, ["policy", "reward"])
    write_provenance(a.out, prov, total, a)
    _log(f"done; {a.out}/PROVENANCE.md, {a.out}/checksums; bundles {total / 1e6:.1f} MB together")
    if total > 30 * 1000 * 1000:
        raise SystemExit(f"committed bundles are {total} bytes > 30 MB")


def _parity_prompts(held_ex, policy=None, tok=None, max_new=64):
    """Held-out prompts of a few languages, plus (when the policy is given) the first two held-out
    prompts after which the policy stops within max_new tokens, so that the fixtures exercise stop
    tokens inside a left-padded batch, and one fixed prompt."""
    by = {}
    for e in held_ex:
        by.setdefault(e["lang"], []).append(e["prompt"])
    out = [by[l][0] for l in ["en", "de", "ga", "fr", "cy", "nb"] if l in by]
    if policy is not None:
        import torch

        from . import train
        from .export import left_pad

        cands = [e["prompt"] for e in held_ex[:1024] if e["prompt"] not in out]
        early = []
        for i in range(0, len(cands), 64):
            chunk = cands[i:i + 64]
            ids, mask = left_pad([tok.encode(train.chat_prompt(p)).ids for p in chunk], 0)
            with torch.no_grad():
                g = policy.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                                    max_new_tokens=max_new, eos_token_id=[5, 2], pad_token_id=0)
            for p, row in zip(chunk, g[:, ids.shape[1]:].tolist()):
                if 5 in row[: max_new - 2]:
                    early.append(p)
            if len(early) >= 2:
                break
        out += early[:2]
    return out + ["Hello!"]


def _template(a, tpath):
    from tokenizers import Tokenizer

    from .train import CHAT_TEMPLATE

    if a.chat_template:
        t = a.chat_template.replace("\\n", "\n")
    elif Tokenizer.from_file(tpath).token_to_id("<|user|>") is not None:
        t = CHAT_TEMPLATE
    else:
        raise SystemExit("--chat-template is required for this tokenizer (a string with {prompt} and {response}, "
                         "e.g. '<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{response}<|im_end|>')")
    if t.count("{prompt}") != 1 or t.count("{response}") != 1 or t.index("{prompt}") > t.index("{response}"):
        raise SystemExit("the chat template needs {prompt} then {response}, once each")
    return t


def cmd_policy(a):
    _setup_torch(a.threads)
    from .policy import export_policy

    tpath = a.tokenizer or os.path.join(a.checkpoint, "tokenizer.json")
    export_policy(a.checkpoint, tpath, a.out, chat_template=_template(a, tpath),
                  parity_prompts=a.prompt or ["Hello!", "Wie geht es dir?", "Dia duit."], log=_log,
                  name=a.name or os.path.basename(os.path.normpath(a.checkpoint)), stop_tokens=a.stop_token,
                  train=not a.no_train, parity_layers=a.parity_layers)


def cmd_reward(a):
    _setup_torch(a.threads)
    from .bundle import export_reward

    tpath = a.tokenizer or os.path.join(a.checkpoint, "tokenizer.json")
    prompts = a.prompt or ["Hello!", "Wie geht es dir?"]
    export_reward(a.checkpoint, tpath, a.out, chat_template=_template(a, tpath),
                  parity_pairs=[(p, "Fine, thanks.") for p in prompts] + [(prompts[0], "")], log=_log,
                  name=a.name or os.path.basename(os.path.normpath(a.checkpoint)), stop_tokens=a.stop_token,
                  parity_layers=a.parity_layers)


def cmd_random_llama(a):
    _setup_torch(a.threads)
    from .policy import random_llama

    random_llama(a.out, a.tokenizer, hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads,
                 intermediate=a.intermediate, vocab=a.vocab, seed=a.seed, log=_log, train=not a.no_train,
                 dtype=a.dtype, max_positions=a.max_positions)


def cmd_sampler_graph(a):
    """The device sampler's two graphs (graphs.sample_graph): model-independent, compiled into croco
    (src/model/sample_sorted.onnx, src/model/sample_index.onnx)."""
    import onnx

    from .graphs import sample_graph

    for order in ("sorted", "index"):
        model = sample_graph(order)
        onnx.checker.check_model(model)
        path = os.path.join(a.out, f"sample_{order}.onnx")
        onnx.save(model, path)
        _log(f"wrote {path} ({os.path.getsize(path)} bytes)")


def cmd_rebundle(a):
    """An existing bundle (any format version) re-exported in the current format from the same weights, with its
    name, chat template, stop tokens and parity inputs; parity runs on the whole model and the fixtures are
    regenerated. OUT may be the bundle itself."""
    _setup_torch(a.threads)
    import tempfile

    from .adapter import checkpoint_from_bundle
    from .bundle import export_reward
    from .dpo import update_checksums
    from .policy import export_policy

    with tempfile.TemporaryDirectory() as ckpt:
        man = checkpoint_from_bundle(a.bundle, ckpt)
        parity = os.path.join(a.bundle, man["parity"]["dir"])
        common = dict(log=_log, name=man["name"], stop_tokens=man["tokenizer"]["stop_tokens"], parity_layers=0)
        tpath, template = os.path.join(ckpt, "tokenizer.json"), man["chat"]["template"]
        if man["kind"] == "policy":
            last = json.load(open(os.path.join(parity, "greedy.json")))["cases"][-1]
            export_policy(ckpt, tpath, a.out, template, last["prompts"], max_new=last["max_new_tokens"],
                          train="dpo" in man["graphs"] or "train_layer" in man["graphs"], **common)
        else:
            pairs = [(p["prompt"], p["response"]) for p in json.load(open(os.path.join(parity, "score.json")))["pairs"]]
            export_reward(ckpt, tpath, a.out, template, pairs, **common)
    update_checksums(a.out, log=_log)


def cmd_train_graphs(a):
    _setup_torch(a.threads)
    from .train_graphs import add_train_graphs_to_bundle

    add_train_graphs_to_bundle(a.bundle, log=_log, chunks=a.sequence_chunks)


def cmd_merge_adapter(a):
    _setup_torch(a.threads)
    from .adapter import merge_adapter

    merge_adapter(a.bundle, a.adapter, a.out, log=_log)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo-world", help="build data/models/{policy,reward} from Debian text, from scratch")
    d.add_argument("--out", default="data/models")
    d.add_argument("--work", default="/var/tmp/croco-demo-work")
    d.add_argument("--demo-prompts", default="data/prompts/demo.jsonl")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--vocab", type=int, default=4096)
    d.add_argument("--max-chars-per-lang", type=int, default=3_000_000)
    d.add_argument("--pretrain-steps", type=int, default=4000)
    d.add_argument("--pretrain-max-minutes", type=float, default=None,
                   help="wall-clock cap (the run stops early on a busy machine; PROVENANCE records the steps done)")
    d.add_argument("--reward-steps", type=int, default=600)
    d.add_argument("--batch-rows", type=int, default=64, help="pretraining batch (rows of 256 tokens)")
    d.add_argument("--lr", type=float, default=3e-3, help="pretraining peak learning rate")
    d.add_argument("--reward-batch", type=int, default=32, help="reward batch (pairs)")
    d.add_argument("--reward-lr", type=float, default=1e-4)
    d.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    d.add_argument("--prepare-only", action="store_true",
                   help="build the corpus and tokenizer only (they need the Debian text packages)")
    d.add_argument("--stop-before-export", action="store_true",
                   help="train and evaluate only (e.g. on a GPU machine without the export stack)")
    d.add_argument("--eval-per-lang", type=int, default=100)
    d.set_defaults(fn=cmd_demo_world)

    for name, fn, help_ in [("policy", cmd_policy, "Llama-family *ForCausalLM checkpoint -> policy bundle"),
                            ("reward", cmd_reward, "Llama-family *ForSequenceClassification(num_labels=1) -> reward bundle")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("checkpoint", help="local Hugging Face checkpoint directory (config.json + *.safetensors)")
        s.add_argument("--out", required=True)
        s.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's)")
        s.add_argument("--chat-template", help="string with {prompt} and {response} (\\n for newlines); "
                       "required unless the tokenizer has the demo's <|user|> tokens")
        s.add_argument("--stop-token", action="append",
                       help="token that ends a response (repeatable; default: the config's eos tokens)")
        s.add_argument("--prompt", action="append", help="parity prompt (repeatable)")
        s.add_argument("--name")
        s.add_argument("--parity-layers", type=int, default=2,
                       help="check parity on a copy of the first N layers read from the same checkpoint "
                            "(0: the whole model, when memory allows)")
        if name == "policy":
            s.add_argument("--no-train", action="store_true",
                           help="skip the layer-wise training graphs (train_*.onnx) and the DPO fixtures")
        s.set_defaults(fn=fn)

    r = sub.add_parser("random-llama", help="randomly initialised Llama bundle for benchmarks (not committed)")
    r.add_argument("--out", required=True)
    r.add_argument("--tokenizer", default="data/models/policy/tokenizer.json")
    r.add_argument("--hidden", type=int, default=2048)
    r.add_argument("--layers", type=int, default=16)
    r.add_argument("--heads", type=int, default=16)
    r.add_argument("--kv-heads", type=int, default=8)
    r.add_argument("--intermediate", type=int, default=5632)
    r.add_argument("--vocab", type=int, default=4096)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-positions", type=int, default=4096)
    r.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the checkpoint's dtype (bfloat16: the bundle also gets bfloat16 graphs for CUDA)")
    r.add_argument("--no-train", action="store_true", help="skip the layer-wise training graphs (train_*.onnx)")
    r.set_defaults(fn=cmd_random_llama)

    sg = sub.add_parser("sampler-graph", help="write the device sampler graph croco compiles in")
    sg.add_argument("--out", default="src/model", help="directory")
    sg.set_defaults(fn=cmd_sampler_graph)

    b = sub.add_parser("rebundle", help="re-export a bundle in the current format from its own weights")
    b.add_argument("bundle", help="bundle directory, e.g. data/models/policy")
    b.add_argument("--out", required=True, help="output directory (may be the bundle itself)")
    b.set_defaults(fn=cmd_rebundle)

    tg = sub.add_parser("train-graphs", help="add the layer-wise training graphs (train_*.onnx) and the DPO fixtures to a "
                        "policy bundle (replacing a whole-model dpo.onnx)")
    tg.add_argument("bundle", help="policy bundle directory, e.g. data/models/policy")
    tg.add_argument("--sequence-chunks", type=int, default=None,
                    help="chunks the layer graphs cut the sequence into (default 8): more chunks, less memory per "
                         "layer; fewer, fewer and larger kernels (docs/bundle-format.md, \"Sequence chunks\")")
    tg.set_defaults(fn=cmd_train_graphs)

    m = sub.add_parser("merge-adapter", help="policy bundle + PEFT LoRA adapter -> full Hugging Face checkpoint")
    m.add_argument("bundle", help="policy bundle directory")
    m.add_argument("adapter", help="PEFT adapter directory (adapter_config.json, adapter_model.safetensors)")
    m.add_argument("out", help="output directory (config.json, model.safetensors, tokenizer.json)")
    m.set_defaults(fn=cmd_merge_adapter)

    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
