//! Replay buffers (host memory) and 50/50 offline/online batch sampling.
//!
//! Sampling is split in two: [`draw_mixed`] draws which rows one environment step trains
//! on (the only use of the sampling generator), and the rows are then copied out, on the
//! host ([`gather_rows`], [`sample_mixed`]) or on the training device from a mirror of
//! the buffers (`crate::device_replay`, `compute.replay = "device"`). Both copy the same
//! rows in the same order, so the choice changes no result.

use shared_model::manifest::MIN_OBS_STD;
use sim::rng::Rng;
use std::sync::atomic::{AtomicU64, Ordering};

/// Transitions in flat row-major arrays; a ring buffer once `capacity` is reached.
#[derive(Debug)]
pub struct Replay {
    pub obs_dim: usize,
    pub act_dim: usize,
    capacity: usize,
    len: usize,
    next: usize,
    /// Which buffer this is, for a device mirror (`crate::device_replay`): unique per
    /// process, and a clone gets its own, since it can be changed apart from the original.
    id: u64,
    /// Transitions pushed since this buffer was made (or loaded): a mirror uploads the
    /// rows pushed since it last looked.
    pushes: u64,
    obs: Vec<f32>,
    act: Vec<f32>,
    rew: Vec<f32>,
    next_obs: Vec<f32>,
    /// `1 − terminated`: multiplies the bootstrap term.
    mask: Vec<f32>,
}

/// A buffer's content in short ([`Replay::mark`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplayMark {
    pub transitions: usize,
    /// 16 hex digits.
    pub fingerprint: String,
}

/// Source of [`Replay`] ids.
static NEXT_REPLAY_ID: AtomicU64 = AtomicU64::new(1);

fn new_replay_id() -> u64 {
    NEXT_REPLAY_ID.fetch_add(1, Ordering::Relaxed)
}

impl Clone for Replay {
    fn clone(&self) -> Self {
        Replay {
            obs_dim: self.obs_dim,
            act_dim: self.act_dim,
            capacity: self.capacity,
            len: self.len,
            next: self.next,
            id: new_replay_id(),
            pushes: self.pushes,
            obs: self.obs.clone(),
            act: self.act.clone(),
            rew: self.rew.clone(),
            next_obs: self.next_obs.clone(),
            mask: self.mask.clone(),
        }
    }
}

