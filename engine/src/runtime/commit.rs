//! The commit task: carries out what the shard's [`Committer`](crate::commit::Committer)
//! asks (writes to the segment writers, sync rounds, waits) and sends each released batch
//! its ack.

use std::rc::Rc;
use std::time::Instant;

use sluice_protocol::AckStatus;

use super::shard::{Shard, record_us};
use crate::commit::Step;
use crate::metrics::LATENCY_US_MAX;
use crate::sink::writer::{Durable, SegmentWriter, sync_round};

/// Runs until the shard stops and nothing it took is left, then closes the writers.
pub(super) async fn run(shard: Rc<Shard>, mut writers: Vec<SegmentWriter>) -> Result<(), String> {
    let mut drained: Vec<Vec<u8>> = writers.iter().map(|_| Vec::new()).collect();
    let mut needs: Vec<Durable> = Vec::with_capacity(writers.len());
    loop {
        let now = Instant::now();
        let step = shard.committer.borrow_mut().next(now);
        send_acks(&shard);
        match step {
            Step::Write => {
                {
                    let mut p = shard.pipeline.borrow_mut();
                    for (out, d) in p.out.iter_mut().zip(drained.iter_mut()) {
                        std::mem::swap(&mut out.buf, d);
                    }
                }
                let bytes = drained.iter().map(Vec::len).sum();
                let appends = writers.iter_mut().zip(&drained).map(|(w, d)| async move {
                    w.append(d)
                        .await
                        .map_err(|e| format!("stream {}: write failed: {e}", w.stream()))
                });
                let results = futures::future::join_all(appends).await;
                let results = results
                    .into_iter()
                    .map(|r| r.map_err(|e| eprintln!("shard {}: {e}", shard.id)).ok());
                shard.committer.borrow_mut().wrote(bytes, results);
                for d in &mut drained {
                    d.clear();
                }
                record_us(&shard.write_us, now);
            }
            Step::Sync => {
                needs.clear();
                needs.extend_from_slice(shard.committer.borrow().needs());
                let errors = sync_round(&writers, &needs).await;
                for e in &errors {
                    eprintln!("shard {}: {e}", shard.id);
                }
                record_us(&shard.sync_us, now);
                shard.committer.borrow_mut().synced(errors.is_empty());
            }
            Step::Wait(Some(due)) => {
                let sleep =
                    std::pin::pin!(glommio::timer::sleep(due.saturating_duration_since(now)));
                let wake = std::pin::pin!(shard.wake.acquire(1));
                let _ = futures::future::select(sleep, wake).await;
            }
            Step::Wait(None) => {
                let _ = shard.wake.acquire(1).await;
            }
            Step::Done if shard.two_pass.get() > 0 => {
                // A batch between its passes queues yet, and wakes this task.
                let _ = shard.wake.acquire(1).await;
            }
            Step::Done => break,
        }
        send_acks(&shard);
    }
    debug_assert_eq!(shard.inflight.held(), 0, "every batch taken was released");
    for w in writers {
        let name = w.stream().to_owned();
        w.close()
            .await
            .map_err(|e| format!("shard {}: closing stream {name}: {e}", shard.id))?;
    }
    Ok(())
}

/// Acks the batches the committer released and refunds their bytes.
fn send_acks(shard: &Shard) {
    let mut committer = shard.committer.borrow_mut();
    let mut released = committer.released().peekable();
    if released.peek().is_none() {
        return;
    }
    let now = Instant::now();
    let mut hist = shard.latency_us.borrow_mut();
    for r in released {
        let mut ack = r.ticket.ack;
        if !r.stored {
            // Not stored: the client must send the batch again.
            ack.status = AckStatus::Overloaded;
            ack.accepted = 0;
            ack.dead_lettered = 0;
        }
        let us = now.duration_since(r.ticket.received).as_micros() as u64;
        hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
        let _ = r.ticket.reply.send(ack);
        shard.inflight.refund(r.bytes);
    }
}
