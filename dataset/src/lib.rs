//! On-disk episode format of the project: reading, writing and validating RL
//! episodes as a [LeRobotDataset v3.0](https://github.com/huggingface/lerobot)
//! directory. `tools` (generate/inspect/validate) write and check datasets,
//! `trainer` reads them as offline data, and `controller` appends the episodes
//! it records with [`DatasetWriter::open_append`]. Each writer session puts its
//! episodes in new data files (rolling over at ~100 MB) and never rewrites
//! existing ones. [`DatasetWriter::finish`] rewrites each file of `meta/` atomically
//! (temp file + rename), `info.json` last: its totals are the commit point. A writer
//! stopped between those renames leaves an index and a task list longer than the totals
//! say, and readers take only their first rows, so the dataset reads as before the
//! session. The next [`DatasetWriter::open_append`] drops those rows and moves the data
//! files no episode references (a writer stopped before its commit) into
//! `unreferenced/`: LeRobot's loader reads every `data/*/*.parquet`. Parquet files are
//! written with snappy compression, one row group per episode (up to about a million
//! frames); vector features are `FixedSizeList<float32>`, one-value ones plain
//! `float32` as LeRobot loads a shape of `[1]` (the reader also accepts
//! `List`/`LargeList` and float64, as written by pyarrow / HF `datasets`).
//!
//! ```text
//! DIR/
//! ├── meta/
//! │   ├── info.json            codebase_version "v3.0", totals, fps, features {dtype, shape, names}
//! │   ├── stats.json           per feature: {min, max, mean, std (population), count: [N]}
//! │   ├── tasks.parquet        task_index (int64), task (string; pandas index)
//! │   └── episodes/chunk-000/file-000.parquet
//! │                            one row per episode: episode_index, tasks, length,
//! │                            data/chunk_index, data/file_index,
//! │                            dataset_from_index, dataset_to_index (global frames, [from, to)),
//! │                            meta/episodes/{chunk,file}_index, success, return (ours)
//! ├── data/chunk-000/file-000.parquet, file-001.parquet, ...   (1000 files per chunk)
//! │                            one row per frame (step), columns below
//! └── unreferenced/chunk-000/… data files no episode referenced, set aside (ours)
//! ```
//!
//! Data columns (one row = one environment step `t`):
//!
//! | column                   | type            | meaning |
//! |--------------------------|-----------------|---------|
//! | `observation.state`      | `f32 [obs_dim]` | observation before the step |
//! | `next.observation.state` | `f32 [obs_dim]` | observation after the step (**our extension**, so RL can bootstrap the last frame of a truncated episode) |
//! | `action`                 | `f32 [act_dim]` | action taken |
//! | `next.reward`            | `f32 [1]`       | reward of the step |
//! | `next.done`              | `bool [1]`      | the episode ended at this step: terminated OR truncated (LeRobot: true on the last frame) |
//! | `next.truncated`         | `bool [1]`      | ended by time limit / operator (no terminal state reached) |
//! | `next.success`           | `bool [1]`      | success flag after the step |
//! | `timestamp`              | `f32 [1]`       | `frame_index / fps`, seconds |
//! | `frame_index`, `episode_index`, `index`, `task_index` | `i64 [1]` | position in episode, episode, global frame, task |
//! | `intervention`           | `bool [1]`      | the operator intervened in this frame (robot logs; optional, **ours**) |
//! | `teleop`                 | `bool [1]`      | the action came from a teleop device (robot logs; optional, **ours**) |
//!
//! Semantics on read: `terminated = next.done && !next.truncated`, so a frame is
//! never both terminated and truncated ([`Episode::check`] rejects that on write).
//! Datasets recorded by LeRobot lack some `next.*` columns; the reader then derives:
//! - no `next.observation.state`: the following frame's observation; on the last
//!   frame, the frame's own observation (i.e. no real successor is known:
//!   [`Dataset::frames_with_successor`] tells training to leave that frame out unless
//!   it is terminal);
//! - no `next.done`: never done;
//! - no `next.truncated`: false, except the last frame, which is truncated unless it is
//!   both done and a success (`next.success`): LeRobot marks every episode's last frame
//!   done however it ended, so only a success says a terminal state was reached there
//!   (an episode cut by a time limit must not be taken as terminal);
//! - no `next.reward`: 0; no `next.success`: false.
//!
//! Only an episode's last frame may be done or truncated, a truncated frame must be
//! done, and where both columns exist the last frame must be done (the rules the writer
//! applies, [`Episode::check`]); the reader refuses other flags, naming the row.
//!
//! The reader never panics on malformed input: every problem is a
//! [`DatasetError`] naming the file, the column and what was expected.

