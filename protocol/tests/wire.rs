//! Envelopes and frames: round trips in both payload forms, raw bytes kept for rejected
//! envelopes, acks and hellos, the keyring, and no panic on any mutation of a valid frame.

use std::net::SocketAddr;

use proptest::prelude::*;
use sluice_protocol::event::{to_json_payload, to_rkyv_payload};
use sluice_protocol::{
    Ack, AckStatus, AlignedBuf, Backend, BatchFrame, EnvelopeHeader, Error, Event, FrameBuilder,
    HelloReply, Keyring, Limits, Opener, PayloadFormat, ShardAddr, decode_batch, encode_hello,
    frame::decode_hello, partition_for, partition_key_for_device, sample,
};

const KEY: [u8; 32] = [0x42; 32];

fn opener(backend: Backend) -> Opener {
    let mut k = Keyring::new(backend);
    k.insert(3, KEY).unwrap();
    Opener::new(k, Limits::default())
}

fn frame_of(envelopes: &[(PayloadFormat, Vec<Event>)]) -> Vec<u8> {
    let cipher = Backend::Ring.cipher(&KEY);
    let mut b = FrameBuilder::new(9, 5);
    for (i, (format, events)) in envelopes.iter().enumerate() {
        let plaintext = match format {
            PayloadFormat::Rkyv => to_rkyv_payload(events).to_vec(),
            PayloadFormat::Json => to_json_payload(events),
        };
        let nonce = [i as u8; 12];
        b.seal(
            &*cipher,
            EnvelopeHeader::new(*format, 3, nonce, 77, events.len() as u16),
            &plaintext,
        );
    }
    b.finish().to_vec()
}

#[test]
fn both_forms_round_trip_through_one_frame() {
    let events: Vec<Event> = (0..6).map(sample::w1_event).collect();
    let frame = frame_of(&[
        (PayloadFormat::Rkyv, events[..1].to_vec()),
        (PayloadFormat::Json, events[1..2].to_vec()),
        (PayloadFormat::Rkyv, events[2..5].to_vec()),
        (PayloadFormat::Json, events[5..].to_vec()),
    ]);
    for backend in Backend::available() {
        let (header, envs) = decode_batch(&frame, &mut opener(backend)).unwrap();
        assert_eq!((header.seq, header.partition, header.count), (9, 5, 4));
        let got: Vec<Event> = envs.into_iter().flat_map(|(_, e)| e).collect();
        assert_eq!(got, events);
    }
}

#[test]
fn rkyv_events_are_read_where_they_lie() {
    let frame = frame_of(&[(PayloadFormat::Rkyv, vec![sample::w1_event(1)])]);
    let mut buf = AlignedBuf::new();
    buf.extend_from_slice(&frame);
    let range = buf.as_ptr_range();
    let mut op = opener(Backend::Ring);
    let env = BatchFrame::parse(&mut buf, op.limits())
        .unwrap()
        .into_envelopes()
        .next()
        .unwrap();
    let opened = op.open(env).unwrap();
    let view = opened.payload.get(0).unwrap();
    assert_eq!(view.event_type, sample::w1_event(1).event_type);
    // The strings point into the receive buffer: nothing was copied out.
    assert!(range.contains(&view.device_id.as_ptr()));
    assert!(range.contains(&view.attrs.get(2).unwrap().1.as_ptr()));
}

#[test]
fn rejected_envelopes_hand_back_their_bytes_as_received() {
    let good = sample::w1_event(1);
    let cipher = Backend::Ring.cipher(&KEY);
    let mut b = FrameBuilder::new(1, 1);
    b.seal(
        &*cipher,
        EnvelopeHeader::new(PayloadFormat::Rkyv, 3, [1; 12], 0, 1),
        &to_rkyv_payload(std::slice::from_ref(&good)),
    );
    b.seal(
        &*cipher,
        EnvelopeHeader::new(PayloadFormat::Rkyv, 3, [2; 12], 0, 1),
        &[0xee; 96],
    );
    b.seal(
        &*cipher,
        EnvelopeHeader::new(PayloadFormat::Json, 3, [4; 12], 0, 1),
        b"{\"event_id\": tru",
    );
    b.seal(
        &*cipher,
        EnvelopeHeader::new(PayloadFormat::Rkyv, 99, [5; 12], 0, 1),
        &[1; 40],
    );
    b.seal(
        &*cipher,
        EnvelopeHeader::new(PayloadFormat::Rkyv, 3, [3; 12], 0, 1),
        &to_rkyv_payload(&[good]),
    );
    let mut frame = b.finish().to_vec();
    // Corrupt the third envelope's ciphertext, then fix the frame CRC: an authentic frame whose
    // envelope fails its tag.
    let third = frame.len() - 32;
    frame[third] ^= 0x80;
    let crc = sluice_protocol::frame::frame_crc(&frame);
    frame[28..32].copy_from_slice(&crc.to_le_bytes());

    for backend in Backend::available() {
        let mut buf = AlignedBuf::new();
        buf.extend_from_slice(&frame);
        let original = buf.to_vec();
        let mut op = opener(backend);
        let mut offset = 32;
        let mut outcomes = Vec::new();
        for env in BatchFrame::parse(&mut buf, &Limits::default())
            .unwrap()
            .into_envelopes()
        {
            let len = env.header().envelope_len();
            let raw_len = env.raw().len();
            match op.open(env) {
                Ok(o) => outcomes.push(Ok(o.payload.len())),
                Err(r) => {
                    assert_eq!(
                        r.raw,
                        &original[offset..offset + raw_len],
                        "{backend}: raw bytes"
                    );
                    outcomes.push(Err(r.error.name()));
                }
            }
            offset += len;
        }
        assert_eq!(
            outcomes,
            vec![
                Ok(1),
                Err("invalid_archive"),
                Err("invalid_json"),
                Err("unknown_key"),
                Err("bad_tag")
            ],
            "{backend}"
        );
    }
}

