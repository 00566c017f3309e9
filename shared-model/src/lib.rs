//! `shared-model`: what the trainer and the controller must agree on.
//!
//! It owns the diffusion schedule ([`schedule`]) and the EXPO on-the-fly action
//! selection ([`select`]), written once and generic over a network runner so that the
//! trainer (burn tensors) and the controller (ONNX runtime) run the same algorithm.
//!
//! Still to come here (issue 9): the model bundle manifest, observation/action specs and
//! normalization, and the ONNX graph writer.

pub mod schedule;
pub mod select;

pub use schedule::DiffusionSchedule;
pub use select::{ExpoRunner, SelectionParams, on_the_fly_action};
