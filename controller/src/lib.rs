//! `controller`: runs an EXPO bundle on the robot.
//!
//! - [`runtime`]: loads a verified bundle and computes actions (tract by default; `ort`
//!   behind a feature; `native` allocation-free kernels), full, truncated-chain and
//!   two-speed modes.
//!
//! The fixed-rate loop, serial link, safety and logging are issue 5 and not written yet.

pub mod runtime;
