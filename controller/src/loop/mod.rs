//! The robot loop behind `controller run`: serial link, fixed-rate control, safety,
//! crash-safe logging, episodes.
//!
//! # Threads
//!
//! ```text
//!   serial device (firmware)
//!      │ bytes                                  ▲ Command / Reset / Hello / Estop
//!      ▼                                        │ (written by the control thread,
//!  ┌───────────────┐  every frame, in order,    │  only through the CommandGate)
//!  │ serial I/O    │  stamped with its arrival  │
//!  │ thread        │──── bounded channel ────►┌─┴──────────────┐  Record (try_send,  ┌──────────┐
//!  │ FrameDecoder, │     (full: drop, count)  │ control thread │─ bounded channel ──►│ logger   │
//!  │ SeqTracker    │                          │ absolute       │  full: drop, count) │ thread   │
//!  └───────────────┘                          │ deadlines      │                     └────┬─────┘
//!                                             │ policy, safety │          transitions.log │ (len+crc+payload)
//!                                             └────────────────┘          dataset/ (LeRobot v3)
//! ```
//!
//! - [`link`]: the I/O thread (decode, sequence numbers, reconnect).
//! - [`control`]: the control thread (ticks, episodes, faults, transitions).
//! - [`safety`]: the envelope and the gate every `Command` passes through.
//! - [`log`] / [`logger`]: the crash-safe log, its reader, dataset conversion.
//! - [`stats`]: allocation-free histograms and the cadence report.
//! - [`realtime`]: signals, the panic flag, `--realtime` (mlockall, SCHED_FIFO, affinity).
//! - [`teleop`]: a teleop device's actions over UDP (`--teleop`), for demonstrations
//!   and takeovers.
//! - [`console`]: the control thread's console lines (faults, episodes), written by a
//!   thread of their own so that a stderr nobody reads cannot delay a hold.
//!
//! The control thread sleeps to `spin` before each absolute deadline and spins the
//! rest (its timer slack is set to 1 ns); with `--align-phase` the deadline grid
//! follows the sensor frames' arrival. The serial I/O thread wakes on data; the logger
//! thread, with `--teleop` the teleop thread (UDP datagrams from a teleop device, see
//! [`teleop`]) and, in two-speed mode, the candidate worker run at normal priority.
//!
//! # A run
//!
//! `Hello` → the firmware's `Hello` must pass `Hello::check_peer` (protocol version,
//! schema hash, dimensions, rate, robot id, settings hash), else the run is refused before anything moves.
//! Then, per episode: `Reset { seed }` → `EpisodeStart` → act on every new `Sensor`
//! until the firmware's terminal `Reward` / `EpisodeEnd` → episode record → next.
//! At the end (all episodes done, Ctrl-C, SIGTERM, SIGHUP, a fault beyond
//! `--max-faults`, a panic): the safe stop — the hold action for
//! `hold_ticks_before_torque_off` ticks (and as long as the ramp to it at
//! `max_delta_per_tick` needs), then `Estop` where `gravity_safe_torque_off` allows it.
//!
//! # Faults and what follows
//!
//! | fault | detected by | then |
//! |---|---|---|
//! | stale sensor (no new frame within `stale_sensor_ms`) | tick check | safe stop, episode ends (`fault`) |
//! | non-finite observation / policy action, policy error | before acting | safe stop |
//! | a joint's position or velocity outside the robot file's limits (`joint_limit`, joints that name their observation) | before acting | safe stop |
//! | `max_consecutive_overruns` deadlines missed in a row | tick check | safe stop |
//! | firmware `Fault` (watchdog, invalid command, …) | message | safe stop, from the firmware's own hold |
//! | `Fault { Estop }` the controller did not send (a stop button) | message | safe stop, run ends (`emergency_stop`): no `Reset` releases it |
//! | a frame's step number far past the furthest step heard of (4 × the stale limit in ticks + 16) | message | safe stop, episode ends (`implausible_step`) |
//! | a `Sensor` frame whose observation is not `observation.dim` values | message | safe stop, episode ends (`sensor_size`) |
//! | a `Reward` frame whose applied action is not `action.dim` values, not finite or outside the envelope | message | safe stop, episode ends (`applied_action`) |
//! | firmware reboot (unasked `Hello`) | message | safe stop from the firmware's hold, new handshake |
//! | an episode's `Reset` unanswered (a reboot whose `Hello` was lost) | phase timer | a `Hello`, then the `Reset` again; a third unanswered `Reset` ends the run with an error (`no_episode_start`, through a safe stop) |
//! | link lost (read/write error) | I/O thread / write | safe stop (writes may fail, the `Estop` is tried once), then with `--reconnect-ms` a wait for the port (no `Estop`: its writer is closed; at the run's end, the port back takes the `Estop`); without it, a read side's loss ends the run and a failed write counts against `--max-faults` like any fault |
//! | handshake mismatch, panic | message / hook | safe stop, run ends with an error |
//!
//! An episode a fault ends takes the frames of its steps up to the newest heard of at
//! the fault while the safe stop runs (at most 10 periods, never past the stop), so the
//! `Reward` behind the faulted `Sensor` frame completes its last transition.
//!
//! After a safe stop the run continues with the next episode while the number of
//! faults is at most `max_faults`; beyond it, the run ends (outcome
//! `stopped_by_fault`). Link noise (CRC errors, lost, duplicated or reordered frames)
//! is not a fault: it is counted, and only becomes one if it starves the loop of
//! sensor frames.

pub mod console;
pub mod control;
pub mod link;
pub mod log;
pub mod logger;
pub mod operator;
pub mod realtime;
pub mod safety;
pub mod stats;
pub mod streamer;
pub mod teleop;
pub mod viz;

use crate::runtime::{CandidateAges, Choice, Policy, PolicyOptions, TwoSpeedPolicy};
use crossbeam_channel::RecvTimeoutError;
use firmware_config::RobotConfig;
use firmware_config::protocol::{FaultCode, FrameError, HandshakeError, Message, PROTOCOL_VERSION};
use log::{EndReason, LogWriter, RunStart};
use serde::Serialize;
use shared_model::VerifiedBundle;
use shared_model::manifest::{ActionSpec, Manifest};
use shared_model::{ChunkPlay, TemporalEnsemble};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use stats::CadenceReport;

/// Everything `controller run` (and `bench-loop`) decides.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub robot: RobotConfig,
    /// Serial device (a pty path for the simulated firmware).
    pub port: PathBuf,
    pub baud: u32,
    /// Episodes to run (`None`: until `duration` or a stop).
    pub episodes: Option<u32>,
    /// Stop after this long (the episode running then ends as interrupted).
    pub duration: Option<Duration>,
    /// Episode `i` is reset with `seed + i`; the policy's sampler is seeded with `seed`.
    pub seed: u64,
    /// Run the loop this many times faster than `control_hz` (for a simulated firmware
    /// with the same `--rate-scale`); every duration of the robot file is divided by it.
    /// The handshake still announces `control_hz`.
    pub time_scale: f64,
    /// Directory for `transitions.log`, `dataset/` and `report.json` (`None`: no logging).
    pub out: Option<PathBuf>,
    /// Faults tolerated before the run stops (0: the first fault ends the run).
    pub max_faults: u32,
    /// Deadlines missed in a row that count as a fault (0: never).
    pub max_consecutive_overruns: u32,
    /// Spin this long before each deadline instead of sleeping.
    pub spin: Duration,
    /// `--realtime`: (SCHED_FIFO priority, CPU to pin the control thread to).
    pub realtime: Option<(i32, Option<usize>)>,
    /// `--dedicated-cpu`: the control thread runs alone on this CPU and busy-waits to
    /// its deadlines instead of sleeping (see [`realtime::reserve_cpu`]). Unprivileged.
    /// `run` keeps the threads it starts off the CPU; threads started before it (a
    /// simulated firmware, a two-speed worker) are kept off only if the caller called
    /// `realtime::reserve_cpu` before starting them.
    pub dedicated_cpu: Option<usize>,
    /// After the link fails, try to reopen the device for this long.
    pub reconnect: Option<Duration>,
    pub handshake_timeout: Duration,
    /// Capacity of the link → control and control → logger channels.
    pub queue_capacity: usize,
    /// No per-episode lines on stderr.
    pub quiet: bool,
    /// Testing only: panic in the control thread at this tick.
    pub panic_at_tick: Option<u64>,
    /// Testing only: after that panic, panic at every hand-over of transitions to the log.
    pub panic_repeats: bool,
    /// Testing only: ticks `from..from + count` each take one control period longer
    /// than their work (every one of them misses its deadline).
    pub slow_ticks: Option<(u64, u64)>,
    /// Shift the tick grid to just after the sensor frames' arrival (see
    /// `control::Control::align`); for firmware that streams on its own clock.
    pub align_phase: bool,
    /// Stream the transition log to a trainer (`--uplink`; needs `out`).
    pub uplink: Option<streamer::UplinkConfig>,
    /// Record every tick for the rerun viewer (`--rerun`, `--rerun-connect`; needs
    /// `out` and the `viz` feature).
    pub rerun: Option<viz::RerunTarget>,
    /// Read operator commands from stdin (`--operator`; see [`operator`]).
    pub operator: bool,
    /// Added to the reward of the step the operator labels a success (the simulated
    /// tasks' sparse success reward is 1).
    pub success_reward: f32,
    /// Take actions from a teleop device (`--teleop`; see [`teleop`]).
    pub teleop: Option<teleop::TeleopConfig>,
    /// What the run was started with, kept in `report.json` (`controller run` sets it).
    pub settings: Option<RunSettings>,
}

/// What a run was started with and what its defaults resolved to, kept in
/// `report.json` (`settings`), so that the data a run recorded can be told apart later
/// (a shortened chain, two-speed mode, another envelope in the robot file).
#[derive(Clone, Debug, Serialize)]
pub struct RunSettings {
    /// The command line, as given.
    pub command: Vec<String>,
    /// The robot file as the run read it (TOML): the rates, limits and envelope it
    /// enforced, whatever the file holds later.
    pub robot_file: String,
    /// `--seed`, or the seed the run drew.
    pub seed: u64,
    pub port: String,
    pub baud: u32,
    /// The policy's settings, of the bundle the run started with (bundles swapped in
    /// from the trainer are listed in `bundle_swaps`); `null` without a bundle.
    pub policy: Option<PolicySettings>,
}

/// [`RunSettings::policy`].
#[derive(Clone, Debug, Serialize)]
pub struct PolicySettings {
    /// tract, native or ort.
    pub backend: String,
    /// Denoising steps run per action (`--executed-steps`, or the bundle's).
    pub executed_steps: usize,
    pub two_speed: bool,
    /// Actions played from each chunk before the next is planned (`--replan-every`, or
    /// the bundle's; 0 = whole chunks).
    pub replan_every: usize,
    pub temporal_ensemble: Option<f32>,
}

impl RunConfig {
    pub fn new(robot: RobotConfig, port: PathBuf) -> RunConfig {
        RunConfig {
            baud: robot.serial.baud,
            robot,
            port,
            episodes: Some(1),
            duration: None,
            seed: 0,
            time_scale: 1.0,
            out: None,
            max_faults: 0,
            max_consecutive_overruns: 10,
            spin: Duration::from_micros(200),
            realtime: None,
            dedicated_cpu: None,
            reconnect: None,
            handshake_timeout: Duration::from_secs(3),
            queue_capacity: 4096,
            quiet: false,
            panic_at_tick: None,
            panic_repeats: false,
            slow_ticks: None,
            align_phase: false,
            uplink: None,
            rerun: None,
            operator: false,
            success_reward: 1.0,
            teleop: None,
            settings: None,
        }
    }

