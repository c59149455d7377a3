//! What handing one record to Kafka costs the shard's reactor, both ways a shard could do it
//! (tuning.md, "Why the shard drives the producer itself"), one core:
//!
//! - `kafka/enqueue/produce`: what sluice does. The delivery task calls librdkafka's produce
//!   (`FutureProducer::send_result`) on the shard's thread; librdkafka copies the record into
//!   its queue, and its own threads batch, compress and send it.
//! - `kafka/enqueue/channel`: the shard's side of the other design, a producer thread of our
//!   own fed by a bounded channel: the record copied into the chunk the shard hands over, one
//!   channel send per chunk of 1,000 records. That thread then pays the produce call above on
//!   another core, plus a wake-up per chunk.
//!
//! Records are W1's average JSON record (327 bytes) with an 8-byte key. The broker address is
//! unreachable, so librdkafka only queues: the bench times the call, not the network (the
//! queue is purged between timed runs).
//!
//! `cargo bench -p sluice-benches --bench kafka`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rdkafka::producer::{FutureRecord, Producer as _, PurgeConfig};

const RECORD_BYTES: usize = 327;
const CHUNK_RECORDS: usize = 1_000;

fn producer() -> sluice::sink::kafka::Producer {
    let raw: sluice::config::raw::RawSink = toml::from_str(
        r#"kind = "kafka"
brokers = "127.0.0.1:1"
client = { "queue.buffering.max.messages" = "10000000", "queue.buffering.max.kbytes" = "2097151", "message.timeout.ms" = "300000" }"#,
    )
    .expect("a sink");
    let spec = sluice::sink::kafka::sink_spec("bench", &raw).expect("a sink spec");
    sluice::sink::kafka::producer("bench", &spec).expect("a producer")
}

fn enqueue(c: &mut Criterion) {
    sluice_benches::pin_to_one_core();
    let payload = vec![b'x'; RECORD_BYTES];
    let mut g = c.benchmark_group("kafka/enqueue");
    g.throughput(Throughput::Elements(1));
    let p = producer();
    g.bench_function("produce", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(100_000);
                let t = Instant::now();
                for i in 0..n {
                    let key = i.to_be_bytes();
                    let record = FutureRecord::to("bench")
                        .key(&key[..])
                        .payload(&payload[..]);
                    let delivery = p.send_result(record).map_err(|(e, _)| e).expect("queued");
                    black_box(delivery);
                }
                spent += t.elapsed();
                p.purge(PurgeConfig::default().queue().inflight());
                left -= n;
            }
            spent
        })
    });
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let drain = std::thread::spawn(move || {
        for chunk in rx {
            black_box(chunk);
        }
    });
    g.bench_function("channel", |b| {
        let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_RECORDS * (RECORD_BYTES + 16));
        b.iter(|| {
            chunk.extend_from_slice(&black_box(7u64).to_be_bytes());
            chunk.extend_from_slice(&payload);
            if chunk.len() >= CHUNK_RECORDS * (RECORD_BYTES + 8) {
                let full = std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK_RECORDS * (RECORD_BYTES + 16)),
                );
                tx.send(full).expect("the drain runs");
            }
        })
    });
    g.finish();
    drop(tx);
    drain.join().expect("drained");
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = enqueue
}
criterion_main!(benches);
