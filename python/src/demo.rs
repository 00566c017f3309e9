//! The scripted demonstrators (`expo_sim._core.Demonstrator`) and `record_episode`.

use crate::{Exclusive, ResetNeeded, env_config, new_array, parse_task, read_finite};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sim::{Demonstrator, TaskSpec, demonstrator_seed, make_demonstrator, make_env};

/// A task's scripted demonstrator.
///
/// `reset(seed)` takes the *episode* seed (the one the environment is reset with) and
/// derives the demonstrator's own stream from it exactly as `sim::record_episode` does,
/// so `env.reset(seed=s)` + `demo.reset(s)` + acting until the episode ends replays
/// `record_episode(task, s)`.
#[pyclass(module = "expo_sim._core", name = "Demonstrator")]
pub struct PyDemonstrator {
    demo: Exclusive<Box<dyn Demonstrator>>,
    spec: &'static TaskSpec,
    started: bool,
    obs: Vec<f32>,
}

#[pymethods]
impl PyDemonstrator {
    #[new]
    fn new(task: &str) -> PyResult<Self> {
        let task = parse_task(task)?;
        Ok(PyDemonstrator {
            demo: Exclusive::new(make_demonstrator(task)),
            spec: task.spec(),
            started: false,
            obs: vec![0.0; task.spec().obs_dim()],
        })
    }

    /// Starts an episode whose environment was reset with `seed`.
    fn reset(&mut self, seed: u64) {
        self.demo.get().reset(demonstrator_seed(seed));
        self.started = true;
    }

    /// The action for observation `obs` (shape `(obs_dim,)`, finite), in `[-1, 1]`.
    fn act<'py>(
        &mut self,
        py: Python<'py>,
        obs: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        if !self.started {
            return Err(ResetNeeded::new_err("call reset(seed) before act()"));
        }
        read_finite("obs", &obs, &[self.spec.obs_dim()], &mut self.obs)?;
        let demo = self.demo.get();
        let obs = &self.obs;
        let (action, ()) = new_array(py, self.spec.action_dim(), |a| demo.act(obs, a));
        Ok(action)
    }

    #[getter]
    fn task(&self) -> &'static str {
        self.spec.id.name()
    }
}

/// Runs one demonstrator episode from `seed` (`sim::record_episode`) and returns it as a
/// dict of arrays: `observations`, `next_observations` (`(T, obs_dim)` float32),
/// `actions` (`(T, action_dim)` float32), `rewards` (`(T,)` float32), `terminated`,
/// `truncated`, `success` (`(T,)` bool).
#[pyfunction]
#[pyo3(signature = (task, seed, reward = "sparse", gravity = false))]
pub fn record_episode<'py>(
    py: Python<'py>,
    task: &str,
    seed: u64,
    reward: &str,
    gravity: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let task = parse_task(task)?;
    let spec = task.spec();
    let mut env = make_env(task, env_config(task, reward, gravity)?);
    let mut demo = make_demonstrator(task);
    // Without the GIL, so other Python threads run meanwhile.
    let traj = py.detach(|| sim::record_episode(env.as_mut(), demo.as_mut(), seed));
    let rows = traj.len();
    let matrix = |data: Vec<f32>, cols: usize| {
        Array2::from_shape_vec((rows, cols), data)
            .expect("trajectory arrays are rows x dim")
            .into_pyarray(py)
    };
    let d = PyDict::new(py);
    d.set_item("observations", matrix(traj.observations, spec.obs_dim()))?;
    d.set_item(
        "next_observations",
        matrix(traj.next_observations, spec.obs_dim()),
    )?;
    d.set_item("actions", matrix(traj.actions, spec.action_dim()))?;
    d.set_item("rewards", traj.rewards.into_pyarray(py))?;
    d.set_item("terminated", traj.terminated.into_pyarray(py))?;
    d.set_item("truncated", traj.truncated.into_pyarray(py))?;
    d.set_item("success", traj.success.into_pyarray(py))?;
    Ok(d)
}
