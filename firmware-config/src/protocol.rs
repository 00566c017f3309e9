//! The controller ⇄ firmware wire protocol: `no_std`, no allocation, fixed maximum sizes.
//!
//! # Frame layout
//!
//! Every message travels as one frame. On the wire, frames are COBS-encoded and separated
//! by a single `0x00` delimiter, which COBS guarantees never occurs inside a frame, so a
//! receiver that joins mid-stream or loses bytes resynchronizes at the next `0x00`:
//!
//! ```text
//!  wire:  … 0x00 │ COBS(raw frame) │ 0x00 │ COBS(raw frame) │ 0x00 …
//!
//!  raw frame (before COBS), all integers little-endian, floats f32 LE:
//!
//!  byte  0         1        2    3   4   5   6   7   8    9   10 … 10+len-1   10+len … +3
//!       ┌─────────┬────────┬────────┬───────────────┬────────┬──────────────┬─────────────┐
//!       │ version │ type   │ seq    │ timestamp_us  │ len    │ payload      │ CRC-32      │
//!       │ u8      │ u8     │ u16    │ u32           │ u16    │ len bytes    │ u32         │
//!       └─────────┴────────┴────────┴───────────────┴────────┴──────────────┴─────────────┘
//!       │◄──────────────── header (HEADER_LEN = 10) ───────►│
//!       │◄───────────────── CRC-32 (IEEE) covers header and payload ───────►│
//! ```
//!
//! - `version` is [`PROTOCOL_VERSION`]. It and the trailing CRC are the two things every
//!   future version keeps in place, so a receiver can always check the CRC first and then
//!   tell "the other side speaks version N" ([`FrameError::Version`]) from line noise.
//!   A firmware that receives a frame of another version answers it with its own
//!   `Hello` (the simulated firmware does): that is how a controller of another version
//!   learns why it gets no answer, instead of a bare handshake timeout.
//! - `type` is a [`MessageType`].
//! - `seq` counts frames per direction (each side has its own counter) and wraps at
//!   2^16; [`SeqTracker`] turns it into lost / duplicated / reordered counts.
//! - `timestamp_us`: firmware → controller frames carry the firmware's clock in µs
//!   since it booted; controller → firmware frames carry the controller's monotonic
//!   clock in µs. Both wrap after 2^32 µs (71.6 minutes): compare them with
//!   [`timestamp_delta_us`], never with `<`.
//! - `len` is the payload length; it must agree with the frame's actual size.
//!
//! # Sizes
//!
//! The largest payload is a [`Message::Sensor`] with [`MAX_OBS`] = 32 values:
//! episode (4) + step (4) + count (1) + 32 × 4 = 137 bytes = [`MAX_PAYLOAD`]. A command
//! is at most 1 + [`MAX_ACT`] × 4 = 65 bytes, a `Reward` 14 + [`MAX_ACT`] × 4 = 78. Raw frame: 10 + 137 + 4 = 151 bytes
//! ([`MAX_RAW_FRAME`]). COBS adds one code byte per started run of 254 non-zero bytes,
//! so at most `n + n / 254 + 1` = 152 bytes ([`MAX_ENCODED_FRAME`]), plus the delimiter:
//! [`MAX_FRAME`] = 153 bytes. At 1 Mbaud (10 bits per byte) a full sensor frame takes
//! 1.5 ms; at 115200 baud, 13 ms, which still fits a 20 Hz loop but not 100 Hz.
//!
//! # Messages
//!
//! | type | message | direction | payload |
//! |---|---|---|---|
//! | 0x01 | [`Hello`] | both | version u8, schema hash u32, robot id u32, settings hash u32, obs dim u8, act dim u8, control Hz u16 |
//! | 0x02 | `Sensor` | fw → ctl | episode u32, step u32, n u8, n × f32 |
//! | 0x03 | `Command` | ctl → fw | n u8, n × f32 (robot units, see `config::ActionConfig`) |
//! | 0x04 | `Heartbeat` | both | — |
//! | 0x05 | `Fault` | fw → ctl | code u8, detail u8 ([`FaultCode`]) |
//! | 0x06 | `Estop` | ctl → fw | — |
//! | 0x07 | `EpisodeStart` | fw → ctl | episode u32, seed u64 |
//! | 0x08 | `EpisodeEnd` | fw → ctl | episode u32, success u8, steps u32 |
//! | 0x09 | `Reset` | ctl → fw | seed u64 |
//! | 0x0a | `Reward` | fw → ctl | episode u32, step u32, reward f32, flags u8 (1 done, 2 truncated, 4 success; truncated only with done), n u8, n × f32 applied action (robot units); **required every step** |
//!
//! # Episodes, as a firmware runs them
//!
//! - `Reset { seed }` starts a new episode in any state after the handshake, a running
//!   episode included (the controller ends episodes itself: an operator's label, a
//!   fault, a firmware that never says `done`): the firmware sends `EpisodeStart` with a
//!   **new episode id** (a counter; a reused id lets the last episode's late frames be
//!   taken for the new one's), then a `Sensor` per control step from step 0.
//! - Every step `s ≥ 1` also gets a `Reward` for the step that led to it (step `s − 1`'s
//!   action): the controller pairs `Sensor(s − 1)`, `Sensor(s)` and `Reward(s)` into one
//!   transition, so a firmware that sends no `Reward` frames records nothing (each
//!   episode line says "0 transitions, N missing").
//! - The `Reward` names the action that step applied, in robot units: the command after
//!   the firmware's envelope and slew limit, or its hold action on a hold step. The
//!   transition records it, not the command the controller sent: a command late or lost
//!   on the line, one the slew limit reached over several steps and the watchdog's
//!   hold all make the robot do otherwise than it was told, and a critic that learns
//!   from the told action learns the wrong outcome for it.
//! - The hold action is **0 in policy units**: `action.offset` in robot units, what
//!   the firmware applies before the first command, after its watchdog trips and at
//!   the end of a safe stop. On a robot commanded in absolute positions that is a pose
//!   (the arm moves there), not a stop: choose `action.offset` so that it is safe, or
//!   command velocities or position deltas, whose 0 is a stop. `safety.max_delta_per_tick`
//!   is in policy units too: in robot units the slew limit is `|scale| ×
//!   max_delta_per_tick` per joint. (`tools robot FILE` prints both.)
//!
//! Decoding is strict: a payload whose length does not match its type, a count above the
//! maximum, a bool that is neither 0 nor 1, an unknown flag bit or a `Reward` truncated
//! without done (done means the episode ended, either way: terminated or truncated, not
//! Gymnasium's `terminated` alone) is rejected, so that a
//! corrupted frame that happens to pass the CRC still cannot turn into a plausible
//! message of another shape. Float values are passed through as they are (NaN
//! included): judging them is the receiver's job (the firmware rejects non-finite
//! commands, the controller's safety layer rejects non-finite sensors).
//!
//! # Handshake
//!
//! The controller sends [`Hello`] with its [`PROTOCOL_VERSION`], [`SCHEMA_HASH`], the
//! robot config's identity, settings hash, dimensions and rate; the firmware answers with its own
//! `Hello`. [`Hello::check_peer`] refuses to run on any difference. [`SCHEMA_HASH`] is
//! the CRC-32 of [`SCHEMA`], a canonical text description of every layout above, so a
//! layout change that forgets to bump the version still fails the handshake. The robot
//! id (`config::RobotConfig::identity`, the CRC-32 of the robot's name and its channel
//! names in order) tells two robots apart that happen to have the same sizes and rate:
//! a policy for one arm must not drive another robot whose sensor frame means something
//! else. The settings hash (`config::RobotConfig::settings_hash`, the CRC-32 of the
//! settings both sides act on: the action mapping, the safety envelope and slew limit,
//! whether the torque may go off, the joint limits) tells apart two versions of one
//! robot's file: a controller whose file was edited after the firmware was configured
//! would send commands the firmware decodes into other positions, and the two would
//! hold at other poses. A `no_std` firmware gets both values from the robot file at
//! build time (`tools robot FILE` prints them).
//!
//! # Stops
//!
//! - `Estop` from the controller: the firmware stops (torque off where the robot file
//!   allows it), answers `Fault { Estop }` and takes no step until the next `Reset`.
//!   It does so in any state, before a handshake too (where nothing else but a `Hello`
//!   is taken up): a controller whose safe stop ends a run after the firmware rebooted
//!   sends its closing `Estop` before any new `Hello`, and a stop must never be
//!   ignored. A matching `Hello` takes the firmware out of that stop as well (it holds
//!   with its torque on again, as after a boot; a pressed stop button stays latched):
//!   a controller that shakes hands again sends a new `Estop` to end its run.
//! - A hardware stop (the robot's stop button): the firmware stops the same way and
//!   sends `Fault { Estop }` at once, in any state, before a handshake too. The stop is
//!   latched: until the button is released, every `Reset` is answered with
//!   `Fault { Estop }` again instead of starting an episode. The controller treats any
//!   `Fault { Estop }` it did not ask for as a press and ends its run; a press it missed
//!   (made before it opened the port) reaches it as the answer to its first `Reset`.
//! - The command watchdog (`command_timeout_ms` in the robot file): with no valid
//!   command for that long, the firmware holds on its own and sends `Fault { Watchdog }`
//!   once. The next valid command within `max_delta_per_tick` of the hold action ends
//!   the hold; one further from it is ignored and answered with `Fault { Watchdog }`
//!   again. A firmware that stalled can find commands sent before its watchdog tripped
//!   still queued: they continue the motion the hold stopped, and taking them would
//!   restart it with a jump. The controller's safe stop ramps to the hold, so its
//!   commands come within reach of it.
//! - The slew limit: a firmware changes the action it applies by at most
//!   `max_delta_per_tick` per control step (hold steps excepted: the hold is the stop),
//!   applying a command further away clamped and reaching it over the next steps. The
//!   controller limits each command against the previous one it sent; commands lost
//!   on the way (a damaged frame, dropped by the decoder) or late can leave the next
//!   one several deltas from what the robot applies, which only the firmware sees (and
//!   says in each step's `Reward`).
//!
//! # Reboots
//!
//! A firmware that restarts (a reset, a brown-out) sends `Hello` again before any other
//! frame, with its sequence numbers and clock starting over: that `Hello` is numbered
//! 0. The controller restarts its sequence tracking on it; without it, the restarted
//! numbers would read as stale copies of frames already seen. Outside a handshake, the
//! controller takes only a `Hello` numbered 0 for a reboot: others are late answers to
//! its own resent `Hello`s. A copy of that `Hello` (same number and timestamp) within
//! the next 256 frames is taken for a duplicate on the link while the torque is on, and
//! for a second reboot once the controller's `Estop` has gone out since (a rebooted
//! firmware holds with its torque on again), or when frames numbered from 1 follow it.
//! A rebooted
//! firmware (as the simulated one) waits for a new handshake and sends nothing else
//! (but the answer to an `Estop`), so a reboot whose `Hello` is lost on the line leaves
//! a silent firmware: the controller's stale-sensor check stops the episode, and when
//! its next `Reset` goes unanswered it sends a `Hello` before resending it (tested with
//! the fault injector's `reboot_silent_at`). A `Hello` ends any running episode (the
//! firmware holds, shaken hands). A restarted numbering that does come (other frames)
//! and jumps back from the last number by at most half the 16-bit space reads as
//! stale until three numbers in a row count on from each other
//! ([`SeqTracker::RESYNC_AFTER`]); then it is the numbering again. One that jumps back
//! further reads as a forward gap, and its frames are taken at once (the link's
//! `seq_lost` count then grows by the numbers skipped, up to 32,766).

