//! The `controller` binary: `run` (the robot loop against firmware on a serial device),
//! `bench-loop` (the same loop against the simulated firmware in-process, for cadence
//! and latency numbers), `bench-wake` (how late a bare loop wakes on this computer),
//! `log-to-dataset` (rebuild a dataset from a transition log),
//! `bench` (inference latency) and `check` (verify a bundle).

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use controller::cli::TrustArgs;
use controller::robot_loop;
use controller::runtime::{
    Backend, GraphRows, Policy, PolicyOptions, TwoSpeedPolicy, kernel_name, load_networks,
};
use shared_model::VerifiedBundle;
use shared_model::manifest::{Trust, load_bundle};
use shared_model::synthetic::SyntheticSpec;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `--seed`, or its default: 0 for the simulated firmware; on a robot a seed of its
/// own for each session (the clock's nanoseconds and the process id), as a session
/// that replayed the last one's noise would stream the same exploration draws to the
/// trainer again.
fn run_seed(given: Option<u64>, simulated: bool) -> u64 {
    match given {
        Some(seed) => seed,
        None if simulated => 0,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            // 64 bits of the nanoseconds, the process id in the high bits; below 2^53
            // so that it survives a JSON reader's doubles (report.json's seeds).
            let mixed = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32);
            mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11
        }
    }
}

/// Mixed into `--seed` for the policy's random stream ("policy"): the same seed also
/// seeds the episodes' resets.
const POLICY_STREAM: u64 = 0x706f_6c69_6379;

#[derive(Parser)]
#[command(
    name = "controller",
    about = "Run EXPO model bundles on the robot computer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a bundle (signature, hashes, shapes, weights), build its networks on the
    /// given backend and run each once (every critic member), and print its manifest
    /// summary. With --robot, also what `controller run` checks before it opens the port
    /// (sizes, rate, observation and action names, the action mapping), and the robot id
    /// and settings hash the firmware must announce.
    Check {
        /// The bundle directory (`trainer export`).
        #[arg(long)]
        bundle: PathBuf,
        /// The robot file to check the bundle against, as `controller run --robot` would.
        #[arg(long)]
        robot: Option<PathBuf>,
        #[command(flatten)]
        trust: TrustArgs,
        /// Backend(s) to build and run the networks on: tract, native, ort; with more
        /// than one, each graph's outputs on the same inputs are compared with the
        /// first's (refused beyond 1e-3 of their scale); an output that is not finite is
        /// refused on any backend.
        #[arg(long, value_delimiter = ',', default_value = "tract,native")]
        backends: Vec<String>,
    },
    /// Latency of EXPO actions: per stage p50/p99/max over --actions, batch-1
    /// observations, one thread, beside the compute limit (FLOPs / measured rate).
    Bench {
        #[command(flatten)]
        source: BenchBundle,
        /// Backends to time, comma-separated: tract, native, ort.
        #[arg(long, value_delimiter = ',', default_value = "tract,native")]
        backends: Vec<String>,
        /// Actions timed per backend (at most 10^7: each one's four stage times are kept
        /// for the percentiles, and 2^32 of them asked for 137 GB up front).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        actions: u32,
        /// Executed steps of the truncated-chain run (default: 3, or the bundle's
        /// trained chain if shorter).
        #[arg(long)]
        truncated_steps: Option<usize>,
        /// Keep the synthetic bundle here (e.g. for the Python onnxruntime loop): a new or
        /// empty directory, never a bundle already there (with --synthetic only).
        #[arg(long, requires = "synthetic")]
        keep: Option<PathBuf>,
    },
    /// Run a bundle on the robot: handshake, `--episodes` episodes at the robot's control
    /// rate with the safety envelope, transitions logged crash-safely and saved as a
    /// dataset, cadence report per episode and at exit. Exit status: 0 all episodes ran,
    /// 4 all ran but the recording lost data (a full disk), 3 stopped by a fault, 130
    /// interrupted (Ctrl-C, SIGTERM, SIGHUP), 1 refused or failed, 2 a command line that
    /// does not parse (an unknown flag, a bad value, two flags the parser declares
    /// exclusive; combinations refused after parsing exit 1).
    Run(Box<RunArgs>),
    /// The control loop against the simulated firmware on an in-process pty at `--rate`
    /// Hz for `--seconds`: effective rate, wake-up jitter, overruns, sensor-to-command
    /// latency. Exit status: 0 the table printed, 130 interrupted (no table of a partial
    /// run), 1 refused or failed (also a run that ended on a fault).
    BenchLoop(Box<BenchLoopArgs>),
    /// How late this computer wakes a bare loop at `--rate` Hz: the same sleep-then-spin
    /// to absolute deadlines as the control loop, with no work in the ticks. The floor
    /// under `bench-loop`'s jitter and overruns; try it before choosing a control rate.
    BenchWake {
        /// Loop rate in Hz.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Spin this many µs before each deadline instead of sleeping.
        #[arg(long, default_value_t = 200)]
        spin_us: u64,
        /// As `bench-loop --dedicated-cpu`: this CPU alone, busy-waiting.
        #[arg(long, value_name = "CPU")]
        dedicated_cpu: Option<usize>,
    },
    /// Convert a transition log (e.g. of a killed run) into a dataset (created or appended).
    LogToDataset {
        /// The transition log (`controller run --out DIR` writes DIR/transitions.log).
        #[arg(long)]
        log: PathBuf,
        /// The dataset directory (created, or appended to: a log holds every run into
        /// its --out, and the runs the dataset notes, those that saved their episodes
        /// into DIR/dataset or were converted before, are left out). A run's own
        /// directory (it holds transitions.log) is refused: its dataset is DIR/dataset.
        #[arg(long)]
        out: PathBuf,
        /// Only the log's last run: after a run was killed (`kill -9`, a power cut)
        /// before it saved its episodes, append them to the run directory's dataset
        /// (`--out RUN_DIR/dataset`, beside `RUN_DIR/transitions.log`), which holds the
        /// runs before it. Nothing is written when the dataset notes the run already
        /// (it ended and saved its episodes, or they were converted before). Only the
        /// last run is looked at (without --last-run or --run, every run the dataset
        /// does not note is appended).
        #[arg(long, conflicts_with = "run")]
        last_run: bool,
        /// Only the run with this id (repeatable), from its header to the next run's,
        /// whatever else the log holds: a killed run's episodes once later runs are in
        /// the log (`controller run` names such a run at its next start). Episodes the
        /// dataset holds are left out; damage inside a run the dataset does not note
        /// refuses an append.
        #[arg(long, value_name = "RUN_ID")]
        run: Vec<String>,
    },
}

/// The bundle a benchmark runs: a directory, or random weights at a preset's sizes.
#[derive(clap::Args)]
struct BenchBundle {
    /// A bundle directory; or use --synthetic.
    #[arg(long, conflicts_with = "synthetic")]
    bundle: Option<PathBuf>,
    /// Random weights at `paper` or `cpu` sizes (written to a temporary bundle).
    #[arg(long)]
    synthetic: Option<String>,
    /// With --synthetic: actions per chunk (the networks act on `horizon` actions).
    #[arg(long, default_value_t = 1)]
    horizon: usize,
    #[command(flatten)]
    trust: TrustArgs,
}

impl BenchBundle {
    /// The bundle's directory and the bundle; a synthetic one is written to
    /// `synthetic_dir` first.
    fn load(&self, synthetic_dir: PathBuf) -> Result<(PathBuf, VerifiedBundle)> {
        let (dir, trust) = match (&self.bundle, self.synthetic.as_deref()) {
            (Some(d), _) => {
                ensure!(
                    self.horizon == 1,
                    "--horizon sizes --synthetic networks; a bundle plans the chunks its manifest says (action.horizon)"
                );
                (d.clone(), self.trust.trust()?)
            }
            (None, Some(size)) => {
                write_synthetic(size, self.horizon, &synthetic_dir)?;
                (synthetic_dir, Trust::AllowUnsigned)
            }
            (None, None) => bail!("pass --bundle DIR or --synthetic paper|cpu"),
        };
        let b = load_bundle(&dir, &trust).context("loading the bundle")?;
        Ok((dir, b))
    }

    /// `bundle`, `paper`, `paper chunks of 4`, ... for result tables.
    fn label(&self) -> String {
        match (&self.synthetic, self.horizon) {
            (None, _) => "bundle".to_string(),
            (Some(size), 1) => size.clone(),
            (Some(size), h) => format!("{size} chunks of {h}"),
        }
    }
}

/// `controller bench-loop`.
#[derive(clap::Args)]
struct BenchLoopArgs {
    /// Loop rate in Hz.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    #[command(flatten)]
    source: BenchBundle,
    /// tract, native or ort.
    #[arg(long, default_value = "native")]
    backend: String,
    /// Two-speed EXPO: a worker refreshes base candidates, each tick edits and selects.
    #[arg(long)]
    two_speed: bool,
    /// Simulated task (its built-in robot file).
    #[arg(long, default_value = "push")]
    task: String,
    #[command(flatten)]
    timing: TimingArgs,
    /// Keep the log, dataset and report here (default: a temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Record every tick for the rerun viewer (feature `viz`), e.g. to plot the
    /// loop's jitter and tick time; the recording adds work on the logger thread.
    #[arg(long)]
    rerun: Option<PathBuf>,
}

