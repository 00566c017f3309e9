//! The `tools` binary end to end: generate, inspect, validate, and rejection of damage.

use std::path::Path;
use std::process::Command;

fn tools(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(args)
        .output()
        .expect("run tools")
}

/// `tools dataset generate --task TASK --episodes N --out DIR`.
fn generate(task: &str, episodes: usize, out: &Path) -> std::process::Output {
    tools(&[
        "dataset",
        "generate",
        "--task",
        task,
        "--episodes",
        &episodes.to_string(),
        "--out",
        out.to_str().unwrap(),
    ])
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
        let o = generate(task, 30, &dir);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("wrote 30 episodes"), "{}", text(&o));
        let o = tools(&["dataset", "inspect", d]);
        assert!(o.status.success(), "{}", text(&o));
        let out = text(&o);
        assert!(
            out.contains("episodes    30") && out.contains("observation.state"),
            "{out}"
        );
        // Generated data is in policy units with no robot behind it.
        assert!(out.contains("action map  not recorded"), "{out}");
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
    assert_eq!(da.episodes.len(), 12);
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
    // A variant the task does not have is refused, and nothing is written: the
    // dataset's name would say `sim/push+gravity` over plain push dynamics.
    let gravity = sim::EnvConfig {
        gravity: true,
        ..cfg
    };
    let c = tmp.path().join("c");
    let e = tools::generate::generate(sim::TaskId::Push, 2, 5, gravity, &c).unwrap_err();
    assert!(
        e.to_string().contains("gravity applies to arm-reach only"),
        "{e}"
    );
    assert!(!c.exists());
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
    assert!(generate("push", 5, &dir).status.success());
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
    // Refused before any task's dataset was written (maze is the last).
    assert!(!tmp.path().join("arm-reach").exists());
    assert!(!tmp.path().join("push").exists());
}

/// `tools demo` replaces the datasets it wrote itself, and refuses (before removing
/// anything) a dataset it did not write, e.g. one from `dataset generate`.
#[test]
fn demo_replaces_only_its_own_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let demo = || tools(&["demo", "--out", out, "--episodes", "2", "--seed", "5"]);
    let o = demo();
    assert!(o.status.success(), "{}", text(&o));
    let o = demo();
    assert!(o.status.success(), "a rerun replaces its own: {}", text(&o));
    // A user's dataset where the demo would write its push one.
    let push = tmp.path().join("push");
    std::fs::remove_dir_all(&push).unwrap();
    let p = push.to_str().unwrap();
    let o = generate("push", 3, &push);
    assert!(o.status.success(), "{}", text(&o));
    // A file the demo would remove with its arm-reach dataset (rewritten with the same
    // seed, the dataset alone could not tell a rewrite from no rewrite).
    let sentinel = tmp.path().join("arm-reach/sentinel");
    std::fs::write(&sentinel, "kept").unwrap();
    let o = demo();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is not a dataset written by `tools demo`"),
        "{}",
        text(&o)
    );
    let o = tools(&["dataset", "inspect", p]);
    assert!(
        text(&o).contains("episodes    3\n"),
        "the user's dataset is kept: {}",
        text(&o)
    );
    // Checked before anything is removed: the demo's arm-reach dataset is still there,
    // untouched.
    assert!(tmp.path().join("arm-reach/meta/info.json").is_file());
    assert!(sentinel.is_file());
}

/// `tools demo` does not replace a dataset it wrote that has changed since (episodes
/// appended to it): they were removed with it.
#[test]
fn demo_keeps_its_dataset_once_episodes_are_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let demo = || tools(&["demo", "--out", out, "--episodes", "2", "--seed", "5"]);
    let o = demo();
    assert!(o.status.success(), "{}", text(&o));
    // An episode appended to the demo's maze dataset (as `controller log-to-dataset`
    // appends a robot's).
    let maze = tmp.path().join("maze");
    let ds = dataset::read_dataset(&maze).unwrap();
    let mut w = dataset::DatasetWriter::open_append(&maze).unwrap();
    w.append_episode(&ds.episodes[0]).unwrap();
    w.finish().unwrap();
    for task in ["arm-reach", "push"] {
        std::fs::write(tmp.path().join(task).join("sentinel"), "kept").unwrap();
    }
    let o = demo();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("maze: a dataset `tools demo` wrote, changed since"),
        "{}",
        text(&o)
    );
    assert_eq!(dataset::read_dataset(&maze).unwrap().episodes.len(), 3);
    // Checked before anything is replaced: the other tasks' datasets are the first
    // run's, untouched.
    for task in ["arm-reach", "push"] {
        assert!(tmp.path().join(task).join("sentinel").is_file(), "{task}");
    }
}

