//! The admin HTTP endpoint (default 127.0.0.1:9180): `GET /metrics` (Prometheus text),
//! `GET /healthz`, `POST /reload` (200 with the new revision, or 400 with why the running
//! rules stay). It runs on its own plain thread, off the shards' cores' data path, and reads
//! only the metrics slots the shards publish; a reload compiles here, on this thread.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::consts::{ADMIN_ACCEPT_POLL, ADMIN_READ_TIMEOUT};
use crate::control::Control;
use crate::metrics::Registry;

/// Binds the admin listener and serves it on a new thread until `stop` is set.
pub fn serve(
    addr: SocketAddr,
    registry: Registry,
    control: Arc<Control>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = handle(conn, &registry, &control, &ready);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(ADMIN_ACCEPT_POLL);
                    }
                    Err(_) => std::thread::sleep(ADMIN_ACCEPT_POLL),
                }
            }
        })
}

fn handle(
    conn: TcpStream,
    registry: &Registry,
    control: &Control,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(ADMIN_READ_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", registry.render()),
        ("GET", "/healthz") if ready.load(Ordering::Relaxed) => ("200 OK", "ok\n".to_owned()),
        ("GET", "/healthz") => ("503 Service Unavailable", "starting\n".to_owned()),
        ("POST", "/reload") => match control.reload() {
            Ok(done) => {
                eprintln!("sluice: reloaded: {done}");
                ("200 OK", format!("{done}\n"))
            }
            Err(why) => {
                eprintln!("sluice: reload refused, the running rules stay: {why}");
                ("400 Bad Request", format!("{why}\n"))
            }
        },
        _ => (
            "404 Not Found",
            "GET /metrics, GET /healthz or POST /reload\n".to_owned(),
        ),
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
