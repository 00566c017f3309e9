//! `tools`: datasets (generate, inspect, validate, label, tidy), benchmarks, the
//! dataset demo, the teleop device, robot files and rerun recordings (`viz`).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sim::{EnvConfig, Reward, TaskId};
use std::path::PathBuf;
use tools::{bench, generate};

#[derive(Parser)]
#[command(
    name = "tools",
    about = "Datasets, benchmarks and utilities for the EXPO robot stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, inspect and validate LeRobot v3 datasets.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Rerun recordings of datasets and training runs (build with `--features viz`;
    /// open them with `pip install rerun-sdk==0.36.3`, then `rerun FILE`).
    Viz {
        #[command(subcommand)]
        command: VizCommand,
    },
    /// A scripted teleop device for `controller run --teleop ADDR`: the task's
    /// demonstrator acts on the observations the controller sends back, as a person at
    /// a device would. Waits for the controller's first message, then stops once the
    /// controller has been silent for --idle-s.
    Teleop {
        /// The controller's --teleop address.
        #[arg(long)]
        controller: std::net::SocketAddr,
        /// The simulated task whose demonstrator plays the operator.
        #[arg(long)]
        task: String,
        /// Engage from the answer to this step's observation of each episode on (a
        /// takeover from the policy): the controller drives with it from this step
        /// with its --teleop-wait-ms, from the next one without (it acts on step K
        /// before the answer to step K's observation arrives). Default: always
        /// engaged (demonstrations).
        #[arg(long)]
        engage_from_step: Option<u32>,
        /// Seconds of silence from the controller after which the device stops (10 to
        /// 86400). Longer than the controller's silent phases between episodes (a
        /// `Reset` resent up to three times, 2 s apart; a reconnect), which it outlasts.
        #[arg(long, default_value_t = 30.0)]
        idle_s: f64,
        /// The controller run's `--seed` (0 with `--sim` by default): the
        /// demonstrator plays each episode as in-process from the same episode seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Validate a robot file and print what the controller and the firmware must agree on:
    /// the `Hello` handshake's fields (robot id, settings hash, sizes, rate) and the texts
    /// the robot id and the settings hash are the CRC-32 of. A firmware of your own
    /// announces these.
    Robot {
        /// The robot file (TOML; see firmware-config/robots/).
        file: PathBuf,
    },
    /// The dataset side alone: generate demonstrations for every task, validate the
    /// datasets and print their statistics.
    Demo {
        /// Output directory (one dataset per task below it).
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Demonstrations per task.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
        episodes: u64,
        /// Seed of the generator that draws the episodes' seeds.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum VizCommand {
    /// Every frame of a dataset on the timelines index (every episode one after another),
    /// episode, frame_index and time (every episode's frame k at one point: a plot over
    /// these mixes the episodes; use index to see them apart), with the simulated task's
    /// scene (arm links, puck, maze walls, goal) when it is one of ours.
    Dataset {
        /// The dataset directory.
        dir: PathBuf,
        #[command(flatten)]
        to: VizTarget,
        /// The task whose scene to draw (default: from the dataset's robot_type).
        #[arg(long)]
        task: Option<TaskId>,
    },
    /// Every numeric column of a training run's CSV files (metrics, eval, finetune).
    Run {
        /// The run directory (`trainer train --out DIR` and the like).
        dir: PathBuf,
        #[command(flatten)]
        to: VizTarget,
    },
    /// Check a recording with the rerun CLI (`python3 -m rerun_cli`, rerun-sdk 0.36.3;
    /// the environment's `RERUN_PYTHON` names another Python) and list its entities
    /// with their row counts.
    Verify {
        /// The .rrd recording.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct VizTarget {
    /// Write an .rrd file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stream to a running viewer (HOST:PORT, e.g. 127.0.0.1:9876).
    #[arg(long)]
    connect: Option<String>,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Record scripted demonstrations of a task into a new dataset.
    Generate {
        /// The simulated task: arm-reach, push or maze.
        #[arg(long, value_parser = parse_task)]
        task: TaskId,
        /// Demonstrations to record.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
        episodes: u32,
        /// Seed of the generator that draws the episodes' seeds.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Reward written to the dataset.
        #[arg(long, value_enum, default_value_t = RewardArg::Sparse)]
        reward: RewardArg,
        /// arm-reach only (refused for the other tasks): vertical plane with gravity.
        #[arg(long)]
        gravity: bool,
    },
    /// Copy a dataset with sparse success rewards (1 on the last frame of each successful
    /// episode, which then ends terminated; 0 elsewhere), for demonstrations recorded
    /// without rewards (LeRobot's recorder), optionally converting actions recorded in the
    /// robot's units to policy units. The source is not modified.
    Label {
        /// The source dataset.
        dir: PathBuf,
        /// The successful episodes: `all`, `none`, or indices and ranges such as `0,3,5-9`
        /// (positions in the dataset, from 0); the others are labelled as failures.
        /// `keep` leaves the labels as they are (to convert units only).
        #[arg(long)]
        success: tools::label::Successful,
        /// The source's actions are in this robot file's units (LeRobot's recordings):
        /// convert them to policy units, `(robot − action.offset) / action.scale`.
        #[arg(long, value_name = "ROBOT_TOML")]
        robot_units: Option<PathBuf>,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print episodes, lengths, success rate and feature statistics.
    Inspect {
        /// The dataset directory.
        dir: PathBuf,
    },
    /// Check the dataset deeply (metadata vs data, indices, statistics). Fails (exit 1)
    /// also on what LeRobot's loader reads otherwise than ours: a data file no episode
    /// references, episodes index rows meta/info.json does not commit.
    Validate {
        /// The dataset directory.
        dir: PathBuf,
    },
    /// Make a dataset that a stopped writer left behind loadable by LeRobot: data files
    /// no episode references are moved into DIR/unreferenced/ (LeRobot reads every file
    /// under data/), and index rows that were never committed are dropped. No data file
    /// is deleted (the metadata is written again in this writer's form where that was
    /// needed); every append (`controller run`, `log-to-dataset`) does the same first.
    Tidy {
        /// The dataset directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Simulation throughput per task (one thread), single env and vectorized.
    Sim {
        /// Environment steps per measurement (at most 1e12: hours of one core already,
        /// and far from the step counter's overflow).
        #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
        steps: u64,
        /// Environments in the vectorized measurement (2 to 4096; the action table holds
        /// 4096 rows).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=4096))]
        envs: u64,
        /// Repetitions; the table reports the median and the range.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
        repeats: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RewardArg {
    Sparse,
    Dense,
}

fn parse_task(s: &str) -> Result<TaskId, String> {
    s.parse().map_err(|e: sim::UnknownTask| e.to_string())
}

#[cfg(feature = "viz")]
fn viz_command(command: VizCommand) -> Result<()> {
    let target = |t: VizTarget| match (t.out, t.connect) {
        (Some(f), _) => viz::Target::File(f),
        (None, Some(addr)) => viz::Target::Connect(addr),
        (None, None) => unreachable!("clap requires one of --out and --connect"),
    };
    match command {
        VizCommand::Dataset { dir, to, task } => {
            let t = target(to);
            let w = viz::dataset_to_rrd(&dir, task, &t)?;
            println!(
                "{}: {} episodes, {} frames{} -> {t:?}",
                dir.display(),
                w.episodes,
                w.frames,
                if w.scene {
                    ", with the task's scene"
                } else {
                    ""
                }
            );
        }
        VizCommand::Run { dir, to } => {
            let t = target(to);
            let w = viz::run_to_rrd(&dir, &t)?;
            for (file, rows) in &w.files {
                println!("{}: {file}.csv, {rows} rows", dir.display());
            }
            for file in &w.torn {
                eprintln!(
                    "{}: {file}.csv's last line has no end of line (a row cut short as it \
                     was written): left out",
                    dir.display()
                );
            }
            for file in &w.empty {
                eprintln!(
                    "{}: {file}.csv is empty (its header was being written when the run \
                     stopped?): left out",
                    dir.display()
                );
            }
            for (file, count, first) in &w.not_numbers {
                eprintln!(
                    "{}: {file}.csv: {count} cells are not finite numbers (NaN, inf or \
                     text), left out of the plots; the first at {first}",
                    dir.display()
                );
            }
            println!("-> {t:?}");
        }
        VizCommand::Verify { file } => {
            let v = viz::cli::verify(&file)?;
            println!(
                "{}: verified by rerun {}",
                file.display(),
                viz::RERUN_VERSION
            );
            if !v.footer {
                println!(
                    "note: no footer: a recording written as it went (a controller run's), \
                     or a file cut short; `rerun rrd optimize` writes a copy with one"
                );
            }
            for (entity, n) in v.rows {
                println!("{n:>8}  {entity}");
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "viz"))]
fn viz_command(_: VizCommand) -> Result<()> {
    bail!(
        "this tools binary was built without rerun support: cargo build --release -p tools --features viz"
    )
}

/// `tools teleop --idle-s`'s least: the controller falls silent for up to about 6 s
/// between episodes (a `Reset` resent up to three times, 2 s apart).
const TELEOP_IDLE_MIN_S: f64 = 10.0;

/// Set by Ctrl-C or SIGTERM during `tools teleop`: the device stops and lets go of its
/// deadman (killed by the signal's default, its last datagram stayed engaged until the
/// controller's `--teleop-timeout-ms`).
static TELEOP_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(signal: libc::c_int) {
    TELEOP_STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    // A second one kills, as usual.
    // SAFETY: `signal` is async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Ctrl-C and SIGTERM set [`TELEOP_STOP`] (once; the next one kills).
fn stop_on_interrupt() {
    // SAFETY: installs a handler that only stores an atomic and calls `signal`, both
    // async-signal-safe.
    unsafe {
        for s in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(s, on_interrupt as *const () as libc::sighandler_t);
        }
    }
}

fn main() -> Result<()> {
    // Output piped into `head` and the like: end quietly when the reader goes away, as
    // other command-line tools do, instead of panicking on the broken pipe (Rust
    // ignores SIGPIPE by default). Nothing here writes anywhere a robot depends on.
    // SAFETY: restoring a signal's default disposition at start, before any thread.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Robot { file } => {
            let robot = firmware_config::RobotConfig::load(&file)?;
            let hello = robot.hello();
            println!(
                "{}: valid robot file, robot '{}'",
                file.display(),
                robot.robot
            );
            println!(
                "Hello: protocol {}, schema hash {:#010x}, robot id {:#010x}, settings hash \
                 {:#010x}, {} observations, {} actions, {} Hz",
                hello.protocol_version,
                hello.schema_hash,
                hello.robot_id,
                hello.settings_hash,
                hello.obs_dim,
                hello.act_dim,
                hello.control_hz
            );
            println!("robot id = CRC-32 of these lines:");
            print!("{}", robot.identity_text());
            println!(
                "settings hash = CRC-32 of these lines (the settings the controller and the \
                 firmware both act on):"
            );
            print!("{}", robot.settings_text());
            let checks = robot.joint_checks();
            if checks.is_empty() {
                println!(
                    "joint limits: none checked by the controller (no joint names its \
                     position_observation or velocity_observation)"
                );
            }
            for c in checks {
                println!(
                    "joint limit checked by the controller: {} in [{}, {}]",
                    c.what, c.min, c.max
                );
            }
            // What a firmware applies, in its own units: the hold is policy 0 (the
            // offset, a pose on a robot commanded in positions), and the envelope and
            // slew limit are policy units times the scale.
            let (a, safety) = (&robot.action, &robot.safety);
            for i in 0..a.dim {
                let ends = [safety.action_min[i], safety.action_max[i]]
                    .map(|p| a.offset[i] + a.scale[i] * p);
                let named = a.names.get(i).map_or(String::new(), |n| format!(" `{n}`"));
                println!(
                    "action[{i}]{named} in robot units: hold (policy 0) {}, envelope [{}, {}], \
                     at most {} per control step",
                    a.offset[i],
                    ends[0].min(ends[1]),
                    ends[0].max(ends[1]),
                    a.scale[i].abs() * safety.max_delta_per_tick[i]
                );
            }
        }
        Command::Dataset { command } => match command {
            DatasetCommand::Generate {
                task,
                episodes,
                seed,
                out,
                reward,
                gravity,
            } => {
                let reward = match reward {
                    RewardArg::Sparse => Reward::Sparse,
                    RewardArg::Dense => Reward::Dense,
                };
                let config = EnvConfig { reward, gravity };
                config
                    .check_for(task)
                    .map_err(|why| anyhow::anyhow!("--gravity: {why}"))?;
                let summary = generate::generate(task, episodes as usize, seed, config, &out)
                    .with_context(|| format!("generating {task} demonstrations"))?;
                println!(
                    "wrote {} episodes, {} frames of {task} to {} (demonstrator success {:.1}%)",
                    summary.total_episodes,
                    summary.total_frames,
                    out.display(),
                    100.0 * summary.success_rate
                );
            }
            DatasetCommand::Label {
                dir,
                success,
                robot_units,
                out,
            } => {
                let robot = robot_units
                    .as_deref()
                    .map(|p| firmware_config::RobotConfig::load(p).map(|r| (p, r)))
                    .transpose()?;
                let labelled = tools::label::label_success(
                    &dir,
                    &out,
                    &success,
                    robot.as_ref().map(|(p, r)| (*p, r)),
                )?;
                for w in &labelled.warnings {
                    eprintln!("warning: {w}");
                }
                let s = labelled.summary;
                println!(
                    "wrote {} episodes, {} frames to {} ({:.1}% labelled successful)",
                    s.total_episodes,
                    s.total_frames,
                    out.display(),
                    100.0 * s.success_rate
                );
            }
            DatasetCommand::Inspect { dir } => inspect(&dir)?,
            DatasetCommand::Validate { dir } => validate(&dir)?,
            DatasetCommand::Tidy { dir } => tidy(&dir)?,
        },
        Command::Bench {
            command:
                BenchCommand::Sim {
                    steps,
                    envs,
                    repeats,
                },
        } => bench_sim(steps, envs as usize, repeats as usize),
        Command::Viz { command } => viz_command(command)?,
        Command::Teleop {
            controller,
            task,
            engage_from_step,
            idle_s,
            seed,
        } => {
            let task: TaskId = task.parse().map_err(|e| anyhow::anyhow!("--task: {e}"))?;
            // Shorter, it ended within the controller's silence between two episodes,
            // and the episodes after it were recorded with the hold action.
            anyhow::ensure!(
                (TELEOP_IDLE_MIN_S..=86_400.0).contains(&idle_s),
                "--idle-s must be {TELEOP_IDLE_MIN_S} to 86400 (a day) seconds, longer than the \
                 controller's silent phases between episodes, found {idle_s}"
            );
            let mut o = tools::teleop::DeviceOptions::new(controller, task);
            o.idle = std::time::Duration::from_secs_f64(idle_s);
            o.keep_actions = false;
            o.seed = seed;
            if let Some(k) = engage_from_step {
                o.engage = tools::teleop::Engage::FromStep(k);
            }
            eprintln!("tools teleop: {task}'s demonstrator at the device, sending to {controller}");
            stop_on_interrupt();
            let s = tools::teleop::run_device(&o, &TELEOP_STOP)?;
            println!(
                "tools teleop: {} observations ({} with the device in control), {} episodes, {} actions sent ({} engaged)",
                s.observations, s.in_control, s.episodes_seen, s.actions_sent, s.engaged
            );
        }
        Command::Demo {
            out,
            episodes,
            seed,
        } => demo(&out, episodes as usize, seed)?,
    }
    Ok(())
}

fn inspect(dir: &std::path::Path) -> Result<()> {
    let ds = dataset::read_dataset(dir)?;
    let lens: Vec<usize> = ds.episodes.iter().map(|e| e.len()).collect();
    let returns: Vec<f32> = ds.episodes.iter().map(|e| e.ret()).collect();
    println!("dataset     {}", dir.display());
    println!("robot       {}  ({} Hz)", ds.info.robot_type, ds.info.fps);
    println!("task        {}", ds.info.task);
    println!("episodes    {}", ds.episodes.len());
    println!("frames      {}", ds.num_frames());
    if !lens.is_empty() {
        println!(
            "length      min {}  mean {:.1}  max {}",
            lens.iter().min().unwrap(),
            lens.iter().sum::<usize>() as f64 / lens.len() as f64,
            lens.iter().max().unwrap()
        );
        println!(
            "return      mean {:.3}",
            returns.iter().sum::<f32>() / returns.len() as f32
        );
    }
    println!("success     {:.1}%", 100.0 * ds.success_rate());
    // What the actions (policy units) meant on the robot, where the recording says.
    match &ds.info.action_mapping {
        Some(m) => {
            let each: Vec<String> = (0..m.scale.len()).map(|i| m.describe(i)).collect();
            println!(
                "action map  robot = {} (a in policy units)",
                each.join(", ")
            );
        }
        None => println!("action map  not recorded"),
    }
    let stats = ds.stats();
    for (feature, names) in [
        (dataset::cols::OBS, &ds.info.observation_names),
        (dataset::cols::ACTION, &ds.info.action_names),
    ] {
        let Some(s) = stats.get(feature) else {
            continue;
        };
        println!("\n{feature}");
        println!(
            "  {:<14} {:>10} {:>10} {:>10} {:>10}",
            "name", "mean", "std", "min", "max"
        );
        for (i, name) in names.iter().enumerate() {
            println!(
                "  {:<14} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
                name, s.mean[i], s.std[i], s.min[i], s.max[i]
            );
        }
    }
    Ok(())
}

fn validate(dir: &std::path::Path) -> Result<()> {
    let r = dataset::validate_dataset(dir)?;
    let summary = format!(
        "{} episodes, {} frames, {} data files, {} features, {} stats checked{}, {} \
         successful episodes",
        r.episodes,
        r.frames,
        r.data_files,
        r.features,
        r.stats_checked,
        if r.uncommitted_episodes > 0 {
            " (none: they may describe the uncommitted episodes)"
        } else {
            ""
        },
        r.successful_episodes
    );
    // Our readers leave both out; LeRobot reads every file under data/ and under
    // meta/episodes/. A warning with exit 0 read as "valid" to scripts that check the
    // status, so both are refusals, and `tidy` repairs both.
    let mut problems = vec![];
    if !r.unreferenced_data_files.is_empty() {
        let files = r
            .unreferenced_data_files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        problems.push(format!(
            "{files} {} referenced by no episode (left by a writer stopped before its \
             commit, or one still recording), and LeRobot reads every file under data/",
            if r.unreferenced_data_files.len() == 1 {
                "is"
            } else {
                "are"
            },
        ));
    }
    if r.uncommitted_episodes > 0 {
        problems.push(format!(
            "the episodes index lists {} more rows than meta/info.json commits (a writer \
             stopped before its commit, or superseded index files left behind), and LeRobot \
             reads every file under meta/episodes/",
            r.uncommitted_episodes
        ));
    }
    if problems.is_empty() {
        println!("{}: valid LeRobot v3 dataset: {summary}", dir.display());
        return Ok(());
    }
    // `tidy` rewrites the metadata to drop the rows, which it does not do for a
    // dataset with features this writer does not produce (a LeRobot recorder's cameras).
    let foreign = dataset::foreign_features(dir)?;
    let repair = if r.uncommitted_episodes > 0 && !foreign.is_empty() {
        format!(
            "`tools dataset tidy` does not rewrite the metadata of a dataset with features \
             this writer does not produce ({}): remove by hand the episodes index rows \
             after the first {} (meta/info.json's total_episodes, counted over the files \
             under meta/episodes/ in name order), then `tools dataset tidy {}` sets \
             unreferenced data files aside",
            foreign.join(", "),
            dataset::committed_episodes(dir)?,
            dir.display()
        )
    } else {
        format!(
            "`tools dataset tidy {}` sets unreferenced files aside and drops uncommitted rows",
            dir.display()
        )
    };
    anyhow::bail!(
        "{}: LeRobot would not read it as this repository's readers do: {}. Ours leave \
         that out ({summary}); {repair}",
        dir.display(),
        problems.join("; "),
    )
}

fn tidy(dir: &std::path::Path) -> Result<()> {
    anyhow::ensure!(
        dir.join("meta/info.json").is_file(),
        "{}: not a dataset (no meta/info.json)",
        dir.display()
    );
    let tidied = dataset::tidy(dir)?;
    for (from, to) in &tidied.set_aside {
        println!("set aside {} -> {}", from.display(), to.display());
    }
    if !tidied.foreign_features.is_empty() {
        println!(
            "note: features this writer does not produce ({}): the metadata was left as \
             it was, and only unreferenced data files were moved",
            tidied.foreign_features.join(", ")
        );
    }
    validate(dir)
}

fn bench_sim(steps: u64, envs: usize, repeats: usize) {
    println!(
        "{:<10} {:>6} {:>16} {:>16} {:>16}",
        "task", "envs", "median steps/s", "min", "max"
    );
    for task in TaskId::ALL {
        for n in [1, envs] {
            let mut rates: Vec<f64> = (0..repeats)
                .map(|_| {
                    if n == 1 {
                        bench::bench_single(task, steps)
                    } else {
                        bench::bench_vector(task, n, steps)
                    }
                    .steps_per_second()
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            println!(
                "{:<10} {:>6} {:>16.0} {:>16.0} {:>16.0}",
                task.name(),
                n,
                bench::median(&rates),
                rates[0],
                rates[rates.len() - 1]
            );
        }
    }
}

/// Marks a dataset directory `tools demo` wrote: a rerun replaces those, and only those,
/// while they are as it wrote them ([`DEMO_INFO_CRC`]).
const DEMO_MARKER: &str = ".written-by-tools-demo";
/// The marker's line that fingerprints the dataset as written: its `meta/info.json`
/// (episode and frame counts, the runs recorded into it), which every append rewrites.
/// A marker of an older `tools demo` has none, and its dataset is replaced as before.
const DEMO_INFO_CRC: &str = "meta/info.json crc32: ";

/// The fingerprint [`DEMO_INFO_CRC`] records of the dataset at `dir`.
fn info_fingerprint(dir: &std::path::Path) -> Result<String> {
    let info = dir.join("meta").join("info.json");
    let bytes = std::fs::read(&info).with_context(|| format!("reading {}", info.display()))?;
    Ok(format!("{:08x}", firmware_config::protocol::crc32(&bytes)))
}

/// Why `tools demo` may not replace the dataset at `dir`, if it may not.
fn demo_refusal(dir: &std::path::Path) -> Option<String> {
    let marker = dir.join(DEMO_MARKER);
    let Ok(text) = std::fs::read_to_string(&marker) else {
        return Some(format!(
            "{}: exists and is not a dataset written by `tools demo` (no {DEMO_MARKER} in \
             it); `tools demo` replaces only its own datasets: remove it or pass --out \
             elsewhere",
            dir.display()
        ));
    };
    let written = text.lines().find_map(|l| l.strip_prefix(DEMO_INFO_CRC))?;
    let now = match info_fingerprint(dir) {
        Ok(now) => now,
        Err(e) => {
            return Some(format!(
                "{}: a dataset `tools demo` wrote, whose meta/info.json cannot be read now \
                 ({e:#}); `tools demo` does not replace it: move it or pass --out elsewhere",
                dir.display()
            ));
        }
    };
    (now != written.trim()).then(|| {
        format!(
            "{}: a dataset `tools demo` wrote, changed since (its meta/info.json is not as \
             written: episodes appended to it, e.g. by `controller log-to-dataset`, or \
             tidied); `tools demo` does not replace it: move it or pass --out elsewhere",
            dir.display()
        )
    })
}

fn demo(out: &std::path::Path, episodes: usize, seed: u64) -> Result<()> {
    // Every directory is checked before any is removed: one refusal leaves all in place.
    for task in TaskId::ALL {
        let dir = out.join(task.name());
        if dir.exists()
            && let Some(why) = demo_refusal(&dir)
        {
            bail!("{why}");
        }
    }
    for task in TaskId::ALL {
        tools::say_leftovers(&out.join(task.name()));
    }
    println!(
        "Generating {episodes} scripted demonstrations per task into {}\n",
        out.display()
    );
    for task in TaskId::ALL {
        // Each task's new dataset is built and marked beside the old one, which is
        // replaced only then: a failure (a full disk, Ctrl-C, a closed pipe) leaves
        // every task with its old dataset or its new one, never neither. The new one of
        // a failure is removed (it stayed, hidden, a whole dataset's size); only an
        // interruption leaves it.
        let dir = out.join(task.name());
        let id = tools::unique_id();
        let new = out.join(format!(".{}.new-{id}", task.name()));
        let built = (|| -> Result<()> {
            generate::generate(task, episodes, seed, EnvConfig::default(), &new)?;
            // Synced with its directory: a marker lost to a power cut had the next
            // `tools demo` refuse to replace its own dataset.
            let marker = format!(
                "written by `tools demo`; rerunning it replaces this dataset while it is \
                 unchanged\n{DEMO_INFO_CRC}{}\n",
                info_fingerprint(&new)?
            );
            std::fs::write(new.join(DEMO_MARKER), marker)
                .and_then(|()| std::fs::File::open(new.join(DEMO_MARKER))?.sync_all())
                .and_then(|()| dataset::sync_dir(&new))
                .with_context(|| format!("marking {} as a demo dataset", new.display()))?;
            // Checked before it replaces anything: a new dataset that does not validate
            // leaves the old one in place.
            dataset::validate_dataset(&new).with_context(|| {
                format!("the new dataset {} (the old one is kept)", new.display())
            })?;
            Ok(())
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&new);
            return Err(e);
        }
        // Old out of the way by a rename, new in by another, then the old removed: at
        // every moment one of them is complete under a name that says which.
        let old = out.join(format!(".{}.old-{id}", task.name()));
        if dir.exists()
            && let Err(e) = std::fs::rename(&dir, &old)
        {
            let _ = std::fs::remove_dir_all(&new);
            return Err(e)
                .with_context(|| format!("moving {} to {}", dir.display(), old.display()));
        }
        if let Err(e) = std::fs::rename(&new, &dir) {
            // The old one back under its name (where it is), the new one gone.
            if old.exists() {
                let _ = std::fs::rename(&old, &dir);
            }
            let _ = std::fs::remove_dir_all(&new);
            return Err(e)
                .with_context(|| format!("moving {} to {}", new.display(), dir.display()));
        }
        // The swap made durable before the old one goes.
        dataset::sync_dir(out).with_context(|| format!("syncing {}", out.display()))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        validate(&dir)?;
        inspect(&dir)?;
        println!();
    }
    println!(
        "Next: train on one of them, e.g. `trainer train --preset cpu --set task=push --set \
         run.dataset={}/push --out out/push`, or run the whole loop with `scripts/demo` \
         (README).",
        out.display()
    );
    Ok(())
}
