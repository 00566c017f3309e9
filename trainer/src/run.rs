//! Training runs: offline data, pretraining, the online loop, evaluation, metrics and
//! checkpoints that resume exactly.
//!
//! # Outputs (`--out DIR`)
//! - `config.toml`: the resolved configuration.
//! - `metrics.csv`: one row per logging interval of online training (losses, Q values,
//!   entropy, temperature, training-episode success and return, updates per second).
//! - `eval.csv`: success rate, mean return and length of the evaluation episodes, at
//!   the start of online training, every `run.eval_every` environment steps and at the
//!   run's last step.
//! - `checkpoint/`: everything needed to continue the run (networks, optimizer states,
//!   random generator states, online replay buffer, counters).
//!
//! # Checkpoints
//! A checkpoint is taken right after pretraining (step 0) and then at the first episode
//! boundary after every `checkpoint_every` environment steps, so the simulator's state
//! is just the position of its seed stream.
//! It is written to `checkpoint.tmp/` and then renamed over `checkpoint/` (the previous
//! one survives as `checkpoint.old/` until the rename is done), so killing the process
//! at any moment leaves a complete checkpoint. Resuming truncates `metrics.csv` and
//! `eval.csv` to the checkpoint's step and continues with exactly the same updates as an
//! uninterrupted run.

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sim::rng::Rng;
use sim::{EnvConfig, TaskId, make_demonstrator, make_env, record_episode};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::agent::StepBatch;
use crate::agent::{Agent, UpdateMetrics};
use crate::config::{Algo, Config, Task};
use crate::replay::{Batch, Chunker, Normalizer, Replay, draw_mixed, gather_rows};
use crate::robot::{RobotInfo, read_training_dataset};
use shared_model::manifest::MIN_OBS_STD;
use shared_model::{ChunkClock, ChunkPlay, TemporalEnsemble};

/// Success rate and return of evaluation episodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub episodes: usize,
    pub success_rate: f64,
    pub mean_return: f64,
    pub mean_length: f64,
}

/// Runs `episodes` evaluation episodes in lockstep, acting for all unfinished
/// environments in one batch. Episode `i` is seeded from `seed` and `i`.
/// A robot run (`task = "robot"`) has no simulator: that is an error.
pub fn evaluate(agent: &mut Agent, episodes: usize, seed: u64) -> Result<EvalResult> {
    let play = agent.config.chunk_play()?;
    evaluate_played(agent, episodes, seed, play)
}

/// [`evaluate`], playing the chunks by `play` instead of the run's configuration.
pub fn evaluate_played(
    agent: &mut Agent,
    episodes: usize,
    seed: u64,
    play: ChunkPlay,
) -> Result<EvalResult> {
    let task = agent.config.task.require_sim("evaluation")?;
    // The policy's noise comes from a generator of the evaluation's own, not from the
    // one online acting draws from: how often and how long a run evaluates (which a
    // resumed run may change) must not change what it then learns.
    let online_rng = std::mem::replace(&mut agent.act_rng, Rng::new(eval_noise_seed(seed)));
    let result = evaluate_with(task, episodes, seed, play, &mut |obs| {
        Ok(agent.act_eval(obs))
    });
    agent.act_rng = online_rng;
    result
}

/// The seed of an evaluation's policy noise, set apart from its episode seeds (both
/// come from the evaluation's `seed`; the same numbers for both would tie each episode's
/// start to the policy's noise).
pub fn eval_noise_seed(seed: u64) -> u64 {
    seed ^ 0x6e01_5e00_e7a1
}

/// [`evaluate`] with any policy: `act` maps raw observations `[K·O]` to action chunks
/// `[K·H·A]` (`H = play.horizon()`; 1 = one action per observation). A chunk's actions
/// are executed open loop, one per step, and the policy is asked again after
/// `play.replan_every()` steps; with `play.ensemble()`, each step takes the blend of
/// every recent chunk's action for it ([`TemporalEnsemble`]).
/// At most [`EVAL_BATCH`] episodes run at once, one batch after another (their seeds
/// drawn in order from `seed` all the same).
pub fn evaluate_with(
    task: TaskId,
    episodes: usize,
    seed: u64,
    play: ChunkPlay,
    act: &mut dyn FnMut(&[f32]) -> Result<Vec<f32>>,
) -> Result<EvalResult> {
    let mut seeds = Rng::new(seed);
    let (mut successes, mut return_sum, mut length_sum) = (0usize, 0.0f64, 0usize);
    let mut left = episodes;
    while left > 0 {
        let n = left.min(EVAL_BATCH);
        let (s, r, l) = evaluate_batch(task, n, &mut seeds, play, act)?;
        (successes, return_sum, length_sum) = (successes + s, return_sum + r, length_sum + l);
        left -= n;
    }
    let n = episodes.max(1) as f64;
    Ok(EvalResult {
        episodes,
        success_rate: successes as f64 / n,
        mean_return: return_sum / n,
        mean_length: length_sum as f64 / n,
    })
}

/// The most evaluation episodes stepped in one batch: the policy acts for all of them at
/// once (at the `paper` preset, `run.eval_episodes` near its cap of 10^6 in one batch
/// took all the memory, after pretraining and before the first checkpoint). The
/// evaluations the presets and the README use (at most a few hundred) are one batch,
/// as before.
pub const EVAL_BATCH: usize = 1024;

/// `episodes` episodes in lockstep, seeded from `seeds` in order: their successes, and
/// the sums of their returns and lengths.
fn evaluate_batch(
    task: TaskId,
    episodes: usize,
    seeds: &mut Rng,
    play: ChunkPlay,
    act: &mut dyn FnMut(&[f32]) -> Result<Vec<f32>>,
) -> Result<(usize, f64, usize)> {
    let horizon = play.horizon();
    let spec = task.spec();
    let (od, ad) = (spec.obs_dim(), spec.action_dim());
    let cw = horizon * ad;
    let mut envs: Vec<_> = (0..episodes)
        .map(|_| make_env(task, EnvConfig::default()))
        .collect();
    let mut obs = vec![0.0; episodes * od];
    for (e, o) in envs.iter_mut().zip(obs.chunks_exact_mut(od)) {
        e.reset(seeds.next_u64(), o);
    }
    let mut active: Vec<usize> = (0..episodes).collect();
    let (mut returns, mut lengths, mut successes) =
        (vec![0.0f64; episodes], vec![0usize; episodes], 0usize);
    let mut batch = Vec::with_capacity(episodes * od);
    let mut next = vec![0.0; od];
    // Each environment's current chunk; all environments step in lockstep, so they
    // all plan on the same steps.
    let mut chunks = vec![0.0; episodes * cw];
    // With ensembling, each environment's recent chunks (none without).
    let mut ensembles: Vec<TemporalEnsemble> =
        TemporalEnsemble::for_play(&play, ad).map_or(vec![], |e| vec![e; episodes]);
    let mut blended = vec![0.0; ad];
    let mut clock = ChunkClock::new(play);
    let mut step = 0u64;
    while !active.is_empty() {
        let (k, plan) = clock.tick();
        if plan {
            batch.clear();
            for &i in &active {
                batch.extend_from_slice(&obs[i * od..(i + 1) * od]);
            }
            let actions = act(&batch)?;
            anyhow::ensure!(
                actions.len() == active.len() * cw,
                "policy returned {} action values for {} observations (expected {} each)",
                actions.len(),
                active.len(),
                cw
            );
            for (c, &i) in actions.chunks_exact(cw).zip(&active) {
                // Clamped to the policy's range before any blending, as on the robot
                // (the controller's policy clamps what it returns): an edited action
                // can leave [-1, 1] by up to the edit scale.
                let chunk = &mut chunks[i * cw..(i + 1) * cw];
                for (dst, &v) in chunk.iter_mut().zip(c) {
                    *dst = v.clamp(-1.0, 1.0);
                }
                if let Some(e) = ensembles.get_mut(i) {
                    e.add(step, chunk);
                }
            }
        }
        let mut still = Vec::with_capacity(active.len());
        for &i in &active {
            let a = match ensembles.get(i) {
                Some(e) => {
                    // The chunk in progress covers this step: the blend is never empty.
                    e.action(step, &mut blended);
                    &blended[..]
                }
                None => &chunks[i * cw + k * ad..i * cw + (k + 1) * ad],
            };
            let s = envs[i].step(a, &mut next);
            obs[i * od..(i + 1) * od].copy_from_slice(&next);
            returns[i] += s.reward as f64;
            lengths[i] += 1;
            if s.success {
                successes += 1;
            }
            if !s.done() {
                still.push(i);
            }
        }
        active = still;
        step += 1;
    }
    Ok((
        successes,
        returns.iter().sum::<f64>(),
        lengths.iter().sum::<usize>(),
    ))
}

/// A run's offline data.
pub struct OfflineData {
    pub replay: Replay,
    /// Fraction of the demonstrations' episodes that succeeded.
    pub success_rate: f64,
    /// With `task = "robot"`: the robot, as its dataset describes it.
    pub robot: Option<RobotInfo>,
    /// What looked wrong with the data without stopping the run (also on stderr).
    pub warnings: Vec<String>,
}

/// The offline buffer: the configured dataset ([`dataset_offline_data`]), or freshly
/// generated scripted demonstrations of the simulated task (seeded from the run's seed).
pub fn offline_data(config: &Config) -> Result<OfflineData> {
    let data = read_offline_data(config)?;
    // Sizes every controller refuses in a bundle: refused before training, not at export.
    let (od, ad) = (data.replay.obs_dim, data.replay.act_dim);
    // As the export writes it: a policy without a critic acts with one chain sample.
    let num_samples = if config.algo.selects_with_critic() {
        config.expo.num_samples
    } else {
        1
    };
    shared_model::manifest::check_policy_sizes(
        od,
        ad / config.action_horizon,
        config.action_horizon,
        num_samples,
    )
    .map_err(|e| anyhow::anyhow!("the offline data's sizes with this config: {e}"))?;
    config
        .check_graph_weights(od, ad)
        .and_then(|()| config.check_candidate_noise(ad))
        .context("the offline data's sizes with this config")?;
    Ok(data)
}

fn read_offline_data(config: &Config) -> Result<OfflineData> {
    let task = match (config.task, &config.run.dataset) {
        (_, Some(path)) => return dataset_offline_data(config, path),
        (Task::Sim(task), None) => task,
        (Task::Robot, None) => bail!(crate::config::ROBOT_NEEDS_A_DATASET),
    };
    let spec = task.spec();
    let mut env = make_env(task, EnvConfig::default());
    let mut demo = make_demonstrator(task);
    let chunks = config.chunks();
    let mut replay = Replay::new(spec.obs_dim(), chunks.width(spec.action_dim()), 1 << 22);
    let mut chunker = Chunker::new(spec.obs_dim(), spec.action_dim(), chunks);
    let mut seeds = Rng::new(config.seed.wrapping_add(0x0ff1));
    let mut ok = 0;
    for done in 0..config.run.offline_episodes {
        let t = record_episode(env.as_mut(), demo.as_mut(), seeds.next_u64());
        ok += t.is_success() as usize;
        chunker.push_trajectory(&mut replay, &t);
        // The buffer is a ring: past its capacity the first demonstrations would be
        // overwritten, silently, while the success rate still counted them.
        ensure!(
            replay.pushes() <= replay.capacity() as u64,
            "run.offline_episodes = {}: the generated demonstrations of {task} pass the \
             offline buffer's {} transitions after {} episodes; generate fewer",
            config.run.offline_episodes,
            replay.capacity(),
            done + 1
        );
    }
    ensure!(
        !replay.is_empty(),
        "the {} generated demonstrations of {task} made no training transition: with \
         action_horizon {} an episode needs that many steps in a row (or a terminal step) \
         to make one, and the task's episodes last at most {} steps",
        config.run.offline_episodes,
        config.action_horizon,
        spec.horizon
    );
    Ok(OfflineData {
        replay,
        success_rate: ok as f64 / config.run.offline_episodes.max(1) as f64,
        robot: None,
        warnings: vec![],
    })
}

/// An error when the offline data rebuilt now (`now`) is not what the run recorded
/// (`then`; nothing to compare in a checkpoint from before it was recorded): a dataset
/// appended to or replaced since, or a relative `run.dataset` path read from another
/// directory.
pub(crate) fn check_offline_mark(
    config: &Config,
    then: Option<&crate::replay::ReplayMark>,
    now: &crate::replay::ReplayMark,
    otherwise: &str,
) -> Result<()> {
    let Some(then) = then else { return Ok(()) };
    if then == now {
        return Ok(());
    }
    let source = match &config.run.dataset {
        Some(path) => format!("run.dataset = {path:?}"),
        None => "the generated demonstrations".to_string(),
    };
    bail!(
        "the run's offline data ({source}) is not what the run was trained on: it makes \
         {} training transitions now, {} then, and its content differs (fingerprint {}, \
         then {}); restore the dataset the run was trained on (a relative path is read from \
         the current directory), {otherwise}",
        now.transitions,
        then.transitions,
        now.fingerprint,
        then.fingerprint
    )
}

