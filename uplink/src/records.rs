//! Exactly-once delivery of an append-only record stream (the controller's transition
//! log) over a [`Session`], across disconnects.
//!
//! ```text
//!  client (controller)                              server (trainer)
//!    ── OPEN   stream id (UTF-8) ─────────────────►  looks up how many records it holds
//!    ◄── RESUME next u64 ──────────────────────────
//!    ── RECORDS first u64 │ count u32 │ (len u32 │ bytes)… ─►  keeps index ≥ next, in order
//!    ◄── ACK next u64 │ latest bundle name (str, may be empty) ──
//!    ── FETCH name (UTF-8) ───────────────────────►  (when the name is new to the client)
//!    ◄── BUNDLE name (str) │ count u16 │ (file name (str) │ len u32 │ bytes)… ──
//!    …                                                (a new connection starts at OPEN)
//!    ◄── ERROR reason (UTF-8) ──────────────────────  instead of an answer, then hangs up
//! ```
//!
//! A server that refuses a request (a record its sink does not take, a bundle it does
//! not have, a frame that breaks this protocol) says why in an `ERROR` frame before it
//! drops the connection, so the robot's report names the trainer's reason rather than
//! an end of file.
//!
//! An empty `RECORDS` batch is a poll: the client learns of new bundles while the robot
//! logs nothing. A `str` is a u16 length, then that many bytes of UTF-8; the `OPEN`
//! stream id, the `FETCH` name and the `ERROR` reason are the whole payload instead.
//! Integers are little-endian.
//!
//! Records are numbered by their position in the stream (0, 1, 2, …). The client keeps
//! them (the log on disk) and, on every connection, resends from the server's `next`:
//! nothing acknowledged is sent twice, nothing is skipped, and a record the server
//! already holds (sent before a disconnect, acknowledgement lost) is dropped by index.

use crate::{LinkError, Session};
use std::io::{Read, Write};

/// Frame kinds of this protocol.
pub mod kind {
    pub const OPEN: u8 = 1;
    pub const RESUME: u8 = 2;
    pub const RECORDS: u8 = 3;
    pub const ACK: u8 = 4;
    pub const FETCH: u8 = 5;
    pub const BUNDLE: u8 = 6;
    /// The server's reason for hanging up, in place of the answer.
    pub const ERROR: u8 = 7;
}

/// What the server answers a batch with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Records of the stream the server holds.
    pub next: u64,
    /// The newest bundle the server publishes, if any.
    pub latest: Option<String>,
}

/// A bundle directory in transit: file names (no directories) and contents.
pub type BundleFiles = Vec<(String, Vec<u8>)>;

/// Records per `RECORDS` frame: a transition record is under 500 bytes, so a batch stays
/// far below [`crate::MAX_FRAME`] and an acknowledgement comes back every few hundred ms
/// of robot time at 500 Hz.
pub const BATCH: usize = 256;

/// Why a record exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("sink: {0}")]
    Sink(String),
    /// The server's `ERROR` frame: why it refused and hung up.
    #[error("the trainer refused: {0}")]
    Refused(String),
}

/// Where the server keeps records.
pub trait RecordSink {
    /// How many records of `stream` are held (the index of the next one), or why that
    /// cannot be said now (the session is refused with it: a guess of 0 would have the
    /// robot send the whole stream again).
    fn next_index(&mut self, stream: &str) -> Result<u64, String>;
    /// Appends record `index` (always the next one) of `stream`.
    fn append(&mut self, stream: &str, index: u64, record: &[u8]) -> Result<(), String>;
    /// Makes the records `append` took for `stream` durable (on disk, past a power cut):
    /// called before they are acknowledged, since the robot counts an acknowledged
    /// record as held for good.
    fn make_durable(&mut self, _stream: &str) -> Result<(), String> {
        Ok(())
    }
    /// The name of the newest bundle to offer the robot.
    fn latest_bundle(&mut self) -> Option<String> {
        None
    }
    /// The files of bundle `name`.
    fn bundle(&mut self, name: &str) -> Result<BundleFiles, String> {
        Err(format!("no bundle '{name}' here"))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str, what: &str) -> Result<(), RecordError> {
    let len = u16::try_from(s.len()).map_err(|_| {
        RecordError::Protocol(format!(
            "{what} of {} bytes does not fit its u16 length prefix",
            s.len()
        ))
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A little reader over a payload whose every failure names what was missing.
struct Cursor<'a>(&'a [u8], usize);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], RecordError> {
        let b = self
            .0
            .get(self.1..self.1 + n)
            .ok_or_else(|| RecordError::Protocol(format!("{what} runs past the frame")))?;
        self.1 += n;
        Ok(b)
    }
    fn u16(&mut self, what: &str) -> Result<usize, RecordError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2")) as usize)
    }
    fn u32(&mut self, what: &str) -> Result<usize, RecordError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4")) as usize)
    }
    fn str(&mut self, what: &str) -> Result<String, RecordError> {
        let n = self.u16(what)?;
        String::from_utf8(self.take(n, what)?.to_vec())
            .map_err(|_| RecordError::Protocol(format!("{what} is not UTF-8")))
    }
}

