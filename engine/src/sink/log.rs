//! The segments of one stream on one shard, as its network sinks and its retention see them:
//! a plain state machine (positions in, decisions out, the time passed in).
//!
//! The model:
//!
//! - The writer appends records; after each commit round the commit task reports how far
//!   the stream is **durable** ([`StreamLog::durable`]): a segment and an offset, the number
//!   of records written since start, and the time. Sinks never read past that point, so a
//!   record leaves the host only once it is stored under the durability policy.
//! - Each network sink has a **cursor**: the position after the last record the downstream
//!   confirmed. A sink reads from its read position ([`StreamLog::next_read`]) and confirms
//!   in order ([`StreamLog::confirm`]); the runtime persists confirmed cursors.
//! - The **backlog** of a sink is the bytes between its cursor and the durable end. When it
//!   reaches `backlog_bytes_max`, `block` holds the shard's intake ([`StreamLog::full`]) and
//!   `drop_oldest` gives up whole sealed segments ([`StreamLog::drop_oldest`]).
//! - **Retention** ([`StreamLog::expired`]): with sinks, a sealed segment every cursor has
//!   passed is deleted; without, one older than `retain_ms` or beyond `retain_bytes_max`. The
//!   segment being written is never deleted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::segment::SEGMENT_HEADER_BYTES;

/// A position in a stream's segments on one shard: the segment and a byte offset in it.
/// Ordered by segment, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seq: u32,
    pub offset: u64,
}

impl Pos {
    /// The first record of segment `seq`.
    pub fn start(seq: u32) -> Pos {
        Pos {
            seq,
            offset: SEGMENT_HEADER_BYTES as u64,
        }
    }
}

/// A segment on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    pub seq: u32,
    /// Where its durable records end.
    pub end: u64,
    /// When its last record was written (ms since the epoch), once it is sealed (the writer
    /// moved on); `None` for the segment being written.
    pub sealed_ms: Option<u64>,
}

/// A durable point, kept while some cursor is behind it: for backlog records and lag.
#[derive(Debug, Clone, Copy)]
struct Mark {
    pos: Pos,
    records: u64,
    at: Instant,
}

/// What retention keeps of a stream without network sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete sealed segments whose last record is older than this.
    pub retain_ms: Option<u64>,
    /// Delete the oldest sealed segments while this shard's segments of the stream hold
    /// more bytes than this.
    pub retain_bytes_max: Option<u64>,
}

/// Marks kept at most; beyond, every other old one is dropped (figures stay approximate).
const MARKS_MAX: usize = 4096;

/// One stream's segments on one shard, with the cursors of its network sinks.
#[derive(Debug)]
pub struct StreamLog {
    segments: VecDeque<SegmentMeta>,
    marks: VecDeque<Mark>,
    /// Records made durable since start.
    records: u64,
    /// Each sink's confirmed cursor.
    cursors: Vec<Pos>,
    /// Per sink, the oldest segment `drop_oldest` gave up whose records the sink has not yet
    /// counted ([`StreamLog::counted`]): retention keeps it and those after it on disk.
    counting: Vec<Option<u32>>,
}

impl StreamLog {
    /// The log of segments already on disk (sealed; `(seq, length, last write ms)`, any
    /// order), whose sinks' persisted cursors are `cursors` (`None`: start at the oldest
    /// segment), and the segment `current` the writer just opened.
    pub fn new(
        mut existing: Vec<(u32, u64, u64)>,
        cursors: &[Option<Pos>],
        current: u32,
        now: Instant,
    ) -> StreamLog {
        existing.sort_unstable();
        let mut segments: VecDeque<SegmentMeta> = existing
            .into_iter()
            .filter(|(seq, _, _)| *seq < current)
            .map(|(seq, len, ms)| SegmentMeta {
                seq,
                end: len.max(SEGMENT_HEADER_BYTES as u64),
                sealed_ms: Some(ms),
            })
            .collect();
        segments.push_back(SegmentMeta {
            seq: current,
            end: SEGMENT_HEADER_BYTES as u64,
            sealed_ms: None,
        });
        let oldest = Pos::start(segments[0].seq);
        let mut log = StreamLog {
            segments,
            marks: VecDeque::new(),
            records: 0,
            cursors: cursors.iter().map(|c| c.unwrap_or(oldest)).collect(),
            counting: vec![None; cursors.len()],
        };
        log.marks.push_back(Mark {
            pos: log.head(),
            records: 0,
            at: now,
        });
        log
    }

