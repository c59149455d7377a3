//! Metrics: each shard keeps its own counters and latency histogram and publishes a snapshot
//! every `metrics_interval_ms` into its own slot; the admin endpoint reads the slots. Nothing
//! on the data path touches a lock or a shared atomic.
//!
//! What `GET /metrics` serves is the table [`FAMILIES`]: each family's name, type, help and
//! where its samples come from. Names follow the Prometheus conventions: base units
//! (`_seconds`, `_bytes`), `_total` last on counters, one histogram per latency.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use sluice_protocol::Error;

use crate::enrich::{TableStats, Tables};
use crate::pipeline::Counters;

/// Highest batch latency recorded, in µs (longer ones are clamped).
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// The accept errors counted by name (`sluice_accept_errors_total`, label `error`); the
/// last is every other errno.
pub const ACCEPT_ERRORS: [&str; 6] = [
    "EMFILE",
    "ENFILE",
    "ENOBUFS",
    "ENOMEM",
    "ECONNABORTED",
    "other",
];
/// Why a connection timed out (`sluice_connections_timed_out_total`, label `reason`).
pub const TIMEOUTS: [&str; 2] = ["idle", "frame"];

/// One network sink's state on one shard.
#[derive(Debug, Clone, Default)]
pub struct SinkSnapshot {
    pub stream: String,
    pub sink: String,
    pub delivered_records: u64,
    pub delivered_bytes: u64,
    pub backlog_bytes: u64,
    pub backlog_records: u64,
    pub lag_seconds: f64,
    pub errors: u64,
    pub retries: u64,
    pub dropped_records: u64,
    /// Its backlog is full and its policy is `block`.
    pub blocking: bool,
}

