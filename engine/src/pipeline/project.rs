//! Projection, the pipeline's encode stage: each rule's record laid out once (its JSON keys
//! escaped, the punctuation between them, its rkyv field names), and each event's field values
//! found and encoded once for all of the event's records (an event goes in about three, whose
//! rules project some of the same fields).
//!
//! A record is written in two passes: the first finds its values and measures it, the second
//! writes it into room reserved once for the whole framed record, each piece a short copy
//! ([`Cursor`]): front to back, or (an rkyv record) its out-of-line strings and its field
//! entries side by side, in the two parts of the room. The bytes are those of
//! [`record::json_record`] and
//! [`record::rkyv_record`] (the golden and proptest tests hold them to it).

use std::mem::MaybeUninit;

use super::{StreamOut, put_record_exact};
use crate::enrich::prefetch;
use crate::route::compiled::Matches;
use crate::route::{Ctx, FIELDS_PER_RULE_MAX, Field, RouteSet, Sampler, Value};
use crate::sink::record::{
    self, IP_TEXT_MAX, KIND_IP, KIND_NULL, KIND_STR, KIND_U64, RecordFormat, RkyvField, RkyvStr,
};

/// The field a record carries when an enrichment table had no answer for its event in time;
/// its value names the table (`"customer"`).
pub const MISSING_MARK: &str = "enrich_missing";
const MISSING_VALUE: &[u8] = b"customer";
/// The missing mark in a JSON record, after the rule's fields.
const MISSING_JSON: &[u8] = b",\"enrich_missing\":\"customer\"";

/// What each rule of a route set emits, laid out for the per-event loop in flat arrays, so
/// that a rule's records read a few adjacent cache lines (W3 has 10,000 rules): its sampling,
/// its streams, and the fields it projects.
#[derive(Debug, Default)]
pub(super) struct Emits {
    pub(super) rules: Vec<EmitRule>,
    streams: Vec<usize>,
    fields: Vec<Projected>,
    /// Every projected field's JSON key with the punctuation before it (`{"name":` for a
    /// rule's first field, `,"name":` for the others), back to back.
    keys: Vec<u8>,
    /// Whether the matched rules' data is asked for ahead ([`Emits::prefetch`]): where it
    /// all takes more than [`PREFETCH_BYTES_MIN`].
    prefetching: bool,
}

/// The size of the rules' emit data from which [`Emits::prefetch`] asks for it ahead. Less
/// stays in the L2 cache (W1's 100 rules take under 100 KB): there, asking costs more than
/// it saves (W1 +3-5% ns an event, 9 interleaved runs), while W3's 10,000 rules (about 4 MB)
/// gain 3-17% (interleaved runs in a quiet and a noisy hour).
const PREFETCH_BYTES_MIN: usize = 256 << 10;

#[derive(Debug, Clone, Copy)]
pub(super) struct EmitRule {
    pub(super) sampler: Sampler,
    /// Ranges in [`Emits::streams`] and [`Emits::fields`].
    streams: (u32, u32),
    fields: (u32, u32),
    /// Where its keys start in [`Emits::keys`].
    keys_at: u32,
    /// A JSON record's bytes but its values: the keys and punctuation.
    json_fixed: u32,
    /// An rkyv record's out-of-line bytes of field names.
    rkyv_names: u32,
    /// Whether it projects the event's address (whose text is made when first needed).
    address: bool,
}

/// One field a rule projects.
#[derive(Debug, Clone, Copy)]
struct Projected {
    field: Field,
    name: RkyvStr<'static>,
    /// Its key and the punctuation before it, in [`Emits::keys`].
    key: (u32, u32),
}

impl Emits {
    pub(super) fn new(routes: &RouteSet) -> Emits {
        let mut e = Emits::default();
        for r in routes.rules() {
            let streams = (
                e.streams.len() as u32,
                (e.streams.len() + r.streams.len()) as u32,
            );
            e.streams.extend_from_slice(&r.streams);
            let first = e.fields.len() as u32;
            let keys_from = e.keys.len();
            let mut rkyv_names = 0;
            for (i, f) in r.fields.iter().enumerate() {
                let at = e.keys.len() as u32;
                e.keys.push(if i == 0 { b'{' } else { b',' });
                e.keys.extend_from_slice(&record::json_key(f.name()));
                e.fields.push(Projected {
                    field: *f,
                    name: RkyvStr::new(f.name().as_bytes()),
                    key: (at, e.keys.len() as u32),
                });
                rkyv_names += record::out_of_line(f.name().as_bytes());
            }
            // The closing brace, and the opening one of a record with no fields.
            let json_fixed = e.keys.len() - keys_from + 1 + usize::from(r.fields.is_empty());
            e.rules.push(EmitRule {
                sampler: r.sampler(),
                streams,
                fields: (first, e.fields.len() as u32),
                keys_at: keys_from as u32,
                json_fixed: json_fixed as u32,
                rkyv_names: rkyv_names as u32,
                address: r.fields.contains(&Field::ClientIp),
            });
        }
        let bytes = e.rules.len() * size_of::<EmitRule>()
            + e.streams.len() * size_of::<usize>()
            + e.fields.len() * size_of::<Projected>()
            + e.keys.len();
        e.prefetching = bytes >= PREFETCH_BYTES_MIN;
        e
    }

