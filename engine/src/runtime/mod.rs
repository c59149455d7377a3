//! The runtime glue: one glommio executor per shard, pinned to its core, around the
//! synchronous [`Pipeline`](crate::pipeline::Pipeline) and the I/O-free
//! [`Committer`](crate::commit::Committer). Nothing here decides policy; it carries out what
//! those two ask.
//!
//! The model, per shard:
//!
//! - **Ingest** ([`ingest`]). The shard accepts on the shared port (SO_REUSEPORT spreads
//!   connections over shards) and on its own port. Each connection has a reader and an ack
//!   writer. The reader fills one reusable, 16-byte aligned buffer and takes every whole frame
//!   the [`FrameSplitter`](sluice_protocol::FrameSplitter) finds in it: a hello gets the
//!   partition map; a batch for a partition this shard owns goes through `step` in place; a
//!   batch for another shard's partition is copied and forwarded ([`forward`]).
//! - **Two passes** ([`two_pass`]). When a table asks a lookup service ([`lookup`]), a batch
//!   is opened, its missing keys asked for, and it is finished once they came (or its time
//!   budget ran out), in the order of its source.
//! - **Commit** ([`commit`]). `step` leaves framed records in per-stream buffers; the commit
//!   task writes them to the segment writers and runs sync rounds as the committer says, then
//!   sends each released batch its ack.
//! - **Acks.** Each batch gets a one-shot reply; the connection's writer sends replies in the
//!   order the batches arrived, however they complete.
//! - **Backpressure.** Batch bytes between read and ack are charged to the shard's
//!   `inflight_bytes_max` budget ([`shard::Inflight`]), and a connection may have
//!   `connection_batches_max` batches unacked. When either is spent the reader stops reading,
//!   so TCP windows fill.
//!
//! Shards share nothing: cross-shard traffic is message passing over bounded channels, and
//! metrics are published into per-shard slots off the data path.
//!
//! A new source goes beside [`ingest`]: it hands batches to [`shard::Shard::take`] (charged to
//! the budget first) and sends each reply on when it resolves. A new sink of a stream goes
//! beside [`commit`]: it reads what the segment writers wrote, never the shard's buffers.

mod commit;
mod consume;
mod deliver;
mod forward;
mod ingest;
pub mod lookup;
mod recv;
mod shard;
mod two_pass;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::consts::{CONNECTIONS_MAX, SHARD_START_TIMEOUT};
use crate::control::Control;
use crate::metrics::Registry;
use crate::sink::kafka::SinkClient;
use forward::Forward;

/// A running engine: its shard threads and admin endpoint.
pub struct Engine {
    shards: Vec<glommio::ExecutorJoinHandle<Result<(), String>>>,
    control: Arc<Control>,
    admin: Option<std::thread::JoinHandle<()>>,
    registry: Registry,
    stop: Arc<AtomicBool>,
    /// The Kafka sources' group threads, stopped before the shards.
    sources: Vec<consume::SourceRun>,
}

/// What a shard's thread starts from.
struct ShardInit {
    shard: usize,
    cfg: Arc<Config>,
    registry: Registry,
    stop: Arc<AtomicBool>,
    peers: Vec<Option<SharedSender<Forward>>>,
    inbox: Vec<SharedReceiver<Forward>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    control: Arc<Control>,
    /// Connections the shard serves at once (`shard.connections_max`, or what fits).
    connections_max: usize,
    /// The client of each network sink of each stream, shared by the shards.
    clients: Arc<Vec<Vec<SinkClient>>>,
    /// The shard's end of each Kafka source.
    sources: Vec<consume::ShardSource>,
}

/// One bounded channel per ordered pair of shards: each shard's senders (indexed by the
/// receiving shard, `None` for itself) and its inboxes.
#[allow(clippy::type_complexity)]
fn mesh(
    n: usize,
    depth: usize,
) -> (
    Vec<Vec<Option<SharedSender<Forward>>>>,
    Vec<Vec<SharedReceiver<Forward>>>,
) {
    let mut senders: Vec<Vec<Option<SharedSender<Forward>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut inboxes: Vec<Vec<SharedReceiver<Forward>>> = (0..n).map(|_| Vec::new()).collect();
    for (from, row) in senders.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(depth);
                *slot = Some(tx);
                inboxes[to].push(rx);
            }
        }
    }
    (senders, inboxes)
}