    /// The loop rate in Hz.
    pub fn target_hz(&self) -> f64 {
        self.robot.control_hz as f64 * self.time_scale
    }
}

/// The policy the loop runs.
pub enum Brain {
    /// The whole EXPO action every time the policy plans (with an action-chunk bundle,
    /// once per chunk: [`ChunkPlayer`]).
    Full {
        policy: Box<Policy>,
        chunk: ChunkPlayer,
    },
    /// Base candidates from a worker thread, edit + select when the policy plans
    /// ([`TwoSpeedPolicy`]; chunks as in `Full`).
    TwoSpeed {
        policy: Box<TwoSpeedPolicy>,
        chunk: ChunkPlayer,
    },
    /// No policy: the hold action (zero in policy units) on every tick. For recording
    /// demonstrations with a teleop device (`controller run --teleop` without a
    /// bundle), whose actions replace it while the device is engaged.
    Hold,
}

/// What plans an action (or a chunk of them) for the [`ChunkPlayer`].
pub trait Planner {
    /// Writes a whole chunk (`chunk_dim` values) planned on `obs`; `None` (nothing
    /// written) when it cannot plan yet and the step is to hold.
    fn plan(&mut self, obs: &[f32], chunk: &mut [f32]) -> anyhow::Result<Option<Choice>>;
    /// A step the policy does not plan on: `obs` is what the robot sees meanwhile.
    fn observe(&mut self, _obs: &[f32]) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Planner for Policy {
    fn plan(&mut self, obs: &[f32], chunk: &mut [f32]) -> anyhow::Result<Option<Choice>> {
        self.act(obs, chunk).map(Some)
    }
}

impl Planner for TwoSpeedPolicy {
    /// Does not wait for the worker: the first steps of an episode hold until it has
    /// sampled for that episode ([`TwoSpeedPolicy::try_act`]).
    fn plan(&mut self, obs: &[f32], chunk: &mut [f32]) -> anyhow::Result<Option<Choice>> {
        self.try_act(obs, chunk)
    }
    /// Publishes the observation, so the worker's candidates stay current for the next
    /// plan.
    fn observe(&mut self, obs: &[f32]) -> anyhow::Result<()> {
        TwoSpeedPolicy::observe(self, obs)
    }
}

/// Plays a policy's action chunks (`action.horizon` > 1) out one sensor step at a time
/// ([`ChunkPlay`]: whole chunks, or the first `replan_every` actions of each).
///
/// The policy plans a chunk on a step `p`; the action for a later step `s` is the
/// chunk's action `s − p`, open loop, as in training: a step the loop did not act on
/// (no fresh frame in time) skips its action rather than delaying the rest. The next
/// chunk is planned once `replan_every` steps have passed, at an episode's start, and
/// after the robot left the plan ([`Self::restart`]: a teleop device drove it, the
/// operator toggled an intervention). Without chunks every step plans. With temporal
/// ensembling the action for `s` is the blend of the actions for `s` of every chunk
/// planned since `s − H + 1` ([`TemporalEnsemble`]; forgotten on a restart).
pub struct ChunkPlayer {
    play: ChunkPlay,
    /// The recent chunks, when the play blends them.
    ensemble: Option<TemporalEnsemble>,
    /// `[H · A]`, as the policy wrote it (clamped to the bounds).
    chunk: Vec<f32>,
    /// The step the chunk was planned on; `None`: plan on the next step.
    planned_at: Option<u64>,
    /// The selection that made the chunk; `None` while holding.
    choice: Option<Choice>,
    /// The index within the chunk of the last action played.
    index: usize,
}

impl ChunkPlayer {
    /// Plays `policy`'s chunks by `play` (`ChunkPlay::new(policy.horizon(), 0)`: whole
    /// chunks).
    pub fn new(policy: &Policy, play: ChunkPlay) -> anyhow::Result<Self> {
        anyhow::ensure!(
            play.horizon() == policy.horizon(),
            "chunk playback for chunks of {}, the bundle plans chunks of {}",
            play.horizon(),
            policy.horizon()
        );
        Ok(ChunkPlayer {
            play,
            ensemble: TemporalEnsemble::for_play(&play, policy.act_dim()),
            chunk: vec![0.0; policy.chunk_dim()],
            planned_at: None,
            choice: None,
            index: 0,
        })
    }

    /// The action for sensor step `step`, planning a new chunk when it is due, and the
    /// selection that planned the chunk it comes from; `None` when the step holds
    /// because the planner could not plan yet.
    pub fn act<P: Planner + ?Sized>(
        &mut self,
        planner: &mut P,
        step: u64,
        obs: &[f32],
        action: &mut [f32],
    ) -> anyhow::Result<Option<Choice>> {
        let ad = action.len();
        anyhow::ensure!(
            ad * self.play.horizon() == self.chunk.len(),
            "action buffer has {ad} slots, the bundle's chunks hold {} actions of {}",
            self.play.horizon(),
            self.chunk.len() / self.play.horizon()
        );
        let due = self
            .planned_at
            .and_then(|p| step.checked_sub(p))
            .and_then(|since| self.play.index(since));
        let k = match due {
            Some(k) => {
                planner.observe(obs)?;
                k
            }
            None => {
                // A failed plan leaves nothing to play.
                self.planned_at = None;
                let Some(choice) = planner.plan(obs, &mut self.chunk)? else {
                    // Not ready (a two-speed worker still sampling for this episode):
                    // hold, and plan again on the next step.
                    self.index = 0;
                    self.choice = None;
                    action.fill(0.0);
                    return Ok(None);
                };
                self.choice = Some(choice);
                self.planned_at = Some(step);
                if let Some(e) = &mut self.ensemble {
                    e.add(step, &self.chunk);
                }
                0
            }
        };
        self.index = k;
        // The chunk in progress covers `step` (k < H), so the blend is never empty.
        match &self.ensemble {
            Some(e) => _ = e.action(step, action),
            None => action.copy_from_slice(&self.chunk[k * ad..(k + 1) * ad]),
        }
        Ok(self.choice)
    }

    /// Plan afresh on the next step (and forget the chunks kept for ensembling).
    pub fn restart(&mut self) {
        self.planned_at = None;
        if let Some(e) = &mut self.ensemble {
            e.clear();
        }
    }
}

/// How `controller run` plays a bundle's action chunks, given before the bundle (and so
/// its horizon) is known: `--replan-every` and `--temporal-ensemble`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlayOptions {
    /// Actions played from each chunk before the next plan (0: whole chunks); `None`:
    /// as the bundle's training run played them (`action.replan_every`).
    pub replan_every: Option<usize>,
    /// Temporal ensembling's weight `m` ([`TemporalEnsemble`]).
    pub ensemble: Option<f32>,
}

impl PlayOptions {
    /// The play for `action`'s chunks; an error names the option at fault.
    pub fn for_bundle(&self, action: &ActionSpec) -> anyhow::Result<ChunkPlay> {
        let replan_every = self.replan_every.unwrap_or(action.replan_every);
        let play = ChunkPlay::new(action.horizon, replan_every)
            .map_err(|e| anyhow::anyhow!("--replan-every: {e}"))?;
        play.with_ensemble(self.ensemble)
            .map_err(|e| anyhow::anyhow!("--temporal-ensemble: {e}"))
    }
}

impl Brain {
    /// A bundle's policy, playing whole chunks.
    pub fn new(
        bundle: &VerifiedBundle,
        options: &PolicyOptions,
        two_speed: bool,
    ) -> anyhow::Result<Brain> {
        Self::with_play(bundle, options, two_speed, PlayOptions::default())
    }

    /// [`Self::new`], playing the bundle's chunks as `play` says.
    pub fn with_play(
        bundle: &VerifiedBundle,
        options: &PolicyOptions,
        two_speed: bool,
        play: PlayOptions,
    ) -> anyhow::Result<Brain> {
        let play = play.for_bundle(&bundle.manifest.action)?;
        Ok(if two_speed {
            let policy = Box::new(TwoSpeedPolicy::new(bundle, options)?);
            Brain::TwoSpeed {
                chunk: ChunkPlayer::new(policy.policy(), play)?,
                policy,
            }
        } else {
            let policy = Box::new(Policy::new(bundle, options)?);
            Brain::Full {
                chunk: ChunkPlayer::new(&policy, play)?,
                policy,
            }
        })
    }

    /// The action for sensor step `step` (of the current episode).
    /// `None`: the step holds (zero in policy units, the hold action the robot file's
    /// envelope contains), with no candidate and no score: [`Brain::Hold`], or a
    /// two-speed worker that has not sampled for this episode yet.
    pub fn act(
        &mut self,
        step: u64,
        obs: &[f32],
        action: &mut [f32],
    ) -> anyhow::Result<Option<Choice>> {
        match self {
            Brain::Full { policy, chunk } => chunk.act(&mut **policy, step, obs, action),
            Brain::TwoSpeed { policy, chunk } => chunk.act(&mut **policy, step, obs, action),
            Brain::Hold => {
                action.fill(0.0);
                Ok(None)
            }
        }
    }

    /// Drop the chunk in progress: the policy plans on the next step it acts. For a new
    /// episode, and when the robot left the plan (an operator's intervention toggled).
    pub fn replan(&mut self) {
        if let Some(chunk) = self.chunk_player() {
            chunk.restart();
        }
    }

    /// A new episode: as [`Self::replan`], and the two-speed worker's candidates of the
    /// previous episode are not used ([`TwoSpeedPolicy::restart`]).
    pub fn new_episode(&mut self) {
        self.replan();
        if let Brain::TwoSpeed { policy, .. } = self {
            policy.restart();
        }
    }

    /// A tick whose action comes from elsewhere (a teleop device): the two-speed
    /// worker still gets the observation, so its candidates are current when the
    /// policy acts again; a chunk in progress is dropped (the device moved the robot
    /// off its plan).
    pub fn observe(&mut self, obs: &[f32]) -> anyhow::Result<()> {
        self.replan();
        match self {
            Brain::TwoSpeed { policy, .. } => policy.observe(obs),
            Brain::Full { .. } | Brain::Hold => Ok(()),
        }
    }

    /// The policy can act no more: its two-speed worker stopped at an error, which every
    /// later plan returns (a new episode would only fault again). The run ends then, with
    /// `--uplink` too: a swapped-in bundle could replace it, but not before the robot was
    /// reset for an episode the old one cannot act in.
    pub fn cannot_act_again(&self) -> bool {
        match self {
            Brain::TwoSpeed { policy, .. } => policy.worker_failed(),
            Brain::Full { .. } | Brain::Hold => false,
        }
    }

    /// Two-speed mode: how old the candidates its plans used were; `None` otherwise.
    pub fn candidate_ages(&self) -> Option<CandidateAges> {
        match self {
            Brain::TwoSpeed { policy, .. } => Some(policy.candidate_ages()),
            Brain::Full { .. } | Brain::Hold => None,
        }
    }

