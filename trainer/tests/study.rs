//! The study's summary and learning-curve plot from (synthetic) finished runs.

use sim::TaskId;
use std::path::Path;
use trainer::config::Algo;
use trainer::study::{compare, load_curve, steps_to_reach, summarize};

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
    fake_run(out, "bc", 0, &[0.4, 0.5, 0.5]);
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

    let text = summarize(out, &[TaskId::Push], &[Algo::Expo, Algo::Bc], None, true).unwrap();
    assert!(
        text.contains("| push | expo | 2 | 0.30 ± 0.10 | 0.90 ± 0.00 |"),
        "{text}"
    );
    // BC plateaued at its final 0.5 from step 1000: EXPO, there at 1000 too, took as
    // many steps (the ratio used to divide by the run's 2,000 steps: 0.50x).
    // The deviation's divisor is said (2 seeds: 0.10 divides by 2, 0.14 by 1).
    assert!(text.contains(trainer::study::STD_NOTE), "{text}");
    assert!(
        text.contains(
            "ends at 0.50 after 2000 steps, first reached at step 1000; EXPO reaches that at \
             step 1000 (1.00x"
        ),
        "{text}"
    );
    // A seed the study did not ask for (left from an earlier, larger study) is not
    // counted when the study names its seeds; `--summarize-only` counts every seed.
    fake_run(out, "expo", 5, &[0.0, 0.0, 0.0]);
    let own = summarize(out, &[TaskId::Push], &[Algo::Expo], Some(&[0, 1]), false).unwrap();
    assert!(
        own.contains("| push | expo | 2 | 0.30 ± 0.10 | 0.90 ± 0.00 |"),
        "{own}"
    );
    let all = summarize(out, &[TaskId::Push], &[Algo::Expo], None, false).unwrap();
    assert!(all.contains("| push | expo | 3 |"), "{all}");
    std::fs::remove_dir_all(out.join("push/expo/seed-5")).unwrap();
    let png = std::fs::read(out.join("push.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 10_000,
        "plot suspiciously small: {} bytes",
        png.len()
    );
}

/// A plot that cannot be drawn loses neither the table nor `summary.md`, and leaves
/// no partial file; a summary with no finished run (an extended study stopped by its
/// time limit) keeps the earlier plot and `summary.md`.
#[test]
fn a_summary_keeps_what_it_cannot_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    fake_run(out, "expo", 0, &[0.2, 0.6, 0.9]);
    std::fs::create_dir(out.join("push.png")).unwrap();
    let text = summarize(out, &[TaskId::Push], &[Algo::Expo], None, true).unwrap();
    assert!(text.contains("| push | expo | 1 |"), "{text}");
    assert!(text.contains("push.png was not drawn"), "{text}");
    assert_eq!(
        std::fs::read_to_string(out.join("summary.md")).unwrap(),
        text
    );
    assert!(!out.join("push.png.partial.png").exists());

    std::fs::remove_dir(out.join("push.png")).unwrap();
    let text = summarize(out, &[TaskId::Push], &[Algo::Expo], None, true).unwrap();
    let png = std::fs::read(out.join("push.png")).unwrap();
    // Every run unfinished again (their `done` marks removed as they are extended).
    std::fs::remove_file(out.join("push/expo/seed-0/done")).unwrap();
    summarize(out, &[TaskId::Push], &[Algo::Expo], None, false).unwrap();
    assert!(
        std::fs::read(out.join("push.png")).unwrap() == png,
        "the plot was replaced"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("summary.md")).unwrap(),
        text
    );
}

/// A baseline already at its final level at its first evaluation (pretraining alone)
/// gives no ratio: EXPO's steps over zero steps meant nothing (it printed "1000.00x").
#[test]
fn a_baseline_there_from_the_start_gives_no_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    fake_run(out, "expo", 0, &[0.2, 0.6, 0.9]);
    fake_run(out, "bc", 0, &[0.5, 0.5, 0.5]);
    let text = summarize(out, &[TaskId::Push], &[Algo::Expo, Algo::Bc], None, true).unwrap();
    assert!(
        text.contains(
            "first reached at step 0; EXPO reaches that at step 1000 (the baseline was there \
             from its first evaluation: no ratio)"
        ),
        "{text}"
    );
}

