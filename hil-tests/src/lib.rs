//! `hil-tests`: hardware-in-the-loop tests without the hardware.
//!
//! - [`firmware`]: the simulated firmware — a `sim` task behind the wire protocol of
//!   `firmware_config::protocol`, with its own command watchdog — as a clock-driven
//!   state machine ([`firmware::SimFirmware`]), a runner over a byte link
//!   ([`firmware::run`]) and an in-process thread on a fresh pty
//!   ([`firmware::FirmwareThread`]). The `sim-firmware` binary wraps the same code.
//! - [`faults`]: reproducible fault injection on the firmware's output (dropped,
//!   flipped, truncated, duplicated and reordered frames, garbage, stalls, wrong
//!   version or schema, NaN sensors, reboots mid-episode).
//! - [`link`]: the byte transports (a raw-mode pty pair, or a serial device).
//! - [`client`]: a minimal controller-side client for tests.
//! - [`script`]: the command lines a shell script (`scripts/demo`) gives our binaries,
//!   for tests that check them against the binaries' parsers.
//!
//! # Running the simulated firmware
//!
//! ```sh
//! cargo run --release -p hil-tests --bin sim-firmware -- --task push --pty
//! # PTY /dev/pts/3          <- first line of stdout: open this as the serial device
//! ```
//!
//! Options: `--robot FILE` (default: the task's built-in robot file), `--seed N`,
//! `--device PATH` instead of `--pty`, `--lockstep` (step when a command arrives),
//! `--rate-scale X` (run the clock X times faster), `--command-timeout-ms N`,
//! `--faults SPEC` (see [`faults`]), `--reward dense`, `--gravity`,
//! `--max-seconds N`, `--baud N`. `--reward dense` and `--gravity` need a `--robot` file whose
//! robot name ends in the options (`sim-arm-reach+gravity`; the controller's datasets
//! are named after it, and the trainer refuses a variant's data by that name), and
//! `--gravity` one with `gravity_safe_torque_off = false`.
//!
//! The end-to-end tests of the real `controller` binary against it come with the
//! controller (issue 5); the tests here check the firmware and the fault injector.

pub mod client;
pub mod faults;
pub mod firmware;
pub mod link;
pub mod script;
