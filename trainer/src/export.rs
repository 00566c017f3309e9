//! Export: burn modules → plain weights → a signed model bundle.
//!
//! The bundle holds the networks the agent acts with (`Agent::act`): the EMA denoiser,
//! the edit policy and the target critics. The graph topology is defined once in
//! `shared_model::graphs`; this module only reads the parameters out of burn.
//!
//! Every export is checked before anything is written ([`check_parity`]): the graphs,
//! run by the controller's tract and native runtimes on random inputs, must give what
//! the burn networks give, to 1e-4 (absolute plus relative) on the CPU and 2e-3 plus
//! 0.1% on a GPU (TF32 matmuls). onnxruntime is not run here: the controller's `ort`
//! backend needs a library the user provides; `controller/tests/interop.rs` runs
//! Python's onnxruntime on a synthetic bundle against tract.

use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::tensor::Tensor;
use shared_model::graphs::{
    self, CriticWeights, DenoiserWeights, DenseWeights, EnsembleDenseWeights, GaussianWeights,
    NormWeights, ResBlockWeights,
};
use shared_model::manifest::{
    self, ActionSpec, BundleGraphs, DiffusionSpec, GraphFile, GraphFiles, Manifest, NetworkSpec,
    ObservationSpec, Provenance, SelectionSpec, SigningKey,
};
use std::path::Path;

use crate::agent::Agent;
use crate::config::{Algo, Config};
use crate::nets::{CriticEnsemble, Denoiser, Dense, GaussianPolicy, Norm, tensor2};
use burn::module::AutodiffModule;
use controller::runtime::{Backend, GraphRows, load_networks};
use shared_model::manifest::VerifiedBundle;
use sim::rng::Rng;

fn host<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    p.val()
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 parameters")
}

pub fn dense(d: &Dense) -> DenseWeights {
    let [d_in, d_out] = d.weight.shape().dims::<2>();
    DenseWeights {
        d_in,
        d_out,
        weight: host(&d.weight),
        bias: d.bias.as_ref().map(host),
    }
}

fn norm(n: &Norm) -> NormWeights {
    NormWeights {
        gamma: host(&n.gamma),
        beta: host(&n.beta),
    }
}

pub fn denoiser_weights(d: &Denoiser) -> DenoiserWeights {
    DenoiserWeights {
        fourier: host(&d.fourier),
        time_in: dense(&d.time_in),
        time_out: dense(&d.time_out),
        input_action: dense(&d.input_action),
        input_obs: dense(&d.input_obs),
        input_time: dense(&d.input_time),
        blocks: d
            .blocks
            .iter()
            .map(|b| ResBlockWeights {
                norm: norm(&b.norm),
                up: dense(&b.up),
                down: dense(&b.down),
            })
            .collect(),
        output: dense(&d.output),
    }
}

pub fn gaussian_weights(p: &GaussianPolicy) -> GaussianWeights {
    GaussianWeights {
        layers: p.mlp.layers.iter().map(dense).collect(),
        log_std: p.log_std_head(),
    }
}

pub fn critic_weights(c: &CriticEnsemble) -> CriticWeights {
    CriticWeights {
        layers: c
            .layers
            .iter()
            .map(|l| {
                let [members, d_in, d_out] = l.weight.shape().dims::<3>();
                EnsembleDenseWeights {
                    members,
                    d_in,
                    d_out,
                    weight: host(&l.weight),
                    bias: host(&l.bias),
                }
            })
            .collect(),
        norms: c
            .norms
            .iter()
            .map(|n| NormWeights {
                gamma: host(&n.gamma),
                beta: host(&n.beta),
            })
            .collect(),
    }
}

/// Where the weights came from, for the manifest.
#[derive(Clone, Debug, Default)]
pub struct ExportInfo {
    pub dataset: String,
    pub env_steps: u64,
    /// Default executed denoising steps (≤ trained; `None` = all).
    pub executed_steps: Option<usize>,
    /// The bundle's export time (`provenance.created_unix`) is at least this: a live
    /// session's bundles are stamped in order whatever the trainer's clock does (a
    /// robot refuses a bundle stamped before the newest it took, and the clock stepped
    /// back an hour refused an hour of them). 0: the clock's time.
    pub not_before_unix: u64,
}

