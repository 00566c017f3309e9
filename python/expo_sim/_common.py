"""Argument checks and spaces shared by the environment classes."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from gymnasium import spaces

from expo_sim import _core

SEED_LIMIT = 2**64


def check_seed(seed: Any, *, allow_none: bool = True, name: str = "seed") -> int | None:
    """Returns ``seed`` as an int in ``[0, 2**64)`` (or None where allowed), else raises
    naming it as ``name`` (``seed[3]`` for one environment's of a list)."""
    if seed is None and allow_none:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}")
    return int(seed)


def entropy_seed() -> int:
    """A fresh seed-stream start from OS entropy (for environments never seeded)."""
    return secrets.randbits(64)


def as_float32(values: Any, name: str) -> np.ndarray:
    """``values`` as a float32 array; refuses non-floating dtypes (ints, bools, objects).

    The shape and finiteness are checked by the Rust side, which names the expected shape.
    The array handed on is native-endian and aligned: a view at an odd byte offset (from
    ``np.frombuffer``, say) is copied, as the Rust side may only read aligned floats.
    """
    array = np.asarray(values)
    if array.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a floating-point array (float32, or float64 converted), "
            f"got dtype {array.dtype}"
        )
    # A float64 beyond float32's range becomes inf here, which the Rust side refuses
    # with a ValueError naming it; NumPy's overflow warning would come first (and be an
    # error under `-W error`).
    with np.errstate(over="ignore"):
        return np.require(array, dtype=np.float32, requirements=["ALIGNED"])


def task_spaces(task: str) -> tuple[dict, spaces.Box, spaces.Box]:
    """The task spec (raises ValueError listing the valid ids) and its single-env spaces."""
    spec = _core.task_spec(task)
    observation_space = spaces.Box(spec["obs_low"], spec["obs_high"], dtype=np.float32)
    action_space = spaces.Box(
        -1.0, 1.0, shape=(len(spec["action_names"]),), dtype=np.float32
    )
    return spec, observation_space, action_space


def check_render_mode(render_mode: str | None) -> None:
    if render_mode is not None:
        raise ValueError(
            f"expo_sim environments have no render modes (render_mode must be None, got "
            f"{render_mode!r}); use state() for the scene geometry"
        )
