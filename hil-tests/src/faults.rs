//! Fault injection on the simulated firmware's side of the link, reproducible from a
//! seed.
//!
//! Two kinds of faults:
//!
//! - **Link faults** act on the outgoing byte stream, one encoded frame at a time
//!   ([`FaultInjector::process_frame`]): dropped bytes, flipped bits, truncated frames
//!   (the cut takes the delimiter with it, so the receiver's next block is damaged too),
//!   garbage between frames, duplicated frames, reordered frames (one frame held back
//!   and sent after the next), late duplicates (a copy sent again some frames later),
//!   stalls (the firmware's output stops for a while), and a
//!   wrong protocol version in every header (with a valid CRC, so the receiver sees a
//!   version mismatch rather than noise; the firmware then speaks that version whole,
//!   its `Hello` included, and reads none of the controller's frames).
//! - **Firmware faults** need the firmware's cooperation, which asks the injector at the
//!   right moments: NaN in sensor data ([`FaultInjector::corrupt_sensor`]), a simulated
//!   reboot mid-episode ([`FaultInjector::reboot_now`]: the firmware restarts its
//!   sequence numbers and clock, sends `Hello` again and waits for the controller's
//!   `Hello`, ignoring everything else until then), a press of the robot's stop button ([`FaultInjector::estop_now`]: the
//!   firmware stops as on an `Estop` and reports `Fault { Estop }`), a wrong schema
//!   hash in its `Hello`, and commands lost on their way in
//!   ([`FaultInjector::lose_command`]: the controller-to-firmware direction, one whole
//!   command at a time, as a damaged frame the firmware's decoder drops).
//!
//! Every random choice comes from one [`sim::rng::Rng`] seeded from the spec, so a seed
//! and the same sequence of frames reproduce the same damage byte for byte. A whole run
//! is not reproduced that way: which frames go out depends on time as well (heartbeats
//! while no episode runs, watchdog holds, the controller's pacing), so two runs with one
//! seed agree only as long as their frames do, typically through the first episode in
//! lockstep. Tests assert what a fault must cause, not a fixed count of faults.
//!
//! # Spec strings
//!
//! `--faults` takes comma-separated `key=value` items; probabilities are in `[0, 1]`:
//!
//! | key | value | effect |
//! |---|---|---|
//! | `seed` | u64 | generator seed (default: the firmware's `--seed`) |
//! | `after` | frames | link faults start after this many clean frames (lets the handshake through); `version` and `stall_after` act from the first frame |
//! | `drop` | p per byte | the byte is not sent |
//! | `flip` | p per byte | one random bit of the byte is flipped |
//! | `truncate` | p per frame | the frame is cut at a random point, delimiter included |
//! | `garbage` | p per frame | 1 to 32 random bytes go out before the frame |
//! | `dup` | p per frame | the frame is sent twice |
//! | `reorder` | p per frame | the frame is held back and sent after the next one |
//! | `echo` | `p:n` | with probability p per frame, a copy goes out again after the next n frames (a late duplicate) |
//! | `stall` | `p:ms` | with probability p per frame, output stops for ms of wall time before it (the firmware's clock runs on, `--rate-scale` times as fast) |
//! | `stall_after` | `n:ms` | once, output stops for ms of wall time before frame n (counting from 1) |
//! | `reboot_at` | step | once, the firmware reboots when an episode reaches this step |
//! | `reboot_silent_at` | step | as `reboot_at`, and the reboot's `Hello` is lost on the line (the firmware then waits for a handshake, silent) |
//! | `estop_at` | step, `boot`, `hello` or `end` | once, the stop button is pressed (and stays pressed) when an episode reaches this step; `boot`: as the firmware starts, before any controller connects; `hello`: as the controller's first `Hello` arrives, before the firmware answers it; `end`: at the first command after an episode ended (the controller's closing hold) |
//! | `watchdog_at` | step | once, the command for this step is lost and the watchdog trips at once |
//! | `overcurrent_at_reset` | count | once, at the count-th episode start (from 1; a `Reset` refused under a pressed stop button starts none), the firmware reports `Fault { Overcurrent }` in its reset motion, just before the episode's `EpisodeStart` (its protection acted; the episode starts anyway) |
//! | `bad_step_at` | step | once, this step's `Sensor` frame carries the step number `u32::MAX` (a firmware bug) |
//! | `short_obs_at` | step | once, this step's `Sensor` frame carries one observation value fewer than the robot's (a firmware bug) |
//! | `short_applied_at` | step | once, this step's `Reward` frame carries one applied action value fewer than the robot's (a firmware bug) |
//! | `version` | u8 | the firmware speaks this protocol version: every frame's header and its `Hello` say it, and it reads none of the controller's frames of another (each answered as a version mismatch) |
//! | `schema` | u32 (`0x` hex ok) | the firmware's `Hello` carries this schema hash |
//! | `nan` | p per sensor frame | one observation value is sent as NaN |
//! | `lose_cmd` | p per command | a command received during an episode is lost (never reaches the firmware's logic); in lockstep the firmware then waits for the next one |
//! | `lose_estop` | count | the first this many `Estop` frames received are lost (never reach the firmware's logic: a stop damaged on the line) |
//!
//! Example: `seed=3,after=4,flip=0.001,dup=0.01,stall_after=40:500`.

