//! Enrichment: the geo, device and customer tables an event is joined against.
//!
//! Each shard holds its own copy of the tables (read-mostly data is copied per shard, never
//! shared; a MaxMind database is the one exception, read-only and mapped once). A table is
//! one of:
//! - rows in memory: the built-in W1 rows, or a CSV or JSON-lines file;
//! - a MaxMind database (geo only), behind a per-shard cache keyed by network prefix
//!   ([`mmdb`]);
//! - a lookup service (customer only), behind a per-shard cache with expiry and negative
//!   answers ([`remote`]; the runtime's client, `crate::lookup`, does the I/O).
//!
//! Strings are interned per shard, so rows are small `Copy` values and a lookup is one probe.
//! Symbol 0 is the empty string, which stands for "no value" (a database record without a
//! city, a CSV cell left empty). The interner only grows: rows loaded at start take the same
//! symbols in every shard, strings met later (a database record decoded on a cache miss) are
//! appended, and [`crate::route::compiled::Matcher::sync`] catches a shard's matcher up.

use std::net::IpAddr;
use std::path::Path;

use hashbrown::HashMap;
use sluice_protocol::EventView;

pub mod cache;
pub mod mmdb;
pub mod remote;

use std::sync::Arc;

use mmdb::{CacheStats, MmdbGeo};
use remote::{RemoteCustomers, RemoteSpec, RemoteStats};

/// An interned string: an index into [`Tables::strings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sym(u32);

