//! Adam and AdamW over one flat buffer per network, and Polyak averaging on it.
//!
//! burn's optimizers update one parameter tensor at a time: about 13 tensor operations
//! per parameter and step (moments, bias correction, update), and Polyak averaging adds 3
//! more. At the `paper` preset the critic ensemble has 14 parameter tensors and takes 20
//! steps per environment step, so the optimizer alone issues several thousand operations
//! per environment step, each a kernel launch on a GPU, and the critic loop is bound by
//! that latency, not by arithmetic (BENCHMARKS.md, "Kernels per environment step").
//!
//! [`FusedAdam`] copies the gradients into one flat buffer, does the whole Adam (or
//! AdamW) arithmetic once on it, and hands the network back its parameters as slices of
//! the updated parameter buffer. It keeps that buffer: the next step starts from it, so
//! the parameters are copied into a buffer only once (or again after
//! [`FusedAdam::forget_params`]). [`FusedAdam::blend`] does Polyak averaging of a target
//! copy on buffers the same way.
//!
//! ```text
//!  grads g₀ [E,i,o]  g₁ [E,1,o] …
//!        │             │
//!        ▼             ▼
//!  flat g: [ g₀ ···· pad │ g₁ · pad │ … ]  ── m, v, p update: ~13 ops in all ──►  flat p'
//!  flat p: the previous step's p'                                        │ slices
//!                                                                        ▼
//!                                                     p₀' = p'[o₀..o₀+n₀].reshape(…) …
//! ```
//!
//! How the buffer is assembled depends on the backend ([`Packing`]). On a GPU each
//! parameter starts at a multiple of [`ALIGN`] elements, so that its slice is a view of
//! the buffer (cubecl copies a slice whose byte offset is not aligned to the device's
//! binding alignment), and the buffer is filled in place. On the CPU the tensors are
//! concatenated without padding: there a `slice_assign` copies the whole destination
//! (burn-flex 0.22.0-pre.3 copies on write), so filling a buffer piece by piece would
//! cost one whole copy per parameter. The saved state is the same either way (the
//! moments without padding), so a run can move between devices.
//!
//! The arithmetic is burn's Adam/AdamW, element for element, so the result is the same
//! as burn's per-parameter step (tested, within 1e-5). One difference: a parameter that
//! got no gradient is treated as having a zero gradient (its moments decay and it moves
//! by its momentum), where burn's optimizers skip it; every network here uses all its
//! parameters in its loss.

use anyhow::{Context, Result, bail, ensure};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use std::io::{Read, Write};
use std::path::Path;

/// Offsets of parameters in the flat buffer are multiples of this many elements (1 KiB
/// of f32): at least the 256-byte storage-buffer offset alignment that Vulkan devices
/// commonly require, so that each parameter's slice is a view (cubecl checks the
/// alignment the device reports and copies otherwise).
pub const ALIGN: usize = 256;

/// How a network's tensors are packed into its flat buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Zero buffer, each tensor written in place at an [`ALIGN`]-multiple offset: GPU.
    Aligned,
    /// One concatenation, no padding: CPU backends.
    Concatenated,
}

impl Packing {
    /// The packing for a device (`crate::device` name): aligned on GPUs.
    pub fn for_device(gpu: bool) -> Self {
        if gpu {
            Packing::Aligned
        } else {
            Packing::Concatenated
        }
    }
}

/// Where each parameter of a network lives in its flat buffer, in visiting order.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatLayout {
    entries: Vec<Entry>,
    packing: Packing,
    /// Buffer length (with [`Packing::Aligned`], padded to a multiple of [`ALIGN`]).
    len: usize,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    id: ParamId,
    dims: Vec<usize>,
    offset: usize,
    numel: usize,
}

