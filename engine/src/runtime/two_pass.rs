//! Batches in two passes, for a table that asks a lookup service: a batch is opened, the keys
//! it lacks are asked for, and once they came (or its time budget ran out) and the batch
//! before it from the same source is finished, it is enriched and routed. Each runs in a task
//! of its own, so the source goes on with its next batches while this one waits; their
//! records keep the source's order while their lookups overlap.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::channel::oneshot;
use glommio::spawn_local;
use sluice_protocol::{Ack, AlignedBuf};

use super::lookup::{Done, LookupClient};
use super::shard::Shard;
use crate::enrich::remote::RemoteSpec;
use crate::pipeline::{BatchOutcome, StepError};
use crate::source::Coord;

/// The order of one source's batches (a connection, or the frames one other shard forwards):
/// each waits for the one before it to finish.
#[derive(Default)]
pub(super) struct Order(RefCell<Option<Done>>);

/// Takes a batch in two passes in a task of its own (charged to the budget already).
pub(super) fn take(
    shard: &Rc<Shard>,
    mut frame: AlignedBuf,
    sources: Vec<Coord>,
    id: (u64, u32),
    reply: oneshot::Sender<Ack>,
    received: Instant,
    order: &Order,
) {
    let (done, finished) = oneshot::channel::<()>();
    let before = order.0.replace(Some(finished.shared()));
    shard.two_pass.set(shard.two_pass.get() + 1);
    let shard = shard.clone();
    spawn_local(async move {
        let bytes = frame.len() as u64;
        shard.adopt_routes();
        let result = step(&shard, &mut frame, &sources, before).await;
        shard.queue(result, id, reply, bytes, received);
        shard.two_pass.set(shard.two_pass.get() - 1);
        if shard.stopping.get() {
            shard.wake.signal(1);
        }
        drop(done);
    })
    .detach();
}

/// The client for the lookup service the tables ask now (a new one after a reload changed
/// the service).
fn client(shard: &Shard, spec: &Arc<RemoteSpec>) -> Rc<LookupClient> {
    let mut client = shard.lookup.borrow_mut();
    match &*client {
        Some(c) if c.spec() == spec => c.clone(),
        _ => {
            let c = LookupClient::new(spec.clone());
            *client = Some(c.clone());
            c
        }
    }
}

/// Puts the lookup service's answers received since the last batch into the tables.
fn take_answers(shard: &Shard) {
    if let Some(c) = &*shard.lookup.borrow() {
        let mut pipeline = shard.pipeline.borrow_mut();
        let now = Instant::now();
        c.take_answers(|a| pipeline.answer(a, now));
    }
}

/// Opens `frame`, asks for the keys it lacks, waits for them at most the time budget (the
/// shard's other tasks run meanwhile), then, once `before` is finished, enriches and routes
/// it.
async fn step(
    shard: &Shard,
    frame: &mut [u8],
    sources: &[Coord],
    before: Option<Done>,
) -> Result<BatchOutcome, StepError> {
    take_answers(shard);
    let opened = shard
        .pipeline
        .borrow_mut()
        .open(frame, Instant::now(), sources);
    let asked = {
        let pipeline = shard.pipeline.borrow();
        let (misses, refresh) = pipeline.wants();
        match (&opened, pipeline.remote_spec()) {
            (Ok(_), Some(spec)) if !misses.is_empty() || !refresh.is_empty() => {
                let client = client(shard, spec);
                let waits = client.ask(misses, refresh);
                Some((client, waits))
            }
            _ => None,
        }
    };
    if let Some((client, waits)) = asked
        && !waits.is_empty()
    {
        client.wait(waits).await;
    }
    if let Some(before) = before {
        let _ = before.await;
    }
    let batch = opened?;
    take_answers(shard);
    Ok(shard.pipeline.borrow_mut().finish(batch))
}
