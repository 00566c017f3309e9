//! `trainer`: EXPO and its baselines in burn.
//!
//! It will own the networks (diffusion denoiser, edit policy, critic ensemble), the EXPO
//! learner and the `bc`, `rlpd` and `idql-select` baselines, replay buffers, checkpoints,
//! bundle export, and the `trainer` binary (`pretrain`, `train`, `finetune`, `eval`,
//! `export`).
//!
//! Status: not implemented yet (issue 3, "Trainer: EXPO and its baselines in burn").
//! Offline datasets for it are produced today by `tools dataset generate`.
