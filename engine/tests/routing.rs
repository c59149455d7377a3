//! Routing through the pipeline: a rule writes one record to each stream of its `to`, and
//! events no rule matches go to `_unmatched`, counted either way.

use std::path::Path;

use sluice::config::Config;
use sluice::pipeline::Pipeline;
use sluice::route::{Ctx, parse};
use sluice_loadgen::client::build_pool;
use sluice_loadgen::{Workload, WorkloadGen};

const CONFIG: &str = r#"
[keys]
demo = true
[enrich.geo]
kind = "w1"
[enrich.device]
kind = "w1"
[enrich.customer]
kind = "w1"
seed = 1
[streams.a]
format = "rkyv"
[streams.b]
[streams._unmatched]

[[route]]
name = "playback"
to = ["a", "b"]
when = 'event_type starts_with "playback."'
fields = ["event_id", "event_type"]

[[route]]
name = "us"
to = ["b"]
when = 'geo.country == "US" and not exists device.brand or customer.plan not in ["basic"]'
fields = ["event_id", "geo.country"]
"#;

#[test]
fn rules_write_to_every_stream_of_their_to_and_the_rest_is_unmatched() {
    let config = Config::parse(CONFIG, "t.toml", Path::new(""))
        .unwrap()
        .single_shard();
    let names: Vec<&str> = config.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["_unmatched", "a", "b", "dead-letter"]);
    let mut pipeline = Pipeline::new(&config, 0, config.tables.clone());
    let events = 4096;
    let frames = build_pool(
        Workload::W1,
        7,
        events,
        128,
        config.partitions,
        &config.keyring,
        1,
    );
    for mut f in frames {
        pipeline.step(&mut f.bytes).unwrap();
    }

    // The oracle: the interpreter over the same events.
    let playback = parse(r#"event_type starts_with "playback.""#).unwrap();
    let us = parse(
        r#"geo.country == "US" and not exists device.brand or customer.plan not in ["basic"]"#,
    )
    .unwrap();
    let (mut a, mut b, mut unmatched) = (0u64, 0u64, 0u64);
    let mut g = WorkloadGen::new(Workload::W1, 7);
    let mut seen = 0;
    while seen < events {
        for e in g.next_upload(0).events {
            seen += 1;
            let v = e.view_without_attrs();
            let ctx = Ctx {
                event: &v,
                enriched: config.tables.peek(&v),
                tables: &config.tables,
            };
            let (p, u) = (playback.eval(&ctx), us.eval(&ctx));
            a += u64::from(p);
            b += u64::from(p) + u64::from(u);
            unmatched += u64::from(!p && !u);
        }
    }
    let c = &pipeline.counters;
    assert_eq!(c.events, events as u64);
    assert!(a > 0 && b > a && unmatched > 0, "{a} {b} {unmatched}");
    assert_eq!(c.records[1..3], [a, b]);
    assert_eq!((c.records[0], c.unmatched), (unmatched, unmatched));
}