/// `run.dataset` as offline data: checked by [`read_training_dataset`] and against the
/// simulated task's sizes (with a hint for robots), not empty, with a warning when no
/// reward was labelled.
fn dataset_offline_data(config: &Config, path: &str) -> Result<OfflineData> {
    let ds = read_training_dataset(Path::new(path), None)?;
    if let Some(task) = config.task.sim() {
        let spec = task.spec();
        ensure!(
            (ds.info.obs_dim(), ds.info.action_dim()) == (spec.obs_dim(), spec.action_dim()),
            "{path}: dataset has obs dim {} and action dim {}, task {task} expects {} and {} \
             (a robot without a simulator: task = \"robot\")",
            ds.info.obs_dim(),
            ds.info.action_dim(),
            spec.obs_dim(),
            spec.action_dim()
        );
    }
    if let Some(task) = config.task.sim() {
        crate::robot::refuse_sim_variant(path, &ds.info.robot_type, task)?;
        // Same sizes are not the same task (push's and arm-reach's are alike): names
        // the dataset recorded must be the task's. Names made up for a dataset that
        // recorded none (`observation.state.0`, …) say nothing.
        let names = &ds.info.observation_names;
        let made_up = dataset::unnamed_observations(names);
        let ours = task.spec().owned_obs_names();
        if !made_up && let Some(i) = firmware_config::config::first_name_difference(&ours, names) {
            bail!(
                "{path}: observation names differ from task {task}'s, first at [{i}] (`{}` in \
                 the dataset, `{}` in the task): data of another task?",
                names[i],
                ours[i]
            );
        }
        // The task's actions in another order would train the policy to drive other
        // joints, and its bundle names them in the task's (as `finetune --data` refuses).
        let ours = task.spec().owned_action_names();
        let theirs = &ds.info.action_names;
        let whose = format!("task {task}");
        if let Some(e) =
            firmware_config::config::actions_reordered(&ours, &whose, theirs, "the dataset")
        {
            bail!("{path}: {e}");
        }
        // Its bundle says the task's rate (`action.control_hz`), so the data must be
        // at it: 30 fps data was trained on as 20 Hz steps, and the controller's rate
        // check then passed a robot of the wrong rate.
        let steps = format!("task {task} steps");
        if let Some(d) = crate::robot::other_rate(ds.info.fps, task.spec().control_hz, &steps) {
            bail!("{path}: {d}; record at the task's rate");
        }
    }
    ensure!(ds.num_frames() > 0, "{path}: the dataset holds no frames");
    let mut warnings: Vec<String> = no_reward_warning(
        path,
        &ds,
        "the critics learn nothing from these demonstrations, so Q-selection starts \
         uninformed",
        false,
    )
    .into_iter()
    .collect();
    let replay = Replay::from_dataset(&ds, config.chunks());
    let interventions = Replay::interventions_left_out(&ds);
    if interventions > 0 {
        warnings.push(format!(
            "{path}: {interventions} frames marked as interventions are left out (a person \
             moved the arm there; the action recorded did not), as `finetune` leaves them \
             out of robot data"
        ));
    }
    ensure!(
        !replay.is_empty(),
        "{path}: no training transition in {} frames ({interventions} of them marked as \
         interventions, left out): with action_horizon {} an episode needs that many frames \
         in a row (or a terminal step) to make one{}",
        ds.num_frames(),
        config.action_horizon,
        if ds.next_observations_recorded {
            ""
        } else {
            ", and without next.observation.state an episode's last frame makes none unless \
             it is terminal"
        }
    );
    warnings.extend(barely_varying_observations(
        path,
        &ds.info.observation_names,
        &replay,
    ));
    warnings.extend(chunks_cut_by_gaps(
        path,
        &ds,
        config.action_horizon,
        replay.len(),
    ));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(OfflineData {
        replay,
        success_rate: ds.success_rate(),
        robot: (config.task == Task::Robot).then(|| RobotInfo::of(&ds)),
        warnings,
    })
}

/// The warning for a dataset (at `path`) whose every reward is 0, or whose rewards sit
/// on frames training leaves out, saying what training on it does (`consequence`); none
/// for one whose rewards are all trained on, or without frames. LeRobot's
/// own recordings have no `next.reward` column (read as 0). `keep_interventions`: frames
/// marked as interventions are trained on (`finetune --keep-interventions`).
pub(crate) fn no_reward_warning(
    path: &str,
    ds: &dataset::Dataset,
    consequence: &str,
    keep_interventions: bool,
) -> Option<String> {
    let unlabelled = ds.num_frames() > 0
        && ds
            .episodes
            .iter()
            .all(|e| e.rewards.iter().all(|&r| r == 0.0));
    if unlabelled {
        return Some(format!(
            "{path}: every reward is 0 (no `next.reward` column, or no success labelled): \
             {consequence}; `tools dataset label DIR --success LIST --out DIR2` writes a \
             copy with success rewards"
        ));
    }
    // Rewards on frames training leaves out (a last frame with no recorded successor
    // that does not end its episode terminal, a frame marked as an intervention): a
    // sparse success reward sits exactly there, and a dataset with rewards read as
    // labelled when none was trained on. Said when they are a tenth of the reward or
    // more (a dense reward loses only each episode's last frame's share).
    let (mut left_out, mut trained) = (0, 0);
    let (mut left_sum, mut trained_sum) = (0.0f64, 0.0f64);
    for e in &ds.episodes {
        let n = ds.frames_with_successor(e);
        for (i, &r) in e.rewards.iter().enumerate().filter(|(_, r)| **r != 0.0) {
            if Replay::trains_on(e, n, i) || (keep_interventions && i < n) {
                trained += 1;
                trained_sum += f64::from(r.abs());
            } else {
                left_out += 1;
                left_sum += f64::from(r.abs());
            }
        }
    }
    (left_out > 0 && left_sum >= 0.1 * (left_sum + trained_sum)).then(|| {
        format!(
            "{path}: {left_out} of the {} frames with a reward ({:.0}% of the reward) are \
             left out of training: episodes' last frames with no recorded successor (no \
             `next.observation.state`) that do not end their episode terminal, or frames \
             marked as interventions{}; `tools dataset label DIR --success LIST --out DIR2` \
             writes a copy whose successful episodes end terminal (kept)",
            left_out + trained,
            100.0 * left_sum / (left_sum + trained_sum),
            if trained == 0 {
                format!(": {consequence}")
            } else {
                String::new()
            }
        )
    })
}

/// A warning when chunks of `horizon` actions are cut inside episodes: a chunk needs
/// each frame's `next.observation.state` to be the following frame's
/// `observation.state`, to the bit (else the frames are taken for a gap). A recording
/// that reads the sensor twice, or converted the two columns differently, cuts every
/// chunk, and training would see only the shortened chunks of terminal steps.
pub(crate) fn chunks_cut_by_gaps(
    path: &str,
    ds: &dataset::Dataset,
    horizon: usize,
    transitions: usize,
) -> Option<String> {
    if horizon < 2 || !ds.next_observations_recorded {
        return None;
    }
    let od = ds.info.obs_dim();
    let gaps: usize = ds
        .episodes
        .iter()
        .map(|ep| {
            let n = ep.len();
            (1..n)
                .filter(|&t| {
                    let next = &ep.next_observations[(t - 1) * od..t * od];
                    let obs = &ep.observations[t * od..(t + 1) * od];
                    next.iter()
                        .zip(obs)
                        .any(|(a, b)| a.to_bits() != b.to_bits())
                })
                .count()
        })
        .sum();
    (gaps > 0).then(|| {
        format!(
            "{path}: at {gaps} of {} frames, the frame before's next.observation.state is not this frame's observation.state (to the bit), so chunks of {horizon} actions are cut there: {transitions} training transitions from {} frames",
            ds.num_frames(),
            ds.num_frames()
        )
    })
}

/// A warning per observation value that barely varies in the offline data: its std is
/// floored at [`MIN_OBS_STD`] for normalisation, so on the robot a change of 0.01 in it
/// would reach the networks as 10 standard deviations, far outside anything they saw.
fn barely_varying_observations(path: &str, names: &[String], replay: &Replay) -> Vec<String> {
    let fit = Normalizer::fit(replay.observations(), replay.obs_dim);
    fit.std
        .iter()
        .enumerate()
        .filter(|&(_, &s)| s <= MIN_OBS_STD)
        .map(|(i, _)| {
            let name = names.get(i).map_or("?", String::as_str);
            format!(
                "{path}: observation [{i}] `{name}` barely varies in the demonstrations \
                 (std under {MIN_OBS_STD}, normalised with that floor): on the robot a change \
                 of 0.01 in it reaches the networks as 10 standard deviations; leave it out \
                 of the observation, or record demonstrations in which it varies"
            )
        })
        .collect()
}

/// Progress reporting hook (the binary draws a progress bar with it).
pub trait Progress {
    fn phase(&mut self, _name: &str, _total: u64) {}
    fn advance(&mut self, _pos: u64, _message: &str) {}
}

impl Progress for () {}

/// Options of one `train` invocation beyond the config.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from `out/checkpoint` if it exists.
    pub resume: bool,
    /// Take a checkpoint at the first episode end after every this many env steps
    /// (0: only the final one, which every run takes).
    pub checkpoint_every: usize,
    /// Stop the process right after the first checkpoint at or beyond this env step
    /// (tests use it to simulate a kill).
    pub stop_after: Option<usize>,
    /// Log a metrics row every this many env steps.
    pub log_every: usize,
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainSummary {
    pub offline_success_rate: f64,
    pub evals: Vec<(usize, EvalResult)>,
    pub env_steps: usize,
    pub stopped_early: bool,
    pub last_metrics: Option<UpdateMetricsRow>,
    /// Said before training (also printed).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One `metrics.csv` row.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UpdateMetricsRow {
    pub step: usize,
    /// Means over the logging window.
    #[serde(flatten)]
    pub metrics: UpdateMetrics,
    pub train_success_rate: f32,
    pub train_return: f32,
    /// Critic updates per second over the window (a `bc` run's denoiser updates: it
    /// has no critic): acting, environment steps and updates (its evaluations and
    /// checkpoints left out since 2026-12-06).
    pub updates_per_s: f32,
}

/// The updates of one training step that `updates_per_s` counts: the critic's `utd`,
/// or a `bc` run's one denoiser update (it was counted as `utd`, twice its rate at the
/// `cpu` preset).
fn counted_updates_per_step(config: &Config) -> usize {
    if config.algo == Algo::Bc {
        1
    } else {
        config.optim.utd
    }
}

/// The share of each online step's rows drawn from the offline data:
/// `optim.offline_fraction`, but all of them for `bc`, which imitates the
/// demonstrations. Its online steps drew half their rows from its own rollouts (mostly
/// failures where the reward is sparse) and imitated those too.
fn online_offline_fraction(config: &Config) -> f32 {
    if config.algo == Algo::Bc {
        1.0
    } else {
        config.optim.offline_fraction
    }
}

const METRICS_HEADER: &str = "step,critic_loss,q_mean,target_q_mean,denoiser_loss,policy_q,entropy,temperature,train_success_rate,train_return,updates_per_s";
const EVAL_HEADER: &str = "step,success_rate,mean_return,mean_length,episodes";
/// `finetune.csv` and `pretrain.csv`: learner metrics by update (means since the row
/// before) and critic updates per second.
pub(crate) const UPDATES_HEADER: &str = "update,critic_loss,q_mean,target_q_mean,denoiser_loss,policy_q,entropy,temperature,updates_per_s";

