//! DDPM noise schedule (variance preserving) and the reverse-step coefficients.
//!
//! The VP schedule of Song et al. as used by IDQL and EXPO: for `T` steps and
//! `t = 1..=T`, `α_t = exp(−b_min/T − ½ (b_max − b_min)(2t − 1)/T²)`, `β_t = 1 − α_t`,
//! `ᾱ_t = ∏_{s≤t} α_s`. Index `t` here is 0-based (`0..T`), the integer step that also
//! conditions the denoiser.
//!
//! Forward (training): `x_t = √ᾱ_t · a + √(1 − ᾱ_t) · ε`.
//! Reverse (sampling), from `t = T−1` down to `0`:
//! `x_{t−1} = (x_t − β_t/√(1 − ᾱ_t) · ε̂) / √α_t + σ_t z` with `σ_t² = β_t` (zero at
//! `t = 0`), clipped to `[−1, 1]` after every step. `σ_t² = β_t` is the larger of DDPM's
//! two choices and the one the EXPO and IDQL samplers use (`√β_t · z`). Until 2026-12-02
//! this sampler used the posterior variance `β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)`, which at
//! `T = 10` is 0.54-0.82 of that noise at `t = 1..3`: base candidates less spread than
//! the reference's.

use serde::{Deserialize, Serialize};

/// Precomputed schedule (computed in f64, stored as f32).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffusionSchedule {
    pub betas: Vec<f32>,
    pub alphas: Vec<f32>,
    pub alpha_bars: Vec<f32>,
}

/// Coefficients of one reverse step: `x ← (x − eps_coef · ε̂) · inv_sqrt_alpha + sigma · z`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReverseStep {
    pub inv_sqrt_alpha: f32,
    pub eps_coef: f32,
    pub sigma: f32,
}

impl DiffusionSchedule {
    /// The VP schedule with `steps` steps.
    pub fn vp(steps: usize, beta_min: f64, beta_max: f64) -> Self {
        assert!(steps > 0, "diffusion needs at least one step");
        let t_max = steps as f64;
        let mut alpha_bar = 1.0f64;
        let (mut betas, mut alphas, mut alpha_bars) = (vec![], vec![], vec![]);
        for i in 1..=steps {
            let t = i as f64;
            let alpha = (-beta_min / t_max
                - 0.5 * (beta_max - beta_min) * (2.0 * t - 1.0) / (t_max * t_max))
                .exp();
            alpha_bar *= alpha;
            betas.push((1.0 - alpha) as f32);
            alphas.push(alpha as f32);
            alpha_bars.push(alpha_bar as f32);
        }
        DiffusionSchedule {
            betas,
            alphas,
            alpha_bars,
        }
    }

    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// Why this schedule cannot be sampled in f32, if it cannot. A noise level that
    /// rounds to none (`β_t = 0` or `ᾱ_t = 1`: the reverse step divides by
    /// `√(1 − ᾱ_t)`) or to everything (`α_t` or `ᾱ_t` not a normal f32: the steps
    /// divide by `√α_t` and `√ᾱ_t`) would turn every sampled action into ±1 or NaN.
    pub fn degenerate(&self) -> Option<String> {
        for t in 0..self.steps() {
            let (beta, alpha, ab) = (self.betas[t], self.alphas[t], self.alpha_bars[t]);
            if !(beta > 0.0 && ab < 1.0) {
                return Some(format!(
                    "the noise of step {t} rounds to zero in f32 (beta {beta:e}, alpha_bar {ab}): raise beta_min"
                ));
            }
            if !(alpha.is_normal() && ab.is_normal()) {
                return Some(format!(
                    "the signal of step {t} rounds to zero in f32 (alpha {alpha:e}, alpha_bar {ab:e}): lower beta_max"
                ));
            }
        }
        None
    }

    /// `(√ᾱ_t, √(1 − ᾱ_t))` for noising at step `t`.
    pub fn noising(&self, t: usize) -> (f32, f32) {
        let ab = self.alpha_bars[t] as f64;
        (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32)
    }

