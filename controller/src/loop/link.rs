//! The serial link: opening the port and the I/O thread that reads and decodes it.
//!
//! The I/O thread owns the read side. It blocks in `read` (a `poll` on the device with
//! a short timeout), stamps every chunk with its arrival time, decodes frames with
//! `FrameDecoder`, follows the firmware's sequence numbers, and publishes every frame,
//! in order, on a bounded channel to the control thread. The control thread drains
//! that channel at the start of each tick and acts on the newest `Sensor` frame; the
//! other messages (rewards, episode starts and ends, faults) come in the same order
//! the firmware sent them, which is what building transitions needs.
//!
//! The I/O thread does not block on the channel for data: when it is full (the control
//! thread is stuck) a `Sensor` or `Reward` frame is dropped and counted. A `Fault` or
//! `Hello` frame, a loss and a reconnection wait up to a second each for room (they
//! must not be lost with the data). If the device fails (unplugged, the
//! firmware's pty closed), the thread reports [`LinkEvent::Lost`] and, when
//! reconnection is enabled, reopens the same path every 100 ms until the deadline,
//! handing the control thread a fresh write handle ([`LinkEvent::Reconnected`]).

use super::realtime;
use crossbeam_channel::{Receiver, Sender, bounded};
use firmware_config::protocol::{
    DecoderStats, Frame, FrameDecoder, FrameError, Message, SeqEvent, SeqTracker,
};
use serde::Serialize;
use serialport::SerialPort;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the I/O thread publishes.
pub enum LinkEvent {
    Frame {
        rx: Instant,
        frame: Frame,
        /// Its sequence number is not newer than the last one's: a duplicated or
        /// reordered frame.
        stale: bool,
    },
    /// A block that did not decode (counted in the decoder stats too).
    Error { rx: Instant, error: FrameError },
    /// Reading failed: the device is gone.
    Lost(String),
    /// The device was reopened; here is its write handle.
    Reconnected(Box<dyn SerialPort>),
}

/// Link health, summed over reconnects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LinkCounters {
    pub frames: u64,
    pub crc_errors: u64,
    pub cobs_errors: u64,
    pub oversize: u64,
    pub version_mismatches: u64,
    pub malformed: u64,
    pub resyncs: u64,
    pub bytes_discarded: u64,
    /// Firmware frames missing according to the sequence numbers.
    pub seq_lost: u64,
    /// Duplicated or reordered frames according to the sequence numbers.
    pub seq_stale: u64,
    /// Jumps in the firmware's numbering taken up as a new numbering
    /// (`SeqEvent::Resync`: a restart whose `Hello` was lost, a long outage).
    pub seq_resyncs: u64,
    /// Frames dropped because the control thread's queue was full.
    pub queue_drops: u64,
    pub read_errors: u64,
    pub reconnects: u64,
}

impl LinkCounters {
    fn add_decoder(&mut self, d: &DecoderStats) {
        self.frames += d.frames as u64;
        self.crc_errors += d.crc_errors as u64;
        self.cobs_errors += d.cobs_errors as u64;
        self.oversize += d.oversize as u64;
        self.version_mismatches += d.version_mismatches as u64;
        self.malformed += d.malformed as u64;
        self.resyncs += d.resyncs as u64;
        self.bytes_discarded += d.bytes_discarded as u64;
    }

    /// Frame errors of any kind.
    pub fn frame_errors(&self) -> u64 {
        self.crc_errors
            + self.cobs_errors
            + self.oversize
            + self.version_mismatches
            + self.malformed
    }
}

/// Opens the device (8N1, no flow control) and discards input that arrived before.
pub fn open_port(path: &Path, baud: u32) -> io::Result<Box<dyn SerialPort>> {
    let name = path.to_string_lossy().into_owned();
    let port = serialport::new(&name, baud)
        .timeout(Duration::from_millis(5))
        .open()
        .map_err(|e| open_error(&name, e))?;
    port.clear(serialport::ClearBuffer::Input)
        .map_err(|e| io::Error::other(format!("{name}: {e}")))?;
    Ok(port)
}

/// Why `name` did not open, with the usual remedy where it is a permission: a user
/// outside the serial devices' group got the bare "Permission denied".
fn open_error(name: &str, e: serialport::Error) -> io::Error {
    let hint = match e.kind() {
        serialport::ErrorKind::Io(io::ErrorKind::PermissionDenied) => {
            " (add your user to the group that owns the device, `dialout` on Debian and \
             Ubuntu, `uucp` on Arch, then log in again)"
        }
        _ => "",
    };
    io::Error::other(format!("{name}: {e}{hint}"))
}