use heapless::Vec;

/// Version of this protocol; both sides must speak the same one.
///
/// History: 1, the first; 2 added the robot id to `Hello`; 3 the settings hash; 4 the
/// applied action in `Reward`.
pub const PROTOCOL_VERSION: u8 = 4;
/// Most observation values one [`Message::Sensor`] carries.
pub const MAX_OBS: usize = 32;
/// Most action values one [`Message::Command`] carries.
pub const MAX_ACT: usize = 16;
/// Header bytes: version, type, seq, timestamp, length.
pub const HEADER_LEN: usize = 10;
/// Trailer bytes: CRC-32.
pub const CRC_LEN: usize = 4;
/// Fixed part of a sensor payload: episode u32, step u32, count u8.
const SENSOR_FIXED: usize = 4 + 4 + 1;
/// Fixed part of a reward payload: episode u32, step u32, reward f32, flags u8, count u8
/// (the applied action's values follow).
const REWARD_FIXED: usize = 4 + 4 + 4 + 1 + 1;
/// Largest payload (a full sensor frame): 9 + 4 × 32 = 137 bytes.
pub const MAX_PAYLOAD: usize = SENSOR_FIXED + 4 * MAX_OBS;
/// Largest frame before COBS: 10 + 137 + 4 = 151 bytes.
pub const MAX_RAW_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
/// Largest COBS encoding of the largest raw frame: 152 bytes.
pub const MAX_ENCODED_FRAME: usize = cobs_max_len(MAX_RAW_FRAME);
/// Largest frame on the wire, delimiter included: 153 bytes.
pub const MAX_FRAME: usize = MAX_ENCODED_FRAME + 1;

