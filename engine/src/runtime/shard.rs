//! A shard's state, shared by its tasks (all on one thread), and its main loop: start-up,
//! housekeeping (reloads, metrics) and the orderly stop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;
use glommio::channels::shared_channel::ConnectedSender;
use glommio::spawn_local;
use glommio::sync::Semaphore;
use hdrhistogram::Histogram;
use sluice_protocol::{Ack, AckStatus, AlignedBuf, Error, HelloReply, ShardAddr};

use super::ShardInit;
use super::deliver::{self, Outbound};
use super::forward::{self, Forward};
use super::ingest;
use super::lookup::LookupClient;
use super::two_pass::{self, Order};
use crate::commit::{Budget, Committer};
use crate::config::Config;
use crate::consts::{
    ACCEPT_DOWN_HOLD, METRICS_INTERVAL_MIN, SHARD_TICK, SINK_BLOCKED_POLL, TRIM_AFTER_CONNECTIONS,
    TRIM_INTERVAL_MIN,
};
use crate::control::Control;
use crate::enrich::Tables;
use crate::metrics::{LATENCY_US_MAX, ShardSnapshot, new_histogram};
use crate::pipeline::{BatchOutcome, Pipeline, StepError};
use crate::sink::segment::SegmentKind;
use crate::sink::writer::{SegmentWriter, WriterSpec};
use crate::source::Coord;

/// A batch frame to take: where it was read, or a copy this shard owns.
pub(super) enum Frame<'a> {
    InPlace(&'a mut [u8]),
    Owned(AlignedBuf),
    /// Built from consumed messages, with each envelope's coordinates.
    Consumed(AlignedBuf, Vec<Coord>),
}

impl Frame<'_> {
    fn len(&self) -> usize {
        match self {
            Frame::InPlace(f) => f.len(),
            Frame::Owned(f) | Frame::Consumed(f, _) => f.len(),
        }
    }
}

/// What the ack of a batch waits on until its records are stored.
pub(super) struct Ticket {
    pub ack: Ack,
    pub reply: oneshot::Sender<Ack>,
    pub received: Instant,
}

#[derive(Default)]
pub(super) struct RuntimeStats {
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub connections: u64,
    /// Connections refused at `connections_max`.
    pub connections_refused: u64,
    /// Failed accepts, by [`crate::metrics::ACCEPT_ERRORS`].
    pub accept_errors: [u64; crate::metrics::ACCEPT_ERRORS.len()],
    /// Why each listener (shared port, own port) cannot accept, and when an accept last
    /// failed, while it cannot.
    pub listeners_down: [Option<(String, Instant)>; 2],
    /// Connections closed for sending nothing, and for a frame that did not complete in time.
    pub timed_out: [u64; 2],
    /// Bytes of the connections' receive buffers.
    pub receive_buffer_bytes: u64,
    /// Connections ended since the allocator was last asked to give back free memory.
    pub ended_since_trim: u64,
}

/// The shard's in-flight budget, its one owner: batch bytes between read and ack. The
/// [`Budget`] keeps the balance; the semaphore lets readers wait while it is spent, and the
/// two always agree.
pub(super) struct Inflight {
    budget: RefCell<Budget>,
    waiters: Semaphore,
}

impl Inflight {
    fn new(max: u64) -> Self {
        Inflight {
            budget: RefCell::new(Budget::new(max)),
            waiters: Semaphore::new(max),
        }
    }

    /// Charges `bytes`, waiting while the budget is spent.
    pub async fn charge(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        // The units are given back by `refund`; the semaphore is never closed.
        let _ = self.waiters.acquire(bytes).await;
        let mut b = self.budget.borrow_mut();
        assert!(
            b.try_charge(bytes),
            "the semaphore let in more than the budget"
        );
        assert_eq!(
            b.available(),
            self.waiters.available(),
            "the budget balances"
        );
    }

