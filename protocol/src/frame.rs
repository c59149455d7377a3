//! Frames: the unit of transport. Every frame starts with the same 32-byte header and is a
//! multiple of 16 bytes long, so frames read back to back into a 16-byte aligned buffer all
//! start aligned.
//!
//! ```text
//! offset  size  field
//!  0       4    magic      "SLCF"
//!  4       1    version    1
//!  5       1    kind       1 batch, 2 ack, 3 hello, 4 hello reply
//!  6       2    flags      u16 LE; none defined in version 1, must be 0
//!  8       8    seq        u64 LE; batch sequence number (an ack echoes it)
//! 16       4    partition  u32 LE; batch: its partition; hello reply: partition count
//! 20       4    count      u32 LE; batch: envelopes; hello reply: shards
//! 24       4    total_len  u32 LE; the whole frame, header included, multiple of 16
//! 28       4    crc32c     CRC32C of the whole frame with this field read as zero
//! ```
//!
//! A batch frame's body is `count` envelopes back to back (see [`crate::envelope`]); an ack's
//! body is 16 bytes ([`Ack`]); a hello has no body; a hello reply's body is the shard table and
//! the partition owner table ([`HelloReply`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::aead::Aead;
use crate::envelope::{ENVELOPE_HEADER_BYTES, EnvelopeHeader, EnvelopeMut, seal_envelope};
use crate::error::Error;
use crate::limits::{Limits, PARTITIONS_MAX, SHARDS_MAX};
use crate::{ALIGN, AlignedBuf, align_up};

pub const FRAME_MAGIC: [u8; 4] = *b"SLCF";
pub const FRAME_VERSION: u8 = 1;
pub const FRAME_HEADER_BYTES: usize = 32;
/// Bytes in an ack frame.
pub const ACK_FRAME_BYTES: usize = FRAME_HEADER_BYTES + 16;
/// Bytes in one shard entry of a hello reply.
pub const SHARD_ENTRY_BYTES: usize = 24;

const CRC_AT: usize = 28;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Batch = 1,
    Ack = 2,
    Hello = 3,
    HelloReply = 4,
}

impl FrameKind {
    fn from_u8(b: u8) -> Result<Self, Error> {
        Ok(match b {
            1 => FrameKind::Batch,
            2 => FrameKind::Ack,
            3 => FrameKind::Hello,
            4 => FrameKind::HelloReply,
            other => return Err(Error::BadKind(other)),
        })
    }
}

/// A frame header as read from the wire, checked for magic, version, kind, flags and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u16,
    pub seq: u64,
    pub partition: u32,
    pub count: u32,
    pub total_len: u32,
    pub crc: u32,
}

impl FrameHeader {
    pub fn new(kind: FrameKind, seq: u64, partition: u32, count: u32) -> Self {
        FrameHeader {
            kind,
            flags: 0,
            seq,
            partition,
            count,
            total_len: 0,
            crc: 0,
        }
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut b = [0u8; FRAME_HEADER_BYTES];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4] = FRAME_VERSION;
        b[5] = self.kind as u8;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.partition.to_le_bytes());
        b[20..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..28].copy_from_slice(&self.total_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// The frame's total length, for a reader reassembling frames from a stream.
    pub fn len(&self) -> usize {
        self.total_len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.total_len as usize == FRAME_HEADER_BYTES
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

/// Reads and checks the header at the start of `buf` (which may hold only the header: a stream
/// reader calls this to learn how many bytes the frame needs). The CRC is not checked here.
pub fn decode_frame_header(buf: &[u8], limits: &Limits) -> Result<FrameHeader, Error> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(Error::Truncated {
            needed: FRAME_HEADER_BYTES,
            available: buf.len(),
        });
    }
    let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    if magic != FRAME_MAGIC {
        return Err(Error::BadMagic(magic));
    }
    if buf[4] != FRAME_VERSION {
        return Err(Error::BadVersion(buf[4]));
    }
    let kind = FrameKind::from_u8(buf[5])?;
    let flags = u16::from_le_bytes([buf[6], buf[7]]);
    if flags != 0 {
        return Err(Error::BadFlags(flags));
    }
    let total_len = u32_at(buf, 24);
    let len = total_len as usize;
    if len < FRAME_HEADER_BYTES || !len.is_multiple_of(ALIGN) {
        return Err(Error::BadLength(
            "a frame is at least 32 bytes and a multiple of 16",
        ));
    }
    if len > limits.frame_bytes_max {
        return Err(Error::Oversized {
            what: "frame",
            len,
            max: limits.frame_bytes_max,
            unit: "bytes",
        });
    }
    Ok(FrameHeader {
        kind,
        flags,
        seq: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        partition: u32_at(buf, 16),
        count: u32_at(buf, 20),
        total_len,
        crc: u32_at(buf, CRC_AT),
    })
}

