//! The robot/firmware configuration: one TOML file per robot, read by both the
//! controller and the firmware (real or simulated).
//!
//! ```toml
//! robot = "sim-push"
//! control_hz = 20                 # control loop rate; the firmware steps at this rate
//! command_timeout_ms = 200        # firmware watchdog: hold when commands stop this long
//!
//! [serial]
//! device = "/dev/ttyACM0"
//! baud = 1000000
//!
//! [[joints]]                      # one table per actuated joint or axis
//! name = "pusher_x"
//! position_min = -0.47            # m or rad
//! position_max = 0.47
//! velocity_max = 0.5              # m/s or rad/s
//! torque_max = 20.0               # N or N·m
//! position_observation = "pusher_x"  # optional: the controller stops the run when the
//!                                    # observation leaves [position_min, position_max]
//! velocity_observation = "pusher_vx" # optional: likewise beyond ±velocity_max
//! # position_observation_scale = 0.318  # optional: the observation is the position
//! #                                     # times this (arm-reach sends q/π); default 1
//!
//! [observation]
//! dim = 10
//! names = ["pusher_x", "pusher_y", ...]
//!
//! [action]                        # robot units = offset + scale * policy action
//! dim = 2
//! scale = [1.0, 1.0]
//! offset = [0.0, 0.0]
//! names = ["vx_command", "vy_command"] # optional: as the training data names them; a
//!                                      # bundle naming them in another order is refused
//!
//! [safety]                        # the controller's envelope, in policy units
//! action_min = [-1.0, -1.0]
//! action_max = [1.0, 1.0]
//! max_delta_per_tick = [2.0, 2.0]
//! stale_sensor_ms = 150
//! gravity_safe_torque_off = true
//! hold_ticks_before_torque_off = 20
//! ```
//!
//! # Units and who does what
//!
//! The policy acts in `[-1, 1]`. The controller clamps its action to
//! `[safety.action_min, safety.action_max]`, limits the change per control tick to
//! `safety.max_delta_per_tick`, and sends `action.offset + action.scale * a` (robot
//! units) in a `Command`. The firmware applies it, and holds position when no valid
//! command has arrived for `command_timeout_ms`. A sensor frame older than
//! `safety.stale_sensor_ms` is a `stale_sensor` fault: the controller's safe stop holds
//! (sends the hold action), the episode ends, and the run stops unless
//! `controller run --max-faults` allows more faults. After
//! `hold_ticks_before_torque_off` ticks of holding the safe stop may switch the torque
//! off, but only if `gravity_safe_torque_off` says nothing falls when it does.
//!
//! # What validation asks beyond well-formed values
//!
//! - `control_hz` at most [`MAX_CONTROL_HZ`] (the controller's shortest period);
//! - `command_timeout_ms` and `safety.stale_sensor_ms` at least [`MIN_TIMEOUT_PERIODS`]
//!   control periods: commands and sensor frames come once per period, give or take
//!   jitter, so a limit of one period would trip on a healthy link;
//! - `serial.baud` fast enough that every step's `Sensor` and `Reward` frames take at
//!   most half of a control period (the other half carries the frames of rarer steps:
//!   an `EpisodeEnd`, a `Fault`) on the line ([`crate::protocol::step_wire_bytes`], 10
//!   bits per byte). The controller's `Command` the other way is always shorter: the
//!   `Reward` carries as many action values as the `Command`, and more;
//! - `command_timeout_ms` and `safety.stale_sensor_ms` at most [`MAX_TIMEOUT_MS`];
//! - the envelope `[safety.action_min, safety.action_max]` lies within the policy's
//!   `[-1, 1]` and contains 0, the hold action the firmware falls back to on its own;
//! - `action.scale` normal (the firmware divides by it) and the envelope's bounds finite
//!   in robot units;
//! - a safe stop that ends within [`MAX_SAFE_STOP_MS`]: `safety.hold_ticks_before_torque_off`
//!   at least 1 and that many ticks at most that long, and `safety.max_delta_per_tick`
//!   large enough to ramp from the envelope's widest bound to the hold action within it.
//!
//! # Errors
//!
//! [`RobotConfig::load`] parses and then validates; every error names the file, the
//! line and the field (`robot.toml:31: safety.max_delta_per_tick: expected 2 values
//! (action.dim), found 3`). The line comes from the TOML parser's spans: parse errors
//! carry a byte span, and the validator looks the offending field up in a span-keeping
//! parse of the same text.

use crate::protocol::{Hello, MAX_ACT, MAX_OBS, step_wire_bytes};

/// Round-off allowed where two sides compute one action in policy units their own way
/// (the controller's gate from its last command, a firmware's slew limit from the step
/// it applied): both checks allow it beyond a limit, and the controller takes an
/// applied action within it (and the robot units' round trips,
/// [`ActionConfig::same_action_tolerance`]) for its command.
pub const ACTION_ROUND_OFF: f32 = 1e-5;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};

/// A robot: what the controller and the firmware agree on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotConfig {
    /// Robot name, for logs and dataset metadata.
    pub robot: String,
    /// Control rate in Hz (1..=[`MAX_CONTROL_HZ`]; the `Hello` message carries it as a
    /// u16).
    pub control_hz: u32,
    /// The firmware's watchdog: with no valid command for this long it holds position
    /// and reports `Fault { Watchdog }`. At least [`MIN_TIMEOUT_PERIODS`] control periods.
    pub command_timeout_ms: u32,
    pub serial: SerialConfig,
    pub joints: Vec<JointConfig>,
    pub observation: ObservationConfig,
    pub action: ActionConfig,
    pub safety: SafetyConfig,
}