/// A study of EXPO alone has no baseline to reach: its column says `-`, not "never"
/// (read as EXPO failing to reach it).
#[test]
fn a_study_without_a_baseline_reaches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    fake_run(out, "expo", 0, &[0.2, 0.6, 0.9]);
    let text = summarize(out, &[TaskId::Push], &[Algo::Expo], None, true).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("| push | expo |"))
        .expect("the EXPO row");
    assert!(row.ends_with("| - |"), "{row}");
    assert!(!text.contains("never"), "{text}");
}

/// `--study LABEL=DIR[@ALGO]`: a directory with an `@` in its own name is one
/// directory, not a directory and an algorithm (it was refused as an unknown algorithm).
#[test]
fn a_curve_spec_keeps_a_directory_with_an_at_sign_whole() {
    use trainer::study::parse_curve_spec;
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("runs@gpu");
    std::fs::create_dir(&at).unwrap();
    let spec = format!("gpu={}", at.display());
    assert_eq!(
        parse_curve_spec(&spec, Algo::Expo).unwrap(),
        ("gpu".to_string(), at.clone(), Algo::Expo)
    );
    assert_eq!(
        parse_curve_spec("base=out/s@rlpd", Algo::Expo).unwrap(),
        ("base".to_string(), "out/s".into(), Algo::Rlpd)
    );
    assert_eq!(
        parse_curve_spec("cpu=out/s", Algo::Bc).unwrap(),
        ("cpu".to_string(), "out/s".into(), Algo::Bc)
    );
    let e = parse_curve_spec("x=out/missing@gpu", Algo::Expo).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("no directory out/missing@gpu") && e.contains("unknown algo 'gpu'"),
        "{e}"
    );
    assert!(parse_curve_spec("out/s", Algo::Expo).is_err());
    // Both readings possible: refused, with the way to say the first.
    let s = tmp.path().join("s");
    std::fs::create_dir_all(tmp.path().join("s@rlpd")).unwrap();
    std::fs::create_dir(&s).unwrap();
    let spec = format!("x={}@rlpd", s.display());
    let e = parse_curve_spec(&spec, Algo::Expo).unwrap_err().to_string();
    assert!(e.contains("@rlpd@ALGO for the first"), "{e}");
    assert_eq!(
        parse_curve_spec(&format!("{spec}@bc"), Algo::Expo).unwrap(),
        ("x".to_string(), tmp.path().join("s@rlpd"), Algo::Bc)
    );
}

#[test]
fn curves_of_two_studies_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("paper"), tmp.path().join("cpu"));
    fake_run(&a, "expo", 0, &[0.2, 0.6]);
    fake_run(&a, "expo", 1, &[0.4, 0.8]);
    fake_run(&b, "expo", 0, &[0.1, 0.3, 0.5]);
    let png = tmp.path().join("cmp.png");
    let studies = [("paper".to_string(), a), ("cpu".to_string(), b.clone())];
    let md = compare(&studies, TaskId::Push, Algo::Expo, false, &png).unwrap();
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    let rows: Vec<&str> = md.lines().collect();
    assert_eq!(
        rows[0],
        "| environment step | paper (2 seeds) | cpu (1 seeds) |"
    );
    assert_eq!(rows[2], "| 0 | 0.30 ± 0.10 | 0.10 ± 0.00 |");
    assert_eq!(rows[3], "| 1000 | 0.70 ± 0.10 | 0.30 ± 0.00 |");
    // Steps only one study reached leave the other's cell empty.
    assert_eq!(rows[4], "| 2000 | | 0.50 ± 0.00 |");
    // A study without finished runs of the algorithm is an error that names it.
    let missing = [
        ("gpu".to_string(), tmp.path().join("none")),
        ("cpu".to_string(), b),
    ];
    let err = compare(&missing, TaskId::Push, Algo::Expo, false, &png).unwrap_err();
    assert!(
        format!("{err}").contains("gpu: no finished run of expo on push"),
        "{err}"
    );
    // Each curve may take its own algorithm: a baseline beside EXPO.
    fake_run(&tmp.path().join("base"), "bc", 0, &[0.05, 0.15]);
    let mixed = [
        ("expo".to_string(), tmp.path().join("paper"), Algo::Expo),
        ("bc".to_string(), tmp.path().join("base"), Algo::Bc),
    ];
    let md = trainer::study::compare_curves(&mixed, TaskId::Push, false, &png).unwrap();
    let rows: Vec<&str> = md.lines().collect();
    assert_eq!(
        rows[0],
        "| environment step | expo (2 seeds) | bc (1 seeds) |"
    );
    assert_eq!(rows[2], "| 0 | 0.30 ± 0.10 | 0.05 ± 0.00 |");
    // A time-limited study's unfinished runs count only when asked for; the curve ends
    // at the last evaluation every seed reached.
    let c = tmp.path().join("limited");
    fake_run(&c, "expo", 0, &[0.1, 0.2, 0.3]);
    fake_run(&c, "expo", 1, &[0.3, 0.4]);
    for seed in [0, 1] {
        std::fs::remove_file(c.join(format!("push/expo/seed-{seed}/done"))).unwrap();
    }
    // A run killed mid-row, and one killed before its first evaluation.
    let seed0 = c.join("push/expo/seed-0/eval.csv");
    let text = std::fs::read_to_string(&seed0).unwrap();
    std::fs::write(&seed0, format!("{text}3000,")).unwrap();
    let early = c.join("push/expo/seed-2");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::write(early.join("eval.csv"), "step,success_rate\n").unwrap();
    // A run that failed (the study marks it): never part of the curve.
    fake_run(&c, "expo", 3, &[0.9, 0.9]);
    std::fs::remove_file(c.join("push/expo/seed-3/done")).unwrap();
    std::fs::write(c.join("push/expo/seed-3/failed"), "exit status: 101\n").unwrap();
    let limited = [("gpu".to_string(), c)];
    assert!(compare(&limited, TaskId::Push, Algo::Expo, false, &png).is_err());
    let md = compare(&limited, TaskId::Push, Algo::Expo, true, &png).unwrap();
    let rows: Vec<&str> = md.lines().skip(2).take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows, ["| 0 | 0.20 ± 0.10 |", "| 1000 | 0.30 ± 0.10 |"]);
    assert!(
        md.ends_with(&format!("\n{}\n", trainer::study::STD_NOTE)),
        "{md}"
    );
}

