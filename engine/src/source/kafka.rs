//! The Kafka consumer-group source, sans I/O: `[[source]] kind = "kafka"` checked into a
//! [`SourceSpec`] and its librdkafka settings; the [`Dealer`], which turns consumed messages
//! into batch frames for the shards that own their partitions; and the [`Tracker`], which
//! says which offsets may be committed.
//!
//! A message's value is one envelope (PROTOCOL.md section 4), its key the partition key. The
//! dealer sends each envelope to the shard that owns `partition_for(partition_key)`, in a
//! batch frame of that partition, so a device's events stay in order on one shard and no
//! frame crosses shards afterwards. A message that is not one whole envelope is handed over
//! as a [`Reject`], to be dead-lettered with its coordinates.
//!
//! An offset is stored for commit only once every frame built from the messages up to it was
//! acked (its records stored under the durability policy, its rejects dead-lettered), the
//! rule of a TCP ack; see [`Tracker`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use sluice_protocol::envelope::{ENVELOPE_HEADER_BYTES, envelope_len};
use sluice_protocol::{AlignedBuf, EnvelopeHeader, Error, FrameBuilder, Limits, partition_for};

use super::Coord;
use crate::config::raw::RawSource;

/// A Kafka consumer-group source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub session_timeout_ms: u64,
    pub commit_interval_ms: u64,
    /// Bytes librdkafka may hold fetched ahead (`queued.max.messages.kbytes`).
    pub fetch_queue_bytes_max: u64,
    /// Further librdkafka settings.
    pub client: BTreeMap<String, String>,
}

/// librdkafka settings a source fixes: what makes commits follow storage.
const FIXED: &[&str] = &[
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.auto.offset.store",
    "enable.auto.commit",
];

/// Checks a `[[source]]`.
pub fn source_spec(raw: &RawSource) -> Result<SourceSpec, String> {
    if raw.kind != "kafka" {
        return Err(format!(
            "kind {:?}: the source kinds are \"kafka\" (the TCP ingest needs no [[source]])",
            raw.kind
        ));
    }
    let brokers = raw
        .brokers
        .clone()
        .filter(|b| !b.trim().is_empty())
        .ok_or("brokers: the brokers to bootstrap from, \"host:port[,host:port]\"")?;
    if raw.topics.is_empty() || raw.topics.iter().any(|t| t.trim().is_empty()) {
        return Err("topics: the topics to consume, [\"name\", ...]".into());
    }
    let group_id = raw
        .group_id
        .clone()
        .filter(|g| !g.trim().is_empty())
        .ok_or("group_id: the consumer group the hosts share")?;
    if let Some(k) = raw.client.keys().find(|k| FIXED.contains(&k.as_str())) {
        return Err(format!(
            "client.{k}: set by the source (the group, the brokers, and commits that follow \
             storage)"
        ));
    }
    if raw.session_timeout_ms < 1000 {
        return Err("session_timeout_ms must be at least 1000".into());
    }
    if raw.commit_interval_ms == 0 {
        return Err("commit_interval_ms must be above 0".into());
    }
    if raw.fetch_queue_bytes_max < 1 << 20 {
        return Err("fetch_queue_bytes_max must be at least 1 MiB".into());
    }
    Ok(SourceSpec {
        brokers,
        topics: raw.topics.clone(),
        group_id,
        session_timeout_ms: raw.session_timeout_ms,
        commit_interval_ms: raw.commit_interval_ms,
        fetch_queue_bytes_max: raw.fetch_queue_bytes_max,
        client: raw.client.clone(),
    })
}

/// The partition assignor unless `client` sets `partition.assignment.strategy`.
pub const ASSIGNOR: &str = "roundrobin";

/// How often librdkafka reports its statistics (consumer lag per partition).
pub const STATISTICS_INTERVAL_MS: u64 = 1000;

