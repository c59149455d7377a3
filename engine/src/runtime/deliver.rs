//! Network sinks on a shard, and retention: the glue around each stream's
//! [`StreamLog`](crate::sink::log::StreamLog).
//!
//! - The commit task reports how far each stream is durable after every round
//!   ([`Outbound::durable`]) and wakes the stream's sinks.
//! - Each sink of each stream runs one **delivery task** per shard ([`deliver`]): it reads the
//!   shard's segments of the stream from its read position with reads through io_uring
//!   (buffered: the kernel keeps the page cache coherent with the writer's O_DIRECT writes),
//!   hands each record to the producer (`send_result` only enqueues: librdkafka's
//!   own threads talk to the brokers, so the reactor never blocks), and confirms records in
//!   order as the broker acknowledges them. Its cursor, the position after the last confirmed
//!   record, is persisted atomically (a temporary file, fdatasync, rename) at most every
//!   [`CURSOR_INTERVAL`] and when the shard stops. A failed delivery sends again from the
//!   failed record, after a back-off: at least once, in order.
//! - A sink whose backlog reaches `backlog_bytes_max` either holds the shard's intake
//!   (`block`: [`Outbound::blocked`], which `Shard::take_owned` waits on) or gives up its oldest
//!   sealed segments (`drop_oldest`, counted with their records).
//! - The **retention task** ([`retain`]) deletes, once a second, the segments every sink
//!   delivered, or for a stream without sinks those past its `retain_ms` or
//!   `retain_bytes_max`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{Either, select};
use glommio::io::{BufferedFile, OpenOptions};
use glommio::sync::Semaphore;

use super::shard::Shard;
use crate::consts::{
    CURSOR_INTERVAL, DELIVERY_BACKOFF_MAX, DELIVERY_BACKOFF_MIN, DELIVERY_CHUNK_RECORDS,
    DELIVERY_INFLIGHT_MAX, DELIVERY_READ_BYTES, QUEUE_FULL_WAIT, RETENTION_INTERVAL,
};
use crate::metrics::SinkSnapshot;
use crate::sink::kafka::{Confirmation, Enqueued, SinkClient, SinkSpec, WhenFull};
use crate::sink::log::{Pos, StreamLog, load_cursor, store_cursor_text};
use crate::sink::segment::{
    Next, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentHeader, file_seq, free_files,
    free_path, record_at, segment_path,
};

/// What a sink did, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct SinkStats {
    pub delivered_records: u64,
    pub delivered_bytes: u64,
    pub errors: u64,
    pub retries: u64,
    pub dropped_records: u64,
}

/// One network sink of one stream on this shard.
pub(super) struct SinkRun {
    pub stream: usize,
    /// Its index among the stream's sinks (and the log's cursors).
    pub index: usize,
    pub spec: SinkSpec,
    pub client: SinkClient,
    pub wake: Semaphore,
    pub stats: RefCell<SinkStats>,
}

/// The shard's stream logs, network sinks and retention figures.
pub(super) struct Outbound {
    pub logs: Vec<RefCell<StreamLog>>,
    pub sinks: Vec<Rc<SinkRun>>,
    /// A `block` sink's backlog is full: the shard takes no new batch.
    pub blocked: Cell<bool>,
    /// The shard stopped and made its last commit: sinks send what is durable, then end.
    pub closing: Cell<bool>,
    /// Segments deleted, per stream.
    pub deleted: RefCell<Vec<u64>>,
    /// Segments made from free files, per stream (the commit task copies the writers').
    pub reused: RefCell<Vec<u64>>,
    /// Per stream: whether retention keeps a segment it lets go as a free file for the
    /// writer to reuse instead of deleting it: where the writer takes free files and no
    /// network sink reads the stream.
    pub reuses: Vec<bool>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The segments of `stream` that `shard` wrote before `current`: `(seq, length, mtime ms)`.
fn existing_segments(dir: &Path, stream: &str, shard: usize, current: u32) -> Vec<(u32, u64, u64)> {
    let Ok(entries) = std::fs::read_dir(dir.join(stream)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let seq = file_seq(e.file_name().to_str()?, shard, "seg")?;
            let meta = e.metadata().ok()?;
            let mtime = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as u64;
            (seq < current).then_some((seq, meta.len(), mtime))
        })
        .collect()
}

