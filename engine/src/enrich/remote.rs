//! A customer table served by a lookup service (`kind = "http"`): what one shard knows of it.
//!
//! The shard keeps a fixed-capacity cache of answers: a row, or a negative answer (the
//! service has no such customer), each with an expiry (`ttl_ms`, `negative_ttl_ms`). This
//! part does no I/O. A batch is looked at twice:
//! 1. [`RemoteCustomers::probe`] for each event as its envelope is opened: a key with no entry
//!    is a miss, a key whose entry expired is served stale and wants a refresh; both are
//!    collected for the shard's client (`crate::lookup`), which batches them into requests.
//! 2. Once the requests the batch needs are answered or out of time,
//!    [`RemoteCustomers::joined`] gives each event what the cache holds then: a row, no row,
//!    or, for a key still unanswered, "missing" (the event goes on marked, and is counted).
//!
//! Answers go into the cache by the customer id on each answer line, so an answer can only
//! ever fill its own key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use super::cache::Cache;
use super::mmdb::CacheStats;
use super::{CustomerRow, Sym};

/// A lookup service and how a shard uses it (config `[enrich.customer]`, `kind = "http"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// As configured: `http://HOST:PORT/PATH`.
    pub url: String,
    pub addr: SocketAddr,
    /// `HOST:PORT`, for the `Host` header.
    pub host: String,
    pub path: String,
    /// Entries of each shard's cache.
    pub cache_entries: usize,
    /// How long a row is served before it is asked for again (then served stale until the
    /// answer comes).
    pub ttl_ms: u64,
    /// The same for a negative answer.
    pub negative_ttl_ms: u64,
    /// Keys in one request.
    pub batch_max: usize,
    /// Requests in flight per shard.
    pub in_flight_max: usize,
    /// How long a batch waits for the keys it lacks before it goes on with them missing.
    pub budget_us: u64,
    /// How long a request may take before it is given up (its answer would still fill the
    /// cache for later events until then).
    pub request_timeout_ms: u64,
}

/// Defaults of the `http` table's settings.
pub const CACHE_ENTRIES: usize = 100_000;
pub const TTL_MS: u64 = 60_000;
pub const NEGATIVE_TTL_MS: u64 = 10_000;
pub const BATCH_MAX: usize = 256;
pub const IN_FLIGHT_MAX: usize = 4;
pub const BUDGET_US: u64 = 2_000;
pub const REQUEST_TIMEOUT_MS: u64 = 1_000;

impl RemoteSpec {
    /// The address, `Host` and path of `url` (`http://HOST:PORT/PATH`; the port defaults to
    /// 80, the path to `/lookup`), with the other settings at their defaults.
    pub fn from_url(url: &str) -> Result<RemoteSpec, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("url {url:?}: only http:// is supported"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/lookup"),
        };
        if host.is_empty() {
            return Err(format!("url {url:?}: no host"));
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("url {url:?}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("url {url:?}: {with_port} has no address"))?;
        Ok(RemoteSpec {
            url: url.to_owned(),
            addr,
            host: with_port,
            path: path.to_owned(),
            cache_entries: CACHE_ENTRIES,
            ttl_ms: TTL_MS,
            negative_ttl_ms: NEGATIVE_TTL_MS,
            batch_max: BATCH_MAX,
            in_flight_max: IN_FLIGHT_MAX,
            budget_us: BUDGET_US,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
        })
    }
}

/// What a lookup service's table did, for `/metrics`: the cache's side here, the client's
/// side filled in by the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Lookups served from an expired entry while it is asked for again.
    pub stale: u64,
    /// Events that went on with the table marked missing (no answer within the budget).
    pub missing: u64,
    /// Rows and negative answers put into the cache.
    pub answered: u64,
    /// Requests sent.
    pub requests: u64,
    /// Batches that went on before their keys were answered (the time budget ran out).
    pub timeouts: u64,
    /// Requests that failed (connection, status, malformed answer, no answer within the
    /// request timeout).
    pub failures: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Keys not asked for because every request slot was busy and the queue full.
    pub shed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// `None`: the service has no such customer.
    row: Option<CustomerRow>,
    /// Milliseconds since the table's epoch.
    expires_ms: u64,
}

/// One shard's view of a customer table behind a lookup service.
#[derive(Debug, Clone)]
pub struct RemoteCustomers {
    spec: Arc<RemoteSpec>,
    cache: Cache<Entry>,
    /// What expiry times count from: the first instant the table was given.
    epoch: Option<Instant>,
    /// The batch's time, in ms since `epoch` (the caller passes it in).
    now_ms: u64,
    /// Keys with no entry, and keys whose entry expired, since the batch began.
    misses: Vec<u64>,
    refresh: Vec<u64>,
    pub cache_stats: CacheStats,
    pub stats: RemoteStats,
}