/// Whether `name` is safe as one path component (a bundle or file name from the peer):
/// not empty, no separators, no `.`/`..`.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Client side: asks for bundle `name`.
pub fn fetch_bundle<S: Read + Write>(
    session: &mut Session<S>,
    name: &str,
) -> Result<BundleFiles, RecordError> {
    session.send(kind::FETCH, name.as_bytes())?;
    let f = session.recv()?;
    expect_answer(&f, kind::BUNDLE)?;
    let mut c = Cursor(&f.payload, 0);
    let got = c.str("bundle name")?;
    if got != name {
        return Err(RecordError::Protocol(format!(
            "asked for bundle '{name}', got '{got}'"
        )));
    }
    let count = c.u16("file count")?;
    let mut files = Vec::with_capacity(count);
    for _ in 0..count {
        let file = c.str("file name")?;
        if !plain_name(&file) {
            return Err(RecordError::Protocol(format!(
                "bundle file name '{file}' is not a plain name"
            )));
        }
        if files.iter().any(|(f, _)| *f == file) {
            return Err(RecordError::Protocol(format!(
                "bundle file name '{file}' appears twice"
            )));
        }
        let len = c.u32("file length")?;
        files.push((file, c.take(len, "file contents")?.to_vec()));
    }
    no_stray_bytes(&f.payload, c.1, "the bundle's files")?;
    Ok(files)
}

fn u64_at(p: &[u8], at: usize) -> Result<u64, RecordError> {
    p.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| RecordError::Protocol(format!("payload too short for a u64 at {at}")))
}

/// The server's answer of kind `want`, or its `ERROR` frame as [`RecordError::Refused`].
fn expect_answer(f: &crate::Frame, want: u8) -> Result<(), RecordError> {
    if f.kind == kind::ERROR {
        return Err(RecordError::Refused(
            String::from_utf8_lossy(&f.payload).into_owned(),
        ));
    }
    expect_kind(f.kind, want)
}

fn expect_kind(kind: u8, want: u8) -> Result<(), RecordError> {
    if kind == want {
        Ok(())
    } else {
        Err(RecordError::Protocol(format!(
            "expected frame kind {want}, got {kind}"
        )))
    }
}

/// Client side, first step of a connection: opens `stream`; returns the server's resume
/// point (how many records of it the server holds).
pub fn open_stream<S: Read + Write>(
    session: &mut Session<S>,
    stream: &str,
) -> Result<u64, RecordError> {
    session.send(kind::OPEN, stream.as_bytes())?;
    let f = session.recv()?;
    expect_answer(&f, kind::RESUME)?;
    no_stray_bytes(&f.payload, 8, "the resume point")?;
    u64_at(&f.payload, 0)
}

/// A payload that goes on after its last field (`end`, after `what`) is not one this
/// side understands: refused as the other answers are.
/// The `count` records of a `RECORDS` payload `p` (after its 12-byte head: first u64,
/// count u32), each as its index (`first` on), its bytes and the offset after it; the
/// first malformed one as an error, and nothing after it.
fn records_of(
    p: &[u8],
    first: u64,
    count: u32,
) -> impl Iterator<Item = Result<(u64, &[u8], usize), RecordError>> {
    let mut at = 12;
    let mut failed = false;
    (0..count as u64).map_while(move |i| {
        if failed {
            return None;
        }
        let record = (|| {
            let len = p
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| RecordError::Protocol(format!("record {i} has no length")))?;
            let record = p
                .get(at + 4..at + 4 + len)
                .ok_or_else(|| RecordError::Protocol(format!("record {i} runs past the frame")))?;
            at += 4 + len;
            let index = first.checked_add(i).ok_or_else(|| {
                RecordError::Protocol(format!("record {i} after {first} is past the last index"))
            })?;
            Ok((index, record, at))
        })();
        failed = record.is_err();
        Some(record)
    })
}