/// Rows `range` of a [`Replay`]'s arrays (row-major, `range.len()` rows each).
pub struct Rows<'a> {
    pub obs: &'a [f32],
    pub act: &'a [f32],
    pub rew: &'a [f32],
    pub next_obs: &'a [f32],
    pub mask: &'a [f32],
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
            id: new_replay_id(),
            pushes: 0,
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

    /// Most transitions held; row numbers of [`draw_mixed`] count the offline buffer's
    /// capacity first.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// See the field; with [`Replay::pushes`], how a mirror knows what is new.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Transitions pushed since this buffer was made or loaded.
    pub fn pushes(&self) -> u64 {
        self.pushes
    }

    /// Where the next push goes (the ring's write position).
    pub fn next_slot(&self) -> usize {
        self.next
    }

    /// The observations of the last `k` transitions pushed (at most those held), as up
    /// to two runs of rows (the ring wraps), oldest first.
    pub fn last_pushed_observations(&self, k: usize) -> [&[f32]; 2] {
        let (k, od) = (k.min(self.len), self.obs_dim);
        let start = (self.next + self.capacity - k) % self.capacity;
        if start + k <= self.len {
            [&self.obs[start * od..(start + k) * od], &[]]
        } else {
            let wrapped = start + k - self.capacity;
            [
                &self.obs[start * od..self.len * od],
                &self.obs[..wrapped * od],
            ]
        }
    }

    /// Rows `range` (within [`Replay::len`]).
    pub fn rows(&self, range: std::ops::Range<usize>) -> Rows<'_> {
        assert!(range.end <= self.len, "rows {range:?} of {}", self.len);
        let (od, ad) = (self.obs_dim, self.act_dim);
        Rows {
            obs: &self.obs[range.start * od..range.end * od],
            act: &self.act[range.start * ad..range.end * ad],
            rew: &self.rew[range.clone()],
            next_obs: &self.next_obs[range.start * od..range.end * od],
            mask: &self.mask[range],
        }
    }

    /// What identifies the buffer's content: its transitions and an FNV-1a hash of their
    /// values' bits, in row order. The offline data of a run is rebuilt from its dataset
    /// (or its seed) by `train --resume` and `finetune`; this tells them whether they got
    /// the data the run was trained on.
    pub fn mark(&self) -> ReplayMark {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bits: u32| {
            for b in bits.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(self.obs_dim as u32);
        eat(self.act_dim as u32);
        let (od, ad) = (self.obs_dim, self.act_dim);
        for i in 0..self.len {
            let row = self.obs[i * od..(i + 1) * od]
                .iter()
                .chain(&self.act[i * ad..(i + 1) * ad])
                .chain(std::iter::once(&self.rew[i]))
                .chain(&self.next_obs[i * od..(i + 1) * od])
                .chain(std::iter::once(&self.mask[i]));
            for x in row {
                eat(x.to_bits());
            }
        }
        ReplayMark {
            transitions: self.len,
            fingerprint: format!("{h:016x}"),
        }
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
        self.pushes += 1;
    }

    /// Every chunk of every episode of a dataset ([`Chunker`]; with horizon 1, every
    /// step), up to the last frame with a real successor
    /// ([`dataset::Dataset::frames_with_successor`]), without the frames marked as
    /// interventions: a person moved the arm there, and the action recorded (the
    /// policy's command) is not what moved it (as `finetune` leaves them out of robot
    /// data). No chunk spans such a frame.
    pub fn from_dataset(ds: &dataset::Dataset, chunks: ChunkSpec) -> Self {
        let od = ds.info.obs_dim();
        let mut r = Replay::new(
            od,
            chunks.width(ds.info.action_dim()),
            ds.num_frames().max(1),
        );
        let mut chunker = Chunker::new(od, ds.info.action_dim(), chunks);
        for ep in &ds.episodes {
            let n = ds.frames_with_successor(ep);
            chunker.cut();
            for i in 0..n {
                if !Self::trains_on(ep, n, i) {
                    chunker.cut();
                    continue;
                }
                chunker.push_frame(&mut r, ep, i, n);
            }
        }
        r
    }

    /// Whether [`Self::from_dataset`] trains on frame `i` of `ep`, whose first `n`
    /// frames have a successor: one of those, not marked as an intervention.
    pub fn trains_on(ep: &dataset::Episode, n: usize, i: usize) -> bool {
        i < n && !ep.intervention[i]
    }

    /// The frames of `ds` that [`Self::from_dataset`] leaves out as interventions.
    pub fn interventions_left_out(ds: &dataset::Dataset) -> usize {
        ds.episodes
            .iter()
            .map(|ep| {
                let n = ds.frames_with_successor(ep);
                ep.intervention[..n].iter().filter(|&&x| x).count()
            })
            .sum()
    }

    /// Appends the numbers of `n` uniformly drawn rows, plus `base`, to `rows`.
    fn draw_into(&self, rng: &mut Rng, n: usize, base: usize, rows: &mut Vec<u32>) {
        assert!(self.len > 0, "sampling from an empty replay buffer");
        for _ in 0..n {
            let i = (rng.next_u64() % self.len as u64) as usize;
            rows.push((base + i) as u32);
        }
    }

    /// Appends row `i` to `out`.
    fn copy_row(&self, i: usize, out: &mut Batch) {
        let (od, ad) = (self.obs_dim, self.act_dim);
        out.obs.extend_from_slice(&self.obs[i * od..(i + 1) * od]);
        out.act.extend_from_slice(&self.act[i * ad..(i + 1) * ad]);
        out.rew.push(self.rew[i]);
        out.next_obs
            .extend_from_slice(&self.next_obs[i * od..(i + 1) * od]);
        out.mask.push(self.mask[i]);
        out.rows += 1;
    }

    /// All observations (for normalization statistics).
    pub fn observations(&self) -> &[f32] {
        &self.obs
    }
}

/// Snapshots with the dimensions in the header (written since 2026-12-05).
const REPLAY_MAGIC: &[u8; 8] = b"EXPORPL2";
/// Snapshots before: `[capacity, len, next]` only, still read.
const REPLAY_MAGIC_V1: &[u8; 8] = b"EXPORPL1";

