//! Driving an engine: `loadgen run`.
//!
//! 1. Ask the engine for its partition map (hello).
//! 2. Seal a pool of batch frames before the clock starts: uploads from the seeded workload,
//!    grouped by partition, `batch_envelopes` envelopes per frame.
//! 3. Open `connections` connections, each to one shard's own port, and send each frame on a
//!    connection to its partition's owner.
//! 4. Open loop: at `--rate N` the k-th frame of a connection is due at `t0 + k · interval`,
//!    and its latency runs from that intended time to its ack, so a stalled engine shows up as
//!    latency instead of a slower sender (no coordinated omission). At `--rate max` each
//!    connection keeps `window_batches` frames in flight and latency runs from the send.
//!
//! Nonces are never reused under a key: a nonce is a 4-byte prefix (per run, and per
//! connection for re-sealed frames) and an 8-byte counter. When a run outlasts its pool, a
//! frame is re-sealed in place with fresh nonces before it is sent again, and counted in the
//! report. The first re-seal of a frame opens its envelopes and keeps a copy in the clear;
//! later ones copy that in and seal (one seal per envelope).

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_protocol::envelope::ENVELOPE_HEADER_BYTES;
use sluice_protocol::frame::{ACK_FRAME_BYTES, FRAME_HEADER_BYTES};
use sluice_protocol::{
    Ack, AckStatus, AlignedBuf, EnvelopeHeader, FrameBuilder, FrameKind, FrameSplitter, HelloReply,
    Keyring, Limits, NONCE_BYTES, PayloadFormat, Split, TAG_BYTES, encode_hello, partition_for,
    reseal_frame,
};

use sluice_workload::events::{Workload, WorkloadGen};

/// How a run is driven.
#[derive(Clone)]
pub struct RunOpts {
    pub target: String,
    pub workload: Workload,
    /// Events per second; `None` sends as fast as the window allows.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Stop after sending this many events (the pool then holds exactly these).
    pub events: Option<u64>,
    pub connections: usize,
    pub seed: u64,
    pub batch_envelopes: usize,
    /// Frames in flight per connection.
    pub window_batches: usize,
    /// Events sealed before the clock starts.
    pub pool_events: usize,
    pub keys: Keyring,
    /// Print a progress line each second to stderr.
    pub progress: bool,
    /// Set to stop early.
    pub stop: Option<Arc<AtomicBool>>,
}

impl RunOpts {
    pub fn new(target: impl Into<String>, keys: Keyring) -> RunOpts {
        RunOpts {
            target: target.into(),
            workload: Workload::W1,
            rate: None,
            duration: Duration::from_secs(10),
            events: None,
            connections: 4,
            seed: 1,
            batch_envelopes: 128,
            window_batches: 16,
            pool_events: 1 << 20,
            keys,
            progress: false,
            stop: None,
        }
    }
}

/// Parses a `--rate` argument: events per second, or `max` (`None`).
pub fn parse_rate(rate: &str) -> Result<Option<f64>, String> {
    match rate {
        "max" => Ok(None),
        n => n
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(Some)
            .ok_or_else(|| format!("--rate {n}: a positive number or `max`")),
    }
}

/// Latency percentiles, µs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    /// The percentiles of `h` (µs).
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// What a run did (the JSON report).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub seed: u64,
    pub target: String,
    /// Events per second asked for, or "max".
    pub rate: String,
    pub connections: usize,
    pub batch_envelopes: usize,
    pub events_sent: u64,
    pub events_acked: u64,
    pub events_failed: u64,
    pub envelopes_dead_lettered: u64,
    pub batches_acked: u64,
    pub batches_failed: u64,
    pub duration_s: f64,
    pub events_per_sec: f64,
    /// Batch ack latency.
    pub latency_us: Latency,
    pub pool_events: u64,
    pub frames_resealed: u64,
    /// Each second of the run: events acked in it and the p99 of the batches acked in it.
    pub timeline: Vec<Tick>,
}

/// One second of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Tick {
    /// Seconds since the run started, at the end of this second.
    pub t_s: u64,
    pub events_per_sec: u64,
    pub p99_us: u64,
}

/// A sealed batch frame and what it holds.
#[derive(Clone)]
pub struct PoolFrame {
    pub partition: u32,
    pub events: u32,
    pub bytes: AlignedBuf,
}