impl SourceSpec {
    /// The consumer's librdkafka settings, the fixed ones last.
    pub fn client_settings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vec![
            ("auto.offset.reset".into(), "earliest".into()),
            // Eager, not cooperative-sticky: tansu 0.6.0 gives a member that rejoins under
            // the cooperative protocol no partitions (tuning.md, `[[source]]`).
            ("partition.assignment.strategy".into(), ASSIGNOR.into()),
            (
                "session.timeout.ms".into(),
                self.session_timeout_ms.to_string(),
            ),
            (
                "heartbeat.interval.ms".into(),
                (self.session_timeout_ms / 4).max(100).to_string(),
            ),
            (
                "auto.commit.interval.ms".into(),
                self.commit_interval_ms.to_string(),
            ),
            (
                "queued.max.messages.kbytes".into(),
                (self.fetch_queue_bytes_max >> 10).to_string(),
            ),
            (
                "statistics.interval.ms".into(),
                STATISTICS_INTERVAL_MS.to_string(),
            ),
        ];
        for (k, v) in &self.client {
            out.retain(|(key, _)| key != k);
            out.push((k.clone(), v.clone()));
        }
        out.push(("bootstrap.servers".into(), self.brokers.clone()));
        out.push(("group.id".into(), self.group_id.clone()));
        out.push(("enable.auto.commit".into(), "true".into()));
        out.push(("enable.auto.offset.store".into(), "false".into()));
        out
    }
}

/// A message that is not one whole envelope: dead-lettered by the shard that owns
/// `partition` (the partition of its key), with why and where it came from.
#[derive(Debug)]
pub struct Reject {
    pub error: Error,
    pub raw: Vec<u8>,
    pub partition_key: u64,
    pub partition: u32,
    pub source: Coord,
}

/// A batch frame built from messages, with each envelope's coordinates in order.
#[derive(Debug)]
pub struct Consumed {
    pub frame: AlignedBuf,
    pub sources: Vec<Coord>,
}

/// What one shard takes from one round of messages.
#[derive(Debug, Default)]
pub struct Chunk {
    pub frames: Vec<Consumed>,
    pub rejects: Vec<Reject>,
    pub messages: u64,
    pub bytes: u64,
}

impl Chunk {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.rejects.is_empty()
    }
}

/// A frame being filled for one partition.
struct Open {
    builder: FrameBuilder,
    sources: Vec<Coord>,
}

/// Deals messages to the shards that own their partitions, as batch frames.
pub struct Dealer {
    partitions: u32,
    owners: Vec<u16>,
    limits: Limits,
    open: Vec<Option<Open>>,
    chunks: Vec<Chunk>,
    seq: u64,
}

impl Dealer {
    pub fn new(partitions: u32, owners: Vec<u16>, shards: usize, limits: Limits) -> Dealer {
        Dealer {
            partitions,
            owners,
            limits,
            open: (0..partitions).map(|_| None).collect(),
            chunks: (0..shards).map(|_| Chunk::default()).collect(),
            seq: 0,
        }
    }

    /// Messages dealt since the last [`Dealer::take`].
    pub fn messages(&self) -> u64 {
        self.chunks.iter().map(|c| c.messages).sum()
    }

