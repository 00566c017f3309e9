"""The vector environment agrees with Gymnasium's SyncVectorEnv over single envs."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import expo_sim

N = 5


def reference(task, n=N):
    """Gymnasium's own NEXT_STEP vectorization of the registered single environment."""
    ref = gym.make_vec(expo_sim.ENV_IDS[task], num_envs=n, vectorization_mode="sync")
    assert isinstance(ref, SyncVectorEnv)
    assert ref.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    return ref


def assert_same_step(ours, theirs):
    obs, rew, term, trunc, info = ours
    r_obs, r_rew, r_term, r_trunc, r_info = theirs
    np.testing.assert_array_equal(obs, r_obs)
    assert obs.dtype == np.float32 and obs.shape == r_obs.shape
    np.testing.assert_array_equal(rew, r_rew)
    np.testing.assert_array_equal(term, r_term)
    np.testing.assert_array_equal(trunc, r_trunc)
    # Keys present for at least one environment, with the same masks and values there.
    assert set(info) == set(r_info)
    for key in ("success", "seed"):
        if key in info:
            mask = info[f"_{key}"]
            np.testing.assert_array_equal(mask, r_info[f"_{key}"])
            np.testing.assert_array_equal(info[key][mask], r_info[key][mask])


def test_make_vec_builds_the_rust_vector(task):
    venv = gym.make_vec(expo_sim.ENV_IDS[task], num_envs=3)
    assert isinstance(venv.unwrapped, expo_sim.SimVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    single = expo_sim.SimEnv(task)
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space.shape == (3, *single.observation_space.shape)
    assert venv.action_space.shape == (3, 2)


def test_vector_matches_sync_vector_env_through_autoresets(task):
    ours, theirs = expo_sim.SimVectorEnv(task, N), reference(task)
    out, ref = ours.reset(seed=42), theirs.reset(seed=42)
    np.testing.assert_array_equal(out[0], ref[0])
    np.testing.assert_array_equal(out[1]["seed"], 42 + np.arange(N))
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(400):
        actions = rng.uniform(-1, 1, size=(N, 2)).astype(np.float32)
        step = ours.step(actions)
        assert_same_step(step, theirs.step(actions))
        ends += int(np.sum(step[2] | step[3]))
    assert ends >= N  # autoreset happened, for every environment on average


def test_seed_lists_and_unseeded_resets(task):
    ours, theirs = expo_sim.SimVectorEnv(task, N), reference(task)
    seeds = [7, None, 2**64 - 1, 0, 7]
    ours.reset(seed=[7, 1, 2, 3, 4])
    theirs.reset(seed=[7, 1, 2, 3, 4])
    obs, info = ours.reset(seed=seeds)
    r_obs, r_info = theirs.reset(seed=seeds)
    np.testing.assert_array_equal(obs, r_obs)
    np.testing.assert_array_equal(info["seed"], r_info["seed"])
    np.testing.assert_array_equal(ours.reset()[0], theirs.reset()[0])


def test_reset_mask_resets_only_the_selected_envs(task):
    ours, theirs = expo_sim.SimVectorEnv(task, N), reference(task)
    ours.reset(seed=3)
    theirs.reset(seed=3)
    actions = np.full((N, 2), 0.5, np.float32)
    for _ in range(4):
        before = ours.step(actions)[0]
        theirs.step(actions)
    mask = np.array([True, False, True, False, False])
    obs, info = ours.reset(seed=100, options={"reset_mask": mask})
    r_obs, _ = theirs.reset(seed=100, options={"reset_mask": mask.copy()})
    np.testing.assert_array_equal(obs, r_obs)
    np.testing.assert_array_equal(obs[~mask], before[~mask])
    np.testing.assert_array_equal(info["_seed"], mask)
    np.testing.assert_array_equal(info["seed"][mask], [100, 102])
    for _ in range(50):
        assert_same_step(ours.step(actions), theirs.step(actions))


def test_returned_arrays_are_new_each_call():
    venv = expo_sim.SimVectorEnv("maze", 4)
    first = venv.reset(seed=0)
    steps = [venv.step(np.zeros((4, 2), np.float32)) for _ in range(2)]
    arrays = [first[0], *(a for s in steps for a in s[:4])]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)