/// Counters and generator states saved in `checkpoint/state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunState {
    pub(crate) env_step: usize,
    pub(crate) env_seeds: [u64; 4],
    /// Seed of the episode that starts right after the checkpoint.
    pub(crate) episode_seed: u64,
    pub(crate) batch_rng: [u64; 4],
    pub(crate) train_rng: [u64; 4],
    pub(crate) act_rng: [u64; 4],
    pub(crate) denoiser_updates: usize,
    pub(crate) normalizer: Normalizer,
    pub(crate) offline_success_rate: f64,
    pub(crate) evals: Vec<(usize, EvalResult)>,
    pub(crate) episode_stats: (usize, usize, f64),
    pub(crate) config_toml: String,
    /// Updates done by `trainer finetune` in this run directory (0 for `train`).
    #[serde(default)]
    pub(crate) finetune_updates: usize,
    /// A robot run's robot (`task = "robot"`), from its dataset: the networks' dimensions
    /// and what export writes into the manifest.
    #[serde(default)]
    pub(crate) robot: Option<RobotInfo>,
    /// The offline data the run was trained on ([`Replay::mark`]); `None` in checkpoints
    /// written before it was recorded.
    #[serde(default)]
    pub(crate) offline: Option<crate::replay::ReplayMark>,
    /// The metric sums of the steps since the last `metrics.csv` row (a checkpoint may
    /// fall between two rows); `None` in checkpoints written on a row.
    #[serde(default)]
    pub(crate) metrics_window: Option<(crate::agent::UpdateMetrics, usize)>,
    /// The same for `finetune.csv` (a finetune's checkpoint between two of its rows):
    /// kept apart, so that `train --resume` on a fine-tuned run does not add a
    /// finetune's sums to its first `metrics.csv` row. (Checkpoints written before it
    /// existed held a finetune's window in `metrics_window`.)
    #[serde(default)]
    pub(crate) finetune_metrics_window: Option<(crate::agent::UpdateMetrics, usize)>,
    /// Transitions robots streamed to `finetune --listen` sessions of this run up to this
    /// checkpoint, unusable ones included, and of the run it was fine-tuned from (whose
    /// replay it continues); 0 in checkpoints written before it was recorded. A resumed
    /// session's bundles count from it.
    #[serde(default)]
    pub(crate) live_streamed: usize,
    /// For each stream log in `OUT/uplink/` (by file name), how far the checkpoint's
    /// replay holds its records: a `--listen` session that continues this replay
    /// (`--resume`, or a new run `--from` here, which copies the logs) takes the rest
    /// from the log. `None` in checkpoints written before it was recorded (each log then
    /// counts as held whole, as such a run took it) and in runs that never listened.
    #[serde(default)]
    pub(crate) live_logs: Option<std::collections::BTreeMap<String, crate::live::LogPosition>>,
    /// Updates owed to robot transitions already in the replay (one per transition).
    #[serde(default)]
    pub(crate) live_owed: usize,
}

impl RunState {
    /// Everything besides networks and buffers that a resumed run needs.
    fn capture(
        agent: &Agent,
        config: &Config,
        env_step: usize,
        (env_seeds, episode_seed, batch_rng): (&Rng, u64, &Rng),
        (offline_success_rate, offline): (f64, &crate::replay::ReplayMark),
        evals: &[(usize, EvalResult)],
        episode_stats: (usize, usize, f64),
    ) -> Self {
        RunState {
            env_step,
            env_seeds: env_seeds.state(),
            episode_seed,
            batch_rng: batch_rng.state(),
            train_rng: agent.train_rng.state(),
            act_rng: agent.act_rng.state(),
            denoiser_updates: agent.denoiser_updates,
            normalizer: agent.normalizer.clone(),
            offline_success_rate,
            evals: evals.to_vec(),
            episode_stats,
            config_toml: config.to_toml(),
            finetune_updates: 0,
            robot: agent.robot.clone(),
            offline: Some(offline.clone()),
            metrics_window: None,
            finetune_metrics_window: None,
            live_streamed: 0,
            live_logs: None,
            live_owed: 0,
        }
    }

    /// Where the run stands, as one number for [`device_normals_seed`]: never 0 (a fresh
    /// run's), and another at every checkpoint of a run. Its denoiser updates alone were
    /// 0 at every checkpoint of an `rlpd` run (which has no denoiser), so each resume
    /// drew the start's device noise again; the step, the finetune's updates and the
    /// batch generator (which every update and every algorithm advances) tell them apart.
    pub(crate) fn continuation(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let counts = [
            self.env_step as u64,
            self.denoiser_updates as u64,
            self.finetune_updates as u64,
        ];
        for x in counts.into_iter().chain(self.batch_rng) {
            h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
        }
        h.max(1)
    }

    /// `finetune`'s counters of the run this one resumed: the checkpoints of `train
    /// --resume` on a fine-tuned run keep them.
    fn with_finetune_counters(mut self, of: &FinetuneCounters) -> Self {
        self.finetune_updates = of.updates;
        self.live_streamed = of.streamed;
        self.live_logs = of.logs.clone();
        self.live_owed = of.owed;
        self.finetune_metrics_window = of.window.clone();
        self
    }
}

/// What [`RunState`] holds of `finetune` (updates, streamed transitions, where its
/// replay is in the stream logs, updates owed, the sums since its last `finetune.csv`
/// row).
#[derive(Clone, Default)]
struct FinetuneCounters {
    updates: usize,
    streamed: usize,
    logs: Option<std::collections::BTreeMap<String, crate::live::LogPosition>>,
    owed: usize,
    window: Option<(crate::agent::UpdateMetrics, usize)>,
}

/// The configured device (`device` in the config, [`crate::device`]); on CPU burn's
/// `flex`, measured fastest (BENCHMARKS.md).
pub fn device(config: &Config) -> Result<Device> {
    let spec = crate::device::parse(&config.device)?;
    spec.check_present()?;
    let device = spec.device();
    if config.compute.replay == crate::config::ReplayPlacement::Device && !spec.is_gpu() {
        eprintln!(
            "warning: compute.replay = \"device\" on the CPU: every new transition copies the \
             online buffer's tables (burn-flex's slice_assign copies), about 0.14 s per step \
             at the cpu preset; \"host\" gives the same results without it"
        );
    }
    seed_device_normals(config, &device, 0);
    Ok(device)
}