impl Outbound {
    /// The shard's logs (its writers opened segment `current[i]` of stream `i`) with each
    /// sink's persisted cursor, and a run per sink with its process-wide producer.
    pub fn open(
        cfg: &crate::config::Config,
        shard: usize,
        current: &[u32],
        reuses: Vec<bool>,
        clients: &[Vec<SinkClient>],
    ) -> Result<Outbound, String> {
        let dir = &cfg.sinks.dir;
        let now = Instant::now();
        let mut logs = Vec::new();
        let mut sinks = Vec::new();
        for (i, s) in cfg.streams.iter().enumerate() {
            let mut cursors = Vec::new();
            for (j, k) in s.sinks.iter().enumerate() {
                let path = cursor_path(dir, &s.name, shard, &k.name);
                cursors.push(load_cursor(&path).map_err(|e| format!("shard {shard}: {e}"))?);
                sinks.push(Rc::new(SinkRun {
                    stream: i,
                    index: j,
                    spec: k.clone(),
                    client: clients[i][j].clone(),
                    wake: Semaphore::new(0),
                    stats: RefCell::new(SinkStats::default()),
                }));
            }
            let existing = existing_segments(dir, &s.name, shard, current[i]);
            logs.push(RefCell::new(StreamLog::new(
                existing, &cursors, current[i], now,
            )));
        }
        Ok(Outbound {
            deleted: RefCell::new(vec![0; logs.len()]),
            reused: RefCell::new(vec![0; logs.len()]),
            logs,
            sinks,
            blocked: Cell::new(false),
            closing: Cell::new(false),
            reuses,
        })
    }

    /// Stream `i` is durable to `pos`, `records` since start: its sinks may read that far.
    pub fn durable(&self, i: usize, pos: Pos, records: u64) {
        self.logs[i]
            .borrow_mut()
            .durable(pos.seq, pos.offset, records, Instant::now(), now_ms());
        for k in self.sinks.iter().filter(|k| k.stream == i) {
            k.wake.signal(1);
        }
        self.update_blocked();
    }

    /// Whether any `block` sink's backlog is full, as of now.
    pub fn update_blocked(&self) {
        let blocked = self.sinks.iter().any(|k| {
            k.spec.when_full == WhenFull::Block
                && self.logs[k.stream]
                    .borrow()
                    .full(k.index, k.spec.backlog_bytes_max)
        });
        self.blocked.set(blocked);
    }

    /// Each sink's figures for `/metrics`.
    pub fn snapshot(&self, cfg: &crate::config::Config) -> Vec<SinkSnapshot> {
        let now = Instant::now();
        self.sinks
            .iter()
            .map(|k| {
                let log = self.logs[k.stream].borrow();
                let st = k.stats.borrow();
                let backlog_bytes = log.backlog_bytes(k.index);
                SinkSnapshot {
                    stream: cfg.streams[k.stream].name.clone(),
                    sink: k.spec.name.clone(),
                    delivered_records: st.delivered_records,
                    delivered_bytes: st.delivered_bytes,
                    backlog_bytes,
                    backlog_records: log.backlog_records(k.index),
                    lag_seconds: log.lag(k.index, now).as_secs_f64(),
                    errors: st.errors,
                    retries: st.retries,
                    dropped_records: st.dropped_records,
                    blocking: k.spec.when_full == WhenFull::Block
                        && log.full(k.index, k.spec.backlog_bytes_max),
                }
            })
            .collect()
    }

    /// The shard made its last commit: each delivery task sends what is durable (for at
    /// most `shutdown_timeout_ms`) and ends.
    pub fn close(&self) {
        self.closing.set(true);
        self.wake_all();
    }

    /// Wakes every delivery task.
    fn wake_all(&self) {
        for k in &self.sinks {
            k.wake.signal(1);
        }
    }
}

/// Where sink `sink` of `stream` keeps its cursor on `shard`.
pub fn cursor_path(dir: &Path, stream: &str, shard: usize, sink: &str) -> PathBuf {
    dir.join(stream).join(format!("{shard:03}.{sink}.cursor"))
}

/// Writes a cursor atomically: a temporary file, made durable, renamed over the old one.
async fn persist(path: &Path, pos: Pos) -> std::io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&tmp)
        .await?;
    file.write_at(store_cursor_text(pos).into_bytes(), 0)
        .await?;
    file.fdatasync().await?;
    file.close().await?;
    glommio::io::rename(&tmp, path).await?;
    Ok(())
}