/// Loop timing and real-time options shared by `run` and `bench-loop`.
#[derive(clap::Args, Clone)]
struct TimingArgs {
    /// Spin this many µs before each deadline instead of sleeping.
    #[arg(long, default_value_t = 200)]
    spin_us: u64,
    /// mlockall, SCHED_FIFO and CPU affinity for the control thread (each step's result
    /// is printed; they need root or CAP_IPC_LOCK / CAP_SYS_NICE).
    #[arg(long)]
    realtime: bool,
    /// SCHED_FIFO priority of the control thread with --realtime (1-99).
    #[arg(long, default_value_t = 80, requires = "realtime", value_parser = clap::value_parser!(i32).range(1..=99))]
    rt_priority: i32,
    /// CPU for the control thread with --realtime (default: the last one).
    #[arg(long, requires = "realtime")]
    rt_cpu: Option<usize>,
    /// Give the control thread this CPU to itself and busy-wait to each deadline
    /// instead of sleeping (needs no privileges; every other thread of the process is
    /// kept off the CPU). Costs one core; removes the late wake-ups of a sleeping
    /// (v)CPU. Not with --realtime: a SCHED_FIFO thread that never sleeps is throttled
    /// by the kernel (50 ms a second by default), or starves the CPU's kernel threads.
    #[arg(long, value_name = "CPU", conflicts_with = "realtime")]
    dedicated_cpu: Option<usize>,
    /// Align the tick grid to just after the sensor frames' arrival (firmware that
    /// streams on its own clock; not for lockstep firmware).
    #[arg(long)]
    align_phase: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Model bundle directory. Optional with --teleop: without one, the robot holds
    /// (the zero action) whenever the teleop device is not engaged (recording
    /// demonstrations).
    #[arg(long, required_unless_present = "teleop")]
    bundle: Option<PathBuf>,
    /// Take actions from a teleop device: listen for its UDP datagrams on this address
    /// (e.g. 127.0.0.1:7979; see firmware_config::teleop for the format). While it is
    /// engaged, its actions replace the policy's, through the same safety envelope,
    /// and are recorded marked `teleop`; it gets each observation back.
    #[arg(long, value_name = "ADDR")]
    teleop: Option<String>,
    /// With --teleop: the longest the robot follows a device that fell silent, counted
    /// from its last datagram's arrival (ms, 1 to 1000).
    #[arg(long, default_value_t = 200, requires = "teleop")]
    teleop_timeout_ms: u64,
    /// With --teleop: send each observation to the device before acting on it and wait
    /// up to this long (ms, at most 80% of the control period) for its answer, so that
    /// a closed-loop device (a scripted controller) acts on the frame it answers.
    /// Default 0: never wait (the device acts one period late).
    #[arg(long, default_value_t = 0.0, requires = "teleop")]
    teleop_wait_ms: f64,
    #[command(flatten)]
    trust: TrustArgs,
    /// Robot config (TOML, see firmware-config). With --sim, default: the task's
    /// built-in robot file (firmware-config/robots/TASK.toml).
    #[arg(long, required_unless_present = "sim")]
    robot: Option<PathBuf>,
    /// Serial device (for the simulated firmware: the pty path it prints) [default: the
    /// robot file's serial.device].
    #[arg(long)]
    port: Option<PathBuf>,
    /// Instead of --port: run the simulated firmware of this task (arm-reach, push, maze)
    /// in this process on a fresh pty, with the robot file and --time-scale as its clock.
    #[arg(long, conflicts_with = "port")]
    sim: Option<String>,
    /// With --sim: step when a command arrives (exact, repeatable episodes) instead of on
    /// the firmware's own clock.
    #[arg(long, requires = "sim")]
    sim_lockstep: bool,
    /// With --sim: fault injection spec (see hil_tests::faults), e.g. `seed=1,flip=0.001`.
    #[arg(long, requires = "sim", default_value = "")]
    sim_faults: String,
    /// Stream the transition log to a trainer (`trainer finetune --listen`) at this
    /// address, e.g. `10.0.0.2:7878`; needs --uplink-key.
    #[arg(long, requires = "uplink_key", value_parser = uplink_address)]
    uplink: Option<String>,
    /// The shared key of the link (`trainer uplink-keygen`; the same file on both hosts).
    #[arg(long, requires = "uplink")]
    uplink_key: Option<PathBuf>,
    /// With --uplink: keep the starting bundle, do not take the trainer's new ones.
    /// (--uplink needs a --bundle: the trainer's bundles replace it.)
    #[arg(long, requires = "uplink")]
    no_swap: bool,
    /// After the run, keep sending to the trainer for up to this many seconds (at most a
    /// day; with --uplink only).
    #[arg(long, default_value_t = 30, requires = "uplink", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    uplink_drain_s: u64,
    /// Record every tick (observation, action, candidates and their Q values, timing,
    /// link errors, safety state) to this rerun file (needs the `viz` feature).
    #[arg(long, conflicts_with = "rerun_connect")]
    rerun: Option<PathBuf>,
    /// Stream the same recording to a running rerun viewer at HOST:PORT (e.g.
    /// 127.0.0.1:9876) or a rerun+http:// URL, instead of `--rerun`'s file.
    #[arg(long)]
    rerun_connect: Option<String>,
    /// Operator episode control from stdin, one key per line: s success, f failure,
    /// r reset, i toggle intervention, p pause, c continue, q quit.
    #[arg(long)]
    operator: bool,
    /// Added to the reward of the step the operator labels a success.
    #[arg(long, default_value_t = 1.0)]
    success_reward: f32,
    /// Baud rate (default: the robot file's serial.baud).
    #[arg(long)]
    baud: Option<u32>,
    /// Episodes to run: episodes the firmware began (a Reset that started nothing, e.g.
    /// a reboot while starting, is not one; its number is skipped).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    episodes: u32,
    /// Episode i is reset with seed + i; the policy's sampler uses seed. Default: 0
    /// with --sim (repeatable runs); on a robot, drawn from the clock at start and
    /// printed, so that each session explores with other noise (give the printed seed
    /// to repeat a session's draws).
    #[arg(long)]
    seed: Option<u64>,
    /// Two-speed EXPO: a worker refreshes base candidates, each tick edits and selects.
    #[arg(long, requires = "bundle")]
    two_speed: bool,
    /// tract, native or ort.
    #[arg(long, default_value = "tract", requires = "bundle")]
    backend: String,
    /// Denoising steps to execute (default: the bundle's).
    #[arg(long, requires = "bundle")]
    executed_steps: Option<usize>,
    /// With an action-chunk bundle: actions played from each chunk before the policy
    /// plans the next, 1..=H, or 0 for whole chunks (default: as the run that trained the
    /// bundle played them, its `action.replan_every`). Fewer reacts sooner and plans more
    /// often.
    #[arg(long, requires = "bundle")]
    replan_every: Option<usize>,
    /// With an action-chunk bundle: temporal ensembling (ACT): each step's action is the
    /// weighted mean of the actions every chunk planned in the last H steps holds for
    /// it, weights e^(-M·i) with i = 0 for the oldest (0: plain mean; ACT used 0.01).
    /// Usually with --replan-every 1.
    #[arg(
        long,
        requires = "bundle",
        value_name = "M",
        allow_negative_numbers = true
    )]
    temporal_ensemble: Option<f32>,
    /// Log, dataset and report directory (appended to if it exists).
    #[arg(long, default_value = "out/controller")]
    out: PathBuf,
    /// Run the loop this many times faster than the robot's control_hz, for a simulated
    /// firmware started with the same --rate-scale, or under --sim (durations in the
    /// robot file scale too). A real robot needs 1: another scale on a port is warned of.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Faults tolerated (each ends its episode with a safe stop) before the run stops.
    #[arg(long, default_value_t = 0)]
    max_faults: u32,
    /// Deadlines missed in a row that count as a fault (0: never).
    #[arg(long, default_value_t = 10)]
    max_overruns: u32,
    /// After the serial link fails, keep trying to reopen the device this long (ms); the
    /// run goes on once it is back (the link loss is a fault, without ending the run by
    /// --max-faults). A link lost at the run's end is waited for as long, to send the
    /// closing Estop on the port back.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    reconnect_ms: Option<u64>,
    /// How long to wait for the firmware's Hello (ms).
    #[arg(long, default_value_t = 3000)]
    handshake_timeout_ms: u64,
    #[command(flatten)]
    timing: TimingArgs,
    /// No per-episode report lines.
    #[arg(long)]
    quiet: bool,
    /// Testing only: panic in the control thread at this tick (the safe stop must follow).
    #[arg(long, hide = true)]
    inject_panic_at_tick: Option<u64>,
    /// Testing only: after the injected panic, panic again at every hand-over of
    /// transitions to the log (the same bug in the recovery and the run's end).
    #[arg(long, hide = true, requires = "inject_panic_at_tick")]
    inject_panic_repeats: bool,
    /// Testing only: `FROM:COUNT`, ticks FROM to FROM+COUNT-1 each take one control period
    /// longer (they miss their deadlines; `--max-overruns` in a row is a fault).
    #[arg(long, hide = true, value_parser = parse_tick_range)]
    inject_slow_ticks: Option<(u64, u64)>,
}

