//! Enrichment, one core: joining W1 events to their geo, device and customer rows.
//!
//! - `enrich/w1/warm`: the three lookups of a W1 event against the W1 tables in memory, over
//!   4,096 events whose strings sit in one buffer (as in a batch just decrypted).
//! - `enrich/w1/spread`: the same over 262,144 events, whose ids and prefixes spread over the
//!   whole tables (customers 12 MB, geo 5 MB) as a live stream's do, so that lookups miss the
//!   core's caches and its TLB (with nothing fetched ahead, as the engine's first pass does).
//! - `enrich/w1-mmdb/warm`: the same with geo from GeoLite2-City through the shard's cache,
//!   warmed by one pass over the events.
//! - `enrich/mmdb/uncached`: one GeoLite2-City lookup (trie walk and record decode) per
//!   address; `enrich/mmdb/cached`: the same addresses through a warm per-shard cache.
//!
//! The database is fetched by `scripts/fetch-geolite2.sh` when missing.
//! `cargo bench -p sluice-benches --bench enrich`. Throughput is in lookups (events).

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::enrich::Tables;
use sluice::enrich::mmdb::Database;
use sluice_protocol::{Event, EventView};
use sluice_workload::{Workload, WorkloadGen};

const EVENTS: usize = 4096;
const SPREAD_EVENTS: usize = 262_144;

fn database() -> Database {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/fetch-geolite2.sh"))
        .output()
        .expect("run scripts/fetch-geolite2.sh");
    assert!(out.status.success(), "scripts/fetch-geolite2.sh failed");
    Database::open(&root.join(String::from_utf8(out.stdout).unwrap().trim())).unwrap()
}

fn enrich(c: &mut Criterion) {
    sluice_benches::pin_to_one_core();
    let mut g = WorkloadGen::new(Workload::W1, 42);
    let events: Vec<Event> = (0..EVENTS)
        .map(|_| g.next_upload(0).events.remove(0))
        .collect();
    let views: Vec<EventView<'_>> = events.iter().map(Event::view_without_attrs).collect();
    let ips: Vec<IpAddr> = views.iter().map(|v| v.client_ip).collect();
    let db = database();

    // The three lookups of every event, and how many rows they found (so none is skipped).
    let join_all = |tables: &mut Tables, views: &[EventView<'_>]| {
        let mut n = 0u64;
        for v in views {
            let e = tables.lookup(v);
            n += u64::from(e.geo.is_some()) + u64::from(e.customer.is_some());
        }
        n
    };
    let mut group = c.benchmark_group("enrich");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let mut tables = Tables::w1(1);
    group.bench_function("w1/warm", |b| {
        b.iter(|| black_box(join_all(&mut tables, &views)))
    });

    // Events without their attributes: the lookups read only their keys.
    let mut g = WorkloadGen::new(Workload::W1, 43);
    let spread: Vec<Event> = (0..SPREAD_EVENTS)
        .map(|_| {
            let mut e = g.next_upload(0).events.remove(0);
            e.attrs.clear();
            e
        })
        .collect();
    let spread_views: Vec<EventView<'_>> = spread.iter().map(Event::view_without_attrs).collect();
    group.throughput(Throughput::Elements(SPREAD_EVENTS as u64));
    let mut tables = Tables::w1(1);
    group.bench_function("w1/spread", |b| {
        b.iter(|| black_box(join_all(&mut tables, &spread_views)))
    });
    group.throughput(Throughput::Elements(EVENTS as u64));

    let mut tables = Tables::w1(1);
    tables.use_mmdb(db.clone(), sluice::config::MMDB_CACHE_ENTRIES);
    join_all(&mut tables, &views);
    group.bench_function("w1-mmdb/warm", |b| {
        b.iter(|| black_box(join_all(&mut tables, &views)))
    });
    let [(_, geo), ..] = tables.stats();
    eprintln!(
        "w1-mmdb: geo cache {} of {} entries, {} hits, {} misses ({:.2}% hits)",
        geo.entries,
        geo.capacity.unwrap_or(0),
        geo.cache.hits,
        geo.cache.misses,
        100.0 * geo.cache.hits as f64 / (geo.cache.hits + geo.cache.misses).max(1) as f64
    );

    group.bench_function("mmdb/uncached", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for ip in &ips {
                n += db.lookup(*ip).0.map_or(0, |t| t.country.len());
            }
            black_box(n)
        })
    });
    // Geo alone: no device or customer rows.
    let mut geo_only = Tables::default();
    geo_only.use_mmdb(db.clone(), sluice::config::MMDB_CACHE_ENTRIES);
    for v in &views {
        geo_only.lookup(v);
    }
    group.bench_function("mmdb/cached", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for v in &views {
                n += u64::from(geo_only.lookup(v).geo.is_some());
            }
            black_box(n)
        })
    });
    group.finish();

    // The hit rate of a 100,000-entry per-shard cache (the kind in front of the MaxMind
    // database, and what a remote customer table needs) under W1's customer ids (Zipf 0.9
    // over 1,000,000), after a warm-up of as many events as measured.
    let mut cache = sluice::enrich::cache::Cache::new(100_000);
    let (mut hits, mut lookups) = (0u64, 0u64);
    let mut g = WorkloadGen::new(Workload::W1, 7);
    for i in 0..600_000 {
        let id = g.next_upload(0).events[0].customer_id;
        let hit = cache.get(id).is_some();
        if !hit {
            cache.insert(id, ());
        }
        if i >= 300_000 {
            lookups += 1;
            hits += u64::from(hit);
        }
    }
    eprintln!(
        "customer ids through a cache of {} entries: {:.1}% hits over {lookups} W1 events",
        cache.capacity(),
        100.0 * hits as f64 / lookups as f64
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = enrich
}
criterion_main!(benches);
