//! The workloads are deterministic, have WORKLOAD.md's shapes, and pass through the protocol.

use std::collections::HashMap;

use sluice_protocol::event::to_rkyv_payload;
use sluice_protocol::{
    Backend, EnvelopeHeader, FrameBuilder, Keyring, Limits, Opener, PayloadFormat, decode_batch,
    partition_key_for_device,
};
use sluice_workload::events::{EVENT_TYPES, W1_EVENT_BYTES, W2_EVENT_BYTES_MAX, app_versions};
use sluice_workload::{Upload, Workload, WorkloadGen};

const TS: u64 = 1_795_000_000_000;

fn uploads(workload: Workload, seed: u64, n: usize) -> Vec<Upload> {
    let mut g = WorkloadGen::new(workload, seed);
    (0..n).map(|i| g.next_upload(TS + i as u64)).collect()
}

#[test]
fn the_same_seed_gives_the_same_events() {
    for w in [Workload::W1, Workload::W2] {
        assert_eq!(uploads(w, 7, 500), uploads(w, 7, 500), "{w}");
        assert_ne!(uploads(w, 7, 50), uploads(w, 8, 50), "{w}");
    }
    // Pinned bytes: a change to any distribution, to the random stream or to the archive
    // format shows here, so "the same seed gives the same events" holds across builds.
    for (w, pinned) in [(Workload::W1, W1_PIN), (Workload::W2, W2_PIN)] {
        let digest = uploads(w, 1, 100)
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, u| {
                let bytes = to_rkyv_payload(&u.events);
                let h = bytes
                    .iter()
                    .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
                (h ^ u64::from(u.key_id)).wrapping_mul(0x0100_0000_01b3)
            });
        assert_eq!(digest, pinned, "{w}: {digest:#018x}");
    }
}

const W1_PIN: u64 = 0xe6eb_1ab0_9eba_2384;
const W2_PIN: u64 = 0xdaa3_2056_7da3_2b9c;

#[test]
fn w1_events_have_the_fields_and_size_workload_md_gives() {
    let versions = app_versions();
    assert_eq!(versions.len(), 30);
    assert_eq!(
        (versions[0].as_str(), versions[29].as_str()),
        ("5.0.0", "7.4.1")
    );
    let all = uploads(Workload::W1, 42, 20_000);
    let mut types: HashMap<&str, u32> = HashMap::new();
    let mut keys = [0u32; 9];
    for (i, u) in all.iter().enumerate() {
        assert_eq!(u.events.len(), 1);
        let e = &u.events[0];
        assert_eq!(e.event_id, i as u64 + 1, "sequential ids");
        assert_eq!(
            to_rkyv_payload(std::slice::from_ref(e)).len(),
            W1_EVENT_BYTES
        );
        assert!(EVENT_TYPES.contains(&e.event_type.as_str()));
        assert!(versions.contains(&e.app_version));
        assert!((1..=500).contains(&e.device_type_id));
        assert!((1..=1_000_000).contains(&e.customer_id));
        assert_eq!(e.device_id.len(), 24);
        assert!(e.device_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(u.partition_key, partition_key_for_device(&e.device_id));
        *types.entry(&e.event_type).or_default() += 1;
        keys[u.key_id as usize] += 1;
    }
    // Zipf s=1.0: rank 1 is about twice rank 2, and every key id 1..=8 takes about 1/8.
    let (r1, r2) = (types[EVENT_TYPES[0]] as f64, types[EVENT_TYPES[1]] as f64);
    assert!((1.7..2.3).contains(&(r1 / r2)), "rank1/rank2 = {}", r1 / r2);
    assert_eq!(keys[0], 0);
    assert!(
        keys[1..].iter().all(|&k| (2_200..2_800).contains(&k)),
        "{keys:?}"
    );
}

#[test]
fn w2_envelopes_hold_one_device_and_log_normal_sizes() {
    let all = uploads(Workload::W2, 3, 6_000);
    let mut counts = [0u32; 9];
    let mut sizes = Vec::new();
    for u in &all {
        counts[u.events.len()] += 1;
        assert!(
            u.events
                .iter()
                .all(|e| e.device_id == u.events[0].device_id)
        );
        for e in &u.events {
            let size = to_rkyv_payload(std::slice::from_ref(e)).len();
            assert!(size <= W2_EVENT_BYTES_MAX);
            sizes.push(size);
        }
    }
    assert_eq!(counts[0], 0);
    assert!(counts[1..].iter().all(|&c| c > 500), "{counts:?}");
    sizes.sort_unstable();
    let at = |q: f64| sizes[((sizes.len() - 1) as f64 * q) as usize];
    assert!((460..=560).contains(&at(0.5)), "median {}", at(0.5));
    assert!((3_300..=5_000).contains(&at(0.99)), "p99 {}", at(0.99));
}

#[test]
fn uploads_seal_and_open_through_the_protocol() {
    let mut keys = Keyring::new(Backend::default());
    for id in 1..=8 {
        keys.insert(id, [id as u8; 32]).unwrap();
    }
    let mut opener = Opener::new(keys.clone(), Limits::default());
    for (i, u) in uploads(Workload::W2, 9, 200).into_iter().enumerate() {
        let mut b = FrameBuilder::new(i as u64, 0);
        let header = EnvelopeHeader::new(
            PayloadFormat::Rkyv,
            u.key_id,
            [i as u8; 12],
            u.partition_key,
            u.events.len() as u16,
        );
        b.seal(
            keys.get(u.key_id).unwrap(),
            header,
            &to_rkyv_payload(&u.events),
        );
        let (_, envs) = decode_batch(b.finish(), &mut opener).unwrap();
        assert_eq!(envs[0].1, u.events);
    }
}