def test_gymnasium_vector_wrappers_accept_it():
    venv = gym.wrappers.vector.RecordEpisodeStatistics(expo_sim.SimVectorEnv("arm-reach", 8))
    venv = gym.wrappers.vector.NormalizeObservation(venv)
    venv.reset(seed=0)
    finished = reported = 0
    for _ in range(70):  # arm-reach's horizon is 60: every environment ends once
        _, _, term, trunc, info = venv.step(venv.action_space.sample())
        finished += int(np.sum(term | trunc))
        if "episode" in info:
            # Every ended episode is reported, with its length.
            ended = info["_episode"]
            assert (ended == (term | trunc)).all()
            assert (info["episode"]["l"][ended] <= 60).all()
            reported += int(np.sum(ended))
    assert finished >= 8
    assert reported == finished


@pytest.mark.parametrize("n", [1, 64])
def test_sizes(n):
    venv = expo_sim.SimVectorEnv("push", n)
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (n, 10)
    obs, rew, term, trunc, info = venv.step(np.zeros((n, 2), np.float32))
    assert obs.shape == (n, 10) and rew.shape == term.shape == trunc.shape == (n,)
    assert rew.dtype == np.float64 and term.dtype == trunc.dtype == np.bool_


def test_rows_of_autoresetting_envs_are_ignored_even_if_nan(task):
    """As in SyncVectorEnv: an environment that autoresets ignores its action row."""
    ours, theirs = expo_sim.SimVectorEnv(task, N), reference(task)
    ours.reset(seed=5)
    theirs.reset(seed=5)
    rng = np.random.default_rng(1)
    done = np.zeros(N, dtype=bool)
    ignored = 0
    for _ in range(300):
        actions = rng.uniform(-1, 1, size=(N, 2)).astype(np.float32)
        actions[done] = np.nan
        ignored += int(done.sum())
        step = ours.step(actions)
        assert_same_step(step, theirs.step(actions))
        done = step[2] | step[3]
    assert ignored > 0
    # A running environment's NaN is still refused (right after a reset, every one runs).
    fresh = expo_sim.SimVectorEnv(task, N)
    fresh.reset(seed=5)
    actions = np.zeros((N, 2), np.float32)
    actions[N - 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"actions must be finite, got NaN at index \(4, 0\)"):
        fresh.step(actions)


def test_seed_sequences_of_any_kind():
    venv = expo_sim.SimVectorEnv("maze", 3)
    want = venv.reset(seed=[4, 9, 2])
    for seeds in ([4, 9, 2], (4, 9, 2), np.array([4, 9, 2]), np.array([4, 9, 2], np.uint64)):
        obs, info = venv.reset(seed=seeds)
        np.testing.assert_array_equal(obs, want[0])
        np.testing.assert_array_equal(info["seed"], [4, 9, 2])
    obs, info = venv.reset(seed=range(4, 7))
    np.testing.assert_array_equal(info["seed"], [4, 5, 6])
    with pytest.raises(ValueError, match=r"one per environment \(3\), got 2"):
        venv.reset(seed=np.array([1, 2]))
    with pytest.raises(TypeError, match="seed must be an int"):
        venv.reset(seed=np.zeros((3, 1), np.int64))


def test_make_vec_with_the_horizon_as_time_limit_matches_sync(task):
    horizon = expo_sim.SimEnv(task).horizon
    n = 3
    ours = gym.make_vec(expo_sim.ENV_IDS[task], num_envs=n, max_episode_steps=horizon)
    assert isinstance(ours.unwrapped, expo_sim.SimVectorEnv)
    theirs = gym.make_vec(
        expo_sim.ENV_IDS[task],
        num_envs=n,
        vectorization_mode="sync",
        max_episode_steps=horizon,
    )
    ours.reset(seed=11)
    theirs.reset(seed=11)
    rng = np.random.default_rng(2)
    truncations = 0
    for _ in range(2 * horizon + 5):
        actions = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        step = ours.step(actions)
        assert_same_step(step, theirs.step(actions))
        truncations += int(step[3].sum())
    assert truncations > 0
    with pytest.raises(ValueError, match="max_episode_steps=7 is not supported"):
        gym.make_vec(expo_sim.ENV_IDS[task], num_envs=n, max_episode_steps=7)


