"""N simulated environments stepped in one Rust call, as a ``gymnasium.vector.VectorEnv``.

Autoreset mode: ``AutoresetMode.NEXT_STEP`` (Gymnasium 1.x's default, declared in
``metadata["autoreset_mode"]``). The step that ends an episode returns its last
observation with ``terminated``/``truncated`` set. On the next ``step`` that
environment ignores its action, resets with the next seed of its own stream and returns
the new episode's first observation with reward 0, ``terminated = truncated = False``,
``info["_success"]`` false and ``info["seed"]``/``info["_seed"]`` set for it. This is
exactly what ``gymnasium.vector.SyncVectorEnv`` over :class:`~expo_sim.SimEnv` does
(tested), only without a Python loop per environment.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from expo_sim import _core
from expo_sim._common import (
    SEED_LIMIT,
    as_float32,
    check_render_mode,
    check_seed,
    entropy_seed,
    task_spaces,
)


class SimVectorEnv(VectorEnv):
    """``num_envs`` environments of one task (same arguments as :class:`~expo_sim.SimEnv`).

    Observations are ``(num_envs, obs_dim)`` float32, actions ``(num_envs, action_dim)``;
    rewards are float64, ``terminated``/``truncated`` bool, all new arrays per call.
    ``step`` returns ``info["success"]`` (bool per environment, with mask
    ``info["_success"]``, false for environments that autoreset in this step). An
    environment that autoresets ignores its row of ``actions``, which may then hold
    anything (NaN too), as in ``SyncVectorEnv``. ``reset(seed=s)`` seeds environment
    ``i`` with ``s + i``; a sequence (list, tuple, range, 1-D integer array) gives one
    seed (or None) per environment; ``options={"reset_mask": mask}`` resets only the
    selected environments, after a first reset of all of them.

    ``max_episode_steps`` (what ``gym.make_vec(id, max_episode_steps=H)`` passes on) may
    be the task's horizon, where the simulator ends every episode anyway; it then
    reports ``truncated`` at that step even when the episode also terminated there, as
    ``gymnasium.wrappers.TimeLimit`` does. A longer limit is never reached (no effect);
    a shorter one raises ``ValueError``. Each environment's autoresets continue its
    own seed stream, so runs seeded ``s`` and ``s + 1`` share ``num_envs - 1``
    environments' whole episode sequences: space the seeds of independent runs (a study's
    seeds) by at least ``num_envs``.

    ``step`` releases the GIL while it simulates, so vectors in separate threads run at
    once; one vector serves one thread at a time, and a ``step`` or ``reset`` called
    while another thread is inside one on the same vector raises ``RuntimeError``
    saying so (give each thread its own vector).
    """

    def __init__(
        self,
        task: str = "arm-reach",
        num_envs: int = 1,
        reward: str = "sparse",
        gravity: bool = False,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        check_render_mode(render_mode)
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)):
            raise TypeError(f"num_envs must be an int, got {type(num_envs).__name__}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        spec, self.single_observation_space, self.single_action_space = task_spaces(task)
        self.num_envs = int(num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._core = _core.VecEnv(
            task, [entropy_seed() for _ in range(self.num_envs)], reward, gravity
        )
        self.task = task
        self.horizon: int = spec["horizon"]
        if max_episode_steps == -1:
            # Gymnasium's `make` reads -1 as "no TimeLimit" (its sync vector mode too).
            max_episode_steps = None
        if max_episode_steps is not None and max_episode_steps < self.horizon:
            raise ValueError(
                f"SimVectorEnv ends every {task} episode at the task's horizon "
                f"({self.horizon} steps); max_episode_steps={max_episode_steps} is not "
                f"supported (None, or {self.horizon} or more)"
            )
        # A longer limit is never reached: the simulator truncates at the horizon first.
        self._time_limit = max_episode_steps == self.horizon
        # Steps of each environment's running episode (for `max_episode_steps`).
        self._elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self.render_mode = None
        # Held through each `step` and `reset`: the core's own borrow check refused a
        # second thread with a bare "Already borrowed".
        self._in_use = threading.Lock()
        self.metadata = {
            "autoreset_mode": AutoresetMode.NEXT_STEP,
            "render_modes": [],
            "render_fps": spec["control_hz"],
        }

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        seeds = self._seeds(seed)
        mask = self._reset_mask(options)
        with self._exclusive("reset"):
            obs, used = self._core.reset(seeds, None if mask is None else mask.tolist())
            # `np_random` from the first environment's seed, as checked (a NumPy integer
            # too); after the core's reset, so a refused one (ResetNeeded) changes nothing.
            super().reset(seed=None if _is_seed_sequence(seed) else seeds[0])
            if mask is None:
                mask = np.ones(self.num_envs, dtype=np.bool_)
            self._elapsed[mask] = 0
        return obs, {"seed": used, "_seed": mask}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = as_float32(actions, "actions")
        with self._exclusive("step"):
            obs, rewards, terminated, truncated, success, reset, seeds = self._core.step(actions)
            self._elapsed = np.where(reset, 0, self._elapsed + 1)
            if self._time_limit:
                truncated |= self._elapsed >= self.horizon
        # Gymnasium's vector info convention: a key is present when at least one
        # environment reports it, with the mask `_key` saying which.
        info: dict[str, Any] = {}
        if not reset.all():
            info["success"], info["_success"] = success, ~reset
        if reset.any():
            info["seed"], info["_seed"] = seeds, reset
        return obs, rewards, terminated, truncated, info

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """The vector for one call of ``what``, or ``RuntimeError`` naming the rule when
        another thread is inside a call on it."""
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError(
                f"SimVectorEnv.{what}: another thread is inside a step or reset of this "
                "vector; one vector serves one thread at a time (give each thread its own)"
            )
        try:
            yield
        finally:
            self._in_use.release()

    def render(self) -> None:
        """No render modes: returns None."""
        return None

    def _seeds(self, seed: Any) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if _is_seed_sequence(seed):
            seed = list(seed)
            if len(seed) != self.num_envs:
                raise ValueError(
                    f"a list of seeds needs one per environment ({self.num_envs}), "
                    f"got {len(seed)}"
                )
            return [check_seed(s, name=f"seed[{i}]") for i, s in enumerate(seed)]
        first = check_seed(seed, allow_none=False)
        if first + self.num_envs > SEED_LIMIT:
            raise ValueError(
                f"seed must be at most 2**64 - {self.num_envs} with {self.num_envs} "
                f"environments (environment i is seeded with seed + i), got {first}"
            )
        return [first + i for i in range(self.num_envs)]

    def _reset_mask(self, options: dict[str, Any] | None) -> np.ndarray | None:
        if not options:
            return None
        unknown = sorted(set(options) - {"reset_mask"})
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; only 'reset_mask' exists")
        mask = options["reset_mask"]
        if not isinstance(mask, np.ndarray):
            raise TypeError(
                f"options['reset_mask'] must be a numpy bool array, got {type(mask).__name__}"
            )
        if mask.dtype != np.bool_:
            raise TypeError(
                f"options['reset_mask'] must be a numpy bool array, got dtype {mask.dtype}"
            )
        if mask.shape != (self.num_envs,):
            raise ValueError(
                f"options['reset_mask'] must have shape ({self.num_envs},), got {mask.shape}"
            )
        if not mask.any():
            raise ValueError("options['reset_mask'] must select at least one environment")
        return mask.copy()


def _is_seed_sequence(seed: Any) -> bool:
    """One seed per environment: a list, tuple, range or 1-D array (not one int)."""
    if isinstance(seed, np.ndarray):
        return seed.ndim == 1
    return isinstance(seed, (list, tuple, range))

