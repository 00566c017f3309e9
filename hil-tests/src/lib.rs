//! `hil-tests`: hardware-in-the-loop tests without the hardware.
//!
//! It will own the simulated firmware (a `sim` task behind a pseudo-terminal speaking the
//! wire protocol, with its own command watchdog), fault injection (dropped and flipped
//! bytes, stalls, disconnects, version mismatch, NaN sensors) and the end-to-end tests of
//! the real `controller` binary against it.
//!
//! Status: not implemented yet (issue 5).
