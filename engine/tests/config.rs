//! The embedded default and the config compiler.

use std::path::Path;

use sluice::config::{Config, DEFAULT_CONFIG, Durability};

#[test]
fn the_embedded_default_is_what_fixtures_generate() {
    assert_eq!(
        DEFAULT_CONFIG,
        sluice_workload::fixtures::default_config(),
        "regenerate with `cargo run -p sluice-workload --example default_config > engine/src/default.toml`"
    );
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.partitions, 64);
    assert_eq!(c.routes.rules().len(), 100);
    assert_eq!(c.streams.len(), 11);
    assert_eq!(c.streams.last().unwrap().name, "dead-letter");
    assert_eq!(c.sinks.durability, Durability::IntervalUs(1000));
    assert_eq!(c.keyring.len(), 8);
    assert_eq!(c.tables.customer_rows(), 1_000_000);
}

#[test]
fn owners_default_to_round_robin_and_are_checked() {
    let text = "[engine]\nshards = 3\npartitions = 7\n[keys]\ndemo = true\n";
    let c = Config::parse(text, "t.toml", Path::new("")).unwrap();
    assert_eq!(c.owners, vec![0, 1, 2, 0, 1, 2, 0]);
    let bad = "[engine]\nshards = 2\npartitions = 3\nowners = [0, 1, 2]\n[keys]\ndemo = true\n";
    let e = Config::parse(bad, "t.toml", Path::new("")).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(
        e.to_string()
            .starts_with("t.toml:4: engine.owners names shard 2"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = "[keys]\ndemo = true\n\n[sinks]\ndurabilty = \"none\"\n";
    let e = Config::parse(text, "t.toml", Path::new("")).unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    assert!(e.reason.contains("durabilty"), "{e}");
}

#[test]
fn tables_load_from_csv() {
    let dir = std::env::temp_dir().join(format!("sluice-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("geo.csv"),
        "prefix,country,region,asn\n10.1.2.0/24,US,US-01,64500\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("device.csv"),
        "device_type_id,brand,model,platform,os\n7,Roku,Ultra,streamer,rokuos\n",
    )
    .unwrap();
    let cfg = dir.join("s.toml");
    std::fs::write(
        &cfg,
        "[keys]\ndemo = true\n[enrich.geo]\nkind = \"file\"\npath = \"geo.csv\"\n[enrich.device]\nkind = \"file\"\npath = \"device.csv\"\n",
    )
    .unwrap();
    let c = Config::load(&cfg).unwrap();
    assert_eq!(
        (
            c.tables.geo_rows(),
            c.tables.device_rows(),
            c.tables.customer_rows()
        ),
        (1, 1, 0)
    );
    std::fs::write(
        dir.join("geo.csv"),
        "prefix,country,region,asn\n10.1.2.0/25,US,US-01,64500\n",
    )
    .unwrap();
    let e = Config::load(&cfg).unwrap_err();
    assert!(
        e.reason.contains("enrich.geo")
            && e.reason.contains("geo.csv:2: column \"prefix\"")
            && e.line == 5,
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Table files are CSV as RFC 4180 has it: quotes are not part of a cell, a comma inside
/// quotes does not split it, an empty cell is no value in every column, and a bad cell is
/// refused with its file, line and column.
#[test]
fn csv_tables_follow_rfc_4180() {
    use sluice::route::{Ctx, Field, Value};
    let dir = std::env::temp_dir().join(format!("sluice-config-rfc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("s.toml");
    std::fs::write(
        &cfg,
        "[keys]\ndemo = true\n[enrich.geo]\nkind = \"file\"\npath = \"geo.csv\"\n\
         [enrich.customer]\nkind = \"file\"\npath = \"customer.csv\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("geo.csv"),
        "prefix,country,region,asn,city\n\
         10.1.2.0/24,US,US-CA,64500,\"San Jose\"\n\
         10.1.3.0/24,\"US\",US-CA,,\"Washington, D.C.\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("customer.csv"),
        "customer_id,plan,signup_country,profiles\n1,basic,US,300\n2,\"ads\",,\n",
    )
    .unwrap();
    let c = Config::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let t = &c.tables;
    let mut event = sluice_workload::WorkloadGen::new(sluice_workload::Workload::W1, 1)
        .next_upload(0)
        .events
        .remove(0);
    let mut get = |ip: [u8; 4], customer: u64, f: Field| {
        event.client_ip = sluice_protocol::ClientIp::V4(ip);
        event.customer_id = customer;
        let v = event.view_without_attrs();
        let ctx = Ctx {
            event: &v,
            enriched: t.peek(&v),
            tables: t,
        };
        match ctx.get(f) {
            Value::Str(s) => s.to_owned(),
            Value::U64(n) => format!("{n}"),
            Value::Null => "<none>".into(),
            Value::Ip(ip) => format!("{ip}"),
        }
    };
    assert_eq!(get([10, 1, 2, 9], 1, Field::GeoCity), "San Jose");
    assert_eq!(get([10, 1, 3, 9], 1, Field::GeoCity), "Washington, D.C.");
    assert_eq!(get([10, 1, 3, 9], 1, Field::GeoCountry), "US");
    assert_eq!(get([10, 1, 3, 9], 1, Field::GeoAsn), "<none>");
    assert_eq!(get([10, 1, 2, 9], 1, Field::GeoAsn), "64500");
    assert_eq!(get([10, 1, 2, 9], 1, Field::CustomerProfiles), "300");
    assert_eq!(get([10, 1, 2, 9], 2, Field::CustomerPlan), "ads");
    assert_eq!(
        get([10, 1, 2, 9], 2, Field::CustomerSignupCountry),
        "<none>"
    );
    assert_eq!(get([10, 1, 2, 9], 2, Field::CustomerProfiles), "<none>");

    for (body, want) in [
        (
            "customer_id,plan,signup_country,profiles\n1,basic,US,2\n2,basic,US,70000\n",
            "customer.csv:3: column \"profiles\": \"70000\" is not a whole number from 0 to 65535",
        ),
        (
            "customer_id,plan,signup_country,profiles\n,basic,US,2\n",
            "customer.csv:2: column \"customer_id\": empty, and a row needs its key",
        ),
        (
            "customer_id,plan,signup_country,profiles\n1,basic,US\n",
            "customer.csv:2: 3 fields, the header has 4",
        ),
        (
            "customer_id,plan,profiles\n1,basic,2\n",
            "customer.csv:1: the header has no column \"signup_country\"",
        ),
    ] {
        std::fs::write(dir.join("customer.csv"), body).unwrap();
        let e = Config::load(&cfg).unwrap_err();
        assert!(e.reason.contains(want), "{e}\nwanted: {want}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_customer_table_can_ask_a_lookup_service() {
    let dir = std::env::temp_dir().join(format!("sluice-config-http-{}", std::process::id()));
    sluice_workload::fixtures::write(sluice_workload::Workload::W1, 1, &dir).unwrap();
    let c = Config::load(&dir.join("sluice-lookup.toml")).unwrap();
    let spec = c
        .tables
        .remote_customer()
        .expect("customer asks the service");
    assert_eq!(spec.url, sluice_workload::fixtures::LOOKUP_URL);
    assert_eq!((spec.addr.port(), spec.path.as_str()), (7480, "/lookup"));
    assert_eq!(c.tables.customer_rows(), 0);
    assert!(
        Config::load(&dir.join("sluice.toml"))
            .unwrap()
            .tables
            .remote_customer()
            .is_none()
    );
    let _ = std::fs::remove_dir_all(&dir);

    let text = |table: &str| {
        format!(
            "[keys]\ndemo = true\n[enrich.{table}]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\n\
             ttl_ms = 5\nbatch_max = 8\nbudget_us = 100\n"
        )
    };
    let c = Config::parse(&text("customer"), "t.toml", Path::new("")).unwrap();
    let spec = c.tables.remote_customer().unwrap();
    assert_eq!((spec.ttl_ms, spec.batch_max, spec.budget_us), (5, 8, 100));
    assert_eq!(
        spec.negative_ttl_ms,
        sluice::enrich::remote::NEGATIVE_TTL_MS
    );
    for (text, line, says) in [
        (text("device"), 4, "kind \"http\" is for the customer table"),
        (
            "[keys]\ndemo = true\n[enrich.customer]\nkind = \"http\"\n".to_owned(),
            4,
            "needs a `url`",
        ),
        (
            text("customer").replace("http://", "https://"),
            5,
            "only http://",
        ),
        (
            text("customer").replace("batch_max = 8", "batch_max = 0"),
            7,
            "at least 1",
        ),
        (
            "[keys]\ndemo = true\n[enrich.customer]\nkind = \"w1\"\nttl_ms = 5\n".to_owned(),
            5,
            "`ttl_ms` is for kind \"http\"",
        ),
    ] {
        let e = Config::parse(&text, "t.toml", Path::new("")).unwrap_err();
        assert!(e.line == line && e.reason.contains(says), "{e}");
    }
}

#[test]
fn route_errors_point_at_line_and_column() {
    let route = |to: &str, when: &str| {
        format!(
            "[keys]\ndemo = true\n[streams.a]\n[[route]]\nname = \"r\"\nto = {to}\nwhen = '{when}'\nfields = [\"event_id\"]\n"
        )
    };
    let e = Config::parse(
        &route("[\"a\"]", "event_type == \"x\" and geo.country < \"US\""),
        "t.toml",
        Path::new(""),
    )
    .unwrap_err();
    assert_eq!((e.line, e.column), (7, 43), "{e}");
    assert!(
        e.to_string()
            .starts_with("t.toml:7:43: route \"r\": `<` orders numbers and versions"),
        "{e}"
    );
    let e = Config::parse(&route("[]", "true"), "t.toml", Path::new("")).unwrap_err();
    assert_eq!(e.line, 6, "{e}");
    assert!(e.reason.contains("`to` names no stream"), "{e}");
    let e = Config::parse(&route("[\"a\", \"b\"]", "true"), "t.toml", Path::new("")).unwrap_err();
    assert!(e.reason.contains("no stream \"b\""), "{e}");
    let e = Config::parse(
        &route("[\"a\"]", "device.os starts_with 7"),
        "t.toml",
        Path::new(""),
    )
    .unwrap_err();
    assert_eq!((e.line, e.column), (7, 31), "{e}");
    assert!(e.reason.contains("expected a string, found 7"), "{e}");
}

/// A reload loads the tables again exactly when what they are loaded from changed: every
/// setting of every kind, and a file's contents.
#[test]
fn table_specs_change_with_every_setting_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("device.csv");
    std::fs::write(
        &devices,
        "device_type_id,brand,model,platform,os\n1,b,m1,tv,o\n",
    )
    .unwrap();
    let spec = |tables: &str| {
        let text = format!("[keys]\ndemo = true\n{tables}");
        Config::parse(&text, "t.toml", dir.path())
            .unwrap()
            .tables_spec
    };
    let http = "[enrich.customer]\nkind = \"http\"\nurl = \"http://127.0.0.1:7480/lookup\"\n";
    assert_eq!(spec(http), spec(http));
    for key in [
        "cache_entries",
        "ttl_ms",
        "negative_ttl_ms",
        "batch_max",
        "in_flight_max",
        "budget_us",
        "request_timeout_ms",
    ] {
        assert_ne!(spec(http), spec(&format!("{http}{key} = 7\n")), "{key}");
    }
    let w1 = "[enrich.geo]\nkind = \"w1\"\n";
    assert_eq!(
        spec(w1),
        spec(&format!("{w1}seed = 1\n")),
        "the default seed"
    );
    assert_ne!(spec(w1), spec(&format!("{w1}seed = 2\n")));
    let file = "[enrich.device]\nkind = \"file\"\npath = \"device.csv\"\n";
    let before = spec(file);
    assert_eq!(before, spec(file));
    std::fs::write(
        &devices,
        "device_type_id,brand,model,platform,os\n1,b,m1,tv,o\n2,b,m2,web,o\n",
    )
    .unwrap();
    assert_ne!(before, spec(file), "the file changed");
}