/// The most bytes the firmware sends in every control step of a robot with `obs_dim`
/// observation and `act_dim` action values: a `Sensor` frame and a `Reward` frame, each
/// at its largest COBS encoding plus the delimiter (65 + 46 = 111 bytes for 10 and 4
/// values). The line must carry
/// this every control period (`config::RobotConfig` checks the baud rate against it, at
/// half the period). The frames of rarer steps come on top, in the half left over: an
/// `EpisodeEnd` on an episode's last step (25 bytes), a `Fault` (18), the `EpisodeStart`
/// after a `Reset` (28).
pub const fn step_wire_bytes(obs_dim: usize, act_dim: usize) -> usize {
    wire_frame_bytes(SENSOR_FIXED + 4 * obs_dim) + wire_frame_bytes(REWARD_FIXED + 4 * act_dim)
}

/// The most bytes a frame of `payload` payload bytes takes on the wire, delimiter
/// included.
const fn wire_frame_bytes(payload: usize) -> usize {
    cobs_max_len(HEADER_LEN + payload + CRC_LEN) + 1
}

// Every other payload fits in MAX_PAYLOAD (Command: 1 + 4 × 16 = 65; Reward 14 + 4 × 16
// = 78; EpisodeStart 12); the wire length field is a u16.
const MAX_COMMAND_PAYLOAD: usize = 1 + 4 * MAX_ACT;
const _: () = assert!(MAX_COMMAND_PAYLOAD <= MAX_PAYLOAD);
const _: () = assert!(REWARD_FIXED + 4 * MAX_ACT <= MAX_PAYLOAD);
const _: () = assert!(MAX_PAYLOAD <= u16::MAX as usize);
// The value counts travel as u8.
const _: () = assert!(MAX_OBS <= u8::MAX as usize);
const _: () = assert!(MAX_ACT <= u8::MAX as usize);

/// The canonical description of every layout in this module; [`SCHEMA_HASH`] is its
/// CRC-32. Edit it whenever a layout changes (and bump [`PROTOCOL_VERSION`] if old and
/// new peers could otherwise meet); `tests::golden_bytes` fails until you do.
pub const SCHEMA: &str = "\
frame: cobs(header payload crc32) 0x00; crc32 ieee reflected 0xedb88320 over header and payload; little endian; f32 ieee754
header: version u8, type u8, seq u16, timestamp_us u32, payload_len u16
0x01 hello: protocol_version u8, schema_hash u32, robot_id u32, settings_hash u32, obs_dim u8, act_dim u8, control_hz u16
0x02 sensor: episode u32, step u32, n u8, obs f32[n], n <= 32
0x03 command: n u8, action f32[n], n <= 16
0x04 heartbeat: empty
0x05 fault: code u8 (1 estop, 2 watchdog, 3 overcurrent, 4 invalid_command, 255 other), detail u8 (0 unless other)
0x06 estop: empty
0x07 episode_start: episode u32, seed u64
0x08 episode_end: episode u32, success u8 (0 or 1), steps u32
0x09 reset: seed u64
0x0a reward: episode u32, step u32, reward f32, flags u8 (1 done, 2 truncated, 4 success), truncated only with done, n u8, applied f32[n], n <= 16
";

/// CRC-32 of [`SCHEMA`], exchanged in the [`Hello`] handshake.
pub const SCHEMA_HASH: u32 = crc32(SCHEMA.as_bytes());

/// [`SCHEMA_HASH`] as a function, for symmetry with peers that compute it at run time.
pub const fn schema_hash() -> u32 {
    SCHEMA_HASH
}

// ---------------------------------------------------------------------------------------
// CRC-32

/// The end-of-step flags byte of `Reward` frames (the controller's log stores the same
/// byte): bit 0 done (the episode ended, terminated or truncated), bit 1 truncated (by
/// the horizon: set only with done, which `Reward` decoding checks), bit 2 success; the
/// other bits must be zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepFlags {
    pub done: bool,
    pub truncated: bool,
    pub success: bool,
}

impl StepFlags {
    pub fn to_byte(self) -> u8 {
        self.done as u8 | (self.truncated as u8) << 1 | (self.success as u8) << 2
    }

    /// `None` when an unknown bit is set.
    pub fn from_byte(b: u8) -> Option<StepFlags> {
        (b & !0b111 == 0).then_some(StepFlags {
            done: b & 1 != 0,
            truncated: b & 2 != 0,
            success: b & 4 != 0,
        })
    }
}

/// CRC-32/IEEE (reflected polynomial 0xEDB88320, init and final XOR 0xFFFFFFFF): the
/// Ethernet/zlib CRC, so any tool can check a captured frame.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32/IEEE of `data` (`crc32(b"123456789") == 0xCBF43926`).
pub const fn crc32(data: &[u8]) -> u32 {
    crc32_update(0xFFFF_FFFF, data) ^ 0xFFFF_FFFF
}

const fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    let mut i = 0;
    while i < data.len() {
        crc = CRC_TABLE[((crc ^ data[i] as u32) & 0xFF) as usize] ^ (crc >> 8);
        i += 1;
    }
    crc
}

// ---------------------------------------------------------------------------------------
// COBS

/// Upper bound on the COBS encoding of `n` bytes (without the delimiter).
///
/// One code byte starts the encoding and one more starts each further block; a block
/// ends at a zero (which the code byte replaces) or after 254 non-zero bytes. So the
/// output is at most the input plus one byte per 254 plus one.
pub const fn cobs_max_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// Why a COBS block did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CobsError {
    #[error("empty COBS block")]
    Empty,
    #[error("a COBS code runs past the end of the block")]
    Truncated,
    #[error("zero byte inside a COBS block")]
    ZeroByte,
    #[error("decoded frame does not fit the buffer")]
    Overflow,
}

/// Encoding did not fit the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("output buffer of {len} bytes is too small ({needed} needed)")]
pub struct EncodeError {
    pub len: usize,
    pub needed: usize,
}

/// COBS-encodes `input` into `out` (no delimiter), returning the encoded length.
///
/// Consistent Overhead Byte Stuffing replaces every zero byte by a code byte that says
/// how far away the next zero is: the output is a sequence of blocks, each a code byte
/// `c` followed by `c - 1` non-zero data bytes; the decoder emits the data bytes and
/// then a zero, except after a full block (`c = 0xFF`, 254 data bytes, no zero
/// follows) and after the last block.
pub fn cobs_encode(input: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let too_small = EncodeError {
        len: out.len(),
        needed: cobs_max_len(input.len()),
    };
    // Position of the pending block's code byte, next write position, and the code
    // (1 + data bytes in the block so far).
    let mut code_at = 0;
    let mut w = 1;
    let mut code: u8 = 1;
    if out.is_empty() {
        return Err(too_small);
    }
    for (i, &b) in input.iter().enumerate() {
        if b != 0 {
            *out.get_mut(w).ok_or(too_small)? = b;
            w += 1;
            code += 1;
        }
        // A full block (254 data bytes) closes without a zero; at the very end of the
        // input no new block follows it (as in the reference encoder).
        if b == 0 || (code == 0xFF && i + 1 < input.len()) {
            out[code_at] = code;
            code_at = w;
            if code_at >= out.len() {
                return Err(too_small);
            }
            w += 1;
            code = 1;
        }
    }
    out[code_at] = code;
    Ok(w)
}

