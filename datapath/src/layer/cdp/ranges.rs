//! A set of byte ranges kept merged: `start -> end` of disjoint, non-touching ranges (two
//! ranges that meet are one). Used for a sandbox view's written ranges (`view.rs`) and for
//! the records a later record of the same segment makes superfluous (`retain.rs`), and the
//! pieces of a range not yet compared after a crash (`tail.rs`, [`gaps`]).
//!
//! Invariant: no two entries overlap or touch, so a range is covered by the set exactly when
//! one entry covers it.

use std::collections::BTreeMap;

/// A merged range set.
pub type Ranges = BTreeMap<u64, u64>;

/// Add `[start, end)` (merging neighbours).
pub fn mark(ranges: &mut Ranges, mut start: u64, mut end: u64) {
    if let Some((&s, &e)) = ranges.range(..=start).next_back()
        && e >= start
    {
        start = s;
        end = end.max(e);
    }
    while let Some((&s, &e)) = ranges.range(start..=end).next() {
        end = end.max(e);
        ranges.remove(&s);
    }
    ranges.insert(start, end);
}

/// Whether every byte of `[start, end)` is in the set.
pub fn covers(ranges: &Ranges, start: u64, end: u64) -> bool {
    ranges
        .range(..=start)
        .next_back()
        .is_some_and(|(_, &e)| e >= end)
}

/// The pieces of `[start, end)` not in `covered`.
pub fn gaps(covered: &Ranges, start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if start >= end {
        return out;
    }
    let mut at = start;
    if let Some((_, &e)) = covered.range(..=start).next_back()
        && e > at
    {
        at = e.min(end);
    }
    for (&s, &e) in covered.range(at..end) {
        if s > at {
            out.push((at, s));
        }
        at = e.max(at);
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_cover() {
        let mut m = Ranges::new();
        mark(&mut m, 10, 20);
        mark(&mut m, 30, 40);
        assert!(covers(&m, 12, 20) && !covers(&m, 12, 21) && !covers(&m, 20, 30));
        mark(&mut m, 20, 30);
        assert_eq!(m.clone().into_iter().collect::<Vec<_>>(), vec![(10, 40)]);
        assert!(covers(&m, 10, 40) && !covers(&m, 9, 12));
        let mut m = Ranges::new();
        mark(&mut m, 0, 8);
        mark(&mut m, 16, 24);
        mark(&mut m, 4, 18);
        mark(&mut m, 100, 108);
        assert_eq!(
            m.clone().into_iter().collect::<Vec<_>>(),
            vec![(0, 24), (100, 108)]
        );
        assert!(!covers(&m, 20, 101) && covers(&m, 100, 108) && !covers(&Ranges::new(), 0, 1));
    }

    #[test]
    fn gaps_are_the_uncovered_pieces() {
        let mut c = Ranges::new();
        assert_eq!(gaps(&c, 0, 10), vec![(0, 10)]);
        mark(&mut c, 2, 4);
        mark(&mut c, 6, 8);
        assert_eq!(gaps(&c, 0, 10), vec![(0, 2), (4, 6), (8, 10)]);
        assert_eq!(gaps(&c, 3, 7), vec![(4, 6)]);
        assert_eq!(gaps(&c, 2, 4), vec![]);
        assert_eq!(gaps(&c, 7, 9), vec![(8, 9)]);
        assert_eq!(gaps(&c, 5, 5), vec![]);
        assert_eq!(gaps(&c, 9, 5), vec![]);
    }
}