/// A write handle for the control thread (its own timeout: a device that stops
/// draining fails a write after 100 ms instead of stalling the loop).
pub fn writer_of(port: &dyn SerialPort) -> io::Result<Box<dyn SerialPort>> {
    let mut w = port
        .try_clone()
        .map_err(|e| io::Error::other(format!("cloning the port handle: {e}")))?;
    w.set_timeout(Duration::from_millis(100))
        .map_err(io::Error::other)?;
    Ok(w)
}

/// The running I/O thread.
pub struct Link {
    pub events: Receiver<LinkEvent>,
    pub counters: Arc<Mutex<LinkCounters>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts the I/O thread on `port`. `reconnect`: how long to keep trying to reopen
    /// `path` after the device fails (`None`: give up at once).
    pub fn spawn(
        port: Box<dyn SerialPort>,
        path: PathBuf,
        baud: u32,
        reconnect: Option<Duration>,
        capacity: usize,
    ) -> io::Result<Link> {
        let (tx, rx) = bounded(capacity);
        let counters = Arc::new(Mutex::new(LinkCounters::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counters.clone(), stop.clone());
        let handle = realtime::spawn_in_run("serial-io", move || {
            io_thread(port, path, baud, reconnect, tx, c, s)
        })?;
        Ok(Link {
            events: rx,
            counters,
            stop,
            handle: Some(handle),
        })
    }

    pub fn counters(&self) -> LinkCounters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long the I/O thread waits for room in a full queue for a firmware's `Fault`
/// frame (other frames are dropped and counted at once).
const FAULT_SEND_WAIT: Duration = Duration::from_secs(1);

/// Frames after a Hello numbered 0 within which another Hello with its number and
/// firmware timestamp is taken for a copy of it, not a new reboot. Copies come back a
/// few frames late (a duplicated or echoed frame). It is published marked stale, and the
/// control thread decides: it takes it for a second reboot once its `Estop` has gone out
/// since the first (a rebooted firmware waits, silent, for a handshake). A firmware that
/// rebooted again and renumbers its next frames from 1 has its Hello published again,
/// unmarked, on the third of them (`SeqTracker::RESYNC_AFTER`).
const HELLO_COPY_WINDOW: u32 = 256;

fn io_thread(
    mut port: Box<dyn SerialPort>,
    path: PathBuf,
    baud: u32,
    reconnect: Option<Duration>,
    tx: Sender<LinkEvent>,
    counters: Arc<Mutex<LinkCounters>>,
    stop: Arc<AtomicBool>,
) {
    let mut decoder = FrameDecoder::new();
    let mut seq = SeqTracker::new();
    // The firmware timestamp of the last Hello numbered 0 that restarted the numbering,
    // and the frames read since.
    let mut zero_hello: Option<(u32, u32)> = None;
    // A Hello numbered 0 taken for a copy of that one, kept while the numbering may
    // still show otherwise: frames that renumber from 1 after it (`SeqEvent::Resync`)
    // make it a second reboot after all (one that booted at the same microsecond), and
    // it is published then, ahead of them. The next frame in order makes it a copy.
    let mut held_hello: Option<Frame> = None;
    // Counters of decoders from before a reconnect.
    let mut base = LinkCounters::default();
    let mut drops = 0u64;
    let mut buf = [0u8; 1024];
    let publish = |ev: LinkEvent, drops: &mut u64| {
        // A firmware's fault (its stop button above all) and its Hello (a reboot: its
        // torque is on again) are waited for like a link loss, not dropped on a full
        // queue with the sensor frames.
        let fault = matches!(&ev, LinkEvent::Frame { frame, .. }
            if matches!(frame.message, Message::Fault { .. } | Message::Hello(_)));
        // Err(true): the control thread is gone; Err(false): no room, dropped.
        let sent = if fault {
            tx.send_timeout(ev, FAULT_SEND_WAIT)
                .map_err(|e| e.is_disconnected())
        } else {
            tx.try_send(ev).map_err(|e| e.is_disconnected())
        };
        match sent {
            Ok(()) => true,
            Err(gone) => {
                *drops += u64::from(!gone);
                !gone
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match port.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let rx = Instant::now();
                let mut alive = true;
                decoder.feed(&buf[..n], |r| {
                    let ev = match r {
                        Ok(frame) => {
                            let hello = matches!(frame.message, Message::Hello(_));
                            // A Hello numbered 0 starts the firmware's sequence over
                            // (a reboot, or a freshly booted firmware's answer), unless
                            // it is a copy of the one that last did, duplicated or sent
                            // again late on the line: that one is stale under the new
                            // numbering (it used to be taken for a reboot when other
                            // frames came between).
                            if hello && frame.seq == 0 {
                                let copy = zero_hello.is_some_and(|(stamp, since)| {
                                    stamp == frame.timestamp_us && since < HELLO_COPY_WINDOW
                                });
                                if copy {
                                    held_hello = Some(frame.clone());
                                } else {
                                    seq.reset();
                                    zero_hello = Some((frame.timestamp_us, 0));
                                    held_hello = None;
                                }
                            }
                            if let Some((_, since)) = &mut zero_hello {
                                *since = since.saturating_add(1);
                            }
                            // Stale (duplicated, reordered) frames are still
                            // published: the control thread drops them by episode and
                            // step, which is what matters for acting and logging.
                            let event = seq.observe(frame.seq);
                            match event {
                                SeqEvent::InOrder | SeqEvent::Gap { .. } => held_hello = None,
                                SeqEvent::Resync => {
                                    if let Some(h) = held_hello.take() {
                                        zero_hello = Some((h.timestamp_us, 0));
                                        let reboot = LinkEvent::Frame {
                                            rx,
                                            frame: h,
                                            stale: false,
                                        };
                                        alive &= publish(reboot, &mut drops);
                                    }
                                }
                                SeqEvent::First | SeqEvent::Stale => {}
                            }
                            let stale = event == SeqEvent::Stale;
                            LinkEvent::Frame { rx, frame, stale }
                        }
                        Err(error) => LinkEvent::Error { rx, error },
                    };
                    alive &= publish(ev, &mut drops);
                });
                if !alive {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                {
                    let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
                    c.read_errors += 1;
                }
                // The loss must get through even when the queue is full.
                let lost = LinkEvent::Lost(format!("{}: {e}", path.display()));
                if tx.send_timeout(lost, Duration::from_secs(1)).is_err() {
                    break;
                }
                let Some(limit) = reconnect else { break };
                // Closed before the reopening: a USB serial device that re-enumerates
                // gets its old name back only once every descriptor of the old one is
                // closed (held, the replugged board came back as `/dev/ttyACM1`, and
                // every reopen of `/dev/ttyACM0` failed until the run gave up). The
                // control thread drops its writer at the loss too.
                drop(port);
                let deadline = Instant::now() + limit;
                let mut reopened = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(p) = open_port(&path, baud)
                        && let Ok(w) = writer_of(p.as_ref())
                    {
                        reopened = Some((p, w));
                        break;
                    }
                }
                let Some((p, w)) = reopened else { break };
                port = p;
                base.add_decoder(&decoder.stats());
                decoder = FrameDecoder::new();
                // Whatever was half-received before is garbage now.
                decoder.clear();
                seq.reset();
                zero_hello = None;
                held_hello = None;
                base.reconnects += 1;
                if tx
                    .send_timeout(LinkEvent::Reconnected(w), Duration::from_secs(1))
                    .is_err()
                {
                    break;
                }
            }
        }
        snapshot(&counters, &base, &decoder, &seq, drops);
    }
    snapshot(&counters, &base, &decoder, &seq, drops);
}

/// Publishes the thread's counters (a short lock, once per read).
fn snapshot(
    counters: &Mutex<LinkCounters>,
    base: &LinkCounters,
    decoder: &FrameDecoder,
    seq: &SeqTracker,
    drops: u64,
) {
    let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
    let read_errors = c.read_errors;
    *c = *base;
    c.add_decoder(&decoder.stats());
    c.read_errors = read_errors;
    c.seq_lost = seq.lost as u64;
    c.seq_stale = seq.stale as u64;
    c.seq_resyncs = seq.resyncs as u64;
    c.queue_drops = drops;
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::protocol::{FaultCode, FrameEncoder};
    use hil_tests::link::{Port, Pty};

    /// A port the user may not open names the usual remedy (the group); other errors
    /// are left as they are.
    #[test]
    fn a_port_without_permission_names_the_group() {
        let denied = serialport::Error::new(
            serialport::ErrorKind::Io(io::ErrorKind::PermissionDenied),
            "Permission denied",
        );
        let e = open_error("/dev/ttyACM0", denied).to_string();
        assert!(
            e.starts_with("/dev/ttyACM0: Permission denied") && e.contains("`dialout`"),
            "{e}"
        );
        let missing = serialport::Error::new(serialport::ErrorKind::NoDevice, "No such device");
        let e = open_error("/dev/ttyACM0", missing).to_string();
        assert_eq!(e, "/dev/ttyACM0: No such device");
    }

    /// With the queue full of sensor frames (a control thread stuck), a stop button still
    /// gets through: its `Fault` frame waits for room, where a sensor frame is dropped
    /// and counted. (It was dropped like the sensor frames.)
    #[test]
    fn a_fault_frame_waits_for_room_in_a_full_queue() {
        let pty = Pty::open().unwrap();
        let port = open_port(pty.path(), 115_200).unwrap();
        let mut firmware = pty.into_port();
        let mut link = Link::spawn(port, "test".into(), 115_200, None, 1).unwrap();
        let mut enc = FrameEncoder::new();
        let sensor = || Message::sensor(0, 0, &[0.5; 4]).unwrap();
        let mut bytes = Vec::new();
        for message in [
            sensor(),
            sensor(),
            Message::Fault {
                code: FaultCode::Estop,
            },
        ] {
            bytes.extend_from_slice(&enc.to_wire(0, message));
        }
        firmware.write_all(&bytes).unwrap();
        // The first sensor frame fills the queue; the second is dropped; the fault waits.
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        while let Ok(ev) = link.events.recv_timeout(Duration::from_millis(500)) {
            if let LinkEvent::Frame { frame, .. } = ev {
                got.push(frame.message);
            }
        }
        link.stop();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(got[0], Message::Sensor { .. }));
        assert_eq!(
            got[1],
            Message::Fault {
                code: FaultCode::Estop
            }
        );
        assert_eq!(link.counters().queue_drops, 1);
    }

    /// Descriptors of this process open on `path`, also once its node is gone (a pty
    /// whose master closed: the link reads " (deleted)").
    fn descriptors_on(path: &Path) -> usize {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let deleted = format!("{} (deleted)", path.display());
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| *target == path || target.as_os_str() == deleted.as_str())
            .count()
    }

