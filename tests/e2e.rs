//! End to end, with the real binaries: `sluice run`, `loadgen run`, `sluice cat`, `sluice check`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_e2e::{
    EngineProc, ServiceProc, binary, cat, engine_config, expected_records, loadgen, read,
    stream_records, temp_dir, without_ts,
};
use sluice_protocol::envelope::ENVELOPE_HEADER_BYTES;
use sluice_protocol::frame::{ACK_FRAME_BYTES, FRAME_HEADER_BYTES};
use sluice_protocol::{
    Ack, AckStatus, AlignedBuf, Backend, EnvelopeHeader, FrameBuilder, PayloadFormat, TAG_BYTES,
    partition_for, reseal_frame,
};
use sluice_workload::routes::STREAMS;
use sluice_workload::{Workload, WorkloadGen, tables};

fn sorted(mut v: Vec<Value>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|x| without_ts(x).to_string()).collect();
    s.sort();
    s
}

#[test]
fn w1_events_are_acked_and_segments_hold_exactly_the_routed_records() {
    const EVENTS: usize = 20_000;
    let dir = temp_dir("w1");
    let (config, port) = engine_config(&dir, 2, "{ interval_us = 1000 }");
    let engine = EngineProc::start(&config, port);
    let report = loadgen(
        &engine.target(),
        &[
            "--events",
            &EVENTS.to_string(),
            "--seed",
            "5",
            "--connections",
            "3",
            "--batch",
            "32",
        ],
    );
    assert_eq!(report["events_sent"], json!(EVENTS));
    assert_eq!(report["events_acked"], json!(EVENTS));
    assert_eq!(report["events_failed"], json!(0));
    assert_eq!(report["workload"], json!("w1"));
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_us"][key].as_u64().is_some(), "{key}");
    }
    // The admin endpoint: health, and events in as counted by the shards (published every
    // 250 ms).
    let admin = port + 3;
    assert!(http_get(admin, "/healthz").starts_with("HTTP/1.1 200"));
    let mut events_in = 0;
    for _ in 0..40 {
        let metrics = http_get(admin, "/metrics");
        events_in = metrics
            .lines()
            .filter(|l| l.starts_with("sluice_events_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        if events_in == EVENTS as u64 {
            assert!(metrics.contains("sluice_records_total{shard=\"0\",stream=\"playback\"}"));
            assert!(
                metrics.contains("sluice_batch_latency_seconds_bucket{shard=\"1\",le=\"0.001\"}")
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(events_in, EVENTS as u64);
    engine.stop();

    let data = dir.join("data");
    let expected = expected_records(5, EVENTS);
    let mut total = 0;
    for stream in STREAMS {
        let got = stream_records(&data, stream);
        let want = expected.get(stream).cloned().unwrap_or_default();
        total += want.len();
        assert_eq!(got.len(), want.len(), "records in {stream}");
        let (got, want) = (sorted(got), sorted(want));
        if let Some(i) = (0..got.len()).find(|i| got[*i] != want[*i]) {
            panic!(
                "records in {stream} differ: got {}, want {}",
                got[i], want[i]
            );
        }
    }
    assert!(
        total > 2 * EVENTS,
        "the route set emits about 3 records an event: {total}"
    );
    assert!(stream_records(&data, "dead-letter").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("admin port");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Sends one frame and reads its ack.
fn send_frame(target: &str, frame: &[u8]) -> Ack {
    let mut s = TcpStream::connect(target).expect("connect");
    s.write_all(frame).expect("send");
    let mut ack = [0u8; ACK_FRAME_BYTES];
    s.read_exact(&mut ack).expect("ack");
    Ack::decode(&ack).expect("an ack frame")
}

/// The envelopes of a finished frame, as raw bytes (header, ciphertext, tag).
fn raw_envelopes(frame: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = FRAME_HEADER_BYTES;
    while at < frame.len() {
        let h = EnvelopeHeader::decode(frame[at..at + 32].try_into().unwrap());
        out.push(
            frame[at..at + ENVELOPE_HEADER_BYTES + h.payload_len as usize + TAG_BYTES].to_vec(),
        );
        at += h.envelope_len();
    }
    out
}

#[test]
fn corrupted_envelopes_are_dead_lettered_with_their_reasons() {
    let dir = temp_dir("dead");
    let (config, port) = engine_config(&dir, 2, "\"every_batch\"");
    let engine = EngineProc::start(&config, port);
    let keys = sluice_workload::demo_keyring(Backend::Ring);
    let mut generator = WorkloadGen::new(Workload::W1, 77);
    let up = generator.next_upload(1);
    let plaintext = sluice_protocol::event::to_rkyv_payload(&up.events);
    // A partition owned by shard 1, sent to the shared port: it may be forwarded.
    let partition = partition_for(up.partition_key, 64);
    let mut b = FrameBuilder::new(9, partition);
    let cipher = keys.get(1).unwrap();
    let header = |key_id, n: u8| {
        EnvelopeHeader::new(PayloadFormat::Rkyv, key_id, [n; 12], up.partition_key, 1)
    };
    b.seal(cipher, header(1, 1), &plaintext); // good
    b.seal(cipher, header(99, 2), &plaintext); // unknown key
    b.seal(cipher, header(1, 3), &plaintext); // tag broken below
    b.seal(cipher, header(1, 4), &[0x5a; 64]); // authentic, but not an archive
    let mut frame = AlignedBuf::new();
    frame.extend_from_slice(b.finish());
    let third = FRAME_HEADER_BYTES + 2 * raw_envelopes(&frame)[0].len().next_multiple_of(16);
    frame[third + ENVELOPE_HEADER_BYTES + 5] ^= 0x80;
    reseal_frame(&mut frame).unwrap();
    let raws = raw_envelopes(&frame);

    let ack = send_frame(&engine.target(), &frame);
    assert_eq!(ack.status, AckStatus::Ok);
    assert_eq!((ack.seq, ack.accepted, ack.dead_lettered), (9, 1, 3));

    // A frame with a bad CRC is refused whole, with its reason.
    let mut bad = frame.clone();
    bad[FRAME_HEADER_BYTES] ^= 1;
    let ack = send_frame(&engine.target(), &bad);
    assert_eq!(ack.status, AckStatus::Rejected);
    assert_eq!(
        sluice_protocol::Error::name_of_code(ack.error),
        Some("bad_crc")
    );
    engine.stop();

    let dead = stream_records(&dir.join("data"), "dead-letter");
    assert_eq!(dead.len(), 3, "{dead:?}");
    let by_reason: HashMap<&str, &Value> = dead
        .iter()
        .map(|d| (d["reason"].as_str().unwrap(), d))
        .collect();
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v["raw"].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(b64(by_reason["unknown_key"]), raws[1]);
    assert_eq!(by_reason["unknown_key"]["key_id"], json!(99));
    assert_eq!(b64(by_reason["bad_tag"]), raws[2], "raw bytes as received");
    assert_eq!(b64(by_reason["invalid_archive"]), raws[3]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restart_keeps_the_data_and_cat_reports_a_torn_tail() {
    let dir = temp_dir("restart");
    let (config, port) = engine_config(&dir, 2, "\"none\"");
    let data = dir.join("data");
    let count = |data: &std::path::Path| -> usize {
        STREAMS.iter().map(|s| stream_records(data, s).len()).sum()
    };
    let engine = EngineProc::start(&config, port);
    let r = loadgen(&engine.target(), &["--events", "3000", "--seed", "11"]);
    assert_eq!(r["events_acked"], json!(3000));
    engine.stop();
    let first: usize = expected_records(11, 3000).values().map(Vec::len).sum();
    assert_eq!(count(&data), first);

    let engine = EngineProc::start(&config, port);
    let r = loadgen(&engine.target(), &["--events", "2000", "--seed", "12"]);
    assert_eq!(r["events_acked"], json!(2000));
    engine.stop();
    let second: usize = expected_records(12, 2000).values().map(Vec::len).sum();
    assert_eq!(
        count(&data),
        first + second,
        "the first run's records are still there"
    );

    // Cut the last record of a segment in half: cat prints what is whole and reports the tail.
    let seg = data.join("errors").join("000-00000001.seg");
    let bytes = sluice_e2e::read(&seg);
    let torn = dir.join("torn.seg");
    std::fs::write(&torn, &bytes[..bytes.len() - 7]).unwrap();
    let out = cat(&torn);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("torn tail"), "{stderr}");
    let whole = cat(&seg).stdout.split(|b| *b == b'\n').count();
    let kept = out.stdout.split(|b| *b == b'\n').count();
    assert_eq!(kept + 1, whole, "every record but the cut one");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configs_are_refused_with_file_line_and_reason() {
    let dir = temp_dir("config");
    let base = sluice_workload::fixtures::default_config();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            base.replace("partitions = 64", "partitions = \"many\""),
            "partitions = \"many\"",
            "invalid type",
        ),
        (
            base.replacen("to = [\"playback\"]", "to = [\"nowhere\"]", 1),
            "to = [\"nowhere\"]",
            "no stream \"nowhere\"",
        ),
        (
            base.replacen("when = '", "when = 'event_type = \"x\" and ", 1),
            "when = 'event_type = \"x\"",
            "did you mean `==`",
        ),
        (
            base.replacen(
                "fields = [\"event_id\"",
                "fields = [\"event_id\", \"geo.town\"",
                1,
            ),
            "\"geo.town\"",
            "unknown field \"geo.town\"",
        ),
        (
            base.replace(
                "durability = { interval_us = 1000 }",
                "durability = \"sometimes\"",
            ),
            "durability = \"sometimes\"",
            "sinks.durability",
        ),
        (
            base.replace("[keys]", "[keys]\nfile = \"missing-keys.txt\""),
            "file = \"missing-keys.txt\"",
            "either `demo = true` or `file`",
        ),
    ];
    for (i, (text, marker, reason)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let line = text
            .lines()
            .position(|l| l.contains(marker))
            .expect("marker in config")
            + 1;
        let out = Command::new(binary("sluice"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "case {i} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("{}:{line}:", path.display());
        // Whole-file errors name no line; the rest name the offending one.
        if !reason.contains("either") {
            assert!(stderr.contains(&want), "case {i}: want {want} in {stderr}");
        }
        assert!(
            stderr.contains(reason),
            "case {i}: want {reason:?} in {stderr}"
        );
    }
    let out = Command::new(binary("sluice"))
        .arg("check")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("routes: 100"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_post(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("admin port");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The route revision each shard reports in /metrics.
fn route_revisions(admin: u16) -> Vec<u64> {
    http_get(admin, "/metrics")
        .lines()
        .filter(|l| l.starts_with("sluice_route_revision{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn routes_reload_under_load_without_losing_or_duplicating_an_event() {
    const EVENTS: usize = 60_000;
    const BATCH: usize = 64;
    const SEED: u64 = 11;
    let dir = temp_dir("reload");
    let base = sluice_e2e::free_ports(4);
    let admin = base + 3;
    let path = dir.join("sluice.toml");
    // Every event matches the one rule; which stream it goes to tells which rule set routed it.
    let config = |to: &str, when: &str| {
        format!(
            "[engine]\nshards = 2\n[listen]\nshared = \"127.0.0.1:{base}\"\nshard_port_base = {}\n\
             admin = \"127.0.0.1:{admin}\"\n[keys]\ndemo = true\n[sinks]\ndir = {:?}\n\
             [streams.a]\nformat = \"json\"\n[streams.b]\nformat = \"json\"\n\n\
             [[route]]\nname = \"all\"\nto = [\"{to}\"]\nwhen = '{when}'\nfields = [\"event_id\"]\n",
            base + 1,
            dir.join("data").display().to_string()
        )
    };
    std::fs::write(&path, config("a", "true")).unwrap();
    let engine = EngineProc::start(&path, base);
    assert_eq!(route_revisions(admin), [1, 1]);
    let target = engine.target();
    let sender = std::thread::spawn(move || {
        loadgen(
            &target,
            &[
                "--events",
                &EVENTS.to_string(),
                "--rate",
                "20000",
                "--seed",
                &SEED.to_string(),
                "--connections",
                "2",
                "--batch",
                &BATCH.to_string(),
            ],
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    let mut revision = 1;
    for k in 1..=6 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if k == 3 {
            // A bad config is refused with its error, and the running rules stay.
            std::fs::write(&path, config("b", "bogus == 1")).unwrap();
            let reply = http_post(admin, "/reload");
            assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
            assert!(reply.contains("unknown field `bogus`"), "{reply}");
            assert_eq!(route_revisions(admin), [revision, revision]);
        }
        std::fs::write(&path, config(if k % 2 == 1 { "b" } else { "a" }, "true")).unwrap();
        revision += 1;
        if k % 2 == 1 {
            let reply = http_post(admin, "/reload");
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            assert!(reply.contains(&format!("revision {revision}")), "{reply}");
        } else {
            engine.signal(libc::SIGHUP);
        }
        // The shards publish their metrics every 250 ms.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while route_revisions(admin) != [revision, revision] {
            assert!(
                std::time::Instant::now() < deadline,
                "revision {revision} not taken"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let report = sender.join().unwrap();
    assert_eq!(report["events_acked"], json!(EVENTS), "{report}");
    assert_eq!(report["events_failed"], json!(0), "{report}");
    engine.stop();

    // Every event is in exactly one of the streams, once.
    let data = dir.join("data");
    let mut stream_of: HashMap<u64, &str> = HashMap::new();
    for stream in ["a", "b"] {
        for r in stream_records(&data, stream) {
            let id = r["event_id"].as_u64().expect("an event id");
            assert!(stream_of.insert(id, stream).is_none(), "event {id} twice");
        }
    }
    assert_eq!(stream_of.len(), EVENTS);
    // Every batch went to one stream: one rule set routed it whole.
    let frames = sluice_loadgen::client::pool_event_ids(Workload::W1, SEED, EVENTS, BATCH, 64);
    let mut per_stream = HashMap::new();
    for (p, ids) in &frames {
        let s = stream_of[&ids[0]];
        assert!(
            ids.iter().all(|id| stream_of[id] == s),
            "a batch of partition {p} was routed by two rule sets"
        );
        *per_stream.entry(s).or_insert(0) += 1;
    }
    assert!(
        per_stream.get("a").is_some_and(|n| *n > 10)
            && per_stream.get("b").is_some_and(|n| *n > 10),
        "the reloads took effect under load: {per_stream:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `POST /reload` loads a changed table file again: events before it are enriched from the
/// old rows, events after it from the new, none is lost; a table that does not load is
/// refused and the running tables stay.
#[test]
fn tables_reload_when_their_files_change() {
    const EVENTS: usize = 3000;
    let dir = temp_dir("tables");
    let base = sluice_e2e::free_ports(4);
    let admin = base + 3;
    let path = dir.join("sluice.toml");
    let devices = |platform: &str| {
        let mut csv = String::from("device_type_id,brand,model,platform,os\n");
        for id in 1..=500 {
            csv.push_str(&format!("{id},Acme,m{id},{platform},acmeos\n"));
        }
        csv
    };
    std::fs::write(dir.join("device.csv"), devices("tv")).unwrap();
    std::fs::write(
        &path,
        format!(
            "[engine]\nshards = 2\n[listen]\nshared = \"127.0.0.1:{base}\"\nshard_port_base = {}\n\
             admin = \"127.0.0.1:{admin}\"\n[keys]\ndemo = true\n[sinks]\ndir = {:?}\n\
             [enrich.device]\nkind = \"file\"\npath = \"device.csv\"\n\
             [streams.tv]\nformat = \"json\"\n[streams.web]\nformat = \"json\"\n\n\
             [[route]]\nname = \"tv\"\nto = [\"tv\"]\nwhen = 'device.platform == \"tv\"'\n\
             fields = [\"event_id\", \"device.platform\"]\n\
             [[route]]\nname = \"web\"\nto = [\"web\"]\nwhen = 'device.platform == \"web\"'\n\
             fields = [\"event_id\", \"device.platform\"]\n",
            base + 1,
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    let engine = EngineProc::start(&path, base);
    let target = engine.target();
    let send = |seed: &str| {
        let report = loadgen(
            &target,
            &[
                "--events",
                &EVENTS.to_string(),
                "--rate",
                "20000",
                "--seed",
                seed,
            ],
        );
        assert_eq!(report["events_acked"], json!(EVENTS), "{report}");
    };
    send("1");
    // A table that does not load is refused, with its line; the running tables stay.
    std::fs::write(dir.join("device.csv"), devices("web") + "501,Acme,x\n").unwrap();
    let reply = http_post(admin, "/reload");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("device.csv:502: 3 fields"), "{reply}");
    send("2");
    std::fs::write(dir.join("device.csv"), devices("web")).unwrap();
    let reply = http_post(admin, "/reload");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("tables loaded again"), "{reply}");
    send("3");
    // A reload with nothing changed keeps the tables.
    let reply = http_post(admin, "/reload");
    assert!(
        reply.starts_with("HTTP/1.1 200") && !reply.contains("tables loaded again"),
        "{reply}"
    );
    engine.stop();
    let data = dir.join("data");
    let tv = stream_records(&data, "tv");
    let web = stream_records(&data, "web");
    assert_eq!((tv.len(), web.len()), (2 * EVENTS, EVENTS));
    assert!(tv.iter().all(|r| r["device.platform"] == "tv"));
    assert!(web.iter().all(|r| r["device.platform"] == "web"));
}

/// Geo from GeoLite2-City through the engine: every record's country, region and city are
/// those MaxMind's own Python reader gives for its address (or none where it has none).
#[test]
fn geo_from_a_maxmind_database_matches_maxminds_reader() {
    const EVENTS: usize = 4000;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fetched = Command::new(root.join("scripts/fetch-geolite2.sh"))
        .output()
        .expect("run scripts/fetch-geolite2.sh");
    assert!(fetched.status.success());
    let db = root.join(String::from_utf8(fetched.stdout).unwrap().trim());
    let dir = temp_dir("mmdb");
    let base = sluice_e2e::free_ports(4);
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\nshards = 2\n[listen]\nshared = \"127.0.0.1:{base}\"\nshard_port_base = {}\n\
             admin = \"127.0.0.1:{}\"\n[keys]\ndemo = true\n[sinks]\ndir = {:?}\n\
             [enrich.geo]\nkind = \"mmdb\"\npath = {:?}\ncache_entries = 512\n\
             [streams.all]\nformat = \"json\"\n\n\
             [[route]]\nname = \"all\"\nto = [\"all\"]\nwhen = 'true'\n\
             fields = [\"event_id\", \"client_ip\", \"geo.country\", \"geo.region\", \"geo.city\"]\n",
            base + 1,
            base + 3,
            dir.join("data").display().to_string(),
            db.display().to_string()
        ),
    )
    .unwrap();
    let engine = EngineProc::start(&path, base);
    let report = loadgen(
        &engine.target(),
        &["--events", &EVENTS.to_string(), "--rate", "20000"],
    );
    assert_eq!(report["events_acked"], json!(EVENTS), "{report}");
    engine.stop();
    let records = stream_records(&dir.join("data"), "all");
    assert_eq!(records.len(), EVENTS);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let ips: Vec<String> = records.iter().map(|r| text(&r["client_ip"])).collect();
    let mut py = Command::new("python3")
        .arg(root.join("scripts/geolite2_answers.py"))
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let input = ips.join("\n") + "\n";
    let mut stdin = py.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = py.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "scripts/geolite2_answers.py failed");
    let answers = String::from_utf8(out.stdout).unwrap();
    let mut with_country = 0;
    for (r, line) in records.iter().zip(answers.lines()) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f[0], text(&r["client_ip"]));
        let got = [
            text(&r["geo.country"]),
            text(&r["geo.region"]),
            text(&r["geo.city"]),
        ];
        assert_eq!(got, [f[2], f[3], f[4]], "{r}");
        with_country += usize::from(!f[2].is_empty());
    }
    assert!(with_country > EVENTS / 2, "{with_country}");
}

/// The customer table from a lookup service 5 ms away that fails 10% of its requests: every
/// event is acked, and each record carries its customer's row as the W1 table has it, or the
/// missing mark (and then no customer fields): never a wrong value. `/metrics` counts it all.
#[test]
fn a_slow_failing_lookup_service_never_stalls_or_misleads() {
    const EVENTS: usize = 6000;
    let dir = temp_dir("lookup");
    let base = sluice_e2e::free_ports(5);
    let admin = base + 3;
    let service = ServiceProc::start(base + 4, &["--latency-us", "5000", "--fail-rate", "0.1"]);
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\nshards = 2\n[listen]\nshared = \"127.0.0.1:{base}\"\nshard_port_base = {}\n\
             admin = \"127.0.0.1:{admin}\"\n[keys]\ndemo = true\n[sinks]\ndir = {:?}\n\
             [enrich.customer]\nkind = \"http\"\nurl = \"http://127.0.0.1:{}/lookup\"\n\
             budget_us = 20000\ncache_entries = 4096\nbatch_max = 64\n\
             [streams.all]\nformat = \"json\"\n\n\
             [[route]]\nname = \"all\"\nto = [\"all\"]\nwhen = 'true'\n\
             fields = [\"event_id\", \"customer_id\", \"customer.plan\", \
             \"customer.signup_country\", \"customer.profiles\"]\n",
            base + 1,
            dir.join("data").display().to_string(),
            service.port
        ),
    )
    .unwrap();
    let engine = EngineProc::start(&path, base);
    let report = loadgen(
        &engine.target(),
        &["--events", &EVENTS.to_string(), "--rate", "10000"],
    );
    assert_eq!(report["events_acked"], json!(EVENTS), "{report}");
    std::thread::sleep(std::time::Duration::from_millis(600));
    let metrics = http_get(admin, "/metrics");
    engine.stop();
    let sum = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("table=\"customer\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let table: HashMap<u64, tables::CustomerRow> = tables::customers(1)
        .into_iter()
        .map(|c| (c.customer_id, c))
        .collect();
    let records = stream_records(&dir.join("data"), "all");
    assert_eq!(records.len(), EVENTS);
    let (mut marked, mut enriched) = (0u64, 0u64);
    for r in &records {
        let fields = [
            &r["customer.plan"],
            &r["customer.signup_country"],
            &r["customer.profiles"],
        ];
        if r.get("enrich_missing").is_some() {
            assert_eq!(r["enrich_missing"], "customer", "{r}");
            assert!(fields.iter().all(|v| v.is_null()), "{r}");
            marked += 1;
            continue;
        }
        let id = r["customer_id"].as_u64().expect("customer_id");
        let want = table
            .get(&id)
            .map_or([Value::Null, Value::Null, Value::Null], |c| {
                [json!(c.plan), json!(c.signup_country), json!(c.profiles)]
            });
        assert_eq!(fields.map(Clone::clone), want, "{r}");
        enriched += u64::from(!want[0].is_null());
    }
    eprintln!(
        "{EVENTS} events: {enriched} with a customer row, {marked} marked missing; {} requests, {} failed, {} budgets ran out",
        sum("sluice_enrich_requests_total"),
        sum("sluice_enrich_failures_total"),
        sum("sluice_enrich_timeouts_total")
    );
    // Some answers came within the budget or from the cache, some were lost to failures.
    assert!(
        enriched > EVENTS as u64 / 4,
        "{enriched} of {EVENTS} enriched"
    );
    assert!(marked > 0, "no event went on marked missing");
    assert_eq!(sum("sluice_enrich_missing_total"), marked, "{metrics}");
    assert!(sum("sluice_enrich_requests_total") > 0);
    assert!(sum("sluice_enrich_failures_total") > 0, "{metrics}");
    assert_eq!(sum("sluice_enrich_requests_in_flight"), 0);
    let (hits, misses) = (
        sum("sluice_enrich_cache_hits_total"),
        sum("sluice_enrich_cache_misses_total"),
    );
    assert_eq!(hits + misses, EVENTS as u64);
    drop(service);
}

/// `sluice demo` leaves nothing behind unless told to keep its segments, and reports the
/// bytes it wrote per stream; `--data DIR` keeps them where the user says.
#[test]
fn the_demo_cleans_up_unless_told_to_keep_its_segments() {
    let dir = temp_dir("demo");
    let (config, _) = engine_config(&dir, 2, "\"every_batch\"");
    let demo = |extra: &[&str]| {
        let out = Command::new(binary("sluice"))
            .args(["demo", "--duration", "1", "--rate", "20000", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .expect("sluice demo runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    let text = demo(&[]);
    let temp = text
        .split("segments under ")
        .nth(1)
        .and_then(|t| t.split(" (temporary").next())
        .unwrap_or_else(|| panic!("the demo says where its segments go: {text}"));
    assert!(!Path::new(temp).exists(), "{temp} is removed: {text}");
    assert!(
        text.contains(&format!("segments: {temp} removed")),
        "{text}"
    );
    assert!(
        !dir.join("data").exists(),
        "the config's dir is not written"
    );
    let all = text
        .lines()
        .find(|l| l.trim_start().starts_with("all "))
        .unwrap_or_else(|| panic!("a total line: {text}"));
    let bytes: u64 = all.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(bytes > 0, "{all}");

    let kept = dir.join("kept");
    let text = demo(&["--data", kept.to_str().unwrap()]);
    assert!(text.contains("(kept)"), "{text}");
    let records = stream_records(&kept, "playback");
    assert!(!records.is_empty(), "the kept segments hold records");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sluice demo --sweep` measures the maximum, offers every step of it, and writes the JSON
/// report and a page of SVG charts that fetches nothing; it says where the page is.
#[test]
fn the_demo_sweeps_offered_load_and_draws_it() {
    let dir = temp_dir("sweep");
    let (config, _) = engine_config(&dir, 2, "\"none\"");
    let out_dir = dir.join("sweep");
    let out = Command::new(binary("sluice"))
        .args([
            "demo",
            "--sweep",
            "--step-seconds",
            "1",
            "--connections",
            "2",
            "--config",
        ])
        .arg(&config)
        .arg("--sweep-out")
        .arg(&out_dir)
        .output()
        .expect("sluice demo runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let page = out_dir.join("sweep.html");
    assert!(
        text.contains(&format!("page:   {}", page.display())),
        "{text}"
    );
    let report: Value =
        serde_json::from_slice(&read(&out_dir.join("sweep.json"))).expect("a JSON report");
    let max = report["max_events_per_sec"].as_f64().unwrap();
    assert!(max > 0.0, "{report}");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10, "{text}");
    for (k, st) in steps.iter().enumerate() {
        let offered = st["offered_events_per_sec"].as_f64().unwrap();
        assert!((offered - max * (k + 1) as f64 / 10.0).abs() < 1.0, "{st}");
        assert!(st["acked_events_per_sec"].as_f64().unwrap() > 0.0, "{st}");
        assert!(st["p99_us"].as_u64().unwrap() >= st["p50_us"].as_u64().unwrap());
        assert_eq!(st["events_failed"], 0, "{st}");
        assert!(
            !st["run"]["timeline"].as_array().unwrap().is_empty(),
            "{st}"
        );
    }
    let html = String::from_utf8(read(&page)).unwrap();
    assert_eq!(html.matches("<svg").count(), 4);
    for fetch in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(!html.contains(fetch), "{fetch} in the page");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads one frame (header, then the rest of its total_len) from `s`; `None` at the end.
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    match s.read(&mut head[..1]) {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    s.read_exact(&mut head[1..]).expect("a whole header");
    let len = u32::from_le_bytes(head[24..28].try_into().unwrap()) as usize;
    let mut frame = head.to_vec();
    frame.resize(len, 0);
    s.read_exact(&mut frame[FRAME_HEADER_BYTES..])
        .expect("a whole frame");
    Some(frame)
}

fn read_ack(s: &mut TcpStream) -> Ack {
    Ack::decode(&read_frame(s).expect("an ack")).expect("an ack frame")
}

fn refused(ack: &Ack) -> (u64, u32, &'static str) {
    assert_eq!(ack.status, AckStatus::Rejected, "{ack:?}");
    let name = sluice_protocol::Error::name_of_code(ack.error).expect("an error code");
    (ack.seq, ack.partition, name)
}

fn reason_total(metrics: &str, family: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"}}");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// What PROTOCOL.md §6-§8 promise for frames the engine refuses: every ack echoes the
/// frame's seq and partition; header errors are answered, then the connection is closed;
/// errors past the header reject the frame and the connection reads on; a frame cut short by
/// the client's half-close is answered `truncated`; a partition out of range, or an envelope
/// whose partition key maps elsewhere, is `bad_partition`; and each is counted by reason.
#[test]
fn refused_frames_are_answered_echoed_and_counted_as_documented() {
    use sluice_protocol::encode_hello;
    let dir = temp_dir("refused");
    let (config, port) = engine_config(&dir, 2, "\"every_batch\"");
    let admin = port + 3;
    let engine = EngineProc::start(&config, port);
    let keys = sluice_workload::demo_keyring(Backend::Ring);
    let cipher = keys.get(1).unwrap();
    let mut generator = WorkloadGen::new(Workload::W1, 5);
    let up = generator.next_upload(1);
    let plaintext = sluice_protocol::event::to_rkyv_payload(&up.events);
    let partition = partition_for(up.partition_key, 64);
    let good = |seq: u64, partition: u32, key: u64| {
        let mut b = FrameBuilder::new(seq, partition);
        let h = EnvelopeHeader::new(PayloadFormat::Rkyv, 1, [seq as u8; 12], key, 1);
        b.seal(cipher, h, &plaintext);
        b.finish().to_vec()
    };
    let connect = || TcpStream::connect(engine.target()).expect("connect");
    let closed = |s: &mut TcpStream| read_frame(s).is_none();

    // The hello of §7: a whole header with magic, version, kind 3, total_len 32 and its CRC.
    let mut s = connect();
    s.write_all(&encode_hello()).unwrap();
    let reply = read_frame(&mut s).unwrap();
    assert_eq!(reply[5], 4, "a hello reply");
    // A hello whose CRC is wrong is refused and the connection reads on.
    let mut bad_hello = encode_hello();
    bad_hello[28] ^= 1;
    s.write_all(&bad_hello).unwrap();
    assert_eq!(refused(&read_ack(&mut s)), (0, 0, "bad_crc"));
    s.write_all(&encode_hello()).unwrap();
    assert_eq!(read_frame(&mut s).unwrap()[5], 4);
    // A bare header (kind 3, every other byte 0) has no magic: answered, then closed.
    let mut bare = [0u8; FRAME_HEADER_BYTES];
    bare[5] = 3;
    s.write_all(&bare).unwrap();
    assert_eq!(refused(&read_ack(&mut s)), (0, 0, "bad_magic"));
    assert!(closed(&mut s), "bad_magic closes the connection");

    // Header errors echo seq and partition and close; bad_crc echoes and reads on.
    let mut s = connect();
    let mut f = good(11, partition, up.partition_key);
    f[28] ^= 1;
    s.write_all(&f).unwrap();
    assert_eq!(refused(&read_ack(&mut s)), (11, partition, "bad_crc"));
    s.write_all(&good(12, partition, up.partition_key)).unwrap();
    let ack = read_ack(&mut s);
    assert_eq!((ack.seq, ack.status, ack.accepted), (12, AckStatus::Ok, 1));
    // A partition at or above the count: bad_partition, and the connection reads on.
    s.write_all(&good(13, 64, up.partition_key)).unwrap();
    assert_eq!(refused(&read_ack(&mut s)), (13, 64, "bad_partition"));
    // An envelope whose key maps to another partition is dead-lettered; the batch is acked.
    s.write_all(&good(14, (partition + 1) % 64, up.partition_key))
        .unwrap();
    let ack = read_ack(&mut s);
    assert_eq!(
        (ack.seq, ack.status, ack.accepted, ack.dead_lettered),
        (14, AckStatus::Ok, 0, 1)
    );
    let mut f = good(15, partition, up.partition_key);
    f[4] = 2;
    s.write_all(&f).unwrap();
    assert_eq!(refused(&read_ack(&mut s)), (15, partition, "bad_version"));
    assert!(closed(&mut s), "bad_version closes the connection");
    for (at, byte, want) in [(5, 2u8, "bad_kind"), (24, 40, "bad_length")] {
        let mut s = connect();
        let mut f = good(16, partition, up.partition_key);
        f[at] = byte;
        s.write_all(&f).unwrap();
        assert_eq!(refused(&read_ack(&mut s)), (16, partition, want));
        assert!(closed(&mut s), "{want} closes the connection");
    }

    // A frame cut short by the client's half-close is answered `truncated`, echoed.
    let mut s = connect();
    let f = good(17, partition, up.partition_key);
    s.write_all(&f[..40]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(refused(&read_ack(&mut s)), (17, partition, "truncated"));
    assert!(closed(&mut s));

    // Every refused frame and closed connection is counted with its reason (metrics are
    // published every 250 ms).
    let want_frames = [
        ("bad_crc", 2),
        ("bad_magic", 1),
        ("bad_partition", 1),
        ("bad_version", 1),
        ("bad_kind", 1),
        ("bad_length", 1),
        ("truncated", 1),
    ];
    let mut metrics = String::new();
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        metrics = http_get(admin, "/metrics");
        if want_frames
            .iter()
            .all(|(r, n)| reason_total(&metrics, "sluice_frames_rejected_total", r) == *n)
        {
            break;
        }
    }
    for (reason, n) in want_frames {
        assert_eq!(
            reason_total(&metrics, "sluice_frames_rejected_total", reason),
            n,
            "frames rejected for {reason}"
        );
        let closes = if reason == "bad_crc" || reason == "bad_partition" {
            0
        } else {
            n
        };
        assert_eq!(
            reason_total(&metrics, "sluice_connections_closed_total", reason),
            closes,
            "connections closed for {reason}"
        );
    }
    assert_eq!(
        reason_total(&metrics, "sluice_dead_letters_total", "bad_partition"),
        1
    );
    engine.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