    /// The policy that made the last action (its candidates and Q values); `None` for
    /// [`Brain::Hold`].
    pub fn policy(&self) -> Option<&Policy> {
        match self {
            Brain::Full { policy, .. } => Some(policy),
            Brain::TwoSpeed { policy, .. } => Some(policy.policy()),
            Brain::Hold => None,
        }
    }

    fn chunk_player(&mut self) -> Option<&mut ChunkPlayer> {
        match self {
            Brain::Full { chunk, .. } | Brain::TwoSpeed { chunk, .. } => Some(chunk),
            Brain::Hold => None,
        }
    }

    /// How the policy's chunks are played; `None` for [`Brain::Hold`].
    pub fn chunk_play(&self) -> Option<ChunkPlay> {
        match self {
            Brain::Full { chunk, .. } | Brain::TwoSpeed { chunk, .. } => Some(chunk.play),
            Brain::Hold => None,
        }
    }

    /// Where the last action sits in its chunk (0 without action chunks).
    pub fn chunk_index(&self) -> usize {
        match self {
            Brain::Full { chunk, .. } | Brain::TwoSpeed { chunk, .. } => chunk.index,
            Brain::Hold => 0,
        }
    }
}

/// What kind of fault stopped an episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    StaleSensor,
    NonFiniteObservation,
    /// A joint position or velocity outside the robot file's limits, where the joint
    /// names its observation value (`position_observation`, `velocity_observation`).
    JointLimit,
    NonFiniteAction,
    PolicyError,
    DeadlineMissed,
    FirmwareFault,
    /// A `Fault { Estop }` the controller did not cause: someone pressed a stop button.
    /// Ends the run.
    EmergencyStop,
    FirmwareReset,
    /// A `Sensor` or `Reward` frame whose step number leaps further ahead than any
    /// frames lost on the link can explain: the firmware's bug.
    ImplausibleStep,
    /// A `Sensor` frame whose observation has another size than the robot file's
    /// `observation.dim`: the firmware's bug (the frame cannot be acted on).
    SensorSize,
    /// A `Reward` frame whose applied action is not `action.dim` values, not finite or
    /// outside the envelope: the firmware's bug (the step cannot be recorded).
    AppliedAction,
    LinkLost,
    Handshake,
    NoEpisodeStart,
    Panic,
}

/// One fault and the safe stop it caused.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultEvent {
    pub kind: FaultKind,
    pub detail: String,
    /// Tick that detected it.
    pub tick: u64,
    /// Seconds since the run started.
    pub at_s: f64,
    pub episode: Option<u32>,
    pub step: Option<u32>,
    /// Tick whose hold command was the first of the safe stop (equal to `tick` when
    /// the stop began in the detecting tick).
    pub hold_tick: Option<u64>,
    /// Detection to that hold command written, µs.
    pub hold_latency_us: Option<f64>,
    /// Tick that sent `Estop` (torque off), if the robot allows it.
    pub torque_off_tick: Option<u64>,
    /// Detected while a safe stop was already under way (the robot was being held, or
    /// its torque was already off): its hold, if any, is the stop's next one.
    pub during_safe_stop: bool,
}

/// The rerun file of a run that has not started its control thread: removed when the
/// run fails before it does (dropped with `Some`).
struct UnstartedRecording(Option<PathBuf>);

impl Drop for UnstartedRecording {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every episode ran (faults, if any, stayed within `max_faults`).
    Completed,
    /// A fault beyond `max_faults`, or one that ends the run (an emergency stop the
    /// controller did not send, the read side of a link lost without
    /// `--reconnect-ms`), also during the closing hold of a run whose episodes all ran.
    StoppedByFault,
    /// Ctrl-C, SIGTERM, or the run's duration.
    Interrupted,
    /// Refused or failed (handshake, link gone, panic).
    Error,
}

/// One episode as the control thread saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpisodeReport {
    /// This run's number for the episode (0, 1, … by the `Reset` that began it; unique
    /// in the run): the log's and the recording's.
    pub episode: u32,
    /// The firmware's id for it (a rebooted firmware counts from 0 again).
    pub firmware_episode: u32,
    pub seed: u64,
    /// Firmware steps (from its `EpisodeEnd`, else the last step seen).
    pub steps: u32,
    /// Commands computed by the policy or taken from the teleop device.
    pub commands: u32,
    /// Of those, the teleop device's (`--teleop`).
    pub teleop_commands: u32,
    pub success: bool,
    #[serde(rename = "return")]
    pub ret: f32,
    pub reason: EndReason,
    pub detail: String,
    /// Transitions handed to the logger (with `--out`: in the log and the dataset), or
    /// built (without).
    pub transitions: u32,
    /// Transitions built that the logger's queue had no room for (in neither; the
    /// run's `log_drops` counts them all).
    pub dropped: u32,
    /// Steps whose transition could not be built (frames lost on the link).
    pub missing: u32,
    /// Transitions whose action the firmware applied otherwise than the command in
    /// force when it stepped: its slew limit reaching a command further away, its
    /// envelope, its hold (a watchdog trip, before the first command), a command late
    /// or lost on the line. The transition holds the applied action.
    pub applied_otherwise: u32,
    /// Frames of the episode's steps that could not be read after a fault (or an
    /// interrupt) had cut it short (the frames of its last steps still on the line:
    /// another observation or action size than the robot file's, an applied action not
    /// finite or outside the envelope); a step left without a readable frame is missing.
    /// The first such frame of a running episode is its fault, not counted here, nor
    /// is a copy of it.
    pub malformed: u32,
    /// What was wrong with the first of them.
    pub malformed_first: Option<String>,
    /// Frames acted on with an observation outside the running bundle's bounds (a robot
    /// bundle's are the range of the data it trained on, a simulated task's the task's):
    /// the policy acted where it learned nothing (online fine-tuning explores there;
    /// many such frames on a new robot may be a units or wiring mistake). Not a fault.
    pub outside_bounds: u32,
    /// The first of them: which observation, its value, the step and the bounds.
    pub outside_bounds_first: Option<String>,
    pub seconds: f64,
    pub cadence: CadenceReport,
}

impl fmt::Display for EpisodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "episode {} (seed {}): {}, {} steps{}, return {:.2}, {:?}{}; {} transitions, {} missing",
            self.episode,
            self.seed,
            if self.success {
                "success"
            } else {
                "no success"
            },
            self.steps,
            if self.teleop_commands > 0 {
                format!(
                    " ({} commands from the teleop device)",
                    self.teleop_commands
                )
            } else {
                String::new()
            },
            self.ret,
            self.reason,
            if self.reason == EndReason::Completed {
                String::new()
            } else {
                format!(" ({})", self.detail)
            },
            self.transitions,
            self.missing
        )?;
        if self.dropped > 0 {
            writeln!(
                f,
                "  {} transitions dropped: the logger's queue was full (disk too slow)",
                self.dropped
            )?;
        }
        if self.applied_otherwise > 0 {
            writeln!(
                f,
                "  {} steps applied otherwise than commanded (the firmware's slew limit, \
                 envelope or hold, or a late command): their transitions hold what the \
                 robot applied",
                self.applied_otherwise
            )?;
        }
        if let Some(first) = &self.outside_bounds_first {
            writeln!(
                f,
                "  frames outside the bundle's observation bounds (its training data's \
                 range, for a robot bundle): {}; the first: {first}",
                self.outside_bounds
            )?;
        }
        if let Some(first) = &self.malformed_first {
            writeln!(
                f,
                "  frames that could not be read after the episode was cut short: {} (a \
                 step left without a readable frame is missing); the first: {first}",
                self.malformed
            )?;
        }
        write!(f, "{}", self.cadence)
    }
}

/// Everything a run reports (also written to `OUT/report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// What the run was started with (`controller run`); `null` from a library caller.
    pub settings: Option<RunSettings>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub robot: String,
    pub bundle: String,
    pub control_hz: u32,
    pub time_scale: f64,
    pub episodes: Vec<EpisodeReport>,
    pub episodes_completed: usize,
    pub successes: usize,
    /// Successes over completed and operator-labelled episodes (compare with
    /// `trainer eval --bundle`).
    pub success_rate: f64,
    pub faults: Vec<FaultEvent>,
    pub torque_off_ticks: Vec<u64>,
    pub gate: safety::GateStats,
    /// Policy actions clamped to the bounds / rate limited by shaping.
    pub clamped: u64,
    pub rate_limited: u64,
    pub nan_observations: u64,
    pub nan_actions: u64,
    /// `Reward` frames whose reward was not finite: their transitions are not logged
    /// (counted as missing) and their episodes' returns leave them out.
    pub nan_rewards: u64,
    pub ignored_firmware_faults: u64,
    /// `Hello` frames outside a handshake that were not a reboot's: late answers to the
    /// handshake's resent `Hello`s (numbered other than 0), and copies of a reboot's
    /// `Hello` right behind it.
    pub ignored_hellos: u64,
    /// `Hello`s sent before resending an episode's unanswered `Reset` (a firmware that
    /// rebooted with its `Hello` lost on the line waits for one).
    pub start_handshakes: u64,
    /// The run's closing `Estop` sent again for want of the firmware's answer.
    pub estop_resends: u32,
    /// The closing `Estop` was never answered (the run ended with an error saying so).
    pub unanswered_estop: bool,
    /// With `--reconnect-ms`: the link was lost at the run's end and no closing `Estop`
    /// was confirmed on a port back within that time (none came back, or its `Estop`
    /// could not be written): the arm may be energised, held by the firmware's watchdog.
    pub no_estop_after_loss: bool,
    pub link: link::LinkCounters,
    pub log_sent: u64,
    /// Transitions the logger's channel could not take.
    pub log_drops: u64,
    pub logger: Option<logger::LoggerSummary>,
    pub uplink: Option<streamer::UplinkSummary>,
    /// Policies swapped in from the trainer's bundles, at episode boundaries.
    pub bundle_swaps: Vec<BundleSwap>,
    /// `--two-speed`: how many observations old the worker's base candidates were when
    /// a plan used them (over every policy the run swapped in); `null` otherwise.
    pub two_speed: Option<CandidateAges>,
    /// What the operator did (`--operator`).
    pub operator: operator::OperatorSummary,
    /// What the teleop device did (`--teleop`).
    pub teleop: Option<teleop::TeleopSummary>,
    /// Tick frames the rerun recording's queue could not take (`--rerun`).
    pub viz_drops: u64,
    pub cadence: CadenceReport,
    pub realtime: Vec<realtime::RealtimeStep>,
    pub ticks: u64,
    /// Why `OUT/report.json` could not be written (a full disk, say); the report is
    /// then printed instead, and the run exits as one whose recording lost something.
    pub report_not_written: Option<String>,
}

impl RunReport {
    fn new(cfg: &RunConfig, bundle: &str) -> RunReport {
        RunReport {
            settings: cfg.settings.clone(),
            outcome: Outcome::Completed,
            error: None,
            robot: cfg.robot.robot.clone(),
            bundle: bundle.to_string(),
            control_hz: cfg.robot.control_hz,
            time_scale: cfg.time_scale,
            episodes: vec![],
            episodes_completed: 0,
            successes: 0,
            success_rate: 0.0,
            faults: vec![],
            torque_off_ticks: vec![],
            gate: Default::default(),
            clamped: 0,
            rate_limited: 0,
            nan_observations: 0,
            nan_actions: 0,
            nan_rewards: 0,
            ignored_firmware_faults: 0,
            ignored_hellos: 0,
            start_handshakes: 0,
            estop_resends: 0,
            unanswered_estop: false,
            no_estop_after_loss: false,
            link: Default::default(),
            log_sent: 0,
            log_drops: 0,
            logger: None,
            uplink: None,
            bundle_swaps: vec![],
            two_speed: None,
            operator: Default::default(),
            teleop: None,
            viz_drops: 0,
            cadence: Default::default(),
            realtime: vec![],
            ticks: 0,
            report_not_written: None,
        }
    }
}

