//! `testdata/vectors.json` is what the generator writes, and every vector decodes as it says.

#[path = "../examples/gen_vectors.rs"]
mod generator;

use serde_json::Value;
use sluice_protocol::envelope::ENVELOPE_HEADER_BYTES;
use sluice_protocol::event::to_rkyv_payload;
use sluice_protocol::{
    AlignedBuf, Backend, EnvelopeHeader, Error, Event, FrameBuilder, Keyring, Limits, Opener,
    decode_batch, decode_frame_header, seal_envelope,
};

fn vectors() -> Vec<Value> {
    let text = include_str!("../testdata/vectors.json");
    serde_json::from_str::<Value>(text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn hex_of(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing")),
    )
    .unwrap()
}

fn keyring(backend: Backend) -> Keyring {
    let mut k = Keyring::new(backend);
    for v in vectors().iter().filter(|v| v.get("key_id").is_some()) {
        let id = v["key_id"].as_u64().unwrap() as u32;
        if !k.ids().contains(&id) {
            k.insert(id, hex_of(v, "key_hex").try_into().unwrap())
                .unwrap();
        }
    }
    k
}

#[test]
fn committed_file_matches_the_generator() {
    let generated = generator::vectors();
    assert_eq!(
        Value::Array(vectors()),
        generated,
        "regenerate: cargo run -p sluice-protocol --example gen_vectors > protocol/testdata/vectors.json"
    );
}

#[test]
fn valid_vectors_decode_and_reseal_exactly() {
    let valid: Vec<Value> = vectors()
        .into_iter()
        .filter(|v| v.get("error").is_none())
        .collect();
    assert!(valid.iter().filter(|v| v["format"] == "rkyv").count() >= 2);
    assert!(valid.iter().filter(|v| v["format"] == "json").count() >= 2);
    assert!(
        valid
            .iter()
            .any(|v| v["events"].as_array().unwrap().len() > 1)
    );
    for backend in Backend::available() {
        let mut opener = Opener::new(keyring(backend), Limits::default()).with_partitions(64);
        for v in &valid {
            let name = v["name"].as_str().unwrap();
            let (key_id, key) = (v["key_id"].as_u64().unwrap() as u32, hex_of(v, "key_hex"));
            let (aad, ct, pt) = (
                hex_of(v, "aad_hex"),
                hex_of(v, "ciphertext_hex"),
                hex_of(v, "plaintext_hex"),
            );
            let envelope = hex_of(v, "envelope_hex");
            let frame = hex_of(v, "frame_hex");
            let expected: Vec<Event> = serde_json::from_value::<Vec<Value>>(v["events"].clone())
                .unwrap()
                .into_iter()
                .map(|e| {
                    // JSON is how vectors carry events; decode them through the JSON payload path.
                    let doc = serde_json::to_vec(&e).unwrap();
                    one_json_event(&doc)
                })
                .collect();

            // The envelope is aad ‖ ciphertext ‖ tag ‖ zero padding.
            assert_eq!(&envelope[..ENVELOPE_HEADER_BYTES], &aad[..], "{name}: aad");
            assert_eq!(
                &envelope[ENVELOPE_HEADER_BYTES..][..ct.len()],
                &ct[..],
                "{name}: ciphertext"
            );
            assert!(
                envelope[ENVELOPE_HEADER_BYTES + ct.len()..]
                    .iter()
                    .all(|&b| b == 0)
            );
            let header = EnvelopeHeader::decode(aad[..].try_into().unwrap());
            assert_eq!(header.key_id, key_id, "{name}");
            assert_eq!(header.nonce[..], hex_of(v, "nonce_hex")[..], "{name}");
            assert_eq!(header.payload_len as usize, pt.len(), "{name}");

            // Decoding the frame yields the events; the rkyv plaintext is their archive.
            let (fh, got) =
                decode_batch(&frame, &mut opener).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.len(), 1, "{name}: one envelope per frame");
            assert_eq!(got[0].1, expected, "{name}: events");
            match v["format"].as_str().unwrap() {
                "rkyv" => assert_eq!(to_rkyv_payload(&expected).as_slice(), &pt[..], "{name}"),
                _ => assert_eq!(
                    serde_json::from_slice::<Value>(&pt).unwrap(),
                    v["event_json"],
                    "{name}"
                ),
            }

            // Sealing again with the same key and nonce gives the same envelope and frame.
            let cipher = backend.cipher(&key.try_into().unwrap());
            let mut again = AlignedBuf::new();
            seal_envelope(&mut again, &*cipher, header, &pt);
            assert_eq!(again.as_slice(), &envelope[..], "{name}: envelope reseals");
            let mut b = FrameBuilder::new(fh.seq, fh.partition);
            b.seal(&*cipher, header, &pt);
            assert_eq!(b.finish(), &frame[..], "{name}: frame rebuilds");
        }
    }
}

