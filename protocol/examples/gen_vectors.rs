//! Writes `testdata/vectors.json`: `cargo run -p sluice-protocol --example gen_vectors >
//! protocol/testdata/vectors.json`. The output is deterministic; `tests/vectors.rs` checks the
//! committed file against this generator and against the decoder.

use serde_json::{Value, json};
use sluice_protocol::envelope::{ENVELOPE_HEADER_BYTES, envelope_len};
use sluice_protocol::event::{to_json_payload, to_rkyv_payload};
use sluice_protocol::frame::frame_crc;
use sluice_protocol::{
    AlignedBuf, Attr, Backend, ClientIp, EnvelopeHeader, Event, FrameBuilder, PayloadFormat,
    partition_key_for_device, sample, seal_envelope,
};

/// Key 1 is bytes 0x00..0x1f; key 2 is bytes 0xe0..0xff.
pub fn vector_key(id: u32) -> [u8; 32] {
    // Must agree with sluice_protocol::fuzzing::vector_keyring.
    let base: u8 = if id == 1 { 0x00 } else { 0xe0 };
    std::array::from_fn(|i| base + i as u8)
}

fn nonce(n: u8) -> [u8; 12] {
    let mut b = [0xa0; 12];
    b[11] = n;
    b
}

struct Spec {
    name: &'static str,
    key_id: u32,
    format: PayloadFormat,
    events: Vec<Event>,
}

fn payload(format: PayloadFormat, events: &[Event]) -> Vec<u8> {
    match format {
        PayloadFormat::Rkyv => to_rkyv_payload(events).to_vec(),
        PayloadFormat::Json => to_json_payload(events),
    }
}

fn sealed_frame(key_id: u32, header: EnvelopeHeader, plaintext: &[u8], seq: u64) -> Vec<u8> {
    let cipher = Backend::Ring.cipher(&vector_key(key_id));
    let mut b = FrameBuilder::new(
        seq,
        sluice_protocol::partition_for(header.partition_key, 64),
    );
    b.seal(&*cipher, header, plaintext);
    b.finish().to_vec()
}

fn recrc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = frame_crc(&frame);
    frame[28..32].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn valid(specs: Vec<Spec>) -> Vec<Value> {
    specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let plaintext = payload(s.format, &s.events);
            let pkey = partition_key_for_device(&s.events[0].device_id);
            let header =
                EnvelopeHeader::new(s.format, s.key_id, nonce(i as u8), pkey, s.events.len() as u16);
            let mut env = AlignedBuf::new();
            let cipher = Backend::Ring.cipher(&vector_key(s.key_id));
            seal_envelope(&mut env, &*cipher, header, &plaintext);
            let n = plaintext.len();
            let frame = sealed_frame(s.key_id, header, &plaintext, 1000 + i as u64);
            let mut v = json!({
                "name": s.name,
                "key_id": s.key_id,
                "key_hex": hex::encode(vector_key(s.key_id)),
                "nonce_hex": hex::encode(nonce(i as u8)),
                "aad_hex": hex::encode(&env[..ENVELOPE_HEADER_BYTES]),
                "ciphertext_hex": hex::encode(&env[ENVELOPE_HEADER_BYTES..ENVELOPE_HEADER_BYTES + n + 16]),
                "plaintext_hex": hex::encode(&plaintext),
                "envelope_hex": hex::encode(&env[..envelope_len(n)]),
                "frame_hex": hex::encode(&frame),
                "format": s.format.name(),
                "partition_key": pkey,
                "events": s.events,
            });
            if s.format == PayloadFormat::Json {
                v["event_json"] = serde_json::from_slice(&plaintext).unwrap();
            }
            v
        })
        .collect()
}