    /// Charges `bytes` as `charge` does, giving up at `deadline`: whether it was charged.
    pub async fn charge_by(&self, bytes: u64, deadline: Instant) -> bool {
        if let Some(()) = self.charge(bytes).now_or_never() {
            return true;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let charged = std::pin::pin!(self.charge(bytes));
        let timer = std::pin::pin!(glommio::timer::sleep(wait));
        matches!(
            futures::future::select(charged, timer).await,
            futures::future::Either::Left(_)
        )
    }

    pub fn refund(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut b = self.budget.borrow_mut();
        b.refund(bytes);
        self.waiters.signal(bytes);
        assert_eq!(
            b.available(),
            self.waiters.available(),
            "the budget balances"
        );
    }

    pub fn held(&self) -> u64 {
        self.budget.borrow().held()
    }
}

/// A shard's state.
pub(super) struct Shard {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub pipeline: RefCell<Pipeline>,
    pub committer: RefCell<Committer<Ticket>>,
    pub inflight: Inflight,
    /// Wakes the commit task: batches were queued, or the shard stops.
    pub wake: Semaphore,
    pub stats: RefCell<RuntimeStats>,
    pub latency_us: RefCell<Histogram<u64>>,
    pub write_us: RefCell<Histogram<u64>>,
    pub sync_us: RefCell<Histogram<u64>>,
    /// The hello reply: the shard table and the partition map.
    pub hello: Rc<Vec<u8>>,
    pub peers: RefCell<Vec<Option<Rc<ConnectedSender<Forward>>>>>,
    pub stopping: Cell<bool>,
    /// Resolves when the shard stops: readers and listeners waiting on their sockets wake.
    pub stopped: Shared<oneshot::Receiver<()>>,
    control: Arc<Control>,
    /// The route set revision the pipeline routes by.
    pub revision: Cell<u64>,
    /// The revision of the tables the pipeline's copy was made from.
    tables_revision: Cell<u64>,
    /// The client of the lookup service the customer table asks, once a batch needed it.
    pub lookup: RefCell<Option<Rc<LookupClient>>>,
    /// Batches between their two passes (the commit task outlasts them at shutdown).
    pub two_pass: Cell<usize>,
    /// Connections served at once; one more is refused.
    pub connections_max: usize,
    /// The streams' logs, network sinks and retention.
    pub outbound: Outbound,
}

impl Shard {
    /// Takes the newest route set if a reload published one. Call between batches.
    #[inline]
    pub fn adopt_routes(&self) {
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
            self.control.running(self.id, u.revision);
        }
    }

    /// The partition's owner, or the error that refuses a frame for it.
    pub fn owner(&self, partition: u32) -> Result<usize, Error> {
        match self.cfg.owners.get(partition as usize) {
            Some(&owner) => Ok(usize::from(owner)),
            None => Err(Error::NoSuchPartition {
                partition,
                partitions: self.cfg.partitions,
            }),
        }
    }

    /// Takes a batch this shard owns: charges it to the budget (waiting while that is spent)
    /// unless its reader did (`prepaid`, the frame's length), then steps it in place, or in
    /// two passes when a table asks a lookup service, and queues it for the next commit.
    /// `reply` gets its ack.
    pub async fn take_owned(
        self: &Rc<Self>,
        frame: Frame<'_>,
        id: (u64, u32),
        reply: oneshot::Sender<Ack>,
        received: Instant,
        order: &Order,
        prepaid: u64,
    ) {
        let bytes = frame.len() as u64;
        debug_assert!(prepaid == 0 || prepaid == bytes, "a frame is charged whole");
        if !self.admit(bytes, prepaid).await {
            let _ = reply.send(rejected(id.0, id.1, AckStatus::ShuttingDown, 0));
            return;
        }
        if self.pipeline.borrow().asks_service() {
            let (frame, sources) = match frame {
                Frame::InPlace(f) => {
                    let mut copy = AlignedBuf::with_capacity(f.len());
                    copy.extend_from_slice(f);
                    (copy, Vec::new())
                }
                Frame::Owned(f) => (f, Vec::new()),
                Frame::Consumed(f, sources) => (f, sources),
            };
            two_pass::take(self, frame, sources, id, reply, received, order);
        } else {
            let mut frame = frame;
            let (frame, sources): (&mut [u8], &[Coord]) = match &mut frame {
                Frame::InPlace(f) => (f, &[]),
                Frame::Owned(f) => (f, &[]),
                Frame::Consumed(f, sources) => (f, sources),
            };
            self.adopt_routes();
            let result = self.pipeline.borrow_mut().step_from(frame, sources);
            self.queue(result, id, reply, bytes, received);
        }
    }

    /// Waits until the shard may take a batch of `bytes` (a full `block` sink holds it, the
    /// budget is charged unless its reader did, `prepaid`); false, with the charge refunded,
    /// when the shard began to stop meanwhile (the batch is to be answered as shutting down).
    async fn admit(&self, bytes: u64, prepaid: u64) -> bool {
        // A `block` sink's backlog is full: take nothing new until it drains (the reader
        // waits here, so TCP windows fill).
        while self.outbound.blocked.get() && !self.stopping.get() {
            glommio::timer::sleep(SINK_BLOCKED_POLL).await;
            self.outbound.update_blocked();
        }
        if prepaid == 0 {
            self.inflight.charge(bytes).await;
        }
        // A shard that began to stop while this waited for the budget takes nothing more
        // (its committer may be done).
        if self.stopping.get() {
            self.inflight.refund(bytes);
            return false;
        }
        true
    }

