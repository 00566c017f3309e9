//! Rerun recordings of what the stack does: controller rollouts tick by tick, recorded
//! or generated datasets, and training runs' metrics.
//!
//! Built on the `rerun` crate **0.36.3** with only its SDK (saving `.rrd` files and
//! streaming to a viewer). Open the files with the same version of the viewer:
//! `pip install rerun-sdk==0.36.3`, then `rerun out.rrd`.
//!
//! # Entities and timelines
//!
//! Entity paths reuse the dataset's keys where one exists, with the dimension's name as
//! the last part (names are sanitized to `[A-Za-z0-9_.-]`):
//!
//! ```text
//!  observation.state/<name>   Scalars   observation per dimension (per joint)
//!  action/<name>              Scalars   the action (controller: as sent, after safety)
//!  next.reward, next.success  Scalars   datasets: the step's reward and success (0/1)
//!  intervention               Scalars   datasets: the operator's mark (0/1)
//!  teleop                     Scalars   the action came from the teleop device (0/1)
//!  scene/{walls,goal,object,obstacle,robot}/{discs,links,boxes}
//!                             2-D shapes of the simulated task, from the observation
//!                                        (y negated: rerun's 2-D views draw y downwards,
//!                                        the tasks' y points up)
//!  policy/raw_action/<name>   Scalars   controller: the policy's (or teleop device's)
//!                                        action before safety
//!  policy/candidates          Points2D  controller: the N base (blue) and n_edit edited
//!                                        (orange) candidates in the first two action
//!                                        dimensions (second one negated, as the scene's
//!                                        y), labelled with their scores
//!  policy/selected            Points2D  the chosen candidate (green); both are cleared
//!                                        on a tick that acted without them (teleop)
//!                                        or did not act (an episode's end, a safe stop)
//!  policy/q/{selected,best_base,best_edit,spread}
//!                             Scalars   score of the chosen candidate (min over the sampled
//!                                        critics), best base and edited scores, and the
//!                                        critics' spread (standard deviation over the
//!                                        sampled critics, mean over candidates)
//!  timing/{read,infer,send}_us Scalars  controller: per-stage time of the tick
//!  timing/{jitter,tick}_us    Scalars   controller: how late the loop woke, and the
//!                                        tick's whole work (the two together over one
//!                                        period: an overrun)
//!  link/{crc_errors,resyncs,seq_lost,queue_drops,read_errors}
//!                             Scalars   controller: the serial link's error counters
//!  safety/{clamped,rate_limited} Scalars controller: the envelope changed the action
//!  safety/state               TextLog   controller: the loop's phase, when it changes
//!  metrics/<file>/<column>    Scalars   training runs: every column of every CSV
//! ```
//!
//! Timelines: `tick` (controller ticks), `time` (seconds since the run or episode
//! started), `episode` (episode index; ticks between episodes have none), `index` and
//! `frame_index` (datasets: the global frame index, which orders every episode one after
//! another, and the frame within its episode; datasets have no `tick`), and a run CSV's
//! first column (`step` or `update`).

use anyhow::{Context, Result, bail};
use rerun::{Color, RecordingStream};
use sim::{Scene, Shape, ShapeKind, TaskId};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod cli;
pub mod dataset_rrd;
pub mod run_rrd;
pub mod tick;

pub use dataset_rrd::dataset_to_rrd;
pub use run_rrd::run_to_rrd;

/// The rerun release this crate is built on; the viewer must match.
pub const RERUN_VERSION: &str = "0.36.3";

/// Where a recording goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An `.rrd` file.
    File(PathBuf),
    /// A running viewer (`rerun` listens on `rerun+http://127.0.0.1:9876/proxy` by
    /// default); a bare `HOST:PORT` is expanded to that form.
    Connect(String),
}

