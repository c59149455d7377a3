//! The engine's fixed ticks, timeouts and buffer sizes: the ones no config key names. Each
//! says its unit; relations between them are checked at compile time below.

use std::time::Duration;

/// How long `Engine::start` waits for a shard to open its segments and listen.
pub const SHARD_START_TIMEOUT: Duration = Duration::from_secs(120);
/// A shard's housekeeping tick: an idle shard takes a reload and publishes metrics at most
/// this late.
pub const SHARD_TICK: Duration = Duration::from_millis(10);
/// The shortest metrics publishing interval (`metrics_interval_ms` below it is raised).
pub const METRICS_INTERVAL_MIN: Duration = SHARD_TICK;
/// How long a reload waits for every shard to take the new revision.
pub const RELOAD_TAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a reload looks whether every shard took it.
pub const RELOAD_POLL: Duration = Duration::from_millis(1);
/// How often the main thread (signals) and the demo's watcher look for a stop.
pub const SIGNAL_POLL: Duration = Duration::from_millis(50);
/// How long the admin thread sleeps when no client is waiting (its listener is non-blocking,
/// so that it sees the engine stop).
pub const ADMIN_ACCEPT_POLL: Duration = Duration::from_millis(20);
/// A connection's ack writer starts with this much room for replies (bytes, 85 acks); it
/// grows when a burst of replies needs more.
pub const REPLY_BUFFER_BYTES: usize = 4 << 10;
/// Connections a shard serves at once when `shard.connections_max` is not given (fewer
/// when the descriptor limit fits fewer).
pub const CONNECTIONS_MAX: usize = 4096;
/// How often a network sink saves its cursor while it delivers (and when the shard stops): a
/// restart sends again at most what was confirmed in this long.
pub const CURSOR_INTERVAL: Duration = Duration::from_millis(200);
/// The first and the longest wait before a failed delivery is sent again (doubling between).
pub const DELIVERY_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const DELIVERY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Records a sink's delivery task has sent and not yet seen confirmed, at most.
pub const DELIVERY_INFLIGHT_MAX: usize = 50_000;
/// Records a delivery task hands to the producer before it lets the shard's other tasks run
/// (about 0.5-1 ms of produce calls).
pub const DELIVERY_CHUNK_RECORDS: usize = 512;
/// Chunks of records a sink's producer thread (`producer = "thread"`) holds in its channel,
/// from all shards; a shard that finds it full waits like one that finds librdkafka's queue
/// full.
pub const HANDOFF_CHUNKS_MAX: usize = 64;
/// How long a delivery task that found the producer's queue (or its thread's channel) full
/// waits before it tries again, unless a confirmation comes first.
pub const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);
/// Bytes a delivery task reads from a segment at once (more for a larger record).
pub const DELIVERY_READ_BYTES: u64 = 256 << 10;
/// How often a shard held by a full `block` sink looks whether it drained.
pub const SINK_BLOCKED_POLL: Duration = Duration::from_millis(1);
/// How often each shard deletes the segments retention lets go.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(1);
/// Connections the kernel queues on a listener before the shard accepts them.
pub const LISTEN_BACKLOG: i32 = 1024;
/// The first and the longest wait before a failed accept is tried again (doubling between).
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A listener whose accept failed counts as down (`/healthz`) until this long after the last
/// failure; it is logged up again at the first accept after that.
pub const ACCEPT_DOWN_HOLD: Duration = Duration::from_secs(2);
/// How long a closing connection reads and drops what its client still sends, waiting for
/// the client to close its side (a close with unread bytes would reset the connection).
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// The same for a connection refused at `connections_max`, kept short: it holds a
/// descriptor the cap is there to save.
pub const REFUSE_LINGER: Duration = Duration::from_millis(100);
/// After this many connections ended, a shard asks the allocator to give free memory back
/// to the system ...
pub const TRIM_AFTER_CONNECTIONS: u64 = 256;
/// ... at most this often.
pub const TRIM_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// The longest answer head a lookup service may send (bytes).
pub const ANSWER_HEAD_BYTES_MAX: usize = 64 << 10;
/// The largest answer a lookup service may send (bytes).
pub const ANSWER_BYTES_MAX: usize = 16 << 20;

const _: () = assert!(SHARD_TICK.as_nanos() <= METRICS_INTERVAL_MIN.as_nanos());
const _: () = assert!(RELOAD_POLL.as_nanos() < RELOAD_TAKE_TIMEOUT.as_nanos());
// A reload is taken on the next tick of an idle shard, far within the time it is given.
const _: () = assert!(100 * SHARD_TICK.as_nanos() <= RELOAD_TAKE_TIMEOUT.as_nanos());
const _: () = assert!(ANSWER_HEAD_BYTES_MAX < ANSWER_BYTES_MAX);
const _: () = assert!(ACCEPT_BACKOFF_MIN.as_nanos() < ACCEPT_BACKOFF_MAX.as_nanos());
// A listener failing at the longest back-off stays down between its tries.
const _: () = assert!(ACCEPT_BACKOFF_MAX.as_nanos() < ACCEPT_DOWN_HOLD.as_nanos());
const _: () = assert!(REFUSE_LINGER.as_nanos() <= CLOSE_LINGER.as_nanos());

/// A Kafka source ends a round (hands the shards what it dealt) at this many messages or
/// bytes, or when nothing more is ready.
pub const ROUND_MESSAGES_MAX: u64 = 4096;
pub const ROUND_BYTES_MAX: u64 = 1 << 20;
/// Chunks a shard's channel from a Kafka source's group thread holds.
pub const SOURCE_CHUNKS_MAX: usize = 4;
/// How long the group thread waits in librdkafka's poll when it has nothing to hand over.
pub const SOURCE_IDLE_POLL: Duration = Duration::from_millis(20);