impl RunReport {
    /// What the recording lost, if anything: transitions the logger's queue could not
    /// take, or errors writing the log, the dataset or the `--rerun` recording (a full
    /// disk).
    pub fn recording_lost(&self) -> Option<String> {
        let errors = self.logger.as_ref().map_or(&[][..], |l| &l.errors[..]);
        if self.log_drops == 0 && errors.is_empty() && self.report_not_written.is_none() {
            return None;
        }
        let mut why = vec![];
        if let Some(e) = &self.report_not_written {
            why.push(format!("the report could not be written: {e}"));
        }
        if self.log_drops > 0 {
            why.push(format!(
                "{} transitions the logger's queue could not take",
                self.log_drops
            ));
        }
        if let Some(first) = errors.first() {
            // The logger keeps the first 20 (a full disk fails every write).
            let count = match errors.len() {
                1 => "1 logger error".to_string(),
                n if n >= 20 => format!("at least {n} logger errors"),
                n => format!("{n} logger errors"),
            };
            why.push(format!("{count}, the first: {first}"));
        }
        Some(why.join("; "))
    }

    /// `controller run`'s exit status: 0 every episode ran and was recorded, 4 every
    /// episode ran but the recording lost some ([`Self::recording_lost`]), 3 stopped by
    /// a fault, 130 interrupted, 1 an error.
    pub fn exit_status(&self) -> u8 {
        match self.outcome {
            Outcome::Completed if self.recording_lost().is_some() => 4,
            Outcome::Completed => 0,
            Outcome::Error => 1,
            Outcome::StoppedByFault => 3,
            Outcome::Interrupted => 130,
        }
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "Completed" is the run's outcome (every episode ran, faults within
        // --max-faults); an episode cut short by a fault or an interruption does not
        // count in the success rate.
        let cut_short = self.episodes.len().saturating_sub(self.episodes_completed);
        writeln!(
            f,
            "run {:?}: {} episodes, {} ran to their end{}, success rate {}/{} = {:.3}",
            self.outcome,
            self.episodes.len(),
            self.episodes_completed,
            if cut_short > 0 {
                format!(
                    " and {cut_short} {} cut short (faults, interruption)",
                    if cut_short == 1 { "was" } else { "were" }
                )
            } else {
                String::new()
            },
            self.successes,
            self.episodes_completed,
            self.success_rate
        )?;
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        writeln!(f, "{}", self.cadence)?;
        let l = &self.link;
        writeln!(
            f,
            "  link: {} frames, {} CRC errors, {} other frame errors, {} resyncs, {} sequence gaps (frames lost), {} stale/duplicate, {} renumberings, {} queue drops, {} read errors, {} reconnects",
            l.frames,
            l.crc_errors,
            l.frame_errors() - l.crc_errors,
            l.resyncs,
            l.seq_lost,
            l.seq_stale,
            l.seq_resyncs,
            l.queue_drops,
            l.read_errors,
            l.reconnects
        )?;
        let stale = self
            .faults
            .iter()
            .filter(|x| x.kind == FaultKind::StaleSensor)
            .count();
        writeln!(
            f,
            "  safety: {} commands ({} hold), {} envelope violations prevented, {} clamped, {} rate-limited, {} faults ({} stale-sensor timeouts), {} torque-offs",
            self.gate.commands,
            self.gate.hold_commands,
            self.gate.violations_prevented,
            self.clamped,
            self.rate_limited,
            self.faults.len(),
            stale,
            self.torque_off_ticks.len()
        )?;
        // The last fault is what stopped a stopped run (`--quiet` prints no FAULT lines).
        if let Some(x) = self.faults.last() {
            writeln!(
                f,
                "  last fault: {:?} at tick {}: {}",
                x.kind, x.tick, x.detail
            )?;
        }
        write!(
            f,
            "  logging: {} transitions sent, {} dropped",
            self.log_sent, self.log_drops
        )?;
        if let Some(lg) = &self.logger {
            write!(
                f,
                "; {} records written, {} episodes / {} frames saved to the dataset{}",
                lg.records,
                lg.episodes
                    .iter()
                    .filter(|e| e.dataset_index.is_some())
                    .count(),
                lg.frames_saved,
                if lg.errors.is_empty() {
                    String::new()
                } else {
                    format!(", errors: {}", lg.errors.join("; "))
                }
            )?;
        }
        if let Some(t) = &self.teleop {
            write!(f, "\n{t}")?;
        }
        if let Some(u) = &self.uplink {
            write!(
                f,
                "\n  uplink: {} of {} logged records acknowledged by the trainer, {} connections, {} errors{}",
                u.acknowledged,
                u.logged,
                u.connections,
                u.errors,
                u.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (last: {e})"))
            )?;
        }
        Ok(())
    }
}

/// One policy swap: from episode `first_episode` (0-based) on, the policy of `bundle`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BundleSwap {
    pub bundle: String,
    pub first_episode: u32,
    /// Control tick of the swap.
    pub tick: u64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the bundle acts on observation {bundle_obs} / action {bundle_act} values, the robot '{robot}' has observation.dim {robot_obs} / action.dim {robot_act}"
    )]
    Dims {
        robot: String,
        bundle_obs: usize,
        bundle_act: usize,
        robot_obs: usize,
        robot_act: usize,
    },
    #[error(
        "the bundle was trained on steps at {bundle_hz} Hz, the robot '{robot}' runs at control_hz = {robot_hz}: each of its actions (a chunk, the critics' discount) is meant for 1/{bundle_hz} s; train on data recorded at the robot's rate"
    )]
    Rate {
        robot: String,
        bundle_hz: u32,
        robot_hz: u32,
    },
    #[error("policy: {0:#}")]
    Policy(anyhow::Error),
    #[error("serial link: {0}")]
    Port(std::io::Error),
    /// Refused by either side, or no answer.
    #[error("handshake: {0}")]
    Handshake(String),
    /// A `Fault { Estop }` while the first handshake ran: this controller has sent no
    /// `Estop`, so someone pressed a stop button. The run does not start (its `Reset`
    /// would release the stop); exit status 3, as for a press during a run.
    #[error(
        "the firmware reported an emergency stop before the run began (a stop button?); nothing but Hello was sent. Release the stop, then start the run again"
    )]
    EmergencyStop,
    /// Ctrl-C, SIGTERM or SIGHUP while waiting for the firmware's `Hello`; the words say
    /// what was sent ([`stop_before_start`]). Exit status 130, as for an interrupted run.
    #[error("interrupted while waiting for the firmware's Hello; {0}")]
    InterruptedBeforeStart(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error("rerun recording: {0:#}")]
    Rerun(anyhow::Error),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// A setup step that failed after the handshake, and what the stop that followed
    /// sent ([`stop_after_setup`]).
    #[error("{error}; {stop}")]
    AfterHandshake { error: Box<RunError>, stop: String },
}

/// Shortest control period the loop runs (10 kHz, the highest rate a robot file may
/// ask for): enough for any robot file and time scale in use (the benches run 500 Hz),
/// and far above a zero period.
pub const MIN_PERIOD: Duration =
    Duration::from_micros(1_000_000 / firmware_config::config::MAX_CONTROL_HZ as u64);
/// The longest control period a `--time-scale` may give: a slowed clock for watching a
/// run, not one whose deadlines overflow (the stale-sensor limit and the firmware's
/// watchdog scale with it).
pub const MAX_PERIOD: Duration = Duration::from_secs(60);

/// The control period of `robot` at `time_scale`, within [`MIN_PERIOD`] and
/// [`MAX_PERIOD`]; checked before anything starts (a simulated firmware's own deadlines
/// overflowed on a scale the loop then refused).
pub fn scaled_period(robot: &RobotConfig, time_scale: f64) -> Result<Duration, RunError> {
    // A faster clock than this leaves no time to act (and a zero period, none to wait).
    if !(time_scale.is_finite() && time_scale > 0.0) {
        return Err(RunError::Config(format!(
            "the time scale must be a positive number, not {time_scale}"
        )));
    }
    let period = Duration::try_from_secs_f64(robot.control_period().as_secs_f64() / time_scale)
        .map_err(|_| {
            RunError::Config(format!(
                "time scale {time_scale} gives no usable control period"
            ))
        })?;
    if period < MIN_PERIOD {
        return Err(RunError::Config(format!(
            "time scale {time_scale} gives a control period of {period:?} for {} Hz; the loop needs at least {MIN_PERIOD:?}",
            robot.control_hz
        )));
    }
    if period > MAX_PERIOD {
        return Err(RunError::Config(format!(
            "time scale {time_scale} gives a control period of {period:?} for {} Hz; at most {MAX_PERIOD:?}",
            robot.control_hz
        )));
    }
    Ok(period)
}

/// Checks that the bundle fits the robot's sizes.
pub fn check_dims(robot: &RobotConfig, bundle: &VerifiedBundle) -> Result<(), RunError> {
    let m = &bundle.manifest;
    if m.observation.dim != robot.observation.dim || m.action.dim != robot.action.dim {
        return Err(RunError::Dims {
            robot: robot.robot.clone(),
            bundle_obs: m.observation.dim,
            bundle_act: m.action.dim,
            robot_obs: robot.observation.dim,
            robot_act: robot.action.dim,
        });
    }
    Ok(())
}

/// Checks that the bundle was trained at the robot's rate where it says (format 5's
/// `action.control_hz`): each of its actions, a chunk's play and its critics' discount
/// are meant for `1/control_hz` s. (`bench-loop`, which runs at its own `--rate`, checks
/// the sizes only.)
pub fn check_rate(robot: &RobotConfig, bundle: &VerifiedBundle) -> Result<(), RunError> {
    match bundle.manifest.action.control_hz {
        Some(hz) if hz != robot.control_hz => Err(RunError::Rate {
            robot: robot.robot.clone(),
            bundle_hz: hz,
            robot_hz: robot.control_hz,
        }),
        _ => Ok(()),
    }
}

/// The bundle's action names (format 6) against the robot file's `[action] names`, for
/// `controller run` and every bundle swap: `Err` when the bundle names one of them at
/// another position (its commands would drive other joints); else what to say, if
/// anything, as a note or a warning: other spellings (a warning), names on one side
/// only, or the robot file's joint names, which recordings before 2026-12-07 gave the
/// actions (a guess: their order is not checked against `[action] names`).
pub fn check_action_names(
    robot: &RobotConfig,
    m: &Manifest,
) -> Result<Option<(&'static str, String)>, String> {
    let (ours, theirs) = (&robot.action.names, &m.action.names);
    let joints: Vec<&str> = robot.joints.iter().map(|j| j.name.as_str()).collect();
    if !ours.is_empty() && !theirs.is_empty() && theirs.iter().map(String::as_str).eq(joints) {
        return Ok((ours != theirs).then(|| {
            let why = "the bundle names its actions after the robot file's joints, as \
                       recordings before 2026-12-07 did (a guess): their order against the \
                       robot file's [action] names is unchecked";
            ("note", why.to_string())
        }));
    }
    if let Some(e) = robot.action.names_reordered(theirs, "the bundle") {
        return Err(e);
    }
    Ok(match (theirs.is_empty(), ours.is_empty()) {
        (true, false) => Some((
            "note",
            format!(
                "the bundle does not name its actions (format {}, or data without action \
                 names): their order against the robot file's [action] names is unchecked",
                m.format_version
            ),
        )),
        (false, true) => Some((
            "note",
            format!(
                "the robot file does not name its actions; the bundle's are {}: list them \
                 as [action] names, in the order the firmware takes a Command's values, to \
                 have the bundle's order checked",
                theirs.join(", ")
            ),
        )),
        _ => (robot.action.names_differ(theirs, "the bundle")).map(|w| ("warning", w)),
    })
}