/// Asks the engine at `target` for its partition map.
pub fn hello(target: &str) -> Result<HelloReply, String> {
    let addr = resolve(target)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(&encode_hello()).map_err(|e| e.to_string())?;
    let limits = Limits {
        frame_bytes_max: HELLO_REPLY_BYTES_MAX,
        ..Limits::default()
    };
    let mut split = FrameSplitter::new(limits, &[FrameKind::HelloReply]);
    let mut buf = Vec::new();
    loop {
        match split.next(&buf).map_err(|e| format!("hello reply: {e}"))? {
            Split::Frame { range, .. } => {
                return HelloReply::decode(&buf[range]).map_err(|e| format!("hello reply: {e}"));
            }
            Split::Need(n) => {
                let at = buf.len();
                buf.resize(at + n, 0);
                s.read_exact(&mut buf[at..])
                    .map_err(|e| format!("hello: {e}"))?;
                split.push(n);
            }
        }
    }
}

/// The largest hello reply a client takes (a 4,096-shard table and 65,536 owners fit).
const HELLO_REPLY_BYTES_MAX: usize = 1 << 20;

/// Reads the next ack frame from `reader` (through `buf`, which holds one) and decodes it.
/// The outer error is the stream's: it cannot be read (or past this point) any more.
fn read_ack(
    reader: &mut impl Read,
    split: &mut FrameSplitter,
    buf: &mut [u8; ACK_FRAME_BYTES],
) -> Result<Result<Ack, sluice_protocol::Error>, String> {
    loop {
        match split.next(buf).map_err(|e| e.to_string())? {
            Split::Frame { range, .. } => {
                let ack = Ack::decode(&buf[range]);
                split.compact(buf);
                return Ok(ack);
            }
            Split::Need(n) => {
                let at = split.pending().end;
                reader
                    .read_exact(&mut buf[at..at + n])
                    .map_err(|e| e.to_string())?;
                split.push(n);
            }
        }
    }
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))
}

/// Nonces: a 4-byte prefix and a counter.
struct Nonces {
    prefix: [u8; 4],
    counter: u64,
}

impl Nonces {
    fn next(&mut self) -> [u8; NONCE_BYTES] {
        let mut n = [0u8; NONCE_BYTES];
        n[..4].copy_from_slice(&self.prefix);
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        n
    }
}

/// A nonce prefix for this run: a process never reuses another's nonces.
pub(crate) fn run_prefix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    sluice_protocol::mix64(t ^ (u64::from(std::process::id()) << 32)) as u32
}

/// Seals `events` events of the workload into frames grouped by partition.
pub fn build_pool(
    workload: Workload,
    seed: u64,
    events: usize,
    batch_envelopes: usize,
    partitions: u32,
    keys: &Keyring,
    nonce_prefix: u32,
) -> Vec<PoolFrame> {
    let mut generator = WorkloadGen::new(workload, seed);
    let mut nonces = Nonces {
        prefix: nonce_prefix.to_le_bytes(),
        counter: 0,
    };
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut open: Vec<Option<(FrameBuilder, u32)>> = (0..partitions).map(|_| None).collect();
    let mut frames = Vec::new();
    let mut plaintext = AlignedBuf::new();
    let mut made = 0;
    let mut seq = 0u64;
    while made < events {
        let up = generator.next_upload(ts_ms);
        let take = up.events.len().min(events - made);
        let up_events = &up.events[..take];
        made += take;
        let p = partition_for(up.partition_key, partitions);
        let slot = &mut open[p as usize];
        let (builder, n) = slot.get_or_insert_with(|| {
            seq += 1;
            (FrameBuilder::new(seq, p), 0)
        });
        sluice_protocol::event::to_rkyv_payload_in(up_events, &mut plaintext);
        let cipher = keys
            .get(up.key_id)
            .expect("the pool's keyring has the workload's keys");
        let header = EnvelopeHeader::new(
            PayloadFormat::Rkyv,
            up.key_id,
            nonces.next(),
            up.partition_key,
            take as u16,
        );
        builder.seal(cipher, header, &plaintext);
        *n += take as u32;
        if builder.count() as usize == batch_envelopes {
            let (mut b, n) = slot.take().expect("just filled");
            frames.push(PoolFrame {
                partition: p,
                events: n,
                bytes: aligned(b.finish()),
            });
        }
    }
    for (p, slot) in open.into_iter().enumerate() {
        if let Some((mut b, n)) = slot {
            frames.push(PoolFrame {
                partition: p as u32,
                events: n,
                bytes: aligned(b.finish()),
            });
        }
    }
    frames
}