/// `FROM:COUNT` of `--inject-slow-ticks`.
fn parse_tick_range(s: &str) -> Result<(u64, u64), String> {
    let (from, count) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not FROM:COUNT"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|e| format!("'{v}' in '{s}': {e}"))
    };
    Ok((num(from)?, num(count)?))
}

/// Writes a bundle of random weights at `paper` or `cpu` sizes, planning chunks of
/// `horizon`, into `dir`.
fn write_synthetic(size: &str, horizon: usize, dir: &Path) -> Result<()> {
    let spec = match size {
        "paper" => SyntheticSpec::paper(),
        "cpu" => SyntheticSpec::cpu(),
        _ => bail!("--synthetic takes paper or cpu, found `{size}`"),
    };
    ensure!(
        (1..=shared_model::manifest::MAX_HORIZON).contains(&horizon),
        "--horizon must be in 1..={}, not {horizon}",
        shared_model::manifest::MAX_HORIZON
    );
    SyntheticSpec { horizon, ..spec }.write(dir, 1, None)?;
    Ok(())
}

/// `--dedicated-cpu`: keeps the threads started from here on (two-speed worker,
/// simulated firmware) off the control thread's CPU. `robot_loop::run` reserves it
/// again, idempotently, and reports how it went.
fn reserve_dedicated_cpu(timing: &TimingArgs) {
    if let Some(cpu) = timing.dedicated_cpu {
        robot_loop::realtime::reserve_cpu(cpu);
    }
}

fn loop_config(
    robot: firmware_config::RobotConfig,
    port: PathBuf,
    timing: &TimingArgs,
) -> robot_loop::RunConfig {
    let mut cfg = robot_loop::RunConfig::new(robot, port);
    cfg.spin = Duration::from_micros(timing.spin_us);
    cfg.align_phase = timing.align_phase;
    cfg.realtime = timing
        .realtime
        .then_some((timing.rt_priority, timing.rt_cpu));
    cfg.dedicated_cpu = timing.dedicated_cpu;
    cfg
}