impl Sym {
    /// The empty string: no value.
    pub const NONE: Sym = Sym(0);

    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoRow {
    pub country: Sym,
    pub region: Sym,
    pub city: Sym,
    /// 0 where the source has none.
    pub asn: u32,
}

impl GeoRow {
    /// A row with no values: what a missing row reads as.
    pub const NONE: GeoRow = GeoRow {
        country: Sym::NONE,
        region: Sym::NONE,
        city: Sym::NONE,
        asn: 0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRow {
    pub brand: Sym,
    pub model: Sym,
    pub platform: Sym,
    pub os: Sym,
}

impl DeviceRow {
    /// A row with no values: what a missing row reads as.
    pub const NONE: DeviceRow = DeviceRow {
        brand: Sym::NONE,
        model: Sym::NONE,
        platform: Sym::NONE,
        os: Sym::NONE,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerRow {
    pub plan: Sym,
    pub signup_country: Sym,
    /// `None` where the source has no value.
    pub profiles: Option<u16>,
}

impl CustomerRow {
    /// A row with no values: what a missing row reads as.
    pub const NONE: CustomerRow = CustomerRow {
        plan: Sym::NONE,
        signup_country: Sym::NONE,
        profiles: None,
    };
}

/// The rows one event joins to; `None` where its key has no row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Enriched {
    pub geo: Option<GeoRow>,
    pub device: Option<DeviceRow>,
    pub customer: Option<CustomerRow>,
    /// The customer table (a lookup service) had no answer in time: `customer` is `None`
    /// for want of an answer, not because there is no such customer.
    pub customer_missing: bool,
}

/// Where the geo rows come from.
#[derive(Debug, Clone)]
enum Geo {
    /// Keyed by the /24 prefix of an IPv4 address (`a << 16 | b << 8 | c`).
    Rows(PrefixRows),
    Mmdb(Box<MmdbGeo>),
}

/// Where the customer rows come from.
#[derive(Debug, Clone)]
enum Customer {
    Rows(Rows<CustomerRow>),
    Remote(Box<RemoteCustomers>),
}

/// One table's figures for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableStats {
    /// Rows held in memory (for a cached table: cache entries).
    pub entries: usize,
    /// For a cached table: its capacity and its hits and misses.
    pub capacity: Option<usize>,
    pub cache: CacheStats,
    /// For a table behind a lookup service.
    pub remote: Option<RemoteStats>,
}

/// The enrichment tables of one shard.
#[derive(Debug, Clone)]
pub struct Tables {
    geo: Geo,
    device: Rows<DeviceRow>,
    customer: Customer,
    strings: Strings,
}

/// The tables' interned strings, and each one's JSON (quoted and escaped), which records copy:
/// all in one buffer, each string's text then its JSON, so that a record's table strings lie
/// a few to a cache line rather than each in an allocation of its own (W1's geo regions alone
/// are about 5,000 strings, read in a Zipf spread).
#[derive(Debug, Clone)]
struct Strings {
    bytes: String,
    /// Each string's place in `bytes`, by [`Sym`].
    spans: Vec<Span>,
    interned: HashMap<Box<str>, Sym>,
}

/// Where an interned string's text starts in [`Strings::bytes`] (its JSON follows it), and
/// the two's lengths.
#[derive(Debug, Clone, Copy)]
struct Span {
    at: u32,
    text: u32,
    json: u32,
}

impl Strings {
    /// The strings of no table: the empty string, [`Sym::NONE`].
    fn new() -> Strings {
        let mut s = Strings {
            bytes: String::new(),
            spans: Vec::new(),
            interned: HashMap::new(),
        };
        let none = s.intern("");
        debug_assert_eq!(none, Sym::NONE);
        s
    }

    fn intern(&mut self, s: &str) -> Sym {
        if let Some(sym) = self.interned.get(s) {
            return *sym;
        }
        let sym = Sym(u32::try_from(self.spans.len()).expect("under 2^32 strings"));
        let at = self.bytes.len();
        self.bytes.push_str(s);
        let mut json = Vec::with_capacity(s.len() + 2);
        crate::sink::record::json_str(&mut json, s);
        self.bytes
            .push_str(std::str::from_utf8(&json).expect("a string's JSON is UTF-8"));
        let len = |n: usize| u32::try_from(n).expect("under 4 GiB of table strings");
        self.spans.push(Span {
            at: len(at),
            text: len(s.len()),
            json: len(json.len()),
        });
        // The whole buffer within u32 too, so that a span's ends (`at + text + json`) are.
        len(self.bytes.len());
        self.interned.insert(s.into(), sym);
        sym
    }

    // Both reads trust the span: `intern` made it of exactly the bytes it pushed (a `&str`,
    // then its JSON), in `bytes`, which only grows. Checking the range and the UTF-8 again
    // on each read cost about 125 instructions a W1 event (nine strings an event).

    #[inline]
    fn text(&self, s: Sym) -> &str {
        let span = self.spans[s.0 as usize];
        let (at, end) = (span.at as usize, (span.at + span.text) as usize);
        // SAFETY: as above, `bytes[at..end]` lies in `bytes` and is a whole `&str`'s bytes.
        unsafe { self.bytes.get_unchecked(at..end) }
    }

    #[inline]
    fn json(&self, s: Sym) -> &[u8] {
        let span = self.spans[s.0 as usize];
        let at = (span.at + span.text) as usize;
        // SAFETY: as above, the JSON's span lies in `bytes`.
        unsafe {
            self.bytes
                .as_bytes()
                .get_unchecked(at..at + span.json as usize)
        }
    }
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            geo: Geo::Rows(PrefixRows::new(HashMap::new())),
            device: Rows::default(),
            customer: Customer::Rows(Rows::default()),
            strings: Strings::new(),
        }
    }
}

/// The columns of each table, in the order the loaders take them.
pub const GEO_COLUMNS: [&str; 5] = ["prefix", "country", "region", "asn", "city"];
pub const DEVICE_COLUMNS: [&str; 5] = ["device_type_id", "brand", "model", "platform", "os"];
pub const CUSTOMER_COLUMNS: [&str; 4] = ["customer_id", "plan", "signup_country", "profiles"];

impl Tables {
    /// The W1 tables generated from `seed` (the rows `loadgen fixtures` writes).
    pub fn w1(seed: u64) -> Tables {
        let mut t = Tables::default();
        t.load_w1_geo(seed);
        t.load_w1_device(seed);
        t.load_w1_customer(seed);
        t
    }

    pub fn load_w1_geo(&mut self, seed: u64) {
        let mut rows = HashMap::new();
        for g in sluice_workload::tables::geo(seed) {
            let row = GeoRow {
                country: self.intern(g.country),
                region: self.intern(&g.region),
                city: Sym::NONE,
                asn: g.asn,
            };
            rows.insert(prefix_key(g.prefix), row);
        }
        self.geo = Geo::Rows(PrefixRows::new(rows));
    }

    pub fn load_w1_device(&mut self, seed: u64) {
        let mut rows = Rows::default();
        for d in sluice_workload::tables::devices(seed) {
            let row = DeviceRow {
                brand: self.intern(d.brand),
                model: self.intern(&d.model),
                platform: self.intern(d.platform),
                os: self.intern(d.os),
            };
            rows.insert(u64::from(d.device_type_id), row);
        }
        rows.seal();
        self.device = rows;
    }