/// A record handed to the producer and not yet confirmed; or, without a delivery, the
/// passage from a sealed segment's end (or its torn or zero tail) to the next segment,
/// which the cursor takes once everything before it is confirmed.
struct Sent {
    from: Pos,
    to: Pos,
    bytes: u64,
    delivery: Option<Confirmation>,
}

/// An open segment being read.
struct Reading {
    seq: u32,
    header: SegmentHeader,
    file: BufferedFile,
}

/// What a chunk read ended with.
enum Chunk {
    /// Records were sent (or there was nothing to send).
    Sent(usize),
    /// The producer's queue is full: wait for deliveries.
    QueueFull,
    /// The producer refused a record, or the segment could not be read: what happened, and
    /// the state it is logged by (the same state is logged once).
    Failed(String, String),
}

/// One delivery task's state.
struct Delivery {
    shard: Rc<Shard>,
    sink: Rc<SinkRun>,
    cursor_file: PathBuf,
    /// Where the next record to send starts.
    read: Pos,
    inflight: VecDeque<Sent>,
    reading: Option<Reading>,
    /// The cursor as last persisted.
    persisted: Pos,
    persisted_at: Instant,
    backoff: Duration,
    /// The delivery error as last logged.
    failing: Option<String>,
}

impl Delivery {
    fn log(&self) -> &RefCell<StreamLog> {
        &self.shard.outbound.logs[self.sink.stream]
    }

    fn name(&self) -> String {
        format!(
            "shard {}: stream {}: sink {}",
            self.shard.id, self.shard.cfg.streams[self.sink.stream].name, self.sink.spec.name
        )
    }

    /// Opens segment `seq` for reading, unless it is open.
    async fn open(&mut self, seq: u32) -> std::io::Result<()> {
        if self.reading.as_ref().is_some_and(|r| r.seq == seq) {
            return Ok(());
        }
        if let Some(old) = self.reading.take() {
            let _ = old.file.close().await;
        }
        let s = &self.shard.cfg.streams[self.sink.stream];
        let path = segment_path(&self.shard.cfg.sinks.dir, &s.name, self.shard.id, seq);
        let file = OpenOptions::new().read(true).buffered_open(&path).await?;
        let head = file.read_at(0, SEGMENT_HEADER_BYTES).await?;
        let header = SegmentHeader::decode(&head)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        self.reading = Some(Reading { seq, header, file });
        Ok(())
    }

    /// Moves the read position past sealed segments read to their end (and gone ones); the
    /// cursor follows once the records before are confirmed.
    fn skip_sealed(&mut self) {
        let from = self.read;
        loop {
            let next = self.log().borrow().skip_sealed(self.read);
            if next == self.read {
                break;
            }
            self.read = next;
        }
        if self.read != from {
            self.inflight.push_back(Sent {
                from,
                to: self.read,
                bytes: 0,
                delivery: None,
            });
        }
    }