/// CRC32C of a whole frame with its CRC field read as zero.
///
/// `crc-fast` folds with VPCLMULQDQ: a 592-byte W1 frame in about 29 ns and 37 KiB in about
/// 790 ns here, against 76 ns and 1,770 ns for the `crc32 instruction` loop of `crc32c`.
pub fn frame_crc(frame: &[u8]) -> u32 {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    digest.update(&frame[..CRC_AT]);
    digest.update(&[0; 4]);
    digest.update(&frame[FRAME_HEADER_BYTES..]);
    digest.finalize() as u32
}

/// Decodes the header of the frame at the start of `buf`, checks that `buf` holds all of it and
/// that its CRC matches, and returns the header with the frame's bytes.
fn checked_frame<'b>(
    buf: &'b [u8],
    limits: &Limits,
    kind: FrameKind,
) -> Result<(FrameHeader, &'b [u8]), Error> {
    let header = decode_frame_header(buf, limits)?;
    if header.kind != kind {
        return Err(Error::BadKind(header.kind as u8));
    }
    let frame = buf.get(..header.len()).ok_or(Error::Truncated {
        needed: header.len(),
        available: buf.len(),
    })?;
    let actual = frame_crc(frame);
    if actual != header.crc {
        return Err(Error::BadCrc {
            declared: header.crc,
            actual,
        });
    }
    Ok((header, frame))
}

/// Writes the header (length and CRC included) of the frame `frame` holds, after its body was
/// changed in place (a load generator re-sealing envelopes with fresh nonces).
pub fn reseal_frame(frame: &mut [u8]) -> Result<(), Error> {
    let header = decode_frame_header(frame, &Limits::default())?;
    if header.len() != frame.len() {
        return Err(Error::BadLength("the slice must hold exactly one frame"));
    }
    seal_frame(frame, header);
    Ok(())
}

/// Writes `header` (with its length and CRC) at the start of `frame`.
fn seal_frame(frame: &mut [u8], mut header: FrameHeader) {
    header.total_len = u32::try_from(frame.len()).expect("frame under 4 GiB");
    header.crc = 0;
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
    header.crc = frame_crc(frame);
    frame[CRC_AT..FRAME_HEADER_BYTES].copy_from_slice(&header.crc.to_le_bytes());
}

/// A checked batch frame in a receive buffer, whose envelopes are opened in place.
#[derive(Debug)]
pub struct BatchFrame<'a> {
    pub header: FrameHeader,
    body: &'a mut [u8],
}

impl<'a> BatchFrame<'a> {
    /// Checks the batch frame at the start of `buf` (16-byte aligned): header, CRC, and that its
    /// envelopes' lengths add up to the frame's. Bytes past the frame's end are not touched.
    pub fn parse(buf: &'a mut [u8], limits: &Limits) -> Result<Self, Error> {
        if buf.as_ptr().align_offset(ALIGN) != 0 {
            return Err(Error::Misaligned);
        }
        let (header, frame) = checked_frame(buf, limits, FrameKind::Batch)?;
        let count = header.count as usize;
        if count > limits.envelopes_per_frame_max {
            return Err(Error::Oversized {
                what: "frame",
                len: count,
                max: limits.envelopes_per_frame_max,
                unit: "envelopes",
            });
        }
        let mut at = FRAME_HEADER_BYTES;
        for _ in 0..count {
            let Some(head) = frame.get(at..at + ENVELOPE_HEADER_BYTES) else {
                return Err(Error::CountMismatch {
                    what: "envelopes in frame",
                    declared: count,
                    actual: envelopes_in(frame, limits),
                });
            };
            let len = EnvelopeHeader::decode(head.try_into().expect("32 bytes")).envelope_len();
            if len > limits.envelope_bytes_max {
                return Err(Error::Oversized {
                    what: "envelope",
                    len,
                    max: limits.envelope_bytes_max,
                    unit: "bytes",
                });
            }
            if at + len > frame.len() {
                return Err(Error::CountMismatch {
                    what: "frame bytes (envelope runs past the end)",
                    declared: frame.len(),
                    actual: at + len,
                });
            }
            at += len;
        }
        if at != frame.len() {
            return Err(Error::CountMismatch {
                what: "frame bytes (after the last envelope)",
                declared: frame.len(),
                actual: at,
            });
        }
        let len = header.len();
        Ok(BatchFrame {
            header,
            body: &mut buf[FRAME_HEADER_BYTES..len],
        })
    }

