//! EXPO's on-the-fly policy, written once.
//!
//! For a batch of observations: draw `num_samples` base actions from the diffusion
//! policy, edit the first `num_edit` of them with the Gaussian edit policy, score all
//! `num_samples + num_edit` candidates with the minimum over a freshly sampled subset of
//! the target critics, and take the argmax. The same procedure picks the action to
//! execute (with the EMA denoiser) and the next action of the TD target (with the online
//! denoiser). `num_edit = 0` is IDQL-style selection among base samples.
//!
//! The TD target's bootstrap value ([`on_the_fly_value`]) is the minimum over a *second*
//! fresh subset of target critics at the picked next action, not the score that picked
//! it: selection and evaluation use independent subsets, as the public EXPO code's
//! `update_critic` does (it draws the evaluation subset after `sample_batch_actions`).
//! The picked candidate's own score is the maximum of noisy estimates, biased upward.
//!
//! ```text
//!  s' ─► N base samples ─► first n_edit edited ─► score all (min over subset A) ─► argmax a'
//!                                                                                   │
//!  TD target:  y = r + γ·mask · min over subset B of Q_target(s', a')  ◄─────────────┘
//! ```
//!
//! The runner owns the networks, the tensors and the random streams; this module owns
//! the order of operations. The trainer implements [`ExpoRunner`] on burn tensors, the
//! controller on ONNX sessions.

use serde::{Deserialize, Serialize};

/// Parameters of the on-the-fly policy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectionParams {
    /// Base samples per observation (N).
    pub num_samples: usize,
    /// How many of the base samples are edited (n_edit ≤ N).
    pub num_edit: usize,
    /// Critics in the random subset whose minimum scores a candidate.
    pub critic_subset: usize,
}

/// The network operations the selection needs. `Candidates` holds per observation a list
/// of actions (`[B, M, A]` in tensor terms); `Scores` holds `[B, M]`.
pub trait ExpoRunner {
    type Candidates;
    type Scores;
    type Actions;
    /// `n` base-policy samples per observation: `[B, n, A]`.
    fn sample_base(&mut self, n: usize) -> Self::Candidates;
    /// Edited copies of the first `n` candidates: `[B, n, A]`.
    fn edit(&mut self, base: &Self::Candidates, n: usize) -> Self::Candidates;
    /// Concatenates along the candidate axis.
    fn concat(&mut self, a: Self::Candidates, b: Self::Candidates) -> Self::Candidates;
    /// Minimum over a freshly sampled subset of `subset` target critics: `[B, M]`.
    fn score(&mut self, candidates: &Self::Candidates, subset: usize) -> Self::Scores;
    /// The argmax candidate per observation and its score.
    fn pick(&mut self, candidates: Self::Candidates, scores: Self::Scores) -> Self::Actions;
}

/// What the TD target needs besides [`ExpoRunner`]: the target critics' value of
/// picked actions.
pub trait TdRunner: ExpoRunner {
    type Values;
    /// Minimum over a freshly sampled subset of `subset` target critics (drawn after the
    /// scoring subset) at each observation's picked action: `[B, 1]`.
    fn evaluate(&mut self, picked: Self::Actions, subset: usize) -> Self::Values;
}

/// Runs the on-the-fly policy: sample, edit, score, pick.
pub fn on_the_fly_action<R: ExpoRunner>(runner: &mut R, params: &SelectionParams) -> R::Actions {
    let (candidates, scores) = on_the_fly_candidates(runner, params);
    runner.pick(candidates, scores)
}

/// The on-the-fly policy up to the pick: the candidates and their scores.
fn on_the_fly_candidates<R: ExpoRunner>(
    runner: &mut R,
    params: &SelectionParams,
) -> (R::Candidates, R::Scores) {
    assert!(
        params.num_samples > 0,
        "on-the-fly policy needs at least one base sample"
    );
    assert!(
        params.num_edit <= params.num_samples,
        "num_edit ({}) must not exceed num_samples ({})",
        params.num_edit,
        params.num_samples
    );
    // Scored by no critic, every candidate is +∞ and the first always wins: the edits
    // would run and be thrown away, silently.
    assert!(
        params.critic_subset > 0,
        "on-the-fly policy needs at least one critic to score with (critic_subset 0)"
    );
    let base = runner.sample_base(params.num_samples);
    let candidates = if params.num_edit > 0 {
        let edited = runner.edit(&base, params.num_edit);
        runner.concat(base, edited)
    } else {
        base
    };
    let scores = runner.score(&candidates, params.critic_subset);
    (candidates, scores)
}

/// The bootstrap value of EXPO's TD target: the on-the-fly action ([`on_the_fly_action`],
/// scored by one subset of target critics) evaluated by a second, independent subset.
pub fn on_the_fly_value<R: TdRunner>(runner: &mut R, params: &SelectionParams) -> R::Values {
    let picked = on_the_fly_action(runner, params);
    runner.evaluate(picked, params.critic_subset)
}

