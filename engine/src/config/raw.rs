//! The TOML file as serde reads it, and every default in one place. Nothing here is checked:
//! the section functions beside it check and compile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use sluice_protocol::limits::FRAME_BYTES_MAX;
use toml::Spanned;

/// Partitions, unless `engine.partitions` says.
pub const PARTITIONS: u32 = 64;
/// The AEAD backend, unless `engine.aead` says.
pub const AEAD: &str = "auto";
pub const LISTEN_SHARED: &str = "127.0.0.1:7400";
pub const SHARD_PORT_BASE: u16 = 7401;
pub const LISTEN_ADMIN: &str = "127.0.0.1:9180";
/// The seed of a `w1` table, unless set.
pub const TABLE_SEED: u64 = 1;
/// Entries of a shard's geo cache in front of a MaxMind database, unless set.
pub const MMDB_CACHE_ENTRIES: usize = 65_536;
pub const SINKS_DIR: &str = "./sluice-data";
pub const SEGMENT_BYTES_MAX: u64 = 256 << 20;
/// `durability = "interval"` without a figure.
pub const INTERVAL_US: u64 = 1000;
pub const PREFILL_BYTES: u64 = 8 << 20;
/// A stream's record format, unless set.
pub const STREAM_FORMAT: &str = "json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub engine: RawEngine,
    #[serde(default)]
    pub shard: ShardTuning,
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub keys: RawKeys,
    /// `[enrich.geo]`, `[enrich.device]`, `[enrich.customer]`.
    #[serde(default)]
    pub enrich: BTreeMap<String, Spanned<RawTable>>,
    #[serde(default)]
    pub sinks: RawSinks,
    #[serde(default)]
    pub streams: BTreeMap<String, Spanned<RawStream>>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    /// `[[source]]`: sources besides the TCP ingest (a Kafka consumer group).
    #[serde(default)]
    pub source: Vec<Spanned<RawSource>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEngine {
    /// 0: one per core.
    pub shards: usize,
    /// Core of each shard; empty: shard i on the i-th core.
    pub cores: Vec<usize>,
    pub partitions: u32,
    /// Owner shard of each partition; empty: round robin.
    pub owners: Spanned<Vec<u16>>,
    /// `auto`, `vaes`, `ring` or `aes-gcm`.
    pub aead: Spanned<String>,
}

impl Default for RawEngine {
    fn default() -> Self {
        RawEngine {
            shards: 0,
            cores: Vec::new(),
            partitions: PARTITIONS,
            owners: Spanned::new(0..0, Vec::new()),
            aead: Spanned::new(0..0, AEAD.into()),
        }
    }
}

/// Per-shard tuning: every buffer, queue and budget a shard holds (`[shard]`, read as is).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ShardTuning {
    /// Bytes of batch frames a shard holds between reading them and acking them. When full,
    /// the shard stops reading its sockets.
    pub inflight_bytes_max: usize,
    /// Largest batch frame taken; larger frames are refused and the connection closed.
    pub frame_bytes_max: usize,
    /// A connection's receive buffer while its frames fit; a larger frame grows it (charged
    /// to `inflight_bytes_max` from its header on) up to `frame_bytes_max`.
    pub read_buffer_bytes: usize,
    /// Connections a shard serves at once; one past it is refused (an overloaded ack, then
    /// closed). `None`: [`crate::consts::CONNECTIONS_MAX`], or as many as the descriptor
    /// limit fits when that is fewer (decided by `sluice run` at start).
    pub connections_max: Option<usize>,
    /// A connection that sends nothing for this long is closed (ms).
    pub idle_timeout_ms: u64,
    /// A frame whose bytes do not all come within this long of its first is answered
    /// `truncated` and its connection closed (ms).
    pub frame_timeout_ms: u64,
    /// How long a stopping shard waits for its connections to close cleanly after it
    /// committed and answered what it read (ms).
    pub shutdown_timeout_ms: u64,
    /// Batches one connection may have unacked before the shard stops reading it.
    pub connection_batches_max: usize,
    /// Frames queued from one shard to another.
    pub forward_frames_max: usize,
    /// Output bytes buffered per shard before a commit starts at once.
    pub commit_bytes_max: usize,
    /// glommio's io_uring registered memory per shard.
    pub io_memory_bytes: usize,
    /// How often a shard publishes its metrics for the admin endpoint.
    pub metrics_interval_ms: u64,
}

