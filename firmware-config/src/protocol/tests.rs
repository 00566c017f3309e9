// The library is `no_std` without the `std` feature; its tests use std either way.
extern crate std;
use super::*;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec as StdVec;

fn enc(input: &[u8]) -> StdVec<u8> {
    let mut out = vec![0u8; cobs_max_len(input.len())];
    let n = cobs_encode(input, &mut out).unwrap();
    out.truncate(n);
    out
}

fn dec(input: &[u8]) -> Result<StdVec<u8>, CobsError> {
    let mut out = vec![0u8; input.len()];
    let n = cobs_decode(input, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[test]
fn crc32_check_value() {
    // The CRC-32/ISO-HDLC check value from the CRC catalogue.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn cobs_reference_vectors() {
    // The examples of the COBS paper / Wikipedia's table.
    let cases: &[(&[u8], &[u8])] = &[
        (&[0x00], &[0x01, 0x01]),
        (&[0x00, 0x00], &[0x01, 0x01, 0x01]),
        (&[0x00, 0x11, 0x00], &[0x01, 0x02, 0x11, 0x01]),
        (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
        (&[0x11, 0x22, 0x33, 0x44], &[0x05, 0x11, 0x22, 0x33, 0x44]),
        (&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]),
        (&[], &[0x01]),
    ];
    for (raw, coded) in cases {
        assert_eq!(enc(raw), *coded, "encoding {raw:02x?}");
        assert_eq!(dec(coded).unwrap(), *raw, "decoding {coded:02x?}");
    }
    // 254 non-zero bytes: one full block, no trailing code byte.
    let run: StdVec<u8> = (1..=254).collect();
    let mut coded = vec![0xFF];
    coded.extend(&run);
    assert_eq!(enc(&run), coded);
    assert_eq!(dec(&coded).unwrap(), run);
    // 255 non-zero bytes: a full block, then a block of one.
    let run: StdVec<u8> = (1..=255).collect();
    let mut coded = vec![0xFF];
    coded.extend(1..=254);
    coded.extend([0x02, 0xFF]);
    assert_eq!(enc(&run), coded);
    assert_eq!(dec(&coded).unwrap(), run);
    // A zero right after a full block.
    let mut raw: StdVec<u8> = (1..=254).collect();
    raw.push(0);
    let e = enc(&raw);
    assert_eq!(dec(&e).unwrap(), raw);
}

#[test]
fn cobs_rejects_bad_blocks() {
    assert_eq!(dec(&[]), Err(CobsError::Empty));
    assert_eq!(dec(&[0x05, 1, 2]), Err(CobsError::Truncated));
    assert_eq!(dec(&[0x03, 1, 0]), Err(CobsError::ZeroByte));
    assert_eq!(dec(&[0x00]), Err(CobsError::ZeroByte));
    let mut small = [0u8; 2];
    assert_eq!(
        cobs_decode(&[0x04, 1, 2, 3], &mut small),
        Err(CobsError::Overflow)
    );
    assert!(cobs_encode(&[1, 2, 3], &mut small).is_err());
    assert!(cobs_encode(&[], &mut []).is_err());
}

#[test]
fn sizes_are_what_the_docs_say() {
    assert_eq!(MAX_PAYLOAD, 137);
    assert_eq!(MAX_RAW_FRAME, 151);
    assert_eq!(MAX_ENCODED_FRAME, 152);
    assert_eq!(MAX_FRAME, 153);
    let full = Frame {
        seq: u16::MAX,
        timestamp_us: u32::MAX,
        message: Message::sensor(u32::MAX, u32::MAX, &[f32::from_bits(0x0101_0101); MAX_OBS])
            .unwrap(),
    };
    let mut buf = [0u8; MAX_FRAME];
    assert_eq!(full.encode(&mut buf).unwrap(), MAX_FRAME);
    assert!(full.encode(&mut buf[..MAX_FRAME - 1]).is_err());
    assert!(Message::sensor(0, 0, &[0.0; MAX_OBS + 1]).is_none());
    assert!(Message::command(&[0.0; MAX_ACT + 1]).is_none());
}

/// Pins the byte layout and the schema hash. If this fails because you changed a
/// layout, update `SCHEMA` (and `PROTOCOL_VERSION` if old and new peers could meet),
/// then the expected values here. The expected values were computed independently with
/// Python's `zlib.crc32`.
#[test]
fn golden_bytes() {
    assert_eq!(SCHEMA_HASH, 0x0b17_20e0);
    assert_eq!(schema_hash(), SCHEMA_HASH);
    let f = Frame {
        seq: 7,
        timestamp_us: 1000,
        message: Message::command(&[1.0, -0.5]).unwrap(),
    };
    let wire = f.to_wire();
    let expected: StdVec<u8> = [
        0x04, 0x04, 0x03, 0x07, 0x03, 0xe8, 0x03, 0x01, 0x02, 0x09, 0x02, 0x02, 0x01, 0x03, 0x80,
        0x3f, 0x01, 0x01, 0x06, 0xbf, 0x31, 0xba, 0x81, 0x75, 0x00,
    ]
    .to_vec();
    assert_eq!(wire.as_slice(), expected.as_slice());
    // Heartbeat: header only, CRC 0xc042d0aa.
    let hb = Frame {
        seq: 0x0102,
        timestamp_us: 0x0304_0506,
        message: Message::Heartbeat,
    };
    let mut raw = [0u8; 64];
    let n = cobs_decode(&hb.to_wire()[..hb.to_wire().len() - 1], &mut raw).unwrap();
    assert_eq!(
        &raw[..n],
        &[4, 4, 2, 1, 6, 5, 4, 3, 0, 0, 0xaa, 0xd0, 0x42, 0xc0]
    );
    // Hello: version, schema hash, robot id, settings hash, obs dim, act dim, control Hz.
    let hello = Message::Hello(Hello::new(0x0102_0304, 0x0506_0708, 10, 2, 20));
    let mut payload = [0u8; MAX_PAYLOAD];
    let n = hello.encode_payload(&mut payload).unwrap();
    assert_eq!(
        &payload[..n],
        &[
            4, 0xe0, 0x20, 0x17, 0x0b, 4, 3, 2, 1, 8, 7, 6, 5, 10, 2, 20, 0
        ]
    );
    // Every other payload (computed with Python's `struct.pack`, little endian): a
    // layout changed in both the encoder and the decoder passes every round trip, and
    // only these say that `SCHEMA` must change with it.
    let payloads: [(Message, &[u8]); 8] = [
        (
            Message::sensor(0x0102_0304, 5, &[1.0, -2.0]).unwrap(),
            &[
                0x04, 0x03, 0x02, 0x01, 0x05, 0, 0, 0, 0x02, 0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0,
            ],
        ),
        (
            Message::Fault {
                code: FaultCode::Watchdog,
            },
            &[2, 0],
        ),
        (
            Message::Fault {
                code: FaultCode::Other(7),
            },
            &[255, 7],
        ),
        (Message::Estop, &[]),
        (
            Message::EpisodeStart {
                episode: 3,
                seed: 0x0102_0304_0506_0708,
            },
            &[3, 0, 0, 0, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01],
        ),
        (
            Message::EpisodeEnd {
                episode: 3,
                success: true,
                steps: 200,
            },
            &[3, 0, 0, 0, 1, 0xc8, 0, 0, 0],
        ),
        (
            Message::Reset {
                seed: 0x0a0b_0c0d_0e0f_1011,
            },
            &[0x11, 0x10, 0x0f, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a],
        ),
        (
            Message::Reward {
                episode: 3,
                step: 4,
                reward: 0.5,
                done: true,
                truncated: false,
                success: true,
                applied: Vec::from_slice(&[0.25, -1.0]).unwrap(),
            },
            &[
                3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0x3f, 0x05, 0x02, 0, 0, 0x80, 0x3e, 0, 0, 0x80,
                0xbf,
            ],
        ),
    ];
    for (message, expected) in payloads {
        let n = message.encode_payload(&mut payload).unwrap();
        assert_eq!(&payload[..n], expected, "{message:?}");
    }
}

#[test]
fn schema_describes_every_message() {
    for t in MessageType::ALL {
        let line = std::format!("{:#04x} {}:", t as u8, t.name());
        assert!(SCHEMA.contains(&line), "SCHEMA lacks `{line}`");
    }
    assert!(SCHEMA.contains(&std::format!("n <= {MAX_OBS}")));
    assert!(SCHEMA.contains(&std::format!("n <= {MAX_ACT}")));
}

#[test]
fn handshake_checks_every_field() {
    let ours = Hello::new(0xabcd_0123, 0x1234_5678, 10, 2, 20);
    assert_eq!(ours.check_peer(&ours), Ok(()));
    let mut p = ours;
    p.protocol_version = 2;
    assert!(matches!(
        ours.check_peer(&p),
        Err(HandshakeError::Version { ours: 4, theirs: 2 })
    ));
    let mut p = ours;
    p.schema_hash ^= 1;
    assert!(matches!(
        ours.check_peer(&p),
        Err(HandshakeError::SchemaHash { .. })
    ));
    let mut p = ours;
    p.obs_dim = 6;
    assert!(matches!(
        ours.check_peer(&p),
        Err(HandshakeError::ObsDim { .. })
    ));
    let mut p = ours;
    p.act_dim = 3;
    assert!(matches!(
        ours.check_peer(&p),
        Err(HandshakeError::ActDim { .. })
    ));
    let mut p = ours;
    p.control_hz = 10;
    assert!(matches!(
        ours.check_peer(&p),
        Err(HandshakeError::ControlHz { .. })
    ));
    let mut p = ours;
    p.robot_id ^= 1 << 31;
    assert_eq!(
        ours.check_peer(&p),
        Err(HandshakeError::Robot {
            ours: 0xabcd_0123,
            theirs: 0x2bcd_0123
        })
    );
    let mut s = ours;
    s.settings_hash ^= 1;
    assert_eq!(
        ours.check_peer(&s),
        Err(HandshakeError::Settings {
            ours: 0x1234_5678,
            theirs: 0x1234_5679
        })
    );
    // Another robot is named before other settings, and sizes and rate before the
    // robot id: each says more than the next.
    p.settings_hash ^= 1;
    assert!(matches!(
        ours.check_peer(&p),
        Err(HandshakeError::Robot { .. })
    ));
    p.obs_dim = 6;
    assert!(matches!(
        ours.check_peer(&p),
        Err(HandshakeError::ObsDim { .. })
    ));
}

/// Builds a raw frame with a valid CRC around arbitrary header fields and payload.
fn raw_frame(version: u8, ty: u8, declared_len: u16, payload: &[u8]) -> StdVec<u8> {
    let mut raw = vec![version, ty, 0, 0, 0, 0, 0, 0];
    raw.extend(declared_len.to_le_bytes());
    raw.extend(payload);
    let crc = crc32(&raw);
    raw.extend(crc.to_le_bytes());
    let mut wire = enc(&raw);
    wire.push(0);
    wire
}

fn decode_one(wire: &[u8]) -> Result<Frame, FrameError> {
    let mut d = FrameDecoder::new();
    let mut out = StdVec::new();
    d.feed(wire, |r| out.push(r));
    assert_eq!(out.len(), 1, "{out:?}");
    out.pop().unwrap()
}

#[test]
fn strict_payload_checks() {
    use FrameError::*;
    // Version mismatch with a valid CRC is reported as such.
    assert_eq!(
        decode_one(&raw_frame(PROTOCOL_VERSION + 1, 4, 0, &[])),
        Err(Version {
            received: PROTOCOL_VERSION + 1
        })
    );
    assert_eq!(
        decode_one(&raw_frame(PROTOCOL_VERSION, 0x55, 0, &[])),
        Err(UnknownType(0x55))
    );
    assert_eq!(
        decode_one(&raw_frame(PROTOCOL_VERSION, 4, 3, &[])),
        Err(Length {
            declared: 3,
            actual: 0
        })
    );
    let payload_err = |ty: u8, payload: &[u8]| {
        matches!(
            decode_one(&raw_frame(
                PROTOCOL_VERSION,
                ty,
                payload.len() as u16,
                payload
            )),
            Err(Payload { .. })
        )
    };
    assert!(payload_err(4, &[0])); // heartbeat with a payload
    // The message says what was found (it said "more than MAX_ACT values" alone).
    let said = |ty: u8, payload: &[u8]| {
        let frame = raw_frame(PROTOCOL_VERSION, ty, payload.len() as u16, payload);
        std::string::ToString::to_string(&decode_one(&frame).unwrap_err())
    };
    assert_eq!(
        said(3, &[17]),
        "malformed Command payload: too many values (17, at most 16)"
    );
    assert_eq!(
        said(3, &[2, 0, 0, 0, 0]),
        "malformed Command payload: length disagrees with the value count (2 values need 8 bytes, found 4)"
    );
    assert_eq!(
        said(5, &[9, 0]),
        "malformed Fault payload: unknown fault code (code 9, detail 0)"
    );
    assert_eq!(
        said(8, &[0, 0, 0, 0, 2, 0, 0, 0, 0]),
        "malformed EpisodeEnd payload: success is neither 0 nor 1 (found 0x02)"
    );
    assert_eq!(
        said(4, &[0]),
        "malformed Heartbeat payload: payload too long (1 bytes)"
    );
    assert!(payload_err(1, &[1, 0, 0, 0])); // short hello
    assert!(payload_err(3, &[17])); // 17 action values
    assert!(payload_err(3, &[2, 0, 0, 0, 0])); // 2 values announced, 1 sent
    let mut sensor = vec![0u8; 9];
    sensor[8] = 33;
    assert!(payload_err(2, &sensor)); // 33 obs values
    assert!(payload_err(5, &[9, 0])); // unknown fault code
    assert!(payload_err(5, &[2, 1])); // detail on a known code
    assert!(payload_err(8, &[0, 0, 0, 0, 2, 0, 0, 0, 0])); // success = 2
    let mut reward = vec![0u8; 14];
    reward[12] = 8;
    assert!(payload_err(10, &reward)); // unknown flag bit
    // Truncated without done (a corrupted byte the CRC missed): refused by name, as
    // the controller's log had to clear it after the fact.
    for flags in [0x02, 0x06] {
        reward[12] = flags;
        assert_eq!(
            said(10, &reward),
            std::format!("malformed Reward payload: truncated without done (found 0x{flags:02x})")
        );
    }
    for flags in [0x00, 0x01, 0x03, 0x05, 0x07] {
        reward[12] = flags;
        assert!(!payload_err(10, &reward), "{flags:#x}");
    }
    // The applied action's count, as a command's: at most MAX_ACT values, each sent.
    reward[13] = 17;
    reward.extend_from_slice(&[0; 4 * 17]);
    assert_eq!(
        said(10, &reward),
        "malformed Reward payload: too many values (17, at most 16)"
    );
    reward.truncate(14 + 4);
    reward[13] = 2;
    assert_eq!(
        said(10, &reward),
        "malformed Reward payload: length disagrees with the value count (2 values need 8 bytes, found 4)"
    );
    reward[13] = 1;
    assert!(!payload_err(10, &reward));
    // Short payloads are named short, not judged by the zeros a short read gives (an
    // empty fault read as code 0, "unknown fault code").
    for (ty, payload) in [(5u8, &[][..]), (8, &[0, 0, 0, 0][..]), (10, &[0u8; 13][..])] {
        let got = decode_one(&raw_frame(
            PROTOCOL_VERSION,
            ty,
            payload.len() as u16,
            payload,
        ));
        assert!(
            matches!(
                got,
                Err(Payload {
                    reason: "payload too short",
                    ..
                })
            ),
            "type {ty}: {got:?}"
        );
    }
    // Too short to hold a header and CRC.
    let mut short = enc(&[1, 4, 0]);
    short.push(0);
    assert_eq!(decode_one(&short), Err(TooShort { len: 3 }));
}

#[test]
fn decoder_counts_and_resyncs() {
    let mut e = FrameEncoder::new();
    let good = e.to_wire(5, Message::Heartbeat);
    let mut d = FrameDecoder::new();
    let mut results = StdVec::new();
    // Garbage that ends in a delimiter, an idle delimiter, a good frame.
    d.feed(&[0x13, 0x37, 0x00, 0x00], |r| results.push(r));
    d.feed(&good, |r| results.push(r));
    assert_eq!(results.len(), 2);
    assert!(results[0].is_err());
    assert!(results[1].is_ok());
    // A run longer than any frame: reported once, skipped to the next delimiter.
    results.clear();
    d.feed(&[0x42; 1000], |r| results.push(r));
    assert_eq!(results, [Err(FrameError::Oversize)]);
    d.feed(&[0x00], |r| results.push(r));
    d.feed(&good, |r| results.push(r));
    assert_eq!(results.len(), 2);
    assert!(results[1].is_ok());
    let s = d.stats();
    assert_eq!(s.frames, 2);
    assert_eq!(s.oversize, 1);
    assert_eq!(s.cobs_errors + s.malformed + s.crc_errors, 1);
    assert_eq!(s.resyncs, 2);
    assert_eq!(s.bytes_discarded, 3 + 1001);
    // clear() drops a partial frame: the rest of it is skipped.
    results.clear();
    d.feed(&good[..5], |r| results.push(r));
    d.clear();
    d.feed(&good[5..], |r| results.push(r));
    d.feed(&good, |r| results.push(r));
    assert_eq!(results.len(), 1);
    assert!(results[0].is_ok());
}

#[test]
fn seq_tracker() {
    let mut t = SeqTracker::new();
    assert_eq!(t.observe(65534), SeqEvent::First);
    assert_eq!(t.observe(65535), SeqEvent::InOrder);
    assert_eq!(t.observe(0), SeqEvent::InOrder);
    assert_eq!(t.observe(3), SeqEvent::Gap { lost: 2 });
    assert_eq!(t.observe(3), SeqEvent::Stale);
    assert_eq!(t.observe(1), SeqEvent::Stale);
    assert_eq!(t.observe(4), SeqEvent::InOrder);
    assert_eq!((t.received, t.lost, t.stale), (7, 2, 2));
    t.reset();
    assert_eq!(t.observe(0), SeqEvent::First);
    assert_eq!(timestamp_delta_us(5, u32::MAX - 4), 10);
}

/// A restart whose `Hello` was lost: the new numbering (1, 2, 3, … after 5000) is
/// stale for its first two frames, then taken up; it used to stay stale for 32,768
/// frames. Repeats that do not count on from each other never resynchronise.
#[test]
fn seq_tracker_resynchronises_on_a_new_numbering() {
    let mut t = SeqTracker::new();
    t.observe(4999);
    assert_eq!(t.observe(5000), SeqEvent::InOrder);
    assert_eq!(t.observe(1), SeqEvent::Stale);
    assert_eq!(t.observe(2), SeqEvent::Stale);
    assert_eq!(t.observe(3), SeqEvent::Resync);
    for seq in 4..=8 {
        assert_eq!(t.observe(seq), SeqEvent::InOrder);
    }
    assert_eq!((t.stale, t.resyncs, t.lost), (2, 1, 0));
    // Duplicates, and a duplicated pair, stay stale.
    for seq in [8, 8, 8, 7, 8, 7, 8] {
        assert_eq!(t.observe(seq), SeqEvent::Stale);
    }
    assert_eq!(t.observe(9), SeqEvent::InOrder);
    assert_eq!(t.resyncs, 1);
}

// ----------------------------------------------------------------------------------------
// Property tests

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => -10.0f32..10.0,
        1 => any::<u32>().prop_map(f32::from_bits),
    ]
}

