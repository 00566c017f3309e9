//! The control thread: a fixed-rate loop on absolute deadlines that runs episodes,
//! acts, enforces safety and builds transitions.
//!
//! # One tick
//!
//! ```text
//!  deadline k ── sleep until (deadline − spin), spin to the deadline ── wake
//!   read:  drain the link's frames (in order) → episode bookkeeping, faults,
//!          newest Sensor of the running episode
//!   checks: stop flag, panic flag, stale sensor, missed deadlines
//!   phase:  Running + a new Sensor → guard obs → policy (or the teleop device's
//!           engaged action) → shape → gate → Command (→ observation to the device)
//!           SafeStop → one hold step through the gate (then Estop, if allowed)
//!           Idle → Reset{seed} of the next episode, Starting → wait for EpisodeStart
//!   log:   transitions that are complete → try_send to the logger
//!  deadline k+1 = deadline k + period (missed deadlines are skipped and counted)
//! ```
//!
//! A fault detected while reading or checking moves the phase to `SafeStop` before the
//! phase step of the *same* tick, so the first hold command goes out in the tick that
//! detected the fault (the report records both tick numbers).
//!
//! # Which action a transition gets
//!
//! The controller acts once per new sensor frame; the firmware applies the newest
//! command it has at each of its own control steps (or, in lockstep, steps when a
//! command arrives). The transition of step `t` pairs `Sensor t`, `Sensor t+1` and
//! `Reward t+1`, and its action is the one `Reward t+1` says the step applied (mapped
//! back to policy units): the command after the firmware's envelope and slew limit, or
//! its hold. The command the step applied (the newest written by `Sensor t+1`'s arrival
//! whose values it is, within round-off) gives the transition its values bit for bit,
//! its send time and its intervention and teleop marks; where it applied none (the slew
//! limit on its way to one, the hold), the command in force then does (the newest whose
//! write had started; with no command yet in the episode, the hold). A step that
//! applied other than the command in force (a command lost or late on the line, the
//! slew limit reaching a command further away, the watchdog's hold) is counted
//! (`applied_otherwise` in each episode's report); a critic that learned from the
//! command would credit it with what another action did.
//!
//! # Phase
//!
//! The deadlines are absolute (`deadline += period`), so the loop does not drift. With
//! a firmware that streams on its own clock the two grids have an arbitrary phase, and
//! a frame may wait up to a period for the next tick; `--align-phase` shifts the grid
//! (at most 5% of a period per tick, snapped at episode start) so that ticks fall just
//! after the frames arrive. See `Control::align`. A transition whose pieces were lost on the link is counted as
//! missing once later frames make clear they will not come.

use super::console::ConsoleTx;
use super::log::{EndReason, EpisodeEnd, Record, Transition};
use super::operator::OperatorCommand;
use super::realtime;
use super::safety::{CommandGate, Envelope};
use super::stats::{Cadence, CadenceReport};
use super::viz::{ActFrame, TickFrame};
use super::{Brain, EpisodeReport, FaultEvent, FaultKind, Outcome, RunConfig};
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use firmware_config::protocol::{
    FaultCode, FrameError, HandshakeError, Hello, MAX_ACT, MAX_OBS, Message,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::link::LinkEvent;

/// Sensor frames and rewards kept per episode for pairing (by step modulo this).
const RING: usize = 16;
/// Commands remembered for "which command was in force".
const COMMANDS: usize = 16;
/// Ticks a safe stop tries to write its Estop before the run ends with the error. A
/// write fails at once or after the writer's timeout (100 ms), and each tick also
/// writes the hold, so the tries take up to about 2 s. The run ends rather than
/// reconnecting: the link's reader has not seen the port go (it would have stopped
/// the retries), so there is nothing to reopen.
const ESTOP_WRITE_TRIES: u32 = 10;
/// Times the run's closing `Estop` is sent again when the firmware does not answer it
/// (`Fault { Estop }`) within [`Control::estop_answer_wait`]: a stop damaged on the line
/// never reaches the firmware, which would hold with its torque on. Unanswered after
/// that, the run ends with an error that says so.
pub(super) const ESTOP_RESENDS: u32 = 2;

/// [`Control::estop_answer_wait`] for a control period and stale-sensor limit (both
/// divided by `--time-scale`).
pub(super) fn estop_answer_wait(period: Duration, stale: Duration) -> Duration {
    stale.max(period * 4).max(Duration::from_millis(100))
}

/// A received frame's place in the firmware's sequence.
#[derive(Clone, Copy)]
struct Seq {
    number: u16,
    /// The link saw this number before (a duplicate) or after a newer one (reordered).
    stale: bool,
}

impl Seq {
    /// A copy (duplicate or late echo) of the frame numbered `handled`.
    fn copy_of(self, handled: Option<u16>) -> bool {
        self.stale && handled == Some(self.number)
    }
}

#[derive(Clone, Copy)]
struct SensorRec {
    step: u32,
    obs: [f32; MAX_OBS],
    fw_us: u32,
    rx: Instant,
}

#[derive(Clone, Copy)]
struct RewardRec {
    step: u32,
    reward: f32,
    done: bool,
    truncated: bool,
    success: bool,
    /// The action the step applied, as the firmware says (policy units).
    applied: [f32; MAX_ACT],
}

/// The running episode as the controller sees it.
struct Track {
    /// The firmware's episode id: frames are matched to the episode by it.
    id: u32,
    /// This run's number for the episode: that of the `Reset` that began it (0, 1, 2, …
    /// in order; unique in the run, and a `Reset` that started nothing leaves its number
    /// unused). What the log, the report and the recording call it: the firmware's id
    /// can repeat within a run (a rebooted firmware counts from 0 again), and the log's
    /// episodes must not merge.
    number: u32,
    seed: u64,
    started: Instant,
    sensors: [Option<SensorRec>; RING],
    rewards: [Option<RewardRec>; RING],
    newest: Option<u32>,
    newest_rx: Instant,
    newest_reward: Option<u32>,
    acted: Option<u32>,
    next_emit: u32,
    /// Transitions handed to the logger, and those its full queue had no room for.
    emitted: u32,
    dropped: u32,
    missing: u32,
    /// Transitions whose applied action was not the command in force (see the module's
    /// "Which action a transition gets").
    applied_otherwise: u32,
    /// Frames of the episode's steps that could not be read once a fault or an interrupt
    /// had cut it short
    /// (the first one faults the running episode), and what was wrong with the first.
    malformed: u32,
    malformed_first: Option<String>,
    /// Frames acted on with an observation outside the running bundle's bounds, and the
    /// first of them, said ([`EpisodeReport::outside_bounds`]).
    outside_bounds: u32,
    outside_bounds_first: Option<String>,
    /// Step number of the terminal reward (= the episode's step count).
    final_step: Option<u32>,
    /// `EpisodeEnd` from the firmware: (success, steps).
    fw_end: Option<(bool, u32)>,
    ret: f32,
    success: bool,
    steps_acted: u32,
    /// Of those, with the teleop device's action.
    steps_teleop: u32,
    /// The operator's label (`Some(true)`: success), which ended the episode.
    label: Option<bool>,
}

/// An episode a fault (or an interrupt: Ctrl-C, `q`, `--duration`) ended, waiting for
/// the frames that complete its last transitions.
/// The fault usually comes from a `Sensor` frame (a joint limit, a NaN action) whose
/// step's `Reward` frame is right behind it on the line; ending the episode at once lost
/// the transition into the faulted state, the most telling one. The safe stop goes on
/// meanwhile; the episode ends (log, report, recording) once its transitions up to the
/// newest step heard of at the fault are in, after [`CLOSING_PERIODS`], or when the safe
/// stop ends, whichever comes first, with the figures it had at the fault.
struct Closing {
    track: Track,
    /// `Fault` or `Interrupted`; or how an episode already ending when the fault came
    /// ends ([`Control::ending_reason`]).
    reason: EndReason,
    detail: String,
    /// The fault's time: the episode's length ends there.
    ended: Instant,
    until: Instant,
    /// The episode's cadence, taken at the fault (the safe stop's ticks are not its).
    cadence: CadenceReport,
}

/// The track frames of firmware episode `episode` go to: the running episode's, or that
/// of the one a fault ended, still waiting for its last frames.
fn track_of<'a>(
    track: &'a mut Option<Track>,
    closing: &'a mut Option<Closing>,
    episode: u32,
) -> Option<&'a mut Track> {
    match track {
        Some(t) if t.id == episode => Some(t),
        _ => closing
            .as_mut()
            .map(|c| &mut c.track)
            .filter(|t| t.id == episode),
    }
}

/// How long (in control periods) a faulted episode waits for its last frames, as long
/// as an ending one waits for its trailing frames.
const CLOSING_PERIODS: u32 = 10;

/// A label (operator key or teleop device), or the operator's reset, this soon after an
/// episode began is taken for one meant for the episode before: a key pressed twice, or
/// a device's press that came just after the firmware ended the episode itself. Labels carry no episode id,
/// so time is the only clue. Wall time, not robot time: people and devices press keys
/// in wall time, whatever `--time-scale` does to the episodes.
pub const LABEL_GRACE: Duration = Duration::from_millis(250);

impl Track {
    /// Whether a label at `now` is this episode's, not a late one for the one before
    /// ([`LABEL_GRACE`]).
    fn takes_label_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= LABEL_GRACE
    }

    fn new(id: u32, number: u32, seed: u64, now: Instant) -> Track {
        Track {
            id,
            number,
            seed,
            started: now,
            sensors: [None; RING],
            rewards: [None; RING],
            newest: None,
            newest_rx: now,
            newest_reward: None,
            acted: None,
            next_emit: 0,
            emitted: 0,
            dropped: 0,
            missing: 0,
            applied_otherwise: 0,
            malformed: 0,
            malformed_first: None,
            outside_bounds: 0,
            outside_bounds_first: None,
            final_step: None,
            fw_end: None,
            ret: 0.0,
            success: false,
            steps_acted: 0,
            steps_teleop: 0,
            label: None,
        }
    }

    fn sensor(&self, step: u32) -> Option<&SensorRec> {
        self.sensors[step as usize % RING]
            .as_ref()
            .filter(|s| s.step == step)
    }

    fn reward(&self, step: u32) -> Option<&RewardRec> {
        self.rewards[step as usize % RING]
            .as_ref()
            .filter(|r| r.step == step)
    }

    /// The furthest step anything has been heard of.
    fn horizon(&self) -> Option<u32> {
        self.newest.max(self.newest_reward)
    }

    /// Step count once the episode ended.
    fn steps(&self) -> u32 {
        self.fw_end
            .map(|(_, s)| s)
            .or(self.final_step)
            .unwrap_or_else(|| self.newest.unwrap_or(0))
    }
}

/// A command as written.
#[derive(Clone, Copy)]
struct SentCommand {
    /// When its write started.
    at: Instant,
    /// Policy units, as sent.
    action: [f32; MAX_ACT],
    /// The operator's intervention mark was on.
    intervention: bool,
    /// The action was the teleop device's.
    teleop: bool,
}

/// Commands written in the current episode, with their times.
struct CommandRing {
    buf: [SentCommand; COMMANDS],
    len: usize,
    next: usize,
}

impl CommandRing {
    fn new(now: Instant) -> Self {
        CommandRing {
            buf: [SentCommand {
                at: now,
                action: [0.0; MAX_ACT],
                intervention: false,
                teleop: false,
            }; COMMANDS],
            len: 0,
            next: 0,
        }
    }
    fn clear(&mut self) {
        self.len = 0;
    }
    fn push(&mut self, c: SentCommand) {
        self.buf[self.next] = c;
        self.next = (self.next + 1) % COMMANDS;
        self.len = (self.len + 1).min(COMMANDS);
    }
    /// The newest command written at or before `t`.
    fn in_force_at(&self, t: Instant) -> Option<SentCommand> {
        self.written_by(t).next()
    }

    /// The newest command written by `t` that `is_applied` takes for the action a step
    /// applied, and whether it is the one in force at `t`.
    fn applied_at(
        &self,
        t: Instant,
        is_applied: impl Fn(&SentCommand) -> bool,
    ) -> Option<(SentCommand, bool)> {
        let found = self.written_by(t).enumerate().find(|(_, c)| is_applied(c));
        found.map(|(newer, c)| (c, newer == 0))
    }

    /// The commands written by `t`, newest first.
    fn written_by(&self, t: Instant) -> impl Iterator<Item = SentCommand> + '_ {
        (1..=self.len)
            .map(|k| self.buf[(self.next + COMMANDS - k) % COMMANDS])
            .filter(move |c| c.at <= t)
    }
}

/// What follows a safe stop, from the least to the most strict: each does what the ones
/// before it would (a reconnection handshakes, an exit ends everything), so that of two
/// faults the later can only make it stricter (`Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum After {
    Idle,
    Handshake,
    Reconnect,
    Exit,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Phase {
    Idle,
    Starting {
        since: Instant,
        attempts: u32,
        seed: u64,
    },
    Running,
    /// The firmware ended the episode; waiting (briefly) for its last frames.
    Ending {
        until: Instant,
    },
    SafeStop {
        left: u32,
        then: After,
    },
    Handshaking {
        since: Instant,
        last_hello: Instant,
    },
    Reconnecting {
        until: Instant,
    },
    /// The run's closing `Estop` went out: waiting until `until` for its answer (the
    /// one that takes `estop_answers` past `answers`: the answers still owed to earlier
    /// `Estop`s count first, until the first resend gives them up), then sending it
    /// again, `resends` times so far ([`ESTOP_RESENDS`]), `written` of them written.
    ConfirmingStop {
        until: Instant,
        resends: u32,
        written: u32,
        answers: u64,
    },
    /// The run's torque-off `Estop` did not reach the firmware, or its answer did not
    /// come, because the link was lost at the run's end, and `--reconnect-ms` is given:
    /// waiting until `until` for the port to come back, to send it there (the firmware
    /// behind it holds with its torque on, and takes an `Estop` before a handshake too).
    ReconnectingToStop {
        until: Instant,
    },
    Done,
}

impl Phase {
    /// For the rerun recording's `safety/state`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Starting { .. } => "starting",
            Phase::Running => "running",
            Phase::Ending { .. } => "ending",
            Phase::SafeStop { .. } => "safe_stop",
            Phase::Handshaking { .. } => "handshaking",
            Phase::Reconnecting { .. } => "reconnecting",
            Phase::ConfirmingStop { .. } => "confirming_stop",
            Phase::ReconnectingToStop { .. } => "reconnecting_to_stop",
            Phase::Done => "done",
        }
    }
}

/// The episode last finished: its id, and the furthest step heard of it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Finished {
    id: u32,
    furthest: u32,
    /// A `Hello` went out with a repeated `Reset` (a firmware that rebooted, its own
    /// `Hello` lost, waits for a handshake): a rebooted firmware numbers its episodes
    /// from 0 again, so its next one may carry this id, from its first steps.
    numbering_may_restart: bool,
}

impl Finished {
    fn of(t: &Track) -> Finished {
        Finished {
            id: t.id,
            furthest: t.horizon().unwrap_or(0),
            numbering_may_restart: false,
        }
    }

    /// A frame of this episode, which the firmware runs on until our `Reset` takes: not
    /// a new episode's. After a `Hello`, a frame of this id at a step before the
    /// furthest heard of is the first of a rebooted firmware's episode (the old one's
    /// late frames only go on from there). Before, every frame of this id was taken
    /// for the new episode once the `Hello` went out: a firmware still running the old
    /// one (a lost or slow `Reset`) had its late frame start a bogus episode, ended at
    /// once by `implausible_step`.
    fn late_frame(&self, episode: u32, step: u32) -> bool {
        episode == self.id && !(self.numbering_may_restart && step < self.furthest)
    }
}

/// Everything the control thread owns.
pub(crate) struct Control {
    pub cfg: RunConfig,
    pub period: Duration,
    stale: Duration,
    /// How far past the furthest step heard of a frame's step number may be
    /// ([`max_step_leap`]); a frame further ahead is the firmware's bug.
    max_step_leap: u32,
    pub brain: Brain,
    pub gate: CommandGate,
    envelope: Envelope,
    /// Per action dimension, how far an applied action may be from a command and still
    /// be it ([`firmware_config::config::ActionConfig::same_action_tolerance`]).
    same_action: [f32; MAX_ACT],
    pub(crate) events: Receiver<LinkEvent>,
    pub(crate) log_tx: Option<Sender<Record>>,
    pending_log: VecDeque<Record>,
    /// The loop has ended: transitions wait for room in the logger's queue instead of
    /// being dropped ([`Control::flush_log_blocking`]).
    log_blocking: bool,
    hello: Hello,
    pub start: Instant,
    pub phase: Phase,
    /// `Reset`s sent for a new episode: they number the episodes and draw their seeds.
    episodes_started: u32,
    /// Episodes the firmware began (its `EpisodeStart`, or a frame of the new episode):
    /// what `--episodes` counts. A `Reset` that started nothing (a reboot or a lost link
    /// while starting, a failed write) used one of them up.
    episodes_begun: u32,
    track: Option<Track>,
    /// The episode a fault ended, kept while the safe stop runs for the frames of its
    /// last steps still on the line ([`Closing`]).
    closing: Option<Closing>,
    /// The episode last finished (a late frame of it must not start a new track).
    last_finished: Option<Finished>,
    commands: CommandRing,
    pub tick: u64,
    consecutive_overruns: u32,
    pub ep_cadence: Cadence,
    pub run_cadence: Cadence,
    pub report: super::RunReport,
    fault_count: u32,
    /// Set when the next phase after a safe stop must not continue the run.
    stopping: Option<Outcome>,
    /// Policies from new bundles (the uplink streamer verifies and builds them); taken
    /// only between episodes.
    pub swaps: Option<super::streamer::SwapSlot>,
    /// The fault event waiting for its first hold command.
    hold_pending: Vec<usize>,
    /// Spin through the whole period instead of sleeping (`--dedicated-cpu`, once the
    /// thread is alone on its CPU).
    pub busy_wait: bool,
    /// The control thread took this loop over, or a setup step's failure stopped the
    /// robot already (see the `Drop` below).
    pub(crate) ran: bool,
    /// Our Estops still waiting for their `Fault { Estop }` answer. Moved to
    /// `late_estop_answers` when an episode begins: the firmware answers in order, so by
    /// then every answer to an earlier Estop has been sent (one lost on the link never
    /// comes).
    estops_unanswered: u32,
    /// Answers to Estops sent before the running episode began that have not arrived:
    /// one the link held back behind the `EpisodeStart` (reordered) comes stale,
    /// numbered before `episode_began_seq`, and is ours, not a stop button's, until
    /// `late_estop_until` (an answer's wait after the episode began: one lost on the
    /// link never comes, and a stop button's frame reordered later in the episode must
    /// not be taken for it).
    late_estop_answers: u32,
    late_estop_until: Instant,
    /// The number of the frame that began the running episode (its `EpisodeStart`, or
    /// the `Sensor` frame that started it): a late answer is numbered before it.
    episode_began_seq: u16,
    /// The number of the frame being handled ([`Control::on_message`]).
    handling_seq: u16,
    /// Answers to our Estops taken so far, except late ones (`late_estop_answers`: to
    /// `Estop`s sent before the running episode began); the closing one's is waited for.
    estop_answers: u64,
    /// The firmware timestamp of the reboot `Hello` last handled, until a handshake
    /// completes after it: the same `Hello` again (the link publishes a copy of it
    /// unmarked when frames renumber) is taken for that copy while the torque is on.
    reboot_unshaken: Option<u32>,
    /// A stop signal ended a handshake whose `Hello` may yet be answered: that answer,
    /// while the closing `Estop`'s is awaited, is no reboot.
    hello_owed: bool,
    /// The tick the safe stop under way began: its torque-off belongs to the faults held
    /// from then on, not to one of an earlier stop that could send no Estop.
    stop_began: u64,
    /// The firmware's sequence number of the last answer to our Estop: a stale frame
    /// with that number is a duplicated or reordered copy of it (a Hello restarts the
    /// numbers).
    estop_answer_seq: Option<u16>,
    /// The number of the last `Fault { Watchdog | InvalidCommand }` taken as the
    /// firmware falling back to its hold: a frame with that number is a copy of it.
    fallback_seq: Option<u16>,
    /// The number of the last hardware fault (`Overcurrent`, a robot's own code) taken
    /// as a fault: a stale frame with that number is a copy (a duplicate, an echo),
    /// not a second fault.
    hardware_fault_seq: Option<u16>,
    /// A fault stopped the start of an episode (`Starting`, before its first frame):
    /// the firmware may have begun it from our `Reset`, and frames of that episode
    /// still on the line would start the next `Reset`'s in its place (the episode a
    /// `Sensor` frame starts when its `EpisodeStart` was lost). Until an episode
    /// begins, only an `EpisodeStart` with the `Reset`'s seed starts one.
    start_abandoned: bool,
    torque_off: bool,
    /// Ticks in a row whose Estop could not be written ([`ESTOP_WRITE_TRIES`]).
    estop_write_failures: u32,
    link_down: bool,
    /// The I/O thread has ended (its channel is closed): no port comes back any more.
    io_ended: bool,
    /// Until when the run's end waits for a lost port to take its `Estop`
    /// ([`Phase::ReconnectingToStop`]), set when it first does (or by a port back in
    /// its loss's drain): a port back that is
    /// lost again does not extend it.
    stop_port_deadline: Option<Instant>,
    /// Ports back that took (or, past that deadline, were refused) the closing `Estop`
    /// after a loss at the run's end, and a port kept aside during the safe stop that took
    /// it ([`Self::pending_writer`]), counted in the wait's end where none answered.
    stop_ports_back: u32,
    /// A port reopened while a safe stop was still holding: taken into use only when
    /// the stop ends, for the handshake, or for the Estop if the run ends there. Its
    /// firmware has not confirmed its robot id, so the rest of the hold ramp does not
    /// go to it.
    pending_writer: Option<Box<dyn std::io::Write + Send>>,
    pub fatal: Option<String>,
    action: [f32; MAX_ACT],
    obs: [f32; MAX_OBS],
    od: usize,
    ad: usize,
    /// The robot file's joint limits on observation values, checked on every frame
    /// acted on.
    joint_checks: Vec<firmware_config::config::JointCheck>,
    pub panic_at_tick: Option<u64>,
    /// Testing only: once the injected panic has fired, every hand-over of transitions
    /// to the log panics too (`--inject-panic-repeats`).
    panic_repeats: bool,
    /// Raised when a thread of this run panics ([`realtime::RunScope`]).
    pub(crate) run_panicked: Arc<realtime::RunPanic>,
    /// Testing only: ticks `from..from + count` each sleep one extra control period.
    pub slow_ticks: Option<(u64, u64)>,
    current_deadline: Instant,
    /// Deadline minus arrival of the frame the last tick acted on (phase alignment).
    acted_age: Option<i128>,
    /// The next alignment may move the grid by up to half a period (episode start).
    snap_phase: bool,
    /// Operator commands (`--operator`), polled once per tick.
    pub operator: Option<Receiver<OperatorCommand>>,
    /// The operator's intervention mark is on.
    intervention: bool,
    /// The operator paused: no new episode starts.
    paused: bool,
    /// The teleop device's actions and labels (`--teleop`).
    pub teleop: Option<super::teleop::TeleopPort>,
    /// Tick frames for the rerun recording (`--rerun`), and the one being filled.
    pub viz_tx: Option<Sender<TickFrame>>,
    frame: TickFrame,
    /// Where this thread's console lines go ([`super::console`]): never to stderr
    /// directly, whose writes block while nobody reads them. `None` (tests, library
    /// use without a console thread) writes them to stderr.
    pub console: Option<ConsoleTx>,
}

impl Control {
    /// Queues a console line ([`say_line`]).
    pub(crate) fn say(&self, line: String) {
        say_line(self.console.as_ref(), line);
    }
}

/// A console line of the control thread: queued for the console thread, never waited
/// for; written at once only where there is none.
fn say_line(console: Option<&ConsoleTx>, line: String) {
    match console {
        Some(c) => c.line(line),
        None => note!("{line}"),
    }
}

/// The furthest a frame's step number can plausibly leap past the furthest step heard
/// of: the firmware steps at most once per control period (in lockstep, once per
/// command, and commands wait for sensor frames), so while frames are lost it gets at
/// most `stale / period` steps ahead before the stale-sensor fault ends the episode.
/// Four times that (clock drift, the phases that do not check staleness) plus the
/// pairing ring (the frames of an episode's start) is generous; a leap further is a
/// step number no firmware clock reached (or the whole controller was paused, the I/O
/// thread too, while the port's buffer overflowed: the firmware's watchdog has tripped
/// by then anyway).
fn max_step_leap(period: Duration, stale: Duration) -> u32 {
    // (Less a hair: 150 ms over 50 ms, time-scaled, is 3 ticks, not 3 + 1e-16.)
    let stale_ticks = (stale.as_secs_f64() / period.as_secs_f64() - 1e-9).ceil();
    (4.0 * stale_ticks + RING as f64).min(u32::MAX as f64) as u32
}

fn ns_since(start: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(start).as_nanos() as u64
}

