//! The commit task: carries out what the shard's [`Committer`](crate::commit::Committer)
//! asks (writes to the segment writers, sync rounds, waits) and sends each released batch
//! its ack.

use std::rc::Rc;
use std::time::Instant;

use sluice_protocol::AckStatus;

use super::shard::{Shard, record_us};
use crate::commit::Step;
use crate::config::Durability;
use crate::metrics::LATENCY_US_MAX;
use crate::sink::buf::RecordBuf;
use crate::sink::log::Pos;
use crate::sink::writer::{Durable, SegmentWriter, join_each, sync_round};

/// Counts a failed write of stream `i` and logs it when the stream's state changed (another
/// kind of error, or writes that succeed again); gives what the committer takes.
fn note_write(
    shard: &Shard,
    failing: &mut Option<String>,
    i: usize,
    stream: &str,
    r: std::io::Result<Durable>,
) -> Option<Durable> {
    match r {
        Ok(d) => {
            if failing.take().is_some() {
                eprintln!("shard {}: stream {stream}: writes succeed again", shard.id);
            }
            Some(d)
        }
        Err(e) => {
            shard.pipeline.borrow_mut().counters.write_errors[i] += 1;
            // The state is the errno (or the kind of error), not the offsets in its text.
            let state = crate::os_error::describe(&std::io::Error::from(e.kind()));
            if failing.as_deref() != Some(state.as_str()) {
                eprintln!(
                    "shard {}: stream {stream}: write failed: {e} (logged again when this changes; \
                     counted in sluice_write_errors_total)",
                    shard.id
                );
                *failing = Some(state);
            }
            None
        }
    }
}

/// Runs until the shard stops and nothing it took is left, then closes the writers.
pub(super) async fn run(shard: Rc<Shard>, mut writers: Vec<SegmentWriter>) -> Result<(), String> {
    // Each stream's records on their way to its writer, while the pipeline frames the next
    // round's into the buffer readied for them.
    let mut drained: Vec<RecordBuf> = writers.iter().map(|_| RecordBuf::default()).collect();
    let mut needs: Vec<Durable> = Vec::with_capacity(writers.len());
    // Each stream's failing write (by errno), and the failing sync round, as last logged.
    let mut failing: Vec<Option<String>> = writers.iter().map(|_| None).collect();
    let mut sync_failing: Option<String> = None;
    // Where each stream's writes end and its records since start, as of the last write round;
    // the network sinks may read that far once a sync made it durable.
    let mut written: Vec<(Pos, u64)> = writers
        .iter()
        .map(|w| {
            let (seq, offset) = w.position();
            (Pos { seq, offset }, 0)
        })
        .collect();
    let synced_by_write = shard.cfg.sinks.durability == Durability::None;
    tell_segments(&shard, &writers);
    loop {
        let now = Instant::now();
        let step = shard.committer.borrow_mut().next(now);
        send_acks(&shard);
        match step {
            Step::Write => {
                {
                    let mut p = shard.pipeline.borrow_mut();
                    let streams = p.out.iter_mut().zip(drained.iter_mut());
                    for ((out, d), w) in streams.zip(writers.iter_mut()) {
                        w.ready_next(&mut out.buf, d);
                        std::mem::swap(&mut out.buf, d);
                    }
                    for (w, records) in written.iter_mut().zip(&p.counters.records) {
                        w.1 = *records;
                    }
                }
                let bytes = drained.iter().map(|d| d.len()).sum();
                let appends = writers
                    .iter_mut()
                    .zip(drained.iter_mut())
                    .map(|(w, d)| async move { (w.stream().to_owned(), w.append(d).await) });
                let results = join_each(appends).await;
                let results: Vec<_> = results
                    .into_iter()
                    .enumerate()
                    .map(|(i, (stream, r))| note_write(&shard, &mut failing[i], i, &stream, r))
                    .collect();
                shard.committer.borrow_mut().wrote(bytes, results);
                for d in &mut drained {
                    d.clear();
                }
                for (w, out) in writers.iter().zip(written.iter_mut()) {
                    let (seq, offset) = w.position();
                    out.0 = Pos { seq, offset };
                }
                tell_segments(&shard, &writers);
                if synced_by_write {
                    publish(&shard, &written);
                }
                record_us(&shard.write_us, now);
            }
            Step::Sync => {
                needs.clear();
                needs.extend_from_slice(shard.committer.borrow().needs());
                let errors = sync_round(&writers, &needs).await;
                let now_failing = (!errors.is_empty()).then(|| errors.join("; "));
                if now_failing != sync_failing {
                    match &now_failing {
                        Some(e) => eprintln!("shard {}: sync failed: {e}", shard.id),
                        None => eprintln!("shard {}: syncs succeed again", shard.id),
                    }
                    sync_failing = now_failing;
                }
                record_us(&shard.sync_us, now);
                if errors.is_empty() {
                    publish(&shard, &written);
                }
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

/// Tells the pipeline which segment each stream's next records go in, so that they are
/// framed for it (a writer seals again those framed for an earlier one); and the metrics how
/// many segments each writer made from free files.
fn tell_segments(shard: &Shard, writers: &[SegmentWriter]) {
    let mut p = shard.pipeline.borrow_mut();
    for (out, w) in p.out.iter_mut().zip(writers) {
        out.seq = w.sealing_seq();
    }
    let mut reused = shard.outbound.reused.borrow_mut();
    for (n, w) in reused.iter_mut().zip(writers) {
        *n = w.reused();
    }
}

/// Tells the network sinks how far each stream is durable.
fn publish(shard: &Shard, written: &[(Pos, u64)]) {
    for (i, &(pos, records)) in written.iter().enumerate() {
        if pos != shard.outbound.logs[i].borrow().head() {
            shard.outbound.durable(i, pos, records);
        }
    }
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
