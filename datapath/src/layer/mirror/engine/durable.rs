//! The replica state's durability: what the engine hands the persister
//! ([`crate::layer::mirror::persist`]), what waits until a state is on disk, and the fail-stop
//! when it cannot be written.
//!
//! Model: every mode change builds a snapshot and hands it to the volume's
//! [`PersistHandle`] (a generation number back, no disk I/O on the reactor); the engine polls
//! the handle's atomics ([`Engine::poll_durable`], every reactor turn) and releases what waited.
//!
//! What waits for durability, and why (think of a crash right after the transition, and a
//! restart from the state that was on disk before it):
//! - **Survivor (epoch E)**: no update or metadata command is *acknowledged* as survivor
//!   until "survivor, epoch E" is durable. Updates arriving meanwhile wait and are applied
//!   alone only once it is (`actlog.rs`, `survivor_enqueue`: a crash before would restart the
//!   site in sync with an update applied alone that neither its activity log nor its suspect
//!   regions record); those applied before (held for the peer) have their answers held (not
//!   failed); failures are answered at once. Otherwise a crash could
//!   restart the site as "in sync" or "fenced" with writes acknowledged on this replica only:
//!   the peer, resyncing it or taken over by an operator, would silently drop them.
//! - **In sync after a resync (source)**: the source becomes "in sync" only when the target
//!   confirmed RESYNC_DONE (RESYNC_DONE_ACK), and the witness grant is given back only once
//!   that state is durable. Otherwise a crash could restart the site as "survivor, epoch E"
//!   after the witness gave a newer grant to the peer (two survivors: refused, an operator
//!   must choose). Restarting as survivor from the older state only resyncs the peer again
//!   (everything, as after any crash), which is safe.
//! - **Mirroring (again)**: a site that starts mirroring (its first session after a start,
//!   or the end of a resync at either end) acknowledges nothing before "in sync, not stopped
//!   cleanly" is durable: neither its initiators' answers nor its ACKs of the peer's updates,
//!   which answer the peer's initiators (`ack_wm`; while any state the answers wait
//!   for is not durable, a survivor's too). Otherwise a power loss right after could restart it from the older
//!   state: a clean stop's (state 0: nothing to reconcile, so writes its disk had not flushed
//!   would be lost for good) or a survivor's (its whole replica, missing those writes, copied
//!   over its peer's).
//! - **Clean stop**: synchronous, the engine waits for its last snapshot (clean: exact
//!   bitmaps) before it is dropped, and the daemon stops the persister only after that.
//! - Written lazily (nothing waits): **fenced** (a crash restarts from "in sync" or "new":
//!   the site serves nothing until a session decides, the same as a crash just before the
//!   fence; a fenced site acknowledges nothing, so there is nothing to protect), **resyncing**
//!   (a crash restarts the target from its earlier non-serving state, or once this one is on
//!   disk fenced, announcing replica state 3 again, which receives in every session
//!   (restore.rs); the survivor's session resyncs it again; no copy is applied before it is
//!   on disk (`Engine::take_copy`): restarted from the older state, the replica is as it was,
//!   never half-copied under a state that may make it a reconciliation's source). The end
//!   of a received resync is written lazily too (restarting as "resyncing" only means being
//!   resynced again), but as any site that mirrors again its answers wait for it (above).
//!
//! Fail-stop: a save that fails makes the volume stop at this site for good (until a
//! restart): every held and later request fails with EIO, reads too, the path state is
//! inaccessible, the session is dropped and none is accepted again, no grant is asked for,
//! and nothing more is written (the file keeps the last state persisted, which never claims
//! less than this site acknowledged). The status shows `failed` and the error. The grant, if
//! held, is not given back: the file may still say "survivor". Except right after a resync
//! (the grant waiting for "in sync" to be durable, the peer holding everything): then the state
//! file is removed, and the grant given back once that is durable (a restart is a new replica,
//! never the survivor of that grant); if even the removal fails, the grant is kept.
//!
//! Invariant: an answer that depends on the survivor state is in [`Engine::done`] only when
//! that state (or a newer one) is durable.

use super::*;
use crate::layer::mirror::failover::FailoverSlot;
use crate::layer::mirror::persist::{PersistHandle, Persister};
use crate::layer::mirror::state::{Persisted, ReplicaData};