use firmware_config::protocol::{
    CRC_LEN, MAX_FRAME, MAX_RAW_FRAME, cobs_decode, cobs_encode, crc32,
};
use sim::rng::Rng;
use std::str::FromStr;
use std::time::Duration;

/// Which faults to inject and how often. `Default` injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultSpec {
    pub seed: Option<u64>,
    pub after_frames: u64,
    pub drop_byte: f32,
    pub flip_bit: f32,
    pub truncate: f32,
    pub garbage: f32,
    pub duplicate: f32,
    pub reorder: f32,
    /// Probability per frame, and how many frames later the copy goes out.
    pub echo: Option<(f32, u64)>,
    pub stall: Option<(f32, Duration)>,
    pub stall_after: Option<(u64, Duration)>,
    pub reboot_at_step: Option<u32>,
    /// With `reboot_silent_at`: the reboot's `Hello` is lost on the line.
    pub reboot_hello_lost: bool,
    pub estop_at: Option<PressAt>,
    pub watchdog_at_step: Option<u32>,
    /// The episode start (counted from 1) whose reset motion reports an overcurrent.
    pub overcurrent_at_reset: Option<u32>,
    pub bad_step_at: Option<u32>,
    pub short_obs_at: Option<u32>,
    pub short_applied_at: Option<u32>,
    pub version: Option<u8>,
    pub schema_hash: Option<u32>,
    pub nan_sensor: f32,
    /// Probability that a command received during an episode is lost.
    pub lose_command: f32,
    /// How many of the first `Estop` frames received are lost.
    pub lose_estops: u32,
}

/// When the robot's stop button is pressed (`estop_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PressAt {
    /// As the firmware starts, before any controller connects.
    Boot,
    /// As the controller's first `Hello` arrives, before the firmware answers it.
    Hello,
    /// When an episode reaches this step.
    Step(u32),
    /// At the first command after an episode ended.
    End,
}

