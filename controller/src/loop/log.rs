//! Crash-safe transition log and its conversion to the dataset format.
//!
//! # File format
//!
//! An append-only file: an 8-byte magic, then records, each written with a single
//! `write` call:
//!
//! ```text
//!  "EXPOLOG1" │ len u32 │ crc32 u32 │ payload (len bytes) │ len │ crc │ payload │ …
//!              └─ little endian; crc32 = firmware_config::protocol::crc32(payload)
//!
//!  payload[0] = kind:
//!    1 run start       JSON (robot, task, fps, names, bundle)
//!    2 episode start   episode u32, seed u64
//!    3 transition      episode u32, step u32, od u8, ad u8, obs f32[od], action f32[ad],
//!                      reward f32, flags u8 (1 done, 2 truncated, 4 success,
//!                      8 intervention, 16 teleop),
//!                      next_obs f32[od], obs_fw_us u32, next_obs_fw_us u32,
//!                      obs_rx_ns u64, action_sent_ns u64, next_obs_rx_ns u64
//!    4 episode end     episode u32, seed u64, steps u32, success u8, reason u8
//!                      (0 completed, 1 fault, 2 interrupted, 3 unfinished, 4 labelled),
//!                      detail (UTF-8, rest of the payload)
//! ```
//!
//! A `kill -9` can only interrupt the record being written (earlier records are in
//! the kernel's page cache and survive the process), so bytes after the last whole
//! record are a torn tail: [`read_log`] reports and skips them, and [`LogWriter::open`]
//! cuts them off before appending, so a later run's records are not hidden behind
//! them. The log is `fdatasync`ed at every episode end, which also covers a power loss
//! for completed episodes, and, while the uplink streams it, every second
//! ([`SYNC_EVERY`]): only synced records are sent.
//!
//! Damage in the middle (a bad sector, a flipped bit, an edit) loses only the records
//! it touches: where a record's length is impossible or its CRC does not match, the
//! readers ([`read_log`], [`LogTail`]) look for the next offset where a whole record
//! with a matching CRC starts and carry on there, reporting the stretch they skipped
//! ([`DamagedSpan`]). A false start needs a 32-bit CRC to match by chance. Nothing after
//! the damage is cut off.
//!
//! # Dataset
//!
//! The logger thread keeps the running episode's transitions in memory and, at the
//! episode-end record, appends them as one episode to the dataset
//! ([`dataset::DatasetWriter`], one writer for the whole run). The dataset's `meta/`
//! is only rewritten when the writer finishes (end of the run), so after a crash the
//! dataset still shows its previous contents and the log holds everything since:
//! `controller log-to-dataset` rebuilds a dataset from a log.
//!
//! Timestamps `*_rx_ns` / `action_sent_ns` are nanoseconds since the run started on the
//! controller's monotonic clock; `*_fw_us` are the firmware's frame timestamps.
//!
//! # Versions
//!
//! New flag bits are added without a new magic: readers refuse any bit they do not
//! know, so a reader older than a bit refuses a log at the first record that sets it
//! (the log's path, the record's byte offset, "unknown flag bits"), and reads every log
//! without it as before. The teleop bit
//! (16) came this way (2026-11-30). A new magic would make those older readers refuse
//! every new log, teleop or not, as "not a transition log". The same records travel over
//! the uplink (`uplink::records`), whose handshake version is unchanged for the same
//! reason.
//!
//! A transition's action is the one its step applied, as the firmware's `Reward` frame
//! says, since protocol 4 (2026-12-07); logs written before hold the command in force
//! when the step was taken, as sent. The layout did not change: the two agree but where
//! the robot did otherwise than it was told (a late or lost command, the firmware's
//! slew limit or hold), and a log or dataset may hold both.

use dataset::{DatasetInfo, DatasetWriter, Episode};
use firmware_config::protocol::{MAX_ACT, MAX_OBS, StepFlags, crc32};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// First bytes of every log file.
pub const MAGIC: &[u8; 8] = b"EXPOLOG1";
/// Largest payload a reader accepts (a transition is at most ~400 bytes; the run
/// header is JSON): a larger length is a torn or foreign record.
const MAX_RECORD: u32 = 1 << 20;
/// Bytes of an episode end's detail kept in the log: a policy error's chain of causes
/// is a few hundred bytes; this keeps any end record far below [`MAX_RECORD`].
const MAX_DETAIL: usize = 16 * 1024;

const KIND_RUN: u8 = 1;
const KIND_EPISODE_START: u8 = 2;
const KIND_TRANSITION: u8 = 3;
const KIND_EPISODE_END: u8 = 4;

/// Bit of a transition's flags byte set by the controller, above the three bits of the
/// firmware's `Reward` frame ([`StepFlags`]): the operator marked the step as an
/// intervention.
const FLAG_INTERVENTION: u8 = 1 << 3;
/// Bit of a transition's flags byte set by the controller: the action came from the
/// teleop device (`--teleop`).
const FLAG_TELEOP: u8 = 1 << 4;

/// Why a log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {what}: {error}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
    #[error("{}: not a transition log (expected the magic {:?} at byte 0)", path.display(), std::str::from_utf8(MAGIC).unwrap_or("?"))]
    Magic { path: PathBuf },
    /// Another process appends to this log (one controller run per `--out`).
    #[error("{}: in use by another process (a controller run into the same --out?); one run at a time may write a log", path.display())]
    InUse { path: PathBuf },
    #[error("{}: record at byte {offset}: {problem}", path.display())]
    Record {
        path: PathBuf,
        offset: u64,
        problem: String,
    },
    /// The dataset's own message names its file.
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    /// A dataset (its directory) that cannot take this run's episodes.
    #[error("{}: {problem}", dir.display())]
    DatasetMismatch { dir: PathBuf, problem: String },
    /// Runs asked for by id that a conversion cannot take as asked.
    #[error("{}: {problem}", path.display())]
    Runs { path: PathBuf, problem: String },
    /// An episode of the log that a conversion cannot write (the dataset's message says
    /// why): named by its run and its number in the log, where the dataset's own message
    /// named its place in the dataset alone.
    #[error(
        "{}: run {run}, episode {episode}: {error}; nothing of this conversion is written \
         (--run ID converts the other runs)",
        path.display()
    )]
    Episode {
        path: PathBuf,
        run: String,
        episode: u32,
        error: Box<dataset::DatasetError>,
    },
}

/// One control step as the controller saw it. Fixed-size, so sending it to the
/// logger allocates nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transition {
    pub episode: u32,
    /// Frame index: the observation is the firmware's `Sensor` of this step.
    pub step: u32,
    pub obs_dim: u8,
    pub act_dim: u8,
    pub obs: [f32; MAX_OBS],
    /// The action the step applied, in policy units, as the firmware's `Reward` frame
    /// says (protocol 4; logs written before it hold the command in force, as sent).
    pub action: [f32; MAX_ACT],
    pub reward: f32,
    pub done: bool,
    pub truncated: bool,
    pub success: bool,
    /// The operator was intervening (`i` key of `--operator`) when the action was sent.
    pub intervention: bool,
    /// The action came from the teleop device (`--teleop`), not the policy.
    pub teleop: bool,
    pub next_obs: [f32; MAX_OBS],
    pub obs_fw_us: u32,
    pub next_obs_fw_us: u32,
    pub obs_rx_ns: u64,
    /// When the command the step applied was sent (else the command in force; 0: none
    /// yet in the episode, the hold).
    pub action_sent_ns: u64,
    pub next_obs_rx_ns: u64,
}

impl Transition {
    pub fn obs(&self) -> &[f32] {
        &self.obs[..self.obs_dim as usize]
    }
    pub fn next_obs(&self) -> &[f32] {
        &self.next_obs[..self.obs_dim as usize]
    }
    pub fn action(&self) -> &[f32] {
        &self.action[..self.act_dim as usize]
    }
    /// Every float is finite (a dataset accepts nothing else).
    pub fn is_finite(&self) -> bool {
        self.first_non_finite().is_none()
    }

    /// The first value that is not finite, named (`obs[2]`, `next_obs[0]`, `action[1]`,
    /// `reward`), and the value.
    pub fn first_non_finite(&self) -> Option<(String, f32)> {
        let fields = [
            ("obs", self.obs()),
            ("next_obs", self.next_obs()),
            ("action", self.action()),
        ];
        for (name, values) in fields {
            if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                return Some((format!("{name}[{i}]"), values[i]));
            }
        }
        (!self.reward.is_finite()).then(|| ("reward".to_string(), self.reward))
    }
}

/// How an episode ended, from the controller's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The firmware ended it (terminated or time limit).
    Completed,
    /// A fault stopped it (safe stop).
    Fault,
    /// Ctrl-C, SIGTERM or the end of a timed run.
    Interrupted,
    /// The log ends inside the episode (the process was killed).
    Unfinished,
    /// The operator ended it with a success or failure label (`--operator`).
    Labelled,
}

impl EndReason {
    fn code(self) -> u8 {
        match self {
            EndReason::Completed => 0,
            EndReason::Fault => 1,
            EndReason::Interrupted => 2,
            EndReason::Unfinished => 3,
            EndReason::Labelled => 4,
        }
    }
    fn from_code(c: u8) -> Option<EndReason> {
        Some(match c {
            0 => EndReason::Completed,
            1 => EndReason::Fault,
            2 => EndReason::Interrupted,
            3 => EndReason::Unfinished,
            4 => EndReason::Labelled,
            _ => return None,
        })
    }
}

/// The episode-end record.
#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeEnd {
    pub episode: u32,
    pub seed: u64,
    /// Steps the firmware reported (or the last step seen).
    pub steps: u32,
    pub success: bool,
    pub reason: EndReason,
    pub detail: String,
}

/// The run-start record: what the dataset needs to describe the episodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStart {
    pub robot: String,
    pub task: String,
    pub fps: u32,
    pub observation_names: Vec<String>,
    pub action_names: Vec<String>,
    pub bundle: String,
    pub started_unix: u64,
    /// This run's id (process id and start time): the dataset notes it with the run's
    /// episodes ([`dataset::DatasetWriter::note_run`]), so `log-to-dataset --last-run`
    /// can tell a run that saved them from one killed before it did. Empty in logs of
    /// older versions.
    #[serde(default)]
    pub run_id: String,
    /// The robot file's `action.scale` and `action.offset` (the actions above are in
    /// policy units; this is what they meant on the robot). Empty in logs of versions
    /// before 2026-12-07.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub action_scale: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub action_offset: Vec<f32>,
}

impl RunStart {
    pub fn dataset_info(&self) -> DatasetInfo {
        DatasetInfo {
            robot_type: self.robot.clone(),
            fps: self.fps,
            task: self.task.clone(),
            observation_names: self.observation_names.clone(),
            action_names: self.action_names.clone(),
            action_mapping: self.action_mapping(),
        }
    }

    /// The action mapping the run recorded, if it did.
    pub fn action_mapping(&self) -> Option<dataset::ActionMapping> {
        dataset::ActionMapping::recorded(&self.action_scale, &self.action_offset)
    }
}

/// One log record.
// The transition variant is large on purpose: fixed-size arrays mean the control
// thread allocates nothing per step to send one (boxing it would).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Run(RunStart),
    EpisodeStart { episode: u32, seed: u64 },
    Transition(Transition),
    EpisodeEnd(EpisodeEnd),
}

impl Record {
    /// The payload bytes (kind byte first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Record::Run(r) => {
                out.push(KIND_RUN);
                // Serializing plain strings and numbers cannot fail.
                out.extend_from_slice(&serde_json::to_vec(r).unwrap_or_default());
            }
            Record::EpisodeStart { episode, seed } => {
                out.push(KIND_EPISODE_START);
                out.extend_from_slice(&episode.to_le_bytes());
                out.extend_from_slice(&seed.to_le_bytes());
            }
            Record::Transition(t) => {
                out.push(KIND_TRANSITION);
                out.extend_from_slice(&t.episode.to_le_bytes());
                out.extend_from_slice(&t.step.to_le_bytes());
                out.push(t.obs_dim);
                out.push(t.act_dim);
                let floats = |out: &mut Vec<u8>, v: &[f32]| {
                    for x in v {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                };
                floats(out, t.obs());
                floats(out, t.action());
                out.extend_from_slice(&t.reward.to_le_bytes());
                let step = StepFlags {
                    done: t.done,
                    truncated: t.truncated,
                    success: t.success,
                };
                let mark = |on: bool, flag: u8| if on { flag } else { 0 };
                out.push(
                    step.to_byte()
                        | mark(t.intervention, FLAG_INTERVENTION)
                        | mark(t.teleop, FLAG_TELEOP),
                );
                floats(out, t.next_obs());
                out.extend_from_slice(&t.obs_fw_us.to_le_bytes());
                out.extend_from_slice(&t.next_obs_fw_us.to_le_bytes());
                out.extend_from_slice(&t.obs_rx_ns.to_le_bytes());
                out.extend_from_slice(&t.action_sent_ns.to_le_bytes());
                out.extend_from_slice(&t.next_obs_rx_ns.to_le_bytes());
            }
            Record::EpisodeEnd(e) => {
                out.push(KIND_EPISODE_END);
                out.extend_from_slice(&e.episode.to_le_bytes());
                out.extend_from_slice(&e.seed.to_le_bytes());
                out.extend_from_slice(&e.steps.to_le_bytes());
                out.push(e.success as u8);
                out.push(e.reason.code());
                let mut cut = e.detail.len().min(MAX_DETAIL);
                while !e.detail.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.extend_from_slice(&e.detail.as_bytes()[..cut]);
            }
        }
    }

    /// Parses a payload; strict about lengths and codes.
    pub fn decode(p: &[u8]) -> Result<Record, String> {
        let (&kind, rest) = p.split_first().ok_or("empty payload")?;
        let mut r = Reader(rest);
        let rec = match kind {
            KIND_RUN => {
                let run: RunStart = serde_json::from_slice(r.take(rest.len())?)
                    .map_err(|e| format!("run header: {e}"))?;
                Record::Run(run)
            }
            KIND_EPISODE_START => Record::EpisodeStart {
                episode: r.u32()?,
                seed: r.u64()?,
            },
            KIND_TRANSITION => {
                let episode = r.u32()?;
                let step = r.u32()?;
                let od = r.u8()?;
                let ad = r.u8()?;
                if od as usize > MAX_OBS || ad as usize > MAX_ACT {
                    return Err(format!("dimensions {od}/{ad} exceed the protocol maximum"));
                }
                let mut obs = [0.0; MAX_OBS];
                let mut action = [0.0; MAX_ACT];
                let mut next_obs = [0.0; MAX_OBS];
                r.floats(&mut obs[..od as usize])?;
                r.floats(&mut action[..ad as usize])?;
                let reward = r.f32()?;
                let byte = r.u8()?;
                let flags = StepFlags::from_byte(byte & !(FLAG_INTERVENTION | FLAG_TELEOP))
                    .ok_or("unknown flag bits")?;
                r.floats(&mut next_obs[..od as usize])?;
                Record::Transition(Transition {
                    episode,
                    step,
                    obs_dim: od,
                    act_dim: ad,
                    obs,
                    action,
                    reward,
                    done: flags.done,
                    truncated: flags.truncated,
                    success: flags.success,
                    intervention: byte & FLAG_INTERVENTION != 0,
                    teleop: byte & FLAG_TELEOP != 0,
                    next_obs,
                    obs_fw_us: r.u32()?,
                    next_obs_fw_us: r.u32()?,
                    obs_rx_ns: r.u64()?,
                    action_sent_ns: r.u64()?,
                    next_obs_rx_ns: r.u64()?,
                })
            }
            KIND_EPISODE_END => {
                let episode = r.u32()?;
                let seed = r.u64()?;
                let steps = r.u32()?;
                let success = r.u8()?;
                let reason = r.u8()?;
                let detail = String::from_utf8(r.take(r.0.len())?.to_vec())
                    .map_err(|_| "detail is not UTF-8")?;
                Record::EpisodeEnd(EpisodeEnd {
                    episode,
                    seed,
                    steps,
                    success: match success {
                        0 => false,
                        1 => true,
                        _ => return Err("success is neither 0 nor 1".into()),
                    },
                    reason: EndReason::from_code(reason).ok_or("unknown end reason")?,
                    detail,
                })
            }
            k => return Err(format!("unknown record kind {k}")),
        };
        if !r.0.is_empty() {
            return Err("payload too long".into());
        }
        Ok(rec)
    }
}

/// Little-endian reader over a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("payload too short".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.array()?))
    }
    fn floats(&mut self, dst: &mut [f32]) -> Result<(), String> {
        for x in dst {
            *x = self.f32()?;
        }
        Ok(())
    }
}

