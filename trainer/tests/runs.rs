//! Whole runs: determinism and exact resume after a stop at a checkpoint.

use std::path::Path;
use trainer::config::{Config, OptimizerImpl};
use trainer::run::{TrainOptions, train};

/// CSV contents without the wall-clock column (`updates_per_s`, last in metrics.csv).
fn table(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.rsplit_once(',') {
            Some((head, _)) if path.ends_with("metrics.csv") => head.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// `scripts/demo` checks its counts by name before it builds anything: `ROUNDS=0` ran
/// no round and reported bundle0 as the fine-tuned bundle, `PORT=0` had the trainer
/// listen on a port the controller never knew, a mistyped count failed in `seq` or
/// in a command line after minutes of work, naming another flag, and the other mode's
/// settings were ignored.
#[test]
fn the_demo_refuses_bad_counts_before_building() {
    use std::os::unix::fs::PermissionsExt;
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo");
    let fake = tempfile::tempdir().unwrap();
    let called = fake.path().join("cargo-called");
    let cargo = fake.path().join("cargo");
    std::fs::write(
        &cargo,
        format!("#!/bin/sh\ntouch '{}'\nexit 9\n", called.display()),
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap()
    );
    for (settings, want) in [
        (
            &[("MODE", "rounds"), ("ROUNDS", "0")][..],
            "ROUNDS must be from 1",
        ),
        (
            &[("MODE", "rounds"), ("UPDATES", "1.5")],
            "UPDATES must be a whole number, not '1.5'",
        ),
        (&[("PORT", "0")], "PORT must be from 1 to 65535, not 0"),
        (
            &[("EVAL_EPISODES", "1e3")],
            "EVAL_EPISODES must be a whole number, not '1e3'",
        ),
        (
            &[("MAX_FAULTS", "-1")],
            "MAX_FAULTS must be a whole number, not '-1'",
        ),
        // The robot's episodes must not reach the held-out seeds (99000 on): 99 rounds
        // fine-tuned on the first held-out episode, and 1001 episodes a round on the
        // next round's.
        (
            &[("MODE", "rounds"), ("ROUNDS", "99"), ("EPISODES", "1")],
            "would reach seed 99000, and the held-out episodes are seeds 99000 on",
        ),
        (
            &[("MODE", "rounds"), ("EPISODES", "1001")],
            "EPISODES must be from 1 to 1000",
        ),
        (&[("LIVE_EPISODES", "98001")], "would reach seed 99000"),
        // The other mode's settings, which it ignored without a word.
        (
            &[("ROUNDS", "5")],
            "ROUNDS is a setting of the other mode, and this run is MODE=live: set \
             MODE=rounds, or unset ROUNDS",
        ),
        (
            &[("MODE", "rounds"), ("PUBLISH", "100")],
            "PUBLISH is a setting of the other mode, and this run is MODE=rounds",
        ),
    ] {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(demo).env("PATH", &path);
        for name in [
            "MODE",
            "TASK",
            "LIVE_EPISODES",
            "PUBLISH",
            "PORT",
            "ROUNDS",
            "EPISODES",
            "UPDATES",
            "EVAL_EPISODES",
            "MAX_FAULTS",
            "OUT",
        ] {
            cmd.env_remove(name);
        }
        let out = cmd.envs(settings.iter().copied()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{settings:?}: {stderr}");
        assert!(stderr.contains(want), "{settings:?}: {stderr}");
        assert!(!called.exists(), "{settings:?}: built before the check");
    }
}

/// The trainer's command lines in `scripts/demo` (the README's first command, which no
/// test runs) parse: each exits 0 with `--help` after it, where a flag the code no
/// longer has, or a value its parser refuses, exits 2 before the help.
#[test]
fn the_demo_scripts_command_lines_parse() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo");
    let script = std::fs::read_to_string(demo).unwrap();
    let lines = hil_tests::script::commands(&script, "trainer", &[("task", "push")]);
    // Every line, so that one written another way (behind `VAR=x`, say, which the
    // reader skips) is noticed.
    let subcommands: Vec<&str> = lines.iter().map(|l| l[0].as_str()).collect();
    assert_eq!(
        subcommands,
        [
            "keygen",
            "pretrain",
            "export",
            "uplink-keygen",
            "finetune",
            "finetune"
        ],
        "{lines:?}"
    );
    for args in &lines {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, text) = trainer_cli(&args);
        assert_eq!(code, Some(0), "{args:?}: {text}");
    }
}

/// The `trainer` binary with `args`: its exit status and its stdout and stderr together.
fn trainer_cli(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn tiny(algo: &str) -> Config {
    let mut c = Config::resolve("tiny", None, &[format!("algo={algo}")]).unwrap();
    c.run.online_steps = 120;
    c.run.eval_every = 60;
    c
}

#[test]
fn same_seed_same_run() {
    for algo in ["expo", "rlpd"] {
        let tmp = tempfile::tempdir().unwrap();
        let c = tiny(algo);
        let opts = TrainOptions {
            log_every: 10,
            ..Default::default()
        };
        train(&c, &tmp.path().join("a"), &opts, &mut ()).unwrap();
        train(&c, &tmp.path().join("b"), &opts, &mut ()).unwrap();
        for f in ["metrics.csv", "eval.csv"] {
            let a = table(&tmp.path().join("a").join(f));
            assert!(a.len() > 3, "{algo}: {f} has {} lines", a.len());
            assert_eq!(a, table(&tmp.path().join("b").join(f)), "{algo}: {f}");
        }
    }
}

/// RLPD is evaluated by its actor's mode, `tanh(mean)` (RLPD's own evaluation); it
/// explores with samples. The other algorithms evaluate as they act.
#[test]
fn rlpd_evaluates_by_the_actors_mode() {
    let c = tiny("rlpd");
    let spec = c.task.sim().unwrap().spec();
    let (od, ad) = (spec.obs_dim(), spec.action_dim());
    let normalizer = trainer::replay::Normalizer {
        mean: vec![0.0; od],
        std: vec![1.0; od],
    };
    let device = trainer::run::device(&c).unwrap();
    let mut agent = trainer::agent::Agent::new(c, od, ad, normalizer, &device);
    let obs: Vec<f32> = (0..3 * od).map(|i| (i as f32 * 0.37).sin()).collect();
    let mode = agent.act_eval(&obs);
    assert_eq!(agent.act_eval(&obs), mode, "evaluation is deterministic");
    let (sampled, again) = (agent.act(&obs), agent.act(&obs));
    assert_ne!(sampled, again, "exploration samples");
    assert_ne!(sampled, mode);
    // The mode is tanh of the actor's mean on the (here unnormalised) observations.
    let x = trainer::nets::tensor2(obs.clone(), 3, od, agent.plain_device());
    let actor = burn::module::AutodiffModule::valid(agent.actor().unwrap());
    let (mean, _) = actor.forward(x);
    let expected = mean.tanh().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(mode.len(), expected.len());
    for (m, e) in mode.iter().zip(&expected) {
        assert!((m - e).abs() <= 1e-6, "{mode:?} against {expected:?}");
    }
}

/// Every algorithm with the fused optimizers (the default), EXPO with burn's
/// per-parameter ones (what runs saved before `compute.optimizer` existed use), and EXPO
/// with recorded graphs (`compute.graph`: a resume drops the recordings and makes new
/// ones), and EXPO acting in chunks of 3 actions (`action_horizon`).
#[test]
fn resume_after_stop_matches_an_uninterrupted_run() {
    let cases = [
        ("expo", "fused"),
        ("idql-select", "fused"),
        ("rlpd", "fused"),
        ("bc", "fused"),
        ("expo", "per-parameter"),
        ("expo", "fused, graph"),
        ("expo", "fused, chunks of 3 replanned every 2"),
        ("expo", "fused, rows every 7 steps"),
    ];
    for (algo, optimizer) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = tiny(algo);
        c.compute.optimizer = match optimizer {
            "per-parameter" => OptimizerImpl::PerParameter,
            _ => OptimizerImpl::Fused,
        };
        c.compute.graph = optimizer.ends_with("graph");
        if optimizer.ends_with("chunks of 3 replanned every 2") {
            c.action_horizon = 3;
            c.replan_every = 2;
        }
        let algo = format!("{algo} ({optimizer})");
        // Rows every 7 steps: the checkpoint (at an episode end) falls between two rows,
        // and the row after it must not change (it used to be skipped until an episode
        // ended on a row, which made checkpoints rare).
        let between_rows = optimizer.ends_with("rows every 7 steps");
        let full = TrainOptions {
            log_every: if between_rows { 7 } else { 10 },
            checkpoint_every: 30,
            ..Default::default()
        };
        train(&c, &tmp.path().join("full"), &full, &mut ()).unwrap();
        let dir = tmp.path().join("cut");
        let cut = TrainOptions {
            stop_after: Some(30),
            ..full.clone()
        };
        let s = train(&c, &dir, &cut, &mut ()).unwrap();
        assert!(
            s.stopped_early && s.env_steps >= 30 && s.env_steps < 120,
            "{algo}: {s:?}"
        );
        assert!(dir.join("checkpoint/state.json").is_file());
        if between_rows {
            assert_ne!(s.env_steps % 7, 0, "{algo}: the checkpoint fell on a row");
        }
        let resumed = TrainOptions {
            resume: true,
            ..full.clone()
        };
        let s = train(&c, &dir, &resumed, &mut ()).unwrap();
        assert_eq!(s.env_steps, 120);
        for f in ["metrics.csv", "eval.csv"] {
            assert_eq!(
                table(&tmp.path().join("full").join(f)),
                table(&dir.join(f)),
                "{algo}: {f} differs after resume"
            );
        }
    }
}

/// A run killed after pretraining resumes from the checkpoint taken then (it used to
/// take none before `checkpoint_every` online steps, so its pretraining was lost), and
/// goes on as an uninterrupted run does.
#[test]
fn a_run_stopped_after_pretraining_resumes_from_there() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny("expo");
    let full = TrainOptions {
        log_every: 10,
        checkpoint_every: 1000,
        ..Default::default()
    };
    train(&c, &tmp.path().join("full"), &full, &mut ()).unwrap();
    let dir = tmp.path().join("cut");
    let cut = TrainOptions {
        stop_after: Some(0),
        ..full.clone()
    };
    let s = train(&c, &dir, &cut, &mut ()).unwrap();
    assert!(s.stopped_early && s.env_steps == 0, "{s:?}");
    assert_eq!(trainer::run::checkpoint_env_step(&dir).unwrap(), 0);
    let pretrained = std::fs::read_to_string(dir.join("pretrain.csv")).unwrap();
    // `pretrain --resume` does not take it for a pretraining run (it made it one: no
    // online steps, its logs cut back).
    let (code, text) = trainer_cli(&[
        "pretrain",
        "--preset",
        "tiny",
        "--out",
        dir.to_str().unwrap(),
        "--resume",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("it is not a pretraining run (run.online_steps = 120"),
        "{text}"
    );
    let resumed = TrainOptions {
        resume: true,
        ..full.clone()
    };
    let s = train(&c, &dir, &resumed, &mut ()).unwrap();
    assert_eq!(s.env_steps, 120);
    // Not pretrained again: its log is as the first invocation left it.
    assert_eq!(
        std::fs::read_to_string(dir.join("pretrain.csv")).unwrap(),
        pretrained
    );
    for f in ["metrics.csv", "eval.csv"] {
        assert_eq!(
            table(&tmp.path().join("full").join(f)),
            table(&dir.join(f)),
            "{f} differs after resume"
        );
    }
}

/// How often a run evaluates does not change what it learns: evaluation acts with
/// noise of its own (it drew from the online acting generator, so a run resumed with
/// another `run.eval_every`, which `--resume` allows, took other online actions).
#[test]
fn evaluating_more_often_changes_no_update() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        log_every: 10,
        ..Default::default()
    };
    let mut tables = vec![];
    for every in [0, 20] {
        let mut c = tiny("expo");
        c.run.online_steps = 60;
        c.run.eval_every = every;
        let dir = tmp.path().join(format!("every-{every}"));
        let s = train(&c, &dir, &opts, &mut ()).unwrap();
        let evals: Vec<usize> = s.evals.iter().map(|(step, _)| *step).collect();
        assert_eq!(
            evals,
            if every == 0 {
                vec![0, 60]
            } else {
                vec![0, 20, 40, 60]
            }
        );
        // The last evaluation is the same one in both runs.
        tables.push((table(&dir.join("metrics.csv")), s.evals.last().cloned()));
    }
    assert_eq!(tables[0], tables[1]);
}

