//! Resync: the source's walk over its dirty regions ([`ResyncSource`]) and the target's count
//! of copies still to apply ([`ResyncTarget`]).
//!
//! Model: a survivor (or the sender of a first sync) copies its dirty regions to the
//! returning peer within a rate limit, then sends RESYNC_DONE, and mirrors again once the
//! target confirms it (RESYNC_DONE_ACK: every copy is applied there). The source
//! walks the dirty [`RegionMap`] (the engine's, lent to [`ResyncSource::next`]) with a
//! cursor, clears each bit as it is read and records it in the attempt's `copied` map; it
//! says, one step at a time, what the engine does next ([`Next`]): read a region (through the
//! apply queue, so a copy holds every write acknowledged before it), finish, or stop for this
//! tick. Updates that arrive during the last pass wait (deferred) so the dirty set drains to
//! empty. The target counts the copies it applies and ends once RESYNC_DONE came and none is
//! left.
//!
//! Invariants:
//! - A region copied by an attempt that ends before RESYNC_DONE_ACK is dirty again
//!   ([`ResyncSource::abandon`]): until the target confirms, the source is still the survivor
//!   (grant and persisted state kept, updates deferred), so a lost RESYNC_DONE, a lost last
//!   copy or a lost confirmation only means copying the attempt's regions again.
//! - The last pass starts only once the target's suspect list has ended (RESYNC_ALSO with no
//!   range); the resync finishes only after a whole last pass found nothing dirty, no read in
//!   flight and no write of this site's initiators being applied.
//! - At most 16 region reads are in flight; the budget never exceeds 50 ms of the rate plus
//!   one region.
//! - A region this replica cannot read ([`ResyncSource::read_failed`]), or a failed flush
//!   before RESYNC_DONE ([`ResyncSource::flush_failed`]), never ends the attempt nor the
//!   service: the source is the volume's only whole copy. The region stays in `copied` (so
//!   it is dirty in the persisted state and after an abandon), waits in `unreadable` until a
//!   read of it succeeds, and is read again [`RETRY`] later; no last pass starts while any
//!   region is unreadable or a retried read of one is in flight (updates are never held
//!   behind a read that may fail again, slowly) and RESYNC_DONE is not sent.
//! - The last pass holds the hosts' writes only behind reads that are not slow: once a read
//!   in flight has taken [`ResyncSource::hold_limit`] (half the peer timeout), the last pass
//!   ends and its deferred updates go ahead alone ([`ResyncSource::release_if_slow`]), and
//!   no last pass starts while such a read is in flight (a slow device at the source would
//!   otherwise make its hosts' writes, to any region, fail at the peer timeout). A closing
//!   flush that has taken that long is given up as a failed one; only the attempt's current
//!   flush (`flush_op`) may send RESYNC_DONE.

use super::RegionMap;
use std::collections::VecDeque;
use std::time::Instant;

/// Region reads in flight at most.
const MAX_READS: u32 = 16;

/// How long an unreadable region, or a failed flush before RESYNC_DONE, waits before it is
/// tried again.
pub(super) const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// What the resync source does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Read this region (through the apply queue) and send it.
    Read { offset: u64, len: u64 },
    /// Nothing is left: flush this replica, then send RESYNC_DONE (and mirror again once the
    /// target confirms it).
    Finish,
    /// Nothing more this tick (budget, reads in flight, or waiting for the target's list, for
    /// reads or for writes).
    Stop,
}

