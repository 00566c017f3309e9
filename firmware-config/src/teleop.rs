//! Teleoperation datagrams: a teleop device (a leader arm, a space mouse, a gamepad, a
//! script) ⇄ the controller, over UDP. `no_std` and allocation-free like [`protocol`],
//! so a device on a microcontroller can speak it too.
//!
//! `controller run --teleop ADDR` listens on `ADDR`. The device sends [`TeleopAction`]
//! datagrams at its own rate; while the newest one is *engaged* (a deadman button held)
//! and fresh, the controller sends its values to the robot instead of the policy's (or,
//! without a bundle, instead of the hold action), through the same safety envelope, and
//! records them as the transitions' actions, marked `teleop`. In return the controller
//! sends the device a [`TeleopObservation`] for every sensor frame it acts on, so a
//! device can act in closed loop or show the state.
//!
//! # Datagram layout
//!
//! ```text
//!  all integers little-endian, floats f32 LE (IEEE 754)
//!
//!  byte  0 … 3    4         5      6     7       8 … 11   12 … 15    16 … 16+4n-1   16+4n … +3
//!       ┌────────┬─────────┬──────┬─────┬───────┬────────┬──────────┬──────────────┬──────────┐
//!       │ "EXTP" │ version │ kind │ n   │ flags │ seq    │ ref      │ n × f32      │ CRC-32   │
//!       │ magic  │ u8      │ u8   │ u8  │ u8    │ u32    │ u32      │ values       │ u32      │
//!       └────────┴─────────┴──────┴─────┴───────┴────────┴──────────┴──────────────┴──────────┘
//!       │◄─────────────── CRC-32 (IEEE, as `protocol::crc32`) covers all of this ───────►│
//! ```
//!
//! | kind | datagram | direction | `seq` | `ref` | values | flags |
//! |---|---|---|---|---|---|---|
//! | 1 | [`TeleopAction`] | device → controller | the device's counter, +1 per datagram | with flag 8: the step of the observation it answers; else 0 | the action, policy units `[-1, 1]` | 1 engaged, 2 label success, 4 label failure (not both), 8 answers |
//! | 2 | [`TeleopObservation`] | controller → device | the firmware's step | the episode's number in the run (the controller's log and report) | the observation | 1 the device's action was the last command sent (see [`IN_CONTROL`]) |
//!
//! - **Engaged** (flag 1): the device's values move the robot. A device sends
//!   disengaged datagrams while its deadman is released; the controller then falls back
//!   to the policy (or the hold action), as it does when the device falls silent for
//!   longer than the controller's `--teleop-timeout-ms`.
//! - **Labels** (flags 2 and 4) end the running episode as a success or a failure,
//!   like the operator's `s` and `f` keys. They act on the datagram where the flag turns
//!   on (compared with the previous one), so a device may keep the flag set while its
//!   button is held.
//! - **Answers** (flag 8): the action was computed from the observation of step
//!   `ref`. A controller started with `--teleop-wait-ms` sends each observation before
//!   acting on it and waits that long for the answer, so that a closed-loop device (a
//!   scripted controller) acts on the frame it answers instead of one period late.
//!   An answer to a later step than the frame being acted on answers an earlier
//!   episode, and the controller does not act on it (a device repeating its last answer
//!   between episodes does not drive the next one's first frames).
//! - **Sequence numbers** go up by one per datagram; the controller drops a datagram
//!   older than one it has taken, so a late duplicate cannot undo a release.
//! - The controller follows one device: the address of the first valid action
//!   datagram, and another one only after that device has been silent for longer than
//!   the timeout. It sends observations there, so a device that only wants
//!   observations sends disengaged actions.
//!
//! Decoding is strict: the magic, version, kind, the count against the datagram's
//! length, unknown flag bits, both labels at once, an action's `ref` other than 0
//! without flag 8, and the CRC are all checked ([`TeleopError`]). UDP's own
//! checksum is optional on IPv4; the CRC also keeps stray traffic on the port (another
//! program's datagrams) from ever moving the arm.
//!
//! # Sizes
//!
//! Header 16 bytes, at most [`MAX_OBS`] = 32 values (an observation), CRC 4 bytes:
//! 16 + 128 + 4 = 148 bytes = [`MAX_DATAGRAM`], well under any link's MTU.
//!
//! [`protocol`]: crate::protocol

