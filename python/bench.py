"""Python-side simulation throughput (BENCHMARKS.md, "Python bindings throughput").

    python3 python/bench.py [--steps 400000] [--repeats 5] [--envs 64]

Mirrors `cargo run --release -p tools -- bench sim`: one thread, random actions drawn
beforehand (a table cycled through), episodes reset when they end (the reset cost is
included), median / min / max of the repeats in environment steps per second.

Rows: `SimEnv` stepped directly (`env.step`, the Gymnasium API without wrappers);
`gym.make` (the same with Gymnasium's default wrappers, PassiveEnvChecker and
OrderEnforcing); `SimVectorEnv` with `--envs` environments per `step` call (NEXT_STEP
autoreset, no reset calls from Python), over 4 x `--steps` environment steps (it is
that much faster per step); the same vector row in `--threads` Python threads at once,
each stepping its own `SimVectorEnv` (4 x `--steps` in all, shared between them):
`step` releases the GIL while it simulates, so the threads overlap on as many cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

# Run as a script, this file's directory (the source tree, without the compiled
# extension) would shadow the installed package: import the installed one.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
import expo_sim  # noqa: E402

TABLE = 4096


def actions(shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, size=(TABLE, *shape)).astype(np.float32)


def bench_single(env: gym.Env, steps: int) -> float:
    table = actions(env.action_space.shape)
    env.reset(seed=0)
    step, reset = env.step, env.reset
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = step(table[i % TABLE])
        if terminated or truncated:
            reset()
    return steps / (time.perf_counter() - start)


def bench_vector(task: str, n: int, steps: int) -> float:
    venv = expo_sim.SimVectorEnv(task, n)
    table = actions(venv.action_space.shape)
    venv.reset(seed=0)
    step = venv.step
    calls = -(-steps // n)
    start = time.perf_counter()
    for i in range(calls):
        step(table[i % TABLE])
    return calls * n / (time.perf_counter() - start)


def bench_vector_threads(task: str, n: int, steps: int, threads: int) -> float:
    """`threads` threads, each stepping its own vector for its share of `steps`; all
    environment steps over the wall time from the common start to the last finish."""
    calls = -(-steps // (n * threads))
    venvs = [expo_sim.SimVectorEnv(task, n) for _ in range(threads)]
    for i, venv in enumerate(venvs):
        venv.reset(seed=i)
    table = actions(venvs[0].action_space.shape)
    start = threading.Barrier(threads + 1)

    def work(venv: expo_sim.SimVectorEnv) -> None:
        start.wait()
        for i in range(calls):
            venv.step(table[i % TABLE])

    workers = [threading.Thread(target=work, args=(v,)) for v in venvs]
    for w in workers:
        w.start()
    start.wait()
    begin = time.perf_counter()
    for w in workers:
        w.join()
    return calls * n * threads / (time.perf_counter() - begin)


def main() -> None:
    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} is not a positive count")
        return value

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive, default=400_000,
                        help="environment steps per repeat (4x for the vector row)")
    parser.add_argument("--repeats", type=positive, default=5)
    parser.add_argument("--envs", type=positive, default=64)
    parser.add_argument("--threads", type=positive, default=2,
                        help="threads of the threaded vector row")
    args = parser.parse_args()

    runs = {
        "SimEnv": lambda task: bench_single(expo_sim.SimEnv(task), args.steps),
        "gym.make": lambda task: bench_single(gym.make(expo_sim.ENV_IDS[task]), args.steps),
        f"SimVectorEnv({args.envs})": lambda task: bench_vector(task, args.envs, args.steps * 4),
        f"{args.threads} threads x Vec": lambda task: bench_vector_threads(
            task, args.envs, args.steps * 4, args.threads
        ),
    }
    print(f"{'task':<10} {'api':<18} {'median steps/s':>15} {'min':>12} {'max':>12}")
    for task in expo_sim.task_ids():
        for name, run in runs.items():
            rates = sorted(run(task) for _ in range(args.repeats))
            print(
                f"{task:<10} {name:<18} {statistics.median(rates):>15.0f} "
                f"{rates[0]:>12.0f} {rates[-1]:>12.0f}"
            )


if __name__ == "__main__":
    main()
