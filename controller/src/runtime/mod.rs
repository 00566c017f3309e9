//! The inference runtime: a verified bundle, a network backend, and EXPO's selection
//! from `shared_model::select` (the code the trainer acts with).
//!
//! One action (`Policy::act`), for one observation:
//!
//! ```text
//! normalize obs ─► chain: x ~ N(0, I) [N, A]; for each executed step t:
//!                  eps = denoiser(obs, x, t)   (all N candidates in one batch)
//!                  x = x_coef·x + eps_coef·eps + σ·z, clip to [−1, 1]
//!              ─► edit: (mean, log_std) = edit(obs, x[..n_edit]);
//!                  edited = x + β·tanh(mean + exp(log_std)·z)
//!              ─► score: K of E target critics, sampled; q = critic(obs, [x; edited], K)
//!                  score = min over the K members
//!              ─► argmax, clamp to the action bounds
//! ```
//!
//! Every buffer is allocated when the policy is built; with an allocation-free backend
//! (`native`) an action allocates nothing. Random draws happen in the trainer's order
//! (chain start, per-step noise when σ > 0, edit noise, critic subset) from a seeded
//! `sim::rng::Rng`, so a bundle and its checkpoint pick the same action for the same seed.
//!
//! **Two-speed mode** ([`TwoSpeedPolicy`]): a worker thread keeps refreshing the N base
//! candidates for the newest observation; every tick edits them with the newest
//! observation and picks by Q, so the tick costs edit + critic only.

mod kernels;
mod native;
#[cfg(feature = "ort")]
mod ort_backend;
mod tract_backend;
mod two_speed;

pub use kernels::{Packed as PackedWeights, dense as dense_kernel, kernel_name};
pub use native::NativeNetworks;
#[cfg(feature = "ort")]
pub use ort_backend::OrtNetworks;
pub use tract_backend::TractNetworks;
pub use two_speed::{CandidateAges, TwoSpeedPolicy};

use anyhow::{Context, Result, bail, ensure};
use shared_model::manifest::Manifest;
use shared_model::schedule::SamplingStep;
use shared_model::select::{
    ExpoRunner, SelectionParams, argmax_rows, on_the_fly_action, pessimistic_scores, sample_subset,
    void_non_finite,
};
use shared_model::{DiffusionSchedule, VerifiedBundle};
use sim::rng::Rng;
use std::str::FromStr;
use std::time::Instant;

/// The three network calls of an action. Slices are row-major; `obs` is one normalized
/// observation row that the graphs broadcast over the action rows.
pub trait Networks: Send {
    /// `eps [rows, A]` for `noisy [rows, A]` at (float) step `t`.
    fn denoise(&mut self, obs: &[f32], noisy: &[f32], t: f32, eps: &mut [f32]) -> Result<()>;
    /// `mean, log_std [rows, A]` of the pre-tanh edit Gaussian for `base [rows, A]`.
    fn edit(
        &mut self,
        obs: &[f32],
        base: &[f32],
        mean: &mut [f32],
        log_std: &mut [f32],
    ) -> Result<()>;
    /// `q [K, rows]` of the listed critic members for `actions [rows, A]`.
    fn critic(
        &mut self,
        obs: &[f32],
        actions: &[f32],
        members: &[i64],
        q: &mut [f32],
    ) -> Result<()>;
}

/// Copies a graph output into the policy's buffer, refusing a size mismatch (a graph
/// whose shapes disagree with the manifest must not write past or short of a buffer).
pub(crate) fn copy_output(src: &[f32], dst: &mut [f32], what: &str) -> Result<()> {
    ensure!(
        src.len() == dst.len(),
        "{what}: graph returned {} values, expected {}",
        src.len(),
        dst.len()
    );
    dst.copy_from_slice(src);
    Ok(())
}

/// Batch sizes the graphs are run with (tract fixes them at load time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphRows {
    pub denoise: usize,
    pub edit: usize,
    pub score: usize,
    pub critic_members: usize,
}

impl GraphRows {
    pub fn for_manifest(m: &Manifest) -> Self {
        let s = &m.selection;
        GraphRows {
            denoise: s.num_samples,
            edit: s.num_edit,
            score: s.num_samples + s.num_edit,
            critic_members: s.critic_subset,
        }
    }
}

