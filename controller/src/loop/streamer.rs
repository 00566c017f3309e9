//! The uplink streamer: sends the transition log to the trainer while the robot runs.
//!
//! ```text
//!  control thread ──► logger thread ──► transitions.log ──(LogTail)──► streamer ──TCP──► trainer
//! ```
//!
//! The streamer reads the log file, never the control thread's channels, so a slow or
//! absent trainer cannot hold up the loop or the logger: the log on disk is the buffer.
//! Each connection authenticates ([`uplink::Session`]), asks the trainer how many records
//! of this log it holds, and sends the rest in order ([`uplink::records`]): across
//! disconnects every record arrives exactly once. The stream id is the log's canonical
//! path plus the CRC of its first record (the run header), so two logs never share an
//! id. A log whose first record is damaged is not streamed at all: the next whole record
//! would name it anew, and the trainer would take every record again under that name.
//! Only records on disk are sent (up to the logger's last `fdatasync`, at most
//! [`SYNC_EVERY`](super::log::SYNC_EVERY) behind): a record the trainer acknowledged
//! and a power cut then took from the robot's log would have the next run's records
//! taken for ones the trainer holds.
//!
//! **Bundles down.** Every acknowledgement names the trainer's newest bundle. A new name
//! is fetched into `OUT/bundles/NAME`, verified like any bundle (signature against the
//! run's trusted key, hashes, shapes, the robot's dimensions; and the running bundle's
//! task and observation names) and built into a policy here, off the control thread and
//! at a lower priority (nice 10, except with `--two-speed`, whose candidate worker would
//! inherit it); the control thread swaps it in at the next episode boundary
//! (`Phase::Idle`, before `Reset`). A bundle that fails any check is recorded and never
//! used: the running policy stays. A download cut short is tried again on the next
//! connection, up to [`FETCH_TRIES`] times.
//!
//! At most about [`WINDOW`] records are held in memory; a trainer that lost records it
//! had acknowledged gets them again, read from the log.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::console::ConsoleTx;
use super::log::{LogTail, MAGIC, SyncedLen};
use super::realtime;
use super::{Brain, check_dims, check_rate};
use crate::runtime::PolicyOptions;
use firmware_config::RobotConfig;
use firmware_config::protocol::crc32;
use shared_model::Manifest;
use shared_model::manifest::Trust;
use uplink::records::{self, BATCH};
use uplink::{Key, Session};

/// Where and how to stream.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    /// The trainer's `finetune --listen` address, e.g. `10.0.0.2:7878`.
    pub addr: String,
    pub key: Key,
    /// How long to keep sending after the run ends before giving up (the records stay
    /// in the log either way).
    pub drain: Duration,
    /// Take new bundles from the trainer (`None`: stream transitions only).
    pub swap: Option<SwapConfig>,
}

/// How a bundle from the trainer becomes a policy.
#[derive(Clone, Debug)]
pub struct SwapConfig {
    pub trust: Trust,
    pub options: PolicyOptions,
    pub two_speed: bool,
    /// How chunks are played, as for the first bundle.
    pub play: super::PlayOptions,
    pub robot: RobotConfig,
    /// The firmware is the simulated one (`controller run --sim`), which maps commands
    /// back with the same robot file: a bundle's other action mapping cancels out there,
    /// and is a warning, as at the run's start, not a refusal.
    pub simulated: bool,
    /// The manifest of the bundle the run started with: a new bundle fine-tunes that
    /// policy, so it must be for the same task with the same observation names (the
    /// dimensions are checked against the robot).
    pub replaces: Manifest,
}

/// Records held in memory at most, read from the log and not yet acknowledged (about
/// 8 MB at 500 bytes a record, plus one [`super::log::TAIL_READ_MAX`] read): while the
/// trainer is unreachable the rest waits in the log, which is the buffer.
const WINDOW: usize = 64 * BATCH;
/// How often an idle session sends an empty batch: a poll for new bundles, and a
/// keepalive well inside the trainer's 30 s session timeout.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Failed downloads of one bundle before it counts as refused (a dropped connection
/// mid-download is retried on the next one).
const FETCH_TRIES: u32 = 3;

/// A bundle the trainer offered.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BundleOffer {
    pub name: String,
    /// `None`: ready, handed to the control thread; else why it was refused.
    pub error: Option<String>,
}

/// A verified policy ready to swap in, with its bundle's name.
pub type Ready = (String, Brain);

/// The newest verified policy not yet swapped in: one slot, a newer one replacing one
/// not taken yet. A queue held every bundle exported while the robot was paused or in a
/// long episode, each a whole policy (two-speed: two, and a worker thread), and the
/// control thread then dropped all but the last.
///
/// The policy a swap replaces goes back the same way, to be dropped by the uplink's
/// thread ([`SwapSlot::release_retired`]): freeing a whole policy (its weights, a
/// two-speed worker's) on the control thread cost the boundary tick its latency.
#[derive(Clone, Default)]
pub struct SwapSlot(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    ready: Option<Ready>,
    /// The policy the last swap replaced, until the uplink's thread drops it.
    retired: Option<Brain>,
}

impl SwapSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `ready` in the slot; returns the policy it replaces, for the caller to drop
    /// (off the control thread).
    pub fn offer(&self, ready: Ready) -> Option<Ready> {
        self.lock().ready.replace(ready)
    }

    /// Drops (here, on the caller's thread) the policy the last swap replaced, if the
    /// control thread has handed one back; whether it had.
    pub fn release_retired(&self) -> bool {
        let retired = self.lock().retired.take();
        retired.is_some()
    }

    /// Swaps the policy in the slot, if any, into `running`; the one it replaces stays
    /// in the slot for [`Self::release_retired`]. Never waits: with the slot being filled
    /// right now, nothing (it is taken at the next episode boundary). `before` sees the
    /// running policy just before it is replaced. The new policy's name, when one was
    /// swapped in.
    pub fn swap_into(&self, running: &mut Brain, before: impl FnOnce(&Brain)) -> Option<String> {
        let mut slot = match self.0.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let (name, brain) = slot.ready.take()?;
        before(running);
        // One handed back before is dropped here: the uplink's thread releases it within
        // its loop's 20 ms, and a swap needs a bundle offered since, so in practice the
        // place is free.
        slot.retired = Some(std::mem::replace(running, brain));
        Some(name)
    }
}

/// What the streamer did (in `report.json`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct UplinkSummary {
    pub stream: Option<String>,
    /// Records read from the log.
    pub logged: u64,
    /// Records the trainer acknowledged (its count of this stream).
    pub acknowledged: u64,
    pub connections: u64,
    /// Records sent again because the trainer lost them after acknowledging them.
    pub resent: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Bundles the trainer offered, in order.
    pub bundles: Vec<BundleOffer>,
    /// True in the `report.json` written as the run's uplink began its drain (the
    /// counts then); the report is written again when the drain ends.
    pub draining: bool,
    /// A stop signal during the drain cut it short ([`Streamer::finish_unless`]): the
    /// records not acknowledged stay in the log, and the next run into this `--out`
    /// sends them.
    pub drain_cut: bool,
}

