//! The learners: EXPO and the baselines in one code path.
//!
//! | algo | acting | TD next action | updates per env step |
//! |---|---|---|---|
//! | `expo` | on-the-fly: N EMA samples + n_edit edits, argmax min-subset target Q | same, online denoiser; its value from a second subset | UTD critic steps, 1 denoiser, 1 edit + temperature |
//! | `idql-select` | on-the-fly with n_edit = 0 | same | UTD critic steps, 1 denoiser |
//! | `bc` | one EMA sample | — | 1 denoiser |
//! | `rlpd` | tanh-Gaussian actor | actor sample, entropy backup | UTD critic steps, 1 actor + temperature |
//!
//! # Which copy does what (DESIGN.md section 2)
//! Acting samples from the EMA denoiser and scores with a random subset of the *target*
//! critics. The TD target samples next actions from the *online* denoiser, edits them with
//! the current edit policy and scores them with a fresh random subset of target critics;
//! the picked action's value is the minimum over a second fresh subset
//! (`shared_model::on_the_fly_value`). The edit loss uses the mean over all *online*
//! critics.
//!
//! # Hoisted candidate generation
//! The denoiser and the edit policy do not change during the UTD critic loop (they are
//! updated after it), so the next-action candidates of all UTD slices are produced in one
//! batched pass before the loop; only scoring them with the current target critics, the
//! TD target and the critic step run per slice. Same distribution as generating them per
//! slice, fewer and larger matrix products.
//!
//! With `compute.candidates = "sequential"` each slice's candidates are generated inside
//! the loop instead, just before its critic step: the reference implementation's order.
//!
//! # Random streams
//! Two seeded generators of ours: `train_rng` (the updates) and `act_rng` (acting). Per
//! environment step `train_rng` draws the candidates' chain noise and edit noise (all
//! slices at once when hoisted, per slice before its subsets when sequential), each
//! slice's scoring subset then evaluation subset, then the denoiser loss's time steps and
//! noise and the edit loss's noise (with `expo.edit_base = "denoiser"`, a whole chain's
//! noise for the edited base actions first). RLPD draws each slice's actor noise, then
//! one subset per slice, then the actor loss's noise. `act_rng` serves acting online;
//! an evaluation acts with a generator seeded from its own seed
//! ([`crate::run::evaluate`]), so how often a run evaluates does not change its online
//! draws (RLPD's evaluation, by the actor's mode, draws nothing). With
//! `compute.normals = "device"` the Gaussian draws of both come from the backend's one
//! generator, so there it does.
//! Batch indices come from the run's own `batch_rng`. With `compute.normals = "host"`
//! (the default) every Gaussian draw comes from these too, so a seed fixes a run on a
//! given backend and a CPU and a GPU run draw the same noise. With `"device"` the Gaussian
//! draws come from the backend's generator (seeded from `seed`, and where the run stands
//! when it continues from a checkpoint: `run::RunState::continuation`) and only the
//! integer draws (time steps, subsets) stay ours: no noise is generated on the host or
//! uploaded, which matters on a GPU.
//!
//! # Device residency
//! A batch is uploaded once per environment step; the per-slice tensors are slices of it.
//! Losses and diagnostics stay on the device until the end of [`Agent::update`], which
//! reads them back together: one host synchronisation per environment step (plus the
//! action read-back of acting).

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, FloatDType, Int, Tensor, TensorData};
use shared_model::{
    DiffusionSchedule, ExpoRunner, SelectionParams, TdRunner, on_the_fly_action, on_the_fly_value,
};
use sim::rng::Rng;
use std::collections::HashMap;

use crate::config::{
    Algo, CandidateSchedule, Config, EditBase, NormalSource, OptimizerImpl, ReplayPlacement,
};
use crate::device_replay::DeviceReplay;
use crate::nets::{
    CriticEnsemble, Denoiser, GaussianPolicy, Init, Temperature, member_ids, tensor2,
};
use crate::optim::{FusedAdam, Packing, StepScalars};

mod graph;
use crate::replay::{Batch, Normalizer, Replay, gather_rows};
pub use graph::Recorded;
use graph::{
    ActGraph, ActInputs, CriticGraph, EditInputs, EditTemplates, LoopConsts, LoopInputs,
    LoopTemplates, PolicyInputs, PolicyTemplates, UpdateGraph, UpdateInputs, UpdateTemplates,
};

/// Losses and diagnostics of one environment step's updates (means over the step).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateMetrics {
    pub critic_loss: f32,
    pub q_mean: f32,
    pub target_q_mean: f32,
    pub denoiser_loss: f32,
    /// Mean over online critics of Q at the edited (EXPO) or actor (RLPD) action.
    pub policy_q: f32,
    /// −mean log π of the edit policy / actor.
    pub entropy: f32,
    pub temperature: f32,
}

impl UpdateMetrics {
    /// Every metric with its `metrics.csv` column name, in the columns' order.
    pub fn named(&self) -> [(&'static str, f32); 7] {
        [
            ("critic_loss", self.critic_loss),
            ("q_mean", self.q_mean),
            ("target_q_mean", self.target_q_mean),
            ("denoiser_loss", self.denoiser_loss),
            ("policy_q", self.policy_q),
            ("entropy", self.entropy),
            ("temperature", self.temperature),
        ]
    }

    /// The metrics' values as CSV fields, in the columns' order (`a,b,...`).
    pub fn csv_fields(&self) -> String {
        let values: Vec<String> = self.named().iter().map(|(_, v)| v.to_string()).collect();
        values.join(",")
    }

    /// The first metric that is NaN or infinite, by its `metrics.csv` column name.
    pub fn first_non_finite(&self) -> Option<(&'static str, f32)> {
        self.named().into_iter().find(|(_, v)| !v.is_finite())
    }

    /// Field-wise `self += k · other` (sums and means over logging windows).
    pub fn accumulate(&mut self, other: &UpdateMetrics, k: f32) {
        self.critic_loss += k * other.critic_loss;
        self.q_mean += k * other.q_mean;
        self.target_q_mean += k * other.target_q_mean;
        self.denoiser_loss += k * other.denoiser_loss;
        self.policy_q += k * other.policy_q;
        self.entropy += k * other.entropy;
        self.temperature += k * other.temperature;
    }
}

/// Wall-clock seconds spent per stage since the agent was built (for profiling).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StageTimes {
    /// Replay sampling (added by the caller: the training loop and `trainer bench`), then
    /// the batch's checks, normalization and upload (host work, and the copy).
    pub batch: f64,
    pub act: f64,
    pub candidates: f64,
    pub critic: f64,
    pub denoiser: f64,
    pub policy: f64,
}

/// A random stream: integer draws always from our generator, Gaussian draws from it
/// (`device_normals == false`) or from the backend's generator on the tensor's device.
pub struct Stream<'a> {
    pub rng: &'a mut Rng,
    pub device_normals: bool,
}

impl<'a> Stream<'a> {
    /// Everything from `rng` (bit-for-bit the same on every backend).
    pub fn host(rng: &'a mut Rng) -> Self {
        Stream {
            rng,
            device_normals: false,
        }
    }

    /// Standard normal `[rows, cols]` on `device`.
    pub fn normal(&mut self, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        self.scaled_normal(rows, cols, 1.0, device)
    }

    /// `scale ·` standard normal `[rows, cols]`: host draws are scaled before the upload
    /// (one device operation fewer; the same f32 products as scaling on the device).
    pub fn scaled_normal(
        &mut self,
        rows: usize,
        cols: usize,
        scale: f32,
        device: &Device,
    ) -> Tensor<2> {
        if self.device_normals {
            let z = Tensor::random([rows, cols], Distribution::Normal(0.0, 1.0), device);
            if scale == 1.0 { z } else { z * scale }
        } else {
            let draws = (0..rows * cols).map(|_| self.rng.normal() * scale);
            tensor2(draws.collect(), rows, cols, device)
        }
    }
}

/// Losses and diagnostics still on the device (plain, one element each), read back
/// together by [`PendingMetrics::read`]: one synchronisation instead of one per value.
#[derive(Default)]
struct PendingMetrics(Vec<(Metric, Tensor<1>)>);

/// One field of [`UpdateMetrics`] (the order of the fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    CriticLoss,
    QMean,
    TargetQMean,
    DenoiserLoss,
    PolicyQ,
    Entropy,
    Temperature,
}

impl Metric {
    fn field(self, m: &mut UpdateMetrics) -> &mut f32 {
        match self {
            Metric::CriticLoss => &mut m.critic_loss,
            Metric::QMean => &mut m.q_mean,
            Metric::TargetQMean => &mut m.target_q_mean,
            Metric::DenoiserLoss => &mut m.denoiser_loss,
            Metric::PolicyQ => &mut m.policy_q,
            Metric::Entropy => &mut m.entropy,
            Metric::Temperature => &mut m.temperature,
        }
    }
}

/// The metrics of the environment steps since the last [`Agent::take_metrics`], summed
/// on the device ([`Agent::train_step`]): reading them back is a synchronisation with
/// the device, so the caller chooses when (the logging interval), not every step.
#[derive(Default)]
struct MetricSums {
    /// The metrics `device` holds, in order.
    fields: Vec<Metric>,
    device: Option<Tensor<1>>,
    /// Sums read back early because the set of metrics changed (it does not within one
    /// algorithm; kept for safety).
    host: UpdateMetrics,
    steps: usize,
}

impl MetricSums {
    /// Adds one environment step's metrics (one device addition).
    fn add(&mut self, pending: PendingMetrics) {
        self.steps += 1;
        let Some((fields, values)) = pending.joined() else {
            return;
        };
        match self.device.take() {
            Some(sum) if self.fields == fields => self.device = Some(sum + values),
            earlier => {
                if let Some(sum) = earlier {
                    read_metrics(&self.fields, sum, &mut self.host);
                }
                self.fields = fields;
                self.device = Some(values);
            }
        }
    }

    /// Starts again from sums already read back (a checkpoint's): the next [`Self::take`]
    /// adds the steps after them, in the same order as without the read-back.
    fn restore(&mut self, sums: UpdateMetrics, steps: usize) {
        *self = MetricSums {
            host: sums,
            steps,
            ..MetricSums::default()
        };
    }

    /// The sums and the number of steps summed; empties `self`.
    fn take(&mut self) -> (UpdateMetrics, usize) {
        let MetricSums {
            fields,
            device,
            mut host,
            steps,
        } = std::mem::take(self);
        if let Some(sum) = device {
            read_metrics(&fields, sum, &mut host);
        }
        (host, steps)
    }
}

/// `m.field += value` for each metric of `fields` and value of `values` (one read-back).
fn read_metrics(fields: &[Metric], values: Tensor<1>, m: &mut UpdateMetrics) {
    let host = values.into_data().try_to_vec::<f32>().expect("f32 metrics");
    for (field, v) in fields.iter().zip(host) {
        *field.field(m) += v;
    }
}

/// The rows one environment step trains on (`utd` slices of `batch_size`).
#[derive(Clone, Copy)]
pub enum StepBatch<'a> {
    /// Copied out on the host already (observations raw).
    Host(&'a Batch),
    /// Drawn by [`crate::replay::draw_mixed`]: copied out where `compute.replay` says.
    Drawn {
        offline: &'a Replay,
        online: &'a Replay,
        rows: &'a [u32],
    },
}

impl<'a> From<&'a Batch> for StepBatch<'a> {
    fn from(batch: &'a Batch) -> Self {
        StepBatch::Host(batch)
    }
}

/// A batch on the device: observations (normalized) and actions on the autodiff device,
/// the TD targets' inputs plain.
struct DeviceBatch {
    obs: Tensor<2>,
    act: Tensor<2>,
    critic: Option<CriticInputs>,
}

/// The critic loop's inputs, on the plain device (the critic's backward pass is written
/// out, no autodiff): normalized `[s, a]` rows `[R, O + A]` (concatenated once per step,
/// on the host or after a device gather, so no slice needs a concatenation), rewards `[R, 1]`, normalized next observations
/// `[R, O]` and bootstrap discounts `[R, 1]`: `γ^H · mask`, multiplied on the host (0 or
/// `γ^H` exactly), so that a TD target takes two device operations, not three.
struct CriticInputs {
    obs_act: Tensor<2>,
    rew: Tensor<2>,
    next_obs: Tensor<2>,
    discount: Tensor<2>,
}

impl PendingMetrics {
    fn push(&mut self, metric: Metric, value: Tensor<1>) {
        self.0.push((metric, value.no_grad().reshape([1])));
    }

    /// The metrics in field order and their values joined (one device operation); none
    /// when nothing was pushed.
    fn joined(mut self) -> Option<(Vec<Metric>, Tensor<1>)> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_by_key(|(metric, _)| *metric);
        let (fields, values): (Vec<_>, Vec<_>) = self.0.into_iter().unzip();
        Some((fields, Tensor::cat(values, 0)))
    }

    fn read(self, m: &mut UpdateMetrics) {
        if let Some((fields, values)) = self.joined() {
            read_metrics(&fields, values, m);
        }
    }
}

/// `k` distinct members out of `n`, uniformly (`shared_model::select::sample_subset`).
pub fn random_subset(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = vec![0; n];
    shared_model::select::sample_subset(&mut all, k, || rng.next_u64());
    all.truncate(k);
    all
}

/// One critic slice's TD-target subsets of `k` out of `n` target critics, in their draw
/// order: the scoring subset, then the evaluation subset (`shared_model::on_the_fly_value`).
fn slice_subsets(rng: &mut Rng, n: usize, k: usize) -> [Vec<usize>; 2] {
    [(); 2].map(|_| random_subset(rng, n, k))
}

/// Repeats every row `n` times: `[R, D] → [R·n, D]`, row `r` at `r·n .. r·n + n`.
fn repeat_rows(x: Tensor<2>, n: usize) -> Tensor<2> {
    let [r, d] = x.dims();
    x.unsqueeze_dim::<3>(1)
        .expand([r, n, d])
        .reshape([r * n, d])
}