    /// Reads the next durable bytes and hands their records to the producer.
    async fn send_chunk(&mut self) -> std::io::Result<Chunk> {
        self.skip_sealed();
        let next = self.log().borrow().next_read(self.read);
        let Some((seq, from, to)) = next else {
            return Ok(Chunk::Sent(0));
        };
        self.read = Pos { seq, offset: from };
        self.open(seq).await?;
        let reading = self.reading.as_ref().expect("opened");
        let mut want = (to - from).min(DELIVERY_READ_BYTES);
        let buf = loop {
            let buf = reading.file.read_at(from, want as usize).await?;
            // A record larger than one read: read it whole.
            if buf.len() >= 4 {
                let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as u64;
                let whole = (RECORD_HEADER_BYTES as u64 + len).min(to - from);
                if whole > want {
                    want = whole;
                    continue;
                }
            }
            break buf;
        };
        let mut batch = self.sink.client.batch(&self.sink.spec.kafka.topic);
        let mut sent: Vec<Sent> = Vec::new();
        let mut at = 0usize;
        let outcome = loop {
            // A produce call costs about 2 µs of the reactor (`kafka/enqueue/produce`): a chunk
            // hands over at most DELIVERY_CHUNK_RECORDS, then the task yields.
            if self.inflight.len() + sent.len() >= DELIVERY_INFLIGHT_MAX
                || sent.len() >= DELIVERY_CHUNK_RECORDS
            {
                break Chunk::Sent(sent.len());
            }
            match record_at(&buf, at, from, &reading.header) {
                Next::Record(r, next) => match batch.add(r.key, r.payload) {
                    Ok(delivery) => {
                        sent.push(Sent {
                            from: Pos {
                                seq,
                                offset: r.offset,
                            },
                            to: Pos {
                                seq,
                                offset: (from + next as u64).min(to),
                            },
                            bytes: r.payload.len() as u64,
                            delivery: Some(delivery),
                        });
                        at = next;
                    }
                    Err(Enqueued::Full) => break Chunk::QueueFull,
                    Err(Enqueued::Refused(e)) => break Chunk::Failed(e.clone(), e),
                },
                Next::Partial if at > 0 => break Chunk::Sent(sent.len()),
                Next::Partial => {
                    // A whole read holds less than its first record: the record runs past the
                    // segment's end, a tail a crash cut short. The next segment follows.
                    eprintln!(
                        "{}: segment {seq}: a record cut short at offset {from}: skipping the \
                         rest of the segment",
                        self.name()
                    );
                    at = (to - from) as usize;
                    break Chunk::Sent(sent.len());
                }
                Next::End => {
                    // Zeros where the durable records should go on: a segment a crash cut
                    // short (its length counted its zeros). The next segment follows.
                    at = (to - from) as usize;
                    break Chunk::Sent(sent.len());
                }
                Next::Torn(why) => {
                    eprintln!(
                        "{}: segment {seq}: {why} at offset {}: skipping the rest of the segment",
                        self.name(),
                        from + at as u64
                    );
                    at = (to - from) as usize;
                    break Chunk::Sent(sent.len());
                }
            }
        };
        // The producer thread takes the chunk whole or not at all.
        let outcome = match batch.finish() {
            Ok(()) => outcome,
            Err(full_or_refused) => {
                at = 0;
                sent.clear();
                match full_or_refused {
                    Enqueued::Full => Chunk::QueueFull,
                    Enqueued::Refused(e) => Chunk::Failed(e.clone(), e),
                }
            }
        };
        self.inflight.extend(sent);
        self.read = Pos {
            seq,
            offset: (from + at as u64).min(to),
        };
        self.skip_sealed();
        Ok(outcome)
    }

    /// Takes the outcome of the oldest send: confirms it, or starts over from it.
    async fn settle(&mut self, result: Result<(), String>) {
        let sent = self.inflight.pop_front().expect("a send to settle");
        match result {
            Ok(()) => {
                self.log().borrow_mut().confirm(self.sink.index, sent.to);
                if sent.delivery.is_some() {
                    let mut st = self.sink.stats.borrow_mut();
                    st.delivered_records += 1;
                    st.delivered_bytes += sent.bytes;
                }
                self.backoff = DELIVERY_BACKOFF_MIN;
                if self.failing.take().is_some() {
                    eprintln!("{}: delivers again", self.name());
                }
            }
            Err(e) => {
                let from = sent.from;
                // Back in line, so that `failed` sees it with the sends after it.
                self.inflight.push_front(sent);
                self.failed(e.clone(), e, from).await;
            }
        }
    }

    /// A send failed: counts it, logs it when its state changed, and sends again from `from`
    /// (or the cursor, if records were given up past it) after a back-off. Sends after it
    /// may have succeeded: they are sent again (at least once).
    async fn failed(&mut self, e: String, state: String, from: Pos) {
        // Sends that `drop_oldest` gave up (behind the cursor) are not sent again: lost here.
        let cursor = self.log().borrow().cursor(self.sink.index);
        let given_up = self
            .inflight
            .iter()
            .filter(|s| s.delivery.is_some() && s.from < cursor)
            .count() as u64;
        {
            let mut st = self.sink.stats.borrow_mut();
            st.errors += 1;
            st.retries += 1;
            st.dropped_records += given_up;
        }
        if self.failing.as_deref() != Some(state.as_str()) {
            eprintln!(
                "{}: delivery failed: {e}; sending again from segment {} offset {} \
                 (logged again when this changes; counted in sluice_sink_delivery_errors_total)",
                self.name(),
                from.seq,
                from.offset
            );
            self.failing = Some(state);
        }
        self.inflight.clear();
        self.read = from.max(cursor);
        glommio::timer::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(DELIVERY_BACKOFF_MAX);
    }

