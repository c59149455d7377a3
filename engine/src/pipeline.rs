//! The shard's pipeline: a synchronous, I/O-free `step` over one batch frame.
//!
//! `step` checks the frame, then for each envelope: open it in place (decrypt, validate), and
//! for each event: enrich it from the shard's tables, evaluate the route set, and encode one
//! projected record per emitting rule into that stream's output buffer. A rejected envelope
//! is encoded into the dead-letter stream's buffer with its reason and raw bytes.
//!
//! The runtime drains the output buffers into segment files and acks the batch once they are
//! written under the durability policy. Nothing here allocates per event once the output
//! buffers have grown to their working size (see `tests/engine/alloc.rs`).

use sluice_protocol::limits::ATTRS_PER_EVENT_MAX;
use sluice_protocol::{Attrs, BatchFrame, Error, Opener, Payload, Rejected};

use crate::config::Config;
use crate::enrich::Tables;
use crate::route::compiled::{Matcher, Matches};
use crate::route::{ATTR_PREFIX, Ctx, Field, RouteSet, Value};
use crate::sink::buf::RecordBuf;
use crate::sink::record::{self, RecordFormat};
use crate::sink::segment::append_record_exact;

mod project;
use crate::source::Coord;
pub use project::MISSING_MARK;
use project::{Emits, Values};

/// One stream's records since the last drain.
#[derive(Debug, Default)]
pub struct StreamOut {
    /// Framed records (segment record format), ready to append to a segment once the batch
    /// that wrote them has ended.
    pub buf: RecordBuf,
    /// Where a record whose length is not known in advance is written before it is framed.
    scratch: Vec<u8>,
    /// The segment the stream's writer will put them in, as far as the commit task last
    /// said: records carry it ([`crate::sink::segment`]), and a writer that puts them in a
    /// later segment seals them again.
    pub seq: u32,
    /// Records and their bytes since the end of the last `step` (moved into the counters).
    records: u64,
    bytes: u64,
}

/// How far [`Pipeline::step_upto`] takes each batch: benches time the stages apart by
/// cutting the pipeline off after one (each level does what the ones before it do, and more).
#[doc(hidden)]
pub mod stage {
    /// Checks the frame and each envelope's header, and decrypts it.
    pub const OPEN: u8 = 0;
    /// And validates the events.
    pub const VALIDATE: u8 = 1;
    /// And joins each event to its table rows.
    pub const ENRICH: u8 = 2;
    /// And matches the route set.
    pub const ROUTE: u8 = 3;
    /// And encodes each projected record (without its segment framing).
    pub const PROJECT_ENCODE: u8 = 4;
    /// And frames each record (header, CRC, padding): the whole pipeline.
    pub const FRAME: u8 = 5;
    /// The stages' names, by level.
    pub const NAMES: [&str; 6] = [
        "open",
        "validate",
        "enrich",
        "route",
        "project_encode",
        "frame",
    ];
}

/// Appends one record to `s`, its payload written by `payload` (into a scratch buffer, then
/// copied in: its length is not known in advance): framed as a segment record, or (cut off
/// before [`stage::FRAME`]) bare.
#[inline(always)]
fn put_record<const UPTO: u8>(
    s: &mut StreamOut,
    (partition, key): (u32, u64),
    payload: impl FnOnce(&mut Vec<u8>),
) {
    let mut scratch = std::mem::take(&mut s.scratch);
    scratch.clear();
    payload(&mut scratch);
    put_record_exact::<UPTO>(s, (partition, key), scratch.len(), |c| c.put(&scratch));
    s.scratch = scratch;
}

/// Appends one record of exactly `len` payload bytes to `s`, written by `payload` through a
/// cursor: framed as a segment record, or (cut off before [`stage::FRAME`]) bare.
#[inline(always)]
fn put_record_exact<const UPTO: u8>(
    s: &mut StreamOut,
    (partition, key): (u32, u64),
    len: usize,
    payload: impl for<'id> FnOnce(&mut record::Cursor<'id>),
) {
    let n = if UPTO < stage::FRAME {
        record::append_exact(&mut s.buf, len, payload);
        len
    } else {
        append_record_exact(&mut s.buf, partition, s.seq, key, len, payload)
    };
    s.records += 1;
    s.bytes += n as u64;
}