/// A spec string that did not parse.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("fault spec item '{item}': {reason}")]
pub struct FaultSpecError {
    pub item: String,
    pub reason: String,
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = FaultSpec::default();
        let mut given = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let err = |reason: &str| FaultSpecError {
                item: item.to_string(),
                reason: reason.to_string(),
            };
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| err("expected key=value"))?;
            // A second value would silently replace the first (and `reboot_at` after
            // `reboot_silent_at` kept the silence): one of each, one reboot.
            let slot = if key == "reboot_silent_at" {
                "reboot_at"
            } else {
                key
            };
            if given.contains(&slot) {
                return Err(err(if slot == "reboot_at" {
                    "one reboot per spec: reboot_at and reboot_silent_at exclude each other"
                } else {
                    "given twice: a spec holds each key once"
                }));
            }
            given.push(slot);
            let prob = |v: &str| -> Result<f32, FaultSpecError> {
                let p: f32 = v.parse().map_err(|_| err("expected a probability"))?;
                if (0.0..=1.0).contains(&p) {
                    Ok(p)
                } else {
                    Err(err("probability must be in [0, 1]"))
                }
            };
            let int = |v: &str| -> Result<u64, FaultSpecError> {
                match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .map_err(|_| err("expected an integer"))
            };
            // Reboots and presses are checked after each step, from step 1 on.
            let step_after_reset = |v: u64| -> Result<u32, FaultSpecError> {
                match u32::try_from(v) {
                    Ok(0) => Err(err("step 0 is the reset, not a step: use 1 or later")),
                    Ok(s) => Ok(s),
                    Err(_) => Err(err("step too large")),
                }
            };
            let pair = |v: &'_ str| -> Result<(String, Duration), FaultSpecError> {
                let (a, ms) = v
                    .split_once(':')
                    .ok_or_else(|| err("expected VALUE:MILLISECONDS"))?;
                Ok((a.to_string(), Duration::from_millis(int(ms)?)))
            };
            match key {
                "seed" => spec.seed = Some(int(value)?),
                "after" => spec.after_frames = int(value)?,
                "drop" => spec.drop_byte = prob(value)?,
                "flip" => spec.flip_bit = prob(value)?,
                "truncate" => spec.truncate = prob(value)?,
                "garbage" => spec.garbage = prob(value)?,
                "dup" => spec.duplicate = prob(value)?,
                "reorder" => spec.reorder = prob(value)?,
                "nan" => spec.nan_sensor = prob(value)?,
                "lose_cmd" => spec.lose_command = prob(value)?,
                "lose_estop" => {
                    spec.lose_estops =
                        u32::try_from(int(value)?).map_err(|_| err("count too large"))?
                }
                "stall" => {
                    let (p, d) = pair(value)?;
                    spec.stall = Some((prob(&p)?, d));
                }
                "echo" => {
                    let (p, n) = value
                        .split_once(':')
                        .ok_or_else(|| err("expected PROBABILITY:FRAMES"))?;
                    let n = int(n)?;
                    if n == 0 {
                        return Err(err("a late copy goes out at least 1 frame later"));
                    }
                    spec.echo = Some((prob(p)?, n));
                }
                "stall_after" => {
                    let (n, d) = pair(value)?;
                    // Frames are counted from 1: a stall after frame 0 would never come.
                    let n = int(&n)?;
                    if n == 0 {
                        return Err(err("frames are counted from 1"));
                    }
                    spec.stall_after = Some((n, d));
                }
                "reboot_at" => {
                    spec.reboot_at_step = Some(step_after_reset(int(value)?)?);
                }
                "reboot_silent_at" => {
                    spec.reboot_at_step = Some(step_after_reset(int(value)?)?);
                    spec.reboot_hello_lost = true;
                }
                "estop_at" => {
                    spec.estop_at = Some(match value {
                        "boot" => PressAt::Boot,
                        "hello" => PressAt::Hello,
                        "end" => PressAt::End,
                        // Checked after each step: step 0 (the reset) is not one.
                        _ => PressAt::Step(step_after_reset(int(value)?)?),
                    })
                }
                "watchdog_at" => {
                    spec.watchdog_at_step =
                        Some(u32::try_from(int(value)?).map_err(|_| err("step too large"))?)
                }
                "overcurrent_at_reset" => {
                    spec.overcurrent_at_reset = match u32::try_from(int(value)?) {
                        Ok(0) => return Err(err("resets are counted from 1")),
                        Ok(n) => Some(n),
                        Err(_) => return Err(err("count too large")),
                    }
                }
                "bad_step_at" => {
                    spec.bad_step_at =
                        Some(u32::try_from(int(value)?).map_err(|_| err("step too large"))?)
                }
                "short_obs_at" => {
                    spec.short_obs_at =
                        Some(u32::try_from(int(value)?).map_err(|_| err("step too large"))?)
                }
                "short_applied_at" => {
                    spec.short_applied_at =
                        Some(u32::try_from(int(value)?).map_err(|_| err("step too large"))?)
                }
                "version" => {
                    spec.version =
                        Some(u8::try_from(int(value)?).map_err(|_| err("version is a u8"))?)
                }
                "schema" => {
                    spec.schema_hash =
                        Some(u32::try_from(int(value)?).map_err(|_| err("schema hash is a u32"))?)
                }
                _ => {
                    return Err(err(
                        "unknown key; expected one of seed, after, drop, flip, truncate, garbage, \
                         dup, reorder, echo, stall, stall_after, reboot_at, reboot_silent_at, estop_at, watchdog_at, overcurrent_at_reset, bad_step_at, short_obs_at, short_applied_at, version, schema, \
                         nan, lose_cmd, lose_estop",
                    ));
                }
            }
        }
        Ok(spec)
    }
}

impl FaultSpec {
    /// True if the spec injects nothing.
    pub fn is_clean(&self) -> bool {
        FaultSpec {
            seed: None,
            ..self.clone()
        } == FaultSpec::default()
    }
}

/// What the injector tells the writer to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    Bytes(Vec<u8>),
    /// Send nothing for this long (the firmware's output is stuck).
    Stall(Duration),
}

/// How many faults of each kind were injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub frames: u64,
    pub dropped_bytes: u64,
    pub flipped_bits: u64,
    pub truncated: u64,
    pub garbage: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub echoed: u64,
    pub stalls: u64,
    pub reboots: u64,
    pub estop_presses: u64,
    pub watchdog_trips: u64,
    pub overcurrents: u64,
    pub bad_steps: u64,
    pub short_observations: u64,
    pub short_applied: u64,
    pub version_rewrites: u64,
    pub nan_sensors: u64,
    pub lost_commands: u64,
    pub lost_estops: u64,
}

/// Applies a [`FaultSpec`], reproducibly.
#[derive(Clone, Debug)]
pub struct FaultInjector {
    spec: FaultSpec,
    rng: Rng,
    /// Draws for the incoming direction, apart from `rng`: which outgoing frames get
    /// damaged then does not depend on how the controller's commands interleave.
    incoming: Rng,
    held: Option<Vec<u8>>,
    /// Late copies waiting to go out: frames still to pass, and the bytes.
    echoes: Vec<(u64, Vec<u8>)>,
    stats: FaultStats,
}

impl FaultInjector {
    /// An injector for `spec`; `default_seed` is used when the spec names none.
    pub fn new(spec: FaultSpec, default_seed: u64) -> Self {
        let seed = spec.seed.unwrap_or(default_seed);
        let rng = Rng::new(seed ^ 0x6661_756c_7473); // "faults"
        let incoming = Rng::new(seed ^ 0x696e_636f_6d69_6e67); // "incoming"
        FaultInjector {
            spec,
            rng,
            incoming,
            held: None,
            echoes: Vec::new(),
            stats: FaultStats::default(),
        }
    }

