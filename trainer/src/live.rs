//! `trainer finetune --listen`: fine-tuning on transitions as the robot streams them.
//!
//! ```text
//!  controller --uplink ──TCP (uplink: authenticated, exactly once)──► receiver thread
//!      receiver: OUT/uplink/<stream>.log (the robot's log, record for record, each
//!                decoded, checked and written again: the same bytes but for a run
//!                header's fields this trainer does not know; its length is the
//!                resume point a reconnecting robot is told) ──channel──► training loop
//!  training loop: each robot transition → online replay + one update (UTD critic steps,
//!                 base, edit/temperature), so updates track robot steps; every
//!                 --publish-every updates a signed bundle in OUT/bundles/NNNNNNN and
//!                 its name in OUT/bundles/latest ──► offered to the robot; every
//!                 --log-every updates a finetune.csv row (the metrics' means)
//! ```
//!
//! Every transition received is kept in `OUT/uplink/` and acknowledged. Those queued
//! when the last update ran are still put in the online replay, so the final
//! checkpoint holds every streamed transition but a stream's steps waiting for the rest
//! of an action chunk (taken from the log by a run that continues it, below). A later
//! `--from OUT` or `--resume` trains on them (converting `OUT/uplink/` with `controller
//! log-to-dataset` for `finetune --data` would add them a second time). A new run
//! `--from OUT` starts with a copy of `OUT/uplink/`, so a robot that goes on streaming to
//! it sends only what `OUT` did not hold.
//!
//! A checkpoint is written every `--checkpoint-every` updates and at the end, so
//! `--resume` after a crash continues from the last one. Each checkpoint records how
//! far its replay holds each stream log ([`LogPosition`]) and the updates still owed:
//! a session that continues the replay (`--resume`, or a new run `--from` it) first
//! takes from the logs what the replay lacks (transitions logged after the checkpoint,
//! or still queued for the training loop when it was taken, and a stream's steps
//! waiting for the rest of an action chunk), since the robot does not send them again.
//! A checkpoint written before the positions were recorded counts each log as held
//! whole, as the runs that wrote it did.
//!
//! Every acknowledgement to the robot names `OUT/bundles/latest`; the robot fetches a
//! new one over the same link, verifies it and swaps it in between episodes
//! (`controller::robot_loop::streamer`).

use anyhow::{Context, Result};
use controller::robot_loop::log::{LogError, LogWriter, Record, scan_records};
use shared_model::manifest::bundle_complete;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use uplink::records::{RecordSink, serve_records};
use uplink::{Key, Session};

/// Set by SIGINT or SIGTERM once [`stop_on_signals`] is installed: the live session
/// ends as at `--updates`, with its final checkpoint and bundle.
pub static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // Only async-signal-safe work: an atomic store, signal(), open(), dup2(), close().
    SIGNALLED.store(true, Ordering::SeqCst);
    if sig == libc::SIGHUP {
        // The terminal is gone: writes to it fail (EIO; EPIPE through a `tee` that went
        // with it), and a failed `eprintln!` panics, before the final checkpoint. The
        // rest of the session's lines go nowhere instead.
        // SAFETY: async-signal-safe calls on a constant, NUL-terminated path.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if null >= 0 {
                libc::dup2(null, 1);
                libc::dup2(null, 2);
                libc::close(null);
            }
        }
    }
    // (A final checkpoint that hangs on a full disk is left by a second Ctrl-C.)
    controller::robot_loop::realtime::kill_at_a_second_sigint(sig);
}

/// Routes SIGINT, SIGTERM and SIGHUP (a closed terminal or SSH session) to
/// [`SIGNALLED`]: each ends a live session with its final checkpoint and bundle (it was
/// killed, losing the updates since the last checkpoint and the last bundle). A second
/// Ctrl-C kills. A signal ignored when the trainer started (SIGINT for a background job
/// of a script, SIGHUP under `nohup`) stays ignored. Installed by
/// [`train_live`] as it starts listening and taken back as it returns: before and after,
/// in the loading and the evaluations, the signals kill as they always did.
pub fn stop_on_signals() -> std::io::Result<()> {
    controller::robot_loop::realtime::route_signals(&STOP_SIGNALS, &STOP_SIGNALS, on_stop_signal)
}

/// The signals that end a live session in order ([`stop_on_signals`]).
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A transition as the training loop takes it.
pub struct Step {
    pub obs: Vec<f32>,
    pub action: Vec<f32>,
    pub reward: f32,
    pub next_obs: Vec<f32>,
    /// Task-terminal (no bootstrapping).
    pub terminal: bool,
    /// The episode's last step (terminal or truncated).
    pub episode_end: bool,
    /// The robot run's number for its episode, and the step in it: an action chunk
    /// takes only steps that follow each other in one episode.
    pub episode: u32,
    pub step: u32,
    /// The stream (robot) it came from, as messages name it.
    pub stream: String,
    /// Its stream's log under `OUT/uplink/` (a file name; action chunks are built per
    /// log), and its record's index there.
    pub log: String,
    pub index: u64,
    /// The operator marked it an intervention (`controller run --operator`).
    pub intervention: bool,
    /// Its action came from the teleop device (`controller run --teleop`).
    pub teleop: bool,
    /// Why it cannot be trained on (a value that is not finite, an action outside the
    /// policy's `[-1, 1]`), or `None`. Such a transition is logged and acknowledged like
    /// any other, counted in [`crate::finetune::FinetuneSummary::streamed_unusable`], and
    /// cuts its stream's pending action chunk.
    pub unusable: Option<String>,
}

impl Step {
    fn of(
        t: &controller::robot_loop::log::Transition,
        stream: &str,
        log: String,
        index: u64,
    ) -> Step {
        Step {
            unusable: unusable(t),
            obs: t.obs().to_vec(),
            action: t.action().to_vec(),
            reward: t.reward,
            next_obs: t.next_obs().to_vec(),
            terminal: t.done && !t.truncated,
            episode_end: t.done,
            episode: t.episode,
            step: t.step,
            stream: stream.to_string(),
            log,
            index,
            intervention: t.intervention,
            teleop: t.teleop,
        }
    }
}

/// How far the training loop is in one stream log of `OUT/uplink/` (record indices),
/// saved in each checkpoint ([`crate::run::RunState::live_logs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LogPosition {
    /// The first record the replay may lack: the oldest step still waiting in its
    /// stream's chunker for the rest of its chunk, else the one after the last
    /// transition taken. A run that continues the replay takes the records from here.
    pub(crate) in_replay: u64,
    /// The record after the last transition taken (counted, its update owed or done).
    pub(crate) taken: u64,
}

/// The stream logs (`*.log`) in `dir`, by name; none if `dir` does not exist.
pub(crate) fn stream_logs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut logs: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}: cannot list", dir.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    logs.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    Ok(logs)
}

fn log_name(path: &Path) -> String {
    path.file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned()
}

/// The transitions of the stream logs in `dir` that a replay at `positions` lacks (of a
/// log that `positions` does not name, all), in order, to `take`; returns how many. A
/// log is checked as the receiver checks a stream (`check`: the run's dimensions and
/// observation names): one of another run (a try `--from` another source left it) is
/// refused, naming it, not trained on.
fn recover_logged(
    dir: &Path,
    positions: &BTreeMap<String, LogPosition>,
    check: &mut Check,
    mut take: impl FnMut(Step),
) -> Result<usize> {
    let mut recovered = 0;
    for path in stream_logs(dir)? {
        let log = log_name(&path);
        let from = positions.get(&log).map_or(0, |p| p.in_replay);
        let stream = format!("uplink/{log}");
        // A killed trainer's last appends may be in the page cache only: synced before
        // they are trained on and counted in a checkpoint (a power cut would take them
        // back, and the robot, never acknowledged, would send them again).
        crate::run::sync_path(&path)?;
        scan_records(&path, |index, offset, record| {
            if let Some(problem) = check.refusal(&record) {
                return Err(LogError::Record {
                    path: path.clone(),
                    offset,
                    problem: format!(
                        "{problem}: this run cannot take this log's transitions; move it out \
                         of {} to go on without it",
                        dir.display()
                    ),
                });
            }
            if index >= from
                && let Record::Transition(t) = record
            {
                take(Step::of(&t, &stream, log.clone(), index));
                recovered += 1;
            }
            Ok(())
        })?;
    }
    Ok(recovered)
}

/// The positions of a checkpoint written before they were recorded: every log in `dir`
/// taken whole (as such a run took them: the robot does not send them again).
pub(crate) fn held_whole(dir: &Path) -> Result<BTreeMap<String, LogPosition>> {
    let mut held = BTreeMap::new();
    for path in stream_logs(dir)? {
        let n = scan_records(&path, |_, _, _| Ok(()))?;
        held.insert(
            log_name(&path),
            LogPosition {
                in_replay: n,
                taken: n,
            },
        );
    }
    Ok(held)
}

/// Why a streamed transition cannot be trained on, checked as a dataset's frames are
/// (`crate::robot::read_training_dataset`).
fn unusable(t: &controller::robot_loop::log::Transition) -> Option<String> {
    let where_ = format!("episode {}, step {}", t.episode, t.step);
    if let Some((name, v)) = t.first_non_finite() {
        return Some(format!("{where_}: {name} is {v}, not a finite value"));
    }
    let i = dataset::outside_policy_range(t.action())?;
    Some(format!(
        "{where_}: action[{i}] = {} is outside the policy's [-1, 1]",
        t.action()[i]
    ))
}

/// Persists every stream's records and forwards the transitions.
struct Receiver {
    dir: PathBuf,
    /// Where published bundles are (`latest` names the newest).
    bundles: PathBuf,
    logs: HashMap<String, (LogWriter, u64)>,
    /// Each stream's transitions appended to its log and not yet synced: they go to the
    /// training loop once the log is ([`RecordSink::make_durable`]). Sent at once, a
    /// checkpoint could count them taken, a power cut then take them from the log, and
    /// the robot (never acknowledged) send them again: trained on twice. Those of a
    /// batch that failed part-way (unacknowledged) go with the stream's next sync, or
    /// the next session takes them from the log (`recover_logged`).
    unsynced: HashMap<String, Vec<Step>>,
    tx: mpsc::Sender<Step>,
    check: Check,
}

/// What a stream must fit: the run's dimensions (observation, one step's action), and
/// what it was trained on (a stream whose run-start record names other observations is
/// another robot or task of the same sizes).
pub struct Check {
    pub dims: (usize, usize),
    pub recorded_by: crate::finetune::RecordedBy,
    /// What the streams gave that the run's data did not: for the training loop, whose
    /// agent takes it ([`take_adopted`]).
    pub adopted: Arc<Adopted>,
}