impl Replay {
    /// Binary snapshot: magic, `[capacity, len, next, obs_dim, act_dim]` as u64, then the
    /// arrays as little-endian f32 (observations, actions, rewards, next observations,
    /// masks).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(48 + 4 * (self.obs.len() * 2 + self.act.len() + 2 * self.len));
        out.extend_from_slice(REPLAY_MAGIC);
        for v in [
            self.capacity,
            self.len,
            self.next,
            self.obs_dim,
            self.act_dim,
        ] {
            out.extend_from_slice(&(v as u64).to_le_bytes());
        }
        for arr in [&self.obs, &self.act, &self.rew, &self.next_obs, &self.mask] {
            for x in arr.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Inverse of [`Replay::to_bytes`]; rejects truncated or inconsistent input, and
    /// values training must not see (non-finite, a mask other than 0 or 1), naming the
    /// first by its slot in the ring.
    pub fn from_bytes(bytes: &[u8], obs_dim: usize, act_dim: usize) -> Result<Self, String> {
        let words = match bytes.get(..8) {
            Some(m) if m == REPLAY_MAGIC => 5,
            Some(m) if m == REPLAY_MAGIC_V1 => 3,
            _ => return Err("not a replay snapshot (bad magic)".into()),
        };
        let header = 8 + 8 * words;
        if bytes.len() < header {
            return Err(format!(
                "expected a header of {header} bytes, found {}",
                bytes.len()
            ));
        }
        let word = |i: usize| {
            u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().unwrap()) as usize
        };
        let (capacity, len, next) = (word(0), word(1), word(2));
        // Rows of another width can have the same size in all: (3, 2) read as (2, 4).
        if words == 5 && (word(3), word(4)) != (obs_dim, act_dim) {
            return Err(format!(
                "a snapshot of observations of {} and actions of {} values, expected {obs_dim} \
                 and {act_dim}",
                word(3),
                word(4)
            ));
        }
        // Rows are drawn as u32 numbers across both buffers (`draw_mixed`); no buffer the
        // trainer writes is larger than a tenth of that.
        // An unfilled ring writes at its end (the device mirror relies on it).
        if capacity == 0
            || capacity > (u32::MAX / 2) as usize
            || len > capacity
            || next >= capacity
            || (len < capacity && next != len)
        {
            return Err(format!(
                "inconsistent header: capacity {capacity}, len {len}, next {next}"
            ));
        }
        let expected = (2 * obs_dim + act_dim + 2)
            .checked_mul(len)
            .and_then(|floats| floats.checked_mul(4))
            .and_then(|b| b.checked_add(header));
        if expected != Some(bytes.len()) {
            return Err(format!(
                "expected {} bytes for {len} transitions, found {}",
                expected.map_or("more than usize".into(), |b| b.to_string()),
                bytes.len()
            ));
        }
        let mut vals = bytes[header..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
        let mut take = |n: usize| -> Vec<f32> { vals.by_ref().take(n).collect() };
        let obs = take(len * obs_dim);
        let act = take(len * act_dim);
        let rew = take(len);
        let next_obs = take(len * obs_dim);
        let mask = take(len);
        let named = [
            ("observation", &obs),
            ("action", &act),
            ("reward", &rew),
            ("next observation", &next_obs),
        ];
        for (what, values) in named {
            if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                let row = i / (values.len() / len).max(1);
                return Err(format!("slot {row}: {what} value is {}", values[i]));
            }
        }
        if let Some(row) = mask.iter().position(|&m| m != 0.0 && m != 1.0) {
            return Err(format!(
                "slot {row}: mask is {} (0 or 1 expected)",
                mask[row]
            ));
        }
        Ok(Replay {
            obs_dim,
            act_dim,
            capacity,
            len,
            next,
            id: new_replay_id(),
            pushes: len as u64,
            obs,
            act,
            rew,
            next_obs,
            mask,
        })
    }
}

/// How steps become the transitions the learner trains on: action chunks of
/// `horizon` consecutive steps (DESIGN §2, "optional action chunking"), with the
/// discount that sums the rewards within a chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkSpec {
    pub horizon: usize,
    pub discount: f32,
}

impl ChunkSpec {
    /// One step per transition: the reference algorithm (the discount is not used).
    pub const SINGLE: ChunkSpec = ChunkSpec {
        horizon: 1,
        discount: 0.99,
    };

    /// The networks' action width for `action_dim` values per step.
    pub fn width(&self, action_dim: usize) -> usize {
        self.horizon * action_dim
    }
}

/// Turns consecutive steps of episodes into action-chunk transitions and pushes them
/// into a [`Replay`] whose action width is `horizon · action_dim`.
///
/// Every step starts a chunk (a sliding window): the chunk from step `t` is
///
/// ```text
/// obs      = o_t
/// action   = [a_t, a_t+1, …, a_t+H−1]                  (H · A values)
/// reward   = Σ_k<L γ^k · r_t+k                          (L = H, or fewer at a terminal)
/// next_obs = o_t+L
/// mask     = 0 if step t+L−1 terminated, else 1          (bootstrap with γ^H)
/// ```
///
/// At a terminal step the chunks that would run past it end there: their remaining
/// actions repeat the last one (never executed; the bootstrap term is masked). At a
/// truncation (time limit, operator) the last `H − 1` starts cannot be completed and
/// are dropped; a complete chunk ending on the truncated step is kept. A gap in the
/// data (a frame dropped from a log, another robot's stream) shows as an observation
/// that is not the previous step's next observation, and cuts the window the same
/// way. With `horizon = 1` every step is pushed as it comes, exactly as one-step
/// transitions.
#[derive(Clone, Debug)]
pub struct Chunker {
    spec: ChunkSpec,
    od: usize,
    ad: usize,
    /// The pending steps, oldest first (at most `horizon − 1` between pushes).
    obs: Vec<f32>,
    act: Vec<f32>,
    rew: Vec<f32>,
    next_obs: Vec<f32>,
    chunk: Vec<f32>,
    /// Chunks left out because their discounted reward sum is not finite.
    non_finite_rewards: usize,
}