    /// Asks for the emit data of the rules an event `matches`, so that their cache misses
    /// overlap instead of following one another: first each rule, then what it points to
    /// (its streams, fields and keys).
    /// W3's 10,000 rules' data (about 4 MB) does not stay in cache, and a matched rule read
    /// cold touches about eight lines, one after another.
    #[inline(always)]
    pub(super) fn prefetch(&self, matches: &Matches) {
        if !self.prefetching {
            return;
        }
        matches.for_each(|i| prefetch(self.rules.as_ptr().wrapping_add(i)));
        matches.for_each(|i| {
            let r = &self.rules[i];
            prefetch(self.streams.as_ptr().wrapping_add(r.streams.0 as usize));
            let fields = self.fields.as_ptr().wrapping_add(r.fields.0 as usize);
            let fields_end = self.fields.as_ptr().wrapping_add(r.fields.1 as usize);
            lines(fields.cast(), fields_end.cast());
            let keys = self.keys.as_ptr().wrapping_add(r.keys_at as usize);
            lines(keys, keys.wrapping_add(r.json_fixed as usize));
        });
    }

    #[inline]
    pub(super) fn streams(&self, r: &EmitRule) -> &[usize] {
        &self.streams[r.streams.0 as usize..r.streams.1 as usize]
    }

    #[inline]
    fn fields(&self, r: &EmitRule) -> &[Projected] {
        &self.fields[r.fields.0 as usize..r.fields.1 as usize]
    }

    #[inline]
    fn key(&self, p: &Projected) -> &[u8] {
        &self.keys[p.key.0 as usize..p.key.1 as usize]
    }

    /// Appends rule `r`'s record of the event of `v` (`missing`: with the mark) to `s` at
    /// `at` (partition, key), in the stream's `format`: its values are found and the record
    /// measured, then written through a cursor into room reserved once.
    #[inline(always)]
    pub(super) fn emit<'e, const UPTO: u8, S: Source<'e>>(
        &self,
        s: &mut StreamOut,
        format: RecordFormat,
        at: (u32, u64),
        r: &EmitRule,
        v: &mut Values<'_, 'e, S>,
        missing: bool,
    ) {
        let fields = self.fields(r);
        match format {
            RecordFormat::Json => {
                // Where each value's JSON lies in `v`'s buffer.
                let mut places =
                    [const { MaybeUninit::<(u32, u32)>::uninit() }; FIELDS_PER_RULE_MAX];
                let mut len = r.json_fixed as usize;
                for (p, to) in fields.iter().zip(&mut places) {
                    let (a, b) = v.json(p.field);
                    len += (b - a) as usize;
                    to.write((a, b));
                }
                if missing {
                    len += MISSING_JSON.len() - usize::from(fields.is_empty());
                }
                let buf = &v.buf[..];
                put_record_exact::<UPTO>(s, at, len, |c| {
                    if fields.is_empty() {
                        c.put(b"{");
                    }
                    for (p, place) in fields.iter().zip(&places) {
                        // SAFETY: the loop above wrote a place for each of the same `fields`.
                        let (a, b) = unsafe { place.assume_init() };
                        c.put(self.key(p));
                        c.put(&buf[a as usize..b as usize]);
                    }
                    if missing {
                        c.put(&MISSING_JSON[usize::from(fields.is_empty())..]);
                    }
                    c.put(b"}");
                });
            }
            RecordFormat::Rkyv => {
                if r.address {
                    v.address();
                }
                let v = &*v;
                let mut strings = r.rkyv_names as usize;
                for p in fields {
                    strings += record::out_of_line(v.rkyv(p.name, p.field).text);
                }
                let mark = missing.then(|| RkyvField {
                    name: RkyvStr::new(MISSING_MARK.as_bytes()),
                    kind: KIND_STR,
                    num: 0,
                    text: MISSING_VALUE,
                });
                if let Some(m) = &mark {
                    strings += record::out_of_line(m.name.bytes) + record::out_of_line(m.text);
                }
                let n = fields.len() + usize::from(missing);
                put_record_exact::<UPTO>(s, at, record::rkyv_len(n, strings), |c| {
                    let all = fields.iter().map(|p| v.rkyv(p.name, p.field));
                    record::write_rkyv_fields(c, strings, all.chain(mark))
                });
            }
        }
    }
}

