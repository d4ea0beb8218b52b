//! The engine's routing for serving alone and for resyncs (not a part): the survivor's dirty
//! regions, the fence and suspect regions, the witness's answer ([`Witness`]), and both sides
//! of a resync ([`ResyncSource`], [`ResyncTarget`]).
//!
//! Model: without the peer, a site asks the witness (through its failover slot) for the
//! volume. Granted: it becomes the survivor, completes what it held, and records every region
//! it writes in the dirty [`RegionMap`] (kept counted, so a write costs the same on any volume
//! size). Denied or unreachable: it fences and records its unconfirmed updates as suspect.
//! When the peer returns, the survivor copies its dirty regions to it (the source's steps are
//! [`ResyncSource::next`]'s), then both mirror again. The region maps stay the engine's
//! fields (the persisted replica state reads them).
//!
//! Invariants: a survivor's dirty map covers every region written since the peer was lost;
//! a fenced site's suspect map covers every update it applied that the peer never confirmed;
//! a region copied by an attempt that ends before RESYNC_DONE is dirty again.

use super::*;

/// The longest a restored survivor waits for the witness's first word (an answer, or its
/// failover thread finding the witness out of reach, which takes a heartbeat timeout): past
/// it, as when the witness is out of reach, the persisted grant is trusted (a failover thread
/// that stopped answering must not keep the volume down).
const GRANT_CHECK_MAX: Duration = Duration::from_secs(5);

/// Where a restored survivor's check of its witness grant stands (`check_grant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GrantCheck {
    /// Nothing to check: not a survivor restored with a grant, or the witness has answered.
    Done,
    /// Serving nothing until the witness's first word, waited for since then.
    Waiting(Instant),
    /// Serving on the persisted grant (the witness out of reach) until its first answer.
    Trusted,
}

impl Engine {
    // ---- serving alone and fencing --------------------------------------------------------

