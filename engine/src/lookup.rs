//! A shard's client of a lookup service (`[enrich.customer] kind = "http"`): runtime glue
//! around the I/O-free cache in [`crate::enrich::remote`].
//!
//! After a batch's first pass, the keys it lacks go out in requests of up to `batch_max`
//! keys (`POST PATH` with `id,id,...`, HTTP/1.1 over keep-alive connections), at most
//! `in_flight_max` at a time; a key already in a request in flight is not asked for twice,
//! and keys that find every slot busy are shed (counted; their events go on marked missing).
//! Each request runs in its own task; the batch waits for the requests that carry its keys
//! at most its time budget (`budget_us`), so other batches, connections and timers go on
//! meanwhile, and a slow service costs a batch no more than the budget: past it, the batch
//! goes on with those events marked missing. The request itself lives on (up to
//! `request_timeout_ms`), and its answer fills the cache for the events that follow. An
//! answer lands in an inbox that the shard empties into its tables between batches; a request
//! that fails or outlives its timeout is counted, and its keys are asked for again by the
//! next batch that lacks them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::Shared;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use glommio::spawn_local;
use hashbrown::HashMap;

use crate::enrich::remote::{RemoteSpec, RemoteStats};

/// Resolves when a request is answered, has failed or is out of time.
pub type Done = Shared<oneshot::Receiver<()>>;

/// The largest answer accepted.
const ANSWER_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, Default, Clone, Copy)]
struct ClientStats {
    requests: u64,
    /// Batches that went on before their keys were answered.
    timeouts: u64,
    failures: u64,
    shed: u64,
}

/// One shard's client: its connections, requests in flight and the answers not yet taken.
pub struct LookupClient {
    spec: Arc<RemoteSpec>,
    idle: RefCell<Vec<TcpStream>>,
    /// The request each key in flight went out in: its number and when it is done.
    pending: RefCell<HashMap<u64, (u64, Done)>>,
    in_flight: Cell<usize>,
    next_request: Cell<u64>,
    answers: RefCell<Vec<String>>,
    stats: Cell<ClientStats>,
}

impl LookupClient {
    pub fn new(spec: Arc<RemoteSpec>) -> Rc<LookupClient> {
        Rc::new(LookupClient {
            spec,
            idle: RefCell::new(Vec::new()),
            pending: RefCell::new(HashMap::new()),
            in_flight: Cell::new(0),
            next_request: Cell::new(0),
            answers: RefCell::new(Vec::new()),
            stats: Cell::new(ClientStats::default()),
        })
    }

    pub fn spec(&self) -> &Arc<RemoteSpec> {
        &self.spec
    }

