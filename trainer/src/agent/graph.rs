//! Parts of an environment step as captured device graphs (`compute.graph`, issue 14):
//! the candidates and the UTD critic loop, the denoiser's and edit policy's updates, and
//! acting.
//!
//! On a GPU the critic loop is bound by the host's cost of issuing each of its ~4,000
//! operations, not by arithmetic. burn 0.22 can record a closure's launches once (a
//! CUDA graph, or wgpu's recorded passes; [`Recording`]) and replay them as one
//! dispatch. A replay reads and writes exactly the buffers recorded, so:
//!
//! ```text
//!  per step, on the host            cells (recorded buffers)          graph (recorded)
//!  batch ───────────────────────► obs_act rew next_obs γ·mask ─┐
//!  chain and edit noise, subsets  noise… ids factors eps       ├──► candidates (chains,
//!  bias corrections of t+1..t+U                                │    edits), then U × (scores,
//!  denoiser, edit policy ───────► their parameters (copies)    │    TD target, critic step,
//!                                 params m₁ m₂ target ─────────┘    Polyak)
//!                                   ▲                                        │
//!                                   └──── written back in place ─────────────┘
//! ```
//!
//! - Every input is a **cell**: a device tensor whose handle is the only one between
//!   replays, so the step's values are copied into the recorded buffer in place.
//! - Everything drawn at random is drawn before the replay, in the order the direct loop
//!   draws it: the candidates' noise, then each slice's scoring and evaluation subsets.
//! - The denoiser and the edit policy change after the loop, in another graph: their
//!   parameters (the fused optimizers' flat buffers) are inputs, copied in each step.
//! - Adam's bias corrections change every step: they are tensors, one pair per slice
//!   ([`FusedAdam::step_with`]), not recorded scalars.
//! - The loop ends by writing the critic's parameters, moments and target back into the
//!   state cells, so the next replay starts from them. The agent's networks and
//!   optimizer are the graph's outputs (buffers the replay rewrites).
//!
//! The updates ([`UpdateGraph`]: the denoiser's step with its EMA, the edit policy's
//! step, autodiff inside the recording) and acting ([`ActGraph`]) are recorded the same
//! way. The updates' cells are the last slice, the denoiser loss's draws, the edit noise,
//! α, the critic's parameters and the step values (the denoiser's learning rate decays);
//! their state is written back like the critic's. Acting's cells are the observations,
//! the draws, the critic subset and the parameters of the EMA denoiser, the edit policy
//! and the target critics; the action is its output. The temperature's update needs this
//! step's `log π` and stays outside.
//!
//! Per-slice values sit [`ALIGN`] elements apart so that each slice's is a view, not a
//! copy. On backends without graph support, or when recording fails (the reason is kept,
//! [`Recorded`]), each run re-runs the closure: the same code, so the CPU tests check
//! everything but the recording.

use super::*;
use crate::optim::{ALIGN, FlatLayout, FusedAdam, StepScalars};
use burn::backend::{Backend, BackendGraph, Dispatch, ExecutionError};
use burn::tensor::kind::Basic;
use std::cell::RefCell;
use std::rc::Rc;

/// A device tensor that the graph reads or writes where it was recorded.
type Cell<const D: usize, K = burn::tensor::Float> = Rc<RefCell<Tensor<D, K>>>;

fn cell<const D: usize, K: Basic>(t: Tensor<D, K>) -> Cell<D, K> {
    Rc::new(RefCell::new(t))
}

/// Copies `value` into the buffer of `cell`, in place when the graph was recorded (a
/// copy elsewhere would leave the recorded buffer stale).
fn overwrite<const D: usize, K: Basic>(
    cell: &Cell<D, K>,
    value: Tensor<D, K>,
    recorded: bool,
    what: &str,
) -> Result<()> {
    let mut c = cell.borrow_mut();
    anyhow::ensure!(
        c.dims() == value.dims(),
        "recorded graph: {what} is {:?}, the recorded buffer {:?}",
        value.dims(),
        c.dims()
    );
    anyhow::ensure!(
        !recorded || c.can_mut(),
        "recorded graph: the buffer of {what} is shared and cannot be written in place"
    );
    let ranges: [std::ops::Range<usize>; D] = c.dims().map(|d| 0..d);
    c.inplace(|c| c.slice_assign(ranges, value));
    Ok(())
}

/// Whether a part of the step replays as a recorded device graph.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "why", rename_all = "snake_case")]
pub enum Recorded {
    /// One dispatch per run (CUDA graph, or wgpu's recorded passes).
    Yes,
    /// The backend records nothing (the CPU backends): each run re-runs the operations.
    Unsupported,
    /// The backend records graphs but this one failed (the backend's reason): each run
    /// re-runs the operations, correct but without the saving.
    Failed(String),
}

impl std::fmt::Display for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recorded::Yes => write!(f, "recorded"),
            Recorded::Unsupported => write!(f, "re-run (the backend records no graphs)"),
            Recorded::Failed(why) => write!(f, "re-run (recording failed: {why})"),
        }
    }
}

