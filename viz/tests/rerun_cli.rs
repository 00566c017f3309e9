//! The recordings checked with the rerun viewer's own command-line tool, from the
//! `rerun-sdk` wheel of the same version (`pip install rerun-sdk==0.36.3`; scripts/test
//! installs it from requirements-test.txt): `rerun rrd verify` must accept every file,
//! and `rerun rrd print` must list the expected entities with the expected number of
//! rows. The CLI runs as `python3 -m rerun_cli` (`RERUN_PYTHON` picks another Python).

use sim::{EnvConfig, TaskId};
use std::collections::BTreeMap;
use std::path::Path;
use viz::Target;
use viz::tick::{ActView, LinkView, TickLogger, TickView};

fn verified_rows(rrd: &Path) -> BTreeMap<String, usize> {
    viz::cli::verified_rows(rrd).unwrap()
}

#[test]
fn a_generated_dataset_becomes_a_valid_recording() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("push");
    let summary =
        tools::generate::generate(TaskId::Push, 3, 11, EnvConfig::default(), &data).unwrap();
    let rrd = tmp.path().join("push.rrd");
    let w = viz::dataset_to_rrd(&data, None, &Target::File(rrd.clone())).unwrap();
    assert_eq!((w.episodes, w.frames), (3, summary.total_frames));
    assert!(w.scene, "push is a known task: its scene is drawn");

    let rows = verified_rows(&rrd);
    let ds = dataset::read_dataset(&data).unwrap();
    let frames = ds.num_frames();
    for name in &ds.info.observation_names {
        let e = format!("/observation.state/{}", viz::path_part(name));
        assert_eq!(rows.get(&e), Some(&frames), "{e}: {rows:?}");
    }
    for name in &ds.info.action_names {
        let e = format!("/action/{}", viz::path_part(name));
        assert_eq!(rows.get(&e), Some(&frames), "{e}: {rows:?}");
    }
    for e in [
        "/next.reward",
        "/next.success",
        "/intervention",
        "/teleop",
        "/scene/robot/discs",
        "/scene/object/discs",
        "/scene/goal/discs",
        "/scene/walls/boxes",
    ] {
        assert_eq!(rows.get(e), Some(&frames), "{e}: {rows:?}");
    }
}