/// One shard's published state.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub counters: Counters,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub connections: u64,
    pub connections_refused: u64,
    pub accept_errors: [u64; ACCEPT_ERRORS.len()],
    /// Why each listener that cannot accept cannot (empty when all can).
    pub listeners_down: Vec<String>,
    pub timed_out: [u64; TIMEOUTS.len()],
    pub receive_buffer_bytes: u64,
    pub inflight_bytes: u64,
    pub commits: u64,
    pub sink_errors: u64,
    /// The route set revision the shard routes by (1 at start, one more per reload).
    pub route_revision: u64,
    /// Each enrichment table's rows or cache.
    pub tables: [(&'static str, TableStats); 3],
    /// Batch latency, receipt to ack, in µs.
    pub latency_us: Histogram<u64>,
    /// Writing one round of output to the segments, in µs.
    pub write_us: Histogram<u64>,
    /// One sync round (the fdatasyncs that make written output durable), in µs.
    pub sync_us: Histogram<u64>,
    /// Each network sink of each stream.
    pub sinks: Vec<SinkSnapshot>,
    /// Segments deleted by retention, per stream.
    pub segments_deleted: Vec<u64>,
    /// Segments written over a free file (one retention let go), per stream.
    pub segments_reused: Vec<u64>,
}

impl ShardSnapshot {
    pub fn new(shard: usize, streams: usize) -> Self {
        ShardSnapshot {
            shard,
            counters: Counters {
                records: vec![0; streams],
                record_bytes: vec![0; streams],
                write_errors: vec![0; streams],
                ..Counters::default()
            },
            forwarded_out: 0,
            forwarded_in: 0,
            connections: 0,
            connections_refused: 0,
            accept_errors: [0; ACCEPT_ERRORS.len()],
            listeners_down: Vec::new(),
            timed_out: [0; TIMEOUTS.len()],
            receive_buffer_bytes: 0,
            inflight_bytes: 0,
            commits: 0,
            sink_errors: 0,
            route_revision: 1,
            tables: Tables::default().stats(),
            latency_us: new_histogram(),
            write_us: new_histogram(),
            sync_us: new_histogram(),
            sinks: Vec::new(),
            segments_deleted: vec![0; streams],
            segments_reused: vec![0; streams],
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds")
}

/// The slots every shard publishes into.
#[derive(Clone)]
pub struct Registry {
    pub streams: Arc<Vec<String>>,
    pub slots: Arc<Vec<Mutex<ShardSnapshot>>>,
    /// Each Kafka source's figures, kept by its group thread.
    pub sources: Arc<Mutex<Vec<Arc<SourceStats>>>>,
}

/// A Kafka source's figures: per shard and partition what was consumed, per partition the
/// lag and the committed offset, commits, rebalances, and how long each shard's intake held
/// the fetching paused.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub group: String,
    pub inner: Mutex<SourceFigures>,
}

#[derive(Debug, Default, Clone)]
pub struct SourceFigures {
    /// Messages dealt, by (shard, topic, partition).
    pub consumed: std::collections::BTreeMap<(usize, Arc<str>, i32), u64>,
    /// Consumer lag in messages (librdkafka's statistics), by assigned (topic, partition).
    pub lag: std::collections::BTreeMap<(String, i32), i64>,
    /// The offset last committed, by (topic, partition).
    pub committed: std::collections::BTreeMap<(String, i32), i64>,
    pub commits: u64,
    pub commit_errors: u64,
    pub assigns: u64,
    pub revokes: u64,
    /// Seconds the fetching was paused because a shard's intake was full, by shard.
    pub paused_s: Vec<f64>,
    /// Partitions assigned now.
    pub assigned: u64,
}

impl SourceStats {
    pub fn new(group: &str, shards: usize) -> SourceStats {
        SourceStats {
            group: group.to_owned(),
            inner: Mutex::new(SourceFigures {
                paused_s: vec![0.0; shards],
                ..SourceFigures::default()
            }),
        }
    }

    pub fn figures(&self) -> std::sync::MutexGuard<'_, SourceFigures> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The source's families in Prometheus text, in [`SOURCE_FAMILIES`]' order.
    fn render(&self, o: &mut String) {
        let f = self.figures().clone();
        let g = &self.group;
        for &(name, kind, help) in SOURCE_FAMILIES {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            let mut line = |labels: String, v: String| {
                let _ = writeln!(o, "{name}{{group=\"{g}\"{labels}}} {v}");
            };
            match name {
                "sluice_source_messages_total" => {
                    for ((shard, topic, p), v) in &f.consumed {
                        line(
                            format!(",shard=\"{shard}\",topic=\"{topic}\",partition=\"{p}\""),
                            v.to_string(),
                        );
                    }
                }
                "sluice_source_lag_messages" | "sluice_source_committed_offset" => {
                    let by = if name == "sluice_source_lag_messages" {
                        &f.lag
                    } else {
                        &f.committed
                    };
                    for ((topic, p), v) in by {
                        line(
                            format!(",topic=\"{topic}\",partition=\"{p}\""),
                            v.to_string(),
                        );
                    }
                }
                "sluice_source_commits_total" => line(String::new(), f.commits.to_string()),
                "sluice_source_commit_errors_total" => {
                    line(String::new(), f.commit_errors.to_string())
                }
                "sluice_source_assigned_partitions" => line(String::new(), f.assigned.to_string()),
                "sluice_source_rebalances_total" => {
                    line(",kind=\"assign\"".into(), f.assigns.to_string());
                    line(",kind=\"revoke\"".into(), f.revokes.to_string());
                }
                "sluice_source_paused_seconds_total" => {
                    for (shard, v) in f.paused_s.iter().enumerate() {
                        line(format!(",shard=\"{shard}\""), format!("{v:.3}"));
                    }
                }
                other => unreachable!("a source family without its samples: {other}"),
            }
        }
    }
}

/// A Kafka source's families: name, type, help; served after [`FAMILIES`], once per source
/// (label `group`); tuning.md's guide lists them after those.
pub const SOURCE_FAMILIES: &[(&str, &str, &str)] = &[
    (
        "sluice_source_messages_total",
        "counter",
        "Kafka messages consumed, per shard they went to and partition.",
    ),
    (
        "sluice_source_lag_messages",
        "gauge",
        "Messages of an assigned partition not yet consumed (librdkafka's consumer lag).",
    ),
    (
        "sluice_source_committed_offset",
        "gauge",
        "The offset last committed for a partition (the next one to read).",
    ),
    (
        "sluice_source_commits_total",
        "counter",
        "Offset commits that succeeded.",
    ),
    (
        "sluice_source_commit_errors_total",
        "counter",
        "Offset commits that failed.",
    ),
    (
        "sluice_source_assigned_partitions",
        "gauge",
        "Partitions the group assigned to this process.",
    ),
    (
        "sluice_source_rebalances_total",
        "counter",
        "Rebalances this process took part in, by what they did to it.",
    ),
    (
        "sluice_source_paused_seconds_total",
        "counter",
        "Time fetching was paused because a shard's intake was full, per shard.",
    ),
];

impl Registry {
    pub fn new(shards: usize, streams: Vec<String>) -> Registry {
        let n = streams.len();
        Registry {
            streams: Arc::new(streams),
            slots: Arc::new(
                (0..shards)
                    .map(|s| Mutex::new(ShardSnapshot::new(s, n)))
                    .collect(),
            ),
            sources: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn publish(&self, snap: ShardSnapshot) {
        let shard = snap.shard;
        *self.slots[shard].lock().expect("metrics slot") = snap;
    }

    pub fn snapshots(&self) -> Vec<ShardSnapshot> {
        self.slots
            .iter()
            .map(|s| s.lock().expect("metrics slot").clone())
            .collect()
    }

    /// All shards added up: (counters, forwarded, merged latency histogram).
    pub fn totals(&self) -> (Counters, u64, Histogram<u64>) {
        let n = self.streams.len();
        let mut c = Counters {
            records: vec![0; n],
            record_bytes: vec![0; n],
            write_errors: vec![0; n],
            ..Counters::default()
        };
        let mut fwd = 0;
        let mut h = new_histogram();
        for s in self.snapshots() {
            add_counters(&mut c, &s.counters);
            fwd += s.forwarded_out;
            h.add(&s.latency_us).expect("same bounds");
        }
        (c, fwd, h)
    }

    /// Why the engine is not healthy: each listener that cannot accept, with its error.
    pub fn unhealthy(&self) -> Vec<String> {
        self.snapshots()
            .into_iter()
            .flat_map(|s| s.listeners_down)
            .collect()
    }

    /// The Prometheus text exposition of every shard's metrics: every family of [`FAMILIES`].
    pub fn render(&self) -> String {
        let snaps = self.snapshots();
        let mut o = String::new();
        for f in FAMILIES {
            f.render(&mut o, &snaps, &self.streams);
        }
        for s in self.sources.lock().expect("sources").iter() {
            s.render(&mut o);
        }
        o
    }
}

/// What a family's samples are read from.
#[derive(Clone, Copy)]
pub enum Read {
    /// One sample per shard.
    Shard(fn(&ShardSnapshot) -> u64),
    /// One per shard and enrichment table, for the tables it applies to (label `table`).
    Table(fn(&TableStats) -> Option<u64>),
    /// One per shard and stream (label `stream`).
    Stream(fn(&Counters) -> &[u64]),
    /// One per shard and stream, from the snapshot (label `stream`).
    StreamOf(fn(&ShardSnapshot) -> &[u64]),
    /// One per shard and network sink (labels `stream` and `sink`).
    Sink(fn(&SinkSnapshot) -> f64),
    /// One per shard and error reason (label `reason`, [`Error::NAMES`]).
    Reason(fn(&Counters) -> &[u64; Error::NAMES.len()]),
    /// One per shard and name of `values` (label `label`).
    Labeled {
        label: &'static str,
        values: &'static [&'static str],
        read: fn(&ShardSnapshot) -> &[u64],
    },
    /// A latency histogram per shard, in seconds (buckets [`LATENCY_BUCKETS_SECONDS`]).
    Latency(fn(&ShardSnapshot) -> &Histogram<u64>),
}

/// The Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    fn name(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// One metric family of `GET /metrics`.
pub struct Family {
    pub name: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
    pub read: Read,
}

/// The upper bounds of the latency histograms' buckets, in seconds (and `+Inf`).
pub const LATENCY_BUCKETS_SECONDS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const fn family(name: &'static str, kind: MetricType, help: &'static str, read: Read) -> Family {
    Family {
        name,
        kind,
        help,
        read,
    }
}

use MetricType::{Counter, Gauge, Histogram as Hist};

/// Every family `GET /metrics` serves, in the order it serves them. Every sample has the label
/// `shard`; tuning.md's guide to `/metrics` lists the same table.
pub const FAMILIES: &[Family] = &[
    family(
        "sluice_batches_total",
        Counter,
        "Batch frames taken.",
        Read::Shard(|s| s.counters.batches),
    ),
    family(
        "sluice_envelopes_total",
        Counter,
        "Envelopes taken.",
        Read::Shard(|s| s.counters.envelopes),
    ),
    family(
        "sluice_events_total",
        Counter,
        "Events decrypted and validated.",
        Read::Shard(|s| s.counters.events),
    ),
    family(
        "sluice_received_bytes_total",
        Counter,
        "Batch frame bytes taken.",
        Read::Shard(|s| s.counters.bytes_in),
    ),
    family(
        "sluice_unmatched_events_total",
        Counter,
        "Events no route matched (written to `_unmatched` when the config has it).",
        Read::Shard(|s| s.counters.unmatched),
    ),
    family(
        "sluice_frames_forwarded_total",
        Counter,
        "Batch frames sent to their owner shard.",
        Read::Shard(|s| s.forwarded_out),
    ),
    family(
        "sluice_frames_forwarded_in_total",
        Counter,
        "Batch frames taken from other shards.",
        Read::Shard(|s| s.forwarded_in),
    ),
    family(
        "sluice_connections",
        Gauge,
        "Open client connections.",
        Read::Shard(|s| s.connections),
    ),
    family(
        "sluice_connections_refused_total",
        Counter,
        "Connections refused at connections_max (an overloaded ack, then closed).",
        Read::Shard(|s| s.connections_refused),
    ),
    family(
        "sluice_connections_timed_out_total",
        Counter,
        "Connections closed for sending nothing for idle_timeout_ms (idle), or for a frame not whole within frame_timeout_ms (frame).",
        Read::Labeled {
            label: "reason",
            values: &TIMEOUTS,
            read: |s| &s.timed_out,
        },
    ),
    family(
        "sluice_accept_errors_total",
        Counter,
        "Failed accepts on the shard's listeners, per errno.",
        Read::Labeled {
            label: "error",
            values: &ACCEPT_ERRORS,
            read: |s| &s.accept_errors,
        },
    ),
    family(
        "sluice_listeners_down",
        Gauge,
        "The shard's listeners whose accepts fail (GET /healthz answers 503 while any is).",
        Read::Shard(|s| s.listeners_down.len() as u64),
    ),
    family(
        "sluice_receive_buffer_bytes",
        Gauge,
        "Bytes of the connections' receive buffers (read_buffer_bytes each, more while a larger frame arrives).",
        Read::Shard(|s| s.receive_buffer_bytes),
    ),
    family(
        "sluice_inflight_bytes",
        Gauge,
        "Batch bytes read but not yet acked (the in-flight budget held).",
        Read::Shard(|s| s.inflight_bytes),
    ),
    family(
        "sluice_commits_total",
        Counter,
        "Sync rounds of the segment writers (group commits).",
        Read::Shard(|s| s.commits),
    ),
    family(
        "sluice_route_revision",
        Gauge,
        "The route set revision the shard routes by: 1 at start, one more per reload.",
        Read::Shard(|s| s.route_revision),
    ),
    family(
        "sluice_sink_errors_total",
        Counter,
        "Commit rounds failed by a segment write or sync (their batches acked as overloaded).",
        Read::Shard(|s| s.sink_errors),
    ),
    family(
        "sluice_enrich_entries",
        Gauge,
        "Rows an enrichment table holds in memory; for a cached table, its cache entries.",
        Read::Table(|t| Some(t.entries as u64)),
    ),
    family(
        "sluice_enrich_cache_capacity",
        Gauge,
        "Entries a cached enrichment table's per-shard cache can hold.",
        Read::Table(|t| t.capacity.map(|c| c as u64)),
    ),
    family(
        "sluice_enrich_cache_hits_total",
        Counter,
        "Lookups a cached enrichment table answered from its cache.",
        Read::Table(|t| t.capacity.map(|_| t.cache.hits)),
    ),
    family(
        "sluice_enrich_cache_misses_total",
        Counter,
        "Lookups a cached enrichment table had to go to its source for.",
        Read::Table(|t| t.capacity.map(|_| t.cache.misses)),
    ),
    family(
        "sluice_enrich_stale_total",
        Counter,
        "Lookups served from an expired entry of a lookup service's table while it is asked for again.",
        Read::Table(|t| t.remote.map(|r| r.stale)),
    ),
    family(
        "sluice_enrich_missing_total",
        Counter,
        "Events that went on with a lookup service's table marked missing (no answer within the budget).",
        Read::Table(|t| t.remote.map(|r| r.missing)),
    ),
    family(
        "sluice_enrich_answered_total",
        Counter,
        "Rows and negative answers a lookup service put into the cache.",
        Read::Table(|t| t.remote.map(|r| r.answered)),
    ),
    family(
        "sluice_enrich_requests_total",
        Counter,
        "Requests sent to a lookup service.",
        Read::Table(|t| t.remote.map(|r| r.requests)),
    ),
    family(
        "sluice_enrich_timeouts_total",
        Counter,
        "Batches that went on before a lookup service answered their keys (the time budget ran out).",
        Read::Table(|t| t.remote.map(|r| r.timeouts)),
    ),
    family(
        "sluice_enrich_failures_total",
        Counter,
        "Requests to a lookup service that failed (connection, status, malformed answer, request timeout).",
        Read::Table(|t| t.remote.map(|r| r.failures)),
    ),
    family(
        "sluice_enrich_requests_in_flight",
        Gauge,
        "Requests to a lookup service in flight.",
        Read::Table(|t| t.remote.map(|r| r.in_flight)),
    ),
    family(
        "sluice_enrich_shed_total",
        Counter,
        "Keys not asked of a lookup service because its request slots were busy and its queue full.",
        Read::Table(|t| t.remote.map(|r| r.shed)),
    ),
    family(
        "sluice_records_total",
        Counter,
        "Records written, per stream.",
        Read::Stream(|c| &c.records),
    ),
    family(
        "sluice_record_bytes_total",
        Counter,
        "Record bytes written (framed), per stream.",
        Read::Stream(|c| &c.record_bytes),
    ),
    family(
        "sluice_write_errors_total",
        Counter,
        "Segment writes that failed, per stream (the round's batches are acked overloaded).",
        Read::Stream(|c| &c.write_errors),
    ),
    family(
        "sluice_segments_deleted_total",
        Counter,
        "Segments deleted, per stream: delivered by every network sink, or past retain_ms or retain_bytes_max.",
        Read::StreamOf(|s| &s.segments_deleted),
    ),
    family(
        "sluice_segments_reused_total",
        Counter,
        "Segments made from a free file (a segment retention let go, kept for reuse) instead of a new zero-filled one, per stream.",
        Read::StreamOf(|s| &s.segments_reused),
    ),
    family(
        "sluice_sink_delivered_records_total",
        Counter,
        "Records a network sink's downstream confirmed (its cursor moved past them).",
        Read::Sink(|k| k.delivered_records as f64),
    ),
    family(
        "sluice_sink_delivered_bytes_total",
        Counter,
        "Record payload bytes a network sink's downstream confirmed.",
        Read::Sink(|k| k.delivered_bytes as f64),
    ),
    family(
        "sluice_sink_backlog_bytes",
        Gauge,
        "Bytes of a network sink's stream between its cursor and the durable end (its disk backlog).",
        Read::Sink(|k| k.backlog_bytes as f64),
    ),
    family(
        "sluice_sink_backlog_records",
        Gauge,
        "Records made durable since start that a network sink has not delivered.",
        Read::Sink(|k| k.backlog_records as f64),
    ),
    family(
        "sluice_sink_lag_seconds",
        Gauge,
        "How long the oldest record a network sink has not delivered has been durable.",
        Read::Sink(|k| k.lag_seconds),
    ),
    family(
        "sluice_sink_delivery_errors_total",
        Counter,
        "Deliveries a network sink's downstream failed or refused (each sent again from its record).",
        Read::Sink(|k| k.errors as f64),
    ),
    family(
        "sluice_sink_delivery_retries_total",
        Counter,
        "Times a network sink started sending again from a failed record, after a back-off.",
        Read::Sink(|k| k.retries as f64),
    ),
    family(
        "sluice_sink_dropped_records_total",
        Counter,
        "Records a drop_oldest network sink gave up when its backlog reached backlog_bytes_max.",
        Read::Sink(|k| k.dropped_records as f64),
    ),
    family(
        "sluice_sink_blocking",
        Gauge,
        "1 while a block network sink's backlog is full and its shard takes no new batch.",
        Read::Sink(|k| if k.blocking { 1.0 } else { 0.0 }),
    ),
    family(
        "sluice_dead_letters_total",
        Counter,
        "Envelopes dead-lettered, per reason.",
        Read::Reason(|c| &c.dead_letters),
    ),
    family(
        "sluice_frames_rejected_total",
        Counter,
        "Frames refused whole (acked with status 1), per reason.",
        Read::Reason(|c| &c.frames_rejected),
    ),
    family(
        "sluice_connections_closed_total",
        Counter,
        "Connections the engine closed after a frame it could not read past, per reason.",
        Read::Reason(|c| &c.connections_closed),
    ),
    family(
        "sluice_batch_latency_seconds",
        Hist,
        "Batch latency from receipt to ack.",
        Read::Latency(|s| &s.latency_us),
    ),
    family(
        "sluice_write_latency_seconds",
        Hist,
        "Writing one round of output to the segments.",
        Read::Latency(|s| &s.write_us),
    ),
    family(
        "sluice_sync_latency_seconds",
        Hist,
        "One sync round (the fdatasyncs that make written output durable).",
        Read::Latency(|s| &s.sync_us),
    ),
];

impl Family {
    /// Writes this family's samples for every shard in `snaps`.
    fn render(&self, o: &mut String, snaps: &[ShardSnapshot], streams: &[String]) {
        let name = self.name;
        let _ = writeln!(o, "# HELP {name} {}", self.help);
        let _ = writeln!(o, "# TYPE {name} {}", self.kind.name());
        for s in snaps {
            let shard = s.shard;
            match self.read {
                Read::Shard(f) => {
                    let _ = writeln!(o, "{name}{{shard=\"{shard}\"}} {}", f(s));
                }
                Read::Table(f) => {
                    for (table, t) in &s.tables {
                        if let Some(v) = f(t) {
                            let _ =
                                writeln!(o, "{name}{{shard=\"{shard}\",table=\"{table}\"}} {v}");
                        }
                    }
                }
                Read::Stream(f) => {
                    for (stream, v) in streams.iter().zip(f(&s.counters)) {
                        let _ = writeln!(o, "{name}{{shard=\"{shard}\",stream=\"{stream}\"}} {v}");
                    }
                }
                Read::StreamOf(f) => {
                    for (stream, v) in streams.iter().zip(f(s)) {
                        let _ = writeln!(o, "{name}{{shard=\"{shard}\",stream=\"{stream}\"}} {v}");
                    }
                }
                Read::Sink(f) => {
                    for k in &s.sinks {
                        let _ = writeln!(
                            o,
                            "{name}{{shard=\"{shard}\",stream=\"{}\",sink=\"{}\"}} {}",
                            k.stream,
                            k.sink,
                            f(k)
                        );
                    }
                }
                Read::Reason(f) => {
                    for (reason, v) in Error::NAMES.iter().zip(f(&s.counters)) {
                        let _ = writeln!(o, "{name}{{shard=\"{shard}\",reason=\"{reason}\"}} {v}");
                    }
                }
                Read::Labeled {
                    label,
                    values,
                    read,
                } => {
                    for (value, v) in values.iter().zip(read(s)) {
                        let _ = writeln!(o, "{name}{{shard=\"{shard}\",{label}=\"{value}\"}} {v}");
                    }
                }
                Read::Latency(f) => latency(o, name, shard, f(s)),
            }
        }
    }
}

/// A histogram of µs as Prometheus buckets in seconds: cumulative counts at each bound, the
/// sum and the count.
fn latency(o: &mut String, name: &str, shard: usize, h: &Histogram<u64>) {
    for le in LATENCY_BUCKETS_SECONDS {
        let us = (le * 1e6).round() as u64;
        let n = h.count_between(0, us);
        let _ = writeln!(o, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}",
        h.len()
    );
    let sum = h.mean() * h.len() as f64 / 1e6;
    let _ = writeln!(o, "{name}_sum{{shard=\"{shard}\"}} {sum}");
    let _ = writeln!(o, "{name}_count{{shard=\"{shard}\"}} {}", h.len());
}

pub fn add_counters(into: &mut Counters, c: &Counters) {
    into.batches += c.batches;
    into.envelopes += c.envelopes;
    into.events += c.events;
    into.bytes_in += c.bytes_in;
    into.unmatched += c.unmatched;
    for (a, b) in into.records.iter_mut().zip(&c.records) {
        *a += b;
    }
    for (a, b) in into.write_errors.iter_mut().zip(&c.write_errors) {
        *a += b;
    }
    for (a, b) in into.record_bytes.iter_mut().zip(&c.record_bytes) {
        *a += b;
    }
    for (into, c) in [
        (&mut into.dead_letters, &c.dead_letters),
        (&mut into.frames_rejected, &c.frames_rejected),
        (&mut into.connections_closed, &c.connections_closed),
    ] {
        for (a, b) in into.iter_mut().zip(c) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_the_prometheus_conventions() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "names are unique");
        for f in FAMILIES {
            assert!(f.name.starts_with("sluice_"), "{}", f.name);
            assert!(!f.help.is_empty() && f.help.ends_with('.'), "{}", f.name);
            match f.kind {
                MetricType::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
                MetricType::Gauge => assert!(!f.name.ends_with("_total"), "{}", f.name),
                MetricType::Histogram => {
                    assert!(f.name.ends_with("_seconds"), "{}", f.name);
                    assert!(matches!(f.read, Read::Latency(_)), "{}", f.name);
                }
            }
            for unit in ["_us", "_ms", "_microseconds", "_milliseconds"] {
                assert!(!f.name.contains(unit), "{}: base units", f.name);
            }
        }
    }

    /// tuning.md's guide lists exactly these families, with their types.
    #[test]
    fn tuning_md_lists_every_family() {
        let guide = include_str!("../../tuning.md");
        let listed: Vec<&str> = guide
            .lines()
            .filter(|l| l.starts_with("| `sluice_"))
            .collect();
        assert_eq!(
            listed.len(),
            FAMILIES.len() + SOURCE_FAMILIES.len(),
            "one row per family"
        );
        let all = FAMILIES
            .iter()
            .map(|f| (f.name, f.kind.name(), f.help))
            .chain(SOURCE_FAMILIES.iter().copied());
        for (row, (name, kind, help)) in listed.iter().zip(all) {
            let want = format!("| `{name}` | {kind} |");
            assert!(row.starts_with(&want), "{row} should start with {want}");
            assert!(row.contains(help), "{row}: the help text");
        }
    }

    #[test]
    fn render_serves_every_family_with_its_help_and_histograms_in_seconds() {
        let registry = Registry::new(2, vec!["a".into(), "dead-letter".into()]);
        let mut snap = ShardSnapshot::new(1, 2);
        snap.counters.batches = 7;
        snap.counters.records[0] = 3;
        for us in [50, 800, 1_500, 40_000] {
            snap.latency_us.record(us).unwrap();
        }
        registry.publish(snap);
        let text = registry.render();
        for f in FAMILIES {
            assert!(
                text.contains(&format!("# HELP {} {}\n", f.name, f.help)),
                "{}",
                f.name
            );
            assert!(text.contains(&format!("# TYPE {} {}\n", f.name, f.kind.name())));
        }
        assert!(text.contains("sluice_batches_total{shard=\"1\"} 7\n"));
        assert!(text.contains("sluice_records_total{shard=\"1\",stream=\"a\"} 3\n"));
        let bucket = |le: &str| {
            let key = format!("sluice_batch_latency_seconds_bucket{{shard=\"1\",le=\"{le}\"}} ");
            let line = text
                .lines()
                .find(|l| l.starts_with(&key))
                .expect("a bucket");
            line[key.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(bucket("0.0001"), 1);
        assert_eq!(bucket("0.001"), 2);
        assert_eq!(bucket("0.0025"), 3);
        assert_eq!(bucket("0.05"), 4);
        assert_eq!(bucket("+Inf"), 4);
        assert!(text.contains("sluice_batch_latency_seconds_count{shard=\"1\"} 4\n"));
        let sum_line = text
            .lines()
            .find(|l| l.starts_with("sluice_batch_latency_seconds_sum{shard=\"1\"}"))
            .unwrap();
        let sum: f64 = sum_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((sum - 0.04235).abs() < 0.0001, "{sum}");
    }
}