/// The running streamer thread.
pub struct Streamer {
    stop: Arc<AtomicBool>,
    /// Set by [`Streamer::finish_unless`]: the thread ends at once, drained or not.
    abort: Arc<AtomicBool>,
    summary: Arc<Mutex<UplinkSummary>>,
    /// Taken by [`Streamer::finish`].
    handle: Option<JoinHandle<()>>,
    /// A handle on the connection in use (or being set up), cut by [`Streamer::finish`]
    /// when the thread outlasts its drain: reads time out one at a time, so a trainer
    /// that trickles bytes held the run's end for minutes.
    link: Arc<Mutex<Option<TcpStream>>>,
    drain: Duration,
}

/// How long past its drain time [`Streamer::finish`] waits before it cuts the link.
const CUT_AFTER_DRAIN: Duration = Duration::from_secs(5);

impl Streamer {
    /// Starts the thread; ready policies arrive on the returned channel.
    /// Streams `log`, no further than `synced` where given (the writer's synced
    /// length: [`LogWriter::synced_len`](super::log::LogWriter::synced_len)); a
    /// finished log, no longer written, needs none.
    pub fn spawn(
        cfg: UplinkConfig,
        log: &Path,
        synced: Option<SyncedLen>,
        console: ConsoleTx,
    ) -> std::io::Result<(Streamer, SwapSlot)> {
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let summary = Arc::new(Mutex::new(UplinkSummary::default()));
        let link = Arc::new(Mutex::new(None));
        let (s, st, ab, l) = (summary.clone(), stop.clone(), abort.clone(), link.clone());
        let log = log.to_path_buf();
        let slot = SwapSlot::default();
        let ready = slot.clone();
        let drain = cfg.drain;
        let handle = realtime::spawn_in_run("uplink", move || {
            stream_main(cfg, log, synced, (&st, &ab), (&s, &l), ready, console)
        })?;
        Ok((
            Streamer {
                stop,
                abort,
                summary,
                handle: Some(handle),
                link,
                drain,
            },
            slot,
        ))
    }

    /// What the thread has done so far, marked [`UplinkSummary::draining`].
    pub fn summary_so_far(&self) -> UplinkSummary {
        UplinkSummary {
            draining: true,
            ..self
                .summary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }
    }

    /// Asks the thread to send what is left (for up to the configured drain time) and
    /// waits for it, cutting its connection [`CUT_AFTER_DRAIN`] past the drain time.
    pub fn finish(self) -> UplinkSummary {
        self.finish_unless(|| false)
    }

