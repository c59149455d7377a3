//! The Kafka consumer-group source: one consumer per process and source, on a thread of its
//! own (the **group thread**), which deals what it consumes to the shards.
//!
//! - The group thread polls librdkafka, and the [`Dealer`] puts each message's envelope into
//!   a batch frame of its partition for the shard that owns it (a message that is not one
//!   envelope becomes a [`Reject`](crate::source::kafka::Reject)). What it dealt at once is a
//!   **round**: each shard gets its chunk of the round over a bounded channel, takes its frames
//!   as it takes TCP batches (charged to its in-flight budget, stepped, committed), and
//!   answers once every frame of the chunk was acked.
//! - The [`Tracker`] stores a partition's offset for commit once every round up to it was
//!   answered; librdkafka commits stored offsets every `commit_interval_ms` (and on revoke
//!   and at the end, synchronously). So an offset is committed only once everything routed
//!   from the messages before it is stored: a crash re-reads at most what was in flight.
//! - **Backpressure**: a shard whose channel is full (its budget is spent, or a `block` sink
//!   holds it) holds the round; the group thread pauses every assigned partition until the
//!   shard took it, and counts the time.
//! - **Rebalance** (eager `roundrobin` by default; cooperative-sticky by `client`): before partitions are revoked, the group
//!   thread hands the shards what it dealt, waits (at most `shard.shutdown_timeout_ms`) until
//!   every round holding them is answered, stores and commits; an assigned partition resumes
//!   from its committed offset.
//! - **Stop**: the engine stops its sources before its shards: each stops polling, waits for
//!   its rounds, commits and leaves the group.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use glommio::spawn_local;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use sluice_protocol::AckStatus;

use super::ingest::echoed;
use super::shard::{Frame, Shard};
use super::two_pass::Order;
use crate::config::Config;
use crate::consts::{ROUND_BYTES_MAX, ROUND_MESSAGES_MAX, SOURCE_CHUNKS_MAX, SOURCE_IDLE_POLL};
use crate::metrics::SourceStats;
use crate::source::Coord;
use crate::source::kafka::{Chunk, Dealer, SourceSpec, TopicPartition, Tracker};

/// One shard's chunk of a round.
pub(super) struct Work {
    round: u64,
    chunk: Chunk,
    received: Instant,
}

/// A shard's end of a source: the chunks it gets, and where it answers (round, stored).
pub(super) struct ShardSource {
    pub work: mpsc::Receiver<Work>,
    pub answers: Sender<(u64, bool)>,
}