/// Which engine runs the graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// tract-onnx (pure Rust; default).
    Tract,
    /// onnxruntime through `ort` (feature `ort`; needs `ORT_DYLIB_PATH`).
    Ort,
    /// Our own kernels over the bundle's weights: allocation-free per action.
    Native,
}

impl FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "tract" => Backend::Tract,
            "ort" => Backend::Ort,
            "native" => Backend::Native,
            _ => bail!("unknown backend `{s}` (expected tract, ort or native)"),
        })
    }
}

/// Builds the backend's networks for `bundle` and runs each of them once
/// ([`probe`]), so that a malformed bundle is refused here and not in the control loop.
/// A panic inside an inference engine while doing so (tract has some on malformed
/// graphs) is returned as an error naming the bundle.
pub fn load_networks(
    backend: Backend,
    bundle: &VerifiedBundle,
    rows: GraphRows,
) -> Result<Box<dyn Networks>> {
    let build = || -> Result<Box<dyn Networks>> {
        let mut nets: Box<dyn Networks> = match backend {
            Backend::Tract => Box::new(TractNetworks::load(bundle, rows)?),
            Backend::Native => Box::new(NativeNetworks::load(bundle)?),
            #[cfg(feature = "ort")]
            Backend::Ort => Box::new(OrtNetworks::load(bundle)?),
            #[cfg(not(feature = "ort"))]
            Backend::Ort => bail!(
                "this controller was built without the `ort` feature; rebuild with `--features ort`"
            ),
        };
        probe(nets.as_mut(), &bundle.manifest, rows).with_context(|| {
            format!("{}: running the graphs once at load", bundle.dir.display())
        })?;
        Ok(nets)
    };
    // On the uplink thread during a run (a bundle the trainer published, swapped in by
    // the streamer), a panic here must not stop the robot: the running policy keeps
    // acting.
    match crate::robot_loop::realtime::catching_panics(build) {
        Ok(nets) => nets,
        Err(why) => bail!(
            "{}: {backend:?} crashed building or running the graphs ({why}): the bundle is malformed",
            bundle.dir.display()
        ),
    }
}

/// Runs every network once at the batch sizes the policy uses, on the mean observation
/// and zero actions, and every critic member of the ensemble: graphs whose shapes
/// disagree with the manifest, an ensemble smaller than `selection.ensemble_size`, or
/// outputs that are not finite are found at load. The shapes are the same on every
/// later call, so a bundle that passes runs in the control loop without shape errors.
fn probe(nets: &mut dyn Networks, m: &Manifest, rows: GraphRows) -> Result<()> {
    let (od, ad) = (m.observation.dim, m.action.chunk_dim());
    let obs = vec![0.0; od];
    let finite = |v: &[f32], what: &str| -> Result<()> {
        match v.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(i) => bail!("{what} output [{i}] is {} for a neutral input", v[i]),
        }
    };
    let mut eps = vec![0.0; rows.denoise * ad];
    // Step 0 of the chain: every trained chain has it.
    nets.denoise(&obs, &vec![0.0; rows.denoise * ad], 0.0, &mut eps)
        .context("denoiser")?;
    finite(&eps, "denoiser")?;
    if rows.edit > 0 && m.graphs.edit.is_some() {
        let (mut mean, mut log_std) = (vec![0.0; rows.edit * ad], vec![0.0; rows.edit * ad]);
        nets.edit(&obs, &vec![0.0; rows.edit * ad], &mut mean, &mut log_std)
            .context("edit policy")?;
        finite(&mean, "edit policy mean")?;
        finite(&log_std, "edit policy log_std")?;
    }
    if rows.critic_members > 0 {
        let actions = vec![0.0; rows.score * ad];
        let mut q = vec![0.0; rows.critic_members * rows.score];
        for member in 0..m.selection.ensemble_size {
            let members = vec![member as i64; rows.critic_members];
            let ran = nets.critic(&obs, &actions, &members, &mut q);
            ran.and_then(|()| finite(&q, "critic")).with_context(|| {
                format!(
                    "critic member {member} (selection.ensemble_size is {})",
                    m.selection.ensemble_size
                )
            })?;
        }
    }
    Ok(())
}

/// How far two backends' outputs of one graph may lie apart, relative to the larger of 1
/// and the reference's largest absolute output: f32 sums in another order differ by about 1e-6
/// of that (tract and native on the synthetic `cpu` and `paper` bundles stay below
/// 1e-5); a wrong kernel, a mis-read weight or a graph another engine reads otherwise
/// differs by whole units.
pub const BACKEND_TOLERANCE: f32 = 1e-3;