/// Decodes one COBS block (without its delimiter) into `out`, returning the length.
pub fn cobs_decode(input: &[u8], out: &mut [u8]) -> Result<usize, CobsError> {
    if input.is_empty() {
        return Err(CobsError::Empty);
    }
    let mut r = 0;
    let mut w = 0;
    while r < input.len() {
        let code = input[r];
        if code == 0 {
            return Err(CobsError::ZeroByte);
        }
        r += 1;
        let n = code as usize - 1;
        let block = input.get(r..r + n).ok_or(CobsError::Truncated)?;
        let dst = out.get_mut(w..w + n).ok_or(CobsError::Overflow)?;
        for (d, &s) in dst.iter_mut().zip(block) {
            if s == 0 {
                return Err(CobsError::ZeroByte);
            }
            *d = s;
        }
        r += n;
        w += n;
        if code != 0xFF && r < input.len() {
            *out.get_mut(w).ok_or(CobsError::Overflow)? = 0;
            w += 1;
        }
    }
    Ok(w)
}

// ---------------------------------------------------------------------------------------
// Messages

/// The message type byte of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Hello = 0x01,
    Sensor = 0x02,
    Command = 0x03,
    Heartbeat = 0x04,
    Fault = 0x05,
    Estop = 0x06,
    EpisodeStart = 0x07,
    EpisodeEnd = 0x08,
    Reset = 0x09,
    Reward = 0x0a,
}

impl MessageType {
    pub const ALL: [MessageType; 10] = [
        MessageType::Hello,
        MessageType::Sensor,
        MessageType::Command,
        MessageType::Heartbeat,
        MessageType::Fault,
        MessageType::Estop,
        MessageType::EpisodeStart,
        MessageType::EpisodeEnd,
        MessageType::Reset,
        MessageType::Reward,
    ];

    pub fn from_u8(b: u8) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| *t as u8 == b)
    }

    /// The name [`SCHEMA`] uses.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Hello => "hello",
            MessageType::Sensor => "sensor",
            MessageType::Command => "command",
            MessageType::Heartbeat => "heartbeat",
            MessageType::Fault => "fault",
            MessageType::Estop => "estop",
            MessageType::EpisodeStart => "episode_start",
            MessageType::EpisodeEnd => "episode_end",
            MessageType::Reset => "reset",
            MessageType::Reward => "reward",
        }
    }
}

/// Why the firmware faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultCode {
    /// An [`Message::Estop`] was received (the firmware stops stepping until the next
    /// [`Message::Reset`] or a matching [`Message::Hello`]), or a hardware stop was
    /// pressed (latched: until it is released, a `Reset` is answered with this fault
    /// again; see the module's "Stops").
    Estop,
    /// No valid command for longer than the configured command timeout; the firmware
    /// holds until a valid command within `max_delta_per_tick` of the hold action
    /// arrives (a farther one, e.g. a stale queued command, gets this fault again; see
    /// the module's "Stops").
    Watchdog,
    /// A motor drew too much current (the firmware's own protection acted). The
    /// controller takes it for a fault between episodes too (README, "Running the
    /// controller against the simulated robot").
    Overcurrent,
    /// A command with the wrong number of values or a non-finite value; the firmware
    /// holds instead of applying it.
    InvalidCommand,
    /// A robot-specific fault code (the controller takes it as it takes an
    /// overcurrent).
    Other(u8),
}

impl FaultCode {
    fn to_bytes(self) -> [u8; 2] {
        match self {
            FaultCode::Estop => [1, 0],
            FaultCode::Watchdog => [2, 0],
            FaultCode::Overcurrent => [3, 0],
            FaultCode::InvalidCommand => [4, 0],
            FaultCode::Other(d) => [0xFF, d],
        }
    }

    fn from_bytes(code: u8, detail: u8) -> Option<FaultCode> {
        match (code, detail) {
            (1, 0) => Some(FaultCode::Estop),
            (2, 0) => Some(FaultCode::Watchdog),
            (3, 0) => Some(FaultCode::Overcurrent),
            (4, 0) => Some(FaultCode::InvalidCommand),
            (0xFF, d) => Some(FaultCode::Other(d)),
            _ => None,
        }
    }
}

/// The handshake message, sent by both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    pub protocol_version: u8,
    pub schema_hash: u32,
    /// The robot's identity (`config::RobotConfig::identity`): CRC-32 of its name and
    /// its observation and joint names, in order.
    pub robot_id: u32,
    /// The robot file's settings both sides act on
    /// (`config::RobotConfig::settings_hash`): CRC-32 of its action mapping, safety
    /// envelope, slew limit, torque-off permission and joint limits.
    pub settings_hash: u32,
    pub obs_dim: u8,
    pub act_dim: u8,
    pub control_hz: u16,
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    Version { ours: u8, theirs: u8 },
    #[error(
        "schema hash mismatch: ours {ours:#010x}, the peer's {theirs:#010x} (message layouts differ)"
    )]
    SchemaHash { ours: u32, theirs: u32 },
    #[error(
        "robot mismatch: our robot id {ours:#010x}, the peer's {theirs:#010x} (the two sides \
         were configured from different robot files: the robot name or the observation or \
         joint names differ)"
    )]
    Robot { ours: u32, theirs: u32 },
    #[error(
        "robot settings mismatch: our settings hash {ours:#010x}, the peer's {theirs:#010x} \
         (the two sides were configured from different versions of the robot file: an \
         action scale or offset, the safety envelope, max_delta_per_tick, \
         gravity_safe_torque_off or a joint limit differs)"
    )]
    Settings { ours: u32, theirs: u32 },
    #[error("observation dimension mismatch: ours {ours}, the peer's {theirs}")]
    ObsDim { ours: u8, theirs: u8 },
    #[error("action dimension mismatch: ours {ours}, the peer's {theirs}")]
    ActDim { ours: u8, theirs: u8 },
    #[error("control rate mismatch: ours {ours} Hz, the peer's {theirs} Hz")]
    ControlHz { ours: u16, theirs: u16 },
}