fn cmd_run(a: RunArgs) -> Result<std::process::ExitCode> {
    // First: a SIGTERM while the bundle loads and its graphs are probed (seconds on a
    // robot's computer) killed the process by the signal; it now ends the run with
    // exit status 130 before the port is opened, as one during the handshake does.
    robot_loop::realtime::install_signal_handlers().context("installing signal handlers")?;
    let seed = run_seed(a.seed, a.sim.is_some());
    if a.seed.is_none() && a.sim.is_none() {
        eprintln!("seed {seed} (drawn at start: --seed {seed} repeats this session's draws)");
    }
    // A lockstep firmware's frames follow our commands: alignment would only push the
    // tick grid later, and the loop would run slower than its rate.
    ensure!(
        !(a.sim_lockstep && a.timing.align_phase),
        "--align-phase is for firmware that streams on its own clock, not with --sim-lockstep"
    );
    let robot = match (&a.robot, &a.sim) {
        (Some(path), _) => firmware_config::RobotConfig::load(path)?,
        (None, Some(task)) => firmware_config::RobotConfig::example(task).with_context(|| {
            let tasks: Vec<&str> = sim::TaskId::ALL.iter().map(|t| t.name()).collect();
            format!(
                "no built-in robot file for task `{task}` (--sim takes {})",
                tasks.join(", ")
            )
        })?,
        (None, None) => bail!(
            "pass --robot FILE (a robot on --port) or --sim TASK (the built-in simulated firmware)"
        ),
    };
    let robot_label = a.robot.as_ref().map_or_else(
        || format!("the built-in {} robot", robot.robot),
        |p| p.display().to_string(),
    );
    // Trust matters for bundles only (--uplink needs one, below).
    let trust = match &a.bundle {
        Some(_) => a.trust.trust()?,
        None => Trust::AllowUnsigned,
    };
    let bundle = match &a.bundle {
        None => None,
        Some(dir) => {
            let bundle = load_bundle(dir, &trust)
                .with_context(|| format!("loading bundle {}", dir.display()))?;
            check_bundle_fits(dir, &bundle, &robot, &robot_label, a.sim.as_deref())?;
            Some(bundle)
        }
    };
    let first_manifest = bundle.as_ref().map(|b| b.manifest.clone());
    if a.uplink.is_some() && bundle.is_none() {
        bail!("--uplink needs --bundle (the trainer's new bundles replace it)");
    }
    if !(a.time_scale.is_finite() && a.time_scale > 0.0) {
        bail!(
            "--time-scale must be a positive number, found {}",
            a.time_scale
        );
    }
    // Before a simulated firmware starts: its deadlines scale too, and overflowed.
    robot_loop::scaled_period(&robot, a.time_scale).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(w) = time_scale_warning(a.sim.as_deref(), a.time_scale) {
        controller::note!("warning: {w}");
    }
    // Bound before the robot is touched: an address in use fails here.
    let teleop = match &a.teleop {
        None => None,
        Some(addr) => {
            let timeout = Duration::from_millis(a.teleop_timeout_ms);
            let max = robot_loop::teleop::MAX_TIMEOUT;
            if timeout.is_zero() || timeout > max {
                bail!(
                    "--teleop-timeout-ms must be between 1 and {} (the longest the robot follows a silent device), found {}",
                    max.as_millis(),
                    a.teleop_timeout_ms
                );
            }
            let period_ms = 1e3 / (robot.control_hz as f64 * a.time_scale);
            let wait_ms = a.teleop_wait_ms;
            if !(wait_ms.is_finite() && wait_ms >= 0.0 && wait_ms <= 0.8 * period_ms) {
                bail!(
                    "--teleop-wait-ms must be between 0 and 80% of the control period ({:.3} ms at {} Hz x{}), found {wait_ms}",
                    0.8 * period_ms,
                    robot.control_hz,
                    a.time_scale
                );
            }
            let mut cfg = robot_loop::teleop::TeleopConfig::bind(addr, timeout)
                .with_context(|| format!("--teleop: listening on {addr}"))?;
            cfg.wait = Duration::from_secs_f64(wait_ms / 1e3);
            // The socket's address is the link's only access control.
            if cfg.socket.local_addr()?.ip().is_unspecified() {
                controller::note!(
                    "warning: --teleop {addr} listens on every network this computer is on: \
                     any host that reaches it can drive the robot while the device is silent \
                     (the address is the only access control); bind loopback or a private \
                     link's address"
                );
            }
            controller::note!(
                "teleop: listening on {} (datagrams: firmware_config::teleop; the device's actions move the robot while engaged, {} ms at most after its last one)",
                cfg.socket.local_addr()?,
                a.teleop_timeout_ms
            );
            Some(cfg)
        }
    };
    let options = PolicyOptions {
        backend: a.backend.parse()?,
        executed_steps: a.executed_steps,
        // A stream of its own: `--seed` also seeds the episodes' resets (with --sim,
        // the first reset's draws would otherwise be the policy's first noise).
        seed: seed ^ POLICY_STREAM,
    };
    reserve_dedicated_cpu(&a.timing);
    let play = robot_loop::PlayOptions {
        replan_every: a.replan_every,
        ensemble: a.temporal_ensemble,
    };
    let brain = match &bundle {
        Some(b) => robot_loop::Brain::with_play(b, &options, a.two_speed, play)
            .with_context(|| format!("bundle {}", b.dir.display()))?,
        None => robot_loop::Brain::Hold,
    };
    // The simulated firmware, when asked for: it lives as long as this function.
    let sim = match &a.sim {
        None => None,
        Some(task) => {
            use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
            let task: sim::TaskId = task.parse().map_err(|e| anyhow::anyhow!("--sim: {e}"))?;
            let mut o = FirmwareOptions::new(task, robot.clone());
            o.pacing = if a.sim_lockstep {
                Pacing::Lockstep
            } else {
                Pacing::RealTime
            };
            o.seed = seed;
            o.faults = a
                .sim_faults
                .parse()
                .map_err(|e| anyhow::anyhow!("--sim-faults: {e}"))?;
            Some(FirmwareThread::spawn(o, a.time_scale)?)
        }
    };
    let port = match (&sim, &a.port) {
        (Some(fw), _) => fw.path().to_path_buf(),
        (None, Some(p)) => p.clone(),
        (None, None) => PathBuf::from(&robot.serial.device),
    };
    let mut cfg = loop_config(robot, port.clone(), &a.timing);
    // A real port's line (a pty ignores the rate); 0 is refused below, with the loop's
    // other settings. The robot file's rate too, on a `--port` other than its device (it
    // was checked against that one only: a USB CDC device's, which ignores the rate).
    let baud = a.baud.unwrap_or(cfg.baud);
    if sim.is_none() && baud > 0 {
        cfg.robot
            .check_baud(&port.to_string_lossy(), baud)
            .map_err(|e| match a.baud {
                Some(_) => anyhow::anyhow!("--baud: {e}"),
                None => anyhow::anyhow!(
                    "the robot file's serial.baud on --port {}: {e} (or give --baud)",
                    port.display()
                ),
            })?;
    }
    cfg.baud = a.baud.unwrap_or(cfg.baud);
    cfg.episodes = Some(a.episodes);
    cfg.seed = seed;
    cfg.time_scale = a.time_scale;
    cfg.out = Some(a.out.clone());
    cfg.max_faults = a.max_faults;
    cfg.operator = a.operator;
    cfg.teleop = teleop;
    cfg.settings = Some(robot_loop::RunSettings {
        // (`args` panics on an argument that is not UTF-8, which a path may be.)
        command: std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        robot_file: toml::to_string(&cfg.robot).context("writing the robot file's settings")?,
        seed,
        port: port.display().to_string(),
        baud: cfg.baud,
        policy: bundle.as_ref().map(|b| robot_loop::PolicySettings {
            backend: a.backend.clone(),
            executed_steps: a
                .executed_steps
                .unwrap_or(b.manifest.diffusion.executed_steps),
            two_speed: a.two_speed,
            replan_every: a.replan_every.unwrap_or(b.manifest.action.replan_every),
            temporal_ensemble: a.temporal_ensemble,
        }),
    });
    cfg.rerun = match (&a.rerun, &a.rerun_connect) {
        (Some(f), _) => Some(robot_loop::viz::RerunTarget::File(f.clone())),
        (None, Some(addr)) => Some(robot_loop::viz::RerunTarget::Connect(addr.clone())),
        (None, None) => None,
    };
    anyhow::ensure!(
        a.success_reward.is_finite(),
        "--success-reward must be finite (got {})",
        a.success_reward
    );
    cfg.success_reward = a.success_reward;
    if let Some(addr) = &a.uplink {
        let path = a.uplink_key.as_ref().expect("clap requires --uplink-key");
        cfg.uplink = Some(robot_loop::streamer::UplinkConfig {
            addr: addr.clone(),
            key: uplink::Key::read(path)?,
            drain: Duration::from_secs(a.uplink_drain_s),
            // New bundles from the trainer are held to the same trust as --bundle.
            swap: (!a.no_swap).then(|| {
                if matches!(trust, Trust::AllowUnsigned) {
                    controller::note!(
                        "warning: --allow-unsigned with --uplink: bundles fetched from the \
                         trainer are swapped in unsigned too, so whoever holds the uplink key \
                         can run any graphs on this robot (sign them, or --no-swap)"
                    );
                }
                robot_loop::streamer::SwapConfig {
                    trust: trust.clone(),
                    options: options.clone(),
                    two_speed: a.two_speed,
                    play,
                    robot: cfg.robot.clone(),
                    simulated: a.sim.is_some(),
                    replaces: first_manifest
                        .clone()
                        .expect("--uplink needs --bundle (checked)"),
                }
            }),
        });
    }
    cfg.max_consecutive_overruns = a.max_overruns;
    cfg.reconnect = a.reconnect_ms.map(Duration::from_millis);
    cfg.handshake_timeout = Duration::from_millis(a.handshake_timeout_ms);
    cfg.quiet = a.quiet;
    cfg.panic_at_tick = a.inject_panic_at_tick;
    cfg.panic_repeats = a.inject_panic_repeats;
    cfg.slow_ticks = a.inject_slow_ticks;
    if robot_loop::realtime::stop_requested() {
        controller::note!(
            "interrupted (signal {}) before the run started: nothing was sent",
            robot_loop::realtime::stop_signal()
        );
        return Ok(std::process::ExitCode::from(130));
    }
    // What the run's records and dataset name: the bundle, else the teleop device.
    let label = match &a.bundle {
        Some(dir) => dir.display().to_string(),
        None => "teleop (no bundle)".to_string(),
    };
    controller::note!(
        "controller run: {} on '{}' via {} at {} Hz (x{} time scale), {} episodes, {}{}{}, logging to {}",
        label,
        cfg.robot.robot,
        if a.sim.is_some() {
            format!("simulated firmware on {}", port.display())
        } else {
            port.display().to_string()
        },
        cfg.robot.control_hz,
        a.time_scale,
        a.episodes,
        a.backend,
        if a.two_speed { " two-speed" } else { "" },
        brain
            .chunk_play()
            .and_then(|p| p.describe())
            .map_or(String::new(), |d| format!(", {d}")),
        a.out.display()
    );
    // The dataset's task: the bundle's, else the simulated task's, else the robot's name.
    let task = match (&bundle, &a.sim) {
        (Some(b), _) => b.manifest.task.clone(),
        (None, Some(task)) => task.clone(),
        (None, None) => cfg.robot.robot.clone(),
    };
    let report = match robot_loop::run(cfg, brain, &task, &label) {
        Err(e) => return stopped_status(e),
        Ok(r) => r,
    };
    controller::say!("{report}");
    // The same bundle in the trainer's simulator, with the same trust (a robot of its
    // own has no simulated task to compare with).
    let simulated = bundle
        .as_ref()
        .is_some_and(|b| b.manifest.task.parse::<sim::TaskId>().is_ok());
    let compare = match &a.bundle {
        Some(dir) if simulated => compare_command(dir, &a, report.bundle_swaps.len()),
        _ => String::new(),
    };
    controller::say!(
        "success rate {}/{} = {:.3} over completed episodes{compare}",
        report.successes,
        report.episodes_completed,
        report.success_rate,
    );
    let outside: u64 = report
        .episodes
        .iter()
        .map(|e| u64::from(e.outside_bounds))
        .sum();
    if outside > 0 {
        let acted: u64 = report.episodes.iter().map(|e| u64::from(e.commands)).sum();
        let episodes = report
            .episodes
            .iter()
            .filter(|e| e.outside_bounds > 0)
            .count();
        let s = if episodes == 1 { "" } else { "s" };
        controller::say!(
            "{outside} of {acted} frames acted on, in {episodes} episode{s}, had an \
             observation outside the bounds of the bundle then running (its training data's \
             range, for a robot bundle): each episode's line, and its outside_bounds_first in \
             report.json, name its first"
        );
    }
    if let Some(a) = &report.two_speed {
        controller::say!(
            "two-speed: {} plans; their base candidates were {:.2} observations old on average, {} at most",
            a.plans,
            a.mean_age,
            a.max_age
        );
    }
    if let Some(fw) = sim {
        // A firmware that cannot be stopped (its thread panicked) is said, and fails a
        // run that succeeded; the run's own status (3, 4, 130) is kept.
        let r = match fw.stop() {
            Ok(r) => r,
            Err(e) => {
                controller::note!("error: stopping the simulated firmware: {e}");
                let _ = exit_code(&report);
                return Ok(std::process::ExitCode::from(status_with_a_failed_firmware(
                    report.exit_status(),
                )));
            }
        };
        controller::say!(
            "simulated firmware: {} episodes, {} steps ({} holding), {} commands, {} invalid, {} clamped into the envelope, {} watchdog trips, {} estops",
            r.firmware.episodes,
            r.firmware.steps,
            r.firmware.hold_steps,
            r.firmware.commands,
            r.firmware.invalid_commands,
            r.firmware.envelope_clamped,
            r.firmware.watchdog_trips,
            r.firmware.estops
        );
    }
    Ok(exit_code(&report))
}

/// The warning for a `--time-scale` other than 1 on a port (none under `--sim`, whose
/// firmware runs on the run's clock): such a scale is right only for a simulated
/// firmware running at the same scale (`sim-firmware --rate-scale`). A real robot
/// streams at its own rate: a faster loop takes its sensor frames for stale (the limit
/// scales too), a slower one's commands may come too seldom for its command watchdog.
fn time_scale_warning(sim: Option<&str>, time_scale: f64) -> Option<String> {
    if sim.is_some() || time_scale == 1.0 {
        return None;
    }
    let why = if time_scale > 1.0 {
        "the run's scaled stale-sensor limit would stop it"
    } else {
        "the run's slower commands may trip its command watchdog"
    };
    Some(format!(
        "--time-scale {time_scale} on a port: only for a simulated firmware started with \
         --rate-scale {time_scale} (`sim-firmware`); a real robot streams at its own rate, and \
         {why} (drop --time-scale)"
    ))
}

/// The trainer's evaluation of the bundle this run played, as it played it (the
/// backend, denoising steps and chunk play given here), for the success rate's line;
/// what it cannot reproduce is said beside it.
fn compare_command(dir: &Path, a: &RunArgs, swaps: usize) -> String {
    let mut c = format!(
        "trainer eval --bundle {} {} --episodes {}",
        dir.display(),
        match &a.trust.trusted_key {
            Some(k) => format!("--trusted-key {}", k.display()),
            None => "--allow-unsigned".into(),
        },
        a.episodes
    );
    // `trainer eval --bundle` runs tract unless told (the run's default too).
    if a.backend != "tract" {
        c += &format!(" --backend {}", a.backend);
    }
    if let Some(n) = a.executed_steps {
        c += &format!(" --executed-steps {n}");
    }
    if let Some(n) = a.replan_every {
        c += &format!(" --replan-every {n}");
    }
    if let Some(m) = a.temporal_ensemble {
        c += &format!(" --temporal-ensemble {m}");
    }
    let mut unlike = vec![];
    if a.two_speed {
        unlike.push("it plans in step, not two-speed".to_string());
    }
    if swaps > 0 {
        unlike.push(format!(
            "this run also played {swaps} bundle(s) swapped in from the trainer"
        ));
    }
    if unlike.is_empty() {
        format!(" (compare: {c})")
    } else {
        format!(" (compare: {c}; {})", unlike.join("; "))
    }
}