mod arrow_io;
mod error;
mod meta;
mod reader;
mod stats;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use error::DatasetError;
pub use reader::{episode_tasks, held_out_episodes, read_dataset, validate_dataset};
pub use writer::{
    DatasetWriter, MAX_NOTED_RUNS, NOTED_RUNS, Recorded, Tidied, UNREFERENCED_DIR,
    committed_episodes, dataset_splits, foreign_features, noted_runs, partial_runs, recorded_as,
    run_started, tidy, write_dataset, write_dataset_as,
};

/// The process id, the time and a count of the calls in this process: a name part no
/// other writer, here, in this process or in another container sharing the directory
/// (whose pid may be 1 too), has used (staging names of datasets and recordings).
pub fn unique_id() -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Syncs a directory's entries (new names, renames), so that they survive a power cut.
/// Filesystems that cannot sync a directory (EINVAL, ENOTSUP) are let pass: there is
/// nothing more to do on them. Only on Unix, where a directory can be opened and synced.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        const EINVAL: i32 = 22;
        const ENOTSUP: i32 = 95;
        match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            Err(e) if !matches!(e.raw_os_error(), Some(EINVAL | ENOTSUP)) => return Err(e),
            _ => {}
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `dir` and its missing ancestors, syncing the parent of each one created:
/// what is written inside gets synced, and without the new directory's own entry a
/// power cut could lose the whole of it (a new dataset, a training run with its
/// checkpoints, a robot run's log) on a filesystem that does not order metadata.
pub fn create_dir_durably(dir: &std::path::Path) -> std::io::Result<()> {
    let created: Vec<&std::path::Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::create_dir_all(dir)?;
    for d in created {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// The largest action magnitude a dataset for training may hold. Actions are in the
/// policy's units, `[-1, 1]` per dimension (what `controller run` records); the margin is
/// float round-off, of a conversion from the robot's units say.
pub const POLICY_ACTION_LIMIT: f32 = 1.0 + 1e-4;

/// The first of `actions` (flat, any number of frames) whose magnitude exceeds
/// [`POLICY_ACTION_LIMIT`] (actions in the robot's units, not the policy's) or that is
/// NaN (no range holds it).
pub fn outside_policy_range(actions: &[f32]) -> Option<usize> {
    actions
        .iter()
        .position(|a| a.is_nan() || a.abs() > POLICY_ACTION_LIMIT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn outside_policy_range_catches_nan_and_infinity() {
        use super::outside_policy_range as outside;
        assert_eq!(outside(&[0.0, -1.0, 1.0, 1.00005]), None);
        assert_eq!(outside(&[0.5, 1.01]), Some(1));
        assert_eq!(outside(&[0.5, f32::NAN, 2.0]), Some(1));
        assert_eq!(outside(&[f32::NEG_INFINITY]), Some(0));
    }

    /// Mappings differ at the first action mapped otherwise, or mapped on one side only
    /// (a hand-made log's lists can be short); a zero's sign is no difference.
    #[test]
    fn action_mappings_differ_where_an_action_maps_otherwise() {
        let m = |scale: &[f32], offset: &[f32]| super::ActionMapping {
            scale: scale.to_vec(),
            offset: offset.to_vec(),
        };
        let two = m(&[1.0, 2.0], &[0.0, 0.5]);
        assert_eq!(two.first_difference(&two), None);
        assert_eq!(two.first_difference(&m(&[1.0, 2.0], &[-0.0, 0.5])), None);
        assert_eq!(two.first_difference(&m(&[1.0, 2.5], &[0.0, 0.5])), Some(1));
        assert_eq!(two.first_difference(&m(&[1.0, 2.0], &[0.1, 0.5])), Some(0));
        assert_eq!(two.first_difference(&m(&[1.0], &[0.0])), Some(1));
        assert_eq!(m(&[1.0], &[0.0]).describe(1), "nothing");
        assert_eq!(two.describe(1), "0.5 + 2 × a");
        assert_eq!(two.invalid(2), None);
        assert_eq!(
            two.invalid(3).as_deref(),
            Some("holds 2 scales and 2 offsets for 3 actions")
        );
        assert_eq!(
            m(&[1.0, f32::INFINITY], &[0.0, 0.0]).invalid(2).as_deref(),
            Some("holds a number that is not finite at [1]")
        );
    }
}

/// Whether `names` are the ones a reader makes up for a feature `key` whose
/// `info.json` names none (`{key}.{i}`, as [`read_dataset`] fills them in): they say
/// nothing of what the values are.
pub fn made_up_names(key: &str, names: &[String]) -> bool {
    names
        .iter()
        .enumerate()
        .all(|(i, n)| *n == format!("{key}.{i}"))
}

/// Action names that say nothing of the actions: a reader's `action.{i}`
/// ([`made_up_names`]), or the `a{i}` of a controller's recording before 2026-12-07
/// (when its robot file had not one joint per action).
pub fn unnamed_actions(names: &[String]) -> bool {
    made_up_names(cols::ACTION, names)
        || names.iter().enumerate().all(|(i, n)| *n == format!("a{i}"))
}

/// Observation names that say nothing of the values: a reader's `observation.state.{i}`
/// for data that named none ([`made_up_names`]; an empty list too).
pub fn unnamed_observations(names: &[String]) -> bool {
    made_up_names(cols::OBS, names)
}

/// Column / feature names used in data files and `info.json`.
pub mod cols {
    pub const OBS: &str = "observation.state";
    pub const NEXT_OBS: &str = "next.observation.state";
    pub const ACTION: &str = "action";
    pub const REWARD: &str = "next.reward";
    pub const DONE: &str = "next.done";
    pub const TRUNCATED: &str = "next.truncated";
    pub const SUCCESS: &str = "next.success";
    /// The operator was intervening during this frame (teleop or a hand on the arm);
    /// optional on read (absent: `false`).
    pub const INTERVENTION: &str = "intervention";
    /// The action came from a teleop device (`controller run --teleop`): a person's
    /// command, and what the robot was sent; optional on read (absent: `false`).
    pub const TELEOP: &str = "teleop";
    pub const TIMESTAMP: &str = "timestamp";
    pub const FRAME_INDEX: &str = "frame_index";
    pub const EPISODE_INDEX: &str = "episode_index";
    pub const INDEX: &str = "index";
    pub const TASK_INDEX: &str = "task_index";

    /// Features this crate writes, in column order.
    pub const ALL: &[&str] = &[
        OBS,
        NEXT_OBS,
        ACTION,
        REWARD,
        DONE,
        TRUNCATED,
        SUCCESS,
        INTERVENTION,
        TELEOP,
        TIMESTAMP,
        FRAME_INDEX,
        EPISODE_INDEX,
        INDEX,
        TASK_INDEX,
    ];
    /// Features a dataset must have (LeRobot always writes these).
    pub const REQUIRED: &[&str] = &[
        OBS,
        ACTION,
        TIMESTAMP,
        FRAME_INDEX,
        EPISODE_INDEX,
        INDEX,
        TASK_INDEX,
    ];
    /// Features whose statistics this crate computes and checks.
    pub const STATS_FEATURES: &[&str] = &[
        OBS,
        NEXT_OBS,
        ACTION,
        REWARD,
        TIMESTAMP,
        FRAME_INDEX,
        EPISODE_INDEX,
        INDEX,
    ];
}

/// Dataset-wide description, stored in `meta/info.json` and `meta/tasks.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    /// e.g. `"sim/arm-reach"`.
    pub robot_type: String,
    /// Control rate in Hz (frames per second).
    pub fps: u32,
    /// Natural-language task description (task 0 in `meta/tasks.parquet`).
    pub task: String,
    /// Names of the `observation.state` dimensions.
    pub observation_names: Vec<String>,
    /// Names of the `action` dimensions.
    pub action_names: Vec<String>,
    /// How the actions, in policy units, were mapped to the robot's commands when they
    /// were recorded (`info.json` key [`ACTION_MAPPING`]); `None` where nothing recorded
    /// it (data from before 2026-12-07, other recorders, simulated tasks).
    pub action_mapping: Option<ActionMapping>,
}

/// The `info.json` key of [`DatasetInfo::action_mapping`].
pub const ACTION_MAPPING: &str = "expo_action_mapping";

/// The robot file's `action.scale` and `action.offset` a recording was made with:
/// `robot = offset + scale × action` for each action dimension. The actions stored are
/// in policy units either way; this says what they meant on the robot, so that a robot
/// file whose mapping changed since is caught before a policy trained on them drives it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionMapping {
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
}

impl ActionMapping {
    /// `Some` when both lists are given (a log of an older controller has neither).
    pub fn recorded(scale: &[f32], offset: &[f32]) -> Option<ActionMapping> {
        (!scale.is_empty() && !offset.is_empty()).then(|| ActionMapping {
            scale: scale.to_vec(),
            offset: offset.to_vec(),
        })
    }

    /// Why this cannot be the mapping of `dim` actions, if it cannot: other lengths, a
    /// number that is not finite, a scale of 0 (no robot file passes its checks so).
    pub fn invalid(&self, dim: usize) -> Option<String> {
        if self.scale.len() != dim || self.offset.len() != dim {
            return Some(format!(
                "holds {} scales and {} offsets for {dim} actions",
                self.scale.len(),
                self.offset.len()
            ));
        }
        let bad = |v: &[f32]| v.iter().position(|x| !x.is_finite());
        if let Some(i) = bad(&self.scale).or(bad(&self.offset)) {
            return Some(format!("holds a number that is not finite at [{i}]"));
        }
        let zero = self.scale.iter().position(|&s| s == 0.0)?;
        Some(format!("scale [{zero}] is 0"))
    }

    /// Where `other` maps an action otherwise (or maps one this does not): its index;
    /// `None` when they agree.
    pub fn first_difference(&self, other: &ActionMapping) -> Option<usize> {
        let n = |m: &ActionMapping| m.scale.len().max(m.offset.len());
        let at = |m: &ActionMapping, i: usize| Some((*m.scale.get(i)?, *m.offset.get(i)?));
        (0..n(self).max(n(other))).find(|&i| at(self, i) != at(other, i))
    }

    /// Action `i`'s mapping as a formula, for messages (`nothing` past its end).
    pub fn describe(&self, i: usize) -> String {
        match (self.offset.get(i), self.scale.get(i)) {
            (Some(o), Some(s)) => format!("{o} + {s} × a"),
            _ => "nothing".into(),
        }
    }
}

impl DatasetInfo {
    pub fn obs_dim(&self) -> usize {
        self.observation_names.len()
    }
    pub fn action_dim(&self) -> usize {
        self.action_names.len()
    }
}

/// One episode as row-major flat arrays; `len() == rewards.len()` steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Episode {
    /// `len * obs_dim`, observation before each step.
    pub observations: Vec<f32>,
    /// `len * obs_dim`, observation after each step.
    pub next_observations: Vec<f32>,
    /// `len * action_dim`.
    pub actions: Vec<f32>,
    pub rewards: Vec<f32>,
    /// Task-terminal: no bootstrapping past it.
    pub terminated: Vec<bool>,
    /// Ended by time limit / operator (bootstrapping from the next observation is valid).
    pub truncated: Vec<bool>,
    /// Success flag after the step.
    pub success: Vec<bool>,
    /// The operator marked the step as an intervention (robot logs); all `false` for
    /// generated demos and datasets without the column.
    pub intervention: Vec<bool>,
    /// The action came from a teleop device (robot logs); all `false` for generated
    /// demos and datasets without the column.
    pub teleop: Vec<bool>,
}

