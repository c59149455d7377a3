//! A shard's client of a lookup service (`[enrich.customer] kind = "http"`): runtime glue
//! around the I/O-free cache in [`crate::enrich::remote`].
//!
//! After a batch's first pass, the keys it lacks go out in requests of up to `batch_max`
//! keys (`POST PATH` with `id,id,...`, HTTP/1.1 over keep-alive connections), at most
//! `in_flight_max` at a time; keys that find every slot busy wait in a queue, where the keys
//! of the batches that follow join them, and go out as slots free. A key already asked for is
//! not asked again; past one round's worth of queued keys, keys are shed (counted; their
//! events go on marked missing).
//! Each request runs in its own task; the batch waits for the requests that carry its keys
//! at most its time budget (`budget_us`), so other batches, connections and timers go on
//! meanwhile, and a slow service costs a batch no more than the budget: past it, the batch
//! goes on with those events marked missing. The request itself lives on (up to
//! `request_timeout_ms`), and its answer fills the cache for the events that follow. An
//! answer lands in an inbox that the shard empties into its tables between batches; a request
//! that fails or outlives its timeout is counted, and its keys are asked for again by the
//! next batch that lacks them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::Shared;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use glommio::spawn_local;
use hashbrown::HashMap;

use crate::consts::{ANSWER_BYTES_MAX, ANSWER_HEAD_BYTES_MAX};
use crate::enrich::remote::{RemoteSpec, RemoteStats};

/// Resolves when a request is answered, has failed or is out of time.
pub type Done = Shared<oneshot::Receiver<()>>;

#[derive(Debug, Default, Clone, Copy)]
struct ClientStats {
    requests: u64,
    /// Batches that went on before their keys were answered.
    timeouts: u64,
    failures: u64,
    shed: u64,
}

/// Keys that go out in one request, at most `batch_max` of them; `done` resolves when the
/// request has its answer, has failed or has timed out.
struct Group {
    id: u64,
    keys: Vec<u64>,
    finished: oneshot::Sender<()>,
    done: Done,
}

/// One shard's client: its connections, requests queued and in flight, and the answers not
/// yet taken.
pub struct LookupClient {
    spec: Arc<RemoteSpec>,
    idle: RefCell<Vec<TcpStream>>,
    /// The group each key asked for is in (queued or in flight): its number and its end.
    pending: RefCell<HashMap<u64, (u64, Done)>>,
    /// Groups waiting for a request slot, oldest first, and the keys in them.
    queued: RefCell<VecDeque<Group>>,
    queued_keys: Cell<usize>,
    in_flight: Cell<usize>,
    next_group: Cell<u64>,
    answers: RefCell<Vec<String>>,
    stats: Cell<ClientStats>,
}

impl LookupClient {
    pub fn new(spec: Arc<RemoteSpec>) -> Rc<LookupClient> {
        Rc::new(LookupClient {
            spec,
            idle: RefCell::new(Vec::new()),
            pending: RefCell::new(HashMap::new()),
            queued: RefCell::new(VecDeque::new()),
            queued_keys: Cell::new(0),
            in_flight: Cell::new(0),
            next_group: Cell::new(0),
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
    /// asked for are not asked again, but their requests are waited for too. Keys join the
    /// newest queued request while it has room, so the keys of batches that arrive while
    /// every slot is busy go out together; past one round of requests' worth
    /// (`in_flight_max` x `batch_max`) queued, keys are shed.
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
        let queue_max = self.spec.in_flight_max * self.spec.batch_max;
        // Misses first, so the keys a batch waits for go out before refreshes.
        let keys = fresh.iter().map(|k| (*k, true));
        for (n, (key, needed)) in keys.chain(more.iter().map(|k| (*k, false))).enumerate() {
            if self.queued_keys.get() >= queue_max {
                self.pump();
            }
            if self.queued_keys.get() >= queue_max {
                let left = (fresh.len() + more.len() - n) as u64;
                self.count(|s| s.shed += left);
                break;
            }
            let (id, done) = self.enqueue(key);
            if needed && !waits.iter().any(|(i, _)| *i == id) {
                waits.push((id, done));
            }
        }
        self.pump();
        waits.into_iter().map(|(_, d)| d).collect()
    }

    /// Puts `key` in the newest queued group (a new one if it is full).
    fn enqueue(&self, key: u64) -> (u64, Done) {
        let mut queued = self.queued.borrow_mut();
        if queued
            .back()
            .is_none_or(|g| g.keys.len() >= self.spec.batch_max)
        {
            let id = self.next_group.get() + 1;
            self.next_group.set(id);
            let (finished, done) = oneshot::channel::<()>();
            queued.push_back(Group {
                id,
                keys: Vec::with_capacity(self.spec.batch_max),
                finished,
                done: done.shared(),
            });
        }
        let g = queued.back_mut().expect("a group");
        g.keys.push(key);
        self.queued_keys.set(self.queued_keys.get() + 1);
        self.pending
            .borrow_mut()
            .insert(key, (g.id, g.done.clone()));
        (g.id, g.done.clone())
    }

    /// Sends queued groups while request slots are free.
    fn pump(self: &Rc<Self>) {
        while self.in_flight.get() < self.spec.in_flight_max {
            let Some(g) = self.queued.borrow_mut().pop_front() else {
                break;
            };
            self.queued_keys.set(self.queued_keys.get() - g.keys.len());
            self.send(g);
        }
    }

    /// Starts the request of group `g` in its own task; when it ends, the next queued group
    /// takes its slot.
    fn send(self: &Rc<Self>, g: Group) {
        assert!(
            self.in_flight.get() < self.spec.in_flight_max,
            "a request is sent only into a free slot"
        );
        assert!(
            !g.keys.is_empty() && g.keys.len() <= self.spec.batch_max,
            "a request carries 1 to batch_max keys"
        );
        self.in_flight.set(self.in_flight.get() + 1);
        self.count(|s| s.requests += 1);
        let mut body = String::with_capacity(g.keys.len() * 8);
        for (i, k) in g.keys.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let _ = write!(body, "{k}");
        }
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
                for k in &g.keys {
                    if pending.get(k).is_some_and(|(i, _)| *i == g.id) {
                        pending.remove(k);
                    }
                }
            }
            client.in_flight.set(client.in_flight.get() - 1);
            drop(g.finished);
            client.pump();
        })
        .detach();
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
    /// The connection was closed before any byte of an answer.
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
    // A kept-alive connection the service closed fails here or reads nothing below.
    conn.write_all(request).await.map_err(|_| Failure::Closed)?;
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
        if buf.len() > ANSWER_HEAD_BYTES_MAX {
            return Err(Failure::Other(format!(
                "an answer head over {} KiB",
                ANSWER_HEAD_BYTES_MAX >> 10
            )));
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
