//! Checking recordings with the rerun viewer's own command-line tool, from the
//! `rerun-sdk` wheel of the same version (`pip install rerun-sdk==0.36.3`), run as
//! `python3 -m rerun_cli` (`RERUN_PYTHON` names another Python). The tests use it, and
//! so does `tools viz verify`.

use crate::RERUN_VERSION;
use anyhow::{Context, Result, bail, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python with the `rerun-sdk` wheel: `RERUN_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("RERUN_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the rerun CLI with `args`; its stdout and stderr together.
pub fn rerun_cli(args: &[&str]) -> Result<String> {
    let python = python();
    let out = Command::new(&python)
        .args(["-m", "rerun_cli"])
        .args(args)
        .output()
        .with_context(|| format!("running {python} -m rerun_cli"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        // Once `--version` has answered, the CLI is there: its own text says what failed.
        let hint = if args == ["--version"] {
            format!(
                " (is rerun-sdk=={RERUN_VERSION} installed? pip install rerun-sdk=={RERUN_VERSION})"
            )
        } else {
            String::new()
        };
        bail!("rerun {args:?} failed{hint}:\n{text}");
    }
    Ok(text)
}

/// Runs the rerun CLI with `args`, handing each line of its stdout to `each` as it comes:
/// `rrd print` writes a line per chunk, hundreds of MB for an hour of a controller's
/// recording, which [`rerun_cli`] held whole (twice). Its stderr is kept (the last 64 KiB)
/// for the error when it fails.
pub fn rerun_cli_lines(args: &[&str], mut each: impl FnMut(&str) -> Result<()>) -> Result<()> {
    use std::io::{BufRead, Read};
    const STDERR_KEPT: usize = 64 << 10;
    let python = python();
    let mut child = Command::new(&python)
        .args(["-m", "rerun_cli"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {python} -m rerun_cli"))?;
    let mut stderr = child.stderr.take().expect("piped");
    // Read beside stdout: a child blocked on a full stderr pipe would never end stdout.
    let errors = std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            let over = kept.len().saturating_sub(STDERR_KEPT);
            kept.drain(..over);
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut handed = Ok(());
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdout.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                handed = each(text.trim_end_matches(['\n', '\r']));
            }
            Err(e) => handed = Err(e).context("reading the rerun CLI's output"),
        }
        if handed.is_err() {
            break;
        }
    }
    // Whatever ended the reading, the child is waited for and its stderr kept: a failed
    // CLI's own words come before a line it left half written.
    drop(stdout);
    let killed = handed.is_err();
    if killed {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for the rerun CLI")?;
    let errors = errors.join().unwrap_or_default();
    // It exited with an error of its own (not our kill): its words first.
    let failed = !status.success() && (status.code().is_some() || !killed);
    if failed {
        handed.with_context(|| format!("rerun {args:?} failed:\n{errors}"))?;
        bail!("rerun {args:?} failed:\n{errors}");
    }
    handed
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Rows per entity path, as `rerun rrd print` lists them.
    pub rows: BTreeMap<String, usize>,
    /// Whether the file ends with its footer: the controller writes its recordings
    /// without one (`Recorder::open_unbounded`); a truncated file has none either.
    pub footer: bool,
}

/// `rerun rrd verify` on `rrd` (after checking the CLI's version), then the number of
/// rows per entity path that `rerun rrd print` lists. A file without a footer is
/// verified without the footer check (`--check-footers false`), and says so.
pub fn verify(rrd: &Path) -> Result<Verified> {
    ensure!(rrd.is_file(), "{}: no such recording", rrd.display());
    let version = rerun_cli(&["--version"])?;
    ensure!(
        version.contains(&format!("rerun-cli {RERUN_VERSION}")),
        "the rerun CLI is not version {RERUN_VERSION}: {version}"
    );
    let path = rrd.to_str().context("the path is not UTF-8")?;
    let checked = rerun_cli(&["rrd", "verify", path]);
    let no_footer = match &checked {
        Ok(text) => !text.contains("verified without error") && text.contains("Missing RRD footer"),
        Err(e) => format!("{e:#}").contains("Missing RRD footer"),
    };
    let checked = if no_footer {
        rerun_cli(&["rrd", "verify", "--check-footers", "false", path])?
    } else {
        checked?
    };
    ensure!(
        checked.contains("verified without error"),
        "rerun rrd verify: {checked}"
    );
    let mut rows = BTreeMap::new();
    rerun_cli_lines(&["rrd", "print", path], |line| {
        if let Some((entity, n)) = chunk_line(line)? {
            *rows.entry(entity).or_default() += n;
        }
        Ok(())
    })?;
    Ok(Verified {
        rows,
        footer: !no_footer,
    })
}

/// [`verify`]'s rows per entity path.
pub fn verified_rows(rrd: &Path) -> Result<BTreeMap<String, usize>> {
    verify(rrd).map(|v| v.rows)
}

/// The entity and number of rows of a chunk's line of `rerun rrd print`,
/// "Chunk(chunk_…) with 5 rows (1.3 KiB) - /scene/robot - data columns: […]"; `None`
/// for other lines.
fn chunk_line(line: &str) -> Result<Option<(String, usize)>> {
    let Some(rest) = line.strip_prefix("Chunk(") else {
        return Ok(None);
    };
    let rows = rest
        .split(" with ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    let entity = rest.split(" - ").nth(1).map(|e| e.trim().to_string());
    match (entity, rows) {
        (Some(entity), Some(rows)) => Ok(Some((entity, rows))),
        _ => bail!("rerun rrd print: unexpected line {line:?}"),
    }
}

/// Per chunk of `rrd`: its entity, the timelines its rows are indexed by and its number
/// of rows, from `rerun rrd print -vv` (the chunk's line, then its column headers
/// `RowId ┆ log_time ┆ step ┆ … ┆ Scalars:scalars`: every column but the row id, the
/// log time and the data columns, `Archetype:component`).
pub fn chunk_timelines(rrd: &Path) -> Result<Vec<(String, BTreeSet<String>, usize)>> {
    let path = rrd.to_str().context("the path is not UTF-8")?;
    let mut out = Vec::new();
    let mut chunk: Option<(String, usize)> = None;
    for line in rerun_cli(&["rrd", "print", "-vv", path])?.lines() {
        if let Some(found) = chunk_line(line)? {
            chunk = Some(found);
            continue;
        }
        if !line.contains("RowId") {
            continue;
        }
        let Some((entity, rows)) = chunk.take() else {
            continue;
        };
        let timelines = line
            .split('┆')
            .map(|c| c.trim_matches(|ch: char| ch == '│' || ch.is_whitespace()))
            .filter(|c| !c.is_empty() && *c != "RowId" && *c != "log_time" && !c.contains(':'))
            .map(str::to_string)
            .collect();
        out.push((entity, timelines, rows));
    }
    Ok(out)
}

/// A headless rerun gRPC server, `rerun --port PORT --save FILE`: it accepts what SDKs
/// stream, as a viewer does (`--rerun-connect`), and appends it to `file`. It stands in
/// for a live viewer where there is no display. Killed on drop.
pub struct StreamServer {
    child: Child,
    /// The address SDKs connect to, `rerun+http://127.0.0.1:PORT/proxy`.
    pub url: String,
    file: PathBuf,
}

