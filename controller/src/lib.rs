//! `controller`: runs an EXPO bundle on the robot.
//!
//! - [`runtime`]: loads a verified bundle and computes actions (tract by default; `ort`
//!   behind a feature; `native` allocation-free kernels), full, truncated-chain and
//!   two-speed modes.
//!
//! - [`robot_loop`] (source in `src/loop/`): `controller run` — the serial link to
//!   the firmware, the fixed-rate control thread, the safety envelope, crash-safe
//!   transition logging into the dataset format, episodes and the cadence report.

pub mod cli;
#[path = "loop/mod.rs"]
pub mod robot_loop;
pub mod runtime;