def test_make_vec_takes_minus_one_as_no_time_limit_as_sync_does(task):
    n = 2
    ours = gym.make_vec(expo_sim.ENV_IDS[task], num_envs=n, max_episode_steps=-1)
    assert isinstance(ours.unwrapped, expo_sim.SimVectorEnv)
    plain = gym.make_vec(expo_sim.ENV_IDS[task], num_envs=n)
    theirs = gym.make_vec(
        expo_sim.ENV_IDS[task], num_envs=n, vectorization_mode="sync", max_episode_steps=-1
    )
    ours.reset(seed=3)
    plain.reset(seed=3)
    theirs.reset(seed=3)
    rng = np.random.default_rng(4)
    for _ in range(40):
        actions = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        step = ours.step(actions)
        assert_same_step(step, plain.step(actions))
        assert_same_step(step, theirs.step(actions))


def test_a_partial_reset_before_the_first_full_one_raises():
    venv = expo_sim.SimVectorEnv("arm-reach", 2)
    mask = np.array([True, False])
    before = venv.np_random.bit_generator.state
    with pytest.raises(expo_sim.ResetNeeded, match="environment 1 was never reset"):
        venv.reset(seed=0, options={"reset_mask": mask})
    # The refused reset left the generator as it was (it was reseeded from 0).
    assert venv.np_random.bit_generator.state == before
    venv.reset(seed=0)
    obs, info = venv.reset(seed=5, options={"reset_mask": mask})
    np.testing.assert_array_equal(info["_seed"], mask)


def test_vectors_stepped_in_threads_give_what_they_give_alone(task):
    """`step` releases the GIL while it simulates: vectors stepped in two threads at
    once give exactly what each gives stepped alone."""
    import threading

    steps = 120
    rng = np.random.default_rng(7)
    table = rng.uniform(-1, 1, size=(steps, 8, 2)).astype(np.float32)

    def run(seed, out):
        venv = expo_sim.SimVectorEnv(task, 8)
        obs, _ = venv.reset(seed=seed)
        out.append(obs)
        for a in table:
            obs, rew, term, trunc, _ = venv.step(a)
            out.extend([obs, rew, term, trunc])

    alone = {seed: [] for seed in (1, 2)}
    for seed, out in alone.items():
        run(seed, out)
    together = {seed: [] for seed in (1, 2)}
    threads = [threading.Thread(target=run, args=(s, out)) for s, out in together.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in alone:
        assert len(together[seed]) == len(alone[seed])
        for a, b in zip(alone[seed], together[seed]):
            np.testing.assert_array_equal(a, b)


def _big_vector():
    """A vector whose step takes tens of milliseconds (50,000 arm-reach environments)."""
    n = 50_000
    venv = expo_sim.SimVectorEnv("arm-reach", n)
    venv.reset(seed=0)
    actions = np.zeros((n,) + venv.single_action_space.shape, dtype=np.float32)
    return venv, actions


def test_step_lets_other_python_threads_run():
    """`step` releases the GIL while it simulates: a Python thread counting meanwhile
    gets on at a good part of its rate alone. (The test above cannot tell: independent
    vectors give the same results whether or not the GIL is released.) Held, the
    counter would get about one switch interval per call."""
    import sys
    import threading
    import time

    venv, actions = _big_vector()
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.05)
        start, t0 = count[0], time.perf_counter()
        time.sleep(0.2)
        alone = (count[0] - start) / (time.perf_counter() - t0)
        start, t0 = count[0], time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            venv.step(actions)
        during = (count[0] - start) / (time.perf_counter() - t0)
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(old)
    assert during > 0.2 * alone, f"counted {during:.0f}/s during steps, {alone:.0f}/s alone"


def test_a_vector_called_from_two_threads_at_once_says_so():
    """One vector serves one thread at a time: a call from another thread while one is
    inside `step` raises an error naming the rule (it was PyO3's bare "Already
    borrowed")."""
    import threading

    venv, actions = _big_vector()
    refused = []
    go, tried = threading.Event(), threading.Event()

    def other():
        # One call per round, made once the main thread is on its way into a step
        # (which releases the GIL while it simulates, for tens of milliseconds).
        for _ in range(20):
            go.wait()
            go.clear()
            try:
                venv.reset(seed=1)
            except RuntimeError as e:
                refused.append(str(e))
            tried.set()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    for _ in range(20):
        tried.clear()
        go.set()
        try:
            venv.step(actions)
        except RuntimeError as e:
            # The other thread got in first (this one descheduled before its step):
            # refused the same way; another round.
            assert "another thread is inside a step or reset" in str(e), e
        assert tried.wait(10)
        if refused:
            break
    assert refused, "the other thread's calls never came during a step"
    assert "another thread is inside a step or reset of this vector" in refused[0], refused