/// The seed of the backend's generator with `compute.normals = "device"`, for a run
/// continued from `continuation` ([`RunState::continuation`]; 0 at the start): `seed`
/// at the start, and another one for each point a run is continued from, so that a
/// resumed or fine-tuned run does not draw its start's noise again (the generator's
/// state is not checkpointed).
pub fn device_normals_seed(config: &Config, continuation: u64) -> u64 {
    config.seed ^ 0xde71ce ^ continuation.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Seeds the backend's generator when `compute.normals = "device"`
/// ([`device_normals_seed`]).
fn seed_device_normals(config: &Config, device: &Device, continuation: u64) {
    if config.compute.normals == crate::config::NormalSource::Device {
        device.seed(device_normals_seed(config, continuation));
    }
}

/// Pretrain → online training → evaluation, writing outputs under `out`.
pub fn train(
    config: &Config,
    out: &Path,
    opts: &TrainOptions,
    progress: &mut dyn Progress,
) -> Result<TrainSummary> {
    if config.task == Task::Robot {
        ensure!(
            config.run.online_steps == 0,
            "task = \"robot\" has no simulator to take online steps in (run.online_steps = {}): \
             pretrain it (`trainer pretrain`), export a bundle, and improve it on the robot \
             (`controller run --uplink` with `trainer finetune --listen`, or `trainer finetune --data`)",
            config.run.online_steps
        );
    }
    crate::device::check_trains_on(config)?;
    dataset::create_dir_durably(out).with_context(|| format!("creating {}", out.display()))?;
    // Taken before what it holds is looked at: a writer finishing in between left a
    // run the look had not seen.
    let _writing = lock_run_dir(out)?;
    if !opts.resume {
        ensure_no_run_in(out)?;
    }
    // (Without --resume, `ensure_no_run_in` has refused any checkpoint, damaged or not.)
    let ckpt_dir = checkpoint_to_resume(out)?;
    let resumed = opts.resume && ckpt_dir.is_some();
    if opts.resume && !resumed {
        refuse_logs_of_another_command(out, "train")?;
        eprintln!(
            "note: --resume: {} holds no checkpoint yet; starting a new run there",
            out.display()
        );
    }

    progress.phase("offline data", 1);
    let OfflineData {
        replay: offline,
        success_rate: offline_rate,
        robot,
        ..
    } = offline_data(config)?;
    let (od, ad) = (offline.obs_dim, offline.act_dim);
    let offline_mark = offline.mark();
    let mut online = Replay::new(od, ad, ONLINE_CAPACITY);
    let normalizer = Normalizer::fit(offline.observations(), od);
    let backend = device(config)?;
    let mut agent = Agent::new(
        config.clone(),
        od,
        ad / config.action_horizon,
        normalizer,
        &backend,
    );
    agent.robot = robot;
    let mut summary = TrainSummary {
        offline_success_rate: offline_rate,
        ..Default::default()
    };
    // A new run on a robot's recording (`controller run --out DIR`'s `DIR/dataset`)
    // whose log holds episodes it lacks.
    if !resumed && let Some(d) = &config.run.dataset {
        for w in crate::finetune::unsaved_robot_data(&[PathBuf::from(d)], None) {
            eprintln!("warning: {w}");
            summary.warnings.push(w);
        }
    }
    let mut env_seeds = Rng::new(config.seed.wrapping_add(0xe4));
    let mut batch_rng = Rng::new(config.seed.wrapping_add(0xba7c));
    let mut start_step = 0;
    // `finetune`'s counters of a resumed run ([`RunState::with_finetune_counters`]).
    let mut finetune_counters = FinetuneCounters::default();
    let mut episode_seed = None;
    let (mut episodes_done, mut successes, mut return_sum) = (0usize, 0usize, 0.0f64);
    let mut batch = Batch::default();
    // Each environment step's rows of the replay buffers (`draw_mixed`).
    let mut rows = Vec::new();

    if resumed {
        let dir = ckpt_dir.unwrap();
        let state: RunState = serde_json::from_str(
            &std::fs::read_to_string(dir.join("state.json"))
                .with_context(|| format!("{}: reading checkpoint", dir.display()))?,
        )
        .with_context(|| format!("{}: bad checkpoint state", dir.join("state.json").display()))?;
        if let Some((key, then, now)) =
            difference_except_length(&state.config_toml, config, ComputeMay::KeepResults)
                .with_context(|| format!("{}", dir.join("state.json").display()))?
        {
            bail!(
                "{}: checkpoint was written with a different configuration: `{key}` was {then}, is {now} now; resume with the same config (only run.online_steps, run.eval_every, run.eval_episodes, device and compute.threads, block_chains, replay and graph may change): `--config {}` resumes with the settings it was written with (a run written by an older trainer has the defaults of its day)",
                dir.display(),
                out.join("config.toml").display()
            );
        }
        check_offline_mark(
            config,
            state.offline.as_ref(),
            &offline_mark,
            "or start a new run",
        )?;
        // As every other load of a checkpoint (`load_checkpoint_once`): an empty
        // normalizer panicked at the first action, non-finite weights trained on until
        // the divergence check blamed the learning rates.
        check_normalizer(&state, od, &dir.join("state.json"))?;
        check_generators(&state, &dir.join("state.json"))?;
        agent.load(&dir)?;
        check_loaded_networks(&agent, &dir)?;
        seed_device_normals(config, &backend, state.continuation());
        agent.normalizer = state.normalizer;
        agent.train_rng = Rng::from_state(state.train_rng);
        agent.act_rng = Rng::from_state(state.act_rng);
        agent.denoiser_updates = state.denoiser_updates;
        online = load_replay(&dir.join("online.bin"), od, ad)?;
        env_seeds = Rng::from_state(state.env_seeds);
        episode_seed = Some(state.episode_seed);
        batch_rng = Rng::from_state(state.batch_rng);
        start_step = state.env_step;
        // A run is not shortened: its checkpoint, config.toml and eval.csv would say
        // different lengths (and a study would take it for finished at the shorter one).
        // Nor below the length it was written for: a resume that forgot the
        // `--set run.online_steps` of a longer run ended it at the preset's length.
        if let Ok(saved) = toml::from_str::<Config>(&state.config_toml) {
            let n = saved.run.online_steps;
            ensure!(
                config.run.online_steps >= n,
                "{}: --resume: the run was written for run.online_steps = {n}, and {} \
                 would shorten it: give at least {n} (`--set run.online_steps={n}`), or \
                 start a new run",
                out.display(),
                config.run.online_steps
            );
        }
        ensure!(
            start_step <= config.run.online_steps,
            "{}: --resume: the run holds {start_step} environment steps, more than \
             run.online_steps = {}: a run cannot be shortened (give at least {start_step}, or \
             start a new run)",
            out.display(),
            config.run.online_steps
        );
        // Kept through this run's checkpoints: a `finetune` continued here, or one
        // resumed later, goes on from its own count.
        finetune_counters = FinetuneCounters {
            updates: state.finetune_updates,
            streamed: state.live_streamed,
            logs: state.live_logs.clone(),
            owed: state.live_owed,
            window: state.finetune_metrics_window.clone(),
        };
        if start_step >= config.run.online_steps {
            eprintln!(
                "note: --resume: {} already holds {start_step} environment steps, run.online_steps is {}: nothing left to train (raise run.online_steps to extend it)",
                out.display(),
                config.run.online_steps
            );
        }
        summary.evals = state.evals;
        (episodes_done, successes, return_sum) = state.episode_stats;
        // (A finetune's own window, of `finetune.csv` rows, is in the other field.)
        if let Some(window) = state.metrics_window {
            agent.resume_metrics(window);
        }
        // What may differ on resume (the run's length, evaluation, device) is now what
        // `config.toml` says, for `eval`, `export` and a study's check of finished runs;
        // not for a run with nothing left to train, whose evaluations stay those of its
        // settings (its `eval.csv` rows were not made with new ones).
        if start_step < config.run.online_steps {
            replace_file(&out.join("config.toml"), config.to_toml().as_bytes())?;
        }
        // A finetune run continued online has no rows of `train`'s yet.
        for (file, header) in [("metrics.csv", METRICS_HEADER), ("eval.csv", EVAL_HEADER)] {
            let path = out.join(file);
            if path.exists() {
                truncate_csv(&path, start_step)?;
            } else {
                write_header(&path, header)?;
            }
        }
    } else {
        let path = out.join("config.toml");
        std::fs::write(&path, config.to_toml())
            .with_context(|| format!("writing {}", path.display()))?;
        write_header(&out.join("metrics.csv"), METRICS_HEADER)?;
        write_header(&out.join("eval.csv"), EVAL_HEADER)?;
        let log = (out.join("pretrain.csv"), opts.log_every.max(1));
        pretrain(
            &mut agent,
            &offline,
            &mut batch_rng,
            &mut batch,
            &log,
            progress,
        )?;
        // A robot run has nothing to evaluate in: its eval.csv stays empty.
        if config.task.sim().is_some() {
            let e = evaluate(&mut agent, config.run.eval_episodes, config.seed ^ 0xe7a1)?;
            append_eval(out, 0, &e)?;
            summary.evals.push((0, e));
        }
    }

    // Online training.
    let total = config.run.online_steps;
    progress.phase("online", total as u64);
    // None for a robot run, which has no online steps (checked above).
    let mut env = config
        .task
        .sim()
        .map(|task| make_env(task, EnvConfig::default()));
    let mut obs = vec![0.0; od];
    let mut next = vec![0.0; od];
    let mut episode_seed = episode_seed.unwrap_or_else(|| env_seeds.next_u64());
    if let Some(env) = env.as_mut() {
        env.reset(episode_seed, &mut obs);
    }
    // A fresh run's first checkpoint comes right after pretraining (and the step-0
    // evaluation): otherwise a run killed in its first `checkpoint_every` online steps
    // would lose its pretraining (50,000 updates at the `paper` preset) and start over.
    // A checkpoint's state at `step`: the run's own parts, and the step's generators,
    // evaluations and training-episode sums.
    let capture = |agent: &Agent,
                   step: usize,
                   rngs: (&Rng, u64, &Rng),
                   evals: &[(usize, EvalResult)],
                   episode_stats: (usize, usize, f64)| {
        RunState::capture(
            agent,
            config,
            step,
            rngs,
            (offline_rate, &offline_mark),
            evals,
            episode_stats,
        )
        .with_finetune_counters(&finetune_counters)
    };
    if !resumed && total > 0 && opts.checkpoint_every > 0 {
        let rngs = (&env_seeds, episode_seed, &batch_rng);
        let state = capture(&agent, 0, rngs, &summary.evals, (0, 0, 0.0));
        write_checkpoint(out, &agent, &online, &state)?;
        if opts.stop_after == Some(0) {
            summary.stopped_early = true;
            return Ok(summary);
        }
    }
    let mut ep_return = 0.0f64;
    // Action chunks: the policy plans a chunk at each episode's start and every
    // `replan_every` steps (`ChunkPlay`); the chunker turns the steps taken into chunk
    // transitions.
    let play = config.chunk_play()?;
    let step_ad = ad / play.horizon();
    let mut chunker = Chunker::new(od, step_ad, config.chunks());
    let mut chunk = vec![0.0; ad];
    let mut chunk_clock = ChunkClock::new(play);
    let log_every = opts.log_every.max(1);
    let mut last_ckpt = start_step;
    let mut clock = Instant::now();
    for step in start_step..total {
        let env = env
            .as_mut()
            .expect("only simulated tasks take online steps");
        let (k, plan) = chunk_clock.tick();
        if plan {
            chunk = agent.act(&obs);
        }
        let action = &chunk[k * step_ad..(k + 1) * step_ad];
        let s = env.step(action, &mut next);
        let episode_end = s.done();
        chunker.push(
            &mut online,
            &obs,
            action,
            s.reward,
            &next,
            s.terminated,
            episode_end,
        );
        ep_return += s.reward as f64;
        if episode_end {
            chunk_clock.restart();
            episodes_done += 1;
            successes += s.success as usize;
            return_sum += ep_return;
            ep_return = 0.0;
            episode_seed = env_seeds.next_u64();
            env.reset(episode_seed, &mut obs);
        } else {
            obs.copy_from_slice(&next);
        }
        let sampling = Instant::now();
        draw_mixed(
            &mut batch_rng,
            &offline,
            &online,
            online_offline_fraction(config),
            config.optim.utd,
            config.optim.batch_size,
            &mut rows,
        );
        agent.times.batch += sampling.elapsed().as_secs_f64();
        agent.train_step(StepBatch::Drawn {
            offline: &offline,
            online: &online,
            rows: &rows,
        })?;
        let done_steps = step + 1;
        // A row every `log_every` steps, and one for the last steps of the run.
        if done_steps % log_every == 0 || done_steps == total {
            let window = MetricsWindow::take(&mut agent);
            let secs = clock.elapsed().as_secs_f64().max(1e-9);
            let row = window.row(
                done_steps,
                episodes_done,
                successes,
                return_sum,
                (window.timed * counted_updates_per_step(config)) as f64 / secs,
            );
            append_metrics(out, &row)?;
            ensure_finite(&row.metrics, &out.join("metrics.csv"), done_steps)?;
            progress.advance(
                done_steps as u64,
                &format!(
                    "critic {:.4}  q {:.3}",
                    row.metrics.critic_loss, row.metrics.q_mean
                ),
            );
            summary.last_metrics = Some(row);
            (episodes_done, successes, return_sum) = (0, 0, 0.0);
            clock = Instant::now();
        }
        if config.run.eval_every > 0 && done_steps % config.run.eval_every == 0
            || done_steps == total
        {
            let paused = Instant::now();
            let e = evaluate(
                &mut agent,
                config.run.eval_episodes,
                config.seed ^ 0xe7a1 ^ done_steps as u64,
            )?;
            append_eval(out, done_steps, &e)?;
            summary.evals.push((done_steps, e));
            // The row's `updates_per_s` times training, not evaluations.
            clock += paused.elapsed();
        }
        // Checkpoint at an episode boundary once enough steps have passed, after
        // logging and evaluation so that a resumed run continues from a clean slate.
        // Between two rows, the row's metric sums so far go into the checkpoint (and back
        // into the agent), so that the next row is the same with or without it.
        if episode_end
            && opts.checkpoint_every > 0
            && done_steps - last_ckpt >= opts.checkpoint_every
        {
            let rngs = (&env_seeds, episode_seed, &batch_rng);
            let stats = (episodes_done, successes, return_sum);
            let mut state = capture(&agent, done_steps, rngs, &summary.evals, stats);
            if done_steps % log_every != 0 {
                let window = agent.take_metrics();
                agent.restore_metrics(window.clone());
                state.metrics_window = Some(window);
            }
            let paused = Instant::now();
            write_checkpoint(out, &agent, &online, &state)?;
            clock += paused.elapsed();
            last_ckpt = done_steps;
            if opts.stop_after.is_some_and(|s| done_steps >= s) {
                summary.env_steps = done_steps;
                summary.stopped_early = true;
                return Ok(summary);
            }
        }
    }
    summary.env_steps = total;
    // Final checkpoint: `trainer eval` loads it, and `train --resume` with a larger
    // `run.online_steps` continues from it.
    // (An extended run restarts the episode that was in progress here.)
    let rngs = (&env_seeds, episode_seed, &batch_rng);
    let state = capture(
        &agent,
        total.max(start_step),
        rngs,
        &summary.evals,
        (0, 0, 0.0),
    );
    if start_step < total || !resumed {
        write_checkpoint(out, &agent, &online, &state)?;
    }
    if std::env::var_os("EXPO_PROFILE").is_some() {
        eprintln!("stage seconds: {:?}", agent.times);
    }
    Ok(summary)
}

/// Which of the `compute` settings a run loaded again may have changed
/// ([`difference_except_length`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ComputeMay {
    /// Any: loading networks to evaluate, export or fine-tune from does not depend on
    /// them.
    Differ,
    /// Those that compute the same bits (`threads`, `block_chains`, `replay`, `graph`):
    /// a resumed run continues exactly, and a finished one is the one asked for. The
    /// others change the numbers a run computes: the candidate schedule and the noise
    /// source its random streams, the chains' precision its TD targets, the optimizer
    /// its state's format.
    KeepResults,
}

/// The first setting (dotted key, saved value, current value) in which `config`
/// differs from the checkpoint's, besides those a resumed run may change: its length,
/// its evaluations, its device (trained on a GPU, resumed on a CPU) and the `compute`
/// settings `compute` allows.
pub(crate) fn difference_except_length(
    saved: &str,
    config: &Config,
    compute: ComputeMay,
) -> Result<Option<(String, String, String)>> {
    let mut old: Config = toml::from_str(saved).context("its saved configuration")?;
    old.run.online_steps = config.run.online_steps;
    old.run.eval_every = config.run.eval_every;
    old.run.eval_episodes = config.run.eval_episodes;
    old.device = config.device.clone();
    match compute {
        ComputeMay::Differ => old.compute = config.compute.clone(),
        ComputeMay::KeepResults => {
            let (o, c) = (&mut old.compute, &config.compute);
            o.threads = c.threads;
            o.block_chains = c.block_chains;
            o.replay = c.replay;
            o.graph = c.graph;
        }
    }
    if old == *config {
        return Ok(None);
    }
    let (old, new) = (toml::Value::try_from(&old)?, toml::Value::try_from(config)?);
    Ok(Some(first_difference(&old, &new, "").unwrap_or_else(
        || {
            // Equal as TOML, unequal as configs (a float that TOML prints alike).
            ("(a value)".into(), "different".into(), "different".into())
        },
    )))
}

/// Where two TOML values first differ: the dotted key and both values.
fn first_difference(
    a: &toml::Value,
    b: &toml::Value,
    at: &str,
) -> Option<(String, String, String)> {
    let key = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let missing = toml::Value::String("(not set)".into());
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&missing),
                    y.get(k).unwrap_or(&missing),
                    &key(k),
                )
            })
        }
        _ if a == b => None,
        _ => Some((at.to_string(), a.to_string(), b.to_string())),
    }
}

/// Whether a run directory holds a complete checkpoint.
pub fn checkpoint_dir_exists(run: &Path) -> bool {
    checkpoint_dir(run).is_some()
}

/// Environment steps of a run's latest checkpoint.
pub fn checkpoint_env_step(run: &Path) -> Result<usize> {
    let dir =
        checkpoint_to_resume(run)?.with_context(|| format!("{}: no checkpoint", run.display()))?;
    let path = dir.join("state.json");
    let state: RunState = std::fs::read_to_string(&path)
        .map_err(anyhow::Error::from)
        .and_then(|text| Ok(serde_json::from_str(&text)?))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(state.env_step)
}

/// Everything a run directory's newest checkpoint holds: the agent with its generator
/// states and counters, the checkpoint state and the online replay.
pub(crate) fn load_run(run: &Path, device: Option<&str>) -> Result<(Agent, RunState, Replay)> {
    let (mut agent, state, _, online) = load_checkpoint(run, device, true)?;
    agent.train_rng = Rng::from_state(state.train_rng);
    agent.act_rng = Rng::from_state(state.act_rng);
    Ok((agent, state, online.expect("asked for")))
}

/// The online replay of a run directory's newest checkpoint (loaded on the CPU).
pub fn load_online(run: &Path) -> Result<Replay> {
    Ok(load_run(run, Some("cpu"))?.2)
}

/// Loads a trained agent from a run directory (its `config.toml` and `checkpoint/`).
pub fn load_agent(run: &Path) -> Result<Agent> {
    load_agent_on(run, None)
}

/// [`load_agent`] on `device` (`cpu`, `cuda:1`, …) instead of the one the run's
/// `config.toml` names: a run trained on a GPU, evaluated or exported on a machine
/// without one.
pub fn load_agent_on(run: &Path, device: Option<&str>) -> Result<Agent> {
    Ok(load_checkpoint(run, device, false)?.0)
}

/// [`load_agent_on`] with the checkpoint's environment steps, read with the agent (a
/// separate [`checkpoint_env_step`] could read the next checkpoint of a run still
/// training).
pub fn load_agent_at(run: &Path, device: Option<&str>) -> Result<(Agent, usize)> {
    let (agent, state, _, _) = load_checkpoint(run, device, false)?;
    Ok((agent, state.env_step))
}

/// What [`load_checkpoint`] reads: the agent, the checkpoint's state and directory, and
/// its online replay when asked for.
type LoadedCheckpoint = (Agent, RunState, PathBuf, Option<Replay>);

/// Reads of a checkpoint that its run replaces meanwhile, before one is taken whole.
const CHECKPOINT_READS: u32 = 8;

