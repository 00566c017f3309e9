//! Per-feature running statistics (mean/std/min/max), mergeable batch by batch.

use std::collections::BTreeMap;

use crate::{Episode, FeatureStats, cols};

/// Running per-dimension statistics using Chan et al.'s parallel merge of
/// (count, mean, M2), so episodes can be folded in one at a time without
/// the cancellation problems of sum/sum-of-squares.
#[derive(Debug, Clone)]
pub(crate) struct Acc {
    count: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
}

impl Acc {
    pub(crate) fn new(dim: usize) -> Self {
        Self {
            count: 0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
            min: vec![f64::INFINITY; dim],
            max: vec![f64::NEG_INFINITY; dim],
        }
    }

    /// Fold in `rows` rows; `values(row, dim)` yields one element.
    pub(crate) fn push_rows(&mut self, values: impl Fn(usize, usize) -> f64, rows: usize) {
        if rows == 0 {
            return;
        }
        let dim = self.mean.len();
        let n_b = rows as f64;
        for j in 0..dim {
            // Two-pass mean / M2 of this batch, then merge.
            let mut sum = 0.0;
            for i in 0..rows {
                let v = values(i, j);
                sum += v;
                self.min[j] = self.min[j].min(v);
                self.max[j] = self.max[j].max(v);
            }
            let mean_b = sum / n_b;
            let m2_b: f64 = (0..rows).map(|i| (values(i, j) - mean_b).powi(2)).sum();
            let n_a = self.count as f64;
            let n = n_a + n_b;
            let delta = mean_b - self.mean[j];
            self.mean[j] += delta * n_b / n;
            self.m2[j] += m2_b + delta * delta * n_a * n_b / n;
        }
        self.count += rows as u64;
    }

    pub(crate) fn finish(&self) -> FeatureStats {
        let dim = self.mean.len();
        if self.count == 0 {
            let z = vec![0.0; dim];
            return FeatureStats {
                mean: z.clone(),
                std: z.clone(),
                min: z.clone(),
                max: z,
                count: 0,
            };
        }
        FeatureStats {
            mean: self.mean.clone(),
            // Population std (divide by N), as LeRobot's compute_stats does.
            std: self
                .m2
                .iter()
                .map(|m| (m / self.count as f64).max(0.0).sqrt())
                .collect(),
            min: self.min.clone(),
            max: self.max.clone(),
            count: self.count,
        }
    }
}

/// Accumulates the statistics written to `meta/stats.json`.
#[derive(Debug, Clone)]
pub(crate) struct StatsAcc {
    fps: u32,
    obs: Acc,
    next_obs: Acc,
    action: Acc,
    reward: Acc,
    timestamp: Acc,
    frame_index: Acc,
    episode_index: Acc,
    index: Acc,
    /// Global frame index of the next frame (= frames seen so far).
    frames: usize,
    episodes: usize,
}

impl StatsAcc {
    pub(crate) fn new(obs_dim: usize, act_dim: usize, fps: u32) -> Self {
        Self {
            fps,
            obs: Acc::new(obs_dim),
            next_obs: Acc::new(obs_dim),
            action: Acc::new(act_dim),
            reward: Acc::new(1),
            timestamp: Acc::new(1),
            frame_index: Acc::new(1),
            episode_index: Acc::new(1),
            index: Acc::new(1),
            frames: 0,
            episodes: 0,
        }
    }

    /// Fold in one episode; episodes must be pushed in dataset order.
    pub(crate) fn push(&mut self, ep: &Episode) {
        self.push_with_timestamps(ep, None);
    }

    /// [`StatsAcc::push`], with the episode's stored `timestamp` column where it was
    /// read from disk (`None`: the ones this writer stores, `frame_index / fps`).
    pub(crate) fn push_with_timestamps(&mut self, ep: &Episode, stored: Option<&[f32]>) {
        let n = ep.len();
        let od = self.obs.mean.len();
        let ad = self.action.mean.len();
        self.obs
            .push_rows(|i, j| f64::from(ep.observations[i * od + j]), n);
        self.next_obs
            .push_rows(|i, j| f64::from(ep.next_observations[i * od + j]), n);
        self.action
            .push_rows(|i, j| f64::from(ep.actions[i * ad + j]), n);
        self.reward.push_rows(|i, _| f64::from(ep.rewards[i]), n);
        // Timestamps are stored as float32, so take stats of the stored value.
        let fps = self.fps;
        match stored {
            Some(ts) => self.timestamp.push_rows(|i, _| f64::from(ts[i]), n),
            None => self
                .timestamp
                .push_rows(|i, _| f64::from(crate::timestamp(i, fps)), n),
        }
        self.frame_index.push_rows(|i, _| i as f64, n);
        let e = self.episodes as f64;
        self.episode_index.push_rows(|_, _| e, n);
        let base = self.frames;
        self.index.push_rows(|i, _| (base + i) as f64, n);
        self.frames += n;
        self.episodes += 1;
    }

    pub(crate) fn finish(&self) -> BTreeMap<String, FeatureStats> {
        [
            (cols::OBS, &self.obs),
            (cols::NEXT_OBS, &self.next_obs),
            (cols::ACTION, &self.action),
            (cols::REWARD, &self.reward),
            (cols::TIMESTAMP, &self.timestamp),
            (cols::FRAME_INDEX, &self.frame_index),
            (cols::EPISODE_INDEX, &self.episode_index),
            (cols::INDEX, &self.index),
        ]
        .into_iter()
        .map(|(k, a)| (k.to_string(), a.finish()))
        .collect()
    }
}
