//! Segment files: the append-only logs every stream is written to.
//!
//! ```text
//! segment := header(32) record*
//! header  := "SLSG" version:u8 kind:u8 format:u8 0:u8 shard:u16 0:u16 seq:u32
//!            created_ms:u64 0:u32 crc32c(bytes 0..28):u32
//! record  := len:u32 crc:u32 partition:u32 seq:u32 key:u64 payload[len] zero-pad to 8
//!            crc = CRC32C(bytes 8..24 of the record, then payload)
//! ```
//!
//! `key` is the partition key of the envelope the record came from (PROTOCOL.md §4); network
//! sinks send it as the message key. `seq` is the segment's own (its header's): a file is
//! reused for a later segment once retention lets its segment go ([`free_path`]), and its
//! records are written over those of its earlier use, which carry another `seq`.
//!
//! Integers are little-endian. Records start 8-byte aligned in the file. Writers use O_DIRECT
//! (glommio's DMA files), so a file cut short by a crash may end in zeros, or (a reused file)
//! in the bytes of its earlier use. The records end at a record length of zero, or at a
//! record whose CRC checks but whose `seq` is another segment's. Anything else that does not
//! check out is a torn tail, reported with its offset: in a reused file cut short by a crash,
//! that may be the middle of an earlier record.
//!
//! Older versions, which readers take as well: version 2 (written before files were reused)
//! has 0 for `seq` in every record, and its records end only at a zero length followed by
//! nothing but zeros; version 1 (written before the key was kept) has 16-byte record headers
//! without `key`, read with key 0, and ends as version 2 does.
//!
//! A file shorter than a header, or nothing but zeros, is an **empty segment**: a crash while
//! the segment was being created (between creating the file and writing its first block)
//! leaves one. It holds no records; readers skip it with a note, and the engine removes such
//! files when it starts ([`remove_empty`]).
//!
//! Files live at `<dir>/<stream>/<shard:03>-<seq:08>.seg`: one writer per stream per shard,
//! each record tagged with its partition (see the note on partitions in tuning.md).

use std::path::{Path, PathBuf};

use super::record::{Cursor, Out, RecordFormat, append_exact};

pub const SEGMENT_MAGIC: [u8; 4] = *b"SLSG";
pub const SEGMENT_VERSION: u8 = 3;
pub const SEGMENT_HEADER_BYTES: usize = 32;
pub const RECORD_HEADER_BYTES: usize = 24;
/// The record header of version 1 segments (no key).
const RECORD_HEADER_BYTES_V1: usize = 16;
/// Largest record payload a reader accepts.
pub const RECORD_BYTES_MAX: usize = 16 << 20;

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SegmentKind {
    Records = 1,
    DeadLetters = 2,
}

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version: [`SEGMENT_VERSION`] for what this build writes, 1 or 2 for older
    /// files.
    pub version: u8,
    pub kind: SegmentKind,
    pub format: RecordFormat,
    pub shard: u16,
    pub seq: u32,
    pub created_ms: u64,
}

