//! `trainer`: EXPO and baselines on the simulated tasks.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use trainer::config::Config;
use trainer::run::{Progress, TrainOptions, train};

#[derive(Parser)]
#[command(name = "trainer", about = "Train EXPO (and baselines) on the simulated robot tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that builds a configuration.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Preset to start from: `cpu` (default, 2 CPU cores), `paper` (GPU budget), `tiny`.
    #[arg(long, default_value = "cpu")]
    preset: String,
    /// A TOML file applied over the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dotted overrides applied last, e.g. `--set algo=rlpd --set expo.num_samples=8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Offline pretraining, then online training with offline data; writes metrics,
    /// evaluations and checkpoints under --out.
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        out: PathBuf,
        /// Continue from the run's last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Checkpoint at the first episode end after every N environment steps.
        #[arg(long, default_value_t = 1000)]
        checkpoint_every: usize,
        /// Write a metrics row every N environment steps.
        #[arg(long, default_value_t = 100)]
        log_every: usize,
        /// Stop after the first checkpoint at or after this step (for testing resume).
        #[arg(long, hide = true)]
        stop_after: Option<usize>,
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
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}")
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { config } => {
            let c = Config::resolve(&config.preset, config.config.as_deref(), &config.overrides)?;
            print!("{}", c.to_toml());
        }
        Command::Train { config, out, resume, checkpoint_every, log_every, stop_after } => {
            let c = Config::resolve(&config.preset, config.config.as_deref(), &config.overrides)?;
            let opts = TrainOptions { resume, checkpoint_every, stop_after, log_every };
            let mut bar = Bar(None);
            let summary = train(&c, &out, &opts, &mut bar).with_context(|| format!("training into {}", out.display()))?;
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
                println!("  step {step:>7}: success {:5.1}%  return {:.3}  length {:.1}", 100.0 * e.success_rate, e.mean_return, e.mean_length);
            }
            if summary.stopped_early {
                println!("stopped after the checkpoint at step {}", summary.env_steps);
            }
        }
    }
    Ok(())
}