/// The agent's networks and optimizers, the checkpoint state, the checkpoint's
/// directory and, with `replay`, its online replay; on `device` when given, else on the
/// run's.
///
/// `eval --run` and `export --run` may read a run that is still training, whose next
/// checkpoint then replaces this one file by file through two renames: the networks
/// could come from two checkpoints, or one go missing between the renames. So the
/// checkpoint's `state.json` (its generator states and counters differ from one
/// checkpoint to the next) is read before and after, and the read is done again, up to
/// [`CHECKPOINT_READS`] times, until they are the same. A failure with the same
/// `state.json` on both sides is the checkpoint's own, and is returned at once.
fn load_checkpoint(run: &Path, on: Option<&str>, replay: bool) -> Result<LoadedCheckpoint> {
    // Where the newest checkpoint is (`checkpoint`, or `checkpoint.old` between the
    // renames) and its state.
    let state_of = |dir: Option<PathBuf>| -> Option<(PathBuf, Vec<u8>)> {
        let dir = dir?;
        let state = std::fs::read(dir.join("state.json")).ok()?;
        Some((dir, state))
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = state_of(checkpoint_dir(run));
        let read = load_checkpoint_once(run, on).and_then(|(agent, state, dir)| {
            let online = replay
                .then(|| load_replay(&dir.join("online.bin"), agent.obs_dim, agent.act_dim))
                .transpose()?;
            Ok((agent, state, dir, online))
        });
        let after = match &read {
            Ok((_, _, dir, _)) => state_of(Some(dir.clone())),
            Err(_) => state_of(checkpoint_dir(run)),
        };
        if before == after {
            return read;
        }
        if attempt >= CHECKPOINT_READS {
            let changed = format!(
                "{}: its checkpoint changed while it was read, {attempt} times (is the run \
                 still writing one?)",
                run.display()
            );
            return Err(match read {
                Ok(_) => anyhow::anyhow!(changed),
                Err(e) => e.context(changed),
            });
        }
        // The run is writing its next checkpoint: after a pause, read that one.
        std::thread::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)));
    }
}

fn load_checkpoint_once(run: &Path, on: Option<&str>) -> Result<(Agent, RunState, PathBuf)> {
    let dir =
        checkpoint_to_resume(run)?.with_context(|| format!("{}: no checkpoint", run.display()))?;
    let cfg_path = run.join("config.toml");
    let mut config: Config = toml::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{}: invalid config", cfg_path.display()))?;
    if let Some(d) = on {
        config.device = d.to_string();
    }
    // A hand-edited config.toml is checked as a resolved one is.
    config
        .validate()
        .with_context(|| format!("{}: invalid config", cfg_path.display()))?;
    let state_path = dir.join("state.json");
    let state: RunState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("{}: cannot read", state_path.display()))?,
    )
    .with_context(|| format!("{}: bad checkpoint state", state_path.display()))?;
    // The networks are built from config.toml: an edited one would evaluate or
    // continue the checkpoint as something it is not (another task of the same sizes).
    if let Some((key, then, now)) =
        difference_except_length(&state.config_toml, &config, ComputeMay::Differ)
            .with_context(|| format!("{}", state_path.display()))?
    {
        bail!(
            "{}: `{key}` is {now}, but the checkpoint was written with {then}",
            cfg_path.display()
        );
    }
    let (od, ad) = match &state.robot {
        Some(r) => (r.obs_dim(), r.act_dim()),
        None => {
            let Some(task) = config.task.sim() else {
                bail!(
                    "{}: a robot run's checkpoint without its robot's description (`robot`)",
                    dir.join("state.json").display()
                );
            };
            (task.spec().obs_dim(), task.spec().action_dim())
        }
    };
    check_normalizer(&state, od, &state_path)?;
    check_generators(&state, &state_path)?;
    let device = device(&config)?;
    seed_device_normals(&config, &device, state.continuation());
    let mut agent = Agent::new(config, od, ad, state.normalizer.clone(), &device);
    agent.robot = state.robot.clone();
    // The bundle's provenance reports it, and the denoiser's learning-rate decay uses it.
    agent.denoiser_updates = state.denoiser_updates;
    agent.load(&dir)?;
    check_loaded_networks(&agent, &dir)?;
    Ok((agent, state, dir))
}

/// The generator states in `state.json` are xoshiro256++ states, and an all-zero one
/// draws 0 forever (every uniform draw 0, every normal the same 8.6): refused by name.
fn check_generators(state: &RunState, state_path: &Path) -> Result<()> {
    for (name, s) in [
        ("env_seeds", state.env_seeds),
        ("batch_rng", state.batch_rng),
        ("train_rng", state.train_rng),
        ("act_rng", state.act_rng),
    ] {
        ensure!(
            s != [0; 4],
            "{}: generator state `{name}` is all zeros (damaged?): it would draw the same \
             value forever",
            state_path.display()
        );
    }
    Ok(())
}

/// A checkpoint's observation normalizer fits `od` observations and can divide.
fn check_normalizer(state: &RunState, od: usize, state_path: &Path) -> Result<()> {
    let n = &state.normalizer;
    ensure!(
        n.mean.len() == od && n.std.len() == od,
        "{}: the observation normalizer must hold {od} means and {od} deviations (found {} \
         and {})",
        state_path.display(),
        n.mean.len(),
        n.std.len()
    );
    // The first value that cannot be, named (the lengths alone said nothing).
    let bad_mean = n.mean.iter().position(|x| !x.is_finite());
    // At least the least a bundle may carry: one under it exported and published, and
    // every controller refused it.
    let bad_std = n
        .std
        .iter()
        .position(|s| !(s.is_finite() && *s >= MIN_OBS_STD));
    if let Some(i) = bad_mean {
        bail!(
            "{}: the observation normalizer's mean[{i}] is {} (finite expected)",
            state_path.display(),
            n.mean[i]
        );
    }
    if let Some(i) = bad_std {
        bail!(
            "{}: the observation normalizer's std[{i}] is {} (finite and at least \
             {MIN_OBS_STD} expected, the least a bundle may carry)",
            state_path.display(),
            n.std[i]
        );
    }
    Ok(())
}

/// Networks loaded from checkpoint `dir` are finite: nothing can act or train from
/// others, and the export would refuse them too.
fn check_loaded_networks(agent: &Agent, dir: &Path) -> Result<()> {
    if let Some(what) = agent.first_non_finite() {
        bail!(
            "{}: the checkpoint holds {what} (training diverged, or the files are damaged)",
            dir.display()
        );
    }
    Ok(())
}

/// Slots of a run's online replay buffer (the oldest transitions are overwritten after
/// this many environment steps).
pub const ONLINE_CAPACITY: usize = 1 << 21;

/// Offline pretraining on offline batches: the base policy alone, or with
/// `pretrain_critic` the full learner (critics, edit policy or RLPD actor, temperature,
/// base). RLPD has no base policy: it is pretrained only with `pretrain_critic`, with the
/// same number of updates, so that every method gets the same offline budget. Writes a
/// row to `log` (`pretrain.csv`) every `log_every` updates and after the last.
pub fn pretrain(
    agent: &mut Agent,
    offline: &Replay,
    rng: &mut Rng,
    batch: &mut Batch,
    (log, log_every): &(PathBuf, usize),
    progress: &mut dyn Progress,
) -> Result<()> {
    let c = agent.config.clone();
    let full = c.run.pretrain_critic && c.algo != Algo::Bc;
    if c.run.pretrain_steps == 0 || (c.algo == Algo::Rlpd && !full) {
        return Ok(());
    }
    write_header(log, UPDATES_HEADER)?;
    progress.phase("pretrain", c.run.pretrain_steps as u64);
    let empty = Replay::new(agent.obs_dim, agent.act_dim, 1);
    // The base policy's loss since the last row, when only the base is pretrained.
    let (mut base_loss, mut base_n) = (0.0f64, 0usize);
    let mut clock = Instant::now();
    let mut rows = Vec::new();
    for i in 0..c.run.pretrain_steps {
        draw_mixed(
            rng,
            offline,
            &empty,
            1.0,
            c.optim.utd,
            c.optim.batch_size,
            &mut rows,
        );
        if full {
            agent.train_step(StepBatch::Drawn {
                offline,
                online: &empty,
                rows: &rows,
            })?;
        } else {
            // The base update takes the last slice's rows only: all are drawn as before
            // (a run's random stream stays as it was), only those copied.
            let last = rows.len() - c.optim.batch_size;
            gather_rows(offline, &empty, &rows[last..], batch);
            base_loss += agent.update_base(batch) as f64;
            base_n += 1;
        }
        let done = i + 1;
        if done % log_every == 0 || done == c.run.pretrain_steps {
            if full {
                log_updates_row(log, agent, done, clock.elapsed())?;
            } else {
                // Only the base policy learns: the other columns stay empty.
                let loss = (base_loss / base_n as f64) as f32;
                let per_s = base_n as f64 / clock.elapsed().as_secs_f64().max(1e-9);
                append_line(log, &format!("{done},,,,{loss},,,,{per_s:.1}"))?;
                let m = UpdateMetrics {
                    denoiser_loss: loss,
                    ..Default::default()
                };
                ensure_finite(&m, log, done)?;
                (base_loss, base_n) = (0.0, 0);
            }
            clock = Instant::now();
        }
        if done % 100 == 0 {
            progress.advance(done as u64, "");
        }
    }
    Ok(())
}

/// Appends a row of the learner's metrics since the last row (read back from the
/// device now) to `path` (`finetune.csv`, `pretrain.csv`): the update count, the
/// metrics, critic updates per second; then stops a diverged run. Returns the critic
/// loss.
pub(crate) fn log_updates_row(
    path: &Path,
    agent: &mut Agent,
    done: usize,
    elapsed: std::time::Duration,
) -> Result<f32> {
    let window = MetricsWindow::take(agent);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let updates_per_s = (window.timed * agent.config.optim.utd) as f64 / secs;
    let row = window.row(done, 0, 0, 0.0, updates_per_s);
    let r = &row.metrics;
    append_line(
        path,
        &format!("{done},{},{:.1}", r.csv_fields(), row.updates_per_s),
    )?;
    ensure_finite(r, path, done)?;
    Ok(r.critic_loss)
}

/// Stops a diverged run: an error naming the first non-finite metric of the row just
/// appended to `log` (at step or update `at`), before a checkpoint could save the
/// diverged networks.
pub(crate) fn ensure_finite(m: &UpdateMetrics, log: &Path, at: usize) -> Result<()> {
    if let Some((name, v)) = m.first_non_finite() {
        bail!(
            "training diverged: {name} is {v} in the row of {at} in {} (the mean since the \
             row before); stopped before a checkpoint could save it (check the learning \
             rates, `optim.*_lr`, and the data)",
            log.display()
        );
    }
    Ok(())
}

/// The metrics of the environment steps since the last logged row, read back from the
/// agent once per row ([`Agent::take_metrics`]).
pub(crate) struct MetricsWindow {
    pub(crate) n: usize,
    /// Of the `n` steps, those this process made and timed (a resumed run's first
    /// window holds steps of the process before it).
    pub(crate) timed: usize,
    sum: UpdateMetrics,
}

impl MetricsWindow {
    pub(crate) fn take(agent: &mut Agent) -> Self {
        let (sum, n) = agent.take_metrics();
        let timed = n.saturating_sub(agent.take_untimed_steps());
        MetricsWindow { n, timed, sum }
    }

    pub(crate) fn row(
        &self,
        step: usize,
        episodes: usize,
        successes: usize,
        returns: f64,
        updates_per_s: f64,
    ) -> UpdateMetricsRow {
        let mut metrics = UpdateMetrics::default();
        metrics.accumulate(&self.sum, 1.0 / self.n.max(1) as f32);
        let e = episodes.max(1) as f32;
        UpdateMetricsRow {
            step,
            metrics,
            train_success_rate: if episodes > 0 {
                successes as f32 / e
            } else {
                f32::NAN
            },
            train_return: if episodes > 0 {
                returns as f32 / e
            } else {
                f32::NAN
            },
            updates_per_s: updates_per_s as f32,
        }
    }
}