/// Encodes a record of the event's named `fields` into `s` (an `_unmatched` record).
#[inline]
fn emit<'v, const UPTO: u8>(
    s: &mut StreamOut,
    format: RecordFormat,
    at: (u32, u64),
    ctx: &Ctx<'v, '_>,
    fields: impl Iterator<Item = (&'v str, Value<'v>)>,
) {
    let missing = ctx
        .enriched
        .customer_missing
        .then_some((MISSING_MARK, Value::Str("customer")));
    match format {
        RecordFormat::Json => {
            put_record::<UPTO>(s, at, |b| record::json_record(b, fields.chain(missing)))
        }
        RecordFormat::Rkyv => {
            put_record::<UPTO>(s, at, |b| record::rkyv_record(b, fields, missing))
        }
    }
}

/// An event's attributes as record fields named `attrs.KEY`, in the event's order; their
/// names are written into `names` (a buffer kept for reuse).
fn attr_fields<'v>(
    names: &'v mut String,
    attrs: Attrs<'v>,
) -> impl Iterator<Item = (&'v str, Value<'v>)> {
    let n = attrs.len().min(ATTRS_PER_EVENT_MAX);
    let mut ends = [0usize; ATTRS_PER_EVENT_MAX + 1];
    names.clear();
    for (i, (key, _)) in attrs.iter().take(n).enumerate() {
        names.push_str(ATTR_PREFIX);
        names.push_str(key);
        ends[i + 1] = names.len();
    }
    let names: &'v str = names;
    (0..n).map(move |i| {
        let (_, value) = attrs.get(i).expect("within the attributes");
        (&names[ends[i]..ends[i + 1]], Value::Str(value))
    })
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    pub partition: u32,
    pub envelopes: u32,
    pub accepted: u32,
    pub dead_lettered: u32,
    pub events: u32,
    pub records: u32,
}

/// Why a frame was not taken as a whole.
#[derive(Debug, Clone, PartialEq)]
pub enum StepError {
    /// The frame is malformed; nothing from it was kept.
    Frame(Error),
    /// The frame's partition belongs to another shard (the runtime forwards such frames).
    NotOwned(u32),
}

/// Running totals of one shard's pipeline, read by the metrics publisher.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub batches: u64,
    pub envelopes: u64,
    pub events: u64,
    pub bytes_in: u64,
    /// Frames refused whole, by [`Error::code`] of the reason.
    pub frames_rejected: [u64; Error::NAMES.len()],
    /// Connections closed after a frame whose error leaves the stream unreadable, by
    /// [`Error::code`] of the reason.
    pub connections_closed: [u64; Error::NAMES.len()],
    /// Events no rule matched.
    pub unmatched: u64,
    pub records: Vec<u64>,
    pub record_bytes: Vec<u64>,
    /// Failed segment writes, per stream (counted by the commit task).
    pub write_errors: Vec<u64>,
    /// By [`Error::code`].
    pub dead_letters: [u64; Error::NAMES.len()],
}

impl Counters {
    /// Counts a frame refused whole for `e`.
    pub fn reject_frame(&mut self, e: &Error) {
        self.frames_rejected[usize::from(e.code()) - 1] += 1;
    }

    /// Counts a connection closed for `e`.
    pub fn close_connection(&mut self, e: &Error) {
        self.connections_closed[usize::from(e.code()) - 1] += 1;
    }
}

