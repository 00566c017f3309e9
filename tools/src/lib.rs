//! `tools`: command-line utilities around the stack.
//!
//! It owns dataset generation from the scripted demonstrators, success labels for
//! demonstrations recorded without rewards, dataset inspection and validation, the
//! simulation-throughput benchmark, rerun export (feature `viz`) and a scripted teleop
//! device (`tools teleop`) for `controller run --teleop`.

pub mod bench;
pub mod generate;
pub mod label;
pub mod teleop;
