//! Teleoperation through the real loop (`controller run --teleop`): the scripted teleop
//! device (`tools teleop`) drives the simulated push firmware over a pty, through UDP
//! datagrams, the safety envelope and the gate. What the dataset records must be
//! exactly what the device sent, marked `teleop`, and the policy's (or the hold)
//! actions everywhere else.
//!
//! A failing assertion in one test also stops the runs of the others in this binary:
//! the controller's panic hook is process-wide (any panic is a fault). Read the first
//! failure.

use controller::robot_loop::teleop::TeleopConfig;
use controller::robot_loop::{self, Brain, RunConfig, RunReport};
use controller::runtime::{Backend, PolicyOptions};
use dataset::Dataset;
use firmware_config::RobotConfig;
use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
use shared_model::manifest::Trust;
use sim::TaskId;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tools::teleop::{DeviceOptions, DeviceSummary, DeviceThread, Engage};

/// The loop tests of this file one at a time: each has the firmware, the controller
/// and the device on a 2-core machine, and the wait test needs its answers in time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a test runs the loop.
struct Setup {
    episodes: u32,
    engage: Engage,
    time_scale: f64,
    /// `--teleop-wait-ms`.
    wait: Duration,
    /// The run's `--seed`, and the device's.
    seed: u64,
}

impl Setup {
    fn new(episodes: u32, engage: Engage) -> Setup {
        Setup {
            episodes,
            engage,
            time_scale: 10.0,
            wait: Duration::ZERO,
            seed: 0,
        }
    }
}

/// Runs push episodes with the scripted device as `setup` says; returns the run's
/// report, the device's account and the recorded dataset.
fn teleop_run(dir: &Path, brain: Brain, setup: Setup) -> (RunReport, DeviceSummary, Dataset) {
    let mut robot = RobotConfig::example("push").unwrap();
    // At the 10x clock the checks get a tenth of their real time; a slow step of a
    // loaded 2-core machine must not stop this test of the teleop path (the HIL tests
    // cover the stale-sensor monitor and the watchdog).
    robot.safety.stale_sensor_ms = 3000;
    robot.command_timeout_ms = 20_000;
    // Generous, so that a stalled device thread on a loaded machine does not hand
    // control back in the middle (the hand-back has its own unit test).
    let mut teleop = TeleopConfig::bind("127.0.0.1:0", Duration::from_secs(2)).unwrap();
    teleop.wait = setup.wait;
    let addr = teleop.socket.local_addr().unwrap();
    let mut o = DeviceOptions::new(addr, TaskId::Push);
    o.engage = setup.engage;
    o.idle = Duration::from_secs(600);
    o.seed = setup.seed;
    let device = DeviceThread::spawn(o);
    // The run starts once the device has announced itself (its first datagram stays
    // queued for the run), so the device is known from the first frame on.
    teleop
        .socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    teleop.socket.peek_from(&mut [0u8; 256]).unwrap();
    let mut fw = FirmwareOptions::new(TaskId::Push, robot.clone());
    fw.pacing = Pacing::Lockstep;
    let firmware = FirmwareThread::spawn(fw, setup.time_scale).unwrap();
    let mut cfg = RunConfig::new(robot, firmware.path().to_path_buf());
    // Not a cadence test: a pause on a loaded machine at this time scale can miss 10
    // deadlines in a row (controller/tests/hil.rs checks that fault).
    cfg.max_consecutive_overruns = 0;
    cfg.episodes = Some(setup.episodes);
    cfg.seed = setup.seed;
    cfg.time_scale = setup.time_scale;
    cfg.out = Some(dir.to_path_buf());
    cfg.quiet = true;
    cfg.teleop = Some(teleop);
    let report = robot_loop::run(cfg, brain, "push", "teleop test").unwrap();
    let device = device.finish().unwrap();
    drop(firmware);
    let ds = dataset::read_dataset(&dir.join("dataset")).unwrap();
    (report, device, ds)
}

