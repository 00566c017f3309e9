//! The firmware's logic on a virtual clock: every time below is simulated, so these
//! tests are exact and never depend on the machine's speed.

use super::*;
use firmware_config::protocol::SCHEMA_HASH;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn firmware(task: TaskId, pacing: Pacing) -> SimFirmware {
    firmware_with(task, pacing, "")
}

fn firmware_with(task: TaskId, pacing: Pacing, faults: &str) -> SimFirmware {
    let mut opts = FirmwareOptions::new(task, RobotConfig::example(task.name()).unwrap());
    opts.pacing = pacing;
    opts.faults = faults.parse().unwrap();
    opts.seed = 11;
    SimFirmware::new(opts).unwrap()
}

fn frame(message: Message) -> Frame {
    Frame {
        seq: 0,
        timestamp_us: 0,
        message,
    }
}

fn out(fw: &mut SimFirmware) -> Vec<Message> {
    fw.take_outbox().into_iter().map(|f| f.message).collect()
}

fn connect(fw: &mut SimFirmware, now: Duration) {
    let hello = fw.hello();
    fw.on_frame(now, frame(Message::Hello(hello)));
    assert_eq!(out(fw), [Message::Hello(hello)]);
    assert_eq!(fw.state(), FirmwareState::Idle);
}

fn command(a: &[f32]) -> Frame {
    frame(Message::command(a).unwrap())
}

/// The observation a `Sensor` message carries.
fn sensor_obs(m: &Message) -> Vec<f32> {
    match m {
        Message::Sensor { obs, .. } => obs.to_vec(),
        other => panic!("expected Sensor, got {other:?}"),
    }
}

/// A robot config built in code gets the checks a robot file gets: a short envelope
/// left its last dimension unclamped.
#[test]
fn a_robot_config_that_would_not_load_is_refused() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example(task.name()).unwrap();
    robot.safety.action_min.pop();
    let e = SimFirmware::new(FirmwareOptions::new(task, robot))
        .err()
        .expect("a short envelope is refused")
        .to_string();
    assert!(e.contains("safety.action_min"), "{e}");
}

#[test]
fn nothing_happens_before_a_matching_hello() {
    let mut fw = firmware(TaskId::Push, Pacing::Lockstep);
    fw.on_frame(ms(0), frame(Message::Reset { seed: 1 }));
    assert!(out(&mut fw).is_empty());
    assert_eq!(fw.poll(ms(1000)), ms(1250));
    assert!(
        out(&mut fw).is_empty(),
        "no heartbeats before the handshake"
    );
    // A controller with another schema gets our Hello and a refusal.
    let mut theirs = fw.hello();
    theirs.schema_hash ^= 1;
    fw.on_frame(ms(1), frame(Message::Hello(theirs)));
    assert_eq!(out(&mut fw), [Message::Hello(fw.hello())]);
    assert_eq!(fw.state(), FirmwareState::AwaitHello);
    fw.on_frame(ms(2), frame(Message::Reset { seed: 1 }));
    assert!(out(&mut fw).is_empty());
    let s = fw.stats();
    assert_eq!(
        (s.handshakes, s.handshake_refusals, s.ignored_messages),
        (0, 1, 2)
    );
    // Our Hello carries the task's numbers.
    let h = fw.hello();
    assert_eq!((h.obs_dim, h.act_dim, h.control_hz), (10, 2, 20));
    assert_eq!(h.schema_hash, SCHEMA_HASH);
    connect(&mut fw, ms(3));
}

#[test]
fn lockstep_episode_matches_the_simulator() {
    let task = TaskId::Push;
    let mut fw = firmware(task, Pacing::Lockstep);
    connect(&mut fw, ms(0));
    let seed = 5;
    fw.on_frame(ms(1), frame(Message::Reset { seed }));
    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 10];
    env.reset(seed, &mut obs);
    let msgs = out(&mut fw);
    assert_eq!(msgs[0], Message::EpisodeStart { episode: 0, seed });
    assert_eq!(msgs[1], Message::sensor(0, 0, &obs).unwrap());
    let mut demo = sim::make_demonstrator(task);
    demo.reset(sim::demonstrator_seed(seed));
    let mut action = [0.0f32; 2];
    let mut now = ms(1);
    for step in 1.. {
        demo.act(&obs, &mut action);
        now += ms(1);
        fw.on_frame(now, command(&action));
        let r = env.step(&action, &mut obs);
        let msgs = out(&mut fw);
        assert_eq!(
            msgs[0],
            Message::sensor(0, step, &obs).unwrap(),
            "step {step}"
        );
        assert_eq!(
            msgs[1],
            Message::Reward {
                episode: 0,
                step,
                reward: r.reward,
                done: r.done(),
                truncated: r.truncated,
                success: r.success,
                // push maps identically: robot units are the simulator's.
                applied: heapless::Vec::from_slice(&action).unwrap(),
            }
        );
        if r.done() {
            assert_eq!(
                msgs[2],
                Message::EpisodeEnd {
                    episode: 0,
                    success: r.success,
                    steps: step,
                }
            );
            assert_eq!(fw.state(), FirmwareState::Ended);
            break;
        }
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            fw.poll(now),
            now + fw.timeout,
            "next deadline: the watchdog"
        );
    }
    // After the end: commands are ignored, heartbeats flow, the next Reset starts
    // episode 1.
    fw.on_frame(now, command(&[0.0, 0.0]));
    assert!(out(&mut fw).is_empty());
    fw.poll(now + HEARTBEAT_PERIOD);
    assert_eq!(out(&mut fw), [Message::Heartbeat]);
    fw.on_frame(now + ms(300), frame(Message::Reset { seed: 6 }));
    assert_eq!(
        out(&mut fw)[0],
        Message::EpisodeStart {
            episode: 1,
            seed: 6
        }
    );
    let s = fw.stats();
    assert_eq!((s.episodes, s.hold_steps, s.watchdog_trips), (2, 0, 0));
}

