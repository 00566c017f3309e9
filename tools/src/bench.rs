//! Simulation throughput: steps per second per task, single env and vectorized.

use sim::{EnvConfig, Step, TaskId, VecEnv, make_env, rng::Rng};
use std::time::Instant;

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct SimThroughput {
    pub task: TaskId,
    /// 1 for the single-env API.
    pub envs: usize,
    pub steps: u64,
    pub seconds: f64,
}

impl SimThroughput {
    pub fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.seconds
    }
}

/// Random actions are drawn beforehand (a table cycled through) so that the figure is
/// the simulator's cost, not the random generator's.
fn action_table(dim: usize) -> Vec<f32> {
    let mut rng = Rng::new(0);
    (0..4096 * dim).map(|_| rng.range(-1.0, 1.0)).collect()
}

/// Steps one environment `steps` times with random actions, resetting on episode end.
pub fn bench_single(task: TaskId, steps: u64) -> SimThroughput {
    let spec = task.spec();
    let ad = spec.action_dim();
    let table = action_table(ad);
    let mut env = make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; spec.obs_dim()];
    env.reset(0, &mut obs);
    let mut resets = 0u64;
    let start = Instant::now();
    for i in 0..steps as usize {
        let k = (i % 4096) * ad;
        if env.step(&table[k..k + ad], &mut obs).done() {
            resets += 1;
            env.reset(resets, &mut obs);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&obs);
    SimThroughput {
        task,
        envs: 1,
        steps,
        seconds,
    }
}

/// Steps a vector of `n` environments until `steps` environment steps are done.
pub fn bench_vector(task: TaskId, n: usize, steps: u64) -> SimThroughput {
    let spec = task.spec();
    let (od, ad) = (spec.obs_dim(), spec.action_dim());
    let table = action_table(ad);
    let mut venv = VecEnv::new(task, n, EnvConfig::default());
    let mut obs = vec![0.0; n * od];
    let mut fin = vec![0.0; n * od];
    let mut out = vec![Step::default(); n];
    let mut actions = vec![0.0; n * ad];
    venv.reset(0, &mut obs);
    let calls = (steps as usize).div_ceil(n);
    let start = Instant::now();
    for c in 0..calls {
        let k = (c * n * ad) % (table.len() - n * ad).max(1);
        actions.copy_from_slice(&table[k..k + n * ad]);
        venv.step(&actions, &mut obs, &mut fin, &mut out);
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&obs);
    SimThroughput {
        task,
        envs: n,
        steps: (calls * n) as u64,
        seconds,
    }
}

/// The median of `sorted` (ascending, not empty): the mean of the two middle values for
/// an even count.
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&[3.0]), 3.0);
        assert_eq!(super::median(&[1.0, 2.0]), 1.5);
        assert_eq!(super::median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(super::median(&[1.0, 2.0, 9.0]), 2.0);
    }
}