/// The event ids of each frame [`build_pool`] makes with the same arguments, in the same
/// order, with each frame's partition: uploads dealt to their partition's open frame, which
/// closes at `batch_envelopes` envelopes; the frames still open close at the end.
pub fn pool_event_ids(
    workload: Workload,
    seed: u64,
    events: usize,
    batch_envelopes: usize,
    partitions: u32,
) -> Vec<(u32, Vec<u64>)> {
    let mut generator = WorkloadGen::new(workload, seed);
    let mut open: Vec<Option<(Vec<u64>, usize)>> = (0..partitions).map(|_| None).collect();
    let mut frames = Vec::new();
    let mut made = 0;
    while made < events {
        let up = generator.next_upload(0);
        let take = up.events.len().min(events - made);
        made += take;
        let p = partition_for(up.partition_key, partitions);
        let slot = &mut open[p as usize];
        let (ids, envelopes) = slot.get_or_insert_with(|| (Vec::new(), 0));
        ids.extend(up.events[..take].iter().map(|e| e.event_id));
        *envelopes += 1;
        if *envelopes == batch_envelopes {
            let (ids, _) = slot.take().expect("just filled");
            frames.push((p, ids));
        }
    }
    for (p, slot) in open.into_iter().enumerate() {
        if let Some((ids, _)) = slot {
            frames.push((p as u32, ids));
        }
    }
    frames
}

fn aligned(b: &[u8]) -> AlignedBuf {
    let mut out = AlignedBuf::with_capacity(b.len());
    out.extend_from_slice(b);
    out
}

/// Seals a copy of `frame` into `out` under fresh nonces, for sending again. The first time,
/// `frame` (as the pool sealed it) is opened in place and kept in the clear (`*opened` says
/// so): from then on each re-seal is one AES-GCM pass from the frame into `out`, which reads
/// each payload as it encrypts it (no copy first: the pool is read from memory, and a copy of
/// it was a sixth of the generator's time at the maximum). `out` is the sender's one buffer,
/// used again for every frame, so that the sealing writes to memory in its caches.
fn reseal(
    frame: &mut [u8],
    opened: &mut bool,
    out: &mut AlignedBuf,
    keys: &Keyring,
    nonces: &mut Nonces,
) {
    if !*opened {
        open_envelopes(frame, keys);
        *opened = true;
    }
    if out.len() != frame.len() {
        // Every byte is written below; only a longer frame than the last grows it.
        out.resize(frame.len(), 0);
    }
    out[..FRAME_HEADER_BYTES].copy_from_slice(&frame[..FRAME_HEADER_BYTES]);
    let mut at = FRAME_HEADER_BYTES;
    while at < frame.len() {
        let mut header = envelope_at(frame, at);
        let (len, body) = (header.envelope_len(), header.payload_len as usize);
        let (from, to) = (&frame[at..at + len], &mut out[at..at + len]);
        let cipher = keys.get(header.key_id).expect("sealed with these keys");
        header.nonce = nonces.next();
        let aad = header.encode();
        to[..ENVELOPE_HEADER_BYTES].copy_from_slice(&aad);
        let payload = ENVELOPE_HEADER_BYTES..ENVELOPE_HEADER_BYTES + body;
        let tag = cipher.seal_to(
            &header.nonce,
            &aad,
            &from[payload.clone()],
            &mut to[payload.clone()],
        );
        to[payload.end..payload.end + TAG_BYTES].copy_from_slice(&tag);
        // The padding (zeros).
        to[payload.end + TAG_BYTES..].copy_from_slice(&from[payload.end + TAG_BYTES..]);
        at += len;
    }
    reseal_frame(out).expect("a frame we built");
}

/// The header of the envelope at `at` in `frame` (one we built).
fn envelope_at(frame: &[u8], at: usize) -> EnvelopeHeader {
    let head: &[u8; ENVELOPE_HEADER_BYTES] = frame[at..at + ENVELOPE_HEADER_BYTES]
        .try_into()
        .expect("32 bytes");
    EnvelopeHeader::decode(head)
}

/// Opens every envelope of `frame` (sealed by us) in place.
fn open_envelopes(frame: &mut [u8], keys: &Keyring) {
    for_each_envelope(frame, |header, aad, body, tag| {
        let cipher = keys.get(header.key_id).expect("sealed with these keys");
        cipher
            .open_in_place(&header.nonce, aad, body, tag)
            .expect("our own envelope opens");
    });
}

