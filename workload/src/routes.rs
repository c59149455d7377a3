//! The W1 route set (WORKLOAD.md): 100 rules into 10 output streams, generated from a seed.
//!
//! Each rule is a conjunction of 1 to 3 predicates over event type (in a set of 1-5), geo
//! country (in a set of 1-10), device platform (==), app version (>=) and customer plan (in a
//! set); it projects 4 to 8 fields; 10 of the 100 rules keep a 10% sample of their matches.
//! Rules are drawn one at a time and kept only while the running sum of their selectivities
//! (estimated on a sample of W1 events) tracks 3 matches per event.
//!
//! The W3 set ([`w3_routes`]) and sets of other sizes ([`generated_routes`]) are drawn the same
//! way with narrower predicates (2 to 4 of them, smaller sets), into `s00`..`s99`; their
//! selectivities are products of per-field frequencies measured on a sample (the fields W1
//! draws are independent), so that 10,000 rules still sum to 3 matches per event.
//!
//! A [`RouteSpec`] is plain data: [`RouteSpec::when`] renders it in the engine's rule syntax
//! and [`RouteSpec::matches`] evaluates it directly, so tests can compute the records a route
//! set implies without going through the engine's parser or evaluator.

use std::fmt::Write as _;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::events::{EVENT_TYPES, Workload, WorkloadGen, app_versions};
use crate::tables::{COUNTRIES, PLANS, PLATFORMS};

/// The W1 output streams.
pub const STREAMS: [&str; 10] = [
    "playback", "errors", "ui", "ads", "billing", "qoe", "search", "devices", "geo", "growth",
];

/// The fields a W1 rule may project: event fields, then enrichment fields.
pub const FIELDS: [&str; 19] = [
    "event_id",
    "ts_ms",
    "event_type",
    "app_version",
    "device_type_id",
    "device_id",
    "customer_id",
    "client_ip",
    "session_id",
    "geo.country",
    "geo.region",
    "geo.asn",
    "device.brand",
    "device.model",
    "device.platform",
    "device.os",
    "customer.plan",
    "customer.signup_country",
    "customer.profiles",
];

/// Rules in the W1 set.
pub const W1_RULES: usize = 100;
/// Matches per event the W1 set is tuned to.
pub const W1_MATCHES_PER_EVENT: f64 = 3.0;
/// Events drawn to estimate selectivities.
const SAMPLE_EVENTS: usize = 8_192;

/// One predicate of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pred {
    EventTypeIn(Vec<&'static str>),
    CountryIn(Vec<&'static str>),
    PlatformEq(&'static str),
    VersionGe(String),
    PlanIn(Vec<&'static str>),
}

/// One rule: where matching events go and what of them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    pub stream: String,
    /// All must hold.
    pub preds: Vec<Pred>,
    pub fields: Vec<&'static str>,
    /// Fraction of matches kept, when the rule samples.
    pub sample: Option<f64>,
}

/// The facts about one enriched event that W1 rules test.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub event_id: u64,
    pub event_type: &'a str,
    pub app_version: &'a str,
    pub country: &'a str,
    pub platform: &'a str,
    pub plan: &'a str,
}

/// `major.minor.patch` as one comparable number; `None` if it is not three numbers. The
/// engine parses versions with its own code; this one is the test oracle's, kept apart on
/// purpose so that a bug in one shows up against the other.
pub fn version_key(v: &str) -> Option<u64> {
    let mut parts = v.split('.');
    let mut key = 0u64;
    for _ in 0..3 {
        let n: u64 = parts.next()?.parse().ok()?;
        if n > 0xffff {
            return None;
        }
        key = key << 16 | n;
    }
    parts.next().is_none().then_some(key)
}

/// FNV-1a (64-bit) of a rule's name: the salt of its sampling decision.
pub fn sample_salt(name: &str) -> u64 {
    sluice_protocol::fnv1a64(name.as_bytes())
}

/// Whether a rule that keeps `fraction` of its matches keeps event `event_id`: the SplitMix64
/// finalizer of `event_id ^ salt`, modulo one million, below `fraction` of a million. The
/// decision depends only on the event and the rule, so a replayed event is sampled alike.
pub fn sample_keeps(event_id: u64, salt: u64, fraction: f64) -> bool {
    ((sluice_protocol::mix64(event_id ^ salt) % 1_000_000) as f64) < fraction * 1_000_000.0
}

impl Pred {
    fn holds(&self, f: &Facts<'_>) -> bool {
        match self {
            Pred::EventTypeIn(set) => set.contains(&f.event_type),
            Pred::CountryIn(set) => set.contains(&f.country),
            Pred::PlatformEq(p) => *p == f.platform,
            Pred::VersionGe(v) => match (version_key(f.app_version), version_key(v)) {
                (Some(a), Some(b)) => a >= b,
                _ => false,
            },
            Pred::PlanIn(set) => set.contains(&f.plan),
        }
    }

    fn render(&self, out: &mut String) {
        let list = |out: &mut String, field: &str, set: &[&str]| {
            let items: Vec<String> = set.iter().map(|s| format!("{s:?}")).collect();
            let _ = write!(out, "{field} in [{}]", items.join(", "));
        };
        match self {
            Pred::EventTypeIn(set) => list(out, "event_type", set),
            Pred::CountryIn(set) => list(out, "geo.country", set),
            Pred::PlatformEq(p) => {
                let _ = write!(out, "device.platform == {p:?}");
            }
            Pred::VersionGe(v) => {
                let _ = write!(out, "app_version >= {v:?}");
            }
            Pred::PlanIn(set) => list(out, "customer.plan", set),
        }
    }
}

impl RouteSpec {
    /// Whether the event matches the rule's predicates (before sampling).
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        self.preds.iter().all(|p| p.holds(f))
    }

    /// Whether the rule emits a record for the event: it matches and sampling keeps it.
    pub fn emits(&self, f: &Facts<'_>) -> bool {
        self.matches(f)
            && self
                .sample
                .is_none_or(|s| sample_keeps(f.event_id, sample_salt(&self.name), s))
    }

    /// The rule's condition in the engine's syntax, e.g.
    /// `event_type in ["ui.nav"] and app_version >= "6.1.0"`.
    pub fn when(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.preds.iter().enumerate() {
            if i > 0 {
                out.push_str(" and ");
            }
            p.render(&mut out);
        }
        out
    }
}

