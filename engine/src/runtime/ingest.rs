//! TCP ingest: listeners, connections, reading frames and writing replies.
//!
//! Each connection has a reader and an ack writer. The reader fills its receive buffer
//! ([`RecvBuf`]), and the [`FrameSplitter`] says where each whole frame lies: a hello gets the
//! partition map; a batch is taken by its owner (this shard, in place, or another, a copy
//! forwarded). A stream the splitter cannot read past is answered and closed. The writer sends
//! the replies in the order their frames came, however they complete; then the connection is
//! closed cleanly (FIN, what the client still sends read and dropped for a moment), never
//! reset while the client is still owed a reply.
//!
//! Every byte held for a connection is bounded: the buffer is `read_buffer_bytes` while frames
//! fit; a larger frame is charged whole to the shard's in-flight budget as soon as its header
//! is in (the reader waits while the budget is spent), and only then does the buffer grow to
//! hold it; it shrinks back once no partial frame is left. A connection that sends nothing
//! for `idle_timeout_ms`, or whose frame is not whole `frame_timeout_ms` after its first
//! bytes (waiting for the budget included), is closed. Past `connections_max` a connection gets an overloaded ack and is closed.
//!
//! An accept that fails (out of descriptors, of buffers, ...) is counted, logged once per
//! change of state, retried with back-off, and reported by `GET /healthz` while it lasts.

use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use sluice_protocol::frame::{FRAME_HEADER_BYTES, FrameHeader, decode_hello};
use sluice_protocol::{Ack, AckStatus, Error, FrameKind, FrameSplitter, Split};

use super::forward;
use super::recv::RecvBuf;
use super::shard::{Frame, Shard, rejected};
use super::two_pass::Order;
use crate::config::Config;
use crate::consts::{
    ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, ACCEPT_DOWN_HOLD, CLOSE_LINGER, LISTEN_BACKLOG,
    REFUSE_LINGER, REPLY_BUFFER_BYTES,
};

/// The frame kinds a client sends.
const CLIENT_KINDS: &[FrameKind] = &[FrameKind::Batch, FrameKind::Hello];

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

/// The shard's listeners: the shared port, then its own.
pub(super) fn listen(cfg: &Config, shard: usize) -> Result<[TcpListener; 2], String> {
    // The shard's own port first, without SO_REUSEPORT, so that a second engine on the same
    // ports fails here instead of silently sharing them.
    let own = bind(cfg.shard_addr(shard), false)
        .map_err(|e| format!("shard {shard}: listen {}: {e}", cfg.shard_addr(shard)))?;
    let shared = bind(cfg.listen.shared, true)
        .map_err(|e| format!("shard {shard}: listen {}: {e}", cfg.listen.shared))?;
    Ok([shared, own])
}