/// The exit status of a run that ended with `e` before it had a report: 3 for a stop
/// button (the run ends so that no `Reset` releases it), 130 for an interrupt before the
/// run began; else the error, exit status 1.
fn stopped_status(e: robot_loop::RunError) -> Result<std::process::ExitCode> {
    let Some(code) = stopped_code(&e) else {
        return Err(e.into());
    };
    if code == 3 {
        controller::note!("error: {e}");
    } else {
        controller::note!("{e}");
    }
    Ok(std::process::ExitCode::from(code))
}

fn stopped_code(e: &robot_loop::RunError) -> Option<u8> {
    match e {
        robot_loop::RunError::EmergencyStop => Some(3),
        robot_loop::RunError::InterruptedBeforeStart(_) => Some(130),
        _ => None,
    }
}

/// A `--sim` run whose simulated firmware failed to stop: the run's own failure status
/// is kept, a success becomes 1.
fn status_with_a_failed_firmware(run: u8) -> u8 {
    if run == 0 { 1 } else { run }
}

fn exit_code(report: &robot_loop::RunReport) -> std::process::ExitCode {
    if let Some(e) = &report.error {
        controller::note!("error: {e}");
    }
    if let Some(lost) = report.recording_lost() {
        controller::note!(
            "error: the recording is incomplete ({lost}); the report's `logger` lists the \
             episodes saved and the errors ({})",
            if report.report_not_written.is_some() {
                "printed above"
            } else {
                "report.json"
            }
        );
    }
    std::process::ExitCode::from(report.exit_status())
}

fn cmd_bench_loop(a: BenchLoopArgs) -> Result<std::process::ExitCode> {
    let BenchLoopArgs {
        rate,
        seconds,
        source,
        backend,
        two_speed,
        task,
        timing,
        out,
        rerun,
    } = a;
    use hil_tests::firmware::{FirmwareOptions, FirmwareThread, Pacing};
    let task: sim::TaskId = task.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let robot = firmware_config::RobotConfig::example(task.name())
        .with_context(|| format!("no built-in robot for {task}"))?;
    // Before the bundle is written and built.
    check_rate(rate, seconds)?;
    let tmp = tempfile::tempdir()?;
    let (dir, b) = source.load(tmp.path().join("bundle"))?;
    robot_loop::check_dims(&robot, &b)?;
    let scale = rate / robot.control_hz as f64;
    let options = PolicyOptions {
        backend: backend.parse()?,
        executed_steps: None,
        seed: 7,
    };
    reserve_dedicated_cpu(&timing);
    let brain = robot_loop::Brain::new(&b, &options, two_speed)?;
    let mut fw_opts = FirmwareOptions::new(task, robot.clone());
    fw_opts.pacing = Pacing::RealTime;
    let fw = FirmwareThread::spawn(fw_opts, scale)?;
    let out_dir = out.unwrap_or_else(|| tmp.path().join("run"));
    let mut cfg = loop_config(robot, fw.path().to_path_buf(), &timing);
    cfg.episodes = None;
    cfg.duration = Some(Duration::from_secs_f64(seconds));
    cfg.time_scale = scale;
    cfg.out = Some(out_dir);
    cfg.max_faults = u32::MAX;
    cfg.max_consecutive_overruns = 0;
    cfg.quiet = true;
    cfg.rerun = rerun.map(robot_loop::viz::RerunTarget::File);
    robot_loop::realtime::install_signal_handlers().context("installing signal handlers")?;
    eprintln!(
        "bench-loop: {} {}{} on {task} at {rate} Hz (firmware clock x{scale}) for {seconds} s; firmware and loop in this process",
        dir.display(),
        backend,
        if two_speed { " two-speed" } else { "" }
    );
    let report = match robot_loop::run(cfg, brain, &b.manifest.task, &dir.display().to_string()) {
        Err(e) => return stopped_status(e),
        Ok(r) => r,
    };
    // A failed run's figures are not a benchmark's (it exited 0 with a table), nor are
    // those of a run stopped by a fault (a lost link, a stop button).
    if matches!(
        report.outcome,
        robot_loop::Outcome::Error | robot_loop::Outcome::StoppedByFault
    ) || report.report_not_written.is_some()
    {
        println!("{report}");
        bail!(
            "bench-loop: the run ended {:?}: {}",
            report.outcome,
            report
                .error
                .as_deref()
                .or(report.report_not_written.as_deref())
                .or(report.faults.last().map(|f| f.detail.as_str()))
                .unwrap_or("(no error recorded)")
        );
    }
    let fw_report = fw.stop()?;
    let c = &report.cadence;
    println!("{report}");
    // A run cut short by Ctrl-C (or SIGTERM) ends like one that ran its `--seconds`
    // (both `Interrupted`): it printed the table and exited 0, a benchmark's row of a
    // few seconds' figures.
    if robot_loop::realtime::stop_requested() {
        eprintln!(
            "bench-loop: interrupted (signal {}) before its {seconds} s: no table of a \
             partial run",
            robot_loop::realtime::stop_signal()
        );
        return Ok(std::process::ExitCode::from(130));
    }
    println!(
        "firmware: {} steps, {} hold steps, {} commands, {} watchdog trips, {} overruns",
        fw_report.firmware.steps,
        fw_report.firmware.hold_steps,
        fw_report.firmware.commands,
        fw_report.firmware.watchdog_trips,
        fw_report.firmware.overruns
    );
    println!(
        "\n| model | rate Hz (target) | commands/s | overruns | jitter p50/p99/max µs | sensor→command p50/p99/max µs | infer p50/p99/max µs | faults |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {}{} {} | {:.1} ({:.0}) | {:.1} | {} | {:.0}/{:.0}/{:.0} | {:.0}/{:.0}/{:.0} | {:.0}/{:.0}/{:.0} | {} |",
        source.label(),
        if two_speed { " two-speed" } else { "" },
        backend,
        c.effective_hz,
        c.target_hz,
        c.command_hz,
        c.overruns,
        c.jitter.p50_us,
        c.jitter.p99_us,
        c.jitter.max_us,
        c.latency.p50_us,
        c.latency.p99_us,
        c.latency.max_us,
        c.infer.p50_us,
        c.infer.p99_us,
        c.infer.max_us,
        report.faults.len()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// p50, p99 and max of `v` (seconds) in microseconds.
fn percentiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] * 1e6;
    (at(0.5), at(0.99), v[v.len() - 1] * 1e6)
}

/// Single-thread sgemm rate, GFLOP/s: a 256x1024 · 1024x1024 product run by tract's
/// tuned matrix kernels (best of 5), and the same product with our native kernel.
fn measure_gemm_rates() -> Result<(f64, f64)> {
    use shared_model::onnx::{DATA_TYPE_FLOAT, Dim, GraphBuilder};
    use tract_onnx::prelude::*;
    let (m, k, n) = (256usize, 1024usize, 1024usize);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut g = GraphBuilder::new("sgemm");
    let xi = g.input("x", DATA_TYPE_FLOAT, &[Dim::Fixed(m), Dim::Fixed(k)]);
    let wi = g.floats("w", &[k, n], &w);
    let y = g.node("MatMul", &[&xi, &wi], &[]);
    g.output(&y, "y", DATA_TYPE_FLOAT, &[Dim::Fixed(m), Dim::Fixed(n)]);
    let bytes = g.finish("sgemm rate probe").to_bytes();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])?
        .into_optimized()?
        .into_runnable()?;
    let mut state = TypedSimpleState::new(&plan)?;
    let input = Tensor::from_shape(&[m, k], &x)?;
    let flops = 2.0 * (m * k * n) as f64;
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = Instant::now();
        std::hint::black_box(state.run(tvec![input.clone().into()])?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let tract_rate = flops / best / 1e9;
    let mut out = vec![0.0; m * n];
    let packed = controller::runtime::PackedWeights::new(&w, k, n);
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = Instant::now();
        controller::runtime::dense_kernel(&x, m, &packed, None, false, &mut out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&out);
    Ok((tract_rate, flops / best / 1e9))
}

/// Weight bytes one action streams (f32 weights).
fn weight_bytes_per_action(m: &shared_model::Manifest, executed: usize) -> f64 {
    4.0 * m.weights_per_action(executed) as f64
}

