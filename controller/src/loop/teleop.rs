//! Teleoperation (`controller run --teleop ADDR`): a person's device drives the robot
//! through the controller, to record demonstrations or to take over from the policy.
//!
//! ```text
//!  teleop device ── UDP: TeleopAction ──► teleop thread: decode, check dims and
//!  (leader arm,                           values, keep the sequence order, stamp
//!   space mouse,                          each datagram with its arrival (kernel
//!   gamepad,                              timestamp), follow one device at a time
//!   script)                                   │ newest datagram (one slot) + the
//!        ▲                                    ▼ labels asked for (sticky bits)
//!        │                              control thread, each frame it acts on: the
//!        │                              newest action, if engaged and younger than
//!        │                              the timeout, replaces the policy's (or the
//!        │                              hold action) → envelope → gate → Command;
//!        │                              the transition records it, marked `teleop`
//!        └──── UDP: TeleopObservation ─── (non-blocking send, once per acted frame)
//! ```
//!
//! The datagrams are [`firmware_config::teleop`]'s. What the device sends goes through
//! the same safety envelope as the policy's actions (clamp, per-tick change limit, the
//! gate's final check), so a device cannot command more than a policy could.
//!
//! # When the device's action is in force
//!
//! - Its newest datagram is engaged and younger than the timeout, counted from the
//!   datagram's arrival at this computer (the kernel's receive timestamp), so datagrams
//!   that waited in the socket's buffer are judged by their true age.
//! - A datagram older in the device's sequence than one already taken is dropped
//!   (counted `out_of_order`), so a late duplicate cannot undo a release. A jump back
//!   by more than [`RESTART_JUMP`], or by more than [`REORDER_WINDOW`] after the device
//!   was silent for longer than the timeout (datagrams it sent that were dropped so do
//!   not count: a device that restarted its count at once is followed after the
//!   timeout), is a restarted device and is taken. A
//!   datagram at most [`REORDER_WINDOW`] behind is dropped even after a silence: it may
//!   be a late copy of one sent before the device's release.
//! - After a safe stop (any fault), the device must release its deadman once (a
//!   disengaged datagram) before it moves the robot again.
//! - A datagram marked as the answer to the observation of a later step than the one
//!   being acted on answers an earlier episode (a closed-loop device repeating its last
//!   answer between episodes), and is not in force: an action computed for the previous
//!   episode's last state never drives the next episode's first steps.
//!
//! So when the device releases, its release takes effect at the next frame the
//! controller acts on; when it falls silent, its last action lapses once it is older
//! than the timeout.
//!
//! # Closed-loop devices (`--teleop-wait-ms`)
//!
//! By default the controller never waits for the device: it sends each observation
//! after acting on it, so a device that computes its action from the observation (a
//! scripted controller) acts one control period late. With a wait, the controller
//! sends the observation first and spins up to the wait for an action datagram that
//! answers it (flag `ANSWERS`, `ref` = the observation's step, arrived after the
//! observation left). It then acts on that answer; without one in time it acts as
//! without a wait (counted `answer_timeouts`). It waits only while the device's newest
//! datagram is younger than the timeout: a device that stopped costs no wait. The wait
//! is part of the tick, so it must stay well inside the control period (the CLI accepts
//! up to 80% of it).
//!
//! # What is refused
//!
//! Datagrams that fail to decode, carry another number of values than the robot's
//! action dimension, or a non-finite value, are refused and counted; the first one is
//! printed with its reason. One device is followed at a time: the first valid sender,
//! and another sender only once the current one has been silent for longer than the
//! timeout (a restarted device program, on a new port; printed). Datagrams from other
//! senders are counted as `foreign`. The socket's address is the only access control,
//! so bind it to loopback or to a private link to the device.

use super::console::ConsoleTx;
use super::realtime;
use firmware_config::protocol::{MAX_ACT, MAX_OBS};
use firmware_config::teleop::{self as wire, Datagram, TeleopAction, TeleopObservation};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How often the teleop thread looks at its stop flag while no datagram arrives.
const POLL: Duration = Duration::from_millis(50);
/// A sequence number this far behind the last one taken is a restarted device, not a
/// reordered datagram (UDP reorders by a few datagrams at most).
pub const RESTART_JUMP: u32 = 1024;
/// After a silence longer than the timeout, a sequence number this far behind (or less)
/// is still a late datagram, not a restart. A reordering network delays a datagram by a
/// few others; 32 leaves room for bursts. A device restarted after fewer datagrams than
/// this is followed once its count passes the old one.
pub const REORDER_WINDOW: u32 = 32;
/// Longest `--teleop-timeout-ms` the CLI accepts: the robot follows a device that fell
/// silent for at most this long.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(1);

/// `--teleop`: where to listen and how long an action stays in force.
#[derive(Clone, Debug)]
pub struct TeleopConfig {
    /// Bound by the caller, so that a port in use fails before the robot is touched
    /// and `ADDR:0` can be used (tests).
    pub socket: Arc<UdpSocket>,
    /// The newest engaged action moves the robot while it is younger than this (wall
    /// time, not scaled by `--time-scale`: the person does not speed up).
    pub timeout: Duration,
    /// `--teleop-wait-ms`: send each observation before acting on it and wait up to
    /// this long for the device's answer to it (zero: never wait; see the module doc).
    pub wait: Duration,
}

impl TeleopConfig {
    /// Binds `addr` and turns on the kernel's receive timestamps at once, so that the
    /// datagrams that arrive before the run starts are judged by their true age.
    pub fn bind(addr: &str, timeout: Duration) -> std::io::Result<TeleopConfig> {
        let socket = UdpSocket::bind(addr)?;
        enable_receive_timestamps(&socket)?;
        Ok(TeleopConfig {
            socket: Arc::new(socket),
            timeout,
            wait: Duration::ZERO,
        })
    }
}

