//! `controller run --rerun FILE` and `--rerun-connect ADDR` (feature `viz`; scripts/test
//! builds the workspace's tests with it, scripts/test-features): the real binary against the
//! simulated firmware over a pty, its recording checked with the rerun CLI of the
//! matching `rerun-sdk` wheel (`viz::cli`): one row per tick for the per-tick
//! entities, one per policy step for the policy's, and the task's scene.

use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
use serde_json::Value;
use sim::TaskId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_controller");

/// Two push episodes at a 10x clock with a synthetic bundle, recording for rerun with
/// `rerun_args`; the run's report.
fn run_recorded(dir: &Path, rerun_args: &[OsString]) -> Value {
    let bundle = dir.join("bundle");
    shared_model::synthetic::SyntheticSpec::cpu()
        .write(&bundle, 3, None)
        .unwrap();
    let mut robot = firmware_config::RobotConfig::example("push").unwrap();
    robot.safety.stale_sensor_ms = 3000;
    robot.command_timeout_ms = 5000;
    let robot_file = dir.join("robot.toml");
    std::fs::write(&robot_file, toml::to_string(&robot).unwrap()).unwrap();
    let mut fw = FirmwareOptions::new(TaskId::Push, robot.clone());
    fw.pacing = Pacing::Lockstep;
    let firmware = FirmwareThread::spawn(fw, 10.0).unwrap();
    let out = dir.join("run");
    let status = Command::new(BIN)
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--allow-unsigned")
        .arg("--robot")
        .arg(&robot_file)
        .arg("--port")
        .arg(firmware.path())
        .arg("--out")
        .arg(&out)
        .args(rerun_args)
        .args([
            "--backend",
            "native",
            "--time-scale",
            "10",
            "--episodes",
            "2",
            // This checks the recording, not the cadence: two controllers and a rerun
            // server on a loaded 2-core machine at 10x can miss 10 deadlines in a row
            // (a deadline fault; hil.rs tests that one).
            "--max-overruns",
            "0",
        ])
        .status()
        .unwrap();
    drop(firmware);
    assert!(status.success());
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// Ticks the logger recorded (`logger.rerun_ticks`); checked against the report's ticks
/// and dropped frames.
fn recorded_ticks(report: &Value) -> usize {
    let ticks = report["ticks"].as_u64().unwrap() as usize;
    let drops = report["viz_drops"].as_u64().unwrap() as usize;
    let recorded = report["logger"]["rerun_ticks"].as_u64().unwrap() as usize;
    assert_eq!(recorded + drops, ticks, "{report}");
    recorded
}

/// The recording holds one row per recorded tick for the per-tick entities and one per
/// policy step for the policy's and the scene's.
fn check_rows(report: &Value, rows: &BTreeMap<String, usize>) {
    let recorded = recorded_ticks(report);
    let drops = report["viz_drops"].as_u64().unwrap() as usize;
    let acted: usize = report["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["commands"].as_u64().unwrap() as usize)
        .sum();
    assert!(acted > 100, "{report}");
    assert_eq!(rows.get("/timing/read_us"), Some(&recorded), "{rows:?}");
    assert_eq!(rows.get("/timing/jitter_us"), Some(&recorded), "{rows:?}");
    assert_eq!(rows.get("/timing/tick_us"), Some(&recorded), "{rows:?}");
    assert_eq!(rows.get("/link/crc_errors"), Some(&recorded), "{rows:?}");
    // Policy steps: every command the report counts, unless its tick's frame was dropped.
    let steps = rows.get("/policy/q/selected").copied().unwrap_or(0);
    assert!(
        steps <= acted && steps + drops >= acted,
        "{steps} vs {acted}: {rows:?}"
    );
    for e in [
        "/observation.state/pusher_x",
        "/action/vx_command",
        "/policy/raw_action/vy_command",
        "/policy/q/selected",
        "/policy/q/best_base",
        "/policy/q/best_edit",
        "/policy/q/spread",
        "/timing/infer_us",
        "/timing/send_us",
        "/safety/clamped",
        "/scene/robot/discs",
        "/scene/object/discs",
        "/scene/goal/discs",
    ] {
        assert_eq!(rows.get(e), Some(&steps), "{e}: {rows:?}");
    }
    // The choice, and a clear once the policy stops driving: at each episode's end
    // (unless that tick's frame was dropped).
    let episodes = report["episodes"].as_array().unwrap().len();
    for e in ["/policy/candidates", "/policy/selected"] {
        let n = rows.get(e).copied().unwrap_or(0);
        let lowest = if drops == 0 { steps + episodes } else { steps };
        assert!(
            (lowest..=steps + episodes).contains(&n),
            "{e}: {n} rows for {steps} steps of {episodes} episodes: {rows:?}"
        );
    }
    assert!(
        rows.get("/safety/state").is_some_and(|&n| n >= 4),
        "{rows:?}"
    );
}

#[test]
fn a_run_records_every_tick_for_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let rrd = tmp.path().join("run.rrd");
    let report = run_recorded(tmp.path(), &["--rerun".into(), rrd.clone().into()]);
    check_rows(&report, &viz::cli::verified_rows(&rrd).unwrap());
}

/// `--rerun-connect` against the rerun executable's own gRPC server (headless, saving
/// what arrives), the server a viewer runs: every tick arrives.
#[test]
fn a_run_streams_every_tick_to_a_live_rerun_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = viz::cli::StreamServer::start(&tmp.path().join("stream.rrd")).unwrap();
    let report = run_recorded(
        tmp.path(),
        &["--rerun-connect".into(), server.url.clone().into()],
    );
    let recorded = recorded_ticks(&report);
    // The controller flushed before exiting; the server may still be writing.
    let scratch = tmp.path().join("merged.rrd");
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = server.rows(&scratch).unwrap();
        if rows.get("/timing/read_us") == Some(&recorded) || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    check_rows(&report, &rows);
}

