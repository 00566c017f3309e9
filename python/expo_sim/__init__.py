"""expo_sim: Gymnasium environments for the EXPO simulated robot tasks.

The physics, tasks and demonstrators are the Rust ``sim`` crate; this package binds them
(``expo_sim._core``, built with pyo3/maturin) and wraps them in the Gymnasium API.
Importing it registers one environment id per task:

========================  =============  ===  ===  =======
Gymnasium id              task id        obs  act  horizon
========================  =============  ===  ===  =======
``expo_sim/ArmReach-v0``  ``arm-reach``   10    2       60
``expo_sim/Push-v0``      ``push``        10    2      100
``expo_sim/Maze-v0``      ``maze``         6    2      150
========================  =============  ===  ===  =======

``gymnasium.make(id, reward="dense", gravity=True)`` passes the keyword arguments to
:class:`SimEnv`; ``gymnasium.make_vec(id, num_envs=64)`` builds a :class:`SimVectorEnv`
(all environments stepped in one Rust call).

Observations are float32 within ``observation_space`` (the task's nominal bounds);
actions are float32 in ``[-1, 1]``. Finite actions outside the range are clamped by the
simulator; NaN or infinite actions raise ``ValueError``.

Seeding
-------
``reset(seed=s)`` resets the simulator with exactly ``s`` (an integer in ``[0, 2**64)``),
so the same seed and the same actions reproduce a trajectory bit for bit, in Python as
in Rust (``sim::make_env(task, ..).reset(s, ..)``). Each environment also has a seed
stream: ``reset(seed=s)`` restarts it at ``sim::rng::Rng::new(s)``, and ``reset()``
without a seed resets with the stream's next value. Before the first seeded reset the
stream starts from OS entropy. ``info["seed"]`` from ``reset`` is the seed the episode
used, so ``reset(seed=info["seed"])`` replays any episode. :class:`SimVectorEnv`
follows Gymnasium's convention: ``reset(seed=s)`` seeds environment ``i`` with ``s + i``
(or takes a list of seeds).

Errors
------
Wrong shapes, NaN/inf values and unknown task ids raise ``ValueError`` (the message
lists the valid ids); non-floating dtypes raise ``TypeError``; stepping before
``reset`` or after the episode terminated or truncated raises :class:`ResetNeeded` (a
``RuntimeError``; an environment from ``gym.make`` raises Gymnasium's own
``gymnasium.error.ResetNeeded`` before its first ``reset``, from its order-enforcing
wrapper).

Copying
-------
An environment holds its simulator in Rust and cannot be pickled or deep-copied
(``TypeError``). ``gymnasium.make_vec(id, vectorization_mode="async")`` still works: it
pickles the factory, not an environment. To branch a rollout, replay it: the episode's
seed (``info["seed"]``) and the same actions reproduce it bit for bit.

Observation bounds
------------------
``observation_space`` holds the tasks' nominal bounds, which no episode leaves; some
features use a small part of them (over 300 episodes of held full-scale actions the
arm's scaled joint speeds stayed within ±0.57 of ±2, the puck's velocity within ±0.55
of ±2). Normalize observations by data statistics (as the trainer does), not by the
bounds.
"""

from expo_sim._core import ResetNeeded, task_ids, task_spec
from expo_sim._demo import Demonstrator, record_episode
from expo_sim._env import SimEnv
from expo_sim._registration import ENV_IDS, register_envs
from expo_sim._vector import SimVectorEnv

__all__ = [
    "ENV_IDS",
    "Demonstrator",
    "ResetNeeded",
    "SimEnv",
    "SimVectorEnv",
    "record_episode",
    "register_envs",
    "task_ids",
    "task_spec",
]

register_envs()
