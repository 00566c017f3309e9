//! Success labels for demonstrations recorded without rewards.
//!
//! LeRobot's recorder writes `observation.state` and `action` but no `next.reward`, so
//! every reward reads as 0 and critics pretrained on such demonstrations learn nothing.
//! The stack's tasks use sparse rewards: 1 on the frame that succeeds, which ends the
//! episode. [`label_success`] writes a copy of a dataset with that labelling, given which
//! episodes succeeded (teleoperated demonstrations usually all do):
//!
//! ```text
//!  successful episode:   reward 0 0 0 … 0 1   success … false true   last frame terminated
//!  other episode:        reward 0 0 0 … 0 0   success … false false  last frame truncated
//! ```
//!
//! Datasets recorded outside this stack (LeRobot's recorder) also hold actions in the
//! robot's units (joint targets in degrees, say), where the policy works in `[-1, 1]`
//! (`controller run` records policy units). With the robot file, the copy's actions are
//! converted back through its `action.scale` and `action.offset`
//! (`policy = (robot − offset) / scale`), and an action outside the policy's range is
//! refused with its episode and frame.
//!
//! The source is never modified. The copy keeps every frame's observation and action and
//! the dataset's description (robot, rate, names): what the trainer reads. Other features
//! of the source, such as camera videos, are not copied.

use anyhow::{Context, Result, bail, ensure};
use dataset::DatasetSummary;
use firmware_config::RobotConfig;
use std::collections::BTreeSet;
use std::path::Path;

/// Which episodes succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Successful {
    /// The source's labels as they are (to convert units only).
    Keep,
    All,
    /// Episode indices (positions in the dataset, from 0).
    Only(BTreeSet<usize>),
}

/// The largest episode index an episode list may name: far beyond any recorded dataset,
/// and small enough that a range such as `0-99999999999` is refused at once instead of
/// being expanded index by index.
pub const MAX_LISTED_EPISODE: usize = 1 << 20;

impl std::str::FromStr for Successful {
    type Err = anyhow::Error;

    /// `all`, `keep`, or a comma-separated list of episode indices and inclusive ranges
    /// (`0,3,5-9`); `none` for an empty list.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => return Ok(Successful::All),
            "keep" => return Ok(Successful::Keep),
            "none" => return Ok(Successful::Only(BTreeSet::new())),
            _ => {}
        }
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim) {
            let bad = || format!("episode list '{s}': '{part}' is not an index or a range a-b");
            let (a, b): (usize, usize) = match part.split_once('-') {
                Some((a, b)) => (
                    a.trim().parse().with_context(bad)?,
                    b.trim().parse().with_context(bad)?,
                ),
                None => {
                    let i = part.parse().with_context(bad)?;
                    (i, i)
                }
            };
            ensure!(a <= b, "episode list '{s}': range {part} is empty");
            ensure!(
                b <= MAX_LISTED_EPISODE,
                "episode list '{s}': {part} names episodes past {MAX_LISTED_EPISODE}"
            );
            set.extend(a..=b);
        }
        Ok(Successful::Only(set))
    }
}

/// What [`label_success`] wrote, and what looked wrong without stopping it.
#[derive(Debug)]
pub struct Labelled {
    pub summary: DatasetSummary,
    pub warnings: Vec<String>,
}