impl Default for ShardTuning {
    fn default() -> Self {
        ShardTuning {
            inflight_bytes_max: 64 << 20,
            frame_bytes_max: FRAME_BYTES_MAX,
            read_buffer_bytes: 128 << 10,
            connections_max: None,
            idle_timeout_ms: 300_000,
            frame_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            connection_batches_max: 1024,
            forward_frames_max: 64,
            commit_bytes_max: 8 << 20,
            io_memory_bytes: 10 << 20,
            metrics_interval_ms: 250,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    pub shared: Spanned<String>,
    pub shard_port_base: u16,
    pub admin: Spanned<String>,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            shared: Spanned::new(0..0, LISTEN_SHARED.into()),
            shard_port_base: SHARD_PORT_BASE,
            admin: Spanned::new(0..0, LISTEN_ADMIN.into()),
        }
    }
}

/// The admin port's bounds and credentials (`[admin]`; its address is `listen.admin`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// A file holding the token `POST /reload` must present (`Authorization: Bearer TOKEN`).
    /// Without it, reloads are taken only from loopback clients.
    pub token_file: Option<Spanned<PathBuf>>,
    /// Admin connections served at once; more are answered 503 and closed.
    pub connections_max: usize,
    /// The longest request head (request line and headers), in bytes.
    pub request_bytes_max: usize,
    /// How long a client has to send its whole request (ms).
    pub request_timeout_ms: u64,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            token_file: None,
            connections_max: 16,
            request_bytes_max: 8192,
            request_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeys {
    /// Use the public demo keys (ids 1..=8).
    pub demo: bool,
    /// A key file: one `ID KEY` per line, KEY in hex or base64.
    pub file: Option<Spanned<PathBuf>>,
}

/// One enrichment table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// `w1` (generated from `seed`), `file` (CSV or JSON lines at `path`), `mmdb` (geo
    /// only: a MaxMind database at `path`) or `http` (customer only: a lookup service at
    /// `url`).
    pub kind: Spanned<String>,
    pub path: Option<Spanned<PathBuf>>,
    #[serde(default = "table_seed")]
    pub seed: u64,
    /// `mmdb`, `http`: entries of each shard's cache.
    pub cache_entries: Option<Spanned<usize>>,
    /// `http`: the service, and how a shard uses it (see `enrich::remote::RemoteSpec`).
    pub url: Option<Spanned<String>>,
    pub ttl_ms: Option<Spanned<u64>>,
    pub negative_ttl_ms: Option<Spanned<u64>>,
    pub batch_max: Option<Spanned<usize>>,
    pub in_flight_max: Option<Spanned<usize>>,
    pub budget_us: Option<Spanned<u64>>,
    pub request_timeout_ms: Option<Spanned<u64>>,
}