/// What a live session's streams gave where the run's own data gave nothing, each set
/// once (a mapping or names once taken are never replaced): the action mapping its
/// streams are compared with, and observation names for a run whose data named none
/// ([`crate::finetune::RecordedBy::adopt_names`]). The training loop's agent takes them
/// ([`take_adopted`]), so its checkpoints and bundles carry them to the robot as a
/// `--data` dataset's are carried.
#[derive(Default)]
pub struct Adopted {
    pub mapping: OnceLock<dataset::ActionMapping>,
    pub observation_names: OnceLock<Vec<String>>,
}

impl Check {
    pub fn new(dims: (usize, usize), recorded_by: crate::finetune::RecordedBy) -> Check {
        Check {
            dims,
            recorded_by,
            adopted: Arc::default(),
        }
    }

    /// Why `rec` cannot be part of a stream for this run, or `None`; a run-start record
    /// that passes gives the action mapping later streams are compared with, where the
    /// run's data recorded none ([`crate::finetune::RecordedBy::adopt_mapping`]).
    fn refusal(&mut self, rec: &Record) -> Option<String> {
        let refused = self.refusal_of(rec);
        if refused.is_none() {
            self.take(rec);
        }
        refused
    }

    /// A record that passed [`Check::refusal_of`], held in its log: a run-start record
    /// gives its action mapping, where the run's data recorded none, and its observation
    /// names, where the run's data named none.
    fn take(&mut self, rec: &Record) {
        if let Record::Run(run) = rec {
            let whose = format!("the robot's stream of run {}", run.run_id);
            (self.recorded_by).adopt_mapping(run.action_mapping().as_ref(), &whose);
            if let Some(m) = self.recorded_by.action_mapping() {
                // Set once: a mapping once taken is never replaced.
                let _ = self.adopted.mapping.set(m.clone());
            }
            if let Some(said) = (self.recorded_by).adopt_names(&run.observation_names, &whose) {
                // As `--data` says it.
                eprintln!("warning: {said}");
                let names = self.recorded_by.observation_names().to_vec();
                let _ = self.adopted.observation_names.set(names);
            }
        }
    }

    fn refusal_of(&self, rec: &Record) -> Option<String> {
        match rec {
            Record::Run(run) => mapping_invalid(run, self.dims.1)
                .or_else(|| {
                    (self.recorded_by).names_differ(&run.observation_names, "the robot's stream")
                })
                .or_else(|| {
                    let mapped = run.action_mapping().is_some();
                    (self.recorded_by).actions_reordered(
                        &run.action_names,
                        mapped,
                        "the robot's stream",
                    )
                })
                .or_else(|| {
                    let differ = self.recorded_by.rate_differs(run.fps)?;
                    Some(format!("the robot's stream was {differ}"))
                })
                .or_else(|| {
                    let mapping = run.action_mapping();
                    (self.recorded_by).mapping_differs(mapping.as_ref(), "the robot's stream")
                }),
            Record::Transition(t) => {
                let (od, ad) = self.dims;
                (t.obs().len() != od || t.action().len() != ad).then(|| {
                    format!(
                        "transition of observation {} / action {}, the run takes {od} / {ad}",
                        t.obs().len(),
                        t.action().len()
                    )
                })
            }
            _ => None,
        }
    }
}

/// Why a stream's run-start record cannot map `action_dim` actions, if it cannot
/// (lengths, a number not finite, a scale of 0; one list without the other), as a
/// dataset's mapping is refused: taken on, it was carried into every checkpoint and
/// bundle (each refused at the robot's swap) and refused every later stream.
fn mapping_invalid(
    run: &controller::robot_loop::log::RunStart,
    action_dim: usize,
) -> Option<String> {
    let (scale, offset) = (&run.action_scale, &run.action_offset);
    if scale.is_empty() && offset.is_empty() {
        return None;
    }
    if scale.len() == offset.len() && scale.len() != action_dim {
        // Another robot (or task) rather than a damaged mapping.
        return Some(format!(
            "the robot's stream maps {} actions per step, the run takes {action_dim}",
            scale.len()
        ));
    }
    let mapping = dataset::ActionMapping {
        scale: scale.clone(),
        offset: offset.clone(),
    };
    let why = mapping.invalid(action_dim)?;
    Some(format!("the robot's stream's action mapping {why}"))
}

/// A file name for a stream id (a path and a CRC; not itself a safe name).
fn file_name(stream: &str) -> String {
    let h = firmware_config::protocol::crc32(stream.as_bytes());
    let tail: String = stream
        .chars()
        .rev()
        .take(40)
        .collect::<String>()
        .chars()
        .rev()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{tail}-{h:08x}.log")
}

impl Receiver {
    /// Where `stream`'s log is kept.
    fn log_path(&self, stream: &str) -> PathBuf {
        self.dir.join(file_name(stream))
    }

    fn log(&mut self, stream: &str) -> Result<&mut (LogWriter, u64), String> {
        if !self.logs.contains_key(stream) {
            let path = self.log_path(stream);
            // The records already held (a resumed run), counted while the writer checks
            // the log, a few MiB at a time: a log of days is not read into memory.
            let w = LogWriter::open(&path).map_err(|e| e.to_string())?;
            let held = w.existing_records;
            self.logs.insert(stream.to_string(), (w, held));
        }
        Ok(self.logs.get_mut(stream).expect("inserted"))
    }
}

impl RecordSink for Receiver {
    fn next_index(&mut self, stream: &str) -> Result<u64, String> {
        // A stream this trainer holds nothing of gets its log with its first record: a
        // robot asking under its log's older name (`connect_stream`'s legacy probe) left
        // an empty log here, carried into every later run from this one.
        if !self.logs.contains_key(stream) && !self.log_path(stream).exists() {
            return Ok(0);
        }
        Ok(self.log(stream)?.1)
    }

    fn append(&mut self, stream: &str, index: u64, record: &[u8]) -> Result<(), String> {
        let rec = Record::decode(record).map_err(|e| format!("record {index}: {e}"))?;
        if let Some(why) = self.check.refusal_of(&rec) {
            return Err(format!("record {index}: {why}"));
        }
        let (writer, held) = self.log(stream)?;
        // Record `index` goes at position `index` of the log or nowhere: appended at
        // another position it would be a duplicate, or leave a gap.
        if index != *held {
            return Err(format!(
                "record {index} sent, this stream's log holds {held} records"
            ));
        }
        writer.append(&rec).map_err(|e| e.to_string())?;
        *held += 1;
        // Only once held: a record whose append failed is sent again, and checked then.
        self.check.take(&rec);
        if let Record::Transition(t) = rec {
            let step = Step::of(&t, stream, file_name(stream), index);
            self.unsynced
                .entry(stream.to_string())
                .or_default()
                .push(step);
        }
        Ok(())
    }

    /// fdatasync of the stream's log, before its records are acknowledged (they were
    /// acknowledged from the page cache, and a power cut of the trainer's host lost
    /// records the robot counted as held).
    fn make_durable(&mut self, stream: &str) -> Result<(), String> {
        match self.logs.get_mut(stream) {
            Some((writer, _)) => writer.sync().map_err(|e| e.to_string())?,
            // Nothing held (see `next_index`): nothing to make durable.
            None => return Ok(()),
        }
        // A failed sync keeps them for the next one (the records stay unacknowledged).
        for step in self.unsynced.remove(stream).unwrap_or_default() {
            // The trainer may have stopped taking them; the log keeps them either way.
            let _ = self.tx.send(step);
        }
        Ok(())
    }

    fn latest_bundle(&mut self) -> Option<String> {
        let name = std::fs::read_to_string(self.bundles.join("latest")).ok()?;
        Some(name.trim().to_string()).filter(|n| !n.is_empty())
    }

    fn bundle(&mut self, name: &str) -> Result<uplink::records::BundleFiles, String> {
        if !uplink::records::plain_name(name) || name.starts_with('.') {
            return Err(format!("bundle name '{name}' is not a plain name"));
        }
        let dir = self.bundles.join(name);
        let mut files = vec![];
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let file = path
                    .file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .into_owned();
                files.push((file, bytes));
            }
        }
        Ok(files)
    }
}

/// The receiving side: serves authenticated robots one connection at a time until
/// `stop` (or until it is dropped, e.g. when the training loop returns an error: then
/// the server threads end the same way, unjoined). At the stop the connection being
/// served is shut down (the robot keeps its log and retries) and queued ones dropped.
///
/// Handshakes run on their own threads, each cut off after [`HANDSHAKE_DEADLINE`]: at
/// most [`MAX_HANDSHAKES_PER_PEER`] per IP address, and beyond [`MAX_HANDSHAKES`] in all
/// a new one shuts the oldest down. Only a connection that proved the key joins the
/// queue of the serving thread, at most [`MAX_WAITING_SESSIONS`] of them. A peer without
/// the key, silent or trickling its hello a byte at a time, cannot hold the link the
/// robot is waiting for.
pub struct Listener {
    stop: Arc<AtomicBool>,
    /// Taken by [`Listener::stop`].
    handle: Option<std::thread::JoinHandle<()>>,
    /// Connections that ended in an error (the server keeps serving).
    pub errors: Arc<Mutex<ErrorTally>>,
    pub addr: std::net::SocketAddr,
}

/// Longest a connection may take for the whole handshake (the hello and the proof of
/// the key); the socket is shut down then.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a new connection beyond them shuts the oldest down.
pub const MAX_HANDSHAKES: usize = 32;
/// Handshakes in progress at once from one IP address; a connection beyond them is
/// closed at once. With the oldest-first eviction above, peers without the key on a few
/// addresses cannot keep the robot's connection from its handshake.
pub const MAX_HANDSHAKES_PER_PEER: usize = 4;
/// Read and write timeout of an authenticated connection.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Authenticated connections that may wait while another is served; one beyond them is
/// refused with an `ERROR` naming why. A robot that reconnects waits behind its old,
/// broken connection until that one times out ([`SESSION_TIMEOUT`]), and retries every
/// few seconds meanwhile; a second robot on the same trainer would queue a connection
/// at each retry, without a bound each one two sockets held until the trainer ran out
/// of file descriptors (about 600 an hour) and its checkpoints failed.
pub const MAX_WAITING_SESSIONS: usize = 4;
/// The connections that ended in an error, for the end-of-run summary: how many, and
/// the last one's words (each is printed as it happens).
#[derive(Clone, Debug, Default)]
pub struct ErrorTally {
    pub count: u64,
    pub last: Option<String>,
}

/// An authenticated connection waiting to be served, with a handle on its socket.
type Authenticated = (Session<TcpStream>, std::net::SocketAddr, TcpStream);

/// A handshake in progress.
struct Handshake {
    peer: std::net::SocketAddr,
    deadline: Instant,
    /// A handle on the socket, to shut it down.
    socket: TcpStream,
    /// Set once the peer proved the key: the deadline no longer applies.
    authenticated: Arc<AtomicBool>,
    /// Its socket was shut down (deadline, eviction): it no longer counts.
    cut: bool,
    thread: std::thread::JoinHandle<()>,
}

