//! Network sinks and the Kafka topic sink's settings: `[[streams.NAME.sink]]` checked into a
//! comparable [`SinkSpec`], and the librdkafka producer settings it stands for.
//!
//! Every message is produced with `acks = all` by the idempotent producer, so a message the
//! broker confirmed is in every in-sync replica, once per send; the sink moves its cursor
//! only past confirmed messages (see `runtime/deliver.rs`). Neither can be changed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
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

/// A Kafka topic sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSpec {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    pub linger_ms: u64,
    pub batch_bytes_max: u64,
    pub compression: Compression,
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