/// The survivor's side of a resync.
pub(super) struct ResyncSource {
    /// Next bitmap bit to look at in this pass.
    cursor: u64,
    /// Region reads in flight: each one's offset and start.
    reading: Vec<(u64, Instant)>,
    /// How long the last pass holds the hosts' writes behind a read in flight (the engine
    /// sets half its peer timeout).
    pub(super) hold_limit: std::time::Duration,
    /// Last pass: new updates wait (deferred) so the dirty set can drain to empty.
    last_pass: bool,
    pub(super) deferred: VecDeque<usize>,
    /// Byte budget of the rate limiter.
    budget: f64,
    last_refill: Instant,
    started: Instant,
    total: u64,
    /// The target's list of suspect regions has ended (RESYNC_ALSO with no range): only then
    /// may the last pass start.
    also_done: bool,
    /// Regions copied in this attempt: dirty again if it is interrupted (they may not have
    /// arrived).
    pub(super) copied: RegionMap,
    /// Nothing more to copy: this replica's flush is under way (so what this site wrote
    /// alone is durable here before the target forgets nothing is missing), RESYNC_DONE
    /// follows when it succeeds.
    flushing: bool,
    /// When the closing flush was decided, and the engine's op for it: only that op's answer
    /// is this attempt's (one given up as slow, [`Self::release_if_slow`], may end later).
    flushing_since: Option<Instant>,
    pub(super) flush_op: Option<usize>,
    /// RESYNC_DONE is sent: nothing more to copy, waiting for the target's confirmation.
    done_sent: bool,
    /// A source without a grant: RESYNC_DONE waits until this persister generation (its
    /// state saved as in sync, not as a survivor) is on disk.
    pub(super) done_gate: Option<u64>,
    /// Regions whose read failed in this attempt (also in `copied`): read again at
    /// `retry_at`, kept here until a read of them succeeds.
    unreadable: RegionMap,
    /// A read or the closing flush failed: no last pass, nothing finishes, before then.
    retry_at: Option<Instant>,
}

impl ResyncSource {
    /// An attempt starting at `now` over a volume of `size` bytes, `g` bytes per region.
    pub(super) fn new(size: u64, g: u64, now: Instant) -> Self {
        Self {
            cursor: 0,
            reading: Vec::new(),
            hold_limit: std::time::Duration::from_secs(5),
            last_pass: false,
            deferred: VecDeque::new(),
            budget: 0.0,
            last_refill: now,
            started: now,
            total: 0,
            also_done: false,
            copied: RegionMap::new(size, g),
            flushing: false,
            flushing_since: None,
            flush_op: None,
            done_sent: false,
            done_gate: None,
            unreadable: RegionMap::new(size, g),
            retry_at: None,
        }
    }

    /// The read of a region of this attempt failed at `now`: kept (in `copied`) to be read
    /// again [`RETRY`] later; the last pass, if it ran, ends, and the updates it held are
    /// returned (they go ahead alone: the attempt cannot end before the retry).
    pub(super) fn read_failed(&mut self, offset: u64, len: u64, now: Instant) -> VecDeque<usize> {
        self.unreadable.set_range(offset, len);
        self.stall(now)
    }

    /// The flush before RESYNC_DONE failed at `now`: tried again [`RETRY`] later (RESYNC_DONE
    /// only follows a good one); returns the held updates, as [`Self::read_failed`].
    pub(super) fn flush_failed(&mut self, now: Instant) -> VecDeque<usize> {
        self.flushing = false;
        self.stall(now)
    }

    /// The read of the region at `offset` (regions of `g` bytes) succeeded: readable again.
    pub(super) fn read_ok(&mut self, offset: u64, g: u64) {
        if !self.unreadable.none() {
            self.unreadable.clear_bit(offset / g);
        }
    }

    fn stall(&mut self, now: Instant) -> VecDeque<usize> {
        self.retry_at = Some(now + RETRY);
        self.last_pass = false;
        std::mem::take(&mut self.deferred)
    }

    /// Bytes of this attempt's regions that could not be read (waiting for their retry).
    pub(super) fn unreadable_bytes(&self) -> u64 {
        self.unreadable.bytes()
    }

    /// Retry what failed at the next step (tests).
    #[cfg(test)]
    pub(super) fn retry_now(&mut self) {
        if self.retry_at.is_some() {
            self.retry_at = Some(Instant::now());
        }
    }

    /// Nothing is left to copy and this replica's flush started: no more steps until it is
    /// done (then [`ResyncSource::done_sent`]; a failed one never finishes the attempt).
    pub(super) fn flush_started(&mut self) {
        self.flushing = true;
    }

    /// RESYNC_DONE is sent: from now on the attempt only waits for RESYNC_DONE_ACK.
    pub(super) fn done_sent(&mut self) {
        self.done_sent = true;
    }

    /// RESYNC_DONE is sent and not yet confirmed.
    pub(super) fn awaiting_ack(&self) -> bool {
        self.done_sent
    }