/// One graph's largest difference between a backend and the reference backend.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphDifference {
    /// `denoiser`, `edit mean`, `edit log_std`, `critic`.
    pub graph: &'static str,
    pub backend: String,
    /// The largest absolute difference, and the scale it is judged at (the larger of 1
    /// and the reference's largest absolute output).
    pub max_abs: f32,
    pub scale: f32,
}

impl GraphDifference {
    pub fn within_tolerance(&self) -> bool {
        self.max_abs <= BACKEND_TOLERANCE * self.scale
    }
}

/// Runs every graph of each of `nets` (name, networks; the first is the reference) on
/// the same inputs, at the batch sizes the policy uses: three observation rows about
/// the unit scale of normalised observations, noisy actions at the chain's first, middle
/// and last trained step, base and scored actions within [-1, 1], and every critic
/// member (subsets in turn, and the last member first). Returns each other backend's
/// largest difference per graph, whether within [`BACKEND_TOLERANCE`] or not (the
/// caller judges); an output that is not finite is an error naming its backend.
/// `controller check` runs it on the robot's own CPU, whose kernels may differ from the
/// trainer's.
pub fn backend_differences(
    nets: &mut [(String, Box<dyn Networks>)],
    m: &Manifest,
    rows: GraphRows,
) -> Result<Vec<GraphDifference>> {
    let (od, ad) = (m.observation.dim, m.action.chunk_dim());
    let wave = |n: usize, phase: f32| -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect()
    };
    let last_step = m.diffusion.trained_steps.saturating_sub(1) as f32;
    let mut outputs: Vec<Vec<(&'static str, Vec<f32>)>> = Vec::new();
    for (name, n) in nets.iter_mut() {
        let mut out: Vec<(&'static str, Vec<f32>)> = Vec::new();
        let mut run = || -> Result<()> {
            for row in 0..3 {
                let obs: Vec<f32> = wave(od, row as f32).iter().map(|x| 1.5 * x).collect();
                for t in [0.0, (last_step / 2.0).floor(), last_step] {
                    let noisy = wave(rows.denoise * ad, 0.5 + t);
                    let mut eps = vec![0.0; rows.denoise * ad];
                    n.denoise(&obs, &noisy, t, &mut eps).context("denoiser")?;
                    out.push(("denoiser", eps));
                }
                if rows.edit > 0 && m.graphs.edit.is_some() {
                    let base = wave(rows.edit * ad, 1.0 + row as f32);
                    let (mut mean, mut log_std) =
                        (vec![0.0; rows.edit * ad], vec![0.0; rows.edit * ad]);
                    n.edit(&obs, &base, &mut mean, &mut log_std)
                        .context("edit policy")?;
                    out.push(("edit mean", mean));
                    out.push(("edit log_std", log_std));
                }
                if rows.critic_members > 0 {
                    let k = m.selection.ensemble_size.max(1);
                    let actions = wave(rows.score * ad, 2.0 + row as f32);
                    // Every member once (a weight read wrongly at one member's offset),
                    // and a rotation that puts the last one first.
                    let mut shifts: Vec<usize> = (0..k).step_by(rows.critic_members).collect();
                    if !shifts.contains(&(k - 1)) {
                        shifts.push(k - 1);
                    }
                    for shift in shifts {
                        let members: Vec<i64> = (0..rows.critic_members)
                            .map(|j| ((j + shift) % k) as i64)
                            .collect();
                        let mut q = vec![0.0; rows.critic_members * rows.score];
                        n.critic(&obs, &actions, &members, &mut q)
                            .context("critic")?;
                        out.push(("critic", q));
                    }
                }
            }
            Ok(())
        };
        run().with_context(|| format!("on the {name} backend"))?;
        // Judged by itself: a NaN or an infinity compares with nothing (and made either
        // backend look like the one that differs).
        for (graph, values) in &out {
            if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                bail!(
                    "the {name} backend's {graph} output [{i}] is {} for the comparison's \
                     inputs",
                    values[i]
                );
            }
        }
        outputs.push(out);
    }
    let Some((reference, others)) = outputs.split_first() else {
        return Ok(vec![]);
    };
    let mut found = Vec::new();
    for (backend, out) in nets.iter().skip(1).map(|(n, _)| n).zip(others) {
        let mut per_graph: Vec<GraphDifference> = Vec::new();
        for ((graph, want), (_, got)) in reference.iter().zip(out) {
            let scale = want.iter().fold(1.0f32, |s, x| s.max(x.abs()));
            let max_abs = (want.iter().zip(got)).fold(0.0f32, |d, (a, b)| d.max((a - b).abs()));
            match per_graph.iter_mut().find(|d| d.graph == *graph) {
                // Judged at each call's own scale: kept where it is the furthest off.
                Some(d) if max_abs / scale > d.max_abs / d.scale => {
                    (d.max_abs, d.scale) = (max_abs, scale);
                }
                Some(_) => {}
                None => per_graph.push(GraphDifference {
                    graph,
                    backend: backend.clone(),
                    max_abs,
                    scale,
                }),
            }
        }
        found.extend(per_graph);
    }
    Ok(found)
}

