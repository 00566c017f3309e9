//! `controller`: runs an EXPO bundle on the robot.
//!
//! - [`runtime`]: loads a verified bundle and computes actions (tract by default; `ort`
//!   behind a feature; `native` allocation-free kernels), full, truncated-chain and
//!   two-speed modes.
//!
//! - [`robot_loop`] (source in `src/loop/`): `controller run` — the serial link to
//!   the firmware, the fixed-rate control thread, the safety envelope, crash-safe
//!   transition logging into the dataset format, episodes and the cadence report.

/// `eprintln!` minus its panic, for everything a robot run prints: a console line that
/// cannot be written (the terminal closed, the pipe reading stderr died) is dropped,
/// since a panic there would take a safe stop or a dataset with it.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` minus its panic (see [`note!`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod cli;
#[path = "loop/mod.rs"]
pub mod robot_loop;
pub mod runtime;