    pub fn load_w1_customer(&mut self, seed: u64) {
        let customers = sluice_workload::tables::customers(seed);
        let mut rows = Rows::default();
        rows.reserve(customers.len());
        for c in customers {
            let row = CustomerRow {
                plan: self.intern(c.plan),
                signup_country: self.intern(c.signup_country),
                profiles: Some(u16::from(c.profiles)),
            };
            rows.insert(c.customer_id, row);
        }
        rows.seal();
        self.customer = Customer::Rows(rows);
    }

    /// Loads table `name` (`geo`, `device` or `customer`) from a CSV file (RFC 4180, with a
    /// header line naming the columns) or a JSON-lines file (one object per line), chosen by
    /// its extension: `.csv`, or `.jsonl`/`.json`/`.ndjson`. Columns are [`GEO_COLUMNS`]
    /// (`city` optional), [`DEVICE_COLUMNS`] and [`CUSTOMER_COLUMNS`]; others are ignored. An
    /// empty cell (a JSON null or a missing name) is no value; a row without its key, or with
    /// a cell its column cannot hold, is refused with `FILE:LINE:` and the column's name.
    pub fn load_file(&mut self, name: &str, path: &Path) -> Result<usize, String> {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => TableFormat::Csv,
            Some("jsonl" | "json" | "ndjson") => TableFormat::JsonLines,
            _ => {
                return Err(format!(
                    "{}: a table file is .csv or .jsonl (JSON lines)",
                    path.display()
                ));
            }
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let at = |e: String| format!("{}:{e}", path.display());
        match name {
            "geo" => self.load_geo(&records(&text, format, &GEO_COLUMNS, 4).map_err(at)?),
            "device" => self.load_device(&records(&text, format, &DEVICE_COLUMNS, 5).map_err(at)?),
            "customer" => {
                self.load_customer(&records(&text, format, &CUSTOMER_COLUMNS, 4).map_err(at)?)
            }
            _ => return Err(format!("no table {name:?} (known: geo, device, customer)")),
        }
        .map_err(at)
    }

    /// Geo rows from a MaxMind database, behind a per-shard cache of `cache_entries`.
    pub fn use_mmdb(&mut self, db: mmdb::Database, cache_entries: usize) {
        self.geo = Geo::Mmdb(Box::new(MmdbGeo::new(db, cache_entries)));
    }

    /// Customer rows from a lookup service, behind a per-shard cache.
    pub fn use_remote_customer(&mut self, spec: Arc<RemoteSpec>) {
        self.customer = Customer::Remote(Box::new(RemoteCustomers::new(spec)));
    }

    /// The lookup service the customer table asks, if it does.
    pub fn remote_customer(&self) -> Option<&Arc<RemoteSpec>> {
        match &self.customer {
            Customer::Remote(r) => Some(r.spec()),
            Customer::Rows(_) => None,
        }
    }

    /// Starts a two-pass batch at `now`: a table behind a lookup service forgets the last
    /// batch's misses and serves what expired by `now` stale.
    #[inline]
    pub fn begin_batch(&mut self, now: std::time::Instant) {
        if let Customer::Remote(r) = &mut self.customer {
            r.begin_batch(now);
        }
    }

    /// First sight of `event` in a two-pass batch (see [`remote`]): notes the keys a table
    /// behind a lookup service lacks. Nothing for tables in memory.
    #[inline]
    pub fn probe(&mut self, event: &EventView<'_>) {
        if let Customer::Remote(r) = &mut self.customer {
            r.probe(event.customer_id);
        }
    }

    /// The customer keys this batch lacks and those to refresh (empty without a service).
    pub fn wants(&self) -> (&[u64], &[u64]) {
        match &self.customer {
            Customer::Remote(r) => r.wants(),
            Customer::Rows(_) => (&[], &[]),
        }
    }

    /// Puts a lookup service's answer into the customer cache (see
    /// [`RemoteCustomers::answer`]); ignored (`Ok(0)`) if the customer table no longer asks a
    /// service (a reload changed it while the request was out).
    pub fn answer(&mut self, body: &str, now: std::time::Instant) -> Result<usize, String> {
        let Customer::Remote(r) = &mut self.customer else {
            return Ok(0);
        };
        let strings = &mut self.strings;
        r.answer(body, now, |s| strings.intern(s))
    }

