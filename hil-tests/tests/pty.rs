//! The simulated firmware over a real pseudo-terminal, with a test client that opens
//! the pty slave through `serialport` exactly as the controller will.
//!
//! Timeouts here are generous failure guards only; no assertion depends on how fast
//! the machine is. Lockstep pacing makes the episodes deterministic.

use firmware_config::RobotConfig;
use firmware_config::protocol::{FaultCode, FrameError, HandshakeError, Message};
use hil_tests::client::{Client, ClientError};
use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
use hil_tests::link::SerialLink;
use sim::{EnvConfig, TaskId};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long to wait for anything before calling it a failure.
const GUARD: Duration = Duration::from_secs(20);

fn robot(task: TaskId) -> RobotConfig {
    RobotConfig::example(task.name()).unwrap()
}

fn start(task: TaskId, command_timeout: Duration, faults: &str) -> (FirmwareThread, Client) {
    let mut opts = FirmwareOptions::new(task, robot(task));
    opts.pacing = Pacing::Lockstep;
    opts.command_timeout = Some(command_timeout);
    opts.faults = faults.parse().unwrap();
    let fw = FirmwareThread::spawn(opts, 1.0).unwrap();
    let link = SerialLink::open(fw.path(), robot(task).serial.baud).unwrap();
    (fw, Client::new(Box::new(link)))
}

fn sensor(frame: &hil_tests::client::Frame) -> Option<(u32, u32, Vec<f32>)> {
    match &frame.message {
        Message::Sensor { episode, step, obs } => Some((*episode, *step, obs.to_vec())),
        _ => None,
    }
}

#[test]
fn one_episode_over_a_pty_matches_the_simulator() {
    let task = TaskId::Push;
    // A long watchdog so that a loaded machine cannot trip it during the episode.
    let (fw, mut client) = start(task, Duration::from_secs(30), "");
    let theirs = client.handshake(robot(task).hello(), GUARD).unwrap();
    assert_eq!(
        (theirs.obs_dim, theirs.act_dim, theirs.control_hz),
        (10, 2, 20)
    );

    let seed = 42;
    client.send(Message::Reset { seed }).unwrap();
    let start = client
        .recv_until(GUARD, "EpisodeStart", |m| {
            matches!(m, Message::EpisodeStart { .. })
        })
        .unwrap();
    assert_eq!(start.message, Message::EpisodeStart { episode: 0, seed });

    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 10];
    env.reset(seed, &mut obs);
    let mut demo = sim::make_demonstrator(task);
    demo.reset(sim::demonstrator_seed(seed));
    let (_, s0, got) = client.recv_map(GUARD, "Sensor", sensor).unwrap();
    assert_eq!((s0, &got), (0, &obs));
    let mut action = [0.0f32; 2];
    let mut step = 0;
    let mut rewards = 0.0;
    let (success, steps) = loop {
        demo.act(&obs, &mut action);
        client.send(Message::command(&action).unwrap()).unwrap();
        let r = env.step(&action, &mut obs);
        step += 1;
        // In order: Sensor, Reward (and EpisodeEnd after the last step).
        let f = client.recv(GUARD).unwrap().expect("a Sensor frame");
        assert_eq!(sensor(&f), Some((0, step, obs.clone())), "step {step}");
        let f = client.recv(GUARD).unwrap().expect("a Reward frame");
        let Message::Reward {
            episode,
            step: rstep,
            reward,
            done,
            success,
            applied,
            ..
        } = f.message
        else {
            panic!("expected Reward, got {f:?}")
        };
        assert_eq!(
            (episode, rstep, done, success),
            (0, step, r.done(), r.success)
        );
        // push maps identically, and the demonstrator stays within its slew limit.
        assert_eq!(applied.as_slice(), action.as_slice(), "step {step}");
        assert_eq!(reward, r.reward);
        rewards += reward;
        if r.done() {
            let f = client.recv(GUARD).unwrap().expect("an EpisodeEnd frame");
            let Message::EpisodeEnd {
                episode,
                success,
                steps,
            } = f.message
            else {
                panic!("expected EpisodeEnd, got {f:?}")
            };
            assert_eq!(episode, 0);
            break (success, steps);
        }
    };
    assert_eq!(steps, step);
    assert!(steps >= 10, "a whole episode, not a stub: {steps} steps");
    assert_eq!(
        success,
        rewards > 0.0,
        "sparse reward: 1 exactly on success"
    );
    // A clean link: no frame errors, no lost or repeated sequence numbers.
    assert!(client.errors.is_empty(), "{:?}", client.errors);
    assert_eq!((client.seq.lost, client.seq.stale), (0, 0));

    let report = fw.stop().unwrap();
    assert_eq!(report.firmware.episodes, 1);
    assert_eq!(report.firmware.steps, steps as u64);
    assert_eq!(report.firmware.commands, steps as u64);
    assert_eq!(report.firmware.hold_steps, 0);
    assert_eq!(report.decoder.frames, 2 + steps);
    assert_eq!(report.decoder.resyncs, 0);
}