/// Asks for each cache line of `from..to` (a hint: nothing is read).
#[inline(always)]
fn lines(from: *const u8, to: *const u8) {
    let mut at = from;
    while at < to {
        prefetch(at);
        at = at.wrapping_add(64);
    }
    // The last line, where `from` was not at a line's start.
    if from < to {
        prefetch(to.wrapping_sub(1));
    }
}

/// Where [`Values`] finds an event's field values: its [`Ctx`] (tests give others).
pub(super) trait Source<'e> {
    fn value(&self, f: Field) -> Value<'e>;

    /// Hands `put` the value of every field of [`Field::ALL`] (in any order, each once).
    #[inline(always)]
    fn each_value(&self, mut put: impl FnMut(Field, Value<'e>)) {
        for f in Field::ALL {
            put(f, self.value(f));
        }
    }

    /// Field `f`'s JSON where it is made ahead (a table's string), byte for byte what
    /// [`record::json_value`] writes of its value.
    fn json(&self, _f: Field) -> Option<&'e [u8]> {
        None
    }
}

impl<'e> Source<'e> for Ctx<'e, 'e> {
    /// [`Ctx::get`], inlined: its value is taken apart at once, and need not pass through
    /// memory.
    #[inline(always)]
    fn value(&self, f: Field) -> Value<'e> {
        self.get_inline(f)
    }

    #[inline(always)]
    fn json(&self, f: Field) -> Option<&'e [u8]> {
        self.table_json(f)
    }

    /// [`Ctx::each_value`]: the event's fields and its rows' columns read in one straight
    /// run, not one field at a time through a dispatch on the field.
    #[inline(always)]
    fn each_value(&self, put: impl FnMut(Field, Value<'e>)) {
        Ctx::each_value(self, put)
    }
}

const FIELDS: usize = Field::ALL.len();

/// One event's field values, each read once and encoded once per format for all of the
/// event's records. Made anew for each event that has records; its buffer of encoded values
/// is kept from event to event.
pub(super) struct Values<'c, 'e, S = Ctx<'e, 'e>> {
    ctx: &'c S,
    /// Field `Field::ALL[i]`'s value as an rkyv record holds it: its kind, and its number or
    /// text (an address's text is in `ip`). Kept apart, each written and read whole, so that
    /// no read waits on a wider one that several writes made.
    kinds: [u8; FIELDS],
    nums: [u64; FIELDS],
    texts: [&'e [u8]; FIELDS],
    /// Bit `i`: `json[i]` holds where field `i`'s JSON lies in `buf`.
    encoded: u32,
    json: [MaybeUninit<(u32, u32)>; FIELDS],
    buf: &'c mut Vec<u8>,
    /// The event's address as text (the one field whose value is not kept as it is), made
    /// when a record first holds it; `ip_len` 0 until then.
    ip: [u8; IP_TEXT_MAX],
    ip_len: u8,
}

const _: () = assert!(FIELDS <= 32, "a bit per field");

impl<'c, 'e, S: Source<'e>> Values<'c, 'e, S> {
    /// The values of the event of `ctx`, none read yet ([`Values::read`] reads them).
    #[inline(always)]
    pub(super) fn new(ctx: &'c S, buf: &'c mut Vec<u8>) -> Self {
        buf.clear();
        Values {
            ctx,
            kinds: [KIND_NULL; FIELDS],
            nums: [0; FIELDS],
            texts: [b""; FIELDS],
            encoded: 0,
            json: [const { MaybeUninit::uninit() }; FIELDS],
            buf,
            ip: [0; IP_TEXT_MAX],
            ip_len: 0,
        }
    }

    /// Reads every field of the event (its records project about ten of the twenty, and
    /// reading them all in one run costs less than a dispatch on each). Apart from
    /// [`Values::new`] so that the values are written where they stay: read into a value that
    /// `new` returned, they were copied out whole (37 instructions a W1 event).
    #[inline(always)]
    pub(super) fn read(&mut self) {
        let Values {
            ctx,
            kinds,
            nums,
            texts,
            ..
        } = self;
        ctx.each_value(|f, value| {
            let Some(i) = f.index() else { return };
            let (kind, num, text): (u8, u64, &'e [u8]) = match value {
                Value::U64(num) => (KIND_U64, num, b""),
                Value::Str(s) => (KIND_STR, 0, s.as_bytes()),
                Value::Ip(_) => (KIND_IP, 0, b""),
                Value::Null => (KIND_NULL, 0, b""),
            };
            kinds[i] = kind;
            nums[i] = num;
            texts[i] = text;
        });
    }

