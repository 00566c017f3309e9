//! The uplink in a real run: the controller drives the simulated firmware over a pty and
//! streams its transition log to a trainer-side server that drops the first connection
//! part-way and then loses records it had acknowledged. Every record of the log must
//! reach the server exactly once, in order.

use controller::robot_loop::streamer::UplinkConfig;
use controller::robot_loop::{self, Brain, RunConfig, log::LogWriter, log::read_log};
use controller::runtime::{Backend, PolicyOptions};
use firmware_config::RobotConfig;
use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
use shared_model::manifest::Trust;
use sim::TaskId;
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uplink::records::{RecordSink, serve_records};
use uplink::{KEY_LEN, Key, Session};

type Store = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;

/// Holds records in memory; the first connection fails after `cut` records, the
/// second begins by losing the newest `lose` of them (a trainer restarted from an
/// older copy of its data).
struct Sink {
    store: Store,
    cut: Option<usize>,
    lose: Option<usize>,
}

impl RecordSink for Sink {
    fn next_index(&mut self, stream: &str) -> Result<u64, String> {
        let mut m = self.store.lock().unwrap();
        let v = m.entry(stream.to_string()).or_default();
        if let Some(n) = self.lose.take() {
            v.truncate(v.len().saturating_sub(n));
        }
        Ok(v.len() as u64)
    }
    fn append(&mut self, stream: &str, index: u64, record: &[u8]) -> Result<(), String> {
        if self.cut == Some(0) {
            return Err("forced disconnect".into());
        }
        self.cut = self.cut.map(|c| c - 1);
        let mut m = self.store.lock().unwrap();
        let v = m.entry(stream.to_string()).or_default();
        assert_eq!(index, v.len() as u64, "out of order");
        v.push(record.to_vec());
        Ok(())
    }
}

/// A console that writes nowhere, for the streamer's lines.
fn quiet() -> controller::robot_loop::console::ConsoleTx {
    controller::robot_loop::console::Console::spawn(std::io::sink())
        .unwrap()
        .1
}

fn key() -> Key {
    Key::from_bytes([9; KEY_LEN])
}

/// Streaming to `addr` (no bundle swaps), draining for up to `drain` at the end.
fn uplink(addr: impl Into<String>, drain: Duration) -> UplinkConfig {
    UplinkConfig {
        addr: addr.into(),
        key: key(),
        drain,
        swap: None,
    }
}

/// The push robot behind the simulated firmware (lockstep, a 10x clock) and a quiet run
/// of `episodes` into `out` on it.
fn push_run(out: &std::path::Path, episodes: u32) -> (FirmwareThread, RunConfig) {
    let mut robot = RobotConfig::example("push").unwrap();
    // At the 10x clock the firmware's checks get a tenth of their real time: a slow step
    // of a loaded 2-core machine must not stop this test of the link (the HIL tests
    // cover the stale-sensor monitor and the command watchdog).
    robot.safety.stale_sensor_ms = 3000;
    robot.command_timeout_ms = 20_000;
    let mut fw = FirmwareOptions::new(TaskId::Push, robot.clone());
    fw.pacing = Pacing::Lockstep;
    let firmware = FirmwareThread::spawn(fw, 10.0).unwrap();
    let mut cfg = RunConfig::new(robot, firmware.path().to_path_buf());
    // Not a cadence test: a pause on a loaded machine at this time scale can miss 10
    // deadlines in a row (controller/tests/hil.rs checks that fault).
    cfg.max_consecutive_overruns = 0;
    cfg.episodes = Some(episodes);
    cfg.time_scale = 10.0;
    cfg.out = Some(out.to_path_buf());
    cfg.quiet = true;
    (firmware, cfg)
}

