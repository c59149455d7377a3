//! Group commit and ack order as a plain state machine: no I/O, no clock of its own.
//!
//! A shard's [`Pipeline::step`](crate::pipeline::Pipeline::step) leaves each batch's records
//! in per-stream output buffers. The [`Committer`] decides, for the runtime that carries it
//! out, when those buffers are written to their segments, when a sync round makes what was
//! written durable, and when each batch is released to be acked, under the `durability`
//! policy:
//!
//! - Writing never waits for the policy: queued batches are written at once (all streams in
//!   one [`Step::Write`]), so the disk works while an interval runs. A round that is due
//!   after a write syncs before the next write, and one that came due while the committer
//!   waited syncs after writing what queued meanwhile, so each round takes all it can.
//! - `every_batch`: a sync round follows every write (batches queued during it share the
//!   next); `interval_us = N`: a round at most every N µs, sooner once `commit_bytes_max`
//!   bytes were written since the last; `none`: batches are released when their write
//!   completes, with no round.
//! - A failed write fails its round: no sync is asked for, and every batch of the round is
//!   released as not stored (the client must send it again). A failed sync does the same.
//! - Batches are released in the order they were queued, with the bytes they were charged,
//!   so the runtime can refund the in-flight [`Budget`].
//!
//! The runtime steps it: `queue` each stepped batch, then loop on [`Committer::next`], doing
//! what it says and reporting back with [`Committer::wrote`] or [`Committer::synced`], and
//! take the released batches from [`Committer::released`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Durability;
use crate::sink::writer::Durable;

/// What the runtime does next for the committer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Drain the output buffers and write them to their segments, then call
    /// [`Committer::wrote`].
    Write,
    /// Run a sync round over [`Committer::needs`], then call [`Committer::synced`].
    Sync,
    /// Nothing to do until more batches are queued or, when given, this instant passes.
    Wait(Option<Instant>),
    /// Stopping, and nothing is left: close the writers.
    Done,
}

/// A batch released: its ticket, and whether its records are stored under the policy.
#[derive(Debug)]
pub struct Released<T> {
    pub ticket: T,
    pub bytes: u64,
    pub stored: bool,
}

/// Counts of what the committer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Sync rounds run.
    pub commits: u64,
    /// Rounds whose batches were released as not stored.
    pub failed_rounds: u64,
}

#[derive(Debug)]
struct Batch<T> {
    ticket: T,
    bytes: u64,
}

/// What I/O the committer asked for and waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Idle,
    Writing,
    Syncing,
}

/// The group-commit policy of one shard. See the [module docs](self).
#[derive(Debug)]
pub struct Committer<T> {
    durability: Durability,
    commit_bytes_max: usize,
    /// Stepped, their records in the output buffers, not yet written.
    queued: Vec<Batch<T>>,
    /// Being written (drained from the buffers when the write was asked for).
    writing: Vec<Batch<T>>,
    /// Written, waiting for the next round.
    written: Vec<Batch<T>>,
    written_bytes: usize,
    /// The strongest need of each stream since the last round.
    needs: Vec<Durable>,
    /// A write of this round failed.
    failed: bool,
    last_round: Instant,
    io: Io,
    /// The last step was a write (a due round syncs before writing again).
    just_wrote: bool,
    stopping: bool,
    released: VecDeque<Released<T>>,
    /// Bytes of the batches held (queued, writing, written), for the budget's balance.
    held_bytes: u64,
    stats: CommitStats,
}

impl<T> Committer<T> {
    /// A committer for `streams` output streams; `now` starts the first interval.
    pub fn new(
        durability: Durability,
        commit_bytes_max: usize,
        streams: usize,
        now: Instant,
    ) -> Self {
        Committer {
            durability,
            commit_bytes_max,
            queued: Vec::new(),
            writing: Vec::new(),
            written: Vec::new(),
            written_bytes: 0,
            needs: vec![Durable::Nothing; streams],
            failed: false,
            last_round: now,
            io: Io::Idle,
            just_wrote: false,
            stopping: false,
            released: VecDeque::new(),
            held_bytes: 0,
            stats: CommitStats::default(),
        }
    }

    /// A stepped batch of `bytes` (what it was charged) whose records wait in the output
    /// buffers. Returns whether it is the first queued since the last write (a runtime that
    /// waits wakes then).
    pub fn queue(&mut self, ticket: T, bytes: u64) -> bool {
        self.held_bytes += bytes;
        self.queued.push(Batch { ticket, bytes });
        self.queued.len() == 1
    }

