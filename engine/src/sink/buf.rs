//! The memory a stream's records are framed into between write rounds, which the round's
//! segment write then takes as it is instead of copying the records out.
//!
//! A direct write starts at a block's start, so it rewrites the segment's last partial block:
//! the bytes already there go in front of the new records. The commit task readies each
//! stream's next buffer with those bytes (the *lead*) as the round's records leave for the
//! writer ([`SegmentWriter::ready_next`](super::writer::SegmentWriter::ready_next)); the
//! pipeline frames the next round's records after them; and the writer takes the buffer whole
//! when its lead is still what the segment ends with
//! ([`SegmentWriter::append`](super::writer::SegmentWriter::append)). When it is not (a
//! rotation, a failed write), the writer copies the records out, as it would any buffer.

use glommio::io::DmaBuffer;

use super::record::Out;

/// Direct I/O's alignment, of memory as of file offsets.
pub(crate) const BLOCK: usize = 4096;

/// Smallest memory a buffer takes when it grows or is readied.
const CAPACITY_MIN: usize = 4 * BLOCK;

/// How far past the records a buffer asks for the memory its next records will be written
/// to ([`Out::write_ahead`]). A round's records go into memory the caches have let go (the
/// buffer the disk read a few rounds before), and with ten streams' buffers written by turns,
/// the hardware's own prefetching left each record's stores waiting for their lines. In
/// process, with 32 MB of records kept between clears (`pipeline-rate --drain-bytes
/// 32000000`), W1 took a median of 704 ns an event, and 626 with the lines asked for 512
/// bytes ahead; 256, 1,024, 2,048 and 4,096 bytes did no better (tuning.md, "Tenth round").
const WRITE_AHEAD_BYTES: usize = 512;

/// A stream's records since the last write round, in memory aligned for direct I/O, after a
/// lead of the bytes that their segment's last partial block holds. It reads as the records
/// alone: the lead is not part of what it derefs to, nor of [`Out::len`].
pub struct RecordBuf {
    mem: Option<DmaBuffer>,
    /// Where the records start in `mem` (just after the lead), their bytes and the room for
    /// them (`mem`'s length less the lead): kept as a `Vec` keeps its own, so that appending
    /// reads no enum and does no arithmetic on the lead. A dangling pointer and zeros
    /// without memory.
    records: *mut u8,
    len: usize,
    room: usize,
    /// Where more memory comes from: glommio's registered buffers in a shard
    /// ([`glommio::allocate_dma_buffer`]), the heap elsewhere (benches, tests).
    alloc: fn(usize) -> DmaBuffer,
    /// Bytes of `mem` before the records.
    lead: usize,
    /// The segment and the offset whose partial block the lead holds.
    lead_of: Option<(u32, u64)>,
}

impl Default for RecordBuf {
    fn default() -> Self {
        RecordBuf {
            mem: None,
            records: std::ptr::NonNull::dangling().as_ptr(),
            len: 0,
            room: 0,
            alloc: glommio::allocate_dma_buffer_global,
            lead: 0,
            lead_of: None,
        }
    }
}

impl std::fmt::Debug for RecordBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBuf")
            .field("records", &self.len)
            .field("lead", &self.lead)
            .field("capacity", &self.capacity())
            .field("lead_of", &self.lead_of)
            .finish()
    }
}

impl std::ops::Deref for RecordBuf {
    type Target = [u8];
    #[inline(always)]
    fn deref(&self) -> &[u8] {
        // SAFETY: the records' `len` bytes lie within the memory (none without), and were
        // written.
        unsafe { std::slice::from_raw_parts(self.records, self.len) }
    }
}

