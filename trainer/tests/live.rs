//! Live fine-tuning: `controller run --uplink` streams its transitions to `trainer
//! finetune --listen`, which trains on them as they arrive and publishes signed bundles.
//! In the first test a teleop device also takes over from the policy part of each
//! episode (`--teleop`), as an operator correcting the robot would.

use controller::robot_loop::teleop::TeleopConfig;
use controller::robot_loop::{self, Brain, RunConfig, log::read_log};
use controller::runtime::{Backend, PolicyOptions};
use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
use shared_model::manifest::{Trust, read_signing_key};
use sim::TaskId;
use std::path::Path;
use std::time::Duration;
use tools::teleop::{DeviceOptions, DeviceThread, Engage};
use trainer::config::Config;
use trainer::finetune::{FinetuneOptions, LiveOptions, finetune};
use trainer::run::{TrainOptions, load_agent, train};
use uplink::{KEY_LEN, Key};

fn tiny_push_run(dir: &Path) {
    tiny_push_run_with(dir, 1, 10);
}

fn tiny_push_run_with(dir: &Path, action_horizon: usize, online_steps: usize) {
    let mut c = Config::tiny();
    c.task = TaskId::Push.into();
    c.action_horizon = action_horizon;
    c.run.online_steps = online_steps;
    train(&c, dir, &TrainOptions::default(), &mut ()).unwrap();
}

/// Exports the run at `run` as a bundle at `bundle` (signed with `signing` if given).
fn export_run(
    run: &Path,
    bundle: &Path,
    dataset: &str,
    env_steps: u64,
    signing: Option<&shared_model::manifest::SigningKey>,
) {
    let info = trainer::export::ExportInfo {
        dataset: dataset.into(),
        env_steps,
        executed_steps: None,
        not_before_unix: 0,
    };
    trainer::export::export_bundle(&load_agent(run).unwrap(), bundle, &info, signing).unwrap();
}

/// The push robot behind the simulated firmware (lockstep, clock `scale` times the
/// robot's), and a quiet loop config for it; the policy options use tract and `seed`.
fn push_robot(scale: f64, seed: u64) -> (FirmwareThread, RunConfig, PolicyOptions) {
    let mut robot = firmware_config::RobotConfig::example("push").unwrap();
    // Scaled by the clock: 3 s was 150 ms of real time at 20x, and a 2-core machine
    // running both tests of this file once went past it during a held-out evaluation
    // (a fault ended an episode). These tests are not about that check (the HIL tests
    // are), so it is 20 s of robot time: 1 s real at 20x.
    robot.safety.stale_sensor_ms = 20_000;
    // Likewise the firmware's command watchdog (200 ms of robot time, 100 ms real at 2x):
    // a CI run once tripped it when one inference took 105 ms on the loaded machine
    // (the report printed below said so). The HIL tests check the watchdog.
    robot.command_timeout_ms = 20_000;
    let mut fw = FirmwareOptions::new(TaskId::Push, robot.clone());
    fw.pacing = Pacing::Lockstep;
    let firmware = FirmwareThread::spawn(fw, scale).unwrap();
    let mut cfg = RunConfig::new(robot, firmware.path().to_path_buf());
    // Not a cadence test: a pause on a loaded machine at this time scale can miss 10
    // deadlines in a row (controller/tests/hil.rs checks that fault).
    cfg.max_consecutive_overruns = 0;
    cfg.time_scale = scale;
    cfg.quiet = true;
    let options = PolicyOptions {
        backend: Backend::Tract,
        executed_steps: None,
        seed,
    };
    (firmware, cfg, options)
}