    /// Stop: rounds are due at once, and [`Step::Done`] comes once nothing is held.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// What to do next, at `now`.
    pub fn next(&mut self, now: Instant) -> Step {
        assert_eq!(self.io, Io::Idle, "one step at a time");
        if !self.queued.is_empty() && !self.just_wrote {
            return self.write();
        }
        self.just_wrote = false;
        if !self.written.is_empty() && self.round_due(now) {
            if self.failed {
                self.release(false);
                return self.next(now);
            }
            self.last_round = now;
            self.io = Io::Syncing;
            return Step::Sync;
        }
        if !self.queued.is_empty() {
            return self.write();
        }
        if !self.written.is_empty() {
            return Step::Wait(Some(self.due()));
        }
        if self.stopping {
            return Step::Done;
        }
        Step::Wait(None)
    }

    fn write(&mut self) -> Step {
        self.writing = std::mem::take(&mut self.queued);
        self.io = Io::Writing;
        Step::Write
    }

    fn due(&self) -> Instant {
        match self.durability {
            Durability::IntervalUs(us) => self.last_round + Duration::from_micros(us),
            Durability::EveryBatch | Durability::None => self.last_round,
        }
    }

    fn round_due(&self, now: Instant) -> bool {
        self.stopping
            || self.written_bytes >= self.commit_bytes_max
            || self.failed
            || now >= self.due()
    }

    /// The write asked for by [`Step::Write`] completed: `bytes` drained from the buffers,
    /// and per stream what its write needs to be durable, or `None` where it failed.
    pub fn wrote(&mut self, bytes: usize, results: impl IntoIterator<Item = Option<Durable>>) {
        assert_eq!(self.io, Io::Writing, "a write was asked for");
        self.io = Io::Idle;
        self.just_wrote = true;
        for (need, r) in self.needs.iter_mut().zip(results) {
            match r {
                Some(d) => *need = (*need).max(d),
                None => self.failed = true,
            }
        }
        self.written_bytes += bytes;
        self.written.append(&mut self.writing);
        if self.durability == Durability::None {
            self.release(!self.failed);
        }
    }

    /// What each stream needs made durable in the round [`Step::Sync`] asked for.
    pub fn needs(&self) -> &[Durable] {
        &self.needs
    }

    /// The sync round asked for by [`Step::Sync`] completed, or failed.
    pub fn synced(&mut self, ok: bool) {
        assert_eq!(self.io, Io::Syncing, "a sync was asked for");
        self.io = Io::Idle;
        self.stats.commits += 1;
        self.release(ok);
    }

    /// Ends the round: every written batch is released, stored or not.
    fn release(&mut self, stored: bool) {
        if !stored {
            self.stats.failed_rounds += 1;
        }
        for b in self.written.drain(..) {
            self.held_bytes -= b.bytes;
            self.released.push_back(Released {
                ticket: b.ticket,
                bytes: b.bytes,
                stored,
            });
        }
        self.needs.fill(Durable::Nothing);
        self.written_bytes = 0;
        self.failed = false;
    }

    /// The batches released since the last call, in the order they were queued.
    pub fn released(&mut self) -> impl Iterator<Item = Released<T>> + '_ {
        self.released.drain(..)
    }

    /// Bytes of the batches queued and not yet released.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Batches queued and not yet released.
    pub fn held(&self) -> usize {
        self.queued.len() + self.writing.len() + self.written.len()
    }

    pub fn stats(&self) -> CommitStats {
        self.stats
    }
}

/// The in-flight budget of a shard: batch bytes between read and ack, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    max: u64,
    held: u64,
}

impl Budget {
    pub fn new(max: u64) -> Self {
        Budget { max, held: 0 }
    }

    /// Takes `bytes` if they fit.
    pub fn try_charge(&mut self, bytes: u64) -> bool {
        if bytes > self.available() {
            return false;
        }
        self.held += bytes;
        true
    }

    /// Gives back `bytes` charged before.
    pub fn refund(&mut self, bytes: u64) {
        assert!(
            bytes <= self.held,
            "refund of {bytes} bytes with {} held",
            self.held
        );
        self.held -= bytes;
    }

    pub fn held(&self) -> u64 {
        self.held
    }

