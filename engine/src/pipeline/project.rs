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

/// What each rule of a route set emits, laid out for the per-event loop: each rule in one
/// cache line (its sampling, and the streams it writes and the fields it projects as small
/// ids, inline), and each field a rule projects once for all rules (its JSON key with the
/// punctuation before it, its rkyv name). So a matched rule is one line to read, or to ask
/// for ahead with no second, dependent ask (W3 has 10,000 rules: 640 KB of lines, where
/// rules that pointed into arrays of streams, fields and keys took about 4 MB).
#[derive(Debug, Default)]
pub(super) struct Emits {
    pub(super) rules: Vec<EmitRule>,
    /// The ids of rules with more than [`IDS_INLINE`] streams and fields.
    spilled: Vec<u16>,
    /// Every field some rule projects, twice: first as a record's first field (its key
    /// `{"name":`), then as any other (`,"name":`). A rule's field ids index it.
    projected: Vec<Projected>,
    /// The keys of [`Emits::projected`], back to back.
    keys: Vec<u8>,
    /// Whether the matched rules are asked for ahead ([`Emits::prefetch`]): where they take
    /// more than [`PREFETCH_BYTES_MIN`].
    prefetching: bool,
}

/// The size of the rules from which [`Emits::prefetch`] asks for them ahead. Less stays in
/// the L2 cache (W1's 100 rules take 6.4 KB): there, asking costs more than it saves (W1
/// +3-5% ns an event, 9 interleaved runs), while W3's 10,000 rules (640 KB) gain.
const PREFETCH_BYTES_MIN: usize = 256 << 10;

/// A rule's stream and field ids kept in its line; a rule with more keeps them in
/// [`Emits::spilled`].
const IDS_INLINE: usize = 11;

#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(super) struct EmitRule {
    pub(super) sampler: Sampler,
    /// A JSON record's bytes but its values: the keys and punctuation.
    json_fixed: u32,
    /// An rkyv record's out-of-line bytes of field names.
    rkyv_names: u32,
    /// Where its ids start in [`Emits::spilled`], if they are not inline.
    spilled_at: u32,
    streams: u16,
    fields: u16,
    /// Its stream ids, then its field ids (into [`Emits::projected`]), when they fit.
    inline: [u16; IDS_INLINE],
    /// Whether it projects the event's address (whose text is made when first needed).
    address: bool,
}

const _: () = assert!(size_of::<EmitRule>() == 64, "a rule in one cache line");

/// A field as a rule projects it.
#[derive(Debug, Clone, Copy)]
struct Projected {
    field: Field,
    name: RkyvStr<'static>,
    /// Its key and the punctuation before it, in [`Emits::keys`].
    key: (u32, u32),
}

impl Emits {
    /// The layout of `routes`, whose stream indexes are under 2^16 and which project at
    /// most [`crate::route::PROJECTED_FIELDS_MAX`] distinct fields ([`RouteSet::compile`] checks both).
    pub(super) fn new(routes: &RouteSet) -> Emits {
        let mut e = Emits::default();
        let mut ids_of = hashbrown::HashMap::new();
        for r in routes.rules() {
            let mut ids: Vec<u16> = r
                .streams
                .iter()
                .map(|&s| u16::try_from(s).expect("stream indexes are under 2^16"))
                .collect();
            let mut rkyv_names = 0;
            let mut json_fixed = 1 + usize::from(r.fields.is_empty());
            for (i, f) in r.fields.iter().enumerate() {
                let first = *ids_of.entry(*f).or_insert_with(|| {
                    let id = u16::try_from(e.projected.len()).expect("under the checked limit");
                    for punctuation in [b'{', b','] {
                        let at = e.keys.len() as u32;
                        e.keys.push(punctuation);
                        e.keys.extend_from_slice(&record::json_key(f.name()));
                        e.projected.push(Projected {
                            field: *f,
                            name: RkyvStr::new(f.name().as_bytes()),
                            key: (at, e.keys.len() as u32),
                        });
                    }
                    id
                });
                let id = first + u16::from(i > 0);
                let key = e.projected[usize::from(id)].key;
                json_fixed += (key.1 - key.0) as usize;
                ids.push(id);
                rkyv_names += record::out_of_line(f.name().as_bytes());
            }
            let mut inline = [0; IDS_INLINE];
            let spilled_at = if ids.len() <= IDS_INLINE {
                inline[..ids.len()].copy_from_slice(&ids);
                0
            } else {
                e.spilled.extend_from_slice(&ids);
                (e.spilled.len() - ids.len()) as u32
            };
            e.rules.push(EmitRule {
                sampler: r.sampler(),
                json_fixed: json_fixed as u32,
                rkyv_names: rkyv_names as u32,
                spilled_at,
                streams: r.streams.len() as u16,
                fields: r.fields.len() as u16,
                inline,
                address: r.fields.contains(&Field::ClientIp),
            });
        }
        e.prefetching = e.rules.len() * size_of::<EmitRule>() >= PREFETCH_BYTES_MIN;
        e
    }

