//! Adam and AdamW over one flat buffer per network, and Polyak averaging on it.
//!
//! burn's optimizers update one parameter tensor at a time: about 13 tensor operations
//! per parameter and step (moments, bias correction, update), and Polyak averaging adds 3
//! more. At the `paper` preset the critic ensemble has 14 parameter tensors and takes 20
//! steps per environment step, so the optimizer alone issues several thousand operations
//! per environment step, each a kernel launch on a GPU, and the critic loop is bound by
//! that latency, not by arithmetic (BENCHMARKS.md, "Kernels per environment step").
//!
//! [`FusedAdam`] copies the gradients into one zero-padded flat buffer, does the whole
//! Adam (or AdamW) arithmetic once on it, and hands the network back its parameters as
//! slices of the updated buffer:
//!
//! ```text
//!  grads g₀ [E,i,o]  g₁ [E,1,o] …      params p₀ p₁ …  (copied the same way)
//!        │             │
//!        ▼             ▼
//!  flat g: [ g₀ ···· pad │ g₁ · pad │ … ]  ── m, v, p update: ~13 ops in all ──►  flat p'
//!                                                                      │ slices
//!                                                                      ▼
//!                                                     p₀' = p'[o₀..o₀+n₀].reshape(…) …
//! ```
//!
//! Each parameter starts at a multiple of [`ALIGN`] elements so that its slice is a
//! view of the buffer on cubecl backends (they copy a slice whose byte offset is not
//! aligned to the device's binding alignment). The arithmetic is burn's Adam/AdamW,
//! element for element, so the result is the same as burn's per-parameter step (tested).
//! One difference: a parameter that got no gradient is treated as having a zero
//! gradient (its moments decay and it moves by its momentum), where burn's optimizers
//! skip it; every network here uses all its parameters in its loss.

use anyhow::{Context, Result, bail, ensure};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use std::io::{Read, Write};
use std::path::Path;

/// Offsets of parameters in the flat buffer are multiples of this many elements (1 KiB
/// of f32): at least the storage-binding offset alignment of every GPU we know (256
/// bytes on wgpu/Vulkan, less on CUDA), so that each parameter's slice is a view.
pub const ALIGN: usize = 256;

/// Where each parameter of a network lives in its flat buffer, in visiting order.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatLayout {
    entries: Vec<Entry>,
    /// Buffer length, padded to a multiple of [`ALIGN`].
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
    pub fn of<M: Module>(module: &M) -> Self {
        struct Visit(Vec<Entry>, usize);
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
                self.1 += numel.div_ceil(ALIGN) * ALIGN;
            }
        }
        let mut v = Visit(vec![], 0);
        module.visit(&mut v);
        FlatLayout {
            entries: v.0,
            len: v.1.max(ALIGN),
        }
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
        struct Visit<'a> {
            layout: &'a FlatLayout,
            next: usize,
            flat: Option<Tensor<1>>,
        }
        impl ModuleVisitor for Visit<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let e = &self.layout.entries[self.next];
                self.next += 1;
                let value = param.val().no_grad();
                if self.flat.is_none() {
                    self.flat = Some(Tensor::zeros([self.layout.len], &value.device()));
                }
                let flat = self.flat.take().unwrap();
                self.flat =
                    Some(flat.slice_assign(e.offset..e.offset + e.numel, value.reshape([e.numel])));
            }
        }
        let mut v = Visit {
            layout: self,
            next: 0,
            flat: None,
        };
        module.visit(&mut v);
        v.flat.expect("a network with parameters")
    }

    /// The gradients of the parameters in one buffer (zero where a parameter has none,
    /// and in the padding), removed from `grads`. `None` when no parameter has one.
    fn grads(&self, grads: &mut GradientsParams) -> Option<Tensor<1>> {
        let mut flat: Option<Tensor<1>> = None;
        for e in &self.entries {
            let g = match e.dims.len() {
                1 => grads.remove::<1>(e.id).map(|g| g.reshape([e.numel])),
                2 => grads.remove::<2>(e.id).map(|g| g.reshape([e.numel])),
                3 => grads.remove::<3>(e.id).map(|g| g.reshape([e.numel])),
                4 => grads.remove::<4>(e.id).map(|g| g.reshape([e.numel])),
                r => panic!("parameters of rank {r} are not supported by the fused optimizer"),
            };
            if let Some(g) = g {
                let f = flat.unwrap_or_else(|| Tensor::zeros([self.len], &g.device()));
                flat = Some(f.slice_assign(e.offset..e.offset + e.numel, g));
            }
        }
        flat
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
        FlatLayout::of(module) == *self
    }
}

