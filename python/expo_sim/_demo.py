"""The tasks' scripted demonstrators and whole recorded episodes."""

from __future__ import annotations

from typing import Any

import numpy as np

from expo_sim import _core
from expo_sim._common import as_float32, check_seed


class Demonstrator:
    """A task's scripted (imperfect, multimodal) demonstrator.

    ``reset(seed)`` takes the episode's seed, the one the environment was reset with,
    and draws the demonstrator's own choices from it exactly as :func:`record_episode`
    does::

        env = expo_sim.SimEnv("push")
        demo = expo_sim.Demonstrator("push")
        obs, info = env.reset(seed=7)
        demo.reset(info["seed"])
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(demo.act(obs))
            done = terminated or truncated

    replays ``record_episode("push", 7)`` exactly.
    """

    def __init__(self, task: str) -> None:
        self._core = _core.Demonstrator(task)
        self.task = task

    def reset(self, seed: int) -> None:
        """Starts an episode whose environment was reset with ``seed``."""
        self._core.reset(check_seed(seed, allow_none=False))

    def act(self, obs: Any) -> np.ndarray:
        """The action (float32, in ``[-1, 1]``) for observation ``obs``.

        Call it once per environment step: each call advances the demonstrator's own
        state (its noise stream and scripted distractions), so an extra call (to preview
        or log an action) changes every later action and breaks the replay of
        :func:`record_episode`.
        """
        return self._core.act(as_float32(obs, "obs"))


def record_episode(
    task: str, seed: int, reward: str = "sparse", gravity: bool = False
) -> dict[str, np.ndarray]:
    """One demonstrator episode from ``seed``, run entirely in Rust (``sim::record_episode``).

    Returns a dict of arrays over the episode's ``T`` steps: ``observations`` and
    ``next_observations`` (``(T, obs_dim)`` float32), ``actions`` (``(T, action_dim)``
    float32, as the simulator applied them), ``rewards`` (``(T,)`` float32),
    ``terminated``, ``truncated`` and ``success`` (``(T,)`` bool).
    """
    return _core.record_episode(task, check_seed(seed, allow_none=False), reward, gravity)
