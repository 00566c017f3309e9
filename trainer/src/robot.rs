//! Robots without a simulator: runs with `task = "robot"` learn from a recorded LeRobot
//! v3 dataset alone, so the dataset is what describes the robot.
//!
//! ```text
//!  demonstrations (LeRobot v3: observation.state, action, next.reward, …)
//!        │  trainer pretrain --set task=robot --set run.dataset=DIR
//!        ▼
//!  run directory ── checkpoint/state.json keeps a RobotInfo (name, rate, names, ranges)
//!        │  trainer export
//!        ▼
//!  bundle (manifest: the robot's name, dimensions, observation names and ranges)
//!        │  controller run --robot robot.toml … --uplink       trainer finetune --listen
//!        ▼                                                     (or --data, from the logs)
//!  the robot's own episodes ──────────────────────────────────────────►  better bundle
//! ```
//!
//! Everything that needs an environment (online `train` steps, `eval`, the evaluations of
//! `finetune`) names the missing simulator instead of guessing one.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a `robot` run knows about its robot, taken from its dataset at pretraining and
/// kept in the checkpoint (so export does not need the dataset again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobotInfo {
    /// The dataset's `robot_type` (the robot file's `robot` for `controller run` logs).
    pub name: String,
    /// Control rate of the recording, Hz.
    pub fps: u32,
    pub observation_names: Vec<String>,
    pub action_names: Vec<String>,
    /// Per-dimension minimum and maximum of the observations in the data: the bundle's
    /// observation bounds (the data is all the trainer knows of the robot's ranges),
    /// widened by the observations of the transitions a fine-tuning trains on
    /// ([`Self::widen_bounds`]; since 2026-12-07: the controller counts the frames
    /// outside them).
    pub obs_low: Vec<f32>,
    pub obs_high: Vec<f32>,
    /// The robot file's action mapping the data was recorded with, where the dataset
    /// records it (the bundle carries it: the controller refuses a robot file that maps
    /// the actions otherwise). `None` in checkpoints from before 2026-12-07.
    #[serde(default)]
    pub action_mapping: Option<dataset::ActionMapping>,
    /// The mapping was taken from later data (a `finetune --data` dataset, a live
    /// stream) because the run's own data recorded none: the action names above are
    /// still that data's (an older controller's joint names, perhaps), so their order is
    /// compared with nothing, as before the mapping was taken.
    #[serde(default)]
    pub action_mapping_taken: bool,
}

impl RobotInfo {
    /// The description of the robot that recorded `ds` (which must hold frames).
    pub fn of(ds: &dataset::Dataset) -> Self {
        let od = ds.info.obs_dim();
        // The bundle's task name; a dataset without `robot_type` reads as "".
        let name = match ds.info.robot_type.trim() {
            "" => "robot".to_string(),
            n => n.to_string(),
        };
        let mut info = RobotInfo {
            name,
            fps: ds.info.fps,
            observation_names: ds.info.observation_names.clone(),
            action_names: ds.info.action_names.clone(),
            obs_low: vec![f32::INFINITY; od],
            obs_high: vec![f32::NEG_INFINITY; od],
            action_mapping: ds.info.action_mapping.clone(),
            action_mapping_taken: false,
        };
        // (A dataset holds finite values only: the reader refuses others.)
        for ep in &ds.episodes {
            info.widen_bounds(&ep.observations);
        }
        info
    }

    /// Takes `m`, the action mapping later data recorded (a `finetune --data` dataset, a
    /// live stream), where the run's own data recorded none ([`Self::action_mapping_taken`]);
    /// whether it was taken.
    pub fn take_action_mapping(&mut self, m: &dataset::ActionMapping) -> bool {
        if self.action_mapping.is_some() {
            return false;
        }
        self.action_mapping = Some(m.clone());
        self.action_mapping_taken = true;
        true
    }

    /// Takes `names`, the observation names later data gave
    /// ([`crate::finetune::RecordedBy::adopt_names`]), where the run's own data named
    /// none (names a reader made up, `observation.state.{i}`); whether they were taken.
    /// As many as the run's, and none made up themselves.
    pub fn take_observation_names(&mut self, names: &[String]) -> bool {
        let unnamed = dataset::unnamed_observations;
        if !unnamed(&self.observation_names)
            || unnamed(names)
            || names.len() != self.observation_names.len()
        {
            return false;
        }
        self.observation_names = names.to_vec();
        true
    }

    /// Widens the observation bounds (the bundles' `observation.low`/`high`) to hold
    /// `observations` (rows of [`Self::obs_dim`]): data a fine-tuning trained on, so
    /// that the bounds stay the range of everything the run learned from (the
    /// controller counts the frames outside them). Non-finite values are left out.
    pub fn widen_bounds(&mut self, observations: &[f32]) {
        let od = self.obs_low.len();
        for row in observations.chunks_exact(od.max(1)) {
            for ((l, h), &x) in self.obs_low.iter_mut().zip(&mut self.obs_high).zip(row) {
                if x.is_finite() {
                    *l = l.min(x);
                    *h = h.max(x);
                }
            }
        }
    }

    pub fn obs_dim(&self) -> usize {
        self.observation_names.len()
    }

    pub fn act_dim(&self) -> usize {
        self.action_names.len()
    }
}