#[test]
fn a_training_runs_csv_files_become_scalars_on_their_step_timeline() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.csv"),
        "step,critic_loss,q_mean,temperature\n100,0.5,1.0,0.1\n200,0.4,1.2,0.09\n300,0.3,,0.08\n",
    )
    .unwrap();
    std::fs::write(
        run.join("eval.csv"),
        "step,success_rate,mean_return,mean_length,episodes\n0,0.4,0.4,80,50\n300,0.7,0.7,60,50\n",
    )
    .unwrap();
    let rrd = tmp.path().join("run.rrd");
    let w = viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap();
    assert_eq!(w.files, [("eval".into(), 2), ("metrics".into(), 3)]);
    assert!(w.torn.is_empty());
    let rows = verified_rows(&rrd);
    assert_eq!(
        rows.get("/metrics/metrics/critic_loss"),
        Some(&3),
        "{rows:?}"
    );
    // The empty cell is skipped, not logged as 0.
    assert_eq!(rows.get("/metrics/metrics/q_mean"), Some(&2), "{rows:?}");
    assert_eq!(rows.get("/metrics/eval/success_rate"), Some(&2), "{rows:?}");

    // Each file's rows are on its own timeline only: `pretrain.csv` (by update) sorts
    // after `eval.csv` and `metrics.csv` (by step), and used to be filed at their last
    // step as well.
    std::fs::write(run.join("pretrain.csv"), "update,bc_loss\n0,1.0\n50,0.5\n").unwrap();
    // An existing recording is never written over (the SDK emptied it as it opened).
    let before = std::fs::read(&rrd).unwrap();
    let err = viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap_err();
    assert!(format!("{err:#}").contains("never written over"), "{err:#}");
    assert_eq!(std::fs::read(&rrd).unwrap(), before);
    std::fs::remove_file(&rrd).unwrap();
    viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap();
    let chunks = viz::cli::chunk_timelines(&rrd).unwrap();
    for (entity, timeline) in [
        ("/metrics/pretrain/bc_loss", "update"),
        ("/metrics/metrics/critic_loss", "step"),
    ] {
        let on: Vec<_> = chunks.iter().filter(|c| c.0 == entity).collect();
        assert!(
            !on.is_empty() && on.iter().all(|c| c.1 == [timeline.to_string()].into()),
            "{entity}: {on:?}"
        );
    }
    std::fs::remove_file(run.join("pretrain.csv")).unwrap();
    // Two files whose names become the same entity (`a b`, `a_b`) are filed apart, as
    // columns are: their series were mixed into one.
    std::fs::write(run.join("a b.csv"), "step,x\n0,1.0\n").unwrap();
    std::fs::write(run.join("a_b.csv"), "step,x\n0,2.0\n1,3.0\n").unwrap();
    std::fs::remove_file(&rrd).unwrap();
    let w = viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap();
    assert_eq!(
        w.files[..2],
        [("a_b".into(), 1), ("a_b_2".into(), 2)],
        "{:?}",
        w.files
    );
    let rows = verified_rows(&rrd);
    assert_eq!(rows.get("/metrics/a_b/x"), Some(&1), "{rows:?}");
    assert_eq!(rows.get("/metrics/a_b_2/x"), Some(&2), "{rows:?}");
    for f in ["a b.csv", "a_b.csv"] {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    std::fs::remove_file(&rrd).unwrap();
    viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap();

    // A malformed row names the file and line, and the recording written before is
    // left as it was (every file is checked before the recording is opened).
    let good = std::fs::read(&rrd).unwrap();
    std::fs::write(run.join("eval.csv"), "step,success_rate\n0,0.4\n1,0.5,9\n").unwrap();
    let err = viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("eval.csv:3") && msg.contains("3 cells"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&rrd).unwrap(), good);
    // A last row cut short as the trainer appended it (killed, disk full): left out
    // and named, the rows before it recorded (the whole run was refused).
    std::fs::write(run.join("eval.csv"), "step,success_rate\n0,0.4\n100,0.").unwrap();
    std::fs::remove_file(&rrd).unwrap();
    let w = viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap();
    assert_eq!(w.files, [("eval".into(), 1), ("metrics".into(), 3)]);
    assert_eq!(w.torn, ["eval"]);
    std::fs::remove_file(&rrd).unwrap();
    std::fs::write(&rrd, &good).unwrap();
    // A step that is not a whole number is refused, not logged at step 0.
    std::fs::write(run.join("eval.csv"), "step,success_rate\n0,0.4\nNaN,0.5\n").unwrap();
    let err = viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap_err();
    assert!(
        format!("{err:#}").contains("eval.csv:3: step \"NaN\" is not a whole number"),
        "{err:#}"
    );
    assert_eq!(std::fs::read(&rrd).unwrap(), good);
}

/// The CLI read line by line (`verify`'s `rrd print`): a line the reader refuses ends
/// the run with the reader's error, the CLI waited for. (The `rerun_cli` wheel's wrapper
/// exits 0 even on its own errors, a missing file or an unknown flag, so `verify` judges
/// by the text and checks the path itself.)
#[test]
fn the_cli_read_line_by_line_stops_at_a_refused_line() {
    let err = viz::cli::rerun_cli_lines(&["--version"], |line| anyhow::bail!("refused {line:?}"))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("refused \"rerun-cli"),
        "{err:#}"
    );
}

/// An empty CSV file (a header the trainer was writing as it was killed) is left out and
/// named, not a refusal of the whole run; cells of text, infinities and `NaN`s (a typo, a
/// diverged run's row) are counted and the first one placed (they were dropped without a
/// word); `NaN` in `train_return`, the trainer's "no episode ended in this window", is
/// not counted.
#[test]
fn a_runs_empty_file_and_non_numbers_are_left_out_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.csv"),
        "step,critic_loss,train_return\n100,0.5,1.0\n200,0.5x,NaN\n300,NaN,inf\n",
    )
    .unwrap();
    std::fs::write(run.join("eval.csv"), "").unwrap();
    let rrd = tmp.path().join("run.rrd");
    let w = viz::run_to_rrd(&run, &Target::File(rrd.clone())).unwrap();
    assert_eq!(w.files, [("metrics".into(), 3)]);
    assert_eq!(w.empty, ["eval"]);
    assert_eq!(
        w.not_numbers,
        [("metrics".into(), 3, "line 3, critic_loss \"0.5x\"".into())]
    );
    let rows = verified_rows(&rrd);
    assert_eq!(
        rows.get("/metrics/metrics/critic_loss"),
        Some(&1),
        "{rows:?}"
    );
    // Nothing but empty files: refused.
    std::fs::remove_file(run.join("metrics.csv")).unwrap();
    let err = viz::run_to_rrd(&run, &Target::File(tmp.path().join("b.rrd"))).unwrap_err();
    assert!(
        format!("{err:#}").contains("every CSV file is empty (eval.csv)"),
        "{err:#}"
    );
}

