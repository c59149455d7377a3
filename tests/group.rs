//! Scale-out on Kafka: `sluice` processes in one consumer group split an input topic that
//! `loadgen run --kafka` fills, against a real broker (tansu). Every test's name says group:
//! `cargo test group` runs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_e2e::{
    Broker, EngineProc, engine_config, expected_records, http, kafka_tool, loadgen, metric,
    stream_records, temp_dir, with_kafka_source, without_ts,
};
use sluice_workload::routes::STREAMS;

/// One group test at a time: each runs a broker, a generator and one or two engines.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const TOPIC: &str = "in";

/// An engine (2 shards) consuming TOPIC in `group`: its data dir, config and port.
fn member(tag: &str, broker: &Broker, group: &str, extra: &str) -> (PathBuf, PathBuf, u16) {
    let dir = temp_dir(&format!("group-{tag}"));
    let (config, port) = engine_config(&dir, 2, "{ interval_us = 1000 }");
    with_kafka_source(&config, &broker.address(), TOPIC, group, extra);
    (dir, config, port)
}

fn metrics(admin: u16) -> String {
    let (code, m) = http(admin, "GET", "/metrics");
    assert_eq!(code, 200);
    m
}

/// Waits until `cond` holds for the engines' metrics (at their admin ports), for at most
/// `limit`; returns them.
fn wait_for(
    admins: &[u16],
    limit: Duration,
    what: &str,
    cond: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let m: Vec<String> = admins.iter().map(|a| metrics(*a)).collect();
        if cond(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}:\n{}",
            m.iter()
                .flat_map(|m| m.lines().filter(|l| l.starts_with("sluice_source_")))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assigned(m: &str) -> u64 {
    metric(m, "sluice_source_assigned_partitions", &[])
}

fn consumed(m: &str) -> u64 {
    metric(m, "sluice_source_messages_total", &[])
}

/// What `group` committed for TOPIC, read from the broker by the independent client: the
/// total, and by partition.
fn group_committed(broker: &Broker, group: &str) -> (u64, BTreeMap<String, u64>) {
    let out = kafka_tool(&["committed", &broker.address(), group, TOPIC], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let parts = v["partitions"]
        .as_object()
        .expect("partitions")
        .iter()
        .map(|(p, o)| (p.clone(), o.as_u64().expect("an offset")))
        .collect();
    (v["total"].as_u64().expect("total"), parts)
}

/// Waits until `group` committed `total` messages of TOPIC, for at most `limit`.
fn wait_committed(
    broker: &Broker,
    group: &str,
    total: u64,
    limit: Duration,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + limit;
    loop {
        let (t, parts) = group_committed(broker, group);
        if t >= total {
            assert_eq!(t, total, "committed past what was produced: {parts:?}");
            return parts;
        }
        assert!(
            Instant::now() < deadline,
            "{group} committed {t} of {total} in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Produces `events` W1 events of `seed` to TOPIC at `rate` with the generator.
fn produce(broker: &Broker, events: u64, seed: u64, rate: u64) -> Value {
    let report = loadgen(
        "unused:0",
        &[
            "--kafka",
            &broker.address(),
            "--topic",
            TOPIC,
            "--events",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
            "--rate",
            &rate.to_string(),
        ],
    );
    assert_eq!(report["events_acked"], json!(events), "{report}");
    report
}

/// Checks that every record `expected` holds is in the segments of `data` dirs together, at
/// least once, and nothing else; returns the duplicates.
fn check_records(data: &[&Path], expected: &BTreeMap<String, Vec<Value>>) -> usize {
    check_records_but(data, expected, &[])
}

/// [`check_records`] but for the streams in `skip`.
fn check_records_but(
    data: &[&Path],
    expected: &BTreeMap<String, Vec<Value>>,
    skip: &[&str],
) -> usize {
    let mut dups = 0;
    for &stream in STREAMS.iter().filter(|s| !skip.contains(*s)) {
        let mut got: BTreeMap<String, i64> = BTreeMap::new();
        for d in data {
            for r in stream_records(d, stream) {
                *got.entry(without_ts(r).to_string()).or_default() += 1;
            }
        }
        for r in expected.get(stream).into_iter().flatten() {
            let k = without_ts(r.clone()).to_string();
            let n = got.entry(k.clone()).or_default();
            assert!(*n > 0, "missing from {stream}: {k}");
            *n -= 1;
        }
        let unknown: Vec<_> = got.iter().filter(|(_, n)| **n < 0).take(3).collect();
        assert!(unknown.is_empty(), "{stream}: {unknown:?}");
        dups += got.values().sum::<i64>() as usize;
    }
    dups
}

fn data(dir: &Path) -> PathBuf {
    dir.join("data")
}

#[test]
fn group_two_processes_split_a_12_partition_topic_and_lose_nothing() {
    let _serial = serial();
    const EVENTS: u64 = 20_000;
    let broker = Broker::start("group-split");
    broker.create_topics(&[TOPIC], 12);
    let (dir_a, config_a, port_a) = member("split-a", &broker, "split", "");
    let (dir_b, config_b, port_b) = member("split-b", &broker, "split", "");
    let a = EngineProc::start(&config_a, port_a);
    let b = EngineProc::start(&config_b, port_b);
    let admins = [port_a + 3, port_b + 3];
    let m = wait_for(&admins, Duration::from_secs(60), "the group splits", |m| {
        assigned(&m[0]) > 0 && assigned(&m[1]) > 0 && assigned(&m[0]) + assigned(&m[1]) == 12
    });
    eprintln!(
        "group: partitions split {} / {}",
        assigned(&m[0]),
        assigned(&m[1])
    );
    produce(&broker, EVENTS, 41, 10_000);
    wait_committed(&broker, "split", EVENTS, Duration::from_secs(90));
    let m: Vec<String> = admins.iter().map(|a| metrics(*a)).collect();
    let (ca, cb) = (consumed(&m[0]), consumed(&m[1]));
    assert!(ca > 0 && cb > 0, "both consumed: {ca} / {cb}");
    assert_eq!(ca + cb, EVENTS, "each message consumed once");
    a.stop();
    b.stop();
    let dups = check_records(
        &[&data(&dir_a), &data(&dir_b)],
        &expected_records(41, EVENTS as usize),
    );
    eprintln!("group: {ca} + {cb} messages, {dups} duplicate records");
    assert_eq!(dups, 0, "no failure, no duplicate");
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

/// kill -9 of one of two processes mid-run. tansu 0.6.0 does not hand a dead member's
/// partitions to the others: when the member misses its session timeout the broker drops it
/// but keeps the group's generation, so the survivors get their own assignment back and the
/// dead member's partitions stay unread (seen with confluent-kafka alike; tuning.md,
/// `[[source]]`). They move once the group forms again, when a member joins: here the killed
/// process is started again after the session timeout, as a supervisor would. Its partitions
/// resume from their committed offsets; nothing is missing, and what it had taken but not
/// committed is read again.
#[test]
fn group_a_killed_process_s_partitions_resume_from_their_committed_offsets() {
    let _serial = serial();
    const EVENTS: u64 = 40_000;
    const RATE: u64 = 8_000;
    const SESSION_MS: u64 = 6_000;
    let broker = Broker::start("group-kill");
    broker.create_topics(&[TOPIC], 12);
    let extra = format!("session_timeout_ms = {SESSION_MS}\ncommit_interval_ms = 200");
    let (dir_a, config_a, port_a) = member("kill-a", &broker, "kill", &extra);
    let (dir_b, config_b, port_b) = member("kill-b", &broker, "kill", &extra);
    let a = EngineProc::start(&config_a, port_a);
    let b = EngineProc::start(&config_b, port_b);
    let admins = [port_a + 3, port_b + 3];
    wait_for(&admins, Duration::from_secs(60), "the group splits", |m| {
        assigned(&m[0]) > 0 && assigned(&m[1]) > 0 && assigned(&m[0]) + assigned(&m[1]) == 12
    });
    let brokers = broker.address();
    let load = std::thread::spawn(move || {
        loadgen(
            "unused:0",
            &[
                "--kafka",
                &brokers,
                "--topic",
                TOPIC,
                "--events",
                &EVENTS.to_string(),
                "--seed",
                "43",
                "--rate",
                &RATE.to_string(),
            ],
        )
    });
    // Mid-run, once A has taken some.
    wait_for(&admins[..1], Duration::from_secs(60), "A consumes", |m| {
        consumed(&m[0]) > 4_000
    });
    let before = metrics(admins[0]);
    a.signal(libc::SIGKILL);
    drop(a);
    // The broker drops the dead member after its session timeout; then A starts again.
    std::thread::sleep(Duration::from_millis(SESSION_MS + 2_000));
    // With tansu 0.6.0 the survivor sometimes has them by now, and mostly not.
    let survivor = assigned(&metrics(admins[1]));
    let a = EngineProc::start(&config_a, port_a);
    let started = Instant::now();
    let m = wait_for(
        &admins,
        Duration::from_secs(60),
        "the group forms again",
        |m| assigned(&m[0]) > 0 && assigned(&m[0]) + assigned(&m[1]) == 12,
    );
    let formed = started.elapsed();
    eprintln!(
        "group: {} s after the kill the survivor had {survivor} partitions; the restarted \
         process had {} partitions, the other {}, {:.1} s after it started",
        (SESSION_MS + 2_000) / 1000,
        assigned(&m[0]),
        assigned(&m[1]),
        formed.as_secs_f64()
    );
    let report = load.join().expect("the generator");
    assert_eq!(report["events_acked"], json!(EVENTS));
    wait_committed(&broker, "kill", EVENTS, Duration::from_secs(120));
    let m: Vec<String> = admins.iter().map(|a| metrics(*a)).collect();
    a.stop();
    b.stop();
    let dups = check_records(
        &[&data(&dir_a), &data(&dir_b)],
        &expected_records(43, EVENTS as usize),
    );
    let read = consumed(&before) + consumed(&m[0]) + consumed(&m[1]);
    eprintln!(
        "group: A consumed {} by its last scrape before the kill, then {} after its restart, \
         B {}: {} messages read again at least; {dups} duplicate records",
        consumed(&before),
        consumed(&m[0]),
        consumed(&m[1]),
        read.saturating_sub(EVENTS)
    );
    // What A had consumed but not committed is read again: what it took in its last commit
    // interval (200 ms) and the rounds in flight when it died, which its shards' budgets
    // bound. Two seconds of its share bound that here (about a second was measured); W1
    // routes about 3.4 records an event, A's share is half the rate.
    let bound = (RATE / 2) as usize * 2 * 4;
    assert!(
        dups <= bound,
        "{dups} duplicates, more than two seconds of A's share ({bound})"
    );
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

#[test]
fn group_a_restart_resumes_from_committed_offsets_without_reading_again() {
    let _serial = serial();
    let broker = Broker::start("group-restart");
    broker.create_topics(&[TOPIC], 12);
    let (dir, config, port) = member("restart", &broker, "restart", "");
    let admin = [port + 3];
    let engine = EngineProc::start(&config, port);
    produce(&broker, 5_000, 51, 10_000);
    wait_committed(&broker, "restart", 5_000, Duration::from_secs(60));
    engine.stop();
    let engine = EngineProc::start(&config, port);
    produce(&broker, 3_000, 52, 10_000);
    wait_committed(&broker, "restart", 8_000, Duration::from_secs(60));
    let m = metrics(admin[0]);
    assert_eq!(
        consumed(&m),
        3_000,
        "after the restart, only the new messages"
    );
    engine.stop();
    let mut expected = expected_records(51, 5_000);
    for (s, r) in expected_records(52, 3_000) {
        expected.entry(s).or_default().extend(r);
    }
    assert_eq!(check_records(&[&data(&dir)], &expected), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn group_a_bad_message_is_dead_lettered_with_its_coordinates_and_its_partition_flows() {
    let _serial = serial();
    let broker = Broker::start("group-bad");
    broker.create_topics(&[TOPIC], 12);
    let (dir, config, port) = member("bad", &broker, "bad", "");
    let engine = EngineProc::start(&config, port);
    // Partition 0: garbage, then an envelope sealed under key 99, which no one has; the
    // generator's messages follow in every partition.
    let mut unknown = vec![1u8, 1, 1, 0, 99, 0, 0, 0];
    unknown.extend([0u8; 12]);
    unknown.extend(16u32.to_le_bytes());
    unknown.extend(9u64.to_le_bytes());
    unknown.extend([0xab; 32]);
    let specs = [
        format!("{}:{}", hex(&5u64.to_be_bytes()), hex(b"not an envelope")),
        format!("{}:{}", hex(&9u64.to_be_bytes()), hex(&unknown)),
    ];
    let out = kafka_tool(&["produce", &broker.address(), TOPIC], &specs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    produce(&broker, 2_000, 53, 10_000);
    let parts = wait_committed(&broker, "bad", 2_002, Duration::from_secs(60));
    assert!(
        parts["0"] >= 3,
        "partition 0 flows past its bad messages: {parts:?}"
    );
    engine.stop();
    let dead = stream_records(&data(&dir), "dead-letter");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let by_offset: BTreeMap<i64, &Value> = dead
        .iter()
        .map(|d| (d["source"]["offset"].as_i64().expect("an offset"), d))
        .collect();
    assert_eq!(by_offset[&0]["reason"], json!("truncated"));
    assert_eq!(by_offset[&0]["partition_key"], json!(5));
    assert_eq!(by_offset[&1]["reason"], json!("unknown_key"));
    assert_eq!(by_offset[&1]["key_id"], json!(99));
    for d in &dead {
        assert_eq!(d["source"]["topic"], json!(TOPIC));
        assert_eq!(d["source"]["partition"], json!(0));
    }
    assert_eq!(
        check_records(&[&data(&dir)], &expected_records(53, 2_000)),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `block` sink whose broker stops holds its shards; the source pauses the fetching (and
/// counts the time) instead of reading on into memory, and once the broker resumes, fetching
/// resumes and every event arrives.
#[test]
fn group_fetching_pauses_while_the_shards_are_held_and_resumes_after() {
    let _serial = serial();
    // About 27,000 playback records, some 4 MiB a shard: past the 2 MiB backlog.
    const EVENTS: u64 = 120_000;
    let broker = Broker::start("group-pause");
    broker.create_topics(&[TOPIC], 4);
    let sink = Broker::start("group-pause-sink");
    sink.create_topics(&["playback"], 2);
    let (dir, config, port) = member("pause", &broker, "pause", "");
    // playback (about a fifth of W1's records) to the sink broker, with a backlog of two
    // 1 MiB segments: once that broker stops, both shards are held.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "segment_bytes_max = 268435456",
            "segment_bytes_max = 1048576",
        )
        .replace(sluice_workload::fixtures::RETENTION, "");
    let text = format!(
        "{text}\n[[streams.playback.sink]]\nkind = \"kafka\"\nbrokers = \"{}\"\n\
         backlog_bytes_max = 2097152\nwhen_full = \"block\"\n",
        sink.address()
    );
    std::fs::write(&config, text).unwrap();
    let engine = EngineProc::start(&config, port);
    let admin = [port + 3];
    sink.signal(libc::SIGSTOP);
    produce(&broker, EVENTS, 57, 20_000);
    let held = wait_for(
        &admin,
        Duration::from_secs(60),
        "the fetching pauses",
        |m| {
            metric(&m[0], "sluice_sink_blocking", &[]) > 0
                && metric(&m[0], "sluice_source_paused_seconds_total", &[]) >= 2
        },
    );
    let consumed_held = consumed(&held[0]);
    let lag = metric(&held[0], "sluice_source_lag_messages", &[]);
    assert!(
        consumed_held < EVENTS,
        "the source stopped short: {consumed_held}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let still = consumed(&metrics(admin[0]));
    assert!(
        still < EVENTS && still - consumed_held <= 4096,
        "at most what was fetched before the pause is dealt while the shards are held: \
         {consumed_held} then {still}"
    );
    sink.signal(libc::SIGCONT);
    wait_committed(&broker, "pause", EVENTS, Duration::from_secs(120));
    let m = metrics(admin[0]);
    eprintln!(
        "group: held at {consumed_held} of {EVENTS} messages (lag {lag}), paused {} s; after \
         the sink's broker resumed, all {} consumed",
        metric(&m, "sluice_source_paused_seconds_total", &[]),
        consumed(&m)
    );
    engine.stop();
    // playback's delivered segments are deleted: the other streams are checked.
    assert_eq!(
        check_records_but(
            &[&data(&dir)],
            &expected_records(57, EVENTS as usize),
            &["playback"]
        ),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