fn report(errors: &Mutex<ErrorTally>, peer: std::net::SocketAddr, e: String) {
    eprintln!("uplink: connection from {peer} refused or broken: {e}");
    let mut errors = errors.lock().unwrap_or_else(|e| e.into_inner());
    errors.count += 1;
    errors.last = Some(e);
}

/// The listener's thread: accepts connections, runs their handshakes on threads of their
/// own, cuts off those past [`HANDSHAKE_DEADLINE`], and hands authenticated sessions to
/// one serving thread. At `stop`, the session being served is shut down (the robot
/// keeps its log and sends the rest to the next run), queued ones are dropped, and the
/// serving thread is joined before it returns.
fn accept_loop(
    listener: TcpListener,
    key: Key,
    mut receiver: Receiver,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<ErrorTally>>,
) {
    let (auth_tx, auth_rx) = mpsc::sync_channel::<Authenticated>(MAX_WAITING_SESSIONS);
    let serving_socket: Arc<Mutex<Option<TcpStream>>> = Arc::new(Mutex::new(None));
    let serving = {
        let (errors, stop, current) = (errors.clone(), stop.clone(), serving_socket.clone());
        std::thread::Builder::new()
            .name("uplink-serve".into())
            .spawn(move || {
                // Ends when the accepting side drops its sender (stop or drop).
                for (mut session, peer, socket) in auth_rx {
                    {
                        // Under the lock the stopping side takes to shut the served
                        // socket: either it sees this one, or this sees the stop.
                        let mut served = current.lock().unwrap_or_else(|e| e.into_inner());
                        if stop.load(Ordering::SeqCst) {
                            continue;
                        }
                        *served = Some(socket);
                    }
                    let served = serve_records(&mut session, &mut receiver);
                    *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    if let Err(e) = served {
                        report(&errors, peer, e.to_string());
                    }
                }
            })
    };
    let serving = match serving {
        Ok(h) => h,
        Err(e) => {
            report(
                &errors,
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                format!("cannot start the serving thread: {e}"),
            );
            return;
        }
    };
    let mut pending: Vec<Handshake> = vec![];
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        pending.retain_mut(|h| {
            if h.thread.is_finished() {
                return false;
            }
            if !h.cut && now >= h.deadline && !h.authenticated.load(Ordering::SeqCst) {
                let _ = h.socket.shutdown(std::net::Shutdown::Both);
                h.cut = true;
            }
            true
        });
        let Ok((tcp, peer)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let same_peer = pending
            .iter()
            .filter(|h| !h.cut && h.peer.ip() == peer.ip())
            .count();
        if same_peer >= MAX_HANDSHAKES_PER_PEER {
            report(
                &errors,
                peer,
                format!("{same_peer} handshakes from this address already in progress; closed"),
            );
            continue;
        }
        if pending.iter().filter(|h| !h.cut).count() >= MAX_HANDSHAKES {
            // The oldest goes (it ends, and leaves `pending`, shortly).
            if let Some(oldest) = pending
                .iter_mut()
                .filter(|h| !h.cut && !h.authenticated.load(Ordering::SeqCst))
                .min_by_key(|h| h.deadline)
            {
                let _ = oldest.socket.shutdown(std::net::Shutdown::Both);
                oldest.cut = true;
            }
        }
        let _ = tcp.set_nonblocking(false);
        let _ = tcp.set_read_timeout(Some(HANDSHAKE_DEADLINE));
        let _ = tcp.set_write_timeout(Some(HANDSHAKE_DEADLINE));
        let (Ok(socket), Ok(control)) = (tcp.try_clone(), tcp.try_clone()) else {
            report(&errors, peer, "cannot clone the socket".into());
            continue;
        };
        let authenticated = Arc::new(AtomicBool::new(false));
        let thread = {
            let (key, tx, errors, done) = (
                key.clone(),
                auth_tx.clone(),
                errors.clone(),
                authenticated.clone(),
            );
            std::thread::Builder::new()
                .name("uplink-handshake".into())
                .spawn(move || match Session::server(tcp, &key) {
                    Ok(session) => {
                        done.store(true, Ordering::SeqCst);
                        let _ = control.set_read_timeout(Some(SESSION_TIMEOUT));
                        let _ = control.set_write_timeout(Some(SESSION_TIMEOUT));
                        match tx.try_send((session, peer, control)) {
                            Ok(()) | Err(mpsc::TrySendError::Disconnected(_)) => {}
                            Err(mpsc::TrySendError::Full((mut session, peer, _))) => {
                                let why = format!(
                                    "{MAX_WAITING_SESSIONS} authenticated connections already \
                                     wait while another is served: this trainer serves one \
                                     robot at a time (a robot that reconnects is served once \
                                     the connections before it end; a silent one ends after \
                                     {} s)",
                                    SESSION_TIMEOUT.as_secs()
                                );
                                let _ = uplink::records::refuse(&mut session, &why);
                                report(&errors, peer, why);
                            }
                        }
                    }
                    Err(e) => report(&errors, peer, e.to_string()),
                })
        };
        match thread {
            Ok(thread) => pending.push(Handshake {
                peer,
                deadline: now + HANDSHAKE_DEADLINE,
                socket,
                authenticated,
                cut: false,
                thread,
            }),
            Err(e) => report(&errors, peer, format!("cannot start a handshake: {e}")),
        }
    }
    for h in &pending {
        let _ = h.socket.shutdown(std::net::Shutdown::Both);
    }
    if let Some(s) = serving_socket
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    drop(auth_tx);
    for h in pending {
        let _ = h.thread.join();
    }
    let _ = serving.join();
}

impl Listener {
    /// Binds `addr` and starts serving; transitions arrive on the returned channel.
    pub fn start(
        addr: &str,
        key: Key,
        dir: &Path,
        bundles: &Path,
        check: Check,
    ) -> Result<(Listener, mpsc::Receiver<Step>)> {
        // Its entry in the run's directory durable too before any record is
        // acknowledged (the logs inside are synced, and their directory, not its parent).
        dataset::create_dir_durably(dir).with_context(|| format!("creating {}", dir.display()))?;
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(ErrorTally::default()));
        let receiver = Receiver {
            dir: dir.to_path_buf(),
            bundles: bundles.to_path_buf(),
            logs: HashMap::new(),
            unsynced: HashMap::new(),
            tx,
            check,
        };
        let (st, er) = (stop.clone(), errors.clone());
        let handle = std::thread::Builder::new()
            .name("uplink-server".into())
            .spawn(move || accept_loop(listener, key, receiver, st, er))?;
        Ok((
            Listener {
                stop,
                handle: Some(handle),
                errors,
                addr: local,
            },
            rx,
        ))
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Widens a robot run's observation bounds over the transitions `online` took since it
/// had `before` pushes ([`crate::robot::RobotInfo::widen_bounds`]): its bundles' bounds
/// are the range of everything it trained on.
fn widen_since(
    robot: Option<&mut crate::robot::RobotInfo>,
    online: &crate::replay::Replay,
    before: u64,
) {
    if let Some(robot) = robot {
        let k = usize::try_from(online.pushes() - before).unwrap_or(usize::MAX);
        for rows in online.last_pushed_observations(k) {
            robot.widen_bounds(rows);
        }
    }
}

/// A robot run whose data recorded no action mapping (a recording from before
/// 2026-12-07, LeRobot's) takes the mapping of the first stream that records one
/// ([`Check::adopted`]), as `finetune --data` takes a dataset's: the bundles it
/// publishes then carry it, and a robot file mapping the actions otherwise is refused at
/// the swap. One whose data named no observations takes the first stream's names
/// alike (said when the stream's record was taken).
fn take_adopted(agent: &mut crate::agent::Agent, adopted: &Adopted) {
    let Some(robot) = agent.robot.as_mut() else {
        return;
    };
    if let Some(m) = adopted.mapping.get()
        && robot.take_action_mapping(m)
    {
        eprintln!(
            "finetune: the run's data recorded no action mapping; the run takes the robot \
             stream's (its checkpoints and bundles carry it)"
        );
    }
    if let Some(names) = adopted.observation_names.get() {
        robot.take_observation_names(names);
    }
}

/// The update count of the newest bundle under `root` (directories named by it), of
/// those whose publish completed ([`bundle_complete`], by the bundle's own files:
/// whether this session signs does not matter, where a resume that added or dropped
/// `--signing-key` took the other kind's complete bundles for unpublished and wrote
/// over them). A publish that was killed left temporaries (or a manifest whose
/// signature is still a temporary) only, and is published again.
fn newest_bundle(root: &std::path::Path) -> Option<usize> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| bundle_complete(&e.path()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // Seven digits or more (`{n:07}`: past 9,999,999 updates, eight).
            (name.len() >= 7 && name.bytes().all(|b| b.is_ascii_digit()))
                .then(|| name.parse().ok())?
        })
        .max()
}

/// Makes `root/latest` name bundle `newest` (the newest complete one) where it names
/// another or is missing, and says so; returns whether it did. A publish killed between
/// its bundle and `latest`, or a power cut that undid `latest`'s rename, left it naming
/// an older bundle (or none), and the robot was offered that one until the next
/// publish: never, after a run's last.
fn point_latest_at(root: &std::path::Path, newest: usize) -> Result<bool> {
    let name = format!("{newest:07}");
    let latest = root.join("latest");
    let named = std::fs::read_to_string(&latest).ok();
    if named.as_deref().map(str::trim) == Some(name.as_str()) {
        return Ok(false);
    }
    eprintln!(
        "finetune: {} named {}, not the newest complete bundle {name} (a publish was cut \
         short); it names {name} now",
        latest.display(),
        named
            .as_deref()
            .map_or("nothing".into(), |n| format!("`{}`", n.trim()))
    );
    crate::run::replace_file(&latest, format!("{name}\n").as_bytes())?;
    Ok(true)
}

/// The export time the manifest of the published bundle in `dir` says; `None` when it
/// does not read (the clock's time is all there is then).
fn published_stamp(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(shared_model::manifest::MANIFEST_FILE)).ok()?;
    let m: shared_model::manifest::Manifest = toml::from_str(&text).ok()?;
    Some(m.provenance.created_unix)
}

/// Clears the bundle directory `dir` for a publish, where a killed one left part of a
/// bundle (graphs renamed into place, no manifest, or a manifest whose signature never
/// followed): such a bundle was taken for published, or refused by the export, and
/// every resume ended there until it was removed by hand. Never touches a complete
/// bundle (a robot may have fetched it).
fn clear_unfinished_bundle(dir: &std::path::Path) -> Result<()> {
    if dir.exists() && !bundle_complete(dir) {
        eprintln!(
            "finetune: {} holds a bundle whose publish did not complete; it is removed and \
             published again",
            dir.display()
        );
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the unfinished bundle {}", dir.display()))?;
    }
    Ok(())
}

