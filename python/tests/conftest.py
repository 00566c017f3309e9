"""Shared helpers: the task list and the Rust reference trajectories."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import expo_sim

REPO = Path(__file__).resolve().parents[2]
TASKS = ["arm-reach", "push", "maze"]


@pytest.fixture(params=TASKS)
def task(request) -> str:
    return request.param


def f32(bits) -> np.ndarray:
    """Floats written by `write_trajectory` as IEEE-754 bit patterns."""
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


@functools.lru_cache(maxsize=None)
def rust_episodes(task: str, seed: int, episodes: int, policy: str) -> list[dict]:
    """Episodes written by the Rust example `sim/examples/write_trajectory.rs` (built and
    run with cargo from the repository root), with floats decoded exactly."""
    cmd = ["cargo", "run", "--locked", "--release", "--quiet", "-p", "sim", "--example",
           "write_trajectory", "--", task, str(seed), str(episodes), policy]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        # cargo's own message, not only its exit status.
        raise RuntimeError(
            f"{' '.join(cmd)} failed with status {proc.returncode}:\n{proc.stderr}")
    out = proc.stdout
    data = json.loads(out)
    assert data["task"] == task
    return [
        {
            "seed": ep["seed"],
            "first_obs": f32(ep["first_obs"]),
            "actions": f32(ep["actions"]),
            "obs": f32(ep["obs"]),
            "rewards": f32(ep["rewards"]),
            "terminated": np.array(ep["terminated"]),
            "truncated": np.array(ep["truncated"]),
            "success": np.array(ep["success"]),
        }
        for ep in data["episodes"]
    ]


def find_episode(task: str, ending: str) -> tuple[int, dict]:
    """A demonstrator episode of `task` that ends `terminated` or `truncated`."""
    for seed in range(200):
        ep = expo_sim.record_episode(task, seed)
        if ep[ending][-1]:
            return seed, ep
    raise AssertionError(f"no {ending} {task} episode in 200 seeds")
