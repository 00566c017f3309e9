//! Teleoperation (`controller run --teleop ADDR`): a person's device drives the robot
//! through the controller, to record demonstrations or to take over from the policy.
//!
//! ```text
//!  teleop device ── UDP: TeleopAction ──► teleop thread: decode, check dims and
//!  (leader arm,                           values, lock onto the first device,
//!   space mouse,                          count the rest
//!   gamepad,                                  │ bounded channel (full: drop, count)
//!   script)                                   ▼
//!        ▲                              control thread, each tick: the newest action,
//!        │                              if engaged and younger than the timeout,
//!        │                              replaces the policy's (or the hold action)
//!        │                              → envelope → gate → Command; the transition
//!        │                              records it, marked `teleop`
//!        └──── UDP: TeleopObservation ─── (non-blocking send, once per acted frame)
//! ```
//!
//! The datagrams are [`firmware_config::teleop`]'s. What the device sends goes through
//! the same safety envelope as the policy's actions (clamp, per-tick change limit, the
//! gate's final check), so a device cannot command more than a policy could. A device
//! that falls silent for longer than the timeout, or releases its deadman (a datagram
//! without `ENGAGED`), hands control back within one tick. Datagrams that fail to
//! decode, carry another number of values than the robot's action dimension, or carry
//! a non-finite value are refused and counted; the first one is printed with its reason.
//!
//! Only the address that sent the first valid action datagram is listened to for the
//! rest of the run (other senders are counted as `foreign`): the socket's address is
//! the only access control, so bind it to loopback or to a private link to the device.

use super::operator::OperatorCommand;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use firmware_config::protocol::{MAX_ACT, MAX_OBS};
use firmware_config::teleop::{self as wire, Datagram, TeleopAction, TeleopObservation};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Action datagrams the control thread has not taken yet. It drains the channel every
/// tick and keeps the newest, so this only has to absorb a device faster than the
/// control rate between two ticks (1 kHz against 10 Hz is 100).
const QUEUE: usize = 256;
/// How often the teleop thread looks at its stop flag while no datagram arrives.
const POLL: Duration = Duration::from_millis(50);

/// `--teleop`: where to listen and how long an action stays in force.
#[derive(Clone, Debug)]
pub struct TeleopConfig {
    /// Bound by the caller, so that a port in use fails before the robot is touched
    /// and `ADDR:0` can be used (tests).
    pub socket: Arc<UdpSocket>,
    /// The newest engaged action moves the robot while it is younger than this (wall
    /// time, not scaled by `--time-scale`: the person does not speed up).
    pub timeout: Duration,
}

/// What the teleop link did in a run (`report.json`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TeleopSummary {
    /// The address the controller listened on.
    pub listen: String,
    /// The device's address (the first valid sender).
    pub device: Option<String>,
    /// Valid action datagrams from the device.
    pub datagrams: u64,
    /// Datagrams refused: malformed, wrong number of values, non-finite values.
    pub invalid: u64,
    /// Why the last refused datagram was refused.
    pub last_invalid: Option<String>,
    /// Datagrams from other addresses than the device's (ignored).
    pub foreign: u64,
    /// Gaps in the device's sequence numbers (datagrams lost or reordered).
    pub seq_gaps: u64,
    /// Datagrams dropped because the control thread had not taken the earlier ones.
    pub queue_drops: u64,
    /// Commands sent with the device's values.
    pub commands: u64,
    /// Times the device took control (from the policy or the hold action).
    pub takeovers: u64,
    /// Episodes the device ended with a label.
    pub labels: u64,
    pub observations_sent: u64,
    pub send_errors: u64,
}

/// An action datagram as the control thread gets it.
#[derive(Clone, Copy, Debug)]
struct Received {
    action: TeleopAction,
    at: Instant,
    from: SocketAddr,
}

/// Counters the teleop thread shares with [`TeleopThread::finish`].
#[derive(Default)]
struct Shared {
    datagrams: AtomicU64,
    invalid: AtomicU64,
    foreign: AtomicU64,
    seq_gaps: AtomicU64,
    queue_drops: AtomicU64,
    last_invalid: Mutex<Option<String>>,
    device: Mutex<Option<SocketAddr>>,
}

/// The receiving thread; `run` keeps it and stops it at the end.
pub(crate) struct TeleopThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    listen: String,
}

