//! The compiled matcher against the interpreter (its oracle), on W1 events and on rules that
//! exercise every kind of predicate.

use sluice::enrich::Tables;
use sluice::route::compiled::Matcher;
use sluice::route::{Ctx, RouteSet, RuleSource};
use sluice_loadgen::{Workload, WorkloadGen};
use sluice_protocol::EventView;

fn rules(whens: &[&str]) -> RouteSet {
    let sources: Vec<RuleSource> = whens
        .iter()
        .enumerate()
        .map(|(i, w)| RuleSource {
            name: format!("t{i}"),
            stream: 0,
            when: (*w).to_owned(),
            fields: vec!["event_id".into()],
            sample: None,
        })
        .collect();
    RouteSet::compile(&sources).expect("valid rules")
}

#[test]
fn compiled_matches_agree_with_the_interpreter() {
    let tables = Tables::w1(1);
    let mut all = sluice::config::Config::embedded_default()
        .unwrap()
        .routes
        .rules()
        .iter()
        .map(|r| r.expr.to_string())
        .collect::<Vec<_>>();
    all.extend(
        [
            "event_type == \"ui.nav\" or not geo.country in [\"US\", \"GB\", \"XX\"]",
            "event_type != \"playback.start\" and device.platform != \"tv\"",
            "app_version < \"6.0.0\" or app_version == \"7.4.1\"",
            "app_version > \"5.9.9\" and app_version <= \"6.3.0\"",
            "device_type_id >= 250 and customer.profiles < 3",
            "geo.asn > 30000 or customer_id == 17",
            "client_ip == \"10.0.0.1\" or geo.region >= \"US-10\"",
            "customer.signup_country in [\"BR\", \"MX\"] and device.brand == \"Roku\"",
            "device.model == \"nothing\" or device.os in [\"tvos\", \"webos\"]",
            "true",
        ]
        .map(String::from),
    );
    let whens: Vec<&str> = all.iter().map(String::as_str).collect();
    let set = rules(&whens);
    let matcher = Matcher::new(&set, &tables);
    let mut generator = WorkloadGen::new(Workload::W1, 99);
    let mut hits = 0;
    for _ in 0..5_000 {
        let e = generator.next_upload(0).events.remove(0);
        let view = EventView {
            event_id: e.event_id,
            ts_ms: e.ts_ms,
            event_type: &e.event_type,
            app_version: &e.app_version,
            device_type_id: e.device_type_id,
            device_id: &e.device_id,
            customer_id: e.customer_id,
            client_ip: e.client_ip.into(),
            session_id: e.session_id,
            attrs: sluice_protocol::Attrs::Archived(&[]),
        };
        let ctx = Ctx {
            event: &view,
            enriched: tables.lookup(&view),
            tables: &tables,
        };
        let resolved = matcher.resolve(&ctx);
        let mut bits = vec![0u64; matcher.words()];
        matcher.matching(&resolved, &ctx, &mut bits);
        for (i, r) in set.rules().iter().enumerate() {
            let want = r.expr.eval(&ctx);
            assert_eq!(matcher.matches(i, &resolved, &ctx), want, "rule {}", r.expr);
            assert_eq!(
                bits[i / 64] >> (i % 64) & 1 == 1,
                want,
                "bitset, rule {}",
                r.expr
            );
            hits += usize::from(want);
        }
    }
    assert!(hits > 5_000, "the rules match something: {hits}");
}
