#!/usr/bin/env python3
"""Cuts `strace -f -ttt` traces of two servers into the load generator's
phases and prints syscalls per op for each (benches/fssyscalls.sh).

Usage: syscalls.py PHASES HUTCH_TRACE VIRTIOFSD_TRACE
PHASES has `SERVER\tOP\tSTART_NS\tEND_NS\tCOUNT` lines (hutch-bench-fsload
--phase-log). A trace line is `PID SECONDS.MICROS name(...`; resumed halves
of interrupted calls are not counted again."""
import collections
import re
import sys

LINE = re.compile(r"^\d+\s+(\d+\.\d+)\s+([a-z_0-9]+)\(")


def calls(path):
    """(seconds, syscall) of each call started in the trace."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                out.append((float(m.group(1)), m.group(2)))
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    phases = collections.OrderedDict()
    with open(sys.argv[1]) as f:
        for line in f:
            server, op, start, end, count = line.rstrip("\n").split("\t")
            phases[(server, op)] = (int(start) / 1e9, int(end) / 1e9, int(count))
    traces = {"hutch": calls(sys.argv[2]), "virtiofsd": calls(sys.argv[3])}
    ops = list(dict.fromkeys(op for _, op in phases))
    print("| op | hutch syscalls/op | virtiofsd syscalls/op | hutch's commonest (per op) | virtiofsd's commonest (per op) |")
    print("|---|---|---|---|---|")
    for op in ops:
        cells, common = [], []
        for server in ("hutch", "virtiofsd"):
            if (server, op) not in phases:
                cells.append("-")
                common.append("-")
                continue
            start, end, count = phases[(server, op)]
            names = collections.Counter(n for t, n in traces[server] if start <= t <= end)
            n = max(count, 1)
            cells.append(f"{sum(names.values()) / n:.1f}")
            common.append(", ".join(f"{k} {v / n:.1f}" for k, v in names.most_common(4)))
        print(f"| {op} | {cells[0]} | {cells[1]} | {common[0]} | {common[1]} |")


if __name__ == "__main__":
    main()
