//! Region maps: which regions of a volume are dirty, ever written, or suspect.
//!
//! Model: a [`RegionMap`] is a bitmap of a `size`-byte volume with one bit per `granularity`
//! bytes (a *region*), kept as 64-bit words, plus the number of set bits. The words are
//! allocated on first use (an empty map costs nothing) and are exactly what the replica state
//! file persists (`state::Persisted`), so a map converts to and from its words unchanged.
//!
//! Invariants:
//! - `count` is always the number of set bits of `words` (every mutation keeps it; nothing
//!   recounts the whole map per write: setting a range costs the regions it covers).
//! - Bits past the end of `words` are clear; setting a bit there does nothing (a map loaded
//!   from a file shorter than the volume stays that short, as before the split).
//! - An empty map answers [`RegionMap::next_set`] and [`RegionMap::ranges`] at once, without
//!   a walk over its words (the resync source asks at every tick while it waits).

/// A bitmap of a volume's regions with a maintained count of set regions.
#[derive(Clone, Debug)]
pub struct RegionMap {
    words: Vec<u64>,
    count: u64,
    size: u64,
    g: u64,
}

impl RegionMap {
    /// An empty map of a `size`-byte volume, `granularity` bytes per region.
    pub fn new(size: u64, granularity: u64) -> Self {
        Self {
            words: Vec::new(),
            count: 0,
            size,
            g: granularity.max(1),
        }
    }

    /// A map with these words (from the state file).
    pub fn from_words(size: u64, granularity: u64, words: Vec<u64>) -> Self {
        let count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Self {
            words,
            count,
            size,
            g: granularity.max(1),
        }
    }

    /// Every region of the volume set.
    pub fn all(size: u64, granularity: u64) -> Self {
        let g = granularity.max(1);
        let bits = size.div_ceil(g);
        let mut words = vec![u64::MAX; bits.div_ceil(64) as usize];
        if !bits.is_multiple_of(64)
            && let Some(last) = words.last_mut()
        {
            *last = (1u64 << (bits % 64)) - 1;
        }
        Self {
            words,
            count: bits,
            size,
            g,
        }
    }

    /// Regions in the volume.
    pub fn regions(&self) -> u64 {
        self.size.div_ceil(self.g)
    }

    /// Bytes per region.
    pub fn granularity(&self) -> u64 {
        self.g
    }

    /// Set regions.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes of the volume in set regions (`count` times the granularity).
    pub fn bytes(&self) -> u64 {
        self.count * self.g
    }

    /// No region is set.
    pub fn none(&self) -> bool {
        self.count == 0
    }

    /// The words were never allocated (nothing was ever set or merged in).
    pub fn unallocated(&self) -> bool {
        self.words.is_empty()
    }

    /// The words (as persisted).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Whether region `b` is set.
    pub fn test(&self, b: u64) -> bool {
        self.words
            .get((b / 64) as usize)
            .is_some_and(|w| w >> (b % 64) & 1 == 1)
    }

    /// Set every region that `[offset, offset + len)` touches (a zero length touches the
    /// region of `offset`); allocates the words on first use. Returns the regions newly set.
    pub fn set_range(&mut self, offset: u64, len: u64) -> u64 {
        if self.words.is_empty() {
            self.words
                .resize(self.size.div_ceil(self.g).div_ceil(64) as usize, 0);
        }
        let first = offset / self.g;
        let last = (offset + len.max(1) - 1) / self.g;
        let mut added = 0;
        for b in first..=last {
            if let Some(w) = self.words.get_mut((b / 64) as usize) {
                let bit = 1 << (b % 64);
                if *w & bit == 0 {
                    *w |= bit;
                    added += 1;
                }
            }
        }
        self.count += added;
        added
    }

    /// Clear region `b`.
    pub fn clear_bit(&mut self, b: u64) {
        if let Some(w) = self.words.get_mut((b / 64) as usize) {
            let bit = 1 << (b % 64);
            if *w & bit != 0 {
                *w &= !bit;
                self.count -= 1;
            }
        }
    }

