//! `[enrich.*]`: each table's settings compiled into a comparable [`TableSpec`], then the
//! tables loaded from the specs. A reload compares the specs (which hold each file's length
//! and modification time) to decide whether to load the tables again, so a setting added
//! here is compared without anyone remembering to.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use toml::Spanned;

use super::raw::{MMDB_CACHE_ENTRIES, RawTable};
use super::{ConfigError, Source};
use crate::enrich::Tables;
use crate::enrich::remote::RemoteSpec;

/// The tables a config names.
pub const TABLES: [&str; 3] = ["geo", "device", "customer"];

/// One table's settings, as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSpec {
    /// The W1 rows generated from `seed`.
    W1 { seed: u64 },
    /// Rows from a CSV or JSON-lines file.
    File(FileStamp),
    /// A MaxMind database (geo), with a cache of `cache_entries` per shard in front of it.
    Mmdb {
        file: FileStamp,
        cache_entries: usize,
    },
    /// A lookup service (customer).
    Http(Arc<RemoteSpec>),
}

/// The specs by table name.
pub type TableSpecs = BTreeMap<String, TableSpec>;

/// A file a table is read from, as it was when the config was compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub path: PathBuf,
    pub len: Option<u64>,
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: PathBuf) -> FileStamp {
        let m = std::fs::metadata(&path).ok();
        FileStamp {
            len: m.as_ref().map(|m| m.len()),
            modified: m.and_then(|m| m.modified().ok()),
            path,
        }
    }
}

/// Every `[enrich.NAME]` compiled into its spec.
pub fn specs(
    src: &Source,
    raw: &BTreeMap<String, Spanned<RawTable>>,
) -> Result<TableSpecs, ConfigError> {
    let mut specs = TableSpecs::new();
    for (name, t) in raw {
        let err =
            |span: Range<usize>, what: String| src.err(span, format!("enrich.{name}: {what}"));
        if !TABLES.contains(&name.as_str()) {
            return Err(err(
                t.span(),
                format!("no table {name:?} (known: geo, device, customer)"),
            ));
        }
        specs.insert(name.clone(), spec(src, name, t.get_ref(), &err)?);
    }
    Ok(specs)
}

/// One table's spec; `err` prefixes its errors with the table.
fn spec(
    src: &Source,
    name: &str,
    t: &RawTable,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<TableSpec, ConfigError> {
    let kind = t.kind.get_ref().as_str();
    if kind != "http"
        && let Some((key, span)) = http_keys(t).into_iter().find_map(|(k, s)| Some((k, s?)))
    {
        return Err(err(span, format!("`{key}` is for kind \"http\"")));
    }
    let file = || {
        t.path
            .as_ref()
            .map(|p| FileStamp::of(src.resolve(p.get_ref())))
            .ok_or_else(|| err(t.kind.span(), format!("kind {kind:?} needs a `path`")))
    };
    Ok(match kind {
        "w1" => TableSpec::W1 { seed: t.seed },
        "file" => TableSpec::File(file()?),
        "mmdb" if name == "geo" => TableSpec::Mmdb {
            file: file()?,
            cache_entries: t
                .cache_entries
                .as_ref()
                .map_or(MMDB_CACHE_ENTRIES, |c| *c.get_ref()),
        },
        "mmdb" => {
            return Err(err(
                t.kind.span(),
                "kind \"mmdb\" is for the geo table".into(),
            ));
        }
        "http" if name == "customer" => TableSpec::Http(Arc::new(remote_spec(t, err)?)),
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
    })
}

/// The keys only kind `http` takes, with where each is set.
fn http_keys(t: &RawTable) -> [(&'static str, Option<Range<usize>>); 7] {
    fn at<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
        v.as_ref().map(Spanned::span)
    }
    [
        ("url", at(&t.url)),
        ("ttl_ms", at(&t.ttl_ms)),
        ("negative_ttl_ms", at(&t.negative_ttl_ms)),
        ("batch_max", at(&t.batch_max)),
        ("in_flight_max", at(&t.in_flight_max)),
        ("budget_us", at(&t.budget_us)),
        ("request_timeout_ms", at(&t.request_timeout_ms)),
    ]
}

/// `kind = "http"`: the service and how a shard uses it, defaults where unset.
fn remote_spec(
    t: &RawTable,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<RemoteSpec, ConfigError> {
    let url = t
        .url
        .as_ref()
        .ok_or_else(|| err(t.kind.span(), "kind \"http\" needs a `url`".into()))?;
    let mut spec = RemoteSpec::from_url(url.get_ref()).map_err(|e| err(url.span(), e))?;
    let positive = |v: &Option<Spanned<usize>>, key: &str, default: usize| match v {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => Err(err(v.span(), format!("`{key}` must be at least 1"))),
        Some(v) => Ok(*v.get_ref()),
    };
    spec.cache_entries = positive(&t.cache_entries, "cache_entries", spec.cache_entries)?;
    spec.batch_max = positive(&t.batch_max, "batch_max", spec.batch_max)?;
    spec.in_flight_max = positive(&t.in_flight_max, "in_flight_max", spec.in_flight_max)?;
    let get = |v: &Option<Spanned<u64>>, d: u64| v.as_ref().map_or(d, |v| *v.get_ref());
    spec.ttl_ms = get(&t.ttl_ms, spec.ttl_ms);
    spec.negative_ttl_ms = get(&t.negative_ttl_ms, spec.negative_ttl_ms);
    spec.budget_us = get(&t.budget_us, spec.budget_us);
    spec.request_timeout_ms = get(&t.request_timeout_ms, spec.request_timeout_ms);
    Ok(spec)
}

/// Loads the tables `specs` describe; returns them and what each was loaded from, in words.
pub fn load(
    src: &Source,
    raw: &BTreeMap<String, Spanned<RawTable>>,
    specs: &TableSpecs,
) -> Result<(Tables, String), ConfigError> {
    let mut tables = Tables::default();
    let mut sources = Vec::new();
    for (name, spec) in specs {
        // Errors in a file point at its `path`.
        let at = raw[name]
            .get_ref()
            .path
            .as_ref()
            .map_or(0..0, Spanned::span);
        let err = |what: String| src.err(at.clone(), format!("enrich.{name}: {what}"));
        let source = match spec {
            TableSpec::W1 { seed } => {
                match name.as_str() {
                    "geo" => tables.load_w1_geo(*seed),
                    "device" => tables.load_w1_device(*seed),
                    _ => tables.load_w1_customer(*seed),
                }
                format!("w1 rows, seed {seed}")
            }
            TableSpec::File(f) => {
                let n = tables.load_file(name, &f.path).map_err(err)?;
                format!("{} ({n} rows)", f.path.display())
            }
            TableSpec::Mmdb {
                file,
                cache_entries,
            } => {
                let db = crate::enrich::mmdb::Database::open(&file.path).map_err(err)?;
                tables.use_mmdb(db, *cache_entries);
                tables.geo_source()
            }
            TableSpec::Http(spec) => {
                tables.use_remote_customer(spec.clone());
                format!(
                    "{} (cache of {}, ttl {} ms, negative {} ms, {} keys a request, {} in flight, budget {} us, request timeout {} ms)",
                    spec.url,
                    spec.cache_entries,
                    spec.ttl_ms,
                    spec.negative_ttl_ms,
                    spec.batch_max,
                    spec.in_flight_max,
                    spec.budget_us,
                    spec.request_timeout_ms
                )
            }
        };
        sources.push(format!("{name} {source}"));
    }
    let source = if sources.is_empty() {
        "none".to_owned()
    } else {
        sources.join(", ")
    };
    Ok((tables, source))
}