/// Runs the reverse diffusion chain for every row of `obs` (`[R, O]`, normalized),
/// returning actions `[R, A]` in `[−1, 1]`.
pub fn sample_chain(
    den: &Denoiser,
    sched: &DiffusionSchedule,
    obs: Tensor<2>,
    act_dim: usize,
    stream: &mut Stream,
) -> Tensor<2> {
    let device = obs.device();
    let noise = chain_noise(stream, sched, obs.dims()[0], act_dim, &device);
    run_chain(den, sched, obs, chain_times(sched, &device), noise)
}

/// The Gaussian draws of a reverse chain over `rows` rows `[rows, A]` each, in the order
/// the chain uses them: the initial sample, then one per step with σ > 0, scaled by σ.
pub fn chain_noise(
    stream: &mut Stream,
    sched: &DiffusionSchedule,
    rows: usize,
    act_dim: usize,
    device: &Device,
) -> Vec<Tensor<2>> {
    let mut draws = vec![stream.normal(rows, act_dim, device)];
    for step in sched.sampling_plan(sched.steps()) {
        if step.sigma > 0.0 {
            draws.push(stream.scaled_normal(rows, act_dim, step.sigma, device));
        }
    }
    draws
}

/// The chain's time steps `[T, 1]`, in sampling order (constants of the schedule).
pub fn chain_times(sched: &DiffusionSchedule, device: &Device) -> Tensor<2> {
    let plan = sched.sampling_plan(sched.steps());
    let ts: Vec<f32> = plan.iter().map(|step| step.t as f32).collect();
    tensor2(ts, plan.len(), 1, device)
}

/// The reverse chain of [`sample_chain`] from its draws ([`chain_noise`]) and time
/// steps ([`chain_times`]), all on the device already.
pub fn run_chain(
    den: &Denoiser,
    sched: &DiffusionSchedule,
    obs: Tensor<2>,
    times: Tensor<2>,
    noise: Vec<Tensor<2>>,
) -> Tensor<2> {
    let mut noise = noise.into_iter();
    // The per-step layers' type (`compute.chain_precision`); every cast below is a no-op
    // in f32. The chain's own arithmetic stays f32.
    let dtype = den.step_dtype();
    let obs_proj = den.obs_projection(obs).cast(dtype);
    let mut x = noise.next().expect("the chain's initial sample");
    let plan = sched.sampling_plan(sched.steps());
    // The time conditioning depends on t alone: one batched pass for every step of the
    // chain, `[T, hidden]`, each step's row shared by all rows of x.
    let time_proj = den.time_projection(times).cast(dtype);
    let hidden = time_proj.dims()[1];
    let blocks = den.chain_blocks();
    for (k, step) in plan.iter().enumerate() {
        let tp = time_proj.clone().slice([k..k + 1, 0..hidden]);
        let eps = den
            .forward_projected_with(&blocks, x.clone().cast(dtype), obs_proj.clone(), tp)
            .cast(FloatDType::F32);
        x = x * step.x_coef + eps * step.eps_coef;
        if step.sigma > 0.0 {
            x = x + noise.next().expect("one draw per step with noise");
        }
        x = x.clamp(-1.0, 1.0);
    }
    x
}

/// Polyak averaging `target ← (1 − τ) target + τ online`, matched by parameter id (a
/// target made by cloning the online module shares its ids).
pub fn polyak<M: Module>(target: M, online: &M, tau: f32) -> M {
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let n = t.shape().num_elements();
            self.0.insert(param.id, t.no_grad().reshape([n]));
        }
    }
    struct Blend(HashMap<ParamId, Tensor<1>>, f32);
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(src) = self.0.remove(&param.id) else {
                return param;
            };
            let tau = self.1;
            param.map(|t| {
                let dims = t.dims();
                t * (1.0 - tau) + src.reshape(dims) * tau
            })
        }
    }
    let mut c = Collect(HashMap::new());
    online.visit(&mut c);
    target.map(&mut Blend(c.0, tau))
}

/// The optimizer of one network (`compute.optimizer`).
enum NetOptimizer {
    PerParameter(ModuleOptimizer),
    Fused(Box<FusedAdam>),
}

impl NetOptimizer {
    /// Adam (`weight_decay` 0) or AdamW with ε 1e-8 and burn's β defaults.
    fn new(kind: OptimizerImpl, weight_decay: f32, packing: Packing) -> Self {
        const EPSILON: f32 = 1e-8;
        match kind {
            OptimizerImpl::Fused => {
                NetOptimizer::Fused(Box::new(FusedAdam::adamw(EPSILON, weight_decay, packing)))
            }
            OptimizerImpl::PerParameter => {
                NetOptimizer::PerParameter(crate::per_parameter::adam(weight_decay, EPSILON))
            }
        }
    }

    fn step<M: AutodiffModule>(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.step_with(lr, module, grads, None)
    }

    /// [`NetOptimizer::step`] with the fused optimizer's scalars read from the device
    /// ([`FusedAdam::step_with`]; only the fused optimizer takes them).
    fn step_with<M: AutodiffModule>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
        scalars: Option<&StepScalars>,
    ) -> M {
        match self {
            NetOptimizer::PerParameter(o) => {
                assert!(scalars.is_none(), "device scalars need the fused optimizer");
                o.step(lr, module, grads)
            }
            NetOptimizer::Fused(o) => o.step_with(lr, module, grads, scalars),
        }
    }

    /// Polyak averaging of `target` towards `online`, the network this optimizer just
    /// stepped: on the flat buffers of the fused optimizer when `target` has their
    /// layout, else parameter by parameter.
    fn blend<M: Module>(&mut self, target: M, online: &M, tau: f32) -> M {
        let target = match self {
            NetOptimizer::Fused(o) => match o.blend(target, tau) {
                Ok(blended) => return blended,
                Err(target) => target,
            },
            NetOptimizer::PerParameter(_) => target,
        };
        polyak(target, online, tau)
    }

    /// `dir/stem.bpk` (burn's record) or `dir/stem.adam` (the fused state).
    fn save(&self, dir: &std::path::Path, stem: &str) -> Result<()> {
        match self {
            NetOptimizer::PerParameter(o) => {
                let path = dir.join(format!("{stem}.bpk"));
                o.save(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
            }
            NetOptimizer::Fused(o) => o.save(&dir.join(format!("{stem}.adam"))),
        }
    }

    /// This optimizer with the state [`NetOptimizer::save`] wrote for `network` (`None`:
    /// the run has no such network and the state is empty), as the loader's checks
    /// accept it; `self` is left as it is.
    fn loaded<M: Module>(
        &self,
        dir: &std::path::Path,
        stem: &str,
        network: Option<&M>,
        device: &Device,
    ) -> Result<NetOptimizer> {
        Ok(match self {
            NetOptimizer::PerParameter(o) => {
                let path = dir.join(format!("{stem}.bpk"));
                NetOptimizer::PerParameter(crate::per_parameter::load(o.clone(), &path, device)?)
            }
            NetOptimizer::Fused(o) => {
                let layout = network.map(|m| o.layout_of(m));
                let mut o = o.clone();
                o.load(&dir.join(format!("{stem}.adam")), layout, device)?;
                NetOptimizer::Fused(o)
            }
        })
    }
}

/// All trainable state of a run.
pub struct Agent {
    pub config: Config,
    pub obs_dim: usize,
    /// The networks' action width: `config.action_horizon` actions (one chunk).
    pub act_dim: usize,
    pub normalizer: Normalizer,
    /// With `task = "robot"`: the robot, as its dataset described it (for export).
    pub robot: Option<crate::robot::RobotInfo>,
    pub schedule: DiffusionSchedule,
    device: Device,
    plain: Device,
    // The networks change only through the updates below and `Agent::load`: the fused
    // optimizers keep their parameters in flat buffers between steps (`crate::optim`).
    // Read them with the accessors of the same names.
    pub(crate) denoiser: Denoiser,
    pub(crate) denoiser_ema: Denoiser,
    pub(crate) edit: Option<GaussianPolicy>,
    pub(crate) actor: Option<GaussianPolicy>,
    pub(crate) critic: Option<CriticEnsemble>,
    pub(crate) critic_target: Option<CriticEnsemble>,
    pub temperature: Option<Temperature>,
    opt_denoiser: NetOptimizer,
    opt_critic: NetOptimizer,
    opt_policy: NetOptimizer,
    /// Always burn's: one scalar parameter, nothing to fuse.
    opt_temperature: NetOptimizer,
    pub train_rng: Rng,
    pub act_rng: Rng,
    /// Denoiser updates so far (drives the cosine learning-rate decay).
    pub denoiser_updates: usize,
    pub times: StageTimes,
    /// Wait for the device at stage boundaries so that [`StageTimes`] are device times.
    pub sync_stages: bool,
    /// Metrics of [`Agent::train_step`]s not yet taken.
    metric_sums: MetricSums,
    /// Of those, the steps an earlier process made ([`Agent::resume_metrics`]): not
    /// timed by this one, so left out of the next row's updates per second.
    untimed_steps: usize,
    /// When set, each stage of [`Agent::update`] appends its name here, in order (tests
    /// check the schedule of candidate generation and updates with it).
    pub trace: Option<Vec<&'static str>>,
    /// Kernel attribution for `scripts/kernel-count`: see [`KernelMarks`].
    kernel_marks: Option<KernelMarks>,
    /// The critic loop recorded as a device graph (`compute.graph`), from the second
    /// update on (the recording needs the optimizer's buffers).
    critic_graph: Option<CriticGraph>,
    /// Acting recorded as device graphs (`compute.graph`), one per number of
    /// observations acted on at once, at most [`MAX_ACT_GRAPHS`].
    act_graphs: Vec<ActGraph>,
    /// The denoiser's and the edit policy's updates recorded as a device graph.
    update_graph: Option<UpdateGraph>,
    /// Scoring subsets of the target critics gathered from their flat buffer, built at the
    /// first use after the critic's optimizer has a target buffer.
    target_subsets: Option<TargetSubsets>,
    /// The replay buffers on the device (`compute.replay = "device"`), built at the
    /// first drawn step.
    device_replay: Option<DeviceReplay>,
    /// Scratch for drawn rows copied out on the host.
    host_batch: Batch,
}

/// With `EXPO_KERNEL_MARKS=FILE` in the environment, every stage boundary launches one
/// marker kernel (a cumulative sum over one element, an operation the learner never uses)
/// and appends the stage's name to FILE. A device's kernel log (cubecl's profile log, on a
/// build without fusion, where each operation is one kernel launched in order) can then be
/// cut into stages. Diagnostics only: nothing else reads it.
struct KernelMarks {
    one: Tensor<1>,
    names: std::fs::File,
}

impl KernelMarks {
    const ENV: &'static str = "EXPO_KERNEL_MARKS";

    fn from_env(device: &Device) -> Option<Self> {
        let path = std::env::var_os(Self::ENV)?;
        // Said, not a panic (every command builds an agent, and exited 101 on an
        // unwritable path): the run goes on without marks.
        let file = match std::fs::File::create(&path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!(
                    "warning: {}: cannot create {:?}: {e}; no kernel marks are written",
                    Self::ENV,
                    path.to_string_lossy()
                );
                return None;
            }
        };
        Some(KernelMarks {
            one: Tensor::ones([1], device),
            names: file,
        })
    }

    fn mark(&mut self, stage: &str) {
        use std::io::Write;
        drop(self.one.clone().cumsum(0));
        // A failed write only loses diagnostics.
        let _ = writeln!(self.names, "{stage}");
    }
}

impl NetOptimizer {
    /// The fused optimizer, if this is one.
    fn fused(&self) -> Option<&FusedAdam> {
        match self {
            NetOptimizer::Fused(o) => Some(o),
            NetOptimizer::PerParameter(_) => None,
        }
    }

    /// Whether this is the fused optimizer and has its first `n` buffers (parameters,
    /// moments, target: [`FusedAdam::buffers`]), i.e. has taken a step.
    fn has_buffers(&self, n: usize) -> bool {
        self.fused()
            .is_some_and(|o| o.buffers()[..n].iter().all(Option::is_some))
    }
}

/// Buffer `i` of the fused optimizer `opt` ([`FusedAdam::buffers`]: 0 the parameters of
/// the network it stepped last, 3 their target or EMA copy) and its layout (`None`: not
/// the fused optimizer, or no such buffer yet).
fn fused_buffer(opt: &NetOptimizer, i: usize) -> Option<(&Tensor<1>, &crate::optim::FlatLayout)> {
    let o = opt.fused()?;
    Some((o.buffers()[i]?, o.layout()?))
}

/// Records the start of `stage` in the schedule trace and the kernel marks (each when
/// enabled).
fn mark_stage(
    trace: &mut Option<Vec<&'static str>>,
    marks: &mut Option<KernelMarks>,
    stage: &'static str,
) {
    if let Some(t) = trace {
        t.push(stage);
    }
    if let Some(k) = marks {
        k.mark(stage);
    }
}