impl Episode {
    pub fn len(&self) -> usize {
        self.rewards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// Check lengths against the dims, that the episode is non-empty, all floats
    /// are finite, that its last step and no other is terminated or truncated, and
    /// not both.
    pub fn check(&self, obs_dim: usize, act_dim: usize) -> Result<(), DatasetError> {
        let n = self.len();
        let bad = |field, problem: String| Err(DatasetError::Episode { field, problem });
        if n == 0 {
            return bad("rewards", "episode is empty (0 steps)".into());
        }
        let lens: [(&'static str, usize, usize); 8] = [
            ("observations", self.observations.len(), n * obs_dim),
            (
                "next_observations",
                self.next_observations.len(),
                n * obs_dim,
            ),
            ("actions", self.actions.len(), n * act_dim),
            ("terminated", self.terminated.len(), n),
            ("truncated", self.truncated.len(), n),
            ("success", self.success.len(), n),
            ("intervention", self.intervention.len(), n),
            ("teleop", self.teleop.len(), n),
        ];
        for (field, got, want) in lens {
            if got != want {
                return bad(
                    field,
                    format!("has {got} values, expected {want} ({n} steps)"),
                );
            }
        }
        let floats: [(&'static str, &[f32], usize); 4] = [
            ("observations", &self.observations, obs_dim),
            ("next_observations", &self.next_observations, obs_dim),
            ("actions", &self.actions, act_dim),
            ("rewards", &self.rewards, 1),
        ];
        for (field, v, dim) in floats {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return bad(
                    field,
                    format!(
                        "non-finite value {} at step {}, dim {}",
                        v[i],
                        i / dim,
                        i % dim
                    ),
                );
            }
        }
        if let Some(t) = (0..n).find(|&t| self.terminated[t] && self.truncated[t]) {
            return bad(
                "truncated",
                format!("step {t} is both terminated and truncated; set only `terminated`"),
            );
        }
        // Exactly the last step ends the episode: an end inside it would be read back
        // as a terminal state mid-episode (no bootstrapping there) and the steps after
        // it as the same episode; an episode ending neither way would have `next.done`
        // false on its last frame, where LeRobot marks every episode's end.
        if let Some(t) = (0..n - 1).find(|&t| self.terminated[t] || self.truncated[t]) {
            let field = if self.terminated[t] {
                "terminated"
            } else {
                "truncated"
            };
            return bad(
                field,
                format!("step {t} of {n} ends the episode before its last step; split it there"),
            );
        }
        if !self.terminated[n - 1] && !self.truncated[n - 1] {
            return bad(
                "truncated",
                format!(
                    "the last step ({}) ends the episode neither terminated nor truncated; set \
                     `truncated` when it was cut (time limit, operator)",
                    n - 1
                ),
            );
        }
        Ok(())
    }

    /// Sparse success labels (the simulated tasks' rewards): with `success`, reward 1,
    /// success and termination on the last frame; without, reward 0 throughout and a
    /// truncated end (no outcome reached). Every other frame: reward 0, no success,
    /// neither terminated nor truncated. Observations and actions are untouched.
    pub fn set_outcome(&mut self, success: bool) {
        self.rewards.iter_mut().for_each(|r| *r = 0.0);
        self.success.iter_mut().for_each(|s| *s = false);
        self.terminated.iter_mut().for_each(|t| *t = false);
        self.truncated.iter_mut().for_each(|t| *t = false);
        let Some(last) = self.len().checked_sub(1) else {
            return;
        };
        if success {
            self.rewards[last] = 1.0;
            self.success[last] = true;
            self.terminated[last] = true;
        } else {
            self.truncated[last] = true;
        }
    }

    /// True if any step reports success.
    pub fn is_success(&self) -> bool {
        self.success.iter().any(|&s| s)
    }

    /// Undiscounted return (sum of rewards).
    pub fn ret(&self) -> f32 {
        self.rewards.iter().sum()
    }
}

/// Per-dimension statistics of one feature (population std, as LeRobot).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    /// Number of frames.
    pub count: u64,
}

/// A whole dataset in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub info: DatasetInfo,
    pub episodes: Vec<Episode>,
    /// The files hold `next.observation.state`. Without it (a LeRobot recording) each
    /// episode's last frame has its own observation as successor, which was never
    /// observed: [`Dataset::frames_with_successor`] leaves that frame out.
    pub next_observations_recorded: bool,
}