/// Whole runs with the recorded graphs (`compute.graph`; on the CPU `capture` re-runs
/// the closures) log the same metrics and evaluations as without, to the last digit.
#[test]
fn recorded_graphs_give_the_same_run() {
    for algo in ["expo", "idql-select"] {
        let tmp = tempfile::tempdir().unwrap();
        let opts = TrainOptions {
            log_every: 10,
            ..Default::default()
        };
        let c = tiny(algo);
        let mut g = c.clone();
        g.compute.graph = true;
        train(&c, &tmp.path().join("direct"), &opts, &mut ()).unwrap();
        train(&g, &tmp.path().join("graph"), &opts, &mut ()).unwrap();
        for f in ["metrics.csv", "eval.csv"] {
            let a = table(&tmp.path().join("direct").join(f));
            assert!(a.len() > 3, "{algo}: {f} has {} lines", a.len());
            assert_eq!(a, table(&tmp.path().join("graph").join(f)), "{algo}: {f}");
        }
    }
}

/// A run whose length is not a multiple of `--log-every` still logs its last steps
/// (before, the metrics of a run shorter than the interval were never written).
#[test]
fn the_last_steps_of_a_run_get_a_metrics_row() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny("expo");
    c.run.online_steps = 25;
    let opts = TrainOptions {
        log_every: 10,
        ..Default::default()
    };
    train(&c, tmp.path(), &opts, &mut ()).unwrap();
    let steps: Vec<String> = table(&tmp.path().join("metrics.csv"))
        .iter()
        .skip(1)
        .map(|row| row.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(steps, ["10", "20", "25"]);
    // Pretraining has its own rows, by update: the base policy's loss alone here
    // (tiny pretrains only the base), every metric with `run.pretrain_critic`.
    for (full, dir) in [
        (false, tmp.path().to_path_buf()),
        (true, tmp.path().join("full")),
    ] {
        if full {
            c.run.pretrain_critic = true;
            c.run.pretrain_steps = 25;
            train(&c, &dir, &opts, &mut ()).unwrap();
        }
        let rows = table(&dir.join("pretrain.csv"));
        assert!(rows[0].starts_with("update,critic_loss,"), "{rows:?}");
        let updates: Vec<&str> = rows[1..]
            .iter()
            .map(|r| r.split(',').next().unwrap())
            .collect();
        let expected: &[&str] = if full {
            &["10", "20", "25"]
        } else {
            &["10", "20", "30", "40", "50"]
        };
        assert_eq!(updates, expected);
        for row in &rows[1..] {
            let cells: Vec<&str> = row.split(',').collect();
            for (i, cell) in cells.iter().enumerate().skip(1) {
                // Column 4 is denoiser_loss; the others belong to the critic learner.
                if full || i == 4 || i == cells.len() - 1 {
                    let v: f32 = cell.parse().unwrap_or_else(|_| panic!("{row}"));
                    assert!(v.is_finite(), "{row}");
                } else {
                    assert!(cell.is_empty(), "{row}");
                }
            }
        }
    }
}

