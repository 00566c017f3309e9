#!/usr/bin/env python3
"""Kernels per stage of one EXPO environment step (issue 14), from cubecl's profiling log
of a `trainer bench` run with EXPO_KERNEL_MARKS=MARKS set (see `KernelMarks` in
trainer/src/agent.rs): each stage boundary launched one marker kernel (a cumulative sum)
and wrote its stage's name to MARKS, in order. Counts the last half of the marks (the
timed step of a 1 warm-up + 1 step bench). Build without fusion: one kernel per operation.

Usage: scripts/kernel-stages.py LOG MARKS
"""
import collections
import re
import sys

MARKER = "CumulativeKernel"


def launches(log):
    """Kernel names in launch order: `Name` or `Name:Op` (e.g. `KernelBinop:MulOp`)."""
    for line in open(log, encoding="utf-8", errors="replace"):
        if not line.startswith("| "):
            continue
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        # Launch rows start with a duration; the summary table at the end does not.
        if len(cols) < 3 or not re.fullmatch(r"[0-9.]+(ns|µs|ms|s)", cols[0]):
            continue
        name = cols[1]
        if cols[2] not in ("WgpuRuntime", "TensorArgs", ""):
            name += ":" + cols[2]
        yield name


def main(log, marks):
    names = [line.strip() for line in open(marks, encoding="utf-8")]
    segments, current = [], None
    for k in launches(log):
        if k.startswith(MARKER):
            current = []
            segments.append(current)
        elif current is not None:
            current.append(k)
    if len(segments) != len(names):
        sys.exit(f"kernel-stages: {len(segments)} marker kernels but {len(names)} marks")
    stages = collections.OrderedDict()
    half = len(names) // 2
    for name, kernels in zip(names[half:], segments[half:]):
        s = stages.setdefault(name, [0, collections.Counter()])
        s[0] += 1
        s[1].update(kernels)
    total = sum(sum(c.values()) for _, c in stages.values())
    print(f"per stage of one environment step ({total} kernels without the markers):")
    print(f"  {'stage':15s} {'times':>5s} {'kernels':>7s} {'each':>6s}  most launched")
    for name, (times, kinds) in stages.items():
        n = sum(kinds.values())
        top = ", ".join(f"{v} {k}" for k, v in kinds.most_common(4))
        print(f"  {name:15s} {times:5d} {n:7d} {n / times:6.0f}  {top}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
