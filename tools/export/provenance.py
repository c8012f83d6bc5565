"""data/models/PROVENANCE.md and data/models/checksums for the demo world."""
from __future__ import annotations

import os
import platform

from .export import sha256_file

LANG_NAMES = {"en": "English", "da": "Danish", "nl": "Dutch", "fr": "French", "de": "German", "it": "Italian",
              "es": "Spanish", "gl": "Galician", "ga": "Irish", "mt": "Maltese", "cy": "Welsh", "fi": "Finnish",
              "nb": "Norwegian Bokmål", "pt": "Portuguese", "sv": "Swedish"}


def write_checksums(out, bundles):
    """sha256sum-compatible list of every file of the committed bundles (run `sha256sum -c checksums`
    inside data/models). Returns the total size in bytes."""
    lines, total = [], 0
    for b in bundles:
        for root, _, fs in os.walk(os.path.join(out, b)):
            for f in fs:
                p = os.path.join(root, f)
                lines.append((os.path.relpath(p, out), sha256_file(p)))
                total += os.path.getsize(p)
    lines.sort()
    with open(os.path.join(out, "checksums"), "w") as f:
        for rel, h in lines:
            f.write(f"{h}  {rel}\n")
    return total


def _mb(n):
    return f"{n / 1e6:.2f} MB"


