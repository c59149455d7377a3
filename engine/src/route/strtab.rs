//! Strings to small ids on the hot path: the rule literals of an event string field.
//!
//! A general hash map hashes every byte and then compares them all again. Here the key of a
//! string is its length and its first and last 8 bytes (which, up to 16 bytes, is the whole
//! string), hashed with one multiply; probing is linear in a table at most a quarter full,
//! and only a string longer than 16 bytes is compared byte by byte after its key matched.

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
    /// `u32::MAX` marks an empty slot.
    len: u32,
    id: u32,
}

const EMPTY: u32 = u32::MAX;

/// The first and last 8 bytes of `s` (zero-padded when shorter).
#[inline]
fn key(s: &[u8]) -> (u64, u64) {
    if s.len() >= 8 {
        let head = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
        let tail = u64::from_le_bytes(s[s.len() - 8..].try_into().expect("8 bytes"));
        (head, tail)
    } else {
        let mut b = [0u8; 8];
        b[..s.len()].copy_from_slice(s);
        (u64::from_le_bytes(b), 0)
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
    #[inline]
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
                && (b.len() <= 16 || *self.strings[e.id as usize] == *s)
            {
                return Some(e.id);
            }
            i = (i + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StrTable;

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
        let t = StrTable::new(["abcdefgh-1-ijklmnop"]);
        assert_eq!(t.get("abcdefgh-2-ijklmnop"), None);
        assert_eq!(t.get("abcdefgh-1-ijklmnop"), Some(0));
        assert!(StrTable::new([]).get("a").is_none());
    }
}
