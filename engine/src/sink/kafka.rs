//! Network sinks and the Kafka topic sink's settings: `[[streams.NAME.sink]]` checked into a
//! comparable [`SinkSpec`], and the librdkafka producer settings it stands for.
//!
//! Every message is produced with `acks = all` by the idempotent producer, so a message the
//! broker confirmed is in every in-sync replica, once per send; the sink moves its cursor
//! only past confirmed messages (see `runtime/deliver.rs`). Neither can be changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::channel::oneshot;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::NaiveRuntime;

use super::log::Retention;
use crate::config::raw::RawSink;

/// What a sink does when its disk backlog reaches `backlog_bytes_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// The shard takes no new batch until the backlog is below the bound again: ingest slows
    /// (TCP windows fill), nothing is lost.
    Block,
    /// The oldest undelivered sealed segments are given up, their records counted.
    DropOldest,
}

impl WhenFull {
    pub fn name(self) -> &'static str {
        match self {
            WhenFull::Block => "block",
            WhenFull::DropOldest => "drop_oldest",
        }
    }
}

/// A message batch's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Who calls librdkafka's produce for a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handing {
    /// Each shard's delivery task, on the shard's reactor (about 2 µs a record).
    Shard,
    /// One thread per sink per process: shards hand it chunks of records over a bounded
    /// channel (a copy of each record, tens of ns), and it makes the produce calls.
    Thread,
}

impl Handing {
    pub fn name(self) -> &'static str {
        match self {
            Handing::Shard => "shard",
            Handing::Thread => "thread",
        }
    }
}

/// A Kafka topic sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSpec {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    pub linger_ms: u64,
    pub batch_bytes_max: u64,
    pub compression: Compression,
    pub producer: Handing,
    /// Further librdkafka settings.
    pub client: BTreeMap<String, String>,
}

/// One network sink of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub name: String,
    pub backlog_bytes_max: u64,
    pub when_full: WhenFull,
    pub kafka: KafkaSpec,
}

/// librdkafka settings a sink fixes: what makes delivery at least once and in order.
const FIXED: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "bootstrap.servers",
    "metadata.broker.list",
];

/// Checks a `[[streams.NAME.sink]]` of stream `stream`.
pub fn sink_spec(stream: &str, raw: &RawSink) -> Result<SinkSpec, String> {
    if raw.kind != "kafka" {
        return Err(format!("kind {:?}: the sink kinds are \"kafka\"", raw.kind));
    }
    let name = raw.name.clone().unwrap_or_else(|| raw.kind.clone());
    if !crate::config::valid_name(&name) {
        return Err(format!("name {name:?}: a sink name is 1-64 of [a-z0-9_-]"));
    }
    let when_full = match raw.when_full.as_str() {
        "block" => WhenFull::Block,
        "drop_oldest" => WhenFull::DropOldest,
        w => return Err(format!("when_full {w:?}: \"block\" or \"drop_oldest\"")),
    };
    let compression = match raw.compression.as_str() {
        "none" => Compression::None,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        c => return Err(format!("compression {c:?}: \"lz4\", \"zstd\" or \"none\"")),
    };
    let producer = match raw.producer.as_str() {
        "shard" => Handing::Shard,
        "thread" => Handing::Thread,
        p => return Err(format!("producer {p:?}: \"shard\" or \"thread\"")),
    };
    let brokers = raw
        .brokers
        .clone()
        .filter(|b| !b.trim().is_empty())
        .ok_or("brokers: the brokers to bootstrap from, \"host:port[,host:port]\"")?;
    if let Some(k) = raw.client.keys().find(|k| FIXED.contains(&k.as_str())) {
        return Err(format!(
            "client.{k}: set by the sink (acks = all, the idempotent producer, brokers)"
        ));
    }
    if raw.batch_bytes_max == 0 {
        return Err("batch_bytes_max must be above 0".into());
    }
    Ok(SinkSpec {
        name,
        backlog_bytes_max: raw.backlog_bytes_max,
        when_full,
        kafka: KafkaSpec {
            brokers,
            topic: raw.topic.clone().unwrap_or_else(|| stream.to_owned()),
            linger_ms: raw.linger_ms,
            batch_bytes_max: raw.batch_bytes_max,
            compression,
            producer,
            client: raw.client.clone(),
        },
    })
}