/// Single-thread read bandwidth (GB/s) over a buffer of `bytes` (best of 20 passes):
/// the rate at which one core can stream weights that do not fit its L2.
fn measure_read_bandwidth(bytes: usize) -> f64 {
    let v: Vec<f32> = (0..bytes / 4).map(|i| i as f32).collect();
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t = Instant::now();
        // 16 independent partial sums so the loop is load-bound, not add-latency-bound.
        let mut acc = [0.0f32; 16];
        for c in v.chunks_exact(16) {
            for (a, x) in acc.iter_mut().zip(c) {
                *a += x;
            }
        }
        std::hint::black_box(acc);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
}

struct Row {
    label: String,
    total: (f64, f64, f64),
    stages: [(f64, f64, f64); 3],
    flops: u64,
    weight_bytes: f64,
}

fn run_policy(policy: &mut Policy, actions: usize) -> Result<[Vec<f64>; 4]> {
    let od = policy.obs_dim();
    let mut a = vec![0.0; policy.chunk_dim()];
    let mut obs = vec![0.0; od];
    let mut out: [Vec<f64>; 4] = std::array::from_fn(|_| Vec::with_capacity(actions));
    for i in 0..actions + 50 {
        for (j, o) in obs.iter_mut().enumerate() {
            *o = ((i * 31 + j) as f32 * 0.01).sin();
        }
        policy.act(&obs, &mut a)?;
        if i >= 50 {
            let t = policy.times;
            out[0].push(t.total);
            out[1].push(t.denoise);
            out[2].push(t.edit);
            out[3].push(t.score);
        }
    }
    Ok(out)
}

/// The highest control rate the benches take: the fastest a robot file can ask for
/// (`MAX_CONTROL_HZ`, the loop's shortest period). It was the handshake's `u16`:
/// `bench-loop --rate 20000` passed here and was refused later by the loop, naming a
/// time scale instead of `--rate`.
const MAX_RATE_HZ: f64 = firmware_config::config::MAX_CONTROL_HZ as f64;

/// What a bundle must fit on the robot file before anything runs (`controller run`, and
/// `controller check --robot`): its sizes and rate, the simulated task it was trained on
/// (`sim`: `--sim TASK`), its observation and action names (another order refused, other
/// spellings printed) and its action mapping (format 7). `robot_label` names the robot
/// file in the messages.
fn check_bundle_fits(
    dir: &Path,
    bundle: &VerifiedBundle,
    robot: &firmware_config::RobotConfig,
    robot_label: &str,
    sim: Option<&str>,
) -> Result<()> {
    robot_loop::check_dims(robot, bundle)
        .and_then(|()| robot_loop::check_rate(robot, bundle))
        .with_context(|| format!("{} does not fit {robot_label}", dir.display()))?;
    let trained_on = &bundle.manifest.task;
    if let Some(task) = sim
        && trained_on != task
        && trained_on.parse::<sim::TaskId>().is_ok()
    {
        bail!(
            "{}: the bundle was trained on the simulated task {trained_on}, --sim runs {task}",
            dir.display()
        );
    }
    let names = &bundle.manifest.observation.names;
    if let Some(e) = robot.observation.names_reordered(names, "the bundle") {
        bail!("{} does not fit {robot_label}: {e}", dir.display());
    }
    let unnamed = dataset::unnamed_observations;
    if unnamed(names) && !unnamed(&robot.observation.names) {
        // Trained on data that named none (`observation.state.{i}`): nothing to compare.
        controller::note!(
            "note: {}: the bundle names no observations (its training data named none), so \
             their order is unchecked: the policy takes the robot's Sensor values in the \
             order the frame carries them, assumed to be the order it learned; fine-tuning on \
             this robot's recordings gives it their names ({})",
            dir.display(),
            robot.observation.names.join(", ")
        );
    } else if let Some(w) = robot.observation.names_differ(names, "the bundle") {
        controller::note!("warning: {}: {w}", dir.display());
    }
    // The actions likewise, where both name them (format 6; robot files name them
    // optionally): a command in another order drives other joints.
    match robot_loop::check_action_names(robot, &bundle.manifest) {
        Err(e) => bail!("{} does not fit {robot_label}: {e}", dir.display()),
        Ok(Some((kind, say))) => controller::note!("{kind}: {}: {say}", dir.display()),
        Ok(None) => {}
    }
    // And what those actions meant on the robot (format 7): a robot file whose
    // mapping changed since the data was recorded commands the robot otherwise.
    match robot_loop::check_action_mapping(robot, &bundle.manifest) {
        // The simulated firmware maps commands back through the same robot file:
        // there the mapping cancels out.
        Err(e) if sim.is_some() => controller::note!(
            "warning: {}: {e} (no difference under --sim: the simulated firmware \
             maps the commands back with the same robot file)",
            dir.display()
        ),
        Err(e) => bail!("{} does not fit {robot_label}: {e}", dir.display()),
        Ok(Some(say)) => controller::note!("note: {}: {say}", dir.display()),
        Ok(None) => {}
    }
    if bundle.manifest.action.control_hz.is_none() {
        controller::note!(
            "warning: {}: the bundle does not say the rate it was trained at (format \
             {}, before 5): it runs at the robot file's {} Hz unchecked; export it \
             again to have it checked",
            dir.display(),
            bundle.manifest.format_version,
            robot.control_hz
        );
    }
    Ok(())
}

/// The benches' `--rate` (in (0, [`MAX_RATE_HZ`]]) and `--seconds` (finite, positive).
fn check_rate(rate: f64, seconds: f64) -> Result<()> {
    // A tick at least once a minute, and at most a day of it.
    ensure!(
        (1.0 / 60.0..=MAX_RATE_HZ).contains(&rate) && seconds > 0.0 && seconds <= 86_400.0,
        "--rate must be in [1/60, {MAX_RATE_HZ}] Hz and --seconds in (0, 86400], found {rate} \
         and {seconds}"
    );
    Ok(())
}

/// `bench-wake`: a loop that only sleeps to its deadlines, on a thread set up like the
/// control thread (timer slack, optionally a dedicated CPU).
fn cmd_bench_wake(rate: f64, seconds: f64, spin_us: u64, cpu: Option<usize>) -> Result<()> {
    use robot_loop::{realtime, stats::Histogram};
    check_rate(rate, seconds)?;
    let period = Duration::from_secs_f64(1.0 / rate);
    let reserved = cpu.map(realtime::reserve_cpu);
    let probe = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            realtime::tight_timer_slack();
            let mut steps = vec![];
            let mut spin = Duration::from_micros(spin_us);
            if let (Some(cpu), Some(reserved)) = (cpu, reserved) {
                let (dedicated, busy_wait) = realtime::dedicate_cpu(cpu, reserved);
                if busy_wait {
                    spin = period;
                }
                steps = dedicated;
            }
            let ticks = (seconds * rate).ceil() as u64;
            let mut late = Histogram::new();
            let (mut over_200us, mut over_1ms, mut overruns) = (0u64, 0u64, 0u64);
            let mut deadline = Instant::now() + period;
            for _ in 0..ticks {
                robot_loop::control::sleep_until(deadline, spin);
                let woke = Instant::now();
                let l = woke - deadline;
                late.record(l);
                over_200us += u64::from(l > Duration::from_micros(200));
                over_1ms += u64::from(l > Duration::from_millis(1));
                // Late past the next deadline: a loop doing no work at all overran.
                // The deadlines a late wake-up passed are skipped, as the control loop
                // skips them (catching up ran them back to back, each counted late).
                let (next, missed) =
                    robot_loop::control::skip_missed(deadline + period, woke, period);
                overruns += missed;
                deadline = next;
            }
            (steps, ticks, late.summary(), over_200us, over_1ms, overruns)
        })?;
    let (steps, ticks, late, over_200us, over_1ms, overruns) = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    for s in &steps {
        println!("{s}");
    }
    let minutes = seconds / 60.0;
    println!(
        "bench-wake at {rate} Hz for {seconds} s ({ticks} ticks): late p50/p99/max {:.0}/{:.0}/{:.0} µs; late > 200 µs {over_200us} ({:.1}/min), > 1 ms {over_1ms} ({:.1}/min), past the next deadline {overruns} ({:.1}/min)",
        late.p50_us,
        late.p99_us,
        late.max_us,
        over_200us as f64 / minutes,
        over_1ms as f64 / minutes,
        overruns as f64 / minutes,
    );
    Ok(())
}

