//! The safety envelope and the one gate every outgoing `Command` passes through.
//!
//! Two layers, on purpose:
//!
//! 1. **Shaping** ([`Envelope::shape`]): what the control loop does to a policy action
//!    before it asks to send it — refuse non-finite values (that is a fault, not
//!    something to clamp quietly), clamp to `[safety.action_min, safety.action_max]`,
//!    then limit the change from the last sent action to `safety.max_delta_per_tick`.
//!    Clamping and rate limiting here are normal operation and are counted as such.
//! 2. **The gate** ([`CommandGate::send_command`]): the only function that builds a
//!    `Message::Command`. It checks the final values again — finite, inside the
//!    bounds, within the per-tick delta of the last command the firmware received —
//!    and if anything is outside it sends the nearest safe action instead and counts a
//!    *prevented violation*. With a correct loop that counter stays 0; it exists so
//!    that a bug upstream (a new code path that forgets to shape, a hold ramp with a
//!    wrong reference) can never put a command outside the envelope on the wire.
//!
//! Everything here is in **policy units** (the envelope's units); the gate converts to
//! robot units with `ActionConfig::to_robot_units` only after the check.
//!
//! The reference for the delta limit is the action the firmware currently applies:
//! the last command sent, or the firmware's own hold action (zero in policy units)
//! after a `Reset` or an `Estop`, which is what the firmware falls back to.

use firmware_config::RobotConfig;
use firmware_config::config::ActionConfig;
use firmware_config::protocol::{FrameEncoder, MAX_ACT, Message};
use std::io::{self, Write};

/// Slack for float round-off in the gate's re-check (policy units).
const TOLERANCE: f32 = firmware_config::config::ACTION_ROUND_OFF;

/// The controller's envelope, from the robot file's `[safety]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    pub max_delta: Vec<f32>,
    /// The hold action: zero (what the firmware holds with), clamped into the bounds.
    pub hold: Vec<f32>,
}

/// What shaping did to one action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaped {
    /// Some component was outside `[min, max]`.
    pub clamped: bool,
    /// Some component changed by more than `max_delta` and was limited.
    pub rate_limited: bool,
}

/// A policy action the loop must not use.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("action[{index}] is {value} (not finite)")]
pub struct NonFinite {
    pub index: usize,
    pub value: f32,
}

impl Envelope {
    pub fn from_robot(robot: &RobotConfig) -> Envelope {
        let s = &robot.safety;
        let hold = s
            .action_min
            .iter()
            .zip(&s.action_max)
            .map(|(&lo, &hi)| 0.0f32.clamp(lo, hi))
            .collect();
        Envelope {
            min: s.action_min.clone(),
            max: s.action_max.clone(),
            max_delta: s.max_delta_per_tick.clone(),
            hold,
        }
    }

    pub fn dim(&self) -> usize {
        self.min.len()
    }

    /// Shapes `action` in place: refuses non-finite values, clamps to the bounds, then
    /// limits the change from `last` (the action in force) to `max_delta`.
    pub fn shape(&self, action: &mut [f32], last: &[f32]) -> Result<Shaped, NonFinite> {
        if let Some(index) = action.iter().position(|x| !x.is_finite()) {
            return Err(NonFinite {
                index,
                value: action[index],
            });
        }
        let mut out = Shaped::default();
        for i in 0..action.len() {
            let c = action[i].clamp(self.min[i], self.max[i]);
            out.clamped |= c != action[i];
            let lo = last[i] - self.max_delta[i];
            let hi = last[i] + self.max_delta[i];
            let r = c.clamp(lo, hi).clamp(self.min[i], self.max[i]);
            out.rate_limited |= r != c;
            action[i] = r;
        }
        Ok(out)
    }

    /// One step of the safe stop: from `last` toward the hold action, as far as the
    /// delta limit allows.
    pub fn hold_step(&self, last: &[f32], out: &mut [f32]) {
        for i in 0..out.len() {
            let d = self.max_delta[i];
            out[i] = self.hold[i]
                .clamp(last[i] - d, last[i] + d)
                .clamp(self.min[i], self.max[i]);
        }
    }

