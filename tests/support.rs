//! Helpers for the end-to-end tests: find the built binaries, write configs, start and stop
//! an engine, run the generator and `sluice cat`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    if *next == 0 {
        *next = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    }
    loop {
        let base = *next;
        *next += n + 1;
        if *next > 60_000 {
            *next = 20_000;
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
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n").expect("request");
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