#[test]
fn real_time_steps_once_per_period_with_the_newest_command() {
    let task = TaskId::ArmReach;
    let mut fw = firmware(task, Pacing::RealTime);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 3 }));
    out(&mut fw);
    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 10];
    env.reset(3, &mut obs);
    // Two commands within the first period: only the newest one is applied.
    fw.on_frame(ms(10), command(&[0.9, 0.9]));
    fw.on_frame(ms(20), command(&[0.3, -0.2]));
    assert!(out(&mut fw).is_empty(), "real time waits for the tick");
    assert_eq!(fw.poll(ms(49)), ms(50));
    assert!(out(&mut fw).is_empty());
    assert_eq!(fw.poll(ms(50)), ms(100));
    env.step(&[0.3, -0.2], &mut obs);
    let msgs = out(&mut fw);
    assert_eq!(msgs[0], Message::sensor(0, 1, &obs).unwrap());
    // The command stays in force (zero-order hold) until the watchdog runs out.
    fw.poll(ms(100));
    env.step(&[0.3, -0.2], &mut obs);
    assert_eq!(out(&mut fw)[0], Message::sensor(0, 2, &obs).unwrap());
    // Timestamps are the firmware clock in µs.
    fw.poll(ms(150));
    let frames = fw.take_outbox();
    assert!(frames.iter().all(|f| f.timestamp_us == 150_000));
    assert_eq!(fw.stats().steps, 3);
}

#[test]
fn real_time_holds_until_the_first_command() {
    let mut fw = firmware(TaskId::Maze, Pacing::RealTime);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 1 }));
    fw.poll(ms(100));
    fw.poll(ms(200));
    assert_eq!(fw.stats().hold_steps, 2);
    assert_eq!(fw.stats().watchdog_trips, 0);
}

#[test]
fn lockstep_watchdog_trips_once_and_holds_position() {
    let task = TaskId::Push;
    let mut fw = firmware(task, Pacing::Lockstep);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    out(&mut fw);
    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 10];
    env.reset(2, &mut obs);
    for i in 0..5u64 {
        fw.on_frame(ms(10 * i), command(&[1.0, 0.5]));
        env.step(&[1.0, 0.5], &mut obs);
    }
    out(&mut fw);
    let last = ms(40);
    // Nothing until the timeout (200 ms in push.toml) has passed since the last command.
    assert_eq!(fw.poll(last + ms(199)), last + ms(200));
    assert!(out(&mut fw).is_empty());
    fw.poll(last + ms(200));
    let msgs = out(&mut fw);
    assert_eq!(
        msgs[0],
        Message::Fault {
            code: FaultCode::Watchdog
        }
    );
    env.step(&[0.0, 0.0], &mut obs);
    assert_eq!(msgs[1], Message::sensor(0, 6, &obs).unwrap(), "a hold step");
    assert!(fw.watchdog_tripped());
    // Holding continues at the control rate, without another fault.
    let mut t = last + ms(200);
    let mut positions = Vec::new();
    for step in 7..=30 {
        t += ms(50);
        fw.poll(t);
        env.step(&[0.0, 0.0], &mut obs);
        let msgs = out(&mut fw);
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert_eq!(msgs[0], Message::sensor(0, step, &obs).unwrap());
        positions.push((obs[0], obs[1]));
    }
    // Holding position: the pusher comes to rest where it is.
    let (x0, y0) = positions[positions.len() - 10];
    let (x1, y1) = *positions.last().unwrap();
    assert!((x1 - x0).hypot(y1 - y0) < 1e-4, "{positions:?}");
    assert!(obs[2].hypot(obs[3]) < 1e-3, "speed {obs:?}");
    assert_eq!(fw.stats().watchdog_trips, 1);
    // A command ends the hold and steps at once; no hold ticks follow.
    fw.on_frame(t + ms(1), command(&[0.0, -1.0]));
    env.step(&[0.0, -1.0], &mut obs);
    assert_eq!(out(&mut fw)[0], Message::sensor(0, 31, &obs).unwrap());
    assert!(!fw.watchdog_tripped());
    fw.poll(t + ms(150));
    assert!(out(&mut fw).is_empty());
    let s = fw.stats();
    assert_eq!((s.hold_steps, s.watchdog_trips), (25, 1));
}

