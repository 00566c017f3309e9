//! burn's per-parameter Adam and AdamW (`compute.optimizer = "per-parameter"`, and the
//! temperature's optimizer in every run), with checkpoints restored on the run's device.
//!
//! burn-optim 0.22.0-pre.3 rebuilds a loaded optimizer's state on burn's *default*
//! device (`ModuleOptimizer::load_record`), and moves it to each parameter's device at
//! the next step. With a GPU backend compiled in, the default device is that GPU
//! whatever the run's `--device`: a CPU run of a `webgpu` or `cuda` build that loaded a
//! checkpoint (resume, `evaluate`, `export`, `finetune`) initialised the GPU, and
//! panicked on a machine without one. [`RunDevice`] wraps the optimizer so that its
//! state is rebuilt on the device [`load`] names; the state's records are burn's own,
//! name for name, so checkpoints written before this wrapper load unchanged.
//!
//! [`load`] also reads the file into memory first: burn's file loader leaves the tensors'
//! bytes to be read lazily, and on the wgpu backend that read failed ("failed to fill
//! whole buffer") for the temperature's one-element moments.
//!
//! [`load`] checks the state it rebuilt as the fused optimizer's load does: every moment
//! finite, second moments non-negative, step counts within `i32` (Adam's bias correction
//! raises β to it). A state saved after a step on NaN gradients loaded, and the next
//! step made every parameter NaN (the divergence check then blamed the learning rates).

use anyhow::{Result, bail};
use burn::optim::{
    AdamConfig, AdamWConfig, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink,
    StateSource,
};
use burn::tensor::{Bytes, Device, Tensor};
use std::cell::RefCell;
use std::path::Path;

thread_local! {
    /// The device [`load`] restores states on, while it runs on this thread.
    static LOAD_DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
    /// The first damage [`load`] found in a rebuilt state, while it runs on this thread.
    static LOAD_DAMAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// burn's Adam (`weight_decay` 0) or AdamW with ε `epsilon` and burn's β defaults.
pub fn adam(weight_decay: f32, epsilon: f32) -> ModuleOptimizer {
    if weight_decay > 0.0 {
        let config = AdamWConfig::new()
            .with_weight_decay(weight_decay)
            .with_epsilon(epsilon);
        ModuleOptimizer::from(RunDevice(config.build()))
    } else {
        let config = AdamConfig::new().with_epsilon(epsilon);
        ModuleOptimizer::from(RunDevice(config.build()))
    }
}

/// `fresh` (from [`adam`]) with the state saved at `path`, rebuilt on `device`.
pub fn load(fresh: ModuleOptimizer, path: &Path, device: &Device) -> Result<ModuleOptimizer> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read ({e})", path.display()))?;
    LOAD_DEVICE.with(|d| *d.borrow_mut() = Some(device.clone()));
    LOAD_DAMAGE.with(|d| *d.borrow_mut() = None);
    let loaded = fresh.from_bytes(Bytes::from_bytes_vec(bytes));
    LOAD_DEVICE.with(|d| *d.borrow_mut() = None);
    let loaded = loaded.map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
    if let Some(damage) = LOAD_DAMAGE.with(|d| d.borrow_mut().take()) {
        bail!("{}: {damage} (damaged?)", path.display());
    }
    Ok(loaded)
}

/// What is wrong with one parameter's rebuilt state (`None`: nothing): a moment that is
/// not finite (a second moment below zero), a step count past `i32::MAX`.
fn damage_in(state: &StateSink) -> Option<String> {
    for (name, data) in &state.tensors {
        let second_moment = name.ends_with("moment_2");
        let bad = data
            .iter::<f32>()
            .enumerate()
            .find(|&(_, x)| !x.is_finite() || (second_moment && x < 0.0));
        if let Some((i, x)) = bad {
            let what = if second_moment {
                "not finite and non-negative"
            } else {
                "not finite"
            };
            return Some(format!("{name}[{i}] is {x} ({what})"));
        }
    }
    for (name, value) in &state.scalars {
        if name.ends_with(".time") {
            match u64::try_from(*value) {
                Ok(t) if t <= i32::MAX as u64 => {}
                _ => return Some(format!("step count {name} is {value:?}, beyond any run's")),
            }
        }
    }
    None
}

/// An optimizer whose loaded state lands on [`load`]'s device.
#[derive(Clone)]
pub struct RunDevice<O>(O);

/// [`RunDevice`]'s state: the wrapped optimizer's, recorded under the same names.
#[derive(Clone)]
pub struct RunDeviceState<S>(S);

impl<S: RecordState> RecordState for RunDeviceState<S> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.0.state_flatten(prefix, out)
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let run_device = LOAD_DEVICE.with(|d| d.borrow().clone());
        let state = S::state_unflatten(prefix, src, run_device.as_ref().unwrap_or(device))?;
        // Read back once per load: the temperature's one element, or a network's moments
        // with `compute.optimizer = "per-parameter"`.
        let mut sink = StateSink::default();
        state.state_flatten(prefix, &mut sink);
        if let Some(damage) = damage_in(&sink) {
            LOAD_DAMAGE.with(|d| {
                d.borrow_mut().get_or_insert(damage);
            });
        }
        Some(Self(state))
    }
}

impl<O: Optimizer> Optimizer for RunDevice<O> {
    type State<const D: usize> = RunDeviceState<O::State<D>>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (tensor, state) = self.0.step(lr, tensor, grad, state.map(|s| s.0));
        (tensor, state.map(RunDeviceState))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        RunDeviceState(O::to_device(state.0, device))
    }
}