use crate::protocol::{MAX_ACT, MAX_OBS, crc32};

/// First four bytes of every teleop datagram.
pub const MAGIC: [u8; 4] = *b"EXTP";
/// Version of the teleop datagrams; both sides must speak the same one.
pub const VERSION: u8 = 1;
/// Bytes before the values: magic 4, version, kind, n, flags, seq u32, episode u32.
pub const HEADER_LEN: usize = 16;
/// Trailer: CRC-32.
const CRC_LEN: usize = 4;
/// Largest datagram: a full observation, 16 + 4 × 32 + 4 = 148 bytes.
pub const MAX_DATAGRAM: usize = HEADER_LEN + 4 * MAX_OBS + CRC_LEN;
const _: () = assert!(MAX_ACT <= MAX_OBS);

const KIND_ACTION: u8 = 1;
const KIND_OBSERVATION: u8 = 2;

/// [`TeleopAction::flags`]: the device's values move the robot (deadman held).
pub const ENGAGED: u8 = 1;
/// [`TeleopAction::flags`]: end the running episode, labelled a success.
pub const LABEL_SUCCESS: u8 = 2;
/// [`TeleopAction::flags`]: end the running episode, labelled a failure.
pub const LABEL_FAILURE: u8 = 4;
/// [`TeleopAction::flags`]: the action answers the observation of step
/// [`TeleopAction::answers`].
pub const ANSWERS: u8 = 8;
const ACTION_FLAGS: u8 = ENGAGED | LABEL_SUCCESS | LABEL_FAILURE | ANSWERS;
/// [`TeleopObservation::flags`]: the last command the controller sent before this
/// observation went out was the device's. Without a wait for answers that is this
/// frame's command (sent before its observation); with `--teleop-wait-ms` the
/// observation goes out first, to be answered, so the flag is the previous frame's
/// (a takeover shows one frame late, and the first frame of an episode may carry the
/// last one's).
pub const IN_CONTROL: u8 = 1;
const OBSERVATION_FLAGS: u8 = IN_CONTROL;

/// Device → controller: the operator's action.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TeleopAction {
    /// The device's own counter (the controller reports gaps, nothing more).
    pub seq: u32,
    /// [`ENGAGED`], [`LABEL_SUCCESS`], [`LABEL_FAILURE`], [`ANSWERS`].
    pub flags: u8,
    /// With [`ANSWERS`]: the step of the observation this action was computed from.
    pub answers: u32,
    /// Number of values in `values`.
    pub n: u8,
    /// Policy units, `[-1, 1]` per dimension (the robot file's `action.scale` and
    /// `offset` map them to the motors, as for the policy's actions).
    pub values: [f32; MAX_ACT],
}

impl TeleopAction {
    /// An action datagram carrying `values` (at most [`MAX_ACT`]).
    pub fn new(seq: u32, flags: u8, values: &[f32]) -> TeleopAction {
        assert!(values.len() <= MAX_ACT, "at most {MAX_ACT} action values");
        let mut v = [0.0; MAX_ACT];
        v[..values.len()].copy_from_slice(values);
        TeleopAction {
            seq,
            flags,
            answers: 0,
            n: values.len() as u8,
            values: v,
        }
    }

    /// The same action, marked as the answer to the observation of `step`.
    pub fn answering(mut self, step: u32) -> TeleopAction {
        self.flags |= ANSWERS;
        self.answers = step;
        self
    }