/// The control thread's end: the newest action, labels, observations back.
pub(crate) struct TeleopPort {
    rx: Receiver<Received>,
    socket: Arc<UdpSocket>,
    timeout: Duration,
    newest: Option<Received>,
    /// Flags of the previous datagram (labels act where their flag turns on).
    last_flags: u8,
    /// The last command sent was the device's.
    in_control: bool,
    commands: u64,
    takeovers: u64,
    labels: u64,
    observations_sent: u64,
    send_errors: u64,
    buf: [u8; wire::MAX_DATAGRAM],
}

/// Starts the teleop thread for a robot taking `act_dim` action values.
pub(crate) fn spawn(
    cfg: &TeleopConfig,
    act_dim: usize,
) -> std::io::Result<(TeleopThread, TeleopPort)> {
    let socket = cfg.socket.clone();
    // Non-blocking, so that the control thread's sends never wait; the teleop thread
    // waits for datagrams with poll(2) instead (see `wait_readable`).
    socket.set_nonblocking(true)?;
    let listen = socket
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    let handle = {
        let (socket, stop, shared) = (socket.clone(), stop.clone(), shared.clone());
        std::thread::Builder::new()
            .name("teleop".into())
            .spawn(move || receive(&socket, act_dim, &tx, &stop, &shared))?
    };
    let port = TeleopPort {
        rx,
        socket,
        timeout: cfg.timeout,
        newest: None,
        last_flags: 0,
        in_control: false,
        commands: 0,
        takeovers: 0,
        labels: 0,
        observations_sent: 0,
        send_errors: 0,
        buf: [0; wire::MAX_DATAGRAM],
    };
    let thread = TeleopThread {
        stop,
        handle: Some(handle),
        shared,
        listen,
    };
    Ok((thread, port))
}

/// Why an action datagram from the device is not used, if it is not.
fn refuse(bytes: &[u8], act_dim: usize) -> Result<TeleopAction, String> {
    let a = match wire::decode(bytes) {
        Ok(Datagram::Action(a)) => a,
        Ok(Datagram::Observation(_)) => {
            return Err("an observation datagram (devices send actions)".into());
        }
        Err(e) => return Err(e.to_string()),
    };
    if a.n as usize != act_dim {
        return Err(format!("{} action values, the robot takes {act_dim}", a.n));
    }
    if let Some(i) = a.values().iter().position(|v| !v.is_finite()) {
        return Err(format!("action[{i}] is {}", a.values()[i]));
    }
    Ok(a)
}

fn receive(
    socket: &UdpSocket,
    act_dim: usize,
    tx: &Sender<Received>,
    stop: &AtomicBool,
    shared: &Shared,
) {
    // A datagram longer than the largest valid one is cut to this and then refused.
    let mut buf = [0u8; wire::MAX_DATAGRAM + 1];
    let mut device: Option<SocketAddr> = None;
    let mut last_seq: Option<u32> = None;
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(socket, POLL) {
            continue;
        }
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            // Nothing after all, or a transient error such as an ICMP port-unreachable
            // report (Linux hands those to the next receive).
            Err(_) => continue,
        };
        if device.is_some_and(|d| d != from) {
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let action = match refuse(&buf[..len], act_dim) {
            Ok(a) => a,
            Err(why) => {
                if shared.invalid.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("teleop: refused a datagram from {from}: {why}");
                }
                *shared.last_invalid.lock().unwrap() = Some(why);
                continue;
            }
        };
        if device.is_none() {
            eprintln!("teleop: device at {from}");
            device = Some(from);
            *shared.device.lock().unwrap() = Some(from);
        }
        if last_seq.is_some_and(|s| action.seq != s.wrapping_add(1)) {
            shared.seq_gaps.fetch_add(1, Ordering::Relaxed);
        }
        last_seq = Some(action.seq);
        shared.datagrams.fetch_add(1, Ordering::Relaxed);
        let r = Received {
            action,
            at: Instant::now(),
            from,
        };
        match tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
}

/// Waits up to `timeout` for `socket` to have a datagram (the stop flag is looked at in
/// between).
fn wait_readable(socket: &UdpSocket, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
    r > 0
}

impl TeleopThread {
    /// Stops the thread and folds its counters with the control thread's.
    pub(crate) fn finish(mut self, port: Option<&TeleopPort>) -> TeleopSummary {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut summary = TeleopSummary {
            listen: self.listen.clone(),
            device: s.device.lock().unwrap().map(|d| d.to_string()),
            datagrams: get(&s.datagrams),
            invalid: get(&s.invalid),
            last_invalid: s.last_invalid.lock().unwrap().clone(),
            foreign: get(&s.foreign),
            seq_gaps: get(&s.seq_gaps),
            queue_drops: get(&s.queue_drops),
            ..TeleopSummary::default()
        };
        if let Some(p) = port {
            summary.commands = p.commands;
            summary.takeovers = p.takeovers;
            summary.labels = p.labels;
            summary.observations_sent = p.observations_sent;
            summary.send_errors = p.send_errors;
        }
        summary
    }
}