/// The policy's last choice goes from the view once the policy stops driving (a safe
/// stop's ticks, which act with no policy step): it stayed drawn as the selected action.
/// A running tick that did not act (no fresh frame: the last command stands) keeps it.
#[test]
fn the_choice_is_cleared_when_the_policy_stops_driving() {
    let tmp = tempfile::tempdir().unwrap();
    let rrd = tmp.path().join("ticks.rrd");
    let r = viz::Recorder::open("expo_ticks_test", &Target::File(rrd.clone())).unwrap();
    let act_names = vec!["shoulder".to_string(), "elbow".to_string()];
    let obs_names: Vec<String> = (0..3).map(|i| format!("o{i}")).collect();
    let mut logger = TickLogger::new(None, &obs_names, &act_names);
    let candidates = [0.1, 0.2, -0.3, 0.4];
    let q = [0.5, 0.7];
    let obs = [0.0; 3];
    // Policy steps at ticks 0-4 and 7-8, two running ticks without one between, then a
    // safe stop from tick 9.
    for tick in 0..12u64 {
        let act = (tick < 5 || (7..9).contains(&tick)).then_some(ActView {
            obs: &obs,
            policy_action: &[0.1, 0.2],
            action: &[0.1, 0.2],
            clamped: false,
            rate_limited: false,
            teleop: false,
            candidates: &candidates,
            num_base: 2,
            q: &q,
            selected: Some(1),
        });
        let t = TickView {
            tick,
            time_s: tick as f64 * 0.01,
            episode: None,
            phase: if tick < 9 { "running" } else { "safe_stop" },
            jitter_us: 1.0,
            work_us: 300.0,
            read_us: 3.0,
            infer_us: None,
            send_us: None,
            act,
            link: LinkView::default(),
        };
        logger.log(&r.rec, &t).unwrap();
    }
    r.finish().unwrap();
    let rows = verified_rows(&rrd);
    for e in ["/policy/candidates", "/policy/selected"] {
        assert_eq!(
            rows.get(e),
            Some(&8),
            "{e}: 7 choices and one clear: {rows:?}"
        );
    }
}

/// A policy without critics (a `bc` bundle: one sample, no Q-values) is drawn, its
/// candidate selected, without scores.
#[test]
fn a_choice_without_q_values_is_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let rrd = tmp.path().join("ticks.rrd");
    let r = viz::Recorder::open("expo_ticks_test", &Target::File(rrd.clone())).unwrap();
    let act_names = vec!["shoulder".to_string(), "elbow".to_string()];
    let obs_names: Vec<String> = (0..3).map(|i| format!("o{i}")).collect();
    let mut logger = TickLogger::new(None, &obs_names, &act_names);
    let obs = [0.0; 3];
    for tick in 0..3u64 {
        let t = TickView {
            tick,
            time_s: tick as f64 * 0.01,
            episode: None,
            phase: "running",
            jitter_us: 1.0,
            work_us: 300.0,
            read_us: 3.0,
            infer_us: None,
            send_us: None,
            act: Some(ActView {
                obs: &obs,
                policy_action: &[0.1, 0.2],
                action: &[0.1, 0.2],
                clamped: false,
                rate_limited: false,
                teleop: false,
                candidates: &[0.1, 0.2],
                num_base: 1,
                q: &[],
                selected: Some(0),
            }),
            link: LinkView::default(),
        };
        logger.log(&r.rec, &t).unwrap();
    }
    r.finish().unwrap();
    let rows = verified_rows(&rrd);
    for e in ["/policy/candidates", "/policy/selected"] {
        assert_eq!(rows.get(e), Some(&3), "{e}: {rows:?}");
    }
}