/// After a watchdog trip, a command further than `max_delta_per_tick` from the hold
/// (one sent before the trip, say) does not end the hold: it is answered with the
/// fault again and moves nothing; one within reach of the hold ends it.
#[test]
fn a_far_command_does_not_end_the_watchdogs_hold() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example(task.name()).unwrap();
    robot.safety.max_delta_per_tick = vec![0.3, 0.3];
    let mut opts = FirmwareOptions::new(task, robot);
    opts.pacing = Pacing::Lockstep;
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    fw.on_frame(ms(10), command(&[0.2, 0.0]));
    fw.on_frame(ms(20), command(&[0.5, 0.0]));
    fw.on_frame(ms(30), command(&[0.8, 0.0]));
    out(&mut fw);
    fw.poll(ms(30 + 200));
    assert!(fw.watchdog_tripped());
    out(&mut fw);
    let steps = fw.stats().steps;
    // Queued before the trip: 0.5 away from the hold, more than 0.3.
    fw.on_frame(ms(231), command(&[0.5, 0.0]));
    assert_eq!(
        out(&mut fw),
        [Message::Fault {
            code: FaultCode::Watchdog
        }]
    );
    assert!(fw.watchdog_tripped());
    assert_eq!(fw.stats().steps, steps, "an ignored command steps nothing");
    assert_eq!(fw.stats().far_commands_held, 1);
    // Within reach of the hold: taken, and stepped with (lockstep).
    fw.on_frame(ms(232), command(&[0.2, -0.3]));
    assert!(!fw.watchdog_tripped());
    assert_eq!(fw.stats().steps, steps + 1);
    assert_eq!(fw.stats().far_commands_held, 1);
}

/// With robot units far from zero (`offset = 1000, scale = 1`) a command exactly
/// `max_delta_per_tick` from the hold comes back up to 6e-5 beyond it through f32: it
/// still ends the watchdog's hold, and the envelope and slew limit count nothing for
/// commands at their edges. (A fixed 1e-5 allowance answered it with the fault again.)
#[test]
fn commands_at_the_limits_pass_through_robot_units_far_from_zero() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example(task.name()).unwrap();
    robot.safety.max_delta_per_tick = vec![0.15, 0.15];
    robot.action.offset = vec![1000.0, 1000.0];
    robot.action.scale = vec![1.0, 1.0];
    let to_robot = |p: &[f32]| {
        let mut u = vec![0.0; p.len()];
        robot.action.to_robot_units(p, &mut u);
        u
    };
    let mut opts = FirmwareOptions::new(task, robot.clone());
    opts.pacing = Pacing::Lockstep;
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    fw.on_frame(ms(10), command(&to_robot(&[0.15, -0.15])));
    fw.on_frame(ms(20), command(&to_robot(&[0.3, -0.3])));
    out(&mut fw);
    fw.poll(ms(20 + 200));
    assert!(fw.watchdog_tripped());
    out(&mut fw);
    // 0.15 from the hold (1000.15 is 2.4e-5 further in f32) in both dimensions, as the controller's gate sends it.
    fw.on_frame(ms(221), command(&to_robot(&[0.15, -0.15])));
    assert!(!fw.watchdog_tripped(), "{:?}", out(&mut fw));
    let s = fw.stats();
    assert_eq!(
        (s.far_commands_held, s.slew_limited, s.envelope_clamped),
        (0, 0, 0)
    );
}

/// After a stall the commands queued during it are read before any poll: the first
/// must still find the command timeout run out (it reset the watchdog, and a command
/// sent before the stall was taken up with a jump).
#[test]
fn a_command_after_the_timeout_finds_the_watchdog_tripped_without_a_poll() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example(task.name()).unwrap();
    robot.safety.max_delta_per_tick = vec![0.3, 0.3];
    let timeout = robot.command_timeout_ms;
    let mut fw = SimFirmware::new(FirmwareOptions::new(task, robot)).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 1 }));
    fw.on_frame(ms(10), command(&[0.8, 0.0]));
    out(&mut fw);
    // Past the timeout, with no poll in between.
    fw.on_frame(ms(10 + timeout as u64 + 1), command(&[0.8, 0.0]));
    assert_eq!(fw.stats().watchdog_trips, 1);
    assert_eq!(fw.stats().far_commands_held, 1);
    assert!(fw.watchdog_tripped());
    assert!(out(&mut fw).contains(&Message::Fault {
        code: FaultCode::Watchdog
    }));
}

/// Commands lost on the way (or late) can leave the newest one several deltas from
/// what the robot applies: each step moves by at most `max_delta_per_tick` from the
/// step before, and the command is reached over the following steps. A hold step is
/// not limited (the hold is the stop).
#[test]
fn each_step_moves_at_most_max_delta_from_the_last() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example(task.name()).unwrap();
    robot.safety.max_delta_per_tick = vec![0.3, 0.3];
    let mut opts = FirmwareOptions::new(task, robot);
    opts.command_timeout = Some(ms(1000));
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    // push: 20 Hz, ticks every 50 ms.
    fw.on_frame(ms(10), command(&[0.2, -0.1]));
    fw.poll(ms(50));
    assert_eq!(fw.last_stepped(), [0.2, -0.1]);
    // The commands 0.5 and 0.8 were lost; 0.8 and then -0.6 arrive.
    fw.on_frame(ms(60), command(&[0.8, -0.6]));
    fw.poll(ms(100));
    assert_eq!(fw.last_stepped(), [0.5, -0.4]);
    assert_eq!(fw.stats().slew_limited, 1);
    fw.poll(ms(150));
    assert_eq!(fw.last_stepped(), [0.8, -0.6]);
    assert_eq!(fw.stats().slew_limited, 1, "within reach: not limited");
    // Invalid: the firmware holds at once, unlimited.
    fw.on_frame(ms(160), command(&[f32::NAN, 0.0]));
    fw.poll(ms(200));
    assert_eq!(fw.last_stepped(), [0.0, 0.0]);
    // And the next command starts from the hold.
    fw.on_frame(ms(210), command(&[0.8, 0.8]));
    fw.poll(ms(250));
    assert_eq!(fw.last_stepped(), [0.3, 0.3]);
    assert_eq!(fw.stats().slew_limited, 2);
    // A new episode starts from rest.
    fw.on_frame(ms(260), frame(Message::Reset { seed: 3 }));
    fw.on_frame(ms(270), command(&[-0.9, 0.1]));
    fw.poll(ms(310));
    assert_eq!(fw.last_stepped(), [-0.3, 0.1]);
    assert_eq!(fw.stats().slew_limited, 3);
}