/// A shard's pipeline state: keys, tables, routes and output buffers.
pub struct Pipeline {
    opener: Opener,
    tables: Tables,
    routes: RouteSet,
    matcher: Matcher,
    /// The rules an event matches.
    matches: Matches,
    formats: Vec<RecordFormat>,
    owned: Vec<bool>,
    dead_letter: usize,
    /// What each rule emits.
    emits: Emits,
    /// An event's encoded field values (kept for reuse: [`Values`]).
    value_buf: Vec<u8>,
    /// The `attrs.KEY` names of an `_unmatched` record's attributes (kept for reuse).
    attr_names: String,
    /// The opened envelopes of a batch between its two passes: empty, its room kept for the
    /// next batch.
    spare: Vec<(Payload<'static>, u64)>,
    pub out: Vec<StreamOut>,
    pub counters: Counters,
}

impl Pipeline {
    /// The pipeline of `shard` under `config` (the config's tables are moved in: each shard
    /// gets its own copy).
    pub fn new(config: &Config, shard: usize, tables: Tables) -> Pipeline {
        let streams = config.streams.len();
        let matcher = Matcher::new(&config.routes, &tables);
        let matches = matcher.matches();
        Pipeline {
            opener: Opener::new(config.keyring.clone(), config.limits)
                .with_partitions(config.partitions),
            matcher,
            matches,
            tables,
            routes: config.routes.clone(),
            formats: config.streams.iter().map(|s| s.format).collect(),
            owned: config
                .owners
                .iter()
                .map(|o| usize::from(*o) == shard)
                .collect(),
            dead_letter: config.dead_letter_stream(),
            emits: Emits::new(&config.routes),
            value_buf: Vec::with_capacity(4096),
            attr_names: String::with_capacity(1024),
            spare: Vec::new(),
            out: (0..streams).map(|_| StreamOut::default()).collect(),
            counters: Counters {
                records: vec![0; streams],
                record_bytes: vec![0; streams],
                write_errors: vec![0; streams],
                ..Counters::default()
            },
        }
    }

    /// Routes the next batches by `routes`, matched by `matcher` (compiled for this shard's
    /// tables, or a copy of them). Called between batches.
    pub fn set_routes(&mut self, routes: RouteSet, mut matcher: Matcher) {
        matcher.sync(&self.tables);
        self.matches = matcher.matches();
        self.matcher = matcher;
        self.emits = Emits::new(&routes);
        self.routes = routes;
    }

    /// Enriches the next batches from `tables` (a fresh copy); [`Pipeline::set_routes`] must
    /// follow with a matcher compiled for the tables it was copied from.
    pub fn set_tables(&mut self, tables: Tables) {
        self.tables = tables;
    }

