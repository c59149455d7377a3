//! Driving a Kafka topic: `loadgen run --kafka BROKERS --topic T`.
//!
//! The same seeded pool of sealed envelopes as a TCP run (`build_pool`), produced one
//! envelope per message: the key is the envelope's partition key (8 bytes, big-endian), the
//! value the envelope as PROTOCOL.md section 4 lays it out, padding included. librdkafka's
//! partitioner places each key in a partition, so a device's envelopes stay in order.
//! Messages go out with `acks = all` from the idempotent producer; an event counts as acked
//! once the broker confirmed its message. Open loop as for TCP: at `--rate N` message k is
//! due at `t0 + k · interval` and its latency runs from then to its confirmation; at
//! `--rate max` from its send. A run longer than its pool sends the pool again (the same
//! envelopes: the engine sees duplicate event ids).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use sluice_protocol::EnvelopeHeader;
use sluice_protocol::envelope::ENVELOPE_HEADER_BYTES;
use sluice_protocol::frame::FRAME_HEADER_BYTES;

use crate::client::{Latency, Report, RunOpts, build_pool, progress_line, run_prefix};

/// Partitions the pool's frames are grouped by before they are cut into messages (it
/// changes nothing a consumer sees).
const POOL_PARTITIONS: u32 = 64;

/// Confirmations: counted, and their latency recorded.
struct Confirm {
    acked: AtomicU64,
    failed: AtomicU64,
    messages_acked: AtomicU64,
    messages_failed: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    interval: Mutex<Histogram<u64>>,
    last: Mutex<Instant>,
    first_error: Mutex<Option<String>>,
}

struct Ctx(Arc<Confirm>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    /// When the message was due, and its events.
    type DeliveryOpaque = Box<(Instant, u32)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (due, events) = *opaque;
        let c = &self.0;
        let now = Instant::now();
        match result {
            Ok(_) => {
                c.acked.fetch_add(u64::from(events), Ordering::Relaxed);
                c.messages_acked.fetch_add(1, Ordering::Relaxed);
                let us = now.saturating_duration_since(due).as_micros() as u64;
                c.hist.lock().expect("hist").saturating_record(us.max(1));
                c.interval
                    .lock()
                    .expect("hist")
                    .saturating_record(us.max(1));
            }
            Err((e, m)) => {
                c.failed.fetch_add(u64::from(events), Ordering::Relaxed);
                c.messages_failed.fetch_add(1, Ordering::Relaxed);
                let mut first = c.first_error.lock().expect("error");
                if first.is_none() {
                    *first = Some(format!("partition {}: {e}", m.partition()));
                }
            }
        }
        *c.last.lock().expect("last") = now;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// A sealed envelope and its events.
struct Msg {
    key: [u8; 8],
    value: Vec<u8>,
    events: u32,
}

/// The pool's frames cut into one message per envelope.
fn messages(opts: &RunOpts, pool_events: usize, prefix: u32) -> Vec<Msg> {
    let pool = build_pool(
        opts.workload,
        opts.seed,
        pool_events,
        opts.batch_envelopes,
        POOL_PARTITIONS,
        &opts.keys,
        prefix,
    );
    let mut out = Vec::new();
    for f in pool {
        let frame = &f.bytes[..];
        let mut at = FRAME_HEADER_BYTES;
        while at < frame.len() {
            let head: &[u8; ENVELOPE_HEADER_BYTES] = frame[at..at + ENVELOPE_HEADER_BYTES]
                .try_into()
                .expect("32 bytes");
            let h = EnvelopeHeader::decode(head);
            let len = h.envelope_len();
            out.push(Msg {
                key: h.partition_key.to_be_bytes(),
                value: frame[at..at + len].to_vec(),
                events: u32::from(h.event_count),
            });
            at += len;
        }
    }
    out
}

/// Produces the workload to `topic` at `brokers` and reports as a TCP run does: a batch is
/// one message here.
pub fn run(opts: &RunOpts, brokers: &str, topic: &str) -> Result<Report, String> {
    let pool_events = opts.events.map_or(opts.pool_events, |n| n as usize);
    let msgs = messages(opts, pool_events, run_prefix());
    if msgs.is_empty() {
        return Err("the pool is empty".into());
    }
    let confirm = Arc::new(Confirm {
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        messages_acked: AtomicU64::new(0),
        messages_failed: AtomicU64::new(0),
        hist: Mutex::new(histogram()),
        interval: Mutex::new(histogram()),
        last: Mutex::new(Instant::now()),
        first_error: Mutex::new(None),
    });
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "60000")
        .create_with_context(Ctx(confirm.clone()))
        .map_err(|e| format!("kafka {brokers}: {e}"))?;
    let events_per_msg = pool_events as f64 / msgs.len() as f64;
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(events_per_msg / r.max(1.0)));
    let t0 = Instant::now() + Duration::from_millis(20);
    let deadline = t0 + opts.duration;
    *confirm.last.lock().expect("last") = t0;
    let mut sent = 0u64;
    let mut k = 0usize;
    let mut tick = t0 + Duration::from_secs(1);
    let mut last_acked = 0;
    let mut timeline = Vec::new();
    let stop = opts.stop.clone();
    loop {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) || Instant::now() >= deadline {
            break;
        }
        if opts.events.is_some() && k == msgs.len() {
            break;
        }
        let due = match interval {
            Some(iv) => {
                let due = t0 + iv.mul_f64(k as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                due
            }
            None => Instant::now(),
        };
        let m = &msgs[k % msgs.len()];
        let mut record = BaseRecord::with_opaque_to(topic, Box::new((due, m.events)))
            .key(&m.key[..])
            .payload(&m.value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(format!("kafka {brokers}: produce to {topic}: {e}")),
            }
        }
        sent += u64::from(m.events);
        k += 1;
        if Instant::now() >= tick {
            let acked = confirm.acked.load(Ordering::Relaxed);
            timeline.push(progress_line(
                tick - t0,
                acked - last_acked,
                acked,
                &mut confirm.interval.lock().expect("hist"),
                confirm.failed.load(Ordering::Relaxed),
                opts.progress,
            ));
            last_acked = acked;
            tick += Duration::from_secs(1);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| format!("kafka {brokers}: flush: {e}"))?;
    drop(producer);
    if let Some(e) = confirm.first_error.lock().expect("error").as_ref() {
        eprintln!("loadgen: kafka: a message failed: {e}");
    }
    let last = *confirm.last.lock().expect("last");
    let duration_s = last.saturating_duration_since(t0).as_secs_f64().max(1e-9);
    let acked = confirm.acked.load(Ordering::Relaxed);
    let hist = confirm.hist.lock().expect("hist");
    Ok(Report {
        workload: opts.workload.to_string(),
        seed: opts.seed,
        target: format!("kafka://{brokers}/{topic}"),
        rate: opts.rate.map_or("max".into(), |r| format!("{r}")),
        connections: 1,
        batch_envelopes: 1,
        events_sent: sent,
        events_acked: acked,
        events_failed: confirm.failed.load(Ordering::Relaxed),
        envelopes_dead_lettered: 0,
        batches_acked: confirm.messages_acked.load(Ordering::Relaxed),
        batches_failed: confirm.messages_failed.load(Ordering::Relaxed),
        duration_s,
        events_per_sec: acked as f64 / duration_s,
        latency_us: Latency::of(&hist),
        pool_events: pool_events as u64,
        frames_resealed: 0,
        timeline,
    })
}