/// `finetune --listen` from `run` into `out` on a free loopback port, in a thread:
/// `updates` updates at most, a bundle every 50 (short runs) or 500 updates, signed
/// with `signing`, the run's offline data mixed in when `with_offline`; returns the
/// thread and the bound address.
fn spawn_listening_trainer(
    run: &Path,
    out: &Path,
    updates: usize,
    key: &Key,
    signing: Option<shared_model::manifest::SigningKey>,
    idle_exit: Option<Duration>,
    with_offline: bool,
) -> (
    std::thread::JoinHandle<trainer::finetune::FinetuneSummary>,
    std::net::SocketAddr,
) {
    let short = updates < 1000;
    let opts = FinetuneOptions {
        from: run.to_path_buf(),
        data: vec![],
        out: out.to_path_buf(),
        updates,
        with_offline,
        // Mid-run checkpoints as a long session writes them (none is read back here).
        checkpoint_every: if short { 50 } else { 500 },
        log_every: if short { 50 } else { 500 },
        eval_episodes: 0,
        resume: false,
        stop_after: None,
        keep_interventions: false,
        device: None,
        exports_bundle: false,
        listen: Some(LiveOptions {
            addr: "127.0.0.1:0".into(),
            key: key.clone(),
            publish_every: if short { 50 } else { 500 },
            signing_key: signing,
            idle_exit,
            bound: None,
            stop: None,
        }),
    };
    spawn_finetune(opts)
}

/// `finetune(opts)` (with `--listen`) in a thread; returns it and the bound address.
fn spawn_finetune(
    mut opts: FinetuneOptions,
) -> (
    std::thread::JoinHandle<trainer::finetune::FinetuneSummary>,
    std::net::SocketAddr,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    opts.listen.as_mut().expect("a live session").bound = Some(tx);
    let trainer = std::thread::spawn(move || finetune(&opts, &mut ()).unwrap());
    (trainer, rx.recv_timeout(Duration::from_secs(60)).unwrap())
}

/// A short `finetune --listen` from `from` into `out` (`resume` to continue it there):
/// at most `updates` updates, a checkpoint, a row and a bundle every 50, the offline
/// data mixed in, and an end 5 s after the robot stops sending (not left waiting should
/// the robot stream fewer transitions than that).
fn short_live_session(
    from: &Path,
    out: &Path,
    updates: usize,
    resume: bool,
    key: &Key,
) -> FinetuneOptions {
    FinetuneOptions {
        from: from.to_path_buf(),
        data: vec![],
        out: out.to_path_buf(),
        updates,
        with_offline: true,
        checkpoint_every: 50,
        log_every: 50,
        eval_episodes: 0,
        resume,
        stop_after: None,
        keep_interventions: false,
        device: None,
        exports_bundle: false,
        listen: Some(LiveOptions {
            addr: "127.0.0.1:0".into(),
            key: key.clone(),
            publish_every: 50,
            signing_key: None,
            idle_exit: Some(Duration::from_secs(5)),
            bound: None,
            stop: None,
        }),
    }
}

/// `finetune --listen --no-offline` on a pretrained run (no online data) of chunks of
/// 3: until the robot's first chunk is complete there is nothing to draw from, and the
/// owed updates wait for it (they drew from the empty offline buffer and aborted the
/// trainer).
#[test]
fn live_fine_tuning_without_offline_data_waits_for_the_first_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_push_run_with(&run, 3, 0);
    let bundle = tmp.path().join("bundle");
    export_run(&run, &bundle, "test", 10, None);
    let link_key = Key::from_bytes([6; KEY_LEN]);
    let out = tmp.path().join("live");
    let (trainer, addr) = spawn_listening_trainer(
        &run,
        &out,
        1_000_000,
        &link_key,
        None,
        Some(Duration::from_secs(2)),
        false,
    );
    let b = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
    // Real time (20 Hz): the robot's transitions come a few at a time, so the trainer
    // sees steps before the first chunk is complete.
    let (firmware, mut cfg, options) = push_robot(1.0, 3);
    cfg.episodes = Some(1);
    cfg.out = Some(tmp.path().join("robot"));
    cfg.uplink = Some(controller::robot_loop::streamer::UplinkConfig {
        addr: addr.to_string(),
        key: link_key,
        drain: Duration::from_secs(5),
        swap: None,
    });
    let brain = Brain::new(&b, &options, false).unwrap();
    let report = controller::robot_loop::run(cfg, brain, "push", "chunks of 3").unwrap();
    drop(firmware);
    let summary = trainer.join().expect("the trainer did not panic");
    assert!(summary.streamed > 0, "{report:?}");
    assert!(
        summary.replay_transitions > 0 && summary.updates > 0,
        "{summary:?}"
    );
}