/// A bundle exported from a run directory (`trainer export --run`) reports the run's
/// updates and the trainer's revision in its provenance (it said 0 updates, and the
/// revision of whatever directory the export ran in).
#[test]
fn a_bundle_exported_from_a_run_names_its_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny("expo");
    c.run.online_steps = 25;
    let run = tmp.path().join("run");
    train(&c, &run, &TrainOptions::default(), &mut ()).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap())
            .unwrap();
    let updates = state["denoiser_updates"].as_u64().unwrap();
    // One base-policy update per pretraining step and per online step.
    assert_eq!(updates, (c.run.pretrain_steps + c.run.online_steps) as u64);
    let agent = trainer::run::load_agent(&run).unwrap();
    let info = trainer::export::ExportInfo {
        dataset: "test".into(),
        env_steps: 25,
        executed_steps: None,
        not_before_unix: 0,
    };
    let bundle = tmp.path().join("bundle");
    trainer::export::export_bundle(&agent, &bundle, &info, None).unwrap();
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(bundle.join("manifest.toml")).unwrap()).unwrap();
    let provenance = &manifest["provenance"];
    assert_eq!(provenance["updates"].as_integer(), Some(updates as i64));
    // The revision the trainer was built from (its build script's `git rev-parse
    // HEAD`, "unknown" without git), whatever the directory the export runs in.
    let built = env!("EXPO_TRAINER_GIT_REVISION");
    assert!(
        built == "unknown" || built.len() == 40 && built.chars().all(|c| c.is_ascii_hexdigit()),
        "{built}"
    );
    assert_eq!(provenance["git_revision"].as_str(), Some(built));
}