    fn load_geo(&mut self, recs: &[Rec]) -> Result<usize, String> {
        let mut rows = HashMap::new();
        for (line, f) in recs {
            let cell = Cells::new(*line, &GEO_COLUMNS, f);
            let prefix = cell.key(0)?;
            let prefix = parse_prefix(prefix).ok_or_else(|| {
                format!("{line}: column \"prefix\": {prefix:?} is not a.b.c.0/24")
            })?;
            let row = GeoRow {
                country: self.intern(&f[1]),
                region: self.intern(&f[2]),
                // ASN 0 is no AS: no value, as an empty cell.
                asn: cell.num::<u32>(3)?.unwrap_or(0),
                city: self.intern(&f[4]),
            };
            rows.insert(prefix_key(prefix), row);
        }
        self.geo = Geo::Rows(PrefixRows::new(rows));
        Ok(recs.len())
    }

    fn load_device(&mut self, recs: &[Rec]) -> Result<usize, String> {
        let mut rows = Rows::default();
        for (line, f) in recs {
            let cell = Cells::new(*line, &DEVICE_COLUMNS, f);
            let key = cell.key_num::<u32>(0)?;
            let row = DeviceRow {
                brand: self.intern(&f[1]),
                model: self.intern(&f[2]),
                platform: self.intern(&f[3]),
                os: self.intern(&f[4]),
            };
            rows.insert(u64::from(key), row);
        }
        rows.seal();
        self.device = rows;
        Ok(recs.len())
    }

    fn load_customer(&mut self, recs: &[Rec]) -> Result<usize, String> {
        let mut rows = Rows::default();
        rows.reserve(recs.len());
        for (line, f) in recs {
            let cell = Cells::new(*line, &CUSTOMER_COLUMNS, f);
            let key = cell.key_num::<u64>(0)?;
            let row = CustomerRow {
                plan: self.intern(&f[1]),
                signup_country: self.intern(&f[2]),
                profiles: cell.num::<u16>(3)?,
            };
            rows.insert(key, row);
        }
        rows.seal();
        self.customer = Customer::Rows(rows);
        Ok(recs.len())
    }

    fn intern(&mut self, s: &str) -> Sym {
        self.strings.intern(s)
    }

    /// Every interned string, by [`Sym::index`].
    pub fn strings(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.strings.spans.len()).map(|i| self.strings.text(Sym(i as u32)))
    }

    /// The text of an interned string.
    #[inline]
    pub fn str(&self, s: Sym) -> &str {
        self.strings.text(s)
    }

    /// An interned string as JSON: quoted and escaped.
    #[inline]
    pub fn json(&self, s: Sym) -> &[u8] {
        self.strings.json(s)
    }

    /// The rows `event` joins to. A cached table may fill its cache (and intern the strings
    /// of the rows it fills in). A table behind a lookup service answers from its cache and
    /// notes what it lacks (see [`Tables::probe`]).
    #[inline]
    pub fn lookup(&mut self, event: &EventView<'_>) -> Enriched {
        self.probe(event);
        self.rejoin(event)
    }

    /// Fetches ahead the rows `event` will join to in the tables held in memory, so that the
    /// lookup that follows a little later finds them in cache.
    #[inline]
    pub fn prefetch(&self, event: &EventView<'_>) {
        if let (Geo::Rows(rows), IpAddr::V4(v4)) = (&self.geo, event.client_ip) {
            let [a, b, c, _] = v4.octets();
            rows.prefetch(prefix_key([a, b, c]));
        }
        if let Customer::Rows(rows) = &self.customer {
            rows.prefetch(event.customer_id);
        }
    }

    /// The rows `event` joins to, after [`Tables::probe`] saw it: a table behind a lookup
    /// service gives what its cache holds now, or marks the event's customer missing.
    #[inline]
    pub fn rejoin(&mut self, event: &EventView<'_>) -> Enriched {
        let geo = match &mut self.geo {
            Geo::Rows(rows) => geo_row(rows, event.client_ip),
            Geo::Mmdb(db) => {
                let strings = &mut self.strings;
                db.lookup(event.client_ip, |s| strings.intern(s))
            }
        };
        let (customer, customer_missing) = match &mut self.customer {
            Customer::Rows(rows) => (rows.get(event.customer_id), false),
            Customer::Remote(r) => r
                .joined(event.customer_id)
                .map_or((None, true), |c| (c, false)),
        };
        Enriched {
            geo,
            device: self.device.get(u64::from(event.device_type_id)),
            customer,
            customer_missing,
        }
    }

