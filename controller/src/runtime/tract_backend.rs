//! [`Networks`] on tract (pure Rust, the default).
//!
//! Each graph is loaded with its batch axes fixed to what the policy runs (one
//! observation row, N or n_edit or N + n_edit action rows, K critic members), then
//! optimized once; a `SimpleState` per graph is kept across calls. tract allocates its
//! input, intermediate and output tensors on every run (measured in BENCHMARKS.md); the
//! `native` backend is the allocation-free alternative.

use super::{GraphRows, Networks, copy_output};
use anyhow::{Context, Result};
use shared_model::VerifiedBundle;
use tract_onnx::prelude::*;

type Plan = TypedSimpleState;

pub struct TractNetworks {
    obs_dim: usize,
    act_dim: usize,
    denoiser: Plan,
    edit: Option<Plan>,
    critic: Option<Plan>,
}

fn load(bytes: &[u8], file: &str, inputs: &[(DatumType, Vec<usize>)]) -> Result<Plan> {
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .with_context(|| format!("{file}: tract cannot read the graph"))?;
    for (i, (dt, shape)) in inputs.iter().enumerate() {
        model
            .set_input_fact(i, InferenceFact::dt_shape(*dt, shape.clone()))
            .with_context(|| format!("{file}: tract cannot take input {i} as {dt:?} {shape:?}"))?;
    }
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .with_context(|| {
            format!("{file}: tract cannot optimize the graph for shapes {inputs:?}")
        })?;
    TypedSimpleState::new(&plan).with_context(|| format!("{file}: tract cannot prepare a run"))
}

impl TractNetworks {
    pub fn load(bundle: &VerifiedBundle, rows: GraphRows) -> Result<Self> {
        let m = &bundle.manifest;
        let (od, ad) = (m.observation.dim, m.action.chunk_dim());
        let f = DatumType::F32;
        let denoiser = load(
            &bundle.denoiser,
            &m.graphs.denoiser.file,
            &[
                (f, vec![1, od]),
                (f, vec![rows.denoise, ad]),
                (f, vec![1, 1]),
            ],
        )?;
        let edit = match (&bundle.edit, &m.graphs.edit) {
            (Some(b), Some(g)) if rows.edit > 0 => Some(load(
                b,
                &g.file,
                &[(f, vec![1, od]), (f, vec![rows.edit, ad])],
            )?),
            _ => None,
        };
        let critic = match (&bundle.critic, &m.graphs.critic) {
            (Some(b), Some(g)) if rows.critic_members > 0 => Some(load(
                b,
                &g.file,
                &[
                    (f, vec![1, od]),
                    (f, vec![rows.score, ad]),
                    (DatumType::I64, vec![rows.critic_members]),
                ],
            )?),
            _ => None,
        };
        Ok(TractNetworks {
            obs_dim: od,
            act_dim: ad,
            denoiser,
            edit,
            critic,
        })
    }
}

/// Copies a graph output of the shape the graph contract names (`[rows, A]`, `[K, rows]`):
/// the value count alone would let a transposed output through, read in the wrong order.
fn copy_out(v: &TValue, shape: &[usize], out: &mut [f32], what: &str) -> Result<()> {
    anyhow::ensure!(
        v.shape() == shape,
        "{what}: graph returned shape {:?}, expected {shape:?}",
        v.shape()
    );
    let s = v.try_as_plain_ram()?;
    copy_output(s.as_slice::<f32>()?, out, what)
}

impl Networks for TractNetworks {
    fn denoise(&mut self, obs: &[f32], noisy: &[f32], t: f32, eps: &mut [f32]) -> Result<()> {
        let rows = noisy.len() / self.act_dim;
        let out = self.denoiser.run(tvec![
            Tensor::from_shape(&[1, self.obs_dim], obs)?.into(),
            Tensor::from_shape(&[rows, self.act_dim], noisy)?.into(),
            Tensor::from_shape(&[1, 1], &[t])?.into(),
        ])?;
        copy_out(&out[0], &[rows, self.act_dim], eps, "denoiser")
    }

    fn edit(
        &mut self,
        obs: &[f32],
        base: &[f32],
        mean: &mut [f32],
        log_std: &mut [f32],
    ) -> Result<()> {
        let plan = self.edit.as_mut().context("bundle has no edit policy")?;
        let rows = base.len() / self.act_dim;
        let out = plan.run(tvec![
            Tensor::from_shape(&[1, self.obs_dim], obs)?.into(),
            Tensor::from_shape(&[rows, self.act_dim], base)?.into(),
        ])?;
        copy_out(&out[0], &[rows, self.act_dim], mean, "edit mean")?;
        copy_out(&out[1], &[rows, self.act_dim], log_std, "edit log_std")
    }

    fn critic(
        &mut self,
        obs: &[f32],
        actions: &[f32],
        members: &[i64],
        q: &mut [f32],
    ) -> Result<()> {
        let plan = self.critic.as_mut().context("bundle has no critic")?;
        let rows = actions.len() / self.act_dim;
        let out = plan.run(tvec![
            Tensor::from_shape(&[1, self.obs_dim], obs)?.into(),
            Tensor::from_shape(&[rows, self.act_dim], actions)?.into(),
            Tensor::from_shape(&[members.len()], members)?.into(),
        ])?;
        copy_out(&out[0], &[members.len(), rows], q, "critic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transposed output holds as many values as the expected one: refused by shape.
    #[test]
    fn outputs_of_the_wrong_shape_are_refused() {
        let q: TValue = Tensor::from_shape(&[3, 2], &[0.0f32; 6]).unwrap().into();
        let mut out = [0.0f32; 6];
        copy_out(&q, &[3, 2], &mut out, "critic").unwrap();
        let e = copy_out(&q, &[2, 3], &mut out, "critic").unwrap_err();
        assert!(
            e.to_string()
                .contains("critic: graph returned shape [3, 2], expected [2, 3]"),
            "{e}"
        );
    }
}