impl Agent {
    /// Builds every network from `config.seed` on `device` (autodiff is enabled here).
    /// `step_act_dim` is the values of one action; the networks act on chunks of
    /// `config.action_horizon` of them ([`Agent::act_dim`]).
    pub fn new(
        config: Config,
        obs_dim: usize,
        step_act_dim: usize,
        normalizer: Normalizer,
        device: &Device,
    ) -> Self {
        let act_dim = step_act_dim * config.action_horizon;
        let plain = device.clone();
        let kernel_marks = KernelMarks::from_env(&plain);
        let device = device.clone().autodiff();
        let mut init = Init::new(config.seed ^ 0x1417, config.net.init);
        let net = &config.net;
        let denoiser = Denoiser::new(obs_dim, act_dim, net.denoiser(), &mut init, &device);
        let denoiser_ema = denoiser.valid();
        let uses_critic = config.algo != Algo::Bc;
        let critic = uses_critic.then(|| {
            CriticEnsemble::new(
                net.num_critics,
                obs_dim + act_dim,
                &net.critic_widths,
                &mut init,
                &device,
            )
        });
        let critic_target = critic.as_ref().map(|c| c.valid());
        let edit = (config.algo == Algo::Expo).then(|| {
            GaussianPolicy::new(
                obs_dim + act_dim,
                &net.critic_widths,
                act_dim,
                config.expo.log_std,
                &mut init,
                &device,
            )
        });
        let actor = (config.algo == Algo::Rlpd).then(|| {
            GaussianPolicy::new(
                obs_dim,
                &net.critic_widths,
                act_dim,
                config.expo.log_std,
                &mut init,
                &device,
            )
        });
        let temperature = matches!(config.algo, Algo::Expo | Algo::Rlpd)
            .then(|| Temperature::new(config.expo.init_temperature, &device));
        let schedule = DiffusionSchedule::vp(
            config.diffusion.steps,
            config.diffusion.beta_min,
            config.diffusion.beta_max,
        );
        // AdamW with optax's defaults (weight decay 1e-4, eps 1e-8) for the denoiser,
        // Adam for the rest.
        let kind = config.compute.optimizer;
        // Packing of the fused optimizer's buffers: by the configured device (a test may
        // pass another device; only the speed depends on it).
        let packing = Packing::for_device(crate::device::configured_gpu(&config));
        let opt_denoiser = NetOptimizer::new(kind, 1e-4, packing);
        Agent {
            obs_dim,
            act_dim,
            normalizer,
            robot: None,
            schedule,
            device,
            plain,
            denoiser,
            denoiser_ema,
            edit,
            actor,
            critic,
            critic_target,
            temperature,
            opt_denoiser,
            opt_critic: NetOptimizer::new(kind, 0.0, packing),
            opt_policy: NetOptimizer::new(kind, 0.0, packing),
            opt_temperature: NetOptimizer::new(OptimizerImpl::PerParameter, 0.0, packing),
            train_rng: Rng::new(config.seed ^ 0x7124),
            act_rng: Rng::new(config.seed ^ 0xac7),
            denoiser_updates: 0,
            times: StageTimes::default(),
            sync_stages: false,
            metric_sums: MetricSums::default(),
            untimed_steps: 0,
            trace: None,
            kernel_marks,
            critic_graph: None,
            act_graphs: vec![],
            update_graph: None,
            target_subsets: None,
            device_replay: None,
            host_batch: Batch::default(),
            config,
        }
    }

    /// The graphs in use (`compute.graph`), by what they run (`"critic loop"`,
    /// `"updates"`, `"act"`), each with whether the backend recorded a device graph, and
    /// if not, why (each run then re-runs the operations).
    pub fn graphs(&self) -> Vec<(&'static str, Recorded)> {
        let critic = self
            .critic_graph
            .iter()
            .map(|g| ("critic loop", g.status().clone()));
        let updates = self
            .update_graph
            .iter()
            .map(|g| ("updates", g.status().clone()));
        let act = self.act_graphs.iter().map(|g| ("act", g.status().clone()));
        critic.chain(updates).chain(act).collect()
    }

    /// The online denoiser (trained; makes the TD targets' candidates).
    pub fn denoiser(&self) -> &Denoiser {
        &self.denoiser
    }

    /// The device of the networks that only act (the EMA denoiser, the target critics,
    /// the edit policy's `valid()` copy), without autodiff.
    pub fn plain_device(&self) -> &Device {
        &self.plain
    }

    /// The EMA copy of the denoiser (acting, export).
    pub fn denoiser_ema(&self) -> &Denoiser {
        &self.denoiser_ema
    }

    /// The edit policy (`expo`).
    pub fn edit(&self) -> Option<&GaussianPolicy> {
        self.edit.as_ref()
    }

    /// The Gaussian actor (`rlpd`).
    pub fn actor(&self) -> Option<&GaussianPolicy> {
        self.actor.as_ref()
    }

    /// The online critic ensemble.
    pub fn critic(&self) -> Option<&CriticEnsemble> {
        self.critic.as_ref()
    }

    /// The target critic ensemble (acting, TD targets, export).
    pub fn critic_target(&self) -> Option<&CriticEnsemble> {
        self.critic_target.as_ref()
    }

    pub fn selection(&self) -> SelectionParams {
        let e = &self.config.expo;
        SelectionParams {
            num_samples: e.num_samples,
            num_edit: if self.config.algo == Algo::Expo {
                e.num_edit
            } else {
                0
            },
            critic_subset: e.critic_subset,
        }
    }

    fn device_normals(&self) -> bool {
        self.config.compute.normals == NormalSource::Device
    }

    /// Waits until the device has finished all queued work (for timing).
    pub fn sync(&self) {
        let _ = self.plain.sync();
    }

    fn mark(&mut self, stage: &'static str) {
        mark_stage(&mut self.trace, &mut self.kernel_marks, stage);
    }

    fn stage_sync(&self) {
        if self.sync_stages {
            self.sync();
        }
    }

    /// `compute.threads` on the CPU backends, else 1 (a GPU runs each operation on all
    /// of its cores already).
    fn cpu_threads(&self) -> usize {
        if crate::nets::native_activations(&self.plain) {
            self.config.compute.threads
        } else {
            1
        }
    }

    fn target_entropy(&self) -> f32 {
        let e = &self.config.expo;
        let adjust = self.config.algo == Algo::Expo && e.adjust_target_entropy;
        target_entropy(
            e.target_entropy_per_dim,
            self.act_dim,
            adjust.then_some(e.edit_scale),
        )
    }

    /// Cosine decay from `actor_lr` to 0 over `actor_lr_decay_steps`.
    fn denoiser_lr(&self) -> f64 {
        let o = &self.config.optim;
        let p = (self.denoiser_updates as f64 / o.actor_lr_decay_steps.max(1) as f64).min(1.0);
        o.actor_lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }

    /// Actions for a batch of raw observations `[K·O]` → `[K·A]` (host memory); with
    /// action chunks `A` is a whole chunk, its actions in order.
    pub fn act(&mut self, obs: &[f32]) -> Vec<f32> {
        self.act_as(obs, false)
    }

    /// [`Self::act`] for evaluation: RLPD's actor acts by its mode, `tanh(mean)`, as
    /// RLPD's own evaluation does (its exploration samples). EXPO, IDQL-style selection
    /// and BC evaluate as they act: their sampling and selection are the policy.
    pub fn act_eval(&mut self, obs: &[f32]) -> Vec<f32> {
        self.act_as(obs, true)
    }

    fn act_as(&mut self, obs: &[f32], eval: bool) -> Vec<f32> {
        self.mark("act");
        let clock = std::time::Instant::now();
        let k = obs.len() / self.obs_dim;
        let mut norm = obs.to_vec();
        self.normalizer.apply(&mut norm);
        let obs_t = tensor2(norm, k, self.obs_dim, &self.plain);
        let device_normals = self.device_normals();
        let mut stream = Stream {
            rng: &mut self.act_rng,
            device_normals,
        };
        let actions = match self.config.algo {
            Algo::Bc => sample_chain(
                &self.denoiser_ema,
                &self.schedule,
                obs_t,
                self.act_dim,
                &mut stream,
            ),
            Algo::Rlpd if eval => {
                let actor = self.actor.as_ref().unwrap().valid();
                actor.forward(obs_t).0.tanh()
            }
            Algo::Rlpd => {
                let actor = self.actor.as_ref().unwrap().valid();
                let noise = stream.normal(k, self.act_dim, &self.plain);
                actor.sample(obs_t, noise).0
            }
            Algo::Expo | Algo::IdqlSelect => self.act_select(obs_t),
        };
        let out = actions
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 actions");
        self.stage_sync();
        self.times.act += clock.elapsed().as_secs_f64();
        out
    }

    /// Whether the target critics can be gathered from the critic optimizer's target
    /// buffer ([`TargetSubsets`] for subsets of `k`, built at the first use and kept in
    /// `self.target_subsets` while the layout stays): false without such a buffer.
    fn has_target_subsets(&mut self, k: usize) -> bool {
        let Some((_, layout)) = fused_buffer(&self.opt_critic, 3) else {
            return false;
        };
        if !self
            .target_subsets
            .as_ref()
            .is_some_and(|t| t.fits(layout, k))
        {
            let target = self.critic_target.as_ref().expect("target critics");
            self.target_subsets = Some(
                TargetSubsets::new(layout, target, k, &self.plain)
                    .expect("the target critics in their optimizer's layout"),
            );
        }
        true
    }

    /// Members `ids` of the target critics, to score with: gathered from the critic
    /// optimizer's target buffer when it has one, else selected tensor by tensor.
    fn target_subset(&mut self, ids: Tensor<1, Int>) -> Subset {
        if !self.has_target_subsets(ids.dims()[0]) {
            return Subset::Ids(Box::new(ids));
        }
        let (flat, _) = fused_buffer(&self.opt_critic, 3).expect("checked just above");
        let subsets = self.target_subsets.as_ref().expect("built just above");
        subsets.subset(flat, &ids)
    }

    /// EXPO's on-the-fly action for observations `obs` `[K, O]` (normalized): `N`
    /// samples of the EMA denoiser, the first `n_edit` edited, scored by a random subset
    /// of the target critics. Draws: chain noise, edit noise, the subset. As a recorded
    /// graph with `compute.graph` once the networks' optimizers have stepped.
    fn act_select(&mut self, obs: Tensor<2>) -> Tensor<2> {
        let params = self.selection();
        let (k, ad) = (obs.dims()[0], self.act_dim);
        let edits = params.num_edit > 0;
        let device_normals = self.device_normals();
        let noise = candidate_noise(
            &mut Stream {
                rng: &mut self.act_rng,
                device_normals,
            },
            &self.schedule,
            k,
            ad,
            &params,
            edits,
            &self.plain,
        );
        let members = self.critic_target.as_ref().unwrap().members();
        let subset = random_subset(&mut self.act_rng, members, params.critic_subset);
        let ids = member_ids(&subset, &self.plain);
        // The same gatherer for the direct path and for recording (its tables built once).
        let subsets = self
            .has_target_subsets(params.critic_subset)
            .then(|| self.target_subsets.clone().expect("built"));
        let target = self.critic_target.as_ref().unwrap();
        let flats = (
            fused_buffer(&self.opt_denoiser, 3),
            fused_buffer(&self.opt_critic, 3),
            fused_buffer(&self.opt_policy, 0),
        );
        match flats {
            (Some(ema), Some(target_flat), edit)
                if self.config.compute.graph
                    && (edit.is_some() || !edits)
                    && subsets.is_some()
                    && admits_act_graph(self.act_graphs.iter().map(|g| g.rows()), k) =>
            {
                let inputs = ActInputs {
                    obs,
                    policy: PolicyInputs {
                        noise,
                        denoiser: ema.0.clone(),
                        edit: edits.then(|| edit.unwrap().0.clone()),
                    },
                    target: target_flat.0.clone(),
                    ids,
                };
                if let Some(g) = self.act_graphs.iter_mut().find(|g| g.rows() == k) {
                    return g.run(inputs).expect("acting as a recorded graph");
                }
                let policy = PolicyTemplates {
                    denoiser: (self.denoiser_ema.clone(), ema.1.clone()),
                    edit: edits
                        .then(|| (self.edit.as_ref().unwrap().valid(), edit.unwrap().1.clone())),
                    edit_scale: self.config.expo.edit_scale,
                    params,
                    schedule: self.schedule.clone(),
                    times: chain_times(&self.schedule, &self.plain),
                    // Acting runs as the exported bundles do.
                    chain_dtype: FloatDType::F32,
                };
                let target = (target.clone(), target_flat.1.clone());
                let subsets = subsets.expect("in the match guard");
                let g = ActGraph::capture(policy, target, subsets, inputs, &self.plain)
                    .expect("recording acting as a graph");
                self.act_graphs.push(g);
                self.act_graphs.last_mut().unwrap().replay()
            }
            _ => {
                let subset = self.target_subset(ids);
                let target = self.critic_target.as_ref().unwrap();
                let edit = edits.then(|| self.edit.as_ref().unwrap().valid());
                let candidates = candidates_from(
                    &self.denoiser_ema,
                    edit.as_ref().map(|e| (e, self.config.expo.edit_scale)),
                    &self.schedule,
                    obs.clone(),
                    chain_times(&self.schedule, &self.plain),
                    &params,
                    noise,
                );
                let candidates = Joined::new(obs.clone(), candidates);
                select_given(
                    target,
                    obs,
                    candidates,
                    subset,
                    &params,
                    &self.schedule,
                    Selected::Action,
                )
            }
        }
    }

