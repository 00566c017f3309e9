//! `firmware-config`: the robot side's contract.
//!
//! It will own the robot/firmware configuration (TOML, validated on load) and the
//! `no_std` wire protocol between controller and firmware: COBS frames with CRC-32,
//! version and schema-hash handshake, sequence numbers, firmware timestamps.
//!
//! Status: not implemented yet (issue 5, "Firmware protocol, fixed-rate controller and
//! hardware-in-the-loop tests").
