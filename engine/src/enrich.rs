//! Enrichment: the geo, device and customer tables an event is joined against.
//!
//! For now each shard holds its own copy of the tables as plain hash maps (read-mostly data is
//! copied per shard, never shared). Strings are interned once per table set, so rows are small
//! `Copy` values and a lookup is one probe. Caches in front of remote lookup services come with
//! their own issue; this module keeps the seam: [`Tables::lookup`] gives an [`Enriched`].

use std::net::IpAddr;

use hashbrown::HashMap;
use sluice_protocol::EventView;

/// An interned string: an index into [`Tables::strings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sym(u32);

impl Sym {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoRow {
    pub country: Sym,
    pub region: Sym,
    pub asn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRow {
    pub brand: Sym,
    pub model: Sym,
    pub platform: Sym,
    pub os: Sym,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerRow {
    pub plan: Sym,
    pub signup_country: Sym,
    pub profiles: u8,
}

/// The rows one event joins to; `None` where its key has no row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Enriched {
    pub geo: Option<GeoRow>,
    pub device: Option<DeviceRow>,
    pub customer: Option<CustomerRow>,
}

/// The enrichment tables of one shard.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// Keyed by the /24 prefix of an IPv4 address (`a << 16 | b << 8 | c`).
    geo: HashMap<u32, GeoRow>,
    device: Rows<DeviceRow>,
    customer: Rows<CustomerRow>,
    strings: Vec<Box<str>>,
    interned: HashMap<Box<str>, Sym>,
}

impl Tables {
    /// The W1 tables generated from `seed` (the rows `loadgen fixtures` writes).
    pub fn w1(seed: u64) -> Tables {
        use sluice_loadgen::tables;
        let mut t = Tables::default();
        for g in tables::geo(seed) {
            let row = GeoRow {
                country: t.intern(g.country),
                region: t.intern(&g.region),
                asn: g.asn,
            };
            t.geo.insert(prefix_key(g.prefix), row);
        }
        for d in tables::devices(seed) {
            let row = DeviceRow {
                brand: t.intern(d.brand),
                model: t.intern(&d.model),
                platform: t.intern(d.platform),
                os: t.intern(d.os),
            };
            t.device.insert(u64::from(d.device_type_id), row);
        }
        let customers = tables::customers(seed);
        t.customer.reserve(customers.len());
        for c in customers {
            let row = CustomerRow {
                plan: t.intern(c.plan),
                signup_country: t.intern(c.signup_country),
                profiles: c.profiles,
            };
            t.customer.insert(c.customer_id, row);
        }
        t.seal();
        t
    }

    fn seal(&mut self) {
        self.device.seal();
        self.customer.seal();
    }

    /// Tables from CSV text in the formats `loadgen fixtures` writes (a header line, then
    /// `prefix,country,region,asn`, `device_type_id,brand,model,platform,os` and
    /// `customer_id,plan,signup_country,profiles`). A missing table is empty.
    pub fn from_csv(
        geo: Option<&str>,
        device: Option<&str>,
        customer: Option<&str>,
    ) -> Result<Tables, String> {
        let mut t = Tables::default();
        for (line, f) in csv_rows(geo, 4, "geo")? {
            let prefix = parse_prefix(f[0])
                .ok_or_else(|| format!("geo line {line}: prefix {:?} is not a.b.c.0/24", f[0]))?;
            let row = GeoRow {
                country: t.intern(f[1]),
                region: t.intern(f[2]),
                asn: num(f[3], "geo", line)?,
            };
            t.geo.insert(prefix_key(prefix), row);
        }
        for (line, f) in csv_rows(device, 5, "device")? {
            let row = DeviceRow {
                brand: t.intern(f[1]),
                model: t.intern(f[2]),
                platform: t.intern(f[3]),
                os: t.intern(f[4]),
            };
            t.device.insert(num(f[0], "device", line)?, row);
        }
        for (line, f) in csv_rows(customer, 4, "customer")? {
            let row = CustomerRow {
                plan: t.intern(f[1]),
                signup_country: t.intern(f[2]),
                profiles: num(f[3], "customer", line)?,
            };
            t.customer.insert(num(f[0], "customer", line)?, row);
        }
        t.seal();
        Ok(t)
    }

    fn intern(&mut self, s: &str) -> Sym {
        if let Some(sym) = self.interned.get(s) {
            return *sym;
        }
        let sym = Sym(u32::try_from(self.strings.len()).expect("under 2^32 strings"));
        self.strings.push(s.into());
        self.interned.insert(s.into(), sym);
        sym
    }

    /// Every interned string, by [`Sym::index`].
    pub fn strings(&self) -> &[Box<str>] {
        &self.strings
    }

    /// The text of an interned string.
    #[inline]
    pub fn str(&self, s: Sym) -> &str {
        &self.strings[s.0 as usize]
    }

    /// The rows `event` joins to.
    #[inline]
    pub fn lookup(&self, event: &EventView<'_>) -> Enriched {
        let geo = match event.client_ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                self.geo.get(&prefix_key([a, b, c])).copied()
            }
            IpAddr::V6(_) => None,
        };
        Enriched {
            geo,
            device: self.device.get(u64::from(event.device_type_id)),
            customer: self.customer.get(event.customer_id),
        }
    }

    pub fn geo_rows(&self) -> usize {
        self.geo.len()
    }

    pub fn device_rows(&self) -> usize {
        self.device.len()
    }

    pub fn customer_rows(&self) -> usize {
        self.customer.len()
    }
}

/// Rows by a numeric key: a plain vector indexed by key when the keys are dense (W1's device
/// and customer ids are 1..=N), so a lookup is one load instead of a hash probe.
#[derive(Debug, Clone)]
struct Rows<V: Copy> {
    map: HashMap<u64, V>,
    dense: Vec<Option<V>>,
}

impl<V: Copy> Default for Rows<V> {
    fn default() -> Self {
        Rows {
            map: HashMap::new(),
            dense: Vec::new(),
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
        let max = self.map.keys().max().copied().unwrap_or(0);
        if !self.map.is_empty() && max < 2 * self.map.len() as u64 + 1024 {
            let mut dense = vec![None; max as usize + 1];
            for (k, v) in self.map.drain() {
                dense[k as usize] = Some(v);
            }
            self.dense = dense;
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
        if self.dense.is_empty() {
            self.map.len()
        } else {
            self.dense.iter().filter(|r| r.is_some()).count()
        }
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

fn num<T: std::str::FromStr>(s: &str, table: &str, line: usize) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{table} line {line}: {s:?} is not a number in range"))
}

/// The rows of a CSV table after its header: (line number, fields).
fn csv_rows<'a>(
    text: Option<&'a str>,
    fields: usize,
    table: &str,
) -> Result<Vec<(usize, Vec<&'a str>)>, String> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != fields {
            return Err(format!(
                "{table} line {}: {} fields, expected {fields}",
                i + 1,
                f.len()
            ));
        }
        out.push((i + 1, f));
    }
    Ok(out)
}