/// A listener on `addr`, shared by every shard (SO_REUSEPORT: the kernel spreads its
/// connections) or not. Both set SO_REUSEADDR, so that connections an earlier listener on
/// the port left in TIME_WAIT (an engine restarted after a kill, say) do not stop the bind.
fn bind(addr: std::net::SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(shared)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is a listening TCP socket we own; ownership passes to the glommio listener.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

/// Starts a task per listener that serves each connection it accepts.
pub(super) fn accept(shard: &Rc<Shard>, listeners: [TcpListener; 2]) {
    for (i, listener) in listeners.into_iter().enumerate() {
        let shard = shard.clone();
        spawn_local(async move { accept_loop(&shard, i, listener).await }).detach();
    }
}

/// Accepts on listener `i` until the shard stops. A failed accept is counted; one that says
/// the engine is out of something (descriptors, buffers, memory) marks the listener down,
/// is logged when the error changes, and is retried with back-off until an accept works.
async fn accept_loop(shard: &Rc<Shard>, i: usize, listener: TcpListener) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    // The error the listener fails with, how many accepts failed since it began, and when
    // the last did.
    let mut failing: Option<(String, u64, Instant)> = None;
    loop {
        let accepted = {
            let accept = std::pin::pin!(listener.accept());
            match futures::future::select(accept, shard.stopped.clone()).await {
                futures::future::Either::Left((r, _)) => r,
                // The listener closes with this task: new connections are refused.
                futures::future::Either::Right(_) => return,
            }
        };
        match accepted {
            Ok(conn) => {
                // Up again once accepts work for a while: a descriptor freed now and then
                // lets one through without the shortage being over.
                if let Some((why, n, last)) = &failing
                    && last.elapsed() >= ACCEPT_DOWN_HOLD
                {
                    eprintln!(
                        "sluice: shard {}: accepting on {addr} again ({n} accepts failed: {why})",
                        shard.id
                    );
                    failing = None;
                    shard.stats.borrow_mut().listeners_down[i] = None;
                    backoff = ACCEPT_BACKOFF_MIN;
                }
                admit(shard, conn);
            }
            Err(e) => {
                let e = io::Error::from(e);
                let (k, down) = accept_error(&e);
                shard.stats.borrow_mut().accept_errors[k] += 1;
                if !down {
                    continue;
                }
                let why = crate::os_error::describe(&e);
                match &mut failing {
                    Some((w, n, last)) if *w == why => {
                        *n += 1;
                        *last = Instant::now();
                    }
                    _ => {
                        eprintln!(
                            "sluice: shard {}: accept on {addr} fails: {why}; retrying with \
                             back-off (GET /healthz says so until it works)",
                            shard.id
                        );
                        failing = Some((why.clone(), 1, Instant::now()));
                    }
                }
                shard.stats.borrow_mut().listeners_down[i] = Some((
                    format!("shard {}: accept on {addr} fails: {why}", shard.id),
                    Instant::now(),
                ));
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Where a failed accept is counted ([`crate::metrics::ACCEPT_ERRORS`]), and whether it
/// says the listener cannot accept now (rather than that one connection went wrong).
fn accept_error(e: &io::Error) -> (usize, bool) {
    match e.raw_os_error() {
        Some(libc::EMFILE) => (0, true),
        Some(libc::ENFILE) => (1, true),
        Some(libc::ENOBUFS) => (2, true),
        Some(libc::ENOMEM) => (3, true),
        Some(libc::ECONNABORTED) => (4, false),
        Some(libc::EPROTO | libc::EINTR | libc::EAGAIN | libc::EPERM) => (5, false),
        _ => (5, true),
    }
}

/// Serves `conn`, or refuses it when the shard has `connections_max` already.
fn admit(shard: &Rc<Shard>, conn: TcpStream) {
    let mut stats = shard.stats.borrow_mut();
    if stats.connections >= shard.connections_max as u64 {
        stats.connections_refused += 1;
        drop(stats);
        spawn_local(refuse_connection(conn)).detach();
        return;
    }
    stats.connections += 1;
    drop(stats);
    spawn_local(serve(shard.clone(), conn)).detach();
}

/// One overloaded ack (seq 0, partition 0) before any frame is read, then a clean close.
async fn refuse_connection(mut conn: TcpStream) {
    let ack = rejected(0, 0, AckStatus::Overloaded, 0).encode();
    if conn.write_all(&ack).await.is_ok() {
        close_cleanly(conn, REFUSE_LINGER).await;
    }
}

/// Closes `conn` without a reset: sends FIN after what was written, then reads and drops what
/// the client still sends until it closes its side or `linger` passed. (Closing a socket with
/// unread bytes makes the kernel reset it, and a reset can destroy replies not yet read.)
async fn close_cleanly(mut conn: TcpStream, linger: Duration) {
    let _ = conn.flush().await;
    if conn.shutdown(Shutdown::Write).await.is_err() {
        return;
    }
    let until = Instant::now() + linger;
    let mut sink = [0u8; 4096];
    while let Read::Bytes(n) = read_by(
        &mut conn,
        &mut sink,
        until,
        &mut std::future::pending::<()>(),
    )
    .await
    {
        if n == 0 {
            break;
        }
    }
}

/// What a read with a deadline gave.
enum Read {
    /// Bytes read (0: the peer closed its side).
    Bytes(usize),
    Failed,
    TimedOut,
    /// The shard stops.
    Stopped,
}

/// Reads into `buf`, giving up at `deadline` or when `stop` resolves (the caller keeps one
/// `stop` for all its reads). A read that can complete at once sets no timer.
async fn read_by(
    rd: &mut (impl futures::AsyncRead + Unpin),
    buf: &mut [u8],
    deadline: Instant,
    stop: &mut (impl Future + Unpin),
) -> Read {
    use futures::future::{Either, select};
    let done = |r: io::Result<usize>| r.map_or(Read::Failed, Read::Bytes);
    if let Some(r) = rd.read(buf).now_or_never() {
        return done(r);
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    if wait.is_zero() {
        return Read::TimedOut;
    }
    let read = std::pin::pin!(rd.read(buf));
    let timer = std::pin::pin!(glommio::timer::sleep(wait));
    match select(read, select(timer, stop)).await {
        Either::Left((r, _)) => done(r),
        Either::Right((Either::Left(_), _)) => Read::TimedOut,
        Either::Right((Either::Right(_), _)) => Read::Stopped,
    }
}

async fn serve(shard: Rc<Shard>, conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let (mut rd, wr) = conn.split();
    let (tx, rx) = local_channel::new_bounded(shard.cfg.tuning.connection_batches_max);
    let writer = spawn_local(write_replies(rx, wr));
    read_frames(&shard, &mut rd, &tx).await;
    drop(tx);
    // Every frame read is answered before the connection closes.
    if let Some(wr) = writer.await
        && let Ok(conn) = rd.reunite(wr)
    {
        close_cleanly(conn, CLOSE_LINGER).await;
    }
    let mut stats = shard.stats.borrow_mut();
    stats.connections -= 1;
    stats.ended_since_trim += 1;
}

/// The `seq` and `partition` fields of a frame's header as received (0 where not received),
/// which every ack echoes.
pub(super) fn echoed(head: &[u8]) -> (u64, u32) {
    if head.len() < FRAME_HEADER_BYTES {
        return (0, 0);
    }
    let seq = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let partition = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    (seq, partition)
}

/// Refuses a frame whole for `e` (counted), echoing its `seq` and `partition`.
fn refuse(shard: &Shard, e: &Error, (seq, partition): (u64, u32)) -> Reply {
    shard.pipeline.borrow_mut().counters.reject_frame(e);
    Reply::Now(rejected(seq, partition, AckStatus::Rejected, e.code()))
}

/// A connection's receive buffer and what it holds of the shard's budget: the buffer's bytes
/// are counted in `sluice_receive_buffer_bytes`, and `charged` is the in-flight charge of the
/// frame in progress (its whole length, taken once its header is in). Both go back on drop.
struct Held<'a> {
    shard: &'a Shard,
    buf: RecvBuf,
    charged: u64,
}

impl<'a> Held<'a> {
    fn new(shard: &'a Shard, bytes: usize) -> io::Result<Held<'a>> {
        let buf = RecvBuf::new(bytes)?;
        shard.stats.borrow_mut().receive_buffer_bytes += buf.len() as u64;
        Ok(Held {
            shard,
            buf,
            charged: 0,
        })
    }

    /// Makes the buffer `bytes` long (it may move; its first bytes are kept).
    fn resize(&mut self, bytes: usize) -> io::Result<()> {
        let before = self.buf.len() as u64;
        self.buf.resize(bytes)?;
        let mut stats = self.shard.stats.borrow_mut();
        stats.receive_buffer_bytes = stats.receive_buffer_bytes - before + self.buf.len() as u64;
        Ok(())
    }

    /// The charge of the frame just completed, now the frame's own (0 if none was taken).
    fn take_charge(&mut self) -> u64 {
        std::mem::take(&mut self.charged)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.shard.inflight.refund(self.charged);
        self.shard.stats.borrow_mut().receive_buffer_bytes -= self.buf.len() as u64;
    }
}

async fn read_frames(shard: &Rc<Shard>, rd: &mut ReadHalf<TcpStream>, tx: &LocalSender<Reply>) {
    let order = Order::default();
    let tuning = &shard.cfg.tuning;
    let small = tuning.read_buffer_bytes;
    let idle = Duration::from_millis(tuning.idle_timeout_ms);
    let frame_time = Duration::from_millis(tuning.frame_timeout_ms);
    let limits = *shard.pipeline.borrow().limits();
    let Ok(mut held) = Held::new(shard, small) else {
        return;
    };
    let mut split = FrameSplitter::new(limits, CLIENT_KINDS);
    // Answers `e` and hangs up: the stream cannot be read past it.
    let close = async |e: Error, head: &[u8]| {
        shard.pipeline.borrow_mut().counters.close_connection(&e);
        let _ = tx.send(refuse(shard, &e, echoed(head))).await;
    };
    // When the last bytes came, or the frame in progress began.
    let mut since = Instant::now();
    let mut stop = shard.stopped.clone();
    loop {
        let pending = split.pending();
        let partial = !pending.is_empty();
        let deadline = since + if partial { frame_time } else { idle };
        let n = match read_by(rd, &mut held.buf[pending.end..], deadline, &mut stop).await {
            Read::Bytes(0) => {
                // A client that half-closes in the middle of a frame is told so.
                if let Err(e) = split.finish(&held.buf) {
                    close(e, &held.buf[split.pending()]).await;
                }
                return;
            }
            Read::Bytes(n) => n,
            Read::Failed => return,
            Read::TimedOut if partial => {
                shard.stats.borrow_mut().timed_out[1] += 1;
                let e = split.finish(&held.buf).expect_err("a partial frame");
                let head = &held.buf[split.pending()];
                let _ = tx.send(refuse(shard, &e, echoed(head))).await;
                return;
            }
            Read::TimedOut => {
                shard.stats.borrow_mut().timed_out[0] += 1;
                return;
            }
            // The whole frames read are answered (shutting down); a partial one was not read,
            // as far as the client can tell: it sends it again.
            Read::Stopped => 0,
        };
        let received = Instant::now();
        if !partial {
            since = received;
        }
        split.push(n);
        loop {
            match split.next(&held.buf) {
                Ok(Split::Frame { header, range }) => {
                    let prepaid = held.take_charge();
                    let frame = &mut held.buf[range];
                    let reply = take_frame(shard, header, frame, received, &order, prepaid).await;
                    if tx.send(reply).await.is_err() {
                        return;
                    }
                    since = received;
                }
                Ok(Split::Need(more)) => {
                    let have = split.pending().len();
                    if have >= FRAME_HEADER_BYTES && held.charged == 0 {
                        // The frame in progress, its header checked: charge it whole, then
                        // make room for it. It must still be whole within its time, waiting
                        // for the budget included, so that stalled frames cannot hold the
                        // budget from the others for long.
                        let len = have + more;
                        if !shard
                            .inflight
                            .charge_by(len as u64, since + frame_time)
                            .await
                        {
                            shard.stats.borrow_mut().timed_out[1] += 1;
                            let e = split.finish(&held.buf).expect_err("a partial frame");
                            let head = &held.buf[split.pending()];
                            let _ = tx.send(refuse(shard, &e, echoed(head))).await;
                            return;
                        }
                        held.charged = len as u64;
                        split.compact(&mut held.buf);
                        if held.buf.len() < len && held.resize(len).is_err() {
                            return;
                        }
                    }
                    break;
                }
                Err(e) => {
                    close(e, &held.buf[split.pending()]).await;
                    return;
                }
            }
        }
        if shard.stopping.get() {
            return;
        }
        split.compact(&mut held.buf);
        if split.pending().is_empty() && held.buf.len() > small && held.resize(small).is_err() {
            return;
        }
    }
}

/// Takes one whole frame (its header checked by the splitter) and says what to reply.
async fn take_frame(
    shard: &Rc<Shard>,
    header: FrameHeader,
    frame: &mut [u8],
    received: Instant,
    order: &Order,
    prepaid: u64,
) -> Reply {
    let id = (header.seq, header.partition);
    if header.kind == FrameKind::Hello {
        return match decode_hello(frame) {
            Ok(()) => Reply::Bytes(shard.hello.clone()),
            Err(e) => refuse(shard, &e, id),
        };
    }
    let owner = match shard.owner(header.partition) {
        Ok(owner) if !shard.stopping.get() => owner,
        // Not taken: its charge goes back.
        answer => {
            shard.inflight.refund(prepaid);
            return match answer {
                Err(e) => refuse(shard, &e, id),
                Ok(_) => Reply::Now(rejected(id.0, id.1, AckStatus::ShuttingDown, 0)),
            };
        }
    };
    let (tx, done) = oneshot::channel();
    if owner == shard.id {
        shard
            .take_owned(Frame::InPlace(frame), id, tx, received, order, prepaid)
            .await;
    } else {
        // The owner charges its copy to its own budget.
        forward::send(shard, owner, frame, tx, received).await;
        shard.inflight.refund(prepaid);
    }
    Reply::Wait {
        done,
        seq: id.0,
        partition: id.1,
    }
}

/// Sends each reply in turn; gives the write half back once every reply is out, or `None`
/// if the connection broke.
async fn write_replies(
    rx: LocalReceiver<Reply>,
    mut wr: WriteHalf<TcpStream>,
) -> Option<WriteHalf<TcpStream>> {
    let mut out = Vec::with_capacity(REPLY_BUFFER_BYTES);
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
                            return None;
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
                    return None;
                }
                rx.recv().await
            }
        };
    }
    flush(&mut wr, &mut out).await.ok()?;
    wr.flush().await.ok()?;
    Some(wr)
}

/// Writes out what `out` holds, if anything, and empties it.
async fn flush(wr: &mut WriteHalf<TcpStream>, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    Ok(())
}