#[test]
fn every_logged_transition_reaches_the_trainer_once_across_a_forced_disconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle_dir = tmp.path().join("bundle");
    shared_model::synthetic::SyntheticSpec::cpu()
        .write(&bundle_dir, 3, None)
        .unwrap();
    let bundle = shared_model::load_bundle(&bundle_dir, &Trust::AllowUnsigned).unwrap();

    // The trainer side: connection 1 dies after 150 records, later ones run normally.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let store: Store = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (st, dn) = (store.clone(), done.clone());
    let server = std::thread::spawn(move || {
        let mut outcomes = vec![];
        let mut cut = Some(150);
        let mut lose = None;
        while !dn.load(Ordering::SeqCst) {
            let Ok((tcp, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            tcp.set_nonblocking(false).unwrap();
            let mut sink = Sink {
                store: st.clone(),
                cut: cut.take(),
                lose: lose.take(),
            };
            if sink.cut.is_some() {
                lose = Some(100);
            }
            let outcome = Session::server(tcp, &key())
                .map_err(|e| e.to_string())
                .and_then(|mut s| serve_records(&mut s, &mut sink).map_err(|e| e.to_string()));
            outcomes.push(outcome.map(|(_, n)| n));
        }
        outcomes
    });

    let options = PolicyOptions {
        backend: Backend::Tract,
        executed_steps: None,
        seed: 5,
    };
    let brain = Brain::new(&bundle, &options, false).unwrap();
    let out = tmp.path().join("run");
    let (firmware, mut cfg) = push_run(&out, 4);
    cfg.uplink = Some(uplink(addr.to_string(), Duration::from_secs(20)));
    let report = robot_loop::run(cfg, brain, "push", "synthetic").unwrap();
    drop(firmware);
    done.store(true, Ordering::SeqCst);
    let outcomes = server.join().unwrap();

    let logged: Vec<Vec<u8>> = read_log(&out.join("transitions.log"))
        .unwrap()
        .records
        .iter()
        .map(|r| {
            let mut v = vec![];
            r.encode(&mut v);
            v
        })
        .collect();
    let up = report.uplink.expect("uplink summary");
    eprintln!("{up:?}\nserver: {outcomes:?}");
    assert!(logged.len() > 300, "only {} records logged", logged.len());
    assert_eq!(up.logged, logged.len() as u64);
    assert_eq!(up.acknowledged, logged.len() as u64);
    assert!(up.connections >= 2, "{up:?}");
    // The first connection's acknowledgements covered more than the 100 records lost.
    assert!(up.resent > 0, "{up:?}");
    assert!(
        outcomes[0]
            .as_ref()
            .is_err_and(|e| e.contains("forced disconnect")),
        "{outcomes:?}"
    );
    let store = store.lock().unwrap();
    let received = &store[up.stream.as_ref().unwrap()];
    assert_eq!(received.len(), logged.len());
    assert!(received == &logged, "records differ from the log");
}

/// Counts what it is sent of a log whose first `held` records it has already.
struct Holder {
    held: u64,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordSink for Holder {
    fn next_index(&mut self, _stream: &str) -> Result<u64, String> {
        Ok(self.held + self.received.lock().unwrap().len() as u64)
    }
    fn append(&mut self, stream: &str, index: u64, record: &[u8]) -> Result<(), String> {
        assert_eq!(Ok(index), self.next_index(stream), "out of order");
        self.received.lock().unwrap().push(record.to_vec());
        Ok(())
    }
}

/// A run that ends while the streamer is still reading past records the trainer holds
/// (a log that several runs appended to, read a `TAIL_READ_MAX` at a time): the
/// records it lacks are sent before the streamer stops. Before, the first poll that
/// found only held records passed for the log's end.
#[test]
fn the_streamer_reads_past_held_records_to_send_the_rest_after_the_run_ended() {
    use controller::robot_loop::log::{LogWriter, Record, TAIL_READ_MAX};
    use controller::robot_loop::streamer::Streamer;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("transitions.log");
    let mut w = LogWriter::open(&log).unwrap();
    let record = |i: u64| Record::EpisodeStart {
        episode: i as u32,
        seed: i,
    };
    // Over 2.5 reads of the tail's most per poll.
    let mut n = 0u64;
    while !n.is_multiple_of(1000) || std::fs::metadata(&log).unwrap().len() < TAIL_READ_MAX * 5 / 2
    {
        w.append(&record(n)).unwrap();
        n += 1;
    }
    w.sync().unwrap();
    drop(w);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let r = received.clone();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut sink = Holder {
            held: n - 1,
            received: r,
        };
        let mut s = Session::server(tcp, &key()).unwrap();
        serve_records(&mut s, &mut sink).map(|(_, k)| k)
    });
    let (streamer, _ready) = Streamer::spawn(
        uplink(addr.to_string(), Duration::from_secs(60)),
        &log,
        None,
        quiet(),
    )
    .unwrap();
    // The run has ended: the streamer only drains.
    let summary = streamer.finish();
    let _ = server.join();
    let mut last = vec![];
    record(n - 1).encode(&mut last);
    assert_eq!(*received.lock().unwrap(), vec![last], "{summary:?}");
    assert_eq!(summary.acknowledged, n, "{summary:?}");
    assert_eq!(summary.logged, n, "{summary:?}");
}

