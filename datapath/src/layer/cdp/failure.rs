//! What the layer does when the base, or a file of its own, fails, and what it must know to
//! say so truthfully (docs/cdp-format.md, "Degraded mode", "After a crash: the tail against
//! the base"): the journal's stop (degraded mode: `degraded.map` written before any update
//! completes without its record), a base update or flush that fails while the history goes
//! on (the journal stops) or after it ended (its end comes down), the base flushes the layer
//! makes itself, and the mark a new segment's header keeps.
//!
//! Invariant: no point the map calls whole holds a record whose update the base may not hold:
//! one that failed, one a failed flush may have dropped, one still to come.

use super::{CdpChannel, Pending, clock};
use crate::bdev::{LOWER_SLOT, Start};
use crate::uring::{Errno, IoCx, IoTag};
use slab::Slab;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// How often a failed write of "the journal stopped" into `degraded.map` is tried again.
const MAP_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl CdpChannel {
    /// The journal stopped: write `degraded.map`'s "stopped" state before any update completes
    /// without its record, and remember the regions of the updates in flight whose records are
    /// not durable (docs/cdp-format.md, "Degraded mode").
    pub(super) fn degrade(&mut self) {
        if self.regions.active || !self.journal.stopped() {
            return;
        }
        // Switched on at run time and not whole yet: the history is whole only up to
        // where it was before.
        let (after, after_time) = [
            self.vouched.unvouched,
            self.whole_after,
            self.base_failed,
            Some(self.journal.whole_until()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_default();
        let now = clock::now();
        if let Err(e) = self.regions.stopped(after, after_time, now) {
            tracing::error!(error = %e, "cdp: cannot record that the journal stopped; if this site crashes now, the next start cannot tell which regions changed; trying again every second");
            self.map_retry = Some((Instant::now() + MAP_RETRY, (after, after_time, now)));
        }
        for (_, p) in self.ops.iter() {
            if p.last_seq > after || p.last_seq == 0 {
                self.regions.mark(p.range.0, p.range.1 - p.range.0);
            }
        }
        // `sync = "flush"`: records written but never synced (their updates may have been
        // acknowledged) are not part of the whole history either.
        for (o, l) in self.journal.unsynced() {
            self.regions.mark(o, l);
        }
        if self.flush_failed {
            self.regions.mark(0, self.size);
        }
        self.stats
            .changed_regions
            .store(self.regions.marked(), Relaxed);
        self.stats.stopped_at.store(now, Relaxed);
        tracing::warn!(
            after,
            "cdp: degraded: tracking changed regions only until the next start"
        );
    }

    /// The last record such that every update with a record up to it has its base operation
    /// done, and a time before the next record's (what a flush issued now makes durable): the
    /// record before the oldest update in flight's, or the last record. An O(updates in
    /// flight) walk, once per flush.
    pub(super) fn done_before(&self) -> (u64, u64) {
        self.ops
            .iter()
            .filter(|(_, p)| p.base.is_none() && p.last_seq > 0 && p.range.0 < p.range.1)
            .map(|(_, p)| p.before)
            .min()
            .unwrap_or((self.journal.last_seq(), self.journal.last_time()))
    }

    /// The done watermark (docs/cdp-format.md, "Readers of a running history: the done
    /// watermark"): the last record such that every update with a record up to it had its base
    /// operation complete successfully, and a time before the next record's. The record before
    /// the oldest update whose base operation is not done ([`CdpChannel::done_before`]), never
    /// past the first failed one.
    pub(super) fn done_upto(&self) -> (u64, u64) {
        let d = if self.ops.is_empty() {
            (self.journal.last_seq(), self.journal.last_time())
        } else {
            self.done_before()
        };
        self.failed_floor.map_or(d, |f| f.min(d))
    }

    /// Move the published done watermark once per turn in which an update's base operation
    /// completed or a record was journaled: an O(updates in flight) walk and, when it moved,
    /// one atomic store into the file's mapping (no system call).
    pub(super) fn publish_done(&mut self) {
        let last = self.journal.last_seq();
        if !self.done_stale && last == self.done_seen {
            return;
        }
        self.done_stale = false;
        self.done_seen = last;
        let (seq, time) = self.done_upto();
        if let Some(p) = &mut self.watermark {
            p.set(seq);
        }
        self.stats.published(seq, time);
    }

    /// A base update failed after the history had already ended (the journal stopped, or CDP
    /// switched off) while its record lies before that end (`before`: the record before it,
    /// [`Pending::before`]): the map's end comes down to it (written now, or by the stop's
    /// write still to be retried), and its range counts as changed.
    pub(super) fn lower_end(&mut self, before: (u64, u64), range: (u64, u64)) {
        if self.regions.active {
            self.regions.mark(range.0, range.1 - range.0);
            self.stats
                .changed_regions
                .store(self.regions.marked(), Relaxed);
        }
        if let Some((_, r)) = &mut self.map_retry
            && before.0 < r.0
        {
            (r.0, r.1) = before;
        }
        if let Some(Err(e)) = self.regions.lower(before.0, before.1) {
            tracing::error!(error = %e, after = before.0, "cdp: cannot lower where degraded.map says the history is whole after a late base failure; trying again every second");
            self.lower_retry = Some(Instant::now() + MAP_RETRY);
        }
    }

    /// Write "the journal stopped" (or a lowered end) into the map again if it failed and it
    /// is time to ([`MAP_RETRY`]); true when it tried.
    pub(super) fn retry_map(&mut self, now: Instant) -> bool {
        if let Some(at) = self.lower_retry
            && now >= at
        {
            let to = self.base_failed.unwrap_or_default();
            self.lower_retry = match self.regions.lower(to.0, to.1) {
                Some(Err(_)) => Some(now + MAP_RETRY),
                _ => None,
            };
            return true;
        }
        let Some((at, (after, after_time, stopped))) = self.map_retry else {
            return false;
        };
        if now < at {
            return false;
        }
        match self.regions.stopped(after, after_time, stopped) {
            Ok(()) => {
                tracing::warn!(
                    after,
                    "cdp: degraded.map now records that the journal stopped"
                );
                self.map_retry = None;
            }
            Err(_) => self.map_retry = Some((now + MAP_RETRY, (after, after_time, stopped))),
        }
        true
    }

    /// The base operation of update `key` finished with `result`. One that failed after its
    /// record was journaled left a record the volume does not hold (the device kept what it
    /// had, or part of the update): the journal stops with the history whole up to the record
    /// before it, and its range counts as changed (degraded mode: the next start journals it
    /// again from the base), so no point after it is served with the record's content.
    pub(super) fn base_done(&mut self, io: &mut IoCx, key: usize, result: Result<(), Errno>) {
        let Some(p) = self.ops.get_mut(key) else {
            return;
        };
        p.base = Some(result);
        self.done_stale = true;
        if p.range.0 >= p.range.1 {
            // A flush of the base.
            let covered = p.before;
            match result {
                Ok(()) => self.flushed = self.flushed.max(covered),
                Err(e) => self.flush_failed(io, e),
            }
        } else if let Err(e) = result
            && p.last_seq > 0
        {
            let (before, range) = (p.before, p.range);
            self.base_failed = Some(self.base_failed.map_or(before, |b| b.min(before)));
            // Never done: readers of the running history never take its record.
            self.failed_floor = Some(self.failed_floor.map_or(before, |b| b.min(before)));
            if self.off || self.journal.stopped() {
                // The history ended already, maybe after this record.
                self.lower_end(before, range);
                self.try_complete(key);
                return;
            }
            self.journal.stop(
                io,
                &format!(
                    "the base failed an update of bytes {}..{} (errno {}) whose record is journaled: the history is whole only up to sequence {}",
                    range.0, range.1, e.0, before.0
                ),
            );
        }
        self.try_complete(key);
    }

    /// A stop gave up waiting (its deadline passed, `abort`) and failed to their callers the
    /// updates whose base operations are not done: the volume may never hold them (a device
    /// hung on one keeps the process from exiting until it is killed). They count as failed base updates ([`Self::base_done`]):
    /// `degraded.map` says the history is whole only up to the record before the oldest, and
    /// their ranges (and those of the updates journaled after it) changed, so no point after it
    /// serves their records and the next start journals those regions again. Before session
    /// 28 nothing said so: their records were read as after a crash, the newest point until
    /// the next start's comparison (docs/cdp-format.md, "Readers of a running history").
    pub(super) fn fail_unfinished(&mut self) {
        let failed: Vec<((u64, u64), (u64, u64))> = self
            .ops
            .iter()
            .filter(|(_, p)| p.base.is_none() && p.last_seq > 0 && p.range.0 < p.range.1)
            .map(|(_, p)| (p.before, p.range))
            .collect();
        let Some(before) = failed.iter().map(|f| f.0).min() else {
            return;
        };
        tracing::warn!(
            updates = failed.len(),
            after = before.0,
            "cdp: the stop leaves updates whose base operations are not done (failed to their callers): the history is whole only up to the record before the oldest"
        );
        self.base_failed = Some(self.base_failed.map_or(before, |b| b.min(before)));
        if self.off || self.regions.active {
            for (b, r) in failed {
                self.lower_end(b, r);
            }
            return;
        }
        let (after, after_time) = [self.vouched.unvouched, self.whole_after, self.base_failed]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(before);
        if let Err(e) = self.regions.stopped(after, after_time, clock::now()) {
            tracing::error!(error = %e, "cdp: cannot record in degraded.map that the stop failed updates in flight");
        }
        for (_, p) in self.ops.iter() {
            if p.last_seq > after || p.last_seq == 0 {
                self.regions.mark(p.range.0, p.range.1 - p.range.0);
            }
        }
        for (_, r) in failed {
            self.regions.mark(r.0, r.1 - r.0);
        }
    }

    /// Flush the base once per segment, unasked (no caller waits for it): the writes done before
    /// it then count as durable in the device (`flushed`), so the mark of the segments after
    /// the next ([`base_low`]) need not reach back before them however seldom the hosts flush
    /// (a power loss may drop a device's unflushed writes while their records survive: the
    /// comparison after it starts at the mark). A failure stops the journal as a host's flush
    /// does. Not once the history has ended.
    pub(super) fn own_flush(&mut self, io: &mut IoCx) {
        let before = self.done_before();
        if self.off || self.journal.stopped() || before.0 <= self.flushed.0 {
            return;
        }
        let key = self.ops.insert(Pending {
            from: self.reactor,
            tag: IoTag::channel(self.vol, 0),
            last_seq: 0,
            base: None,
            answered: true,
            range: (0, 0),
            sync: false,
            before,
        });
        let own = IoTag::channel(self.vol, LOWER_SLOT | key as u32);
        if let Start::Done(r) = self.inner.flush(io, own) {
            self.base_done(io, key, r);
        }
    }

    /// The base failed a flush: writes done since the last completed flush may not be durable
    /// in it, and which ones is not kept. The history is whole only up to that flush's
    /// coverage (`flushed`) and the whole volume counts as changed (journaled again at the
    /// next start): the journal stops, or, when the history had ended already, its end comes
    /// down.
    pub(super) fn flush_failed(&mut self, io: &mut IoCx, e: Errno) {
        let to = self.flushed;
        self.base_failed = Some(self.base_failed.map_or(to, |b| b.min(to)));
        self.flush_failed = true;
        if self.off || self.journal.stopped() {
            self.lower_end(to, (0, self.size));
        } else {
            self.journal.stop(
                io,
                &format!(
                    "the base failed a flush (errno {}): writes since the last completed flush may not be durable in it; the history is whole only up to sequence {}, and the next start journals the whole volume again",
                    e.0, to.0
                ),
            );
        }
    }
}

/// The first sequence whose update's base operation is not done: the first record of the
/// oldest such update in flight (held or issued), or `next` (the next record's) when none is.
/// An O(updates in flight) walk, asked only at a segment switch. (The mark a segment header
/// keeps is the lower of this and the first record no completed base flush covers.)
pub(super) fn base_low(ops: &Slab<Pending>, next: u64) -> u64 {
    ops.iter()
        .filter(|(_, p)| p.base.is_none() && p.last_seq > 0 && p.range.0 < p.range.1)
        .map(|(_, p)| p.before.0 + 1)
        .min()
        .map_or(next, |l| l.min(next))
}
