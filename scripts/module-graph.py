#!/usr/bin/env python3
"""The module import graph of a crate, from its `crate::` paths (test blocks and comments left out): the files
directly in src/, and every import circle (strongly connected component) with its modules.

    scripts/module-graph.py auth-proxy [--max-circle N] [--max-top-files N]

A module is a file's path under src/ without `.rs` (`decide/edits`; `x/mod.rs` is `x`). An import of
`crate::a::b::C` counts as an edge to the longest module prefix that exists (`a/b`, else `a`).
With the limits given, exits 1 when a circle is larger or there are more top-level files (lib.rs
and main.rs not counted), so the structure is checked like the code.
"""
import os
import re
import sys


def modules(src):
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3]
            if rel.endswith("/mod"):
                rel = rel[: -len("/mod")]
            out[rel] = path
    return out


def strip_tests(text):
    # Drop `#[cfg(test)] mod x { ... }` blocks by brace matching.
    out = []
    i = 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth = 1
        j = m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        i = j
    return "".join(out)


def crate_paths(text):
    """Every `crate::a::b` path, and the paths inside `crate::{a, b::c}` groups."""
    found = []
    for m in re.finditer(r"\bcrate::((?:\w+::)*)(\{|\w+)", text):
        prefix = [p for p in m.group(1).split("::") if p]
        if m.group(2) == "{":
            depth, j, start = 1, m.end(), m.end()
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            inner = text[start : j - 1]
            for item in re.split(r",(?![^{]*\})", inner):
                parts = [p for p in re.split(r"::|\{", item.strip()) if re.match(r"^\w+$", p.strip())]
                if parts:
                    found.append(prefix + [p.strip() for p in parts])
        else:
            found.append(prefix + [m.group(2)])
    return found


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        text = strip_tests(open(path, encoding="utf-8").read())
        # Comments (doc links included) name modules without importing them.
        text = re.sub(r"//[^\n]*", "", text)
        for parts in crate_paths(text):
            for n in range(len(parts), 0, -1):
                target = "/".join(parts[:n])
                if target in mods:
                    if target != mod and not mod.startswith(target + "/") and target not in ("lib", "main"):
                        edges[mod].add(target)
                    break
    return mods, edges


def circles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return sorted(out, key=len, reverse=True)


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    crate = args[0]
    max_circle = max_top = None
    if "--max-circle" in args:
        max_circle = int(args[args.index("--max-circle") + 1])
    if "--max-top-files" in args:
        max_top = int(args[args.index("--max-top-files") + 1])
    src = os.path.join(crate, "src")
    mods, edges = graph(src)
    top = sorted(m for m in mods if "/" not in m and m not in ("lib", "main") and os.path.isfile(os.path.join(src, m + ".rs")))
    found = circles(edges)
    print(f"{crate}: {len(mods)} modules, {len(top)} files directly in src/ (besides lib.rs, main.rs)")
    for c in found:
        print(f"  circle of {len(c)}: {', '.join(c)}")
    if not found:
        print("  no import circle")
    failed = False
    if max_circle is not None and found and len(found[0]) > max_circle:
        print(f"error: an import circle of {len(found[0])} modules (at most {max_circle})")
        failed = True
    if max_top is not None and len(top) > max_top:
        print(f"error: {len(top)} files directly in src/ (at most {max_top})")
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