/// SIGTERM or SIGHUP (or Ctrl-C's SIGINT, the same handler; a test process may have
/// inherited SIGINT ignored, which the trainer keeps) ends a live session as `--updates` would:
/// its final checkpoint and bundle are written and it exits 0. It was killed, losing the
/// updates since the last checkpoint and the last bundle.
#[cfg(unix)]
#[test]
fn a_signal_ends_a_live_session_with_its_checkpoint_and_bundle() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny("expo");
    c.run.online_steps = 20;
    let run = tmp.path().join("run");
    train(&c, &run, &TrainOptions::default(), &mut ()).unwrap();
    let key = tmp.path().join("uplink.key");
    let (code, text) = trainer_cli(&["uplink-keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    // SIGHUP too: a closed terminal or SSH session (it killed the session).
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")] {
        let out = tmp.path().join(format!("live-{name}"));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"));
        command
            .args(["finetune", "--from", run.to_str().unwrap(), "--out"])
            .arg(&out)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--uplink-key",
                key.to_str().unwrap(),
            ])
            .args(["--updates", "1000000", "--eval-episodes", "0"])
            .stderr(std::process::Stdio::piped());
        // SAFETY: signal() between fork and exec. A test run under `nohup` would pass
        // SIGHUP on ignored, which the trainer keeps so.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        // Its stderr, line by line, to a thread that reports the listening line.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.unwrap();
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        // (A guard, not a timing.)
        if rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .is_err()
        {
            child.kill().unwrap();
            panic!("no listening line: {}", reader.join().unwrap());
        }
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        // (A guard, not a timing: a trainer that ignored the signal would listen forever.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!(
                    "the trainer went on after {name}: {}",
                    reader.join().unwrap()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let said = reader.join().unwrap();
        assert!(status.success(), "{status:?}: {said}");
        // (After SIGHUP its lines go to /dev/null: the terminal is gone.)
        assert!(
            sig == libc::SIGHUP || said.contains("stopping at a signal"),
            "{said}"
        );
        assert!(out.join("checkpoint/state.json").is_file(), "{said}");
        let latest = std::fs::read_to_string(out.join("bundles/latest")).unwrap();
        assert!(
            out.join("bundles")
                .join(latest.trim())
                .join("manifest.toml")
                .is_file(),
            "{said}"
        );
    }
}

/// Trains `c` into `run` until its first checkpoint past 30 steps, and returns the
/// options that resume it.
fn stopped_at_its_first_checkpoint(c: &Config, run: &Path) -> TrainOptions {
    let opts = TrainOptions {
        log_every: 10,
        checkpoint_every: 30,
        stop_after: Some(30),
        ..Default::default()
    };
    train(c, run, &opts, &mut ()).unwrap();
    TrainOptions {
        resume: true,
        ..opts
    }
}

