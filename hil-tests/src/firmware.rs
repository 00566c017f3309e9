//! The simulated firmware: a `sim` task behind the wire protocol, with its own
//! command watchdog.
//!
//! [`SimFirmware`] is the firmware's logic as a state machine driven by an explicit
//! clock (`now`, time since the firmware started): feed it frames with
//! [`SimFirmware::on_frame`], let time pass with [`SimFirmware::poll`], and send what
//! [`SimFirmware::take_outbox`] returns. Tests drive it with a virtual clock; [`run`]
//! drives it with the wall clock over a [`Port`].
//!
//! # Behaviour
//!
//! ```text
//!  AwaitHello ──Hello ok──► Idle ──Reset──► Running ──done──► Ended ──Reset──► Running …
//!      ▲  (mismatch: answer Hello,   ▲                │  Estop (any state after Hello)
//!      │   stay here; Estop: answer  └──Hello─────────┤        ▼
//!      │   it, stay here)                             └────► Estopped ──Reset──► Running
//!      │                                                     (a stop button pressed:
//!      └── a refused Hello in any state; a reboot             Reset keeps it Estopped)
//! ```
//!
//! A matching `Hello` from `Ended` or `Estopped` also goes to `Idle`; a refused one
//! (another schema, version, dimensions, robot id or settings hash) from any state goes to `AwaitHello`, ending
//! a running episode without an `EpisodeEnd` (the controller refuses such a firmware
//! anyway).
//!
//! - **Handshake.** Nothing but a stop happens before a `Hello`. The firmware answers
//!   every `Hello` with its own (protocol version, schema hash, the robot file's robot
//!   id and settings hash, the task's dimensions and the robot's control rate); if the controller's differs it goes to (or stays
//!   in) `AwaitHello` and ignores everything else but an `Estop`. A frame with another
//!   protocol version is answered with the firmware's `Hello` too (at most every
//!   100 ms), so the controller can say which version the firmware speaks. A simulated reboot (the fault injector's
//!   `reboot_at`) returns to `AwaitHello` after announcing itself with a `Hello`, and
//!   counts its episodes from 0 again, as a booted firmware does.
//! - **Episodes.** `Reset { seed }` resets the simulator with `seed`, then sends
//!   `EpisodeStart` and the step-0 `Sensor`. Every control step sends `Sensor` (the new
//!   observation) and `Reward` (that step's outcome and the action it applied, in robot
//!   units: after the envelope and the slew limit, or the hold) with the episode id and
//!   step number; the step that terminates or truncates (horizon) the episode is followed by
//!   `EpisodeEnd`, and the firmware waits for the next `Reset`.
//! - **Pacing.** [`Pacing::RealTime`]: one step per control period (`1 / control_hz`),
//!   with the newest command (zero-order hold). [`Pacing::Lockstep`]: a step as soon as
//!   a command arrives, so tests and training can run faster than real time.
//! - **Watchdog.** With no valid command for the command timeout (the robot file's
//!   `command_timeout_ms`), the firmware sends `Fault { Watchdog }` once and holds:
//!   it keeps stepping at the control rate with the zero action: a velocity command of
//!   0 for `push` and `maze`, and a zero joint-target offset for `arm-reach`, whose PD
//!   then only brakes the joints (its target follows the measured pose, so an arm in
//!   motion coasts to a stop; nothing pulls it back to where it was). The next valid command within
//!   `max_delta_per_tick` of the hold ends it; one further away (sent before the trip)
//!   is ignored and answered with `Fault { Watchdog }` again.
//! - **Slew limit.** Each control step's action differs from the previous step's by at
//!   most `max_delta_per_tick` per dimension (policy units); a newer command further
//!   away is applied clamped to that reach, and counted (`slew_limited`). The
//!   controller limits each command against the previous *command*: when commands are
//!   lost on the way (a damaged frame) or arrive late, the next one can be several
//!   deltas from what the robot applies, and only the firmware knows that (it says so
//!   in the step's `Reward`, which names the applied action). Hold steps
//!   are not limited: the hold is the stop.
//! - **Commands** are in robot units (`firmware_config::config::ActionConfig`) and are
//!   mapped back to the simulator's units. A command of the wrong length or with a
//!   non-finite value, or one whose payload does not parse (its CRC holds: more than
//!   `MAX_ACT` values, a length that disagrees with its count), is answered with
//!   `Fault { InvalidCommand }` and replaced by the hold action (in lockstep it still
//!   takes its step, so the controller is not left waiting); it does not feed the
//!   watchdog.
//! - **Estop** (one with a payload too) answers `Fault { Estop }` and stops stepping
//!   until the next `Reset`, in
//!   any state: before a handshake it is answered too, and the firmware goes on waiting
//!   for a `Hello` (nothing else is taken up there); so
//!   does a press of the robot's stop button (the fault injector's `estop_at`: at a
//!   step, at boot, as the controller's `Hello` arrives, or during its closing hold),
//!   except that a press is latched: every later `Reset` is answered with
//!   `Fault { Estop }` again (the simulation has no button to release).
//! - **Heartbeat** is answered with a `Heartbeat`; while no episode runs the firmware
//!   also sends one every 250 ms.
//! - **Clock.** Frame timestamps are µs since the firmware (re)booted, on the clock
//!   that drives it (with `--rate-scale`, simulated time).

