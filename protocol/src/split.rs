//! A sans-I/O frame splitter: it finds the frames in a byte stream read into a caller-owned
//! buffer, and decides when the stream can no longer be read, without doing any I/O itself.
//!
//! A reader appends what it receives to its buffer and tells the splitter how many bytes came
//! ([`FrameSplitter::push`]). Each [`FrameSplitter::next`] then says one of three things: read
//! at least *n* more bytes ([`Split::Need`]), one whole frame lies at this range of the buffer
//! ([`Split::Frame`], its header already checked), or the stream is unreadable past this point
//! (an [`Error`]: the frame's length cannot be trusted, or its kind is not one the reader takes).
//! Between reads, [`FrameSplitter::compact`] moves the bytes of a partial frame to the front of
//! the buffer. Frames are not copied: a reader steps each one where it lies.
//!
//! The splitter checks each header as soon as its 32 bytes are in, so a bad stream is refused
//! before its body arrives; CRCs and bodies are for the frame's own decoder.

use std::ops::Range;

use crate::error::Error;
use crate::frame::{
    ACK_FRAME_BYTES, FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_VERSION, FrameHeader, FrameKind,
    decode_frame_header,
};
use crate::limits::Limits;

/// What the bytes pushed so far hold next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// No whole frame yet: at least this many more bytes are needed (the rest of the header,
    /// or, once the header is in, the rest of the frame).
    Need(usize),
    /// A whole frame at `range` of the buffer. It counts as taken: the next call looks past it.
    Frame {
        header: FrameHeader,
        range: Range<usize>,
    },
}

/// Splits one byte stream into frames. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FrameSplitter {
    limits: Limits,
    kinds: &'static [FrameKind],
    /// The first byte not yet taken.
    start: usize,
    /// One past the last byte pushed.
    end: usize,
}

impl FrameSplitter {
    /// A splitter taking frames of `kinds` up to `limits.frame_bytes_max` bytes; a frame of
    /// another kind ends the stream with [`Error::BadKind`].
    pub fn new(limits: Limits, kinds: &'static [FrameKind]) -> Self {
        FrameSplitter {
            limits,
            kinds,
            start: 0,
            end: 0,
        }
    }

    /// `n` more bytes were appended to the buffer, after those pushed before.
    pub fn push(&mut self, n: usize) {
        self.end += n;
    }

    /// What `buf` (the buffer the pushed bytes are in) holds next.
    pub fn next(&mut self, buf: &[u8]) -> Result<Split, Error> {
        debug_assert!(self.end <= buf.len(), "pushed past the buffer");
        let have = self.end - self.start;
        if have < FRAME_HEADER_BYTES {
            return Ok(Split::Need(FRAME_HEADER_BYTES - have));
        }
        let header = self.header(&buf[self.start..self.end])?;
        let len = header.len();
        if have < len {
            return Ok(Split::Need(len - have));
        }
        let range = self.start..self.start + len;
        self.start += len;
        Ok(Split::Frame { header, range })
    }

    /// Checks the header at the start of `bytes` (which hold at least a header), in
    /// PROTOCOL.md's order: magic, version, kind (one this reader takes), then the rest.
    fn header(&self, bytes: &[u8]) -> Result<FrameHeader, Error> {
        let kind = bytes[5];
        if bytes[0..4] == FRAME_MAGIC
            && bytes[4] == FRAME_VERSION
            && !self.kinds.iter().any(|k| *k as u8 == kind)
        {
            return Err(Error::BadKind(kind));
        }
        let h = decode_frame_header(bytes, &self.limits)?;
        match h.kind {
            FrameKind::Hello if h.len() != FRAME_HEADER_BYTES => {
                Err(Error::BadLength("a hello frame has no body"))
            }
            FrameKind::Ack if h.len() != ACK_FRAME_BYTES => {
                Err(Error::BadLength("an ack frame is 48 bytes"))
            }
            _ => Ok(h),
        }
    }

    /// The range of the buffer that holds bytes pushed and not yet taken.
    pub fn pending(&self) -> Range<usize> {
        self.start..self.end
    }