    /// Takes a consumed message that is not one envelope: dead-letters it, with its
    /// coordinates, as a batch of its own.
    pub async fn take_reject(
        &self,
        r: crate::source::kafka::Reject,
        reply: oneshot::Sender<Ack>,
        received: Instant,
    ) {
        let bytes = r.raw.len() as u64;
        if !self.admit(bytes, 0).await {
            let _ = reply.send(rejected(0, r.partition, AckStatus::ShuttingDown, 0));
            return;
        }
        let o = self.pipeline.borrow_mut().reject_message(
            r.partition,
            &r.error,
            &r.raw,
            r.partition_key,
            &r.source,
        );
        self.queue(Ok(o), (0, r.partition), reply, bytes, received);
    }

    /// Queues a stepped batch for the next commit, or answers a frame refused.
    pub fn queue(
        &self,
        result: Result<BatchOutcome, StepError>,
        (seq, partition): (u64, u32),
        reply: oneshot::Sender<Ack>,
        bytes: u64,
        received: Instant,
    ) {
        match result {
            Ok(o) => {
                debug_assert_eq!(self.owner(o.partition), Ok(self.id), "stepped by its owner");
                let ticket = Ticket {
                    ack: Ack {
                        seq,
                        partition: o.partition,
                        accepted: o.accepted,
                        dead_lettered: o.dead_lettered,
                        status: AckStatus::Ok,
                        error: 0,
                    },
                    reply,
                    received,
                };
                if self.committer.borrow_mut().queue(ticket, bytes) {
                    self.wake.signal(1);
                }
            }
            Err(e) => {
                self.inflight.refund(bytes);
                let code = match e {
                    // Counted by the pipeline.
                    StepError::Frame(e) => e.code(),
                    StepError::NotOwned(p) => {
                        debug_assert!(false, "frames reach their owner: partition {p}");
                        let e = Error::NoSuchPartition {
                            partition: p,
                            partitions: self.cfg.partitions,
                        };
                        self.pipeline.borrow_mut().counters.reject_frame(&e);
                        e.code()
                    }
                };
                let _ = reply.send(rejected(seq, partition, AckStatus::Rejected, code));
            }
        }
    }

    fn snapshot(&self) -> ShardSnapshot {
        let stats = self.stats.borrow();
        let commit = self.committer.borrow().stats();
        let pipeline = self.pipeline.borrow();
        let lookup = self.lookup.borrow();
        ShardSnapshot {
            shard: self.id,
            counters: pipeline.counters.clone(),
            forwarded_out: stats.forwarded_out,
            forwarded_in: stats.forwarded_in,
            connections: stats.connections,
            connections_refused: stats.connections_refused,
            accept_errors: stats.accept_errors,
            // Down while an accept failed within the hold (or until one works after it).
            listeners_down: stats
                .listeners_down
                .iter()
                .flatten()
                .filter(|(_, last)| last.elapsed() < ACCEPT_DOWN_HOLD)
                .map(|(why, _)| why.clone())
                .collect(),
            timed_out: stats.timed_out,
            receive_buffer_bytes: stats.receive_buffer_bytes,
            inflight_bytes: self.inflight.held(),
            commits: commit.commits,
            sink_errors: commit.failed_rounds,
            route_revision: self.revision.get(),
            tables: pipeline.table_stats(|remote| {
                if let Some(c) = &*lookup {
                    c.fill(remote);
                }
            }),
            latency_us: self.latency_us.borrow().clone(),
            write_us: self.write_us.borrow().clone(),
            sync_us: self.sync_us.borrow().clone(),
            sinks: self.outbound.snapshot(&self.cfg),
            segments_deleted: self.outbound.deleted.borrow().clone(),
            segments_reused: self.outbound.reused.borrow().clone(),
        }
    }
}

/// An ack that refuses a frame (or answers it while shutting down).
pub(super) fn rejected(seq: u64, partition: u32, status: AckStatus, error: u16) -> Ack {
    Ack {
        seq,
        partition,
        accepted: 0,
        dead_lettered: 0,
        status,
        error,
    }
}

