//! Strings to small ids on the hot path: the rule literals of an event string field.
//!
//! A general hash map hashes every byte and then compares them all again. Here the key of a
//! string is its length and its first and last 8 bytes (which, up to 16 bytes, is the whole
//! string), hashed with one multiply; probing is linear in a table at most a quarter full.
//! The entry also holds bytes 8..16, so strings of up to 24 bytes are compared in the entry
//! alone; only a longer one is compared byte by byte after its key matched.

/// Strings interned to ids `0..n`.
#[derive(Debug, Clone)]
pub struct StrTable {
    shift: u32,
    slots: Box<[Entry]>,
    strings: Vec<Box<str>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    head: u64,
    tail: u64,
    /// Bytes 8..16 of a string of over 16 bytes (in a [`StrTable`]); else 0.
    mid: u64,
    /// `u32::MAX` marks an empty slot.
    len: u32,
    id: u32,
}

const EMPTY: u32 = u32::MAX;

/// A key that, with the length, tells strings of up to 16 bytes apart: the first and last 8
/// bytes; for shorter strings, overlapping reads that still cover every byte (no copy).
#[inline]
fn key(s: &[u8]) -> (u64, u64) {
    let n = s.len();
    let u32_at = |i: usize| u64::from(u32::from_le_bytes(s[i..i + 4].try_into().expect("4")));
    if n >= 8 {
        let head = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
        let tail = u64::from_le_bytes(s[n - 8..].try_into().expect("8 bytes"));
        (head, tail)
    } else if n >= 4 {
        (u32_at(0) | u32_at(n - 4) << 32, 0)
    } else if n > 0 {
        let (a, b, c) = (s[0], s[n / 2], s[n - 1]);
        (u64::from(a) | u64::from(b) << 8 | u64::from(c) << 16, 0)
    } else {
        (0, 0)
    }
}

/// Bytes 8..16 of a string of over 16 bytes, else 0.
#[inline]
fn mid(s: &[u8]) -> u64 {
    match s.get(8..16) {
        Some(m) if s.len() > 16 => u64::from_le_bytes(m.try_into().expect("8 bytes")),
        _ => 0,
    }
}

impl StrTable {
    /// Interns `strings` (distinct) as ids in their order.
    pub fn new<'a>(strings: impl IntoIterator<Item = &'a str>) -> StrTable {
        let strings: Vec<Box<str>> = strings.into_iter().map(Box::from).collect();
        assert!(strings.len() < EMPTY as usize, "ids fit in u32");
        let size = (strings.len() * 4).next_power_of_two().max(8);
        let mut t = StrTable {
            shift: 64 - size.trailing_zeros(),
            slots: vec![
                Entry {
                    head: 0,
                    tail: 0,
                    mid: 0,
                    len: EMPTY,
                    id: 0,
                };
                size
            ]
            .into(),
            strings: Vec::new(),
        };
        for (id, s) in strings.iter().enumerate() {
            assert!(t.get(s).is_none(), "{s:?} is interned twice");
            let (head, tail) = key(s.as_bytes());
            let mut i = t.slot(s.len(), head, tail);
            while t.slots[i].len != EMPTY {
                i = (i + 1) & (size - 1);
            }
            t.slots[i] = Entry {
                head,
                tail,
                mid: mid(s.as_bytes()),
                len: s.len() as u32,
                id: id as u32,
            };
        }
        t.strings = strings;
        t
    }

    #[inline]
    fn slot(&self, len: usize, head: u64, tail: u64) -> usize {
        let h = (head ^ tail.rotate_left(29) ^ (len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xd6e8_feb8_6659_fd93);
        (h >> self.shift) as usize
    }

    /// The id of `s`, if interned.
    #[inline(always)]
    pub fn get(&self, s: &str) -> Option<u32> {
        let b = s.as_bytes();
        let (head, tail) = key(b);
        let mask = self.slots.len() - 1;
        let mut i = self.slot(b.len(), head, tail);
        loop {
            let e = self.slots[i];
            if e.len == EMPTY {
                return None;
            }
            if e.len as usize == b.len()
                && e.head == head
                && e.tail == tail
                && e.mid == mid(b)
                && (b.len() <= 24 || *self.strings[e.id as usize] == *s)
            {
                return Some(e.id);
            }
            i = (i + 1) & mask;
        }
    }
}