/// The robot file's action mapping (`action.scale`, `action.offset`) against the one
/// the bundle's data was recorded with (format 7), for `controller run` and every
/// bundle swap: `Err` where they differ (the same policy output would command the robot
/// otherwise than in the data it learned from); a note for a robot's bundle that records
/// none. A simulated task's bundle records none: its commands pass through the task's
/// robot file both ways.
pub fn check_action_mapping(robot: &RobotConfig, m: &Manifest) -> Result<Option<String>, String> {
    let a = &m.action;
    if a.robot_scale.is_empty() {
        if m.task.parse::<sim::TaskId>().is_ok() {
            return Ok(None);
        }
        return Ok(Some(format!(
            "the bundle does not record the action mapping its data was recorded with \
             (format {}, or data recorded before 2026-12-07 or by another recorder): a robot \
             file whose action.scale or action.offset changed since is not caught",
            m.format_version
        )));
    }
    match robot
        .action
        .mapping_differs(&a.robot_scale, &a.robot_offset, "the bundle's data")
    {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Runs the loop: handshake, episodes, safe stop; writes `OUT/report.json`.
///
/// Returns `Err` only when the run could not start (dimensions, port, handshake,
/// output directory); everything after that, faults included, is in the report.
pub fn run(
    cfg: RunConfig,
    brain: Brain,
    task: &str,
    bundle_label: &str,
) -> Result<RunReport, RunError> {
    let period = scaled_period(&cfg.robot, cfg.time_scale)?;
    // A spin of a whole period never sleeps: under SCHED_FIFO the control thread would
    // take its CPU for good (throttled by the kernel, holds included).
    if cfg.realtime.is_some() && cfg.spin >= period {
        return Err(RunError::Config(format!(
            "--spin-us {} spins through the whole control period ({period:?}) under \
             --realtime: the control thread would never sleep",
            cfg.spin.as_micros()
        )));
    }
    // A dedicated CPU spins through the whole period (`busy_wait`): under SCHED_FIFO
    // the same. The command line refuses the pair; a caller of this function may not.
    if cfg.realtime.is_some() && cfg.dedicated_cpu.is_some() {
        return Err(RunError::Config(
            "--dedicated-cpu spins through the whole control period, so it cannot run \
             under --realtime: the control thread would never sleep"
                .into(),
        ));
    }
    if cfg.baud == 0 {
        return Err(RunError::Config(
            "the baud rate (--baud) must be above zero".into(),
        ));
    }
    if cfg.handshake_timeout.is_zero() {
        return Err(RunError::Config(
            "the handshake timeout (--handshake-timeout-ms) must be above zero".into(),
        ));
    }
    // Until `run` returns, this thread and those it starts work for this run (panics).
    let _scope = realtime::RunScope::enter();
    let start = Instant::now();
    // Before any thread starts: they inherit this thread's affinity.
    let reserve = cfg.dedicated_cpu.map(realtime::reserve_cpu);
    // The recording first: a missing feature or an unwritable file fails before the
    // robot is touched. A file it made is removed again if the run fails before its
    // control thread starts (an unplugged board, no Hello), so that the same command can
    // be given again: a recording is never written over, and the empty one refused it.
    let mut unstarted = UnstartedRecording(None);
    let ticks = match &cfg.rerun {
        None => None,
        Some(target) => {
            if cfg.out.is_none() {
                return Err(RunError::Rerun(anyhow::anyhow!(
                    "recording for rerun needs an output directory (--out)"
                )));
            }
            let sink = viz::open_sink(
                target,
                task,
                &cfg.robot.observation.names,
                &action_names(&cfg.robot),
            )
            .map_err(RunError::Rerun)?;
            if let viz::RerunTarget::File(path) = target {
                unstarted.0 = Some(path.clone());
            }
            Some(sink)
        }
    };
    // The output before the robot: a `--out` another run writes into, whose
    // transitions.log is not a log, or whose dataset was recorded otherwise (another
    // robot, rate, observation names, actions' order or mapping), is refused
    // before the port is opened (a board may reset when it is, and its firmware ends the
    // episode it runs at our `Hello`). Nothing is written yet (a run refused at the
    // handshake leaves `--out` as it was); both are checked again when opened.
    let run = RunStart {
        robot: cfg.robot.robot.clone(),
        task: task.to_string(),
        fps: cfg.robot.control_hz,
        observation_names: cfg.robot.observation.names.clone(),
        action_names: recorded_action_names(&cfg.robot),
        action_scale: cfg.robot.action.scale.clone(),
        action_offset: cfg.robot.action.offset.clone(),
        bundle: bundle_label.to_string(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        run_id: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    };
    if let Some(dir) = &cfg.out {
        log::check_log_free(&dir.join("transitions.log"))?;
        log::check_dataset_before_run(&dir.join("dataset"), &run.dataset_info())?;
        warn_of_a_killed_run(dir);
    }
    let port = link::open_port(&cfg.port, cfg.baud).map_err(RunError::Port)?;
    let writer = link::writer_of(port.as_ref()).map_err(RunError::Port)?;
    let mut link = link::Link::spawn(
        port,
        cfg.port.clone(),
        cfg.baud,
        cfg.reconnect,
        cfg.queue_capacity,
    )
    .map_err(RunError::Port)?;
    let mut gate = safety::CommandGate::new(&cfg.robot, Box::new(writer));
    handshake(&cfg, &mut gate, &link.events)?;
    // Shaken hands, the firmware holds with its torque on: the gate is the control
    // loop's from here. A setup step that fails from here to the control thread's start
    // (an `--out` that cannot be written, a log of another format, a helper thread that
    // does not start) stops the robot as a stop signal before the run does
    // (`stop_after_setup`); the loop sends one Estop, unconfirmed, as it is dropped
    // unless its thread took it over or that stop went out (a control thread that
    // cannot start drops it so), so no arm is left energised.
    let mut report = RunReport::new(&cfg, bundle_label);
    report.realtime = vec![];
    let mut control = control::Control::new(
        cfg.clone(),
        brain,
        gate,
        link.events.clone(),
        None,
        report,
        start,
    );
    let (tick_tx, tick_input) = match ticks {
        None => (None, None),
        Some(sink) => {
            let (tx, rx) = crossbeam_channel::bounded(viz::QUEUE);
            let input = logger::TickInput {
                rx,
                sink,
                link: link.counters.clone(),
                recorded: 0,
            };
            (Some(tx), Some(input))
        }
    };
    // First of the run's threads: if it cannot start, none of the others is left running.
    let (console, console_tx) = console::Console::spawn(std::io::stderr())
        .map_err(|error| RunError::Io {
            what: "starting the console thread".into(),
            error,
        })
        .map_err(|e| stop_after_setup(&mut control, e))?;
    // The log's lock, held to the run's end (see below).
    let mut _log_held = None;
    let (logger, synced) = match &cfg.out {
        Some(dir) => {
            dataset::create_dir_durably(dir)
                .map_err(|error| RunError::Io {
                    what: format!("creating {}", dir.display()),
                    error,
                })
                .map_err(|e| stop_after_setup(&mut control, e))?;
            let mut log = LogWriter::open(&dir.join("transitions.log"))
                .map_err(|e| stop_after_setup(&mut control, e))?;
            _log_held = Some(
                log.lock_holder()
                    .map_err(|e| stop_after_setup(&mut control, e))?,
            );
            // Followed only by the uplink (which then sends only what is on disk).
            let synced = cfg.uplink.is_some().then(|| log.synced_len());
            let ds_dir = dir.join("dataset");
            let ds = log::open_dataset(&ds_dir, &run.dataset_info())
                .map_err(|e| stop_after_setup(&mut control, e))?;
            if cfg.teleop.is_some() && !ds.writes(dataset::cols::TELEOP) {
                note!(
                    "warning: {}: this dataset has no `teleop` column (it predates it), so the episodes appended to it lose the teleop mark; transitions.log keeps it. Record into a new --out to keep the mark in the dataset.",
                    ds_dir.display()
                );
            }
            let logger =
                logger::Logger::spawn(log, Some((ds_dir, ds)), run, cfg.queue_capacity, tick_input)
                    .map_err(|error| RunError::Io {
                        what: "starting the logger thread".into(),
                        error,
                    })
                    .map_err(|e| stop_after_setup(&mut control, e))?;
            (Some(logger), synced)
        }
        None => (None, None),
    };

    let (streamer, swaps) = match (&cfg.uplink, &cfg.out) {
        (Some(u), Some(dir)) => {
            let log = dir.join("transitions.log");
            let (s, rx) = streamer::Streamer::spawn(u.clone(), &log, synced, console_tx.clone())
                .map_err(|error| RunError::Io {
                    what: "starting the uplink thread".into(),
                    error,
                })
                .map_err(|e| stop_after_setup(&mut control, e))?;
            (Some(s), Some(rx))
        }
        _ => (None, None),
    };

    let (teleop_thread, teleop_port) = match &cfg.teleop {
        None => (None, None),
        Some(t) => {
            let (thread, port) = teleop::spawn(t, cfg.robot.action.dim, console_tx.clone())
                .map_err(|error| RunError::Io {
                    what: "starting the teleop thread".into(),
                    error,
                })
                .map_err(|e| stop_after_setup(&mut control, e))?;
            (Some(thread), Some(port))
        }
    };
    let operator = if cfg.operator {
        note!("{}", operator::HELP);
        let stdin = std::io::BufReader::new(std::io::stdin());
        Some(
            operator::spawn_reader(stdin)
                .map_err(|error| RunError::Io {
                    what: "starting the operator thread".into(),
                    error,
                })
                .map_err(|e| stop_after_setup(&mut control, e))?,
        )
    } else {
        None
    };
    let realtime_opts = RealtimeOpts {
        fifo: cfg.realtime,
        dedicated: cfg.dedicated_cpu.zip(reserve),
    };
    control.log_tx = logger.as_ref().map(|l| l.tx.clone());
    control.swaps = swaps;
    control.viz_tx = tick_tx;
    control.teleop = teleop_port;
    control.operator = operator;
    control.console = Some(console_tx);
    let handle = realtime::spawn_in_run("control", move || control_thread(control, realtime_opts))
        .map_err(|error| RunError::Io {
            what: "starting the control thread".into(),
            error,
        })?;
    // Started: the recording is the run's, whatever happens now.
    unstarted.0 = None;
    let (mut report, port) = match handle.join() {
        Ok(r) => r,
        Err(_) => {
            // Unreachable in practice (the thread catches its panics), but the report
            // must still be written.
            let mut r = RunReport::new(&cfg, bundle_label);
            r.outcome = Outcome::Error;
            r.error = Some("the control thread died".into());
            (r, None)
        }
    };
    if let Some(t) = teleop_thread {
        report.teleop = Some(t.finish(port.as_ref()));
    }
    link.stop();
    report.link = link.counters();
    if let Some(l) = logger {
        report.logger = Some(l.finish());
    }
    // The log stays locked (`_log_held`, from the writer's start) through the uplink's
    // drain and the report's last write, which follow its writer's close: another run
    // into this `--out` could start then, and have its `report.json` replaced by this
    // one's.
    let done: Vec<&EpisodeReport> = report
        .episodes
        .iter()
        .filter(|e| matches!(e.reason, EndReason::Completed | EndReason::Labelled))
        .collect();
    report.episodes_completed = done.len();
    report.successes = done.iter().filter(|e| e.success).count();
    report.success_rate = if done.is_empty() {
        0.0
    } else {
        report.successes as f64 / done.len() as f64
    };
    // After the logger: every record is in the log for the streamer's last send. The
    // report is written once before its drain too (up to `--uplink-drain-s` + 5 s), its
    // `uplink.draining` true: a service manager's SIGKILL in the drain lost the report.
    let mut written_before_drain = false;
    let mut drain_cut = None;
    if let Some(s) = streamer {
        // A stop signal from here on (the one that stopped the run came before) cuts the
        // drain short: the unsent records stay in the log for the next run. Counted
        // before the report says `draining`, which is what a supervisor may wait for.
        let signals = realtime::signal_count();
        if let Some(dir) = &cfg.out {
            report.uplink = Some(s.summary_so_far());
            // (An error here is the final write's too, and reported with it.)
            let _ = write_report(dir, &report, Earlier::Keep, &mut written_before_drain);
        }
        let summary = s.finish_unless(|| realtime::signal_count() != signals);
        if summary.drain_cut {
            // Said once the report is written (a stderr nobody reads held it up).
            drain_cut = Some(format!(
                "uplink: the drain was cut short by signal {}; {} of {} records acknowledged, \
                 the rest stay in the log and go with the next run into this --out",
                realtime::stop_signal(),
                summary.acknowledged,
                summary.logged
            ));
        }
        report.uplink = Some(summary);
    }
    let written = match &cfg.out {
        // The same run's report written before the drain is replaced, not kept.
        Some(dir) => {
            let earlier = if written_before_drain {
                Earlier::Replace
            } else {
                Earlier::Keep
            };
            write_report(dir, &report, earlier, &mut false)
        }
        None => Ok(()),
    };
    if let Some(line) = drain_cut {
        note!("{line}");
    }
    // The control thread's lines, once the recording and the report are saved: a stderr
    // nobody reads holds up only this wait, not them.
    let dropped_lines = console.finish();
    if dropped_lines > 0 {
        note!(
            "{dropped_lines} console lines of the control, teleop and uplink threads were dropped (their queue \
             was full: stderr was not read fast enough); report.json has the faults and \
             episodes"
        );
    }
    if let Err(e) = written {
        // The report is the run's only account of its faults and timing: printed where
        // it cannot be written, not lost. The run's exit status stays its own (3 for a
        // stop button, 130 for an interruption), or 4 for one that completed: the
        // recording lost something. (It used to be 1, hiding the others.)
        report.report_not_written = Some(e.to_string());
        note!(
            "the run's report, which could not be written to {}:\n{}",
            cfg.out
                .as_deref()
                .unwrap_or(Path::new("?"))
                .join("report.json")
                .display(),
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    Ok(report)
}

/// What [`write_report`] does with a `report.json` already in `--out`.
#[derive(Clone, Copy, PartialEq)]
enum Earlier {
    /// An earlier run's: kept as `reports/report-N.json`.
    Keep,
    /// This run's, written before the uplink's drain: replaced.
    Replace,
}

/// Writes `OUT/report.json` (this run's); an earlier run's report there is kept as
/// `OUT/reports/report-N.json` (N the first free number), as its transitions are kept
/// in the log and its episodes in the dataset. `in_place` is set once the new report
/// has replaced the file (also when the directory's sync after that fails).
fn write_report(
    dir: &Path,
    report: &RunReport,
    earlier: Earlier,
    in_place: &mut bool,
) -> Result<(), RunError> {
    let io = |what: String| move |error| RunError::Io { what, error };
    let path = dir.join("report.json");
    if earlier == Earlier::Keep && path.exists() {
        let old = dir.join("reports");
        std::fs::create_dir_all(&old).map_err(io(format!("creating {}", old.display())))?;
        let kept = (0..)
            .map(|n| old.join(format!("report-{n}.json")))
            .find(|p| !p.exists())
            .expect("a free name");
        std::fs::rename(&path, &kept).map_err(io(format!("keeping {}", path.display())))?;
    }
    let text = serde_json::to_string_pretty(report).unwrap_or_default();
    let tmp = dir.join("report.json.tmp");
    // Synced before the rename and the directory after it: the old report was moved
    // away, so a power cut must find the new one whole, not an empty file or no file.
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()
    });
    written.map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))?;
    *in_place = true;
    dataset::sync_dir(dir).map_err(io(format!("syncing {}", dir.display())))
}

/// The names the recording gives the action values: the robot file's `[action] names`,
/// else `action.0`, `action.1`, … (a dataset's spelling for "not named": a bundle
/// trained on them names no actions; joint names, guessed here once, were taken for the
/// actions' order by the bundle's check against a robot file's names).
fn recorded_action_names(robot: &RobotConfig) -> Vec<String> {
    if robot.action.names.is_empty() {
        (0..robot.action.dim)
            .map(|i| format!("{}.{i}", dataset::cols::ACTION))
            .collect()
    } else {
        robot.action.names.clone()
    }
}

/// For a viewer: the action names, else joint names when there is one joint per action
/// value, else `a0`, `a1`, …
fn action_names(robot: &RobotConfig) -> Vec<String> {
    if !robot.action.names.is_empty() {
        robot.action.names.clone()
    } else if robot.joints.len() == robot.action.dim {
        robot.joints.iter().map(|j| j.name.clone()).collect()
    } else {
        (0..robot.action.dim).map(|i| format!("a{i}")).collect()
    }
}

/// Sends `Hello` until the firmware answers with its own (or the timeout) and checks it;
/// a stop button pressed meanwhile refuses the run.
fn handshake(
    cfg: &RunConfig,
    gate: &mut safety::CommandGate,
    events: &crossbeam_channel::Receiver<link::LinkEvent>,
) -> Result<(), RunError> {
    let ours = cfg.robot.hello();
    let deadline = Instant::now() + cfg.handshake_timeout;
    if realtime::stop_requested() {
        return Err(RunError::InterruptedBeforeStart("nothing was sent".into()));
    }
    // Blocks from the port that did not decode, and the first one's error: a firmware
    // being written answers, but in frames that fail (a CRC over other bytes, COBS, a
    // Hello of another length), and the timeout said only "no Hello".
    let mut undecoded: (u64, Option<FrameError>) = (0, None);
    let mut hellos_sent = false;
    loop {
        if let Err(e) = gate.send_control(Message::Hello(ours)) {
            // A resend that failed (the port's write timeout): a firmware that took an
            // earlier Hello holds with its torque on, as on the timeout below.
            let estop = if hellos_sent {
                estop_after_hellos(
                    cfg,
                    gate,
                    "we wait no longer (a resent Hello could not be written)",
                )
            } else {
                String::new()
            };
            return Err(RunError::Port(std::io::Error::new(
                e.kind(),
                format!("writing Hello: {e}{estop}"),
            )));
        }
        hellos_sent = true;
        let resend = Instant::now() + Duration::from_millis(250);
        loop {
            let now = Instant::now();
            if now >= deadline {
                // A firmware whose answers are lost may have taken a Hello (and holds
                // with its torque on): one Estop, unconfirmed, as it answers nothing.
                let heard = match &undecoded {
                    (n, Some(first)) => format!(
                        "; {n} blocks from the port did not decode as frames (the first: \
                         {first}): a firmware answering in another framing or layout, or \
                         at another baud"
                    ),
                    (_, None) => String::new(),
                };
                return Err(RunError::Handshake(format!(
                    "no Hello from the firmware on {} within {:?} (is the firmware running, on this port, at {} baud?){heard}{}",
                    cfg.port.display(),
                    cfg.handshake_timeout,
                    cfg.baud,
                    estop_after_hellos(cfg, gate, "only its answers are lost")
                )));
            }
            if now >= resend {
                break;
            }
            if realtime::stop_requested() {
                return Err(RunError::InterruptedBeforeStart(stop_before_start(
                    cfg, gate, events, false,
                )));
            }
            // Short waits, so that Ctrl-C is heard within a tenth of a second.
            let wait = (resend.min(deadline) - now).min(Duration::from_millis(100));
            match events.recv_timeout(wait) {
                Ok(link::LinkEvent::Frame { frame, .. }) => match frame.message {
                    Message::Hello(theirs) => {
                        return ours
                            .check_peer(&theirs)
                            .map_err(|e| RunError::Handshake(handshake_refusal(&cfg.robot, &e)));
                    }
                    // (The port's input was cleared when it opened, so this is no
                    // answer to an earlier run's Estop.)
                    Message::Fault {
                        code: FaultCode::Estop,
                    } => return Err(RunError::EmergencyStop),
                    _ => {}
                },
                Ok(link::LinkEvent::Error {
                    error: FrameError::Version { received },
                    ..
                }) => {
                    return Err(RunError::Handshake(format!(
                        "the firmware speaks protocol version {received}, this controller speaks {PROTOCOL_VERSION}"
                    )));
                }
                Ok(link::LinkEvent::Error { error, .. }) => {
                    undecoded.0 += 1;
                    undecoded.1.get_or_insert(error);
                }
                // The read side is gone, the write side may not be: a firmware that took
                // a Hello holds with its torque on, as above.
                Ok(link::LinkEvent::Lost(why)) => {
                    let estop = estop_after_hellos(cfg, gate, "its answers cannot be read");
                    return Err(RunError::Port(std::io::Error::other(format!(
                        "{why}{estop}"
                    ))));
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let estop = estop_after_hellos(cfg, gate, "its answers cannot be read");
                    return Err(RunError::Port(std::io::Error::other(format!(
                        "the serial I/O thread stopped{estop}"
                    ))));
                }
            }
        }
    }
}

/// A setup step failed after the handshake, before the control thread took the loop
/// over: the firmware holds with its torque on, so the `Estop` goes out and its answer
/// is awaited, resent without one, as for a stop signal before the run
/// ([`stop_before_start`]; the loop's drop sent one `Estop`, unconfirmed, and the error
/// did not say so). The error then says what went out.
fn stop_after_setup(control: &mut control::Control, error: impl Into<RunError>) -> RunError {
    let stop = stop_before_start(&control.cfg, &mut control.gate, &control.events, true);
    // Stopped: its drop sends nothing more.
    control.ran = true;
    RunError::AfterHandshake {
        error: Box::new(error.into()),
        stop,
    }
}

/// The first handshake ending without the firmware's `Hello` after ours went out: a
/// firmware that took one holds with its torque on, so where the torque may go off
/// (`gravity_safe_torque_off`) one `Estop` goes out, unconfirmed (no answer can be
/// read). The words to add to the error: what went out, and why.
fn estop_after_hellos(cfg: &RunConfig, gate: &mut safety::CommandGate, why: &str) -> String {
    if cfg.robot.safety.gravity_safe_torque_off && gate.send_control(Message::Estop).is_ok() {
        format!("; an Estop went out after the Hellos, in case the firmware took one and {why}")
    } else {
        String::new()
    }
}

/// A stop signal while the first `Hello`'s answer is awaited: a firmware that took the
/// `Hello` holds with its torque on (a `Hello` takes it out of an earlier stop too), so
/// an `Estop` goes out and its answer (`Fault { Estop }`) is awaited as at a run's end,
/// the same wait, sent again up to [`control::ESTOP_RESENDS`] times (the control loop's
/// `confirm_stop` does that once the loop exists; this is before it). A firmware that
/// answers nothing may have heard nothing (off, or on another port), so the run still
/// ends as interrupted; the words returned say what happened.
fn stop_before_start(
    cfg: &RunConfig,
    gate: &mut safety::CommandGate,
    events: &crossbeam_channel::Receiver<link::LinkEvent>,
    shaken: bool,
) -> String {
    if !cfg.robot.safety.gravity_safe_torque_off {
        return "nothing but Hello was sent (this robot file keeps the torque on at a stop: \
                gravity_safe_torque_off = false)"
            .into();
    }
    let wait = control::estop_answer_wait(
        cfg.robot.control_period().div_f64(cfg.time_scale),
        cfg.robot.stale_sensor().div_f64(cfg.time_scale),
    );
    let mut written = 0;
    for _ in 0..=control::ESTOP_RESENDS {
        if gate.send_control(Message::Estop).is_ok() {
            written += 1;
        }
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match events.recv_timeout(left) {
                // (The port's input was cleared when it opened: any Estop answered is
                // ours, or the stop button's, and the torque is off either way.)
                Ok(link::LinkEvent::Frame { frame, .. })
                    if matches!(
                        frame.message,
                        Message::Fault {
                            code: FaultCode::Estop
                        }
                    ) =>
                {
                    return "an Estop went out after the Hello, and the firmware answered it"
                        .into();
                }
                Ok(link::LinkEvent::Lost(why)) => {
                    return format!(
                        "an Estop went out after the Hello ({written} written), then the port \
                         was lost ({why})"
                    );
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return format!(
                        "an Estop went out after the Hello ({written} written), then the serial \
                         I/O thread stopped"
                    );
                }
            }
        }
    }
    let tries = control::ESTOP_RESENDS + 1;
    // After a handshake the firmware is known to be there, and to hold with its torque
    // on: only its answers can be lost.
    if written == 0 {
        let holds = if shaken {
            "the firmware, shaken hands, holds with its torque on"
        } else {
            "if the firmware took the Hello, it holds with its torque on"
        };
        return format!("the Estop after the Hello could not be written ({tries} tries): {holds}");
    }
    let unanswered = if shaken {
        "the firmware may still hold with its torque on, or only its answers were lost"
    } else {
        "the firmware may be off or on another port, or, if it took the Hello, holding \
         with its torque on"
    };
    format!(
        "an Estop went out after the Hello, unanswered ({written} of {tries} written, {} ms \
         apart): {unanswered}",
        wait.as_millis()
    )
}

