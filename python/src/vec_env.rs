//! Many environments stepped in one call: `expo_sim._core.VecEnv`, the engine of
//! `expo_sim.SimVectorEnv`.
//!
//! Autoreset follows Gymnasium's NEXT_STEP mode: the step that ends an episode returns
//! its last observation with `terminated`/`truncated` set; on the next `step` that
//! environment ignores its action, resets (seed: the next value of its own seed stream)
//! and returns the first observation of the new episode with reward 0 and both flags
//! false. (`sim::VecEnv` resets in the same step instead, so this loops over the
//! environments itself.) `step` simulates without the GIL, so vectors in other Python
//! threads step meanwhile.

use crate::env::Phase;
use crate::{Exclusive, ResetNeeded, env_config, new_array, parse_task, read_finite_rows};
use numpy::{PyArray1, PyArray2, PyReadonlyArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use sim::rng::Rng;
use sim::{Env, Step, TaskSpec, make_env};

/// What `reset` returns: observations and the seeds used (0 where not reset).
type ResetOut<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray1<u64>>);

/// What `step` returns: observations, rewards, terminated, truncated, success, which
/// environments were autoreset, and the seeds they were reset with (0 where not).
type StepOut<'py> = (
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<bool>>,
    Bound<'py, PyArray1<bool>>,
    Bound<'py, PyArray1<bool>>,
    Bound<'py, PyArray1<bool>>,
    Bound<'py, PyArray1<u64>>,
);

/// `n` environments of one task, each with its own seed stream (as [`crate::env::PyEnv`]).
#[pyclass(module = "expo_sim._core", name = "VecEnv")]
pub struct PyVecEnv {
    envs: Exclusive<Vec<Box<dyn Env>>>,
    spec: &'static TaskSpec,
    seeds: Vec<Rng>,
    phases: Vec<Phase>,
    // Per-call scratch, kept to avoid allocating per step.
    actions: Vec<f32>,
    steps: Vec<Step>,
    reset: Vec<bool>,
    reset_seeds: Vec<u64>,
}

#[pymethods]
impl PyVecEnv {
    /// `seed_streams[i]` starts environment `i`'s seed stream; its length is the number of
    /// environments.
    #[new]
    #[pyo3(signature = (task, seed_streams, reward = "sparse", gravity = false))]
    fn new(task: &str, seed_streams: Vec<u64>, reward: &str, gravity: bool) -> PyResult<Self> {
        let task = parse_task(task)?;
        let config = env_config(task, reward, gravity)?;
        let n = seed_streams.len();
        if n == 0 {
            return Err(PyValueError::new_err(
                "a vector needs at least one environment",
            ));
        }
        Ok(PyVecEnv {
            envs: Exclusive::new((0..n).map(|_| make_env(task, config)).collect()),
            spec: task.spec(),
            seeds: seed_streams.into_iter().map(Rng::new).collect(),
            phases: vec![Phase::New; n],
            actions: vec![0.0; n * task.spec().action_dim()],
            steps: vec![Step::default(); n],
            reset: vec![false; n],
            reset_seeds: vec![0; n],
        })
    }

    #[getter]
    fn num_envs(&self) -> usize {
        self.phases.len()
    }