    /// `drop_oldest`: gives up whole sealed segments while the backlog is full, counting the
    /// records of theirs not yet handed to the producer (those in flight may still be
    /// delivered; one that fails afterwards is counted then, in `failed`).
    async fn drop_if_full(&mut self) {
        let sink = self.sink.clone();
        let spec = &sink.spec;
        if spec.when_full != WhenFull::DropOldest {
            return;
        }
        let dropped = self
            .log()
            .borrow_mut()
            .drop_oldest(self.sink.index, spec.backlog_bytes_max);
        if dropped.is_empty() {
            return;
        }
        if let Some(wait) = crate::failpoint::pause("drop_oldest_counting") {
            glommio::timer::sleep(wait).await;
        }
        let mut records = 0;
        for &(seq, from, end) in &dropped {
            let unsent = if seq == self.read.seq {
                from.max(self.read.offset)
            } else if seq < self.read.seq {
                end
            } else {
                from
            };
            if unsent < end {
                records += self.count_records(seq, unsent, end).await;
            }
        }
        self.log().borrow_mut().counted(self.sink.index);
        let cursor = self.log().borrow().cursor(self.sink.index);
        if self.read < cursor {
            // Nothing in flight lies past the new cursor: sending starts over there.
            self.read = cursor;
        }
        self.sink.stats.borrow_mut().dropped_records += records;
        eprintln!(
            "{}: backlog reached backlog_bytes_max ({} bytes): gave up segments {:?} \
             ({records} records not yet sent; counted in sluice_sink_dropped_records_total)",
            self.name(),
            spec.backlog_bytes_max,
            dropped.iter().map(|d| d.0).collect::<Vec<_>>()
        );
    }

    /// Records in `[from, end)` of segment `seq` (0 when it cannot be read).
    async fn count_records(&mut self, seq: u32, from: u64, end: u64) -> u64 {
        if self.open(seq).await.is_err() {
            return 0;
        }
        let reading = self.reading.as_ref().expect("opened");
        let mut n = 0;
        let mut pos = from;
        while pos < end {
            let want = (end - pos).min(DELIVERY_READ_BYTES);
            let Ok(buf) = reading.file.read_at(pos, want as usize).await else {
                break;
            };
            let mut at = 0;
            while let Next::Record(_, next) = record_at(&buf, at, pos, &reading.header) {
                n += 1;
                at = next;
            }
            if at == 0 {
                // A record larger than a read, or the end.
                break;
            }
            pos += at as u64;
        }
        n
    }

    /// Persists the cursor if it moved and `force` or the interval passed.
    async fn persist_cursor(&mut self, force: bool) {
        let cursor = self.log().borrow().cursor(self.sink.index);
        if cursor == self.persisted || (!force && self.persisted_at.elapsed() < CURSOR_INTERVAL) {
            return;
        }
        match persist(&self.cursor_file, cursor).await {
            Ok(()) => self.persisted = cursor,
            Err(e) => eprintln!(
                "{}: saving the cursor {}: {e} (tried again; a restart sends again from the \
                 last saved one)",
                self.name(),
                self.cursor_file.display()
            ),
        }
        self.persisted_at = Instant::now();
    }

    /// Waits for the oldest send's outcome, a wake, or `wait`, and settles what came.
    async fn wait(&mut self, wait: Duration) {
        let sink = self.sink.clone();
        let outcome = {
            let timer = std::pin::pin!(glommio::timer::sleep(wait));
            let wake = std::pin::pin!(sink.wake.acquire(1));
            let woken = select(timer, wake);
            match self.inflight.front_mut().map(|f| f.delivery.as_mut()) {
                Some(Some(delivery)) => match select(delivery, woken).await {
                    Either::Left((r, _)) => Some(r),
                    Either::Right(_) => None,
                },
                Some(None) => Some(Ok(())),
                None => {
                    woken.await;
                    None
                }
            }
        };
        if let Some(r) = outcome {
            self.settle(r).await;
        }
    }

    /// Settles every send already confirmed or failed, without waiting.
    async fn settle_ready(&mut self) {
        use futures::FutureExt;
        while let Some(front) = self.inflight.front_mut() {
            let ready = match front.delivery.as_mut() {
                Some(delivery) => delivery.now_or_never(),
                None => Some(Ok(())),
            };
            match ready {
                Some(r) => self.settle(r).await,
                None => break,
            }
        }
    }
}

