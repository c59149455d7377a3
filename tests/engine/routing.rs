//! Routing through the pipeline: a rule writes one record to each stream of its `to`, and
//! events no rule matches go to `_unmatched`, counted either way.

use std::path::Path;

use sluice::config::Config;
use sluice::pipeline::Pipeline;
use sluice::route::{Ctx, parse};
use sluice_loadgen::client::build_pool;
use sluice_workload::{Workload, WorkloadGen};

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
[streams.c]
format = "rkyv"

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

[[route]]
name = "wifi"
to = ["c"]
when = 'attrs.net == "wifi" and attrs.locale != "en-US"'
fields = ["event_id", "attrs.net", "attrs.locale", "attrs.missing"]
"#;

#[test]
fn rules_write_to_every_stream_of_their_to_and_the_rest_is_unmatched() {
    let config = Config::parse(CONFIG, "t.toml", Path::new(""))
        .unwrap()
        .single_shard();
    let names: Vec<&str> = config.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["_unmatched", "a", "b", "c", "dead-letter"]);
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
    let (mut a, mut b, mut wifi, mut unmatched) = (0u64, 0u64, 0u64, 0u64);
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
            // The attribute rule, read straight off the event's attributes.
            let attr = |k: &str| {
                e.attrs
                    .iter()
                    .find(|a| a.key == k)
                    .map(|a| a.value.as_str())
            };
            let w = attr("net") == Some("wifi") && attr("locale") != Some("en-US");
            a += u64::from(p);
            b += u64::from(p) + u64::from(u);
            wifi += u64::from(w);
            unmatched += u64::from(!p && !u && !w);
        }
    }
    let c = &pipeline.counters;
    assert_eq!(c.events, events as u64);
    assert!(a > 0 && b > a && unmatched > 0, "{a} {b} {unmatched}");
    assert!(wifi > 0, "some events are on wifi");
    assert_eq!(c.records[1..4], [a, b, wifi]);
    assert_eq!((c.records[0], c.unmatched), (unmatched, unmatched));
    // Attributes are projected by name, and `_unmatched` records carry every one of them.
    let text = |i: usize| String::from_utf8_lossy(&pipeline.out[i].buf).into_owned();
    let unmatched_json = text(0);
    for key in ["attrs.net", "attrs.locale", "attrs.pad"] {
        assert_eq!(
            unmatched_json.matches(&format!("\"{key}\":\"")).count() as u64,
            unmatched,
            "{key} in every _unmatched record"
        );
    }
    let c_bytes = text(3);
    assert!(c_bytes.contains("attrs.net") && c_bytes.contains("attrs.missing"));
}
