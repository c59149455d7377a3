//! What a config compiled to, in words: `sluice check` prints it.

use std::fmt::Write as _;

use super::{Config, StreamSpec};

/// What a stream keeps of its segments.
fn keeps(s: &StreamSpec) -> String {
    if !s.sinks.is_empty() {
        return "; keeps segments until every sink delivered them".to_owned();
    }
    let r = &s.retention;
    match (r.retain_ms, r.retain_bytes_max) {
        (None, None) => "; keeps every segment".to_owned(),
        (ms, bytes) => {
            let mut parts = Vec::new();
            if let Some(ms) = ms {
                parts.push(format!("retain_ms {ms}"));
            }
            if let Some(b) = bytes {
                parts.push(format!("retain_bytes_max {b}"));
            }
            format!("; {}", parts.join(", "))
        }
    }
}

impl Config {
    /// What the config compiled to, for `sluice check`.
    pub fn describe(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "config: {}", self.source);
        let _ = writeln!(o, "shards: {} on cores {:?}", self.shards, self.cores);
        let _ = writeln!(o, "partitions: {}", self.partitions);
        for s in 0..self.shards {
            let owned: Vec<usize> = (0..self.owners.len())
                .filter(|p| usize::from(self.owners[*p]) == s)
                .collect();
            let _ = writeln!(
                o,
                "  shard {s}: {} partitions, port {}",
                owned.len(),
                self.shard_addr(s)
            );
        }
        let _ = writeln!(
            o,
            "listen: shared {}, admin http://{}",
            self.listen.shared, self.listen.admin
        );
        for k in &self.sources {
            let _ = writeln!(
                o,
                "source: kafka topics {} at {}, group {}; session_timeout_ms {}, \
                 commit_interval_ms {}, fetch_queue_bytes_max {}; offsets committed once \
                 stored{}",
                k.topics.join(", "),
                k.brokers,
                k.group_id,
                k.session_timeout_ms,
                k.commit_interval_ms,
                k.fetch_queue_bytes_max,
                if k.client.is_empty() {
                    String::new()
                } else {
                    let set: Vec<String> =
                        k.client.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("; client {}", set.join(" "))
                }
            );
        }
        let _ = writeln!(
            o,
            "keys: {} (ids {:?}), aead {}",
            self.keyring.len(),
            self.keyring.ids(),
            self.keyring.backend()
        );
        let _ = writeln!(o, "enrich: {}", self.tables_source,);
        let _ = writeln!(
            o,
            "sinks: {} segments up to {} bytes, zero-filled {} bytes ahead, durability {}",
            self.sinks.dir.display(),
            self.sinks.segment_bytes_max,
            self.sinks.prefill_bytes,
            self.sinks.durability
        );
        let _ = writeln!(o, "streams: {}", self.streams.len());
        for (i, s) in self.streams.iter().enumerate() {
            let rules = self
                .routes
                .rules()
                .iter()
                .filter(|r| r.streams.contains(&i))
                .count();
            let what = if self.routes.unmatched() == Some(i) {
                "events no route matches".to_owned()
            } else {
                format!("{rules} routes")
            };
            let _ = writeln!(o, "  {} ({}): {what}{}", s.name, s.format, keeps(s));
            for k in &s.sinks {
                let q = &k.kafka;
                let _ = writeln!(
                    o,
                    "    sink {}: kafka topic {} at {}; linger_ms {}, batch_bytes_max {}, \
                     compression {}, acks all, idempotent, producer {}; backlog_bytes_max {}, \
                     when_full {}{}",
                    k.name,
                    q.topic,
                    q.brokers,
                    q.linger_ms,
                    q.batch_bytes_max,
                    q.compression.name(),
                    q.producer.name(),
                    k.backlog_bytes_max,
                    k.when_full.name(),
                    if q.client.is_empty() {
                        String::new()
                    } else {
                        let set: Vec<String> =
                            q.client.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("; client {}", set.join(" "))
                    }
                );
            }
        }
        let _ = writeln!(o, "routes: {}", self.routes.rules().len());
        for r in self.routes.rules() {
            let _ = writeln!(
                o,
                "  {} -> {}: {}; fields {}{}",
                r.name,
                r.streams
                    .iter()
                    .map(|&i| self.streams[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                r.expr,
                r.fields.len(),
                r.sample.map_or(String::new(), |s| format!("; sample {s}"))
            );
        }
        o
    }
}