/// Each step's `Reward` names the action that step applied, in robot units: the slew
/// limit's reach toward a command further away, and the hold (`action.offset`) after an
/// invalid command, not the commands as sent.
#[test]
fn each_reward_names_the_action_its_step_applied() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example(task.name()).unwrap();
    robot.safety.max_delta_per_tick = vec![0.25, 0.25];
    robot.action.scale = vec![2.0, -4.0];
    robot.action.offset = vec![0.5, 1.0];
    let mut opts = FirmwareOptions::new(task, robot);
    opts.command_timeout = Some(ms(1000));
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    out(&mut fw);
    let applied_at = |fw: &mut SimFirmware, t: u64| {
        fw.poll(ms(t));
        let rewards: Vec<_> = out(fw)
            .into_iter()
            .filter_map(|m| match m {
                Message::Reward { applied, .. } => Some(applied.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(rewards.len(), 1, "one step by {t} ms");
        rewards[0].clone()
    };
    // Policy (0.5, -0.5) is robot (1.5, 3.0); the slew limit applies (0.25, -0.25),
    // robot (1.0, 2.0), then the command itself.
    fw.on_frame(ms(10), command(&[1.5, 3.0]));
    assert_eq!(applied_at(&mut fw, 50), [1.0, 2.0]);
    assert_eq!(applied_at(&mut fw, 100), [1.5, 3.0]);
    // An invalid command: the hold, policy 0, robot units the offset.
    fw.on_frame(ms(110), command(&[f32::NAN, 0.0]));
    assert_eq!(applied_at(&mut fw, 150), [0.5, 1.0]);
}

/// A command outside the safety envelope is applied clamped into it, and the slew
/// limit works from the clamped value: a reversal is not delayed by a reference that
/// walked out past the envelope (it did: +0.9 three times, then -0.5, still drove at
/// +0.6).
#[test]
fn commands_outside_the_envelope_are_clamped_before_the_slew_limit() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example(task.name()).unwrap();
    robot.safety.max_delta_per_tick = vec![0.3, 0.3];
    robot.safety.action_min = vec![-0.5, -0.5];
    robot.safety.action_max = vec![0.5, 0.5];
    let mut opts = FirmwareOptions::new(task, robot);
    opts.command_timeout = Some(ms(1000));
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    // push: 20 Hz, ticks every 50 ms.
    for (k, expect) in [[0.3, -0.3], [0.5, -0.5], [0.5, -0.5]].iter().enumerate() {
        let t = 50 * k as u64;
        fw.on_frame(ms(t + 10), command(&[0.9, -0.9]));
        fw.poll(ms(t + 50));
        assert_eq!(fw.last_stepped(), expect, "tick {k}");
    }
    assert_eq!(fw.stats().envelope_clamped, 3);
    fw.on_frame(ms(160), command(&[-0.5, 0.5]));
    fw.poll(ms(200));
    // One step of 0.3 back from the envelope's edge.
    assert_eq!(fw.last_stepped(), [0.5f32 - 0.3, -0.5f32 + 0.3]);
    assert_eq!(fw.stats().envelope_clamped, 3, "inside: not clamped");
}

/// `lose_cmd`: a lost command never reaches the firmware's logic (not recorded, no
/// step in lockstep, does not feed the watchdog), and is counted.
#[test]
fn lost_commands_never_arrive() {
    let task = TaskId::Push;
    let mut opts = FirmwareOptions::new(task, RobotConfig::example(task.name()).unwrap());
    opts.pacing = Pacing::Lockstep;
    opts.faults = "lose_cmd=1".parse().unwrap();
    opts.record = true;
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    out(&mut fw);
    for t in 1..=3 {
        fw.on_frame(ms(t), command(&[0.1, 0.1]));
    }
    assert!(out(&mut fw).is_empty());
    let s = fw.stats();
    assert_eq!((s.steps, s.commands), (0, 0));
    assert_eq!(fw.faults_mut().stats().lost_commands, 3);
    assert!(
        fw.received()
            .iter()
            .all(|r| !matches!(r.message, Message::Command { .. }))
    );
    fw.poll(ms(300));
    assert!(
        fw.watchdog_tripped(),
        "lost commands do not feed the watchdog"
    );
}

/// `lose_estop=1`: the first `Estop` never reaches the firmware's logic (no answer, no
/// stop counted); the next one is taken and answered.
#[test]
fn a_lost_estop_is_not_answered() {
    let task = TaskId::Push;
    let mut opts = FirmwareOptions::new(task, RobotConfig::example(task.name()).unwrap());
    opts.pacing = Pacing::Lockstep;
    opts.faults = "lose_estop=1".parse().unwrap();
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(1), frame(Message::Estop));
    assert!(out(&mut fw).is_empty());
    assert_eq!(fw.stats().estops, 0);
    fw.on_frame(ms(2), frame(Message::Estop));
    assert_eq!(
        out(&mut fw),
        [Message::Fault {
            code: FaultCode::Estop
        }]
    );
    assert_eq!(fw.stats().estops, 1);
    assert_eq!(fw.faults_mut().stats().lost_estops, 1);
}