    /// The rows `event` joins to as the tables stand: a cached table answers from its cache
    /// alone, and nothing changes (for tests and benches that join events once up front).
    pub fn peek(&self, event: &EventView<'_>) -> Enriched {
        let geo = match &self.geo {
            Geo::Rows(rows) => geo_row(rows, event.client_ip),
            Geo::Mmdb(db) => db.peek(event.client_ip).flatten(),
        };
        let (customer, customer_missing) = match &self.customer {
            Customer::Rows(rows) => (rows.get(event.customer_id), false),
            Customer::Remote(r) => r
                .peek(event.customer_id)
                .map_or((None, true), |c| (c, false)),
        };
        Enriched {
            geo,
            device: self.device.get(u64::from(event.device_type_id)),
            customer,
            customer_missing,
        }
    }

    /// Where the geo rows come from, in words.
    pub fn geo_source(&self) -> String {
        match &self.geo {
            Geo::Rows(r) => format!("{} rows", r.len()),
            Geo::Mmdb(m) => format!(
                "{} ({}), cache of {}",
                m.database().path().display(),
                m.database().kind(),
                m.cache_capacity()
            ),
        }
    }

    /// Figures per table: geo, device, customer.
    pub fn stats(&self) -> [(&'static str, TableStats); 3] {
        let geo = match &self.geo {
            Geo::Rows(r) => TableStats {
                entries: r.len(),
                ..TableStats::default()
            },
            Geo::Mmdb(m) => TableStats {
                entries: m.cache_len(),
                capacity: Some(m.cache_capacity()),
                cache: m.stats,
                remote: None,
            },
        };
        let customer = match &self.customer {
            Customer::Rows(r) => TableStats {
                entries: r.len(),
                ..TableStats::default()
            },
            Customer::Remote(r) => TableStats {
                entries: r.cache_len(),
                capacity: Some(r.cache_capacity()),
                cache: r.cache_stats,
                remote: Some(r.stats),
            },
        };
        let rows = |n: usize| TableStats {
            entries: n,
            ..TableStats::default()
        };
        [
            ("geo", geo),
            ("device", rows(self.device.len())),
            ("customer", customer),
        ]
    }

    pub fn geo_rows(&self) -> usize {
        match &self.geo {
            Geo::Rows(r) => r.len(),
            Geo::Mmdb(_) => 0,
        }
    }

    pub fn device_rows(&self) -> usize {
        self.device.len()
    }

    /// Rows in memory (0 for a table behind a lookup service).
    pub fn customer_rows(&self) -> usize {
        match &self.customer {
            Customer::Rows(r) => r.len(),
            Customer::Remote(_) => 0,
        }
    }
}

#[inline]
fn geo_row(rows: &PrefixRows, ip: IpAddr) -> Option<GeoRow> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            rows.get(prefix_key([a, b, c]))
        }
        IpAddr::V6(_) => None,
    }
}

/// A table's row array, in memory of its own, aligned to and rounded up to whole huge pages
/// (2 MiB), which the kernel is asked to back with huge pages before it is first touched; and
/// so is each clone's (a shard's pipeline holds a clone of the config's tables, made again at
/// each reload). The rows are read at random: over 4 KiB pages W1's customer (12 MB) and geo
/// (5 MB) rows span more pages than the core's TLB holds, and most lookups walk the page
/// tables first (tuning.md, "The tables on huge pages"). Where the kernel has none to give, or
/// transparent huge pages are off, the pages are the usual ones.
struct HugeVec<T: Copy> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
}

const HUGE_PAGE: usize = 2 << 20;

impl<T: Copy> HugeVec<T> {
    /// `n` copies of `elem`.
    fn filled(elem: T, n: usize) -> HugeVec<T> {
        let v = HugeVec::<T>::uninit(n);
        for i in 0..n {
            // SAFETY: `uninit` allocated room for `n` elements at `ptr`.
            unsafe { v.ptr.as_ptr().add(i).write(elem) };
        }
        v
    }