    /// Moves the bytes not yet taken to the front of `buf`; the next bytes go after them, at
    /// `buf[self.pending().end..]`.
    pub fn compact(&mut self, buf: &mut [u8]) {
        buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// The stream ended (the peer closed its side). A partial frame left is an error: what it
    /// needed and what came.
    pub fn finish(&self, buf: &[u8]) -> Result<(), Error> {
        let have = self.end - self.start;
        if have == 0 {
            return Ok(());
        }
        let needed = match decode_frame_header(&buf[self.start..self.end], &self.limits) {
            Ok(h) => h.len(),
            Err(_) => FRAME_HEADER_BYTES,
        };
        Err(Error::Truncated {
            needed,
            available: have,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_hello;
    use crate::{Ack, AckStatus};

    const BATCH_AND_HELLO: &[FrameKind] = &[FrameKind::Batch, FrameKind::Hello];

    fn ack(seq: u64) -> [u8; ACK_FRAME_BYTES] {
        Ack {
            seq,
            partition: 3,
            accepted: 1,
            dead_lettered: 0,
            status: AckStatus::Ok,
            error: 0,
        }
        .encode()
    }

    /// A batch frame header of `len` bytes (the body is zeros: the splitter does not read it).
    fn batch(len: u32) -> Vec<u8> {
        let mut h = FrameHeader::new(FrameKind::Batch, 7, 1, 0);
        h.total_len = len;
        let mut f = h.encode().to_vec();
        f.resize(len as usize, 0);
        f
    }

    fn splitter(kinds: &'static [FrameKind]) -> FrameSplitter {
        FrameSplitter::new(Limits::default(), kinds)
    }

    #[test]
    fn frames_back_to_back_are_taken_one_by_one() {
        let mut buf = batch(64);
        buf.extend_from_slice(&encode_hello());
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(buf.len());
        let Split::Frame { header, range } = s.next(&buf).unwrap() else {
            panic!("a frame")
        };
        assert_eq!((header.kind, range), (FrameKind::Batch, 0..64));
        let Split::Frame { header, range } = s.next(&buf).unwrap() else {
            panic!("a frame")
        };
        assert_eq!((header.kind, range), (FrameKind::Hello, 64..96));
        assert_eq!(s.next(&buf).unwrap(), Split::Need(FRAME_HEADER_BYTES));
        assert_eq!(s.finish(&buf), Ok(()));
    }

    #[test]
    fn a_partial_header_then_a_partial_body_say_what_they_need() {
        let buf = batch(96);
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(10);
        assert_eq!(s.next(&buf).unwrap(), Split::Need(22));
        s.push(30);
        assert_eq!(s.next(&buf).unwrap(), Split::Need(56));
        s.push(56);
        assert!(matches!(s.next(&buf).unwrap(), Split::Frame { range, .. } if range == (0..96)));
    }

    #[test]
    fn compact_moves_a_partial_frame_to_the_front() {
        let mut buf = ack(1).to_vec();
        buf.extend_from_slice(&ack(2)[..20]);
        buf.resize(2 * ACK_FRAME_BYTES, 0);
        let mut s = splitter(&[FrameKind::Ack]);
        s.push(ACK_FRAME_BYTES + 20);
        assert!(matches!(s.next(&buf).unwrap(), Split::Frame { .. }));
        assert_eq!(s.next(&buf).unwrap(), Split::Need(12));
        s.compact(&mut buf);
        assert_eq!(s.pending(), 0..20);
        buf[20..ACK_FRAME_BYTES].copy_from_slice(&ack(2)[20..]);
        s.push(ACK_FRAME_BYTES - 20);
        let Split::Frame { header, range } = s.next(&buf).unwrap() else {
            panic!("a frame")
        };
        assert_eq!((header.seq, range.clone()), (2, 0..ACK_FRAME_BYTES));
        assert_eq!(Ack::decode(&buf[range]).unwrap().seq, 2);
    }

    #[test]
    fn a_bad_header_ends_the_stream_before_its_body_comes() {
        let mut buf = batch(64);
        buf[0] = b'X';
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(FRAME_HEADER_BYTES);
        assert!(matches!(s.next(&buf), Err(Error::BadMagic(_))));
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        let limits = Limits {
            frame_bytes_max: 1024,
            ..Limits::default()
        };
        let buf = batch(2048);
        let mut s = FrameSplitter::new(limits, BATCH_AND_HELLO);
        s.push(FRAME_HEADER_BYTES);
        assert!(matches!(
            s.next(&buf),
            Err(Error::Oversized {
                len: 2048,
                max: 1024,
                ..
            })
        ));
    }

    #[test]
    fn kinds_the_reader_does_not_take_end_the_stream() {
        let buf = ack(1);
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(buf.len());
        assert_eq!(s.next(&buf), Err(Error::BadKind(FrameKind::Ack as u8)));
    }

    #[test]
    fn the_kind_is_checked_before_flags_and_length() {
        let mut h = FrameHeader::new(FrameKind::Ack, 0, 0, 0);
        h.flags = 1;
        h.total_len = 40;
        let buf = h.encode();
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(buf.len());
        assert_eq!(s.next(&buf), Err(Error::BadKind(FrameKind::Ack as u8)));
        let mut bad = buf;
        bad[5] = 9;
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(bad.len());
        assert_eq!(s.next(&bad), Err(Error::BadKind(9)));
    }

    #[test]
    fn fixed_size_kinds_must_have_their_size() {
        let mut h = FrameHeader::new(FrameKind::Hello, 0, 0, 0);
        h.total_len = 48;
        let buf = h.encode();
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(buf.len());
        assert_eq!(
            s.next(&buf),
            Err(Error::BadLength("a hello frame has no body"))
        );
        let mut h = FrameHeader::new(FrameKind::Ack, 0, 0, 0);
        h.total_len = 64;
        let buf = h.encode();
        let mut s = splitter(&[FrameKind::Ack]);
        s.push(buf.len());
        assert_eq!(
            s.next(&buf),
            Err(Error::BadLength("an ack frame is 48 bytes"))
        );
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let buf = batch(96);
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(40);
        assert_eq!(s.next(&buf).unwrap(), Split::Need(56));
        assert_eq!(
            s.finish(&buf),
            Err(Error::Truncated {
                needed: 96,
                available: 40
            })
        );
        let mut s = splitter(BATCH_AND_HELLO);
        s.push(5);
        assert_eq!(
            s.finish(&buf),
            Err(Error::Truncated {
                needed: FRAME_HEADER_BYTES,
                available: 5
            })
        );
    }
}
