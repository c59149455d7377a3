//! Helpers for the end-to-end tests: find the built binaries, write configs, start and stop
//! an engine, run the generator and `sluice cat`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_protocol::ClientIp;
use sluice_workload::routes::{Facts, w1_routes};
use sluice_workload::{Workload, WorkloadGen, tables};

/// The path of a workspace binary, brought up to date (built with the test's profile) the
/// first time a test process asks for it, so that no test runs a stale binary.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/e2e-… → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        // From the workspace root, where every member's binaries are candidates.
        cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        cmd.args(["build", "--quiet", "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building {name}");
        built.push(name.to_owned());
    }
    path
}

/// A fresh folder under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let d = std::env::temp_dir().join(format!("sluice-e2e-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `n` consecutive free TCP ports on 127.0.0.1 (checked by binding them).
pub fn free_ports(n: u16) -> u16 {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Below the ephemeral range, so that no client connection of another test takes a
    // port between this check and the engine's bind.
    let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .clamp(12_000, 60_000);
    if *next == 0 {
        *next = 10_000 + (std::process::id() % 1_000) as u16 * 2;
    }
    loop {
        let base = *next;
        *next += n + 1;
        if *next + n >= top {
            *next = 10_000;
        }
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// An engine config: the embedded default's streams, routes, keys and tables, with its own
/// ports and data folder, `shards` shards and the given durability.
pub fn engine_config(dir: &Path, shards: usize, durability: &str) -> (PathBuf, u16) {
    let base = free_ports(shards as u16 + 2);
    let data = dir.join("data");
    let text = sluice_workload::fixtures::default_config()
        .replace("shards = 0 # one per core", &format!("shards = {shards}"))
        .replace(
            "shared = \"127.0.0.1:7400\"",
            &format!("shared = \"127.0.0.1:{base}\""),
        )
        .replace(
            "shard_port_base = 7401",
            &format!("shard_port_base = {}", base + 1),
        )
        .replace(
            "admin = \"127.0.0.1:9180\"",
            &format!("admin = \"127.0.0.1:{}\"", base + shards as u16 + 1),
        )
        .replace(
            "dir = \"./sluice-data\"",
            &format!("dir = {:?}", data.display().to_string()),
        )
        .replace(
            "durability = { interval_us = 1000 }",
            &format!("durability = {durability}"),
        );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    (path, base)
}

/// A running `sluice run`.
pub struct EngineProc {
    child: Child,
    pub port: u16,
    /// What it wrote to stderr up to `sluice: ready`.
    pub log: Vec<String>,
    /// Everything it wrote to stderr so far.
    all: std::sync::Arc<Mutex<Vec<String>>>,
}

impl EngineProc {
    /// Starts `sluice run --config CONFIG` and waits until it says it is ready.
    pub fn start(config: &Path, port: u16) -> EngineProc {
        Self::start_with(config, port, |_| {})
    }

    /// The same, with `setup` applied to the command first (environment, limits).
    pub fn start_with(config: &Path, port: u16, setup: impl FnOnce(&mut Command)) -> EngineProc {
        let mut cmd = Command::new(binary("sluice"));
        cmd.args(["run", "--config"])
            .arg(config)
            .stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("sluice starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let all = std::sync::Arc::new(Mutex::new(Vec::new()));
        let all_w = all.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                let ready = line.contains("sluice: ready");
                all_w.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
                if ready {
                    break;
                }
            }
            // Keep draining so the engine never blocks on a full pipe.
            for line in lines.map_while(Result::ok) {
                eprintln!("[sluice] {line}");
                all_w.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut log = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let ready = line.contains("sluice: ready");
                    log.push(line);
                    if ready {
                        return EngineProc {
                            child,
                            port,
                            log,
                            all,
                        };
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("sluice exited with {status}: {}", log.join("\n"));
                    }
                    assert!(
                        Instant::now() < deadline,
                        "sluice not ready: {}",
                        log.join("\n")
                    );
                }
            }
        }
    }

    /// Every line the engine wrote to stderr so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }

    /// The engine's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The engine's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends `sig` to the engine.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the engine to exit (after a signal sent with `signal`); it must exit 0.
    pub fn stop_waiting(mut self) {
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "sluice exited with {status}");
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "sluice exited with {status}");
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET` (or any method) `path` on the admin port: the status line's code and the body.
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    http_request(
        port,
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
    )
}

/// Sends the raw `request` to the admin port: the status line's code (0 if none came) and
/// the body.
pub fn http_request(port: u16, request: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// The sum of a metric's samples whose labels include every one of `labels`.
pub fn metric(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A `loadgen lookup-service` process, killed when dropped.
pub struct ServiceProc {
    child: Child,
    pub port: u16,
}

impl ServiceProc {
    /// Starts `loadgen lookup-service --port PORT ARGS...` and waits until `GET /healthz`
    /// answers.
    pub fn start(port: u16, args: &[&str]) -> ServiceProc {
        let child = Command::new(binary("loadgen"))
            .args(["lookup-service", "--port", &port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .expect("loadgen lookup-service starts");
        let service = ServiceProc { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
                let mut buf = [0u8; 64];
                if matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200")) {
                    return service;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the lookup service did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `loadgen run` with extra arguments and returns its JSON report.
pub fn loadgen(target: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(binary("loadgen"))
        .args(["run", "--quiet", "--target", target])
        .args(args)
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// `sluice cat PATH`: its output.
pub fn cat(path: &Path) -> Output {
    Command::new(binary("sluice"))
        .arg("cat")
        .arg(path)
        .output()
        .expect("sluice cat runs")
}

/// The records of a stream as JSON values (all segments, all shards).
pub fn stream_records(data: &Path, stream: &str) -> Vec<serde_json::Value> {
    let dir = data.join(stream);
    if !dir.exists() {
        return Vec::new();
    }
    let out = cat(&dir);
    assert!(
        out.status.success(),
        "sluice cat {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(&l.expect("utf-8")).expect("a JSON line"))
        .collect()
}

/// Reads a whole file.
pub fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .expect("read");
    v
}

/// The records the W1 route set (seed 1) implies for the first `n` events of a W1 generator
/// seeded `seed`, by stream, computed from the generator, the tables and the route specs
/// directly: no engine code. `ts_ms` is left out (the generator stamps it at send time).
pub fn expected_records(seed: u64, n: usize) -> BTreeMap<String, Vec<Value>> {
    let routes = w1_routes(1);
    let geo: HashMap<[u8; 3], tables::GeoRow> =
        tables::geo(1).into_iter().map(|g| (g.prefix, g)).collect();
    let devices = tables::devices(1);
    let customers = tables::customers(1);
    let mut generator = WorkloadGen::new(Workload::W1, seed);
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut made = 0;
    while made < n {
        let up = generator.next_upload(0);
        for e in up.events {
            made += 1;
            let ClientIp::V4(ip) = e.client_ip else {
                unreachable!("W1 is IPv4")
            };
            let g = &geo[&[ip[0], ip[1], ip[2]]];
            let d = &devices[e.device_type_id as usize - 1];
            let c = &customers[e.customer_id as usize - 1];
            let facts = Facts {
                event_id: e.event_id,
                event_type: &e.event_type,
                app_version: &e.app_version,
                country: g.country,
                platform: d.platform,
                plan: c.plan,
            };
            for r in routes.iter().filter(|r| r.emits(&facts)) {
                let mut rec = serde_json::Map::new();
                for f in &r.fields {
                    let v = match *f {
                        "ts_ms" => continue,
                        "event_id" => json!(e.event_id),
                        "event_type" => json!(e.event_type),
                        "app_version" => json!(e.app_version),
                        "device_type_id" => json!(e.device_type_id),
                        "device_id" => json!(e.device_id),
                        "customer_id" => json!(e.customer_id),
                        "client_ip" => json!(format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])),
                        "session_id" => json!(e.session_id),
                        "geo.country" => json!(g.country),
                        "geo.region" => json!(g.region),
                        "geo.asn" => json!(g.asn),
                        "device.brand" => json!(d.brand),
                        "device.model" => json!(d.model),
                        "device.platform" => json!(d.platform),
                        "device.os" => json!(d.os),
                        "customer.plan" => json!(c.plan),
                        "customer.signup_country" => json!(c.signup_country),
                        "customer.profiles" => json!(c.profiles),
                        other => panic!("unknown field {other}"),
                    };
                    rec.insert((*f).to_owned(), v);
                }
                out.entry(r.stream.to_owned())
                    .or_default()
                    .push(Value::Object(rec));
            }
            if made == n {
                break;
            }
        }
    }
    out
}

pub fn without_ts(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.shift_remove("ts_ms");
    }
    v
}

/// A Kafka broker for the tests: tansu (`scripts/setup.sh --tests` installs it) on a free port
/// of 127.0.0.1, storing in SQLite under its own folder.
pub struct Broker {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
}

/// The tansu binary: on PATH (scripts/test.sh puts ~/.cargo/bin there) or in ~/.cargo/bin.
fn tansu() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cargo"));
    let installed = home.join("bin").join("tansu");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("tansu")
}

impl Broker {
    /// Starts a broker and waits until it takes connections.
    pub fn start(tag: &str) -> Broker {
        let dir = temp_dir(&format!("tansu-{tag}"));
        let port = free_ports(1);
        let mut b = Broker {
            child: None,
            dir,
            port,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("broker log");
        let child = Command::new(tansu())
            .current_dir(&self.dir)
            .args([
                "broker",
                // A relative path: tansu 0.6.0 refuses an absolute one.
                "--storage-engine",
                "sqlite://tansu.db",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tansu starts (scripts/setup.sh --tests installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu not listening on {}: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        // SAFETY: kill sends a signal to our own child; it touches no memory of ours.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Stops the broker (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped broker must run to die.
            // SAFETY: signals to our own child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Creates topics of `partitions` partitions each, with the independent client.
    pub fn create_topics(&self, topics: &[&str], partitions: u32) {
        let specs: Vec<String> = topics.iter().map(|t| format!("{t}:{partitions}")).collect();
        let out = kafka_tool(&["create", &self.address()], &specs);
        assert!(
            out.status.success(),
            "creating topics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every message of `topics`, read whole with the independent client: `(topic, key as hex,
    /// value)`.
    pub fn messages(&self, topics: &[&str]) -> Vec<(String, Option<String>, String)> {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let out = kafka_tool(&["consume", &self.address()], &topics);
        assert!(
            out.status.success(),
            "reading topics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(&l.expect("utf-8")).expect("a JSON line");
                (
                    v["topic"].as_str().expect("topic").to_owned(),
                    v["key"].as_str().map(str::to_owned),
                    v["value"].as_str().expect("value").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `tests/kafka_tool.py` (confluent-kafka) with `args` then `rest`.
pub fn kafka_tool(args: &[&str], rest: &[String]) -> Output {
    Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/kafka_tool.py"))
        .args(args)
        .args(rest)
        .output()
        .expect("python3 runs kafka_tool.py (scripts/test.sh installs confluent-kafka)")
}

/// `config` with a Kafka sink on each of `streams` (topic: the stream's name), every stream's
/// records in JSON.
pub fn with_kafka_sinks(config: &Path, brokers: &str, streams: &[&str]) {
    // Streams with network sinks keep what the sinks have not delivered, not by retention.
    let mut text = std::fs::read_to_string(config)
        .expect("config")
        .replace("format = \"rkyv\"", "format = \"json\"")
        .replace(sluice_workload::fixtures::RETENTION, "");
    // Every other stream's shards hand their records to a producer thread: both ways are in
    // every test.
    for (i, s) in streams.iter().enumerate() {
        let producer = ["shard", "thread"][i % 2];
        text.push_str(&format!(
            "\n[[streams.{s}.sink]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\nlinger_ms = 5\n\
             producer = \"{producer}\"\n"
        ));
    }
    std::fs::write(config, text).expect("config written");
}

/// `config` with a Kafka consumer-group source reading `topic` in group `group`, and `extra`
/// source settings (TOML lines).
pub fn with_kafka_source(config: &Path, brokers: &str, topic: &str, group: &str, extra: &str) {
    let mut text = std::fs::read_to_string(config).expect("config");
    text.push_str(&format!(
        "\n[[source]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\
         group_id = \"{group}\"\n{extra}\n"
    ));
    std::fs::write(config, text).expect("config written");
}