    /// An injector that injects nothing.
    pub fn none() -> Self {
        Self::new(FaultSpec::default(), 0)
    }

    pub fn spec(&self) -> &FaultSpec {
        &self.spec
    }

    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// Passes one encoded frame (delimiter included) through the link faults and
    /// appends what to do to `out`.
    pub fn process_frame(&mut self, wire: &[u8], out: &mut Vec<Emit>) {
        self.stats.frames += 1;
        let index = self.stats.frames;
        let mut bytes = wire.to_vec();
        if let Some(v) = self.spec.version
            && let Some(rewritten) = with_version(wire, v)
        {
            bytes = rewritten;
            self.stats.version_rewrites += 1;
        }
        if let Some((n, d)) = self.spec.stall_after
            && index == n
        {
            self.stats.stalls += 1;
            out.push(Emit::Stall(d));
        }
        if index <= self.spec.after_frames {
            out.push(Emit::Bytes(bytes));
            return;
        }
        let s = self.spec.clone();
        if let Some((p, d)) = s.stall
            && self.rng.chance(p)
        {
            self.stats.stalls += 1;
            out.push(Emit::Stall(d));
        }
        if self.rng.chance(s.truncate) && bytes.len() > 1 {
            // At least one byte stays: a truncated frame, not a cleanly dropped one.
            let keep = 1 + self.rng.below(bytes.len() as u32 - 1) as usize;
            bytes.truncate(keep);
            self.stats.truncated += 1;
        }
        if s.flip_bit > 0.0 {
            for b in bytes.iter_mut() {
                if self.rng.chance(s.flip_bit) {
                    *b ^= 1 << self.rng.below(8);
                    self.stats.flipped_bits += 1;
                }
            }
        }
        if s.drop_byte > 0.0 {
            let before = bytes.len();
            bytes.retain(|_| !self.rng.chance(s.drop_byte));
            self.stats.dropped_bytes += (before - bytes.len()) as u64;
        }
        if self.rng.chance(s.garbage) {
            let n = 1 + self.rng.below(32) as usize;
            let mut g: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
            g.extend_from_slice(&bytes);
            bytes = g;
            self.stats.garbage += 1;
        }
        let copies = if self.rng.chance(s.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let mut frame = Vec::with_capacity(bytes.len() * copies);
        for _ in 0..copies {
            frame.extend_from_slice(&bytes);
        }
        // Copies of earlier frames whose turn has come go out after this one.
        let mut due = Vec::new();
        self.echoes.retain_mut(|(left, copy)| {
            // (A distance of 0, which only a spec built in code can hold, is 1.)
            *left = left.saturating_sub(1);
            if *left == 0 {
                due.push(std::mem::take(copy));
            }
            *left > 0
        });
        if let Some((p, n)) = s.echo
            && self.rng.chance(p)
        {
            self.stats.echoed += 1;
            self.echoes.push((n, bytes));
        }
        if let Some(held) = self.held.take() {
            // Counted here, when the held frame really goes out after a later one.
            self.stats.reordered += 1;
            out.push(Emit::Bytes(frame));
            out.push(Emit::Bytes(held));
        } else if self.rng.chance(s.reorder) {
            self.held = Some(frame);
        } else {
            out.push(Emit::Bytes(frame));
        }
        out.extend(due.into_iter().map(Emit::Bytes));
    }

    /// Releases a frame held back for reordering and the late copies still waiting
    /// (e.g. before the firmware exits).
    pub fn flush(&mut self, out: &mut Vec<Emit>) {
        if let Some(held) = self.held.take() {
            out.push(Emit::Bytes(held));
        }
        out.extend(self.echoes.drain(..).map(|(_, copy)| Emit::Bytes(copy)));
    }

    /// Maybe replaces one observation value by NaN; true if it did.
    pub fn corrupt_sensor(&mut self, obs: &mut [f32]) -> bool {
        if obs.is_empty() || !self.rng.chance(self.spec.nan_sensor) {
            return false;
        }
        let i = self.rng.below(obs.len() as u32) as usize;
        obs[i] = f32::NAN;
        self.stats.nan_sensors += 1;
        true
    }

    /// Whether this command, received during an episode, is lost on its way in.
    pub fn lose_command(&mut self) -> bool {
        let lost = self.incoming.chance(self.spec.lose_command);
        self.stats.lost_commands += u64::from(lost);
        lost
    }

    /// Whether the `Estop` received now is lost on the way (`lose_estop`: the first
    /// that many are).
    pub fn lose_estop(&mut self) -> bool {
        let lost = self.spec.lose_estops > 0;
        self.spec.lose_estops = self.spec.lose_estops.saturating_sub(1);
        self.stats.lost_estops += u64::from(lost);
        lost
    }

    /// Whether the reboot's `Hello` is lost on the line (`reboot_silent_at`).
    pub fn reboot_hello_lost(&self) -> bool {
        self.spec.reboot_hello_lost
    }

    /// True once, when an episode reaches the configured reboot step.
    pub fn reboot_now(&mut self, step: u32) -> bool {
        once(
            self.spec.reboot_at_step == Some(step),
            &mut self.stats.reboots,
        )
    }

    /// True once, when an episode reaches the configured stop-button step.
    pub fn estop_now(&mut self, step: u32) -> bool {
        self.press_at(PressAt::Step(step))
    }

    /// True once, for `estop_at=boot` (asked as the firmware runs).
    pub fn estop_at_boot(&mut self) -> bool {
        self.press_at(PressAt::Boot)
    }

    /// True once, for `estop_at=hello`, when a `Hello` arrives.
    pub fn estop_at_hello(&mut self) -> bool {
        self.press_at(PressAt::Hello)
    }

    /// True once, for `estop_at=end`, when a command arrives after an episode ended.
    pub fn estop_after_end(&mut self) -> bool {
        self.press_at(PressAt::End)
    }

    fn press_at(&mut self, moment: PressAt) -> bool {
        once(
            self.spec.estop_at == Some(moment),
            &mut self.stats.estop_presses,
        )
    }

    /// True once, for the first command at the configured watchdog step: that command is
    /// lost and the firmware's watchdog trips.
    pub fn watchdog_now(&mut self, step: u32) -> bool {
        once(
            self.spec.watchdog_at_step == Some(step),
            &mut self.stats.watchdog_trips,
        )
    }

    /// True once, at the configured episode start (`started`: the episodes started so
    /// far, this one included): its reset motion reports an overcurrent.
    pub fn overcurrent_now(&mut self, started: u64) -> bool {
        once(
            self.spec.overcurrent_at_reset.map(u64::from) == Some(started),
            &mut self.stats.overcurrents,
        )
    }

    /// The step number to put in step `step`'s `Sensor` frame (`u32::MAX` once, at the
    /// configured `bad_step_at`).
    pub fn sensor_step(&mut self, step: u32) -> u32 {
        if once(
            self.spec.bad_step_at == Some(step),
            &mut self.stats.bad_steps,
        ) {
            u32::MAX
        } else {
            step
        }
    }

    /// How many observation values step `step`'s `Sensor` frame carries: one fewer
    /// than `dim` once, at the configured `short_obs_at`.
    pub fn sensor_len(&mut self, step: u32, dim: usize) -> usize {
        let due = self.spec.short_obs_at == Some(step);
        dim - usize::from(once(due, &mut self.stats.short_observations) && dim > 0)
    }

    /// How many applied action values step `step`'s `Reward` frame carries: one fewer
    /// than `dim` once, at the configured `short_applied_at`.
    pub fn applied_len(&mut self, step: u32, dim: usize) -> usize {
        let due = self.spec.short_applied_at == Some(step);
        dim - usize::from(once(due, &mut self.stats.short_applied) && dim > 0)
    }

    /// The protocol version the firmware speaks (`version=N`): its frames' and its
    /// `Hello`'s.
    pub fn protocol_version(&self, ours: u8) -> u8 {
        self.spec.version.unwrap_or(ours)
    }

    /// The schema hash the firmware should announce.
    pub fn schema_hash(&self, ours: u32) -> u32 {
        self.spec.schema_hash.unwrap_or(ours)
    }
}

/// A fault configured for one moment that happens once: true the first time `due`
/// is, counted in `count` (which is also what makes it once).
fn once(due: bool, count: &mut u64) -> bool {
    let now = *count == 0 && due;
    *count += u64::from(now);
    now
}

/// Re-encodes a wire frame with another version byte and a matching CRC; `None` if it
/// does not decode as COBS (then it is left alone).
fn with_version(wire: &[u8], version: u8) -> Option<Vec<u8>> {
    let block = wire.strip_suffix(&[0])?;
    let mut raw = [0u8; MAX_RAW_FRAME];
    let n = cobs_decode(block, &mut raw).ok()?;
    if n < 1 + CRC_LEN {
        return None;
    }
    raw[0] = version;
    let crc = crc32(&raw[..n - CRC_LEN]);
    raw[n - CRC_LEN..n].copy_from_slice(&crc.to_le_bytes());
    let mut out = vec![0u8; MAX_FRAME];
    let m = cobs_encode(&raw[..n], &mut out).ok()?;
    out.truncate(m);
    out.push(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::protocol::{
        Frame, FrameDecoder, FrameEncoder, FrameError, Message, SeqEvent, SeqTracker,
    };

    /// `n` sensor frames with sequence numbers 0..n.
    fn frames(n: usize) -> Vec<Vec<u8>> {
        let mut e = FrameEncoder::new();
        (0..n)
            .map(|i| {
                let obs: Vec<f32> = (0..10).map(|k| (i * 10 + k) as f32 * 0.01).collect();
                e.to_wire(
                    i as u32 * 50_000,
                    Message::sensor(0, i as u32, &obs).unwrap(),
                )
                .to_vec()
            })
            .collect()
    }

    /// A late copy at distance 0 (a spec built in code; the parser refuses it) goes out
    /// after the next frame: its countdown underflowed (a panic in a debug build; in a
    /// release build the copy waited for `flush`).
    #[test]
    fn an_echo_at_distance_zero_goes_out_after_the_next_frame() {
        let spec = FaultSpec {
            echo: Some((1.0, 0)),
            ..Default::default()
        };
        let mut inj = FaultInjector::new(spec, 0);
        let input = frames(2);
        let mut out = Vec::new();
        inj.process_frame(&input[0], &mut out);
        inj.process_frame(&input[1], &mut out);
        let sent: Vec<u8> = out
            .iter()
            .flat_map(|e| match e {
                Emit::Bytes(b) => b.clone(),
                Emit::Stall(_) => vec![],
            })
            .collect();
        // Frame 0, frame 1, then frame 0's copy.
        assert!(sent.ends_with(&input[0]), "{} bytes", sent.len());
        assert_eq!(sent.len(), 2 * input[0].len() + input[1].len());
    }

    fn run(spec: &str, input: &[Vec<u8>]) -> (Vec<Emit>, FaultStats) {
        let mut inj = FaultInjector::new(spec.parse().unwrap(), 1);
        let mut out = Vec::new();
        for f in input {
            inj.process_frame(f, &mut out);
        }
        inj.flush(&mut out);
        (out, inj.stats())
    }

    fn bytes(out: &[Emit]) -> Vec<u8> {
        out.iter()
            .flat_map(|e| match e {
                Emit::Bytes(b) => b.clone(),
                Emit::Stall(_) => Vec::new(),
            })
            .collect()
    }

    /// Decodes a stream into (good frames, errors).
    fn decode(stream: &[u8]) -> (Vec<Frame>, Vec<FrameError>) {
        let mut d = FrameDecoder::new();
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        d.feed(stream, |r| match r {
            Ok(f) => ok.push(f),
            Err(e) => bad.push(e),
        });
        (ok, bad)
    }

    #[test]
    fn spec_parsing() {
        let s: FaultSpec =
            "seed=0x10, after=4,drop=0.5,flip=0.01,truncate=0.1,garbage=0.2,dup=0.3,\
                            reorder=0.4,echo=0.25:3,stall=0.05:200,stall_after=40:500,reboot_at=30,estop_at=7,watchdog_at=8,\
                            bad_step_at=9,version=2,\
                            schema=0xdeadbeef,nan=1,lose_cmd=0.125,lose_estop=2"
                .parse()
                .unwrap();
        assert_eq!(s.seed, Some(16));
        // Each probability in its own field (the tests that use them give equal ones,
        // so a parser that swapped two passed them).
        assert_eq!(
            (
                s.drop_byte,
                s.flip_bit,
                s.truncate,
                s.garbage,
                s.duplicate,
                s.reorder
            ),
            (0.5, 0.01, 0.1, 0.2, 0.3, 0.4)
        );
        assert_eq!(
            (s.estop_at, s.watchdog_at_step, s.bad_step_at),
            (Some(PressAt::Step(7)), Some(8), Some(9))
        );
        assert_eq!(
            (s.version, s.schema_hash, s.nan_sensor, s.lose_command),
            (Some(2), Some(0xdead_beef), 1.0, 0.125)
        );
        assert_eq!(s.lose_estops, 2);
        assert_eq!(s.after_frames, 4);
        assert_eq!(s.stall, Some((0.05, Duration::from_millis(200))));
        assert_eq!(s.echo, Some((0.25, 3)));
        assert_eq!(s.stall_after, Some((40, Duration::from_millis(500))));
        assert_eq!(s.reboot_at_step, Some(30));
        assert!(!s.reboot_hello_lost);
        let silent: FaultSpec = "reboot_silent_at=12".parse().unwrap();
        // A repeated key would silently replace the first value (a silent reboot at 5
        // then a plain one at 9 made one silent reboot at 9): refused by name.
        for (spec, why) in [
            ("reboot_silent_at=5,reboot_at=9", "one reboot per spec"),
            ("reboot_at=5,reboot_silent_at=9", "one reboot per spec"),
            ("drop=0.1,flip=0.1,drop=0.2", "given twice"),
            ("estop_at=boot,estop_at=7", "given twice"),
        ] {
            let e = spec.parse::<FaultSpec>().unwrap_err();
            assert!(e.to_string().contains(why), "{spec}: {e}");
        }
        assert_eq!(
            (silent.reboot_at_step, silent.reboot_hello_lost),
            (Some(12), true)
        );
        assert_eq!(s.estop_at, Some(PressAt::Step(7)));
        let at = |v: &str| {
            format!("estop_at={v}")
                .parse::<FaultSpec>()
                .unwrap()
                .estop_at
        };
        assert_eq!(at("boot"), Some(PressAt::Boot));
        assert_eq!(at("hello"), Some(PressAt::Hello));
        assert_eq!(at("end"), Some(PressAt::End));
        assert!("estop_at=later".parse::<FaultSpec>().is_err());
        assert_eq!(s.watchdog_at_step, Some(8));
        let overcurrent: FaultSpec = "overcurrent_at_reset=2".parse().unwrap();
        assert_eq!(overcurrent.overcurrent_at_reset, Some(2));
        assert_eq!(s.bad_step_at, Some(9));
        assert_eq!(s.version, Some(2));
        assert_eq!(s.schema_hash, Some(0xdead_beef));
        assert_eq!(s.nan_sensor, 1.0);
        assert_eq!(s.lose_command, 0.125);
        assert!(!s.is_clean());
        assert!("".parse::<FaultSpec>().unwrap().is_clean());
        assert!("seed=5".parse::<FaultSpec>().unwrap().is_clean());
        for bad in [
            "drop",
            "drop=2",
            "bogus=1",
            "stall=0.1",
            "echo=0.1",
            "echo=0.1:0",
            "echo=2:1",
            "reboot_at=0",
            "overcurrent_at_reset=0",
            // Frames are counted from 1: it never stalled.
            "stall_after=0:500",
            "estop_at=0",
            "version=300",
            "after=x",
        ] {
            let e = bad.parse::<FaultSpec>().unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("fault spec item '{bad}'")),
                "{e}"
            );
        }
    }