    /// `self |= other` (growing the words to `other`'s length as needed).
    pub fn or_with(&mut self, other: &RegionMap) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (m, o) in self.words.iter_mut().zip(&other.words) {
            self.count += u64::from((o & !*m).count_ones());
            *m |= o;
        }
    }

    /// `self |= other` over words `first..=last` only (growing the words to `other`'s length
    /// as needed).
    pub fn or_words(&mut self, other: &RegionMap, first: usize, last: usize) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let end = (last + 1).min(other.words.len());
        for i in first.min(end)..end {
            let o = other.words[i];
            self.count += u64::from((o & !self.words[i]).count_ones());
            self.words[i] |= o;
        }
    }

    /// Clear every region of words `first..=last` (keeping the words allocated).
    pub fn zero_words(&mut self, first: usize, last: usize) {
        let end = (last + 1).min(self.words.len());
        for w in self.words.get_mut(first.min(end)..end).unwrap_or_default() {
            self.count -= u64::from(w.count_ones());
            *w = 0;
        }
    }

    /// The index of the word holding the region of byte `offset`.
    pub fn word_of(&self, offset: u64) -> usize {
        (offset / self.g / 64) as usize
    }

    /// Forget every region (and the words).
    pub fn clear(&mut self) {
        self.words.clear();
        self.count = 0;
    }

    /// The first set region at or after `from`, within the volume.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if self.count == 0 {
            // (Not a walk over every word: the resync source asks at every tick, often with
            // the map empty, and a 16 TiB volume of 4 KiB regions has 2^26 words.)
            return None;
        }
        let bits = self.regions();
        let mut b = from;
        loop {
            if b >= bits {
                return None;
            }
            let w = self.words.get((b / 64) as usize).copied().unwrap_or(0) >> (b % 64);
            if w == 0 {
                b = (b / 64 + 1) * 64;
                continue;
            }
            b += u64::from(w.trailing_zeros());
            return (b < bits).then_some(b);
        }
    }

    /// The set regions as byte ranges `(offset, length)`, adjacent regions joined, clipped to
    /// the volume.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        if self.count == 0 {
            return Vec::new();
        }
        let g = self.g;
        let bits = self.regions();
        let mut ranges = Vec::new();
        let mut b = 0;
        while b < bits {
            if self.words.get((b / 64) as usize).copied().unwrap_or(0) >> (b % 64) == 0 {
                // Nothing set in the rest of this word.
                b = (b / 64 + 1) * 64;
                continue;
            }
            if !self.test(b) {
                b += 1;
                continue;
            }
            let start = b;
            while b < bits && self.test(b) {
                b += 1;
            }
            let offset = start * g;
            ranges.push((offset, (b * g).min(self.size) - offset));
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    //! The map against a plain model (a `Vec<bool>` per region) on random operations.
    use super::*;

    use super::super::tests::Rng;

    fn model_ranges(m: &[bool], size: u64, g: u64) -> Vec<(u64, u64)> {
        let mut r = Vec::new();
        let mut b = 0;
        while b < m.len() {
            if !m[b] {
                b += 1;
                continue;
            }
            let s = b;
            while b < m.len() && m[b] {
                b += 1;
            }
            let off = s as u64 * g;
            r.push((off, (b as u64 * g).min(size) - off));
        }
        r
    }

    fn check(map: &RegionMap, model: &[bool], size: u64, g: u64, seed: u64) {
        let set = model.iter().filter(|&&x| x).count() as u64;
        assert_eq!(map.count(), set, "seed {seed}: count");
        assert_eq!(map.bytes(), set * g, "seed {seed}: bytes");
        let popcount: u64 = map.words().iter().map(|w| u64::from(w.count_ones())).sum();
        assert_eq!(popcount, set, "seed {seed}: words and count disagree");
        for (b, &x) in model.iter().enumerate() {
            assert_eq!(map.test(b as u64), x, "seed {seed}: bit {b}");
        }
        assert_eq!(map.ranges(), model_ranges(model, size, g), "seed {seed}");
        let first = model.iter().position(|&x| x).map(|b| b as u64);
        assert_eq!(map.next_set(0), first, "seed {seed}: next_set");
        assert_eq!(map.none(), set == 0);
    }

    #[test]
    fn a_region_map_agrees_with_a_model_on_random_operations() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let g = 512 << rng.below(4);
            // Sizes not a multiple of the granularity nor of 64 regions too.
            let size = 1 + rng.below(300 * g);
            let bits = size.div_ceil(g) as usize;
            let mut map = RegionMap::new(size, g);
            let mut model = vec![false; bits];
            let mut other = RegionMap::new(size, g);
            let mut other_model = vec![false; bits];
            for _ in 0..200 {
                match rng.below(7) {
                    0..=2 => {
                        let off = rng.below(size);
                        let len = rng.below((size - off).min(8 * g) + 1);
                        let before = model.iter().filter(|&&x| x).count() as u64;
                        let added = map.set_range(off, len);
                        for b in off / g..=(off + len.max(1) - 1) / g {
                            model[b as usize] = true;
                        }
                        let after = model.iter().filter(|&&x| x).count() as u64;
                        assert_eq!(added, after - before, "seed {seed}: added");
                    }
                    3 => {
                        let b = rng.below(bits as u64 + 70);
                        map.clear_bit(b);
                        if let Some(x) = model.get_mut(b as usize) {
                            *x = false;
                        }
                    }
                    4 => {
                        let off = rng.below(size);
                        other.set_range(off, rng.below((size - off).min(4 * g) + 1));
                        other_model = (0..bits as u64).map(|b| other.test(b)).collect();
                        map.or_with(&other);
                        for (m, o) in model.iter_mut().zip(&other_model) {
                            *m |= o;
                        }
                    }
                    5 => {
                        let from = rng.below(bits as u64 + 70);
                        let want = (from as usize..bits).find(|&b| model[b]).map(|b| b as u64);
                        assert_eq!(map.next_set(from), want, "seed {seed}: next_set({from})");
                    }
                    _ => {
                        if rng.below(20) == 0 {
                            map.clear();
                            model.iter_mut().for_each(|x| *x = false);
                        }
                    }
                }
                check(&map, &model, size, g, seed);
            }
            let words = map.words().to_vec();
            let back = RegionMap::from_words(size, g, words);
            check(&back, &model, size, g, seed);
            assert_eq!(other_model.len(), bits);
        }
    }

    #[test]
    fn all_sets_every_region_and_nothing_past_the_end() {
        for (size, g) in [
            (1, 4096),
            (4096, 4096),
            (64 * 4096, 4096),
            (65 * 4096 + 1, 4096),
        ] {
            let map = RegionMap::all(size, g);
            let bits = size.div_ceil(g);
            assert_eq!(map.count(), bits);
            assert_eq!(map.ranges(), vec![(0, size)]);
            assert!(!map.test(bits));
        }
    }

    /// The resync source looks for the next dirty region at every engine tick (5 ms) while it
    /// waits (for the target's list, a retry, a slow read, writes in flight), often with the
    /// map empty: on a large volume (1 TiB of 4 KiB regions, 2^22 words; the configuration
    /// takes up to 2^32 - 1 regions) that look must not walk the whole map.
    #[test]
    fn the_next_set_region_of_an_empty_map_of_a_large_volume_is_found_at_once() {
        let (g, size) = (4096, 1u64 << 40);
        let timed = |m: &RegionMap| {
            let t = std::time::Instant::now();
            assert_eq!(m.next_set(0), None);
            t.elapsed()
        };
        let mut m = RegionMap::new(size, g);
        let unallocated = timed(&m);
        m.set_range(size - 512, 512);
        m.clear_bit(m.regions() - 1);
        assert!(!m.unallocated() && m.none());
        let allocated = timed(&m);
        let tick = std::time::Duration::from_millis(5);
        assert!(
            unallocated < tick && allocated < tick,
            "{unallocated:?} unallocated, {allocated:?} allocated"
        );
    }

    #[test]
    fn an_unallocated_map_allocates_on_first_set_only() {
        let mut m = RegionMap::new(1 << 20, 4096);
        assert!(m.unallocated() && m.none());
        assert_eq!(m.ranges(), vec![]);
        assert_eq!(m.next_set(0), None);
        m.clear_bit(3);
        assert!(m.unallocated());
        assert_eq!(m.set_range(4096, 1), 1);
        assert_eq!(m.words().len(), 4);
        assert_eq!(m.set_range(4096, 4096), 0);
        assert_eq!(m.bytes(), 4096);
    }
}