/// A refused handshake in words, with what only this side knows: the firmware's `Hello`
/// carries its robot id, not its robot file, so a robot mismatch names ours.
pub(crate) fn handshake_refusal(robot: &RobotConfig, e: &HandshakeError) -> String {
    match e {
        HandshakeError::Robot { .. } => format!(
            "{e}. This robot file describes robot '{}' ({} observation and {} joint names); \
             configure the firmware from the same file (`tools robot FILE` prints the robot \
             id a file gives, and sim-firmware the one it announces), or pass the robot \
             file the firmware was configured from",
            robot.robot,
            robot.observation.names.len(),
            robot.joints.len()
        ),
        // The firmware cannot say which value it was configured with: ours are printed
        // to compare with `tools robot` on the firmware's file.
        HandshakeError::Settings { .. } => format!(
            "{e}. This robot file's settings (`tools robot FILE` prints a file's, and \
             sim-firmware the hash it announces): {}; configure the firmware from this file \
             again, or pass the robot file it was configured from",
            robot.settings_text().trim_end().replace('\n', "; ")
        ),
        _ => e.to_string(),
    }
}

/// What the control thread sets up for itself before its first tick.
struct RealtimeOpts {
    /// `--realtime`: SCHED_FIFO priority, CPU.
    fifo: Option<(i32, Option<usize>)>,
    /// `--dedicated-cpu`: the CPU and how reserving it went.
    dedicated: Option<(usize, realtime::RealtimeStep)>,
}