/// Renders rules as the `[[route]]` tables of an engine config.
pub fn routes_toml(routes: &[RouteSpec]) -> String {
    let mut out = String::new();
    for r in routes {
        let fields: Vec<String> = r.fields.iter().map(|f| format!("{f:?}")).collect();
        let _ = writeln!(out, "[[route]]");
        let _ = writeln!(out, "name = {:?}", r.name);
        let _ = writeln!(out, "to = [{:?}]", r.stream);
        let _ = writeln!(out, "when = '{}'", r.when());
        let _ = writeln!(out, "fields = [{}]", fields.join(", "));
        if let Some(s) = r.sample {
            let _ = writeln!(out, "sample = {s}");
        }
        out.push('\n');
    }
    out
}

/// The facts of W1 sample events, joined against the W1 tables of `seed`.
pub struct FactTable {
    rows: Vec<(
        u64,
        &'static str,
        String,
        &'static str,
        &'static str,
        &'static str,
    )>,
}

impl FactTable {
    /// Draws `n` W1 events from a generator seeded `seed` and joins them to the tables.
    pub fn sample(seed: u64, n: usize) -> Self {
        Self::sample_of(seed, seed ^ 0x5a3e_0f7e, n)
    }

    /// Draws `n` W1 events from a generator seeded `events_seed` and joins them to the tables
    /// of `tables_seed`.
    pub fn sample_of(tables_seed: u64, events_seed: u64, n: usize) -> Self {
        let seed = tables_seed;
        let geo = crate::tables::geo(seed);
        let devices = crate::tables::devices(seed);
        let customers = crate::tables::customers(seed);
        let by_prefix: std::collections::HashMap<[u8; 3], &'static str> =
            geo.iter().map(|g| (g.prefix, g.country)).collect();
        let mut gen_ = WorkloadGen::new(Workload::W1, events_seed);
        let rows = (0..n)
            .map(|_| {
                let e = gen_.next_upload(0).events.swap_remove(0);
                let sluice_protocol::ClientIp::V4([a, b, c, _]) = e.client_ip else {
                    unreachable!("W1 addresses are IPv4")
                };
                let country = by_prefix.get(&[a, b, c]).copied().unwrap_or("");
                let platform = devices[e.device_type_id as usize - 1].platform;
                let plan = customers[e.customer_id as usize - 1].plan;
                let event_type = EVENT_TYPES
                    .iter()
                    .find(|t| **t == e.event_type)
                    .expect("a W1 type");
                (
                    e.event_id,
                    *event_type,
                    e.app_version,
                    country,
                    platform,
                    plan,
                )
            })
            .collect();
        FactTable { rows }
    }