/// Each candidate's score: the minimum of its Q-values over the sampled critics (`q` is
/// `[members, m]`, row-major, `m` candidates). A NaN from any member makes the score
/// NaN, which [`argmax_rows`] never picks over a finite score: the other members do not
/// outvote it (a plain `f32::min` fold would skip the NaN and score the candidate by
/// fewer critics, or by none: +∞).
pub fn pessimistic_scores(q: &[f32], m: usize, scores: &mut [f32]) {
    assert!(
        scores.len() == m && q.len().is_multiple_of(m.max(1)),
        "q must be [members, m] and scores [m]"
    );
    assert!(
        m == 0 || !q.is_empty(),
        "no critic member's Q-values: every score would be +∞"
    );
    scores.fill(f32::INFINITY);
    for row in q.chunks_exact(m.max(1)) {
        for (s, &v) in scores.iter_mut().zip(row) {
            // Once NaN, a score stays NaN (`v < NaN` is false).
            if v.is_nan() || v < *s {
                *s = v;
            }
        }
    }
}

/// Scores NaN every candidate (`candidates` is `[m, act_dim]`) with a non-finite value,
/// so that [`argmax_rows`] never picks it over a finite one: a critic does not reliably
/// pass NaN through (a ReLU written `max(x, 0)` turns it into 0), and a NaN candidate
/// would otherwise be scored by the critic's weights alone.
pub fn void_non_finite(candidates: &[f32], act_dim: usize, scores: &mut [f32]) {
    assert_eq!(
        candidates.len(),
        scores.len() * act_dim,
        "candidates must be [m, act_dim] and scores [m]"
    );
    for (row, s) in candidates.chunks_exact(act_dim.max(1)).zip(scores) {
        if row.iter().any(|v| !v.is_finite()) {
            *s = f32::NAN;
        }
    }
}

/// Row-wise argmax of `scores` (`[rows, m]`, row-major), first index on ties. NaN counts
/// as −∞: it never wins over a finite score and ties with −∞, as in the trainer's
/// selection (which turns NaN into −∞ on the device and takes the first of the best).
pub fn argmax_rows(scores: &[f32], m: usize, out: &mut [usize]) {
    assert_eq!(scores.len(), out.len() * m, "scores must be [rows, m]");
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    for (row, o) in scores.chunks_exact(m).zip(out.iter_mut()) {
        let mut best = 0;
        for (j, &s) in row.iter().enumerate() {
            if key(s) > key(row[best]) {
                best = j;
            }
        }
        *o = best;
    }
}