impl Target {
    /// The URL the SDK gets for `addr`: a bare `HOST` or `HOST:PORT` becomes
    /// `rerun+http://HOST:PORT/proxy`, with the viewer's port (9876) written out where
    /// `addr` names none (the SDK would take port 80 for a host that is not this
    /// machine's).
    fn url(addr: &str) -> String {
        if addr.contains("://") {
            addr.to_string()
        } else if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            // A bare IPv6 address (`::1`): its colons are not a port's.
            format!("rerun+http://[{addr}]:{VIEWER_DEFAULT_PORT}/proxy")
        } else if has_port(addr) {
            format!("rerun+http://{addr}/proxy")
        } else {
            format!("rerun+http://{addr}:{VIEWER_DEFAULT_PORT}/proxy")
        }
    }

    /// The `HOST:PORT` the SDK connects to for a viewer's URL
    /// (`rerun+http://HOST:PORT/proxy`). Where the URL names no port, the SDK (re_uri
    /// 0.36) takes the viewer's 9876 for this machine (`localhost`, a loopback or
    /// unspecified address), and otherwise the scheme's: 443 for `rerun://` and
    /// `rerun+https://`, 80 for `rerun+http://`. (The probe took 9876 for every host, so
    /// it could pass at a port the recording never went to.)
    fn host_port(url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("rerun+http", url));
        let host = rest.split('/').next().unwrap_or(rest);
        if has_port(host) {
            return host.to_string();
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let this_machine = bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        let port = if this_machine {
            VIEWER_DEFAULT_PORT
        } else if scheme == "rerun+http" {
            80
        } else {
            443
        };
        format!("{host}:{port}")
    }
}

/// Whether `host` (`HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`) names a port.
fn has_port(host: &str) -> bool {
    // `[::1]` is a host without a port; `[::1]:9876` and `h:9876` have one.
    host.contains(':') && !host.ends_with(']')
}

/// The port a rerun viewer listens on when its URL names none.
const VIEWER_DEFAULT_PORT: u16 = 9876;

/// How long [`Recorder::open`] waits for a viewer to take a connection.
const VIEWER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a viewer listens at `url`: the SDK's client only retries in the background,
/// so a viewer that was not started went unnoticed for a whole run (the frames queued up
/// to the SDK's buffer, then were dropped, and the run's end blamed a viewer that
/// stopped reading).
fn probe_viewer(addr: &str, url: &str) -> Result<()> {
    use std::net::{TcpStream, ToSocketAddrs};
    let host_port = Target::host_port(url);
    let addrs: Vec<_> = host_port
        .as_str()
        .to_socket_addrs()
        .with_context(|| format!("rerun viewer address {addr} ({host_port})"))?
        .collect();
    let mut failed = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, VIEWER_CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => failed = Some(e),
        }
    }
    bail!(
        "no rerun viewer listens at {addr} ({}): start one (`rerun`, version {RERUN_VERSION}), \
         or record to a file instead",
        failed.map_or("it resolves to nothing".into(), |e| e.to_string())
    )
}

/// An open recording. Logging calls queue data for the SDK's own batching thread and
/// return without waiting for I/O; [`Recorder::finish`] flushes.
pub struct Recorder {
    pub rec: RecordingStream,
    target: Target,
    /// Where a file recording is written until [`Self::finish`] renames it to the
    /// target's name (`None`: written under that name as it goes).
    staging: Option<PathBuf>,
}

/// Claims the file a recording of `path` is written to until it is whole: beside it, so
/// that an interrupted conversion leaves no truncated file under the requested name
/// (refused as existing by the next run), as `NAME.partial-ID` ([`dataset::unique_id`]),
/// created here (`create_new`) so that no two recorders share one. The process id alone
/// was shared by two containers on one volume (both pid 1) and by two recorders in one
/// process: each emptied the other's file, and the first to finish published the
/// other's writes.
fn claim_staging_path(path: &Path) -> Result<PathBuf> {
    for _ in 0..64 {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".partial-{}", dataset::unique_id()));
        let staged = path.with_file_name(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
        {
            Ok(_) => return Ok(staged),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", staged.display()));
            }
        }
    }
    bail!(
        "{}: 64 staging names beside it are taken (stale `.partial-*` files?)",
        path.display()
    )
}

impl Recorder {
    /// Opens a recording named `app` (the viewer groups recordings by it). A file is
    /// written beside its name ([`claim_staging_path`]) and appears under it only once
    /// [`Self::finish`] has written it whole.
    pub fn open(app: &'static str, target: &Target) -> Result<Recorder> {
        Self::open_with(app, target, true)
    }

    /// [`Self::open`] for a recording that may go on for hours (a robot run's): a file
    /// is written without the footer's chunk manifest, which the SDK keeps in memory
    /// until the recording ends (about 3 KB per chunk: gigabytes an hour at 500 Hz). The
    /// file is a valid recording without it; `rerun rrd optimize` adds one. It is
    /// written under its own name as it goes, so that a run cut short (a crash, power
    /// lost on the robot) keeps what it recorded where the user looks for it.
    pub fn open_unbounded(app: &'static str, target: &Target) -> Result<Recorder> {
        Self::open_with(app, target, false)
    }

