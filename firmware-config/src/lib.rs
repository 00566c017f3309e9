//! `firmware-config`: the robot side's contract, shared by the controller and the
//! firmware.
//!
//! - [`protocol`]: the controller ⇄ firmware wire protocol (COBS frames with CRC-32,
//!   version and schema-hash handshake, sequence numbers, firmware timestamps). It is
//!   `no_std` and allocation-free with explicit maximum sizes, so the same code runs on
//!   a microcontroller; build it with `--no-default-features`.
//! - [`teleop`]: the teleop device ⇄ controller datagrams (UDP; `controller run
//!   --teleop`), also `no_std`.
//! - [`config`] (feature `std`, on by default): the robot/firmware configuration as
//!   TOML (joints and limits, control rate, serial link, command timeout, observation
//!   and action layout, safety envelope), validated on load with errors that name the
//!   file, the line and the field. Example robots for the three simulated tasks are in
//!   `firmware-config/robots/` and built in ([`config::RobotConfig::example`]).
#![cfg_attr(not(feature = "std"), no_std)]

pub mod protocol;
pub mod teleop;

#[cfg(feature = "std")]
pub mod config;

#[cfg(feature = "std")]
pub use config::{ConfigError, RobotConfig};
