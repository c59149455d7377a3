//! The engine's configuration: one TOML file, parsed, checked and compiled before any shard
//! starts. `sluice run` without a file uses [`DEFAULT_CONFIG`] (demo keys, the W1 tables and
//! route set, file sinks under `./sluice-data`).
//!
//! Every error names the file, the line and the reason. Every limit carries its unit in its
//! name; tuning.md lists each knob with its default.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use sluice_protocol::limits::{FRAME_BYTES_MAX, PARTITIONS_MAX, SHARDS_MAX};
use sluice_protocol::{Backend, Keyring, Limits};
use toml::Spanned;

use crate::enrich::Tables;
use crate::enrich::remote::RemoteSpec;
use crate::route::{RouteSet, RulePart, RuleSource};
use crate::sink::record::RecordFormat;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");
/// The name `sluice run` reports for the embedded default.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default>";
/// The stream that, when the config declares it, receives every event no route matches.
pub const UNMATCHED_STREAM: &str = "_unmatched";

/// The stream every rejected envelope goes to.
pub const DEAD_LETTER_STREAM: &str = "dead-letter";

/// A configuration error: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the error is not about one line.
    pub line: usize,
    /// 1-based, in characters; 0 when the error is about the whole line or more.
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 && self.column > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.reason
            )
        } else if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.reason)
        } else {
            write!(f, "{}: {}", self.file, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    shard: ShardTuning,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    keys: RawKeys,
    /// `[enrich.geo]`, `[enrich.device]`, `[enrich.customer]`.
    #[serde(default)]
    enrich: BTreeMap<String, Spanned<RawTable>>,
    #[serde(default)]
    sinks: RawSinks,
    #[serde(default)]
    streams: BTreeMap<String, Spanned<RawStream>>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEngine {
    /// 0: one per core.
    shards: usize,
    /// Core of each shard; empty: shard i on the i-th core.
    cores: Vec<usize>,
    partitions: u32,
    /// Owner shard of each partition; empty: round robin.
    owners: Spanned<Vec<u16>>,
    /// `auto`, `vaes`, `ring` or `aes-gcm`.
    aead: Spanned<String>,
}

impl Default for RawEngine {
    fn default() -> Self {
        RawEngine {
            shards: 0,
            cores: Vec::new(),
            partitions: 64,
            owners: Spanned::new(0..0, Vec::new()),
            aead: Spanned::new(0..0, "auto".into()),
        }
    }
}

/// Per-shard tuning: every buffer, queue and budget a shard holds.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ShardTuning {
    /// Bytes of batch frames a shard holds between reading them and acking them. When full,
    /// the shard stops reading its sockets.
    pub inflight_bytes_max: usize,
    /// Largest batch frame taken; larger frames are refused and the connection closed.
    pub frame_bytes_max: usize,
    /// Receive buffer per connection (at least `frame_bytes_max`).
    pub read_buffer_bytes: usize,
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
            read_buffer_bytes: FRAME_BYTES_MAX + (256 << 10),
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
struct RawListen {
    shared: Spanned<String>,
    shard_port_base: u16,
    admin: Spanned<String>,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            shared: Spanned::new(0..0, "127.0.0.1:7400".into()),
            shard_port_base: 7401,
            admin: Spanned::new(0..0, "127.0.0.1:9180".into()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    /// Use the public demo keys (ids 1..=8).
    demo: bool,
    /// A key file: one `ID KEY` per line, KEY in hex or base64.
    file: Option<Spanned<PathBuf>>,
}

/// One enrichment table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    /// `w1` (generated from `seed`), `file` (CSV or JSON lines at `path`), `mmdb` (geo
    /// only: a MaxMind database at `path`) or `http` (customer only: a lookup service at
    /// `url`).
    kind: Spanned<String>,
    path: Option<Spanned<PathBuf>>,
    #[serde(default = "default_seed")]
    seed: u64,
    /// `mmdb`, `http`: entries of each shard's cache.
    cache_entries: Option<Spanned<usize>>,
    /// `http`: the service, and how a shard uses it (see `enrich::remote::RemoteSpec`).
    url: Option<Spanned<String>>,
    ttl_ms: Option<Spanned<u64>>,
    negative_ttl_ms: Option<Spanned<u64>>,
    batch_max: Option<Spanned<usize>>,
    in_flight_max: Option<Spanned<usize>>,
    budget_us: Option<Spanned<u64>>,
    request_timeout_ms: Option<Spanned<u64>>,
}

fn default_seed() -> u64 {
    1
}

/// Entries of a shard's geo cache in front of a MaxMind database, unless set.
pub const MMDB_CACHE_ENTRIES: usize = 65_536;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSinks {
    dir: PathBuf,
    segment_bytes_max: u64,
    durability: Spanned<RawDurability>,
    /// How far ahead of the writer each segment is zero-filled.
    prefill_bytes: u64,
}

impl Default for RawSinks {
    fn default() -> Self {
        RawSinks {
            dir: PathBuf::from("./sluice-data"),
            segment_bytes_max: 256 << 20,
            durability: Spanned::new(0..0, RawDurability::Named("interval".into())),
            prefill_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDurability {
    Named(String),
    Interval { interval_us: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    #[serde(default = "default_format")]
    format: String,
}

fn default_format() -> String {
    "json".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    to: Spanned<Vec<String>>,
    when: Spanned<String>,
    fields: Spanned<Vec<String>>,
    #[serde(default)]
    sample: Option<Spanned<f64>>,
}

/// When a batch's records count as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acked once handed to the segment writer; a crash loses what the OS had not written.
    None,
    /// Group commit: written and fdatasync'd at most every `N` µs; acks wait for the sync.
    IntervalUs(u64),
    /// Every batch is synced before its ack (batches arriving during a sync share the next).
    EveryBatch,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::None => f.write_str("none"),
            Durability::IntervalUs(us) => write!(f, "interval_us = {us}"),
            Durability::EveryBatch => f.write_str("every_batch"),
        }
    }
}

/// One output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub format: RecordFormat,
}

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub shared: SocketAddr,
    pub shard_port_base: u16,
    pub admin: SocketAddr,
}

/// Sink settings shared by every stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sinks {
    pub dir: PathBuf,
    pub segment_bytes_max: u64,
    pub durability: Durability,
    /// Zero-fill each segment this far ahead of its writer (0: never), so that a commit
    /// round writes over initialized blocks and one device flush makes it durable.
    pub prefill_bytes: u64,
}