/// Streamed transitions into the online replay, one chunker per stream log (chunks are
/// consecutive steps of one robot), and where the training loop is in each log.
struct Intake {
    logs: HashMap<String, LogIntake>,
    positions: BTreeMap<String, LogPosition>,
    chunks: crate::replay::ChunkSpec,
    keep_interventions: bool,
    /// Episodes begun in the steps taken (over every log), whether any of those steps
    /// had a reward other than 0, and whether [`NO_REWARD_EPISODES`] was warned of.
    episodes_begun: usize,
    rewarded: bool,
    warned_no_reward: bool,
}

/// Complete streamed episodes without any reward after which a session warns once
/// (the offline paths warn of a dataset whose every reward is 0). Sparse rewards give
/// a failed episode none, so a few are expected early in fine-tuning; twenty in a row
/// are more often a robot whose successes are never labelled.
pub(crate) const NO_REWARD_EPISODES: usize = 20;

/// One stream log's chunker, the record indices of the steps waiting in it, oldest
/// first, and the episode and step of the last step it took.
struct LogIntake {
    chunker: crate::replay::Chunker,
    waiting: VecDeque<u64>,
    last: Option<(u32, u32)>,
}

impl Intake {
    /// Going on from `positions` (a checkpoint's).
    fn new(
        positions: BTreeMap<String, LogPosition>,
        chunks: crate::replay::ChunkSpec,
        keep_interventions: bool,
    ) -> Intake {
        Intake {
            logs: HashMap::new(),
            positions,
            chunks,
            keep_interventions,
            episodes_begun: 0,
            rewarded: false,
            warned_no_reward: false,
        }
    }

    /// Counts the episode a step may begin and its reward; warns once (stderr and
    /// `summary.warnings`) when [`NO_REWARD_EPISODES`] episodes ended without any.
    fn watch_rewards(
        &mut self,
        reward: f32,
        begins: bool,
        summary: &mut crate::finetune::FinetuneSummary,
    ) {
        self.episodes_begun += begins as usize;
        self.rewarded |= reward.is_finite() && reward != 0.0;
        // The episode this step begins is the one after NO_REWARD_EPISODES ended.
        if !self.rewarded && !self.warned_no_reward && self.episodes_begun > NO_REWARD_EPISODES {
            self.warned_no_reward = true;
            let w = format!(
                "none of the first {NO_REWARD_EPISODES} episodes streamed in this session had a reward \
                 (every reward 0: failures only, or successes never labelled); the critics \
                 learn nothing about success until one arrives. Successes are labelled by the \
                 firmware's `Reward` frames or the operator's `s` key (`controller run \
                 --operator`)"
            );
            eprintln!("warning: finetune: {w}");
            summary.warnings.push(w);
        }
    }

    /// [`Self::take`] for each of `steps`, then a robot run's bounds widened over the
    /// transitions stored ([`widen_since`]); returns the updates they are owed.
    fn take_all(
        &mut self,
        steps: impl Iterator<Item = Step>,
        online: &mut crate::replay::Replay,
        summary: &mut crate::finetune::FinetuneSummary,
        robot: Option<&mut crate::robot::RobotInfo>,
    ) -> usize {
        let before = online.pushes();
        let owed = steps.map(|step| self.take(step, online, summary)).sum();
        widen_since(robot, online, before);
        owed
    }

    /// One streamed transition into `online` through its stream's chunker, or counted
    /// as unusable or not admitted; returns the updates it is owed (1 when stored).
    fn take(
        &mut self,
        step: Step,
        online: &mut crate::replay::Replay,
        summary: &mut crate::finetune::FinetuneSummary,
    ) -> usize {
        summary.streamed += 1;
        let chunks = self.chunks;
        let log = self
            .logs
            .entry(step.log.clone())
            .or_insert_with(|| LogIntake {
                chunker: crate::replay::Chunker::new(step.obs.len(), step.action.len(), chunks),
                waiting: VecDeque::new(),
                last: None,
            });
        // A chunk takes only consecutive steps of one episode: it is cut where a step
        // does not follow the last one taken. So an episode that ended without a `done`
        // step (its end is in the log's `EpisodeEnd` record, which is not forwarded) ends
        // where the next one begins, also the next run's (appended to the same log, its
        // episodes numbered from 0 again), as `finetune --data` cuts at the dataset's
        // episode boundaries; and a step lost on the link cuts too. (Only the
        // observations' bits told episodes apart: a robot at rest starts the next one
        // where the last one stopped.)
        let follows = step
            .step
            .checked_sub(1)
            .is_some_and(|before| log.last == Some((step.episode, before)));
        if !follows {
            log.chunker.cut();
        }
        // A new episode: another number, or its steps counted again from the start.
        let begins = !log
            .last
            .is_some_and(|(episode, last)| episode == step.episode && step.step > last);
        log.last = Some((step.episode, step.step));
        let owed = take_step(
            &step,
            &mut log.chunker,
            online,
            summary,
            self.keep_interventions,
        );
        log.waiting.push_back(step.index);
        while log.waiting.len() > log.chunker.pending() {
            log.waiting.pop_front();
        }
        let reward = step.reward;
        let p = self.positions.entry(step.log).or_default();
        p.taken = p.taken.max(step.index + 1);
        p.in_replay = log.waiting.front().copied().unwrap_or(step.index + 1);
        self.watch_rewards(reward, begins, summary);
        owed
    }

    /// Takes from the stream logs in `dir` what the replay lacks at the positions this
    /// intake started from ([`recover_logged`]); returns how many transitions, and the
    /// updates owed to those the positions had not taken.
    fn recover(
        &mut self,
        dir: &Path,
        check: &mut Check,
        online: &mut crate::replay::Replay,
        summary: &mut crate::finetune::FinetuneSummary,
    ) -> Result<(usize, usize)> {
        let start = self.positions.clone();
        let mut owed = 0;
        let recovered = recover_logged(dir, &start, check, |step| {
            let new = step.index >= start.get(&step.log).map_or(0, |p| p.taken);
            let due = self.take(step, online, summary);
            if new {
                owed += due;
            }
        })?;
        Ok((recovered, owed))
    }

    /// Into a checkpoint's state, with the transitions streamed so far (of which the
    /// steps still waiting for the rest of a chunk are taken again from the logs by a
    /// run that continues it, and counted then) and the updates owed.
    fn capture(&self, state: &mut crate::run::RunState, streamed: usize, owed: usize) {
        let waiting: usize = self.logs.values().map(|l| l.waiting.len()).sum();
        state.live_streamed = streamed - waiting;
        state.live_logs = Some(self.positions.clone());
        state.live_owed = owed;
    }
}

fn take_step(
    step: &Step,
    chunker: &mut crate::replay::Chunker,
    online: &mut crate::replay::Replay,
    summary: &mut crate::finetune::FinetuneSummary,
    keep_interventions: bool,
) -> usize {
    if let Some(why) = &step.unusable {
        if summary.streamed_unusable == 0 {
            eprintln!(
                "finetune: not training on a transition of stream {}: {why} \
                 (kept in OUT/uplink/; further ones are only counted)",
                step.stream
            );
        }
        summary.streamed_unusable += 1;
        chunker.cut();
        return 0;
    }
    if !summary.admit(step.intervention, step.teleop, keep_interventions) {
        chunker.cut();
        return 0;
    }
    let left_out_before = chunker.non_finite_rewards();
    summary.replay_transitions += chunker.push(
        online,
        &step.obs,
        &step.action,
        step.reward,
        &step.next_obs,
        step.terminal,
        step.episode_end,
    );
    summary.chunks_non_finite += chunker.non_finite_rewards() - left_out_before;
    1
}

