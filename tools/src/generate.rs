//! Demonstration datasets from the scripted demonstrators.

use dataset::{DatasetInfo, DatasetSummary, DatasetWriter, Episode};
use sim::{EnvConfig, TaskId, Trajectory, make_demonstrator, make_env, record_episode, rng::Rng};
use std::path::Path;

/// Dataset metadata for a simulated task.
/// The dataset description of `task`'s demonstrations under `config` (whose options
/// the `robot_type` records: [`EnvConfig::robot_type`]).
pub fn dataset_info(task: TaskId, config: EnvConfig) -> DatasetInfo {
    let spec = task.spec();
    DatasetInfo {
        robot_type: config.robot_type(task),
        fps: spec.control_hz,
        task: spec.description.to_string(),
        observation_names: spec.owned_obs_names(),
        action_names: spec.owned_action_names(),
        action_mapping: None,
    }
}

/// The dataset crate's episode from a simulator trajectory (same layout, moved).
pub fn to_episode(t: Trajectory) -> Episode {
    Episode {
        observations: t.observations,
        next_observations: t.next_observations,
        actions: t.actions,
        rewards: t.rewards,
        terminated: t.terminated,
        truncated: t.truncated,
        intervention: vec![false; t.success.len()],
        teleop: vec![false; t.success.len()],
        success: t.success,
    }
}

/// The seed of episode `i` of a dataset generated with `seed`.
pub fn episode_seeds(seed: u64, n: usize) -> impl Iterator<Item = u64> {
    let mut rng = Rng::new(seed);
    (0..n).map(move |_| rng.next_u64())
}

/// Records `episodes` demonstrations of `task` into a new dataset at `out`.
pub fn generate(
    task: TaskId,
    episodes: usize,
    seed: u64,
    config: EnvConfig,
    out: &Path,
) -> anyhow::Result<DatasetSummary> {
    // The dataset's name says the variant: one the task does not have (gravity outside
    // arm-reach) would label plain dynamics as it.
    config.check_for(task).map_err(anyhow::Error::msg)?;
    let mut env = make_env(task, config);
    let mut demo = make_demonstrator(task);
    // Whole or not at all: an interrupted run leaves no short dataset at `out`.
    crate::write_dataset_whole(out, |dir| {
        let mut writer = DatasetWriter::create(dir, dataset_info(task, config))?;
        for s in episode_seeds(seed, episodes) {
            let traj = record_episode(env.as_mut(), demo.as_mut(), s);
            writer.append_episode(&to_episode(traj))?;
        }
        Ok(writer.finish()?)
    })
}
