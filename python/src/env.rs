//! One environment: `expo_sim._core.Env`, the engine of `expo_sim.SimEnv`.

use crate::{Exclusive, ResetNeeded, env_config, new_array, parse_task, read_finite, scene_to_py};
use numpy::{PyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sim::rng::Rng;
use sim::{Env, Scene, TaskSpec, make_env};

/// What `step` returns: `(obs, reward, terminated, truncated, success)`.
type StepOut<'py> = (Bound<'py, PyArray1<f32>>, f64, bool, bool, bool);

/// Where an environment is in its episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Never reset.
    New,
    Running,
    /// The last step terminated or truncated the episode.
    Ended {
        terminated: bool,
    },
}

/// One simulated environment.
///
/// `reset(seed)` resets the simulator with exactly `seed` and restarts the environment's
/// seed stream at `sim::rng::Rng::new(seed)`; `reset(None)` resets with the stream's next
/// value. The stream starts at `Rng::new(seed_stream)` (the constructor's argument).
#[pyclass(module = "expo_sim._core", name = "Env")]
pub struct PyEnv {
    env: Exclusive<Box<dyn Env>>,
    spec: &'static TaskSpec,
    seeds: Rng,
    phase: Phase,
    action: Vec<f32>,
}

#[pymethods]
impl PyEnv {
    #[new]
    #[pyo3(signature = (task, reward = "sparse", gravity = false, seed_stream = 0))]
    fn new(task: &str, reward: &str, gravity: bool, seed_stream: u64) -> PyResult<Self> {
        let task = parse_task(task)?;
        let env = make_env(task, env_config(task, reward, gravity)?);
        Ok(PyEnv {
            env: Exclusive::new(env),
            spec: task.spec(),
            seeds: Rng::new(seed_stream),
            phase: Phase::New,
            action: vec![0.0; task.spec().action_dim()],
        })
    }

    /// Starts an episode; returns `(obs, seed)` where `seed` is the simulator seed used.
    #[pyo3(signature = (seed = None))]
    fn reset<'py>(
        &mut self,
        py: Python<'py>,
        seed: Option<u64>,
    ) -> (Bound<'py, PyArray1<f32>>, u64) {
        let seed = match seed {
            Some(s) => {
                self.seeds = Rng::new(s);
                s
            }
            None => self.seeds.next_u64(),
        };
        let env = self.env.get();
        let (obs, ()) = new_array(py, self.spec.obs_dim(), |o| env.reset(seed, o));
        self.phase = Phase::Running;
        (obs, seed)
    }

    /// One control step; returns `(obs, reward, terminated, truncated, success)`.
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        action: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<StepOut<'py>> {
        match self.phase {
            Phase::New => return Err(ResetNeeded::new_err("call reset() before step()")),
            Phase::Ended { terminated } => {
                let how = if terminated {
                    "terminated"
                } else {
                    "truncated"
                };
                return Err(ResetNeeded::new_err(format!(
                    "the episode has ended ({how}); call reset() before step()"
                )));
            }
            Phase::Running => {}
        }
        read_finite(
            "action",
            &action,
            &[self.spec.action_dim()],
            &mut self.action,
        )?;
        let env = self.env.get();
        let action = &self.action;
        let (obs, step) = new_array(py, self.spec.obs_dim(), |o| env.step(action, o));
        if step.done() {
            self.phase = Phase::Ended {
                terminated: step.terminated,
            };
        }
        Ok((
            obs,
            f64::from(step.reward),
            step.terminated,
            step.truncated,
            step.success,
        ))
    }

    /// The current state for plotting: `task`, `t` (control steps in this episode), `obs`
    /// and `shapes` (the scene geometry in metres, a list of dicts).
    fn state<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self.phase == Phase::New {
            return Err(ResetNeeded::new_err("call reset() before state()"));
        }
        let env = self.env.get();
        let mut scene = Scene::default();
        env.scene(&mut scene);
        let (obs, ()) = new_array(py, self.spec.obs_dim(), |o| env.observe(o));
        let d = PyDict::new(py);
        d.set_item("task", self.spec.id.name())?;
        d.set_item("t", env.t())?;
        d.set_item("obs", obs)?;
        d.set_item("shapes", scene_to_py(py, &scene)?)?;
        Ok(d)
    }

    #[getter]
    fn task(&self) -> &'static str {
        self.spec.id.name()
    }
}