impl Control {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: RunConfig,
        brain: Brain,
        gate: CommandGate,
        events: Receiver<LinkEvent>,
        log_tx: Option<Sender<Record>>,
        report: super::RunReport,
        start: Instant,
    ) -> Control {
        let scale = cfg.time_scale;
        let period = cfg.robot.control_period().div_f64(scale);
        let stale = cfg.robot.stale_sensor().div_f64(scale);
        let hello = cfg.robot.hello();
        let envelope = gate.envelope().clone();
        let (od, ad) = (cfg.robot.observation.dim, cfg.robot.action.dim);
        let joint_checks = cfg.robot.joint_checks();
        let mapping = &cfg.robot.action;
        let same_action = std::array::from_fn(|i| {
            if i < ad {
                mapping.same_action_tolerance(i)
            } else {
                0.0
            }
        });
        Control {
            joint_checks,
            period,
            stale,
            max_step_leap: max_step_leap(period, stale),
            brain,
            gate,
            envelope,
            same_action,
            events,
            log_tx,
            pending_log: VecDeque::with_capacity(16),
            log_blocking: false,
            hello,
            start,
            phase: Phase::Idle,
            episodes_started: 0,
            episodes_begun: 0,
            track: None,
            closing: None,
            last_finished: None,
            commands: CommandRing::new(start),
            tick: 0,
            consecutive_overruns: 0,
            ep_cadence: Cadence::default(),
            run_cadence: Cadence::default(),
            report,
            fault_count: 0,
            stopping: None,
            swaps: None,
            hold_pending: Vec::new(),
            ran: false,
            busy_wait: false,
            estops_unanswered: 0,
            late_estop_answers: 0,
            late_estop_until: start,
            episode_began_seq: 0,
            handling_seq: 0,
            estop_answers: 0,
            reboot_unshaken: None,
            hello_owed: false,
            stop_began: 0,
            estop_answer_seq: None,
            fallback_seq: None,
            hardware_fault_seq: None,
            start_abandoned: false,
            torque_off: false,
            estop_write_failures: 0,
            link_down: false,
            io_ended: false,
            stop_port_deadline: None,
            stop_ports_back: 0,
            pending_writer: None,
            fatal: None,
            action: [0.0; MAX_ACT],
            obs: [0.0; MAX_OBS],
            od,
            ad,
            panic_at_tick: cfg.panic_at_tick,
            panic_repeats: false,
            // Built by `run` inside its scope; a bare flag that no panic raises otherwise.
            run_panicked: realtime::run_panic_flag().unwrap_or_default(),
            slow_ticks: cfg.slow_ticks,
            current_deadline: start,
            acted_age: None,
            snap_phase: false,
            operator: None,
            intervention: false,
            paused: false,
            teleop: None,
            viz_tx: None,
            console: None,
            frame: TickFrame::default(),
            cfg,
        }
    }

    /// How the run is ending, if it is.
    pub(crate) fn stopping(&self) -> Option<Outcome> {
        self.stopping
    }

    /// Runs the phase step now, outside a tick (after a caught panic: the safe stop's
    /// first hold goes out at once, counted in the tick that panicked).
    pub(crate) fn step_now(&mut self) {
        self.step_phase(Instant::now());
    }

    /// Hands the episode records still queued to the logger, waiting if need be (the
    /// loop has ended; blocking is fine now). Those queued already go first: the
    /// closing episode's end runs the loop's code once more, and a panic there (caught
    /// by the caller) lost the records of episodes finished before, queued behind a
    /// busy logger.
    pub(crate) fn flush_log_blocking(&mut self) {
        self.log_blocking = true;
        self.send_pending_blocking();
        if self.panic_repeats {
            panic!("injected panic handing the last records to the log (--inject-panic-repeats)");
        }
        // A faulted episode still waiting for frames (the loop ended another way).
        self.end_closing(Instant::now());
        self.send_pending_blocking();
    }

    fn send_pending_blocking(&mut self) {
        if let Some(tx) = &self.log_tx {
            while let Some(rec) = self.pending_log.pop_front() {
                if tx.send(rec).is_err() {
                    self.report.log_drops += 1;
                }
            }
        }
    }

    /// Runs ticks on absolute deadlines until the phase is `Done`.
    pub(crate) fn run_loop(&mut self) {
        // A whole period of spinning never sleeps: the vCPU never halts, so it is not
        // woken late (see `sleep_until`).
        let spin = if self.busy_wait {
            self.period
        } else {
            self.cfg.spin
        };
        let mut deadline = Instant::now() + self.period;
        let mut last_end = Instant::now();
        while self.phase != Phase::Done {
            sleep_until(deadline, spin);
            let woke = Instant::now();
            let jitter = woke.saturating_duration_since(deadline);
            self.ep_cadence.jitter.record(jitter);
            self.frame.jitter_ns = jitter.as_nanos() as u64;
            self.tick += 1;
            self.ep_cadence.ticks += 1;
            self.current_deadline = deadline;
            self.one_tick(woke);
            let end = Instant::now();
            let dt = end - last_end;
            self.ep_cadence.elapsed += dt;
            last_end = end;
            deadline = self.next_deadline(deadline, end);
        }
    }

    /// The deadline after `deadline` (the one the tick that ended at `end` ran for),
    /// counting the deadlines the tick's work ran over: each is an overrun, and
    /// `consecutive_overruns` counts deadlines missed in a row, not ticks (one tick that
    /// stalls for 20 periods missed 20). A tick that overran skips the deadlines it ran
    /// over and stays on the grid. Phase alignment moves the grid only after a tick that
    /// ended in time, and never to before that tick's end: a grid shifted earlier must
    /// not turn a tick that ended before its deadline into an overrun.
    fn next_deadline(&mut self, deadline: Instant, end: Instant) -> Instant {
        let age = self.acted_age.take();
        let (mut next, missed) = skip_missed(deadline + self.period, end, self.period);
        if missed > 0 {
            self.ep_cadence.overruns += missed;
            self.consecutive_overruns = self
                .consecutive_overruns
                .saturating_add(u32::try_from(missed).unwrap_or(u32::MAX));
        } else {
            self.ep_cadence.headroom.record(next - end);
            self.consecutive_overruns = 0;
            if self.cfg.align_phase
                && let Some(age) = age
            {
                next = self.align(next, age).max(end);
            }
        }
        next
    }

    /// Phase alignment (`--align-phase`): shifts the deadline grid so that ticks fall
    /// a short lead after the firmware's sensor frames arrive, instead of wherever the
    /// two free-running clocks happen to put them (up to a whole period of waiting).
    /// `age` is deadline minus arrival of the frame just acted on (ns, negative when
    /// it arrived after the deadline). The error against the lead is taken modulo the
    /// period (a frame that arrived just after the previous deadline means "move the
    /// grid a little later", not "a period earlier"); a fifth of it is corrected per
    /// tick, at most 5% of a period, so the loop never runs more than 5% fast or slow.
    /// Only meaningful with firmware that streams on its own clock: with a lockstep
    /// firmware the frames follow our commands and the grid would only drift later.
    ///
    /// The first frame of an episode snaps the grid at once: a firmware restarts its
    /// control clock at `Reset`, so the old phase means nothing then.
    fn align(&mut self, deadline: Instant, age: i128) -> Instant {
        let p = self.period.as_nanos() as i128;
        let lead = (p / 20).max(200_000);
        let mut e = (age - lead).rem_euclid(p);
        if e > p / 2 {
            e -= p;
        }
        // e > 0: the frame waited too long → next deadline earlier.
        let shift = if std::mem::take(&mut self.snap_phase) {
            e
        } else {
            (e / 5).clamp(-p / 20, p / 20)
        };
        if shift >= 0 {
            deadline - Duration::from_nanos(shift as u64)
        } else {
            deadline + Duration::from_nanos((-shift) as u64)
        }
    }

    fn one_tick(&mut self, now: Instant) {
        if let Some(t) = self.panic_at_tick
            && self.tick >= t
        {
            self.panic_at_tick = None;
            self.panic_repeats = self.cfg.panic_repeats;
            panic!(
                "injected panic at tick {} (--inject-panic-at-tick)",
                self.tick
            );
        }
        if let Some((from, count)) = self.slow_ticks
            && (from..from.saturating_add(count)).contains(&self.tick)
        {
            // The tick started at or after its deadline's predecessor, so one more whole
            // period of work always ends past its own deadline: a certain overrun.
            std::thread::sleep(self.period);
        }
        // read
        let t0 = now;
        self.frame.act = None;
        self.drain(now);
        let t1 = Instant::now();
        self.ep_cadence.read.record(t1 - t0);
        self.frame.read_ns = (t1 - t0).as_nanos() as u64;
        // checks
        self.checks(t1);
        // phase
        self.step_phase(t1);
        if !self.hold_pending.is_empty() && matches!(self.phase, Phase::SafeStop { .. }) {
            // The phase step itself faulted (e.g. a NaN observation): hold in this tick.
            self.step_phase(Instant::now());
        }
        // log
        let t2 = Instant::now();
        self.close_faulted(t2);
        self.emit_transitions();
        self.flush_log();
        let t3 = Instant::now();
        self.ep_cadence.log.record(t3 - t2);
        self.send_frame(now);
    }

    /// Hands this tick's frame to the rerun recording, never waiting.
    fn send_frame(&mut self, now: Instant) {
        let Some(tx) = &self.viz_tx else { return };
        self.frame.tick = self.tick;
        self.frame.time_ns = ns_since(self.start, now);
        self.frame.work_ns = now.elapsed().as_nanos() as u64;
        self.frame.episode = self.track.as_ref().map(|t| t.number);
        self.frame.phase = self.phase.name();
        if tx.try_send(self.frame).is_err() {
            self.report.viz_drops += 1;
        }
    }

    // ---------------------------------------------------------------- reading

    fn drain(&mut self, now: Instant) {
        loop {
            let ev = match self.events.try_recv() {
                Ok(ev) => ev,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.io_ended = true;
                    // The I/O thread ended without its loss getting through (the queue
                    // stayed full for its whole wait): the link is gone all the same.
                    if !self.link_down {
                        self.link_down = true;
                        let why = "the serial I/O thread ended".to_string();
                        self.fault(now, FaultKind::LinkLost, why, Some(After::Exit));
                    }
                    break;
                }
            };
            match ev {
                LinkEvent::Frame { rx, frame, stale } => {
                    let seq = Seq {
                        number: frame.seq,
                        stale,
                    };
                    let fw_us = frame.timestamp_us;
                    self.on_message(frame.message, fw_us, rx, now, seq);
                }
                LinkEvent::Error { error, .. } => {
                    if let FrameError::Version { received } = error
                        && matches!(self.phase, Phase::Handshaking { .. })
                    {
                        self.fatal_error(
                            now,
                            FaultKind::Handshake,
                            format!(
                                "the firmware speaks protocol version {received}, this controller speaks {}",
                                firmware_config::protocol::PROTOCOL_VERSION
                            ),
                        );
                    }
                }
                LinkEvent::Lost(why) => {
                    self.link_down = true;
                    // Closed when the port is to be reopened, so that a USB device can
                    // come back under its name (the link thread closed its own handle
                    // too). Kept otherwise: a link whose read side failed may still take
                    // the safe stop's holds.
                    if self.cfg.reconnect.is_some() {
                        self.gate.drop_writer();
                    }
                    // A port reopened meanwhile and kept aside is the one that failed.
                    self.pending_writer = None;
                    let after = if self.cfg.reconnect.is_some() {
                        After::Reconnect
                    } else {
                        After::Exit
                    };
                    self.fault(now, FaultKind::LinkLost, why, Some(after));
                }
                LinkEvent::Reconnected(w) => {
                    let w: Box<dyn std::io::Write + Send> = Box::new(w);
                    // From here on frames come from the port back (the link judges their
                    // numbers afresh), and no answer to an `Estop` sent before will come
                    // (any went out on the old port, lost with it): kept aside or taken,
                    // its frames are judged so from now (a stop button's `Fault` was
                    // taken for an old answer).
                    self.forget_firmware_answers();
                    match self.phase {
                        Phase::SafeStop { .. } if self.link_down => self.pending_writer = Some(w),
                        Phase::Reconnecting { .. } => {
                            self.take_writer(w);
                            self.enter_handshake(now);
                        }
                        // A port back at the run's end takes its Estop; so does one back
                        // in the same drain as its loss (before the tick that would begin
                        // the wait: the I/O thread reopens after 100 ms, a period at 10 Hz),
                        // unless the Estop's answer came before the loss.
                        Phase::ReconnectingToStop { .. } | Phase::ConfirmingStop { .. }
                            if self.link_down && !self.closing_estop_answered() =>
                        {
                            self.estop_on_the_port_back(now, w)
                        }
                        _ => self.take_writer(w),
                    }
                }
            }
        }
    }

    /// Whether a frame of firmware episode `episode`'s step `step` belongs to the running
    /// episode, whose malformed frame faults it. Not past an episode's end (an operator's
    /// label: the robot runs on while its last frames come in, as the watchdog's fault is
    /// not one), and not an episode a fault already ended (its safe stop runs).
    fn a_running_episodes_step(&self, episode: u32, step: u32) -> bool {
        self.track
            .as_ref()
            .is_some_and(|t| t.id == episode && t.final_step.is_none_or(|f| step <= f))
            && matches!(self.phase, Phase::Running | Phase::Ending { .. })
    }

    /// A frame of step `step` of firmware episode `episode` that could not be read, where
    /// it cannot fault the episode (a fault or an interrupt cut it short already: the
    /// frames of its last steps still on the line): counted on the episode, its first detail kept, so its
    /// report says why those steps are missing. Frames past the episode's end, or of
    /// no episode still open, are nobody's.
    fn count_malformed(&mut self, episode: u32, step: u32, detail: String) {
        let Some(t) = track_of(&mut self.track, &mut self.closing, episode) else {
            return;
        };
        if t.final_step.is_some_and(|f| step > f) {
            return;
        }
        t.malformed += 1;
        t.malformed_first.get_or_insert(detail);
    }

    /// A `Reward` frame's applied action (robot units) in policy units, brought into the
    /// envelope where round-off left it a little outside; or why the step cannot be
    /// recorded: another number of values than the robot file's, a value that is not
    /// finite, one outside the envelope (the firmware applies only actions inside it).
    fn applied_in_policy_units(
        &self,
        step: u32,
        applied: &[f32],
    ) -> Result<[f32; MAX_ACT], String> {
        let ad = self.ad;
        if applied.len() != ad {
            return Err(format!(
                "the Reward frame of step {step} carries {} applied action values; the robot \
                 file's action.dim is {ad} (a firmware bug)",
                applied.len()
            ));
        }
        let mut policy = [0.0f32; MAX_ACT];
        self.cfg
            .robot
            .action
            .to_policy_units(applied, &mut policy[..ad]);
        for (i, p) in policy[..ad].iter_mut().enumerate() {
            let (lo, hi, tol) = (
                self.envelope.min[i],
                self.envelope.max[i],
                self.same_action[i],
            );
            if !applied[i].is_finite() {
                return Err(format!(
                    "the Reward frame of step {step} says action [{i}] applied {} (a firmware bug)",
                    applied[i]
                ));
            }
            if *p < lo - tol || *p > hi + tol {
                return Err(format!(
                    "the Reward frame of step {step} says action [{i}] applied {} in robot units, \
                     {} in policy units: outside the envelope [{lo}, {hi}] (a firmware bug: it \
                     applies only actions inside it)",
                    applied[i], *p
                ));
            }
            *p = p.clamp(lo, hi);
        }
        Ok(policy)
    }

    fn on_message(&mut self, msg: Message, fw_us: u32, rx: Instant, now: Instant, seq: Seq) {
        self.handling_seq = seq.number;
        match msg {
            Message::Sensor { episode, step, obs } => {
                if let Phase::Starting { seed, .. } = self.phase
                    && self
                        .last_finished
                        .is_none_or(|f| !f.late_frame(episode, step))
                    && self.track.is_none()
                    && !self.start_abandoned
                {
                    // EpisodeStart lost on the link: a frame of a new episode after our
                    // Reset starts it as well (steps before it count as missing).
                    self.begin_episode(episode, seed, now, rx);
                }
                if self.refuse_leap(now, "Sensor", episode, step) {
                    return;
                }
                if obs.len() != self.od {
                    // Dropped unheard, it faulted later as a stale sensor, naming nothing.
                    let detail = format!(
                        "the Sensor frame of step {step} carries {} observation values; \
                         the robot file's observation.dim is {} (a firmware bug)",
                        obs.len(),
                        self.od
                    );
                    if self.a_running_episodes_step(episode, step) {
                        self.fault(now, FaultKind::SensorSize, detail, None);
                    } else if !seq.stale {
                        // (A stale copy of the frame that faulted is not counted again.)
                        self.count_malformed(episode, step, detail);
                    }
                    return;
                }
                let Some(t) = track_of(&mut self.track, &mut self.closing, episode) else {
                    return;
                };
                if t.final_step.is_some_and(|f| step > f) {
                    // Past the episode's end (a label, a fault): not the episode's, and
                    // kept out of its ring (a step RING later took an unsent step's
                    // place). It still moves the horizon, past which a step whose frame
                    // was lost is given up: the transitions after it are then sent.
                    t.newest = t.newest.max(Some(step));
                    return;
                }
                let slot = step as usize % RING;
                if t.sensors[slot].is_some_and(|r| r.step >= step) {
                    // Kept: the first copy of a step (a duplicate arrives later, and its
                    // receive time would misplace the step), and a newer step over a
                    // late frame from RING or more steps back.
                    return;
                }
                let mut rec = SensorRec {
                    step,
                    obs: [0.0; MAX_OBS],
                    fw_us,
                    rx,
                };
                rec.obs[..obs.len()].copy_from_slice(&obs);
                t.sensors[slot] = Some(rec);
                if t.newest.is_none_or(|n| step > n) {
                    t.newest = Some(step);
                    t.newest_rx = rx;
                }
            }
            Message::Reward {
                episode,
                step,
                reward,
                done,
                truncated,
                success,
                applied,
            } => {
                if self.refuse_leap(now, "Reward", episode, step) {
                    return;
                }
                let applied = match self.applied_in_policy_units(step, &applied) {
                    Ok(applied) => applied,
                    Err(detail) => {
                        // As a Sensor frame of another size: the step cannot be recorded
                        // (what it applied is unknown), and the firmware is not the one
                        // the robot file describes, or is not keeping its envelope.
                        if self.a_running_episodes_step(episode, step) {
                            self.fault(now, FaultKind::AppliedAction, detail, None);
                        } else if !seq.stale {
                            self.count_malformed(episode, step, detail);
                        }
                        return;
                    }
                };
                let Some(t) = track_of(&mut self.track, &mut self.closing, episode) else {
                    return;
                };
                if t.final_step.is_some_and(|f| step > f) {
                    // Past the step an operator's label ended the episode at (the robot
                    // ran on while the last frames came in): not the episode's any more,
                    // neither its return nor a `done` that would move its end.
                    return;
                }
                let slot = step as usize % RING;
                if t.rewards[slot].is_some_and(|r| r.step >= step) {
                    // A duplicate, or a late frame from RING or more steps back: its
                    // reward is in the return already, or its step was given up on.
                    return;
                }
                t.rewards[slot] = Some(RewardRec {
                    step,
                    reward,
                    done,
                    truncated,
                    success,
                    applied,
                });
                // A non-finite reward's transition is not logged (counted as
                // missing); it does not make the episode's return NaN either.
                if reward.is_finite() {
                    t.ret += reward;
                } else {
                    self.report.nan_rewards += 1;
                }
                t.success |= success;
                t.newest_reward = t.newest_reward.max(Some(step));
                if done {
                    t.final_step = Some(step);
                }
                if done && self.phase == Phase::Running {
                    self.phase = Phase::Ending {
                        until: now + self.period * 10,
                    };
                }
            }
            Message::EpisodeStart { episode, seed } => {
                if let Phase::Starting { seed: ours, .. } = self.phase
                    && seed == ours
                    && self.track.is_none()
                {
                    self.begin_episode(episode, seed, now, rx);
                } else if self.phase == Phase::Running
                    && let Some(t) = &self.track
                    && t.seed == seed
                    && t.id != episode
                    && t.acted.is_none()
                {
                    // A repeated Reset (the firmware was slow to answer the first) started
                    // the episode again: the firmware runs the newest one.
                    self.track = None;
                    self.begin_episode(episode, seed, now, rx);
                }
            }
            Message::EpisodeEnd {
                episode,
                success,
                steps,
            } => {
                // Not a faulted episode's (`closing`): its firmware episode runs on
                // through the safe stop, so the firmware's count is not the episode's.
                // Nor a labelled one's: the label ended it at its own step, and the
                // firmware's end after it is past the episode's end.
                if let Some(t) = self
                    .track
                    .as_mut()
                    .filter(|t| t.id == episode && t.label.is_none())
                {
                    t.fw_end = Some((success, steps));
                    t.success |= success;
                    if self.phase == Phase::Running {
                        self.phase = Phase::Ending {
                            until: now + self.period * 10,
                        };
                    }
                }
            }
            Message::Fault { code } => {
                let fell_back = matches!(code, FaultCode::Watchdog | FaultCode::InvalidCommand);
                // A stale frame is a copy only when its number is the one handled: an
                // original held back behind a later frame (reordered) is stale too.
                let copy = seq.copy_of(self.fallback_seq);
                if fell_back && !copy && matches!(self.phase, Phase::Running | Phase::Ending { .. })
                {
                    // The firmware fell back to its own hold while we were acting: that
                    // is the reference of the safe stop's first command, which must not
                    // restart the motion the firmware has just stopped. (In a safe stop
                    // our hold commands since then have ended the firmware's hold.)
                    self.gate.firmware_holds();
                    self.fallback_seq = Some(seq.number);
                }
                if code == FaultCode::Estop {
                    if seq.copy_of(self.estop_answer_seq) {
                        // A duplicated or reordered copy of our Estop's answer.
                        return;
                    }
                    // Our own Estop's answer; or a late one: to an `Estop` sent before the
                    // frame that began this episode, held back behind it on the link
                    // (stale, numbered before it, arrived within the window: judged by
                    // arrival, as a control thread descheduled past the window would
                    // take its own answer for a stop button's). The firmware answers in
                    // order, so a late one pays the older debt (it confirmed a closing
                    // `Estop` just after an episode began); one numbered after that frame
                    // is this episode's (taken for the late one, it left a debt that
                    // swallowed a stop button's frame).
                    let before_episode =
                        (self.episode_began_seq.wrapping_sub(seq.number) as i16) > 0;
                    let late = seq.stale
                        && before_episode
                        && rx <= self.late_estop_until
                        && self.late_estop_answers > 0;
                    let owed = if late {
                        Some(&mut self.late_estop_answers)
                    } else if self.estops_unanswered > 0 {
                        Some(&mut self.estops_unanswered)
                    } else {
                        None
                    };
                    if let Some(n) = owed {
                        *n -= 1;
                        // (Answers to this episode's `Estop`s only: a late one never
                        // confirms a closing `Estop`, `confirm_stop`.)
                        self.estop_answers += u64::from(!late);
                        self.estop_answer_seq = Some(seq.number);
                        return;
                    }
                    // A stop we did not send: the operator's (or the hardware's) stop
                    // button. The firmware would release it at our next `Reset`, so
                    // the run ends here, whatever the phase; a person restarts it.
                    self.gate.firmware_holds();
                    self.emergency_stop(now);
                    return;
                }
                // Outside an episode a fallback is old news (e.g. the watchdog of a
                // firmware that was stalled while we had already stopped). So is the
                // watchdog of an episode the operator labelled: it runs on on the
                // firmware until our Reset, and nothing is commanded while `Ending`
                // waits for its last frames (up to 10 periods, longer than a command
                // timeout of a few), so the firmware holds on its own, as it should.
                // A hardware fault (overcurrent, a robot's own code) is news in any
                // phase of a verified firmware: one in the firmware's `Reset` motion
                // (`Starting`) or between episodes was ignored, and one that recurs at
                // every `Reset` never stopped the run. (Unverified while
                // `Handshaking`, and once the run is over: counted as ignored.)
                let labelled = self.track.as_ref().is_some_and(|t| t.label.is_some());
                let after_label = code == FaultCode::Watchdog
                    && labelled
                    && matches!(self.phase, Phase::Ending { .. });
                let in_episode = matches!(self.phase, Phase::Running | Phase::Ending { .. });
                let hardware = !fell_back
                    && !matches!(self.phase, Phase::Handshaking { .. } | Phase::Done)
                    && !seq.copy_of(self.hardware_fault_seq);
                if (!after_label && in_episode) || hardware {
                    if !fell_back {
                        self.hardware_fault_seq = Some(seq.number);
                    }
                    self.fault(
                        now,
                        FaultKind::FirmwareFault,
                        format!("the firmware reported {code:?}"),
                        None,
                    );
                } else {
                    self.report.ignored_firmware_faults += 1;
                }
            }
            Message::Hello(h) => {
                if let Err(e) = self.hello.check_peer(&h) {
                    let why = super::handshake_refusal(&self.cfg.robot, &e);
                    if matches!(e, HandshakeError::Settings { .. })
                        && matches!(self.phase, Phase::Handshaking { .. })
                        && self.track.is_none()
                    {
                        // Our robot (its robot id is ours) configured from another
                        // version of the file, found by a re-handshake: it holds with its
                        // torque on, and its own file says whether an Estop turns it off.
                        // (Another robot's firmware is sent nothing.)
                        let detail = format!("handshake refused: {why}");
                        if self.fatal.is_none() {
                            self.fatal = Some(detail.clone());
                        }
                        self.stopping = Some(Outcome::Error);
                        self.note_fault(now, FaultKind::Handshake, detail);
                        self.phase = self.stop_unverified(now);
                        return;
                    }
                    self.fatal_error(
                        now,
                        FaultKind::Handshake,
                        format!("handshake refused: {why}"),
                    );
                    return;
                }
                if self.hello_owed && matches!(self.phase, Phase::ConfirmingStop { .. }) {
                    // The answer to the handshake's Hello, before that to the Estop
                    // sent as a stop signal ended it (a board that booted as its port
                    // opened numbers it 0, and was taken for rebooting again).
                    self.hello_owed = false;
                    self.report.ignored_hellos += 1;
                    return;
                }
                if let Phase::Handshaking { .. } = self.phase {
                    // Every answer still owed came before this Hello's (answers come in
                    // order); a rebooted firmware answers no `Estop` sent before.
                    self.forget_firmware_answers();
                    self.reboot_unshaken = None;
                    self.phase = Phase::Idle;
                } else if seq.number != 0
                    || ((seq.stale || self.reboot_unshaken == Some(fw_us)) && !self.torque_off)
                {
                    // Not a reboot, whose Hello is its first frame (numbered 0): a late
                    // answer to a Hello of ours already answered (a firmware that
                    // answered each of the handshake's resent Hellos), or a copy of the
                    // Hello that last restarted the numbering (the link thread marks it
                    // stale), while the torque is on: a stop under way ends with an
                    // Estop anyway. Once our Estop has gone out, such a Hello is taken
                    // for another reboot, whose firmware holds with its torque on
                    // again (a controller paused after a torque-off stop never heard of
                    // it; a copy then costs a fault and an Estop, not the arm).
                    self.report.ignored_hellos += 1;
                } else {
                    // An unasked Hello: the firmware rebooted and holds with its own
                    // hold action; its numbering starts over. Its torque is on again
                    // whatever our last Estop did: the safe stop holds and ends with a
                    // new Estop (as after a reconnect).
                    // Nor will it answer an Estop sent before it rebooted.
                    self.forget_firmware_answers();
                    self.reboot_unshaken = Some(fw_us);
                    self.torque_off = false;
                    self.gate.firmware_holds();
                    self.fault(
                        now,
                        FaultKind::FirmwareReset,
                        "the firmware restarted (unexpected Hello)".into(),
                        Some(After::Handshake),
                    );
                    // No frame of the episode it cut short comes any more, and it counts
                    // its episodes from 0 again: the id of that one may well be its next
                    // one's (after the fault, which marks the episode it ended finished).
                    self.end_closing(now);
                    self.last_finished = None;
                }
            }
            Message::Heartbeat => {}
            // Controller-to-firmware messages never come this way.
            Message::Command { .. } | Message::Estop | Message::Reset { .. } => {}
        }
    }

    /// A frame of the running episode whose step number leaps past
    /// [`Control::max_step_leap`] is refused: a firmware bug, which ends the episode as
    /// the `implausible_step` fault (kept, such a frame would stand for the newest
    /// step, which no later frame could pass). True when the frame is to be dropped.
    fn refuse_leap(&mut self, now: Instant, frame: &str, episode: u32, step: u32) -> bool {
        let Some(t) = self.track.as_ref().filter(|t| t.id == episode) else {
            return false;
        };
        let furthest = t.horizon().unwrap_or(0);
        if step <= furthest.saturating_add(self.max_step_leap) {
            return false;
        }
        if matches!(self.phase, Phase::Running | Phase::Ending { .. }) {
            let detail = format!(
                "a {frame} frame carries step {step}, {} past the furthest step heard of \
                 ({furthest}), where frames lost on the link explain at most {} (a \
                 firmware bug, or this process paused far past the stale-sensor limit)",
                step - furthest,
                self.max_step_leap
            );
            self.fault(now, FaultKind::ImplausibleStep, detail, None);
        }
        true
    }

    /// Begins the episode the firmware started; one begun while the operator's pause
    /// holds (a `p` typed while it was starting) ends at once, before its first command,
    /// as `r` ends one (the firmware's episode ends with our next `Reset`).
    fn begin_episode(&mut self, episode: u32, seed: u64, now: Instant, began: Instant) {
        // (A repeated Reset's restart of the running episode is not a new one: it goes
        // on, as a pause lets the running episode go on.)
        let starting = matches!(self.phase, Phase::Starting { .. });
        if starting {
            self.episodes_begun += 1;
        }
        self.start_abandoned = false;
        self.start_episode(episode, seed, now, began);
        if starting && self.paused {
            self.finish_episode(
                now,
                EndReason::Interrupted,
                "paused by the operator before its first step".into(),
            );
            self.phase = Phase::Idle;
        }
    }

    /// `began`: when the frame that began it arrived (the late-Estop window runs from
    /// there, as the answers are judged by their arrival); its number
    /// (`handling_seq`) is the one late answers come before.
    fn start_episode(&mut self, episode: u32, seed: u64, now: Instant, began: Instant) {
        // (A repeated Reset's restart, with none unanswered since, keeps those owed, and
        // the number they are owed before.)
        if self.estops_unanswered > 0 {
            self.late_estop_answers = std::mem::take(&mut self.estops_unanswered);
            self.late_estop_until = began + self.estop_answer_wait();
            self.episode_began_seq = self.handling_seq;
        }
        // Deadlines missed before the episode (a stall while idle) are not its own.
        self.consecutive_overruns = 0;
        // The device drives this episode only once it takes control in it (a device
        // that drives from its first step takes over once an episode, with a wait too).
        if let Some(t) = self.teleop.as_mut() {
            t.episode_began();
        }
        // The mark stays on until `i` again: said, as every step of this episode is
        // marked (and left out of training) meanwhile.
        if self.intervention {
            self.say(
                "operator: the intervention mark is still on: this episode's steps are \
                 marked too until `i`"
                    .into(),
            );
        }
        // Counted when its Reset went out (a repeated Reset's restart keeps the number).
        let number = self.episodes_started.saturating_sub(1);
        self.track = Some(Track::new(episode, number, seed, now));
        self.snap_phase = true;
        self.phase = Phase::Running;
        self.fold_cadence();
        self.queue_log(Record::EpisodeStart {
            episode: number,
            seed,
        });
    }

    // ---------------------------------------------------------------- checks

    fn checks(&mut self, now: Instant) {
        // At most a queue's worth a tick: the reader refills the queue while it drains
        // (`yes i |` on stdin kept one tick taking commands).
        for _ in 0..super::operator::MAX_QUEUED {
            let Some(c) = self.operator.as_ref().and_then(|rx| rx.try_recv().ok()) else {
                break;
            };
            self.on_operator(now, c);
        }
        if let Some(success) = self.teleop.as_mut().and_then(|t| t.poll()) {
            // The device's labels end the episode like the operator's keys, without the
            // operator's counts or messages (a device must not make this thread print).
            let running = self.phase == Phase::Running
                && self.track.as_ref().is_some_and(|t| t.takes_label_at(now));
            if running {
                self.operator_end(now, success);
            }
            if let Some(t) = self.teleop.as_mut() {
                t.label(running);
            }
        }
        if realtime::stop_requested() && self.stopping.is_none() {
            let sig = realtime::stop_signal();
            let why = if sig == 0 {
                "stop requested".to_string()
            } else {
                format!("signal {sig}")
            };
            self.interrupt(now, why);
        }
        if self.run_panicked.raised() && self.fatal.is_none() {
            let what = match self.run_panicked.first() {
                Some(first) => format!(": {first}"),
                None => String::new(),
            };
            self.fatal_error(
                now,
                FaultKind::Panic,
                format!("a thread of the controller panicked{what}"),
            );
        }
        if let Some(limit) = self.cfg.duration
            && self.stopping.is_none()
            && now.saturating_duration_since(self.start) >= limit
        {
            self.interrupt(now, "run duration reached".into());
        }
        if self.phase == Phase::Running
            && let Some(t) = &self.track
        {
            let age = now.saturating_duration_since(t.newest_rx);
            if age > self.stale {
                let detail = format!(
                    "no new sensor frame for {:.1} ms (limit {:.1} ms)",
                    age.as_secs_f64() * 1e3,
                    self.stale.as_secs_f64() * 1e3
                );
                self.fault(now, FaultKind::StaleSensor, detail, None);
            } else if self.cfg.max_consecutive_overruns > 0
                && self.consecutive_overruns >= self.cfg.max_consecutive_overruns
            {
                let detail = format!("{} deadlines in a row missed", self.consecutive_overruns);
                self.fault(now, FaultKind::DeadlineMissed, detail, None);
            }
        }
    }

    /// One operator command (see [`super::operator`]).
    fn on_operator(&mut self, now: Instant, c: OperatorCommand) {
        let console = self.console.clone();
        let note = |what: &str| say_line(console.as_ref(), format!("operator: {what}"));
        let running = self.phase == Phase::Running && self.track.is_some();
        match c {
            OperatorCommand::Success | OperatorCommand::Failure | OperatorCommand::Reset
                if !running =>
            {
                self.report.operator.ignored += 1;
                note("no episode is running; command ignored");
            }
            OperatorCommand::Success | OperatorCommand::Failure | OperatorCommand::Reset
                if self.track.as_ref().is_some_and(|t| !t.takes_label_at(now)) =>
            {
                self.report.operator.ignored += 1;
                let what = match c {
                    OperatorCommand::Reset => "reset",
                    _ => "label",
                };
                note(&format!(
                    "{what} ignored: this episode began less than {} ms ago (a press meant \
                     for the one before?); press again to {what} this one",
                    LABEL_GRACE.as_millis()
                ));
            }
            OperatorCommand::Success | OperatorCommand::Failure => {
                self.operator_end(now, c == OperatorCommand::Success);
                self.report.operator.labels += 1;
            }
            OperatorCommand::Reset => {
                self.report.operator.resets += 1;
                // The firmware's episode ends with our next Reset.
                self.finish_episode(now, EndReason::Interrupted, "reset by the operator".into());
                self.phase = Phase::Idle;
            }
            OperatorCommand::ToggleIntervention => {
                self.intervention = !self.intervention;
                self.report.operator.intervention_toggles += 1;
                // The operator takes over or hands back: the robot is off the plan.
                self.brain.replan();
                note(if self.intervention {
                    "intervention on"
                } else {
                    "intervention off"
                });
            }
            OperatorCommand::Pause => {
                self.paused = true;
                note(if matches!(self.phase, Phase::Starting { .. }) {
                    "paused: the episode starting now ends before its first command; no new \
                     episode starts until `c`"
                } else {
                    "paused: no new episode starts until `c`"
                });
            }
            OperatorCommand::Continue => {
                self.paused = false;
                note("continuing");
            }
            OperatorCommand::Quit => {
                if self.stopping.is_none() {
                    self.interrupt(now, "quit by the operator".into());
                }
            }
        }
    }

    /// Ends the running episode with the operator's label: its last transition is the
    /// one into the newest frame (waited for in `Ending`, like the firmware's last).
    fn operator_end(&mut self, now: Instant, success: bool) {
        let Some(t) = self.track.as_mut() else { return };
        t.label = Some(success);
        t.final_step = Some(t.newest.unwrap_or(0));
        self.phase = Phase::Ending {
            until: now + self.period * 10,
        };
    }

    /// Records the torque-off `Estop` this tick wrote: its answer is owed, and the
    /// torque-off goes in the run's list and to the faults held since the stop under
    /// way began (a link loss whose own stop could send no Estop gets the Estop of a
    /// later stop, minutes on).
    fn record_torque_off(&mut self) {
        self.estops_unanswered += 1;
        self.torque_off = true;
        let began = self.stop_began;
        for f in self
            .report
            .faults
            .iter_mut()
            .filter(|f| f.torque_off_tick.is_none() && f.hold_tick.is_some_and(|t| t >= began))
        {
            f.torque_off_tick = Some(self.tick);
        }
        self.report.torque_off_ticks.push(self.tick);
    }

    /// The run's closing `Estop` has been answered ([`Phase::ConfirmingStop`]).
    fn closing_estop_answered(&self) -> bool {
        matches!(
            self.phase,
            Phase::ConfirmingStop { answers, .. } if self.estop_answers > answers
        )
    }

    /// Waiting from `now` for the answer to the run's closing `Estop` (counted in
    /// `estops_unanswered`; written now, or by a stop just before). The firmware
    /// answers in order: the answers still owed to earlier `Estop`s come first, and the
    /// closing one's only after them (an earlier stop's answer, late, confirmed a
    /// closing `Estop` lost on the line). Those not in by the first resend are taken
    /// for lost ([`Self::confirm_stop`]): an answer from then on confirms the stop.
    fn confirming_stop(&self, now: Instant) -> Phase {
        let earlier_owed = u64::from(self.estops_unanswered.saturating_sub(1));
        Phase::ConfirmingStop {
            until: now + self.estop_answer_wait(),
            resends: 0,
            written: 0,
            answers: self.estop_answers + earlier_owed,
        }
    }

    /// The run's end while re-handshaking with no episode (after a reconnect or a
    /// reboot), whatever ends it, or on a port back after the run's end
    /// ([`Phase::ReconnectingToStop`]): the firmware behind the port holds with its
    /// torque on (`take_writer`; a rebooted one took our `Hello`), and nothing needs
    /// stopping but that. An `Estop`, which a firmware takes before a handshake too,
    /// turns it off, and its answer is awaited as at any run's end (the run ended at
    /// once, leaving the arm energised).
    fn stop_unverified(&mut self, now: Instant) -> Phase {
        let estop = !self.torque_off
            && self.cfg.robot.safety.gravity_safe_torque_off
            && self.gate.writer_open()
            && self.gate.send_control(Message::Estop).is_ok();
        if !estop {
            return Phase::Done;
        }
        self.record_torque_off();
        // The firmware answers in order: our Hello's answer may come first.
        self.hello_owed = true;
        self.confirming_stop(now)
    }

    /// The run's end with the link lost and its torque-off owed (no `Estop` went out,
    /// or its answer never came): with `--reconnect-ms` on a robot whose torque may go
    /// off, waiting for the port to come back to send one there; else done, the arm
    /// held by the firmware's command watchdog with its torque on. (The run ended at
    /// once, and a port back within `--reconnect-ms` got nothing.)
    /// (An I/O thread that has ended is waited for one tick: the wait's end says so and
    /// sets `no_estop_after_loss`.)
    fn stop_after_reconnect(&mut self, now: Instant) -> Phase {
        let Some(limit) = self.cfg.reconnect else {
            return Phase::Done;
        };
        if !self.cfg.robot.safety.gravity_safe_torque_off {
            return Phase::Done;
        }
        if self.stop_port_deadline.is_none() && !self.io_ended && !self.cfg.quiet {
            self.say(format!(
                "the serial link is down at the run's end: waiting up to --reconnect-ms {} \
                 for the port to come back, to send the closing Estop there (a second \
                 Ctrl-C quits)",
                limit.as_millis()
            ));
        }
        Phase::ReconnectingToStop {
            until: *self.stop_port_deadline.get_or_insert(now + limit),
        }
    }

    /// A port back at the run's end ([`Phase::ReconnectingToStop`]): the closing `Estop`
    /// goes out on it first, and its answer is awaited; one that cannot be written is
    /// tried again each tick of the wait.
    ///
    /// The wait for ports back ends at the deadline its first loss set, however often a
    /// port comes back: a port lost and reopened within one drain (a failing cable)
    /// (before, each one started a new confirmation, and the run did not end).
    fn estop_on_the_port_back(&mut self, now: Instant, w: Box<dyn std::io::Write + Send>) {
        self.stop_ports_back += 1;
        if let Some(limit) = self.cfg.reconnect {
            if self.stop_port_deadline.is_none() && !self.cfg.quiet {
                // Back in the drain of its loss: the wait's own message never came.
                self.say(format!(
                    "the serial link was lost at the run's end and is back: the closing \
                     Estop goes out there, and on ports back up to --reconnect-ms {} from \
                     now (a second Ctrl-C quits)",
                    limit.as_millis()
                ));
            }
            let deadline = *self.stop_port_deadline.get_or_insert(now + limit);
            if now >= deadline {
                // Not taken: this tick ends the wait, the Estop unconfirmed.
                drop(w);
                self.phase = Phase::ReconnectingToStop { until: deadline };
                return;
            }
        }
        // (It answers none of the Estops sent before it came back: forgotten as it did.)
        self.take_writer(w);
        if !self.estop_or_wait(now) && !self.cfg.quiet {
            self.say(
                "the closing Estop could not be written on the port that came back: trying \
                 again each tick of the wait"
                    .into(),
            );
        }
    }

    /// The closing `Estop` on a port back: written, its answer awaited (true); else the
    /// wait goes on, to try again.
    fn estop_or_wait(&mut self, now: Instant) -> bool {
        self.phase = self.stop_unverified(now);
        if self.phase != Phase::Done {
            return true;
        }
        self.phase = self.stop_after_reconnect(now);
        false
    }

    /// Ends the run: safe stop, then exit.
    fn interrupt(&mut self, now: Instant, why: String) {
        self.stopping = Some(Outcome::Interrupted);
        match self.phase {
            Phase::SafeStop { left, .. } => {
                self.phase = Phase::SafeStop {
                    left,
                    then: After::Exit,
                }
            }
            // The run's last stop is done; its Estop's answer (or port) is awaited.
            Phase::Done | Phase::ConfirmingStop { .. } | Phase::ReconnectingToStop { .. } => {}
            Phase::Handshaking { .. } if self.track.is_none() => {
                self.phase = self.stop_unverified(now);
            }
            _ => {
                self.close_later(now, EndReason::Interrupted, why);
                self.enter_safe_stop(After::Exit);
            }
        }
    }

    /// Ends the running episode, cut short by `cause`, while the safe stop runs: it
    /// waits in `closing` for the frames of its last steps still on the line (a
    /// labelled end's last `Reward`, with its success) and is closed by
    /// `close_faulted` (this tick's, at the latest after [`CLOSING_PERIODS`]).
    fn close_later(&mut self, now: Instant, cause: EndReason, why: String) {
        if self.track.is_none() {
            return;
        }
        let (reason, detail) = self.cut_short(cause, why);
        let cadence = self.take_cadence();
        if let Some(mut track) = self.track.take() {
            // Its transitions end at the newest step heard of: the robot's frames
            // after it are the safe stop's.
            track.final_step = track.final_step.or(Some(track.newest.unwrap_or(0)));
            self.last_finished = Some(Finished::of(&track));
            self.closing = Some(Closing {
                track,
                reason,
                detail,
                ended: now,
                until: now + self.period * CLOSING_PERIODS,
                cadence,
            });
        }
    }

    /// How the episode ends when `cause` cuts it short: as `otherwise`, unless it was
    /// already ending (the firmware ended it, or the operator labelled it), which ends
    /// as it would have at its deadline, `cause` in its detail. (Such an episode was
    /// filed as interrupted or faulted, left out of the success rate while its log held
    /// the labelled end.)
    fn cut_short(&self, otherwise: EndReason, cause: String) -> (EndReason, String) {
        match self.phase {
            Phase::Ending { .. } => {
                let (reason, how) = self.ending_reason();
                (reason, format!("{how} ({cause})"))
            }
            _ => (otherwise, cause),
        }
    }

    /// How an episode in [`Phase::Ending`] ends: completed by the firmware, or labelled
    /// by the operator.
    fn ending_reason(&self) -> (EndReason, &'static str) {
        match self.track.as_ref().and_then(|t| t.label) {
            None => (EndReason::Completed, "ended by the firmware"),
            Some(true) => (EndReason::Labelled, "labelled a success by the operator"),
            Some(false) => (EndReason::Labelled, "labelled a failure by the operator"),
        }
    }

    /// A fault: end the episode, safe stop, then continue or exit. `after` overrides
    /// what follows the safe stop (handshake after a firmware reset, and so on).
    pub(crate) fn fault(
        &mut self,
        now: Instant,
        kind: FaultKind,
        detail: String,
        after: Option<After>,
    ) {
        if self.phase == Phase::Done {
            return;
        }
        // A hardware fault in the run's last stop (its hold, or the wait for its Estop's
        // answer): not a run that ended well (a wrapper restarting those would restart
        // on it).
        if kind == FaultKind::FirmwareFault
            && self.stopping == Some(Outcome::Completed)
            && matches!(
                self.phase,
                Phase::SafeStop { .. } | Phase::ConfirmingStop { .. }
            )
        {
            self.stopping = Some(Outcome::StoppedByFault);
        }
        if matches!(self.phase, Phase::ReconnectingToStop { .. }) {
            // No port to hold on: recorded, and the wait for the port back goes on.
            if !self.cfg.quiet {
                self.say(format!("FAULT at tick {}: {kind:?}: {detail}", self.tick));
            }
            self.note_fault(now, kind, detail);
            return;
        }
        if matches!(self.phase, Phase::ConfirmingStop { .. }) {
            // The torque is off and the run ending: recorded, nothing more to stop...
            if !self.cfg.quiet {
                self.say(format!("FAULT at tick {}: {kind:?}: {detail}", self.tick));
            }
            self.note_fault(now, kind, detail);
            // A link lost before the closing Estop's answer came: that Estop may never
            // have left the computer (writes do not wait for the line), so a run that
            // was ending complete ends stopped by the loss (exit 3), as one lost during
            // the closing hold does; the firmware's command watchdog holds the arm.
            if kind == FaultKind::LinkLost
                && !self.closing_estop_answered()
                && matches!(self.stopping, None | Some(Outcome::Completed))
            {
                self.stopping = Some(Outcome::StoppedByFault);
            }
            if !self.torque_off {
                // ...unless the firmware rebooted: its torque is on again, and it
                // answers no Estop sent before. The run's last stop starts over (hold,
                // then a new Estop, whose answer is awaited).
                if matches!(self.stopping, None | Some(Outcome::Completed)) {
                    self.stopping = Some(Outcome::StoppedByFault);
                }
                self.enter_safe_stop(After::Exit);
            }
            return;
        }
        let (episode, step) = self
            .track
            .as_ref()
            .map_or((None, None), |t| (Some(t.number), t.newest));
        if !self.cfg.quiet {
            self.say(format!("FAULT at tick {}: {kind:?}: {detail}", self.tick));
        }
        self.report.faults.push(FaultEvent {
            kind,
            detail: detail.clone(),
            tick: self.tick,
            at_s: now.saturating_duration_since(self.start).as_secs_f64(),
            episode,
            step,
            hold_tick: None,
            hold_latency_us: None,
            torque_off_tick: None,
            during_safe_stop: matches!(self.phase, Phase::SafeStop { .. }),
        });
        if let Phase::SafeStop { left, then } = self.phase {
            // The robot is being held already; this fault's own hold is the next one
            // sent (none once torque is off).
            if !self.torque_off {
                self.hold_pending.push(self.report.faults.len() - 1);
            }
            // Already stopping: keep holding; a later fault can only make the
            // continuation stricter (a reboot's handshake during a reconnect's stop
            // took its place, and the port back meanwhile was never used).
            let then = match after {
                Some(a) => then.max(a),
                None => then,
            };
            // A fault that ends the run by itself, or a lost link (with `--reconnect-ms`
            // too: its writer is closed), makes a run that was ending complete one
            // stopped by it: its closing hold and torque-off may not have reached the
            // robot (as for a stop button, `emergency_stop`).
            // (A hardware fault too: above.)
            let ends_run = after == Some(After::Exit) || kind == FaultKind::LinkLost;
            if (then == After::Exit && self.stopping.is_none())
                || (ends_run && self.stopping == Some(Outcome::Completed))
            {
                self.stopping = Some(Outcome::StoppedByFault);
            }
            self.phase = Phase::SafeStop { left, then };
            return;
        }
        self.fault_count += 1;
        if matches!(self.phase, Phase::Starting { .. }) && self.track.is_none() {
            self.start_abandoned = true;
        }
        self.close_later(now, EndReason::Fault, format!("{kind:?}: {detail}"));
        // None once the torque is off: nothing is held then (a pending entry left here
        // was stamped by a later stop's first hold, and ran the stop's ticks twice).
        if !self.torque_off {
            self.hold_pending.push(self.report.faults.len() - 1);
        }
        let mut then = after.unwrap_or(After::Idle);
        if self.stopping.is_some() {
            then = After::Exit;
        } else if self.fault_count > self.cfg.max_faults
            && !matches!(then, After::Exit | After::Reconnect)
        {
            // (A link loss the run was told to reopen after, `--reconnect-ms`, is not
            // ended by the fault budget: reopening is what the flag asks for. It ended
            // the run at the default `--max-faults 0`, the port reopened for nothing.
            // The fault still counts against later ones.)
            self.stopping = Some(Outcome::StoppedByFault);
            then = After::Exit;
        }
        if then == After::Exit && self.stopping.is_none() {
            self.stopping = Some(Outcome::StoppedByFault);
        }
        if let Some(t) = self.teleop.as_mut() {
            // A device still engaged does not drive the next episode until it lets go.
            t.require_release();
        }
        self.enter_safe_stop(then);
    }

    fn fatal_error(&mut self, now: Instant, kind: FaultKind, detail: String) {
        if self.fatal.is_none() {
            self.fatal = Some(detail.clone());
        }
        self.stopping = Some(Outcome::Error);
        self.end_run_after(now, kind, detail);
    }

    /// The robot's stop button: the run ends (exit status 3, whatever else ended it), so
    /// that a wrapper that restarts runs ending well does not release it.
    fn emergency_stop(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            self.report.ignored_firmware_faults += 1;
            return;
        }
        if self.stopping != Some(Outcome::Error) {
            self.stopping = Some(Outcome::StoppedByFault);
        }
        self.end_run_after(
            now,
            FaultKind::EmergencyStop,
            "the firmware reported an emergency stop this controller did not send (a stop \
             button?): the run ends, so that no Reset releases it"
                .into(),
        );
    }

    /// A fault that ends the run: through a safe stop, or, before the handshake has
    /// verified the firmware, at once, without moving the robot: its torque turned off
    /// ([`Control::stop_unverified`]), unless its own stop button stopped it or it is
    /// not our robot's (a refused `Hello` or protocol version: as at the first
    /// handshake, nothing is sent to a robot whose file we do not have).
    fn end_run_after(&mut self, now: Instant, kind: FaultKind, detail: String) {
        if matches!(self.phase, Phase::Handshaking { .. }) && self.track.is_none() {
            self.note_fault(now, kind, detail);
            self.phase = if matches!(kind, FaultKind::EmergencyStop | FaultKind::Handshake) {
                Phase::Done
            } else {
                self.stop_unverified(now)
            };
            return;
        }
        self.fault(now, kind, detail, Some(After::Exit));
    }

    /// Records a fault outside any episode that takes no safe stop of its own (the run
    /// ends at once, or is in its safe stop already).
    fn note_fault(&mut self, now: Instant, kind: FaultKind, detail: String) {
        self.report.faults.push(FaultEvent {
            kind,
            detail,
            tick: self.tick,
            at_s: now.saturating_duration_since(self.start).as_secs_f64(),
            episode: None,
            step: None,
            hold_tick: None,
            hold_latency_us: None,
            torque_off_tick: None,
            // (The run's last stop, its torque off, awaiting the Estop's answer.)
            during_safe_stop: matches!(
                self.phase,
                Phase::SafeStop { .. }
                    | Phase::ConfirmingStop { .. }
                    | Phase::ReconnectingToStop { .. }
            ),
        });
    }

    fn enter_safe_stop(&mut self, then: After) {
        if !matches!(self.phase, Phase::SafeStop { .. }) {
            self.stop_began = self.tick;
        }
        // Each stop has its own tries at writing its Estop.
        self.estop_write_failures = 0;
        let hold = self.cfg.robot.safety.hold_ticks_before_torque_off.max(1);
        self.phase = Phase::SafeStop { left: hold, then };
    }

    /// A firmware that restarted, or one behind a reopened port, numbers its frames
    /// afresh and answers no Estop sent before: an answer still counted as ours would
    /// swallow a stop button's `Fault { Estop }`.
    fn forget_firmware_answers(&mut self) {
        self.estop_answer_seq = None;
        self.fallback_seq = None;
        self.hardware_fault_seq = None;
        self.estops_unanswered = 0;
        self.late_estop_answers = 0;
    }

    /// Writes go to a reopened port from now on. The firmware behind it holds with its
    /// own hold action and its torque on, whatever was sent before (the answers owed to
    /// `Estop`s sent before were forgotten as the port came back,
    /// `LinkEvent::Reconnected`).
    fn take_writer(&mut self, w: Box<dyn std::io::Write + Send>) {
        self.gate.set_writer(w);
        self.link_down = false;
        self.torque_off = false;
    }

    /// A new handshake (after a reboot's or a lost link's safe stop). A firmware that
    /// takes its `Hello` leaves any earlier stop and holds with its torque on
    /// (protocol.rs, "Stops"), whether or not its answer reaches us: the
    /// `Estop` sent before no longer turns the torque off, and the run's end (or a
    /// stop while the handshake lasts) sends a new one. (It ended the run without any
    /// after a reboot: the reboot's safe stop had sent one.)
    fn enter_handshake(&mut self, now: Instant) {
        self.phase = Phase::Handshaking {
            since: now,
            last_hello: now,
        };
        self.torque_off = false;
        let _ = self.gate.send_control(Message::Hello(self.hello));
    }

    // ---------------------------------------------------------------- phases

    /// What follows the safe stop of a write that failed: with `--reconnect-ms`, waiting
    /// for the port to come back, as after the reader's loss (the write usually fails a
    /// tick before the reader notices; its fault ended the run by the fault budget, and
    /// the reopened port went unused), bounded by the reconnect time.
    fn after_write_failure(&self) -> Option<After> {
        self.cfg.reconnect.map(|_| After::Reconnect)
    }

    /// Adds the running policy's candidate ages (two-speed mode) to the report's, before
    /// a swap drops the policy and at the end of the run.
    pub(super) fn fold_candidate_ages(&mut self) {
        let ages = self.brain.candidate_ages();
        self.fold_ages(ages);
    }

    /// A two-speed policy's candidate ages (`None`: not one) into the run's report.
    fn fold_ages(&mut self, ages: Option<super::CandidateAges>) {
        if let Some(a) = ages {
            self.report.two_speed.get_or_insert_default().merge(&a);
        }
    }

    fn step_phase(&mut self, now: Instant) {
        match self.phase {
            Phase::Idle => {
                let wanted = self.cfg.episodes.is_none_or(|n| self.episodes_begun < n);
                if self.stopping.is_some() || !wanted {
                    self.stopping.get_or_insert(Outcome::Completed);
                    self.enter_safe_stop(After::Exit);
                    // Nothing is moving: the exit safe stop starts next tick.
                    return;
                }
                if self.paused {
                    return;
                }
                // Between episodes: the only place the policy may change.
                let mut old_ages = None;
                if let Some(slot) = &self.swaps
                    && let Some(name) = slot.swap_into(&mut self.brain, |old| {
                        old_ages = old.candidate_ages();
                    })
                {
                    self.fold_ages(old_ages);
                    self.report.bundle_swaps.push(super::BundleSwap {
                        bundle: name,
                        first_episode: self.episodes_started,
                        tick: self.tick,
                    });
                }
                let seed = self.cfg.seed.wrapping_add(self.episodes_started as u64);
                self.episodes_started += 1;
                self.brain.new_episode();
                self.commands.clear();
                self.torque_off = false;
                if let Err(e) = self.gate.send_control(Message::Reset { seed }) {
                    let after = self.after_write_failure();
                    self.fault(
                        now,
                        FaultKind::LinkLost,
                        format!("writing Reset: {e}"),
                        after,
                    );
                    return;
                }
                self.phase = Phase::Starting {
                    since: now,
                    attempts: 1,
                    seed,
                };
            }
            Phase::Starting {
                since,
                attempts,
                seed,
            } => {
                // Generous: every repeated Reset restarts the episode on the firmware.
                let wait = (self.period * 40).max(Duration::from_secs(2));
                if now.saturating_duration_since(since) > wait {
                    if attempts >= 3 {
                        self.fatal_error(
                            now,
                            FaultKind::NoEpisodeStart,
                            format!(
                                "the firmware did not start an episode after {attempts} Resets"
                            ),
                        );
                    } else {
                        if attempts == 1 {
                            // A firmware that rebooted and whose `Hello` was lost on the
                            // line waits, silent, for a handshake and takes no `Reset`: a
                            // `Hello` goes first (answered, it counts as a late answer,
                            // `ignored_hellos`). Still in this phase, so a stop or a fault
                            // now takes the safe stop. A firmware that was only slow
                            // leaves its episode for the one this `Reset` starts; a
                            // rebooted one counts its episodes from 0 again.
                            let _ = self.gate.send_control(Message::Hello(self.hello));
                            self.report.start_handshakes += 1;
                            if let Some(f) = self.last_finished.as_mut() {
                                f.numbering_may_restart = true;
                            }
                        }
                        let _ = self.gate.send_control(Message::Reset { seed });
                        self.phase = Phase::Starting {
                            since: now,
                            attempts: attempts + 1,
                            seed,
                        };
                    }
                }
            }
            Phase::Running => self.act(now),
            Phase::Ending { until } => {
                let complete = self.track.as_ref().is_some_and(|t| {
                    // A labelled episode goes on on the firmware until our Reset.
                    t.final_step.is_some_and(|f| t.next_emit >= f)
                        && (t.fw_end.is_some() || t.label.is_some())
                });
                if complete || now >= until {
                    let (reason, detail) = self.ending_reason();
                    self.finish_episode(now, reason, detail.into());
                    self.phase = Phase::Idle;
                }
            }
            Phase::SafeStop { left, then } => self.safe_stop_tick(now, left, then),
            Phase::Handshaking { since, last_hello } => {
                if now.saturating_duration_since(since) > self.cfg.handshake_timeout {
                    self.fatal = Some(format!(
                        "no Hello from the firmware on {} within {:?}",
                        self.cfg.port.display(),
                        self.cfg.handshake_timeout
                    ));
                    self.stopping = Some(Outcome::Error);
                    // A firmware whose answers are lost may have taken a Hello.
                    self.phase = self.stop_unverified(now);
                } else if now.saturating_duration_since(last_hello) > Duration::from_millis(250) {
                    let _ = self.gate.send_control(Message::Hello(self.hello));
                    self.phase = Phase::Handshaking {
                        since,
                        last_hello: now,
                    };
                }
            }
            Phase::Reconnecting { until } => {
                // The I/O thread reopens the port; ended (its own wait, which began at
                // the loss, before the safe stop, ran out; or it could not hand a port
                // back), nothing will come back.
                if now >= until || self.io_ended {
                    let ms = self.cfg.reconnect.unwrap_or_default().as_millis();
                    let why = if now >= until {
                        format!("could not be reopened within --reconnect-ms {ms}")
                    } else {
                        format!(
                            "was not reopened: the serial I/O thread ended before \
                             --reconnect-ms {ms} ran out"
                        )
                    };
                    let port = self.cfg.port.display();
                    self.fatal = Some(format!("the serial link did not come back: {port} {why}"));
                    self.stopping = Some(Outcome::Error);
                    self.phase = Phase::Done;
                }
            }
            Phase::ConfirmingStop {
                until,
                resends,
                written,
                answers,
            } => self.confirm_stop(now, until, (resends, written), answers),
            Phase::ReconnectingToStop { until } => {
                // A port back whose Estop could not be written.
                let back = !self.link_down && self.gate.writer_open();
                // The I/O thread ends when its own reopening gives up.
                if now >= until || (self.io_ended && !back) {
                    if !self.cfg.quiet {
                        let what = if back {
                            "the closing Estop could not be written on the port that came back"
                                .to_string()
                        } else if self.stop_ports_back > 0 {
                            format!(
                                "the port came back {} and never answered the closing Estop",
                                match self.stop_ports_back {
                                    1 => "once".to_string(),
                                    n => format!("{n} times"),
                                }
                            )
                        } else {
                            "the serial link did not come back".to_string()
                        };
                        self.say(format!(
                            "{what} within --reconnect-ms {}: the closing Estop was not \
                             confirmed after the loss, the arm may still be energised, held \
                             by the firmware's watchdog",
                            self.cfg.reconnect.unwrap_or_default().as_millis()
                        ));
                    }
                    self.report.no_estop_after_loss = true;
                    self.phase = Phase::Done;
                } else if back {
                    self.estop_or_wait(now);
                }
            }
            Phase::Done => {}
        }
    }

    /// How long the closing `Estop`'s answer is waited for before it is sent again: a
    /// firmware answers within its next step, and a link slower than the stale-sensor
    /// limit is faulty anyway (that limit, at least 4 periods and 100 ms).
    fn estop_answer_wait(&self) -> Duration {
        estop_answer_wait(self.period, self.stale)
    }

    /// [`Phase::ConfirmingStop`]: done once the firmware answered the closing `Estop`;
    /// else it goes out again after each wait, and after [`ESTOP_RESENDS`] unanswered
    /// the run ends with an error (the arm may be energised, held by the firmware).
    fn confirm_stop(
        &mut self,
        now: Instant,
        until: Instant,
        (resends, mut written): (u32, u32),
        answers: u64,
    ) {
        if self.estop_answers > answers {
            self.phase = Phase::Done;
            return;
        }
        if self.link_down {
            // The loss's own fault has said that the link is gone; a port back may
            // take the Estop.
            self.phase = self.stop_after_reconnect(now);
            return;
        }
        if now < until {
            return;
        }
        if resends < ESTOP_RESENDS {
            if self.gate.send_control(Message::Estop).is_ok() {
                self.estops_unanswered += 1;
                self.report.estop_resends += 1;
                written += 1;
            }
            // Answers still owed to earlier `Estop`s after a whole wait are lost (a
            // firmware answers within its next step; a port reopened since answers
            // nothing sent before): from now on any answer is to one of the closing
            // `Estop`s, so stale counts cost one resend, not a false "unanswered".
            self.phase = Phase::ConfirmingStop {
                until: now + self.estop_answer_wait(),
                resends: resends + 1,
                written,
                answers: answers.min(self.estop_answers),
            };
            return;
        }
        // (A resend whose write failed went nowhere: it is not counted as sent.)
        let why = format!(
            "the firmware did not answer the closing Estop (sent {} times, {} ms apart{}): \
             the arm may still be energised, held by the firmware's watchdog",
            written + 1,
            self.estop_answer_wait().as_millis(),
            if written < resends {
                format!("; {} resends could not be written", resends - written)
            } else {
                String::new()
            }
        );
        self.report.unanswered_estop = true;
        // An error whatever else ended the run (the report's outcome follows it).
        if self.fatal.is_none() {
            self.fatal = Some(why);
        }
        self.phase = Phase::Done;
    }

    fn safe_stop_tick(&mut self, now: Instant, left: u32, then: After) {
        let mut before = [0.0f32; MAX_ACT];
        before[..self.ad].copy_from_slice(&self.gate.last()[..self.ad]);
        if !self.torque_off {
            let _ = self.gate.send_hold();
            // To the end of the write: the tick's own `now` is taken before it (a fault
            // found in this tick's checks read 0 µs).
            let written = Instant::now().saturating_duration_since(self.start);
            for i in std::mem::take(&mut self.hold_pending) {
                let f = &mut self.report.faults[i];
                f.hold_tick = Some(self.tick);
                f.hold_latency_us = Some((written.as_secs_f64() - f.at_s).max(0.0) * 1e6);
            }
        }
        let left = left.saturating_sub(1);
        // The hold ticks count down, and the torque goes off only once the firmware has
        // had the hold action for a period: a robot file whose
        // `hold_ticks_before_torque_off` is shorter than the ramp at `max_delta_per_tick`
        // gets the ticks the ramp needs, and one more after the tick that reached the
        // hold (an Estop right behind that command would cut the ramp's last step). Every
        // hold step moves the reference by the full delta, written or not, so that is a
        // bounded number, unless a delta below the f32 resolution makes no progress.
        let last = self.gate.last();
        let ramping = !self.torque_off && last[..self.ad] != before[..self.ad];
        if left > 0 || ramping {
            self.phase = Phase::SafeStop { left, then };
            return;
        }
        // A lost link's writer is kept without `--reconnect-ms` (its read side may be
        // what failed): the torque-off is tried there as the holds were. With it, the
        // writer is closed, and a port back meanwhile waits for its handshake; if the run
        // ends here instead, that port takes the Estop (its firmware holds with its
        // torque on, and takes an Estop before a handshake too). One whose
        // I/O thread ended without reporting a loss (a panic) is kept either way: it
        // was judged by `--reconnect-ms` alone, and its stop sent no Estop on a port
        // that took the holds.
        if then == After::Exit
            && !self.gate.writer_open()
            && let Some(w) = self.pending_writer.take()
        {
            // It answers none of the Estops sent before it came back (forgotten as it
            // did, `LinkEvent::Reconnected`); a board that reset as its port opened
            // announces itself with a Hello before it answers this one, which is no
            // reboot. (One Hello is excused, whatever its number: a reboot's then is
            // taken alike, and the resent Estop reaches it.)
            self.take_writer(w);
            self.hello_owed = true;
            // A port back that takes the closing Estop, as in the wait for one: lost
            // again unanswered, the wait's end says it came back (it said the link never
            // did).
            self.stop_ports_back += 1;
        }
        let writable = self.gate.writer_open();
        let mut estop_sent = false;
        if !self.torque_off && self.cfg.robot.safety.gravity_safe_torque_off && writable {
            match self.gate.send_control(Message::Estop) {
                Ok(()) => {
                    estop_sent = !self.link_down;
                    self.estop_write_failures = 0;
                    self.record_torque_off();
                }
                Err(_) if self.link_down => {
                    // The link is lost already and its fault ends the run or waits for
                    // it: no retries. The fault's missing torque-off tick records that
                    // none went out; the firmware's command watchdog holds the arm.
                    self.estop_write_failures = 0;
                }
                Err(e) => {
                    // Not written, so the torque is still on: hold and try again next
                    // tick. A link that stays unwritable ends the run with the error;
                    // the firmware's command watchdog then holds the arm.
                    self.estop_write_failures += 1;
                    if self.estop_write_failures < ESTOP_WRITE_TRIES {
                        self.phase = Phase::SafeStop { left: 0, then };
                        return;
                    }
                    let why = format!(
                        "the Estop that turns the torque off could not be written in {} \
                         ticks ({e}): the arm may still be energised, held by the firmware",
                        self.estop_write_failures
                    );
                    self.estop_write_failures = 0;
                    self.note_fault(now, FaultKind::LinkLost, why.clone());
                    if !self.cfg.quiet {
                        self.say(format!("FAULT at tick {}: LinkLost: {why}", self.tick));
                    }
                    if self.fatal.is_none() {
                        self.fatal = Some(why);
                    }
                    self.stopping = Some(Outcome::Error);
                    self.phase = Phase::Done;
                    return;
                }
            }
        }
        self.phase = match then {
            After::Idle => Phase::Idle,
            // Its answer awaited: a stop lost on the line left the torque on. So is that of
            // an earlier stop's Estop still unanswered (a stop that went idle, then the
            // run's end).
            After::Exit
                if estop_sent
                    || (self.torque_off && self.estops_unanswered > 0 && !self.link_down) =>
            {
                self.confirming_stop(now)
            }
            // The link is lost and no Estop reached the firmware: a port back may take it.
            After::Exit if self.link_down && (!self.torque_off || self.estops_unanswered > 0) => {
                self.stop_after_reconnect(now)
            }
            After::Exit => Phase::Done,
            After::Handshake => {
                self.enter_handshake(now);
                self.phase
            }
            After::Reconnect => {
                if let Some(w) = self.pending_writer.take() {
                    self.take_writer(w);
                }
                if self.link_down {
                    Phase::Reconnecting {
                        until: now + self.cfg.reconnect.unwrap_or_default(),
                    }
                } else {
                    self.enter_handshake(now);
                    self.phase
                }
            }
        };
    }

    /// Counts the frame of `step` (in `self.obs`), acted on, where an observation lies
    /// outside the running bundle's bounds (a robot bundle's are the range of the data
    /// its run trained on; a simulated task's, the task's): a state the policy learned
    /// nothing about (the frame may have been the teleop device's to act on). Not a
    /// fault: online fine-tuning explores there. The first is said in the episode's
    /// report (one allocation per episode, there).
    fn count_outside_bounds(&mut self, step: u32) {
        let (Some(p), Some(t)) = (self.brain.policy(), self.track.as_mut()) else {
            return;
        };
        let o = &p.manifest.observation;
        let obs = &self.obs[..self.od];
        let Some(i) = (0..obs.len()).find(|&i| !(o.low[i]..=o.high[i]).contains(&obs[i])) else {
            return;
        };
        t.outside_bounds += 1;
        if t.outside_bounds_first.is_none() {
            let name = o.names.get(i).map_or(String::new(), |n| format!(" `{n}`"));
            t.outside_bounds_first = Some(format!(
                "observation[{i}]{name} = {} at step {step}, outside [{}, {}]",
                obs[i], o.low[i], o.high[i]
            ));
        }
    }

    /// One policy step on the newest sensor frame, if there is a new one.
    fn act(&mut self, now: Instant) {
        let Some(t) = &self.track else { return };
        let Some(step) = t.newest else { return };
        if t.acted.is_some_and(|a| a >= step) {
            return;
        }
        let Some(s) = t.sensor(step).copied() else {
            return;
        };
        let od = self.od;
        self.obs[..od].copy_from_slice(&s.obs[..od]);
        if let Some(i) = self.obs[..od].iter().position(|x| !x.is_finite()) {
            let detail = format!("observation[{i}] of step {step} is {}", self.obs[i]);
            self.report.nan_observations += 1;
            self.fault(now, FaultKind::NonFiniteObservation, detail, None);
            return;
        }
        if let Some(c) = self
            .joint_checks
            .iter()
            .find(|c| !(c.min..=c.max).contains(&self.obs[c.index]))
        {
            // Past a limit at an episode's first frame, before any action: most often
            // the robot file's units, not the robot.
            let hint = if step == 0 {
                "; at an episode's first frame this is most often a units mismatch: the \
                 limits are SI (rad, rad/s, m) times the joint's \
                 position_observation_scale or velocity_observation_scale, which must give \
                 the units the firmware sends (`tools robot FILE` prints them)"
            } else {
                ""
            };
            let detail = format!(
                "{} is {} at step {step}, outside [{}, {}]{hint}",
                c.what, self.obs[c.index], c.min, c.max
            );
            self.fault(now, FaultKind::JointLimit, detail, None);
            return;
        }
        let ad = self.ad;
        let episode = self.track.as_ref().map_or(0, |t| t.number);
        // `--teleop-wait-ms`: the device gets this observation first, and its answer is
        // waited for (boundedly) so that it acts on this frame.
        let waited = match self.teleop.as_mut() {
            Some(port) if port.waits(now) => {
                let sent = Instant::now();
                port.send_observation(episode, step, &self.obs[..od]);
                port.await_answer(step, sent);
                true
            }
            _ => false,
        };
        let ti = Instant::now();
        // The teleop device's action replaces the policy's while it is engaged and
        // fresh; the policy does not run then.
        let teleop = self
            .teleop
            .as_ref()
            .and_then(|t| t.action(now, episode, step));
        let r = match teleop {
            Some(a) => {
                self.action[..ad].copy_from_slice(&a[..ad]);
                // The observation was checked finite above; a two-speed worker that
                // refused it would only keep older candidates.
                let _ = self.brain.observe(&self.obs[..od]);
                Ok(None)
            }
            None => self
                .brain
                .act(step as u64, &self.obs[..od], &mut self.action[..ad]),
        };
        // The policy's own action, before shaping, for the rerun recording only.
        let policy_action = self.viz_tx.is_some().then_some(self.action);
        let tf = Instant::now();
        self.ep_cadence.infer.record(tf - ti);
        let choice = match r {
            Ok(c) => c,
            Err(e) => {
                // A failure the policy keeps (a two-speed worker that stopped) ends the
                // run: each episode the fault budget allowed would reset the robot only
                // to fault again.
                if self.brain.cannot_act_again() {
                    let why = format!("{e:#} (the policy cannot act again: the run ends)");
                    self.fault(now, FaultKind::PolicyError, why, Some(After::Exit));
                } else {
                    self.fault(now, FaultKind::PolicyError, format!("{e:#}"), None);
                }
                return;
            }
        };
        let shaped = self
            .envelope
            .shape(&mut self.action[..ad], self.gate.last());
        let shaped = match shaped {
            Ok(s) => s,
            Err(e) => {
                self.report.nan_actions += 1;
                self.fault(now, FaultKind::NonFiniteAction, e.to_string(), None);
                return;
            }
        };
        self.report.clamped += shaped.clamped as u64;
        self.report.rate_limited += shaped.rate_limited as u64;
        // A command is in force from the moment its write starts: the firmware can
        // answer it before `write` returns to us.
        let write_start = Instant::now();
        let sent = self.gate.send_command(&self.action[..ad]);
        let written = Instant::now();
        self.ep_cadence.send.record(written - tf);
        match sent {
            Ok(a) => {
                self.commands.push(SentCommand {
                    at: write_start,
                    action: a,
                    intervention: self.intervention,
                    teleop: teleop.is_some(),
                });
                if let Some(policy_action) = policy_action {
                    let times = (tf - ti, written - tf);
                    let selected = choice.map(|c| c.index);
                    self.record_act(policy_action, shaped, selected, teleop.is_some(), times);
                }
                let lat = written.saturating_duration_since(s.rx);
                let d = self.current_deadline;
                self.acted_age = Some(if s.rx <= d {
                    (d - s.rx).as_nanos() as i128
                } else {
                    -((s.rx - d).as_nanos() as i128)
                });
                self.ep_cadence.latency.record(lat);
                self.ep_cadence.acted_ticks += 1;
                self.torque_off = false;
                if let Some(t) = self.track.as_mut() {
                    t.acted = Some(step);
                    t.steps_acted += 1;
                    t.steps_teleop += teleop.is_some() as u32;
                }
                // Of the frames a command went out for (`steps_acted`).
                self.count_outside_bounds(step);
                let mut lapsed = false;
                if let Some(port) = self.teleop.as_mut() {
                    lapsed = port.commanded(teleop.is_some(), now);
                    if !waited {
                        port.send_observation(episode, step, &self.obs[..od]);
                    }
                }
                if lapsed {
                    let who = match self.brain {
                        Brain::Hold => "the hold action holds the robot",
                        _ => "the policy drives again",
                    };
                    self.say(format!(
                        "teleop: the device went silent while engaged (no datagram within \
                         --teleop-timeout-ms) at episode {episode} step {step}: {who}"
                    ));
                }
            }
            Err(e) => {
                let after = self.after_write_failure();
                self.fault(
                    now,
                    FaultKind::LinkLost,
                    format!("writing a command: {e}"),
                    after,
                );
            }
        }
    }

    /// Copies the policy step into this tick's rerun frame (`--rerun` only).
    fn record_act(
        &mut self,
        policy_action: [f32; MAX_ACT],
        shaped: super::safety::Shaped,
        selected: Option<usize>,
        teleop: bool,
        (infer, send): (Duration, Duration),
    ) {
        let (od, ad) = (self.od, self.ad);
        let mut a = ActFrame {
            od: od as u8,
            ad: ad as u8,
            clamped: shaped.clamped,
            rate_limited: shaped.rate_limited,
            teleop,
            infer_ns: infer.as_nanos() as u64,
            send_ns: send.as_nanos() as u64,
            ..ActFrame::default()
        };
        a.obs[..od].copy_from_slice(&self.obs[..od]);
        a.policy_action = policy_action;
        a.action[..ad].copy_from_slice(&self.action[..ad]);
        // The teleop device's action or the hold action: no candidates to show.
        if let (Some(p), Some(selected)) = (self.brain.policy(), selected) {
            // With action chunks: each candidate's action for this step (its Q value
            // is the whole chunk's).
            let stride = p.chunk_dim();
            let offset = self.brain.chunk_index() * ad;
            if p.q_values().is_empty() {
                // No critic: one chain sample is the whole story.
                a.set_candidates(&p.candidates()[..stride], (stride, offset), 1, &[], Some(0));
            } else {
                let n = p.selection().num_samples;
                let c = p.candidates();
                a.set_candidates(c, (stride, offset), n, p.q_values(), Some(selected));
            }
        }
        self.frame.act = Some(a);
    }

    // ---------------------------------------------------------------- logging

    /// Sends every transition whose pieces are all here; gives up on those whose
    /// pieces cannot come any more.
    fn emit_transitions(&mut self) {
        self.emit(false);
    }

    /// [`Self::emit_transitions`] as the episode ends: a piece still missing will not
    /// come, so every step up to the episode's end whose pieces are not all here is
    /// given up (counted missing), and the whole transitions after it are sent. A piece
    /// lost in the last RING/2 steps held them all back: nothing after the end moved the
    /// horizon past it.
    fn emit_to_end(&mut self) {
        self.emit(true);
    }

    fn emit(&mut self, to_end: bool) {
        if self.panic_repeats {
            panic!("injected panic handing transitions to the log (--inject-panic-repeats)");
        }
        let Some(t) = self.track.as_mut() else { return };
        loop {
            let s = t.next_emit;
            if t.final_step.is_some_and(|f| s >= f) {
                break;
            }
            // (A step number at u32::MAX is the firmware's bug; it has no successor.)
            let Some(s1) = s.checked_add(1) else { break };
            let parts = (t.sensor(s), t.sensor(s1), t.reward(s1));
            if let (Some(a), Some(b), Some(r)) = parts {
                // The action is the one the step applied, as the firmware says. The
                // command it applied (the newest sent by `Sensor t+1` with those
                // values) gives the transition its values bit for bit (the robot units'
                // round trip changes the last bits), its send time and its marks; where
                // the step applied none of them (the slew limit on its way to one, the
                // hold), the command in force does.
                let (ad, tol) = (self.ad, &self.same_action);
                let same =
                    |x: &[f32; MAX_ACT]| (0..ad).all(|i| (x[i] - r.applied[i]).abs() <= tol[i]);
                let applied_by = self.commands.applied_at(b.rx, |c| same(&c.action));
                let in_force = self.commands.in_force_at(b.rx);
                let applied_otherwise = match applied_by {
                    Some((_, newest)) => !newest,
                    // Before the episode's first command: the firmware's hold.
                    None => in_force.is_some() || !same(&[0.0; MAX_ACT]),
                };
                let (sent_at, intervention, teleop) = match applied_by.map(|(c, _)| c).or(in_force)
                {
                    Some(c) => (ns_since(self.start, c.at), c.intervention, c.teleop),
                    None => (0, self.intervention, false),
                };
                let action = applied_by.map_or(r.applied, |(c, _)| c.action);
                let mut tr = Transition {
                    episode: t.number,
                    step: s,
                    obs_dim: self.od as u8,
                    act_dim: self.ad as u8,
                    obs: a.obs,
                    action,
                    reward: r.reward,
                    done: r.done,
                    truncated: r.truncated,
                    success: r.success,
                    intervention,
                    teleop,
                    next_obs: b.obs,
                    obs_fw_us: a.fw_us,
                    next_obs_fw_us: b.fw_us,
                    obs_rx_ns: ns_since(self.start, a.rx),
                    action_sent_ns: sent_at,
                    next_obs_rx_ns: ns_since(self.start, b.rx),
                };
                let mut bonus = 0.0;
                if let Some(label) = t.label
                    && t.final_step == Some(s1)
                {
                    // The operator's label on the episode's last step. A failure ends it
                    // as a truncation (bootstrapping from it stays valid), unless the
                    // firmware's own end of that step was terminal: a label that came
                    // just before its `Reward` frame turned a terminal step into a
                    // truncated one.
                    let terminated = r.done && !r.truncated;
                    tr.done = true;
                    tr.truncated = !label && !terminated;
                    tr.success = label;
                    // A success the firmware itself gave the step has its reward already
                    // (the label added a second: 2.0 on a sparse task).
                    if label && !r.success {
                        bonus = self.cfg.success_reward;
                        tr.reward += bonus;
                    }
                }
                t.next_emit = s1;
                if !tr.is_finite() {
                    t.missing = t.missing.saturating_add(1);
                    continue;
                }
                t.applied_otherwise += u32::from(applied_otherwise);
                // The episode's return (console, report.json) is the dataset's: a step
                // not kept (its reward not finite) adds no bonus either.
                t.ret += bonus;
                let kept = match &self.log_tx {
                    Some(tx) => {
                        let rec = Record::Transition(tr);
                        let sent = if self.log_blocking {
                            tx.send(rec).is_ok()
                        } else {
                            tx.try_send(rec).is_ok()
                        };
                        if sent {
                            self.report.log_sent += 1;
                        } else {
                            self.report.log_drops += 1;
                        }
                        sent
                    }
                    None => true,
                };
                if kept {
                    t.emitted += 1;
                } else {
                    t.dropped += 1;
                }
                continue;
            }
            // Pieces of step s that are still missing once frames well past it have
            // arrived were lost on the link; at the end, all are.
            let keep_from = if to_end {
                match t.final_step.or(t.horizon()) {
                    Some(end) => end,
                    None => break,
                }
            } else {
                let Some(gone_to) = t.horizon().and_then(|h| h.checked_sub(RING as u32 / 2)) else {
                    break;
                };
                gone_to + 1
            };
            if s >= keep_from {
                break;
            }
            // Given up on: skip the whole run of lost steps at once, to the next step
            // whose observation is here or the first one not given up on yet (a wild
            // step number from the firmware must not cost one iteration per step).
            let next_here = t
                .sensors
                .iter()
                .flatten()
                .map(|r| r.step)
                .filter(|&k| k > s)
                .min();
            let mut next = next_here.map_or(keep_from, |k| k.min(keep_from));
            if let Some(f) = t.final_step {
                next = next.min(f);
            }
            let next = next.max(s1);
            t.missing = t.missing.saturating_add(next - s);
            t.next_emit = next;
        }
    }

    fn queue_log(&mut self, rec: Record) {
        if self.log_tx.is_some() {
            self.pending_log.push_back(rec);
            self.flush_log();
        }
    }

    fn flush_log(&mut self) {
        let Some(tx) = &self.log_tx else { return };
        while let Some(rec) = self.pending_log.pop_front() {
            match tx.try_send(rec) {
                Ok(()) => {}
                Err(TrySendError::Full(rec)) => {
                    self.pending_log.push_front(rec);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.report.log_drops += 1;
                }
            }
        }
    }

    /// Closes the running episode: log record, report line, cadence report.
    fn finish_episode(&mut self, now: Instant, reason: EndReason, detail: String) {
        if self.track.is_none() {
            return;
        }
        let cadence = self.take_cadence();
        self.close_track(now, reason, detail, cadence);
    }

    /// The running episode's cadence, folded into the run's: the ticks after it are
    /// another episode's or between episodes.
    fn take_cadence(&mut self) -> CadenceReport {
        let cadence = self.ep_cadence.report(self.cfg.target_hz());
        self.fold_cadence();
        cadence
    }

    /// Ends the faulted episode waiting in `closing` once its last transitions are in,
    /// its wait is over, or the safe stop has ended (a new episode, a handshake or the
    /// run's end must not find it still open). Its frames reach it meanwhile.
    fn close_faulted(&mut self, now: Instant) {
        let Some(mut c) = self.closing.take() else {
            return;
        };
        // `emit_transitions` and `close_track` work on `self.track`.
        let running = self.track.replace(c.track);
        self.emit_transitions();
        let complete = self
            .track
            .as_ref()
            .is_some_and(|t| t.final_step.is_some_and(|f| t.next_emit >= f));
        let stopping = matches!(self.phase, Phase::SafeStop { .. });
        if complete || !stopping || now >= c.until {
            self.close_track(c.ended, c.reason, c.detail, c.cadence);
            self.track = running;
        } else if let Some(track) = std::mem::replace(&mut self.track, running) {
            c.track = track;
            self.closing = Some(c);
        }
    }

    /// Ends the faulted episode in `closing` now, with the frames it has.
    fn end_closing(&mut self, now: Instant) {
        if let Some(c) = self.closing.as_mut() {
            c.until = now;
        }
        self.close_faulted(now);
    }

    /// The episode's end in the log, the report and the console.
    fn close_track(
        &mut self,
        now: Instant,
        reason: EndReason,
        detail: String,
        cadence: CadenceReport,
    ) {
        self.emit_to_end();
        let Some(mut t) = self.track.take() else {
            return;
        };
        let steps = t.steps();
        // Steps the firmware took that never became transitions.
        let covered = t.next_emit;
        if reason == EndReason::Completed && steps > covered {
            t.missing = t.missing.saturating_add(steps - covered);
        }
        self.last_finished = Some(Finished::of(&t));
        let success = match t.label {
            Some(label) => label,
            None => t.fw_end.map_or(t.success, |(s, _)| s || t.success),
        };
        self.queue_log(Record::EpisodeEnd(EpisodeEnd {
            episode: t.number,
            seed: t.seed,
            steps,
            success,
            reason,
            detail: detail.clone(),
        }));
        let elapsed = now.saturating_duration_since(t.started);
        let rep = EpisodeReport {
            episode: t.number,
            firmware_episode: t.id,
            seed: t.seed,
            steps,
            commands: t.steps_acted,
            teleop_commands: t.steps_teleop,
            success,
            ret: t.ret,
            reason,
            detail,
            transitions: t.emitted,
            dropped: t.dropped,
            missing: t.missing,
            applied_otherwise: t.applied_otherwise,
            malformed: t.malformed,
            malformed_first: t.malformed_first.clone(),
            outside_bounds: t.outside_bounds,
            outside_bounds_first: t.outside_bounds_first.clone(),
            seconds: elapsed.as_secs_f64(),
            cadence,
        };
        if !self.cfg.quiet {
            self.say(rep.to_string());
        }
        self.report.episodes.push(rep);
    }

    /// Adds the current episode's (or the between-episodes) cadence to the run's and
    /// starts a fresh one: ticks record into `ep_cadence` only, once.
    pub(crate) fn fold_cadence(&mut self) {
        self.run_cadence.merge(&self.ep_cadence);
        self.ep_cadence.clear();
    }
}