    /// Network sinks reading this log.
    pub fn sinks(&self) -> usize {
        self.cursors.len()
    }

    /// Where the durable records end.
    pub fn head(&self) -> Pos {
        let last = self
            .segments
            .back()
            .expect("the current segment is always there");
        Pos {
            seq: last.seq,
            offset: last.end,
        }
    }

    /// Records made durable since start.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The segments on disk, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentMeta> {
        self.segments.iter()
    }

    /// The writer's records are durable up to `end` of segment `seq`, `records` in all since
    /// start. A newer segment seals the ones before it at `now_ms`.
    pub fn durable(&mut self, seq: u32, end: u64, records: u64, now: Instant, now_ms: u64) {
        let head = self.head();
        assert!(
            (seq, end) >= (head.seq, head.offset),
            "durable points only move forward"
        );
        assert!(records >= self.records, "records only grow");
        if seq > head.seq {
            for s in self.segments.iter_mut() {
                s.sealed_ms.get_or_insert(now_ms);
            }
            self.segments.push_back(SegmentMeta {
                seq,
                end,
                sealed_ms: None,
            });
        } else {
            self.segments.back_mut().expect("current").end = end;
        }
        if records > self.records || seq > head.seq {
            self.records = records;
            self.marks.push_back(Mark {
                pos: self.head(),
                records,
                at: now,
            });
            if self.marks.len() > MARKS_MAX {
                self.thin_marks();
            }
        }
    }

    /// Keeps the newest half of the marks whole and every other one of the older half.
    fn thin_marks(&mut self) {
        let half = self.marks.len() / 2;
        let mut i = 0;
        self.marks.retain(|_| {
            i += 1;
            i > half || i % 2 == 0
        });
    }

    /// Sink `sink`'s confirmed cursor.
    pub fn cursor(&self, sink: usize) -> Pos {
        self.cursors[sink]
    }

    /// Sink `sink`'s downstream confirmed every record before `pos`.
    pub fn confirm(&mut self, sink: usize, pos: Pos) {
        if pos > self.cursors[sink] {
            assert!(pos <= self.head(), "a sink confirms only what it read");
            self.cursors[sink] = pos;
            self.prune_marks();
        }
    }

    /// Drops the marks every cursor has passed but the last such.
    fn prune_marks(&mut self) {
        let Some(min) = self.cursors.iter().min().copied() else {
            return;
        };
        while self.marks.len() > 1 && self.marks[1].pos <= min {
            self.marks.pop_front();
        }
    }

    /// The next bytes to read from `from`: `(seq, from_offset, to_offset)` of one segment,
    /// moving to the next segment on disk once a sealed one is read to its end (or gone).
    /// `None` when `from` is the durable end.
    pub fn next_read(&self, from: Pos) -> Option<(u32, u64, u64)> {
        for s in &self.segments {
            if s.seq < from.seq {
                continue;
            }
            let offset = if s.seq == from.seq {
                from.offset
            } else {
                SEGMENT_HEADER_BYTES as u64
            };
            if offset < s.end {
                return Some((s.seq, offset, s.end));
            }
            // The segment being written ends the durable records.
            s.sealed_ms?;
        }
        None
    }

    /// Where a reader at `from` goes on: the start of the next segment on disk once `from`'s
    /// segment is sealed and read to its end (or gone), else `from`.
    pub fn skip_sealed(&self, from: Pos) -> Pos {
        let mut at = self.segments.iter().skip_while(|s| s.seq < from.seq);
        match at.next() {
            Some(s) if s.seq > from.seq => Pos::start(s.seq),
            Some(s) if s.sealed_ms.is_some() && from.offset >= s.end => {
                at.next().map_or(from, |n| Pos::start(n.seq))
            }
            _ => from,
        }
    }

    /// Bytes from `from` to the durable end.
    pub fn bytes_after(&self, from: Pos) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.seq >= from.seq)
            .map(|s| {
                let start = if s.seq == from.seq {
                    from.offset
                } else {
                    SEGMENT_HEADER_BYTES as u64
                };
                s.end.saturating_sub(start)
            })
            .sum()
    }

    /// Sink `sink`'s backlog in bytes.
    pub fn backlog_bytes(&self, sink: usize) -> u64 {
        self.bytes_after(self.cursors[sink])
    }

    /// Records made durable since start that sink `sink` has not confirmed (those of the
    /// segments found on disk at start are not counted: see tuning.md), as of the last
    /// commit round it passed.
    pub fn backlog_records(&self, sink: usize) -> u64 {
        let cursor = self.cursors[sink];
        let passed = self
            .marks
            .iter()
            .take_while(|m| m.pos <= cursor)
            .last()
            .map_or(0, |m| m.records);
        self.records - passed
    }

    /// How long the oldest record sink `sink` has not confirmed has been durable.
    pub fn lag(&self, sink: usize, now: Instant) -> Duration {
        let cursor = self.cursors[sink];
        self.marks
            .iter()
            .find(|m| m.pos > cursor)
            .map_or(Duration::ZERO, |m| now.saturating_duration_since(m.at))
    }

    /// Whether sink `sink`'s backlog reached `max` bytes.
    pub fn full(&self, sink: usize, max: u64) -> bool {
        self.backlog_bytes(sink) >= max
    }

    /// `drop_oldest`: while sink `sink`'s backlog is at least `max` bytes, gives up its oldest
    /// sealed segment: its cursor moves to the start of the next. Returns each segment given up
    /// with the range `(seq, from, end)` the sink had not delivered (to count its records).
    /// Retention keeps the segments given up until the sink says it counted them
    /// ([`StreamLog::counted`]).
    pub fn drop_oldest(&mut self, sink: usize, max: u64) -> Vec<(u32, u64, u64)> {
        let mut dropped = Vec::new();
        while self.backlog_bytes(sink) >= max {
            let cursor = self.cursors[sink];
            let Some(i) = self.segments.iter().position(|s| s.seq >= cursor.seq) else {
                break;
            };
            let s = self.segments[i];
            let Some(next) = self.segments.get(i + 1) else {
                // Only the segment being written is behind: nothing sealed to give up.
                break;
            };
            let from = if s.seq == cursor.seq {
                cursor.offset
            } else {
                SEGMENT_HEADER_BYTES as u64
            };
            dropped.push((s.seq, from, s.end));
            self.cursors[sink] = Pos::start(next.seq);
        }
        if let Some(&(first, _, _)) = dropped.first() {
            let held = &mut self.counting[sink];
            *held = Some(held.map_or(first, |h| h.min(first)));
        }
        self.prune_marks();
        dropped
    }

    /// Sink `sink` counted the records of the segments `drop_oldest` gave up: retention may
    /// let them go.
    pub fn counted(&mut self, sink: usize) {
        self.counting[sink] = None;
    }

    /// Removes from the log and returns the segments to delete now: with sinks, the sealed
    /// ones every cursor has passed; without, by `retention` (nothing when it is unset).
    /// `shards` splits `retain_bytes_max` over the shards writing the stream.
    pub fn expired(&mut self, retention: &Retention, shards: usize, now_ms: u64) -> Vec<u32> {
        let mut out = Vec::new();
        if !self.cursors.is_empty() {
            let min = self.cursors.iter().map(|c| c.seq);
            let min = min.chain(self.counting.iter().flatten().copied()).min();
            let min = min.expect("some sink");
            while self.segments.len() > 1 && self.segments[0].seq < min {
                out.push(self.segments.pop_front().expect("len > 1").seq);
            }
            return out;
        }
        if let Some(ms) = retention.retain_ms {
            while self.segments.len() > 1
                && self.segments[0]
                    .sealed_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) > ms)
            {
                out.push(self.segments.pop_front().expect("len > 1").seq);
            }
        }
        if let Some(max) = retention.retain_bytes_max {
            let max = max / shards.max(1) as u64;
            let mut total: u64 = self.segments.iter().map(|s| s.end).sum();
            while self.segments.len() > 1 && total > max {
                let s = self.segments.pop_front().expect("len > 1");
                total -= s.end;
                out.push(s.seq);
            }
        }
        out
    }
}

