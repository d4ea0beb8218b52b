//! The local replica failed (an apply, a flush or a read of the local device returned an
//! error): a site whose peer holds the volume takes its replica out of service for the
//! volume; a survivor, the only current copy, passes the error on and goes on serving (the
//! engine's routing, not a part).
//!
//! Model (DRBD's on-io-error detach, a RAID1 base device failure; Linux md never fails the
//! last working leg of a mirror, it returns the error to the caller instead): one failed local
//! update means this replica may no longer hold what the stream put on it, and an applied
//! watermark that cannot pass that update would stop every later acknowledgement of the
//! volume. So a site that mirrors (in sync, or holding updates without its peer, or fenced,
//! or a resync target), at once:
//! - records the failed update's region, and every region of an update it still tracks (not
//!   confirmed by the peer), as *suspect* (`give_up_held`, as a fence does), so the peer
//!   copies them back when this site is resynced;
//! - fails every held request, the failed one among them (unavailable, as a fence does:
//!   NVMe ANA Inaccessible, so a multipath host retries it at the peer; a compare-and-write
//!   decided or sent to the peer EIO, its outcome unknown) and serves nothing more for the volume (path state
//!   inaccessible), until the daemon restarts with a working device;
//! - persists the *fenced* replica state (the session decision then makes this site the
//!   target of the survivor's resync);
//! - drops the link (the peer fails over through the witness), withdraws its preferred claim
//!   at the witness (so the peer is granted without waiting out the tie grace), and never
//!   asks for a grant, nor accepts or dials a session again;
//! - publishes state `failed` with the reason (`mirror_status`).
//!
//! A survivor (also while it is a resync source) has no peer to hand the volume to: taking
//! its replica out of service would stop the volume at both sites for one bad sector. It
//! answers the failed request with the device's error ([`Engine::local_failure`]), and its
//! region stays dirty (marked before the apply), so the peer gets whatever the replica holds
//! there; a resync copy it cannot read waits for a retry, and the resync does not end before
//! it is copied (resync.rs); each such error is counted and the last one shown
//! (`mirror_status` `local_errors`, `last_local_error`).
//!
//! A local apply that has not completed for half the peer timeout, while the peer could take
//! over, counts as such a failure ([`Engine::check_slow_apply`], every tick).
//!
//! An initiator's read goes straight to the local device with the initiator's tag
//! (`MirrorChannel::read`). A read the device refuses at once (`ReadStart::Failed`: the fault
//! injection layer, a RAM device), or fails in its io_uring completion (a file or block
//! device returning EIO: the runtime shows it to the volume's channel first,
//! `Channel::read_failed`, through the connection's `Conn::volume_of`), fails the replica
//! too, at the engine's next tick (reported through `MirrorStats` by [`Engine::host_read`],
//! [`Engine::host_read_failed`] or, on another reactor, `RemoteChannel`); that read answers
//! `Errno::UNAVAILABLE` (NVMe: ANA inaccessible, so a multipath host retries it at the other
//! site), or the device's error at a survivor. The compare-and-write reads, which the engine
//! issues, are local failures as above. Not covered: the reads of an iSCSI EXTENDED COPY
//! (their task's volume is the copy's target) fail that copy only.
//!
//! Invariants: a site whose replica failed acknowledges nothing more and never wins a grant;
//! a survivor's replica never fails (its errors go to the requests they belong to).

use super::*;
use crate::bdev::ReadStart;

/// A host read the local device failed with `e` over `offset..offset+len`: reported for the
/// home engine's next tick (which fails the replica, or at a site holding the only current
/// copy notes the error); answered with the device's error where no other site can serve it
/// (`only_copy`), else `Errno::UNAVAILABLE` (another site may: NVMe ANA inaccessible, so a
/// multipath host retries it there).
pub(crate) fn host_read_failure(
    stats: &MirrorStats,
    only_copy: bool,
    offset: u64,
    len: u64,
    e: Errno,
) -> Errno {
    stats.report_read_failure(offset, len, e);
    if only_copy { e } else { Errno::UNAVAILABLE }
}

impl Engine {
    /// The volume's path state at this site now: [`crate::layer::mirror::path_state`] of the
    /// mode, role and read lease, and inaccessible whatever the mode once the replica failed
    /// or the replica state cannot be persisted (a failed survivor keeps its mode).
    pub fn path_state(&self, now: Instant) -> crate::bdev::volume::PathState {
        if self.failed.is_some() || self.durable.failed {
            crate::bdev::volume::PathState::Inaccessible
        } else {
            crate::layer::mirror::path_state(self.mode, self.role, self.may_read(now))
        }
    }

    /// The other site's path state as this site knows it
    /// ([`crate::layer::mirror::peer_path_state`] of the mode, role and session; not known,
    /// transitioning, once this site's replica failed or its state cannot be persisted).
    pub fn peer_path_state(&self) -> crate::bdev::volume::PathState {
        if self.failed.is_some() || self.durable.failed {
            crate::bdev::volume::PathState::Transitioning
        } else {
            crate::layer::mirror::peer_path_state(self.mode, self.role, self.sess.up)
        }
    }