/// A checked, compiled configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: String,
    pub shards: usize,
    /// Core of each shard.
    pub cores: Vec<usize>,
    pub partitions: u32,
    /// Owner shard of each partition.
    pub owners: Vec<u16>,
    pub tuning: ShardTuning,
    pub limits: Limits,
    pub listen: Listen,
    pub keyring: Keyring,
    pub tables: Tables,
    pub tables_source: String,
    /// What the tables were loaded from: each table's spec and, for a file, its length and
    /// modification time. A reload loads the tables again only when this changed.
    pub tables_fingerprint: String,
    /// Output streams; the dead-letter stream is last.
    pub streams: Vec<StreamSpec>,
    pub routes: RouteSet,
    pub sinks: Sinks,
}

/// Turns byte offsets into line numbers.
struct Lines<'a> {
    file: &'a str,
    text: &'a str,
}

impl Lines<'_> {
    fn line_of(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: if span.is_empty() && span.start == 0 {
                0
            } else {
                self.line_of(span.start)
            },
            column: 0,
            reason: reason.into(),
        }
    }

    /// An error at byte `at` of the text of the TOML string whose value spans `span`.
    fn err_in_string(
        &self,
        span: Range<usize>,
        at: usize,
        reason: impl Into<String>,
    ) -> ConfigError {
        let raw = &self.text[span.clone()];
        // Where the string's content starts: after the quotes (and a newline right after
        // triple quotes). Escapes before `at` in a basic string shift it a little.
        let open = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3 + raw[3..].find(|c| c != '\n').map_or(0, |n| n.min(1))
        } else {
            1
        };
        let pos = (span.start + open + at).min(span.end);
        let line_start = self.text[..pos].rfind('\n').map_or(0, |n| n + 1);
        ConfigError {
            column: self.text[line_start..pos].chars().count() + 1,
            ..self.err(pos..pos + 1, reason)
        }
    }
}

