//! Shared helpers for the integration tests: deterministic episodes and
//! parquet rewriting (to build corrupted datasets).
#![allow(dead_code)]

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use dataset::{DatasetInfo, Episode};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub const OBS_DIM: usize = 7;
pub const ACT_DIM: usize = 3;

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn bool(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

pub fn info() -> DatasetInfo {
    DatasetInfo {
        robot_type: "sim/arm-reach".into(),
        fps: 20,
        task: "reach the red target".into(),
        observation_names: (0..OBS_DIM).map(|i| format!("q{i}")).collect(),
        action_names: (0..ACT_DIM).map(|i| format!("dq{i}")).collect(),
        action_mapping: None,
    }
}

/// An episode of `len` steps; ends terminated when `seed` is even, else truncated.
pub fn episode(rng: &mut Rng, len: usize, seed: u64) -> Episode {
    let mut v = |n: usize| (0..n).map(|_| rng.f32()).collect::<Vec<f32>>();
    let observations = v(len * OBS_DIM);
    let next_observations = v(len * OBS_DIM);
    let actions = v(len * ACT_DIM);
    let rewards = v(len);
    let last = |k: usize| k + 1 == len;
    let terminated = (0..len)
        .map(|k| last(k) && seed.is_multiple_of(2))
        .collect();
    let truncated = (0..len).map(|k| last(k) && seed % 2 == 1).collect();
    let success = (0..len)
        .map(|k| last(k) && seed.is_multiple_of(3))
        .collect();
    let intervention = (0..len).map(|k| k % 5 == 1).collect();
    let teleop = (0..len).map(|k| k % 3 == 2).collect();
    Episode {
        observations,
        next_observations,
        actions,
        rewards,
        terminated,
        truncated,
        success,
        intervention,
        teleop,
    }
}

pub fn episodes(seed: u64, lens: &[usize]) -> Vec<Episode> {
    let mut rng = Rng::new(seed);
    lens.iter()
        .enumerate()
        .map(|(i, &n)| episode(&mut rng, n, i as u64))
        .collect()
}

/// Bitwise float comparison (NaN-safe, distinguishes -0.0).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn assert_same(a: &Episode, b: &Episode) {
    assert_eq!(bits(&a.observations), bits(&b.observations));
    assert_eq!(bits(&a.next_observations), bits(&b.next_observations));
    assert_eq!(bits(&a.actions), bits(&b.actions));
    assert_eq!(bits(&a.rewards), bits(&b.rewards));
    assert_eq!(a.terminated, b.terminated);
    assert_eq!(a.truncated, b.truncated);
    assert_eq!(a.success, b.success);
    assert_eq!(a.intervention, b.intervention);
    assert_eq!(a.teleop, b.teleop);
}

/// Rewrite a parquet file, passing every record batch through `f`.
pub fn rewrite_parquet(path: &Path, f: impl Fn(RecordBatch) -> RecordBatch) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| f(b.unwrap())).collect();
    let schema = batches[0].schema();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Replace column `name` of `batch` (keeping its field) with `col`.
pub fn replace_column(batch: &RecordBatch, name: &str, col: arrow_array::ArrayRef) -> RecordBatch {
    let schema = batch.schema();
    let idx = schema.index_of(name).unwrap();
    let mut cols = batch.columns().to_vec();
    cols[idx] = col;
    RecordBatch::try_new(Arc::clone(&schema), cols).unwrap()
}