#[test]
fn watchdog_faults_once_and_holds_position() {
    let task = TaskId::Push;
    // 1 s rather than push.toml's 200 ms, so that a loaded machine cannot trip it
    // while the first commands are still being sent.
    let (fw, mut client) = start(task, Duration::from_secs(1), "");
    client.handshake(robot(task).hello(), GUARD).unwrap();
    let seed = 8;
    client.send(Message::Reset { seed }).unwrap();
    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 10];
    env.reset(seed, &mut obs);
    // A few commands that set the pusher moving.
    let push = [0.8f32, -0.6];
    let mut commanded = 0u32;
    for _ in 0..4 {
        client.recv_map(GUARD, "Sensor", sensor).unwrap();
        client.send(Message::command(&push).unwrap()).unwrap();
        commanded += 1;
    }
    // Stop commanding: the firmware must report the watchdog and hold.
    let fault = client
        .recv_until(GUARD, "Fault", |m| matches!(m, Message::Fault { .. }))
        .unwrap();
    assert_eq!(
        fault.message,
        Message::Fault {
            code: FaultCode::Watchdog
        }
    );
    // Replay: the commanded steps, then hold steps with the zero action. Every sensor
    // frame after the fault must match, and the pusher must come to rest.
    let mut step = 0;
    let mut positions = Vec::new();
    while positions.len() < 25 {
        let (_, s, got) = client.recv_map(GUARD, "Sensor", sensor).unwrap();
        while step < s {
            let a = if step < commanded { push } else { [0.0, 0.0] };
            env.step(&a, &mut obs);
            step += 1;
        }
        if s > commanded {
            assert_eq!(got, obs, "hold step {s}");
            positions.push((got[0], got[1]));
        }
    }
    let (x0, y0) = positions[positions.len() - 10];
    let (x1, y1) = *positions.last().unwrap();
    assert!((x1 - x0).hypot(y1 - y0) < 1e-4, "{positions:?}");
    assert!(obs[2].hypot(obs[3]) < 1e-3, "still moving: {obs:?}");
    // Commands resume the episode.
    client.send(Message::command(&[0.0, 1.0]).unwrap()).unwrap();
    client.send(Message::Estop).unwrap();
    let estop = client
        .recv_until(GUARD, "Fault", |m| matches!(m, Message::Fault { .. }))
        .unwrap();
    assert_eq!(
        estop.message,
        Message::Fault {
            code: FaultCode::Estop
        },
        "exactly one watchdog fault"
    );
    let report = fw.stop().unwrap();
    assert_eq!(report.firmware.watchdog_trips, 1);
    assert!(report.firmware.hold_steps >= 25);
    assert_eq!(report.firmware.commands, commanded as u64 + 1);
}

#[test]
fn schema_mismatch_refuses_the_handshake() {
    let task = TaskId::Maze;
    let (fw, mut client) = start(task, Duration::from_secs(30), "schema=0x1234");
    let err = client.handshake(robot(task).hello(), GUARD).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Handshake(HandshakeError::SchemaHash { theirs: 0x1234, .. })
        ),
        "{err}"
    );
    let report = fw.stop().unwrap();
    // The firmware refuses too: its (wrong) schema is not ours.
    assert_eq!(report.firmware.handshake_refusals, 1);
    assert_eq!(report.firmware.handshakes, 0);
}