    /// One environment step's worth of updates on `batch` (`utd` slices of
    /// `batch_size` rows; observations raw, normalized here), and their metrics (read
    /// back now: a synchronisation with the device; training loops use
    /// [`Agent::train_step`]).
    pub fn update<'a>(&mut self, batch: impl Into<StepBatch<'a>>) -> Result<UpdateMetrics> {
        let mut m = UpdateMetrics::default();
        self.update_pending(batch.into())?.read(&mut m);
        Ok(m)
    }

    /// [`Agent::update`] with the metrics summed on the device until
    /// [`Agent::take_metrics`]: no read-back, so the host goes on queueing work.
    pub fn train_step<'a>(&mut self, batch: impl Into<StepBatch<'a>>) -> Result<()> {
        let pending = self.update_pending(batch.into())?;
        self.metric_sums.add(pending);
        Ok(())
    }

    /// The metrics of the [`Agent::train_step`]s since the last call, summed field by
    /// field, and how many steps they are (one read-back).
    pub fn take_metrics(&mut self) -> (UpdateMetrics, usize) {
        self.metric_sums.take()
    }

    /// [`Agent::restore_metrics`] of a window a checkpoint saved, in a resumed run: its
    /// steps were made (and timed) by the process that wrote the checkpoint.
    pub fn resume_metrics(&mut self, window: (UpdateMetrics, usize)) {
        self.untimed_steps = window.1;
        self.restore_metrics(window);
    }

    /// Steps of the metrics window not timed by this process ([`Agent::resume_metrics`]),
    /// reset: the next window is all this process's.
    pub fn take_untimed_steps(&mut self) -> usize {
        std::mem::take(&mut self.untimed_steps)
    }

    /// Puts metric sums taken with [`Agent::take_metrics`] back, as if they had not been
    /// taken: a checkpoint between two logged rows saves them, and the row after it is
    /// the same as without the checkpoint.
    pub fn restore_metrics(&mut self, (sums, steps): (UpdateMetrics, usize)) {
        self.metric_sums.restore(sums, steps);
    }

    fn update_pending(&mut self, batch: StepBatch) -> Result<PendingMetrics> {
        let (b, utd) = (self.config.optim.batch_size, self.config.optim.utd);
        let (od, ad) = (self.obs_dim, self.act_dim);
        let rows = b * utd;
        let clock = std::time::Instant::now();
        let DeviceBatch { obs, act, critic } =
            self.assemble(batch, self.config.algo != Algo::Bc)?;
        self.stage_sync();
        self.times.batch += clock.elapsed().as_secs_f64();
        let mut pending = PendingMetrics::default();

        if let Some(inputs) = critic {
            self.update_critic(inputs, Some(&mut pending))?;
        }
        let clock = std::time::Instant::now();
        // Policy updates use the last slice.
        let last = (utd - 1) * b..rows;
        let obs_last = obs.slice([last.clone(), 0..od]);
        let act_last = act.slice([last, 0..ad]);
        if self.update_graph_ready() {
            self.update_policies_graph(obs_last, act_last, &mut pending)?;
            return Ok(pending);
        }
        if self.config.algo != Algo::Rlpd {
            self.mark("denoiser");
            let loss = self.update_denoiser(obs_last.clone(), act_last.clone());
            pending.push(Metric::DenoiserLoss, loss);
        }
        self.stage_sync();
        self.times.denoiser += clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        match self.config.algo {
            Algo::Expo => self.update_edit(obs_last, act_last, &mut pending),
            Algo::Rlpd => self.update_actor(obs_last, &mut pending),
            _ => {}
        }
        self.stage_sync();
        self.times.policy += clock.elapsed().as_secs_f64();
        Ok(pending)
    }

    /// Whether the denoiser's and the edit policy's updates can run as a recorded graph
    /// (`compute.graph`, edits of the buffer's actions): their fused optimizers and the
    /// critic's have taken a step.
    fn update_graph_ready(&self) -> bool {
        let expo = self.config.algo == Algo::Expo;
        self.config.compute.graph
            && self.config.algo.selects_with_critic()
            && (!expo || self.config.expo.edit_base == EditBase::Buffer)
            && self.opt_denoiser.has_buffers(4)
            && (!expo || (self.opt_policy.has_buffers(3) && self.opt_critic.has_buffers(1)))
    }

    /// The denoiser's and (EXPO) the edit policy's updates as a recorded graph, then the
    /// temperature's directly: the same draws in the same order as the direct path.
    fn update_policies_graph(
        &mut self,
        obs: Tensor<2>,
        act: Tensor<2>,
        pending: &mut PendingMetrics,
    ) -> Result<()> {
        let clock = std::time::Instant::now();
        self.mark("denoiser");
        let (b, ad) = (obs.dims()[0], self.act_dim);
        let plain = self.plain.clone();
        let draws = self.denoiser_draws(b, &plain);
        let expo = self.config.algo == Algo::Expo;
        let device_normals = self.device_normals();
        let edit_noise = expo.then(|| {
            Stream {
                rng: &mut self.train_rng,
                device_normals,
            }
            .normal(b, ad, &plain)
        });
        let fused = |o: &NetOptimizer| o.fused().expect("checked by update_graph_ready").clone();
        let den_opt = fused(&self.opt_denoiser);
        let den_time = den_opt.time() + 1;
        let den_values = den_opt.step_values(den_time, self.denoiser_lr());
        let policy_opt = expo.then(|| fused(&self.opt_policy));
        let edit_time = policy_opt.as_ref().map_or(0, |o| o.time() + 1);
        let edit = edit_noise.map(|noise| {
            let opt = policy_opt.as_ref().unwrap();
            let values = opt.step_values(edit_time, self.config.optim.edit_lr);
            EditInputs {
                noise,
                alpha: self.temperature.as_ref().unwrap().alpha().detach().inner(),
                critic: fused_buffer(&self.opt_critic, 0)
                    .expect("checked")
                    .0
                    .clone(),
                scalars: graph::spaced(&values[..2], &plain),
            }
        });
        let inputs = UpdateInputs {
            obs: obs.inner(),
            act: act.inner(),
            draws,
            denoiser_scalars: graph::spaced(&den_values, &plain),
            edit,
        };
        let out = match &mut self.update_graph {
            Some(g) => g.run(inputs)?,
            None => {
                let templates = UpdateTemplates {
                    denoiser: self.denoiser.clone(),
                    ema: self.denoiser_ema.clone(),
                    denoiser_opt: den_opt,
                    ema_rate: self.config.diffusion.ema_rate,
                    edit: policy_opt.map(|opt| EditTemplates {
                        edit: self.edit.clone().unwrap(),
                        opt,
                        critic: (
                            self.critic.clone().unwrap(),
                            fused_buffer(&self.opt_critic, 0)
                                .expect("checked")
                                .1
                                .clone(),
                        ),
                        edit_scale: self.config.expo.edit_scale,
                        lr: self.config.optim.edit_lr,
                    }),
                };
                let g = UpdateGraph::capture(templates, inputs, &plain)?;
                self.update_graph.insert(g).replay()
            }
        };
        self.denoiser = out.denoiser;
        self.denoiser_ema = out.ema;
        let mut den_opt = out.denoiser_opt;
        den_opt.set_time(den_time);
        self.opt_denoiser = NetOptimizer::Fused(Box::new(den_opt));
        self.denoiser_updates += 1;
        pending.push(Metric::DenoiserLoss, out.denoiser_loss);
        self.stage_sync();
        self.times.denoiser += clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        if let Some((edit, mut opt, logp, q)) = out.edit {
            self.mark("edit");
            opt.set_time(edit_time);
            self.edit = Some(edit);
            self.opt_policy = NetOptimizer::Fused(Box::new(opt));
            pending.push(Metric::PolicyQ, q);
            self.update_temperature(logp, pending);
        }
        self.stage_sync();
        self.times.policy += clock.elapsed().as_secs_f64();
        Ok(())
    }

    /// Base-policy (denoiser) update only, on the last slice of `batch`: offline
    /// pretraining of the base policy.
    pub fn update_base(&mut self, batch: &Batch) -> f32 {
        let b = self.config.optim.batch_size;
        let (od, ad) = (self.obs_dim, self.act_dim);
        let last = batch.rows - b;
        let mut obs = batch.obs[last * od..].to_vec();
        self.normalizer.apply(&mut obs);
        let obs = tensor2(obs, b, od, &self.device);
        let act = tensor2(batch.act[last * ad..].to_vec(), b, ad, &self.device);
        scalar(self.update_denoiser(obs, act))
    }

    pub(crate) fn save_optimizers(&self, dir: &std::path::Path) -> Result<()> {
        self.opt_denoiser.save(dir, "opt_denoiser")?;
        self.opt_critic.save(dir, "opt_critic")?;
        self.opt_policy.save(dir, "opt_policy")?;
        self.opt_temperature.save(dir, "opt_temperature")
    }

    /// The critics' optimizer with every second moment infinite (see
    /// [`FusedAdam::overflow_second_moments`]).
    #[cfg(test)]
    pub(crate) fn overflow_critic_moments(&mut self) {
        match &mut self.opt_critic {
            NetOptimizer::Fused(o) => o.overflow_second_moments(),
            NetOptimizer::PerParameter(_) => panic!("the fused optimizer's state only"),
        }
    }

    /// The four optimizers with the states [`Self::save_optimizers`] wrote into `dir`,
    /// built beside the running ones with the loaders' checks (finite moments, step
    /// counts).
    fn loaded_optimizers(&self, dir: &std::path::Path) -> Result<[NetOptimizer; 4]> {
        let device = self.plain.clone();
        let policy = self.edit.as_ref().or(self.actor.as_ref());
        Ok([
            self.opt_denoiser
                .loaded(dir, "opt_denoiser", Some(&self.denoiser), &device)?,
            self.opt_critic
                .loaded(dir, "opt_critic", self.critic.as_ref(), &device)?,
            self.opt_policy.loaded(dir, "opt_policy", policy, &device)?,
            self.opt_temperature.loaded(
                dir,
                "opt_temperature",
                self.temperature.as_ref(),
                &device,
            )?,
        ])
    }

    /// Reads back what [`Self::save_optimizers`] wrote into `dir` into throwaway
    /// optimizers: a state the loaders would refuse is found before it replaces a
    /// loadable one.
    pub(crate) fn check_saved_optimizers(&self, dir: &std::path::Path) -> Result<()> {
        self.loaded_optimizers(dir).map(drop)
    }

    pub(crate) fn load_optimizers(&mut self, dir: &std::path::Path) -> Result<()> {
        let [denoiser, critic, policy, temperature] = self.loaded_optimizers(dir)?;
        // The recordings hold the networks' state as it was; record again from the loaded.
        self.critic_graph = None;
        self.act_graphs.clear();
        self.update_graph = None;
        self.opt_denoiser = denoiser;
        self.opt_critic = critic;
        self.opt_policy = policy;
        self.opt_temperature = temperature;
        Ok(())
    }

    /// The UTD critic steps of one environment step; inputs `[utd·b, ·]`.
    fn update_critic(
        &mut self,
        inputs: CriticInputs,
        pending: Option<&mut PendingMetrics>,
    ) -> Result<Vec<Tensor<2>>> {
        match pending {
            Some(pending) if self.config.compute.graph && self.critic_graph_ready() => {
                self.update_critic_graph(inputs, pending)?;
                Ok(vec![])
            }
            pending => self.update_critic_direct(inputs, pending),
        }
    }

    /// Whether the critic loop can run as a recorded graph: the fused optimizers of the
    /// critic, the denoiser and (with edits) the edit policy have taken a step (their
    /// buffers are what the recording reads).
    fn critic_graph_ready(&self) -> bool {
        let edits = self.selection().num_edit > 0;
        self.opt_critic.has_buffers(4)
            && self.opt_denoiser.has_buffers(1)
            && (!edits || self.opt_policy.has_buffers(1))
    }

    /// [`Agent::update_critic`] as a recorded graph ([`graph`]): the candidates' noise,
    /// then the critic subsets of every slice drawn here, in the direct loop's order; the
    /// candidates and the loop replayed on them.
    fn update_critic_graph(
        &mut self,
        critic_inputs: CriticInputs,
        pending: &mut PendingMetrics,
    ) -> Result<()> {
        let (b, utd) = (self.config.optim.batch_size, self.config.optim.utd);
        let params = self.selection();
        let edits = params.num_edit > 0;
        // For the recording (first step only): the gatherer the direct path uses too.
        let gatherer = (self.critic_graph.is_none()
            && self.has_target_subsets(params.critic_subset))
        .then(|| self.target_subsets.clone().expect("built"));
        let clock = std::time::Instant::now();
        self.mark("candidates");
        let device_normals = self.device_normals();
        let noise = candidate_noise(
            &mut Stream {
                rng: &mut self.train_rng,
                device_normals,
            },
            &self.schedule,
            b * utd,
            self.act_dim,
            &params,
            edits,
            &self.plain,
        );
        self.stage_sync();
        self.times.candidates += clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        self.mark("critic graph");
        let members = self.critic.as_ref().unwrap().members();
        // Per slice its scoring subset, then its evaluation subset (as the direct loop).
        let subsets: Vec<Vec<usize>> = (0..utd)
            .map(|_| slice_subsets(&mut self.train_rng, members, params.critic_subset).concat())
            .collect();
        let opt = self
            .opt_critic
            .fused()
            .expect("checked by critic_graph_ready");
        let time = opt.time();
        let (factors, eps): (Vec<f32>, Vec<f32>) =
            (1..=utd).map(|i| opt.corrections(time + i)).unzip();
        let ids = LoopInputs::subset_ids(&subsets, &self.plain);
        let (factors, eps) = (
            graph::spaced(&factors, &self.plain),
            graph::spaced(&eps, &self.plain),
        );
        let (den_flat, den_layout) = fused_buffer(&self.opt_denoiser, 0).expect("checked");
        let edit_flat = edits.then(|| fused_buffer(&self.opt_policy, 0).expect("checked"));
        let inputs = LoopInputs {
            critic: critic_inputs,
            policy: PolicyInputs {
                noise,
                denoiser: den_flat.clone(),
                edit: edit_flat.map(|(flat, _)| flat.clone()),
            },
            ids,
            factors,
            eps,
        };
        let out = match &mut self.critic_graph {
            Some(g) => g.run(inputs)?,
            None => {
                let consts = LoopConsts {
                    batch: b,
                    utd,
                    obs_dim: self.obs_dim,
                    act_dim: self.act_dim,
                    rates: (self.config.optim.critic_lr, self.config.optim.tau),
                };
                let templates = LoopTemplates {
                    critic: self.critic.clone().unwrap(),
                    target: self.critic_target.clone().unwrap(),
                    subsets: gatherer.expect("a target buffer: critic_graph_ready"),
                    opt: opt.clone(),
                    policy: PolicyTemplates {
                        denoiser: (self.denoiser.valid(), den_layout.clone()),
                        edit: edit_flat.map(|(_, layout)| {
                            (self.edit.as_ref().unwrap().valid(), layout.clone())
                        }),
                        edit_scale: self.config.expo.edit_scale,
                        params,
                        schedule: self.schedule.clone(),
                        times: chain_times(&self.schedule, &self.plain),
                        chain_dtype: self.config.compute.chain_precision.dtype(),
                    },
                };
                let g = self.critic_graph.insert(CriticGraph::capture(
                    consts,
                    templates,
                    inputs,
                    &self.plain,
                )?);
                g.replay()
            }
        };
        self.critic = Some(out.critic);
        self.critic_target = Some(out.target);
        let mut opt = out.opt;
        opt.set_time(time + utd);
        self.opt_critic = NetOptimizer::Fused(Box::new(opt));
        out.metrics.push_to(pending);
        self.stage_sync();
        self.times.critic += clock.elapsed().as_secs_f64();
        Ok(())
    }

    /// The UTD critic steps operation by operation (without `pending`: the TD targets
    /// only, no step).
    fn update_critic_direct(
        &mut self,
        CriticInputs {
            obs_act,
            rew,
            next_obs,
            discount,
        }: CriticInputs,
        pending: Option<&mut PendingMetrics>,
    ) -> Result<Vec<Tensor<2>>> {
        let (b, utd) = (self.config.optim.batch_size, self.config.optim.utd);
        let (od, ad) = (self.obs_dim, self.act_dim);
        let rows = b * utd;
        let params = self.selection();
        let device_normals = self.device_normals();
        let selects = self.config.algo.selects_with_critic();
        let hoisted = self.config.compute.candidates == CandidateSchedule::Hoisted;
        let threads = self.cpu_threads();

        let clock = std::time::Instant::now();
        // Hoisted: next-action candidates of every slice in one batched pass.
        if selects && hoisted {
            self.mark("candidates");
        }
        // Inference copies of the networks that make next actions; they do not change
        // during the loop (updated after it). The denoiser's cast to the chains'
        // precision (kernels where it is not f32) counts as the candidates' time.
        let den = selects.then(|| {
            self.denoiser
                .valid()
                .with_step_precision(self.config.compute.chain_precision.dtype())
        });
        let edit = (params.num_edit > 0).then(|| self.edit.as_ref().unwrap().valid());
        let precomputed = (selects && hoisted).then(|| {
            let candidates = next_candidates(
                den.as_ref().unwrap(),
                edit.as_ref().map(|e| (e, self.config.expo.edit_scale)),
                &self.schedule,
                next_obs.clone(),
                ad,
                &params,
                &mut Stream {
                    rng: &mut self.train_rng,
                    device_normals,
                },
                self.config.compute.threads,
                self.config.compute.block_chains,
            );
            Joined::new(next_obs.clone(), candidates)
        });
        // RLPD: next actions from the actor, with the entropy term in the backup.
        let rlpd_next = (self.config.algo == Algo::Rlpd).then(|| {
            let actor = self.actor.as_ref().unwrap().valid();
            let noise = Stream {
                rng: &mut self.train_rng,
                device_normals,
            }
            .normal(rows, ad, &self.plain);
            actor.sample(next_obs.clone(), noise)
        });
        let alpha = self
            .temperature
            .as_ref()
            .map(|t| t.alpha().no_grad().reshape([1, 1]));
        self.stage_sync();
        self.times.candidates += clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();

        let mut sums = LoopSums::default();
        let mut targets = vec![];
        for i in 0..utd {
            if selects && !hoisted {
                self.mark("candidates");
            }
            self.mark("target");
            let r = i * b..(i + 1) * b;
            let next_i = next_obs.clone().slice([r.clone(), 0..od]);
            // Hoisted: this slice's scoring and evaluation subsets, in the sequential
            // order (after the candidates' noise).
            let hoisted_subsets = precomputed.is_some().then(|| {
                let members = self.critic_target.as_ref().unwrap().members();
                slice_subsets(&mut self.train_rng, members, params.critic_subset)
                    .map(|subset| self.target_subset(member_ids(&subset, &self.plain)))
            });
            let target = self.critic_target.as_ref().unwrap();
            let stream = Stream {
                rng: &mut self.train_rng,
                device_normals,
            };
            let q_next: Tensor<2> = match (&precomputed, &rlpd_next) {
                (Some(joined), _) => {
                    let [scoring, evaluation] = hoisted_subsets.expect("drawn above");
                    // Each row's score and pick depend on that row alone: the rows split
                    // across threads give the one-thread values (`crate::split`).
                    let parts = crate::split::in_threads(b, threads, |p| {
                        let rows = r.start + p.start..r.start + p.end;
                        select_given(
                            target,
                            next_obs.clone().slice([rows.clone(), 0..od]),
                            joined.rows(rows),
                            scoring.clone(),
                            &params,
                            &self.schedule,
                            Selected::Value(evaluation.clone()),
                        )
                    });
                    crate::split::join(parts)
                }
                (None, None) => {
                    // Sequential: this slice's candidates now, drawn in the reference's
                    // order (chain noise, edit noise, scoring and evaluation subsets).
                    let mut runner = Selector {
                        obs: next_i,
                        act_dim: ad,
                        denoiser: den.as_ref(),
                        schedule: &self.schedule,
                        edit: edit.as_ref(),
                        edit_scale: self.config.expo.edit_scale,
                        critics: target,
                        stream,
                        precomputed: None,
                        subset: None,
                        evaluation: None,
                    };
                    on_the_fly_value(&mut runner, &params)
                }
                (None, Some((a_next, logp))) => {
                    let subset = random_subset(stream.rng, target.members(), params.critic_subset);
                    let input =
                        Tensor::cat(vec![next_i, a_next.clone().slice([r.clone(), 0..ad])], 1);
                    let q = target
                        .forward_members(input, Some(&subset))
                        .min_dim(0)
                        .reshape([b, 1]);
                    q - logp.clone().slice([r.clone(), 0..1]) * alpha.clone().unwrap()
                }
            };
            let y = td_target(&rew, &discount, r.clone(), q_next);
            if pending.is_none() {
                // Targets only (tests): no critic step.
                targets.push(y);
                continue;
            }

            self.mark("critic step");
            let x = obs_act.clone().slice([r.clone(), 0..od + ad]);
            let (trace, marks) = (&mut self.trace, &mut self.kernel_marks);
            let (critic, target) = critic_slice_step(
                (
                    self.critic.take().unwrap(),
                    self.critic_target.take().unwrap(),
                ),
                &mut self.opt_critic,
                x,
                y,
                (self.config.optim.critic_lr, self.config.optim.tau),
                None,
                threads,
                &mut sums,
                &mut |stage| mark_stage(trace, marks, stage),
            );
            self.critic = Some(critic);
            self.critic_target = Some(target);
        }
        self.stage_sync();
        self.times.critic += clock.elapsed().as_secs_f64();
        if let Some(pending) = pending {
            sums.means().push_to(pending);
        }
        Ok(targets)
    }

    /// One environment step's batch on the device, copied out of the replay buffers where
    /// `compute.replay` says (a host batch is uploaded as it is).
    fn assemble(&mut self, batch: StepBatch, with_targets: bool) -> Result<DeviceBatch> {
        let (b, utd) = (self.config.optim.batch_size, self.config.optim.utd);
        let rows = match batch {
            StepBatch::Host(batch) => batch.rows,
            StepBatch::Drawn { rows, .. } => rows.len(),
        };
        anyhow::ensure!(
            rows == b * utd,
            "batch has {rows} rows, expected {}",
            b * utd
        );
        match batch {
            StepBatch::Host(batch) => Ok(self.upload(batch, with_targets)),
            StepBatch::Drawn {
                offline,
                online,
                rows,
            } => {
                if self.config.compute.replay == ReplayPlacement::Device {
                    return self.gather_on_device(offline, online, rows, with_targets);
                }
                let mut host = std::mem::take(&mut self.host_batch);
                gather_rows(offline, online, rows, &mut host);
                let uploaded = self.upload(&host, with_targets);
                self.host_batch = host;
                Ok(uploaded)
            }
        }
    }

    /// [`Agent::upload`]'s batch, gathered from the device mirror of the buffers (kept
    /// current here): the same values, see `crate::device_replay`.
    fn gather_on_device(
        &mut self,
        offline: &Replay,
        online: &Replay,
        rows: &[u32],
        with_targets: bool,
    ) -> Result<DeviceBatch> {
        anyhow::ensure!(
            (offline.obs_dim, offline.act_dim) == (self.obs_dim, self.act_dim)
                && (online.obs_dim, online.act_dim) == (self.obs_dim, self.act_dim),
            "replay buffers of {}/{} and {}/{} values for a learner of {}/{}",
            offline.obs_dim,
            offline.act_dim,
            online.obs_dim,
            online.act_dim,
            self.obs_dim,
            self.act_dim
        );
        let gamma = self.config.chunk_discount();
        match &mut self.device_replay {
            Some(m) if m.follows(offline, online, &self.normalizer, gamma) => m.sync(online),
            _ => {
                self.device_replay = Some(DeviceReplay::new(
                    offline,
                    online,
                    &self.normalizer,
                    gamma,
                    &self.plain,
                ))
            }
        }
        let g = self.device_replay.as_ref().expect("just set").gather(rows);
        let critic = with_targets.then(|| CriticInputs {
            obs_act: Tensor::cat(vec![g.obs.clone(), g.act.clone()], 1),
            rew: g.rew,
            next_obs: g.next_obs,
            discount: g.discount,
        });
        Ok(DeviceBatch {
            obs: Tensor::from_inner(g.obs),
            act: Tensor::from_inner(g.act),
            critic,
        })
    }

    /// Normalizes and uploads one environment step's batch (`utd` slices of `batch_size`
    /// rows, checked by [`Agent::assemble`]): once per step, every slice is a view of
    /// these. The critic's inputs only `with_targets` (BC has no critic).
    fn upload(&self, batch: &Batch, with_targets: bool) -> DeviceBatch {
        let (od, ad, rows) = (self.obs_dim, self.act_dim, batch.rows);
        let mut obs = batch.obs.clone();
        self.normalizer.apply(&mut obs);
        let critic = with_targets.then(|| {
            let mut next_obs = batch.next_obs.clone();
            self.normalizer.apply(&mut next_obs);
            let mut obs_act = Vec::with_capacity(rows * (od + ad));
            for (o, a) in obs.chunks_exact(od).zip(batch.act.chunks_exact(ad)) {
                obs_act.extend_from_slice(o);
                obs_act.extend_from_slice(a);
            }
            CriticInputs {
                obs_act: tensor2(obs_act, rows, od + ad, &self.plain),
                rew: tensor2(batch.rew.clone(), rows, 1, &self.plain),
                next_obs: tensor2(next_obs, rows, od, &self.plain),
                discount: {
                    let gamma = self.config.chunk_discount();
                    let discount = batch.mask.iter().map(|m| m * gamma).collect();
                    tensor2(discount, rows, 1, &self.plain)
                },
            }
        });
        DeviceBatch {
            obs: tensor2(obs, rows, od, &self.device),
            act: tensor2(batch.act.clone(), rows, ad, &self.device),
            critic,
        }
    }

    /// The TD targets `r + γ·mask·Q'(s', a')` of every row of `batch` under the
    /// configured candidate schedule, without any update (tests compare schedules).
    pub fn td_targets(&mut self, batch: &Batch) -> Result<Vec<f32>> {
        let DeviceBatch { critic, .. } = self.assemble(StepBatch::Host(batch), true)?;
        let targets = self.update_critic(critic.expect("requested"), None)?;
        Ok(Tensor::cat(targets, 0)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 targets"))
    }

    /// DDPM ε-prediction loss on `(obs, act)`; AdamW step; EMA update. Returns the loss
    /// (plain device, not read back).
    fn update_denoiser(&mut self, obs: Tensor<2>, act: Tensor<2>) -> Tensor<1> {
        let draws = self.denoiser_draws(obs.dims()[0], &self.device.clone());
        let lr = self.denoiser_lr();
        let (den, ema, loss) = denoiser_step(
            (self.denoiser.clone(), self.denoiser_ema.clone()),
            &mut self.opt_denoiser,
            obs,
            act,
            draws,
            (lr, None),
            self.config.diffusion.ema_rate,
        );
        self.denoiser_updates += 1;
        (self.denoiser, self.denoiser_ema) = (den, ema);
        loss
    }

    /// The denoiser loss's draws for `b` rows on `device`: diffusion time steps, then ε.
    fn denoiser_draws(&mut self, b: usize, device: &Device) -> DenoiserDraws {
        let steps = self.schedule.steps();
        let ts: Vec<usize> = (0..b)
            .map(|_| (self.train_rng.next_u64() % steps as u64) as usize)
            .collect();
        let (sa, sb): (Vec<f32>, Vec<f32>) = ts.iter().map(|&t| self.schedule.noising(t)).unzip();
        let device_normals = self.device_normals();
        let eps = Stream {
            rng: &mut self.train_rng,
            device_normals,
        }
        .normal(b, self.act_dim, device);
        DenoiserDraws {
            sa: tensor2(sa, b, 1, device),
            sb: tensor2(sb, b, 1, device),
            t: tensor2(ts.iter().map(|&t| t as f32).collect(), b, 1, device),
            eps,
        }
    }

    /// Edit policy: minimise `α log π − mean_e Q_e(s, a_base + β a)`, then the temperature.
    /// `a_base` is the slice's own actions or fresh online-denoiser samples
    /// (`expo.edit_base`).
    fn update_edit(&mut self, obs: Tensor<2>, act: Tensor<2>, pending: &mut PendingMetrics) {
        self.mark("edit");
        let b = obs.dims()[0];
        let ad = self.act_dim;
        let device_normals = self.device_normals();
        let mut stream = Stream {
            rng: &mut self.train_rng,
            device_normals,
        };
        let base = match self.config.expo.edit_base {
            EditBase::Buffer => act,
            EditBase::Denoiser => Tensor::from_inner(sample_chain(
                &self.denoiser.valid(),
                &self.schedule,
                obs.clone().no_grad(),
                ad,
                &mut stream,
            )),
        };
        let noise = stream.normal(b, ad, &self.device);
        let alpha = self.temperature.as_ref().unwrap().alpha().detach();
        let (edit, logp, q) = edit_step(
            self.edit.take().unwrap(),
            self.critic.as_ref().unwrap(),
            &mut self.opt_policy,
            EditBatch {
                obs,
                base,
                noise,
                alpha,
            },
            self.config.expo.edit_scale,
            (self.config.optim.edit_lr, None),
        );
        self.edit = Some(edit);
        pending.push(Metric::PolicyQ, q);
        self.update_temperature(logp, pending);
    }

    /// RLPD actor: minimise `α log π − mean_e Q_e(s, a)`, then the temperature.
    fn update_actor(&mut self, obs: Tensor<2>, pending: &mut PendingMetrics) {
        let b = obs.dims()[0];
        let device_normals = self.device_normals();
        let noise = Stream {
            rng: &mut self.train_rng,
            device_normals,
        }
        .normal(b, self.act_dim, &self.device);
        let actor = self.actor.take().unwrap();
        let (a, logp) = actor.sample(obs.clone(), noise);
        let q = self
            .critic
            .as_ref()
            .unwrap()
            .forward(Tensor::cat(vec![obs, a], 1))
            .mean_dim(0);
        let alpha = self.temperature.as_ref().unwrap().alpha().detach();
        let loss = (logp.clone().reshape([1, b]) * alpha.reshape([1, 1]) - q.clone()).mean();
        pending.push(Metric::PolicyQ, q.detach().mean());
        let grads = GradientsParams::from_grads(loss.backward(), &actor);
        self.actor = Some(
            self.opt_policy
                .step(self.config.optim.edit_lr, actor, grads),
        );
        self.update_temperature(logp.detach(), pending);
    }

    /// `min_α  −α (log π + target_entropy)` on `log_α`.
    fn update_temperature(&mut self, logp: Tensor<2>, pending: &mut PendingMetrics) {
        self.mark("temperature");
        let temp = self.temperature.take().unwrap();
        let gap = (logp.clone() + self.target_entropy()).mean().detach();
        let temp = temperature_step(
            &mut self.opt_temperature,
            self.config.optim.temperature_lr,
            temp,
            gap,
        );
        pending.push(Metric::Entropy, logp.mean() * -1.0);
        pending.push(Metric::Temperature, temp.alpha().detach());
        self.temperature = Some(temp);
    }
}