/// Streams `log` (read no further than `synced`) to a trainer that holds `held` records
/// of it, until the log's end or `drain`; returns what the trainer received and the
/// streamer's summary.
fn stream_to_holder(
    log: &std::path::Path,
    synced: Option<controller::robot_loop::log::SyncedLen>,
    held: u64,
    drain: Duration,
) -> (
    Vec<Vec<u8>>,
    controller::robot_loop::streamer::UplinkSummary,
) {
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let r = received.clone();
    let (addr, done, server) = serve_in_background(move || Holder {
        held,
        received: r.clone(),
    });
    let (streamer, _ready) = controller::robot_loop::streamer::Streamer::spawn(
        uplink(addr, drain),
        log,
        synced,
        quiet(),
    )
    .unwrap();
    let summary = streamer.finish();
    done.store(true, Ordering::SeqCst);
    server.join().unwrap();
    let received = received.lock().unwrap().clone();
    (received, summary)
}

/// Serves records on a local port, one connection after another, each with a sink from
/// `sink`, until the returned flag is set; returns the address, the flag and the thread.
fn serve_in_background<S: RecordSink + 'static>(
    sink: impl Fn() -> S + Send + 'static,
) -> (String, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        while !d.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((tcp, _)) => {
                    tcp.set_nonblocking(false).unwrap();
                    let mut s = Session::server(tcp, &key()).unwrap();
                    let _ = serve_records(&mut s, &mut sink());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr, done, server)
}

/// `dir/transitions.log` holding `n` records (episode starts numbered 0..n), synced and
/// closed; returns its path.
fn synced_log(dir: &std::path::Path, n: u32) -> std::path::PathBuf {
    use controller::robot_loop::log::{LogWriter, Record};
    let log = dir.join("transitions.log");
    let mut w = LogWriter::open(&log).unwrap();
    for i in 0..n {
        w.append(&Record::EpisodeStart {
            episode: i,
            seed: u64::from(i),
        })
        .unwrap();
    }
    w.sync().unwrap();
    log
}

/// The streamer sends only what the logger has synced: a record a trainer acknowledged
/// and a power cut then took from the robot's log would have the next run's records
/// taken for ones the trainer holds (they were never sent, with no error).
#[test]
fn only_records_on_disk_are_streamed() {
    use controller::robot_loop::log::{LogWriter, Record};
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("transitions.log");
    let mut w = LogWriter::open(&log).unwrap();
    let record = |i: u64| Record::EpisodeStart {
        episode: i as u32,
        seed: i,
    };
    for i in 0..10 {
        w.append(&record(i)).unwrap();
    }
    w.sync().unwrap();
    for i in 10..15 {
        w.append(&record(i)).unwrap();
    }
    // The writer is still open, its last 5 records not synced.
    let (received, summary) =
        stream_to_holder(&log, Some(w.synced_len()), 0, Duration::from_secs(20));
    assert_eq!(received.len(), 10, "{summary:?}");
    assert_eq!(summary.acknowledged, 10, "{summary:?}");
    // Once synced, the rest goes too.
    w.sync().unwrap();
    let (received, summary) =
        stream_to_holder(&log, Some(w.synced_len()), 10, Duration::from_secs(20));
    assert_eq!(received.len(), 5, "{summary:?}");
    assert_eq!(summary.acknowledged, 15, "{summary:?}");
}