/// Calls `f` with each envelope of `frame`: its header, its header's bytes (the AAD), its
/// payload and its tag.
fn for_each_envelope(
    frame: &mut [u8],
    mut f: impl FnMut(&mut EnvelopeHeader, &mut [u8], &mut [u8], &mut [u8; TAG_BYTES]),
) {
    let mut at = FRAME_HEADER_BYTES;
    while at < frame.len() {
        let mut header = envelope_at(frame, at);
        let len = header.envelope_len();
        let body_len = header.payload_len as usize;
        let env = &mut frame[at..at + len];
        let (aad, rest) = env.split_at_mut(ENVELOPE_HEADER_BYTES);
        let (body, rest) = rest.split_at_mut(body_len);
        let tag: &mut [u8; TAG_BYTES] = (&mut rest[..TAG_BYTES]).try_into().expect("16 bytes");
        f(&mut header, aad, body, tag);
        at += len;
    }
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    batches_acked: AtomicU64,
    batches_failed: AtomicU64,
    resealed: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// Prints a run's progress line for the second ending at `at`: events acked in it and in
/// all, its p99 latency (`h`, reset for the next second), and the events failed.
/// Returns the second as a [`Tick`]; prints the line only when `print`.
pub(crate) fn progress_line(
    at: Duration,
    per_sec: u64,
    acked: u64,
    h: &mut Histogram<u64>,
    failed: u64,
    print: bool,
) -> Tick {
    let tick = Tick {
        t_s: at.as_secs(),
        events_per_sec: per_sec,
        p99_us: h.value_at_quantile(0.99),
    };
    if print {
        eprintln!(
            "loadgen: {:>3}s  {:>9} events/s  acked {:>10}  p99 {:>6} µs  failed {}",
            tick.t_s, per_sec, acked, tick.p99_us, failed
        );
    }
    h.reset();
    tick
}

/// Runs the generator against an engine and reports.
pub fn run(opts: &RunOpts) -> Result<Report, String> {
    let map = hello(&opts.target)?;
    let partitions = map.owners.len() as u32;
    let shards = map.shards.len();
    if partitions == 0 || shards == 0 {
        return Err("the engine has no partitions".into());
    }
    let pool_events = opts.events.map_or(opts.pool_events, |n| n as usize);
    let prefix = run_prefix();
    let pool = build_pool(
        opts.workload,
        opts.seed,
        pool_events,
        opts.batch_envelopes,
        partitions,
        &opts.keys,
        prefix,
    );
    // Deal frames to connections by owner shard.
    let conns = opts.connections.max(1);
    let conn_shard: Vec<usize> = (0..conns).map(|c| c % shards).collect();
    let mut per_conn: Vec<Vec<PoolFrame>> = (0..conns).map(|_| Vec::new()).collect();
    let mut next_of_shard = vec![0usize; shards];
    for f in pool {
        let owner = usize::from(map.owners[f.partition as usize]);
        let candidates: Vec<usize> = (0..conns).filter(|c| conn_shard[*c] == owner).collect();
        let c = if candidates.is_empty() {
            owner % conns
        } else {
            let i = next_of_shard[owner] % candidates.len();
            next_of_shard[owner] += 1;
            candidates[i]
        };
        per_conn[c].push(f);
    }

    let totals = Arc::new(Totals::default());
    let interval_hist = Arc::new(Mutex::new(histogram()));
    let stop = opts
        .stop
        .clone()
        .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
    let frames_total: usize = per_conn.iter().map(Vec::len).sum();
    let live_conns = per_conn.iter().filter(|f| !f.is_empty()).count().max(1);
    // Frames per second per connection at the asked rate.
    let events_per_frame = pool_events as f64 / frames_total.max(1) as f64;
    let frame_interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(events_per_frame * live_conns as f64 / r.max(1.0)));
    let t0 = Instant::now() + Duration::from_millis(20);
    let deadline = t0 + opts.duration;
    let mut threads = Vec::new();
    for (c, frames) in per_conn.into_iter().enumerate() {
        if frames.is_empty() {
            continue;
        }
        let addr = map.shards[conn_shard[c]].addr;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        let (tx, rx) = sync_channel::<(Instant, u32)>(opts.window_batches.max(1));
        let totals_r = totals.clone();
        let hist_r = interval_hist.clone();
        threads.push(std::thread::spawn(move || -> (Histogram<u64>, Instant) {
            receive_acks(reader, rx, &totals_r, &hist_r)
        }));
        let totals_s = totals.clone();
        let keys = opts.keys.clone();
        let stop = stop.clone();
        let events_limit = opts.events;
        let reseal_prefix = prefix.wrapping_add(1 + c as u32);
        std::thread::spawn(move || {
            send_frames(
                stream,
                frames,
                tx,
                SendPlan {
                    t0,
                    deadline,
                    frame_interval,
                    events_limit,
                },
                &totals_s,
                &keys,
                reseal_prefix,
                &stop,
            )
        });
    }
    let progress = {
        let totals = totals.clone();
        let hist = interval_hist.clone();
        let stop = stop.clone();
        let print = opts.progress;
        std::thread::spawn(move || {
            let mut timeline = Vec::new();
            let mut last = 0;
            let mut tick = t0 + Duration::from_secs(1);
            while Instant::now() < deadline + Duration::from_secs(1)
                && !stop.load(Ordering::Relaxed)
            {
                let now = Instant::now();
                if now < tick {
                    std::thread::sleep((tick - now).min(Duration::from_millis(100)));
                    continue;
                }
                let acked = totals.acked.load(Ordering::Relaxed);
                let mut h = hist.lock().expect("histogram");
                timeline.push(progress_line(
                    tick - t0,
                    acked - last,
                    acked,
                    &mut h,
                    totals.failed.load(Ordering::Relaxed),
                    print,
                ));
                last = acked;
                tick += Duration::from_secs(1);
            }
            timeline
        })
    };
    let mut hist = histogram();
    let mut last_ack = t0;
    for t in threads {
        let (h, last) = t.join().map_err(|_| "an ack reader panicked")?;
        hist.add(&h).expect("same bounds");
        last_ack = last_ack.max(last);
    }
    stop.store(true, Ordering::Relaxed);
    let timeline = progress.join().unwrap_or_default();
    let duration_s = last_ack
        .saturating_duration_since(t0)
        .as_secs_f64()
        .max(1e-9);
    let acked = totals.acked.load(Ordering::Relaxed);
    Ok(Report {
        workload: opts.workload.to_string(),
        seed: opts.seed,
        target: opts.target.clone(),
        rate: opts.rate.map_or("max".into(), |r| format!("{r}")),
        connections: conns,
        batch_envelopes: opts.batch_envelopes,
        events_sent: totals.sent.load(Ordering::Relaxed),
        events_acked: acked,
        events_failed: totals.failed.load(Ordering::Relaxed),
        envelopes_dead_lettered: totals.dead.load(Ordering::Relaxed),
        batches_acked: totals.batches_acked.load(Ordering::Relaxed),
        batches_failed: totals.batches_failed.load(Ordering::Relaxed),
        duration_s,
        events_per_sec: acked as f64 / duration_s,
        latency_us: Latency::of(&hist),
        pool_events: pool_events as u64,
        frames_resealed: totals.resealed.load(Ordering::Relaxed),
        timeline,
    })
}