    /// Makes the event's address text, if it has an address and the text is not made yet.
    #[inline(always)]
    fn address(&mut self) {
        if self.ip_len == 0
            && self.kinds[Field::ClientIp.index().expect("an event field")] == KIND_IP
        {
            self.format_address();
        }
    }

    #[inline(never)]
    fn format_address(&mut self) {
        if let Value::Ip(ip) = self.ctx.value(Field::ClientIp) {
            let n = record::ip_text(ip, &mut self.ip).len();
            self.ip_len = n as u8;
        }
    }

    /// Where field `f`'s JSON lies in the buffer, encoded now if not yet (an attribute's,
    /// each time).
    #[inline(always)]
    fn json(&mut self, f: Field) -> (u32, u32) {
        match f.index() {
            // SAFETY: the bit is set only once `json[i]` is written.
            Some(i) if self.encoded & (1 << i) != 0 => unsafe { self.json[i].assume_init() },
            _ => self.encode(f),
        }
    }

    #[inline(never)]
    fn encode(&mut self, f: Field) -> (u32, u32) {
        let start = self.buf.len();
        let Some(i) = f.index() else {
            record::json_value(self.buf, self.ctx.value(f));
            return (start as u32, self.buf.len() as u32);
        };
        if let Some(json) = self.ctx.json(f) {
            record::put(self.buf, json);
        } else {
            match self.kinds[i] {
                KIND_U64 => record::put(
                    self.buf,
                    itoa::Buffer::new().format(self.nums[i]).as_bytes(),
                ),
                KIND_STR => {
                    // SAFETY: a string's text came from a `&str` (`Values::read`).
                    let s = unsafe { std::str::from_utf8_unchecked(self.texts[i]) };
                    record::json_str(self.buf, s)
                }
                KIND_IP => {
                    self.address();
                    self.buf.push(b'"');
                    record::put(self.buf, &self.ip[..usize::from(self.ip_len)]);
                    self.buf.push(b'"');
                }
                _ => record::put(self.buf, b"null"),
            }
        }
        let at = (start as u32, self.buf.len() as u32);
        self.json[i].write(at);
        self.encoded |= 1 << i;
        at
    }

