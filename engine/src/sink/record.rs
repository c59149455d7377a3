//! Output records: how one projected event, or one dead letter, is encoded.
//!
//! A record is a list of named fields, encoded per stream as JSON (one object whose keys are
//! the projected field names, in rule order) or as rkyv (an archived `Vec<RecordField>`, 8-byte
//! aligned where it lies in a segment). Both encoders write into caller-owned buffers; the
//! projection path allocates nothing.

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;

use rkyv::Archive;
use rkyv::vec::ArchivedVec;

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

/// Appends `b` to `out`. A record is built of short pieces (names, values, a few bytes of
/// punctuation), for which a call to `memcpy` costs more than the copy: pieces up to 32 bytes
/// are moved as two overlapping fixed-size loads and stores.
#[inline(always)]
pub fn put(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    out.reserve(n);
    // SAFETY: `reserve` made room for `n` more bytes after `len`; `copy_short` writes exactly
    // `dst[..n]` from `b[..n]`, and the two do not overlap (`b` is not in `out`'s spare room).
    unsafe {
        let len = out.len();
        copy_short(out.as_mut_ptr().add(len), b.as_ptr(), n);
        out.set_len(len + n);
    }
}

/// Copies `n` bytes from `src` to `dst`.
///
/// # Safety
/// `src[..n]` must be readable, `dst[..n]` writable, and the two must not overlap.
#[inline(always)]
unsafe fn copy_short(dst: *mut u8, src: *const u8, n: usize) {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    // SAFETY: in every arm, each access lies within `src[..n]` or `dst[..n]` (the second of
    // each pair ends at `n`, the first starts at 0, and the size condition keeps both in),
    // which the caller guarantees are valid and apart.
    unsafe {
        if n >= 16 {
            if n > 32 {
                std::ptr::copy_nonoverlapping(src, dst, n);
                return;
            }
            let (a, b) = (rd(src.cast::<u128>()), rd(src.add(n - 16).cast::<u128>()));
            wr(dst.cast::<u128>(), a);
            wr(dst.add(n - 16).cast::<u128>(), b);
        } else if n >= 8 {
            let (a, b) = (rd(src.cast::<u64>()), rd(src.add(n - 8).cast::<u64>()));
            wr(dst.cast::<u64>(), a);
            wr(dst.add(n - 8).cast::<u64>(), b);
        } else if n >= 4 {
            let (a, b) = (rd(src.cast::<u32>()), rd(src.add(n - 4).cast::<u32>()));
            wr(dst.cast::<u32>(), a);
            wr(dst.add(n - 4).cast::<u32>(), b);
        } else if n > 0 {
            // 1 to 3 bytes: the first, the middle and the last (some the same).
            let (a, m, z) = (*src, *src.add(n / 2), *src.add(n - 1));
            *dst = a;
            *dst.add(n / 2) = m;
            *dst.add(n - 1) = z;
        }
    }
}

/// A writer into room reserved for exactly the bytes about to be written ([`append_exact`]):
/// each piece costs one comparison against the room left and a short copy, not a `reserve`.
///
/// `'id` brands the cursor with the one [`append_exact`] call that made it (the closure takes
/// any `'id`), so that no two cursors can be swapped.
pub struct Cursor<'id> {
    room: *mut u8,
    len: usize,
    at: usize,
    _brand: std::marker::PhantomData<fn(&'id ()) -> &'id ()>,
}