/// The serial link to the firmware.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Device path, e.g. `/dev/ttyACM0`: what `controller run` opens when not given
    /// `--port` (the simulated firmware prints its pty's path, to pass as `--port`).
    pub device: String,
    pub baud: u32,
}

/// One actuated joint or axis and its limits (SI units: m or rad, and per second).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JointConfig {
    pub name: String,
    pub position_min: f32,
    pub position_max: f32,
    pub velocity_max: f32,
    /// Torque (N·m) for revolute joints, force (N) for prismatic ones.
    pub torque_max: f32,
    /// The observation value (by name) that carries this joint's position: the
    /// controller then stops the run with a safe stop (fault `joint_limit`) on a sensor
    /// frame where it is outside `[position_min, position_max]`. Without it, the limit
    /// is the firmware's business only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_observation: Option<String>,
    /// As `position_observation`, for the velocity against `velocity_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity_observation: Option<String>,
    /// What the position observation holds per unit of position, for a firmware that
    /// sends it scaled (arm-reach's `q1` is the angle / π: 1/π). The limits stay in SI
    /// units; the check compares the observation with them times this. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_observation_scale: Option<f32>,
    /// As `position_observation_scale`, for the velocity observation (arm-reach's `qd1`
    /// is the speed / 10: 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity_observation_scale: Option<f32>,
}

/// One limit the controller checks on every sensor frame ([`RobotConfig::joint_checks`]).
#[derive(Clone, Debug, PartialEq)]
pub struct JointCheck {
    /// Index into the observation vector.
    pub index: usize,
    pub min: f32,
    pub max: f32,
    /// "joint `shoulder` position (observation `q1`)", for the fault's detail.
    pub what: String,
}

/// What a `Sensor` frame carries, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationConfig {
    pub dim: usize,
    pub names: Vec<String>,
}

impl ObservationConfig {
    /// `names` (the observation names of `whose`: "the bundle", "the dataset") against
    /// this robot's: `None` when they agree, else a one-line warning with the first
    /// difference. Names may be spelled differently for the same values (a LeRobot
    /// recording's `joint.pos`), so callers warn rather than refuse; but the values must
    /// come in the same order. Sizes are checked elsewhere.
    pub fn names_differ(&self, names: &[String], whose: &str) -> Option<String> {
        names_differ(&self.names, names, whose, &OBSERVATIONS)
    }

    /// `names` (of `whose`) holding one of this robot's names at another position: the
    /// same channels in another order, which a difference in spelling cannot explain.
    /// An error message, naming the channel and both positions; `None` otherwise
    /// (different spellings are [`ObservationConfig::names_differ`]'s warning).
    pub fn names_reordered(&self, names: &[String], whose: &str) -> Option<String> {
        names_reordered(&self.names, names, whose, &OBSERVATIONS)
    }
}

/// Which channels a list of names names, for the messages of [`names_differ`] and
/// [`names_reordered`]: the noun, what a difference in order does, and what must hold.
struct Channels {
    noun: &'static str,
    harm: &'static str,
    rule: &'static str,
}

const OBSERVATIONS: Channels = Channels {
    noun: "observation",
    harm: "the policy would act on its inputs in another order",
    rule: "the robot's Sensor frame must carry the values the policy learns from, in the same \
           order",
};

const ACTIONS: Channels = Channels {
    noun: "action",
    harm: "the policy's commands would drive other joints than it learned",
    rule: "the firmware must take the Command's values in the order the policy learned them",
};

/// `theirs` (names of `whose`) against the robot file's `ours`: the first difference,
/// as a warning (see [`ObservationConfig::names_differ`]). An empty list (names not
/// recorded) agrees with anything.
fn names_differ(ours: &[String], theirs: &[String], whose: &str, c: &Channels) -> Option<String> {
    let first = first_name_difference(ours, theirs)?;
    Some(format!(
        "{} names differ from the robot file's, first at [{first}] (`{}` in {whose}, `{}` in \
         the robot file): {}",
        c.noun, theirs[first], ours[first], c.rule
    ))
}

/// One of the robot file's names `ours` at another position in `theirs` (of `whose`),
/// as an error (see [`ObservationConfig::names_reordered`]).
fn names_reordered(
    ours: &[String],
    theirs: &[String],
    whose: &str,
    c: &Channels,
) -> Option<String> {
    let (at, here) = first_reordered_name(ours, theirs)?;
    Some(format!(
        "{} `{}` is at [{at}] in {whose} and at [{here}] in the robot file: {}",
        c.noun, theirs[at], c.harm
    ))
}

/// Two recordings' action names (`ours`, of `who`, and `theirs`, of `whose`) holding
/// one action at different positions: the same actions in another order, which their
/// values, recorded in that order, would mix up. An error message; `None` otherwise.
/// Other spellings are not compared (recorders name the same channels otherwise: a
/// joint, `joint.pos`, `action.0`). Compare only names both recordings were given: this
/// controller named actions after the robot file's joints before 2026-12-07, a guess
/// that says nothing of their order.
pub fn actions_reordered(
    ours: &[String],
    who: &str,
    theirs: &[String],
    whose: &str,
) -> Option<String> {
    let (at, here) = first_reordered_name(ours, theirs)?;
    Some(format!(
        "action `{}` is at [{at}] in {whose} and at [{here}] in {who}: the same actions in \
         another order, whose values would be mixed up (the robot file's `[action] names` \
         were reordered, or one was recorded in another order)",
        theirs[at]
    ))
}