    /// Coefficients of the reverse step from `t` to `t − 1`.
    pub fn reverse(&self, t: usize) -> ReverseStep {
        let beta = self.betas[t] as f64;
        let alpha = self.alphas[t] as f64;
        let ab = self.alpha_bars[t] as f64;
        let sigma = if t == 0 { 0.0 } else { beta.sqrt() };
        ReverseStep {
            inv_sqrt_alpha: (1.0 / alpha.sqrt()) as f32,
            eps_coef: (beta / (1.0 - ab).sqrt()) as f32,
            sigma: sigma as f32,
        }
    }
}

/// One executed step of a sampling chain: `x ← x_coef·x + eps_coef·ε̂ + sigma·z`, then
/// clip to `[−1, 1]`; the denoiser is conditioned on step `t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingStep {
    pub t: usize,
    pub x_coef: f32,
    pub eps_coef: f32,
    pub sigma: f32,
}

impl DiffusionSchedule {
    /// The steps a sampler executes. With `executed == steps()` this is the full DDPM
    /// chain the policy was trained for (ancestral sampling, [`Self::reverse`]). With
    /// fewer it is a truncated, deterministic DDIM chain (η = 0) over `executed`
    /// timesteps spread evenly from `T − 1` down to `0`: from `t` to the next kept step
    /// `p` (or to the clean action after the last), `x_p = √ᾱ_p x̂₀ + √(1 − ᾱ_p) ε̂` with
    /// `x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t`.
    pub fn sampling_plan(&self, executed: usize) -> Vec<SamplingStep> {
        let steps = self.steps();
        assert!(
            (1..=steps).contains(&executed),
            "executed steps ({executed}) must be in 1..={steps}"
        );
        if executed == steps {
            return (0..steps)
                .rev()
                .map(|t| {
                    let r = self.reverse(t);
                    SamplingStep {
                        t,
                        x_coef: r.inv_sqrt_alpha,
                        eps_coef: -r.eps_coef * r.inv_sqrt_alpha,
                        sigma: r.sigma,
                    }
                })
                .collect();
        }
        let kept: Vec<usize> = if executed == 1 {
            vec![steps - 1]
        } else {
            (0..executed)
                .map(|i| {
                    let frac = i as f64 / (executed - 1) as f64;
                    ((steps - 1) as f64 * (1.0 - frac)).round() as usize
                })
                .collect()
        };
        kept.iter()
            .enumerate()
            .map(|(i, &t)| {
                let ab = self.alpha_bars[t] as f64;
                let ab_prev = kept.get(i + 1).map_or(1.0, |&p| self.alpha_bars[p] as f64);
                let x_coef = (ab_prev / ab).sqrt();
                let eps_coef = (1.0 - ab_prev).sqrt() - x_coef * (1.0 - ab).sqrt();
                SamplingStep {
                    t,
                    x_coef: x_coef as f32,
                    eps_coef: eps_coef as f32,
                    sigma: 0.0,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp_schedule_matches_hand_values() {
        // T = 2, b_min 0.1, b_max 10:
        // α_1 = exp(−0.05 − 0.5·9.9·1/4) = exp(−1.2875) = 0.2759598…
        // α_2 = exp(−0.05 − 0.5·9.9·3/4) = exp(−3.7625) = 0.0232256…
        let s = DiffusionSchedule::vp(2, 0.1, 10.0);
        assert!((s.alphas[0] - 0.275_959_8).abs() < 1e-6, "{}", s.alphas[0]);
        assert!((s.alphas[1] - 0.023_225_6).abs() < 1e-6, "{}", s.alphas[1]);
        assert!((s.betas[0] - (1.0 - 0.275_959_8)).abs() < 1e-6);
        assert!((s.alpha_bars[1] - 0.275_959_8 * 0.023_225_6).abs() < 1e-6);
    }

    #[test]
    fn ten_step_schedule_is_monotone_and_ends_near_pure_noise() {
        let s = DiffusionSchedule::vp(10, 0.1, 10.0);
        assert_eq!(s.steps(), 10);
        for t in 1..10 {
            assert!(s.betas[t] > s.betas[t - 1]);
            assert!(s.alpha_bars[t] < s.alpha_bars[t - 1]);
        }
        // ᾱ_T = exp(−b_min − ½(b_max − b_min)) = exp(−5.05)
        assert!((s.alpha_bars[9] - (-5.05f32).exp()).abs() < 1e-6);
    }

    #[test]
    fn reverse_step_inverts_noising_without_noise() {
        // With the true ε and σ ignored, one reverse step from t to t−1 gives the mean of
        // q(x_{t−1} | x_t, x_0); at t = 0 it returns x_0 exactly.
        let s = DiffusionSchedule::vp(5, 0.1, 10.0);
        let (x0, eps) = (0.3f32, -0.7f32);
        let (a, b) = s.noising(0);
        let x1 = a * x0 + b * eps;
        let r = s.reverse(0);
        assert_eq!(r.sigma, 0.0);
        assert!(((x1 - r.eps_coef * eps) * r.inv_sqrt_alpha - x0).abs() < 1e-5);
        // The reference sampler's noise: √β_t past the last step.
        for t in 1..5 {
            assert_eq!(s.reverse(t).sigma, s.betas[t].sqrt(), "t = {t}");
        }
        // At every other step too the mean is the posterior's: √ᾱ_{t−1} β_t / (1 − ᾱ_t)
        // x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) x_t (at t = 0 alone ᾱ_t = α_t, so a wrong
        // ᾱ index passed the check above).
        for t in 1..5 {
            let (a, b) = s.noising(t);
            let xt = (a * x0 + b * eps) as f64;
            let r = s.reverse(t);
            let mean = (xt - r.eps_coef as f64 * eps as f64) * r.inv_sqrt_alpha as f64;
            let (beta, alpha) = (s.betas[t] as f64, s.alphas[t] as f64);
            let (ab, ab_prev) = (s.alpha_bars[t] as f64, s.alpha_bars[t - 1] as f64);
            let posterior = ab_prev.sqrt() * beta / (1.0 - ab) * x0 as f64
                + alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab) * xt;
            assert!(
                (mean - posterior).abs() < 1e-5,
                "t = {t}: {mean} vs {posterior}"
            );
        }
    }

    #[test]
    fn sampling_plans() {
        let s = DiffusionSchedule::vp(10, 0.1, 10.0);
        let full = s.sampling_plan(10);
        assert_eq!(
            full.iter().map(|p| p.t).collect::<Vec<_>>(),
            (0..10).rev().collect::<Vec<_>>()
        );
        assert_eq!(full[9].sigma, 0.0);
        // The full chain's steps are the samplers' own (trainer and controller run the
        // plan, not `reverse`): with the true ε each gives the posterior mean of x_{t−1}
        // (x_0 at t = 0), and its noise is √β_t before the last step. A wrong sign or
        // coefficient here passed every test, both sides agreeing on the wrong chain.
        let (x0, eps) = (0.3f64, -0.7f64);
        for p in &full {
            let t = p.t;
            let (a, b) = s.noising(t);
            let xt = a as f64 * x0 + b as f64 * eps;
            let mean = p.x_coef as f64 * xt + p.eps_coef as f64 * eps;
            let expected = if t == 0 {
                x0
            } else {
                let (beta, alpha) = (s.betas[t] as f64, s.alphas[t] as f64);
                let (ab, ab_prev) = (s.alpha_bars[t] as f64, s.alpha_bars[t - 1] as f64);
                ab_prev.sqrt() * beta / (1.0 - ab) * x0
                    + alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab) * xt
            };
            assert!(
                (mean - expected).abs() < 1e-5,
                "t = {t}: {mean} vs {expected}"
            );
            let sigma = if t == 0 { 0.0 } else { s.betas[t].sqrt() };
            assert_eq!(p.sigma, sigma, "t = {t}");
        }
        let short = s.sampling_plan(3);
        assert_eq!(short.iter().map(|p| p.t).collect::<Vec<_>>(), [9, 5, 0]);
        // DDIM with the true noise recovers the clean action exactly from any start.
        let (x0, eps) = (0.4f64, 0.8f64);
        let (a, b) = s.noising(9);
        let mut x = a as f64 * x0 + b as f64 * eps;
        for p in &short {
            x = p.x_coef as f64 * x + p.eps_coef as f64 * eps;
        }
        assert!((x - x0).abs() < 1e-5, "{x}");
        assert_eq!(s.sampling_plan(1)[0].t, 9);
    }
}
