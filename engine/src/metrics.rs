//! Metrics: each shard keeps its own counters and latency histogram and publishes a snapshot
//! every `metrics_interval_ms` into its own slot; the admin endpoint reads the slots. Nothing
//! on the data path touches a lock or a shared atomic.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use sluice_protocol::Error;

use crate::enrich::{TableStats, Tables};
use crate::pipeline::Counters;

/// Highest batch latency recorded, in µs (longer ones are clamped).
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// One shard's published state.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub counters: Counters,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub connections: u64,
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
}

impl ShardSnapshot {
    pub fn new(shard: usize, streams: usize) -> Self {
        ShardSnapshot {
            shard,
            counters: Counters {
                records: vec![0; streams],
                record_bytes: vec![0; streams],
                ..Counters::default()
            },
            forwarded_out: 0,
            forwarded_in: 0,
            connections: 0,
            inflight_bytes: 0,
            commits: 0,
            sink_errors: 0,
            route_revision: 1,
            tables: Tables::default().stats(),
            latency_us: new_histogram(),
            write_us: new_histogram(),
            sync_us: new_histogram(),
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
}

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

    /// The Prometheus text exposition of every shard's metrics.
    pub fn render(&self) -> String {
        let snaps = self.snapshots();
        let mut o = String::new();
        let per_shard = |o: &mut String,
                         name: &str,
                         kind: &str,
                         help: &str,
                         f: &dyn Fn(&ShardSnapshot) -> u64| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for s in &snaps {
                let _ = writeln!(o, "{name}{{shard=\"{}\"}} {}", s.shard, f(s));
            }
        };
        per_shard(
            &mut o,
            "sluice_batches_total",
            "counter",
            "Batch frames taken.",
            &|s| s.counters.batches,
        );
        per_shard(
            &mut o,
            "sluice_envelopes_total",
            "counter",
            "Envelopes taken.",
            &|s| s.counters.envelopes,
        );
        per_shard(
            &mut o,
            "sluice_events_in_total",
            "counter",
            "Events decrypted and validated.",
            &|s| s.counters.events,
        );
        per_shard(
            &mut o,
            "sluice_bytes_in_total",
            "counter",
            "Batch frame bytes taken.",
            &|s| s.counters.bytes_in,
        );
        per_shard(
            &mut o,
            "sluice_unmatched_events_total",
            "counter",
            "Events no route matched (written to `_unmatched` when the config has it).",
            &|s| s.counters.unmatched,
        );
        per_shard(
            &mut o,
            "sluice_frames_forwarded_total",
            "counter",
            "Batch frames sent to their owner shard.",
            &|s| s.forwarded_out,
        );
        per_shard(
            &mut o,
            "sluice_frames_forwarded_in_total",
            "counter",
            "Batch frames taken from other shards.",
            &|s| s.forwarded_in,
        );
        per_shard(
            &mut o,
            "sluice_connections",
            "gauge",
            "Open client connections.",
            &|s| s.connections,
        );
        per_shard(
            &mut o,
            "sluice_inflight_bytes",
            "gauge",
            "Batch bytes read but not yet acked.",
            &|s| s.inflight_bytes,
        );
        per_shard(
            &mut o,
            "sluice_commits_total",
            "counter",
            "Group commits of the segment writers.",
            &|s| s.commits,
        );
        per_shard(
            &mut o,
            "sluice_route_revision",
            "gauge",
            "The route set revision the shard routes by: 1 at start, one more per reload.",
            &|s| s.route_revision,
        );
        per_shard(
            &mut o,
            "sluice_sink_errors_total",
            "counter",
            "Segment write or sync failures.",
            &|s| s.sink_errors,
        );
        type Stat = fn(&TableStats) -> Option<u64>;
        let table_metrics: [(&str, &str, &str, Stat); 12] = [
            (
                "sluice_enrich_entries",
                "gauge",
                "Rows an enrichment table holds in memory; for a cached table, its cache entries.",
                |t| Some(t.entries as u64),
            ),
            (
                "sluice_enrich_cache_capacity",
                "gauge",
                "Entries a cached enrichment table's per-shard cache can hold.",
                |t| t.capacity.map(|c| c as u64),
            ),
            (
                "sluice_enrich_cache_hits_total",
                "counter",
                "Lookups a cached enrichment table answered from its cache.",
                |t| t.capacity.map(|_| t.cache.hits),
            ),
            (
                "sluice_enrich_cache_misses_total",
                "counter",
                "Lookups a cached enrichment table had to go to its source for.",
                |t| t.capacity.map(|_| t.cache.misses),
            ),
            (
                "sluice_enrich_stale_total",
                "counter",
                "Lookups served from an expired entry of a lookup service's table while it is asked for again.",
                |t| t.remote.map(|r| r.stale),
            ),
            (
                "sluice_enrich_missing_total",
                "counter",
                "Events that went on with a lookup service's table marked missing (no answer within the budget).",
                |t| t.remote.map(|r| r.missing),
            ),
            (
                "sluice_enrich_answered_total",
                "counter",
                "Rows and negative answers a lookup service put into the cache.",
                |t| t.remote.map(|r| r.answered),
            ),
            (
                "sluice_enrich_requests_total",
                "counter",
                "Requests sent to a lookup service.",
                |t| t.remote.map(|r| r.requests),
            ),
            (
                "sluice_enrich_timeouts_total",
                "counter",
                "Batches that went on before a lookup service answered their keys (the time budget ran out).",
                |t| t.remote.map(|r| r.timeouts),
            ),
            (
                "sluice_enrich_failures_total",
                "counter",
                "Requests to a lookup service that failed (connection, status, malformed answer, request timeout).",
                |t| t.remote.map(|r| r.failures),
            ),
            (
                "sluice_enrich_inflight",
                "gauge",
                "Requests to a lookup service in flight.",
                |t| t.remote.map(|r| r.in_flight),
            ),
            (
                "sluice_enrich_shed_total",
                "counter",
                "Keys not asked of a lookup service because its request slots were busy and its queue full.",
                |t| t.remote.map(|r| r.shed),
            ),
        ];
        for (name, kind, help, f) in table_metrics {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for s in &snaps {
                for (table, t) in &s.tables {
                    if let Some(v) = f(t) {
                        let _ =
                            writeln!(o, "{name}{{shard=\"{}\",table=\"{table}\"}} {v}", s.shard);
                    }
                }
            }
        }
        for (name, help, bytes) in [
            (
                "sluice_records_out_total",
                "Records written, per stream.",
                false,
            ),
            (
                "sluice_bytes_out_total",
                "Record bytes written (framed), per stream.",
                true,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} counter");
            for s in &snaps {
                for (i, stream) in self.streams.iter().enumerate() {
                    let v = if bytes {
                        s.counters.record_bytes[i]
                    } else {
                        s.counters.records[i]
                    };
                    let _ = writeln!(o, "{name}{{shard=\"{}\",stream=\"{stream}\"}} {v}", s.shard);
                }
            }
        }
        type ByReason = fn(&Counters) -> &[u64; Error::NAMES.len()];
        let by_reason: [(&str, &str, ByReason); 3] = [
            (
                "sluice_dead_letters_total",
                "Envelopes dead-lettered, per reason.",
                |c| &c.dead_letters,
            ),
            (
                "sluice_frames_rejected_total",
                "Frames refused whole (acked with status 1), per reason.",
                |c| &c.frames_rejected,
            ),
            (
                "sluice_connections_closed_total",
                "Connections the engine closed after a frame it could not read past, per reason.",
                |c| &c.connections_closed,
            ),
        ];
        for (name, help, counts) in by_reason {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} counter");
            for s in &snaps {
                for (i, reason) in Error::NAMES.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "{name}{{shard=\"{}\",reason=\"{reason}\"}} {}",
                        s.shard,
                        counts(&s.counters)[i]
                    );
                }
            }
        }
        type Pick = fn(&ShardSnapshot) -> &Histogram<u64>;
        let summaries: [(&str, &str, Pick); 3] = [
            (
                "sluice_batch_latency_us",
                "Batch latency from receipt to ack, µs.",
                |s| &s.latency_us,
            ),
            (
                "sluice_write_latency_us",
                "Writing one round of output to the segments, µs.",
                |s| &s.write_us,
            ),
            (
                "sluice_sync_latency_us",
                "One sync round (fdatasyncs making written output durable), µs.",
                |s| &s.sync_us,
            ),
        ];
        for (name, help, hist) in summaries {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} summary");
            for s in &snaps {
                let h = hist(s);
                for q in [0.5, 0.9, 0.99, 0.999] {
                    let _ = writeln!(
                        o,
                        "{name}{{shard=\"{}\",quantile=\"{q}\"}} {}",
                        s.shard,
                        h.value_at_quantile(q)
                    );
                }
                let _ = writeln!(o, "{name}_count{{shard=\"{}\"}} {}", s.shard, h.len());
            }
        }
        o
    }
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