    /// This site's replica failed: the reason, or `None`.
    pub fn replica_failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Tell the failover thread whether this site claims the volume's group as preferred at
    /// the witness: not while its replica failed, nor while fenced, resyncing or waiting for
    /// its first session since the start (counted per volume: the group is claimed only while
    /// no volume of it is out here, `FailoverSlot::withdrawn`). Such a site
    /// never asks for a grant (only an operator's takeover does, which claims it again), so
    /// its claim could only make the peer's request wait out the tie grace, and fail, while
    /// the site heartbeats (a site restarted fenced with a repaired device, say).
    pub(super) fn publish_withdrawn(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        // (Waiting: no session since the start; such a site never asks for a grant, so a
        // claim would only make the witness deny the peer on the tie while the link is down.)
        let out = self.failed.is_some()
            || self.durable.failed
            || matches!(self.mode, Mode::Fenced | Mode::Resyncing | Mode::Waiting);
        let slot = self.cfg.failover.clone();
        let same = match (&self.withdrawn_in, &slot) {
            (Some(c), Some(s)) => Arc::ptr_eq(c, s),
            (c, _) => c.is_none(),
        };
        if !same || (!out && self.withdrawn_in.is_some()) {
            self.stop_withdrawn();
        }
        if out
            && self.withdrawn_in.is_none()
            && let Some(s) = slot
        {
            s.withdrawn.fetch_add(1, SeqCst);
            self.withdrawn_in = Some(s);
        }
    }