impl FlatLayout {
    /// The layout of `module`'s float parameters.
    pub fn of<M: Module>(module: &M, packing: Packing) -> Self {
        struct Visit(Vec<Entry>, usize, usize);
        impl ModuleVisitor for Visit {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let dims = param.shape().dims::<D>().to_vec();
                let numel = dims.iter().product();
                self.0.push(Entry {
                    id: param.id,
                    dims,
                    offset: self.1,
                    numel,
                });
                self.1 += numel.div_ceil(self.2) * self.2;
            }
        }
        let align = match packing {
            Packing::Aligned => ALIGN,
            Packing::Concatenated => 1,
        };
        let mut v = Visit(vec![], 0, align);
        module.visit(&mut v);
        FlatLayout {
            entries: v.0,
            packing,
            len: v.1.max(align),
        }
    }

    /// Elements of the parameters themselves (without padding).
    pub fn num_params(&self) -> usize {
        self.entries.iter().map(|e| e.numel).sum()
    }

    /// One buffer from the flattened tensors (`[numel]` each, in layout order).
    fn pack(&self, pieces: Vec<Tensor<1>>) -> Tensor<1> {
        match self.packing {
            Packing::Concatenated => Tensor::cat(pieces, 0),
            Packing::Aligned => {
                let device = pieces[0].device();
                let mut flat = Tensor::zeros([self.len], &device);
                for (e, piece) in self.entries.iter().zip(pieces) {
                    flat = flat.slice_assign(e.offset..e.offset + e.numel, piece);
                }
                flat
            }
        }
    }

    /// The padded buffer of host values given without padding (zeros in the padding).
    fn pad(&self, values: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.len];
        let mut at = 0;
        for e in &self.entries {
            out[e.offset..e.offset + e.numel].copy_from_slice(&values[at..at + e.numel]);
            at += e.numel;
        }
        out
    }

    /// The host values of a buffer without its padding.
    fn unpad(&self, flat: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.num_params());
        for e in &self.entries {
            out.extend_from_slice(&flat[e.offset..e.offset + e.numel]);
        }
        out
    }

    /// Padded buffer length (elements).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The parameters' values (gradient-free) in one buffer; the padding is zero.
    pub fn params<M: Module>(&self, module: &M) -> Tensor<1> {
        struct Visit(Vec<Tensor<1>>);
        impl ModuleVisitor for Visit {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let value = param.val().no_grad();
                let n = value.shape().num_elements();
                self.0.push(value.reshape([n]));
            }
        }
        let mut v = Visit(vec![]);
        module.visit(&mut v);
        self.pack(v.0)
    }

    /// The gradients of the parameters in one buffer (zero where a parameter has none,
    /// and in the padding), removed from `grads`. `None` when no parameter has one.
    fn grads(&self, grads: &mut GradientsParams) -> Option<Tensor<1>> {
        let mut pieces: Vec<Option<Tensor<1>>> = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let n = e.numel;
            pieces.push(match e.dims.len() {
                1 => grads.remove::<1>(e.id).map(|g| g.reshape([n])),
                2 => grads.remove::<2>(e.id).map(|g| g.reshape([n])),
                3 => grads.remove::<3>(e.id).map(|g| g.reshape([n])),
                4 => grads.remove::<4>(e.id).map(|g| g.reshape([n])),
                r => panic!("parameters of rank {r} are not supported by the fused optimizer"),
            });
        }
        let device = pieces.iter().flatten().next()?.device();
        let pieces = self
            .entries
            .iter()
            .zip(pieces)
            .map(|(e, g)| g.unwrap_or_else(|| Tensor::zeros([e.numel], &device)))
            .collect();
        Some(self.pack(pieces))
    }

    /// `module` with its parameters replaced by slices of `flat` (same ids), tracked for
    /// gradients where they were.
    pub fn assign<M: Module>(&self, module: M, flat: &Tensor<1>) -> M {
        struct Map<'a> {
            layout: &'a FlatLayout,
            next: usize,
            flat: &'a Tensor<1>,
        }
        impl ModuleMapper for Map<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let e = &self.layout.entries[self.next];
                self.next += 1;
                let (id, old, mapper) = param.consume();
                let dims: [usize; D] = e.dims.clone().try_into().expect("layout of this module");
                let value = self
                    .flat
                    .clone()
                    .slice(e.offset..e.offset + e.numel)
                    .reshape(dims);
                let value = if old.device().is_autodiff() {
                    let t = Tensor::from_inner(value);
                    if old.is_require_grad() {
                        t.require_grad()
                    } else {
                        t
                    }
                } else {
                    value
                };
                Param::from_mapped_value(id, value, mapper)
            }
        }
        module.map(&mut Map {
            layout: self,
            next: 0,
            flat,
        })
    }

    /// Whether `module` has exactly this layout (same parameter ids and shapes).
    pub fn matches<M: Module>(&self, module: &M) -> bool {
        FlatLayout::of(module, self.packing) == *self
    }
}

