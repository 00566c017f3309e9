//! Randomly initialised bundles, for tests and latency benchmarks that must not depend
//! on the trainer (burn). Same layer sizes and initialisation ranges as the trainer's
//! fresh networks, plus a random LayerNorm affine so that every parameter matters.

use crate::graphs::{
    CriticWeights, DenoiserWeights, DenseWeights, EnsembleDenseWeights, GaussianWeights,
    LogStdHead, NormWeights, ResBlockWeights, critic_graph, denoiser_graph, edit_graph,
};
use crate::manifest::{
    ActionSpec, BundleError, BundleGraphs, DiffusionSpec, FORMAT_VERSION, GraphFile, GraphFiles,
    Manifest, NetworkSpec, ObservationSpec, Provenance, SelectionSpec, SigningKey, write_bundle,
};
use std::path::Path;

/// A small deterministic generator (SplitMix64), so this module needs no dependency.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next()).collect()
    }
    fn dense(&mut self, d_in: usize, d_out: usize, bias: bool) -> DenseWeights {
        let s = 1.0 / (d_in as f32).sqrt();
        DenseWeights {
            d_in,
            d_out,
            weight: self.vec(d_in * d_out, s),
            bias: bias.then(|| self.vec(d_out, s)),
        }
    }
    fn norm(&mut self, d: usize) -> NormWeights {
        NormWeights {
            gamma: (0..d).map(|_| 1.0 + 0.1 * self.next()).collect(),
            beta: self.vec(d, 0.1),
        }
    }
}

/// Sizes of a synthetic bundle.
#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    pub obs_dim: usize,
    /// Values per action (one control step).
    pub act_dim: usize,
    /// Actions per chunk (1: one action per observation).
    pub horizon: usize,
    pub networks: NetworkSpec,
    pub num_critics: usize,
    pub selection: SelectionSpec,
    pub steps: usize,
}

impl SyntheticSpec {
    /// The paper's sizes (DESIGN.md section 2) on a 10-d observation, 2-d action task.
    pub fn paper() -> Self {
        SyntheticSpec {
            obs_dim: 10,
            act_dim: 2,
            horizon: 1,
            networks: NetworkSpec {
                denoiser_hidden: 256,
                denoiser_blocks: 3,
                denoiser_expanded: 1024,
                fourier_features: 128,
                time_hidden: 256,
                edit_widths: vec![256, 256, 256],
                critic_widths: vec![256, 256, 256],
                edit_log_std: LogStdHead::Tanh,
            },
            num_critics: 10,
            selection: SelectionSpec {
                num_samples: 8,
                num_edit: 8,
                critic_subset: 2,
                ensemble_size: 10,
                edit_scale: 0.05,
            },
            steps: 10,
        }
    }

    /// The trainer's `cpu` preset sizes.
    pub fn cpu() -> Self {
        SyntheticSpec {
            obs_dim: 10,
            act_dim: 2,
            horizon: 1,
            networks: NetworkSpec {
                denoiser_hidden: 64,
                denoiser_blocks: 2,
                denoiser_expanded: 256,
                fourier_features: 32,
                time_hidden: 64,
                edit_widths: vec![64, 64],
                critic_widths: vec![64, 64],
                edit_log_std: LogStdHead::Tanh,
            },
            num_critics: 10,
            selection: SelectionSpec {
                num_samples: 4,
                num_edit: 4,
                critic_subset: 2,
                ensemble_size: 10,
                edit_scale: 0.05,
            },
            steps: 5,
        }
    }