    pub fn available(&self) -> u64 {
        self.max - self.held
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAMS: usize = 2;

    struct Rig {
        c: Committer<u32>,
        t0: Instant,
        acks: Vec<(u32, bool)>,
    }

    impl Rig {
        fn new(durability: Durability, commit_bytes_max: usize) -> Rig {
            let t0 = Instant::now();
            Rig {
                c: Committer::new(durability, commit_bytes_max, STREAMS, t0),
                t0,
                acks: Vec::new(),
            }
        }

        fn at(&self, us: u64) -> Instant {
            self.t0 + Duration::from_micros(us)
        }

        fn next(&mut self, us: u64) -> Step {
            let s = self.c.next(self.at(us));
            self.take();
            s
        }

        fn take(&mut self) {
            let acks: Vec<_> = self.c.released().map(|r| (r.ticket, r.stored)).collect();
            self.acks.extend(acks);
        }

        fn write_ok(&mut self, bytes: usize) {
            self.c
                .wrote(bytes, [Some(Durable::Sync), Some(Durable::Flush)]);
            self.take();
        }

        fn synced(&mut self, ok: bool) {
            self.c.synced(ok);
            self.take();
        }
    }

    #[test]
    fn none_releases_when_the_write_completes() {
        let mut r = Rig::new(Durability::None, 1 << 20);
        assert!(r.c.queue(1, 100));
        assert!(!r.c.queue(2, 100));
        assert_eq!(r.next(0), Step::Write);
        assert!(r.c.queue(3, 100), "the first queued since the write");
        r.write_ok(64);
        assert_eq!(r.acks, [(1, true), (2, true)]);
        assert_eq!(r.next(0), Step::Write);
        r.write_ok(32);
        assert_eq!(r.acks, [(1, true), (2, true), (3, true)]);
        assert_eq!(r.next(0), Step::Wait(None));
        assert_eq!(r.c.stats().commits, 0, "no round under none");
    }

    #[test]
    fn every_batch_syncs_after_each_write_and_batches_queued_meanwhile_share_the_next() {
        let mut r = Rig::new(Durability::EveryBatch, 1 << 20);
        r.c.queue(1, 10);
        assert_eq!(r.next(0), Step::Write);
        r.c.queue(2, 10);
        r.write_ok(8);
        assert!(r.acks.is_empty(), "not acked before its sync");
        assert_eq!(r.next(1), Step::Sync);
        assert_eq!(r.c.needs(), [Durable::Sync, Durable::Flush]);
        r.c.queue(3, 10);
        r.synced(true);
        assert_eq!(r.acks, [(1, true)]);
        assert_eq!(r.c.needs(), [Durable::Nothing, Durable::Nothing]);
        assert_eq!(r.next(2), Step::Write);
        r.write_ok(16);
        assert_eq!(r.next(3), Step::Sync);
        r.synced(true);
        assert_eq!(r.acks, [(1, true), (2, true), (3, true)]);
        assert_eq!(r.c.stats().commits, 2);
    }

    #[test]
    fn interval_writes_at_once_and_syncs_when_due() {
        let mut r = Rig::new(Durability::IntervalUs(1000), 1 << 20);
        r.c.queue(1, 10);
        assert_eq!(
            r.next(100),
            Step::Write,
            "writing does not wait for the policy"
        );
        r.write_ok(8);
        assert_eq!(r.next(200), Step::Wait(Some(r.at(1000))));
        r.c.queue(2, 10);
        assert_eq!(
            r.next(300),
            Step::Write,
            "more output is written before the round"
        );
        r.write_ok(8);
        assert_eq!(r.next(999), Step::Wait(Some(r.at(1000))));
        assert_eq!(r.next(1000), Step::Sync);
        r.synced(true);
        assert_eq!(r.acks, [(1, true), (2, true)]);
        // The next interval counts from the round's start.
        r.c.queue(3, 10);
        assert_eq!(r.next(1100), Step::Write);
        r.write_ok(8);
        assert_eq!(r.next(1500), Step::Wait(Some(r.at(2000))));
        assert_eq!(r.next(2000), Step::Sync);
    }

    #[test]
    fn interval_syncs_early_once_commit_bytes_max_were_written() {
        let mut r = Rig::new(Durability::IntervalUs(1000), 100);
        r.c.queue(1, 10);
        assert_eq!(r.next(0), Step::Write);
        r.write_ok(60);
        assert!(matches!(r.next(10), Step::Wait(Some(_))));
        r.c.queue(2, 10);
        assert_eq!(r.next(20), Step::Write);
        r.write_ok(60);
        assert_eq!(r.next(30), Step::Sync, "120 bytes written, over 100");
    }

    #[test]
    fn a_due_round_syncs_before_the_next_write() {
        let mut r = Rig::new(Durability::IntervalUs(1000), 1 << 20);
        r.c.queue(1, 10);
        assert_eq!(r.next(0), Step::Write);
        r.write_ok(8);
        r.c.queue(2, 10);
        assert_eq!(r.next(1000), Step::Sync);
        r.synced(true);
        assert_eq!(r.acks, [(1, true)]);
        assert_eq!(r.next(1001), Step::Write);
    }

    #[test]
    fn a_round_that_came_due_while_waiting_writes_what_queued_first() {
        let mut r = Rig::new(Durability::IntervalUs(1000), 1 << 20);
        r.c.queue(1, 10);
        assert_eq!(r.next(0), Step::Write);
        r.write_ok(8);
        assert_eq!(r.next(10), Step::Wait(Some(r.at(1000))));
        r.c.queue(2, 10);
        assert_eq!(r.next(1200), Step::Write, "the round takes batch 2 too");
        r.write_ok(8);
        assert_eq!(r.next(1300), Step::Sync);
        r.synced(true);
        assert_eq!(r.acks, [(1, true), (2, true)]);
    }

    #[test]
    fn a_failed_write_releases_its_round_unstored_without_a_sync() {
        for durability in [
            Durability::None,
            Durability::EveryBatch,
            Durability::IntervalUs(1000),
        ] {
            let mut r = Rig::new(durability, 1 << 20);
            r.c.queue(1, 10);
            r.c.queue(2, 10);
            assert_eq!(r.next(0), Step::Write);
            r.c.wrote(8, [Some(Durable::Sync), None]);
            r.take();
            if durability != Durability::None {
                assert_eq!(
                    r.next(1),
                    Step::Wait(None),
                    "{durability}: no sync after a failure"
                );
            }
            assert_eq!(r.acks, [(1, false), (2, false)], "{durability}");
            assert_eq!(r.c.stats().failed_rounds, 1);
            assert_eq!(r.c.stats().commits, 0);
            // The next round starts clean.
            r.c.queue(3, 10);
            assert_eq!(r.next(2000), Step::Write);
            r.write_ok(8);
            if durability != Durability::None {
                assert_eq!(r.next(4000), Step::Sync);
                r.synced(true);
            }
            assert_eq!(r.acks.last(), Some(&(3, true)), "{durability}");
        }
    }

    #[test]
    fn a_failed_sync_releases_its_round_unstored() {
        let mut r = Rig::new(Durability::EveryBatch, 1 << 20);
        r.c.queue(1, 10);
        assert_eq!(r.next(0), Step::Write);
        r.write_ok(8);
        assert_eq!(r.next(0), Step::Sync);
        r.synced(false);
        assert_eq!(r.acks, [(1, false)]);
        assert_eq!(
            r.c.stats(),
            CommitStats {
                commits: 1,
                failed_rounds: 1
            }
        );
    }

    #[test]
    fn stopping_makes_the_round_due_and_ends_once_nothing_is_held() {
        let mut r = Rig::new(Durability::IntervalUs(1_000_000), 1 << 20);
        r.c.queue(1, 10);
        assert_eq!(r.next(0), Step::Write);
        r.write_ok(8);
        assert!(matches!(r.next(1), Step::Wait(Some(_))));
        r.c.stop();
        assert_eq!(r.next(2), Step::Sync);
        r.synced(true);
        assert_eq!(r.acks, [(1, true)]);
        assert_eq!(r.next(3), Step::Done);
    }

    #[test]
    fn released_batches_carry_what_they_were_charged_and_the_budget_balances() {
        let mut budget = Budget::new(100);
        let mut c = Committer::new(Durability::EveryBatch, 1 << 20, 1, Instant::now());
        assert!(budget.try_charge(60));
        c.queue('a', 60);
        assert!(!budget.try_charge(50), "a batch that does not fit waits");
        assert!(budget.try_charge(40));
        c.queue('b', 40);
        assert_eq!(budget.available(), 0);
        assert_eq!(c.held_bytes(), budget.held());
        let now = Instant::now();
        assert_eq!(c.next(now), Step::Write);
        c.wrote(100, [Some(Durable::Flush)]);
        assert_eq!(c.next(now), Step::Sync);
        c.synced(true);
        for r in c.released() {
            budget.refund(r.bytes);
        }
        assert_eq!((c.held(), c.held_bytes(), budget.held()), (0, 0, 0));
        assert!(budget.try_charge(100));
    }

    #[test]
    #[should_panic(expected = "refund of 10 bytes with 0 held")]
    fn a_refund_of_bytes_never_charged_is_a_bug() {
        Budget::new(100).refund(10);
    }

    #[test]
    #[should_panic(expected = "one step at a time")]
    fn asking_for_the_next_step_with_io_in_flight_is_a_bug() {
        let mut c = Committer::new(Durability::None, 1, 1, Instant::now());
        c.queue((), 1);
        let now = Instant::now();
        assert_eq!(c.next(now), Step::Write);
        c.next(now);
    }
}