/// Runtime options.
#[derive(Clone, Debug)]
pub struct PolicyOptions {
    pub backend: Backend,
    /// Denoising steps to execute (default: the manifest's `executed_steps`).
    pub executed_steps: Option<usize>,
    pub seed: u64,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            backend: Backend::Tract,
            executed_steps: None,
            seed: 0,
        }
    }
}

/// Wall time of the last action's stages, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    pub denoise: f64,
    pub edit: f64,
    pub score: f64,
    pub total: f64,
}

/// What was picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Candidate index: `< N` a base sample, `≥ N` an edited one.
    pub index: usize,
    /// Its score (minimum over the sampled critics; NaN without a critic).
    pub score: f32,
}

/// The furthest a normalised observation may lie from the bundle's mean, in standard
/// deviations: far past anything trained on (training data lies within tens), and far
/// below the ~1e18 where the networks' layer norms stop telling observations apart.
pub const MAX_NORMALIZED_OBSERVATION: f32 = 1e6;

/// EXPO acting from a bundle, with preallocated buffers.
pub struct Policy {
    pub manifest: Manifest,
    nets: Box<dyn Networks>,
    plan: Vec<SamplingStep>,
    params: SelectionParams,
    edit_scale: f32,
    rng: Rng,
    /// The networks' action width `A` here: a whole chunk (`horizon · dim`).
    act_dim: usize,
    /// Normalized observation `[O]`.
    obs: Vec<f32>,
    /// Chain state `[N, A]` and noise prediction.
    x: Vec<f32>,
    eps: Vec<f32>,
    /// Candidates `[N + n_edit, A]`: base samples, then edited ones.
    candidates: Vec<f32>,
    mean: Vec<f32>,
    log_std: Vec<f32>,
    perm: Vec<usize>,
    members: Vec<i64>,
    /// `[K, N + n_edit]`
    q: Vec<f32>,
    scores: Vec<f32>,
    /// Base candidates come from a two-speed worker instead of the chain.
    external_base: bool,
    error: Option<anyhow::Error>,
    pub times: StageTimes,
}

impl Policy {
    pub fn new(bundle: &VerifiedBundle, options: &PolicyOptions) -> Result<Self> {
        let rows = GraphRows::for_manifest(&bundle.manifest);
        let nets = load_networks(options.backend, bundle, rows)?;
        Self::with_networks(bundle.manifest.clone(), nets, options)
    }

    pub fn with_networks(
        manifest: Manifest,
        nets: Box<dyn Networks>,
        options: &PolicyOptions,
    ) -> Result<Self> {
        let d = &manifest.diffusion;
        let (executed, from) = match options.executed_steps {
            Some(n) => (n, "--executed-steps"),
            None => (d.executed_steps, "diffusion.executed_steps"),
        };
        ensure!(
            (1..=d.trained_steps).contains(&executed),
            "{from} {executed} must be in 1..={} (the bundle's trained chain length)",
            d.trained_steps
        );
        let schedule = DiffusionSchedule::vp(d.trained_steps, d.beta_min, d.beta_max);
        let s = &manifest.selection;
        let (od, ad) = (manifest.observation.dim, manifest.action.chunk_dim());
        let m = s.num_samples + s.num_edit;
        let k = s.critic_subset;
        Ok(Policy {
            plan: schedule.sampling_plan(executed),
            params: s.params(),
            edit_scale: s.edit_scale,
            rng: Rng::new(options.seed),
            act_dim: ad,
            obs: vec![0.0; od],
            x: vec![0.0; s.num_samples * ad],
            eps: vec![0.0; s.num_samples * ad],
            candidates: vec![0.0; m * ad],
            mean: vec![0.0; s.num_edit * ad],
            log_std: vec![0.0; s.num_edit * ad],
            perm: vec![0; s.ensemble_size],
            members: vec![0; k],
            q: vec![0.0; k * m],
            scores: vec![0.0; m],
            external_base: false,
            error: None,
            times: StageTimes::default(),
            nets,
            manifest,
        })
    }

