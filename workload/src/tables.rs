//! The W1 enrichment tables (WORKLOAD.md), generated from a seed so that the engine's embedded
//! default, `loadgen fixtures` and the tests all hold the same rows.
//!
//! - geo: one row per client /24 prefix the workload draws ([`crate::events::ip_prefix`] of
//!   0..100,000): country (ISO 3166 alpha-2, Zipf s=1.0 over [`COUNTRIES`], busiest first),
//!   region (`CC-NN`), asn.
//! - device: one row per device type 1..=500: brand, model, platform (tv, mobile, web,
//!   console, streamer), os.
//! - customer: one row per customer 1..=1,000,000: plan (basic, standard, premium, ads),
//!   signup_country, profiles (1..=5).
//!
//! Each table has its own stream (seed, table), so adding a column to one leaves the others'
//! rows as they were. Tables are written as CSV with a header row.

use std::io::{self, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};

use crate::events::{DEVICE_TYPES, DEVICES, IP_PREFIXES, ip_prefix};

/// Countries, busiest first.
pub const COUNTRIES: [&str; 40] = [
    "US", "BR", "GB", "MX", "CA", "DE", "FR", "ES", "AR", "IN", "JP", "KR", "AU", "IT", "NL", "TR",
    "PL", "CO", "CL", "SE", "PH", "ID", "ZA", "PE", "BE", "CH", "NO", "DK", "IE", "PT", "AT", "NZ",
    "SG", "TH", "MY", "IL", "AE", "SA", "EG", "NG",
];
pub const PLATFORMS: [&str; 5] = ["tv", "mobile", "web", "console", "streamer"];
pub const PLANS: [&str; 4] = ["basic", "standard", "premium", "ads"];

const BRANDS: [(&str, &[&str]); 5] = [
    ("tv", &["Samsung", "LG", "Sony", "TCL", "Hisense", "Vizio"]),
    (
        "mobile",
        &[
            "Apple", "Samsung", "Google", "Xiaomi", "Motorola", "OnePlus",
        ],
    ),
    ("web", &["Chrome", "Safari", "Edge", "Firefox"]),
    ("console", &["Sony", "Microsoft", "Nintendo"]),
    ("streamer", &["Roku", "Amazon", "Google", "Apple", "Nvidia"]),
];
const OSES: [(&str, &[&str]); 5] = [
    ("tv", &["tizen", "webos", "androidtv", "vidaa"]),
    ("mobile", &["ios", "android"]),
    ("web", &["windows", "macos", "linux", "chromeos"]),
    ("console", &["orbis", "xbox", "horizon"]),
    ("streamer", &["rokuos", "fireos", "androidtv", "tvos"]),
];

/// One row of the geo table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoRow {
    pub prefix: [u8; 3],
    pub country: &'static str,
    pub region: String,
    pub asn: u32,
}

/// One row of the device table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub device_type_id: u32,
    pub brand: &'static str,
    pub model: String,
    pub platform: &'static str,
    pub os: &'static str,
}

/// One row of the customer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerRow {
    pub customer_id: u64,
    pub plan: &'static str,
    pub signup_country: &'static str,
    pub profiles: u8,
}

fn stream(seed: u64, table: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(table);
    rng
}

fn country(rng: &mut ChaCha8Rng, zipf: &Zipf<f64>) -> &'static str {
    COUNTRIES[zipf.sample(rng) as usize - 1]
}

fn country_zipf() -> Zipf<f64> {
    Zipf::new(COUNTRIES.len() as f64, 1.0).expect("valid Zipf")
}

/// The geo table: one row per prefix index 0..100,000, in index order.
pub fn geo(seed: u64) -> Vec<GeoRow> {
    let mut rng = stream(seed, 1);
    let zipf = country_zipf();
    (0..IP_PREFIXES)
        .map(|p| {
            let country = country(&mut rng, &zipf);
            GeoRow {
                prefix: ip_prefix(p),
                country,
                region: format!("{country}-{:02}", rng.random_range(1..=20)),
                asn: rng.random_range(1_000..65_000),
            }
        })
        .collect()
}

/// The device table: one row per device type 1..=500.
pub fn devices(seed: u64) -> Vec<DeviceRow> {
    let mut rng = stream(seed, 2);
    (1..=DEVICE_TYPES as u32)
        .map(|id| {
            let p = rng.random_range(0..PLATFORMS.len());
            let brands = BRANDS[p].1;
            let oses = OSES[p].1;
            let brand = brands[rng.random_range(0..brands.len())];
            DeviceRow {
                device_type_id: id,
                brand,
                model: format!("{brand}-{}{:03}", &PLATFORMS[p][..2], id),
                platform: PLATFORMS[p],
                os: oses[rng.random_range(0..oses.len())],
            }
        })
        .collect()
}

/// The customer table: one row per customer 1..=1,000,000.
pub fn customers(seed: u64) -> Vec<CustomerRow> {
    let mut rng = stream(seed, 3);
    let zipf = country_zipf();
    (1..=DEVICES)
        .map(|id| CustomerRow {
            customer_id: id,
            plan: PLANS[rng.random_range(0..PLANS.len())],
            signup_country: country(&mut rng, &zipf),
            profiles: rng.random_range(1..=5),
        })
        .collect()
}

/// A table row that writes itself as one CSV line.
pub trait CsvRow {
    /// The header line, without its newline.
    const HEADER: &'static str;
    fn write_line(&self, out: &mut impl Write) -> io::Result<()>;
}

impl CsvRow for GeoRow {
    /// Prefixes are written `a.b.c.0/24`.
    const HEADER: &'static str = "prefix,country,region,asn";
    fn write_line(&self, out: &mut impl Write) -> io::Result<()> {
        let [a, b, c] = self.prefix;
        writeln!(
            out,
            "{a}.{b}.{c}.0/24,{},{},{}",
            self.country, self.region, self.asn
        )
    }
}

impl CsvRow for DeviceRow {
    const HEADER: &'static str = "device_type_id,brand,model,platform,os";
    fn write_line(&self, out: &mut impl Write) -> io::Result<()> {
        let r = self;
        writeln!(
            out,
            "{},{},{},{},{}",
            r.device_type_id, r.brand, r.model, r.platform, r.os
        )
    }
}

impl CsvRow for CustomerRow {
    const HEADER: &'static str = "customer_id,plan,signup_country,profiles";
    fn write_line(&self, out: &mut impl Write) -> io::Result<()> {
        let r = self;
        writeln!(
            out,
            "{},{},{},{}",
            r.customer_id, r.plan, r.signup_country, r.profiles
        )
    }
}

/// Writes a table as CSV: its header line, then one line per row.
pub fn write_csv<R: CsvRow>(rows: &[R], out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", R::HEADER)?;
    rows.iter().try_for_each(|r| r.write_line(out))
}