/// The first name of `b` that `a` holds at another position, as (its index in `b`, its
/// index in `a`): the same channels in another order, which no difference in spelling
/// explains. `None` otherwise (an empty list names nothing).
pub fn first_reordered_name(a: &[String], b: &[String]) -> Option<(usize, usize)> {
    b.iter().enumerate().find_map(|(at, name)| {
        // (A name both hold at `at` is in place, even where `a` repeats it earlier.)
        let here = a.iter().position(|n| n == name)?;
        (here != at && a.get(at) != Some(name)).then_some((at, here))
    })
}

/// Where two lists of channel names (a robot file's, a bundle's, a dataset's, a run's)
/// first disagree; `None` when they agree on their common length. Sizes are checked
/// elsewhere, and an empty list (names not recorded) agrees with anything.
pub fn first_name_difference(a: &[String], b: &[String]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// How policy actions map to robot units: `robot = offset + scale * policy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    pub dim: usize,
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    /// What each value of a `Command` drives, in order (optional; the names the
    /// training data gives its actions, e.g. a LeRobot recording's `shoulder.pos`). With
    /// them, `controller run` refuses a bundle that names the same actions in another
    /// order (its commands would drive other joints) and warns on other spellings.
    /// Not part of the robot id ([`RobotConfig::identity`]): naming the actions changes
    /// no firmware.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

impl ActionConfig {
    /// `names` (the action names of `whose`) against this robot's: the first
    /// difference as a warning, `None` when they agree or either names none.
    pub fn names_differ(&self, names: &[String], whose: &str) -> Option<String> {
        names_differ(&self.names, names, whose, &ACTIONS)
    }

    /// `names` (of `whose`) holding one of this robot's action names at another
    /// position: an error message; `None` otherwise.
    pub fn names_reordered(&self, names: &[String], whose: &str) -> Option<String> {
        names_reordered(&self.names, names, whose, &ACTIONS)
    }

    /// The action mapping (`scale`, `offset`) the data of `whose` was recorded with,
    /// against this robot file's: the first action they map otherwise, as an error
    /// message; `None` when they agree or `whose` records none (empty lists: data from
    /// before 2026-12-07, another recorder, a simulated task). Sizes are checked
    /// elsewhere. Compared exactly: an f32 goes through JSON and TOML unchanged, so any
    /// difference is an edit of the robot file.
    pub fn mapping_differs(&self, scale: &[f32], offset: &[f32], whose: &str) -> Option<String> {
        let recorded = scale.iter().zip(offset);
        let i = recorded
            .zip(self.scale.iter().zip(&self.offset))
            .position(|((s, o), (ours_s, ours_o))| s != ours_s || o != ours_o)?;
        let name = match self.names.get(i) {
            Some(n) => format!(" `{n}`"),
            None => String::new(),
        };
        Some(format!(
            "action [{i}]{name} was recorded as {} + {} × a in robot units in {whose}, and \
             the robot file maps it to {} + {} × a (action.offset, action.scale): the \
             policy's commands would move the robot otherwise than in the data it learned \
             from (put the recorded mapping back in the robot file, `scale = {scale:?}` and \
             `offset = {offset:?}`, or train on data recorded with this one)",
            offset[i], scale[i], self.offset[i], self.scale[i]
        ))
    }

    /// `out[i] = offset[i] + scale[i] * policy[i]`.
    pub fn to_robot_units(&self, policy: &[f32], out: &mut [f32]) {
        for (i, (o, &a)) in out.iter_mut().zip(policy).enumerate() {
            *o = self.offset[i] + self.scale[i] * a;
        }
    }

    /// The most dimension `i`'s policy value can change on its way through robot units
    /// and back (f32 rounding of `offset + scale · a` for |a| ≤ 1, then of the
    /// inverse), in policy units. A firmware that compares commands in policy units
    /// allows this much beyond its limits: `offset = 1000, scale = 1` rounds to 6e-5 of
    /// a policy unit, more than a fixed 1e-5 allowance.
    pub fn round_trip_error(&self, i: usize) -> f32 {
        let top = self.offset[i].abs() + self.scale[i].abs();
        2.0 * (top.next_up() - top) / self.scale[i].abs()
    }

    /// How far apart two policy values of action `i` may be and still be one action:
    /// [`ACTION_ROUND_OFF`] and two round trips through robot units (a command to the
    /// firmware, the action it applied back).
    pub fn same_action_tolerance(&self, i: usize) -> f32 {
        ACTION_ROUND_OFF + 2.0 * self.round_trip_error(i)
    }

    /// The inverse of [`ActionConfig::to_robot_units`] (`scale` is never zero).
    pub fn to_policy_units(&self, robot: &[f32], out: &mut [f32]) {
        for (i, (o, &u)) in out.iter_mut().zip(robot).enumerate() {
            *o = (u - self.offset[i]) / self.scale[i];
        }
    }
}

/// The controller's safety envelope, in policy units (per action dimension).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    pub action_min: Vec<f32>,
    pub action_max: Vec<f32>,
    /// Largest change of each action component from one tick to the next.
    pub max_delta_per_tick: Vec<f32>,
    /// A sensor frame older than this is a `stale_sensor` fault: safe stop, the episode
    /// ends, and the run stops unless `controller run --max-faults` allows more.
    pub stale_sensor_ms: u32,
    /// Whether switching the torque off is safe (nothing falls or drifts under gravity).
    pub gravity_safe_torque_off: bool,
    /// Ticks of holding before the torque may go off (if it is safe at all). The
    /// controller keeps holding past them until its ramp at `max_delta_per_tick` has
    /// reached the hold action: the torque never goes off mid-ramp.
    pub hold_ticks_before_torque_off: u32,
}