/// Runs of the closure before it is recorded (as burn's `capture`): with `fusion` the
/// first run builds and tunes the fused kernels, and the later ones take the steady
/// path, whose buffers the pool must then hold, since an allocation inside the
/// recording would make the graph unreplayable.
const WARMUP_RUNS: usize = 3;

/// A closure recorded once as a device graph and replayed, or re-run where the backend
/// cannot record or recording failed. The same sequence as `burn::tensor::capture`
/// (prepare the allocator, warm up, record), but it keeps the backend's reason when
/// recording fails, where `capture` silently falls back: a user who asked for graphs
/// learns why a run is not faster ([`Agent::graphs`], the trainer's warning).
struct Recording<T> {
    device: Device,
    closure: Box<dyn FnMut() -> T>,
    /// The recorded run's output (its buffers are what each replay rewrites), or the
    /// last re-run's.
    output: T,
    graph: Option<BackendGraph<Dispatch>>,
    status: Recorded,
}

/// The reason of a backend error, on one line.
fn reason(e: ExecutionError) -> String {
    match e {
        ExecutionError::WithContext { reason } | ExecutionError::Generic { reason, .. } => {
            reason.split_whitespace().collect::<Vec<_>>().join(" ")
        }
    }
}

impl<T> Recording<T> {
    /// Records `closure` on `device`. It runs [`WARMUP_RUNS`] + 1 times (each run's
    /// effects on its cells must be undone by the caller, see [`StateCells::reset`]).
    fn new(device: &Device, mut closure: Box<dyn FnMut() -> T>, what: &str) -> Self {
        let d = device.as_dispatch();
        let prepared = Dispatch::graph_prepare(d).map_err(reason);
        for _ in 0..WARMUP_RUNS {
            // Kept until the sync: a lazy backend (fusion) skips work whose result is
            // dropped, and the recording must find the buffers that work allocates.
            let out = closure();
            let _ = Dispatch::sync(d);
            drop(out);
        }
        let (output, graph, status) = match Dispatch::graph_start_capture(d) {
            Ok(()) => {
                let output = closure();
                match Dispatch::graph_stop_capture(d) {
                    Ok(graph) => (output, Some(graph), Recorded::Yes),
                    Err(e) => (output, None, Recorded::Failed(reason(e))),
                }
            }
            // The CPU backends: nothing to record, and no error worth reporting.
            Err(_) if prepared.is_ok() && !is_gpu(device) => {
                (closure(), None, Recorded::Unsupported)
            }
            Err(e) => {
                let why = match prepared {
                    Err(p) => format!("preparing the allocator: {p}; then: {}", reason(e)),
                    Ok(()) => reason(e),
                };
                (closure(), None, Recorded::Failed(why))
            }
        };
        if let Recorded::Failed(why) = &status {
            eprintln!(
                "warning: compute.graph: the {what} could not be recorded as a device graph; \
                 it runs its operations directly (same results, without the saving): {why}"
            );
        }
        Recording {
            device: device.clone(),
            closure,
            output,
            graph,
            status,
        }
    }

    /// Runs the recorded graph (or the closure) and returns its output.
    ///
    /// # Safety
    /// As `burn::tensor::Graph::replay`: every buffer the closure touched while being
    /// recorded is alive, and no other stream or thread uses them during the replay; the
    /// inputs were written on this thread's stream.
    unsafe fn replay(&mut self) -> &T {
        match &self.graph {
            Some(graph) => {
                // Safety: the caller's contract.
                unsafe { Dispatch::graph_replay(self.device.as_dispatch(), graph) }
                    .expect("replaying a recorded graph");
            }
            None => self.output = (self.closure)(),
        }
        &self.output
    }

    fn is_recorded(&self) -> bool {
        self.graph.is_some()
    }
}

/// Whether `device` is a GPU backend's (where a failed recording is worth a warning):
/// not one of the CPU backends the trainer builds with (the recorded parts run on the
/// plain device, never an autodiff one).
fn is_gpu(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => false,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => false,
        _ => true,
    }
}

/// A copy of `t` in a buffer of its own.
fn own_copy(t: &Tensor<1>) -> Tensor<1> {
    t.clone() * 1.0
}

/// The buffers a recorded part updates: cells holding copies of the first buffers of a
/// fused optimizer (parameters, moments, and the target or EMA copy when it keeps one).
/// The recorded closure reads them at its start and writes the new values back at its
/// end, so that the next replay starts from them.
#[derive(Clone)]
struct StateCells(Vec<Cell<1>>);

impl StateCells {
    /// Cells with copies of `opt`'s first `n` buffers, and those buffers themselves (what
    /// the cells are reset to after recording: the warm-up runs step the copies).
    fn copy_of(opt: &FusedAdam, n: usize, what: &str) -> Result<(Self, Vec<Tensor<1>>)> {
        let current: Vec<Tensor<1>> = opt.buffers()[..n]
            .iter()
            .map(|b| {
                b.cloned().with_context(|| {
                    format!("recorded graph: the {what} optimizer has taken no step")
                })
            })
            .collect::<Result<_>>()?;
        let cells = current.iter().map(|b| cell(own_copy(b))).collect();
        Ok((StateCells(cells), current))
    }

