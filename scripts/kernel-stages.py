#!/usr/bin/env python3
"""Kernels per stage of one EXPO environment step (issue 14), from a kernel log of a
`trainer bench --warmup 1 --steps 1` run with EXPO_KERNEL_MARKS=MARKS set (see
`KernelMarks` in trainer/src/agent.rs): each stage boundary launched one marker kernel (a
cumulative sum) and wrote its stage's name to MARKS, in order. Counts the last half of the
marks (the timed step). Build without fusion: one kernel per operation.

The log is either
- cubecl's profiling log (CUBECL_DEBUG_OPTION=profile, `scripts/kernel-count`): launches
  only, their names; or
- Nsight Compute's CSV (`ncu --csv --metrics gpu__time_duration.sum,...`,
  `scripts/gpu-profile`): each kernel's duration on the GPU too, so the stages and the
  kernels that take the time are listed with it.

Usage: scripts/kernel-stages.py LOG MARKS
       scripts/kernel-stages.py --ncu CSV MARKS
"""
import collections
import csv
import re
import sys

# The marker kernel's name in cubecl's profiling log and in ncu's (the generated kernel).
MARKERS = ("CumulativeKernel", "cumulative_kernel")
DURATION = "gpu__time_duration.sum"
# ncu's time units (with --print-units base, as scripts/gpu-profile asks: "ns"), in ns.
TIME_UNITS = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6,
              "s": 1e9, "second": 1e9}
NEEDED = ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")


class Launch:
    """One kernel launch: its name, and with ncu its duration (ns) and launch shape."""

    def __init__(self, name, ns=None, shape=""):
        self.name, self.ns, self.shape = name, ns, shape

    def is_marker(self):
        return self.name.startswith(MARKERS)


def cubecl_launches(log):
    """Launches of cubecl's profiling log: `Name` or `Name:Op` (e.g. `KernelBinop:MulOp`)."""
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
        yield Launch(name)


def ncu_launches(path):
    """Launches of an ncu CSV (one row per kernel and metric; ncu's own messages, which
    do not start with a quote, are skipped), in the order ncu profiled them."""
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = csv.reader(line for line in f if line.startswith('"'))
        head = next(rows, None)
        if head is None or any(h not in head for h in NEEDED):
            sys.exit(f"kernel-stages: {path} is not an ncu CSV (no header row with {', '.join(NEEDED)})")
        col = {h: i for i, h in enumerate(head)}
        kernels = collections.OrderedDict()
        for row in rows:
            if row == head:
                continue  # a repeated header
            k = kernels.setdefault(row[col["ID"]], {"name": row[col["Kernel Name"]]})
            value = row[col["Metric Value"]].replace(",", "")
            if row[col["Metric Name"]] == DURATION:
                unit = row[col["Metric Unit"]]
                if unit not in TIME_UNITS:
                    sys.exit(f"kernel-stages: {path}: unknown time unit '{unit}' of {DURATION}")
                value = float(value) * TIME_UNITS[unit]
            k[row[col["Metric Name"]]] = value
    for k in kernels.values():
        if DURATION not in k:
            sys.exit(f"kernel-stages: {path} has no {DURATION} for {k['name']}")
        shape = " ".join(
            f"{label}={k[m]}"
            for label, m in (("grid", "launch__grid_size"), ("block", "launch__block_size"))
            if m in k
        )
        yield Launch(k["name"], float(k[DURATION]), shape)


def stages_of(launches, names):
    """The launches of the last half of the marks, by stage: {stage: [times, [Launch]]}."""
    segments, current = [], None
    for k in launches:
        if k.is_marker():
            current = []
            segments.append(current)
        elif current is not None:
            current.append(k)
    if len(segments) != len(names):
        sys.exit(f"kernel-stages: {len(segments)} marker kernels but {len(names)} marks")
    stages = collections.OrderedDict()
    half = len(names) // 2
    for name, kernels in zip(names[half:], segments[half:]):
        s = stages.setdefault(name, [0, []])
        s[0] += 1
        s[1].extend(kernels)
    return stages


def report(stages):
    every = [k for _, ks in stages.values() for k in ks]
    timed = bool(every) and all(k.ns is not None for k in every)
    total_ms = sum(k.ns for k in every) / 1e6 if timed else None
    print(f"per stage of one environment step ({len(every)} kernels without the markers", end="")
    print(f", {total_ms:.2f} ms on the GPU one after another):" if timed else "):")
    print(f"  {'stage':15s} {'times':>5s} {'kernels':>7s} {'each':>6s}", end="")
    print(f" {'ms':>8s} {'share':>6s}  most time" if timed else "  most launched")
    for name, (times, kernels) in stages.items():
        n = len(kernels)
        if timed:
            by = collections.Counter()
            for k in kernels:
                by[k.name] += k.ns
            ms = sum(by.values()) / 1e6
            top = ", ".join(f"{k} {t / 1e6:.2f} ms" for k, t in by.most_common(3))
            print(f"  {name:15s} {times:5d} {n:7d} {n / times:6.0f} {ms:8.2f} {ms / total_ms:6.1%}  {top}")
        else:
            top = ", ".join(f"{v} {k}" for k, v in collections.Counter(k.name for k in kernels).most_common(4))
            print(f"  {name:15s} {times:5d} {n:7d} {n / times:6.0f}  {top}")
    if not timed:
        return
    print("\nby stage and kernel launch shape (the 25 that take the most time):")
    print(f"  {'stage':15s} {'count':>6s} {'ms':>7s} {'µs each':>8s}  kernel")
    groups = collections.defaultdict(lambda: [0, 0.0])
    for name, (_, kernels) in stages.items():
        for k in kernels:
            g = groups[(name, f"{k.name} {k.shape}".strip())]
            g[0] += 1
            g[1] += k.ns
    for (stage, kernel), (c, ns) in sorted(groups.items(), key=lambda g: -g[1][1])[:25]:
        print(f"  {stage:15s} {c:6d} {ns / 1e6:7.2f} {ns / 1e3 / c:8.1f}  {kernel}")
    durations = sorted(k.ns / 1e3 for k in every)
    print("\nkernels by duration:")
    for lo, hi in [(0, 3), (3, 10), (10, 30), (30, 100), (100, float("inf"))]:
        d = [x for x in durations if lo <= x < hi]
        print(f"  [{lo}, {hi}) µs: {len(d):5d} kernels, {sum(d) / 1e3:7.2f} ms")


def main(argv):
    if len(argv) == 3 and argv[0] == "--ncu":
        launches, marks = ncu_launches(argv[1]), argv[2]
    elif len(argv) == 2:
        launches, marks = cubecl_launches(argv[0]), argv[1]
    else:
        sys.exit(__doc__)
    names = [line.strip() for line in open(marks, encoding="utf-8") if line.strip()]
    report(stages_of(launches, names))


if __name__ == "__main__":
    main(sys.argv[1:])