/// Checks a stream's retention: only a stream without network sinks has one (a stream with
/// sinks keeps what they have not delivered, up to their backlog bounds).
pub fn retention(
    retain_ms: Option<u64>,
    retain_bytes_max: Option<u64>,
    sinks: &[SinkSpec],
) -> Result<Retention, String> {
    if !sinks.is_empty() && (retain_ms.is_some() || retain_bytes_max.is_some()) {
        return Err(
            "retain_ms and retain_bytes_max are for streams without network sinks: a \
                    stream with sinks deletes what every sink delivered (bound it with the \
                    sinks' backlog_bytes_max)"
                .into(),
        );
    }
    if retain_ms == Some(0) || retain_bytes_max == Some(0) {
        return Err(
            "retain_ms and retain_bytes_max must be above 0 (leave them out to keep \
                    everything)"
                .into(),
        );
    }
    Ok(Retention {
        retain_ms,
        retain_bytes_max,
    })
}

/// Messages librdkafka may hold per producer: bounded, so that a broker that stops answering
/// grows the sink's disk backlog rather than memory.
pub const QUEUE_MESSAGES_MAX: u64 = 100_000;
pub const QUEUE_KBYTES_MAX: u64 = 64 << 10;
/// How long librdkafka tries to deliver a message before it reports a failure; the sink then
/// sends it again from its cursor.
pub const MESSAGE_TIMEOUT_MS: u64 = 30_000;

impl KafkaSpec {
    /// The producer's librdkafka settings, the fixed ones last.
    pub fn client_settings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vec![
            ("linger.ms".into(), self.linger_ms.to_string()),
            ("batch.size".into(), self.batch_bytes_max.to_string()),
            ("compression.type".into(), self.compression.name().into()),
            (
                "queue.buffering.max.messages".into(),
                QUEUE_MESSAGES_MAX.to_string(),
            ),
            (
                "queue.buffering.max.kbytes".into(),
                QUEUE_KBYTES_MAX.to_string(),
            ),
            ("message.timeout.ms".into(), MESSAGE_TIMEOUT_MS.to_string()),
        ];
        for (k, v) in &self.client {
            out.retain(|(key, _)| key != k);
            out.push((k.clone(), v.clone()));
        }
        out.push(("bootstrap.servers".into(), self.brokers.clone()));
        out.push(("acks".into(), "all".into()));
        out.push(("enable.idempotence".into(), "true".into()));
        out
    }
}

/// A sink's producer: one per sink per process, shared by the shards (librdkafka's own threads
/// do the network I/O; a shard only enqueues and awaits confirmations).
pub type Producer = FutureProducer<SinkContext, NaiveRuntime>;

/// Reports a producer's client-level errors (brokers down, authentication, a fatal idempotence
/// error), once per change of error.
pub struct SinkContext {
    label: String,
    last: Mutex<Option<String>>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(text.as_str()) {
            eprintln!("sluice: {}: kafka: {text}", self.label);
            *last = Some(text);
        }
    }
}

/// A sink's client, one per sink per process, shared by the shards: its producer and, with
/// `producer = "thread"`, the channel to the thread that calls it.
#[derive(Clone)]
pub struct SinkClient {
    pub producer: Producer,
    handoff: Option<SyncSender<Handoff>>,
}

/// A chunk of one shard's records for a sink's producer thread: their bytes, and for each
/// record its key, where its payload lies in `bytes`, and where the thread answers with its
/// delivery (or why librdkafka refused it).
struct Handoff {
    bytes: Vec<u8>,
    records: Vec<(u64, Range<usize>, oneshot::Sender<Handed>)>,
}

type Handed = Result<DeliveryFuture, String>;

/// What a produce call answered, or what handing a chunk to the producer thread did.
pub enum Enqueued {
    /// librdkafka (or the thread's channel) is full: try again once deliveries are confirmed.
    Full,
    /// librdkafka refused the record: why.
    Refused(String),
}

