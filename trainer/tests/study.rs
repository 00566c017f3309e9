//! The study's summary and learning-curve plot from (synthetic) finished runs.

use sim::TaskId;
use std::path::Path;
use trainer::config::Algo;
use trainer::study::{load_curve, steps_to_reach, summarize};

fn fake_run(out: &Path, algo: &str, seed: u64, rates: &[f64]) {
    let dir = out.join("push").join(algo).join(format!("seed-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("step,success_rate,mean_return,mean_length,episodes\n");
    for (i, r) in rates.iter().enumerate() {
        csv += &format!("{},{r},{r},50,10\n", i * 1000);
    }
    std::fs::write(dir.join("eval.csv"), csv).unwrap();
    std::fs::write(dir.join("done"), "").unwrap();
}

#[test]
fn summary_and_plot_from_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    fake_run(out, "expo", 0, &[0.2, 0.6, 0.9]);
    fake_run(out, "expo", 1, &[0.4, 0.8, 0.9]);
    fake_run(out, "bc", 0, &[0.4, 0.4, 0.5]);
    fake_run(out, "bc", 1, &[0.4, 0.5, 0.5]);
    // An unfinished run is ignored.
    let partial = out.join("push/bc/seed-2");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("eval.csv"), "step,success_rate\n0,0.0\n").unwrap();

    let expo = load_curve(out, TaskId::Push, Algo::Expo).unwrap().unwrap();
    assert_eq!(expo.steps, [0, 1000, 2000]);
    assert!((expo.mean[1] - 0.7).abs() < 1e-9 && (expo.std[1] - 0.1).abs() < 1e-9);
    let bc = load_curve(out, TaskId::Push, Algo::Bc).unwrap().unwrap();
    assert_eq!(bc.seeds, 2);
    // BC ends at 0.5; EXPO's mean passes it at step 1000.
    assert_eq!(steps_to_reach(&expo, 0.5), Some(1000));

    let text = summarize(out, &[TaskId::Push], &[Algo::Expo, Algo::Bc]).unwrap();
    assert!(
        text.contains("| push | expo | 2 | 0.30 ± 0.10 | 0.90 ± 0.00 |"),
        "{text}"
    );
    assert!(
        text.contains("EXPO reaches that at step 1000 (0.50x"),
        "{text}"
    );
    let png = std::fs::read(out.join("push.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 10_000,
        "plot suspiciously small: {} bytes",
        png.len()
    );
}
