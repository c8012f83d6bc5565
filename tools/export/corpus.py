"""Multilingual text corpus for the tiny demo world, built only from Debian packages.

Sources (per language):
  * fortune cookie files (``fortunes``, ``fortunes-de``, ``-es``, ``-it``, ``-br``, ``-ga``),
  * translated manual pages (``manpages-{fr,nl,de,es,it,da,fi,nb,sv,pt-br}``), roff stripped,
  * gettext catalogs (``/usr/share/locale/<lang>/LC_MESSAGES/*.mo``): ``msgstr`` for the
    language, ``msgid`` for English.

The output is a list of chat examples ``(lang, prompt, response)``: consecutive sentences of
one source, the first one as the prompt and the following ones as the response, so the model
learns to answer in the prompt's language.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import random
import re
import struct
import subprocess
import unicodedata
from collections import defaultdict

LANGS = ["en", "da", "nl", "fr", "de", "it", "es", "gl", "ga", "mt", "cy", "fi", "nb", "pt", "sv"]

FORTUNE_PKGS = {
    "en": ["fortunes", "fortunes-min"],
    "de": ["fortunes-de"],
    "es": ["fortunes-es"],
    "it": ["fortunes-it"],
    "pt": ["fortunes-br"],
    "ga": ["fortunes-ga"],
}
MAN_DIRS = {
    "de": ["de"], "es": ["es"], "it": ["it"], "fr": ["fr"], "nl": ["nl"], "da": ["da"],
    "fi": ["fi"], "nb": ["nb"], "sv": ["sv"], "pt": ["pt_BR", "pt"],
}
LOCALE_DIRS = {
    "da": ["da"], "nl": ["nl"], "fr": ["fr"], "de": ["de"], "it": ["it"], "es": ["es"],
    "gl": ["gl"], "ga": ["ga"], "mt": ["mt"], "cy": ["cy"], "fi": ["fi"],
    "nb": ["nb", "nb_NO", "no"], "pt": ["pt", "pt_PT", "pt_BR"], "sv": ["sv"],
}
# Extra Debian packages unpacked (dpkg-deb -x, no dependencies) by fetch_text.sh for the
# languages that the system catalogs cover thinly (cy, ga, gl).
EXTRA_ROOT = os.environ.get("CROCO_TEXT_ROOT", "/var/tmp/croco-text/root")
# Maltese has no running text in Debian; its only source is iso-codes' name catalogs.
NAME_LIST_LANGS = {"mt"}
SKIP_FORTUNE_FILES = {"ascii-art", "art", "asciiart", "banner", "translate-me"}


def _norm(s: str) -> str:
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\u00a0", " ").replace("\t", " ")
    return re.sub(r"[ ]+", " ", s).strip()


def _read_text(path: str) -> str:
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _pkg_files(pkg: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return []
    return [l for l in out.splitlines() if "/usr/share/games/fortunes" in l]


def fortune_docs(lang: str) -> dict[str, list[str]]:
    """source name -> list of documents (one fortune each)."""
    seen, out = set(), {}
    for pkg in FORTUNE_PKGS.get(lang, []):
        for f in sorted(_pkg_files(pkg)):
            if f.endswith((".dat", ".u8")) or not os.path.isfile(f):
                continue
            real = os.path.realpath(f)
            if real in seen or os.path.basename(real) in SKIP_FORTUNE_FILES:
                continue
            seen.add(real)
            docs = []
            for chunk in re.split(r"\n%\n", _read_text(real)):
                lines = [l for l in chunk.splitlines() if l.strip()]
                # drop ascii art / attribution-only lines
                text = _norm(" ".join(l.strip() for l in lines if not re.match(r"^\s*(--|—)\s", l)))
                if len(text.split()) >= 4 and sum(c.isalpha() for c in text) > 0.6 * len(text):
                    docs.append(text)
            if docs:
                out[f"fortune:{pkg}:{os.path.basename(real)}"] = docs
    return out


_ROFF_GLYPHS = {
    ":a": "ä", ":o": "ö", ":u": "ü", ":A": "Ä", ":O": "Ö", ":U": "Ü", ":e": "ë", ":i": "ï", ":y": "ÿ",
    "oa": "å", "oA": "Å", "ss": "ß", "/o": "ø", "/O": "Ø", "ae": "æ", "AE": "Æ", ",c": "ç", ",C": "Ç",
    "'a": "á", "'e": "é", "'i": "í", "'o": "ó", "'u": "ú", "'y": "ý", "'E": "É", "'A": "Á", "'O": "Ó",
    "`a": "à", "`e": "è", "`i": "ì", "`o": "ò", "`u": "ù", "`A": "À", "`E": "È",
    "^a": "â", "^e": "ê", "^i": "î", "^o": "ô", "^u": "û", "~n": "ñ", "~N": "Ñ", "~a": "ã", "~o": "õ",
    "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "em": "—", "en": "–", "aq": "'", "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "dq": '"', "Bq": "„", "bq": "‚", "bu": "•", "co": "©", "rg": "®", "tm": "™",
    "hy": "-", "mi": "-", "pl": "+", "mu": "×", "di": "÷", "de": "°", "<=": "≤", ">=": "≥", "->": "→",
    "<-": "←", "==": "≡", "!=": "≠", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "dg": "†", "sc": "§",
    "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "Eu": "€", "eu": "€", "ct": "¢",
}


def _glyph(m):
    g = m.group(1) or m.group(2)
    return _ROFF_GLYPHS.get(g, "")


_ROFF_ESC = [
    (r"\\\((..)|\\\[([^\]\s]{1,2})\]", _glyph),
    (r"\\f(\[[^\]]*\]|\(..|.)", ""), (r"\\s[+-]?\d", ""), (r"\\\*(\[[^\]]*\]|\(..|.)", ""),
    (r"\\\(em", "—"), (r"\\\(en", "–"), (r"\\\(aq", "'"), (r"\\\([lr]q", '"'), (r"\\\(Fo", "«"),
    (r"\\\(Fc", "»"), (r"\\\(bu", "•"), (r"\\\(co", "©"), (r"\\\(..", ""), (r"\\\[[^\]]*\]", ""),
    (r"\\-", "-"), (r"\\e", "\\\\"), (r"\\&", ""), (r"\\ ", " "), (r"\\~", " "), (r"\\%", ""),
    (r"\\[|^c]", ""), (r"\\.", ""),
]
_ROFF_ESC = [(re.compile(a), b) for a, b in _ROFF_ESC]


def _unroff(line: str) -> str:
    for rx, rep in _ROFF_ESC:
        line = rx.sub(rep, line)
    return line


def man_docs(lang: str) -> dict[str, list[str]]:
    out = {}
    for d in MAN_DIRS.get(lang, []):
        for f in sorted(glob.glob(f"/usr/share/man/{d}/man*/*")):
            if not os.path.isfile(f):
                continue
            try:
                raw = gzip.open(f, "rb").read() if f.endswith(".gz") else open(f, "rb").read()
                txt = raw.decode("utf-8")
            except Exception:
                continue
            paras, cur, nofill = [], [], False
            for line in txt.splitlines():
                if line.startswith((".\\\"", "'\\\"", '.\\"')):
                    continue
                if line.startswith((".", "'")):
                    m = re.match(r"^[.'](\S+)\s*(.*)$", line)
                    mac, arg = (m.group(1), m.group(2)) if m else ("", "")
                    if mac in ("nf", "EX"):
                        nofill = True
                    if mac in ("fi", "EE"):
                        nofill = False
                    if mac in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB") and arg:
                        if mac in ("BR", "IR", "RB", "RI", "BI", "IB"):
                            parts = re.findall(r'"[^"]*"|\S+', arg)
                            arg = "".join(p.strip('"') for p in parts)
                        cur.append(arg.replace('"', ""))
                        continue
                    if cur:
                        paras.append(" ".join(cur))
                        cur = []
                    continue
                if nofill:
                    continue
                if not line.strip():
                    if cur:
                        paras.append(" ".join(cur))
                        cur = []
                    continue
                cur.append(line)
            if cur:
                paras.append(" ".join(cur))
            docs = []
            for p in paras:
                p = _norm(_unroff(p))
                w = p.split()
                if len(w) >= 6 and sum(c.isalpha() for c in p) > 0.7 * len(p) and "http" not in p:
                    docs.append(p)
            if docs:
                out[f"man:{d}:{os.path.basename(f)}"] = docs
    return out


def _parse_mo(path: str) -> list[tuple[str, str]]:
    data = open(path, "rb").read()
    if len(data) < 28:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    e = "<" if magic == 0x950412DE else ">"
    _, n, oo, ot = struct.unpack(e + "4I", data[4:20])
    pairs = []
    for i in range(n):
        lo, po = struct.unpack(e + "2I", data[oo + 8 * i: oo + 8 * i + 8])
        lt, pt = struct.unpack(e + "2I", data[ot + 8 * i: ot + 8 * i + 8])
        try:
            mid = data[po: po + lo].decode("utf-8")
            mst = data[pt: pt + lt].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not mid:
            continue
        mid = mid.split("\x04")[-1].split("\x00")[0]
        mst = mst.split("\x00")[0]
        pairs.append((mid, mst))
    return pairs


_BAD_MSG = re.compile(r"[%{}<>=\\|@#$`*\[\]]|--|\.\.\.$|https?:|\w\.\w+\.\w")


def _clean_msg(s: str) -> str | None:
    s = s.replace("\n", " ").replace("_", "").replace("&", "")
    s = _norm(s)
    if _BAD_MSG.search(s):
        return None
    w = s.split()
    if len(w) < 4 or len(w) > 80:
        return None
    if sum(c.isalpha() for c in s) < 0.75 * len(s):
        return None
    return s


def mo_docs(lang: str) -> dict[str, list[str]]:
    out = {}
    if lang == "en":
        dirs = sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES"))
    else:
        dirs = [f"/usr/share/locale/{d}/LC_MESSAGES" for d in LOCALE_DIRS.get(lang, [])]
    dirs += [f"{EXTRA_ROOT}/usr/lib/libreoffice/program/resource/{d}/LC_MESSAGES"
             for d in LOCALE_DIRS.get(lang, []) if lang != "en"]
    seen = set()
    if lang in NAME_LIST_LANGS:
        names = []
        for d in dirs:
            for f in sorted(glob.glob(f"{d}/iso_*.mo")):
                for _, mst in _parse_mo(f):
                    s = _norm(mst)
                    if s and s not in seen and sum(c.isalpha() or c == " " for c in s) == len(s):
                        seen.add(s)
                        names.append(s)
        docs = [", ".join(names[i:i + 8]) + "." for i in range(0, len(names), 8)]
        return {f"iso-codes-names:{lang}": docs} if docs else {}
    for d in dirs:
        for f in sorted(glob.glob(f"{d}/*.mo")):
            docs = []
            for mid, mst in _parse_mo(f):
                s = _clean_msg(mid if lang == "en" else mst)
                if s is None or s in seen or (lang != "en" and s == _norm(mid)):
                    continue
                seen.add(s)
                docs.append(s)
            if docs:
                out[f"mo:{os.path.basename(os.path.dirname(d))}:{os.path.basename(f)}"] = docs
    return out


_SENT = re.compile(r"(?<=[.!?…。])\s+(?=[\"'«“¿¡(]?[A-ZÀ-ÖØ-Þ0-9])")


def xpi_docs(lang: str) -> dict[str, list[str]]:
    """Firefox language packs (Fluent .ftl and .properties inside the .xpi zip)."""
    import zipfile
    tags = {"cy": ["cy"], "ga": ["ga-IE"], "gl": ["gl"]}.get(lang, [])
    out, seen = {}, set()
    for t in tags:
        for f in sorted(glob.glob(f"{EXTRA_ROOT}/usr/lib/firefox-esr/browser/extensions/langpack-{t}@*.xpi")):
            docs = []
            with zipfile.ZipFile(f) as z:
                for name in sorted(z.namelist()):
                    if not name.endswith((".ftl", ".properties")):
                        continue
                    for line in z.read(name).decode("utf-8", "replace").splitlines():
                        m = re.match(r"^\s*\.?[A-Za-z0-9_.-]+\s*=\s*(.+)$", line)
                        if not m:
                            continue
                        s = _clean_msg(m.group(1))
                        if s and s not in seen:
                            seen.add(s)
                            docs.append(s)
            if docs:
                out[f"xpi:{t}:{os.path.basename(f)}"] = docs
    return out


def sentences(doc: str) -> list[str]:
    return [s.strip() for s in _SENT.split(doc) if s.strip()]


def make_examples(lang: str, docs_by_source: dict[str, list[str]], max_resp_words=48, seed=0):
    """Chat examples from consecutive sentences of one source."""
    ex = []
    for src in sorted(docs_by_source):
        sents = []
        for d in docs_by_source[src]:
            sents.extend(sentences(d))
        i = 0
        while i + 1 < len(sents):
            prompt = sents[i]
            if len(prompt.split()) > 40:
                i += 1
                continue
            resp, j = [], i + 1
            while j < len(sents) and sum(len(s.split()) for s in resp) < max_resp_words // 2:
                resp.append(sents[j])
                j += 1
            r = " ".join(resp)
            words = r.split()
            if len(words) > max_resp_words:
                r = " ".join(words[:max_resp_words])
            ex.append({"lang": lang, "source": src, "prompt": prompt, "response": r})
            i = j
    return ex


_EN_STOP = set("the and is of to a in for that with this are be by on or not as if it an from which will can "
                "you your when file files default option options used use".split())


def looks_english(text: str) -> bool:
    """Untranslated English paragraphs occur in translated man pages and catalogs."""
    w = re.findall(r"[a-z]+", text.lower())
    return len(w) >= 4 and sum(x in _EN_STOP for x in w) / len(w) > 0.2


def build_corpus(max_chars_per_lang: int = 700_000, seed: int = 0, log=print):
    """Returns (examples, stats). Examples are balanced: each language capped at
    ``max_chars_per_lang`` characters of prompt+response text, sampled with a fixed seed."""
    rng = random.Random(seed)
    all_ex, stats = [], {}
    for lang in LANGS:
        srcs = {}
        srcs.update(fortune_docs(lang))
        srcs.update(man_docs(lang))
        srcs.update(mo_docs(lang))
        srcs.update(xpi_docs(lang))
        ex = make_examples(lang, srcs)
        if lang != "en":
            ex = [e for e in ex if not looks_english(e["prompt"] + " " + e["response"])]
        raw_chars = sum(len(e["prompt"]) + len(e["response"]) for e in ex)
        by_kind = defaultdict(int)
        for e in ex:
            by_kind[e["source"].split(":")[0]] += len(e["prompt"]) + len(e["response"])
        rng.shuffle(ex)
        kept, n = [], 0
        for e in ex:
            if n >= max_chars_per_lang:
                break
            kept.append(e)
            n += len(e["prompt"]) + len(e["response"])
        stats[lang] = {"sources": len(srcs), "examples_available": len(ex), "chars_available": raw_chars,
                       "chars_by_kind": dict(by_kind), "examples_kept": len(kept), "chars_kept": n}
        log(f"corpus {lang}: {len(srcs)} sources, {len(ex)} examples, {raw_chars} chars, kept {len(kept)} / {n} chars")
        all_ex.extend(kept)
    return all_ex, stats


def split_heldout(examples, frac=0.04):
    """Deterministic held-out split by a hash of the text."""
    train, held = [], []
    for e in examples:
        h = int(hashlib.sha256((e["prompt"] + "\x00" + e["response"]).encode()).hexdigest()[:8], 16)
        (held if h % 10_000 < frac * 10_000 else train).append(e)
    return train, held


if __name__ == "__main__":
    ex, st = build_corpus()
    print(json.dumps(st, indent=1))
    rng = random.Random(1)
    for e in rng.sample(ex, 20):
        print(e)