use crate::faults::{Emit, FaultInjector, FaultSpec, FaultStats};
use crate::link::Port;
use firmware_config::RobotConfig;
use firmware_config::config::first_name_difference;
use firmware_config::protocol::{
    DecoderStats, FaultCode, Frame, FrameDecoder, FrameEncoder, FrameError, Hello, Message,
    MessageType, PROTOCOL_VERSION,
};
use sim::{Env, EnvConfig, TaskId};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How control steps are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// One step per control period, like a real robot.
    RealTime,
    /// A step per received command; time only drives the watchdog and its hold steps.
    Lockstep,
}

/// Everything the simulated firmware needs.
#[derive(Clone, Debug)]
pub struct FirmwareOptions {
    pub task: TaskId,
    pub env: EnvConfig,
    pub robot: RobotConfig,
    pub pacing: Pacing,
    /// Overrides the robot file's `command_timeout_ms`.
    pub command_timeout: Option<Duration>,
    /// Seeds the fault injector (unless its spec has a seed) and simulated reboots.
    pub seed: u64,
    pub faults: FaultSpec,
    /// Record every frame received ([`SimFirmware::received`]) and every step's applied
    /// action ([`SimFirmware::stepped`]): lets tests check what a controller really sent
    /// (e.g. that no command left its safety envelope) and what it logged.
    pub record: bool,
}

/// What one control step applied (recorded with [`FirmwareOptions::record`]): the
/// firmware's side of the action a transition records.
#[derive(Clone, Debug, PartialEq)]
pub struct Stepped {
    /// The firmware's episode id and the step's number (its `Reward`'s).
    pub episode: u32,
    pub step: u32,
    /// Policy units.
    pub applied: Vec<f32>,
}

/// A frame the firmware received, with its clock and state at that moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub at: Duration,
    pub state: FirmwareState,
    /// The watchdog had tripped: the firmware was applying its own hold action.
    pub watchdog_hold: bool,
    /// The action in force (policy units): the last valid command, or its hold action
    /// (zero) after a `Reset`, an `Estop`, a reboot, an invalid command or a watchdog
    /// trip, and outside an episode. The slew limit may still be reaching a command
    /// further than `max_delta_per_tick` from the steps before it
    /// ([`SimFirmware::last_stepped`] is what the last step applied).
    pub applied: Vec<f32>,
    /// Commands lost on the way (`lose_cmd`) since the last command received.
    pub lost_before: u64,
    pub message: Message,
}

impl FirmwareOptions {
    /// Real-time pacing, no faults, the task's default environment options.
    pub fn new(task: TaskId, robot: RobotConfig) -> Self {
        FirmwareOptions {
            task,
            env: EnvConfig::default(),
            robot,
            pacing: Pacing::RealTime,
            command_timeout: None,
            seed: 0,
            faults: FaultSpec::default(),
            record: false,
        }
    }
}

/// Why the simulated firmware could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error(
        "robot '{robot}' does not fit task {task}: {field} is {robot_value} in the robot file, {task_value} in the task"
    )]
    Mismatch {
        robot: String,
        task: TaskId,
        field: &'static str,
        robot_value: u32,
        task_value: u32,
    },
    /// An environment option the task does not have (`--gravity` on a planar task).
    #[error("{0}")]
    Env(String),
    #[error("serial link: {0}")]
    Io(io::Error),
    #[error("the firmware thread panicked")]
    Panicked,
}

// By hand rather than `#[from]`: see `ClientError`.
impl From<io::Error> for FirmwareError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Where the firmware is in its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareState {
    AwaitHello,
    Idle,
    Running,
    Ended,
    Estopped,
}

/// What the firmware did, for tests and the end-of-run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirmwareStats {
    pub handshakes: u32,
    pub handshake_refusals: u32,
    pub episodes: u32,
    pub steps: u64,
    /// Steps taken with the hold action (watchdog, invalid command, no command yet).
    pub hold_steps: u64,
    pub commands: u64,
    pub invalid_commands: u64,
    /// Messages that made no sense in the current state (e.g. a command before `Reset`).
    pub ignored_messages: u64,
    pub watchdog_trips: u32,
    pub estops: u32,
    /// Of those, `Estop`s taken before a handshake (after a reboot, say): the firmware
    /// stops and answers, and still waits for a `Hello`.
    pub estops_before_handshake: u32,
    /// `Reset`s answered with `Fault { Estop }`: the stop button was pressed.
    pub refused_resets: u32,
    pub frame_errors: u64,
    /// Real-time ticks skipped because the firmware fell more than a period behind.
    pub overruns: u64,
    pub reboots: u32,
    /// Valid commands ignored while the watchdog held because they were further than
    /// `max_delta_per_tick` from the hold action (commands sent before the trip, which
    /// continued the motion it stopped).
    pub far_commands_held: u64,
    /// Steps whose command was further than `max_delta_per_tick` from the previous
    /// step's action and was applied clamped (commands lost or late on the way).
    pub slew_limited: u64,
    /// Commands outside the safety envelope (`safety.action_min`/`action_max`),
    /// applied clamped into it.
    pub envelope_clamped: u64,
}