/// What [`read_log`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogContents {
    pub records: Vec<Record>,
    /// Bytes up to the end of the last valid record (magic included): where the next
    /// record goes.
    pub valid_bytes: u64,
    /// Bytes after the last valid record (a record torn by a crash), skipped.
    pub torn_bytes: u64,
    /// Stretches between valid records that hold none, skipped.
    pub damaged: Vec<DamagedSpan>,
}

/// Bytes of a log between two valid records that are not a record (see the module
/// docs): the records they held are lost, the ones around them are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DamagedSpan {
    /// File offset of the first damaged byte.
    pub offset: u64,
    pub len: u64,
}

/// What the bytes at one offset of a log hold.
enum Slot {
    /// A record whose CRC matches: `len` payload bytes after the 8-byte header.
    Whole { len: usize },
    /// The header or the payload runs past the bytes read so far.
    Partial,
    /// Not a record: a length no writer writes, or a CRC that does not match.
    Bad,
}

fn slot(buf: &[u8], pos: usize) -> Slot {
    #[cfg(test)]
    tests::SLOTS_LOOKED_AT.with(|n| n.set(n.get() + 1));
    let Some(head) = buf.get(pos..pos + 8) else {
        return Slot::Partial;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    // Every record has at least its kind byte; zeroed bytes (len 0, CRC 0) are damage.
    if len == 0 || len > MAX_RECORD {
        return Slot::Bad;
    }
    let len = len as usize;
    match buf.get(pos + 8..pos + 8 + len) {
        None => Slot::Partial,
        Some(payload) if crc32(payload) == crc => Slot::Whole { len },
        Some(_) => Slot::Bad,
    }
}

/// The first offset at or after `from` where a whole record starts (`Ok`): where a
/// reader carries on after damaged bytes. Else (`Err`) the first offset whose record
/// runs past `buf`'s end: every offset before it is no record start whatever bytes
/// follow `buf` (its length or checksum is wrong with all its bytes read), so a later
/// look, with more bytes, need begin only there.
fn next_whole(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut first_partial = None;
    for p in from..buf.len() {
        match slot(buf, p) {
            Slot::Whole { .. } => return Ok(p),
            Slot::Partial => {
                first_partial.get_or_insert(p);
            }
            Slot::Bad => {}
        }
    }
    Err(first_partial.unwrap_or(buf.len()))
}

/// Walks the whole records of `buf` from `pos`, giving each one's offset and payload to
/// `record`, and skips damaged stretches (listed in `damaged`, at file offset `base` +
/// their position). Returns where it stopped: the end of `buf`, or a record that runs
/// past it with no whole record after it (torn, or still being written, or damage).
/// There, `resume` is set to where a walk that starts at the same offset next time,
/// with more bytes read, looks for a whole record again ([`next_whole`]'s `Err`): a
/// damaged stretch longer than one read was looked at from its start again on every
/// read, a time that grew with its length squared (minutes for tens of MiB).
fn walk(
    buf: &[u8],
    mut pos: usize,
    base: u64,
    damaged: &mut Vec<DamagedSpan>,
    resume: &mut usize,
    mut record: impl FnMut(usize, &[u8]) -> Result<(), LogError>,
) -> Result<usize, LogError> {
    let (start, known_bad_until) = (pos, std::mem::take(resume));
    while pos < buf.len() {
        match slot(buf, pos) {
            Slot::Whole { len } => {
                record(pos, &buf[pos + 8..pos + 8 + len])?;
                pos += 8 + len;
            }
            // A record that runs past the end is torn (or still being written) only if
            // no whole record follows it: its length may be the damaged part.
            Slot::Partial | Slot::Bad => {
                // (Offsets found no record start on the last walk from here stay so.)
                let from = if pos == start { known_bad_until } else { 0 };
                match next_whole(buf, (pos + 1).max(from)) {
                    Ok(next) => {
                        damaged.push(DamagedSpan {
                            offset: base + pos as u64,
                            len: (next - pos) as u64,
                        });
                        pos = next;
                    }
                    Err(undetermined) => {
                        *resume = undetermined;
                        break;
                    }
                }
            }
        }
    }
    Ok(pos)
}

/// Reads every whole record. Damaged records are skipped and reported in
/// [`LogContents::damaged`], a torn end in [`LogContents::torn_bytes`] (see the module
/// docs); neither is an error. A whole record that does not decode is one (say, a
/// newer controller's flag bits).
pub fn read_log(path: &Path) -> Result<LogContents, LogError> {
    let mut records = Vec::new();
    let scan = scan_log(path, TAIL_READ_MAX, true, |_, rec| {
        records.push(rec);
        Ok(())
    })?;
    Ok(LogContents {
        records,
        valid_bytes: scan.valid_bytes,
        torn_bytes: scan.torn_bytes,
        damaged: scan.damaged,
    })
}

/// Follows a log as it grows (the uplink's source): each [`LogTail::poll`] returns the
/// payloads of the whole records appended since the last one, in order. A record still
/// being written is left for the next poll; a missing file is an empty log. Damaged
/// bytes are skipped as [`read_log`] skips them, once a whole record follows them, and
/// listed in [`LogTail::damaged`].
pub struct LogTail {
    path: PathBuf,
    /// Most bytes one poll reads ([`TAIL_READ_MAX`]).
    read_max: u64,
    file: Option<File>,
    /// Bytes read but not yet returned (an incomplete record, or the magic).
    buf: Vec<u8>,
    magic_checked: bool,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Damaged stretches skipped so far.
    pub damaged: Vec<DamagedSpan>,
    /// Where in `buf` to look for the next whole record after `buf[0]`, which is not
    /// one yet ([`walk`]'s `resume`).
    resume: usize,
    /// Read no further than this (the writer's synced length), if set.
    limit: Option<SyncedLen>,
    /// A block the disk refuses to read is taken as damage ([`read_onto`]) rather than
    /// an error: only for the readers that recover what a log holds ([`read_log`],
    /// [`log_to_dataset`]). Those that count records to stay in step with a trainer
    /// (the streamer, the trainer's copy, [`LogWriter::open`], which would also cut the
    /// log back to before an unreadable last block) keep the error: a read error need
    /// not recur, and a count that skipped it once would send records twice or never.
    skip_unreadable: bool,
}

/// Most bytes one [`LogTail::poll`] reads: a follower hours behind the log (the trainer
/// was unreachable) catches up a few MiB at a time instead of holding the backlog in
/// memory.
pub const TAIL_READ_MAX: u64 = 4 << 20;

impl LogTail {
    pub fn new(path: &Path) -> LogTail {
        LogTail::with_read_max(path, TAIL_READ_MAX)
    }

    /// As [`LogTail::new`], reading at most `read_max` bytes per poll.
    pub fn with_read_max(path: &Path, read_max: u64) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            read_max,
            file: None,
            buf: Vec::new(),
            magic_checked: false,
            offset: 0,
            damaged: Vec::new(),
            resume: 0,
            limit: None,
            skip_unreadable: false,
        }
    }

    /// Reads only what the writer has synced (`synced`, [`LogWriter::synced_len`]).
    pub fn behind(mut self, synced: SyncedLen) -> LogTail {
        self.limit = Some(synced);
        self
    }

    /// Payloads of the records completed since the last call, from at most `read_max`
    /// more bytes of the file (poll again for the rest).
    pub fn poll(&mut self) -> Result<Vec<Vec<u8>>, LogError> {
        let mut out = Vec::new();
        self.poll_each(|_, payload| {
            out.push(payload.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// [`LogTail::poll`], handing each payload with its record's file offset to
    /// `record` instead of collecting them.
    fn poll_each(
        &mut self,
        mut record: impl FnMut(u64, &[u8]) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let io_err = |what, error| LogError::Io {
            path: self.path.clone(),
            what,
            error,
        };
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("opening the log", e)),
            }
        }
        // Bytes read so far: those returned or skipped, and those buffered.
        let read = self.offset + self.buf.len() as u64;
        let most = match &self.limit {
            Some(synced) => self.read_max.min(synced.get().saturating_sub(read)),
            None => self.read_max,
        };
        let file = self.file.as_mut().expect("opened above");
        read_onto(file, &mut self.buf, read, most, self.skip_unreadable)
            .map_err(|e| io_err("reading the log", e))?;
        let mut pos = 0;
        if !self.magic_checked {
            if self.buf.len() < MAGIC.len() {
                return Ok(());
            }
            if &self.buf[..MAGIC.len()] != MAGIC {
                return Err(LogError::Magic {
                    path: self.path.clone(),
                });
            }
            self.magic_checked = true;
            pos = MAGIC.len();
        }
        let base = self.offset;
        let pos = walk(
            &self.buf,
            pos,
            base,
            &mut self.damaged,
            &mut self.resume,
            |at, payload| record(base + at as u64, payload),
        )?;
        self.buf.drain(..pos);
        self.offset += pos as u64;
        self.resume = self.resume.saturating_sub(pos);
        Ok(())
    }

    /// Bytes read after the last whole record: a record still being written, or, once
    /// the writer has closed the log, a torn or damaged end that no poll will return.
    pub fn unread_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// What a read the disk refuses (`EIO`: a bad sector) costs: the rest of the block of
/// this size it began in, taken as unreadable (4 KiB, the sector of today's SD cards
/// and SSDs; a disk of 512-byte sectors loses a little more than it must).
const UNREADABLE_BLOCK: u64 = 4096;

/// Reads up to `most` bytes of `file`, whose position is the file offset `at`, onto
/// `buf`. A read the disk refuses is not the end of the log: the rest of its block
/// ([`UNREADABLE_BLOCK`]) goes in as zeros, which no record's checksum matches, so the
/// readers skip it as damage and name it, and reading goes on after it. (It ended every
/// reader there: no record after a bad sector was recovered, `log-to-dataset` and a
/// new run into the directory failed, and the streamer retried it for ever.)
fn read_onto(
    file: &mut File,
    buf: &mut Vec<u8>,
    mut at: u64,
    most: u64,
    skip_unreadable: bool,
) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    // No further than the file's end now: the buffer is grown by what is there to read
    // (a follower polls a log that grows by a few records at a time).
    let len = file.metadata()?.len();
    let mut left = most.min(len.saturating_sub(at));
    while left > 0 {
        #[allow(unused_mut)]
        let mut n = left.min(1 << 20);
        #[cfg(test)]
        if let Some(refused) = tests::REFUSED_READS.with(|r| r.borrow().clone()) {
            // As a disk: a read that reaches the bad block stops short of it, and one
            // that begins in it fails.
            if refused.contains(&at) {
                n = 0;
            } else if at < refused.start {
                n = n.min(refused.start - at);
            }
        }
        let old = buf.len();
        buf.resize(old + n as usize, 0);
        let got = if n == 0 {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            file.read(&mut buf[old..])
        };
        match got {
            Ok(0) => {
                buf.truncate(old);
                break;
            }
            Ok(k) => {
                buf.truncate(old + k);
                at += k as u64;
                left -= k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(old),
            Err(e) if skip_unreadable && e.raw_os_error() == Some(libc::EIO) => {
                let skip = (UNREADABLE_BLOCK - at % UNREADABLE_BLOCK).min(left);
                buf.truncate(old);
                // Past it first: a failed seek leaves the buffer as the file position.
                file.seek(SeekFrom::Current(skip as i64))?;
                buf.resize(old + skip as usize, 0);
                at += skip;
                left -= skip;
            }
            Err(e) => {
                buf.truncate(old);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// What [`scan_log`] found: as [`read_log`]'s [`LogContents`], without the records.
#[derive(Debug)]
struct LogScan {
    valid_bytes: u64,
    torn_bytes: u64,
    records: u64,
    damaged: Vec<DamagedSpan>,
}

/// Reads the log at `path` at most `read_max` bytes at a time, handing each record, with
/// its offset, to `record`, and keeping none: where its whole records end, the bytes
/// after that (a torn record, or damage no whole record follows), how many whole records
/// it holds and its damaged stretches, as [`read_log`] finds them. Every record is
/// decoded, so a log [`read_log`] refuses (a record this version cannot read) is refused
/// here too. Bytes after damage stay buffered until a whole record follows them: a
/// damaged stretch is held in memory, the rest is not.
fn scan_log(
    path: &Path,
    read_max: u64,
    skip_unreadable: bool,
    mut record: impl FnMut(u64, Record) -> Result<(), LogError>,
) -> Result<LogScan, LogError> {
    let len = std::fs::metadata(path)
        .map_err(|error| LogError::Io {
            path: path.to_path_buf(),
            what: "reading the log",
            error,
        })?
        .len();
    let mut tail = LogTail::with_read_max(path, read_max);
    tail.skip_unreadable = skip_unreadable;
    let mut records = 0;
    let mut decode = |at: u64, payload: &[u8]| {
        records += 1;
        let rec = Record::decode(payload).map_err(|problem| LogError::Record {
            path: path.to_path_buf(),
            offset: at,
            problem,
        })?;
        record(at, rec)
    };
    loop {
        let before = tail.offset + tail.buf.len() as u64;
        tail.poll_each(&mut decode)?;
        let scanned = tail.offset + tail.buf.len() as u64;
        if scanned >= len || scanned == before {
            break;
        }
    }
    if !tail.magic_checked {
        // Shorter than the magic: killed while writing it (an empty log), or not a log.
        if !MAGIC.starts_with(&tail.buf) {
            return Err(LogError::Magic {
                path: path.to_path_buf(),
            });
        }
        return Ok(LogScan {
            valid_bytes: 0,
            torn_bytes: tail.buf.len() as u64,
            records: 0,
            damaged: vec![],
        });
    }
    Ok(LogScan {
        valid_bytes: tail.offset,
        torn_bytes: tail.buf.len() as u64,
        records,
        damaged: std::mem::take(&mut tail.damaged),
    })
}

/// Each whole record of the log at `path`, decoded, with its index and byte offset, to
/// `f`, read a few MiB at a time (a log of days is not held in memory); returns how many.
/// Records are counted as [`LogWriter::open`]'s `existing_records` counts them: damaged
/// stretches skipped (also one longer than a read), a torn tail left out.
pub fn scan_records(
    path: &Path,
    mut f: impl FnMut(u64, u64, Record) -> Result<(), LogError>,
) -> Result<u64, LogError> {
    let mut index = 0;
    let scan = scan_log(path, TAIL_READ_MAX, false, |at, rec| {
        let r = f(index, at, rec);
        index += 1;
        r
    })?;
    Ok(scan.records)
}

/// How many bytes of the log at `path` its whole records take, up to a torn tail (which
/// [`LogWriter::open`] cuts off before it appends).
pub fn log_valid_len(path: &Path) -> Result<u64, LogError> {
    Ok(log_end(path, TAIL_READ_MAX)?.0)
}

/// [`scan_log`]'s `valid_bytes`, `torn_bytes` and `records`.
fn log_end(path: &Path, read_max: u64) -> Result<(u64, u64, u64), LogError> {
    let scan = scan_log(path, read_max, false, |_, _| Ok(()))?;
    Ok((scan.valid_bytes, scan.torn_bytes, scan.records))
}

/// Appends records to a log file.
pub struct LogWriter {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    payload: Vec<u8>,
    /// Bytes of a torn tail cut off when the file was opened.
    pub repaired_bytes: u64,
    /// Whole records the log held when it was opened (as [`read_log`] counts them),
    /// counted without holding them in memory.
    pub existing_records: u64,
    /// Records this writer appended.
    pub records: u64,
    /// The log's length as of its last sync, shared with readers that must not pass it.
    synced: SyncedLen,
    /// Appended since the last sync.
    unsynced: bool,
    last_sync: Instant,
    /// Someone follows the synced length ([`LogWriter::synced_len`]): only then does
    /// [`LogWriter::sync_if_due`] sync (no needless writes to a robot's SD card).
    followed: bool,
    /// The synced length when a sync first failed. The kernel reports a write-back
    /// error to one `fdatasync` only and drops the pages, so a later sync that succeeds
    /// does not put them on disk: the synced length stays here for good.
    sync_failed_at: Option<u64>,
    /// Test hook: the next sync fails as a failing disk's would.
    #[cfg(test)]
    fail_next_sync: bool,
}

/// How many bytes of a log are on disk (as of the writer's last `fdatasync`), shared
/// by the writer with the uplink streamer. The streamer sends no record past it: a
/// trainer must never acknowledge a record that a power cut can still take from the
/// robot's log, or the next run's records would be taken for ones it holds and never
/// be sent.
#[derive(Clone, Debug, Default)]
pub struct SyncedLen(Arc<AtomicU64>);

impl SyncedLen {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self, len: u64) {
        self.0.store(len, Ordering::Release);
    }
}

/// How often the logger syncs the log within an episode when the uplink streams it (it
/// syncs at every episode's end in any case): how far, at most, the stream lags the log.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Refuses a log another process writes ([`LogError::InUse`], as [`LogWriter::open`]
/// would), without creating or changing it: a run checks before it opens the robot's
/// port, and takes the lock itself later.
/// Also refuses a file that is not a transition log (its first bytes are not the magic),
/// which [`LogWriter::open`] would refuse only once the run's port is open.
pub fn check_log_free(path: &Path) -> Result<(), LogError> {
    let Some(mut file) = lock_log(path)? else {
        return Ok(());
    };
    let mut head = Vec::with_capacity(MAGIC.len());
    (&mut file)
        .take(MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(|error| LogError::Io {
            path: path.to_path_buf(),
            what: "reading the log",
            error,
        })?;
    // Shorter than the magic: a log killed while writing it (empty), or not a log.
    if !MAGIC.starts_with(&head) {
        return Err(LogError::Magic {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The log at `path` locked as its writer locks it (another run into the same `--out`
/// is refused with [`LogError::InUse`]), without writing to it; `None` if it does not
/// exist. (A run keeps its writer's lock to its end: [`LogWriter::lock_holder`].)
pub fn lock_log(path: &Path) -> Result<Option<File>, LogError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(LogError::Io {
                path: path.to_path_buf(),
                what: "opening the log",
                error,
            });
        }
    };
    lock_exclusive(&file, path)?;
    Ok(Some(file))
}

/// One writer at a time (an advisory lock, held as long as `file` is open): another
/// holder of the log at `path` is [`LogError::InUse`]. A lock held for a moment (another
/// process's look: [`check_log_free`], [`unsaved_runs`]) is waited for, up to
/// [`LOCK_WAIT`]; a run holds it to its end.
fn lock_exclusive(file: &File, path: &Path) -> Result<(), LogError> {
    let tried_until = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < tried_until => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::InUse {
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(LogError::Io {
                    path: path.to_path_buf(),
                    what: "locking the log",
                    error,
                });
            }
        }
    }
}

/// How long a log's lock is waited for before its holder is taken for a run writing it:
/// a look holds it for microseconds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

impl LogWriter {
    /// Opens `path` for appending: creates it with the magic, or checks an existing
    /// log and cuts off a torn final record.
    pub fn open(path: &Path) -> Result<LogWriter, LogError> {
        let io_err = |what, error| LogError::Io {
            path: path.to_path_buf(),
            what,
            error,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_err("opening the log", e))?;
        // One writer at a time (an advisory lock, held as long as `file` is open): a
        // second run into the same --out would interleave its records with ours, and
        // its repair below could cut off the record we are writing.
        lock_exclusive(&file, path)?;
        let (mut repaired, mut existing_records) = (0, 0);
        let existing = file.metadata().map(|m| m.len() > 0).unwrap_or(false);
        if existing {
            // What an earlier process wrote may still be only in the page cache (it was
            // killed between syncs): on disk now, before any of it is streamed.
            file.sync_data().map_err(|e| io_err("syncing the log", e))?;
            // Scanned a few MiB at a time: a log of days is not held in memory.
            let (valid_bytes, torn_bytes, records) = log_end(path, TAIL_READ_MAX)?;
            (repaired, existing_records) = (torn_bytes, records);
            if torn_bytes > 0 {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io_err("opening the log to repair it", e))?;
                f.set_len(valid_bytes)
                    .map_err(|e| io_err("cutting off a torn record", e))?;
                f.sync_data().map_err(|e| io_err("syncing the log", e))?;
            }
        }
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        if empty {
            file.write_all(MAGIC)
                .map_err(|e| io_err("writing the log header", e))?;
            // A new file: its directory entry on disk too, so that the records synced
            // later are not in a file a power cut leaves unnamed. Best effort where the
            // filesystem cannot sync a directory.
            file.sync_data()
                .map_err(|e| io_err("syncing the log header", e))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
        }
        let synced = SyncedLen::default();
        synced.set(
            file.metadata()
                .map_err(|e| io_err("reading the log's length", e))?
                .len(),
        );
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(1024),
            payload: Vec::with_capacity(1024),
            repaired_bytes: repaired,
            existing_records,
            records: 0,
            synced,
            unsynced: false,
            last_sync: Instant::now(),
            followed: false,
            sync_failed_at: None,
            #[cfg(test)]
            fail_next_sync: false,
        })
    }

    /// A second handle on the log's open file, which keeps the writer's lock (one lock
    /// per open file, shared by its handles) once the writer is closed: a run holds it
    /// from its writer's start to its end, so no other run into the same `--out` starts
    /// between the logger's close and the report's last write. Locked again after the
    /// close, that gap let one in, and the run then went on without the lock.
    pub fn lock_holder(&self) -> Result<File, LogError> {
        self.file.try_clone().map_err(|error| LogError::Io {
            path: self.path.clone(),
            what: "holding the log's lock",
            error,
        })
    }

    /// The log's synced length, for a reader that must stay behind it
    /// ([`LogTail::behind`]); from now on [`LogWriter::sync_if_due`] syncs.
    pub fn synced_len(&mut self) -> SyncedLen {
        self.followed = true;
        self.synced.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record with a single `write` (length, CRC, payload).
    pub fn append(&mut self, rec: &Record) -> Result<(), LogError> {
        rec.encode(&mut self.payload);
        // A reader takes a larger one for damage (and the next open cuts it off as a
        // torn tail): refused here, with the records before it kept.
        if self.payload.len() > MAX_RECORD as usize {
            return Err(LogError::Io {
                path: self.path.clone(),
                what: "appending a record",
                error: io::Error::other(format!(
                    "the record is {} bytes, past the log's limit of {MAX_RECORD}",
                    self.payload.len()
                )),
            });
        }
        self.buf.clear();
        self.buf
            .extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&crc32(&self.payload).to_le_bytes());
        self.buf.extend_from_slice(&self.payload);
        self.file
            .write_all(&self.buf)
            .map_err(|error| LogError::Io {
                path: self.path.clone(),
                what: "appending a record",
                error,
            })?;
        self.records += 1;
        self.unsynced = true;
        Ok(())
    }

    /// `fdatasync`: completed episodes survive a power loss too. Publishes the synced
    /// length ([`LogWriter::synced_len`]). Once a sync has failed, every later one
    /// fails too and the synced length no longer moves (see `sync_failed_at`).
    pub fn sync(&mut self) -> Result<(), LogError> {
        let io_err = |what, error| LogError::Io {
            path: self.path.clone(),
            what,
            error,
        };
        self.last_sync = Instant::now();
        #[cfg(test)]
        let synced = if std::mem::take(&mut self.fail_next_sync) {
            Err(io::Error::other("injected write-back error"))
        } else {
            self.file.sync_data()
        };
        #[cfg(not(test))]
        let synced = self.file.sync_data();
        if let Err(e) = synced {
            self.sync_failed_at.get_or_insert(self.synced.get());
            return Err(io_err("syncing the log", e));
        }
        if let Some(at) = self.sync_failed_at {
            return Err(io_err(
                "syncing the log",
                io::Error::other(format!(
                    "an earlier sync failed, so the records past byte {at} may not be on \
                     disk (the uplink sends none of them; the log keeps them)"
                )),
            ));
        }
        let len = self
            .file
            .metadata()
            .map_err(|e| io_err("reading the log's length", e))?
            .len();
        self.synced.set(len);
        self.unsynced = false;
        Ok(())
    }

    /// Syncs when the synced length is followed, records were appended and the last
    /// sync is `every` old.
    pub fn sync_if_due(&mut self, every: Duration) -> Result<(), LogError> {
        if self.followed && self.unsynced && self.last_sync.elapsed() >= every {
            self.sync()?;
        }
        Ok(())
    }
}

/// What turning one episode's transitions into a dataset episode found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConvertNotes {
    pub frames: usize,
    /// Steps of the episode (per the end record) without a transition.
    pub missing: usize,
    /// Transitions dropped for a non-finite value or as duplicates.
    pub dropped: usize,
    /// The last frame was marked truncated because the episode did not end in a
    /// terminal or time-limit step (fault, interruption, lost final frames).
    pub cut: bool,
}

/// Builds a dataset episode from transitions (any order). Gaps are allowed (frames
/// are self-contained: each has its own next observation). `None` when nothing is
/// usable (the dataset refuses empty episodes).
pub fn to_episode(
    transitions: &[Transition],
    end: Option<&EpisodeEnd>,
) -> Option<(Episode, ConvertNotes)> {
    let mut ts: Vec<&Transition> = transitions.iter().collect();
    ts.sort_by_key(|t| t.step);
    let mut notes = ConvertNotes::default();
    let before = ts.len();
    ts.dedup_by_key(|t| t.step);
    ts.retain(|t| t.is_finite());
    // Nothing after a terminal step belongs to the episode.
    if let Some(i) = ts.iter().position(|t| t.done) {
        ts.truncate(i + 1);
    }
    notes.dropped = before - ts.len();
    let last = ts.last()?;
    let mut ep = Episode::default();
    for t in &ts {
        ep.observations.extend_from_slice(t.obs());
        ep.next_observations.extend_from_slice(t.next_obs());
        ep.actions.extend_from_slice(t.action());
        ep.rewards.push(t.reward);
        ep.terminated.push(t.done && !t.truncated);
        ep.truncated.push(t.truncated);
        ep.success.push(t.success);
        ep.intervention.push(t.intervention);
        ep.teleop.push(t.teleop);
    }
    // Only the last step ends an episode (`Episode::check`): a `truncated` flag without
    // `done` on an earlier step (in a log of an older controller, whose protocol let it
    // through; refused on the wire now) is no end.
    let n = ep.len();
    ep.truncated[..n - 1].iter_mut().for_each(|x| *x = false);
    if !last.done {
        // The episode did not end in its own last step: bootstrapping from the last
        // frame's next observation is valid, which is what `truncated` says.
        if let Some(x) = ep.truncated.last_mut() {
            *x = true;
        }
        notes.cut = true;
    }
    notes.frames = ep.len();
    let steps = end.map_or(last.step.saturating_add(1), |e| {
        e.steps.max(last.step.saturating_add(1))
    });
    notes.missing = (steps as usize).saturating_sub(ep.len());
    Some((ep, notes))
}

/// One episode recovered from a log.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedEpisode {
    pub episode: u32,
    pub seed: u64,
    pub transitions: Vec<Transition>,
    pub end: EpisodeEnd,
}