impl Chunker {
    pub fn new(obs_dim: usize, action_dim: usize, spec: ChunkSpec) -> Self {
        assert!(spec.horizon >= 1, "action horizon must be at least 1");
        Chunker {
            spec,
            od: obs_dim,
            ad: action_dim,
            obs: Vec::new(),
            act: Vec::new(),
            rew: Vec::new(),
            next_obs: Vec::new(),
            chunk: vec![0.0; spec.width(action_dim)],
            non_finite_rewards: 0,
        }
    }

    /// Chunks left out so far because their steps' finite rewards have an infinite
    /// discounted sum (two of 3e38, say: a firmware's garbage): trained on, it made the
    /// critic's target infinite, and a checkpoint holding it was refused by every resume.
    pub fn non_finite_rewards(&self) -> usize {
        self.non_finite_rewards
    }

    pub fn spec(&self) -> ChunkSpec {
        self.spec
    }

    /// Frame `i` of a dataset episode whose first `n` frames are trained on
    /// ([`dataset::Dataset::frames_with_successor`]); as [`Self::push`].
    pub fn push_frame(
        &mut self,
        out: &mut Replay,
        ep: &dataset::Episode,
        i: usize,
        n: usize,
    ) -> usize {
        let (od, ad) = (self.od, self.ad);
        self.push(
            out,
            &ep.observations[i * od..(i + 1) * od],
            &ep.actions[i * ad..(i + 1) * ad],
            ep.rewards[i],
            &ep.next_observations[i * od..(i + 1) * od],
            ep.terminated[i],
            i + 1 == n,
        )
    }

    /// Steps waiting for the rest of their chunk.
    pub fn pending(&self) -> usize {
        self.rew.len()
    }

    /// Forgets the pending steps (their chunks cannot be completed).
    pub fn cut(&mut self) {
        self.obs.clear();
        self.act.clear();
        self.rew.clear();
        self.next_obs.clear();
    }