    /// The cells' values, in order.
    fn read<const N: usize>(&self) -> [Tensor<1>; N] {
        std::array::from_fn(|i| self.0[i].borrow().clone())
    }

    /// Writes `opt`'s buffers back into the cells (in the recording: the write-back), and
    /// clears `in_place` unless every cell was the only handle to its buffer.
    fn write_back(&self, opt: &FusedAdam, in_place: &mut bool) {
        for (cell, new) in self.0.iter().zip(opt.buffers()) {
            let new = new.expect("buffers after a step").clone();
            let mut c = cell.borrow_mut();
            *in_place &= c.can_mut();
            let n = c.dims()[0];
            c.inplace(|c| c.slice_assign(0..n, new));
        }
    }

    /// Resets the cells to `values` (after recording).
    fn reset(&self, values: Vec<Tensor<1>>, recorded: bool, what: &str) -> Result<()> {
        for (cell, value) in self.0.iter().zip(values) {
            overwrite(cell, value, recorded, what)?;
        }
        Ok(())
    }
}

/// The networks that make candidates, as a graph takes them: modules whose parameters it
/// replaces by views of its cells (their values are not read) with the layouts of those
/// cells, and what the chains and the selection need.
#[derive(Clone)]
pub(super) struct PolicyTemplates {
    pub denoiser: (Denoiser, FlatLayout),
    /// With edits (`n_edit > 0`).
    pub edit: Option<(GaussianPolicy, FlatLayout)>,
    pub edit_scale: f32,
    pub params: SelectionParams,
    pub schedule: DiffusionSchedule,
    /// The chain's time steps ([`chain_times`]).
    pub times: Tensor<2>,
    /// The chains' per-step precision ([`Denoiser::with_step_precision`]).
    pub chain_dtype: FloatDType,
}

/// One run's inputs of the candidates: their draws and the parameters of the denoiser
/// and the edit policy (flat, in the templates' layouts).
pub(super) struct PolicyInputs {
    pub noise: CandidateNoise,
    pub denoiser: Tensor<1>,
    pub edit: Option<Tensor<1>>,
}

#[derive(Clone)]
struct PolicyCells {
    chain_noise: Vec<Cell<2>>,
    edit_noise: Option<Cell<2>>,
    denoiser: Cell<1>,
    edit: Option<Cell<1>>,
}

impl PolicyCells {
    fn new(templates: &PolicyTemplates, inputs: PolicyInputs) -> Result<Self> {
        let (den, layout) = &templates.denoiser;
        anyhow::ensure!(
            layout.matches(den) && layout.len() == inputs.denoiser.dims()[0],
            "recorded graph: the denoiser's parameters are not in its optimizer's layout"
        );
        anyhow::ensure!(
            templates.edit.is_some() == inputs.edit.is_some(),
            "recorded graph: edit policy parameters given without the policy, or missing"
        );
        if let (Some((edit, layout)), Some(flat)) = (&templates.edit, &inputs.edit) {
            anyhow::ensure!(
                layout.matches(edit) && layout.len() == flat.dims()[0],
                "recorded graph: the edit policy's parameters are not in its optimizer's layout"
            );
        }
        Ok(PolicyCells {
            chain_noise: inputs.noise.chain.into_iter().map(cell).collect(),
            edit_noise: inputs.noise.edit.map(cell),
            denoiser: cell(own_copy(&inputs.denoiser)),
            edit: inputs.edit.as_ref().map(|e| cell(own_copy(e))),
        })
    }

    fn write(&self, inputs: PolicyInputs, recorded: bool) -> Result<()> {
        anyhow::ensure!(
            self.chain_noise.len() == inputs.noise.chain.len(),
            "recorded graph: {} chain draws, {} recorded",
            inputs.noise.chain.len(),
            self.chain_noise.len()
        );
        for (cell, draw) in self.chain_noise.iter().zip(inputs.noise.chain) {
            overwrite(cell, draw, recorded, "chain noise")?;
        }
        if let (Some(cell), Some(draw)) = (&self.edit_noise, inputs.noise.edit) {
            overwrite(cell, draw, recorded, "edit noise")?;
        }
        overwrite(
            &self.denoiser,
            inputs.denoiser,
            recorded,
            "denoiser parameters",
        )?;
        if let (Some(cell), Some(flat)) = (&self.edit, inputs.edit) {
            overwrite(cell, flat, recorded, "edit policy parameters")?;
        }
        Ok(())
    }

    /// The candidates `(base [R, N, A], edited [R, n_edit, A])` for observations `obs`.
    fn candidates(&self, t: &PolicyTemplates, obs: Tensor<2>) -> (Tensor<3>, Option<Tensor<3>>) {
        let (den, den_layout) = &t.denoiser;
        let den = den_layout
            .assign(den.clone(), &self.denoiser.borrow().clone())
            .with_step_precision(t.chain_dtype);
        let edit = t
            .edit
            .as_ref()
            .zip(self.edit.as_ref())
            .map(|((e, layout), flat)| layout.assign(e.clone(), &flat.borrow().clone()));
        let noise = CandidateNoise {
            chain: self
                .chain_noise
                .iter()
                .map(|n| n.borrow().clone())
                .collect(),
            edit: self.edit_noise.as_ref().map(|n| n.borrow().clone()),
        };
        candidates_from(
            &den,
            edit.as_ref().map(|e| (e, t.edit_scale)),
            &t.schedule,
            obs,
            t.times.clone(),
            &t.params,
            noise,
        )
    }
}