    /// True if `last` is the hold action (the safe stop has arrived).
    pub fn at_hold(&self, last: &[f32]) -> bool {
        last.iter().zip(&self.hold).all(|(a, h)| a == h)
    }

    /// The gate's check: the first component outside the envelope, if any.
    pub fn violation(&self, action: &[f32], last: &[f32]) -> Option<usize> {
        (0..action.len()).find(|&i| {
            let a = action[i];
            !a.is_finite()
                || a < self.min[i] - TOLERANCE
                || a > self.max[i] + TOLERANCE
                || (a - last[i]).abs() > self.max_delta[i] + TOLERANCE
        })
    }

    /// The nearest action inside the envelope (non-finite components go to the hold
    /// side of the delta window).
    pub fn project(&self, action: &[f32], last: &[f32], out: &mut [f32]) {
        for i in 0..out.len() {
            let a = if action[i].is_finite() {
                action[i]
            } else {
                self.hold[i]
            };
            let d = self.max_delta[i];
            out[i] = a
                .clamp(self.min[i], self.max[i])
                .clamp(last[i] - d, last[i] + d)
                .clamp(self.min[i], self.max[i]);
        }
    }
}

/// Counters of the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GateStats {
    pub commands: u64,
    /// Commands that failed the final check and were replaced by the nearest safe
    /// action. Stays 0 unless something upstream is broken.
    pub violations_prevented: u64,
    /// Commands a safe stop sent ([`CommandGate::send_hold`]: its ramp toward the hold
    /// and the hold). A policy's or teleop device's action equal to the hold is not
    /// one (a device resting at zero read as time spent stopping).
    pub hold_commands: u64,
    pub estops: u64,
    pub write_errors: u64,
}

/// The writer of a lost link ([`CommandGate::drop_writer`]): every write fails.
struct LinkDown;