/// An executable shell script `dir/stand-in-trainer` running `body`, in place of
/// `trainer train` for the study.
#[cfg(unix)]
fn stand_in_trainer(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let exe = dir.join("stand-in-trainer");
    std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

/// A study of EXPO on push, 2 runs at a time, into `out`.
#[cfg(unix)]
fn push_expo_study(
    out: &std::path::Path,
    seeds: &[u64],
    time_limit: Option<std::time::Duration>,
) -> trainer::study::StudySpec {
    trainer::study::StudySpec {
        tasks: vec![TaskId::Push],
        algos: vec![Algo::Expo],
        seeds: seeds.to_vec(),
        preset: "tiny".into(),
        overrides: vec![],
        jobs: 2,
        out: out.to_path_buf(),
        time_limit,
    }
}

/// A stand-in run's body that writes its pid to `OUT/pid` and then sleeps for an hour
/// (it never finishes on its own in a test).
#[cfg(unix)]
const PID_THEN_SLEEP: &str =
    r#"echo $$ > "$out/pid.tmp"; mv "$out/pid.tmp" "$out/pid"; exec sleep 3600"#;

/// The shell lines that set `out` to the stand-in's `--out`.
#[cfg(unix)]
const FIND_OUT: &str = r#"out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out="$a"; prev="$a"; done"#;

/// `study` on another thread: its result, or a failure after 5 minutes (a study that
/// does not stop its hour-long stand-in runs would otherwise hold the test suite).
#[cfg(unix)]
fn study_or_hang(
    spec: trainer::study::StudySpec,
    exe: std::path::PathBuf,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(trainer::study::run_study(&spec, &exe));
    });
    rx.recv_timeout(std::time::Duration::from_secs(300))
        .expect("the study still waits for its runs")
}

/// The run in `dir` (its pid in `dir/pid`) has ended and been reaped. (A stand-in
/// stopped before it wrote its pid, on a very busy machine, was stopped too.)
#[cfg(unix)]
fn assert_gone(dir: &std::path::Path) {
    let Ok(pid) = std::fs::read_to_string(dir.join("pid")) else {
        assert!(
            dir.join("log.txt").is_file(),
            "{} never started",
            dir.display()
        );
        return;
    };
    let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(
        !proc.exists(),
        "{}'s run (pid {}) is still running",
        dir.display(),
        pid.trim()
    );
}

