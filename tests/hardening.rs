//! The server under hostile and unlucky conditions, with the real binaries: crashes at the
//! worst moment, descriptor limits, slow and idle clients, SIGTERM under load, a hostile
//! admin client, bad key files, full disks.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_e2e::{
    EngineProc, binary, cat, engine_config, http, loadgen, metric, stream_records, temp_dir,
};
use sluice_protocol::frame::{ACK_FRAME_BYTES, FRAME_HEADER_BYTES};
use sluice_protocol::{Ack, AckStatus, encode_hello};
use sluice_workload::routes::STREAMS;

/// An engine config (`engine_config`) with `[shard]` settings added.
fn config_with_shard(dir: &Path, shards: usize, shard: &str) -> (PathBuf, u16) {
    let (config, port) = engine_config(dir, shards, "{ interval_us = 1000 }");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[shard]\n{shard}\n"));
    std::fs::write(&config, text).unwrap();
    (config, port)
}

/// Sets the config's segments to 1 MiB, so that a run rotates often.
fn one_mib_segments(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "segment_bytes_max = 268435456",
        "segment_bytes_max = 1048576",
    );
    std::fs::write(config, text).unwrap();
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hello on a new connection to `addr`, answered by a hello reply.
fn hello_works(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))
    else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut head = [0u8; FRAME_HEADER_BYTES];
    s.write_all(&encode_hello()).is_ok() && s.read_exact(&mut head).is_ok() && head[5] == 4
}

/// What the engine sent on `s` until it closed: the bytes, and whether it ended in a clean
/// close (EOF) rather than a reset or a timeout.
fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Records in all the W1 streams' segments (`sluice cat` must read every one).
fn records(data: &Path) -> usize {
    STREAMS.iter().map(|s| stream_records(data, s).len()).sum()
}

/// Segment files shorter than a segment header.
fn short_segments(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for s in STREAMS {
        for e in std::fs::read_dir(data.join(s))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.metadata().is_ok_and(|m| m.len() < 32) {
                out.push(e.path());
            }
        }
    }
    out
}

/// `sluice run` with `SLUICE_CRASH_AT=point`, and `loadgen run ARGS` against it while it
/// lives when `load` is given: once the engine died by SIGKILL, the generator's report and
/// what the engine wrote to stderr.
fn run_until_crash(
    config: &Path,
    port: u16,
    point: &str,
    load: Option<&[&str]>,
) -> (Option<Value>, String) {
    let log = config.with_extension("crash.log");
    let mut child = Command::new(binary("sluice"))
        .args(["run", "--config"])
        .arg(config)
        .env("SLUICE_CRASH_AT", point)
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("sluice starts");
    let report = load.map(|args| {
        // Wait for the shared port, then load it until the engine dies.
        let target = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(&target).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sluice never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = Command::new(binary("loadgen"))
            .args(["run", "--quiet", "--target", &target])
            .args(args)
            .output()
            .expect("loadgen runs");
        serde_json::from_slice(&out.stdout).expect("a report, even when the engine died")
    });
    let status = child.wait().expect("wait");
    let log = std::fs::read_to_string(&log).expect("the log");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed at {point}: {status}: {log}"
    );
    (report, log)
}

