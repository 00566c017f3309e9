//! `controller`: the policy on the robot computer.
//!
//! It will own the inference runtime (tract by default, ort optional) that runs the
//! truncated denoising chain, the edit policy and Q-selection; the fixed-rate control
//! loop; the serial link to the firmware; safety (clamps, rate limits, stale-sensor and
//! deadline monitors, safe stop); and crash-safe transition logging and streaming. It
//! never depends on burn.
//!
//! Status: not implemented yet (issues 9 and 5).