    pub fn obs_dim(&self) -> usize {
        self.obs.len()
    }

    /// Values of one action (one control step).
    pub fn act_dim(&self) -> usize {
        self.manifest.action.dim
    }

    /// Actions per call of [`Self::act`] (the bundle's action chunk; 1 for most).
    pub fn horizon(&self) -> usize {
        self.manifest.action.horizon
    }

    /// Values [`Self::act`] writes: `horizon · act_dim`.
    pub fn chunk_dim(&self) -> usize {
        self.act_dim
    }

    pub fn executed_steps(&self) -> usize {
        self.plan.len()
    }

    pub fn selection(&self) -> SelectionParams {
        self.params
    }

    /// Normalizes a raw observation into the policy's buffer; refuses non-finite or
    /// wrongly sized input.
    fn load_observation(&mut self, raw: &[f32]) -> Result<()> {
        ensure!(
            raw.len() == self.obs.len(),
            "observation has {} values, the bundle expects {}",
            raw.len(),
            self.obs.len()
        );
        if let Some(i) = raw.iter().position(|x| !x.is_finite()) {
            bail!("observation[{i}] is {} (not finite)", raw[i]);
        }
        let o = &self.manifest.observation;
        for (((dst, &x), &m), &s) in self.obs.iter_mut().zip(raw).zip(&o.mean).zip(&o.std) {
            *dst = (x - m) / s;
        }
        // A finite value far enough from the mean (or a tiny std) overflows here, and
        // the networks would then answer NaN that only the action check names.
        if let Some(i) = self.obs.iter().position(|z| !z.is_finite()) {
            bail!(
                "observation[{i}] = {} overflows the bundle's normalisation (mean {}, std {})",
                raw[i],
                o.mean[i],
                o.std[i]
            );
        }
        // One merely huge does not: past about 1e18 a layer norm's f32 variance
        // overflows, its scale becomes 0 and every row the same, and the chain clips
        // to a full-scale command that passes every finiteness check.
        if let Some(i) = self
            .obs
            .iter()
            .position(|z| z.abs() > MAX_NORMALIZED_OBSERVATION)
        {
            bail!(
                "observation[{i}] = {} is {:e} standard deviations from the bundle's mean {} \
                 (std {}; at most {MAX_NORMALIZED_OBSERVATION:e} are acted on): a sensor \
                 fault, or another robot's data",
                raw[i],
                self.obs[i],
                o.mean[i],
                o.std[i]
            );
        }
        Ok(())
    }

    /// One action for a raw observation, written into `action` (clamped to the bounds);
    /// with an action chunk ([`Self::horizon`] > 1), the chunk's actions in order
    /// (`action` holds [`Self::chunk_dim`] values).
    pub fn act(&mut self, raw_obs: &[f32], action: &mut [f32]) -> Result<Choice> {
        let start = Instant::now();
        self.load_observation(raw_obs)?;
        self.act_loaded(action, start)
    }