/// The denoiser loss's draws for `b` rows: the noising coefficients `√ᾱ_t`, `√(1−ᾱ_t)`
/// and the step `t` of each row's diffusion time step (`[b, 1]` each), and ε `[b, A]`.
struct DenoiserDraws {
    sa: Tensor<2>,
    sb: Tensor<2>,
    t: Tensor<2>,
    eps: Tensor<2>,
}

/// One denoiser step on `(obs, act)` (autodiff device): the DDPM ε-prediction loss with
/// `draws`, the optimizer step with learning rate `lr` (or the device's `scalars`), then
/// the EMA update of `ema` at `ema_rate`. Returns the stepped denoiser, the new EMA copy
/// and the loss (plain, detached).
fn denoiser_step(
    (den, ema): (Denoiser, Denoiser),
    opt: &mut NetOptimizer,
    obs: Tensor<2>,
    act: Tensor<2>,
    draws: DenoiserDraws,
    (lr, scalars): (f64, Option<&StepScalars>),
    ema_rate: f32,
) -> (Denoiser, Denoiser, Tensor<1>) {
    let DenoiserDraws { sa, sb, t, eps } = draws;
    let noisy = act * sa + eps.clone() * sb;
    let loss = (den.forward(noisy, obs, t) - eps).square().mean();
    let value = loss.clone().detach().no_grad();
    let grads = GradientsParams::from_grads(loss.backward(), &den);
    let den = opt.step_with(lr, den, grads, scalars);
    let ema = opt.blend(ema, &den, ema_rate);
    (den, ema, value)
}

