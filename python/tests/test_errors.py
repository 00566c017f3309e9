"""Bad input raises a Python exception with a clear message, never crashes."""

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest

import expo_sim
from expo_sim import _core
from conftest import find_episode

VALID_IDS = "arm-reach, push, maze"


def started(task="push", seed=0):
    env = expo_sim.SimEnv(task)
    env.reset(seed=seed)
    return env


@pytest.mark.parametrize(
    "action, error, message",
    [
        (np.zeros(3, np.float32), ValueError, r"action must have shape \(2,\), got \(3,\)"),
        (np.zeros((1, 2), np.float32), ValueError, r"shape \(2,\), got \(1, 2\)"),
        (np.float32(0.5), ValueError, r"shape \(2,\), got \(\)"),
        (np.array([np.nan, 0], np.float32), ValueError, r"finite, got NaN at index \(0,\)"),
        (np.array([0, np.inf], np.float32), ValueError, r"finite, got inf at index \(1,\)"),
        ([0.0, -np.inf], ValueError, "finite, got -inf"),
        (np.array([0, 1e300]), ValueError, "finite, got inf"),  # overflows float32
        (np.zeros(2, np.int64), TypeError, "floating-point array.*got dtype int64"),
        ([0, 1], TypeError, "got dtype int64"),
        (np.zeros(2, bool), TypeError, "got dtype bool"),
        (np.zeros(2, complex), TypeError, "got dtype complex128"),
        (["a", "b"], TypeError, "got dtype <U1"),
        ({"x": 1}, TypeError, "got dtype object"),
        (None, TypeError, "got dtype object"),
    ],
)
def test_bad_actions_raise(action, error, message):
    env = started()
    with pytest.raises(error, match=message):
        env.step(action)


def test_float64_overflow_is_a_value_error_even_with_warnings_as_errors():
    env = started()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="finite, got inf"):
            env.step(np.array([0, 1e300]))


def test_a_rejected_action_leaves_the_episode_untouched():
    env, clean = started(seed=9), started(seed=9)
    good = np.array([0.3, -0.2], np.float32)
    for _ in range(5):
        with pytest.raises(ValueError):
            env.step(np.array([np.nan, 0.1], np.float32))
        np.testing.assert_array_equal(env.step(good)[0], clean.step(good)[0])
    assert env.state()["t"] == 5


def test_step_before_reset_raises():
    env = expo_sim.SimEnv("maze")
    with pytest.raises(expo_sim.ResetNeeded, match=r"call reset\(\) before step\(\)"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(RuntimeError):  # ResetNeeded is a RuntimeError
        env.state()
    # Through gymnasium.make, Gymnasium's own order check answers first.
    with pytest.raises(gym.error.ResetNeeded):
        gym.make("expo_sim/Maze-v0").step(np.zeros(2, np.float32))


@pytest.mark.parametrize("ending", ["terminated", "truncated"])
def test_step_after_the_episode_ended_raises(task, ending):
    seed, ep = find_episode(task, ending)
    env = expo_sim.SimEnv(task)
    env.reset(seed=seed)
    for action in ep["actions"]:
        result = env.step(action)
    assert result[2 if ending == "terminated" else 3]
    with pytest.raises(expo_sim.ResetNeeded, match=f"episode has ended \\({ending}\\)"):
        env.step(ep["actions"][-1])
    env.reset()
    env.step(ep["actions"][-1])  # fine again after reset


def test_unknown_task_lists_the_valid_ids():
    for make in (expo_sim.SimEnv, expo_sim.Demonstrator,
                 lambda t: expo_sim.SimVectorEnv(t, 2),
                 lambda t: expo_sim.record_episode(t, 0), expo_sim.task_spec):
        with pytest.raises(ValueError, match=f"unknown task 'walker': expected one of {VALID_IDS}"):
            make("walker")
    with pytest.raises(gym.error.Error, match="ArmReach"):  # Gymnasium suggests close ids
        gym.make("expo_sim/Armreach-v0")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"reward": "shaped"}, ValueError, "unknown reward 'shaped': expected one of sparse, dense"),
        ({"render_mode": "rgb_array"}, ValueError, "render_mode must be None"),
        ({"gravity": True}, ValueError, "gravity applies to arm-reach only; push moves"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        expo_sim.SimEnv("push", **kwargs)
    with pytest.raises(error, match=message):
        expo_sim.SimVectorEnv("push", 2, **kwargs)


@pytest.mark.parametrize(
    "seed, error",
    [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)],
)
def test_bad_seeds(seed, error):
    with pytest.raises(error, match="seed must"):
        expo_sim.SimEnv("maze").reset(seed=seed)
    with pytest.raises(error, match="seed must"):
        expo_sim.SimVectorEnv("maze", 2).reset(seed=seed)
    with pytest.raises(error, match="seed must"):
        expo_sim.Demonstrator("maze").reset(seed)
    with pytest.raises(error, match="seed must"):
        expo_sim.record_episode("maze", seed)


def test_vector_seeds_past_the_end_name_the_rule():
    with pytest.raises(ValueError, match=r"seed must be at most 2\*\*64 - 3 with 3 environments"):
        expo_sim.SimVectorEnv("maze", 3).reset(seed=2**64 - 2)
    # The last seed that fits.
    obs, info = expo_sim.SimVectorEnv("maze", 3).reset(seed=2**64 - 3)
    assert list(info["seed"]) == [2**64 - 3, 2**64 - 2, 2**64 - 1]