impl TeleopPort {
    /// Takes the datagrams that arrived since the last tick; returns a label the device
    /// asked for (a flag that turned on), if any.
    pub(crate) fn poll(&mut self) -> Option<OperatorCommand> {
        let mut label = None;
        while let Ok(r) = self.rx.try_recv() {
            let on = r.action.flags & !self.last_flags;
            if on & wire::LABEL_SUCCESS != 0 {
                label = Some(OperatorCommand::Success);
            } else if on & wire::LABEL_FAILURE != 0 {
                label = Some(OperatorCommand::Failure);
            }
            self.last_flags = r.action.flags;
            self.newest = Some(r);
        }
        self.labels += label.is_some() as u64;
        label
    }

    /// The device's action, if it is engaged and younger than the timeout at `now`.
    pub(crate) fn action(&self, now: Instant) -> Option<[f32; MAX_ACT]> {
        let r = self.newest.as_ref()?;
        let fresh = now.saturating_duration_since(r.at) <= self.timeout;
        (r.action.engaged() && fresh).then_some(r.action.values)
    }

    /// Counts one command: the device's (`teleop`) or the policy's / the hold action.
    pub(crate) fn commanded(&mut self, teleop: bool) {
        self.takeovers += (teleop && !self.in_control) as u64;
        self.commands += teleop as u64;
        self.in_control = teleop;
    }

    /// Sends the observation just acted on to the device (once it is known). Never
    /// blocks: a full socket buffer or an unreachable device is counted, nothing more.
    pub(crate) fn send_observation(&mut self, episode: u32, step: u32, obs: &[f32]) {
        let Some(to) = self.newest.map(|r| r.from) else {
            return;
        };
        let n = obs.len().min(MAX_OBS);
        let mut values = [0.0; MAX_OBS];
        values[..n].copy_from_slice(&obs[..n]);
        let o = TeleopObservation {
            episode,
            step,
            flags: if self.in_control { wire::IN_CONTROL } else { 0 },
            n: n as u8,
            values,
        };
        let len = wire::encode_observation(&o, &mut self.buf);
        match self.socket.send_to(&self.buf[..len], to) {
            Ok(_) => self.observations_sent += 1,
            Err(_) => self.send_errors += 1,
        }
    }
}