#[test]
fn resume_refuses_a_different_config() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny("expo");
    let resume = stopped_at_its_first_checkpoint(&c, tmp.path());
    let opts = TrainOptions {
        resume: false,
        ..resume.clone()
    };
    let mut other = c.clone();
    other.optim.critic_lr = 1e-3;
    let err = train(&other, tmp.path(), &resume, &mut ()).unwrap_err();
    // The setting is named, with both values.
    assert!(
        format!("{err:#}")
            .contains("different configuration: `optim.critic_lr` was 0.0003, is 0.001 now"),
        "{err:#}"
    );
    // A new run into the same directory (no --resume) is refused before it writes
    // anything: the checkpoint, metrics and evaluations stay.
    let metrics = std::fs::read(tmp.path().join("metrics.csv")).unwrap();
    let e = format!("{:#}", train(&c, tmp.path(), &opts, &mut ()).unwrap_err());
    assert!(
        e.contains("already holds a run (checkpoint/state.json, metrics.csv, eval.csv)"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("metrics.csv")).unwrap(),
        metrics
    );
    // A run stopped before its first checkpoint (pretraining takes none before it ends)
    // leaves only logs: a new run is refused with what to do, and `--resume` starts it
    // over (before, the advice was `train --resume`, which a robot run refuses).
    let stopped = tempfile::tempdir().unwrap();
    for f in ["metrics.csv", "eval.csv"] {
        std::fs::write(stopped.path().join(f), "step\n").unwrap();
    }
    let mut pre = c.clone();
    pre.run.online_steps = 0;
    let e = format!(
        "{:#}",
        train(&pre, stopped.path(), &opts, &mut ()).unwrap_err()
    );
    assert!(
        e.contains("holds the logs of a run that wrote no checkpoint (metrics.csv, eval.csv")
            && e.contains("`pretrain --resume`"),
        "{e}"
    );
    let resumed = TrainOptions {
        resume: true,
        ..Default::default()
    };
    train(&pre, stopped.path(), &resumed, &mut ()).unwrap();
    assert!(stopped.path().join("checkpoint/state.json").is_file());
    // A finetune stopped before its first checkpoint: `finetune --resume` is the advice.
    let stopped_finetune = tempfile::tempdir().unwrap();
    std::fs::write(stopped_finetune.path().join("finetune.csv"), "step\n").unwrap();
    let e = format!(
        "{:#}",
        train(&pre, stopped_finetune.path(), &opts, &mut ()).unwrap_err()
    );
    assert!(
        e.contains("wrote no checkpoint (finetune.csv") && e.contains("`finetune --resume`"),
        "{e}"
    );
    // `pretrain --resume` on a run into online training is refused by its step; the
    // checkpoint stays as it was.
    let step = trainer::run::checkpoint_env_step(tmp.path()).unwrap();
    assert!(step > 0);
    let state = std::fs::read(tmp.path().join("checkpoint/state.json")).unwrap();
    let dir = tmp.path().to_str().unwrap();
    // rlpd without `run.pretrain_critic` pretrains nothing (no base policy): refused,
    // where it printed "pretrained" after zero updates.
    let empty = tmp.path().join("rlpd-pretrain");
    let (code, text) = trainer_cli(&[
        "pretrain",
        "--preset",
        "tiny",
        "--set",
        "algo=rlpd",
        "--set",
        "run.pretrain_critic=false",
        "--out",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("rlpd has no base policy to pretrain"),
        "{text}"
    );
    assert!(!empty.exists(), "{text}");
    let (code, text) = trainer_cli(&["pretrain", "--preset", "tiny", "--out", dir, "--resume"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("its checkpoint {step} environment steps in"))
            && text.contains("`train --resume` does"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("checkpoint/state.json")).unwrap(),
        state
    );
    // A hand-edited config.toml is checked on load as a resolved config is: a zero
    // width is named instead of panicking inside the backend.
    trainer::run::load_agent(tmp.path()).unwrap();
    let path = tmp.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("denoiser_hidden = 32", "denoiser_hidden = 0");
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let err = trainer::run::load_agent(tmp.path()).err().unwrap();
    let err = format!("{err:#}");
    assert!(
        err.contains("config.toml: invalid config") && err.contains("net.denoiser_hidden"),
        "{err}"
    );
    // A valid config.toml that is not the one the checkpoint was written with (another
    // task of the same sizes) is refused by the setting, not evaluated as that task.
    let other_task = text.replace("task = \"arm-reach\"", "task = \"push\"");
    assert_ne!(other_task, text);
    std::fs::write(&path, other_task).unwrap();
    let err = format!("{:#}", trainer::run::load_agent(tmp.path()).err().unwrap());
    assert!(
        err.contains(
            "config.toml: `task` is \"push\", but the checkpoint was written with \"arm-reach\""
        ),
        "{err}"
    );
    // A normalizer in state.json of the wrong length, or with a zero deviation, is named
    // (an empty one used to panic, a zero deviation to feed infinities to the networks).
    std::fs::write(&path, &text).unwrap();
    let state_path = tmp.path().join("checkpoint/state.json");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    for (what, edit, said) in [
        (
            "empty",
            serde_json::json!({"mean": [], "std": []}),
            "state.json: the observation normalizer must hold 10 means and 10 deviations \
             (found 0 and 0)",
        ),
        (
            "zero deviation",
            {
                let mut n = state["normalizer"].clone();
                n["std"][3] = serde_json::json!(0.0);
                n
            },
            // The value named (the lengths alone said nothing).
            "state.json: the observation normalizer's std[3] is 0 (finite and at least \
             0.001 expected",
        ),
        (
            // Under the least a bundle may carry: exported and published, and refused
            // by every controller.
            "tiny deviation",
            {
                let mut n = state["normalizer"].clone();
                n["std"][3] = serde_json::json!(1e-4);
                n
            },
            "state.json: the observation normalizer's std[3] is 0.0001 (finite and at \
             least 0.001 expected",
        ),
    ] {
        let mut bad = state.clone();
        bad["normalizer"] = edit;
        std::fs::write(&state_path, bad.to_string()).unwrap();
        let err = format!("{:#}", trainer::run::load_agent(tmp.path()).err().unwrap());
        assert!(err.contains(said), "{what}: {err}");
    }
}

/// Errors on a run's own files name the file: a `config.toml` that could not be
/// written said only "Is a directory (os error 21)", and a checkpoint whose saved
/// configuration this trainer cannot read "checkpoint config: …", naming no file.
#[test]
fn a_run_names_the_file_it_cannot_write_or_read() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny("expo");
    let blocked = tmp.path().join("blocked");
    std::fs::create_dir_all(blocked.join("config.toml")).unwrap();
    let e = format!(
        "{:#}",
        train(&c, &blocked, &TrainOptions::default(), &mut ()).unwrap_err()
    );
    let path = blocked.join("config.toml");
    assert!(e.contains(&format!("writing {}", path.display())), "{e}");

    let run = tmp.path().join("run");
    let resume = stopped_at_its_first_checkpoint(&c, &run);
    // A checkpoint from a newer trainer, with a setting this one does not know.
    let state = run.join("checkpoint/state.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let saved = json["config_toml"].as_str().unwrap().to_string();
    json["config_toml"] = format!("newer_setting = 1\n{saved}").into();
    std::fs::write(&state, json.to_string()).unwrap();
    let e = format!("{:#}", train(&c, &run, &resume, &mut ()).unwrap_err());
    assert!(
        e.contains(&format!("{}: its saved configuration", state.display()))
            && e.contains("newer_setting"),
        "{e}"
    );
}

/// `train --resume` into an `--out` that holds no checkpoint but a killed `finetune`'s
/// logs is refused by name: it wrote a `train` run beside them, which `export` then took
/// for a fine-tuned run.
#[test]
fn resume_refuses_the_logs_of_another_command() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny("expo");
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("finetune.csv"), "update,critic_loss\n").unwrap();
    let resume = TrainOptions {
        resume: true,
        ..TrainOptions::default()
    };
    let e = format!("{:#}", train(&c, &out, &resume, &mut ()).unwrap_err());
    assert!(
        e.contains("holds the logs of a `finetune` run that wrote no checkpoint (finetune.csv)"),
        "{e}"
    );
    assert!(!out.join("metrics.csv").exists(), "a train run was started");
}