def write_provenance(out, prov, total, args):
    c = prov.get("corpus", {})
    pt = prov.get("policy_training", {})
    rt = prov.get("reward_training", {})
    rh = prov.get("reward_heldout", {})
    ph = prov.get("policy_heldout", {}).get("loss_per_token_by_lang", {})
    L = []
    w = L.append
    w("# Demo world provenance\n")
    w("Everything in `data/models/policy/` and `data/models/reward/` was built from scratch by the export tool "
      "(`python -m tools.export demo-world`), with fixed seeds, from text that ships in Debian 12 packages. No "
      "pretrained weights were used.\n")
    w("## Regenerate\n")
    w("One command on a machine with the Debian text packages and a CUDA GPU (training takes about 1.5 min on an "
      "H200; the defaults of `demo-world` are the settings used here):\n")
    w("```sh\nsudo tools/export/fetch_text.sh            # Debian text packages (apt) + 6 l10n .debs unpacked\n"
      "python3 -m venv /opt/export-venv && /opt/export-venv/bin/pip install -r tools/export/requirements.txt\n"
      "/opt/export-venv/bin/python -m tools.export demo-world --device cuda\n"
      "(cd data/models && sha256sum -c checksums)\n```\n")
    w("How this copy was actually built (the text packages are on the CPU machine, the GPU machine has torch "
      "2.11/transformers 5.17 but no Debian text; `.export-work/` is git-ignored and carried between them):\n")
    w("```sh\n# CPU machine: corpus + tokenizer\n"
      "OMP_NUM_THREADS=2 nice -n 19 /opt/export-venv/bin/python -m tools.export demo-world --work .export-work --prepare-only\n"
      "# GPU machine (1x H200): pretraining, reward training, evaluations\n"
      "python3 -m tools.export demo-world --work .export-work --device cuda --stop-before-export\n"
      "# CPU machine: ONNX export, parity checks, PROVENANCE.md, checksums\n"
      "OMP_NUM_THREADS=2 nice -n 19 /opt/export-venv/bin/python -m tools.export demo-world --work .export-work\n```\n")
    w("Without a GPU, `--device cpu --pretrain-max-minutes N` trains on the CPU for at most N minutes (the cosine "
      "schedule then ends at the cap); on a shared 2-core CPU that is about 6 s per step of 8 rows of 256 tokens, far fewer "
      "steps than above. GPU kernels are not bit-reproducible, so a rebuild gives a model of the same kind and "
      "quality, not the same bytes; `checksums` pins the committed files.\n")
    w("## Text\n")
    w("Chat examples are consecutive sentences of one source: the first sentence is the prompt, the next ones "
      "(up to 48 words) the response. Each language is capped at "
      f"{args.max_chars_per_lang:,} characters; 4 % of examples (by a hash of the text) are held out from all "
      "training and used for the evaluations below.\n")
    w("| lang | sources (files/catalogs) | text available (chars) | kept (chars) | examples kept | by kind (chars available) |")
    w("|---|---|---|---|---|---|")
    for lang, s in c.items():
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(s["chars_by_kind"].items()))
        w(f"| {lang} ({LANG_NAMES.get(lang, lang)}) | {s['sources']} | {s['chars_available']:,} | {s['chars_kept']:,} "
          f"| {s['examples_kept']} | {kinds} |")
    w("\nKinds: `fortune` = fortune cookie files (`fortunes`, `fortunes-min`, `fortunes-de`, `-es`, `-it`, `-br` "
      "(Brazilian Portuguese), `-ga`); `man` = translated manual pages (`manpages-{de,es,it,fr,nl,da,fi,nb,sv,pt-br}`), "
      "roff stripped; `mo` = gettext catalogs in `/usr/share/locale` (msgstr; msgid for English) and LibreOffice's "
      "catalogs (`libreoffice-l10n-{cy,ga,gl}`); `xpi` = Firefox language packs (`firefox-esr-l10n-{cy,ga-ie,gl}`); "
      "`iso-codes-names` = Maltese country and language names from `iso-codes` — **Debian has no running "
      "Maltese text**, so Maltese is a list of names, repeated 20× in pretraining, and the model does not write Maltese.\n")
    w("## Tokenizer\n")
    w("Byte-level BPE (Hugging Face `tokenizers`), vocabulary 4096, NFC normaliser, trained on all kept prompts and "
      "responses" + (" plus `data/prompts/demo.jsonl`" if prov.get("tokenizer_included_demo_prompts") else
                     " (`data/prompts/demo.jsonl` did not exist yet when it was trained)") +
      ". Special tokens: `<|pad|>`=0, `<|bos|>`=1, `<|eos|>`=2, `<|user|>`=3, `<|assistant|>`=4, `<|end|>`=5.\n")
    ts = prov.get("tokenizer_stats", {})
    if ts:
        w("On every 10th example of each language: decode(encode(text)) == NFC(text) for " +
          ", ".join(f"{l} {d['exact_roundtrip']}/{d['texts']}" for l, d in ts.items()) +
          "; characters per token: " + ", ".join(f"{l} {d['chars'] / d['tokens']:.2f}" for l, d in ts.items()) + ".\n")
    w("Chat template: `<|bos|><|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>`; generation stops at "
      "`<|end|>` (or `<|eos|>`).\n")
    w("## Policy (`policy/`)\n")
    w(f"Llama architecture, hidden 256, 4 layers, 4 heads, 2 KV heads (head dim 64), MLP 512, vocabulary 4096, tied "
      f"embeddings, RoPE θ=10000: **{pt.get('params', 0):,} parameters** (float32). Pretrained from random init "
      f"(seed {args.seed}) on the chat-formatted examples packed into rows of {pt.get('seq')} tokens, batch "
      f"{pt.get('batch_rows')} rows, AdamW lr {pt.get('lr')} (cosine to 10 %, over the planned steps or the "
      f"wall-clock cap, whichever ends first), {pt.get('steps')} of {pt.get('steps_planned')} planned steps = "
      f"{pt.get('tokens_seen', 0):,} tokens (corpus after language balancing: {pt.get('corpus_tokens', 0):,} tokens), "
      f"{pt.get('seconds', 0):.0f} s on device `{pt.get('device', 'cpu')}` (one NVIDIA H200 when `cuda`). Loss {pt.get('first_loss', 0):.2f} → "
      f"{pt.get('final_loss', 0):.2f} (mean of the last 20 steps).\n")
    if ph:
        w("Held-out loss per token (nats) by language: " + ", ".join(f"{k} {v}" for k, v in ph.items()) + ".\n")
    sm = prov.get("policy_samples", {})
    if sm:
        w("Greedy samples on held-out prompts (40 new tokens at most):\n")
        w("| lang | prompt | greedy response |")
        w("|---|---|---|")
        for lang, ss in sm.items():
            for x in ss[:1]:
                cell = lambda t: t.replace("|", "\\|").replace("\n", " ")[:160]
                w(f"| {lang} | {cell(x['prompt'])} | {cell(x['greedy'])} |")
        w("")
    w("## Reward model (`reward/`)\n")
    w(f"`LlamaForSequenceClassification(num_labels=1)` initialised from the policy's base (all `model.*` weights), "
      f"score head N(0, 0.02), trained **only on English pairs**: {rt.get('train_pairs', 0):,} pairs built from "
      f"the English training examples, chosen = the fluent response, rejected = one of four corruptions of it in "
      f"rotation (words shuffled; 25 % of characters dropped; a repetition loop; a wrong-language continuation, "
      f"i.e. a response of another language). Bradley–Terry loss −log σ(r_c − r_r), AdamW lr {rt.get('lr')}, "
      f"{rt.get('steps')} steps × {rt.get('batch_pairs')} pairs, {rt.get('seconds', 0):.0f} s on `{rt.get('device', 'cpu')}`. "
      f"Loss {rt.get('first_loss', 0):.3f} → {rt.get('final_loss', 0):.3f}, train accuracy (last 20 steps) "
      f"{rt.get('final_train_acc', 0):.3f}.\n")
    w("### Held-out pairwise accuracy per language (the cross-lingual transfer in miniature)\n")
    w("Pairs built the same way from held-out examples of every language (4 corruptions per example); accuracy = "
      "share of pairs with score(chosen) > score(rejected); 0.5 is chance.\n")
    kinds = ["shuffle", "drop_chars", "repeat_loop", "wrong_language"]
    w("| lang | pairs | accuracy | " + " | ".join(kinds) + " |")
    w("|---|---|---|" + "---|" * len(kinds))
    for lang, d in rh.items():
        w(f"| {lang}{' (trained)' if lang == 'en' else ''} | {d['n']} | **{d['accuracy']:.3f}** | " +
          " | ".join(f"{d['by_kind'].get(k, float('nan')):.2f}" for k in kinds) + " |")
    w("")
    w("Reading the table: `drop_chars` transfers almost perfectly (it is visible in the byte-level tokens of any "
      "language), `shuffle` and `repeat_loop` transfer partly, and `wrong_language` does not: for non-English "
      "prompts the model prefers the other language's response about as often as not, i.e. from English-only "
      "pairs it learned \"English-like continuation is good\" more than \"same language as the prompt\". "
      "Maltese has only 1 held-out example (4 pairs); its number means nothing.\n")
    w("## Caveats\n")
    w("- The policy is tiny: greedy responses loop, and sometimes drift into another language or into "
      "boilerplate lines of the sources (translator credits, licence notices). It is meant for plumbing and for "
      "differences between languages, not for quality.\n"
      "- Per-language text is noisy: translated man pages and catalogs keep some untranslated English paragraphs "
      "(a stop-word filter drops examples that look English) and option lists.\n"
      "- Run-to-run variation: an earlier build of this world (before the roff accent fix and the English filter) "
      "measured 0.75–0.89 on the non-English languages and 0.975 on English; treat differences of up to ~0.1 "
      "between languages as noise.\n"
      "- Training ran on a GPU machine whose Python stack differs from `requirements.txt` (Python 3.12, torch "
      "2.11, transformers 5.17); export and parity ran with the pinned versions.\n")
    w("## Bundles and parity\n")
    w(f"Both bundles together: **{_mb(total)}** (limit 30 MB). Sizes per file are in each `croco-model.toml` "
      "(`[files]`), and `checksums` lists them in `sha256sum -c` form.\n")
    for b, rep in prov.get("parity", {}).items():
        w(f"- `{b}`: ONNX Runtime 1.31.1 vs transformers, max abs difference per check: " +
          ", ".join(f"{k} {v:.2e}" for k, v in rep.items()) + " (tolerance 1e-4" +
          ("; greedy tokens identical on 3 single prompts and one left-padded batch of 8)." if b == "policy" else ")."))
    w(f"\nBuilt with Python {platform.python_version()}, the versions in `tools/export/requirements.txt`.\n")
    open(os.path.join(out, "PROVENANCE.md"), "w").write("\n".join(L))
