//! Playing action chunks: which of a chunk's actions a step takes, and when the policy
//! plans a new chunk.
//!
//! ```text
//!  horizon H = 4, replan_every K = 2
//!  step       p    p+1   p+2   p+3   p+4 ...
//!  plan       ●          ●           ●
//!  action     c0   c1    c0'   c1'   c0''     (c2, c3 of each chunk are never played)
//! ```
//!
//! `K = H` (the default) plays every chunk out, open loop, as the critics valued it.
//! `K < H` is receding-horizon execution: the policy replans before the chunk ends and
//! reacts sooner, at `H / K` times the planning cost. The trainer's online acting and
//! evaluation and the controller's loop all use this one rule.
//!
//! **Temporal ensembling** (ACT, Zhao et al. 2023; [`TemporalEnsemble`]), for playing
//! only (evaluation and the controller, not online training): every chunk planned in the
//! last `H` steps holds an action for the current step, and the step takes their
//! weighted mean instead of the newest chunk's action.
//!
//! ```text
//!  H = 3, K = 1          step t-2   t-1    t
//!  chunk planned at t-2:  a0        a1     a2 ─┐ weight e^(−m·0)  (the oldest)
//!  chunk planned at t-1:            b0     b1 ─┤ weight e^(−m·1)
//!  chunk planned at t:                     c0 ─┘ weight e^(−m·2)
//!  action at t = (a2 + e^−m·b1 + e^−2m·c0) / (1 + e^−m + e^−2m)
//! ```
//!
//! `m` = 0 is the plain mean, `m` > 0 trusts the older plans more (ACT's choice, 0.01:
//! nearly the plain mean), `m` < 0 the newer ones. The blended action was not scored by
//! the critics as a whole; it is a smoothing of actions each of which was chosen.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum ChunkPlayError {
    #[error(
        "replan_every must be 0 (play whole chunks) or in 1..={horizon} (the action horizon), not {replan_every}"
    )]
    ReplanEvery { horizon: usize, replan_every: usize },
    #[error(
        "temporal ensembling needs action chunks: the policy plans one action at a time (horizon 1)"
    )]
    EnsembleWithoutChunks,
    #[error(
        "the temporal ensembling weight m must be finite, with |m|·(H − 1) ≤ 80 so that the weights e^(−m·i) stay finite (H = {horizon}), not {m}"
    )]
    EnsembleWeight { horizon: usize, m: f32 },
    #[error(
        "temporal ensembling blends the chunks that cover a step, and chunks of {horizon} played whole never overlap: replan more often (replan_every below {horizon})"
    )]
    EnsembleWithoutOverlap { horizon: usize },
}

/// How a policy's chunks of `horizon` actions are played: the first `replan_every` of
/// them, one per step, then a new plan; optionally each step's action blended from every
/// chunk that covers it ([`TemporalEnsemble`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkPlay {
    horizon: usize,
    replan_every: usize,
    /// Temporal ensembling's `m` (weights `e^(−m·i)`, `i` = 0 for the oldest plan).
    ensemble: Option<f32>,
}

impl ChunkPlay {
    /// One action per plan: a policy without chunks.
    pub const SINGLE: ChunkPlay = ChunkPlay {
        horizon: 1,
        replan_every: 1,
        ensemble: None,
    };

    /// `replan_every` 0 plays whole chunks. `horizon` must be at least 1.
    pub fn new(horizon: usize, replan_every: usize) -> Result<Self, ChunkPlayError> {
        let k = if replan_every == 0 {
            horizon
        } else {
            replan_every
        };
        if horizon == 0 || k > horizon {
            return Err(ChunkPlayError::ReplanEvery {
                horizon,
                replan_every,
            });
        }
        Ok(ChunkPlay {
            horizon,
            replan_every: k,
            ensemble: None,
        })
    }

