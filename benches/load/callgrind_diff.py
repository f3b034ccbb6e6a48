#!/usr/bin/env python3
"""Where one transaction's instructions go: two callgrind dumps' self costs, differenced.

    benches/load/callgrind_diff.py N_DUMP TWO_N_DUMP TRANSACTIONS [--by function|file|crate] [--top K]

The counting mode (`cargo bench --bench load -- count`) keeps its dumps in
target/bench-callgrind/: <proxy>.callgrind.1 is the N run, .2 the 2N run. Their difference,
divided by the N x clients transactions the 2N run had in excess, is what one transaction
costs. Self costs are read from the dump itself, attributed to the source file the
instructions came from (after inlining, which LTO does a lot of, a function's self cost
holds its inlined callees'; the file does not lie). Call lines, which carry inclusive
costs, are skipped.
"""
import argparse
import collections
import re

NAMED = re.compile(r"^(fl|fi|fe|fn|cfl|cfi|cfn|ob|cob)=\((\d+)\)(?: (.*))?$")


def self_costs(path, by):
    """Self cost (first event, Ir) per function, file or crate."""
    names = {}
    current = {"fl": None, "fi": None, "fn": None}
    skip_next_cost = False
    out = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = NAMED.match(line)
            if m:
                kind, ident, name = m.groups()
                key = ("file" if kind in ("fl", "fi", "fe", "cfl", "cfi") else kind, ident)
                if name is not None:
                    names[key] = name
                value = names.get(key)
                if kind == "fl":
                    current["fl"], current["fi"] = value, None
                elif kind in ("fi", "fe"):
                    current["fi"] = value
                elif kind == "fn":
                    current["fn"], current["fi"] = value, None
                continue
            if line.startswith("calls="):
                skip_next_cost = True
                continue
            if not line or not (line[0].isdigit() or line[0] in "+-*"):
                continue
            if skip_next_cost:
                skip_next_cost = False
                continue
            parts = line.split()
            if len(parts) < 2:
                continue
            cost = int(parts[1])
            file = current["fi"] or current["fl"] or "?"
            if by == "function":
                out[f"{file}:{current['fn']}"] += cost
            elif by == "file":
                out[file] += cost
            else:
                out[crate(file)] += cost
    return out


def crate(path):
    """The crate (or C library) a source file belongs to."""
    if "/aws-lc" in path:
        return "aws-lc (AES-GCM, its C/asm)"
    m = re.search(r"/registry/src/[^/]+/([A-Za-z0-9_-]+?)-\d+\.\d+", path)
    if m:
        return m.group(1)
    if path.startswith("/rustc/"):
        return "Rust std/core/alloc"
    if "/src/" in path and path.startswith("/"):
        return "pgwarden"
    return "libc, kernel entry and others"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n_dump")
    p.add_argument("two_n_dump")
    p.add_argument("transactions", type=float, help="N x clients")
    p.add_argument("--by", choices=["function", "file", "crate"], default="crate")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    one, two = self_costs(a.n_dump, a.by), self_costs(a.two_n_dump, a.by)
    diff = {k: (two[k] - one[k]) / a.transactions for k in set(one) | set(two)}
    total = sum(diff.values())
    for name, per in sorted(diff.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{per:10.0f}  {100 * per / total:5.1f} %  {name[:150]}")
    print(f"{total:10.0f}  total")


if __name__ == "__main__":
    main()