    /// Asks for the rules an event `matches`, so that their cache misses overlap instead of
    /// following one another (each is one line; a rule with spilled ids, rare, reads them
    /// when its records are written).
    #[inline(always)]
    pub(super) fn prefetch(&self, matches: &Matches) {
        if !self.prefetching {
            return;
        }
        matches.for_each(|i| prefetch(self.rules.as_ptr().wrapping_add(i)));
    }

    /// Rule `r`'s stream ids, then its field ids.
    #[inline(always)]
    fn ids<'a>(&'a self, r: &'a EmitRule) -> &'a [u16] {
        let n = usize::from(r.streams) + usize::from(r.fields);
        if n <= IDS_INLINE {
            &r.inline[..n]
        } else {
            &self.spilled[r.spilled_at as usize..][..n]
        }
    }

    /// The indexes of the streams rule `r` writes to.
    #[inline(always)]
    pub(super) fn streams<'a>(&'a self, r: &'a EmitRule) -> impl Iterator<Item = usize> + 'a {
        self.ids(r)[..usize::from(r.streams)]
            .iter()
            .map(|&s| usize::from(s))
    }

    /// The fields rule `r` projects, in order.
    #[inline(always)]
    fn fields<'a>(
        &'a self,
        r: &'a EmitRule,
    ) -> impl ExactSizeIterator<Item = &'a Projected> + Clone + 'a {
        self.ids(r)[usize::from(r.streams)..].iter().map(|&f| {
            // SAFETY: `Emits::new` made every field id from an index of `projected`.
            unsafe { self.projected.get_unchecked(usize::from(f)) }
        })
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
        let none = r.fields == 0;
        match format {
            RecordFormat::Json => {
                // Each field's key (in `keys`) and where its value's JSON lies in `v`'s
                // buffer, found once.
                let mut places =
                    [const { MaybeUninit::<[(u32, u32); 2]>::uninit() }; FIELDS_PER_RULE_MAX];
                let mut len = r.json_fixed as usize;
                let n = fields.len();
                for (p, to) in fields.zip(&mut places) {
                    let (a, b) = v.json(p.field);
                    len += (b - a) as usize;
                    to.write([p.key, (a, b)]);
                }
                if missing {
                    len += MISSING_JSON.len() - usize::from(none);
                }
                let (keys, buf) = (&self.keys[..], &v.buf[..]);
                put_record_exact::<UPTO>(s, at, len, |c| {
                    if none {
                        c.put(b"{");
                    }
                    for place in &places[..n] {
                        // SAFETY: the loop above wrote the first `n` places.
                        let [(k, l), (a, b)] = unsafe { place.assume_init() };
                        c.put(&keys[k as usize..l as usize]);
                        c.put(&buf[a as usize..b as usize]);
                    }
                    if missing {
                        c.put(&MISSING_JSON[usize::from(none)..]);
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
                for p in fields.clone() {
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
                    let all = fields.map(|p| v.rkyv(p.name, p.field));
                    record::write_rkyv_fields(c, strings, all.chain(mark))
                });
            }
        }
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
            // After a rule of every field in reverse (whose ids spill out of its line), so
            // that the rule's own may too, after another's, and its fields' keys were laid
            // out by the first rule, at other places in its record.
            let source = |name: &str, fields: Vec<String>| RuleSource {
                name: name.into(),
                streams: vec![0],
                when: "event_type == \"x\"".into(),
                fields,
                sample: None,
            };
            let every = pool.iter().rev().map(|f| f.name().to_owned()).collect();
            let routes = RouteSet::compile(
                &[
                    source("every", every),
                    source("r", fields.iter().map(|f| f.name().to_owned()).collect()),
                ],
                None,
            )
            .unwrap();
            let emits = Emits::new(&routes);
            let rule = &emits.rules[1];
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
