//! Interop with pyarrow / LeRobot: our datasets pass the Python v3 layout
//! check, and LeRobot-style files written by pyarrow read back correctly.
//! Requires `python3` with pyarrow (CI installs it); missing pyarrow FAILS.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dataset::{DatasetWriter, read_dataset, validate_dataset, write_dataset};

fn script() -> PathBuf {
    crate_dir().join("tests/interop/check_lerobot_v3.py")
}

fn require_pyarrow() {
    let ok = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "pyarrow is required: pip install pyarrow");
}

/// Run the script with `args`, panicking with its output unless it succeeds.
fn run_script(args: &[&str]) -> String {
    require_pyarrow();
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check_lerobot_v3.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn check(dir: &Path, episodes: usize, frames: usize) {
    let out = run_script(&[
        "check",
        dir.to_str().unwrap(),
        &episodes.to_string(),
        &frames.to_string(),
    ]);
    assert!(out.starts_with("ok:"), "{out}");
}

#[test]
fn pyarrow_accepts_our_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let eps = episodes(21, &[8, 3, 15, 1, 6]);
    write_dataset(dir, &info(), &eps[..3]).unwrap();
    check(dir, 3, 26);

    let mut w = DatasetWriter::open_append(dir).unwrap();
    for ep in &eps[3..] {
        w.append_episode(ep).unwrap();
    }
    w.finish().unwrap();
    check(dir, 5, 33);
}

/// A robot with one actuator: the action column of shape [1] is a plain float column,
/// as LeRobot loads it (a one-value list column cannot be cast to its `Value`), and
/// reads back exactly.
#[test]
fn one_value_vectors_are_plain_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut info = info();
    info.action_names.truncate(1);
    let mut eps = episodes(5, &[4, 7]);
    for ep in &mut eps {
        ep.actions = ep.actions.chunks(3).map(|a| a[0]).collect();
    }
    write_dataset(dir, &info, &eps).unwrap();
    check(dir, 2, 11);
    let back = dataset::read_dataset(dir).unwrap();
    for (a, b) in eps.iter().zip(&back.episodes) {
        assert_eq!(a.actions, b.actions);
    }
}

#[test]
fn the_checker_rejects_wrong_counts() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), &info(), &episodes(22, &[4])).unwrap();
    require_pyarrow();
    let out = Command::new("python3")
        .arg(script())
        .args(["check", tmp.path().to_str().unwrap(), "1", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("total_frames"));
}