/// `--time-limit-s`: runs still going at the limit are stopped (not left running, not
/// marked done, not counted as failures).
#[cfg(unix)]
#[test]
fn a_time_limit_stops_the_runs_still_going() {
    let tmp = tempfile::tempdir().unwrap();
    // A stand-in for `trainer train` that never finishes on its own (its pid written
    // at once, well inside the limit).
    let exe = stand_in_trainer(tmp.path(), &format!("{FIND_OUT}\n{PID_THEN_SLEEP}"));
    let out = tmp.path().join("study");
    let spec = push_expo_study(&out, &[0, 1, 2], Some(std::time::Duration::from_secs(2)));
    study_or_hang(spec, exe).unwrap();
    for seed in [0, 1] {
        let dir = out.join(format!("push/expo/seed-{seed}"));
        assert!(dir.join("log.txt").is_file() && !dir.join("done").exists());
        assert_gone(&dir);
    }
    // Not started: the limit came first.
    assert!(!out.join("push/expo/seed-2").exists());
}

/// A study that extends finished runs (a larger `run.online_steps`) and reaches its time
/// limit leaves the runs it never started finished: their done marks went before any
/// run started, and the summary left them out.
#[cfg(unix)]
#[test]
fn a_time_limit_leaves_the_runs_it_never_extended_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = stand_in_trainer(tmp.path(), "exec sleep 60");
    let out = tmp.path().join("study");
    let mut steps = 0;
    for seed in [0, 1, 2] {
        let c = trainer::config::Config::resolve(
            "tiny",
            None,
            &[
                "task=\"push\"".into(),
                "algo=\"expo\"".into(),
                format!("seed={seed}"),
            ],
        )
        .unwrap();
        steps = c.run.online_steps;
        fake_run(&out, "expo", seed, &[0.1, 0.2]);
        let dir = out.join(format!("push/expo/seed-{seed}"));
        std::fs::write(dir.join("config.toml"), toml::to_string(&c).unwrap()).unwrap();
    }
    let mut spec = push_expo_study(
        &out,
        &[0, 1, 2],
        Some(std::time::Duration::from_millis(500)),
    );
    spec.overrides = vec![format!("run.online_steps={}", steps * 2)];
    trainer::study::run_study(&spec, &exe).unwrap();
    // Two started (2 at a time) and were stopped; the third never started.
    for seed in [0, 1] {
        assert!(!out.join(format!("push/expo/seed-{seed}/done")).exists());
    }
    assert!(out.join("push/expo/seed-2/done").is_file());
}

/// A run directory is continued with `--resume` only where it holds a run (an
/// interrupted study), and its log is appended to; a fresh run starts without it.
#[cfg(unix)]
#[test]
fn only_runs_already_started_are_resumed_and_their_logs_kept() {
    let tmp = tempfile::tempdir().unwrap();
    // A stand-in for `trainer train` that logs its arguments and succeeds.
    let exe = stand_in_trainer(tmp.path(), "echo \"args: $*\"");
    let out = tmp.path().join("study");
    let started = out.join("push/expo/seed-1");
    std::fs::create_dir_all(&started).unwrap();
    std::fs::write(started.join("metrics.csv"), "step\n").unwrap();
    std::fs::write(started.join("log.txt"), "the first attempt's log\n").unwrap();
    trainer::study::run_study(&push_expo_study(&out, &[0, 1], None), &exe).unwrap();
    let log = |seed: u64| {
        std::fs::read_to_string(out.join(format!("push/expo/seed-{seed}/log.txt"))).unwrap()
    };
    let fresh = log(0);
    assert!(
        fresh.starts_with("args: train ") && !fresh.contains("--resume"),
        "{fresh}"
    );
    let resumed = log(1);
    assert!(
        resumed.starts_with("the first attempt's log\nargs: train ")
            && resumed.contains("--resume"),
        "{resumed}"
    );
}