    #[test]
    fn clean_spec_passes_frames_through() {
        let input = frames(20);
        let (out, stats) = run("", &input);
        assert_eq!(bytes(&out), input.concat());
        assert_eq!(stats.frames, 20);
    }

    #[test]
    fn same_seed_same_damage() {
        let input = frames(200);
        let spec = "seed=9,drop=0.01,flip=0.01,truncate=0.05,garbage=0.05,dup=0.05,reorder=0.05";
        let (a, sa) = run(spec, &input);
        let (b, sb) = run(spec, &input);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        let (c, _) = run(&spec.replace("seed=9", "seed=10"), &input);
        assert_ne!(a, c);
    }

    #[test]
    fn dropped_and_flipped_bytes_are_detected_never_accepted_wrong() {
        let input = frames(300);
        let (out, stats) = run("flip=0.002,drop=0.002", &input);
        assert!(
            stats.flipped_bits > 0 && stats.dropped_bytes > 0,
            "{stats:?}"
        );
        let (ok, bad) = decode(&bytes(&out));
        assert!(!bad.is_empty());
        assert!(ok.len() < 300 && ok.len() > 100, "{}", ok.len());
        // Every accepted frame is one that was sent, unchanged.
        for f in &ok {
            assert_eq!(f.to_wire().as_slice(), input[f.seq as usize].as_slice());
        }
    }

