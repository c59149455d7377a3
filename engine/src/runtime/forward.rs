//! Forwarding: a batch that reached a shard other than its partition's owner is copied and
//! sent to the owner over a bounded cross-shard channel, with the reply its connection waits
//! on. Each shard has one inbox per other shard.

use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::spawn_local;
use sluice_protocol::{Ack, AckStatus, AlignedBuf};

use super::ingest::echoed;
use super::shard::{Frame, Shard, rejected};
use super::two_pass::Order;

/// A batch frame sent to the shard that owns its partition.
pub(super) struct Forward {
    frame: AlignedBuf,
    reply: oneshot::Sender<Ack>,
    received: Instant,
}

/// Starts a task per inbox that takes what other shards forward, and connects this shard's
/// senders to the others.
pub(super) async fn connect(
    shard: &Rc<Shard>,
    inbox: Vec<SharedReceiver<Forward>>,
    peers: Vec<Option<SharedSender<Forward>>>,
) {
    for rx in inbox {
        let shard = shard.clone();
        spawn_local(async move {
            let rx = rx.connect().await;
            let order = Order::default();
            while let Some(f) = rx.recv().await {
                shard.stats.borrow_mut().forwarded_in += 1;
                take_forwarded(&shard, f, &order).await;
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
        shard.peers.borrow_mut().push(connected);
    }
}

/// Sends a copy of `frame` to shard `owner`. If the owner is gone the reply is dropped with
/// the frame, and the connection's writer acks the batch as shutting down.
pub(super) async fn send(
    shard: &Shard,
    owner: usize,
    frame: &[u8],
    reply: oneshot::Sender<Ack>,
    received: Instant,
) {
    debug_assert_ne!(owner, shard.id, "a shard does not forward to itself");
    let mut copy = AlignedBuf::with_capacity(frame.len());
    copy.extend_from_slice(frame);
    shard.stats.borrow_mut().forwarded_out += 1;
    let f = Forward {
        frame: copy,
        reply,
        received,
    };
    let peer = shard.peers.borrow()[owner].clone();
    let peer = peer.expect("a channel to every other shard");
    let _ = peer.send(f).await;
}

async fn take_forwarded(shard: &Rc<Shard>, f: Forward, order: &Order) {
    let id = echoed(&f.frame);
    if shard.stopping.get() {
        let _ = f
            .reply
            .send(rejected(id.0, id.1, AckStatus::ShuttingDown, 0));
        return;
    }
    shard
        .take_owned(Frame::Owned(f.frame), id, f.reply, f.received, order, 0)
        .await;
}