/// What the teleop link did in a run (`report.json`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TeleopSummary {
    /// The address the controller listened on.
    pub listen: String,
    /// The device's address (the last one followed).
    pub device: Option<String>,
    /// Times another sender became the device after the previous one fell silent.
    pub device_changes: u64,
    /// Valid action datagrams from the device.
    pub datagrams: u64,
    /// Datagrams refused: malformed, wrong number of values, non-finite values.
    pub invalid: u64,
    /// Why the last refused datagram was refused.
    pub last_invalid: Option<String>,
    /// Datagrams from other addresses than the device's (ignored).
    pub foreign: u64,
    /// Datagrams older in the device's sequence than one already taken (dropped).
    pub out_of_order: u64,
    /// Gaps in the device's sequence numbers (datagrams lost on the way).
    pub seq_gaps: u64,
    /// Commands sent with the device's values.
    pub commands: u64,
    /// Times control passed to the device (from the policy or the hold action), and
    /// episodes it drove from their first step.
    pub takeovers: u64,
    /// Episodes the device ended with a label.
    pub labels: u64,
    /// Labels the device asked for while no episode was running (ignored).
    pub labels_ignored: u64,
    /// Safe stops after which the device had to release its deadman first.
    pub releases_required: u64,
    /// Times control left the device while it still held its deadman: its action
    /// lapsed (silent past the timeout).
    pub lapses: u64,
    /// With a wait: observations whose answer arrived in time, and those whose did not.
    pub answered: u64,
    pub answer_timeouts: u64,
    pub observations_sent: u64,
    pub send_errors: u64,
}

/// An action datagram as the control thread gets it.
#[derive(Clone, Copy, Debug)]
struct Received {
    action: TeleopAction,
    /// When it arrived at this computer.
    at: Instant,
    from: SocketAddr,
}

/// What the teleop thread shares with the control thread and [`TeleopThread::finish`].
#[derive(Default)]
struct Shared {
    /// The newest datagram taken (one slot: the control thread only wants the newest).
    latest: Mutex<Option<Received>>,
    /// Labels asked for since the control thread last looked (`wire::LABEL_*` bits).
    labels: AtomicU8,
    /// A disengaged datagram was taken since the control thread last asked for a
    /// release: kept, as labels are, since a press right after it replaces it in
    /// `latest` before the control thread looks (a deadman re-gripped within a period).
    released: AtomicBool,
    datagrams: AtomicU64,
    invalid: AtomicU64,
    foreign: AtomicU64,
    out_of_order: AtomicU64,
    seq_gaps: AtomicU64,
    device_changes: AtomicU64,
    last_invalid: Mutex<Option<String>>,
    device: Mutex<Option<SocketAddr>>,
}

/// The receiving thread; `run` keeps it and stops it at the end (or on drop).
pub(crate) struct TeleopThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    listen: String,
}

/// The control thread's end: the newest action, labels, observations back.
pub(crate) struct TeleopPort {
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    timeout: Duration,
    wait: Duration,
    newest: Option<Received>,
    /// A safe stop happened: the device's action is not used until it releases.
    release_required: bool,
    /// The last command sent was the device's.
    in_control: bool,
    /// No command was sent since an episode began ([`TeleopPort::episode_began`]).
    episode_untaken: bool,
    /// The control thread's counters (commands, takeovers, labels, answers,
    /// observations); the teleop thread's are added at the end.
    counts: TeleopSummary,
    buf: [u8; wire::MAX_DATAGRAM],
    /// Waits in a row that no answer ended ([`TeleopPort::waits`]).
    unanswered: u32,
    /// The observations sent to the device, by step, the newest [`OBSERVED`]: an answer
    /// is in force only for one of them (see [`TeleopPort::action`]).
    observed: [Option<Observed>; OBSERVED],
}

/// Waits in a row that a device whose newest datagram answers no observation may let
/// pass before the controller stops waiting for it: a closed-loop device answers the
/// first observation it gets (its datagrams before that answer nothing), a person's
/// device never does, and each wait costs up to `--teleop-wait-ms` of the tick.
const UNANSWERED_WAITS: u32 = 3;

/// One observation sent to the device.
#[derive(Clone, Copy, Debug)]
struct Observed {
    episode: u32,
    step: u32,
    at: Instant,
}

/// Observations remembered for answers: 256 steps, longer than the default timeout
/// (200 ms) at rates up to 1 kHz; an answer to one further back is refused as if it
/// had timed out.
const OBSERVED: usize = 256;