#[test]
fn real_time_watchdog_holds_with_the_zero_action() {
    let task = TaskId::Maze;
    let mut fw = firmware(task, Pacing::RealTime);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 4 }));
    fw.on_frame(ms(1), command(&[1.0, 0.0]));
    out(&mut fw);
    // maze: 10 Hz, timeout 300 ms. Ticks at 100, 200 use the command; the watchdog
    // trips at 301; ticks at 300 (command still fresh), 400, 500 ... hold.
    for t in [100, 200, 300, 301, 400, 500] {
        fw.poll(ms(t));
    }
    let faults: Vec<_> = out(&mut fw)
        .into_iter()
        .filter(|m| matches!(m, Message::Fault { .. }))
        .collect();
    assert_eq!(
        faults,
        [Message::Fault {
            code: FaultCode::Watchdog
        }]
    );
    let s = fw.stats();
    assert_eq!((s.steps, s.hold_steps, s.watchdog_trips), (5, 2, 1));
}

#[test]
fn invalid_commands_fault_and_hold() {
    let mut fw = firmware(TaskId::Push, Pacing::Lockstep);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 1 }));
    out(&mut fw);
    for bad in [
        vec![0.1],
        vec![0.1, 0.2, 0.3],
        vec![f32::NAN, 0.0],
        vec![0.0, f32::INFINITY],
    ] {
        fw.on_frame(ms(10), command(&bad));
        let msgs = out(&mut fw);
        assert_eq!(
            msgs[0],
            Message::Fault {
                code: FaultCode::InvalidCommand
            },
            "{bad:?}"
        );
        assert!(matches!(msgs[1], Message::Sensor { .. }), "a hold step");
    }
    let s = fw.stats();
    assert_eq!((s.invalid_commands, s.hold_steps), (4, 4));
    // Invalid commands do not feed the watchdog: it trips 200 ms after the reset.
    fw.poll(ms(200));
    assert_eq!(
        out(&mut fw)[0],
        Message::Fault {
            code: FaultCode::Watchdog
        }
    );
}

#[test]
fn commands_are_mapped_from_robot_units() {
    let task = TaskId::Push;
    let mut robot = RobotConfig::example("push").unwrap();
    robot.action.scale = vec![2.0, 4.0];
    robot.action.offset = vec![1.0, 0.0];
    let mut opts = FirmwareOptions::new(task, robot);
    opts.pacing = Pacing::Lockstep;
    let mut fw = SimFirmware::new(opts).unwrap();
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 9 }));
    out(&mut fw);
    // robot units (2.0, -2.0) = offset + scale * (0.5, -0.5)
    fw.on_frame(ms(1), command(&[2.0, -2.0]));
    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 10];
    env.reset(9, &mut obs);
    env.step(&[0.5, -0.5], &mut obs);
    assert_eq!(out(&mut fw)[0], Message::sensor(0, 1, &obs).unwrap());
}

#[test]
fn estop_stops_stepping_until_reset() {
    let mut fw = firmware(TaskId::Push, Pacing::RealTime);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 1 }));
    fw.poll(ms(50));
    out(&mut fw);
    fw.on_frame(ms(60), frame(Message::Estop));
    assert_eq!(
        out(&mut fw),
        [Message::Fault {
            code: FaultCode::Estop
        }]
    );
    assert_eq!(fw.state(), FirmwareState::Estopped);
    fw.on_frame(ms(70), command(&[1.0, 1.0]));
    for t in (100..2000).step_by(50) {
        fw.poll(ms(t));
    }
    let msgs = out(&mut fw);
    assert!(msgs.iter().all(|m| *m == Message::Heartbeat), "{msgs:?}");
    assert!(!msgs.is_empty());
    assert_eq!(fw.stats().steps, 1);
    fw.on_frame(ms(2000), frame(Message::Reset { seed: 2 }));
    assert_eq!(fw.state(), FirmwareState::Running);
    fw.poll(ms(2050));
    assert_eq!(fw.stats().steps, 2);
}

#[test]
fn heartbeats_are_answered() {
    let mut fw = firmware(TaskId::Maze, Pacing::Lockstep);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(1), frame(Message::Heartbeat));
    assert_eq!(out(&mut fw), [Message::Heartbeat]);
}

#[test]
fn version_mismatch_is_answered_with_our_hello_rate_limited() {
    let mut fw = firmware(TaskId::Maze, Pacing::Lockstep);
    let err = FrameError::Version { received: 9 };
    fw.on_frame_error(ms(0), &err);
    fw.on_frame_error(ms(50), &err);
    assert_eq!(out(&mut fw), [Message::Hello(fw.hello())]);
    fw.on_frame_error(ms(100), &err);
    fw.on_frame_error(ms(101), &FrameError::UnknownType(0x77));
    assert_eq!(out(&mut fw), [Message::Hello(fw.hello())]);
    assert_eq!(fw.stats().frame_errors, 4);
}