/// CRC32C (Castagnoli). Records are a few hundred bytes, where a library call's setup costs
/// more than the sum; SSE4.2's `crc32` instruction does 8 bytes in one step.
#[inline]
fn crc32c(b: &[u8]) -> u32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse4.2"))]
    {
        // SAFETY: this code is only built when the build enables SSE4.2 (the cfg above), so
        // every CPU the binary may run on has it.
        unsafe { crc32c_sse42(b) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse4.2")))]
    {
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b) as u32
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse4.2"))]
#[target_feature(enable = "sse4.2")]
fn crc32c_sse42(b: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut crc = !0u64;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut crc = crc as u32;
    for &byte in words.remainder() {
        crc = _mm_crc32_u8(crc, byte);
    }
    !crc
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC);
        b[4] = self.version;
        b[5] = self.kind as u8;
        b[6] = self.format as u8;
        b[8..10].copy_from_slice(&self.shard.to_le_bytes());
        b[12..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err("shorter than a segment header".into());
        }
        if b[0..4] != SEGMENT_MAGIC {
            return Err("not a sluice segment (bad magic)".into());
        }
        if !(1..=SEGMENT_VERSION).contains(&b[4]) {
            return Err(format!(
                "segment version {} is not 1 to {SEGMENT_VERSION}",
                b[4]
            ));
        }
        if crc32c(&b[..28]) != u32_at(b, 28) {
            return Err("segment header CRC mismatch".into());
        }
        let kind = match b[5] {
            1 => SegmentKind::Records,
            2 => SegmentKind::DeadLetters,
            k => return Err(format!("unknown segment kind {k}")),
        };
        let format =
            RecordFormat::from_u8(b[6]).ok_or_else(|| format!("unknown format {}", b[6]))?;
        Ok(SegmentHeader {
            version: b[4],
            kind,
            format,
            shard: u16::from_le_bytes([b[8], b[9]]),
            seq: u32_at(b, 12),
            created_ms: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        })
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

/// Appends one framed record of segment `seq` to `out` (which holds whole records), the
/// payload written by `payload`. Returns the framed length. (A writer that puts it in another
/// segment seals it again: [`reseal_records`].)
#[inline]
pub fn append_record(
    out: &mut Vec<u8>,
    partition: u32,
    seq: u32,
    key: u64,
    payload: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let start = out.len();
    debug_assert_eq!(start % 8, 0, "records start 8-byte aligned");
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    payload(out);
    let len = out.len() - start - RECORD_HEADER_BYTES;
    let header = &mut out[start..start + RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[8..12].copy_from_slice(&partition.to_le_bytes());
    header[12..16].copy_from_slice(&seq.to_le_bytes());
    header[16..24].copy_from_slice(&key.to_le_bytes());
    let end = start + RECORD_HEADER_BYTES + len;
    out.resize(end.next_multiple_of(8), 0);
    seal(out, start);
    out.len() - start
}

/// [`append_record`] for a payload of exactly `len` bytes, written through a cursor over room
/// reserved once for the whole framed record. Returns the framed length.
#[inline(always)]
pub fn append_record_exact<O: Out + ?Sized>(
    out: &mut O,
    partition: u32,
    seq: u32,
    key: u64,
    len: usize,
    payload: impl for<'id> FnOnce(&mut Cursor<'id>),
) -> usize {
    let start = out.len();
    debug_assert_eq!(start % 8, 0, "records start 8-byte aligned");
    let framed = (RECORD_HEADER_BYTES + len).next_multiple_of(8);
    append_exact(out, framed, |c| {
        // Length, then the CRC to come; partition, then the segment; key.
        c.put8(u64::from(len as u32).to_le_bytes());
        c.put8((u64::from(seq) << 32 | u64::from(partition)).to_le_bytes());
        c.put8(key.to_le_bytes());
        payload(c);
        assert_eq!(
            c.written(),
            RECORD_HEADER_BYTES + len,
            "payload as measured"
        );
        c.zeros(framed - RECORD_HEADER_BYTES - len);
    });
    seal(out.as_mut_slice(), start);
    framed
}

/// Fills in the CRC of the record at `start`, just written: its bytes are still in the
/// nearest cache, and the CRC's chain of dependent steps overlaps the work on the next record.
/// (Sealing a batch's records at its end, four chains side by side, read them back from
/// farther away and cost more: W1 callgrind 8,672 against 8,398 instructions an event.) The
/// length is read back from the header rather than passed in: passing it measured 8,428.
#[inline]
fn seal(buf: &mut [u8], start: usize) {
    let crc = crc32c(&buf[start + 8..start + record_end(buf, start)]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Marks every record in `buf` (whole records, as [`append_record`] writes them) as segment
/// `seq`'s, sealing again each that named another: records framed before their writer moved
/// to a new segment. Records are framed in order and a writer's segments only go up, so where
/// the first is `seq`'s, all are and nothing is read past it.
pub fn reseal_records(buf: &mut [u8], seq: u32) {
    let mut at = 0;
    while at + RECORD_HEADER_BYTES <= buf.len() {
        if u32_at(buf, at + 12) == seq {
            return;
        }
        buf[at + 12..at + 16].copy_from_slice(&seq.to_le_bytes());
        seal(buf, at);
        at += record_end(buf, at).next_multiple_of(8);
    }
}

/// Where the CRC'd bytes of the record at `s` end, relative to `s`.
#[inline]
fn record_end(buf: &[u8], s: usize) -> usize {
    RECORD_HEADER_BYTES + u32_at(buf, s) as usize
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord<'a> {
    pub offset: u64,
    pub partition: u32,
    /// The partition key (0 in version 1 segments).
    pub key: u64,
    pub payload: &'a [u8],
}

/// A segment read back: its header, its records, and how it ends.
#[derive(Debug)]
pub struct Segment<'a> {
    pub header: SegmentHeader,
    pub records: Vec<ReadRecord<'a>>,
    /// Where and why the records stop early, if they do.
    pub torn: Option<(u64, String)>,
}

/// What follows at an offset of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// A whole record, and where the one after it starts.
    Record(ReadRecord<'a>, usize),
    /// The records end here: the bytes end, or nothing but zeros follows.
    End,
    /// A record starts here but the bytes end inside it (a reader of a growing file reads on).
    Partial,
    /// What is here is not a record: a torn tail, and why.
    Torn(String),
}

/// The record at `at` in `bytes`, whose offset 0 is the segment's offset `base`, in the
/// segment of `header`. In versions 1 and 2, zeros are the end only when nothing but zeros
/// follow in `bytes`.
pub fn record_at<'b>(bytes: &'b [u8], at: usize, base: u64, header: &SegmentHeader) -> Next<'b> {
    let version = header.version;
    let header_bytes = if version == 1 {
        RECORD_HEADER_BYTES_V1
    } else {
        RECORD_HEADER_BYTES
    };
    if at >= bytes.len() {
        return Next::End;
    }
    let zeros_follow = || bytes[at..].iter().all(|b| *b == 0);
    let Some(h) = bytes.get(at..at + header_bytes) else {
        let zero_len = bytes.len() >= at + 4 && u32_at(bytes, at) == 0;
        if (version >= 3 && zero_len) || zeros_follow() {
            return Next::End;
        }
        return Next::Partial;
    };
    let len = u32_at(h, 0) as usize;
    if len == 0 {
        if version >= 3 || zeros_follow() {
            return Next::End;
        }
        return Next::Torn("a zero-length record before more data".to_owned());
    }
    if len > RECORD_BYTES_MAX {
        return Next::Torn(format!("a record length of {len} bytes"));
    }
    let end = at + header_bytes + len;
    let Some(payload) = bytes.get(at + header_bytes..end) else {
        return Next::Partial;
    };
    // The CRC covers the record header's second part and the payload, which are adjacent.
    if crc32c(&bytes[at + 8..end]) != u32_at(h, 4) {
        return Next::Torn("record CRC mismatch".to_owned());
    }
    if version >= 3 && u32_at(h, 12) != header.seq {
        // A record of the file's earlier use, as another segment.
        return Next::End;
    }
    let key = if version == 1 {
        0
    } else {
        u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"))
    };
    let record = ReadRecord {
        offset: base + at as u64,
        partition: u32_at(h, 8),
        key,
        payload,
    };
    Next::Record(record, end.next_multiple_of(8))
}

/// Parses a whole segment file's bytes.
pub fn read_segment(bytes: &[u8]) -> Result<Segment<'_>, String> {
    let header = SegmentHeader::decode(bytes)?;
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    let torn = loop {
        match record_at(bytes, at, 0, &header) {
            Next::Record(r, next) => {
                records.push(r);
                at = next;
            }
            Next::End => break None,
            Next::Partial => {
                let why = if bytes.len() - at < RECORD_HEADER_BYTES_V1 {
                    "a partial record header"
                } else {
                    "a record cut short"
                };
                break Some((at as u64, why.to_owned()));
            }
            Next::Torn(why) => break Some((at as u64, why)),
        }
    };
    Ok(Segment {
        header,
        records,
        torn,
    })
}

