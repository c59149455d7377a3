//! Output records: how one projected event, or one dead letter, is encoded.
//!
//! A record is a list of named fields, encoded per stream as JSON (one object whose keys are
//! the projected field names, in rule order) or as rkyv (an archived `Vec<RecordField>`, 8-byte
//! aligned where it lies in a segment). Both encoders write into caller-owned buffers; the
//! projection path allocates nothing.

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;

use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use crate::route::Value;

/// How a stream's records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordFormat {
    Rkyv = 1,
    Json = 2,
}

impl RecordFormat {
    pub fn from_u8(b: u8) -> Option<RecordFormat> {
        match b {
            1 => Some(RecordFormat::Rkyv),
            2 => Some(RecordFormat::Json),
            _ => None,
        }
    }
}

impl FromStr for RecordFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(RecordFormat::Json),
            "rkyv" => Ok(RecordFormat::Rkyv),
            other => Err(format!("format {other:?} is not \"json\" or \"rkyv\"")),
        }
    }
}

impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordFormat::Json => "json",
            RecordFormat::Rkyv => "rkyv",
        })
    }
}

/// Field kinds in an rkyv record.
pub const KIND_NULL: u8 = 0;
pub const KIND_U64: u8 = 1;
pub const KIND_STR: u8 = 2;
pub const KIND_IP: u8 = 3;

/// One field of an rkyv record: `kind` says whether `num` or `text` holds the value.
#[derive(Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordField {
    pub name: String,
    pub kind: u8,
    pub num: u64,
    pub text: String,
}

/// The borrowed form of [`RecordField`], archived exactly as it is.
#[derive(Debug, Clone, Copy)]
pub struct FieldRef<'a> {
    pub name: &'a str,
    pub kind: u8,
    pub num: u64,
    pub text: &'a str,
}

pub struct FieldRefResolver {
    name: StringResolver,
    text: StringResolver,
}

impl Archive for FieldRef<'_> {
    type Archived = ArchivedRecordField;
    type Resolver = FieldRefResolver;

    fn resolve(&self, r: Self::Resolver, out: Place<Self::Archived>) {
        rkyv::munge::munge!(let ArchivedRecordField { name, kind, num, text } = out);
        ArchivedString::resolve_from_str(self.name, r.name, name);
        self.kind.resolve((), kind);
        self.num.resolve((), num);
        ArchivedString::resolve_from_str(self.text, r.text, text);
    }
}

impl<S: Fallible + Writer + ?Sized> Serialize<S> for FieldRef<'_>
where
    S::Error: rkyv::rancor::Source,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(FieldRefResolver {
            name: ArchivedString::serialize_from_str(self.name, s)?,
            text: ArchivedString::serialize_from_str(self.text, s)?,
        })
    }
}

/// A borrowed record, archived exactly as `Vec<RecordField>`.
pub struct RecordRef<'a, 'b>(pub &'b [FieldRef<'a>]);

impl Archive for RecordRef<'_, '_> {
    type Archived = ArchivedVec<ArchivedRecordField>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<S> Serialize<S> for RecordRef<'_, '_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: rkyv::rancor::Source,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, s)
    }
}

/// One rejected envelope, as the dead-letter stream holds it.
#[derive(Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// [`sluice_protocol::Error::name`].
    pub reason: String,
    /// [`sluice_protocol::Error::code`].
    pub code: u16,
    /// The error as text.
    pub detail: String,
    pub key_id: u32,
    pub partition_key: u64,
    /// The envelope as received: header, ciphertext, tag.
    pub raw: Vec<u8>,
    /// Where a consumed envelope came from (a Kafka source); `None` for the TCP ingest.
    pub source: Option<DeadLetterSource>,
}

/// A dead letter's Kafka coordinates.
#[derive(Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A dead letter as written before sources had coordinates (read by `sluice cat`).
#[derive(Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterV1 {
    pub reason: String,
    pub code: u16,
    pub detail: String,
    pub key_id: u32,
    pub partition_key: u64,
    pub raw: Vec<u8>,
}