/// Some members of an ensemble, gathered straight from its flat buffer into the flat
/// buffer of a smaller ensemble: three device operations whatever the number of
/// parameter tensors, where selecting the members of each tensor takes one each (14 for
/// a critic of 3 hidden layers). Every parameter must have the members on its first axis
/// (`[E, ..]`).
///
/// ```text
///  source buffer (E members)      table [E, n]            k-member buffer [n]
///  p₀: m₀ m₁ … m_E−1 │ p₁: …      row m: where member m's   p₀: slot 0, …, slot k−1 │ p₁: …
///                                 values for each position
///  position t of the result = table[ids[slot[t]], t]   (slot[t]: which of the k members)
/// ```
#[derive(Clone, Debug)]
pub struct MemberGather {
    /// `[E, n]`: row `m` holds, for every position of the `k`-member buffer, where member
    /// `m`'s value for it sits in the source buffer (0 in the padding).
    table: Tensor<2, Int>,
    /// `[n]`: the slot (`0..k`) of every position of the `k`-member buffer.
    slot: Tensor<1, Int>,
    /// The `k`-member ensemble's layout.
    layout: FlatLayout,
}

impl MemberGather {
    /// For ensembles with layout `source` (`E` members), gathering into the layout of
    /// `small`, the same network with `k ≤ E` members.
    pub fn new<M: Module>(
        source: &FlatLayout,
        small: &M,
        device: &burn::tensor::Device,
    ) -> Result<Self> {
        let layout = FlatLayout::of(small, source.packing);
        ensure!(
            layout.entries.len() == source.entries.len(),
            "member gather: {} parameter tensors in the small ensemble, {} in the source",
            layout.entries.len(),
            source.entries.len()
        );
        let members = |e: &Entry| e.dims.first().copied().unwrap_or(0);
        let big = source.entries.first().map(members).unwrap_or(0);
        let k = layout.entries.first().map(members).unwrap_or(0);
        ensure!(
            k >= 1 && k <= big,
            "member gather: {k} members out of {big}"
        );
        let n = layout.len;
        let mut table = vec![0i64; big * n];
        let mut slot = vec![0i64; n];
        for (small_e, big_e) in layout.entries.iter().zip(&source.entries) {
            ensure!(
                members(small_e) == k
                    && members(big_e) == big
                    && small_e.dims[1..] == big_e.dims[1..],
                "member gather: a parameter of shape {:?} against {:?} (members first)",
                small_e.dims,
                big_e.dims
            );
            let each = small_e.numel / k;
            for i in 0..k {
                for j in 0..each {
                    let t = small_e.offset + i * each + j;
                    slot[t] = i as i64;
                    for m in 0..big {
                        table[m * n + t] = (big_e.offset + m * each + j) as i64;
                    }
                }
            }
        }
        Ok(MemberGather {
            table: Tensor::from_data(TensorData::new(table, [big, n]), device),
            slot: Tensor::from_data(TensorData::new(slot, [n]), device),
            layout,
        })
    }

    /// The `k`-member buffer holding members `ids` (`[k]`, in that order) of `flat`, a
    /// buffer in the source layout; [`MemberGather::layout`] assigns it to a network.
    pub fn gather(&self, flat: &Tensor<1>, ids: &Tensor<1, Int>) -> Tensor<1> {
        let n = self.layout.len;
        let members = ids.clone().select(0, self.slot.clone()).reshape([1, n]);
        let at = self.table.clone().gather(0, members).reshape([n]);
        flat.clone().select(0, at)
    }

    /// The layout of the gathered buffers.
    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }
}

/// One step's scalars on the device (`[1]` each). A captured graph replays the scalars
/// it recorded unchanged, so values that change from step to step must be read from
/// tensors; [`FusedAdam::step_values`] gives their host values.
#[derive(Clone)]
pub struct StepScalars {
    /// [`FusedAdam::corrections`] at the step's time.
    pub factor: Tensor<1>,
    pub eps: Tensor<1>,
    /// The learning rate and the weight-decay factor `1 − lr·λ` (`None`: the `lr`
    /// passed to the step, a constant).
    pub lr: Option<(Tensor<1>, Tensor<1>)>,
}