/// A running source: its group thread.
pub(super) struct SourceRun {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SourceRun {
    /// Stops polling, waits for the rounds in flight, commits and leaves the group.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SourceRun {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The group thread's state, shared with the rebalance callbacks (which run inside `poll`, on
/// the same thread).
struct State {
    dealer: Dealer,
    tracker: Tracker,
    /// The last offset dealt this round, per partition.
    round_last: HashMap<TopicPartition, i64>,
    shards: Vec<mpsc::Sender<Work>>,
    answers: Receiver<(u64, bool)>,
    /// A shard's chunk its channel had no room for: sent before anything else.
    held: Vec<Option<Work>>,
    topics: HashMap<String, Arc<str>>,
    /// Messages dealt since the last round ended, by (shard, topic, partition): added to the
    /// figures once a round (not a lock a message).
    consumed: HashMap<(usize, Arc<str>, i32), u64>,
    stats: Arc<SourceStats>,
    /// The longest a revoke or the stop waits for rounds in flight.
    settle_wait: Duration,
}

struct GroupContext {
    label: String,
    stats: Arc<SourceStats>,
    state: Mutex<State>,
    last_error: Mutex<Option<String>>,
}

impl GroupContext {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(text.as_str()) {
            eprintln!("sluice: {}: kafka: {text}", self.label);
            *last = Some(text);
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut f = self.stats.figures();
        f.lag.clear();
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's internal UA partition; lag -1: not known yet.
                if *p >= 0 && part.consumer_lag >= 0 {
                    f.lag.insert((topic.clone(), *p), part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<TopicPartition> = tpl
                    .elements()
                    .iter()
                    .map(|e| (Arc::from(e.topic()), e.partition()))
                    .collect();
                let mut st = self.state();
                // What was dealt from them goes to the shards first; then their rounds are
                // waited for, stored and committed before the partitions are let go.
                let wait = st.settle_wait;
                let settled = settle_until(&mut st, consumer, &self.label, wait, |t| {
                    parts.iter().any(|tp| t.in_flight(tp))
                });
                if !settled {
                    eprintln!(
                        "sluice: {}: revoking {} partitions with rounds still in flight after \
                         {} ms: their next owner reads those messages again",
                        self.label,
                        parts.len(),
                        wait.as_millis()
                    );
                }
                commit_now(consumer, &self.label);
                for tp in &parts {
                    st.tracker.forget(tp);
                }
                drop(st);
                let mut f = self.stats.figures();
                f.revokes += 1;
                f.assigned = f.assigned.saturating_sub(parts.len() as u64);
                for tp in &parts {
                    f.lag.remove(&(tp.0.to_string(), tp.1));
                }
            }
            Rebalance::Assign(tpl) => {
                let mut st = self.state();
                for e in tpl.elements() {
                    st.tracker.forget(&(Arc::from(e.topic()), e.partition()));
                }
                drop(st);
                let mut f = self.stats.figures();
                f.assigns += 1;
                f.assigned += tpl.count() as u64;
            }
            Rebalance::Error(e) => {
                eprintln!("sluice: {}: rebalance: {e}", self.label);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let mut f = self.stats.figures();
        match result {
            Ok(()) => {
                f.commits += 1;
                for e in offsets.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        f.committed.insert((e.topic().to_owned(), e.partition()), o);
                    }
                }
            }
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => {
                f.commit_errors += 1;
                drop(f);
                eprintln!("sluice: {}: commit: {e}", self.label);
            }
        }
    }
}

/// Commits the stored offsets now, synchronously.
fn commit_now(consumer: &BaseConsumer<GroupContext>, label: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(())
        | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => eprintln!("sluice: {label}: commit: {e}"),
    }
}

/// Ends the round: hands each shard its chunk (held when its channel is full). A round
/// still held from before goes first; while it is, the new one waits in the dealer (so each
/// shard takes its rounds in order).
fn flush(st: &mut State) {
    if !send_held(st) || st.dealer.messages() == 0 {
        return;
    }
    {
        let mut f = st.stats.figures();
        for (k, n) in st.consumed.drain() {
            *f.consumed.entry(k).or_default() += n;
        }
    }
    let chunks = st.dealer.take();
    let last: Vec<(TopicPartition, i64)> = st.round_last.drain().collect();
    let shards = chunks.iter().filter(|c| !c.is_empty()).count();
    let round = st.tracker.round(shards, last);
    let received = Instant::now();
    for (shard, chunk) in chunks.into_iter().enumerate() {
        if chunk.is_empty() {
            continue;
        }
        let work = Work {
            round,
            chunk,
            received,
        };
        st.held[shard] = Some(work);
    }
    send_held(st);
}

/// Tries to hand every held chunk to its shard; whether all went.
fn send_held(st: &mut State) -> bool {
    let mut all = true;
    for shard in 0..st.held.len() {
        if let Some(w) = st.held[shard].take() {
            match st.shards[shard].try_send(w) {
                Ok(()) => {}
                Err(e) if e.is_full() => {
                    st.held[shard] = Some(e.into_inner());
                    all = false;
                }
                Err(e) => {
                    // The shard is gone (the engine stops): the round is not stored.
                    let w = e.into_inner();
                    st.tracker.done(w.round, false);
                }
            }
        }
    }
    all
}

/// Takes the shards' answers and stores the offsets they allow.
fn settle(st: &mut State, consumer: &BaseConsumer<GroupContext>, label: &str) {
    let mut answered = false;
    while let Ok((round, ok)) = st.answers.try_recv() {
        st.tracker.done(round, ok);
        answered = true;
    }
    if answered {
        store(st, consumer, label);
    }
}

fn store(st: &mut State, consumer: &BaseConsumer<GroupContext>, label: &str) {
    for ((topic, partition), offset) in st.tracker.storable() {
        // librdkafka commits the offset after the one stored here.
        if let Err(e) = consumer.store_offset(&topic, partition, offset) {
            eprintln!("sluice: {label}: storing offset {offset} of {topic}/{partition}: {e}");
        }
    }
}

/// Hands the shards what was dealt (held rounds first) and takes their answers until nothing
/// is left to hand over and `busy` says nothing it waits for is in flight, or `wait` passed;
/// whether it settled.
fn settle_until(
    st: &mut State,
    consumer: &BaseConsumer<GroupContext>,
    label: &str,
    wait: Duration,
    busy: impl Fn(&Tracker) -> bool,
) -> bool {
    let by = Instant::now() + wait;
    loop {
        flush(st);
        while let Ok((round, ok)) = st.answers.try_recv() {
            st.tracker.done(round, ok);
        }
        store(st, consumer, label);
        if !busy(&st.tracker) && st.held.iter().all(Option::is_none) && st.dealer.messages() == 0 {
            return true;
        }
        let now = Instant::now();
        if now >= by {
            return false;
        }
        match st
            .answers
            .recv_timeout((by - now).min(Duration::from_millis(5)))
        {
            Ok((round, ok)) => st.tracker.done(round, ok),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// The consumer of source `spec`, subscribed.
fn consumer(spec: &SourceSpec, ctx: GroupContext) -> Result<BaseConsumer<GroupContext>, String> {
    let mut config = ClientConfig::new();
    for (k, v) in spec.client_settings() {
        config.set(k, v);
    }
    let label = ctx.label.clone();
    let consumer: BaseConsumer<GroupContext> = config
        .create_with_context(ctx)
        .map_err(|e| format!("{label}: {e}"))?;
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("{label}: subscribe: {e}"))?;
    Ok(consumer)
}

/// Starts source `index` of `cfg`: its consumer, subscribed, and its group thread; returns it
/// with each shard's end.
pub(super) fn start(
    cfg: &Arc<Config>,
    index: usize,
    stats: Arc<SourceStats>,
) -> Result<(SourceRun, Vec<ShardSource>), String> {
    let spec = cfg.sources[index].clone();
    let label = format!("source {} (group {})", spec.topics.join(","), spec.group_id);
    let (answers_tx, answers) = std::sync::mpsc::channel();
    let mut shards = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..cfg.shards {
        let (tx, rx) = mpsc::channel(SOURCE_CHUNKS_MAX);
        shards.push(tx);
        ends.push(ShardSource {
            work: rx,
            answers: answers_tx.clone(),
        });
    }
    drop(answers_tx);
    let state = State {
        dealer: Dealer::new(cfg.partitions, cfg.owners.clone(), cfg.shards, cfg.limits),
        tracker: Tracker::default(),
        round_last: HashMap::new(),
        shards,
        answers,
        held: (0..cfg.shards).map(|_| None).collect(),
        topics: HashMap::new(),
        consumed: HashMap::new(),
        stats: stats.clone(),
        settle_wait: Duration::from_millis(cfg.tuning.shutdown_timeout_ms),
    };
    let ctx = GroupContext {
        label: label.clone(),
        stats: stats.clone(),
        state: Mutex::new(state),
        last_error: Mutex::new(None),
    };
    let consumer = consumer(&spec, ctx)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_t = stop.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-group".into())
        .spawn(move || run(consumer, stop_t, stats))
        .map_err(|e| format!("{label}: the group thread: {e}"))?;
    eprintln!("sluice: {label}: consuming at {}", spec.brokers);
    Ok((
        SourceRun {
            stop,
            thread: Some(thread),
        },
        ends,
    ))
}

/// The group thread.
fn run(consumer: BaseConsumer<GroupContext>, stop: Arc<AtomicBool>, stats: Arc<SourceStats>) {
    let ctx = consumer.context();
    let label = ctx.label.clone();
    // The partitions paused, and when the paused time was last counted.
    let mut paused: Option<(TopicPartitionList, Instant)> = None;
    while !stop.load(Ordering::Relaxed) {
        // While a shard holds a round, fetching is paused: nothing new is dealt.
        {
            let mut st = ctx.state();
            // The time since the last count goes to the shards that held the fetching.
            if let Some((_, counted)) = &mut paused {
                let mut f = stats.figures();
                let s = counted.elapsed().as_secs_f64();
                for (shard, w) in st.held.iter().enumerate() {
                    if w.is_some() {
                        f.paused_s[shard] += s;
                    }
                }
                *counted = Instant::now();
            }
            let held = st.held.iter().any(Option::is_some) && !send_held(&mut st);
            if held {
                if paused.is_none()
                    && let Ok(tpl) = consumer.assignment()
                {
                    let _ = consumer.pause(&tpl);
                    paused = Some((tpl, Instant::now()));
                }
            } else if let Some((tpl, _)) = paused.take() {
                let _ = consumer.resume(&tpl);
            }
            settle(&mut st, &consumer, &label);
        }
        let idle = {
            let st = ctx.state();
            st.dealer.messages() == 0
        };
        let timeout = if paused.is_some() || idle {
            SOURCE_IDLE_POLL
        } else {
            Duration::ZERO
        };
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                let mut st = ctx.state();
                let topic = match st.topics.get(m.topic()) {
                    Some(t) => t.clone(),
                    None => {
                        let t: Arc<str> = Arc::from(m.topic());
                        st.topics.insert(m.topic().to_owned(), t.clone());
                        t
                    }
                };
                let source = Coord {
                    topic: topic.clone(),
                    partition: m.partition(),
                    offset: m.offset(),
                };
                let shard = st.dealer.add(m.key(), m.payload().unwrap_or(&[]), source);
                st.round_last
                    .insert((topic.clone(), m.partition()), m.offset());
                *st.consumed
                    .entry((shard, topic, m.partition()))
                    .or_default() += 1;
                if st.dealer.messages() >= ROUND_MESSAGES_MAX
                    || st.dealer.bytes() >= ROUND_BYTES_MAX
                {
                    flush(&mut st);
                }
            }
            Some(Err(e)) => ctx.error(e, "poll"),
            None => flush(&mut ctx.state()),
        }
    }
    // Stop: what was dealt goes to the shards, every round is waited for, stored and
    // committed; then the consumer leaves the group.
    let mut st = ctx.state();
    let wait = st.settle_wait;
    if !settle_until(&mut st, &consumer, &label, wait, |t| {
        t.rounds_in_flight() > 0
    }) {
        eprintln!(
            "sluice: {label}: stopping with rounds in flight after {} ms: they are read again",
            wait.as_millis()
        );
    }
    // The revoke that leaving makes has nothing more to wait for.
    st.settle_wait = Duration::ZERO;
    drop(st);
    commit_now(&consumer, &label);
    consumer.unsubscribe();
    // The revoke that leaving makes runs in a last poll.
    let _ = consumer.poll(Duration::from_millis(100));
}

/// A shard's side of a source: takes each chunk's frames and rejects as batches, and answers
/// the round once all of them were acked.
pub(super) async fn take_chunks(shard: Rc<Shard>, mut end: ShardSource) {
    let order = Order::default();
    while let Some(w) = end.work.next().await {
        let mut acks = Vec::with_capacity(w.chunk.frames.len() + w.chunk.rejects.len());
        for c in w.chunk.frames {
            let (tx, rx) = oneshot::channel();
            let id = echoed(&c.frame);
            shard
                .take_owned(
                    Frame::Consumed(c.frame, c.sources),
                    id,
                    tx,
                    w.received,
                    &order,
                    0,
                )
                .await;
            acks.push(rx);
        }
        for r in w.chunk.rejects {
            let (tx, rx) = oneshot::channel();
            shard.take_reject(r, tx, w.received).await;
            acks.push(rx);
        }
        let answers = end.answers.clone();
        let round = w.round;
        spawn_local(async move {
            let mut ok = true;
            for a in acks {
                ok &= matches!(a.await, Ok(ack) if ack.status == AckStatus::Ok);
            }
            let _ = answers.send((round, ok));
        })
        .detach();
    }
}