/// Whether a segment file's bytes are an empty segment (see the module notes): shorter than a
/// header, or all zeros.
pub fn is_empty(bytes: &[u8]) -> bool {
    bytes.len() < SEGMENT_HEADER_BYTES || bytes.iter().all(|b| *b == 0)
}

/// Removes the empty segments (see the module notes) of `streams` under `dir`, and returns
/// each path removed with its length. A file that cannot be read or removed is an error.
pub fn remove_empty(dir: &Path, streams: &[&str]) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut removed = Vec::new();
    for stream in streams {
        let folder = dir.join(stream);
        if !folder.is_dir() {
            continue;
        }
        for file in find_segments(&folder)? {
            let len = std::fs::metadata(&file)?.len();
            // A segment's first block is written whole, so a longer file has its header
            // unless it is all zeros; read only what can tell.
            if len >= 4096 && !starts_with_zeros(&file)? {
                continue;
            }
            let bytes = std::fs::read(&file)?;
            if is_empty(&bytes) {
                std::fs::remove_file(&file)?;
                removed.push((file, len));
            }
        }
    }
    Ok(removed)
}

/// Whether a file's header bytes are all zero.
fn starts_with_zeros(file: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; SEGMENT_HEADER_BYTES];
    let mut f = std::fs::File::open(file)?;
    f.read_exact(&mut head)?;
    Ok(head.iter().all(|b| *b == 0))
}