    pub fn iter(&self) -> impl Iterator<Item = Facts<'_>> {
        self.rows.iter().map(|r| Facts {
            event_id: r.0,
            event_type: r.1,
            app_version: &r.2,
            country: r.3,
            platform: r.4,
            plan: r.5,
        })
    }

    /// Fraction of the sample events the rule emits a record for.
    pub fn selectivity(&self, rule: &RouteSpec) -> f64 {
        let hits = self.iter().filter(|f| rule.emits(f)).count();
        hits as f64 / self.rows.len() as f64
    }
}

/// The W1 route set of `seed`.
pub fn w1_routes(seed: u64) -> Vec<RouteSpec> {
    let facts = FactTable::sample(seed, SAMPLE_EVENTS);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(4);
    let versions = app_versions();
    let streams = STREAMS.map(String::from);
    let mut routes = Vec::with_capacity(W1_RULES);
    let mut total = 0.0;
    while routes.len() < W1_RULES {
        let i = routes.len();
        let rule = draw_rule(&mut rng, i, &versions, &W1_SHAPE, &streams);
        let sel = facts.selectivity(&rule);
        // Keep the running sum on the line from 0 to 3 matches per event.
        let budget = W1_MATCHES_PER_EVENT * (i + 1) as f64 / W1_RULES as f64 + 0.05;
        if sel >= 0.002 && total + sel <= budget {
            total += sel;
            routes.push(rule);
        }
    }
    routes
}

/// How wide the rules of a set are drawn.
struct Shape {
    preds: std::ops::RangeInclusive<usize>,
    event_types: std::ops::RangeInclusive<usize>,
    countries: std::ops::RangeInclusive<usize>,
    /// Digits in the rule names (`r007`, `r00007`).
    name_digits: usize,
}

/// W1's rules: 1 to 3 predicates, up to 5 event types and 10 countries.
const W1_SHAPE: Shape = Shape {
    preds: 1..=3,
    event_types: 1..=5,
    countries: 1..=10,
    name_digits: 3,
};

/// The rules of larger sets: 2 to 4 predicates, up to 3 event types and 5 countries.
const NARROW_SHAPE: Shape = Shape {
    preds: 2..=4,
    event_types: 1..=3,
    countries: 1..=5,
    name_digits: 5,
};

/// Rule `i`: predicates over distinct fields, 4 to 8 projected fields, every tenth rule
/// sampling 10%; streams go round robin over `streams`.
fn draw_rule(
    rng: &mut ChaCha8Rng,
    i: usize,
    versions: &[String],
    shape: &Shape,
    streams: &[String],
) -> RouteSpec {
    let mut kinds = [0u8, 1, 2, 3, 4];
    let n = rng.random_range(shape.preds.clone());
    // Partial Fisher-Yates: n distinct predicate kinds.
    for k in 0..n {
        let j = rng.random_range(k..kinds.len());
        kinds.swap(k, j);
    }
    let mut preds: Vec<Pred> = kinds[..n]
        .iter()
        .map(|kind| match kind {
            0 => Pred::EventTypeIn(pick(rng, &EVENT_TYPES, shape.event_types.clone())),
            1 => Pred::CountryIn(pick(rng, &COUNTRIES, shape.countries.clone())),
            2 => Pred::PlatformEq(PLATFORMS[rng.random_range(0..PLATFORMS.len())]),
            3 => Pred::VersionGe(versions[rng.random_range(0..versions.len())].clone()),
            _ => Pred::PlanIn(pick(rng, &PLANS, 1..=2)),
        })
        .collect();
    preds.sort_by_key(|p| match p {
        Pred::EventTypeIn(_) => 0,
        Pred::CountryIn(_) => 1,
        Pred::PlatformEq(_) => 2,
        Pred::VersionGe(_) => 3,
        Pred::PlanIn(_) => 4,
    });
    let nf = rng.random_range(4..=8);
    let mut fields = vec!["event_id"];
    while fields.len() < nf {
        let f = FIELDS[rng.random_range(1..FIELDS.len())];
        if !fields.contains(&f) {
            fields.push(f);
        }
    }
    RouteSpec {
        name: format!("r{i:0w$}", w = shape.name_digits),
        stream: streams[i % streams.len()].clone(),
        preds,
        fields,
        // Every tenth rule samples.
        sample: (i % 10 == 9).then_some(0.1),
    }
}