/// The edit policy loss's inputs (autodiff device): observations `[b, O]`, base actions
/// `[b, A]`, the policy's noise `[b, A]` and the temperature α `[1]` (detached).
struct EditBatch {
    obs: Tensor<2>,
    base: Tensor<2>,
    noise: Tensor<2>,
    alpha: Tensor<1>,
}

/// One edit-policy step: minimise `α log π − mean_e Q_e(s, a_base + β a)` over the edit
/// policy only, with learning rate `lr` (or the device's `scalars`). Returns the stepped
/// policy, `log π` of the edited actions `[b, 1]` (detached) and the mean Q (plain).
fn edit_step(
    edit: GaussianPolicy,
    critic: &CriticEnsemble,
    opt: &mut NetOptimizer,
    EditBatch {
        obs,
        base,
        noise,
        alpha,
    }: EditBatch,
    edit_scale: f32,
    (lr, scalars): (f64, Option<&StepScalars>),
) -> (GaussianPolicy, Tensor<2>, Tensor<1>) {
    let [b, ad] = base.dims();
    let (a, logp) = edit.sample(Tensor::cat(vec![obs.clone(), base.clone()], 1), noise);
    let logp = edited_log_prob(logp, ad, edit_scale);
    let edited = base + a * edit_scale;
    let q = critic
        .forward(Tensor::cat(vec![obs, edited], 1))
        .mean_dim(0); // [1, b]
    let loss = (logp.clone().reshape([1, b]) * alpha.reshape([1, 1]) - q.clone()).mean();
    let q_mean = q.detach().mean().no_grad();
    let grads = GradientsParams::from_grads(loss.backward(), &edit);
    let edit = opt.step_with(lr, edit, grads, scalars);
    (edit, logp.detach(), q_mean)
}

/// Next-action candidates for the TD targets of every row of `next_obs` (`[R, O]`,
/// normalized, plain): `N` base samples from `den` `[R, N, A]` and, with an edit policy
/// and its scale β, the first `n_edit` of them edited `[R, n_edit, A]`. Draws: chain
/// noise, then edit noise ([`candidate_noise`]).
#[allow(clippy::too_many_arguments)]
fn next_candidates(
    den: &Denoiser,
    edit: Option<(&GaussianPolicy, f32)>,
    schedule: &DiffusionSchedule,
    next_obs: Tensor<2>,
    ad: usize,
    params: &SelectionParams,
    stream: &mut Stream,
    threads: usize,
    block_chains: usize,
) -> (Tensor<3>, Option<Tensor<3>>) {
    let device = next_obs.device();
    let rows = next_obs.dims()[0];
    let noise = candidate_noise(stream, schedule, rows, ad, params, edit.is_some(), &device);
    let times = chain_times(schedule, &device);
    // `compute.threads` and `compute.block_chains`: on the CPU backends, blocks of rows
    // on their own threads, each thread's rows in blocks. Every row's chain and edit
    // depend on that row alone, so the result is the one-block result, to the bit
    // (tested).
    let (threads, block) = if crate::nets::native_activations(&device) {
        let block = match block_chains {
            0 => rows,
            chains => (chains / params.num_samples.max(1)).max(1),
        };
        (threads.clamp(1, rows.max(1)), block)
    } else {
        (1, rows)
    };
    if threads == 1 && block >= rows {
        return candidates_from(den, edit, schedule, next_obs, times, params, noise);
    }
    // Rows `r`, block by block.
    let blocks = |r: std::ops::Range<usize>| {
        let od = next_obs.dims()[1];
        let parts: Vec<_> = r
            .clone()
            .step_by(block)
            .map(|start| {
                let b = start..(start + block).min(r.end);
                let obs = next_obs.clone().slice([b.clone(), 0..od]);
                let noise = noise.rows(b, params);
                candidates_from(den, edit, schedule, obs, times.clone(), params, noise)
            })
            .collect();
        cat_candidates(parts)
    };
    cat_candidates(crate::split::in_threads(rows, threads, blocks))
}

/// Candidates of consecutive blocks of rows, joined in order.
fn cat_candidates(parts: Vec<(Tensor<3>, Option<Tensor<3>>)>) -> (Tensor<3>, Option<Tensor<3>>) {
    let (base, edited): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    let edited: Option<Vec<_>> = edited.into_iter().collect();
    (crate::split::join(base), edited.map(crate::split::join))
}

/// The Gaussian draws of [`next_candidates`] for `rows` rows: the chains of `rows·N`
/// samples, then the edits' `[rows·n_edit, A]` (`with_edit`).
struct CandidateNoise {
    chain: Vec<Tensor<2>>,
    edit: Option<Tensor<2>>,
}

impl CandidateNoise {
    /// The draws of observation rows `r`: rows `[r0·N, r1·N)` of each chain draw and
    /// `[r0·n_edit, r1·n_edit)` of the edit noise ([`repeat_rows`] keeps each
    /// observation's copies together).
    fn rows(&self, r: std::ops::Range<usize>, params: &SelectionParams) -> CandidateNoise {
        let block = |t: &Tensor<2>, per_row: usize| {
            let cols = t.dims()[1];
            t.clone()
                .slice([r.start * per_row..r.end * per_row, 0..cols])
        };
        CandidateNoise {
            chain: self
                .chain
                .iter()
                .map(|n| block(n, params.num_samples))
                .collect(),
            edit: self.edit.as_ref().map(|n| block(n, params.num_edit)),
        }
    }
}

fn candidate_noise(
    stream: &mut Stream,
    schedule: &DiffusionSchedule,
    rows: usize,
    ad: usize,
    params: &SelectionParams,
    with_edit: bool,
    device: &Device,
) -> CandidateNoise {
    let chain = chain_noise(stream, schedule, rows * params.num_samples, ad, device);
    let edit = with_edit.then(|| stream.normal(rows * params.num_edit, ad, device));
    CandidateNoise { chain, edit }
}

/// [`next_candidates`] from its draws and the chain's time steps.
fn candidates_from(
    den: &Denoiser,
    edit: Option<(&GaussianPolicy, f32)>,
    schedule: &DiffusionSchedule,
    next_obs: Tensor<2>,
    times: Tensor<2>,
    params: &SelectionParams,
    noise: CandidateNoise,
) -> (Tensor<3>, Option<Tensor<3>>) {
    let rows = next_obs.dims()[0];
    let n = params.num_samples;
    let base = run_chain(
        den,
        schedule,
        repeat_rows(next_obs.clone(), n),
        times,
        noise.chain,
    );
    let ad = base.dims()[1];
    let base = base.reshape([rows, n, ad]);
    let edited = edit.map(|(edit, edit_scale)| {
        let ne = params.num_edit;
        let src = base
            .clone()
            .slice([0..rows, 0..ne, 0..ad])
            .reshape([rows * ne, ad]);
        let input = Tensor::cat(vec![repeat_rows(next_obs, ne), src.clone()], 1);
        let noise = noise.edit.expect("edit noise drawn with the edit policy");
        let (a, _) = edit.sample(input, noise);
        (src + a * edit_scale).reshape([rows, ne, ad])
    });
    (base, edited)
}

/// Candidates ready to be scored: every observation's candidates `[B, M, A]` (its N base
/// samples, then its n_edit edits) and the critics' input rows `[B·M, O + A]` (the
/// observation beside each of its candidates). The hoisted TD targets join them once per
/// environment step, and each slice takes a view of its rows ([`Joined::rows`]): per
/// slice that saves the joining's five device operations (two concatenations and the
/// copy of the repeated observations).
#[derive(Clone)]
struct Joined {
    candidates: Tensor<3>,
    input: Tensor<2>,
}

impl Joined {
    fn new(obs: Tensor<2>, (base, edited): (Tensor<3>, Option<Tensor<3>>)) -> Self {
        let candidates = match edited {
            Some(edited) => join_candidates(base, edited),
            None => base,
        };
        Joined {
            input: critic_input(obs, &candidates),
            candidates,
        }
    }

    /// The candidates of observations `r`.
    fn rows(&self, r: std::ops::Range<usize>) -> Self {
        let [_, m, ad] = self.candidates.dims();
        let width = self.input.dims()[1];
        Joined {
            candidates: self.candidates.clone().slice([r.clone(), 0..m, 0..ad]),
            input: self.input.clone().slice([r.start * m..r.end * m, 0..width]),
        }
    }
}

/// Base and edited candidates side by side: `[B, N, A]`, `[B, n_edit, A]` → `[B, M, A]`.
fn join_candidates(base: Tensor<3>, edited: Tensor<3>) -> Tensor<3> {
    Tensor::cat(vec![base, edited], 1)
}

/// The critics' input rows for candidates `[B, M, A]` of observations `obs` `[B, O]`:
/// `[B·M, O + A]`, row `b·M + j` holding observation `b` and its candidate `j`.
fn critic_input(obs: Tensor<2>, candidates: &Tensor<3>) -> Tensor<2> {
    let [b, m, ad] = candidates.dims();
    Tensor::cat(
        vec![repeat_rows(obs, m), candidates.clone().reshape([b * m, ad])],
        1,
    )
}

/// The target critics that score the candidates, chosen before scoring.
#[derive(Clone)]
enum Subset {
    /// Members `ids` (`[k]`) of the ensemble: one selection per parameter tensor.
    Ids(Box<Tensor<1, Int>>),
    /// The members already gathered into a `k`-member ensemble ([`TargetSubsets`]).
    Gathered(CriticEnsemble),
}

/// Scoring subsets of the target critics gathered from the fused optimizer's target
/// buffer ([`crate::optim::MemberGather`]): three device operations per subset instead
/// of one selection per parameter tensor (14 at 3 hidden layers), in every slice of the
/// critic loop and in acting. The same values as selecting (tested).
#[derive(Clone)]
pub(crate) struct TargetSubsets {
    /// The layout of the buffers it gathers from.
    source: crate::optim::FlatLayout,
    gather: crate::optim::MemberGather,
    /// A `k`-member critic ensemble: the shape the gathered buffer is assigned to.
    template: CriticEnsemble,
}

impl TargetSubsets {
    fn new(
        source: &crate::optim::FlatLayout,
        critics: &CriticEnsemble,
        k: usize,
        device: &Device,
    ) -> Result<Self> {
        let template = critics.first_members(k);
        Ok(TargetSubsets {
            gather: crate::optim::MemberGather::new(source, &template, device)?,
            source: source.clone(),
            template,
        })
    }

    /// Members `ids` of the critics whose parameters `flat` holds (in `source`'s layout).
    fn subset(&self, flat: &Tensor<1>, ids: &Tensor<1, Int>) -> Subset {
        let values = self.gather.gather(flat, ids);
        Subset::Gathered(self.gather.layout().assign(self.template.clone(), &values))
    }

    fn fits(&self, source: &crate::optim::FlatLayout, k: usize) -> bool {
        self.source == *source && self.template.members() == k
    }
}

/// What [`select_given`] returns.
#[derive(Clone)]
enum Selected {
    /// The best candidate `[B, A]` (acting).
    Action,
    /// The best candidate's value `[B, 1]` under these target critics (min over them):
    /// the TD target's bootstrap (`shared_model::on_the_fly_value`).
    Value(Subset),
}

