//! Many environments stepped in one call, with flat arrays in and out.

use crate::{Env, EnvConfig, Step, TaskId, TaskSpec, make_env, rng::Rng};

/// `n` environments of one task with Gymnasium-style autoreset.
///
/// `step` takes `n * action_dim` actions and writes `n * obs_dim` observations. Every
/// `final_obs` row is the step's own next observation: where an environment's episode
/// ended, the last observation of the episode, while its `obs` row holds the first
/// observation of the next one (reset with a seed drawn from the vector's own stream);
/// elsewhere the same as `obs`. A caller can both bootstrap from `final_obs` on every row
/// and keep acting on `obs`.
pub struct VecEnv {
    envs: Vec<Box<dyn Env>>,
    spec: &'static TaskSpec,
    seeds: Rng,
    /// `reset` was called: before it every environment holds its constructor's
    /// placeholder state, not an episode of the task's distribution.
    was_reset: bool,
}

impl VecEnv {
    pub fn new(task: TaskId, n: usize, config: EnvConfig) -> Self {
        assert!(n > 0, "VecEnv needs at least one environment");
        VecEnv {
            envs: (0..n).map(|_| make_env(task, config)).collect(),
            spec: task.spec(),
            seeds: Rng::new(0),
            was_reset: false,
        }
    }

    pub fn len(&self) -> usize {
        self.envs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }

    pub fn spec(&self) -> &'static TaskSpec {
        self.spec
    }

    pub fn env(&self, i: usize) -> &dyn Env {
        self.envs[i].as_ref()
    }

    /// Resets every environment from one seed stream, `Rng::new(seed)`: environment `i`
    /// gets its `i`-th draw. Autoresets draw from the same stream in the order episodes
    /// end (lower index first within a step), so an environment's later episodes depend
    /// on when the others end. The Python `SimVectorEnv` seeds otherwise (environment `i`
    /// from `seed + i`, as Gymnasium's vector environments do), so one seed gives other
    /// episodes there.
    pub fn reset(&mut self, seed: u64, obs: &mut [f32]) {
        let od = self.spec.obs_dim();
        assert_eq!(obs.len(), self.envs.len() * od, "obs buffer length");
        self.seeds = Rng::new(seed);
        self.was_reset = true;
        for (env, o) in self.envs.iter_mut().zip(obs.chunks_exact_mut(od)) {
            let s = self.seeds.next_u64();
            env.reset(s, o);
        }
    }

    /// Steps every environment once; resets those whose episode ended.
    ///
    /// # Panics
    /// Before the first [`VecEnv::reset`] (the environments hold placeholder states),
    /// and on buffers of the wrong length.
    pub fn step(
        &mut self,
        actions: &[f32],
        obs: &mut [f32],
        final_obs: &mut [f32],
        steps: &mut [Step],
    ) {
        let (od, ad, n) = (self.spec.obs_dim(), self.spec.action_dim(), self.envs.len());
        assert_eq!(actions.len(), n * ad, "actions length");
        assert_eq!(obs.len(), n * od, "obs length");
        assert_eq!(final_obs.len(), n * od, "final_obs length");
        assert_eq!(steps.len(), n, "steps length");
        assert!(
            self.was_reset,
            "VecEnv::step before the first VecEnv::reset"
        );
        for (i, env) in self.envs.iter_mut().enumerate() {
            let o = &mut obs[i * od..(i + 1) * od];
            let step = env.step(&actions[i * ad..(i + 1) * ad], o);
            steps[i] = step;
            final_obs[i * od..(i + 1) * od].copy_from_slice(o);
            if step.done() {
                env.reset(self.seeds.next_u64(), o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "VecEnv::step before the first VecEnv::reset")]
    fn stepping_before_the_first_reset_panics() {
        let spec = TaskId::Push.spec();
        let mut venv = VecEnv::new(TaskId::Push, 2, EnvConfig::default());
        let mut obs = vec![0.0; 2 * spec.obs_dim()];
        let mut fin = obs.clone();
        let mut steps = vec![Step::default(); 2];
        venv.step(
            &vec![0.0; 2 * spec.action_dim()],
            &mut obs,
            &mut fin,
            &mut steps,
        );
    }

    #[test]
    fn vector_matches_single_envs() {
        for task in TaskId::ALL {
            let spec = task.spec();
            let (od, ad, n) = (spec.obs_dim(), spec.action_dim(), 4);
            let mut venv = VecEnv::new(task, n, EnvConfig::default());
            let mut obs = vec![0.0; n * od];
            let mut fin = vec![0.0; n * od];
            let mut steps = vec![Step::default(); n];
            venv.reset(11, &mut obs);
            // Mirror with single envs using the same seed stream.
            let mut seeds = Rng::new(11);
            let mut singles: Vec<_> = (0..n)
                .map(|_| make_env(task, EnvConfig::default()))
                .collect();
            let mut sobs = vec![0.0; n * od];
            for (e, o) in singles.iter_mut().zip(sobs.chunks_exact_mut(od)) {
                e.reset(seeds.next_u64(), o);
            }
            assert_eq!(obs, sobs);
            let mut rng = Rng::new(5);
            let mut act = vec![0.0; n * ad];
            for _ in 0..300 {
                act.iter_mut().for_each(|a| *a = rng.range(-1.0, 1.0));
                venv.step(&act, &mut obs, &mut fin, &mut steps);
                for i in 0..n {
                    let o = &mut sobs[i * od..(i + 1) * od];
                    let s = singles[i].step(&act[i * ad..(i + 1) * ad], o);
                    assert_eq!(s, steps[i]);
                    // Every row: the step's own next observation.
                    assert_eq!(&fin[i * od..(i + 1) * od], &*o);
                    if s.done() {
                        singles[i].reset(seeds.next_u64(), o);
                    }
                }
                assert_eq!(obs, sobs, "task {task}");
            }
        }
    }
}