/// A `Command` whose CRC holds but whose payload does not parse (17 values; the decoder
/// refuses it as `FrameError::Payload`) is an invalid command: answered with
/// `InvalidCommand` and the hold, and in lockstep it takes its step. It was only counted:
/// the last command stayed in force and no step came. An `Estop` with a payload stops.
#[test]
fn a_command_whose_payload_does_not_parse_is_an_invalid_command() {
    use firmware_config::protocol::{Found, MessageType};
    let task = TaskId::Push;
    let mut fw = firmware(task, Pacing::Lockstep);
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 2 }));
    out(&mut fw);
    let mut env = sim::make_env(task, EnvConfig::default());
    let mut obs = vec![0.0; 10];
    env.reset(2, &mut obs);
    fw.on_frame(ms(10), command(&[1.0, 1.0]));
    env.step(&[1.0, 1.0], &mut obs);
    assert_eq!(out(&mut fw)[0], Message::sensor(0, 1, &obs).unwrap());
    let malformed = |msg_type| FrameError::Payload {
        msg_type,
        reason: "too many values",
        found: Found::Count { count: 17, max: 16 },
    };
    fw.on_frame_error(ms(20), &malformed(MessageType::Command));
    env.step(&[0.0, 0.0], &mut obs);
    assert_eq!(
        out(&mut fw)[..2],
        [
            Message::Fault {
                code: FaultCode::InvalidCommand
            },
            Message::sensor(0, 2, &obs).unwrap()
        ],
        "a hold step"
    );
    let s = fw.stats();
    assert_eq!((s.invalid_commands, s.frame_errors), (1, 1));
    fw.on_frame_error(ms(30), &malformed(MessageType::Estop));
    assert_eq!(
        out(&mut fw),
        [Message::Fault {
            code: FaultCode::Estop
        }]
    );
    assert_eq!(fw.stats().estops, 1);
    assert_eq!(fw.state(), FirmwareState::Estopped);
}

/// `version=1` simulates a firmware of protocol version 1 whole: its `Hello` says 1, and
/// it reads none of our frames (each is a version mismatch, answered with its
/// `Hello` at most once per period), so no handshake and no episode follow. (It rewrote
/// only its outgoing headers, and then shook hands and ran episodes, which a real
/// version-1 board never does.)
#[test]
fn a_firmware_of_another_version_reads_none_of_our_frames() {
    let mut fw = firmware_with(TaskId::Push, Pacing::Lockstep, "version=1");
    let theirs = fw.hello();
    assert_eq!(theirs.protocol_version, 1);
    let mut ours = theirs;
    ours.protocol_version = PROTOCOL_VERSION;
    fw.on_frame(ms(0), frame(Message::Hello(ours)));
    assert_eq!(out(&mut fw), [Message::Hello(theirs)]);
    fw.on_frame(ms(10), frame(Message::Reset { seed: 1 }));
    fw.on_frame(ms(20), frame(Message::Estop));
    assert!(out(&mut fw).is_empty(), "rate-limited answers");
    fw.on_frame(ms(2000), command(&[0.1, 0.1]));
    assert_eq!(out(&mut fw), [Message::Hello(theirs)]);
    let s = fw.stats();
    assert_eq!((s.handshakes, s.episodes, s.frame_errors), (0, 0, 4));
    assert_eq!(fw.state(), FirmwareState::AwaitHello);
}

/// A reboot restarts the sequence numbers and the clock, announces the firmware, and
/// then nothing happens before a `Hello`, as after a boot: commands and `Reset`s are
/// ignored, no episode runs. (It used to keep the handshake and start an episode of
/// its own.)
#[test]
fn a_simulated_reboot_waits_for_a_new_handshake() {
    let mut fw = firmware_with(TaskId::Push, Pacing::Lockstep, "reboot_at=3");
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 1 }));
    for i in 1..=3 {
        fw.on_frame(ms(10 * i), command(&[0.2, 0.2]));
    }
    let frames = fw.take_outbox();
    let last = frames.last().unwrap();
    assert!(matches!(last.message, Message::Hello(_)), "{last:?}");
    assert_eq!((last.seq, last.timestamp_us), (0, 0));
    let before = &frames[frames.len() - 2];
    assert!(matches!(before.message, Message::Reward { step: 3, .. }));
    assert_eq!(fw.stats().reboots, 1);
    assert_eq!(fw.state(), FirmwareState::AwaitHello);
    // Nothing is taken up before a Hello.
    let ignored = fw.stats().ignored_messages;
    fw.on_frame(ms(40), command(&[0.2, 0.2]));
    fw.on_frame(ms(45), frame(Message::Reset { seed: 2 }));
    fw.poll(ms(1000));
    assert!(out(&mut fw).is_empty());
    assert_eq!(fw.stats().ignored_messages, ignored + 2);
    assert_eq!(fw.state(), FirmwareState::AwaitHello);
    // But a stop is taken, and answered (a controller's safe stop after the reboot
    // ends with one before any new Hello); the firmware still waits for a Hello.
    fw.on_frame(ms(50), frame(Message::Estop));
    assert_eq!(
        out(&mut fw),
        [Message::Fault {
            code: FaultCode::Estop
        }]
    );
    assert_eq!(
        (fw.stats().estops, fw.stats().estops_before_handshake),
        (1, 1)
    );
    assert_eq!(fw.state(), FirmwareState::AwaitHello);
    fw.on_frame(ms(55), frame(Message::Reset { seed: 2 }));
    assert!(out(&mut fw).is_empty());
    // A new handshake, then episodes as after a boot (counted from 0 again), and only
    // one reboot.
    connect(&mut fw, ms(1010));
    fw.on_frame(ms(1020), frame(Message::Reset { seed: 2 }));
    assert!(matches!(
        out(&mut fw)[..],
        [
            Message::EpisodeStart { episode: 0, .. },
            Message::Sensor { .. }
        ]
    ));
    for i in 0..6 {
        fw.on_frame(ms(1030 + i), command(&[0.2, 0.2]));
    }
    assert_eq!(fw.stats().reboots, 1);
}

