//! The replay buffers mirrored on the training device (`compute.replay = "device"`), so
//! that a step's batch is gathered there instead of copied on the host and uploaded.
//!
//! ```text
//!  host: Replay (offline)   Replay (online) ── push ──┐
//!            │ once               │ once               │ each new transition (one row)
//!            ▼                    ▼                    ▼
//!  device tables, one per field, [offline.len + online.capacity, width]:
//!        [ offline rows ···· │ online slots ························ ]
//!  step: draw_mixed (host RNG) ─► row numbers [utd · batch] ─► table rows ─► select
//! ```
//!
//! What is stored is what the host batch is made of: observations normalized as
//! `Normalizer::apply` does on the host, actions, rewards and the bootstrap discount
//! `γ^H · mask` multiplied on the host. A gather copies values, so the batch is the
//! host's to the bit, and so is every update after it (tested against the host path).
//!
//! Per step the host uploads the new transition (one row of each table) and the row
//! numbers (`utd · batch`: 5,120 at the `paper` preset) instead of every field of those
//! rows, and copies nothing row by row. The offline buffer
//! is taken as it is (it does not grow during training); the tables are rebuilt from the
//! host buffers when either buffer is replaced (another id), the offline one changes, or
//! the normalizer or discount does.
//!
//! Writing one row is a `slice_assign` into a table that only the mirror holds: in place
//! on the cubecl (GPU) backends (burn-cubecl writes a tensor it can mutate in place), but
//! a copy of the whole table on burn-flex, the CPU backend (0.22.0-pre.3's slice_assign
//! keeps a second handle to the destination while writing, so it always copies). That,
//! and the second copy of the buffers in memory, is why the CPU keeps the host default.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::nets::tensor2;
use crate::replay::{Normalizer, Replay};

/// The batch one step trains on, gathered on the device: normalized observations
/// `[R, O]`, actions `[R, A]`, rewards `[R, 1]`, normalized next observations `[R, O]`,
/// bootstrap discounts `[R, 1]`.
pub struct Gathered {
    pub obs: Tensor<2>,
    pub act: Tensor<2>,
    pub rew: Tensor<2>,
    pub next_obs: Tensor<2>,
    pub discount: Tensor<2>,
}

/// Which host buffer a part of the tables mirrors, and how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mirrored {
    id: u64,
    capacity: usize,
    len: usize,
    /// The buffer's [`Replay::pushes`] when last uploaded.
    pushes: u64,
}

impl Mirrored {
    fn of(r: &Replay) -> Self {
        Mirrored {
            id: r.id(),
            capacity: r.capacity(),
            len: r.len(),
            pushes: r.pushes(),
        }
    }
}

/// One table per field, `[slots, width]`.
struct Tables {
    obs: Tensor<2>,
    act: Tensor<2>,
    rew: Tensor<2>,
    next_obs: Tensor<2>,
    mask_discount: Tensor<2>,
}

/// Both buffers' rows on the device; see the module docs.
pub struct DeviceReplay {
    device: Device,
    obs_dim: usize,
    act_dim: usize,
    /// `γ^H`: the bootstrap discount of a non-terminal row.
    discount: f32,
    normalizer: Normalizer,
    offline: Mirrored,
    online: Mirrored,
    /// Always `Some` between calls: taken while rows are written, so that each table has
    /// one handle and `slice_assign` can write it in place.
    tables: Option<Tables>,
}

impl DeviceReplay {
    /// Tables of the offline buffer's rows and the online buffer's slots on `device`,
    /// filled.
    pub fn new(
        offline: &Replay,
        online: &Replay,
        normalizer: &Normalizer,
        discount: f32,
        device: &Device,
    ) -> Self {
        let (od, ad) = (offline.obs_dim, offline.act_dim);
        let slots = offline.len() + online.capacity();
        let zeros = |width| Tensor::<2>::zeros([slots, width], device);
        let mut mirror = DeviceReplay {
            device: device.clone(),
            obs_dim: od,
            act_dim: ad,
            discount,
            normalizer: normalizer.clone(),
            offline: Mirrored::of(offline),
            online: Mirrored::of(online),
            tables: Some(Tables {
                obs: zeros(od),
                act: zeros(ad),
                rew: zeros(1),
                next_obs: zeros(od),
                mask_discount: zeros(1),
            }),
        };
        mirror.write(offline, 0, 0..offline.len());
        mirror.write(online, offline.len(), 0..online.len());
        mirror
    }

