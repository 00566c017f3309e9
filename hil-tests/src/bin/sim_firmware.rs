//! `sim-firmware`: a simulated robot behind the wire protocol, on a pseudo-terminal or
//! a serial device. See the `hil-tests` crate docs.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use firmware_config::RobotConfig;
use hil_tests::faults::FaultSpec;
use hil_tests::firmware::{FirmwareOptions, Pacing, SimFirmware, other_robots_observation, run};
use hil_tests::link::{Port, Pty, SerialLink};
use sim::{EnvConfig, Reward, TaskId};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The longest `--max-seconds`: a year.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Simulated robot firmware speaking the EXPO wire protocol"
)]
struct Args {
    /// Task to simulate: arm-reach, push or maze.
    #[arg(long)]
    task: TaskId,
    /// Robot config (TOML). Default: the task's built-in file from firmware-config/robots.
    #[arg(long)]
    robot: Option<PathBuf>,
    /// Seed for fault injection and simulated reboots (episodes take the seed of `Reset`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Open a pseudo-terminal and print `PTY <slave path>` as the first line of stdout.
    #[arg(long)]
    pty: bool,
    /// Serial device to open instead of a pty.
    #[arg(long)]
    device: Option<PathBuf>,
    /// Baud rate for --device (default: the robot file's serial.baud).
    #[arg(long)]
    baud: Option<u32>,
    /// Step as soon as a command arrives instead of once per control period.
    #[arg(long)]
    lockstep: bool,
    /// Run the firmware's clock this many times faster than the wall clock.
    #[arg(long, default_value_t = 1.0)]
    rate_scale: f64,
    /// Override the robot file's command_timeout_ms (within the same bounds: at least
    /// two control periods, at most 60 s).
    #[arg(long)]
    command_timeout_ms: Option<u64>,
    /// Fault injection spec, e.g. `seed=3,after=4,flip=0.001,stall_after=40:500`.
    #[arg(long, default_value = "")]
    faults: FaultSpec,
    /// Reward shaping: sparse or dense.
    #[arg(long, default_value = "sparse", value_parser = parse_reward)]
    reward: Reward,
    /// arm-reach only: vertical arm under gravity.
    #[arg(long)]
    gravity: bool,
    /// Exit after this many seconds (default: run until killed).
    #[arg(long)]
    max_seconds: Option<f64>,
}

fn parse_reward(s: &str) -> Result<Reward, String> {
    match s {
        "sparse" => Ok(Reward::Sparse),
        "dense" => Ok(Reward::Dense),
        _ => Err(format!("expected sparse or dense, found '{s}'")),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The bounds keep the firmware's clock arithmetic (Duration × scale) in range.
    if !(1e-3..=1e4).contains(&args.rate_scale) {
        bail!(
            "--rate-scale must be between 0.001 and 10000, found {}",
            args.rate_scale
        );
    }
    if let Some(b) = args.baud {
        ensure!(b > 0, "--baud must be above zero");
    }
    if let Some(s) = args.max_seconds {
        // Bounded (a year): past about 1.8e19 s a `Duration` overflows, and the timer
        // thread panicked, leaving the firmware running without its limit.
        ensure!(
            s.is_finite() && (0.0..=MAX_SECONDS).contains(&s),
            "--max-seconds must be a number of seconds from 0 to {MAX_SECONDS}, found {s}"
        );
    }
    let built_in = RobotConfig::example(args.task.name())
        .with_context(|| format!("no built-in robot file for task {}", args.task))?;
    let robot = match &args.robot {
        Some(path) => {
            let robot = RobotConfig::load(path)?;
            // Named by the file here (the firmware refuses it too, by the robot's name).
            // Other sizes are refused below, by the firmware, with the sizes named.
            if let Some((i, ours)) = other_robots_observation(&robot, args.task)
                .filter(|_| robot.observation.names.len() == built_in.observation.names.len())
            {
                bail!(
                    "{}: observation [{i}] is `{}`, task {}'s is `{ours}`: this file describes another robot than the task simulates",
                    path.display(),
                    robot.observation.names[i],
                    args.task,
                );
            }
            robot
        }
        None => built_in,
    };
    // The override is held to the robot file's bounds: 1 ms tripped the watchdog
    // between every two commands, and an hour was no watchdog at all.
    if let Some(ms) = args.command_timeout_ms {
        robot
            .check_command_timeout(ms)
            .map_err(|m| anyhow::anyhow!("--command-timeout-ms {m}"))?;
    }
    if args.pty == args.device.is_some() {
        bail!("give exactly one of --pty and --device PATH");
    }
    let baud = args.baud.unwrap_or(robot.serial.baud);
    let robot_name = robot.robot.clone();
    let opts = FirmwareOptions {
        task: args.task,
        env: EnvConfig {
            reward: args.reward,
            gravity: args.gravity,
        },
        robot,
        pacing: if args.lockstep {
            Pacing::Lockstep
        } else {
            Pacing::RealTime
        },
        command_timeout: args.command_timeout_ms.map(Duration::from_millis),
        seed: args.seed,
        faults: args.faults.clone(),
        record: false,
    };
    let mut fw = SimFirmware::new(opts)?;
    let mut port: Box<dyn Port> = match &args.device {
        Some(dev) => Box::new(
            SerialLink::open(dev, baud).with_context(|| format!("opening {}", dev.display()))?,
        ),
        None => {
            let pty = Pty::open().context("opening a pseudo-terminal")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "PTY {}", pty.path().display())?;
            out.flush()?;
            Box::new(pty.into_port())
        }
    };
    eprintln!(
        "sim-firmware: task {}, robot '{}' (robot id {:#010x}, settings hash {:#010x}), {} Hz, {}, \
         rate scale {}, faults '{}'",
        args.task,
        robot_name,
        fw.hello().robot_id,
        fw.hello().settings_hash,
        fw.hello().control_hz,
        if args.lockstep {
            "lockstep"
        } else {
            "real time"
        },
        args.rate_scale,
        if args.faults.is_clean() { "none" } else { "on" },
    );
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(secs) = args.max_seconds {
        let flag = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.0, MAX_SECONDS)));
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let report = run(&mut fw, port.as_mut(), args.rate_scale, &stop)?;
    let (f, d) = (&report.firmware, &report.decoder);
    eprintln!(
        "sim-firmware: stopped after {} handshakes ({} refused), {} episodes, {} steps ({} holding, {} slew limited), {} commands ({} invalid, {} clamped into the envelope), {} watchdog trips, {} e-stops, {} frame errors ({} CRC), {} overruns, {} bytes dropped unread",
        f.handshakes,
        f.handshake_refusals,
        f.episodes,
        f.steps,
        f.hold_steps,
        f.slew_limited,
        f.commands,
        f.invalid_commands,
        f.envelope_clamped,
        f.watchdog_trips,
        f.estops,
        f.frame_errors,
        d.crc_errors,
        f.overruns,
        report.link_dropped_bytes
    );
    if !args.faults.is_clean() {
        eprintln!("sim-firmware: injected faults: {:?}", report.faults);
    }
    Ok(())
}