/// Whether `to` is further than `max_delta` (plus `tolerance`) from `from` in some
/// dimension: beyond one control step's reach.
fn beyond_reach(max_delta: &[f32], tolerance: &[f32], from: &[f32], to: &[f32]) -> bool {
    from.iter()
        .zip(to)
        .zip(max_delta.iter().zip(tolerance))
        .any(|((f, t), (d, tol))| (t - f).abs() > d + tol)
}

/// How often the firmware sends a heartbeat while no episode runs.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(250);
/// Least time between two `Hello`s sent in answer to version-mismatched frames.
const VERSION_HELLO_PERIOD: Duration = Duration::from_millis(100);
/// Longest [`SimFirmware::poll`] asks the caller to wait.
const MAX_WAIT: Duration = Duration::from_millis(250);

/// The simulated firmware's logic. See the module docs.
pub struct SimFirmware {
    robot: RobotConfig,
    pacing: Pacing,
    period: Duration,
    timeout: Duration,
    env: Box<dyn Env>,
    hello: Hello,
    obs: Vec<f32>,
    /// The newest valid command, in simulator units.
    action: Vec<f32>,
    /// The action the last control step applied (simulator units; zero after a hold
    /// step and at an episode's start): the slew limit's reference.
    stepped: Vec<f32>,
    has_command: bool,
    zero: Vec<f32>,
    /// Per action dimension: how far beyond a limit a command may land through round-off
    /// ([`firmware_config::config::ActionConfig::same_action_tolerance`], as the
    /// controller's gate allows).
    tolerance: Vec<f32>,
    state: FirmwareState,
    next_episode: u32,
    episode: u32,
    step: u32,
    last_command_at: Duration,
    watchdog_tripped: bool,
    /// The robot's stop button was pressed: no `Reset` releases it (there is no button
    /// to release in the simulation, so it stays pressed for the rest of the run).
    button_pressed: bool,
    next_tick: Duration,
    last_heartbeat: Duration,
    last_version_hello: Option<Duration>,
    boot_at: Duration,
    encoder: FrameEncoder,
    outbox: Vec<Frame>,
    faults: FaultInjector,
    stats: FirmwareStats,
    record: bool,
    received: Vec<Received>,
    stepped_record: Vec<Stepped>,
    /// Commands lost since the last one received (for [`Received::lost_before`]).
    lost_since_command: u64,
}

/// A task simulated with other options than the default (`--gravity`, `--reward
/// dense`) needs a robot file that says so. Its `robot` name must end in the options
/// (`sim-arm-reach+gravity`): the datasets a controller records are named after the
/// robot file (the options are not on the wire), and the trainer refuses a variant's
/// data for its default task by that name alone. With gravity, the arm falls when its
/// torque goes off, so the file must not say `gravity_safe_torque_off = true` (the
/// simulated arm would hold where a real one drops).
fn check_variant_robot(opts: &FirmwareOptions) -> Result<(), String> {
    let robot = &opts.robot;
    if opts.env.gravity && robot.safety.gravity_safe_torque_off {
        return Err(format!(
            "robot '{}' says gravity_safe_torque_off = true, but with gravity the arm falls \
             when its torque goes off: set it to false in the robot file",
            robot.robot
        ));
    }
    let options = opts.env.options();
    let (base, named) = sim::split_variant(&robot.robot);
    if named != options {
        let wanted = if options.is_empty() {
            base.to_string()
        } else {
            format!("{base}+{options}")
        };
        return Err(format!(
            "robot '{}': {} simulated with {} needs a robot file whose robot name ends in \
             the options as they are (`{wanted}`): the datasets recorded through the \
             controller are named after it, and the trainer tells a variant's data from the \
             default task's by that name",
            robot.robot,
            opts.task,
            if options.is_empty() {
                "the default options".to_string()
            } else {
                format!("`+{options}`")
            }
        ));
    }
    Ok(())
}

/// Where `robot`'s observation names first differ from those `task` simulates, and the
/// task's name there: a file of another robot (the firmware announces the file's id,
/// which would let a controller configured for that robot drive this task).
pub fn other_robots_observation(
    robot: &RobotConfig,
    task: TaskId,
) -> Option<(usize, &'static str)> {
    let ours = task.spec().owned_obs_names();
    let i = first_name_difference(&robot.observation.names, &ours)?;
    Some((i, task.spec().obs_names[i]))
}