/// The connections each shard serves at once, `shard.connections_max` or, when not given,
/// [`CONNECTIONS_MAX`] or as many as the descriptor limit fits if fewer. Raises the soft
/// RLIMIT_NOFILE toward what that needs (as far as the hard limit lets); says when it stays
/// below (accepts past it fail with EMFILE) or when the default was lowered to fit.
fn connections_max(cfg: &Config) -> usize {
    // Besides its connections, a shard holds two listeners, two segment files per stream
    // (the current and the next), a segment and a cursor file per network sink, and a few
    // for its executor and a lookup client; the admin port holds some, and a few are spare.
    let sinks: usize = cfg.streams.iter().map(|s| s.sinks.len()).sum();
    let per_shard = 2 + 2 * cfg.streams.len() as u64 + 2 * sinks as u64 + 16;
    let spare = 64;
    let shards = cfg.shards as u64;
    let wanted = cfg.tuning.connections_max.unwrap_or(CONNECTIONS_MAX) as u64;
    let need = shards * (wanted + per_shard) + spare;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return wanted as usize;
    }
    if lim.rlim_cur < need {
        let raised = libc::rlimit {
            rlim_cur: need.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur >= need {
        return wanted as usize;
    }
    let fits = (lim.rlim_cur.saturating_sub(spare) / shards.max(1)).saturating_sub(per_shard);
    match cfg.tuning.connections_max {
        Some(given) => {
            eprintln!(
                "sluice: warning: RLIMIT_NOFILE is {} (hard limit {}), below the {need} \
                 descriptors this config may hold ({} shards x shard.connections_max {given}, \
                 plus listeners and segments): accepts past the limit fail (EMFILE) until \
                 connections close; raise it (ulimit -n {need}) or lower shard.connections_max \
                 (to {fits} or less)",
                lim.rlim_cur, lim.rlim_max, cfg.shards
            );
            given
        }
        None => {
            let fits = fits.max(1) as usize;
            eprintln!(
                "sluice: RLIMIT_NOFILE is {} (hard limit {}): each shard serves at most {fits} \
                 connections at once instead of {CONNECTIONS_MAX} (raise the limit to {need}, \
                 ulimit -n {need}, for the default, or set shard.connections_max)",
                lim.rlim_cur, lim.rlim_max
            );
            fits
        }
    }
}

/// Removes the empty segments a crash left (see [`crate::sink::segment`]), saying so.
fn remove_empty_segments(cfg: &Config) -> Result<(), String> {
    let streams: Vec<&str> = cfg.streams.iter().map(|s| s.name.as_str()).collect();
    let removed = crate::sink::segment::remove_empty(&cfg.sinks.dir, &streams).map_err(|e| {
        format!(
            "{}: looking for empty segments: {e}",
            cfg.sinks.dir.display()
        )
    })?;
    for (path, len) in removed {
        eprintln!(
            "sluice: removed empty segment {} ({len} bytes, no header: a crash while it was created)",
            path.display()
        );
    }
    Ok(())
}

/// One client per network sink of each stream, shared by the shards.
fn clients(cfg: &Config) -> Result<Vec<Vec<SinkClient>>, String> {
    cfg.streams
        .iter()
        .map(|s| {
            s.sinks
                .iter()
                .map(|k| crate::sink::kafka::client(&s.name, k))
                .collect()
        })
        .collect()
}

impl Engine {
    /// Starts every shard and the admin endpoint; returns once all listen. Reloads read the
    /// config again from `source` (the embedded default when `None`).
    pub fn start(config: Config, source: Option<PathBuf>) -> Result<Engine, String> {
        remove_empty_segments(&config)?;
        let connections_max = connections_max(&config);
        let clients = Arc::new(clients(&config)?);
        let control = Arc::new(Control::new(&config, source));
        let cfg = Arc::new(config);
        let n = cfg.shards;
        let registry = Registry::new(n, cfg.streams.iter().map(|s| s.name.clone()).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (senders, inboxes) = mesh(n, cfg.tuning.forward_frames_max);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut sources = Vec::new();
        let mut ends: Vec<Vec<consume::ShardSource>> = (0..n).map(|_| Vec::new()).collect();
        for (i, spec) in cfg.sources.iter().enumerate() {
            let stats = Arc::new(crate::metrics::SourceStats::new(&spec.group_id, n));
            registry
                .sources
                .lock()
                .expect("sources")
                .push(stats.clone());
            let (run, shard_ends) = consume::start(&cfg, i, stats)?;
            sources.push(run);
            for (shard, end) in shard_ends.into_iter().enumerate() {
                ends[shard].push(end);
            }
        }
        let mut ends = ends.into_iter();
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
                connections_max,
                clients: clients.clone(),
                sources: ends.next().expect("an end per shard"),
            };
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cfg.cores[shard]))
                .name(&format!("sluice-shard-{shard}"))
                .io_memory(cfg.tuning.io_memory_bytes)
                .spawn(move || shard::run(init))
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
            sources,
        };
        for _ in 0..n {
            match ready_rx.recv_timeout(SHARD_START_TIMEOUT) {
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
            cfg.admin.clone(),
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
        for s in &mut self.sources {
            s.stop();
        }
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
        // Sources first: each hands over what it dealt, waits until the shards stored it,
        // and commits, while the shards still take batches.
        for s in &mut self.sources {
            s.stop();
        }
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
