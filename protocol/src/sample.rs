//! W1-shaped sample events for tests, benches, test vectors and fuzz seeds.
//!
//! These are not the W1 workload (the load generator owns its seeded distributions); they have
//! W1's fields and sizes: alone in an envelope, each event's rkyv plaintext is exactly
//! [`W1_PLAINTEXT_BYTES`] long, padded through a `pad` attribute as WORKLOAD.md describes.

use crate::AlignedBuf;
use crate::event::{Attr, ClientIp, Event, to_rkyv_payload_in};

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
    let mut scratch = AlignedBuf::new();
    pad_to(&mut e, W1_PLAINTEXT_BYTES, &mut scratch);
    assert_eq!(scratch.len(), W1_PLAINTEXT_BYTES);
    e
}

/// Sets the last attribute's value so that the event, archived alone, is `target` bytes, or
/// the largest size not over it that padding can reach (sizes step by 8), or the smallest size
/// when `target` is below it.
pub fn pad_to(e: &mut Event, target: usize, scratch: &mut AlignedBuf) {
    let pad = e.attrs.len() - 1;
    let mut size_with = |e: &mut Event, len: usize| {
        e.attrs[pad].value.clear();
        e.attrs[pad].value.extend(std::iter::repeat_n('p', len));
        to_rkyv_payload_in(std::slice::from_ref(e), scratch);
        scratch.len()
    };
    let smallest = size_with(e, 0);
    if target <= smallest {
        return;
    }
    // Out of line (over 8 bytes) every byte of padding adds a byte before the 8-aligned event
    // array, so one correction from a first guess lands within the alignment step.
    let mut len = (target - smallest).max(9);
    for _ in 0..4 {
        let size = size_with(e, len);
        if size == target || (size < target && target - size < 8) {
            return;
        }
        len = (len as isize + target as isize - size as isize).max(9) as usize;
    }
    // Could not land within a step (tiny targets near the inline limit): take a size under it.
    while size_with(e, len) > target && len > 9 {
        len -= 1;
    }
}