/// EXPO's selection (`shared_model::on_the_fly_action`) among given candidates of
/// observations `obs` `[B, O]`, scored by the target critics `subset` (min over them):
/// the best candidate or its value. Nothing is drawn. Acting and the hoisted TD targets
/// use it.
fn select_given(
    target: &CriticEnsemble,
    obs: Tensor<2>,
    candidates: Joined,
    subset: Subset,
    params: &SelectionParams,
    schedule: &DiffusionSchedule,
    selected: Selected,
) -> Tensor<2> {
    let mut unused = Rng::new(0);
    let mut runner = Selector {
        obs,
        act_dim: candidates.candidates.dims()[2],
        denoiser: None,
        schedule,
        edit: None,
        edit_scale: 0.0,
        critics: target,
        stream: Stream::host(&mut unused),
        precomputed: Some(candidates),
        subset: Some(subset),
        evaluation: None,
    };
    match selected {
        Selected::Action => on_the_fly_action(&mut runner, params).0,
        Selected::Value(evaluation) => {
            runner.evaluation = Some(evaluation);
            on_the_fly_value(&mut runner, params)
        }
    }
}

/// One slice's TD targets `y = r + d·Q'(s', a')` `[b, 1]`: rows `r` of the rewards and
/// the bootstrap discounts ([`CriticInputs`]), and the next actions' values `q_next`.
fn td_target(
    rew: &Tensor<2>,
    discount: &Tensor<2>,
    r: std::ops::Range<usize>,
    q_next: Tensor<2>,
) -> Tensor<2> {
    let slice = |t: &Tensor<2>| t.clone().slice([r.clone(), 0..1]);
    slice(rew) + slice(discount) * q_next
}

/// The critic loop's metrics, summed over its slices element by element and averaged
/// once after the loop: per slice two additions and a square instead of three means,
/// three additions and a square (on a GPU each is a kernel; issue 14).
#[derive(Default)]
struct LoopSums {
    /// Σ over slices of the TD targets `[b, 1]`, of Q `[E, b]` and of `(Q − y)²` `[E, b]`.
    targets: Option<Tensor<2>>,
    q: Option<Tensor<2>>,
    squared_errors: Option<Tensor<2>>,
    slices: usize,
}

impl LoopSums {
    fn add(&mut self, y: Tensor<2>, q: Tensor<2>, errors: Tensor<2>) {
        let add = |sum: &mut Option<Tensor<2>>, x: Tensor<2>| {
            *sum = Some(match sum.take() {
                Some(s) => s + x,
                None => x,
            });
        };
        add(&mut self.targets, y);
        add(&mut self.q, q);
        add(&mut self.squared_errors, errors.square());
        self.slices += 1;
    }

    /// The means over all slices: the critic loss (the mean of the slices' TD losses),
    /// Q and the TD target.
    fn means(self) -> LoopMetrics {
        let n = self.slices as f32;
        let mean = |sum: Option<Tensor<2>>| sum.expect("at least one slice").mean() / n;
        LoopMetrics {
            loss: mean(self.squared_errors),
            q: mean(self.q),
            target_q: mean(self.targets),
        }
    }
}

/// [`LoopSums::means`], on the device until [`PendingMetrics::read`].
#[derive(Clone)]
pub(crate) struct LoopMetrics {
    loss: Tensor<1>,
    q: Tensor<1>,
    target_q: Tensor<1>,
}

impl LoopMetrics {
    fn push_to(self, pending: &mut PendingMetrics) {
        pending.push(Metric::CriticLoss, self.loss);
        pending.push(Metric::QMean, self.q);
        pending.push(Metric::TargetQMean, self.target_q);
    }
}

/// One slice's critic step towards TD targets `y` `[b, 1]` on inputs `x` `[b, O + A]`:
/// gradients (the backward pass written out: fewer operations than an autodiff graph,
/// checked against autodiff in the tests), the optimizer step with learning rate `lr`,
/// then Polyak averaging of the target with rate `tau`; the slice's Q and errors go to
/// `sums`. Returns the stepped critic and the blended target. The gradients split the
/// members across `threads` (CPU; the same bits as 1).
#[allow(clippy::too_many_arguments)]
fn critic_slice_step(
    (critic, target): (CriticEnsemble, CriticEnsemble),
    opt: &mut NetOptimizer,
    x: Tensor<2>,
    y: Tensor<2>,
    (lr, tau): (f64, f32),
    scalars: Option<&StepScalars>,
    threads: usize,
    sums: &mut LoopSums,
    mark: &mut dyn FnMut(&'static str),
) -> (CriticEnsemble, CriticEnsemble) {
    let b = y.dims()[0];
    let (q, errors, grads) = critic.td_loss_and_grads(x, y.clone().reshape([1, b]), threads);
    sums.add(y, q, errors);
    let critic = opt.step_with(lr, critic, grads, scalars);
    mark("target critics");
    let target = opt.blend(target, &critic, tau);
    (critic, target)
}

/// Log-density of the edited action `base + β·a` given the log-density of `a`: the
/// affine map scales volumes by `β^A`, so `log π_edit = log π(a) − A·ln β`.
pub fn edited_log_prob(logp: Tensor<2>, act_dim: usize, beta: f32) -> Tensor<2> {
    logp - act_dim as f32 * beta.ln()
}

/// One step of `min_α −α · gap` on `ln α` (`gap` = mean log π + target entropy,
/// detached), then `ln α` held at most [`MAX_LOG_TEMPERATURE`].
fn temperature_step(
    opt: &mut NetOptimizer,
    lr: f64,
    temp: Temperature,
    gap: Tensor<1>,
) -> Temperature {
    let loss = (temp.alpha() * gap * -1.0).sum();
    let grads = GradientsParams::from_grads(loss.backward(), &temp);
    opt.step(lr, temp, grads).bounded()
}

/// The SAC temperature's target entropy: `per_dim · A`, plus `A·ln β` when the policy's
/// samples are scaled by `β` and the target is to be adjusted for it
/// (`expo.adjust_target_entropy`; see [`edited_log_prob`]).
pub fn target_entropy(per_dim: f32, act_dim: usize, scaled_by: Option<f32>) -> f32 {
    let a = act_dim as f32;
    per_dim * a + scaled_by.map_or(0.0, |beta| a * beta.ln())
}

/// The first element of a tensor as f32 (host copy).
pub fn scalar<const D: usize>(t: Tensor<D>) -> f32 {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")[0]
}

/// [`ExpoRunner`] on burn tensors. It runs a chain and the edit policy (the sequential
/// TD targets), or serves candidates made beforehand (`precomputed`: acting and the
/// hoisted TD targets), already joined: then sampling, editing and joining all return
/// them whole, and scoring takes their input rows.
pub(crate) struct Selector<'a> {
    /// Observations `[B, O]`, normalized, on the plain device.
    obs: Tensor<2>,
    act_dim: usize,
    denoiser: Option<&'a Denoiser>,
    schedule: &'a DiffusionSchedule,
    edit: Option<&'a GaussianPolicy>,
    edit_scale: f32,
    critics: &'a CriticEnsemble,
    stream: Stream<'a>,
    precomputed: Option<Joined>,
    /// The scoring subset, chosen beforehand (`None`: its members drawn from `stream`
    /// when scoring).
    subset: Option<Subset>,
    /// The TD target's evaluation subset, likewise (drawn when evaluating).
    evaluation: Option<Subset>,
}

impl Selector<'_> {
    /// The minimum over the target critics `chosen` (or `k` of them drawn now) of their
    /// values at critic input rows `input` `[R, O + A]`: `[1, R]`.
    fn min_q(&mut self, chosen: Option<Subset>, k: usize, input: Tensor<2>) -> Tensor<2> {
        self.q_values(chosen, k, input).min_dim(0)
    }

    /// The values of the target critics `chosen` (or `k` of them drawn now) at critic
    /// input rows `input` `[R, O + A]`: `[members, R]`.
    fn q_values(&mut self, chosen: Option<Subset>, k: usize, input: Tensor<2>) -> Tensor<2> {
        let chosen = chosen.unwrap_or_else(|| {
            let subset = random_subset(self.stream.rng, self.critics.members(), k);
            Subset::Ids(Box::new(member_ids(&subset, &self.obs.device())))
        });
        match chosen {
            Subset::Ids(ids) => self.critics.forward_selected(input, Some(&ids)),
            Subset::Gathered(critics) => critics.forward(input),
        }
    }
}

/// Acting graphs kept at most (one per number of observations acted on at once).
/// Evaluation acts on the episodes still running, so the number shrinks as episodes end:
/// each new size would record a graph (three warm-up runs and the recording) and keep it,
/// with its own copies of the networks' weights and its memory pool, for the rest of the
/// run. Sizes past those act directly, with the same results ([`admits_act_graph`]
/// keeps the last slot for online acting's one observation).
pub const MAX_ACT_GRAPHS: usize = 4;

/// Whether acting on `k` observations runs as a recorded graph, given the sizes
/// `held` already recorded: one held, or a free slot. The last slot is kept for one
/// observation, online acting's size: an evaluation before the first online step
/// (`run.pretrain_critic` builds the buffers graphs need) took all four with its
/// shrinking sizes, and online acting then ran directly for the whole run.
fn admits_act_graph(held: impl ExactSizeIterator<Item = usize>, k: usize) -> bool {
    let free = MAX_ACT_GRAPHS.saturating_sub(held.len());
    let (mut has_k, mut has_one) = (false, false);
    for rows in held {
        has_k |= rows == k;
        has_one |= rows == 1;
    }
    // Once one observation has its graph, the kept slot is free for any size.
    has_k || free > 1 || (free == 1 && (k == 1 || has_one))
}

/// The candidates' scores from the chosen critics' values `q` `[members, R]`: the
/// minimum of each column, −∞ where any member's value is NaN, so that such a
/// candidate never wins the argmax, as in the controller
/// (`shared_model::select::pessimistic_scores` then `argmax_rows`). burn's min skips
/// NaN, and its argmax would pick a NaN.
fn pessimistic_min(q: Tensor<2>) -> Tensor<2> {
    // Two kernels more than a bare min: NaN becomes −∞ before it.
    let nan = q.clone().is_nan();
    q.mask_fill(nan, f32::NEG_INFINITY).min_dim(0)
}

/// The critics' values `q` `[members, B·M]` with NaN in the column of each candidate of
/// `candidates` `[B, M, A]` that holds a NaN (which [`pessimistic_min`] then scores −∞),
/// so that it never wins, as in the controller (`shared_model::select::void_non_finite`):
/// a critic does not reliably pass NaN through (burn's CPU ReLU is `max(x, 0)`, which
/// makes it 0), and such a candidate was scored by the critic's biases alone, and could
/// win. Three kernels per scoring: a row's sum is not finite when one of its values is
/// not, and `s − s` is 0 for a finite `s`, NaN otherwise. (An infinite value cannot
/// come from the chain here, whose clamp makes it ±1: the controller voids those too,
/// before its clamp, which the trainer's hot path does not pay for.)
fn void_non_finite(q: Tensor<2>, candidates: &Tensor<3>) -> Tensor<2> {
    let [b, m, _] = candidates.dims();
    let sum = candidates.clone().sum_dim(2).reshape([1, b * m]);
    q + (sum.clone() - sum)
}

impl ExpoRunner for Selector<'_> {
    type Candidates = Tensor<3>;
    type Scores = Tensor<2>;
    /// `(actions [B, A], their scores [B, 1])`.
    type Actions = (Tensor<2>, Tensor<2>);

    fn sample_base(&mut self, n: usize) -> Tensor<3> {
        if let Some(given) = &self.precomputed {
            return given.candidates.clone();
        }
        let b = self.obs.dims()[0];
        let den = self.denoiser.expect("denoiser for sampling");
        sample_chain(
            den,
            self.schedule,
            repeat_rows(self.obs.clone(), n),
            self.act_dim,
            &mut self.stream,
        )
        .reshape([b, n, self.act_dim])
    }

    fn edit(&mut self, base: &Tensor<3>, n: usize) -> Tensor<3> {
        if let Some(given) = &self.precomputed {
            return given.candidates.clone();
        }
        let [b, _, ad] = base.dims();
        let edit = self.edit.expect("edit policy");
        let src = base.clone().slice([0..b, 0..n, 0..ad]).reshape([b * n, ad]);
        let input = Tensor::cat(vec![repeat_rows(self.obs.clone(), n), src.clone()], 1);
        let noise = self.stream.normal(b * n, ad, &self.obs.device());
        let (a, _) = edit.sample(input, noise);
        (src + a * self.edit_scale).reshape([b, n, ad])
    }

    fn concat(&mut self, a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
        if self.precomputed.is_some() {
            return a; // the joined candidates, from `sample_base`
        }
        join_candidates(a, b)
    }

    fn score(&mut self, candidates: &Tensor<3>, subset: usize) -> Tensor<2> {
        let [b, m, _] = candidates.dims();
        let input = match &self.precomputed {
            Some(given) => given.input.clone(),
            None => critic_input(self.obs.clone(), candidates),
        };
        let chosen = self.subset.take();
        let q = void_non_finite(self.q_values(chosen, subset, input), candidates);
        pessimistic_min(q).reshape([b, m])
    }

    fn pick(&mut self, candidates: Tensor<3>, scores: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let [b, _, ad] = candidates.dims();
        let (best, idx) = scores.max_dim_with_indices(1); // [B, 1]
        let idx = idx.unsqueeze_dim::<3>(2).expand([b, 1, ad]);
        (candidates.gather(1, idx).reshape([b, ad]), best)
    }
}