/// Groups a log's records into episodes, by episode number within each run (a `Run`
/// record starts a new one; so does a second start record of the same episode, in case
/// the `Run` record between two appended runs is damaged). Records are matched by
/// number, not by order: the control thread sends transitions straight to the logger
/// and queues start and end records when the channel is full, so a next episode's first
/// transition can precede its start record and the previous episode's end.
///
/// An episode without an end record (the process was killed, or the record is damaged)
/// gets one with [`EndReason::Unfinished`]. Transitions whose start record is missing
/// still make an episode; its seed comes from its end record, if that survived.
pub fn episodes(records: &[Record]) -> (Option<RunStart>, Vec<LoggedEpisode>) {
    let mut g = EpisodeGrouper::default();
    let mut out = Vec::new();
    for r in records {
        g.push(r, &mut out);
    }
    g.flush(&mut out);
    (g.first_run, out)
}

/// [`episodes`], record by record: an episode is handed on once it has ended and every
/// episode begun before it has been, so that a long log is converted holding only the
/// episodes in progress. (An episode's transitions never follow its end record: the
/// control thread drops a transition the channel cannot take, never delays it.)
#[derive(Default)]
struct EpisodeGrouper {
    /// The first `Run` record seen.
    first_run: Option<RunStart>,
    /// The current run's episodes not handed on yet, in order of first appearance,
    /// whether each has its start and its end record.
    current: Vec<(LoggedEpisode, bool, bool)>,
}

impl EpisodeGrouper {
    /// Takes `r`, pushing onto `out` the episodes it completes.
    fn push(&mut self, r: &Record, out: &mut Vec<LoggedEpisode>) {
        match r {
            Record::Run(rs) => {
                if self.first_run.is_none() {
                    self.first_run = Some(rs.clone());
                }
                self.flush(out);
            }
            Record::EpisodeStart { episode, seed } => {
                // Started again: a later run whose `Run` record was lost, or a repeated
                // Reset that restarted the episode before it acted (the same number; the
                // first copy has no transition and no end). The latter is one episode,
                // its start taken from the newer record (it made an empty "unfinished"
                // episode before it, which `log-to-dataset` counted).
                // (One entry per episode number: `entry` finds it.)
                let again = self
                    .current
                    .iter()
                    .find(|(e, started, _)| e.episode == *episode && *started);
                if again.is_some_and(|(e, _, ended)| *ended || !e.transitions.is_empty()) {
                    self.flush(out);
                }
                let i = self.entry(*episode);
                let (e, started, _) = &mut self.current[i];
                e.seed = *seed;
                *started = true;
            }
            Record::Transition(t) => {
                let i = self.entry(t.episode);
                self.current[i].0.transitions.push(*t);
            }
            Record::EpisodeEnd(end) => {
                let i = self.entry(end.episode);
                let (e, _, ended) = &mut self.current[i];
                e.seed = end.seed;
                e.end = end.clone();
                *ended = true;
                // Handed on in order, with the episodes begun before it: boundary
                // records keep their order, so one of those still without its end
                // record lost it (damage), and nothing more comes for it. Not a later
                // episode only seen by its transitions so far: the control thread
                // sends transitions ahead of queued boundary records, so an episode
                // without transitions can end after its successor's first one.
                let (handed, kept): (Vec<_>, Vec<_>) = self
                    .current
                    .drain(..=i)
                    .partition(|(e, started, _)| *started || e.episode <= end.episode);
                self.current.splice(0..0, kept);
                Self::hand_on(handed, out);
            }
        }
    }

    /// Hands on every episode of the current run: those without an end record get one
    /// saying so ([`EndReason::Unfinished`]).
    fn flush(&mut self, out: &mut Vec<LoggedEpisode>) {
        let all = std::mem::take(&mut self.current);
        Self::hand_on(all, out);
    }

    /// Pushes `entries` onto `out` in order, each without an end record given one
    /// saying so.
    fn hand_on(entries: Vec<(LoggedEpisode, bool, bool)>, out: &mut Vec<LoggedEpisode>) {
        for (mut e, _, ended) in entries {
            if !ended {
                let steps = e
                    .transitions
                    .iter()
                    .map(|t| t.step.saturating_add(1))
                    .max()
                    .unwrap_or(0);
                e.end = EpisodeEnd {
                    episode: e.episode,
                    seed: e.seed,
                    steps,
                    success: e.transitions.iter().any(|t| t.success),
                    reason: EndReason::Unfinished,
                    detail: "no end record (the log ends inside this episode, or it is damaged)"
                        .into(),
                };
            }
            out.push(e);
        }
    }

    /// The entry of `episode` in the current run, created on first sight.
    fn entry(&mut self, episode: u32) -> usize {
        if let Some(i) = self
            .current
            .iter()
            .position(|(e, _, _)| e.episode == episode)
        {
            return i;
        }
        self.current.push((
            LoggedEpisode {
                episode,
                seed: 0,
                transitions: vec![],
                end: EpisodeEnd {
                    episode,
                    seed: 0,
                    steps: 0,
                    success: false,
                    reason: EndReason::Unfinished,
                    detail: String::new(),
                },
            },
            false,
            false,
        ));
        self.current.len() - 1
    }
}

/// Opens the dataset at `dir` for appending, or creates it; refuses one whose
/// dimensions, robot, observation names or actions' order differ from `info` (a dataset
/// holds one robot's episodes: mixed, they would train on the wrong inputs), and one without
/// the `next.*` columns of an episode's outcome.
pub fn open_dataset(dir: &Path, info: &DatasetInfo) -> Result<DatasetWriter, LogError> {
    let has_meta = dir.join("meta").join("info.json").exists();
    let mut w = if has_meta {
        let w = DatasetWriter::open_append(dir)?;
        check_same_recording(dir, w.info(), info, "record into another directory")?;
        // A robot episode's outcome needs every one of them: without, a terminal end
        // that is not a success would read back as cut, or the rewards as 0 (the writer
        // refuses such an episode; refusing here keeps the run from starting into it).
        check_outcome_columns(dir, &w.lacks_outcome_columns())?;
        w
    } else {
        DatasetWriter::create(dir, info.clone())?
    };
    w.set_task(&info.task);
    Ok(w)
}