impl Cursor<'_> {
    /// Appends `b`.
    #[inline(always)]
    pub fn put(&mut self, b: &[u8]) {
        let n = b.len();
        if n > self.len - self.at {
            overrun();
        }
        // SAFETY: `room[at..at + n]` lies in the reserved room (checked above), which `b`
        // (borrowed apart from the vector being written) does not overlap.
        unsafe { copy_short(self.room.add(self.at), b.as_ptr(), n) };
        self.at += n;
    }

    /// Appends 8 bytes.
    #[inline(always)]
    pub fn put8(&mut self, b: [u8; 8]) {
        self.put(&b);
    }

    /// Appends four little-endian words.
    #[inline(always)]
    pub fn put32(&mut self, w: [u64; 4]) {
        if 32 > self.len - self.at {
            overrun();
        }
        // SAFETY: `room[at..at + 32]` lies in the reserved room (checked above).
        unsafe {
            let p = self.room.add(self.at);
            for (i, w) in w.into_iter().enumerate() {
                std::ptr::write_unaligned(p.add(8 * i).cast::<[u8; 8]>(), w.to_le_bytes());
            }
        }
        self.at += 32;
    }

    /// Appends `n` (at most 8) zero bytes.
    #[inline(always)]
    pub fn zeros(&mut self, n: usize) {
        self.put(&[0; 8][..n]);
    }

    /// Bytes written so far.
    #[inline(always)]
    pub fn written(&self) -> usize {
        self.at
    }

    /// Splits the room left in two, the next `first` bytes and the rest, for `write` to
    /// fill side by side: the first whole (else it panics), the second from its start.
    #[inline(always)]
    pub fn split<R>(
        &mut self,
        first: usize,
        write: impl for<'a, 'b> FnOnce(&mut Cursor<'a>, &mut Cursor<'b>) -> R,
    ) -> R {
        if first > self.len - self.at {
            overrun();
        }
        let rest = self.len - self.at - first;
        // SAFETY: `room[at..at + first]` and `room[at + first..len]` lie in the reserved
        // room (checked above), one after the other.
        let (a, b) = unsafe {
            let a = self.room.add(self.at);
            (a, a.add(first))
        };
        let mut head = Cursor {
            room: a,
            len: first,
            at: 0,
            _brand: std::marker::PhantomData,
        };
        let mut tail = Cursor {
            room: b,
            len: rest,
            at: 0,
            _brand: std::marker::PhantomData,
        };
        let r = write(&mut head, &mut tail);
        if head.at != first {
            short();
        }
        self.at += first + tail.at;
        r
    }
}

#[cold]
#[inline(never)]
fn short() -> ! {
    panic!("a record left part of its room unwritten")
}

#[cold]
#[inline(never)]
fn overrun() -> ! {
    panic!("a record wrote more bytes than it measured")
}

/// A growable buffer that records are appended to: a `Vec<u8>`, or a stream's
/// [`RecordBuf`](crate::sink::buf::RecordBuf), whose memory its segment write takes as it is.
pub trait Out {
    /// Bytes written.
    fn len(&self) -> usize;
    /// Whether none are.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes room for at least `n` bytes after the written ones.
    fn reserve(&mut self, n: usize);
    /// Where the written bytes start; room [`reserve`](Out::reserve)d lies after them.
    fn as_mut_ptr(&mut self) -> *mut u8;
    /// Takes the first `len` bytes as written.
    ///
    /// # Safety
    /// They must lie within the written bytes and the room reserved after them, and be
    /// initialized.
    unsafe fn set_len(&mut self, len: usize);
    /// The written bytes.
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// Asks for the memory that the next writes will go to, `n` bytes of it (those of about
    /// a record like the one just written), so that it is in the cache when they come. By
    /// default nothing: only memory that is not already near ([`RecordBuf`]) needs asking.
    ///
    /// [`RecordBuf`]: super::buf::RecordBuf
    #[inline(always)]
    fn write_ahead(&self, n: usize) {
        let _ = n;
    }
}

impl Out for Vec<u8> {
    #[inline(always)]
    fn len(&self) -> usize {
        Vec::len(self)
    }
    #[inline(always)]
    fn reserve(&mut self, n: usize) {
        Vec::reserve(self, n)
    }
    #[inline(always)]
    fn as_mut_ptr(&mut self) -> *mut u8 {
        Vec::as_mut_ptr(self)
    }
    #[inline(always)]
    unsafe fn set_len(&mut self, len: usize) {
        // SAFETY: as the caller guarantees.
        unsafe { Vec::set_len(self, len) }
    }
    #[inline(always)]
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
}

/// Appends exactly `len` bytes to `out`, written by `write` front to back through a cursor
/// over room reserved once. Panics (having appended nothing) if `write` writes more or fewer.
#[inline(always)]
pub fn append_exact<O: Out + ?Sized>(
    out: &mut O,
    len: usize,
    write: impl for<'id> FnOnce(&mut Cursor<'id>),
) {
    out.reserve(len);
    let at = out.len();
    let mut c = Cursor {
        // SAFETY: `reserve` made room for `len` bytes after `at`.
        room: unsafe { out.as_mut_ptr().add(at) },
        len,
        at: 0,
        _brand: std::marker::PhantomData,
    };
    write(&mut c);
    assert!(
        c.at == len,
        "a record measured {len} bytes and wrote {}",
        c.at
    );
    // SAFETY: the cursor wrote `room[..len]` front to back with no gap (it only appends), so
    // the `len` bytes after `at` are initialized.
    unsafe { out.set_len(at + len) };
    out.write_ahead(len);
}

