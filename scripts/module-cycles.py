#!/usr/bin/env python3
"""Which top-level modules of host/src import each other in a circle.

Reads `crate::<module>` references (outside `#[cfg(test)]` parts) between the
top-level modules of the lodge-host crate, and prints each strongly connected
component of more than one module: a set of modules each of which reaches every
other through imports. With no argument it reads this checkout.

    python3 scripts/module-cycles.py [REPO]
"""

import collections
import os
import re
import sys


def modules(src):
    found = collections.defaultdict(list)
    for folder, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            top = os.path.relpath(path, src)[:-3].split(os.sep)[0]
            if top not in ("lib", "main"):
                found[top].append(path)
    return found


def imports(found):
    edges = collections.defaultdict(set)
    for module, paths in found.items():
        for path in paths:
            text = open(path, encoding="utf-8").read()
            test = text.find("#[cfg(test)]")
            if test >= 0:
                text = text[:test]
            for target in re.findall(r"crate::([a-z_]+)", text):
                if target != module and target in found:
                    edges[module].add(target)
    return edges


def cycles(nodes, edges):
    """Tarjan's strongly connected components."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    found = modules(os.path.join(repo, "host", "src"))
    edges = imports(found)
    print(f"{len(found)} modules, {sum(len(e) for e in edges.values())} import edges")
    circles = cycles(found, edges)
    if not circles:
        print("no cycles")
    for component in circles:
        print(f"cycle of {len(component)}: {' '.join(component)}")


if __name__ == "__main__":
    main()