    /// The same play with temporal ensembling of weight `m` (`None`: without). Needs
    /// chunks (horizon > 1) that overlap (replanned before they are played whole: it
    /// blended nothing, and said nothing) and a finite `m` with `|m|·(H − 1) ≤ 80`.
    pub fn with_ensemble(self, m: Option<f32>) -> Result<Self, ChunkPlayError> {
        let horizon = self.horizon;
        match m {
            None => {}
            Some(m) if !m.is_finite() || m.abs() * (horizon - 1) as f32 > 80.0 => {
                return Err(ChunkPlayError::EnsembleWeight { horizon, m });
            }
            Some(_) if self.horizon == 1 => return Err(ChunkPlayError::EnsembleWithoutChunks),
            Some(_) if self.replan_every == horizon => {
                return Err(ChunkPlayError::EnsembleWithoutOverlap { horizon });
            }
            Some(_) => {}
        }
        Ok(ChunkPlay {
            ensemble: m,
            ..self
        })
    }

    /// Temporal ensembling's weight `m`, if the steps' actions are blended.
    pub fn ensemble(&self) -> Option<f32> {
        self.ensemble
    }

    /// Actions per chunk.
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// Actions played from each chunk before the next plan (1..=horizon).
    pub fn replan_every(&self) -> usize {
        self.replan_every
    }

    /// The index in the chunk of the action for a step `since` steps after the chunk was
    /// planned; `None`: plan a new chunk on this step.
    pub fn index(&self, since: u64) -> Option<usize> {
        (since < self.replan_every as u64).then_some(since as usize)
    }

    /// `"chunks of H actions[, replanning every K][, temporal ensembling m = M]"` for
    /// logs; `None` without chunks.
    pub fn describe(&self) -> Option<String> {
        let mut d = match (self.horizon, self.replan_every) {
            (1, _) => return None,
            (h, k) if k == h => format!("chunks of {h} actions"),
            (h, k) => format!("chunks of {h} actions, replanning every {k}"),
        };
        if let Some(m) = self.ensemble {
            d += &format!(", temporal ensembling m = {m}");
        }
        Some(d)
    }
}

/// The last `H` chunks of one episode and the blend of their actions for a step (the
/// module documentation). Fixed memory (`H` chunks of `H·A` values), no allocation after
/// [`TemporalEnsemble::new`], so the controller's loop can use it.
#[derive(Clone, Debug)]
pub struct TemporalEnsemble {
    horizon: usize,
    act_dim: usize,
    m: f32,
    /// `[H, H·A]`: the chunk planned at step `p` is in row `p mod H`. The chunks that
    /// cover a step were planned on `H` consecutive steps, so they never share a row.
    chunks: Vec<f32>,
    /// The step each row's chunk was planned on (`None`: empty).
    planned: Vec<Option<u64>>,
}

impl TemporalEnsemble {
    /// For chunks of `play.horizon()` actions of `act_dim` values, with `play`'s weight;
    /// `None` when `play` does not blend.
    pub fn for_play(play: &ChunkPlay, act_dim: usize) -> Option<Self> {
        let h = play.horizon();
        Some(TemporalEnsemble {
            horizon: h,
            act_dim,
            m: play.ensemble()?,
            chunks: vec![0.0; h * h * act_dim],
            planned: vec![None; h],
        })
    }

    /// Keeps `chunk` (`[H·A]`), planned on `step`, in place of the one planned `H` steps
    /// before.
    pub fn add(&mut self, step: u64, chunk: &[f32]) {
        let cw = self.horizon * self.act_dim;
        assert_eq!(chunk.len(), cw, "a chunk of {} actions", self.horizon);
        let row = (step % self.horizon as u64) as usize;
        self.chunks[row * cw..(row + 1) * cw].copy_from_slice(chunk);
        self.planned[row] = Some(step);
    }