impl Hello {
    /// Our `Hello` for a robot with this identity, settings, dimensions and rate.
    pub const fn new(
        robot_id: u32,
        settings_hash: u32,
        obs_dim: u8,
        act_dim: u8,
        control_hz: u16,
    ) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            schema_hash: SCHEMA_HASH,
            robot_id,
            settings_hash,
            obs_dim,
            act_dim,
            control_hz,
        }
    }

    /// Checks the peer's `Hello` against ours: every field must agree. Version and
    /// schema are checked first because a peer that disagrees on them may also have
    /// meant something else by the other fields; the robot id and then the settings
    /// last, because a difference in sizes or rate says more than a differing hash, and
    /// another robot more than another version of the same robot's file.
    pub fn check_peer(&self, peer: &Hello) -> Result<(), HandshakeError> {
        if peer.protocol_version != self.protocol_version {
            return Err(HandshakeError::Version {
                ours: self.protocol_version,
                theirs: peer.protocol_version,
            });
        }
        if peer.schema_hash != self.schema_hash {
            return Err(HandshakeError::SchemaHash {
                ours: self.schema_hash,
                theirs: peer.schema_hash,
            });
        }
        if peer.obs_dim != self.obs_dim {
            return Err(HandshakeError::ObsDim {
                ours: self.obs_dim,
                theirs: peer.obs_dim,
            });
        }
        if peer.act_dim != self.act_dim {
            return Err(HandshakeError::ActDim {
                ours: self.act_dim,
                theirs: peer.act_dim,
            });
        }
        if peer.control_hz != self.control_hz {
            return Err(HandshakeError::ControlHz {
                ours: self.control_hz,
                theirs: peer.control_hz,
            });
        }
        if peer.robot_id != self.robot_id {
            return Err(HandshakeError::Robot {
                ours: self.robot_id,
                theirs: peer.robot_id,
            });
        }
        if peer.settings_hash != self.settings_hash {
            return Err(HandshakeError::Settings {
                ours: self.settings_hash,
                theirs: peer.settings_hash,
            });
        }
        Ok(())
    }
}

/// One protocol message. See the module docs for directions and layouts.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Hello(Hello),
    /// The observation after `step` control steps of `episode` (step 0 right after the
    /// reset).
    Sensor {
        episode: u32,
        step: u32,
        obs: Vec<f32, MAX_OBS>,
    },
    /// The action to apply from now on, in robot units.
    Command {
        action: Vec<f32, MAX_ACT>,
    },
    /// Link keep-alive. Once shaken hands, the firmware answers each one with its own
    /// and sends one periodically while no episode runs (before a handshake it answers
    /// only `Hello` and `Estop`; see "Reboots" above).
    Heartbeat,
    Fault {
        code: FaultCode,
    },
    /// Emergency stop: the firmware stops stepping and answers `Fault { Estop }`.
    Estop,
    /// A new episode began (after a `Reset`).
    EpisodeStart {
        episode: u32,
        seed: u64,
    },
    /// The episode ended (terminated or truncated) after `steps` control steps.
    EpisodeEnd {
        episode: u32,
        success: bool,
        steps: u32,
    },
    /// Start a new episode from `seed`.
    Reset {
        seed: u64,
    },
    /// The outcome of the control step that produced the `Sensor` frame with the same
    /// `episode` and `step`. `truncated` (the horizon ended it) comes with `done`; a frame
    /// with `truncated` alone is refused.
    Reward {
        episode: u32,
        step: u32,
        reward: f32,
        done: bool,
        truncated: bool,
        success: bool,
        /// The action the step applied, in robot units: the command after the
        /// firmware's envelope and slew limit, or its hold action.
        applied: Vec<f32, MAX_ACT>,
    },
}

