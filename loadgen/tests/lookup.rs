//! The lookup service: batch answers in order with negative answers, injected latency and
//! failures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sluice_loadgen::lookup::{ServiceOpts, Table, start};

/// Sends one request on `conn` and reads its answer: (status line, body).
fn request(conn: &mut TcpStream, method: &str, path: &str, body: &str) -> (String, String) {
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    (
        head.lines().next().unwrap().to_owned(),
        String::from_utf8(body).unwrap(),
    )
}

fn table() -> Table {
    [(1, "1,basic,US,2"), (7, "7,premium,DE,5")]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect()
}

#[test]
fn answers_a_batch_in_order_with_negative_answers_on_one_connection() {
    let opts = ServiceOpts {
        latency: Duration::ZERO,
        fail_rate: 0.0,
        seed: 1,
    };
    let (addr, stats) = start("127.0.0.1:0", table(), opts).unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    let (status, body) = request(&mut c, "POST", "/lookup", "7,3,1");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "7,premium,DE,5\n3\n1,basic,US,2\n");
    // Keep-alive: the same connection takes the next request.
    let (status, body) = request(&mut c, "POST", "/lookup", "1");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "1,basic,US,2\n")
    );
    let (status, _) = request(&mut c, "POST", "/lookup", "1,x");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert_eq!(request(&mut c, "GET", "/healthz", "").1, "ok\n");
    assert_eq!(stats.keys.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[test]
fn injects_latency_and_failures() {
    let opts = ServiceOpts {
        latency: Duration::from_millis(20),
        fail_rate: 0.5,
        seed: 3,
    };
    let (addr, _) = start("127.0.0.1:0", table(), opts).unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    let mut failed = 0;
    let t = Instant::now();
    for _ in 0..20 {
        let (status, body) = request(&mut c, "POST", "/lookup", "1");
        match status.as_str() {
            "HTTP/1.1 200 OK" => assert_eq!(body, "1,basic,US,2\n"),
            "HTTP/1.1 503 Service Unavailable" => failed += 1,
            s => panic!("{s}"),
        }
    }
    assert!(t.elapsed() >= Duration::from_millis(20 * 20));
    assert!((3..=17).contains(&failed), "{failed} of 20 failed");
}