/// The engine's durability bookkeeping.
#[derive(Default)]
pub(super) struct Durable {
    /// The daemon's persister (none: the engine starts its own when it first persists).
    persister: Option<Arc<Persister>>,
    pub(super) handle: Option<Arc<PersistHandle>>,
    /// Successful answers wait until this generation is durable (0: nothing waits).
    gate: u64,
    /// The answers waiting for `gate`.
    pub(super) held: Vec<(u32, IoTag, Result<(), Errno>)>,
    /// The group's grant to give back once this generation is durable: (slot, generation,
    /// epoch).
    release: Option<(Arc<FailoverSlot>, u64, u64)>,
    /// The state could not be persisted: the volume is stopped at this site.
    pub(super) failed: bool,
}

impl Durable {
    /// Successful answers are held (a survivor state is not durable yet).
    pub(super) fn waiting(&self) -> bool {
        self.gate != 0
    }

    /// Something waits for the persister (answers, a generation, a grant to give back), or
    /// the state could not be persisted: the engine's poll looks at it every turn.
    pub(super) fn pending(&self) -> bool {
        self.gate != 0 || !self.held.is_empty() || self.release.is_some() || self.failed
    }

    /// Persister generation `generation` is on disk (or nothing is persisted here).
    pub(super) fn is_durable(&self, generation: u64) -> bool {
        generation == 0
            || self
                .handle
                .as_ref()
                .is_none_or(|h| h.persisted() >= generation)
    }

    /// Give the grant of `epoch` back once the newest state submitted is durable.
    pub(super) fn release_after(&mut self, slot: &Arc<FailoverSlot>, epoch: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        match &self.handle {
            _ if self.failed => {}
            Some(h) if h.persisted() < h.submitted() => {
                self.release = Some((Arc::clone(slot), h.submitted(), epoch));
            }
            _ => slot.release.store(epoch, SeqCst),
        }
    }
}

impl Engine {
    /// Use the daemon's persister (before the first mode change).
    pub fn set_persister(&mut self, p: Arc<Persister>) {
        self.durable.persister = Some(p);
    }

    /// The state could not be persisted: the volume is stopped here.
    pub fn persist_failed(&self) -> bool {
        self.durable.failed
    }

    fn snapshot(&self, clean: bool) -> Persisted {
        let mut suspect = self.suspect.clone();
        if self.mode != Mode::Survivor {
            // At a stop, or a mode change, with updates not confirmed yet.
            self.unconfirmed_into(&mut suspect);
        }
        // A source without a grant that sent (or is about to send) RESYNC_DONE is saved as in
        // sync: restarted as a survivor, it would serve alone while the target, which may have
        // finished and been granted the volume since, serves alone too (alone.rs,
        // `resync_source_flushed`).
        let mode = if self.mode == Mode::Survivor
            && self.grant_epoch == 0
            && self.resync.as_ref().is_some_and(|r| r.awaiting_ack())
        {
            Mode::Mirroring
        } else {
            self.mode
        };
        Persisted {
            // States 5 and 6 are not modes: the activity log and `clean` say them again.
            mode: replica::replica_state(mode, self.new_replica, self.target.half_copied) as u8,
            clean,
            // (Only a survivor holds a grant: the source's "in sync" at its resync's end is
            // saved before the grant is given back.)
            // Fenced for want of an answer (flags bit 3): one more than the epoch at which this
            // volume's replica was last complete (the site's known epoch when its session
            // ended in sync, survivor.rs `complete`; not the group's now, which another volume
            // may have raised since), at which a restart asks again (restore.rs; asked at 0,
            // the witness would refuse it as stale); 0 when not known, and for an operator's
            // takeover, whose grant is adopted whatever its epoch (`adopt_lost_grant`, as when
            // answered: the operator accepted the loss), so after a restart too.
            epoch: match (mode, self.fenced_unanswered) {
                (Mode::Survivor, _) => self.grant_epoch,
                (Mode::Fenced, Some((_, true))) if !self.unanswered_retried => 0,
                (Mode::Fenced, Some(_)) if self.failed.is_none() => self.witness.saved_complete(),
                // Denied while the peer held the group (flags bit 5): the same, at which a
                // restart asks again once that grant is given back (restore.rs).
                (Mode::Fenced, None) if self.denied_by.is_some() && self.failed.is_none() => {
                    self.witness.saved_complete()
                }
                _ => 0,
            },
            size: self.cfg.size,
            granularity: self.cfg.dirty_granularity,
            bitmap: {
                // Regions a resync under way already copied may not have reached the peer.
                let mut d = self.dirty.clone();
                if let Some(r) = &self.resync {
                    d.or_with(&r.copied);
                }
                d.words().to_vec()
            },
            written: self.written.words().to_vec(),
            led: self.led || self.role == Role::Leader,
            leads: Some((self.term, self.role == Role::Leader)),
            suspect: Some(suspect.words().to_vec()),
            identity: match self.cfg.replica_data {
                ReplicaData::Kept { identity } => identity,
                ReplicaData::Volatile => 0,
            },
            boot: self.cfg.boot_id,
            host_restarted: self.al.unclean && self.al.host_restarted,
            // Fenced for want of an answer: the witness may hold a grant for this site that a
            // restart must still adopt from its word (alone.rs, `adopt_lost_grant`); never
            // once its replica failed.
            fenced_unanswered: match (mode, self.fenced_unanswered) {
                (Mode::Fenced, Some((_, takeover))) if self.failed.is_none() => Some(takeover),
                _ => None,
            },
            // Denied while the peer held the group: a restart asks again once that grant is
            // given back (`ask_again_if_released`), as without the restart; never once its
            // replica failed, and only with the epoch its replica was complete at known.
            fenced_denied: mode == Mode::Fenced
                && self.fenced_unanswered.is_none()
                && self.denied_by.is_some()
                && self.failed.is_none()
                && self.witness.saved_complete() != 0,
        }
    }