    /// Resets the environments selected by `mask` (all if `None`). `seeds[i]` is the seed
    /// for environment `i` (restarting its stream as `Env.reset` does) or `None` for the
    /// next value of its stream. Returns every environment's observation (the current one
    /// where not reset) and the seeds used (0 where not reset).
    #[pyo3(signature = (seeds, mask = None))]
    fn reset<'py>(
        &mut self,
        py: Python<'py>,
        seeds: Vec<Option<u64>>,
        mask: Option<Vec<bool>>,
    ) -> PyResult<ResetOut<'py>> {
        let n = self.phases.len();
        let mask = mask.unwrap_or_else(|| vec![true; n]);
        if seeds.len() != n || mask.len() != n {
            return Err(PyValueError::new_err(format!(
                "seeds and mask must have one entry per environment ({n}), got {} and {}",
                seeds.len(),
                mask.len()
            )));
        }
        if let Some(i) = (0..n).find(|&i| !mask[i] && self.phases[i] == Phase::New) {
            // It has no observation to return yet.
            return Err(ResetNeeded::new_err(format!(
                "environment {i} was never reset; the first reset must include every \
                 environment (no reset_mask)"
            )));
        }
        for i in (0..n).filter(|&i| mask[i]) {
            self.reset_seeds[i] = match seeds[i] {
                Some(s) => {
                    self.seeds[i] = Rng::new(s);
                    s
                }
                None => self.seeds[i].next_u64(),
            };
        }
        let od = self.spec.obs_dim();
        let envs = self.envs.get();
        let (obs, ()) = new_array(py, [n, od], |obs: &mut [f32]| {
            for (i, (env, o)) in envs.iter_mut().zip(obs.chunks_exact_mut(od)).enumerate() {
                if mask[i] {
                    env.reset(self.reset_seeds[i], o);
                    self.phases[i] = Phase::Running;
                } else {
                    env.observe(o);
                }
            }
        });
        let used = (0..n).map(|i| if mask[i] { self.reset_seeds[i] } else { 0 });
        Ok((obs, PyArray1::from_iter(py, used)))
    }

    /// Steps every environment once (NEXT_STEP autoreset, see the module docs).
    /// `actions` has shape `(num_envs, action_dim)`; every row must be finite except the
    /// rows of environments that autoreset in this step, which are ignored (as
    /// `gymnasium.vector.SyncVectorEnv` ignores them).
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        actions: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<StepOut<'py>> {
        let n = self.phases.len();
        if let Some(i) = self.phases.iter().position(|&p| p == Phase::New) {
            return Err(ResetNeeded::new_err(format!(
                "environment {i} was never reset; call reset() before step()"
            )));
        }
        let (od, ad) = (self.spec.obs_dim(), self.spec.action_dim());
        let phases = &self.phases;
        read_finite_rows("actions", &actions, &[n, ad], &mut self.actions, |i| {
            !matches!(phases[i], Phase::Ended { .. })
        })?;
        let envs = self.envs.get();
        let (obs, ()) = new_array(py, [n, od], |obs: &mut [f32]| {
            // Without the GIL: other Python threads (another vector's `step`) run
            // meanwhile. The new array has not reached Python yet, and this object is
            // borrowed mutably for the call (a second thread's call on it raises).
            py.detach(|| {
                for (i, (env, o)) in envs.iter_mut().zip(obs.chunks_exact_mut(od)).enumerate() {
                    self.reset[i] = matches!(self.phases[i], Phase::Ended { .. });
                    if self.reset[i] {
                        self.reset_seeds[i] = self.seeds[i].next_u64();
                        env.reset(self.reset_seeds[i], o);
                        self.steps[i] = Step::default();
                        self.phases[i] = Phase::Running;
                    } else {
                        let step = env.step(&self.actions[i * ad..(i + 1) * ad], o);
                        self.steps[i] = step;
                        if step.done() {
                            self.phases[i] = Phase::Ended {
                                terminated: step.terminated,
                            };
                        }
                    }
                }
            })
        });
        let steps = &self.steps;
        let reset = &self.reset;
        Ok((
            obs,
            PyArray1::from_iter(py, steps.iter().map(|s| f64::from(s.reward))),
            PyArray1::from_iter(py, steps.iter().map(|s| s.terminated)),
            PyArray1::from_iter(py, steps.iter().map(|s| s.truncated)),
            PyArray1::from_iter(py, steps.iter().map(|s| s.success)),
            PyArray1::from_slice(py, reset),
            PyArray1::from_iter(
                py,
                (0..n).map(|i| if reset[i] { self.reset_seeds[i] } else { 0 }),
            ),
        ))
    }
}