pub(crate) fn write_header(path: &Path, header: &str) -> Result<()> {
    std::fs::write(path, format!("{header}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // One write, the newline with the row (`writeln!` on a file wrote them apart): a row
    // cut short has no newline, by which [`truncate_csv`] knows it.
    f.write_all(format!("{line}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn append_metrics(out: &Path, r: &UpdateMetricsRow) -> Result<()> {
    append_line(
        &out.join("metrics.csv"),
        &format!(
            "{},{},{},{},{:.1}",
            r.step,
            r.metrics.csv_fields(),
            r.train_success_rate,
            r.train_return,
            r.updates_per_s
        ),
    )
}

fn append_eval(out: &Path, step: usize, e: &EvalResult) -> Result<()> {
    append_line(
        &out.join("eval.csv"),
        &format!(
            "{step},{},{},{},{}",
            e.success_rate, e.mean_return, e.mean_length, e.episodes
        ),
    )
}

/// Keeps the header and the whole rows whose first field (the step) is at most `step`.
/// A row cut short (a full disk, a power cut: rows are synced only at checkpoints) is
/// left out: it has no newline, or fewer fields than the header. Its step's prefix (`15`
/// of `1500,...`) passed for a step at most `step`, and the torn row stayed in the middle
/// of the file once the resumed run appended, where the study's reader refuses it.
pub(crate) fn truncate_csv(path: &Path, step: usize) -> Result<()> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.split_inclusive('\n');
    let mut out = String::new();
    let mut fields = None;
    if let Some(h) = lines.next() {
        let h = h.trim_end_matches('\n');
        fields = Some(h.split(',').count());
        out.push_str(h);
        out.push('\n');
    }
    for l in lines {
        let Some(row) = l.strip_suffix('\n') else {
            continue;
        };
        // (More fields than the header: rows of a newer trainer, whole.)
        if fields.is_some_and(|n| row.split(',').count() < n) {
            continue;
        }
        let s: usize = row
            .split(',')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        if s <= step {
            out.push_str(row);
            out.push('\n');
        }
    }
    replace_file(path, out.as_bytes())
}

/// Puts `bytes` at `path` through `PATH.tmp`, synced, then renamed: a kill or a power
/// cut leaves the old file or the new one, never an empty or partial one.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    std::fs::File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_all()
        })
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    // The rename durable too: a power cut could otherwise bring back the old file (a
    // bundle's `latest` naming an older one, an options file of the last try). A
    // filesystem that cannot sync a directory (EINVAL) is not an error: the file is
    // replaced either way.
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dataset::sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))
}

/// The file in a run directory whose advisory lock [`lock_run_dir`] takes.
pub const RUN_LOCK_FILE: &str = ".trainer.lock";

/// Refuses to start a new run where one already is: its checkpoint, metrics and
/// evaluations would be overwritten. `--resume` continues it instead.
/// The run directory `out` taken for this process's writes (an advisory lock on
/// `out/.trainer.lock`, held while the returned file is open): a second `train`,
/// `pretrain` or `finetune` into it, e.g. a study started again while the first still
/// runs, is refused by name. Two writers removed each other's checkpoint staging, and
/// could leave `checkpoint/` without a complete checkpoint.
pub fn lock_run_dir(out: &Path) -> Result<std::fs::File> {
    let path = out.join(RUN_LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another trainer process (it holds {}): wait for it to end, \
             or write into another directory",
            out.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

pub(crate) fn ensure_no_run_in(out: &Path) -> Result<()> {
    // A damaged checkpoint is named as such (the advice below, `--resume`, would be
    // refused).
    checkpoint_to_resume(out)?;
    let held: Vec<&str> = [
        "checkpoint/state.json",
        "checkpoint.old/state.json",
        "metrics.csv",
        "eval.csv",
        "finetune.csv",
    ]
    .into_iter()
    .filter(|f| out.join(f).exists())
    .collect();
    // Logs without a checkpoint: a run stopped before its first one (pretraining takes
    // none before it ends), with nothing to continue from.
    // The command that wrote them starts it over with --resume.
    let again = if held.contains(&"finetune.csv") {
        "`finetune --resume`"
    } else {
        "the command that wrote them with --resume (`pretrain --resume` or `train --resume`)"
    };
    ensure!(
        held.iter().any(|f| f.starts_with("checkpoint")) || held.is_empty(),
        "{} holds the logs of a run that wrote no checkpoint ({}; stopped before its first \
         checkpoint?): {again} starts it over there, replacing them; or choose another \
         --out (nothing was changed)",
        out.display(),
        held.join(", ")
    );
    ensure!(
        held.is_empty(),
        "{} already holds a run ({}): `train --resume` (or `finetune --resume` for a \
         finetune run) continues it; or choose another --out (nothing was changed)",
        out.display(),
        held.join(", ")
    );
    Ok(())
}

/// Refuses to start a run over with `--resume` (no checkpoint yet) where the other
/// command's run left its logs: `train --resume` wrote a `train` run beside a killed
/// `finetune`'s `finetune.csv` (which `export` then took for a fine-tuned run), and
/// `finetune --resume` kept a killed `train`'s rows. `this` is "train" (also `pretrain`)
/// or "finetune".
pub(crate) fn refuse_logs_of_another_command(out: &Path, this: &str) -> Result<()> {
    let (theirs, again, ours, files): (&str, &str, &str, &[&str]) = if this == "finetune" {
        (
            "`train` or `pretrain`",
            "the command that wrote them, with --resume,",
            "`finetune --resume`",
            &["metrics.csv", "eval.csv", "pretrain.csv"],
        )
    } else {
        (
            "`finetune`",
            "`finetune --resume`",
            "`train --resume` (or `pretrain --resume`)",
            &["finetune.csv", crate::finetune::OPTIONS_FILE],
        )
    };
    let held: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| out.join(f).exists())
        .collect();
    ensure!(
        held.is_empty(),
        "{} holds the logs of a {theirs} run that wrote no checkpoint ({}): {again} starts \
         that one over there; {ours} would start another beside them. Remove them, or \
         choose another --out (nothing was changed)",
        out.display(),
        held.join(", ")
    );
    Ok(())
}

/// The newest complete checkpoint directory of a run, if any.
pub(crate) fn checkpoint_dir(out: &Path) -> Option<PathBuf> {
    [out.join("checkpoint"), out.join("checkpoint.old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
}

/// The checkpoint a `--resume` continues: [`checkpoint_dir`], `None` where the run
/// never wrote one, and an error where `checkpoint/` (or `checkpoint.old/`) is there
/// but holds no readable `state.json`. Such a run was taken for one without a
/// checkpoint: the resume started over, cut its logs and replaced the damaged
/// checkpoint, networks and replay included.
pub(crate) fn checkpoint_to_resume(out: &Path) -> Result<Option<PathBuf>> {
    if let Some(dir) = checkpoint_dir(out) {
        return Ok(Some(dir));
    }
    for dir in [out.join("checkpoint"), out.join("checkpoint.old")] {
        if std::fs::symlink_metadata(&dir).is_ok() {
            bail!(
                "{}: holds no complete checkpoint ({} is missing or not a file), so \
                 --resume has nothing to continue from; nothing was changed (restore it, or \
                 move {} aside to start the run over)",
                dir.display(),
                dir.join("state.json").display(),
                dir.display()
            );
        }
    }
    Ok(None)
}

pub(crate) fn write_checkpoint(
    out: &Path,
    agent: &Agent,
    online: &Replay,
    state: &RunState,
) -> Result<()> {
    let tmp = out.join("checkpoint.tmp");
    let cur = out.join("checkpoint");
    let old = out.join("checkpoint.old");
    // A diverged agent must not replace the last good checkpoint.
    if let Some(what) = agent.first_non_finite() {
        bail!(
            "not writing a checkpoint: {what} (training diverged); the checkpoint already in {}, if any, stays",
            out.display()
        );
    }
    let at = |what: &str, path: &Path| format!("{what} {}", path.display());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| at("removing", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| at("creating", &tmp))?;
    agent
        .save(&tmp)
        .with_context(|| at("writing the networks into", &tmp))?;
    // What the loaders refuse must not replace the last good checkpoint either: finite
    // weights beside an optimizer moment that overflowed (a gradient past 1.8e19 squares
    // to inf, and that element's updates become 0, so the weights stay finite), or a
    // metric sum that JSON writes as `null` and no resume reads back.
    agent.check_saved_optimizers(&tmp).context(
        "not writing a checkpoint: its optimizer state would not load (training diverged?)",
    )?;
    save_replay(online, &tmp.join("online.bin"))?;
    // state.json last: its presence marks the directory complete.
    let state_path = tmp.join("state.json");
    let state_text = serde_json::to_string(state)?;
    serde_json::from_str::<RunState>(&state_text).with_context(|| {
        format!(
            "not writing a checkpoint: its run state would not load (a metric that is not \
             finite: training diverged?); the checkpoint already in {}, if any, stays",
            out.display()
        )
    })?;
    std::fs::write(&state_path, state_text).with_context(|| at("writing", &state_path))?;
    // On disk before the renames (a power cut after them must not find a truncated
    // checkpoint where the previous one was). So are the logs whose rows up to here a
    // resume keeps (it truncates what lies beyond the checkpoint, and restores nothing
    // that is missing).
    sync_tree(&tmp)?;
    for log in [
        "metrics.csv",
        "eval.csv",
        "finetune.csv",
        "pretrain.csv",
        "config.toml",
    ] {
        let path = out.join(log);
        if path.is_file() {
            sync_path(&path)?;
        }
    }
    // A live run's stream logs as well: a resumed run tells the robot how many records
    // it holds by them, and the checkpoint's replay holds every transition they held
    // when it was taken (each is logged before it is trained on). Lost from the page
    // cache, the robot would send them again, to be trained on twice.
    let uplink = out.join("uplink");
    if uplink.is_dir() {
        sync_tree(&uplink)?;
    }
    if cur.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| at("removing", &old))?;
        }
        std::fs::rename(&cur, &old).with_context(|| at("renaming to .old", &cur))?;
    }
    std::fs::rename(&tmp, &cur).with_context(|| at("renaming into place", &tmp))?;
    sync_path(out)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| at("removing", &old))?;
    }
    Ok(())
}

/// fsync of every file under `dir`, then of the directories themselves.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Flushes a file's (or a directory's entries') written data to the disk.
pub(crate) fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

fn save_replay(r: &Replay, path: &Path) -> Result<()> {
    let bytes = r.to_bytes();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A checkpoint's online replay. Every run's has [`ONLINE_CAPACITY`] slots, so a larger
/// capacity is a damaged header: with `compute.replay = "device"` the device mirror
/// takes the capacity's rows up front (up to 2^31 of them), whatever the file holds.
fn load_replay(path: &Path, od: usize, ad: usize) -> Result<Replay> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let replay = Replay::from_bytes(&bytes, od, ad)
        .map_err(|e| anyhow::anyhow!("{}: corrupt replay buffer: {e}", path.display()))?;
    ensure!(
        replay.capacity() <= ONLINE_CAPACITY,
        "{}: corrupt replay buffer: capacity {} is more than a run's {ONLINE_CAPACITY}",
        path.display(),
        replay.capacity()
    );
    Ok(replay)
}

impl Agent {
    /// The first parameter of any network that is NaN or infinite or not `f32`, described
    /// (network, shape, element, value or element type); `None` when all are finite
    /// `f32`. Reads every parameter back.
    pub fn first_non_finite(&self) -> Option<String> {
        use burn::module::{ModuleVisitor, Param};
        use burn::tensor::Tensor;
        struct Find(Option<String>);
        impl ModuleVisitor for Find {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if self.0.is_some() {
                    return;
                }
                let t = param.val();
                let dims = t.dims();
                let data = t.into_data();
                // burn's loader checks shapes, not element types: a damaged file's
                // tensor of the right shape loaded as f64, and panicked later.
                let Ok(values) = data.try_to_vec::<f32>() else {
                    self.0 = Some(format!(
                        "a parameter of shape {dims:?} holds {:?} values (f32 expected)",
                        data.dtype
                    ));
                    return;
                };
                if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    self.0 = Some(format!(
                        "a parameter of shape {dims:?} is {v} at element {i}"
                    ));
                }
            }
        }
        fn find<M: Module>(name: &str, m: Option<&M>) -> Option<String> {
            let mut f = Find(None);
            m?.visit(&mut f);
            f.0.map(|what| format!("{name}: {what}"))
        }
        find("denoiser", Some(&self.denoiser))
            .or_else(|| find("denoiser_ema", Some(&self.denoiser_ema)))
            .or_else(|| find("edit", self.edit.as_ref()))
            .or_else(|| find("actor", self.actor.as_ref()))
            .or_else(|| find("critic", self.critic.as_ref()))
            .or_else(|| find("critic_target", self.critic_target.as_ref()))
            .or_else(|| find("temperature", self.temperature.as_ref()))
    }

    /// Writes every network and optimizer state into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let rec = |e: burn::store::RecordError| anyhow::anyhow!("{e:?}");
        self.denoiser
            .clone()
            .save_file(dir.join("denoiser.bpk"))
            .map_err(rec)?;
        self.denoiser_ema
            .clone()
            .save_file(dir.join("denoiser_ema.bpk"))
            .map_err(rec)?;
        if let Some(m) = &self.edit {
            m.clone().save_file(dir.join("edit.bpk")).map_err(rec)?;
        }
        if let Some(m) = &self.actor {
            m.clone().save_file(dir.join("actor.bpk")).map_err(rec)?;
        }
        if let Some(m) = &self.critic {
            m.clone().save_file(dir.join("critic.bpk")).map_err(rec)?;
        }
        if let Some(m) = &self.critic_target {
            m.clone()
                .save_file(dir.join("critic_target.bpk"))
                .map_err(rec)?;
        }
        if let Some(m) = &self.temperature {
            m.clone()
                .save_file(dir.join("temperature.bpk"))
                .map_err(rec)?;
        }
        self.save_optimizers(dir)
    }

    /// Restores what [`Agent::save`] wrote (the agent must be built from the same config).
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        fn load<M: Module>(m: M, path: PathBuf) -> Result<M> {
            use burn::store::{ModuleRecord, RecordError};
            let damaged = |why: &dyn std::fmt::Display| {
                anyhow::anyhow!(
                    "{}: cannot read this checkpoint file ({why}): missing or damaged",
                    path.display()
                )
            };
            // Read whole, here: burn's own file loading reads the tensors from the file
            // when they are first used, and a run writing its next checkpoint replaces
            // the file meanwhile (`eval --run` during training panicked reading a file
            // that was gone).
            let bytes = std::fs::read(&path).map_err(|e| damaged(&e))?;
            let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| match e {
                    RecordError::Io(why) => damaged(&why),
                    other => damaged(&format!("{other:?}")),
                })?;
            m.try_load_record(record).map_err(|e| match e {
                RecordError::Io(why) => damaged(&why),
                // burn lists every tensor that does not fit; the first says enough.
                RecordError::Validation(why) => {
                    let first: String = why.chars().take(240).collect();
                    let more = if why.chars().count() > 240 { " …" } else { "" };
                    anyhow::anyhow!(
                        "{}: does not fit the networks that the run's config.toml describes (was config.toml edited?): {first}{more}",
                        path.display()
                    )
                }
            })
        }
        self.denoiser = load(self.denoiser.clone(), dir.join("denoiser.bpk"))?;
        self.denoiser_ema = load(self.denoiser_ema.clone(), dir.join("denoiser_ema.bpk"))?;
        if let Some(m) = self.edit.take() {
            self.edit = Some(load(m, dir.join("edit.bpk"))?);
        }
        if let Some(m) = self.actor.take() {
            self.actor = Some(load(m, dir.join("actor.bpk"))?);
        }
        if let Some(m) = self.critic.take() {
            self.critic = Some(load(m, dir.join("critic.bpk"))?);
        }
        if let Some(m) = self.critic_target.take() {
            self.critic_target = Some(load(m, dir.join("critic_target.bpk"))?);
        }
        if let Some(m) = self.temperature.take() {
            self.temperature = Some(load(m, dir.join("temperature.bpk"))?);
        }
        self.load_optimizers(dir)
    }
}

