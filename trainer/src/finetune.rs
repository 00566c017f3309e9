//! `trainer finetune`: continue EXPO training from a run's checkpoint on episodes the robot
//! recorded (the controller's datasets), offline-to-online style.
//!
//! ```text
//!  run DIR (train/pretrain/finetune) ──► agent + optimizers + generators + replay
//!  robot datasets (controller run) ─────► appended to the online replay
//!  offline data (the run's config) ─────► offline replay
//!        updates: UTD critic steps + base + edit/temperature per update, batches 50/50
//!        (optim.offline_fraction) from offline and online replay
//!  OUT/ ── config.toml, checkpoint/ (a run directory: `eval`, `export`, `train --resume`
//!          and `finetune --from` all accept it), finetune.csv, optional bundle
//! ```
//!
//! One "update" is what one environment step triggers in `train`: `optim.utd` critic
//! steps, one denoiser step and one edit-policy/temperature step. Checkpoints are written
//! like `train`'s (temporary directory, then rename); `--resume` continues from the
//! newest one with exactly the updates an uninterrupted run makes.
//!
//! With `listen`, the robot's transitions arrive over the uplink while it runs instead
//! ([`crate::live`]); each one is followed by one update, and bundles are published
//! every `publish_every` updates.

use anyhow::{Context, Result, bail, ensure};
use sim::rng::Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::agent::Agent;
use crate::agent::StepBatch;
use crate::replay::{Chunker, Replay, draw_mixed};
use crate::run::{
    EvalResult, Progress, RunState, UPDATES_HEADER, ensure_no_run_in, evaluate, load_run,
    log_updates_row, offline_data, truncate_csv, write_checkpoint, write_header,
};

/// One `finetune` invocation.
#[derive(Debug)]
pub struct FinetuneOptions {
    /// The run to start from (its newest checkpoint).
    pub from: PathBuf,
    /// Datasets the robot recorded (LeRobot v3, as `controller run` writes them).
    pub data: Vec<PathBuf>,
    /// Output run directory.
    pub out: PathBuf,
    /// Updates to run (each: UTD critic steps, base, edit policy and temperature).
    pub updates: usize,
    /// Mix the run's offline data into every batch (`optim.offline_fraction`).
    pub with_offline: bool,
    /// Checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    /// Write a `finetune.csv` row every this many updates.
    pub log_every: usize,
    /// Evaluate in the simulated task before and after (0: skip).
    pub eval_episodes: usize,
    /// Continue from `out`'s newest checkpoint.
    pub resume: bool,
    /// Stop right after the first checkpoint at or after this many updates (tests use
    /// it to simulate a kill).
    pub stop_after: Option<usize>,
    /// Train on transitions streamed by `controller run --uplink` (see [`crate::live`]).
    pub listen: Option<LiveOptions>,
    /// Also train on frames the operator marked as interventions. Off by default: the
    /// action logged for them is the policy's command, not what the person made the
    /// arm do, so (observation, action, next observation) may not belong together.
    pub keep_interventions: bool,
    /// Train on this device instead of the run's (`cpu`, `cuda:1`, …; `None`: the
    /// run's).
    pub device: Option<String>,
    /// A bundle is exported from the run when it ends (`--bundle`): a run that cannot
    /// export one is refused before the work.
    pub exports_bundle: bool,
}

/// Said when the base policy's learning rate reaches 0 within the next `updates`
/// updates: its cosine schedule (`optim.actor_lr_decay_steps`) counts the run's
/// denoiser updates over its whole life, pretraining included, and stays at 0 after
/// (an open-ended `--listen` session went on publishing bundles whose base policy no
/// longer changed, with nothing said; only the critics and the edit policy learned).
fn base_policy_stops_learning(agent: &Agent, updates: usize) -> Option<String> {
    // (rlpd's actor is no diffusion policy and has no such schedule.)
    if agent.config.algo == crate::config::Algo::Rlpd {
        return None;
    }
    let decay = agent.config.optim.actor_lr_decay_steps;
    let done = agent.denoiser_updates;
    if done.saturating_add(updates) <= decay {
        return None;
    }
    // (idql-select has no edit policy.)
    let learners = if agent.config.algo == crate::config::Algo::Expo {
        "the critics and the edit policy"
    } else {
        "the critics"
    };
    Some(if done >= decay {
        format!(
            "the base policy's learning rate is 0: its cosine schedule ended at \
             optim.actor_lr_decay_steps = {decay} denoiser updates, and the run has made \
             {done}; only {learners} learn here"
        )
    } else {
        format!(
            "the base policy's learning rate reaches 0 after {} of these {updates} updates \
             (optim.actor_lr_decay_steps = {decay} denoiser updates over the run's life, {done} \
             made): only {learners} learn after that",
            decay - done
        )
    })
}

/// `--listen` settings.
pub struct LiveOptions {
    pub addr: String,
    pub key: uplink::Key,
    /// Publish a bundle every this many updates (0: only at the end).
    pub publish_every: usize,
    pub signing_key: Option<shared_model::manifest::SigningKey>,
    /// Stop once no transition has arrived for this long (and none is owed an update).
    pub idle_exit: Option<std::time::Duration>,
    /// Told the bound address once listening (tests bind port 0).
    pub bound: Option<std::sync::mpsc::Sender<std::net::SocketAddr>>,
    /// Once set, the session ends as at `--updates` (final checkpoint and bundle; no
    /// evaluation after): `trainer finetune --listen` passes
    /// [`crate::live::SIGNALLED`], and the session then routes SIGINT and SIGTERM to it
    /// as it starts listening ([`crate::live::stop_on_signals`]).
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for LiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LiveOptions({}, publish every {})",
            self.addr, self.publish_every
        )
    }
}

/// What a fine-tuning run reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FinetuneSummary {
    pub robot_episodes: usize,
    pub robot_transitions: usize,
    pub robot_success_rate: f64,
    /// Robot frames marked as operator interventions (left out of training unless
    /// `keep_interventions`).
    pub robot_interventions: usize,
    /// Robot frames whose action came from a teleop device (`controller run
    /// --teleop`). They are trained on like the policy's: the recorded action is what
    /// the robot applied.
    pub robot_teleop: usize,
    /// Robot frames admitted to training (all but the interventions left out and the
    /// frames without a successor).
    pub robot_transitions_used: usize,
    /// Last frames of episodes of a dataset without `next.observation.state` (a LeRobot
    /// recording) that are not terminal: no successor is known to bootstrap from, so
    /// they are left out ([`dataset::Dataset::frames_with_successor`]).
    pub robot_without_successor: usize,
    /// Training transitions the admitted frames made in the online buffer. One per frame
    /// one step at a time. With action chunks (`action_horizon` H) each frame starts at
    /// most one chunk: the last H − 1 frames before a truncation, a left-out frame or a
    /// gap in the data start none ([`crate::replay::Chunker`]).
    pub replay_transitions: usize,
    pub updates: usize,
    /// Bundles published by `--listen` (directories, oldest first).
    pub published: Vec<PathBuf>,
    /// Transitions received over the uplink.
    pub streamed: usize,
    /// Of those, the ones taken from `OUT/uplink/` at the start of a `--listen`
    /// session that the replay it continues lacked: logged after its last checkpoint
    /// (a crash), or waiting there for the rest of an action chunk.
    pub recovered: usize,
    /// Of those, the ones not trained on for a value that is not finite or an action
    /// outside `[-1, 1]` (they stay in `OUT/uplink/`).
    pub streamed_unusable: usize,
    /// Action chunks left out because their steps' finite rewards have a discounted sum
    /// that is not finite ([`crate::replay::Chunker::non_finite_rewards`]), from `--data`
    /// and the streams alike.
    pub chunks_non_finite: usize,
    pub before: Option<EvalResult>,
    pub after: Option<EvalResult>,
    pub stopped_early: bool,
    /// The update count a `--resume` went on from. The robot data was read by the run's
    /// first session (a resume takes the saved replay), so the counts above are 0 then.
    pub resumed_at: Option<usize>,
    /// Said on stderr too: e.g. a `--data` dataset whose every reward is 0.
    pub warnings: Vec<String>,
}

impl FinetuneSummary {
    /// Robot frames marked as interventions that training left out.
    pub fn robot_interventions_left_out(&self) -> usize {
        (self.robot_transitions - self.robot_without_successor)
            .saturating_sub(self.robot_transitions_used)
    }