impl Message {
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Sensor { .. } => MessageType::Sensor,
            Message::Command { .. } => MessageType::Command,
            Message::Heartbeat => MessageType::Heartbeat,
            Message::Fault { .. } => MessageType::Fault,
            Message::Estop => MessageType::Estop,
            Message::EpisodeStart { .. } => MessageType::EpisodeStart,
            Message::EpisodeEnd { .. } => MessageType::EpisodeEnd,
            Message::Reset { .. } => MessageType::Reset,
            Message::Reward { .. } => MessageType::Reward,
        }
    }

    /// A `Command` with these values, or `None` if there are more than [`MAX_ACT`].
    pub fn command(action: &[f32]) -> Option<Message> {
        Some(Message::Command {
            action: Vec::from_slice(action).ok()?,
        })
    }

    /// A `Sensor` frame with these values, or `None` if there are more than [`MAX_OBS`].
    pub fn sensor(episode: u32, step: u32, obs: &[f32]) -> Option<Message> {
        Some(Message::Sensor {
            episode,
            step,
            obs: Vec::from_slice(obs).ok()?,
        })
    }

    /// Writes the payload into `out`, returning its length (at most [`MAX_PAYLOAD`]).
    pub fn encode_payload(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let len = out.len();
        self.write_payload(out).map_err(|_| {
            // Name the length this message needs: encode it again where it fits.
            let mut scratch = [0u8; MAX_PAYLOAD];
            let needed = self.write_payload(&mut scratch).unwrap_or(MAX_PAYLOAD);
            EncodeError { len, needed }
        })
    }

    fn write_payload(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer { out, pos: 0 };
        match self {
            Message::Hello(h) => {
                w.u8(h.protocol_version)?;
                w.u32(h.schema_hash)?;
                w.u32(h.robot_id)?;
                w.u32(h.settings_hash)?;
                w.u8(h.obs_dim)?;
                w.u8(h.act_dim)?;
                w.u16(h.control_hz)?;
            }
            Message::Sensor { episode, step, obs } => {
                w.u32(*episode)?;
                w.u32(*step)?;
                w.u8(obs.len() as u8)?;
                for &x in obs {
                    w.f32(x)?;
                }
            }
            Message::Command { action } => {
                w.u8(action.len() as u8)?;
                for &x in action {
                    w.f32(x)?;
                }
            }
            Message::Heartbeat | Message::Estop => {}
            Message::Fault { code } => {
                let [c, d] = code.to_bytes();
                w.u8(c)?;
                w.u8(d)?;
            }
            Message::EpisodeStart { episode, seed } => {
                w.u32(*episode)?;
                w.u64(*seed)?;
            }
            Message::EpisodeEnd {
                episode,
                success,
                steps,
            } => {
                w.u32(*episode)?;
                w.u8(*success as u8)?;
                w.u32(*steps)?;
            }
            Message::Reset { seed } => w.u64(*seed)?,
            Message::Reward {
                episode,
                step,
                reward,
                done,
                truncated,
                success,
                applied,
            } => {
                w.u32(*episode)?;
                w.u32(*step)?;
                w.f32(*reward)?;
                w.u8(StepFlags {
                    done: *done,
                    truncated: *truncated,
                    success: *success,
                }
                .to_byte())?;
                w.u8(applied.len() as u8)?;
                for &x in applied {
                    w.f32(x)?;
                }
            }
        }
        Ok(w.pos)
    }

    /// Parses a payload of type `ty`. Strict: see the module docs.
    pub fn decode_payload(ty: MessageType, payload: &[u8]) -> Result<Message, FrameError> {
        let bad = |reason, found| FrameError::Payload {
            msg_type: ty,
            reason,
            found,
        };
        let mut r = Reader {
            data: payload,
            short: false,
        };
        let msg = match ty {
            MessageType::Hello => Message::Hello(Hello {
                protocol_version: r.u8(),
                schema_hash: r.u32(),
                robot_id: r.u32(),
                settings_hash: r.u32(),
                obs_dim: r.u8(),
                act_dim: r.u8(),
                control_hz: r.u16(),
            }),
            MessageType::Sensor => {
                let episode = r.u32();
                let step = r.u32();
                let n = r.u8() as usize;
                let obs = r.values(n).map_err(|(reason, found)| bad(reason, found))?;
                Message::Sensor { episode, step, obs }
            }
            MessageType::Command => {
                let n = r.u8() as usize;
                let action = r.values(n).map_err(|(reason, found)| bad(reason, found))?;
                Message::Command { action }
            }
            MessageType::Heartbeat => Message::Heartbeat,
            MessageType::Estop => Message::Estop,
            MessageType::Fault => {
                let (c, d) = (r.u8(), r.u8());
                // Short before its values are judged: a short read gives zeros.
                if r.short {
                    return Err(bad("payload too short", Found::Bytes(payload.len())));
                }
                let code = FaultCode::from_bytes(c, d)
                    .ok_or(bad("unknown fault code", Found::CodeDetail(c, d)))?;
                Message::Fault { code }
            }
            MessageType::EpisodeStart => Message::EpisodeStart {
                episode: r.u32(),
                seed: r.u64(),
            },
            MessageType::EpisodeEnd => {
                let episode = r.u32();
                let success = r.u8();
                let steps = r.u32();
                if r.short {
                    return Err(bad("payload too short", Found::Bytes(payload.len())));
                }
                if success > 1 {
                    return Err(bad("success is neither 0 nor 1", Found::Byte(success)));
                }
                Message::EpisodeEnd {
                    episode,
                    success: success == 1,
                    steps,
                }
            }
            MessageType::Reset => Message::Reset { seed: r.u64() },
            MessageType::Reward => {
                let episode = r.u32();
                let step = r.u32();
                let reward = r.f32();
                let flags = r.u8();
                let n = r.u8() as usize;
                if r.short {
                    return Err(bad("payload too short", Found::Bytes(payload.len())));
                }
                let Some(flags) = StepFlags::from_byte(flags) else {
                    return Err(bad("unknown flag bits", Found::Byte(flags)));
                };
                // A truncation ends the episode (`done`): a frame that says one without
                // the other is damage the CRC missed, not a step of another kind.
                if flags.truncated && !flags.done {
                    return Err(bad("truncated without done", Found::Byte(flags.to_byte())));
                }
                let applied = r.values(n).map_err(|(reason, found)| bad(reason, found))?;
                Message::Reward {
                    episode,
                    step,
                    reward,
                    done: flags.done,
                    truncated: flags.truncated,
                    success: flags.success,
                    applied,
                }
            }
        };
        if r.short {
            return Err(bad("payload too short", Found::Bytes(payload.len())));
        }
        if !r.data.is_empty() {
            return Err(bad("payload too long", Found::Bytes(payload.len())));
        }
        Ok(msg)
    }
}

/// Bounds-checked little-endian writer.
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let len = self.out.len();
        // `needed` is filled in by `encode_payload`.
        let dst = self
            .out
            .get_mut(self.pos..self.pos + b.len())
            .ok_or(EncodeError { len, needed: 0 })?;
        dst.copy_from_slice(b);
        self.pos += b.len();
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }
    fn f32(&mut self, v: f32) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }
}

/// Little-endian reader that never fails mid-parse: reading past the end yields zeros
/// and sets `short`, which the caller checks once at the end (keeps the per-message
/// parsers linear).
struct Reader<'a> {
    data: &'a [u8],
    short: bool,
}

impl Reader<'_> {
    /// The `n` f32 values a count announced, which must be all the payload has left:
    /// at most `N` of them (a frame's maximum), each sent.
    fn values<const N: usize>(&mut self, n: usize) -> Result<Vec<f32, N>, (&'static str, Found)> {
        if n > N {
            return Err(("too many values", Found::Count { count: n, max: N }));
        }
        let bytes = self.data.len();
        if bytes != 4 * n {
            let found = Found::ValueBytes { count: n, bytes };
            return Err(("length disagrees with the value count", found));
        }
        let mut values = Vec::new();
        for _ in 0..n {
            // Cannot fail: n <= N.
            let _ = values.push(self.f32());
        }
        Ok(values)
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        match self.data.split_first_chunk::<N>() {
            Some((head, rest)) => {
                b = *head;
                self.data = rest;
            }
            None => {
                self.data = &[];
                self.short = true;
            }
        }
        b
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take())
    }
}

// ---------------------------------------------------------------------------------------
// Frames

/// Why a frame was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("more than {MAX_ENCODED_FRAME} bytes without a frame delimiter")]
    Oversize,
    #[error("invalid COBS encoding: {0}")]
    Cobs(CobsError),
    #[error("frame of {len} bytes is shorter than header and CRC")]
    TooShort { len: usize },
    #[error("CRC mismatch: the frame carries {received:#010x}, computed {computed:#010x}")]
    Crc { received: u32, computed: u32 },
    #[error("protocol version {received}, but this side speaks {PROTOCOL_VERSION}")]
    Version { received: u8 },
    #[error("header says {declared} payload bytes, the frame has {actual}")]
    Length { declared: u16, actual: usize },
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("malformed {msg_type:?} payload: {reason}{found}")]
    Payload {
        msg_type: MessageType,
        reason: &'static str,
        /// What the payload held, for the message.
        found: Found,
    },
}

/// What a malformed payload held ([`FrameError::Payload`]): the numbers that say what
/// the sender got wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The payload's length in bytes.
    Bytes(usize),
    /// The value count it announced, above the most a message holds.
    Count { count: usize, max: usize },
    /// The bytes of values after a count of `count` (4 each).
    ValueBytes { count: usize, bytes: usize },
    /// The fault code and detail bytes.
    CodeDetail(u8, u8),
    /// The byte at fault.
    Byte(u8),
}

