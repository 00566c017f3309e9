//! Update-speed benchmark and the FLOP count of one environment step.

use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

use crate::agent::StepBatch;
use crate::agent::{Agent, StageTimes};
use crate::config::{Algo, Config, EditBase};
use crate::replay::{Normalizer, Replay, draw_mixed};

/// The widest vector instructions this CPU gives the CPU backends' matrix products:
/// gemm picks its kernels by them at run time (`avx512` with the trainer's `x86-v4`
/// build of gemm, else `avx2`, else `baseline`). Benchmarks print it, since it sets the
/// speed, and results differ in the last bits between machines that differ in it.
pub fn cpu_matmul_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2";
        }
    }
    "baseline"
}

/// The median of `values`: the middle one, or the mean of the two middle ones for an
/// even count (until 2026-12-01 `bench` took the upper of the two, which for `--steps 2`
/// was the slower step).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Floating-point operations (2 per multiply-add) of one environment step of `config`:
/// acting, next-action candidates and their scoring (the candidates by one subset, the
/// picked one by a second), UTD critic updates (backward counted as twice the forward),
/// the denoiser update and the edit-policy update (a chain per row only with
/// `expo.edit_base = "denoiser"`; `"buffer"` edits the replay's actions). Elementwise
/// work is left out; it is small next to the matrix products. (Until 2026-12-05 the
/// edit update always counted a chain, and the second subset was left out.)
pub fn flops_per_env_step(c: &Config, obs_dim: usize, act_dim: usize) -> f64 {
    let (o, a) = (obs_dim as f64, act_dim as f64);
    let n = &c.net;
    let (h, e, blocks) = (
        n.denoiser_hidden as f64,
        n.denoiser_expanded as f64,
        n.denoiser_blocks as f64,
    );
    let steps = c.diffusion.steps as f64;
    // Per chain row: the observation projection once, then per step the action block,
    // the residual blocks and the output layer.
    let chain_row = o * h + steps * (a * h + blocks * 2.0 * h * e + h * a);
    let mlp = |d_in: f64, widths: &[usize], d_out: f64| {
        let mut d = d_in;
        let mut macs = 0.0;
        for &w in widths {
            macs += d * w as f64;
            d = w as f64;
        }
        macs + d * d_out
    };
    let critic = mlp(o + a, &n.critic_widths, 1.0);
    let edit = mlp(o + a, &n.critic_widths, 2.0 * a);
    let members = n.num_critics as f64;
    let subset = c.expo.critic_subset as f64;
    let (b, utd) = (c.optim.batch_size as f64, c.optim.utd as f64);
    let (ns, ne) = (
        c.expo.num_samples as f64,
        if c.algo == Algo::Expo {
            c.expo.num_edit as f64
        } else {
            0.0
        },
    );
    let m = ns + ne;
    let time_row = n.fourier_features as f64 * n.time_hidden as f64
        + (n.time_hidden as f64).powi(2)
        + n.time_hidden as f64 * h;
    let denoiser_row = o * h + a * h + blocks * 2.0 * h * e + h * a + time_row;
    let macs = match c.algo {
        Algo::Bc => 3.0 * b * denoiser_row + ns.min(1.0) * chain_row,
        Algo::Rlpd => {
            let actor = mlp(o, &n.critic_widths, 2.0 * a);
            let targets = utd * b * (actor + subset * critic);
            let updates = utd * b * 3.0 * members * critic;
            let actor_update = 3.0 * b * (actor + members * critic);
            actor + targets + updates + actor_update
        }
        Algo::Expo | Algo::IdqlSelect => {
            let act = ns * chain_row + ne * edit + m * subset * critic;
            let candidates = utd * b * (ns * chain_row + ne * edit);
            let scoring = utd * b * (m + 1.0) * subset * critic;
            let updates = utd * b * 3.0 * members * critic;
            let den = 3.0 * b * denoiser_row;
            let edit_base = match c.expo.edit_base {
                EditBase::Denoiser => b * chain_row,
                EditBase::Buffer => 0.0,
            };
            let edit_update = if c.algo == Algo::Expo {
                edit_base + 3.0 * b * (edit + members * critic)
            } else {
                0.0
            };
            act + candidates + scoring + updates + den + edit_update
        }
    };
    2.0 * macs
}