#[test]
fn the_trainer_learns_from_a_running_robot_and_publishes_signed_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_push_run(&run);
    let (key_path, pub_path) =
        shared_model::manifest::generate_key_pair(&tmp.path().join("keys/expo")).unwrap();
    let signing = read_signing_key(&key_path).unwrap();
    let link_key = Key::from_bytes([4; KEY_LEN]);

    // The robot's first bundle: the run as it is.
    let bundle0 = tmp.path().join("bundle0");
    export_run(&run, &bundle0, "test", 10, Some(&signing));

    // The trainer, listening on a free port.
    let out = tmp.path().join("live");
    let (trainer, addr) = spawn_listening_trainer(
        &run,
        &out,
        150,
        &link_key,
        Some(signing.clone()),
        None,
        true,
    );

    // The robot: the controller on the simulated firmware, streaming to the trainer.
    let b = shared_model::load_bundle(&bundle0, &Trust::from_public_key_file(&pub_path).unwrap())
        .unwrap();
    let (firmware, mut cfg, options) = push_robot(10.0, 1);
    let robot_out = tmp.path().join("robot");
    cfg.episodes = Some(8);
    cfg.out = Some(robot_out.clone());
    cfg.uplink = Some(controller::robot_loop::streamer::UplinkConfig {
        addr: addr.to_string(),
        key: link_key,
        // The trainer stops listening after its last update; do not wait long for it.
        drain: Duration::from_secs(2),
        swap: Some(controller::robot_loop::streamer::SwapConfig {
            trust: Trust::from_public_key_file(&pub_path).unwrap(),
            options: options.clone(),
            two_speed: false,
            play: Default::default(),
            robot: cfg.robot.clone(),
            simulated: true,
            replaces: b.manifest.clone(),
        }),
    });
    // The operator's device: the push demonstrator, taking over from step 10 of each
    // episode (the scripted stand-in for a person correcting the policy).
    let teleop = TeleopConfig::bind("127.0.0.1:0", Duration::from_secs(2)).unwrap();
    let mut o = DeviceOptions::new(teleop.socket.local_addr().unwrap(), TaskId::Push);
    o.engage = Engage::FromStep(10);
    o.idle = Duration::from_secs(600);
    let device = DeviceThread::spawn(o);
    cfg.teleop = Some(teleop);
    let brain = Brain::new(&b, &options, false).unwrap();
    let report = robot_loop::run(cfg, brain, "push", "bundle0").unwrap();
    drop(firmware);
    device.finish().unwrap();
    let summary = trainer.join().unwrap();

    let up = report.uplink.unwrap();
    eprintln!("{up:?}\n{summary:?}");
    // The device's transitions reach the trainer marked, and are trained on (the
    // trainer drops only interventions; none were marked).
    let t = report.teleop.as_ref().unwrap();
    assert!(t.commands > 0, "{t:?}");
    assert!(
        summary.robot_teleop > 0 && summary.robot_teleop as u64 <= t.commands,
        "{} teleoperated transitions received, {} commands from the device",
        summary.robot_teleop,
        t.commands
    );
    assert_eq!(summary.robot_interventions, 0);
    assert_eq!(summary.updates, 150);
    assert!(summary.streamed >= 150, "{summary:?}");
    // Published every 50 updates, each signed and loadable by the robot.
    assert_eq!(summary.published.len(), 3, "{summary:?}");
    for p in &summary.published {
        shared_model::load_bundle(p, &Trust::from_public_key_file(&pub_path).unwrap()).unwrap();
    }
    let latest = std::fs::read_to_string(out.join("bundles/latest")).unwrap();
    assert!(summary.published.last().unwrap().ends_with(latest.trim()));
    // A `finetune.csv` row every 50 updates, finite metrics.
    let log = std::fs::read_to_string(out.join("finetune.csv")).unwrap();
    let rows: Vec<Vec<f64>> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let updates: Vec<f64> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(updates, [50.0, 100.0, 150.0], "{log}");
    assert!(
        rows.iter()
            .all(|r| r.iter().all(|v| v.is_finite()) && r[1] > 0.0),
        "{log}"
    );
    // The trainer's copy of the stream is the robot's log (as far as it was received).
    let robot_log = read_log(&robot_out.join("transitions.log"))
        .unwrap()
        .records;
    let copies: Vec<_> = std::fs::read_dir(out.join("uplink"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = read_log(&copies[0]).unwrap().records;
    assert!(!copy.is_empty() && copy.len() <= robot_log.len());
    assert_eq!(copy[..], robot_log[..copy.len()]);
    // The robot took the trainer's bundles, verified: the first episode ran bundle 0,
    // and each swap began a later one (that a swap waits for the episode's end is
    // `control::tests::a_new_policy_takes_over_only_between_episodes`).
    let offered = &up.bundles;
    assert!(!offered.is_empty(), "{up:?}");
    assert!(offered.iter().all(|b| b.error.is_none()), "{offered:?}");
    assert!(!report.bundle_swaps.is_empty(), "{:?}", report.bundle_swaps);
    for s in &report.bundle_swaps {
        assert!((1..8).contains(&s.first_episode), "{s:?}");
        assert!(offered.iter().any(|b| b.name == s.bundle), "{s:?}");
    }
    // The result is a run directory like any other.
    load_agent(&out).unwrap();
}

/// A TCP relay to `upstream` that cuts its first connection once `cut_after` bytes have
/// gone robot → trainer (a forced disconnect mid-stream); later connections pass.
fn cutting_proxy(upstream: std::net::SocketAddr, cut_after: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut first = true;
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let limit = if std::mem::take(&mut first) {
                cut_after
            } else {
                usize::MAX
            };
            let pump = |mut from: TcpStream, mut to: TcpStream, limit: usize| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut sent = 0usize;
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n.min(limit - sent),
                        };
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        if sent >= limit {
                            break;
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
            };
            pump(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                limit,
            );
            pump(server, client, usize::MAX);
        }
    });
    addr
}

