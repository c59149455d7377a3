//! The admin HTTP endpoint (default 127.0.0.1:9180): `GET /metrics` (Prometheus text),
//! `GET /healthz`, `POST /reload` (200 with the new revision, or 400 with why the running
//! rules stay). It runs on plain threads, off the shards' cores' data path, and reads only
//! the metrics slots the shards publish; a reload compiles on the thread that serves it.
//!
//! One thread accepts; each connection is served on a thread of its own, at most
//! `admin.connections_max` at once (one more is answered 503 and closed), one request per
//! connection, whose head (request line and headers) must be whole within
//! `admin.request_timeout_ms` and `admin.request_bytes_max` bytes. So a slow or silent
//! client delays nobody else, and holds at most its request's bytes.
//!
//! `POST /reload` changes what the engine does, so it is guarded: with `admin.token_file`
//! it needs `Authorization: Bearer TOKEN`; without, only loopback clients may reload.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::Admin;
use crate::consts::{ADMIN_ACCEPT_POLL, CLOSE_LINGER};
use crate::control::Control;
use crate::metrics::Registry;

/// How long the accept thread reads a refused client's request before it closes.
const BUSY_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// What every connection's thread shares.
struct Shared {
    cfg: Admin,
    registry: Registry,
    control: Arc<Control>,
    ready: Arc<AtomicBool>,
    /// Connections being served.
    active: AtomicUsize,
}

/// Binds the admin listener and serves it on new threads until `stop` is set.
pub fn serve(
    addr: SocketAddr,
    cfg: Admin,
    registry: Registry,
    control: Arc<Control>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        cfg,
        registry,
        control,
        ready,
        active: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            // A descriptor held in reserve: when the process has run out (EMFILE), it is
            // given up for the accept of a client already waiting, so that `/healthz` can
            // still say what is wrong, and taken back after.
            let mut spare: Option<OwnedFd> = std::fs::File::open("/dev/null").ok().map(Into::into);
            while !stop.load(Ordering::Relaxed) {
                if !readable(&listener, ADMIN_ACCEPT_POLL) {
                    continue;
                }
                match listener.accept() {
                    Ok((conn, peer)) => dispatch(&shared, conn, peer),
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        let Some(fd) = spare.take() else {
                            std::thread::sleep(ADMIN_ACCEPT_POLL);
                            continue;
                        };
                        drop(fd);
                        match listener.accept() {
                            Ok((conn, peer)) => {
                                // Served here, and its descriptor kept as the next spare.
                                let _ = handle(&conn, peer, &shared);
                                spare = keep_as_spare(conn, &listener);
                            }
                            Err(_) => {
                                spare = std::fs::File::open("/dev/null").ok().map(Into::into);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(ADMIN_ACCEPT_POLL),
                }
            }
        })
}

/// Closes `conn` by making its descriptor another handle of `listener` (dup2 does both at
/// once), which is then the spare: no other thread can take the descriptor in between.
fn keep_as_spare(conn: TcpStream, listener: &TcpListener) -> Option<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let fd = conn.into_raw_fd();
    // SAFETY: `fd` is ours (taken from the stream) and `listener`'s descriptor is open;
    // dup2 closes the connection and makes `fd` refer to the listener.
    if unsafe { libc::dup2(listener.as_raw_fd(), fd) } < 0 {
        // SAFETY: dup2 failed, so `fd` is still the connection, ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return None;
    }
    // SAFETY: `fd` is open (a handle of the listener) and owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Serves `conn` on a thread of its own, or answers 503 when `connections_max` are served.