/// One environment step's inputs of the critic loop, fresh on the device.
pub(super) struct LoopInputs {
    pub critic: CriticInputs,
    /// The candidates' draws, the online denoiser's and the edit policy's parameters.
    pub policy: PolicyInputs,
    /// Slice `i`'s scoring subset at `i·ALIGN ..`, its evaluation subset right after.
    pub ids: Tensor<1, Int>,
    /// Slice `i`'s bias corrections at `i·ALIGN` ([`FusedAdam::corrections`]).
    pub factors: Tensor<1>,
    pub eps: Tensor<1>,
}

impl LoopInputs {
    /// Each slice's member ids (its scoring then evaluation subset, or acting's one
    /// subset) at `i·ALIGN ..`, uploaded.
    pub fn subset_ids(subsets: &[Vec<usize>], device: &Device) -> Tensor<1, Int> {
        let n = subsets.len() * ALIGN;
        let mut ids = vec![0i64; n];
        for (i, subset) in subsets.iter().enumerate() {
            assert!(
                subset.len() <= ALIGN,
                "{} member ids per slice",
                subset.len()
            );
            for (j, &m) in subset.iter().enumerate() {
                ids[i * ALIGN + j] = m as i64;
            }
        }
        Tensor::from_data(TensorData::new(ids, [n]), device)
    }
}

/// The critic networks as the loop takes them (see [`PolicyTemplates`]), and the
/// critic's optimizer (hyperparameters, layout).
pub(super) struct LoopTemplates {
    pub critic: CriticEnsemble,
    pub target: CriticEnsemble,
    /// Gathers each slice's scoring subset from the target buffer.
    pub subsets: TargetSubsets,
    pub opt: FusedAdam,
    pub policy: PolicyTemplates,
}

/// What one run of the loop leaves: its metrics (means over the slices), the critic and
/// its target, the optimizer over the final buffers.
#[derive(Clone)]
pub(super) struct LoopOutput {
    pub metrics: LoopMetrics,
    pub critic: CriticEnsemble,
    pub target: CriticEnsemble,
    pub opt: FusedAdam,
}

/// The loop's sizes and constants.
#[derive(Clone)]
pub(super) struct LoopConsts {
    pub batch: usize,
    pub utd: usize,
    pub obs_dim: usize,
    pub act_dim: usize,
    pub rates: (f64, f32),
}

#[derive(Clone)]
struct LoopCells {
    obs_act: Cell<2>,
    rew: Cell<2>,
    next_obs: Cell<2>,
    discount: Cell<2>,
    policy: PolicyCells,
    ids: Cell<1, Int>,
    factors: Cell<1>,
    eps: Cell<1>,
}

/// The critic loop, recorded.
pub(super) struct CriticGraph {
    inputs: LoopCells,
    /// Parameters, first and second moments, target (the optimizer's flat buffers).
    state: StateCells,
    graph: Recording<LoopOutput>,
}

impl CriticGraph {
    /// Records the loop of the networks of `templates` (whose critic optimizer must have
    /// taken a step) with `inputs` as the first step's, without changing the networks:
    /// the recording's warm-up runs work on copies of the critic's state, which are then
    /// reset to it.
    pub fn capture(
        consts: LoopConsts,
        templates: LoopTemplates,
        inputs: LoopInputs,
        device: &Device,
    ) -> Result<Self> {
        let (state, current) = StateCells::copy_of(&templates.opt, 4, "critic")?;
        let c = inputs.critic;
        let cells = LoopCells {
            obs_act: cell(c.obs_act),
            rew: cell(c.rew),
            next_obs: cell(c.next_obs),
            discount: cell(c.discount),
            policy: PolicyCells::new(&templates.policy, inputs.policy)?,
            ids: cell(inputs.ids),
            factors: cell(inputs.factors),
            eps: cell(inputs.eps),
        };
        let in_place = Rc::new(std::cell::Cell::new(true));
        let closure = {
            let (cells, state, in_place) = (cells.clone(), state.clone(), in_place.clone());
            move || {
                let out = run_loop(&consts, &cells, &state, &templates);
                let mut all = true;
                state.write_back(&out.opt, &mut all);
                in_place.set(all);
                out
            }
        };
        let graph = Recording::new(device, Box::new(closure), "critic loop");
        let recorded = graph.is_recorded();
        anyhow::ensure!(
            !recorded || in_place.get(),
            "critic graph: the loop's state buffers are shared at its end, so the recorded \
             write-back would not reach them (set compute.graph = false)"
        );
        let g = CriticGraph {
            inputs: cells,
            state,
            graph,
        };
        // The warm-up runs advanced the state copies: back to the optimizer's.
        g.state.reset(current, recorded, "the critic state")?;
        Ok(g)
    }