/// PROTOCOL.md / DESIGN.md: a crash between creating a segment and writing its first block
/// leaves a file shorter than a header. `sluice cat` skips it with a note and reads every
/// segment after it; the engine removes it at start and says so. Both kill points: the
/// first segment at start-up, and a rotation under load (1 MiB segments).
#[test]
fn a_crash_while_a_segment_is_created_leaves_an_empty_segment_that_readers_skip() {
    let dir = temp_dir("empty-segment");
    let (config, port) = engine_config(&dir, 2, "\"every_batch\"");
    one_mib_segments(&config);
    let data = dir.join("data");

    let engine = EngineProc::start(&config, port);
    let r = loadgen(&engine.target(), &["--events", "20000", "--seed", "21"]);
    assert_eq!(r["events_acked"], 20000);
    engine.stop();
    let first = records(&data);
    assert!(first > 20000, "{first} records");

    // At start-up: the first segment created.
    run_until_crash(&config, port, "segment_created:1", None);
    // Both shards create at once, so the kill may find more than one file just created.
    let empty = short_segments(&data);
    assert!(!empty.is_empty(), "a file left empty");
    let out = cat(empty[0].parent().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("empty segment"), "{stderr}");
    assert_eq!(
        records(&data),
        first,
        "every record is read past the empty segment"
    );

    // At a rotation under load: start-up creates two segments per stream and shard (the
    // current and the next, prepared), so the 60th create is a rotation's.
    let (r, log) = run_until_crash(
        &config,
        port,
        "segment_created:60",
        Some(&["--rate", "max", "--duration", "20", "--seed", "22"]),
    );
    let r = r.unwrap();
    let acked = r["events_acked"].as_u64().unwrap();
    assert!(acked > 0, "{r}");
    // The engine removed the first kill's files when it started; this kill left its own.
    let first_empty = empty;
    let empty = short_segments(&data);
    assert!(!empty.is_empty(), "a file left empty");
    for p in &first_empty {
        let line = format!("removed empty segment {}", p.display());
        assert!(log.contains(&line), "removed at start: {log}");
    }
    eprintln!("killed at a rotation with {acked} events acked");
    let second = records(&data);
    assert!(second > first, "the second run's records are read too");

    // A restart removes both, says so, and loses no record.
    let engine = EngineProc::start(&config, port);
    let removed: Vec<_> = engine
        .log
        .iter()
        .filter(|l| l.contains("removed empty segment"))
        .collect();
    assert_eq!(removed.len(), empty.len(), "{:?}", engine.log);
    engine.stop();
    assert!(short_segments(&data).is_empty());
    assert_eq!(records(&data), second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Key files: no error ever shows key material (a line with key and id swapped names the
/// line and what is wrong); a file group or others may read is refused with its mode and the
/// fix, as ssh does; `loadgen fixtures` writes `keys.txt` as 0600.
#[test]
fn key_files_are_private_and_their_errors_never_show_a_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("keys");
    let out = Command::new(binary("loadgen"))
        .args(["fixtures", "--workload", "w1", "--out"])
        .arg(&dir)
        .output()
        .expect("loadgen fixtures");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = dir.join("keys.txt");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&keys), 0o600, "fixtures write keys.txt private");
    let config = dir.join("sluice.toml");
    let sluice = |cmd: &str| {
        let out = Command::new(binary("sluice"))
            .args([cmd, "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .output()
            .expect("sluice runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(sluice("check").0);

    for m in [0o644, 0o666] {
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(m)).unwrap();
        for cmd in ["check", "run"] {
            let (ok, err) = sluice(cmd);
            assert!(!ok, "sluice {cmd} takes a {m:o} key file");
            assert!(err.contains(&format!("mode {m:04o}")), "{err}");
            assert!(err.contains("chmod 600"), "{err}");
        }
    }
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();

    let text = std::fs::read_to_string(&keys).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("3 "))
        .unwrap()
        .to_owned();
    let key = line.split_whitespace().nth(1).unwrap().to_owned();
    let lineno = text.lines().position(|l| l == line).unwrap() + 1;
    std::fs::write(&keys, text.replace(&line, &format!("{key} 3"))).unwrap();
    let (ok, err) = sluice("check");
    assert!(!ok);
    assert!(
        err.contains(&format!("keys.txt:{lineno}:")),
        "names the line: {err}"
    );
    assert!(err.contains("`ID KEY`"), "says what is wrong: {err}");
    assert!(!err.contains(&key[..16]), "no key material: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 1: with RLIMIT_NOFILE at 256, 300 connections exhaust the engine's descriptors. It
/// warns at start that the limit is below what the config needs; the failing accepts are
/// counted, logged once, and reported by `GET /healthz` (503 with the reason) while they
/// last; once the connections close, both listeners accept again and `/healthz` is 200.
#[test]
fn running_out_of_descriptors_is_survived_counted_and_reported() {
    let dir = temp_dir("nofile");
    let (config, port) = config_with_shard(&dir, 2, "connections_max = 4096");
    let admin = port + 3;
    let engine = EngineProc::start_with(&config, port, |cmd| nofile(cmd, 256));
    assert!(
        engine
            .log
            .iter()
            .any(|l| l.contains("RLIMIT_NOFILE is 256")),
        "warns at start: {:?}",
        engine.log
    );
    let own = format!("127.0.0.1:{}", port + 1);
    let mut conns = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect_timeout(&own.parse().unwrap(), Duration::from_millis(500))
        {
            conns.push(s);
        }
    }
    let body = wait_for(10, "/healthz to fail", || {
        let (code, body) = http(admin, "GET", "/healthz");
        (code == 503).then_some(body)
    });
    assert!(body.contains("EMFILE") && body.contains(&own), "{body}");
    let metrics = http(admin, "GET", "/metrics").1;
    assert!(
        metric(
            &metrics,
            "sluice_accept_errors_total",
            &["error=\"EMFILE\""]
        ) > 0
    );
    assert!(metric(&metrics, "sluice_listeners_down", &["shard=\"0\""]) >= 1);

    drop(conns);
    wait_for(20, "shard 0's port to accept again", || {
        hello_works(&own).then_some(())
    });
    wait_for(20, "the shared port to accept again", || {
        hello_works(&engine.target()).then_some(())
    });
    wait_for(5, "/healthz to be 200", || {
        (http(admin, "GET", "/healthz").0 == 200).then_some(())
    });
    let r = loadgen(&engine.target(), &["--events", "5000"]);
    assert_eq!(r["events_acked"], 5000);
    let log = engine.log_lines();
    let fails = log
        .iter()
        .filter(|l| l.contains(&format!("accept on {own} fails")))
        .count();
    // Once per change of state: a descriptor freed now and then (an admin request's) lets
    // one accept through, which is a change too; never once per failed accept.
    let failed = metric(
        &metrics,
        "sluice_accept_errors_total",
        &["error=\"EMFILE\""],
    );
    assert!(
        (1..=10).contains(&fails),
        "logged once per change of state: {log:?}"
    );
    assert!(
        failed as usize >= fails,
        "{failed} failed accepts, {fails} lines"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("accepting on {own} again"))),
        "{log:?}"
    );
    engine.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the engine under RLIMIT_NOFILE `n` (soft and hard).
fn nofile(cmd: &mut std::process::Command, n: u64) {
    // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Item 1: past `connections_max` a connection gets an overloaded ack (seq 0, partition 0)
/// and a clean close, counted; once one closes, the next is served.
#[test]
fn connections_past_the_cap_are_refused_with_an_overloaded_ack() {
    let dir = temp_dir("cap");
    let (config, port) = config_with_shard(&dir, 2, "connections_max = 20");
    let engine = EngineProc::start(&config, port);
    let own = format!("127.0.0.1:{}", port + 1);
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&own).unwrap();
            s.write_all(&encode_hello()).unwrap();
            let mut head = [0u8; FRAME_HEADER_BYTES];
            s.read_exact(&mut head).unwrap();
            let len = u32::from_le_bytes(head[24..28].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; len - FRAME_HEADER_BYTES];
            s.read_exact(&mut rest).unwrap();
            s
        })
        .collect();
    let mut extra = TcpStream::connect(&own).unwrap();
    let (got, clean) = read_to_close(&mut extra, Duration::from_secs(5));
    assert!(clean, "closed, not reset");
    assert_eq!(got.len(), ACK_FRAME_BYTES);
    let ack = Ack::decode(&got).unwrap();
    assert_eq!(
        (ack.seq, ack.partition, ack.status),
        (0, 0, AckStatus::Overloaded)
    );
    held.pop();
    wait_for(5, "a free place", || hello_works(&own).then_some(()));
    let metrics = wait_for(5, "the refusal counted", || {
        let m = http(port + 3, "GET", "/metrics").1;
        (metric(&m, "sluice_connections_refused_total", &["shard=\"0\""]) >= 1).then_some(m)
    });
    assert_eq!(metric(&metrics, "sluice_connections", &["shard=\"0\""]), 19);
    drop(held);
    engine.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 1: without `shard.connections_max`, a shard serves as many connections as the
/// descriptor limit fits (4,096 when it fits them): past that a client is refused with an
/// overloaded ack, never an accept failing with EMFILE, and the engine stays healthy.
#[test]
fn the_default_cap_fits_the_descriptor_limit() {
    let dir = temp_dir("fits");
    let (config, port) = config_with_shard(&dir, 2, "");
    let engine = EngineProc::start_with(&config, port, |cmd| nofile(cmd, 256));
    let line = engine
        .log
        .iter()
        .find(|l| l.contains("RLIMIT_NOFILE is 256"))
        .unwrap_or_else(|| panic!("says so at start: {:?}", engine.log));
    eprintln!("{line}");
    let fits: usize = line
        .split("serves at most ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("names the cap: {line}"));
    assert!((16..128).contains(&fits), "{line}");
    let own = format!("127.0.0.1:{}", port + 1);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..fits + 20 {
        let mut s = TcpStream::connect(&own).unwrap();
        s.write_all(&encode_hello()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; FRAME_HEADER_BYTES];
        s.read_exact(&mut head).unwrap();
        if head[5] == 2 {
            // An ack, not the hello reply: refused.
            let mut rest = vec![0u8; ACK_FRAME_BYTES - FRAME_HEADER_BYTES];
            s.read_exact(&mut rest).unwrap();
            let mut got = head.to_vec();
            got.extend_from_slice(&rest);
            let ack = Ack::decode(&got).unwrap();
            assert_eq!(ack.status, AckStatus::Overloaded);
            refused += 1;
            continue;
        }
        let len = u32::from_le_bytes(head[24..28].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len - FRAME_HEADER_BYTES];
        s.read_exact(&mut rest).unwrap();
        held.push(s);
    }
    assert_eq!((held.len(), refused), (fits, 20));
    let (code, body) = http(port + 3, "GET", "/healthz");
    assert_eq!(code, 200, "{body}");
    let metrics = wait_for(5, "the refusals counted", || {
        let m = http(port + 3, "GET", "/metrics").1;
        (metric(&m, "sluice_connections_refused_total", &["shard=\"0\""]) == 20).then_some(m)
    });
    assert_eq!(metric(&metrics, "sluice_accept_errors_total", &[]), 0);
    drop(held);
    engine.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the engine sent on each of `conns` until it closed them (as `read_to_close`), read
/// from all at once, as a client that keeps reading does, for at most `timeout` in all.
fn read_all_to_close(conns: &mut [TcpStream], timeout: Duration) -> Vec<(Vec<u8>, bool)> {
    let mut out: Vec<(Vec<u8>, Option<bool>)> = conns.iter().map(|_| (Vec::new(), None)).collect();
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 1 << 16];
    for s in conns.iter() {
        s.set_nonblocking(true).unwrap();
    }
    while out.iter().any(|(_, end)| end.is_none()) && Instant::now() < deadline {
        let mut idle = true;
        for (s, (got, end)) in conns.iter_mut().zip(&mut out) {
            if end.is_some() {
                continue;
            }
            match s.read(&mut buf) {
                Ok(0) => *end = Some(true),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    idle = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => *end = Some(false),
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    out.into_iter()
        .map(|(g, e)| (g, e.unwrap_or(false)))
        .collect()
}

/// A batch frame header promising `len` bytes (magic, version, kind 1, seq, partition).
fn batch_header(seq: u64, partition: u32, len: u32) -> [u8; FRAME_HEADER_BYTES] {
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[0..4].copy_from_slice(b"SLCF");
    h[4] = 1;
    h[5] = 1;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&partition.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h
}

/// Item 2: memory is bounded by the config. 400 connections each sending a 4 MiB frame but
/// its last 64 bytes: a frame is charged to the in-flight budget from its header on, so RSS
/// grows by at most the shards' budgets and receive buffers; 4,000 idle connections cost
/// little; and both come back once the connections close. Slow frames and silent
/// connections are closed on time (`frame_timeout_ms`, `idle_timeout_ms`).
#[test]
fn memory_is_bounded_by_the_config_and_slow_connections_are_closed() {
    let dir = temp_dir("memory");
    let (config, port) = config_with_shard(
        &dir,
        2,
        "connections_max = 4096\nframe_timeout_ms = 3000\nidle_timeout_ms = 8000",
    );
    let engine = EngineProc::start(&config, port);
    let admin = port + 3;
    let base = engine.rss_bytes();
    // The bound the defaults give: per shard the in-flight budget (64 MiB) and a receive
    // buffer (128 KiB) per connection, plus room for the rest of the process.
    let shards = 2u64;
    let bound = |conns: u64| shards * (64 << 20) + conns * (128 << 10) + (48 << 20);

    // 400 connections, each sending all but the last 64 bytes of a 4 MiB frame, as fast as
    // the engine reads (non-blocking writes, round robin).
    const FRAME: usize = 4 << 20;
    let addrs = [port + 1, port + 2];
    let mut conns: Vec<(TcpStream, usize)> = (0..400)
        .map(|i| {
            let s = TcpStream::connect(("127.0.0.1", addrs[i % 2])).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, 0)
        })
        .collect();
    let mut body = vec![0u8; FRAME - 64];
    let mut peak = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        for (i, (s, sent)) in conns.iter_mut().enumerate() {
            if *sent == 0 {
                body[..FRAME_HEADER_BYTES].copy_from_slice(&batch_header(
                    i as u64,
                    (i % 2) as u32,
                    FRAME as u32,
                ));
            }
            if *sent < body.len()
                && let Ok(n) = s.write(&body[*sent..])
            {
                *sent += n;
            }
        }
        peak = peak.max(engine.rss_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = http(admin, "GET", "/metrics").1;
    let inflight = metric(&metrics, "sluice_inflight_bytes", &[]);
    assert!(inflight > 0, "partial frames are charged");
    assert!(
        inflight <= shards * (64 << 20),
        "within the budget: {inflight}"
    );
    let grew = peak.saturating_sub(base);
    eprintln!(
        "400 x (4 MiB - 64): RSS {} MB -> peak {} MB (+{} MB; bound +{} MB), inflight {} MB",
        base >> 20,
        peak >> 20,
        grew >> 20,
        bound(400) >> 20,
        inflight >> 20
    );
    assert!(grew < bound(400), "RSS grew {} MB", grew >> 20);
    // Their frames never complete: each is answered `truncated` and closed at the frame
    // timeout, 3 s after its first byte (those still waiting for the budget too).
    let t0 = Instant::now();
    let mut socks: Vec<TcpStream> = conns.into_iter().map(|(s, _)| s).collect();
    // Each is closed; the engine drains what a client still has in flight for a second
    // before it closes, so a client with megabytes unsent (and a machine this busy) may see
    // a reset instead of its answer: count them.
    let (mut answered, mut clean_closes) = (0, 0);
    for (got, clean) in read_all_to_close(&mut socks, Duration::from_secs(30)) {
        if got.len() >= ACK_FRAME_BYTES {
            let ack = Ack::decode(&got[..ACK_FRAME_BYTES]).unwrap();
            assert_eq!(ack.status, AckStatus::Rejected);
            assert_eq!(
                sluice_protocol::Error::name_of_code(ack.error),
                Some("truncated")
            );
            answered += 1;
        }
        clean_closes += usize::from(clean);
    }
    let m = http(admin, "GET", "/metrics").1;
    eprintln!(
        "400 slow frames: {answered} answered, {clean_closes} closed cleanly; timed out: {} frame, {} idle",
        metric(
            &m,
            "sluice_connections_timed_out_total",
            &["reason=\"frame\""]
        ),
        metric(
            &m,
            "sluice_connections_timed_out_total",
            &["reason=\"idle\""]
        )
    );
    let took = t0.elapsed();
    eprintln!("400 slow frames closed after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "at the frame timeout: {took:?}"
    );
    drop(socks);
    let after_partial = wait_for(10, "memory back", || {
        let rss = engine.rss_bytes();
        (rss < base + (32 << 20)).then_some(rss)
    });

    wait_for(20, "the slow ones gone", || {
        let m = http(admin, "GET", "/metrics").1;
        (metric(&m, "sluice_connections", &[]) == 0).then_some(())
    });
    // 4,000 idle connections, then closed.
    let idle: Vec<TcpStream> = (0..4000)
        .map(|i| TcpStream::connect(("127.0.0.1", addrs[i % 2])).unwrap())
        .collect();
    let opened = Instant::now();
    wait_for(30, "4,000 connections", || {
        let m = http(admin, "GET", "/metrics").1;
        (metric(&m, "sluice_connections", &[]) == 4000).then_some(())
    });
    let rss_idle = engine.rss_bytes();
    eprintln!(
        "4,000 idle connections: RSS {} MB -> {} MB",
        after_partial >> 20,
        rss_idle >> 20
    );
    assert!(
        rss_idle < after_partial + 4000 * (32 << 10),
        "under 32 KiB a connection: {} MB",
        (rss_idle - after_partial) >> 20
    );
    // They are closed for idleness after 8 s.
    let mut idle = idle;
    for (got, clean) in read_all_to_close(&mut idle, Duration::from_secs(30)) {
        assert!(got.is_empty() && clean, "closed cleanly, nothing sent");
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(7900),
        "not before the idle timeout: {waited:?}"
    );
    let m = wait_for(20, "every idle connection closed by the engine", || {
        let m = http(admin, "GET", "/metrics").1;
        (metric(&m, "sluice_connections", &[]) == 0).then_some(m)
    });
    assert_eq!(
        metric(
            &m,
            "sluice_connections_timed_out_total",
            &["reason=\"frame\""]
        ),
        400
    );
    assert_eq!(
        metric(
            &m,
            "sluice_connections_timed_out_total",
            &["reason=\"idle\""]
        ),
        4000
    );
    drop(idle);
    wait_for(10, "memory back after the idle ones", || {
        (engine.rss_bytes() < base + (32 << 20)).then_some(())
    });

    // A slowloris connection: a header promising 1 MiB, 1,000 bytes, then silence.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", addrs[i % 2])).unwrap();
            let mut start = batch_header(1000 + i as u64, (i % 2) as u32, 1 << 20).to_vec();
            start.resize(1000, 0);
            s.write_all(&start).unwrap();
            s
        })
        .collect();
    let t0 = Instant::now();
    let answers = read_all_to_close(&mut slow, Duration::from_secs(30));
    for (i, (got, clean)) in answers.into_iter().enumerate() {
        assert!(
            got.len() >= ACK_FRAME_BYTES && clean,
            "an answer, then a clean close"
        );
        let ack = Ack::decode(&got[..ACK_FRAME_BYTES]).unwrap();
        assert_eq!(
            (ack.seq, ack.status),
            (1000 + i as u64, AckStatus::Rejected)
        );
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(8),
        "closed at the frame timeout: {took:?}"
    );
    // Nothing was lost on the way: a good client is served as before.
    let r = loadgen(&engine.target(), &["--events", "5000"]);
    assert_eq!(r["events_acked"], 5000);
    engine.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// How one client connection ended during a SIGTERM.
#[derive(Debug, Default)]
struct Ending {
    sent: u64,
    acked: u64,
    shutting_down: u64,
    other: u64,
    /// EOF after the last reply, rather than a reset or an error.
    clean: bool,
}

/// Item 4: SIGTERM under load, five times. The engine stops reading, answers every frame it
/// read (acked once committed, or `shutting_down`), commits, and closes each connection with
/// a FIN after its last reply, within `shutdown_timeout_ms`: every client sees its replies in
/// order and then the end of the stream, never a reset; what it sent past the last reply is
/// what it sends again.
#[test]
fn sigterm_under_load_answers_what_was_read_and_closes_without_a_reset() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = temp_dir("sigterm");
    let (config, port) = config_with_shard(&dir, 2, "shutdown_timeout_ms = 5000");
    let keys = sluice_workload::demo_keyring(sluice_protocol::Backend::Ring);
    let pool = sluice_loadgen::client::build_pool(
        sluice_workload::Workload::W1,
        41,
        64 * 128 * 2,
        128,
        64,
        &keys,
        7,
    );
    for run in 0..5 {
        let engine = EngineProc::start(&config, port);
        let mut clients = Vec::new();
        for c in 0..4usize {
            // Connection c sends the frames of the partitions shard c % 2 owns, round robin.
            let frames: Vec<Vec<u8>> = pool
                .iter()
                .filter(|f| f.partition as usize % 2 == c % 2)
                .map(|f| f.bytes.to_vec())
                .collect();
            let s = TcpStream::connect(("127.0.0.1", port + 1 + (c % 2) as u16)).unwrap();
            let ended = Arc::new(AtomicBool::new(false));
            let mut w = s.try_clone().unwrap();
            let ended_w = ended.clone();
            let writer = std::thread::spawn(move || {
                let mut sent = 0u64;
                for f in frames.iter().cycle() {
                    if ended_w.load(Ordering::Relaxed) || w.write_all(f).is_err() {
                        break;
                    }
                    sent += 1;
                }
                sent
            });
            let reader = std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut e = Ending::default();
                let mut ack = [0u8; ACK_FRAME_BYTES];
                loop {
                    match s.read_exact(&mut ack) {
                        Ok(()) => match Ack::decode(&ack).expect("an ack").status {
                            AckStatus::Ok => e.acked += 1,
                            AckStatus::ShuttingDown => e.shutting_down += 1,
                            _ => e.other += 1,
                        },
                        Err(err) => {
                            e.clean = err.kind() == std::io::ErrorKind::UnexpectedEof;
                            break;
                        }
                    }
                }
                // A client that sees the end stops sending.
                ended.store(true, Ordering::Relaxed);
                let _ = s.shutdown(std::net::Shutdown::Write);
                e
            });
            clients.push((writer, reader));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let t0 = Instant::now();
        engine.signal(libc::SIGTERM);
        let mut endings = Vec::new();
        for (writer, reader) in clients {
            let mut e = reader.join().unwrap();
            e.sent = writer.join().unwrap();
            endings.push(e);
        }
        let log = engine.log_lines();
        engine.stop_waiting();
        let took = t0.elapsed();
        eprintln!("SIGTERM {run}: stopped in {took:?}: {endings:?}");
        assert!(
            took < Duration::from_secs(5),
            "within shutdown_timeout_ms: {took:?}"
        );
        assert!(
            !log.iter().any(|l| l.contains("still closing")),
            "every connection closed in time: {log:?}"
        );
        for e in &endings {
            assert!(e.clean, "the end of the stream, not a reset: {e:?}");
            assert!(e.acked > 0 && e.other == 0, "{e:?}");
            assert!(e.acked + e.shutting_down <= e.sent, "{e:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `request` to the admin port: the status code, the body and how long the answer
/// took.
fn admin_request(port: u16, request: &[u8]) -> (u16, String, Duration) {
    let t0 = Instant::now();
    let (code, body) = sluice_e2e::http_request(port, request);
    (code, body, t0.elapsed())
}

/// Item 5: the admin port serves clients at once, each request bounded in size and time, so
/// silent and slow clients delay nobody; past `admin.connections_max` a client gets 503;
/// `POST /reload` needs the token of `admin.token_file`.
#[test]
fn the_admin_port_serves_clients_at_once_and_guards_reload() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("admin");
    let (config, port) = engine_config(&dir, 2, "{ interval_us = 1000 }");
    let admin = port + 3;
    let token = dir.join("token.txt");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[admin]\ntoken_file = \"token.txt\"\nrequest_timeout_ms = 1000\nconnections_max = 12\n",
    );
    std::fs::write(&config, text).unwrap();
    let engine = EngineProc::start(&config, port);
    let base = engine.rss_bytes();

    // Five silent clients and one sending a byte every 300 ms.
    let silent: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", admin)).unwrap())
        .collect();
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
        let t0 = Instant::now();
        for b in b"GET /metrics HTTP/1.1\r\n\r\n" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let (got, _) = read_to_close(&mut s, Duration::from_secs(30));
        (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    for path in ["/metrics", "/healthz"] {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        let (code, _, took) = admin_request(admin, req.as_bytes());
        assert_eq!(code, 200, "{path}");
        assert!(
            took < Duration::from_millis(500),
            "{path} took {took:?} beside slow clients"
        );
    }
    // Each slow client is answered 408 at the request timeout, not when it is done.
    for mut s in silent {
        let (got, clean) = read_to_close(&mut s, Duration::from_secs(10));
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(clean);
    }
    let (answer, took) = slow.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took < Duration::from_secs(3),
        "the byte-a-while client held on {took:?}"
    );

    // A 256 MiB request line without a newline: refused once over the limit, memory flat.
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    let chunk = vec![b'A'; 1 << 20];
    let mut sent = 0usize;
    while sent < 256 << 20 && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let (got, _) = read_to_close(&mut s, Duration::from_secs(10));
    assert!(
        got.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let grew = engine.rss_bytes().saturating_sub(base);
    assert!(grew < 16 << 20, "RSS grew {} MB", grew >> 20);

    // Past connections_max: 503 at once.
    let held: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(("127.0.0.1", admin)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (code, body, _) = admin_request(admin, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("busy"), "{body}");
    drop(held);

    // Reload: the token or nothing.
    std::thread::sleep(Duration::from_millis(1200));
    let (code, body, _) = admin_request(admin, b"POST /reload HTTP/1.1\r\n\r\n");
    assert_eq!(code, 401, "{body}");
    let (code, _, _) = admin_request(
        admin,
        b"POST /reload HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n",
    );
    assert_eq!(code, 401);
    let (code, body, _) = admin_request(
        admin,
        b"POST /reload HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n\r\n",
    );
    assert_eq!(code, 200, "{body}");

    // A token file others may read is refused at start, with the fix.
    engine.stop();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(binary("sluice"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A filesystem of its own mounted at a directory (the tests run as root, as CI does);
/// unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    /// A tmpfs of `mib` MiB at `dir`.
    fn tmpfs(dir: &Path, mib: u64) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount a tmpfs (the tests need root)");
        Mounted(dir.to_path_buf())
    }

    /// An ext4 of `mib` MiB at `dir`, in the image file `image` on a loop device.
    fn ext4(dir: &Path, image: &Path, mib: u64) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::File::create(image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .status()
            .expect("mkfs.ext4 runs");
        assert!(status.success(), "mkfs.ext4");
        let status = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mount an ext4 image (the tests need root)"
        );
        Mounted(dir.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Item 7: a full disk. Failed writes name the errno and the segment's path, are logged once
/// per change of state per stream (not once per round), counted in
/// `sluice_write_errors_total`, and answered `overloaded`; once space is freed, writes succeed
/// again, say so, and batches are acked again.
#[test]
fn a_full_disk_is_named_logged_once_counted_and_recovered_from() {
    let dir = temp_dir("full");
    let fs = Mounted::tmpfs(&dir.join("data"), 96);
    fill_and_free(&dir, fs);
}

/// Item 7 on ext4, where each segment is zero-filled ahead of its records: the zero-filling
/// fails too, is logged once (errno and path) while every write syncs its own file, and goes
/// back to one-flush rounds once there is room, saying so.
#[test]
fn a_full_ext4_disk_falls_back_from_zero_filling_and_returns_to_it() {
    let dir = temp_dir("full-ext4");
    let fs = Mounted::ext4(&dir.join("data"), &dir.join("disk.img"), 128);
    let log = fill_and_free(&dir, fs);
    let failing: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("zero-filling") && l.contains("failed"))
        .collect();
    assert!(!failing.is_empty(), "zero-filling failed: {log:?}");
    assert!(
        failing
            .iter()
            .all(|l| l.contains("ENOSPC") && l.contains(".seg")),
        "{failing:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("zero-filling works again")),
        "and works again: {log:?}"
    );
}

/// Fills the filesystem mounted at `dir/data` at the generator's pace, checks what the
/// engine says and counts, frees space and checks batches are acked again. The engine's log.
fn fill_and_free(dir: &Path, fs: Mounted) -> Vec<String> {
    let (config, port) = config_with_shard(dir, 2, "connections_max = 64");
    one_mib_segments(&config);
    let data = dir.join("data");
    let engine = EngineProc::start(&config, port);
    let admin = port + 3;
    // Fill it: at the generator's pace 100 MiB last a second or two (longer when every
    // write syncs, on a loaded machine: run again until batches fail).
    let mut runs = Vec::new();
    while runs.len() < 5 {
        let out = Command::new(binary("loadgen"))
            .args(["run", "--quiet", "--target", &engine.target()])
            .args(["--rate", "max", "--duration", "6", "--seed", "51"])
            .output()
            .expect("loadgen runs");
        let r: Value = serde_json::from_slice(&out.stdout).expect("a report");
        let full = r["events_failed"].as_u64().unwrap() > 0;
        runs.push(r);
        if full {
            break;
        }
    }
    assert!(
        runs.last().unwrap()["events_failed"].as_u64().unwrap() > 0,
        "the disk filled: {runs:?}"
    );
    let m = wait_for(5, "write errors counted", || {
        let m = http(admin, "GET", "/metrics").1;
        (metric(&m, "sluice_write_errors_total", &[]) > 0).then_some(m)
    });
    let errors = metric(&m, "sluice_write_errors_total", &[]);
    let log = engine.log_lines();
    let failed: Vec<&String> = log.iter().filter(|l| l.contains("write failed")).collect();
    eprintln!(
        "{errors} failed writes, {} lines: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|l| l.contains("ENOSPC") && l.contains(".seg")),
        "the errno and the path: {failed:?}"
    );
    // A line per writer for each change of state, never one per failed write: between two
    // failures a writer logs, it logged that its writes succeed again.
    // (A change of errno is a change too.)
    let mut failing: HashMap<&str, Option<&str>> = HashMap::new();
    for l in &log {
        let Some((writer, what)) = l.split_once(": write") else {
            continue;
        };
        if what.starts_with(" failed") {
            let errno = what
                .rsplit(".seg: ")
                .next()
                .and_then(|e| e.split(' ').next());
            assert_ne!(
                failing.insert(writer, errno).flatten(),
                errno,
                "{writer} logged twice without a change: {log:?}"
            );
        } else if what.starts_with("s succeed again") {
            failing.insert(writer, None);
        }
    }

    // Free the space: the full segments behind each writer's current one. The last two are
    // kept: the current one, and the next when the writer prepared it ahead (a file deleted
    // while open keeps its blocks until it is closed).
    for s in std::fs::read_dir(&data).unwrap().flatten() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(s.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        files.sort();
        for shard in ["000-", "001-"] {
            let mine: Vec<&PathBuf> = files
                .iter()
                .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(shard))
                .collect();
            for p in mine.iter().rev().skip(2) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    // Acked again once there is room. The writers' zero-fillers, retrying every second, race
    // the batches for the freed blocks (22 writers' 8 MiB of zeros ahead outgrow this 128 MiB
    // disk), so a batch may still meet a full disk at first: it is then refused (overloaded),
    // never acked; a few tries a second apart must see all acked.
    let mut tries = Vec::new();
    while tries.len() < 5 {
        let out = Command::new(binary("loadgen"))
            .args(["run", "--quiet", "--target", &engine.target()])
            .args(["--events", "5000", "--seed", "52"])
            .output()
            .expect("loadgen runs");
        let r: Value = serde_json::from_slice(&out.stdout).expect("a report");
        let acked = r["events_acked"] == 5000;
        tries.push(r);
        if acked {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        tries.last().unwrap()["events_acked"],
        5000,
        "acked again once there is room: {tries:?}"
    );
    // The fillers retry every second: give them the time to work again.
    std::thread::sleep(Duration::from_millis(1500));
    let log = engine.log_lines();
    assert!(
        log.iter().any(|l| l.contains("writes succeed again")),
        "recovery is logged: {log:?}"
    );
    engine.stop();
    drop(fs);
    let _ = std::fs::remove_dir_all(dir);
    log
}

/// A small xorshift generator: the fuzzers' randomness, seeded per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One fuzzer's next input: random bytes, a committed corpus input mutated (bytes flipped,
/// cut, repeated), or a valid-looking header over garbage.
fn fuzz_input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(3) {
        0 => (0..1 + rng.below(65_536))
            .map(|_| rng.next() as u8)
            .collect(),
        1 => {
            let mut v = corpus[rng.below(corpus.len())].clone();
            for _ in 0..1 + rng.below(8) {
                if !v.is_empty() {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
            }
            match rng.below(4) {
                0 => v.truncate(rng.below(v.len() + 1)),
                1 => {
                    let copy = v.clone();
                    v.extend_from_slice(&copy);
                }
                _ => {}
            }
            v
        }
        _ => {
            let len = (FRAME_HEADER_BYTES + 16 * rng.below(4096)) as u32;
            let mut v = batch_header(rng.next(), rng.below(64) as u32, len).to_vec();
            v.extend((0..rng.below(len as usize)).map(|_| rng.next() as u8));
            v
        }
    }
}

/// Item 8: live fuzzing of the TCP ingest. For about 40 s, 16 fuzzers send random bytes and
/// mutated frames from the committed corpus (`protocol/fuzz/corpus/decode`) over many
/// connections, opened, half-used and dropped at random, while a well-behaved client sends
/// W1. At the end the engine is up and healthy, its RSS is flat, the good client had every
/// event acked, and every record its events imply is in the segments.
#[test]
fn live_fuzzing_of_the_ingest_loses_nothing_of_a_good_client() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let corpus_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/fuzz/corpus/decode");
    let corpus: Arc<Vec<Vec<u8>>> = Arc::new(
        std::fs::read_dir(&corpus_dir)
            .expect("the committed corpus")
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect(),
    );
    assert!(corpus.len() >= 20);
    let dir = temp_dir("live-fuzz");
    let (config, port) =
        config_with_shard(&dir, 2, "frame_timeout_ms = 2000\nidle_timeout_ms = 3000");
    let engine = EngineProc::start(&config, port);
    let admin = port + 3;
    // Warm up, so that the tables and buffers are in before RSS is read.
    loadgen(&engine.target(), &["--events", "20000", "--seed", "70"]);
    let rss_start = engine.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let fuzzers: Vec<_> = (0..16u64)
        .map(|t| {
            let (stop, sent, corpus) = (stop.clone(), sent.clone(), corpus.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1).wrapping_mul(0x1234_5678_9ABC));
                let mut open: Vec<TcpStream> = Vec::new();
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if open.len() < 4 || rng.below(4) == 0 {
                        let p = [port, port + 1, port + 2][rng.below(3)];
                        if let Ok(s) = TcpStream::connect(("127.0.0.1", p)) {
                            let _ = s.set_nonblocking(true);
                            open.push(s);
                        }
                    }
                    let i = rng.below(open.len());
                    let input = fuzz_input(&mut rng, &corpus);
                    let _ = open[i].write(&input);
                    sent.fetch_add(input.len() as u64, Ordering::Relaxed);
                    for s in &mut open {
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    if rng.below(3) == 0 {
                        open.swap_remove(rng.below(open.len()));
                    }
                    std::thread::sleep(Duration::from_millis(rng.below(5) as u64));
                }
            })
        })
        .collect();
    // The good client: 40 s of W1 at 3,000 events/s.
    let n = 120_000;
    let r = loadgen(
        &engine.target(),
        &[
            "--events",
            &n.to_string(),
            "--rate",
            "3000",
            "--duration",
            "120",
            "--seed",
            "71",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    for f in fuzzers {
        f.join().unwrap();
    }
    assert_eq!(r["events_acked"], n as u64, "every good event acked: {r}");
    let (code, body) = http(admin, "GET", "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(hello_works(&engine.target()), "still serving");
    let rss_end = engine.rss_bytes();
    let m = http(admin, "GET", "/metrics").1;
    eprintln!(
        "live fuzz: {} MB sent by the fuzzers, {} frames rejected, {} connections closed; RSS {} -> {} MB",
        sent.load(Ordering::Relaxed) >> 20,
        metric(&m, "sluice_frames_rejected_total", &[]),
        metric(&m, "sluice_connections_closed_total", &[]),
        rss_start >> 20,
        rss_end >> 20
    );
    assert!(
        rss_end < rss_start + (64 << 20),
        "RSS flat: {rss_start} -> {rss_end}"
    );
    engine.stop();
    // Every record the good client's events imply is in its stream (the warm-up's and any
    // the fuzzers got through are there too).
    let data = dir.join("data");
    for (stream, want) in sluice_e2e::expected_records(71, n) {
        let mut have: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for rec in stream_records(&data, &stream) {
            *have
                .entry(sluice_e2e::without_ts(rec).to_string())
                .or_default() += 1;
        }
        for rec in want {
            let k = rec.to_string();
            let left = have.get_mut(&k).filter(|c| **c > 0);
            assert!(left.is_some(), "stream {stream} lacks {k}");
            *left.unwrap() -= 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The free files of `data` (segments retention let go, kept for reuse), per stream.
fn free_files(data: &Path) -> Vec<PathBuf> {
    STREAMS
        .iter()
        .flat_map(|s| {
            std::fs::read_dir(data.join(s))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "free"))
        .collect()
}

/// The highest segment number in `data` per stream directory and shard (segments and free
/// files alike): what a restarted engine numbers its segments after. Empty segments do not
/// count: a restart removes them first (a crash may leave one a writer had just created,
/// and the restarted writer then creates a segment of the same number).
fn last_seqs(data: &Path) -> HashMap<(String, String), u32> {
    let mut out = HashMap::new();
    for s in STREAMS {
        for e in std::fs::read_dir(data.join(s))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "seg")
                && sluice::sink::segment::is_empty(&std::fs::read(&path).unwrap())
            {
                continue;
            }
            let name = e.file_name().into_string().unwrap();
            let (shard, rest) = name.split_once('-').unwrap();
            let seq: u32 = rest.split_once('.').unwrap().0.parse().unwrap();
            let last = out.entry((s.to_string(), shard.to_owned())).or_insert(0);
            *last = seq.max(*last);
        }
    }
    out
}

/// sink/writer.rs: a segment retention lets go is kept as a free file and becomes a later
/// segment, its records written over those of its earlier use. A crash while a free file is
/// made a segment leaves it free; then a kill -9 after every batch was acked, with segments
/// reused and not closed (so their earlier records lie behind the new ones): each stream's
/// new segments read back exactly the records the engine counted, none lost and none of the
/// earlier use's, and no torn tail.
#[test]
fn reused_segment_files_keep_every_acked_record_through_a_kill_9() {
    use sluice::sink::segment::read_segment;
    let dir = temp_dir("reuse");
    let (config, port) = engine_config(&dir, 2, "{ interval_us = 1000 }");
    one_mib_segments(&config);
    let data = dir.join("data");
    let retained = std::fs::read_to_string(&config).unwrap();
    // 2 MiB a stream on each shard: two segments.
    let tight = retained.replace(
        "retain_bytes_max = 1073741824",
        "retain_bytes_max = 4194304",
    );
    assert_ne!(tight, retained, "the config has retention to tighten");
    std::fs::write(&config, &tight).unwrap();

    // Segments let go: free files.
    let engine = EngineProc::start(&config, port);
    let r = loadgen(
        &engine.target(),
        &["--rate", "max", "--duration", "4", "--seed", "31"],
    );
    assert!(r["events_acked"].as_u64().unwrap() > 0, "{r}");
    wait_for(10, "free files", || {
        (free_files(&data).len() >= 4).then_some(())
    });
    engine.stop();

    // A crash between a free file's new header and its new name (at start-up: each writer
    // prepares its next segment from a free file): the file stays free (its name says so),
    // and a restart takes it up again.
    run_until_crash(&config, port, "free_file_headed:1", None);
    let free_before = free_files(&data).len();
    assert!(free_before > 0, "free files are left");
    let last = last_seqs(&data);

    // No retention now, so every record written from here on stays. Once all is acked,
    // kill -9: the segments are not closed (nor truncated to their records).
    std::fs::write(&config, &retained).unwrap();
    let engine = EngineProc::start(&config, port);
    let admin = port + 3;
    let r = loadgen(
        &engine.target(),
        &["--rate", "max", "--events", "400000", "--seed", "32"],
    );
    assert_eq!(r["events_acked"], 400000, "{r}");
    // The shards publish their figures every 250 ms.
    let metrics = wait_for(10, "every event counted", || {
        let (_, m) = http(admin, "GET", "/metrics");
        (metric(&m, "sluice_events_total", &[]) == 400000).then_some(m)
    });
    engine.signal(libc::SIGKILL);
    drop(engine);
    let free_after = free_files(&data).len();
    let reused = metric(&metrics, "sluice_segments_reused_total", &[]);
    assert!(
        free_after < free_before && reused >= (free_before - free_after) as u64,
        "the writers took free files: {free_before} before, {free_after} after, {reused} reused"
    );

    for s in STREAMS {
        let mut read = 0u64;
        for e in std::fs::read_dir(data.join(s)).unwrap().flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "seg") {
                continue;
            }
            let name = e.file_name().into_string().unwrap();
            let (shard, rest) = name.split_once('-').unwrap();
            let seq: u32 = rest.split_once('.').unwrap().0.parse().unwrap();
            if last
                .get(&(s.to_string(), shard.to_owned()))
                .is_some_and(|l| seq <= *l)
            {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let seg = read_segment(&bytes).unwrap();
            assert_eq!(seg.torn, None, "{}", path.display());
            read += seg.records.len() as u64;
        }
        let counted = metric(
            &metrics,
            "sluice_records_total",
            &[&format!("stream=\"{s}\"")],
        );
        assert_eq!(
            read, counted,
            "stream {s}: records read back against counted"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
