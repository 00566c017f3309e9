//! The logger thread: transition records in, log file and dataset out.
//!
//! ```text
//!  control thread ──try_send(Record)──► bounded channel ──► logger thread
//!   (never blocks; a full channel drops      │                 append record (len+crc+payload)
//!    the transition and counts it)           │                 keep the episode's transitions
//!                                            │                 fdatasync every second (--uplink)
//!                                            │                 at EpisodeEnd: fdatasync, convert,
//!                                            ▼                 DatasetWriter::append_episode
//!                                    run ends: channel closes → DatasetWriter::finish
//! ```
//!
//! Episode boundaries (start and end records) are not dropped: the control thread
//! keeps them in a small queue and retries every tick until the channel takes them.
//! Transitions go straight in, so under backpressure an episode's first transitions can
//! overtake its start record (and the previous episode's end): the logger keeps them
//! aside for the start record.
//!
//! With `--rerun`, a thread of its own takes the control thread's tick frames from a
//! second bounded channel and records them (see [`super::viz`]): a viewer connection
//! that stalls (rerun's sinks block when their buffers fill) holds up only the
//! recording, never the log and the dataset.

use super::link::LinkCounters;
use super::log::{
    ConvertNotes, EndReason, LogError, LogWriter, Record, RunStart, SYNC_EVERY, Transition,
    to_episode,
};
use super::realtime;
use super::viz::{TickFrame, TickSink};
use crossbeam_channel::{Receiver, Sender, bounded};
use dataset::DatasetWriter;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One episode as saved to the dataset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SavedEpisode {
    pub episode: u32,
    pub reason: EndReason,
    /// Index in the dataset (`None`: nothing usable, not written).
    pub dataset_index: Option<usize>,
    pub notes: ConvertNotes,
}

/// What the logger did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoggerSummary {
    pub log: Option<PathBuf>,
    pub dataset: Option<PathBuf>,
    pub records: u64,
    /// Bytes of a torn record cut off the existing log before appending.
    pub repaired_bytes: u64,
    pub episodes: Vec<SavedEpisode>,
    pub frames_saved: usize,
    pub dataset_total_episodes: usize,
    pub dataset_total_frames: usize,
    pub errors: Vec<String>,
    /// Ticks recorded for rerun (`--rerun`).
    pub rerun_ticks: Option<u64>,
}

/// The tick frames to record: their channel, the recording, the link's counters.
pub struct TickInput {
    pub rx: Receiver<TickFrame>,
    pub sink: Box<dyn TickSink>,
    pub link: Arc<Mutex<LinkCounters>>,
    /// Frames recorded so far.
    pub recorded: u64,
}

impl TickInput {
    fn record(&mut self, f: &TickFrame) {
        let link = *self.link.lock().unwrap_or_else(|e| e.into_inner());
        self.sink.tick(f, &link);
        self.recorded += 1;
    }
}

/// The running logger.
pub struct Logger {
    pub tx: Sender<Record>,
    pub shared: Arc<Mutex<LoggerSummary>>,
    handle: JoinHandle<LoggerSummary>,
    /// The recording thread (`--rerun`) and how long the run's end waits for it
    /// ([`TickSink::finish_wait`]).
    recording: Option<(JoinHandle<Recorded>, Option<Duration>)>,
}

/// What the recording thread ends with: frames recorded, and its flush's error.
type Recorded = (u64, Result<(), String>);

impl Logger {
    /// Starts the thread; it writes `run` as the first record.
    pub fn spawn(
        mut log: LogWriter,
        dataset: Option<(PathBuf, DatasetWriter)>,
        run: RunStart,
        capacity: usize,
        ticks: Option<TickInput>,
    ) -> std::io::Result<Logger> {
        let run_id = run.run_id.clone();
        let (tx, rx) = bounded(capacity);
        let shared = Arc::new(Mutex::new(LoggerSummary {
            log: Some(log.path().to_path_buf()),
            dataset: dataset.as_ref().map(|(p, _)| p.clone()),
            repaired_bytes: log.repaired_bytes,
            ..LoggerSummary::default()
        }));
        let recording = match ticks {
            None => None,
            Some(mut t) => {
                let wait = t.sink.finish_wait();
                let thread = realtime::spawn_in_run("recording", move || {
                    // Until the run ends: the control thread drops the frames' sender.
                    while let Ok(f) = t.rx.recv() {
                        t.record(&f);
                    }
                    (t.recorded, t.sink.finish())
                })?;
                Some((thread, wait))
            }
        };
        let s = shared.clone();
        let handle = realtime::spawn_in_run("logger", move || {
            if let Err(e) = log.append(&Record::Run(run)) {
                push_error(&s, e.to_string());
            }
            logger_main(log, dataset.map(|(_, w)| w), rx, &run_id, &s);
            s.lock().unwrap_or_else(|e| e.into_inner()).clone()
        })?;
        Ok(Logger {
            tx,
            shared,
            handle,
            recording,
        })
    }

