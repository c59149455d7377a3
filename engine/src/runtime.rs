//! The runtime glue: one glommio executor per shard, pinned to its core, around the
//! synchronous [`Pipeline`].
//!
//! The model, per shard:
//!
//! - **Ingest.** The shard accepts on the shared port (SO_REUSEPORT spreads connections over
//!   shards) and on its own port. Each connection has a reader and an ack writer. The reader
//!   fills one reusable, 16-byte aligned buffer and takes every whole frame in it: a hello gets
//!   the partition map; a batch for a partition this shard owns goes through `step` in place;
//!   a batch for another shard's partition is copied and forwarded over a bounded channel.
//! - **Commit.** `step` leaves framed records in per-stream buffers. The committer writes them
//!   to the segment writers as they come and, under the durability policy, runs a sync round
//!   that makes everything written so far durable, then completes those batches (group
//!   commit).
//! - **Acks.** Each batch gets a one-shot reply; the connection's writer sends replies in the
//!   order the batches arrived, however they complete.
//! - **Backpressure.** Batch bytes between read and ack are charged to the shard's
//!   `inflight_bytes_max` budget, and a connection may have `connection_batches_max` batches
//!   unacked. When either is spent the reader stops reading, so TCP windows fill.
//!
//! Shards share nothing: cross-shard traffic is message passing over bounded channels, and
//! metrics are published into per-shard slots off the data path.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement, spawn_local};
use hdrhistogram::Histogram;
use sluice_protocol::frame::{FRAME_HEADER_BYTES, FrameHeader, decode_hello};
use sluice_protocol::{
    ALIGN, Ack, AckStatus, AlignedBuf, Error, FrameKind, HelloReply, Limits, ShardAddr,
    decode_frame_header,
};

use crate::config::{Config, Durability};
use crate::control::Control;
use crate::enrich::Tables;
use crate::enrich::remote::RemoteSpec;
use crate::lookup::{Done, LookupClient};
use crate::metrics::{LATENCY_US_MAX, Registry, ShardSnapshot, new_histogram};
use crate::pipeline::{BatchOutcome, Pipeline, StepError};
use crate::sink::segment::Kind;
use crate::sink::writer::{Durable, SegmentWriter, WriterSpec, sync_round};

/// A batch frame sent to the shard that owns its partition.
struct Forward {
    frame: AlignedBuf,
    reply: oneshot::Sender<Ack>,
    received: Instant,
}

/// A batch whose records wait in the output buffers for the next commit.
struct Pending {
    ack: Ack,
    reply: oneshot::Sender<Ack>,
    bytes: u64,
    received: Instant,
}

/// What a connection's writer sends next.
enum Reply {
    Now(Ack),
    Wait {
        done: oneshot::Receiver<Ack>,
        seq: u64,
        partition: u32,
    },
    Bytes(Rc<Vec<u8>>),
}

#[derive(Default)]
struct RuntimeStats {
    forwarded_out: u64,
    forwarded_in: u64,
    connections: u64,
    commits: u64,
    sink_errors: u64,
}

/// A shard's state, shared by its tasks (all on one thread).
struct Core {
    shard: usize,
    cfg: Arc<Config>,
    pipeline: RefCell<Pipeline>,
    pending: RefCell<Vec<Pending>>,
    /// Batch bytes the shard may still take before it acks some: `inflight_bytes_max` less
    /// what is in flight.
    inflight: Semaphore,
    wake: Semaphore,
    stats: RefCell<RuntimeStats>,
    latency_us: RefCell<Histogram<u64>>,
    write_us: RefCell<Histogram<u64>>,
    sync_us: RefCell<Histogram<u64>>,
    hello: Rc<Vec<u8>>,
    peers: RefCell<Vec<Option<Rc<ConnectedSender<Forward>>>>>,
    stopping: Cell<bool>,
    control: Arc<Control>,
    /// The route set revision the pipeline routes by.
    revision: Cell<u64>,
    /// The revision of the tables the pipeline's copy was made from.
    tables_revision: Cell<u64>,
    /// The client of the lookup service the customer table asks, once a batch needed it.
    lookup: RefCell<Option<Rc<LookupClient>>>,
    /// Batches between their two passes (the commit loop outlasts them at shutdown).
    two_pass: Cell<usize>,
}