/// The checks of [`open_dataset`] on an existing dataset, from its `info.json` alone
/// (nothing written, no lock taken): a run makes them before it opens the robot's port
/// (a board may reset when it is opened, and the firmware ends the episode it runs at
/// our `Hello`); `open_dataset` makes them again under the dataset's lock.
pub fn check_dataset_before_run(dir: &Path, info: &DatasetInfo) -> Result<(), LogError> {
    let Some(recorded) = dataset::recorded_as(dir)? else {
        return Ok(());
    };
    check_same_recording(dir, &recorded.info, info, "record into another directory")?;
    check_outcome_columns(dir, &recorded.lacks_outcome_columns)
}

/// Refuses a dataset without one of the `next.*` outcome columns (`lacks`).
fn check_outcome_columns(dir: &Path, lacks: &[&str]) -> Result<(), LogError> {
    if lacks.is_empty() {
        return Ok(());
    }
    Err(LogError::DatasetMismatch {
        dir: dir.to_path_buf(),
        problem: format!(
            "existing dataset has no {} column, which robot episodes need to read back \
             unchanged; record into another directory",
            lacks
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Refuses to add episodes recorded as `info` says to a dataset recorded as `have` says
/// (its directory `dir`): other dimensions, another robot, another rate (its timestamps
/// come from one fps), other observation names, the same actions in another order or
/// another action mapping (the last two where both record a mapping).
/// `advice` ends the message of a refusal that another directory would avoid.
fn check_same_recording(
    dir: &Path,
    have: &DatasetInfo,
    info: &DatasetInfo,
    advice: &str,
) -> Result<(), LogError> {
    if have.obs_dim() != info.obs_dim() || have.action_dim() != info.action_dim() {
        return Err(LogError::DatasetMismatch {
            dir: dir.to_path_buf(),
            problem: format!(
                "existing dataset has observation/action dims {}/{}, this run records {}/{}",
                have.obs_dim(),
                have.action_dim(),
                info.obs_dim(),
                info.action_dim()
            ),
        });
    }
    let differs = |what: String| LogError::DatasetMismatch {
        dir: dir.to_path_buf(),
        problem: format!("{what}; {advice}"),
    };
    let (theirs, ours) = (have.robot_type.trim(), info.robot_type.trim());
    if !theirs.is_empty() && theirs != ours {
        return Err(differs(format!(
            "existing dataset was recorded by robot `{theirs}`, this run is `{ours}`"
        )));
    }
    if have.fps != info.fps {
        return Err(differs(format!(
            "existing dataset was recorded at {} Hz, this run records at {} Hz",
            have.fps, info.fps
        )));
    }
    let names = (&have.observation_names, &info.observation_names);
    if let Some(i) = firmware_config::config::first_name_difference(names.0, names.1) {
        return Err(differs(format!(
            "existing dataset's observation [{i}] is `{}`, this run's is `{}`",
            names.0[i], names.1[i]
        )));
    }
    // Actions in another order, where both recordings were given their names: those
    // that record the robot file's action mapping (since 2026-12-07); before, this
    // recorder named actions after the robot file's joints, whatever their order.
    let names = (&info.action_names, &have.action_names);
    if have.action_mapping.is_some()
        && info.action_mapping.is_some()
        && let Some(e) = firmware_config::config::actions_reordered(
            names.0,
            "this run",
            names.1,
            "the existing dataset",
        )
    {
        return Err(differs(e));
    }
    // The robot file's action mapping, where both record it (a dataset recorded before
    // 2026-12-07 does not, and keeps recording none: its earlier episodes' is unknown).
    if let (Some(theirs), Some(ours)) = (&have.action_mapping, &info.action_mapping)
        && let Some(i) = theirs.first_difference(ours)
    {
        return Err(differs(format!(
            "existing dataset's action [{i}] was recorded as {} in robot units, this run's \
             as {} (the robot file's action.offset and action.scale)",
            theirs.describe(i),
            ours.describe(i)
        )));
    }
    Ok(())
}

/// Summary of [`log_to_dataset`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rebuilt {
    pub episodes_written: usize,
    pub frames: usize,
    pub skipped_empty: usize,
    pub torn_bytes: u64,
    /// Damaged stretches skipped in the middle of the log.
    pub damaged: Vec<DamagedSpan>,
    /// Episodes without an end record.
    pub unfinished: usize,
    /// Steps that the episodes' end records (or last steps) count but no transition
    /// holds: lost in damaged stretches, or never logged.
    pub missing_frames: usize,
    /// With [`Runs::Last`], the run's episodes (with [`Runs::Only`], those of every run
    /// asked for) were in the dataset already (it notes the run: the run ended and saved
    /// them, or they were converted before), so none was written.
    pub already_saved: bool,
    /// A converted run has no id (a log of an older version), so whether the dataset
    /// holds its episodes already is not known (with [`Runs::All`], said only when
    /// appending).
    pub unknown_run: bool,
    /// Episodes not written because the dataset holds them already: a run that saved
    /// only some of its episodes notes which; with [`Runs::All`], every episode of a run
    /// the dataset notes whole.
    pub skipped_saved: usize,
    /// [`Runs::All`]: runs left out whole because the dataset notes them (they ended
    /// and saved their episodes, or were converted before).
    pub runs_saved: usize,
    /// Converted runs whose header records no action mapping (a controller from before
    /// 2026-12-07), where another run or the dataset records one: what their actions
    /// meant on the robot was compared with nothing.
    pub unmapped_runs: usize,
}

/// The episodes of one run that a dataset holds already.
enum Saved {
    Whole,
    /// By episode number (empty: none); a set, as a run may hold millions.
    Episodes(std::collections::HashSet<u32>),
}

impl Saved {
    fn of(w: &DatasetWriter, run_id: &str) -> Saved {
        if run_id.is_empty() {
            Saved::Episodes(Default::default()) // a log of an older version: not known
        } else if w.has_run(run_id) {
            Saved::Whole
        } else {
            Saved::Episodes(w.partial_run(run_id).into_iter().collect())
        }
    }

    fn holds(&self, episode: u32) -> bool {
        match self {
            Saved::Whole => true,
            Saved::Episodes(e) => e.contains(&episode),
        }
    }
}

/// Which runs of a log [`log_to_dataset`] converts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runs {
    /// Every run: a rebuild into a new directory, or an append of the runs a dataset
    /// does not hold (the runs it notes, or the episodes a run noted it saved, are left
    /// out: `controller run` saves into `OUT/dataset` and notes the run).
    All,
    /// The last run only, under its own run record: the episodes of a run that was
    /// killed (`kill -9`, a power cut) before it saved them, appended to the dataset
    /// that holds the runs before it. Nothing is written when the dataset notes the run
    /// already (it ended and saved them, or this was done before).
    Last,
    /// The runs of these ids, each from its header to the next run's: a killed run's
    /// after later runs went into the same log ([`unsaved_runs`]), whatever the others
    /// are (runs of an older version without ids, damage outside them, runs a full
    /// list of noted runs let go). Their episodes the dataset holds are left out. An id
    /// the log does not hold is an error; so, when appending, is damage inside a run the
    /// dataset does not note (it may hide another run's header).
    Only(Vec<String>),
}

/// What a conversion says where the dataset cannot tell which of a log's runs it holds.
const CONVERT_ANEW: &str = "convert every run into a new directory instead";

/// Refuses to append every run of a log into the dataset at `out` where the runs it
/// notes do not tell which ones it holds: damage in the log may hide a run's header
/// (its records would be taken for the run before it: left out as that run's, or
/// appended twice), and a full list of noted runs ([`dataset::MAX_NOTED_RUNS`], the
/// oldest let go) does not cover a run of the log started before its oldest. A dataset
/// that notes no run is appended to as before.
fn check_every_run_fits(
    log: &Path,
    out: &Path,
    headers: &[(u64, RunStart)],
    damaged: &[DamagedSpan],
) -> Result<(), LogError> {
    let noted = dataset::noted_runs(out)?;
    if noted.is_empty() && dataset::partial_runs(out)?.is_empty() {
        return Ok(());
    }
    if let Some(d) = damaged.first() {
        return Err(LogError::Record {
            path: log.to_path_buf(),
            offset: d.offset,
            problem: format!(
                "{} damaged bytes, which may hide a run's header: that run's episodes would \
                 be taken for the run before it, left out as saved in {} or appended again; \
                 {CONVERT_ANEW} (or --run ID for a killed run's episodes)",
                d.len,
                out.display()
            ),
        });
    }
    if noted.len() >= dataset::MAX_NOTED_RUNS {
        // Run ids end in their start time.
        let started = dataset::run_started;
        let oldest = noted.iter().map(|id| started(id)).min().unwrap_or(0);
        if let Some((_, rs)) = headers
            .iter()
            .find(|(_, rs)| !noted.contains(&rs.run_id) && started(&rs.run_id) <= oldest)
        {
            return Err(LogError::DatasetMismatch {
                dir: out.to_path_buf(),
                problem: format!(
                    "it notes only its newest {} runs, and run {} of the log started before \
                     the oldest of them: it may be one of those let go, whose episodes would \
                     be appended again; {CONVERT_ANEW} (or --run ID for a killed run's \
                     episodes)",
                    dataset::MAX_NOTED_RUNS,
                    rs.run_id
                ),
            });
        }
    }
    Ok(())
}

/// Refuses to append runs asked for by id ([`Runs::Only`]) into the dataset at `out`
/// where damage lies inside one of them (between its header and the next run's,
/// `starts`): it may hide another run's header, whose episodes would be taken for the
/// one asked for (appended again if that run saved them). A run the dataset notes is
/// left out (nothing of it is appended). Into a new directory they are converted, as
/// every run's are.
fn check_no_damage_inside(
    log: &Path,
    out: &Path,
    headers: &[(u64, RunStart)],
    starts: &[u64],
    damaged: &[DamagedSpan],
) -> Result<(), LogError> {
    // A run the dataset notes is left out whole: nothing of it is appended.
    let noted = dataset::noted_runs(out)?;
    for (at, rs) in headers.iter().filter(|(_, rs)| !noted.contains(&rs.run_id)) {
        let next = starts.iter().find(|s| *s > at).copied().unwrap_or(u64::MAX);
        if let Some(d) = damaged.iter().find(|d| d.offset > *at && d.offset < next) {
            return Err(LogError::Record {
                path: log.to_path_buf(),
                offset: d.offset,
                problem: format!(
                    "{} damaged bytes inside run {}'s records: they may hide another run's \
                     header, whose episodes would be appended to {} as this run's; convert \
                     the run into a new directory instead, and check its episodes there",
                    d.len,
                    rs.run_id,
                    out.display()
                ),
            });
        }
    }
    Ok(())
}

/// Converts the episodes of a log's `runs` into the dataset at `out` (created or
/// appended).
pub fn log_to_dataset(log: &Path, out: &Path, runs: Runs) -> Result<Rebuilt, LogError> {
    // Read twice, a few MiB at a time, holding only run headers and the episodes in
    // progress: a log of days does not fit a robot computer's memory (this is the
    // recovery path after a crash). First the runs: where the converted ones begin
    // (byte offset), and their headers, checked before anything is written.
    let mut headers: Vec<(u64, RunStart)> = vec![];
    let scan = scan_log(log, TAIL_READ_MAX, true, |at, rec| {
        if let Record::Run(rs) = rec {
            headers.push((at, rs));
        }
        Ok(())
    })?;
    let first = match &runs {
        Runs::All | Runs::Only(_) => 0,
        Runs::Last => headers.last().map_or(0, |(at, _)| *at),
    };
    headers.retain(|(at, _)| *at >= first);
    // Where every run begins (a run's records end at the next one's header), and the
    // headers of those converted.
    let starts: Vec<u64> = headers.iter().map(|(at, _)| *at).collect();
    if let Runs::Only(ids) = &runs {
        let refused = |problem| LogError::Runs {
            path: log.to_path_buf(),
            problem,
        };
        if ids.is_empty() || ids.iter().any(String::is_empty) {
            return Err(refused(
                "no run id given (an empty --run names no run)".into(),
            ));
        }
        if let Some(id) = ids
            .iter()
            .find(|id| !headers.iter().any(|(_, rs)| rs.run_id == **id))
        {
            let held: Vec<&str> = (headers.iter())
                .map(|(_, rs)| rs.run_id.as_str())
                .filter(|id| !id.is_empty())
                .collect();
            let newest = &held[held.len().saturating_sub(5)..];
            return Err(refused(format!(
                "no run {id} in the log (it holds {} run{} with an id{}{}{})",
                held.len(),
                if held.len() == 1 { "" } else { "s" },
                match held.len() {
                    0 => "",
                    1..=5 => ": ",
                    _ => ", the newest five, oldest first: ",
                },
                newest.join(", "),
                if scan.damaged.is_empty() {
                    ""
                } else {
                    "; damage in the log may hide a run's header"
                }
            )));
        }
        headers.retain(|(_, rs)| ids.contains(&rs.run_id));
    }
    let run = headers.first().map(|(_, rs)| rs.clone());
    let run = run.ok_or_else(|| LogError::Record {
        path: log.to_path_buf(),
        offset: MAGIC.len() as u64,
        problem: "no run-start record (nothing to describe the dataset with)".into(),
    })?;
    // Every run as the dataset was recorded, before the dataset is opened (an append
    // tidies it: files no episode references set aside, `meta/` rewritten): a later
    // run of another robot file (the dataset was deleted in between) is not filed
    // under the first's names or rate.
    check_dataset_before_run(out, &run.dataset_info())?;
    let mut have = dataset::recorded_as(out)?.map_or_else(|| run.dataset_info(), |r| r.info);
    let advice = match &runs {
        Runs::Only(_) => "one dataset takes runs recorded alike",
        _ => "one dataset takes runs recorded alike (--last-run converts only the last run)",
    };
    for (at, rs) in &headers {
        check_same_recording(out, &have, &rs.dataset_info(), advice).map_err(|e| match e {
            // The run's header in the log, and the dataset it does not fit.
            LogError::DatasetMismatch { dir, problem } => LogError::Record {
                path: log.to_path_buf(),
                offset: *at,
                problem: format!(
                    "run {} (started at unix time {}) into the dataset {}: {problem}",
                    rs.run_id,
                    rs.started_unix,
                    dir.display()
                ),
            },
            e => e,
        })?;
        // Runs after one of an older controller (no mapping) are compared with the
        // first mapping recorded: two others would pass against none.
        if have.action_mapping.is_none() {
            have.action_mapping = rs.action_mapping();
        }
    }
    let appending = out.join("meta").join("info.json").exists();
    if runs == Runs::All && appending {
        // Before the dataset is opened, which tidies it.
        check_every_run_fits(log, out, &headers, &scan.damaged)?;
    }
    if matches!(runs, Runs::Only(_)) && appending {
        check_no_damage_inside(log, out, &headers, &starts, &scan.damaged)?;
    }
    let mut w = open_dataset(out, &run.dataset_info())?;
    let mut r = Rebuilt {
        torn_bytes: scan.torn_bytes,
        damaged: scan.damaged,
        ..Rebuilt::default()
    };
    // What the dataset holds of each run, read by the writer under its lock: a run
    // that finishes saving meanwhile cannot slip in between.
    let saved: Vec<Saved> = headers
        .iter()
        .map(|(_, rs)| Saved::of(&w, &rs.run_id))
        .collect();
    // Of the runs converted (not those the dataset holds whole, left out).
    if have.action_mapping.is_some() {
        r.unmapped_runs = (headers.iter().zip(&saved))
            .filter(|((_, rs), s)| rs.action_mapping().is_none() && !matches!(s, Saved::Whole))
            .count();
    }
    // (Into a new dataset, only `--last-run` says so: it is for appending.)
    r.unknown_run =
        (appending || runs == Runs::Last) && headers.iter().any(|(_, rs)| rs.run_id.is_empty());
    if runs == Runs::Last && matches!(saved.first(), Some(Saved::Whole)) {
        // Damage after the last header read may be a later run's header: that run
        // (the one killed, the one to recover) would go unseen behind a saved one.
        if let Some(d) = r.damaged.iter().find(|d| d.offset > first) {
            return Err(LogError::Record {
                path: log.to_path_buf(),
                offset: d.offset,
                problem: format!(
                    "{} damaged bytes after the last run header read (run {}, saved in \
                     {} already): they may be that run's own records, or a later run's \
                     lost header, whose episodes --last-run cannot tell from the saved \
                     run's; {CONVERT_ANEW} (log-to-dataset without --last-run)",
                    d.len,
                    run.run_id,
                    out.display()
                ),
            });
        }
        r.already_saved = true;
        return Ok(r); // the writer is dropped unfinished: nothing changes
    }
    if matches!(runs, Runs::Only(_)) && saved.iter().all(|s| matches!(s, Saved::Whole)) {
        r.already_saved = true;
        return Ok(r);
    }
    r.runs_saved = saved.iter().filter(|s| matches!(s, Saved::Whole)).count();
    // Then the episodes, each appended once it has ended, under its own run's task
    // (runs of other bundles into one `--out` may name other tasks), unless the
    // dataset holds them.
    let mut grouper = EpisodeGrouper::default();
    let mut ready: Vec<LoggedEpisode> = vec![];
    let append = |w: &mut DatasetWriter,
                  ready: &mut Vec<LoggedEpisode>,
                  run: Option<usize>,
                  r: &mut Rebuilt| {
        let held = run.map(|i| &saved[i]);
        for e in ready.drain(..) {
            if held.is_some_and(|h| h.holds(e.episode)) {
                r.skipped_saved += 1;
                continue;
            }
            r.unfinished += usize::from(e.end.reason == EndReason::Unfinished);
            match to_episode(&e.transitions, Some(&e.end)) {
                Some((ep, notes)) => {
                    w.append_episode(&ep).map_err(|error| LogError::Episode {
                        path: log.to_path_buf(),
                        run: run.map_or("(before the log's first run header)".into(), |i| {
                            headers[i].1.run_id.clone()
                        }),
                        episode: e.episode,
                        error: Box::new(error),
                    })?;
                    r.episodes_written += 1;
                    r.frames += notes.frames;
                    r.missing_frames += notes.missing;
                }
                None => r.skipped_empty += 1,
            }
        }
        Ok::<(), LogError>(())
    };
    // The log as the first reading found it: a run a controller appends meanwhile
    // (its header was not checked) is left out, and a log rewritten in between is
    // refused.
    let end = scan.valid_bytes;
    let mut next_header = starts.iter().copied();
    let mut expected = next_header.next();
    let converted: std::collections::HashSet<u64> = headers.iter().map(|(at, _)| *at).collect();
    // The run whose records are being read: an index into `headers` and `saved`; and
    // whether it is converted (with `Runs::Only`, others are passed over).
    let mut current: Option<usize> = None;
    // (With `Runs::Only`, records before the first header, whose header damage hid,
    // belong to no run asked for.)
    let mut converting = !matches!(runs, Runs::Only(_));
    scan_log(log, TAIL_READ_MAX, true, |at, rec| {
        if at < first || at >= end {
            return Ok(());
        }
        if let Record::Run(_) = &rec {
            if Some(at) != expected {
                return Err(LogError::Record {
                    path: log.to_path_buf(),
                    offset: at,
                    problem: "the log changed while it was converted (read again)".into(),
                });
            }
            expected = next_header.next();
            converting = converted.contains(&at);
            if !converting {
                // It ends the run before it.
                grouper.flush(&mut ready);
                return append(&mut w, &mut ready, current, &mut r);
            }
        }
        if !converting {
            return Ok(());
        }
        grouper.push(&rec, &mut ready);
        // A run's header ends the run before it: its episodes go under that run's task.
        append(&mut w, &mut ready, current, &mut r)?;
        if let Record::Run(rs) = &rec {
            w.set_task(&rs.task);
            current = Some(current.map_or(0, |i| i + 1));
        }
        Ok(())
    })?;
    grouper.flush(&mut ready);
    append(&mut w, &mut ready, current, &mut r)?;
    // Every run converted is noted, committed with its episodes, once all of them are
    // in their file (a failed close returns before anything is committed).
    w.close_data_file()?;
    for (_, rs) in &headers {
        if !rs.run_id.is_empty() {
            w.note_run(&rs.run_id);
        }
    }
    w.finish()?;
    Ok(r)
}

/// A run of a log with episodes that no dataset it was given holds ([`unsaved_runs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsavedRun {
    pub run_id: String,
    pub started_unix: u64,
    /// Its episodes with a transition in the log that none of the datasets holds.
    pub episodes: usize,
    /// It is the log's last run.
    pub last_in_log: bool,
}

/// The runs of the log at `log` with episodes that none of the datasets at `holders`
/// holds (those without a dataset yet hold nothing): a controller killed (`kill -9`, a
/// power cut) before it saved its episodes left them in the log only, as did one that
/// could not save some (a failed append: its report says why), and training on the
/// dataset alone trains on less without a word. Empty where there is no log. Read as
/// [`log_to_dataset`] reads it, up to its length when looked at (a run a controller
/// starts meanwhile is not taken for one killed). Counts, not a conversion: runs without
/// an id (a log of an older version) and runs started at or before the oldest run of
/// a full list of noted runs ([`dataset::MAX_NOTED_RUNS`]) are left out, as the
/// datasets cannot be asked about them, and damage that hides a run's header files its
/// episodes under the run before it. A run a controller is writing now (it holds the
/// log's lock) is left out: it saves its episodes at its end.
pub fn unsaved_runs(log: &Path, holders: &[&Path]) -> Result<Vec<UnsavedRun>, LogError> {
    // Locked and let go at once: held, a controller starting now would wait for it.
    let (running, len) = match lock_log(log) {
        Ok(None) => return Ok(vec![]),
        Ok(Some(file)) => (false, file_len(&file, log)?),
        Err(LogError::InUse { .. }) => (true, std::fs::metadata(log).map_or(0, |m| m.len())),
        Err(e) => return Err(e),
    };
    // Run by run: its header and the episodes its transitions name.
    let mut runs: Vec<(RunStart, std::collections::BTreeSet<u32>)> = vec![];
    scan_log(log, TAIL_READ_MAX, true, |at, rec| {
        match rec {
            _ if at >= len => {}
            Record::Run(rs) => runs.push((rs, Default::default())),
            Record::Transition(t) => {
                if let Some((_, episodes)) = runs.last_mut() {
                    episodes.insert(t.episode);
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    // (Counted before a running run is left out: the runs before it are not last.)
    let last = runs.len().checked_sub(1);
    if running {
        runs.pop();
    }
    // What the datasets hold: runs whole, and runs in part (by episode number).
    let mut noted: std::collections::HashSet<String> = Default::default();
    let mut partial: std::collections::HashMap<String, std::collections::HashSet<u32>> =
        Default::default();
    // A run started at or before the oldest a full list keeps may be one it let go.
    let mut oldest_known: Option<u128> = None;
    for dir in holders {
        if !dir.join("meta").join("info.json").exists() {
            continue;
        }
        let runs = dataset::noted_runs(dir)?;
        if runs.len() >= dataset::MAX_NOTED_RUNS {
            let oldest = runs.iter().map(|id| dataset::run_started(id)).min();
            oldest_known = oldest_known.max(oldest);
        }
        noted.extend(runs);
        for (id, episodes) in dataset::partial_runs(dir)? {
            partial.entry(id).or_default().extend(episodes);
        }
    }
    Ok(runs
        .into_iter()
        .enumerate()
        .map(|(i, (rs, episodes))| (rs, episodes, Some(i) == last))
        .filter(|(rs, _, _)| !rs.run_id.is_empty() && !noted.contains(&rs.run_id))
        .filter(|(rs, _, _)| oldest_known.is_none_or(|o| dataset::run_started(&rs.run_id) > o))
        .filter_map(|(rs, mut episodes, last_in_log)| {
            if let Some(held) = partial.get(&rs.run_id) {
                episodes.retain(|e| !held.contains(e));
            }
            (!episodes.is_empty()).then_some(UnsavedRun {
                run_id: rs.run_id,
                started_unix: rs.started_unix,
                episodes: episodes.len(),
                last_in_log,
            })
        })
        .collect())
}

/// The length of the open log `file` (at `path`, for the message).
fn file_len(file: &File, path: &Path) -> Result<u64, LogError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|error| LogError::Io {
            path: path.to_path_buf(),
            what: "reading the log's length",
            error,
        })
}

/// Runs [`unsaved_runs_advice`] names one by one; the count of the rest follows.
const RUNS_NAMED: usize = 5;

/// What to say of [`unsaved_runs`]' runs of `log` (none: nothing): the runs (the first
/// [`RUNS_NAMED`] by id, then how many more), and the conversion that appends them to
/// `dataset`: by id (`--run`), which takes the runs asked for whatever else the log holds
/// (`--last-run` would take a later run, and a conversion of every run refuses where the
/// dataset cannot tell what it holds).
pub fn unsaved_runs_advice(log: &Path, dataset: &Path, runs: &[UnsavedRun]) -> Option<String> {
    if runs.is_empty() {
        return None;
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut each: Vec<String> = runs
        .iter()
        .take(RUNS_NAMED)
        .map(|r| {
            format!(
                "{} episode{} of run {} (started at unix time {})",
                r.episodes,
                plural(r.episodes),
                r.run_id,
                r.started_unix
            )
        })
        .collect();
    if runs.len() > RUNS_NAMED {
        let more = runs.len() - RUNS_NAMED;
        each.push(format!("those of {more} more run{}", plural(more)));
    }
    let ids: String = runs
        .iter()
        .map(|r| format!(" --run {}", r.run_id))
        .collect();
    Some(format!(
        "{} holds {} that the dataset {} does not hold (a controller killed before it saved \
         them: kill -9, a power cut; or one that could not save them: its report.json says \
         why); `controller log-to-dataset --log {} --out {}{ids}` appends them",
        log.display(),
        each.join(", "),
        dataset.display(),
        log.display(),
        dataset.display()
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// File offsets whose reads fail as a bad sector's do (`EIO`), in this thread.
        pub(super) static REFUSED_READS: std::cell::RefCell<Option<std::ops::Range<u64>>> =
            const { std::cell::RefCell::new(None) };
        /// Offsets [`slot`] looked at for a record, in this thread.
        pub(super) static SLOTS_LOOKED_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// A damaged stretch longer than one read is looked at once: each read looked at it
    /// from its start again, a time that grew with its length squared (a MiB of damage
    /// read 4 KiB at a time: about 134 million looks; tens of MiB at the readers' 4 MiB:
    /// minutes, with a record's checksum at one offset in 4096 of random bytes).
    #[test]
    fn a_long_damaged_stretch_is_looked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&Record::Run(run_start())).unwrap();
        w.sync().unwrap();
        let second_at = std::fs::metadata(&path).unwrap().len();
        w.append(&Record::EpisodeStart {
            episode: 0,
            seed: 1,
        })
        .unwrap();
        w.sync().unwrap();
        drop(w);
        let bytes = std::fs::read(&path).unwrap();
        const DAMAGE: usize = 1 << 20;
        let at = second_at as usize;
        let mut damaged = bytes[..at].to_vec();
        damaged.resize(at + DAMAGE, 0);
        damaged.extend_from_slice(&bytes[at..]);
        std::fs::write(&path, &damaged).unwrap();
        SLOTS_LOOKED_AT.with(|n| n.set(0));
        let mut records = 0;
        let scan = scan_log(&path, 4096, true, |_, _| {
            records += 1;
            Ok(())
        })
        .unwrap();
        let looked = SLOTS_LOOKED_AT.with(|n| n.get());
        assert_eq!(records, 2);
        assert_eq!(
            scan.damaged,
            [DamagedSpan {
                offset: at as u64,
                len: DAMAGE as u64
            }]
        );
        assert!(looked < 2 * DAMAGE as u64, "{looked} offsets looked at");
    }

    /// A sector the disk refuses to read loses the records it holds, not the log: the
    /// readers take its block as damage and go on after it (every reader failed there,
    /// "reading the log: Input/output error", no record after it recovered).
    #[test]
    fn an_unreadable_sector_loses_only_the_records_in_its_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        let mut records = vec![Record::Run(run_start())];
        for s in 0..200 {
            records.push(Record::Transition(transition(0, s, false)));
        }
        for r in &records {
            w.append(r).unwrap();
        }
        w.sync().unwrap();
        drop(w);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 3 * UNREADABLE_BLOCK, "{len} bytes");
        // Each record's byte range, from a clean read.
        let mut starts = vec![];
        scan_records(&path, |_, at, _| {
            starts.push(at);
            Ok(())
        })
        .unwrap();
        starts.push(len);
        let bad = UNREADABLE_BLOCK..2 * UNREADABLE_BLOCK;
        REFUSED_READS.with(|r| *r.borrow_mut() = Some(bad.clone()));
        let read = read_log(&path);
        let rebuilt = log_to_dataset(&path, &dir.path().join("rebuilt"), Runs::All);
        let tail = LogTail::new(&path).poll().map(|p| p.len());
        let counted = scan_records(&path, |_, _, _| Ok(()));
        let opened = LogWriter::open(&path).map(|_| ());
        REFUSED_READS.with(|r| *r.borrow_mut() = None);
        let c = read.unwrap();
        // Every record wholly outside the block, and only those.
        let outside: Vec<&Record> = records
            .iter()
            .zip(starts.windows(2))
            .filter(|(_, r)| r[1] <= bad.start || r[0] >= bad.end)
            .map(|(rec, _)| rec)
            .collect();
        assert!(outside.len() < records.len() && outside.len() > records.len() / 2);
        assert_eq!(c.records.iter().collect::<Vec<_>>(), outside);
        assert_eq!(c.damaged.len(), 1, "{:?}", c.damaged);
        let d = &c.damaged[0];
        assert!(
            d.offset <= bad.start && d.offset + d.len >= bad.end,
            "{d:?}"
        );
        assert_eq!(c.torn_bytes, 0);
        // The recovery command rebuilds the episode from the same records.
        let r = rebuilt.unwrap();
        assert_eq!((r.episodes_written, r.damaged.len()), (1, 1), "{r:?}");
        assert_eq!(r.frames, outside.len() - 1, "{r:?}");
        // The readers that count records to stay in step with a trainer (the streamer,
        // the trainer's copy) and the writer (which cuts a torn end) keep the error: a
        // read error need not recur, and a count that skipped it once would send
        // records twice or never; the writer would cut good records off an unreadable
        // last block.
        for (who, e) in [
            ("the follower", tail.map(|_| ())),
            ("a count", counted.map(|_| ())),
            ("the writer", opened),
        ] {
            let e = e.expect_err(who).to_string();
            assert!(e.contains("Input/output error"), "{who}: {e}");
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "the log was cut"
        );
        // Nor does a refused last block (no whole record after it: a torn end to the
        // recovery readers) make the writer cut the good records it holds.
        let last = (len - 1) / UNREADABLE_BLOCK * UNREADABLE_BLOCK..len;
        REFUSED_READS.with(|r| *r.borrow_mut() = Some(last));
        let opened = LogWriter::open(&path).map(|_| ());
        REFUSED_READS.with(|r| *r.borrow_mut() = None);
        assert!(opened.is_err());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "cut at its end"
        );
    }

    /// The lock holder keeps the log locked once its writer is closed, until it is
    /// dropped too.
    #[test]
    fn the_lock_holder_keeps_the_log_locked_after_its_writer_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transitions.log");
        let w = LogWriter::open(&path).unwrap();
        let holder = w.lock_holder().unwrap();
        drop(w);
        assert!(matches!(check_log_free(&path), Err(LogError::InUse { .. })));
        drop(holder);
        check_log_free(&path).unwrap();
    }

    /// The first value that is not finite is named with its place (the trainer said
    /// only "a value is not finite"); a value past the dimensions is not looked at.
    #[test]
    fn the_first_non_finite_value_is_named() {
        let t = transition(0, 1, false);
        assert_eq!(t.first_non_finite(), None);
        assert!(t.is_finite());
        let named = |f: &dyn Fn(&mut Transition)| {
            let mut t = transition(0, 1, false);
            f(&mut t);
            assert_eq!(t.is_finite(), t.first_non_finite().is_none());
            t.first_non_finite().map(|(name, v)| format!("{name} {v}"))
        };
        assert_eq!(named(&|t| t.obs[2] = f32::NAN), Some("obs[2] NaN".into()));
        assert_eq!(
            named(&|t| t.next_obs[0] = f32::INFINITY),
            Some("next_obs[0] inf".into())
        );
        assert_eq!(
            named(&|t| t.action[1] = f32::NEG_INFINITY),
            Some("action[1] -inf".into())
        );
        assert_eq!(named(&|t| t.reward = f32::NAN), Some("reward NaN".into()));
        assert_eq!(named(&|t| t.obs[3] = f32::NAN), None);
        assert_eq!(
            named(&|t| {
                t.action[0] = f32::NAN;
                t.obs[1] = f32::NAN;
            }),
            Some("obs[1] NaN".into())
        );
    }

    pub(crate) fn transition(episode: u32, step: u32, done: bool) -> Transition {
        let mut t = Transition {
            episode,
            step,
            obs_dim: 3,
            act_dim: 2,
            obs: [0.0; MAX_OBS],
            action: [0.0; MAX_ACT],
            reward: step as f32,
            done,
            truncated: false,
            success: done,
            intervention: step % 3 == 1,
            teleop: step % 4 == 2,
            next_obs: [0.0; MAX_OBS],
            obs_fw_us: step * 10,
            next_obs_fw_us: step * 10 + 10,
            obs_rx_ns: 1,
            action_sent_ns: 2,
            next_obs_rx_ns: 3,
        };
        t.obs[..3].copy_from_slice(&[step as f32, 1.0, 2.0]);
        t.next_obs[..3].copy_from_slice(&[step as f32 + 1.0, 1.0, 2.0]);
        t.action[..2].copy_from_slice(&[0.5, -0.5]);
        t
    }

    /// A run whose actions are the dataset's in another order is refused by name, the
    /// dataset untouched, where both recorded an action mapping (since 2026-12-07: they
    /// were given their names); other spellings are taken, and so is a run of a
    /// controller from before (no mapping: it named actions after the robot file's
    /// joints, whatever their order).
    #[test]
    fn a_run_of_the_actions_in_another_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let run = |case: &str, actions: &[&str], mapped: bool| {
            let path = dir.path().join(format!("{case}.log"));
            let start = RunStart {
                action_names: actions.iter().map(|a| a.to_string()).collect(),
                action_scale: if mapped { vec![1.0, 1.0] } else { vec![] },
                action_offset: if mapped { vec![0.0, 0.0] } else { vec![] },
                run_id: format!("run-{case}"),
                ..run_start()
            };
            write_one_step_run(&path, start);
            log_to_dataset(&path, &out, Runs::All)
        };
        run("first", &["x", "y"], true).unwrap();
        let e = run("reordered", &["y", "x"], true).unwrap_err().to_string();
        assert!(
            e.contains(
                "action `x` is at [0] in the existing dataset and at [1] in this run: the \
                 same actions in another order"
            ) && e.contains("another directory"),
            "{e}"
        );
        assert_eq!(dataset::read_dataset(&out).unwrap().num_frames(), 1);
        run("spelled", &["x.pos", "y.pos"], true).unwrap();
        run("older", &["y", "x"], false).unwrap();
        assert_eq!(dataset::read_dataset(&out).unwrap().num_frames(), 3);
    }

    /// A log at `path` of run `start` with one episode of one (unfinished) step.
    fn write_one_step_run(path: &Path, start: RunStart) {
        let mut w = LogWriter::open(path).unwrap();
        w.append(&Record::Run(start)).unwrap();
        w.append(&Record::EpisodeStart {
            episode: 0,
            seed: 3,
        })
        .unwrap();
        w.append(&Record::Transition(transition(0, 0, false)))
            .unwrap();
    }

    pub(crate) fn run_start() -> RunStart {
        RunStart {
            robot: "r".into(),
            task: "push".into(),
            fps: 20,
            observation_names: vec!["a".into(), "b".into(), "c".into()],
            action_names: vec!["x".into(), "y".into()],
            bundle: "b".into(),
            started_unix: 0,
            run_id: "test-run".into(),
            action_scale: vec![],
            action_offset: vec![],
        }
    }

    /// The start record of `episode` (seed 0).
    fn started(episode: u32) -> Record {
        Record::EpisodeStart { episode, seed: 0 }
    }

    pub(crate) fn end(episode: u32, steps: u32) -> EpisodeEnd {
        EpisodeEnd {
            episode,
            seed: 9,
            steps,
            success: true,
            reason: EndReason::Completed,
            detail: "ok".into(),
        }
    }

    #[test]
    fn records_roundtrip() {
        for r in [
            Record::Run(run_start()),
            Record::EpisodeStart {
                episode: 3,
                seed: u64::MAX,
            },
            Record::Transition(transition(3, 7, true)),
            Record::EpisodeEnd(end(3, 8)),
        ] {
            let mut p = vec![];
            r.encode(&mut p);
            assert_eq!(Record::decode(&p).unwrap(), r);
            assert!(
                Record::decode(&p[..p.len() - 1]).is_err() || matches!(r, Record::EpisodeEnd(_))
            );
        }
    }

    /// Two writers of one log (two runs into one --out) would interleave their records,
    /// and the second's repair could cut off the first's record in progress: refused.
    #[test]
    fn a_log_has_one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&Record::Run(run_start())).unwrap();
        let e = LogWriter::open(&path).err().unwrap().to_string();
        assert!(e.contains("t.log: in use by another process"), "{e}");
        drop(w);
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&Record::Run(run_start())).unwrap();
        drop(w);
        assert_eq!(read_log(&path).unwrap().records.len(), 2);
    }

    #[test]
    fn torn_tail_is_skipped_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&Record::Run(run_start())).unwrap();
        w.append(&Record::EpisodeStart {
            episode: 0,
            seed: 9,
        })
        .unwrap();
        for s in 0..5 {
            w.append(&Record::Transition(transition(0, s, s == 4)))
                .unwrap();
        }
        drop(w);
        let full = std::fs::read(&path).unwrap();
        // Cut the file at every byte of the last record: the reader always returns the
        // records before it and reports the rest as torn.
        let whole = read_log(&path).unwrap();
        assert_eq!(whole.records.len(), 7);
        assert_eq!(whole.torn_bytes, 0);
        let last_start = {
            let mut p = vec![];
            Record::Transition(transition(0, 4, true)).encode(&mut p);
            full.len() - p.len() - 8
        };
        for cut in (0..MAGIC.len()).chain(last_start..full.len()) {
            std::fs::write(&path, &full[..cut]).unwrap();
            let c = read_log(&path).unwrap();
            if cut >= last_start {
                assert_eq!(c.records.len(), 6, "cut at {cut}");
                assert_eq!(c.torn_bytes as usize, cut - last_start);
            }
            // The writer's scan, a few bytes at a time, finds the same end.
            for read_max in [7, 64, TAIL_READ_MAX] {
                let end = log_end(&path, read_max).unwrap();
                let n = c.records.len() as u64;
                assert_eq!(end, (c.valid_bytes, c.torn_bytes, n), "cut at {cut}");
            }
        }
        // A flipped byte in the last record reads as torn too.
        let mut bad = full.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(read_log(&path).unwrap().records.len(), 6);
        // Reopening cuts the torn record off; new records follow the good ones.
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let mut w = LogWriter::open(&path).unwrap();
        assert!(w.repaired_bytes > 0);
        assert_eq!(w.existing_records, 6);
        w.append(&Record::EpisodeEnd(end(0, 5))).unwrap();
        drop(w);
        let c = read_log(&path).unwrap();
        assert_eq!((c.records.len(), c.torn_bytes), (7, 0));
        assert_eq!(LogWriter::open(&path).unwrap().existing_records, 7);
        assert!(matches!(c.records[6], Record::EpisodeEnd(_)));
        // A whole record this version cannot decode (a newer controller's): the log is
        // refused for appending, as the reader refuses it, naming the record's offset.
        std::fs::write(&path, &full).unwrap();
        let payload = [0xEEu8; 5];
        let mut unknown = full.clone();
        unknown.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        unknown.extend_from_slice(&crc32(&payload).to_le_bytes());
        unknown.extend_from_slice(&payload);
        std::fs::write(&path, &unknown).unwrap();
        assert!(matches!(read_log(&path), Err(LogError::Record { .. })));
        match LogWriter::open(&path) {
            Err(LogError::Record { offset, .. }) => assert_eq!(offset, full.len() as u64),
            other => panic!("{:?}", other.map(|w| w.records)),
        }
        assert_eq!(std::fs::read(&path).unwrap(), unknown, "left as it was");
        // Not a log at all, long or short.
        for foreign in [&b"hello world"[..], b"he"] {
            std::fs::write(&path, foreign).unwrap();
            if foreign.len() >= MAGIC.len() {
                assert!(matches!(read_log(&path), Err(LogError::Magic { .. })));
            }
            assert!(matches!(log_end(&path, 4), Err(LogError::Magic { .. })));
            assert!(matches!(
                LogWriter::open(&path),
                Err(LogError::Magic { .. })
            ));
            assert_eq!(std::fs::read(&path).unwrap(), foreign, "left as it was");
        }
    }

    /// A log of three episodes of four steps each (seeds 7, 8, 9), and the byte range
    /// of every record.
    fn three_episodes(path: &Path) -> Vec<std::ops::Range<usize>> {
        let mut w = LogWriter::open(path).unwrap();
        let mut records = vec![Record::Run(run_start())];
        for e in 0..3 {
            records.push(Record::EpisodeStart {
                episode: e,
                seed: 7 + u64::from(e),
            });
            for s in 0..4 {
                records.push(Record::Transition(transition(e, s, s == 3)));
            }
            let mut end = end(e, 4);
            end.seed = 7 + u64::from(e);
            records.push(Record::EpisodeEnd(end));
        }
        let mut ranges = vec![];
        let mut pos = MAGIC.len();
        for r in &records {
            w.append(r).unwrap();
            let mut p = vec![];
            r.encode(&mut p);
            ranges.push(pos..pos + 8 + p.len());
            pos += 8 + p.len();
        }
        ranges
    }

    /// The synced length is the log's on opening, moves only with a sync (due once
    /// records wait and the interval has passed), and a follower behind it reads no
    /// further.
    #[test]
    fn a_follower_behind_the_synced_length_reads_only_synced_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&started(0)).unwrap();
        w.sync().unwrap();
        drop(w);
        let mut w = LogWriter::open(&path).unwrap();
        let synced = w.synced_len();
        let on_open = std::fs::metadata(&path).unwrap().len();
        assert_eq!(synced.get(), on_open);
        let mut tail = LogTail::new(&path).behind(synced.clone());
        w.sync_if_due(Duration::ZERO).unwrap();
        assert_eq!(synced.get(), on_open, "nothing appended, nothing to sync");
        w.append(&started(1)).unwrap();
        w.sync_if_due(Duration::from_secs(3600)).unwrap();
        assert_eq!(synced.get(), on_open, "not due yet");
        assert_eq!(tail.poll().unwrap().len(), 1);
        assert!(tail.poll().unwrap().is_empty());
        w.sync_if_due(Duration::ZERO).unwrap();
        assert_eq!(synced.get(), std::fs::metadata(&path).unwrap().len());
        assert_eq!(tail.poll().unwrap().len(), 1);
    }

    /// An episode end's detail is cut to fit: a record past the readers' limit was read
    /// as damage, and cut off as a torn tail when the log was opened again.
    #[test]
    fn a_long_detail_is_cut_and_the_record_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut long = end(0, 3);
        long.detail = "é".repeat(600_000);
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&Record::EpisodeEnd(long)).unwrap();
        w.append(&Record::EpisodeStart {
            episode: 1,
            seed: 0,
        })
        .unwrap();
        drop(w);
        let read = read_log(&path).unwrap();
        assert_eq!(read.records.len(), 2);
        let Record::EpisodeEnd(e) = &read.records[0] else {
            panic!("{:?}", read.records[0]);
        };
        assert_eq!(e.detail, "é".repeat(MAX_DETAIL / 2));
    }

    /// After a failed sync the kernel has dropped the pages it could not write; a later
    /// sync that succeeds must not publish them as on disk.
    #[test]
    fn a_failed_sync_keeps_the_synced_length_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        let synced = w.synced_len();
        w.append(&started(0)).unwrap();
        w.sync().unwrap();
        let before = synced.get();
        w.append(&started(1)).unwrap();
        w.fail_next_sync = true;
        let first = w.sync().unwrap_err().to_string();
        assert!(first.contains("injected"), "{first}");
        w.append(&started(2)).unwrap();
        let later = w.sync().unwrap_err().to_string();
        assert!(
            later.contains(&format!("past byte {before}")) && later.contains("t.log"),
            "{later}"
        );
        assert!(w.sync_if_due(Duration::ZERO).is_err());
        assert_eq!(synced.get(), before);
        // The records themselves are kept.
        drop(w);
        assert_eq!(LogWriter::open(&path).unwrap().existing_records, 3);
    }

    /// The follower returns a record once it is whole, and counts the bytes of one that
    /// is not (yet): the streamer names them when the finished log ends in them.
    #[test]
    fn the_follower_waits_for_whole_records_and_counts_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let ranges = three_episodes(&path);
        let full = std::fs::read(&path).unwrap();
        let last = ranges[18].clone();
        // The last record half written.
        let half = last.start + last.len() / 2;
        std::fs::write(&path, &full[..half]).unwrap();
        let mut tail = LogTail::new(&path);
        assert_eq!(tail.poll().unwrap().len(), 18);
        assert_eq!(tail.unread_bytes(), half - last.start);
        // Its second half arrives.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&full[half..]).unwrap();
        assert_eq!(tail.poll().unwrap().len(), 1);
        assert_eq!(tail.unread_bytes(), 0);
        // A damaged final record (its checksum byte flipped) is never returned.
        let mut bad = full.clone();
        bad[last.start + 4] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let mut tail = LogTail::new(&path);
        assert_eq!(tail.poll().unwrap().len(), 18);
        assert_eq!(tail.poll().unwrap().len(), 0);
        assert_eq!(tail.unread_bytes(), last.len());
        assert!(
            tail.damaged.is_empty(),
            "nothing whole follows it to resync on"
        );
        // Read a few bytes per poll, the records come in pieces, whole and in order.
        std::fs::write(&path, &full).unwrap();
        let mut tail = LogTail::with_read_max(&path, 50);
        let (mut got, mut polls) = (vec![], 0);
        for _ in 0..full.len() {
            let new = tail.poll().unwrap();
            polls += usize::from(!new.is_empty());
            got.extend(new);
        }
        assert!(polls > 1, "{polls} polls returned records");
        assert_eq!(got, LogTail::new(&path).poll().unwrap());
        assert_eq!(got.len(), 19);
    }

    #[test]
    fn damage_in_the_middle_loses_only_the_records_it_touches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let ranges = three_episodes(&path);
        let full = std::fs::read(&path).unwrap();
        let all = read_log(&path).unwrap().records;
        assert_eq!(all.len(), 19);
        // A flipped byte anywhere in record 8 (episode 1's first transition), header
        // included: every other record is read, and the damage is exactly that record.
        let hit = ranges[8].clone();
        for at in hit.clone() {
            let mut bad = full.clone();
            bad[at] ^= 0x5a;
            std::fs::write(&path, &bad).unwrap();
            let c = read_log(&path).unwrap();
            let mut want = all.clone();
            want.remove(8);
            assert_eq!(c.records, want, "flip at byte {at}");
            let span = DamagedSpan {
                offset: hit.start as u64,
                len: hit.len() as u64,
            };
            assert_eq!((c.damaged, c.torn_bytes), (vec![span], 0), "flip at {at}");
            assert_eq!(log_end(&path, 16).unwrap(), (full.len() as u64, 0, 18));
            // The follower (the uplink's source) skips the same bytes.
            let mut tail = LogTail::new(&path);
            let payloads = tail.poll().unwrap();
            assert_eq!(payloads.len(), 18, "flip at {at}");
            assert_eq!(tail.damaged, vec![span]);
        }
        // Converted, episode 1 has three frames, and its end record counts the fourth.
        let r = log_to_dataset(&path, &dir.path().join("flipped"), Runs::All).unwrap();
        assert_eq!((r.episodes_written, r.frames, r.missing_frames), (3, 11, 1));
        // A zeroed stretch over three records (the end of episode 0, the start of 1):
        // episode 1 is kept without its start record, its seed from its end record.
        let mut bad = full.clone();
        bad[ranges[5].start..ranges[7].end].fill(0);
        std::fs::write(&path, &bad).unwrap();
        let c = read_log(&path).unwrap();
        assert_eq!(c.records.len(), 16);
        assert_eq!(c.damaged.len(), 1);
        let (_, eps) = episodes(&c.records);
        let got: Vec<(u32, u64, usize, EndReason)> = eps
            .iter()
            .map(|e| (e.episode, e.seed, e.transitions.len(), e.end.reason))
            .collect();
        use EndReason::{Completed, Unfinished};
        let want = [
            (0, 7, 3, Unfinished),
            (1, 8, 4, Completed),
            (2, 9, 4, Completed),
        ];
        assert_eq!(got, want);
        // Appending to a damaged log keeps everything after the damage.
        let mut w = LogWriter::open(&path).unwrap();
        assert_eq!(w.repaired_bytes, 0);
        w.append(&Record::EpisodeStart {
            episode: 3,
            seed: 10,
        })
        .unwrap();
        drop(w);
        let c = read_log(&path).unwrap();
        assert_eq!(c.records.len(), 17);
        assert_eq!(c.records[15], all[18]);
        // The rebuilt dataset has every surviving step. Episode 0's lost last step is
        // not counted as missing: its end record, which counts them, is lost too.
        let out = dir.path().join("ds");
        let r = log_to_dataset(&path, &out, Runs::All).unwrap();
        assert_eq!((r.episodes_written, r.frames, r.skipped_empty), (3, 11, 1));
        assert_eq!((r.missing_frames, r.damaged.len()), (0, 1));
        dataset::validate_dataset(&out).unwrap();
    }

    /// The control thread sends transitions straight to the logger but queues start and
    /// end records while the channel is full: an episode's first transition can come
    /// before the previous episode's end and its own start. Both episodes stay whole.
    #[test]
    fn records_out_of_order_still_make_their_episodes() {
        let start = |episode, seed| Record::EpisodeStart { episode, seed };
        let t = |episode, step, done| Record::Transition(transition(episode, step, done));
        let mut end1 = end(1, 3);
        end1.seed = 8;
        let records = vec![
            Record::Run(run_start()),
            start(0, 7),
            t(0, 0, false),
            t(0, 1, false),
            t(0, 2, true),
            t(1, 0, false),
            Record::EpisodeEnd(end(0, 3)),
            start(1, 8),
            t(1, 1, false),
            t(1, 2, true),
            Record::EpisodeEnd(end1),
            // A second run appended to the log, its `Run` record lost: episode 0 again.
            start(0, 70),
            t(0, 0, true),
        ];
        let (_, eps) = episodes(&records);
        let got: Vec<(u32, u64, usize, EndReason)> = eps
            .iter()
            .map(|e| (e.episode, e.seed, e.transitions.len(), e.end.reason))
            .collect();
        use EndReason::{Completed, Unfinished};
        let want = [
            (0, 9, 3, Completed),
            (1, 8, 3, Completed),
            (0, 70, 1, Unfinished),
        ];
        assert_eq!(got, want);
    }

    /// A repeated Reset restarts an episode before it acted: two start records with
    /// one number, then its transitions. One episode, with the newer start's seed (the
    /// first start made an empty unfinished episode of its own).
    #[test]
    fn a_repeated_reset_makes_one_episode() {
        let start = |episode, seed| Record::EpisodeStart { episode, seed };
        let t = |episode, step, done| Record::Transition(transition(episode, step, done));
        let records = vec![
            Record::Run(run_start()),
            start(0, 7),
            start(0, 9),
            t(0, 0, false),
            t(0, 1, true),
            Record::EpisodeEnd(end(0, 2)),
        ];
        let (_, eps) = episodes(&records);
        let got: Vec<(u32, u64, usize, EndReason)> = eps
            .iter()
            .map(|e| (e.episode, e.seed, e.transitions.len(), e.end.reason))
            .collect();
        assert_eq!(got, [(0, 9, 2, EndReason::Completed)]);
    }

    /// Episode 1 logs no transition (a fault at its first step) while the logger lags:
    /// episode 2's first transition is written before episode 1's boundary records.
    #[test]
    fn an_empty_episode_ending_after_its_successors_first_step_splits_nothing() {
        let start = |episode, seed| Record::EpisodeStart { episode, seed };
        let t = |episode, step, done| Record::Transition(transition(episode, step, done));
        let records = vec![
            Record::Run(run_start()),
            start(0, 7),
            t(0, 0, false),
            t(0, 1, true),
            Record::EpisodeEnd(end(0, 2)),
            t(2, 0, false),
            start(1, 8),
            Record::EpisodeEnd(end(1, 0)),
            start(2, 9),
            t(2, 1, true),
            Record::EpisodeEnd(end(2, 2)),
        ];
        let (_, eps) = episodes(&records);
        let got: Vec<(u32, usize, EndReason)> = eps
            .iter()
            .map(|e| (e.episode, e.transitions.len(), e.end.reason))
            .collect();
        use EndReason::Completed;
        assert_eq!(
            got,
            [(0, 2, Completed), (1, 0, Completed), (2, 2, Completed)]
        );
    }

    #[test]
    fn episodes_with_gaps_and_cuts_convert() {
        // Steps 0..6 of an episode that completed at step 5 (done), step 2 lost.
        let ts: Vec<Transition> = [0, 1, 3, 4, 5, 1]
            .iter()
            .map(|&s| transition(0, s, s == 5))
            .collect();
        let (ep, notes) = to_episode(&ts, Some(&end(0, 6))).unwrap();
        assert_eq!(ep.len(), 5);
        assert_eq!(notes.missing, 1);
        assert_eq!(notes.dropped, 1);
        assert!(!notes.cut);
        assert_eq!(ep.terminated.last(), Some(&true));
        ep.check(3, 2).unwrap();
        // Aborted: the last frame becomes truncated.
        let ts: Vec<Transition> = (0..3).map(|s| transition(0, s, false)).collect();
        let (ep, notes) = to_episode(&ts, None).unwrap();
        assert!(notes.cut);
        assert_eq!(ep.truncated, vec![false, false, true]);
        // A firmware's `truncated` without `done` on an earlier step is no end: the
        // dataset refuses an episode that ends before its last step.
        let mut ts: Vec<Transition> = (0..4).map(|s| transition(0, s, s == 3)).collect();
        ts[1].truncated = true;
        let (ep, _) = to_episode(&ts, None).unwrap();
        assert_eq!(ep.truncated, vec![false; 4]);
        assert_eq!(ep.terminated, vec![false, false, false, true]);
        ep.check(3, 2).unwrap();
        // A NaN transition is dropped.
        let mut t = transition(0, 0, false);
        t.obs[1] = f32::NAN;
        assert!(to_episode(&[t], None).is_none());
    }

    /// A log at `path` of `runs` (each given the id `run-I`), each of one 3-step episode.
    fn log_of_runs(path: &Path, runs: &[RunStart]) {
        let mut w = LogWriter::open(path).unwrap();
        for (i, run) in runs.iter().enumerate() {
            w.append(&Record::Run(RunStart {
                run_id: format!("run-{i}"),
                ..run.clone()
            }))
            .unwrap();
            w.append(&Record::EpisodeStart {
                episode: 0,
                seed: 9,
            })
            .unwrap();
            for s in 0..3 {
                w.append(&Record::Transition(transition(0, s, s == 2)))
                    .unwrap();
            }
            w.append(&Record::EpisodeEnd(end(0, 3))).unwrap();
        }
    }

    /// An episode the dataset refuses is named by its run and its number in the log
    /// (the dataset's message named its index in the dataset alone), and nothing of the
    /// conversion is written.
    #[test]
    fn an_episode_the_dataset_refuses_is_named_by_run_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&Record::Run(run_start())).unwrap();
        for episode in [4, 7] {
            w.append(&Record::EpisodeStart { episode, seed: 3 })
                .unwrap();
            // (Non-finite values are left out before, as unusable steps.)
            let mut t = transition(episode, 0, true);
            if episode == 7 {
                t.obs_dim = 4;
            }
            w.append(&Record::Transition(t)).unwrap();
            w.append(&Record::EpisodeEnd(end(episode, 1))).unwrap();
        }
        drop(w);
        let out = dir.path().join("ds");
        let e = log_to_dataset(&path, &out, Runs::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.log: run test-run, episode 7: ")
                && e.contains("nothing of this conversion is written"),
            "{e}"
        );
        // (An empty dataset may be there: its directory is created first.)
        let written = dataset::read_dataset(&out).map(|d| d.episodes.len());
        assert!(matches!(written, Err(_) | Ok(0)), "{written:?}");
    }

    /// A rebuild of a log that holds runs of other tasks (bundles of other tasks run into
    /// one `--out`) files each run's episodes under its own task, as the runs did.
    #[test]
    fn a_rebuild_keeps_each_runs_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let runs = ["push", "reach"].map(|task| RunStart {
            task: task.into(),
            ..run_start()
        });
        log_of_runs(&path, &runs);
        let out = dir.path().join("ds");
        let r = log_to_dataset(&path, &out, Runs::All).unwrap();
        assert_eq!(r.episodes_written, 2);
        assert_eq!(
            dataset::episode_tasks(&out).unwrap(),
            vec![vec!["push".to_string()], vec!["reach".to_string()]]
        );
    }

    /// A rebuild checks every run against the dataset, not only the first: a later run
    /// with other observation names (or rate) is refused, naming the run. (Its episodes
    /// were filed under the first run's names.)
    #[test]
    fn a_rebuild_refuses_a_later_run_recorded_differently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let runs = [["a", "b", "c"], ["a", "c", "b"]].map(|names| RunStart {
            observation_names: names.iter().map(|n| n.to_string()).collect(),
            ..run_start()
        });
        log_of_runs(&path, &runs);
        let out = dir.path().join("ds");
        let e = log_to_dataset(&path, &out, Runs::All)
            .unwrap_err()
            .to_string();
        assert!(e.contains("run-1") && e.contains("observation [1]"), "{e}");
        // The log and its run's header are named, with the dataset: not the dataset as
        // a log with a record "at byte 0".
        let mut headers = vec![];
        scan_log(&path, TAIL_READ_MAX, false, |at, rec| {
            if matches!(rec, Record::Run(_)) {
                headers.push(at);
            }
            Ok(())
        })
        .unwrap();
        let header = headers[1];
        assert!(
            e.starts_with(&format!("{}: record at byte {header}: ", path.display())),
            "{e}"
        );
        assert!(
            e.contains(&format!("into the dataset {}", out.display())),
            "{e}"
        );
        // Refused before anything was written: no data file without its metadata.
        fn files(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |d| {
                d.map(|e| e.unwrap().path())
                    .map(|p| if p.is_dir() { files(&p) } else { 1 })
                    .sum()
            })
        }
        assert_eq!(files(&out.join("data")), 0);
    }

    /// The robot file's action mapping travels from the run's header into the
    /// dataset's `info.json`, and a later run recorded with another one is refused by
    /// name; a run of an older controller (none recorded) is appended, and the dataset
    /// keeps the mapping of its first run.
    #[test]
    fn a_rebuild_records_the_action_mapping_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let mapped = |scale: [f32; 2], offset: [f32; 2]| RunStart {
            action_scale: scale.to_vec(),
            action_offset: offset.to_vec(),
            ..run_start()
        };
        let first = mapped([0.1, 2.0], [0.0, -1.5]);
        let older = run_start();
        let path = dir.path().join("same.log");
        log_of_runs(&path, &[first.clone(), older, first.clone()]);
        let out = dir.path().join("same");
        let rebuilt = log_to_dataset(&path, &out, Runs::All).unwrap();
        // The older controller's run is counted: its mapping was compared with nothing.
        assert_eq!((rebuilt.episodes_written, rebuilt.unmapped_runs), (3, 1));
        let text = std::fs::read_to_string(out.join("meta/info.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["expo_action_mapping"],
            serde_json::json!({"scale": [0.1, 2.0], "offset": [0.0, -1.5]})
        );
        // In their shortest form, not as the f64s the f32s are (0.10000000149011612).
        assert!(!text.contains("0.1000000"), "{text}");
        let recorded = dataset::recorded_as(&out).unwrap().unwrap().info;
        assert_eq!(recorded.action_mapping, first.action_mapping());

        // Also after a run of an older controller: the later two are compared.
        let path = dir.path().join("other.log");
        let other = mapped([0.1, 2.0], [0.0, -1.25]);
        log_of_runs(&path, &[run_start(), first, other]);
        let e = log_to_dataset(&path, &dir.path().join("other"), Runs::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "existing dataset's action [1] was recorded as -1.5 + 2 × a in robot units, \
                 this run's as -1.25 + 2 × a"
            ),
            "{e}"
        );
        assert!(e.contains("run-2"), "{e}");
    }

    /// Episodes are handed on as they end (in order), so that a conversion holds only
    /// those in progress, not the log: here at most the one running and the next one,
    /// whose first transitions overtook the end record of the one before. The result
    /// is [`episodes`]'s of the whole log.
    #[test]
    fn the_grouper_hands_each_episode_on_at_its_end() {
        let mut records = vec![Record::Run(run_start())];
        let start = |e: u32| Record::EpisodeStart {
            episode: e,
            seed: u64::from(e),
        };
        records.push(start(0));
        for e in 0..3u32 {
            records.push(Record::Transition(transition(e, 0, false)));
            if e > 0 {
                // The boundary records, queued, come after this episode's first
                // transition: the previous episode's end, then this one's start.
                records.push(Record::EpisodeEnd(end(e - 1, 3)));
                records.push(start(e));
            }
            for s in 1..3 {
                records.push(Record::Transition(transition(e, s, s == 2)));
            }
        }
        records.push(Record::EpisodeEnd(end(2, 3)));
        let mut g = EpisodeGrouper::default();
        let mut out = vec![];
        let mut most_held = 0;
        for r in &records {
            g.push(r, &mut out);
            most_held = most_held.max(g.current.len());
            if let Record::EpisodeEnd(end) = r {
                assert_eq!(out.last().map(|e| e.episode), Some(end.episode));
            }
        }
        g.flush(&mut out);
        assert_eq!(most_held, 2);
        for (e, got) in out.iter().enumerate() {
            assert_eq!((got.episode, got.seed), (e as u32, 9));
            assert_eq!(got.end, end(e as u32, 3));
            let steps: Vec<u32> = got.transitions.iter().map(|t| t.step).collect();
            assert_eq!(steps, [0, 1, 2]);
        }
        assert_eq!(out.len(), 3);
        assert_eq!(episodes(&records).1, out);
    }

    /// An episode whose end record was lost (damage) is handed on, unfinished, when the
    /// next one ends (boundary records keep their order): it does not hold every later
    /// episode in memory until the run ends.
    #[test]
    fn an_episode_that_lost_its_end_record_does_not_hold_the_next_ones() {
        let mut records = vec![Record::Run(run_start())];
        for e in 0..4u32 {
            records.push(Record::EpisodeStart {
                episode: e,
                seed: 9,
            });
            for s in 0..3 {
                records.push(Record::Transition(transition(e, s, s == 2)));
            }
            if e != 1 {
                records.push(Record::EpisodeEnd(end(e, 3)));
            }
        }
        let mut g = EpisodeGrouper::default();
        let mut out = vec![];
        let mut most_held = 0;
        for r in &records {
            g.push(r, &mut out);
            most_held = most_held.max(g.current.len());
        }
        assert_eq!(most_held, 2);
        assert!(g.current.is_empty());
        let got: Vec<(u32, EndReason)> = out.iter().map(|e| (e.episode, e.end.reason)).collect();
        let done = EndReason::Completed;
        let want = [(0, done), (1, EndReason::Unfinished), (2, done), (3, done)];
        assert_eq!(got, want);
        assert_eq!(out[1].transitions.len(), 3);
    }

    /// The runs the datasets lack of a log: by id, with their episodes that none holds;
    /// runs without an id or a transition, those a dataset holds, and a run being
    /// written now are left out, and so are runs a full list may have let go. The advice
    /// names them by id, and converting those ids appends exactly them.
    #[test]
    fn unsaved_runs_are_the_log_runs_the_datasets_lack() {
        let dir = tempfile::tempdir().unwrap();
        let (path, out) = (
            dir.path().join("transitions.log"),
            dir.path().join("dataset"),
        );
        assert_eq!(unsaved_runs(&path, &[&out]).unwrap(), vec![]);
        let mut w = LogWriter::open(&path).unwrap();
        // (id, episodes' lengths): "" is an older version's run, "e" logged no step.
        let runs: [(&str, &[u32]); 6] = [
            ("", &[2]),
            ("a", &[2, 3]),
            ("b", &[1, 2]),
            ("e", &[0]),
            ("d-4000", &[1]),
            ("c-5000", &[4]),
        ];
        for (id, lens) in runs {
            let rs = RunStart {
                run_id: id.into(),
                ..run_start()
            };
            w.append(&Record::Run(rs)).unwrap();
            for (e, &n) in lens.iter().enumerate() {
                w.append(&started(e as u32)).unwrap();
                for s in 0..n {
                    w.append(&Record::Transition(transition(e as u32, s, s + 1 == n)))
                        .unwrap();
                }
            }
        }
        w.sync().unwrap();
        let unsaved = |holders: &[&Path]| -> Vec<(String, usize, bool)> {
            let runs = unsaved_runs(&path, holders).unwrap();
            runs.into_iter()
                .map(|r| (r.run_id, r.episodes, r.last_in_log))
                .collect()
        };
        let owned = |v: &[(&str, usize, bool)]| -> Vec<(String, usize, bool)> {
            v.iter()
                .map(|(id, n, l)| (id.to_string(), *n, *l))
                .collect()
        };
        // Being written (the writer holds the log): its last run is left out.
        let before = [("a", 2, false), ("b", 2, false), ("d-4000", 1, false)];
        assert_eq!(unsaved(&[&out]), owned(&before));
        drop(w);
        // No dataset yet: every run with an id and a step.
        let every = [
            ("a", 2, false),
            ("b", 2, false),
            ("d-4000", 1, false),
            ("c-5000", 1, true),
        ];
        assert_eq!(unsaved(&[&out]), owned(&every));
        // The dataset holds "a" and the first episode of "b"; another holds "d-4000".
        let mut ds = open_dataset(&out, &run_start().dataset_info()).unwrap();
        ds.note_run("a");
        ds.note_partial_run("b", &[0]);
        ds.finish().unwrap();
        let other = dir.path().join("other");
        let mut ds = open_dataset(&other, &run_start().dataset_info()).unwrap();
        ds.note_run("d-4000");
        ds.finish().unwrap();
        let lacking = [("b", 1, false), ("c-5000", 1, true)];
        assert_eq!(unsaved(&[&out, &other]), owned(&lacking));
        let runs = unsaved_runs(&path, &[&out, &other]).unwrap();
        let advice = unsaved_runs_advice(&path, &out, &runs).unwrap();
        let command = format!(
            "`controller log-to-dataset --log {} --out {} --run b --run c-5000`",
            path.display(),
            out.display()
        );
        assert!(
            advice.contains(&format!(
                "{} holds 1 episode of run b (started at unix time 0), 1 episode of run \
                 c-5000 (started at unix time 0) that the dataset {} does not",
                path.display(),
                out.display()
            )) && advice.contains(&command),
            "{advice}"
        );
        // As the advice says: exactly those episodes (the id-less run, appended by a
        // conversion of every run, is not), and then nothing is missing.
        let ids = vec!["b".to_string(), "c-5000".to_string()];
        let r = log_to_dataset(&path, &out, Runs::Only(ids.clone())).unwrap();
        assert_eq!(
            (r.episodes_written, r.frames, r.skipped_saved),
            (2, 6, 1),
            "{r:?}"
        );
        assert_eq!(unsaved(&[&out, &other]), vec![]);
        assert_eq!(dataset::noted_runs(&out).unwrap(), ["a", "b", "c-5000"]);
        let r = log_to_dataset(&path, &out, Runs::Only(ids)).unwrap();
        assert!(r.already_saved && r.episodes_written == 0, "{r:?}");
        let e = log_to_dataset(&path, &out, Runs::Only(vec!["z".into()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no run z in the log (it holds 5 runs with an id: a, b, e, d-4000, c-5000)"),
            "{e}"
        );
        assert_eq!(unsaved_runs_advice(&path, &out, &[]), None);
        // Past five runs, the rest are counted.
        let many: Vec<UnsavedRun> = (0..7)
            .map(|i| UnsavedRun {
                run_id: format!("r{i}"),
                started_unix: 0,
                episodes: 1,
                last_in_log: false,
            })
            .collect();
        let advice = unsaved_runs_advice(&path, &out, &many).unwrap();
        assert!(
            advice.contains("of run r4 (started at unix time 0), those of 2 more runs that")
                && advice.contains("--run r5 --run r6`"),
            "{advice}"
        );
        // A full list of runs keeps the newest: runs started at or before its oldest
        // are not known to be missing, a later one is.
        let full = dir.path().join("full");
        let mut ds = open_dataset(&full, &run_start().dataset_info()).unwrap();
        for i in 0..dataset::MAX_NOTED_RUNS {
            ds.note_run(&format!("run-{}", 4000 + i));
        }
        ds.finish().unwrap();
        assert_eq!(unsaved(&[&full]), owned(&[("c-5000", 1, true)]));
    }

    /// Runs by id take the run asked for from its header to the next one read: nothing
    /// before the first header read (a run whose header damage hid), and, appended to a
    /// dataset, nothing with damage inside it (it may hide another run's header, whose
    /// episodes would go in as this run's); into a new directory that run is converted
    /// with what follows it, as every run is.
    #[test]
    fn runs_by_id_leave_out_what_damage_hid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        let mut header_at = vec![];
        for (id, n) in [("p", 2u32), ("k", 3), ("x", 4)] {
            w.sync().unwrap();
            header_at.push(std::fs::metadata(&path).unwrap().len() as usize);
            let rs = RunStart {
                run_id: id.into(),
                ..run_start()
            };
            w.append(&Record::Run(rs)).unwrap();
            w.append(&started(0)).unwrap();
            for s in 0..n {
                w.append(&Record::Transition(transition(0, s, s + 1 == n)))
                    .unwrap();
            }
            w.append(&Record::EpisodeEnd(end(0, n))).unwrap();
        }
        drop(w);
        // The headers of "p" (the first) and "x" damaged; in a copy, only p's.
        let mut bytes = std::fs::read(&path).unwrap();
        let damage = |bytes: &mut Vec<u8>, at: usize| {
            bytes[at + 10..at + 16].iter_mut().for_each(|b| *b ^= 0xff)
        };
        damage(&mut bytes, header_at[0]);
        let before_k = dir.path().join("before-k.log");
        std::fs::write(&before_k, &bytes).unwrap();
        damage(&mut bytes, header_at[2]);
        std::fs::write(&path, &bytes).unwrap();
        let only_k = || Runs::Only(vec!["k".into()]);
        let new = dir.path().join("new");
        let r = log_to_dataset(&path, &new, only_k()).unwrap();
        // k's 3 frames and x's 4 (taken for k's), not p's 2.
        assert_eq!((r.episodes_written, r.frames), (2, 7), "{r:?}");
        let out = dir.path().join("ds");
        let mut ds = open_dataset(&out, &run_start().dataset_info()).unwrap();
        ds.note_run("other");
        ds.finish().unwrap();
        let e = log_to_dataset(&path, &out, only_k())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("damaged bytes inside run k's records: they may hide another run's header"),
            "{e}"
        );
        assert_eq!(dataset::read_dataset(&out).unwrap().episodes.len(), 0);
        // Damage before k only (p's header): k is appended, its 3 frames.
        let r = log_to_dataset(&before_k, &out, only_k()).unwrap();
        assert_eq!((r.episodes_written, r.frames), (1, 3), "{r:?}");
        // Now the dataset notes k: nothing to append, so no refusal.
        let r = log_to_dataset(&path, &out, only_k()).unwrap();
        assert!(r.already_saved, "{r:?}");
        let e = log_to_dataset(&path, &out, Runs::Only(vec![String::new()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no run id given"), "{e}");
        let e = log_to_dataset(&path, &out, Runs::Only(vec!["p".into()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no run p in the log (it holds 1 run with an id: k; damage"),
            "{e}"
        );
    }

    /// Without `--last-run`, into the dataset `controller run` saves into: the runs it
    /// notes (saved whole, or some of their episodes) are left out, the rest appended.
    /// A killed run followed by one that ended went in with the ended run a second time.
    #[test]
    fn every_run_the_dataset_does_not_hold_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        // Run "a": two whole episodes of 4 steps; "b": one of 3 steps, then one killed
        // after 2; "c": one of 5 steps.
        for (id, lens, killed) in [
            ("a", [4, 4], false),
            ("b", [3, 2], true),
            ("c", [5, 0], false),
        ] {
            let rs = RunStart {
                run_id: id.into(),
                ..run_start()
            };
            w.append(&Record::Run(rs)).unwrap();
            for (e, &n) in lens.iter().enumerate().filter(|(_, n)| **n > 0) {
                let e = e as u32;
                w.append(&Record::EpisodeStart {
                    episode: e,
                    seed: 1,
                })
                .unwrap();
                let ends = !(killed && e == 1);
                for s in 0..n {
                    w.append(&Record::Transition(transition(e, s, ends && s + 1 == n)))
                        .unwrap();
                }
                if ends {
                    w.append(&Record::EpisodeEnd(end(e, n))).unwrap();
                }
            }
        }
        drop(w);
        // The dataset as the runs left it: "a" and "c" saved theirs, "b" its first.
        let out = dir.path().join("ds");
        let mut ds = open_dataset(&out, &run_start().dataset_info()).unwrap();
        ds.note_run("a");
        ds.note_run("c");
        ds.note_partial_run("b", &[0]);
        ds.finish().unwrap();
        let r = log_to_dataset(&path, &out, Runs::All).unwrap();
        assert_eq!((r.episodes_written, r.frames), (1, 2), "{r:?}");
        assert_eq!((r.runs_saved, r.skipped_saved, r.unfinished), (2, 4, 1));
        let ds = dataset::read_dataset(&out).unwrap();
        assert_eq!((ds.episodes.len(), ds.num_frames()), (1, 2));
        // Every run is noted now: again, nothing.
        let r = log_to_dataset(&path, &out, Runs::All).unwrap();
        assert_eq!(
            (r.episodes_written, r.runs_saved, r.skipped_saved),
            (0, 3, 5)
        );
        // Into a new directory, every episode.
        let r = log_to_dataset(&path, &dir.path().join("new"), Runs::All).unwrap();
        assert_eq!((r.episodes_written, r.frames, r.runs_saved), (5, 18, 0));
        // A dataset whose list of runs is full may have let older runs go: refused, as
        // those would be appended again.
        let full = dir.path().join("full");
        let mut ds = open_dataset(&full, &run_start().dataset_info()).unwrap();
        for i in 0..dataset::MAX_NOTED_RUNS {
            ds.note_run(&format!("run-{i}"));
        }
        ds.finish().unwrap();
        let e = log_to_dataset(&path, &full, Runs::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("it notes only its newest 1000 runs, and run a of the log started"),
            "{e}"
        );
        assert_eq!(dataset::read_dataset(&full).unwrap().episodes.len(), 0);
    }

    #[test]
    fn log_to_dataset_rebuilds_killed_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.append(&Record::Run(run_start())).unwrap();
        for e in 0..2 {
            w.append(&Record::EpisodeStart {
                episode: e,
                seed: 9,
            })
            .unwrap();
            for s in 0..4 {
                w.append(&Record::Transition(transition(e, s, e == 0 && s == 3)))
                    .unwrap();
            }
            if e == 0 {
                w.append(&Record::EpisodeEnd(end(0, 4))).unwrap();
            }
        }
        drop(w);
        let out = dir.path().join("ds");
        let r = log_to_dataset(&path, &out, Runs::All).unwrap();
        assert_eq!((r.episodes_written, r.frames, r.unfinished), (2, 8, 1));
        dataset::validate_dataset(&out).unwrap();
        let ds = dataset::read_dataset(&out).unwrap();
        assert_eq!(ds.num_frames(), 8);
        assert_eq!(ds.episodes[1].truncated.last(), Some(&true));
        // The same log again: the dataset notes its run, so nothing is appended (its
        // episodes went in a second time).
        let r = log_to_dataset(&path, &out, Runs::All).unwrap();
        assert_eq!(
            (r.episodes_written, r.runs_saved, r.skipped_saved),
            (0, 1, 2)
        );
        assert_eq!(dataset::read_dataset(&out).unwrap().num_frames(), 8);
        // A second run into the same log, killed in its second episode: `Runs::Last`
        // adds its two episodes (3 frames each) and nothing of the first run.
        let mut w = LogWriter::open(&path).unwrap();
        let second = RunStart {
            run_id: "test-run-2".into(),
            ..run_start()
        };
        w.append(&Record::Run(second)).unwrap();
        for e in 0..2 {
            w.append(&Record::EpisodeStart {
                episode: e,
                seed: 11,
            })
            .unwrap();
            for s in 0..3 {
                w.append(&Record::Transition(transition(e, s, false)))
                    .unwrap();
            }
        }
        drop(w);
        let r = log_to_dataset(&path, &out, Runs::Last).unwrap();
        assert_eq!((r.episodes_written, r.frames, r.unfinished), (2, 6, 2));
        let ds = dataset::read_dataset(&out).unwrap();
        assert_eq!((ds.episodes.len(), ds.num_frames()), (4, 14));
        // Converted, the run is noted: converting it again writes nothing.
        let r = log_to_dataset(&path, &out, Runs::Last).unwrap();
        assert!(r.already_saved && r.episodes_written == 0);
        assert_eq!(dataset::read_dataset(&out).unwrap().num_frames(), 14);
        // A third run, killed, whose header a damaged sector lost: the last header read
        // is the saved run's, and `Runs::Last` said "saved already", nothing written,
        // the run to recover unseen. Refused by name now, the dataset as it was.
        let third_at = std::fs::metadata(&path).unwrap().len();
        let mut w = LogWriter::open(&path).unwrap();
        let third = RunStart {
            run_id: "test-run-3".into(),
            ..run_start()
        };
        w.append(&Record::Run(third)).unwrap();
        w.append(&Record::EpisodeStart {
            episode: 0,
            seed: 12,
        })
        .unwrap();
        for s in 0..2 {
            w.append(&Record::Transition(transition(0, s, false)))
                .unwrap();
        }
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[third_at as usize + 8] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = log_to_dataset(&path, &out, Runs::Last)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("damaged bytes after the last run header read (run test-run-2"),
            "{e}"
        );
        assert_eq!(dataset::read_dataset(&out).unwrap().num_frames(), 14);
        // Every run: as damage may hide a header, refused too.
        let e = log_to_dataset(&path, &out, Runs::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("damaged bytes, which may hide a run's header"),
            "{e}"
        );
        assert_eq!(dataset::read_dataset(&out).unwrap().num_frames(), 14);
        // A log of an older version (no run id) is converted, and said to be unknown.
        let old = dir.path().join("old.log");
        let unnamed = RunStart {
            run_id: String::new(),
            ..run_start()
        };
        write_one_step_run(&old, unnamed);
        let r = log_to_dataset(&old, &dir.path().join("old-ds"), Runs::Last).unwrap();
        assert!(r.unknown_run && !r.already_saved && r.episodes_written == 1);
        // Another robot's log, other observations of the same sizes, or another control
        // rate: refused by name, the dataset untouched.
        let fps = run_start().fps;
        for (case, robot, names, fps, named) in [
            (
                "robot",
                "other-arm",
                run_start().observation_names,
                fps,
                "was recorded by robot `",
            ),
            (
                "names",
                "r",
                vec!["a".into(), "c".into(), "b".into()],
                fps,
                "observation [1] is `b`, this run's is `c`",
            ),
            (
                "rate",
                "r",
                run_start().observation_names,
                fps * 2,
                "this run records at",
            ),
        ] {
            let other = dir.path().join(format!("{case}.log"));
            let mut w = LogWriter::open(&other).unwrap();
            let mut start = run_start();
            start.robot = robot.to_string();
            start.observation_names = names;
            start.fps = fps;
            w.append(&Record::Run(start)).unwrap();
            drop(w);
            let e = log_to_dataset(&other, &out, Runs::All)
                .unwrap_err()
                .to_string();
            assert!(e.contains(named) && e.contains("another directory"), "{e}");
            assert_eq!(dataset::read_dataset(&out).unwrap().num_frames(), 14);
        }
        // A dataset without `next.truncated` (not written by us): a terminal end that is
        // not a success would read back as cut there, so it is refused before anything
        // is written.
        let foreign = dir.path().join("foreign");
        DatasetWriter::create(&foreign, run_start().dataset_info())
            .unwrap()
            .finish()
            .unwrap();
        let info = foreign.join("meta/info.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
        json["features"]
            .as_object_mut()
            .unwrap()
            .remove(dataset::cols::TRUNCATED)
            .unwrap();
        std::fs::write(&info, json.to_string()).unwrap();
        // A leftover data file no episode references: opening for an append would set
        // it aside and rewrite `meta/`, which a refused conversion must not do.
        let stray = foreign.join("data/chunk-000/file-009.parquet");
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(&stray, b"not ours").unwrap();
        let info_before = std::fs::read(&info).unwrap();
        let e = log_to_dataset(&path, &foreign, Runs::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has no `next.truncated` column") && e.contains("another directory"),
            "{e}"
        );
        assert_eq!(std::fs::read(&stray).unwrap(), b"not ours");
        assert_eq!(std::fs::read(&info).unwrap(), info_before);
        assert!(!foreign.join("unreferenced").exists());
        std::fs::remove_file(&stray).unwrap();
        assert_eq!(dataset::read_dataset(&foreign).unwrap().num_frames(), 0);
    }
}
