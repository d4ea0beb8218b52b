//! What the peer confirmed but may not have made durable ([`PeerUnflushed`]): the leader's
//! record of the regions of updates the follower acknowledged (applied to its replica) since
//! the follower's last completed flush (docs/mirror-protocol.md, "Power loss").
//!
//! Model: an acknowledgement means *applied*, which on a device with a volatile write cache
//! is not *durable*: a follower that loses its power loses those writes, though both sites
//! acknowledged them. The leader keeps their regions in `confirmed` as the watermark passes
//! them. When it sends a FLUSH to the follower (and no earlier one is tracked), everything
//! confirmed so far moves to `flushing`: the follower applied it before the FLUSH arrived,
//! so its FLUSH_DONE without an error makes it durable there and `flushing` is emptied.
//! When the host flushes seldom, the leader sends a FLUSH of its own once a region has
//! waited [`PEER_FLUSH_EVERY`] ([`PeerUnflushed::flush_due`]), so the record, and the copy a
//! power loss costs, stays about a second of writes.
//! Whenever the peer's copy may be lost or is given up (this site serves alone, fences, or
//! a session other than a normal one starts), the engine adds both maps to the regions to
//! copy (dirty or suspect; [`PeerUnflushed::take_into`]).
//!
//! Invariants:
//! - Every region the follower acknowledged and has not flushed since is in `confirmed` or
//!   `flushing` (a region leaves only by a FLUSH_DONE without error of the tracked flush,
//!   sent after the acknowledgement, or by being handed to the engine's maps).
//! - At most one flush is tracked; FLUSH ids are op keys, which are reused, so the tracked id
//!   is forgotten when its session ends (its regions stay in `flushing` until the next
//!   tracked flush completes).
//! - Clearing costs the words touched since the last clear (up to [`TOUCHED_MAX`] ranges of
//!   them; past that, the whole map), never an allocation.

use super::region::RegionMap;

/// How often the leader flushes the follower on its own while regions wait.
pub(super) const PEER_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Word ranges remembered per map before a clear zeroes the whole map instead.
pub(super) const TOUCHED_MAX: usize = 256;

/// One map and the word ranges set in it since it was last cleared.
struct Tracked {
    map: RegionMap,
    touched: Vec<(usize, usize)>,
    overflow: bool,
}

impl Tracked {
    fn new(size: u64, granularity: u64) -> Self {
        Self {
            map: RegionMap::new(size, granularity),
            touched: Vec::with_capacity(TOUCHED_MAX),
            overflow: false,
        }
    }

    fn set(&mut self, offset: u64, len: u64) {
        if self.map.set_range(offset, len) == 0 {
            return;
        }
        let range = (
            self.map.word_of(offset),
            self.map.word_of(offset + len.max(1) - 1),
        );
        if self.touched.last() == Some(&range) {
            return;
        }
        if self.touched.len() < TOUCHED_MAX {
            self.touched.push(range);
        } else {
            self.overflow = true;
        }
    }

    fn or_from(&mut self, other: &Tracked) {
        if other.map.none() {
            return;
        }
        if other.overflow {
            self.map.or_with(&other.map);
        } else {
            // Only the words set since `other` was cleared: a flush costs the writes it
            // covers, not the volume's size.
            for &(first, last) in &other.touched {
                self.map.or_words(&other.map, first, last);
            }
        }
        if self.overflow || other.overflow || self.touched.len() + other.touched.len() > TOUCHED_MAX
        {
            self.overflow = true;
        } else {
            self.touched.extend_from_slice(&other.touched);
        }
    }

    fn clear(&mut self) {
        if self.overflow {
            let words = self.map.words().len();
            if words > 0 {
                self.map.zero_words(0, words - 1);
            }
        } else {
            for &(first, last) in &self.touched {
                self.map.zero_words(first, last);
            }
        }
        self.touched.clear();
        self.overflow = false;
        debug_assert!(self.map.none());
    }
}

/// The regions the follower confirmed and may not have made durable (see the module doc).
pub(super) struct PeerUnflushed {
    confirmed: Tracked,
    flushing: Tracked,
    /// The id of the tracked FLUSH, this session.
    tracked: Option<u32>,
    /// When the oldest region of `confirmed` entered it.
    since: Option<std::time::Instant>,
}

impl PeerUnflushed {
    pub(super) fn new(size: u64, granularity: u64) -> Self {
        Self {
            confirmed: Tracked::new(size, granularity),
            flushing: Tracked::new(size, granularity),
            tracked: None,
            since: None,
        }
    }

    /// Whether the leader should send a FLUSH of its own at `now`: no flush is tracked, and a
    /// region has waited [`PEER_FLUSH_EVERY`] for one.
    pub(super) fn flush_due(&self, now: std::time::Instant) -> bool {
        self.tracked.is_none()
            && self
                .since
                .is_some_and(|t| now.saturating_duration_since(t) >= PEER_FLUSH_EVERY)
    }