impl Core {
    /// The client for the lookup service the tables ask now (a new one after a reload
    /// changed the service).
    fn lookup_client(&self, spec: &Arc<RemoteSpec>) -> Rc<LookupClient> {
        let mut client = self.lookup.borrow_mut();
        match &*client {
            Some(c) if c.spec() == spec => c.clone(),
            _ => {
                let c = LookupClient::new(spec.clone());
                *client = Some(c.clone());
                c
            }
        }
    }

    /// Puts the lookup service's answers received since the last batch into the tables.
    fn take_answers(&self) {
        if let Some(c) = &*self.lookup.borrow() {
            let mut pipeline = self.pipeline.borrow_mut();
            c.take_answers(|a| pipeline.answer(a));
        }
    }

    /// Runs a batch through the pipeline in two passes (a table asks a lookup service):
    /// opens it, asks for the keys it lacks, waits for them at most the time budget (the
    /// shard's other tasks run meanwhile), then, once `before` (the batch before it from the
    /// same source) is finished, enriches and routes it.
    async fn step_two_pass(
        &self,
        frame: &mut [u8],
        before: Option<Done>,
    ) -> Result<BatchOutcome, StepError> {
        self.take_answers();
        let opened = self.pipeline.borrow_mut().open(frame);
        let asked = {
            let pipeline = self.pipeline.borrow();
            let (misses, refresh) = pipeline.wants();
            match (&opened, pipeline.remote_spec()) {
                (Ok(_), Some(spec)) if !misses.is_empty() || !refresh.is_empty() => {
                    let client = self.lookup_client(spec);
                    let waits = client.ask(misses, refresh);
                    Some((client, waits))
                }
                _ => None,
            }
        };
        if let Some((client, waits)) = asked
            && !waits.is_empty()
        {
            client.wait(waits).await;
        }
        if let Some(before) = before {
            let _ = before.await;
        }
        let batch = opened?;
        self.take_answers();
        Ok(self.pipeline.borrow_mut().finish(batch))
    }

    /// Takes the newest route set if a reload published one. Call between batches.
    #[inline]
    fn adopt_routes(&self) {
        if self.control.published() == self.revision.get() {
            return;
        }
        if let Some(u) = self.control.latest() {
            let mut pipeline = self.pipeline.borrow_mut();
            if u.tables_revision != self.tables_revision.get() {
                pipeline.set_tables(Tables::clone(&u.tables));
                self.tables_revision.set(u.tables_revision);
            }
            pipeline.set_routes(u.routes.clone(), u.matcher.clone());
            self.revision.set(u.revision);
            self.control.running(self.shard, u.revision);
        }
    }
}

/// A running engine: its shard threads and admin endpoint.
pub struct Engine {
    shards: Vec<glommio::ExecutorJoinHandle<Result<(), String>>>,
    control: Arc<Control>,
    admin: Option<std::thread::JoinHandle<()>>,
    registry: Registry,
    stop: Arc<AtomicBool>,
}

struct ShardInit {
    shard: usize,
    cfg: Arc<Config>,
    registry: Registry,
    stop: Arc<AtomicBool>,
    peers: Vec<Option<SharedSender<Forward>>>,
    inbox: Vec<SharedReceiver<Forward>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    control: Arc<Control>,
}

