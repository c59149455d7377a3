//! The engine's configuration: one TOML file, parsed, checked and compiled before any shard
//! starts. `sluice run` without a file uses [`DEFAULT_CONFIG`] (demo keys, the W1 tables and
//! route set, file sinks under `./sluice-data`).
//!
//! [`raw`] holds the file as serde reads it and every default; [`sections`] and [`enrich`]
//! check and compile one TOML section each (engine, shard, listen, keys, enrich, streams,
//! routes, sinks); [`describe`] prints what a config compiled to (`sluice check`). Every error
//! names the file, the line and the reason. Every limit carries its unit in its name;
//! tuning.md lists each knob with its default.

pub mod describe;
pub mod enrich;
pub mod raw;
pub mod sections;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sluice_protocol::{Keyring, Limits};

use crate::enrich::Tables;
use crate::route::RouteSet;
use crate::sink::kafka::SinkSpec;
use crate::sink::log::Retention;
use crate::sink::record::RecordFormat;

pub use enrich::{FileStamp, TableSpec, TableSpecs};
pub use raw::{MMDB_CACHE_ENTRIES, ShardTuning};
pub use sections::valid_name;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");
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
    /// What a stream without network sinks keeps (nothing set: everything).
    pub retention: Retention,
    /// Network sinks (`[[streams.NAME.sink]]`), each reading the stream's segments.
    pub sinks: Vec<SinkSpec>,
}

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub shared: SocketAddr,
    pub shard_port_base: u16,
    pub admin: SocketAddr,
}

/// The admin port's bounds and credentials (`[admin]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    /// The token `POST /reload` must present; `None`: reloads only from loopback clients.
    pub token: Option<String>,
    pub connections_max: usize,
    pub request_bytes_max: usize,
    pub request_timeout: std::time::Duration,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("connections_max", &self.connections_max)
            .field("request_bytes_max", &self.request_bytes_max)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
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
    pub admin: Admin,
    pub keyring: Keyring,
    pub tables: Tables,
    pub tables_source: String,
    /// What the tables were loaded from: each table's settings and, for a file, its length
    /// and modification time. A reload loads the tables again only when these differ.
    pub tables_spec: TableSpecs,
    /// Output streams; the dead-letter stream is last.
    pub streams: Vec<StreamSpec>,
    pub routes: RouteSet,
    pub sinks: Sinks,
    /// Sources besides the TCP ingest (`[[source]]`).
    pub sources: Vec<crate::source::kafka::SourceSpec>,
}

/// Where a config's text came from, for errors and relative paths.
pub struct Source<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
}

impl Source<'_> {
    /// `p`, taken from the config's folder when relative.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn line_of(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    /// An error about the value at `span` (`0..0`: about no one line).
    pub fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
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
    pub fn err_in_string(
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
        let src = Source { file, text, base };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let reason = e.message().trim().to_owned();
            src.err(e.span().unwrap_or(0..0), reason)
        })?;
        let engine = sections::engine(&src, &raw.engine)?;
        let (tuning, limits) = sections::shard(&src, &raw.shard)?;
        let listen = sections::listen(&src, &raw.listen, engine.shards)?;
        let admin = sections::admin(&src, &raw.admin)?;
        let keyring = sections::keys(&src, &raw.keys, engine.backend)?;
        let tables_spec = enrich::specs(&src, &raw.enrich)?;
        let (tables, tables_source) = enrich::load(&src, &raw.enrich, &tables_spec)?;
        let (mut streams, dead_letter) = sections::streams(&src, &raw.streams)?;
        let routes = sections::routes(&src, &raw.route, &streams)?;
        streams.push(dead_letter);
        let sinks = sections::sinks(&src, &raw.sinks)?;
        sections::check_backlogs(&src, &streams, &sinks)?;
        let sources = raw
            .source
            .iter()
            .map(|s| {
                crate::source::kafka::source_spec(s.get_ref())
                    .map_err(|why| src.err(s.span(), format!("source: {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            source: file.to_owned(),
            shards: engine.shards,
            cores: engine.cores,
            partitions: engine.partitions,
            owners: engine.owners,
            tuning,
            limits,
            listen,
            admin,
            keyring,
            tables,
            tables_source,
            tables_spec,
            streams,
            routes,
            sinks,
            sources,
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
}