/// The delivery task of one sink on one shard: until the shard stops, then until what was
/// sent is confirmed (at most `shard.shutdown_timeout_ms`), and the cursor is saved.
pub(super) async fn deliver(shard: Rc<Shard>, sink: Rc<SinkRun>) {
    let stream = &shard.cfg.streams[sink.stream].name;
    let cursor_file = cursor_path(&shard.cfg.sinks.dir, stream, shard.id, &sink.spec.name);
    let start = shard.outbound.logs[sink.stream].borrow().cursor(sink.index);
    let mut d = Delivery {
        shard: shard.clone(),
        sink,
        cursor_file,
        read: start,
        inflight: VecDeque::new(),
        reading: None,
        persisted: start,
        persisted_at: Instant::now(),
        backoff: DELIVERY_BACKOFF_MIN,
        failing: None,
    };
    let mut stop_by: Option<Instant> = None;
    loop {
        d.settle_ready().await;
        d.drop_if_full().await;
        d.shard.outbound.update_blocked();
        if d.shard.outbound.closing.get() {
            let by = *stop_by.get_or_insert_with(|| {
                Instant::now() + Duration::from_millis(d.shard.cfg.tuning.shutdown_timeout_ms)
            });
            // What is durable is sent before the end, while the downstream keeps up.
            let caught_up = d.log().borrow().next_read(d.read).is_none();
            if (d.inflight.is_empty() && caught_up) || Instant::now() >= by {
                break;
            }
        }
        // Reads go on while fewer than half the sends allowed wait for their confirmation,
        // so that a read fills many sends rather than one.
        let chunk = if d.inflight.len() >= DELIVERY_INFLIGHT_MAX / 2 {
            Chunk::Sent(0)
        } else {
            match d.send_chunk().await {
                Ok(c) => c,
                Err(e) => Chunk::Failed(
                    format!("reading segment {}: {e}", d.read.seq),
                    format!(
                        "read: {}",
                        crate::os_error::describe(&std::io::Error::from(e.kind()))
                    ),
                ),
            }
        };
        match chunk {
            Chunk::Sent(n) if n > 0 => glommio::executor().yield_now().await,
            Chunk::Failed(e, state) => {
                let from = d.inflight.front().map_or(d.read, |s| s.from);
                d.failed(e, state, from).await;
            }
            Chunk::Sent(_) => d.wait(CURSOR_INTERVAL).await,
            Chunk::QueueFull => d.wait(QUEUE_FULL_WAIT).await,
        }
        d.persist_cursor(false).await;
    }
    d.persist_cursor(true).await;
    if let Some(r) = d.reading.take() {
        let _ = r.file.close().await;
    }
}

/// The retention task: once a second, deletes the segments each stream's log lets go, or
/// keeps one as a free file for the stream's writer to reuse (at most one a stream: the
/// writer takes one each time it moves to a new segment).
pub(super) async fn retain(shard: Rc<Shard>) {
    let cfg = shard.cfg.clone();
    loop {
        let tick = std::pin::pin!(glommio::timer::sleep(RETENTION_INTERVAL));
        if let Either::Right(_) = select(tick, shard.stopped.clone()).await {
            return;
        }
        for (i, s) in cfg.streams.iter().enumerate() {
            let expired =
                shard.outbound.logs[i]
                    .borrow_mut()
                    .expired(&s.retention, cfg.shards, now_ms());
            for seq in expired {
                let path = segment_path(&cfg.sinks.dir, &s.name, shard.id, seq);
                let gone = if shard.outbound.reuses[i]
                    && free_files(&cfg.sinks.dir, &s.name, shard.id).is_empty()
                {
                    let free = free_path(&cfg.sinks.dir, &s.name, shard.id, seq);
                    glommio::io::rename(&path, &free).await
                } else {
                    glommio::io::remove(&path).await
                };
                match gone {
                    Ok(()) => shard.outbound.deleted.borrow_mut()[i] += 1,
                    Err(e) => eprintln!(
                        "shard {}: stream {}: deleting {}: {e}",
                        shard.id,
                        s.name,
                        path.display()
                    ),
                }
            }
        }
    }
}