    /// A lost link's port is closed before the thread tries to reopen it: a USB serial
    /// device re-enumerates under its old name only once every descriptor of the old
    /// one is closed. The thread held it until a reopen succeeded, so a replugged board
    /// came back under another name, and the reopen never did.
    #[test]
    fn a_lost_port_is_closed_before_it_is_reopened() {
        let pty = Pty::open().unwrap();
        let path = pty.path().to_path_buf();
        let port = open_port(&path, 115_200).unwrap();
        let firmware = pty.into_port();
        let reconnect = Some(Duration::from_secs(5));
        let mut link = Link::spawn(port, path.clone(), 115_200, reconnect, 16).unwrap();
        // Ours and the firmware side's own handle on its slave end.
        assert_eq!(descriptors_on(&path), 2);
        drop(firmware);
        let lost = link.events.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(lost, LinkEvent::Lost(_)), "not the loss");
        let deadline = Instant::now() + Duration::from_secs(1);
        while descriptors_on(&path) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(descriptors_on(&path), 0, "the lost port is still open");
        link.stop();
    }

    /// The frames the link thread publishes for what the firmware sends, with their
    /// stale marks.
    fn published(frames: &[Frame]) -> Vec<(Message, u16, bool)> {
        let pty = Pty::open().unwrap();
        let port = open_port(pty.path(), 115_200).unwrap();
        let mut firmware = pty.into_port();
        let mut link = Link::spawn(port, "test".into(), 115_200, None, 256).unwrap();
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend_from_slice(&f.to_wire());
        }
        firmware.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        while let Ok(ev) = link.events.recv_timeout(Duration::from_millis(500)) {
            if let LinkEvent::Frame { frame, stale, .. } = ev {
                got.push((frame.message, frame.seq, stale));
            }
        }
        link.stop();
        got
    }

    /// A late copy of the first Hello is stale; a second reboot at the same firmware
    /// microsecond (its Hello looks like that copy) is published once its next frames
    /// renumber from 1, so the control thread still sees the reboot.
    #[test]
    fn a_second_reboot_that_looks_like_a_copy_is_published_when_the_numbers_restart() {
        let hello = Message::Hello(firmware_config::protocol::Hello::new(1, 2, 4, 2, 20));
        let frame = |seq: u16, message: Message| Frame {
            seq,
            timestamp_us: 0,
            message,
        };
        let sensor = || Message::sensor(0, 0, &[0.5; 4]).unwrap();
        let mut frames = vec![frame(0, hello.clone())];
        frames.extend((1..=5).map(|n| frame(n, sensor())));
        // A copy of the first Hello, then the numbering goes on.
        frames.push(frame(0, hello.clone()));
        frames.extend((6..=7).map(|n| frame(n, sensor())));
        // A reboot at the same microsecond: Hello 0 again, then 1, 2, 3.
        frames.push(frame(0, hello.clone()));
        frames.extend((1..=3).map(|n| frame(n, sensor())));
        let got = published(&frames);
        let hellos: Vec<_> = got
            .iter()
            .filter(|(m, _, _)| matches!(m, Message::Hello(_)))
            .map(|&(_, seq, stale)| (seq, stale))
            .collect();
        // The first, the copy (stale), the reboot's (stale when it came) and the
        // reboot's again, published ahead of frame 2: the Hello, 1 and 2 count on from
        // each other, and the third of them renumbers.
        assert_eq!(
            hellos,
            [(0, false), (0, true), (0, true), (0, false)],
            "{got:?}"
        );
        let last: Vec<_> = got[got.len() - 3..]
            .iter()
            .map(|&(_, n, s)| (n, s))
            .collect();
        assert_eq!(last, [(0, false), (2, false), (3, false)], "{got:?}");
    }
}