    #[test]
    fn truncation_costs_the_next_frame_too() {
        let input = frames(50);
        let (out, stats) = run("truncate=0.2", &input);
        assert!(stats.truncated > 0);
        let (ok, bad) = decode(&bytes(&out));
        for f in &ok {
            assert_eq!(f.to_wire().as_slice(), input[f.seq as usize].as_slice());
        }
        // A cut frame loses its delimiter and merges with its successor, so at least
        // as many frames are lost as were cut, and each loss shows up as an error
        // (unless the cut left nothing at all of the frame).
        assert!(50 - ok.len() as u64 >= stats.truncated);
        assert!(!bad.is_empty());
    }

    /// A truncated frame keeps at least one byte (a cut at 0 dropped it cleanly, which
    /// damages no next frame: about 7% of short frames such as a Heartbeat's).
    #[test]
    fn a_truncated_frame_is_never_dropped_whole() {
        let mut e = FrameEncoder::new();
        let input: Vec<Vec<u8>> = (0..400)
            .map(|i| e.to_wire(i, Message::Heartbeat).to_vec())
            .collect();
        let (out, stats) = run("truncate=1", &input);
        assert_eq!(stats.truncated, 400);
        let cut: Vec<usize> = out
            .iter()
            .filter_map(|e| match e {
                Emit::Bytes(b) => Some(b.len()),
                Emit::Stall(_) => None,
            })
            .collect();
        assert_eq!(cut.len(), 400);
        for (len, frame) in cut.iter().zip(&input) {
            assert!((1..frame.len()).contains(len), "{len} of {}", frame.len());
        }
    }