impl RemoteCustomers {
    pub fn new(spec: Arc<RemoteSpec>) -> RemoteCustomers {
        RemoteCustomers {
            cache: Cache::new(spec.cache_entries),
            spec,
            epoch: None,
            now_ms: 0,
            misses: Vec::new(),
            refresh: Vec::new(),
            cache_stats: CacheStats::default(),
            stats: RemoteStats::default(),
        }
    }

    pub fn spec(&self) -> &Arc<RemoteSpec> {
        &self.spec
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// `now` in ms since the table's epoch (the first instant it was given).
    fn ms(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u64
    }

    /// Starts a batch at `now`: entries expired by then are served stale and refreshed; the
    /// last batch's misses are forgotten.
    pub fn begin_batch(&mut self, now: Instant) {
        self.now_ms = self.ms(now);
        self.misses.clear();
        self.refresh.clear();
    }

    /// First sight of `key` in a batch: counts a hit or a miss, and notes a key to ask for
    /// (no entry) or to refresh (expired entry).
    #[inline]
    pub fn probe(&mut self, key: u64) {
        debug_assert!(self.epoch.is_some(), "probed before a batch began");
        match self.cache.get(key) {
            Some(e) => {
                self.cache_stats.hits += 1;
                if e.expires_ms <= self.now_ms {
                    self.stats.stale += 1;
                    self.refresh.push(key);
                }
            }
            None => {
                self.cache_stats.misses += 1;
                self.misses.push(key);
            }
        }
    }

    /// Keys the batch lacks and keys to refresh, since [`RemoteCustomers::begin_batch`].
    pub fn wants(&self) -> (&[u64], &[u64]) {
        (&self.misses, &self.refresh)
    }

    /// What the cache holds for `key` now: `Some(row)` (`row` is `None` for no such
    /// customer), or `None` for a key with no answer yet (counted as missing). Stale entries
    /// are served.
    #[inline]
    pub fn joined(&mut self, key: u64) -> Option<Option<CustomerRow>> {
        let row = self.cache.get(key).map(|e| e.row);
        self.stats.missing += u64::from(row.is_none());
        row
    }

    /// What the cache holds for `key`, changing nothing (`None`: no answer).
    pub fn peek(&self, key: u64) -> Option<Option<CustomerRow>> {
        self.cache.peek(key).map(|e| e.row)
    }

    /// Puts a service's answer into the cache: one CSV record (RFC 4180) per key,
    /// `id,plan,signup_country,profiles` for a row, the bare `id` for a negative answer. An
    /// empty cell is no value (`profiles` is a number from 0 to 65535). Strings are interned
    /// by `intern`. Records before a malformed one are kept; the error names its line. The
    /// entries' time to live counts from `now`, when the answer came.
    pub fn answer(
        &mut self,
        body: &str,
        now: Instant,
        mut intern: impl FnMut(&str) -> Sym,
    ) -> Result<usize, String> {
        let now = self.ms(now);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(body.as_bytes());
        let mut record = csv::StringRecord::new();
        let mut n = 0;
        let result = loop {
            match reader.read_record(&mut record) {
                Ok(false) => break Ok(n),
                Ok(true) => {}
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    break Err(format!("answer line {line}: not CSV: {e}"));
                }
            }
            let line = record.position().map_or(0, |p| p.line());
            let bad = |why: &str| {
                let text: Vec<&str> = record.iter().collect();
                format!(
                    "answer line {line}: {:?} {why} (an answer is `id` or \
                     `id,plan,signup_country,profiles`)",
                    text.join(",")
                )
            };
            let Some(id) = record.get(0).and_then(|s| s.parse::<u64>().ok()) else {
                break Err(bad("does not start with a customer id"));
            };
            let entry = match record.len() {
                1 => Entry {
                    row: None,
                    expires_ms: now + self.spec.negative_ttl_ms,
                },
                4 => {
                    let profiles = match &record[3] {
                        "" => None,
                        p => match p.parse::<u16>() {
                            Ok(p) => Some(p),
                            Err(_) => break Err(bad("has profiles that are not 0 to 65535")),
                        },
                    };
                    Entry {
                        row: Some(CustomerRow {
                            plan: intern(&record[1]),
                            signup_country: intern(&record[2]),
                            profiles,
                        }),
                        expires_ms: now + self.spec.ttl_ms,
                    }
                }
                _ => break Err(bad("has neither 1 nor 4 fields")),
            };
            self.cache.insert(id, entry);
            n += 1;
        };
        self.stats.answered += n as u64;
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{RemoteCustomers, RemoteSpec};
    use crate::enrich::Sym;

    fn spec(cache: usize, ttl_ms: u64) -> Arc<RemoteSpec> {
        let mut s = RemoteSpec::from_url("http://127.0.0.1:7480/lookup").expect("url");
        s.cache_entries = cache;
        s.ttl_ms = ttl_ms;
        s.negative_ttl_ms = ttl_ms;
        Arc::new(s)
    }

    fn interner() -> impl FnMut(&str) -> Sym {
        let mut m: HashMap<String, Sym> = HashMap::new();
        move |s: &str| {
            let n = m.len() as u32 + 1;
            *m.entry(s.to_owned()).or_insert(Sym(n))
        }
    }

    #[test]
    fn urls() {
        let s = RemoteSpec::from_url("http://127.0.0.1:9/x/y").expect("url");
        assert_eq!((s.host.as_str(), s.path.as_str()), ("127.0.0.1:9", "/x/y"));
        assert_eq!(s.addr.port(), 9);
        let s = RemoteSpec::from_url("http://localhost:7480").expect("url");
        assert_eq!(s.path, "/lookup");
        assert!(
            RemoteSpec::from_url("https://a:1/")
                .unwrap_err()
                .contains("only http://")
        );
        assert!(
            RemoteSpec::from_url("http:///x")
                .unwrap_err()
                .contains("no host")
        );
    }

    #[test]
    fn misses_then_answers_then_expiry() {
        let mut t = RemoteCustomers::new(spec(64, 0));
        let mut intern = interner();
        let t0 = Instant::now();
        t.begin_batch(t0);
        for k in [1, 2, 3, 1] {
            t.probe(k);
        }
        assert_eq!(t.wants(), (&[1, 2, 3, 1][..], &[][..]));
        assert_eq!(t.joined(1), None);
        assert_eq!(t.answer("1,premium,US,3\n2\n", t0, &mut intern), Ok(2));
        let row = t.joined(1).expect("answered").expect("a row");
        assert_eq!(row.profiles, Some(3));
        assert_eq!(t.joined(2), Some(None));
        assert_eq!(t.joined(3), None);
        assert_eq!(t.stats.missing, 2);
        assert_eq!((t.cache_stats.hits, t.cache_stats.misses), (0, 4));
        // A ttl of 0: the next batch serves both stale and asks for them again.
        t.begin_batch(t0 + Duration::from_millis(2));
        t.probe(1);
        t.probe(2);
        assert_eq!(t.wants(), (&[][..], &[1, 2][..]));
        assert_eq!(
            t.joined(1).expect("stale").map(|r| r.profiles),
            Some(Some(3))
        );
        assert_eq!(t.stats.stale, 2);
    }

    #[test]
    fn malformed_answers_are_refused_at_their_line() {
        let mut t = RemoteCustomers::new(spec(64, 1000));
        let mut intern = interner();
        let t0 = Instant::now();
        let e = t
            .answer("5,basic,DE,1\nx,basic\n", t0, &mut intern)
            .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(t.joined(5).is_some(), "the good line before it is kept");
        assert!(t.answer("6,basic,DE\n", t0, &mut intern).is_err());
        assert!(t.answer("7,basic,DE,1,extra\n", t0, &mut intern).is_err());
        assert!(t.answer("8,basic,DE,many\n", t0, &mut intern).is_err());
        assert!(t.answer("9,basic,DE,70000\n", t0, &mut intern).is_err());
    }

    /// Answers are CSV: quoted cells keep their commas and lose their quotes, and an empty
    /// cell is no value.
    #[test]
    fn answers_are_csv_records() {
        let mut t = RemoteCustomers::new(spec(64, 1000));
        let t0 = Instant::now();
        let mut m: HashMap<String, Sym> = HashMap::new();
        let mut names = Vec::new();
        let mut intern = |s: &str| {
            let n = m.len() as u32;
            *m.entry(s.to_owned()).or_insert_with(|| {
                names.push(s.to_owned());
                Sym(n)
            })
        };
        let body = "1,\"premium, family\",\"US\",3\r\n2,basic,DE,\n3, ads , ,300\n";
        assert_eq!(t.answer(body, t0, &mut intern), Ok(3));
        let row = |t: &RemoteCustomers, k| t.peek(k).expect("answered").expect("a row");
        let (one, two, three) = (row(&t, 1), row(&t, 2), row(&t, 3));
        assert_eq!(names[one.plan.index()], "premium, family");
        assert_eq!(names[one.signup_country.index()], "US");
        assert_eq!(two.profiles, None);
        assert_eq!(names[three.plan.index()], "ads");
        assert_eq!(names[three.signup_country.index()], "");
        assert_eq!(three.profiles, Some(300));
    }
}