/// An unfinished run is resumed with the settings its checkpoint was written with
/// only: a study rerun with a compute setting that changes what a run computes (the
/// candidate schedule) is refused before anything starts, naming the setting; each
/// such run failed in its child. (One that computes the same bits, `threads`, may
/// differ, as for `train --resume`.) One without a checkpoint starts over with any settings. A study directory in
/// use by another process is refused by name.
#[cfg(unix)]
#[test]
fn an_unfinished_run_of_other_settings_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = stand_in_trainer(tmp.path(), r#"touch "$(dirname "$0")/started""#);
    let out = tmp.path().join("study");
    let run = out.join("push/expo/seed-0");
    std::fs::create_dir_all(run.join("checkpoint")).unwrap();
    let config = trainer::config::Config::resolve(
        "tiny",
        None,
        &[
            "task=\"push\"".into(),
            "algo=\"expo\"".into(),
            "seed=0".into(),
        ],
    )
    .unwrap();
    // The checkpoint's settings decide (`train --resume` compares with them), whatever
    // config.toml says: here it already says the study's.
    let mut asked = config.clone();
    asked.compute.candidates = trainer::config::CandidateSchedule::Sequential;
    std::fs::write(run.join("config.toml"), asked.to_toml()).unwrap();
    let state = serde_json::json!({ "config_toml": config.to_toml() });
    std::fs::write(run.join("checkpoint/state.json"), state.to_string()).unwrap();
    std::fs::write(run.join("metrics.csv"), "step\n").unwrap();
    let mut spec = push_expo_study(&out, &[0], None);
    spec.overrides = vec!["compute.candidates=\"sequential\"".into()];
    let e = format!("{:#}", trainer::study::run_study(&spec, &exe).unwrap_err());
    assert!(
        e.contains("`compute.candidates` was \"hoisted\", the study asks \"sequential\""),
        "{e}"
    );
    assert!(!tmp.path().join("started").exists());
    assert!(!run.join("failed").exists());
    // Without its checkpoint (a run that crashed before its first) it starts over.
    std::fs::remove_dir_all(run.join("checkpoint")).unwrap();
    assert!(trainer::study::run_study(&spec, &exe).unwrap().is_empty());
    assert!(tmp.path().join("started").exists());
    // A study directory held by another writer (a lock on another open file, as a
    // second process would take it) is refused, and nothing starts.
    std::fs::remove_file(tmp.path().join("started")).unwrap();
    let lock = std::fs::File::create(out.join(trainer::run::RUN_LOCK_FILE)).unwrap();
    lock.try_lock().unwrap();
    let again = push_expo_study(&out, &[1], None);
    let e = format!("{:#}", trainer::study::run_study(&again, &exe).unwrap_err());
    assert!(e.contains("is in use by another trainer process"), "{e}");
    assert!(!tmp.path().join("started").exists());
}

/// A run whose process fails is marked `failed` (and the study reports it); the marker
/// goes when the run is tried again and succeeds.
#[cfg(unix)]
#[test]
fn a_failed_run_is_marked_until_it_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("study");
    let failing = stand_in_trainer(tmp.path(), "exit 3");
    let failed = trainer::study::run_study(&push_expo_study(&out, &[0], None), &failing).unwrap();
    let dir = out.join("push/expo/seed-0");
    assert_eq!(failed, std::slice::from_ref(&dir));
    assert!(dir.join("failed").is_file() && !dir.join("done").exists());
    let ok = tmp.path().join("ok");
    std::fs::create_dir_all(&ok).unwrap();
    let succeeding = stand_in_trainer(&ok, "true");
    let failed =
        trainer::study::run_study(&push_expo_study(&out, &[0], None), &succeeding).unwrap();
    assert!(failed.is_empty());
    assert!(!dir.join("failed").exists() && dir.join("done").is_file());
}

/// A study that cannot write a run's marker ends with an error naming the file, and
/// stops the runs still going (they trained on, unsupervised, after it returned).
#[cfg(unix)]
#[test]
fn a_study_that_fails_stops_its_other_runs() {
    let tmp = tempfile::tempdir().unwrap();
    // seed-0 makes its `done` a directory, once seed-1 runs (its pid written), and
    // succeeds; seed-1 never finishes on its own.
    let exe = stand_in_trainer(
        tmp.path(),
        &format!(
            r#"{FIND_OUT}
case "$out" in
  *seed-0) while [ ! -s "$out/../seed-1/pid" ]; do sleep 0.05; done; mkdir "$out/done"; exit 0;;
  *) {PID_THEN_SLEEP};;
esac"#
        ),
    );
    let out = tmp.path().join("study");
    let err = study_or_hang(push_expo_study(&out, &[0, 1], None), exe).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("seed-0/done"), "{err}");
    assert_gone(&out.join("push/expo/seed-1"));
}
