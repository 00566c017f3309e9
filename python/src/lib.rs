//! `expo_sim._core`: the Rust half of the `expo_sim` Python package.
//!
//! Thin bindings over the `sim` crate: one environment ([`env::PyEnv`]), a vector of
//! environments stepped in one call ([`vec_env::PyVecEnv`]), the scripted demonstrators
//! and `record_episode` ([`demo`]). The Gymnasium classes are pure Python
//! (`python/expo_sim/`) and built on these.
//!
//! Arrays cross the boundary as NumPy arrays: inputs are read in place, outputs are new
//! arrays that the simulator writes into directly (no per-environment Python objects).
//!
//! Every entry point checks its input and raises a Python exception rather than
//! panicking: an array of the wrong shape or with a NaN/inf value (`ValueError`), an
//! unknown task id or reward name (`ValueError`, listing the valid ones), and a call out
//! of order such as stepping before `reset` or after the episode ended ([`ResetNeeded`],
//! a `RuntimeError`). A wrong dtype is refused by the argument conversion (`TypeError`);
//! the Python wrapper converts floating-point input to float32 before calling in. The
//! simulator itself clamps non-finite actions silently (NaN to 0, ±inf to ±1); these
//! bindings refuse them instead, so that a policy producing NaN is noticed.

use numpy::ndarray::{Dimension, IntoDimension};
use numpy::{Element, PyArray, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use sim::{EnvConfig, Reward, Scene, Shape, ShapeKind, TaskId};
use std::sync::{Mutex, PoisonError};

mod demo;
mod env;
mod vec_env;

create_exception!(
    expo_sim._core,
    ResetNeeded,
    PyRuntimeError,
    "Raised when an environment or demonstrator is used before `reset`, or an environment \
     is stepped after its episode ended (terminated or truncated) without a `reset`."
);

/// Gives `&mut` access to a value that is `Send` but not `Sync` (the simulator's boxed
/// trait objects) from a `#[pyclass]`, which must be `Sync`.
///
/// Every method of the classes here takes `&mut self` (PyO3 enforces the exclusive
/// borrow at run time), so [`Mutex::get_mut`] reaches the value without ever locking.
struct Exclusive<T>(Mutex<T>);

impl<T> Exclusive<T> {
    fn new(value: T) -> Self {
        Exclusive(Mutex::new(value))
    }

    fn get(&mut self) -> &mut T {
        // Never locked, so never poisoned; recover the value regardless.
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Parses a task id, listing the valid ones in the error.
fn parse_task(task: &str) -> PyResult<TaskId> {
    task.parse()
        .map_err(|e: sim::UnknownTask| PyValueError::new_err(e.to_string()))
}

/// The simulator options for `task` from the Python keyword arguments.
fn env_config(task: TaskId, reward: &str, gravity: bool) -> PyResult<EnvConfig> {
    let reward = match reward {
        "sparse" => Reward::Sparse,
        "dense" => Reward::Dense,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown reward '{other}': expected one of sparse, dense"
            )));
        }
    };
    let config = EnvConfig { reward, gravity };
    config.check_for(task).map_err(PyValueError::new_err)?;
    Ok(config)
}