    /// One step; `episode_end` on an episode's last step (terminated or truncated).
    /// Returns how many transitions it completed into `out`: 1 one step at a time; with
    /// chunks 0 while a chunk is still pending, and up to `horizon` at a terminal step.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        out: &mut Replay,
        obs: &[f32],
        act: &[f32],
        rew: f32,
        next_obs: &[f32],
        terminated: bool,
        episode_end: bool,
    ) -> usize {
        let (od, ad, h) = (self.od, self.ad, self.spec.horizon);
        debug_assert!(obs.len() == od && next_obs.len() == od && act.len() == ad);
        debug_assert_eq!(out.act_dim, h * ad);
        if h == 1 {
            out.push(obs, act, rew, next_obs, terminated);
            return 1;
        }
        let contiguous = self.next_obs[self.next_obs.len().saturating_sub(od)..]
            .iter()
            .zip(obs)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if !contiguous {
            self.cut();
        }
        self.obs.extend_from_slice(obs);
        self.act.extend_from_slice(act);
        self.rew.push(rew);
        self.next_obs.extend_from_slice(next_obs);
        let mut emitted = 0;
        if self.pending() == h {
            emitted += usize::from(self.emit_front(out, h, terminated));
        }
        if terminated {
            while self.pending() > 0 {
                emitted += usize::from(self.emit_front(out, self.pending(), true));
            }
        }
        if episode_end {
            self.cut();
        }
        emitted
    }

    /// Pushes the chunk that starts at the oldest pending step and spans `len` steps,
    /// then drops that step; whether it was pushed (not when its reward sum is not
    /// finite, [`Self::non_finite_rewards`]).
    fn emit_front(&mut self, out: &mut Replay, len: usize, terminated: bool) -> bool {
        let (od, ad) = (self.od, self.ad);
        let last = &self.act[(len - 1) * ad..len * ad];
        for (k, dst) in self.chunk.chunks_exact_mut(ad).enumerate() {
            dst.copy_from_slice(if k < len {
                &self.act[k * ad..(k + 1) * ad]
            } else {
                last
            });
        }
        let mut reward = 0.0f32;
        let mut scale = 1.0f32;
        for &r in &self.rew[..len] {
            reward += scale * r;
            scale *= self.spec.discount;
        }
        let finite = reward.is_finite();
        if finite {
            out.push(
                &self.obs[..od],
                &self.chunk,
                reward,
                &self.next_obs[(len - 1) * od..len * od],
                terminated,
            );
        } else {
            if self.non_finite_rewards == 0 {
                eprintln!(
                    "warning: a chunk of {len} steps whose rewards {:?} have a discounted sum \
                     of {reward} is not trained on (rewards that large are a recording's or \
                     a firmware's error; further ones are not warned of)",
                    &self.rew[..len]
                );
            }
            self.non_finite_rewards += 1;
        }
        self.obs.drain(..od);
        self.act.drain(..ad);
        self.rew.remove(0);
        self.next_obs.drain(..od);
        finite
    }

    /// A whole episode (flat arrays of its steps); its last step ends it.
    pub fn push_episode(
        &mut self,
        out: &mut Replay,
        obs: &[f32],
        act: &[f32],
        rew: &[f32],
        next_obs: &[f32],
        terminated: &[bool],
    ) {
        let (od, ad) = (self.od, self.ad);
        self.cut();
        for t in 0..rew.len() {
            self.push(
                out,
                &obs[t * od..(t + 1) * od],
                &act[t * ad..(t + 1) * ad],
                rew[t],
                &next_obs[t * od..(t + 1) * od],
                terminated[t],
                t + 1 == rew.len(),
            );
        }
    }

    /// Every step of a simulator trajectory (one episode).
    pub fn push_trajectory(&mut self, out: &mut Replay, t: &sim::Trajectory) {
        self.push_episode(
            out,
            &t.observations,
            &t.actions,
            &t.rewards,
            &t.next_observations,
            &t.terminated,
        );
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

/// [`draw_mixed`], then [`gather_rows`]: the batch on the host.
pub fn sample_mixed(
    rng: &mut Rng,
    offline: &Replay,
    online: &Replay,
    offline_fraction: f32,
    slices: usize,
    n: usize,
    out: &mut Batch,
) {
    let mut rows = Vec::with_capacity(slices * n);
    draw_mixed(rng, offline, online, offline_fraction, slices, n, &mut rows);
    gather_rows(offline, online, &rows, out);
}

/// Copies `rows` (numbered as by [`draw_mixed`]) into `out`, replacing its contents.
pub fn gather_rows(offline: &Replay, online: &Replay, rows: &[u32], out: &mut Batch) {
    out.clear();
    let split = offline.capacity;
    for &r in rows {
        match (r as usize).checked_sub(split) {
            None => offline.copy_row(r as usize, out),
            Some(i) => online.copy_row(i, out),
        }
    }
}

/// Draws the rows of `slices · n` transitions into `rows` (replacing its contents): in
/// each slice of `n`, `offline_fraction · n` from `offline`, the rest from `online`
/// (RLPD's symmetric sampling). A fractional count is rounded at random, up with the
/// probability of its fraction, so that every batch size mixes in the asked proportion
/// on average (rounding half up took a batch of 1 from `offline` only, and one of 3 at
/// 2:1); a whole count draws no extra number. Until `online` has data, all come from
/// `offline`; with no offline data, all from `online`. Slices are drawn in turn so that
/// each UTD slice is itself mixed 50/50. Rows of `offline` are numbered from 0, those of
/// `online` from `offline.capacity()`: one table of both buffers' slots.
pub fn draw_mixed(
    rng: &mut Rng,
    offline: &Replay,
    online: &Replay,
    offline_fraction: f32,
    slices: usize,
    n: usize,
    rows: &mut Vec<u32>,
) {
    assert!(
        offline.capacity + online.capacity <= u32::MAX as usize,
        "replay buffers too large for u32 row numbers"
    );
    rows.clear();
    for _ in 0..slices {
        let k = if online.is_empty() {
            n
        } else if offline.is_empty() {
            0
        } else {
            let want = offline_fraction * n as f32;
            let whole = want.floor();
            let fraction = want - whole;
            let up = fraction > 0.0 && rng.uniform() < fraction;
            (whole as usize + usize::from(up)).min(n)
        };
        // Shuffling within a slice is unnecessary: losses are means over the slice.
        if k > 0 {
            offline.draw_into(rng, k, 0, rows);
        }
        if n > k {
            online.draw_into(rng, n - k, offline.capacity, rows);
        }
    }
}

/// Per-dimension observation normalization `(x − mean) / std`, std floored at
/// [`MIN_OBS_STD`] (1e-3), the smallest a bundle may carry.
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
            .map(|(s, m)| ((s / n - m * m).max(0.0).sqrt().max(f64::from(MIN_OBS_STD))) as f32)
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

    /// The observations last pushed, oldest first, across the ring's wrap.
    #[test]
    fn the_last_pushed_observations_follow_the_ring() {
        let push = |r: &mut Replay, x: f32| r.push(&[x], &[0.0], 0.0, &[x], false);
        let flat = |parts: [&[f32]; 2]| [parts[0], parts[1]].concat();
        let mut r = Replay::new(1, 1, 3);
        for x in 0..2 {
            push(&mut r, x as f32);
        }
        assert_eq!(flat(r.last_pushed_observations(1)), [1.0]);
        assert_eq!(flat(r.last_pushed_observations(5)), [0.0, 1.0]);
        for x in 2..5 {
            push(&mut r, x as f32);
        }
        assert_eq!(flat(r.last_pushed_observations(2)), [3.0, 4.0]);
        assert_eq!(flat(r.last_pushed_observations(3)), [2.0, 3.0, 4.0]);
        assert_eq!(flat(r.last_pushed_observations(0)), [0.0f32; 0]);
        // Full with the write position back at 0, and a ring of one.
        push(&mut r, 5.0);
        assert_eq!(r.next_slot(), 0);
        assert_eq!(flat(r.last_pushed_observations(2)), [4.0, 5.0]);
        let mut one = Replay::new(1, 1, 1);
        assert_eq!(flat(one.last_pushed_observations(1)), [0.0f32; 0]);
        push(&mut one, 7.0);
        push(&mut one, 8.0);
        assert_eq!(flat(one.last_pushed_observations(3)), [8.0]);
    }

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

    /// An odd batch mixes half and half on average: the odd row comes from either buffer
    /// (a batch of 1 came from the offline data only, rounding 0.5 up, and never trained
    /// on the robot's own transitions).
    #[test]
    fn odd_batches_mix_in_proportion_on_average() {
        let mut off = Replay::new(1, 1, 100);
        let mut on = Replay::new(1, 1, 100);
        for _ in 0..10 {
            off.push(&[0.0], &[0.0], 0.0, &[0.0], false);
            on.push(&[1.0], &[0.0], 0.0, &[1.0], false);
        }
        let mut rng = Rng::new(0);
        let mut b = Batch::default();
        for (n, fraction) in [(1, 0.5), (3, 0.5), (5, 0.25)] {
            let draws = 4000;
            let mut online_rows = 0;
            for _ in 0..draws {
                sample_mixed(&mut rng, &off, &on, fraction, 1, n, &mut b);
                assert_eq!(b.rows, n);
                let online = b.obs.iter().filter(|&&x| x == 1.0).count();
                // Each slice takes the whole count or one more, never anything else.
                let offline = n - online;
                let want = fraction * n as f32;
                assert!(
                    offline == want.floor() as usize || offline == want.ceil() as usize,
                    "n {n}: {offline} offline rows"
                );
                online_rows += online;
            }
            let share = online_rows as f32 / (draws * n) as f32;
            assert!(
                (share - (1.0 - fraction)).abs() < 0.03,
                "n {n}, offline fraction {fraction}: online share {share}"
            );
        }
    }

    /// A dataset without `next.observation.state` (LeRobot's) gives each episode's last
    /// frame its own observation as successor; training bootstrapped from it as if the
    /// robot had stayed put. Only frames with a real successor go into the replay, and
    /// a terminal last frame stays (nothing is bootstrapped past it).
    #[test]
    fn frames_without_a_successor_stay_out_of_the_replay() {
        let episode = |len: usize, terminal: bool| dataset::Episode {
            observations: (0..len).map(|i| i as f32).collect(),
            next_observations: (0..len).map(|i| (i + 1).min(len - 1) as f32).collect(),
            actions: vec![0.0; len],
            rewards: vec![0.0; len],
            terminated: (0..len).map(|i| terminal && i + 1 == len).collect(),
            truncated: (0..len).map(|i| !terminal && i + 1 == len).collect(),
            success: vec![false; len],
            intervention: vec![false; len],
            teleop: vec![false; len],
        };
        let info = dataset::DatasetInfo {
            robot_type: "test".into(),
            fps: 10,
            task: String::new(),
            observation_names: vec!["x".into()],
            action_names: vec!["a".into()],
            action_mapping: None,
        };
        let mut ds = dataset::Dataset {
            info,
            episodes: vec![episode(4, false), episode(3, true), episode(1, false)],
            next_observations_recorded: false,
        };
        let r = Replay::from_dataset(&ds, ChunkSpec::SINGLE);
        // 3 of the truncated 4, all 3 of the terminal episode, none of the single frame.
        assert_eq!(r.len(), 6);
        let rows = r.rows(0..r.len());
        for ((o, n), m) in rows.obs.iter().zip(rows.next_obs).zip(rows.mask) {
            assert!(
                o != n || *m == 0.0,
                "bootstraps from its own observation: {o}"
            );
        }
        // Recorded successors are all used.
        ds.next_observations_recorded = true;
        assert_eq!(Replay::from_dataset(&ds, ChunkSpec::SINGLE).len(), 8);
        // A frame marked as an intervention is not (its action did not move the arm),
        // and no chunk spans it: of episode 0's 4 frames, chunks of 2 start at 0 only
        // (1 would span the mark at 2, 3 has no frame after it).
        ds.episodes[0].intervention[2] = true;
        assert_eq!(Replay::interventions_left_out(&ds), 1);
        let r = Replay::from_dataset(&ds, ChunkSpec::SINGLE);
        assert_eq!(r.len(), 7);
        assert_eq!(r.rows(0..3).obs, [0.0, 1.0, 3.0]);
        let chunks = ChunkSpec {
            horizon: 2,
            ..ChunkSpec::SINGLE
        };
        let r = Replay::from_dataset(&ds, chunks);
        // Episode 0's one chunk (from 0), then episode 1's (from 0 on).
        let starts = r.rows(0..r.len()).obs;
        assert_eq!(&starts[..2], [0.0, 0.0], "{starts:?}");
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
        // A header whose length would overflow the size computation, a capacity past
        // what row numbers can address (it panicked at the first draw), and damaged
        // values.
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        huge[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let e = Replay::from_bytes(&huge, 2, 1).unwrap_err();
        assert!(
            e.starts_with("inconsistent header: capacity 18446744073709551615"),
            "{e}"
        );
        let mut wide = bytes.clone();
        wide[8..16].copy_from_slice(&(1u64 << 32).to_le_bytes());
        let e = Replay::from_bytes(&wide, 2, 1).unwrap_err();
        assert!(
            e.starts_with("inconsistent header: capacity 4294967296"),
            "{e}"
        );
        // An unfilled ring whose write position is not its end: its pushes would land
        // elsewhere than the rows it reads (and the device mirror uploads).
        let mut part = Replay::new(2, 1, 4);
        part.push(&[0.0, 1.0], &[0.5], 0.0, &[0.0, 2.0], false);
        let mut skewed = part.to_bytes();
        skewed[24..32].copy_from_slice(&3u64.to_le_bytes());
        let e = Replay::from_bytes(&skewed, 2, 1).unwrap_err();
        assert!(
            e.starts_with("inconsistent header: capacity 4, len 1, next 3"),
            "{e}"
        );
        let floats = |b: &mut Vec<u8>, i: usize, x: f32| {
            b[48 + 4 * i..52 + 4 * i].copy_from_slice(&x.to_le_bytes());
        };
        let mut nan = bytes.clone();
        // Observations of 4 rows of 2, then 4 actions: the action of row 3.
        floats(&mut nan, 8 + 3, f32::NAN);
        let e = Replay::from_bytes(&nan, 2, 1).unwrap_err();
        assert_eq!(e, "slot 3: action value is NaN");
        let mut mask = bytes.clone();
        floats(&mut mask, 8 + 4 + 4 + 8 + 1, 0.5);
        let e = Replay::from_bytes(&mask, 2, 1).unwrap_err();
        assert_eq!(e, "slot 1: mask is 0.5 (0 or 1 expected)");
        // Rows of 2 + 1 + 2 + 2 values as rows of 1 + 3 + 1 + 2: the same size in all,
        // refused by the dimensions in the header.
        let e = Replay::from_bytes(&bytes, 1, 3).unwrap_err();
        assert_eq!(
            e,
            "a snapshot of observations of 2 and actions of 1 values, expected 1 and 3"
        );
        // A snapshot written before the dimensions were kept is still read.
        let mut v1 = b"EXPORPL1".to_vec();
        v1.extend_from_slice(&bytes[8..32]);
        v1.extend_from_slice(&bytes[48..]);
        assert_eq!(Replay::from_bytes(&v1, 2, 1).unwrap().to_bytes(), bytes);
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

    /// All transitions of a replay in insertion order (no ring wrap in these tests):
    /// (obs[0], actions, reward, next_obs[0], mask).
    fn rows(r: &Replay) -> Vec<(f32, Vec<f32>, f32, f32, f32)> {
        (0..r.len())
            .map(|i| {
                (
                    r.obs[i * r.obs_dim],
                    r.act[i * r.act_dim..(i + 1) * r.act_dim].to_vec(),
                    r.rew[i],
                    r.next_obs[i * r.obs_dim],
                    r.mask[i],
                )
            })
            .collect()
    }

    /// A 1-D episode: observation t, action 10 + t, reward 1 + t.
    fn episode(len: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let obs: Vec<f32> = (0..len).map(|t| t as f32).collect();
        let act = obs.iter().map(|t| 10.0 + t).collect();
        let rew = obs.iter().map(|t| 1.0 + t).collect();
        let next = obs.iter().map(|t| t + 1.0).collect();
        (obs, act, rew, next)
    }

    #[test]
    fn chunks_sum_discounted_rewards_and_bootstrap_after_the_chunk() {
        let spec = ChunkSpec {
            horizon: 3,
            discount: 0.5,
        };
        let (obs, act, rew, next) = episode(5);
        // Truncated (no terminal): starts 3 and 4 cannot complete and are dropped.
        let mut r = Replay::new(1, 3, 100);
        let mut c = Chunker::new(1, 1, spec);
        c.push_episode(&mut r, &obs, &act, &rew, &next, &[false; 5]);
        assert_eq!(
            rows(&r),
            [
                (
                    0.0,
                    vec![10.0, 11.0, 12.0],
                    1.0 + 0.5 * 2.0 + 0.25 * 3.0,
                    3.0,
                    1.0
                ),
                (
                    1.0,
                    vec![11.0, 12.0, 13.0],
                    2.0 + 0.5 * 3.0 + 0.25 * 4.0,
                    4.0,
                    1.0
                ),
                (
                    2.0,
                    vec![12.0, 13.0, 14.0],
                    3.0 + 0.5 * 4.0 + 0.25 * 5.0,
                    5.0,
                    1.0
                ),
            ]
        );
        assert_eq!(c.pending(), 0);
    }

    /// Finite rewards whose chunk sum overflows are left out of the replay, counted: an
    /// infinite reward made the critic's target infinite, and a checkpoint holding it
    /// was refused by every resume. The steps' other chunks are kept.
    #[test]
    fn a_chunk_whose_rewards_sum_past_f32_is_left_out() {
        let spec = ChunkSpec {
            horizon: 2,
            discount: 1.0,
        };
        let mut r = Replay::new(1, 2, 8);
        let mut c = Chunker::new(1, 1, spec);
        let obs = [0.0, 1.0, 2.0];
        let rew = [3e38, 3e38, 1.0];
        let next = [1.0, 2.0, 3.0];
        c.push_episode(&mut r, &obs, &[0.0; 3], &rew, &next, &[false, false, true]);
        assert_eq!(c.non_finite_rewards(), 1);
        let rows = rows(&r);
        assert!(rows.iter().all(|row| row.2.is_finite()), "{rows:?}");
        // The chunks from steps 1 and 2 (the last one a single step, terminal).
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].2, 3e38 + 1.0);
    }

    #[test]
    fn chunks_running_past_a_terminal_end_there() {
        let spec = ChunkSpec {
            horizon: 3,
            discount: 0.5,
        };
        let (obs, act, rew, next) = episode(4);
        let mut r = Replay::new(1, 3, 100);
        let mut c = Chunker::new(1, 1, spec);
        let completed: Vec<usize> = (0..4)
            .map(|t| {
                let at = t..t + 1;
                c.push(
                    &mut r,
                    &obs[at.clone()],
                    &act[at.clone()],
                    rew[t],
                    &next[at],
                    t == 3,
                    t == 3,
                )
            })
            .collect();
        // The terminal step completes its own chunk and the two shorter ones.
        assert_eq!(completed, [0, 0, 1, 3]);
        assert_eq!(
            rows(&r),
            [
                (0.0, vec![10.0, 11.0, 12.0], 1.0 + 1.0 + 0.75, 3.0, 1.0),
                // The full chunk whose last step is the terminal: masked.
                (1.0, vec![11.0, 12.0, 13.0], 2.0 + 1.5 + 1.0, 4.0, 0.0),
                // Shorter chunks up to the terminal, the last action repeated.
                (2.0, vec![12.0, 13.0, 13.0], 3.0 + 2.0, 4.0, 0.0),
                (3.0, vec![13.0, 13.0, 13.0], 4.0, 4.0, 0.0),
            ]
        );
    }

    #[test]
    fn a_gap_in_the_steps_cuts_the_window_and_horizon_one_is_one_step() {
        let spec = ChunkSpec {
            horizon: 2,
            discount: 1.0,
        };
        let mut r = Replay::new(1, 2, 100);
        let mut c = Chunker::new(1, 1, spec);
        // Each push says how many transitions it completed.
        assert_eq!(
            c.push(&mut r, &[0.0], &[10.0], 1.0, &[1.0], false, false),
            0
        );
        // Step 1 is missing: step 2's observation is not step 0's next one.
        assert_eq!(
            c.push(&mut r, &[2.0], &[12.0], 1.0, &[3.0], false, false),
            0
        );
        assert_eq!(
            c.push(&mut r, &[3.0], &[13.0], 1.0, &[4.0], false, false),
            1
        );
        assert_eq!(rows(&r), [(2.0, vec![12.0, 13.0], 2.0, 4.0, 1.0)]);
        assert_eq!(c.pending(), 1);

        // Horizon 1: exactly the steps, terminal mask included.
        let (obs, act, rew, next) = episode(3);
        let mut one = Replay::new(1, 1, 10);
        let mut direct = Replay::new(1, 1, 10);
        Chunker::new(1, 1, ChunkSpec::SINGLE).push_episode(
            &mut one,
            &obs,
            &act,
            &rew,
            &next,
            &[false, false, true],
        );
        for t in 0..3 {
            direct.push(
                &obs[t..t + 1],
                &act[t..t + 1],
                rew[t],
                &next[t..t + 1],
                t == 2,
            );
        }
        assert_eq!(one.to_bytes(), direct.to_bytes());
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