#[test]
fn counts_and_limits_are_enforced() {
    let two = vec![sample::w1_event(1), sample::w1_event(2)];
    let cipher = Backend::Ring.cipher(&KEY);
    // JSON array of two, header says one.
    let mut b = FrameBuilder::new(1, 1);
    b.seal(
        &*cipher,
        EnvelopeHeader::new(PayloadFormat::Json, 3, [1; 12], 0, 1),
        &to_json_payload(&two),
    );
    let err = decode_batch(b.finish(), &mut opener(Backend::Ring)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CountMismatch {
                declared: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    // Tighter limits: two events per envelope is over a limit of one.
    let mut k = Keyring::new(Backend::Ring);
    k.insert(3, KEY).unwrap();
    let limits = Limits {
        events_per_envelope_max: 1,
        ..Limits::default()
    };
    let frame = frame_of(&[(PayloadFormat::Rkyv, two)]);
    let err = decode_batch(&frame, &mut Opener::new(k.clone(), limits)).unwrap_err();
    assert_eq!(err.name(), "oversized");
    let limits = Limits {
        frame_bytes_max: 512,
        ..Limits::default()
    };
    let err = decode_batch(&frame, &mut Opener::new(k, limits)).unwrap_err();
    assert_eq!(err.name(), "oversized");
}

#[test]
fn misaligned_buffers_are_refused_not_misread() {
    let frame = frame_of(&[(PayloadFormat::Rkyv, vec![sample::w1_event(1)])]);
    let mut buf = AlignedBuf::new();
    buf.push(0);
    buf.extend_from_slice(&frame);
    assert_eq!(
        BatchFrame::parse(&mut buf[1..], &Limits::default()).unwrap_err(),
        Error::Misaligned
    );
}

#[test]
fn acks_and_hellos_round_trip() {
    let ack = Ack {
        seq: 1 << 40,
        partition: 63,
        accepted: 511,
        dead_lettered: 1,
        status: AckStatus::Ok,
        error: 0,
    };
    assert_eq!(Ack::decode(&ack.encode()).unwrap(), ack);
    let rejected = Ack {
        status: AckStatus::Rejected,
        error: Error::BadCrc {
            declared: 0,
            actual: 1,
        }
        .code(),
        ..ack
    };
    let back = Ack::decode(&rejected.encode()).unwrap();
    assert_eq!(Error::name_of_code(back.error), Some("bad_crc"));
    let mut bad = ack.encode();
    bad[33] ^= 1;
    assert_eq!(Ack::decode(&bad).unwrap_err().name(), "bad_crc");

    decode_hello(&encode_hello()).unwrap();
    let reply = HelloReply {
        shards: vec![
            ShardAddr {
                shard: 0,
                addr: "127.0.0.1:7401".parse::<SocketAddr>().unwrap(),
            },
            ShardAddr {
                shard: 1,
                addr: "[::1]:7402".parse::<SocketAddr>().unwrap(),
            },
        ],
        owners: (0..64).map(|p| p % 2).collect(),
    };
    let bytes = reply.encode();
    assert_eq!(bytes.len() % 16, 0);
    let back = HelloReply::decode(&bytes).unwrap();
    assert_eq!(back, reply);
    assert_eq!(back.owner(3).unwrap().addr.port(), 7402);
    assert_eq!(
        HelloReply::decode(&bytes[..bytes.len() - 16])
            .unwrap_err()
            .name(),
        "truncated"
    );
}

#[test]
fn partitions_are_stable_and_spread() {
    // Fixed values: clients in other languages compute the same (PROTOCOL.md).
    assert_eq!(partition_key_for_device(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(partition_key_for_device("a"), 0xaf63_dc4c_8601_ec8c);
    let mut counts = [0u32; 64];
    for n in 0..64_000u64 {
        counts[partition_for(partition_key_for_device(&format!("{n:024x}")), 64) as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (800..1200).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn key_files_parse_hex_and_base64_and_never_print_keys() {
    let text = "# rotation: 1 is old, 2 is new\n\n1 4242424242424242424242424242424242424242424242424242424242424242\n2   QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\n";
    let k = Keyring::parse(text, Backend::RustCrypto).unwrap();
    assert_eq!(k.ids(), vec![1, 2]);
    let debug = format!("{k:?}");
    assert!(
        !debug.contains("4242") && !debug.contains("QkJC"),
        "{debug}"
    );
    // Both ids hold the same key bytes here, so each opens what the other sealed.
    let mut buf = b"hello".to_vec();
    let tag = k.get(1).unwrap().seal_in_place(&[0; 12], b"", &mut buf);
    k.get(2)
        .unwrap()
        .open_in_place(&[0; 12], b"", &mut buf, &tag)
        .unwrap();
    assert_eq!(buf, b"hello");

    let cases = [
        ("1 ab!d\n", 1, "neither"),
        (
            "# c\n7 zz42424242424242424242424242424242424242424242424242424242424242\n",
            2,
            "not hex",
        ),
        (
            "x 4242424242424242424242424242424242424242424242424242424242424242\n",
            1,
            "key id",
        ),
        (
            "0 4242424242424242424242424242424242424242424242424242424242424242\n",
            1,
            "reserved",
        ),
        ("1 QkJC\n", 1, "3 bytes"),
        ("1\n", 1, "expected `ID KEY`"),
        // Key and id swapped: the key must not be printed.
        (
            "4242424242424242424242424242424242424242424242424242424242424242 1\n",
            1,
            "must be `ID KEY`",
        ),
    ];
    for (text, line, reason) in cases {
        let e = Keyring::parse(text, Backend::Ring).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.reason.contains(reason), "{text:?}: {e}");
        assert!(!e.to_string().contains("4242"), "{e}");
    }
    let dup = "1 4242424242424242424242424242424242424242424242424242424242424242\n1 4242424242424242424242424242424242424242424242424242424242424242\n";
    assert_eq!(Keyring::parse(dup, Backend::Ring).unwrap_err().line, 2);
    let exported = Keyring::parse(&k.export_key_file(), Backend::Ring).unwrap();
    assert_eq!(exported.ids(), vec![1, 2]);
}

/// A key file that group or others may read or write is refused with its mode and the fix,
/// as ssh refuses such a private key; 0600 and 0400 are read.
#[test]
fn key_files_open_to_group_or_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("sluice-keys-{}.txt", std::process::id()));
    std::fs::write(
        &path,
        "1 4242424242424242424242424242424242424242424242424242424242424242\n",
    )
    .unwrap();
    for mode in [0o644, 0o666, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = Keyring::load(&path, Backend::Ring).unwrap_err();
        assert_eq!(e.line, 0);
        assert!(e.reason.contains(&format!("mode {mode:04o}")), "{e}");
        assert!(e.reason.contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("4242"), "{e}");
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(Keyring::load(&path, Backend::Ring).unwrap().ids(), vec![1]);
    }
    let _ = std::fs::remove_file(&path);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any change to a valid frame, authentic or not, gives events or a typed error.
    #[test]
    fn mutated_frames_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        fix_crc in any::<bool>(),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let events: Vec<Event> = (0..3).map(sample::w1_event).collect();
        let mut frame = frame_of(&[
            (PayloadFormat::Rkyv, events[..2].to_vec()),
            (PayloadFormat::Json, events[2..].to_vec()),
        ]);
        for (i, b) in edits {
            let i = i.index(frame.len());
            frame[i] = b;
        }
        if fix_crc {
            let crc = sluice_protocol::frame::frame_crc(&frame);
            frame[28..32].copy_from_slice(&crc.to_le_bytes());
        }
        if let Some(c) = cut {
            frame.truncate(c.index(frame.len()));
        }
        let mut op = opener(Backend::Ring);
        let _ = decode_batch(&frame, &mut op);
    }

    /// Any change to an rkyv plaintext that still carries a valid tag is validated, not trusted.
    #[test]
    fn authentic_garbage_archives_are_rejected_or_read_safely(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut plaintext = to_rkyv_payload(&[sample::w1_event(9)]).to_vec();
        for (i, b) in edits {
            let i = i.index(plaintext.len());
            plaintext[i] = b;
        }
        let cipher = Backend::Ring.cipher(&KEY);
        let mut b = FrameBuilder::new(1, 1);
        b.seal(&*cipher, EnvelopeHeader::new(PayloadFormat::Rkyv, 3, [1; 12], 0, 1), &plaintext);
        match decode_batch(b.finish(), &mut opener(Backend::Ring)) {
            Ok((_, envs)) => prop_assert_eq!(envs[0].1.len(), 1),
            Err(e) => prop_assert!(["invalid_archive", "oversized", "count_mismatch"].contains(&e.name()), "{}", e),
        }
    }
}

/// CRC-32C, one bit at a time: the oracle for the vectorized `frame_crc`.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}

proptest! {
    #[test]
    fn frame_crc_matches_a_bitwise_crc32c(mut frame in proptest::collection::vec(any::<u8>(), 32..5000)) {
        let got = sluice_protocol::frame::frame_crc(&frame);
        frame[28..32].fill(0);
        prop_assert_eq!(got, crc32c_bitwise(&frame));
    }
}
