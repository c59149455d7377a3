//! Event strings archive exactly as rkyv's `ArchivedString` (PROTOCOL.md section 5.2), but are
//! validated by [`ArchivedStr`]'s own `CheckBytes`, tuned for what W1 carries: a dozen short
//! ASCII strings per event, half of them inline. rkyv's check costs about 6 ns a string there,
//! mostly in mispredicted branches (inline or not, the terminator search, the byte loop of the
//! UTF-8 check); this one finds the inline length with a bit trick and checks ASCII a word at
//! a time, falling back to a full UTF-8 check only for non-ASCII bytes.
//!
//! It accepts exactly what rkyv's `ArchivedString` check accepts: `tests/archive.rs` holds the
//! two to each other on mutated archives.

use std::alloc::Layout;
use std::fmt;
use std::ops::Deref;

use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::Writer;
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::validation::{ArchiveContext, ArchiveContextExt};
use rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
use rkyv::{Place, Portable};

/// Bytes an inline string can hold.
const INLINE_BYTES: usize = 8;

/// An archived event string: an `ArchivedString` with a faster validator.
#[repr(transparent)]
pub struct ArchivedStr(ArchivedString);

// SAFETY: `ArchivedStr` is `repr(transparent)` over `ArchivedString`, which is `Portable`.
unsafe impl Portable for ArchivedStr {}

impl Deref for ArchivedStr {
    type Target = ArchivedString;
    #[inline]
    fn deref(&self) -> &ArchivedString {
        &self.0
    }
}

impl fmt::Debug for ArchivedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

/// The `with` wrapper that archives a `String` as an [`ArchivedStr`].
pub struct FastStr;

impl ArchiveWith<String> for FastStr {
    type Archived = ArchivedStr;
    type Resolver = StringResolver;

    fn resolve_with(field: &String, resolver: StringResolver, out: Place<ArchivedStr>) {
        // SAFETY: `ArchivedStr` is `repr(transparent)` over `ArchivedString`.
        let out = unsafe { out.cast_unchecked::<ArchivedString>() };
        ArchivedString::resolve_from_str(field, resolver, out);
    }
}

impl<S: Fallible + Writer + ?Sized> SerializeWith<String, S> for FastStr
where
    S::Error: Source,
{
    fn serialize_with(field: &String, serializer: &mut S) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(field, serializer)
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<ArchivedStr, String, D> for FastStr {
    fn deserialize_with(field: &ArchivedStr, _: &mut D) -> Result<String, D::Error> {
        Ok(field.as_str().to_owned())
    }
}

/// Why an archived string was refused.
#[derive(Debug)]
struct BadString(&'static str);

impl fmt::Display for BadString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadString {}

// SAFETY: `check_bytes` returns `Ok` only if `value` is a valid `ArchivedString`: an inline
// repr whose bytes up to the first 0xff are UTF-8, or an out-of-line repr of more than 8 bytes
// whose bytes lie inside the archive (claimed through the context, as rkyv does) and are UTF-8.
unsafe impl<C> CheckBytes<C> for ArchivedStr
where
    C: Fallible + ArchiveContext + ?Sized,
    C::Error: Source,
{
    /// # Safety
    /// As `CheckBytes` requires: `value` is aligned and points to 8 readable bytes inside the
    /// archive that `context` validates.
    #[inline(always)]
    unsafe fn check_bytes(value: *const Self, context: &mut C) -> Result<(), C::Error> {
        // SAFETY: the caller guarantees `value` is aligned and points to readable bytes of
        // `size_of::<Self>()` (8); `[u8; 8]` has alignment 1.
        let raw: [u8; INLINE_BYTES] = unsafe { value.cast::<[u8; INLINE_BYTES]>().read() };
        let word = u64::from_le_bytes(raw);
        if raw[0] & 0xc0 != 0x80 {
            // Inline: the length is the index of the first 0xff byte (8 if none). Bytes equal
            // to 0xff are the zero bytes of !word; the lowest flagged byte is exact.
            let inv = !word;
            let zeros = inv.wrapping_sub(0x0101_0101_0101_0101) & !inv & 0x8080_8080_8080_8080;
            let len = (zeros.trailing_zeros() / 8) as usize;
            let ascii_mask = if len == INLINE_BYTES {
                !0
            } else {
                (1u64 << (8 * len)) - 1
            };
            if word & ascii_mask & 0x8080_8080_8080_8080 != 0
                && std::str::from_utf8(&raw[..len]).is_err()
            {
                return Err(C::Error::new(BadString("inline string is not UTF-8")));
            }
            return Ok(());
        }
        // SAFETY: as above, `value` is a valid pointer to the repr.
        unsafe { check_out_of_line(value.cast(), raw, context) }
    }
}

/// The out-of-line half of [`ArchivedStr`]'s check, kept out of the inlined inline half.
///
/// # Safety
/// `value` points to the 8-byte repr `raw` was read from, inside the archive `context` checks.
#[inline(never)]
unsafe fn check_out_of_line<C>(
    value: *const u8,
    raw: [u8; INLINE_BYTES],
    context: &mut C,
) -> Result<(), C::Error>
where
    C: Fallible + ArchiveContext + ?Sized,
    C::Error: Source,
{
    let tagged = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let len = ((tagged & 0x3f) | ((tagged & !0xff) >> 2)) as usize;
    if len <= INLINE_BYTES {
        return Err(C::Error::new(BadString(
            "a string of 8 bytes or fewer must be inline",
        )));
    }
    let offset = i32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]) as isize;
    let start = value.wrapping_offset(offset);
    let layout =
        Layout::from_size_align(len, 1).map_err(|_| C::Error::new(BadString("string too long")))?;
    context.in_subtree_raw(start, layout, |_| {
        // SAFETY: `in_subtree_raw` checked that `start..start + len` lies inside the
        // archive and claimed it, so it is readable and no other check claims it.
        let bytes = unsafe { std::slice::from_raw_parts(start, len) };
        if is_ascii(bytes) || std::str::from_utf8(bytes).is_ok() {
            Ok(())
        } else {
            Err(C::Error::new(BadString("string is not UTF-8")))
        }
    })
}

/// Whether `b` is all ASCII: every word ORed together (which the compiler does in vector
/// registers, several words a step), the last word read overlapping the one before, then one
/// test of the top bits. No early exit: strings that pass are the common case, and a branch
/// per step costs them more than it saves a bad one. (The standard library's `is_ascii` goes
/// a word at a time: W1's 300-byte padding attribute cost about 115 instructions.)
#[inline]
fn is_ascii(b: &[u8]) -> bool {
    let Some(last) = b.last_chunk::<8>() else {
        return b.is_ascii();
    };
    let (words, _) = b.as_chunks::<8>();
    let all = words
        .iter()
        .fold(u64::from_le_bytes(*last), |a, w| a | u64::from_le_bytes(*w));
    all & 0x8080_8080_8080_8080 == 0
}

#[cfg(test)]
mod tests {
    /// The wide ASCII check agrees with the standard library's at every length and place of
    /// a high byte.
    #[test]
    fn is_ascii_agrees_with_std() {
        for n in 0..100 {
            let mut b = vec![b'a'; n];
            assert!(super::is_ascii(&b));
            for i in 0..n {
                b[i] = 0x80 | i as u8;
                assert!(!super::is_ascii(&b), "{n} bytes, high at {i}");
                b[i] = b'a';
            }
        }
    }
}