    /// [`Self::act`] on the observation already in the policy's buffer
    /// ([`Self::load_observation`]); `start` is when the action's clock started.
    fn act_loaded(&mut self, action: &mut [f32], start: Instant) -> Result<Choice> {
        ensure!(
            action.len() == self.act_dim,
            "action buffer has {} slots, the bundle acts in {} dimensions (chunk included)",
            action.len(),
            self.act_dim
        );
        self.times = StageTimes::default();
        let params = self.params;
        let choice = if params.critic_subset == 0 {
            // No critic (BC bundle): the first chain sample is the action.
            self.sample_base_into_candidates(1);
            Choice {
                index: 0,
                score: f32::NAN,
            }
        } else {
            on_the_fly_action(&mut Selection(self), &params)
        };
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let ad = self.act_dim;
        let a = &self.candidates[choice.index * ad..(choice.index + 1) * ad];
        // A non-finite candidate scores NaN and loses. When none is finite (or the one
        // sampled without a critic is not), the networks overflowed on this
        // observation, and no clamp makes that a command; else the critic's check below
        // names what went wrong.
        // (Looked for only when the picked one is not finite: not on every tick.)
        let sampled = if params.critic_subset == 0 {
            1
        } else {
            params.num_samples + params.num_edit
        };
        let none_finite = || {
            !self.candidates[..sampled * ad]
                .chunks_exact(ad)
                .any(|row| row.iter().all(|v| v.is_finite()))
        };
        if let Some(i) = a.iter().position(|v| !v.is_finite())
            && none_finite()
        {
            bail!(
                "candidate action {} has {} at [{i}], and no candidate is finite: the \
                 denoiser or the edit policy overflowed on this observation",
                choice.index,
                a[i]
            );
        }
        // NaN scores lose (as in training), so the best score is not finite only when
        // no candidate scored finite, or one scored +inf: the critic has blown up on
        // this observation, and the robot is not driven by what it picked.
        ensure!(
            params.critic_subset == 0 || choice.score.is_finite(),
            "the critic's best score over the {} candidates is {}, not finite (it has \
             blown up on this observation)",
            params.num_samples + params.num_edit,
            choice.score
        );
        let spec = &self.manifest.action;
        // Every action of a chunk has the same bounds.
        let bounds = spec.low.iter().zip(&spec.high).cycle();
        for ((dst, &v), (&lo, &hi)) in action.iter_mut().zip(a).zip(bounds) {
            *dst = v.clamp(lo, hi);
        }
        self.times.total = start.elapsed().as_secs_f64();
        Ok(choice)
    }

    /// The raw candidates of the last action (`[N + n_edit, A]`, before clamping).
    pub fn candidates(&self) -> &[f32] {
        &self.candidates
    }

    /// The last action's Q values from the sampled critics, `[K, N + n_edit]` (empty
    /// for a bundle without a critic).
    pub fn q_values(&self) -> &[f32] {
        &self.q
    }

    /// Runs the chain for `n` rows into `candidates[..n·A]`.
    fn sample_base_into_candidates(&mut self, n: usize) {
        if self.error.is_some() {
            return;
        }
        let start = Instant::now();
        if let Err(e) = self.run_chain() {
            self.error = Some(e);
        }
        let len = n * self.act_dim;
        self.candidates[..len].copy_from_slice(&self.x[..len]);
        self.times.denoise += start.elapsed().as_secs_f64();
    }

    /// The denoising chain over all N rows at once.
    fn run_chain(&mut self) -> Result<()> {
        for v in self.x.iter_mut() {
            *v = self.rng.normal();
        }
        for step in &self.plan {
            self.nets
                .denoise(&self.obs, &self.x, step.t as f32, &mut self.eps)
                .context("denoiser")?;
            // A value the denoiser gave that is not finite voids its candidate (NaN, which
            // every later step keeps, and `void_non_finite` then scores so that it never
            // wins): an infinite one went through the clamp as a full-scale ±1, as if it
            // were an action.
            for (x, e) in self.x.iter_mut().zip(&self.eps) {
                *x = if e.is_finite() {
                    step.x_coef * *x + step.eps_coef * e
                } else {
                    f32::NAN
                };
            }
            if step.sigma > 0.0 {
                for x in self.x.iter_mut() {
                    *x += step.sigma * self.rng.normal();
                }
            }
            for x in self.x.iter_mut() {
                *x = x.clamp(-1.0, 1.0);
            }
        }
        Ok(())
    }
}

