"""scripts/kernel-stages.py: cutting a kernel log into the agent's stages with its marks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kernel-stages.py"


@pytest.fixture(scope="module")
def ks():
    spec = importlib.util.spec_from_file_location("kernel_stages", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args, check=False):
    """scripts/kernel-stages.py with `args`: its completed process (text output)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], check=check, capture_output=True, text=True
    )


HEADER = '"ID","Kernel Name","Block Size","Metric Name","Metric Unit","Metric Value"\n'


def ncu_csv(kernels, unit="ns", scale=1.0):
    """An ncu CSV as `ncu --csv` writes it: its own messages first, then one row per
    kernel and metric (durations in `unit`, `scale` of a ns each, thousands separated by
    commas), the header repeated once in the middle."""
    lines = ["==PROF== Connected to process 1\n", HEADER]
    for i, (name, ns) in enumerate(kernels):
        value = f"{ns / scale:,}" if scale != 1.0 else f"{ns:,}"
        lines.append(f'"{i}","{name}","(256, 1, 1)","gpu__time_duration.sum","{unit}","{value}"\n')
        lines.append(f'"{i}","{name}","(256, 1, 1)","launch__grid_size","","{i + 1}"\n')
        if i == 2:
            lines.append(HEADER)
    return "".join(lines)


MARK = "cumulative_kernel_c_f32"
# Two steps (warm-up and timed), each: act (2 kernels), critic (1 kernel).
STEPS = [
    (MARK, 1000),
    ("matmul", 5000),
    ("binop", 2000),
    (MARK, 1000),
    ("reduce", 3000),
] * 2


def test_ncu_stages_take_the_timed_step_and_its_durations(ks, tmp_path):
    csv_path, marks = tmp_path / "ncu.csv", tmp_path / "marks.txt"
    # The timed step's matmul takes longer than the warm-up's: only it may be counted.
    kernels = STEPS[:5] + [(MARK, 1000), ("matmul", 1_234_000)] + STEPS[7:]
    csv_path.write_text(ncu_csv(kernels))
    marks.write_text("act\ncritic\nact\ncritic\n")
    stages = ks.stages_of(ks.ncu_launches(csv_path), ["act", "critic"] * 2)
    assert list(stages) == ["act", "critic"]
    times, act = stages["act"]
    assert times == 1
    assert [(k.name, k.ns) for k in act] == [("matmul", 1_234_000.0), ("binop", 2000.0)]
    assert act[0].shape == "grid=7"
    assert [(k.name, k.ns) for k in stages["critic"][1]] == [("reduce", 3000.0)]


def test_ncu_report_prints_the_stage_times(tmp_path):
    csv_path, marks = tmp_path / "ncu.csv", tmp_path / "marks.txt"
    csv_path.write_text(ncu_csv(STEPS))
    marks.write_text("act\ncritic\nact\ncritic\n")
    out = run_script("--ncu", csv_path, marks, check=True).stdout
    assert "3 kernels without the markers, 0.01 ms on the GPU" in out
    act = next(line for line in out.splitlines() if line.strip().startswith("act"))
    # 7 µs of 10: 70%.
    assert act.split()[1:6] == ["1", "2", "2", "0.01", "70.0%"]


def test_marks_and_markers_must_agree(tmp_path):
    csv_path, marks = tmp_path / "ncu.csv", tmp_path / "marks.txt"
    csv_path.write_text(ncu_csv(STEPS))
    marks.write_text("act\ncritic\nact\n")
    run = run_script("--ncu", csv_path, marks)
    assert run.returncode != 0
    assert "4 marker kernels but 3 marks" in run.stderr


def test_cubecl_log_is_counted_by_name(ks, tmp_path):
    log = tmp_path / "profile.log"
    rows = []
    for name in ["CumulativeKernel", "Matmul", "CumulativeKernel", "KernelBinop"] * 2:
        rows.append(f"| 1.5µs | {name} | TensorArgs |\n")
    # cubecl's summary table (no duration in the first column) is not a launch.
    rows.append("| Kernel | Runtime | Count |\n")
    log.write_text("".join(rows))
    stages = ks.stages_of(ks.cubecl_launches(log), ["act", "critic", "act", "critic"])
    assert [(s, t, [k.name for k in ks_]) for s, (t, ks_) in stages.items()] == [
        ("act", 1, ["Matmul"]),
        ("critic", 1, ["KernelBinop"]),
    ]
    assert all(k.ns is None for _, ks_ in stages.values() for k in ks_)


def test_a_file_that_is_not_an_ncu_csv_is_named(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("==PROF== nothing profiled\n")
    run = run_script("--ncu", path, path)
    assert run.returncode != 0
    assert "is not an ncu CSV" in run.stderr


def test_durations_in_other_units_are_read_as_ns(ks, tmp_path):
    csv_path = tmp_path / "ncu.csv"
    csv_path.write_text(ncu_csv(STEPS, unit="usecond", scale=1e3))
    stages = ks.stages_of(ks.ncu_launches(csv_path), ["act", "critic"] * 2)
    assert [k.ns for k in stages["act"][1]] == [5000.0, 2000.0]


def test_an_unknown_time_unit_is_refused(tmp_path):
    csv_path = tmp_path / "ncu.csv"
    csv_path.write_text(ncu_csv(STEPS, unit="cycle"))
    run = run_script("--ncu", csv_path, csv_path)
    assert run.returncode != 0
    assert "unknown time unit 'cycle'" in run.stderr


def test_cubecl_log_report_counts_launches(tmp_path):
    log, marks = tmp_path / "profile.log", tmp_path / "marks.txt"
    rows = []
    for name, op in [("CumulativeKernel", ""), ("KernelBinop", "MulOp"), ("KernelBinop", "MulOp"),
                     ("CumulativeKernel", "")] * 2:
        rows.append(f"| 2.0µs | {name} | {op or 'TensorArgs'} |\n")
    log.write_text("".join(rows))
    # The timed step's second stage launches nothing.
    marks.write_text("act\ncritic\nact\ncritic\n")
    out = run_script(log, marks, check=True).stdout
    assert "(2 kernels without the markers):" in out
    act = next(line for line in out.splitlines() if line.strip().startswith("act"))
    assert act.split()[1:4] == ["1", "2", "2"]
    assert "2 KernelBinop:MulOp" in act