/// Records the time since `since` into `hist`.
pub(super) fn record_us(hist: &RefCell<Histogram<u64>>, since: Instant) {
    let us = since.elapsed().as_micros() as u64;
    hist.borrow_mut()
        .saturating_record(us.clamp(1, LATENCY_US_MAX));
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

/// Opens the shard's segment writers, one per stream.
async fn open_writers(cfg: &Config, shard: usize) -> Result<Vec<SegmentWriter>, String> {
    let mut writers = Vec::with_capacity(cfg.streams.len());
    for (i, s) in cfg.streams.iter().enumerate() {
        let kind = if i == cfg.dead_letter_stream() {
            SegmentKind::DeadLetters
        } else {
            SegmentKind::Records
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
    Ok(writers)
}

/// Asks the allocator to return its free pages to the system. Each connection's state is a
/// few small allocations; after thousands closed, the allocator keeps their pages unless
/// asked (its heaps only shrink from the top on their own).
fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The shard's thread: opens its writers and listeners, starts its tasks, then keeps house
/// until the engine stops, and commits what it took before it returns.
pub(super) async fn run(init: ShardInit) -> Result<(), String> {
    let ShardInit {
        shard: id,
        cfg,
        registry,
        stop,
        peers,
        inbox,
        ready,
        control,
        connections_max,
        clients,
        sources,
    } = init;
    let started = async {
        let writers = open_writers(&cfg, id).await?;
        let current: Vec<u32> = writers.iter().map(|w| w.position().0).collect();
        // Only where nothing in the engine reads the segments: a network sink's delivery task
        // may hold one open (and count what `drop_oldest` gave up) while retention lets it go.
        let reuses = writers
            .iter()
            .zip(&cfg.streams)
            .map(|(w, s)| w.reuses_files() && s.sinks.is_empty())
            .collect();
        let outbound = Outbound::open(&cfg, id, &current, reuses, &clients)?;
        let listeners = ingest::listen(&cfg, id)?;
        Ok::<_, String>((writers, outbound, listeners))
    }
    .await;
    let (writers, outbound, listeners) = match started {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let (stop_now, stopped) = oneshot::channel::<()>();
    let shard = Rc::new(Shard {
        id,
        pipeline: RefCell::new(Pipeline::new(&cfg, id, cfg.tables.clone())),
        committer: RefCell::new(Committer::new(
            cfg.sinks.durability,
            cfg.tuning.commit_bytes_max,
            cfg.streams.len(),
            Instant::now(),
        )),
        inflight: Inflight::new(cfg.tuning.inflight_bytes_max as u64),
        wake: Semaphore::new(0),
        stats: RefCell::new(RuntimeStats::default()),
        latency_us: RefCell::new(new_histogram()),
        write_us: RefCell::new(new_histogram()),
        sync_us: RefCell::new(new_histogram()),
        hello: Rc::new(hello_reply(&cfg)),
        peers: RefCell::new(Vec::new()),
        stopping: Cell::new(false),
        stopped: stopped.shared(),
        control,
        revision: Cell::new(1),
        tables_revision: Cell::new(1),
        lookup: RefCell::new(None),
        two_pass: Cell::new(0),
        connections_max,
        outbound,
        cfg,
    });
    forward::connect(&shard, inbox, peers).await;
    ingest::accept(&shard, listeners);
    for end in sources {
        spawn_local(super::consume::take_chunks(shard.clone(), end)).detach();
    }
    let committer = spawn_local(super::commit::run(shard.clone(), writers));
    let deliveries: Vec<_> = shard
        .outbound
        .sinks
        .iter()
        .map(|k| spawn_local(deliver::deliver(shard.clone(), k.clone())))
        .collect();
    let retention = spawn_local(deliver::retain(shard.clone()));
    let _ = ready.send(Ok(()));

    let interval = METRICS_INTERVAL_MIN.max(std::time::Duration::from_millis(
        shard.cfg.tuning.metrics_interval_ms,
    ));
    let mut last_publish = Instant::now();
    let mut last_trim = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(SHARD_TICK).await;
        // An idle shard takes a reload here.
        shard.adopt_routes();
        if shard.stats.borrow().ended_since_trim >= TRIM_AFTER_CONNECTIONS
            && last_trim.elapsed() >= TRIM_INTERVAL_MIN
        {
            give_back_free_memory();
            shard.stats.borrow_mut().ended_since_trim = 0;
            last_trim = Instant::now();
        }
        if last_publish.elapsed() >= interval {
            registry.publish(shard.snapshot());
            last_publish = Instant::now();
        }
    }
    // Stop accepting and reading; answer every frame read (acked once committed, or
    // shutting down); commit; then let each connection send its replies and close cleanly,
    // for at most `shutdown_timeout_ms`.
    shard.stopping.set(true);
    let _ = stop_now.send(());
    shard.committer.borrow_mut().stop();
    shard.wake.signal(1);
    let result = committer.await;
    // The sinks send what the last commit made durable, for at most shutdown_timeout_ms,
    // and save their cursors.
    shard.outbound.close();
    for d in deliveries {
        d.await;
    }
    retention.await;
    let deadline =
        Instant::now() + std::time::Duration::from_millis(shard.cfg.tuning.shutdown_timeout_ms);
    while shard.stats.borrow().connections > 0 && Instant::now() < deadline {
        glommio::timer::sleep(SHARD_TICK).await;
    }
    let open = shard.stats.borrow().connections;
    if open > 0 {
        eprintln!(
            "sluice: shard {id}: {open} connections still closing after shard.shutdown_timeout_ms; \
             dropping them"
        );
    }
    registry.publish(shard.snapshot());
    result
}