/// A peer that answers the handshake one byte a second (each read is in time) holds the
/// streamer no longer than its drain plus the cut's grace: it held the run's end, and
/// its `report.json`, for over a minute (64 bytes of challenge).
#[test]
fn a_trainer_that_trickles_bytes_does_not_hold_the_runs_end() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_log(tmp.path(), 3);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        // The bytes it got out before the streamer cut the connection.
        for sent in 0..120 {
            if tcp.write_all(&[0]).is_err() {
                return sent;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        120
    });
    let (streamer, _ready) = controller::robot_loop::streamer::Streamer::spawn(
        uplink(addr, Duration::from_secs(1)),
        &log,
        None,
        quiet(),
    )
    .unwrap();
    let summary = streamer.finish();
    assert_eq!(summary.acknowledged, 0);
    // Drain 1 s, cut 5 s later: the connection is gone after about 6 of the 64 bytes of
    // the challenge (a write or two after the cut still succeed), long before the last.
    let sent = server.join().unwrap();
    assert!(sent < 40, "{sent} bytes trickled before the cut");
}

/// A trainer that holds more records of a log than the log has (the robot's log lost
/// them after they were sent): an error naming both counts (the records written since
/// were taken for held ones with no word), and nothing is sent.
#[test]
fn a_trainer_holding_more_than_the_log_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_log(tmp.path(), 12);
    let (received, summary) = stream_to_holder(&log, None, 15, Duration::from_secs(20));
    assert!(received.is_empty());
    assert!(summary.errors >= 1, "{summary:?}");
    let e = summary.last_error.unwrap_or_default();
    assert!(
        e.contains("holds 15 records") && e.contains("has only 12"),
        "{e}"
    );
}

/// The stream id names the log by its canonical path: `--out dir/.` and `--out dir`
/// are one log, so a robot run with either sends nothing the trainer holds (it sent
/// the whole log again under a second id).
#[test]
fn one_log_is_one_stream_however_its_path_is_spelled() {
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_log(tmp.path(), 1);
    let (_, plain) = stream_to_holder(&log, None, 0, Duration::from_secs(20));
    let other = tmp.path().join(".").join("transitions.log");
    let (_, dotted) = stream_to_holder(&other, None, 0, Duration::from_secs(20));
    assert!(plain.stream.is_some());
    assert_eq!(plain.stream, dotted.stream);
}

/// A trainer that holds a log under the name an older controller gave it (its path as
/// given, `dir/./transitions.log` here, not the canonical one) is asked under that name
/// too: it goes on from what it holds instead of taking the whole log again.
#[test]
fn a_log_held_under_its_older_name_is_not_sent_again() {
    use controller::robot_loop::log::LogTail;
    use controller::robot_loop::streamer::Streamer;
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_log(tmp.path(), 8);
    let records = LogTail::new(&log).poll().unwrap();
    let spelled = tmp.path().join(".").join("transitions.log");
    let crc = firmware_config::protocol::crc32(&records[0]);
    let old_name = format!("{}#{crc:08x}", spelled.display());
    let store: Store = Arc::default();
    store
        .lock()
        .unwrap()
        .insert(old_name.clone(), records.clone());
    let st = store.clone();
    let (addr, done, server) = serve_in_background(move || Sink {
        store: st.clone(),
        cut: None,
        lose: None,
    });
    let (streamer, _ready) = Streamer::spawn(
        uplink(addr, Duration::from_secs(20)),
        &spelled,
        None,
        quiet(),
    )
    .unwrap();
    let summary = streamer.finish();
    done.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert_eq!(
        summary.stream.as_deref(),
        Some(old_name.as_str()),
        "{summary:?}"
    );
    assert_eq!(summary.acknowledged, 8, "{summary:?}");
    let held = store.lock().unwrap();
    assert_eq!(held[&old_name], records, "nothing sent twice");
    assert!(
        held.iter()
            .all(|(name, v)| name == &old_name || v.is_empty()),
        "nothing sent under the canonical name"
    );
}