    /// Closes the channel and waits for the dataset to be finished, then for the
    /// recording (the run has ended, so its frames' channel is closed too).
    pub fn finish(self) -> LoggerSummary {
        let Logger {
            tx,
            shared,
            handle,
            recording,
        } = self;
        drop(tx);
        let mut summary = match handle.join() {
            Ok(s) => s,
            Err(_) => {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
                s.errors.push("the logger thread panicked".into());
                s
            }
        };
        if let Some((r, wait)) = recording {
            // A viewer that stopped reading blocks the recording thread inside a tick:
            // past the sink's bound it is left behind (it ends with the process), so
            // that the run still writes its report and exits.
            let start = Instant::now();
            while wait.is_some_and(|w| start.elapsed() < w) && !r.is_finished() {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !r.is_finished() && wait.is_some() {
                summary.errors.push(format!(
                    "the rerun recording did not finish within {:.0} s (a viewer that stopped \
                     taking it?): gave up on it; the frames it had not sent are not recorded",
                    wait.unwrap_or_default().as_secs_f64()
                ));
            } else {
                match r.join() {
                    Ok((recorded, flushed)) => {
                        summary.rerun_ticks = Some(recorded);
                        if let Err(e) = flushed {
                            summary.errors.push(e);
                        }
                    }
                    Err(_) => summary.errors.push("the recording thread panicked".into()),
                }
            }
        }
        summary
    }
}

/// A data file that failed took its episodes out of the dataset: those at index `kept`
/// and beyond are not saved after all. Returns how many they are.
fn unsave_lost(s: &Mutex<LoggerSummary>, kept: usize) -> usize {
    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
    let g = &mut *g;
    let mut unsaved = 0;
    for e in g.episodes.iter_mut() {
        if e.dataset_index.is_some_and(|i| i >= kept) {
            e.dataset_index = None;
            g.frames_saved -= e.notes.frames;
            unsaved += 1;
        }
    }
    unsaved
}

fn push_error(s: &Mutex<LoggerSummary>, e: String) {
    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
    // A full disk would report every record: keep the first few.
    if g.errors.len() < 20 {
        g.errors.push(e);
    }
}

fn logger_main(
    mut log: LogWriter,
    mut dataset: Option<DatasetWriter>,
    rx: Receiver<Record>,
    run_id: &str,
    s: &Mutex<LoggerSummary>,
) {
    // Episodes that could not be saved (an append or the data file's close failed).
    let mut lost = false;
    let mut current: Option<(u32, Vec<Transition>)> = None;
    // Transitions of an episode whose start record has not arrived yet.
    let mut early: Vec<Transition> = Vec::new();
    // A failing sync is said once per message: after one, every later one fails too
    // ([`LogWriter::sync`]), and the periodic one would fill the errors every second
    // (a disk failing now and then alternates two messages).
    let mut sync_errors_said: Vec<String> = vec![];
    let mut note_sync = |synced: Result<(), LogError>| {
        if let Err(e) = synced {
            let e = e.to_string();
            if !sync_errors_said.contains(&e) {
                push_error(s, e.clone());
                sync_errors_said.push(e);
            }
        }
    };
    // Until the run ends: the control thread drops the records' sender.
    loop {
        let rec = match rx.recv_timeout(SYNC_EVERY) {
            Ok(rec) => rec,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // Within a long episode too, and with no record coming: the uplink
                // streams only what is on disk.
                note_sync(log.sync_if_due(SYNC_EVERY));
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        if let Err(e) = log.append(&rec) {
            push_error(s, e.to_string());
        }
        note_sync(log.sync_if_due(SYNC_EVERY));
        match rec {
            Record::EpisodeStart { episode, .. } => {
                let (mut ts, later): (Vec<_>, Vec<_>) =
                    early.drain(..).partition(|t| t.episode == episode);
                early = later;
                ts.reserve(512);
                current = Some((episode, ts));
            }
            Record::Transition(t) => match current.as_mut() {
                Some((ep, ts)) if *ep == t.episode => ts.push(t),
                _ => early.push(t),
            },
            Record::EpisodeEnd(end) => {
                note_sync(log.sync());
                let ts = match current.take() {
                    Some((ep, ts)) if ep == end.episode => ts,
                    _ => Vec::new(),
                };
                let converted = to_episode(&ts, Some(&end));
                let mut saved = SavedEpisode {
                    episode: end.episode,
                    reason: end.reason,
                    dataset_index: None,
                    notes: converted.as_ref().map(|c| c.1).unwrap_or_default(),
                };
                early.retain(|t| t.episode != end.episode);
                if let (Some(w), Some((ep, _))) = (dataset.as_mut(), converted.as_ref()) {
                    let index = w.total_episodes();
                    match w.append_episode(ep) {
                        Ok(()) => saved.dataset_index = Some(index),
                        Err(e) => {
                            push_error(s, format!("episode {}: {e}", end.episode));
                            unsave_lost(s, w.total_episodes());
                            lost = true;
                        }
                    }
                }
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                g.frames_saved += saved.dataset_index.map_or(0, |_| saved.notes.frames);
                g.episodes.push(saved);
            }
            Record::Run(_) => {}
        }
        s.lock().unwrap_or_else(|e| e.into_inner()).records = log.records;
    }
    note_sync(log.sync());
    if let Some(mut w) = dataset {
        // Closed here rather than in finish(), to know which episodes a failed close
        // took along (finish() still writes the metadata of the others).
        if let Err(e) = w.close_data_file() {
            push_error(s, format!("closing the dataset's data file: {e}"));
            unsave_lost(s, w.total_episodes());
            lost = true;
        }
        // The run is noted in the dataset, committed with its episodes, when every one
        // of them is there: `log-to-dataset --last-run` writes nothing for a noted run.
        // Otherwise (one lost, or one the run never ended: the channel closed inside
        // it) only the episodes saved are noted, and the converter adds the others.
        let incomplete = lost || current.is_some() || !early.is_empty();
        if !run_id.is_empty() {
            if incomplete {
                let saved: Vec<u32> = s
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .episodes
                    .iter()
                    .filter(|e| e.dataset_index.is_some())
                    .map(|e| e.episode)
                    .collect();
                w.note_partial_run(run_id, &saved);
            } else {
                w.note_run(run_id);
            }
        }
        let dir = w.dir().to_path_buf();
        match w.finish() {
            Ok(sum) => {
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                g.dataset_total_episodes = sum.total_episodes;
                g.dataset_total_frames = sum.total_frames;
            }
            Err(e) => {
                push_error(s, format!("finishing the dataset: {e}"));
                // Its metadata not written, the dataset holds what it held before: the
                // episodes this run appended are not in it (the log has them).
                // (A failure after the metadata was committed loses none.)
                let committed = dataset::committed_episodes(&dir).unwrap_or(0);
                let lost = unsave_lost(s, committed);
                if lost > 0 {
                    // By id: after the next run into this --out, `--last-run` takes that.
                    let which = match run_id {
                        "" => "--last-run".to_string(),
                        id => format!("--run {id}"),
                    };
                    push_error(
                        s,
                        format!(
                            "{lost} episodes of this run are not in {} (its metadata could not \
                             be written); `controller log-to-dataset --log {} --out {} {which}` \
                             adds them from the log",
                            dir.display(),
                            log.path().display(),
                            dir.display()
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::log::open_dataset;
    use super::super::log::tests::{end, run_start, transition};
    use super::*;

    /// A logger of [`run_start`]'s run writing `dir/transitions.log` and `dir/dataset`,
    /// its records' channel `capacity` long.
    fn logger_in(dir: &std::path::Path, capacity: usize, ticks: Option<TickInput>) -> Logger {
        let log = LogWriter::open(&dir.join("transitions.log")).unwrap();
        let run = run_start();
        let ds_dir = dir.join("dataset");
        let w = open_dataset(&ds_dir, &run.dataset_info()).unwrap();
        Logger::spawn(log, Some((ds_dir, w)), run, capacity, ticks).unwrap()
    }

    /// Under backpressure the control thread's queued end and start records can come
    /// after the next episodes' first transitions: those still reach the dataset.
    #[test]
    fn transitions_ahead_of_their_episodes_start_record_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let ds_dir = dir.path().join("dataset");
        let logger = logger_in(dir.path(), 64, None);
        let send = |r: Record| logger.tx.send(r).unwrap();
        send(Record::EpisodeStart {
            episode: 0,
            seed: 9,
        });
        send(Record::Transition(transition(0, 0, false)));
        send(Record::Transition(transition(0, 1, true)));
        send(Record::Transition(transition(1, 0, false)));
        send(Record::Transition(transition(1, 1, true)));
        // Two episodes ahead.
        send(Record::Transition(transition(2, 0, false)));
        send(Record::EpisodeEnd(end(0, 2)));
        send(Record::EpisodeStart {
            episode: 1,
            seed: 10,
        });
        send(Record::EpisodeEnd(end(1, 2)));
        send(Record::EpisodeStart {
            episode: 2,
            seed: 11,
        });
        send(Record::Transition(transition(2, 1, true)));
        send(Record::EpisodeEnd(end(2, 2)));
        let s = logger.finish();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.frames_saved, 6, "{s:?}");
        let ds = dataset::read_dataset(&ds_dir).unwrap();
        assert_eq!(ds.episodes.len(), 3);
        assert!(ds.episodes.iter().all(|e| e.len() == 2));
    }

    /// A recording sink whose every tick waits for a release on its channel (a stalled
    /// viewer connection), and the bound the run's end waits for it.
    struct Blocked(Receiver<()>, Option<Duration>);

    impl TickSink for Blocked {
        fn tick(&mut self, _: &TickFrame, _: &super::super::link::LinkCounters) {
            let _ = self.0.recv();
        }
        fn finish(self: Box<Self>) -> Result<(), String> {
            Ok(())
        }
        fn finish_wait(&self) -> Option<Duration> {
            self.1
        }
    }

    /// A logger in `dir` recording through `sink`, one tick frame queued for the
    /// recording and one episode of `steps` transitions sent; and the frames' sender,
    /// whose drop ends the recording.
    fn recording_one_episode(
        dir: &std::path::Path,
        sink: Blocked,
        steps: u32,
    ) -> (Logger, Sender<TickFrame>) {
        let (frames, rx) = bounded(4);
        let ticks = TickInput {
            rx,
            sink: Box::new(sink),
            link: Arc::default(),
            recorded: 0,
        };
        let logger = logger_in(dir, 8, Some(ticks));
        frames.send(TickFrame::default()).unwrap();
        let send = |r: Record| logger.tx.send_timeout(r, Duration::from_secs(10)).unwrap();
        send(Record::EpisodeStart {
            episode: 0,
            seed: 9,
        });
        for step in 0..steps {
            send(Record::Transition(transition(0, step, step + 1 == steps)));
        }
        send(Record::EpisodeEnd(end(0, steps)));
        (logger, frames)
    }

    /// A recording that blocks (a stalled viewer connection: rerun's sinks block once
    /// their buffers fill) holds up neither the transition log nor the dataset: they
    /// ran on one thread, and the records' channel filled behind the blocked frame.
    #[test]
    fn a_blocked_recording_holds_up_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let (release, blocked) = bounded(1);
        let (logger, frames) = recording_one_episode(dir.path(), Blocked(blocked, None), 50);
        release.send(()).unwrap();
        drop(frames);
        let s = logger.finish();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.frames_saved, 50, "{s:?}");
        assert_eq!(s.rerun_ticks, Some(1));
    }

    /// A recording that stays blocked to the end (a viewer that stopped reading
    /// mid-run) does not hold up the run's end past its sink's bound: the summary says
    /// the recording was given up, and the dataset is whole. (`finish` waited for ever.)
    #[test]
    fn a_recording_blocked_to_the_end_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        // Never released: the sender lives to the end of the test.
        let (_release, stuck) = bounded::<()>(1);
        let sink = Blocked(stuck, Some(Duration::from_millis(300)));
        let (logger, frames) = recording_one_episode(dir.path(), sink, 5);
        drop(frames);
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(logger.finish());
        });
        let s = done
            .recv_timeout(Duration::from_secs(60))
            .expect("the logger waited for the blocked recording without a limit");
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(
            s.errors[0].contains("did not finish within"),
            "{:?}",
            s.errors
        );
        assert_eq!(s.frames_saved, 5, "{s:?}");
        assert_eq!(s.rerun_ticks, None);
    }

    /// Episode 0 (seed 9): two transitions, the second terminal, and its end.
    fn send_one_episode(logger: &Logger) {
        let send = |r: Record| logger.tx.send(r).unwrap();
        send(Record::EpisodeStart {
            episode: 0,
            seed: 9,
        });
        send(Record::Transition(transition(0, 0, false)));
        send(Record::Transition(transition(0, 1, true)));
        send(Record::EpisodeEnd(end(0, 2)));
    }

    /// A dataset whose metadata cannot be written at the run's end (a full disk, here
    /// a directory in the way of `info.json`'s staging file) keeps what it held before:
    /// the summary no longer counts the run's episodes as saved, and the error says how
    /// to add them from the log, by the run's id. (It said they were saved.)
    #[test]
    fn episodes_a_failed_finish_left_out_are_not_counted_as_saved() {
        let dir = tempfile::tempdir().unwrap();
        let logger = logger_in(dir.path(), 64, None);
        send_one_episode(&logger);
        let blocker = dir.path().join("dataset/meta/info.json.tmp");
        std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
        let s = logger.finish();
        assert_eq!(s.frames_saved, 0, "{s:?}");
        assert_eq!(s.episodes[0].dataset_index, None, "{s:?}");
        let said = s.errors.join("\n");
        assert!(said.contains("1 episodes of this run are not in"), "{said}");
        // By the run's id: after the next run into this --out, `--last-run` takes that.
        let by_id = format!("--run {}` adds them from the log", run_start().run_id);
        assert!(said.contains(&by_id), "{said}");
        std::fs::remove_dir_all(&blocker).unwrap();
        assert_eq!(
            dataset::committed_episodes(&dir.path().join("dataset")).unwrap(),
            0
        );
    }

    /// A logger that stops inside an episode (the control thread never ended it) notes
    /// only the episodes it saved: `log-to-dataset --last-run` then adds the unfinished
    /// one from the log, and not the saved one a second time. (The run was noted whole,
    /// and the unfinished episode could not be recovered.)
    #[test]
    fn an_episode_left_open_stays_recoverable_and_saved_ones_are_not_doubled() {
        use super::super::log::{Runs, log_to_dataset};
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("transitions.log");
        let ds_dir = dir.path().join("dataset");
        assert!(!run_start().run_id.is_empty());
        let logger = logger_in(dir.path(), 64, None);
        send_one_episode(&logger);
        let send = |r: Record| logger.tx.send(r).unwrap();
        send(Record::EpisodeStart {
            episode: 1,
            seed: 10,
        });
        send(Record::Transition(transition(1, 0, false)));
        send(Record::Transition(transition(1, 1, false)));
        let s = logger.finish();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(dataset::read_dataset(&ds_dir).unwrap().episodes.len(), 1);
        let r = log_to_dataset(&log_path, &ds_dir, Runs::Last).unwrap();
        assert!(!r.already_saved, "{r:?}");
        assert_eq!((r.skipped_saved, r.episodes_written), (1, 1), "{r:?}");
        let ds = dataset::read_dataset(&ds_dir).unwrap();
        assert_eq!(ds.episodes.len(), 2);
        assert_eq!(ds.episodes[1].len(), 2);
        // The run is whole now: converting again writes nothing.
        let r = log_to_dataset(&log_path, &ds_dir, Runs::Last).unwrap();
        assert!(r.already_saved, "{r:?}");
        assert!(dataset::noted_runs(&ds_dir).unwrap().len() == 1);
    }
}