/// Leftovers of interrupted runs beside a dataset are named (a later run never took
/// them for its own, and said nothing): a `tools demo` cut between its two renames
/// left the previous dataset, complete, only under `.NAME.old-ID`.
#[test]
fn leftovers_of_interrupted_runs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let old = tmp.path().join(".push.old-1-2");
    let partial = tmp.path().join(".maze.partial-3-4");
    for d in [&old, &partial] {
        std::fs::create_dir_all(d).unwrap();
    }
    let o = tools(&["demo", "--out", out, "--episodes", "1", "--seed", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "{}: the dataset `tools demo` replaced, moved aside",
            old.display()
        )) && text(&o).contains(&format!(
            "{}: an interrupted write's unfinished data",
            partial.display()
        )),
        "{}",
        text(&o)
    );
    // Left where they are.
    assert!(old.is_dir() && partial.is_dir());
    // `dataset generate` names those of its own `--out` (not another's).
    let o = generate("maze", 1, &tmp.path().join("maze2"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("partial-3-4"), "{}", text(&o));
    std::fs::remove_dir_all(tmp.path().join("maze")).unwrap();
    let o = generate("maze", 1, &tmp.path().join("maze"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(".maze.partial-3-4"), "{}", text(&o));
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

/// Only `arm-reach` has a vertical variant; the flag is refused, not ignored, elsewhere.
#[test]
fn gravity_is_refused_for_tasks_in_the_plane() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("push");
    let o = tools(&[
        "dataset",
        "generate",
        "--task",
        "push",
        "--gravity",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--gravity: gravity applies to arm-reach only"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "nothing written");
}

/// `tools robot FILE`: the handshake's fields and the robot id's text for a good file;
/// file, line and field for a broken one.
#[test]
fn robot_prints_the_hello_and_names_what_is_wrong() {
    let robots = crate_dir().join("../firmware-config/robots");
    let push = robots.join("push.toml");
    let o = tools(&["robot", push.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    // 0xbb868dbb, 0xca2718a2: firmware-config's pinned id and settings hash for push
    // (computed with Python's zlib).
    assert!(
        out.contains(
            "robot id 0xbb868dbb, settings hash 0xca2718a2, 10 observations, 2 actions, 20 Hz"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "both act on):\naction.scale 1 1\naction.offset 0 0\nsafety.action_min -1 -1\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("robot 8:sim-push\nobservation 8:pusher_x\n"),
        "{out}"
    );
    assert!(
        out.contains("joint limits: none checked by the controller"),
        "{out}"
    );
    // What the firmware applies, in its units (push: scale 1, offset 0, envelope ±1,
    // max_delta_per_tick 2).
    assert!(
        out.contains(
            "action[1] `vy_command` in robot units: hold (policy 0) 0, envelope [-1, 1], at \
             most 2 per control step"
        ),
        "{out}"
    );
    // The arm names its joints' observations: the limits the controller checks.
    let arm = robots.join("arm-reach.toml");
    let o = tools(&["robot", arm.to_str().unwrap()]);
    let out = text(&o);
    assert!(
        out.contains(
            "joint limit checked by the controller: joint `elbow` velocity (observation \
             `qd2` = velocity × 0.1) in [-2, 2]"
        ),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text_of = std::fs::read_to_string(&push).unwrap();
    std::fs::write(&broken, text_of.replace("dim = 10", "dim = 11")).unwrap();
    let o = tools(&["robot", broken.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("broken.toml:"), "{}", text(&o));
    assert!(text(&o).contains("observation"), "{}", text(&o));
}

/// A copy of a recording without `next.observation.state` (LeRobot's) has none either:
/// it had the successors the reader derives written as if recorded, so training
/// bootstrapped a failed episode's last frame from its own observation.
#[test]
fn a_label_copy_does_not_invent_next_observations() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let o = generate("push", 3, &src);
    assert!(o.status.success(), "{}", text(&o));
    let mut raw = dataset::read_dataset(&src).unwrap();
    let od = raw.info.obs_dim();
    for ep in &mut raw.episodes {
        ep.set_outcome(false);
        // What the reader derives without the column: the next frame's, the last its own.
        ep.next_observations = ep.observations[od..].to_vec();
        let last = ep.observations.len() - od;
        ep.next_observations
            .extend_from_slice(&ep.observations[last..]);
    }
    let lerobot = tmp.path().join("lerobot");
    dataset::write_dataset_as(&lerobot, &raw.info, &raw.episodes, false).unwrap();
    assert!(
        !dataset::read_dataset(&lerobot)
            .unwrap()
            .next_observations_recorded
    );
    let out = tmp.path().join("labelled");
    let o = tools(&[
        "dataset",
        "label",
        lerobot.to_str().unwrap(),
        "--success",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let got = dataset::read_dataset(&out).unwrap();
    assert!(!got.next_observations_recorded);
    for (i, ep) in got.episodes.iter().enumerate() {
        // The success is terminal: every frame trains; a failure's last frame does not.
        let want = if i == 1 { ep.len() } else { ep.len() - 1 };
        assert_eq!(got.frames_with_successor(ep), want, "episode {i}");
    }
}

/// `dataset label`: a copy with sparse success rewards on the episodes named; the
/// source stays as it was; an episode that does not exist is named.
#[test]
fn label_writes_success_rewards_on_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let o = generate("push", 6, &src);
    assert!(o.status.success(), "{}", text(&o));
    // Like LeRobot's recordings: no rewards at all.
    let mut raw = dataset::read_dataset(&src).unwrap();
    for ep in &mut raw.episodes {
        ep.set_outcome(false);
    }
    let unlabelled = tmp.path().join("raw");
    dataset::write_dataset(&unlabelled, &raw.info, &raw.episodes).unwrap();
    let before = std::fs::read_dir(unlabelled.join("data/chunk-000"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();

    let out = tmp.path().join("labelled");
    let u = unlabelled.to_str().unwrap();
    let o = tools(&[
        "dataset",
        "label",
        u,
        "--success",
        "1,3-4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("50.0% labelled successful"),
        "{}",
        text(&o)
    );
    let got = dataset::read_dataset(&out).unwrap();
    assert_eq!(got.info, raw.info);
    assert_eq!(got.episodes.len(), 6);
    for (i, (g, r)) in got.episodes.iter().zip(&raw.episodes).enumerate() {
        let n = r.len();
        assert_eq!(g.observations, r.observations, "episode {i}");
        assert_eq!(g.actions, r.actions, "episode {i}");
        let success = [1, 3, 4].contains(&i);
        let want_reward: Vec<f32> = (0..n)
            .map(|t| (success && t == n - 1) as u8 as f32)
            .collect();
        assert_eq!(g.rewards, want_reward, "episode {i}");
        assert_eq!(g.is_success(), success, "episode {i}");
        assert_eq!(g.terminated[n - 1], success, "episode {i}");
        assert_eq!(g.truncated[n - 1], !success, "episode {i}");
    }
    // The source is untouched.
    let after = std::fs::read_dir(unlabelled.join("data/chunk-000"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(before, after);

    let o = tools(&[
        "dataset",
        "label",
        u,
        "--success",
        "2,6",
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("episode 6 does not exist (the dataset has 6 episodes"),
        "{}",
        text(&o)
    );
    // A copy inside the source (or onto it) is refused before anything is written.
    // Also where folders on the way do not exist yet: the check was skipped, and the
    // missing folders were made inside the source. And through a link into the source
    // followed by `..` (the kernel's `..`, not the text's).
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(unlabelled.join("meta"), elsewhere.join("link")).unwrap();
    for inside in [
        elsewhere.join("link/../copy"),
        unlabelled.join("labelled"),
        unlabelled.clone(),
        unlabelled.join("copies/v1"),
        unlabelled.join("new/../copy"),
    ] {
        let o = tools(&[
            "dataset",
            "label",
            u,
            "--success",
            "all",
            "--out",
            inside.to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("is inside the source dataset"),
            "{}",
            text(&o)
        );
    }
    assert!(!unlabelled.join("labelled").exists());
    assert!(!unlabelled.join("copies").exists());
    assert!(!unlabelled.join("new").exists() && !unlabelled.join("copy").exists());
}

/// Labels the source had are never replaced silently: success flags without rewards
/// are labels too (the warning looked at rewards only). `--success keep` alone changes
/// nothing, and says so.
#[test]
fn label_warns_about_replaced_flags_and_a_copy_that_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let o = generate("push", 3, &src);
    assert!(o.status.success(), "{}", text(&o));
    let mut ds = dataset::read_dataset(&src).unwrap();
    for ep in &mut ds.episodes {
        ep.rewards.iter_mut().for_each(|r| *r = 0.0);
        let last = ep.success.len() - 1;
        ep.success[last] = true;
    }
    let flags = tmp.path().join("flags");
    dataset::write_dataset(&flags, &ds.info, &ds.episodes).unwrap();
    // `dataset label SRC --success SUCCESS --out OUT` succeeds and prints `says`.
    let label_says = |src: &Path, success: &str, out: &str, says: &str| {
        let o = tools(&[
            "dataset",
            "label",
            src.to_str().unwrap(),
            "--success",
            success,
            "--out",
            tmp.path().join(out).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(says), "{}", text(&o));
    };
    label_says(
        &flags,
        "0",
        "a",
        "success or terminal flags already; they are replaced",
    );
    label_says(&flags, "keep", "b", "changes no label and no action");
    // A terminal end without a reward or a success flag (an arm-reach crash) is a
    // label as well: a failure label makes it truncated, and it was replaced silently.
    let mut crashed = ds.clone();
    for ep in &mut crashed.episodes {
        ep.success.iter_mut().for_each(|s| *s = false);
    }
    let last = crashed.episodes[0].len() - 1;
    crashed.episodes[0].terminated[last] = true;
    crashed.episodes[0].truncated[last] = false;
    let terminal = tmp.path().join("terminal");
    dataset::write_dataset(&terminal, &crashed.info, &crashed.episodes).unwrap();
    label_says(
        &terminal,
        "none",
        "crashed-labelled",
        "terminal flags already; they are replaced",
    );
    // A source with two tasks: the copy has one, and the label says so.
    let two = tmp.path().join("two-tasks");
    let mut w = dataset::DatasetWriter::create(&two, ds.info.clone()).unwrap();
    w.append_episode(&ds.episodes[0]).unwrap();
    w.set_task("wave hello");
    w.append_episode(&ds.episodes[1]).unwrap();
    w.finish().unwrap();
    label_says(
        &two,
        "all",
        "c",
        "the source has 2 tasks; the copy files every episode under the first",
    );
}

/// `dataset label --robot-units`: actions recorded in the robot's units come back in
/// policy units; one outside the policy's range is refused with its episode and frame.
#[test]
fn label_converts_robot_units_to_policy_units() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let o = generate("push", 4, &src);
    assert!(o.status.success(), "{}", text(&o));
    // A robot whose motors take offset + scale * a.
    let robot_file = tmp.path().join("robot.toml");
    let text_of = std::fs::read_to_string(crate_dir().join("../firmware-config/robots/push.toml"))
        .unwrap()
        .replace("scale = [1.0, 1.0]", "scale = [0.5, 2.0]")
        .replace("offset = [0.0, 0.0]", "offset = [0.1, -0.3]");
    std::fs::write(&robot_file, text_of).unwrap();
    let (scale, offset) = ([0.5f32, 2.0], [0.1f32, -0.3]);
    let policy = dataset::read_dataset(&src).unwrap();
    let mut raw = policy.clone();
    for ep in &mut raw.episodes {
        for a in ep.actions.chunks_exact_mut(2) {
            for i in 0..2 {
                a[i] = offset[i] + scale[i] * a[i];
            }
        }
    }
    let raw_dir = tmp.path().join("raw");
    dataset::write_dataset(&raw_dir, &raw.info, &raw.episodes).unwrap();
    // Recorded at another rate than the robot file's (LeRobot's 30 fps, push's 20 Hz):
    // warned at the label, not first at `controller run` after pretraining.
    let fast_dir = tmp.path().join("raw-30fps");
    let mut fast = raw.info.clone();
    fast.fps = 30;
    dataset::write_dataset(&fast_dir, &fast, &raw.episodes).unwrap();
    let o = tools(&[
        "dataset",
        "label",
        fast_dir.to_str().unwrap(),
        "--success",
        "all",
        "--robot-units",
        robot_file.to_str().unwrap(),
        "--out",
        tmp.path().join("fast-labelled").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("recorded at 30 fps") && text(&o).contains("runs at control_hz = 20"),
        "{}",
        text(&o)
    );

    let out = tmp.path().join("policy-units");
    let o = tools(&[
        "dataset",
        "label",
        raw_dir.to_str().unwrap(),
        "--success",
        "all",
        "--robot-units",
        robot_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // The generated source had rewards: the labels replaced them, and said so.
    assert!(
        text(&o).contains("rewards, success or terminal flags already; they are replaced"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("observation names"), "{}", text(&o));
    assert!(!text(&o).contains("recorded at"), "{}", text(&o));
    let got = dataset::read_dataset(&out).unwrap();
    assert!(!policy.episodes.is_empty());
    assert_eq!(got.episodes.len(), policy.episodes.len());
    let mut worst = 0.0f32;
    for (g, p) in got.episodes.iter().zip(&policy.episodes) {
        for (x, y) in g.actions.iter().zip(&p.actions) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst < 1e-6, "converted actions differ by {worst}");
    // The copy records the mapping it was converted through (bundles trained on it
    // carry it to the robot), and so is not converted a second time.
    let mapping = dataset::ActionMapping {
        scale: scale.to_vec(),
        offset: offset.to_vec(),
    };
    assert_eq!(got.info.action_mapping.as_ref(), Some(&mapping));
    let o = tools(&["dataset", "inspect", out.to_str().unwrap()]);
    assert!(
        text(&o).contains("action map  robot = 0.1 + 0.5 × a, -0.3 + 2 × a"),
        "{}",
        text(&o)
    );
    let o = tools(&[
        "dataset",
        "label",
        out.to_str().unwrap(),
        "--success",
        "keep",
        "--robot-units",
        robot_file.to_str().unwrap(),
        "--out",
        tmp.path().join("again").to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("records the action mapping it was recorded with")
            && text(&o).contains("would convert them twice"),
        "{}",
        text(&o)
    );
    assert!(!tmp.path().join("again").exists());
    // A label without --robot-units keeps it (the actions are unchanged).
    let relabelled = tmp.path().join("relabelled");
    let o = tools(&[
        "dataset",
        "label",
        out.to_str().unwrap(),
        "--success",
        "all",
        "--out",
        relabelled.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let relabelled = dataset::read_dataset(&relabelled).unwrap();
    assert_eq!(relabelled.info.action_mapping, Some(mapping));

    // `keep`: units converted, the source's labels untouched.
    let kept = tmp.path().join("kept");
    let o = tools(&[
        "dataset",
        "label",
        raw_dir.to_str().unwrap(),
        "--success",
        "keep",
        "--robot-units",
        robot_file.to_str().unwrap(),
        "--out",
        kept.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("warning"), "{}", text(&o));
    let kept = dataset::read_dataset(&kept).unwrap();
    assert_eq!(kept.episodes.len(), policy.episodes.len());
    for (k, p) in kept.episodes.iter().zip(&policy.episodes) {
        assert_eq!(
            (&k.rewards, &k.success, &k.terminated, &k.truncated),
            (&p.rewards, &p.success, &p.terminated, &p.truncated)
        );
    }

    // Actions named in another order than the robot file names them: each would be
    // converted with the other joint's scale and offset. Refused, nothing written.
    let swapped_dir = tmp.path().join("raw-swapped");
    let mut swapped = raw.info.clone();
    swapped.action_names.reverse();
    dataset::write_dataset(&swapped_dir, &swapped, &raw.episodes).unwrap();
    let swapped_out = tmp.path().join("swapped-labelled");
    let o = tools(&[
        "dataset",
        "label",
        swapped_dir.to_str().unwrap(),
        "--success",
        "keep",
        "--robot-units",
        robot_file.to_str().unwrap(),
        "--out",
        swapped_out.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o)
            .contains("action `vy_command` is at [0] in the dataset and at [1] in the robot file"),
        "{}",
        text(&o)
    );
    assert!(!swapped_out.exists());

    // A recording that named no observations or actions (a reader makes up
    // `observation.state.{i}` and `action.{i}`): the copy takes the robot file's names,
    // said so; runs and bundles then name them from pretraining on.
    let unnamed_dir = tmp.path().join("raw-unnamed");
    let mut unnamed = raw.info.clone();
    let od = unnamed.obs_dim();
    unnamed.observation_names = (0..od).map(|i| format!("observation.state.{i}")).collect();
    unnamed.action_names = vec!["action.0".into(), "action.1".into()];
    dataset::write_dataset(&unnamed_dir, &unnamed, &raw.episodes).unwrap();
    let named_out = tmp.path().join("named-labelled");
    let o = tools(&[
        "dataset",
        "label",
        unnamed_dir.to_str().unwrap(),
        "--success",
        "keep",
        "--robot-units",
        robot_file.to_str().unwrap(),
        "--out",
        named_out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let named = dataset::read_dataset(&named_out).unwrap();
    assert_eq!(named.info.observation_names, raw.info.observation_names);
    assert_eq!(named.info.action_names, raw.info.action_names);
    assert!(
        text(&o).contains(&format!(
            "it names no observations: the copy names them after {} ({}), in that order \
             (not checked)",
            robot_file.display(),
            raw.info.observation_names.join(", ")
        )) && text(&o).contains("it names no actions: the copy names them after")
            && !text(&o).contains("observation names differ"),
        "{}",
        text(&o)
    );

    // A dataset in policy units already (the generated one), converted with a robot
    // whose units are twice as wide: every action shrinks to half and stays in range, so
    // nothing refuses it; the label warns.
    let wide = tmp.path().join("wide.toml");
    std::fs::write(
        &wide,
        std::fs::read_to_string(crate_dir().join("../firmware-config/robots/push.toml"))
            .unwrap()
            .replace("scale = [1.0, 1.0]", "scale = [2.0, 2.0]"),
    )
    .unwrap();
    let o = tools(&[
        "dataset",
        "label",
        src.to_str().unwrap(),
        "--success",
        "keep",
        "--robot-units",
        wide.to_str().unwrap(),
        "--out",
        tmp.path().join("twice").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("every action is within [-1, 1] already")
            && text(&o).contains("converts it twice"),
        "{}",
        text(&o)
    );

    // Past the range the robot file maps the policy's [-1, 1] to.
    raw.episodes[2].actions[5] = 2.5; // (2.5 + 0.3) / 2 = 1.4
    let too_far = tmp.path().join("too-far");
    dataset::write_dataset(&too_far, &raw.info, &raw.episodes).unwrap();
    let o = tools(&[
        "dataset",
        "label",
        too_far.to_str().unwrap(),
        "--success",
        "all",
        "--robot-units",
        robot_file.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("episode 2, frame 2: action[1] = 2.5 in robot units is 1.4")
            && text(&o).contains("widen action.scale"),
        "{}",
        text(&o)
    );
}

/// This crate's directory as cargo sets it at run time: `env!` keeps the checkout the
/// test was compiled in, and cargo reuses a shared target directory's tests after a move.
fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

/// Arguments that used to panic or hang are refused by name: `bench sim --envs` outside
/// 2..=4096 (a division by zero, an index underflow), `teleop --idle-s` past a day (a
/// Duration overflow) or under 10 s (it ended between episodes) and an unspecified controller address (no observation would ever
/// be taken from it).
#[test]
fn bench_and_teleop_arguments_out_of_range_are_refused() {
    for envs in ["0", "1", "4097"] {
        let o = tools(&["bench", "sim", "--envs", envs, "--steps", "10"]);
        assert!(!o.status.success());
        assert!(text(&o).contains("--envs"), "{}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    // Past 1e12 steps: it ran for ever, and its step count overflowed.
    for steps in ["0", "1000000000001", "18446744073709551615"] {
        let o = tools(&["bench", "sim", "--steps", steps]);
        assert!(
            !o.status.success() && text(&o).contains("--steps"),
            "{}",
            text(&o)
        );
    }
    // `--repeats 0` ran once, silently.
    let o = tools(&["bench", "sim", "--repeats", "0", "--steps", "10"]);
    assert!(
        !o.status.success() && text(&o).contains("--repeats"),
        "{}",
        text(&o)
    );
    let teleop = |controller: &str, idle: &str| {
        tools(&[
            "teleop",
            "--controller",
            controller,
            "--task",
            "push",
            "--idle-s",
            idle,
        ])
    };
    // Shorter than the controller's silence between episodes: it ended there, and the
    // later episodes were recorded with the hold action.
    for idle in ["1e20", "1", "9.9", "NaN"] {
        let o = teleop("127.0.0.1:9", idle);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("--idle-s must be 10 to 86400 (a day) seconds"),
            "{idle}: {}",
            text(&o)
        );
    }
    let o = teleop("0.0.0.0:7979", "10");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("the controller's address 0.0.0.0:7979 is unspecified"),
        "{}",
        text(&o)
    );
}

/// `tools dataset tidy`: a data file no episode references (an unfinished file a killed
/// writer left), or index rows info.json does not commit, are named by `validate` as
/// what LeRobot would read otherwise than this repository (exit 1: it exited 0 with a
/// warning, "valid" to a script), and moved into `unreferenced/` or dropped by `tidy`,
/// which leaves the dataset as it was.
#[test]
fn tidy_sets_aside_what_lerobot_would_trip_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("push");
    let d = dir.to_str().unwrap();
    assert!(generate("push", 5, &dir).status.success());
    let leftover = dir.join("data/chunk-000/file-007.parquet");
    std::fs::write(&leftover, b"PAR1 and no footer").unwrap();
    let o = tools(&["dataset", "validate", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("LeRobot would not read it as this repository's readers do: ")
            && text(&o).contains("file-007.parquet is referenced by no episode")
            && text(&o).contains("Ours leave that out (5 episodes, ")
            && text(&o).contains("successful episodes); `tools dataset tidy "),
        "{}",
        text(&o)
    );
    assert!(
        !text(&o).contains("valid LeRobot v3 dataset"),
        "{}",
        text(&o)
    );
    let o = tools(&["dataset", "tidy", d]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("set aside") && out.contains("valid LeRobot v3 dataset: 5 episodes"),
        "{out}"
    );
    assert!(!out.contains("referenced by no episode"), "{out}");
    assert!(!leftover.exists());
    assert_eq!(
        std::fs::read(dir.join("unreferenced/chunk-000/file-007.parquet")).unwrap(),
        b"PAR1 and no footer"
    );
    // An episodes index file our index supersedes (left behind): its rows are past
    // info.json's totals. `validate` exited 0 with a warning; it refuses, naming the
    // rows and that the statistics were not checked, and `tidy` removes the file.
    let stale = dir.join("meta/episodes/chunk-000/file-001.parquet");
    std::fs::copy(dir.join("meta/episodes/chunk-000/file-000.parquet"), &stale).unwrap();
    let o = tools(&["dataset", "validate", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the episodes index lists 5 more rows than meta/info.json commits")
            && text(&o).contains("0 stats checked (none: they may describe the uncommitted")
            && !text(&o).contains("referenced by no episode"),
        "{}",
        text(&o)
    );
    let o = tools(&["dataset", "tidy", d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("valid LeRobot v3 dataset: 5 episodes"),
        "{}",
        text(&o)
    );
    assert!(!stale.exists());
    // A dataset with a feature this writer does not produce (a LeRobot recorder's
    // camera): its unreferenced file is set aside too, its metadata left as it was.
    // (`tidy` refused it: "cannot append to this dataset".)
    let info_path = dir.join("meta/info.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    info["features"]["observation.images.top"] =
        serde_json::json!({"dtype": "video", "shape": [3, 8, 8], "names": ["c", "h", "w"]});
    let info_text = serde_json::to_string_pretty(&info).unwrap();
    std::fs::write(&info_path, &info_text).unwrap();
    // Its uncommitted rows `tidy` does not drop (it rewrites no such metadata): the
    // refusal says what to remove by hand instead of sending the user to `tidy`.
    std::fs::copy(dir.join("meta/episodes/chunk-000/file-000.parquet"), &stale).unwrap();
    let o = tools(&["dataset", "validate", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "does not rewrite the metadata of a dataset with features this writer does \
             not produce (observation.images.top): remove by hand the episodes index rows \
             after the first 5 (meta/info.json's total_episodes, counted over the files \
             under meta/episodes/ in name order), then `tools dataset tidy "
        ),
        "{}",
        text(&o)
    );
    std::fs::remove_file(&stale).unwrap();
    std::fs::write(&leftover, b"PAR1 again").unwrap();
    let o = tools(&["dataset", "tidy", d]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("observation.images.top")
            && out.contains("valid LeRobot v3 dataset: 5 episodes"),
        "{out}"
    );
    assert!(!leftover.exists());
    assert_eq!(
        std::fs::read(dir.join("unreferenced/chunk-000/file-007.1.parquet")).unwrap(),
        b"PAR1 again"
    );
    assert_eq!(std::fs::read_to_string(&info_path).unwrap(), info_text);
    // Not a dataset: refused by name.
    let o = tools(&["dataset", "tidy", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a dataset"), "{}", text(&o));
}
