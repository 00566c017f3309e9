//! `shared-model`: what the trainer and the controller must agree on.
//!
//! It will own the model bundle manifest, observation/action specs and their
//! normalization, the diffusion schedule, the EXPO action-selection algorithm (written
//! once, generic over a network runner, used by both the trainer and the controller), and
//! the ONNX graph writer.
//!
//! Status: not implemented yet (issue 9, "Model bundle, ONNX export and the inference
//! runtime"). The crate exists so the workspace has its final shape.
