"""Registers the tasks with Gymnasium (done on ``import expo_sim``)."""

from __future__ import annotations

import gymnasium

#: Task id -> Gymnasium id.
ENV_IDS = {
    "arm-reach": "expo_sim/ArmReach-v0",
    "push": "expo_sim/Push-v0",
    "maze": "expo_sim/Maze-v0",
}


def register_envs() -> None:
    """Registers every task once; ``gymnasium.make``/``make_vec`` then build
    :class:`~expo_sim.SimEnv` / :class:`~expo_sim.SimVectorEnv`. No ``TimeLimit``
    wrapper: the simulator truncates at the task's horizon itself."""
    for task, env_id in ENV_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point="expo_sim._env:SimEnv",
            vector_entry_point="expo_sim._vector:SimVectorEnv",
            kwargs={"task": task},
        )