/// A record's confirmation to come: librdkafka's delivery report, or first the producer
/// thread's answer that it handed the record over.
pub enum Confirmation {
    Queued(DeliveryFuture),
    Handed(oneshot::Receiver<Handed>),
}

impl Future for Confirmation {
    /// Confirmed by the broker, or why not.
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut *self {
                Confirmation::Queued(d) => {
                    return Poll::Ready(match ready!(Pin::new(d).poll(cx)) {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("the producer went away".to_owned()),
                    });
                }
                Confirmation::Handed(rx) => match ready!(Pin::new(rx).poll(cx)) {
                    Ok(Ok(d)) => *self = Confirmation::Queued(d),
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(_) => return Poll::Ready(Err("the producer thread went away".to_owned())),
                },
            }
        }
    }
}

/// Hands records of one chunk to a sink's client: each straight to librdkafka
/// (`producer = "shard"`), or all of them at once to the producer thread.
pub struct Batch<'a> {
    client: &'a SinkClient,
    topic: &'a str,
    handoff: Option<Handoff>,
}

impl SinkClient {
    pub fn batch<'a>(&'a self, topic: &'a str) -> Batch<'a> {
        Batch {
            client: self,
            topic,
            handoff: self.handoff.as_ref().map(|_| Handoff {
                bytes: Vec::new(),
                records: Vec::new(),
            }),
        }
    }
}

impl Batch<'_> {
    /// Enqueues one record, or, for the producer thread, adds it to the chunk.
    pub fn add(&mut self, key: u64, payload: &[u8]) -> Result<Confirmation, Enqueued> {
        match &mut self.handoff {
            None => {
                produce(&self.client.producer, self.topic, key, payload).map(Confirmation::Queued)
            }
            Some(h) => {
                let (tx, rx) = oneshot::channel();
                let at = h.bytes.len();
                h.bytes.extend_from_slice(payload);
                h.records.push((key, at..h.bytes.len(), tx));
                Ok(Confirmation::Handed(rx))
            }
        }
    }

    /// Hands the chunk to the producer thread (nothing to do for `producer = "shard"`). When
    /// its channel is full nothing was handed over: the records are to be added again later.
    pub fn finish(self) -> Result<(), Enqueued> {
        let (Some(h), Some(tx)) = (self.handoff, &self.client.handoff) else {
            return Ok(());
        };
        if h.records.is_empty() {
            return Ok(());
        }
        match tx.try_send(h) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Enqueued::Full),
            Err(TrySendError::Disconnected(_)) => Err(Enqueued::Refused(
                "the producer thread went away".to_owned(),
            )),
        }
    }
}

/// One produce call: librdkafka copies the record into its queue and answers at once.
fn produce(
    producer: &Producer,
    topic: &str,
    key: u64,
    payload: &[u8],
) -> Result<DeliveryFuture, Enqueued> {
    let key = key.to_be_bytes();
    let record = FutureRecord::to(topic).key(&key[..]).payload(payload);
    producer.send_result(record).map_err(|(e, _)| match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => Enqueued::Full,
        e => Enqueued::Refused(e.to_string()),
    })
}

/// How long the producer thread waits before it tries a record again that found librdkafka's
/// queue full.
const THREAD_QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// A sink's producer thread: produces the records of the chunks the shards hand it, in order,
/// until every shard's sender is gone. A full librdkafka queue holds it (and so, once the
/// channel fills, the shards); a record whose shard stopped waiting is skipped.
fn produce_thread(producer: Producer, topic: String, chunks: Receiver<Handoff>) {
    for chunk in chunks {
        for (key, range, reply) in chunk.records {
            let handed = loop {
                if reply.is_canceled() {
                    break None;
                }
                match produce(&producer, &topic, key, &chunk.bytes[range.clone()]) {
                    Ok(d) => break Some(Ok(d)),
                    Err(Enqueued::Full) => std::thread::sleep(THREAD_QUEUE_FULL_WAIT),
                    Err(Enqueued::Refused(e)) => break Some(Err(e)),
                }
            };
            if let Some(h) = handed {
                let _ = reply.send(h);
            }
        }
    }
}