/// The rows of recently seen short strings of one field, for a field whose row takes parsing
/// (`app_version`): direct-mapped, 256 entries. A hit is a hash and three word compares.
#[derive(Debug, Clone)]
pub struct RowCache {
    entries: Box<[Entry]>,
}

impl Default for RowCache {
    fn default() -> Self {
        let empty = Entry {
            head: 0,
            tail: 0,
            mid: 0,
            len: EMPTY,
            id: 0,
        };
        RowCache {
            entries: vec![empty; 256].into(),
        }
    }
}

impl RowCache {
    /// The row of `s`: cached, or `compute(s)`, cached when `s` is at most 16 bytes (then its
    /// length, head and tail are the whole string).
    #[inline]
    pub fn row(&mut self, s: &str, compute: impl FnOnce(&str) -> usize) -> usize {
        let b = s.as_bytes();
        if b.len() > 16 {
            return compute(s);
        }
        let (head, tail) = key(b);
        let h = (head ^ tail.rotate_left(29) ^ b.len() as u64).wrapping_mul(0xd6e8_feb8_6659_fd93);
        let e = &mut self.entries[(h >> 56) as usize];
        if e.len as usize == b.len() && e.head == head && e.tail == tail {
            return e.id as usize;
        }
        let row = compute(s);
        *e = Entry {
            head,
            tail,
            mid: 0,
            len: b.len() as u32,
            id: row as u32,
        };
        row
    }
}

#[cfg(test)]
mod tests {
    use super::{RowCache, StrTable};

    #[test]
    fn the_cache_gives_what_compute_gives() {
        let mut c = RowCache::default();
        let calls = std::cell::Cell::new(0);
        let f = |s: &str| {
            calls.set(calls.get() + 1);
            s.len() * 10
        };
        let strings = [
            "7.4.1",
            "7.4.10",
            "6.0.0",
            "",
            "1234567890123456",
            "a-long-version-string",
        ];
        for _ in 0..3 {
            for s in strings {
                assert_eq!(c.row(s, f), s.len() * 10);
            }
        }
        // Many more strings than entries: every answer is still the computed one.
        let f = |s: &str| {
            s.bytes().fold(7usize, |h, b| {
                h.wrapping_mul(31).wrapping_add(usize::from(b))
            }) % 1_000_003
        };
        for pass in 0..2 {
            for i in 0..20 {
                for j in 0..30 {
                    let v = format!("{i}.{j}.{}", (i * j + pass) % 7);
                    assert_eq!(c.row(&v, f), f(&v), "{v}");
                }
            }
        }
        // Each short string is computed once unless another shares its entry; a long one
        // every time.
        assert!(
            calls.get() <= 5 * 3 + 3 && calls.get() >= 5 + 3,
            "{}",
            calls.get()
        );
    }

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let words = [
            "",
            "a",
            "ab",
            "playback.start",
            "playback.stop",
            "device.network_change",
            "device.network_chang3",
            "12345678",
            "123456789",
            "1234567890123456",
            "1234567890123457",
            "x1234567890123456",
            "y1234567890123456",
        ];
        let t = StrTable::new(words.iter().copied());
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.get(w), Some(i as u32), "{w:?}");
        }
        for w in [
            "b",
            "playback.star",
            "playback.startx",
            "device.network_chang4",
            "1234567",
        ] {
            assert_eq!(t.get(w), None, "{w:?}");
        }
        // Same length, head and tail, different middle: told apart byte by byte.
        let t = StrTable::new(["abcdefgh-1-ijklmnop", "abcdefgh-12345678-9-ijklmnop"]);
        assert_eq!(t.get("abcdefgh-2-ijklmnop"), None);
        assert_eq!(t.get("abcdefgh-1-ijklmnop"), Some(0));
        // Over 24 bytes: the same first 24 and last 8 bytes, a different byte past 24.
        assert_eq!(t.get("abcdefgh-12345678-8-ijklmnop"), None);
        assert_eq!(t.get("abcdefgh-12345678-9-ijklmnop"), Some(1));
        assert!(StrTable::new([]).get("a").is_none());
    }
}
