"""`scripts/teleop_device.py`, the template for users' teleop devices: a mistake in its
arguments ends with a usage message and status 2, never a traceback or a run that sends
datagrams the controller refuses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "teleop_device.py"


def run(*args: str) -> subprocess.CompletedProcess:
    # The discard port: nothing answers, and nothing is sent before the checks.
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--controller", "127.0.0.1:9", "--seconds", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, says",
    [
        # 256 values overflowed the datagram's one-byte count (a struct.error traceback).
        (["--action", ",".join(["0"] * 256)], "--action: 256 values, at most 16"),
        # 17 were sent, and the controller refused every datagram.
        (["--action", ",".join(["0"] * 17)], "--action: 17 values, at most 16"),
        # 0 or less sent no engaged datagram and passed for a wiring check.
        (["--action", "0,0", "--until-observations", "0"], "--until-observations must be 1"),
        (["--action", "0,nan"], "every value must be finite"),
        # Beyond an f32's range: struct.pack raised OverflowError (a traceback, and the
        # loop's release never went out).
        (["--action", "0,1e39"], "every value must be finite (as an f32)"),
    ],
)
def test_a_mistake_is_a_usage_error(args: list[str], says: str) -> None:
    out = run(*args)
    assert out.returncode == 2, out
    assert says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_good_arguments_run() -> None:
    out = run("--action", "0.1,-0.2", "--until-observations", "5")
    assert out.returncode == 0, out