/// Starts the teleop thread for a robot taking `act_dim` action values. Its lines go
/// through the run's console thread: the run's end joins it before the recording is
/// finished, and a write to a stderr nobody reads (a paused terminal) held it there.
pub(crate) fn spawn(
    cfg: &TeleopConfig,
    act_dim: usize,
    console: ConsoleTx,
) -> std::io::Result<(TeleopThread, TeleopPort)> {
    let socket = cfg.socket.clone();
    // Non-blocking, so that the control thread's sends never wait; the teleop thread
    // waits for datagrams with poll(2) instead (see `wait_readable`).
    socket.set_nonblocking(true)?;
    enable_receive_timestamps(&socket)?;
    let listen = socket
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    let handle = {
        let (socket, stop, shared) = (socket.clone(), stop.clone(), shared.clone());
        let timeout = cfg.timeout;
        realtime::spawn_in_run("teleop", move || {
            receive(&socket, act_dim, timeout, &stop, &shared, &console)
        })?
    };
    let port = TeleopPort {
        shared: shared.clone(),
        socket,
        timeout: cfg.timeout,
        wait: cfg.wait,
        newest: None,
        release_required: false,
        in_control: false,
        episode_untaken: false,
        counts: TeleopSummary::default(),
        buf: [0; wire::MAX_DATAGRAM],
        observed: [None; OBSERVED],
        unanswered: 0,
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

/// A refused action datagram that releases the deadman, as a release: its values
/// (wrong in number, or not finite) are never used, so they are zeros here, and its
/// labels are not taken (nor an answer's step: a release answers nothing).
fn release_despite_values(bytes: &[u8], act_dim: usize) -> Option<TeleopAction> {
    match wire::decode(bytes) {
        Ok(Datagram::Action(a)) if !a.engaged() => Some(TeleopAction {
            n: act_dim as u8,
            values: [0.0; MAX_ACT],
            flags: 0,
            answers: 0,
            ..a
        }),
        _ => None,
    }
}

/// Where `seq` stands against the last sequence number taken.
#[derive(Debug, PartialEq)]
enum Order {
    Next,
    /// Ahead by more than one: datagrams lost (or still on the way).
    Gap,
    /// Not newer: a reordered or duplicated datagram.
    Old,
    /// Far behind: the device restarted its count.
    Restart,
}

fn order(last: Option<u32>, seq: u32) -> Order {
    let Some(last) = last else {
        return Order::Next;
    };
    match seq.wrapping_sub(last) {
        1 => Order::Next,
        d if d != 0 && d < u32::MAX / 2 => Order::Gap,
        d if d.wrapping_neg() > RESTART_JUMP => Order::Restart,
        _ => Order::Old,
    }
}

fn receive(
    socket: &UdpSocket,
    act_dim: usize,
    timeout: Duration,
    stop: &AtomicBool,
    shared: &Shared,
    console: &ConsoleTx,
) {
    let note = |line: String| console.line(line);
    // A datagram longer than the largest valid one is cut to this and then refused.
    let mut buf = [0u8; wire::MAX_DATAGRAM + 1];
    let mut device: Option<(SocketAddr, Instant)> = None;
    let mut last_seq: Option<u32> = None;
    let mut last_flags = 0u8;
    // A device that took over from a silent one has not released its deadman yet.
    let mut unreleased = false;
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(socket, POLL) {
            continue;
        }
        let (len, from, at) = match recv_stamped(socket, &mut buf) {
            Ok(r) => r,
            // Nothing after all, or a transient error such as an ICMP port-unreachable
            // report (Linux hands those to the next receive).
            Err(_) => continue,
        };
        if let Some((d, heard)) = device
            && d != from
            && at.saturating_duration_since(heard) <= timeout
        {
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut action = match refuse(&buf[..len], act_dim) {
            Ok(a) => a,
            Err(why) => {
                // The reason first, then the count (Release): whoever sees the count
                // sees the reason with it.
                let first = shared
                    .last_invalid
                    .lock()
                    .unwrap()
                    .replace(why.clone())
                    .is_none();
                shared.invalid.fetch_add(1, Ordering::Release);
                // A released deadman is a release whatever values come with it (an
                // encoder reading NaN as the operator lets go): it was dropped, and the
                // last engaged action drove the arm until the timeout. Its values are
                // never used (zeros, in case).
                let release = release_despite_values(&buf[..len], act_dim);
                if first {
                    let taken = if release.is_some() {
                        " (taken as the deadman's release, its values unused)"
                    } else {
                        ""
                    };
                    note(format!(
                        "teleop: refused a datagram from {from}: {why}{taken}"
                    ));
                }
                match release {
                    Some(release) => release,
                    None => continue,
                }
            }
        };
        // A device silent for longer than the timeout starts a new count if it likes: a
        // restarted device on the same address, whose count is behind by less than
        // RESTART_JUMP, must not be dropped until its numbers pass the old ones. Only a
        // count behind by more than REORDER_WINDOW is taken for one: a late copy of a
        // datagram sent just before the silence (an engaged one, before a release) must
        // still be dropped.
        let silent_here = device
            .is_some_and(|(d, heard)| d == from && at.saturating_duration_since(heard) > timeout);
        let far_behind =
            last_seq.is_some_and(|last| last.wrapping_sub(action.seq) > REORDER_WINDOW);
        if silent_here && far_behind && order(last_seq, action.seq) == Order::Old {
            note(format!(
                "teleop: the device restarted its count after a silence (datagram {}); it \
                 drives once it has released its deadman",
                action.seq
            ));
            last_seq = None;
            last_flags = 0;
            // A restarted device program, as one on a new port: a release first.
            unreleased = true;
        }
        if device.is_none_or(|(d, _)| d != from) {
            if let Some((d, _)) = device {
                note(format!(
                    "teleop: device now at {from} ({d} fell silent); it drives once it has \
                     released its deadman"
                ));
                shared.device_changes.fetch_add(1, Ordering::Relaxed);
                // Another sender (a restarted device program, or anything else on the
                // network that sends while the device is silent) does not move the arm
                // with its first datagram: it drove mid-episode at once.
                unreleased = true;
            } else {
                note(format!("teleop: device at {from}"));
            }
            *shared.device.lock().unwrap() = Some(from);
            last_seq = None;
            last_flags = 0;
        }
        match order(last_seq, action.seq) {
            Order::Old => {
                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                // Not counted as heard: a device that restarted its count without a
                // silence (a quick reboot) sends nothing but dropped datagrams, and is
                // followed once they have lasted the timeout, not once its count passes
                // the old one (up to 1,024 datagrams).
                continue;
            }
            Order::Gap => {
                shared.seq_gaps.fetch_add(1, Ordering::Relaxed);
            }
            Order::Next | Order::Restart => {}
        }
        device = Some((from, at));
        last_seq = Some(action.seq);
        shared.datagrams.fetch_add(1, Ordering::Relaxed);
        // Labels act where their flag turns on; the control thread may see only the
        // newest datagram, so the edges are found here and kept until it looks.
        let on = action.flags & !last_flags & (wire::LABEL_SUCCESS | wire::LABEL_FAILURE);
        last_flags = action.flags;
        // (Not from a device that has not released its deadman since it took over.)
        if on != 0 && !(unreleased && action.engaged()) {
            shared.labels.fetch_or(on, Ordering::Relaxed);
        }
        if !action.engaged() {
            unreleased = false;
        } else if unreleased {
            // Taken as not engaged (and no release) until the new device's first release.
            action.flags &= !wire::ENGAGED;
        }
        *shared.latest.lock().unwrap() = Some(Received { action, at, from });
        // After the datagram is in the slot: a control thread that sees the flag then
        // finds this release, or a newer datagram, there (never the press before it).
        if !action.engaged() && !unreleased {
            shared.released.store(true, Ordering::Release);
        }
    }
}

/// Asks the kernel to stamp each datagram with its arrival time (`SO_TIMESTAMPNS`).
/// Linux turns the stamping on a moment after the first socket asks for it (a deferred
/// static key); a datagram that arrives in that moment is stamped when it is read.
fn enable_receive_timestamps(socket: &UdpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram: its length, sender and arrival time (from the kernel's
/// timestamp, or now if there is none).
fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Instant)> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain C structs, zero is a valid value for each.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // Room for one `SCM_TIMESTAMPNS` control message (a timespec), 8-byte aligned.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut name as *mut libc::sockaddr_storage as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points to a live buffer of the length given.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The wall clock first: a preemption between the two reads then makes the arrival
    // look later, never earlier than it was (an answer must not look as if it came
    // before the observation it answers was sent).
    let wall = SystemTime::now();
    let now = Instant::now();
    let from = socket_addr(&name).ok_or_else(|| std::io::Error::other("unknown address family"))?;
    let mut at = now;
    // SAFETY: the CMSG_* helpers walk the control buffer the kernel filled, within
    // `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                let stamp = SystemTime::UNIX_EPOCH
                    + Duration::new(
                        ts.tv_sec.max(0) as u64,
                        ts.tv_nsec.clamp(0, 999_999_999) as u32,
                    );
                // A clock step can make the stamp look later than now: then age 0.
                let age = wall.duration_since(stamp).unwrap_or(Duration::ZERO);
                at = now.checked_sub(age).unwrap_or(now);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, from, at))
}