impl SimFirmware {
    /// Checks that the robot file fits the task and builds the firmware.
    pub fn new(opts: FirmwareOptions) -> Result<SimFirmware, FirmwareError> {
        let spec = opts.task.spec();
        let r = &opts.robot;
        // As a robot file is checked when read: one built in code with a short
        // envelope left a dimension unclamped, and a firmware author reads this one.
        r.check()
            .map_err(|e| FirmwareError::Env(format!("robot '{}': {e}", r.robot)))?;
        let checks = [
            (
                "observation.dim",
                r.observation.dim as u32,
                spec.obs_dim() as u32,
            ),
            ("action.dim", r.action.dim as u32, spec.action_dim() as u32),
            ("control_hz", r.control_hz, spec.control_hz),
        ];
        for (field, robot_value, task_value) in checks {
            if robot_value != task_value {
                return Err(FirmwareError::Mismatch {
                    robot: r.robot.clone(),
                    task: opts.task,
                    field,
                    robot_value,
                    task_value,
                });
            }
        }
        // The names too, as `sim-firmware --robot` checks them: arm-reach's file has
        // push's sizes, and `controller run --sim push --robot arm-reach.toml` drove push
        // under arm-reach's id and names, its joint checks applied to push's channels.
        if let Some((i, ours)) = other_robots_observation(r, opts.task) {
            return Err(FirmwareError::Env(format!(
                "robot '{}': observation [{i}] is `{}`, task {}'s is `{ours}`: the robot file \
                 describes another robot than the task simulates",
                r.robot, r.observation.names[i], opts.task
            )));
        }
        opts.env.check_for(opts.task).map_err(FirmwareError::Env)?;
        check_variant_robot(&opts).map_err(FirmwareError::Env)?;
        let faults = FaultInjector::new(opts.faults.clone(), opts.seed);
        let mut hello = r.hello();
        hello.schema_hash = faults.schema_hash(hello.schema_hash);
        hello.protocol_version = faults.protocol_version(hello.protocol_version);
        Ok(SimFirmware {
            period: r.control_period(),
            timeout: opts.command_timeout.unwrap_or(r.command_timeout()),
            pacing: opts.pacing,
            env: sim::make_env(opts.task, opts.env),
            hello,
            obs: vec![0.0; spec.obs_dim()],
            action: vec![0.0; spec.action_dim()],
            stepped: vec![0.0; spec.action_dim()],
            has_command: false,
            zero: vec![0.0; spec.action_dim()],
            tolerance: (0..spec.action_dim())
                .map(|i| r.action.same_action_tolerance(i))
                .collect(),
            state: FirmwareState::AwaitHello,
            next_episode: 0,
            episode: 0,
            step: 0,
            last_command_at: Duration::ZERO,
            watchdog_tripped: false,
            button_pressed: false,
            next_tick: Duration::ZERO,
            last_heartbeat: Duration::ZERO,
            last_version_hello: None,
            boot_at: Duration::ZERO,
            encoder: FrameEncoder::new(),
            outbox: Vec::new(),
            faults,
            stats: FirmwareStats::default(),
            record: opts.record,
            received: Vec::new(),
            stepped_record: Vec::new(),
            lost_since_command: 0,
            robot: opts.robot,
        })
    }

    pub fn state(&self) -> FirmwareState {
        self.state
    }

    pub fn stats(&self) -> FirmwareStats {
        self.stats
    }

    /// The `Hello` this firmware announces.
    pub fn hello(&self) -> Hello {
        self.hello
    }

    /// The current episode id and step.
    pub fn episode_step(&self) -> (u32, u32) {
        (self.episode, self.step)
    }

    /// True while the watchdog holds.
    pub fn watchdog_tripped(&self) -> bool {
        self.watchdog_tripped
    }

    pub fn faults_mut(&mut self) -> &mut FaultInjector {
        &mut self.faults
    }

