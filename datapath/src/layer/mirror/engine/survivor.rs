//! Serving alone: the survivor's dirty regions, the fence, suspect regions, and the witness
//! grant that decides between them.
//!
//! Model: without the peer, a site asks the witness (through its failover slot) for the
//! volume. Granted: it becomes the survivor, completes what it held, and records every region
//! it writes in the dirty [`RegionMap`] (kept counted, so a write costs the same on any volume
//! size). Denied or unreachable: it fences and records its unconfirmed updates as suspect.
//!
//! Invariants: a survivor's dirty map covers every region written since the peer was lost;
//! a fenced site's suspect map covers every update it applied that the peer never confirmed.

use super::*;

impl Engine {
    /// Survivor: an update done when the local replica has it.
    pub(super) fn survivor_apply(&mut self, io: &mut IoCx, k: usize) {
        self.ops[k].stage.confirm();
        let (o, l, upd) = (self.ops[k].offset, self.ops[k].len, self.ops[k].upd);
        if upd != Upd::Flush {
            self.mark_dirty(o, l);
        }
        self.enqueue_apply(io, k, 0, 0);
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bytes of the volume marked dirty (written while serving alone).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.bytes()
    }

    pub(super) fn mark_dirty(&mut self, offset: u64, len: u64) {
        self.dirty.set_range(offset, len);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes of the volume in suspect regions (updates applied here the peer never
    /// confirmed; see `suspect`).
    pub fn suspect_bytes(&self) -> u64 {
        self.suspect.bytes()
    }

    /// Add the regions of every update still tracked here (applied or possibly applied, and
    /// not confirmed by the peer, or just confirmed) to `map`.
    pub(super) fn unconfirmed_into(&self, map: &mut RegionMap) {
        for (_, op) in self.ops.iter() {
            if !matches!(op.upd, Upd::Flush | Upd::ResyncRead) {
                map.set_range(op.offset, op.len);
            }
        }
    }

    /// The suspect map, leaving an empty one.
    pub(super) fn take_suspect(&mut self) -> RegionMap {
        let empty = RegionMap::new(self.cfg.size, self.cfg.dirty_granularity);
        std::mem::replace(&mut self.suspect, empty)
    }

    /// This replica's copy wins (it serves alone or is a resync source): its suspect regions
    /// become dirty, to be copied to the peer.
    pub(super) fn absorb_suspect(&mut self) {
        if self.suspect.unallocated() {
            return;
        }
        let suspect = self.take_suspect();
        self.dirty.or_with(&suspect);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The peer is gone and the witness granted this site the volume: acknowledge alone from
    /// now on, finishing every held update, and record what the peer misses.
    pub(super) fn become_survivor(&mut self, io: &mut IoCx, epoch: u64) {
        self.grant_epoch = epoch;
        self.absorb_suspect();
        if let Some(slot) = &self.cfg.failover {
            slot.survivors
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.set_mode(Mode::Survivor);
        tracing::warn!(volume = %self.cfg.name, epoch, held = self.ops.len(),
            "mirror: survivor; this site acknowledges writes alone and records them for the peer's resync");
        // Updates waiting behind a compare-and-write go ahead alone (forwarded ones are the
        // lost peer's: dropped).
        let (waited, backlog) = self.leader.survive();
        for k in waited {
            if self.ops[k].origin == Origin::PeerFwd {
                let op = self.ops.remove(k);
                self.recycle(op.data);
            } else {
                self.survivor_apply(io, k);
            }
        }
        for k in backlog {
            let (o, l) = (self.ops[k].offset, self.ops[k].len);
            self.mark_dirty(o, l);
            self.ops[k].stage.confirm();
            self.settle(k);
        }
        for k in self.follower.take_all() {
            let (o, l) = (self.ops[k].offset, self.ops[k].len);
            self.mark_dirty(o, l);
            let op = &mut self.ops[k];
            op.stage.confirm();
            if op.applying == 0 && !op.applied {
                self.enqueue_apply(io, k, 0, 0);
            } else {
                self.settle(k);
            }
        }
        for k in std::mem::take(&mut self.flushes) {
            self.ops[k].stage.confirm();
            self.settle(k);
        }
        self.stats
            .backlog_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// No grant: fail everything held and serve no I/O.
    pub(super) fn fence(&mut self, why: &str) {
        // Updates applied here (or being applied) that the peer never confirmed may be on this
        // replica only: the survivor must copy those regions too when it resyncs this site.
        let mut suspect = self.take_suspect();
        self.unconfirmed_into(&mut suspect);
        self.suspect = suspect;
        self.set_mode(Mode::Fenced);
        tracing::error!(volume = %self.cfg.name, why, suspect_bytes = self.suspect_bytes(),
            "mirror: fenced; this site serves no I/O for the volume");
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        self.leader.fence();
        self.follower.take_all();
        self.flushes.clear();
        for k in keys {
            let op = &mut self.ops[k];
            op.stage.confirm();
            if let Some((from, tag)) = op.initiator.take() {
                self.done.push((from, tag, Err(Errno::IO)));
            }
            self.settle(k);
        }
    }

    /// Target: once RESYNC_DONE came and every copy is applied, serve I/O again.
    pub(super) fn maybe_end_resync_target(&mut self, io: &mut IoCx) {
        if self.mode == Mode::Resyncing && self.resync_done && self.resync_applies == 0 {
            self.new_replica = false;
            // The source copied them (it finishes only after the end of our list).
            self.suspect.clear();
            self.set_mode(Mode::Mirroring);
            tracing::warn!(volume = %self.cfg.name, "mirror: resync received; in sync, serving again");
            // Forwards that came after RESYNC_DONE, while copies were still being applied.
            if self.cfg.role == Role::Leader {
                self.release_barrier(io);
            }
        }
    }

    pub(super) fn failover_tick(&mut self, io: &mut IoCx) {
        use crate::layer::mirror::failover::{DENIED, GRANTED, UNREACHABLE};
        use std::sync::atomic::Ordering::SeqCst;
        let Some(slot) = self.cfg.failover.clone() else {
            return;
        };
        slot.in_sync
            .store(self.sess.up && self.mode == Mode::Mirroring, SeqCst);
        // Only a site that has had a session lost its peer; a site just started waits for
        // its first session (it must not win a grant against a peer it has never seen) unless
        // an operator asked it to take over (`mirror_takeover`).
        let takeover = self.stats.takeover.load(SeqCst)
            && matches!(self.mode, Mode::Waiting | Mode::Mirroring | Mode::Fenced);
        if takeover && !self.takeover_started {
            // A new request for the grant, whatever was asked before.
            self.takeover_started = true;
            self.grant_asked = false;
        }
        if !takeover
            && !self.takeover_started
            && (self.sess.up
                || self.sess.number == 0
                || self.mode != Mode::Mirroring
                || self.draining)
        {
            return;
        }
        if takeover && (self.sess.up || self.draining) {
            self.stats.takeover.store(false, SeqCst);
            return;
        }
        if !self.grant_asked {
            self.grant_asked = true;
            slot.outcome.store(0, SeqCst);
            slot.want.store(true, SeqCst);
            return;
        }
        let outcome = slot.outcome.load(SeqCst);
        if outcome != 0 {
            self.stats.takeover.store(false, SeqCst);
        }
        if outcome == GRANTED && std::mem::take(&mut self.takeover_started) {
            // Taken over by an operator: which regions differ from the peer is unknown, so
            // the peer gets every region ever written when it returns.
            self.dirty_everything_written();
        }
        if outcome != 0 {
            self.takeover_started = false;
        }
        match outcome {
            GRANTED => self.become_survivor(io, slot.epoch.load(SeqCst)),
            DENIED => self.fence("the witness granted the volume to the peer"),
            UNREACHABLE => self.fence("neither the peer nor the witness is reachable"),
            _ => {}
        }
    }
}