fn dispatch(shared: &Arc<Shared>, conn: TcpStream, peer: SocketAddr) {
    if shared.active.fetch_add(1, Ordering::AcqRel) >= shared.cfg.connections_max {
        shared.active.fetch_sub(1, Ordering::AcqRel);
        // The accept thread answers this one itself: briefly, so that a flood of clients
        // past the cap cannot hold it.
        let _ = respond_within(
            &conn,
            "503 Service Unavailable",
            "busy: admin.connections_max connections are being served\n",
            BUSY_LINGER,
        );
        return;
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("sluice-admin-conn".into())
        .spawn(move || {
            let _ = handle(&conn, peer, &s);
            s.active.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        shared.active.fetch_sub(1, Ordering::AcqRel);
    }
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

/// Why a request head could not be read.
enum HeadError {
    TooLarge,
    TimedOut,
    Closed,
}

/// Reads a request head (up to the blank line) within `deadline` and `max` bytes.
fn read_head(mut conn: &TcpStream, max: usize, deadline: Instant) -> Result<String, HeadError> {
    let mut head = Vec::with_capacity(1024.min(max));
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(String::from_utf8_lossy(&head).into_owned());
        }
        if head.len() > max {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        conn.set_read_timeout(Some(left))
            .map_err(|_| HeadError::Closed)?;
        let want = (max + 4 - head.len()).min(buf.len());
        match conn.read(&mut buf[..want]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::TimedOut);
            }
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Compares without stopping at the first difference (the token is a secret).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request may reload: the token when one is configured, else a loopback peer.
fn may_reload(cfg: &Admin, head: &str, peer: SocketAddr) -> Result<(), (&'static str, String)> {
    match &cfg.token {
        Some(token) => {
            let given = head.lines().skip(1).find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("authorization")
                    .then(|| value.trim().strip_prefix("Bearer ").map(str::trim))?
            });
            match given {
                Some(t) if same_secret(t.as_bytes(), token.as_bytes()) => Ok(()),
                _ => Err((
                    "401 Unauthorized",
                    "POST /reload needs `Authorization: Bearer TOKEN` (the token of admin.token_file)\n"
                        .into(),
                )),
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err((
            "403 Forbidden",
            "POST /reload is taken only from loopback clients unless admin.token_file is set\n"
                .into(),
        )),
    }
}

fn handle(conn: &TcpStream, peer: SocketAddr, s: &Shared) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    let deadline = Instant::now() + s.cfg.request_timeout;
    conn.set_write_timeout(Some(s.cfg.request_timeout))?;
    let head = match read_head(conn, s.cfg.request_bytes_max, deadline) {
        Ok(h) => h,
        Err(HeadError::TooLarge) => {
            return respond(
                conn,
                "431 Request Header Fields Too Large",
                "the request head is over admin.request_bytes_max\n",
            );
        }
        Err(HeadError::TimedOut) => {
            return respond(
                conn,
                "408 Request Timeout",
                "the request did not come within admin.request_timeout_ms\n",
            );
        }
        Err(HeadError::Closed) => return Ok(()),
    };
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", s.registry.render()),
        ("GET", "/healthz") if !s.ready.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", "starting\n".to_owned())
        }
        ("GET", "/healthz") => match s.registry.unhealthy() {
            down if down.is_empty() => ("200 OK", "ok\n".to_owned()),
            down => ("503 Service Unavailable", down.join("\n") + "\n"),
        },
        ("POST", "/reload") => match may_reload(&s.cfg, &head, peer) {
            Err(refused) => refused,
            Ok(()) => match s.control.reload() {
                Ok(done) => {
                    eprintln!("sluice: reloaded: {done}");
                    ("200 OK", format!("{done}\n"))
                }
                Err(why) => {
                    eprintln!("sluice: reload refused, the running rules stay: {why}");
                    ("400 Bad Request", format!("{why}\n"))
                }
            },
        },
        _ => (
            "404 Not Found",
            "GET /metrics, GET /healthz or POST /reload\n".to_owned(),
        ),
    };
    respond(conn, status, &body)
}

/// Writes the response, then ends the connection cleanly: a FIN after the response, and
/// what the client still sends read and dropped (for at most `CLOSE_LINGER`), so that the
/// close does not reset the connection and destroy a response not yet read.
fn respond(conn: &TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    respond_within(conn, status, body, CLOSE_LINGER)
}

/// `respond`, reading what the client still sends for at most `linger`.
fn respond_within(
    mut conn: &TcpStream,
    status: &str,
    body: &str,
    linger: std::time::Duration,
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let until = Instant::now() + linger;
    let mut sink = [0u8; 64 << 10];
    let _ = conn.set_nonblocking(false);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match conn.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: Option<&str>) -> Admin {
        Admin {
            token: token.map(str::to_owned),
            connections_max: 4,
            request_bytes_max: 1024,
            request_timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn reload_needs_the_token_or_a_loopback_client() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let head = "POST /reload HTTP/1.1\r\nHost: x";
        assert!(may_reload(&cfg(None), head, local).is_ok());
        assert_eq!(
            may_reload(&cfg(None), head, remote).unwrap_err().0,
            "403 Forbidden"
        );
        let t = cfg(Some("s3cret"));
        for peer in [local, remote] {
            assert_eq!(
                may_reload(&t, head, peer).unwrap_err().0,
                "401 Unauthorized"
            );
            let wrong = format!("{head}\r\nAuthorization: Bearer s3creT");
            assert!(may_reload(&t, &wrong, peer).is_err());
            let right = format!("{head}\r\nauthorization:  Bearer s3cret ");
            assert!(may_reload(&t, &right, peer).is_ok(), "{right}");
        }
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab"));
    }
}