    /// Frames to send, oldest first.
    pub fn take_outbox(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.outbox)
    }

    fn send(&mut self, now: Duration, message: Message) {
        // µs since boot, wrapping like the header field.
        let stamp = now.saturating_sub(self.boot_at).as_micros() as u32;
        let frame = self.encoder.frame(stamp, message);
        self.outbox.push(frame);
    }

    fn handshaken(&self) -> bool {
        self.state != FirmwareState::AwaitHello
    }

    /// Every frame received so far (only with [`FirmwareOptions::record`]).
    pub fn received(&self) -> &[Received] {
        &self.received
    }

    /// Every step's applied action so far (only with [`FirmwareOptions::record`]).
    pub fn stepped(&self) -> &[Stepped] {
        &self.stepped_record
    }

    /// Handles one received frame.
    pub fn on_frame(&mut self, now: Duration, frame: Frame) {
        if matches!(frame.message, Message::Command { .. })
            && self.state == FirmwareState::Running
            && self.faults.lose_command()
        {
            // Injected: damaged on the way, the decoder dropped it.
            self.lost_since_command += 1;
            return;
        }
        if matches!(frame.message, Message::Estop) && self.faults.lose_estop() {
            // Injected: a stop damaged on the line, dropped by the decoder.
            return;
        }
        // Recorded as received even when this firmware cannot read it (below), so that
        // tests see what the controller sent.
        if self.record {
            let is_command = matches!(frame.message, Message::Command { .. });
            self.received.push(Received {
                at: now,
                state: self.state,
                watchdog_hold: self.watchdog_tripped,
                applied: self.applied().to_vec(),
                lost_before: if is_command {
                    std::mem::take(&mut self.lost_since_command)
                } else {
                    0
                },
                message: frame.message.clone(),
            });
        }
        // A firmware of another version (`version=N`) reads none of our frames: each
        // is a version mismatch to it, answered as a real board answers one.
        // (Our decoder reads only frames of this crate's version.)
        if self.hello.protocol_version != PROTOCOL_VERSION {
            let err = FrameError::Version {
                received: PROTOCOL_VERSION,
            };
            self.on_frame_error(now, &err);
            return;
        }
        match frame.message {
            Message::Hello(peer) => {
                if self.faults.estop_at_hello() {
                    // The stop button, pressed as the controller starts.
                    self.press_button(now);
                }
                let ours = self.hello;
                self.send(now, Message::Hello(ours));
                if ours.check_peer(&peer).is_ok() {
                    self.stats.handshakes += 1;
                    self.state = FirmwareState::Idle;
                    self.last_heartbeat = now;
                } else {
                    self.stats.handshake_refusals += 1;
                    self.state = FirmwareState::AwaitHello;
                }
            }
            // A stop is taken in any state, before a handshake too (after a reboot the
            // controller's closing Estop comes before its new Hello): torque off, and
            // answered, so the controller knows it arrived.
            Message::Estop => self.on_estop(now),
            _ if !self.handshaken() => self.stats.ignored_messages += 1,
            Message::Reset { .. } if self.button_pressed => {
                // A hardware stop is latched: only releasing the button ends it.
                self.stats.refused_resets += 1;
                self.estop(now);
            }
            Message::Reset { seed } => self.start_episode(now, seed),
            Message::Command { action } => self.on_command(now, &action),
            Message::Heartbeat => self.send(now, Message::Heartbeat),
            _ => self.stats.ignored_messages += 1,
        }
    }

    /// Counts a bad frame; answers a version mismatch with our `Hello`. A frame whose
    /// CRC holds (so its type is the sender's) but whose payload does not parse is taken
    /// as what it meant, failing safe: a `Command` (more than `MAX_ACT` values, a length
    /// that disagrees with its count) as an invalid one, answered with `InvalidCommand`
    /// and the hold (it was only counted: the last command stayed in force until the
    /// watchdog, and in lockstep no step came); an `Estop` with a payload as an `Estop`.
    pub fn on_frame_error(&mut self, now: Duration, err: &FrameError) {
        self.stats.frame_errors += 1;
        match err {
            FrameError::Payload {
                msg_type: MessageType::Command,
                ..
            } => self.on_command(now, &[]),
            FrameError::Payload {
                msg_type: MessageType::Estop,
                ..
            } => self.on_estop(now),
            _ => {}
        }
        if let FrameError::Version { .. } = err {
            let due = self
                .last_version_hello
                .is_none_or(|t| now.saturating_sub(t) >= VERSION_HELLO_PERIOD);
            if due {
                self.last_version_hello = Some(now);
                let ours = self.hello;
                self.send(now, Message::Hello(ours));
            }
        }
    }

    fn on_estop(&mut self, now: Duration) {
        self.stats.estops += 1;
        if !self.handshaken() {
            self.stats.estops_before_handshake += 1;
        }
        self.estop(now);
    }

    fn start_episode(&mut self, now: Duration, seed: u64) {
        self.episode = self.next_episode;
        self.next_episode = self.next_episode.wrapping_add(1);
        self.step = 0;
        self.env.reset(seed, &mut self.obs);
        self.state = FirmwareState::Running;
        self.stats.episodes += 1;
        self.has_command = false;
        // An episode starts from rest: the first command is limited against the hold.
        self.stepped.copy_from_slice(&self.zero);
        // Reach after lost commands counts within an episode.
        self.lost_since_command = 0;
        self.watchdog_tripped = false;
        self.last_command_at = now;
        self.next_tick = now + self.period;
        if self.faults.overcurrent_now(u64::from(self.stats.episodes)) {
            // Injected: the reset motion drew too much current; the firmware's own
            // protection acted, and the episode starts anyway.
            self.send(
                now,
                Message::Fault {
                    code: FaultCode::Overcurrent,
                },
            );
        }
        self.send(
            now,
            Message::EpisodeStart {
                episode: self.episode,
                seed,
            },
        );
        self.send_sensor(now);
    }

    fn send_sensor(&mut self, now: Duration) {
        let mut obs = self.obs.clone();
        self.faults.corrupt_sensor(&mut obs);
        // obs_dim <= MAX_OBS is checked when the robot config loads.
        let step = self.faults.sensor_step(self.step);
        let len = self.faults.sensor_len(self.step, obs.len());
        if let Some(m) = Message::sensor(self.episode, step, &obs[..len]) {
            self.send(now, m);
        }
    }

    fn on_command(&mut self, now: Duration, action: &[f32]) {
        if self.state == FirmwareState::Ended && self.faults.estop_after_end() {
            // The stop button, pressed while the controller's closing hold runs.
            self.press_button(now);
        }
        if self.state != FirmwareState::Running {
            self.stats.ignored_messages += 1;
            return;
        }
        self.stats.commands += 1;
        // The command timeout runs out at its own time, not at the next poll: after a
        // stall the commands queued during it are read before any poll, and the first
        // must find the watchdog tripped (else a command sent before the stall is
        // taken up, with a jump).
        if !self.watchdog_tripped && now >= self.last_command_at + self.timeout {
            self.trip_watchdog(now);
        }
        let valid = action.len() == self.action.len() && action.iter().all(|x| x.is_finite());
        if valid && !self.watchdog_tripped && self.faults.watchdog_now(self.step) {
            // Injected: this command is lost and the command timeout runs out now.
            self.trip_watchdog(now);
            return;
        }
        if valid && self.watchdog_tripped && self.far_from_hold(action) {
            // The watchdog's hold ends only on a command the robot may move to from it
            // in one tick: one sent before the trip (queued while this firmware
            // stalled) continues the motion the hold stopped, and would restart it
            // with a jump. It is answered with the fault again, so the controller
            // ramps from the hold.
            self.stats.far_commands_held += 1;
            self.send(
                now,
                Message::Fault {
                    code: FaultCode::Watchdog,
                },
            );
            return;
        }
        if valid {
            self.robot.action.to_policy_units(action, &mut self.action);
            // The firmware keeps the robot inside its safety envelope whatever it is
            // sent (the controller's gate does too; this is the robot's own line). The
            // slew limiter then works from the clamped command: unclamped, a command
            // of 5 walked its reference out to 5, and a reversal to -1 kept driving at
            // +1 for ticks.
            let safety = &self.robot.safety;
            let mut clamped = false;
            for (((a, lo), hi), tol) in self
                .action
                .iter_mut()
                .zip(&safety.action_min)
                .zip(&safety.action_max)
                .zip(&self.tolerance)
            {
                let inside = a.clamp(*lo, *hi);
                // A value the controller clamped to the edge may come back an ulp
                // beyond it through robot units: clamped, not counted.
                clamped |= (inside - *a).abs() > *tol;
                *a = inside;
            }
            self.stats.envelope_clamped += u64::from(clamped);
            self.has_command = true;
            self.last_command_at = now;
            self.watchdog_tripped = false;
        } else {
            self.stats.invalid_commands += 1;
            self.has_command = false;
            self.send(
                now,
                Message::Fault {
                    code: FaultCode::InvalidCommand,
                },
            );
        }
        if self.pacing == Pacing::Lockstep {
            self.step_env(now);
        }
    }

    /// Whether `action` (robot units) is further than `max_delta_per_tick` from the hold
    /// action (zero in policy units) in some dimension.
    fn far_from_hold(&self, action: &[f32]) -> bool {
        let mut p = [0.0f32; firmware_config::protocol::MAX_ACT];
        let p = &mut p[..action.len()];
        self.robot.action.to_policy_units(action, p);
        let d = &self.robot.safety.max_delta_per_tick;
        beyond_reach(d, &self.tolerance, &self.zero, p)
    }

    /// The firmware applies its hold action, not the newest command: outside an
    /// episode, after a watchdog trip, and until a valid command follows a `Reset`, an
    /// invalid command or a reboot.
    fn holding(&self) -> bool {
        self.state != FirmwareState::Running || self.watchdog_tripped || !self.has_command
    }

    /// The action a control step applies now.
    fn applied(&self) -> &[f32] {
        if self.holding() {
            &self.zero
        } else {
            &self.action
        }
    }

    /// The action the last control step applied (policy units).
    pub fn last_stepped(&self) -> &[f32] {
        &self.stepped
    }

    /// One control step with the newest command (slew limited), or the hold action.
    fn step_env(&mut self, now: Duration) {
        let hold = self.holding();
        if hold {
            self.stepped.copy_from_slice(&self.zero);
        } else {
            let d = &self.robot.safety.max_delta_per_tick;
            let limited = beyond_reach(d, &self.tolerance, &self.stepped, &self.action);
            for ((s, a), d) in self.stepped.iter_mut().zip(&self.action).zip(d) {
                *s = a.clamp(*s - d, *s + d);
            }
            self.stats.slew_limited += u64::from(limited);
        }
        let out = self.env.step(&self.stepped, &mut self.obs);
        self.step += 1;
        if self.record {
            self.stepped_record.push(Stepped {
                episode: self.episode,
                step: self.step,
                applied: self.stepped.clone(),
            });
        }
        self.stats.steps += 1;
        if hold {
            self.stats.hold_steps += 1;
        }
        self.send_sensor(now);
        // The action this step applied, in robot units, as the transition records it.
        let mut applied = [0.0f32; firmware_config::protocol::MAX_ACT];
        let applied = &mut applied[..self.stepped.len()];
        self.robot.action.to_robot_units(&self.stepped, applied);
        let applied = &applied[..self.faults.applied_len(self.step, applied.len())];
        self.send(
            now,
            Message::Reward {
                episode: self.episode,
                step: self.step,
                reward: out.reward,
                done: out.done(),
                truncated: out.truncated,
                success: out.success,
                // Cannot fail: the robot file's action.dim is at most MAX_ACT.
                applied: heapless::Vec::from_slice(applied).unwrap_or_default(),
            },
        );
        if out.done() {
            self.send(
                now,
                Message::EpisodeEnd {
                    episode: self.episode,
                    success: out.success,
                    steps: self.step,
                },
            );
            self.state = FirmwareState::Ended;
            self.last_heartbeat = now;
        } else if self.faults.reboot_now(self.step) {
            self.reboot(now);
        } else if self.faults.estop_now(self.step) {
            self.press_button(now);
        }
    }

    /// No valid command for the command timeout: hold with the zero action at the
    /// control rate until the next valid command within reach of it, and say so.
    fn trip_watchdog(&mut self, now: Duration) {
        self.watchdog_tripped = true;
        self.stats.watchdog_trips += 1;
        self.send(
            now,
            Message::Fault {
                code: FaultCode::Watchdog,
            },
        );
        if self.pacing == Pacing::Lockstep {
            // Holding starts now and runs at the control rate.
            self.next_tick = now;
        }
    }

    /// Stops stepping until the next `Reset` and says so: the answer to an `Estop`, or
    /// the robot's stop button.
    fn estop(&mut self, now: Duration) {
        // Before a handshake nothing runs to stop, and no controller may be served
        // (a press at boot must not count as one).
        if self.handshaken() {
            self.state = FirmwareState::Estopped;
        }
        self.watchdog_tripped = false;
        self.send(
            now,
            Message::Fault {
                code: FaultCode::Estop,
            },
        );
    }

    /// The robot's stop button: stops as an `Estop` does, and stays latched.
    fn press_button(&mut self, now: Duration) {
        self.button_pressed = true;
        self.estop(now);
    }

    /// A simulated firmware reset mid-episode: sequence numbers and clock restart, and
    /// the firmware announces itself again and, knowing no controller, waits for a
    /// `Hello` holding still, as a freshly booted one does. (It used to keep the
    /// handshake and start an episode of its own, so a controller that went on driving
    /// a rebooted robot without a new handshake would have passed the HIL tests.)
    fn reboot(&mut self, now: Duration) {
        self.stats.reboots += 1;
        self.encoder.reset();
        self.boot_at = now;
        self.state = FirmwareState::AwaitHello;
        self.has_command = false;
        self.watchdog_tripped = false;
        // A booted firmware counts its episodes from 0 again.
        self.next_episode = 0;
        self.stepped.copy_from_slice(&self.zero);
        let ours = self.hello;
        if self.faults.reboot_hello_lost() {
            // Numbered and lost on the line: nothing says the firmware restarted.
            let stamp = now.saturating_sub(self.boot_at).as_micros() as u32;
            let _ = self.encoder.frame(stamp, Message::Hello(ours));
        } else {
            self.send(now, Message::Hello(ours));
        }
    }

    /// Runs everything due at `now` (watchdog, control ticks, heartbeats) and returns
    /// when it next needs to be called.
    pub fn poll(&mut self, now: Duration) -> Duration {
        let mut next = now + MAX_WAIT;
        if self.faults.estop_at_boot() {
            // The stop button, pressed before any controller is there to hear of it.
            self.press_button(now);
        }
        if self.state == FirmwareState::Running {
            if !self.watchdog_tripped && now >= self.last_command_at + self.timeout {
                self.trip_watchdog(now);
            }
            let ticking = self.pacing == Pacing::RealTime || self.watchdog_tripped;
            if ticking && now >= self.next_tick {
                // The next tick is set before the step, which may end the episode or
                // reboot the firmware.
                self.next_tick += self.period;
                if self.next_tick <= now {
                    // More than a period behind (a stall): skip the missed ticks, as
                    // a real control loop would.
                    self.stats.overruns += 1;
                    self.next_tick = now + self.period;
                }
                self.step_env(now);
            }
            if self.state == FirmwareState::Running {
                if ticking {
                    next = next.min(self.next_tick);
                }
                if !self.watchdog_tripped {
                    next = next.min(self.last_command_at + self.timeout);
                }
            }
        }
        if self.handshaken() && self.state != FirmwareState::Running {
            if now >= self.last_heartbeat + HEARTBEAT_PERIOD {
                self.last_heartbeat = now;
                self.send(now, Message::Heartbeat);
            }
            next = next.min(self.last_heartbeat + HEARTBEAT_PERIOD);
        }
        next.max(now)
    }
}