/// The client of sink `spec` of `stream`: its producer, and with `producer = "thread"` the
/// thread that calls it.
pub fn client(stream: &str, spec: &SinkSpec) -> Result<SinkClient, String> {
    let producer = producer(stream, spec)?;
    let handoff = match spec.kafka.producer {
        Handing::Shard => None,
        Handing::Thread => {
            let (tx, rx) = sync_channel(crate::consts::HANDOFF_CHUNKS_MAX);
            let (p, topic) = (producer.clone(), spec.kafka.topic.clone());
            std::thread::Builder::new()
                .name(format!("kafka-{}", spec.name))
                .spawn(move || produce_thread(p, topic, rx))
                .map_err(|e| {
                    format!(
                        "stream {stream}: sink {}: a producer thread: {e}",
                        spec.name
                    )
                })?;
            Some(tx)
        }
    };
    Ok(SinkClient { producer, handoff })
}

/// The producer of sink `spec` of `stream`.
pub fn producer(stream: &str, spec: &SinkSpec) -> Result<Producer, String> {
    let mut config = ClientConfig::new();
    for (k, v) in spec.kafka.client_settings() {
        config.set(k, v);
    }
    let label = format!("stream {stream}: sink {}", spec.name);
    config
        .create_with_context(SinkContext {
            label: label.clone(),
            last: Mutex::new(None),
        })
        .map_err(|e| format!("{label}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawSink {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_kafka_sink_takes_its_defaults() {
        let s = sink_spec(
            "ads",
            &raw("kind = \"kafka\"\nbrokers = \"127.0.0.1:9092\""),
        )
        .unwrap();
        assert_eq!(s.name, "kafka");
        assert_eq!(s.kafka.topic, "ads");
        assert_eq!(s.when_full, WhenFull::Block);
        assert_eq!(s.kafka.compression, Compression::Lz4);
        assert_eq!(s.kafka.producer, Handing::Shard);
        let settings = s.kafka.client_settings();
        assert!(settings.contains(&("acks".into(), "all".into())));
        assert!(settings.contains(&("enable.idempotence".into(), "true".into())));
    }

    #[test]
    fn mistakes_are_named() {
        let bad = [
            ("kind = \"s3\"", "kind"),
            ("kind = \"kafka\"", "brokers"),
            (
                "kind = \"kafka\"\nbrokers = \"b:1\"\nwhen_full = \"spill\"",
                "when_full",
            ),
            (
                "kind = \"kafka\"\nbrokers = \"b:1\"\ncompression = \"gzip\"",
                "compression",
            ),
            (
                "kind = \"kafka\"\nbrokers = \"b:1\"\nname = \"A B\"",
                "name",
            ),
            (
                "kind = \"kafka\"\nbrokers = \"b:1\"\nproducer = \"pool\"",
                "producer",
            ),
            (
                "kind = \"kafka\"\nbrokers = \"b:1\"\nclient = { acks = \"1\" }",
                "client.acks",
            ),
        ];
        for (text, what) in bad {
            let e = sink_spec("s", &raw(text)).unwrap_err();
            assert!(e.starts_with(what), "{text}: {e}");
        }
        let s = sink_spec("s", &raw("kind = \"kafka\"\nbrokers = \"b:1\"")).unwrap();
        assert!(retention(Some(1), None, &[s]).is_err());
        assert!(retention(None, Some(0), &[]).is_err());
    }

    #[test]
    fn client_settings_override_the_defaults_but_not_the_fixed_ones() {
        let s = sink_spec(
            "s",
            &raw("kind = \"kafka\"\nbrokers = \"b:1\"\nclient = { \"linger.ms\" = \"50\" }"),
        )
        .unwrap();
        let settings = s.kafka.client_settings();
        let linger: Vec<_> = settings.iter().filter(|(k, _)| k == "linger.ms").collect();
        assert_eq!(linger, [&("linger.ms".to_owned(), "50".to_owned())]);
    }
}