impl std::ops::DerefMut for RecordBuf {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`: `records[..len]` lies within the memory and was written;
        // the memory is this buffer's alone, and `&mut self` keeps it so while borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.records, self.len) }
    }
}

impl RecordBuf {
    /// Bytes of memory held, the lead's included.
    pub fn capacity(&self) -> usize {
        self.lead + self.room
    }

    /// Takes `mem` as this buffer's memory, led by `lead` bytes (written, or to be), and
    /// `len` bytes of records after them (written).
    fn hold(&mut self, mut mem: Option<DmaBuffer>, lead: usize, len: usize) {
        (self.records, self.room) = match &mut mem {
            Some(m) => {
                assert!(lead + len <= m.len(), "the lead and records fit the memory");
                // SAFETY: the lead lies within the memory (asserted).
                (unsafe { m.as_mut_ptr().add(lead) }, m.len() - lead)
            }
            None => (std::ptr::NonNull::dangling().as_ptr(), 0),
        };
        self.mem = mem;
        self.lead = lead;
        self.len = len;
    }

    /// The memory's start: the lead's.
    fn start(&mut self) -> *mut u8 {
        // SAFETY: `records` is `lead` bytes into the memory (0 without).
        unsafe { self.records.sub(self.lead) }
    }

    /// The memory [`Out::write_ahead`] asks for, as offsets from the records' start: `n`
    /// bytes from `WRITE_AHEAD_BYTES` past the records, as far as the room goes.
    #[inline(always)]
    fn ahead(&self, n: usize) -> std::ops::Range<usize> {
        let from = (self.len + WRITE_AHEAD_BYTES).min(self.room);
        from..(from + n).min(self.room)
    }

    /// Drops the records, keeping the lead and the memory.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `b`.
    pub fn extend_from_slice(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        Out::reserve(self, b.len());
        // SAFETY: `reserve` left `room - len >= b.len()`, so `records[len..len + b.len()]`
        // lies within the memory; `b`, borrowed apart from `self`, is not in it.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.records.add(self.len), b.len()) };
        self.len += b.len();
    }

    /// Drops the records and the lead and readies memory for about `capacity` bytes from
    /// `alloc`, led by `lead` bytes (filled by `fill`), the partial block of segment `seq` at
    /// `offset`.
    pub(crate) fn ready(
        &mut self,
        alloc: fn(usize) -> DmaBuffer,
        capacity: usize,
        lead: usize,
        lead_of: Option<(u32, u64)>,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let want = capacity.max(lead).next_multiple_of(BLOCK).max(CAPACITY_MIN);
        let have = self.capacity();
        // Memory kept from a round that was copied out is used again unless far off the size.
        let mem = match self.mem.take() {
            Some(m) if have >= want && have <= 4 * want => m,
            _ => alloc(want),
        };
        self.hold(Some(mem), lead, 0);
        self.alloc = alloc;
        // SAFETY: `hold` asserted that the lead fits the memory, and `start()` is the
        // memory's first byte: `start()[..lead]` lies within it, this buffer's alone.
        fill(unsafe { std::slice::from_raw_parts_mut(self.start(), lead) });
        self.lead_of = lead_of;
    }

    /// The memory whole and its bytes written, of which the first are the lead, if the lead
    /// is `lead` as the partial block of segment `seq` at `offset`, with room for `size`
    /// bytes in all. Leaves this buffer empty, without memory.
    pub(crate) fn take_led_by(
        &mut self,
        seq: u32,
        offset: u64,
        lead: &[u8],
        size: usize,
    ) -> Option<(DmaBuffer, usize)> {
        if self.lead_of != Some((seq, offset)) || self.lead != lead.len() {
            return None;
        }
        if self.mem.as_ref()?.as_bytes()[..self.lead] != *lead {
            return None;
        }
        if self.capacity() < size {
            self.grow(size);
        }
        let len = self.lead + self.len;
        let mem = self.mem.take()?;
        self.hold(None, 0, 0);
        self.lead_of = None;
        Some((mem, len))
    }

    /// Moves the written bytes into memory of at least `need` bytes (twice the old, at least).
    #[cold]
    #[inline(never)]
    fn grow(&mut self, need: usize) {
        let size = need
            .max(2 * self.capacity())
            .next_multiple_of(BLOCK)
            .max(CAPACITY_MIN);
        let mut m = (self.alloc)(size);
        let written = self.lead + self.len;
        // SAFETY: the old memory's lead and records were written (none without memory).
        let old = unsafe { std::slice::from_raw_parts(self.start(), written) };
        m.as_bytes_mut()[..written].copy_from_slice(old);
        self.hold(Some(m), self.lead, self.len);
    }
}

impl Out for RecordBuf {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn reserve(&mut self, n: usize) {
        if self.room - self.len < n {
            self.grow(self.lead + self.len + n);
        }
    }

    #[inline(always)]
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.records
    }

    /// # Safety
    /// As [`Out::set_len`]: `len` records' bytes, counted from the end of the lead, lie
    /// within the memory and were written. `deref` and the writer's take read exactly the
    /// lead and those bytes, so nothing unwritten is read; nothing here dereferences.
    #[inline(always)]
    unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.room);
        self.len = len;
    }

    #[inline(always)]
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }

    /// Asks for the lines of [`RecordBuf::ahead`], with the intent to write them.
    #[inline(always)]
    fn write_ahead(&self, n: usize) {
        #[cfg(target_arch = "x86_64")]
        for at in self.ahead(n).step_by(64) {
            use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
            // SAFETY: `at` lies within the buffer's room (`records` points at its start); a
            // prefetch reads and writes nothing, and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_ET0>(self.records.add(at).cast()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_grow_behind_their_lead_and_read_without_it() {
        let mut b = RecordBuf::default();
        assert!(b.is_empty());
        b.ready(
            glommio::allocate_dma_buffer_global,
            0,
            40,
            Some((3, 4136)),
            |l| l.fill(7),
        );
        assert_eq!(b.capacity(), CAPACITY_MIN);
        let big: Vec<u8> = (0..3 * CAPACITY_MIN).map(|i| i as u8).collect();
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&big);
        assert_eq!(&b[..3], b"abc");
        assert_eq!(&b[3..], &big[..]);
        assert_eq!(Out::len(&b), 3 + big.len());
        assert!(b.capacity() >= 40 + 3 + big.len());
        // The lead, as the writer finds it; not for another offset or other bytes.
        assert!(b.take_led_by(3, 4137, &[7; 40], 0).is_none());
        assert!(b.take_led_by(3, 4136, &[6; 40], 0).is_none());
        let size = (40 + 3 + big.len() + 4).next_multiple_of(BLOCK) + BLOCK;
        let (mem, len) = b.take_led_by(3, 4136, &[7; 40], size).expect("led as said");
        assert_eq!(len, 40 + 3 + big.len());
        assert!(mem.len() >= size);
        assert_eq!(&mem.as_bytes()[..40], &[7; 40]);
        assert_eq!(&mem.as_bytes()[43..len], &big[..]);
        assert_eq!(mem.as_bytes().as_ptr() as usize % BLOCK, 0);
        assert!(b.is_empty());
        assert_eq!(b.capacity(), 0);
        b.clear();
        b.extend_from_slice(b"x");
        assert_eq!(&b[..], b"x");
    }

    /// What a buffer asks for ahead lies in its room, past its records.
    #[test]
    fn the_memory_asked_for_ahead_lies_within_the_room() {
        let mut b = RecordBuf::default();
        assert_eq!(b.ahead(300), 0..0, "no memory, nothing asked for");
        b.ready(glommio::allocate_dma_buffer_global, 0, 0, None, |_| {});
        let room = b.capacity();
        assert_eq!(b.ahead(300), WRITE_AHEAD_BYTES..WRITE_AHEAD_BYTES + 300);
        b.extend_from_slice(&vec![1; room - WRITE_AHEAD_BYTES - 100]);
        assert_eq!(b.ahead(300), room - 100..room);
        b.extend_from_slice(&[2; 100]);
        assert_eq!(b.ahead(300), room..room);
        b.write_ahead(300);
    }
}