    /// Whether this mirror can follow `offline` and `online` by uploading new rows
    /// (else it must be rebuilt).
    pub fn follows(
        &self,
        offline: &Replay,
        online: &Replay,
        normalizer: &Normalizer,
        discount: f32,
    ) -> bool {
        let online_grew = self.online.id == online.id()
            && self.online.capacity == online.capacity()
            && self.online.pushes <= online.pushes();
        self.offline == Mirrored::of(offline)
            && online_grew
            && (offline.obs_dim, offline.act_dim) == (self.obs_dim, self.act_dim)
            && self.normalizer == *normalizer
            && self.discount.to_bits() == discount.to_bits()
    }

    /// Uploads the transitions pushed to the online buffer since the last call (the
    /// mirror [`DeviceReplay::follows`] both buffers): the `new` slots before the ring's
    /// write position, or all of them when at least as many were pushed.
    pub fn sync(&mut self, online: &Replay) {
        let (new, cap, base) = (
            (online.pushes() - self.online.pushes) as usize,
            online.capacity(),
            self.offline.len,
        );
        if new >= online.len() {
            self.write(online, base, 0..online.len());
        } else if new > 0 {
            let end = online.next_slot();
            let start = (end + cap - new) % cap;
            if start < end {
                self.write(online, base, start..end);
            } else {
                // Wrapped: the ring is full (an unfilled ring only appends).
                self.write(online, base, start..cap);
                self.write(online, base, 0..end);
            }
        }
        self.online = Mirrored::of(online);
    }

    /// The rows `rows` (numbered as by `draw_mixed`: offline rows, then online slots from
    /// the offline capacity on) of both buffers.
    pub fn gather(&self, rows: &[u32]) -> Gathered {
        let (split, online_at) = (self.offline.capacity, self.offline.len);
        let ids: Vec<i64> = rows
            .iter()
            .map(|&r| match (r as usize).checked_sub(split) {
                None => r as i64,
                Some(slot) => (online_at + slot) as i64,
            })
            .collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), &self.device);
        let t = self.tables.as_ref().expect("tables between calls");
        let pick = |table: &Tensor<2>| table.clone().select(0, ids.clone());
        Gathered {
            obs: pick(&t.obs),
            act: pick(&t.act),
            rew: pick(&t.rew),
            next_obs: pick(&t.next_obs),
            discount: pick(&t.mask_discount),
        }
    }

    /// Writes slots `range` of `replay` into table rows `base + range`.
    fn write(&mut self, replay: &Replay, base: usize, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        let (od, ad, n) = (self.obs_dim, self.act_dim, range.len());
        let rows = replay.rows(range.clone());
        let mut obs = rows.obs.to_vec();
        let mut next_obs = rows.next_obs.to_vec();
        self.normalizer.apply(&mut obs);
        self.normalizer.apply(&mut next_obs);
        let discount = rows.mask.iter().map(|m| m * self.discount).collect();
        let at = base + range.start..base + range.end;
        let device = &self.device;
        let put = |table: Tensor<2>, values: Vec<f32>, width: usize| {
            table.slice_assign([at.clone(), 0..width], tensor2(values, n, width, device))
        };
        let t = self.tables.take().expect("tables between calls");
        self.tables = Some(Tables {
            obs: put(t.obs, obs, od),
            act: put(t.act, rows.act.to_vec(), ad),
            rew: put(t.rew, rows.rew.to_vec(), 1),
            next_obs: put(t.next_obs, next_obs, od),
            mask_discount: put(t.mask_discount, discount, 1),
        });
    }
}