    fn count(&self, f: impl FnOnce(&mut ClientStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Asks for `misses` (keys a batch lacks) and `refresh` (keys whose entries expired) and
    /// says what the batch should wait for: the requests that carry its misses. Keys already
    /// in flight are not asked for again, but their requests are waited for too.
    pub fn ask(self: &Rc<Self>, misses: &[u64], refresh: &[u64]) -> Vec<Done> {
        let mut waits: Vec<(u64, Done)> = Vec::new();
        let (mut fresh, mut more) = (Vec::new(), Vec::new());
        {
            let pending = self.pending.borrow();
            for k in misses {
                match pending.get(k) {
                    Some((id, done)) => {
                        if !waits.iter().any(|(i, _)| i == id) {
                            waits.push((*id, done.clone()));
                        }
                    }
                    None => fresh.push(*k),
                }
            }
            more.extend(refresh.iter().copied().filter(|k| !pending.contains_key(k)));
        }
        fresh.sort_unstable();
        fresh.dedup();
        more.sort_unstable();
        more.dedup();
        let needed = fresh.len();
        // Misses first, so the keys a batch waits for go out before refreshes.
        fresh.extend(more);
        let per = self.spec.batch_max;
        for (i, keys) in fresh.chunks(per).enumerate() {
            if self.in_flight.get() >= self.spec.in_flight_max {
                let left = (fresh.len() - i * per) as u64;
                self.count(|s| s.shed += left);
                break;
            }
            let (id, done) = self.send(keys);
            if i * per < needed {
                waits.push((id, done));
            }
        }
        waits.into_iter().map(|(_, d)| d).collect()
    }

    /// Starts one request for `keys` in its own task.
    fn send(self: &Rc<Self>, keys: &[u64]) -> (u64, Done) {
        let id = self.next_request.get() + 1;
        self.next_request.set(id);
        let (tx, rx) = oneshot::channel::<()>();
        let done = rx.shared();
        {
            let mut pending = self.pending.borrow_mut();
            for k in keys {
                pending.insert(*k, (id, done.clone()));
            }
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.count(|s| s.requests += 1);
        let mut body = String::with_capacity(keys.len() * 8);
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&k.to_string());
        }
        let keys = keys.to_vec();
        let client = self.clone();
        spawn_local(async move {
            let limit = Duration::from_millis(client.spec.request_timeout_ms.max(1));
            let result =
                glommio::timer::timeout(limit, async { Ok(client.exchange(&body).await) }).await;
            match result {
                Ok(Ok(answer)) => client.answers.borrow_mut().push(answer),
                Ok(Err(_)) | Err(_) => client.count(|s| s.failures += 1),
            }
            {
                let mut pending = client.pending.borrow_mut();
                for k in &keys {
                    if pending.get(k).is_some_and(|(i, _)| *i == id) {
                        pending.remove(k);
                    }
                }
            }
            client.in_flight.set(client.in_flight.get() - 1);
            drop(tx);
        })
        .detach();
        (id, done)
    }

    /// Waits for `waits` (from [`LookupClient::ask`]) at most the time budget; counts a
    /// timeout if the budget ran out first.
    pub async fn wait(&self, waits: Vec<Done>) {
        let budget = Duration::from_micros(self.spec.budget_us.max(1));
        let all = async {
            futures::future::join_all(waits).await;
            Ok(())
        };
        if glommio::timer::timeout(budget, all).await.is_err() {
            self.count(|s| s.timeouts += 1);
        }
    }

    /// Hands the answers received since the last call to `apply` (the shard's tables); one
    /// it refuses counts as a failed request.
    pub fn take_answers(&self, mut apply: impl FnMut(&str) -> Result<usize, String>) {
        let answers = std::mem::take(&mut *self.answers.borrow_mut());
        for a in &answers {
            if apply(a).is_err() {
                self.count(|s| s.failures += 1);
            }
        }
    }

    /// Fills in the client's side of the table's figures.
    pub fn fill(&self, r: &mut RemoteStats) {
        let s = self.stats.get();
        r.requests = s.requests;
        r.timeouts = s.timeouts;
        r.failures = s.failures;
        r.shed = s.shed;
        r.in_flight = self.in_flight.get() as u64;
    }

    /// One request and its answer on a kept-alive connection (a new one if none is idle, or
    /// if an idle one turns out closed).
    async fn exchange(&self, body: &str) -> Result<String, String> {
        let request = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            self.spec.path,
            self.spec.host,
            body.len()
        );
        let reused = self.idle.borrow_mut().pop();
        if let Some(conn) = reused {
            match round_trip(conn, request.as_bytes()).await {
                Ok((conn, answer)) => return self.keep(conn, answer),
                // Closed while idle: try once on a new connection.
                Err(Failure::Closed) => {}
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        let conn = TcpStream::connect(self.spec.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.spec.addr))?;
        let _ = conn.set_nodelay(true);
        match round_trip(conn, request.as_bytes()).await {
            Ok((conn, answer)) => self.keep(conn, answer),
            Err(Failure::Closed) => Err("the service closed the connection".into()),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    fn keep(&self, conn: TcpStream, answer: Answer) -> Result<String, String> {
        if answer.keep_alive {
            self.idle.borrow_mut().push(conn);
        }
        if answer.status != 200 {
            return Err(format!("status {}", answer.status));
        }
        String::from_utf8(answer.body).map_err(|_| "the answer is not UTF-8".to_owned())
    }
}

enum Failure {
    /// The connection closed before any byte of an answer.
    Closed,
    Other(String),
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Writes `request` and reads one HTTP/1.1 answer with a `content-length`.
async fn round_trip(mut conn: TcpStream, request: &[u8]) -> Result<(TcpStream, Answer), Failure> {
    let io = |e: std::io::Error| Failure::Other(e.to_string());
    conn.write_all(request).await.map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Failure::Closed
            } else {
                Failure::Other("the answer ends inside its head".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Err(Failure::Other("an answer head over 64 KiB".into()));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Failure::Other("the answer head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            Failure::Other(format!(
                "not an HTTP answer: {:?}",
                &head[..head.len().min(40)]
            ))
        })?;
    let (mut length, mut keep_alive) = (None, true);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                keep_alive = false;
            }
        }
    }
    let length = length.ok_or_else(|| Failure::Other("the answer has no content-length".into()))?;
    if length > ANSWER_BYTES_MAX {
        return Err(Failure::Other(format!("an answer of {length} bytes")));
    }
    let mut body = buf.split_off(head_end);
    if body.len() > length {
        return Err(Failure::Other("more bytes than the answer's length".into()));
    }
    let have = body.len();
    body.resize(length, 0);
    conn.read_exact(&mut body[have..]).await.map_err(io)?;
    Ok((
        conn,
        Answer {
            status,
            body,
            keep_alive,
        },
    ))
}