impl StreamServer {
    /// Starts the server on a free local port and waits (up to 30 s) until it accepts
    /// connections.
    pub fn start(file: &Path) -> Result<StreamServer> {
        let python = python();
        // The wheel's `rerun` executable itself, not the `python -m rerun_cli` wrapper:
        // killing the wrapper would leave the server running.
        let exe = Command::new(&python)
            .args([
                "-c",
                "import os, rerun_cli; print(os.path.join(os.path.dirname(rerun_cli.__file__), 'rerun'))",
            ])
            .output()
            .with_context(|| format!("running {python}"))?;
        ensure!(
            exe.status.success(),
            "finding the rerun executable (pip install rerun-sdk=={RERUN_VERSION}): {}",
            String::from_utf8_lossy(&exe.stderr)
        );
        let exe = String::from_utf8(exe.stdout)?.trim().to_string();
        // The free port is found by binding and releasing it, so another process may
        // take it before the server binds it: the server then exits, and another port
        // is tried.
        let mut exits = vec![];
        for _ in 0..3 {
            match StreamServer::try_start(&exe, file)? {
                Ok(server) => return Ok(server),
                Err(exited) => exits.push(exited),
            }
        }
        bail!("the rerun server exited before listening, three times: {exits:?}")
    }

    /// One try of [`StreamServer::start`]: the server, or how it exited before it
    /// listened.
    fn try_start(exe: &str, file: &Path) -> Result<std::result::Result<StreamServer, String>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(exe)
            .arg("--port")
            .arg(port.to_string())
            .arg("--save")
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {exe}"))?;
        let mut server = StreamServer {
            child,
            url: format!("rerun+http://127.0.0.1:{port}/proxy"),
            file: file.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                return Ok(Err(format!("exited with {status} on port {port}")));
            }
            ensure!(
                Instant::now() < deadline,
                "the rerun server did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Ok(server))
    }

    /// Rows per entity path of what the server has saved so far, checked by the CLI as
    /// in [`verified_rows`]. A saved stream has no footer, which `rrd verify` requires,
    /// so it is first re-encoded into `scratch` with `rerun rrd merge`.
    pub fn rows(&self, scratch: &Path) -> Result<BTreeMap<String, usize>> {
        let src = self.file.to_str().context("the path is not UTF-8")?;
        let dst = scratch.to_str().context("the path is not UTF-8")?;
        let _ = std::fs::remove_file(scratch);
        rerun_cli(&["rrd", "merge", src, "-o", dst])?;
        verified_rows(scratch)
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