    /// In the last pass, an update of this site's initiator waits (`k` kept, true) until the
    /// resync is done; otherwise false (it goes ahead alone).
    pub(super) fn defer(&mut self, k: usize) -> bool {
        debug_assert!(!(self.last_pass && self.retry_at.is_some()));
        if self.last_pass {
            self.deferred.push_back(k);
        }
        self.last_pass
    }

    /// Update `k` is no longer deferred (its initiator's timeout passed: answered and freed
    /// by the engine); false when it was not.
    pub(super) fn undefer(&mut self, k: usize) -> bool {
        match self.deferred.iter().position(|&d| d == k) {
            Some(i) => {
                self.deferred.remove(i);
                true
            }
            None => false,
        }
    }

    /// The daemon stops: the deferred updates were answered (with EIO); forget them.
    pub(super) fn drop_deferred(&mut self) {
        self.deferred.clear();
    }

    /// The read of this attempt's region at `offset` finished.
    pub(super) fn read_done(&mut self, offset: u64) {
        // (Reads of one region complete in the order they started: the apply queue orders
        // them.)
        let oldest = self
            .reading
            .iter()
            .enumerate()
            .filter(|(_, (o, _))| *o == offset)
            .min_by_key(|(_, (_, t))| *t)
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            self.reading.swap_remove(i);
        }
    }

    /// A read in flight has taken [`Self::hold_limit`] by `now`.
    fn slow_read(&self, now: Instant) -> bool {
        self.reading
            .iter()
            .any(|&(_, t)| now.saturating_duration_since(t) >= self.hold_limit)
    }

    /// In the last pass, before its end (nothing flushing or sent), a read in flight has
    /// been slow (see the module doc): the last pass ends, and the updates it held are
    /// returned, to go ahead alone. Likewise a closing flush that has taken the hold limit:
    /// given up as a failed one is ([`Self::flush_failed`]: tried again [`RETRY`] later,
    /// RESYNC_DONE only after a good one), its late answer no longer this attempt's.
    pub(super) fn release_if_slow(&mut self, now: Instant) -> VecDeque<usize> {
        if self.last_pass && !self.flushing && !self.done_sent && self.slow_read(now) {
            self.last_pass = false;
            return std::mem::take(&mut self.deferred);
        }
        let slow_flush = self
            .flushing_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.hold_limit);
        if self.flushing && !self.done_sent && slow_flush {
            self.flush_op = None;
            return self.flush_failed(now);
        }
        VecDeque::new()
    }

    /// The last pass runs (new updates wait for it): never paused.
    pub(super) fn in_last_pass(&self) -> bool {
        self.last_pass
    }

    /// The target is still listing its suspect regions (RESYNC_ALSO is taken).
    pub(super) fn listing(&self) -> bool {
        !self.also_done
    }

    /// The target's list ended (RESYNC_ALSO with no range).
    pub(super) fn list_ended(&mut self) {
        self.also_done = true;
    }

    /// Refill the rate budget at `now` (`rate` bytes per second, regions of `g` bytes).
    pub(super) fn refill(&mut self, now: Instant, rate: u64, g: u64) {
        let rate = rate as f64;
        let dt = now.duration_since(self.last_refill).as_secs_f64();
        self.last_refill = now;
        self.budget = (self.budget + rate * dt).min(rate * 0.05 + g as f64);
    }

    /// The next step at `now` over `dirty` (regions of `g` bytes, volume of `size`);
    /// `writes_in_flight` says whether writes of this site's initiators are being applied
    /// (asked only when nothing else holds the end back).
    pub(super) fn next(
        &mut self,
        dirty: &mut RegionMap,
        g: u64,
        size: u64,
        now: Instant,
        writes_in_flight: impl FnOnce() -> bool,
    ) -> Next {
        if self.done_sent
            || self.flushing
            || self.budget <= 0.0
            || self.reading.len() >= MAX_READS as usize
        {
            return Next::Stop;
        }
        let Some(b) = dirty.next_set(self.cursor) else {
            // End of a pass.
            self.cursor = 0;
            if !self.also_done {
                // The target's suspect regions are still coming: no last pass yet.
                return Next::Stop;
            }
            if let Some(t) = self.retry_at {
                // A read or the flush failed: nothing ends before the retry, which reads the
                // unreadable regions again (the next pass).
                if now >= t {
                    self.retry_at = None;
                    dirty.or_with(&self.unreadable);
                }
                return Next::Stop;
            }
            if !self.unreadable.none() {
                // A retried read still in flight (or its region dirty again): no last pass
                // behind it.
                return Next::Stop;
            }
            if self.slow_read(now) {
                // A slow read in flight: no last pass (it would hold the hosts' writes
                // behind it; one running ended with `release_if_slow`).
                return Next::Stop;
            }
            let empty = dirty.none();
            if !empty || !self.reading.is_empty() {
                // A whole pass is done: the next is the last one, new updates wait. (Waiting
                // for the copies in flight without it never ended under a writer that keeps
                // the same regions dirty: every pass ended with the map empty and its last
                // copy in flight, so the last pass never began.)
                self.last_pass = true;
                return Next::Stop;
            }
            let writes = writes_in_flight();
            if !self.last_pass {
                self.last_pass = true;
                return Next::Stop;
            }
            if writes {
                return Next::Stop;
            }
            self.flushing_since = Some(now);
            return Next::Finish;
        };
        self.cursor = b + 1;
        dirty.clear_bit(b);
        let offset = b * g;
        let len = g.min(size - offset);
        self.copied.set_range(offset, len);
        self.reading.push((offset, now));
        self.budget -= len as f64;
        self.total += len;
        Next::Read { offset, len }
    }

    /// Bytes per second copied so far (at least 1).
    pub(super) fn rate(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        ((self.total as f64 / secs) as u64).max(1)
    }

    /// The attempt ended with its session: every region it copied is dirty again (the copies
    /// may not have arrived). Returns the deferred updates (to go ahead alone).
    pub(super) fn abandon(self, dirty: &mut RegionMap) -> VecDeque<usize> {
        dirty.or_with(&self.copied);
        self.deferred
    }

    /// The target confirmed the resync: (bytes copied, seconds taken, the deferred updates, to
    /// mirror).
    pub(super) fn finish(self) -> (u64, f64, VecDeque<usize>) {
        (
            self.total,
            self.started.elapsed().as_secs_f64(),
            self.deferred,
        )
    }
}