    fn open_with(app: &'static str, target: &Target, footer: bool) -> Result<Recorder> {
        // Asked for by name: a `RERUN=off` exported for Python scripts does not make it a
        // silent no-op (the SDK reads that variable unless told).
        let builder = rerun::RecordingStreamBuilder::new(app).enabled(true);
        let mut staging = None;
        let rec = match target {
            Target::File(path) => {
                // The SDK overwrites whatever is there: a typo (`--out metrics.csv`, a
                // dataset's parquet file) must not cost the data it names.
                anyhow::ensure!(
                    path.extension().is_some_and(|e| e == "rrd"),
                    "{}: a rerun recording's file name must end in .rrd (nothing else is \
                     overwritten with one)",
                    path.display()
                );
                // Nor is a recording: the SDK empties the file as it opens it, and a
                // robot run's recording cannot be made again.
                anyhow::ensure!(
                    !path.exists(),
                    "{}: exists already, and a recording is never written over (remove it, \
                     or choose another name)",
                    path.display()
                );
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                if footer {
                    let staged = claim_staging_path(path)?;
                    let creating = || format!("creating the rerun file {}", staged.display());
                    let rec = match builder.save(&staged) {
                        Ok(rec) => rec,
                        Err(e) => {
                            let _ = std::fs::remove_file(&staged);
                            return Err(e).with_context(creating);
                        }
                    };
                    staging = Some(staged);
                    rec
                } else {
                    let creating = || format!("creating the rerun file {}", path.display());
                    let options = rerun::sink::FileSinkOptions {
                        write_footer: false,
                    };
                    let sink = rerun::sink::FileSink::with_options(path, options)
                        .with_context(creating)?;
                    builder.set_sinks((sink,)).with_context(creating)?
                }
            }
            Target::Connect(addr) => {
                let url = Target::url(addr);
                probe_viewer(addr, &url)?;
                builder
                    .connect_grpc_opts(url)
                    .with_context(|| format!("connecting to a rerun viewer at {addr}"))?
            }
        };
        Ok(Recorder {
            rec,
            target: target.clone(),
            staging,
        })
    }

    /// Runs `log` on the recording and [`Self::finish`]es it. When either fails, a file
    /// recording is removed rather than left partial (this recorder made it:
    /// [`Self::open`] never writes over a file), so the same command can be run again;
    /// a viewer is given up on within [`VIEWER_FLUSH_TIMEOUT`] as `finish` does (the
    /// SDK's own close waits for it without a limit). A process killed meanwhile leaves
    /// only the staged file ([`claim_staging_path`]), never one under the requested name.
    pub fn record<T>(self, log: impl FnOnce(&RecordingStream) -> Result<T>) -> Result<T> {
        let logged = log(&self.rec);
        // A staged file is removed by the finish itself when it is not put in place;
        // one written under its name as it went is removed here.
        let unstaged = match (&self.staging, &self.target) {
            (None, Target::File(path)) => Some(path.clone()),
            _ => None,
        };
        let outcome = match logged {
            Err(e) => {
                let _ = self.finish_within_as(VIEWER_FLUSH_TIMEOUT, false);
                Err(e)
            }
            Ok(v) => self.finish().map(|()| v),
        };
        if outcome.is_err()
            && let Some(path) = unstaged
        {
            let _ = std::fs::remove_file(path);
        }
        outcome
    }

    /// Flushes everything to the file, or to the viewer within [`VIEWER_FLUSH_TIMEOUT`].
    pub fn finish(self) -> Result<()> {
        self.finish_within(VIEWER_FLUSH_TIMEOUT)
    }

    /// [`Self::finish`], waiting at most `timeout` for a viewer; a file is always
    /// written whole. The SDK's flush returns once the data is queued for the viewer,
    /// and closing the stream then waits for the viewer to take it without a limit, so
    /// the stream is closed on a thread of its own: a viewer that has not taken
    /// everything within `timeout` is given up on, and that thread is left to end
    /// with the process.
    pub fn finish_within(self, timeout: Duration) -> Result<()> {
        self.finish_within_as(timeout, true)
    }