/// A cursor as its file holds it: `SEQ OFFSET` and a newline.
pub fn store_cursor_text(pos: Pos) -> String {
    format!("{} {}\n", pos.seq, pos.offset)
}

/// The cursor in `path`; `None` when there is no such file (a sink that never delivered).
pub fn load_cursor(path: &std::path::Path) -> Result<Option<Pos>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    match (words.next(), words.next(), words.next()) {
        (Some(Ok(seq)), Some(Ok(offset)), None) if seq <= u64::from(u32::MAX) => Ok(Some(Pos {
            seq: seq as u32,
            offset,
        })),
        _ => Err(format!(
            "{}: not a cursor (`SEGMENT OFFSET`); remove it to deliver the stream's segments \
             from the oldest",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = SEGMENT_HEADER_BYTES as u64;

    fn pos(seq: u32, offset: u64) -> Pos {
        Pos { seq, offset }
    }

    #[test]
    fn sinks_read_what_is_durable_across_segments() {
        let t = Instant::now();
        let mut log = StreamLog::new(vec![(3, 1000, 5), (1, 500, 4)], &[None], 4, t);
        assert_eq!(
            log.cursor(0),
            Pos::start(1),
            "no cursor: the oldest segment"
        );
        assert_eq!(log.next_read(log.cursor(0)), Some((1, H, 500)));
        assert_eq!(log.next_read(pos(1, 500)), Some((3, H, 1000)));
        assert_eq!(
            log.next_read(pos(2, 77)),
            Some((3, H, 1000)),
            "a gone segment"
        );
        assert_eq!(
            log.next_read(pos(3, 1000)),
            None,
            "the new segment holds nothing yet"
        );
        log.durable(4, 200, 10, t, 6);
        assert_eq!(log.next_read(pos(3, 1000)), Some((4, H, 200)));
        assert_eq!(log.skip_sealed(pos(3, 1000)), Pos::start(4));
        assert_eq!(log.skip_sealed(pos(4, 200)), pos(4, 200));
        assert_eq!(log.next_read(pos(4, 100)), Some((4, 100, 200)));
        assert_eq!(log.next_read(pos(4, 200)), None);
        assert_eq!(log.head(), pos(4, 200));
        assert_eq!(log.backlog_bytes(0), (500 - H) + (1000 - H) + (200 - H));
    }

    #[test]
    fn backlog_records_and_lag_follow_the_cursor() {
        let t = Instant::now();
        let mut log = StreamLog::new(vec![], &[None, None], 0, t);
        log.durable(0, 100, 3, t + Duration::from_millis(10), 0);
        log.durable(0, 200, 5, t + Duration::from_millis(20), 0);
        log.durable(1, 80, 9, t + Duration::from_millis(30), 0);
        let now = t + Duration::from_millis(100);
        assert_eq!(log.backlog_records(0), 9);
        assert_eq!(log.lag(0, now), Duration::from_millis(90));
        log.confirm(0, pos(0, 200));
        assert_eq!(log.backlog_records(0), 4);
        assert_eq!(log.lag(0, now), Duration::from_millis(70));
        assert_eq!(log.backlog_bytes(0), 80 - H);
        log.confirm(0, pos(1, 80));
        assert_eq!(
            (log.backlog_records(0), log.lag(0, now)),
            (0, Duration::ZERO)
        );
        assert_eq!(log.backlog_records(1), 9, "the other sink is where it was");
        log.confirm(1, pos(0, 100));
        assert_eq!(log.backlog_records(1), 6);
    }

    #[test]
    fn drop_oldest_gives_up_sealed_segments_only() {
        let t = Instant::now();
        let mut log = StreamLog::new(vec![(0, 1000, 1), (1, 1000, 2)], &[Some(pos(0, 400))], 2, t);
        log.durable(2, 900, 1, t, 3);
        let total = (1000 - 400) + (1000 - H) + (900 - H);
        assert_eq!(log.backlog_bytes(0), total);
        assert!(log.full(0, total));
        assert_eq!(log.drop_oldest(0, total + 1), vec![]);
        let dropped = log.drop_oldest(0, 1000);
        assert_eq!(dropped, vec![(0, 400, 1000), (1, H, 1000)]);
        assert_eq!(log.cursor(0), Pos::start(2));
        assert_eq!(
            log.drop_oldest(0, 1),
            vec![],
            "never the segment being written"
        );
        let keep = Retention::default();
        assert_eq!(
            log.expired(&keep, 1, 10),
            Vec::<u32>::new(),
            "kept on disk while the sink counts their records"
        );
        log.counted(0);
        assert_eq!(log.expired(&keep, 1, 10), vec![0, 1]);
    }

    #[test]
    fn retention_deletes_what_every_sink_passed() {
        let t = Instant::now();
        let mut log = StreamLog::new(vec![(0, 100, 1), (1, 100, 1)], &[None, None], 2, t);
        let keep = Retention::default();
        assert_eq!(log.expired(&keep, 1, 10), Vec::<u32>::new());
        log.confirm(0, pos(1, 50));
        log.confirm(1, pos(2, H));
        assert_eq!(
            log.expired(&keep, 1, 10),
            vec![0],
            "sink 0 still reads segment 1"
        );
        log.confirm(0, pos(2, H));
        assert_eq!(log.expired(&keep, 1, 10), vec![1]);
        assert_eq!(
            log.expired(&keep, 1, 10),
            Vec::<u32>::new(),
            "never the current one"
        );
    }

    #[test]
    fn retention_by_age_and_size_without_sinks() {
        let t = Instant::now();
        let existing = vec![(0, 1000, 100), (1, 1000, 200), (2, 1000, 300)];
        let mut log = StreamLog::new(existing.clone(), &[], 3, t);
        assert_eq!(
            log.expired(&Retention::default(), 1, 10_000),
            Vec::<u32>::new()
        );
        let by_age = Retention {
            retain_ms: Some(150),
            retain_bytes_max: None,
        };
        assert_eq!(log.expired(&by_age, 1, 400), vec![0, 1]);
        let mut log = StreamLog::new(existing, &[], 3, t);
        let by_size = Retention {
            retain_ms: None,
            retain_bytes_max: Some(2 * 1100),
        };
        // Two shards: this one keeps 1,100 bytes (the current segment holds a header).
        assert_eq!(log.expired(&by_size, 2, 0), vec![0, 1]);
        assert_eq!(log.segments().count(), 2);
    }

    #[test]
    fn cursors_round_trip_through_their_file() {
        let dir = std::env::temp_dir().join(format!("sluice-cursor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("000.kafka.cursor");
        assert_eq!(load_cursor(&path), Ok(None));
        std::fs::write(&path, store_cursor_text(pos(7, 4096))).unwrap();
        assert_eq!(load_cursor(&path), Ok(Some(pos(7, 4096))));
        std::fs::write(&path, "7").unwrap();
        assert!(load_cursor(&path).unwrap_err().contains("not a cursor"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn marks_stay_bounded() {
        let t = Instant::now();
        let mut log = StreamLog::new(vec![], &[None], 0, t);
        for i in 1..=20_000u64 {
            log.durable(0, H + i * 8, i, t + Duration::from_micros(i), 0);
        }
        assert!(log.marks.len() <= MARKS_MAX);
        assert_eq!(log.backlog_records(0), 20_000);
        log.confirm(0, log.head());
        assert_eq!(log.backlog_records(0), 0);
        assert_eq!(log.marks.len(), 1);
    }
}
