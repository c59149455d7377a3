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

/// A stream's records since the last write round, in memory aligned for direct I/O, after a
/// lead of the bytes that their segment's last partial block holds. It reads as the records
/// alone: the lead is not part of what it derefs to, nor of [`Out::len`].
pub struct RecordBuf {
    mem: Option<DmaBuffer>,
    /// `mem`'s start and length (a dangling pointer and 0 without memory), kept apart so that
    /// appending reads no enum.
    ptr: *mut u8,
    cap: usize,
    /// Where more memory comes from: glommio's registered buffers in a shard
    /// ([`glommio::allocate_dma_buffer`]), the heap elsewhere (benches, tests).
    alloc: fn(usize) -> DmaBuffer,
    /// Bytes of `mem` before the records.
    lead: usize,
    /// Bytes of `mem` written, the lead's included.
    len: usize,
    /// The segment and the offset whose partial block the lead holds.
    lead_of: Option<(u32, u64)>,
}

impl Default for RecordBuf {
    fn default() -> Self {
        RecordBuf {
            mem: None,
            ptr: std::ptr::NonNull::dangling().as_ptr(),
            cap: 0,
            alloc: glommio::allocate_dma_buffer_global,
            lead: 0,
            len: 0,
            lead_of: None,
        }
    }
}

impl std::fmt::Debug for RecordBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBuf")
            .field("records", &(self.len - self.lead))
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
        // SAFETY: `lead..len` lies within the memory (empty without), and was written.
        unsafe { std::slice::from_raw_parts(self.ptr.add(self.lead), self.len - self.lead) }
    }
}

impl std::ops::DerefMut for RecordBuf {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; the memory is this buffer's alone.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(self.lead), self.len - self.lead) }
    }
}

impl RecordBuf {
    /// Bytes of memory held, the lead's included.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Takes `mem` as this buffer's memory.
    fn hold(&mut self, mut mem: Option<DmaBuffer>) {
        (self.ptr, self.cap) = match &mut mem {
            Some(m) => (m.as_mut_ptr(), m.len()),
            None => (std::ptr::NonNull::dangling().as_ptr(), 0),
        };
        self.mem = mem;
    }

    /// Drops the records, keeping the lead and the memory.
    pub fn clear(&mut self) {
        self.len = self.lead;
    }

    /// Appends `b`.
    pub fn extend_from_slice(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        Out::reserve(self, b.len());
        // SAFETY: `reserve` made room for `b` after the written bytes; `b` is not in it.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.add(self.len), b.len()) };
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
        if self.mem.is_none() || have < want || have > 4 * want {
            self.hold(Some(alloc(want)));
        }
        self.alloc = alloc;
        // SAFETY: the memory holds at least `want >= lead` bytes, this buffer's alone.
        fill(unsafe { std::slice::from_raw_parts_mut(self.ptr, lead) });
        self.lead = lead;
        self.len = lead;
        self.lead_of = lead_of;
    }

    /// The memory whole, `len` bytes written of which the first are the lead, if the lead
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
        let len = self.len;
        let mem = self.mem.take()?;
        self.hold(None);
        self.lead = 0;
        self.len = 0;
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
        // SAFETY: the old memory's first `len` bytes were written (none without memory).
        let old = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        m.as_bytes_mut()[..self.len].copy_from_slice(old);
        self.hold(Some(m));
    }
}

impl Out for RecordBuf {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len - self.lead
    }

    #[inline(always)]
    fn reserve(&mut self, n: usize) {
        if self.capacity() - self.len < n {
            self.grow(self.len + n);
        }
    }

    #[inline(always)]
    fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: the lead lies within the memory (and is 0 without).
        unsafe { self.ptr.add(self.lead) }
    }

    /// # Safety
    /// As [`Out::set_len`]: `len` records' bytes, counted from the end of the lead, lie
    /// within the memory and were written. `deref` and the writer's take read exactly
    /// `lead..lead + len`, so nothing unwritten is read; nothing here dereferences.
    #[inline(always)]
    unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(self.lead + len <= self.capacity());
        self.len = self.lead + len;
    }

    #[inline(always)]
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
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
}