    /// The step of the observation this action answers, if it says.
    pub fn answer_to(&self) -> Option<u32> {
        (self.flags & ANSWERS != 0).then_some(self.answers)
    }

    pub fn values(&self) -> &[f32] {
        &self.values[..(self.n as usize).min(MAX_ACT)]
    }

    pub fn engaged(&self) -> bool {
        self.flags & ENGAGED != 0
    }
}

/// Controller → device: the observation the controller just acted on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TeleopObservation {
    pub episode: u32,
    pub step: u32,
    /// [`IN_CONTROL`].
    pub flags: u8,
    pub n: u8,
    pub values: [f32; MAX_OBS],
}

impl TeleopObservation {
    pub fn values(&self) -> &[f32] {
        &self.values[..(self.n as usize).min(MAX_OBS)]
    }

    pub fn in_control(&self) -> bool {
        self.flags & IN_CONTROL != 0
    }
}

/// A decoded datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Datagram {
    Action(TeleopAction),
    Observation(TeleopObservation),
}

/// Why a datagram was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TeleopError {
    #[error("{len} bytes is shorter than a teleop datagram's header and CRC (20)")]
    TooShort { len: usize },
    #[error("not a teleop datagram (the first 4 bytes are not \"EXTP\")")]
    Magic,
    #[error("teleop version {received}, but this side speaks {VERSION}")]
    Version { received: u8 },
    #[error("unknown teleop datagram kind {0}")]
    Kind(u8),
    #[error("{n} values is more than a {what} datagram carries ({max})")]
    Count {
        what: &'static str,
        n: u8,
        max: usize,
    },
    #[error("{n} values need a datagram of {expected} bytes, this one has {actual}")]
    Length {
        n: u8,
        expected: usize,
        actual: usize,
    },
    #[error("CRC mismatch: the datagram carries {received:#010x}, computed {computed:#010x}")]
    Crc { received: u32, computed: u32 },
    #[error("unknown {what} flag bits {bits:#04x}")]
    Flags { what: &'static str, bits: u8 },
    #[error("an action labels the episode both a success and a failure")]
    BothLabels,
    #[error("an action's ref field is {0} without the answers flag (8), it must be 0")]
    RefWithoutAnswer(u32),
}

/// Encodes an action datagram into `out` (at least [`MAX_DATAGRAM`] bytes); returns its
/// length.
pub fn encode_action(a: &TeleopAction, out: &mut [u8]) -> usize {
    let v = a.values();
    let reference = if a.flags & ANSWERS != 0 { a.answers } else { 0 };
    encode(
        KIND_ACTION,
        v.len() as u8,
        a.flags,
        a.seq,
        reference,
        v,
        out,
    )
}

/// Encodes an observation datagram into `out` (at least [`MAX_DATAGRAM`] bytes);
/// returns its length.
pub fn encode_observation(o: &TeleopObservation, out: &mut [u8]) -> usize {
    encode(
        KIND_OBSERVATION,
        o.values().len() as u8,
        o.flags,
        o.step,
        o.episode,
        o.values(),
        out,
    )
}