impl core::fmt::Display for Found {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Found::Bytes(n) => write!(f, " ({n} bytes)"),
            Found::Count { count, max } => write!(f, " ({count}, at most {max})"),
            Found::ValueBytes { count, bytes } => {
                write!(
                    f,
                    " ({count} values need {} bytes, found {bytes})",
                    4 * count
                )
            }
            Found::CodeDetail(c, d) => write!(f, " (code {c}, detail {d})"),
            Found::Byte(b) => write!(f, " (found {b:#04x})"),
        }
    }
}

/// A decoded frame: the message and its header fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub seq: u16,
    /// Sender's clock in µs (wrapping); see the module docs.
    pub timestamp_us: u32,
    pub message: Message,
}

/// A frame as it goes on the wire, delimiter included.
pub type WireFrame = Vec<u8, MAX_FRAME>;

impl Frame {
    /// Encodes the frame for the wire (COBS + trailing `0x00`) into `out`, returning
    /// the number of bytes written (at most [`MAX_FRAME`]).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_with_version(PROTOCOL_VERSION, out)
    }

    /// As [`Frame::encode`] with another protocol version in the header: for tests and
    /// fault injection only.
    pub fn encode_with_version(&self, version: u8, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut raw = [0u8; MAX_RAW_FRAME];
        let plen = self
            .message
            .encode_payload(&mut raw[HEADER_LEN..HEADER_LEN + MAX_PAYLOAD])?;
        raw[0] = version;
        raw[1] = self.message.msg_type() as u8;
        raw[2..4].copy_from_slice(&self.seq.to_le_bytes());
        raw[4..8].copy_from_slice(&self.timestamp_us.to_le_bytes());
        raw[8..10].copy_from_slice(&(plen as u16).to_le_bytes());
        let body = HEADER_LEN + plen;
        let crc = crc32(&raw[..body]);
        raw[body..body + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        let raw = &raw[..body + CRC_LEN];
        // The delimiter needs a byte after the encoded block, in either error.
        let n = cobs_encode(raw, out).map_err(|e| EncodeError {
            needed: e.needed + 1,
            ..e
        })?;
        let len = out.len();
        *out.get_mut(n).ok_or(EncodeError { len, needed: n + 1 })? = 0;
        Ok(n + 1)
    }

    /// Encodes into a fixed-capacity vector (cannot fail: every message fits).
    pub fn to_wire(&self) -> WireFrame {
        let mut buf = [0u8; MAX_FRAME];
        // Every message fits MAX_FRAME by construction (see the const asserts), so the
        // error branch is unreachable; it yields an empty frame rather than a panic.
        let n = self.encode(&mut buf).unwrap_or(0);
        Vec::from_slice(&buf[..n]).unwrap_or_default()
    }

    /// Decodes one COBS block (the bytes between two delimiters, delimiters excluded).
    ///
    /// Checks, in order: COBS structure, minimum length, CRC, version, length field,
    /// type, payload. The CRC comes before the version so that a corrupted version byte
    /// reads as corruption, not as a peer speaking another version.
    pub fn decode(block: &[u8]) -> Result<Frame, FrameError> {
        if block.len() > MAX_ENCODED_FRAME {
            return Err(FrameError::Oversize);
        }
        let mut raw = [0u8; MAX_RAW_FRAME];
        let n = cobs_decode(block, &mut raw).map_err(FrameError::Cobs)?;
        Self::decode_raw(&raw[..n])
    }

    /// Decodes an un-COBSed frame (header, payload, CRC).
    pub fn decode_raw(raw: &[u8]) -> Result<Frame, FrameError> {
        let n = raw.len();
        if n < HEADER_LEN + CRC_LEN {
            return Err(FrameError::TooShort { len: n });
        }
        let (body, crc) = raw.split_at(n - CRC_LEN);
        let received = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32(body);
        if received != computed {
            return Err(FrameError::Crc { received, computed });
        }
        if body[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version { received: body[0] });
        }
        let declared = u16::from_le_bytes([body[8], body[9]]);
        let payload = &body[HEADER_LEN..];
        if declared as usize != payload.len() {
            return Err(FrameError::Length {
                declared,
                actual: payload.len(),
            });
        }
        let ty = MessageType::from_u8(body[1]).ok_or(FrameError::UnknownType(body[1]))?;
        Ok(Frame {
            seq: u16::from_le_bytes([body[2], body[3]]),
            timestamp_us: u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
            message: Message::decode_payload(ty, payload)?,
        })
    }
}

/// `later - earlier` on the wrapping µs clock of the frame header.
pub const fn timestamp_delta_us(later: u32, earlier: u32) -> u32 {
    later.wrapping_sub(earlier)
}

/// Stamps outgoing frames with this side's sequence numbers.
#[derive(Clone, Debug, Default)]
pub struct FrameEncoder {
    next_seq: u16,
}

impl FrameEncoder {
    pub const fn new() -> Self {
        FrameEncoder { next_seq: 0 }
    }

    /// The sequence number the next frame gets.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// Restarts the sequence at 0 (what a rebooted peer does).
    pub fn reset(&mut self) {
        self.next_seq = 0;
    }

    /// Encodes `message` with the next sequence number into `out`.
    pub fn encode(
        &mut self,
        timestamp_us: u32,
        message: Message,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let n = self.frame(timestamp_us, message).encode(out)?;
        Ok(n)
    }

    /// Encodes `message` with the next sequence number into a [`WireFrame`].
    pub fn to_wire(&mut self, timestamp_us: u32, message: Message) -> WireFrame {
        self.frame(timestamp_us, message).to_wire()
    }

    /// Wraps `message` in a frame with the next sequence number.
    pub fn frame(&mut self, timestamp_us: u32, message: Message) -> Frame {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        Frame {
            seq,
            timestamp_us,
            message,
        }
    }
}

/// What the [`FrameDecoder`] has seen: the link-health numbers a controller logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames decoded successfully.
    pub frames: u32,
    /// Frames whose CRC does not match, or too short to carry a header and a CRC (line
    /// noise either way).
    pub crc_errors: u32,
    pub cobs_errors: u32,
    /// Runs longer than [`MAX_ENCODED_FRAME`] without a delimiter.
    pub oversize: u32,
    /// Frames with a valid CRC but another protocol version.
    pub version_mismatches: u32,
    /// Frames with a valid CRC that disagree with their length field, have an unknown
    /// type or a malformed payload (a peer's bug rather than noise).
    pub malformed: u32,
    /// Times the decoder threw away a partial or bad frame and restarted at the next
    /// delimiter (one per error above).
    pub resyncs: u32,
    /// Bytes thrown away by those resyncs, delimiters included.
    pub bytes_discarded: u32,
}