/// What a bundle exported from the run in `run` (of `config`) says it learned from
/// (`provenance.dataset`): a fine-tuned run's robot data, whichever command exports it
/// (`export --run` named the source run's demonstrations, `finetune --bundle` the robot
/// data), else the run's offline data.
pub fn dataset_provenance(run: &Path, config: &Config) -> String {
    if run.join("finetune.csv").exists() {
        format!("finetuned on robot data ({})", run.display())
    } else {
        config
            .run
            .dataset
            .clone()
            .unwrap_or_else(|| format!("scripted demonstrations ({})", config.task))
    }
}

/// The bundle's graphs for `agent` (those its algorithm acts with).
pub fn bundle_graphs(agent: &Agent) -> BundleGraphs {
    let (od, ad) = (agent.obs_dim, agent.act_dim);
    let acts_with_critic = agent.config.algo.selects_with_critic();
    BundleGraphs {
        denoiser: graphs::denoiser_graph(&denoiser_weights(&agent.denoiser_ema), od, ad),
        edit: agent
            .edit
            .as_ref()
            .map(|e| graphs::edit_graph(&gaussian_weights(e), od, ad)),
        critic: agent
            .critic_target
            .as_ref()
            .filter(|_| acts_with_critic)
            .map(|c| graphs::critic_graph(&critic_weights(c), od, ad)),
    }
}