/// The path of segment `seq` of `stream` written by `shard`.
pub fn segment_path(dir: &Path, stream: &str, shard: usize, seq: u32) -> PathBuf {
    dir.join(stream).join(format!("{shard:03}-{seq:08}.seg"))
}

/// The number in the name of `shard`'s file `name` of kind `ext` (`"seg"` or `"free"`):
/// `<shard:03>-<seq:08>.<ext>` ([`segment_path`], [`free_path`]).
pub fn file_seq(name: &str, shard: usize, ext: &str) -> Option<u32> {
    let (shard_part, rest) = name.split_once('-')?;
    if shard_part != format!("{shard:03}") {
        return None;
    }
    rest.strip_suffix(ext)?.strip_suffix('.')?.parse().ok()
}

/// The next free segment number for `stream` and `shard` (one past the highest on disk), so
/// a restarted engine appends new segments beside the old ones.
pub fn next_seq(dir: &Path, stream: &str, shard: usize) -> u32 {
    std::fs::read_dir(dir.join(stream))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // A free file's records carry its segments' numbers: the next is above them too.
            file_seq(&name, shard, "seg").or_else(|| file_seq(&name, shard, "free"))
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// Where a shard keeps a segment file retention let go, for its writer to reuse as a later
/// segment (`<dir>/<stream>/<shard:03>-<seq:08>.free`, `seq` the segment it last held):
/// writing records over its blocks spares zero-filling new ones (see `sink::writer`).
/// Readers of segments pass it by.
pub fn free_path(dir: &Path, stream: &str, shard: usize, seq: u32) -> PathBuf {
    dir.join(stream).join(format!("{shard:03}-{seq:08}.free"))
}

/// The free files (see [`free_path`]) of `stream` on `shard`: each path and length, the
/// oldest first.
pub fn free_files(dir: &Path, stream: &str, shard: usize) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(u32, PathBuf, u64)> = std::fs::read_dir(dir.join(stream))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let seq = file_seq(e.file_name().to_str()?, shard, "free")?;
            Some((seq, e.path(), e.metadata().ok()?.len()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p, len)| (p, len)).collect()
}