struct SendPlan {
    t0: Instant,
    deadline: Instant,
    frame_interval: Option<Duration>,
    events_limit: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
fn send_frames(
    mut stream: TcpStream,
    mut frames: Vec<PoolFrame>,
    tx: std::sync::mpsc::SyncSender<(Instant, u32)>,
    plan: SendPlan,
    totals: &Totals,
    keys: &Keyring,
    reseal_prefix: u32,
    stop: &AtomicBool,
) {
    let mut nonces = Nonces {
        prefix: reseal_prefix.to_le_bytes(),
        counter: 0,
    };
    let n = frames.len();
    // Which frames are kept in the clear (once first re-sealed), and where each re-seal goes.
    let mut opened = vec![false; n];
    let mut resealed = AlignedBuf::new();
    let mut k = 0usize;
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= plan.deadline {
            break;
        }
        if plan.events_limit.is_some() && k == n {
            // A run with an event count sends its pool once.
            break;
        }
        let intended = match plan.frame_interval {
            Some(iv) => {
                let due = plan.t0 + iv * k as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                due
            }
            None => Instant::now(),
        };
        let f = &mut frames[k % n];
        let bytes = if k < n {
            &f.bytes[..]
        } else {
            reseal(
                &mut f.bytes,
                &mut opened[k % n],
                &mut resealed,
                keys,
                &mut nonces,
            );
            totals.resealed.fetch_add(1, Ordering::Relaxed);
            &resealed[..]
        };
        if tx.send((intended, f.events)).is_err() {
            break;
        }
        if stream.write_all(bytes).is_err() {
            break;
        }
        totals
            .sent
            .fetch_add(u64::from(f.events), Ordering::Relaxed);
        k += 1;
    }
}