def test_vector_numpy_integer_seed_seeds_np_random():
    a, b = expo_sim.SimVectorEnv("maze", 2), expo_sim.SimVectorEnv("maze", 2)
    a.reset(seed=np.int64(5))
    b.reset(seed=5)
    assert a.np_random.random() == b.np_random.random()


def test_bad_reset_options():
    with pytest.raises(ValueError, match="takes no options"):
        expo_sim.SimEnv("maze").reset(options={"goal": 1})
    venv = expo_sim.SimVectorEnv("maze", 3)
    bad = [
        # What arrived is named (a list, an int array).
        ({"reset_mask": [True, False, True]}, TypeError, "numpy bool array, got list"),
        ({"reset_mask": np.ones(3, np.int64)}, TypeError, "got dtype int64"),
        ({"reset_mask": np.ones(2, bool)}, ValueError, r"shape \(3,\), got \(2,\)"),
        ({"reset_mask": np.zeros(3, bool)}, ValueError, "at least one"),
        ({"other": 1}, ValueError, r"unknown reset options \['other'\]"),
    ]
    for options, error, message in bad:
        with pytest.raises(error, match=message):
            venv.reset(options=options)
    with pytest.raises(ValueError, match=r"one per environment \(3\), got 2"):
        venv.reset(seed=[1, 2])
    # The environment whose seed is wrong is named.
    with pytest.raises(TypeError, match=r"seed\[1\] must be an int .*got float"):
        venv.reset(seed=[1, 1.5, 2])
    with pytest.raises(ValueError, match=r"seed\[2\] must be in \[0, 2\*\*64\), got -1"):
        venv.reset(seed=[1, 2, -1])


def test_vector_bad_input():
    with pytest.raises(ValueError, match="at least 1"):
        expo_sim.SimVectorEnv("push", 0)
    with pytest.raises(TypeError, match="num_envs must be an int"):
        expo_sim.SimVectorEnv("push", 2.0)
    venv = expo_sim.SimVectorEnv("push", 4)
    with pytest.raises(expo_sim.ResetNeeded, match="never reset"):
        venv.step(np.zeros((4, 2), np.float32))
    venv.reset(seed=0)
    actions = np.zeros((4, 2), np.float32)
    actions[2, 1] = np.nan
    bad = [
        (np.zeros((4, 3), np.float32), ValueError, r"actions must have shape \(4, 2\), got \(4, 3\)"),
        (np.zeros(2, np.float32), ValueError, r"shape \(4, 2\), got \(2,\)"),
        (np.zeros((4, 2), np.int32), TypeError, "got dtype int32"),
        (actions, ValueError, r"actions must be finite, got NaN at index \(2, 1\)"),
    ]
    for value, error, message in bad:
        with pytest.raises(error, match=message):
            venv.step(value)
    # Strided input (Fortran order) and a misaligned view are read in logical order:
    # the same observations as the C-ordered array gives a twin.
    values = np.array([[0.9, -0.1], [0.3, -0.7], [-0.5, 0.2], [0.6, 0.8]], np.float32)
    raw = bytearray(1 + values.nbytes)
    raw[1:] = values.tobytes()
    misaligned = np.frombuffer(raw, np.float32, count=8, offset=1).reshape(4, 2)
    assert not misaligned.flags.aligned
    for other in [np.asfortranarray(values), misaligned]:
        a = expo_sim.SimVectorEnv("push", 4)
        b = expo_sim.SimVectorEnv("push", 4)
        a.reset(seed=9)
        b.reset(seed=9)
        np.testing.assert_array_equal(a.step(values)[0], b.step(other)[0])


def test_demonstrator_bad_input():
    demo = expo_sim.Demonstrator("arm-reach")
    obs = np.zeros(10, np.float32)
    with pytest.raises(expo_sim.ResetNeeded, match=r"call reset\(seed\) before act\(\)"):
        demo.act(obs)
    demo.reset(1)
    with pytest.raises(ValueError, match=r"obs must have shape \(10,\), got \(6,\)"):
        demo.act(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="obs must be finite"):
        demo.act(np.full(10, np.nan, np.float32))
    with pytest.raises(TypeError, match="got dtype int64"):
        demo.act(np.zeros(10, np.int64))
    assert demo.act(obs).shape == (2,)


def test_the_rust_core_refuses_bad_input_directly():
    """Calling the extension module without the Python wrapper still only raises."""
    env = _core.Env("push")
    env.reset(1)
    with pytest.raises(TypeError):
        env.step(np.zeros(2, np.float64))  # the wrapper converts; the core does not
    with pytest.raises(TypeError):
        env.step("no")
    with pytest.raises(OverflowError):
        env.reset(-1)
    venv = _core.VecEnv("push", [1, 2])
    with pytest.raises(ValueError, match=re.escape("one entry per environment (2), got 3 and 2")):
        venv.reset([None, None, None])
    with pytest.raises(ValueError, match="at least one environment"):
        _core.VecEnv("push", [])
    # A misaligned view reaches the core only this way (the wrappers copy it): refused,
    # not read as f32 at an odd address.
    raw = bytearray(9)
    misaligned = np.frombuffer(raw, np.float32, count=2, offset=1)
    assert not misaligned.flags.aligned
    with pytest.raises(ValueError, match="action must be an aligned array"):
        env.step(misaligned)
    demo = _core.Demonstrator("push")
    demo.reset(1)
    raw = bytearray(41)
    with pytest.raises(ValueError, match="obs must be an aligned array"):
        demo.act(np.frombuffer(raw, np.float32, count=10, offset=1))
