"""One simulated environment as a ``gymnasium.Env``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from expo_sim import _core
from expo_sim._common import (
    as_float32,
    check_render_mode,
    check_seed,
    entropy_seed,
    task_spaces,
)


class SimEnv(gym.Env[np.ndarray, np.ndarray]):
    """A simulated task (``arm-reach``, ``push`` or ``maze``) with the Gymnasium API.

    Args:
        task: the task id.
        reward: ``"sparse"`` (1 on success, else 0) or ``"dense"`` (adds minus a scaled
            distance to the goal).
        gravity: ``arm-reach`` only (refused for the other tasks): the arm moves in a
            vertical plane under gravity.
        render_mode: must be None; :meth:`state` gives the scene geometry instead.

    ``step`` returns ``info["success"]``; ``reset`` returns ``info["seed"]``, the
    simulator seed of the episode as a ``numpy.uint64`` (see the package docs for the
    seeding rules). The episode is truncated by the simulator at
    the task's horizon (:attr:`horizon` steps).
    """

    def __init__(
        self,
        task: str = "arm-reach",
        reward: str = "sparse",
        gravity: bool = False,
        render_mode: str | None = None,
    ) -> None:
        check_render_mode(render_mode)
        spec, self.observation_space, self.action_space = task_spaces(task)
        self._core = _core.Env(task, reward, gravity, seed_stream=entropy_seed())
        self.task = task
        self.horizon: int = spec["horizon"]
        self.render_mode = None
        self.metadata = {"render_modes": [], "render_fps": spec["control_hz"]}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        seed = check_seed(seed)
        if options:
            raise ValueError(f"SimEnv.reset takes no options, got {sorted(options)}")
        super().reset(seed=seed)
        obs, used = self._core.reset(seed)
        # A NumPy scalar: Gymnasium's vector envs batch info ints into int64, too small.
        return obs, {"seed": np.uint64(used)}

    def step(
        self, action: Any
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, success = self._core.step(
            as_float32(action, "action")
        )
        return obs, reward, terminated, truncated, {"success": success}

    def state(self) -> dict[str, Any]:
        """The current state for plotting: ``task``, ``t`` (steps in this episode),
        ``obs`` and ``shapes``, a list of dicts in metres such as
        ``{"kind": "robot", "type": "circle", "x": .., "y": .., "r": ..}`` (``type``
        is ``circle``, ``segment`` with ``x0 y0 x1 y1 width`` or ``rect`` with the
        corners ``x0 y0 x1 y1``; ``kind`` is ``robot``, ``object``, ``goal``,
        ``obstacle`` or ``wall``)."""
        return self._core.state()

    def render(self) -> None:
        """No render modes: returns None. Use :meth:`state` to plot."""
        return None