    /// Runs the recorded loop on the inputs it holds (those of `capture` or the last
    /// `run`) and returns its outputs.
    pub fn replay(&mut self) -> LoopOutput {
        // Safety: the closure owns a handle to every cell and template it reads and the
        // graph owns the closure, so every recorded buffer lives as long as the graph;
        // the cells are written only in `run` and `capture`, between replays, on this
        // thread's device stream.
        unsafe { self.graph.replay() }.clone()
    }

    /// Runs the recorded loop on `inputs` and returns its outputs.
    pub fn run(&mut self, inputs: LoopInputs) -> Result<LoopOutput> {
        let recorded = self.graph.is_recorded();
        let (cells, c) = (&self.inputs, inputs.critic);
        overwrite(&cells.obs_act, c.obs_act, recorded, "obs_act")?;
        overwrite(&cells.rew, c.rew, recorded, "rewards")?;
        overwrite(&cells.next_obs, c.next_obs, recorded, "next observations")?;
        overwrite(&cells.discount, c.discount, recorded, "discounts")?;
        cells.policy.write(inputs.policy, recorded)?;
        overwrite(&cells.ids, inputs.ids, recorded, "critic subsets")?;
        overwrite(&cells.factors, inputs.factors, recorded, "bias corrections")?;
        overwrite(&cells.eps, inputs.eps, recorded, "bias corrections")?;
        Ok(self.replay())
    }

    /// Whether the backend recorded a device graph (else each run re-runs the closure).
    pub fn status(&self) -> &Recorded {
        &self.graph.status
    }
}

/// The loop itself: the candidates, then `utd` slices from the state cells; the same
/// operations as the direct loop of [`Agent::update_critic`] (the same functions).
fn run_loop(
    c: &LoopConsts,
    cells: &LoopCells,
    state: &StateCells,
    templates: &LoopTemplates,
) -> LoopOutput {
    let (b, od, ad) = (c.batch, c.obs_dim, c.act_dim);
    let (obs_act, rew, next_obs, discount) = (
        cells.obs_act.borrow().clone(),
        cells.rew.borrow().clone(),
        cells.next_obs.borrow().clone(),
        cells.discount.borrow().clone(),
    );
    // Next-action candidates of every slice, from this step's denoiser and edit policy.
    let policy = &templates.policy;
    let joined = Joined::new(
        next_obs.clone(),
        cells.policy.candidates(policy, next_obs.clone()),
    );
    // The critic loop.
    let [p, m1, m2, t] = state.read();
    let opt = &templates.opt;
    let layout = opt.layout().expect("a step taken before").clone();
    let mut critic = layout.assign(templates.critic.clone(), &p);
    let mut target = layout.assign(templates.target.clone(), &t);
    let mut opt = NetOptimizer::Fused(Box::new(opt.with_buffers([p, m1, m2], Some(t))));
    let ids = cells.ids.borrow().clone();
    let (factors, eps) = (cells.factors.borrow().clone(), cells.eps.borrow().clone());
    let k = policy.params.critic_subset;
    let mut sums = LoopSums::default();
    for i in 0..c.utd {
        let r = i * b..(i + 1) * b;
        let at = i * ALIGN;
        let members = |from: usize| {
            templates.subsets.subset(
                fused_buffer(&opt, 3).expect("a target buffer").0,
                &ids.clone().slice(from..from + k),
            )
        };
        let (scoring, evaluation) = (members(at), members(at + k));
        let q_next = select_given(
            &target,
            next_obs.clone().slice([r.clone(), 0..od]),
            joined.rows(r.clone()),
            scoring,
            &policy.params,
            &policy.schedule,
            Selected::Value(evaluation),
        );
        let y = td_target(&rew, &discount, r.clone(), q_next);
        let x = obs_act.clone().slice([r, 0..od + ad]);
        let scalars = StepScalars {
            factor: factors.clone().slice(at..at + 1),
            eps: eps.clone().slice(at..at + 1),
            lr: None,
        };
        (critic, target) = critic_slice_step(
            (critic, target),
            &mut opt,
            x,
            y,
            c.rates,
            Some(&scalars),
            // A recorded graph is one stream of device operations.
            1,
            &mut sums,
            &mut |_| {},
        );
    }
    let NetOptimizer::Fused(opt) = opt else {
        unreachable!("built fused above")
    };
    LoopOutput {
        metrics: sums.means(),
        critic,
        target,
        opt: *opt,
    }
}

/// One action's inputs: the observations `[K, O]` (normalized), the candidates' draws
/// and the EMA denoiser's and edit policy's parameters, the target critics' parameters
/// (flat, in the target template's layout) and the scoring subset's member indices.
pub(super) struct ActInputs {
    pub obs: Tensor<2>,
    pub policy: PolicyInputs,
    pub target: Tensor<1>,
    pub ids: Tensor<1, Int>,
}

/// Acting (EXPO's on-the-fly selection for `K` observations), recorded.
pub(super) struct ActGraph {
    obs: Cell<2>,
    policy: PolicyCells,
    target: Cell<1>,
    ids: Cell<1, Int>,
    graph: Recording<Tensor<2>>,
}

