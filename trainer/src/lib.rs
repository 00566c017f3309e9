//! `trainer`: EXPO and its baselines in burn.
//!
//! It owns the networks ([`nets`]: diffusion denoiser, edit policy, critic ensemble,
//! Gaussian actor, temperature), fused Adam/AdamW on flat buffers ([`optim`]), the learners ([`agent`]: `expo`, `bc`, `idql-select`,
//! `rlpd` in one code path), replay buffers with 50/50 offline/online sampling
//! ([`replay`]; mirrored on the training device with `compute.replay = "device"`,
//! [`device_replay`]), the run configuration with its `paper`, `cpu` and `tiny` presets ([`config`]),
//! runs on robots known only from their datasets ([`robot`]), and the `trainer` binary.
//!
//! The EXPO action selection itself lives in `shared_model::select` and is shared with
//! the controller.

pub mod agent;
pub mod bench;
pub mod config;
pub mod device;
pub mod device_replay;
pub mod export;
pub mod finetune;
pub mod live;
pub mod nets;
pub mod optim;
pub mod per_parameter;
pub mod plot;
pub mod replay;
pub mod robot;
pub mod run;
pub mod split;
pub mod study;