/// The manifest describing `agent` (graph hashes are filled in by `write_bundle`).
pub fn manifest_for(agent: &Agent, info: &ExportInfo) -> Result<Manifest> {
    let c = &agent.config;
    if c.algo == Algo::Rlpd {
        bail!("RLPD runs have no diffusion policy; bundles hold EXPO, idql-select or BC policies");
    }
    // Names and bounds of the observation, the actions' names, and the rate of the steps
    // it was trained on: the simulated task's, or the robot's as its dataset showed them
    // (action names the data did not give are left out: the controller checks none).
    // And the robot file's action mapping the data was recorded with, where the data
    // records it (a simulated task's commands pass through its own robot file both ways).
    let (task, names, low, high, control_hz, action_names, mapping) =
        match (c.task.sim(), &agent.robot) {
            (Some(t), _) => {
                let spec = t.spec();
                (
                    t.to_string(),
                    spec.owned_obs_names(),
                    spec.obs_low.to_vec(),
                    spec.obs_high.to_vec(),
                    spec.control_hz,
                    spec.owned_action_names(),
                    None,
                )
            }
            (None, Some(r)) => (
                r.name.clone(),
                r.observation_names.clone(),
                r.obs_low.clone(),
                r.obs_high.clone(),
                r.fps,
                if dataset::unnamed_actions(&r.action_names) {
                    vec![]
                } else {
                    r.action_names.clone()
                },
                r.action_mapping.clone(),
            ),
            (None, None) => bail!("a robot run without its robot's description (checkpoint state)"),
        };
    let (robot_scale, robot_offset) = mapping.map(|m| (m.scale, m.offset)).unwrap_or_default();
    let selection = agent.selection();
    // The networks act on chunks of `action_horizon` actions.
    let step_ad = agent.act_dim / c.action_horizon;
    let uses_critic = c.algo.selects_with_critic();
    let config_json = serde_json::to_string(&hashed_config(c))?;
    let d = &c.diffusion;
    let executed = info.executed_steps.unwrap_or(d.steps);
    let placeholder = GraphFile {
        file: String::new(),
        sha256: String::new(),
    };
    let mut manifest = Manifest {
        // The oldest format that holds it (set below).
        format_version: 1,
        task,
        algo: serde_json::to_value(c.algo)?
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        observation: ObservationSpec {
            dim: agent.obs_dim,
            names,
            low,
            high,
            mean: agent.normalizer.mean.clone(),
            std: agent.normalizer.std.clone(),
        },
        action: ActionSpec {
            dim: step_ad,
            low: vec![-1.0; step_ad],
            high: vec![1.0; step_ad],
            horizon: c.action_horizon,
            // How the run played its chunks; whole chunks (0, or H itself) and one
            // action per plan need no field, so the bundle stays readable by older
            // controllers.
            replan_every: if c.action_horizon > 1 && c.replan_every != c.action_horizon {
                c.replan_every
            } else {
                0
            },
            // The controller refuses a robot file of another rate (a chunk and the
            // discount are per step).
            control_hz: Some(control_hz),
            // And a robot file naming these actions in another order.
            names: action_names,
            // And one mapping them to other commands.
            robot_scale,
            robot_offset,
        },
        diffusion: DiffusionSpec {
            schedule: "vp".into(),
            beta_min: d.beta_min,
            beta_max: d.beta_max,
            trained_steps: d.steps,
            executed_steps: executed,
        },
        selection: SelectionSpec {
            // BC acts with one chain sample and no critic.
            num_samples: if uses_critic {
                selection.num_samples
            } else {
                1
            },
            num_edit: selection.num_edit,
            critic_subset: if uses_critic {
                selection.critic_subset
            } else {
                0
            },
            ensemble_size: if uses_critic { c.net.num_critics } else { 0 },
            edit_scale: c.expo.edit_scale,
        },
        networks: NetworkSpec {
            denoiser_hidden: c.net.denoiser_hidden,
            denoiser_blocks: c.net.denoiser_blocks,
            denoiser_expanded: c.net.denoiser_expanded,
            fourier_features: c.net.fourier_features,
            time_hidden: c.net.time_hidden,
            edit_widths: if c.algo == Algo::Expo {
                c.net.critic_widths.clone()
            } else {
                vec![]
            },
            critic_widths: if uses_critic {
                c.net.critic_widths.clone()
            } else {
                vec![]
            },
            // Tanh for an algorithm without an edit policy: nothing to clip.
            edit_log_std: if c.algo == Algo::Expo {
                c.expo.log_std
            } else {
                Default::default()
            },
        },
        graphs: GraphFiles {
            denoiser: placeholder,
            edit: None,
            critic: None,
        },
        provenance: Provenance {
            // The trainer's own revision (trainer/build.rs), `unknown` outside git.
            git_revision: env!("EXPO_TRAINER_GIT_REVISION").into(),
            config_hash: manifest::sha256_hex(config_json.as_bytes()),
            dataset: info.dataset.clone(),
            env_steps: info.env_steps,
            updates: agent.denoiser_updates as u64,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .max(info.not_before_unix),
            trainer_version: env!("CARGO_PKG_VERSION").into(),
        },
    };
    manifest.format_version = manifest.required_format();
    Ok(manifest)
}

/// Writes `agent` as a bundle into `out`, signed when `key` is given.
pub fn export_bundle(
    agent: &Agent,
    out: &Path,
    info: &ExportInfo,
    key: Option<&SigningKey>,
) -> Result<Manifest> {
    // The robot refuses such a bundle too; say so here, where the cause is.
    if let Some(what) = agent.first_non_finite() {
        anyhow::bail!(
            "not exporting {}: {what} (training diverged)",
            out.display()
        );
    }
    let mut m = manifest_for(agent, info)?;
    if let Some(e) = info.executed_steps {
        anyhow::ensure!(
            (1..=agent.config.diffusion.steps).contains(&e),
            "--executed-steps {e} must be in 1..={} (the trained chain length)",
            agent.config.diffusion.steps
        );
    }
    let graphs = bundle_graphs(agent);
    // The bundle as the controller would load it, before anything is written.
    let in_memory = graphs.in_memory(out, &m);
    parity_checked(out, |backend| {
        check_parity(agent, &in_memory, backend, PARITY_SEED)
    })?;
    manifest::write_bundle(out, &mut m, &graphs, key)
        .with_context(|| format!("writing bundle {}", out.display()))?;
    Ok(m)
}

/// The inputs' seed of the check every export runs.
const PARITY_SEED: u64 = 0x9a41;