/// Most fields one record holds: an `_unmatched` record's, every event field, each of the
/// event's attributes, and the missing mark ([`crate::pipeline::MISSING_MARK`]). A rule
/// projects fewer ([`crate::route::FIELDS_PER_RULE_MAX`]).
pub const FIELDS_PER_RECORD_MAX: usize =
    crate::route::Field::ALL.len() + sluice_protocol::limits::ATTRS_PER_EVENT_MAX + 1;

/// Appends `s` to `out` as a JSON string.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    // Most strings need no escape: check in one (vectorizable) pass and copy them whole.
    if !b
        .iter()
        .fold(false, |e, &c| e | (c < 0x20) | (c == b'"') | (c == b'\\'))
    {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                let _ = write!(out, "\\u{c:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Appends one projected record as a JSON object.
pub fn json_record<'v>(out: &mut Vec<u8>, fields: impl Iterator<Item = (&'v str, Value<'v>)>) {
    out.push(b'{');
    for (i, (name, v)) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, name);
        out.push(b':');
        match v {
            Value::U64(n) => {
                let mut buf = itoa_buf();
                out.extend_from_slice(format_u64(n, &mut buf));
            }
            Value::Str(s) => json_str(out, s),
            Value::Ip(std::net::IpAddr::V4(ip)) => {
                out.push(b'"');
                for (i, o) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    let mut buf = itoa_buf();
                    out.extend_from_slice(format_u64(u64::from(o), &mut buf));
                }
                out.push(b'"');
            }
            Value::Ip(ip) => {
                let _ = write!(out, "\"{ip}\"");
            }
            Value::Null => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends one projected record as an rkyv archive, through `scratch` (kept for reuse).
pub fn rkyv_record<'v>(
    out: &mut Vec<u8>,
    scratch: &mut rkyv::util::AlignedVec<16>,
    fields: impl Iterator<Item = (&'v str, Value<'v>)>,
) {
    let mut ip_text = [0u8; 48];
    let mut ip_len = 0;
    // Room for the largest record, left uninitialized: a rule's record fills a few entries,
    // and clearing all of them for every record would cost more than writing it.
    let mut refs =
        [const { std::mem::MaybeUninit::<FieldRef<'_>>::uninit() }; FIELDS_PER_RECORD_MAX];
    let mut n = 0;
    let mut ip_at = None;
    for (name, v) in fields.take(FIELDS_PER_RECORD_MAX) {
        let (kind, num, text) = match v {
            Value::U64(num) => (KIND_U64, num, ""),
            Value::Str(text) => (KIND_STR, 0, text),
            Value::Ip(ip) => {
                let mut w = &mut ip_text[..];
                let _ = write!(w, "{ip}");
                ip_len = 48 - w.len();
                ip_at = Some(n);
                (KIND_IP, 0, "")
            }
            Value::Null => (KIND_NULL, 0, ""),
        };
        refs[n].write(FieldRef {
            name,
            kind,
            num,
            text,
        });
        n += 1;
    }
    // SAFETY: entries 0..n were written in the loop above.
    let refs: &mut [FieldRef<'_>] =
        unsafe { std::slice::from_raw_parts_mut(refs.as_mut_ptr().cast::<FieldRef<'_>>(), n) };
    if let Some(i) = ip_at {
        refs[i].text = std::str::from_utf8(&ip_text[..ip_len]).expect("an IP prints as ASCII");
    }
    scratch.clear();
    let buf = std::mem::take(scratch);
    *scratch = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&RecordRef(refs), buf)
        .expect("serializing into a growable buffer cannot fail");
    out.extend_from_slice(scratch);
}

/// An rkyv record (its bytes 16-byte aligned) as a JSON object.
pub fn rkyv_record_to_json(bytes: &[u8]) -> Result<String, String> {
    let fields = rkyv::access::<ArchivedVec<ArchivedRecordField>, rkyv::rancor::Error>(bytes)
        .map_err(|e| format!("invalid rkyv record: {e}"))?;
    let mut out = Vec::new();
    out.push(b'{');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, &f.name);
        out.push(b':');
        match f.kind {
            KIND_U64 => {
                let _ = write!(out, "{}", f.num.to_native());
            }
            KIND_STR | KIND_IP => json_str(&mut out, &f.text),
            _ => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    String::from_utf8(out).map_err(|_| "record is not UTF-8".into())
}

/// Appends a dead letter in `format`; `source`: where a consumed envelope came from.
pub fn dead_letter_record(
    out: &mut Vec<u8>,
    format: RecordFormat,
    error: &sluice_protocol::Error,
    header: &sluice_protocol::EnvelopeHeader,
    raw: &[u8],
    source: Option<&crate::source::Coord>,
) {
    match format {
        RecordFormat::Json => {
            use base64::Engine as _;
            let _ = write!(
                out,
                "{{\"reason\":\"{}\",\"code\":{},\"detail\":",
                error.name(),
                error.code()
            );
            json_str(out, &error.to_string());
            let _ = write!(
                out,
                ",\"key_id\":{},\"partition_key\":{},\"raw\":\"",
                header.key_id, header.partition_key
            );
            let at = out.len();
            let n = base64::encoded_len(raw.len(), true).expect("envelopes are small");
            out.resize(at + n, 0);
            base64::engine::general_purpose::STANDARD
                .encode_slice(raw, &mut out[at..])
                .expect("sized above");
            out.push(b'"');
            if let Some(c) = source {
                out.extend_from_slice(b",\"source\":{\"topic\":");
                json_str(out, &c.topic);
                let _ = write!(
                    out,
                    ",\"partition\":{},\"offset\":{}}}",
                    c.partition, c.offset
                );
            }
            out.push(b'}');
        }
        RecordFormat::Rkyv => {
            let d = DeadLetter {
                reason: error.name().to_owned(),
                code: error.code(),
                detail: error.to_string(),
                key_id: header.key_id,
                partition_key: header.partition_key,
                raw: raw.to_vec(),
                source: source.map(|c| DeadLetterSource {
                    topic: c.topic.to_string(),
                    partition: c.partition,
                    offset: c.offset,
                }),
            };
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&d).expect("serializes");
            out.extend_from_slice(&bytes);
        }
    }
}

/// An rkyv dead letter (16-byte aligned) as a JSON object: the layout with a source first,
/// then the one before it.
pub fn rkyv_dead_letter_to_json(bytes: &[u8]) -> Result<String, String> {
    use base64::Engine as _;
    let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
    if let Ok(d) = rkyv::access::<ArchivedDeadLetter, rkyv::rancor::Error>(bytes) {
        let mut v = serde_json::json!({
            "reason": d.reason.as_str(),
            "code": d.code.to_native(),
            "detail": d.detail.as_str(),
            "key_id": d.key_id.to_native(),
            "partition_key": d.partition_key.to_native(),
            "raw": b64(d.raw.as_slice()),
        });
        if let Some(c) = d.source.as_ref() {
            v["source"] = serde_json::json!({
                "topic": c.topic.as_str(),
                "partition": c.partition.to_native(),
                "offset": c.offset.to_native(),
            });
        }
        return Ok(v.to_string());
    }
    let d = rkyv::access::<ArchivedDeadLetterV1, rkyv::rancor::Error>(bytes)
        .map_err(|e| format!("invalid rkyv dead letter: {e}"))?;
    let v = serde_json::json!({
        "reason": d.reason.as_str(),
        "code": d.code.to_native(),
        "detail": d.detail.as_str(),
        "key_id": d.key_id.to_native(),
        "partition_key": d.partition_key.to_native(),
        "raw": b64(d.raw.as_slice()),
    });
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `_unmatched` record carries every field and the missing mark: none is cut off.
    #[test]
    fn an_rkyv_record_holds_every_field_and_the_mark() {
        let names: Vec<String> = (0..FIELDS_PER_RECORD_MAX)
            .map(|i| format!("f{i}"))
            .collect();
        let fields = names.iter().map(|n| (n.as_str(), Value::U64(7)));
        let mut out = Vec::new();
        let mut scratch = rkyv::util::AlignedVec::<16>::new();
        rkyv_record(&mut out, &mut scratch, fields);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&out);
        let json: serde_json::Value =
            serde_json::from_str(&rkyv_record_to_json(&aligned).unwrap()).unwrap();
        assert_eq!(json.as_object().unwrap().len(), FIELDS_PER_RECORD_MAX);
        assert_eq!(json[format!("f{}", FIELDS_PER_RECORD_MAX - 1)], 7);
    }
}