/// The control thread: real-time setup, the loop inside `catch_unwind`, and the safe
/// stop after a panic.
fn control_thread(
    mut c: control::Control,
    rt: RealtimeOpts,
) -> (RunReport, Option<teleop::TeleopPort>) {
    c.ran = true;
    realtime::tight_timer_slack();
    let mut steps = vec![];
    let dedicated_cpu = rt.dedicated.as_ref().map(|d| d.0);
    if let Some((cpu, reserved)) = rt.dedicated {
        let (dedicated, busy_wait) = realtime::dedicate_cpu(cpu, reserved);
        c.busy_wait = busy_wait;
        steps.extend(dedicated);
    }
    if let Some((prio, cpu)) = rt.fifo {
        let cpu = dedicated_cpu.or(cpu);
        steps.extend(realtime::apply_realtime(prio, cpu));
    }
    // Through the console thread, as every line of this thread: a stderr nobody reads
    // must not hold it before its first tick.
    for s in &steps {
        c.say(s.to_string());
    }
    if !steps.is_empty() {
        c.report.realtime = steps;
    }
    // A panic's message goes to the console thread, not to stderr from here: see
    // `defer_panic_messages`.
    realtime::defer_panic_messages();
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.run_loop()));
    if let Err(p) = first {
        let msg = said_panic(&c, p);
        // With its place when the run's first panic is this one: the line that names it
        // goes only through the console queue, which a stderr nobody reads fills.
        let place = c
            .run_panicked
            .first()
            .filter(|first| first.contains(&msg))
            .and_then(|first| panic_place(&first).map(str::to_string));
        c.fatal = Some(match place {
            Some(at) => format!("the control thread panicked at {at}: {msg}"),
            None => format!("the control thread panicked: {msg}"),
        });
        let now = Instant::now();
        c.phase = if c.phase == control::Phase::Done {
            control::Phase::Idle
        } else {
            c.phase
        };
        // The recovery runs the loop's own code again, so a panic in it (the same bug
        // once more) must not skip the last resort below.
        let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.fault(now, FaultKind::Panic, msg, Some(control::After::Exit));
            c.step_now();
            c.run_loop()
        }));
        if second.is_err() {
            // Last resort: one hold command and the torque off, directly.
            let _ = c.gate.send_hold();
            if c.cfg.robot.safety.gravity_safe_torque_off {
                let _ = c.gate.send_control(Message::Estop);
            }
        }
        for m in realtime::take_deferred_panics() {
            c.say(m);
        }
    }
    // The log's last records run the loop's code once more (a faulted episode's end):
    // the same bug there must not lose the report (the thread died, and `run` wrote a
    // blank one, without its faults, episodes or the panic's message).
    let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.flush_log_blocking()));
    if let Err(p) = flushed {
        let msg = said_panic(&c, p);
        c.fatal.get_or_insert_with(|| {
            format!("the control thread panicked handing its last records to the log: {msg}")
        });
    }
    c.fold_candidate_ages();
    let mut report = std::mem::replace(&mut c.report, RunReport::new(&c.cfg, ""));
    report.gate = c.gate.stats;
    report.ticks = c.tick;
    c.fold_cadence();
    report.cadence = c.run_cadence.report(c.cfg.target_hz());
    report.error = c.fatal.clone();
    report.outcome = if c.fatal.is_some() {
        Outcome::Error
    } else {
        c.stopping().unwrap_or(Outcome::Completed)
    };
    (report, c.teleop.take())
}

/// A caught panic of the control thread: its deferred messages go to the console
/// thread; returns its own message.
/// `FILE:LINE:COL` of a panic as the run's panic hook keeps it ("thread 'NAME'
/// panicked at FILE:LINE:COL: MESSAGE").
fn panic_place(said: &str) -> Option<&str> {
    let rest = said.split_once("panicked at ")?.1;
    Some(rest.split_once(": ").map_or(rest, |(place, _)| place))
}

fn said_panic(c: &control::Control, p: Box<dyn std::any::Any + Send>) -> String {
    for m in realtime::take_deferred_panics() {
        c.say(m);
    }
    realtime::panic_message(p.as_ref())
}