impl TdRunner for Selector<'_> {
    /// `[B, 1]`.
    type Values = Tensor<2>;

    fn evaluate(&mut self, (actions, _score): (Tensor<2>, Tensor<2>), subset: usize) -> Tensor<2> {
        let b = actions.dims()[0];
        let input = Tensor::cat(vec![self.obs.clone(), actions], 1);
        let chosen = self.evaluation.take();
        self.min_q(chosen, subset, input).reshape([b, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last acting-graph slot is online acting's (one observation); the others go
    /// to the first sizes asked for.
    #[test]
    fn the_last_acting_graph_is_kept_for_one_observation() {
        let admits = |held: &[usize], k| admits_act_graph(held.iter().copied(), k);
        assert!(admits(&[], 50) && admits(&[50, 49], 48));
        assert!(!admits(&[50, 49, 48], 47));
        assert!(admits(&[50, 49, 48], 1) && admits(&[50, 49, 48], 49));
        assert!(!admits(&[50, 49, 48, 1], 47) && admits(&[50, 49, 48, 1], 1));
        // One observation recorded early: the last slot goes to the next size.
        assert!(admits(&[1, 50, 49], 48) && !admits(&[1, 50, 49, 48], 47));
    }

    /// A temperature pushed up without end stops at its bound and comes down once the
    /// gap changes sign. Unbounded, `α · gap` squared overflowed near `ln α` = 43, Adam's
    /// second moment turned infinite and `ln α` never moved again.
    #[test]
    fn a_rising_temperature_stays_able_to_fall() {
        let device = Device::flex().autodiff();
        let mut opt = NetOptimizer::new(OptimizerImpl::PerParameter, 0.0, Packing::Concatenated);
        let log_alpha = |t: &Temperature| t.log_alpha.val().into_scalar::<f32>();
        let gap = |g: f32| Tensor::<1>::from_data(TensorData::new(vec![g], [1]), &device);
        // Adam moves `ln α` by about the learning rate per step: 1 reaches the
        // overflow from 25 in under 20 steps.
        let mut temp = Temperature::new(25f32.exp(), &device);
        for _ in 0..40 {
            temp = temperature_step(&mut opt, 1.0, temp, gap(2.0));
        }
        let top = log_alpha(&temp);
        assert!(
            top.is_finite() && top <= crate::nets::MAX_LOG_TEMPERATURE,
            "{top}"
        );
        // The optimizer's state outlives the bound: its momentum still pushes up once,
        // where a fresh state would step down at once.
        temp = temperature_step(&mut opt, 1.0, temp, gap(-2.0));
        assert_eq!(log_alpha(&temp), crate::nets::MAX_LOG_TEMPERATURE);
        for _ in 0..100 {
            temp = temperature_step(&mut opt, 1.0, temp, gap(-2.0));
        }
        let after = log_alpha(&temp);
        assert!(after < top - 1.0, "ln α {top} → {after}: frozen");
    }

    /// The trainer's scores and pick agree with the controller's on NaN values and ties:
    /// a candidate any chosen critic values NaN never wins; ties go to the first; a row
    /// of NaN only takes candidate 0. (burn's min skipped the NaN, and its argmax took
    /// it: the trainer could act with a candidate the controller never would.)
    #[test]
    fn nan_values_lose_as_in_the_controller() {
        let device = Device::flex();
        let nan = f32::NAN;
        // [members 2, rows 2 × candidates 4], member-major.
        let (members, rows, m) = (2, 2, 4);
        let q = vec![
            5.0, nan, 1.0, 2.0, /* row 1 */ nan, nan, nan, nan, //
            4.0, 9.0, 3.0, 4.0, /* row 1 */ nan, nan, nan, nan,
        ];
        let scores =
            pessimistic_min(tensor2(q.clone(), members, rows * m, &device)).reshape([rows, m]);
        let (_, idx) = scores.max_dim_with_indices(1);
        let picked: Vec<i64> = idx.into_data().convert::<i64>().try_to_vec().unwrap();
        let mut host = vec![0.0; rows * m];
        shared_model::select::pessimistic_scores(&q, rows * m, &mut host);
        let mut want = vec![0; rows];
        shared_model::select::argmax_rows(&host, m, &mut want);
        assert_eq!(want, [0, 0]);
        assert_eq!(picked, want.iter().map(|&i| i as i64).collect::<Vec<_>>());
        // A NaN score ties with a −∞ one (one member, 2 candidates): the first wins on
        // both sides (the controller's argmax preferred the −∞).
        let q = vec![nan, f32::NEG_INFINITY];
        let scores = pessimistic_min(tensor2(q.clone(), 1, 2, &device));
        let (_, idx) = scores.max_dim_with_indices(1);
        let picked: Vec<i64> = idx.into_data().convert::<i64>().try_to_vec().unwrap();
        let mut host = vec![0.0; 2];
        shared_model::select::pessimistic_scores(&q, 2, &mut host);
        let mut want = vec![0; 1];
        shared_model::select::argmax_rows(&host, 2, &mut want);
        assert_eq!(picked, [want[0] as i64]);
        assert_eq!(want, [0]);
        // Ties: the first of the best.
        let tied = vec![1.0, 3.0, 3.0, 2.0];
        let scores = pessimistic_min(tensor2(tied, 1, 4, &device));
        let (_, idx) = scores.max_dim_with_indices(1);
        let picked: Vec<i64> = idx.into_data().convert::<i64>().try_to_vec().unwrap();
        assert_eq!(picked, [1]);
        // A candidate holding a value that is not finite loses whatever its score (a
        // critic's ReLU made its NaN a 0, and the critic's biases scored it): the
        // controller's `void_non_finite`. [rows 2, candidates 3, A 2].
        let candidates = [
            [0.1, nan, 0.2, 0.2, 0.3, 0.3],
            [f32::INFINITY, 0.0, 0.5, f32::NEG_INFINITY, 0.1, 0.1],
        ]
        .concat();
        let q = vec![9.0, 1.0, 2.0, /* row 1 */ 9.0, 8.0, 1.0];
        let voided = void_non_finite(
            tensor2(q.clone(), 1, 6, &device),
            &Tensor::<3>::from_data(TensorData::new(candidates.clone(), [2, 3, 2]), &device),
        );
        let scores = pessimistic_min(voided).reshape([2, 3]);
        let (_, idx) = scores.max_dim_with_indices(1);
        let picked: Vec<i64> = idx.into_data().convert::<i64>().try_to_vec().unwrap();
        let mut host = q.clone();
        shared_model::select::void_non_finite(&candidates, 2, &mut host);
        let mut want = vec![0; 2];
        shared_model::select::argmax_rows(&host, 3, &mut want);
        assert_eq!(want, [2, 2]);
        assert_eq!(picked, want.iter().map(|&i| i as i64).collect::<Vec<_>>());
    }

    /// The TD target's value of given candidates: the candidate that scores best under
    /// the scoring subset (min over it), valued by the evaluation subset (min over it),
    /// computed on the host from every member's Q; never the picked candidate's score.
    #[test]
    fn td_value_is_the_evaluation_subsets_value_of_the_scoring_subsets_pick() {
        let device = Device::flex();
        let mut rng = Rng::new(11);
        let (b, m, od, ad, members) = (6, 5, 3, 2, 6);
        let critics = CriticEnsemble::new(
            members,
            od + ad,
            &[16, 16],
            &mut Init::reference(11),
            &device,
        );
        let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal()).collect() };
        let obs = tensor2(values(b * od), b, od, &device);
        let candidates =
            Tensor::<3>::from_data(TensorData::new(values(b * m * ad), [b, m, ad]), &device);
        let joined = Joined::new(obs.clone(), (candidates.clone(), None));
        // Q of every member at every candidate, on the host: q[e][row·m + j].
        let all = critics.forward(joined.input.clone());
        let q: Vec<f32> = all.into_data().try_to_vec().unwrap();
        let at = |e: usize, row: usize, j: usize| q[e * b * m + row * m + j];
        let params = SelectionParams {
            num_samples: m,
            num_edit: 0,
            critic_subset: 2,
        };
        let schedule = DiffusionSchedule::vp(3, 0.1, 10.0);
        let (scoring, evaluation) = ([0usize, 3], [1usize, 5]);
        let ids = |s: &[usize]| Subset::Ids(Box::new(member_ids(s, &device)));
        let got = select_given(
            &critics,
            obs,
            joined,
            ids(&scoring),
            &params,
            &schedule,
            Selected::Value(ids(&evaluation)),
        );
        let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
        let min_over =
            |s: &[usize], row, j| s.iter().map(|&e| at(e, row, j)).fold(f32::MAX, f32::min);
        let mut differs = 0;
        assert_eq!(got.len(), b);
        for (row, &got) in got.iter().enumerate() {
            let score = |j| min_over(&scoring, row, j);
            let pick = (0..m).fold(0, |best, j| if score(j) > score(best) { j } else { best });
            let want = min_over(&evaluation, row, pick);
            assert!((got - want).abs() < 1e-5, "row {row}: {got} vs {want}");
            differs += usize::from((score(pick) - want).abs() > 1e-4);
        }
        assert!(
            differs > 0,
            "the test cannot tell the value from the pick's score"
        );
    }

    /// Through the selection itself (acting and the hoisted TD targets): a candidate
    /// holding a NaN is never picked, though the critics score it finite (their ReLU
    /// makes its NaN a 0), and the pick is the controller's (`void_non_finite`, then
    /// `argmax_rows`).
    #[test]
    fn a_nan_candidate_is_never_selected() {
        let device = Device::flex();
        let mut rng = Rng::new(12);
        let (b, m, od, ad, members) = (32, 5, 3, 2, 4);
        let critics = CriticEnsemble::new(
            members,
            od + ad,
            &[16, 16],
            &mut Init::reference(12),
            &device,
        );
        let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal()).collect() };
        let obs = tensor2(values(b * od), b, od, &device);
        let mut host_candidates = values(b * m * ad);
        for row in 0..b {
            // Candidate 0 of each row: its second value NaN.
            host_candidates[row * m * ad + 1] = f32::NAN;
        }
        let candidates = Tensor::<3>::from_data(
            TensorData::new(host_candidates.clone(), [b, m, ad]),
            &device,
        );
        let joined = Joined::new(obs.clone(), (candidates, None));
        let q: Vec<f32> = critics
            .forward(joined.input.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        let scoring = [1usize, 2];
        // The scores on the host: min over the subset, then voided, then the argmax.
        let mut scores: Vec<f32> = (0..b * m)
            .map(|i| {
                scoring
                    .iter()
                    .map(|&e| q[e * b * m + i])
                    .fold(f32::MAX, f32::min)
            })
            .collect();
        let unvoided = scores.clone();
        shared_model::select::void_non_finite(&host_candidates, ad, &mut scores);
        let mut want = vec![0; b];
        shared_model::select::argmax_rows(&scores, m, &mut want);
        let mut would_win = vec![0; b];
        shared_model::select::argmax_rows(&unvoided, m, &mut would_win);
        assert!(
            would_win.contains(&0),
            "the test cannot tell: no NaN candidate scored best"
        );
        let params = SelectionParams {
            num_samples: m,
            num_edit: 0,
            critic_subset: 2,
        };
        let schedule = DiffusionSchedule::vp(3, 0.1, 10.0);
        let got = select_given(
            &critics,
            obs,
            joined,
            Subset::Ids(Box::new(member_ids(&scoring, &device))),
            &params,
            &schedule,
            Selected::Action,
        );
        let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
        for row in 0..b {
            let j = want[row];
            assert_ne!(j, 0, "row {row}");
            let start = (row * m + j) * ad;
            assert_eq!(
                got[row * ad..(row + 1) * ad],
                host_candidates[start..start + ad],
                "row {row}"
            );
        }
    }

    /// The loop's metrics are the means over all slices of each slice's mean: the TD loss
    /// `mean (Q − y)²`, Q and the TD target, whatever the slices' values.
    #[test]
    fn loop_sums_average_the_slices_means() {
        let device = Device::flex();
        let mut rng = Rng::new(5);
        let (e, b, slices) = (3, 4, 5);
        let mut sums = LoopSums::default();
        let (mut loss, mut q_mean, mut y_mean) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 0..slices {
            let y: Vec<f32> = (0..b).map(|_| rng.normal()).collect();
            let q: Vec<f32> = (0..e * b).map(|_| 3.0 * rng.normal()).collect();
            let errors: Vec<f32> = (0..e * b).map(|i| q[i] - y[i % b]).collect();
            let mean = |v: &[f32], f: fn(f32) -> f32| {
                v.iter().map(|&x| f(x) as f64).sum::<f64>() / v.len() as f64
            };
            loss += mean(&errors, |x| x * x) / slices as f64;
            q_mean += mean(&q, |x| x) / slices as f64;
            y_mean += mean(&y, |x| x) / slices as f64;
            sums.add(
                tensor2(y, b, 1, &device),
                tensor2(q, e, b, &device),
                tensor2(errors, e, b, &device),
            );
        }
        let m = sums.means();
        for (got, want, what) in [
            (m.loss, loss, "loss"),
            (m.q, q_mean, "Q"),
            (m.target_q, y_mean, "target"),
        ] {
            let got = scalar(got) as f64;
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{what}: {got} vs {want}"
            );
        }
    }

    /// Metric sums follow the metrics pushed, in any order (without reading back), and
    /// keep what was summed when the set of metrics changes (read back then).
    #[test]
    fn metric_sums_add_up_each_metric_whatever_the_order_and_set() {
        let device = Device::flex();
        let value = |v: f32| Tensor::<1>::from_floats([v], &device);
        let mut sums = MetricSums::default();
        let steps: [&[(Metric, f32)]; 4] = [
            &[(Metric::QMean, 1.0), (Metric::CriticLoss, 2.0)],
            &[(Metric::CriticLoss, 3.0), (Metric::QMean, 4.0)],
            &[(Metric::Entropy, 6.0), (Metric::CriticLoss, 5.0)],
            &[],
        ];
        for (i, step) in steps.into_iter().enumerate() {
            let mut pending = PendingMetrics::default();
            for &(metric, v) in step {
                pending.push(metric, value(v));
            }
            sums.add(pending);
            if i == 1 {
                // The same set in another order: still summed on the device.
                assert_eq!(sums.host, UpdateMetrics::default(), "read back early");
            }
        }
        let want = UpdateMetrics {
            critic_loss: 10.0,
            q_mean: 5.0,
            entropy: 6.0,
            ..Default::default()
        };
        assert_eq!(sums.take(), (want, 4));
        assert_eq!(sums.take(), (UpdateMetrics::default(), 0));
    }
}
