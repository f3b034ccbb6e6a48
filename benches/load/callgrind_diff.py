#!/usr/bin/env python3
"""Where one transaction's instructions go: the per-function difference of two callgrind dumps.

    benches/load/callgrind_diff.py N_DUMP TWO_N_DUMP TRANSACTIONS [--inclusive] [--top K]

The counting mode (`cargo bench --bench load -- count`) keeps its dumps in
target/bench-callgrind/: <proxy>.callgrind.1 is the N run, .2 the 2N run. Their difference,
divided by the N x clients transactions the 2N run had in excess, is what one transaction
costs, by function (self cost; --inclusive for callees too). Needs callgrind_annotate.
"""
import argparse
import collections
import re
import subprocess


def costs(dump, inclusive):
    args = ["callgrind_annotate", "--threshold=100", "--auto=no"]
    if inclusive:
        args.append("--inclusive=yes")
    out = subprocess.run(args + [dump], capture_output=True, text=True, check=True).stdout
    by_function = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if m:
            name = re.sub(r" \[[^\]]*\]$", "", m.group(2))
            name = re.sub(r"^/root/.cargo/registry/src/[^/]+/", "", name)
            by_function[name] += int(m.group(1).replace(",", ""))
    return by_function


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n_dump")
    p.add_argument("two_n_dump")
    p.add_argument("transactions", type=float, help="N x clients")
    p.add_argument("--inclusive", action="store_true")
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    one, two = costs(a.n_dump, a.inclusive), costs(a.two_n_dump, a.inclusive)
    diff = {k: (two[k] - one[k]) / a.transactions for k in set(one) | set(two)}
    for name, per in sorted(diff.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{per:10.0f}  {name[:160]}")


if __name__ == "__main__":
    main()
