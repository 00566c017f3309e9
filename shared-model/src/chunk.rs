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

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "replan_every must be in 1..={horizon} (the action horizon; 0 = the whole chunk), not {replan_every}"
)]
pub struct ChunkPlayError {
    pub horizon: usize,
    pub replan_every: usize,
}

/// How a policy's chunks of `horizon` actions are played: the first `replan_every` of
/// them, one per step, then a new plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlay {
    horizon: usize,
    replan_every: usize,
}

impl ChunkPlay {
    /// One action per plan: a policy without chunks.
    pub const SINGLE: ChunkPlay = ChunkPlay {
        horizon: 1,
        replan_every: 1,
    };

    /// `replan_every` 0 plays whole chunks. `horizon` must be at least 1.
    pub fn new(horizon: usize, replan_every: usize) -> Result<Self, ChunkPlayError> {
        let k = if replan_every == 0 {
            horizon
        } else {
            replan_every
        };
        if horizon == 0 || k > horizon {
            return Err(ChunkPlayError {
                horizon,
                replan_every,
            });
        }
        Ok(ChunkPlay {
            horizon,
            replan_every: k,
        })
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

    /// `"chunks of H actions[, replanning every K]"` for logs; `None` without chunks.
    pub fn describe(&self) -> Option<String> {
        match (self.horizon, self.replan_every) {
            (1, _) => None,
            (h, k) if k == h => Some(format!("chunks of {h} actions")),
            (h, k) => Some(format!("chunks of {h} actions, replanning every {k}")),
        }
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
    }
}