fn table_seed() -> u64 {
    TABLE_SEED
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSinks {
    pub dir: PathBuf,
    pub segment_bytes_max: u64,
    pub durability: Spanned<RawDurability>,
    /// How far ahead of the writer each segment is zero-filled.
    pub prefill_bytes: u64,
}

impl Default for RawSinks {
    fn default() -> Self {
        RawSinks {
            dir: PathBuf::from(SINKS_DIR),
            segment_bytes_max: SEGMENT_BYTES_MAX,
            durability: Spanned::new(0..0, RawDurability::Named("interval".into())),
            prefill_bytes: PREFILL_BYTES,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDurability {
    Named(String),
    Interval { interval_us: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    #[serde(default = "stream_format")]
    pub format: String,
    /// Retention of a stream without network sinks: sealed segments older than this go.
    pub retain_ms: Option<u64>,
    /// Retention of a stream without network sinks: the oldest sealed segments go while
    /// the stream's segments hold more than this (split evenly over the shards).
    pub retain_bytes_max: Option<u64>,
    /// `[[streams.NAME.sink]]`: network sinks, each reading the stream's segments.
    #[serde(default)]
    pub sink: Vec<Spanned<RawSink>>,
}

/// `[[streams.NAME.sink]]`; what each kind takes is checked by the sink (`sink::kafka`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub kind: String,
    /// Names the sink's cursor files and metrics; unique in its stream. Default: the kind.
    pub name: Option<String>,
    #[serde(default = "backlog_bytes_max")]
    pub backlog_bytes_max: u64,
    #[serde(default = "when_full")]
    pub when_full: String,
    // kind = "kafka"
    pub brokers: Option<String>,
    /// Default: the stream's name.
    pub topic: Option<String>,
    #[serde(default = "linger_ms")]
    pub linger_ms: u64,
    #[serde(default = "batch_bytes_max")]
    pub batch_bytes_max: u64,
    #[serde(default = "compression")]
    pub compression: String,
    /// Who calls librdkafka's produce: `shard` (each shard's delivery task) or `thread` (a
    /// thread of the sink's own, fed by the shards over a bounded channel).
    #[serde(default = "producer")]
    pub producer: String,
    /// Further librdkafka settings, passed as they are.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// A network sink's disk backlog, unless set: 1 GiB.
pub const BACKLOG_BYTES_MAX: u64 = 1 << 30;
pub const WHEN_FULL: &str = "block";
pub const LINGER_MS: u64 = 5;
pub const BATCH_BYTES_MAX: u64 = 1 << 20;
pub const COMPRESSION: &str = "lz4";
pub const PRODUCER: &str = "shard";

fn producer() -> String {
    PRODUCER.into()
}

fn backlog_bytes_max() -> u64 {
    BACKLOG_BYTES_MAX
}

fn when_full() -> String {
    WHEN_FULL.into()
}

fn linger_ms() -> u64 {
    LINGER_MS
}

fn batch_bytes_max() -> u64 {
    BATCH_BYTES_MAX
}

fn compression() -> String {
    COMPRESSION.into()
}

fn stream_format() -> String {
    STREAM_FORMAT.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub to: Spanned<Vec<String>>,
    pub when: Spanned<String>,
    pub fields: Spanned<Vec<String>>,
    #[serde(default)]
    pub sample: Option<Spanned<f64>>,
}

/// `[[source]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub kind: String,
    // kind = "kafka"
    pub brokers: Option<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    pub group_id: Option<String>,
    #[serde(default = "session_timeout_ms")]
    pub session_timeout_ms: u64,
    #[serde(default = "commit_interval_ms")]
    pub commit_interval_ms: u64,
    #[serde(default = "fetch_queue_bytes_max")]
    pub fetch_queue_bytes_max: u64,
    /// Further librdkafka settings, passed as they are.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// How long the group waits for a silent member before it gives its partitions to others.
pub const SESSION_TIMEOUT_MS: u64 = 10_000;
/// How often stored offsets are committed.
pub const COMMIT_INTERVAL_MS: u64 = 1000;
/// Bytes librdkafka may fetch ahead of the shards.
pub const FETCH_QUEUE_BYTES_MAX: u64 = 16 << 20;

fn session_timeout_ms() -> u64 {
    SESSION_TIMEOUT_MS
}

fn commit_interval_ms() -> u64 {
    COMMIT_INTERVAL_MS
}

fn fetch_queue_bytes_max() -> u64 {
    FETCH_QUEUE_BYTES_MAX
}
