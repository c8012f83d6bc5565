#!/usr/bin/env python3
"""Fails when an import points up a layer or closes a cycle.

Rust (`src/`): every file is a node; an edge goes from a file to the file
of each module it names through `crate::`, `super::` or `self::` paths (in
`use` trees and inline), resolved to the deepest module that exists. A
parent's `mod child;` declaration is structure, not an import. Unit tests
(from a file's `#[cfg(test)]` on) are left out: they may reach anywhere.
The top-level modules form layers (LAYERS, lowest first): an import from a
file to a module of a higher layer is an error, and so is any cycle, within
a layer too.

Python (`tools/export/`): every module is a node; an edge goes to each
sibling module it imports (`from .x import`, `from tools.export.x import`,
`from . import x`). Any cycle is an error.

Usage: python3 tools/check_imports.py [--graph]   (run from the repository root)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Lowest first. Modules of one layer may import each other (acyclically);
# a module may import any lower layer, never a higher one.
LAYERS: list[list[str]] = [
    ["ids", "langs", "vocab"],
    ["store", "model"],
    ["spec"],
    ["stages"],
    ["pipeline"],
    ["report"],
    ["cli", "main"],
]

RUST_ROOT = Path("src")
PYTHON_ROOT = Path("tools/export")


def strip_comments(text: str) -> str:
    """Drops line comments (incl. doc comments) and string literals' content."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def module_of(path: Path) -> list[str]:
    """`src/a/b.rs` -> [a, b]; `src/a/mod.rs` -> [a]; `src/lib.rs` -> []."""
    parts = list(path.relative_to(RUST_ROOT).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def file_of(module: list[str]) -> Path | None:
    if not module:
        return RUST_ROOT / "lib.rs"
    base = RUST_ROOT.joinpath(*module)
    for candidate in (base.with_suffix(".rs"), base / "mod.rs"):
        if candidate.exists():
            return candidate
    if module == ["main"]:
        return RUST_ROOT / "main.rs"
    return None


def deepest_module(segments: list[str]) -> list[str]:
    """The longest prefix of `segments` that names a module file."""
    for n in range(len(segments), -1, -1):
        if file_of(segments[:n]) is not None:
            return segments[:n]
    return []


def expand_use_tree(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    brace = tree.find("{")
    if brace < 0:
        return [tree] if tree else []
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    paths = []
    for item in filter(None, items):
        for sub in expand_use_tree(item):
            paths.append(prefix + sub if sub != "self" else prefix.rstrip(":"))
    return paths


def absolute(path: str, here: list[str], children: set[str]) -> list[str] | None:
    segments = [s for s in path.split("::") if s]
    if not segments:
        return None
    head, rest = segments[0], segments[1:]
    if head == "crate":
        return rest
    if head in children:
        return here + segments
    if head == "self":
        return here + rest
    if head == "super":
        base = here[:]
        while segments and segments[0] == "super":
            base = base[:-1]
            segments = segments[1:]
        return base + segments
    return None


def rust_edges(path: Path) -> set[Path]:
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    text = strip_comments(text if cut < 0 else text[:cut])
    here = module_of(path)
    # Inside `a/b.rs`, `super::` is `a`; inside `a/mod.rs`, `self::` is `a`.
    paths: list[str] = []
    for tree in re.findall(r"\buse\s+([^;]+);", text):
        paths.extend(expand_use_tree(tree))
    # A file's own child modules are named bare (`generate::run` in `stages/mod.rs`).
    children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M))
    heads = "|".join(["crate", "super", "self", *sorted(children)])
    paths.extend(m.group(0) for m in re.finditer(rf"(?<![\w:])(?:{heads})(?:::\w+)+", text))
    targets = set()
    for p in paths:
        segments = absolute(p, here, children)
        if segments is None:
            continue
        module = deepest_module(segments)
        target = file_of(module)
        if target is not None and target != path and module:
            targets.add(target)
    return targets


def python_edges(path: Path) -> set[Path]:
    text = path.read_text()
    names = set(re.findall(r"^\s*from\s+(?:\.|tools\.export\.)(\w+)\s+import", text, re.M))
    for group in re.findall(r"^\s*from\s+(?:\.|tools\.export)\s+import\s+\(?([\w,\s]+)\)?", text, re.M):
        names.update(n.strip().split(" as ")[0] for n in group.split(","))
    names.update(re.findall(r"^\s*import\s+tools\.export\.(\w+)", text, re.M))
    return {path.parent / f"{n}.py" for n in names if (path.parent / f"{n}.py").exists()} - {path}


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: Path) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(path: Path) -> int | None:
    top = module_of(path)[:1] or [path.stem]
    for level, names in enumerate(LAYERS):
        if top[0] in names:
            return level
    return None


def main() -> int:
    problems = []
    rust = {p: rust_edges(p) for p in sorted(RUST_ROOT.rglob("*.rs"))}
    python = {p: python_edges(p) for p in sorted(PYTHON_ROOT.glob("*.py"))}
    for path in rust:
        if path.name in ("lib.rs",):
            continue
        if layer_of(path) is None:
            problems.append(f"{path}: top-level module is in no layer of tools/check_imports.py")
    for path, targets in rust.items():
        mine = layer_of(path)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{path} imports {target}: a higher layer (imports point down)")
    for component in cycles(rust) + cycles(python):
        problems.append("import cycle: " + " -> ".join(str(p) for p in component))
    if "--graph" in sys.argv:
        for path, targets in {**rust, **python}.items():
            for target in sorted(targets):
                print(f"{path} -> {target}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} import problem(s)", file=sys.stderr)
        return 1
    print(f"imports: {len(rust)} Rust files and {len(python)} Python modules, no cycle, every import points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