/// A run whose critic diverges (an absurd learning rate) stops at its first logged row
/// with an error naming the metric, and leaves no checkpoint of the diverged networks
/// (only the one taken after pretraining, before the first update online); such
/// networks are not exported either. (That the checkpoint itself refuses non-finite
/// networks is `run::tests::
/// a_checkpoint_of_non_finite_networks_is_refused_and_the_last_good_one_stays`.)
#[test]
fn a_diverging_run_stops_and_never_checkpoints_non_finite_networks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny("expo");
    c.optim.critic_lr = 1e20;
    let logged = tmp.path().join("logged");
    let opts = TrainOptions {
        log_every: 20,
        checkpoint_every: 1,
        ..Default::default()
    };
    let e = format!("{:#}", train(&c, &logged, &opts, &mut ()).unwrap_err());
    assert!(
        e.contains("training diverged: critic_loss is NaN in the row of 20"),
        "{e}"
    );
    let rows = table(&logged.join("metrics.csv"));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[1].starts_with("20,NaN,"), "{rows:?}");
    assert_eq!(trainer::run::checkpoint_env_step(&logged).unwrap(), 0);
    trainer::run::load_agent(&logged).unwrap();

    // A healthy run's networks are all finite (the check does not refuse everything).
    let healthy = tmp.path().join("healthy");
    let mut c = tiny("expo");
    c.run.online_steps = 20;
    train(&c, &healthy, &TrainOptions::default(), &mut ()).unwrap();
    let mut agent = trainer::run::load_agent(&healthy).unwrap();
    assert_eq!(agent.first_non_finite(), None);
    // Nor is a diverged agent exported (the robot would refuse the bundle).
    let device = trainer::run::device(&agent.config).unwrap();
    agent.temperature = Some(trainer::nets::Temperature::new(f32::NAN, &device));
    let info = trainer::export::ExportInfo {
        dataset: "test".into(),
        env_steps: 20,
        executed_steps: None,
        not_before_unix: 0,
    };
    let bundle = tmp.path().join("bundle");
    let e = trainer::export::export_bundle(&agent, &bundle, &info, None).unwrap_err();
    assert!(
        format!("{e:#}").contains("temperature: a parameter of shape [1] is NaN"),
        "{e:#}"
    );
    assert!(!bundle.exists());
    // Nor is a checkpoint holding such networks loaded (to evaluate, export or
    // fine-tune): it says what is not finite.
    agent.save(&healthy.join("checkpoint")).unwrap();
    let e = format!("{:#}", trainer::run::load_agent(&healthy).err().unwrap());
    assert!(
        e.contains("the checkpoint holds temperature: a parameter of shape [1] is NaN"),
        "{e}"
    );
    // Nor continued by `train --resume` (it trained on, and the divergence check then
    // blamed the learning rates).
    c.run.online_steps = 40;
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let e = format!("{:#}", train(&c, &healthy, &resume, &mut ()).unwrap_err());
    assert!(
        e.contains("the checkpoint holds temperature: a parameter of shape [1] is NaN"),
        "{e}"
    );
}

/// `--resume` refuses a damaged checkpoint by name and changes nothing: a `checkpoint/`
/// without its `state.json` was taken for a run without a checkpoint, and the resume
/// started over (its logs cut, the old checkpoint replaced, networks and replay
/// included). An empty normalizer is refused as every other load of a checkpoint
/// refuses it (`train --resume` panicked at the first action).
#[test]
fn resume_refuses_a_damaged_checkpoint_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny("expo");
    let run = tmp.path().join("run");
    let resume = stopped_at_its_first_checkpoint(&c, &run);
    let state = run.join("checkpoint/state.json");
    let saved = std::fs::read_to_string(&state).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    std::fs::remove_file(&state).unwrap();
    let e = format!("{:#}", train(&c, &run, &resume, &mut ()).unwrap_err());
    assert!(e.contains("holds no complete checkpoint"), "{e}");
    // A new run there, and the commands that read a checkpoint, say the same (they
    // advised `--resume`, and said "no checkpoint").
    let fresh = TrainOptions::default();
    let e = format!("{:#}", train(&c, &run, &fresh, &mut ()).unwrap_err());
    assert!(e.contains("holds no complete checkpoint"), "{e}");
    let e = format!("{:#}", trainer::run::load_agent(&run).err().unwrap());
    assert!(e.contains("holds no complete checkpoint"), "{e}");
    assert!(run.join("checkpoint/online.bin").exists());
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv")).unwrap(),
        metrics
    );

    let mut json: serde_json::Value = serde_json::from_str(&saved).unwrap();
    json["normalizer"]["mean"] = serde_json::json!([]);
    json["normalizer"]["std"] = serde_json::json!([]);
    std::fs::write(&state, json.to_string()).unwrap();
    let e = format!("{:#}", train(&c, &run, &resume, &mut ()).unwrap_err());
    assert!(
        e.contains("state.json: the observation normalizer must hold"),
        "{e}"
    );
}

/// Counts that must not be 0 are refused by the command line (a 0-step bench printed NaN
/// and infinite times, a 0-episode evaluation a success rate, a 0-seed study failed
/// while plotting).
#[test]
fn zero_counts_are_refused_on_the_command_line() {
    for (args, named) in [
        (
            &["bench", "--preset", "tiny", "--steps", "0"][..],
            "--steps",
        ),
        (
            &["eval", "--run", "nowhere", "--episodes", "0"],
            "--episodes",
        ),
        (&["study", "--out", "nowhere", "--seeds", "0"], "--seeds"),
        (&["study", "--out", "nowhere", "--jobs", "0"], "--jobs"),
        // A row every 0 steps was taken for every step, a checkpoint every 0 steps
        // for none (which also made `--stop-after` do nothing).
        (
            &[
                "train",
                "--preset",
                "tiny",
                "--out",
                "nowhere",
                "--log-every",
                "0",
            ],
            "--log-every",
        ),
        (
            &[
                "train",
                "--preset",
                "tiny",
                "--out",
                "nowhere",
                "--checkpoint-every",
                "0",
            ],
            "--checkpoint-every",
        ),
        (
            &[
                "finetune",
                "--from",
                "nowhere",
                "--out",
                "n2",
                "--log-every",
                "0",
            ],
            "--log-every",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '0' for '{named}")),
            "{args:?}: {stderr}"
        );
    }
    // And a warm-up count that overflowed `warmup + steps` (a panic, exit 101).
    let huge = usize::MAX.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["bench", "--preset", "tiny", "--warmup", &huge])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("invalid value '{huge}' for '--warmup")),
        "{stderr}"
    );
}