    /// Not counted as withdrawn any more (also when the engine goes).
    pub(super) fn stop_withdrawn(&mut self) {
        if let Some(slot) = self.withdrawn_in.take() {
            slot.withdrawn
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A host read on the local replica (the read lease already checked). One the device
    /// refuses at once is reported (`MirrorStats::report_read_failure`): the replica is taken
    /// out of service at the engine's next tick (see the module doc), and the read answers
    /// `Errno::UNAVAILABLE`.
    pub fn host_read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        let only_copy = self.only_current_copy();
        match self.inner.read(io, tag, offset, len) {
            ReadStart::Failed(e) => ReadStart::Failed(host_read_failure(
                &self.stats,
                only_copy,
                offset,
                u64::from(len),
                e,
            )),
            r => r,
        }
    }

    /// Reads refused now ([`Engine::may_read`] false) may be served soon, so a read is held
    /// rather than refused (`held.rs`): mirroring (its lease lapsed, or the link was just lost
    /// and the witness is being asked) or a survivor waiting out its peer's lease; never
    /// once the replica failed or in a mode that serves nothing.
    pub fn may_read_soon(&self) -> bool {
        crate::layer::mirror::held::may_come(self.mode, self.failed.is_some())
    }

    /// A host read the local device failed in its completion (`Channel::read_failed`): as
    /// one refused at once ([`Self::host_read`]), reported for the next tick; returns the
    /// answer.
    pub fn host_read_failed(&mut self, offset: u64, len: u64, e: Errno) -> Errno {
        host_read_failure(&self.stats, self.only_current_copy(), offset, len, e)
    }

    /// This site may hold the volume's only current copy: a survivor, or a resync source
    /// still waiting to hear its target has everything (`source_unsure` makes it a mirroring
    /// site that lost its peer: the target may not have finished).
    pub(super) fn only_current_copy(&self) -> bool {
        self.mode == Mode::Survivor || self.resync.is_some()
    }

    /// A local operation on the replica failed with `e` over `offset..offset+len`: a site
    /// that may hold the only current copy notes it (the request gets the error; see the
    /// module doc), any other site takes its replica out of service ([`Self::fail_replica`]).
    pub(super) fn local_failure(&mut self, what: &str, offset: u64, len: u64, e: Errno) {
        if !self.only_current_copy() {
            return self.fail_replica(what, offset, len, e);
        }
        if len > 0 {
            // (A survivor marked it before the apply.) The peer gets whatever this replica
            // holds there.
            self.mark_dirty(offset, len);
        } else {
            // A flush failed: any write this replica completed since its last good flush may
            // be lost from its device (and a resync copy read from its cache may be newer at
            // the peer than here): the peer gets every region ever written here again, so
            // the two end the same.
            self.dirty_everything_written();
        }
        self.local_error_noted(what, offset, len, e);
    }

    /// A local error answered without taking the replica out of service: logged, counted and
    /// shown (`mirror_status` `local_errors`, `last_local_error`).
    pub(super) fn local_error_noted(&mut self, what: &str, offset: u64, len: u64, e: Errno) {
        let why = format!("{what} of {len} bytes at {offset} returned errno {}", e.0);
        tracing::error!(volume = %self.cfg.name, mode = ?self.mode, error = %why,
            "mirror: the local replica failed an I/O; this site holds the only current copy, so it answers that request with the error and goes on serving (the region is copied to the peer at its resync once it reads)");
        self.stats.note_local_error(why);
    }

    /// A local operation on the replica failed with `e` over `offset..offset+len`: take the
    /// replica out of service (see the module doc). Idempotent.
    pub(super) fn fail_replica(&mut self, what: &str, offset: u64, len: u64, e: Errno) {
        if self.failed.is_some() {
            return;
        }
        let why = format!(
            "the local replica failed: {what} of {len} bytes at {offset} returned errno {}",
            e.0
        );
        tracing::error!(volume = %self.cfg.name, mode = ?self.mode, error = %why,
            "mirror: the local replica failed; this site stops serving the volume (no I/O, no \
             survivorship), the peer serves it alone; replace or repair the device and restart \
             the daemon: this site is then resynced from the peer");
        self.failed = Some(why.clone());
        self.stats.set_failure(&why);
        self.publish_withdrawn();
        // (Never asks again: counted neither in sync nor out, `failover_tick`.)
        self.stop_sync();
        if let Some(slot) = &self.cfg.failover {
            use std::sync::atomic::Ordering::SeqCst;
            // Its own request not sent yet is withdrawn, but the flag is the group's: only
            // when no other volume of the group waits on a request or is fenced for want of
            // an answer (`FailoverSlot::watching`, this volume's own count aside). Withdrawn
            // under another volume's request, that volume waited for an answer for ever,
            // neither serving nor fenced, and stayed counted as watching, so a lost grant was
            // never given back by a volume mirroring again.
            let mine = u32::from(self.watching.is_some());
            if self.witness.pending() && slot.watching.load(SeqCst) <= mine {
                slot.want.store(false, SeqCst);
            }
        }
        if self.sess.up || self.link_key.is_some() {
            self.kill_link = Some("the local replica failed");
        }
        // (A survivor never comes here: `local_failure`.)
        debug_assert!(self.mode != Mode::Survivor);
        // A resync this site was sending (one waiting for its confirmation, the link lost:
        // `source_unsure`) stops: what it copied is dirty again; the updates it deferred are
        // failed with the rest by the fence.
        if let Some(r) = self.resync.take() {
            let _deferred = r.abandon(&mut self.dirty);
            self.stats
                .resync_rate
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
        if len > 0 {
            self.suspect.set_range(offset, len);
        } else {
            // A flush failed: any write this replica completed may not be durable, even one
            // the peer confirmed; every region ever written is suspect.
            self.suspect.or_with(&self.written);
        }
        self.fence("the local replica failed");
    }
    /// A local apply (write, write-zeroes, unmap, compare-and-write of an update, or a resync
    /// copy) that has not completed for half the peer timeout while the peer is there to take
    /// over (the pair mirroring in sync, or this site a resync target that has RESYNC_DONE,
    /// its closing flush watched too; the link up, a witness configured): the device is
    /// treated as failed, as if it had returned an error ([`Engine::fail_replica`]: this site serves no I/O, withdraws its
    /// claim at the witness, and the peer, granted, acknowledges alone). A slow or hung sector
    /// would otherwise hold every later update of the volume at both sites (each site's
    /// acknowledgement is a cumulative applied watermark) until the peer timeout fails them
    /// all with EIO. Alone (no link, or no witness to hand the volume over) a slow device is
    /// waited for: failing it would stop the volume.
    pub(super) fn check_slow_apply(&mut self, now: Instant) {
        // (Only while mirroring in sync, or as a resync target once RESYNC_DONE came: its
        // source then holds its hosts' writes until this site confirms, so a slow copy or
        // closing flush here would hold them until they fail. A survivor or resync source is
        // the volume's only whole copy; a target before RESYNC_DONE holds nothing back.)
        let target_holding = self.mode == Mode::Resyncing && self.target.is_done();
        if !self.sess.up
            || self.cfg.failover.is_none()
            || self.failed.is_some()
            || !(self.mode == Mode::Mirroring || target_holding)
        {
            self.slow_watch.clear();
            return;
        }
        let limit = self.cfg.peer_timeout / 2;
        let mut seen = std::mem::take(&mut self.slow_watch);
        let mut slow = None;
        let mut watched = 0;
        for (slot, ticket, a) in self.aq.running() {
            let upd = self.ops[a.op].upd;
            if upd == Upd::ResyncRead || (upd == Upd::Flush && !target_holding) {
                continue;
            }
            if seen.len() <= slot {
                seen.resize(slot + 1, None);
            }
            let since = match seen[slot] {
                Some((t, since)) if t == ticket => since,
                _ => now,
            };
            seen[slot] = Some((ticket, since));
            watched += 1;
            if slow.is_none() && now.saturating_duration_since(since) >= limit {
                slow = Some((a.offset, a.len));
            }
        }
        if watched == 0 {
            seen.clear();
        }
        self.slow_watch = seen;
        if let Some((offset, len)) = slow {
            self.slow_watch.clear();
            self.fail_replica(
                &format!("an apply not completed after {} ms", limit.as_millis()),
                offset,
                len,
                Errno(libc::ETIMEDOUT),
            );
        }
    }
}