/// The highest control rate a robot file may ask for: the controller's shortest control
/// period is 100 µs (`controller::robot_loop::MIN_PERIOD` is derived from this).
pub const MAX_CONTROL_HZ: u32 = 10_000;

/// The command watchdog (`command_timeout_ms`) and the stale-sensor limit
/// (`safety.stale_sensor_ms`) span at least this many control periods.
pub const MIN_TIMEOUT_PERIODS: f64 = 2.0;

/// The longest command watchdog and stale-sensor limit (ms), a minute: `u32::MAX` ms
/// (seven weeks) passed and turned the watchdog off. Tests of slow simulated robots
/// use up to 40 s.
pub const MAX_TIMEOUT_MS: u32 = 60_000;

/// The longest a safe stop's hold may take (ms): `safety.hold_ticks_before_torque_off`
/// ticks, and the ramp across the envelope at `safety.max_delta_per_tick`, each at most
/// this, as long as the longest watchdog.
pub const MAX_SAFE_STOP_MS: u32 = MAX_TIMEOUT_MS;

/// The built-in example robots, one per simulated task: `(name, TOML text)`. The
/// files live in `firmware-config/robots/`.
pub const EXAMPLES: [(&str, &str); 3] = [
    ("arm-reach", include_str!("../robots/arm-reach.toml")),
    ("push", include_str!("../robots/push.toml")),
    ("maze", include_str!("../robots/maze.toml")),
];

/// Why a robot config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not valid TOML.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// Valid TOML, but a field is missing, unknown, of the wrong type or invalid.
    #[error("{file}:{line}: {field}: {message}")]
    Field {
        file: String,
        line: usize,
        /// Dotted path, e.g. `joints[1].position_max` or `safety.action_min`.
        field: String,
        message: String,
    },
}

/// The largest robot file read (the examples are about 2 KiB).
pub const MAX_ROBOT_FILE_BYTES: u64 = 1 << 20;

