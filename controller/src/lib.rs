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

/// The message of a caught panic's payload (`panic!` with a literal or a format).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