fn no_stray_bytes(payload: &[u8], end: usize, what: &str) -> Result<(), RecordError> {
    match payload.len().checked_sub(end) {
        Some(0) | None => Ok(()), // (a short payload is named by the field it lacks)
        Some(n) => Err(RecordError::Protocol(format!(
            "{n} stray bytes after {what}"
        ))),
    }
}

/// Client side: sends `batch` as records `first..first + batch.len()` (empty: a poll)
/// and waits for the acknowledgement.
pub fn send_batch<S: Read + Write>(
    session: &mut Session<S>,
    first: u64,
    batch: &[Vec<u8>],
) -> Result<Ack, RecordError> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&first.to_le_bytes());
    payload.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for r in batch {
        payload.extend_from_slice(&(r.len() as u32).to_le_bytes());
        payload.extend_from_slice(r);
    }
    session.send(kind::RECORDS, &payload)?;
    let ack = session.recv()?;
    expect_answer(&ack, kind::ACK)?;
    let acked = u64_at(&ack.payload, 0)?;
    let want = first + batch.len() as u64;
    if acked != want {
        return Err(RecordError::Protocol(format!(
            "server acknowledged {acked}, expected {want}"
        )));
    }
    let mut c = Cursor(&ack.payload, 8);
    let latest = c.str("latest bundle name")?;
    no_stray_bytes(&ack.payload, c.1, "the acknowledgement")?;
    Ok(Ack {
        next: acked,
        latest: (!latest.is_empty()).then_some(latest),
    })
}

/// Client side, whole exchange: opens `stream` and sends every record from the server's
/// resume point through `records.len()` in batches of [`BATCH`]. Returns the server's
/// final `next` (= `records.len()`). `records` is everything the client holds.
pub fn send_records<S: Read + Write>(
    session: &mut Session<S>,
    stream: &str,
    records: &[Vec<u8>],
) -> Result<u64, RecordError> {
    let mut next = open_stream(session, stream)?;
    if next > records.len() as u64 {
        return Err(RecordError::Protocol(format!(
            "server holds {next} records of '{stream}', this client only {}",
            records.len()
        )));
    }
    while (next as usize) < records.len() {
        let first = next as usize;
        let batch = &records[first..records.len().min(first + BATCH)];
        next = send_batch(session, next, batch)?.next;
    }
    Ok(next)
}

/// Server side: serves one connection until the client hangs up (`Ok` with the stream
/// id and the records appended) or breaks the protocol (`Err`; the caller drops the
/// connection and keeps serving others).
pub fn serve_records<S: Read + Write>(
    session: &mut Session<S>,
    sink: &mut dyn RecordSink,
) -> Result<(String, u64), RecordError> {
    let served = serve(session, sink);
    if let Err(RecordError::Sink(why) | RecordError::Protocol(why)) = &served {
        // Best effort: the connection is dropped either way.
        let _ = session.send(kind::ERROR, why.as_bytes());
    }
    served
}

/// Refuses a connection instead of serving it: reads the client's first request, then
/// answers it with an `ERROR` frame naming `why` (the client's report then names the
/// trainer's reason). The request is read first so that the client's bytes are not
/// unread at the close, where the kernel would reset the connection, and the client
/// could lose the answer to the reset.
pub fn refuse<S: Read + Write>(session: &mut Session<S>, why: &str) -> Result<(), RecordError> {
    session.recv()?;
    session.send(kind::ERROR, why.as_bytes())?;
    Ok(())
}

/// Longest stream id a server takes: a log's path (Linux's `PATH_MAX`, 4096) and its
/// `#` and CRC, with room to spare.
pub const MAX_STREAM_ID_BYTES: usize = 8192;