#[test]
fn ticks_become_entities_with_one_row_per_tick() {
    let tmp = tempfile::tempdir().unwrap();
    let rrd = tmp.path().join("ticks.rrd");
    let r = viz::Recorder::open("expo_ticks_test", &Target::File(rrd.clone())).unwrap();
    let spec = TaskId::ArmReach.spec();
    let obs_names: Vec<String> = spec.obs_names.iter().map(|n| n.to_string()).collect();
    let act_names = vec!["shoulder".to_string(), "elbow".to_string()];
    let mut logger = TickLogger::new(Some(TaskId::ArmReach), &obs_names, &act_names);
    let (m, k, acted) = (6, 2, 40);
    let candidates: Vec<f32> = (0..m * 2).map(|i| (i as f32 * 0.1).sin()).collect();
    let q: Vec<f32> = (0..k * m).map(|i| i as f32 * 0.01).collect();
    let obs = vec![0.1; spec.obs_dim()];
    // Ten ticks without a policy step (waiting for an episode), 40 policy steps, 5
    // steps of a teleop device's (no candidates), 5 ticks after the episode.
    let (policy, teleop) = (10..50u64, 50..55u64);
    for tick in 0..60u64 {
        let from_policy = policy.contains(&tick);
        let act = (from_policy || teleop.contains(&tick)).then_some(ActView {
            obs: &obs,
            policy_action: &[0.5, -0.5],
            action: &[0.4, -0.4],
            clamped: true,
            rate_limited: false,
            teleop: tick % 2 == 0,
            candidates: if from_policy { &candidates } else { &[] },
            num_base: 4,
            q: if from_policy { &q } else { &[] },
            selected: from_policy.then_some(5),
        });
        let t = TickView {
            tick,
            time_s: tick as f64 * 0.01,
            episode: (10..55).contains(&tick).then_some(0),
            phase: if tick < 10 { "starting" } else { "running" },
            jitter_us: 1.0,
            work_us: 300.0,
            read_us: 3.0,
            infer_us: act.map(|_| 250.0),
            send_us: act.map(|_| 12.0),
            act,
            link: LinkView::default(),
        };
        logger.log(&r.rec, &t).unwrap();
    }
    r.finish().unwrap();
    let rows = verified_rows(&rrd);
    assert_eq!(rows.get("/timing/read_us"), Some(&60), "{rows:?}");
    assert_eq!(rows.get("/timing/jitter_us"), Some(&60), "{rows:?}");
    assert_eq!(rows.get("/timing/tick_us"), Some(&60), "{rows:?}");
    assert_eq!(rows.get("/link/crc_errors"), Some(&60), "{rows:?}");
    let first_obs = format!("/observation.state/{}", viz::path_part(&obs_names[0]));
    for e in [
        "/timing/infer_us",
        first_obs.as_str(),
        "/action/shoulder",
        "/policy/raw_action/elbow",
        "/safety/clamped",
        "/teleop",
        "/scene/robot/links",
        "/scene/goal/discs",
        "/scene/obstacle/discs",
    ] {
        assert_eq!(rows.get(e), Some(&(acted + 5)), "{e}: {rows:?}");
    }
    // The policy's points, and one clear when the device took over: the viewer does not
    // keep drawing a choice that no longer drives the robot.
    for e in ["/policy/candidates", "/policy/selected"] {
        assert_eq!(rows.get(e), Some(&(acted + 1)), "{e}: {rows:?}");
    }
    // The ticks before and after the episode are on no episode's timeline.
    let without_episode: usize = viz::cli::chunk_timelines(&rrd)
        .unwrap()
        .iter()
        .filter(|(e, timelines, _)| e == "/timing/tick_us" && !timelines.contains("episode"))
        .map(|c| c.2)
        .sum();
    assert_eq!(without_episode, 15);
    for e in [
        "/policy/q/selected",
        "/policy/q/best_base",
        "/policy/q/best_edit",
        "/policy/q/spread",
    ] {
        assert_eq!(rows.get(e), Some(&acted), "{e}: {rows:?}");
    }
    // The phase is logged when it changes.
    assert_eq!(rows.get("/safety/state"), Some(&2), "{rows:?}");
}