/// `controller run` of a synthetic bundle (written into `dir`) on the push robot file,
/// at a port that does not exist, recording as `rerun_args` say: it fails before its
/// control thread starts.
fn run_without_its_port(dir: &Path, rerun_args: &[OsString]) -> Command {
    let bundle = dir.join("bundle");
    shared_model::synthetic::SyntheticSpec::cpu()
        .write(&bundle, 3, None)
        .unwrap();
    let mut c = Command::new(BIN);
    c.arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--allow-unsigned")
        .arg("--robot")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../firmware-config/robots/push.toml"
        ))
        .args(["--port", "/dev/no-such-port"])
        .arg("--out")
        .arg(dir.join("run"))
        .args(rerun_args);
    c
}

/// A run that fails before its control thread starts (no such port) leaves no recording
/// behind: the same command given again fails for the same reason, not for the empty
/// file ("exists already, and a recording is never written over"). A file that was
/// there before is left alone.
#[test]
fn a_run_that_never_started_leaves_no_recording() {
    let tmp = tempfile::tempdir().unwrap();
    let rrd = tmp.path().join("run.rrd");
    let attempt = || {
        run_without_its_port(tmp.path(), &["--rerun".into(), rrd.clone().into()])
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = attempt();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("/dev/no-such-port"), "{err}");
        assert!(!rrd.exists(), "the empty recording was left behind");
    }
    std::fs::write(&rrd, b"someone's recording").unwrap();
    let err = String::from_utf8_lossy(&attempt().stderr).into_owned();
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read(&rrd).unwrap(), b"someone's recording");
}

/// A run that fails before its control thread starts, streaming to a viewer that is
/// connected but never answers (the kernel completes the connection into the listen
/// backlog), reports its error within the viewer's limit: the SDK's own close of the
/// stream waited for that viewer for ever.
#[test]
fn a_failed_run_does_not_wait_for_a_silent_viewer() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = run_without_its_port(tmp.path(), &["--rerun-connect".into(), addr.into()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Well above the viewer's 10 s limit, far below for ever.
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(90) {
            child.kill().unwrap();
            panic!("the failed run waited for the silent viewer");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/no-such-port"), "{err}");
    drop(listener);
}