fn receive_acks(
    stream: TcpStream,
    rx: std::sync::mpsc::Receiver<(Instant, u32)>,
    totals: &Totals,
    interval: &Mutex<Histogram<u64>>,
) -> (Histogram<u64>, Instant) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut hist = histogram();
    let mut last = Instant::now();
    let mut buf = [0u8; ACK_FRAME_BYTES];
    let mut split = FrameSplitter::new(Limits::default(), &[FrameKind::Ack]);
    while let Ok((intended, events)) = rx.recv() {
        let Ok(ack) = read_ack(&mut reader, &mut split, &mut buf) else {
            // The connection is gone, or its stream cannot be read past: no ack comes for
            // this batch or those behind it.
            totals
                .failed
                .fetch_add(u64::from(events), Ordering::Relaxed);
            totals.batches_failed.fetch_add(1, Ordering::Relaxed);
            for (_, e) in rx.iter() {
                totals.failed.fetch_add(u64::from(e), Ordering::Relaxed);
                totals.batches_failed.fetch_add(1, Ordering::Relaxed);
            }
            break;
        };
        last = Instant::now();
        let us = last.saturating_duration_since(intended).as_micros() as u64;
        hist.saturating_record(us.max(1));
        interval
            .lock()
            .expect("histogram")
            .saturating_record(us.max(1));
        match ack {
            Ok(a) if a.status == AckStatus::Ok => {
                totals.acked.fetch_add(u64::from(events), Ordering::Relaxed);
                totals
                    .dead
                    .fetch_add(u64::from(a.dead_lettered), Ordering::Relaxed);
                totals.batches_acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                totals
                    .failed
                    .fetch_add(u64::from(events), Ordering::Relaxed);
                totals.batches_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    (hist, last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{Backend, BatchFrame};

    /// Each envelope's nonce and payload in the clear (opening a copy of `frame`).
    fn opened(frame: &[u8], keys: &Keyring) -> Vec<([u8; NONCE_BYTES], Vec<u8>)> {
        let mut copy = frame.to_vec();
        open_envelopes(&mut copy, keys);
        let mut out = Vec::new();
        for_each_envelope(&mut copy, |header, _, body, _| {
            out.push((header.nonce, body.to_vec()));
        });
        out
    }

    /// Re-sealed frames, the first time (the pool's frame opened and kept in the clear) and
    /// after (copied out and sealed), hold the same payloads under nonces never used before,
    /// and parse whole.
    #[test]
    fn resealed_frames_carry_the_same_events_under_fresh_nonces() {
        let keys = sluice_workload::demo_keyring(Backend::default());
        let mut pool = build_pool(Workload::W1, 7, 2_000, 16, 2, &keys, 1);
        let mut nonces = Nonces {
            prefix: 2u32.to_le_bytes(),
            counter: 0,
        };
        let mut seen = std::collections::HashSet::new();
        for f in &pool {
            for (nonce, _) in opened(&f.bytes, &keys) {
                assert!(seen.insert(nonce));
            }
        }
        let original: Vec<_> = pool.iter().map(|f| opened(&f.bytes, &keys)).collect();
        let mut clear = vec![false; pool.len()];
        let mut out = AlignedBuf::new();
        for round in 0..3 {
            for ((f, c), want) in pool.iter_mut().zip(&mut clear).zip(&original) {
                reseal(&mut f.bytes, c, &mut out, &keys, &mut nonces);
                assert!(*c, "kept in the clear");
                let got = opened(&out, &keys);
                assert_eq!(got.len(), want.len());
                for ((nonce, body), (_, want_body)) in got.iter().zip(want) {
                    assert_eq!(body, want_body, "round {round}: the same payload");
                    assert!(seen.insert(*nonce), "round {round}: a fresh nonce");
                }
                let mut bytes = aligned(&out);
                BatchFrame::parse(&mut bytes, &Limits::default()).expect("a whole frame");
            }
        }
    }
}