#[test]
fn nan_sensor_fault_leaves_the_simulation_intact() {
    let mut fw = firmware_with(TaskId::Maze, Pacing::Lockstep, "nan=1");
    connect(&mut fw, ms(0));
    fw.on_frame(ms(0), frame(Message::Reset { seed: 1 }));
    let mut env = sim::make_env(TaskId::Maze, EnvConfig::default());
    let mut obs = vec![0.0; 6];
    env.reset(1, &mut obs);
    for step in 0..5 {
        if step > 0 {
            fw.on_frame(ms(step), command(&[0.5, 0.5]));
            env.step(&[0.5, 0.5], &mut obs);
        }
        let sent = out(&mut fw)
            .into_iter()
            .find(|m| matches!(m, Message::Sensor { .. }))
            .unwrap();
        let sent = sensor_obs(&sent);
        assert_eq!(sent.iter().filter(|x| x.is_nan()).count(), 1);
        for (s, o) in sent.iter().zip(&obs) {
            assert!(s.is_nan() || s == o);
        }
    }
}

#[test]
fn wrong_schema_fault_changes_our_hello() {
    let fw = firmware_with(TaskId::Maze, Pacing::Lockstep, "schema=0x1234");
    assert_eq!(fw.hello().schema_hash, 0x1234);
    let ours = RobotConfig::example("maze").unwrap().hello();
    assert!(ours.check_peer(&fw.hello()).is_err());
}

#[test]
fn robot_file_must_fit_the_task() {
    let opts = FirmwareOptions::new(TaskId::Push, RobotConfig::example("maze").unwrap());
    let err = SimFirmware::new(opts).err().unwrap().to_string();
    assert_eq!(
        err,
        "robot 'sim-maze' does not fit task push: observation.dim is 6 in the robot file, 10 in the task"
    );
}

/// A robot file of the task's sizes but another robot's channels is refused by the
/// library too (`controller run --sim`, `bench-loop`), not only by the binary:
/// arm-reach's file drove push under arm-reach's id and names.
#[test]
fn robot_file_of_another_task_of_the_same_sizes_is_refused() {
    let opts = FirmwareOptions::new(TaskId::Push, RobotConfig::example("arm-reach").unwrap());
    let err = SimFirmware::new(opts).err().unwrap().to_string();
    assert!(
        err.starts_with(
            "robot 'sim-arm-reach': observation [0] is `q1`, task push's is `pusher_x`"
        ) && err.contains("describes another robot than the task simulates"),
        "{err}"
    );
    for task in [TaskId::Push, TaskId::Maze, TaskId::ArmReach] {
        let robot = RobotConfig::example(task.name()).unwrap();
        SimFirmware::new(FirmwareOptions::new(task, robot)).unwrap();
    }
}

/// `sim_firmware --task push --gravity` is refused, as the Python bindings and `tools`
/// refuse it, not run without gravity.
#[test]
fn gravity_on_a_planar_task_is_refused() {
    let mut opts = FirmwareOptions::new(TaskId::Push, RobotConfig::example("push").unwrap());
    opts.env.gravity = true;
    let err = SimFirmware::new(opts).err().unwrap().to_string();
    assert_eq!(
        err,
        "gravity applies to arm-reach only; push moves in the horizontal plane"
    );
    let mut robot = RobotConfig::example("arm-reach").unwrap();
    robot.robot = "sim-arm-reach+gravity".into();
    robot.safety.gravity_safe_torque_off = false;
    let mut opts = FirmwareOptions::new(TaskId::ArmReach, robot);
    opts.env.gravity = true;
    assert!(SimFirmware::new(opts).is_ok());
}

/// A variant (`--gravity`, `--reward dense`) needs a robot file that says so: its
/// robot name ends in the options (the controller's datasets are named after it, and
/// the trainer refuses a variant's data for the default task by that name), and with
/// gravity it does not call the torque-off safe. The built-in files were taken, and
/// their data trained on as the default task.
#[test]
fn a_variant_needs_a_robot_file_that_says_so() {
    let variant = |task: TaskId, name: &str, torque_off_safe: bool| {
        let mut robot = RobotConfig::example(task.name()).unwrap();
        robot.robot = name.into();
        robot.safety.gravity_safe_torque_off = torque_off_safe;
        let mut opts = FirmwareOptions::new(task, robot);
        opts.env.gravity = task == TaskId::ArmReach;
        opts.env.reward = sim::Reward::Dense;
        SimFirmware::new(opts).err().map(|e| e.to_string())
    };
    let e = variant(TaskId::ArmReach, "sim-arm-reach+gravity+dense", true).unwrap();
    assert!(
        e.contains("gravity_safe_torque_off = true, but with gravity the arm falls"),
        "{e}"
    );
    let e = variant(TaskId::ArmReach, "sim-arm-reach", false).unwrap();
    assert!(
        e.contains("robot 'sim-arm-reach': arm-reach simulated with `+gravity+dense` needs")
            && e.contains("(`sim-arm-reach+gravity+dense`)"),
        "{e}"
    );
    assert_eq!(
        variant(TaskId::ArmReach, "sim-arm-reach+gravity+dense", false),
        None
    );
    let e = variant(TaskId::Push, "sim-push", true).unwrap();
    assert!(e.contains("`+dense`"), "{e}");
    assert_eq!(variant(TaskId::Push, "lab-push+dense", true), None);
    // And a name that says options the simulator does not run with: its data would be
    // refused as a variant's.
    let mut robot = RobotConfig::example("push").unwrap();
    robot.robot = "sim-push+dense".into();
    let e = SimFirmware::new(FirmwareOptions::new(TaskId::Push, robot))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("push simulated with the default options needs") && e.contains("(`sim-push`)"),
        "{e}"
    );
}

