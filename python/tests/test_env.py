"""The single environment follows the Gymnasium API."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import expo_sim
from conftest import TASKS


def test_ids_are_registered_on_import():
    assert expo_sim.ENV_IDS == {
        "arm-reach": "expo_sim/ArmReach-v0",
        "push": "expo_sim/Push-v0",
        "maze": "expo_sim/Maze-v0",
    }
    assert expo_sim.task_ids() == TASKS
    for task, env_id in expo_sim.ENV_IDS.items():
        assert gym.spec(env_id).kwargs == {"task": task}


@pytest.mark.filterwarnings("ignore:.*not having a spec")
def test_check_env_passes(task):
    env = gym.make(expo_sim.ENV_IDS[task])
    check_env(env.unwrapped)
    check_env(expo_sim.SimEnv(task))


def test_spaces_and_metadata_follow_the_task_spec(task):
    spec = expo_sim.task_spec(task)
    env = gym.make(expo_sim.ENV_IDS[task]).unwrapped
    obs_space, act_space = env.observation_space, env.action_space
    assert obs_space.dtype == np.float32 and act_space.dtype == np.float32
    np.testing.assert_array_equal(obs_space.low, spec["obs_low"])
    np.testing.assert_array_equal(obs_space.high, spec["obs_high"])
    assert obs_space.shape == (len(spec["obs_names"]),)
    assert act_space.shape == (len(spec["action_names"]),)
    assert (act_space.low == -1).all() and (act_space.high == 1).all()
    assert env.metadata == {"render_modes": [], "render_fps": spec["control_hz"]}
    assert env.render_mode is None and env.render() is None
    assert env.horizon == spec["horizon"]


def test_random_episodes_stay_in_space_and_end_by_the_horizon(task):
    env = gym.make(expo_sim.ENV_IDS[task])
    env.action_space.seed(0)
    env.reset(seed=0)
    for _ in range(3):
        obs, info = env.reset()
        assert set(info) == {"seed"}
        for t in range(1, env.unwrapped.horizon + 1):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert obs in env.observation_space
            assert isinstance(reward, float)
            assert set(info) == {"success"} and isinstance(info["success"], bool)
            assert info["success"] <= terminated
            if terminated or truncated:
                break
        assert terminated or truncated
        assert truncated == (t == env.unwrapped.horizon and not terminated)


def test_seed_in_info_replays_the_episode(task):
    env = expo_sim.SimEnv(task)
    first, info = env.reset()  # never seeded: the stream starts from OS entropy
    again, info2 = env.reset(seed=info["seed"])
    np.testing.assert_array_equal(first, again)
    assert info2 == info
    # Two fresh environments draw different unseeded episodes.
    assert expo_sim.SimEnv(task).reset()[1] != expo_sim.SimEnv(task).reset()[1]


def test_state_describes_the_scene(task):
    env = expo_sim.SimEnv(task)
    obs, _ = env.reset(seed=1)
    state = env.state()
    assert state["task"] == task and state["t"] == 0
    np.testing.assert_array_equal(state["obs"], obs)
    kinds = {s["kind"] for s in state["shapes"]}
    assert "robot" in kinds and "goal" in kinds
    for shape in state["shapes"]:
        fields = {"circle": {"x", "y", "r"}, "segment": {"x0", "y0", "x1", "y1", "width"},
                  "rect": {"x0", "y0", "x1", "y1"}}[shape["type"]]
        assert set(shape) == fields | {"kind", "type"}
    env.step(np.zeros(2, np.float32))
    assert env.state()["t"] == 1


def test_keyword_arguments_reach_the_simulator():
    sparse = gym.make("expo_sim/Maze-v0")
    dense = gym.make("expo_sim/Maze-v0", reward="dense")
    sparse.reset(seed=4)
    dense.reset(seed=4)
    action = np.zeros(2, np.float32)
    assert sparse.step(action)[1] == 0.0
    assert dense.step(action)[1] < 0.0

    flat = expo_sim.SimEnv("arm-reach")
    vertical = gym.make("expo_sim/ArmReach-v0", gravity=True)
    np.testing.assert_array_equal(flat.reset(seed=2)[0], vertical.reset(seed=2)[0])
    push = np.array([0.5, -1.0], np.float32)  # saturates the torque limit
    for _ in range(5):
        a = flat.step(push)[0]
        b = vertical.step(push)[0]
    assert not np.array_equal(a, b)  # gravity changed the dynamics


def test_float64_and_list_actions_are_accepted():
    env = expo_sim.SimEnv("push")
    env.reset(seed=3)
    a = env.step(np.array([0.25, -0.5]))[0]
    env.reset(seed=3)
    b = env.step([0.25, -0.5])[0]
    env.reset(seed=3)
    c = env.step(np.array([0.25, -0.5], dtype=np.float32))[0]
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)