    /// [`Self::finish_within`]; a staged file is renamed to the target's name when
    /// `publish` and everything was written, and removed otherwise.
    fn finish_within_as(self, timeout: Duration, publish: bool) -> Result<()> {
        let Recorder {
            rec,
            target,
            staging,
        } = self;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("rerun-close".into())
            .spawn(move || {
                let flushed = rec.flush_blocking();
                drop(rec);
                let _ = tx.send(flushed);
            })
            .context("starting the thread that closes the rerun recording")?;
        let closed = match target {
            Target::File(_) => rx.recv().ok(),
            Target::Connect(_) => rx.recv_timeout(timeout).ok(),
        };
        match closed {
            Some(flushed) => {
                let written =
                    flushed.with_context(|| format!("writing the rerun recording to {target:?}"));
                match (staging, &target) {
                    (Some(staged), Target::File(path)) => {
                        if written.is_err() || !publish {
                            let _ = std::fs::remove_file(&staged);
                            return written.and_then(|()| {
                                Err(anyhow::anyhow!("the recording was abandoned"))
                            });
                        }
                        // A whole recording that could not take its name is kept.
                        publish_staged(&staged, path).with_context(|| {
                            format!("the whole recording is kept as {}", staged.display())
                        })
                    }
                    _ => written,
                }
            }
            None => bail!(
                "the rerun viewer at {target:?} did not take the recording within {:.1} s: \
                 gave up on it, and what it had not received is not recorded",
                timeout.as_secs_f64()
            ),
        }
    }
}

