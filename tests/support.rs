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
}

impl EngineProc {
    /// Starts `sluice run --config CONFIG` and waits until it says it is ready.
    pub fn start(config: &Path, port: u16) -> EngineProc {
        let mut child = Command::new(binary("sluice"))
            .args(["run", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                let ready = line.contains("sluice: ready");
                let _ = tx.send(line);
                if ready {
                    break;
                }
            }
            // Keep draining so the engine never blocks on a full pipe.
            for line in lines.map_while(Result::ok) {
                eprintln!("[sluice] {line}");
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
                        return EngineProc { child, port };
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
