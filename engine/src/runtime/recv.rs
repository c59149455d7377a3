//! A connection's receive buffer: anonymous memory mapped for it alone, so that its pages are
//! resident only once bytes landed in them, it grows and shrinks by remapping (no copy), and
//! every byte goes back to the system when it shrinks or the connection closes (memory from
//! the allocator's heap would stay with the process after a burst of connections).
//!
//! Its start is page aligned, so frames the splitter finds at 16-byte offsets are aligned as
//! PROTOCOL.md §1 promises.

use std::io;
use std::ptr::NonNull;

const PAGE: usize = 4096;

pub(super) struct RecvBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl RecvBuf {
    /// A buffer of at least `len` bytes (whole pages).
    pub fn new(len: usize) -> io::Result<RecvBuf> {
        let len = len.max(1).next_multiple_of(PAGE);
        // SAFETY: an anonymous private mapping at an address the kernel picks touches no
        // existing memory; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(RecvBuf { ptr, len })
    }

    /// Makes the buffer `len` bytes (whole pages), keeping its first `len` bytes' contents
    /// when it shrinks and all of them when it grows. It may move.
    pub fn resize(&mut self, len: usize) -> io::Result<()> {
        let len = len.max(1).next_multiple_of(PAGE);
        if len == self.len {
            return Ok(());
        }
        // SAFETY: `ptr` and `self.len` are exactly the mapping `new` made (or the last
        // remap); MREMAP_MAYMOVE lets the kernel move it, and no reference into it outlives
        // this `&mut self` call.
        let ptr = unsafe {
            libc::mremap(
                self.ptr.as_ptr().cast(),
                self.len,
                len,
                libc::MREMAP_MAYMOVE,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mremap gave null"))?;
        self.len = len;
        Ok(())
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes (zero-filled by the kernel until
        // written), owned by `self` for as long as the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for RecvBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing borrows it any more.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_shrinks_keeping_its_bytes() {
        let mut b = RecvBuf::new(100).unwrap();
        assert_eq!(b.len(), PAGE);
        assert_eq!(b.as_ptr() as usize % PAGE, 0);
        b[..5].copy_from_slice(b"hello");
        b.resize(10 * PAGE + 1).unwrap();
        assert_eq!(b.len(), 11 * PAGE);
        assert_eq!(&b[..5], b"hello");
        b[11 * PAGE - 1] = 7;
        b.resize(PAGE).unwrap();
        assert_eq!(&b[..5], b"hello");
        assert_eq!(b.len(), PAGE);
    }
}