    #[test]
    fn garbage_between_frames_forces_a_resync() {
        let input = frames(100);
        let (out, stats) = run("garbage=0.3", &input);
        assert!(stats.garbage > 10);
        let (ok, _) = decode(&bytes(&out));
        for f in &ok {
            assert_eq!(f.to_wire().as_slice(), input[f.seq as usize].as_slice());
        }
        // Garbage glues onto the next frame unless it happens to end in a zero; it
        // loses no more than that one frame (the decoder resyncs at the next zero).
        assert!(ok.len() < 100);
        assert!(
            100 - ok.len() as u64 <= stats.garbage,
            "{} frames lost to {} garbage runs",
            100 - ok.len(),
            stats.garbage
        );
    }

    #[test]
    fn duplicates_and_reordering_show_in_sequence_numbers() {
        let input = frames(200);
        let (out, stats) = run("dup=0.1,reorder=0.1", &input);
        assert!(stats.duplicated > 0 && stats.reordered > 0);
        let (ok, bad) = decode(&bytes(&out));
        assert!(bad.is_empty());
        assert_eq!(ok.len() as u64, 200 + stats.duplicated);
        let mut t = SeqTracker::new();
        let mut stale = 0;
        for f in &ok {
            if t.observe(f.seq) == SeqEvent::Stale {
                stale += 1;
            }
        }
        // Each duplicate and each late (reordered) frame is stale.
        assert_eq!(stale, stats.duplicated + stats.reordered);
        let mut seqs: Vec<u16> = ok.iter().map(|f| f.seq).collect();
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs, (0..200).collect::<Vec<u16>>());
    }

    #[test]
    fn late_copies_go_out_after_the_next_n_frames() {
        let input = frames(200);
        let (out, stats) = run("echo=0.1:3", &input);
        assert!(stats.echoed > 0);
        let (ok, bad) = decode(&bytes(&out));
        assert!(bad.is_empty());
        assert_eq!(ok.len() as u64, 200 + stats.echoed);
        // Each copy follows the frame 3 after its original (or ends the stream).
        let mut copies = 0;
        for (i, f) in ok.iter().enumerate() {
            let first = ok.iter().position(|g| g.seq == f.seq).unwrap();
            if first == i {
                continue;
            }
            copies += 1;
            let last_before = ok[..i].iter().map(|g| g.seq).max().unwrap();
            assert!(
                last_before == f.seq + 3 || (last_before == 199 && f.seq + 3 > 199),
                "copy of {} after {last_before}",
                f.seq
            );
        }
        assert_eq!(copies, stats.echoed);
    }

    #[test]
    fn stalls_are_emitted_before_their_frame() {
        let input = frames(10);
        let (out, stats) = run("stall_after=3:500", &input);
        assert_eq!(stats.stalls, 1);
        assert_eq!(out[2], Emit::Stall(Duration::from_millis(500)));
        assert_eq!(out[3], Emit::Bytes(input[2].clone()));
        let (out, stats) = run("stall=1:20", &input);
        assert_eq!(stats.stalls, 10);
        assert_eq!(out.len(), 20);
    }

    #[test]
    fn after_keeps_the_first_frames_clean() {
        let input = frames(10);
        let (out, _) = run("after=4,drop=1", &input);
        assert_eq!(bytes(&out), input[..4].concat());
    }

    #[test]
    fn wrong_version_has_a_valid_crc() {
        let input = frames(5);
        let (out, stats) = run("version=7", &input);
        assert_eq!(stats.version_rewrites, 5);
        let (ok, bad) = decode(&bytes(&out));
        assert!(ok.is_empty());
        assert_eq!(bad, vec![FrameError::Version { received: 7 }; 5]);
    }

    #[test]
    fn firmware_hooks() {
        let mut inj = FaultInjector::new(
            "nan=1,reboot_at=5,estop_at=6,watchdog_at=7,bad_step_at=8,schema=0x1234"
                .parse()
                .unwrap(),
            3,
        );
        let mut obs = [0.5f32; 6];
        assert!(inj.corrupt_sensor(&mut obs));
        assert_eq!(obs.iter().filter(|x| x.is_nan()).count(), 1);
        assert!(!inj.reboot_now(4));
        assert!(inj.reboot_now(5));
        assert!(!inj.reboot_now(5), "a reboot happens once");
        assert!(!inj.estop_now(5));
        assert!(inj.estop_now(6));
        assert!(!inj.estop_now(6), "the button is pressed once");
        assert!(
            !inj.estop_at_boot() && !inj.estop_at_hello() && !inj.estop_after_end(),
            "at step 6 only"
        );
        assert!(inj.watchdog_now(7));
        assert!(!inj.watchdog_now(7), "the watchdog trips once");
        assert_eq!(inj.sensor_step(7), 7);
        assert_eq!(inj.sensor_step(8), u32::MAX);
        assert_eq!(inj.sensor_step(8), 8, "once");
        assert_eq!(inj.schema_hash(99), 0x1234);
        let mut clean = FaultInjector::none();
        let mut obs = [0.5f32; 6];
        assert!(!clean.corrupt_sensor(&mut obs));
        assert_eq!(clean.schema_hash(99), 99);
    }
}