impl Write for LinkDown {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the serial link is lost (its port closed, waiting to reopen it)",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The write side of the link. Every outgoing frame goes through here, and the only
/// way to send a `Command` is [`CommandGate::send_command`].
pub struct CommandGate {
    envelope: Envelope,
    action_config: ActionConfig,
    /// The action the firmware applies now (policy units).
    last: [f32; MAX_ACT],
    dim: usize,
    encoder: FrameEncoder,
    writer: Box<dyn Write + Send>,
    /// Whether `writer` is a port's (false once [`Self::drop_writer`] closed it).
    writer_open: bool,
    /// The next write starts with a frame delimiter: after a failed write (which may
    /// have left part of a frame on the line) and on a new port, so that the next frame
    /// does not merge with what came before it into one bad block.
    resync: bool,
    clock: std::time::Instant,
    pub stats: GateStats,
}

impl CommandGate {
    pub fn new(robot: &RobotConfig, writer: Box<dyn Write + Send>) -> CommandGate {
        let envelope = Envelope::from_robot(robot);
        let mut gate = CommandGate {
            dim: envelope.dim(),
            envelope,
            action_config: robot.action.clone(),
            last: [0.0; MAX_ACT],
            encoder: FrameEncoder::new(),
            writer,
            writer_open: true,
            resync: false,
            clock: std::time::Instant::now(),
            stats: GateStats::default(),
        };
        gate.firmware_holds();
        gate
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The action the firmware applies now, in policy units.
    pub fn last(&self) -> &[f32] {
        &self.last[..self.dim]
    }

    /// Closes the writer of a lost link: its device is gone (writes to it fail anyway),
    /// and a USB serial device re-enumerates under its old name only once every
    /// descriptor of the old one is closed. Writes fail until [`Self::set_writer`].
    pub fn drop_writer(&mut self) {
        self.writer = Box::new(LinkDown);
        self.writer_open = false;
    }

    /// Whether writes go to a port: false between [`Self::drop_writer`] and
    /// [`Self::set_writer`].
    pub fn writer_open(&self) -> bool {
        self.writer_open
    }

    /// Replaces the writer (after the link was reopened); the reference goes back to
    /// the firmware's hold, since a reconnected firmware has no command from us.
    pub fn set_writer(&mut self, writer: Box<dyn Write + Send>) {
        self.writer = writer;
        self.writer_open = true;
        self.resync = true;
        self.firmware_holds();
    }

    /// The firmware falls back to its own hold (zero in policy units) after `Reset`,
    /// `Estop` or a reboot: that is the reference for the next command's delta.
    pub fn firmware_holds(&mut self) {
        self.last = [0.0; MAX_ACT];
    }

    /// Checks `action` (policy units) against the envelope, replaces it by the nearest
    /// safe action if it is outside (counting the prevented violation), converts it to
    /// robot units and writes the `Command`. Returns the action actually sent.
    pub fn send_command(&mut self, action: &[f32]) -> io::Result<[f32; MAX_ACT]> {
        let d = self.dim;
        let mut sent = [0.0f32; MAX_ACT];
        // Counted as a prevented violation beyond the rounding tolerance; projected
        // always, so that what goes out is inside the envelope exactly (a value within
        // the tolerance outside it used to go out as it was).
        if self
            .envelope
            .violation(&action[..d], &self.last[..d])
            .is_some()
        {
            self.stats.violations_prevented += 1;
        }
        self.envelope
            .project(&action[..d], &self.last[..d], &mut sent[..d]);
        let mut robot_units = [0.0f32; MAX_ACT];
        self.action_config
            .to_robot_units(&sent[..d], &mut robot_units[..d]);
        let msg = Message::command(&robot_units[..d])
            .ok_or_else(|| io::Error::other("action larger than MAX_ACT"))?;
        self.stats.commands += 1;
        // The firmware applies it from now on, whether or not the write succeeds
        // completely, so the reference moves before the write.
        self.last = sent;
        self.write(msg)?;
        Ok(sent)
    }

    /// One safe-stop step toward the hold action, through [`CommandGate::send_command`].
    pub fn send_hold(&mut self) -> io::Result<[f32; MAX_ACT]> {
        let mut step = [0.0f32; MAX_ACT];
        let d = self.dim;
        self.envelope.hold_step(&self.last[..d], &mut step[..d]);
        self.stats.hold_commands += 1;
        self.send_command(&step[..d])
    }

    /// Sends any message except a `Command` (those only go through
    /// [`CommandGate::send_command`]).
    pub fn send_control(&mut self, msg: Message) -> io::Result<()> {
        if let Message::Command { .. } = msg {
            return Err(io::Error::other(
                "commands go through CommandGate::send_command",
            ));
        }
        let estop = matches!(msg, Message::Estop);
        let to_hold = matches!(msg, Message::Reset { .. } | Message::Estop);
        self.write(msg)?;
        // Only once written does the firmware fall back to its hold: a `Reset` or an
        // `Estop` that failed to leave (a cut frame is discarded by the firmware's
        // decoder, the next write starting with a delimiter) leaves it applying the last
        // command, and the next hold must step from that, not from zero. A frame cut
        // just before its own delimiter is completed by that next one, late: the rarer
        // case, which the firmware's own slew limit bounds. (A `Command` moves the
        // reference before its write: old and new are within one delta of each other,
        // where the hold and the last command may be far apart.)
        if to_hold {
            self.firmware_holds();
        }
        // Counted once written: an Estop that never left is not one the firmware got.
        self.stats.estops += estop as u64;
        Ok(())
    }

    fn write(&mut self, msg: Message) -> io::Result<()> {
        let now = self.clock.elapsed().as_micros() as u32;
        let wire = self.encoder.to_wire(now, msg);
        // No flush: on a serial port it is tcdrain, which would wait for the bytes to
        // leave the UART; the kernel's buffer takes them at once. An empty block (a lone
        // delimiter) is skipped by every decoder.
        let r = if self.resync {
            self.writer
                .write_all(&[0])
                .and_then(|()| self.writer.write_all(&wire))
        } else {
            self.writer.write_all(&wire)
        };
        self.resync = r.is_err();
        if r.is_err() {
            self.stats.write_errors += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::protocol::{Frame, FrameDecoder};
    use std::sync::{Arc, Mutex};

    fn robot() -> RobotConfig {
        let mut r = RobotConfig::example("push").unwrap();
        r.safety.action_min = vec![-0.5, -1.0];
        r.safety.action_max = vec![0.5, 0.8];
        r.safety.max_delta_per_tick = vec![0.2, 0.3];
        r.action.scale = vec![2.0, 1.0];
        r.action.offset = vec![1.0, 0.0];
        r
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer whose next write fails after taking `cut` bytes of it (a port that
    /// went away in the middle of a frame), once.
    #[derive(Clone, Default)]
    struct Cutting(Sink, Arc<Mutex<Option<usize>>>);
    impl Write for Cutting {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            match self.1.lock().unwrap().take() {
                Some(cut) => {
                    self.0.write(&b[..cut.min(b.len())])?;
                    Err(io::Error::other("cut"))
                }
                None => self.0.write(b),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// After a write that failed part-way, the next frame still decodes: it starts with
    /// a delimiter, instead of merging with the cut one into one bad block.
    #[test]
    fn a_frame_after_a_cut_write_is_not_lost() {
        let out = Cutting::default();
        let mut g = CommandGate::new(&robot(), Box::new(out.clone()));
        *out.1.lock().unwrap() = Some(5);
        assert!(g.send_command(&[0.1, 0.1]).is_err());
        g.send_command(&[0.2, 0.2]).unwrap();
        let mut d = FrameDecoder::new();
        let mut good = vec![];
        d.feed(&out.0.0.lock().unwrap(), |r| {
            if let Ok(f) = r {
                good.push(f.message)
            }
        });
        assert_eq!(good.len(), 1, "{good:?}");
        assert!(matches!(good[0], Message::Command { .. }));
        assert_eq!(g.stats.write_errors, 1);
    }

    fn frames(sink: &Sink) -> Vec<Frame> {
        let mut d = FrameDecoder::new();
        let mut out = vec![];
        d.feed(&sink.0.lock().unwrap(), |r| out.push(r.unwrap()));
        out
    }

    #[test]
    fn shaping_clamps_then_rate_limits() {
        let e = Envelope::from_robot(&robot());
        let mut a = [0.9, -2.0];
        let s = e.shape(&mut a, &[0.0, 0.0]).unwrap();
        assert!(s.clamped && s.rate_limited);
        assert_eq!(a, [0.2, -0.3]);
        let mut a = [0.1, 0.1];
        assert_eq!(e.shape(&mut a, &[0.0, 0.0]).unwrap(), Shaped::default());
        let mut a = [f32::NAN, 0.0];
        assert_eq!(e.shape(&mut a, &[0.0, 0.0]).unwrap_err().index, 0);
        let mut a = [0.0, f32::INFINITY];
        assert!(e.shape(&mut a, &[0.0, 0.0]).is_err());
    }

    #[test]
    fn hold_ramps_within_the_delta_limit() {
        let e = Envelope::from_robot(&robot());
        let mut out = [0.0; 2];
        e.hold_step(&[0.5, -1.0], &mut out);
        assert_eq!(out, [0.3, -0.7]);
        e.hold_step(&[0.1, 0.2], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        assert!(e.at_hold(&out));
    }

    #[test]
    fn gate_never_sends_outside_the_envelope_and_counts() {
        let sink = Sink::default();
        let mut g = CommandGate::new(&robot(), Box::new(sink.clone()));
        // Inside: sent as is, in robot units (offset + scale * a).
        g.send_command(&[0.1, 0.2]).unwrap();
        assert_eq!(g.stats.violations_prevented, 0);
        // Outside the bounds, beyond the delta, NaN: each replaced and counted.
        g.send_command(&[5.0, 0.2]).unwrap();
        g.send_command(&[f32::NAN, -5.0]).unwrap();
        assert_eq!(g.stats.violations_prevented, 2);
        assert_eq!(g.stats.commands, 3);
        // Hold commands are the safe stop's, ramp steps included; an action that is
        // the hold (a teleop device at rest) is not one.
        assert_eq!(g.stats.hold_commands, 0);
        g.send_command(&[0.0, 0.0]).unwrap();
        assert_eq!(g.stats.hold_commands, 0);
        g.send_command(&[0.2, 0.3]).unwrap();
        g.send_hold().unwrap();
        assert_eq!(g.stats.hold_commands, 1);
        let sent: Vec<Vec<f32>> = frames(&sink)
            .into_iter()
            .map(|f| match f.message {
                Message::Command { action } => action.to_vec(),
                m => panic!("{m:?}"),
            })
            .collect();
        let cfg = robot().action;
        let e = Envelope::from_robot(&robot());
        let mut last = vec![0.0f32, 0.0];
        for robot_units in &sent {
            let mut p = [0.0f32; 2];
            cfg.to_policy_units(robot_units, &mut p);
            assert!(e.violation(&p, &last).is_none(), "{p:?} after {last:?}");
            last = p.to_vec();
        }
        // A raw Command cannot bypass the gate: refused, and nothing written or counted.
        let commands = g.stats.commands;
        assert!(
            g.send_control(Message::command(&[9.0, 9.0]).unwrap())
                .is_err()
        );
        assert_eq!(frames(&sink).len(), sent.len());
        assert_eq!(g.stats.commands, commands);
    }

    /// A value outside the envelope by less than the rounding tolerance is not counted
    /// as a prevented violation, but what goes out is inside the envelope exactly.
    #[test]
    fn values_within_the_tolerance_outside_go_out_projected() {
        let e = Envelope::from_robot(&robot());
        let edge = e.max[0].min(e.max_delta[0]);
        let mut g = CommandGate::new(&robot(), Box::new(Sink::default()));
        let sent = g.send_command(&[edge + 5e-6, 0.0]).unwrap();
        assert_eq!(sent[0], edge);
        assert_eq!(g.stats.violations_prevented, 0);
    }

    #[test]
    fn reset_and_estop_move_the_reference_to_the_firmware_hold() {
        let mut g = CommandGate::new(&robot(), Box::new(Sink::default()));
        g.send_command(&[0.2, 0.3]).unwrap();
        g.send_command(&[0.4, 0.6]).unwrap();
        g.send_control(Message::Reset { seed: 1 }).unwrap();
        assert_eq!(g.last(), &[0.0, 0.0]);
        // From hold, 0.4 is beyond the delta: shaped callers never ask, the gate fixes it.
        let sent = g.send_command(&[0.4, 0.0]).unwrap();
        assert_eq!(&sent[..2], &[0.2, 0.0]);
        assert_eq!(g.stats.violations_prevented, 1);
        g.send_control(Message::Estop).unwrap();
        assert_eq!((g.last(), g.stats.estops), (&[0.0, 0.0][..], 1));
    }

    /// A `Reset` that was not written leaves the firmware applying the last command: the
    /// safe stop's first hold steps from there, within the delta limit. The reference
    /// went to zero before the write, so the first hold sent zero (a jump of 0.4 and
    /// 0.6 in one tick, twice the limit) and the gate did not see it.
    #[test]
    fn a_reset_that_was_not_written_keeps_the_reference() {
        let out = Cutting::default();
        let mut g = CommandGate::new(&robot(), Box::new(out.clone()));
        g.send_command(&[0.2, 0.3]).unwrap();
        g.send_command(&[0.4, 0.6]).unwrap();
        *out.1.lock().unwrap() = Some(0);
        assert!(g.send_control(Message::Reset { seed: 1 }).is_err());
        assert_eq!(g.last(), &[0.4, 0.6]);
        let hold = g.send_hold().unwrap();
        assert_eq!(&hold[..2], &[0.2, 0.3]);
        assert_eq!(g.stats.violations_prevented, 0);
        *out.1.lock().unwrap() = Some(3);
        assert!(g.send_control(Message::Estop).is_err());
        assert_eq!((g.last(), g.stats.estops), (&[0.2, 0.3][..], 0));
    }
}