/// One line for the run report.
impl std::fmt::Display for TeleopSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  teleop: listening on {}, device {}; {} datagrams ({} refused{}, {} from other senders, {} sequence gaps, {} queue drops); {} commands from the device in {} takeovers, {} labels, {} observations sent ({} send errors)",
            self.listen,
            self.device.as_deref().unwrap_or("none"),
            self.datagrams,
            self.invalid,
            self.last_invalid
                .as_ref()
                .map_or(String::new(), |w| format!(", last: {w}")),
            self.foreign,
            self.seq_gaps,
            self.queue_drops,
            self.commands,
            self.takeovers,
            self.labels,
            self.observations_sent,
            self.send_errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::teleop::{LABEL_FAILURE, LABEL_SUCCESS};

    struct Rig {
        thread: Option<TeleopThread>,
        port: TeleopPort,
        device: UdpSocket,
        addr: SocketAddr,
        seq: u32,
    }

    impl Rig {
        fn new(timeout: Duration) -> Rig {
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            let addr = socket.local_addr().unwrap();
            let (thread, port) = spawn(&TeleopConfig { socket, timeout }, 2).unwrap();
            let device = UdpSocket::bind("127.0.0.1:0").unwrap();
            Rig {
                thread: Some(thread),
                port,
                device,
                addr,
                seq: 0,
            }
        }

        fn send_raw(&self, from: &UdpSocket, bytes: &[u8]) {
            from.send_to(bytes, self.addr).unwrap();
        }

        /// Sends an action and polls until the control side has it; returns the poll's
        /// label.
        fn send(&mut self, flags: u8, values: &[f32]) -> Option<OperatorCommand> {
            self.seq += 1;
            let mut buf = [0u8; wire::MAX_DATAGRAM];
            let a = TeleopAction::new(self.seq, flags, values);
            let n = wire::encode_action(&a, &mut buf);
            self.send_raw(&self.device, &buf[..n]);
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut label = None;
            while self.port.newest.is_none_or(|r| r.action.seq != self.seq) {
                assert!(
                    Instant::now() < deadline,
                    "datagram {} never arrived",
                    self.seq
                );
                std::thread::sleep(Duration::from_millis(1));
                label = label.or(self.port.poll());
            }
            label
        }

        /// Waits until the thread has counted `n` refused datagrams.
        fn refused(&self, n: u64) -> Option<String> {
            let shared = &self.thread.as_ref().unwrap().shared;
            let deadline = Instant::now() + Duration::from_secs(5);
            while shared.invalid.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "never refused");
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.last_invalid.lock().unwrap().clone()
        }

        fn finish(mut self) -> TeleopSummary {
            self.thread.take().unwrap().finish(Some(&self.port))
        }
    }

    #[test]
    fn engaged_fresh_actions_move_the_robot_and_nothing_else_does() {
        let timeout = Duration::from_millis(300);
        let mut rig = Rig::new(timeout);
        assert_eq!(rig.port.action(Instant::now()), None, "nothing sent yet");
        rig.send(0, &[0.5, -0.5]);
        assert_eq!(rig.port.action(Instant::now()), None, "disengaged");
        rig.send(wire::ENGAGED, &[0.25, -0.75]);
        let at = rig.port.newest.unwrap().at;
        let a = rig
            .port
            .action(at + timeout)
            .expect("fresh until the timeout");
        assert_eq!(a[..2], [0.25, -0.75]);
        assert_eq!(
            rig.port.action(at + timeout + Duration::from_millis(1)),
            None
        );
        // The deadman released: control goes back at once.
        rig.send(0, &[0.25, -0.75]);
        assert_eq!(rig.port.action(Instant::now()), None);

        // Refused: another dimension, a NaN, an observation, noise. Not in force.
        let mut buf = [0u8; wire::MAX_DATAGRAM];
        let n = wire::encode_action(&TeleopAction::new(90, wire::ENGAGED, &[0.1; 3]), &mut buf);
        rig.send_raw(&rig.device, &buf[..n]);
        let why = rig.refused(1).unwrap();
        assert_eq!(why, "3 action values, the robot takes 2");
        let n = wire::encode_action(
            &TeleopAction::new(91, wire::ENGAGED, &[0.1, f32::NAN]),
            &mut buf,
        );
        rig.send_raw(&rig.device, &buf[..n]);
        assert_eq!(rig.refused(2).unwrap(), "action[1] is NaN");
        rig.send_raw(&rig.device, b"EXTP and then some noise");
        assert!(rig.refused(3).unwrap().contains("CRC"));
        // Another sender, even with a valid datagram, is ignored.
        let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
        let n = wire::encode_action(&TeleopAction::new(1, wire::ENGAGED, &[1.0, 1.0]), &mut buf);
        rig.send_raw(&intruder, &buf[..n]);
        rig.send(0, &[0.0, 0.0]);
        rig.port.poll();
        assert_eq!(rig.port.action(Instant::now()), None);

        rig.port.commanded(true);
        rig.port.commanded(true);
        rig.port.commanded(false);
        rig.port.commanded(true);
        let s = rig.finish();
        assert_eq!((s.invalid, s.commands, s.takeovers), (3, 3, 2), "{s:?}");
        // The intruder's datagram may still be in flight when the thread stops.
        assert!(s.foreign <= 1, "{s:?}");
        assert_eq!(s.datagrams, 4, "{s:?}");
        // Sequence numbers 1..=4 from the device: the refused 90 and 91 do not count.
        assert_eq!(s.seq_gaps, 0, "{s:?}");
    }

    /// A label acts where its flag turns on, once, however long the button is held.
    #[test]
    fn labels_act_on_the_flag_turning_on() {
        let mut rig = Rig::new(Duration::from_secs(1));
        let e = wire::ENGAGED;
        assert_eq!(rig.send(e, &[0.0, 0.0]), None);
        assert_eq!(
            rig.send(e | LABEL_SUCCESS, &[0.0, 0.0]),
            Some(OperatorCommand::Success)
        );
        assert_eq!(rig.send(e | LABEL_SUCCESS, &[0.0, 0.0]), None, "held");
        assert_eq!(rig.send(e, &[0.0, 0.0]), None);
        assert_eq!(
            rig.send(LABEL_FAILURE, &[0.0, 0.0]),
            Some(OperatorCommand::Failure)
        );
        assert_eq!(rig.finish().labels, 2);
    }
}