    /// Each enrichment table's rows or cache, for `/metrics`.
    /// Figures per table; `fill_remote` adds the lookup client's figures to a remote table's.
    pub fn table_stats(
        &self,
        fill_remote: impl FnOnce(&mut crate::enrich::remote::RemoteStats),
    ) -> [(&'static str, crate::enrich::TableStats); 3] {
        let mut tables = self.tables.stats();
        if let Some(r) = tables.iter_mut().find_map(|(_, t)| t.remote.as_mut()) {
            fill_remote(r);
        }
        tables
    }

    /// Whether this shard owns `partition`.
    pub fn owns(&self, partition: u32) -> bool {
        self.owned.get(partition as usize).copied().unwrap_or(false)
    }

    /// The shard's wire limits.
    pub fn limits(&self) -> &sluice_protocol::Limits {
        self.opener.limits()
    }

    /// Output bytes waiting to be drained.
    pub fn pending_bytes(&self) -> usize {
        self.out.iter().map(|s| s.buf.len()).sum()
    }

    /// Runs one batch frame (16-byte aligned, at the start of `frame`) through the pipeline.
    pub fn step(&mut self, frame: &mut [u8]) -> Result<BatchOutcome, StepError> {
        self.step_from(frame, &[])
    }

    /// [`Pipeline::step`] cut off after stage `UPTO` ([`stage`]), for benches.
    #[doc(hidden)]
    pub fn step_upto<const UPTO: u8>(
        &mut self,
        frame: &mut [u8],
    ) -> Result<BatchOutcome, StepError> {
        self.step_from_upto::<UPTO>(frame, &[])
    }

    /// [`Pipeline::step`] for a frame built from consumed messages: `sources` holds each
    /// envelope's coordinates, in order, for its dead letter should it be rejected.
    pub fn step_from(
        &mut self,
        frame: &mut [u8],
        sources: &[Coord],
    ) -> Result<BatchOutcome, StepError> {
        self.step_from_upto::<{ stage::FRAME }>(frame, sources)
    }

    #[inline]
    fn step_from_upto<const UPTO: u8>(
        &mut self,
        frame: &mut [u8],
        sources: &[Coord],
    ) -> Result<BatchOutcome, StepError> {
        let frame_len = frame.len();
        let (batch, mut o) = self.begin(frame)?;
        let (opener, mut parts) = self.parts(sources);
        // Each envelope is routed once the next is open: its table rows were asked for when
        // it opened, and have come into cache meanwhile.
        let mut held: Option<(Payload<'_>, u64)> = None;
        for env in batch.into_envelopes() {
            o.envelopes += 1;
            let opened = if UPTO == stage::OPEN {
                opener.open_upto::<false>(env)
            } else {
                opener.open(env)
            };
            match opened {
                Ok(opened) if UPTO == stage::OPEN => {
                    o.accepted += 1;
                    o.events += u32::from(opened.header.event_count);
                }
                Ok(opened) => {
                    if UPTO >= stage::ENRICH {
                        for event in opened.payload.iter() {
                            parts.tables.prefetch(&event);
                        }
                    }
                    let next = (opened.payload, opened.header.partition_key);
                    if let Some((payload, key)) = held.replace(next) {
                        parts.route::<UPTO>(&mut o, &payload, key, false);
                    }
                }
                Err(rejected) => parts.dead_letter(&mut o, &rejected),
            }
        }
        if let Some((payload, key)) = held {
            parts.route::<UPTO>(&mut o, &payload, key, false);
        }
        parts.end(&o, frame_len);
        Ok(o)
    }

    /// Whether batches take two passes: an enrichment table asks a lookup service, so a
    /// batch is opened ([`Pipeline::open`]), the keys it lacks are asked for, and it is
    /// routed ([`Pipeline::finish`]) once they are answered or out of time.
    pub fn asks_service(&self) -> bool {
        self.remote_spec().is_some()
    }

    /// The first pass of a batch: checks the frame, opens (decrypts and validates) every
    /// envelope in place, dead-letters those that fail, and notes the keys the tables lack
    /// ([`Pipeline::wants`]).
    /// `sources`: as for [`Pipeline::step_from`].
    pub fn open<'a>(
        &mut self,
        frame: &'a mut [u8],
        now: std::time::Instant,
        sources: &[Coord],
    ) -> Result<OpenedBatch<'a>, StepError> {
        let frame_len = frame.len();
        let (batch, mut o) = self.begin(frame)?;
        self.tables.begin_batch(now);
        let mut envelopes = recycle(std::mem::take(&mut self.spare));
        let (opener, mut parts) = self.parts(sources);
        for env in batch.into_envelopes() {
            o.envelopes += 1;
            match opener.open(env) {
                Ok(opened) => {
                    for event in opened.payload.iter() {
                        parts.tables.probe(&event);
                    }
                    envelopes.push((opened.payload, opened.header.partition_key));
                }
                Err(rejected) => parts.dead_letter(&mut o, &rejected),
            }
        }
        Ok(OpenedBatch {
            envelopes,
            outcome: o,
            frame_len,
        })
    }

    /// The lookup service a table asks, if any.
    pub fn remote_spec(&self) -> Option<&std::sync::Arc<crate::enrich::remote::RemoteSpec>> {
        self.tables.remote_customer()
    }

    /// The customer keys the batch just opened lacks, and those to refresh.
    pub fn wants(&self) -> (&[u64], &[u64]) {
        self.tables.wants()
    }

    /// Puts a lookup service's answer, come at `now`, into the tables (between batches).
    pub fn answer(&mut self, body: &str, now: std::time::Instant) -> Result<usize, String> {
        self.tables.answer(body, now)
    }