#[test]
fn built_in_robot_files_fit_their_sim_tasks() {
    for task in TaskId::ALL {
        let robot = RobotConfig::example(task.name()).unwrap();
        let spec = task.spec();
        assert_eq!(robot.observation.names, spec.obs_names, "{task}");
        assert_eq!(robot.action.dim, spec.action_dim(), "{task}");
        assert_eq!(robot.control_hz, spec.control_hz, "{task}");
        // Identity action mapping: the simulator takes policy units.
        assert!(robot.action.scale.iter().all(|&s| s == 1.0), "{task}");
        assert!(robot.action.offset.iter().all(|&o| o == 0.0), "{task}");
        // The watchdog allows a few periods, not less than one.
        assert!(
            robot.command_timeout() >= 2 * robot.control_period(),
            "{task}"
        );
        let fw = SimFirmware::new(FirmwareOptions::new(task, robot)).unwrap();
        assert_eq!(fw.hello().obs_dim as usize, spec.obs_dim());
    }
}

#[test]
fn a_press_at_boot_is_reported_but_serves_no_controller_before_a_hello() {
    let mut fw = firmware_with(TaskId::Push, Pacing::Lockstep, "estop_at=boot");
    fw.poll(ms(0));
    assert_eq!(
        out(&mut fw),
        [Message::Fault {
            code: FaultCode::Estop
        }]
    );
    // Still waiting for a controller: no heartbeats, nothing served.
    assert_eq!(fw.state(), FirmwareState::AwaitHello);
    fw.poll(ms(1000));
    fw.on_frame(ms(1001), frame(Message::Reset { seed: 1 }));
    assert!(out(&mut fw).is_empty(), "nothing before a Hello");
    // After the handshake, the latched button refuses the Reset.
    connect(&mut fw, ms(1002));
    fw.on_frame(ms(1003), frame(Message::Reset { seed: 1 }));
    assert_eq!(
        out(&mut fw),
        [Message::Fault {
            code: FaultCode::Estop
        }]
    );
}

/// arm-reach's joint limits, checked by the controller on its observations, fire at the
/// simulated arm's own stops: its firmware sends the angle / π, and the robot file's
/// limits were compared with it in radians (the elbow's stop at 2.6 rad read 0.83
/// against a limit of 2.6), so no joint limit could ever fire.
#[test]
fn arm_reachs_joint_limits_meet_the_simulated_stops() {
    let robot = RobotConfig::example("arm-reach").unwrap();
    let checks = robot.joint_checks();
    let elbow = checks
        .iter()
        .find(|c| c.what.contains("`elbow` position"))
        .expect("the elbow's position check");
    let mut env = sim::make_env(sim::TaskId::ArmReach, sim::EnvConfig::default());
    let mut obs = vec![0.0; robot.observation.dim];
    env.reset(0, &mut obs);
    // Full elbow-up until the episode's end: the elbow sits at its stop.
    for _ in 0..sim::arm::SPEC.horizon {
        if env.step(&[0.0, 1.0], &mut obs).done() {
            break;
        }
    }
    let at_stop = obs[elbow.index];
    assert!(
        (at_stop - elbow.max).abs() <= 0.01 * elbow.max,
        "the elbow's stop reads {at_stop}, its limit {} ({})",
        elbow.max,
        elbow.what
    );
    // And within it: the stop itself is no fault (the limit, 2.6 × f32(1/π), and the
    // simulator's 2.6 / π round to the same f32; another scale literal could put the
    // stop a bit past the limit, and every touch of it would end the run).
    assert!(
        (elbow.min..=elbow.max).contains(&at_stop),
        "the elbow's stop {at_stop} is outside its limits [{}, {}]",
        elbow.min,
        elbow.max
    );
    // Each check's bounds are the observation's units: within the task's stated range.
    let (lo, hi) = (sim::arm::SPEC.obs_low, sim::arm::SPEC.obs_high);
    for c in &checks {
        assert!(
            c.min >= lo[c.index] - 0.1 && c.max <= hi[c.index] + 0.1,
            "{}: [{}, {}] against the observation's range [{}, {}]",
            c.what,
            c.min,
            c.max,
            lo[c.index],
            hi[c.index]
        );
    }
}

/// A firmware thread dropped without `stop` (a failed test, an error path) ends with
/// its owner: it went on serving its pty until the process exited.
#[test]
fn a_dropped_firmware_thread_stops() {
    let task = TaskId::Push;
    let opts = FirmwareOptions::new(task, RobotConfig::example(task.name()).unwrap());
    let fw = FirmwareThread::spawn(opts, 1.0).unwrap();
    let stop = Arc::clone(&fw.stop);
    drop(fw);
    // The thread's own handle on the flag went with it.
    assert_eq!(
        Arc::strong_count(&stop),
        1,
        "the firmware thread still runs"
    );
}
