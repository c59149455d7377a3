//! Routing, one core: the compiled matcher (`route/compiled/N`) against the plain interpreter
//! evaluating every rule (`route/naive/N`), over 4,096 enriched W1 events. N = 100 is the W1
//! route set, N = 10,000 the W3 set; 10 and 1,000 are drawn the same way as W3's. Every set is
//! tuned to about 3 matches per event. Enrichment is done before the clock starts: this is
//! the matching alone (resolving the fields the rules read, the bitset ANDs, the residual
//! conditions, and walking the matches). The events' strings sit packed in one buffer (about
//! 50 bytes an event, 200 KB in all), as in a batch just decrypted, rather than scattered over
//! the heap with their padding attributes (2.4 MB, which would time cache misses the pipeline
//! does not have).
//!
//! `cargo bench -p sluice-benches --bench route`. Throughput is in W1 events.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::Config;
use sluice::enrich::{Enriched, Tables};
use sluice::route::compiled::Matcher;
use sluice::route::{Ctx, RouteSet, RuleSource};
use sluice_loadgen::routes::generated_routes;
use sluice_loadgen::{Workload, WorkloadGen};
use sluice_protocol::{Event, EventView};

const EVENTS: usize = 4096;

fn route_set(n: usize) -> RouteSet {
    if n == 100 {
        return Config::embedded_default()
            .expect("the default compiles")
            .routes;
    }
    let specs = generated_routes(1, n, (n / 100).max(1));
    let sources: Vec<RuleSource> = specs
        .iter()
        .map(|r| RuleSource {
            name: r.name.clone(),
            streams: vec![0],
            when: r.when(),
            fields: r.fields.iter().map(|f| (*f).to_owned()).collect(),
            sample: r.sample,
        })
        .collect();
    RouteSet::compile(&sources, None).expect("generated rules compile")
}

/// Views of `events` whose strings are in `packed` (filled here).
fn views<'a>(events: &[Event], packed: &'a mut String) -> Vec<EventView<'a>> {
    let mut at = Vec::with_capacity(events.len());
    for e in events {
        let start = packed.len();
        packed.push_str(&e.event_type);
        packed.push_str(&e.app_version);
        packed.push_str(&e.device_id);
        at.push(start);
    }
    let packed: &'a str = packed;
    events
        .iter()
        .zip(at)
        .map(|(e, start)| {
            let (t, v) = (e.event_type.len(), e.app_version.len());
            EventView {
                event_id: e.event_id,
                ts_ms: e.ts_ms,
                event_type: &packed[start..start + t],
                app_version: &packed[start + t..start + t + v],
                device_type_id: e.device_type_id,
                device_id: &packed[start + t + v..start + t + v + e.device_id.len()],
                customer_id: e.customer_id,
                client_ip: e.client_ip.into(),
                session_id: e.session_id,
                attrs: sluice_protocol::Attrs::Archived(&[]),
            }
        })
        .collect()
}

fn route(c: &mut Criterion) {
    sluice_benches::pin_to_one_core();
    let tables = Tables::w1(1);
    let mut g = WorkloadGen::new(Workload::W1, 42);
    let events: Vec<Event> = (0..EVENTS)
        .map(|_| g.next_upload(0).events.remove(0))
        .collect();
    let mut packed = String::new();
    let views = views(&events, &mut packed);
    drop(events);
    let enriched: Vec<Enriched> = views.iter().map(|v| tables.peek(v)).collect();
    let ctx = |i: usize| Ctx {
        event: &views[i],
        enriched: enriched[i],
        tables: &tables,
    };
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for n in [10, 100, 1000, 10_000] {
        let set = route_set(n);
        let matcher = Matcher::new(&set, &tables);
        let mut found = matcher.matches();
        // What the set does to these events, kept matches as the pipeline counts them.
        let mut kept = 0usize;
        for (i, v) in views.iter().enumerate() {
            matcher.matching(&ctx(i), &mut found);
            for r in found.iter() {
                kept += usize::from(set.rules()[r].keeps(v.event_id));
            }
        }
        eprintln!(
            "route/{n}: {} rules, {:.2} records per event, {:?}",
            set.rules().len(),
            kept as f64 / EVENTS as f64,
            matcher.simd()
        );
        group.bench_function(BenchmarkId::new("compiled", n), |b| {
            b.iter(|| {
                let mut matches = 0u32;
                for i in 0..EVENTS {
                    matcher.matching(&ctx(i), &mut found);
                    found.for_each(|r| matches += r as u32);
                }
                black_box(matches)
            })
        });
        group.bench_function(BenchmarkId::new("naive", n), |b| {
            b.iter(|| {
                let mut matches = 0u32;
                for i in 0..EVENTS {
                    let cx = ctx(i);
                    for r in set.rules() {
                        matches += u32::from(r.expr.eval(&cx));
                    }
                }
                black_box(matches)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = route
}
criterion_main!(benches);