impl Dataset {
    pub fn num_frames(&self) -> usize {
        self.episodes.iter().map(Episode::len).sum()
    }

    /// How many of `ep`'s first frames have a real successor to bootstrap from: all of
    /// them when the dataset records `next.observation.state` or the last frame is
    /// terminal (nothing is bootstrapped past it), else all but the last (its successor
    /// was derived as its own observation). Training uses only these.
    pub fn frames_with_successor(&self, ep: &Episode) -> usize {
        let n = ep.len();
        if self.next_observations_recorded || ep.terminated.last().copied().unwrap_or(false) {
            n
        } else {
            n.saturating_sub(1)
        }
    }

    /// Statistics of `observation.state`, `next.observation.state`, `action`,
    /// `next.reward`, `timestamp`, `frame_index`, `episode_index` and `index`: the
    /// numbers the writer puts in `meta/stats.json` for a dataset it wrote. For one
    /// written otherwise they can differ: timestamps are taken as `frame_index / fps`
    /// (the writer's own), and `next.observation.state` is given from the successors
    /// derived on reading where the files hold no such column.
    pub fn stats(&self) -> BTreeMap<String, FeatureStats> {
        let mut acc =
            stats::StatsAcc::new(self.info.obs_dim(), self.info.action_dim(), self.info.fps);
        for ep in &self.episodes {
            acc.push(ep);
        }
        acc.finish()
    }