/// Held-out success of `bundle` through the controller and the simulated firmware
/// (lockstep, 20x clock): the same seeds for every bundle.
fn held_out_success(bundle: &Path, trust: &Trust, episodes: u32) -> f64 {
    let b = shared_model::load_bundle(bundle, trust).unwrap();
    let (_firmware, mut cfg, options) = push_robot(20.0, 7);
    cfg.episodes = Some(episodes);
    cfg.seed = 99_000;
    let brain = Brain::new(&b, &options, false).unwrap();
    let report = robot_loop::run(cfg, brain, "push", "eval").unwrap();
    assert_eq!(
        report.episodes_completed, episodes as usize,
        "{report}\nfaults: {:?}",
        report.faults
    );
    report.success_rate
}

/// The product's loop end to end, as `scripts/demo` runs it but in one process: a
/// pretrained `cpu`-preset push policy on the robot (controller + simulated firmware over
/// a pty), `finetune --listen` training on its stream, bundles swapped in between
/// episodes, and the link cut once mid-stream. Expected: held-out success through the
/// controller rises above the pretrained bundle's; swaps only start episodes; the
/// trainer's copy of the stream is exactly the robot's log (every record once, in order,
/// across the cut). About 3-4 minutes on 2 cores.
#[test]
fn live_fine_tuning_raises_success_across_a_forced_disconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("pretrained");
    let mut c = Config::preset("cpu").unwrap();
    c.task = TaskId::Push.into();
    c.run.online_steps = 0;
    train(&c, &run, &TrainOptions::default(), &mut ()).unwrap();
    let (key_path, pub_path) =
        shared_model::manifest::generate_key_pair(&tmp.path().join("keys/expo")).unwrap();
    let signing = read_signing_key(&key_path).unwrap();
    let trust = Trust::from_public_key_file(&pub_path).unwrap();
    let bundle0 = tmp.path().join("bundle0");
    export_run(&run, &bundle0, "scripted demos", 0, Some(&signing));

    let link_key = Key::from_bytes([7; KEY_LEN]);
    let out = tmp.path().join("live");
    let idle_exit = Some(Duration::from_secs(5));
    let (trainer, trainer_addr) = spawn_listening_trainer(
        &run,
        &out,
        usize::MAX,
        &link_key,
        Some(signing),
        idle_exit,
        true,
    );
    // About 700 push transitions (136 bytes each) pass before the cut.
    let proxy = cutting_proxy(trainer_addr, 100_000);

    let first = shared_model::load_bundle(&bundle0, &trust).unwrap();
    let episodes = 40;
    // 40 Hz: about the rate of the trainer's updates on 2 cores, as in scripts/demo.
    let (firmware, mut cfg, options) = push_robot(2.0, 1);
    let robot_out = tmp.path().join("robot");
    cfg.episodes = Some(episodes);
    cfg.seed = 1000;
    cfg.out = Some(robot_out.clone());
    cfg.uplink = Some(controller::robot_loop::streamer::UplinkConfig {
        addr: proxy.to_string(),
        key: link_key,
        drain: Duration::from_secs(30),
        swap: Some(controller::robot_loop::streamer::SwapConfig {
            trust: trust.clone(),
            options: options.clone(),
            two_speed: false,
            play: Default::default(),
            robot: cfg.robot.clone(),
            simulated: true,
            replaces: first.manifest.clone(),
        }),
    });
    let brain = Brain::new(&first, &options, false).unwrap();
    let report = robot_loop::run(cfg, brain, "push", "bundle0").unwrap();
    drop(firmware);
    let summary = trainer.join().unwrap();
    // A run that ends early (a safety stop under load, say) would otherwise surface as
    // a confusing failure further down; say why it stopped.
    assert_eq!(
        report.episodes_completed, episodes as usize,
        "the robot's run ended early:\n{report}\nfaults: {:?}",
        report.faults
    );
    let up = report.uplink.clone().unwrap();
    eprintln!("{up:?}\n{summary:?}\nswaps {:?}", report.bundle_swaps);

    // Exactly once across the cut: the trainer's copy is the robot's whole log.
    assert!(up.connections >= 2, "the link was never cut: {up:?}");
    let robot_log = read_log(&robot_out.join("transitions.log"))
        .unwrap()
        .records;
    assert_eq!(up.acknowledged, robot_log.len() as u64, "{up:?}");
    let copies: Vec<_> = std::fs::read_dir(out.join("uplink"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(read_log(&copies[0]).unwrap().records == robot_log);
    let logged_transitions = robot_log
        .iter()
        .filter(|r| matches!(r, controller::robot_loop::log::Record::Transition(_)))
        .count();
    assert_eq!(summary.streamed, logged_transitions);
    // Swaps begin later episodes, with bundles the trainer published and signed.
    assert!(!report.bundle_swaps.is_empty());
    for s in &report.bundle_swaps {
        assert!((1..episodes).contains(&s.first_episode), "{s:?}");
        assert!(
            up.bundles
                .iter()
                .any(|b| b.name == s.bundle && b.error.is_none())
        );
    }

    // Held-out success through the controller: before and after.
    let latest = std::fs::read_to_string(out.join("bundles/latest")).unwrap();
    let last = out.join("bundles").join(latest.trim());
    let before = held_out_success(&bundle0, &trust, 50);
    let after = held_out_success(&last, &trust, 50);
    eprintln!(
        "held-out success: pretrained {before:.2}, after {} updates on {} robot transitions {after:.2}",
        summary.updates, summary.streamed
    );
    assert!(after > before, "before {before}, after {after}");
}

/// The update cap reached while the robot still streams: every transition the trainer
/// logged (and so acknowledged) is counted and goes into the final checkpoint's online
/// replay, also those that arrived after the last update (they were left in the channel,
/// and the robot does not send an acknowledged transition again).
#[test]
fn transitions_logged_after_the_last_update_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_push_run(&run);
    let bundle = tmp.path().join("bundle");
    export_run(&run, &bundle, "test", 10, None);
    let link_key = Key::from_bytes([7; KEY_LEN]);
    let out = tmp.path().join("live");
    let (trainer, addr) = spawn_listening_trainer(&run, &out, 60, &link_key, None, None, true);
    let b = shared_model::load_bundle(&bundle, &Trust::AllowUnsigned).unwrap();
    let (firmware, mut cfg, options) = push_robot(20.0, 5);
    cfg.episodes = Some(2);
    cfg.out = Some(tmp.path().join("robot"));
    cfg.uplink = Some(controller::robot_loop::streamer::UplinkConfig {
        addr: addr.to_string(),
        key: link_key.clone(),
        drain: Duration::from_secs(2),
        swap: None,
    });
    let brain = Brain::new(&b, &options, false).unwrap();
    robot_loop::run(cfg, brain, "push", "update cap").unwrap();
    drop(firmware);
    let summary = trainer.join().expect("the trainer did not panic");
    assert_eq!(summary.updates, 60, "{summary:?}");
    let logged: usize = std::fs::read_dir(out.join("uplink"))
        .unwrap()
        .map(|e| {
            read_log(&e.unwrap().path())
                .unwrap()
                .records
                .iter()
                .filter(|r| matches!(r, controller::robot_loop::log::Record::Transition(_)))
                .count()
        })
        .sum();
    assert!(logged >= 60, "{logged} transitions logged");
    assert_eq!(summary.streamed, logged, "{summary:?}");
    // Each admitted transition is in the checkpoint's online replay (chunks of 1).
    let online = trainer::run::load_online(&out).unwrap();
    assert_eq!(online.len(), 10 + summary.replay_transitions, "{summary:?}");

    // A resumed session: its bundles' provenance counts the robot transitions of both
    // sessions, which its replay holds (it counted this session's alone).
    let provenance = |name: &str| {
        shared_model::load_bundle(&out.join("bundles").join(name), &Trust::AllowUnsigned)
            .unwrap()
            .manifest
            .provenance
            .dataset
    };
    assert_eq!(
        provenance("0000060"),
        format!("live fine-tuning, {} robot transitions", summary.streamed)
    );
    // A stream log the checkpoint does not hold (a crash after it was logged, before a
    // checkpoint; here another robot's): the resumed session takes it from the log
    // first, since the robot does not send it again.
    let logged_whole: Vec<controller::robot_loop::log::Record> = {
        let log = std::fs::read_dir(out.join("uplink"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        read_log(&log).unwrap().records
    };
    let other: Vec<_> = logged_whole
        .iter()
        .filter(|r| matches!(r, controller::robot_loop::log::Record::Transition(_)))
        .take(4)
        .cloned()
        .collect();
    let mut w =
        controller::robot_loop::log::LogWriter::open(&out.join("uplink/other.log")).unwrap();
    for r in &other {
        w.append(r).unwrap();
    }
    w.sync().unwrap();
    drop(w);
    let rows_before = trainer::run::load_online(&out).unwrap().len();
    let (trainer, addr) = spawn_finetune(short_live_session(&run, &out, 120, true, &link_key));
    let (firmware, mut cfg, options) = push_robot(20.0, 6);
    cfg.episodes = Some(2);
    cfg.out = Some(tmp.path().join("robot2"));
    cfg.uplink = Some(controller::robot_loop::streamer::UplinkConfig {
        addr: addr.to_string(),
        key: link_key.clone(),
        drain: Duration::from_secs(2),
        swap: None,
    });
    let brain = Brain::new(&b, &options, false).unwrap();
    robot_loop::run(cfg, brain, "push", "update cap").unwrap();
    drop(firmware);
    let resumed = trainer.join().expect("the trainer did not panic");
    assert!(resumed.updates > 60 && resumed.streamed > 0, "{resumed:?}");
    assert_eq!(resumed.recovered, 4, "{resumed:?}");
    // Taken before the robot's: the replay's next rows are those of the other log.
    let online = trainer::run::load_online(&out).unwrap();
    for (i, r) in other.iter().enumerate() {
        let controller::robot_loop::log::Record::Transition(t) = r else {
            unreachable!()
        };
        assert_eq!(
            online.rows(rows_before + i..rows_before + i + 1).obs,
            t.obs()
        );
    }
    let last = resumed.published.last().expect("a bundle published");
    assert_eq!(
        provenance(&last.file_name().unwrap().to_string_lossy()),
        format!(
            "live fine-tuning, {} robot transitions",
            summary.streamed + resumed.streamed
        )
    );

    // A new run from that one, in another directory, to which the first robot (the same
    // log, so the same stream) streams again: it is sent only the transitions the
    // first session did not hold (its replay, which the new run starts from, holds
    // them). It was told it held none, and got every one a second time.
    let out2 = tmp.path().join("live2");
    let (trainer, addr) = spawn_finetune(short_live_session(&out, &out2, 60, false, &link_key));
    let (firmware, mut cfg, options) = push_robot(20.0, 7);
    cfg.episodes = Some(1);
    cfg.out = Some(tmp.path().join("robot"));
    cfg.uplink = Some(controller::robot_loop::streamer::UplinkConfig {
        addr: addr.to_string(),
        key: link_key.clone(),
        drain: Duration::from_secs(2),
        swap: None,
    });
    let brain = Brain::new(&b, &options, false).unwrap();
    robot_loop::run(cfg, brain, "push", "from a live run").unwrap();
    drop(firmware);
    let again = trainer.join().expect("the trainer did not panic");
    assert!(again.streamed > 0, "{again:?}");
    let robot_log = read_log(&tmp.path().join("robot/transitions.log")).unwrap();
    let robot_steps: Vec<_> = robot_log
        .records
        .iter()
        .filter_map(|r| match r {
            controller::robot_loop::log::Record::Transition(t) => Some(t),
            _ => None,
        })
        .collect();
    let first_unheld = summary.streamed;
    assert!(robot_steps.len() > first_unheld, "{}", robot_steps.len());
    // The new run's replay goes on from its source's with the robot's first
    // transition the first session did not hold (chunks of 1: a row per transition).
    let before = trainer::run::load_online(&out).unwrap().len();
    let online2 = trainer::run::load_online(&out2).unwrap();
    assert_eq!(online2.len(), before + again.replay_transitions);
    assert_eq!(
        online2.rows(before..before + 1).obs,
        robot_steps[first_unheld].obs(),
        "the robot sent its transitions from the start again"
    );

    // A run still receiving (its stream log open for writing) is not started from:
    // the copy would miss what it goes on receiving.
    let log = std::fs::read_dir(out2.join("uplink"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // A resumed session owes updates to transitions it takes from the logs, and makes
    // them without waiting for a robot (it waited for one before any update). With no
    // robot afterwards, `--idle-exit-s` (5 s here) ends it below its update cap: the
    // transitions taken back start the idle clock (it started with the first one
    // streamed only, and the session waited for ever).
    let mut w =
        controller::robot_loop::log::LogWriter::open(&out2.join("uplink/third.log")).unwrap();
    for r in &other[..3] {
        w.append(r).unwrap();
    }
    w.sync().unwrap();
    drop(w);
    let (trainer, _) = spawn_finetune(short_live_session(
        &out,
        &out2,
        again.updates + 1000,
        true,
        &link_key,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !trainer.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        trainer.is_finished(),
        "the resumed session waited for a robot, or past its idle exit"
    );
    let owed = trainer.join().expect("the trainer did not panic");
    // Every owed update made: the 3 taken back, and those the last session's cap left
    // owed to transitions it had streamed; then the idle exit, below the cap.
    assert_eq!(owed.recovered, 3, "{owed:?}");
    assert!(
        (again.updates + 3..again.updates + 3 + again.streamed).contains(&owed.updates),
        "{owed:?}"
    );

    let receiving = controller::robot_loop::log::LogWriter::open(&log).unwrap();
    let key = Key::from_bytes([7; KEY_LEN]);
    let live3 = tmp.path().join("live3");
    let err = finetune(&short_live_session(&out2, &live3, 10, false, &key), &mut ()).unwrap_err();
    assert!(
        format!("{err:#}").contains("is still receiving this stream"),
        "{err:#}"
    );
    drop(receiving);
}