/// `--device` and `--set device=` together: the flag won without a word.
#[test]
fn the_device_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["train", "--preset", "tiny", "--device", "cpu", "--set"])
        .args(["device=\"ndarray\"", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--device cpu and --set device=\"ndarray\" both name the device"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// `EXPO_KERNEL_MARKS` (the GPU profile's stage marks) naming a file that cannot be
/// created is said, and the command goes on without marks: it panicked in every command
/// (each builds an agent), exit 101.
#[test]
fn kernel_marks_at_an_unwritable_path_are_a_warning() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["bench", "--preset", "tiny", "--steps", "1", "--warmup", "0"])
        .env("EXPO_KERNEL_MARKS", "/nonexistent-dir/marks.txt")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: EXPO_KERNEL_MARKS: cannot create \"/nonexistent-dir/marks.txt\""),
        "{stderr}"
    );
}

/// `finetune`'s options that only a live session or a bundle reads are refused without
/// them, before any work (they were accepted and ignored).
#[test]
fn finetune_refuses_options_it_would_ignore() {
    let base = [
        "finetune", "--from", "nowhere", "--data", "nowhere", "--out", "nowhere",
    ];
    for (extra, says) in [
        (&["--idle-exit-s", "30"][..], "--listen"),
        (&["--publish-every", "10"], "--listen"),
        (
            &["--signing-key", "k"],
            "--signing-key signs the bundles of --bundle or --listen",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, e) = trainer_cli(&args);
        assert_ne!(code, Some(0), "{args:?}: {e}");
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(
            !e.contains("nowhere: "),
            "{args:?} got as far as the run: {e}"
        );
    }
}