    /// Fraction of episodes with any success step (0 for an empty dataset).
    pub fn success_rate(&self) -> f64 {
        if self.episodes.is_empty() {
            return 0.0;
        }
        let ok = self.episodes.iter().filter(|e| e.is_success()).count();
        ok as f64 / self.episodes.len() as f64
    }
}

/// What [`DatasetWriter::finish`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSummary {
    pub dir: PathBuf,
    pub total_episodes: usize,
    pub total_frames: usize,
    /// Episodes / frames appended by this writer.
    pub episodes_added: usize,
    pub frames_added: usize,
    /// Data files created by this writer.
    pub data_files_written: Vec<PathBuf>,
    /// Success rate over the whole dataset.
    pub success_rate: f64,
}

/// Counts from [`validate_dataset`]; only returned when every check passed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationReport {
    pub episodes: usize,
    pub frames: usize,
    pub tasks: usize,
    /// Data files referenced by the episodes index.
    pub data_files: usize,
    /// Features declared in info.json.
    pub features: usize,
    /// Features whose stats.json entry was checked against the data.
    pub stats_checked: usize,
    pub successful_episodes: usize,
    /// Parquet files under `data/` that no episode references (e.g. left by a
    /// writer that crashed before `finish`). Our reader leaves them out; LeRobot's reads
    /// every file there and fails on them (or reads their frames as the dataset's) until
    /// `DatasetWriter::open_append` (`tools dataset tidy`) sets them aside.
    pub unreferenced_data_files: Vec<PathBuf>,
    /// Rows of the episodes index beyond info.json's `total_episodes` (a writer stopped
    /// between renaming its index and renaming info.json, its commit point, or
    /// superseded index files it did not remove): not part of the dataset. The
    /// statistics are then not checked: they may already describe those episodes.
    pub uncommitted_episodes: usize,
}

/// Timestamp of a frame in seconds, as stored (float32).
pub fn timestamp(frame_index: usize, fps: u32) -> f32 {
    frame_index as f32 / fps as f32
}