    /// The second pass: enriches and routes the opened batch by the tables and routes as
    /// they are now.
    pub fn finish(&mut self, batch: OpenedBatch<'_>) -> BatchOutcome {
        let mut o = batch.outcome;
        let (_, mut parts) = self.parts(&[]);
        for (payload, key) in &batch.envelopes {
            parts.route::<{ stage::FRAME }>(&mut o, payload, *key, true);
        }
        parts.end(&o, batch.frame_len);
        self.spare = recycle(batch.envelopes);
        o
    }

    /// Dead-letters a consumed message that is not one whole envelope (a Kafka source's
    /// [`Reject`](crate::source::kafka::Reject)), as the batch of one envelope of
    /// `partition`: its header as far as it could be read, its raw bytes, and where it came
    /// from.
    pub fn reject_message(
        &mut self,
        partition: u32,
        error: &Error,
        raw: &[u8],
        partition_key: u64,
        source: &Coord,
    ) -> BatchOutcome {
        let mut header = sluice_protocol::EnvelopeHeader::new(
            sluice_protocol::PayloadFormat::Rkyv,
            0,
            [0; 12],
            partition_key,
            0,
        );
        header.version = 0;
        header.format = 0;
        if let Some(h) = raw.get(..sluice_protocol::envelope::ENVELOPE_HEADER_BYTES) {
            header = sluice_protocol::EnvelopeHeader::decode(h.try_into().expect("32 bytes"));
            header.partition_key = partition_key;
        }
        let mut o = BatchOutcome {
            partition,
            envelopes: 1,
            ..BatchOutcome::default()
        };
        let rejected = Rejected {
            error: error.clone(),
            header,
            raw,
        };
        let sources = std::slice::from_ref(source);
        let (_, mut parts) = self.parts(sources);
        parts.dead_letter(&mut o, &rejected);
        parts.end(&o, raw.len());
        o
    }

    /// Checks the frame and its partition.
    fn begin<'a>(
        &mut self,
        frame: &'a mut [u8],
    ) -> Result<(BatchFrame<'a>, BatchOutcome), StepError> {
        let batch = match BatchFrame::parse(frame, self.opener.limits()) {
            Ok(b) => b,
            Err(e) => {
                self.counters.reject_frame(&e);
                return Err(StepError::Frame(e));
            }
        };
        let partition = batch.header.partition;
        if !self.owns(partition) {
            return Err(StepError::NotOwned(partition));
        }
        let o = BatchOutcome {
            partition,
            ..BatchOutcome::default()
        };
        Ok((batch, o))
    }

    fn parts<'s>(&'s mut self, sources: &'s [Coord]) -> (&'s mut Opener, Parts<'s>) {
        (
            &mut self.opener,
            Parts {
                tables: &mut self.tables,
                routes: &self.routes,
                matcher: &mut self.matcher,
                matches: &mut self.matches,
                formats: &self.formats,
                emits: &self.emits,
                value_buf: &mut self.value_buf,
                attr_names: &mut self.attr_names,
                out: &mut self.out,
                counters: &mut self.counters,
                dead_letter: self.dead_letter,
                sources,
            },
        )
    }
}

/// `v` emptied, as a vector of payloads of another lifetime in the same allocation (the
/// standard library collects a mapped `into_iter` of a vector in place when the element
/// layouts agree, as they do here: only the lifetime differs).
fn recycle<'b>(mut v: Vec<(Payload<'_>, u64)>) -> Vec<(Payload<'b>, u64)> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

/// A batch between its two passes: the validated payloads of its opened envelopes (read
/// where they lie in the frame) and what the first pass counted.
pub struct OpenedBatch<'a> {
    envelopes: Vec<(Payload<'a>, u64)>,
    outcome: BatchOutcome,
    frame_len: usize,
}

/// The pipeline's state but the opener, borrowed for one batch.
struct Parts<'p> {
    tables: &'p mut Tables,
    routes: &'p RouteSet,
    matcher: &'p mut Matcher,
    matches: &'p mut Matches,
    formats: &'p [RecordFormat],
    emits: &'p Emits,
    value_buf: &'p mut Vec<u8>,
    attr_names: &'p mut String,
    out: &'p mut [StreamOut],
    counters: &'p mut Counters,
    dead_letter: usize,
    /// Each envelope's coordinates, for a frame built from consumed messages.
    sources: &'p [Coord],
}