    /// Bytes dealt since the last [`Dealer::take`].
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }

    /// Deals one message; returns the shard it went to.
    pub fn add(&mut self, key: Option<&[u8]>, value: &[u8], source: Coord) -> usize {
        let header = match envelope_of(value, &self.limits) {
            Ok(h) => h,
            Err(error) => {
                let partition_key = key
                    .and_then(|k| <[u8; 8]>::try_from(k).ok())
                    .map(u64::from_be_bytes)
                    .or_else(|| {
                        (value.len() >= ENVELOPE_HEADER_BYTES).then(|| {
                            EnvelopeHeader::decode(
                                value[..ENVELOPE_HEADER_BYTES].try_into().expect("32 bytes"),
                            )
                            .partition_key
                        })
                    })
                    .unwrap_or(0);
                let partition = partition_for(partition_key, self.partitions);
                let shard = usize::from(self.owners[partition as usize]);
                let c = &mut self.chunks[shard];
                c.messages += 1;
                c.bytes += value.len() as u64;
                c.rejects.push(Reject {
                    error,
                    raw: value.to_vec(),
                    partition_key,
                    partition,
                    source,
                });
                return shard;
            }
        };
        let partition = partition_for(header.partition_key, self.partitions);
        let shard = usize::from(self.owners[partition as usize]);
        let len = envelope_len(header.payload_len as usize);
        let full = self.open[partition as usize].as_ref().is_some_and(|o| {
            o.builder.count() as usize >= self.limits.envelopes_per_frame_max
                || o.builder.len() + len > self.limits.frame_bytes_max
        });
        if full {
            self.close(partition as usize);
        }
        let seq = &mut self.seq;
        let open = self.open[partition as usize].get_or_insert_with(|| {
            *seq += 1;
            Open {
                builder: FrameBuilder::new(*seq, partition),
                sources: Vec::new(),
            }
        });
        open.builder.push_padded(value);
        open.sources.push(source);
        let c = &mut self.chunks[shard];
        c.messages += 1;
        c.bytes += value.len() as u64;
        shard
    }

    fn close(&mut self, partition: usize) {
        if let Some(o) = self.open[partition].take() {
            let shard = usize::from(self.owners[partition]);
            self.chunks[shard].frames.push(Consumed {
                frame: o.builder.into_frame(),
                sources: o.sources,
            });
        }
    }

    /// Closes every open frame and hands over each shard's chunk (empty ones included, in
    /// shard order).
    pub fn take(&mut self) -> Vec<Chunk> {
        for p in 0..self.open.len() {
            self.close(p);
        }
        self.chunks.iter_mut().map(std::mem::take).collect()
    }
}

/// Checks that a message value is one whole envelope a frame can carry: its header, its
/// ciphertext and tag, at most its padding after, and not over `envelope_bytes_max`.
/// Everything past that (version, format, key, tag, payload) the pipeline checks, as for any
/// envelope.
pub fn envelope_of(value: &[u8], limits: &Limits) -> Result<EnvelopeHeader, Error> {
    if value.len() < ENVELOPE_HEADER_BYTES {
        return Err(Error::Truncated {
            needed: ENVELOPE_HEADER_BYTES,
            available: value.len(),
        });
    }
    let header = EnvelopeHeader::decode(value[..ENVELOPE_HEADER_BYTES].try_into().expect("32"));
    let padded = envelope_len(header.payload_len as usize);
    if padded > limits.envelope_bytes_max {
        return Err(Error::Oversized {
            what: "envelope",
            len: padded,
            max: limits.envelope_bytes_max,
            unit: "bytes",
        });
    }
    let needed = ENVELOPE_HEADER_BYTES + header.payload_len as usize + 16;
    if value.len() < needed {
        return Err(Error::Truncated {
            needed,
            available: value.len(),
        });
    }
    if value.len() > padded {
        return Err(Error::BadLength(
            "a message holds one envelope: bytes past its end",
        ));
    }
    Ok(header)
}

/// A topic partition: the topic's name and the partition's number.
pub type TopicPartition = (Arc<str>, i32);

/// One partition's rounds in flight, oldest first: (round, the last offset it holds).
#[derive(Debug, Default)]
struct Track {
    rounds: VecDeque<(u64, i64)>,
    /// A round failed (the engine stopped before it was stored): nothing after it may be
    /// committed until the partition is assigned again.
    stuck: bool,
}

/// Which offsets may be committed: a round is the messages dealt at once, handed to the
/// shards as one chunk each; once every shard acked its chunk, the last offset of each
/// partition in the round may be stored, in the partitions' order of rounds.
#[derive(Debug, Default)]
pub struct Tracker {
    next: u64,
    /// Chunks of each round still unanswered, and whether one failed.
    open: HashMap<u64, (usize, bool)>,
    parts: HashMap<TopicPartition, Track>,
}

impl Tracker {
    /// A new round of `chunks` chunks holding, per partition, messages up to `last`.
    pub fn round(
        &mut self,
        chunks: usize,
        last: impl IntoIterator<Item = (TopicPartition, i64)>,
    ) -> u64 {
        self.next += 1;
        let id = self.next;
        self.open.insert(id, (chunks, false));
        for (tp, offset) in last {
            self.parts
                .entry(tp)
                .or_default()
                .rounds
                .push_back((id, offset));
        }
        id
    }