    /// Writes a bundle with random weights from `seed` into `dir`.
    pub fn write(
        &self,
        dir: &Path,
        seed: u64,
        key: Option<&SigningKey>,
    ) -> Result<Manifest, BundleError> {
        let mut g = Gen(seed);
        let n = &self.networks;
        // The networks act on whole chunks.
        let (od, ad) = (self.obs_dim, self.act_dim * self.horizon);
        let fan_in = ad + od + n.time_hidden;
        let first = |g: &mut Gen, d_in: usize, bias: bool| {
            let s = 1.0 / (fan_in as f32).sqrt();
            DenseWeights {
                d_in,
                d_out: n.denoiser_hidden,
                weight: g.vec(d_in * n.denoiser_hidden, s),
                bias: bias.then(|| g.vec(n.denoiser_hidden, s)),
            }
        };
        let denoiser = DenoiserWeights {
            fourier: g.vec(n.fourier_features / 2, 0.4),
            time_in: g.dense(n.fourier_features, n.time_hidden, true),
            time_out: g.dense(n.time_hidden, n.time_hidden, true),
            input_action: first(&mut g, ad, true),
            input_obs: first(&mut g, od, false),
            input_time: first(&mut g, n.time_hidden, false),
            blocks: (0..n.denoiser_blocks)
                .map(|_| ResBlockWeights {
                    norm: g.norm(n.denoiser_hidden),
                    up: g.dense(n.denoiser_hidden, n.denoiser_expanded, true),
                    down: g.dense(n.denoiser_expanded, n.denoiser_hidden, true),
                })
                .collect(),
            output: g.dense(n.denoiser_hidden, ad, true),
        };
        let mlp = |g: &mut Gen, d_in: usize, widths: &[usize], d_out: usize| {
            let mut layers = vec![];
            let mut d = d_in;
            for &w in widths {
                layers.push(g.dense(d, w, true));
                d = w;
            }
            layers.push(g.dense(d, d_out, true));
            layers
        };
        let edit = (self.selection.num_edit > 0).then(|| GaussianWeights {
            layers: mlp(&mut g, od + ad, &n.edit_widths, 2 * ad),
            log_std: n.edit_log_std,
        });
        let critic = (self.selection.critic_subset > 0).then(|| {
            let e = self.num_critics;
            let mut layers = vec![];
            let mut norms = vec![];
            let mut d = od + ad;
            for &w in n.critic_widths.iter().chain(std::iter::once(&1)) {
                let s = 1.0 / (d as f32).sqrt();
                layers.push(EnsembleDenseWeights {
                    members: e,
                    d_in: d,
                    d_out: w,
                    weight: g.vec(e * d * w, s),
                    bias: g.vec(e * w, s),
                });
                d = w;
            }
            for &w in &n.critic_widths {
                let nw = g.norm(e * w);
                norms.push(nw);
            }
            CriticWeights { layers, norms }
        });
        let graphs = BundleGraphs {
            denoiser: denoiser_graph(&denoiser, od, ad),
            edit: edit.as_ref().map(|w| edit_graph(w, od, ad)),
            critic: critic.as_ref().map(|w| critic_graph(w, od, ad)),
        };
        let empty = GraphFile {
            file: String::new(),
            sha256: String::new(),
        };
        let mut manifest = Manifest {
            format_version: FORMAT_VERSION,
            task: "push".into(),
            algo: "expo".into(),
            observation: ObservationSpec {
                dim: od,
                names: (0..od).map(|i| format!("obs.{i}")).collect(),
                low: vec![-10.0; od],
                high: vec![10.0; od],
                mean: g.vec(od, 0.5),
                std: (0..od).map(|_| 1.0 + 0.5 * g.next()).collect(),
            },
            action: ActionSpec {
                dim: self.act_dim,
                low: vec![-1.0; self.act_dim],
                high: vec![1.0; self.act_dim],
                horizon: self.horizon,
                replan_every: 0,
                control_hz: None,
                names: vec![],
                robot_scale: vec![],
                robot_offset: vec![],
            },
            diffusion: DiffusionSpec {
                schedule: "vp".into(),
                beta_min: 0.1,
                beta_max: 10.0,
                trained_steps: self.steps,
                executed_steps: self.steps,
            },
            selection: self.selection.clone(),
            networks: n.clone(),
            graphs: GraphFiles {
                denoiser: empty,
                edit: None,
                critic: None,
            },
            provenance: Provenance {
                git_revision: "synthetic".into(),
                config_hash: String::new(),
                dataset: "none (random weights)".into(),
                env_steps: 0,
                updates: 0,
                created_unix: 0,
                trainer_version: env!("CARGO_PKG_VERSION").into(),
            },
        };
        write_bundle(dir, &mut manifest, &graphs, key)?;
        Ok(manifest)
    }
}