/// What a finished [`run`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    pub firmware: FirmwareStats,
    pub faults: FaultStats,
    pub decoder: DecoderStats,
    /// Bytes the port dropped because the controller did not read them within its
    /// stall limit (a controller stopped or killed; on a live link, frames lost that no
    /// injected fault explains).
    pub link_dropped_bytes: u64,
}

/// Drives `fw` over `port` with the wall clock until `stop` is set.
///
/// `rate_scale` speeds the firmware's clock up (2.0: control periods, the watchdog
/// timeout and heartbeats all take half the wall time). Outgoing frames pass through
/// the firmware's fault injector; a stall blocks the whole firmware, like a hung one,
/// for its wall time (the firmware's clock runs on at `rate_scale`).
pub fn run(
    fw: &mut SimFirmware,
    port: &mut dyn Port,
    rate_scale: f64,
    stop: &AtomicBool,
) -> io::Result<RunReport> {
    let rate_scale = if rate_scale.is_finite() && rate_scale > 0.0 {
        rate_scale
    } else {
        1.0
    };
    let start = Instant::now();
    let clock = || start.elapsed().mul_f64(rate_scale);
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 512];
    let mut emits = Vec::new();
    // Flush whatever partial frame the other side may hold from before we started.
    port.write_all(&[0])?;
    while !stop.load(Ordering::Relaxed) {
        let deadline = fw.poll(clock());
        send_outbox(fw, port, &mut emits)?;
        let wait = deadline
            .saturating_sub(clock())
            .div_f64(rate_scale)
            .min(Duration::from_millis(50));
        let n = port.read_timeout(&mut buf, wait)?;
        take_bytes(fw, &mut decoder, &buf[..n], clock());
        send_outbox(fw, port, &mut emits)?;
    }
    // What the controller wrote before the stop is still taken (its last Estop, written
    // just before it exited, could be left unread when the stop came first). Bounded:
    // a peer still writing does not hold the stop.
    for _ in 0..64 {
        let n = port.read_timeout(&mut buf, Duration::ZERO)?;
        if n == 0 {
            break;
        }
        take_bytes(fw, &mut decoder, &buf[..n], clock());
    }
    fw.faults_mut().flush(&mut emits);
    write_emits(port, &mut emits)?;
    Ok(RunReport {
        firmware: fw.stats(),
        faults: fw.faults_mut().stats(),
        decoder: decoder.stats(),
        link_dropped_bytes: port.dropped_bytes(),
    })
}

