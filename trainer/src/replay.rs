//! Replay buffers (host memory) and 50/50 offline/online batch sampling.

use sim::rng::Rng;

/// Transitions in flat row-major arrays; a ring buffer once `capacity` is reached.
#[derive(Clone, Debug)]
pub struct Replay {
    pub obs_dim: usize,
    pub act_dim: usize,
    capacity: usize,
    len: usize,
    next: usize,
    obs: Vec<f32>,
    act: Vec<f32>,
    rew: Vec<f32>,
    next_obs: Vec<f32>,
    /// `1 − terminated`: multiplies the bootstrap term.
    mask: Vec<f32>,
}

/// A sampled batch, flat arrays of `rows` transitions.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub rows: usize,
    pub obs: Vec<f32>,
    pub act: Vec<f32>,
    pub rew: Vec<f32>,
    pub next_obs: Vec<f32>,
    pub mask: Vec<f32>,
}

impl Replay {
    pub fn new(obs_dim: usize, act_dim: usize, capacity: usize) -> Self {
        assert!(capacity > 0);
        Replay {
            obs_dim,
            act_dim,
            capacity,
            len: 0,
            next: 0,
            obs: Vec::new(),
            act: Vec::new(),
            rew: Vec::new(),
            next_obs: Vec::new(),
            mask: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, obs: &[f32], act: &[f32], rew: f32, next_obs: &[f32], terminated: bool) {
        let (od, ad) = (self.obs_dim, self.act_dim);
        debug_assert!(obs.len() == od && next_obs.len() == od && act.len() == ad);
        let m = if terminated { 0.0 } else { 1.0 };
        if self.len < self.capacity {
            self.obs.extend_from_slice(obs);
            self.act.extend_from_slice(act);
            self.rew.push(rew);
            self.next_obs.extend_from_slice(next_obs);
            self.mask.push(m);
            self.len += 1;
        } else {
            let i = self.next;
            self.obs[i * od..(i + 1) * od].copy_from_slice(obs);
            self.act[i * ad..(i + 1) * ad].copy_from_slice(act);
            self.rew[i] = rew;
            self.next_obs[i * od..(i + 1) * od].copy_from_slice(next_obs);
            self.mask[i] = m;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// Appends consecutive steps given as flat arrays (`obs` and `next_obs`:
    /// `steps · obs_dim`, `act`: `steps · act_dim`).
    pub fn push_steps(
        &mut self,
        obs: &[f32],
        act: &[f32],
        rew: &[f32],
        next_obs: &[f32],
        terminated: &[bool],
    ) {
        let (od, ad) = (self.obs_dim, self.act_dim);
        for t in 0..rew.len() {
            self.push(
                &obs[t * od..(t + 1) * od],
                &act[t * ad..(t + 1) * ad],
                rew[t],
                &next_obs[t * od..(t + 1) * od],
                terminated[t],
            );
        }
    }

    /// Every step of every episode of a dataset.
    pub fn from_dataset(ds: &dataset::Dataset) -> Self {
        let mut r = Replay::new(
            ds.info.obs_dim(),
            ds.info.action_dim(),
            ds.num_frames().max(1),
        );
        for ep in &ds.episodes {
            r.push_steps(
                &ep.observations,
                &ep.actions,
                &ep.rewards,
                &ep.next_observations,
                &ep.terminated,
            );
        }
        r
    }

    /// Every step of a simulator trajectory.
    pub fn push_trajectory(&mut self, t: &sim::Trajectory) {
        self.push_steps(
            &t.observations,
            &t.actions,
            &t.rewards,
            &t.next_observations,
            &t.terminated,
        );
    }

    /// Appends `n` uniformly drawn transitions to `out`.
    pub fn sample_into(&self, rng: &mut Rng, n: usize, out: &mut Batch) {
        assert!(self.len > 0, "sampling from an empty replay buffer");
        let (od, ad) = (self.obs_dim, self.act_dim);
        for _ in 0..n {
            let i = (rng.next_u64() % self.len as u64) as usize;
            out.obs.extend_from_slice(&self.obs[i * od..(i + 1) * od]);
            out.act.extend_from_slice(&self.act[i * ad..(i + 1) * ad]);
            out.rew.push(self.rew[i]);
            out.next_obs
                .extend_from_slice(&self.next_obs[i * od..(i + 1) * od]);
            out.mask.push(self.mask[i]);
        }
        out.rows += n;
    }

    /// All observations (for normalization statistics).
    pub fn observations(&self) -> &[f32] {
        &self.obs
    }
}

const REPLAY_MAGIC: &[u8; 8] = b"EXPORPL1";

impl Replay {
    /// Binary snapshot: magic, `[capacity, len, next]` as u64, then the arrays as
    /// little-endian f32 (observations, actions, rewards, next observations, masks).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(32 + 4 * (self.obs.len() * 2 + self.act.len() + 2 * self.len));
        out.extend_from_slice(REPLAY_MAGIC);
        for v in [self.capacity, self.len, self.next] {
            out.extend_from_slice(&(v as u64).to_le_bytes());
        }
        for arr in [&self.obs, &self.act, &self.rew, &self.next_obs, &self.mask] {
            for x in arr.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Inverse of [`Replay::to_bytes`]; rejects truncated or inconsistent input.
    pub fn from_bytes(bytes: &[u8], obs_dim: usize, act_dim: usize) -> Result<Self, String> {
        if bytes.len() < 32 || &bytes[..8] != REPLAY_MAGIC {
            return Err("not a replay snapshot (bad magic)".into());
        }
        let word = |i: usize| {
            u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().unwrap()) as usize
        };
        let (capacity, len, next) = (word(0), word(1), word(2));
        if capacity == 0 || len > capacity || next >= capacity {
            return Err(format!(
                "inconsistent header: capacity {capacity}, len {len}, next {next}"
            ));
        }
        let floats = len * (2 * obs_dim + act_dim + 2);
        if bytes.len() != 32 + 4 * floats {
            return Err(format!(
                "expected {} bytes for {len} transitions, found {}",
                32 + 4 * floats,
                bytes.len()
            ));
        }
        let mut vals = bytes[32..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
        let mut take = |n: usize| -> Vec<f32> { vals.by_ref().take(n).collect() };
        let obs = take(len * obs_dim);
        let act = take(len * act_dim);
        let rew = take(len);
        let next_obs = take(len * obs_dim);
        let mask = take(len);
        Ok(Replay {
            obs_dim,
            act_dim,
            capacity,
            len,
            next,
            obs,
            act,
            rew,
            next_obs,
            mask,
        })
    }
}

impl Batch {
    pub fn clear(&mut self) {
        self.rows = 0;
        self.obs.clear();
        self.act.clear();
        self.rew.clear();
        self.next_obs.clear();
        self.mask.clear();
    }
}

/// Draws `n` transitions: `round(offline_fraction · n)` from `offline`, the rest from
/// `online` (RLPD's symmetric sampling). Until `online` has data, all come from
/// `offline`; with no offline data, all from `online`. Slices of `n` are drawn in turn so
/// that each UTD slice is itself mixed 50/50.
pub fn sample_mixed(
    rng: &mut Rng,
    offline: &Replay,
    online: &Replay,
    offline_fraction: f32,
    slices: usize,
    n: usize,
    out: &mut Batch,
) {
    out.clear();
    for _ in 0..slices {
        let k = if online.is_empty() {
            n
        } else if offline.is_empty() {
            0
        } else {
            (offline_fraction * n as f32).round() as usize
        };
        // Shuffling within a slice is unnecessary: losses are means over the slice.
        if k > 0 {
            offline.sample_into(rng, k, out);
        }
        if n > k {
            online.sample_into(rng, n - k, out);
        }
    }
}

/// Per-dimension observation normalization `(x − mean) / std` (std floored at 1e-3).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalizer {
    pub fn fit(data: &[f32], dim: usize) -> Self {
        let n = (data.len() / dim).max(1) as f64;
        let mut mean = vec![0.0f64; dim];
        let mut sq = vec![0.0f64; dim];
        for row in data.chunks_exact(dim) {
            for (j, &x) in row.iter().enumerate() {
                mean[j] += x as f64;
                sq[j] += (x as f64) * (x as f64);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(0.0).sqrt().max(1e-3)) as f32)
            .collect();
        Normalizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    pub fn apply(&self, data: &mut [f32]) {
        let d = self.mean.len();
        for row in data.chunks_exact_mut(d) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_sampling_is_half_and_half_per_slice() {
        let mut off = Replay::new(1, 1, 100);
        let mut on = Replay::new(1, 1, 100);
        for i in 0..10 {
            off.push(&[0.0], &[0.0], 0.0, &[0.0], false);
            on.push(&[1.0], &[0.0], i as f32, &[1.0], i == 3);
        }
        let mut rng = Rng::new(0);
        let mut b = Batch::default();
        sample_mixed(&mut rng, &off, &on, 0.5, 3, 8, &mut b);
        assert_eq!(b.rows, 24);
        for slice in b.obs.chunks(8) {
            assert_eq!(slice.iter().filter(|&&x| x == 0.0).count(), 4);
        }
        // The online transition with reward 3 is the terminal one: mask 0, all others 1.
        for ((o, r), m) in b.obs.iter().zip(&b.rew).zip(&b.mask) {
            assert_eq!(*m == 0.0, *o == 1.0 && *r == 3.0);
        }
        // Before online data exists everything is offline.
        let empty = Replay::new(1, 1, 10);
        sample_mixed(&mut rng, &off, &empty, 0.5, 2, 8, &mut b);
        assert!(b.obs.iter().all(|&x| x == 0.0) && b.rows == 16);
    }

    #[test]
    fn snapshot_round_trip_and_corruption() {
        let mut r = Replay::new(2, 1, 4);
        for i in 0..6 {
            r.push(&[i as f32, 1.0], &[0.5], i as f32, &[0.0, 2.0], i == 2);
        }
        let bytes = r.to_bytes();
        let back = Replay::from_bytes(&bytes, 2, 1).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert!(
            Replay::from_bytes(&bytes[..bytes.len() - 3], 2, 1)
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            Replay::from_bytes(b"garbage", 2, 1)
                .unwrap_err()
                .contains("magic")
        );
    }

    #[test]
    fn ring_buffer_overwrites_oldest() {
        let mut r = Replay::new(1, 1, 3);
        for i in 0..5 {
            r.push(&[i as f32], &[0.0], 0.0, &[0.0], false);
        }
        assert_eq!(r.len(), 3);
        let mut seen: Vec<f32> = r.observations().to_vec();
        seen.sort_by(f32::total_cmp);
        assert_eq!(seen, [2.0, 3.0, 4.0]);
    }

    #[test]
    fn normalizer_standardizes() {
        let data = [1.0, 10.0, 3.0, 10.0];
        let n = Normalizer::fit(&data, 2);
        assert_eq!(n.mean, [2.0, 10.0]);
        assert_eq!(n.std, [1.0, 1e-3]);
        let mut x = data;
        n.apply(&mut x);
        assert_eq!(x, [-1.0, 0.0, 1.0, 0.0]);
    }
}