/// Adam (`weight_decay = 0`) or AdamW (decoupled weight decay) over a network's flat
/// buffer, with burn's defaults β₁ 0.9, β₂ 0.999 and the given ε.
#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    packing: Packing,
    state: Option<FlatState>,
    /// The parameters after the last step, and their layout: the network this optimizer
    /// returned holds slices of this buffer, so the next step starts from it instead of
    /// copying the parameters out again, and [`FusedAdam::blend`] averages towards it.
    last: Option<(FlatLayout, Tensor<1>)>,
    /// The buffer of the target network that [`FusedAdam::blend`] returned last.
    target: Option<Tensor<1>>,
}

#[derive(Clone)]
struct FlatState {
    time: usize,
    /// The layout the moments are in.
    layout: FlatLayout,
    moment_1: Tensor<1>,
    moment_2: Tensor<1>,
}

/// First bytes of a saved [`FusedAdam`] state.
const MAGIC: &[u8; 8] = b"EXPOADM1";

impl FusedAdam {
    pub fn adam(epsilon: f32, packing: Packing) -> Self {
        Self::adamw(epsilon, 0.0, packing)
    }

    pub fn adamw(epsilon: f32, weight_decay: f32, packing: Packing) -> Self {
        FusedAdam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon,
            weight_decay,
            packing,
            state: None,
            last: None,
            target: None,
        }
    }

    /// Forgets the buffers of the last step and blend: call it when the network (or its
    /// target copy) was changed by anything but this optimizer, e.g. loaded.
    pub fn forget_params(&mut self) {
        self.last = None;
        self.target = None;
    }

    /// One step of `module` along `grads` with learning rate `lr`.
    ///
    /// `module` must be the network this optimizer returned last, unchanged, or one of
    /// another layout, or any network after [`FusedAdam::forget_params`]: a network
    /// with the last step's layout is taken to hold that step's parameters.
    pub fn step<M: AutodiffModule>(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.step_with(lr, module, grads, None)
    }

    /// Adam's bias-correction terms at step `time` (from 1): `√(1 − β₂ᵗ) / (1 − β₁ᵗ)`,
    /// which scales the first moment, and `ε·√(1 − β₂ᵗ)`, added to `√v`.
    pub fn corrections(&self, time: usize) -> (f32, f32) {
        let t = time as i32;
        let bias_correction_2 = (1.0 - self.beta_2.powi(t)).sqrt();
        (
            bias_correction_2 / (1.0 - self.beta_1.powi(t)),
            self.epsilon * bias_correction_2,
        )
    }

    /// Steps taken (the time of the last one).
    pub fn time(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.time)
    }

    /// Sets the step count (after steps taken in a replayed graph, which does not run
    /// this host code).
    pub fn set_time(&mut self, time: usize) {
        if let Some(s) = &mut self.state {
            s.time = time;
        }
    }

    /// Makes every second moment infinite, as a gradient past 1.8e19 does to one
    /// (its square overflows); for the checkpoint's tests.
    #[cfg(test)]
    pub(crate) fn overflow_second_moments(&mut self) {
        let s = self.state.as_mut().expect("a state to damage");
        s.moment_2 = s.moment_2.clone().add_scalar(f32::INFINITY);
    }

    /// The layout of the last step's buffers.
    pub fn layout(&self) -> Option<&FlatLayout> {
        self.last.as_ref().map(|(l, _)| l)
    }

    /// The buffers of the last step: parameters, first and second moments, and the
    /// target [`FusedAdam::blend`] returned last (each `None` when absent).
    pub fn buffers(&self) -> [Option<&Tensor<1>>; 4] {
        [
            self.last.as_ref().map(|(_, p)| p),
            self.state.as_ref().map(|s| &s.moment_1),
            self.state.as_ref().map(|s| &s.moment_2),
            self.target.as_ref(),
        ]
    }

    /// The same optimizer over other buffers of the same layout (parameters, moments,
    /// and the target when it keeps one; a captured graph reads its state from buffers
    /// of its own). Needs a step taken before.
    pub fn with_buffers(
        &self,
        [params, m1, m2]: [Tensor<1>; 3],
        target: Option<Tensor<1>>,
    ) -> Self {
        let (layout, _) = self.last.as_ref().expect("a step taken before");
        let state = self.state.as_ref().expect("a step taken before");
        FusedAdam {
            state: Some(FlatState {
                time: state.time,
                layout: state.layout.clone(),
                moment_1: m1,
                moment_2: m2,
            }),
            last: Some((layout.clone(), params)),
            target,
            ..self.clone()
        }
    }

    /// The host values of [`StepScalars`] for the step at `time` with learning rate
    /// `lr`: `[factor, ε term, lr, 1 − lr·λ]`, as f32 exactly as the host path rounds
    /// them.
    pub fn step_values(&self, time: usize, lr: f64) -> [f32; 4] {
        let (factor, eps) = self.corrections(time);
        let keep = 1.0 - lr * self.weight_decay as f64;
        [factor, eps, lr as f32, keep as f32]
    }

    /// [`FusedAdam::step`], with this step's scalars read from the device when
    /// `scalars` is given. The same f32 arithmetic either way.
    pub fn step_with<M: AutodiffModule>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
        scalars: Option<&StepScalars>,
    ) -> M {
        let (layout, params) = match self.last.take() {
            Some((layout, flat)) if layout.matches(&module) => (layout, Some(flat)),
            _ => (FlatLayout::of(&module, self.packing), None),
        };
        let Some(grad) = layout.grads(&mut grads) else {
            // Nothing to step: the parameter buffer stays (recorded graphs and the
            // target's blend read it).
            if let Some(flat) = params {
                self.last = Some((layout, flat));
            }
            return module;
        };
        let (b1, b2) = (self.beta_1, self.beta_2);
        // burn's AdaptiveMomentum, element for element.
        // A state of another layout cannot happen with the agent's networks (their
        // shapes are fixed by the config); it would start afresh.
        let state = match self.state.take() {
            Some(s) if s.layout == layout => FlatState {
                time: s.time + 1,
                layout: s.layout,
                moment_1: s.moment_1 * b1 + grad.clone() * (1.0 - b1),
                moment_2: s.moment_2 * b2 + grad.square() * (1.0 - b2),
            },
            _ => FlatState {
                time: 1,
                layout: layout.clone(),
                moment_1: grad.clone() * (1.0 - b1),
                moment_2: grad.square() * (1.0 - b2),
            },
        };
        let delta = match scalars {
            Some(s) => {
                (state.moment_1.clone() * s.factor.clone())
                    / (state.moment_2.clone().sqrt() + s.eps.clone())
            }
            None => {
                let (factor, eps) = self.corrections(state.time);
                (state.moment_1.clone() * factor) / (state.moment_2.clone().sqrt() + eps)
            }
        };
        let params = params.unwrap_or_else(|| layout.params(&module));
        // AdamW: p·(1 − lr·λ) − lr·Δ; Adam: p − lr·Δ. As burn's, so that the fused and
        // per-parameter optimizers agree: in f32, 1 − lr·λ is 1 − 2⁻²⁴ at lr = 3e-4
        // (λ = 1e-4; about twice the decay asked for) and rounds to exactly 1 below
        // lr ≈ 2.98e-4, where the cosine decay soon takes it (no decay from there).
        // optax adds λ·p to the update instead, which never rounds away; the decay is
        // 3e-8 of a weight per update either way.
        let params = match scalars.and_then(|s| s.lr.as_ref()) {
            Some((lr, keep)) => {
                let params = if self.weight_decay == 0.0 {
                    params
                } else {
                    params * keep.clone()
                };
                params - delta * lr.clone()
            }
            None => {
                let decay = lr * self.weight_decay as f64;
                let params = if decay == 0.0 {
                    params
                } else {
                    params * (1.0 - decay)
                };
                params - delta * lr
            }
        };
        self.state = Some(state);
        let module = layout.assign(module, &params);
        self.last = Some((layout, params));
        module
    }

    /// Writes the step count and the moments without padding (little-endian f32 after
    /// a small header), so that the file does not depend on the [`Packing`].
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        let (time, m1, m2) = match &self.state {
            Some(s) => (
                s.time,
                s.layout.unpad(&to_vec(&s.moment_1)?),
                s.layout.unpad(&to_vec(&s.moment_2)?),
            ),
            None => (0, vec![], vec![]),
        };
        out.extend_from_slice(&(time as u64).to_le_bytes());
        out.extend_from_slice(&(m1.len() as u64).to_le_bytes());
        for x in m1.iter().chain(&m2) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        f.write_all(&out)
            .with_context(|| format!("{}: cannot write", path.display()))
    }

    /// The layout this optimizer gives `network`.
    pub fn layout_of<M: Module>(&self, network: &M) -> FlatLayout {
        FlatLayout::of(network, self.packing)
    }

    /// Restores what [`FusedAdam::save`] wrote, onto `device`, for the network of
    /// `layout` (its parameter count is checked; `None`: the run has no such network,
    /// and the file must hold an empty state).
    pub fn load(
        &mut self,
        path: &Path,
        layout: Option<FlatLayout>,
        device: &burn::tensor::Device,
    ) -> Result<()> {
        let mut bytes = vec![];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("{}: cannot read optimizer state", path.display()))?;
        let what = || format!("{}: not a fused optimizer state", path.display());
        ensure!(bytes.len() >= 24 && &bytes[..8] == MAGIC, "{}", what());
        let time = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let n = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
        let body = &bytes[24..];
        ensure!(
            body.len() == n.checked_mul(8).with_context(what)?,
            "{}: {} bytes of moments, expected {} (truncated or corrupted)",
            path.display(),
            body.len(),
            n * 8
        );
        self.forget_params();
        if time == 0 {
            self.state = None;
            return Ok(());
        }
        let Some(layout) = layout else {
            bail!(
                "{}: optimizer state of a network this run does not have",
                path.display()
            );
        };
        let len = layout.num_params();
        if n != len {
            bail!(
                "{}: optimizer state for {n} parameters, but the network has {len}: \
                 a checkpoint of a different network size",
                path.display()
            );
        }
        let floats: Vec<f32> = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (m1, m2) = floats.split_at(n);
        // A damaged file of the right size: its moments made every parameter NaN at the
        // first step, and the divergence check then blamed the learning rates.
        ensure!(
            time <= i32::MAX as usize,
            "{}: step count {time} is beyond any run's (damaged?)",
            path.display()
        );
        let bad = |v: &[f32], ok: fn(f32) -> bool| v.iter().position(|&x| !ok(x));
        if let Some(i) = bad(m1, f32::is_finite) {
            bail!(
                "{}: first moment {i} is {} (not finite: damaged?)",
                path.display(),
                m1[i]
            );
        }
        if let Some(i) = bad(m2, |x| x.is_finite() && x >= 0.0) {
            bail!(
                "{}: second moment {i} is {} (not finite and non-negative: damaged?)",
                path.display(),
                m2[i]
            );
        }
        let padded = layout.len();
        let tensor =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(layout.pad(v), [padded]), device);
        let (moment_1, moment_2) = (tensor(m1), tensor(m2));
        self.state = Some(FlatState {
            time,
            moment_1,
            moment_2,
            layout,
        });
        Ok(())
    }

    /// Polyak averaging `target ← (1 − τ) target + τ online` towards the parameters of
    /// the last step, on flat buffers. `target` must have the stepped network's layout
    /// (a copy made with `valid()` has) and be the one this returned last, or any
    /// target after [`FusedAdam::forget_params`]. `Err(target)` unchanged when there
    /// was no step or the layouts differ.
    pub fn blend<M: Module>(&mut self, target: M, tau: f32) -> Result<M, M> {
        // Whoever blends instead changes the target: its buffer here is then stale.
        let Some((layout, online)) = &self.last else {
            self.target = None;
            return Err(target);
        };
        if !layout.matches(&target) {
            self.target = None;
            return Err(target);
        }
        let current = self.target.take().unwrap_or_else(|| layout.params(&target));
        let blended = current * (1.0 - tau) + online.clone() * tau;
        let target = layout.assign(target, &blended);
        self.target = Some(blended);
        Ok(target)
    }
}

fn to_vec(t: &Tensor<1>) -> Result<Vec<f32>> {
    t.clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("optimizer state is not f32: {e:?}"))
}