/// A study files its runs by task, algorithm and seed, so it refuses what would put
/// other runs under those names: `--set` of a key it sets per run (three "seeds" of one
/// seed), a task listed twice (two runs in one directory), and a rerun into a directory
/// whose finished runs have other settings (they were summarised as the new ones). A
/// larger `run.online_steps` extends the finished runs instead.
#[test]
fn a_study_never_files_runs_under_the_wrong_names() {
    let tmp = tempfile::tempdir().unwrap();
    let study = tmp.path().join("study");
    let s = study.to_str().unwrap();
    let trainer = |extra: &[&str]| {
        let mut args = vec![
            "study", "--out", s, "--preset", "tiny", "--algos", "bc", "--seeds", "1",
        ];
        args.extend_from_slice(extra);
        trainer_cli(&args)
    };
    let (code, e) = trainer(&["--tasks", "push", "--set", "seed=7"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("--set seed=7: the study sets `seed` for each run"),
        "{e}"
    );
    let (code, e) = trainer(&["--tasks", "push,push"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("--tasks lists push twice"), "{e}");
    assert!(!study.exists(), "a run was started");

    let (code, e) = trainer(&["--tasks", "push"]);
    assert_eq!(code, Some(0), "{e}");
    let (code, e) = trainer(&["--tasks", "push"]);
    assert_eq!(code, Some(0), "{e}");
    assert!(e.contains("study: 0 runs to do"), "{e}");
    let (code, e) = trainer(&["--tasks", "push", "--set", "optim.batch_size=16"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("a finished run with another configuration (`optim.batch_size` was 32"),
        "{e}"
    );
    // The chains' precision changes what a run computes, though other `compute`
    // settings may differ.
    let (code, e) = trainer(&[
        "--tasks",
        "push",
        "--set",
        "compute.chain_precision=\"bf16\"",
    ]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("a finished run with another configuration (`compute.chain_precision`"),
        "{e}"
    );
    let (code, e) = trainer(&["--tasks", "push", "--set", "run.online_steps=120"]);
    assert_eq!(code, Some(0), "{e}");
    assert!(e.contains("study: 1 runs to do"), "{e}");
    let eval = std::fs::read_to_string(study.join("push/bc/seed-0/eval.csv")).unwrap();
    assert!(eval.lines().last().unwrap().starts_with("120,"), "{eval}");
    // Extending resumes the run, which needs the compute settings that change its
    // numbers: refused before its `done` mark goes (the child failed, and the run was
    // marked failed).
    let (code, e) = trainer(&[
        "--tasks",
        "push",
        "--set",
        "run.online_steps=140",
        "--set",
        "compute.candidates=\"sequential\"",
    ]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("a finished run with another configuration (`compute.candidates` was"),
        "{e}"
    );
    assert!(study.join("push/bc/seed-0/done").is_file());
    let (code, e) = trainer(&["--tasks", "push", "--set", "run.online_steps=100"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("a finished run of 120 online steps, the study asks 100"),
        "{e}"
    );
    // Those that compute the same bits may differ: the run is extended (it was refused
    // as needing `compute.threads` 1).
    let (code, e) = trainer(&[
        "--tasks",
        "push",
        "--set",
        "run.online_steps=140",
        "--set",
        "compute.threads=2",
    ]);
    assert_eq!(code, Some(0), "{e}");
    assert!(e.contains("study: 1 runs to do"), "{e}");
    let eval = std::fs::read_to_string(study.join("push/bc/seed-0/eval.csv")).unwrap();
    assert!(eval.lines().last().unwrap().starts_with("140,"), "{eval}");
}

/// Mistakes a study or an export would otherwise carry out: a study's bad preset or
/// override is refused before any run starts (it failed in every child run's log), a
/// summary of a directory without runs is refused, `export --run` refuses the options
/// that only describe `--random`'s networks, and `eval --run` the bundle-only ones
/// (runtime options, `--trusted-key`, `--allow-unsigned`).
#[test]
fn study_and_export_refuse_what_they_would_ignore_or_fail_late() {
    let tmp = tempfile::tempdir().unwrap();
    let trainer = trainer_cli;
    let study = tmp.path().join("study");
    let s = study.to_str().unwrap();
    let (code, e) = trainer(&[
        "study",
        "--out",
        s,
        "--preset",
        "tiny",
        "--set",
        "optim.discount=7",
    ]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("optim.discount must be in [0, 1], not 7"), "{e}");
    assert!(!study.exists(), "a run was started");
    let (code, e) = trainer(&["study", "--out", s, "--summarize-only"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("no such study directory"), "{e}");
    std::fs::create_dir_all(&study).unwrap();
    let (code, e) = trainer(&["study", "--out", s, "--summarize-only"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("no finished runs of arm-reach, push"), "{e}");
    let bundle = tmp.path().join("bundle");
    let (code, e) = trainer(&[
        "export",
        "--run",
        s,
        "--set",
        "task=maze",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("describe the networks of --random"), "{e}");
    assert!(!bundle.exists());
    // The runtime's options of `eval --bundle` do not apply to a run (burn evaluates it).
    let (code, e) = trainer(&["eval", "--run", s, "--backend", "native"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains("'--run <RUN>' cannot be used with '--backend <BACKEND>'"),
        "{e}"
    );
    // Nor does a bundle's trust: a checkpoint carries no signature to check, and a
    // `--trusted-key` that checked nothing would read as a verified evaluation.
    for trust in [
        &["--trusted-key", "keys/expo.pub"][..],
        &["--allow-unsigned"],
    ] {
        let (code, e) = trainer(&[&["eval", "--run", s][..], trust].concat());
        assert_eq!(code, Some(2), "{trust:?}: {e}");
        assert!(e.contains("'--run <RUN>' cannot be used with"), "{e}");
    }
}

/// A run whose config.toml names a device this machine lacks (trained on a GPU) is
/// evaluated, exported and fine-tuned with `--device cpu`; without it, `eval` fails.
#[test]
fn a_gpu_run_is_evaluated_exported_and_finetuned_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut c = tiny("expo");
    c.run.online_steps = 20;
    train(&c, &run, &TrainOptions::default(), &mut ()).unwrap();
    let cfg = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("device = \"cpu\""), "{text}");
    std::fs::write(
        &cfg,
        text.replace("device = \"cpu\"", "device = \"cuda:7\""),
    )
    .unwrap();
    let r = run.to_str().unwrap();
    let trainer = |args: &[&str]| {
        let (code, text) = trainer_cli(args);
        (code == Some(0), text)
    };
    let (ok, e) = trainer(&["eval", "--run", r, "--episodes", "1"]);
    assert!(!ok, "cuda:7 on this machine: {e}");
    // Refused for the device it names, not for some other reason.
    if !cfg!(feature = "cuda") {
        assert!(
            e.contains("device 'cuda:7' needs the trainer built with `--features cuda`"),
            "{e}"
        );
    }
    let (ok, e) = trainer(&["eval", "--run", r, "--episodes", "1", "--device", "cpu"]);
    assert!(ok, "{e}");
    let bundle = tmp.path().join("bundle");
    let b = bundle.to_str().unwrap();
    let (ok, e) = trainer(&["export", "--run", r, "--device", "cpu", "--out", b]);
    assert!(ok, "{e}");
    assert!(bundle.join("manifest.toml").is_file());
    let data = tmp.path().join("robot");
    tools::generate::generate(
        sim::TaskId::ArmReach,
        2,
        3,
        sim::EnvConfig::default(),
        &data,
    )
    .unwrap();
    let o = trainer::finetune::FinetuneOptions {
        from: run.clone(),
        data: vec![data],
        out: tmp.path().join("ft"),
        updates: 2,
        with_offline: true,
        checkpoint_every: 0,
        log_every: 1,
        eval_episodes: 0,
        resume: false,
        stop_after: None,
        listen: None,
        keep_interventions: false,
        device: Some("cpu".into()),
        exports_bundle: false,
    };
    assert_eq!(trainer::finetune::finetune(&o, &mut ()).unwrap().updates, 2);
}

/// A CPU run never uses burn's default device. With a GPU backend compiled in (the test
/// build has `webgpu`), burn's default is that GPU whatever `--device` says, and
/// burn-optim rebuilt loaded optimizer states there: a CPU run that loaded a checkpoint
/// initialised the GPU, and panicked on a machine without one. Here the Vulkan loader
/// finds no driver, so any use of the default device panics: training, resuming and
/// evaluating a run with per-parameter optimizers (whose states burn loads) must not.
#[cfg(feature = "webgpu")]
#[test]
fn a_cpu_run_never_touches_burns_default_device() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    let trainer = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(args)
            .env("BURN_DEVICE", "webgpu")
            .env("VK_ICD_FILENAMES", "/nonexistent/no-vulkan-driver.json")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{args:?}: {stderr}");
    };
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--set",
            "compute.optimizer=\"per-parameter\"",
            "--set",
            "run.eval_every=0",
            "--set",
            "run.online_steps=40",
            "--checkpoint-every",
            "20",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        trainer(&args);
    };
    train(&["--stop-after", "20"]);
    train(&["--resume"]);
    trainer(&["eval", "--run", out, "--episodes", "1"]);
}
