#!/usr/bin/env python3
"""Checks that the modules of each crate import one another without a circle.

Every `crate::a::b` and `super::x` path in a crate's source (outside comments and `#[cfg(test)]`
modules) is an arrow from the file that names it to the module file it resolves to. A circle of
arrows (a -> b -> ... -> a) is reported and fails the run; a parent module declaring its children
(`mod x;`) is not an arrow. `--graph` prints every arrow.

    python3 scripts/check_imports.py [--graph] [crates/gru-core crates/gru-weights ...]
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRATES = ["crates/gru-core", "crates/gru-weights", "crates/gru-verify", "crates/gru-cli"]


def modules(src):
    """Module path (tuple) -> file, for every .rs file under src/."""
    out = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            out[tuple(rel)] = os.path.join(dirpath, f)
    return out


def strip(text):
    """The source without comments, string literals and `#[cfg(test)]` modules."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def paths(text):
    """Every path starting at `crate::` or `super::`, with `use` groups expanded."""
    found = []
    for m in re.finditer(r"\b(crate|super)((?:::(?:\w+|\{))+)", text):
        head, rest = m.group(1), m.group(2)
        parts = [p for p in rest.split("::") if p]
        if parts and parts[-1] == "{":
            # A group: its top-level items, each a path of its own.
            depth, j, start, items = 1, m.end(), m.end(), []
            while j < len(text) and depth:
                c = text[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                if (c == "," and depth == 1) or depth == 0:
                    items.append(text[start:j].strip())
                    start = j + 1
                j += 1
            for item in items:
                first = re.split(r"::|\s|\{", item)[0]
                if first and first != "self":
                    found.append((head, parts[:-1] + [first]))
                else:
                    found.append((head, parts[:-1]))
        else:
            found.append((head, parts))
    return found


def resolve(mods, here, head, parts):
    base = [] if head == "crate" else list(here[:-1])
    full = base + parts
    for n in range(len(full), 0, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return None


def check(crate, show):
    src = os.path.join(ROOT, crate, "src")
    mods = modules(src)
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        here = m + ("",) if os.path.basename(f) in ("mod.rs", "lib.rs", "main.rs") else m
        for head, parts in paths(strip(open(f).read())):
            target = resolve(mods, here, head, parts)
            if target is not None and target != m and target != ():
                # A child naming its parent module's items is not a circle through the parent's
                # `mod` declaration; a parent naming its child is an arrow down.
                edges[m].add(target)
    if show:
        for m in sorted(edges):
            print(f"{crate}: {'::'.join(m) or 'lib'} -> "
                  + ", ".join("::".join(t) for t in sorted(edges[m])))
    # Tarjan's strongly connected components.
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in comps:
        print(f"{crate}: import circle among "
              + ", ".join("::".join(c) for c in sorted(comp)))
    n = sum(len(e) for e in edges.values())
    print(f"{crate}: {len(mods)} modules, {n} arrows, {len(comps)} circles")
    return not comps


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show = "--graph" in sys.argv
    ok = all([check(c, show) for c in (args or CRATES)])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