/// Refuses data of `task` recorded under other simulator options
/// (`tools dataset generate --gravity` / `--reward dense`: `robot_type`
/// `sim/arm-reach+gravity`): other dynamics or rewards than the trainer's simulated
/// task, which runs with the defaults. `path` names the data in the message.
pub fn refuse_sim_variant(path: &str, robot_type: &str, task: sim::TaskId) -> Result<()> {
    let recorded = robot_type.trim();
    let ours = sim::EnvConfig::default().robot_type(task);
    // Recorded through `controller run` against `sim-firmware --gravity` / `--reward
    // dense`: named after its robot file, whose name ends in the options (the
    // simulated firmware insists on it).
    let named_options = Some(sim::split_variant(recorded).1).filter(|o| !o.is_empty());
    if let Some(options) = recorded.strip_prefix(&format!("{ours}+")).or(named_options) {
        bail!(
            "{path}: recorded as `{recorded}`, a variant of task {task} (options \
             `{options}`); the trainer's {task} runs with the default options (`{ours}`: \
             sparse reward, no gravity), so its data must too (regenerate without \
             --gravity / --reward dense)"
        );
    }
    Ok(())
}

/// Data recorded at `fps` Hz for a run whose steps are `ours` Hz (`ours_is` names what
/// sets them: "the run's data", "task push steps"), as an error message; `None` when they
/// agree. Its steps are another length of time.
pub fn other_rate(fps: u32, ours: u32, ours_is: &str) -> Option<String> {
    (fps != ours).then(|| {
        format!(
            "recorded at {fps} Hz, {ours_is} at {ours} Hz: a step of it is another length of \
             time (the discount, the action chunks and the critics' values are per step)"
        )
    })
}

/// Reads a dataset for training: a read error (the reader also refuses NaN and infinite
/// values, naming the column and frame), other dimensions than `dims` (observation,
/// action) when given, or an action outside the policy's `[-1, 1]` (a recording in the
/// robot's units) is an error naming the directory, and the episode and frame. The
/// episodes of its held-out splits ([`dataset::held_out_episodes`]: `val`, `test`) are
/// left out, said on stderr.
pub fn read_training_dataset(
    path: &Path,
    dims: Option<(usize, usize)>,
) -> Result<dataset::Dataset> {
    let mut ds = dataset::read_dataset(path)
        .with_context(|| format!("{}: cannot read the dataset", path.display()))?;
    if let Some((od, ad)) = dims {
        ensure!(
            ds.info.obs_dim() == od && ds.info.action_dim() == ad,
            "{}: dataset has observation dim {} and action dim {}, the run's networks take {od} and {ad}",
            path.display(),
            ds.info.obs_dim(),
            ds.info.action_dim()
        );
    }
    // The episodes of `val`, `test` or any split but `train` are held out: trained on,
    // any evaluation on them would be on training data.
    let held_out = dataset::held_out_episodes(path)
        .with_context(|| format!("{}: cannot read the dataset", path.display()))?;
    let trained: Vec<usize> = (0..ds.episodes.len())
        .filter(|e| !held_out.iter().any(|(_, r)| r.contains(e)))
        .collect();
    if trained.len() < ds.episodes.len() {
        let splits: Vec<String> = held_out
            .iter()
            .map(|(name, r)| format!("{name} {}:{}", r.start, r.end))
            .collect();
        ensure!(
            !trained.is_empty(),
            "{}: every episode is in a held-out split ({}): nothing to train on (only `train` \
             and episodes in no split are trained on)",
            path.display(),
            splits.join(", ")
        );
        eprintln!(
            "{}: {} of {} episodes left out of training, held out by the dataset's splits ({})",
            path.display(),
            ds.episodes.len() - trained.len(),
            ds.episodes.len(),
            splits.join(", ")
        );
    }
    let ad = ds.info.action_dim();
    for &e in &trained {
        let ep = &ds.episodes[e];
        if let Some(k) = dataset::outside_policy_range(&ep.actions) {
            // (`label --robot-units` refuses a dataset that records its action mapping:
            // its actions were in policy units when recorded.)
            let advice = if ds.info.action_mapping.is_some() {
                "this dataset records its action mapping (`expo_action_mapping`, written by \
                 `controller run` or `label --robot-units`), so its actions were in policy \
                 units: it was changed by another tool since; record it again, or, if its \
                 actions are in robot units, remove that key and convert it with `tools \
                 dataset label --robot-units ROBOT.toml`"
            } else {
                "convert a recording in the robot's units with `tools dataset label \
                 --robot-units ROBOT.toml`"
            };
            bail!(
                "{}: episode {e}, frame {}: action[{}] = {} is outside the policy's [-1, 1]; \
                 a dataset's actions must be in policy units, as `controller run` records \
                 them: {advice}",
                path.display(),
                k / ad,
                k % ad,
                ep.actions[k]
            );
        }
    }
    let mut episodes = std::mem::take(&mut ds.episodes);
    ds.episodes = trained
        .iter()
        .map(|&e| std::mem::take(&mut episodes[e]))
        .collect();
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are taken only for made-up ones, as many as the run's, and not made up
    /// themselves.
    #[test]
    fn observation_names_are_taken_only_for_made_up_ones() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut r = RobotInfo {
            name: "r".into(),
            fps: 20,
            observation_names: names(&["observation.state.0", "observation.state.1"]),
            action_names: names(&["x"]),
            obs_low: vec![0.0; 2],
            obs_high: vec![1.0; 2],
            action_mapping: None,
            action_mapping_taken: false,
        };
        assert!(!r.take_observation_names(&names(&["a", "b", "c"])));
        assert!(!r.take_observation_names(&names(&["observation.state.0", "observation.state.1"])));
        assert!(r.take_observation_names(&names(&["a", "b"])));
        assert!(!r.take_observation_names(&names(&["c", "d"])));
        assert_eq!(r.observation_names, names(&["a", "b"]));
        // Bounds widen to hold later data, never narrow; NaN is left out.
        r.widen_bounds(&[0.5, 2.0, -1.0, f32::NAN]);
        assert_eq!(
            (r.obs_low.clone(), r.obs_high.clone()),
            (vec![-1.0, 0.0], vec![1.0, 2.0])
        );
    }
}