/// Adam (`weight_decay = 0`) or AdamW (decoupled weight decay) over a network's flat
/// buffer, with burn's defaults β₁ 0.9, β₂ 0.999 and the given ε.
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    state: Option<FlatState>,
    /// The parameters after the last step, and their layout: [`polyak_flat`] blends a
    /// target copy towards them without flattening the online network again.
    last: Option<(FlatLayout, Tensor<1>)>,
}

struct FlatState {
    time: usize,
    moment_1: Tensor<1>,
    moment_2: Tensor<1>,
}

/// First bytes of a saved [`FusedAdam`] state.
const MAGIC: &[u8; 8] = b"EXPOADM1";

impl FusedAdam {
    pub fn adam(epsilon: f32) -> Self {
        Self::adamw(epsilon, 0.0)
    }

    pub fn adamw(epsilon: f32, weight_decay: f32) -> Self {
        FusedAdam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon,
            weight_decay,
            state: None,
            last: None,
        }
    }

    /// One step of `module` along `grads` with learning rate `lr`.
    pub fn step<M: AutodiffModule>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        let layout = match self.last.take() {
            Some((layout, _)) if layout.matches(&module) => layout,
            _ => FlatLayout::of(&module),
        };
        let Some(grad) = layout.grads(&mut grads) else {
            return module;
        };
        let (b1, b2) = (self.beta_1, self.beta_2);
        // burn's AdaptiveMomentum, element for element.
        let state = match self.state.take() {
            Some(s) if s.moment_1.dims()[0] == layout.len() => FlatState {
                time: s.time + 1,
                moment_1: s.moment_1 * b1 + grad.clone() * (1.0 - b1),
                moment_2: s.moment_2 * b2 + grad.square() * (1.0 - b2),
            },
            _ => FlatState {
                time: 1,
                moment_1: grad.clone() * (1.0 - b1),
                moment_2: grad.square() * (1.0 - b2),
            },
        };
        let t = state.time as i32;
        let bias_correction_2 = (1.0 - b2.powi(t)).sqrt();
        let factor = bias_correction_2 / (1.0 - b1.powi(t));
        let delta = (state.moment_1.clone() * factor)
            / (state.moment_2.clone().sqrt() + self.epsilon * bias_correction_2);
        let params = layout.params(&module);
        // AdamW: p·(1 − lr·λ) − lr·Δ; Adam: p − lr·Δ.
        let decay = lr * self.weight_decay as f64;
        let params = if decay == 0.0 {
            params
        } else {
            params * (1.0 - decay)
        };
        let params = params - delta * lr;
        self.state = Some(state);
        let module = layout.assign(module, &params);
        self.last = Some((layout, params));
        module
    }

    /// Writes the moments and the step count (little-endian f32 after a small header).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        let (time, m1, m2) = match &self.state {
            Some(s) => (s.time, to_vec(&s.moment_1)?, to_vec(&s.moment_2)?),
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

    /// Restores what [`FusedAdam::save`] wrote, onto `device`, for a network of layout
    /// length `len` (checked).
    pub fn load(&mut self, path: &Path, len: usize, device: &burn::tensor::Device) -> Result<()> {
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
        if time == 0 {
            self.state = None;
            return Ok(());
        }
        if n != len {
            bail!(
                "{}: optimizer state for {n} parameters (padded), but the network has {len}: \
                 a checkpoint of a different network size",
                path.display()
            );
        }
        let floats: Vec<f32> = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (m1, m2) = floats.split_at(n);
        let tensor = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), device);
        self.state = Some(FlatState {
            time,
            moment_1: tensor(m1),
            moment_2: tensor(m2),
        });
        self.last = None;
        Ok(())
    }

    /// The parameters after the last step, if `online` still has that layout.
    pub fn last_params<M: Module>(&self, online: &M) -> Option<(&FlatLayout, &Tensor<1>)> {
        self.last
            .as_ref()
            .filter(|(layout, _)| layout.matches(online))
            .map(|(l, p)| (l, p))
    }
}

fn to_vec(t: &Tensor<1>) -> Result<Vec<f32>> {
    t.clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("optimizer state is not f32: {e:?}"))
}

/// Polyak averaging `target ← (1 − τ) target + τ online` on flat buffers: `online` is
/// the flat buffer of the online network (layout `layout`, which `target` must share:
/// a copy made with `valid()` does).
pub fn polyak_flat<M: Module>(target: M, layout: &FlatLayout, online: &Tensor<1>, tau: f32) -> M {
    let blended = layout.params(&target) * (1.0 - tau) + online.clone() * tau;
    layout.assign(target, &blended)
}