/// Whether `b` needs escaping in a JSON string: a control byte, `"` or `\\`. Eight bytes at a
/// time (the strings are short: a byte-wise loop spends most of its time on its tail).
#[inline]
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    // A word's high bit set in each byte that is below `n` (exact as to whether any is, for
    // `n` up to 128), or zero.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let bad = |x: u64| {
        below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
    };
    let mut chunks = b.chunks_exact(8);
    let mut found = 0;
    for c in &mut chunks {
        found |= bad(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    let rest = chunks.remainder();
    // The tail, filled out with a byte that needs no escape.
    let mut last = [b'a'; 8];
    // SAFETY: the tail is shorter than 8 bytes; `last` is a local apart from `b`.
    unsafe { copy_short(last.as_mut_ptr(), rest.as_ptr(), rest.len()) };
    found |= bad(u64::from_le_bytes(last));
    found != 0
}

/// Appends `s` to `out` as a JSON string.
#[inline]
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    // Most strings need no escape: check them a word at a time and copy them whole.
    if !needs_escape(b) {
        append_exact(out, b.len() + 2, |c| {
            c.put(b"\"");
            c.put(b);
            c.put(b"\"");
        });
        return;
    }
    json_str_escaped(out, b);
}

#[cold]
fn json_str_escaped(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
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

/// A field name as a JSON object key, escaped once: `"name":`.
pub fn json_key(name: &str) -> Box<[u8]> {
    let mut k = Vec::with_capacity(name.len() + 3);
    json_str(&mut k, name);
    k.push(b':');
    k.into_boxed_slice()
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
        json_value(out, v);
    }
    out.push(b'}');
}

/// Appends a field's value as JSON.
#[inline]
pub fn json_value(out: &mut Vec<u8>, v: Value<'_>) {
    match v {
        Value::U64(n) => put(out, itoa::Buffer::new().format(n).as_bytes()),
        Value::Str(s) => json_str(out, s),
        Value::Ip(ip) => {
            let mut buf = [0; IP_TEXT_MAX];
            out.push(b'"');
            put(out, ip_text(ip, &mut buf));
            out.push(b'"');
        }
        Value::Null => put(out, b"null"),
    }
}

/// The longest address text ([`ip_text`]).
pub const IP_TEXT_MAX: usize = 48;

/// An address as `Display` writes it, into `buf`: IPv4 dotted quads by hand (the common
/// case), anything else through `fmt`.
#[inline]
pub fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &[u8] {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let (h, t, u) = (o / 100, o / 10 % 10, o % 10);
                buf[n] = b'0' + h;
                n += usize::from(h > 0);
                buf[n] = b'0' + t;
                n += usize::from(h > 0 || t > 0);
                buf[n] = b'0' + u;
                n += 1;
            }
            &buf[..n]
        }
        ip => {
            let mut w = &mut buf[..];
            let _ = write!(w, "{ip}");
            let n = IP_TEXT_MAX - w.len();
            &buf[..n]
        }
    }
}