    /// Replica states handed to the persister so far (tests).
    #[cfg(test)]
    pub(super) fn persists_submitted(&self) -> u64 {
        self.durable.handle.as_ref().map_or(0, |h| h.submitted())
    }

    /// Hand the replica state (mode, epoch, bitmaps) to the persister if a state file is
    /// configured; its generation (0: nothing to write). `clean`: a clean stop, the bitmaps
    /// are exact.
    pub(super) fn persist(&mut self, clean: bool) -> u64 {
        if self.durable.failed {
            return 0;
        }
        let Some(path) = self.cfg.state_file.clone() else {
            return 0;
        };
        if self.durable.handle.is_none() {
            let Some(p) = self.persister() else {
                return 0;
            };
            self.durable.handle = Some(p.register(&self.cfg.name, path));
        }
        let snap = self.snapshot(clean);
        self.durable
            .handle
            .as_ref()
            .expect("registered")
            .submit(snap)
    }

    /// The persister (the daemon's, or one started for this engine; none: it could not be
    /// started, and the engine fail-stopped).
    pub(super) fn persister(&mut self) -> Option<Arc<Persister>> {
        if let Some(p) = &self.durable.persister {
            return Some(Arc::clone(p));
        }
        match Persister::spawn() {
            Ok(p) => {
                self.durable.persister = Some(Arc::clone(&p));
                Some(p)
            }
            Err(e) => {
                self.fail_stop(&format!("cannot start the persister thread: {e}"));
                None
            }
        }
    }

    /// Persist the new mode `m` (from `set_mode`); a survivor's answers, and a site's that
    /// mirrors again, wait until it is durable.
    pub(super) fn persist_mode(&mut self, m: Mode) {
        let g = self.persist(false);
        if matches!(m, Mode::Survivor | Mode::Mirroring) && g != 0 {
            self.durable.gate = g;
        }
    }

    /// The applied watermark the peer may be told (ACK): while a state this site's answers
    /// wait for is not on disk (`gate`: it starts mirroring, or serves alone), no more than it
    /// was told. An ACK answers the peer's initiators as this site's own answers do: a follower
    /// restarted after a clean stop acknowledged the leader's updates before its "in sync, not
    /// stopped cleanly" was on disk, and a power loss then restarted it announcing 0 without
    /// writes both sites had acknowledged (test
    /// `actlog::a_site_that_starts_mirroring_acknowledges_the_peers_updates_only_once_that_is_on_disk`).
    pub(super) fn ack_wm(&self) -> u64 {
        if self.durable.gate != 0 {
            self.sess.acked().min(self.aq.applied.wm)
        } else {
            self.aq.applied.wm
        }
    }