#[cfg(test)]
mod tests {
    /// A resume cuts its logs back to the checkpoint's step, and leaves out a row cut
    /// short past it (no newline, or fewer fields): `15` of `1500,...` passed for step 15
    /// and stayed, mid-file once the resumed run appended.
    #[test]
    fn truncate_csv_leaves_out_rows_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.csv");
        let whole = "step,a,b\n10,1,2\n20,3,4\n";
        // (Each rule alone: "15\n" has a newline and too few fields, "12,1,2" its
        // fields and no newline.)
        for torn in ["3", "15,0", "30,5,6\n1", "", "\n", "15\n", "12,1,2"] {
            std::fs::write(&p, format!("{whole}{torn}")).unwrap();
            super::truncate_csv(&p, 20).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), whole, "{torn:?}");
        }
        std::fs::write(&p, whole).unwrap();
        super::truncate_csv(&p, 10).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "step,a,b\n10,1,2\n");
        // Rows appended after it are whole, newline included.
        super::append_line(&p, "11,7,8").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "step,a,b\n10,1,2\n11,7,8\n"
        );
    }

    use super::*;

    /// `bc`'s online steps train on the demonstrations only (they drew half their rows
    /// from its own rollouts); the other algorithms mix as `optim.offline_fraction` says.
    #[test]
    fn bc_draws_its_online_rows_from_the_offline_data_only() {
        let (mut offline, mut online) = (Replay::new(1, 1, 64), Replay::new(1, 1, 64));
        for i in 0..32 {
            offline.push(&[i as f32], &[0.5], 0.0, &[0.0], false);
            online.push(&[i as f32], &[-0.5], 0.0, &[0.0], false);
        }
        let mut c = Config::tiny();
        let mut rng = Rng::new(3);
        let mut rows = Vec::new();
        for (algo, only_offline) in [(Algo::Bc, true), (Algo::Expo, false)] {
            c.algo = algo;
            let fraction = online_offline_fraction(&c);
            draw_mixed(&mut rng, &offline, &online, fraction, 2, 64, &mut rows);
            assert_eq!(rows.len(), 128);
            let offline_rows = rows.iter().filter(|&&r| (r as usize) < 64).count();
            assert_eq!(
                offline_rows == rows.len(),
                only_offline,
                "{algo:?}: {offline_rows}"
            );
        }
    }

    /// A reward on a frame marked as an intervention is left out of training, and said
    /// so, unless interventions are kept (`finetune --keep-interventions`), which the
    /// warning took for left out too.
    #[test]
    fn a_reward_on_an_intervention_is_left_out_unless_interventions_are_kept() {
        let ep = dataset::Episode {
            observations: vec![0.0, 1.0, 2.0],
            next_observations: vec![1.0, 2.0, 3.0],
            actions: vec![0.0; 3],
            rewards: vec![0.0, 0.0, 1.0],
            terminated: vec![false, false, true],
            truncated: vec![false; 3],
            success: vec![false, false, true],
            intervention: vec![false, false, true],
            teleop: vec![false; 3],
        };
        let ds = dataset::Dataset {
            info: dataset::DatasetInfo {
                robot_type: "test".into(),
                fps: 10,
                task: String::new(),
                observation_names: vec!["x".into()],
                action_names: vec!["a".into()],
                action_mapping: None,
            },
            episodes: vec![ep],
            next_observations_recorded: true,
        };
        let w = no_reward_warning("d", &ds, "nothing learnt", false).unwrap();
        assert!(w.contains("1 of the 1 frames with a reward"), "{w}");
        assert_eq!(no_reward_warning("d", &ds, "nothing learnt", true), None);
    }

    /// An online replay whose header says more slots than any run has is refused by
    /// name: it loaded, and a device replay then took that many rows up front.
    #[test]
    fn an_online_replay_larger_than_a_runs_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("online.bin");
        let mut r = Replay::new(2, 1, 8);
        r.push(&[0.0, 1.0], &[0.5], 0.0, &[1.0, 2.0], false);
        let mut bytes = r.to_bytes();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load_replay(&path, 2, 1).unwrap().len(), 1);
        // Consistent otherwise (one row, the ring not yet full).
        bytes[8..16].copy_from_slice(&(2 * ONLINE_CAPACITY as u64).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", load_replay(&path, 2, 1).unwrap_err());
        assert!(
            e.contains("online.bin: corrupt replay buffer: capacity 4194304 is more than"),
            "{e}"
        );
    }

    /// A recording whose next observations are not the following frames' (a second
    /// sensor read) cuts every chunk: said, with the count, where it trained silently on
    /// what was left.
    #[test]
    fn chunks_cut_by_gaps_are_warned_of() {
        let (od, n) = (2, 4);
        let observations: Vec<f32> = (0..n * od).map(|i| i as f32).collect();
        let mut next_observations = observations[od..].to_vec();
        next_observations.extend_from_slice(&observations[(n - 1) * od..]);
        let episode = dataset::Episode {
            observations,
            next_observations,
            actions: vec![0.0; n],
            rewards: vec![0.0; n],
            terminated: vec![false, false, false, true],
            truncated: vec![false; n],
            success: vec![false; n],
            intervention: vec![false; n],
            teleop: vec![false; n],
        };
        let info = dataset::DatasetInfo {
            robot_type: "r".into(),
            fps: 10,
            task: "t".into(),
            observation_names: vec!["a".into(), "b".into()],
            action_names: vec!["x".into()],
            action_mapping: None,
        };
        let mut ds = dataset::Dataset {
            info,
            episodes: vec![episode],
            next_observations_recorded: true,
        };
        assert_eq!(chunks_cut_by_gaps("d", &ds, 2, 4), None);
        assert_eq!(chunks_cut_by_gaps("d", &ds, 1, 4), None);
        // The sensor read again: 1e-6 off.
        for v in ds.episodes[0].next_observations.iter_mut() {
            *v += 1e-6;
        }
        let w = chunks_cut_by_gaps("d", &ds, 2, 1).unwrap();
        assert!(
            w.contains("at 3 of 4 frames") && w.contains("1 training transitions from 4"),
            "{w}"
        );
    }

    /// A run continued from a checkpoint seeds the device generator afresh: another
    /// seed at each point, the run's own seed at its start (so a fresh run's noise is as
    /// before).
    #[test]
    fn a_continued_run_seeds_the_device_generator_anew() {
        let c = Config::preset("cpu").unwrap();
        assert_eq!(device_normals_seed(&c, 0), c.seed ^ 0xde71ce);
        let seeds: std::collections::BTreeSet<u64> =
            (0..1000).map(|u| device_normals_seed(&c, u)).collect();
        assert_eq!(seeds.len(), 1000);
        // Every checkpoint of an rlpd run, which makes no denoiser update, is a point of
        // its own: each was continued with the start's seed.
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Config::tiny();
        c.algo = Algo::Rlpd;
        c.compute.normals = crate::config::NormalSource::Device;
        let mut points = vec![0];
        let mut steps = vec![];
        for (step, resume) in [(30, false), (60, true)] {
            let opts = TrainOptions {
                resume,
                log_every: 10,
                checkpoint_every: 30,
                stop_after: Some(step),
            };
            train(&c, tmp.path(), &opts, &mut ()).unwrap();
            let state: RunState = serde_json::from_str(
                &std::fs::read_to_string(tmp.path().join("checkpoint/state.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(state.denoiser_updates, 0);
            steps.push(state.env_step);
            points.push(state.continuation());
        }
        assert!(steps[0] < steps[1], "{steps:?}");
        let seeds: std::collections::BTreeSet<u64> =
            points.iter().map(|&p| device_normals_seed(&c, p)).collect();
        assert_eq!(seeds.len(), 3, "{points:?}");
    }

    /// Chunks longer than every generated demonstration that did not end on a terminal
    /// step make no transition: refused by name, where the first batch used to panic on
    /// an empty buffer. (arm-reach lasts 60 steps; a failed demonstration times out.)
    #[test]
    fn generated_demonstrations_too_short_for_the_chunks_are_refused() {
        let mut refused = 0;
        for seed in 0..16 {
            let mut c = Config::preset("tiny").unwrap();
            c.task = crate::config::Task::Sim(TaskId::ArmReach);
            c.action_horizon = 64;
            c.run.offline_episodes = 1;
            c.seed = seed;
            if let Err(e) = offline_data(&c) {
                let e = format!("{e:#}");
                assert!(
                    e.contains("made no training transition: with action_horizon 64")
                        && e.contains("last at most 60 steps"),
                    "{e}"
                );
                refused += 1;
            }
        }
        assert!(refused > 0, "every demonstration succeeded");
    }

    /// `write_checkpoint` refuses an agent with a non-finite parameter, naming it, and
    /// leaves the run's last good checkpoint as it was (the logged rows usually stop a
    /// diverging run first; this is the guard behind them, also for `finetune`).
    #[test]
    fn a_checkpoint_of_non_finite_networks_is_refused_and_the_last_good_one_stays() {
        let tmp = tempfile::tempdir().unwrap();
        trained_tiny(tmp.path());
        let state_file = tmp.path().join("checkpoint/state.json");
        let good = std::fs::read(&state_file).unwrap();
        let (mut agent, state, online) = load_run(tmp.path(), None).unwrap();
        write_checkpoint(tmp.path(), &agent, &online, &state).unwrap();
        let device = device(&agent.config).unwrap();
        agent.temperature = Some(crate::nets::Temperature::new(f32::NAN, &device));
        let e = write_checkpoint(tmp.path(), &agent, &online, &state).unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("not writing a checkpoint: temperature: a parameter of shape [1] is NaN"),
            "{e:#}"
        );
        assert_eq!(std::fs::read(&state_file).unwrap(), good);
        let (agent, _, _) = load_run(tmp.path(), None).unwrap();
        assert_eq!(agent.first_non_finite(), None);
        // A step that fails names its path (a full disk said only "No space left on
        // device"): here a file where the staging directory goes.
        let tmp_path = tmp.path().join("checkpoint.tmp");
        std::fs::write(&tmp_path, "").unwrap();
        let e = format!(
            "{:#}",
            write_checkpoint(tmp.path(), &agent, &online, &state).unwrap_err()
        );
        assert!(
            e.contains(&format!("removing {}", tmp_path.display())),
            "{e}"
        );
        assert_eq!(std::fs::read(&state_file).unwrap(), good);
    }

    /// Nor one that the loaders would refuse while the weights are finite: a critic
    /// moment that overflowed, a metric sum that is not finite (JSON writes `null`,
    /// which no resume reads). Both replaced the last good checkpoint with one that
    /// `--resume`, `eval`, `export` and `finetune` refuse.
    #[test]
    fn a_checkpoint_that_would_not_load_is_refused_and_the_last_good_one_stays() {
        let tmp = tempfile::tempdir().unwrap();
        trained_tiny(tmp.path());
        let state_file = tmp.path().join("checkpoint/state.json");
        let good = std::fs::read(&state_file).unwrap();
        let (mut agent, mut state, online) = load_run(tmp.path(), None).unwrap();
        let window = crate::agent::UpdateMetrics {
            critic_loss: f32::INFINITY,
            ..Default::default()
        };
        state.metrics_window = Some((window, 3));
        let e = format!(
            "{:#}",
            write_checkpoint(tmp.path(), &agent, &online, &state).unwrap_err()
        );
        assert!(
            e.contains("not writing a checkpoint: its run state would not load"),
            "{e}"
        );
        assert_eq!(std::fs::read(&state_file).unwrap(), good);
        state.metrics_window = None;
        agent.overflow_critic_moments();
        assert_eq!(agent.first_non_finite(), None);
        let e = format!(
            "{:#}",
            write_checkpoint(tmp.path(), &agent, &online, &state).unwrap_err()
        );
        assert!(
            e.contains("not writing a checkpoint: its optimizer state would not load")
                && e.contains("opt_critic.adam: second moment 0 is inf"),
            "{e}"
        );
        assert_eq!(std::fs::read(&state_file).unwrap(), good);
        load_run(tmp.path(), None).unwrap();
    }

    /// A `tiny` run of 10 online steps trained into `dir`; its config.
    fn trained_tiny(dir: &Path) -> Config {
        let mut c = Config::preset("tiny").unwrap();
        c.run.online_steps = 10;
        train(&c, dir, &TrainOptions::default(), &mut ()).unwrap();
        c
    }

    /// A checkpoint whose generator state is all zeros (a damaged `state.json`) is
    /// refused by file and generator: it loaded, and every draw of that generator was
    /// the same value (every batch the same rows, for `batch_rng`).
    #[test]
    fn an_all_zero_generator_state_is_refused_on_load() {
        let tmp = tempfile::tempdir().unwrap();
        trained_tiny(tmp.path());
        let path = tmp.path().join("checkpoint/state.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["batch_rng"] = serde_json::json!([0, 0, 0, 0]);
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        let e = format!("{:#}", load_run(tmp.path(), None).err().unwrap());
        assert!(
            e.contains("state.json: generator state `batch_rng` is all zeros"),
            "{e}"
        );
    }

    /// A network file whose tensor has the right shape and another element type (here
    /// f64) is refused on load by network and type; it loaded and panicked at the first
    /// read of its parameters ("f32 parameters").
    #[test]
    fn a_network_file_of_another_element_type_is_refused_on_load() {
        use burn::module::{Module, Param};
        use burn::tensor::{DType, Tensor, TensorData};
        let tmp = tempfile::tempdir().unwrap();
        let c = trained_tiny(tmp.path());
        let device = device(&c).unwrap();
        let log_alpha =
            Tensor::<1>::from_data(TensorData::new(vec![-2.0f32], [1]), &device).cast(DType::F64);
        let wide = crate::nets::Temperature {
            log_alpha: Param::from_tensor(log_alpha),
        };
        wide.save_file(tmp.path().join("checkpoint/temperature.bpk"))
            .unwrap();
        let e = format!("{:#}", load_run(tmp.path(), None).err().unwrap());
        assert!(
            e.contains("temperature: a parameter of shape [1] holds F64 values (f32 expected)"),
            "{e}"
        );
    }

    /// A second trainer process writing into a run directory in use (a study started
    /// again while the first runs) is refused by name: two writers removed each
    /// other's checkpoint staging.
    #[test]
    fn a_run_directory_in_use_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let mut c = Config::preset("tiny").unwrap();
        c.run.online_steps = 10;
        std::fs::create_dir_all(&out).unwrap();
        let held = lock_run_dir(&out).unwrap();
        let e = train(&c, &out, &TrainOptions::default(), &mut ()).expect_err("refused");
        assert!(
            format!("{e:#}").contains("is in use by another trainer process"),
            "{e:#}"
        );
        assert!(!out.join("metrics.csv").exists());
        drop(held);
        train(&c, &out, &TrainOptions::default(), &mut ()).unwrap();
    }

    /// A resume never shortens a run below the length it was written for (a resume
    /// that forgot the longer run's `--set run.online_steps` ended it at the preset's
    /// length, and rewrote its config.toml to say so); and a resume with nothing left
    /// to train leaves config.toml as its evaluations were made.
    #[test]
    fn a_resume_keeps_the_runs_length_and_a_finished_runs_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let mut c = Config::preset("tiny").unwrap();
        c.run.online_steps = 120;
        let stopped = TrainOptions {
            log_every: 10,
            checkpoint_every: 30,
            stop_after: Some(30),
            ..TrainOptions::default()
        };
        train(&c, &out, &stopped, &mut ()).unwrap();
        let resume = TrainOptions {
            resume: true,
            log_every: 10,
            ..TrainOptions::default()
        };
        let mut shorter = c.clone();
        shorter.run.online_steps = 60;
        let e = format!("{:#}", train(&shorter, &out, &resume, &mut ()).unwrap_err());
        assert!(
            e.contains("written for run.online_steps = 120, and 60 would shorten it"),
            "{e}"
        );
        let s = train(&c, &out, &resume, &mut ()).unwrap();
        assert_eq!(s.env_steps, 120);
        // Finished: a resume with other evaluation settings trains nothing and evaluates
        // nothing, so config.toml keeps the settings eval.csv was made with.
        let before = std::fs::read_to_string(out.join("config.toml")).unwrap();
        let mut more_episodes = c.clone();
        more_episodes.run.eval_episodes = c.run.eval_episodes + 4;
        train(&more_episodes, &out, &resume, &mut ()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("config.toml")).unwrap(),
            before
        );
    }

    /// `updates_per_s` counts a `bc` run's one denoiser update per step, not the critic
    /// updates it does not make.
    #[test]
    fn a_bc_runs_update_rate_counts_its_denoiser_updates() {
        let mut c = Config::preset("cpu").unwrap();
        assert!(c.optim.utd > 1);
        assert_eq!(counted_updates_per_step(&c), c.optim.utd);
        c.algo = Algo::Bc;
        assert_eq!(counted_updates_per_step(&c), 1);
    }

    /// A checkpoint read while the run writes the next one (`eval --run` during
    /// training) is one checkpoint, whole: the networks of one (here its temperature)
    /// with the state of the same (its step). A writer alternates two checkpoints, a
    /// pause between writes, as a run does (minutes apart there).
    #[test]
    fn a_checkpoint_read_while_the_next_is_written_is_one_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
        let mut c = Config::preset("tiny").unwrap();
        c.run.online_steps = 10;
        train(&c, &src, &TrainOptions::default(), &mut ()).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(src.join("config.toml"), out.join("config.toml")).unwrap();
        let alpha = |agent: &Agent| {
            let t = agent.temperature.as_ref().unwrap().alpha();
            t.into_data().try_to_vec::<f32>().unwrap()[0]
        };
        // Agents are not `Send`: the writer loads its own two.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let writer = {
            let stop = stop.clone();
            let (src, out) = (src.clone(), out.clone());
            std::thread::spawn(move || {
                let (a, mut state_a, online) = load_run(&src, None).unwrap();
                let (mut b, mut state_b, _) = load_run(&src, None).unwrap();
                let device = device(&b.config).unwrap();
                b.temperature = Some(crate::nets::Temperature::new(7.0, &device));
                state_b.env_step = 999;
                write_checkpoint(&out, &a, &online, &state_a).unwrap();
                ready_tx.send(()).unwrap();
                let mut writes: u64 = 1;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let (agent, state) = if writes % 2 == 1 {
                        (&b, &mut state_b)
                    } else {
                        (&a, &mut state_a)
                    };
                    // Every checkpoint's state differs from the others', as a run's do.
                    state.episode_seed = writes;
                    write_checkpoint(&out, agent, &online, state).unwrap();
                    writes += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                writes
            })
        };
        // The writer stops also when an assertion below fails (it would write on).
        struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _stop_writer = StopOnDrop(stop.clone());
        ready.recv().unwrap();
        let mut seen = [0; 2];
        for _ in 0..300 {
            let (agent, state, _, _) = load_checkpoint(&out, None, false).unwrap();
            let is_b = state.env_step == 999;
            assert_eq!(
                (alpha(&agent) - 7.0).abs() < 1e-4,
                is_b,
                "the temperature of one checkpoint with the step of the other"
            );
            seen[is_b as usize] += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(writer.join().unwrap() > 2, "the writer wrote");
        assert!(
            seen[0] > 0 && seen[1] > 0,
            "both checkpoints read: {seen:?}"
        );
    }

    /// One episode, a policy that counts its calls: it is asked once per
    /// `replan_every` steps.
    #[test]
    fn evaluation_plans_every_replan_every_steps() {
        let task = TaskId::Push;
        let ad = task.spec().action_dim();
        for (h, k) in [(1, 0), (4, 0), (4, 2), (4, 1)] {
            let play = ChunkPlay::new(h, k).unwrap();
            let mut calls = 0usize;
            let e = evaluate_with(task, 1, 3, play, &mut |obs| {
                calls += 1;
                assert_eq!(obs.len(), task.spec().obs_dim());
                Ok(vec![0.0; h * ad])
            })
            .unwrap();
            let length = e.mean_length as usize;
            assert!(length > 4, "{e:?}");
            assert_eq!(
                calls,
                length.div_ceil(play.replan_every()),
                "H {h}, replan every {k}"
            );
        }
        let e = Config::resolve(
            "tiny",
            None,
            &["action_horizon=4".into(), "replan_every=5".into()],
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("replan_every must be 0 (play whole chunks) or in 1..=4"),
            "{e:#}"
        );
    }

    /// More episodes than one batch holds run in batches: the policy never acts for more
    /// than [`EVAL_BATCH`] at once (all of them at once took all the memory near the cap
    /// of 10^6 at the `paper` preset), and every episode is counted.
    #[test]
    fn a_large_evaluation_runs_in_batches() {
        let task = TaskId::ArmReach;
        let spec = task.spec();
        let (od, ad) = (spec.obs_dim(), spec.action_dim());
        // Each call's first observation; standing still reaches no goal and hits
        // nothing, so every episode runs its whole horizon and each batch starts on
        // call `k · horizon`.
        let mut firsts: Vec<Vec<f32>> = vec![];
        let mut largest = 0;
        let mut act = |obs: &[f32]| -> Result<Vec<f32>> {
            largest = largest.max(obs.len() / od);
            firsts.push(obs[..od].to_vec());
            Ok(vec![0.0; obs.len() / od * ad])
        };
        let n = 2 * EVAL_BATCH + 5;
        let all = evaluate_with(task, n, 3, ChunkPlay::SINGLE, &mut act).unwrap();
        assert_eq!(largest, EVAL_BATCH);
        assert_eq!(all.episodes, n);
        assert_eq!(all.mean_length, spec.horizon as f64, "{all:?}");
        // The batches' first episodes take the 1st, 1,025th and 2,049th seeds of the
        // evaluation's stream: the seeds go on from batch to batch.
        let mut seeds = Rng::new(3);
        let seeds: Vec<u64> = (0..n).map(|_| seeds.next_u64()).collect();
        for batch in 0..3 {
            let mut env = make_env(task, EnvConfig::default());
            let mut obs = vec![0.0; od];
            env.reset(seeds[batch * EVAL_BATCH], &mut obs);
            assert_eq!(firsts[batch * spec.horizon as usize], obs, "batch {batch}");
        }
    }

    /// Temporal ensembling with m = 0, chunks of 2 planned every step: each step plays
    /// the mean of the two chunks' actions for it, exactly what a one-step policy that
    /// returns that mean does.
    #[test]
    fn evaluation_with_temporal_ensembling_plays_the_blend() {
        let task = TaskId::Push;
        let ad = task.spec().action_dim();
        // The t-th plan's actions: all x(t).
        let x = |t: usize| 0.7 * (1.3 * t as f32).sin();
        // The result and every observation the policy was shown (the trajectories).
        let run = |play: ChunkPlay, action: &dyn Fn(usize) -> f32| {
            let (mut t, mut seen) = (0, vec![]);
            let e = evaluate_with(task, 2, 3, play, &mut |obs| {
                seen.extend_from_slice(obs);
                let v = action(t);
                t += 1;
                Ok(vec![
                    v;
                    obs.len() / task.spec().obs_dim() * play.horizon() * ad
                ])
            })
            .unwrap();
            (e, seen)
        };
        let chunks = ChunkPlay::new(2, 1).unwrap();
        let blended = run(chunks.with_ensemble(Some(0.0)).unwrap(), &x);
        let mean = |t: usize| {
            if t == 0 {
                x(0)
            } else {
                (x(t - 1) + x(t)) / 2.0
            }
        };
        let one_step = run(ChunkPlay::SINGLE, &mean);
        assert_eq!(blended, one_step);
        // Playing the newest chunk's action instead moves the robot differently.
        let newest_only = run(chunks, &x);
        assert_eq!(newest_only.0.episodes, 2);
        assert_ne!(blended.1, newest_only.1);
    }
}