/// Appends one projected record as an rkyv archive: an archived `Vec<RecordField>`, written
/// here byte for byte as rkyv's serializer writes it (the tests compare the two on random
/// records) without its machinery. `out.len()` is where the record starts: rkyv aligns to its
/// buffer's start, and a segment record's payload starts 8-byte aligned.
#[inline]
pub fn rkyv_record<'v>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'v str, Value<'v>)>,
    last: Option<(&'v str, Value<'v>)>,
) {
    // Each address's text, in the place of its field.
    let mut ips =
        [const { std::mem::MaybeUninit::<[u8; IP_TEXT_MAX]>::uninit() }; FIELDS_PER_RECORD_MAX];
    // Room for the largest record, left uninitialized: a rule's record fills a few entries,
    // and clearing all of them for every record would cost more than writing it.
    let mut all =
        [const { std::mem::MaybeUninit::<RkyvField<'_>>::uninit() }; FIELDS_PER_RECORD_MAX];
    let mut n = 0;
    for ((name, v), ip) in fields.chain(last).zip(&mut ips) {
        let (kind, num, text) = match v {
            Value::U64(num) => (KIND_U64, num, &b""[..]),
            Value::Str(text) => (KIND_STR, 0, text.as_bytes()),
            Value::Ip(addr) => (KIND_IP, 0, ip_text(addr, ip.write([0; IP_TEXT_MAX]))),
            Value::Null => (KIND_NULL, 0, &b""[..]),
        };
        all[n].write(RkyvField {
            name: RkyvStr::new(name.as_bytes()),
            kind,
            num,
            text,
        });
        n += 1;
    }
    // SAFETY: entries 0..n were written above.
    let fields: &[RkyvField<'_>] =
        unsafe { std::slice::from_raw_parts(all.as_ptr().cast::<RkyvField<'_>>(), n) };
    let strings = fields
        .iter()
        .map(|f| out_of_line(f.name.bytes) + out_of_line(f.text))
        .sum();
    append_exact(out, rkyv_len(fields.len(), strings), |c| {
        write_rkyv_fields(c, strings, fields.iter().copied())
    });
}

/// The size of an archived [`RecordField`] and where its parts lie in it.
const ENTRY_BYTES: usize = 32;
const _: () = {
    assert!(std::mem::size_of::<ArchivedRecordField>() == ENTRY_BYTES);
    assert!(std::mem::align_of::<ArchivedRecordField>() == 8);
    assert!(std::mem::offset_of!(ArchivedRecordField, name) == 0);
    assert!(std::mem::offset_of!(ArchivedRecordField, kind) == 8);
    assert!(std::mem::offset_of!(ArchivedRecordField, num) == 16);
    assert!(std::mem::offset_of!(ArchivedRecordField, text) == 24);
    assert!(rkyv::string::repr::INLINE_CAPACITY == 8);
};

/// One field as an rkyv record holds it.
#[derive(Debug, Clone, Copy)]
pub struct RkyvField<'a> {
    pub name: RkyvStr<'a>,
    pub kind: u8,
    pub num: u64,
    pub text: &'a [u8],
}

/// A string as an rkyv record holds it: its bytes, and its archived word but the offset (the
/// inline word, or the length marked out of line). A rule's field names are made once, when
/// the rule is laid out; a value's text as its record is written.
#[derive(Debug, Clone, Copy)]
pub struct RkyvStr<'a> {
    pub bytes: &'a [u8],
    word: u64,
}

impl<'a> RkyvStr<'a> {
    #[inline(always)]
    pub fn new(bytes: &'a [u8]) -> Self {
        let word = if bytes.len() <= 8 {
            inline_word(bytes)
        } else {
            let l = bytes.len() as u32;
            u64::from((l & 0x3f) | 0x80 | ((l & !0x3f) << 2))
        };
        RkyvStr { bytes, word }
    }

    /// Its archived 8 bytes (as a little-endian word) at `pos` (relative to the record): the
    /// inline word, or the length and the offset of its bytes, which are written to
    /// `out_of_line` (whose start is the record's).
    #[inline(always)]
    fn place(self, out_of_line: &mut Cursor<'_>, pos: usize) -> u64 {
        if self.bytes.len() <= 8 {
            return self.word;
        }
        let offset = (out_of_line.written() as i32 - pos as i32) as u32;
        out_of_line.put(self.bytes);
        u64::from(offset) << 32 | self.word
    }
}

/// The bytes of `s` that an archived string keeps out of line (those over 8 are not inline).
#[inline(always)]
pub fn out_of_line(s: &[u8]) -> usize {
    if s.len() > 8 { s.len() } else { 0 }
}

/// The length of an rkyv record of `n` fields whose out-of-line strings take `strings` bytes.
#[inline(always)]
pub fn rkyv_len(n: usize, strings: usize) -> usize {
    strings.next_multiple_of(8) + n * ENTRY_BYTES + 8
}

/// Writes `fields` as rkyv writes `Vec<RecordField>`: each field's name and text that are
/// too long to lie inline (over 8 bytes), in order; zeros to an 8-byte boundary; the 32-byte
/// entries; and the root (a relative pointer to the entries, and their count). Their
/// out-of-line strings take `strings` bytes; the record takes [`rkyv_len`] bytes (of as many
/// fields as `fields` yields) from where the cursor is, which must be 8-byte aligned where
/// the record will lie. One pass: each field's strings and its entry are written side by
/// side, into the two parts of the record's room.
#[inline(always)]
pub fn write_rkyv_fields<'f>(
    c: &mut Cursor<'_>,
    strings: usize,
    fields: impl Iterator<Item = RkyvField<'f>>,
) {
    let entries = strings.next_multiple_of(8);
    c.split(entries, |out_of_line, c| {
        // Where the next entry lies, relative to the record.
        let mut e = entries;
        for f in fields {
            let name = f.name.place(out_of_line, e);
            let text = RkyvStr::new(f.text).place(out_of_line, e + 24);
            // The kind, then the padding before `num`, zeroed as rkyv zeroes it.
            c.put32([name, u64::from(f.kind), f.num, text]);
            e += ENTRY_BYTES;
        }
        assert_eq!(
            out_of_line.written(),
            strings,
            "out-of-line strings as measured"
        );
        out_of_line.zeros(entries - strings);
        // The root: the entries relative to it, and their count.
        let count = (e - entries) / ENTRY_BYTES;
        let offset = (entries as i32 - e as i32) as u32;
        c.put8((u64::from(count as u32) << 32 | u64::from(offset)).to_le_bytes());
    });
}

/// `b` (at most 8 bytes) as the little-endian word of an inline archived string: its bytes,
/// then `0xff`. Made in a register from at most three loads of `b`: a word built by narrow
/// stores into memory and read back whole waits for them (the store cannot be forwarded),
/// and that wait was the encode stage's largest.
#[inline(always)]
fn inline_word(b: &[u8]) -> u64 {
    use std::ptr::read_unaligned as rd;
    let (n, p) = (b.len(), b.as_ptr());
    debug_assert!(n <= 8);
    // SAFETY: in every arm, each read lies within `b[..n]` (the second of a pair ends at `n`,
    // the first starts at 0, and the size condition keeps both in).
    let bytes = unsafe {
        if n == 8 {
            return u64::from_le(rd(p.cast::<u64>()));
        } else if n >= 4 {
            let lo = u64::from(u32::from_le(rd(p.cast::<u32>())));
            let hi = u64::from(u32::from_le(rd(p.add(n - 4).cast::<u32>())));
            // The two overlap where `n` < 8, on the same bytes.
            lo | hi << (8 * (n - 4))
        } else if n > 0 {
            // 1 to 3 bytes: the first, the middle and the last (some the same).
            let (a, m, z) = (*p, *p.add(n / 2), *p.add(n - 1));
            u64::from(a) | u64::from(m) << (8 * (n / 2)) | u64::from(z) << (8 * (n - 1))
        } else {
            0
        }
    };
    bytes | !0u64 << (8 * n)
}

/// The serializable borrowed record that [`rkyv_record_by_rkyv`] hands rkyv.
#[cfg(test)]
mod reference {
    use rkyv::rancor::Fallible;
    use rkyv::ser::{Allocator, Writer};
    use rkyv::string::{ArchivedString, StringResolver};
    use rkyv::vec::{ArchivedVec, VecResolver};
    use rkyv::{Archive, Place, Serialize};

    use super::ArchivedRecordField;

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
}

/// [`rkyv_record`] through rkyv's own serializer: what the hand-written one must match.
#[cfg(test)]
fn rkyv_record_by_rkyv<'v>(
    out: &mut Vec<u8>,
    scratch: &mut rkyv::util::AlignedVec<16>,
    fields: impl Iterator<Item = (&'v str, Value<'v>)>,
) {
    use reference::{FieldRef, RecordRef};
    let fields: Vec<(&str, u8, u64, String)> = fields
        .take(FIELDS_PER_RECORD_MAX)
        .map(|(name, v)| match v {
            Value::U64(num) => (name, KIND_U64, num, String::new()),
            Value::Str(text) => (name, KIND_STR, 0, text.to_owned()),
            Value::Ip(ip) => (name, KIND_IP, 0, ip.to_string()),
            Value::Null => (name, KIND_NULL, 0, String::new()),
        })
        .collect();
    let refs: Vec<FieldRef<'_>> = fields
        .iter()
        .map(|(name, kind, num, text)| FieldRef {
            name,
            kind: *kind,
            num: *num,
            text,
        })
        .collect();
    scratch.clear();
    let buf = std::mem::take(scratch);
    *scratch = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&RecordRef(&refs), buf)
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
        rkyv_record(&mut out, fields, None);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&out);
        let json: serde_json::Value =
            serde_json::from_str(&rkyv_record_to_json(&aligned).unwrap()).unwrap();
        assert_eq!(json.as_object().unwrap().len(), FIELDS_PER_RECORD_MAX);
        assert_eq!(json[format!("f{}", FIELDS_PER_RECORD_MAX - 1)], 7);
    }

    /// An inline string's word is its bytes then `0xff`, at every length up to 8.
    #[test]
    fn an_inline_word_is_the_bytes_then_ff() {
        let text = b"abcdefgh";
        for n in 0..=8 {
            let mut want = [0xffu8; 8];
            want[..n].copy_from_slice(&text[..n]);
            assert_eq!(
                inline_word(&text[..n]),
                u64::from_le_bytes(want),
                "{n} bytes"
            );
        }
    }
}

