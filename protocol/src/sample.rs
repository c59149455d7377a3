//! W1-shaped sample events for tests, benches, test vectors and fuzz seeds.
//!
//! These are not the W1 workload (the load generator owns its seeded distributions); they have
//! W1's fields and sizes: alone in an envelope, each event's rkyv plaintext is exactly
//! [`W1_PLAINTEXT_BYTES`] long, padded through a `pad` attribute as WORKLOAD.md describes.

use crate::event::{Attr, ClientIp, Event, to_rkyv_payload};

/// The plaintext size of one W1 event, in bytes.
pub const W1_PLAINTEXT_BYTES: usize = 512;

const EVENT_TYPES: [&str; 8] = [
    "playback.start",
    "playback.stop",
    "ui.nav",
    "error.drm",
    "search.query",
    "playback.heartbeat",
    "profile.switch",
    "ui.impression",
];

/// The `n`th sample event: deterministic in `n`, with a 512-byte rkyv plaintext.
pub fn w1_event(n: u64) -> Event {
    let mut e = Event {
        event_id: n,
        ts_ms: 1_795_000_000_000 + n * 7,
        event_type: EVENT_TYPES[(n % EVENT_TYPES.len() as u64) as usize].to_owned(),
        app_version: format!("{}.{}.{}", 5 + n % 3, n % 5, n % 10),
        device_type_id: (n % 500) as u32 + 1,
        device_id: format!(
            "{:024x}",
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15) as u128 * 0x1_0001
        ),
        customer_id: n % 1_000_000 + 1,
        client_ip: ClientIp::V4([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]),
        session_id: n.wrapping_mul(0xd1b5_4a32_d192_ed03),
        attrs: vec![
            Attr {
                key: "net".into(),
                value: "wifi".into(),
            },
            Attr {
                key: "locale".into(),
                value: "en-US".into(),
            },
            Attr {
                key: "pad".into(),
                value: String::new(),
            },
        ],
    };
    pad_to(&mut e, W1_PLAINTEXT_BYTES);
    e
}

/// Grows the `pad` attribute until the event's single-event rkyv plaintext is `target` bytes.
fn pad_to(e: &mut Event, target: usize) {
    let pad = e.attrs.len() - 1;
    for len in 0..target {
        e.attrs[pad].value = "p".repeat(len);
        let size = to_rkyv_payload(std::slice::from_ref(e)).len();
        if size == target {
            return;
        }
        assert!(size < target, "no padding gives exactly {target} bytes");
    }
}