impl ActGraph {
    /// Records acting with the networks of `policy` and the target critics `target`
    /// (module and the layout of its flat parameters), with `inputs` as the first
    /// action's. Changes no network.
    pub fn capture(
        policy: PolicyTemplates,
        target: (CriticEnsemble, FlatLayout),
        subsets: TargetSubsets,
        inputs: ActInputs,
        device: &Device,
    ) -> Result<Self> {
        anyhow::ensure!(
            target.1.matches(&target.0) && target.1.len() == inputs.target.dims()[0],
            "act graph: the target critics' parameters are not in their optimizer's layout"
        );
        let (obs, target_cell) = (cell(inputs.obs), cell(own_copy(&inputs.target)));
        let cells = PolicyCells::new(&policy, inputs.policy)?;
        let ids = cell(inputs.ids);
        let closure = {
            let (obs, cells, target_cell, ids) =
                (obs.clone(), cells.clone(), target_cell.clone(), ids.clone());
            move || {
                let obs = obs.borrow().clone();
                let candidates = Joined::new(obs.clone(), cells.candidates(&policy, obs.clone()));
                let (critics, layout) = &target;
                let flat = target_cell.borrow().clone();
                let subset = subsets.subset(&flat, &ids.borrow());
                let critics = layout.assign(critics.clone(), &flat);
                select_given(
                    &critics,
                    obs,
                    candidates,
                    subset,
                    &policy.params,
                    &policy.schedule,
                    Selected::Action,
                )
            }
        };
        let graph = Recording::new(device, Box::new(closure), "acting");
        Ok(ActGraph {
            obs,
            policy: cells,
            target: target_cell,
            ids,
            graph,
        })
    }

    /// Whether the backend recorded a device graph (else each run re-runs the closure).
    pub fn status(&self) -> &Recorded {
        &self.graph.status
    }

    /// Observations per action (the recorded `K`).
    pub fn rows(&self) -> usize {
        self.obs.borrow().dims()[0]
    }

    /// The actions `[K, A]` for the inputs it holds (those of `capture` or the last
    /// `run`).
    pub fn replay(&mut self) -> Tensor<2> {
        // Safety: as for `CriticGraph::replay`: the closure owns a handle to every cell
        // and template it reads, the graph owns the closure, and the cells are written
        // only in `run`, between replays, on this thread's device stream.
        unsafe { self.graph.replay() }.clone()
    }

    /// The actions `[K, A]` for `inputs`.
    pub fn run(&mut self, inputs: ActInputs) -> Result<Tensor<2>> {
        let recorded = self.graph.is_recorded();
        overwrite(&self.obs, inputs.obs, recorded, "observations")?;
        self.policy.write(inputs.policy, recorded)?;
        overwrite(
            &self.target,
            inputs.target,
            recorded,
            "target critic parameters",
        )?;
        overwrite(&self.ids, inputs.ids, recorded, "critic subset")?;
        Ok(self.replay())
    }
}

/// One step's inputs of the denoiser's and the edit policy's updates (plain device):
/// the last slice's observations and actions, the denoiser loss's draws, and the
/// denoiser optimizer's step values at `ALIGN` spacing (`[factor, ε term, lr, 1 − lr·λ]`,
/// [`FusedAdam::step_values`]).
pub(super) struct UpdateInputs {
    pub obs: Tensor<2>,
    pub act: Tensor<2>,
    pub draws: DenoiserDraws,
    pub denoiser_scalars: Tensor<1>,
    pub edit: Option<EditInputs>,
}

/// The edit update's inputs: its noise, α `[1]`, the online critics' parameters (flat)
/// and the policy optimizer's step values (`[factor, ε term]` at `ALIGN` spacing).
pub(super) struct EditInputs {
    pub noise: Tensor<2>,
    pub alpha: Tensor<1>,
    pub critic: Tensor<1>,
    pub scalars: Tensor<1>,
}

/// Step values `values` at `ALIGN` spacing, uploaded.
pub(super) fn spaced(values: &[f32], device: &Device) -> Tensor<1> {
    let mut v = vec![0f32; values.len() * ALIGN];
    for (i, x) in values.iter().enumerate() {
        v[i * ALIGN] = *x;
    }
    Tensor::from_data(TensorData::new(v, [values.len() * ALIGN]), device)
}

/// The updated networks as the graph takes them: the denoiser (autodiff) with its EMA
/// copy and optimizer (`ema_rate`), and with edits the edit policy (autodiff), its
/// optimizer, the online critics (autodiff) with their layout, β and the learning rate.
pub(super) struct UpdateTemplates {
    pub denoiser: Denoiser,
    pub ema: Denoiser,
    pub denoiser_opt: FusedAdam,
    pub ema_rate: f32,
    pub edit: Option<EditTemplates>,
}

pub(super) struct EditTemplates {
    pub edit: GaussianPolicy,
    pub opt: FusedAdam,
    pub critic: (CriticEnsemble, FlatLayout),
    pub edit_scale: f32,
    pub lr: f64,
}

/// What one run of the updates leaves.
#[derive(Clone)]
pub(super) struct UpdateOutput {
    pub denoiser_loss: Tensor<1>,
    pub denoiser: Denoiser,
    pub ema: Denoiser,
    pub denoiser_opt: FusedAdam,
    /// The edit policy, its optimizer, `log π` `[b, 1]` and the mean Q.
    pub edit: Option<(GaussianPolicy, FusedAdam, Tensor<2>, Tensor<1>)>,
}