    /// Counts one robot frame and says whether it goes into training: frames the
    /// operator marked as interventions only with `keep_interventions` (teleoperated
    /// or not); other teleoperated frames always (their action is what the robot was
    /// sent).
    pub(crate) fn admit(
        &mut self,
        intervention: bool,
        teleop: bool,
        keep_interventions: bool,
    ) -> bool {
        self.robot_interventions += intervention as usize;
        self.robot_teleop += teleop as usize;
        let used = keep_interventions || !intervention;
        self.robot_transitions_used += used as usize;
        used
    }
}

/// What the controller logs beside the `--data` datasets (or a pretraining's
/// `run.dataset`) hold that none of the run's data holds (`controller run --out DIR` writes `DIR/dataset` and
/// `DIR/transitions.log`): the episodes of a run killed before it saved them, which this
/// run would not train on ([`controller::robot_loop::log::unsaved_runs`]). Each dataset
/// named `dataset` is looked at beside its log; any `--data` dataset, or the offline one
/// mixed in, may hold a run (one `log-to-dataset` wrote elsewhere). A log that cannot be
/// read is reported, and the run goes on with the datasets.
pub(crate) fn unsaved_robot_data(data: &[PathBuf], offline: Option<&Path>) -> Vec<String> {
    use controller::robot_loop::log::{unsaved_runs, unsaved_runs_advice};
    let holders: Vec<&Path> = data.iter().map(PathBuf::as_path).chain(offline).collect();
    let mut said = vec![];
    for dataset in data {
        let log = match dataset.parent() {
            Some(dir) if dataset.file_name() == Some("dataset".as_ref()) => {
                dir.join("transitions.log")
            }
            _ => continue,
        };
        match unsaved_runs(&log, &holders) {
            Ok(runs) => said.extend(unsaved_runs_advice(&log, dataset, &runs).map(|a| {
                format!(
                    "{a}; this run trains without them (to train on them, stop it, append \
                     them and start again: appended later, the dataset is no longer the one \
                     this run trained on)"
                )
            })),
            Err(e) => said.push(format!(
                "could not tell whether {} holds episodes that the dataset {} lacks: {e}",
                log.display(),
                dataset.display()
            )),
        }
    }
    said
}

/// The options a finetune run began with that shape its batches (`OPTIONS_FILE` in its
/// directory): `--resume` with others would continue it as another run.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct StartedWith {
    from: PathBuf,
    with_offline: bool,
    keep_interventions: bool,
    listen: bool,
    /// `--updates`, as the run began or as a resume last gave it (a file written before
    /// it was kept lacks it).
    #[serde(default)]
    updates: Option<usize>,
}

pub(crate) const OPTIONS_FILE: &str = "finetune-options.json";

/// The controller runs whose recordings a finetune run's replay holds ([`DataRuns`]).
const DATA_RUNS_FILE: &str = "data-runs.json";

/// The controller runs whose recordings a finetune run trained on, by run id (a dataset
/// the controller recorded notes the runs it holds in its `info.json`): the whole run
/// (`episodes: None`), or the episodes a dataset holds of a run it holds in part (one
/// `log-to-dataset --last-run` wrote from a killed run). A run's [`DATA_RUNS_FILE`]
/// holds its `--data`'s and its `--from` run's, so that data already trained on (the
/// same dataset twice, an earlier round's, one a controller `--out` reused across
/// sessions appended to) is refused, not trained on twice. Data without run ids (generated
/// or LeRobot datasets) is not tracked.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct DataRuns {
    runs: std::collections::BTreeMap<String, HeldRun>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct HeldRun {
    /// The dataset it was read from.
    dataset: PathBuf,
    episodes: Option<std::collections::BTreeSet<u32>>,
}

impl HeldRun {
    fn overlaps(&self, other: &HeldRun) -> bool {
        match (&self.episodes, &other.episodes) {
            (Some(a), Some(b)) => !a.is_disjoint(b),
            _ => true,
        }
    }
}