/// Result of [`bench_updates`].
#[derive(Clone, Debug, Serialize)]
pub struct UpdateBench {
    pub preset: String,
    pub algo: String,
    /// Observation and action dimensions (the task's, or a robot dataset's), as the
    /// networks see them: with action chunks `act_dim` is the whole chunk's
    /// (`action_horizon` × the task's).
    pub obs_dim: usize,
    pub act_dim: usize,
    pub env_steps: usize,
    pub seconds_per_env_step: Vec<f64>,
    pub median_seconds: f64,
    /// `optim.utd` per median step (also for `bc`, which has no critic: then the
    /// steps' update slices).
    pub critic_updates_per_second: f64,
    pub gflop_per_env_step: f64,
    pub gflops: f64,
    pub stages: StageTimes,
    /// With `compute.graph`: each recorded part and whether it replayed as a device
    /// graph (a failed recording runs directly: this says so, with the reason).
    pub graphs: Vec<(String, crate::agent::Recorded)>,
}

/// Times `steps` environment steps (one new transition stored, the batch's sampling and
/// upload or device gather, one action, the UTD update) on scripted transitions of the
/// configured task, after `warmup` untimed steps (which include a GPU backend's kernel
/// compilation). The batches come from the offline buffer alone; the new transitions go
/// to an online buffer of a run's size, as in training (`compute.replay = "device"`
/// uploads each to the device).
pub fn bench_updates(
    c: &Config,
    steps: usize,
    warmup: usize,
    sync_stages: bool,
) -> Result<UpdateBench> {
    let mut tiny = c.clone();
    tiny.run.offline_episodes = 20;
    let offline = crate::run::offline_data(&tiny)?.replay;
    let (od, ad) = (offline.obs_dim, offline.act_dim);
    let normalizer = Normalizer::fit(offline.observations(), od);
    let step_ad = ad / c.action_horizon;
    crate::device::check_trains_on(c)?;
    let mut agent = Agent::new(c.clone(), od, step_ad, normalizer, &crate::run::device(c)?);
    agent.sync_stages = sync_stages;
    let mut online = Replay::new(od, ad, crate::run::ONLINE_CAPACITY);
    let mut rng = sim::rng::Rng::new(1);
    let mut rows = Vec::new();
    let obs: Vec<f32> = offline.observations()[..od].to_vec();
    let mut times = vec![];
    for i in 0..warmup + steps {
        if i == warmup {
            agent.times = StageTimes::default();
        }
        let t = Instant::now();
        let new = offline.rows(i % offline.len()..i % offline.len() + 1);
        online.push(
            new.obs,
            new.act,
            new.rew[0],
            new.next_obs,
            new.mask[0] == 0.0,
        );
        draw_mixed(
            &mut rng,
            &offline,
            &online,
            1.0,
            c.optim.utd,
            c.optim.batch_size,
            &mut rows,
        );
        agent.times.batch += t.elapsed().as_secs_f64();
        let _ = agent.act(&obs);
        // Metrics stay on the device, as in training (read back per logging interval).
        agent.train_step(StepBatch::Drawn {
            offline: &offline,
            online: &online,
            rows: &rows,
        })?;
        // GPU work is queued asynchronously: the step ends when the device is done.
        agent.sync();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let median = median(&times);
    let flop = flops_per_env_step(c, od, ad);
    Ok(UpdateBench {
        preset: c.preset.clone(),
        algo: crate::study::algo_name(c.algo).to_string(),
        obs_dim: od,
        act_dim: ad,
        env_steps: steps,
        seconds_per_env_step: times,
        median_seconds: median,
        critic_updates_per_second: c.optim.utd as f64 / median,
        gflop_per_env_step: flop / 1e9,
        gflops: flop / median / 1e9,
        stages: agent.times.clone(),
        graphs: agent
            .graphs()
            .into_iter()
            .map(|(part, status)| (part.to_string(), status))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn paper_step_is_about_one_and_a_half_teraflop() {
        // gpu.md: ≈1.5 TFLOP per environment step at the paper's sizes, 93% of it in the
        // denoising chains of the TD targets (obs 20, act 4 as in the reference figure).
        let c = Config::paper();
        let f = flops_per_env_step(&c, 20, 4);
        assert!((1.2e12..1.7e12).contains(&f), "{f:e}");
    }

    /// The edit update samples its base actions with a chain only with
    /// `edit_base = "denoiser"`; the presets' `"buffer"` runs none (a chain per row was
    /// counted either way: the `cpu` step 9% too many).
    #[test]
    fn the_edit_updates_chain_is_counted_only_when_it_runs() {
        let mut c = Config::cpu();
        assert_eq!(c.expo.edit_base, EditBase::Buffer);
        let buffer = flops_per_env_step(&c, 20, 4);
        c.expo.edit_base = EditBase::Denoiser;
        let denoiser = flops_per_env_step(&c, 20, 4);
        assert!(denoiser > buffer * 1.05, "{buffer:e} vs {denoiser:e}");
    }
}