/// Streaming frame decoder with a fixed buffer: feed it bytes as they arrive.
///
/// Bytes accumulate until a `0x00` delimiter, then the block is decoded. A bad block
/// is reported once and dropped, and decoding restarts after the delimiter; a run of
/// more than [`MAX_ENCODED_FRAME`] bytes without a delimiter is reported as
/// [`FrameError::Oversize`] when it overflows, and everything up to the next delimiter
/// is skipped. Empty blocks (consecutive delimiters) are ignored, so a sender may emit
/// extra `0x00`s to flush a receiver that holds a partial frame. No input makes it
/// panic or allocate.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    buf: [u8; MAX_ENCODED_FRAME],
    len: usize,
    /// Skipping bytes after an overflow, until the next delimiter.
    skipping: bool,
    stats: DecoderStats,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; MAX_ENCODED_FRAME],
            len: 0,
            skipping: false,
            stats: DecoderStats {
                frames: 0,
                crc_errors: 0,
                cobs_errors: 0,
                oversize: 0,
                version_mismatches: 0,
                malformed: 0,
                resyncs: 0,
                bytes_discarded: 0,
            },
        }
    }

    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Bytes of a partial frame waiting for their delimiter.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Drops the partial frame and everything up to the next delimiter: use it after
    /// reopening a port, when the stream may resume in the middle of a frame (a frame
    /// that happens to start right at that point is lost too, which is the safe side).
    /// Statistics stay.
    pub fn clear(&mut self) {
        let s = &mut self.stats;
        s.bytes_discarded = s.bytes_discarded.saturating_add(self.len as u32);
        self.len = 0;
        self.skipping = true;
    }

    /// Feeds one byte; returns a frame or an error when `byte` completes a block.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        let s = &mut self.stats;
        if byte != 0 {
            if self.skipping {
                s.bytes_discarded = s.bytes_discarded.saturating_add(1);
                return None;
            }
            if self.len == self.buf.len() {
                s.oversize = s.oversize.saturating_add(1);
                s.resyncs = s.resyncs.saturating_add(1);
                s.bytes_discarded = s.bytes_discarded.saturating_add(self.len as u32 + 1);
                self.len = 0;
                self.skipping = true;
                return Some(Err(FrameError::Oversize));
            }
            self.buf[self.len] = byte;
            self.len += 1;
            return None;
        }
        // Delimiter.
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.skipping) {
            s.bytes_discarded = s.bytes_discarded.saturating_add(1);
            return None;
        }
        if len == 0 {
            return None;
        }
        let result = Frame::decode(&self.buf[..len]);
        match &result {
            Ok(_) => s.frames = s.frames.saturating_add(1),
            Err(e) => {
                let counter = match e {
                    FrameError::Oversize => &mut s.oversize,
                    FrameError::Cobs(_) => &mut s.cobs_errors,
                    FrameError::Crc { .. } | FrameError::TooShort { .. } => &mut s.crc_errors,
                    FrameError::Version { .. } => &mut s.version_mismatches,
                    FrameError::Length { .. }
                    | FrameError::UnknownType(_)
                    | FrameError::Payload { .. } => &mut s.malformed,
                };
                *counter = counter.saturating_add(1);
                s.resyncs = s.resyncs.saturating_add(1);
                s.bytes_discarded = s.bytes_discarded.saturating_add(len as u32 + 1);
            }
        }
        Some(result)
    }

    /// Feeds a slice, calling `on_frame` for every completed block in order.
    pub fn feed(&mut self, data: &[u8], mut on_frame: impl FnMut(Result<Frame, FrameError>)) {
        for &b in data {
            if let Some(r) = self.push(b) {
                on_frame(r);
            }
        }
    }
}

/// What one received sequence number says about the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first frame since the tracker was (re)started.
    First,
    /// Exactly the next number.
    InOrder,
    /// `lost` frames are missing before this one.
    Gap { lost: u16 },
    /// A repeat of, or older than, a frame already seen (duplicate or reordered).
    Stale,
    /// The peer's numbering jumped and this frame is the [`SeqTracker::RESYNC_AFTER`]-th
    /// in a row counting on from the new numbers: taken as current from now on (a
    /// restart whose `Hello` was lost on the line, or a long outage). Not stale.
    Resync,
}

/// Follows the peer's sequence numbers: counts lost, duplicated and reordered frames.
///
/// A jump forward by less than half the sequence space is a gap (frames lost); any
/// other jump (including 0) is a stale frame. Restart it with [`SeqTracker::reset`]
/// when the peer restarts its counter (a new `Hello`). Stale frames that count on from
/// each other are a new numbering, not repeats: the [`Self::RESYNC_AFTER`]-th of them
/// in a row resynchronises ([`SeqEvent::Resync`]). Without that, a restart whose
/// `Hello` was damaged left every later frame stale for up to 32,768 frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    last: Option<u16>,
    /// The newest stale frame's number and how many stale frames in a row led up to it,
    /// each one more than the one before.
    stale_run: Option<(u16, u8)>,
    pub received: u32,
    pub lost: u32,
    pub stale: u32,
    pub resyncs: u32,
}

impl SeqTracker {
    /// Stale frames in a row, numbered one after another, that make a new numbering.
    /// Three: a serial link does not reorder, and a duplicated pair of frames is not
    /// taken for a restart.
    pub const RESYNC_AFTER: u8 = 3;

    pub const fn new() -> Self {
        SeqTracker {
            last: None,
            stale_run: None,
            received: 0,
            lost: 0,
            stale: 0,
            resyncs: 0,
        }
    }

    /// Forgets the last number (counts stay).
    pub fn reset(&mut self) {
        self.last = None;
        self.stale_run = None;
    }

    pub fn observe(&mut self, seq: u16) -> SeqEvent {
        self.received = self.received.saturating_add(1);
        let Some(last) = self.last else {
            self.last = Some(seq);
            return SeqEvent::First;
        };
        let d = seq.wrapping_sub(last);
        if d == 1 {
            self.last = Some(seq);
            self.stale_run = None;
            SeqEvent::InOrder
        } else if d != 0 && d < 0x8000 {
            self.last = Some(seq);
            self.stale_run = None;
            self.lost = self.lost.saturating_add(d as u32 - 1);
            SeqEvent::Gap { lost: d - 1 }
        } else {
            let run = match self.stale_run {
                Some((prev, n)) if seq == prev.wrapping_add(1) => n + 1,
                _ => 1,
            };
            if run >= Self::RESYNC_AFTER {
                self.last = Some(seq);
                self.stale_run = None;
                self.resyncs = self.resyncs.saturating_add(1);
                return SeqEvent::Resync;
            }
            self.stale_run = Some((seq, run));
            self.stale = self.stale.saturating_add(1);
            SeqEvent::Stale
        }
    }
}

#[cfg(test)]
mod tests;