fn encode(
    kind: u8,
    n: u8,
    flags: u8,
    seq: u32,
    episode: u32,
    values: &[f32],
    out: &mut [u8],
) -> usize {
    let len = HEADER_LEN + 4 * n as usize + CRC_LEN;
    out[..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = kind;
    out[6] = n;
    out[7] = flags;
    out[8..12].copy_from_slice(&seq.to_le_bytes());
    out[12..16].copy_from_slice(&episode.to_le_bytes());
    for (i, v) in values.iter().enumerate() {
        out[HEADER_LEN + 4 * i..HEADER_LEN + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    let crc = crc32(&out[..len - CRC_LEN]);
    out[len - CRC_LEN..len].copy_from_slice(&crc.to_le_bytes());
    len
}

/// Decodes one datagram. Values are passed through as they are (NaN included): judging
/// them is the receiver's job.
pub fn decode(bytes: &[u8]) -> Result<Datagram, TeleopError> {
    let len = bytes.len();
    if len < HEADER_LEN + CRC_LEN {
        return Err(TeleopError::TooShort { len });
    }
    if bytes[..4] != MAGIC {
        return Err(TeleopError::Magic);
    }
    let (kind, n, flags) = (bytes[5], bytes[6], bytes[7]);
    // An unknown kind is told apart from noise by the CRC below.
    let shape = match kind {
        KIND_ACTION => Some(("action", MAX_ACT, ACTION_FLAGS)),
        KIND_OBSERVATION => Some(("observation", MAX_OBS, OBSERVATION_FLAGS)),
        _ => None,
    };
    // The CRC (it ends the datagram whatever its layout) and the version before the
    // length: a device speaking another version, with another header, is told so
    // rather than reported as a datagram of the wrong length.
    let body = len - CRC_LEN;
    let received = le_u32(bytes, body);
    let computed = crc32(&bytes[..body]);
    if received != computed {
        return Err(TeleopError::Crc { received, computed });
    }
    if bytes[4] != VERSION {
        return Err(TeleopError::Version { received: bytes[4] });
    }
    // The kind before the length too: a kind of a newer device, with its own layout,
    // is named as such.
    let Some((what, max, known)) = shape else {
        return Err(TeleopError::Kind(kind));
    };
    let expected = HEADER_LEN + 4 * n as usize + CRC_LEN;
    if n as usize <= MAX_OBS && expected != len {
        return Err(TeleopError::Length {
            n,
            expected,
            actual: len,
        });
    }
    if n as usize > max {
        return Err(TeleopError::Count { what, n, max });
    }
    if flags & !known != 0 {
        return Err(TeleopError::Flags {
            what,
            bits: flags & !known,
        });
    }
    let (seq, episode) = (le_u32(bytes, 8), le_u32(bytes, 12));
    if kind == KIND_ACTION {
        if flags & (LABEL_SUCCESS | LABEL_FAILURE) == LABEL_SUCCESS | LABEL_FAILURE {
            return Err(TeleopError::BothLabels);
        }
        if flags & ANSWERS == 0 && episode != 0 {
            return Err(TeleopError::RefWithoutAnswer(episode));
        }
    }
    Ok(if kind == KIND_ACTION {
        Datagram::Action(TeleopAction {
            seq,
            flags,
            answers: episode,
            n,
            values: read_values(bytes, n),
        })
    } else {
        Datagram::Observation(TeleopObservation {
            episode,
            step: seq,
            flags,
            n,
            values: read_values(bytes, n),
        })
    })
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The `n` values after the header (`n <= N`, checked by the caller), zero-padded.
fn read_values<const N: usize>(bytes: &[u8], n: u8) -> [f32; N] {
    let mut values = [0.0; N];
    for (i, v) in values.iter_mut().take(n as usize).enumerate() {
        *v = f32::from_bits(le_u32(bytes, HEADER_LEN + 4 * i));
    }
    values
}

#[cfg(test)]
mod tests {
    // The library is `no_std` without the `std` feature; its tests use std either way.
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Any bytes: an error or a datagram, never a panic; a datagram re-encodes to
        /// the same bytes.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(d) = decode(&bytes) {
                let mut buf = [0u8; MAX_DATAGRAM];
                let n = match d {
                    Datagram::Action(a) => encode_action(&a, &mut buf),
                    Datagram::Observation(o) => encode_observation(&o, &mut buf),
                };
                prop_assert_eq!(&buf[..n], &bytes[..]);
            }
        }

        /// Random headers and bodies behind the magic, sealed with a valid CRC: random
        /// bytes never pass the CRC, so the property above never reached the checks
        /// after it (version, length, kind, count, flags, the values). Each of the
        /// version, the kind, `n` and the flags is made valid about half the time, so
        /// that every check is reached and some datagrams decode.
        #[test]
        fn sealed_random_datagrams_decode_or_fail_cleanly(
            rest in proptest::collection::vec(any::<u8>(), 12..=HEADER_LEN - 4 + 4 * MAX_OBS),
            valid in proptest::array::uniform4(any::<bool>()),
            action in any::<bool>(),
        ) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&rest);
            let [version, kind, n, flags] = valid;
            if version {
                b[4] = VERSION;
            }
            if kind {
                b[5] = if action { KIND_ACTION } else { KIND_OBSERVATION };
            }
            if n {
                b[6] = ((b.len() - HEADER_LEN) / 4) as u8;
            }
            if flags {
                b[7] &= if action { ACTION_FLAGS } else { OBSERVATION_FLAGS };
            }
            let crc = crc32(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            if let Ok(d) = decode(&b) {
                let mut buf = [0u8; MAX_DATAGRAM];
                let n = match d {
                    Datagram::Action(a) => encode_action(&a, &mut buf),
                    Datagram::Observation(o) => encode_observation(&o, &mut buf),
                };
                prop_assert_eq!(&buf[..n], &b[..]);
            }
        }

        /// Valid datagrams with a valid CRC and one corrupted byte: still no panic.
        #[test]
        fn damaged_valid_datagrams_never_panic(
            seq in any::<u32>(),
            flags in 0u8..16,
            answers in any::<u32>(),
            values in proptest::collection::vec(any::<f32>(), 0..=MAX_ACT),
            at in 0usize..200,
            byte in any::<u8>(),
        ) {
            let mut buf = [0u8; MAX_DATAGRAM];
            let mut a = TeleopAction::new(seq, flags & !ANSWERS, &values);
            if flags & ANSWERS != 0 {
                a = a.answering(answers);
            }
            let n = encode_action(&a, &mut buf);
            let mut b = buf[..n].to_vec();
            let at = at % n;
            b[at] = byte;
            let _ = decode(&b);
            // The undamaged one decodes, unless it asks for both labels.
            prop_assert_eq!(decode(&buf[..n]).is_ok(), flags & 6 != 6);
        }
    }

    fn action_bytes(a: &TeleopAction) -> ([u8; MAX_DATAGRAM], usize) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode_action(a, &mut buf);
        (buf, n)
    }

    #[test]
    fn datagrams_round_trip() {
        let a = TeleopAction::new(7, ENGAGED | LABEL_SUCCESS, &[0.5, -1.0, f32::NAN]);
        let (buf, n) = action_bytes(&a);
        assert_eq!(n, 16 + 12 + 4);
        let Datagram::Action(back) = decode(&buf[..n]).unwrap() else {
            panic!("not an action")
        };
        assert_eq!((back.seq, back.flags, back.n), (7, 3, 3));
        assert_eq!(back.values()[..2], [0.5, -1.0]);
        assert!(back.values()[2].is_nan());
        assert!(back.engaged());
        assert_eq!(back.answer_to(), None);
        let (buf, n) = action_bytes(&a.answering(41));
        let Datagram::Action(back) = decode(&buf[..n]).unwrap() else {
            panic!("not an action")
        };
        assert_eq!((back.flags, back.answer_to()), (3 | ANSWERS, Some(41)));

        let mut values = [0.0; MAX_OBS];
        for (i, v) in values.iter_mut().enumerate() {
            *v = i as f32 * 0.25 - 3.0;
        }
        let o = TeleopObservation {
            episode: 3,
            step: 41,
            flags: IN_CONTROL,
            n: MAX_OBS as u8,
            values,
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode_observation(&o, &mut buf);
        assert_eq!(n, MAX_DATAGRAM);
        assert_eq!(decode(&buf[..n]).unwrap(), Datagram::Observation(o));
    }

    /// The layout of the module doc, byte for byte (what a device in another language
    /// must produce).
    #[test]
    fn golden_bytes() {
        let (buf, n) = action_bytes(&TeleopAction::new(0x0102_0304, ENGAGED, &[1.0]));
        let mut want = vec![b'E', b'X', b'T', b'P', 1, 1, 1, 1, 4, 3, 2, 1, 0, 0, 0, 0];
        want.extend_from_slice(&1.0f32.to_le_bytes());
        want.extend_from_slice(&crc32(&want).to_le_bytes());
        assert_eq!(&buf[..n], &want[..]);
    }

    #[test]
    fn every_damage_is_named() {
        let (good, n) = action_bytes(&TeleopAction::new(1, ENGAGED, &[0.1, 0.2]));
        let good = &good[..n];
        assert_eq!(decode(&good[..10]), Err(TeleopError::TooShort { len: 10 }));
        let mut b = good.to_vec();
        b[0] = b'X';
        assert_eq!(decode(&b), Err(TeleopError::Magic));
        // A datagram cut short: its last four bytes are no CRC of the rest.
        assert!(matches!(
            decode(&good[..n - 1]),
            Err(TeleopError::Crc { .. })
        ));
        // One flipped bit anywhere after the magic fails the CRC (or the length check).
        for byte in 4..n {
            for bit in 0..8 {
                let mut b = good.to_vec();
                b[byte] ^= 1 << bit;
                assert!(
                    decode(&b).is_err(),
                    "flip of bit {bit} in byte {byte} passed"
                );
            }
        }
        // Damage with a valid CRC (a buggy device): each field's own error.
        let resealed = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.to_vec();
            f(&mut b);
            let body = b.len() - 4;
            let crc = crc32(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            decode(&b)
        };
        assert_eq!(
            resealed(&|b| b[4] = 2),
            Err(TeleopError::Version { received: 2 })
        );
        // Another version with a longer header is that version, not a wrong length
        // (the length was checked first).
        assert_eq!(
            resealed(&|b| {
                b[4] = 2;
                b.splice(16..16, [0u8; 4]);
            }),
            Err(TeleopError::Version { received: 2 })
        );
        // Cut short or padded, resealed (a buggy device): the count and the length
        // disagree.
        assert!(matches!(
            resealed(&|b| {
                b.remove(16);
            }),
            Err(TeleopError::Length {
                n: 2,
                expected: 28,
                actual: 27
            })
        ));
        assert_eq!(resealed(&|b| b[5] = 9), Err(TeleopError::Kind(9)));
        // Another kind with another layout is that kind, not a wrong length.
        assert_eq!(
            resealed(&|b| {
                b[5] = 9;
                b.splice(16..16, [0u8; 4]);
            }),
            Err(TeleopError::Kind(9))
        );
        assert_eq!(
            resealed(&|b| b[7] = LABEL_SUCCESS | LABEL_FAILURE),
            Err(TeleopError::BothLabels)
        );
        assert_eq!(
            resealed(&|b| b[12] = 3),
            Err(TeleopError::RefWithoutAnswer(3))
        );
        let Ok(Datagram::Action(a)) = resealed(&|b| {
            b[7] |= ANSWERS;
            b[12] = 3;
        }) else {
            panic!("an answer")
        };
        assert_eq!(a.answer_to(), Some(3));
        assert_eq!(
            resealed(&|b| b[7] = ENGAGED | 0x40),
            Err(TeleopError::Flags {
                what: "action",
                bits: 0x40
            })
        );
        let long = TeleopObservation {
            episode: 0,
            step: 0,
            flags: 0,
            n: (MAX_ACT + 1) as u8,
            values: [0.0; MAX_OBS],
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        let len = encode_observation(&long, &mut buf);
        buf[5] = KIND_ACTION;
        let crc = crc32(&buf[..len - 4]);
        buf[len - 4..len].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&buf[..len]),
            Err(TeleopError::Count {
                what: "action",
                n: 17,
                max: MAX_ACT
            })
        );
    }
}