fn pick(
    rng: &mut ChaCha8Rng,
    from: &[&'static str],
    n: std::ops::RangeInclusive<usize>,
) -> Vec<&'static str> {
    let n = rng.random_range(n);
    from.choose_multiple(rng, n).copied().collect()
}

/// Rules in the W3 set.
pub const W3_RULES: usize = 10_000;
/// Streams of the W3 set.
pub const W3_STREAMS: usize = 100;

/// The names of `n` generated streams: `s00`, `s01`, ...
pub fn generated_streams(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i:02}")).collect()
}

/// The W3 route set of `seed`: 10,000 rules into 100 streams, 3 matches per event.
pub fn w3_routes(seed: u64) -> Vec<RouteSpec> {
    generated_routes(seed, W3_RULES, W3_STREAMS)
}

/// How often each value of each field a rule tests occurs in W1 events.
struct Frequencies {
    event_type: std::collections::HashMap<&'static str, f64>,
    country: std::collections::HashMap<&'static str, f64>,
    platform: std::collections::HashMap<&'static str, f64>,
    plan: std::collections::HashMap<&'static str, f64>,
    versions: Vec<(u64, f64)>,
}

impl Frequencies {
    fn measure(facts: &FactTable) -> Frequencies {
        let mut f = Frequencies {
            event_type: Default::default(),
            country: Default::default(),
            platform: Default::default(),
            plan: Default::default(),
            versions: Vec::new(),
        };
        let mut versions = std::collections::HashMap::new();
        let mut n = 0.0;
        for (_, event_type, app_version, country, platform, plan) in &facts.rows {
            n += 1.0;
            *f.event_type.entry(event_type).or_default() += 1.0;
            *f.country.entry(country).or_default() += 1.0;
            *f.platform.entry(platform).or_default() += 1.0;
            *f.plan.entry(plan).or_default() += 1.0;
            if let Some(k) = version_key(app_version) {
                *versions.entry(k).or_insert(0.0) += 1.0;
            }
        }
        for m in [
            &mut f.event_type,
            &mut f.country,
            &mut f.platform,
            &mut f.plan,
        ] {
            m.values_mut().for_each(|c| *c /= n);
        }
        f.versions = versions.into_iter().map(|(k, c)| (k, c / n)).collect();
        f
    }

    /// Fraction of events a predicate holds for.
    fn of(&self, p: &Pred) -> f64 {
        let sum = |m: &std::collections::HashMap<&'static str, f64>, set: &[&'static str]| {
            set.iter()
                .map(|v| m.get(v).copied().unwrap_or(0.0))
                .sum::<f64>()
        };
        match p {
            Pred::EventTypeIn(set) => sum(&self.event_type, set),
            Pred::CountryIn(set) => sum(&self.country, set),
            Pred::PlatformEq(v) => sum(&self.platform, &[v]),
            Pred::PlanIn(set) => sum(&self.plan, set),
            Pred::VersionGe(v) => {
                let min = version_key(v).unwrap_or(u64::MAX);
                self.versions
                    .iter()
                    .filter(|(k, _)| *k >= min)
                    .map(|(_, c)| c)
                    .sum()
            }
        }
    }
}

/// `rules` rules into `streams` streams (`s00`...), drawn from `seed` so that an event matches
/// 3 of them on average (after sampling: every tenth rule keeps 10% of its matches).
pub fn generated_routes(seed: u64, rules: usize, streams: usize) -> Vec<RouteSpec> {
    let freq = Frequencies::measure(&FactTable::sample(seed, 65_536));
    let names = generated_streams(streams);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(5);
    let versions = app_versions();
    let mut routes = Vec::with_capacity(rules);
    let mut total = 0.0;
    while routes.len() < rules {
        let i = routes.len();
        let rule = draw_rule(&mut rng, i, &versions, &NARROW_SHAPE, &names);
        let sel =
            rule.preds.iter().map(|p| freq.of(p)).product::<f64>() * rule.sample.unwrap_or(1.0);
        let budget = W1_MATCHES_PER_EVENT * (i + 1) as f64 / rules as f64;
        let floor = 0.05 * W1_MATCHES_PER_EVENT / rules as f64;
        if sel >= floor && total + sel <= budget + 10.0 * floor {
            total += sel;
            routes.push(rule);
        }
    }
    routes
}