/// Runs `check` on each of the controller's CPU runtimes; a failure comes back as a
/// [`ParityMismatch`] under "not exporting OUT", the form live fine-tuning looks for to
/// skip a publication instead of ending the session.
fn parity_checked(out: &Path, mut check: impl FnMut(Backend) -> Result<f32>) -> Result<()> {
    for backend in [Backend::Tract, Backend::Native] {
        if let Err(e) = check(backend) {
            return Err(anyhow::Error::new(ParityMismatch(format!("{e:#}"))))
                .with_context(|| format!("not exporting {}", out.display()));
        }
    }
    Ok(())
}

/// An export refused by [`check_parity`]: its graphs, or the runtime that ran them, do not
/// compute what the burn networks compute. Live fine-tuning publishes nothing then and
/// goes on (the robot keeps its bundle); other exports stop with it.
#[derive(Debug)]
pub struct ParityMismatch(pub String);

impl std::fmt::Display for ParityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParityMismatch {}

/// Runs `bundle`'s graphs with `backend` and the agent's burn networks on the same
/// random inputs (drawn from `seed`): the denoiser at its first, a middle and its last
/// step on N(0, 1) actions (as the chain starts), the edit policy's mean and log-std,
/// the critic members of a subset, on actions in [-1, 1]. Returns
/// the largest difference as a share of the tolerance (at most 1), or an error naming
/// the graph.
pub fn check_parity(
    agent: &Agent,
    bundle: &VerifiedBundle,
    backend: Backend,
    seed: u64,
) -> Result<f32> {
    let m = &bundle.manifest;
    let rows = GraphRows::for_manifest(m);
    let mut nets = load_networks(backend, bundle, rows)?;
    let (od, ad) = (agent.obs_dim, agent.act_dim);
    let dev = agent.plain_device();
    let gpu = crate::device::configured_gpu(&agent.config);
    let (abs, rel) = if gpu { (2e-3, 1e-3) } else { (1e-4, 1e-4) };
    let mut worst = 0.0f32;
    let mut compare = |graph: String, want: &[f32], got: &[f32]| -> Result<()> {
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            let share = (w - g).abs() / (abs + rel * w.abs());
            // NaN fails too.
            if share.is_nan() || share > 1.0 {
                bail!(
                    "{backend:?} runs the exported {graph} differently from burn: output {i} is {g}, burn's {w} (tolerance {abs} + {rel} × |burn's|)"
                );
            }
            worst = worst.max(share);
        }
        Ok(())
    };
    let host = |t: Tensor<2>| -> Result<Vec<f32>> {
        t.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading burn's output: {e:?}"))
    };
    let mut rng = Rng::new(seed);
    let obs: Vec<f32> = (0..od).map(|_| rng.normal()).collect();
    // The chain starts from N(0, 1) noise, outside [-1, 1] a third of the time (the steps
    // after see clipped actions): a graph that differed only out there passed when the
    // denoiser was fed uniform [-1, 1] values.
    let x: Vec<f32> = (0..rows.denoise * ad).map(|_| rng.normal()).collect();
    let repeat = |n: usize| -> Vec<f32> { obs.iter().copied().cycle().take(od * n).collect() };
    let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.range(-1.0, 1.0)).collect() };

    let steps = agent.config.diffusion.steps;
    for t in [0, steps / 2, steps - 1] {
        let want = host(agent.denoiser_ema().forward(
            tensor2(x.clone(), rows.denoise, ad, dev),
            tensor2(repeat(rows.denoise), rows.denoise, od, dev),
            tensor2(vec![t as f32; rows.denoise], rows.denoise, 1, dev),
        ))?;
        let mut got = vec![0.0; rows.denoise * ad];
        nets.denoise(&obs, &x, t as f32, &mut got)?;
        compare(format!("denoiser at step {t}"), &want, &got)?;
    }
    if let (Some(edit), true) = (agent.edit(), bundle.edit.is_some() && rows.edit > 0) {
        let base = uniform(rows.edit * ad);
        let input: Vec<f32> = base
            .chunks(ad)
            .flat_map(|a| obs.iter().chain(a).copied().collect::<Vec<_>>())
            .collect();
        let (mean, log_std) = edit
            .valid()
            .forward(tensor2(input, rows.edit, od + ad, dev));
        let (mut gm, mut gl) = (vec![0.0; rows.edit * ad], vec![0.0; rows.edit * ad]);
        nets.edit(&obs, &base, &mut gm, &mut gl)?;
        compare("edit policy's mean".into(), &host(mean)?, &gm)?;
        compare("edit policy's log-std".into(), &host(log_std)?, &gl)?;
    }
    if let (Some(critic), true) = (
        agent.critic_target(),
        bundle.critic.is_some() && rows.critic_members > 0,
    ) {
        let acts = uniform(rows.score * ad);
        let input: Vec<f32> = acts
            .chunks(ad)
            .flat_map(|a| obs.iter().chain(a).copied().collect::<Vec<_>>())
            .collect();
        // The last members: a subset other than the first rows of the ensemble.
        let n = m.selection.ensemble_size;
        let subset: Vec<usize> = (0..rows.critic_members).map(|i| n - 1 - i).collect();
        let want =
            host(critic.forward_members(tensor2(input, rows.score, od + ad, dev), Some(&subset)))?;
        let members: Vec<i64> = subset.iter().map(|&i| i as i64).collect();
        let mut got = vec![0.0; members.len() * rows.score];
        nets.critic(&obs, &acts, &members, &mut got)?;
        compare(format!("critic (members {subset:?})"), &want, &got)?;
    }
    Ok(worst)
}