impl RobotConfig {
    /// Reads, parses and validates a robot file: a regular file of at most
    /// [`MAX_ROBOT_FILE_BYTES`]. A device named by mistake (`--robot /dev/ttyACM0`, the
    /// port and the file swapped) blocked the read for good, a FIFO without a writer
    /// too, and `/dev/zero` filled the memory.
    pub fn load(path: impl AsRef<Path>) -> Result<RobotConfig, ConfigError> {
        use std::io::Read;
        let path = path.as_ref();
        let read_error = |error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        };
        let meta = std::fs::metadata(path).map_err(read_error)?;
        if !meta.is_file() {
            return Err(read_error(std::io::Error::other(
                "not a regular file (a device, a FIFO or a directory?)",
            )));
        }
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_ROBOT_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(read_error)?;
        if text.len() as u64 > MAX_ROBOT_FILE_BYTES {
            return Err(read_error(std::io::Error::other(format!(
                "more than the {MAX_ROBOT_FILE_BYTES} bytes a robot file may have"
            ))));
        }
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<RobotConfig, ConfigError> {
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
                return Err(ConfigError::Syntax {
                    file: file.to_string(),
                    line,
                    column,
                    message: e.message().trim_end().to_string(),
                });
            }
        };
        let spans = SpanIndex::new(doc.get_ref());
        let field_error = |field: String, offset: usize, message: String| {
            let (line, _) = line_col(text, offset);
            ConfigError::Field {
                file: file.to_string(),
                line,
                field,
                message,
            }
        };
        let config: RobotConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim_end().to_string();
            // An empty span is the root table's (a missing top-level field): no key of
            // the file is meant, not even one that starts at offset 0.
            let mut field = match e.span() {
                Some(s) if !s.is_empty() => spans.path_at(offset).unwrap_or_default(),
                _ => String::new(),
            };
            // "missing field `x`" points at the table that lacks it: name the field.
            if let Some(name) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                field = join(&field, name);
            }
            if field.is_empty() {
                field = "(top level)".to_string();
            }
            field_error(field, offset, message)
        })?;
        config.validate().map_err(|Invalid { field, message }| {
            let offset = spans.offset_of(&field);
            field_error(field, offset, message)
        })?;
        Ok(config)
    }

    /// The checks [`RobotConfig::load`] makes after parsing, for a config built or
    /// changed in code (a test's, a simulated firmware's): "FIELD: what is wrong".
    pub fn check(&self) -> Result<(), String> {
        self.validate()
            .map_err(|Invalid { field, message }| format!("{field}: {message}"))
    }

    /// A built-in example robot (see [`EXAMPLES`]); `None` for an unknown name.
    pub fn example(name: &str) -> Option<RobotConfig> {
        let (n, text) = EXAMPLES.iter().find(|(n, _)| *n == name)?;
        // The built-in files are tested to load; an error here is a bug in them.
        Self::from_toml_str(text, &format!("firmware-config/robots/{n}.toml")).ok()
    }

    /// One control period.
    pub fn control_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.control_hz as f64)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms as u64)
    }

    pub fn stale_sensor(&self) -> Duration {
        Duration::from_millis(self.safety.stale_sensor_ms as u64)
    }

    /// The text whose CRC-32 is [`RobotConfig::identity`]: one line for the robot's
    /// name, then one per observation name and per joint name, in order. Each name is
    /// written as `length:name`, so that no choice of names makes two different lists
    /// read the same. Limits, scales, rates and the serial settings are not part of it:
    /// they are settings of the robot (the rate and sizes have their own `Hello`
    /// fields, the settings both sides act on [`RobotConfig::settings_text`]), while the
    /// names say what the values on the wire mean.
    pub fn identity_text(&self) -> String {
        let mut text = String::new();
        let mut line = |key: &str, name: &str| {
            text.push_str(&format!("{key} {}:{name}\n", name.len()));
        };
        line("robot", &self.robot);
        for name in &self.observation.names {
            line("observation", name);
        }
        for joint in &self.joints {
            line("joint", &joint.name);
        }
        text
    }

    /// The joint limits the controller checks on every sensor frame: those of joints
    /// that name their position or velocity observation (a velocity within
    /// `±velocity_max`). Valid only for a validated config (the names exist).
    pub fn joint_checks(&self) -> Vec<JointCheck> {
        let mut checks = vec![];
        for j in &self.joints {
            for (what, named, scale, min, max) in [
                (
                    "position",
                    &j.position_observation,
                    j.position_observation_scale,
                    j.position_min,
                    j.position_max,
                ),
                (
                    "velocity",
                    &j.velocity_observation,
                    j.velocity_observation_scale,
                    -j.velocity_max,
                    j.velocity_max,
                ),
            ] {
                let Some(n) = named else { continue };
                let Some(index) = self.observation.names.iter().position(|m| m == n) else {
                    continue;
                };
                let scaled = match scale {
                    Some(k) => format!(" = {what} × {k}"),
                    None => String::new(),
                };
                let k = scale.unwrap_or(1.0);
                checks.push(JointCheck {
                    index,
                    min: min * k,
                    max: max * k,
                    what: format!("joint `{}` {what} (observation `{n}`{scaled})", j.name),
                });
            }
        }
        checks
    }

    /// The text whose CRC-32 is [`RobotConfig::settings_hash`]: the settings both the
    /// controller and the firmware act on, one line each, in the file's own keys:
    /// `action.scale` and `action.offset` (the controller encodes its commands with
    /// them, the firmware decodes them and holds at the offset), the envelope
    /// `safety.action_min`/`action_max` and `safety.max_delta_per_tick` (both sides
    /// clamp and slew-limit), `safety.gravity_safe_torque_off` (the controller's safe
    /// stop asks for the torque off, the firmware's `Estop` switches it off) and each
    /// joint's `position_min`, `position_max` and `velocity_max` (the controller checks
    /// the named observations against them, a firmware its joints). Left out, as each
    /// side's own business: `command_timeout_ms` and each joint's `torque_max` (the
    /// firmware's alone; the simulated firmware's `--command-timeout-ms` overrides the
    /// first), `safety.stale_sensor_ms`, `safety.hold_ticks_before_torque_off`, the
    /// observation scales and the action names (the controller's alone), and `[serial]`
    /// (each machine names its own port). Numbers are written in the shortest form that
    /// reads back as the same f32 (`0.47`, `2`; 0 and −0 alike), so the same values in
    /// two files written differently (`2.0`, `2`) give the same text.
    pub fn settings_text(&self) -> String {
        fn values(xs: &[f32]) -> String {
            xs.iter()
                .map(|x| format!(" {}", x + 0.0))
                .collect::<String>()
        }
        let (a, s) = (&self.action, &self.safety);
        let mut text = format!(
            "action.scale{}\naction.offset{}\nsafety.action_min{}\nsafety.action_max{}\n\
             safety.max_delta_per_tick{}\nsafety.gravity_safe_torque_off {}\n",
            values(&a.scale),
            values(&a.offset),
            values(&s.action_min),
            values(&s.action_max),
            values(&s.max_delta_per_tick),
            s.gravity_safe_torque_off
        );
        for j in &self.joints {
            text.push_str(&format!(
                "joint {}:{} position_min{} position_max{} velocity_max{}\n",
                j.name.len(),
                j.name,
                values(&[j.position_min]),
                values(&[j.position_max]),
                values(&[j.velocity_max])
            ));
        }
        text
    }

    /// The settings hash this robot file announces in the handshake
    /// (`Hello::settings_hash`): CRC-32 of [`RobotConfig::settings_text`]. A controller
    /// whose robot file was edited (an offset, an envelope) after the firmware was
    /// configured from it is refused at the handshake: its commands would mean other
    /// positions to the firmware, and the two sides would hold at other poses.
    pub fn settings_hash(&self) -> u32 {
        crate::protocol::crc32(self.settings_text().as_bytes())
    }

    /// The robot id this robot file announces in the handshake (`Hello::robot_id`):
    /// CRC-32 of [`RobotConfig::identity_text`]. The controller and the firmware
    /// configured from the same robot file agree on it; a robot file of another robot
    /// with the same sizes and rate (arm-reach's and push's are both 10/2 at 20 Hz) does
    /// not.
    pub fn identity(&self) -> u32 {
        crate::protocol::crc32(self.identity_text().as_bytes())
    }

    /// This robot's handshake message (validated configs always fit its fields).
    pub fn hello(&self) -> Hello {
        Hello::new(
            self.identity(),
            self.settings_hash(),
            self.observation.dim as u8,
            self.action.dim as u8,
            self.control_hz as u16,
        )
    }

    /// Semantic checks after parsing: dimensions agree, ranges are ordered, rates and
    /// limits are positive, every number is finite.
    fn validate(&self) -> Result<(), Invalid> {
        nonempty("robot", &self.robot)?;
        check(
            (1..=MAX_CONTROL_HZ).contains(&self.control_hz),
            "control_hz",
            || {
                format!(
                    "must be between 1 and {MAX_CONTROL_HZ} Hz (the controller's shortest control period is 100 µs), found {}",
                    self.control_hz
                )
            },
        )?;
        // Commands come once per period, give or take the loop's jitter: a watchdog of
        // one period would trip on any late one.
        self.spans_periods("command_timeout_ms", self.command_timeout_ms)?;
        nonempty("serial.device", &self.serial.device)?;
        check(self.serial.baud > 0, "serial.baud", || {
            "must be positive, found 0".into()
        })?;

        check(!self.joints.is_empty(), "joints", || {
            "at least one [[joints]] table is required".into()
        })?;
        let mut names = HashSet::new();
        for (i, j) in self.joints.iter().enumerate() {
            let at = |f: &str| format!("joints[{i}].{f}");
            nonempty(&at("name"), &j.name)?;
            check(names.insert(j.name.as_str()), &at("name"), || {
                format!("duplicate joint name '{}'", j.name)
            })?;
            finite(&at("position_min"), j.position_min)?;
            finite(&at("position_max"), j.position_max)?;
            check(j.position_min < j.position_max, &at("position_max"), || {
                format!(
                    "must be greater than position_min ({}), found {}",
                    j.position_min, j.position_max
                )
            })?;
            positive(&at("velocity_max"), j.velocity_max)?;
            positive(&at("torque_max"), j.torque_max)?;
            for (key, scale, observed, observation) in [
                (
                    "position_observation_scale",
                    j.position_observation_scale,
                    j.position_observation.is_some(),
                    "position_observation",
                ),
                (
                    "velocity_observation_scale",
                    j.velocity_observation_scale,
                    j.velocity_observation.is_some(),
                    "velocity_observation",
                ),
            ] {
                if let Some(k) = scale {
                    // A scale without its observation checks nothing: the observation
                    // was forgotten, and the joint would go unchecked.
                    check(observed, &at(key), || {
                        format!(
                            "is given, but {observation} is not: name the observation it scales"
                        )
                    })?;
                    check(k.is_normal() && k > 0.0, &at(key), || {
                        format!("must be a positive number, found {k}")
                    })?;
                    // The limits times the scale must stay finite (the check compares
                    // observations with them).
                    let (lo, hi, v) = (j.position_min * k, j.position_max * k, j.velocity_max * k);
                    check(
                        lo.is_finite() && hi.is_finite() && v.is_finite(),
                        &at(key),
                        || format!("{k:e} takes the joint's limits beyond f32"),
                    )?;
                }
            }
        }

        let obs = &self.observation;
        check((1..=MAX_OBS).contains(&obs.dim), "observation.dim", || {
            format!(
                "must be between 1 and {MAX_OBS} (the protocol's MAX_OBS), found {}",
                obs.dim
            )
        })?;
        dims(
            "observation.names",
            obs.names.len(),
            obs.dim,
            "observation.dim",
        )?;
        let names = distinct_names("observation", &obs.names)?;
        // The observation values that joints name for their limits: they must exist, and
        // each carries one joint's position or velocity.
        let mut claimed: HashSet<&str> = HashSet::new();
        for (i, j) in self.joints.iter().enumerate() {
            for (key, named) in [
                ("position_observation", &j.position_observation),
                ("velocity_observation", &j.velocity_observation),
            ] {
                let Some(n) = named else { continue };
                let field = format!("joints[{i}].{key}");
                check(names.contains(n.as_str()), &field, || {
                    format!("'{n}' is not one of observation.names")
                })?;
                check(claimed.insert(n.as_str()), &field, || {
                    format!("'{n}' is named by another joint limit already")
                })?;
            }
        }

        let act = &self.action;
        let d = act.dim;
        check((1..=MAX_ACT).contains(&d), "action.dim", || {
            format!("must be between 1 and {MAX_ACT} (the protocol's MAX_ACT), found {d}")
        })?;
        dims("action.scale", act.scale.len(), d, "action.dim")?;
        dims("action.offset", act.offset.len(), d, "action.dim")?;
        if !act.names.is_empty() {
            dims("action.names", act.names.len(), d, "action.dim")?;
            distinct_names("action", &act.names)?;
        }
        for (i, &s) in act.scale.iter().enumerate() {
            let field = format!("action.scale[{i}]");
            finite(&field, s)?;
            check(s != 0.0, &field, || "must not be zero".into())?;
            // Commands are divided by it on the firmware's side: a subnormal scale
            // turns finite commands into infinities.
            check(s.is_normal(), &field, || {
                format!("is too small to divide by (a subnormal f32), found {s:e}")
            })?;
        }
        for (i, &o) in act.offset.iter().enumerate() {
            finite(&format!("action.offset[{i}]"), o)?;
        }

        let s = &self.safety;
        let period_ms = 1000.0 / self.control_hz as f64;
        dims("safety.action_min", s.action_min.len(), d, "action.dim")?;
        dims("safety.action_max", s.action_max.len(), d, "action.dim")?;
        dims(
            "safety.max_delta_per_tick",
            s.max_delta_per_tick.len(),
            d,
            "action.dim",
        )?;
        for i in 0..d {
            finite(&format!("safety.action_min[{i}]"), s.action_min[i])?;
            finite(&format!("safety.action_max[{i}]"), s.action_max[i])?;
            check(
                s.action_min[i] < s.action_max[i],
                &format!("safety.action_max[{i}]"),
                || {
                    format!(
                        "must be greater than safety.action_min[{i}] ({}), found {}",
                        s.action_min[i], s.action_max[i]
                    )
                },
            )?;
            // Inside the policy's range: actions outside it (a teleop device's, an
            // edited candidate's) would be sent and recorded, and the trainer refuses
            // datasets holding them.
            for (bound, value) in [
                ("action_min", s.action_min[i]),
                ("action_max", s.action_max[i]),
            ] {
                check(value.abs() <= 1.0, &format!("safety.{bound}[{i}]"), || {
                    format!("must be within the policy's range [-1, 1], found {value}")
                })?;
            }
            // The firmware falls back to the zero action (a Reset, a watchdog, a safe
            // stop): the envelope must allow it, or the controller's hold and the
            // firmware's would differ.
            for (bound, value, ok, side) in [
                (
                    "action_min",
                    s.action_min[i],
                    s.action_min[i] <= 0.0,
                    "most",
                ),
                (
                    "action_max",
                    s.action_max[i],
                    s.action_max[i] >= 0.0,
                    "least",
                ),
            ] {
                check(ok, &format!("safety.{bound}[{i}]"), || {
                    format!(
                        "must be at {side} 0 (the hold action, which the firmware falls back to, must be inside the envelope), found {value}"
                    )
                })?;
            }
            let field = format!("safety.max_delta_per_tick[{i}]");
            positive(&field, s.max_delta_per_tick[i])?;
            // The safe stop ramps from wherever the action is to the hold action at this
            // rate before anything else (idle, exit, torque off): the whole envelope
            // must be crossed within the longest stop.
            let widest = s.action_min[i].abs().max(s.action_max[i].abs());
            let ramp_ticks = f64::from(widest) / f64::from(s.max_delta_per_tick[i]);
            let ramp_ms = ramp_ticks * period_ms;
            check(ramp_ms <= MAX_SAFE_STOP_MS as f64, &field, || {
                format!(
                    "{} ramps from the envelope's bound {widest} to the hold action in \
                     {ramp_ticks:.0} ticks ({ramp_ms:.0} ms at {} Hz); a safe stop may take at \
                     most {MAX_SAFE_STOP_MS} ms",
                    s.max_delta_per_tick[i], self.control_hz
                )
            })?;
            // The envelope's corners in robot units are finite, and so is the way back.
            for bound in [s.action_min[i], s.action_max[i]] {
                let robot = act.offset[i] + act.scale[i] * bound;
                check(robot.is_finite(), &format!("action.scale[{i}]"), || {
                    format!(
                        "with action.offset[{i}] = {:e} it maps safety bound {bound:e} to {robot} in robot units",
                        act.offset[i]
                    )
                })?;
            }
            // Each action must reach the robot as a command of its own: an offset that
            // dwarfs the scale (1e8 against 1) rounds every action in [-1, 1] to one f32
            // command, and the firmware's allowance for that rounding (the round trip's
            // error, added to its limits) grows past the envelope's steps, or to NaN
            // where |offset| + |scale| overflows.
            let error = act.round_trip_error(i);
            let allowed = s.max_delta_per_tick[i] / 10.0;
            check(
                error.is_finite() && error <= allowed,
                &format!("action.offset[{i}]"),
                || {
                    format!(
                        "{:e} against action.scale[{i}] = {:e} leaves commands a rounding of \
                         {error:e} policy units, more than a tenth of \
                         safety.max_delta_per_tick[{i}] ({allowed:e}): every action would \
                         round to a few commands",
                        act.offset[i], act.scale[i]
                    )
                },
            )?;
        }
        // The newest frame can be almost a period old at a tick before the next one is
        // due: a limit of one period would fault on a healthy link.
        self.spans_periods("safety.stale_sensor_ms", s.stale_sensor_ms)?;
        // Every safe stop (a fault, the operator's Ctrl-C, the exit) holds this long
        // before it goes idle or ends the run: a typo of millions held it for a day.
        let hold_ms = s.hold_ticks_before_torque_off as f64 * period_ms;
        check(
            s.hold_ticks_before_torque_off >= 1 && hold_ms <= MAX_SAFE_STOP_MS as f64,
            "safety.hold_ticks_before_torque_off",
            || {
                format!(
                    "must be at least 1 tick and at most {MAX_SAFE_STOP_MS} ms of ticks ({} at \
                     {} Hz), found {}",
                    (MAX_SAFE_STOP_MS as f64 / period_ms).floor(),
                    self.control_hz,
                    s.hold_ticks_before_torque_off
                )
            },
        )?;
        self.check_baud(&self.serial.device, self.serial.baud)
            .map_err(|message| Invalid {
                field: "serial.baud".into(),
                message,
            })?;
        Ok(())
    }

    /// Whether `ms` would do as this robot's `command_timeout_ms` (the bounds the robot
    /// file's value is held to): for an override such as the simulated firmware's
    /// `--command-timeout-ms`.
    pub fn check_command_timeout(&self, ms: u64) -> Result<(), String> {
        let Ok(ms) = u32::try_from(ms) else {
            return Err(format!(
                "must be at most {MAX_TIMEOUT_MS} ms (a longer watchdog is none), found {ms}"
            ));
        };
        self.spans_periods("command_timeout_ms", ms)
            .map_err(|e| e.message)
    }

    /// `field` (milliseconds) spans at least [`MIN_TIMEOUT_PERIODS`] control periods.
    fn spans_periods(&self, field: &str, ms: u32) -> Result<(), Invalid> {
        let periods_ms = MIN_TIMEOUT_PERIODS * 1000.0 / self.control_hz as f64;
        check(ms as f64 >= periods_ms, field, || {
            format!(
                "must be at least {MIN_TIMEOUT_PERIODS} control periods ({periods_ms} ms at {} Hz), found {ms}",
                self.control_hz
            )
        })?;
        check(ms <= MAX_TIMEOUT_MS, field, || {
            format!("must be at most {MAX_TIMEOUT_MS} ms (a longer watchdog is none), found {ms}")
        })
    }

    /// Whether a line at `baud` carries this robot's frames: the frames of one step must
    /// leave room on the line for a late one to catch up, so they may take at most half
    /// of each control period (10 bits per byte on a UART), in each direction (the line
    /// is full duplex): the firmware's `Sensor` and `Reward`, and the controller's
    /// `Command`. Checked for the
    /// robot file's `serial.baud` and for the controller's `--baud`. Not for USB CDC-ACM
    /// devices (`/dev/ttyACM*`, macOS `/dev/cu.usbmodem*` and `/dev/tty.usbmodem*`),
    /// which ignore the baud rate and run at USB speed, nor for pseudo-terminals
    /// (`/dev/pts/N`, macOS `/dev/ttysNNN`). A symlink to a device that
    /// exists (`/dev/serial/by-id/usb-…-if00`, the stable name of a USB device) is judged
    /// by the device it names; one that does not exist (here) by its own name.
    pub fn check_baud(&self, device: &str, baud: u32) -> Result<(), String> {
        let resolved = std::fs::canonicalize(device)
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let path = resolved.as_deref().unwrap_or(device);
        let name = path.rsplit('/').next().unwrap_or(path);
        // (A pseudo-terminal, the simulated firmware's, ignores it too: Linux's
        // `/dev/pts/N`, macOS's `/dev/ttysNNN`.)
        let macos_pty = name
            .strip_prefix("ttys")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ["ttyACM", "cu.usbmodem", "tty.usbmodem"]
            .iter()
            .any(|usb| name.starts_with(usb))
            || path.starts_with("/dev/pts/")
            || macos_pty
        {
            return Ok(());
        }
        let period_ms = 1000.0 / self.control_hz as f64;
        // The firmware's direction is the busier: its `Reward` alone carries the
        // command's values and more.
        let (od, ad) = (self.observation.dim, self.action.dim);
        let bytes = step_wire_bytes(od, ad);
        let what = format!(
            "the firmware's frames for one step ({bytes} bytes for {od} observation and {ad} action values)"
        );
        let line_ms = (bytes * 10) as f64 * 1000.0 / baud as f64;
        if line_ms <= 0.5 * period_ms {
            return Ok(());
        }
        let min_baud = (bytes * 10) as f64 * 2.0 * self.control_hz as f64;
        Err(format!(
            "{baud} baud is too slow for {} Hz: {what} take {line_ms:.1} ms of the {period_ms} ms period, and at most half of it is allowed; use at least {min_baud} baud or a lower control_hz",
            self.control_hz
        ))
    }
}

