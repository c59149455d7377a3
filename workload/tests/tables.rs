//! The W1 enrichment tables cover every key the workload draws, and are deterministic.

use std::collections::HashSet;

use sluice_protocol::ClientIp;
use sluice_workload::tables::{self, COUNTRIES, PLANS, PLATFORMS};
use sluice_workload::{Workload, WorkloadGen};

#[test]
fn tables_have_one_row_per_key_and_are_deterministic() {
    let geo = tables::geo(7);
    assert_eq!(geo.len(), 100_000);
    let prefixes: HashSet<[u8; 3]> = geo.iter().map(|r| r.prefix).collect();
    assert_eq!(prefixes.len(), 100_000, "prefixes are distinct");
    assert_eq!(geo, tables::geo(7));
    assert_ne!(geo, tables::geo(8));

    let devices = tables::devices(7);
    assert_eq!(devices.len(), 500);
    assert!(
        devices
            .iter()
            .enumerate()
            .all(|(i, d)| d.device_type_id == i as u32 + 1)
    );
    let platforms: HashSet<&str> = devices.iter().map(|d| d.platform).collect();
    assert_eq!(platforms.len(), PLATFORMS.len());

    let customers = tables::customers(7);
    assert_eq!(customers.len(), 1_000_000);
    assert!(
        customers
            .iter()
            .enumerate()
            .all(|(i, c)| c.customer_id == i as u64 + 1)
    );
    assert!(
        customers
            .iter()
            .all(|c| (1..=5).contains(&c.profiles) && PLANS.contains(&c.plan))
    );
    assert_eq!(customers[..1000], tables::customers(7)[..1000]);

    // Countries follow Zipf s=1.0 by rank: the first is the most common, about twice the second.
    let count = |cc: &str| geo.iter().filter(|r| r.country == cc).count() as f64;
    let ratio = count(COUNTRIES[0]) / count(COUNTRIES[1]);
    assert!((1.8..2.2).contains(&ratio), "US/BR = {ratio}");
}

#[test]
fn every_event_the_workload_draws_finds_its_rows() {
    let geo: HashSet<[u8; 3]> = tables::geo(1).into_iter().map(|r| r.prefix).collect();
    let devices = tables::devices(1);
    let mut g = WorkloadGen::new(Workload::W1, 1);
    for i in 0..10_000 {
        let e = &g.next_upload(i).events[0];
        let ClientIp::V4([a, b, c, _]) = e.client_ip else {
            panic!("W1 is IPv4")
        };
        assert!(geo.contains(&[a, b, c]), "{:?} has no geo row", e.client_ip);
        assert_eq!(
            devices[e.device_type_id as usize - 1].device_type_id,
            e.device_type_id
        );
        assert!((1..=1_000_000).contains(&e.customer_id));
    }
}

#[test]
fn tables_write_as_csv() {
    let mut out = Vec::new();
    tables::write_csv(&tables::devices(1), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("device_type_id,brand,model,platform,os"));
    assert_eq!(lines.clone().count(), 500);
    assert!(lines.all(|l| l.split(',').count() == 5));

    let mut out = Vec::new();
    tables::write_csv(&tables::geo(1)[..3], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.lines().nth(1).unwrap().contains(".0/24,"), "{text}");
    let mut out = Vec::new();
    tables::write_csv(&tables::customers(1)[..2], &mut out).unwrap();
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("customer_id,plan,signup_country,profiles\n1,")
    );
}

#[test]
fn w1_route_set_averages_three_matches() {
    use sluice_workload::routes::{FactTable, w1_routes};
    let routes = w1_routes(1);
    assert_eq!(routes.len(), 100);
    assert_eq!(routes.iter().filter(|r| r.sample.is_some()).count(), 10);
    assert!(routes.iter().all(|r| (1..=3).contains(&r.preds.len())));
    assert!(routes.iter().all(|r| (4..=8).contains(&r.fields.len())));
    // Measured on events the tuner did not see.
    let facts = FactTable::sample(7, 20_000);
    let matches: usize = facts
        .iter()
        .map(|f| routes.iter().filter(|r| r.emits(&f)).count())
        .sum();
    let mean = matches as f64 / 20_000.0;
    assert!((2.5..=3.5).contains(&mean), "mean matches {mean}");
    assert_eq!(w1_routes(1), routes, "seeded");
}

#[test]
fn w3_route_set_averages_three_matches_over_100_streams() {
    use sluice_workload::routes::{FactTable, w3_routes};
    let routes = w3_routes(1);
    assert_eq!(routes.len(), 10_000);
    let streams: std::collections::HashSet<&str> =
        routes.iter().map(|r| r.stream.as_str()).collect();
    assert_eq!(streams.len(), 100);
    assert_eq!(routes.iter().filter(|r| r.sample.is_some()).count(), 1_000);
    assert!(routes.iter().all(|r| (2..=4).contains(&r.preds.len())));
    // Measured on events the tuner did not see, joined to the same tables.
    let facts = FactTable::sample_of(1, 7, 4_000);
    let matches: usize = facts
        .iter()
        .map(|f| routes.iter().filter(|r| r.emits(&f)).count())
        .sum();
    let mean = matches as f64 / 4_000.0;
    assert!((2.5..=3.5).contains(&mean), "mean matches {mean}");
}