    /// Room for `n` elements, not yet written (`filled` and `clone` write them all before the
    /// vector is read).
    fn uninit(n: usize) -> HugeVec<T> {
        let Some(layout) = Self::layout(n) else {
            return HugeVec {
                ptr: std::ptr::NonNull::dangling(),
                len: n,
            };
        };
        // SAFETY: the layout's size is not zero (`layout` gives none for no bytes).
        let p = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(p.cast::<T>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        if layout.align() == HUGE_PAGE {
            // SAFETY: `madvise` only advises how to back the pages of the allocation just
            // made (whole huge pages: its start and size are multiples of one); it neither
            // reads, writes nor unmaps them.
            unsafe {
                libc::madvise(p.cast(), layout.size(), libc::MADV_HUGEPAGE);
            }
        }
        HugeVec { ptr, len: n }
    }

    /// The allocation for `n` elements: from one huge page up, whole huge pages aligned to
    /// one; less, a plain array (rounded up to a huge page, a small table would take one
    /// whole once touched); `None` for no bytes (no rows, or zero-sized ones).
    fn layout(n: usize) -> Option<std::alloc::Layout> {
        let array = std::alloc::Layout::array::<T>(n).expect("a table fits in memory");
        if array.size() == 0 {
            return None;
        }
        if array.size() < HUGE_PAGE {
            return Some(array);
        }
        let size = array.size().next_multiple_of(HUGE_PAGE);
        let layout = std::alloc::Layout::from_size_align(size, HUGE_PAGE.max(array.align()));
        Some(layout.expect("a table fits in memory"))
    }
}

impl<T: Copy> Drop for HugeVec<T> {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: `uninit` allocated `ptr` with this very layout (the length never
            // changes); the elements are `Copy`, with nothing to drop.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

impl<T: Copy> Clone for HugeVec<T> {
    fn clone(&self) -> HugeVec<T> {
        let v = HugeVec::<T>::uninit(self.len);
        // SAFETY: both hold room for `len` elements, and `self`'s are written; two
        // allocations do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), v.ptr.as_ptr(), self.len) };
        v
    }
}

impl<T: Copy> Default for HugeVec<T> {
    fn default() -> HugeVec<T> {
        HugeVec::uninit(0)
    }
}

impl<T: Copy> std::ops::Deref for HugeVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` written elements (or is dangling, aligned, for none of
        // any size but zero-sized ones, which need no memory).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for HugeVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

// SAFETY: a `HugeVec` owns its elements as a `Vec` does; sending or sharing it sends or shares
// them.
unsafe impl<T: Copy + Send> Send for HugeVec<T> {}
// SAFETY: as above.
unsafe impl<T: Copy + Sync> Sync for HugeVec<T> {}

/// Asks the CPU to bring the line at `p` into its caches, without waiting for it.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Geo rows keyed by /24 prefix in one open-addressed array (linear probing, at most half
/// full), each slot holding its key and row: a lookup reads one slot, mostly, and the slot an
/// address will read can be fetched ahead ([`Tables::prefetch`]) while other work runs. W1's
/// 100,000 prefixes take 5 MB, more than the core's caches, and their Zipf spread misses.
#[derive(Debug, Clone)]
struct PrefixRows {
    slots: HugeVec<PrefixSlot>,
    /// 64 less the log2 of the slot count: a key's home slot is its hash's top bits.
    shift: u32,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct PrefixSlot {
    /// The prefix key plus one; 0: an empty slot.
    key: u32,
    row: GeoRow,
}

impl PrefixRows {
    fn new(rows: HashMap<u32, GeoRow>) -> PrefixRows {
        let cap = (rows.len() * 2).next_power_of_two().max(16);
        let empty = PrefixSlot {
            key: 0,
            row: GeoRow {
                country: Sym::NONE,
                region: Sym::NONE,
                city: Sym::NONE,
                asn: 0,
            },
        };
        let mut t = PrefixRows {
            slots: HugeVec::filled(empty, cap),
            shift: 64 - cap.trailing_zeros(),
            len: rows.len(),
        };
        let mask = cap - 1;
        for (key, row) in rows {
            let mut i = t.home(key);
            while t.slots[i].key != 0 {
                i = (i + 1) & mask;
            }
            t.slots[i] = PrefixSlot { key: key + 1, row };
        }
        t
    }

    #[inline]
    fn home(&self, key: u32) -> usize {
        (u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    #[inline]
    fn get(&self, key: u32) -> Option<GeoRow> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if s.key == key + 1 {
                return Some(s.row);
            }
            if s.key == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    fn prefetch(&self, key: u32) {
        prefetch(&self.slots[self.home(key)]);
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Rows by a numeric key: a plain vector indexed by key when the keys are dense (W1's device
/// and customer ids are 1..=N), so a lookup is one load instead of a hash probe.
#[derive(Debug, Clone)]
struct Rows<V: Copy> {
    map: HashMap<u64, V>,
    dense: HugeVec<Option<V>>,
    /// Rows held (counted once: `/metrics` asks every publish).
    len: usize,
}

impl<V: Copy> Default for Rows<V> {
    fn default() -> Self {
        Rows {
            map: HashMap::new(),
            dense: HugeVec::default(),
            len: 0,
        }
    }
}

impl<V: Copy> Rows<V> {
    fn insert(&mut self, key: u64, row: V) {
        self.map.insert(key, row);
    }

    fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
    }

    /// Switches to the dense form when the largest key is under twice the row count.
    fn seal(&mut self) {
        self.len = self.map.len();
        let max = self.map.keys().max().copied().unwrap_or(0);
        if !self.map.is_empty() && max < 2 * self.map.len() as u64 + 1024 {
            let mut dense = HugeVec::filled(None, max as usize + 1);
            for (k, v) in self.map.drain() {
                dense[k as usize] = Some(v);
            }
            self.dense = dense;
        }
    }

    /// Fetches ahead the row `key` will read, when rows are dense.
    #[inline]
    fn prefetch(&self, key: u64) {
        if let Some(row) = self.dense.get(key as usize) {
            prefetch(row);
        }
    }

    #[inline]
    fn get(&self, key: u64) -> Option<V> {
        if self.dense.is_empty() {
            self.map.get(&key).copied()
        } else {
            self.dense.get(key as usize).copied().flatten()
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

fn prefix_key([a, b, c]: [u8; 3]) -> u32 {
    u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c)
}

fn parse_prefix(s: &str) -> Option<[u8; 3]> {
    let ip = s.strip_suffix(".0/24")?;
    let mut it = ip.split('.').map(|p| p.parse::<u8>());
    let out = [it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?];
    it.next().is_none().then_some(out)
}

/// The cells of one table row, for reading them by column with errors that name it.
struct Cells<'a> {
    line: usize,
    columns: &'a [&'a str],
    cells: &'a [String],
}

impl<'a> Cells<'a> {
    fn new(line: usize, columns: &'a [&'a str], cells: &'a [String]) -> Cells<'a> {
        assert_eq!(columns.len(), cells.len(), "a cell per column");
        Cells {
            line,
            columns,
            cells,
        }
    }

    fn error(&self, c: usize, why: String) -> String {
        format!("{}: column {:?}: {why}", self.line, self.columns[c])
    }

    /// Column `c`, the row's key: it must have a value.
    fn key(&self, c: usize) -> Result<&'a str, String> {
        match self.cells[c].as_str() {
            "" => Err(self.error(c, "empty, and a row needs its key".into())),
            s => Ok(s),
        }
    }

    fn key_num<T: Number>(&self, c: usize) -> Result<T, String> {
        self.key(c)?;
        Ok(self.num(c)?.expect("a key has a value"))
    }

    /// Column `c` as a number (`None` when empty: no value).
    fn num<T: Number>(&self, c: usize) -> Result<Option<T>, String> {
        let s = self.cells[c].as_str();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| {
            self.error(
                c,
                format!("{s:?} is not a whole number from 0 to {}", T::MAX_TEXT),
            )
        })
    }
}

/// The unsigned integers table columns hold.
trait Number: std::str::FromStr {
    const MAX_TEXT: &'static str;
}

impl Number for u16 {
    const MAX_TEXT: &'static str = "65535";
}

impl Number for u32 {
    const MAX_TEXT: &'static str = "4294967295";
}

impl Number for u64 {
    const MAX_TEXT: &'static str = "18446744073709551615";
}

#[derive(Debug, Clone, Copy)]
enum TableFormat {
    Csv,
    JsonLines,
}

/// A table row: its line number and its cells in the loader's column order (a missing
/// optional column is empty).
type Rec = (usize, Vec<String>);

/// The rows of a table file: `columns` in order, the first `required` of them named in a
/// CSV header. Errors start with the line they are about (`LINE: why`).
fn records(
    text: &str,
    format: TableFormat,
    columns: &[&str],
    required: usize,
) -> Result<Vec<Rec>, String> {
    match format {
        TableFormat::Csv => csv_records(text, columns, required),
        TableFormat::JsonLines => json_records(text, columns),
    }
}

fn csv_records(text: &str, columns: &[&str], required: usize) -> Result<Vec<Rec>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let line_of = |p: Option<&csv::Position>| p.map_or(1, |p| p.line() as usize);
    let csv_error = |e: csv::Error| {
        let line = line_of(e.position());
        let why = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("{len} fields, the header has {expected_len}"),
            csv::ErrorKind::Utf8 { .. } => "not UTF-8".to_owned(),
            _ => format!("not CSV: {e}"),
        };
        format!("{line}: {why}")
    };
    let names: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => return Err(csv_error(e)),
    };
    if names.iter().all(String::is_empty) {
        return Ok(Vec::new());
    }
    let at: Vec<Option<usize>> = columns
        .iter()
        .map(|c| names.iter().position(|n| n == c))
        .collect();
    if let Some(c) = (0..required).find(|&i| at[i].is_none()) {
        return Err(format!(
            "1: the header has no column {:?} (it needs {})",
            columns[c],
            columns[..required].join(", ")
        ));
    }
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(e)),
        }
        let line = line_of(record.position());
        let cells = at
            .iter()
            .map(|a| a.and_then(|a| record.get(a)).unwrap_or("").to_owned())
            .collect();
        out.push((line, cells));
    }
    Ok(out)
}

fn json_records(text: &str, columns: &[&str]) -> Result<Vec<Rec>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{line_no}: not JSON: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{line_no}: not a JSON object"))?;
        let mut cells = Vec::with_capacity(columns.len());
        for name in columns {
            let cell = match obj.get(*name) {
                Some(serde_json::Value::String(s)) => s.trim().to_owned(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                None | Some(serde_json::Value::Null) => String::new(),
                Some(other) => {
                    return Err(format!(
                        "{line_no}: column {name:?}: {other} is not a string or number"
                    ));
                }
            };
            cells.push(cell);
        }
        out.push((line_no, cells));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::HugeVec;

    /// Asking for huge pages changes nothing of what the vector holds, at any size: none, less
    /// than a huge page, and several with parts of pages at both ends; nor of what a clone
    /// holds.
    #[test]
    fn a_vector_on_huge_pages_holds_its_copies() {
        for n in [0, 1, 1000, (5 << 20) / 12 + 3] {
            let v = HugeVec::filled([1u32, 2, 3], n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|x| *x == [1, 2, 3]));
            let c = v.clone();
            assert_eq!(&c[..], &v[..]);
        }
    }

    /// The advice is kept by a clone, which is what a shard's pipeline reads (a plain `Vec`
    /// clone lost it): the kernel marks the middle of a clone's memory `hg` (advised
    /// `MADV_HUGEPAGE`) in `/proc/self/smaps`, whether or not it had huge pages to give.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_clone_is_advised_onto_huge_pages_too() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return; // a kernel without transparent huge pages takes no such advice
        }
        let advised = |at: usize| {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut inside = false;
            for line in smaps.lines() {
                let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
                if let Some((from, to)) = range
                    && let (Ok(from), Ok(to)) = (
                        usize::from_str_radix(from, 16),
                        usize::from_str_radix(to, 16),
                    )
                {
                    inside = (from..to).contains(&at);
                } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.split_whitespace().any(|f| f == "hg");
                }
            }
            panic!("no mapping holds {at:#x}")
        };
        let v = HugeVec::filled(7u64, 2 << 20); // 16 MiB: whole huge pages inside
        let c = v.clone();
        assert!(advised(v.as_ptr().wrapping_add(v.len() / 2) as usize));
        assert!(advised(c.as_ptr().wrapping_add(c.len() / 2) as usize));
    }

    /// Interned strings read back as they went in, each with its JSON, however they mix
    /// (escapes, other scripts, the empty string, one interned twice).
    #[test]
    fn interned_strings_keep_their_text_and_json() {
        let mut strings = super::Strings::new();
        let texts = [
            "US",
            "",
            "a \"quoted\"\nline",
            "Zürich",
            "東京",
            "US",
            "x\u{1}",
        ];
        let syms: Vec<_> = texts.iter().map(|t| strings.intern(t)).collect();
        assert_eq!(syms[0], syms[5]);
        assert_eq!(syms[1], super::Sym::NONE);
        for (t, s) in texts.iter().zip(&syms) {
            assert_eq!(strings.text(*s), *t);
            let mut json = Vec::new();
            crate::sink::record::json_str(&mut json, t);
            assert_eq!(strings.json(*s), &json[..], "{t:?}");
        }
    }
}
