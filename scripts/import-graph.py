#!/usr/bin/env python3
"""Import graph of the files of src/: which file's code names which other file's module,
through `use crate::...` / `use super::...` / `use self::...` trees and inline `crate::`
(or `$crate::`) paths. Prints the cycles between files (strongly connected components of
more than one file) and exits 1 if there are any; `--edges` also prints every edge. It
also exits 1 when it has nothing to check: no .rs file under src/, or no import edge at all
(a moved src/ or a parser that stopped matching must not pass as "no cycles").

Then the layering: every file belongs to one group of the table LAYERS, and a file may
import only files of its own group or of a group of a lower rank (two groups of the same
rank, the two backends, may not import each other). An edge against the table is printed
and fails the check, as a cycle does, and so does a file of more than MAX_LINES lines.

`mod x;` declarations are ownership, not use, and are not edges. A path resolves to the
longest prefix of it that is a module file (src/a/b.rs or src/a/b/mod.rs); inline `mod x {`
blocks belong to their file. src/cuda_off.rs (the `cuda` module when that feature is off)
is its own node; paths through `crate::cuda` resolve to src/cuda/.
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 600

# (group, rank, files): the layers of src/, lowest first. A file matches the first group
# whose pattern list holds its path relative to src/ (a trailing "/" is a folder).
LAYERS = [
    ("host", 0, ["host/"]),  # instruction sets and conversions: imports nothing
    ("spec", 1, ["philox.rs", "mask.rs", "element.rs", "error.rs", "plan.rs", "alloc.rs",
                 "generator.rs", "tracker.rs", "backend.rs", "shard.rs"]),  # the spec's arithmetic and the leaf types
    ("cpu", 2, ["cpu/"]),  # the backends: leaf types only, never each other
    ("cuda", 2, ["cuda/", "cuda_off.rs"]),
    ("storage", 3, ["device.rs", "tensor.rs"]),  # where a tensor lives: over the backends
    ("functional", 4, ["functional/"]),  # validation and dispatch
    ("layers", 5, ["layers/"]),  # what users hold
    ("candle", 6, ["candle/"]),  # the candle adapter
    ("root", 7, ["lib.rs"]),
]


def layer_of(path):
    rel = path.relative_to(SRC).as_posix()
    for name, rank, patterns in LAYERS:
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in patterns):
            return name, rank
    return None


def module_of(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts == ["lib"]:
        return ("crate",)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return ("crate", *parts)


def strip(text):
    """Drops comments, string and char literals (so braces inside them do not count)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\])'", "' '", text)
    # Visibility (`pub(in crate::x)`) names a module without using it.
    text = re.sub(r"pub\(in\s+[\w:]+\)", "pub", text)
    return text


def use_paths(tree):
    """Expands a use tree (`a::{b, c::{d, e}}`) into its paths."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        parts.append(cur)
        for p in filter(None, parts):
            if "{" in p:
                head, rest = p.split("{", 1)
                walk(prefix + [x for x in head.split("::") if x], rest[:-1])
            else:
                out.append(prefix + [x for x in p.split("::") if x])

    walk([], tree)
    return out


def main():
    files = sorted(SRC.rglob("*.rs"))
    if not files:
        print(f"import-graph: FAIL: no .rs files under {SRC} (nothing to check)", file=sys.stderr)
        return 1
    modules = {}
    for f in files:
        if f.name == "cuda_off.rs":
            modules[("crate", "cuda_off")] = f
        else:
            modules[module_of(f)] = f
    edges = {f: set() for f in files}
    for f in files:
        base = ("crate", "cuda_off") if f.name == "cuda_off.rs" else module_of(f)
        text = strip(f.read_text())
        # Inline `mod name {` blocks: the module a `use` sits in.
        stack, depth = [], 0
        tokens = re.finditer(r"\bmod\s+(\w+)\s*\{|\{|\}|\buse\s+([^;]+);|\$?crate(?:::\w+)+", text)
        pending_mod = None
        for m in tokens:
            tok = m.group(0)
            if m.group(1):
                depth += 1
                stack.append((m.group(1), depth))
                continue
            if tok == "{":
                depth += 1
                continue
            if tok == "}":
                if stack and stack[-1][1] == depth:
                    stack.pop()
                depth -= 1
                continue
            here = list(base) + [name for name, _ in stack]
            if m.group(2):
                paths = use_paths(m.group(2))
            else:
                paths = [tok.lstrip("$").split("::")]
            for p in paths:
                if not p:
                    continue
                if p[0] == "crate":
                    absolute = p
                elif p[0] in ("super", "self"):
                    cur = list(here)
                    rest = list(p)
                    while rest and rest[0] in ("super", "self"):
                        if rest.pop(0) == "super":
                            cur = cur[:-1]
                    absolute = cur + rest
                elif tuple(here + [p[0]]) in modules:
                    absolute = here + list(p)  # a child module, named relatively
                else:
                    continue  # an external crate or a name in scope
                for k in range(len(absolute), 0, -1):
                    target = modules.get(tuple(absolute[:k]))
                    if target is not None:
                        if target != f:
                            edges[f].add(target)
                        break
    if "--edges" in sys.argv:
        for f in files:
            for t in sorted(edges[f]):
                print(f"{f.relative_to(SRC.parent)} -> {t.relative_to(SRC.parent)}")
    # Tarjan's strongly connected components.
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in files:
        if v not in index:
            visit(v)
    cycles = [c for c in sccs if len(c) > 1]
    n_edges = sum(len(e) for e in edges.values())
    # The layer table: a file in no group, or an edge to a group not below its own.
    against = []
    for f in files:
        lf = layer_of(f)
        if lf is None:
            against.append(f"{f.relative_to(SRC.parent)} is in no group of LAYERS")
            continue
        for t in sorted(edges[f]):
            lt = layer_of(t)
            if lt is not None and lt[0] != lf[0] and lt[1] >= lf[1]:
                against.append(f"{f.relative_to(SRC.parent)} ({lf[0]}) -> "
                               f"{t.relative_to(SRC.parent)} ({lt[0]})")
    print(f"{len(files)} files, {n_edges} import edges, {len(cycles)} cycle(s), "
          f"{len(against)} against the layer table")
    for c in cycles:
        print("cycle: " + ", ".join(sorted(str(x.relative_to(SRC.parent)) for x in c)))
    for a in against:
        print("against the layers: " + a)
    # Files stay small enough to read whole (issue 21): at most MAX_LINES lines each.
    long = [(f, n) for f in files
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    for f, n in long:
        print(f"too long: {f.relative_to(SRC.parent)} has {n} lines (at most {MAX_LINES})")
    if n_edges == 0:
        # The crate's files do use each other; none found means the parser found nothing.
        print(f"import-graph: FAIL: no import edges among {len(files)} files (nothing checked)",
              file=sys.stderr)
        return 1
    return 1 if cycles or against or long else 0


if __name__ == "__main__":
    sys.exit(main())