    /// Writes the blended action for `step` (`[A]`) and returns how many chunks it
    /// blends; 0 (and `out` untouched) when no kept chunk covers `step`.
    pub fn action(&self, step: u64, out: &mut [f32]) -> usize {
        let (h, ad) = (self.horizon as u64, self.act_dim);
        assert_eq!(out.len(), ad, "an action of {ad} values");
        let cw = self.horizon * ad;
        let mut count = 0usize;
        let mut total = 0.0f32;
        // Oldest plan first: planned on step − H + 1, …, step.
        for planned in step.saturating_sub(h - 1)..=step {
            let row = (planned % h) as usize;
            if self.planned[row] != Some(planned) {
                continue;
            }
            let w = (-self.m * count as f32).exp();
            let k = (step - planned) as usize;
            let a = &self.chunks[row * cw + k * ad..row * cw + (k + 1) * ad];
            if count == 0 {
                out.fill(0.0);
            }
            for (o, v) in out.iter_mut().zip(a) {
                *o += w * v;
            }
            total += w;
            count += 1;
        }
        if count > 0 {
            for o in out.iter_mut() {
                *o /= total;
            }
        }
        count
    }

    /// Forgets every chunk (a new episode).
    pub fn clear(&mut self) {
        self.planned.fill(None);
    }
}

/// [`ChunkPlay`] for a loop that takes every step (simulated episodes): counts the
/// steps since the last plan.
#[derive(Clone, Copy, Debug)]
pub struct ChunkClock {
    play: ChunkPlay,
    /// Steps since the chunk was planned; `None`: plan on the next step.
    since: Option<u64>,
}

impl ChunkClock {
    pub fn new(play: ChunkPlay) -> Self {
        ChunkClock { play, since: None }
    }

    /// One step: the index of its action in the chunk, and whether the policy must plan
    /// a new chunk first (then the index is 0).
    pub fn tick(&mut self) -> (usize, bool) {
        let (k, plan) = match self.since.and_then(|n| self.play.index(n)) {
            Some(k) => (k, false),
            None => (0, true),
        };
        self.since = Some(k as u64 + 1);
        (k, plan)
    }

