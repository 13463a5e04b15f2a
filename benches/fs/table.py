#!/usr/bin/env python3
"""Prints the three-way table from fs3way.sh's raw results.

Lines: `WAY ROUND fsops PHASE OPS SECONDS` and `WAY ROUND workload NAME US`.
Loop phases show ops/s (higher is better) and hutch/virtiofsd as a speed-up;
workloads show seconds (lower is better) and hutch/virtiofsd as a time ratio.
A `hutch-b` way (fs3way.sh with HUTCH_B_LEVERS) adds a column comparing it
with `hutch`: the effect of a lever, measured in the same run.

A `guest-tmpfs` way (the same guest on its own tmpfs, no FUSE) is the floor:
what is left of each server's way once the guest's own cost is taken out.
The "above the floor" column compares those remainders (virtiofsd's ÷
hutch's time per op for loops, hutch's ÷ virtiofsd's for workloads); "-"
where virtiofsd's way costs less than 5 % above the floor (nothing to
compare: no requests, or the guest's CPU is all there is).
"""
import statistics
import sys
from collections import defaultdict

WAYS = ["host", "hutch", "virtiofsd", "guest-tmpfs", "native", "hutch-b"]


def above_floor(h, v, f):
    """hutch's cost above the floor `f` over virtiofsd's (times), or None."""
    if None in (h, v, f) or v - f < 0.05 * f or h <= f:
        return None
    return (h - f) / (v - f)


def main(path):
    rate = defaultdict(list)  # (phase, way) -> ops/s
    secs = defaultdict(list)  # (workload, way) -> seconds
    failed = set()
    phases, loads = [], []
    for line in open(path):
        f = line.split()
        if len(f) == 6 and f[2] == "fsops":
            way, phase, ops, s = f[0], f[3], float(f[4]), float(f[5])
            if phase not in phases:
                phases.append(phase)
            rate[(phase, way)].append(ops / s if s > 0 else float("inf"))
        elif len(f) == 5 and f[2] == "workload":
            way, name = f[0], f[3]
            if name not in loads:
                loads.append(name)
            if f[4] == "FAILED":
                failed.add((name, way))
            else:
                secs[(name, way)].append(int(f[4]) / 1e6)
    ways = [w for w in WAYS if any(k[1] == w for k in list(rate) + list(secs))]

    def med(d, k):
        return statistics.median(d[k]) if d.get(k) else None

    def cell(v, fmt):
        return "-" if v is None else fmt.format(v)

    head = " | ".join(ways)
    b = "hutch-b" in ways
    fl = "guest-tmpfs" in ways
    bhead = " | hutch-b ÷ hutch" if b else ""
    fhead = " | above the floor" if fl else ""
    print(f"| loop phase (ops/s; MiB/s for *_mib) | {head} | hutch ÷ virtiofsd{fhead}{bhead} |")
    print("|---" * (len(ways) + 2 + fl + b) + "|")
    for p in phases:
        vals = [med(rate, (p, w)) for w in ways]
        h, v = med(rate, (p, "hutch")), med(rate, (p, "virtiofsd"))
        ratio = cell(h / v if h and v else None, "{:.2f}×")
        if fl:
            f = med(rate, (p, "guest-tmpfs"))
            # Per-op times; the speed-up of what each server's way adds.
            x = above_floor(*(1 / r if r else None for r in (h, v, f)))
            ratio += " | " + cell(1 / x if x else None, "{:.2f}×")
        if b:
            hb = med(rate, (p, "hutch-b"))
            ratio += " | " + cell(hb / h if hb and h else None, "{:.2f}×")
        print(f"| {p} | " + " | ".join(cell(x, "{:,.0f}") for x in vals) + f" | {ratio} |")
    print()
    print(f"| workload (seconds) | {head} | hutch ÷ virtiofsd | hutch ÷ host{fhead}{bhead} |")
    print("|---" * (len(ways) + 3 + fl + b) + "|")
    for n in loads:
        vals = []
        for w in ways:
            if (n, w) in failed:
                vals.append("FAILED")
            else:
                vals.append(cell(med(secs, (n, w)), "{:.2f}"))
        h, v, o = (med(secs, (n, w)) for w in ("hutch", "virtiofsd", "host"))
        r1 = cell(h / v if h and v else None, "{:.2f}×")
        r2 = cell(h / o if h and o else None, "{:.1f}×")
        if fl:
            r2 += " | " + cell(above_floor(h, v, med(secs, (n, "guest-tmpfs"))), "{:.2f}×")
        if b:
            hb = med(secs, (n, "hutch-b"))
            r2 += " | " + cell(hb / h if hb and h else None, "{:.2f}×")
        print(f"| {n} | " + " | ".join(vals) + f" | {r1} | {r2} |")
    rounds = max((len(x) for x in list(rate.values()) + list(secs.values())), default=0)
    print(f"\nmedians of {rounds} round(s); raw lines in {path}")


if __name__ == "__main__":
    main(sys.argv[1])