fn bits(a: &[f32]) -> Vec<u32> {
    a.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn demonstrations_record_exactly_what_the_device_sent() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup::new(6, Engage::Always);
    let (report, device, ds) = teleop_run(tmp.path(), Brain::Hold, setup);
    assert_eq!(report.episodes.len(), 6, "{report}");
    assert_eq!(report.episodes_completed, 6, "{report}");
    let t = report.teleop.as_ref().expect("a teleop summary");
    assert!(t.device.is_some(), "{t:?}");
    assert_eq!((t.invalid, t.foreign), (0, 0), "{t:?}");
    let per_episode: u32 = report.episodes.iter().map(|e| e.teleop_commands).sum();
    assert_eq!(t.commands, per_episode as u64);
    assert!(
        device.observations > 0 && device.in_control > 0,
        "{device:?}"
    );
    assert!(device.observations <= t.observations_sent);

    let sent: HashSet<Vec<u32>> = device.engaged_actions.iter().map(|a| bits(a)).collect();
    let ad = 2;
    let (mut teleop, mut frames) = (0, 0);
    for (e, ep) in ds.episodes.iter().enumerate() {
        for i in 0..ep.len() {
            let a = &ep.actions[i * ad..(i + 1) * ad];
            assert!(a.iter().all(|x| x.abs() <= dataset::POLICY_ACTION_LIMIT));
            if ep.teleop[i] {
                assert!(
                    sent.contains(&bits(a)),
                    "episode {e} frame {i}: {a:?} is not an action the device sent"
                );
                teleop += 1;
            } else {
                // No bundle: the hold action.
                assert_eq!(a, [0.0, 0.0], "episode {e} frame {i}");
            }
            assert!(!ep.intervention[i]);
            frames += 1;
        }
    }
    assert_eq!(frames as u64, report.log_sent);
    // The run's first command goes out before the device has seen an observation (its
    // first datagram is disengaged): the hold action.
    assert!(!ds.episodes[0].teleop[0]);
    assert!(
        teleop * 10 >= frames * 9,
        "{teleop} of {frames} frames teleoperated"
    );
    let successes = ds.episodes.iter().filter(|e| e.is_success()).count();
    assert_eq!(successes, report.successes);
}

#[test]
fn a_takeover_replaces_the_policy_from_the_step_it_engages() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle_dir = tmp.path().join("bundle");
    shared_model::synthetic::SyntheticSpec::cpu()
        .write(&bundle_dir, 3, None)
        .unwrap();
    let bundle = shared_model::load_bundle(&bundle_dir, &Trust::AllowUnsigned).unwrap();
    let options = PolicyOptions {
        backend: Backend::Tract,
        executed_steps: None,
        seed: 5,
    };
    // Two-speed: its candidate worker keeps getting observations while the device is
    // in control (`Brain::observe`).
    let brain = Brain::new(&bundle, &options, true).unwrap();
    const FROM: usize = 10;
    let out = tmp.path().join("run");
    let _one_at_a_time = serial();
    // Two episodes: the device repeats its last (engaged) answer between them, which
    // must not take the second episode over before its step FROM.
    let setup = Setup::new(2, Engage::FromStep(FROM as u32));
    let (report, device, ds) = teleop_run(&out, brain, setup);
    assert_eq!(report.episodes_completed, 2, "{report}");
    let t = report.teleop.as_ref().unwrap();
    assert_eq!(t.takeovers, 2, "{t:?}");
    let per_episode: u32 = report.episodes.iter().map(|e| e.teleop_commands).sum();
    assert_eq!(t.commands, per_episode as u64);

    let sent: HashSet<Vec<u32>> = device.engaged_actions.iter().map(|a| bits(a)).collect();
    let (mut taken, mut after) = (0, 0);
    for (e, ep) in ds.episodes.iter().enumerate() {
        assert!(
            ep.len() > FROM + 20,
            "episode {e} ended after {} steps",
            ep.len()
        );
        // The device engages on observation FROM; its first action is the command of
        // step FROM + 1. Before that, the policy's actions (the random synthetic
        // policy's, never exactly the hold action), whatever the timing, after the
        // holds of the episode's first steps while the two-speed worker samples for it.
        let holds = (0..=FROM)
            .take_while(|&i| ep.actions[2 * i..2 * i + 2] == [0.0, 0.0])
            .count();
        assert!(holds < FROM, "episode {e}: {holds} steps held");
        for i in 0..=FROM {
            assert!(!ep.teleop[i], "episode {e} frame {i} marked teleop");
            if i >= holds {
                assert_ne!(
                    &ep.actions[2 * i..2 * i + 2],
                    [0.0, 0.0],
                    "episode {e} frame {i}"
                );
            }
        }
        after += ep.len() - (FROM + 1);
        for i in (FROM + 1..ep.len()).filter(|&i| ep.teleop[i]) {
            taken += 1;
            assert!(
                sent.contains(&bits(&ep.actions[2 * i..2 * i + 2])),
                "episode {e} frame {i}"
            );
        }
    }
    assert!(taken * 10 >= after * 9, "{taken} of {after}");
}