/// `--command-timeout-ms` is held to the robot file's bounds (it only had to be above
/// zero: 1 ms tripped the watchdog between every two commands, an hour was none).
#[test]
fn the_binary_refuses_a_watchdog_the_robot_file_would_refuse() {
    for (ms, says) in [
        ("1", "must be at least 2 control periods"),
        ("3600000", "must be at most 60000 ms"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sim-firmware"))
            .args(["--task", "maze", "--pty", "--max-seconds", "1"])
            .args(["--command-timeout-ms", ms])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{ms}: {err}");
        assert!(
            err.contains("--command-timeout-ms") && err.contains(says),
            "{ms}: {err}"
        );
        assert!(out.stdout.is_empty(), "{ms}: no pty is opened");
    }
}

/// A `--max-seconds` too large for a `Duration` is refused by name (its timer thread
/// panicked, and the firmware ran on without its limit).
#[test]
fn the_binary_refuses_a_time_limit_it_cannot_keep() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sim-firmware"))
        .args(["--task", "maze", "--pty", "--max-seconds", "1e20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // (A guard, not a timing: a firmware that took the value serves its pty until
    // killed.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("sim-firmware took --max-seconds 1e20 and ran on");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--max-seconds") && !err.contains("panicked"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no pty is opened");
}

/// A `sim-firmware` child killed when dropped: a failed assertion would otherwise
/// leave it serving its pty (and holding the test's stderr) for its `--max-seconds`.
struct Firmware(Child);

impl Drop for Firmware {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `sim-firmware` binary; returns it and the pty path from its first line.
fn spawn_binary(args: &[&str]) -> (Firmware, String) {
    let mut child = Firmware(
        Command::new(env!("CARGO_BIN_EXE_sim-firmware"))
            .args(args)
            .args(["--pty", "--max-seconds", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let path = line
        .strip_prefix("PTY ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .trim()
        .to_string();
    (child, path)
}

#[test]
fn binary_serves_a_pty() {
    let task = TaskId::Maze;
    // maze.toml's 300 ms watchdog could trip between two commands on a loaded machine
    // (a hold step would then answer the next command): 30 s.
    let (_child, path) = spawn_binary(&[
        "--task",
        "maze",
        "--lockstep",
        "--seed",
        "1",
        "--command-timeout-ms",
        "30000",
    ]);
    let mut client = Client::new(Box::new(SerialLink::open(&path, 1_000_000).unwrap()));
    client.handshake(robot(task).hello(), GUARD).unwrap();
    client.send(Message::Reset { seed: 3 }).unwrap();
    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 6];
    env.reset(3, &mut obs);
    for step in 0..3 {
        let (_, s, got) = client.recv_map(GUARD, "Sensor", sensor).unwrap();
        assert_eq!((s, &got), (step, &obs));
        client
            .send(Message::command(&[0.5, -0.5]).unwrap())
            .unwrap();
        env.step(&[0.5, -0.5], &mut obs);
    }
    client.send(Message::Estop).unwrap();
    client
        .recv_until(GUARD, "Fault", |m| {
            *m == Message::Fault {
                code: FaultCode::Estop,
            }
        })
        .unwrap();
}

#[test]
fn binary_with_wrong_version_is_recognized() {
    let (_child, path) = spawn_binary(&["--task", "push", "--faults", "version=5"]);
    let mut client = Client::new(Box::new(SerialLink::open(&path, 1_000_000).unwrap()));
    client
        .send(Message::Hello(robot(TaskId::Push).hello()))
        .unwrap();
    // Its Hello comes back in a version-5 frame (one above ours): a version mismatch,
    // not noise.
    assert_eq!(firmware_config::protocol::PROTOCOL_VERSION, 4);
    let event = client.next_event(GUARD).unwrap().expect("an answer");
    assert_eq!(event.err(), Some(FrameError::Version { received: 5 }));
    assert_eq!(client.errors[0], FrameError::Version { received: 5 });
}

#[test]
fn binary_rejects_a_robot_that_does_not_fit() {
    let out = Command::new(env!("CARGO_BIN_EXE_sim-firmware"))
        // Bounded: a binary that took the file would serve its pty for good, and the
        // test would hang instead of failing.
        .args(["--task", "push", "--pty", "--max-seconds", "5", "--robot"])
        .arg(crate_dir().join("../firmware-config/robots/maze.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("robot 'sim-maze' does not fit task push: observation.dim is 6"),
        "{err}"
    );
}

#[test]
fn real_time_pacing_streams_and_holds_without_commands() {
    // Real-time pacing with the clock 10x faster: the firmware steps on its own at the
    // control rate, holds from the start (no command yet) and trips the watchdog.
    let task = TaskId::ArmReach;
    let opts = FirmwareOptions::new(task, robot(task));
    let fw = FirmwareThread::spawn(opts, 10.0).unwrap();
    let mut client = Client::new(Box::new(
        SerialLink::open(fw.path(), robot(task).serial.baud).unwrap(),
    ));
    client.handshake(robot(task).hello(), GUARD).unwrap();
    client.send(Message::Reset { seed: 5 }).unwrap();
    client
        .recv_until(GUARD, "Fault", |m| {
            *m == Message::Fault {
                code: FaultCode::Watchdog,
            }
        })
        .unwrap();
    let mut steps = Vec::new();
    while steps.len() < 5 {
        steps.push(client.recv_map(GUARD, "Sensor", sensor).unwrap().1);
    }
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "{steps:?}");
    let report = fw.stop().unwrap();
    assert_eq!(report.firmware.watchdog_trips, 1);
    assert_eq!(report.firmware.hold_steps, report.firmware.steps);
    assert_eq!(report.firmware.commands, 0);
}

/// This crate's directory as cargo sets it at run time: `env!` keeps the checkout the
/// test was compiled in, and cargo reuses a shared target directory's tests after a move.
fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

#[test]
fn binary_rejects_the_robot_file_of_another_task_of_the_same_sizes() {
    // arm-reach and push both have 10 observations and 2 joints.
    let out = Command::new(env!("CARGO_BIN_EXE_sim-firmware"))
        // Bounded: a binary that took the file would serve its pty for good, and the
        // test would hang instead of failing.
        .args(["--task", "push", "--pty", "--max-seconds", "5", "--robot"])
        .arg(crate_dir().join("../firmware-config/robots/arm-reach.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("arm-reach.toml: observation [0]")
            && err.contains("describes another robot than the task simulates"),
        "{err}"
    );
}