fn serve<S: Read + Write>(
    session: &mut Session<S>,
    sink: &mut dyn RecordSink,
) -> Result<(String, u64), RecordError> {
    let open = session.recv()?;
    expect_kind(open.kind, kind::OPEN)?;
    // A path's worth (the robot names a stream by its log's canonical path and a CRC):
    // the sink copies the id for every record it holds, so one of the frame's 64 MiB
    // from a peer with the key would take the trainer's memory.
    if open.payload.len() > MAX_STREAM_ID_BYTES {
        return Err(RecordError::Protocol(format!(
            "stream id of {} bytes, more than {MAX_STREAM_ID_BYTES}",
            open.payload.len()
        )));
    }
    let stream = String::from_utf8(open.payload)
        .map_err(|_| RecordError::Protocol("stream id is not UTF-8".into()))?;
    let mut next = sink.next_index(&stream).map_err(RecordError::Sink)?;
    // The resume point acknowledges every record below it: records a failed sync left
    // unsaved (held, so not sent again) are made durable first.
    sink.make_durable(&stream).map_err(RecordError::Sink)?;
    session.send(kind::RESUME, &next.to_le_bytes())?;
    let mut appended = 0;
    loop {
        let f = match session.recv() {
            Ok(f) => f,
            // A hang-up between frames ends the exchange; one inside a frame (the link
            // cut mid-batch) is an error, named.
            Err(LinkError::Hangup) => return Ok((stream, appended)),
            Err(e) => return Err(e.into()),
        };
        if f.kind == kind::FETCH {
            let name = String::from_utf8(f.payload)
                .map_err(|_| RecordError::Protocol("bundle name is not UTF-8".into()))?;
            let files = sink.bundle(&name).map_err(RecordError::Sink)?;
            let mut out = Vec::new();
            put_str(&mut out, &name, "bundle name")?;
            let count = u16::try_from(files.len()).map_err(|_| {
                RecordError::Sink(format!("bundle '{name}' has {} files", files.len()))
            })?;
            out.extend_from_slice(&count.to_le_bytes());
            for (file, bytes) in &files {
                put_str(&mut out, file, "bundle file name")?;
                let len = u32::try_from(bytes.len()).map_err(|_| {
                    RecordError::Sink(format!("bundle file '{file}' is over 4 GiB"))
                })?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(bytes);
            }
            match session.send(kind::BUNDLE, &out) {
                // Said to the robot, which would otherwise see only a closed link.
                Err(LinkError::FrameSize(len)) => {
                    return Err(RecordError::Sink(format!(
                        "bundle '{name}' takes {len} bytes, more than one uplink frame \
                         carries ({} bytes): copy it to the robot another way",
                        crate::MAX_FRAME
                    )));
                }
                r => r?,
            };
            continue;
        }
        expect_kind(f.kind, kind::RECORDS)?;
        let p = &f.payload;
        let first = u64_at(p, 0)?;
        let count = p
            .get(8..12)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| RecordError::Protocol("RECORDS without a count".into()))?;
        // The whole frame is checked before any of its records is stored: a malformed
        // frame is refused whole, not half taken. Walked twice (checked, then stored)
        // rather than listed: a 64 MiB frame of 16 M empty records reserved about
        // 400 MB for the list before its end was found malformed.
        let end = records_of(p, first, count).try_fold(12, |_, r| r.map(|(_, _, end)| end))?;
        no_stray_bytes(p, end, "the records")?;
        if first > next {
            return Err(RecordError::Protocol(format!(
                "record {first} would leave a gap after {next}"
            )));
        }
        for r in records_of(p, first, count) {
            let (index, record, _) = r?;
            if index < next {
                continue; // already held: sent before a lost acknowledgement
            }
            sink.append(&stream, index, record)
                .map_err(RecordError::Sink)?;
            next += 1;
            appended += 1;
        }
        // Before every acknowledgement, new records or not (a sink that cannot make
        // them durable acknowledges nothing; a sync with nothing new is cheap).
        sink.make_durable(&stream).map_err(RecordError::Sink)?;
        let mut ack = next.to_le_bytes().to_vec();
        put_str(
            &mut ack,
            &sink.latest_bundle().unwrap_or_default(),
            "latest bundle name",
        )?;
        session.send(kind::ACK, &ack)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KEY_LEN, Key};
    use std::collections::HashMap;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::thread;

    #[derive(Default, Clone)]
    struct MemorySink(Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>);

    impl RecordSink for MemorySink {
        fn next_index(&mut self, stream: &str) -> Result<u64, String> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(stream)
                .map_or(0, |v| v.len() as u64))
        }
        fn append(&mut self, stream: &str, index: u64, record: &[u8]) -> Result<(), String> {
            let mut m = self.0.lock().unwrap();
            let v = m.entry(stream.to_string()).or_default();
            assert_eq!(index, v.len() as u64, "append out of order");
            v.push(record.to_vec());
            Ok(())
        }
    }

    fn key() -> Key {
        Key::from_bytes([5; KEY_LEN])
    }

    /// Serves `connections` connections one after the other; returns each outcome.
    fn server(
        sink: MemorySink,
        connections: usize,
    ) -> (u16, thread::JoinHandle<Vec<Result<u64, String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = thread::spawn(move || {
            let mut sink = sink;
            (0..connections)
                .map(|_| {
                    let (stream, _) = listener.accept().unwrap();
                    let mut s = Session::server(stream, &key()).map_err(|e| e.to_string())?;
                    serve_records(&mut s, &mut sink)
                        .map(|(_, n)| n)
                        .map_err(|e| e.to_string())
                })
                .collect()
        });
        (port, h)
    }

    /// A client session with the test key to the server on `port`.
    fn connect(port: u16) -> Session<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        Session::client(tcp, &key()).unwrap()
    }

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("transition {i}").into_bytes())
            .collect()
    }

    /// A resume point or an acknowledgement with bytes after its fields is refused, as
    /// the other frames are (both were taken, the rest ignored).
    #[test]
    fn answers_with_stray_bytes_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let trainer = std::thread::spawn(move || {
            let answer = |resume: &[u8], ack: Option<&[u8]>| {
                let (tcp, _) = listener.accept().unwrap();
                let mut s = Session::server(tcp, &key()).unwrap();
                assert_eq!(s.recv().unwrap().kind, kind::OPEN);
                s.send(kind::RESUME, resume).unwrap();
                if let Some(ack) = ack {
                    assert_eq!(s.recv().unwrap().kind, kind::RECORDS);
                    s.send(kind::ACK, ack).unwrap();
                }
                let _ = s.recv(); // until the client hangs up
            };
            answer(&[0; 9], None);
            // Acknowledges record 1, names no bundle (u16 0), then one more byte.
            let mut ack = 1u64.to_le_bytes().to_vec();
            ack.extend_from_slice(&[0, 0, 7]);
            answer(&[0; 8], Some(&ack));
        });
        let e = open_stream(&mut connect(port), "run-a").unwrap_err();
        assert_eq!(
            e.to_string(),
            RecordError::Protocol("1 stray bytes after the resume point".into()).to_string()
        );
        let mut c = connect(port);
        assert_eq!(open_stream(&mut c, "run-a").unwrap(), 0);
        let e = send_batch(&mut c, 0, &records(1)).unwrap_err();
        assert!(
            e.to_string()
                .contains("1 stray bytes after the acknowledgement"),
            "{e}"
        );
        drop(c);
        trainer.join().unwrap();
    }

    #[test]
    fn every_record_arrives_exactly_once_across_a_forced_disconnect() {
        let sink = MemorySink::default();
        let (port, srv) = server(sink.clone(), 3);
        let all = records(1000);

        // Connection 1: the first 300 records, then the link dies (shut down mid-way).
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut c = Session::client(tcp.try_clone().unwrap(), &key()).unwrap();
        assert_eq!(send_records(&mut c, "run-a", &all[..300]).unwrap(), 300);
        tcp.shutdown(Shutdown::Both).unwrap();
        drop(c);

        // Connection 2: the robot logged 400 more meanwhile; everything from 300 goes.
        let mut c = connect(port);
        assert_eq!(send_records(&mut c, "run-a", &all[..700]).unwrap(), 700);
        drop(c);

        // Connection 3: reconnect with nothing new, then the rest.
        let mut c = connect(port);
        assert_eq!(send_records(&mut c, "run-a", &all).unwrap(), 1000);
        drop(c);

        let outcomes = srv.join().unwrap();
        assert_eq!(outcomes, vec![Ok(300), Ok(400), Ok(300)]);
        assert_eq!(sink.0.lock().unwrap()["run-a"], all);
    }

    /// A connection cut inside a frame is an error on the trainer's side, named as
    /// such; a hang-up between frames ends the exchange. (Any end of stream ended it as
    /// an orderly hang-up: a batch cut mid-way was never reported.)
    #[test]
    fn a_link_cut_inside_a_frame_is_named_and_a_hangup_is_not_an_error() {
        use std::io::Write;
        let sink = MemorySink::default();
        let (port, srv) = server(sink.clone(), 2);
        let mut c = connect(port);
        assert_eq!(open_stream(&mut c, "run-a").unwrap(), 0);
        // The start of a frame of 100 bytes: its length and 3 more bytes.
        c.stream().write_all(&[100, 0, 0, 0, 3, 0, 0]).unwrap();
        c.stream().shutdown(Shutdown::Write).unwrap();
        drop(c);
        let mut c = connect(port);
        assert_eq!(send_records(&mut c, "run-a", &records(3)).unwrap(), 3);
        drop(c);
        let outcomes = srv.join().unwrap();
        assert_eq!(
            outcomes,
            vec![
                Err("the link was cut inside a frame: 7 of its 104 bytes arrived".into()),
                Ok(3)
            ]
        );
    }

    /// Every record is made durable before the acknowledgement that covers it: the robot
    /// counts an acknowledged record as held for good. (The trainer acknowledged records
    /// from the page cache; a power cut lost them.) A sync that fails acknowledges
    /// nothing, and records it left unsaved are made durable before the resume point
    /// that acknowledges them (none was: only new records were, before acknowledgements).
    #[test]
    fn records_are_made_durable_before_they_are_acknowledged() {
        /// Records held, how many of them were made durable, and how many more
        /// `make_durable` calls pass before one fails.
        #[derive(Default)]
        struct Held(Vec<Vec<u8>>, usize, Option<u32>);
        #[derive(Default, Clone)]
        struct Durable(Arc<Mutex<Held>>);
        impl RecordSink for Durable {
            fn next_index(&mut self, _: &str) -> Result<u64, String> {
                Ok(self.0.lock().unwrap().0.len() as u64)
            }
            fn append(&mut self, _: &str, _: u64, record: &[u8]) -> Result<(), String> {
                self.0.lock().unwrap().0.push(record.to_vec());
                Ok(())
            }
            fn make_durable(&mut self, _: &str) -> Result<(), String> {
                let mut held = self.0.lock().unwrap();
                match held.2 {
                    Some(0) => {
                        held.2 = None;
                        return Err("injected write-back error".into());
                    }
                    Some(n) => held.2 = Some(n - 1),
                    None => {}
                }
                held.1 = held.0.len();
                Ok(())
            }
        }
        let sink = Durable::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut served = sink.clone();
        let srv = thread::spawn(move || {
            (0..4)
                .map(|_| {
                    let (stream, _) = listener.accept().unwrap();
                    let mut s = Session::server(stream, &key()).unwrap();
                    serve_records(&mut s, &mut served).map(|(_, n)| n).ok()
                })
                .collect::<Vec<_>>()
        });
        let all = records(50);
        for end in [7, 20, 50] {
            let mut c = connect(port);
            let acked = send_records(&mut c, "run-d", &all[..end]).unwrap();
            assert_eq!(acked, end as u64);
            let durable = sink.0.lock().unwrap().1;
            assert_eq!(durable, end, "acknowledged {acked}, durable {durable}");
        }
        // The sync after the next records fails (the one before the resume point
        // passes): nothing more is acknowledged, though the records are held.
        sink.0.lock().unwrap().2 = Some(1);
        let more = records(60);
        let mut c = connect(port);
        assert!(send_records(&mut c, "run-d", &more).is_err());
        drop(c);
        assert_eq!(sink.0.lock().unwrap().0.len(), 60);
        assert_eq!(sink.0.lock().unwrap().1, 50);
        let outcomes = srv.join().unwrap();
        assert_eq!(outcomes, [Some(7), Some(13), Some(30), None]);
        // The robot reconnects: the resume point acknowledges the held records, so they
        // are made durable before it is sent (it acknowledged them unsaved).
        let (port, srv) = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut served = sink.clone();
            let srv = thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let mut s = Session::server(stream, &key()).unwrap();
                serve_records(&mut s, &mut served).map(|(_, n)| n).unwrap()
            });
            (port, srv)
        };
        let mut c = connect(port);
        assert_eq!(send_records(&mut c, "run-d", &more).unwrap(), 60);
        drop(c);
        assert_eq!(srv.join().unwrap(), 0, "nothing new was appended");
        assert_eq!(sink.0.lock().unwrap().1, 60);
    }

    #[test]
    fn a_batch_resent_after_a_lost_ack_is_not_stored_twice() {
        // The server stored records 0..10, but the client never saw the acknowledgement
        // and resends from 8.
        let sink = MemorySink::default();
        let mut s = sink.clone();
        for (i, r) in records(10).iter().enumerate() {
            s.append("run-b", i as u64, r).unwrap();
        }
        let (port, srv) = server(sink.clone(), 1);
        let mut c = connect(port);
        c.send(kind::OPEN, b"run-b").unwrap();
        let resume = c.recv().unwrap();
        assert_eq!(u64_at(&resume.payload, 0).unwrap(), 10);
        let mut p = 8u64.to_le_bytes().to_vec();
        p.extend_from_slice(&4u32.to_le_bytes());
        for r in &records(12)[8..12] {
            p.extend_from_slice(&(r.len() as u32).to_le_bytes());
            p.extend_from_slice(r);
        }
        c.send(kind::RECORDS, &p).unwrap();
        let ack = c.recv().unwrap();
        assert_eq!(u64_at(&ack.payload, 0).unwrap(), 12);
        drop(c);
        assert_eq!(srv.join().unwrap(), vec![Ok(2)]);
        assert_eq!(sink.0.lock().unwrap()["run-b"], records(12));
    }

    #[test]
    fn malformed_records_end_the_connection_not_the_server() {
        let sink = MemorySink::default();
        let (port, srv) = server(sink.clone(), 2);
        // A gap: records starting at 5 when the server holds none.
        let mut c = connect(port);
        c.send(kind::OPEN, b"run-c").unwrap();
        assert_eq!(c.recv().unwrap().kind, kind::RESUME);
        let mut p = 5u64.to_le_bytes().to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&3u32.to_le_bytes());
        p.extend_from_slice(b"abc");
        c.send(kind::RECORDS, &p).unwrap();
        drop(c);
        // The next, well-formed client is served normally.
        let mut c = connect(port);
        assert_eq!(send_records(&mut c, "run-c", &records(3)).unwrap(), 3);
        drop(c);
        let outcomes = srv.join().unwrap();
        assert!(
            outcomes[0].as_ref().unwrap_err().contains("gap"),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1], Ok(3));
        assert_eq!(sink.0.lock().unwrap()["run-c"], records(3));
    }

    /// A stream id longer than a path is refused before the sink sees it: the sink
    /// copies it for every record, so a peer with the key could take the trainer's
    /// memory with a 60 MiB one.
    #[test]
    fn an_overlong_stream_id_is_refused() {
        let sink = MemorySink::default();
        let (port, srv) = server(sink.clone(), 1);
        let mut c = connect(port);
        c.send(kind::OPEN, &vec![b'a'; MAX_STREAM_ID_BYTES + 1])
            .unwrap();
        // Answered with the reason, not a RESUME.
        let answer = c.recv().unwrap();
        assert_eq!(answer.kind, kind::ERROR);
        let outcomes = srv.join().unwrap();
        assert!(
            outcomes[0]
                .as_ref()
                .unwrap_err()
                .contains("stream id of 8193 bytes, more than 8192"),
            "{outcomes:?}"
        );
        assert!(sink.0.lock().unwrap().is_empty());
    }

    /// A sink that publishes one bundle.
    struct Publishing(Vec<(String, Vec<u8>)>);
    impl RecordSink for Publishing {
        fn next_index(&mut self, _: &str) -> Result<u64, String> {
            Ok(0)
        }
        fn append(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn latest_bundle(&mut self) -> Option<String> {
            Some("0000500".into())
        }
        fn bundle(&mut self, name: &str) -> Result<BundleFiles, String> {
            if name != "0000500" {
                return Err(format!("no bundle '{name}' here"));
            }
            Ok(self.0.clone())
        }
    }

    /// One connection: poll, learn the latest bundle, fetch it.
    fn fetch_from(files: Vec<(String, Vec<u8>)>) -> Result<BundleFiles, RecordError> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let srv = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut s = Session::server(tcp, &key()).unwrap();
            let _ = serve_records(&mut s, &mut Publishing(files));
        });
        let mut c = connect(port);
        assert_eq!(open_stream(&mut c, "run-e").unwrap(), 0);
        let ack = send_batch(&mut c, 0, &[]).unwrap();
        assert_eq!(ack.latest.as_deref(), Some("0000500"));
        let got = fetch_bundle(&mut c, "0000500");
        drop(c);
        srv.join().unwrap();
        got
    }

    #[test]
    fn bundles_come_down_and_unsafe_file_names_are_refused() {
        let files = vec![
            ("manifest.toml".to_string(), b"format = 1".to_vec()),
            ("denoiser.onnx".to_string(), vec![7u8; 100_000]),
        ];
        assert_eq!(fetch_from(files.clone()).unwrap(), files);
        for bad in ["../evil", "a/b", "..", ""] {
            let err = fetch_from(vec![(bad.to_string(), vec![1])]).unwrap_err();
            assert!(err.to_string().contains("not a plain name"), "{bad}: {err}");
        }
        let twice = vec![
            ("manifest.toml".to_string(), b"a".to_vec()),
            ("manifest.toml".to_string(), b"b".to_vec()),
        ];
        let err = fetch_from(twice).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    /// A sink that refuses every record, as the trainer refuses another robot's.
    struct Refusing;
    impl RecordSink for Refusing {
        fn next_index(&mut self, _: &str) -> Result<u64, String> {
            Ok(0)
        }
        fn append(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), String> {
            Err("observation names differ from the run's".into())
        }
    }

    #[test]
    fn a_refusal_reaches_the_client_with_the_servers_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let srv = thread::spawn(move || {
            (0..2)
                .map(|i| {
                    let (tcp, _) = listener.accept().unwrap();
                    let mut s = Session::server(tcp, &key()).unwrap();
                    let r = if i == 0 {
                        serve_records(&mut s, &mut Refusing)
                    } else {
                        serve_records(&mut s, &mut Publishing(vec![]))
                    };
                    r.map(|_| ()).map_err(|e| e.to_string())
                })
                .collect::<Vec<_>>()
        });
        // A record the sink refuses.
        let mut c = connect(port);
        let err = send_records(&mut c, "run-f", &records(3)).unwrap_err();
        assert!(matches!(err, RecordError::Refused(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "the trainer refused: observation names differ from the run's"
        );
        drop(c);
        // A bundle the server does not have.
        let mut c = connect(port);
        open_stream(&mut c, "run-f").unwrap();
        let err = fetch_bundle(&mut c, "0000999").unwrap_err().to_string();
        assert_eq!(err, "the trainer refused: no bundle '0000999' here");
        drop(c);
        let outcomes = srv.join().unwrap();
        assert!(outcomes.iter().all(|o| o.is_err()), "{outcomes:?}");
    }

    #[test]
    fn truncated_record_lists_are_refused() {
        let sink = MemorySink::default();
        let (port, srv) = server(sink.clone(), 1);
        let mut c = connect(port);
        c.send(kind::OPEN, b"run-d").unwrap();
        c.recv().unwrap();
        let mut p = 0u64.to_le_bytes().to_vec();
        p.extend_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&100u32.to_le_bytes());
        p.extend_from_slice(b"short");
        c.send(kind::RECORDS, &p).unwrap();
        drop(c);
        let outcomes = srv.join().unwrap();
        assert!(
            outcomes[0].as_ref().unwrap_err().contains("runs past"),
            "{outcomes:?}"
        );
        assert!(sink.0.lock().unwrap().get("run-d").is_none());
    }

    /// A frame that is malformed after its first records (stray bytes, a truncated
    /// third record) is refused whole: none of its records is stored. Its first two
    /// used to be stored (and trained on) before the refusal.
    #[test]
    fn a_malformed_frame_stores_none_of_its_records() {
        for tail in [&b"xyz"[..], &[9, 0, 0, 0, b'a'][..]] {
            let sink = MemorySink::default();
            let (port, srv) = server(sink.clone(), 1);
            let mut c = connect(port);
            c.send(kind::OPEN, b"run-f").unwrap();
            c.recv().unwrap();
            let count = if tail.len() == 3 { 2u32 } else { 3 };
            let mut p = 0u64.to_le_bytes().to_vec();
            p.extend_from_slice(&count.to_le_bytes());
            for r in records(2) {
                p.extend_from_slice(&(r.len() as u32).to_le_bytes());
                p.extend_from_slice(&r);
            }
            p.extend_from_slice(tail);
            c.send(kind::RECORDS, &p).unwrap();
            drop(c);
            let outcomes = srv.join().unwrap();
            let err = outcomes[0].as_ref().unwrap_err();
            // Each tail named as what it is.
            let said = if tail.len() == 3 {
                "stray"
            } else {
                "runs past"
            };
            assert!(err.contains(said), "{err}");
            assert!(sink.0.lock().unwrap().get("run-f").is_none());
        }
    }

    /// A bundle too large for one frame is refused with the reason, which reaches the
    /// robot; it used to see only a closed connection.
    #[test]
    fn a_bundle_larger_than_a_frame_is_refused_by_name() {
        let files = vec![("denoiser.onnx".to_string(), vec![0u8; crate::MAX_FRAME])];
        let err = fetch_from(files).unwrap_err().to_string();
        assert!(err.contains("more than one uplink frame carries"), "{err}");
    }
}
