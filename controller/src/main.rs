//! The `controller` binary. Today: `bench` (inference latency) and `check` (verify a
//! bundle). The fixed-rate robot loop (`run`) is issue 5.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use controller::runtime::{Backend, Policy, PolicyOptions, TwoSpeedPolicy, kernel_name};
use shared_model::manifest::{Trust, load_bundle};
use shared_model::synthetic::SyntheticSpec;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "controller",
    about = "Run EXPO model bundles on the robot computer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct TrustArgs {
    /// Public key (`NAME.pub`) the bundle must be signed with.
    #[arg(long)]
    trusted_key: Option<PathBuf>,
    /// Development only: accept unsigned bundles (hashes and shapes are still checked).
    #[arg(long)]
    allow_unsigned: bool,
}

impl TrustArgs {
    fn trust(&self) -> Result<Trust> {
        match (&self.trusted_key, self.allow_unsigned) {
            (Some(k), _) => Ok(Trust::from_public_key_file(k)?),
            (None, true) => Ok(Trust::AllowUnsigned),
            (None, false) => bail!(
                "pass --trusted-key KEY.pub to verify the bundle's signature, or --allow-unsigned for development"
            ),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Verify a bundle (signature, hashes, shapes, weights) and print its manifest summary.
    Check {
        #[arg(long)]
        bundle: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Latency of EXPO actions: per stage p50/p99/max over --actions, batch-1
    /// observations, one thread, beside the compute limit (FLOPs / measured rate).
    Bench {
        /// A bundle directory; or use --synthetic.
        #[arg(long, conflicts_with = "synthetic")]
        bundle: Option<PathBuf>,
        /// Random weights at `paper` or `cpu` sizes (written to a temporary bundle).
        #[arg(long)]
        synthetic: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[arg(long, value_delimiter = ',', default_value = "tract,native")]
        backends: Vec<String>,
        #[arg(long, default_value_t = 10_000)]
        actions: usize,
        /// Executed steps of the truncated-chain run.
        #[arg(long, default_value_t = 3)]
        truncated_steps: usize,
        /// Keep the synthetic bundle here (e.g. for the Python onnxruntime loop).
        #[arg(long)]
        keep: Option<PathBuf>,
    },
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

/// Weight bytes one action streams: every executed step reads the whole denoiser, then
/// the edit policy and K critic members once.
fn weight_bytes_per_action(m: &shared_model::Manifest, executed: usize) -> f64 {
    let n = &m.networks;
    let (o, a) = (m.observation.dim, m.action.dim);
    let (h, x) = (n.denoiser_hidden, n.denoiser_expanded);
    let (f, th) = (n.fourier_features, n.time_hidden);
    let denoiser =
        a * h + n.denoiser_blocks * 2 * h * x + h * a + f * th + th * th + th * h + o * h;
    let mlp = |d_in: usize, widths: &[usize], d_out: usize| {
        let mut d = d_in;
        let mut p = 0;
        for &w in widths {
            p += d * w;
            d = w;
        }
        p + d * d_out
    };
    let s = &m.selection;
    let edit = if s.num_edit > 0 {
        mlp(o + a, &n.edit_widths, 2 * a)
    } else {
        0
    };
    let critic = s.critic_subset * mlp(o + a, &n.critic_widths, 1);
    4.0 * (executed * denoiser + edit + critic) as f64
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
    let mut a = vec![0.0; policy.act_dim()];
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Check { bundle, trust } => {
            let b = load_bundle(&bundle, &trust.trust()?)?;
            let m = &b.manifest;
            println!(
                "{}: OK ({}), format {}, {} on {}: obs {}, action {}, N {}, n_edit {}, K {}/{} critics, {}/{} steps; trained by {} at {} env steps from {}",
                bundle.display(),
                b.signed_by
                    .as_deref()
                    .map_or("unsigned".to_string(), |k| format!("signed by {k}")),
                m.format_version,
                m.algo,
                m.task,
                m.observation.dim,
                m.action.dim,
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
        }
        Command::Bench {
            bundle,
            synthetic,
            trust,
            backends,
            actions,
            truncated_steps,
            keep,
        } => {
            let tmp = tempfile::tempdir()?;
            let (dir, trust) = match (bundle, synthetic.as_deref()) {
                (Some(d), _) => (d, trust.trust()?),
                (None, Some(size)) => {
                    let spec = match size {
                        "paper" => SyntheticSpec::paper(),
                        "cpu" => SyntheticSpec::cpu(),
                        _ => bail!("--synthetic takes paper or cpu"),
                    };
                    let d = keep.unwrap_or_else(|| tmp.path().join("bundle"));
                    spec.write(&d, 1, None)?;
                    (d, Trust::AllowUnsigned)
                }
                (None, None) => bail!("pass --bundle DIR or --synthetic paper|cpu"),
            };
            let b = load_bundle(&dir, &trust).context("loading the bundle")?;
            let m = &b.manifest;
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
            for name in &backends {
                let backend: Backend = name.parse()?;
                for (mode, steps) in [
                    ("full", m.diffusion.executed_steps),
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
                    let mut a = vec![0.0; m.action.dim];
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
    Ok(())
}
