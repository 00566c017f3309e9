//! `tools viz dataset DIR`: a dataset's episodes as a recording.

use crate::{Recorder, Target, log_scalars, log_scene, need_dir, paths};
use anyhow::{Context, Result};
use sim::{Scene, TaskId};
use std::path::Path;

/// What [`dataset_to_rrd`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatasetRrd {
    pub episodes: usize,
    pub frames: usize,
    /// Whether the task's scene was drawn (a known simulated task).
    pub scene: bool,
}

/// Logs every frame of the dataset at `dir` on the timelines `index` (the global frame
/// index: the episodes one after another), `episode`, `frame_index` and `time` (seconds
/// into the episode, from the dataset's fps). `task` draws the
/// simulated task's scene from each observation (an error if its observation size is
/// not the dataset's); `None` takes it from the dataset's `robot_type` when that names
/// one of our tasks (`sim/push`, …) and the observation names are that task's, else no
/// scene.
pub fn dataset_to_rrd(dir: &Path, task: Option<TaskId>, target: &Target) -> Result<DatasetRrd> {
    need_dir(dir, "a dataset directory")?;
    let ds = dataset::read_dataset(dir)
        .with_context(|| format!("{}: cannot read the dataset", dir.display()))?;
    let info = &ds.info;
    let task = match task {
        // Asked for: the scene is drawn from the observation by position, so the sizes
        // must agree.
        Some(t) => {
            anyhow::ensure!(
                t.spec().obs_dim() == info.obs_dim(),
                "{}: --task {t} draws its scene from {} observation values, the dataset has {}",
                dir.display(),
                t.spec().obs_dim(),
                info.obs_dim()
            );
            Some(t)
        }
        // Guessed from `robot_type`: only when the observation names are the task's too
        // (a real robot whose name contains `push` is not drawn as the simulated one).
        None => crate::task_of(&info.robot_type)
            .filter(|t| t.spec().obs_names.iter().eq(info.observation_names.iter())),
    };
    let (od, ad) = (info.obs_dim(), info.action_dim());
    let obs_paths = paths("observation.state", &info.observation_names);
    let act_paths = paths("action", &info.action_names);
    Recorder::open("expo_dataset", target)?.record(|rec| {
        let mut scene = Scene::default();
        let mut out = DatasetRrd {
            scene: task.is_some(),
            ..DatasetRrd::default()
        };
        let mut index = 0i64;
        for (e, ep) in ds.episodes.iter().enumerate() {
            rec.set_time_sequence("episode", e as i64);
            for i in 0..ep.len() {
                rec.set_time_sequence("index", index);
                index += 1;
                rec.set_time_sequence("frame_index", i as i64);
                rec.set_duration_secs("time", dataset::timestamp(i, info.fps) as f64);
                let obs = &ep.observations[i * od..(i + 1) * od];
                log_scalars(rec, &obs_paths, obs)?;
                log_scalars(rec, &act_paths, &ep.actions[i * ad..(i + 1) * ad])?;
                rec.log("next.reward", &rerun::Scalars::single(ep.rewards[i] as f64))?;
                rec.log(
                    "next.success",
                    &rerun::Scalars::single(ep.success[i] as u8 as f64),
                )?;
                rec.log(
                    "intervention",
                    &rerun::Scalars::single(ep.intervention[i] as u8 as f64),
                )?;
                rec.log("teleop", &rerun::Scalars::single(ep.teleop[i] as u8 as f64))?;
                if let Some(t) = task {
                    sim::scene_from_observation(t, obs, &mut scene);
                    log_scene(rec, &scene)?;
                }
            }
            out.episodes += 1;
            out.frames += ep.len();
        }
        Ok(out)
    })
}