/// The returning site's side of a resync: copies being applied, RESYNC_DONE, and the flush
/// of the replica that makes the copies durable before the site says it is in sync (its
/// device's cache may hold them; the source forgets the regions it copied once it hears
/// so, and a power loss would then leave them lost at this site with nobody to copy them).
#[derive(Default)]
pub(super) struct ResyncTarget {
    /// Resync copies still being applied.
    applies: u32,
    /// RESYNC_DONE received.
    done: bool,
    /// The source's witness grant epoch, from its RESYNC_DONE (0: none).
    pub(super) source_epoch: u64,
    /// The generation of this site's "resyncing" state (0: none to wait for), and the copies
    /// that came before it was on disk, applied once it is, in arrival order: until then the
    /// state file says what the site was before (fenced, in sync), and a crash with copies
    /// applied would restart it so with a half-copied replica (`Engine::take_copy`).
    pub(super) gate: u64,
    pub(super) waiting: VecDeque<(super::Header, Vec<u8>)>,
    /// The replica's flush after the last copy: started, and finished well.
    flushing: bool,
    flushed: bool,
    /// Restored from a state saved as resyncing (restore.rs), or fenced out of a resync it
    /// received (its replica failed; `Engine::set_mode`): the replica is half-copied, so the
    /// site, fenced, announces and saves state 3 until its mode changes or a resync to it
    /// starts (never 2: the leader of two fenced sites is the source of their session).
    pub(super) half_copied: bool,
}

impl ResyncTarget {
    /// A resync from the peer starts.
    pub(super) fn start(&mut self) {
        *self = Self::default();
    }

    /// RESYNC_DONE came.
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    /// A copy arrived and is being applied.
    pub(super) fn copy_started(&mut self) {
        self.applies += 1;
    }

    /// A copy of this attempt was applied.
    pub(super) fn copy_applied(&mut self) {
        self.applies = self.applies.saturating_sub(1);
    }

    /// RESYNC_DONE came.
    pub(super) fn done_received(&mut self, source_epoch: u64) {
        self.done = true;
        self.source_epoch = source_epoch;
    }