/// Every segment file under `path` (a file, or a folder searched recursively), sorted.
pub fn find_segments(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(path)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(find_segments(&p)?);
        } else if p.extension().is_some_and(|x| x == "seg") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[&[u8]]) -> Vec<u8> {
        let h = SegmentHeader {
            version: SEGMENT_VERSION,
            kind: SegmentKind::Records,
            format: RecordFormat::Json,
            shard: 1,
            seq: 7,
            created_ms: 123,
        };
        let mut out = h.encode().to_vec();
        for (i, r) in records.iter().enumerate() {
            append_record(&mut out, i as u32, h.seq, 1000 + i as u64, |o| {
                o.extend_from_slice(r)
            });
        }
        out
    }

    #[test]
    fn round_trips_and_zero_tail_is_clean() {
        let mut s = segment(&[b"{\"a\":1}", b"{}", b"{\"bb\":\"x\"}"]);
        s.extend_from_slice(&[0u8; 4096]);
        let seg = read_segment(&s).unwrap();
        assert_eq!(seg.header.seq, 7);
        assert_eq!(seg.records.len(), 3);
        assert_eq!(seg.records[2].payload, b"{\"bb\":\"x\"}");
        assert_eq!(seg.records[1].partition, 1);
        assert_eq!(seg.records[1].key, 1001);
        assert!(seg.torn.is_none());
    }

    #[test]
    fn version_1_segments_read_without_keys() {
        // A version 1 segment: 16-byte record headers, the CRC over bytes 8..16 and payload.
        let mut h = SegmentHeader {
            version: 1,
            kind: SegmentKind::Records,
            format: RecordFormat::Json,
            shard: 0,
            seq: 0,
            created_ms: 1,
        }
        .encode()
        .to_vec();
        let payload = b"{\"a\":1}";
        let mut r = vec![0u8; 16];
        r[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        r[8..12].copy_from_slice(&5u32.to_le_bytes());
        r.extend_from_slice(payload);
        let crc = crc32c(&r[8..]);
        r[4..8].copy_from_slice(&crc.to_le_bytes());
        r.resize(r.len().next_multiple_of(8), 0);
        h.extend_from_slice(&r);
        let seg = read_segment(&h).unwrap();
        assert_eq!(seg.header.version, 1);
        assert_eq!(seg.records.len(), 1);
        assert_eq!(seg.records[0].payload, payload);
        assert_eq!((seg.records[0].partition, seg.records[0].key), (5, 0));
        assert!(seg.torn.is_none());
    }

    #[test]
    fn a_growing_segment_reads_record_by_record() {
        let s = segment(&[b"{\"a\":1}", b"{\"b\":2}"]);
        let h = SegmentHeader::decode(&s).unwrap();
        let mut at = SEGMENT_HEADER_BYTES;
        let Next::Record(first, next) = record_at(&s, at, 0, &h) else {
            panic!("a record")
        };
        assert_eq!(first.offset, at as u64);
        at = next;
        assert_eq!(record_at(&s[..s.len() - 2], at, 0, &h), Next::Partial);
        assert_eq!(record_at(&s[..at + 3], at, 0, &h), Next::Partial);
        // Read from a buffer that starts at the record: offsets are the segment's.
        let Next::Record(second, end) = record_at(&s[at..], 0, at as u64, &h) else {
            panic!("a record")
        };
        assert_eq!(
            (second.offset, second.payload),
            (at as u64, &b"{\"b\":2}"[..])
        );
        assert_eq!(at + end, s.len());
        assert_eq!(record_at(&s, s.len(), 0, &h), Next::End);
    }

    #[test]
    fn the_crc_is_crc32c() {
        for n in (0usize..300).chain([1000, 70_000]) {
            let b: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
            let reference = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &b) as u32;
            assert_eq!(crc32c(&b), reference, "{n} bytes");
        }
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn short_and_zero_files_are_empty_segments() {
        assert!(is_empty(b""));
        assert!(is_empty(&segment(&[])[..SEGMENT_HEADER_BYTES - 1]));
        assert!(is_empty(&[0u8; 4096]));
        assert!(!is_empty(&segment(&[])));
        let dir = std::env::temp_dir().join(format!("sluice-empty-{}", std::process::id()));
        let folder = dir.join("s");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("000-00000000.seg"), segment(&[b"{}"])).unwrap();
        std::fs::write(folder.join("000-00000001.seg"), b"").unwrap();
        std::fs::write(folder.join("001-00000000.seg"), [0u8; 8192]).unwrap();
        std::fs::write(folder.join("001-00000001.seg"), &segment(&[])[..10]).unwrap();
        let removed = remove_empty(&dir, &["s", "absent"]).unwrap();
        let names: Vec<_> = removed
            .iter()
            .map(|(p, len)| (p.file_name().unwrap().to_str().unwrap().to_owned(), *len))
            .collect();
        assert_eq!(
            names,
            [
                ("000-00000001.seg".to_owned(), 0),
                ("001-00000000.seg".to_owned(), 8192),
                ("001-00000001.seg".to_owned(), 10)
            ]
        );
        assert_eq!(
            find_segments(&folder).unwrap().len(),
            1,
            "the whole one stays"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_tails_are_reported() {
        let s = segment(&[b"{\"a\":1}", b"{\"b\":2}"]);
        let cut = &s[..s.len() - 3];
        let seg = read_segment(cut).unwrap();
        assert_eq!(seg.records.len(), 1);
        assert!(seg.torn.as_ref().unwrap().1.contains("cut short"));
        let mut flipped = s.clone();
        let last = flipped.len() - 9;
        flipped[last] ^= 1;
        let seg = read_segment(&flipped).unwrap();
        assert_eq!(seg.records.len(), 1);
        assert!(seg.torn.unwrap().1.contains("CRC"));
    }
}

#[cfg(test)]
mod sealing {
    use super::*;

    /// A record carries the CRC32C of its bytes after the CRC field (checked against another
    /// implementation), written through either append: every payload length up to 300 bytes,
    /// after records of other lengths.
    #[test]
    fn records_carry_the_crc_of_their_bytes() {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for i in 0..301usize {
            let body: Vec<u8> = (0..i).map(|b| (b * 7 + i) as u8).collect();
            starts.push(out.len());
            if i % 2 == 0 {
                append_record(&mut out, i as u32, i as u32 + 7, i as u64 * 3, |b| {
                    b.extend_from_slice(&body)
                });
            } else {
                append_record_exact(&mut out, i as u32, i as u32 + 7, i as u64 * 3, i, |c| {
                    c.put(&body)
                });
            }
        }
        for (i, s) in starts.into_iter().enumerate() {
            let end = s + record_end(&out, s);
            let want = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &out[s + 8..end]);
            assert_eq!(u32_at(&out, s + 4), want as u32, "record at {s}");
            assert_eq!(u32_at(&out, s + 12), i as u32 + 7, "its segment, at {s}");
        }
    }

    /// A segment of `version` numbered `seq`, holding `records` framed as segment `framed`'s.
    fn segment_of(version: u8, seq: u32, framed: u32, records: &[&[u8]]) -> Vec<u8> {
        let h = SegmentHeader {
            version,
            kind: SegmentKind::Records,
            format: RecordFormat::Json,
            shard: 0,
            seq,
            created_ms: 1,
        };
        let mut out = h.encode().to_vec();
        for r in records {
            append_record(&mut out, 3, framed, 9, |o| o.extend_from_slice(r));
        }
        out
    }

    #[test]
    fn a_reused_file_ends_where_its_earlier_records_begin() {
        // The file held segment 4; reused as segment 9, its first two records are written
        // over the earlier ones, whose third stays behind them.
        let earlier = segment_of(3, 4, 4, &[b"{\"old\":1}", b"{\"old\":2}", b"{\"old\":3}"]);
        let now = segment_of(3, 9, 9, &[b"{\"new\":1}", b"{\"new\":2}"]);
        let mut file = earlier.clone();
        file[..now.len()].copy_from_slice(&now);
        let seg = read_segment(&file).unwrap();
        assert_eq!(seg.header.seq, 9);
        let payloads: Vec<_> = seg.records.iter().map(|r| r.payload).collect();
        assert_eq!(payloads, [&b"{\"new\":1}"[..], b"{\"new\":2}"]);
        assert!(seg.torn.is_none(), "a record of the earlier use is the end");
        // Zeros after the last record end it, whatever follows them.
        let mut file = earlier.clone();
        let short = segment_of(3, 9, 9, &[b"{}"]);
        file[..short.len()].copy_from_slice(&short);
        file[short.len()..short.len() + 8].fill(0);
        let seg = read_segment(&file).unwrap();
        assert_eq!(seg.records.len(), 1);
        assert!(seg.torn.is_none());
        // Version 2 keeps its rule: zeros before more data are a torn tail.
        let mut v2 = segment_of(2, 0, 0, &[b"{}"]);
        v2.extend_from_slice(&[0u8; 24]);
        v2.extend_from_slice(&segment_of(2, 0, 0, &[b"{}"])[SEGMENT_HEADER_BYTES..]);
        let seg = read_segment(&v2).unwrap();
        assert_eq!(seg.records.len(), 1);
        assert!(seg.torn.unwrap().1.contains("zero-length"));
    }

    #[test]
    fn file_names_give_their_shard_s_numbers() {
        let path = segment_path(Path::new("d"), "s", 2, 41);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(file_seq(name, 2, "seg"), Some(41));
        assert_eq!(file_seq(name, 1, "seg"), None);
        assert_eq!(file_seq(name, 2, "free"), None);
        let free = free_path(Path::new("d"), "s", 2, 7);
        assert_eq!(
            file_seq(free.file_name().unwrap().to_str().unwrap(), 2, "free"),
            Some(7)
        );
        assert_eq!(file_seq("002-00000007.seg.tmp", 2, "seg"), None);
    }

    #[test]
    fn records_framed_for_an_earlier_segment_are_sealed_again() {
        let mut records = Vec::new();
        for (framed, r) in [(4, &b"{\"a\":1}"[..]), (4, b"{}"), (5, b"{\"c\":3}")] {
            append_record(&mut records, 1, framed, 2, |o| o.extend_from_slice(r));
        }
        reseal_records(&mut records, 5);
        let mut file = segment_of(3, 5, 5, &[]);
        file.extend_from_slice(&records);
        let seg = read_segment(&file).unwrap();
        assert_eq!(seg.records.len(), 3);
        assert!(seg.torn.is_none());
        // Already the segment's: nothing changes.
        let before = records.clone();
        reseal_records(&mut records, 5);
        assert_eq!(records, before);
    }
}