    /// The frame's envelopes, each ready to open in place.
    pub fn into_envelopes(self) -> Envelopes<'a> {
        Envelopes {
            rest: self.body,
            partition: self.header.partition,
        }
    }
}

/// How many whole envelopes fit before a frame's end (for error reports).
fn envelopes_in(frame: &[u8], limits: &Limits) -> usize {
    let (mut at, mut n) = (FRAME_HEADER_BYTES, 0);
    while let Some(head) = frame.get(at..at + ENVELOPE_HEADER_BYTES) {
        let len = EnvelopeHeader::decode(head.try_into().expect("32 bytes")).envelope_len();
        if len > limits.envelope_bytes_max || at + len > frame.len() {
            break;
        }
        at += len;
        n += 1;
    }
    n
}

/// The envelopes of a checked batch frame.
#[derive(Debug)]
pub struct Envelopes<'a> {
    rest: &'a mut [u8],
    /// The frame's partition, which each envelope's partition key must map to.
    partition: u32,
}

impl<'a> Iterator for Envelopes<'a> {
    type Item = EnvelopeMut<'a>;

    fn next(&mut self) -> Option<EnvelopeMut<'a>> {
        let rest = std::mem::take(&mut self.rest);
        let head: &[u8; ENVELOPE_HEADER_BYTES] =
            rest.get(..ENVELOPE_HEADER_BYTES)?.try_into().ok()?;
        let header = EnvelopeHeader::decode(head);
        // BatchFrame::parse checked that every envelope fits.
        let (env, rest) = rest.split_at_mut(header.envelope_len());
        self.rest = rest;
        Some(EnvelopeMut::new(header, self.partition, env))
    }
}

/// Builds batch frames: a header, then envelopes sealed straight into the frame buffer.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: AlignedBuf,
    header: FrameHeader,
}

impl FrameBuilder {
    pub fn new(seq: u64, partition: u32) -> Self {
        let mut b = FrameBuilder {
            buf: AlignedBuf::new(),
            header: FrameHeader::new(FrameKind::Batch, 0, 0, 0),
        };
        b.reset(seq, partition);
        b
    }

    /// Starts a new frame, reusing the buffer.
    pub fn reset(&mut self, seq: u64, partition: u32) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        self.header = FrameHeader::new(FrameKind::Batch, seq, partition, 0);
    }

    /// Seals `plaintext` as the next envelope.
    pub fn seal(&mut self, cipher: &dyn Aead, header: EnvelopeHeader, plaintext: &[u8]) {
        seal_envelope(&mut self.buf, cipher, header, plaintext);
        self.header.count += 1;
    }

    /// Appends an envelope sealed earlier (its bytes from [`seal_envelope`], padding included).
    pub fn push_sealed(&mut self, envelope: &[u8]) {
        debug_assert_eq!(envelope.len() % ALIGN, 0);
        self.buf.extend_from_slice(envelope);
        self.header.count += 1;
    }

    /// Appends an envelope as a Kafka message carries it, padded here to a multiple of 16
    /// bytes when it came without its padding (PROTOCOL.md section 4).
    pub fn push_padded(&mut self, envelope: &[u8]) {
        self.buf.extend_from_slice(envelope);
        let pad = (ALIGN - envelope.len() % ALIGN) % ALIGN;
        self.buf.extend_from_slice(&[0u8; ALIGN][..pad]);
        self.header.count += 1;
    }

    /// Writes the header and CRC and hands over the finished frame.
    pub fn into_frame(mut self) -> AlignedBuf {
        seal_frame(&mut self.buf, self.header);
        self.buf
    }

    /// Envelopes so far.
    pub fn count(&self) -> u32 {
        self.header.count
    }

    /// Bytes so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Writes the header and CRC and returns the finished frame.
    pub fn finish(&mut self) -> &[u8] {
        seal_frame(&mut self.buf, self.header);
        &self.buf
    }
}