/// A new C-contiguous NumPy array of `shape`, filled in place by `fill`.
fn new_array<'py, T, D, R>(
    py: Python<'py>,
    shape: impl IntoDimension<Dim = D>,
    fill: impl FnOnce(&mut [T]) -> R,
) -> (Bound<'py, PyArray<T, D>>, R)
where
    T: Element,
    D: Dimension,
{
    let array = PyArray::<T, D>::zeros(py, shape, false);
    let result = fill(
        array
            .readwrite()
            .as_slice_mut()
            .expect("a new array is contiguous"),
    );
    (array, result)
}

/// Copies `input` (any strides) into `out` after checking its shape and that every value
/// is finite. `what` names the argument in error messages ("action", "actions", "obs").
fn read_finite<D: Dimension>(
    what: &str,
    input: &numpy::PyReadonlyArray<'_, f32, D>,
    shape: &[usize],
    out: &mut [f32],
) -> PyResult<()> {
    read_finite_rows(what, input, shape, out, |_| true)
}

/// As [`read_finite`], checking finiteness only in the rows (first index) for which
/// `check(row)` holds: the others are copied as they are, for a caller that ignores
/// them (a vector environment's autoresetting members).
fn read_finite_rows<D: Dimension>(
    what: &str,
    input: &numpy::PyReadonlyArray<'_, f32, D>,
    shape: &[usize],
    out: &mut [f32],
    check: impl Fn(usize) -> bool,
) -> PyResult<()> {
    // A view at an odd byte offset or with odd strides (`np.frombuffer(.., offset=1)`)
    // may not be read as f32 at all; the Python wrappers copy such arrays, this catches
    // a direct call of `_core`.
    if !input.is_aligned() {
        return Err(PyValueError::new_err(format!(
            "{what} must be an aligned array (copy it with np.require(.., requirements=\"ALIGNED\"))"
        )));
    }
    let view = input.as_array();
    if view.shape() != shape {
        return Err(PyValueError::new_err(format!(
            "{what} must have shape {}, got {}",
            fmt_shape(shape),
            fmt_shape(view.shape())
        )));
    }
    let per_row = shape.iter().skip(1).product::<usize>().max(1);
    for (i, (dst, &src)) in out.iter_mut().zip(view.iter()).enumerate() {
        if !src.is_finite() && (shape.len() < 2 || check(i / per_row)) {
            let index: Vec<usize> = unravel(i, shape);
            return Err(PyValueError::new_err(format!(
                "{what} must be finite, got {src} at index {}",
                fmt_shape(&index)
            )));
        }
        *dst = src;
    }
    Ok(())
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (k, &n) in shape.iter().enumerate().rev() {
        index[k] = flat % n;
        flat /= n;
    }
    index
}

/// Python's tuple notation: `(2,)`, `(64, 2)`.
fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|n| n.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// The scene geometry as a list of dicts, e.g.
/// `{"kind": "robot", "type": "segment", "x0": .., "y0": .., "x1": .., "y1": .., "width": ..}`.
fn scene_to_py<'py>(py: Python<'py>, scene: &Scene) -> PyResult<Bound<'py, pyo3::types::PyList>> {
    use pyo3::types::{PyDict, PyList};
    let list = PyList::empty(py);
    for (kind, shape) in &scene.shapes {
        let d = PyDict::new(py);
        d.set_item(
            "kind",
            match kind {
                ShapeKind::Robot => "robot",
                ShapeKind::Object => "object",
                ShapeKind::Goal => "goal",
                ShapeKind::Obstacle => "obstacle",
                ShapeKind::Wall => "wall",
            },
        )?;
        let fields: &[(&str, f32)] = match *shape {
            Shape::Circle { x, y, r } => {
                d.set_item("type", "circle")?;
                &[("x", x), ("y", y), ("r", r)]
            }
            Shape::Segment {
                x0,
                y0,
                x1,
                y1,
                width,
            } => {
                d.set_item("type", "segment")?;
                &[
                    ("x0", x0),
                    ("y0", y0),
                    ("x1", x1),
                    ("y1", y1),
                    ("width", width),
                ]
            }
            Shape::Rect { x0, y0, x1, y1 } => {
                d.set_item("type", "rect")?;
                &[("x0", x0), ("y0", y0), ("x1", x1), ("y1", y1)]
            }
        };
        for &(key, value) in fields {
            d.set_item(key, value)?;
        }
        list.append(d)?;
    }
    Ok(list)
}

/// The valid task ids, in the simulator's order.
#[pyfunction]
fn task_ids() -> Vec<&'static str> {
    TaskId::ALL.iter().map(|t| t.name()).collect()
}

/// A task's static description: `id`, `description`, `obs_names`, `action_names`,
/// `obs_low`, `obs_high` (float32 arrays), `horizon`, `control_hz`, `substeps`.
#[pyfunction]
fn task_spec<'py>(py: Python<'py>, task: &str) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let spec = parse_task(task)?.spec();
    let d = pyo3::types::PyDict::new(py);
    d.set_item("id", spec.id.name())?;
    d.set_item("description", spec.description)?;
    d.set_item("obs_names", spec.obs_names.to_vec())?;
    d.set_item("action_names", spec.action_names.to_vec())?;
    d.set_item("obs_low", PyArray::from_slice(py, spec.obs_low))?;
    d.set_item("obs_high", PyArray::from_slice(py, spec.obs_high))?;
    d.set_item("horizon", spec.horizon)?;
    d.set_item("control_hz", spec.control_hz)?;
    d.set_item("substeps", spec.substeps)?;
    Ok(d)
}

/// Rust bindings for the EXPO simulated tasks; use the `expo_sim` package instead.
#[pymodule]
mod _core {
    use super::*;

    #[pymodule_export]
    use super::{
        demo::PyDemonstrator, demo::record_episode, env::PyEnv, task_ids, task_spec,
        vec_env::PyVecEnv,
    };

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("ResetNeeded", m.py().get_type::<ResetNeeded>())
    }
}