#[derive(Clone)]
struct UpdateCells {
    obs: Cell<2>,
    act: Cell<2>,
    sa: Cell<2>,
    sb: Cell<2>,
    t: Cell<2>,
    eps: Cell<2>,
    denoiser_scalars: Cell<1>,
    edit: Option<EditCells>,
}

#[derive(Clone)]
struct EditCells {
    noise: Cell<2>,
    alpha: Cell<1>,
    critic: Cell<1>,
    scalars: Cell<1>,
}

/// The denoiser's and (EXPO) the edit policy's updates of an environment step, recorded.
/// The temperature's update, which needs `log π` of this one, stays outside.
pub(super) struct UpdateGraph {
    cells: UpdateCells,
    /// The denoiser's parameters, moments and EMA copy; the edit policy's parameters and
    /// moments.
    denoiser_state: StateCells,
    edit_state: Option<StateCells>,
    graph: Recording<UpdateOutput>,
}

impl UpdateGraph {
    /// Records the updates of the networks of `templates` with `inputs` as the first
    /// step's, without changing the networks (the warm-up runs step copies, which are
    /// then reset).
    pub fn capture(
        templates: UpdateTemplates,
        inputs: UpdateInputs,
        device: &Device,
    ) -> Result<Self> {
        let (denoiser_state, den_current) =
            StateCells::copy_of(&templates.denoiser_opt, 4, "denoiser")?;
        let (edit_state, edit_current) = match &templates.edit {
            Some(e) => {
                let (cells, current) = StateCells::copy_of(&e.opt, 3, "edit policy")?;
                (Some(cells), Some(current))
            }
            None => (None, None),
        };
        anyhow::ensure!(
            templates.edit.is_some() == inputs.edit.is_some(),
            "update graph: edit inputs without the edit policy, or missing"
        );
        let d = inputs.draws;
        let cells = UpdateCells {
            obs: cell(inputs.obs),
            act: cell(inputs.act),
            sa: cell(d.sa),
            sb: cell(d.sb),
            t: cell(d.t),
            eps: cell(d.eps),
            denoiser_scalars: cell(inputs.denoiser_scalars),
            edit: inputs.edit.map(|e| EditCells {
                noise: cell(e.noise),
                alpha: cell(e.alpha),
                critic: cell(own_copy(&e.critic)),
                scalars: cell(e.scalars),
            }),
        };
        let in_place = Rc::new(std::cell::Cell::new(true));
        let closure = {
            let (cells, in_place) = (cells.clone(), in_place.clone());
            let (den_state, edit_state) = (denoiser_state.clone(), edit_state.clone());
            move || {
                let out = run_updates(&cells, &den_state, edit_state.as_ref(), &templates);
                let mut all = true;
                den_state.write_back(&out.denoiser_opt, &mut all);
                if let (Some(state), Some((_, opt, _, _))) = (&edit_state, &out.edit) {
                    state.write_back(opt, &mut all);
                }
                in_place.set(all);
                out
            }
        };
        let graph = Recording::new(device, Box::new(closure), "updates");
        let recorded = graph.is_recorded();
        anyhow::ensure!(
            !recorded || in_place.get(),
            "update graph: the state buffers are shared at the end of the updates, so the \
             recorded write-back would not reach them (set compute.graph = false)"
        );
        let g = UpdateGraph {
            cells,
            denoiser_state,
            edit_state,
            graph,
        };
        // The warm-up runs stepped the state copies: back to the optimizers'.
        g.denoiser_state
            .reset(den_current, recorded, "the denoiser state")?;
        if let (Some(state), Some(current)) = (&g.edit_state, edit_current) {
            state.reset(current, recorded, "the edit policy state")?;
        }
        Ok(g)
    }

    /// Runs the recorded updates on the inputs they hold.
    pub fn replay(&mut self) -> UpdateOutput {
        // Safety: as for `CriticGraph::replay`.
        unsafe { self.graph.replay() }.clone()
    }

    /// Runs the recorded updates on `inputs`.
    pub fn run(&mut self, inputs: UpdateInputs) -> Result<UpdateOutput> {
        let recorded = self.graph.is_recorded();
        let c = &self.cells;
        overwrite(&c.obs, inputs.obs, recorded, "observations")?;
        overwrite(&c.act, inputs.act, recorded, "actions")?;
        let d = inputs.draws;
        overwrite(&c.sa, d.sa, recorded, "noising coefficients")?;
        overwrite(&c.sb, d.sb, recorded, "noising coefficients")?;
        overwrite(&c.t, d.t, recorded, "time steps")?;
        overwrite(&c.eps, d.eps, recorded, "denoiser noise")?;
        overwrite(
            &c.denoiser_scalars,
            inputs.denoiser_scalars,
            recorded,
            "step values",
        )?;
        if let (Some(cells), Some(e)) = (&c.edit, inputs.edit) {
            overwrite(&cells.noise, e.noise, recorded, "edit noise")?;
            overwrite(&cells.alpha, e.alpha, recorded, "temperature")?;
            overwrite(&cells.critic, e.critic, recorded, "critic parameters")?;
            overwrite(&cells.scalars, e.scalars, recorded, "step values")?;
        }
        Ok(self.replay())
    }

