//! The three ONNX graphs of a bundle, built from plain weight arrays.
//!
//! The trainer converts its burn modules into these structs; this module owns the graph
//! topology, so the exported function is defined once and the runtime's expectations
//! (input/output names, shapes) come from the same constants.
//!
//! Batch axes: every graph takes the observation as `[obs_batch, O]` and broadcasts it
//! against the `[batch, A]` actions, so the runtime passes one observation row for all N
//! candidates and the observation projection is computed once, not N times. The
//! denoiser's time input `[time_batch, 1]` broadcasts the same way: one time embedding
//! per denoising step, shared by all candidates.
//!
//! ```text
//! denoiser:  obs [b_o, O], noisy_action [B, A], t [b_t, 1] (float step index)
//!            → eps [B, A]
//!            x = noisy·W_a + b + obs·W_o + time_mlp(fourier(t))·W_t
//!            x = x + down(silu(up(LayerNorm(x))))        (per residual block)
//!            eps = silu(x)·W_out + b_out
//! edit:      obs [b_o, O], base_action [B, A] → mean [B, A], log_std [B, A]
//!            (ReLU MLP on [obs, action]; log_std squashed into [LOG_STD_MIN, LOG_STD_MAX]
//!            by a tanh, or clipped to [LOG_STD_CLIP_MIN, LOG_STD_MAX]: [`LogStdHead`])
//! critic:    obs [b_o, O], action [B, A], members [K] (int64 member ids) → q [K, B]
//!            (per member: (Dense → LayerNorm → ReLU) × L → Dense(1), weights gathered
//!            by `members`, so scoring with a sampled subset costs K/E of all members)
//! ```

use crate::onnx::{Attr, DATA_TYPE_FLOAT, DATA_TYPE_INT64, Dim, GraphBuilder, ModelProto};
use std::f32::consts::TAU;

/// LayerNorm epsilon shared by trainer and export.
pub const LAYER_NORM_EPS: f32 = 1e-6;
/// Range the edit policy's log standard deviation is squashed into
/// ([`LogStdHead::Tanh`]); the top of the range is also [`LogStdHead::Clip`]'s.
pub const LOG_STD_MIN: f32 = -5.0;
pub const LOG_STD_MAX: f32 = 2.0;
/// Bottom of [`LogStdHead::Clip`]'s range.
pub const LOG_STD_CLIP_MIN: f32 = -20.0;

/// How a Gaussian policy's raw output becomes its log standard deviation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogStdHead {
    /// `MIN + ½ (MAX − MIN)(tanh(raw) + 1)`, into [−5, 2]: a zero output is std 0.22,
    /// and the gradient never vanishes. This trainer's from the start.
    #[default]
    #[serde(rename = "tanh")]
    Tanh,
    /// `clip(raw, −20, 2)`, as the reference code's lineage (jaxrl's tanh-normal
    /// policies): a zero output is std 1, and the gradient is zero outside the range.
    #[serde(rename = "clip")]
    Clip,
}

impl LogStdHead {
    pub fn is_tanh(&self) -> bool {
        *self == LogStdHead::Tanh
    }
}

/// Graph input and output names.
pub mod names {
    pub const OBS: &str = "obs";
    pub const NOISY_ACTION: &str = "noisy_action";
    pub const TIME: &str = "t";
    pub const EPS: &str = "eps";
    pub const BASE_ACTION: &str = "base_action";
    pub const MEAN: &str = "mean";
    pub const LOG_STD: &str = "log_std";
    pub const ACTION: &str = "action";
    pub const MEMBERS: &str = "members";
    pub const Q: &str = "q";
}

const OBS_BATCH: Dim = Dim::Symbolic("obs_batch");
const BATCH: Dim = Dim::Symbolic("batch");

