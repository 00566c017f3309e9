//! Writes episodes of one task as JSON on stdout, for the Python bindings' tests to
//! replay and compare exactly (`python/tests/test_determinism.py`).
//!
//! `cargo run --release -p sim --example write_trajectory -- TASK SEED EPISODES POLICY`
//!
//! Episode 0 is reset with `SEED`; episode k > 0 with the k-th value of
//! `Rng::new(SEED)`, the seed stream the Python environment's `reset()` without a seed
//! follows. `POLICY` is `demo` (the task's demonstrator, as `record_episode` drives it)
//! or `random:ACTION_SEED` (uniform actions in [-1.5, 1.5), so that clamping is
//! exercised too). Every float is written as its IEEE-754 bit pattern (a `u32`) so that
//! the comparison is exact.

use sim::{EnvConfig, TaskId, demonstrator_seed, make_demonstrator, make_env, rng::Rng};
use std::fmt::Write;

fn bits(values: &[f32]) -> String {
    let items: Vec<String> = values.iter().map(|v| v.to_bits().to_string()).collect();
    format!("[{}]", items.join(","))
}

fn flags(values: &[bool]) -> String {
    let items: Vec<&str> = values
        .iter()
        .map(|&b| if b { "true" } else { "false" })
        .collect();
    format!("[{}]", items.join(","))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, seed, episodes, policy] = args.as_slice() else {
        eprintln!("usage: write_trajectory TASK SEED EPISODES (demo | random:ACTION_SEED)");
        std::process::exit(2);
    };
    let task: TaskId = task.parse().unwrap_or_else(|e| panic!("{e}"));
    let seed: u64 = seed.parse().expect("SEED must be a u64");
    let episodes: usize = episodes.parse().expect("EPISODES must be a count");
    let mut random = match policy.strip_prefix("random:") {
        Some(s) => Some(Rng::new(s.parse().expect("ACTION_SEED must be a u64"))),
        None if policy == "demo" => None,
        None => panic!("POLICY must be demo or random:ACTION_SEED, got {policy}"),
    };

    let spec = task.spec();
    let mut env = make_env(task, EnvConfig::default());
    let mut demo = make_demonstrator(task);
    let mut seeds = Rng::new(seed);
    let mut obs = vec![0.0; spec.obs_dim()];
    let mut action = vec![0.0; spec.action_dim()];
    let mut out = format!("{{\"task\":\"{task}\",\"episodes\":[");
    for k in 0..episodes {
        let episode_seed = if k == 0 { seed } else { seeds.next_u64() };
        env.reset(episode_seed, &mut obs);
        demo.reset(demonstrator_seed(episode_seed));
        let first_obs = obs.clone();
        let (mut actions, mut observations, mut rewards) = (vec![], vec![], vec![]);
        let (mut terminated, mut truncated, mut success) = (vec![], vec![], vec![]);
        loop {
            match random.as_mut() {
                Some(rng) => action.iter_mut().for_each(|a| *a = rng.range(-1.5, 1.5)),
                None => demo.act(&obs, &mut action),
            }
            let step = env.step(&action, &mut obs);
            actions.push(bits(&action));
            observations.push(bits(&obs));
            rewards.push(step.reward);
            terminated.push(step.terminated);
            truncated.push(step.truncated);
            success.push(step.success);
            if step.done() {
                break;
            }
        }
        if k > 0 {
            out.push(',');
        }
        write!(
            out,
            "{{\"seed\":{episode_seed},\"first_obs\":{},\"actions\":[{}],\"obs\":[{}],\
             \"rewards\":{},\"terminated\":{},\"truncated\":{},\"success\":{}}}",
            bits(&first_obs),
            actions.join(","),
            observations.join(","),
            bits(&rewards),
            flags(&terminated),
            flags(&truncated),
            flags(&success),
        )
        .unwrap();
    }
    out.push_str("]}");
    println!("{out}");
}