/// `scripts/teleop_device.py` (the Python template for users' devices) against the
/// real loop: its datagrams decode, its constant action (given in the robot's motor
/// units, converted with the robot file as a leader arm's positions would be) is what
/// the dataset records, and it decodes the observations sent back. Needs `python3`
/// (standard library only, 3.11 for `tomllib`).
#[test]
fn the_python_device_template_speaks_the_same_datagrams() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut robot = RobotConfig::example("push").unwrap();
    robot.safety.stale_sensor_ms = 3000;
    robot.command_timeout_ms = 20_000;
    // Motors in other units (powers of two: the conversions are exact). The policy-unit
    // action (0.25, -0.5) is (0.25, -1.25) for these motors.
    robot.action.scale = vec![0.5, 2.0];
    robot.action.offset = vec![0.125, -0.25];
    let robot_file = tmp.path().join("robot.toml");
    std::fs::write(&robot_file, toml::to_string(&robot).unwrap()).unwrap();
    let out_dir = tmp.path().join("run");
    let teleop = TeleopConfig::bind("127.0.0.1:0", Duration::from_secs(2)).unwrap();
    let addr = teleop.socket.local_addr().unwrap();
    let script = crate_dir().join("../scripts/teleop_device.py");
    let mut device = std::process::Command::new("python3")
        .arg(&script)
        .args(["--controller", &addr.to_string(), "--action", "0.25,-1.25"])
        .arg("--robot")
        .arg(&robot_file)
        .args(["--seconds", "60", "--until-observations", "40"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    // The run starts once the device is streaming (Python's start-up can take longer
    // than the run on a loaded machine); the datagram stays queued for the run.
    teleop
        .socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut first = [0u8; 256];
    teleop
        .socket
        .peek_from(&mut first)
        .expect("the Python device sent nothing within 60 s");
    let mut fw = FirmwareOptions::new(TaskId::Push, robot.clone());
    fw.pacing = Pacing::Lockstep;
    let firmware = FirmwareThread::spawn(fw, 10.0).unwrap();
    let mut cfg = RunConfig::new(robot, firmware.path().to_path_buf());
    // Not a cadence test: a pause on a loaded machine at this time scale can miss 10
    // deadlines in a row (controller/tests/hil.rs checks that fault).
    cfg.max_consecutive_overruns = 0;
    cfg.episodes = Some(4);
    cfg.time_scale = 10.0;
    cfg.out = Some(out_dir.clone());
    cfg.quiet = true;
    cfg.teleop = Some(teleop);
    let report = robot_loop::run(cfg, Brain::Hold, "push", "python device").unwrap();
    drop(firmware);
    // It stops by itself once it has 40 observations; if the run ended first, it would
    // wait out its 60 s: stop it then, and the assertions below say why.
    let waited = std::time::Instant::now();
    while device.try_wait().unwrap().is_none() && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = device.kill();
    let out = device.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    // At least 40 (it stops once it has them; a read may bring several at once).
    let observations: usize = printed
        .strip_prefix("teleop_device: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(observations >= 40, "{printed}");
    let t = report.teleop.as_ref().unwrap();
    assert_eq!(t.invalid, 0, "{t:?}");
    let ds = dataset::read_dataset(&out_dir.join("dataset")).unwrap();
    let (mut teleop, mut handed_back) = (0, false);
    for ep in &ds.episodes {
        for i in 0..ep.len() {
            let want: &[f32] = if ep.teleop[i] {
                &[0.25, -0.5]
            } else {
                &[0.0, 0.0]
            };
            assert_eq!(&ep.actions[2 * i..2 * i + 2], want, "frame {i}");
            teleop += ep.teleop[i] as usize;
            handed_back |= teleop > 0 && !ep.teleop[i];
        }
    }
    // The device streams engaged actions from its start, so every tick that sent it an
    // observation acted on its action: at least 40, less a transition or two lost at
    // an episode's end. Then it let go, and the hold action followed.
    assert!(teleop >= 38, "{teleop} teleoperated frames");
    assert!(handed_back);
}

/// What `controller run` refuses without a bundle, before anything moves.
#[test]
fn without_a_bundle_the_cli_needs_teleop_and_refuses_what_needs_a_policy() {
    // Its controller processes would compete for the cores with the wait test's loop.
    let _one_at_a_time = serial();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
            .args(["run", "--sim", "push", "--out"])
            .arg(tempfile::tempdir().unwrap().path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} ran");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&[]);
    assert!(e.contains("--bundle") && e.contains("required"), "{e}");
    for needs_a_policy in [&["--two-speed"][..], &["--backend", "native"]] {
        let e = run(&[&["--teleop", "127.0.0.1:0"][..], needs_a_policy].concat());
        assert!(e.contains("--bundle"), "{needs_a_policy:?}: {e}");
    }
    let e = run(&[
        "--teleop",
        "127.0.0.1:0",
        "--uplink",
        "127.0.0.1:9",
        "--uplink-key",
        "k",
    ]);
    assert!(e.contains("--uplink needs --bundle"), "{e}");
    // A wait beyond 80% of the period (push: 20 Hz, 50 ms) or a timeout of 0.
    let e = run(&["--teleop", "127.0.0.1:0", "--teleop-wait-ms", "45"]);
    assert!(
        e.contains("--teleop-wait-ms must be between 0 and 80%"),
        "{e}"
    );
    let e = run(&["--teleop", "127.0.0.1:0", "--teleop-timeout-ms", "0"]);
    assert!(
        e.contains("--teleop-timeout-ms must be between 1 and 1000"),
        "{e}"
    );
    // An address that cannot be bound is refused with the address named (one of
    // TEST-NET-1, no address of this machine: `256.0.0.1` is not an address at all, and
    // its bind asked DNS for it).
    let e = run(&["--teleop", "192.0.2.1:7979"]);
    assert!(e.contains("--teleop: listening on 192.0.2.1:7979"), "{e}");
}

/// `--teleop-wait-ms`: the controller sends each observation first and waits for the
/// device's answer, so a closed-loop device acts on the frame it answers. The scripted
/// demonstrator through the loop then plays exactly its in-process episodes (same
/// environment seeds, same demonstrator seeds): every observation and action equal to
/// the bit, every outcome the same. Without the wait, push's demonstrator acts a period
/// late and succeeds about half as often (BENCHMARKS, "Teleoperated episodes").
#[test]
fn with_a_wait_a_closed_loop_device_acts_on_the_frame_it_answers() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    // Push's own 20 Hz: a 50 ms period, 40 ms of which the controller may wait (the most
    // it allows). A whole-loop test asserting that no answer is late depends on the
    // scheduler: at 40 Hz with a 20 ms wait, one answer in 259 came late in a CI run on a
    // loaded 2-core machine. The real clock doubles that margin.
    let setup = Setup {
        time_scale: 1.0,
        wait: Duration::from_millis(40),
        // Not 0: episode numbers and seeds differ, and the device seeds its
        // demonstrator from the seed, as in-process (it took the number).
        seed: 5,
        ..Setup::new(3, Engage::Always)
    };
    let (report, _, ds) = teleop_run(tmp.path(), Brain::Hold, setup);
    let t = report.teleop.as_ref().unwrap();
    assert_eq!(t.answer_timeouts, 0, "{t:?}");
    assert_eq!(t.answered, t.commands, "{t:?}");
    assert_eq!(report.episodes_completed, 3, "{report}");
    // It drives every episode from its first step: one takeover each (it counted one
    // in all, as the device was in control from the episode before).
    assert_eq!(t.takeovers, 3, "{t:?}");
    // Every episode is compared below (a `zip` over fewer would compare fewer).
    assert_eq!(ds.episodes.len(), 3);

    let spec = TaskId::Push.spec();
    let (od, ad) = (spec.obs_dim(), spec.action_dim());
    let mut env = sim::make_env(TaskId::Push, sim::EnvConfig::default());
    let mut demonstrator = sim::make_demonstrator(TaskId::Push);
    let (mut obs, mut next, mut action) = (vec![0.0; od], vec![0.0; od], vec![0.0; ad]);
    for (e, (ep, rep)) in ds.episodes.iter().zip(&report.episodes).enumerate() {
        env.reset(rep.seed, &mut obs);
        demonstrator.reset(sim::demonstrator_seed(rep.seed));
        let mut k = 0;
        let success = loop {
            demonstrator.act(&obs, &mut action);
            assert_eq!(
                bits(&ep.observations[k * od..(k + 1) * od]),
                bits(&obs),
                "episode {e} step {k}"
            );
            assert_eq!(
                bits(&ep.actions[k * ad..(k + 1) * ad]),
                bits(&action),
                "episode {e} step {k}"
            );
            assert!(ep.teleop[k]);
            let s = env.step(&action, &mut next);
            obs.copy_from_slice(&next);
            k += 1;
            if s.done() {
                break s.success;
            }
        };
        assert_eq!(ep.len(), k, "episode {e}");
        assert_eq!(rep.success, success, "episode {e}");
    }
}

/// This crate's directory as cargo sets it at run time: `env!` keeps the checkout the
/// test was compiled in, and cargo reuses a shared target directory's tests after a move.
fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}