/// The checker compares values, not only the layout: a dtype that does not match the
/// column, statistics that are not the data's, and timestamps off `frame_index / fps`
/// each fail it (it passed all three: a writer bug mirrored in our reader would have
/// gone unseen).
#[test]
fn the_checker_reads_the_values() {
    require_pyarrow();
    for (what, tamper, want) in [
        (
            "dtype",
            (
                "info.json",
                "/features/observation.state/dtype",
                serde_json::json!("bool"),
            ),
            "column 'observation.state' holds float, its dtype says bool",
        ),
        (
            "stats",
            ("stats.json", "/action/mean/0", serde_json::json!(7.5)),
            "action.mean[0] is 7.5, the data read gives",
        ),
        (
            "fps",
            ("info.json", "/fps", serde_json::json!(7)),
            "row 1: timestamp 0.05000000074505806 is not frame_index / fps = 1/7",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_dataset(dir, &info(), &episodes(23, &[4, 6])).unwrap();
        check(dir, 2, 10);
        let (file, pointer, value) = tamper;
        let path = dir.join("meta").join(file);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        *json.pointer_mut(pointer).unwrap() = value;
        std::fs::write(&path, json.to_string()).unwrap();
        let out = Command::new("python3")
            .arg(script())
            .args(["check", dir.to_str().unwrap(), "2", "10"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: passed");
        assert!(err.contains(want), "{what}: {err}");
    }
}

/// Expected value of the Python writer's `observation.state[i][j] = i + j/10`.
fn val(i: usize, j: usize) -> f32 {
    (i as f64 + j as f64 / 10.0) as f32
}

#[test]
fn we_read_lerobot_style_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lerobot");
    run_script(&["write", dir.to_str().unwrap()]);

    let ds = read_dataset(&dir).unwrap();
    assert_eq!(ds.info.fps, 10);
    assert_eq!(ds.info.robot_type, "so100_follower");
    assert_eq!(ds.info.task, "pick up the cube");
    assert_eq!(ds.info.observation_names[3], "joint3.pos");
    assert_eq!(ds.info.action_names, ["motor0", "motor1"]); // {"motors": [...]} form
    assert_eq!(ds.episodes.len(), 2);
    // Without next.observation.state, training leaves out a last frame that is not
    // terminal. LeRobot's next.done marks every episode's end, so without
    // next.truncated or a success these ends read as cut: each last frame is left out.
    assert!(!ds.next_observations_recorded);
    for ep in &ds.episodes {
        assert_eq!(ds.frames_with_successor(ep), ep.len() - 1);
    }
    let mut i = 0; // global frame index
    for (e, (ep, n)) in ds.episodes.iter().zip([5, 7]).enumerate() {
        assert_eq!(ep.len(), n, "episode {e}");
        for k in 0..n {
            for j in 0..4 {
                assert_eq!(ep.observations[k * 4 + j], val(i, j));
                // No next.observation.state: successor frame, last frame repeats itself.
                let next = if k + 1 < n { i + 1 } else { i };
                assert_eq!(ep.next_observations[k * 4 + j], val(next, j));
            }
            for j in 0..2 {
                assert_eq!(ep.actions[k * 2 + j], -val(i, j));
            }
            assert_eq!(ep.rewards[k], k as f32 / 2.0);
            // next.done on the last frame, no next.truncated, no success → cut.
            assert!(!ep.terminated[k]);
            assert_eq!(ep.truncated[k], k + 1 == n);
            assert!(!ep.success[k]);
            // Columns LeRobot does not write read as false.
            assert!(!ep.intervention[k] && !ep.teleop[k]);
            i += 1;
        }
    }
    // The Python-written stats.json agrees with our computation.
    let report = validate_dataset(&dir).unwrap();
    assert_eq!((report.episodes, report.frames), (2, 12));
    assert!(report.stats_checked >= 4, "{report:?}");

    // Appending to a foreign dataset keeps its schema (no next.* columns added).
    let mut w = DatasetWriter::open_append(&dir).unwrap();
    assert!(w.writes(dataset::cols::ACTION));
    assert!(!w.writes(dataset::cols::TELEOP) && !w.writes(dataset::cols::NEXT_OBS));
    let mut rng = Rng::new(5);
    let n = 4;
    let mut ep = dataset::Episode {
        observations: (0..n * 4).map(|_| rng.f32()).collect(),
        next_observations: Vec::new(),
        actions: (0..n * 2).map(|_| rng.f32()).collect(),
        rewards: vec![1.0; n],
        terminated: vec![false; n],
        truncated: vec![false, false, false, true],
        success: vec![false; n],
        intervention: vec![false; n],
        teleop: vec![false; n],
    };
    ep.next_observations = ep.observations[4..].to_vec();
    ep.next_observations
        .extend_from_slice(&ep.observations[12..]);
    // An episode these columns cannot represent is refused, and nothing of it is
    // written: without next.truncated or next.success, a terminal end would read back
    // as cut.
    let mut terminal = ep.clone();
    terminal.truncated[n - 1] = false;
    terminal.terminated[n - 1] = true;
    let e = w.append_episode(&terminal).unwrap_err().to_string();
    assert!(
        e.contains("no `next.observation.state`, `next.truncated`, `next.success` column")
            && e.contains("terminated flags, truncated flags would read back changed"),
        "{e}"
    );
    w.append_episode(&ep).unwrap();
    w.finish().unwrap();
    check(&dir, 3, 16);
    let ds = read_dataset(&dir).unwrap();
    assert_eq!(ds.episodes[2], ep);
    validate_dataset(&dir).unwrap();
}

/// LeRobot's pusht carries `next.success` beside `next.done`: an episode whose last
/// frame is a success ended in a terminal state, any other end was cut.
#[test]
fn a_lerobot_success_marks_a_terminal_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lerobot");
    run_script(&["write", dir.to_str().unwrap(), "--success"]);
    let ds = read_dataset(&dir).unwrap();
    let (won, cut) = (&ds.episodes[0], &ds.episodes[1]);
    assert_eq!(won.terminated, [false, false, false, false, true]);
    assert!(won.truncated.iter().all(|t| !t));
    assert!(won.success[4]);
    assert!(cut.terminated.iter().all(|t| !t));
    assert_eq!(cut.truncated.last(), Some(&true));
    assert_eq!(ds.frames_with_successor(won), 5);
    assert_eq!(ds.frames_with_successor(cut), 6);
}

/// This crate's directory as cargo sets it at run time: `env!` keeps the checkout the
/// test was compiled in, and cargo reuses a shared target directory's tests after a move.
fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}