impl Config {
    /// The embedded default.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, Path::new(""))
    }

    /// Reads and compiles a config file; relative paths in it are taken from its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            reason: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Config::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and compiles config text named `file`; relative paths are taken from `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let lines = Lines { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let reason = e.message().trim().to_owned();
            lines.err(e.span().unwrap_or(0..0), reason)
        })?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        // Shards, cores and partitions.
        let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let e = &raw.engine;
        let shards = match (e.shards, e.cores.len()) {
            (0, 0) => cores_available,
            (0, n) => n,
            (s, _) => s,
        };
        if shards > SHARDS_MAX {
            return Err(lines.err(
                0..0,
                format!("engine.shards: {shards} is over {SHARDS_MAX}"),
            ));
        }
        let cores = if e.cores.is_empty() {
            (0..shards).map(|i| i % cores_available).collect()
        } else if e.cores.len() == shards {
            e.cores.clone()
        } else {
            return Err(lines.err(
                0..0,
                format!(
                    "engine.cores names {} cores for {shards} shards",
                    e.cores.len()
                ),
            ));
        };
        if e.partitions == 0 || e.partitions > PARTITIONS_MAX {
            return Err(lines.err(
                0..0,
                format!("engine.partitions must be 1..={PARTITIONS_MAX}"),
            ));
        }
        let owners = if e.owners.get_ref().is_empty() {
            (0..e.partitions)
                .map(|p| (p as usize % shards) as u16)
                .collect()
        } else {
            let o = e.owners.get_ref();
            if o.len() != e.partitions as usize {
                return Err(lines.err(
                    e.owners.span(),
                    format!(
                        "engine.owners has {} entries for {} partitions",
                        o.len(),
                        e.partitions
                    ),
                ));
            }
            if let Some(bad) = o.iter().find(|s| usize::from(**s) >= shards) {
                return Err(lines.err(
                    e.owners.span(),
                    format!("engine.owners names shard {bad}, but there are {shards} shards"),
                ));
            }
            o.clone()
        };
        let backend = match e.aead.get_ref().as_str() {
            "auto" => Backend::default(),
            name => Backend::from_str(name).map_err(|why| lines.err(e.aead.span(), why))?,
        };

        // Tuning and limits.
        let t = raw.shard.clone();
        if t.frame_bytes_max > FRAME_BYTES_MAX || t.frame_bytes_max < 64 {
            return Err(lines.err(
                0..0,
                format!("shard.frame_bytes_max must be 64..={FRAME_BYTES_MAX}"),
            ));
        }
        if t.read_buffer_bytes < t.frame_bytes_max {
            return Err(lines.err(
                0..0,
                "shard.read_buffer_bytes must be at least shard.frame_bytes_max",
            ));
        }
        if t.inflight_bytes_max < t.frame_bytes_max {
            return Err(lines.err(
                0..0,
                "shard.inflight_bytes_max must be at least shard.frame_bytes_max",
            ));
        }
        if t.connection_batches_max == 0 || t.forward_frames_max == 0 {
            return Err(lines.err(
                0..0,
                "shard.connection_batches_max and shard.forward_frames_max must be at least 1",
            ));
        }
        let limits = Limits {
            frame_bytes_max: t.frame_bytes_max,
            ..Limits::default()
        }
        .clamped();

        // Listeners.
        let addr = |s: &Spanned<String>, what: &str| {
            s.get_ref().parse::<SocketAddr>().map_err(|err| {
                lines.err(
                    s.span(),
                    format!("{what}: {:?} is not HOST:PORT ({err})", s.get_ref()),
                )
            })
        };
        let listen = Listen {
            shared: addr(&raw.listen.shared, "listen.shared")?,
            shard_port_base: raw.listen.shard_port_base,
            admin: addr(&raw.listen.admin, "listen.admin")?,
        };
        if usize::from(listen.shard_port_base) + shards > 65_536 {
            return Err(lines.err(
                0..0,
                "listen.shard_port_base leaves no port for every shard",
            ));
        }

        // Keys.
        let keyring = match (&raw.keys.file, raw.keys.demo) {
            (Some(_), true) => {
                return Err(lines.err(0..0, "keys: set either `demo = true` or `file`, not both"));
            }
            (Some(f), false) => Keyring::load(&resolve(f.get_ref()), backend)
                .map_err(|e| lines.err(f.span(), format!("keys.file: {e}")))?,
            (None, true) => sluice_loadgen::demo_keyring(backend),
            (None, false) => {
                return Err(lines.err(0..0, "keys: no keys (set `demo = true` or `file`)"));
            }
        };

        // Enrichment tables.
        let mut tables = Tables::default();
        let mut sources = Vec::new();
        let mut tables_fingerprint = String::new();
        for (name, t) in &raw.enrich {
            let err = |span: std::ops::Range<usize>, what: String| {
                lines.err(span, format!("enrich.{name}: {what}"))
            };
            if !["geo", "device", "customer"].contains(&name.as_str()) {
                return Err(err(
                    t.span(),
                    format!("no table {name:?} (known: geo, device, customer)"),
                ));
            }
            let t = t.get_ref();
            let file = t.path.as_ref().map(|p| {
                let m = std::fs::metadata(resolve(p.get_ref())).ok();
                (
                    resolve(p.get_ref()),
                    m.as_ref().map(|m| m.len()),
                    m.and_then(|m| m.modified().ok()),
                )
            });
            let _ = write!(
                tables_fingerprint,
                "{name}: {} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?};",
                t.kind.get_ref(),
                t.seed,
                t.cache_entries.as_ref().map(|c| *c.get_ref()),
                file,
                t.url.as_ref().map(|c| c.get_ref()),
                t.ttl_ms.as_ref().map(|c| *c.get_ref()),
                t.negative_ttl_ms.as_ref().map(|c| *c.get_ref()),
                t.batch_max.as_ref().map(|c| *c.get_ref()),
                t.in_flight_max.as_ref().map(|c| *c.get_ref()),
                t.budget_us.as_ref().map(|c| *c.get_ref()),
                t.request_timeout_ms.as_ref().map(|c| *c.get_ref()),
            );
            let http_only = [
                ("url", t.url.as_ref().map(Spanned::span)),
                ("ttl_ms", t.ttl_ms.as_ref().map(Spanned::span)),
                (
                    "negative_ttl_ms",
                    t.negative_ttl_ms.as_ref().map(Spanned::span),
                ),
                ("batch_max", t.batch_max.as_ref().map(Spanned::span)),
                ("in_flight_max", t.in_flight_max.as_ref().map(Spanned::span)),
                ("budget_us", t.budget_us.as_ref().map(Spanned::span)),
                (
                    "request_timeout_ms",
                    t.request_timeout_ms.as_ref().map(Spanned::span),
                ),
            ];
            if t.kind.get_ref() != "http"
                && let Some((key, Some(span))) = http_only.iter().find(|(_, s)| s.is_some())
            {
                return Err(err(span.clone(), format!("`{key}` is for kind \"http\"")));
            }
            let path = || {
                t.path
                    .as_ref()
                    .map(|p| (resolve(p.get_ref()), p.span()))
                    .ok_or_else(|| {
                        err(
                            t.kind.span(),
                            format!("kind {:?} needs a `path`", t.kind.get_ref()),
                        )
                    })
            };
            let source = match t.kind.get_ref().as_str() {
                "w1" => {
                    match name.as_str() {
                        "geo" => tables.load_w1_geo(t.seed),
                        "device" => tables.load_w1_device(t.seed),
                        _ => tables.load_w1_customer(t.seed),
                    }
                    format!("w1 rows, seed {}", t.seed)
                }
                "file" => {
                    let (p, span) = path()?;
                    let n = tables.load_file(name, &p).map_err(|e| err(span, e))?;
                    format!("{} ({n} rows)", p.display())
                }
                "mmdb" if name == "geo" => {
                    let (p, span) = path()?;
                    let db = crate::enrich::mmdb::Database::open(&p).map_err(|e| err(span, e))?;
                    let entries = t
                        .cache_entries
                        .as_ref()
                        .map_or(MMDB_CACHE_ENTRIES, |c| *c.get_ref());
                    tables.use_mmdb(db, entries);
                    tables.geo_source()
                }
                "mmdb" => {
                    return Err(err(
                        t.kind.span(),
                        "kind \"mmdb\" is for the geo table".into(),
                    ));
                }
                "http" if name == "customer" => {
                    let url = t
                        .url
                        .as_ref()
                        .ok_or_else(|| err(t.kind.span(), "kind \"http\" needs a `url`".into()))?;
                    let mut spec =
                        RemoteSpec::from_url(url.get_ref()).map_err(|e| err(url.span(), e))?;
                    let positive = |v: &Option<Spanned<usize>>, key: &str, default: usize| match v {
                        None => Ok(default),
                        Some(v) if *v.get_ref() == 0 => {
                            Err(err(v.span(), format!("`{key}` must be at least 1")))
                        }
                        Some(v) => Ok(*v.get_ref()),
                    };
                    spec.cache_entries =
                        positive(&t.cache_entries, "cache_entries", spec.cache_entries)?;
                    spec.batch_max = positive(&t.batch_max, "batch_max", spec.batch_max)?;
                    spec.in_flight_max =
                        positive(&t.in_flight_max, "in_flight_max", spec.in_flight_max)?;
                    let get =
                        |v: &Option<Spanned<u64>>, d: u64| v.as_ref().map_or(d, |v| *v.get_ref());
                    spec.ttl_ms = get(&t.ttl_ms, spec.ttl_ms);
                    spec.negative_ttl_ms = get(&t.negative_ttl_ms, spec.negative_ttl_ms);
                    spec.budget_us = get(&t.budget_us, spec.budget_us);
                    spec.request_timeout_ms = get(&t.request_timeout_ms, spec.request_timeout_ms);
                    let source = format!(
                        "{} (cache of {}, ttl {} ms, negative {} ms, {} keys a request, {} in flight, budget {} us, request timeout {} ms)",
                        spec.url,
                        spec.cache_entries,
                        spec.ttl_ms,
                        spec.negative_ttl_ms,
                        spec.batch_max,
                        spec.in_flight_max,
                        spec.budget_us,
                        spec.request_timeout_ms
                    );
                    tables.use_remote_customer(Arc::new(spec));
                    source
                }
                "http" => {
                    return Err(err(
                        t.kind.span(),
                        "kind \"http\" is for the customer table".into(),
                    ));
                }
                k => {
                    return Err(err(
                        t.kind.span(),
                        format!("unknown kind {k:?} (known: \"w1\", \"file\", \"mmdb\", \"http\")"),
                    ));
                }
            };
            sources.push(format!("{name} {source}"));
        }
        let tables_source = if sources.is_empty() {
            "none".to_owned()
        } else {
            sources.join(", ")
        };

        // Streams.
        let mut streams = Vec::new();
        let mut dead_letter = StreamSpec {
            name: DEAD_LETTER_STREAM.into(),
            format: RecordFormat::Json,
        };
        for (name, s) in &raw.streams {
            let format = RecordFormat::from_str(&s.get_ref().format)
                .map_err(|why| lines.err(s.span(), format!("streams.{name}: {why}")))?;
            if !valid_name(name) {
                return Err(lines.err(
                    s.span(),
                    format!("streams.{name}: a stream name is 1-64 of [a-z0-9_-]"),
                ));
            }
            if name == DEAD_LETTER_STREAM {
                dead_letter.format = format;
            } else {
                streams.push(StreamSpec {
                    name: name.clone(),
                    format,
                });
            }
        }

        // Routes.
        let unmatched = streams.iter().position(|s| s.name == UNMATCHED_STREAM);
        let mut rules = Vec::with_capacity(raw.route.len());
        for r in &raw.route {
            let name = r.name.get_ref();
            let mut to = Vec::new();
            for t in r.to.get_ref() {
                let i = streams.iter().position(|s| s.name == *t).ok_or_else(|| {
                    lines.err(
                        r.to.span(),
                        format!("route {name:?}: no stream {t:?} (declare it under [streams])"),
                    )
                })?;
                if !to.contains(&i) {
                    to.push(i);
                }
            }
            if let Some(s) = &r.sample
                && !(*s.get_ref() > 0.0 && *s.get_ref() <= 1.0)
            {
                return Err(lines.err(
                    s.span(),
                    format!("route {name:?}: sample must be in (0, 1]"),
                ));
            }
            rules.push(RuleSource {
                name: name.clone(),
                streams: to,
                when: r.when.get_ref().clone(),
                fields: r.fields.get_ref().clone(),
                sample: r.sample.as_ref().map(|s| *s.get_ref()),
            });
        }
        let routes = RouteSet::compile(&rules, unmatched).map_err(|e| {
            let r = &raw.route[e.rule];
            let why = format!("route {:?}: {}", r.name.get_ref(), e.reason);
            match e.part {
                RulePart::Name => lines.err(r.name.span(), why),
                RulePart::To => lines.err(r.to.span(), why),
                RulePart::Fields => lines.err(r.fields.span(), why),
                RulePart::When(at) => lines.err_in_string(r.when.span(), at, why),
            }
        })?;
        streams.push(dead_letter);

        // Sinks.
        let s = &raw.sinks;
        let durability = match s.durability.get_ref() {
            RawDurability::Named(n) if n == "none" => Durability::None,
            RawDurability::Named(n) if n == "every_batch" => Durability::EveryBatch,
            RawDurability::Named(n) if n == "interval" => Durability::IntervalUs(1000),
            RawDurability::Interval { interval_us } if *interval_us > 0 => {
                Durability::IntervalUs(*interval_us)
            }
            _ => {
                return Err(lines.err(
                    s.durability.span(),
                    "sinks.durability: \"none\", \"every_batch\" or { interval_us = N } with N > 0",
                ));
            }
        };
        if s.segment_bytes_max < 1 << 20 {
            return Err(lines.err(0..0, "sinks.segment_bytes_max must be at least 1 MiB"));
        }
        if !s.prefill_bytes.is_multiple_of(4096) {
            return Err(lines.err(0..0, "sinks.prefill_bytes must be a multiple of 4096"));
        }
        let sinks = Sinks {
            dir: resolve(&s.dir),
            segment_bytes_max: s.segment_bytes_max,
            durability,
            prefill_bytes: s.prefill_bytes,
        };

        Ok(Config {
            source: file.to_owned(),
            shards,
            cores,
            partitions: e.partitions,
            owners,
            tuning: t,
            limits,
            listen,
            keyring,
            tables,
            tables_source,
            tables_fingerprint,
            streams,
            routes,
            sinks,
        })
    }

    /// This config with one shard that owns every partition (for benches and tests that
    /// drive one pipeline directly).
    pub fn single_shard(mut self) -> Config {
        self.shards = 1;
        self.cores.truncate(1);
        self.owners = vec![0; self.partitions as usize];
        self
    }

    /// The port shard `i` listens on.
    pub fn shard_addr(&self, shard: usize) -> SocketAddr {
        let mut a = self.listen.shared;
        a.set_port(self.listen.shard_port_base + shard as u16);
        a
    }

    /// Index of the dead-letter stream.
    pub fn dead_letter_stream(&self) -> usize {
        self.streams.len() - 1
    }

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
            let _ = writeln!(o, "  {} ({}): {what}", s.name, s.format);
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

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
