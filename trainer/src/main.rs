//! `trainer`: EXPO and baselines on the simulated tasks.

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use controller::cli::TrustArgs;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use trainer::config::Config;
use trainer::run::{Progress, TrainOptions, train};

#[derive(Parser)]
#[command(
    name = "trainer",
    about = "Train EXPO (and baselines) on the simulated tasks or a robot's recorded data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that builds a configuration.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Preset to start from: `cpu` (default, 2 CPU cores), `paper` (GPU budget), `tiny`.
    #[arg(long)]
    preset: Option<String>,
    /// A TOML file applied over the preset; a whole config (a run's `config.toml`) is
    /// taken as it is instead, with the defaults of keys added since it was written.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dotted overrides applied last, e.g. `--set algo=rlpd --set expo.num_samples=8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Device: `cpu` (default), `ndarray`, `vulkan[:N]`, `cuda[:N]` (all but `cpu` need the
    /// matching cargo feature). Same as `--set device=...` (refused together).
    #[arg(long)]
    device: Option<String>,
}

impl ConfigArgs {
    fn resolve(&self) -> Result<Config> {
        let mut overrides = self.overrides.clone();
        if let Some(d) = &self.device {
            // Which one won was not said (the flag did).
            let named = |o: &&String| o.split_once('=').is_some_and(|(k, _)| k.trim() == "device");
            if let Some(set) = self.overrides.iter().find(named) {
                bail!("--device {d} and --set {set} both name the device: give one");
            }
            overrides.push(format!("device=\"{d}\""));
        }
        let base = self.preset.as_deref().unwrap_or("cpu");
        let (c, taken_as_before) =
            Config::resolve_noting(base, self.config.as_deref(), &overrides)?;
        if let (Some(file), false) = (&self.config, taken_as_before.is_empty()) {
            eprintln!(
                "note: {} is a whole config written before these keys existed; they take \
                 the values runs had before them, not the preset's: {} (add them to the \
                 file, or --set them, for newer behaviour)",
                file.display(),
                taken_as_before.join(", ")
            );
        }
        // Only a whole config can differ here (a partial one naming another preset is
        // refused): it is taken as it is, sizes and all.
        if let (Some(asked), Some(file)) = (&self.preset, &self.config)
            && c.preset != *asked
        {
            eprintln!(
                "note: {} is a whole config of preset {}, taken as it is; --preset {asked} \
                 is not used",
                file.display(),
                c.preset
            );
        }
        Ok(c)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Offline pretraining, then online training with offline data; writes metrics,
    /// evaluations and checkpoints under --out.
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        /// The run directory (refused if it holds a run, unless --resume).
        #[arg(long)]
        out: PathBuf,
        /// Continue from the run's last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Checkpoint right after pretraining, then at the first episode end after
        /// every N environment steps (a checkpoint between two metrics rows keeps the
        /// row's sums so far), and at the end.
        #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
        checkpoint_every: usize,
        /// Write a metrics.csv row every N environment steps (and a pretrain.csv row
        /// every N pretraining updates).
        #[arg(long, default_value_t = 100, value_parser = at_least_one)]
        log_every: usize,
        /// Stop after the first checkpoint at or after this step (for testing resume).
        #[arg(long, hide = true)]
        stop_after: Option<usize>,
    },
    /// The sample-efficiency study: tasks x algorithms x seeds as child `train` runs,
    /// then a summary table and learning-curve PNGs under --out.
    Study {
        /// The study directory: one run per task, algorithm and seed under it.
        #[arg(long, default_value = "out/study")]
        out: PathBuf,
        /// Preset of every run: cpu, paper or tiny.
        #[arg(long, default_value = "cpu")]
        preset: String,
        /// Tasks, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "arm-reach,push")]
        tasks: Vec<String>,
        /// Algorithms, comma-separated: expo, idql-select, rlpd, bc.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "expo,idql-select,rlpd,bc"
        )]
        algos: Vec<String>,
        /// Seeds per task and algorithm (0..N, N at most 1000).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
        seeds: u64,
        /// Runs at once (each run uses one core).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        jobs: u64,
        /// Overrides passed to every run.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Only rebuild summary.md and the plots from finished runs.
        #[arg(long)]
        summarize_only: bool,
        /// Stop the runs still going after this many seconds (their evaluations so far
        /// are kept; `trainer curves --include-unfinished` plots them).
        #[arg(long)]
        time_limit_s: Option<u64>,
    },
    /// One algorithm on one task from several studies, side by side: one PNG with a
    /// learning curve per study (say the `paper` preset's on a GPU beside the `cpu`
    /// preset's) and the curves' points as a markdown table on stdout.
    Curves {
        /// LABEL=DIR: a study directory (`trainer study --out DIR`) and its curve's name;
        /// LABEL=DIR@ALGO takes that study's ALGO runs instead of --algo's (a baseline).
        #[arg(long = "study", value_name = "LABEL=DIR[@ALGO]", required = true)]
        studies: Vec<String>,
        /// The task whose curves to draw.
        #[arg(long, default_value = "arm-reach")]
        task: String,
        /// The algorithm whose curves to draw.
        #[arg(long, default_value = "expo")]
        algo: String,
        /// Also count runs stopped before their end (a time-limited study): each curve
        /// ends at the last evaluation all its seeds reached.
        #[arg(long)]
        include_unfinished: bool,
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Update speed: seconds per environment step (replay sampling and upload, one
    /// action, the whole UTD update), per-stage times, FLOPs and achieved GFLOP/s.
    Bench {
        #[command(flatten)]
        config: ConfigArgs,
        /// Environment steps timed.
        #[arg(long, default_value_t = 20, value_parser = at_least_one)]
        steps: usize,
        /// Environment steps run before timing (first-call costs).
        #[arg(long, default_value_t = 2, value_parser = at_most_a_million)]
        warmup: usize,
        /// Wait for the device at every stage boundary, so that the per-stage times are
        /// device times (GPU); slightly slows the total.
        #[arg(long)]
        sync_stages: bool,
        /// Also write the result as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Continue training a run on episodes the robot recorded (`controller run` datasets),
    /// with the run's offline data mixed in; writes a new run directory and optionally a
    /// signed bundle of the result.
    Finetune {
        /// The run to start from (train, pretrain or finetune output).
        #[arg(long)]
        from: PathBuf,
        /// A dataset the robot recorded; repeat for several.
        #[arg(long = "data", value_name = "DIR")]
        data: Vec<PathBuf>,
        /// The new run directory.
        #[arg(long)]
        out: PathBuf,
        /// Updates (each: UTD critic steps, base policy, edit policy and temperature)
        /// [default: 2000; with --resume, the count the run was last given].
        #[arg(long)]
        updates: Option<usize>,
        /// Train on the robot data alone, without the run's offline data.
        #[arg(long)]
        no_offline: bool,
        /// Also train on frames the operator marked as interventions (left out by
        /// default: their logged action is the policy's, not what the arm was made to do).
        #[arg(long)]
        keep_interventions: bool,
        /// Train on this device instead of the one the run's config.toml names: `cpu`,
        /// `ndarray`, `vulkan[:N]`, `cuda[:N]` (all but `cpu` need the matching feature).
        #[arg(long)]
        device: Option<String>,
        /// Evaluate in the simulated task before and after (0: skip).
        #[arg(long, default_value_t = 50)]
        eval_episodes: usize,
        /// Checkpoint every N updates (0: only at the end).
        #[arg(long, default_value_t = 500)]
        checkpoint_every: usize,
        /// Write a finetune.csv row every N updates.
        #[arg(long, default_value_t = 100, value_parser = at_least_one)]
        log_every: usize,
        /// Continue from --out's newest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Export the result as a bundle into this directory.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Sign the bundle with this key (`trainer keygen`).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        #[arg(long, hide = true)]
        stop_after: Option<usize>,
        /// Train live on transitions that `controller run --uplink` streams to this
        /// address (e.g. `0.0.0.0:7878`): one update per robot transition, up to --updates.
        #[arg(long, requires = "uplink_key")]
        listen: Option<String>,
        /// The link's shared key (`trainer uplink-keygen`).
        #[arg(long, requires = "listen")]
        uplink_key: Option<PathBuf>,
        /// With --listen: publish a (signed, with --signing-key) bundle under
        /// OUT/bundles/ every this many updates; OUT/bundles/latest names the newest.
        #[arg(long, default_value_t = 500, requires = "listen")]
        publish_every: usize,
        /// With --listen: stop (checkpoint, final bundle) once the robot has sent nothing
        /// for this many seconds (0: wait until --updates).
        #[arg(long, default_value_t = 0, requires = "listen")]
        idle_exit_s: u64,
    },
    /// Writes a new shared key for the controller ↔ trainer link (copy it to both hosts).
    UplinkKeygen {
        /// The key file to write (refused if it exists).
        #[arg(long, default_value = "keys/uplink.key")]
        out: PathBuf,
    },
    /// Offline pretraining only (train with run.online_steps = 0); continue online later
    /// with `train --resume` on the same --out (simulated tasks). For a robot without a
    /// simulator: `--set task=robot --set run.dataset=DIR` (its LeRobot v3 demonstrations).
    Pretrain {
        #[command(flatten)]
        config: ConfigArgs,
        /// The run directory (refused if it holds a run, unless --resume).
        #[arg(long)]
        out: PathBuf,
        /// Continue the run in --out: pretraining writes no checkpoint before it ends, so
        /// a pretraining that was stopped starts over there (its logs are replaced).
        #[arg(long)]
        resume: bool,
    },
    /// Evaluate a run's latest checkpoint (burn) or a model bundle (through the
    /// controller's runtime): success rate and return over K episodes.
    Eval {
        /// A run directory written by `train`, `pretrain` or `finetune` (a checkpoint has no
        /// signature: the trust options are refused with it).
        #[arg(
            long,
            conflicts_with_all = ["bundle", "trusted_key", "allow_unsigned"],
            required_unless_present = "bundle"
        )]
        run: Option<PathBuf>,
        /// A model bundle written by `export`.
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        trust: TrustArgs,
        /// Runtime backend for --bundle: tract, native or ort (a run is evaluated with
        /// burn).
        #[arg(long, default_value = "tract", conflicts_with = "run")]
        backend: String,
        /// Denoising steps to execute with --bundle (default: the manifest's).
        #[arg(long, conflicts_with = "run")]
        executed_steps: Option<usize>,
        /// With action chunks: actions played from each chunk before planning the next
        /// (1..=H, or 0 for whole chunks; default: the run's `replan_every`, or the
        /// bundle manifest's `action.replan_every`).
        #[arg(long)]
        replan_every: Option<usize>,
        /// With action chunks: temporal ensembling (ACT). Each step's action is the
        /// weighted mean of the actions every chunk planned in the last H steps holds
        /// for it, weights e^(-M·i) with i = 0 for the oldest (0: plain mean; ACT used
        /// 0.01). Usually with --replan-every 1.
        #[arg(long, value_name = "M", allow_negative_numbers = true)]
        temporal_ensemble: Option<f32>,
        /// Episodes to evaluate.
        #[arg(long, default_value_t = 100, value_parser = at_least_one)]
        episodes: usize,
        /// Seed of the generator that draws the episodes.
        #[arg(long, default_value_t = 12345)]
        seed: u64,
        /// Evaluate a run on this device instead of the one its config.toml names (a
        /// GPU-trained run on a machine without one): `cpu`, `ndarray`, `vulkan[:N]`,
        /// `cuda[:N]`.
        #[arg(long, conflicts_with = "bundle")]
        device: Option<String>,
    },
    /// Write a model bundle (manifest + ONNX graphs, signed with --signing-key) from a
    /// run's latest checkpoint, or from freshly initialised networks with --random.
    Export {
        /// A run directory (`train`, `pretrain`, `finetune`): its latest checkpoint, as
        /// its config.toml describes it.
        #[arg(long, required_unless_present = "random", conflicts_with = "random")]
        run: Option<PathBuf>,
        /// Export untrained networks built from --preset/--set (for benchmarks and tests).
        #[arg(long)]
        random: bool,
        #[command(flatten)]
        config: ConfigArgs,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// ed25519 signing key (`trainer keygen`); without it the bundle is unsigned.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Default executed denoising steps written to the manifest (≤ trained).
        #[arg(long)]
        executed_steps: Option<usize>,
    },
    /// Create an ed25519 key pair PREFIX.key (secret, 0600) and PREFIX.pub.
    Keygen {
        /// PREFIX of the key pair: PREFIX.key and PREFIX.pub.
        #[arg(long, default_value = "keys/expo")]
        out: PathBuf,
    },
    /// Print the resolved configuration.
    Config {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn phase(&mut self, name: &str, total: u64) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        b.set_prefix(name.to_string());
        self.0 = Some(b);
    }
    fn advance(&mut self, pos: u64, message: &str) {
        if let Some(b) = &self.0 {
            b.set_position(pos);
            b.set_message(message.to_string());
        }
    }
}

