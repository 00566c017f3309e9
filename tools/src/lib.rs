//! `tools`: command-line utilities around the stack.
//!
//! It owns dataset generation from the scripted demonstrators, success labels for
//! demonstrations recorded without rewards, dataset inspection and validation, and the simulation-throughput benchmark (`tools` binary). Later it will
//! also hold rerun export, benchmark drivers and plots.

pub mod bench;
pub mod generate;
pub mod label;