/// A validation failure before it is located in the file.
struct Invalid {
    field: String,
    message: String,
}

fn check(ok: bool, field: &str, message: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid {
            field: field.to_string(),
            message: message(),
        })
    }
}

fn nonempty(field: &str, s: &str) -> Result<(), Invalid> {
    check(!s.trim().is_empty(), field, || "must not be empty".into())
}

fn finite(field: &str, x: f32) -> Result<(), Invalid> {
    check(x.is_finite(), field, || {
        format!("must be a finite number (f32), found {x}")
    })
}

fn positive(field: &str, x: f32) -> Result<(), Invalid> {
    finite(field, x)?;
    check(x > 0.0, field, || format!("must be positive, found {x}"))
}

/// `SECTION.names`: none empty, none twice; the set of them.
fn distinct_names<'a>(section: &str, names: &'a [String]) -> Result<HashSet<&'a str>, Invalid> {
    let mut seen = HashSet::new();
    for (i, n) in names.iter().enumerate() {
        let field = format!("{section}.names[{i}]");
        nonempty(&field, n)?;
        check(seen.insert(n.as_str()), &field, || {
            format!("duplicate {section} name '{n}'")
        })?;
    }
    Ok(seen)
}

fn dims(field: &str, found: usize, expected: usize, from: &str) -> Result<(), Invalid> {
    check(found == expected, field, || {
        format!("expected {expected} values ({from}), found {found}")
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Every key and array element of a parsed document with its dotted path and spans.
struct SpanIndex {
    /// (path, span of the key or array element, span of the value)
    entries: Vec<(String, Range<usize>, Range<usize>)>,
}

impl SpanIndex {
    fn new(doc: &DeTable<'_>) -> SpanIndex {
        let mut entries = Vec::new();
        Self::table("", doc, &mut entries);
        SpanIndex { entries }
    }

    fn table(prefix: &str, t: &DeTable<'_>, out: &mut Vec<(String, Range<usize>, Range<usize>)>) {
        for (k, v) in t {
            let path = join(prefix, k.get_ref());
            out.push((path.clone(), k.span(), v.span()));
            Self::value(&path, v.get_ref(), out);
        }
    }

    fn value(path: &str, v: &DeValue<'_>, out: &mut Vec<(String, Range<usize>, Range<usize>)>) {
        match v {
            DeValue::Table(t) => Self::table(path, t, out),
            DeValue::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    out.push((p.clone(), e.span(), e.span()));
                    Self::value(&p, e.get_ref(), out);
                }
            }
            _ => {}
        }
    }

    /// The most specific path whose key or value span contains `offset`.
    fn path_at(&self, offset: usize) -> Option<String> {
        self.entries
            .iter()
            .filter(|(_, k, v)| k.contains(&offset) || v.contains(&offset))
            .min_by_key(|(_, k, v)| {
                let span = |r: &Range<usize>| {
                    if r.contains(&offset) {
                        r.len()
                    } else {
                        usize::MAX
                    }
                };
                span(k).min(span(v))
            })
            .map(|(p, _, _)| p.clone())
    }

    /// Where `path` is written: the key (or array element), else its nearest written
    /// parent (for fields that are missing), else the start of the file.
    fn offset_of(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some((_, k, _)) = self.entries.iter().find(|(q, _, _)| q == p) {
                return k.start;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return 0,
            }
        }
    }
}

#[cfg(test)]
mod tests;
