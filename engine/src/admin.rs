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
            // A descriptor held in reserve: when the process has run out (EMFILE), it is
            // given up for the accept of a client already waiting, so that `/healthz` can
            // still say what is wrong, and taken back after.
            let mut spare = std::fs::File::open("/dev/null").ok();
            while !stop.load(Ordering::Relaxed) {
                if !readable(&listener, ADMIN_ACCEPT_POLL) {
                    continue;
                }
                let conn = match listener.accept() {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        match spare.take() {
                            Some(fd) => {
                                drop(fd);
                                listener.accept()
                            }
                            None => Err(e),
                        }
                    }
                    r => r,
                };
                match conn {
                    Ok((conn, _)) => {
                        let _ = handle(conn, &registry, &control, &ready);
                    }
                    Err(_) => std::thread::sleep(ADMIN_ACCEPT_POLL),
                }
                if spare.is_none() {
                    spare = std::fs::File::open("/dev/null").ok();
                }
            }
        })
}

/// Whether a client waits on `listener`, looking for at most `wait` (poll needs no
/// descriptor, so it works when the process has none left).
fn readable(listener: &TcpListener, wait: std::time::Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let n = unsafe { libc::poll(&mut fd, 1, wait.as_millis() as libc::c_int) };
    n > 0 && fd.revents & libc::POLLIN != 0
}

fn handle(
    conn: TcpStream,
    registry: &Registry,
    control: &Control,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(ADMIN_READ_TIMEOUT))?;
    // Read through a reference: a second descriptor may be what the process lacks.
    let mut reader = BufReader::new(&conn);
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
        ("GET", "/healthz") if !ready.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", "starting\n".to_owned())
        }
        ("GET", "/healthz") => match registry.unhealthy() {
            down if down.is_empty() => ("200 OK", "ok\n".to_owned()),
            down => ("503 Service Unavailable", down.join("\n") + "\n"),
        },
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
    let mut conn = &conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