/// A robot streaming without bundle swaps (`--no-swap`) whose log has nothing new keeps
/// its session: the trainer drops a session silent for its session timeout (30 s;
/// three polls here) with an error, and the idle streamer sent nothing, so it met the
/// closed session at its next send and reconnected, twice a minute.
#[test]
fn an_idle_session_without_swaps_is_kept_alive() {
    use controller::robot_loop::streamer::{POLL_EVERY, Streamer};
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_log(tmp.path(), 2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let done = Arc::new(AtomicBool::new(false));
    // How each session ended, as the server saw it.
    let ended: Arc<Mutex<Vec<String>>> = Arc::default();
    let (d, e) = (done.clone(), ended.clone());
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        while !d.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((tcp, _)) => {
                    tcp.set_nonblocking(false).unwrap();
                    // The trainer's session timeout, scaled down.
                    tcp.set_read_timeout(Some(POLL_EVERY * 3)).unwrap();
                    let mut s = Session::server(tcp, &key()).unwrap();
                    let mut sink = Holder {
                        held: 0,
                        received: received.clone(),
                    };
                    let end = serve_records(&mut s, &mut sink);
                    e.lock().unwrap().push(format!("{end:?}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let (streamer, _ready) =
        Streamer::spawn(uplink(addr, Duration::from_secs(1)), &log, None, quiet()).unwrap();
    // Idle for over two session timeouts after the log is sent.
    std::thread::sleep(POLL_EVERY * 8);
    let summary = streamer.finish();
    done.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert_eq!(summary.acknowledged, 2, "{summary:?}");
    assert_eq!(summary.connections, 1, "{summary:?}");
    assert_eq!(summary.errors, 0, "{summary:?}");
    // One session, ended when the streamer hung up, not at the server's timeout.
    let ended = ended.lock().unwrap();
    assert!(ended.len() == 1 && ended[0].starts_with("Ok"), "{ended:?}");
}

/// `report.json` is written as the uplink's drain begins (marked `draining`) and again
/// when it ends, replacing it (not kept as an earlier run's): a process killed in the
/// drain (a service manager's SIGKILL after its stop timeout) lost the run's report.
/// The log stays locked meanwhile, so no other run starts into the same `--out`.
#[test]
fn the_report_is_written_before_the_uplinks_drain() {
    let tmp = tempfile::tempdir().unwrap();
    // No trainer listens: the drain runs its whole time.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = tmp.path().join("run");
    let (firmware, mut cfg) = push_run(&out, 1);
    cfg.uplink = Some(uplink(addr, Duration::from_secs(3)));
    // Reads report.json whenever it changes, until the run has returned.
    let ended = Arc::new(AtomicBool::new(false));
    let (e, path) = (ended.clone(), out.join("report.json"));
    let watcher = std::thread::spawn(move || {
        let mut seen: Vec<serde_json::Value> = vec![];
        // Whether another run could open the log while the report said `draining`.
        let mut opened_in_drain = None;
        loop {
            // Once more after the run returned: its last write.
            let last = e.load(Ordering::SeqCst);
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && seen.last() != Some(&v)
            {
                if v["uplink"]["draining"] == true && opened_in_drain.is_none() {
                    let log = path.with_file_name("transitions.log");
                    opened_in_drain = Some(LogWriter::open(&log).is_ok());
                }
                seen.push(v);
            }
            if last {
                return (seen, opened_in_drain);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let report = robot_loop::run(cfg, Brain::Hold, "push", "drain").unwrap();
    ended.store(true, Ordering::SeqCst);
    drop(firmware);
    let (seen, opened_in_drain) = watcher.join().unwrap();
    // The log stays locked through the drain (another run into this `--out` had its
    // report replaced by this one's at the drain's end).
    assert_eq!(opened_in_drain, Some(false));
    assert_eq!(report.episodes.len(), 1);
    let draining: Vec<bool> = seen
        .iter()
        .map(|v| v["uplink"]["draining"].as_bool().unwrap())
        .collect();
    assert_eq!(draining, [true, false], "{seen:?}");
    assert_eq!(seen[0]["episodes"].as_array().unwrap().len(), 1);
    assert!(
        !out.join("reports").exists(),
        "the drain's report was kept as another run's"
    );
}
