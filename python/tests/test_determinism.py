"""Same seed + same actions give the same trajectory in Python as in Rust, bit for bit.

The reference is written by the Rust example `sim/examples/write_trajectory.rs`; its
later episodes follow the seed stream that `reset()` without a seed documents.
"""

import gymnasium as gym
import numpy as np
import pytest

import expo_sim
from conftest import rust_episodes

EPISODES = 3


def play(env, episodes, policy):
    """Replays `episodes` in `env`; `policy(k, obs, info)` gives the k-th episode's actions."""
    for k, ref in enumerate(episodes):
        obs, info = env.reset(seed=ref["seed"]) if k == 0 else env.reset()
        assert info["seed"] == ref["seed"]
        np.testing.assert_array_equal(obs, ref["first_obs"])
        act = policy(k, info)
        for t in range(len(ref["rewards"])):
            action = act(t, obs)
            np.testing.assert_array_equal(action, ref["actions"][t])
            obs, reward, terminated, truncated, info = env.step(action)
            assert obs.dtype == np.float32
            np.testing.assert_array_equal(obs, ref["obs"][t], err_msg=f"episode {k} step {t}")
            assert np.float32(reward) == ref["rewards"][t] and reward == float(ref["rewards"][t])
            assert (terminated, truncated) == (ref["terminated"][t], ref["truncated"][t])
            assert info["success"] == ref["success"][t]
        assert terminated or truncated


@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_random_actions_match_rust(task, seed):
    episodes = rust_episodes(task, seed, EPISODES, "random:17")
    env = expo_sim.SimEnv(task)
    # Out-of-range actions (up to ±1.5) go through unchanged and are clamped by the sim.
    play(env, episodes, lambda k, info: lambda t, obs: episodes[k]["actions"][t])


def test_demonstrator_matches_rust(task):
    episodes = rust_episodes(task, 5, EPISODES, "demo")
    env = expo_sim.SimEnv(task)
    demo = expo_sim.Demonstrator(task)

    def policy(k, info):
        demo.reset(info["seed"])
        return lambda t, obs: demo.act(obs)

    play(env, episodes, policy)


def test_record_episode_matches_rust(task):
    for ref in rust_episodes(task, 5, EPISODES, "demo"):
        ep = expo_sim.record_episode(task, ref["seed"])
        steps = len(ref["rewards"])
        obs_dim = len(ref["first_obs"])
        assert {k: v.shape for k, v in ep.items()} == {
            "observations": (steps, obs_dim), "next_observations": (steps, obs_dim),
            "actions": (steps, 2), "rewards": (steps,), "terminated": (steps,),
            "truncated": (steps,), "success": (steps,),
        }
        np.testing.assert_array_equal(ep["observations"][0], ref["first_obs"])
        np.testing.assert_array_equal(ep["observations"][1:], ref["obs"][:-1])
        np.testing.assert_array_equal(ep["next_observations"], ref["obs"])
        np.testing.assert_array_equal(ep["actions"], np.clip(ref["actions"], -1, 1))
        for key in ("rewards", "terminated", "truncated", "success"):
            np.testing.assert_array_equal(ep[key], ref[key])


def test_gym_make_and_vector_replay_rust(task):
    """The registered id and a one-env vector give the same trajectory as well."""
    import gymnasium as gym

    episodes = rust_episodes(task, 11, 1, "random:3")
    ref = episodes[0]
    env = gym.make(expo_sim.ENV_IDS[task])
    play(env, episodes, lambda k, info: lambda t, obs: ref["actions"][t])

    venv = gym.make_vec(expo_sim.ENV_IDS[task], num_envs=1)
    obs, _ = venv.reset(seed=11)
    np.testing.assert_array_equal(obs[0], ref["first_obs"])
    for t in range(len(ref["rewards"])):
        obs, reward, terminated, truncated, _ = venv.step(ref["actions"][t][None])
        np.testing.assert_array_equal(obs[0], ref["obs"][t])
        assert reward[0] == ref["rewards"][t] and terminated[0] == ref["terminated"][t]


def test_python_demonstrator_loop_reproduces_record_episode(task):
    env, demo = expo_sim.SimEnv(task), expo_sim.Demonstrator(task)
    endings = set()
    for seed in [0, 1, 2, 3, 12345, 2**63 + 5]:
        ep = expo_sim.record_episode(task, seed)
        obs, info = env.reset(seed=seed)
        demo.reset(info["seed"])
        for t in range(len(ep["rewards"])):
            np.testing.assert_array_equal(obs, ep["observations"][t])
            action = demo.act(obs)
            np.testing.assert_array_equal(action, ep["actions"][t])
            obs, reward, terminated, truncated, info = env.step(action)
            np.testing.assert_array_equal(obs, ep["next_observations"][t])
            assert reward == ep["rewards"][t] and info["success"] == ep["success"][t]
            assert (terminated, truncated) == (ep["terminated"][t], ep["truncated"][t])
        endings.add("success" if ep["success"][-1] else "truncated" if truncated else "abort")
    assert "success" in endings


# The options other than the defaults reach the simulator through each entry point
# (a binding that dropped them would give default data labelled with them).
OPTIONS = [("maze", {"reward": "dense"}), ("arm-reach", {"reward": "dense", "gravity": True})]


@pytest.mark.parametrize("task,options", OPTIONS)
def test_options_reach_record_episode_as_they_reach_the_env(task, options):
    env, demo = expo_sim.SimEnv(task, **options), expo_sim.Demonstrator(task)
    plain = expo_sim.record_episode(task, 3)
    ep = expo_sim.record_episode(task, 3, **options)
    assert not np.array_equal(ep["rewards"], plain["rewards"])
    obs, info = env.reset(seed=3)
    demo.reset(info["seed"])
    for t in range(len(ep["rewards"])):
        np.testing.assert_array_equal(obs.view(np.uint32), ep["observations"][t].view(np.uint32))
        obs, reward, terminated, truncated, info = env.step(demo.act(obs))
        assert np.float32(reward).view(np.uint32) == ep["rewards"][t].view(np.uint32)
        assert (terminated, truncated) == (ep["terminated"][t], ep["truncated"][t])


@pytest.mark.parametrize("task,options", OPTIONS)
def test_options_reach_the_vector_as_they_reach_sync_vector_env(task, options):
    n = 5
    ours = expo_sim.SimVectorEnv(task, n, **options)
    theirs = gym.make_vec(expo_sim.ENV_IDS[task], num_envs=n, vectorization_mode="sync", **options)
    plain = expo_sim.SimVectorEnv(task, n)
    for v in (ours, theirs, plain):
        v.reset(seed=9)
    rng = np.random.default_rng(1)
    differs = False
    for _ in range(300):
        actions = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        obs, rew, term, trunc, _ = ours.step(actions)
        r_obs, r_rew, r_term, r_trunc, _ = theirs.step(actions)
        p_obs, p_rew, _, _, _ = plain.step(actions)
        np.testing.assert_array_equal(obs.view(np.uint32), r_obs.view(np.uint32))
        np.testing.assert_array_equal(rew.view(np.uint64), r_rew.view(np.uint64))
        np.testing.assert_array_equal(term, r_term)
        np.testing.assert_array_equal(trunc, r_trunc)
        differs |= not (np.array_equal(rew, p_rew) and np.array_equal(obs, p_obs))
    assert differs, "the options changed nothing"