    /// As [`Streamer::finish`], but once `give_up` says so (a stop signal during the
    /// drain: a person or a service manager wants the process gone) the thread is told
    /// to end and its connection is cut at once. Nothing is lost: what the trainer has
    /// not acknowledged stays in the log for the next run into this `--out`.
    pub fn finish_unless(mut self, give_up: impl Fn() -> bool) -> UplinkSummary {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.take().expect("finished once");
        let cut_at = Instant::now() + self.drain + CUT_AFTER_DRAIN;
        let mut cut = false;
        while !handle.is_finished() && Instant::now() < cut_at {
            if give_up() {
                self.abort.store(true, Ordering::SeqCst);
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !handle.is_finished()
            && let Some(tcp) = self.link.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            // Its blocked read or write fails now, and it ends.
            let _ = tcp.shutdown(std::net::Shutdown::Both);
        }
        let _ = handle.join();
        let mut summary = self
            .summary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        summary.drain_cut = cut;
        summary
    }
}

/// Dropped without [`Streamer::finish`] (a run that fails after starting it): the thread
/// is asked to stop as at `finish` (it drains, then ends), unjoined; it ran on. (Only
/// `finish` cuts the connection past the drain: a trainer that trickles bytes can hold
/// a dropped streamer's thread longer.)
impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The uplink thread. `summary` and `link` are shared with the [`Streamer`]'s
/// `finish`, which reads the one and cuts the other.
fn stream_main(
    cfg: UplinkConfig,
    log: PathBuf,
    synced: Option<SyncedLen>,
    (stop, abort): (&AtomicBool, &AtomicBool),
    (summary, link): (&Mutex<UplinkSummary>, &Mutex<Option<TcpStream>>),
    ready: SwapSlot,
    console: ConsoleTx,
) {
    // Its lines go through the run's console thread, never to stderr from here: a
    // stderr nobody reads (a paused terminal) held this thread in a write, and the run's
    // end, which joins it after the drain, with it (the report never written).
    let say = |line: String| console.line(line);
    // Fetching and building a bundle must not take CPU time the control thread needs
    // (the demo's one watchdog stop came while a bundle was built; the cause is not
    // confirmed). Failing to lower it leaves the thread at the default, as before.
    // Not with --two-speed: a new bundle's candidate worker is started on this thread
    // and would inherit the lower priority for good (an unprivileged process cannot
    // raise it again); its candidates would then lag the control loop's ticks.
    if !cfg.swap.as_ref().is_some_and(|s| s.two_speed) {
        let _ = super::realtime::background_priority();
    }
    let bundles_dir = log.parent().unwrap_or(Path::new(".")).join("bundles");
    // Names already fetched (used or refused): never fetched twice.
    let mut seen: Vec<String> = vec![];
    // When the newest bundle taken from the trainer was exported (its signed time): an
    // older one offered after it is refused.
    let mut newest_export: Option<u64> = None;
    let mut fetch_failures: std::collections::HashMap<String, u32> = Default::default();
    let mut last_poll = Instant::now();
    let open_tail = || {
        let tail = LogTail::new(&log);
        match &synced {
            Some(synced) => tail.behind(synced.clone()),
            None => tail,
        }
    };
    let mut tail = open_tail();
    // The stream id names the log by its canonical path: `--out r1` and `--out /data/r1`
    // are one log (two ids would have the trainer take it all again).
    let log_name = std::fs::canonicalize(&log).unwrap_or_else(|_| log.clone());
    // Records read and not yet acknowledged, at most about WINDOW of them; `base` is
    // the index of `pending[0]`, `read` the index of the next record the tail returns
    // (records below `base` are dropped as they are read: the trainer holds them).
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut base = 0u64;
    let mut read = 0u64;
    // Damaged stretches are named once, also when the log is read again.
    let mut damage_noted_to = 0u64;
    let mut stream_id: Option<String> = None;
    let mut legacy_id: Option<Legacy> = None;
    let mut short_log_noted = false;
    let mut session: Option<Session<TcpStream>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut next_try = Instant::now();
    let mut drain_until: Option<Instant> = None;
    // The summary is shared with `finish`; a poisoned lock still holds valid counters.
    let edit = |f: &mut dyn FnMut(&mut UplinkSummary)| {
        f(&mut summary.lock().unwrap_or_else(|e| e.into_inner()))
    };
    // Errors also go to the console (this thread is not the control thread), each
    // once until another one comes: a reconnect loop would repeat it every 2 s.
    let mut last_printed: Option<String> = None;
    let mut fail = |e: String| {
        if last_printed.as_ref() != Some(&e) {
            say(format!(
                "uplink: {e} (retrying; the robot keeps running and logging)"
            ));
            last_printed = Some(e.clone());
        }
        edit(&mut |s| {
            s.errors += 1;
            s.last_error = Some(e.clone());
        })
    };
    loop {
        if abort.load(Ordering::SeqCst) {
            return;
        }
        let stopping = stop.load(Ordering::SeqCst);
        let polled = pending.len() < WINDOW;
        // The last poll returned no record: the tail is at the log's end. (Not "nothing
        // pending": records the trainer holds already are read and dropped, a
        // TAIL_READ_MAX at a time, before the ones it lacks.)
        let mut at_end = false;
        // The log's end was read (not a read error, which also ends the reading).
        let mut reached_end = false;
        if polled {
            match tail.poll() {
                Ok(new) => {
                    at_end = new.is_empty();
                    reached_end = at_end;
                    // The first record (at byte MAGIC.len()) skipped as damaged: seen in
                    // the poll that skips it, before its stretch is noted and drained.
                    let first_damaged = read == 0
                        && tail
                            .damaged
                            .first()
                            .is_some_and(|d| d.offset == MAGIC.len() as u64);
                    if stream_id.is_none() && first_damaged {
                        let e = format!(
                            "{}: its first record (the run header, at byte {}) is damaged, and \
                             the log's stream id is taken from it: under another id the \
                             trainer would take every record again, so nothing of this log \
                             is streamed and this run takes no bundle swaps (its runs' \
                             datasets have their episodes; record into a new --out to stream \
                             again)",
                            log.display(),
                            MAGIC.len()
                        );
                        say(format!("uplink: {e}"));
                        edit(&mut |s| {
                            s.errors += 1;
                            s.last_error = Some(e.clone());
                        });
                        return;
                    }
                    if stream_id.is_none()
                        && let Some(first) = new.first()
                    {
                        let crc = crc32(first);
                        let id = format!("{}#{crc:08x}", log_name.display());
                        // How a controller before the canonical name called this log.
                        let old = format!("{}#{crc:08x}", log.display());
                        legacy_id = Some(old)
                            .filter(|old| *old != id)
                            .map(|name| Legacy { name, failed: 0 });
                        edit(&mut |s| s.stream = Some(id.clone()));
                        stream_id = Some(id);
                    }
                    for record in new {
                        if read >= base {
                            pending.push_back(record);
                        }
                        read += 1;
                    }
                    edit(&mut |s| s.logged = s.logged.max(read));
                    for d in tail.damaged.drain(..) {
                        if d.offset < damage_noted_to {
                            continue;
                        }
                        damage_noted_to = d.offset + d.len;
                        say(format!(
                            "uplink: {}: {} damaged bytes at byte {} skipped; the records after them are sent",
                            log.display(),
                            d.len,
                            d.offset
                        ));
                    }
                }
                Err(e) => {
                    // Nothing more can be read now; when stopping, what is pending is
                    // what is left to send.
                    at_end = true;
                    fail(e.to_string())
                }
            }
        }
        if reached_end && read < base && !short_log_noted {
            // The trainer acknowledged records this log does not have (only synced
            // records are sent, so an older controller's log that a power cut cut back,
            // or another log with the same first record): the records written after
            // them are taken for ones it holds, and not sent. Said once.
            short_log_noted = true;
            fail(format!(
                "the trainer holds {base} records of this log, which has only {read}: the \
                 log lost records after it sent them, and the records written since are \
                 taken for ones the trainer holds, not sent (this run's dataset has them; \
                 record the next runs into a new --out)"
            ));
        }
        if stopping {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + cfg.drain);
            // (Nothing pending and nothing more to read: every whole record is sent.)
            if (at_end && pending.is_empty()) || Instant::now() >= until {
                // The logger has closed the log: what is left is not a whole record.
                let left = tail.unread_bytes();
                if left > 0 && pending.is_empty() {
                    say(format!(
                        "uplink: {}: its last {left} bytes are not a whole record (torn or damaged); they are not sent",
                        log.display()
                    ));
                }
                return;
            }
        }
        if session.is_none()
            && let Some(id) = stream_id.clone()
            && Instant::now() >= next_try
        {
            match connect_stream(&cfg, &id, &mut legacy_id, link, &say) {
                Ok((s, resume, held_as)) => {
                    if held_as != id {
                        edit(&mut |s| s.stream = Some(held_as.clone()));
                        stream_id = Some(held_as);
                    }
                    edit(&mut |s| s.connections += 1);
                    if resume < base {
                        // The trainer lost records it had acknowledged (its uplink
                        // log was cut back): they are read from the log again.
                        fail(format!(
                            "the trainer holds {resume} records of this log but acknowledged {base} before; sending the rest again from the log"
                        ));
                        // Saturating: a trainer that answers with wild counts (u64::MAX,
                        // then 0, again and again) overflowed this and panicked the run.
                        edit(&mut |s| s.resent = s.resent.saturating_add(base - resume));
                        tail = open_tail();
                        pending.clear();
                        read = 0;
                    } else {
                        // Drop what the trainer already holds (sent before a lost ack).
                        let held = usize::try_from(resume - base)
                            .unwrap_or(usize::MAX)
                            .min(pending.len());
                        pending.drain(..held);
                    }
                    base = resume;
                    edit(&mut |s| s.acknowledged = resume);
                    session = Some(s);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    fail(e);
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        if let Some(s) = session.as_mut() {
            let mut latest = None;
            let mut broken = false;
            // An empty batch once a second is a poll for new bundles, and keeps an idle
            // session alive also without swaps: the trainer drops a session silent for
            // 30 s, so an idle `--no-swap` robot reconnected twice a minute (with an error
            // logged each time).
            let poll = last_poll.elapsed() >= POLL_EVERY;
            while !pending.is_empty() || (poll && latest.is_none()) {
                let n = pending.len().min(BATCH);
                let batch: Vec<Vec<u8>> = pending.range(..n).cloned().collect();
                match records::send_batch(s, base, &batch) {
                    Ok(ack) => {
                        pending.drain(..n);
                        base = ack.next;
                        edit(&mut |s| s.acknowledged = ack.next);
                        latest = Some(ack.latest);
                        last_poll = Instant::now();
                    }
                    Err(e) => {
                        fail(format!(
                            "trainer {}: sending records {base}.. and waiting for their \
                             acknowledgement: {e}",
                            cfg.addr
                        ));
                        broken = true;
                        break;
                    }
                }
            }
            // Not while the run's end drains the log (asked since this turn began,
            // too): no episode is left to take a bundle, whose download and build
            // (a worker thread in two-speed mode) would hold the run's end.
            if let (Some(swap), Some(Some(name))) = (&cfg.swap, latest)
                && !broken
                && !seen.contains(&name)
                && !stop.load(Ordering::SeqCst)
            {
                // A name that could not be a bundle's directory is refused before the
                // fetch: the download (up to a frame's 64 MiB, written to disk) came
                // first.
                let outcome = if let Some(problem) = bundle_name_problem(&name) {
                    Some(Err(problem))
                } else {
                    match records::fetch_bundle(s, &name) {
                        Ok(files) => Some(
                            prepare(&bundles_dir, &name, &files, swap, newest_export).map(
                                |(brain, exported)| {
                                    newest_export = newest_export.max(Some(exported));
                                    brain
                                },
                            ),
                        ),
                        Err(e) => {
                            broken = true;
                            let tries = fetch_failures.entry(name.clone()).or_insert(0);
                            *tries += 1;
                            if *tries < FETCH_TRIES {
                                fail(format!("fetching bundle {name}: {e}; trying again"));
                                None
                            } else {
                                Some(Err(format!("fetching: {e} ({FETCH_TRIES} tries)")))
                            }
                        }
                    }
                };
                // A download cut short is tried again on the next connection.
                if let Some(outcome) = outcome {
                    seen.push(name.clone());
                    let offer = settle(name, outcome, &ready, &say);
                    edit(&mut |s| s.bundles.push(offer.clone()));
                }
            }
            if broken {
                session = None;
                next_try = Instant::now() + backoff;
            }
        }
        // The policy a swap replaced is freed here, not on the control thread.
        ready.release_retired();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Hands a verified bundle's policy to the control thread, or says why it was refused.
fn settle(
    name: String,
    outcome: Result<Brain, String>,
    ready: &SwapSlot,
    say: &dyn Fn(String),
) -> BundleOffer {
    let error = match outcome {
        Ok(brain) => {
            say(format!(
                "uplink: bundle {name} verified; it takes over at the next episode"
            ));
            if let Some((older, _)) = ready.offer((name.clone(), brain)) {
                say(format!(
                    "uplink: bundle {older} was not taken yet; {name} replaces it"
                ));
            }
            None
        }
        Err(e) => {
            say(format!(
                "uplink: bundle {name} refused: {e}; the robot keeps the policy it runs"
            ));
            Some(e)
        }
    };
    BundleOffer { name, error }
}

/// Longest bundle name taken: a directory name (Linux's `NAME_MAX`), less the staging
/// directory's `.` and `.tmp`.
const MAX_BUNDLE_NAME: usize = 250;

/// Why a bundle the trainer offers under `name` cannot be taken, if it cannot: not a
/// plain name, or hidden (`.NAME.tmp` is the staging directory), or too long for one.
/// Shown as the trainer sent it, cut short and escaped.
fn bundle_name_problem(name: &str) -> Option<String> {
    let plain = records::plain_name(name) && !name.starts_with('.');
    (!plain || name.len() > MAX_BUNDLE_NAME).then(|| {
        let shown: String = name.chars().take(80).collect();
        let cut = if shown.len() < name.len() { "…" } else { "" };
        format!("bundle name {shown:?}{cut} is not a plain name of at most {MAX_BUNDLE_NAME} bytes")
    })
}

/// Writes a fetched bundle to a temporary directory, verifies it and builds its policy
/// there, and only then puts it at `dir/name`: a copy fetched again (after a restart)
/// that fails verification leaves the one verified before as it was.
fn prepare(
    dir: &Path,
    name: &str,
    files: &[(String, Vec<u8>)],
    swap: &SwapConfig,
    not_before: Option<u64>,
) -> Result<(Brain, u64), String> {
    if let Some(problem) = bundle_name_problem(name) {
        return Err(problem);
    }
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |e: std::io::Error| format!("writing {}: {e}", target.display());
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io)?;
    for (file, bytes) in files {
        std::fs::write(tmp.join(file), bytes).map_err(io)?;
    }
    let brain = verify(&tmp, &target, name, swap, not_before);
    if brain.is_ok() {
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target).map_err(io)?;
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    brain
}

/// [`prepare`]'s checks of the bundle written to `tmp`, which will be `target`; with its
/// signed export time. One exported before `not_before` (the newest bundle taken in
/// this run) or before the bundle the run started with is refused: the names a trainer
/// offers are not signed, so whoever holds the uplink key could offer any bundle ever
/// signed, in any order (until the first swap, any older one was taken).
fn verify(
    tmp: &Path,
    target: &Path,
    name: &str,
    swap: &SwapConfig,
    not_before: Option<u64>,
) -> Result<(Brain, u64), String> {
    let mut bundle = shared_model::load_bundle(tmp, &swap.trust).map_err(|e| e.to_string())?;
    // Messages name where it will be.
    bundle.dir = target.to_path_buf();
    check_dims(&swap.robot, &bundle)
        .and_then(|()| check_rate(&swap.robot, &bundle))
        .map_err(|e| e.to_string())?;
    let (new, old) = (&bundle.manifest, &swap.replaces);
    // As `controller run` checks the bundle it starts with: a running bundle that named
    // no actions (or observations: `replacement_refused` takes names for those) was
    // checked against nothing.
    super::check_action_names(&swap.robot, new)?;
    let names = &new.observation.names;
    if let Some(e) = swap.robot.observation.names_reordered(names, "the bundle") {
        return Err(e);
    }
    let names_warning = (swap.robot.observation.names_differ(names, "the bundle"))
        .filter(|_| names != &old.observation.names);
    // And its action mapping (the note for a bundle without one is `controller run`'s;
    // under --sim a warning, said once the bundle passed the rest).
    let mapping_warning = match super::check_action_mapping(&swap.robot, new) {
        Err(e) if swap.simulated => Some(e),
        Err(e) => return Err(e),
        Ok(_) => None,
    };
    let exported = new.provenance.created_unix;
    let newest = not_before.unwrap_or(0).max(old.provenance.created_unix);
    if exported < newest {
        return Err(format!(
            "it was exported at {exported} (Unix time), before the running bundle or the \
             newest taken in this run ({newest}): an older bundle is not taken back"
        ));
    }
    if let Some(why) = crate::runtime::replacement_refused(new, old) {
        return Err(why);
    }
    // The chain runs as many steps as the run started with (`--executed-steps`, else
    // the starting bundle's).
    let running = (swap.options.executed_steps).unwrap_or(old.diffusion.executed_steps);
    let executed = crate::runtime::swapped_in_executed_steps(running, new)?;
    let options = PolicyOptions {
        executed_steps: Some(executed),
        ..crate::runtime::swapped_in_options(&swap.options, name, new)
    };
    let brain = Brain::with_play(&bundle, &options, swap.two_speed, swap.play)
        .map_err(|e| format!("{e:#}"))?;
    if let Some(e) = mapping_warning {
        crate::note!(
            "warning: bundle {name}: {e} (no difference under --sim: the simulated firmware \
             maps the commands back with the same robot file)"
        );
    }
    // New names only (the running bundle's were said at the start).
    if let Some(w) = names_warning {
        crate::note!("warning: bundle {name}: {w}");
    }
    Ok((brain, exported))
}

/// The name an older controller gave a log (its path as given, `--out r1`), still to
/// be asked under, and the asks under it that got no answer.
struct Legacy {
    name: String,
    failed: u32,
}

/// Asks under a log's older name that may get no answer before the stream goes on under
/// its new one: a failure on the way is most likely the link's (the next try asks
/// again), but a trainer that cannot read the older log at all would otherwise keep the
/// robot from streaming for good.
const LEGACY_ASKS: u32 = 3;

/// [`connect`] for stream `id`. While the trainer holds nothing under it, `legacy` is
/// asked under too; the stream goes on under it if the trainer holds records there,
/// instead of having it take the whole log again. `legacy` is dropped once the trainer
/// has answered under it, or after [`LEGACY_ASKS`] asks without an answer (said): a
/// connection that failed on the way is an error, and the next try asks again (given up
/// at the first failure, one lost link sent the whole log again under the new name).
/// Returns the session, the trainer's count and the name used.
fn connect_stream(
    cfg: &UplinkConfig,
    id: &str,
    legacy: &mut Option<Legacy>,
    link: &Mutex<Option<TcpStream>>,
    say: &dyn Fn(String),
) -> Result<(Session<TcpStream>, u64, String), String> {
    let (session, held) = connect(cfg, id, link)?;
    let Some(old) = legacy.as_mut().filter(|_| held == 0) else {
        return Ok((session, held, id.to_string()));
    };
    // Hung up first: the trainer serves one connection at a time.
    drop(session);
    match connect(cfg, &old.name, link) {
        Ok((session, held)) => {
            let name = std::mem::take(&mut old.name);
            *legacy = None;
            if held > 0 {
                return Ok((session, held, name));
            }
        }
        Err(e) => {
            old.failed += 1;
            if old.failed < LEGACY_ASKS {
                return Err(format!(
                    "asking under the log's older name {}: {e}",
                    old.name
                ));
            }
            say(format!(
                "uplink: asked under the log's older name {} {LEGACY_ASKS} times without an \
                 answer (the last: {e}); the stream goes on under {id}, and a trainer that \
                 holds it under the older name takes the log again",
                old.name
            ));
            *legacy = None;
        }
    }
    let (session, held) = connect(cfg, id, link)?;
    Ok((session, held, id.to_string()))
}

/// Connects to the first of `addrs` that answers, in order, as `TcpStream::connect`
/// does: a name that resolves to IPv6 first (`localhost` as `::1`) still reaches a
/// trainer listening on IPv4 only (`--listen 0.0.0.0:PORT`); only the first was tried.
fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, SocketAddr), String> {
    let mut failed = Vec::new();
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(tcp) => return Ok((tcp, *addr)),
            Err(e) => failed.push(format!("connecting to {addr}: {e}")),
        }
    }
    if failed.is_empty() {
        return Err("it resolves to nothing".into());
    }
    Err(failed.join("; "))
}

/// Connects, authenticates and opens `stream`; returns the session and the trainer's
/// resume point.
fn connect(
    cfg: &UplinkConfig,
    stream: &str,
    link: &Mutex<Option<TcpStream>>,
) -> Result<(Session<TcpStream>, u64), String> {
    let addrs: Vec<SocketAddr> = cfg
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("uplink address {}: {e}", cfg.addr))?
        .collect();
    let (tcp, addr) = connect_any(&addrs, Duration::from_secs(1))
        .map_err(|e| format!("uplink address {}: {e}", cfg.addr))?;
    // A trainer that stops answering must not hang the streamer forever.
    let timeout = Some(Duration::from_secs(10));
    tcp.set_read_timeout(timeout)
        .and_then(|_| tcp.set_write_timeout(timeout))
        .and_then(|_| tcp.set_nodelay(true))
        .map_err(|e| e.to_string())?;
    // For `Streamer::finish` to cut, from the handshake on.
    *link.lock().unwrap_or_else(|e| e.into_inner()) = tcp.try_clone().ok();
    let mut s = Session::client(tcp, &cfg.key).map_err(|e| format!("{addr}: {e}"))?;
    let resume = records::open_stream(&mut s, stream).map_err(|e| format!("{addr}: {e}"))?;
    Ok((s, resume))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console that writes nowhere, for the streamer's lines.
    fn quiet() -> ConsoleTx {
        super::super::console::Console::spawn(std::io::sink())
            .unwrap()
            .1
    }
    use shared_model::synthetic::SyntheticSpec;