impl Engine {
    /// Starts every shard and the admin endpoint; returns once all listen. Reloads read the
    /// config again from `source` (the embedded default when `None`).
    pub fn start(config: Config, source: Option<PathBuf>) -> Result<Engine, String> {
        let control = Arc::new(Control::new(&config, source));
        let cfg = Arc::new(config);
        let n = cfg.shards;
        let registry = Registry::new(n, cfg.streams.iter().map(|s| s.name.clone()).collect());
        let stop = Arc::new(AtomicBool::new(false));
        // One bounded channel per ordered pair of shards.
        let mut senders: Vec<Vec<Option<SharedSender<Forward>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut inboxes: Vec<Vec<SharedReceiver<Forward>>> = (0..n).map(|_| Vec::new()).collect();
        for (from, row) in senders.iter_mut().enumerate() {
            for (to, slot) in row.iter_mut().enumerate() {
                if from != to {
                    let (tx, rx) = shared_channel::new_bounded(cfg.tuning.forward_frames_max);
                    *slot = Some(tx);
                    inboxes[to].push(rx);
                }
            }
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut shards = Vec::with_capacity(n);
        for ((shard, peers), inbox) in senders.into_iter().enumerate().zip(inboxes) {
            let init = ShardInit {
                shard,
                cfg: cfg.clone(),
                registry: registry.clone(),
                stop: stop.clone(),
                peers,
                inbox,
                ready: ready_tx.clone(),
                control: control.clone(),
            };
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cfg.cores[shard]))
                .name(&format!("sluice-shard-{shard}"))
                .io_memory(cfg.tuning.io_memory_bytes)
                .spawn(move || shard_main(init))
                .map_err(|e| format!("shard {shard}: cannot start its executor: {e}"))?;
            shards.push(handle);
        }
        drop(ready_tx);
        let mut engine = Engine {
            shards,
            control,
            admin: None,
            registry,
            stop,
        };
        for _ in 0..n {
            match ready_rx.recv_timeout(Duration::from_secs(120)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    engine.stop_now();
                    return Err(e);
                }
                Err(_) => {
                    engine.stop_now();
                    return Err("a shard did not start".into());
                }
            }
        }
        let ready = Arc::new(AtomicBool::new(true));
        match crate::admin::serve(
            cfg.listen.admin,
            engine.registry.clone(),
            engine.control.clone(),
            ready,
            engine.stop.clone(),
        ) {
            Ok(h) => engine.admin = Some(h),
            Err(e) => {
                engine.stop_now();
                return Err(format!("admin {}: {e}", cfg.listen.admin));
            }
        }
        Ok(engine)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reloads the route set (see [`Control::reload`]).
    pub fn reload(&self) -> Result<String, String> {
        self.control.reload()
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        if let Some(a) = self.admin.take() {
            let _ = a.join();
        }
    }

    /// Stops taking batches, commits what was taken, closes the segments and joins.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first_err = None;
        for h in self.shards.drain(..) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(format!("a shard failed: {e}"));
                }
            }
        }
        if let Some(a) = self.admin.take() {
            let _ = a.join();
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn hello_reply(cfg: &Config) -> Vec<u8> {
    HelloReply {
        shards: (0..cfg.shards)
            .map(|s| ShardAddr {
                shard: s as u16,
                addr: cfg.shard_addr(s),
            })
            .collect(),
        owners: cfg.owners.clone(),
    }
    .encode()
}

async fn shard_main(init: ShardInit) -> Result<(), String> {
    let ShardInit {
        shard,
        cfg,
        registry,
        stop,
        peers,
        inbox,
        ready,
        control,
    } = init;
    let started = async {
        let mut writers = Vec::with_capacity(cfg.streams.len());
        for (i, s) in cfg.streams.iter().enumerate() {
            let kind = if i == cfg.dead_letter_stream() {
                Kind::DeadLetters
            } else {
                Kind::Records
            };
            let w = SegmentWriter::open(WriterSpec {
                dir: cfg.sinks.dir.clone(),
                stream: s.name.clone(),
                shard,
                kind,
                format: s.format,
                segment_bytes_max: cfg.sinks.segment_bytes_max,
                prefill_bytes: cfg.sinks.prefill_bytes,
            })
            .await
            .map_err(|e| format!("shard {shard}: stream {}: {e}", s.name))?;
            writers.push(w);
        }
        // The shard's own port first, without SO_REUSEPORT, so that a second engine on the
        // same ports fails here instead of silently sharing them.
        let own = bind_exclusive(cfg.shard_addr(shard))
            .map_err(|e| format!("shard {shard}: listen {}: {e}", cfg.shard_addr(shard)))?;
        let shared = TcpListener::bind(cfg.listen.shared)
            .map_err(|e| format!("shard {shard}: listen {}: {e}", cfg.listen.shared))?;
        Ok::<_, String>((writers, shared, own))
    }
    .await;
    let (writers, shared, own) = match started {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let tables = cfg.tables.clone();
    let core = Rc::new(Core {
        shard,
        pipeline: RefCell::new(Pipeline::new(&cfg, shard, tables)),
        pending: RefCell::new(Vec::new()),
        inflight: Semaphore::new(cfg.tuning.inflight_bytes_max as u64),
        wake: Semaphore::new(0),
        stats: RefCell::new(RuntimeStats::default()),
        latency_us: RefCell::new(new_histogram()),
        write_us: RefCell::new(new_histogram()),
        sync_us: RefCell::new(new_histogram()),
        hello: Rc::new(hello_reply(&cfg)),
        peers: RefCell::new(Vec::new()),
        stopping: Cell::new(false),
        control,
        revision: Cell::new(1),
        tables_revision: Cell::new(1),
        lookup: RefCell::new(None),
        two_pass: Cell::new(0),
        cfg,
    });
    for rx in inbox {
        let core = core.clone();
        spawn_local(async move {
            let rx = rx.connect().await;
            let order = Order::default();
            while let Some(f) = rx.recv().await {
                core.stats.borrow_mut().forwarded_in += 1;
                take_forwarded(&core, f, &order).await;
            }
        })
        .detach();
    }
    // Receivers connect in their tasks above; a sender's connect may wait for its receiver.
    for p in peers {
        let connected = match p {
            Some(p) => Some(Rc::new(p.connect().await)),
            None => None,
        };
        core.peers.borrow_mut().push(connected);
    }
    for listener in [shared, own] {
        let core = core.clone();
        spawn_local(async move {
            loop {
                let conn = listener.accept().await;
                let Ok(conn) = conn else { break };
                let core = core.clone();
                spawn_local(serve_connection(core, conn)).detach();
            }
        })
        .detach();
    }
    let committer = spawn_local(commit_loop(core.clone(), writers));
    let _ = ready.send(Ok(()));

    let interval = Duration::from_millis(core.cfg.tuning.metrics_interval_ms.max(10));
    let mut last_publish = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        // An idle shard takes a reload here.
        core.adopt_routes();
        if last_publish.elapsed() >= interval {
            registry.publish(snapshot(&core));
            last_publish = Instant::now();
        }
    }
    core.stopping.set(true);
    core.wake.signal(1);
    let result = committer.await;
    registry.publish(snapshot(&core));
    result
}

/// A listener on `addr` that no other socket shares (glommio's `bind` sets SO_REUSEPORT).
fn bind_exclusive(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let std_listener = std::net::TcpListener::bind(addr)?;
    let fd = std_listener.into_raw_fd();
    // SAFETY: `fd` is a listening TCP socket we own; ownership passes to the glommio listener.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

fn snapshot(core: &Core) -> ShardSnapshot {
    let stats = core.stats.borrow();
    ShardSnapshot {
        shard: core.shard,
        counters: core.pipeline.borrow().counters.clone(),
        forwarded_out: stats.forwarded_out,
        forwarded_in: stats.forwarded_in,
        connections: stats.connections,
        inflight_bytes: core.cfg.tuning.inflight_bytes_max as u64 - core.inflight.available(),
        commits: stats.commits,
        sink_errors: stats.sink_errors,
        route_revision: core.revision.get(),
        tables: {
            let mut tables = core.pipeline.borrow().table_stats();
            if let (Some(c), Some(r)) = (&*core.lookup.borrow(), tables[2].1.remote.as_mut()) {
                c.fill(r);
            }
            tables
        },
        latency_us: core.latency_us.borrow().clone(),
        write_us: core.write_us.borrow().clone(),
        sync_us: core.sync_us.borrow().clone(),
    }
}

/// Records the time since `since` into `hist`.
fn record_us(hist: &RefCell<Histogram<u64>>, since: Instant) {
    let us = since.elapsed().as_micros() as u64;
    hist.borrow_mut()
        .saturating_record(us.clamp(1, LATENCY_US_MAX));
}

/// Charges `bytes` to the shard's in-flight budget, waiting while it is spent.
async fn charge(core: &Core, bytes: u64) {
    let _ = core.inflight.acquire(bytes).await;
}

fn refund(core: &Core, bytes: u64) {
    core.inflight.signal(bytes);
}

fn rejected(seq: u64, partition: u32, status: AckStatus, error: u16) -> Ack {
    Ack {
        seq,
        partition,
        accepted: 0,
        dead_lettered: 0,
        status,
        error,
    }
}

/// Steps a batch this shard owns and queues it for the next commit.
fn take_local(
    core: &Core,
    frame: &mut [u8],
    (seq, partition): (u64, u32),
    reply: oneshot::Sender<Ack>,
    received: Instant,
) {
    let bytes = frame.len() as u64;
    core.adopt_routes();
    let result = core.pipeline.borrow_mut().step(frame);
    queue(core, result, (seq, partition), reply, bytes, received);
}

/// The batches from one source (a connection, or the frames other shards forward) that take
/// two passes: each is routed after the one before it, so their records keep the source's
/// order while their lookups overlap.
#[derive(Default)]
struct Order(RefCell<Option<Done>>);

/// Takes a batch in two passes ([`Core::step_two_pass`]) in a task of its own, so that the
/// source goes on with its next batches while this one waits for the lookup service.
fn take_two_pass(
    core: &Rc<Core>,
    mut frame: AlignedBuf,
    (seq, partition): (u64, u32),
    reply: oneshot::Sender<Ack>,
    received: Instant,
    order: &Order,
) {
    let (done, finished) = oneshot::channel::<()>();
    let before = order.0.replace(Some(finished.shared()));
    core.two_pass.set(core.two_pass.get() + 1);
    let core = core.clone();
    spawn_local(async move {
        let bytes = frame.len() as u64;
        core.adopt_routes();
        let result = core.step_two_pass(&mut frame, before).await;
        queue(&core, result, (seq, partition), reply, bytes, received);
        core.two_pass.set(core.two_pass.get() - 1);
        if core.stopping.get() {
            core.wake.signal(1);
        }
        drop(done);
    })
    .detach();
}

/// Queues a stepped batch for the next commit, or answers a frame refused.
fn queue(
    core: &Core,
    result: Result<BatchOutcome, StepError>,
    (seq, partition): (u64, u32),
    reply: oneshot::Sender<Ack>,
    bytes: u64,
    received: Instant,
) {
    match result {
        Ok(o) => {
            let mut pending = core.pending.borrow_mut();
            pending.push(Pending {
                ack: Ack {
                    seq,
                    partition: o.partition,
                    accepted: o.accepted,
                    dead_lettered: o.dead_lettered,
                    status: AckStatus::Ok,
                    error: 0,
                },
                reply,
                bytes,
                received,
            });
            if pending.len() == 1 {
                core.wake.signal(1);
            }
        }
        Err(e) => {
            refund(core, bytes);
            let code = match e {
                // Counted by the pipeline.
                StepError::Frame(e) => e.code(),
                StepError::NotOwned(p) => {
                    debug_assert!(false, "frames reach their owner: partition {p}");
                    let e = Error::NoSuchPartition {
                        partition: p,
                        partitions: core.cfg.partitions,
                    };
                    core.pipeline.borrow_mut().counters.reject_frame(&e);
                    e.code()
                }
            };
            let _ = reply.send(rejected(seq, partition, AckStatus::Rejected, code));
        }
    }
}

async fn take_forwarded(core: &Rc<Core>, mut f: Forward, order: &Order) {
    let id = echoed(&f.frame);
    if core.stopping.get() {
        let _ = f
            .reply
            .send(rejected(id.0, id.1, AckStatus::ShuttingDown, 0));
        return;
    }
    charge(core, f.frame.len() as u64).await;
    if core.pipeline.borrow().asks_service() {
        take_two_pass(core, f.frame, id, f.reply, f.received, order);
    } else {
        take_local(core, &mut f.frame, id, f.reply, f.received);
    }
}

/// The `seq` and `partition` fields of a frame's header as received (0 where not received),
/// which every ack echoes.
fn echoed(head: &[u8]) -> (u64, u32) {
    if head.len() < FRAME_HEADER_BYTES {
        return (0, 0);
    }
    let seq = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let partition = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    (seq, partition)
}

/// Refuses a frame whole for `e` (counted), echoing its `seq` and `partition`.
fn refuse(core: &Core, e: &Error, (seq, partition): (u64, u32)) -> Reply {
    core.pipeline.borrow_mut().counters.reject_frame(e);
    Reply::Now(rejected(seq, partition, AckStatus::Rejected, e.code()))
}

/// Checks the header that starts a connection's next frame. An error here leaves the stream
/// unreadable (the frame's length cannot be trusted, or the frame is of no kind a client
/// sends): the connection is answered and closed.
fn stream_header(head: &[u8], limits: &Limits) -> Result<FrameHeader, Error> {
    let h = decode_frame_header(head, limits)?;
    match h.kind {
        FrameKind::Batch => Ok(h),
        FrameKind::Hello if h.len() == FRAME_HEADER_BYTES => Ok(h),
        FrameKind::Hello => Err(Error::BadLength("a hello frame has no body")),
        other => Err(Error::BadKind(other as u8)),
    }
}

/// Takes one whole frame from a connection's buffer (its header checked by
/// [`stream_header`]) and says what to reply.
async fn take_frame(
    core: &Rc<Core>,
    header: FrameHeader,
    frame: &mut [u8],
    received: Instant,
    order: &Order,
) -> Reply {
    let id = (header.seq, header.partition);
    if header.kind == FrameKind::Hello {
        return match decode_hello(frame) {
            Ok(()) => Reply::Bytes(core.hello.clone()),
            Err(e) => refuse(core, &e, id),
        };
    }
    if core.stopping.get() {
        return Reply::Now(rejected(id.0, id.1, AckStatus::ShuttingDown, 0));
    }
    let Some(&owner) = core.cfg.owners.get(header.partition as usize) else {
        let e = Error::NoSuchPartition {
            partition: header.partition,
            partitions: core.cfg.partitions,
        };
        return refuse(core, &e, id);
    };
    let (tx, done) = oneshot::channel();
    let owner = usize::from(owner);
    if owner == core.shard {
        charge(core, frame.len() as u64).await;
        if core.pipeline.borrow().asks_service() {
            let mut copy = AlignedBuf::with_capacity(frame.len());
            copy.extend_from_slice(frame);
            take_two_pass(core, copy, id, tx, received, order);
        } else {
            take_local(core, frame, id, tx, received);
        }
    } else {
        let mut copy = AlignedBuf::with_capacity(frame.len());
        copy.extend_from_slice(frame);
        core.stats.borrow_mut().forwarded_out += 1;
        let f = Forward {
            frame: copy,
            reply: tx,
            received,
        };
        let peer = core.peers.borrow()[owner].clone();
        let peer = peer.expect("a channel to every other shard");
        // If the owner is gone the reply is dropped with the frame, and the writer acks the
        // batch as shutting down.
        let _ = peer.send(f).await;
    }
    Reply::Wait {
        done,
        seq: id.0,
        partition: id.1,
    }
}

async fn serve_connection(core: Rc<Core>, conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    core.stats.borrow_mut().connections += 1;
    let (mut rd, wr) = conn.split();
    let (tx, rx) = local_channel::new_bounded(core.cfg.tuning.connection_batches_max);
    let writer = spawn_local(write_replies(rx, wr));
    read_frames(&core, &mut rd, &tx).await;
    drop(tx);
    writer.await;
    core.stats.borrow_mut().connections -= 1;
}

async fn read_frames(
    core: &Rc<Core>,
    rd: &mut futures::io::ReadHalf<TcpStream>,
    tx: &LocalSender<Reply>,
) {
    let order = Order::default();
    let cap = core.cfg.tuning.read_buffer_bytes.next_multiple_of(ALIGN);
    let limits = *core.pipeline.borrow().limits();
    let mut buf = AlignedBuf::with_capacity(cap);
    buf.resize(cap, 0);
    let mut filled = 0;
    // Answers `e` and hangs up: the stream cannot be read past it.
    let close = async |e: Error, head: &[u8]| {
        core.pipeline.borrow_mut().counters.close_connection(&e);
        let _ = tx.send(refuse(core, &e, echoed(head))).await;
    };
    loop {
        let n = match rd.read(&mut buf[filled..]).await {
            Ok(0) if filled > 0 => {
                // The client half-closed in the middle of a frame.
                let needed = match decode_frame_header(&buf[..filled], &limits) {
                    Ok(h) => h.len(),
                    Err(_) => FRAME_HEADER_BYTES,
                };
                let e = Error::Truncated {
                    needed,
                    available: filled,
                };
                close(e, &buf[..filled]).await;
                return;
            }
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        let received = Instant::now();
        let mut at = 0;
        while filled - at >= FRAME_HEADER_BYTES {
            let head = &buf[at..at + FRAME_HEADER_BYTES];
            let header = match stream_header(head, &limits) {
                Ok(h) => h,
                Err(e) => {
                    close(e, head).await;
                    return;
                }
            };
            let len = header.len();
            if filled - at < len {
                break;
            }
            let reply = take_frame(core, header, &mut buf[at..at + len], received, &order).await;
            if tx.send(reply).await.is_err() {
                return;
            }
            at += len;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
    }
}

async fn write_replies(rx: LocalReceiver<Reply>, mut wr: futures::io::WriteHalf<TcpStream>) {
    let mut out = Vec::with_capacity(64 << 10);
    let mut next = rx.recv().await;
    while let Some(reply) = next {
        match reply {
            Reply::Now(ack) => out.extend_from_slice(&ack.encode()),
            Reply::Bytes(b) => out.extend_from_slice(&b),
            Reply::Wait {
                mut done,
                seq,
                partition,
            } => {
                let done = match (&mut done).now_or_never() {
                    Some(r) => r,
                    None => {
                        // Send what is ready before waiting.
                        if flush(&mut wr, &mut out).await.is_err() {
                            return;
                        }
                        done.await
                    }
                };
                let ack =
                    done.unwrap_or_else(|_| rejected(seq, partition, AckStatus::ShuttingDown, 0));
                out.extend_from_slice(&ack.encode());
            }
        }
        next = match rx.recv().now_or_never() {
            Some(r) => r,
            None => {
                if flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                rx.recv().await
            }
        };
    }
    if !out.is_empty() {
        let _ = wr.write_all(&out).await;
    }
    let _ = wr.flush().await;
}

/// Writes out what `out` holds, if anything, and empties it.
async fn flush(
    wr: &mut futures::io::WriteHalf<TcpStream>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Writes the shard's output as it comes and completes batches under the durability policy.
///
/// Writing does not wait for the policy: whenever batches have left records in the output
/// buffers, the committer writes them to their segments (all streams at once), so that the
/// disk works while the interval runs. A sync round then makes everything written since the
/// last one durable (see [`sync_round`]) and acks those batches: at once under `every_batch`,
/// at most every N µs under `interval_us` (sooner once `commit_bytes_max` bytes wait), never
/// under `none`, which acks when the write completes.
async fn commit_loop(core: Rc<Core>, mut writers: Vec<SegmentWriter>) -> Result<(), String> {
    let durability = core.cfg.sinks.durability;
    let commit_bytes_max = core.cfg.tuning.commit_bytes_max;
    let mut drained: Vec<Vec<u8>> = writers.iter().map(|_| Vec::new()).collect();
    // Batches whose records are written, waiting for the next sync round.
    let mut written: Vec<Pending> = Vec::new();
    let mut written_bytes = 0usize;
    // The strongest need of each writer since the last sync round.
    let mut needs: Vec<Durable> = vec![Durable::Nothing; writers.len()];
    // A write failed since the last round: its batches are not acked as stored.
    let mut failed = false;
    let mut last_sync = Instant::now();
    loop {
        let has_output = !core.pending.borrow().is_empty();
        if !has_output && written.is_empty() {
            if core.stopping.get() && core.two_pass.get() == 0 {
                break;
            }
            let _ = core.wake.acquire(1).await;
            continue;
        }
        if has_output {
            {
                let mut p = core.pipeline.borrow_mut();
                for (out, d) in p.out.iter_mut().zip(drained.iter_mut()) {
                    std::mem::swap(&mut out.buf, d);
                }
            }
            written.append(&mut core.pending.borrow_mut());
            written_bytes += drained.iter().map(Vec::len).sum::<usize>();
            let started = Instant::now();
            let appends = writers.iter_mut().zip(&drained).map(|(w, d)| async move {
                w.append(d)
                    .await
                    .map_err(|e| format!("stream {}: write failed: {e}", w.stream()))
            });
            for (need, r) in needs
                .iter_mut()
                .zip(futures::future::join_all(appends).await)
            {
                match r {
                    Ok(d) => *need = (*need).max(d),
                    Err(e) => {
                        failed = true;
                        eprintln!("shard {}: {e}", core.shard);
                    }
                }
            }
            for d in &mut drained {
                d.clear();
            }
            record_us(&core.write_us, started);
        }
        if let Durability::IntervalUs(us) = durability {
            let due = last_sync + Duration::from_micros(us);
            let now = Instant::now();
            if now < due && written_bytes < commit_bytes_max && !core.stopping.get() {
                if core.pending.borrow().is_empty() {
                    // Until the round is due, or more output comes to write.
                    let sleep = std::pin::pin!(glommio::timer::sleep(due - now));
                    let wake = std::pin::pin!(core.wake.acquire(1));
                    let _ = futures::future::select(sleep, wake).await;
                }
                continue;
            }
        }
        if durability != Durability::None && !failed {
            last_sync = Instant::now();
            for e in sync_round(&writers, &needs).await {
                failed = true;
                eprintln!("shard {}: {e}", core.shard);
            }
            record_us(&core.sync_us, last_sync);
            core.stats.borrow_mut().commits += 1;
        }
        if failed {
            core.stats.borrow_mut().sink_errors += 1;
        }
        let now = Instant::now();
        let mut hist = core.latency_us.borrow_mut();
        for b in written.drain(..) {
            let mut ack = b.ack;
            if failed {
                // Not stored: the client must send the batch again.
                ack.status = AckStatus::Overloaded;
                ack.accepted = 0;
                ack.dead_lettered = 0;
            }
            let us = now.duration_since(b.received).as_micros() as u64;
            hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
            let _ = b.reply.send(ack);
            refund(&core, b.bytes);
        }
        drop(hist);
        needs.fill(Durable::Nothing);
        written_bytes = 0;
        failed = false;
    }
    for w in writers {
        let name = w.stream().to_owned();
        w.close()
            .await
            .map_err(|e| format!("shard {}: closing stream {name}: {e}", core.shard))?;
    }
    Ok(())
}