/// A writer whose bytes a test reads back (a port's write side, a console's stderr).
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct TestBytes(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for TestBytes {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Says so where the last run into `dir` (`--out`) was killed before it saved its
/// episodes, or could not save some, naming the conversion that appends them (by run id: once this run is in
/// the log, `log-to-dataset --last-run` would take this one). Earlier runs' were said
/// at the start after them (one recovered into another dataset would be said at every
/// start). A log that cannot be read is left to the log's own opening, which says why.
fn warn_of_a_killed_run(dir: &Path) {
    let (log, ds) = (dir.join("transitions.log"), dir.join("dataset"));
    let Ok(runs) = log::unsaved_runs(&log, &[&ds]) else {
        return;
    };
    let killed: Vec<_> = runs.into_iter().filter(|r| r.last_in_log).collect();
    if let Some(advice) = log::unsaved_runs_advice(&log, &ds, &killed) {
        // The dataset is this run's until it ends.
        note!("warning: {advice}, once this run has ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::config::ObservationConfig;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The port's write side, read back.
    type Sent = TestBytes;

    impl TestBytes {
        fn messages(&self) -> Vec<Message> {
            let mut d = firmware_config::protocol::FrameDecoder::default();
            let bytes = self.0.lock().unwrap().clone();
            bytes
                .iter()
                .filter_map(|&b| d.push(b))
                .map(|f| f.unwrap().message)
                .collect()
        }
    }

    /// The first handshake ended by the link's read side (lost, or its thread gone) after
    /// a Hello went out: a firmware that took it holds with its torque on, so the Estop
    /// goes out as on the handshake's timeout (none did: exit 1, the arm energised).
    /// Without `gravity_safe_torque_off`, none.
    #[test]
    fn a_handshake_ended_by_the_links_loss_sends_the_estop() {
        for (lost, torque_off) in [(true, true), (false, true), (true, false)] {
            let mut robot = firmware_config::RobotConfig::example("push").unwrap();
            robot.safety.gravity_safe_torque_off = torque_off;
            let mut cfg = RunConfig::new(robot.clone(), "/dev/null".into());
            cfg.quiet = true;
            let sent = Sent::default();
            let mut gate = safety::CommandGate::new(&robot, Box::new(sent.clone()));
            let (tx, rx) = crossbeam_channel::unbounded();
            if lost {
                tx.send(link::LinkEvent::Lost("read failed".into()))
                    .unwrap();
            } else {
                drop(tx);
            }
            let e = handshake(&cfg, &mut gate, &rx).unwrap_err();
            let what = format!("lost {lost}, torque off {torque_off}");
            assert!(matches!(e, RunError::Port(_)), "{what}: {e}");
            let m = sent.messages();
            assert!(matches!(m[0], Message::Hello(_)), "{what}: {m:?}");
            let expected = if torque_off { 1 } else { 0 };
            assert_eq!(m.len(), 1 + expected, "{what}: {m:?}");
            assert_eq!(
                m.iter().filter(|m| matches!(m, Message::Estop)).count(),
                expected,
                "{what}: {m:?}"
            );
            assert_eq!(
                e.to_string().contains("an Estop went out after the Hellos"),
                torque_off,
                "{what}: {e}"
            );
        }
    }

    /// A resent Hello whose write fails: an earlier one may have been taken, so the
    /// Estop goes out as on the handshake's other ends (before, the error was returned
    /// at once, the arm energised). A first Hello that fails was taken by nobody: no
    /// Estop.
    #[test]
    fn a_failed_hello_resend_sends_the_estop() {
        /// Fails its `fail`-th write (1-based), takes the others.
        struct FailsOnce {
            sent: Sent,
            writes: usize,
            fail: usize,
        }
        impl std::io::Write for FailsOnce {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.writes += 1;
                if self.writes == self.fail {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "write timed out",
                    ));
                }
                self.sent.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for fail in [1, 2] {
            let robot = firmware_config::RobotConfig::example("push").unwrap();
            let mut cfg = RunConfig::new(robot.clone(), "/dev/null".into());
            cfg.quiet = true;
            let sent = Sent::default();
            let writer = FailsOnce {
                sent: sent.clone(),
                writes: 0,
                fail,
            };
            let mut gate = safety::CommandGate::new(&robot, Box::new(writer));
            // Nothing answers (the firmware's answers lost).
            let (_tx, rx) = crossbeam_channel::unbounded();
            let e = handshake(&cfg, &mut gate, &rx).unwrap_err();
            assert!(matches!(e, RunError::Port(_)), "{e}");
            let e = e.to_string();
            assert!(e.contains("writing Hello: write timed out"), "{e}");
            let m = sent.messages();
            let estops = m.iter().filter(|m| matches!(m, Message::Estop)).count();
            assert_eq!(estops, fail - 1, "failing write {fail}: {m:?}");
            assert_eq!(
                e.contains("an Estop went out after the Hellos"),
                fail == 2,
                "{e}"
            );
        }
    }

    /// A handshake that times out while the port delivered only blocks that did not
    /// decode says so, with the first one's error (it said only "no Hello", the cause
    /// a firmware author needs left out).
    #[test]
    fn a_handshake_timeout_names_what_did_not_decode() {
        let robot = firmware_config::RobotConfig::example("push").unwrap();
        let mut cfg = RunConfig::new(robot.clone(), "/dev/null".into());
        cfg.quiet = true;
        cfg.handshake_timeout = Duration::from_millis(50);
        let sent = Sent::default();
        let mut gate = safety::CommandGate::new(&robot, Box::new(sent));
        let (tx, rx) = crossbeam_channel::unbounded();
        for received in [0x1234_5678, 0x9abc_def0] {
            let error = FrameError::Crc {
                received,
                computed: 1,
            };
            let rx_at = Instant::now();
            tx.send(link::LinkEvent::Error { rx: rx_at, error })
                .unwrap();
        }
        let e = handshake(&cfg, &mut gate, &rx).unwrap_err().to_string();
        assert!(
            e.contains("no Hello from the firmware")
                && e.contains(
                    "2 blocks from the port did not decode as frames (the first: CRC \
                     mismatch: the frame carries 0x12345678"
                ),
            "{e}"
        );
        // Nothing undecoded: not said.
        let (_tx, rx) = crossbeam_channel::unbounded();
        let mut gate = safety::CommandGate::new(&robot, Box::new(Sent::default()));
        let e = handshake(&cfg, &mut gate, &rx).unwrap_err().to_string();
        assert!(!e.contains("did not decode"), "{e}");
    }

    /// The library refuses SCHED_FIFO with a dedicated CPU's spin, as the command line
    /// does: a caller of `run` got a real-time thread that never slept.
    #[test]
    fn a_realtime_run_on_a_dedicated_cpu_is_refused() {
        let robot = firmware_config::RobotConfig::example("push").unwrap();
        let mut cfg = RunConfig::new(robot, "/nonexistent".into());
        cfg.realtime = Some((80, None));
        cfg.dedicated_cpu = Some(0);
        cfg.quiet = true;
        let e = run(cfg, Brain::Hold, "push", "test").unwrap_err();
        assert!(
            matches!(&e, RunError::Config(m) if m.contains("cannot run under --realtime")),
            "{e}"
        );
    }

    #[test]
    fn observation_names_that_differ_are_named() {
        let robot = ObservationConfig {
            dim: 3,
            names: names(&["q1", "q2", "qd1"]),
        };
        assert_eq!(robot.names_differ(&robot.names, "the bundle"), None);
        let w = robot
            .names_differ(&names(&["q1", "qd1", "q2"]), "the bundle")
            .unwrap();
        assert!(
            w.contains("first at [1]") && w.contains("`qd1` in the bundle, `q2` in the robot file"),
            "{w}"
        );
        // The same channels in another order cannot be a spelling: refused by name.
        let e = robot
            .names_reordered(&names(&["q1", "qd1", "q2"]), "the bundle")
            .unwrap();
        assert_eq!(
            e,
            "observation `qd1` is at [1] in the bundle and at [2] in the robot file: the policy \
             would act on its inputs in another order"
        );
        // Other spellings, and the same order, are not.
        assert_eq!(
            robot.names_reordered(&names(&["j1.pos", "j2.pos", "j1.vel"]), "the bundle"),
            None
        );
        assert_eq!(robot.names_reordered(&robot.names, "the bundle"), None);
    }

    /// Actions likewise, where the robot file names them; a robot file or a bundle
    /// that names none agrees with anything.
    #[test]
    fn action_names_in_another_order_are_refused() {
        let mut robot = RobotConfig::example("arm-reach").unwrap().action;
        let swapped = names(&["dq2_target", "dq1_target"]);
        assert_eq!(
            robot.names_reordered(&swapped, "the bundle").unwrap(),
            "action `dq2_target` is at [0] in the bundle and at [1] in the robot file: the \
             policy's commands would drive other joints than it learned"
        );
        let w = robot
            .names_differ(&names(&["shoulder.pos", "elbow.pos"]), "the bundle")
            .unwrap();
        assert!(
            w.starts_with("action names differ from the robot file's, first at [0]"),
            "{w}"
        );
        assert_eq!(robot.names_reordered(&[], "the bundle"), None);
        assert_eq!(robot.names_differ(&[], "the bundle"), None);
        robot.names.clear();
        assert_eq!(robot.names_reordered(&swapped, "the bundle"), None);
    }

    /// What `controller run` and a swap make of a bundle's action names: the robot
    /// file's in another order refused; other spellings a warning; names on one side
    /// a note; the robot's joint names, as recordings before 2026-12-07 guessed them, a
    /// note even where `[action] names` order those joints otherwise (a correct bundle
    /// was refused).
    #[test]
    fn a_bundles_action_names_are_checked_against_the_robot_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = shared_model::synthetic::SyntheticSpec::cpu();
        let mut m = spec.write(dir.path(), 1, None).unwrap();
        let mut push = RobotConfig::example("push").unwrap();
        let said = |robot: &RobotConfig, m: &Manifest| check_action_names(robot, m);
        m.action.names = names(&["vx_command", "vy_command"]);
        assert_eq!(said(&push, &m), Ok(None));
        m.action.names = names(&["vy_command", "vx_command"]);
        assert!(
            said(&push, &m)
                .unwrap_err()
                .contains("action `vy_command` is at [0]")
        );
        m.action.names = names(&["vx", "vy"]);
        assert!(matches!(said(&push, &m), Ok(Some(("warning", _)))));
        m.action.names.clear();
        assert!(
            matches!(said(&push, &m), Ok(Some(("note", w))) if w.contains("does not name its actions"))
        );
        // A robot whose Command takes the joints in the other order than it lists them.
        push.action.names = names(&["pusher_y", "pusher_x"]);
        m.action.names = names(&["pusher_x", "pusher_y"]);
        assert!(
            matches!(said(&push, &m), Ok(Some(("note", w))) if w.contains("after the robot file's joints"))
        );
        push.action.names.clear();
        assert!(
            matches!(said(&push, &m), Ok(Some(("note", w))) if w.contains("list them as [action] names"))
        );
    }

    /// A bundle whose data recorded the robot file's action mapping runs only on a robot
    /// file that maps the actions the same way; one that records none is a note for a
    /// robot's bundle, nothing for a simulated task's.
    #[test]
    fn a_bundles_action_mapping_is_checked_against_the_robot_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = shared_model::synthetic::SyntheticSpec::cpu();
        let mut m = spec.write(dir.path(), 1, None).unwrap();
        let push = RobotConfig::example("push").unwrap();
        m.task = "lab-pusher".into();
        m.action.robot_scale = push.action.scale.clone();
        m.action.robot_offset = push.action.offset.clone();
        assert_eq!(check_action_mapping(&push, &m), Ok(None));
        m.action.robot_scale[1] *= 2.0;
        let e = check_action_mapping(&push, &m).unwrap_err();
        assert!(
            e.starts_with("action [1] `vy_command` was recorded as 0 + 2 × a in robot units in the bundle's data"),
            "{e}"
        );
        m.action.robot_scale.clear();
        m.action.robot_offset.clear();
        let note = check_action_mapping(&push, &m).unwrap().unwrap();
        assert!(
            note.contains("does not record the action mapping"),
            "{note}"
        );
        m.task = "push".into();
        assert_eq!(check_action_mapping(&push, &m), Ok(None));
    }

    /// A run that completed but whose recording lost data exits with 4, not 0: a
    /// script that records demonstrations must not take it for a full recording.
    #[test]
    fn a_completed_run_with_a_lossy_recording_does_not_exit_0() {
        let robot = RobotConfig::example("push").unwrap();
        let mut r = RunReport::new(&RunConfig::new(robot, "/dev/null".into()), "b");
        assert_eq!((r.exit_status(), r.recording_lost()), (0, None));
        r.log_drops = 2;
        assert_eq!(r.exit_status(), 4);
        r.log_drops = 0;
        r.logger = Some(logger::LoggerSummary {
            errors: vec!["writing data/chunk-000/file-000.parquet: no space left".into()],
            ..Default::default()
        });
        assert_eq!(r.exit_status(), 4);
        assert!(r.recording_lost().unwrap().contains("no space left"));
        r.outcome = Outcome::StoppedByFault;
        assert_eq!(r.exit_status(), 3);
    }

    /// The built-in robot files describe the simulated tasks' observations, so a
    /// simulated task's bundle never warns on its own robot.
    #[test]
    fn the_built_in_robots_name_their_tasks_observations() {
        for task in sim::TaskId::ALL {
            let robot = RobotConfig::example(task.name()).unwrap();
            let spec = task.spec().owned_obs_names();
            assert_eq!(
                robot.observation.names_differ(&spec, "the bundle"),
                None,
                "{task}"
            );
            // And their actions, in the task's order, as a simulated task's bundle
            // names them.
            assert_eq!(
                robot.action.names,
                task.spec().owned_action_names(),
                "{task}"
            );
        }
    }
}