    /// A shard answered its chunk of `round`: stored (`ok`) or not.
    pub fn done(&mut self, round: u64, ok: bool) {
        if let Some((left, failed)) = self.open.get_mut(&round) {
            *left = left.saturating_sub(1);
            *failed |= !ok;
        }
    }

    /// The offsets that may now be stored: per partition, the last offset of the newest round
    /// that is answered with every round before it.
    pub fn storable(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, t) in &mut self.parts {
            let mut last = None;
            while let Some(&(round, offset)) = t.rounds.front() {
                let Some(&(0, failed)) = self.open.get(&round) else {
                    break;
                };
                t.stuck |= failed;
                if !t.stuck {
                    last = Some(offset);
                }
                t.rounds.pop_front();
            }
            if let Some(o) = last {
                out.push((tp.clone(), o));
            }
        }
        // Rounds every partition moved past are done with.
        let live: std::collections::HashSet<u64> = self
            .parts
            .values()
            .flat_map(|t| t.rounds.iter().map(|r| r.0))
            .collect();
        self.open
            .retain(|id, (left, _)| *left > 0 || live.contains(id));
        out
    }

    /// Whether anything of `tp` is still in flight.
    pub fn in_flight(&self, tp: &TopicPartition) -> bool {
        self.parts.get(tp).is_some_and(|t| !t.rounds.is_empty())
    }

    /// Rounds not yet answered in full.
    pub fn rounds_in_flight(&self) -> usize {
        self.open.values().filter(|(left, _)| *left > 0).count()
    }

    /// Forgets `tp` (revoked, or assigned again: it starts over from its committed offset).
    pub fn forget(&mut self, tp: &TopicPartition) {
        self.parts.remove(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{BatchFrame, PayloadFormat};

    fn raw(text: &str) -> RawSource {
        toml::from_str(text).unwrap()
    }

    const OK: &str = "kind = \"kafka\"\nbrokers = \"b:1\"\ntopics = [\"in\"]\ngroup_id = \"g\"";

    #[test]
    fn a_source_takes_its_defaults_and_names_its_mistakes() {
        let s = source_spec(&raw(OK)).unwrap();
        let settings = s.client_settings();
        for (k, v) in [
            ("enable.auto.offset.store", "false"),
            ("partition.assignment.strategy", "roundrobin"),
            ("group.id", "g"),
        ] {
            assert!(settings.contains(&(k.into(), v.into())), "{k}");
        }
        let bad = [
            ("kind = \"tcp\"", "kind"),
            (
                "kind = \"kafka\"\ntopics = [\"in\"]\ngroup_id = \"g\"",
                "brokers",
            ),
            (
                "kind = \"kafka\"\nbrokers = \"b:1\"\ngroup_id = \"g\"",
                "topics",
            ),
            (
                "kind = \"kafka\"\nbrokers = \"b:1\"\ntopics = [\"in\"]",
                "group_id",
            ),
        ];
        for (text, what) in bad {
            let e = source_spec(&raw(text)).unwrap_err();
            assert!(e.starts_with(what), "{text}: {e}");
        }
        let e = source_spec(&raw(&format!(
            "{OK}\nclient = {{ \"enable.auto.commit\" = \"false\" }}"
        )))
        .unwrap_err();
        assert!(e.starts_with("client.enable.auto.commit"), "{e}");
    }

    fn envelope(key: u64, payload: usize) -> Vec<u8> {
        let keys = sluice_workload::demo_keyring(sluice_protocol::Backend::default());
        let mut out = AlignedBuf::new();
        let header = EnvelopeHeader::new(PayloadFormat::Json, 1, [7; 12], key, 1);
        sluice_protocol::seal_envelope(
            &mut out,
            keys.get(1).unwrap(),
            header,
            &vec![b'x'; payload],
        );
        out.to_vec()
    }

    fn at(partition: i32, offset: i64) -> Coord {
        Coord {
            topic: "in".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn the_dealer_frames_envelopes_for_their_owners_and_rejects_what_is_not_one() {
        let limits = Limits::default();
        let owners = vec![0u16, 1, 0, 1];
        let mut d = Dealer::new(4, owners.clone(), 2, limits);
        let keys: Vec<u64> = (0..40).collect();
        for (i, k) in keys.iter().enumerate() {
            let mut e = envelope(*k, 20 + i);
            if i % 2 == 0 {
                // Without its padding, as a client may send it.
                e.truncate(ENVELOPE_HEADER_BYTES + 20 + i + 16);
            }
            let shard = d.add(None, &e, at(0, i as i64));
            assert_eq!(shard, usize::from(owners[partition_for(*k, 4) as usize]));
        }
        d.add(Some(&5u64.to_be_bytes()), b"garbage", at(1, 0));
        let mut torn = envelope(9, 100);
        torn.truncate(60);
        d.add(None, &torn, at(1, 1));
        assert_eq!(d.messages(), 42);
        let chunks = d.take();
        assert_eq!(chunks.len(), 2);
        let mut envelopes = 0;
        for (shard, c) in chunks.iter().enumerate() {
            for f in &c.frames {
                let mut bytes = f.frame.to_vec();
                let mut copy = AlignedBuf::with_capacity(bytes.len());
                copy.extend_from_slice(&bytes);
                bytes.clear();
                let b = BatchFrame::parse(&mut copy, &limits).expect("a whole frame");
                assert_eq!(usize::from(owners[b.header.partition as usize]), shard);
                assert_eq!(b.header.count as usize, f.sources.len());
                envelopes += f.sources.len();
            }
        }
        assert_eq!(envelopes, 40);
        let rejects: Vec<&Reject> = chunks.iter().flat_map(|c| &c.rejects).collect();
        assert_eq!(rejects.len(), 2);
        assert_eq!(rejects[0].partition_key, 5);
        assert!(matches!(rejects[0].error, Error::Truncated { .. }));
        assert_eq!(
            rejects[1].partition_key, 9,
            "the key from the envelope's header"
        );
        assert_eq!(rejects[1].source.offset, 1);
        assert!(d.take().iter().all(Chunk::is_empty));
    }

    #[test]
    fn the_dealer_splits_frames_at_the_envelope_limit() {
        let limits = Limits {
            envelopes_per_frame_max: 3,
            ..Limits::default()
        };
        let mut d = Dealer::new(1, vec![0], 1, limits);
        for i in 0..7 {
            d.add(None, &envelope(1, 10), at(0, i));
        }
        let c = d.take();
        let counts: Vec<usize> = c[0].frames.iter().map(|f| f.sources.len()).collect();
        assert_eq!(counts, [3, 3, 1]);
    }

    fn tp(p: i32) -> TopicPartition {
        ("in".into(), p)
    }

    #[test]
    fn offsets_are_stored_only_after_every_chunk_of_every_round_before() {
        let mut t = Tracker::default();
        let r1 = t.round(2, [(tp(0), 10), (tp(1), 5)]);
        let r2 = t.round(1, [(tp(0), 20)]);
        t.done(r2, true);
        assert!(t.storable().is_empty(), "round 1 is not answered");
        t.done(r1, true);
        assert!(t.storable().is_empty(), "round 1 has a chunk left");
        assert!(t.in_flight(&tp(1)));
        t.done(r1, true);
        let mut s = t.storable();
        s.sort();
        assert_eq!(s, [(tp(0), 20), (tp(1), 5)]);
        assert!(!t.in_flight(&tp(0)));
        assert_eq!(t.rounds_in_flight(), 0);
    }

    #[test]
    fn a_failed_round_stops_its_partitions_until_assigned_again() {
        let mut t = Tracker::default();
        let r1 = t.round(1, [(tp(0), 10), (tp(1), 3)]);
        let r2 = t.round(1, [(tp(0), 20)]);
        let r3 = t.round(1, [(tp(1), 9)]);
        t.done(r1, false);
        t.done(r2, true);
        t.done(r3, true);
        assert!(t.storable().is_empty(), "nothing past a failed round");
        t.forget(&tp(0));
        t.forget(&tp(1));
        let r4 = t.round(1, [(tp(0), 12)]);
        t.done(r4, true);
        assert_eq!(t.storable(), [(tp(0), 12)]);
    }
}