/// The config a bundle's `config_hash` is taken of: the run's, without `device`, which
/// `export --device` or a resume on another machine sets and which the networks do not
/// depend on (the same checkpoint exported anywhere has one hash).
fn hashed_config(c: &Config) -> Config {
    Config {
        device: String::new(),
        ..c.clone()
    }
}

#[cfg(test)]
mod tests {
    /// A fine-tuned run's bundle names its robot data, whichever command exports it:
    /// `export --run` named the source run's demonstrations.
    #[test]
    fn a_fine_tuned_runs_bundle_names_its_robot_data() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Config::preset("tiny").unwrap();
        assert!(
            dataset_provenance(tmp.path(), &c).starts_with("scripted demonstrations"),
            "{}",
            dataset_provenance(tmp.path(), &c)
        );
        std::fs::write(tmp.path().join("finetune.csv"), "update\n").unwrap();
        assert!(dataset_provenance(tmp.path(), &c).starts_with("finetuned on robot data ("));
    }

    use super::*;

    /// Where a checkpoint is exported (`export --device`) does not change the hash;
    /// what was trained does.
    #[test]
    fn the_config_hash_leaves_the_device_out() {
        let c = Config::preset("tiny").unwrap();
        let on_gpu = Config {
            device: "cuda".into(),
            ..c.clone()
        };
        assert_eq!(hashed_config(&c), hashed_config(&on_gpu));
        let mut other = c.clone();
        other.seed += 1;
        assert_ne!(hashed_config(&c), hashed_config(&other));
    }

    /// Live fine-tuning tells a refused check from other export errors through the
    /// error `export_bundle`'s check returns: a mismatch on either runtime comes back as
    /// a `ParityMismatch` under "not exporting OUT" (the test built that error itself,
    /// so a check that returned a plain error passed it).
    #[test]
    fn a_parity_mismatch_is_found_under_its_context() {
        for failing in [Backend::Tract, Backend::Native] {
            let mut seen = Vec::new();
            let e = parity_checked(Path::new("b"), |backend| {
                seen.push(backend);
                if backend == failing {
                    anyhow::bail!("differs")
                }
                Ok(0.0)
            })
            .unwrap_err();
            assert!(e.downcast_ref::<ParityMismatch>().is_some(), "{e:#}");
            assert_eq!(format!("{e:#}"), "not exporting b: differs");
            assert_eq!(seen.last(), Some(&failing));
        }
        let mut seen = Vec::new();
        parity_checked(Path::new("b"), |backend| {
            seen.push(backend);
            Ok(0.0)
        })
        .unwrap();
        assert_eq!(seen, [Backend::Tract, Backend::Native]);
    }
}