/// The sender's address from `recvmsg`'s `msg_name`.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
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
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    /// Stops the thread and folds its counters with the control thread's.
    pub(crate) fn finish(mut self, port: Option<&TeleopPort>) -> TeleopSummary {
        self.stop();
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TeleopSummary {
            listen: self.listen.clone(),
            device: s.device.lock().unwrap().map(|d| d.to_string()),
            device_changes: get(&s.device_changes),
            datagrams: get(&s.datagrams),
            invalid: get(&s.invalid),
            last_invalid: s.last_invalid.lock().unwrap().clone(),
            foreign: get(&s.foreign),
            out_of_order: get(&s.out_of_order),
            seq_gaps: get(&s.seq_gaps),
            ..port.map_or_else(TeleopSummary::default, |p| p.counts.clone())
        }
    }
}

impl Drop for TeleopThread {
    /// A run that fails after starting the thread still stops it.
    fn drop(&mut self) {
        self.stop();
    }
}

impl TeleopPort {
    /// Takes the newest datagram; returns the label the device asked for since the last
    /// call, if any (`true`: success; a success wins over a failure asked for in the
    /// same interval).
    pub(crate) fn poll(&mut self) -> Option<bool> {
        self.refresh();
        let labels = self.shared.labels.swap(0, Ordering::Relaxed);
        if labels & wire::LABEL_SUCCESS != 0 {
            Some(true)
        } else if labels & wire::LABEL_FAILURE != 0 {
            Some(false)
        } else {
            None
        }
    }

    /// Takes the newest datagram from the teleop thread. Never waits: if the thread
    /// holds the slot this instant, the newest datagram is taken at the next look.
    fn refresh(&mut self) {
        // The flag first: the slot read after it holds the release or a newer datagram.
        let released = self.shared.released.swap(false, Ordering::AcqRel);
        match self.shared.latest.try_lock() {
            Ok(latest) => {
                if let Some(r) = *latest {
                    self.newest = Some(r);
                }
            }
            Err(_) => {
                // Not looked at: the release waits for the next look, with the datagram
                // that comes with it (the older press must not be used on it).
                if released {
                    self.shared.released.store(true, Ordering::Release);
                }
                return;
            }
        }
        if self.release_required && (released || self.newest.is_some_and(|r| !r.action.engaged())) {
            self.release_required = false;
        }
    }

    /// The controller sends observations before acting and waits for answers
    /// (`--teleop-wait-ms`) while the device's newest datagram is younger than the
    /// timeout at `now`, and it answers observations (flag 8) or has not yet let
    /// [`UNANSWERED_WAITS`] waits in a row pass: a device that went away, or one that
    /// never answers (a person's), costs no wait after that.
    pub(crate) fn waits(&self, now: Instant) -> bool {
        !self.wait.is_zero()
            && self.newest.is_some_and(|r| {
                now.saturating_duration_since(r.at) <= self.timeout
                    && (r.action.answer_to().is_some() || self.unanswered < UNANSWERED_WAITS)
            })
    }

    /// Spins up to the wait for the device's answer to the observation of `step`, sent
    /// at `sent`; true if it came.
    pub(crate) fn await_answer(&mut self, step: u32, sent: Instant) -> bool {
        let deadline = sent + self.wait;
        loop {
            self.refresh();
            if self
                .newest
                .is_some_and(|r| r.action.answer_to() == Some(step) && r.at >= sent)
            {
                self.counts.answered += 1;
                self.unanswered = 0;
                return true;
            }
            if Instant::now() >= deadline {
                self.counts.answer_timeouts += 1;
                self.unanswered = self.unanswered.saturating_add(1);
                return false;
            }
            // The teleop thread may need this core (2-core robot computers).
            std::thread::yield_now();
        }
    }

    /// Counts a label of the device: applied to the running episode, or ignored.
    pub(crate) fn label(&mut self, applied: bool) {
        if applied {
            self.counts.labels += 1;
        } else {
            self.counts.labels_ignored += 1;
        }
    }

    /// The device's action for the frame of `step` of `episode`, if it is engaged,
    /// younger than the timeout at `now`, and has been released since the last safe
    /// stop. One that answers an observation (flag 8) must answer one of this episode,
    /// up to `step`, sent before the answer arrived ([`OBSERVED`] steps back at most),
    /// and the device must not have left the observation after it unanswered for
    /// longer than the timeout: a device that keeps resending its last answer while no
    /// observation reaches it drives the arm open loop, and an answer to a later step
    /// (or one sent before this episode's observation of its step) answers an earlier
    /// episode. At any rate: the next observation goes out after acting when the
    /// controller does not wait, so a slow robot's answer is a period old when used.
    pub(crate) fn action(&self, now: Instant, episode: u32, step: u32) -> Option<[f32; MAX_ACT]> {
        let r = self.newest.as_ref()?;
        let fresh = now.saturating_duration_since(r.at) <= self.timeout;
        let answers_this = r.action.answer_to().is_none_or(|s| {
            let sent = |k: u32| {
                self.observed[k as usize % OBSERVED].filter(|o| o.episode == episode && o.step == k)
            };
            // Within the ring (so the search below is short and exact), sent, and before
            // the answer arrived.
            let answered =
                s <= step && step - s < OBSERVED as u32 && sent(s).is_some_and(|o| r.at >= o.at);
            // Then the first observation sent after the answered one, if any, must not be
            // overdue.
            answered
                && (s.saturating_add(1)..=step)
                    .find_map(sent)
                    .is_none_or(|o| now.saturating_duration_since(o.at) <= self.timeout)
        });
        (r.action.engaged() && fresh && answers_this && !self.release_required)
            .then_some(r.action.values)
    }