impl DataRuns {
    /// The runs of the finetune run at `dir`; none for a run without the file (a train
    /// or pretrain run, or one from before it was kept).
    fn of_run(dir: &Path) -> Result<Self> {
        let path = dir.join(DATA_RUNS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: unreadable", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The runs the dataset at `path` notes.
    fn of_dataset(path: &Path) -> Result<Self> {
        let read = || format!("{}: cannot read the dataset's runs", path.display());
        let mut runs = std::collections::BTreeMap::new();
        for id in dataset::noted_runs(path).with_context(read)? {
            let held = HeldRun {
                dataset: path.into(),
                episodes: None,
            };
            runs.insert(id, held);
        }
        for (id, episodes) in dataset::partial_runs(path).with_context(read)? {
            let held = HeldRun {
                dataset: path.into(),
                episodes: Some(episodes.into_iter().collect()),
            };
            runs.entry(id).or_insert(held);
        }
        Ok(DataRuns { runs })
    }

    /// The first run `other` holds that `self` holds too (in part: an episode of it), as
    /// (id, where `self` has it from).
    fn first_shared(&self, other: &DataRuns) -> Option<(&str, &Path)> {
        other.runs.iter().find_map(|(id, theirs)| {
            let (id, ours) = self.runs.get_key_value(id)?;
            ours.overlaps(theirs)
                .then_some((id.as_str(), ours.dataset.as_path()))
        })
    }

    fn add(&mut self, other: DataRuns) {
        for (id, theirs) in other.runs {
            match self.runs.get_mut(&id) {
                None => {
                    self.runs.insert(id, theirs);
                }
                Some(ours) => match (&mut ours.episodes, theirs.episodes) {
                    (Some(a), Some(b)) => a.extend(b),
                    (episodes, _) => *episodes = None,
                },
            }
        }
    }

    /// The runs of `o.from` and of every `o.data` dataset, each dataset's checked against
    /// the source's, the offline data's (mixed in) and those before it: a run held twice
    /// is an error naming the dataset, the run and where it is held already. Datasets
    /// are named by their canonical paths.
    fn gather(o: &FinetuneOptions, config: &crate::config::Config) -> Result<Self> {
        let source = Self::of_run(&o.from)?;
        let offline = match (&config.run.dataset, o.with_offline) {
            (Some(d), true) => Self::of_dataset(Path::new(d))?,
            _ => Self::default(),
        };
        let mut given = Self::default();
        let mut seen: Vec<PathBuf> = Vec::new();
        for path in &o.data {
            // The same directory twice, named two ways: canonical paths compared.
            let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            ensure!(
                !seen.contains(&canonical),
                "{}: given twice as --data: its transitions would be trained on twice",
                path.display()
            );
            seen.push(canonical.clone());
            let mut runs = Self::of_dataset(path)?;
            for held in runs.runs.values_mut() {
                held.dataset = canonical.clone();
            }
            for (whose, other) in [
                (format!("the run at {}", o.from.display()), &source),
                ("the run's offline data (run.dataset)".to_string(), &offline),
                ("another --data".to_string(), &given),
            ] {
                if let Some((id, from)) = other.first_shared(&runs) {
                    bail!(
                        "{}: holds controller run {id}, whose recordings {whose} holds \
                         already (from {}): it would be trained on twice. A dataset that \
                         grew across sessions (one controller --out reused) holds the earlier \
                         ones too: record each session into a new --out, and fine-tune on \
                         the new ones only",
                        path.display(),
                        from.display()
                    );
                }
            }
            given.add(runs);
        }
        let mut held = source;
        held.add(given);
        Ok(held)
    }
}

/// `--updates` when not given.
pub const DEFAULT_UPDATES: usize = 2000;

/// The updates a `finetune` run into `out` runs when `--updates` is not given: with
/// `--resume`, the count the run was last given, as it began or by a resume
/// ([`DEFAULT_UPDATES`] for a run that did not keep it, or that is not there yet), else
/// [`DEFAULT_UPDATES`]. A resume without `--updates` thus finishes the run as it was
/// asked to run, not at 2,000.
pub fn updates_for(out: &Path, resume: bool) -> usize {
    let began = || -> Option<usize> {
        let text = std::fs::read_to_string(out.join(OPTIONS_FILE)).ok()?;
        serde_json::from_str::<StartedWith>(&text).ok()?.updates
    };
    resume.then(began).flatten().unwrap_or(DEFAULT_UPDATES)
}

/// A warning when `from` is a fine-tune run that stopped short of the updates it was
/// given (killed, or stopped early): a run from it starts from its last checkpoint, at
/// `at` updates, which was taken without a word. (A live run ends when its robot goes
/// quiet, short of its count by design: not warned.)
fn unfinished_source(from: &Path, at: usize) -> Option<String> {
    let text = std::fs::read_to_string(from.join(OPTIONS_FILE)).ok()?;
    let began: StartedWith = serde_json::from_str(&text).ok()?;
    let asked = began.updates?;
    (!began.listen && at < asked).then(|| {
        // The resume that would finish it, with the options it began with (a resume
        // with others is refused).
        let mut resume = format!(
            "finetune --resume --from {} --out {}",
            began.from.display(),
            from.display()
        );
        if !began.with_offline {
            resume.push_str(" --no-offline");
        }
        if began.keep_interventions {
            resume.push_str(" --keep-interventions");
        }
        format!(
            "{} is a fine-tune run whose last checkpoint is at update {at} of the {asked} it \
             was given (killed, or stopped early?): the new run starts from that checkpoint \
             (`{resume}` would finish it first)",
            from.display()
        )
    })
}

impl StartedWith {
    fn of(o: &FinetuneOptions) -> Self {
        StartedWith {
            from: o.from.canonicalize().unwrap_or_else(|_| o.from.clone()),
            with_offline: o.with_offline,
            keep_interventions: o.keep_interventions,
            listen: o.listen.is_some(),
            updates: Some(o.updates),
        }
    }

    /// Keeps a resume's `--updates` as the run's count, so that the next resume without
    /// `--updates` runs to it ([`updates_for`]); a run from before this file was written
    /// has none to update.
    fn note_updates(o: &FinetuneOptions) -> Result<()> {
        let path = o.out.join(OPTIONS_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let mut then: StartedWith = serde_json::from_str(&text)
            .with_context(|| format!("{}: unreadable", path.display()))?;
        if then.updates == Some(o.updates) {
            return Ok(());
        }
        then.updates = Some(o.updates);
        // Never empty after a power cut: the next resume would refuse it as unreadable.
        crate::run::replace_file(&path, serde_json::to_string_pretty(&then)?.as_bytes())
    }

    /// Refuses a resume whose options differ from the run's (runs from before this
    /// file was written are not checked).
    fn check_resume(o: &FinetuneOptions) -> Result<()> {
        let path = o.out.join(OPTIONS_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let then: StartedWith = serde_json::from_str(&text)
            .with_context(|| format!("{}: unreadable", path.display()))?;
        let now = StartedWith::of(o);
        let flag = |on: bool, name: &str| {
            if on {
                format!("with {name}")
            } else {
                format!("without {name}")
            }
        };
        for (same, what, then_s, now_s) in [
            (
                then.with_offline == now.with_offline,
                "--no-offline",
                flag(!then.with_offline, "--no-offline"),
                flag(!now.with_offline, "--no-offline"),
            ),
            (
                then.keep_interventions == now.keep_interventions,
                "--keep-interventions",
                flag(then.keep_interventions, "--keep-interventions"),
                flag(now.keep_interventions, "--keep-interventions"),
            ),
            (
                then.listen == now.listen,
                "--listen",
                flag(then.listen, "--listen"),
                flag(now.listen, "--listen"),
            ),
        ] {
            ensure!(
                same,
                "{}: the run began {then_s}, --resume is {now_s}: resume it as it began ({what})",
                o.out.display()
            );
        }
        if let Some(began) = then.updates.filter(|&u| u != o.updates) {
            eprintln!(
                "note: {} was last given --updates {began}; --resume runs it to {}",
                o.out.display(),
                o.updates
            );
        }
        if then.from != now.from {
            eprintln!(
                "note: --resume continues {} from its checkpoint; --from {} is not read (the run began from {})",
                o.out.display(),
                o.from.display(),
                then.from.display()
            );
        }
        Ok(())
    }
}

/// Runs `finetune` (see the module documentation).
pub fn finetune(o: &FinetuneOptions, progress: &mut dyn Progress) -> Result<FinetuneSummary> {
    ensure!(
        o.updates > 0 || o.eval_episodes > 0,
        "nothing to do: --updates is 0"
    );
    // Before anything is written: the evaluation's size is checked.
    ensure!(
        o.eval_episodes <= crate::config::MAX_EVAL_EPISODES,
        "--eval-episodes {} is more than the {} an evaluation may run",
        o.eval_episodes,
        crate::config::MAX_EVAL_EPISODES
    );
    if let Some(i) = o.data.iter().position(|p| p.as_os_str().is_empty()) {
        // As `run.dataset = ""`: an unset shell variable read the current directory.
        bail!(
            "--data {} is empty: name a dataset directory the robot recorded",
            i + 1
        );
    }
    // The source run stays as it was, resumed or not.
    // (A resume never reads --from, which may be gone by then; a fresh run with a
    // missing --from is told so where its checkpoint is looked for.)
    if let (Ok(out), Ok(from)) = (o.out.canonicalize(), o.from.canonicalize())
        && out == from
    {
        bail!("--out must differ from --from (the source run stays as it was)");
    }
    let resumed = o.resume && crate::run::checkpoint_to_resume(&o.out)?.is_some();
    // A resumed run's directory is taken before its checkpoint is read; a new one's once
    // it is created, below.
    let mut _writing = if resumed {
        Some(crate::run::lock_run_dir(&o.out)?)
    } else {
        None
    };
    if resumed {
        // Only a finetune run is continued: a train or pretrain run's checkpoint would
        // otherwise be trained on and overwritten.
        ensure!(
            o.out.join("finetune.csv").exists(),
            "{} holds a checkpoint but no finetune.csv: it is not a finetune run (a train \
             or pretrain run?), and --resume continues only the finetune run written there",
            o.out.display()
        );
        StartedWith::check_resume(o)?;
    }
    let source = if resumed { &o.out } else { &o.from };
    let (mut agent, mut state, mut online) = load_run(source, o.device.as_deref())?;
    // Loading takes any `compute` settings (a new run from this one may differ); a
    // resume continues the run exactly, so only those that compute the same bits may
    // have changed in its config.toml (an edited candidate schedule went on as another
    // run without a word).
    if resumed
        && let Some((key, then, now)) = crate::run::difference_except_length(
            &state.config_toml,
            &agent.config,
            crate::run::ComputeMay::KeepResults,
        )?
    {
        bail!(
            "{}: `{key}` is {now}, but the run was checkpointed with {then}: --resume \
             continues the run as it ran (of `compute`, only threads, block_chains, replay \
             and graph may change)",
            o.out.join("config.toml").display()
        );
    }
    // Else the run would be written as finished short of its checkpoint (and a bundle
    // exported from it), with nothing said. (A fresh run counts from 0, whatever its
    // source's count.)
    ensure!(
        !resumed || o.updates >= state.finetune_updates,
        "{}: its checkpoint is at {} updates, and --updates {} ends the run before it: \
         give at least {}",
        o.out.display(),
        state.finetune_updates,
        o.updates,
        state.finetune_updates
    );
    let config = agent.config.clone();
    crate::device::check_trains_on(&config)?;
    ensure!(
        config.algo != crate::config::Algo::Bc,
        "{}: a `bc` run has no critic to fine-tune with rewards; fine-tune an expo or idql-select run",
        source.display()
    );
    // Refused before the port is bound: every publish would fail after the robot's
    // transitions were taken.
    ensure!(
        !(o.listen.is_some() && config.algo == crate::config::Algo::Rlpd),
        "{}: an rlpd run exports no bundle, so --listen could publish none to the robot; \
         fine-tune it from recorded data (--data)",
        source.display()
    );
    // Refused before the work, which `--bundle` would fail after.
    ensure!(
        !(o.exports_bundle && config.algo == crate::config::Algo::Rlpd),
        "{}: an rlpd run exports no bundle (the controller runs a diffusion policy); \
         fine-tune it without --bundle",
        source.display()
    );
    let (od, ad) = (agent.obs_dim, agent.act_dim);
    let mut summary = FinetuneSummary::default();
    if !resumed && let Some(w) = unfinished_source(&o.from, state.finetune_updates) {
        eprintln!("warning: {w}");
        summary.warnings.push(w);
    }
    let done = if resumed { state.finetune_updates } else { 0 };
    let left = o.updates.saturating_sub(done);
    if let Some(w) = base_policy_stops_learning(&agent, left) {
        eprintln!("warning: {w}");
        summary.warnings.push(w);
    }
    // A robot run has no simulator to evaluate in.
    let eval_episodes = if config.task.sim().is_some() {
        o.eval_episodes
    } else {
        if o.eval_episodes > 0 {
            eprintln!(
                "note: {} is a robot run (no simulator): no evaluation before and after; \
                 the robot's own success is in its datasets and `controller run` reports",
                source.display()
            );
        }
        0
    };
    ensure!(
        o.updates > 0 || eval_episodes > 0,
        "nothing to do: --updates is 0"
    );

    // Before anything is written: a refused run leaves no files that would block its retry.
    let offline = if o.with_offline {
        let offline = offline_data(&config)?.replay;
        // (Action widths are chunks of `action_horizon` steps: said per step.)
        let h = config.action_horizon.max(1);
        ensure!(
            (offline.obs_dim, offline.act_dim) == (od, ad),
            "the run's offline data ({}) now has observation dim {} and action dim {}, its \
             networks take {od} and {}",
            config.run.dataset.as_deref().unwrap_or("generated"),
            offline.obs_dim,
            offline.act_dim / h,
            ad / h
        );
        crate::run::check_offline_mark(
            &config,
            state.offline.as_ref(),
            &offline.mark(),
            "or pass --no-offline to fine-tune on the robot data alone",
        )?;
        offline
    } else {
        Replay::new(od, ad, 1)
    };
    if !resumed {
        // Before the run's directory is made: a run stopped to append them leaves none.
        let offline_dataset = config.run.dataset.as_deref().filter(|_| o.with_offline);
        for w in unsaved_robot_data(&o.data, offline_dataset.map(Path::new)) {
            eprintln!("warning: {w}");
            summary.warnings.push(w);
        }
        dataset::create_dir_durably(&o.out)
            .with_context(|| format!("creating {}", o.out.display()))?;
        _writing = Some(crate::run::lock_run_dir(&o.out)?);
        if !o.resume {
            ensure_no_run_in(&o.out)?;
        } else {
            crate::run::refuse_logs_of_another_command(&o.out, "finetune")?;
        }
        ensure!(
            !o.data.is_empty() || o.listen.is_some(),
            "no --data: give at least one recorded dataset (or --listen)"
        );
        let data_runs = DataRuns::gather(o, &config)?;
        let mut expected = RecordedBy::of(&agent);
        let (episodes, successes) = append_robot_data(
            &mut online,
            &o.data,
            &mut expected,
            Chunker::new(od, ad / config.action_horizon, config.chunks()),
            o.keep_interventions,
            &mut summary,
        )?;
        // A run whose own data recorded no action mapping takes the one its robot data
        // recorded (checkpoints keep it): its bundles carry it to the robot, and a
        // `--listen` stream recorded with another is refused. Observation names alike.
        if let Some(robot) = agent.robot.as_mut() {
            if let Some(m) = expected.action_mapping() {
                robot.take_action_mapping(m);
            }
            robot.take_observation_names(expected.observation_names());
        }
        summary.robot_episodes = episodes;
        summary.robot_success_rate = successes as f64 / episodes.max(1) as f64;
        // Else the run would "fine-tune" on the source run's own replay alone.
        ensure!(
            summary.replay_transitions > 0 || o.listen.is_some(),
            "--data gives no training transition: {} robot frames in {episodes} episodes, \
             {} left out as interventions, {} without a successor{}{}",
            summary.robot_transitions,
            summary.robot_interventions_left_out(),
            summary.robot_without_successor,
            non_finite_chunks_said(summary.chunks_non_finite, ", "),
            if config.action_horizon > 1 {
                format!(
                    ", and with action_horizon {} an episode needs that many frames in a row \
                     to make one",
                    config.action_horizon
                )
            } else {
                String::new()
            }
        );
        // The source run's replay holds the robot transitions it was streamed: its
        // stream logs come along, so that a robot still streaming (or run again with the
        // same `--out`) is told they are held, and sends only what is new.
        // Where the source's replay is in them; a source that never recorded it (an
        // older checkpoint, or a run that never listened) holds its logs whole. A log in
        // `out` the source does not have (a try that failed before its first
        // checkpoint) is in no replay: the session takes it from its start.
        if state.live_logs.is_none() {
            state.live_logs = Some(crate::live::held_whole(&o.from.join("uplink"))?);
        }
        for w in carry_uplink_logs(&o.from, &o.out)? {
            eprintln!("warning: {w}");
            summary.warnings.push(w);
        }
        state.finetune_updates = 0;
        // Updates the source run owed its robot transitions are not this run's.
        state.live_owed = 0;
        // The source run's own windows of metric sums are not this run's, nor its
        // training episodes since its last row (a `train --resume` here folded them into
        // its first row's success rate and return).
        state.metrics_window = None;
        state.finetune_metrics_window = None;
        state.episode_stats = (0, 0, 0.0);
        state.config_toml = config.to_toml();
        for (name, text) in [
            ("config.toml", config.to_toml()),
            (
                OPTIONS_FILE,
                serde_json::to_string_pretty(&StartedWith::of(o))?,
            ),
            (DATA_RUNS_FILE, serde_json::to_string_pretty(&data_runs)?),
        ] {
            // Synced: a power cut must not leave the first checkpoint beside an empty
            // options file, which every `--resume` would refuse.
            crate::run::replace_file(&o.out.join(name), text.as_bytes())?;
        }
        write_header(&o.out.join("finetune.csv"), UPDATES_HEADER)?;
        if eval_episodes > 0 {
            summary.before = Some(evaluate(&mut agent, eval_episodes, config.seed ^ 0xf1e7)?);
        }
    } else {
        // Rows logged after the checkpoint are logged again by the resumed run.
        let log = o.out.join("finetune.csv");
        if log.exists() {
            truncate_csv(&log, state.finetune_updates)?;
        }
        if let Some(window) = state.finetune_metrics_window.clone() {
            agent.resume_metrics(window);
        }
        StartedWith::note_updates(o)?;
        summary.resumed_at = Some(state.finetune_updates);
        if !o.data.is_empty() {
            eprintln!(
                "note: --resume continues with the replay saved in {}; --data is not read again",
                o.out.display()
            );
        }
    }
    // Its bundles' bounds hold what it trains on: the robot data appended, and a replay
    // checkpointed before fine-tuning widened them.
    if let Some(robot) = agent.robot.as_mut() {
        robot.widen_bounds(online.observations());
    }

    let offline_fraction = if o.with_offline {
        config.optim.offline_fraction
    } else {
        0.0
    };
    if let Some(live) = &o.listen {
        crate::live::train_live(
            o,
            live,
            &mut agent,
            &mut state,
            &mut online,
            (&offline, offline_fraction),
            &mut summary,
            progress,
        )?;
        // (Not after a stop by a signal: the person asked for the end, not for minutes
        // of evaluation.)
        let signalled = live
            .stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
        if eval_episodes > 0 && !signalled {
            summary.after = Some(evaluate(&mut agent, eval_episodes, config.seed ^ 0xf1e7)?);
        }
        return Ok(summary);
    }
    ensure!(!online.is_empty(), "no robot transitions to fine-tune on");

    let mut batch_rng = Rng::from_state(state.batch_rng);
    let mut rows = Vec::new();
    let start = state.finetune_updates;
    progress.phase("finetune", o.updates as u64);
    let log_every = o.log_every.max(1);
    let mut clock = Instant::now();
    for i in start..o.updates {
        draw_mixed(
            &mut batch_rng,
            &offline,
            &online,
            offline_fraction,
            config.optim.utd,
            config.optim.batch_size,
            &mut rows,
        );
        agent.train_step(StepBatch::Drawn {
            offline: &offline,
            online: &online,
            rows: &rows,
        })?;
        let done = i + 1;
        if done % log_every == 0 || done == o.updates {
            let critic_loss = log_updates_row(
                &o.out.join("finetune.csv"),
                &mut agent,
                done,
                clock.elapsed(),
            )?;
            progress.advance(done as u64, &format!("critic {critic_loss:.4}"));
            clock = Instant::now();
        }
        let at_checkpoint = o.checkpoint_every > 0 && done % o.checkpoint_every == 0;
        if at_checkpoint && done < o.updates {
            state.capture_agent(&agent, &batch_rng);
            state.capture_metrics_window(&mut agent, done, log_every);
            state.finetune_updates = done;
            write_checkpoint(&o.out, &agent, &online, &state)?;
            if o.stop_after.is_some_and(|s| done >= s) {
                summary.updates = done;
                summary.stopped_early = true;
                return Ok(summary);
            }
        }
    }
    state.capture_agent(&agent, &batch_rng);
    // The last update always ends a row; a resume that made none keeps the window it
    // restored (the next resume's row then averages every update since the last row).
    if o.updates > start {
        state.finetune_metrics_window = None;
    }
    state.finetune_updates = o.updates.max(start);
    write_checkpoint(&o.out, &agent, &online, &state)?;
    summary.updates = o.updates.max(start);
    if eval_episodes > 0 {
        summary.after = Some(evaluate(&mut agent, eval_episodes, config.seed ^ 0xf1e7)?);
    }
    Ok(summary)
}

/// What the run's own data looked like, to tell a dataset of another robot (of the
/// same sizes) from the run's.
pub struct RecordedBy {
    /// The robot's name (`robot_type`) for a robot run; simulated tasks' datasets are
    /// recorded under several names (`sim/push`, `sim-push`, a robot file's).
    robot: Option<String>,
    observation_names: Vec<String>,
    /// Compared for their order only ([`firmware_config::config::actions_reordered`]),
    /// with data that records an action mapping; empty where the run's data records none
    /// (a controller's recording from before 2026-12-07 named actions after the robot
    /// file's joints, whatever their order). A simulated task's are its own.
    action_names: Vec<String>,
    /// The rate the run's data was recorded at, Hz: one step is `1/fps` s for the
    /// discount, the action chunks and the critics' values.
    fps: Option<u32>,
    /// The simulated task of a run on one: its data must be of the default variant.
    sim_task: Option<sim::TaskId>,
    /// The robot file's action mapping the run's data was recorded with, where it
    /// recorded one, and whose it is (the run's data's, else the first `--data`
    /// dataset's that records one: [`RecordedBy::check`] takes it).
    action_mapping: Option<(dataset::ActionMapping, String)>,
}

impl RecordedBy {
    pub fn of(agent: &Agent) -> Self {
        match (&agent.robot, agent.config.task.sim()) {
            (Some(r), _) => RecordedBy {
                robot: Some(r.name.clone()),
                observation_names: r.observation_names.clone(),
                action_names: match r.action_mapping {
                    Some(_) if !r.action_mapping_taken => r.action_names.clone(),
                    _ => vec![],
                },
                fps: Some(r.fps),
                sim_task: None,
                action_mapping: r.action_mapping.clone().map(|m| {
                    let whose = match r.action_mapping_taken {
                        true => "the data the run took its action mapping from",
                        false => "the run's data",
                    };
                    (m, whose.to_string())
                }),
            },
            (None, Some(task)) => Self::of_sim_task(task),
            (None, None) => RecordedBy {
                robot: None,
                observation_names: vec![],
                action_names: vec![],
                fps: None,
                sim_task: None,
                action_mapping: None,
            },
        }
    }

    fn of_sim_task(task: sim::TaskId) -> Self {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        RecordedBy {
            robot: None,
            sim_task: Some(task),
            observation_names: names(task.spec().obs_names),
            action_names: task.spec().owned_action_names(),
            fps: Some(task.spec().control_hz),
            action_mapping: None,
        }
    }

    /// Observation names that differ (where both sides name them) are an error: the
    /// same sizes with other channels would train the networks on the wrong inputs. A
    /// robot of another name with the same channels is only a warning (a robot file
    /// renamed, demonstrations from another recorder), returned. Another recording rate
    /// is an error. Action names are compared for their order only (the same names at
    /// other positions are an error): the controller names actions by its robot file's
    /// `[action] names`, else `action.{i}` (before 2026-12-07 after the robot file's
    /// joints), other recorders otherwise (`shoulder` and `shoulder.pos`, or a simulated
    /// task's `vx_command`), for the same channels.
    ///
    /// Action mappings are compared where both record one (data recorded with another
    /// is an error); a run whose data recorded none compares each dataset with the
    /// first one that records one.
    fn check(&mut self, path: &Path, info: &dataset::DatasetInfo) -> Result<Vec<String>> {
        let mut warnings = vec![];
        if let Some(differ) = self.names_differ(&info.observation_names, "the dataset") {
            bail!("{}: {differ}", path.display());
        }
        let theirs = &info.observation_names;
        // (Before names are taken from it.)
        let names_compared = !dataset::unnamed_observations(theirs)
            && !dataset::unnamed_observations(&self.observation_names);
        if let Some(w) = self.adopt_names(theirs, &path.display().to_string()) {
            warnings.push(w);
        } else if !theirs.is_empty()
            && dataset::unnamed_observations(theirs)
            && !dataset::unnamed_observations(&self.observation_names)
        {
            let ours = &self.observation_names;
            warnings.push(format!(
                "{} names no observations ({} to {}): its values are taken as the run's \
                 ({}), in that order (not checked)",
                path.display(),
                theirs[0],
                theirs[theirs.len() - 1],
                ours.join(", ")
            ));
        }
        if let Some(e) = self.actions_reordered(
            &info.action_names,
            info.action_mapping.is_some(),
            "the dataset",
        ) {
            bail!("{}: {e}", path.display());
        }
        if let Some(differ) = self.rate_differs(info.fps) {
            bail!(
                "{}: {differ}; fine-tune on data recorded at the run's rate",
                path.display()
            );
        }
        if let Some(task) = self.sim_task {
            crate::robot::refuse_sim_variant(&path.display().to_string(), &info.robot_type, task)?;
        }
        if let Some(differ) = self.mapping_differs(info.action_mapping.as_ref(), "the dataset") {
            bail!(
                "{}: {differ}; fine-tune on data recorded with one mapping",
                path.display()
            );
        }
        self.adopt_mapping(info.action_mapping.as_ref(), &path.display().to_string());
        if let Some(robot) = &self.robot
            && info.robot_type.trim() != robot
        {
            warnings.push(format!(
                "{} was recorded by robot `{}`, the run was trained on `{robot}` ({}); \
                 fine-tuning on it",
                path.display(),
                info.robot_type.trim(),
                match names_compared {
                    true => "its observation names agree",
                    false => "observation names not compared: one side named none",
                }
            ));
        }
        Ok(warnings)
    }

    /// Takes `theirs` (the observation names of `whose`) for the run's where the run's
    /// data named none (a LeRobot recording without `names`: a reader made up
    /// `observation.state.{i}`), and compares later data with them. The first data that
    /// names them wins, whatever recorded it: a robot's recordings of the run's policy
    /// name the values it acted on (the robot ran it on its `Sensor` values in their
    /// order, whatever their names), but any named dataset given first does too. A
    /// robot run only (a simulated task's are its own); data that names none itself
    /// gives nothing. The warning saying so, when they were taken.
    pub fn adopt_names(&mut self, theirs: &[String], whose: &str) -> Option<String> {
        let ours = &self.observation_names;
        if self.robot.is_none()
            || ours.is_empty()
            || !dataset::unnamed_observations(ours)
            || dataset::unnamed_observations(theirs)
            || theirs.len() != ours.len()
        {
            return None;
        }
        let said = format!(
            "the run's data named no observations ({} to {}): the run takes the names of \
             {whose} for them, in their order ({}), compares later data with those, and its \
             checkpoints and bundles carry them",
            ours[0],
            ours[ours.len() - 1],
            theirs.join(", ")
        );
        self.observation_names = theirs.to_vec();
        Some(said)
    }

    /// The run's observation names, as its data gave them or as taken from later data
    /// ([`RecordedBy::adopt_names`]).
    pub fn observation_names(&self) -> &[String] {
        &self.observation_names
    }

    /// As a robot run's (tests).
    #[cfg(test)]
    pub(crate) fn on_robot(self, robot: &str) -> Self {
        RecordedBy {
            robot: Some(robot.into()),
            ..self
        }
    }

    /// Only observation names (tests).
    #[cfg(test)]
    pub(crate) fn named(observation_names: Vec<String>) -> Self {
        Self::named_at(observation_names, None)
    }

    /// Observation names and the data's rate (tests).
    #[cfg(test)]
    pub(crate) fn named_at(observation_names: Vec<String>, fps: Option<u32>) -> Self {
        RecordedBy {
            robot: None,
            observation_names,
            action_names: vec![],
            fps,
            sim_task: None,
            action_mapping: None,
        }
    }

    /// With the run's data's action names (tests).
    #[cfg(test)]
    pub(crate) fn acting(self, action_names: Vec<String>) -> Self {
        RecordedBy {
            action_names,
            ..self
        }
    }

    /// With the run's data's action mapping (tests).
    #[cfg(test)]
    pub(crate) fn mapped(self, action_mapping: dataset::ActionMapping) -> Self {
        RecordedBy {
            action_mapping: Some((action_mapping, "the run's data".into())),
            ..self
        }
    }

    /// A recording rate other than the run's data's, as an error message; `None` when
    /// they agree or the run's is not known.
    pub fn rate_differs(&self, fps: u32) -> Option<String> {
        crate::robot::other_rate(fps, self.fps?, "the run's data")
    }

    /// The action mapping `theirs` (of `whose`) against the run's data's, where both
    /// record one: the first action they map otherwise, as an error message. The
    /// actions are in policy units either way, but they meant other commands. (A
    /// simulated task's run has none, nor takes one: [`RecordedBy::adopt_mapping`].)
    pub fn mapping_differs(
        &self,
        theirs: Option<&dataset::ActionMapping>,
        whose: &str,
    ) -> Option<String> {
        let ((ours, ours_are), theirs) = (self.action_mapping.as_ref()?, theirs?);
        let i = ours.first_difference(theirs)?;
        Some(format!(
            "action [{i}] was recorded as {} in robot units in {whose}, as {} in {ours_are} \
             (the robot file's action.offset and action.scale): the same policy output \
             commanded the robot otherwise",
            theirs.describe(i),
            ours.describe(i)
        ))
    }

    /// Takes `theirs` (of `whose`, checked with [`RecordedBy::mapping_differs`]) as the
    /// mapping later data is compared with, where the run's data recorded none: two
    /// datasets (or streams) recorded with different mappings are not trained on
    /// together. Not for a simulated task: its firmware maps the commands back with the
    /// same robot file, so the mapping cancels out.
    pub fn adopt_mapping(&mut self, theirs: Option<&dataset::ActionMapping>, whose: &str) {
        if self.action_mapping.is_none()
            && self.sim_task.is_none()
            && let Some(m) = theirs
        {
            self.action_mapping = Some((m.clone(), whose.to_string()));
        }
    }

    /// The action mapping the run's data was recorded with, or the first other data
    /// recorded one ([`RecordedBy::adopt_mapping`]).
    pub fn action_mapping(&self) -> Option<&dataset::ActionMapping> {
        self.action_mapping.as_ref().map(|(m, _)| m)
    }

    /// `theirs` (action names of `whose`) holding one of the run's action names at
    /// another position, as an error message. Only names `whose` was given count: data
    /// that records an action mapping (`mapped`), or any against a simulated task.
    pub fn actions_reordered(
        &self,
        theirs: &[String],
        mapped: bool,
        whose: &str,
    ) -> Option<String> {
        if !mapped && self.sim_task.is_none() {
            return None;
        }
        let ours = &self.action_names;
        firmware_config::config::actions_reordered(ours, "the run's data", theirs, whose)
    }

    /// Where `theirs` (named by `whose`) first differs from the run's observation
    /// names, as an error message; `None` when they agree, or either side has none or
    /// only names a reader made up for data that named none (`observation.state.{i}`:
    /// they say nothing of the values; [`RecordedBy::adopt_names`]).
    pub fn names_differ(&self, theirs: &[String], whose: &str) -> Option<String> {
        let ours = &self.observation_names;
        if dataset::unnamed_observations(ours) || dataset::unnamed_observations(theirs) {
            return None;
        }
        let i = firmware_config::config::first_name_difference(ours, theirs)?;
        Some(format!(
            "observation names differ from the run's, first at [{i}] (`{}` in {whose}, `{}` \
             in the run): data of another robot or task? (the run's: {})",
            theirs[i],
            ours[i],
            ours.join(", ")
        ))
    }
}

/// Copies the stream logs of a live run at `from` (`from/uplink/*.log`) into
/// `out/uplink/`: a new run from it holds the transitions those logs hold (in the
/// source's replay), and a receiver tells a robot how many records it holds by its log
/// (without them, a robot whose log went on was told 0 and sent everything again,
/// which was trained on twice). Each copy is written under a temporary name and renamed
/// into place. A log still open for writing (the source run is still receiving) is
/// refused. Records a source logged after its last checkpoint (a crash) are taken from
/// the copies by the session that listens (`crate::live`), as on `--resume`, where the
/// source's checkpoint records how far its replay holds each log (one written before
/// that counts its logs as held whole); so are those of a log left in `out` by a try
/// that failed before its first checkpoint.
///
/// A log already in `out` (a fresh run, or a `--resume` that found no checkpoint there)
/// is one of such a try, which copied the source's and may have gone on receiving: one
/// that holds the source's whole records and more is kept (the session takes the rest
/// from it; the robot sent them once), one the source's goes on from is replaced, and
/// any other is kept aside as `NAME.log.kept-K` (never deleted), with a warning, which
/// this returns.
fn carry_uplink_logs(from: &Path, out: &Path) -> Result<Vec<String>> {
    let target = out.join("uplink");
    let mut warnings = vec![];
    for path in crate::live::stream_logs(&from.join("uplink"))? {
        // Under a shared lock: the receiver of a run still listening holds its log's
        // exclusive one, and would go on appending to the source after the copy.
        let mut src = open_unlocked_log(&path, from)?;
        let dest = target.join(path.file_name().expect("a file"));
        if dest.exists() {
            // Locked too: compared, then perhaps renamed.
            let _dest = open_unlocked_log(&dest, out)?;
            let valid = controller::robot_loop::log::log_valid_len(&path)?;
            // (A common prefix is no longer than either file.)
            let common = common_prefix_len(&path, &dest)?;
            if common >= valid {
                continue;
            }
            if common < file_len(&dest)? {
                let aside = free_name(&dest, "kept")?;
                std::fs::rename(&dest, &aside).with_context(|| {
                    format!("renaming {} to {}", dest.display(), aside.display())
                })?;
                warnings.push(format!(
                    "{}: a stream log of an earlier try in this directory that {} does not \
                     go on from, kept as {} (in no replay; its robot sends again what the \
                     source's log lacks while it still streams it)",
                    dest.display(),
                    path.display(),
                    aside.display()
                ));
            }
        }
        dataset::create_dir_durably(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let tmp = dest.with_extension("log.tmp");
        let mut copy =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        std::io::copy(&mut src, &mut copy)
            .and_then(|_| copy.sync_all())
            .with_context(|| format!("copying {} to {}", path.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    }
    // Synced, copies and names: this run's checkpoints count what the copies hold, and
    // a power cut that emptied one would have the robot send it all again, trained on
    // twice.
    if target.is_dir() {
        crate::run::sync_path(&target)?;
    }
    Ok(warnings)
}

/// `path` (a stream log of the run at `run`) opened under a shared lock; refused while a
/// receiver holds it open for writing.
fn open_unlocked_log(path: &Path, run: &Path) -> Result<std::fs::File> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    match file.try_lock_shared() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: the run at {} is still receiving this stream (its log is open for \
             writing): end it before starting a run from it or into it",
            path.display(),
            run.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read its length", path.display()))?
        .len())
}

/// How many bytes `a` and `b` begin with alike.
fn common_prefix_len(a: &Path, b: &Path) -> Result<u64> {
    use std::io::Read;
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("{}: cannot open", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    // 64 KiB a side: a log of days is compared without holding it in memory.
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut common = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        let n = na.min(nb);
        let same = ba[..n]
            .iter()
            .zip(&bb[..n])
            .take_while(|(x, y)| x == y)
            .count();
        common += same as u64;
        if same < n || na != nb || n == 0 {
            return Ok(common);
        }
    }
    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}

/// The first of `PATH.WHAT-1`, `PATH.WHAT-2`, ... that does not exist.
fn free_name(path: &Path, what: &str) -> Result<PathBuf> {
    for k in 1..10_000 {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{what}-{k}"));
        let candidate = PathBuf::from(name);
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("{}: no free name to keep it aside under", path.display())
}

/// Appends the frames of the recorded datasets to `online` (intervention frames only
/// with `keep_interventions`), counting frames in `summary`; returns (episodes,
/// successful episodes).
///
/// With action chunks, a frame left out cuts its episode's chunks there
/// ([`Chunker::cut`]).
fn append_robot_data(
    online: &mut Replay,
    data: &[PathBuf],
    expected: &mut RecordedBy,
    mut chunker: Chunker,
    keep_interventions: bool,
    summary: &mut FinetuneSummary,
) -> Result<(usize, usize)> {
    let (od, ad) = (online.obs_dim, online.act_dim / chunker.spec().horizon);
    let (mut episodes, mut successes) = (0, 0);
    for path in data {
        let ds = crate::robot::read_training_dataset(path, Some((od, ad)))?;
        for w in expected.check(path, &ds.info)? {
            eprintln!("warning: {w}");
            summary.warnings.push(w);
        }
        let consequence = "fine-tuning on it teaches the critics nothing about success";
        if let Some(w) = crate::run::no_reward_warning(
            &path.display().to_string(),
            &ds,
            consequence,
            keep_interventions,
        ) {
            eprintln!("warning: {w}");
            summary.warnings.push(w);
        }
        let taken_before = summary.replay_transitions;
        for ep in &ds.episodes {
            chunker.cut();
            let n = ds.frames_with_successor(ep);
            summary.robot_transitions += ep.len() - n;
            summary.robot_without_successor += ep.len() - n;
            for i in 0..n {
                summary.robot_transitions += 1;
                if !summary.admit(ep.intervention[i], ep.teleop[i], keep_interventions) {
                    chunker.cut();
                    continue;
                }
                summary.replay_transitions += chunker.push_frame(online, ep, i, n);
            }
            successes += ep.success.iter().any(|&s| s) as usize;
        }
        // (The chunker goes on over the next dataset: its count is the total so far.)
        summary.chunks_non_finite = chunker.non_finite_rewards();
        if let Some(w) = crate::run::chunks_cut_by_gaps(
            &path.display().to_string(),
            &ds,
            chunker.spec().horizon,
            summary.replay_transitions - taken_before,
        ) {
            eprintln!("warning: {w}");
            summary.warnings.push(w);
        }
        episodes += ds.episodes.len();
    }
    Ok((episodes, successes))
}

/// The action chunks of the robot data (`--data` and streams) left out for a reward
/// sum that is not finite, after `sep`; nothing for none.
fn non_finite_chunks_said(n: usize, sep: &str) -> String {
    match n {
        0 => String::new(),
        n => format!(
            "{sep}{n} action chunks of the robot data (--data and streams) left out: their \
             rewards' discounted sum is not finite"
        ),
    }
}

/// One summary line for the CLI.
pub fn describe(s: &FinetuneSummary) -> String {
    let eval = |e: &Option<EvalResult>| {
        e.as_ref().map_or("-".to_string(), |e| {
            format!("{:.1}%", 100.0 * e.success_rate)
        })
    };
    let data = if s.streamed > 0 || !s.published.is_empty() {
        let unusable = match s.streamed_unusable {
            0 => String::new(),
            n => format!(" ({n} not trained on: a value not finite or an action outside [-1, 1])"),
        };
        format!(
            "{} transitions streamed by the robot{unusable}, {} bundles published",
            s.streamed,
            s.published.len()
        )
    } else if let Some(at) = s.resumed_at {
        // The dataset (or the stream) was not read again: its counts are the earlier
        // sessions' (said then), not 0.
        format!(
            "the replay saved at update {at} (resumed; the robot data in it was counted \
             by the sessions before)"
        )
    } else {
        let no_successor = match s.robot_without_successor {
            0 => String::new(),
            n => format!(", {n} last frames without a successor left out"),
        };
        format!(
            "{} robot transitions ({} episodes, {:.1}% successful, {} marked interventions, {} teleoperated{no_successor}; {} training transitions)",
            s.robot_transitions,
            s.robot_episodes,
            100.0 * s.robot_success_rate,
            s.robot_interventions,
            s.robot_teleop,
            s.replay_transitions
        )
    };
    let non_finite = non_finite_chunks_said(s.chunks_non_finite, "; ");
    format!(
        "{} updates on {data}; sim success before {}, after {}{non_finite}",
        s.updates,
        eval(&s.before),
        eval(&s.after)
    )
}

impl RunState {
    /// Refreshes the generator states and counters from `agent` (networks are saved
    /// separately by `write_checkpoint`).
    pub(crate) fn capture_agent(&mut self, agent: &Agent, batch_rng: &Rng) {
        self.batch_rng = batch_rng.state();
        self.train_rng = agent.train_rng.state();
        self.act_rng = agent.act_rng.state();
        self.denoiser_updates = agent.denoiser_updates;
        self.normalizer = agent.normalizer.clone();
        // (The action mapping a fine-tune took from its robot data.)
        self.robot = agent.robot.clone();
    }

    /// The metrics summed since the last `finetune.csv` row, when `done` updates did not
    /// just end one, so that a resumed run's next row averages the same updates as an
    /// uninterrupted run's (as `train` keeps its `metrics.csv` window).
    pub(crate) fn capture_metrics_window(
        &mut self,
        agent: &mut Agent,
        done: usize,
        log_every: usize,
    ) {
        self.finetune_metrics_window = (!done.is_multiple_of(log_every)).then(|| {
            let window = agent.take_metrics();
            agent.restore_metrics(window.clone());
            window
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream log at `path` of `steps` transitions, the first at `first`.
    fn write_stream_log(path: &Path, first: u32, steps: u32) {
        use controller::robot_loop::log::{LogWriter, Record, Transition};
        use firmware_config::protocol::MAX_OBS;
        let mut w = LogWriter::open(path).unwrap();
        for step in first..first + steps {
            w.append(&Record::Transition(Transition {
                step,
                obs_dim: 3,
                act_dim: 2,
                obs: [step as f32; MAX_OBS],
                next_obs: [step as f32 + 1.0; MAX_OBS],
                ..Default::default()
            }))
            .unwrap();
        }
        w.sync().unwrap();
    }

    /// A stream log already in `out` (a try from the same source that failed before its
    /// first checkpoint) is never lost to the source's copy: one that goes on from the
    /// source's is kept (it was replaced by the shorter copy, and its records were lost
    /// where the robot no longer streamed them), one that does not is kept aside, and
    /// one the source's goes on from is replaced.
    #[test]
    fn carrying_stream_logs_loses_none_already_in_out() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, out) = (tmp.path().join("from"), tmp.path().join("out"));
        for d in [&from, &out] {
            std::fs::create_dir_all(d.join("uplink")).unwrap();
        }
        let log = |run: &Path, name: &str| run.join("uplink").join(name);
        let bytes = |p: &Path| std::fs::read(p).unwrap();
        // "longer": the try received 2 records more; "shorter": the source's goes on;
        // "other": the try's differs; "torn": the source's ends in a torn record, which
        // the try's writer cut off before it went on; "new": only in the source.
        for name in [
            "longer.log",
            "shorter.log",
            "other.log",
            "torn.log",
            "new.log",
        ] {
            write_stream_log(&log(&from, name), 0, 3);
        }
        std::fs::copy(log(&from, "longer.log"), log(&out, "longer.log")).unwrap();
        write_stream_log(&log(&out, "longer.log"), 3, 2);
        write_stream_log(&log(&out, "shorter.log"), 0, 2);
        write_stream_log(&log(&out, "other.log"), 7, 3);
        std::fs::copy(log(&from, "torn.log"), log(&out, "torn.log")).unwrap();
        write_stream_log(&log(&out, "torn.log"), 3, 1);
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(log(&from, "torn.log"))
            .unwrap();
        std::io::Write::write_all(&mut torn, &[0x5a; 5]).unwrap();
        drop(torn);
        let (longer, torn, other) = (
            bytes(&log(&out, "longer.log")),
            bytes(&log(&out, "torn.log")),
            bytes(&log(&out, "other.log")),
        );

        let warnings = carry_uplink_logs(&from, &out).unwrap();
        assert_eq!(bytes(&log(&out, "longer.log")), longer);
        assert_eq!(bytes(&log(&out, "torn.log")), torn);
        for name in ["shorter.log", "other.log", "new.log"] {
            assert_eq!(bytes(&log(&out, name)), bytes(&log(&from, name)), "{name}");
        }
        let aside = log(&out, "other.log.kept-1");
        assert_eq!(bytes(&aside), other);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("other.log") && warnings[0].contains("other.log.kept-1"),
            "{warnings:?}"
        );
        // Set aside is not a stream log: no session takes it for one.
        let logs = crate::live::stream_logs(&out.join("uplink")).unwrap();
        assert_eq!(logs.len(), 5, "{logs:?}");
        // Carried again (a second fresh try): nothing changes, nothing more set aside.
        assert!(carry_uplink_logs(&from, &out).unwrap().is_empty());
        assert_eq!(bytes(&log(&out, "longer.log")), longer);
        assert!(!log(&out, "other.log.kept-2").exists());
    }

    /// `finetune --data` on a simulated task refuses data of another variant of it
    /// (`--gravity`, `--reward dense`), as `train` does.
    #[test]
    fn finetune_data_of_another_sim_variant_is_refused() {
        let task = sim::TaskId::ArmReach;
        let mut expected = RecordedBy {
            robot: None,
            observation_names: vec![],
            action_names: vec![],
            fps: None,
            sim_task: Some(task),
            action_mapping: None,
        };
        let info = |robot_type: &str| dataset::DatasetInfo {
            robot_type: robot_type.into(),
            fps: 20,
            task: String::new(),
            observation_names: vec![],
            action_names: vec![],
            action_mapping: None,
        };
        let path = Path::new("demos");
        expected.check(path, &info("sim/arm-reach")).unwrap();
        let e = expected
            .check(path, &info("sim/arm-reach+gravity"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("demos: recorded as `sim/arm-reach+gravity`"),
            "{e}"
        );
        // Recorded through the controller against `sim-firmware --gravity --reward
        // dense`: named after its robot file, which the simulated firmware has end in
        // the options. It passed, and was trained on as the default arm-reach.
        let e = expected
            .check(path, &info("sim-arm-reach+gravity+dense"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recorded as `sim-arm-reach+gravity+dense`")
                && e.contains("(options `gravity+dense`)"),
            "{e}"
        );
        expected.check(path, &info("sim-arm-reach")).unwrap();
        expected.check(path, &info("lab-arm")).unwrap();
    }

    /// Data recorded at another rate than the run's is refused: it was trained on, each
    /// step taken as the run's length of time.
    #[test]
    fn finetune_data_of_another_rate_is_refused() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut expected = RecordedBy {
            robot: Some("lab-arm".into()),
            observation_names: names(&["q0", "q1"]),
            action_names: names(&["shoulder", "elbow"]),
            fps: Some(20),
            sim_task: None,
            action_mapping: None,
        };
        let info = |fps: u32| dataset::DatasetInfo {
            robot_type: "lab-arm".into(),
            fps,
            task: String::new(),
            observation_names: names(&["q0", "q1"]),
            action_names: names(&["shoulder", "elbow"]),
            action_mapping: None,
        };
        let path = Path::new("robot-data");
        assert!(expected.check(path, &info(20)).unwrap().is_empty());
        let e = expected.check(path, &info(50)).unwrap_err().to_string();
        assert!(
            e.contains("robot-data: recorded at 50 Hz, the run's data at 20 Hz"),
            "{e}"
        );
        // The simulated task's rate is its data's (maze steps at 10 Hz).
        let mut maze = RecordedBy::of_sim_task(sim::TaskId::Maze);
        let e = maze
            .check(
                path,
                &dataset::DatasetInfo {
                    robot_type: "sim/maze".into(),
                    fps: 20,
                    task: String::new(),
                    observation_names: vec![],
                    action_names: vec![],
                    action_mapping: None,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recorded at 20 Hz, the run's data at 10 Hz"),
            "{e}"
        );
    }

    /// Data whose actions are the run's in another order is refused, naming the action
    /// and both positions (their values would be trained on as the other joints'); other
    /// spellings of them, and data that names none, are taken. So is a simulated task's
    /// data of its own actions' order.
    #[test]
    fn finetune_data_with_the_actions_in_another_order_is_refused() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut expected = RecordedBy {
            robot: Some("lab-arm".into()),
            observation_names: names(&["q0", "q1"]),
            action_names: names(&["shoulder", "elbow"]),
            fps: Some(20),
            sim_task: None,
            action_mapping: None,
        };
        // Recorded since 2026-12-07: with the robot file's action mapping.
        let info = |actions: &[&str]| dataset::DatasetInfo {
            robot_type: "lab-arm".into(),
            fps: 20,
            task: String::new(),
            observation_names: names(&["q0", "q1"]),
            action_names: names(actions),
            action_mapping: Some(dataset::ActionMapping {
                scale: vec![1.0, 1.0],
                offset: vec![0.0, 0.0],
            }),
        };
        let path = Path::new("robot-data");
        let e = expected
            .check(path, &info(&["elbow", "shoulder"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "robot-data: action `elbow` is at [0] in the dataset and at [1] in the run's \
                 data: the same actions in another order"
            ),
            "{e}"
        );
        for taken in [
            &["shoulder.pos", "elbow.pos"][..],
            &["action.0", "action.1"],
            &[],
        ] {
            expected.check(path, &info(taken)).unwrap();
        }
        // Data that records no action mapping (a controller's from before 2026-12-07,
        // which named actions after the robot file's joints) is not compared.
        let old = dataset::DatasetInfo {
            action_mapping: None,
            ..info(&["elbow", "shoulder"])
        };
        expected.check(path, &old).unwrap();
        let mut push = RecordedBy::of_sim_task(sim::TaskId::Push);
        let mut sim = info(&["vy_command", "vx_command"]);
        (sim.robot_type, sim.observation_names) = ("sim/push".into(), vec![]);
        // (`tools dataset generate` records no mapping: a task's names are its own.)
        sim.action_mapping = None;
        let e = push.check(path, &sim).unwrap_err().to_string();
        assert!(e.contains("action `vy_command` is at [0]"), "{e}");
        sim.action_names.reverse();
        push.check(path, &sim).unwrap();
    }

    /// Data recorded with another action mapping than the run's data (a robot file's
    /// `action.scale`/`offset` changed in between) is refused, naming the action; data
    /// that records none (an older controller, another recorder) is taken.
    #[test]
    fn finetune_data_of_another_action_mapping_is_refused() {
        let mapping = |scale: f32| dataset::ActionMapping {
            scale: vec![scale, 1.0],
            offset: vec![0.0, 0.0],
        };
        let mut expected = RecordedBy::named_at(vec![], Some(20)).mapped(mapping(0.5));
        let info = |action_mapping| dataset::DatasetInfo {
            robot_type: "lab-arm".into(),
            fps: 20,
            task: String::new(),
            observation_names: vec![],
            action_names: vec![],
            action_mapping,
        };
        let path = Path::new("robot-data");
        expected.check(path, &info(Some(mapping(0.5)))).unwrap();
        expected.check(path, &info(None)).unwrap();
        let e = expected
            .check(path, &info(Some(mapping(0.25))))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "robot-data: action [0] was recorded as 0 + 0.25 × a in robot units in the \
                 dataset, as 0 + 0.5 × a in the run's data"
            ),
            "{e}"
        );
        // A run whose data recorded none compares the datasets with each other: two
        // mappings are not trained on together.
        let mut unmapped = RecordedBy::named_at(vec![], Some(20));
        unmapped.check(Path::new("old"), &info(None)).unwrap();
        unmapped
            .check(Path::new("first"), &info(Some(mapping(0.5))))
            .unwrap();
        let e = unmapped
            .check(Path::new("second"), &info(Some(mapping(0.25))))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0 + 0.25 × a in robot units in the dataset, as 0 + 0.5 × a in first"),
            "{e}"
        );
        // A simulated task's data is compared with nothing: the simulated firmware maps
        // commands back with the same robot file.
        let mut sim = RecordedBy::of_sim_task(sim::TaskId::Push);
        let info = |action_mapping| dataset::DatasetInfo {
            fps: 20,
            ..info(action_mapping)
        };
        sim.check(Path::new("a"), &info(Some(mapping(0.5))))
            .unwrap();
        sim.check(Path::new("b"), &info(Some(mapping(0.25))))
            .unwrap();
    }
}