#[cfg(test)]
mod encodings {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = (u8, u64, String, [u8; 4])> {
        (
            0u8..4,
            any::<u64>(),
            "[a-z\"\\\\\n\u{1}é]{0,40}",
            any::<[u8; 4]>(),
        )
    }

    proptest! {
        /// The hand-written rkyv record is rkyv's, byte for byte, from any offset that a
        /// segment may put it at; the JSON record from ready keys is the one with plain names.
        #[test]
        fn records_are_what_the_reference_writes(
            fields in proptest::collection::vec(("[a-z._\"]{1,30}", value()), 0..FIELDS_PER_RECORD_MAX + 3),
            lead in 0usize..4,
        ) {
            let values: Vec<(&str, Value<'_>)> = fields
                .iter()
                .map(|(name, (kind, num, text, ip))| {
                    let v = match kind {
                        0 => Value::Null,
                        1 => Value::U64(*num),
                        2 => Value::Str(text),
                        _ if num % 2 == 0 => Value::Ip(std::net::Ipv4Addr::from(*ip).into()),
                        _ => Value::Ip(std::net::Ipv6Addr::from(u128::from(*num) << 64 | 0xff).into()),
                    };
                    (name.as_str(), v)
                })
                .collect();
            let mut scratch = rkyv::util::AlignedVec::<16>::new();
            let mut want = Vec::new();
            rkyv_record_by_rkyv(&mut want, &mut scratch, values.iter().copied());
            let mut got = vec![7u8; lead * 8];
            rkyv_record(&mut got, values.iter().copied(), None);
            prop_assert_eq!(&got[lead * 8..], &want[..]);

            let mut json = Vec::new();
            json_record(&mut json, values.iter().copied());
            // Keys escaped once ([`json_key`]) and values, as the pipeline writes them.
            let mut keyed = vec![b'{'];
            for (i, (n, v)) in values.iter().enumerate() {
                if i > 0 {
                    keyed.push(b',');
                }
                put(&mut keyed, &json_key(n));
                json_value(&mut keyed, *v);
            }
            keyed.push(b'}');
            prop_assert_eq!(&keyed, &json);
            let text = String::from_utf8(json).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert!(parsed.is_object());
        }
    }

    #[test]
    fn addresses_print_as_display_does() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "255.255.255.255",
            "100.20.3.0",
            "::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut buf = [0; IP_TEXT_MAX];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }
}

#[cfg(test)]
mod short_pieces {
    use super::*;

    /// Every length up to past the widest move, from every offset: copied exactly, nothing
    /// written before it, escapes found wherever they are.
    #[test]
    fn copies_and_escape_checks_are_exact() {
        let src: Vec<u8> = (0..80u8).map(|i| b'a' + i % 26).collect();
        for at in 0..8 {
            for n in 0..=70 {
                let mut out = vec![0xeeu8; 4];
                put(&mut out, &src[at..at + n]);
                assert_eq!(&out[4..], &src[at..at + n]);
                assert_eq!(&out[..4], &[0xee; 4]);
                assert!(!needs_escape(&src[at..at + n]));
                for bad in [b'"', b'\\', b'\n', 0x1f] {
                    for k in 0..n {
                        let mut s = src[at..at + n].to_vec();
                        s[k] = bad;
                        assert!(needs_escape(&s), "{n} bytes, {bad} at {k}");
                    }
                }
            }
        }
    }
}
