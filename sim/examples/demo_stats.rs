//! Prints each demonstrator's success rate and episode length (used to tune them).
//! `cargo run --release -p sim --example demo_stats -- [episodes]`
use sim::{EnvConfig, TaskId, make_demonstrator, make_env, record_episode};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    for task in TaskId::ALL {
        let mut env = make_env(task, EnvConfig::default());
        let mut demo = make_demonstrator(task);
        let (mut ok, mut len, mut term_fail) = (0, 0, 0);
        for seed in 0..n {
            let t = record_episode(env.as_mut(), demo.as_mut(), seed);
            ok += t.is_success() as u32;
            len += t.len();
            term_fail += (!t.is_success() && *t.terminated.last().unwrap()) as u32;
        }
        println!(
            "{task:10} success {:.3}  mean len {:.1}  aborted {:.3}",
            ok as f64 / n as f64,
            len as f64 / n as f64,
            term_fail as f64 / n as f64
        );
    }
}