/// Why the verified bundle `new` may not replace the running bundle `old`: it fine-tunes
/// that policy, so it must be for the same task with the same observation names (or,
/// where the running bundle named none, any names as many as its own; their
/// sizes are checked against the robot or the running policy) and its action names in
/// the same order where both name them, the same action mapping where both record one,
/// plan chunks of the same length (the run's chunk
/// play and the chunking of the transitions it streams would change mid-run), and act at
/// the same rate where both say theirs. One check for the uplink's swaps and [`reload`].
pub fn replacement_refused(new: &Manifest, old: &Manifest) -> Option<String> {
    if new.task != old.task {
        return Some(format!(
            "it was trained on task `{}`, the running bundle on `{}`",
            new.task, old.task
        ));
    }
    // A running bundle trained on data that named no observations (`observation.state.{i}`)
    // takes one that names as many: its fine-tuning took the robot's names for the same
    // values, in their order (the trainer's `RecordedBy::adopt_names`).
    let (theirs, ours) = (&new.observation.names, &old.observation.names);
    let named_now = dataset::unnamed_observations(ours) && theirs.len() == ours.len();
    if theirs != ours && !named_now {
        return Some(format!(
            "its observation names ({}) are not the running bundle's ({})",
            new.observation.names.join(", "),
            old.observation.names.join(", ")
        ));
    }
    // The same actions in another order (names a bundle has no names for, or spells
    // otherwise, as a bundle trained on older recordings named after the robot's
    // joints, are the robot file's check, at every swap).
    let (theirs, ours) = (&new.action.names, &old.action.names);
    if firmware_config::config::first_reordered_name(ours, theirs).is_some() {
        return Some(format!(
            "its action names ({}) name the running bundle's ({}) in another order",
            theirs.join(", "),
            ours.join(", ")
        ));
    }
    // The same actions mapped to other commands (format 7): for `reload`, which has no
    // robot file to check against. A running bundle that records its mapping is not
    // replaced by one that records none (which nothing could check).
    let mapping = |a: &shared_model::manifest::ActionSpec| {
        dataset::ActionMapping::recorded(&a.robot_scale, &a.robot_offset)
    };
    match (mapping(&new.action), mapping(&old.action)) {
        (None, Some(_)) => {
            return Some(
                "the running bundle records the action mapping its data was recorded with, \
                 this one records none (nothing could check it against the robot file): \
                 export it from a run whose data records it"
                    .into(),
            );
        }
        (Some(n), Some(o)) => {
            if let Some(i) = o.first_difference(&n) {
                return Some(format!(
                    "its data was recorded with another action mapping: action [{i}] as {} in \
                     robot units, the running bundle's as {} (action.robot_offset, \
                     action.robot_scale)",
                    n.describe(i),
                    o.describe(i)
                ));
            }
        }
        _ => {}
    }
    if new.action.horizon != old.action.horizon {
        return Some(format!(
            "it plans chunks of {} actions, the running bundle chunks of {}",
            new.action.horizon, old.action.horizon
        ));
    }
    // (A bundle from before format 5 does not say its rate: the robot's check at the
    // swap is all there is.)
    if let (Some(new_hz), Some(old_hz)) = (new.action.control_hz, old.action.control_hz)
        && new_hz != old_hz
    {
        return Some(format!(
            "it was trained on steps at {new_hz} Hz, the running bundle at {old_hz} Hz"
        ));
    }
    None
}

/// How many denoising steps the policy of `new` runs when it is swapped in for one that
/// runs `running`: as many (a swap changes the policy's weights, not the loop's timing;
/// a live trainer publishes its bundles with the whole trained chain, which took a run
/// started on a truncated one to several times its denoising time at the first swap,
/// unsaid). A bundle trained on fewer steps is refused.
pub fn swapped_in_executed_steps(running: usize, new: &Manifest) -> Result<usize, String> {
    let trained = new.diffusion.trained_steps;
    if running > trained {
        return Err(format!(
            "its chain is trained in {trained} steps, fewer than the {running} the running \
             policy executes (kept at a swap)"
        ));
    }
    Ok(running)
}

/// The options of the bundle of `manifest` swapped in under `name`: its own random
/// stream (with the run's seed as it is, every swapped-in policy would replay the noise
/// of the run's first decisions), named by `name` and its graphs' hashes together. By
/// a name alone, a trainer started again into another `--out` (which numbers its
/// bundles from the start again) offered a new bundle under an old name, and the robot
/// replayed that swap's noise; by the denoiser's hash alone, a bundle with only a new
/// critic or edit policy replayed the last one's.
pub fn swapped_in_options(
    options: &PolicyOptions,
    name: &str,
    manifest: &shared_model::manifest::Manifest,
) -> PolicyOptions {
    let g = &manifest.graphs;
    let mut stream = name.to_string();
    for graph in [Some(&g.denoiser), g.edit.as_ref(), g.critic.as_ref()]
        .into_iter()
        .flatten()
    {
        stream.push(' ');
        stream.push_str(&graph.sha256);
    }
    PolicyOptions {
        seed: options.seed ^ u64::from(firmware_config::protocol::crc32(stream.as_bytes())),
        ..options.clone()
    }
}

