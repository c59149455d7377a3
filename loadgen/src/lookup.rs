//! `loadgen lookup-service`: the W1 customer table served over HTTP for batch lookups, with
//! injectable latency and failures, so that sluice's `http` tables can be tested and
//! measured against slow and failing services.
//!
//! The protocol (HTTP/1.1, keep-alive):
//! - `POST /lookup` with a body of customer ids separated by commas (`17,42,99`) answers
//!   `200` with one CSV record (RFC 4180: a cell with a comma or quote is quoted) per id, in
//!   order, each on its own line: `id,plan,signup_country,profiles` for a customer the table
//!   has, the bare `id` for one it has not (a negative answer, to be cached as such).
//! - Each request waits `latency_us` before its answer; a fraction `fail_rate` of them (drawn
//!   from a seeded generator) answer `503` instead.
//! - `GET /healthz` answers `200 ok`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The largest request body accepted (about 100,000 ids).
pub const BODY_MAX: usize = 1 << 20;

/// How the service behaves.
#[derive(Debug, Clone, Copy)]
pub struct ServiceOpts {
    pub latency: Duration,
    /// Fraction of requests answered `503`.
    pub fail_rate: f64,
    pub seed: u64,
}

/// Customer rows by id, as the lines the service answers with.
pub type Table = HashMap<u64, String>;

/// Reads a customer table from a CSV file (RFC 4180) whose header names the columns
/// `customer_id`, `plan`, `signup_country` and `profiles` (in any order; others are ignored),
/// as `loadgen fixtures` writes it.
pub fn load_table(path: &Path) -> Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let columns = ["customer_id", "plan", "signup_country", "profiles"];
    let header = reader
        .headers()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .clone();
    let at: Vec<usize> = columns
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h == *c)
                .ok_or_else(|| format!("{}:1: the header has no column {c:?}", path.display()))
        })
        .collect::<Result<_, _>>()?;
    let mut t = Table::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("{}: {e}", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let cell = |i: usize| record.get(at[i]).unwrap_or("");
        let id = cell(0).parse::<u64>().map_err(|_| {
            format!(
                "{}:{line}: column \"customer_id\": {:?} is not a customer id",
                path.display(),
                cell(0)
            )
        })?;
        t.insert(id, answer_line(&[cell(0), cell(1), cell(2), cell(3)]));
    }
    Ok(t)
}

/// The W1 customer table generated from `seed`.
pub fn w1_table(seed: u64) -> Table {
    sluice_workload::tables::customers(seed)
        .into_iter()
        .map(|c| {
            let id = c.customer_id.to_string();
            let profiles = c.profiles.to_string();
            let line = answer_line(&[&id, c.plan, c.signup_country, &profiles]);
            (c.customer_id, line)
        })
        .collect()
}

/// One answer record: the cells as CSV (quoted where they need it), without its line end.
fn answer_line(cells: &[&str]) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(cells).expect("writes to memory");
    let mut line = String::from_utf8(w.into_inner().expect("flushes to memory")).expect("UTF-8");
    line.pop();
    line
}

/// Counts of what the service answered.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub requests: AtomicU64,
    pub keys: AtomicU64,
    pub failed: AtomicU64,
}

/// Serves `table` on `listener` until the process ends: one thread per connection.
pub fn serve(listener: TcpListener, table: Arc<Table>, opts: ServiceOpts) -> Arc<ServiceStats> {
    let stats = Arc::new(ServiceStats::default());
    let s = stats.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            let (table, stats) = (table.clone(), s.clone());
            let seed = opts.seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            std::thread::spawn(move || {
                let _ = connection(conn, &table, opts, seed, &stats);
            });
        }
    });
    stats
}

/// Binds `addr` and serves; returns the bound address.
pub fn start(
    addr: &str,
    table: Table,
    opts: ServiceOpts,
) -> io::Result<(SocketAddr, Arc<ServiceStats>)> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    Ok((local, serve(listener, Arc::new(table), opts)))
}

fn connection(
    conn: TcpStream,
    table: &Table,
    opts: ServiceOpts,
    mut seed: u64,
    stats: &ServiceStats,
) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        // Request line and headers.
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = line.trim_end().to_owned();
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(usize::MAX);
            }
        }
        if length > BODY_MAX {
            respond(&mut out, "413 Payload Too Large", "body over 1 MiB\n")?;
            return Ok(());
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        let answer = match request.split(' ').take(2).collect::<Vec<_>>()[..] {
            ["GET", "/healthz"] => ("200 OK", "ok\n".to_owned()),
            ["POST", "/lookup"] => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(opts.latency);
                // SplitMix64 step: a seeded draw per request.
                seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let draw = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
                if draw < opts.fail_rate {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    ("503 Service Unavailable", "injected failure\n".to_owned())
                } else {
                    match lookup(table, &body) {
                        Ok((text, keys)) => {
                            stats.keys.fetch_add(keys, Ordering::Relaxed);
                            ("200 OK", text)
                        }
                        Err(e) => ("400 Bad Request", e),
                    }
                }
            }
            _ => ("404 Not Found", "POST /lookup or GET /healthz\n".to_owned()),
        };
        respond(&mut out, answer.0, &answer.1)?;
    }
}

/// The answer lines for a body of comma-separated ids, and how many ids it held.
fn lookup(table: &Table, body: &[u8]) -> Result<(String, u64), String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8\n".to_owned())?;
    let mut out = String::with_capacity(text.len() * 8);
    let mut n = 0;
    for id in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let key: u64 = id
            .parse()
            .map_err(|_| format!("{id:?} is not a customer id\n"))?;
        match table.get(&key) {
            Some(row) => out.push_str(row),
            None => out.push_str(id),
        }
        out.push('\n');
        n += 1;
    }
    Ok((out, n))
}

fn respond(out: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())
}