/// Moves a whole recording from `staged` to `path`, synced first so that the name never
/// holds less than the whole file; never over a file that appeared there meanwhile.
fn publish_staged(staged: &Path, path: &Path) -> Result<()> {
    std::fs::File::open(staged)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing the rerun recording {}", staged.display()))?;
    // A hard link fails where the name is taken, which a check and a rename would race;
    // a filesystem without hard links gets the check and the rename.
    match std::fs::hard_link(staged, path) {
        // Whole under its name now; the staged name is only a second link to it.
        Ok(()) => {
            let _ = std::fs::remove_file(staged);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists || path.exists() => bail!(
            "{}: appeared while the recording was written, and a recording is never \
             written over",
            path.display()
        ),
        Err(_) => std::fs::rename(staged, path)
            .with_context(|| format!("naming the rerun recording {}", path.display()))?,
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The new name durable too (best effort: not every filesystem syncs directories).
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// How long [`Recorder::finish`] waits for a viewer to take what is still queued: a
/// viewer that stays connected without reading (its machine asleep) must not hold up
/// the end of a run, its report and its exit, for ever.
pub const VIEWER_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// `name` as one entity-path part: characters outside `[A-Za-z0-9_.-]` become `_`.
pub fn path_part(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// Entity paths `prefix/<name>` for each name, one per name: names that become the same
/// path part (`q(1)` and `q[1]`, `a/b` and `a_b`) get `_2`, `_3`, … after the first, so
/// that two dimensions never share one series.
pub fn paths<S: AsRef<str>>(prefix: &str, names: &[S]) -> Vec<String> {
    let parts: Vec<String> = names.iter().map(|n| path_part(n.as_ref())).collect();
    let mut taken = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let mut unique = part.clone();
        let mut k = 2;
        // Not one a later name has as its own part either.
        while taken.contains(&unique) || (unique != *part && parts[i + 1..].contains(&unique)) {
            unique = format!("{part}_{k}");
            k += 1;
        }
        taken.insert(unique.clone());
        out.push(format!("{prefix}/{unique}"));
    }
    out
}

/// Logs one scalar per path.
pub fn log_scalars(rec: &RecordingStream, paths: &[String], values: &[f32]) -> Result<()> {
    for (p, v) in paths.iter().zip(values) {
        rec.log(p.as_str(), &rerun::Scalars::single(*v as f64))?;
    }
    Ok(())
}

/// The task a dataset or robot name refers to (`sim/push`, `push`, `sim-push`, …).
pub fn task_of(name: &str) -> Option<TaskId> {
    [TaskId::ArmReach, TaskId::Push, TaskId::Maze]
        .into_iter()
        .find(|t| name == t.name() || name.ends_with(&format!("/{}", t.name())))
        .or_else(|| {
            [TaskId::ArmReach, TaskId::Push, TaskId::Maze]
                .into_iter()
                .find(|t| name.contains(t.name()))
        })
}

fn color(kind: ShapeKind) -> Color {
    match kind {
        ShapeKind::Robot => Color::from_rgb(70, 110, 220),
        ShapeKind::Object => Color::from_rgb(230, 140, 40),
        ShapeKind::Goal => Color::from_rgb(60, 180, 90),
        ShapeKind::Obstacle => Color::from_rgb(200, 60, 60),
        ShapeKind::Wall => Color::from_rgb(120, 120, 120),
    }
}

fn kind_name(kind: ShapeKind) -> &'static str {
    match kind {
        ShapeKind::Robot => "robot",
        ShapeKind::Object => "object",
        ShapeKind::Goal => "goal",
        ShapeKind::Obstacle => "obstacle",
        ShapeKind::Wall => "walls",
    }
}

/// The geometric view of a task's state, under `scene/`: one entity per kind of shape,
/// circles as points with their radius, links as strips with their width, walls and
/// tables as boxes; y negated, so that the task's up is up in rerun's 2-D view.
pub fn log_scene(rec: &RecordingStream, scene: &Scene) -> Result<()> {
    for kind in [
        ShapeKind::Wall,
        ShapeKind::Goal,
        ShapeKind::Obstacle,
        ShapeKind::Object,
        ShapeKind::Robot,
    ] {
        let shapes = scene.shapes.iter().filter(|(k, _)| *k == kind);
        let (mut centers, mut radii) = (vec![], vec![]);
        let (mut strips, mut widths) = (vec![], vec![]);
        let (mut mins, mut sizes) = (vec![], vec![]);
        for (_, s) in shapes {
            match *s {
                Shape::Circle { x, y, r } => {
                    centers.push([x, -y]);
                    radii.push(r);
                }
                Shape::Segment {
                    x0,
                    y0,
                    x1,
                    y1,
                    width,
                } => {
                    strips.push(vec![[x0, -y0], [x1, -y1]]);
                    widths.push(width / 2.0);
                }
                Shape::Rect { x0, y0, x1, y1 } => {
                    // The corner with the smallest x and (negated) y.
                    mins.push([x0.min(x1), -y0.max(y1)]);
                    sizes.push([(x1 - x0).abs(), (y1 - y0).abs()]);
                }
            }
        }
        let base = format!("scene/{}", kind_name(kind));
        let c = color(kind);
        if !centers.is_empty() {
            let n = centers.len();
            rec.log(
                format!("{base}/discs"),
                &rerun::Points2D::new(centers)
                    .with_radii(radii)
                    .with_colors(vec![c; n]),
            )?;
        }
        if !strips.is_empty() {
            let n = strips.len();
            rec.log(
                format!("{base}/links"),
                &rerun::LineStrips2D::new(strips)
                    .with_radii(widths)
                    .with_colors(vec![c; n]),
            )?;
        }
        if !mins.is_empty() {
            let n = mins.len();
            rec.log(
                format!("{base}/boxes"),
                &rerun::Boxes2D::from_mins_and_sizes(mins, sizes).with_colors(vec![c; n]),
            )?;
        }
    }
    Ok(())
}

/// Reads a text file with context.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Fails unless `dir` is a directory.
fn need_dir(dir: &Path, what: &str) -> Result<()> {
    if !dir.is_dir() {
        bail!("{}: not a directory ({what} expected)", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_become_one_part_get_paths_of_their_own() {
        let names = ["a/b", "a_b", "a_b_2", "q(1)", "q[1]"];
        assert_eq!(
            paths("obs", &names),
            [
                "obs/a_b",
                "obs/a_b_3",
                "obs/a_b_2",
                "obs/q_1_",
                "obs/q_1__2"
            ]
        );
    }

    #[test]
    fn names_become_path_parts() {
        assert_eq!(path_part("shoulder pitch (rad)"), "shoulder_pitch__rad_");
        assert_eq!(path_part("x.y-z_0"), "x.y-z_0");
        assert_eq!(path_part(""), "_");
    }

    #[test]
    fn tasks_are_found_by_name() {
        assert_eq!(task_of("sim/push"), Some(TaskId::Push));
        assert_eq!(task_of("arm-reach"), Some(TaskId::ArmReach));
        assert_eq!(task_of("sim-maze-robot"), Some(TaskId::Maze));
        assert_eq!(task_of("franka"), None);
    }

    /// A viewer that is not there is named at once, not after a run that streamed into
    /// the void.
    #[test]
    fn a_viewer_that_does_not_listen_is_refused_at_open() {
        // Port 1 (tcpmux) listens nowhere we run: refused at once.
        let closed = "127.0.0.1:1";
        let Err(e) = Recorder::open("test", &Target::Connect(closed.to_string())) else {
            panic!("opened a recording to nothing at {closed}");
        };
        assert!(
            format!("{e:#}").contains(&format!("no rerun viewer listens at {closed}")),
            "{e:#}"
        );
        // The port probed is the one the SDK streams to (it probed 9876 for every host
        // without a port, where the SDK takes the scheme's for another machine).
        for (url, host_port) in [
            ("rerun+http://10.0.0.2:9877/proxy", "10.0.0.2:9877"),
            ("rerun+https://viewer.example/proxy", "viewer.example:443"),
            ("rerun://viewer.example/proxy", "viewer.example:443"),
            ("rerun+http://10.0.0.2/proxy", "10.0.0.2:80"),
            ("rerun+http://localhost/proxy", "localhost:9876"),
            ("rerun+http://127.0.0.1/proxy", "127.0.0.1:9876"),
            ("rerun+http://[::1]/proxy", "[::1]:9876"),
            ("rerun+http://[::1]:9000/proxy", "[::1]:9000"),
        ] {
            assert_eq!(Target::host_port(url), host_port, "{url}");
        }
        // A bare address gets the viewer's port written out, so that the SDK goes
        // where the probe went.
        for (addr, host_port) in [
            ("10.0.0.2", "10.0.0.2:9876"),
            ("viewer.example:9000", "viewer.example:9000"),
            ("[::1]", "[::1]:9876"),
            // Unbracketed: read as `HOST:PORT` it was refused as "rerun viewer address
            // ::1 (::1)".
            ("::1", "[::1]:9876"),
            ("fe80::2", "[fe80::2]:9876"),
        ] {
            assert_eq!(Target::host_port(&Target::url(addr)), host_port, "{addr}");
        }
    }

    /// A recording whose logging fails is removed, not left partial in the way of the
    /// same command run again; a whole one stays.
    #[test]
    fn a_failed_recording_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.rrd");
        let target = Target::File(path.clone());
        let e = Recorder::open("test", &target)
            .unwrap()
            .record(|rec| -> Result<()> {
                rec.log("x", &rerun::Scalars::single(1.0))?;
                bail!("the source went bad")
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "the source went bad");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let n = Recorder::open("test", &target)
            .unwrap()
            .record(|rec| {
                rec.log("x", &rerun::Scalars::single(1.0))?;
                Ok(7)
            })
            .unwrap();
        assert_eq!(n, 7);
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
    }

    /// A conversion's file appears under its name only once written whole: one killed
    /// halfway left a truncated `.rrd` there, which the next run refused as existing.
    #[test]
    fn a_recording_appears_under_its_name_only_when_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.rrd");
        let r = Recorder::open("test", &Target::File(path.clone())).unwrap();
        r.rec.log("x", &rerun::Scalars::single(1.0)).unwrap();
        r.rec.flush_blocking().unwrap();
        assert!(
            !path.exists(),
            "a recording not yet whole is under its name"
        );
        let staged = r.staging.clone().unwrap();
        assert!(staged.exists());
        r.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.rrd"]);
        // Two recorders of one name (two containers whose pids are both 1, or one
        // process) write to files of their own: they shared `NAME.partial-PID`, and
        // each emptied the other's.
        let a = Recorder::open("test", &Target::File(path.with_file_name("two.rrd"))).unwrap();
        let b = Recorder::open("test", &Target::File(path.with_file_name("two.rrd"))).unwrap();
        assert_ne!(a.staging, b.staging);
        assert!(a.staging.as_ref().unwrap().exists() && b.staging.as_ref().unwrap().exists());
        a.finish().unwrap();
        let b_staged = b.staging.clone().unwrap();
        let e = b.finish().unwrap_err();
        assert!(format!("{e:#}").contains("appeared while"), "{e:#}");
        assert!(
            b_staged.exists(),
            "the second recording is kept whole beside it"
        );
        // A run's recording is written under its name as it goes (kept if cut short).
        let run = tmp.path().join("run.rrd");
        let r = Recorder::open_unbounded("test", &Target::File(run.clone())).unwrap();
        assert!(run.exists());
        r.finish().unwrap();
    }

    #[test]
    fn viewer_addresses_expand_to_urls() {
        assert_eq!(
            Target::url("127.0.0.1:9876"),
            "rerun+http://127.0.0.1:9876/proxy"
        );
        assert_eq!(
            Target::url("rerun+http://h:1/proxy"),
            "rerun+http://h:1/proxy"
        );
    }
}