fn any_fault() -> impl Strategy<Value = FaultCode> {
    prop_oneof![
        Just(FaultCode::Estop),
        Just(FaultCode::Watchdog),
        Just(FaultCode::Overcurrent),
        Just(FaultCode::InvalidCommand),
        any::<u8>().prop_map(FaultCode::Other),
    ]
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>()
        )
            .prop_map(
                |(
                    protocol_version,
                    schema_hash,
                    robot_id,
                    settings_hash,
                    obs_dim,
                    act_dim,
                    control_hz,
                )| {
                    Message::Hello(Hello {
                        protocol_version,
                        schema_hash,
                        robot_id,
                        settings_hash,
                        obs_dim,
                        act_dim,
                        control_hz,
                    })
                }
            ),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any_f32(), 0..=MAX_OBS)
        )
            .prop_map(|(e, s, o)| Message::sensor(e, s, &o).unwrap()),
        proptest::collection::vec(any_f32(), 0..=MAX_ACT)
            .prop_map(|a| Message::command(&a).unwrap()),
        Just(Message::Heartbeat),
        any_fault().prop_map(|code| Message::Fault { code }),
        Just(Message::Estop),
        (any::<u32>(), any::<u64>())
            .prop_map(|(episode, seed)| Message::EpisodeStart { episode, seed }),
        (any::<u32>(), any::<bool>(), any::<u32>()).prop_map(|(episode, success, steps)| {
            Message::EpisodeEnd {
                episode,
                success,
                steps,
            }
        }),
        any::<u64>().prop_map(|seed| Message::Reset { seed }),
        (
            any::<u32>(),
            any::<u32>(),
            any_f32(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any_f32(), 0..=MAX_ACT)
        )
            .prop_map(
                |(episode, step, reward, done, truncated, success, applied)| {
                    Message::Reward {
                        episode,
                        step,
                        reward,
                        done,
                        // A truncation comes with `done` (one without is refused).
                        truncated: truncated && done,
                        success,
                        applied: Vec::from_slice(&applied).unwrap(),
                    }
                }
            ),
    ]
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (any::<u16>(), any::<u32>(), any_message()).prop_map(|(seq, timestamp_us, message)| Frame {
        seq,
        timestamp_us,
        message,
    })
}