    /// A streamer dropped without `finish` (a run that failed after starting it) stops
    /// after its drain: it ran on, retrying a trainer that never answered.
    #[test]
    fn a_dropped_streamer_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = UplinkConfig {
            addr: "127.0.0.1:1".into(),
            key: uplink::Key::from_bytes([1; uplink::KEY_LEN]),
            drain: Duration::from_millis(200),
            swap: None,
        };
        let (streamer, _ready) =
            Streamer::spawn(cfg, &tmp.path().join("transitions.log"), None, quiet()).unwrap();
        // The thread holds the other reference to the summary until it ends.
        let summary = streamer.summary.clone();
        drop(streamer);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&summary) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(Arc::strong_count(&summary), 1, "the thread runs on");
    }

    /// A log whose first record (the run header) is damaged is not streamed: the stream
    /// id came from the next whole record, a new name to the trainer, which took every
    /// record of the log again (trained on twice).
    #[test]
    fn a_log_whose_first_record_is_damaged_is_not_streamed() {
        use super::super::log::{LogWriter, Record};
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("transitions.log");
        let mut w = LogWriter::open(&log).unwrap();
        for episode in 0..3 {
            w.append(&Record::EpisodeStart { episode, seed: 1 })
                .unwrap();
        }
        w.sync().unwrap();
        drop(w);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[MAGIC.len() + 8] ^= 0xff;
        std::fs::write(&log, &bytes).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let cfg = UplinkConfig {
            addr: listener.local_addr().unwrap().to_string(),
            key: uplink::Key::from_bytes([1; uplink::KEY_LEN]),
            drain: Duration::from_millis(300),
            swap: None,
        };
        // Its lines go to the run's console thread, not to stderr from the uplink's
        // thread (which a stderr nobody reads held, and the run's end with it).
        let lines = super::super::TestBytes::default();
        let (console, console_tx) = super::super::console::Console::spawn(lines.clone()).unwrap();
        let (streamer, _ready) = Streamer::spawn(cfg, &log, None, console_tx).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let summary = streamer.finish();
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the streamer connected to stream the log under another name"
        );
        let e = summary.last_error.unwrap_or_default();
        assert!(
            e.contains("its first record (the run header, at byte 8) is damaged"),
            "{e}"
        );
        assert_eq!(console.finish(), 0);
        let said = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(
            said.starts_with("uplink: ") && said.contains("is damaged"),
            "{said}"
        );
    }

    /// A bundle the trainer offers while the run's end drains the log is not fetched:
    /// no episode is left to take it. It was downloaded, verified and built into a
    /// policy while the run's end waited, and reported as taking over "at the next
    /// episode".
    #[test]
    fn a_bundle_offered_during_the_drain_is_not_fetched() {
        use uplink::records::{BundleFiles, RecordSink, serve_records};
        struct Offering {
            fetched: Arc<AtomicBool>,
            release: std::sync::mpsc::Receiver<()>,
            held: u64,
        }
        impl RecordSink for Offering {
            fn next_index(&mut self, _: &str) -> Result<u64, String> {
                // The streamer connects; the run's end is asked for meanwhile.
                let _ = self.release.recv();
                Ok(self.held)
            }
            fn append(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), String> {
                self.held += 1;
                Ok(())
            }
            fn latest_bundle(&mut self) -> Option<String> {
                Some("0000001".into())
            }
            fn bundle(&mut self, name: &str) -> Result<BundleFiles, String> {
                self.fetched.store(true, Ordering::SeqCst);
                Err(format!("no bundle '{name}' here"))
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let (log, cfg, listener) = swapping_setup(tmp.path());
        let key = cfg.key.clone();
        let fetched = Arc::new(AtomicBool::new(false));
        let (release, waiting) = std::sync::mpsc::channel();
        let f = fetched.clone();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut sink = Offering {
                fetched: f,
                release: waiting,
                held: 0,
            };
            let mut s = uplink::Session::server(tcp, &key).unwrap();
            serve_records(&mut s, &mut sink).map(|(_, n)| n)
        });
        let (streamer, _ready) = Streamer::spawn(cfg, &log, None, quiet()).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let _ = release.send(());
        });
        let summary = streamer.finish();
        let served = server.join().unwrap();
        assert!(!fetched.load(Ordering::SeqCst), "fetched in the drain");
        assert!(summary.bundles.is_empty(), "{:?}", summary.bundles);
        assert_eq!(served.map_err(|e| e.to_string()), Ok(1));
        assert_eq!((summary.acknowledged, summary.connections), (1, 1));
    }

    /// In `dir`: a synced log of one record, and a streamer's configuration that takes
    /// bundle swaps for a synthetic `cpu` bundle on the push robot, to the trainer
    /// listening on the returned socket.
    fn swapping_setup(dir: &Path) -> (PathBuf, UplinkConfig, std::net::TcpListener) {
        let log = dir.join("transitions.log");
        let mut w = super::super::log::LogWriter::open(&log).unwrap();
        w.append(&super::super::log::Record::EpisodeStart {
            episode: 0,
            seed: 1,
        })
        .unwrap();
        w.sync().unwrap();
        drop(w);
        let src = dir.join("bundle");
        SyntheticSpec::cpu().write(&src, 3, None).unwrap();
        let bundle = shared_model::load_bundle(&src, &Trust::AllowUnsigned).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = UplinkConfig {
            addr: listener.local_addr().unwrap().to_string(),
            key: uplink::Key::from_bytes([1; uplink::KEY_LEN]),
            drain: Duration::from_secs(2),
            swap: Some(SwapConfig {
                trust: Trust::AllowUnsigned,
                options: PolicyOptions::default(),
                two_speed: false,
                play: Default::default(),
                robot: RobotConfig::example("push").unwrap(),
                simulated: false,
                replaces: bundle.manifest,
            }),
        };
        (log, cfg, listener)
    }

    /// A bundle name that could not be a directory's (a path, a hidden or an overlong
    /// one) is refused before anything is fetched: the download came first (up to
    /// 64 MiB written to disk), and the name was judged after it.
    #[test]
    fn a_bundle_offered_under_an_unusable_name_is_not_fetched() {
        use uplink::records::{BundleFiles, RecordSink, serve_records};
        struct Offering {
            fetched: Arc<AtomicBool>,
            name: String,
            held: u64,
        }
        impl RecordSink for Offering {
            fn next_index(&mut self, _: &str) -> Result<u64, String> {
                Ok(self.held)
            }
            fn append(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), String> {
                self.held += 1;
                Ok(())
            }
            fn latest_bundle(&mut self) -> Option<String> {
                Some(self.name.clone())
            }
            fn bundle(&mut self, _: &str) -> Result<BundleFiles, String> {
                self.fetched.store(true, Ordering::SeqCst);
                Err("fetched".into())
            }
        }
        let long = "7".repeat(MAX_BUNDLE_NAME + 1);
        for name in ["../0000500", ".0000500", long.as_str()] {
            let tmp = tempfile::tempdir().unwrap();
            let (log, cfg, listener) = swapping_setup(tmp.path());
            let key = cfg.key.clone();
            let fetched = Arc::new(AtomicBool::new(false));
            let f = fetched.clone();
            let offered = name.to_string();
            let server = std::thread::spawn(move || {
                let (tcp, _) = listener.accept().unwrap();
                let mut sink = Offering {
                    fetched: f,
                    name: offered,
                    held: 0,
                };
                let mut s = uplink::Session::server(tcp, &key).unwrap();
                serve_records(&mut s, &mut sink).map(|(_, n)| n)
            });
            let (streamer, _ready) = Streamer::spawn(cfg, &log, None, quiet()).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while streamer.summary_so_far().bundles.is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: never offered"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let summary = streamer.finish();
            let _ = server.join();
            assert!(!fetched.load(Ordering::SeqCst), "{name}: fetched");
            let error = summary.bundles[0].error.clone().unwrap_or_default();
            assert!(
                error.contains("is not a plain name of at most 250 bytes"),
                "{error}"
            );
        }
    }

    /// The log's older name is given up only once the trainer answered under it: a
    /// first ask that failed (here the trainer could not read that log yet) left the
    /// stream under its new name, and the trainer took the whole log again there.
    #[test]
    fn a_failed_ask_under_the_older_name_is_asked_again() {
        use uplink::records::{RecordSink, serve_records};
        /// Refuses the first `failing` asks under the older name, then holds 5 there.
        struct Held {
            asked_old: u32,
            failing: u32,
        }
        impl RecordSink for Held {
            fn next_index(&mut self, stream: &str) -> Result<u64, String> {
                if stream != "old" {
                    return Ok(0);
                }
                self.asked_old += 1;
                if self.asked_old <= self.failing {
                    Err("cannot open that log now".into())
                } else {
                    Ok(5)
                }
            }
            fn append(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let key = uplink::Key::from_bytes([1; uplink::KEY_LEN]);
        // A trainer serving connections one after another, as the trainer does.
        let trainer = |failing: u32| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let cfg = UplinkConfig {
                addr: listener.local_addr().unwrap().to_string(),
                key: key.clone(),
                drain: Duration::from_secs(1),
                swap: None,
            };
            let key = key.clone();
            std::thread::spawn(move || {
                let mut sink = Held {
                    asked_old: 0,
                    failing,
                };
                for tcp in listener.incoming() {
                    let Ok(tcp) = tcp else { return };
                    if let Ok(mut s) = uplink::Session::server(tcp, &key) {
                        let _ = serve_records(&mut s, &mut sink);
                    }
                }
            });
            cfg
        };
        let link = Mutex::new(None);
        let old = || {
            Some(Legacy {
                name: "old".into(),
                failed: 0,
            })
        };
        let cfg = trainer(1);
        let mut legacy = old();
        let first =
            connect_stream(&cfg, "new", &mut legacy, &link, &|_| {}).map(|(_, n, name)| (n, name));
        assert!(
            first.as_ref().is_err_and(
                |e| e.contains("older name old") && e.contains("cannot open that log now")
            ),
            "{first:?}"
        );
        assert!(legacy.is_some(), "given up on a failed ask");
        let (_, held, name) = connect_stream(&cfg, "new", &mut legacy, &link, &|_| {}).unwrap();
        assert_eq!((held, name.as_str()), (5, "old"));
        assert!(legacy.is_none());
        // A trainer that never answers under the older name: the stream goes on under
        // the new one after LEGACY_ASKS asks, not never.
        let cfg = trainer(u32::MAX);
        let mut legacy = old();
        for _ in 1..LEGACY_ASKS {
            assert!(connect_stream(&cfg, "new", &mut legacy, &link, &|_| {}).is_err());
        }
        let (_, held, name) = connect_stream(&cfg, "new", &mut legacy, &link, &|_| {}).unwrap();
        assert_eq!((held, name.as_str()), (0, "new"));
        assert!(legacy.is_none());
    }

    /// The uplink's address may resolve to several (`localhost`: `::1`, then
    /// `127.0.0.1`): one that refuses does not stop the next from being tried (only the
    /// first was, and a trainer listening on IPv4 only was never reached).
    #[test]
    fn every_resolved_address_is_tried_in_turn() {
        // Port 1 (tcpmux) listens nowhere we run: refused at once. (A port just freed
        // could be taken again by another test on a busy machine.)
        let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = open.local_addr().unwrap();
        let (_, reached) = connect_any(&[closed, addr], Duration::from_secs(1)).unwrap();
        assert_eq!(reached, addr);
        let e = connect_any(&[closed], Duration::from_secs(1)).unwrap_err();
        assert!(e.contains(&format!("connecting to {closed}")), "{e}");
        assert_eq!(
            connect_any(&[], Duration::from_secs(1)).unwrap_err(),
            "it resolves to nothing"
        );
    }

    /// Bundles verified before the control thread takes one replace each other: only
    /// the newest waits, the replaced ones go back to the uplink thread to drop.
    #[test]
    fn only_the_newest_verified_bundle_waits_for_the_next_episode() {
        let slot = SwapSlot::default();
        let control = slot.clone();
        let mut running = Brain::Hold;
        assert!(control.swap_into(&mut running, |_| {}).is_none());
        assert!(slot.offer(("0000100".into(), Brain::Hold)).is_none());
        let (older, _) = slot.offer(("0000200".into(), Brain::Hold)).unwrap();
        assert_eq!(older, "0000100");
        let (older, _) = slot.offer(("0000300".into(), Brain::Hold)).unwrap();
        assert_eq!(older, "0000200");
        assert_eq!(control.swap_into(&mut running, |_| {}).unwrap(), "0000300");
        assert!(control.swap_into(&mut running, |_| {}).is_none());
        // The replaced policy waits for the uplink's thread.
        assert!(slot.release_retired());
        assert!(!slot.release_retired());
        // Never waits: while the slot is being filled, nothing yet.
        slot.offer(("0000400".into(), Brain::Hold));
        let held = slot.0.lock().unwrap();
        assert!(control.swap_into(&mut running, |_| {}).is_none());
        drop(held);
        assert_eq!(control.swap_into(&mut running, |_| {}).unwrap(), "0000400");
    }

    /// A swapped-in bundle's noise stream differs by name and by content: one offered
    /// under an earlier bundle's name drew that bundle's noise again.
    #[test]
    fn a_bundle_offered_under_an_old_name_draws_its_own_noise() {
        let tmp = tempfile::tempdir().unwrap();
        let a = SyntheticSpec::cpu()
            .write(&tmp.path().join("a"), 3, None)
            .unwrap();
        let b = SyntheticSpec::cpu()
            .write(&tmp.path().join("b"), 4, None)
            .unwrap();
        assert_ne!(a.graphs.denoiser.sha256, b.graphs.denoiser.sha256);
        let run = PolicyOptions::default();
        let seed =
            |name: &str, m: &Manifest| crate::runtime::swapped_in_options(&run, name, m).seed;
        assert_ne!(seed("0000100", &a), seed("0000100", &b));
        assert_ne!(seed("0000100", &a), seed("0000200", &a));
        assert_ne!(seed("0000100", &a), run.seed);
        assert_eq!(seed("0000100", &a), seed("0000100", &a.clone()));
        // Another critic beside the same denoiser is another bundle too.
        let mut other_critic = a.clone();
        other_critic.graphs.critic = b.graphs.critic.clone();
        assert_ne!(seed("0000100", &a), seed("0000100", &other_critic));
    }

    /// A bundle from the trainer for another task, or with other observation names,
    /// than the running one is refused before it is built, saying which.
    #[test]
    fn a_new_bundle_must_be_for_the_running_bundles_task_and_observations() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("new");
        SyntheticSpec::cpu().write(&src, 3, None).unwrap();
        let bundle = shared_model::load_bundle(&src, &Trust::AllowUnsigned).unwrap();
        let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        let swap = |replaces: Manifest| SwapConfig {
            trust: Trust::AllowUnsigned,
            options: PolicyOptions::default(),
            two_speed: false,
            play: Default::default(),
            robot: RobotConfig::example("push").unwrap(),
            simulated: false,
            replaces,
        };
        let dir = tmp.path().join("bundles");
        let same = bundle.manifest.clone();
        // The bundle's files with its manifest at `format` and `lines` added to its
        // `[action]` table.
        let with_manifest = |format: u32, lines: &str| -> Vec<(String, Vec<u8>)> {
            (files.iter())
                .map(|(n, b)| {
                    let mut b = b.clone();
                    if n == "manifest.toml" {
                        let text = String::from_utf8(b).unwrap();
                        assert!(text.contains("format_version = 1\n"), "{text}");
                        b = text
                            .replace(
                                "format_version = 1\n",
                                &format!("format_version = {format}\n"),
                            )
                            .replace("[action]\n", &format!("[action]\n{lines}"))
                            .into_bytes();
                    }
                    (n.clone(), b)
                })
                .collect()
        };
        assert!(prepare(&dir, "b1", &files, &swap(same.clone()), None).is_ok());
        // The chain runs as many steps as the run started with, whatever the new
        // bundle's manifest says (a live trainer's says its whole trained chain): 3
        // of 5 here, where the swap made it 5; `--executed-steps` wins over both.
        let trained = same.diffusion.trained_steps;
        assert_eq!(same.diffusion.executed_steps, trained);
        let mut truncated = same.clone();
        truncated.diffusion.executed_steps = 3;
        let executed = |brain: &Brain| match brain {
            Brain::Full { policy, .. } => policy.executed_steps(),
            _ => unreachable!(),
        };
        let (brain, _) = prepare(&dir, "b1a", &files, &swap(truncated.clone()), None).unwrap();
        assert_eq!(executed(&brain), 3);
        let mut told = swap(truncated.clone());
        told.options.executed_steps = Some(2);
        let (brain, _) = prepare(&dir, "b1b", &files, &told, None).unwrap();
        assert_eq!(executed(&brain), 2);
        for taken in ["b1a", "b1b"] {
            std::fs::remove_dir_all(dir.join(taken)).unwrap();
        }
        // A bundle trained on a shorter chain than the run executes is refused.
        let mut longer = same.clone();
        longer.diffusion.executed_steps = trained + 1;
        let e = prepare(&dir, "b1c", &files, &swap(longer), None)
            .err()
            .unwrap();
        assert!(
            e.contains(&format!(
                "trained in {trained} steps, fewer than the {} the running policy executes",
                trained + 1
            )),
            "{e}"
        );
        let mut other_task = same.clone();
        other_task.task = "maze".into();
        let e = prepare(&dir, "b2", &files, &swap(other_task), None)
            .err()
            .unwrap();
        assert!(e.contains("the running bundle on `maze`"), "{e}");
        let mut renamed = same.clone();
        renamed.observation.names[0] = "elbow".into();
        let e = prepare(&dir, "b3", &files, &swap(renamed), None)
            .err()
            .unwrap();
        assert!(e.contains("observation names"), "{e}");
        // A running bundle that named no observations (trained on data that named none)
        // takes one that names as many: its fine-tuning took the robot's names. Not one
        // that names fewer.
        let mut unnamed = same.clone();
        let n = unnamed.observation.names.len();
        unnamed.observation.names = (0..n).map(|i| format!("observation.state.{i}")).collect();
        assert!(prepare(&dir, "b3a", &files, &swap(unnamed.clone()), None).is_ok());
        std::fs::remove_dir_all(dir.join("b3a")).unwrap();
        // Not one that names the robot file's channels in another order, as `controller
        // run` refuses it at the start.
        let robot = RobotConfig::example("push").unwrap();
        let mut reordered_files = files.clone();
        for (n, b) in &mut reordered_files {
            if n == "manifest.toml" {
                let mut m: Manifest = toml::from_str(std::str::from_utf8(b).unwrap()).unwrap();
                let names = &mut m.observation.names;
                names[..2].clone_from_slice(&robot.observation.names[..2]);
                names.swap(0, 1);
                *b = toml::to_string(&m).unwrap().into_bytes();
            }
        }
        let e = prepare(&dir, "b3c", &reordered_files, &swap(unnamed.clone()), None)
            .err()
            .unwrap();
        assert!(
            e.contains(&format!(
                "observation `{}` is at [0] in the bundle and at [1] in the robot file",
                robot.observation.names[1]
            )),
            "{e}"
        );
        unnamed
            .observation
            .names
            .push("observation.state.99".into());
        let e = prepare(&dir, "b3b", &files, &swap(unnamed), None)
            .err()
            .unwrap();
        assert!(e.contains("observation names"), "{e}");
        // Chunks of another length (the horizon): the run's chunk play would change.
        let mut chunked = same.clone();
        chunked.action.horizon = 4;
        let e = prepare(&dir, "b7", &files, &swap(chunked), None)
            .err()
            .unwrap();
        assert!(
            e.contains("plans chunks of 1 actions, the running bundle chunks of 4"),
            "{e}"
        );
        // Trained at another rate than the robot's (format 5's `action.control_hz`):
        // refused, as at the start of a run.
        let at_10_hz = with_manifest(5, "control_hz = 10\n");
        let e = prepare(&dir, "b8", &at_10_hz, &swap(same.clone()), None)
            .err()
            .unwrap();
        assert!(
            e.contains("trained on steps at 10 Hz, the robot 'sim-push' runs at control_hz = 20"),
            "{e}"
        );
        // Naming the robot file's actions in another order (format 6): refused as at
        // the start of a run, though the running bundle named none (nothing compared
        // them).
        let swapped_actions = with_manifest(6, "names = [\"vy_command\", \"vx_command\"]\n");
        assert!(same.action.names.is_empty());
        let e = prepare(&dir, "b9", &swapped_actions, &swap(same.clone()), None)
            .err()
            .unwrap();
        assert!(
            e.contains("action `vy_command` is at [0] in the bundle and at [1] in the robot file"),
            "{e}"
        );
        // Recorded with another action mapping than the robot file's (format 7): refused
        // as at the start of a run, though the running bundle recorded none.
        let remapped = with_manifest(7, "robot_scale = [2.0, 1.0]\nrobot_offset = [0.0, 0.0]\n");
        let e = prepare(&dir, "b10", &remapped, &swap(same.clone()), None)
            .err()
            .unwrap();
        assert!(
            e.contains("action [0] `vx_command` was recorded as 0 + 2 × a in robot units"),
            "{e}"
        );
        // Under --sim a warning, as at the start of a run: the simulated firmware maps
        // the commands back with the same robot file (it was refused there).
        let simulated = SwapConfig {
            simulated: true,
            ..swap(same.clone())
        };
        assert!(prepare(&dir, "b11", &remapped, &simulated, None).is_ok());
        std::fs::remove_dir_all(dir.join("b11")).unwrap();
        // A copy fetched again that fails verification (a damaged graph) leaves the one
        // verified before in place, whole; it was removed before the check.
        let kept = std::fs::read(dir.join("b1/manifest.toml")).unwrap();
        let damaged: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, b)| {
                let mut b = b.clone();
                if n.ends_with(".onnx") {
                    b.truncate(b.len() / 2);
                }
                (n.clone(), b)
            })
            .collect();
        assert!(prepare(&dir, "b1", &damaged, &swap(same.clone()), None).is_err());
        assert_eq!(std::fs::read(dir.join("b1/manifest.toml")).unwrap(), kept);
        shared_model::load_bundle(&dir.join("b1"), &Trust::AllowUnsigned).unwrap();
        // One exported before the newest bundle taken in the run is refused (offered
        // names are not signed: an older signed bundle could be replayed); at the same
        // time or later it is taken.
        let exported = same.provenance.created_unix;
        let e = prepare(&dir, "b4", &files, &swap(same.clone()), Some(exported + 1))
            .err()
            .unwrap();
        assert!(e.contains("an older bundle is not taken back"), "{e}");
        // So is one exported before the bundle the run started with, before any swap
        // (it was taken: the floor began at the first swap).
        let mut newer = same.clone();
        newer.provenance.created_unix = exported + 100;
        let e = prepare(&dir, "b6", &files, &swap(newer), None)
            .err()
            .unwrap();
        assert!(e.contains("an older bundle is not taken back"), "{e}");
        let (_, at) = prepare(&dir, "b5", &files, &swap(same), Some(exported)).unwrap();
        assert_eq!(at, exported);
        std::fs::remove_dir_all(dir.join("b5")).unwrap();
        // A refused bundle is never put in place, nor left staged.
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["b1"]);
    }
}