    /// Survivor: an update done when the local replica has it.
    pub(super) fn survivor_apply(&mut self, io: &mut IoCx, k: usize) {
        self.ops[k].stage.confirm();
        let (o, l, upd) = (self.ops[k].offset, self.ops[k].len, self.ops[k].upd);
        if upd != Upd::Flush {
            self.mark_dirty(o, l);
        }
        self.survivor_enqueue(io, k);
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
    /// not confirmed by the peer, or just confirmed) to `map`, and those the peer confirmed
    /// and may not have made durable (peer_cache.rs).
    pub(super) fn unconfirmed_into(&self, map: &mut RegionMap) {
        self.peer_unflushed.copy_into(map);
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
        // The peer may have lost what it confirmed and never flushed: copied to it too.
        self.peer_unflushed.take_into(&mut self.suspect);
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
        self.witness.complete_at(epoch);
        // (Whatever grant a lost answer may have left is this one now.)
        self.fenced_unanswered = None;
        self.since_start = false;
        self.absorb_suspect();
        if let Some(slot) = &self.cfg.failover {
            slot.survivors
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            slot.serving_alone();
        }
        self.set_mode(Mode::Survivor);
        // Nothing is acknowledged alone before the lost peer's read lease has certainly
        // expired (docs/mirror-protocol.md, "Read lease"); `release_alone` lets it go.
        let now = Instant::now();
        if self.sess.number == 0 {
            // No session in this process (restarted fenced): the peer's read lease rests on
            // PINGs the old process answered, unknown here. Waited out from now, as by a
            // survivor restored after a crash.
            let l = self.sess.lease();
            let t = now + l + lease_margin(l);
            self.alone_after = Some(self.alone_after.map_or(t, |a| a.max(t)));
        } else if let Some(t) = self.sess.peer_lease_end().filter(|&t| t > now) {
            self.alone_after = Some(t);
            tracing::info!(volume = %self.cfg.name, wait_ms = (t - now).as_millis() as u64,
                "mirror: survivor; holding acknowledgements until the peer's read lease has expired");
        }
        tracing::warn!(volume = %self.cfg.name, epoch, held = self.ops.len(),
            "mirror: survivor; this site acknowledges writes alone and records them for the peer's resync");
        self.finish_held_alone(io);
        // (A source without a grant that lost its session unconfirmed, `source_unsure`:
        // its deferred updates, behind the lease's wait like the rest.)
        self.abandon_resync(io);
    }

    /// Serving alone from now on (survivor, or the source of a reconciliation): every update
    /// held for the peer is finished on this replica alone and its region marked dirty.
    pub(super) fn finish_held_alone(&mut self, io: &mut IoCx) {
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
                self.survivor_enqueue(io, k);
            } else {
                self.settle(k);
            }
        }
        for k in self.flushes.take_all() {
            self.ops[k].stage.confirm();
            self.settle(k);
        }
        self.stats
            .backlog_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The regions written alone here become suspect: the other site's copy wins and is copied
    /// over them when they meet.
    fn dirty_into_suspect(&mut self) {
        self.suspect.or_with(&self.dirty);
        self.dirty.clear();
        self.stats
            .dirty_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// No grant: fail everything held and serve no I/O.
    pub(super) fn fence(&mut self, why: &str) {
        self.fence_with(why, |_| {});
    }

    /// As [`Self::fence`], `mark` run just before the mode change hands the state to the
    /// persister: what it sets is saved in that one state (a fence for want of an answer with
    /// its flag; saved as two states, a kill between them restarted a plain fence).
    fn fence_with(&mut self, why: &str, mark: impl FnOnce(&mut Self)) {
        self.fenced_unanswered = None;
        self.denied_by = None;
        // A survivor that fences (its grant released, its state unsavable) acknowledged writes
        // the other site lacks: a host's retry there could be answered done for what is gone.
        let retry_elsewhere = self.mode != Mode::Survivor;
        self.give_up_held(retry_elsewhere);
        self.alone_after = None;
        for (from, tag, _) in std::mem::take(&mut self.alone_held) {
            self.done.push((from, tag, Err(Errno::IO)));
        }
        mark(self);
        self.set_mode(Mode::Fenced);
        tracing::error!(volume = %self.cfg.name, why, suspect_bytes = self.suspect_bytes(),
            "mirror: fenced; this site serves no I/O for the volume");
    }

    /// The peer's replica wins (this site fences, or is about to be resynced by a survivor),
    /// or a reconciliation starts: every update still tracked here is given up, never sent
    /// again, and its regions recorded as suspect, since updates applied here (or being
    /// applied) that the peer never confirmed may be on this replica only: the survivor
    /// copies those regions too when it resyncs this site. Its initiator is answered
    /// `Errno::UNAVAILABLE` (NVMe ANA Inaccessible, SCSI ALUA unavailable): a multipath host
    /// retries it at the site that serves, and a write, write-zeroes, unmap or flush done
    /// again there is harmless whether or not it reached a replica here (as EIO, a media
    /// error, Linux failed the host's write: test
    /// `failover::a_fenced_site_answers_its_held_updates_unavailable_for_the_host_to_retry_at_the_winner`).
    /// A compare-and-write is answered EIO: its outcome is unknown, and done again where it
    /// was applied it would miscompare against itself (unless it was applied nowhere: not
    /// decided here nor sent to the peer, test
    /// `failover::a_compare_and_write_applied_nowhere_is_answered_unavailable_at_a_fence`). Without `retry_elsewhere` (a survivor
    /// fencing: the other site lacks what it acknowledged alone) everything is answered EIO
    /// (test `durable::a_released_survivor_answers_what_it_held_with_eio_not_unavailable`).
    pub(super) fn give_up_held(&mut self, retry_elsewhere: bool) {
        let mut suspect = self.take_suspect();
        // (With the peer's unflushed regions: handed over now, so forgotten there.)
        self.unconfirmed_into(&mut suspect);
        self.peer_unflushed.forget();
        self.suspect = suspect;
        if let Some(r) = self.resync.take() {
            // A source's attempt kept for the witness's answer (`source_unsure`): its deferred
            // updates fail below with the rest; the regions it wrote alone go to the winner's
            // copy.
            drop(r.abandon(&mut self.dirty));
            self.dirty_into_suspect();
        }
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        self.leader.fence();
        self.follower.take_all();
        self.flushes.take_all();
        for k in keys {
            let op = &mut self.ops[k];
            // A compare-and-write neither decided here nor sent to the peer (the leader's
            // compare read at the device; a forward held, never sent) was applied nowhere.
            let applied_nowhere =
                op.upd == Upd::Caw && matches!(op.stage, Stage::New | Stage::Held);
            op.stage.confirm();
            let e = if (op.caw && !applied_nowhere) || !retry_elsewhere {
                Errno::IO
            } else {
                Errno::UNAVAILABLE
            };
            if let Some((from, tag)) = op.initiator.take() {
                self.done.push((from, tag, Err(e)));
            }
            self.settle(k);
        }
    }

    /// A flush of this replica for a resync (at either end), through the apply queue; its
    /// end comes back to `apply_done` as a resync op of this session.
    fn start_own_flush(&mut self, io: &mut IoCx) {
        let k = self.own_flush_op(Origin::Resync, Stage::Confirmed);
        self.enqueue_apply(io, k, 0, 0);
    }

    /// Source: this replica's flush before RESYNC_DONE finished (`ok`). A source without a
    /// grant with a state file first saves its state as in sync and sends RESYNC_DONE once that
    /// is on disk (`resync_step`): once the target has it, it may finish and be granted the
    /// volume, and this site, restarted from a state that said survivor, would serve alone too
    /// (a split brain; test
    /// `resyncloss::a_grantless_source_restarted_after_resync_done_does_not_serve_alone`).
    pub(super) fn resync_source_flushed(&mut self, io: &mut IoCx, k: usize, ok: bool) {
        // (Only the attempt's current flush: one given up as slow may end later.)
        if self
            .resync
            .as_mut()
            .is_none_or(|r| r.flush_op.take_if(|f| *f == k).is_none())
        {
            return;
        }
        if !ok {
            // Tried again later; this site, the only whole copy, goes on serving.
            if let Some(r) = self.resync.as_mut() {
                let held = r.flush_failed(Instant::now());
                tracing::error!(volume = %self.cfg.name,
                    retry_s = resync::RETRY.as_secs(),
                    "mirror: this replica's flush before the end of a resync failed; the peer stays out of sync until a flush succeeds (retried), this site goes on serving");
                self.go_alone(io, held);
            }
            return;
        }
        if !self.sess.up {
            return;
        }
        if self.grant_epoch == 0 && self.cfg.state_file.is_some() {
            let Some(r) = self.resync.as_mut() else {
                return;
            };
            r.done_sent();
            let g = self.persist(false);
            if let Some(r) = self.resync.as_mut() {
                r.done_gate = Some(g);
            }
        } else {
            self.send_resync_done();
        }
    }

    /// Target: a resync from the peer starts, this site's "resyncing" state just handed to
    /// the persister: no copy is applied before it is on disk ([`Self::take_copy`]).
    pub(super) fn start_target(&mut self) {
        self.target.start();
        self.target.gate = self.durable.handle.as_ref().map_or(0, |h| h.submitted());
    }

    /// Target: a copy (RESYNC) came: applied now, or, while this site's "resyncing" state is
    /// not on disk (or earlier copies wait for it), kept to be applied once it is
    /// ([`Self::release_waiting_copies`]). Counted at once (RESYNC_DONE waits for it).
    pub(super) fn take_copy(&mut self, io: &mut IoCx, h: &Header, payload: &[u8]) {
        self.target.copy_started();
        if !self.target.waiting.is_empty() || !self.durable.is_durable(self.target.gate) {
            self.target.waiting.push_back((*h, payload.to_vec()));
            return;
        }
        let k = self.new_peer_op(Origin::Resync, Upd::Write, h, Data::default());
        self.enqueue_apply_from(io, k, (0, 0), payload);
    }

    /// Target: the copies that waited for the "resyncing" state are applied once it is on
    /// disk (each reactor turn; at once without a state file).
    pub(super) fn release_waiting_copies(&mut self, io: &mut IoCx) {
        if self.mode != Mode::Resyncing {
            // (Its replica failed meanwhile, say: nothing more is applied to it.)
            self.target.waiting.clear();
        }
        if self.target.waiting.is_empty() || !self.durable.is_durable(self.target.gate) {
            return;
        }
        for (h, payload) in std::mem::take(&mut self.target.waiting) {
            let k = self.new_peer_op(Origin::Resync, Upd::Write, &h, Data::default());
            self.enqueue_apply_from(io, k, (0, 0), &payload);
        }
    }

    /// Target: once RESYNC_DONE came and every copy is applied, flush the replica; once
    /// that is done, serve I/O again.
    pub(super) fn maybe_end_resync_target(&mut self, io: &mut IoCx) {
        if self.mode == Mode::Resyncing && self.target.flush_due() {
            self.target.flush_started();
            self.start_own_flush(io);
            return;
        }
        if self.mode == Mode::Resyncing && self.target.complete() {
            self.new_replica = false;
            // The source copied them (it finishes only after the end of our list).
            self.suspect.clear();
            self.set_mode(Mode::Mirroring);
            if let Some(slot) = &self.cfg.failover
                && self.target.source_epoch != 0
            {
                // In sync with the holder of that grant: the epoch is known here now (before,
                // only from a heartbeat answered while in sync, which a source lost or failed
                // within milliseconds did not leave time for: then this site was refused as
                // stale and the volume served nowhere). Only an epoch the witness has issued
                // as far as this site has seen (its last word, a heartbeat's or an answer's):
                // no more than a heartbeat in sync would teach. A larger one is not plausible
                // (a buggy peer: the link is authenticated) and would let this site pass the
                // witness's stale check for grants it never saw the writes of.
                let seen = slot.view_epoch.load(std::sync::atomic::Ordering::SeqCst);
                if self.target.source_epoch <= seen {
                    self.witness.complete_at(self.target.source_epoch);
                    slot.learned_epoch.fetch_max(
                        self.target.source_epoch,
                        std::sync::atomic::Ordering::SeqCst,
                    );
                } else {
                    tracing::warn!(volume = %self.cfg.name, source_epoch = self.target.source_epoch,
                        witness_epoch = seen,
                        "mirror: the resync source's grant epoch is beyond any the witness has shown this site; not adopted (learned from the witness's next word in sync)");
                }
            }
            // The source stays the survivor until it has this; the PING behind it comes back
            // only once the source has read it (so mirrors, and sends no more META_STATE).
            self.sess.queue(&Header::new(Type::ResyncDoneAck), &[]);
            self.resync_received = Some((self.sess.number, self.sess.ping_marked()));
            tracing::warn!(volume = %self.cfg.name, "mirror: resync received; in sync, serving again");
            // Forwards that came after RESYNC_DONE, while copies were still being applied.
            if self.role == Role::Leader {
                self.release_barrier(io);
            }
        }
    }

    /// Ask the witness when the peer is lost (or an operator asks for a takeover), and act
    /// on its answer.
    pub(super) fn failover_tick(&mut self, io: &mut IoCx) {
        let Some(slot) = self.cfg.failover.clone() else {
            return;
        };
        self.publish_withdrawn();
        self.publish_watching(&slot);
        if self.durable.failed || self.failed.is_some() {
            // Stopped here: never ask for (or take) a grant, so what this site knows of the
            // group's epoch is not this volume's concern (counted neither way: a volume failed
            // for good does not keep the others from learning it).
            self.stop_sync();
            return;
        }
        self.publish_sync_mode();
        if self.mode == Mode::Mirroring
            && self.sess.up
            && let Some((_, _, e)) = slot.view()
        {
            // Mirroring in session, this replica holds every write acknowledged so far, so
            // those of every grant the witness has issued (its word is older than now): the
            // epoch its replica is complete at (`Witness::complete_for`), known before the
            // site's (learned only while the whole group is in sync).
            self.witness.complete_at(e);
        }
        self.check_grant(io, &slot);
        self.adopt_lost_grant(io, &slot);
        self.give_back_unadoptable(&slot);
        self.give_back_again(&slot);
        self.ask_again_if_released(&slot);
        if self.sess.up {
            // A second request's answer read in session (or none: the link's loss asks
            // anew) is that request's: the next loss's denial is watched again.
            self.witness_retried = false;
        }
        let site = SiteNow {
            up: self.sess.up,
            had_session: self.sess.number != 0,
            mode: self.mode,
            draining: self.draining,
        };
        match self.witness.tick(&slot, &self.stats.takeover, site) {
            Grant::Wait => {}
            Grant::Granted { epoch, takeover } => {
                if std::mem::take(&mut self.witness_retried) {
                    // Asked again once the holder's grant was given back without a session
                    // with this site: by the holder (a fail-stopped resync source, its target
                    // whole) or by an operator (a survivor lost for good, which may have
                    // acknowledged alone at its epoch after this site was last in sync with
                    // it). Unknown which: a takeover, for every volume of the group (every
                    // region ever written to the peer, the history below told it may be
                    // stale). The epoch and the resync's direction are the same either way.
                    slot.asking_takeover(epoch.saturating_sub(1));
                }
                if !takeover
                    && self.mode == Mode::Fenced
                    && !self
                        .witness
                        .complete_for(slot.asked_epoch.load(std::sync::atomic::Ordering::SeqCst))
                {
                    // The site's known epoch (the group's), at which the request was asked,
                    // was taught by another volume of the group after this one's replica was
                    // last complete: a grant came between whose writes it misses. It stays
                    // fenced; another volume of the group serves on the grant, or the failover
                    // thread gives it back (`unclaimed_grant`).
                    tracing::error!(volume = %self.cfg.name, epoch,
                        "mirror: the witness granted the group, but this volume's replica misses a grant since it was last in sync; fenced");
                    self.witness_retried = false;
                    self.fence("the group's grant is newer than this volume's replica");
                    self.publish_watching(&slot);
                    return;
                }
                let takeover = takeover || slot.takeover_at(epoch);
                // (Already the survivor at this epoch, from the witness's word before its
                // answer: `adopt_lost_grant` does not act while a request is pending, so this
                // is a defence; counted once.)
                if !(self.mode == Mode::Survivor && self.grant_epoch == epoch) {
                    self.take_answered_grant(io, &slot, epoch, takeover);
                }
            }
            Grant::Fence(why) => {
                let asked_again = std::mem::take(&mut self.witness_retried);
                // Denied while the peer holds the group: asked again if the witness shows
                // that grant given back (once: not after a request so asked). Saved in the
                // fence's one state (flags bit 5), so a restart with the link still down asks
                // the same (restore.rs); before, it was in memory only, and the restarted
                // site, a plain fence, waited for the link while nobody served (test
                // `restart_fence::a_site_restarted_after_a_denial_asks_again_once_the_holders_grant_is_given_back`).
                let denied = match slot.view() {
                    Some((false, holder, epoch)) if !asked_again && holder != 0 => Some((
                        epoch,
                        slot.view_seq.load(std::sync::atomic::Ordering::SeqCst),
                    )),
                    _ => None,
                };
                self.fence_with(why, |e| e.denied_by = denied);
            }
            Grant::Unanswered { takeover } => {
                // A request asked again after the holder's grant was given back: its grant,
                // if the witness gave it, is a takeover as when answered (above), adopted so
                // from the witness's word, after a restart too (state flags bit 4). Before, it
                // was adopted as a plain grant.
                let retried = std::mem::take(&mut self.witness_retried);
                let seq = slot.view_seq.load(std::sync::atomic::Ordering::SeqCst);
                let epoch = slot.view_epoch.load(std::sync::atomic::Ordering::SeqCst);
                // Persisted in the fence's one state (flags bit 3): a restart before the
                // witness's word still adopts the grant (restore.rs), or gives it back.
                self.fence_with("neither the peer nor the witness is reachable", |e| {
                    e.fenced_unanswered = Some((seq, takeover || retried));
                    e.unanswered_retried = retried && !takeover;
                    e.unanswered_epoch = epoch;
                });
            }
            Grant::LostInSession => {
                // Not fenced (the peer is in session): only watched for, so a grant the
                // witness recorded is given back once its word names this site (before, it was
                // held for good, and the witness denied the peer at the next loss).
                let seq = slot.view_seq.load(std::sync::atomic::Ordering::SeqCst);
                self.fenced_unanswered = Some((seq, false));
            }
            Grant::Unwanted { epoch } => {
                if self.grant_epoch != epoch {
                    tracing::info!(volume = %self.cfg.name, epoch,
                        "mirror: the witness granted the volume after the session came back; giving the grant back");
                    self.given_back = self.given_back.max(epoch);
                    slot.release
                        .store(epoch, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        self.publish_watching(&slot);
    }

    /// Count this volume in the group's `FailoverSlot::watching` while it may yet take a grant
    /// the witness holds for this site (a request outstanding, or fenced for want of an
    /// answer), and not once it stopped (failed, or dropped: `stop_watching`). Taken with
    /// the grant: a volume adopting or answered counts itself a survivor (`claim_grant`)
    /// before it stops watching, so a volume giving the grant back sees one or the other.
    pub(super) fn publish_watching(&mut self, slot: &crate::layer::mirror::failover::FailoverSlot) {
        let now = self.failed.is_none()
            && !self.durable.failed
            && (self.witness.pending()
                || (self.mode == Mode::Fenced && self.fenced_unanswered.is_some()));
        if now != self.watching.is_some() {
            if now {
                slot.watching
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.watching = self.cfg.failover.clone();
            } else {
                self.stop_watching();
            }
        }
    }

    /// Count this volume in the group's `FailoverSlot::synced` (mirroring in session) or
    /// `unsynced` (fenced: its replica may miss the holder's writes, and it may ask again, once
    /// that grant is given back or after an unanswered request), or in neither (resyncing, a
    /// new or restarted replica before its first session: they ask for no grant until in
    /// sync; a survivor; a failed replica, `stop_sync`). The failover thread takes the
    /// witness's epoch as known only while some volume of the group mirrors and none is fenced
    /// (`FailoverSlot::in_sync_now`).
    pub(super) fn publish_sync_mode(&mut self) {
        match self.mode {
            Mode::Mirroring if self.sess.up => self.publish_sync(true),
            Mode::Fenced => self.publish_sync(false),
            _ => self.stop_sync(),
        }
    }

    fn publish_sync(&mut self, now: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let slot = self.cfg.failover.clone();
        let same = match (&self.sync_in, &slot) {
            (Some((c, was)), Some(s)) => Arc::ptr_eq(c, s) && *was == now,
            (c, s) => c.is_none() && s.is_none(),
        };
        if same {
            return;
        }
        self.stop_sync();
        if let Some(s) = slot {
            if now { &s.synced } else { &s.unsynced }.fetch_add(1, SeqCst);
            self.sync_in = Some((s, now));
        }
    }

    /// Not counted in `synced` or `unsynced` any more (also when the engine goes).
    pub(super) fn stop_sync(&mut self) {
        if let Some((slot, now)) = self.sync_in.take() {
            if now { &slot.synced } else { &slot.unsynced }
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Not counted as watching any more (also when the engine goes: the daemon stops).
    pub(super) fn stop_watching(&mut self) {
        if let Some(slot) = self.watching.take() {
            slot.watching
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Fenced because the peer held the group (`denied_by`), the link still down: once a word
    /// newer than the denial shows nobody holding the group at that grant's epoch (the holder
    /// gave it back without resyncing this site: a resync source that fail-stopped right after
    /// the resync, durable.rs; a holder restarted after its answer was lost, which gives it back
    /// unused; or an operator's release), ask the witness once more (restored from a state
    /// saved so, restore.rs, its new process does the same: the epoch then is one more than the
    /// one its replica was complete at, the only grant the witness may let its request pass
    /// after). Before,
    /// a denied site never asked again: with the holder stopped for good, the volume served
    /// nowhere. The witness grants only a site that knows the group's epoch (learned in sync),
    /// so a site whose replica lacks the holder's writes is refused as stale.
    fn ask_again_if_released(&mut self, slot: &crate::layer::mirror::failover::FailoverSlot) {
        let Some((epoch, at)) = self.denied_by else {
            return;
        };
        if self.draining {
            // Stopping: nothing is asked, and the denial is kept for the clean stop's state
            // (the next process asks, restore.rs; before, a stop saved a plain fence).
            return;
        }
        if self.mode != Mode::Fenced || self.sess.up {
            self.denied_by = None;
            return;
        }
        if slot.view_seq.load(std::sync::atomic::Ordering::SeqCst) <= at {
            return;
        }
        match slot.view() {
            Some((false, 0, e)) if e == epoch => {
                self.denied_by = None;
                self.witness_retried = true;
                tracing::warn!(volume = %self.cfg.name, epoch,
                    "mirror: the grant the peer held is given back; asking the witness again");
                self.witness.ask_after_give_back(epoch);
            }
            // Another grant since (or the view is being written): that grant's holder decides.
            Some((_, _, e)) if e > epoch => self.denied_by = None,
            _ => {}
        }
    }

    /// The witness's answer grants the group at `epoch`: serve alone on it, unless another
    /// volume of the group gave it back meanwhile (its session came back before the answer):
    /// then ask again, never serving on a grant the witness may no longer hold.
    fn take_answered_grant(
        &mut self,
        io: &mut IoCx,
        slot: &crate::layer::mirror::failover::FailoverSlot,
        epoch: u64,
        takeover: bool,
    ) {
        if !slot.claim_grant(epoch) {
            tracing::warn!(volume = %self.cfg.name, epoch,
                "mirror: the group's grant was given back by another volume; asking again");
            self.witness.ask_again(&self.stats.takeover);
            return;
        }
        if takeover {
            self.taken_over(io);
        }
        self.become_survivor(io, epoch);
        // (Counted by `become_survivor` now.)
        slot.unclaim();
    }

    /// The witness names this site the group's holder while this site does not know it holds
    /// the grant: the grant of a request whose answer was lost (the witness recorded it, then
    /// the reply was dropped, or came after the request's deadline). Left so, both sites
    /// stopped: this one fenced for the missing answer, the peer denied because this one
    /// holds the volume; and the grant was never given back. So, from the witness's word
    /// (a view newer than the fence):
    /// - fenced for want of an answer: this site is the survivor at the witness's epoch
    ///   (its replica was in sync when the link went; what it failed meanwhile is suspect and
    ///   copied to the peer with the rest);
    /// - serving alone without a grant (the source of a reconciliation or of a new replica's
    ///   copy, which the session decided before the word came): the grant is adopted, so the
    ///   resync's end gives it back and the peer is denied meanwhile;
    /// - fenced so, then resynced by the peer and mirroring again: the grant is given back.
    ///
    /// A takeover whose answer was lost is adopted as a takeover, by every volume of the group
    /// (the grant is the group's, asked by whichever volume's operator: `takeover_at`), not
    /// only by the volume whose flag asked it.
    fn adopt_lost_grant(
        &mut self,
        io: &mut IoCx,
        slot: &crate::layer::mirror::failover::FailoverSlot,
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.grant_epoch != 0 || self.witness.pending() {
            // (A request outstanding, an operator's takeover among them: its answer decides.)
            return;
        }
        let (after, takeover) = match (self.mode, self.fenced_unanswered) {
            (Mode::Fenced, Some(f)) => f,
            // Fenced for want of an answer, then resynced by the peer (it led the
            // reconciliation of two fenced sites): in sync again, a grant the witness still
            // holds for this site is given back, or the peer would be denied at the next loss.
            // Never while a volume of the group serves alone here (the grant is the group's:
            // it is that volume's now, given back at its resync's end).
            (Mode::Mirroring, Some(f)) if self.sess.up && slot.survivors.load(SeqCst) == 0 => f,
            // Started in this process (`since_start`): restored fenced, the fence may have been
            // for want of an answer; restored in sync (or new), a lost answer watched in
            // session, or a release not sent or not answered before the restart, may have left
            // a grant held (none of them is persisted). Only the give-back once in sync, never
            // serving alone on such a word (a site fenced for its failed device keeps that
            // state too).
            // And only once every engine of the group restored its state (`restored`, counted
            // after its `watching`): one restored fenced for want of an answer may adopt that
            // grant, however late its reactor opens it.
            (Mode::Mirroring, None)
                if self.since_start
                    && self.sess.up
                    && slot.survivors.load(SeqCst) == 0
                    && slot.restored.load(SeqCst) >= slot.members.load(SeqCst) =>
            {
                (0, false)
            }
            (Mode::Survivor, _) => (0, false),
            _ => return,
        };
        if slot.view_seq.load(SeqCst) <= after {
            return; // nothing said since the fence
        }
        let Some((is_me, holder, epoch)) = slot.view() else {
            return;
        };
        // (`epoch <= given_back`: the grant this site gave back, as a heartbeat saw it before
        // the release.)
        if !is_me || epoch <= self.given_back {
            // (Not on a word below an epoch seen before: the witness went back, restarted
            // from an older state or anew, and the site it granted since may serve alone on a
            // grant it forgot; test `durable::a_site_fenced_for_an_unanswered_request_does_not_ask_again_on_a_word_older_than_one_it_saw`.)
            let went_back =
                epoch < slot.view_epoch_max.load(SeqCst) || epoch < self.unanswered_epoch;
            if self.mode == Mode::Fenced
                && holder == 0
                && !went_back
                && (!takeover || self.unanswered_retried)
                && !self.sess.up
                && !self.draining
                && (self.sess.number != 0 || self.witness.is_restored_unanswered())
            {
                // Fenced for want of an answer, and the witness's word since names nobody:
                // it granted nothing (its answer was a denial on the tie, or it was out of
                // reach for the request's deadline). Asked once more (plain; an operator's
                // takeover is the operator's to ask again): this replica held every
                // acknowledged write at the fence and nobody served since (the witness would
                // name a holder, or refuse it as stale at a later epoch). Before, it stayed
                // fenced: with the peer fenced so too, or waiting, nobody served until the
                // link returned. Once per such fence: the answer fences again, or serves.
                // (A request asked again after a give-back stays one: its grant a takeover. So
                // is this one when the word's epoch is above the one seen at the fence: a grant
                // came and went meanwhile, another site's, given back without resyncing this
                // one (an operator's release): it may have acknowledged alone.)
                tracing::warn!(volume = %self.cfg.name, epoch,
                    "mirror: the witness holds nothing for the group after an unanswered request; asking again");
                // (Restored, the fence's epoch is the one the site knew then, persisted with it;
                // bit 4 after a restart cannot tell an operator's takeover from a request asked
                // again after a give-back: asked again, plain, its grant taken as a takeover.)
                self.witness_retried = self.unanswered_retried || epoch > self.unanswered_epoch;
                self.witness.ask_fenced();
            }
            if self.mode == Mode::Mirroring {
                // In sync, and the witness's word since the fence (or the restart) names no
                // grant of this site's: the lost answer, if any, left nothing held (its
                // request is older than the heartbeat answered). Looked at once: kept, a later
                // grant of the group here (another volume's, its link down) was given back from
                // here before that volume could claim it, which then stayed fenced as its
                // peer, denied while this site held the group.
                self.fenced_unanswered = None;
                self.since_start = false;
            }
            return;
        }
        if self.mode == Mode::Mirroring && slot.watching.load(SeqCst) != 0 {
            // Given back only once no volume of the group may still take it: none has a
            // request outstanding or is fenced for want of an answer (`FailoverSlot::watching`;
            // such a volume adopts the grant at its first tick after a word newer than its
            // fence, or is answered with it). Sequence, not time: before, the give-back came at
            // the witness's second word (a heartbeat later), and a volume whose reactor stalled
            // longer (or read the lost answer after the first word) lost the race: the failover
            // thread sent the release first, that volume refused the grant given back and
            // stayed fenced, as its peer, denied while this site held the group.
            return;
        }
        // (An operator's takeover asked by this volume, not one asked again after a give-back,
        // which is kept as a takeover only for the regions it copies, nor the group's mark,
        // which such a request's answer sets too: as for an answered grant, `failover_tick`.)
        let operators = takeover && !self.unanswered_retried;
        let takeover = takeover || slot.takeover_at(epoch);
        if self.mode == Mode::Fenced
            && !operators
            && !self.witness.may_adopt(
                epoch,
                slot.asked_plain.load(SeqCst),
                slot.takeover_at(epoch),
            )
        {
            // Fenced for want of an answer, and the grant named now is above any its lost
            // request could have won: a grant came between (another site's, given back
            // without resyncing this volume), and this one is another volume's of the group,
            // asked at the epoch that volume taught. This replica misses that grant's writes:
            // fenced, as when such a grant is answered to it (`failover_tick`); the grant is
            // left to the volume that asked it, or given back (`give_back_unadoptable`) when
            // none serves on it. Before, it was adopted and this volume served stale data.
            tracing::error!(volume = %self.cfg.name, epoch, complete = self.witness.complete(),
                "mirror: the witness holds the group for this site at an epoch above this volume's replica; fenced");
            self.fence("the group's grant is newer than this volume's replica");
            self.unadoptable = true;
            self.publish_watching(slot);
            return;
        }
        if self.mode != Mode::Mirroring && !slot.claim_grant(epoch) {
            // Another volume of the group is giving this grant back: left alone (looked at
            // again at the next tick, with the witness's newer word).
            return;
        }
        self.fenced_unanswered = None;
        self.since_start = false;
        match self.mode {
            Mode::Fenced => {
                tracing::warn!(volume = %self.cfg.name, epoch, takeover,
                    "mirror: the witness holds the volume for this site (its answer was lost); survivor");
                if takeover {
                    // The group's: every volume of it takes this grant as a takeover (its
                    // mark is in memory; restarted, this volume's state brought it back).
                    slot.asking_takeover(epoch.saturating_sub(1));
                    self.taken_over(io);
                }
                // (Fenced before a restart, the state's flags bit 3: `become_survivor` waits out
                // the peer's read lease the old process may have given.)
                self.become_survivor(io, epoch);
                // (Counted by `become_survivor` now.)
                slot.unclaim();
            }
            Mode::Mirroring => {
                tracing::warn!(volume = %self.cfg.name, epoch,
                    "mirror: the witness holds the volume for this site, in sync again (its answer was lost); giving the grant back");
                self.given_back = epoch;
                slot.release.store(epoch, SeqCst);
            }
            _ => {
                tracing::warn!(volume = %self.cfg.name, epoch,
                    "mirror: the witness holds the volume for this site, serving alone; keeping the grant until the peer is in sync");
                // (Counted in the group's survivors by the claim.)
                self.grant_epoch = epoch;
                self.persist_mode(Mode::Survivor);
            }
        }
    }

    /// Restored fenced for want of an answer, its host restarted since (restore.rs: its device
    /// may have dropped acknowledged writes the peer kept), or restored in sync after a kill
    /// (its request perhaps unanswered, the fence not saved yet): a grant the witness's first
    /// word names this site's is given back, never served on, so the peer, denied while it was
    /// held, asks again (`ask_again_if_released`: a takeover) and serves. Before, nobody
    /// served until the link returned. A first word naming another holder or none ends it.
    fn give_back_unadoptable(&mut self, slot: &crate::layer::mirror::failover::FailoverSlot) {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.unadoptable {
            return;
        }
        // (Restored in sync after a kill: `Waiting` until its first session, restore.rs.)
        let unserved = matches!(self.mode, Mode::Fenced | Mode::Waiting);
        if !unserved || self.witness.pending() {
            self.unadoptable = unserved;
            return;
        }
        let Some((is_me, _, epoch)) = slot.view() else {
            return; // no word yet
        };
        if is_me && epoch > self.given_back {
            if slot.watching.load(SeqCst) != 0 || slot.survivors.load(SeqCst) != 0 {
                return; // another volume of the group may take it: left to it
            }
            if slot.restored.load(SeqCst) < slot.members.load(SeqCst) {
                // Another volume of the group, its state not restored yet, may be a survivor
                // on this very grant (adopted before the power went, its writes acknowledged
                // alone): given back under it, it would fence at its first word and its
                // writes be given up. Looked at again at the next tick.
                return;
            }
            tracing::warn!(volume = %self.cfg.name, epoch,
                "mirror: the witness holds the volume for this site on a grant it never served on (its host restarted since its fence, a grant came between, or it was killed while asking); giving the grant back");
            self.given_back = epoch;
            // Never served on, if every volume of the group was restored so (each state says
            // fenced for want of an answer, and a survivor's state is durable before its first
            // write acknowledged alone): the give-back says so (flag `UNUSED`), and the
            // witness then grants the peer's request at the epoch before this grant, which it
            // refused as stale before (docs/mirror-protocol.md, "A grant whose answer was
            // lost").
            let members = slot.members.load(SeqCst);
            if members > 0
                && slot.restored.load(SeqCst) >= members
                && slot.unadoptable.load(SeqCst) >= members
            {
                slot.release_unused.store(epoch, SeqCst);
            }
            slot.release.store(epoch, SeqCst);
        }
        self.unadoptable = false;
    }

    /// In sync, the witness's word names this site the holder at an epoch it gave back already
    /// (`given_back`): a witness restarted from an older copy of its state (docs/witness-protocol.md,
    /// "A witness that forgot a grant"), or a heartbeat answered before the release arrived.
    /// Given back once more (once per word; the witness answers a release it had taken
    /// already with its state, unchanged): kept, the witness would deny the peer at the next
    /// loss, and the peer, waiting for that grant's give-back, would never ask again. No volume
    /// of the group serves on a grant given back (`FailoverSlot::claim_grant` refuses it once
    /// `released`), so the release takes nothing from anyone; and never while a volume of the
    /// group serves alone or waits on a request (the grant may be its).
    fn give_back_again(&mut self, slot: &crate::layer::mirror::failover::FailoverSlot) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.given_back == 0
            || self.mode != Mode::Mirroring
            || !self.sess.up
            || self.draining
            || slot.survivors.load(SeqCst) != 0
            || slot.watching.load(SeqCst) != 0
        {
            return;
        }
        let seq = slot.view_seq.load(SeqCst);
        let Some((true, _, epoch)) = slot.view() else {
            return;
        };
        if epoch > self.given_back
            || seq <= self.given_back_again
            || slot.released.load(SeqCst) < epoch
            || slot.release.load(SeqCst) != 0
        {
            return;
        }
        self.given_back_again = seq;
        tracing::warn!(volume = %self.cfg.name, epoch,
            "mirror: the witness names this site the holder of a grant it gave back (restarted from an older state?); giving it back again");
        slot.release.store(epoch, SeqCst);
    }

    /// Taken over by an operator: which regions differ from the peer is unknown, so the peer
    /// gets every region ever written when it returns. And this replica may lack writes the
    /// peer acknowledged alone (the operator accepted losing them): a history kept below must
    /// not serve the moments since it was last vouched for (it ends them with a gap record
    /// when told current, at the next turn).
    fn taken_over(&mut self, io: &mut IoCx) {
        self.dirty_everything_written();
        self.inner.vouch(io, crate::bdev::Vouch::Stale);
    }

    /// A survivor restored from its state with a witness grant (`GrantCheck::Waiting`) checks
    /// the witness's word (a survivor lost for good, docs/witness-protocol.md): it serves
    /// nothing until the witness's first answer, or until the witness is found out of reach or
    /// [`GRANT_CHECK_MAX`] passed without a word (the persisted grant is then trusted,
    /// `GrantCheck::Trusted`, until the first answer). That
    /// answer, judged against the held epoch by `failover::verdict`, decides once: this
    /// site's grant (or a witness started anew, which knows none that late): serve on;
    /// released or given to another site: fence, the regions written alone suspect, so the
    /// site taken over copies its replica over them when they meet. A survivor granted while
    /// running never checks (its grant is the witness's own latest answer).
    fn check_grant(&mut self, io: &mut IoCx, slot: &crate::layer::mirror::failover::FailoverSlot) {
        use crate::layer::mirror::failover::{WITNESS_UNREACHABLE, verdict};
        use std::sync::atomic::Ordering::SeqCst;
        let since = match self.grant_check {
            GrantCheck::Done => return,
            GrantCheck::Waiting(since) => Some(since),
            GrantCheck::Trusted => None,
        };
        if self.mode != Mode::Survivor || self.grant_epoch == 0 {
            self.grant_check = GrantCheck::Done;
            self.publish_lease();
            return;
        }
        match slot.view() {
            Some((is_me, holder, epoch)) if verdict(is_me, holder, epoch, self.grant_epoch) => {
                self.grant_check = GrantCheck::Done;
                self.publish_lease();
                tracing::info!(volume = %self.cfg.name, epoch = self.grant_epoch, holder,
                    witness_epoch = epoch,
                    "mirror: the witness leaves this site its survivor grant; serving alone");
            }
            Some((_, holder, _)) => self.fence_released(io, holder),
            None if since.is_some_and(|t| {
                slot.witness.load(SeqCst) == WITNESS_UNREACHABLE || t.elapsed() > GRANT_CHECK_MAX
            }) =>
            {
                self.grant_check = GrantCheck::Trusted;
                self.publish_lease();
                tracing::warn!(volume = %self.cfg.name, epoch = self.grant_epoch,
                    "mirror: the witness cannot be reached to confirm this site's survivor \
                     grant (or no answer came at all); serving alone on the grant persisted \
                     until it answers");
            }
            None => {}
        }
    }

    /// A restored survivor serves nothing yet: its grant waits for the witness's first word.
    pub(super) fn grant_unconfirmed(&self) -> bool {
        matches!(self.grant_check, GrantCheck::Waiting(_))
    }

    /// The witness no longer grants this survivor the volume: fence, the regions written
    /// alone suspect (a resync under way is abandoned, its copies dirty again first).
    fn fence_released(&mut self, io: &mut IoCx, holder: u32) {
        self.grant_check = GrantCheck::Done;
        self.abandon_resync(io);
        self.dirty_into_suspect();
        if let Some(slot) = &self.cfg.failover {
            slot.survivors
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        tracing::error!(volume = %self.cfg.name, epoch = self.grant_epoch, holder,
            "mirror: the witness no longer grants this site the volume (an operator released \
             its grant); the writes it acknowledged alone are given up, and the peer's replica \
             will be copied over them");
        self.given_back = self.given_back.max(self.grant_epoch);
        self.grant_epoch = 0;
        if self.sess.up || self.link_key.is_some() {
            self.kill_link = Some("this site's survivor grant was released at the witness");
        }
        self.fence("this site's survivor grant was released at the witness");
    }

    // ---- resync ---------------------------------------------------------------------------

    /// Mark every region ever written dirty (for a new, empty peer).
    pub(super) fn dirty_everything_written(&mut self) {
        self.dirty.or_with(&self.written);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn session_start_source(&mut self, io: &mut IoCx) {
        // An attempt whose end no tick saw yet.
        self.abandon_resync(io);
        // This replica wins: its own suspect regions are copied to the peer too.
        self.absorb_suspect();
        self.link_up(io);
        let mut r = ResyncSource::new(self.cfg.size, self.cfg.dirty_granularity, Instant::now());
        // (Its last pass holds the hosts' writes no longer than a mirroring site's slow apply.)
        r.hold_limit = self.cfg.peer_timeout / 2;
        self.resync = Some(r);
    }

    /// A source without a grant (a reconciliation, or the copy to a new replica: no site
    /// acknowledged alone, so no witness was asked) lost its session after RESYNC_DONE. The
    /// target may have finished and be serving as a mirroring site, which asks the witness for
    /// the volume when it loses the link, and the witness, holding no grant, would give it.
    /// So this site may not go on alone either: it becomes a mirroring site that lost its
    /// peer (its updates held, the deferred ones kept for the outcome, no reads without a
    /// lease) and asks the witness in turn. Granted: the survivor, the deferred updates
    /// applied alone ([`Self::become_survivor`]); denied: fenced, they fail; the session back
    /// first: whichever the replica states decide (the target in sync: the resync is done).
    /// Without a witness it waits for the peer as any mirroring site does (reads served,
    /// updates held until the peer returns or they time out): the finished target serves
    /// reads so too, and nobody may write alone. A source holding a grant keeps it and goes
    /// on alone: the witness denies the target.
    fn source_unsure(&mut self) {
        self.set_mode(Mode::Mirroring);
        tracing::warn!(volume = %self.cfg.name,
            "mirror: the link went after RESYNC_DONE, unconfirmed; the peer may be in sync: holding updates and asking the witness");
    }

    /// A resync attempt ended with its session: every region it copied is dirty again (the
    /// copies may not have arrived), and the deferred updates go ahead alone.
    pub(super) fn abandon_resync(&mut self, io: &mut IoCx) {
        let Some(r) = self.resync.take() else {
            return;
        };
        // A grant-less source saved as in sync for its RESYNC_DONE (`resync_source_flushed`)
        // serves alone again: saved as the survivor it is before anything it applies alone
        // from here on is answered (the answers wait for that state on disk).
        let saved_in_sync =
            r.awaiting_ack() && self.grant_epoch == 0 && self.mode == Mode::Survivor;
        let deferred = r.abandon(&mut self.dirty);
        if saved_in_sync {
            self.persist_mode(Mode::Survivor);
        }
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_rate
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_eta_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_unreadable_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.go_alone(io, deferred);
    }

    /// Updates a resync held (deferred by its last pass) go ahead alone: the attempt ended,
    /// or cannot end before a retry.
    pub(super) fn go_alone(&mut self, io: &mut IoCx, held: std::collections::VecDeque<usize>) {
        for k in held {
            self.survivor_apply(io, k);
        }
    }

    /// Resync target: list the suspect regions for the source (RESYNC_ALSO), then end the
    /// list; the source copies them too and does not finish before the end of the list.
    pub(super) fn send_suspect(&mut self) {
        let mut map = self.take_suspect();
        self.unconfirmed_into(&mut map);
        let ranges = map.ranges();
        self.suspect = map;
        self.sess.send_resync_also(&ranges);
        if !ranges.is_empty() {
            tracing::warn!(volume = %self.cfg.name, suspect_bytes = self.suspect_bytes(),
                "mirror: this replica may hold updates the peer never confirmed; asking the peer to copy those regions too");
        }
    }

    /// Survivor: copy dirty regions to the returning peer within the rate budget; switch
    /// back to mirroring once nothing is left.
    pub(super) fn resync_step(&mut self, io: &mut IoCx, now: Instant) {
        let Some(r) = self.resync.as_mut() else {
            return;
        };
        if !self.sess.up {
            if r.done_gate.is_some() {
                // RESYNC_DONE never went out (its state was being saved): the target cannot
                // have finished. Alone again, saved as the survivor it is (abandon_resync).
                return self.abandon_resync(io);
            }
            if r.awaiting_ack() && self.grant_epoch == 0 {
                // (Once: then a mirroring site waiting for the witness's answer.)
                if self.mode != Mode::Mirroring {
                    self.source_unsure();
                }
                return;
            }
            if r.awaiting_ack()
                && let Some(t) = self.sess.peer_lease_end().filter(|&t| t > now)
            {
                // The target may have finished and be reading under the lease this site's
                // PONGs gave it: what goes ahead alone now (the deferred updates) is answered
                // once that lease has certainly expired, as after a grant.
                self.alone_after = Some(self.alone_after.map_or(t, |a| a.max(t)));
            }
            // The peer left again: keep every region dirty for the next attempt.
            return self.abandon_resync(io);
        }
        if let Some(gen_) = r.done_gate {
            // (A grant-less source's state saved as in sync: RESYNC_DONE goes out now.)
            if self.durable.is_durable(gen_) {
                r.done_gate = None;
                let h = self.resync_done_header();
                self.sess.queue(&h, &[]);
            }
            return;
        }
        let held = r.release_if_slow(now);
        if !held.is_empty() {
            tracing::warn!(volume = %self.cfg.name, held = held.len(),
                "mirror: a resync read of this replica is slow; the writes its last pass held go ahead alone (the resync ends later)");
            self.go_alone(io, held);
        }
        let Some(r) = self.resync.as_mut() else {
            return;
        };
        let (g, size) = (self.cfg.dirty_granularity, self.cfg.size);
        // An operator's rate limit or pause (`mirror_resync`); the last pass, which holds new
        // writes, always goes on.
        let limit = self
            .stats
            .resync_rate_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        let rate = if limit > 0 {
            limit
        } else {
            self.cfg.resync_rate
        };
        r.refill(now, rate, g);
        if self
            .stats
            .resync_paused
            .load(std::sync::atomic::Ordering::Relaxed)
            && !r.in_last_pass()
        {
            return;
        }
        let mut flush = false;
        while let Some(r) = self.resync.as_mut() {
            let ops = &self.ops;
            // (Updates waiting for the survivor state on disk, actlog.rs, count as writes.)
            let waiting = self.al.waiting_alone();
            let writes_in_flight = || {
                waiting
                    || ops
                        .iter()
                        .any(|(_, op)| op.origin == Origin::Local && op.applying > 0)
            };
            match r.next(&mut self.dirty, g, size, now, writes_in_flight) {
                Next::Stop => break,
                Next::Finish => {
                    // What this site wrote alone may sit in its device's cache: durable here
                    // first (the source's dirty map, its only record, ends with the attempt).
                    r.flush_started();
                    flush = true;
                    break;
                }
                Next::Read { offset, len } => {
                    let mut op = Op::new(
                        Origin::Resync,
                        Upd::ResyncRead,
                        (offset, len),
                        false,
                        Vec::new(),
                        Stage::Confirmed,
                        now,
                    );
                    op.session = self.sess.number;
                    let k = self.ops.insert(op);
                    // Through the apply queue: it waits for overlapping writes still in
                    // flight, and later ones wait for it, so the copy holds every write
                    // acknowledged before it.
                    self.enqueue_apply(io, k, 0, 0);
                }
            }
        }
        if flush {
            let k = self.own_flush_op(Origin::Resync, Stage::Confirmed);
            if let Some(r) = self.resync.as_mut() {
                r.flush_op = Some(k);
            }
            self.enqueue_apply(io, k, 0, 0);
        }
        let dirty = self.dirty_bytes();
        self.stats
            .dirty_bytes
            .store(dirty, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = &self.resync {
            self.stats
                .resync_unreadable_bytes
                .store(r.unreadable_bytes(), std::sync::atomic::Ordering::Relaxed);
            let rate = r.rate();
            self.stats
                .resync_rate
                .store(rate, std::sync::atomic::Ordering::Relaxed);
            self.stats.resync_eta_ms.store(
                dirty.saturating_mul(1000) / rate,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Retry the resync's unreadable regions, or its failed flush, at the next step (tests).
    #[cfg(test)]
    pub(super) fn retry_unreadable_now(&mut self) {
        if let Some(r) = self.resync.as_mut() {
            r.retry_now();
        }
    }

    /// Nothing is left to copy: tell the target. The resync ends only with its confirmation
    /// ([`Self::finish_resync`]); until then this site stays the survivor and updates wait.
    pub(super) fn send_resync_done(&mut self) {
        let Some(r) = self.resync.as_mut() else {
            return;
        };
        r.done_sent();
        let h = self.resync_done_header();
        self.sess.queue(&h, &[]);
    }

    /// RESYNC_DONE, carrying this source's witness grant epoch (0: none): the target, once
    /// complete, holds every write of that grant, so its failover thread may ask the witness
    /// at that epoch (`FailoverSlot::learned_epoch`) without waiting for a heartbeat in sync.
    fn resync_done_header(&self) -> Header {
        Header {
            seq: self.grant_epoch,
            ..Header::new(Type::ResyncDone)
        }
    }

    /// The target confirmed RESYNC_DONE (every copy applied there): mirror again, and give the
    /// grant back once "in sync" is durable.
    pub(super) fn finish_resync(&mut self, io: &mut IoCx) {
        if !self.resync.as_ref().is_some_and(|r| r.awaiting_ack()) {
            return;
        }
        let Some(r) = self.resync.take() else {
            return;
        };
        self.stats
            .resync_rate
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_eta_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_unreadable_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.set_mode(Mode::Mirroring);
        self.dirty.clear();
        self.stats
            .dirty_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(slot) = &self.cfg.failover
            && self.grant_epoch != 0
        {
            // The last volume of the group back in sync gives the group's grant back.
            if slot
                .survivors
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                <= 1
            {
                // Once "in sync" is durable (durable.rs).
                self.durable.release_after(slot, self.grant_epoch);
            }
            self.given_back = self.given_back.max(self.grant_epoch);
            self.grant_epoch = 0;
        }
        let (total, seconds, deferred) = r.finish();
        tracing::warn!(volume = %self.cfg.name, copied_bytes = total,
            seconds, deferred = deferred.len(),
            "mirror: resync complete; both replicas in sync, mirroring again");
        for k in deferred {
            self.start_mirrored(io, k);
        }
    }
}
