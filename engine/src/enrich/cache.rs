//! A fixed-capacity cache for one shard: 4-way set associative, keyed by `u64`.
//!
//! The capacity never grows, so a cache in front of a large table (a MaxMind database, a
//! lookup service) costs a known amount of memory per shard. A key hashes (one multiply) to
//! a set of four entries; a miss that finds the set full evicts the entry used least
//! recently within the set (each set keeps its four entries in recency order, so a hit on a
//! hot key costs one compare and no writes beyond a rotate).

/// Entries per set.
const WAYS: usize = 4;

#[derive(Debug, Clone)]
struct Set<V> {
    /// Most recently used first; `len` of them are in use.
    keys: [u64; WAYS],
    vals: [Option<V>; WAYS],
    len: u8,
}

/// A bounded map from `u64` keys to values, forgetting the least recently used entry of a
/// full set on insert.
#[derive(Debug, Clone)]
pub struct Cache<V> {
    sets: Box<[Set<V>]>,
    len: usize,
}

impl<V: Clone> Cache<V> {
    /// A cache of `entries` entries, rounded up to a multiple of 4 (at least 4).
    pub fn new(entries: usize) -> Cache<V> {
        let sets = entries.div_ceil(WAYS).max(1);
        Cache {
            sets: (0..sets)
                .map(|_| Set {
                    keys: [0; WAYS],
                    vals: std::array::from_fn(|_| None),
                    len: 0,
                })
                .collect(),
            len: 0,
        }
    }

    /// How many entries it can hold.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// How many it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The set of `key`.
    #[inline]
    fn index(&self, key: u64) -> usize {
        // A multiply to mix the key, and the high half of a product to scale it to the sets.
        let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((u128::from(h) * self.sets.len() as u128) >> 64) as usize
    }

    #[inline]
    fn set(&mut self, key: u64) -> &mut Set<V> {
        let i = self.index(key);
        &mut self.sets[i]
    }

    /// The value of `key`, leaving the order of its set alone.
    pub fn peek(&self, key: u64) -> Option<&V> {
        let set = &self.sets[self.index(key)];
        let i = set.keys[..usize::from(set.len)]
            .iter()
            .position(|k| *k == key)?;
        set.vals[i].as_ref()
    }

    /// The value of `key`, now the most recently used of its set.
    #[inline]
    pub fn get(&mut self, key: u64) -> Option<&mut V> {
        let set = self.set(key);
        let n = usize::from(set.len);
        let i = set.keys[..n].iter().position(|k| *k == key)?;
        if i > 0 {
            set.keys[..=i].rotate_right(1);
            set.vals[..=i].rotate_right(1);
        }
        set.vals[0].as_mut()
    }

    /// Puts `key` in as the most recently used of its set, replacing its value if it is
    /// there, else evicting the least recently used entry if the set is full.
    pub fn insert(&mut self, key: u64, value: V) {
        let set = self.set(key);
        let n = usize::from(set.len);
        let mut added = false;
        let i = match set.keys[..n].iter().position(|k| *k == key) {
            Some(i) => i,
            None if n < WAYS => {
                set.len += 1;
                added = true;
                n
            }
            None => WAYS - 1,
        };
        set.keys[..=i].rotate_right(1);
        set.vals[..=i].rotate_right(1);
        set.keys[0] = key;
        set.vals[0] = Some(value);
        self.len += usize::from(added);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::Cache;

    proptest! {
        /// Against a plain map: whatever the cache answers is what the map holds, it never
        /// holds more than its capacity, and a key just inserted is found.
        #[test]
        fn answers_like_a_map_within_its_capacity(
            cap in 1usize..64,
            ops in proptest::collection::vec((0u64..200, any::<bool>(), any::<u32>()), 1..2000),
        ) {
            let mut cache = Cache::new(cap);
            let mut map = HashMap::new();
            for (key, insert, value) in ops {
                if insert {
                    cache.insert(key, value);
                    map.insert(key, value);
                    prop_assert_eq!(cache.get(key).copied(), Some(value));
                } else if let Some(v) = cache.get(key) {
                    prop_assert_eq!(Some(*v), map.get(&key).copied());
                }
                prop_assert!(cache.len() <= cache.capacity());
                prop_assert!(cache.capacity() >= cap && cache.capacity() < cap + 4);
            }
        }
    }

    #[test]
    fn keeps_the_recently_used_and_forgets_the_least() {
        // One set of four.
        let mut c = Cache::new(4);
        for k in 0..4 {
            c.insert(k, k * 10);
        }
        assert_eq!(c.get(0), Some(&mut 0));
        c.insert(4, 40); // evicts 1, the least recently used
        assert_eq!(c.get(1), None);
        for k in [0, 2, 3, 4] {
            assert_eq!(c.get(k).copied(), Some(k * 10));
        }
        assert_eq!(c.len(), 4);
    }
}