fn main() -> Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Run(a) => return cmd_run(*a),
        Command::BenchLoop(a) => return cmd_bench_loop(*a),
        Command::BenchWake {
            rate,
            seconds,
            spin_us,
            dedicated_cpu,
        } => cmd_bench_wake(rate, seconds, spin_us, dedicated_cpu)?,
        Command::LogToDataset {
            log,
            out,
            last_run,
            run,
        } => {
            // A run's directory given for its dataset: the dataset's own refusal ("not
            // empty") would not say which directory was meant.
            if out.join("transitions.log").is_file() {
                bail!(
                    "--out {}: a controller run's directory (it holds transitions.log), not a \
                     dataset: its dataset is --out {}",
                    out.display(),
                    out.join("dataset").display()
                );
            }
            if !run.is_empty() {
                let s = if run.len() == 1 { "" } else { "s" };
                eprintln!("note: converting run{s} {} only", run.join(", "));
            } else if last_run {
                eprintln!(
                    "note: converting the log's last run only: the episodes of a run killed \
                     before it saved them"
                );
            } else if out.join("meta").join("info.json").is_file() {
                eprintln!(
                    "note: {} already holds a dataset: the log's runs it does not note are \
                     appended (the runs it notes saved their episodes there, or were \
                     converted before, and are left out)",
                    out.display()
                );
            }
            let by_id = !run.is_empty();
            let runs = if by_id {
                robot_loop::log::Runs::Only(run.clone())
            } else if last_run {
                robot_loop::log::Runs::Last
            } else {
                robot_loop::log::Runs::All
            };
            let r = robot_loop::log::log_to_dataset(&log, &out, runs)?;
            if r.already_saved && by_id {
                let (s, them) = if run.len() == 1 {
                    ("", "it")
                } else {
                    ("s", "them")
                };
                println!(
                    "{}: run{s} {}: already in {} (the dataset notes {them}: saved at the \
                     run's end, or converted before); nothing written",
                    log.display(),
                    run.join(", "),
                    out.display()
                );
                return Ok(std::process::ExitCode::SUCCESS);
            }
            if r.already_saved {
                println!(
                    "{}: the last run's episodes are in {} already (the dataset notes the \
                     run: it ended and saved them, or they were converted before); nothing \
                     written",
                    log.display(),
                    out.display()
                );
                return Ok(std::process::ExitCode::SUCCESS);
            }
            if r.skipped_saved > 0 && last_run {
                println!(
                    "{}: {} of the last run's episodes are in {} already (the run saved them \
                     before it lost or left others); the rest follow",
                    log.display(),
                    r.skipped_saved,
                    out.display()
                );
            } else if r.skipped_saved > 0 {
                println!(
                    "{}: {} episodes are in {} already, left out: those of the {} runs it \
                     notes (they ended and saved them, or were converted before), and those \
                     that runs which saved only some noted",
                    log.display(),
                    r.skipped_saved,
                    out.display(),
                    r.runs_saved
                );
            }
            if r.unmapped_runs > 0 {
                eprintln!(
                    "warning: {}: {} of the runs converted recorded no action mapping (a \
                     controller from before 2026-12-07): what their actions meant on the \
                     robot was compared with nothing, unlike the dataset's or other runs'",
                    log.display(),
                    r.unmapped_runs
                );
            }
            if r.unknown_run {
                eprintln!(
                    "warning: {}: a run has no id (a log of an older version): if it ended and \
                     saved its episodes into {}, they are there twice now",
                    log.display(),
                    out.display()
                );
            }
            println!(
                "{}: {} episodes ({} frames) written to {}; {} without an end record, {} without usable transitions, {} torn bytes at the end skipped",
                log.display(),
                r.episodes_written,
                r.frames,
                out.display(),
                r.unfinished,
                r.skipped_empty,
                r.torn_bytes
            );
            if !r.damaged.is_empty() {
                let bytes: u64 = r.damaged.iter().map(|d| d.len).sum();
                let at: Vec<String> = r.damaged.iter().map(|d| d.offset.to_string()).collect();
                eprintln!(
                    "warning: {}: {} damaged stretch(es) of {bytes} bytes in all, at byte {}, skipped; the records around them were kept, and {} steps of the written episodes have no transition",
                    log.display(),
                    r.damaged.len(),
                    at.join(", "),
                    r.missing_frames
                );
            }
        }
        Command::Check {
            bundle,
            robot,
            trust,
            backends,
        } => {
            let b = load_bundle(&bundle, &trust.trust()?)?;
            let m = &b.manifest;
            let rows = GraphRows::for_manifest(m);
            let mut nets = Vec::new();
            for name in &backends {
                let backend: Backend = name.parse()?;
                let built = load_networks(backend, &b, rows)
                    .with_context(|| format!("{}: on the {name} backend", bundle.display()))?;
                nets.push((name.clone(), built));
            }
            // On this computer's CPU, whose kernels may differ from the trainer's: the
            // backends must compute the same graphs (a bundle runs on any of them).
            let differences = controller::runtime::backend_differences(&mut nets, m, rows)
                .with_context(|| format!("{}: comparing the backends", bundle.display()))?;
            for d in &differences {
                println!(
                    "{} against {}: {} differs by at most {:.2e} (scale {:.3})",
                    d.backend, backends[0], d.graph, d.max_abs, d.scale
                );
            }
            if let Some(d) = differences.iter().find(|d| !d.within_tolerance()) {
                bail!(
                    "{}: the {} backend's {} differs from {}'s by {:.3e}, more than {} of \
                     its scale {:.3}: one of them computes the graph otherwise (a kernel or \
                     engine bug); compare a third backend (--backends tract,native,ort, \
                     with the ort feature) and run on those that agree, or report it",
                    bundle.display(),
                    d.backend,
                    d.graph,
                    backends[0],
                    d.max_abs,
                    controller::runtime::BACKEND_TOLERANCE,
                    d.scale
                );
            }
            println!(
                "{}: OK ({}), format {}, {} on {}: obs {}, action {}{}, N {}, n_edit {}, K {}/{} critics, {}/{} steps; trained by {} at {} env steps from {}",
                bundle.display(),
                match (
                    &b.signed_by,
                    b.dir.join(shared_model::manifest::SIGNATURE_FILE).exists()
                ) {
                    (Some(k), _) => format!("signed by {k}"),
                    (None, true) => "signature not checked: --allow-unsigned".to_string(),
                    (None, false) => "unsigned".to_string(),
                },
                m.format_version,
                m.algo,
                m.task,
                m.observation.dim,
                m.action.dim,
                if m.action.horizon > 1 {
                    format!(" in chunks of {}", m.action.horizon)
                } else {
                    String::new()
                },
                m.selection.num_samples,
                m.selection.num_edit,
                m.selection.critic_subset,
                m.selection.ensemble_size,
                m.diffusion.executed_steps,
                m.diffusion.trained_steps,
                m.provenance.git_revision,
                m.provenance.env_steps,
                m.provenance.dataset
            );
            let a = &m.action;
            let names = if a.names.is_empty() {
                "none (before format 6)".to_string()
            } else {
                a.names.join(", ")
            };
            let mapping = if a.robot_scale.is_empty() {
                "none recorded (a simulated task's, or data from before format 7)".to_string()
            } else {
                format!("scale {:?}, offset {:?}", a.robot_scale, a.robot_offset)
            };
            println!("actions named: {names}; recorded robot mapping: {mapping}");
            if let Some(path) = robot {
                let robot = firmware_config::RobotConfig::load(&path)?;
                let label = path.display().to_string();
                check_bundle_fits(&bundle, &b, &robot, &label, None)?;
                let hello = robot.hello();
                println!(
                    "fits {label} (robot '{}'): the firmware must announce robot id {:#010x} \
                     and settings hash {:#010x} (`tools robot {label}` prints what they hash)",
                    robot.robot, hello.robot_id, hello.settings_hash
                );
            }
        }
        Command::Bench {
            source,
            backends,
            actions,
            truncated_steps,
            keep,
        } => {
            let actions = actions as usize;
            let tmp = tempfile::tempdir()?;
            if let Some(k) = &keep {
                // Random weights must never replace a trained bundle.
                let empty = std::fs::read_dir(k).map_or(true, |mut d| d.next().is_none());
                ensure!(
                    empty,
                    "--keep {}: exists and is not empty; give a new directory for the \
                     synthetic bundle",
                    k.display()
                );
            }
            let (dir, b) = source.load(keep.unwrap_or_else(|| tmp.path().join("bundle")))?;
            let m = &b.manifest;
            // Refuse bad flags before the seconds of calibration below.
            let backends = backends
                .iter()
                .map(|name| Ok((name, name.parse::<Backend>()?)))
                .collect::<Result<Vec<_>>>()?;
            #[cfg(not(feature = "ort"))]
            ensure!(
                !backends.iter().any(|&(_, b)| b == Backend::Ort),
                "--backends ort: this controller was built without the `ort` feature; rebuild with `--features ort`"
            );
            let truncated_steps = truncated_steps.unwrap_or(3.min(m.diffusion.trained_steps));
            ensure!(
                (1..=m.diffusion.trained_steps).contains(&truncated_steps),
                "--truncated-steps {truncated_steps} must be in 1..={} (the bundle's trained chain length)",
                m.diffusion.trained_steps
            );
            let (rate, native_rate) = measure_gemm_rates()?;
            println!(
                "bundle {}: denoiser {}x{} blocks ({} wide), N {}, n_edit {}, {} of {} critics ({:?}), {} steps",
                dir.display(),
                m.networks.denoiser_hidden,
                m.networks.denoiser_blocks,
                m.networks.denoiser_expanded,
                m.selection.num_samples,
                m.selection.num_edit,
                m.selection.critic_subset,
                m.selection.ensemble_size,
                m.networks.critic_widths,
                m.diffusion.executed_steps
            );
            println!(
                "single-core sgemm 256x1024x1024: tract {rate:.1} GFLOP/s (the compute limit uses this), native {} kernel {native_rate:.1} GFLOP/s; {actions} actions per row, one thread, batch-1 observation",
                kernel_name()
            );
            let per_step = weight_bytes_per_action(m, 1) - weight_bytes_per_action(m, 0);
            let bandwidth = measure_read_bandwidth(per_step as usize);
            println!(
                "weights: {:.1} MB per denoising step; single-core read bandwidth over that size {bandwidth:.1} GB/s (memory floor = weight bytes per action / bandwidth)",
                per_step / 1e6
            );
            let mut rows: Vec<Row> = vec![];
            for &(name, backend) in &backends {
                for (mode, steps) in [
                    // The whole trained chain (a bundle may execute fewer by default).
                    ("full", m.diffusion.trained_steps),
                    ("truncated", truncated_steps),
                ] {
                    let options = PolicyOptions {
                        backend,
                        executed_steps: Some(steps),
                        seed: 7,
                    };
                    let mut p = Policy::new(&b, &options)?;
                    let mut t = run_policy(&mut p, actions)?;
                    rows.push(Row {
                        label: format!("{name} {mode} ({steps} steps)"),
                        total: percentiles(&mut t[0]),
                        stages: [
                            percentiles(&mut t[1]),
                            percentiles(&mut t[2]),
                            percentiles(&mut t[3]),
                        ],
                        flops: m.action_flops(steps).total(),
                        weight_bytes: weight_bytes_per_action(m, steps),
                    });
                }
                // (With action chunks, the tick that plans a chunk.)
                if m.selection.critic_subset > 0 {
                    // Two-speed: the tick's own cost (edit + select), worker on another core.
                    let mut two = TwoSpeedPolicy::new(
                        &b,
                        &PolicyOptions {
                            backend,
                            executed_steps: None,
                            seed: 7,
                        },
                    )?;
                    let od = m.observation.dim;
                    let mut a = vec![0.0; m.action.chunk_dim()];
                    let mut obs = vec![0.0; od];
                    let mut tick = Vec::with_capacity(actions);
                    let mut stages: [Vec<f64>; 2] =
                        std::array::from_fn(|_| Vec::with_capacity(actions));
                    for i in 0..actions + 50 {
                        for (j, o) in obs.iter_mut().enumerate() {
                            *o = ((i * 31 + j) as f32 * 0.01).sin();
                        }
                        let start = Instant::now();
                        two.act(&obs, &mut a)?;
                        let dt = start.elapsed().as_secs_f64();
                        if i >= 50 {
                            tick.push(dt);
                            stages[0].push(two.policy().times.edit);
                            stages[1].push(two.policy().times.score);
                        }
                    }
                    let f = m.action_flops(0);
                    rows.push(Row {
                        label: format!("{name} two-speed tick"),
                        total: percentiles(&mut tick),
                        stages: [
                            (0.0, 0.0, 0.0),
                            percentiles(&mut stages[0]),
                            percentiles(&mut stages[1]),
                        ],
                        flops: f.edit + f.score,
                        weight_bytes: weight_bytes_per_action(m, 0),
                    });
                }
            }
            println!(
                "\n| run | MFLOP | compute limit µs | memory floor µs | p50 µs | p99 µs | max µs | p99 / limit | denoise p50/p99 | edit p50/p99 | select p50/p99 |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &rows {
                let limit = r.flops as f64 / (rate * 1e9) * 1e6;
                let floor = r.weight_bytes / (bandwidth * 1e9) * 1e6;
                println!(
                    "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0}/{:.0} | {:.0}/{:.0} | {:.0}/{:.0} |",
                    r.label,
                    r.flops as f64 / 1e6,
                    limit,
                    floor,
                    r.total.0,
                    r.total.1,
                    r.total.2,
                    r.total.1 / limit,
                    r.stages[0].0,
                    r.stages[0].1,
                    r.stages[1].0,
                    r.stages[1].1,
                    r.stages[2].0,
                    r.stages[2].1
                );
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--uplink`: `HOST:PORT` (an IPv6 address in brackets, a port from 1 to 65535),
/// checked as the flag is read. It was resolved only by the streamer, after the
/// handshake: `10.0.0.2` without a port ran every episode retrying an address that
/// could never connect, then drained for 30 s. (Names are resolved when connecting: a
/// trainer's host may come up later.)
fn uplink_address(raw: &str) -> Result<String, String> {
    // An IPv6 address is parsed whole (a zone as a number: `[fe80::1%2]:7878`); a
    // name in brackets never resolves.
    if raw.starts_with('[') {
        return raw
            .parse::<std::net::SocketAddr>()
            .map(|_| raw.to_string())
            .map_err(|_| {
                "expected [IPV6-ADDRESS]:PORT (a zone as a number, [fe80::1%2]:7878)".into()
            });
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err("no port: give HOST:PORT, e.g. 10.0.0.2:7878".into());
    };
    if host.is_empty() {
        return Err("no host: give HOST:PORT, e.g. 10.0.0.2:7878".into());
    }
    if host.contains(':') {
        return Err("an IPv6 address goes in brackets: [ADDRESS]:PORT".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(raw.to_string()),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_addresses_are_checked_as_the_flag_is_read() {
        for good in [
            "10.0.0.2:7878",
            "trainer.local:7878",
            "[::1]:7878",
            "[fe80::1%2]:7878",
        ] {
            assert_eq!(super::uplink_address(good).as_deref(), Ok(good));
        }
        for (bad, why) in [
            ("10.0.0.2", "no port"),
            (":7878", "no host"),
            ("::1", "in brackets"),
            ("host:0", "port \"0\" is not a number from 1 to 65535"),
            ("host:99999", "port \"99999\""),
            ("host:", "port \"\""),
            ("[::1]", "expected [IPV6-ADDRESS]:PORT"),
            ("[fe80::1%eth0]:7878", "a zone as a number"),
            ("[10.0.0.2]:7878", "expected [IPV6-ADDRESS]:PORT"),
        ] {
            let e = super::uplink_address(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut args = vec![
            "controller",
            "run",
            "--robot",
            "robot.toml",
            "--bundle",
            "out/bundle",
            "--trusted-key",
            "keys/expo.pub",
            "--episodes",
            "20",
        ];
        args.extend_from_slice(extra);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(a) => *a,
            _ => unreachable!(),
        }
    }

    /// The printed comparison evaluates the policy as this run played it: it left out
    /// the denoising steps and the chunk play given to the run, and the backend.
    #[test]
    fn the_comparison_plays_the_bundle_as_the_run_did() {
        let a = run_args(&[
            "--backend",
            "native",
            "--executed-steps",
            "2",
            "--replan-every",
            "1",
            "--temporal-ensemble",
            "0.01",
        ]);
        let c = compare_command(Path::new("out/bundle"), &a, 0);
        assert_eq!(
            c,
            " (compare: trainer eval --bundle out/bundle --trusted-key keys/expo.pub \
             --episodes 20 --backend native --executed-steps 2 --replan-every 1 \
             --temporal-ensemble 0.01)"
        );
        // The default backend is the trainer's default: not named.
        let c = compare_command(Path::new("out/bundle"), &run_args(&[]), 0);
        assert!(!c.contains("--backend"), "{c}");
        let a = run_args(&["--two-speed"]);
        let c = compare_command(Path::new("out/bundle"), &a, 2);
        assert!(c.contains("not two-speed"), "{c}");
        assert!(c.contains("2 bundle(s) swapped in"), "{c}");
        assert!(!c.contains("--executed-steps"), "{c}");
    }

    /// A scaled clock on a port is said to be for a simulated firmware only: a real
    /// robot's frames would all look stale to a faster one, and a slower one's
    /// commands may trip its watchdog. Under `--sim` (the firmware takes the run's
    /// clock) and at scale 1 nothing is said.
    #[test]
    fn a_scaled_clock_on_a_port_is_warned_of() {
        let w = time_scale_warning(None, 10.0).unwrap();
        assert!(
            w.contains("--time-scale 10 on a port") && w.contains("--rate-scale 10"),
            "{w}"
        );
        assert!(w.contains("stale-sensor limit"), "{w}");
        let w = time_scale_warning(None, 0.5).unwrap();
        assert!(w.contains("command watchdog"), "{w}");
        assert_eq!(time_scale_warning(Some("push"), 10.0), None);
        assert_eq!(time_scale_warning(None, 1.0), None);
    }

    /// A stop button and an interrupt before the run began have their own statuses in
    /// `run` and `bench-loop` alike (`bench-loop` exited 1 on Ctrl-C in the handshake);
    /// a firmware that failed to stop keeps a failed run's status.
    #[test]
    fn runs_stopped_before_their_report_have_their_own_statuses() {
        assert_eq!(stopped_code(&robot_loop::RunError::EmergencyStop), Some(3));
        assert_eq!(
            stopped_code(&robot_loop::RunError::InterruptedBeforeStart(String::new())),
            Some(130)
        );
        assert_eq!(status_with_a_failed_firmware(0), 1);
        assert_eq!(status_with_a_failed_firmware(3), 3);
        assert_eq!(status_with_a_failed_firmware(130), 130);
    }
}