/// Whether a batch was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AckStatus {
    /// Every envelope is in its sinks or in the dead-letter stream, as counted.
    Ok = 0,
    /// The frame itself was malformed; `error` says how. Nothing from it was kept.
    Rejected = 1,
    /// The engine cannot take the batch now; send it again later.
    Overloaded = 2,
    /// The engine is shutting down; send the batch to another host.
    ShuttingDown = 3,
}

/// The reply to one batch frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub partition: u32,
    /// Envelopes whose events were routed.
    pub accepted: u32,
    /// Envelopes written to the dead-letter stream.
    pub dead_lettered: u32,
    pub status: AckStatus,
    /// [`Error::code`] of the frame's error when `status` is `Rejected`, else 0.
    pub error: u16,
}

impl Ack {
    /// The ack frame's bytes.
    pub fn encode(&self) -> [u8; ACK_FRAME_BYTES] {
        let mut f = [0u8; ACK_FRAME_BYTES];
        f[32..36].copy_from_slice(&self.accepted.to_le_bytes());
        f[36..40].copy_from_slice(&self.dead_lettered.to_le_bytes());
        f[40] = self.status as u8;
        f[42..44].copy_from_slice(&self.error.to_le_bytes());
        seal_frame(
            &mut f,
            FrameHeader::new(FrameKind::Ack, self.seq, self.partition, 0),
        );
        f
    }

    /// Decodes the ack frame at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Ack, Error> {
        let (h, f) = checked_frame(buf, &Limits::default(), FrameKind::Ack)?;
        if f.len() != ACK_FRAME_BYTES {
            return Err(Error::BadLength("an ack frame is 48 bytes"));
        }
        let status = match f[40] {
            0 => AckStatus::Ok,
            1 => AckStatus::Rejected,
            2 => AckStatus::Overloaded,
            3 => AckStatus::ShuttingDown,
            _ => return Err(Error::BadLength("unknown ack status")),
        };
        Ok(Ack {
            seq: h.seq,
            partition: h.partition,
            accepted: u32_at(f, 32),
            dead_lettered: u32_at(f, 36),
            status,
            error: u16::from_le_bytes([f[42], f[43]]),
        })
    }
}

/// A client's hello: a bare header asking for the partition map.
pub fn encode_hello() -> [u8; FRAME_HEADER_BYTES] {
    let mut f = [0u8; FRAME_HEADER_BYTES];
    seal_frame(&mut f, FrameHeader::new(FrameKind::Hello, 0, 0, 0));
    f
}

/// Checks a hello frame at the start of `buf`.
pub fn decode_hello(buf: &[u8]) -> Result<(), Error> {
    let (_, f) = checked_frame(buf, &Limits::default(), FrameKind::Hello)?;
    if f.len() != FRAME_HEADER_BYTES {
        return Err(Error::BadLength("a hello frame has no body"));
    }
    Ok(())
}

/// Where one shard takes batches directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardAddr {
    pub shard: u16,
    pub addr: SocketAddr,
}

/// The engine's answer to a hello: its shards and which shard owns each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    pub shards: Vec<ShardAddr>,
    /// `owners[p]` is the index in `shards` of partition `p`'s owner.
    pub owners: Vec<u16>,
}

impl HelloReply {
    /// The shard that owns `partition`.
    pub fn owner(&self, partition: u32) -> Option<&ShardAddr> {
        self.shards
            .get(usize::from(*self.owners.get(partition as usize)?))
    }