impl Parts<'_> {
    /// Enriches and routes the events of one opened envelope, whose partition key is `key`
    /// (`probed`: the first pass saw them).
    #[inline]
    fn route<const UPTO: u8>(
        &mut self,
        o: &mut BatchOutcome,
        payload: &Payload<'_>,
        key: u64,
        probed: bool,
    ) {
        o.accepted += 1;
        if UPTO < stage::ENRICH {
            o.events += payload.len() as u32;
            return;
        }
        let at = (o.partition, key);
        let Parts {
            tables,
            routes,
            matcher,
            matches,
            formats,
            emits,
            value_buf,
            attr_names,
            out,
            counters,
            ..
        } = self;
        for event in payload.iter() {
            o.events += 1;
            let enriched = if probed {
                tables.rejoin(&event)
            } else {
                tables.lookup(&event)
            };
            if UPTO < stage::ROUTE {
                std::hint::black_box(enriched);
                continue;
            }
            matcher.sync(tables);
            let ctx = Ctx {
                event: &event,
                enriched,
                tables,
            };
            matcher.matching(&ctx, matches);
            emits.prefetch(matches);
            let missing = ctx.enriched.customer_missing;
            if !matches.is_empty() {
                let mut records = |mut values: Option<&mut Values<'_, '_>>| {
                    matches.for_each(|i| {
                        let rule = &emits.rules[i];
                        if !rule.sampler.keeps(event.event_id) {
                            return;
                        }
                        for stream in emits.streams(rule) {
                            o.records += 1;
                            if let Some(v) = &mut values {
                                let (s, format) = (&mut out[stream], formats[stream]);
                                emits.emit::<UPTO, _>(s, format, at, rule, v, missing);
                            }
                        }
                    })
                };
                if UPTO >= stage::PROJECT_ENCODE {
                    // Read where they stay: moved (into an `Option`), they were copied with
                    // wide loads that waited for the narrow stores that made them.
                    let mut values = Values::new(&ctx, value_buf);
                    values.read();
                    records(Some(&mut values));
                } else {
                    records(None);
                }
            } else {
                counters.unmatched += 1;
                if let Some(stream) = routes.unmatched() {
                    o.records += 1;
                    if UPTO < stage::PROJECT_ENCODE {
                        continue;
                    }
                    emit::<UPTO>(
                        &mut out[stream],
                        formats[stream],
                        at,
                        &ctx,
                        Field::ALL
                            .iter()
                            .map(|f| (f.name(), ctx.get(*f)))
                            .chain(attr_fields(attr_names, event.attrs)),
                    );
                }
            }
        }
    }

    /// Writes a rejected envelope to the dead-letter stream.
    fn dead_letter(&mut self, o: &mut BatchOutcome, rejected: &Rejected<'_>) {
        o.dead_lettered += 1;
        let d = self.dead_letter;
        let format = self.formats[d];
        let s = &mut self.out[d];
        let key = rejected.header.partition_key;
        // The envelope being rejected is the batch's latest.
        let source = self.sources.get(o.envelopes as usize - 1);
        put_record::<{ stage::FRAME }>(s, (o.partition, key), |b| {
            record::dead_letter_record(
                b,
                format,
                &rejected.error,
                &rejected.header,
                rejected.raw,
                source,
            )
        });
        self.counters.dead_letters[usize::from(rejected.error.code()) - 1] += 1;
    }

    /// Moves the batch's figures into the counters.
    fn end(&mut self, o: &BatchOutcome, frame_len: usize) {
        let counters = &mut *self.counters;
        for (i, s) in self.out.iter_mut().enumerate() {
            counters.records[i] += std::mem::take(&mut s.records);
            counters.record_bytes[i] += std::mem::take(&mut s.bytes);
        }
        counters.batches += 1;
        counters.envelopes += u64::from(o.envelopes);
        counters.events += u64::from(o.events);
        counters.bytes_in += frame_len as u64;
    }
}