/// Decodes a byte stream, returning the wire bytes of every accepted frame (bytes, not
/// `Frame`s, so that NaN payloads compare bit for bit).
fn accepted(stream: &[u8]) -> StdVec<StdVec<u8>> {
    let mut d = FrameDecoder::new();
    let mut out = StdVec::new();
    d.feed(stream, |r| {
        if let Ok(f) = r {
            out.push(f.to_wire().to_vec());
        }
    });
    out
}

/// Encodes frames into one stream; returns it and each frame's byte range
/// (delimiter included).
fn stream_of(frames: &[Frame]) -> (StdVec<u8>, StdVec<core::ops::Range<usize>>) {
    let mut s = StdVec::new();
    let mut ranges = StdVec::new();
    for f in frames {
        let start = s.len();
        s.extend_from_slice(&f.to_wire());
        ranges.push(start..s.len());
    }
    (s, ranges)
}

fn wires(frames: &[Frame]) -> StdVec<StdVec<u8>> {
    frames.iter().map(|f| f.to_wire().to_vec()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cobs_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let e = enc(&data);
        prop_assert!(e.len() <= cobs_max_len(data.len()));
        prop_assert!(!e.contains(&0));
        prop_assert_eq!(dec(&e).unwrap(), data);
    }

    #[test]
    fn frame_roundtrip(frame in any_frame()) {
        let wire = frame.to_wire();
        prop_assert!(wire.len() <= MAX_FRAME);
        prop_assert_eq!(wire.last(), Some(&0));
        prop_assert!(!wire[..wire.len() - 1].contains(&0));
        let back = Frame::decode(&wire[..wire.len() - 1]).unwrap();
        prop_assert_eq!(back.to_wire(), wire);
        prop_assert_eq!((back.seq, back.timestamp_us), (frame.seq, frame.timestamp_us));
        prop_assert_eq!(back.message.msg_type(), frame.message.msg_type());
        // The message itself, not only its bytes again: an encoder that wrote `obs[0]`
        // n times re-encoded to the same bytes. (Debug, so that NaNs compare.)
        prop_assert_eq!(
            std::format!("{:?}", back.message),
            std::format!("{:?}", frame.message)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        chunk in 1usize..64,
    ) {
        let mut d = FrameDecoder::new();
        let mut results = 0u32;
        for part in data.chunks(chunk) {
            d.feed(part, |_| results += 1);
        }
        let s = d.stats();
        prop_assert_eq!(
            results,
            s.frames + s.crc_errors + s.cobs_errors + s.oversize + s.version_mismatches + s.malformed
        );
    }

    #[test]
    fn arbitrary_cobs_blocks_never_panic(block in proptest::collection::vec(1u8..=255, 0..200)) {
        let _ = Frame::decode(&block);
    }

    #[test]
    fn stream_roundtrip_with_byte_splits(
        frames in proptest::collection::vec(any_frame(), 1..12),
        chunk in 1usize..40,
    ) {
        let (stream, _) = stream_of(&frames);
        let mut d = FrameDecoder::new();
        let mut got = StdVec::new();
        for part in stream.chunks(chunk) {
            d.feed(part, |r| got.push(r.unwrap().to_wire().to_vec()));
        }
        prop_assert_eq!(got, wires(&frames));
    }

    /// One flipped bit costs the frame it hits (and the next one if it hits the
    /// delimiter, which merges them) and nothing else; no corrupted frame is accepted.
    #[test]
    fn single_bit_flip_is_detected(
        frames in proptest::collection::vec(any_frame(), 1..8),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut stream, ranges) = stream_of(&frames);
        let p = pos.index(stream.len());
        stream[p] ^= 1 << bit;
        let k = ranges.iter().position(|r| r.contains(&p)).unwrap();
        let mut expected = wires(&frames);
        if p == ranges[k].end - 1 && k + 1 < frames.len() {
            expected.remove(k + 1);
        }
        expected.remove(k);
        prop_assert_eq!(accepted(&stream), expected);
    }

    /// A frame cut short: without its delimiter its remains swallow the next frame
    /// too; with its delimiter it is lost alone. Either way nothing wrong is accepted.
    #[test]
    fn truncation_is_detected(
        frames in proptest::collection::vec(any_frame(), 1..8),
        which in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        keep_delimiter in any::<bool>(),
    ) {
        let (stream, ranges) = stream_of(&frames);
        let k = which.index(frames.len());
        let r = ranges[k].clone();
        let body = r.end - 1 - r.start;
        let keep = cut.index(body); // 0..body-1 bytes of the encoded frame survive
        let mut cut_stream = stream[..r.start + keep].to_vec();
        if keep_delimiter {
            cut_stream.push(0);
        }
        cut_stream.extend_from_slice(&stream[r.end..]);
        let mut expected = wires(&frames);
        if !keep_delimiter && keep > 0 && k + 1 < frames.len() {
            expected.remove(k + 1);
        }
        expected.remove(k);
        prop_assert_eq!(accepted(&cut_stream), expected);
    }

    /// Garbage between frames, bytes dropped or duplicated anywhere: the accepted
    /// frames are always a subsequence of the sent ones, and every frame after the
    /// damage (past the next delimiter) is received.
    #[test]
    fn random_damage_yields_a_subsequence(
        frames in proptest::collection::vec(any_frame(), 2..10),
        at in any::<prop::sample::Index>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..300),
        drop in 0usize..20,
    ) {
        let (stream, ranges) = stream_of(&frames);
        let p = at.index(stream.len());
        let mut damaged = stream[..p].to_vec();
        damaged.extend_from_slice(&garbage);
        let resume = (p + drop).min(stream.len());
        damaged.extend_from_slice(&stream[resume..]);
        let got = accepted(&damaged);
        let sent = wires(&frames);
        // Subsequence check.
        let mut it = sent.iter();
        for g in &got {
            prop_assert!(it.any(|s| s == g), "accepted a frame that was not sent");
        }
        // Frames that start after the first delimiter at or after `resume` survive.
        let first_clean = ranges.iter().position(|r| r.start > resume).unwrap_or(frames.len());
        for w in &sent[first_clean..] {
            prop_assert!(got.contains(w));
        }
    }
}

