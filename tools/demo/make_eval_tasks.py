#!/usr/bin/env python3
"""Write the demo world's multiple-choice evaluation tasks.

Reads  data/prompts/demo.jsonl
Writes data/eval/lang_match.jsonl   which continuation is in the context's language
       data/eval/real_text.jsonl    which text is real (vs. word-shuffled copies)
       data/eval/word_order.jsonl   which word order is right (vs. one adjacent swap)

Each line is one item (see schemas/eval_items.schema.json):

    {"task": ..., "item_id": "<task>-<language>-<source_id>", "language": ...,
     "context": ..., "options": [...], "gold": <int>}

Items are meant to be scored by the log-likelihood of each option given the
context. Files are sorted by (language, item_id).

Standard library only; deterministic (one random.Random(0), consumed in a fixed
order), so running it twice gives byte-identical files. Run from the repo root:

    python3 tools/demo/make_eval_tasks.py
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

SEED = 0
IN_PATH = Path("data/prompts/demo.jsonl")
OUT_DIR = Path("data/eval")
N_LANG_OPTIONS = 4  # lang_match: the context language + 3 others
N_SHUFFLE_DISTRACTORS = 3  # real_text
MIN_WORDS = 4  # real_text / word_order: skip shorter texts
MAX_TRIES = 1000
END_PUNCT = ".?!"


def split_words(text: str) -> tuple[list[str], str]:
    """Words of `text`, with sentence-final punctuation detached (kept in place
    when words are reordered, so it is not a trivial cue)."""
    words = text.split()
    tail = ""
    if words:
        last = words[-1]
        stripped = last.rstrip(END_PUNCT)
        if stripped and stripped != last:
            tail = last[len(stripped):]
            words[-1] = stripped
    return words, tail


def join_words(words: list[str], tail: str) -> str:
    return " ".join(words) + tail


def item(task: str, lang: str, sid: str, context: str, options: list[str], gold: int) -> dict:
    return {
        "task": task,
        "item_id": f"{task}-{lang}-{sid}",
        "language": lang,
        "context": context,
        "options": options,
        "gold": gold,
    }


def shuffled_with_gold(rng: random.Random, real: str, distractors: list[str]) -> tuple[list[str], int]:
    options = [real] + distractors
    rng.shuffle(options)
    return options, options.index(real)


def main() -> int:
    rows = [json.loads(line) for line in IN_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    text: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["source_id"], r["language"])
        if key in text:
            raise SystemExit(f"duplicate prompt for {key}")
        text[key] = r["prompt"]
    langs = sorted({lang for _, lang in text})
    sources = sorted({sid for sid, _ in text})

    rng = random.Random(SEED)
    out: dict[str, list[dict]] = defaultdict(list)
    skipped: list[str] = []

    for lang in langs:
        for i, sid in enumerate(sources):
            if (sid, lang) not in text:
                continue
            prompt = text[(sid, lang)]

            # 1. lang_match: context = source A in L; options = source B (next
            #    source_id, cyclic) in L and 3 random other languages.
            b = sources[(i + 1) % len(sources)]
            real = text.get((b, lang))
            if real is None:
                skipped.append(f"lang_match-{lang}-{sid}: no {b} text in {lang}")
            else:
                others = [
                    l2 for l2 in langs
                    if l2 != lang and (b, l2) in text and text[(b, l2)] != real
                ]
                picked: list[str] = []
                for l2 in rng.sample(others, len(others)):
                    if text[(b, l2)] not in (text[(b, p)] for p in picked):
                        picked.append(l2)
                    if len(picked) == N_LANG_OPTIONS - 1:
                        break
                if len(picked) < N_LANG_OPTIONS - 1:
                    skipped.append(f"lang_match-{lang}-{sid}: too few distinct other languages")
                else:
                    options, gold = shuffled_with_gold(rng, real, [text[(b, p)] for p in picked])
                    out["lang_match"].append(item("lang_match", lang, sid, prompt, options, gold))

            words, tail = split_words(prompt)

            # 2. real_text: real text vs 3 word-shuffled copies.
            if len(words) < MIN_WORDS:
                skipped.append(f"real_text-{lang}-{sid}: fewer than {MIN_WORDS} words")
            else:
                distractors: list[str] = []
                for _ in range(MAX_TRIES):
                    w = list(words)
                    rng.shuffle(w)
                    cand = join_words(w, tail)
                    if cand != prompt and cand not in distractors:
                        distractors.append(cand)
                    if len(distractors) == N_SHUFFLE_DISTRACTORS:
                        break
                if len(distractors) < N_SHUFFLE_DISTRACTORS:
                    skipped.append(f"real_text-{lang}-{sid}: could not make distinct shuffles")
                else:
                    options, gold = shuffled_with_gold(rng, prompt, distractors)
                    out["real_text"].append(item("real_text", lang, sid, "", options, gold))

            # 3. word_order: real text vs one adjacent-word swap.
            positions = [k for k in range(len(words) - 1) if words[k] != words[k + 1]]
            if len(words) < MIN_WORDS or not positions:
                skipped.append(f"word_order-{lang}-{sid}: no usable swap position")
            else:
                k = rng.choice(positions)
                w = list(words)
                w[k], w[k + 1] = w[k + 1], w[k]
                distractor = join_words(w, tail)
                gold = rng.randrange(2)
                options = [prompt, distractor] if gold == 0 else [distractor, prompt]
                out["word_order"].append(item("word_order", lang, sid, "", options, gold))

    # Validate.
    errors: list[str] = []
    for task, items in out.items():
        seen: set[str] = set()
        for it in items:
            opts = it["options"]
            if it["item_id"] in seen:
                errors.append(f"{it['item_id']}: duplicate item_id")
            seen.add(it["item_id"])
            if len(opts) < 2:
                errors.append(f"{it['item_id']}: fewer than 2 options")
            if any(not isinstance(o, str) or not o.strip() for o in opts):
                errors.append(f"{it['item_id']}: empty option")
            if len(set(opts)) != len(opts):
                errors.append(f"{it['item_id']}: options not distinct")
            if not (isinstance(it["gold"], int) and 0 <= it["gold"] < len(opts)):
                errors.append(f"{it['item_id']}: gold out of range")
            if task != "lang_match" and opts[it["gold"]] != text[(it["item_id"].rsplit("-", 1)[1], it["language"])]:
                errors.append(f"{it['item_id']}: gold is not the real text")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for task in ("lang_match", "real_text", "word_order"):
        items = sorted(out[task], key=lambda it: (it["language"], it["item_id"]))
        path = OUT_DIR / f"{task}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
        per_lang: dict[str, int] = defaultdict(int)
        for it in items:
            per_lang[it["language"]] += 1
        print(f"{path}: {len(items)} items, {len(per_lang)} languages "
              f"({', '.join(f'{l}={n}' for l, n in sorted(per_lang.items()))})")
    for s in skipped:
        print(f"skipped {s}")
    print(f"skipped: {len(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