    /// Whether the backend recorded a device graph (else each run re-runs the closure).
    pub fn status(&self) -> &Recorded {
        &self.graph.status
    }
}

/// The updates themselves: [`denoiser_step`] and [`edit_step`] on the cells.
fn run_updates(
    cells: &UpdateCells,
    den_state: &StateCells,
    edit_state: Option<&StateCells>,
    t: &UpdateTemplates,
) -> UpdateOutput {
    let auto = |c: &Cell<2>| Tensor::<2>::from_inner(c.borrow().clone());
    let (obs, act) = (auto(&cells.obs), auto(&cells.act));
    let scalars = |c: &Cell<1>, with_lr: bool| {
        let v = c.borrow().clone();
        let at = |i: usize| v.clone().slice(i * ALIGN..i * ALIGN + 1);
        StepScalars {
            factor: at(0),
            eps: at(1),
            lr: with_lr.then(|| (at(2), at(3))),
        }
    };
    // The denoiser.
    let [p, m1, m2, ema] = den_state.read();
    let layout = t
        .denoiser_opt
        .layout()
        .expect("a step taken before")
        .clone();
    let den = layout.assign(t.denoiser.clone(), &p);
    let ema_net = layout.assign(t.ema.clone(), &ema);
    let mut opt = NetOptimizer::Fused(Box::new(
        t.denoiser_opt.with_buffers([p, m1, m2], Some(ema)),
    ));
    let draws = DenoiserDraws {
        sa: auto(&cells.sa),
        sb: auto(&cells.sb),
        t: auto(&cells.t),
        eps: auto(&cells.eps),
    };
    let (denoiser, ema, denoiser_loss) = denoiser_step(
        (den, ema_net),
        &mut opt,
        obs.clone(),
        act.clone(),
        draws,
        (0.0, Some(&scalars(&cells.denoiser_scalars, true))),
        t.ema_rate,
    );
    let NetOptimizer::Fused(denoiser_opt) = opt else {
        unreachable!("built fused above")
    };
    // The edit policy.
    let edit = t
        .edit
        .as_ref()
        .zip(cells.edit.as_ref())
        .zip(edit_state)
        .map(|((e, c), state)| {
            let [p, m1, m2] = state.read();
            let layout = e.opt.layout().expect("a step taken before").clone();
            let policy = layout.assign(e.edit.clone(), &p);
            let mut opt = NetOptimizer::Fused(Box::new(e.opt.with_buffers([p, m1, m2], None)));
            let (critic, critic_layout) = &e.critic;
            let critic = critic_layout.assign(critic.clone(), &c.critic.borrow().clone());
            let batch = EditBatch {
                obs: obs.clone(),
                base: act.clone(),
                noise: auto(&c.noise),
                alpha: Tensor::from_inner(c.alpha.borrow().clone()),
            };
            let (policy, logp, q) = edit_step(
                policy,
                &critic,
                &mut opt,
                batch,
                e.edit_scale,
                (e.lr, Some(&scalars(&c.scalars, false))),
            );
            let NetOptimizer::Fused(opt) = opt else {
                unreachable!("built fused above")
            };
            (policy, *opt, logp, q)
        });
    UpdateOutput {
        denoiser_loss,
        denoiser,
        ema,
        denoiser_opt: *denoiser_opt,
        edit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the backend records nothing (the CPU), a recording runs its closure for
    /// the warm-ups and the recording, then once per replay, and says why it is not
    /// recorded without calling it a failure.
    #[test]
    fn on_the_cpu_a_recording_reruns_its_closure() {
        let device = crate::device::parse("cpu").unwrap().device();
        let runs = Rc::new(std::cell::Cell::new(0usize));
        let closure = {
            let (runs, device) = (runs.clone(), device.clone());
            move || {
                runs.set(runs.get() + 1);
                Tensor::<1>::from_floats([runs.get() as f32], &device)
            }
        };
        let mut r = Recording::new(&device, Box::new(closure), "test closure");
        assert_eq!(r.status, Recorded::Unsupported);
        assert!(!r.is_recorded());
        assert_eq!(runs.get(), WARMUP_RUNS + 1);
        // Safety: nothing is recorded; the replay re-runs the closure.
        let out = unsafe { r.replay() }.clone();
        assert_eq!(runs.get(), WARMUP_RUNS + 2);
        assert_eq!(scalar(out), (WARMUP_RUNS + 2) as f32);
    }

    /// A backend's multi-line reason becomes one line.
    #[test]
    fn a_failure_reason_is_one_line() {
        let e = ExecutionError::WithContext {
            reason: "capture recorded 2 memory node(s):\n  an allocation inside".into(),
        };
        assert_eq!(
            reason(e),
            "capture recorded 2 memory node(s): an allocation inside"
        );
        let failed = Recorded::Failed("why".into());
        assert_eq!(failed.to_string(), "re-run (recording failed: why)");
    }
}
