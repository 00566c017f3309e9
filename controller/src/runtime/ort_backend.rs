//! [`Networks`] on onnxruntime through `ort` (feature `ort`).
//!
//! `ort` is built with `load-dynamic`: nothing is downloaded or linked at build time;
//! at run time it opens the `libonnxruntime.so` named by `ORT_DYLIB_PATH`. The
//! onnxruntime Python wheel ships one:
//!
//! ```sh
//! pip install onnxruntime==1.31.1
//! export ORT_DYLIB_PATH=$(python3 -c 'import onnxruntime, glob, os; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*"))[0])')
//! ```
//!
//! Sessions run with one intra-op thread (the robot's control core) and full graph
//! optimization. Inputs are passed as borrowed views of the policy's buffers.

use super::{Networks, copy_output};
use anyhow::{Context, Result, anyhow, bail};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use shared_model::VerifiedBundle;

pub struct OrtNetworks {
    obs_dim: usize,
    act_dim: usize,
    denoiser: Session,
    edit: Option<Session>,
    critic: Option<Session>,
    _env: Environment,
}

/// onnxruntime allows one environment per process; every bundle loaded shares it.
fn environment() -> Result<Environment> {
    static ENV: std::sync::OnceLock<std::result::Result<Environment, String>> =
        std::sync::OnceLock::new();
    ENV.get_or_init(|| create_environment().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn create_environment() -> Result<Environment> {
    let path = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
        anyhow!("the ort backend needs ORT_DYLIB_PATH pointing at libonnxruntime.so (see the controller README)")
    })?;
    ort::init_from(&path)
        .map_err(|e| anyhow!("{path}: cannot load onnxruntime: {e}"))?
        .with_name("expo-controller")
        .build()
        .map_err(|e| anyhow!("onnxruntime environment: {e}"))
}

fn session(env: &Environment, bytes: &[u8], file: &str) -> Result<Session> {
    let ctx = |e: ort::Error| anyhow!("{file}: onnxruntime: {e}");
    Session::builder(env)
        .map_err(ctx)?
        .with_intra_threads(1)
        .map_err(|e| ctx(e.into()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| ctx(e.into()))?
        .commit_from_memory(bytes)
        .map_err(ctx)
}

impl OrtNetworks {
    pub fn load(bundle: &VerifiedBundle) -> Result<Self> {
        let env = environment()?;
        let g = &bundle.manifest.graphs;
        let denoiser = session(&env, &bundle.denoiser, &g.denoiser.file)?;
        let edit = match (&bundle.edit, &g.edit) {
            (Some(b), Some(f)) => Some(session(&env, b, &f.file)?),
            _ => None,
        };
        let critic = match (&bundle.critic, &g.critic) {
            (Some(b), Some(f)) => Some(session(&env, b, &f.file)?),
            _ => None,
        };
        Ok(OrtNetworks {
            obs_dim: bundle.manifest.observation.dim,
            act_dim: bundle.manifest.action.chunk_dim(),
            denoiser,
            edit,
            critic,
            _env: env,
        })
    }
}

fn view(shape: [usize; 2], data: &[f32]) -> Result<TensorRef<'_, f32>> {
    TensorRef::from_array_view((shape, data)).map_err(|e| anyhow!("input tensor: {e}"))
}

/// Copies a graph output of the shape the graph contract names (`[rows, A]`, `[K, rows]`):
/// the value count alone would let a transposed output through, read in the wrong order
/// (as the tract backend checks).
fn copy(out: &ort::value::DynValue, shape: [usize; 2], dst: &mut [f32], what: &str) -> Result<()> {
    let (got, s) = out
        .try_extract_tensor::<f32>()
        .map_err(|e| anyhow!("{what}: {e}"))?;
    let same = got.len() == 2 && got.iter().zip(shape).all(|(&g, e)| g == e as i64);
    if !same {
        let got: Vec<i64> = got.iter().copied().collect();
        bail!("{what}: graph returned shape {got:?}, expected {shape:?}");
    }
    copy_output(s, dst, what)
}

impl Networks for OrtNetworks {
    fn denoise(&mut self, obs: &[f32], noisy: &[f32], t: f32, eps: &mut [f32]) -> Result<()> {
        let rows = noisy.len() / self.act_dim;
        let t = [t];
        let out = self
            .denoiser
            .run(ort::inputs![
                view([1, self.obs_dim], obs)?,
                view([rows, self.act_dim], noisy)?,
                view([1, 1], &t[..])?,
            ])
            .map_err(|e| anyhow!("denoiser: {e}"))?;
        copy(&out[0], [rows, self.act_dim], eps, "denoiser")
    }

    fn edit(
        &mut self,
        obs: &[f32],
        base: &[f32],
        mean: &mut [f32],
        log_std: &mut [f32],
    ) -> Result<()> {
        let rows = base.len() / self.act_dim;
        let (od, ad) = (self.obs_dim, self.act_dim);
        let s = self.edit.as_mut().context("bundle has no edit policy")?;
        let out = s
            .run(ort::inputs![view([1, od], obs)?, view([rows, ad], base)?])
            .map_err(|e| anyhow!("edit: {e}"))?;
        copy(&out[0], [rows, ad], mean, "edit mean")?;
        copy(&out[1], [rows, ad], log_std, "edit log_std")
    }

    fn critic(
        &mut self,
        obs: &[f32],
        actions: &[f32],
        members: &[i64],
        q: &mut [f32],
    ) -> Result<()> {
        let rows = actions.len() / self.act_dim;
        let (od, ad) = (self.obs_dim, self.act_dim);
        let s = self.critic.as_mut().context("bundle has no critic")?;
        let m = TensorRef::from_array_view(([members.len()], members))
            .map_err(|e| anyhow!("members: {e}"))?;
        let out = s
            .run(ort::inputs![
                view([1, od], obs)?,
                view([rows, ad], actions)?,
                m,
            ])
            .map_err(|e| anyhow!("critic: {e}"))?;
        copy(&out[0], [members.len(), rows], q, "critic")
    }
}