/// The events of a JSON document sealed alone in a frame, or the frame's error.
fn json_events(doc: &[u8]) -> Result<Vec<Event>, sluice_protocol::Error> {
    let mut k = Keyring::new(Backend::Ring);
    k.insert(1, [9; 32]).unwrap();
    let cipher = Backend::Ring.cipher(&[9; 32]);
    let mut b = FrameBuilder::new(0, 0);
    b.seal(
        &*cipher,
        EnvelopeHeader::new(sluice_protocol::PayloadFormat::Json, 1, [0; 12], 0, 1),
        doc,
    );
    let frame = b.finish().to_vec();
    let (_, mut envs) = decode_batch(&frame, &mut Opener::new(k, Limits::default()))?;
    Ok(envs.pop().unwrap().1)
}

fn one_json_event(doc: &[u8]) -> Event {
    json_events(doc).unwrap().pop().unwrap()
}

#[test]
fn invalid_vectors_fail_with_their_error() {
    let invalid: Vec<Value> = vectors()
        .into_iter()
        .filter(|v| v.get("error").is_some())
        .collect();
    let mut seen = Vec::new();
    for backend in Backend::available() {
        let mut opener = Opener::new(keyring(backend), Limits::default()).with_partitions(64);
        for v in &invalid {
            let frame = hex_of(v, "frame_hex");
            let want = v["error"].as_str().unwrap();
            let got = decode_batch(&frame, &mut opener).expect_err(v["name"].as_str().unwrap());
            assert_eq!(got.name(), want, "{}: {got}", v["name"]);
            seen.push(want.to_owned());
        }
    }
    // One vector per error kind; `misaligned` describes a caller's buffer, not bytes, so no
    // byte string can carry it.
    for name in Error::NAMES.iter().filter(|&&n| n != "misaligned") {
        assert!(
            seen.iter().any(|s| s == name),
            "no invalid vector for {name}"
        );
    }
    // The frame-level ones are caught by the header decoder alone where they concern it.
    let truncated = hex_of(
        invalid.iter().find(|v| v["error"] == "bad_magic").unwrap(),
        "frame_hex",
    );
    assert_eq!(
        decode_frame_header(&truncated, &Limits::default())
            .unwrap_err()
            .name(),
        "bad_magic"
    );
}

/// PROTOCOL.md §5.1: an `attrs` key given twice is kept twice, in order; any other field given
/// twice refuses the envelope.
#[test]
fn json_duplicates_are_defined() {
    let doc = br#"{"event_id":1,"ts_ms":2,"event_type":"a","app_version":"1.0.0","device_type_id":3,"device_id":"d","customer_id":4,"client_ip":"10.0.0.1","session_id":5,"attrs":{"k":"1","x":"2","k":"3"}}"#;
    let e = one_json_event(doc);
    let attrs: Vec<(&str, &str)> = e
        .attrs
        .iter()
        .map(|a| (a.key.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(attrs, [("k", "1"), ("x", "2"), ("k", "3")]);

    let twice = br#"{"event_id":1,"event_id":2,"ts_ms":2,"event_type":"a","app_version":"1.0.0","device_type_id":3,"device_id":"d","customer_id":4,"client_ip":"10.0.0.1","session_id":5}"#;
    let err = json_events(twice).unwrap_err();
    assert_eq!(err.name(), "invalid_json", "{err}");
}