    /// Field `f`, named `name`, as an rkyv record holds it (an address's text once made:
    /// [`Values::address`]), or an attribute.
    #[inline(always)]
    fn rkyv<'s>(&'s self, name: RkyvStr<'s>, f: Field) -> RkyvField<'s> {
        let Some(i) = f.index() else {
            let (kind, text) = match self.ctx.value(f) {
                Value::Str(s) => (KIND_STR, s.as_bytes()),
                _ => (KIND_NULL, &b""[..]),
            };
            return RkyvField {
                name,
                kind,
                num: 0,
                text,
            };
        };
        let kind = self.kinds[i];
        let text = if kind == KIND_IP {
            assert!(
                self.ip_len != 0,
                "an address's text is made before it is read"
            );
            &self.ip[..usize::from(self.ip_len)]
        } else {
            self.texts[i]
        };
        RkyvField {
            name,
            kind,
            num: self.nums[i],
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::stage;
    use crate::route::RuleSource;
    use crate::sink::segment::append_record;
    use proptest::prelude::*;

    /// Field values from a table: what the tests give in place of an event's context; and
    /// the JSON of those made ahead (as a table's strings are).
    struct Given<'e>(Vec<(Field, Value<'e>)>, Vec<(Field, &'e [u8])>);

    impl<'e> Source<'e> for Given<'e> {
        fn value(&self, f: Field) -> Value<'e> {
            self.0
                .iter()
                .find(|(g, _)| *g == f)
                .map_or(Value::Null, |(_, v)| *v)
        }

        fn json(&self, f: Field) -> Option<&'e [u8]> {
            self.1.iter().find(|(g, _)| *g == f).map(|(_, j)| *j)
        }
    }

    /// The matched rules' data is asked for ahead where it outgrows the cache (W3's 10,000
    /// rules), not where it stays there (W1's 100).
    #[test]
    fn a_large_route_set_is_prefetched_and_a_small_one_is_not() {
        use crate::config::Config;
        use sluice_workload::Workload;
        let w1 = Config::embedded_default().unwrap();
        let text = sluice_workload::fixtures::builtin_config(Workload::W3, 1, "./sluice-data");
        let w3 = Config::parse(&text, "w3.toml", std::path::Path::new(".")).unwrap();
        assert!(!Emits::new(&w1.routes).prefetching);
        assert!(Emits::new(&w3.routes).prefetching);
    }

    /// Fields a rule may project: every event and enrichment field, and two attributes.
    fn pool() -> Vec<Field> {
        let mut p = Field::ALL.to_vec();
        p.extend(["attrs.a", "attrs.long_attribute"].map(|n| Field::from_name(n).unwrap()));
        p
    }

    /// A value of the field's own kind (or none), from the drawn parts.
    fn value_of<'e>(f: Field, (pick, num, text, ip): &'e (u8, u64, String, u128)) -> Value<'e> {
        if pick % 4 == 0 {
            return Value::Null;
        }
        if f == Field::ClientIp {
            return if pick % 2 == 0 {
                Value::Ip(std::net::Ipv4Addr::from(*ip as u32).into())
            } else {
                Value::Ip(std::net::Ipv6Addr::from(*ip).into())
            };
        }
        if f.is_numeric() {
            Value::U64(*num >> (pick % 64))
        } else {
            Value::Str(text)
        }
    }

    proptest! {
        /// A rule's records through templates and the event's values are, byte for byte,
        /// those the general encoders write from the fields' names and values: JSON and rkyv,
        /// with and without the missing mark, bare and framed.
        #[test]
        fn templates_write_what_the_general_encoders_write(
            picks in proptest::collection::vec(0usize..22, 1..12),
            values in proptest::collection::vec(
                (any::<u8>(), any::<u64>(), "[a-z0-9.\"\\\\\n\u{1}é]{0,40}", any::<u128>()),
                22,
            ),
            lead in 0usize..4,
        ) {
            let pool = pool();
            let fields: Vec<Field> = picks.iter().map(|&i| pool[i]).collect();
            let given: Vec<(Field, Value<'_>)> =
                pool.iter().zip(&values).map(|(&f, v)| (f, value_of(f, v))).collect();
            // The table fields' strings come with their JSON made ahead.
            let made: Vec<(Field, Vec<u8>)> = given
                .iter()
                .filter(|(f, _)| (Field::GeoCountry.index()..=Field::CustomerSignupCountry.index()).contains(&f.index()))
                .filter_map(|&(f, v)| match v {
                    Value::Str(t) => {
                        let mut j = Vec::new();
                        record::json_str(&mut j, t);
                        Some((f, j))
                    }
                    _ => None,
                })
                .collect();
            let given = Given(given, made.iter().map(|(f, j)| (*f, j.as_slice())).collect());
            let routes = RouteSet::compile(
                &[RuleSource {
                    name: "r".into(),
                    streams: vec![0],
                    when: "event_type == \"x\"".into(),
                    fields: fields.iter().map(|f| f.name().to_owned()).collect(),
                    sample: None,
                }],
                None,
            )
            .unwrap();
            let emits = Emits::new(&routes);
            let rule = &emits.rules[0];
            let named = || fields.iter().map(|&f| (f.name(), given.value(f)));
            let mut buf = Vec::new();
            for missing in [false, true] {
                let mark = missing.then_some((MISSING_MARK, Value::Str("customer")));
                let mut values = Values::new(&given, &mut buf);
                values.read();
                for format in [RecordFormat::Json, RecordFormat::Rkyv] {
                    let general = |out: &mut Vec<u8>| match format {
                        RecordFormat::Json => record::json_record(out, named().chain(mark)),
                        RecordFormat::Rkyv => record::rkyv_record(out, named(), mark),
                    };
                    // Bare, after `lead` words of an earlier record.
                    let mut s = StreamOut::default();
                    s.buf.extend_from_slice(&vec![9; lead * 8]);
                    emits.emit::<{ stage::PROJECT_ENCODE }, _>(&mut s, format, (3, 4), rule, &mut values, missing);
                    let mut want = vec![9; lead * 8];
                    general(&mut want);
                    prop_assert_eq!(&s.buf[..], &want[..], "{:?} missing {}", format, missing);
                    // Framed as a segment record.
                    let mut s = StreamOut { seq: 6, ..StreamOut::default() };
                    emits.emit::<{ stage::FRAME }, _>(&mut s, format, (3, 4), rule, &mut values, missing);
                    let mut want = Vec::new();
                    append_record(&mut want, 3, 6, 4, general);
                    prop_assert_eq!(&s.buf[..], &want[..], "{:?} missing {} framed", format, missing);
                }
            }
        }
    }
}