    /// A safe stop began: the device must release its deadman before it moves the
    /// robot again.
    pub(crate) fn require_release(&mut self) {
        // Only a release after this counts.
        self.shared.released.store(false, Ordering::Release);
        if !self.release_required {
            self.release_required = true;
            self.counts.releases_required += 1;
        }
        self.in_control = false;
    }

    /// An episode began: a device that drives its first step takes control in it anew
    /// (`takeovers` counts it, though it sent the last episode's last command).
    /// `in_control`, which the observations tell the device, stays as it was.
    pub(crate) fn episode_began(&mut self) {
        self.episode_untaken = true;
    }

    /// Counts one command at `now`: the device's (`teleop`) or the policy's / the hold
    /// action. True when control left a device that did not let go because it fell
    /// silent: its newest datagram, still engaged, is older than the timeout (a Wi-Fi
    /// drop, a crash), which the operator is told (nothing said so, and the policy took
    /// the arm back mid-correction unannounced). An answer to another step, refused
    /// while fresh, is not a lapse.
    pub(crate) fn commanded(&mut self, teleop: bool, now: Instant) -> bool {
        let lapsed = self.in_control
            && !teleop
            && self.newest.is_some_and(|r| {
                r.action.engaged() && now.saturating_duration_since(r.at) > self.timeout
            });
        self.counts.lapses += lapsed as u64;
        self.counts.takeovers += (teleop && (!self.in_control || self.episode_untaken)) as u64;
        self.counts.commands += teleop as u64;
        self.in_control = teleop;
        self.episode_untaken = false;
        lapsed
    }

    /// Sends the observation just acted on to the device (once it is known). Never
    /// blocks: a full socket buffer or an unreachable device is counted, nothing more.
    pub(crate) fn send_observation(&mut self, episode: u32, step: u32, obs: &[f32]) {
        let Some(to) = self.newest.map(|r| r.from) else {
            return;
        };
        self.observed[step as usize % OBSERVED] = Some(Observed {
            episode,
            step,
            at: Instant::now(),
        });
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
            Ok(_) => self.counts.observations_sent += 1,
            Err(_) => self.counts.send_errors += 1,
        }
    }
}