/// The first deadline on the grid through `next` (spaced `period`) that is still ahead
/// at `end`, and how many deadlines were passed to get there (0 when `next` is ahead):
/// a tick that ran past its next deadlines skips them instead of running back to back
/// to catch up. Used by the control loop and `controller bench-wake`.
pub fn skip_missed(next: Instant, end: Instant, period: Duration) -> (Instant, u64) {
    if end <= next {
        return (next, 0);
    }
    // In u128 nanoseconds: a stall of five days at the shortest period passes u32::MAX
    // deadlines.
    let period_ns = period.as_nanos().max(1);
    let missed = (end - next).as_nanos() / period_ns + 1;
    let ahead = Duration::from_nanos(u64::try_from(missed * period_ns).unwrap_or(u64::MAX));
    (next + ahead, u64::try_from(missed).unwrap_or(u64::MAX))
}

/// Sleeps until `spin` before `deadline`, then spins to it: `sleep` alone wakes late
/// by the scheduler's latency, spinning the whole period would burn a core.
///
/// On a virtual machine a sleep can wake much later than the kernel's latency: an
/// idle vCPU halts and the host runs it again when it likes. On our 2-vCPU CI-class
/// machine a bare C loop sleeping to absolute 2 ms deadlines woke more than 1 ms late
/// about 75 times a minute (max ≈4 ms) on an idle machine, while one spinning the
/// whole period was never late by more than 0.25 ms (BENCHMARKS.md, issue 5). Hence
/// `--dedicated-cpu`: a CPU of its own and `spin` = the whole period.
pub fn sleep_until(deadline: Instant, spin: Duration) {
    let now = Instant::now();
    if deadline > now + spin {
        std::thread::sleep(deadline - now - spin);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// A control loop dropped before its thread took it over (the thread did not start,
/// after the handshake): the firmware holds with its torque on, so it gets the Estop
/// the run's end would have sent (its gate holds the port's writer).
impl Drop for Control {
    fn drop(&mut self) {
        if !self.ran && self.cfg.robot.safety.gravity_safe_torque_off && self.gate.writer_open() {
            let _ = self.gate.send_control(Message::Estop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::protocol::{Frame, FrameDecoder};
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The serial port's write side: what was written, and a switch that makes every
    /// write fail (an unplugged adapter whose read side has not noticed yet).
    #[derive(Clone, Default)]
    struct Wire {
        bytes: Arc<Mutex<Vec<u8>>>,
        broken: Arc<AtomicBool>,
    }

    impl Write for Wire {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("unplugged"));
            }
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Wire {
        fn estops(&self) -> usize {
            self.count(|m| matches!(m, Message::Estop))
        }

        fn commands(&self) -> usize {
            self.count(|m| matches!(m, Message::Command { .. }))
        }

        fn count(&self, of: impl Fn(&Message) -> bool) -> usize {
            let mut d = FrameDecoder::default();
            let bytes = self.bytes.lock().unwrap().clone();
            bytes
                .iter()
                .filter_map(|&b| d.push(b))
                .filter(|f| f.as_ref().is_ok_and(|f| of(&f.message)))
                .count()
        }
    }

    /// A `push` robot's control thread writing to `wire`, its link events from `tx`.
    fn control(wire: &Wire) -> (Control, crossbeam_channel::Sender<LinkEvent>) {
        control_with(wire, Brain::Hold)
    }

    /// [`control`] acting with `brain`.
    fn control_with(wire: &Wire, brain: Brain) -> (Control, crossbeam_channel::Sender<LinkEvent>) {
        let mut robot = firmware_config::RobotConfig::example("push").unwrap();
        robot.safety.gravity_safe_torque_off = true;
        let mut cfg = RunConfig::new(robot.clone(), "/dev/null".into());
        cfg.quiet = true;
        let gate = CommandGate::new(&robot, Box::new(wire.clone()));
        let (tx, rx) = crossbeam_channel::unbounded();
        let report = super::super::RunReport::new(&cfg, "test");
        let c = Control::new(cfg, brain, gate, rx, None, report, Instant::now());
        (c, tx)
    }

    /// The applied action of a `push` step that held (policy and robot units 0).
    fn push_hold() -> heapless::Vec<f32, MAX_ACT> {
        heapless::Vec::from_slice(&[0.0, 0.0]).unwrap()
    }

    fn frame(seq: u16, message: Message) -> LinkEvent {
        LinkEvent::Frame {
            rx: Instant::now(),
            frame: Frame {
                seq,
                timestamp_us: 0,
                message,
            },
            stale: false,
        }
    }

    /// A `Fault { Estop }` frame numbered `seq` that arrived at `rx`, marked stale (held
    /// back behind a later frame).
    fn stale_estop(seq: u16, rx: Instant) -> LinkEvent {
        LinkEvent::Frame {
            rx,
            frame: Frame {
                seq,
                timestamp_us: 0,
                message: Message::Fault {
                    code: FaultCode::Estop,
                },
            },
            stale: true,
        }
    }

    /// A control loop whose `Reset` of its first episode (seed 7) went out: it waits for
    /// the firmware's start.
    fn starting(wire: &Wire) -> (Control, crossbeam_channel::Sender<LinkEvent>) {
        let (mut c, tx) = control(wire);
        c.episodes_started = 1;
        c.phase = Phase::Starting {
            since: Instant::now(),
            attempts: 1,
            seed: 7,
        };
        (c, tx)
    }

    /// The run's last stop (one tick of hold), up to the wait for its Estop's answer.
    fn stop_at_the_runs_end(c: &mut Control) {
        c.phase = Phase::SafeStop {
            left: 1,
            then: After::Exit,
        };
        tick_until_done(c, 10);
        assert!(
            matches!(c.phase, Phase::ConfirmingStop { .. }),
            "{:?}",
            c.phase
        );
    }

    /// Moves the end of the wait for the closing Estop's answer to `at` (a tick reads
    /// the clock itself).
    fn estop_wait_ends(c: &mut Control, at: Instant) {
        let Phase::ConfirmingStop { until, .. } = &mut c.phase else {
            panic!("not awaiting an Estop's answer: {:?}", c.phase);
        };
        *until = at;
    }

    /// Ticks until the phase is `Done`, or the run's last stop is done and awaits its
    /// Estop's answer (nothing answers here; the HIL tests answer and lose it), at most
    /// `max` ticks; the ticks taken.
    /// Ticks until `reached` holds for the phase, at most `max` ticks; whether it did.
    fn tick_until(c: &mut Control, max: usize, reached: impl Fn(&Phase) -> bool) -> bool {
        for _ in 0..max {
            c.tick += 1;
            c.one_tick(Instant::now());
            if reached(&c.phase) {
                return true;
            }
        }
        false
    }

    /// Sends `event` on the link and runs one tick.
    fn deliver(c: &mut Control, tx: &crossbeam_channel::Sender<LinkEvent>, event: LinkEvent) {
        tx.send(event).unwrap();
        c.tick += 1;
        c.one_tick(Instant::now());
    }

    fn tick_until_done(c: &mut Control, max: u64) -> u64 {
        for n in 1..=max {
            c.tick += 1;
            c.one_tick(Instant::now());
            if matches!(c.phase, Phase::Done | Phase::ConfirmingStop { .. }) {
                return n;
            }
        }
        panic!("not done after {max} ticks: {:?}", c.phase);
    }

    /// A firmware that reboots after our Estop holds with its torque on again: the safe
    /// stop under way must end with a new Estop, not take the old one for it.
    #[test]
    fn a_reboot_after_the_torque_off_gets_its_own_estop() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        // The exit's safe stop after a fault's torque-off (already sent earlier, its
        // answer not yet in).
        c.torque_off = true;
        c.estops_unanswered = 1;
        c.phase = Phase::SafeStop {
            left: 5,
            then: After::Exit,
        };
        let hello = c.hello;
        tx.send(frame(0, Message::Hello(hello))).unwrap();
        tick_until_done(&mut c, 100);
        assert!(
            c.report
                .faults
                .iter()
                .any(|f| f.kind == FaultKind::FirmwareReset)
        );
        assert_eq!(
            wire.estops(),
            1,
            "the rebooted firmware was never sent an Estop"
        );
        assert_eq!(c.report.torque_off_ticks.len(), 1);
        // Only the new Estop awaits an answer: the rebooted firmware never answers the
        // old one, and counting it would take a stop button's Fault for that answer.
        assert_eq!(c.estops_unanswered, 1);
    }

    /// The firmware takes the new handshake's `Hello` after a reboot's safe stop and
    /// holds with its torque on again: the run's end, and a handshake that ends
    /// unanswered, send an `Estop` of their own (both took the reboot's for it, and
    /// the run ended with the arm energised).
    #[test]
    fn a_handshake_after_a_reboots_stop_is_followed_by_a_new_estop() {
        // A reboot's safe stop in the run's last episode, as the reboot's Hello begins
        // it; `answered`: the firmware answers the handshake's Hello.
        let after_a_reboot = |answered: bool| {
            let wire = Wire::default();
            let (mut c, tx) = control(&wire);
            c.cfg.episodes = Some(1);
            c.episodes_begun = 1;
            c.phase = Phase::SafeStop {
                left: 1,
                then: After::Handshake,
            };
            assert!(tick_until(&mut c, 10, |p| matches!(
                p,
                Phase::Handshaking { .. }
            )));
            assert_eq!(wire.estops(), 1, "the reboot's safe stop");
            if answered {
                tx.send(frame(0, Message::Hello(c.hello))).unwrap();
            } else {
                c.cfg.handshake_timeout = Duration::ZERO;
            }
            tick_until_done(&mut c, 100);
            (c, wire)
        };
        for answered in [true, false] {
            let (c, wire) = after_a_reboot(answered);
            assert_eq!(
                wire.estops(),
                2,
                "answered {answered}: the run ended without an Estop after its Hello"
            );
            assert!(
                matches!(c.phase, Phase::ConfirmingStop { .. }),
                "answered {answered}: {:?}",
                c.phase
            );
            assert_eq!(c.report.torque_off_ticks.len(), 2, "answered {answered}");
        }
    }

    /// The answer to the Estop of a stop between episodes, held back on the link behind
    /// the `EpisodeStart` of the next episode (it comes marked stale), is ours: it was
    /// taken for a stop button's, and the run ended (exit 3) on link noise. Only such an
    /// answer: one numbered after the frame that began the episode is not (below).
    #[test]
    fn an_estop_answer_reordered_behind_the_next_episode_start_is_ours() {
        let stop_button = |c: &Control| {
            c.report
                .faults
                .iter()
                .any(|f| f.kind == FaultKind::EmergencyStop)
        };
        let episode_start = || {
            frame(
                101,
                Message::EpisodeStart {
                    episode: 1,
                    seed: 7,
                },
            )
        };
        let wire = Wire::default();
        let (mut c, tx) = starting(&wire);
        c.torque_off = true;
        c.estops_unanswered = 1;
        tx.send(episode_start()).unwrap();
        deliver(&mut c, &tx, stale_estop(100, Instant::now()));
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
        assert_eq!(c.stopping(), None);
        assert_eq!(c.phase, Phase::Running);
        // Only one answer was owed: a second stale one is a stop button's after all.
        deliver(&mut c, &tx, stale_estop(99, Instant::now()));
        assert!(stop_button(&c), "{:?}", c.report.faults);
        // So is one an answer's wait after the episode began (the answer owed was lost
        // on the link; a stop button's frame reordered later is not taken for it).
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.track = Some(Track::new(1, 0, 7, Instant::now()));
        c.phase = Phase::Running;
        c.late_estop_answers = 1;
        c.late_estop_until = Instant::now() - Duration::from_millis(1);
        deliver(&mut c, &tx, stale_estop(50, Instant::now()));
        assert!(stop_button(&c), "{:?}", c.report.faults);
        // Judged by arrival: an answer that came within the window is ours even when a
        // descheduled control thread handles it after the window (it was judged by the
        // tick's time, and taken for a stop button's).
        let wire = Wire::default();
        let (mut c, tx) = starting(&wire);
        c.estops_unanswered = 1;
        let t0 = Instant::now();
        tx.send(episode_start()).unwrap();
        c.tick += 1;
        c.one_tick(t0);
        tx.send(stale_estop(100, t0 + Duration::from_millis(1)))
            .unwrap();
        c.tick += 1;
        c.one_tick(t0 + Duration::from_secs(10));
        assert!(!stop_button(&c), "{:?}", c.report.faults);
        assert_eq!(c.late_estop_answers, 0);

        // Judged by number: a reordered answer numbered after the episode's first frame
        // is to this episode's Estop, whatever late debt is owed; taken for the late
        // one, it left this episode's owed, and a stop button's frame paid it.
        let wire = Wire::default();
        let (mut c, tx) = starting(&wire);
        c.estops_unanswered = 1;
        deliver(&mut c, &tx, episode_start());
        assert_eq!(c.late_estop_answers, 1);
        // This episode's stop (an Estop sent), its answer reordered behind frame 103.
        c.estops_unanswered = 1;
        deliver(&mut c, &tx, stale_estop(102, Instant::now()));
        assert_eq!((c.late_estop_answers, c.estops_unanswered), (1, 0));
        deliver(
            &mut c,
            &tx,
            frame(
                104,
                Message::Fault {
                    code: FaultCode::Estop,
                },
            ),
        );
        assert!(stop_button(&c), "{:?}", c.report.faults);

        // A repeated Reset's restart keeps the late debt and the number it is owed
        // before: a stop button's frame numbered between the two starts is one (it
        // passed as a late answer once the number moved to the second start).
        let wire = Wire::default();
        let (mut c, tx) = starting(&wire);
        c.estops_unanswered = 1;
        deliver(&mut c, &tx, episode_start());
        let restart = Message::EpisodeStart {
            episode: 2,
            seed: 7,
        };
        deliver(&mut c, &tx, frame(110, restart));
        assert_eq!(c.track.as_ref().map(|t| t.id), Some(2));
        assert_eq!(c.late_estop_answers, 1);
        deliver(&mut c, &tx, stale_estop(105, Instant::now()));
        assert!(stop_button(&c), "{:?}", c.report.faults);
    }

    /// A fault that begins a safe stop with the torque already off (a link lost while
    /// paused after a torque-off) waits for no hold: its pending entry ran the stop's
    /// ticks twice and was stamped by a later stop's first hold, minutes on.
    #[test]
    fn a_fault_with_the_torque_off_waits_for_no_hold() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_millis(500));
        c.torque_off = true;
        c.phase = Phase::Idle;
        deliver(&mut c, &tx, LinkEvent::Lost("unplugged".into()));
        assert!(c.hold_pending.is_empty(), "{:?}", c.hold_pending);
        let hold = c.cfg.robot.safety.hold_ticks_before_torque_off.max(1);
        match c.phase {
            Phase::SafeStop { left, .. } => assert_eq!(left, hold - 1),
            ref other => panic!("{other:?}"),
        }
    }

    /// A firmware that reboots while the run's closing Estop awaits its answer holds with
    /// its torque on again and answers no Estop sent before: the run's last stop starts
    /// over (hold, then a new Estop). The reboot was only noted, and the run could end
    /// with the torque on.
    #[test]
    fn a_reboot_while_the_closing_estop_awaits_its_answer_gets_a_new_stop() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.torque_off = true;
        c.estops_unanswered = 1;
        c.phase = Phase::ConfirmingStop {
            until: Instant::now() + Duration::from_secs(3600),
            resends: 0,
            written: 0,
            answers: 0,
        };
        let hello = c.hello;
        deliver(&mut c, &tx, frame(0, Message::Hello(hello)));
        assert!(
            matches!(
                c.phase,
                Phase::SafeStop {
                    then: After::Exit,
                    ..
                }
            ),
            "{:?}",
            c.phase
        );
        assert!(
            c.report
                .faults
                .iter()
                .any(|f| f.kind == FaultKind::FirmwareReset)
        );
        tick_until_done(&mut c, 100);
        assert_eq!(
            wire.estops(),
            1,
            "the rebooted firmware was never sent an Estop"
        );
        assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
    }

    /// The run's end after a stop whose Estop is still unanswered (one that went idle,
    /// then the end) awaits that answer too, and sends the Estop again without it: the
    /// end went straight to `Done`.
    #[test]
    fn an_earlier_unanswered_estop_is_confirmed_at_the_runs_end() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.torque_off = true;
        c.estops_unanswered = 1;
        stop_at_the_runs_end(&mut c);
        assert_eq!(wire.estops(), 0);
        estop_wait_ends(&mut c, Instant::now());
        c.tick += 1;
        c.one_tick(Instant::now());
        assert_eq!(wire.estops(), 1);
    }

    /// A `Hello` like the one that last restarted the firmware's numbering (the link marks
    /// it stale, as a possible copy): ignored while the torque is on (the safe stop under
    /// way ends with an Estop anyway), taken for another reboot once our Estop has gone
    /// out (the rebooted firmware holds with its torque on: it was ignored for good, and
    /// a controller paused after a torque-off stop never sent it an Estop).
    #[test]
    fn a_hello_like_the_last_one_is_a_reboot_once_the_torque_is_off() {
        let stale_hello = |c: &Control| LinkEvent::Frame {
            rx: Instant::now(),
            frame: Frame {
                seq: 0,
                timestamp_us: 0,
                message: Message::Hello(c.hello),
            },
            stale: true,
        };
        // Torque on, a stop under way: a copy.
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.phase = Phase::SafeStop {
            left: 5,
            then: After::Exit,
        };
        tx.send(stale_hello(&c)).unwrap();
        tick_until_done(&mut c, 100);
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
        assert_eq!(c.report.ignored_hellos, 1);
        assert_eq!(wire.estops(), 1, "the stop's own Estop");
        // Torque off, the run paused between episodes: another reboot, another Estop.
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.max_faults = 5;
        c.torque_off = true;
        c.paused = true;
        c.phase = Phase::Idle;
        tx.send(stale_hello(&c)).unwrap();
        for _ in 0..100 {
            c.tick += 1;
            c.one_tick(Instant::now());
            if wire.estops() > 0 {
                break;
            }
        }
        assert_eq!(c.report.ignored_hellos, 0);
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        assert_eq!(c.report.faults[0].kind, FaultKind::FirmwareReset);
        assert_eq!(wire.estops(), 1, "the rebooted firmware gets an Estop");
    }

    /// With `--reconnect-ms`, a write that fails (usually a tick before the reader sees the
    /// loss) leads to the wait for the port, not to the end of the run by the fault budget
    /// (CI caught `disconnect_and_reconnect` ending on the write's fault).
    #[test]
    fn a_failed_write_with_reconnect_waits_for_the_port() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.phase = Phase::Idle;
        wire.broken.store(true, Ordering::SeqCst);
        c.tick += 1;
        c.one_tick(Instant::now());
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        assert_eq!(c.report.faults[0].kind, FaultKind::LinkLost);
        // The write's own error is named (it was "writing Reset failed").
        assert_eq!(c.report.faults[0].detail, "writing Reset: unplugged");
        assert!(
            matches!(
                c.phase,
                Phase::SafeStop {
                    then: After::Reconnect,
                    ..
                }
            ),
            "{:?}",
            c.phase
        );
        assert_eq!(c.stopping(), None);
    }

    /// A fault's hold latency runs to the end of the hold command's write: a fault found
    /// in a tick's checks and held in that tick read 0 µs (both ends were the tick's own
    /// timestamp, taken before the write).
    #[test]
    fn the_hold_latency_includes_writing_the_hold() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.cfg.max_faults = 5;
        let now = Instant::now();
        c.tick += 1;
        c.fault(
            now,
            FaultKind::StaleSensor,
            "stale".into(),
            Some(After::Idle),
        );
        c.step_phase(now);
        let f = &c.report.faults[0];
        assert_eq!(f.hold_tick, Some(c.tick), "{f:?}");
        assert!(f.hold_latency_us.unwrap() > 0.0, "{f:?}");
    }

    /// A torque-off belongs to the faults of the safe stop that sent it: a link loss whose
    /// stop could send no Estop (the link was down) is not credited with the Estop of a
    /// later stop (it was: `faults.last()` without one took it).
    #[test]
    fn a_torque_off_is_credited_only_to_its_own_stops_faults() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.cfg.max_faults = 5;
        // Lost with `--reconnect-ms`: the writer is closed, so no Estop can go out.
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.link_down = true;
        c.gate.drop_writer();
        c.fault(
            Instant::now(),
            FaultKind::LinkLost,
            "gone".into(),
            Some(After::Idle),
        );
        for _ in 0..100 {
            c.tick += 1;
            c.one_tick(Instant::now());
            if !matches!(c.phase, Phase::SafeStop { .. }) {
                break;
            }
        }
        assert_eq!(c.phase, Phase::Idle);
        assert!(c.report.faults[0].hold_tick.is_some());
        assert_eq!(c.report.faults[0].torque_off_tick, None);
        assert!(c.report.torque_off_ticks.is_empty());
        // The port is back; much later the run ends with a stop of its own.
        c.link_down = false;
        c.gate.set_writer(Box::new(wire.clone()));
        c.torque_off = false;
        c.tick += 100;
        c.stopping = Some(Outcome::Completed);
        c.enter_safe_stop(After::Exit);
        tick_until_done(&mut c, 100);
        assert_eq!(c.report.torque_off_ticks.len(), 1);
        assert_eq!(
            c.report.faults[0].torque_off_tick, None,
            "{:?}",
            c.report.faults
        );
        // A fault's own stop is credited.
        c.phase = Phase::Idle;
        c.stopping = None;
        c.torque_off = false;
        c.fault(
            Instant::now(),
            FaultKind::JointLimit,
            "q1".into(),
            Some(After::Exit),
        );
        tick_until_done(&mut c, 100);
        assert_eq!(c.report.torque_off_ticks.len(), 2);
        assert_eq!(
            c.report.faults[1].torque_off_tick,
            c.report.torque_off_ticks.last().copied()
        );
    }

    /// An Estop that could not be written is not a torque-off: the safe stop retries it,
    /// and records it only once it is written.
    #[test]
    fn an_unwritten_estop_is_retried_and_not_recorded_as_sent() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.phase = Phase::SafeStop {
            left: 1,
            then: After::Exit,
        };
        wire.broken.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            c.tick += 1;
            c.one_tick(Instant::now());
            assert!(
                matches!(c.phase, Phase::SafeStop { left: 0, .. }),
                "{:?}",
                c.phase
            );
        }
        assert!(c.report.torque_off_ticks.is_empty());
        assert_eq!(c.gate.stats.estops, 0);
        wire.broken.store(false, Ordering::SeqCst);
        let n = tick_until_done(&mut c, 1);
        assert_eq!(n, 1);
        assert_eq!(wire.estops(), 1);
        assert_eq!(c.report.torque_off_ticks, vec![4]);
        assert_eq!(c.gate.stats.estops, 1);
        assert!(c.fatal.is_none() && c.report.faults.is_empty());
    }

    /// The run's closing Estop waits for its answer: answered, the run is done; not
    /// answered, it goes out again after each wait, and after the last the run ends with
    /// an error that says the arm may be energised (it exited with the torque counted
    /// off on the write alone).
    #[test]
    fn the_closing_estop_is_sent_again_until_answered() {
        for answered in [true, false] {
            let wire = Wire::default();
            let (mut c, tx) = control(&wire);
            stop_at_the_runs_end(&mut c);
            assert_eq!(wire.estops(), 1);
            let now = Instant::now();
            if answered {
                let answer = Message::Fault {
                    code: FaultCode::Estop,
                };
                tx.send(frame(1, answer)).unwrap();
                c.tick += 1;
                c.one_tick(now);
                assert_eq!(c.phase, Phase::Done);
                assert!(c.fatal.is_none() && !c.report.unanswered_estop);
                assert_eq!(wire.estops(), 1);
                continue;
            }
            // Within the wait, nothing goes out again.
            estop_wait_ends(&mut c, Instant::now() + Duration::from_secs(3600));
            c.tick += 1;
            c.one_tick(now);
            assert_eq!(wire.estops(), 1);
            for sent in 2..=1 + ESTOP_RESENDS as usize {
                estop_wait_ends(&mut c, Instant::now());
                c.tick += 1;
                c.one_tick(now);
                assert_eq!(wire.estops(), sent);
            }
            estop_wait_ends(&mut c, Instant::now());
            c.tick += 1;
            c.one_tick(now);
            assert_eq!(c.phase, Phase::Done);
            assert!(c.report.unanswered_estop);
            assert_eq!(c.report.estop_resends, ESTOP_RESENDS);
            let fatal = c.fatal.clone().unwrap();
            assert!(
                fatal.contains("did not answer the closing Estop"),
                "{fatal}"
            );
        }
    }

    /// The unanswered closing Estop's error counts the Estops written, not the tries: the
    /// resends whose write failed were counted as sent (the report said otherwise).
    #[test]
    fn the_unanswered_estops_error_counts_what_was_written() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        stop_at_the_runs_end(&mut c);
        assert_eq!(wire.estops(), 1);
        wire.broken.store(true, Ordering::SeqCst);
        for _ in 0..=ESTOP_RESENDS {
            estop_wait_ends(&mut c, Instant::now());
            c.tick += 1;
            c.one_tick(Instant::now());
        }
        assert_eq!(c.phase, Phase::Done);
        assert_eq!(c.report.estop_resends, 0);
        let fatal = c.fatal.clone().unwrap();
        assert!(fatal.contains("(sent 1 times, "), "{fatal}");
        assert!(
            fatal.contains(&format!("; {ESTOP_RESENDS} resends could not be written)")),
            "{fatal}"
        );
    }

    /// A link that stays unwritable ends the run with an error that says the torque may
    /// still be on.
    #[test]
    fn an_estop_that_cannot_be_written_ends_the_run_with_an_error() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.phase = Phase::SafeStop {
            left: 1,
            then: After::Idle,
        };
        wire.broken.store(true, Ordering::SeqCst);
        assert_eq!(tick_until_done(&mut c, 100), ESTOP_WRITE_TRIES as u64);
        assert!(c.report.torque_off_ticks.is_empty());
        assert_eq!(c.stopping(), Some(Outcome::Error));
        let fatal = c.fatal.clone().unwrap();
        assert!(
            fatal.contains("could not be written") && fatal.contains("unplugged"),
            "{fatal}"
        );
        assert_eq!(c.report.faults.len(), 1);
        assert_eq!(c.report.faults[0].kind, FaultKind::LinkLost);
    }

    /// After the operator's label nothing is commanded while the last frames come in, so
    /// the firmware's watchdog may trip: the episode stays labelled, not faulted.
    #[test]
    fn the_watchdog_after_an_operators_label_is_not_a_fault() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        let mut t = Track::new(1, 0, 7, Instant::now());
        t.label = Some(true);
        t.final_step = Some(0);
        c.track = Some(t);
        c.phase = Phase::Ending {
            until: Instant::now(),
        };
        deliver(
            &mut c,
            &tx,
            frame(
                3,
                Message::Fault {
                    code: FaultCode::Watchdog,
                },
            ),
        );
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
        assert_eq!(c.report.ignored_firmware_faults, 1);
        assert_eq!(c.phase, Phase::Idle);
        assert_eq!(c.report.episodes.len(), 1);
        assert_eq!(c.report.episodes[0].reason, EndReason::Labelled);
    }

    /// A hardware fault outside an episode (in the firmware's `Reset` motion, between
    /// episodes) is a fault: a safe stop, counted against `--max-faults`. It was
    /// counted as ignored, as a late watchdog is (still, below).
    #[test]
    fn an_overcurrent_outside_an_episode_is_a_fault() {
        let fault = |code| frame(3, Message::Fault { code });
        for idle in [false, true] {
            let wire = Wire::default();
            let (mut c, tx) = if idle {
                control(&wire)
            } else {
                starting(&wire)
            };
            c.paused = idle;
            deliver(&mut c, &tx, fault(FaultCode::Overcurrent));
            assert_eq!(c.report.ignored_firmware_faults, 0, "idle {idle}");
            assert_eq!(c.report.faults.len(), 1, "idle {idle}");
            assert_eq!(c.report.faults[0].kind, FaultKind::FirmwareFault);
            assert!(
                c.report.faults[0].detail.contains("Overcurrent"),
                "{:?}",
                c.report.faults[0]
            );
            assert!(
                matches!(c.phase, Phase::SafeStop { .. }),
                "idle {idle}: {:?}",
                c.phase
            );
            // At the default `--max-faults 0`, the run ends after the stop.
            assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
        }
        // A watchdog there is old news.
        let wire = Wire::default();
        let (mut c, tx) = starting(&wire);
        deliver(&mut c, &tx, fault(FaultCode::Watchdog));
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
        assert_eq!(c.report.ignored_firmware_faults, 1);
    }

    /// A hardware fault's copy on the link (a duplicate, an echo; marked stale) is not
    /// a second fault. One that stopped an episode's start leaves that episode to the
    /// firmware: its frames still on the line do not start the next `Reset`'s episode
    /// in its place (its `EpisodeStart` does). One during the closing stop of a run
    /// that ended well, or while its closing `Estop`'s answer is awaited, makes it a
    /// run stopped by a fault (exit status 3).
    #[test]
    fn a_hardware_fault_is_one_fault_and_its_episode_is_not_taken_for_the_next() {
        let wire = Wire::default();
        let (mut c, tx) = starting(&wire);
        c.cfg.max_faults = 1;
        let overcurrent = Message::Fault {
            code: FaultCode::Overcurrent,
        };
        deliver(&mut c, &tx, frame(3, overcurrent.clone()));
        let LinkEvent::Frame { rx, frame: f, .. } = frame(3, overcurrent.clone()) else {
            unreachable!()
        };
        tx.send(LinkEvent::Frame {
            rx,
            frame: f,
            stale: true,
        })
        .unwrap();
        assert!(tick_until(&mut c, 50, |p| matches!(
            p,
            Phase::Starting { .. }
        )));
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        assert_eq!(c.report.ignored_firmware_faults, 1);
        let Phase::Starting { seed, .. } = c.phase else {
            unreachable!()
        };
        // A frame of the episode the first Reset began (firmware episode 1).
        let obs = vec![0.25; c.od];
        deliver(&mut c, &tx, frame(20, Message::sensor(1, 5, &obs).unwrap()));
        assert!(c.track.is_none(), "{:?}", c.track.as_ref().map(|t| t.id));
        assert!(matches!(c.phase, Phase::Starting { .. }), "{:?}", c.phase);
        deliver(
            &mut c,
            &tx,
            frame(21, Message::EpisodeStart { episode: 2, seed }),
        );
        assert_eq!(c.track.as_ref().map(|t| t.id), Some(2));
        assert_eq!(c.phase, Phase::Running);

        // The closing stop of a run that ended well.
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.stopping = Some(Outcome::Completed);
        c.phase = Phase::SafeStop {
            left: 5,
            then: After::Exit,
        };
        deliver(&mut c, &tx, frame(3, overcurrent.clone()));
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
        // And while its closing Estop's answer is awaited.
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.stopping = Some(Outcome::Completed);
        stop_at_the_runs_end(&mut c);
        deliver(&mut c, &tx, frame(4, overcurrent));
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
    }

    /// The closing `Estop`'s answer comes after those still owed to earlier `Estop`s
    /// (the firmware answers in order): an earlier one's answer, late, is not the
    /// closing one's (it confirmed a closing `Estop` lost on the line).
    #[test]
    fn the_closing_estop_is_confirmed_after_the_answers_owed_before_it() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        // A stop's Estop whose answer has not come yet.
        c.estops_unanswered = 1;
        stop_at_the_runs_end(&mut c);
        let answer = |seq| {
            frame(
                seq,
                Message::Fault {
                    code: FaultCode::Estop,
                },
            )
        };
        deliver(&mut c, &tx, answer(40));
        assert!(
            matches!(c.phase, Phase::ConfirmingStop { .. }),
            "the earlier Estop's answer confirmed the closing one: {:?}",
            c.phase
        );
        deliver(&mut c, &tx, answer(41));
        assert_eq!(c.phase, Phase::Done);

        // Answers owed that never come (lost on the line, or to a port reopened since)
        // are given up at the first resend: the resend's answer confirms the stop (3
        // stale counts outlasted the 2 resends: a false "unanswered", exit 1).
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.estops_unanswered = 3;
        stop_at_the_runs_end(&mut c);
        estop_wait_ends(&mut c, Instant::now());
        c.tick += 1;
        c.one_tick(Instant::now());
        assert_eq!(c.report.estop_resends, 1);
        deliver(&mut c, &tx, answer(42));
        assert_eq!(c.phase, Phase::Done);

        // An answer held back behind the episode's first frame (stale, within the
        // window) pays an Estop sent before the episode, not the closing one.
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.late_estop_answers = 1;
        c.late_estop_until = Instant::now() + Duration::from_secs(60);
        c.episode_began_seq = 50;
        stop_at_the_runs_end(&mut c);
        deliver(&mut c, &tx, stale_estop(43, Instant::now()));
        assert!(
            matches!(c.phase, Phase::ConfirmingStop { .. }),
            "the late answer confirmed the closing Estop: {:?}",
            c.phase
        );
        assert_eq!(c.late_estop_answers, 0);
        deliver(&mut c, &tx, answer(44));
        assert_eq!(c.phase, Phase::Done);
    }

    /// A port back answers none of the Estops sent before it (its input was cleared as
    /// it opened): they are no longer owed once it is back, kept aside or taken (stale
    /// counts delayed the confirmation of a later stop, or swallowed its stop button).
    #[test]
    fn a_port_back_owes_no_answers_to_earlier_estops() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.estops_unanswered = 2;
        c.link_down = true;
        c.phase = Phase::Reconnecting {
            until: Instant::now() + Duration::from_secs(5),
        };
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        deliver(&mut c, &tx, LinkEvent::Reconnected(port));
        assert!(
            matches!(c.phase, Phase::Handshaking { .. }),
            "{:?}",
            c.phase
        );
        assert_eq!(c.estops_unanswered, 0);

        // A port back kept aside during a safe stop: its frames are judged afresh from
        // its arrival, so its stop button's `Fault { Estop }` is one (before, it paid
        // the old port's debt and was swallowed).
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.estops_unanswered = 1;
        c.link_down = true;
        c.phase = Phase::SafeStop {
            left: 50,
            then: After::Reconnect,
        };
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        tx.send(LinkEvent::Reconnected(port)).unwrap();
        deliver(
            &mut c,
            &tx,
            frame(
                1,
                Message::Fault {
                    code: FaultCode::Estop,
                },
            ),
        );
        assert!(
            c.report
                .faults
                .iter()
                .any(|f| f.kind == FaultKind::EmergencyStop),
            "{:?}",
            c.report.faults
        );
    }

    /// A control loop whose episode ends: labelled by the operator (`label`), or by the
    /// firmware (`None`), its last frames awaited; the sender of its link events; and
    /// the reason it should end with.
    fn ending(
        wire: &Wire,
        label: Option<bool>,
    ) -> (Control, crossbeam_channel::Sender<LinkEvent>, EndReason) {
        let (mut c, tx) = control(wire);
        let mut t = Track::new(1, 0, 7, Instant::now());
        t.label = label;
        t.final_step = Some(3);
        c.track = Some(t);
        c.phase = Phase::Ending {
            until: Instant::now() + Duration::from_secs(10),
        };
        let want = if label.is_some() {
            EndReason::Labelled
        } else {
            EndReason::Completed
        };
        (c, tx, want)
    }

    /// Ctrl-C (or `q`, SIGTERM) while a labelled episode waits for its last frames: it
    /// ends labelled, as it would have at its deadline (it was reported `interrupted`
    /// and left out of the success rate while its log held the labelled end), and the
    /// run stops with a safe stop.
    #[test]
    fn an_interrupt_while_an_episode_ends_keeps_its_label() {
        for label in [Some(true), None] {
            let wire = Wire::default();
            let (mut c, _tx, want) = ending(&wire, label);
            c.interrupt(Instant::now(), "interrupted (Ctrl-C)".into());
            c.end_closing(Instant::now());
            assert_eq!(c.report.episodes[0].reason, want, "{label:?}");
            assert!(
                c.report.episodes[0].detail.contains("Ctrl-C"),
                "{:?}",
                c.report.episodes[0]
            );
            assert!(matches!(
                c.phase,
                Phase::SafeStop {
                    then: After::Exit,
                    ..
                }
            ));
            assert_eq!(c.stopping(), Some(Outcome::Interrupted));
        }
    }

    /// A fault while an episode ends (the stop button after the operator's label, a
    /// link loss after the firmware's end) ends it as it would have ended, as an
    /// interrupt does: it was filed as `fault` and left out of the success rate while
    /// its log held the labelled end. The fault itself is in the run's faults.
    #[test]
    fn a_fault_while_an_episode_ends_keeps_its_label() {
        for label in [Some(true), None] {
            let wire = Wire::default();
            let (mut c, _tx, want) = ending(&wire, label);
            c.fault(
                Instant::now(),
                FaultKind::EmergencyStop,
                "the stop button".into(),
                Some(After::Exit),
            );
            c.end_closing(Instant::now());
            let ep = &c.report.episodes[0];
            assert_eq!(ep.reason, want, "{label:?}");
            assert!(ep.detail.contains("the stop button"), "{ep:?}");
            assert_eq!(c.report.faults[0].kind, FaultKind::EmergencyStop);
        }
    }

    /// A control loop running firmware episode `id`, which has heard its `Sensor` frames
    /// of steps 0 and 1 (frames numbered from 1; 0 is left for a reboot's `Hello`), then
    /// faulted on a joint limit.
    fn faulted_after_two_frames(
        id: u32,
        wire: &Wire,
    ) -> (Control, crossbeam_channel::Sender<LinkEvent>, Vec<f32>) {
        let (mut c, tx) = control(wire);
        c.track = Some(Track::new(id, 0, 7, Instant::now()));
        c.phase = Phase::Running;
        let obs = vec![0.25; c.od];
        for step in 0..2 {
            let m = Message::sensor(id, step, &obs).unwrap();
            tx.send(frame(step as u16 + 1, m)).unwrap();
        }
        c.drain(Instant::now());
        c.fault(
            Instant::now(),
            FaultKind::JointLimit,
            "q1 past its limit".into(),
            None,
        );
        (c, tx, obs)
    }

    /// A fault found on step 1's `Sensor` frame, with step 1's `Reward` frame still on
    /// the line: the episode waits for it through the safe stop, and its transition into
    /// the faulted state is logged before its end (it was lost: the episode ended at the
    /// fault and the late frame found no episode). Frames of steps after the fault are
    /// the safe stop's, not the episode's.
    #[test]
    fn a_faulted_episode_keeps_the_last_frames_on_the_line() {
        let wire = Wire::default();
        let (mut c, tx, obs) = faulted_after_two_frames(1, &wire);
        // The transitions logged are those after the fault (none before: step 0's
        // needs step 1's reward).
        let (log_tx, log_rx) = crossbeam_channel::unbounded();
        c.log_tx = Some(log_tx);
        let reward = |step| Message::Reward {
            episode: 1,
            step,
            reward: 0.5,
            done: false,
            truncated: false,
            success: false,
            applied: push_hold(),
        };
        assert!(c.report.episodes.is_empty(), "ended before its last frames");
        tx.send(frame(3, reward(1))).unwrap();
        tx.send(frame(4, Message::sensor(1, 2, &obs).unwrap()))
            .unwrap();
        deliver(&mut c, &tx, frame(5, reward(2)));
        let records: Vec<Record> = log_rx.try_iter().collect();
        let steps: Vec<u32> = records
            .iter()
            .filter_map(|r| match r {
                Record::Transition(t) => Some(t.step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, [0]);
        assert!(
            matches!(records.last(), Some(Record::EpisodeEnd(e)) if e.reason == EndReason::Fault),
            "{records:?}"
        );
        let ep = &c.report.episodes[0];
        assert_eq!((ep.transitions, ep.steps, ep.ret), (1, 1, 0.5));
        assert!(
            ep.detail.starts_with("JointLimit: q1 past"),
            "{}",
            ep.detail
        );
    }

    /// A frame of a faulted episode's last steps that cannot be read (here an applied
    /// action that is not finite) no longer faults anything, and was dropped without a
    /// word: it is counted on the episode, its first detail kept, and said in the
    /// episode's report. A frame past the episode's end (the safe stop's) is not.
    #[test]
    fn a_faulted_episodes_unreadable_last_frames_are_counted_by_name() {
        let wire = Wire::default();
        let (mut c, tx, _) = faulted_after_two_frames(1, &wire);
        let reward = |step, applied| Message::Reward {
            episode: 1,
            step,
            reward: 0.5,
            done: false,
            truncated: false,
            success: false,
            applied,
        };
        tx.send(frame(3, reward(1, applied([f32::NAN, 0.0]))))
            .unwrap();
        tx.send(frame(4, reward(2, applied([0.0, f32::INFINITY]))))
            .unwrap();
        // A Sensor frame of step 1 of another size (a corrupt copy) is counted too.
        tx.send(frame(5, Message::sensor(1, 1, &[0.0; 3]).unwrap()))
            .unwrap();
        c.tick += 1;
        c.one_tick(Instant::now());
        while c.report.episodes.is_empty() {
            c.tick += 1;
            c.one_tick(Instant::now());
            assert!(c.tick < 1000);
        }
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        let ep = &c.report.episodes[0];
        assert_eq!((ep.transitions, ep.malformed), (0, 2));
        let first = ep.malformed_first.as_deref().unwrap();
        assert!(
            first.starts_with("the Reward frame of step 1 says action [0] applied NaN"),
            "{first}"
        );
        assert!(
            ep.to_string()
                .contains("frames that could not be read after the episode was cut short: 2"),
            "{ep}"
        );
    }

    /// After the loop has ended, a faulted episode's last transitions wait for room in
    /// the logger's queue (they were dropped when it was full, and counted as lost).
    #[test]
    fn the_last_transitions_of_a_faulted_episode_wait_for_the_logger_at_the_end() {
        let wire = Wire::default();
        let (mut c, tx, _) = faulted_after_two_frames(1, &wire);
        let (log_tx, log_rx) = crossbeam_channel::bounded(1);
        log_tx
            .send(Record::EpisodeStart {
                episode: 0,
                seed: 0,
            })
            .unwrap();
        c.log_tx = Some(log_tx);
        let reward = Message::Reward {
            episode: 1,
            step: 1,
            reward: 0.5,
            done: false,
            truncated: false,
            success: false,
            applied: push_hold(),
        };
        tx.send(frame(3, reward)).unwrap();
        c.drain(Instant::now());
        // A logger that is slow to take the next record.
        let logger = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            log_rx.iter().collect::<Vec<Record>>()
        });
        c.flush_log_blocking();
        c.log_tx = None;
        let records = logger.join().unwrap();
        assert_eq!(c.report.log_drops, 0);
        assert!(
            records
                .iter()
                .any(|r| matches!(r, Record::Transition(t) if t.step == 0)),
            "{records:?}"
        );
        assert!(matches!(records.last(), Some(Record::EpisodeEnd(_))));
    }

    /// The records queued behind a busy logger reach it before the closing episode's
    /// end runs: a panic there lost them (an earlier episode's records, its end and
    /// success among them; an `EpisodeStart` stands for them here).
    #[test]
    fn queued_records_reach_the_log_before_the_last_episodes_end_runs() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        let (log_tx, log_rx) = crossbeam_channel::bounded(1);
        // The logger's queue is full; an earlier episode's record waits behind it.
        log_tx
            .send(Record::EpisodeStart {
                episode: 0,
                seed: 0,
            })
            .unwrap();
        c.log_tx = Some(log_tx);
        c.pending_log.push_back(Record::EpisodeStart {
            episode: 1,
            seed: 1,
        });
        c.panic_repeats = true;
        let logger = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            log_rx.iter().collect::<Vec<Record>>()
        });
        let flushed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.flush_log_blocking()));
        assert!(flushed.is_err(), "the injected panic");
        c.log_tx = None;
        let records = logger.join().unwrap();
        assert!(
            records
                .iter()
                .any(|r| matches!(r, Record::EpisodeStart { episode: 1, .. })),
            "{records:?}"
        );
        assert_eq!(c.report.log_drops, 0);
    }

    /// A control loop logging to the returned receiver, in firmware episode 1, which
    /// has heard steps 0 to 6 with step 3's `Reward` lost (step 6's says `done` with
    /// `done_at_6`); frames numbered up to 13 were sent.
    fn seven_steps_with_a_lost_reward(
        wire: &Wire,
        done_at_6: bool,
    ) -> (
        Control,
        crossbeam_channel::Sender<LinkEvent>,
        crossbeam_channel::Receiver<Record>,
    ) {
        let (mut c, tx) = control(wire);
        let (log_tx, log_rx) = crossbeam_channel::unbounded();
        c.log_tx = Some(log_tx);
        c.track = Some(Track::new(1, 0, 7, Instant::now()));
        c.phase = Phase::Running;
        let obs = vec![0.25; c.od];
        let mut seq = 0u16;
        for step in 0..=6 {
            seq += 1;
            tx.send(frame(seq, Message::sensor(1, step, &obs).unwrap()))
                .unwrap();
            if step > 0 && step != 3 {
                seq += 1;
                let reward = Message::Reward {
                    episode: 1,
                    step,
                    reward: 0.0,
                    done: done_at_6 && step == 6,
                    truncated: false,
                    success: false,
                    applied: push_hold(),
                };
                tx.send(frame(seq, reward)).unwrap();
            }
        }
        c.drain(Instant::now());
        (c, tx, log_rx)
    }

    /// The steps of the transitions logged to `rx`.
    fn logged_steps(rx: &crossbeam_channel::Receiver<Record>) -> Vec<u32> {
        rx.try_iter()
            .filter_map(|r| match r {
                Record::Transition(t) => Some(t.step),
                _ => None,
            })
            .collect()
    }

    /// A control loop logging into a queue of `room` records, in firmware episode 1,
    /// which has heard the `Sensor` frames of steps 0 to 2 and step 1's `Reward` (0.5),
    /// then the operator's `label`, then step 2's `Reward` (`last`: its reward, and
    /// whether it ends the episode as terminal); its transitions emitted and the episode
    /// ended. Returns it and the records logged.
    fn labelled_at_step_2(
        wire: &Wire,
        room: usize,
        label: bool,
        last: (f32, bool),
    ) -> (Control, Vec<Record>) {
        labelled_at_step_2_ending(wire, room, label, step_reward(2, last.0, last.1))
    }

    /// [`labelled_at_step_2`], step 2's `Reward` frame `last`.
    fn labelled_at_step_2_ending(
        wire: &Wire,
        room: usize,
        label: bool,
        last: Message,
    ) -> (Control, Vec<Record>) {
        let (log_tx, log_rx) = crossbeam_channel::bounded(room);
        let (mut c, tx) = labelled_after_step_1(wire, Some(log_tx), label);
        tx.send(frame(5, last)).unwrap();
        c.drain(Instant::now());
        c.emit_transitions();
        c.finish_episode(Instant::now(), EndReason::Labelled, "test".into());
        (c, log_rx.try_iter().collect())
    }

    /// Step `step`'s `Reward` frame in firmware episode 1.
    fn step_reward(step: u32, reward: f32, done: bool) -> Message {
        Message::Reward {
            episode: 1,
            step,
            reward,
            done,
            truncated: false,
            success: false,
            applied: push_hold(),
        }
    }

    /// A control loop logging into `log_tx`, in firmware episode 1, which has heard the
    /// `Sensor` frames of steps 0 to 2 and step 1's `Reward` (0.5), then the operator's
    /// `label` (its last step: 2); and the sender of its link events.
    fn labelled_after_step_1(
        wire: &Wire,
        log_tx: Option<crossbeam_channel::Sender<Record>>,
        label: bool,
    ) -> (Control, crossbeam_channel::Sender<LinkEvent>) {
        let (mut c, tx) = control(wire);
        c.log_tx = log_tx;
        c.track = Some(Track::new(1, 0, 7, Instant::now()));
        c.phase = Phase::Running;
        let obs = vec![0.25; c.od];
        for step in 0..=2 {
            tx.send(frame(
                step as u16 + 1,
                Message::sensor(1, step, &obs).unwrap(),
            ))
            .unwrap();
        }
        tx.send(frame(4, step_reward(1, 0.5, false))).unwrap();
        c.drain(Instant::now());
        c.operator_end(Instant::now(), label);
        (c, tx)
    }

    /// The firmware's own end of an episode the operator labelled a step earlier is past
    /// the label's end: the episode keeps the label's step count (it took the
    /// firmware's, and reported a step more than it logged, that one "missing").
    #[test]
    fn a_labelled_episode_keeps_its_own_step_count() {
        let wire = Wire::default();
        let (mut c, tx) = labelled_after_step_1(&wire, None, true);
        let obs = vec![0.25; c.od];
        let reward = |step, done| step_reward(step, 0.5, done);
        tx.send(frame(5, reward(2, false))).unwrap();
        tx.send(frame(6, Message::sensor(1, 3, &obs).unwrap()))
            .unwrap();
        tx.send(frame(7, reward(3, true))).unwrap();
        tx.send(frame(
            8,
            Message::EpisodeEnd {
                episode: 1,
                success: false,
                steps: 3,
            },
        ))
        .unwrap();
        c.drain(Instant::now());
        c.emit_transitions();
        c.finish_episode(Instant::now(), EndReason::Labelled, "test".into());
        let ep = &c.report.episodes[0];
        assert_eq!((ep.steps, ep.transitions, ep.missing), (2, 2, 0), "{ep:?}");
        assert!(ep.success);
    }

    /// `--episodes N` counts episodes the firmware began, not `Reset`s: one that started
    /// nothing (the firmware rebooted while starting it) ended the run `completed` with
    /// N - 1 episodes.
    #[test]
    fn a_reset_that_started_nothing_does_not_count_as_an_episode() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.episodes = Some(1);
        c.phase = Phase::Idle;
        c.tick += 1;
        c.one_tick(Instant::now());
        let Phase::Starting { seed, .. } = c.phase else {
            panic!("{:?}", c.phase)
        };
        // Nothing began: back to idle (as after a reboot's handshake).
        c.phase = Phase::Idle;
        c.tick += 1;
        c.one_tick(Instant::now());
        let Phase::Starting { seed: again, .. } = c.phase else {
            panic!("no second Reset: {:?}", c.phase)
        };
        assert_ne!(seed, again, "a new episode, numbered on");
        deliver(
            &mut c,
            &tx,
            frame(
                1,
                Message::EpisodeStart {
                    episode: 2,
                    seed: again,
                },
            ),
        );
        assert_eq!(c.phase, Phase::Running);
        c.finish_episode(Instant::now(), EndReason::Completed, "test".into());
        c.phase = Phase::Idle;
        c.tick += 1;
        c.one_tick(Instant::now());
        assert!(
            matches!(c.phase, Phase::SafeStop { .. }),
            "one episode run: {:?}",
            c.phase
        );
    }

    /// Ctrl-C while a labelled episode waits for its last step's `Reward` frame: the
    /// frame still comes during the safe stop, and the labelled terminal transition (with
    /// the success reward) is logged. The interrupt closed the episode at once, and that
    /// transition was given up as missing.
    #[test]
    fn an_interrupt_keeps_the_labelled_steps_late_reward() {
        let wire = Wire::default();
        let (log_tx, log_rx) = crossbeam_channel::bounded(64);
        let (mut c, tx) = labelled_after_step_1(&wire, Some(log_tx), true);
        c.interrupt(Instant::now(), "interrupted (Ctrl-C)".into());
        deliver(&mut c, &tx, frame(5, step_reward(2, 0.5, false)));
        c.end_closing(Instant::now());
        let records: Vec<Record> = log_rx.try_iter().collect();
        let t = last_transition(&records).expect("the labelled step logged");
        assert_eq!((t.done, t.success), (true, true));
        let ep = &c.report.episodes[0];
        assert_eq!(
            (ep.reason, ep.transitions, ep.missing),
            (EndReason::Labelled, 2, 0)
        );
    }

    /// `p` typed while an episode is starting holds it back as the console says: the
    /// episode the firmware then starts ends before its first command. It began, and the
    /// policy drove the robot after "paused" was printed.
    #[test]
    fn a_pause_while_an_episode_starts_holds_it_back() {
        let wire = Wire::default();
        let (mut c, tx) = starting(&wire);
        c.cfg.episodes = None;
        c.on_operator(Instant::now(), OperatorCommand::Pause);
        tx.send(frame(
            1,
            Message::EpisodeStart {
                episode: 1,
                seed: 7,
            },
        ))
        .unwrap();
        let obs = vec![0.25; c.od];
        tx.send(frame(2, Message::sensor(1, 0, &obs).unwrap()))
            .unwrap();
        for _ in 0..3 {
            c.tick += 1;
            c.one_tick(Instant::now());
        }
        assert_eq!(wire.commands(), 0);
        assert_eq!(c.phase, Phase::Idle);
        let ep = &c.report.episodes[0];
        assert_eq!(ep.reason, EndReason::Interrupted, "{ep:?}");
        // Continued: the next episode starts.
        c.on_operator(Instant::now(), OperatorCommand::Continue);
        c.tick += 1;
        c.one_tick(Instant::now());
        assert!(matches!(c.phase, Phase::Starting { .. }), "{:?}", c.phase);
    }

    /// One tick takes at most a queue's worth of operator commands: the reader refills
    /// the queue while the tick drains it, and the drain went on as long as it kept up.
    #[test]
    fn one_tick_takes_at_most_a_queue_of_operator_commands() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        let (tx, rx) = crossbeam_channel::unbounded();
        for _ in 0..1000 {
            tx.send(OperatorCommand::ToggleIntervention).unwrap();
        }
        c.operator = Some(rx);
        c.checks(Instant::now());
        assert_eq!(
            c.report.operator.intervention_toggles,
            super::super::operator::MAX_QUEUED as u32
        );
    }

    /// A control loop that its thread never took over (the thread did not start after
    /// the handshake) turns the torque off as it goes: the firmware was left holding.
    #[test]
    fn a_loop_no_thread_ran_turns_the_torque_off() {
        let wire = Wire::default();
        let (c, _tx) = control(&wire);
        drop(c);
        assert_eq!(wire.estops(), 1);
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.ran = true;
        drop(c);
        assert_eq!(wire.estops(), 0);
    }

    /// The labelled last step of the three-step episode above, if logged.
    fn last_transition(records: &[Record]) -> Option<Transition> {
        records.iter().find_map(|r| match r {
            Record::Transition(t) if t.step == 1 => Some(*t),
            _ => None,
        })
    }

    /// A failure label on a step whose `Reward` frame, come just after the label, says
    /// the firmware ended it as terminal keeps it terminal (it was made a truncation,
    /// and training bootstrapped from a terminal state); on a step the firmware did not
    /// end, a failure is a truncation.
    #[test]
    fn a_failure_label_keeps_a_terminal_step_terminal() {
        let wire = Wire::default();
        let (_, records) = labelled_at_step_2(&wire, 64, false, (0.0, true));
        let t = last_transition(&records).expect("logged");
        assert_eq!((t.done, t.truncated, t.success), (true, false, false));
        let (_, records) = labelled_at_step_2(&wire, 64, false, (0.0, false));
        let t = last_transition(&records).expect("logged");
        assert_eq!((t.done, t.truncated, t.success), (true, true, false));
    }

    /// A success label on a step the firmware itself ended as a success (the label came
    /// just before its `Reward` frame) adds no second success reward: the step's reward
    /// was 2.0 on a sparse task, and the return with it.
    #[test]
    fn a_success_label_on_a_firmware_success_adds_no_second_reward() {
        let wire = Wire::default();
        let success = Message::Reward {
            episode: 1,
            step: 2,
            reward: 1.0,
            done: true,
            truncated: false,
            success: true,
            applied: push_hold(),
        };
        let (c, records) = labelled_at_step_2_ending(&wire, 64, true, success);
        let t = last_transition(&records).expect("logged");
        assert_eq!(
            (t.reward, t.done, t.truncated, t.success),
            (1.0, true, false, true)
        );
        assert_eq!(c.report.episodes[0].ret, 0.5 + 1.0);
        // On a step the firmware did not end, the label's reward is added.
        let (c, records) = labelled_at_step_2(&wire, 64, true, (0.25, false));
        let t = last_transition(&records).expect("logged");
        assert_eq!(t.reward, 0.25 + c.cfg.success_reward);
    }

    /// A success label on a step whose reward is not finite: the step is not logged, and
    /// the episode's return does not get the success reward the dataset lacks.
    #[test]
    fn a_label_on_a_step_not_logged_adds_no_success_reward() {
        let wire = Wire::default();
        let (c, records) = labelled_at_step_2(&wire, 64, true, (f32::NAN, false));
        assert!(last_transition(&records).is_none());
        let ep = &c.report.episodes[0];
        assert_eq!((ep.ret, ep.transitions, ep.missing), (0.5, 1, 1), "{ep:?}");
        let (c, _) = labelled_at_step_2(&wire, 64, true, (0.25, false));
        assert_eq!(c.report.episodes[0].ret, 0.75 + c.cfg.success_reward);
    }

    /// Transitions the logger's full queue had no room for are not counted as the
    /// episode's logged transitions (the report said 2 where the log held 1).
    #[test]
    fn transitions_the_logger_had_no_room_for_are_counted_apart() {
        let wire = Wire::default();
        let (c, records) = labelled_at_step_2(&wire, 1, true, (0.0, false));
        let logged = records
            .iter()
            .filter(|r| matches!(r, Record::Transition(_)))
            .count();
        let ep = &c.report.episodes[0];
        assert_eq!(
            (ep.transitions, ep.dropped),
            (logged as u32, 2 - logged as u32)
        );
        assert_eq!(c.report.log_drops, u64::from(ep.dropped));
    }

    /// An episode labelled at step 6 whose step 3 `Reward` was lost: the robot's frames
    /// after the label are not the episode's, but they still move the horizon past
    /// which step 2's transition is given up, so the transitions after it are sent (kept
    /// out of the horizon, they held every later transition back).
    #[test]
    fn frames_past_a_labelled_end_still_move_the_horizon() {
        let wire = Wire::default();
        let (mut c, tx, log_rx) = seven_steps_with_a_lost_reward(&wire, false);
        c.operator_end(Instant::now(), true);
        let obs = vec![0.25; c.od];
        for step in 7..=20u32 {
            let m = Message::sensor(1, step, &obs).unwrap();
            tx.send(frame(100 + step as u16, m)).unwrap();
        }
        c.drain(Instant::now());
        c.emit_transitions();
        assert_eq!(logged_steps(&log_rx), [0, 1, 3, 4, 5]);
        assert_eq!(c.track.as_ref().unwrap().missing, 1);
    }

    /// An episode the firmware ends at step 6 whose step 3 `Reward` was lost, with no
    /// frame after its end: at its end the lost step is given up and the transitions
    /// after it are sent (they waited for a horizon that nothing moved any more).
    #[test]
    fn an_episode_end_gives_up_lost_steps_and_sends_the_rest() {
        let wire = Wire::default();
        let (mut c, _tx, log_rx) = seven_steps_with_a_lost_reward(&wire, true);
        c.finish_episode(Instant::now(), EndReason::Completed, "test".into());
        assert_eq!(logged_steps(&log_rx), [0, 1, 3, 4, 5]);
        let ep = &c.report.episodes[0];
        assert_eq!((ep.transitions, ep.missing, ep.steps), (5, 1, 6));
    }

    /// A lost link's writer is closed at the loss (a USB serial device re-enumerates
    /// under its old name only once every descriptor of the old one is closed); the
    /// reopened port's writer replaces it.
    #[test]
    fn a_lost_links_writer_is_closed() {
        struct Watched(Arc<AtomicBool>);
        impl Write for Watched {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl Drop for Watched {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        let closed = Arc::new(AtomicBool::new(false));
        c.gate.set_writer(Box::new(Watched(closed.clone())));
        tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
        c.drain(Instant::now());
        assert!(closed.load(Ordering::SeqCst));
        assert!(c.gate.send_control(Message::Estop).is_err());
    }

    /// Without `--reconnect-ms`, a link whose read side failed keeps its writer for the
    /// safe stop's holds, and its torque-off goes out there too (it was skipped on any
    /// lost link: the arm stayed energised where the robot file allows torque off);
    /// one whose writes fail too ends as before, without retries of the Estop.
    #[test]
    fn a_lost_link_without_reconnect_still_gets_its_torque_off() {
        for writable in [true, false] {
            let wire = Wire::default();
            let (mut c, tx) = control(&wire);
            c.phase = Phase::Idle;
            wire.broken.store(!writable, Ordering::SeqCst);
            tx.send(LinkEvent::Lost("read failed".into())).unwrap();
            tick_until_done(&mut c, 200);
            assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
            assert_eq!(wire.estops(), writable as usize);
            assert_eq!(c.report.torque_off_ticks.len(), writable as usize);
            assert_eq!(
                c.report.faults[0].torque_off_tick.is_some(),
                writable,
                "{:?}",
                c.report.faults
            );
            assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        }
    }

    /// A link lost during the closing hold of a run whose episodes all ran ends it as
    /// stopped by the fault (exit status 3), as a stop button pressed there does: the
    /// hold and its torque-off may not have reached the robot. It stayed `completed`,
    /// exit status 0. With `--reconnect-ms` the run waits for the port to come back
    /// first (below), and ends so at the limit with none back.
    #[test]
    fn a_link_lost_during_the_closing_hold_is_not_a_completed_run() {
        for reconnect in [None, Some(Duration::from_secs(5))] {
            let wire = Wire::default();
            let (mut c, tx) = control(&wire);
            c.cfg.reconnect = reconnect;
            c.stopping = Some(Outcome::Completed);
            c.enter_safe_stop(After::Exit);
            c.tick += 1;
            c.one_tick(Instant::now());
            wire.broken.store(true, Ordering::SeqCst);
            tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
            if reconnect.is_some() {
                lose_the_port_for_good(&mut c);
            }
            tick_until_done(&mut c, 200);
            assert_eq!(c.phase, Phase::Done, "{reconnect:?}");
            assert_eq!(c.stopping(), Some(Outcome::StoppedByFault), "{reconnect:?}");
            assert!(c.report.faults[0].during_safe_stop);
            assert_eq!(c.report.no_estop_after_loss, reconnect.is_some());
        }
    }

    /// Ticks until the run waits for its port to take the closing Estop (at most 200
    /// ticks), then lets that wait run out.
    fn lose_the_port_for_good(c: &mut Control) {
        reach_the_wait_for_the_port(c);
        let Phase::ReconnectingToStop { until } = &mut c.phase else {
            unreachable!()
        };
        *until = Instant::now();
    }

    /// Ticks until the run waits for its port to come back to send its Estop there, at
    /// most 200 ticks.
    fn reach_the_wait_for_the_port(c: &mut Control) {
        tick_until(c, 200, |p| {
            matches!(p, Phase::ReconnectingToStop { .. } | Phase::Done)
        });
        assert!(
            matches!(c.phase, Phase::ReconnectingToStop { .. }),
            "{:?}",
            c.phase
        );
    }

    /// With `--reconnect-ms`, a link lost while the closing Estop's answer is awaited,
    /// or during the closing hold, leaves the arm energised behind a port that may come
    /// back: the run waits for it (up to the reconnect time), sends the Estop there
    /// before anything else (a firmware takes one before a handshake too) and awaits
    /// its answer. The run ended at once, and the firmware behind a port back held with
    /// its torque on. It still ends stopped by the loss (exit status 3).
    ///
    /// Also a stop signal while the port is being reopened mid-run (its safe stop ends
    /// the run with the link down), and a port back in the same drain as its loss
    /// (before the tick that would begin the wait; it took the writer and got only a
    /// resend, if any was left).
    #[test]
    fn a_port_back_after_the_runs_end_takes_the_closing_estop() {
        for lost in [
            "awaiting the answer",
            "during the closing hold",
            "a stop signal while reconnecting",
            "lost and back in one drain",
        ] {
            let wire = Wire::default();
            let (mut c, tx) = if lost == "a stop signal while reconnecting" {
                lost_with_reconnect(&wire)
            } else {
                control(&wire)
            };
            c.cfg.reconnect = Some(Duration::from_secs(5));
            match lost {
                "awaiting the answer" | "lost and back in one drain" => {
                    c.stopping = Some(Outcome::Completed);
                    stop_at_the_runs_end(&mut c);
                }
                "during the closing hold" => {
                    c.stopping = Some(Outcome::Completed);
                    c.enter_safe_stop(After::Exit);
                    c.tick += 1;
                    c.one_tick(Instant::now());
                }
                _ => {
                    tick_until(&mut c, 200, |p| matches!(p, Phase::Reconnecting { .. }));
                    assert!(matches!(c.phase, Phase::Reconnecting { .. }), "{lost}");
                    c.interrupt(Instant::now(), "signal 15".into());
                }
            }
            let torque_offs = c.report.torque_off_ticks.len();
            if lost != "a stop signal while reconnecting" {
                wire.broken.store(true, Ordering::SeqCst);
                tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
            }
            if lost != "lost and back in one drain" {
                reach_the_wait_for_the_port(&mut c);
            }
            let pty = hil_tests::link::Pty::open().unwrap();
            let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
            deliver(&mut c, &tx, LinkEvent::Reconnected(port));
            assert!(
                matches!(c.phase, Phase::ConfirmingStop { .. }),
                "{lost}: {:?}",
                c.phase
            );
            let estop_tick = c.tick;
            let got = received_on(pty, |g| !g.is_empty());
            assert_eq!(got, [Message::Estop], "{lost}");
            let answer = Message::Fault {
                code: FaultCode::Estop,
            };
            deliver(&mut c, &tx, frame(1, answer));
            assert_eq!(c.phase, Phase::Done, "{lost}");
            // The port back owed the answer to its own Estop only.
            assert_eq!(c.estops_unanswered, 0, "{lost}");
            let expected = if lost == "a stop signal while reconnecting" {
                Outcome::Interrupted
            } else {
                Outcome::StoppedByFault
            };
            assert_eq!(c.stopping(), Some(expected), "{lost}");
            assert!(!c.report.no_estop_after_loss, "{lost}");
            assert_eq!(
                c.report.torque_off_ticks[torque_offs..],
                [estop_tick],
                "{lost}"
            );
        }
    }

    /// The wait for a port back ends when the I/O thread ends (its own reopening gave
    /// up), and a port back that is lost again does not extend it.
    #[test]
    fn the_wait_for_the_port_ends_with_the_io_thread_and_is_not_extended() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        stop_at_the_runs_end(&mut c);
        tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
        reach_the_wait_for_the_port(&mut c);
        let Phase::ReconnectingToStop { until: first } = c.phase else {
            unreachable!()
        };
        // Back, its Estop written, and lost again before the answer.
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        deliver(&mut c, &tx, LinkEvent::Reconnected(port));
        assert!(
            matches!(c.phase, Phase::ConfirmingStop { .. }),
            "{:?}",
            c.phase
        );
        std::thread::sleep(Duration::from_millis(5));
        tx.send(LinkEvent::Lost("unplugged again".into())).unwrap();
        reach_the_wait_for_the_port(&mut c);
        assert_eq!(c.phase, Phase::ReconnectingToStop { until: first });
        drop(tx);
        c.tick += 1;
        c.one_tick(Instant::now());
        assert_eq!(c.phase, Phase::Done);
        assert!(c.report.no_estop_after_loss);
    }

    /// A port that drops and comes back within each drain (a failing cable), its
    /// firmware never answering: each port back takes the closing Estop until the
    /// deadline the first loss set, and the run then ends, the Estop unconfirmed. Before,
    /// each one started a new confirmation, and the run never ended.
    #[test]
    fn a_port_that_keeps_dropping_ends_the_wait_at_its_deadline() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        let limit = Duration::from_millis(40);
        c.cfg.reconnect = Some(limit);
        stop_at_the_runs_end(&mut c);
        let first_loss = Instant::now();
        let mut ptys = vec![];
        while c.phase != Phase::Done {
            assert!(ptys.len() < 400, "still {:?}", c.phase);
            let pty = hil_tests::link::Pty::open().unwrap();
            let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
            tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
            tx.send(LinkEvent::Reconnected(port)).unwrap();
            ptys.push(pty);
            c.tick += 1;
            c.one_tick(Instant::now());
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(first_loss.elapsed() >= limit);
        assert!(c.report.no_estop_after_loss);
        assert_eq!(c.stop_ports_back as usize, ptys.len());
        // Every port back before the deadline took the Estop; the last, after it, got
        // nothing.
        let last = ptys.pop().unwrap();
        for pty in ptys {
            let got = received_on(pty, |g| g.contains(&Message::Estop));
            assert!(got.contains(&Message::Estop), "{got:?}");
        }
        use hil_tests::link::Port;
        let mut buf = [0u8; 64];
        let n = (last.into_port())
            .read_timeout(&mut buf, Duration::from_millis(100))
            .unwrap();
        assert_eq!(n, 0, "{:?}", &buf[..n]);
    }

    /// The closing Estop answered, then the link lost and back, all in one drain: the
    /// run is done, completed, and the port back is sent nothing (the answer says the
    /// torque went off; an Estop there would owe an answer the run need not wait for).
    #[test]
    fn an_answer_before_the_loss_leaves_the_port_back_alone() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.stopping = Some(Outcome::Completed);
        stop_at_the_runs_end(&mut c);
        let answer = Message::Fault {
            code: FaultCode::Estop,
        };
        tx.send(frame(1, answer)).unwrap();
        tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        deliver(&mut c, &tx, LinkEvent::Reconnected(port));
        assert_eq!(c.phase, Phase::Done);
        assert_eq!(c.stopping(), Some(Outcome::Completed));
        let got = received_on(pty, |g| !g.is_empty());
        assert!(!got.contains(&Message::Estop), "{got:?}");
    }

    /// A port back whose `Estop` cannot be written (its device failing again before a
    /// loss is reported) is tried again each tick of the wait, within the first
    /// deadline: it was given up at once, the run waiting out the deadline with a port
    /// that would have taken it.
    #[test]
    fn an_estop_that_cannot_be_written_on_the_port_back_is_tried_again() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        stop_at_the_runs_end(&mut c);
        tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
        reach_the_wait_for_the_port(&mut c);
        let Phase::ReconnectingToStop { until: first } = c.phase else {
            unreachable!()
        };
        let back = Wire::default();
        back.broken.store(true, Ordering::SeqCst);
        c.estop_on_the_port_back(Instant::now(), Box::new(back.clone()));
        for _ in 0..3 {
            assert_eq!(c.phase, Phase::ReconnectingToStop { until: first });
            c.tick += 1;
            c.one_tick(Instant::now());
        }
        assert_eq!(back.estops(), 0);
        back.broken.store(false, Ordering::SeqCst);
        c.tick += 1;
        c.one_tick(Instant::now());
        assert!(
            matches!(c.phase, Phase::ConfirmingStop { .. }),
            "{:?}",
            c.phase
        );
        assert_eq!(back.estops(), 1);
        assert_eq!(c.report.torque_off_ticks.last(), Some(&c.tick));
    }

    /// A robot whose torque must stay on (`gravity_safe_torque_off = false`) gets no
    /// Estop at the run's end: a link lost there ends the run without waiting for the
    /// port, with `--reconnect-ms` too.
    #[test]
    fn a_robot_that_keeps_its_torque_waits_for_no_port_at_the_runs_end() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.cfg.robot.safety.gravity_safe_torque_off = false;
        c.stopping = Some(Outcome::Completed);
        c.enter_safe_stop(After::Exit);
        c.tick += 1;
        c.one_tick(Instant::now());
        tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
        tick_until_done(&mut c, 200);
        assert_eq!(c.phase, Phase::Done);
        assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
    }

    /// A link lost while the closing Estop's answer is awaited: that Estop may not have
    /// left the computer, so the run that was ending complete is not reported completed
    /// (it was: exit 0 with the arm possibly energised). An answer that came first keeps
    /// it completed.
    #[test]
    fn a_link_lost_before_the_closing_estops_answer_is_not_a_completed_run() {
        for answered_first in [false, true] {
            let wire = Wire::default();
            let (mut c, tx) = control(&wire);
            c.stopping = Some(Outcome::Completed);
            stop_at_the_runs_end(&mut c);
            if answered_first {
                let answer = Message::Fault {
                    code: FaultCode::Estop,
                };
                tx.send(frame(1, answer)).unwrap();
            }
            deliver(&mut c, &tx, LinkEvent::Lost("unplugged".into()));
            tick_until_done(&mut c, 10);
            assert_eq!(c.phase, Phase::Done, "{answered_first}");
            let expected = if answered_first {
                Outcome::Completed
            } else {
                Outcome::StoppedByFault
            };
            assert_eq!(c.stopping(), Some(expected), "{answered_first}");
            assert_eq!(c.report.faults.len(), 1, "{answered_first}");
            assert_eq!(c.report.faults[0].kind, FaultKind::LinkLost);
        }
    }

    /// Episode 0 begins (its `Reset` sent) and its first `Sensor` frame, every value
    /// 0.25, comes; one tick acts on it.
    fn act_on_the_first_frame(
        c: &mut Control,
        tx: &crossbeam_channel::Sender<LinkEvent>,
        now: Instant,
    ) {
        c.begin_episode(0, 7, now, now);
        let obs = vec![0.25; c.od];
        tx.send(frame(1, Message::sensor(0, 0, &obs).unwrap()))
            .unwrap();
        c.tick += 1;
        c.one_tick(now);
    }

    /// A joint past its limit at an episode's first frame says what that most often is
    /// (a units mismatch in the robot file), naming `tools robot`.
    #[test]
    fn a_joint_limit_at_the_first_frame_hints_at_units() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.joint_checks = vec![firmware_config::config::JointCheck {
            index: 0,
            min: -0.1,
            max: 0.1,
            what: "joint `shoulder` position (observation `q1`)".into(),
        }];
        let now = Instant::now();
        c.phase = Phase::Idle;
        c.tick += 1;
        c.one_tick(now);
        act_on_the_first_frame(&mut c, &tx, now);
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        assert_eq!(c.report.faults[0].kind, FaultKind::JointLimit);
        let detail = &c.report.faults[0].detail;
        assert!(
            detail.starts_with("joint `shoulder` position (observation `q1`) is 0.25 at step 0")
                && detail.contains("most often a units mismatch")
                && detail.contains("`tools robot FILE`"),
            "{detail}"
        );
    }

    /// A frame acted on with an observation outside the running bundle's bounds (for a
    /// robot bundle, its training data's range) is counted on the episode, the first
    /// named; not a fault. (Before 2026-12-07 the controller never looked at the bounds.)
    #[test]
    fn observations_outside_the_bundles_bounds_are_counted() {
        use shared_model::manifest::{Trust, load_bundle};
        let dir = tempfile::tempdir().unwrap();
        shared_model::synthetic::SyntheticSpec::cpu()
            .write(dir.path(), 5, None)
            .unwrap();
        let b = load_bundle(dir.path(), &Trust::AllowUnsigned).unwrap();
        let options = crate::runtime::PolicyOptions {
            backend: crate::runtime::Backend::Native,
            executed_steps: None,
            seed: 1,
        };
        let mut brain = Brain::new(&b, &options, false).unwrap();
        let Brain::Full { policy, .. } = &mut brain else {
            panic!("not full")
        };
        let od = policy.manifest.observation.dim;
        policy.manifest.observation.high[od - 1] = 0.2;
        let wire = Wire::default();
        let (mut c, tx) = control_with(&wire, brain);
        let now = Instant::now();
        c.phase = Phase::Idle;
        c.tick += 1;
        c.one_tick(now);
        act_on_the_first_frame(&mut c, &tx, now);
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
        let t = c.track.as_ref().unwrap();
        assert_eq!(t.outside_bounds, 1);
        assert_eq!(
            t.outside_bounds_first.as_deref(),
            Some(
                format!(
                    "observation[{}] `obs.{}` = 0.25 at step 0, outside [-10, 0.2]",
                    od - 1,
                    od - 1
                )
                .as_str()
            )
        );
    }

    /// A two-speed worker that stopped at an error ends the run at the fault: every
    /// later plan fails with it, and each episode `--max-faults` allowed reset the robot
    /// only to fault again (six `Reset`s for `--max-faults 5`).
    #[test]
    fn a_stopped_two_speed_worker_ends_the_run() {
        use shared_model::manifest::{SigningKey, Trust, load_bundle};
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        shared_model::synthetic::SyntheticSpec::cpu()
            .write(dir.path(), 5, Some(&key))
            .unwrap();
        let b = load_bundle(dir.path(), &Trust::Key(key.verifying_key())).unwrap();
        let options = crate::runtime::PolicyOptions {
            backend: crate::runtime::Backend::Native,
            executed_steps: None,
            seed: 1,
        };
        let brain = Brain::new(&b, &options, true).unwrap();
        let Brain::TwoSpeed { policy, .. } = &brain else {
            panic!("not two-speed")
        };
        policy.fail_worker("out of memory");
        let wire = Wire::default();
        let (mut c, tx) = control_with(&wire, brain);
        c.cfg.max_faults = 5;
        c.cfg.episodes = Some(10);
        let now = Instant::now();
        c.phase = Phase::Idle;
        c.tick += 1;
        c.one_tick(now);
        assert!(matches!(c.phase, Phase::Starting { .. }), "{:?}", c.phase);
        act_on_the_first_frame(&mut c, &tx, now);
        assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
        assert_eq!(c.report.faults[0].kind, FaultKind::PolicyError);
        let detail = &c.report.faults[0].detail;
        assert!(
            detail.contains("out of memory") && detail.contains("cannot act again"),
            "{detail}"
        );
        assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
        tick_until_done(&mut c, 200);
        assert_eq!(wire.count(|m| matches!(m, Message::Reset { .. })), 1);
    }

    /// A bundle that arrives while an episode runs takes over only at the next
    /// episode's `Reset`: a policy never changes within an episode.
    #[test]
    fn a_new_policy_takes_over_only_between_episodes() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        // One instant for every tick: a descheduled test thread must not find the
        // sensor stale.
        let now = Instant::now();
        let ready = super::super::streamer::SwapSlot::default();
        c.swaps = Some(ready.clone());
        c.cfg.episodes = Some(2);
        c.phase = Phase::Idle;
        c.tick += 1;
        c.one_tick(now);
        assert!(matches!(c.phase, Phase::Starting { .. }), "{:?}", c.phase);
        c.begin_episode(0, 7, now, now);
        assert!(ready.offer(("0000001".into(), Brain::Hold)).is_none());
        for _ in 0..5 {
            c.tick += 1;
            c.one_tick(now);
        }
        assert_eq!(c.phase, Phase::Running);
        assert!(
            c.report.bundle_swaps.is_empty(),
            "{:?}",
            c.report.bundle_swaps
        );
        // The episode ends; the next one starts with the new policy.
        c.track = None;
        c.phase = Phase::Idle;
        c.tick += 1;
        let tick = c.tick;
        c.one_tick(now);
        assert_eq!(
            c.report.bundle_swaps,
            [super::super::BundleSwap {
                bundle: "0000001".into(),
                first_episode: 1,
                tick,
            }]
        );
        assert!(matches!(c.phase, Phase::Starting { .. }), "{:?}", c.phase);
        // The policy it replaced went back to the slot, for the uplink's thread to free
        // (it was dropped on the control thread, in the boundary tick).
        assert!(ready.release_retired());
    }

    /// A `Reset` resent with a `Hello` (the first went unanswered) while the firmware
    /// still runs the episode just finished: its late frames start no episode (one
    /// started a bogus episode, ended at once by `implausible_step`: with the default
    /// `--max-faults 0`, the run); a rebooted firmware's first episode of the same
    /// number, from its first steps, does.
    #[test]
    fn a_resent_reset_takes_no_late_frame_of_the_last_episode_for_a_new_one() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        let now = Instant::now();
        let mut last = Track::new(5, 0, 7, now);
        last.newest = Some(600);
        c.last_finished = Some(Finished::of(&last));
        c.phase = Phase::Starting {
            since: now - Duration::from_secs(3),
            attempts: 1,
            seed: 7,
        };
        c.step_phase(now);
        assert!(matches!(c.phase, Phase::Starting { attempts: 2, .. }));
        let obs = vec![0.25; c.od];
        tx.send(frame(1, Message::sensor(5, 601, &obs).unwrap()))
            .unwrap();
        c.drain(now);
        assert!(c.track.is_none());
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
        tx.send(frame(2, Message::sensor(5, 0, &obs).unwrap()))
            .unwrap();
        c.drain(now);
        assert_eq!(c.track.as_ref().map(|t| t.id), Some(5));
    }

    /// A firmware that reboots while a faulted episode waits for its last frames sends
    /// none of them any more, and numbers its next episode as it did that one: the
    /// episode ends at once, and its id is not taken for a finished one (its frames
    /// would then not start the rebooted firmware's first episode).
    #[test]
    fn a_reboot_ends_a_faulted_episode_waiting_for_frames() {
        let wire = Wire::default();
        let (mut c, tx, _) = faulted_after_two_frames(0, &wire);
        assert!(c.closing.is_some());
        tx.send(frame(0, Message::Hello(c.hello))).unwrap();
        c.drain(Instant::now());
        assert!(c.closing.is_none());
        assert_eq!(c.last_finished, None);
        let reasons: Vec<_> = c.report.faults.iter().map(|f| f.kind).collect();
        assert_eq!(reasons, [FaultKind::JointLimit, FaultKind::FirmwareReset]);
        assert_eq!(c.report.episodes.len(), 1);
    }

    /// A faulted episode whose last frames never come ends when its wait is over, and at
    /// the latest when the safe stop ends: never left open into the next episode.
    #[test]
    fn a_faulted_episode_without_its_last_frames_still_ends() {
        let wire = Wire::default();
        let (mut c, _tx, _) = faulted_after_two_frames(1, &wire);
        let mut ticks = 0;
        while c.report.episodes.is_empty() {
            assert!(matches!(c.phase, Phase::SafeStop { .. }), "{:?}", c.phase);
            c.tick += 1;
            c.one_tick(Instant::now());
            ticks += 1;
            assert!(ticks < 1000);
        }
        assert_eq!(c.report.episodes[0].transitions, 0);
        assert!(c.closing.is_none());
    }

    /// `push`'s applied action `a` as a `Reward`'s values (identity mapping).
    fn applied(a: [f32; 2]) -> heapless::Vec<f32, MAX_ACT> {
        heapless::Vec::from_slice(&a).unwrap()
    }

    /// The transition of a step records the action the firmware says it applied: the
    /// command it applied (bit for bit, with its send time and marks) where that was an
    /// older one than the command in force (late on the line), and the firmware's
    /// values where it applied none (its slew limit on the way to one). Those steps are
    /// counted; a step that applied the command in force, round-off aside, is not.
    #[test]
    fn a_transition_records_the_action_its_step_applied() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        let (log_tx, log_rx) = crossbeam_channel::unbounded();
        c.log_tx = Some(log_tx);
        c.track = Some(Track::new(1, 0, 7, Instant::now()));
        c.phase = Phase::Running;
        let mut a = [0.0f32; MAX_ACT];
        a[..2].copy_from_slice(&[0.1, -0.1]);
        let mut b = [0.0f32; MAX_ACT];
        b[..2].copy_from_slice(&[0.3, 0.2]);
        let (policy_at, teleop_at) = (Instant::now(), Instant::now() + Duration::from_micros(1));
        c.commands.push(SentCommand {
            at: policy_at,
            action: a,
            intervention: false,
            teleop: false,
        });
        c.commands.push(SentCommand {
            at: teleop_at,
            action: b,
            intervention: false,
            teleop: true,
        });
        let obs = [0.0f32; 10];
        let reward = |step, values| Message::Reward {
            episode: 1,
            step,
            reward: 0.0,
            done: false,
            truncated: false,
            success: false,
            applied: applied(values),
        };
        std::thread::sleep(Duration::from_millis(1));
        for step in 0..4 {
            let seq = 2 * step as u16;
            tx.send(frame(seq, Message::sensor(1, step, &obs).unwrap()))
                .unwrap();
        }
        // Step 0 applied `a` (`b` was late), step 1 `b` within round-off, step 2 the
        // slew limit's way from `b` toward a command that came after its Sensor frame.
        tx.send(frame(1, reward(1, [0.1, -0.1]))).unwrap();
        tx.send(frame(3, reward(2, [0.3 + 2e-7, 0.2 - 1e-7])))
            .unwrap();
        tx.send(frame(5, reward(3, [0.25, 0.2]))).unwrap();
        c.drain(Instant::now());
        c.emit_transitions();
        let got: Vec<Transition> = log_rx
            .try_iter()
            .filter_map(|r| match r {
                Record::Transition(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), 3);
        let ns = |t| ns_since(c.start, t);
        assert_eq!((got[0].action, got[0].teleop), (a, false));
        assert_eq!(got[0].action_sent_ns, ns(policy_at));
        assert_eq!((got[1].action, got[1].teleop), (b, true));
        assert_eq!(got[1].action_sent_ns, ns(teleop_at));
        assert_eq!(&got[2].action[..2], &[0.25, 0.2]);
        // The command in force marks a step that applied none of them.
        assert_eq!(
            (got[2].teleop, got[2].action_sent_ns),
            (true, ns(teleop_at))
        );
        assert_eq!(c.track.as_ref().unwrap().applied_otherwise, 2);
    }

    /// A `Reward` frame whose applied action is not finite or lies outside the envelope
    /// (the firmware's bug) faults the episode, naming the value; one a round-off
    /// beyond the envelope's edge is taken, brought onto the edge.
    #[test]
    fn an_applied_action_outside_the_envelope_faults_by_name() {
        // A running episode's control loop after step 1's `Reward` saying `values`.
        let reward = |values| Message::Reward {
            episode: 1,
            step: 1,
            reward: 0.0,
            done: false,
            truncated: false,
            success: false,
            applied: applied(values),
        };
        let heard = |values| {
            let wire = Wire::default();
            let (mut c, tx) = control(&wire);
            c.track = Some(Track::new(1, 0, 7, Instant::now()));
            c.phase = Phase::Running;
            let sensor = Message::sensor(1, 1, &vec![0.0; c.od]).unwrap();
            tx.send(frame(0, sensor)).unwrap();
            tx.send(frame(1, reward(values))).unwrap();
            c.drain(Instant::now());
            (c, tx)
        };
        for (values, said) in [
            (
                [f32::NAN, 0.0],
                "the Reward frame of step 1 says action [0] applied NaN",
            ),
            (
                [0.0, 1.5],
                "the Reward frame of step 1 says action [1] applied 1.5 in robot units, 1.5 \
                 in policy units: outside the envelope [-1, 1]",
            ),
        ] {
            let (mut c, tx) = heard(values);
            let f = &c.report.faults;
            assert_eq!(f.len(), 1, "{values:?}");
            assert_eq!(f[0].kind, FaultKind::AppliedAction);
            assert!(f[0].detail.starts_with(said), "{}", f[0].detail);
            // A copy of the frame (the link marks it stale) is not counted as one of
            // the faulted episode's unreadable frames: it is the fault already.
            let LinkEvent::Frame { rx, frame, .. } = frame(1, reward(values)) else {
                unreachable!()
            };
            tx.send(LinkEvent::Frame {
                rx,
                frame,
                stale: true,
            })
            .unwrap();
            c.drain(Instant::now());
            let closing = c.closing.as_ref().expect("the faulted episode");
            assert_eq!(closing.track.malformed, 0, "{values:?}");
        }
        let (c, _tx) = heard([1.0 + 1e-6, -1.0]);
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
        let r = c.track.as_ref().unwrap().reward(1).unwrap();
        assert_eq!(&r.applied[..2], &[1.0, -1.0]);
    }

    /// A non-finite reward (the firmware's bug) is left out of the episode's return.
    #[test]
    fn a_nan_reward_is_left_out_of_the_return() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.track = Some(Track::new(1, 0, 7, Instant::now()));
        for (step, reward) in [(1, 0.5), (2, f32::NAN), (3, 0.25)] {
            tx.send(frame(
                step as u16,
                Message::Reward {
                    episode: 1,
                    step,
                    reward,
                    done: false,
                    truncated: false,
                    success: false,
                    applied: push_hold(),
                },
            ))
            .unwrap();
        }
        c.drain(Instant::now());
        assert_eq!(c.track.as_ref().unwrap().ret, 0.75);
        assert_eq!(c.report.nan_rewards, 1);
    }

    #[test]
    fn the_step_leap_bound_follows_the_stale_limit_in_ticks() {
        let ms = Duration::from_millis;
        // 150 ms at 20 Hz: 3 ticks.
        assert_eq!(max_step_leap(ms(50), ms(150)), 4 * 3 + RING as u32);
        // A part of a tick counts as a tick; a time scale scales both alike.
        assert_eq!(max_step_leap(ms(50), ms(151)), 4 * 4 + RING as u32);
        let (p, s) = (ms(50).div_f64(10.0), ms(150).div_f64(10.0));
        assert_eq!(max_step_leap(p, s), max_step_leap(ms(50), ms(150)));
    }

    /// A label in the first LABEL_GRACE of an episode is the episode before's (a key
    /// pressed twice); from then on it is this one's, in wall time.
    #[test]
    fn a_label_just_after_an_episode_began_is_not_its() {
        let start = Instant::now();
        let t = Track::new(3, 0, 7, start);
        assert!(!t.takes_label_at(start));
        assert!(!t.takes_label_at(start + LABEL_GRACE - Duration::from_millis(1)));
        assert!(t.takes_label_at(start + LABEL_GRACE));
        assert!(t.takes_label_at(start + Duration::from_secs(60)));
        // A clock read before the start (another thread's `now`) is not after it.
        let before = start.checked_sub(Duration::from_millis(1)).unwrap_or(start);
        assert!(!t.takes_label_at(before));
    }

    /// One tick that stalls for five periods misses five deadlines in a row: with
    /// `--max-overruns 3` that is a deadline fault, as the flag says. (Counting the
    /// ticks that overran took such a stall for one.)
    #[test]
    fn a_stall_counts_every_deadline_it_missed() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.cfg.max_consecutive_overruns = 3;
        c.begin_episode(0, 7, Instant::now(), Instant::now());
        let p = c.period;
        let d = Instant::now();
        let next = c.next_deadline(d, d + p * 5 + Duration::from_micros(10));
        assert_eq!(next, d + p * 6, "the next deadline stays on the grid");
        assert_eq!(c.ep_cadence.overruns, 5);
        assert_eq!(c.consecutive_overruns, 5);
        c.tick += 1;
        c.one_tick(Instant::now());
        let kinds: Vec<_> = c.report.faults.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![FaultKind::DeadlineMissed]);
        assert!(c.report.faults[0].detail.starts_with("5 deadlines"));
    }

    /// One late wake-up skips the deadlines it passed, once each (`bench-wake` ran them
    /// back to back to catch up, and counted a 10-period stall as 10 late wake-ups).
    #[test]
    fn a_late_wake_up_skips_the_deadlines_it_passed() {
        let p = Duration::from_millis(2);
        let d = Instant::now();
        assert_eq!(skip_missed(d, d, p), (d, 0), "a wake-up on the deadline");
        assert_eq!(skip_missed(d, d - p / 2, p), (d, 0));
        assert_eq!(skip_missed(d, d + p / 2, p), (d + p, 1));
        // 10 periods late: the 10 deadlines passed are skipped in one step.
        let (next, missed) = skip_missed(d, d + p * 9 + p / 2, p);
        assert_eq!((next, missed), (d + p * 10, 10));
        assert!(next > d + p * 9 + p / 2);
        // A stall of five days at the shortest period: more than u32::MAX deadlines
        // passed (the count overflowed, and the grid stayed behind).
        let p = Duration::from_micros(100);
        let end = d + p * u32::MAX + p / 2;
        let (next, missed) = skip_missed(d, end, p);
        assert_eq!(missed, u64::from(u32::MAX) + 1);
        assert!(next > end && next - end <= p);
    }

    /// A tick that ended in time resets the count, and one overrun is not a fault.
    #[test]
    fn a_tick_in_time_ends_a_run_of_missed_deadlines() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        let p = c.period;
        let d = Instant::now();
        let next = c.next_deadline(d, d + p + Duration::from_micros(10));
        assert_eq!((next, c.consecutive_overruns), (d + p * 2, 1));
        let next = c.next_deadline(next, next + p / 2);
        assert_eq!((next, c.consecutive_overruns), (d + p * 3, 0));
        assert_eq!(c.ep_cadence.overruns, 1);
    }

    /// The snap at an episode's start moves the grid earlier, but never to before the
    /// end of the tick that took it: a tick that ended before its own deadline is not
    /// an overrun because the grid moved.
    #[test]
    fn phase_alignment_never_makes_an_overrun() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.cfg.align_phase = true;
        c.snap_phase = true;
        let p = c.period;
        // The frame arrived 0.48 periods before the deadline: the snap wants the grid
        // 0.43 periods earlier (the lead is 0.05 periods at 20 Hz).
        c.acted_age = Some((p.as_nanos() * 48 / 100) as i128);
        let d = Instant::now();
        let end = d + p * 6 / 10;
        let next = c.next_deadline(d, end);
        assert_eq!(next, end, "moved as far as the tick's end allows");
        assert_eq!(c.ep_cadence.overruns, 0);
        assert_eq!(c.consecutive_overruns, 0);
        assert!(!c.snap_phase);
        // Without the end in the way, the snap takes the whole shift.
        c.snap_phase = true;
        c.acted_age = Some((p.as_nanos() * 48 / 100) as i128);
        let next = c.next_deadline(d, d + p / 10);
        assert_eq!(next, d + p - p * 43 / 100);
    }

    /// An operator's reset in an episode's first LABEL_GRACE is the episode before's (a
    /// key pressed twice while a fast firmware already began the next): ignored, as a
    /// label is; a later one resets.
    #[test]
    fn a_reset_just_after_an_episode_began_is_ignored() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        let start = Instant::now();
        c.begin_episode(0, 7, start, start);
        c.on_operator(start + Duration::from_millis(10), OperatorCommand::Reset);
        assert_eq!(c.report.operator.ignored, 1);
        assert_eq!(c.report.operator.resets, 0);
        assert_eq!(c.phase, Phase::Running);
        c.on_operator(start + LABEL_GRACE, OperatorCommand::Reset);
        assert_eq!(c.report.operator.resets, 1);
        assert_eq!(c.phase, Phase::Idle);
    }

    /// A watchdog fault held back behind a later frame arrives stale, but it is the
    /// firmware's first word of its fallback: the safe stop starts from the firmware's
    /// hold, not from our last command. A copy of it (the same number) later changes
    /// nothing.
    #[test]
    fn a_reordered_watchdog_fault_moves_the_reference_to_the_firmwares_hold() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.begin_episode(0, 7, Instant::now(), Instant::now());
        let push = |c: &mut Control| {
            for _ in 0..4 {
                c.gate.send_command(&[0.6, 0.6]).unwrap();
            }
            assert!(c.gate.last()[0] > 0.5);
        };
        push(&mut c);
        let now = Instant::now();
        let watchdog = Message::Fault {
            code: FaultCode::Watchdog,
        };
        let reordered = Seq {
            number: 40,
            stale: true,
        };
        c.on_message(watchdog.clone(), 0, now, now, reordered);
        assert_eq!(c.gate.last()[..2], [0.0, 0.0]);
        c.phase = Phase::Running;
        push(&mut c);
        c.on_message(watchdog, 0, now, now, reordered);
        assert!(c.gate.last()[0] > 0.5, "a copy moved the reference");
    }

    /// Deadlines missed before an episode began (a stall while idle) are not the
    /// episode's: its first tick is no deadline fault.
    #[test]
    fn a_stall_before_the_episode_is_not_its_fault() {
        let wire = Wire::default();
        let (mut c, _tx) = control(&wire);
        c.cfg.max_consecutive_overruns = 3;
        let d = Instant::now();
        c.next_deadline(d, d + c.period * 12);
        assert!(c.consecutive_overruns >= 3);
        c.begin_episode(0, 7, Instant::now(), Instant::now());
        c.tick += 1;
        c.one_tick(Instant::now());
        assert!(c.report.faults.is_empty(), "{:?}", c.report.faults);
    }

    /// A control thread with `--reconnect-ms 5000` whose link was lost between
    /// episodes (its safe stop under way).
    fn lost_with_reconnect(wire: &Wire) -> (Control, crossbeam_channel::Sender<LinkEvent>) {
        let (mut c, tx) = control(wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.phase = Phase::Idle;
        tx.send(LinkEvent::Lost("unplugged".into())).unwrap();
        c.drain(Instant::now());
        (c, tx)
    }

    /// A board that reset when its port was reopened (many do) announces itself with a
    /// `Hello` while the reconnect's safe stop still holds: the stop ends in a handshake
    /// on the port back. The reboot's fault turned the stop's continuation from
    /// reconnecting into handshaking, which sent its `Hello`s to the closed port, left
    /// the port back unused, and ended the run on the handshake's timeout.
    #[test]
    fn a_reboot_during_a_reconnects_safe_stop_handshakes_on_the_port_back() {
        let wire = Wire::default();
        let (mut c, tx) = lost_with_reconnect(&wire);
        assert!(
            matches!(
                c.phase,
                Phase::SafeStop {
                    then: After::Reconnect,
                    ..
                }
            ),
            "{:?}",
            c.phase
        );
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        tx.send(LinkEvent::Reconnected(port)).unwrap();
        tx.send(frame(0, Message::Hello(c.hello))).unwrap();
        for _ in 0..50 {
            c.tick += 1;
            c.one_tick(Instant::now());
            if !matches!(c.phase, Phase::SafeStop { .. }) {
                break;
            }
        }
        assert!(
            c.report
                .faults
                .iter()
                .any(|f| f.kind == FaultKind::FirmwareReset),
            "{:?}",
            c.report.faults
        );
        assert!(
            matches!(c.phase, Phase::Handshaking { .. }),
            "{:?}",
            c.phase
        );
        assert!(!c.link_down && c.pending_writer.is_none());
        let is_hello = |m: &Message| matches!(m, Message::Hello(_));
        let got = received_on(pty, |g| g.iter().any(is_hello));
        assert_eq!(
            got.iter().filter(|m| is_hello(m)).count(),
            1,
            "no Hello on the port back: {got:?}"
        );
    }

    /// A stop signal while re-handshaking on a port that came back turns the torque
    /// off: the firmware there holds with its torque on, and the run ended at once,
    /// sending nothing but the `Hello`.
    #[test]
    fn an_interrupt_while_re_handshaking_sends_the_estop() {
        let wire = Wire::default();
        let (mut c, tx) = lost_with_reconnect(&wire);
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        tx.send(LinkEvent::Reconnected(port)).unwrap();
        tick_until(&mut c, 50, |p| matches!(p, Phase::Handshaking { .. }));
        assert!(
            matches!(c.phase, Phase::Handshaking { .. }),
            "{:?}",
            c.phase
        );
        c.interrupt(Instant::now(), "signal 15".into());
        assert!(
            matches!(c.phase, Phase::ConfirmingStop { .. }),
            "{:?}",
            c.phase
        );
        let got = received_on(pty, |g| g.contains(&Message::Estop));
        assert!(
            matches!(got[..], [Message::Hello(_), Message::Estop]),
            "{got:?}"
        );
        // The link loss's fault got this torque-off.
        let lost = c
            .report
            .faults
            .iter()
            .find(|f| f.kind == FaultKind::LinkLost);
        assert_eq!(
            lost.and_then(|f| f.torque_off_tick),
            Some(c.tick),
            "{lost:?}"
        );
        // A board that booted as the port opened answers the Hello (numbered 0), then
        // the Estop: neither is a reboot or a stop button, and the run ends interrupted.
        // (The Hello was taken for a reboot: a fault, a new stop, and the Estop's
        // answer then for a stop button's, exit 3.)
        tx.send(frame(0, Message::Hello(c.hello))).unwrap();
        tx.send(frame(
            1,
            Message::Fault {
                code: firmware_config::protocol::FaultCode::Estop,
            },
        ))
        .unwrap();
        tick_until(&mut c, 50, |p| matches!(p, Phase::Done));
        assert!(matches!(c.phase, Phase::Done), "{:?}", c.phase);
        assert_eq!(c.stopping, Some(Outcome::Interrupted));
        assert!(c.fatal.is_none(), "{:?}", c.fatal);
        assert_eq!(
            c.report.faults.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [FaultKind::LinkLost]
        );
    }

    /// The frames a simulated firmware behind `pty` received, read until `enough` says
    /// so or 5 s passed.
    fn received_on(pty: hil_tests::link::Pty, enough: impl Fn(&[Message]) -> bool) -> Vec<Message> {
        use hil_tests::link::Port;
        let mut firmware = pty.into_port();
        let (mut buf, mut d) = ([0u8; 256], FrameDecoder::default());
        let mut got = vec![];
        let start = Instant::now();
        while !enough(&got) && start.elapsed() < Duration::from_secs(5) {
            let n = firmware
                .read_timeout(&mut buf, Duration::from_millis(50))
                .unwrap();
            got.extend(
                buf[..n]
                    .iter()
                    .filter_map(|&b| d.push(b))
                    .filter_map(|f| f.ok().map(|f| f.message)),
            );
        }
        got
    }

    /// A run whose link was lost, with `--reconnect-ms`, stopped by a signal while the
    /// reconnect's safe stop holds with a port back kept aside (the pty returned): it
    /// ends confirming the closing Estop, which went to that port.
    fn ended_in_a_reconnects_safe_stop(
        wire: &Wire,
    ) -> (
        Control,
        crossbeam_channel::Sender<LinkEvent>,
        hil_tests::link::Pty,
    ) {
        let (mut c, tx) = lost_with_reconnect(wire);
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        deliver(&mut c, &tx, LinkEvent::Reconnected(port));
        assert!(c.pending_writer.is_some(), "{:?}", c.phase);
        c.interrupt(Instant::now(), "signal 2".into());
        for _ in 0..200 {
            c.tick += 1;
            c.one_tick(Instant::now());
            if !matches!(c.phase, Phase::SafeStop { .. }) {
                break;
            }
        }
        assert!(
            matches!(c.phase, Phase::ConfirmingStop { .. }),
            "{:?}",
            c.phase
        );
        (c, tx, pty)
    }

    /// A stop signal while the reconnect's safe stop still holds, its port back kept
    /// aside: the run ends there, and that port takes the Estop (its firmware holds with
    /// its torque on). The kept port was dropped unused, and nothing turned its torque
    /// off.
    #[test]
    fn a_run_ending_in_a_reconnects_safe_stop_sends_the_estop_to_the_port_back() {
        let wire = Wire::default();
        let (mut c, tx, pty) = ended_in_a_reconnects_safe_stop(&wire);
        // Only the Estop: neither the hold ramp nor a Hello goes to an unverified port.
        let got = received_on(pty, |g| g.contains(&Message::Estop));
        assert_eq!(got, [Message::Estop]);
        // A board that reset as its port opened announces itself (Hello numbered 0),
        // then answers: no reboot, no stop button, the run ends interrupted. (The Hello
        // was taken for a reboot, and the answer then for a stop button's: exit 3.)
        tx.send(frame(0, Message::Hello(c.hello))).unwrap();
        tx.send(frame(
            1,
            Message::Fault {
                code: firmware_config::protocol::FaultCode::Estop,
            },
        ))
        .unwrap();
        tick_until_done(&mut c, 10);
        assert!(matches!(c.phase, Phase::Done), "{:?}", c.phase);
        assert_eq!(c.stopping, Some(Outcome::Interrupted));
        assert!(c.fatal.is_none(), "{:?}", c.fatal);
        assert_eq!(c.report.ignored_hellos, 1);
        assert_eq!(
            c.report.faults.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [FaultKind::LinkLost]
        );
    }

    /// The port kept aside takes the closing Estop, then drops before its answer: the
    /// wait for a port back begins (from that loss: the first at the run's end) and
    /// ends unconfirmed at its deadline, counting the kept port as one that came back
    /// (the end said the link never came back).
    #[test]
    fn a_kept_port_that_took_the_estop_and_dropped_counts_as_back() {
        let wire = Wire::default();
        let (mut c, tx, pty) = ended_in_a_reconnects_safe_stop(&wire);
        assert_eq!(c.stop_ports_back, 1);
        // (A short wait from here: the phases run on the clock.)
        let limit = Duration::from_millis(40);
        c.cfg.reconnect = Some(limit);
        let lost = Instant::now();
        deliver(&mut c, &tx, LinkEvent::Lost("unplugged again".into()));
        let Phase::ReconnectingToStop { until } = c.phase else {
            panic!("{:?}", c.phase);
        };
        assert!(until >= lost + limit, "{until:?}");
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(2));
            c.tick += 1;
            c.one_tick(Instant::now());
            if c.phase == Phase::Done {
                break;
            }
        }
        assert!(matches!(c.phase, Phase::Done), "{:?}", c.phase);
        assert!(c.report.no_estop_after_loss);
        assert_eq!(c.stop_ports_back, 1);
        drop(pty);
    }

    /// A re-handshake after a reconnect that ends the run otherwise than by a stop
    /// signal (its timeout, a panic on another of the run's threads) turns the torque
    /// off too: the firmware behind the port back holds with its torque on. Those ends
    /// went straight to done. A refused Hello sends nothing, as at the first handshake:
    /// the firmware there is not our robot's. One refused for its settings alone is our
    /// robot, configured from another version of the file: it gets the Estop (it got
    /// nothing, holding with its torque on).
    #[test]
    fn a_re_handshake_that_ends_the_run_sends_the_estop() {
        for end in ["timeout", "panic", "refused", "other settings"] {
            let wire = Wire::default();
            let (mut c, tx) = lost_with_reconnect(&wire);
            let refused = firmware_config::protocol::Hello {
                robot_id: c.hello.robot_id ^ 1,
                ..c.hello
            };
            let other_settings = firmware_config::protocol::Hello {
                settings_hash: c.hello.settings_hash ^ 1,
                ..c.hello
            };
            let pty = hil_tests::link::Pty::open().unwrap();
            let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
            tx.send(LinkEvent::Reconnected(port)).unwrap();
            tick_until(&mut c, 200, |p| matches!(p, Phase::Handshaking { .. }));
            assert!(matches!(c.phase, Phase::Handshaking { .. }), "{end}");
            match end {
                "timeout" => {
                    let long_ago =
                        Instant::now() - c.cfg.handshake_timeout - Duration::from_secs(1);
                    c.phase = Phase::Handshaking {
                        since: long_ago,
                        last_hello: Instant::now(),
                    };
                }
                "panic" => c.run_panicked.raise(|| "a test thread panicked".into()),
                "refused" => tx.send(frame(0, Message::Hello(refused))).unwrap(),
                _ => tx.send(frame(0, Message::Hello(other_settings))).unwrap(),
            }
            c.tick += 1;
            c.one_tick(Instant::now());
            assert_eq!(c.stopping, Some(Outcome::Error), "{end}");
            assert!(c.fatal.is_some(), "{end}");
            if end == "other settings" {
                let fatal = c.fatal.as_deref().unwrap();
                assert!(fatal.contains("robot settings mismatch"), "{fatal}");
                assert_eq!(
                    c.report.faults.last().map(|f| f.kind),
                    Some(FaultKind::Handshake)
                );
            }
            if end == "refused" {
                assert!(matches!(c.phase, Phase::Done), "{end}: {:?}", c.phase);
                // (Written in the tick, before this read: an Estop would be here too.)
                let got = received_on(pty, |g| !g.is_empty());
                assert!(matches!(got[..], [Message::Hello(_)]), "{end}: {got:?}");
                continue;
            }
            assert!(
                matches!(c.phase, Phase::ConfirmingStop { .. }),
                "{end}: {:?}",
                c.phase
            );
            let got = received_on(pty, |g| g.contains(&Message::Estop));
            assert!(
                matches!(got[..], [Message::Hello(_), Message::Estop]),
                "{end}: {got:?}"
            );
        }
    }

    /// An I/O thread that ended without reporting a loss (it panicked) leaves the
    /// port's writer as it was: the safe stop's torque-off goes out on it, as its holds
    /// did, with `--reconnect-ms` too. It was skipped there (a reconnecting run's lost
    /// link has its writer closed; this one's was not), leaving the arm energised.
    #[test]
    fn an_ended_io_thread_still_gets_its_torque_off() {
        for reconnect in [None, Some(Duration::from_secs(5))] {
            let wire = Wire::default();
            let (mut c, tx) = control(&wire);
            c.cfg.reconnect = reconnect;
            c.phase = Phase::Idle;
            drop(tx);
            tick_until_done(&mut c, 200);
            assert_eq!(c.stopping(), Some(Outcome::StoppedByFault));
            assert_eq!(wire.estops(), 1, "{reconnect:?}");
            assert_eq!(c.report.torque_off_ticks.len(), 1, "{reconnect:?}");
            assert_eq!(c.report.faults.len(), 1, "{:?}", c.report.faults);
            // With --reconnect-ms its answer is not confirmed, and the report says so
            // (the wait ended at once, without a word).
            assert_eq!(
                c.report.no_estop_after_loss,
                reconnect.is_some(),
                "{reconnect:?}"
            );
        }
    }

    /// A port reopened during a safe stop and lost again before the stop ended is not
    /// taken up when it ends: the run goes on waiting for the link (it handshook on the
    /// dead port).
    #[test]
    fn a_port_lost_again_during_the_safe_stop_is_not_used() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.link_down = true;
        c.phase = Phase::SafeStop {
            left: 3,
            then: After::Reconnect,
        };
        let pty = hil_tests::link::Pty::open().unwrap();
        let port = super::super::link::open_port(pty.path(), 115_200).unwrap();
        tx.send(LinkEvent::Reconnected(port)).unwrap();
        tx.send(LinkEvent::Lost("gone again".into())).unwrap();
        for _ in 0..20 {
            c.tick += 1;
            c.one_tick(Instant::now());
            if !matches!(c.phase, Phase::SafeStop { .. }) {
                break;
            }
        }
        assert!(
            matches!(c.phase, Phase::Reconnecting { .. }),
            "{:?}",
            c.phase
        );
        assert!(c.link_down);
    }

    /// A run waiting for its link to come back ends once the I/O thread has given up
    /// reopening the port (its wait began at the loss, the control thread's after the
    /// safe stop): it waited out its own deadline for a port nothing would reopen.
    #[test]
    fn the_wait_for_the_link_ends_with_the_io_thread() {
        let wire = Wire::default();
        let (mut c, tx) = control(&wire);
        c.cfg.reconnect = Some(Duration::from_secs(5));
        c.link_down = true;
        c.phase = Phase::Reconnecting {
            until: Instant::now() + Duration::from_secs(60),
        };
        c.tick += 1;
        c.one_tick(Instant::now());
        assert!(matches!(c.phase, Phase::Reconnecting { .. }));
        drop(tx);
        c.tick += 1;
        c.one_tick(Instant::now());
        assert_eq!(c.phase, Phase::Done);
        let fatal = c.fatal.as_deref().unwrap_or_default();
        assert!(
            fatal.ends_with(
                "did not come back: /dev/null was not reopened: the serial I/O thread ended \
                 before --reconnect-ms 5000 ran out"
            ),
            "{fatal}"
        );
        assert_eq!(c.stopping, Some(Outcome::Error));
    }
}