    /// The follower confirmed an update of `[offset, offset + len)`.
    pub(super) fn confirmed(&mut self, offset: u64, len: u64) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
        }
        self.confirmed.set(offset, len);
    }

    /// A FLUSH with `id` was sent to the follower: it covers everything confirmed so far
    /// (unless an earlier flush is still tracked).
    pub(super) fn flush_sent(&mut self, id: u32) {
        if self.tracked.is_some() {
            return;
        }
        self.flushing.or_from(&self.confirmed);
        self.confirmed.clear();
        self.since = None;
        self.tracked = Some(id);
    }

    /// FLUSH_DONE for `id` came (`ok`: without an error).
    pub(super) fn flush_done(&mut self, id: u32, ok: bool) {
        if self.tracked != Some(id) {
            return;
        }
        self.tracked = None;
        if ok {
            self.flushing.clear();
        } else {
            self.wait_again();
        }
    }

    /// The session ended: the tracked flush's answer will not come.
    pub(super) fn session_ended(&mut self) {
        if self.tracked.take().is_some() {
            self.wait_again();
        }
    }

    /// Regions a flush was to cover wait for the next one (due a second from now).
    fn wait_again(&mut self) {
        if !self.flushing.map.none() && self.since.is_none() {
            self.since = Some(std::time::Instant::now());
        }
    }

    /// Bytes of the volume in the regions tracked.
    #[cfg(test)]
    pub(super) fn regions(&self) -> u64 {
        let mut m = self.confirmed.map.clone();
        m.or_with(&self.flushing.map);
        m.count()
    }

    /// Add every tracked region to `map` (the peer's copy may be lost, or is given up) and
    /// forget them.
    pub(super) fn take_into(&mut self, map: &mut RegionMap) {
        self.copy_into(map);
        self.forget();
    }

    /// Forget every tracked region (handed over to the engine's maps).
    pub(super) fn forget(&mut self) {
        self.confirmed.clear();
        self.flushing.clear();
        self.since = None;
        self.tracked = None;
    }

    /// Add every tracked region to `map`, keeping them.
    pub(super) fn copy_into(&self, map: &mut RegionMap) {
        map.or_with(&self.confirmed.map);
        map.or_with(&self.flushing.map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 65536;

    #[test]
    fn only_a_flush_sent_after_the_acknowledgement_and_answered_well_forgets_it() {
        let mut p = PeerUnflushed::new(1 << 30, G);
        p.confirmed(0, 4096);
        p.flush_sent(7);
        p.confirmed(G, 4096); // after the FLUSH went: not covered by it
        p.flush_sent(8); // 7 is still tracked: 8 covers nothing more
        assert_eq!(p.regions(), 2);
        p.flush_done(8, true);
        assert_eq!(p.regions(), 2, "an untracked answer forgets nothing");
        p.flush_done(7, false);
        assert_eq!(p.regions(), 2, "a failed flush forgets nothing");
        p.flush_sent(9);
        p.flush_done(9, true);
        assert_eq!(p.regions(), 0);
    }

    #[test]
    fn a_flush_of_its_own_is_due_once_a_region_waited_a_second() {
        let mut p = PeerUnflushed::new(1 << 30, G);
        let later = || std::time::Instant::now() + PEER_FLUSH_EVERY;
        assert!(!p.flush_due(later()), "nothing waits");
        p.confirmed(0, 4096);
        assert!(!p.flush_due(std::time::Instant::now()), "it just came");
        assert!(p.flush_due(later()));
        p.flush_sent(1);
        assert!(
            !p.flush_due(later()),
            "one is tracked, and nothing waits for the next"
        );
        p.confirmed(G, 4096);
        assert!(!p.flush_due(later()), "one is tracked");
        p.flush_done(1, true);
        assert!(p.flush_due(later()));
        let mut m = RegionMap::new(1 << 30, G);
        p.take_into(&mut m);
        assert!(!p.flush_due(later()), "handed over");
    }

    #[test]
    fn regions_a_lost_or_failed_flush_was_to_cover_wait_for_the_next_one() {
        let later = || std::time::Instant::now() + PEER_FLUSH_EVERY;
        for failed in [false, true] {
            let mut p = PeerUnflushed::new(1 << 30, G);
            p.confirmed(0, 4096);
            p.flush_sent(1);
            assert!(!p.flush_due(later()));
            if failed {
                p.flush_done(1, false);
            } else {
                p.session_ended();
            }
            assert!(p.flush_due(later()), "failed: {failed}");
            p.flush_sent(2);
            p.flush_done(2, true);
            assert_eq!(p.regions(), 0);
            assert!(!p.flush_due(later()));
        }
    }

    #[test]
    fn an_ended_session_keeps_the_regions_and_the_next_flush_covers_them() {
        let mut p = PeerUnflushed::new(1 << 30, G);
        p.confirmed(3 * G, 2 * G);
        p.flush_sent(1);
        p.session_ended();
        p.flush_done(1, true);
        assert_eq!(p.regions(), 2, "the answer of an ended session's flush");
        let mut m = RegionMap::new(1 << 30, G);
        p.copy_into(&mut m);
        assert_eq!(m.count(), 2);
        p.flush_sent(1);
        p.flush_done(1, true);
        assert_eq!(p.regions(), 0);
    }

    #[test]
    fn taking_hands_over_every_region_and_clears_past_the_touched_limit_too() {
        let mut p = PeerUnflushed::new(1 << 40, G);
        // More scattered regions than touched ranges are kept.
        for i in 0..(TOUCHED_MAX as u64 * 2) {
            p.confirmed(i * 64 * G * 3, 4096);
        }
        p.flush_sent(1);
        for i in 0..10 {
            p.confirmed(i * 64 * G * 5 + G, 4096);
        }
        let n = p.regions();
        assert_eq!(n, TOUCHED_MAX as u64 * 2 + 10);
        let mut m = RegionMap::new(1 << 40, G);
        p.take_into(&mut m);
        assert_eq!(m.count(), n);
        assert_eq!(p.regions(), 0);
        // And the maps are usable again.
        p.confirmed(0, 1);
        assert_eq!(p.regions(), 1);
    }
}
