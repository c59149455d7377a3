//! TCP ingest: listeners, connections, reading frames and writing replies.
//!
//! Each connection has a reader and an ack writer. The reader fills one reusable, 16-byte
//! aligned buffer, and the [`FrameSplitter`] says where each whole frame lies: a hello gets
//! the partition map; a batch is taken by its owner (this shard, in place, or another, a copy
//! forwarded). A stream the splitter cannot read past is answered and closed. The writer sends
//! the replies in the order their frames came, however they complete.

use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use sluice_protocol::frame::{FRAME_HEADER_BYTES, FrameHeader, decode_hello};
use sluice_protocol::{ALIGN, Ack, AckStatus, AlignedBuf, Error, FrameKind, FrameSplitter, Split};

use super::forward;
use super::shard::{Frame, Shard, rejected};
use super::two_pass::Order;
use crate::config::Config;
use crate::consts::REPLY_BUFFER_BYTES;

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
    let own = bind_exclusive(cfg.shard_addr(shard))
        .map_err(|e| format!("shard {shard}: listen {}: {e}", cfg.shard_addr(shard)))?;
    let shared = TcpListener::bind(cfg.listen.shared)
        .map_err(|e| format!("shard {shard}: listen {}: {e}", cfg.listen.shared))?;
    Ok([shared, own])
}

/// A listener on `addr` that no other socket shares (glommio's `bind` sets SO_REUSEPORT).
fn bind_exclusive(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let std_listener = std::net::TcpListener::bind(addr)?;
    let fd = std_listener.into_raw_fd();
    // SAFETY: `fd` is a listening TCP socket we own; ownership passes to the glommio listener.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

/// Starts a task per listener that serves each connection it accepts.
pub(super) fn accept(shard: &Rc<Shard>, listeners: [TcpListener; 2]) {
    for listener in listeners {
        let shard = shard.clone();
        spawn_local(async move {
            loop {
                let conn = listener.accept().await;
                let Ok(conn) = conn else { break };
                let shard = shard.clone();
                spawn_local(serve(shard, conn)).detach();
            }
        })
        .detach();
    }
}

async fn serve(shard: Rc<Shard>, conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    shard.stats.borrow_mut().connections += 1;
    let (mut rd, wr) = conn.split();
    let (tx, rx) = local_channel::new_bounded(shard.cfg.tuning.connection_batches_max);
    let writer = spawn_local(write_replies(rx, wr));
    read_frames(&shard, &mut rd, &tx).await;
    drop(tx);
    writer.await;
    shard.stats.borrow_mut().connections -= 1;
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

async fn read_frames(
    shard: &Rc<Shard>,
    rd: &mut futures::io::ReadHalf<TcpStream>,
    tx: &LocalSender<Reply>,
) {
    let order = Order::default();
    let cap = shard.cfg.tuning.read_buffer_bytes.next_multiple_of(ALIGN);
    let limits = *shard.pipeline.borrow().limits();
    let mut buf = AlignedBuf::with_capacity(cap);
    buf.resize(cap, 0);
    let mut split = FrameSplitter::new(limits, CLIENT_KINDS);
    // Answers `e` and hangs up: the stream cannot be read past it.
    let close = async |e: Error, head: &[u8]| {
        shard.pipeline.borrow_mut().counters.close_connection(&e);
        let _ = tx.send(refuse(shard, &e, echoed(head))).await;
    };
    loop {
        let at = split.pending().end;
        let n = match rd.read(&mut buf[at..]).await {
            Ok(0) => {
                // A client that half-closes in the middle of a frame is told so.
                if let Err(e) = split.finish(&buf) {
                    close(e, &buf[split.pending()]).await;
                }
                return;
            }
            Err(_) => return,
            Ok(n) => n,
        };
        split.push(n);
        let received = Instant::now();
        loop {
            match split.next(&buf) {
                Ok(Split::Frame { header, range }) => {
                    let reply = take_frame(shard, header, &mut buf[range], received, &order).await;
                    if tx.send(reply).await.is_err() {
                        return;
                    }
                }
                Ok(Split::Need(_)) => break,
                Err(e) => {
                    close(e, &buf[split.pending()]).await;
                    return;
                }
            }
        }
        split.compact(&mut buf);
    }
}

/// Takes one whole frame (its header checked by the splitter) and says what to reply.
async fn take_frame(
    shard: &Rc<Shard>,
    header: FrameHeader,
    frame: &mut [u8],
    received: Instant,
    order: &Order,
) -> Reply {
    let id = (header.seq, header.partition);
    if header.kind == FrameKind::Hello {
        return match decode_hello(frame) {
            Ok(()) => Reply::Bytes(shard.hello.clone()),
            Err(e) => refuse(shard, &e, id),
        };
    }
    if shard.stopping.get() {
        return Reply::Now(rejected(id.0, id.1, AckStatus::ShuttingDown, 0));
    }
    let owner = match shard.owner(header.partition) {
        Ok(owner) => owner,
        Err(e) => return refuse(shard, &e, id),
    };
    let (tx, done) = oneshot::channel();
    if owner == shard.id {
        shard
            .take_owned(Frame::InPlace(frame), id, tx, received, order)
            .await;
    } else {
        forward::send(shard, owner, frame, tx, received).await;
    }
    Reply::Wait {
        done,
        seq: id.0,
        partition: id.1,
    }
}

async fn write_replies(rx: LocalReceiver<Reply>, mut wr: futures::io::WriteHalf<TcpStream>) {
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