    /// Plan on the next step (a new episode).
    pub fn restart(&mut self) {
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_the_first_k_actions_then_replans() {
        let p = ChunkPlay::new(4, 2).unwrap();
        let got: Vec<_> = (0..4).map(|s| p.index(s)).collect();
        assert_eq!(got, [Some(0), Some(1), None, None]);
        let whole = ChunkPlay::new(4, 0).unwrap();
        assert_eq!(whole.replan_every(), 4);
        assert_eq!(whole.index(3), Some(3));
        assert_eq!(whole.index(4), None);
        assert_eq!(ChunkPlay::SINGLE.index(0), Some(0));
        assert_eq!(ChunkPlay::SINGLE.index(1), None);
        assert_eq!(ChunkPlay::new(1, 0).unwrap(), ChunkPlay::SINGLE);
        let mut clock = ChunkClock::new(p);
        let ticks: Vec<_> = (0..5).map(|_| clock.tick()).collect();
        assert_eq!(
            ticks,
            [(0, true), (1, false), (0, true), (1, false), (0, true)]
        );
        clock.restart();
        assert_eq!(clock.tick(), (0, true));
        assert_eq!(
            p.describe().unwrap(),
            "chunks of 4 actions, replanning every 2"
        );
        assert_eq!(whole.describe().unwrap(), "chunks of 4 actions");
        assert_eq!(ChunkPlay::SINGLE.describe(), None);
    }

    #[test]
    fn refuses_more_than_the_chunk() {
        let e = ChunkPlay::new(4, 5).unwrap_err();
        assert!(e.to_string().contains("1..=4"), "{e}");
        assert!(ChunkPlay::new(0, 0).is_err());
        let e = ChunkPlay::SINGLE.with_ensemble(Some(0.01)).unwrap_err();
        assert!(e.to_string().contains("needs action chunks"), "{e}");
        let e = ChunkPlay::new(4, 1)
            .unwrap()
            .with_ensemble(Some(f32::NAN))
            .unwrap_err();
        assert!(e.to_string().contains("finite"), "{e}");
        let e = ChunkPlay::new(5, 1)
            .unwrap()
            .with_ensemble(Some(-21.0))
            .unwrap_err();
        assert!(e.to_string().contains("H = 5"), "{e}");
        assert!(
            ChunkPlay::new(5, 1)
                .unwrap()
                .with_ensemble(Some(-20.0))
                .is_ok()
        );
        assert_eq!(ChunkPlay::SINGLE.with_ensemble(None), Ok(ChunkPlay::SINGLE));
        let e = ChunkPlay::new(4, 0)
            .unwrap()
            .with_ensemble(Some(0.0))
            .unwrap_err();
        assert!(e.to_string().contains("never overlap"), "{e}");
        assert!(
            ChunkPlay::new(4, 3)
                .unwrap()
                .with_ensemble(Some(0.0))
                .is_ok()
        );
    }

    /// Chunk `p` (planned on step p) holds `10·p + k` for its action `k`, in both of its
    /// 2 values (the second negated).
    fn chunk(p: u64, h: usize) -> Vec<f32> {
        (0..h)
            .flat_map(|k| {
                let v = 10.0 * p as f32 + k as f32;
                [v, -v]
            })
            .collect()
    }

    #[test]
    fn ensemble_blends_every_chunk_covering_the_step_oldest_weighted_first() {
        let m = 0.5f32;
        let play = ChunkPlay::new(3, 1)
            .unwrap()
            .with_ensemble(Some(m))
            .unwrap();
        assert_eq!(
            play.describe().unwrap(),
            "chunks of 3 actions, replanning every 1, temporal ensembling m = 0.5"
        );
        let mut e = TemporalEnsemble::for_play(&play, 2).unwrap();
        let mut out = [f32::NAN; 2];
        assert_eq!(e.action(0, &mut out), 0, "nothing planned yet");
        assert!(out[0].is_nan(), "left untouched");
        for p in 0..5 {
            e.add(p, &chunk(p, 3));
        }
        // Step 4 is covered by the chunks of steps 2 (its action 2: 22), 3 (action 1:
        // 31) and 4 (action 0: 40), weighted 1, e^−m, e^−2m.
        let w = [1.0, (-m).exp(), (-2.0 * m).exp()];
        let want = (22.0 * w[0] + 31.0 * w[1] + 40.0 * w[2]) / (w[0] + w[1] + w[2]);
        assert_eq!(e.action(4, &mut out), 3);
        assert!(
            (out[0] - want).abs() < 1e-5 && (out[1] + want).abs() < 1e-5,
            "{out:?}"
        );
        // Step 5: chunk 2 no longer covers it; chunks 3 and 4 do.
        let want = (32.0 + 41.0 * (-m).exp()) / (1.0 + (-m).exp());
        assert_eq!(e.action(5, &mut out), 2);
        assert!((out[0] - want).abs() < 1e-5, "{out:?}");
        // m = 0 is the plain mean; with K = 2 only every other step plans.
        let play = ChunkPlay::new(4, 2)
            .unwrap()
            .with_ensemble(Some(0.0))
            .unwrap();
        let mut e = TemporalEnsemble::for_play(&play, 2).unwrap();
        e.add(0, &chunk(0, 4));
        e.add(2, &chunk(2, 4));
        assert_eq!(e.action(3, &mut out), 2);
        assert_eq!(out, [(3.0 + 21.0) / 2.0, -(3.0 + 21.0) / 2.0]);
        // A new plan on step 4 replaces step 0's chunk in its row.
        e.add(4, &chunk(4, 4));
        assert_eq!(e.action(4, &mut out), 2);
        assert_eq!(out[0], (22.0 + 40.0) / 2.0);
        e.clear();
        assert_eq!(e.action(4, &mut out), 0);
    }
}