/// `y = x W + b` with `W: [d_in, d_out]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseWeights {
    pub d_in: usize,
    pub d_out: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl DenseWeights {
    /// Rows `from..to` of the weight (the part of a layer that sees those input features).
    pub fn rows(&self, from: usize, to: usize, with_bias: bool) -> DenseWeights {
        DenseWeights {
            d_in: to - from,
            d_out: self.d_out,
            weight: self.weight[from * self.d_out..to * self.d_out].to_vec(),
            bias: if with_bias { self.bias.clone() } else { None },
        }
    }

    /// Columns `from..to` (a slice of the layer's outputs).
    pub fn cols(&self, from: usize, to: usize) -> DenseWeights {
        let weight = self
            .weight
            .chunks_exact(self.d_out)
            .flat_map(|row| row[from..to].iter().copied())
            .collect();
        DenseWeights {
            d_in: self.d_in,
            d_out: to - from,
            weight,
            bias: self.bias.as_ref().map(|b| b[from..to].to_vec()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NormWeights {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResBlockWeights {
    pub norm: NormWeights,
    pub up: DenseWeights,
    pub down: DenseWeights,
}

/// The conditional MLP-ResNet noise predictor (first layer split by input).
#[derive(Clone, Debug, PartialEq)]
pub struct DenoiserWeights {
    /// Learnable Fourier frequencies (`fourier / 2` of them).
    pub fourier: Vec<f32>,
    pub time_in: DenseWeights,
    pub time_out: DenseWeights,
    pub input_action: DenseWeights,
    pub input_obs: DenseWeights,
    pub input_time: DenseWeights,
    pub blocks: Vec<ResBlockWeights>,
    pub output: DenseWeights,
}

/// A ReLU MLP whose last layer outputs `[mean, raw log_std]` (`2 A` wide).
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianWeights {
    pub layers: Vec<DenseWeights>,
    pub log_std: LogStdHead,
}

/// One layer of the critic ensemble: `weight [E, d_in, d_out]`, `bias [E, d_out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EnsembleDenseWeights {
    pub members: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CriticWeights {
    pub layers: Vec<EnsembleDenseWeights>,
    /// Per-member LayerNorm scale and shift, `[E, width]` each.
    pub norms: Vec<NormWeights>,
}

impl CriticWeights {
    pub fn members(&self) -> usize {
        self.layers[0].members
    }
}

fn dense(g: &mut GraphBuilder, x: &str, w: &DenseWeights, name: &str) -> String {
    let wn = g.floats(&format!("{name}.weight"), &[w.d_in, w.d_out], &w.weight);
    let y = g.node("MatMul", &[x, &wn], &[]);
    match &w.bias {
        Some(b) => {
            let bn = g.floats(&format!("{name}.bias"), &[w.d_out], b);
            g.node("Add", &[&y, &bn], &[])
        }
        None => y,
    }
}

fn silu(g: &mut GraphBuilder, x: &str) -> String {
    let s = g.node("Sigmoid", &[x], &[]);
    g.node("Mul", &[x, &s], &[])
}

fn layer_norm(g: &mut GraphBuilder, x: &str, n: &NormWeights, name: &str) -> String {
    let d = n.gamma.len();
    let gamma = g.floats(&format!("{name}.gamma"), &[d], &n.gamma);
    let beta = g.floats(&format!("{name}.beta"), &[d], &n.beta);
    g.node(
        "LayerNormalization",
        &[x, &gamma, &beta],
        &[
            ("axis", Attr::Int(-1)),
            ("epsilon", Attr::Float(LAYER_NORM_EPS)),
        ],
    )
}

/// The denoising-step graph.
pub fn denoiser_graph(w: &DenoiserWeights, obs_dim: usize, act_dim: usize) -> ModelProto {
    use names::*;
    let mut g = GraphBuilder::new("expo_denoiser");
    let obs = g.input(OBS, DATA_TYPE_FLOAT, &[OBS_BATCH, Dim::Fixed(obs_dim)]);
    let x = g.input(NOISY_ACTION, DATA_TYPE_FLOAT, &[BATCH, Dim::Fixed(act_dim)]);
    let t = g.input(
        TIME,
        DATA_TYPE_FLOAT,
        &[Dim::Symbolic("time_batch"), Dim::Fixed(1)],
    );
    // Time features: [cos(2π t f), sin(2π t f)] → Dense → silu → Dense → first-layer block.
    let freqs = g.floats("fourier", &[1, w.fourier.len()], &w.fourier);
    let tf = g.node("MatMul", &[&t, &freqs], &[]);
    let tau = g.floats("two_pi", &[], &[TAU]);
    let phase = g.node("Mul", &[&tf, &tau], &[]);
    let cos = g.node("Cos", &[&phase], &[]);
    let sin = g.node("Sin", &[&phase], &[]);
    let feats = g.node("Concat", &[&cos, &sin], &[("axis", Attr::Int(1))]);
    let h = dense(&mut g, &feats, &w.time_in, "time_in");
    let h = silu(&mut g, &h);
    let emb = dense(&mut g, &h, &w.time_out, "time_out");
    let time_proj = dense(&mut g, &emb, &w.input_time, "input_time");
    let obs_proj = dense(&mut g, &obs, &w.input_obs, "input_obs");
    let act_proj = dense(&mut g, &x, &w.input_action, "input_action");
    let h = g.node("Add", &[&act_proj, &obs_proj], &[]);
    let mut h = g.node("Add", &[&h, &time_proj], &[]);
    for (i, b) in w.blocks.iter().enumerate() {
        let n = layer_norm(&mut g, &h, &b.norm, &format!("blocks.{i}.norm"));
        let u = dense(&mut g, &n, &b.up, &format!("blocks.{i}.up"));
        let u = silu(&mut g, &u);
        let d = dense(&mut g, &u, &b.down, &format!("blocks.{i}.down"));
        h = g.node("Add", &[&h, &d], &[]);
    }
    let h = silu(&mut g, &h);
    let eps = dense(&mut g, &h, &w.output, "output");
    g.output(&eps, EPS, DATA_TYPE_FLOAT, &[BATCH, Dim::Fixed(act_dim)]);
    g.finish("EXPO diffusion base policy: one denoising step, eps(noisy_action, obs, t)")
}

/// The edit-policy graph (mean and squashed log-std of the pre-tanh Gaussian). Needs
/// at least one hidden layer: the first layer is split by input and the last is the
/// head (the trainer's config and the manifest check refuse a policy without one).
pub fn edit_graph(w: &GaussianWeights, obs_dim: usize, act_dim: usize) -> ModelProto {
    use names::*;
    assert!(
        w.layers.len() >= 2,
        "an edit policy without a hidden layer has no separate head to export"
    );
    let mut g = GraphBuilder::new("expo_edit");
    let obs = g.input(OBS, DATA_TYPE_FLOAT, &[OBS_BATCH, Dim::Fixed(obs_dim)]);
    let base = g.input(BASE_ACTION, DATA_TYPE_FLOAT, &[BATCH, Dim::Fixed(act_dim)]);
    let first = &w.layers[0];
    let from_obs = dense(&mut g, &obs, &first.rows(0, obs_dim, false), "layers.0.obs");
    let from_act = dense(
        &mut g,
        &base,
        &first.rows(obs_dim, obs_dim + act_dim, true),
        "layers.0.action",
    );
    let mut h = g.node("Add", &[&from_act, &from_obs], &[]);
    let last = w.layers.len() - 1;
    for (i, l) in w.layers.iter().enumerate().skip(1) {
        h = g.node("Relu", &[&h], &[]);
        if i == last {
            break;
        }
        h = dense(&mut g, &h, l, &format!("layers.{i}"));
    }
    let head = &w.layers[last];
    let mean = dense(&mut g, &h, &head.cols(0, act_dim), "head.mean");
    let raw = dense(&mut g, &h, &head.cols(act_dim, 2 * act_dim), "head.log_std");
    let log_std = match w.log_std {
        LogStdHead::Tanh => {
            // log_std = MIN + ½ (MAX − MIN)(tanh(raw) + 1)
            let th = g.node("Tanh", &[&raw], &[]);
            let one = g.floats("one", &[], &[1.0]);
            let half_range = g.floats(
                "half_log_std_range",
                &[],
                &[0.5 * (LOG_STD_MAX - LOG_STD_MIN)],
            );
            let min = g.floats("log_std_min", &[], &[LOG_STD_MIN]);
            let s = g.node("Add", &[&th, &one], &[]);
            let s = g.node("Mul", &[&s, &half_range], &[]);
            g.node("Add", &[&s, &min], &[])
        }
        LogStdHead::Clip => {
            // Clip takes its bounds as inputs since opset 11.
            let min = g.floats("log_std_clip_min", &[], &[LOG_STD_CLIP_MIN]);
            let max = g.floats("log_std_max", &[], &[LOG_STD_MAX]);
            g.node("Clip", &[&raw, &min, &max], &[])
        }
    };
    g.output(&mean, MEAN, DATA_TYPE_FLOAT, &[BATCH, Dim::Fixed(act_dim)]);
    g.output(
        &log_std,
        LOG_STD,
        DATA_TYPE_FLOAT,
        &[BATCH, Dim::Fixed(act_dim)],
    );
    g.finish("EXPO edit policy: tanh-Gaussian over [obs, base_action]")
}

/// The critic-ensemble graph, scoring with the members listed in `members`.
///
/// Panics unless every hidden layer has its layer norm (`norms.len() == layers.len() −
/// 1`): the ReLU comes after the norm, so a hidden layer without one would have been
/// written linear, a different network from the trainer's.
pub fn critic_graph(w: &CriticWeights, obs_dim: usize, act_dim: usize) -> ModelProto {
    use names::*;
    assert_eq!(
        w.norms.len() + 1,
        w.layers.len(),
        "critic graph: one layer norm per hidden layer"
    );
    let mut g = GraphBuilder::new("expo_critic");
    let e = w.members();
    let obs = g.input(OBS, DATA_TYPE_FLOAT, &[OBS_BATCH, Dim::Fixed(obs_dim)]);
    let act = g.input(ACTION, DATA_TYPE_FLOAT, &[BATCH, Dim::Fixed(act_dim)]);
    let members = g.input(MEMBERS, DATA_TYPE_INT64, &[Dim::Symbolic("members")]);
    let gather = |g: &mut GraphBuilder, name: &str, dims: &[usize], data: &[f32]| {
        let t = g.floats(name, dims, data);
        g.node("Gather", &[&t, &members], &[("axis", Attr::Int(0))])
    };
    let mut h = String::new();
    for (i, l) in w.layers.iter().enumerate() {
        let bias = gather(
            &mut g,
            &format!("layers.{i}.bias"),
            &[e, 1, l.d_out],
            &l.bias,
        );
        let y = if i == 0 {
            // Split rows: [E, O + A, H] → obs part and action part.
            let per = l.d_in * l.d_out;
            let (mut wo, mut wa) = (vec![], vec![]);
            for m in 0..e {
                let member = &l.weight[m * per..(m + 1) * per];
                wo.extend_from_slice(&member[..obs_dim * l.d_out]);
                wa.extend_from_slice(&member[obs_dim * l.d_out..]);
            }
            let wo = gather(&mut g, "layers.0.obs.weight", &[e, obs_dim, l.d_out], &wo);
            let wa = gather(
                &mut g,
                "layers.0.action.weight",
                &[e, act_dim, l.d_out],
                &wa,
            );
            let po = g.node("MatMul", &[&obs, &wo], &[]); // [K, b_o, H]
            let pa = g.node("MatMul", &[&act, &wa], &[]); // [K, B, H]
            g.node("Add", &[&pa, &po], &[])
        } else {
            let wt = gather(
                &mut g,
                &format!("layers.{i}.weight"),
                &[e, l.d_in, l.d_out],
                &l.weight,
            );
            g.node("MatMul", &[&h, &wt], &[])
        };
        h = g.node("Add", &[&y, &bias], &[]);
        if let Some(n) = w.norms.get(i) {
            // Normalise with unit scale, then apply the per-member scale and shift
            // (LayerNormalization's own scale cannot vary by member).
            let d = l.d_out;
            let ones = g.floats(&format!("norms.{i}.unit"), &[d], &vec![1.0; d]);
            let zeros = g.floats(&format!("norms.{i}.zero"), &[d], &vec![0.0; d]);
            let z = g.node(
                "LayerNormalization",
                &[&h, &ones, &zeros],
                &[
                    ("axis", Attr::Int(-1)),
                    ("epsilon", Attr::Float(LAYER_NORM_EPS)),
                ],
            );
            let gm = gather(&mut g, &format!("norms.{i}.gamma"), &[e, 1, d], &n.gamma);
            let bt = gather(&mut g, &format!("norms.{i}.beta"), &[e, 1, d], &n.beta);
            let z = g.node("Mul", &[&z, &gm], &[]);
            let z = g.node("Add", &[&z, &bt], &[]);
            h = g.node("Relu", &[&z], &[]);
        }
    }
    let axes = g.int64s("squeeze_axes", &[1], &[2]);
    let q = g.node("Squeeze", &[&h, &axes], &[]);
    g.output(&q, Q, DATA_TYPE_FLOAT, &[Dim::Symbolic("members"), BATCH]);
    g.finish("EXPO critic ensemble: Q of the listed members for every action row")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(members: usize, d_in: usize, d_out: usize) -> EnsembleDenseWeights {
        EnsembleDenseWeights {
            members,
            d_in,
            d_out,
            weight: vec![0.1; members * d_in * d_out],
            bias: vec![0.0; members * d_out],
        }
    }

    /// A hidden layer without its layer norm is refused: it was written without its
    /// ReLU, a linear critic unlike the trainer's.
    #[test]
    #[should_panic(expected = "one layer norm per hidden layer")]
    fn a_critic_without_its_layer_norms_is_refused() {
        let w = CriticWeights {
            layers: vec![dense(2, 3, 4), dense(2, 4, 1)],
            norms: vec![],
        };
        critic_graph(&w, 2, 1);
    }
}
