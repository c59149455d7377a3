//! sluice's string validator (`ArchivedStr`) accepts exactly what rkyv's own `ArchivedString`
//! check accepts, and so `access_events` exactly what rkyv accepts. The oracle is a mirror of
//! `Event` with plain `String` fields, which archives to the same bytes and is validated by
//! rkyv alone.

use proptest::prelude::*;
use rkyv::rancor::Failure;
use rkyv::vec::ArchivedVec;
use sluice_protocol::event::{access_events, to_rkyv_payload};
use sluice_protocol::{AlignedBuf, Attr, ClientIp, Event, sample};

#[derive(rkyv::Archive, rkyv::Serialize)]
struct RefEvent {
    event_id: u64,
    ts_ms: u64,
    event_type: String,
    app_version: String,
    device_type_id: u32,
    device_id: String,
    customer_id: u64,
    client_ip: ClientIp,
    session_id: u64,
    attrs: Vec<RefAttr>,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct RefAttr {
    key: String,
    value: String,
}

fn mirror(e: &Event) -> RefEvent {
    RefEvent {
        event_id: e.event_id,
        ts_ms: e.ts_ms,
        event_type: e.event_type.clone(),
        app_version: e.app_version.clone(),
        device_type_id: e.device_type_id,
        device_id: e.device_id.clone(),
        customer_id: e.customer_id,
        client_ip: e.client_ip,
        session_id: e.session_id,
        attrs: e
            .attrs
            .iter()
            .map(|a| RefAttr {
                key: a.key.clone(),
                value: a.value.clone(),
            })
            .collect(),
    }
}

/// Events whose strings are inline and out of line, ASCII and not, empty and 8 bytes long.
fn events() -> Vec<Event> {
    let mut odd = sample::w1_event(4);
    odd.event_type = "ü".into();
    odd.app_version = "7.4.1.x.".into();
    odd.device_id = "é".repeat(13);
    odd.attrs = vec![
        Attr {
            key: String::new(),
            value: "\u{1f3ac} clap".into(),
        },
        Attr {
            key: "12345678".into(),
            value: "123456789".into(),
        },
    ];
    let mut v6 = sample::w1_event(2);
    v6.client_ip = ClientIp::V6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    v6.attrs.truncate(1);
    vec![sample::w1_event(1), odd, v6]
}

fn aligned(bytes: &[u8]) -> AlignedBuf {
    let mut b = AlignedBuf::new();
    b.extend_from_slice(bytes);
    b
}

fn rkyv_accepts(bytes: &AlignedBuf) -> bool {
    rkyv::api::low::access::<ArchivedVec<ArchivedRefEvent>, Failure>(bytes).is_ok()
}

#[test]
fn the_mirror_archives_to_the_same_bytes() {
    let events = events();
    let mirrored: Vec<RefEvent> = events.iter().map(mirror).collect();
    let theirs = rkyv::to_bytes::<rkyv::rancor::Error>(&mirrored).unwrap();
    assert_eq!(to_rkyv_payload(&events).as_slice(), theirs.as_slice());
    assert!(rkyv_accepts(&aligned(&theirs)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn accepts_exactly_what_rkyv_accepts(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        near_end in any::<bool>(),
        resize in prop_oneof![6 => Just(0i32), 1 => -24i32..24],
    ) {
        let pristine = to_rkyv_payload(&events());
        let mut bytes = pristine.to_vec();
        // Some cases cut bytes off the end, or add some: the root is then elsewhere.
        bytes.resize((bytes.len() as i32 + resize) as usize, 0);
        // Half the cases edit only the tail, where the events' string reprs and vectors lie.
        let from = if near_end { bytes.len() - 3 * 96 - 8 } else { 0 };
        for (i, b) in edits {
            let i = from + i.index(bytes.len() - from);
            bytes[i] = b;
        }
        let bytes = aligned(&bytes);
        let ours = access_events(&bytes);
        prop_assert_eq!(ours.is_ok(), rkyv_accepts(&bytes));
        if let Ok(events) = ours {
            for e in events {
                // Accepted strings are UTF-8 (as_str would be undefined behaviour otherwise).
                prop_assert!(std::str::from_utf8(e.device_id.as_bytes()).is_ok());
            }
        }
    }
}

#[test]
fn targeted_edits_agree_too() {
    let pristine = to_rkyv_payload(&events()).to_vec();
    let root = pristine.len() - 8;
    let offset = i32::from_le_bytes(pristine[root..root + 4].try_into().unwrap());
    let event = |i: usize| (root as isize + offset as isize) as usize + 96 * i;
    let attrs_offset =
        |i: usize| i32::from_le_bytes(pristine[event(i) + 88..][..4].try_into().unwrap());
    let cases: Vec<(&str, usize, Vec<u8>, bool)> = vec![
        (
            "inline app_version gets a continuation byte",
            event(0) + 24 + 1,
            vec![0x80],
            false,
        ),
        (
            "inline 'ü' loses its second byte",
            event(1) + 16 + 1,
            vec![b'A'],
            false,
        ),
        (
            "out-of-line device_id claims 8 bytes",
            event(0) + 36,
            vec![0x88, 0, 0, 0],
            false,
        ),
        (
            "out-of-line device_id claims 9 bytes",
            event(0) + 36,
            vec![0x89, 0, 0, 0],
            true,
        ),
        (
            "inline app_version loses its terminator",
            event(0) + 24 + 5,
            vec![b'1', b'2', b'3'],
            true,
        ),
        (
            "inline app_version gets a 0xfe",
            event(0) + 24 + 2,
            vec![0xfe],
            false,
        ),
        ("an IPv4 address tagged IPv6", event(0) + 56, vec![1], true),
        ("an address tagged 2", event(2) + 56, vec![2], false),
        ("an address tagged 0xff", event(1) + 56, vec![0xff], false),
        ("one event more than there are", root + 4, vec![4], false),
        ("one event fewer", root + 4, vec![2], true),
        ("no events", root + 4, vec![0], true),
        (
            "the events 8 bytes later (over the root)",
            root,
            (offset + 8).to_le_bytes().to_vec(),
            false,
        ),
        (
            "the events 4 bytes later (misaligned)",
            root,
            (offset + 4).to_le_bytes().to_vec(),
            false,
        ),
        ("an attribute more", event(0) + 92, vec![4], false),
        ("an attribute fewer", event(0) + 92, vec![2], true),
        ("no attributes", event(1) + 92, vec![0], true),
        (
            "attributes 2 bytes later (misaligned)",
            event(0) + 88,
            (attrs_offset(0) + 2).to_le_bytes().to_vec(),
            false,
        ),
        (
            "the first event's attributes pointing at the second's",
            event(0) + 88,
            (attrs_offset(1) + 96).to_le_bytes().to_vec(),
            false,
        ),
        (
            "the last event's attributes pointing at the first's (out of order)",
            event(2) + 88,
            (attrs_offset(0) - 2 * 96).to_le_bytes().to_vec(),
            false,
        ),
        (
            "the events pointing before the buffer",
            root,
            (-(root as i32) - 8).to_le_bytes().to_vec(),
            false,
        ),
    ];
    for (what, at, bytes, accepted) in cases {
        let mut edited = pristine.clone();
        edited[at..at + bytes.len()].copy_from_slice(&bytes);
        let edited = aligned(&edited);
        assert_eq!(access_events(&edited).is_ok(), accepted, "ours: {what}");
        assert_eq!(rkyv_accepts(&edited), accepted, "rkyv: {what}");
    }
}