fn invalid() -> Vec<Value> {
    let ev = vec![sample::w1_event(42)];
    let rk = to_rkyv_payload(&ev).to_vec();
    let pkey = partition_key_for_device(&ev[0].device_id);
    let hdr = |format, key_id, count| EnvelopeHeader::new(format, key_id, nonce(200), pkey, count);
    let good = sealed_frame(1, hdr(PayloadFormat::Rkyv, 1, 1), &rk, 7);
    let edit = |at: usize, bytes: &[u8]| {
        let mut f = good.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "frame shorter than its total_len",
            "truncated",
            good[..48].to_vec(),
        ),
        (
            "envelope declares 65 events, over events_per_envelope_max",
            "oversized",
            sealed_frame(1, hdr(PayloadFormat::Json, 1, 65), br#"{"x":1}"#, 7),
        ),
        ("magic is not SLCF", "bad_magic", edit(0, b"SLCX")),
        ("frame version 2", "bad_version", edit(4, &[2])),
        ("frame kind 9", "bad_kind", edit(5, &[9])),
        ("a reserved flag is set", "bad_flags", edit(6, &[1, 0])),
        (
            "total_len not a multiple of 16",
            "bad_length",
            edit(24, &40u32.to_le_bytes()),
        ),
        ("a ciphertext byte changed, CRC not updated", "bad_crc", {
            let mut f = good.clone();
            f[80] ^= 1;
            f
        }),
        (
            "frame says 2 envelopes but holds 1",
            "count_mismatch",
            recrc(edit(20, &2u32.to_le_bytes())),
        ),
        (
            "envelope payload format 3",
            "bad_format",
            sealed_frame(
                1,
                EnvelopeHeader {
                    format: 3,
                    ..hdr(PayloadFormat::Rkyv, 1, 1)
                },
                &rk,
                7,
            ),
        ),
        (
            "key id 99 is not in the keyring",
            "unknown_key",
            recrc(edit(32 + 4, &99u32.to_le_bytes())),
        ),
        ("a ciphertext byte changed, CRC updated", "bad_tag", {
            let mut f = good.clone();
            f[80] ^= 1;
            recrc(f)
        }),
        (
            "authentic plaintext that is not an archive of events",
            "invalid_archive",
            sealed_frame(1, hdr(PayloadFormat::Rkyv, 1, 1), &[0xff; 64], 7),
        ),
        (
            "JSON payload that is not UTF-8",
            "invalid_utf8",
            sealed_frame(
                2,
                hdr(PayloadFormat::Json, 2, 1),
                b"{\"event_id\": \"\xff\xfe\"}",
                7,
            ),
        ),
        (
            "envelope whose partition key maps to partition 7 of 64, in a frame for partition 8",
            "bad_partition",
            {
                let cipher = Backend::Ring.cipher(&vector_key(1));
                let header = hdr(PayloadFormat::Rkyv, 1, 1);
                let of_key = sluice_protocol::partition_for(header.partition_key, 64);
                let mut b = FrameBuilder::new(7, (of_key + 1) % 64);
                b.seal(&*cipher, header, &rk);
                b.finish().to_vec()
            },
        ),
        (
            "JSON event with a string event_id",
            "invalid_json",
            sealed_frame(
                2,
                hdr(PayloadFormat::Json, 2, 1),
                br#"{"event_id": "x"}"#,
                7,
            ),
        ),
    ];
    cases
        .into_iter()
        .map(|(why, error, frame)| {
            json!({ "name": format!("invalid_{error}"), "description": why,
                    "frame_hex": hex::encode(frame), "error": error })
        })
        .collect()
}

pub fn vectors() -> Value {
    let w1 = sample::w1_event(1);
    let mut v6 = sample::w1_event(2);
    v6.client_ip = ClientIp::V6([
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34,
    ]);
    let device = |n: u64| {
        let mut e = sample::w1_event(n);
        e.device_id = w1.device_id.clone();
        e
    };
    let mut escaped = sample::w1_event(5);
    escaped.event_type = "ui.nav \"quoted\"".into();
    escaped.attrs = vec![
        Attr {
            key: "path".into(),
            value: "C:\\Videos\\\u{e9}t\u{e9}\n".into(),
        },
        Attr {
            key: "emoji".into(),
            value: "\u{1f3ac}".into(),
        },
    ];
    let specs = vec![
        Spec {
            name: "rkyv_single_w1",
            key_id: 1,
            format: PayloadFormat::Rkyv,
            events: vec![w1.clone()],
        },
        Spec {
            name: "rkyv_single_ipv6",
            key_id: 2,
            format: PayloadFormat::Rkyv,
            events: vec![v6],
        },
        Spec {
            name: "rkyv_multi_3_events",
            key_id: 1,
            format: PayloadFormat::Rkyv,
            events: vec![w1.clone(), device(3), device(4)],
        },
        Spec {
            name: "json_single",
            key_id: 2,
            format: PayloadFormat::Json,
            events: vec![sample::w1_event(6)],
        },
        Spec {
            name: "json_multi_2_events",
            key_id: 1,
            format: PayloadFormat::Json,
            events: vec![device(7), device(8)],
        },
        Spec {
            name: "json_escaped_strings",
            key_id: 1,
            format: PayloadFormat::Json,
            events: vec![escaped],
        },
    ];
    let mut all = valid(specs);
    all.extend(invalid());
    Value::Array(all)
}

#[allow(dead_code)]
fn main() {
    println!("{}", serde_json::to_string_pretty(&vectors()).unwrap());
}