/// The controller's `bytes`, read at `now`, decoded and handed to the firmware.
fn take_bytes(fw: &mut SimFirmware, decoder: &mut FrameDecoder, bytes: &[u8], now: Duration) {
    decoder.feed(bytes, |r| match r {
        Ok(frame) => fw.on_frame(now, frame),
        Err(e) => fw.on_frame_error(now, &e),
    });
}

fn send_outbox(fw: &mut SimFirmware, port: &mut dyn Port, emits: &mut Vec<Emit>) -> io::Result<()> {
    for frame in fw.take_outbox() {
        fw.faults_mut().process_frame(&frame.to_wire(), emits);
    }
    write_emits(port, emits)
}

fn write_emits(port: &mut dyn Port, emits: &mut Vec<Emit>) -> io::Result<()> {
    for e in emits.drain(..) {
        match e {
            Emit::Bytes(b) => port.write_all(&b)?,
            Emit::Stall(d) => std::thread::sleep(d),
        }
    }
    Ok(())
}

/// A simulated firmware running on its own thread behind a fresh pty. Dropped without
/// [`FirmwareThread::stop`] (a failed test, an error path), it stops too, so that its
/// thread does not serve the pty until the process exits.
pub struct FirmwareThread {
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    /// `None` once joined.
    handle: Option<FirmwareHandle>,
}