    /// RESYNC_DONE came and every copy is applied: the replica's flush is to start now.
    pub(super) fn flush_due(&self) -> bool {
        self.done && self.applies == 0 && !self.flushing
    }

    /// The replica's flush started.
    pub(super) fn flush_started(&mut self) {
        self.flushing = true;
    }

    /// The replica's flush finished (`ok`: the copies are durable; else the replica failed
    /// and the resync never completes).
    pub(super) fn flush_done(&mut self, ok: bool) {
        self.flushed = ok;
    }

    /// RESYNC_DONE came, every copy is applied, and the replica flushed them.
    pub(super) fn complete(&self) -> bool {
        self.done && self.applies == 0 && self.flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 4096;

    fn source(now: Instant) -> ResyncSource {
        let mut r = ResyncSource::new(16 * G, G, now);
        r.refill(now, 1 << 30, G);
        r
    }

    #[test]
    fn copies_every_dirty_region_then_finishes_after_a_last_pass() {
        let t = Instant::now();
        let mut r = source(t);
        r.refill(t + std::time::Duration::from_secs(1), 1 << 30, G);
        let mut dirty = RegionMap::new(16 * G, G);
        dirty.set_range(G, 2 * G);
        dirty.set_range(15 * G, G);
        let mut reads = Vec::new();
        while let Next::Read { offset, len } = r.next(&mut dirty, G, 16 * G, t, || false) {
            reads.push((offset, len));
        }
        assert_eq!(reads, vec![(G, G), (2 * G, G), (15 * G, G)]);
        assert!(dirty.none());
        assert!(r.copied.test(15));
        // The target's list has not ended: no last pass.
        assert_eq!(r.next(&mut dirty, G, 16 * G, t, || false), Next::Stop);
        r.list_ended();
        for (offset, _) in reads {
            r.read_done(offset);
        }
        assert!(!r.defer(7), "not the last pass yet");
        assert_eq!(r.next(&mut dirty, G, 16 * G, t, || false), Next::Stop);
        assert!(r.defer(7), "the last pass");
        assert_eq!(
            r.next(&mut dirty, G, 16 * G, t, || true),
            Next::Stop,
            "writes"
        );
        assert_eq!(r.next(&mut dirty, G, 16 * G, t, || false), Next::Finish);
        let (total, _, deferred) = r.finish();
        assert_eq!((total, deferred), (3 * G, VecDeque::from([7])));
    }

    #[test]
    fn an_unreadable_region_ends_the_last_pass_and_waits_for_its_retry() {
        let t = Instant::now();
        let mut r = source(t);
        r.refill(t + std::time::Duration::from_secs(1), 1 << 30, G);
        r.list_ended();
        let mut dirty = RegionMap::new(16 * G, G);
        dirty.set_range(3 * G, G);
        // A first pass, then the last one, in which region 3 (written again) is read anew.
        assert_eq!(
            r.next(&mut dirty, G, 16 * G, t, || false),
            Next::Read {
                offset: 3 * G,
                len: G
            }
        );
        r.read_done(3 * G);
        assert_eq!(r.next(&mut dirty, G, 16 * G, t, || false), Next::Stop);
        assert!(r.defer(7), "the last pass");
        dirty.set_range(3 * G, G);
        assert_eq!(
            r.next(&mut dirty, G, 16 * G, t, || false),
            Next::Read {
                offset: 3 * G,
                len: G
            }
        );
        r.read_done(3 * G);
        // Its read fails: the held update goes ahead, nothing more is held.
        assert_eq!(r.read_failed(3 * G, G, t), VecDeque::from([7]));
        assert_eq!(r.unreadable_bytes(), G);
        assert!(!r.defer(8), "a last pass after a failed read");
        // Nothing ends, no last pass, until the retry.
        for _ in 0..3 {
            assert_eq!(r.next(&mut dirty, G, 16 * G, t, || false), Next::Stop);
            assert!(!r.defer(8));
        }
        assert!(
            dirty.none() && r.copied.test(3),
            "kept in the attempt's copied map"
        );
        // The retry reads it again; no last pass while that read is in flight (it may fail
        // again, slowly), nor after it until it succeeded.
        let later = t + RETRY;
        assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Stop);
        assert_eq!(
            r.next(&mut dirty, G, 16 * G, later, || false),
            Next::Read {
                offset: 3 * G,
                len: G
            }
        );
        for _ in 0..3 {
            assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Stop);
            assert!(!r.defer(8), "a last pass behind the retried read");
        }
        assert_eq!(r.unreadable_bytes(), G, "shown until a read succeeds");
        r.read_done(3 * G);
        r.read_ok(3 * G, G);
        assert_eq!(r.unreadable_bytes(), 0);
        assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Stop);
        assert!(r.defer(9), "the last pass");
        assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Finish);
        // The flush fails: held updates go, retried later, then finished.
        r.flush_started();
        assert_eq!(r.flush_failed(later), VecDeque::from([9]));
        assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Stop);
        let last = later + RETRY;
        assert_eq!(r.next(&mut dirty, G, 16 * G, last, || false), Next::Stop);
        assert_eq!(r.next(&mut dirty, G, 16 * G, last, || false), Next::Stop);
        assert_eq!(r.next(&mut dirty, G, 16 * G, last, || false), Next::Finish);
    }

    #[test]
    fn a_slow_read_ends_the_last_pass_and_none_starts_behind_it() {
        let t = Instant::now();
        let mut r = source(t);
        r.refill(t + std::time::Duration::from_secs(1), 1 << 30, G);
        r.list_ended();
        r.hold_limit = std::time::Duration::from_secs(5);
        let mut dirty = RegionMap::new(16 * G, G);
        dirty.set_range(3 * G, G);
        assert!(matches!(
            r.next(&mut dirty, G, 16 * G, t, || false),
            Next::Read { .. }
        ));
        // The pass ends with the read in flight: the last pass, an update held.
        assert_eq!(r.next(&mut dirty, G, 16 * G, t, || false), Next::Stop);
        assert!(r.defer(7));
        assert!(r.release_if_slow(t).is_empty(), "not slow yet");
        // The read takes the hold limit: the held update goes, none more is held while it
        // is in flight.
        let later = t + r.hold_limit;
        assert_eq!(r.release_if_slow(later), VecDeque::from([7]));
        for _ in 0..3 {
            assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Stop);
            assert!(!r.defer(8), "a last pass behind the slow read");
        }
        // It completes: the last pass, then the end.
        r.read_done(3 * G);
        assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Stop);
        assert!(r.defer(9));
        assert_eq!(r.next(&mut dirty, G, 16 * G, later, || false), Next::Finish);
    }

    #[test]
    fn the_budget_and_the_reads_in_flight_hold_it_back() {
        let t = Instant::now();
        let mut r = ResyncSource::new(64 * G, G, t);
        let mut dirty = RegionMap::all(64 * G, G);
        assert_eq!(
            r.next(&mut dirty, G, 64 * G, t, || false),
            Next::Stop,
            "no budget"
        );
        // 1 s at 1 GiB/s: capped at 50 ms of the rate plus a region.
        r.refill(t + std::time::Duration::from_secs(1), 1 << 30, G);
        let mut n = 0;
        while let Next::Read { .. } = r.next(&mut dirty, G, 64 * G, t, || false) {
            n += 1;
        }
        assert_eq!(n, MAX_READS, "reads in flight");
        // Abandoned: what it copied is dirty again.
        let deferred = r.abandon(&mut dirty);
        assert!(deferred.is_empty());
        assert_eq!(dirty.count(), 64);
    }

    #[test]
    fn the_target_ends_after_resync_done_its_last_copy_and_a_good_flush() {
        let mut t = ResyncTarget::default();
        t.copy_started();
        t.done_received(0);
        assert!(!t.complete() && !t.flush_due());
        t.copy_applied();
        assert!(
            t.flush_due() && !t.complete(),
            "the copies are not durable yet"
        );
        t.flush_started();
        assert!(!t.flush_due() && !t.complete(), "one flush");
        t.flush_done(true);
        assert!(t.complete());
        t.start();
        assert!(!t.is_done() && !t.complete());
        // A copy of an earlier attempt finishing late does not underflow.
        t.copy_applied();
        t.done_received(0);
        assert!(t.flush_due());
        t.flush_started();
        t.flush_done(false);
        assert!(
            !t.complete() && !t.flush_due(),
            "a failed flush never completes it"
        );
    }
}
