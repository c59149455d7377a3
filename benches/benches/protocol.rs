//! Wire-protocol stages, one core: AEAD seal and open per backend and size, opening a W1
//! envelope (parse, decrypt, validate), validated access to a W1 event, batch frame decode.
//! W1 events come from the load generator's seeded W1 workload (seed 1).
//!
//! `cargo bench -p sluice-benches --bench protocol`. Issue targets on the reference 2-core
//! Zen 4: `aead/open/ring/512` ≤ 150 ns, `event/access/w1` ≤ 50 ns.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_protocol::event::{access_events, to_rkyv_payload};
use sluice_protocol::{
    AlignedBuf, Backend, BatchFrame, EnvelopeHeader, FrameBuilder, Keyring, Limits, Opener,
    PayloadFormat,
};
use sluice_workload::events::W1_EVENT_BYTES;
use sluice_workload::{Workload, WorkloadGen};

const KEY: [u8; 32] = [7; 32];
const NONCE: [u8; 12] = [1; 12];
const AAD: [u8; 32] = [2; 32];

fn aead(c: &mut Criterion) {
    sluice_benches::pin_to_one_core();
    for op in ["seal", "open"] {
        let mut g = c.benchmark_group(format!("aead/{op}"));
        for backend in Backend::available() {
            let cipher = backend.cipher(&KEY);
            for size in [128usize, 512, 1024, 4096] {
                g.throughput(Throughput::Bytes(size as u64));
                let plaintext = vec![0x5a; size];
                let mut sealed = plaintext.clone();
                let tag = cipher.seal_in_place(&NONCE, &AAD, &mut sealed);
                let mut check = sealed.clone();
                cipher
                    .open_in_place(&NONCE, &AAD, &mut check, &tag)
                    .expect("opens");
                assert_eq!(check, plaintext);
                let id = format!("{}/{size}", backend.name());
                if op == "seal" {
                    let mut buf = plaintext.clone();
                    // Sealing in place over and over re-encrypts the same buffer: same work.
                    g.bench_function(id, |b| {
                        b.iter(|| cipher.seal_in_place(&NONCE, &AAD, black_box(&mut buf)))
                    });
                } else {
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            timed_on_copies(&sealed, iters, |buf| {
                                cipher
                                    .open_in_place(&NONCE, &AAD, buf, &tag)
                                    .expect("opens")
                            })
                        })
                    });
                }
            }
        }
        g.finish();
    }
}

/// Runs `op` on `iters` fresh copies of `pristine`, timing only `op`. Copies are made, untimed,
/// in rounds of [`ROUND`] 16-byte aligned buffers that together stay in L1, as a shard's
/// receive buffer of freshly read frames does.
fn timed_on_copies(pristine: &[u8], iters: u64, mut op: impl FnMut(&mut [u8])) -> Duration {
    const ROUND: usize = 16;
    let mut bufs: Vec<AlignedBuf> = (0..ROUND)
        .map(|_| {
            let mut b = AlignedBuf::new();
            b.extend_from_slice(pristine);
            b
        })
        .collect();
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(ROUND);
        for b in &mut bufs[..n] {
            b.copy_from_slice(pristine);
        }
        let start = Instant::now();
        for b in &mut bufs[..n] {
            op(black_box(b));
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

/// The rkyv plaintexts of the first `n` W1 uploads of seed 1.
fn w1_plaintexts(n: usize) -> Vec<AlignedBuf> {
    let mut g = WorkloadGen::new(Workload::W1, 1);
    (0..n)
        .map(|i| {
            let p = to_rkyv_payload(&g.next_upload(1_795_000_000_000 + i as u64).events);
            assert_eq!(p.len(), W1_EVENT_BYTES);
            p
        })
        .collect()
}

/// One W1 frame: `n` envelopes of one 512-byte W1 event each.
fn w1_frame(n: u64) -> AlignedBuf {
    let cipher = Backend::Ring.cipher(&KEY);
    let mut b = FrameBuilder::new(1, 0);
    for (i, plaintext) in (0..n).zip(w1_plaintexts(n as usize)) {
        let mut nonce = NONCE;
        nonce[..8].copy_from_slice(&i.to_le_bytes());
        b.seal(
            &*cipher,
            EnvelopeHeader::new(PayloadFormat::Rkyv, 1, nonce, i, 1),
            &plaintext,
        );
    }
    let mut out = AlignedBuf::new();
    out.extend_from_slice(b.finish());
    out
}

fn envelope_and_event(c: &mut Criterion) {
    sluice_benches::pin_to_one_core();
    // Round robin over 64 W1 events, so string lengths and values vary as in the workload.
    let plaintexts = w1_plaintexts(64);
    for p in &plaintexts {
        assert_eq!(access_events(p).unwrap().len(), 1);
    }
    let mut i = 0;
    c.bench_function("event/access/w1", |b| {
        b.iter(|| {
            i = (i + 1) % plaintexts.len();
            access_events(black_box(&plaintexts[i]))
                .expect("valid")
                .len()
        })
    });
    c.bench_function("event/access+view/w1", |b| {
        b.iter(|| {
            i = (i + 1) % plaintexts.len();
            let events = access_events(black_box(&plaintexts[i])).expect("valid");
            sluice_protocol::EventView::from_archived(&events[0]).customer_id
        })
    });

    // A whole envelope through the opener: parse its frame, decrypt in place, validate.
    let frame = w1_frame(1);
    for backend in Backend::available() {
        let mut keys = Keyring::new(backend);
        keys.insert(1, KEY).unwrap();
        let mut opener = Opener::new(keys, Limits::default());
        c.bench_function(&format!("envelope/open/{}/w1", backend.name()), |b| {
            b.iter_custom(|iters| {
                timed_on_copies(&frame, iters, |buf| {
                    let frame = BatchFrame::parse(buf, &Limits::default()).expect("valid");
                    let env = frame.into_envelopes().next().expect("one envelope");
                    let opened = opener.open(env).expect("opens");
                    assert_eq!(opened.payload.len(), 1);
                })
            })
        });
    }
}

fn frame_decode(c: &mut Criterion) {
    sluice_benches::pin_to_one_core();
    let mut g = c.benchmark_group("frame/decode");
    for n in [1u64, 64] {
        let mut frame = w1_frame(n);
        g.throughput(Throughput::Elements(n));
        assert_eq!(
            BatchFrame::parse(&mut frame, &Limits::default())
                .unwrap()
                .header
                .count,
            n as u32
        );
        g.bench_function(format!("w1x{n}"), |b| {
            b.iter(|| {
                BatchFrame::parse(black_box(&mut frame), &Limits::default())
                    .expect("valid")
                    .header
                    .count
            })
        });
    }
    g.finish();
}

criterion_group!(benches, aead, envelope_and_event, frame_decode);
criterion_main!(benches);