/// What a firmware thread recorded ([`FirmwareOptions::record`]).
pub struct Recorded {
    pub received: Vec<Received>,
    pub stepped: Vec<Stepped>,
}

type FirmwareHandle = JoinHandle<Result<(RunReport, Recorded), FirmwareError>>;

impl FirmwareThread {
    /// Opens a pty, starts the firmware on its master side and returns; connect to
    /// [`FirmwareThread::path`].
    pub fn spawn(opts: FirmwareOptions, rate_scale: f64) -> Result<FirmwareThread, FirmwareError> {
        let mut fw = SimFirmware::new(opts)?;
        let pty = crate::link::Pty::open()?;
        let path = pty.path().to_path_buf();
        let mut port = pty.into_port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("sim-firmware".into())
            .spawn(move || {
                let report = run(&mut fw, &mut port, rate_scale, &flag)?;
                let recorded = Recorded {
                    received: std::mem::take(&mut fw.received),
                    stepped: std::mem::take(&mut fw.stepped_record),
                };
                Ok((report, recorded))
            })?;
        Ok(FirmwareThread {
            path,
            stop,
            handle: Some(handle),
        })
    }

    /// The pty slave path the controller opens.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Stops the firmware and returns what it counted.
    pub fn stop(self) -> Result<RunReport, FirmwareError> {
        Ok(self.stop_recorded()?.0)
    }

    /// Stops the firmware; returns what it counted, the frames it received and the
    /// actions its steps applied (empty unless [`FirmwareOptions::record`] was set). The
    /// pty closes with it, which is what a controller sees as the device going away.
    pub fn stop_recorded(mut self) -> Result<(RunReport, Recorded), FirmwareError> {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("joined only here and in drop");
        handle.join().map_err(|_| FirmwareError::Panicked)?
    }
}

impl Drop for FirmwareThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests;
