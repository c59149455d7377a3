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
use sluice_protocol::{Event, EventView};
use sluice_workload::routes::generated_routes;
use sluice_workload::{Workload, WorkloadGen};

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
        bench_compiled(&mut group, BenchmarkId::new("compiled", n), &matcher, &ctx);
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
    attr_rules(&mut group, &tables);
    group.finish();
}

/// `route/compiled/w1-archived`: the W1 set over events read from one rkyv archive as the
/// pipeline reads them; `route/compiled/w1+attrs`: the W1 set plus 10 rules on client attributes (`attrs.net`,
/// `attrs.locale`, alone and with event and enrichment fields), over the same kind of events
/// read from one rkyv archive as the pipeline reads them (their padding attribute dropped, so
/// the archive is as dense as the packed strings above).
fn attr_rules(group: &mut Group<'_>, tables: &Tables) {
    let mut g = WorkloadGen::new(Workload::W1, 42);
    let events: Vec<Event> = (0..EVENTS)
        .map(|_| {
            let mut e = g.next_upload(0).events.remove(0);
            e.attrs.retain(|a| a.key != "pad");
            e
        })
        .collect();
    let archive = sluice_protocol::event::to_rkyv_payload(&events);
    let archived = sluice_protocol::event::access_events(&archive).expect("valid");
    let views: Vec<EventView<'_>> = archived.iter().map(EventView::from_archived).collect();
    let enriched: Vec<Enriched> = views.iter().map(|v| tables.peek(v)).collect();
    let w1 = route_set(100);
    let mut sources: Vec<RuleSource> = w1
        .rules()
        .iter()
        .map(|r| RuleSource {
            name: r.name.clone(),
            streams: vec![0],
            when: r.expr.to_string(),
            fields: r.fields.iter().map(|f| f.name().to_owned()).collect(),
            sample: r.sample,
        })
        .collect();
    let attr_whens = [
        r#"attrs.net == "cellular""#,
        r#"attrs.net in ["wifi", "ethernet"] and geo.country == "US""#,
        r#"attrs.locale == "ja-JP""#,
        r#"attrs.locale in ["en-US", "es-MX"] and event_type == "playback.start""#,
        r#"attrs.net != "wifi" and device.platform == "tv""#,
        r#"attrs.locale not in ["en-US"] and customer.plan == "premium""#,
        r#"exists attrs.experiment"#,
        r#"attrs.net == "cellular" and attrs.locale == "pt-BR""#,
        r#"attrs.locale starts_with "fr""#,
        r#"attrs.net == "ethernet" or attrs.locale == "de-DE""#,
    ];
    for (i, when) in attr_whens.iter().enumerate() {
        sources.push(RuleSource {
            name: format!("attrs{i}"),
            streams: vec![0],
            when: (*when).to_owned(),
            fields: vec!["event_id".into(), "attrs.net".into(), "attrs.locale".into()],
            sample: None,
        });
    }
    let set = RouteSet::compile(&sources, None).expect("the attribute rules compile");
    let matcher = Matcher::new(&set, tables);
    let mut found = matcher.matches();
    let ctx = |i: usize| Ctx {
        event: &views[i],
        enriched: enriched[i],
        tables,
    };
    let mut attr_matches = 0usize;
    for i in 0..EVENTS {
        matcher.matching(&ctx(i), &mut found);
        attr_matches += found.iter().filter(|&r| r >= w1.rules().len()).count();
    }
    eprintln!(
        "route/w1+attrs: {} rules, {:.2} attribute-rule matches per event",
        set.rules().len(),
        attr_matches as f64 / EVENTS as f64
    );
    assert!(
        attr_matches > EVENTS / 4,
        "the attribute rules match: {attr_matches}"
    );
    // The W1 set alone over the same views: what reading events from the archive costs.
    let w1_matcher = Matcher::new(&w1, tables);
    let id = |name: &str| BenchmarkId::new("compiled", name);
    bench_compiled(group, id("w1-archived"), &w1_matcher, &ctx);
    bench_compiled(group, id("w1+attrs"), &matcher, &ctx);
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Times `matcher` over the events `ctx` gives, walking each event's matches.
fn bench_compiled<'e, 't: 'e>(
    group: &mut Group<'_>,
    id: BenchmarkId,
    matcher: &Matcher,
    ctx: &impl Fn(usize) -> Ctx<'e, 't>,
) {
    let mut found = matcher.matches();
    group.bench_function(id, |b| {
        b.iter(|| {
            let mut matches = 0u32;
            for i in 0..EVENTS {
                matcher.matching(&ctx(i), &mut found);
                found.for_each(|r| matches += r as u32);
            }
            black_box(matches)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = route
}
criterion_main!(benches);