/// The `--listen` training loop (called by [`crate::finetune::finetune`] once the run is
/// loaded): trains one update per received transition until `o.updates`, publishing
/// bundles on the way, then checkpoints.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_live(
    o: &crate::finetune::FinetuneOptions,
    live: &crate::finetune::LiveOptions,
    agent: &mut crate::agent::Agent,
    state: &mut crate::run::RunState,
    online: &mut crate::replay::Replay,
    (offline, offline_fraction): (&crate::replay::Replay, f32),
    summary: &mut crate::finetune::FinetuneSummary,
    progress: &mut dyn crate::run::Progress,
) -> Result<()> {
    use crate::agent::StepBatch;
    use crate::replay::draw_mixed;
    use sim::rng::Rng;

    let config = agent.config.clone();
    let uplink_dir = o.out.join("uplink");
    // Where the replay is in each stream log. A checkpoint is taken between updates, so
    // transitions logged (and acknowledged) after it, or still queued for the training
    // loop, or waiting for the rest of an action chunk, are in the log but not in its
    // replay, and the robot does not send them again: they are taken from the log here,
    // before the robot connects. Those the checkpoint had not taken are owed updates.
    let start = match state.live_logs.clone() {
        Some(positions) => positions,
        None => held_whole(&uplink_dir)?,
    };
    let mut intake = Intake::new(start, config.chunks(), o.keep_interventions);
    let mut check = Check::new(
        (agent.obs_dim, agent.act_dim / config.action_horizon),
        crate::finetune::RecordedBy::of(agent),
    );
    let adopted = check.adopted.clone();
    let before = online.pushes();
    let (recovered, mut owed) = intake.recover(&uplink_dir, &mut check, online, summary)?;
    widen_since(agent.robot.as_mut(), online, before);
    owed += state.live_owed;
    summary.recovered = recovered;
    if recovered > 0 {
        eprintln!(
            "finetune: {recovered} streamed transitions in {} that the replay lacked (logged \
             after its checkpoint, or waiting for the rest of an action chunk) are taken from \
             there; {owed} updates owed",
            uplink_dir.display()
        );
    }
    // Ctrl-C ends the session from here on, through the final checkpoint and bundle;
    // after it (its evaluation, a `--bundle` export), the signals do what they did
    // before (they stayed caught, and a SIGTERM was taken and ignored).
    let _restored_at_end = if live.stop.is_some_and(|s| std::ptr::eq(s, &SIGNALLED)) {
        let saved = controller::robot_loop::realtime::SavedSignals::save(&STOP_SIGNALS)
            .context("reading the dispositions of Ctrl-C, SIGTERM and SIGHUP")?;
        stop_on_signals().context("installing the handler of Ctrl-C, SIGTERM and SIGHUP")?;
        Some(saved)
    } else {
        None
    };
    let (listener, rx) = Listener::start(
        &live.addr,
        live.key.clone(),
        &uplink_dir,
        &o.out.join("bundles"),
        check,
    )?;
    eprintln!(
        "finetune: listening on {} for `controller run --uplink`",
        listener.addr
    );
    if let Some(tx) = &live.bound {
        let _ = tx.send(listener.addr);
    }
    let env_steps = state.env_step as u64;
    // Streamed in earlier sessions (a resume, or the run this one started from): the
    // bundles' provenance counts every robot transition streamed into this replay's
    // history, not this session's alone.
    let streamed_before = state.live_streamed;
    let mut batch_rng = Rng::from_state(state.batch_rng);
    let mut rows = Vec::new();
    let mut updates = state.finetune_updates;
    let started_at = updates;
    // `finetune.csv` rows as in offline fine-tuning: every `--log-every` updates.
    let log_every = o.log_every.max(1);
    let mut log_clock = std::time::Instant::now();
    progress.phase("finetune (live)", o.updates as u64);
    // A published bundle is never written over: a robot fetches each name once. After a
    // resume from an earlier checkpoint, publishing starts again past the newest bundle.
    let newest_published = newest_bundle(&o.out.join("bundles"));
    if let Some(n) = newest_published {
        point_latest_at(&o.out.join("bundles"), n)?;
    }
    if let Some(n) = newest_published.filter(|&n| n > updates) {
        eprintln!(
            "finetune: bundles up to {n:07} were published before this resume (at {updates} \
             updates); the next is published after update {n}"
        );
    }
    // Each bundle is stamped no earlier than the one before it (the robot takes none
    // stamped before the newest it took): from the newest published before a resume.
    let last_stamp = std::cell::Cell::new(
        newest_published
            .and_then(|n| published_stamp(&o.out.join("bundles").join(format!("{n:07}"))))
            .unwrap_or(0),
    );
    let publish = |agent: &crate::agent::Agent,
                   n: usize,
                   summary: &mut crate::finetune::FinetuneSummary|
     -> Result<()> {
        if newest_published.is_some_and(|newest| n <= newest) {
            return Ok(());
        }
        let root = o.out.join("bundles");
        let name = format!("{n:07}");
        clear_unfinished_bundle(&root.join(&name))?;
        let info = crate::export::ExportInfo {
            dataset: format!(
                "live fine-tuning, {} robot transitions",
                streamed_before + summary.streamed
            ),
            env_steps,
            executed_steps: None,
            not_before_unix: last_stamp.get(),
        };
        let exported = crate::export::export_bundle(
            agent,
            &root.join(&name),
            &info,
            live.signing_key.as_ref(),
        );
        if let Err(e) = &exported
            && e.downcast_ref::<crate::export::ParityMismatch>().is_some()
        {
            // The robot keeps the bundle it has; training goes on.
            eprintln!("warning: finetune: bundle {name} not published: {e:#}");
            return Ok(());
        }
        last_stamp.set(exported?.provenance.created_unix);
        // `latest` names the newest complete bundle; written, synced, then renamed.
        crate::run::replace_file(&root.join("latest"), format!("{name}\n").as_bytes())?;
        summary.published.push(root.join(name));
        Ok(())
    };
    // The idle clock starts with the first transition: a robot may take a while to
    // connect. A resumed session that took transitions back from the logs (or owes
    // updates) starts it once it has nothing left to do: one whose robot has nothing
    // left to send ends `--idle-exit-s` after its owed updates (it waited for a first
    // streamed transition for ever).
    let mut last_data: Option<std::time::Instant> = None;
    let took_back = recovered > 0 || owed > 0;
    let stopped = || live.stop.is_some_and(|s| s.load(Ordering::SeqCst));
    while updates < o.updates {
        if stopped() {
            eprintln!(
                "finetune: stopping at a signal, after {updates} updates (the final \
                 checkpoint and bundle first; Ctrl-C again kills)"
            );
            break;
        }
        // Nothing to draw from yet (no offline data, and no chunk of H actions complete):
        // the owed updates wait for the first transition in the replay.
        let nothing_yet = offline.is_empty() && online.is_empty();
        match rx.recv_timeout(if owed > 0 && !nothing_yet {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        }) {
            Ok(first) => {
                last_data = Some(std::time::Instant::now());
                let steps = std::iter::once(first).chain(rx.try_iter());
                owed += intake.take_all(steps, online, summary, agent.robot.as_mut());
            }
            // Updates owed (recovered transitions): they go on.
            Err(mpsc::RecvTimeoutError::Timeout) if owed > 0 && !nothing_yet => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if took_back && last_data.is_none() {
                    last_data = Some(std::time::Instant::now());
                }
                if live
                    .idle_exit
                    .is_some_and(|d| last_data.is_some_and(|t| t.elapsed() >= d))
                {
                    eprintln!(
                        "finetune: no transitions for {:?}; stopping",
                        live.idle_exit.unwrap()
                    );
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let nothing_yet = offline.is_empty() && online.is_empty();
        while owed > 0 && updates < o.updates && !nothing_yet && !stopped() {
            // Transitions that arrived meanwhile go into the replay before the update
            // (and before a checkpoint below): a long run of owed updates (a robot back
            // after an hour away sends its backlog at once) left them queued.
            let steps = rx
                .try_iter()
                .inspect(|_| last_data = Some(std::time::Instant::now()));
            owed += intake.take_all(steps, online, summary, agent.robot.as_mut());
            // Before the checkpoint and the bundle below (a stream's run-start record
            // is checked before its transitions are sent here).
            take_adopted(agent, &adopted);
            draw_mixed(
                &mut batch_rng,
                offline,
                online,
                offline_fraction,
                config.optim.utd,
                config.optim.batch_size,
                &mut rows,
            );
            agent.train_step(StepBatch::Drawn {
                offline,
                online,
                rows: &rows,
            })?;
            owed -= 1;
            updates += 1;
            progress.advance(updates as u64, &format!("{} transitions", summary.streamed));
            if updates.is_multiple_of(log_every) {
                crate::run::log_updates_row(
                    &o.out.join("finetune.csv"),
                    agent,
                    updates,
                    log_clock.elapsed(),
                )?;
                log_clock = std::time::Instant::now();
            }
            // The checkpoint first: a publish that fails (a full disk) must not lose
            // the updates since the last one.
            if o.checkpoint_every > 0 && updates.is_multiple_of(o.checkpoint_every) {
                state.capture_agent(agent, &batch_rng);
                state.capture_metrics_window(agent, updates, log_every);
                state.finetune_updates = updates;
                intake.capture(state, streamed_before + summary.streamed, owed);
                crate::run::write_checkpoint(&o.out, agent, online, state)?;
            }
            if live.publish_every > 0 && updates.is_multiple_of(live.publish_every) {
                publish(agent, updates, summary)?;
            }
        }
    }
    let errors = listener
        .errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    listener.stop();
    // Transitions logged and acknowledged after the last update, up to the stop: into
    // the online replay (not trained on), so that the final checkpoint holds every
    // streamed transition. The robot will not send them again.
    owed += intake.take_all(rx.try_iter(), online, summary, agent.robot.as_mut());
    if let Some(last) = &errors.last {
        eprintln!(
            "finetune: {} uplink connection(s) ended in an error; the last: {last}",
            errors.count
        );
    }
    // Against the count this session started from: the checkpoints above move
    // `state.finetune_updates` along, and the last row went missing after one.
    if !updates.is_multiple_of(log_every) && updates > started_at {
        crate::run::log_updates_row(
            &o.out.join("finetune.csv"),
            agent,
            updates,
            log_clock.elapsed(),
        )?;
    }
    take_adopted(agent, &adopted);
    state.capture_agent(agent, &batch_rng);
    // The row for the last update is written above; a session that made no update
    // keeps the window its resume restored, for the next one.
    if updates > started_at {
        state.finetune_metrics_window = None;
    }
    state.finetune_updates = updates;
    intake.capture(state, streamed_before + summary.streamed, owed);
    crate::run::write_checkpoint(&o.out, agent, online, state)?;
    if summary
        .published
        .last()
        .is_none_or(|p| !p.ends_with(format!("{updates:07}")))
    {
        publish(agent, updates, summary)?;
    }
    summary.updates = updates;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle directory whose publish was killed before its manifest (or signature)
    /// counts as not published: a resume at its update count publishes it again (it was
    /// skipped, and the robot never got that update), into a directory cleared first.
    #[test]
    fn a_bundle_without_its_manifest_is_not_published() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert_eq!(newest_bundle(root), None);
        for (name, file) in [
            ("0001000", "manifest.sig"),
            ("0001000", "manifest.toml"),
            ("0002000", "manifest.toml"),
            ("0003000", ".denoiser.onnx.tmp"),
            ("0004000", "denoiser.onnx"),
            ("latest.d", "manifest.toml"),
            ("000500", "manifest.toml"),
        ] {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join(file), "").unwrap();
        }
        // An unsigned bundle is complete whether or not this session signs (a resume
        // that added `--signing-key` took it for unpublished and wrote over it).
        assert_eq!(newest_bundle(root), Some(2000));
        // Past 9,999,999 updates a name has eight digits.
        std::fs::create_dir_all(root.join("10000000")).unwrap();
        std::fs::write(root.join("10000000/manifest.toml"), "").unwrap();
        assert_eq!(newest_bundle(root), Some(10_000_000));
        std::fs::remove_dir_all(root.join("10000000")).unwrap();
        // A signed write killed between its manifest and its signature: not complete.
        std::fs::write(root.join("0002000/.manifest.sig.tmp"), "").unwrap();
        assert_eq!(newest_bundle(root), Some(1000));
        // The graph a killed publish renamed into place is cleared for the next one
        // (the export refused the directory, and every resume failed there); a
        // complete bundle is never touched.
        // (An export may write there too: what a killed write leaves is its own.)
        shared_model::manifest::check_bundle_target(&root.join("0004000")).unwrap();
        for name in ["0002000", "0004000"] {
            clear_unfinished_bundle(&root.join(name)).unwrap();
            assert!(!root.join(name).exists(), "{name}");
        }
        clear_unfinished_bundle(&root.join("0001000")).unwrap();
        assert!(root.join("0001000/manifest.sig").is_file());
        clear_unfinished_bundle(&root.join("0005000")).unwrap();
    }

    /// A session's start makes `latest` name the newest complete bundle where a publish
    /// cut short (or a power cut) left it naming an older one, or none: the robot was
    /// offered that one until the next publish, never after the run's last.
    #[test]
    fn latest_names_the_newest_complete_bundle_at_a_sessions_start() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let latest = || std::fs::read_to_string(root.join("latest")).ok();
        // None yet: named.
        assert!(point_latest_at(root, 2000).unwrap());
        assert_eq!(latest().as_deref(), Some("0002000\n"));
        // Already so: left as it is.
        assert!(!point_latest_at(root, 2000).unwrap());
        // An older one named.
        std::fs::write(root.join("latest"), "0001000\n").unwrap();
        assert!(point_latest_at(root, 2000).unwrap());
        assert_eq!(latest().as_deref(), Some("0002000\n"));
        // As the live intake reads it.
        assert!(!root.join("latest.tmp").exists());
    }

    /// Every connection that ended in an error is counted, however many: the summary
    /// said "1000" once more than 1,000 had (it counted the lines it kept).
    #[test]
    fn every_failed_connection_is_counted() {
        let errors = Mutex::new(ErrorTally::default());
        let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        for i in 0..1500 {
            report(&errors, peer, format!("error {i}"));
        }
        let errors = errors.into_inner().unwrap();
        assert_eq!(errors.count, 1500);
        assert_eq!(errors.last.as_deref(), Some("error 1499"));
    }

    /// A receiver of observation 3 / action 2 streams for a run whose observations are
    /// `names` (none: not compared), logging under `dir/uplink`; and its channel.
    fn receiver(dir: &Path, names: Vec<String>) -> (Receiver, mpsc::Receiver<Step>) {
        let (tx, rx) = mpsc::channel();
        let r = Receiver {
            dir: dir.join("uplink"),
            bundles: dir.join("b"),
            logs: HashMap::new(),
            unsynced: HashMap::new(),
            tx,
            check: Check::new((3, 2), crate::finetune::RecordedBy::named(names)),
        };
        std::fs::create_dir_all(&r.dir).unwrap();
        (r, rx)
    }

    /// The bytes of a stream's run-start record naming observations `obs` (actions `x`,
    /// `y`, no mapping).
    fn stream_start(obs: &[&str]) -> Vec<u8> {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut bytes = vec![];
        Record::Run(controller::robot_loop::log::RunStart {
            robot: "r".into(),
            task: "push".into(),
            fps: 20,
            observation_names: names(obs),
            action_names: names(&["x", "y"]),
            bundle: "b".into(),
            started_unix: 0,
            run_id: "run-1".into(),
            action_scale: vec![],
            action_offset: vec![],
        })
        .encode(&mut bytes);
        bytes
    }

    /// A robot stream whose run-start record names other observations than the run's
    /// is refused at that record (nothing of it is logged or trained on); the same
    /// names pass.
    #[test]
    fn a_stream_of_another_robot_is_refused_by_its_observation_names() {
        let tmp = tempfile::tempdir().unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (mut receiver, _rx) = receiver(tmp.path(), names(&["a", "b", "c"]));
        let start = stream_start;
        receiver
            .append("same", 0, &start(&["a", "b", "c"]))
            .unwrap();
        assert_eq!(receiver.next_index("same"), Ok(1));
        let e = receiver
            .append("other", 0, &start(&["a", "c", "b"]))
            .unwrap_err();
        assert!(
            e.contains("first at [1] (`c` in the robot's stream, `b` in the run)"),
            "{e}"
        );
        assert_eq!(receiver.next_index("other"), Ok(0));
    }

    /// A run whose data named no observations (`observation.state.{i}`) takes the first
    /// stream's names for them (held for the training loop's agent, [`take_adopted`]),
    /// and refuses a later stream that names them otherwise; before, every stream was
    /// refused (its names differed from the made-up ones).
    #[test]
    fn a_run_without_observation_names_takes_the_first_streams() {
        let tmp = tempfile::tempdir().unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let made_up = names(&[
            "observation.state.0",
            "observation.state.1",
            "observation.state.2",
        ]);
        let (mut receiver, _rx) = receiver(tmp.path(), vec![]);
        let recorded_by = crate::finetune::RecordedBy::named(made_up).on_robot("r");
        receiver.check = Check::new((3, 2), recorded_by);
        let start = stream_start;
        receiver
            .append("first", 0, &start(&["a", "b", "c"]))
            .unwrap();
        let adopted = &receiver.check.adopted.observation_names;
        assert_eq!(adopted.get(), Some(&names(&["a", "b", "c"])));
        let e = receiver
            .append("other", 0, &start(&["a", "c", "b"]))
            .unwrap_err();
        assert!(
            e.contains("first at [1] (`c` in the robot's stream, `b` in the run)"),
            "{e}"
        );
        receiver
            .append("again", 0, &start(&["a", "b", "c"]))
            .unwrap();
    }

    /// A robot stream whose run-start record names the run's actions in another order
    /// is refused at that record (their values would be trained on as the other
    /// joints'); other spellings of them pass, and so does a stream of a controller from
    /// before 2026-12-07 (no action mapping: it named actions after the joints).
    #[test]
    fn a_stream_of_the_actions_in_another_order_is_refused() {
        use controller::robot_loop::log::RunStart;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let recorded_by = crate::finetune::RecordedBy::named(names(&["a", "b", "c"]));
        let mut check = Check::new((3, 2), recorded_by.acting(names(&["x", "y"])));
        let start = |actions: &[&str], scale: Vec<f32>| {
            Record::Run(RunStart {
                robot: "r".into(),
                task: "push".into(),
                fps: 20,
                observation_names: names(&["a", "b", "c"]),
                action_names: names(actions),
                bundle: "b".into(),
                started_unix: 0,
                run_id: String::new(),
                action_offset: vec![0.0; scale.len()],
                action_scale: scale,
            })
        };
        let mapped = || vec![1.0, 1.0];
        assert_eq!(check.refusal(&start(&["x", "y"], mapped())), None);
        assert_eq!(check.refusal(&start(&["x.pos", "y.pos"], mapped())), None);
        assert_eq!(check.refusal(&start(&["y", "x"], vec![])), None);
        let e = check.refusal(&start(&["y", "x"], mapped())).unwrap();
        assert!(
            e.starts_with(
                "action `y` is at [0] in the robot's stream and at [1] in the run's data: the \
                 same actions in another order"
            ),
            "{e}"
        );
    }

    /// A stream whose run-start record maps the actions impossibly (other lengths, a
    /// zero scale, one list alone) is refused, and its mapping not taken: a run whose
    /// data recorded none took it on for good (every bundle refused at the swap).
    #[test]
    fn a_stream_with_an_invalid_action_mapping_is_refused() {
        use controller::robot_loop::log::RunStart;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut check = Check::new(
            (3, 2),
            crate::finetune::RecordedBy::named(names(&["a", "b", "c"])),
        );
        let start = |scale: Vec<f32>, offset: Vec<f32>| {
            Record::Run(RunStart {
                robot: "r".into(),
                task: "push".into(),
                fps: 20,
                observation_names: names(&["a", "b", "c"]),
                action_names: names(&["x", "y"]),
                bundle: "b".into(),
                started_unix: 0,
                run_id: String::new(),
                action_scale: scale,
                action_offset: offset,
            })
        };
        let mapping = |why: &str| format!("the robot's stream's action mapping {why}");
        for (scale, offset, said) in [
            (
                vec![1.0],
                vec![0.0, 0.0],
                mapping("holds 1 scales and 2 offsets for 2 actions"),
            ),
            (vec![1.0, 0.0], vec![0.0, 0.0], mapping("scale [1] is 0")),
            (
                vec![1.0, 1.0],
                vec![],
                mapping("holds 2 scales and 0 offsets for 2 actions"),
            ),
            // Another robot's actions: said as such.
            (
                vec![1.0; 3],
                vec![0.0; 3],
                "the robot's stream maps 3 actions per step, the run takes 2".into(),
            ),
        ] {
            let e = check.refusal(&start(scale, offset)).unwrap();
            assert_eq!(e, said);
            assert!(check.adopted.mapping.get().is_none());
        }
        // A valid one is taken.
        assert_eq!(check.refusal(&start(vec![2.0, 2.0], vec![0.0, 0.0])), None);
        assert!(check.adopted.mapping.get().is_some());
    }

    /// A robot stream recorded at another rate than the run's data is refused at its
    /// run-start record, as `finetune --data` refuses such a dataset (it was trained on,
    /// each step taken as the run's length of time).
    #[test]
    fn a_stream_at_another_rate_is_refused() {
        use controller::robot_loop::log::RunStart;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut check = Check::new(
            (3, 2),
            crate::finetune::RecordedBy::named_at(names(&["a", "b", "c"]), Some(20)),
        );
        let start = |fps: u32| {
            Record::Run(RunStart {
                robot: "r".into(),
                task: "push".into(),
                fps,
                observation_names: names(&["a", "b", "c"]),
                action_names: names(&["x", "y"]),
                bundle: "b".into(),
                started_unix: 0,
                run_id: String::new(),
                action_scale: vec![],
                action_offset: vec![],
            })
        };
        assert_eq!(check.refusal(&start(20)), None);
        let e = check.refusal(&start(50)).unwrap();
        assert!(
            e.starts_with("the robot's stream was recorded at 50 Hz, the run's data at 20 Hz"),
            "{e}"
        );

        // A run whose data recorded the robot file's action mapping refuses a stream
        // recorded with another one; a stream of an older controller (none) passes.
        let mapping = |offset: f32| dataset::ActionMapping {
            scale: vec![0.5, 0.5],
            offset: vec![0.0, offset],
        };
        let mut check = Check {
            recorded_by: check.recorded_by.mapped(mapping(0.2)),
            ..check
        };
        let mapped = |offset: f32| match start(20) {
            Record::Run(run) => Record::Run(RunStart {
                action_scale: mapping(offset).scale,
                action_offset: mapping(offset).offset,
                run_id: format!("run-{offset}"),
                ..run
            }),
            _ => unreachable!(),
        };
        assert_eq!(check.refusal(&start(20)), None);
        assert_eq!(check.refusal(&mapped(0.2)), None);
        let e = check.refusal(&mapped(0.3)).unwrap();
        assert!(
            e.starts_with(
                "action [1] was recorded as 0.3 + 0.5 × a in robot units in the robot's \
                 stream, as 0.2 + 0.5 × a in the run's data"
            ),
            "{e}"
        );

        // A run whose data recorded none compares streams with the first that records
        // one: two robots mapping the actions otherwise do not train one policy.
        let mut unmapped = Check::new(
            (3, 2),
            crate::finetune::RecordedBy::named_at(names(&["a", "b", "c"]), Some(20)),
        );
        assert_eq!(unmapped.refusal(&start(20)), None);
        assert_eq!(unmapped.refusal(&mapped(0.3)), None);
        let e = unmapped.refusal(&mapped(0.2)).unwrap();
        assert!(
            e.contains("0.2 + 0.5 × a in robot units in the robot's stream, as 0.3 + 0.5 × a in the robot's stream of run run-0.3"),
            "{e}"
        );
    }

    /// A stream whose log cannot be opened now (another process holds it) refuses the
    /// session rather than announcing 0 records held, which had the robot send the whole
    /// stream again, appended after what the log held; and a record goes only at its own
    /// position of the log.
    #[test]
    fn a_log_that_cannot_be_opened_refuses_the_session_instead_of_resuming_at_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut receiver, _rx) = receiver(tmp.path(), vec![]);
        let path = receiver.dir.join(file_name("s"));
        let record = |i: u32| {
            let mut bytes = vec![];
            Record::EpisodeStart {
                episode: i,
                seed: i as u64,
            }
            .encode(&mut bytes);
            bytes
        };
        {
            // An earlier session's three records.
            let mut w = LogWriter::open(&path).unwrap();
            for i in 0..3 {
                w.append(&Record::decode(&record(i)).unwrap()).unwrap();
            }
        }
        let holder = LogWriter::open(&path).unwrap();
        let e = receiver.next_index("s").unwrap_err();
        assert!(e.contains("in use") || e.contains("lock"), "{e}");
        drop(holder);
        let e = receiver.append("s", 0, &record(9)).unwrap_err();
        assert!(e.contains("record 0 sent") && e.contains("holds 3"), "{e}");
        assert_eq!(receiver.next_index("s"), Ok(3));
        receiver.append("s", 3, &record(9)).unwrap();
        assert_eq!(
            controller::robot_loop::log::read_log(&path)
                .unwrap()
                .records
                .len(),
            4
        );
    }

    /// A transition with a value that is not finite or an action outside `[-1, 1]` is
    /// logged and acknowledged like any other, and reaches the training loop marked
    /// unusable, naming why.
    #[test]
    fn unusable_transitions_are_logged_and_marked() {
        use controller::robot_loop::log::Transition;
        use firmware_config::protocol::{MAX_ACT, MAX_OBS};
        let tmp = tempfile::tempdir().unwrap();
        let (mut receiver, rx) = receiver(tmp.path(), vec![]);
        let transition = |step: u32, action: [f32; 2], reward: f32| {
            let mut t = Transition {
                episode: 4,
                step,
                obs_dim: 3,
                act_dim: 2,
                obs: [0.5; MAX_OBS],
                action: [0.0; MAX_ACT],
                reward,
                done: false,
                truncated: false,
                success: false,
                intervention: false,
                teleop: false,
                next_obs: [0.5; MAX_OBS],
                obs_fw_us: 0,
                next_obs_fw_us: 0,
                obs_rx_ns: 0,
                action_sent_ns: 0,
                next_obs_rx_ns: 0,
            };
            t.action[..2].copy_from_slice(&action);
            let mut bytes = vec![];
            Record::Transition(t).encode(&mut bytes);
            bytes
        };
        let sent = [
            transition(0, [0.5, -1.0], 1.0),
            transition(1, [0.5, 1.5], 1.0),
            transition(2, [0.5, 0.0], f32::NAN),
        ];
        for (i, bytes) in sent.iter().enumerate() {
            receiver.append("r", i as u64, bytes).unwrap();
        }
        assert_eq!(receiver.next_index("r"), Ok(3), "every record is logged");
        receiver.make_durable("r").unwrap();
        let why: Vec<Option<String>> = rx.try_iter().map(|s| s.unusable).collect();
        assert_eq!(
            why,
            [
                None,
                Some("episode 4, step 1: action[1] = 1.5 is outside the policy's [-1, 1]".into()),
                Some("episode 4, step 2: reward is NaN, not a finite value".into()),
            ]
        );
    }

    /// Record bytes of step `step` of episode 1 (observation 3, action 2): its
    /// observation is `step`, its next one `step + 1`, so consecutive steps chain.
    fn chained_step(step: u32, done: bool) -> Vec<u8> {
        episode_step(1, step, step as f32, done)
    }

    /// Record bytes of step `step` of episode `episode`, from observation `at` to
    /// `at + 1`.
    fn episode_step(episode: u32, step: u32, at: f32, done: bool) -> Vec<u8> {
        use controller::robot_loop::log::Transition;
        use firmware_config::protocol::{MAX_ACT, MAX_OBS};
        let t = Transition {
            episode,
            step,
            obs_dim: 3,
            act_dim: 2,
            obs: [at; MAX_OBS],
            action: [0.1 * step as f32; MAX_ACT],
            reward: step as f32,
            done,
            truncated: false,
            success: done,
            intervention: false,
            teleop: false,
            next_obs: [at + 1.0; MAX_OBS],
            obs_fw_us: 0,
            next_obs_fw_us: 0,
            obs_rx_ns: 0,
            action_sent_ns: 0,
            next_obs_rx_ns: 0,
        };
        let mut bytes = vec![];
        Record::Transition(t).encode(&mut bytes);
        bytes
    }

    /// A checkpoint's replay lacks the transitions logged after it and a stream's steps
    /// waiting for the rest of an action chunk; the session that continues it takes them
    /// from the log (the robot does not send them again), owing updates only to those
    /// the checkpoint had not taken: its replay ends as an uninterrupted session's. They
    /// were lost.
    #[test]
    fn a_continued_replay_takes_what_it_lacks_from_the_logs() {
        use crate::finetune::FinetuneSummary;
        use crate::replay::{ChunkSpec, Replay};
        let tmp = tempfile::tempdir().unwrap();
        let (mut whole_log, rx) = receiver(tmp.path(), vec![]);
        for step in 0..8u32 {
            whole_log
                .append("r", u64::from(step), &chained_step(step, step == 7))
                .unwrap();
        }
        whole_log.make_durable("r").unwrap();
        drop(whole_log);
        let dir = tmp.path().join("uplink");
        let mut check = Check::new((3, 2), crate::finetune::RecordedBy::named(vec![]));
        let chunks = ChunkSpec {
            horizon: 3,
            discount: 0.9,
        };
        let mut summary = FinetuneSummary::default();
        // Uninterrupted: every step, in order.
        let mut whole = Replay::new(3, 6, 64);
        let mut intake = Intake::new(BTreeMap::new(), chunks, false);
        for step in rx.try_iter() {
            intake.take(step, &mut whole, &mut summary);
        }
        assert_eq!(whole.len(), 8);
        // A checkpoint after five steps: three chunks in its replay, steps 3 and 4
        // waiting for the rest of theirs.
        let (mut partial, mut intake) = (
            Replay::new(3, 6, 64),
            Intake::new(BTreeMap::new(), chunks, false),
        );
        let (mut first_five, rx) = receiver(&tmp.path().join("again"), vec![]);
        for step in 0..5u32 {
            first_five
                .append("r", u64::from(step), &chained_step(step, false))
                .unwrap();
        }
        first_five.make_durable("r").unwrap();
        for step in rx.try_iter() {
            intake.take(step, &mut partial, &mut summary);
        }
        assert_eq!(partial.len(), 3);
        let at = intake.positions.clone();
        assert_eq!(
            at.get(&file_name("r")),
            Some(&LogPosition {
                in_replay: 3,
                taken: 5
            })
        );
        // The session that continues it, on the whole log.
        let mut intake = Intake::new(at, chunks, false);
        let (recovered, owed) = intake
            .recover(&dir, &mut check, &mut partial, &mut summary)
            .unwrap();
        assert_eq!(
            (recovered, owed),
            (5, 3),
            "steps 3 to 7; updates for 5 to 7"
        );
        assert_eq!(partial.len(), whole.len());
        let (a, b) = (whole.rows(0..8), partial.rows(0..8));
        assert_eq!((a.obs, a.act, a.rew), (b.obs, b.act, b.rew));
        assert_eq!((a.next_obs, a.mask), (b.next_obs, b.mask));
        // A log the positions do not name is taken whole; one of an older checkpoint
        // (no positions) counts as held whole.
        let mut intake = Intake::new(BTreeMap::new(), chunks, false);
        let mut fresh = Replay::new(3, 6, 64);
        assert_eq!(
            intake
                .recover(&dir, &mut check, &mut fresh, &mut summary)
                .unwrap(),
            (8, 8)
        );
        let held = held_whole(&dir).unwrap();
        let mut intake = Intake::new(held, chunks, false);
        assert_eq!(
            intake
                .recover(&dir, &mut check, &mut fresh, &mut summary)
                .unwrap(),
            (0, 0)
        );
    }

    /// A stream the trainer holds nothing of (a robot asking under its log's older name)
    /// gets no log until its first record: an empty one was left, and carried into every
    /// run `--from` this one.
    #[test]
    fn asking_after_a_stream_leaves_no_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut first, _rx) = receiver(tmp.path(), vec![]);
        let logs = || {
            std::fs::read_dir(tmp.path().join("uplink"))
                .unwrap()
                .count()
        };
        assert_eq!(first.next_index("old name"), Ok(0));
        assert_eq!(first.make_durable("old name"), Ok(()));
        assert_eq!(logs(), 0);
        first.append("r", 0, &chained_step(0, false)).unwrap();
        first.make_durable("r").unwrap();
        assert_eq!((first.next_index("r"), logs()), (Ok(1), 1));
        // A log held from before (a resumed run) is counted without a record sent.
        drop(first);
        let (mut again, _rx) = receiver(tmp.path(), vec![]);
        assert_eq!(again.next_index("r"), Ok(1));
    }

    /// An episode that ended without a `done` step (a fault, an operator's reset) ends
    /// where the next begins, even when the next starts from the observation the last
    /// one stopped at (a robot at rest): no action chunk spans the two, as none does
    /// when `finetune --data` reads the same log as a dataset. Only the observations'
    /// bits were compared, so one chunk took its second action and its reward from the
    /// next episode. The same where the next is a later run's (a log appended to, its
    /// episodes numbered from 0 again), and where a step was lost on the link.
    #[test]
    fn a_chunk_never_spans_an_episode_that_ended_without_done() {
        use crate::finetune::FinetuneSummary;
        use crate::replay::{ChunkSpec, Replay};
        // (episode, step) of four records whose observations chain 0 -> 1 -> 2 -> 3 -> 4,
        // the last one `done`; the third begins anew.
        for (case, ids) in [
            ("the next episode", [(1, 0), (1, 1), (2, 0), (2, 1)]),
            ("the next run's episode 0", [(0, 0), (0, 1), (0, 0), (0, 1)]),
            ("a step lost", [(0, 0), (0, 1), (0, 3), (0, 4)]),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (mut receiver, rx) = receiver(tmp.path(), vec![]);
            for (i, (episode, step)) in ids.into_iter().enumerate() {
                let bytes = episode_step(episode, step, i as f32, i == 3);
                receiver.append("r", i as u64, &bytes).unwrap();
            }
            receiver.make_durable("r").unwrap();
            let chunks = ChunkSpec {
                horizon: 2,
                discount: 0.9,
            };
            let mut summary = FinetuneSummary::default();
            let mut online = Replay::new(3, 4, 64);
            let mut intake = Intake::new(BTreeMap::new(), chunks, false);
            for step in rx.try_iter() {
                intake.take(step, &mut online, &mut summary);
            }
            // The first record's chunk (with the second's action), then the last two's
            // (the last one terminal, a chunk of one); the second record has no chunk
            // of its own.
            let rows = online.rows(0..online.len());
            assert_eq!(
                rows.obs.chunks(3).map(|o| o[0]).collect::<Vec<_>>(),
                [0.0, 2.0, 3.0],
                "{case}"
            );
            assert_eq!(&rows.act[..4], &[0.0, 0.0, 0.1, 0.1], "{case}");
        }
    }

    /// Streamed transitions reach the training loop only once their log is synced: sent
    /// at append, a checkpoint could count them taken, a power cut of the trainer then
    /// take them from the log, and the robot (never acknowledged) send them again, to be
    /// trained on twice.
    #[test]
    fn transitions_reach_training_once_their_log_is_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut r, rx) = receiver(tmp.path(), vec![]);
        r.append("r", 0, &chained_step(0, false)).unwrap();
        r.append("r", 1, &chained_step(1, false)).unwrap();
        assert!(rx.try_recv().is_err(), "sent before the log was synced");
        r.make_durable("r").unwrap();
        let indices: Vec<u64> = rx.try_iter().map(|s| s.index).collect();
        assert_eq!(indices, [0, 1]);
        // Another stream's sync sends only its own.
        r.append("r", 2, &chained_step(2, false)).unwrap();
        r.append("s", 0, &chained_step(0, false)).unwrap();
        r.make_durable("s").unwrap();
        let sent: Vec<(String, u64)> = rx.try_iter().map(|s| (s.stream, s.index)).collect();
        assert_eq!(sent, [("s".to_string(), 0)]);
    }

    /// A session whose first twenty episodes streamed no reward says so once (stderr and
    /// the summary's warnings): nothing told a user that a robot whose successes were
    /// never labelled fine-tuned critics on zeros. One reward anywhere silences it.
    #[test]
    fn twenty_episodes_without_a_reward_are_warned_of_once() {
        use crate::finetune::FinetuneSummary;
        use crate::replay::{ChunkSpec, Replay};
        let step = |episode: u32, step: u32, reward: f32, index: u64| Step {
            obs: vec![0.0; 3],
            action: vec![0.0; 2],
            reward,
            next_obs: vec![0.0; 3],
            terminal: false,
            episode_end: step == 2,
            episode,
            step,
            stream: "r".into(),
            log: "r.log".into(),
            index,
            intervention: false,
            teleop: false,
            unusable: None,
        };
        let chunks = ChunkSpec {
            horizon: 1,
            discount: 0.9,
        };
        let run = |rewarded_episode: Option<u32>, episodes: u32| {
            let mut summary = FinetuneSummary::default();
            let mut online = Replay::new(3, 2, 1024);
            let mut intake = Intake::new(BTreeMap::new(), chunks, false);
            let mut index = 0;
            for e in 0..episodes {
                for t in 0..3 {
                    let r = if Some(e) == rewarded_episode && t == 2 {
                        1.0
                    } else {
                        0.0
                    };
                    intake.take(step(e, t, r, index), &mut online, &mut summary);
                    index += 1;
                }
            }
            summary.warnings
        };
        // Twenty complete episodes are not yet enough; the twenty-first's first step is.
        assert!(run(None, NO_REWARD_EPISODES as u32).is_empty());
        let w = run(None, 40);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("none of the first 20 episodes streamed in this session had a reward")
        );
        assert!(run(Some(7), 40).is_empty());
    }

    /// A log in `OUT/uplink/` of another run (other dimensions: a try `--from` another
    /// source left it) is refused, naming it, not taken into the replay (its rows would
    /// be misaligned); the receiver refuses such a stream the same way.
    #[test]
    fn a_log_of_another_run_is_not_taken_from() {
        use crate::finetune::FinetuneSummary;
        use crate::replay::{ChunkSpec, Replay};
        let tmp = tempfile::tempdir().unwrap();
        let (mut ours, _rx) = receiver(tmp.path(), vec![]);
        ours.append("r", 0, &chained_step(0, false)).unwrap();
        drop(ours);
        // The same steps, for a run of observation 4.
        let dir = tmp.path().join("uplink");
        let check = |od| Check::new((od, 2), crate::finetune::RecordedBy::named(vec![]));
        let mut intake = Intake::new(BTreeMap::new(), ChunkSpec::SINGLE, false);
        let mut replay = Replay::new(4, 2, 8);
        let e = intake
            .recover(
                &dir,
                &mut check(4),
                &mut replay,
                &mut FinetuneSummary::default(),
            )
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains(&file_name("r"))
                && e.contains("observation 3 / action 2, the run takes 4 / 2"),
            "{e}"
        );
        assert!(e.contains("move it out of"), "{e}");
        assert_eq!(replay.len(), 0);
    }

    /// Records past a damaged stretch longer than a read (4 MiB of zeros, as a crash can
    /// leave) are counted and taken as the receiver counts them (the first reading
    /// stopped at the first read that found no whole record).
    #[test]
    fn records_past_a_long_damaged_stretch_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, steps: std::ops::Range<u32>| {
            let (mut r, _rx) = receiver(&tmp.path().join(name), vec![]);
            for (i, step) in steps.enumerate() {
                r.append("r", i as u64, &chained_step(step, false)).unwrap();
            }
            std::fs::read(tmp.path().join(name).join("uplink").join(file_name("r"))).unwrap()
        };
        let (before, after) = (write("a", 0..3), write("b", 3..6));
        let mut bytes = before;
        bytes.extend(std::iter::repeat_n(0u8, 9 << 20));
        bytes.extend_from_slice(&after[controller::robot_loop::log::MAGIC.len()..]);
        let dir = tmp.path().join("damaged");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(file_name("r"));
        std::fs::write(&log, bytes).unwrap();
        let held = held_whole(&dir).unwrap();
        assert_eq!(LogWriter::open(&log).unwrap().existing_records, 6);
        assert_eq!(held[&file_name("r")].taken, 6);
    }

    /// A listener on a free port of this machine, logging under `dir/uplink`, for
    /// streams of observation 3 / action 2; and its channel.
    fn test_listener(dir: &Path, key: Key) -> (Listener, mpsc::Receiver<Step>) {
        Listener::start(
            "127.0.0.1:0",
            key,
            &dir.join("uplink"),
            &dir.join("b"),
            Check::new((3, 2), crate::finetune::RecordedBy::named(vec![])),
        )
        .unwrap()
    }

    /// Peers without the key, one silent and one trickling its hello a byte at a time,
    /// do not hold the link: a robot that connects after them is served meanwhile.
    /// Before, the one serving thread read their hellos first (30 s allowed per read),
    /// and the robot waited behind them.
    #[test]
    fn peers_without_the_key_do_not_hold_the_link() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let key = Key::from_bytes([7; uplink::KEY_LEN]);
        let (listener, _rx) = test_listener(tmp.path(), key.clone());
        let addr = listener.addr;
        let silent = TcpStream::connect(addr).unwrap();
        let mut trickle = TcpStream::connect(addr).unwrap();
        let served = Arc::new(AtomicBool::new(false));
        let flag = served.clone();
        // 41 of a hello's 42 bytes, one every 200 ms, until the robot was served.
        let loris = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < 41 && !flag.load(Ordering::SeqCst) {
                if trickle.write_all(b"E").is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(100));
        let robot = TcpStream::connect(addr).unwrap();
        let mut session = Session::client(robot, &key).unwrap();
        let next = uplink::records::open_stream(&mut session, "r").unwrap();
        served.store(true, Ordering::SeqCst);
        assert_eq!(next, 0);
        let sent = loris.join().unwrap();
        assert!(
            sent < 41,
            "the robot was served only after the trickling peer had sent its whole hello"
        );
        drop((session, silent));
        listener.stop();
    }

    /// While one robot is served, at most [`MAX_WAITING_SESSIONS`] authenticated
    /// connections wait; one more is refused with the reason. Before, every one waited:
    /// a second robot's retries queued a connection each (two sockets held per retry)
    /// until the trainer ran out of file descriptors, and it was told nothing.
    #[test]
    fn connections_beyond_the_waiting_ones_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let key = Key::from_bytes([7; uplink::KEY_LEN]);
        let (listener, _rx) = test_listener(tmp.path(), key.clone());
        let addr = listener.addr;
        // The served robot: it holds the serving thread (30 s of silence allowed).
        let mut served = Session::client(TcpStream::connect(addr).unwrap(), &key).unwrap();
        assert_eq!(uplink::records::open_stream(&mut served, "a").unwrap(), 0);
        // One after another: at most MAX_HANDSHAKES_PER_PEER run at once from one
        // address (on a loaded machine one may still be closed for it: tried again).
        let client = || {
            let mut tries = 0;
            loop {
                let tcp = TcpStream::connect(addr).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                match Session::client(tcp, &key) {
                    Ok(s) => return s,
                    Err(e) if tries < 10 => {
                        tries += 1;
                        eprintln!("handshake refused ({e}), again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        let others: Vec<_> = (0..=MAX_WAITING_SESSIONS)
            .map(|i| {
                let mut s = client();
                std::thread::sleep(Duration::from_millis(100));
                std::thread::spawn(move || {
                    uplink::records::open_stream(&mut s, &format!("b{i}"))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        let answers: Vec<_> = others.into_iter().map(|t| t.join().unwrap()).collect();
        let refused: Vec<_> = answers
            .iter()
            .filter(|a| {
                a.as_ref()
                    .is_err_and(|e| e.contains("the trainer refused") && e.contains("already wait"))
            })
            .collect();
        assert_eq!(refused.len(), 1, "{answers:?}");
        assert_eq!(
            answers.iter().filter(|a| a.is_ok()).count(),
            0,
            "served while another was: {answers:?}"
        );
        drop(served);
        listener.stop();
    }

    /// A peer that never completes its handshake, trickling its hello, is cut off at
    /// [`HANDSHAKE_DEADLINE`]: its connection is closed by the trainer (an end of
    /// stream where it reads). Without the deadline it would be read for 92 s.
    #[test]
    fn a_silent_peer_is_cut_off_at_the_handshake_deadline() {
        use std::io::Read;
        let tmp = tempfile::tempdir().unwrap();
        let (listener, _rx) = test_listener(tmp.path(), Key::from_bytes([7; uplink::KEY_LEN]));
        let mut silent = TcpStream::connect(listener.addr).unwrap();
        // A byte every 2 s: no single read of the handshake times out, only the
        // deadline over the whole of it can cut this peer off (at 10 s, with 36 of its
        // 42 bytes still to come).
        let mut writer = silent.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..41 {
                if writer.write_all(b"E").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        // Failure guard only: the cut comes at the deadline, long before this.
        silent
            .set_read_timeout(Some(HANDSHAKE_DEADLINE * 3))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = silent.read(&mut byte);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut),
            "the trainer did not close a silent connection: {read:?}"
        );
        listener.stop();
    }

    /// A listener dropped without `stop` (the training loop returned an error) ends its
    /// server thread, which frees the port.
    #[test]
    fn a_dropped_listener_stops_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let (listener, _rx) = test_listener(tmp.path(), Key::from_bytes([7; uplink::KEY_LEN]));
        let addr = listener.addr;
        assert!(TcpListener::bind(addr).is_err(), "the port is in use");
        drop(listener);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpListener::bind(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} still bound 5 s after the drop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