/// One line for the run report.
impl std::fmt::Display for TeleopSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  teleop: listening on {}, device {}{}; {} datagrams ({} refused{}, {} from other senders, {} out of order, {} sequence gaps); {} commands from the device in {} takeovers, {} labels ({} ignored), {} releases required after safe stops, {} observations sent ({} send errors){}",
            self.listen,
            self.device.as_deref().unwrap_or("none"),
            if self.device_changes > 0 {
                format!(" ({} changes)", self.device_changes)
            } else {
                String::new()
            },
            self.datagrams,
            self.invalid,
            self.last_invalid
                .as_ref()
                .map_or(String::new(), |w| format!(", last: {w}")),
            self.foreign,
            self.out_of_order,
            self.seq_gaps,
            self.commands,
            self.takeovers,
            self.labels,
            self.labels_ignored,
            self.releases_required,
            self.observations_sent,
            self.send_errors,
            if self.answered + self.answer_timeouts > 0 {
                format!(
                    ", {} answered in time, {} not",
                    self.answered, self.answer_timeouts
                )
            } else {
                String::new()
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::teleop::{LABEL_FAILURE, LABEL_SUCCESS};
    use std::net::UdpSocket;

    #[test]
    fn sequence_order() {
        assert_eq!(order(None, 7), Order::Next);
        assert_eq!(order(Some(7), 8), Order::Next);
        assert_eq!(order(Some(u32::MAX), 0), Order::Next);
        assert_eq!(order(Some(7), 9), Order::Gap);
        assert_eq!(order(Some(7), 7), Order::Old);
        assert_eq!(order(Some(7), 6), Order::Old);
        assert_eq!(order(Some(2000), 2000 - RESTART_JUMP), Order::Old);
        assert_eq!(order(Some(2000), 1), Order::Restart);
    }

    struct Rig {
        thread: Option<TeleopThread>,
        port: TeleopPort,
        device: UdpSocket,
        addr: SocketAddr,
        seq: u32,
    }

    impl Rig {
        fn new(timeout: Duration) -> Rig {
            Rig::started(TeleopConfig::bind("127.0.0.1:0", timeout).unwrap())
        }

        fn started(cfg: TeleopConfig) -> Rig {
            let addr = cfg.socket.local_addr().unwrap();
            let (_, console) = super::super::console::Console::spawn(std::io::sink()).unwrap();
            let (thread, port) = spawn(&cfg, 2, console).unwrap();
            let device = UdpSocket::bind("127.0.0.1:0").unwrap();
            Rig {
                thread: Some(thread),
                port,
                device,
                addr,
                seq: 0,
            }
        }

        fn datagram(seq: u32, flags: u8, values: &[f32]) -> Vec<u8> {
            let mut buf = [0u8; wire::MAX_DATAGRAM];
            let n = wire::encode_action(&TeleopAction::new(seq, flags, values), &mut buf);
            buf[..n].to_vec()
        }

        /// Polls until the control side has the datagram numbered `seq`; returns the
        /// labels seen on the way.
        fn wait_for(&mut self, seq: u32) -> Option<bool> {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut label = None;
            while self.port.newest.is_none_or(|r| r.action.seq != seq) {
                assert!(Instant::now() < deadline, "datagram {seq} never arrived");
                std::thread::sleep(Duration::from_millis(1));
                label = label.or(self.port.poll());
            }
            label.or(self.port.poll())
        }

        fn send_raw(&self, from: &UdpSocket, bytes: &[u8]) {
            from.send_to(bytes, self.addr).unwrap();
        }

        /// Sends an engaged action answering the observation of `step`, and polls until
        /// the control side has it.
        fn answer(&mut self, step: u32, values: &[f32]) {
            let mut buf = [0u8; wire::MAX_DATAGRAM];
            self.seq += 1;
            let a = TeleopAction::new(self.seq, wire::ENGAGED, values).answering(step);
            let n = wire::encode_action(&a, &mut buf);
            self.send_raw(&self.device, &buf[..n]);
            self.wait_for(self.seq);
        }

        /// Sends an action and polls until the control side has it; returns the label
        /// it asked for, if any.
        fn send(&mut self, flags: u8, values: &[f32]) -> Option<bool> {
            self.seq += 1;
            let d = Rig::datagram(self.seq, flags, values);
            self.send_raw(&self.device, &d);
            self.wait_for(self.seq)
        }

        /// Waits until the thread has counted `n` refused datagrams.
        fn refused(&self, n: u64) -> Option<String> {
            let shared = &self.thread.as_ref().unwrap().shared;
            let deadline = Instant::now() + Duration::from_secs(5);
            while shared.invalid.load(Ordering::Acquire) < n {
                assert!(Instant::now() < deadline, "never refused");
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.last_invalid.lock().unwrap().clone()
        }

        fn finish(mut self) -> TeleopSummary {
            self.thread.take().unwrap().finish(Some(&self.port))
        }
    }

    /// The teleop thread says what it has to say through the run's console thread: it
    /// wrote to stderr itself, so a stderr held by a paused terminal held it (before it
    /// took the datagram), and the run's end, which joins it before the recording is
    /// finished, with it.
    #[test]
    fn the_teleop_thread_never_writes_to_stderr_itself() {
        use std::sync::mpsc;
        // Alone, in a child process of this test binary: holding this process's stderr
        // would hold every other test's lines meanwhile.
        const CHILD: &str = "EXPO_TELEOP_STDERR_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let (_, module) = module_path!().split_once("::").unwrap();
            let name = format!("{module}::the_teleop_thread_never_writes_to_stderr_itself");
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{said}");
            assert!(said.contains("1 passed"), "{said}");
            return;
        }
        // Another thread holds stderr (as a write blocked on a paused terminal does)
        // until this test is done, or fails.
        let (release, released) = mpsc::channel::<()>();
        let (held_tx, held) = mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _stderr = std::io::stderr().lock();
            held_tx.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(60));
        });
        held.recv().unwrap();
        struct Release(mpsc::Sender<()>);
        impl Drop for Release {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let mut rig = Rig::new(Duration::from_secs(2));
        // Dropped before `rig` (whose thread a failed test joins) on any exit.
        let release = Release(release);
        // A new device (said), then a refused datagram (said): each was a stderr write
        // before the datagram was taken.
        rig.send(wire::ENGAGED, &[0.1, 0.2]);
        rig.send_raw(&rig.device, b"junk");
        rig.refused(1);
        rig.finish();
        drop(release);
        holder.join().unwrap();
    }

    /// A closed-loop device's answer is in force from the step it answers on, and not
    /// in a frame before it: a repeat of the previous episode's last answer does not
    /// drive the next episode's first frames.
    #[test]
    fn an_answer_to_a_later_step_is_not_in_force() {
        let timeout = Duration::from_secs(2);
        let mut rig = Rig::new(timeout);
        // The device is known (its address), and gets episode 3's observation of step
        // 40 before it answers it.
        rig.send(0, &[0.0, 0.0]);
        rig.port.send_observation(3, 40, &[0.0; 4]);
        rig.answer(40, &[0.25, -0.5]);
        let now = Instant::now();
        assert_eq!(rig.port.action(now, 3, 40).unwrap()[..2], [0.25, -0.5]);
        assert!(
            rig.port.action(now, 3, 41).is_some(),
            "the answer to the previous frame"
        );
        assert_eq!(rig.port.action(now, 3, 39), None);
        assert_eq!(
            rig.port.action(now, 4, 0),
            None,
            "a new episode's first frame"
        );
        // The next episode's step 40: an answer to step 40 that arrived before its
        // observation was sent answers the last episode's.
        rig.port.send_observation(4, 40, &[0.0; 4]);
        assert_eq!(rig.port.action(Instant::now(), 4, 40), None);
        rig.answer(40, &[0.25, -0.5]);
        assert!(rig.port.action(Instant::now(), 4, 40).is_some());
        // An answer repeated while no observation reaches the device: in force only
        // until the observation after it has gone unanswered for the timeout (it drove
        // the arm open loop). Without a later observation (a slow robot's next frame,
        // sent after acting), it stays in force while the datagram is fresh.
        let at = rig.port.newest.unwrap().at;
        assert!(
            rig.port.action(at + timeout, 4, 41).is_some(),
            "no later one yet"
        );
        rig.port.send_observation(4, 41, &[0.0; 4]);
        let next = rig.port.observed[41].unwrap().at;
        // The device resends its answer to step 40 (fresh datagrams) and never 41.
        rig.answer(40, &[0.25, -0.5]);
        let resent = rig.port.newest.unwrap().at;
        assert!(resent > next);
        assert!(rig.port.action(next + timeout, 4, 45).is_some());
        assert_eq!(rig.port.action(resent + timeout, 4, 45), None);
        // An answer to an observation never sent is not in force.
        rig.answer(42, &[0.25, -0.5]);
        assert_eq!(rig.port.action(Instant::now(), 4, 42), None);
        // A device that does not answer (a person's) is in force at any step.
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert!(rig.port.action(Instant::now(), 4, 0).is_some());
    }

    /// A device that restarts on the same address after a silence longer than the
    /// timeout is followed from its first datagram, though its count is behind the old
    /// one by less than RESTART_JUMP. Before the silence, a datagram behind is dropped;
    /// after it, one at most REORDER_WINDOW behind (a late copy) is dropped too.
    #[test]
    fn a_device_restarted_after_a_silence_is_followed_at_once() {
        let timeout = Duration::from_millis(300);
        let mut rig = Rig::new(timeout);
        for _ in 0..40 {
            rig.send(wire::ENGAGED, &[0.1, 0.1]);
        }
        // A late duplicate while the device is live: dropped.
        rig.send_raw(&rig.device, &Rig::datagram(3, wire::ENGAGED, &[0.9, 0.9]));
        // The device releases (datagram 41), then falls silent.
        rig.send(0, &[0.0, 0.0]);
        std::thread::sleep(timeout * 2);
        // A late engaged copy of datagram 40 after the silence: not a restart, dropped,
        // so it cannot undo the release.
        rig.send_raw(&rig.device, &Rig::datagram(40, wire::ENGAGED, &[0.9, 0.9]));
        let shared = Arc::clone(&rig.thread.as_ref().unwrap().shared);
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.out_of_order.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the late copy was not dropped");
            assert_eq!(
                rig.port.action(Instant::now(), 0, 0),
                None,
                "a late copy undid a release"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0),
            None,
            "a late copy undid a release"
        );
        std::thread::sleep(timeout * 2);
        // The restarted device counts from 1 again.
        rig.seq = 0;
        rig.send(0, &[0.3, 0.3]);
        rig.send(wire::ENGAGED, &[0.4, 0.4]);
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0).unwrap()[..2],
            [0.4, 0.4]
        );
        let s = rig.finish();
        assert_eq!(s.out_of_order, 2, "{s:?}");
        assert_eq!(s.device_changes, 0, "{s:?}");
    }

    /// A device that restarts its count at once (a quick reboot on the same address,
    /// no silence) is followed after a timeout's worth of its dropped datagrams: they
    /// counted as heard, so it never fell silent, and nothing moved until its count
    /// passed the old one. Followed, it drives once it has released its deadman, as a
    /// device that restarted on a new port does (its datagrams here alternate releases
    /// and presses).
    #[test]
    fn a_device_restarted_without_a_silence_is_followed_after_the_timeout() {
        let timeout = Duration::from_millis(300);
        let mut rig = Rig::new(timeout);
        for _ in 0..100 {
            rig.send(wire::ENGAGED, &[0.1, 0.1]);
        }
        let mut followed = false;
        for seq in 1..=60 {
            let flags = if seq % 2 == 0 { wire::ENGAGED } else { 0 };
            rig.send_raw(&rig.device, &Rig::datagram(seq, flags, &[0.4, 0.4]));
            std::thread::sleep(Duration::from_millis(20));
            rig.port.poll();
            if rig
                .port
                .action(Instant::now(), 0, 0)
                .is_some_and(|a| a[..2] == [0.4, 0.4])
            {
                followed = true;
                break;
            }
        }
        assert!(followed, "the restarted device was never followed");
        let s = rig.finish();
        assert_eq!(s.device_changes, 0, "{s:?}");
    }

    /// `--teleop-wait-ms`: the tick waits only while the device's newest datagram is
    /// younger than the timeout; a device that stopped costs no wait.
    #[test]
    fn the_wait_is_only_for_a_device_that_is_there() {
        let timeout = Duration::from_millis(300);
        let mut cfg = TeleopConfig::bind("127.0.0.1:0", timeout).unwrap();
        cfg.wait = Duration::from_millis(5);
        let mut rig = Rig::started(cfg);
        assert!(!rig.port.waits(Instant::now()), "no device yet");
        // One that does not answer observations (a person's) costs a few waits, then
        // none: it spent the whole wait every tick.
        rig.send(wire::ENGAGED, &[0.1, 0.1]);
        for step in 0..UNANSWERED_WAITS {
            assert!(rig.port.waits(Instant::now()), "wait {step}");
            assert!(!rig.port.await_answer(step, Instant::now()));
        }
        assert!(
            !rig.port.waits(Instant::now()),
            "a device that never answers"
        );
        // A device that answers is waited for again.
        rig.answer(0, &[0.1, 0.1]);
        assert!(rig.port.waits(Instant::now()));
        assert!(
            !rig.port.waits(Instant::now() + timeout * 2),
            "a device that went quiet"
        );
    }

    #[test]
    fn engaged_fresh_actions_move_the_robot_and_nothing_else_does() {
        let timeout = Duration::from_millis(300);
        let mut rig = Rig::new(timeout);
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0),
            None,
            "nothing sent yet"
        );
        rig.send(0, &[0.5, -0.5]);
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None, "disengaged");
        rig.send(wire::ENGAGED, &[0.25, -0.75]);
        let at = rig.port.newest.unwrap().at;
        let a = rig
            .port
            .action(at + timeout, 0, 0)
            .expect("fresh until the timeout");
        assert_eq!(a[..2], [0.25, -0.75]);
        assert_eq!(
            rig.port
                .action(at + timeout + Duration::from_millis(1), 0, 0),
            None
        );
        // The deadman released: control goes back at once.
        rig.send(0, &[0.25, -0.75]);
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None);

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
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None);
        // A late duplicate of an engaged datagram does not undo the release.
        rig.send_raw(
            &rig.device,
            &Rig::datagram(2, wire::ENGAGED, &[0.25, -0.75]),
        );
        rig.send(0, &[0.0, 0.0]);
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None);

        rig.port.commanded(true, Instant::now());
        rig.port.commanded(true, Instant::now());
        // Released (its newest datagram): no lapse.
        assert!(!rig.port.commanded(false, Instant::now()));
        rig.port.commanded(true, Instant::now());
        let s = rig.finish();
        assert_eq!(s.lapses, 0);
        assert_eq!((s.invalid, s.commands, s.takeovers), (3, 3, 2), "{s:?}");
        // The intruder's datagram came before the device's 4th, which was waited for.
        assert_eq!(s.foreign, 1, "{s:?}");
        assert_eq!((s.datagrams, s.out_of_order), (5, 1), "{s:?}");
        // Sequence numbers 1..=5 from the device: the refused 90 and 91 do not count.
        assert_eq!(s.seq_gaps, 0, "{s:?}");
    }

    /// A label acts where its flag turns on, once, however long the button is held.
    #[test]
    fn labels_act_on_the_flag_turning_on() {
        let mut rig = Rig::new(Duration::from_secs(1));
        let e = wire::ENGAGED;
        assert_eq!(rig.send(e, &[0.0, 0.0]), None);
        assert_eq!(rig.send(e | LABEL_SUCCESS, &[0.0, 0.0]), Some(true));
        assert_eq!(rig.send(e | LABEL_SUCCESS, &[0.0, 0.0]), None, "held");
        assert_eq!(rig.send(e, &[0.0, 0.0]), None);
        assert_eq!(rig.send(LABEL_FAILURE, &[0.0, 0.0]), Some(false));
        // A label on a datagram that a newer one replaced before the control thread
        // looked is still delivered.
        let seq = rig.seq;
        rig.send_raw(
            &rig.device,
            &Rig::datagram(seq + 1, e | LABEL_SUCCESS, &[0.0; 2]),
        );
        rig.send_raw(&rig.device, &Rig::datagram(seq + 2, e, &[0.0; 2]));
        assert_eq!(rig.wait_for(seq + 2), Some(true));
        rig.port.label(true);
        rig.port.label(false);
        let s = rig.finish();
        assert_eq!((s.labels, s.labels_ignored), (1, 1));
    }

    /// A datagram that waited in the socket's buffer is judged by its arrival, not by
    /// when the thread read it.
    #[test]
    fn datagrams_are_judged_by_their_arrival() {
        let timeout = Duration::from_millis(200);
        let cfg = TeleopConfig::bind("127.0.0.1:0", timeout).unwrap();
        let device = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = cfg.socket.local_addr().unwrap();
        // Linux turns on arrival stamping (a static key) a moment after the first socket
        // asks for it; a datagram in that moment is stamped when read.
        std::thread::sleep(Duration::from_millis(100));
        device
            .send_to(&Rig::datagram(1, wire::ENGAGED, &[0.5, 0.5]), addr)
            .unwrap();
        std::thread::sleep(timeout * 2);
        let mut rig = Rig::started(cfg);
        rig.device = device;
        rig.seq = 1;
        rig.wait_for(1);
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None, "400 ms old");
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert!(rig.port.action(Instant::now(), 0, 0).is_some(), "just sent");
    }

    /// A device in control that falls silent while engaged: its action lapses, and the
    /// command that follows says so (the operator was never told).
    #[test]
    fn a_device_silent_while_engaged_lapses_and_is_told() {
        let timeout = Duration::from_millis(50);
        let mut rig = Rig::new(timeout);
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert!(rig.port.action(Instant::now(), 0, 0).is_some());
        assert!(!rig.port.commanded(true, Instant::now()));
        // Fresh but not used for a step (an answer to another step, say): no lapse.
        assert!(!rig.port.commanded(false, Instant::now()));
        assert!(!rig.port.commanded(true, Instant::now()));
        // (Waiting out the timeout, not timing anything.)
        std::thread::sleep(timeout * 3);
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None);
        assert!(rig.port.commanded(false, Instant::now()), "a lapse");
        assert!(!rig.port.commanded(false, Instant::now()), "said once");
        assert_eq!(rig.finish().lapses, 1);
    }

    /// A released deadman whose values are refused (an encoder reading NaN as the
    /// operator lets go, or the wrong number of them) still releases: it was dropped, and
    /// the last engaged action drove the arm until the timeout. It also counts as the
    /// release a safe stop asks for.
    #[test]
    fn a_release_with_bad_values_still_releases() {
        let mut rig = Rig::new(Duration::from_secs(60));
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert!(rig.port.action(Instant::now(), 0, 0).is_some());
        rig.seq += 1;
        // (With a label, which a refused datagram does not give.)
        let d = Rig::datagram(rig.seq, LABEL_SUCCESS, &[f32::NAN, 0.0]);
        rig.send_raw(&rig.device, &d);
        assert_eq!(rig.refused(1), Some("action[0] is NaN".into()));
        assert_eq!(rig.wait_for(rig.seq), None, "no label");
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None, "released");
        rig.port.require_release();
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None, "release first");
        rig.seq += 1;
        let d = Rig::datagram(rig.seq, 0, &[0.5, 0.5, 0.5]);
        rig.send_raw(&rig.device, &d);
        rig.refused(2);
        rig.wait_for(rig.seq);
        rig.send(wire::ENGAGED, &[0.25, 0.5]);
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0).unwrap()[..2],
            [0.25, 0.5],
            "released (with three values) and pressed"
        );
        // An engaged datagram with bad values is still refused whole.
        rig.seq += 1;
        let d = Rig::datagram(rig.seq, wire::ENGAGED, &[f32::INFINITY, 0.0]);
        rig.send_raw(&rig.device, &d);
        rig.refused(3);
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0).unwrap()[..2],
            [0.25, 0.5]
        );
    }

    /// After a safe stop the device's action waits for a release; another sender becomes
    /// the device once the first has been silent for longer than the timeout.
    #[test]
    fn a_release_after_a_safe_stop_and_a_new_device_after_silence() {
        let timeout = Duration::from_millis(100);
        let mut rig = Rig::new(timeout);
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert!(rig.port.action(Instant::now(), 0, 0).is_some());
        rig.port.require_release();
        assert_eq!(rig.port.action(Instant::now(), 0, 0), None, "release first");
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0),
            None,
            "still held down"
        );
        rig.send(0, &[0.5, 0.5]);
        rig.send(wire::ENGAGED, &[0.5, 0.5]);
        assert!(
            rig.port.action(Instant::now(), 0, 0).is_some(),
            "released and pressed"
        );

        // A release and a new press that both came before the control thread looked
        // (a deadman re-gripped within a period): the release counts. Only the press
        // was seen, and the device stayed locked out until another release.
        rig.port.require_release();
        for flags in [0, wire::ENGAGED] {
            rig.seq += 1;
            let d = Rig::datagram(rig.seq, flags, &[0.5, 0.5]);
            rig.send_raw(&rig.device, &d);
        }
        // The press is in the slot: the control thread can no longer see the release
        // there.
        let deadline = Instant::now() + Duration::from_secs(5);
        let shared = rig.thread.as_ref().unwrap().shared.clone();
        while shared.latest.lock().unwrap().map(|r| r.action.seq) != Some(rig.seq) {
            assert!(Instant::now() < deadline, "datagrams never arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
        rig.port.poll();
        assert!(
            rig.port.action(Instant::now(), 0, 0).is_some(),
            "released and pressed again before the control thread looked"
        );

        // The device program restarts on a new port: taken once the old one is silent,
        // and it drives once it has released its deadman (its first datagram drove the
        // arm mid-episode, from any sender on the network).
        std::thread::sleep(timeout * 2);
        rig.device = UdpSocket::bind("127.0.0.1:0").unwrap();
        rig.seq = 0;
        rig.send(wire::ENGAGED, &[-0.5, 0.5]);
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0),
            None,
            "a new device, not released yet"
        );
        assert_eq!(
            rig.send(wire::ENGAGED | LABEL_SUCCESS, &[-0.5, 0.5]),
            None,
            "nor does it label"
        );
        rig.send(0, &[-0.5, 0.5]);
        rig.send(wire::ENGAGED, &[-0.5, 0.5]);
        assert_eq!(
            rig.port.action(Instant::now(), 0, 0).unwrap()[..2],
            [-0.5, 0.5]
        );
        let s = rig.finish();
        assert_eq!(
            (s.device_changes, s.releases_required, s.foreign),
            (1, 2, 0)
        );
    }
}