#[test]
fn a_noise_burst_too_short_for_a_crc_counts_as_a_crc_error() {
    // A block that COBS-decodes to 2 bytes: no room for a header and a CRC, so nothing
    // says it came from the peer (malformed counts only frames that passed the CRC).
    let mut d = FrameDecoder::new();
    let mut results = StdVec::new();
    d.feed(&[0x03, 0xaa, 0xbb, 0x00], |r| results.push(r));
    assert_eq!(results, [Err(FrameError::TooShort { len: 2 })]);
    let s = d.stats();
    assert_eq!((s.crc_errors, s.malformed), (1, 0));
}

#[test]
fn encode_errors_name_the_length_the_message_needs() {
    let hello = Message::Hello(Hello::new(1, 2, 10, 2, 20));
    let mut small = [0u8; 5];
    let e = hello.encode_payload(&mut small).unwrap_err();
    assert_eq!((e.len, e.needed), (5, 17));
    let sensor = Message::sensor(0, 0, &[0.5; 10]).unwrap();
    let mut out = [0u8; MAX_PAYLOAD];
    assert_eq!(
        sensor.encode_payload(&mut out[..48]).unwrap_err().needed,
        49
    );
    assert_eq!(sensor.encode_payload(&mut out).unwrap(), 49);
    // A whole frame's need counts the delimiter after the encoded block (it said one
    // byte less when the block itself did not fit), and that many bytes are enough.
    let largest = Frame {
        seq: 7,
        timestamp_us: 9,
        message: Message::sensor(0, 0, &[0.5; MAX_OBS]).unwrap(),
    };
    let e = largest.encode(&mut [0u8; 100]).unwrap_err();
    assert_eq!((e.len, e.needed), (100, MAX_FRAME));
    assert!(largest.encode(&mut vec![0u8; e.needed]).is_ok());
}

