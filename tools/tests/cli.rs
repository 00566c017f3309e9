//! The `tools` binary end to end: generate, inspect, validate, and rejection of damage.

use std::path::Path;
use std::process::Command;

fn tools(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(args)
        .output()
        .expect("run tools")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn generate_inspect_validate_every_task() {
    let tmp = tempfile::tempdir().unwrap();
    for task in ["arm-reach", "push", "maze"] {
        let dir = tmp.path().join(task);
        let d = dir.to_str().unwrap();
        let o = tools(&[
            "dataset",
            "generate",
            "--task",
            task,
            "--episodes",
            "30",
            "--out",
            d,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("wrote 30 episodes"), "{}", text(&o));
        let o = tools(&["dataset", "inspect", d]);
        assert!(o.status.success(), "{}", text(&o));
        let out = text(&o);
        assert!(
            out.contains("episodes    30") && out.contains("observation.state"),
            "{out}"
        );
        let o = tools(&["dataset", "validate", d]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("valid LeRobot v3 dataset: 30 episodes"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn generation_is_reproducible_and_round_trips_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let cfg = sim::EnvConfig::default();
    tools::generate::generate(sim::TaskId::Maze, 12, 5, cfg, &a).unwrap();
    tools::generate::generate(sim::TaskId::Maze, 12, 5, cfg, &b).unwrap();
    let da = dataset::read_dataset(&a).unwrap();
    let db = dataset::read_dataset(&b).unwrap();
    assert_eq!(da, db);
    // What was read back is exactly what the simulator recorded.
    let mut env = sim::make_env(sim::TaskId::Maze, cfg);
    let mut demo = sim::make_demonstrator(sim::TaskId::Maze);
    for (ep, seed) in da
        .episodes
        .iter()
        .zip(tools::generate::episode_seeds(5, 12))
    {
        let t = sim::record_episode(env.as_mut(), demo.as_mut(), seed);
        assert_eq!(*ep, tools::generate::to_episode(t));
    }
}

fn corrupt(dir: &Path) {
    let f = dir.join("data/chunk-000/file-000.parquet");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn damaged_dataset_is_rejected_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("push");
    let d = dir.to_str().unwrap();
    assert!(
        tools(&[
            "dataset",
            "generate",
            "--task",
            "push",
            "--episodes",
            "5",
            "--out",
            d
        ])
        .status
        .success()
    );
    corrupt(&dir);
    for cmd in ["validate", "inspect"] {
        let o = tools(&["dataset", cmd, d]);
        assert!(!o.status.success(), "{cmd} accepted a truncated file");
        let msg = text(&o);
        assert!(msg.contains("file-000.parquet"), "{cmd}: {msg}");
        assert!(!msg.contains("panicked"), "{cmd}: {msg}");
    }
}

#[test]
fn demo_refuses_to_overwrite_foreign_directories() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("maze")).unwrap();
    std::fs::write(tmp.path().join("maze/notes.txt"), "mine").unwrap();
    let o = tools(&[
        "demo",
        "--out",
        tmp.path().to_str().unwrap(),
        "--episodes",
        "3",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not a dataset written by `tools demo`"),
        "{}",
        text(&o)
    );
    assert!(tmp.path().join("maze/notes.txt").exists());
}

#[test]
fn unknown_task_is_a_clear_error() {
    let o = tools(&[
        "dataset",
        "generate",
        "--task",
        "fly",
        "--out",
        "/nonexistent",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown task 'fly'"), "{}", text(&o));
}
