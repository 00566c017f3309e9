//! `shared-model`: what the trainer and the controller must agree on.
//!
//! - [`schedule`]: the diffusion schedule and the sampling plans (full DDPM chain,
//!   truncated DDIM chain).
//! - [`select`]: EXPO's on-the-fly action selection, written once and generic over a
//!   network runner so that the trainer (burn tensors) and the controller (ONNX
//!   runtime) run the same algorithm.
//! - [`graphs`]: the three ONNX graphs of a bundle (denoising step, edit policy, critic
//!   ensemble), built from plain weight arrays; [`onnx`]: the protobuf messages and a
//!   graph builder.
//! - [`manifest`]: the bundle on disk: manifest, signature, hashes, verification.
//! - [`chunk`]: how action chunks are played (which action a step takes, when to
//!   replan).

pub mod chunk;
pub mod graphs;
pub mod manifest;
pub mod onnx;
pub mod schedule;
pub mod select;
pub mod synthetic;

pub use chunk::{ChunkClock, ChunkPlay, TemporalEnsemble};
pub use manifest::{BundleError, Manifest, Trust, VerifiedBundle, load_bundle, write_bundle};
pub use schedule::DiffusionSchedule;
pub use select::{ExpoRunner, SelectionParams, TdRunner, on_the_fly_action, on_the_fly_value};
