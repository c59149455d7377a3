//! Geo rows from a MaxMind database (GeoLite2-City or any database with the same record
//! layout), with a per-shard cache keyed by network prefix in front of it.
//!
//! A database lookup walks a binary trie and decodes a record (about a microsecond); most
//! events come from addresses whose /24 (IPv4) or /48 (IPv6) lies within one network of the
//! database, so the cache keeps the row of that prefix and answers every address in it. An
//! address in a network narrower than its prefix is cached by the address itself.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::cache::Cache;
use super::{GeoRow, Sym};

/// The fields sluice reads from a record; the rest are skipped undecoded.
#[derive(Debug, Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Coded<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Coded<'a>>>,
    #[serde(borrow, default)]
    city: Option<City<'a>>,
    #[serde(default)]
    autonomous_system_number: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Coded<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct City<'a> {
    #[serde(borrow, default)]
    names: Option<Names<'a>>,
}

#[derive(Debug, Deserialize)]
struct Names<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

/// The geo columns of one database record, as text: `country` (ISO 3166-1 alpha-2),
/// `region` (ISO 3166-2: the country, `-`, the first subdivision's code), `city` (its English
/// name), `asn` (0 where the database has none). `None` for an address the database does
/// not cover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GeoText {
    pub country: String,
    pub region: String,
    pub city: String,
    pub asn: u32,
}

/// A MaxMind database, shared read-only by every shard's copy of the tables.
#[derive(Clone)]
pub struct Database {
    reader: Arc<maxminddb::Reader<Vec<u8>>>,
    path: PathBuf,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .field("type", &self.reader.metadata().database_type)
            .finish()
    }
}

impl Database {
    /// Opens (reads into memory) and checks the database at `path`.
    pub fn open(path: &Path) -> Result<Database, String> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| format!("{}: not a MaxMind database: {e}", path.display()))?;
        Ok(Database {
            reader: Arc::new(reader),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `database_type` from the metadata, e.g. `GeoLite2-City`.
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The record of `ip`, and the length of the network prefix it holds for.
    pub fn lookup(&self, ip: IpAddr) -> (Option<GeoText>, u8) {
        let Ok(found) = self.reader.lookup(ip) else {
            return (None, 0);
        };
        let prefix = found.network().map_or(0, |n| n.prefix());
        let record = match found.decode::<Record<'_>>() {
            Ok(Some(r)) => r,
            _ => return (None, prefix),
        };
        let country = record
            .country
            .and_then(|c| c.iso_code)
            .unwrap_or_default()
            .to_owned();
        let region = match record
            .subdivisions
            .as_deref()
            .and_then(|s| s.first())
            .and_then(|s| s.iso_code)
        {
            Some(sub) if !country.is_empty() => format!("{country}-{sub}"),
            _ => String::new(),
        };
        let city = record
            .city
            .and_then(|c| c.names)
            .and_then(|n| n.en)
            .unwrap_or_default()
            .to_owned();
        let text = GeoText {
            country,
            region,
            city,
            asn: record.autonomous_system_number.unwrap_or(0),
        };
        (Some(text), prefix)
    }
}

/// Hits and misses of one shard's cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// A database with one shard's cache in front of it.
#[derive(Debug, Clone)]
pub struct MmdbGeo {
    db: Database,
    cache: Cache<Option<GeoRow>>,
    pub stats: CacheStats,
}

/// Cache keys: a tag in the top two bits, then the prefix or the address.
const V4_PREFIX: u64 = 1 << 62;
const V4_ADDR: u64 = 2 << 62;
const V6_PREFIX: u64 = 3 << 62;

/// The cache keys of `ip`: its prefix's, and (IPv4 only) its own.
#[inline]
fn keys(ip: IpAddr) -> (u64, Option<u64>) {
    match ip {
        IpAddr::V4(v4) => {
            let a = u64::from(u32::from(v4));
            (V4_PREFIX | a >> 8, Some(V4_ADDR | a))
        }
        IpAddr::V6(v6) => (V6_PREFIX | (u128::from(v6) >> 80) as u64, None),
    }
}

impl MmdbGeo {
    pub fn new(db: Database, cache_entries: usize) -> MmdbGeo {
        MmdbGeo {
            db,
            cache: Cache::new(cache_entries),
            stats: CacheStats::default(),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// The row of `ip` if the cache holds it (the database is not read).
    pub fn peek(&self, ip: IpAddr) -> Option<Option<GeoRow>> {
        let (prefix_key, addr_key) = keys(ip);
        self.cache
            .peek(prefix_key)
            .or_else(|| addr_key.and_then(|k| self.cache.peek(k)))
            .copied()
    }

    /// The row of `ip`, from the cache or the database (whose strings `intern` turns into
    /// symbols).
    #[inline]
    pub fn lookup(&mut self, ip: IpAddr, intern: impl FnMut(&str) -> Sym) -> Option<GeoRow> {
        let (prefix_key, addr_key) = keys(ip);
        if let Some(row) = self.cache.get(prefix_key) {
            self.stats.hits += 1;
            return *row;
        }
        if let Some(row) = addr_key.and_then(|k| self.cache.get(k)) {
            self.stats.hits += 1;
            return *row;
        }
        self.stats.misses += 1;
        self.fill(ip, prefix_key, addr_key, intern)
    }

    #[cold]
    fn fill(
        &mut self,
        ip: IpAddr,
        prefix_key: u64,
        addr_key: Option<u64>,
        mut intern: impl FnMut(&str) -> Sym,
    ) -> Option<GeoRow> {
        let (text, prefix) = self.db.lookup(ip);
        let row = text.map(|t| GeoRow {
            country: intern(&t.country),
            region: intern(&t.region),
            city: intern(&t.city),
            asn: t.asn,
        });
        let whole = if ip.is_ipv4() { 24 } else { 48 };
        // A network no longer than the prefix answers for all of it; a narrower one only for
        // this address (and an IPv6 address narrower than its /48 is not cached).
        match (prefix <= whole, addr_key) {
            (true, _) => self.cache.insert(prefix_key, row),
            (false, Some(k)) => self.cache.insert(k, row),
            (false, None) => {}
        }
        row
    }
}