/// 0 to 10^6 (`bench --warmup`: a count near `usize::MAX` overflowed `warmup + steps`).
fn at_most_a_million(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n > 1_000_000 => Err(format!("must be at most 1000000, found {n}")),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A count that must not be 0 (timed steps, evaluation episodes), nor past a million
/// (work asked for by mistake: no curve needs more).
fn at_least_one(raw: &str) -> Result<usize, String> {
    match at_most_a_million(raw)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// glibc's malloc gives a freed block above its mmap threshold (128 KiB to start) back to
/// the kernel and maps a fresh one for the next allocation, so every training step
/// page-faults again on its intermediate tensors: about 2,300 faults per `cpu`-preset
/// step, a fifth of its time (BENCHMARKS.md, "Recorded graphs"). With the threshold
/// at its maximum (32 MiB) and no trimming, freed blocks stay in the heap for reuse.
/// The process's peak memory is unchanged; it is just not returned early.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only sets allocator parameters; called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// A run directory this command created and then refused to train into (a dataset of
/// another shape, say): removed if it holds nothing but the lock file the command took,
/// so that no directory is left behind. Anything more is the run's, and stays; and only
/// under the lock: another trainer that took the directory meanwhile keeps it.
fn remove_refused_run_dir(out: &Path) {
    let Ok(_lock) = trainer::run::lock_run_dir(out) else {
        return;
    };
    let lock_file = trainer::run::RUN_LOCK_FILE;
    let only_the_lock = std::fs::read_dir(out).is_ok_and(|entries| {
        entries
            .map(|e| e.map(|e| e.file_name()))
            .all(|name| name.is_ok_and(|n| n == lock_file))
    });
    if only_the_lock {
        let _ = std::fs::remove_file(out.join(lock_file));
        let _ = std::fs::remove_dir(out);
    }
}

fn main() -> Result<()> {
    keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench {
            config,
            steps,
            warmup,
            sync_stages,
            json,
        } => {
            let c = config.resolve()?;
            let r = trainer::bench::bench_updates(&c, steps, warmup, sync_stages)?;
            if let Some(path) = &json {
                let mut v = serde_json::to_value(&r)?;
                v["device"] = c.device.clone().into();
                v["candidates"] = format!("{:?}", c.compute.candidates).to_lowercase().into();
                v["normals"] = format!("{:?}", c.compute.normals).to_lowercase().into();
                v["optimizer"] = serde_json::to_value(c.compute.optimizer)?;
                v["replay"] = serde_json::to_value(c.compute.replay)?;
                v["graph"] = c.compute.graph.into();
                v["threads"] = c.compute.threads.into();
                v["block_chains"] = c.compute.block_chains.into();
                v["chain_precision"] = c.compute.chain_precision.name().into();
                v["cpu_matmul_isa"] = trainer::bench::cpu_matmul_isa().into();
                std::fs::write(path, serde_json::to_string_pretty(&v)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let min = r
                .seconds_per_env_step
                .iter()
                .cloned()
                .fold(f64::INFINITY, f64::min);
            let max = r.seconds_per_env_step.iter().cloned().fold(0.0, f64::max);
            let on_cpu = !trainer::device::parse(&c.device)?.is_gpu();
            let cpu_settings = if on_cpu {
                let blocks = match c.compute.block_chains {
                    0 => "one block".to_string(),
                    n => format!("blocks of {n} chains"),
                };
                format!(
                    ", {} thread(s), {blocks}, {} matmuls",
                    c.compute.threads,
                    trainer::bench::cpu_matmul_isa()
                )
            } else {
                String::new()
            };
            println!(
                "{} {} on {} [{}, {:?} candidates, {:?} normals, {:?} replay, {:?} optimizer{}{}] (obs {}, act {}): {:.4} s per env step (median of {}, min {:.4}, max {:.4}); {:.1} critic updates/s; {:.3} GFLOP per step, {:.1} GFLOP/s",
                r.preset,
                r.algo,
                c.task,
                c.device,
                c.compute.candidates,
                c.compute.normals,
                c.compute.replay,
                c.compute.optimizer,
                if c.compute.graph {
                    ", compute.graph"
                } else {
                    ""
                },
                match c.compute.chain_precision {
                    trainer::config::ChainPrecision::F32 => String::new(),
                    p => format!(", {} chains", p.name()),
                } + &cpu_settings,
                r.obs_dim,
                r.act_dim,
                r.median_seconds,
                r.env_steps,
                min,
                max,
                r.critic_updates_per_second,
                r.gflop_per_env_step,
                r.gflops
            );
            for (part, status) in &r.graphs {
                println!("graph: {part}: {status}");
            }
            let s = &r.stages;
            let n = r.env_steps as f64;
            println!(
                "per env step: batch {:.4} s, act {:.4} s, candidates {:.4} s, critic {:.4} s, denoiser {:.4} s, edit/actor {:.4} s",
                s.batch / n,
                s.act / n,
                s.candidates / n,
                s.critic / n,
                s.denoiser / n,
                s.policy / n
            );
            // A single run on a CPU with idle cores: say how to use them, where the work
            // split is large against a thread's start (tens of µs): the `tiny` preset's
            // candidates take well under 1 ms, and threads slow it down.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if on_cpu && c.compute.threads < cores && s.candidates / n >= 1e-3 {
                eprintln!(
                    "note: {} of {cores} cores used; `--set compute.threads={cores}` splits the \
                     candidates and the critic loop across them (the same results to the bit)",
                    c.compute.threads
                );
            }
        }
        Command::Pretrain {
            config,
            out,
            resume,
        } => {
            let mut c = config.resolve()?;
            c.run.online_steps = 0;
            // rlpd has no base policy: without `run.pretrain_critic` it pretrains nothing
            // (as `train` does, for the same offline budget), and this printed "pretrained".
            anyhow::ensure!(
                c.algo != trainer::config::Algo::Rlpd || c.run.pretrain_critic,
                "rlpd has no base policy to pretrain: `trainer pretrain` with algo = \"rlpd\" \
                 takes --set run.pretrain_critic=true (its critics and actor, offline)"
            );
            // A checkpoint past pretraining belongs to an online run: pretraining has
            // nothing left to do there, and `train --resume` is what continues it.
            // So does one at step 0 of a run that has online steps to take: `train` takes
            // one right after pretraining.
            if resume && trainer::run::checkpoint_dir_exists(&out) {
                let step = trainer::run::checkpoint_env_step(&out)?;
                let online_steps = std::fs::read_to_string(out.join("config.toml"))
                    .ok()
                    .and_then(|t| t.parse::<toml::Table>().ok())
                    .and_then(|t| t.get("run")?.get("online_steps")?.as_integer())
                    .unwrap_or(0);
                // And any finetune run: `finetune --resume` continues it.
                let finetune_run = out.join("finetune.csv").exists();
                let continues = if finetune_run {
                    "it is a finetune run: `finetune --resume` continues it"
                } else {
                    "`train --resume` does"
                };
                anyhow::ensure!(
                    step == 0 && online_steps == 0 && !finetune_run,
                    "{}: it is not a pretraining run (run.online_steps = {online_steps}, its \
                     checkpoint {step} environment steps in); `pretrain --resume` does not \
                     continue it ({continues}; nothing was changed)",
                    out.display()
                );
            }
            let mut bar = Bar(None);
            let summary = train(
                &c,
                &out,
                &TrainOptions {
                    log_every: 100,
                    resume,
                    ..Default::default()
                },
                &mut bar,
            )?;
            if let Some(b) = bar.0.take() {
                b.finish_and_clear();
            }
            match summary.evals.first() {
                Some((_, e)) => println!(
                    "pretrained {} on {}: success {:.1}% over {} episodes; checkpoint in {}",
                    serde_json::to_string(&c.algo)?,
                    c.task,
                    100.0 * e.success_rate,
                    e.episodes,
                    out.join("checkpoint").display()
                ),
                // A robot run: no simulator to evaluate in.
                None => println!(
                    "pretrained {} for the robot of {} ({:.1}% of its episodes successful); \
                     no simulator to evaluate in; checkpoint in {}",
                    serde_json::to_string(&c.algo)?,
                    c.run.dataset.as_deref().unwrap_or("?"),
                    100.0 * summary.offline_success_rate,
                    out.join("checkpoint").display()
                ),
            }
        }
        Command::Eval {
            run,
            bundle,
            trust,
            backend,
            executed_steps,
            replan_every,
            temporal_ensemble,
            episodes,
            seed,
            device,
        } => {
            let (name, e) = if let Some(dir) = bundle {
                let b = shared_model::load_bundle(&dir, &trust.trust()?)?;
                let task: sim::TaskId = b.manifest.task.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: the bundle is for '{}', which is not a simulated task \
                         (arm-reach, push, maze); run it on its robot (`controller run`)",
                        dir.display(),
                        b.manifest.task
                    )
                })?;
                let options = controller::runtime::PolicyOptions {
                    backend: backend.parse()?,
                    executed_steps,
                    seed: trainer::run::eval_noise_seed(seed),
                };
                let mut policy = controller::runtime::Policy::new(&b, &options)?;
                let (od, ad) = (policy.obs_dim(), policy.act_dim());
                // A robot may carry a task's name: its sizes tell.
                let spec = task.spec();
                anyhow::ensure!(
                    (od, ad) == (spec.obs_dim(), spec.action_dim()),
                    "{}: the bundle takes {od} observations and {ad} actions, the simulated \
                     task '{task}' has {} and {}; a robot's bundle runs on its robot \
                     (`controller run`)",
                    dir.display(),
                    spec.obs_dim(),
                    spec.action_dim()
                );
                // As `controller run --sim` refuses it: its steps are another length of
                // time (a bundle from before format 5 does not say its rate).
                if let Some(hz) = b.manifest.action.control_hz {
                    let task_steps = format!("task {task} steps");
                    if let Some(why) = trainer::robot::other_rate(hz, spec.control_hz, &task_steps)
                    {
                        bail!("{}: the bundle was trained on data {why}", dir.display());
                    }
                }
                // And its channels, as `controller run --sim` checks them against the
                // task's robot file: the same ones in another order are refused, other
                // spellings said (a bundle naming none, before format 6, is not compared).
                let task_observations = spec.owned_obs_names();
                let task_actions = spec.owned_action_names();
                let m = &b.manifest;
                for (what, ours, theirs, harm) in [
                    (
                        "observation",
                        &task_observations,
                        &m.observation.names,
                        "the policy would act on its inputs in another order",
                    ),
                    (
                        "action",
                        &task_actions,
                        &m.action.names,
                        "its commands would drive other actuators than it learned",
                    ),
                ] {
                    if let Some((at, here)) =
                        firmware_config::config::first_reordered_name(ours, theirs)
                    {
                        bail!(
                            "{}: {what} `{}` is at [{at}] in the bundle and at [{here}] in task \
                             {task}: {harm}",
                            dir.display(),
                            theirs[at]
                        );
                    }
                    if let Some(i) = firmware_config::config::first_name_difference(ours, theirs) {
                        eprintln!(
                            "warning: {}: {what} names differ from task {task}'s, first at \
                             [{i}] (`{}` in the bundle, `{}` in the task)",
                            dir.display(),
                            theirs[i],
                            ours[i]
                        );
                    }
                }
                let cw = policy.chunk_dim();
                // Unless told otherwise, as the run that trained the bundle played.
                let default_replan = b.manifest.action.replan_every;
                let play = shared_model::ChunkPlay::new(
                    policy.horizon(),
                    replan_every.unwrap_or(default_replan),
                )
                .with_context(|| format!("--replan-every for {}", dir.display()))?
                .with_ensemble(temporal_ensemble)
                .with_context(|| format!("--temporal-ensemble for {}", dir.display()))?;
                let e = trainer::run::evaluate_with(task, episodes, seed, play, &mut |obs| {
                    let mut out = vec![0.0; obs.len() / od * cw];
                    for (o, a) in obs.chunks_exact(od).zip(out.chunks_exact_mut(cw)) {
                        policy.act(o, a)?;
                    }
                    Ok(out)
                })?;
                (
                    format!(
                        "{} ({backend}, {} denoising steps{})",
                        dir.display(),
                        policy.executed_steps(),
                        play.describe().map_or(String::new(), |d| format!(", {d}"))
                    ),
                    e,
                )
            } else {
                let run = run.expect("clap requires --run or --bundle");
                let mut agent = trainer::run::load_agent_on(&run, device.as_deref())?;
                if let Some(k) = replan_every {
                    agent.config.replan_every = k;
                }
                let play = agent
                    .config
                    .chunk_play()
                    .with_context(|| format!("--replan-every for {}", run.display()))?
                    .with_ensemble(temporal_ensemble)
                    .with_context(|| format!("--temporal-ensemble for {}", run.display()))?;
                (
                    format!(
                        "{}{}",
                        run.display(),
                        play.describe().map_or(String::new(), |d| format!(", {d}"))
                    ),
                    trainer::run::evaluate_played(&mut agent, episodes, seed, play)
                        .with_context(|| run.display().to_string())?,
                )
            };
            println!(
                "{name}: success {:.1}%  return {:.3}  length {:.1}  ({} episodes)",
                100.0 * e.success_rate,
                e.mean_return,
                e.mean_length,
                e.episodes
            );
        }
        Command::Export {
            run,
            random,
            config,
            out,
            signing_key,
            executed_steps,
        } => {
            let key = signing_key
                .as_deref()
                .map(shared_model::manifest::read_signing_key)
                .transpose()?;
            let (agent, info) = if random {
                let c = config.resolve()?;
                // A robot's description (dimensions, names) comes from its dataset.
                let (od, ad, robot) = match c.task.sim() {
                    Some(t) => (t.spec().obs_dim(), t.spec().action_dim(), None),
                    None => {
                        let r = trainer::run::offline_data(&c)?
                            .robot
                            .expect("a robot run's offline data describes its robot");
                        (r.obs_dim(), r.act_dim(), Some(r))
                    }
                };
                let identity = trainer::replay::Normalizer {
                    mean: vec![0.0; od],
                    std: vec![1.0; od],
                };
                let mut agent = trainer::agent::Agent::new(
                    c.clone(),
                    od,
                    ad,
                    identity,
                    &trainer::run::device(&c)?,
                );
                agent.robot = robot;
                let info = trainer::export::ExportInfo {
                    dataset: "none (untrained networks)".into(),
                    env_steps: 0,
                    executed_steps,
                    not_before_unix: 0,
                };
                (agent, info)
            } else {
                let run = run.expect("clap requires --run or --random");
                ensure!(
                    config.preset.is_none()
                        && config.config.is_none()
                        && config.overrides.is_empty(),
                    "--preset, --config and --set describe the networks of --random; \
                     --run exports {} as its own config.toml describes it (--device may \
                     differ)",
                    run.display()
                );
                let (agent, env_steps) =
                    trainer::run::load_agent_at(&run, config.device.as_deref())?;
                let info = trainer::export::ExportInfo {
                    dataset: trainer::export::dataset_provenance(&run, &agent.config),
                    env_steps: env_steps as u64,
                    executed_steps,
                    not_before_unix: 0,
                };
                (agent, info)
            };
            let m = trainer::export::export_bundle(&agent, &out, &info, key.as_ref())?;
            println!(
                "wrote {} ({} {}, {}; denoiser {}x{} blocks, {} of {} steps executed)",
                out.display(),
                m.algo,
                m.task,
                if key.is_some() { "signed" } else { "UNSIGNED" },
                m.networks.denoiser_hidden,
                m.networks.denoiser_blocks,
                m.diffusion.executed_steps,
                m.diffusion.trained_steps
            );
        }
        Command::Finetune {
            from,
            data,
            out,
            updates,
            no_offline,
            keep_interventions,
            eval_episodes,
            checkpoint_every,
            log_every,
            resume,
            bundle,
            signing_key,
            stop_after,
            listen,
            uplink_key,
            publish_every,
            idle_exit_s,
            device,
        } => {
            ensure!(
                signing_key.is_none() || bundle.is_some() || listen.is_some(),
                "--signing-key signs the bundles of --bundle or --listen; give one of them"
            );
            // Read the keys first: a bad key path should fail before the work, not after.
            let key = signing_key
                .as_deref()
                .map(shared_model::manifest::read_signing_key)
                .transpose()?;
            // The bundle is written after the fine-tuning: refuse a wrong place now.
            if let Some(dir) = &bundle {
                ensure!(
                    dir != &out,
                    "--bundle {} is the run directory --out: give the bundle its own directory",
                    dir.display()
                );
                shared_model::manifest::check_bundle_target(dir)?;
            }
            if listen.is_some() && key.is_none() {
                eprintln!(
                    "warning: no --signing-key: the bundles published to the robot are unsigned, \
                     and a controller that trusts a key (--trusted-key) refuses them"
                );
            }
            let listen = match listen {
                None => None,
                Some(addr) => Some(trainer::finetune::LiveOptions {
                    addr,
                    key: uplink::Key::read(uplink_key.as_deref().expect("clap requires it"))?,
                    publish_every,
                    signing_key: key.clone(),
                    idle_exit: (idle_exit_s > 0)
                        .then(|| std::time::Duration::from_secs(idle_exit_s)),
                    bound: None,
                    stop: Some(&trainer::live::SIGNALLED),
                }),
            };
            let opts = trainer::finetune::FinetuneOptions {
                from,
                data,
                updates: updates.unwrap_or_else(|| trainer::finetune::updates_for(&out, resume)),
                out: out.clone(),
                with_offline: !no_offline,
                checkpoint_every,
                log_every,
                eval_episodes,
                resume,
                stop_after,
                listen,
                keep_interventions,
                device,
                exports_bundle: bundle.is_some(),
            };
            let mut bar = Bar(None);
            let existed = out.exists();
            let s = trainer::finetune::finetune(&opts, &mut bar);
            if s.is_err() && !existed {
                remove_refused_run_dir(&out);
            }
            let s = s?;
            if let Some(b) = bar.0.take() {
                b.finish_and_clear();
            }
            println!("{}", trainer::finetune::describe(&s));
            if s.stopped_early {
                return Ok(());
            }
            if let Some(dir) = bundle {
                // On the device it trained on (a resumed run's config.toml may name
                // another).
                let (agent, env_steps) = trainer::run::load_agent_at(&out, opts.device.as_deref())?;
                let info = trainer::export::ExportInfo {
                    dataset: trainer::export::dataset_provenance(&out, &agent.config),
                    env_steps: env_steps as u64,
                    executed_steps: None,
                    not_before_unix: 0,
                };
                trainer::export::export_bundle(&agent, &dir, &info, key.as_ref())?;
                println!(
                    "wrote {} ({})",
                    dir.display(),
                    if key.is_some() { "signed" } else { "UNSIGNED" }
                );
            }
        }
        Command::UplinkKeygen { out } => {
            uplink::Key::generate()?.write(&out)?;
            println!(
                "wrote {} (copy it to the robot and the trainer)",
                out.display()
            );
        }
        Command::Keygen { out } => {
            let (k, p) = shared_model::manifest::generate_key_pair(&out)?;
            let public = shared_model::manifest::read_signing_key(&k)?.verifying_key();
            println!(
                "wrote {} (secret: keep it off the robot) and {} (give it to the controller); key {}",
                k.display(),
                p.display(),
                shared_model::manifest::key_fingerprint(public.as_bytes())
            );
        }
        Command::Config { config } => {
            let c = config.resolve()?;
            print!("{}", c.to_toml());
        }
        Command::Curves {
            studies,
            task,
            algo,
            include_unfinished,
            out,
        } => {
            let algo: trainer::config::Algo = algo.parse()?;
            let studies = studies
                .iter()
                .map(|s| trainer::study::parse_curve_spec(s, algo))
                .collect::<Result<Vec<_>>>()?;
            let task: sim::TaskId = task.parse()?;
            print!(
                "{}",
                trainer::study::compare_curves(&studies, task, include_unfinished, &out)?
            );
            println!("(plot: {})", out.display());
        }
        Command::Study {
            out,
            preset,
            tasks,
            algos,
            seeds,
            jobs,
            overrides,
            summarize_only,
            time_limit_s,
        } => {
            let tasks = tasks
                .iter()
                .map(|t| t.parse())
                .collect::<Result<Vec<sim::TaskId>, _>>()?;
            let algos = algos
                .iter()
                .map(|a| a.parse())
                .collect::<Result<Vec<trainer::config::Algo>>>()?;
            let spec = trainer::study::StudySpec {
                tasks: tasks.clone(),
                algos: algos.clone(),
                seeds: (0..seeds).collect(),
                preset,
                overrides,
                jobs: jobs as usize,
                out: out.clone(),
                time_limit: time_limit_s.map(std::time::Duration::from_secs),
            };
            spec.check()?;
            let mut failed = vec![];
            if !summarize_only {
                let exe = std::env::current_exe().context("locating the trainer executable")?;
                failed = trainer::study::run_study(&spec, &exe)?;
            }
            // The study's own seeds after a run (leftovers of an earlier, larger study are
            // named and left out); every seed on disk with --summarize-only. The runs that
            // did finish are summarized even when others failed.
            let seeds = (!summarize_only).then_some(&spec.seeds[..]);
            let summary = trainer::study::summarize(&out, &tasks, &algos, seeds, summarize_only);
            if let Ok(text) = &summary {
                print!("{text}");
            }
            // The failed runs are named even when there is nothing to summarize.
            let failed_runs = (!failed.is_empty()).then(|| {
                format!(
                    "{} runs failed (each marked `failed`, see its log.txt): {:?}",
                    failed.len(),
                    failed
                )
            });
            match (summary, failed_runs) {
                (Ok(_), None) => {}
                (Ok(_), Some(why)) => anyhow::bail!(why),
                (Err(e), None) => return Err(e),
                (Err(e), Some(why)) => return Err(e.context(why)),
            }
        }
        Command::Train {
            config,
            out,
            resume,
            checkpoint_every,
            log_every,
            stop_after,
        } => {
            let c = config.resolve()?;
            let opts = TrainOptions {
                resume,
                checkpoint_every,
                stop_after,
                log_every,
            };
            let mut bar = Bar(None);
            let existed = out.exists();
            let summary = train(&c, &out, &opts, &mut bar);
            if summary.is_err() && !existed {
                remove_refused_run_dir(&out);
            }
            let summary = summary.with_context(|| format!("training into {}", out.display()))?;
            if let Some(b) = bar.0.take() {
                b.finish_and_clear();
            }
            println!(
                "{} on {} ({} preset): demonstrations {:.1}% success",
                serde_json::to_string(&c.algo)?,
                c.task,
                c.preset,
                100.0 * summary.offline_success_rate
            );
            for (step, e) in &summary.evals {
                println!(
                    "  step {step:>7}: success {:5.1}%  return {:.3}  length {:.1}",
                    100.0 * e.success_rate,
                    e.mean_return,
                    e.mean_length
                );
            }
            if summary.stopped_early {
                println!("stopped after the checkpoint at step {}", summary.env_steps);
            }
        }
    }
    Ok(())
}