#[test]
fn a_step_of_frames_fits_the_wire_bytes_bound() {
    // step_wire_bytes is the largest encoding; real frames of any content fit it.
    let mut e = FrameEncoder::new();
    for (dim, act) in [(1, 1), (10, 4), (MAX_OBS, MAX_ACT)] {
        for fill in [0.0f32, 1.0, f32::from_bits(0x0101_0101)] {
            let obs = vec![fill; dim];
            let sensor = e.to_wire(1, Message::sensor(7, 9, &obs).unwrap()).len();
            let reward = e
                .to_wire(
                    1,
                    Message::Reward {
                        episode: 7,
                        step: 9,
                        reward: fill,
                        done: true,
                        truncated: false,
                        success: true,
                        applied: Vec::from_slice(&vec![fill; act]).unwrap(),
                    },
                )
                .len();
            assert!(
                sensor + reward <= step_wire_bytes(dim, act),
                "{dim} {act} {fill}"
            );
        }
    }
    assert_eq!(step_wire_bytes(10, 4), 111);
    // The rarer frames, as `step_wire_bytes` names them: EpisodeEnd, Fault, EpisodeStart.
    let wire = |m: Message| {
        let mut buf = [0u8; MAX_FRAME];
        Frame {
            seq: 0,
            timestamp_us: 0,
            message: m,
        }
        .encode(&mut buf)
        .unwrap()
    };
    let end = Message::EpisodeEnd {
        episode: u32::MAX,
        success: true,
        steps: u32::MAX,
    };
    let fault = Message::Fault {
        code: FaultCode::Watchdog,
    };
    let start = Message::EpisodeStart {
        episode: u32::MAX,
        seed: u64::MAX,
    };
    assert!(wire(end) <= 25 && wire(fault) <= 18 && wire(start) <= 28);
    assert_eq!(
        (
            wire_frame_bytes(9),
            wire_frame_bytes(2),
            wire_frame_bytes(12)
        ),
        (25, 18, 28)
    );
    // A full Reward: 14 + 64 payload bytes, 92 raw, 93 in COBS, and the delimiter.
    assert_eq!(step_wire_bytes(MAX_OBS, MAX_ACT), MAX_FRAME + 94);
}