/// Replaces `current` with the bundle in `dir`, but only once that bundle has loaded,
/// verified and built completely, acts on the same observation and action sizes, and
/// may replace it ([`replacement_refused`]); on any error `current` is untouched and
/// keeps acting. The new policy draws from its own stream ([`swapped_in_options`],
/// named by its graphs' hashes).
pub fn reload(
    current: &mut Policy,
    dir: &std::path::Path,
    trust: &shared_model::Trust,
    options: &PolicyOptions,
) -> Result<()> {
    let bundle = shared_model::load_bundle(dir, trust)
        .with_context(|| format!("refusing bundle {}", dir.display()))?;
    let m = &bundle.manifest;
    if let Some(why) = replacement_refused(m, &current.manifest) {
        bail!("refusing bundle {}: {why}", dir.display());
    }
    ensure!(
        m.observation.dim == current.obs_dim()
            && m.action.horizon == current.horizon()
            && m.action.dim == current.act_dim(),
        "refusing bundle {}: it acts on obs {} / action {} x {}, the running policy on {} / {} x {}",
        dir.display(),
        m.observation.dim,
        m.action.horizon,
        m.action.dim,
        current.obs_dim(),
        current.horizon(),
        current.act_dim()
    );
    let executed = swapped_in_executed_steps(current.executed_steps(), m)
        .map_err(|why| anyhow::anyhow!("refusing bundle {}: {why}", dir.display()))?;
    // Named by what it holds, not by its path (`latest`, `..`): another bundle's
    // policy draws another stream.
    let options = PolicyOptions {
        executed_steps: Some(executed),
        ..swapped_in_options(options, "", m)
    };
    let next = Policy::new(&bundle, &options)
        .with_context(|| format!("refusing bundle {}", dir.display()))?;
    *current = next;
    Ok(())
}

/// Candidate sets are ranges of the policy's candidate buffer; only their sizes travel
/// through the selection algorithm.
struct Selection<'a>(&'a mut Policy);

impl ExpoRunner for Selection<'_> {
    type Candidates = usize;
    type Scores = ();
    type Actions = Choice;

    fn sample_base(&mut self, n: usize) -> usize {
        let p = &mut *self.0;
        if p.external_base {
            // Two-speed tick: the worker's candidates are already in place.
            return n;
        }
        p.sample_base_into_candidates(n);
        n
    }

    fn edit(&mut self, base: &usize, n: usize) -> usize {
        let p = &mut *self.0;
        if p.error.is_some() {
            return n;
        }
        let start = Instant::now();
        let ad = p.act_dim;
        let (src, dst) = p.candidates.split_at_mut(*base * ad);
        if let Err(e) = p
            .nets
            .edit(&p.obs, &src[..n * ad], &mut p.mean, &mut p.log_std)
        {
            p.error = Some(e.context("edit policy"));
        } else {
            for i in 0..n * ad {
                let z = p.rng.normal();
                let u = p.mean[i] + p.log_std[i].exp() * z;
                dst[i] = src[i] + p.edit_scale * u.tanh();
            }
        }
        p.times.edit += start.elapsed().as_secs_f64();
        n
    }

    fn concat(&mut self, a: usize, b: usize) -> usize {
        a + b
    }

    fn score(&mut self, candidates: &usize, subset: usize) {
        let p = &mut *self.0;
        if p.error.is_some() {
            return;
        }
        let start = Instant::now();
        let m = *candidates;
        let rng = &mut p.rng;
        sample_subset(&mut p.perm, subset, || rng.next_u64());
        for (dst, &src) in p.members.iter_mut().zip(&p.perm[..subset]) {
            *dst = src as i64;
        }
        let ad = p.act_dim;
        if let Err(e) = p
            .nets
            .critic(&p.obs, &p.candidates[..m * ad], &p.members, &mut p.q)
        {
            p.error = Some(e.context("critic"));
        } else {
            pessimistic_scores(&p.q[..subset * m], m, &mut p.scores[..m]);
            void_non_finite(&p.candidates[..m * ad], ad, &mut p.scores[..m]);
        }
        p.times.score += start.elapsed().as_secs_f64();
    }

    fn pick(&mut self, candidates: usize, _scores: ()) -> Choice {
        let p = &*self.0;
        let mut best = [0usize];
        argmax_rows(&p.scores[..candidates], candidates, &mut best);
        Choice {
            index: best[0],
            score: p.scores[best[0]],
        }
    }
}