    pub fn encode(&self) -> Vec<u8> {
        let body = self.shards.len() * SHARD_ENTRY_BYTES + self.owners.len() * 2;
        let mut f = vec![0u8; align_up(FRAME_HEADER_BYTES + body)];
        let mut at = FRAME_HEADER_BYTES;
        for s in &self.shards {
            let e = &mut f[at..at + SHARD_ENTRY_BYTES];
            e[0..2].copy_from_slice(&s.shard.to_le_bytes());
            e[2..4].copy_from_slice(&s.addr.port().to_le_bytes());
            match s.addr.ip() {
                IpAddr::V4(ip) => {
                    e[4] = 4;
                    e[8..12].copy_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    e[4] = 6;
                    e[8..24].copy_from_slice(&ip.octets());
                }
            }
            at += SHARD_ENTRY_BYTES;
        }
        for o in &self.owners {
            f[at..at + 2].copy_from_slice(&o.to_le_bytes());
            at += 2;
        }
        let header = FrameHeader::new(
            FrameKind::HelloReply,
            0,
            u32::try_from(self.owners.len()).expect("partitions fit u32"),
            u32::try_from(self.shards.len()).expect("shards fit u32"),
        );
        seal_frame(&mut f, header);
        f
    }

    /// Decodes the hello reply at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<HelloReply, Error> {
        let (h, f) = checked_frame(buf, &Limits::default(), FrameKind::HelloReply)?;
        let (shards, partitions) = (h.count as usize, h.partition as usize);
        if shards > SHARDS_MAX {
            return Err(Error::Oversized {
                what: "hello reply",
                len: shards,
                max: SHARDS_MAX,
                unit: "shards",
            });
        }
        if partitions > PARTITIONS_MAX as usize {
            return Err(Error::Oversized {
                what: "hello reply",
                len: partitions,
                max: PARTITIONS_MAX as usize,
                unit: "partitions",
            });
        }
        let body = shards * SHARD_ENTRY_BYTES + partitions * 2;
        if align_up(FRAME_HEADER_BYTES + body) != f.len() {
            return Err(Error::CountMismatch {
                what: "hello reply bytes",
                declared: f.len(),
                actual: align_up(FRAME_HEADER_BYTES + body),
            });
        }
        let mut at = FRAME_HEADER_BYTES;
        let mut out = HelloReply {
            shards: Vec::with_capacity(shards),
            owners: Vec::with_capacity(partitions),
        };
        for _ in 0..shards {
            let e = &f[at..at + SHARD_ENTRY_BYTES];
            let ip = match e[4] {
                4 => IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(&e[8..12]).expect("4 bytes"),
                )),
                6 => IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&e[8..24]).expect("16 bytes"),
                )),
                _ => return Err(Error::BadFormat(e[4])),
            };
            let port = u16::from_le_bytes([e[2], e[3]]);
            out.shards.push(ShardAddr {
                shard: u16::from_le_bytes([e[0], e[1]]),
                addr: SocketAddr::new(ip, port),
            });
            at += SHARD_ENTRY_BYTES;
        }
        for _ in 0..partitions {
            let owner = u16::from_le_bytes([f[at], f[at + 1]]);
            if usize::from(owner) >= shards {
                return Err(Error::CountMismatch {
                    what: "partition owner (index into the shard table)",
                    declared: shards,
                    actual: usize::from(owner),
                });
            }
            out.owners.push(owner);
            at += 2;
        }
        Ok(out)
    }
}

/// The partition of an envelope: its partition key through the SplitMix64 finalizer, modulo
/// the partition count. Clients compute the same to send each batch to its owner.
#[inline]
pub fn partition_for(partition_key: u64, partitions: u32) -> u32 {
    assert!(partitions > 0, "an engine has at least one partition");
    (mix64(partition_key) % u64::from(partitions)) as u32
}

/// The partition key of a device: FNV-1a (64-bit) of its device id's UTF-8 bytes.
#[inline]
pub fn partition_key_for_device(device_id: &str) -> u64 {
    fnv1a64(device_id.as_bytes())
}

/// SplitMix64's finalizer: a bijection on u64 that mixes every input bit into every output
/// bit. sluice's one integer hash (partitions, sampling, nonce prefixes).
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a, 64-bit: sluice's one byte-string hash (partition keys, sampling salts).
#[inline]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