/// Writes `input` to `output` (a new, empty directory) with sparse success rewards:
/// the episodes `successful` names end in a success frame (reward 1, success,
/// terminated); all others get reward 0 everywhere and end truncated
/// ([`Successful::Keep`] leaves the labels alone). With `robot_units`, the source's
/// actions are in that robot's units and are converted to policy units. Refuses an
/// index past the dataset's episodes, dimensions that differ from the robot file's, and
/// a converted action outside `[-1, 1]`, naming each. Warns when labels the source had
/// are replaced, and when its observation names differ from the robot file's; a source
/// that named no observations or actions gets the robot file's names (warned).
pub fn label_success(
    input: &Path,
    output: &Path,
    successful: &Successful,
    robot_units: Option<(&Path, &RobotConfig)>,
) -> Result<Labelled> {
    let mut ds = dataset::read_dataset(input)
        .with_context(|| format!("{}: cannot read the dataset", input.display()))?;
    // The source is never modified, so the copy cannot go inside it (nor be it). A path
    // is resolved through its nearest folder that exists (`--out SRC/a/b` with neither
    // `a` nor `b` there is inside SRC too).
    let resolved = |p: &Path| -> Option<std::path::PathBuf> {
        // The longest part that exists is resolved by the file system (symlinks and
        // `..` as the kernel takes them); only in the part that does not exist yet is
        // `..` taken lexically (`SRC/new/../copy` is `SRC/copy`).
        let absolute = std::path::absolute(p).ok()?;
        let mut existing = absolute.as_path();
        let mut missing = vec![];
        while !existing.exists() {
            missing.push(existing.components().next_back()?);
            existing = existing.parent()?;
        }
        let mut path = existing.canonicalize().ok()?;
        for part in missing.into_iter().rev() {
            match part {
                std::path::Component::ParentDir => {
                    path.pop();
                }
                std::path::Component::CurDir => {}
                other => path.push(other),
            }
        }
        Some(path)
    };
    if let (Some(src), Some(dst)) = (resolved(input), resolved(output)) {
        ensure!(
            !dst.starts_with(&src),
            "--out {} is inside the source dataset {}, which is never modified: write the \
             copy elsewhere",
            output.display(),
            input.display()
        );
    }
    let mut warnings = vec![];
    // The copy is written with one task, the first: say so where the source has more.
    let tasks = std::fs::read_to_string(input.join("meta/info.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["total_tasks"].as_u64())
        .unwrap_or(1);
    if tasks > 1 {
        warnings.push(format!(
            "{}: the source has {tasks} tasks; the copy files every episode under the first \
             (\"{}\")",
            input.display(),
            ds.info.task
        ));
    }
    if let Some((path, robot)) = robot_units {
        // Each action is converted with its own dimension's scale and offset: the
        // dataset's actions in another order than the robot file names them would take
        // another joint's. (Another count is the conversion's refusal.)
        let names = &ds.info.action_names;
        if names.len() == robot.action.dim {
            if let Some(e) = robot.action.names_reordered(names, "the dataset") {
                bail!("{}: {e} ({})", input.display(), path.display());
            }
            if let Some(w) = (robot.action.names_differ(names, "the dataset"))
                .filter(|_| !dataset::unnamed_actions(names))
            {
                warnings.push(format!("{}: {w} ({})", input.display(), path.display()));
            }
        }
        to_policy_units(&mut ds, input, path, robot, &mut warnings)?;
        // Names a reader made up for a dataset that named none (`observation.state.{i}`,
        // `action.{i}`, or an older controller's `a{i}`) say nothing: the copy takes the
        // robot file's, in their order (as the robot's own recordings name them), so that
        // the run and its bundles name them from pretraining on. Said, as their order is
        // the source's, not checked.
        let info = &mut ds.info;
        let ours = &robot.observation.names;
        if dataset::unnamed_observations(&info.observation_names)
            && !dataset::unnamed_observations(ours)
            && ours.len() == info.obs_dim()
        {
            warnings.push(format!(
                "{}: it names no observations: the copy names them after {} ({}), in that \
                 order (not checked)",
                input.display(),
                path.display(),
                ours.join(", ")
            ));
            info.observation_names = ours.clone();
        } else if let Some(w) = robot
            .observation
            .names_differ(&info.observation_names, "the dataset")
        {
            warnings.push(format!("{}: {w} ({})", input.display(), path.display()));
        }
        let ours = &robot.action.names;
        if dataset::unnamed_actions(&info.action_names)
            && !ours.is_empty()
            && !dataset::unnamed_actions(ours)
            && ours.len() == info.action_dim()
        {
            warnings.push(format!(
                "{}: it names no actions: the copy names them after {} ({}), in that order \
                 (not checked)",
                input.display(),
                path.display(),
                ours.join(", ")
            ));
            info.action_names = ours.clone();
        }
    }
    let n = ds.episodes.len();
    if let Successful::Only(set) = successful
        && let Some(&past) = set.range(n..).next()
    {
        bail!(
            "{}: episode {past} does not exist (the dataset has {n} episode{}{})",
            input.display(),
            if n == 1 { "" } else { "s" },
            if n > 0 {
                format!(", 0 to {}", n - 1)
            } else {
                String::new()
            }
        );
    }
    if *successful != Successful::Keep
        && ds.episodes.iter().any(|e| {
            e.rewards.iter().any(|&r| r != 0.0)
                || e.success.iter().any(|&x| x)
                || e.terminated.iter().any(|&x| x)
        })
    {
        // A terminal end is a label too (a crash that is no success): labelled a
        // failure, it would end truncated and be bootstrapped from.
        warnings.push(format!(
            "{}: the source has rewards, success or terminal flags already; they are \
             replaced by the success labels (`--success keep` keeps them)",
            input.display()
        ));
    }
    if *successful == Successful::Keep && robot_units.is_none() {
        warnings.push(format!(
            "{}: `--success keep` without `--robot-units` changes no label and no action: \
             the copy differs only in the columns this writer leaves out",
            input.display()
        ));
    }
    if *successful != Successful::Keep {
        ds.info.robot_type = without_dense_rewards(&ds.info.robot_type);
    }
    for (i, ep) in ds.episodes.iter_mut().enumerate() {
        let success = match successful {
            Successful::Keep => continue,
            Successful::All => true,
            Successful::Only(set) => set.contains(&i),
        };
        ep.set_outcome(success);
    }
    // The copy holds the same episodes in the same order: the source's splits hold for
    // it (the writer alone declared every episode `train`, held-out ones included), and
    // so do the controller runs it notes (dropped, `finetune` took a relabelled copy of
    // a recording it had trained on for new data).
    let splits = dataset::dataset_splits(input)?;
    let runs = dataset::noted_runs(input)?;
    let partial = dataset::partial_runs(input)?;
    // Columns the writer leaves out (cameras, other state) are said, not dropped
    // silently: a source removed after labelling took them with it.
    let left_out = dataset::foreign_features(input)?;
    if !left_out.is_empty() {
        warnings.push(format!(
            "{}: the copy leaves out {} (this writer keeps state, action, reward and \
             episode columns only); keep the source for them",
            input.display(),
            left_out
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // A copy of a recording without next observations has none either: the successors
    // the reader derived for it were never observed.
    let summary = crate::write_dataset_whole(output, |dir| {
        let mut w =
            dataset::DatasetWriter::create_as(dir, ds.info.clone(), ds.next_observations_recorded)?;
        w.set_splits(splits);
        for id in &runs {
            w.note_run(id);
        }
        for (id, episodes) in &partial {
            w.note_partial_run(id, episodes);
        }
        for ep in &ds.episodes {
            w.append_episode(ep)?;
        }
        Ok(w.finish()?)
    })
    .with_context(|| format!("{}: cannot write the labelled dataset", output.display()))?;
    Ok(Labelled { summary, warnings })
}

/// Converts every action of `ds` (read from `input`) from `robot`'s units (the robot file
/// at `path`) to policy units. Warns when every action is in `[-1, 1]` already and the
/// conversion is not the identity: likely a dataset in policy units, converted twice.
fn to_policy_units(
    ds: &mut dataset::Dataset,
    input: &Path,
    path: &Path,
    robot: &RobotConfig,
    warnings: &mut Vec<String>,
) -> Result<()> {
    // A recording of `controller run` (or a copy this made) says how its actions,
    // already in policy units, were mapped to the robot.
    if let Some(m) = &ds.info.action_mapping {
        bail!(
            "{}: the dataset records the action mapping it was recorded with ({}: offset \
             {:?}, scale {:?}), so its actions are in policy units already: --robot-units \
             would convert them twice (leave it out)",
            input.display(),
            dataset::ACTION_MAPPING,
            m.offset,
            m.scale
        );
    }
    let (od, ad) = (ds.info.obs_dim(), ds.info.action_dim());
    ensure!(
        od == robot.observation.dim && ad == robot.action.dim,
        "{}: observation dim {od} and action dim {ad}, but {} has {} and {}",
        input.display(),
        path.display(),
        robot.observation.dim,
        robot.action.dim
    );
    // Recorded at another rate than the robot runs: caught only at `controller run`, after
    // pretraining and export (LeRobot's recorder defaults to 30 fps).
    if ds.info.fps != robot.control_hz {
        warnings.push(format!(
            "{}: recorded at {} fps, and {} runs at control_hz = {}: a policy trained on it is \
             refused at the robot's rate (a step is another length of time); record at the \
             robot's rate",
            input.display(),
            ds.info.fps,
            path.display(),
            robot.control_hz
        ));
    }
    let mut policy = vec![0.0; ad];
    let units = &robot.action;
    let identity = units.scale.iter().all(|&s| s == 1.0) && units.offset.iter().all(|&o| o == 0.0);
    let all_in_range = ds
        .episodes
        .iter()
        .all(|ep| dataset::outside_policy_range(&ep.actions).is_none());
    if all_in_range && !identity {
        warnings.push(format!(
            "{}: every action is within [-1, 1] already, as in policy units: if the dataset \
             is in policy units (recorded by `controller run`, or written by `dataset label \
             --robot-units`), this converts it twice; robot units are usually wider \
             (action.scale in {})",
            input.display(),
            path.display()
        ));
    }
    for (e, ep) in ds.episodes.iter_mut().enumerate() {
        for (t, a) in ep.actions.chunks_exact_mut(ad).enumerate() {
            robot.action.to_policy_units(a, &mut policy);
            if let Some(i) = dataset::outside_policy_range(&policy) {
                bail!(
                    "{}: episode {e}, frame {t}: action[{i}] = {} in robot units is {} in \
                     policy units, outside [-1, 1]; the policy's range maps to offset ± scale \
                     ({} ± {} in {}): widen action.scale there",
                    input.display(),
                    a[i],
                    policy[i],
                    robot.action.offset[i],
                    robot.action.scale[i],
                    path.display()
                );
            }
            for (dst, p) in a.iter_mut().zip(&policy) {
                *dst = p.clamp(-1.0, 1.0);
            }
        }
    }
    // What the copy's actions mean on the robot: carried into the bundles trained on it.
    ds.info.action_mapping = dataset::ActionMapping::recorded(&units.scale, &units.offset);
    Ok(())
}

/// `robot_type` of a simulated task's data once its rewards are replaced by success
/// labels: a `+dense` variant (`sim/push+dense`, or `sim-push+dense` recorded through
/// the controller from a robot file named for it) says rewards the copy no longer has;
/// the trainer refused such a copy as dense-reward data. Other options (`+gravity`,
/// other dynamics) stay, and a name without options is kept as it is.
fn without_dense_rewards(robot_type: &str) -> String {
    let (base, options) = sim::split_variant(robot_type);
    std::iter::once(base)
        .chain(
            options
                .split('+')
                .filter(|o| !o.is_empty() && *o != "dense"),
        )
        .collect::<Vec<_>>()
        .join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_drop_a_dense_reward_variant_only() {
        assert_eq!(without_dense_rewards("sim/push+dense"), "sim/push");
        assert_eq!(
            without_dense_rewards("sim/arm-reach+gravity+dense"),
            "sim/arm-reach+gravity"
        );
        assert_eq!(without_dense_rewards("sim/maze"), "sim/maze");
        // Recorded through the controller, named after a variant's robot file: the
        // trainer refuses `+dense` there too, so the copy drops it (it kept it).
        assert_eq!(without_dense_rewards("sim-push+dense"), "sim-push");
        assert_eq!(without_dense_rewards("so100"), "so100");
        assert_eq!(without_dense_rewards("a+b"), "a+b");
    }

    /// A labelled copy of dense-reward simulator data holds sparse success labels, and
    /// says so: it kept `sim/push+dense`, which the trainer refused ("regenerate
    /// without --reward dense").
    #[test]
    fn a_labelled_copy_of_dense_data_is_not_called_dense() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, out, kept) = (
            tmp.path().join("src"),
            tmp.path().join("out"),
            tmp.path().join("kept"),
        );
        let config = sim::EnvConfig {
            reward: sim::Reward::Dense,
            ..Default::default()
        };
        crate::generate::generate(sim::TaskId::Push, 2, 0, config, &src).unwrap();
        let source = dataset::read_dataset(&src).unwrap();
        assert_eq!(source.info.robot_type, "sim/push+dense");
        label_success(&src, &out, &Successful::All, None).unwrap();
        let copy = dataset::read_dataset(&out).unwrap();
        assert_eq!(copy.info.robot_type, "sim/push");
        label_success(&src, &kept, &Successful::Keep, None).unwrap();
        assert_eq!(
            dataset::read_dataset(&kept).unwrap().info.robot_type,
            "sim/push+dense"
        );
    }

    /// A labelled copy keeps its source's splits: the writer declared every episode
    /// `train`, so a LeRobot dataset's held-out `val` episodes became training data.
    #[test]
    fn a_labelled_copy_keeps_the_sources_splits() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
        let config = sim::EnvConfig::default();
        crate::generate::generate(sim::TaskId::Push, 4, 0, config, &src).unwrap();
        let info = src.join("meta/info.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
        json["splits"] = serde_json::json!({"train": "0:3", "val": "3:4"});
        std::fs::write(&info, serde_json::to_string(&json).unwrap()).unwrap();
        label_success(&src, &out, &Successful::All, None).unwrap();
        let splits = dataset::dataset_splits(&out).unwrap();
        assert_eq!(
            splits.into_iter().collect::<Vec<_>>(),
            [("train".into(), "0:3".into()), ("val".into(), "3:4".into())]
        );
        // Without splits, the copy's are the writer's own.
        json["splits"] = serde_json::json!({});
        std::fs::write(&info, serde_json::to_string(&json).unwrap()).unwrap();
        let plain = tmp.path().join("plain");
        label_success(&src, &plain, &Successful::All, None).unwrap();
        let splits = dataset::dataset_splits(&plain).unwrap();
        assert_eq!(
            splits.into_iter().collect::<Vec<_>>(),
            [("train".into(), "0:4".into())]
        );
    }

    /// A labelled copy notes its source's controller runs (whole and partial): without
    /// them `finetune` took a relabelled recording for new data and trained on it twice.
    /// Columns the copy leaves out are named in a warning.
    #[test]
    fn a_labelled_copy_keeps_the_sources_runs_and_names_what_it_leaves_out() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
        let config = sim::EnvConfig::default();
        crate::generate::generate(sim::TaskId::Push, 3, 0, config, &src).unwrap();
        let info = src.join("meta/info.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
        json["expo_runs"] = serde_json::json!(["run-a"]);
        json["expo_partial_runs"] = serde_json::json!({"run-b": [0, 2]});
        json["features"]["observation.images.top"] =
            serde_json::json!({"dtype": "video", "shape": [3, 4, 4], "names": ["c", "h", "w"]});
        std::fs::write(&info, serde_json::to_string(&json).unwrap()).unwrap();
        let labelled = label_success(&src, &out, &Successful::All, None).unwrap();
        assert_eq!(dataset::noted_runs(&out).unwrap(), ["run-a"]);
        assert_eq!(
            dataset::partial_runs(&out).unwrap(),
            [("run-b".to_string(), vec![0, 2])]
        );
        assert!(
            labelled
                .warnings
                .iter()
                .any(|w| w.contains("leaves out `observation.images.top`")),
            "{:?}",
            labelled.warnings
        );
    }

    #[test]
    fn episode_lists_parse_and_bad_ones_are_named() {
        assert_eq!("all".parse::<Successful>().unwrap(), Successful::All);
        assert_eq!("keep".parse::<Successful>().unwrap(), Successful::Keep);
        assert_eq!(
            "none".parse::<Successful>().unwrap(),
            Successful::Only(BTreeSet::new())
        );
        assert_eq!(
            "0, 3,5-7".parse::<Successful>().unwrap(),
            Successful::Only([0, 3, 5, 6, 7].into_iter().collect())
        );
        let e = format!("{:#}", "1,x".parse::<Successful>().unwrap_err());
        assert!(e.contains("'x' is not an index"), "{e}");
        let e = format!("{:#}", "4-2".parse::<Successful>().unwrap_err());
        assert!(e.contains("range 4-2 is empty"), "{e}");
        for huge in ["0-18446744073709551615", "3,99999999999"] {
            let e = format!("{:#}", huge.parse::<Successful>().unwrap_err());
            assert!(e.contains("names episodes past 1048576"), "{e}");
        }
    }
}