    /// Answer an initiator (held while a survivor state is not durable yet).
    pub(super) fn answer(&mut self, from: u32, tag: IoTag, r: Result<(), Errno>) {
        if r.is_ok() && self.holding_alone() {
            // Also held until the lost peer's read lease has expired (`release_alone`).
            self.alone_held.push((from, tag, r));
        } else if r.is_ok() && self.durable.gate != 0 {
            self.durable.held.push((from, tag, r));
        } else {
            self.done.push((from, tag, r));
        }
    }

    /// Take the persister's news: release what waited for a durable state, or fail-stop.
    /// Cheap (atomic loads); the poller calls it every turn. (Inline: without a state file,
    /// one load.)
    #[inline]
    pub fn poll_durable(&mut self) {
        if self.durable.handle.is_some() && (!self.durable.failed || self.durable.release.is_some())
        {
            self.poll_durable_now();
        }
    }

    fn poll_durable_now(&mut self) {
        let Some(h) = &self.durable.handle else {
            return;
        };
        if self.durable.failed {
            // Fail-stopped with the state file being removed (`fail_stop`): the grant goes
            // back once no file is left to restart from.
            if let Some((_, g, _)) = &self.durable.release
                && h.persisted() >= *g
            {
                let (slot, _, epoch) = self.durable.release.take().expect("checked");
                tracing::warn!(volume = %self.cfg.name, epoch,
                    "mirror: the replica state file is removed; giving the grant back");
                slot.release
                    .store(epoch, std::sync::atomic::Ordering::SeqCst);
            }
            return;
        }
        if h.failed() != 0 {
            let e = h.error();
            return self.fail_stop(&e);
        }
        let p = h.persisted();
        if self.durable.gate != 0 && p >= self.durable.gate {
            self.durable.gate = 0;
            let held = std::mem::take(&mut self.durable.held);
            self.done.extend(held);
        }
        if let Some((_, g, _)) = &self.durable.release
            && p >= *g
        {
            let (slot, _, epoch) = self.durable.release.take().expect("checked");
            slot.release
                .store(epoch, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Fail every held answer (the stop deadline, or a fail-stop).
    pub(super) fn fail_held(&mut self) {
        for (from, tag, _) in std::mem::take(&mut self.durable.held) {
            self.done.push((from, tag, Err(Errno::IO)));
        }
    }

    /// The state cannot be persisted: stop serving the volume at this site (see the module
    /// doc).
    pub(super) fn fail_stop(&mut self, why: &str) {
        self.durable.failed = true;
        self.durable.gate = 0;
        self.fail_held();
        // A grant waiting to be given back until "in sync" is durable (the resync just ended:
        // the peer has everything) can never be given back so: the file may still say
        // "survivor" with that grant, and the peer, in sync, is denied at the next loss while
        // this site holds it (the volume stopped at both sites). Given back only once the
        // file is removed (a restart is then a new replica, which never serves on the old
        // grant, the witness out of reach or not); kept when even that fails.
        if let Some((slot, _, epoch)) = self.durable.release.take()
            && let Some(h) = &self.durable.handle
        {
            let g = h.submit(crate::layer::mirror::persist::Snapshot::Removed);
            tracing::warn!(volume = %self.cfg.name, epoch,
                "mirror: the resync ended in sync but that cannot be persisted; removing the \
                 replica state file to give the grant back (a restart is a new replica)");
            self.durable.release = Some((slot, g, epoch));
        }
        self.stats.set_persist_error(why);
        tracing::error!(volume = %self.cfg.name, error = why, mode = ?self.mode,
            "mirror: the replica state cannot be persisted; this site stops serving the volume \
             (no I/O, no survivorship). Fix the state directory (space, permissions, device) and \
             restart the daemon: it resumes from the last state persisted");
        // A resync this site was sending stops (the peer stays a resync target, serving
        // nothing); requests it deferred are failed with the rest by the fence.
        self.resync = None;
        self.stats
            .resync_rate
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if self.sess.up || self.link_key.is_some() {
            self.kill_link = Some("the replica state cannot be persisted");
        }
        self.fence("the replica state cannot be persisted");
    }

    /// A clean stop: persist the exact state and wait until it is on disk. The state calls
    /// the stop clean (no update unconfirmed: the replica holds exactly what the state says)
    /// only once the replica's device has flushed: its writes acknowledged without FUA may
    /// still sit in its cache, which a power loss after the stop would drop. If it cannot be
    /// flushed, the stop is saved as unclean with every region ever written here suspect (the
    /// next session reconciles them from the peer).
    /// True when the device flushed (the activity log may then be emptied too).
    pub(super) fn persist_clean_stop(&mut self) -> bool {
        let flushed = match &self.cfg.replica_path {
            Some(p) => std::fs::File::open(p).and_then(|f| f.sync_data()),
            None => Ok(()),
        };
        if let Err(e) = &flushed {
            tracing::error!(volume = %self.cfg.name, error = %e,
                "mirror: the replica's device could not be flushed at the stop; the stop is \
                 saved as unclean, and the next session reconciles every region ever written \
                 here");
            // Which writes the device may drop is not known: every one it ever took.
            let written = self.written.clone();
            self.suspect.or_with(&written);
        }
        // A site not reconciled since an unclean stop stays unclean (its log, left as it
        // was, or this flag says it again at the next start).
        let g = self.persist(flushed.is_ok() && self.replica_state() < 5);
        if g == 0 {
            return flushed.is_ok();
        }
        let h = self.durable.handle.as_ref().expect("persisted");
        if !h.wait(g, Duration::from_secs(60)) {
            tracing::error!(volume = %self.cfg.name, error = %h.error(),
                "mirror: the replica state could not be persisted at the stop; the next start \
                 resumes from the last state persisted (bitmaps not exact)");
        }
        flushed.is_ok()
    }

    /// Start as a new replica (replica state 4, never in sync): it serves nothing until its
    /// first session has given it every region its peer ever wrote (or both are new). `why`:
    /// the replica's data is unknown (logged); `None`: no state file yet, a new replica.
    ///
    /// Called by `restore` when there is no state file, no `state_dir` at all (the state
    /// lived in the previous process's memory, so the replica may miss anything written at
    /// the peer since, or hold updates the peer never had), a RAM replica (its data died
    /// with the previous process whatever the file says), or a file or device that is not the
    /// one the state file was written for ([`Engine::state_not_of_this_data`]).
    pub(super) fn start_new_replica(&mut self, why: Option<&str>) {
        if let Some(why) = why {
            tracing::warn!(volume = %self.cfg.name, why,
                "mirror: this replica's data is unknown; it starts as a new replica and serves \
                 nothing until its peer has sent it every region ever written");
        }
        self.new_replica = true;
        self.mode = Mode::Waiting;
        self.stats.set_mode(Mode::Waiting);
        self.persist(false);
    }

    /// Why the persisted state `p` does not describe the data this replica holds now
    /// (`None`: it does, as far as can be told; state.rs says what cannot be).
    pub(super) fn state_not_of_this_data(&self, p: &Persisted) -> Option<&'static str> {
        if p.mode == 4 {
            // Already a new replica: nothing is claimed about the data.
            return None;
        }
        match self.cfg.replica_data {
            ReplicaData::Volatile => {
                if p.mode == 1 {
                    tracing::error!(volume = %self.cfg.name, epoch = p.epoch,
                        "mirror: this RAM replica was the survivor: the writes acknowledged \
                         here alone are lost with it; the peer must be taken over \
                         (mirror_takeover) to serve again");
                }
                Some("a RAM replica's data does not survive a restart")
            }
            ReplicaData::Kept { identity }
                if identity != 0 && p.identity != 0 && identity != p.identity =>
            {
                Some("the file or device is not the one the state file was written for")
            }
            ReplicaData::Kept { .. } => None,
        }
    }

    /// Wait until everything handed to the persister is on disk (tests).
    #[cfg(test)]
    pub(super) fn wait_persisted(&self) -> bool {
        self.durable
            .handle
            .as_ref()
            .is_none_or(|h| h.wait(h.submitted(), Duration::from_secs(10)))
    }

    /// Answers held until the survivor state is durable.
    #[cfg(test)]
    pub(super) fn held_answers(&self) -> usize {
        self.durable.held.len()
    }
}