/// Draws `k` distinct members out of `perm.len()` uniformly (partial Fisher-Yates) into
/// `perm[..k]`, consuming exactly `k` values of `next_u64`. `perm` is reset to the
/// identity first, so the draw depends only on the random stream.
pub fn sample_subset(perm: &mut [usize], k: usize, mut next_u64: impl FnMut() -> u64) {
    let n = perm.len();
    assert!(k <= n, "subset of {k} out of {n} members");
    for (i, p) in perm.iter_mut().enumerate() {
        *p = i;
    }
    for i in 0..k {
        let j = i + (next_u64() % (n - i) as u64) as usize;
        perm.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_from_any_critic_loses_the_candidate() {
        // Two members, three candidates: [members, m].
        let q = [
            1.0,
            f32::NAN,
            0.5, //
            2.0,
            3.0,
            f32::NAN,
        ];
        let mut scores = [0.0; 3];
        pessimistic_scores(&q, 3, &mut scores);
        assert_eq!(scores[0], 1.0);
        assert!(scores[1].is_nan() && scores[2].is_nan());
        let mut best = [9];
        argmax_rows(&scores, 3, &mut best);
        assert_eq!(best, [0]);
        // All NaN: every score NaN, and argmax stays at the first.
        pessimistic_scores(&[f32::NAN; 6], 3, &mut scores);
        assert!(scores.iter().all(|s| s.is_nan()));
        argmax_rows(&scores, 3, &mut best);
        assert_eq!(best, [0]);
        // The minimum, not the mean.
        pessimistic_scores(&[1.0, 5.0, -2.0, 4.0], 2, &mut scores[..2]);
        assert_eq!(scores[..2], [-2.0, 4.0]);
    }

    /// A scalar runner: one observation, candidates are numbers, score = −|c − 0.3|.
    struct Toy {
        calls: Vec<&'static str>,
    }
    impl ExpoRunner for Toy {
        type Candidates = Vec<f32>;
        type Scores = Vec<f32>;
        type Actions = (f32, f32);
        fn sample_base(&mut self, n: usize) -> Vec<f32> {
            self.calls.push("sample");
            (0..n).map(|i| i as f32 * 0.25).collect()
        }
        fn edit(&mut self, base: &Vec<f32>, n: usize) -> Vec<f32> {
            self.calls.push("edit");
            base[..n].iter().map(|x| x + 0.05).collect()
        }
        fn concat(&mut self, mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
            a.extend(b);
            a
        }
        fn score(&mut self, c: &Vec<f32>, subset: usize) -> Vec<f32> {
            assert_eq!(subset, 2);
            self.calls.push("score");
            c.iter().map(|x| -(x - 0.3).abs()).collect()
        }
        fn pick(&mut self, c: Vec<f32>, s: Vec<f32>) -> (f32, f32) {
            let mut i = [0];
            argmax_rows(&s, s.len(), &mut i);
            (c[i[0]], s[i[0]])
        }
    }
    impl TdRunner for Toy {
        type Values = f32;
        /// Another "subset": Q = 10 · the action, unlike the scoring critics.
        fn evaluate(&mut self, (a, _score): (f32, f32), subset: usize) -> f32 {
            assert_eq!(subset, 2);
            self.calls.push("evaluate");
            10.0 * a
        }
    }

    #[test]
    fn picks_the_best_of_base_and_edited() {
        let mut toy = Toy { calls: vec![] };
        let p = SelectionParams {
            num_samples: 4,
            num_edit: 2,
            critic_subset: 2,
        };
        // Base 0, 0.25, 0.5, 0.75; edited 0.05, 0.30 → the edited 0.30 wins.
        let (a, s) = on_the_fly_action(&mut toy, &p);
        assert!((a - 0.30).abs() < 1e-6 && s.abs() < 1e-6);
        assert_eq!(toy.calls, ["sample", "edit", "score"]);
        // Without edits the best base sample (0.25) wins and no edit runs.
        let mut toy = Toy { calls: vec![] };
        let (a, _) = on_the_fly_action(&mut toy, &SelectionParams { num_edit: 0, ..p });
        assert_eq!(a, 0.25);
        assert_eq!(toy.calls, ["sample", "score"]);
    }

    /// No critic to score with is refused, not a silent "first candidate wins" (every
    /// score +∞); so is scoring without any member's values.
    #[test]
    #[should_panic(expected = "at least one critic to score with")]
    fn selection_without_a_critic_is_refused() {
        let mut toy = Toy { calls: vec![] };
        let p = SelectionParams {
            num_samples: 4,
            num_edit: 4,
            critic_subset: 0,
        };
        on_the_fly_action(&mut toy, &p);
    }

    #[test]
    #[should_panic(expected = "no critic member's Q-values")]
    fn scores_without_members_are_refused() {
        pessimistic_scores(&[], 3, &mut [0.0; 3]);
    }

    /// The TD target's value is the evaluation subset's value of the picked action, drawn
    /// after the scoring; not the picked action's own score.
    #[test]
    fn td_value_evaluates_the_pick_with_a_second_subset() {
        let mut toy = Toy { calls: vec![] };
        let p = SelectionParams {
            num_samples: 4,
            num_edit: 2,
            critic_subset: 2,
        };
        let v = on_the_fly_value(&mut toy, &p);
        assert!((v - 3.0).abs() < 1e-6, "10 × the picked 0.30, got {v}");
        assert_eq!(toy.calls, ["sample", "edit", "score", "evaluate"]);
    }

    #[test]
    fn a_non_finite_candidate_scores_nan() {
        let candidates = [0.1, 0.2, f32::NAN, 0.0, 0.3, f32::INFINITY, -0.5, 0.5];
        let mut scores = [1.0, 9.0, 2.0, 3.0];
        void_non_finite(&candidates, 2, &mut scores);
        assert_eq!(scores[0], 1.0);
        assert!(scores[1].is_nan() && scores[2].is_nan());
        assert_eq!(scores[3], 3.0);
        let mut best = [0];
        argmax_rows(&scores, 4, &mut best);
        assert_eq!(best, [3]);
    }

    #[test]
    fn argmax_rows_ties_and_nan() {
        let mut out = [0; 3];
        argmax_rows(
            &[1.0, 3.0, 3.0, f32::NAN, -1.0, -2.0, 0.0, 0.0, 0.0],
            3,
            &mut out,
        );
        assert_eq!(out, [1, 1, 0]);
        // NaN ties with −∞ (the first of them wins) and loses to anything finite.
        let mut out = [0; 2];
        argmax_rows(
            &[
                f32::NAN,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                -1e30,
            ],
            5,
            &mut out[..1],
        );
        assert_eq!(out[0], 4);
        argmax_rows(&[f32::NAN, f32::NEG_INFINITY], 2, &mut out[..1]);
        assert_eq!(out[0], 0);
    }
}
