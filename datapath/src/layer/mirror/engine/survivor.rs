//! Asking the witness: when a site that lost its peer (or whose operator asked for a takeover)
//! asks for the volume's grant, and what the answer means ([`Witness`]).
//!
//! Model: the engine's failover slot is shared with the daemon's witness client: the engine
//! sets `want`, the client asks the witness and stores the `outcome` (and the grant's
//! `epoch`). [`Witness::tick`] runs every engine tick with what it needs of the site
//! ([`SiteNow`]) and returns what the engine must do ([`Grant`]): nothing yet, become the
//! survivor, or fence. What serving alone and fencing do is the engine's (`alone.rs`).
//!
//! Invariants:
//! - Only a site that has had a session lost its peer: a site just started waits for its
//!   first session (it must not win a grant against a peer it has never seen) unless an
//!   operator asked it to take over (`mirror_takeover`).
//! - One request per lost link (or per takeover): `asked` is reset only when the link goes
//!   down again, a new takeover starts, the grant answered was given back by another
//!   volume of the group before this one could take it ([`Witness::ask_again`]), or, once,
//!   the grant whose holder denied this site was given back meanwhile ([`Witness::ask_fenced`]).
//! - A takeover is never asked while the link is up or the daemon stops (the request is
//!   dropped).
//! - A grant asked for while the link was down (a loss's, or an operator's takeover) but
//!   answered after a session came back is given back ([`Grant::Unwanted`]), never acted on
//!   beside a peer in session: otherwise the witness would keep this site as the
//!   holder, and at the next loss deny the peer, even when this site is the one that is gone
//!   (both sites down); a request not sent yet is withdrawn
//!   when the volume is alone in its group (the `want` flag is the group's: another volume may
//!   still need it).

use super::Mode;
use crate::layer::mirror::failover::{DENIED, FailoverSlot, GRANTED, UNREACHABLE};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;

/// What the witness's answer asks of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Grant {
    /// Nothing (yet).
    Wait,
    /// This site holds the volume from `epoch` on: serve alone. `takeover`: granted to an
    /// operator's takeover (which regions differ from the peer is unknown).
    Granted { epoch: u64, takeover: bool },
    /// No grant: fence, for this reason.
    Fence(&'static str),
    /// No answer from the witness: fence. (It may have recorded a grant whose answer was
    /// lost: the engine then watches its word, `Engine::adopt_lost_grant`; `takeover`: the
    /// request was an operator's takeover.)
    Unanswered { takeover: bool },
    /// Granted `epoch` after the session came back: give it back (see the module doc).
    Unwanted { epoch: u64 },
    /// No answer, after the session came back: the witness may hold a grant for this site
    /// nobody knows of; never acted on, given back once the witness's word names it
    /// (`Engine::adopt_lost_grant`).
    LostInSession,
}

/// What the witness part needs to know of the site, now.
#[derive(Clone, Copy, Debug)]
pub(super) struct SiteNow {
    /// A session is running.
    pub(super) up: bool,
    /// A session has run since the start.
    pub(super) had_session: bool,
    pub(super) mode: Mode,
    /// The daemon is stopping.
    pub(super) draining: bool,
}

/// The state of asking the witness (see the module doc).
#[derive(Default)]
pub(super) struct Witness {
    /// A grant was asked for since the link went down.
    asked: bool,
    /// An operator's takeover is being asked for.
    takeover: bool,
    /// The answer to the request since the link went down was acted on.
    answered: bool,
    /// That answer was to an operator's takeover asked here.
    answered_takeover: bool,
    /// A fenced site may ask once more ([`Witness::ask_fenced`]).
    fenced_retry: bool,
    /// Restored fenced for want of an answer, or denied while the peer held the group, its
    /// device holding what it applied before the fence ([`Witness::restored_unanswered`],
    /// [`Witness::restored_denied`]): that second request is asked without a session in this
    /// process.
    restored: bool,
    /// The group's epoch at which this volume's replica was last known complete: the site's
    /// known epoch when its session last ended in sync, or the witness's epoch seen while it
    /// mirrored in session (or restored with a fence for want of an answer), or the grant
    /// epoch of its own last RESYNC_DONE, or a grant it served on ([`Witness::complete_at`]).
    complete: u64,
    /// `complete` is not known: restored fenced for want of an answer from a state file
    /// that did not save it (a version-6 file's epoch 0: written before 1166a25, or at epoch
    /// 0, which version 6 could not tell apart; or a version-7 file's 0: an operator's
    /// takeover, judged by nobody but the operator). A lost grant is then adopted whatever its
    /// epoch ([`Witness::may_adopt`]).
    complete_unknown: bool,
    /// The epoch of the peer's grant that denied this site, seen given back before this
    /// site's request was asked again ([`Witness::ask_after_give_back`]; 0: none): a grant
    /// one above it the witness's word names this site's may be adopted
    /// ([`Witness::may_adopt`]). Cleared once the link is up.
    peer_given_back: u64,
}

impl Witness {
    /// A request was sent (or is to be) and its answer not acted on yet.
    pub(super) fn pending(&self) -> bool {
        self.asked && !self.answered
    }

    /// The grant answered was given back by another volume of the group before this one
    /// could take it (`FailoverSlot::claim_grant`): ask for the group again, an operator's
    /// takeover as one (its flag raised again, so it is dropped if the link is up by then;
    /// before, it was not asked again at all: the takeover vanished, the volume fenced).
    pub(super) fn ask_again(&mut self, takeover_flag: &AtomicBool) {
        self.asked = false;
        self.answered = false;
        if std::mem::take(&mut self.answered_takeover) {
            takeover_flag.store(true, SeqCst);
        }
    }

    /// A site denied because its peer held the grant, the link still down, sees the witness's
    /// word that this very grant was given back (nobody holds the group at the denial's
    /// epoch: the holder released it without a session with this site, as a fail-stopped
    /// resync source does, durable.rs): ask once more, fenced. The witness's own rules judge
    /// the request (refused as stale unless this site learned the group's epoch in sync).
    pub(super) fn ask_fenced(&mut self) {
        self.asked = false;
        self.answered = false;
        self.fenced_retry = true;
    }

    /// [`Witness::ask_fenced`] once the peer's grant at `epoch` that denied this site is seen
    /// given back (nobody holds the group at that epoch).
    pub(super) fn ask_after_give_back(&mut self, epoch: u64) {
        self.ask_fenced();
        self.peer_given_back = epoch;
    }

    /// Restored from a fence for want of an answer whose replica still holds every write
    /// acknowledged before it (restore.rs): its second request ([`Witness::ask_fenced`]) is
    /// the old process's, asked by this one without a session of its own (before, a restarted
    /// site never asked again: with its peer lost for good, only an operator's takeover made
    /// the volume serve again).
    pub(super) fn restored_unanswered(&mut self) {
        self.restored = true;
    }

    /// Restored from a fence denied while the peer held the group, its device holding what it
    /// applied before the fence (restore.rs): the second request ([`Witness::ask_fenced`]) once
    /// that grant is given back is the old process's, asked by this one without a session of
    /// its own, as for [`Witness::restored_unanswered`].
    pub(super) fn restored_denied(&mut self) {
        self.restored = true;
    }

    /// The epoch at which this volume's replica was last known complete (see `complete`).
    pub(super) fn complete(&self) -> u64 {
        self.complete
    }

    /// See [`Witness::restored_unanswered`].
    pub(super) fn is_restored_unanswered(&self) -> bool {
        self.restored
    }

    /// The link went down: the next loss asks again. `in_sync_at`: the group's epoch the site
    /// knows or learned (`learned_epoch`) if this volume was mirroring in sync until now (its replica then held every write of
    /// that epoch's grants), else `None`.
    pub(super) fn link_lost(&mut self, in_sync_at: Option<u64>) {
        self.asked = false;
        self.answered = false;
        if let Some(e) = in_sync_at {
            self.complete = self.complete.max(e);
            self.complete_unknown = false;
        }
    }

    /// This volume's replica holds every write of the group's grants up to `epoch` (its own
    /// resync from that grant's holder completed, or it serves on that grant, or restored).
    pub(super) fn complete_at(&mut self, epoch: u64) {
        self.complete = self.complete.max(epoch);
    }

    /// `complete` as the state file saves it with a fence for want of an answer: one more,
    /// 0 when not known (state.rs, version 7).
    pub(super) fn saved_complete(&self) -> u64 {
        if self.complete_unknown {
            0
        } else {
            self.complete.saturating_add(1)
        }
    }

    /// Restored fenced for want of an answer with no epoch saved (see `complete_unknown`).
    pub(super) fn complete_not_known(&mut self) {
        self.complete_unknown = true;
    }

    /// Whether a grant at `epoch` the witness's word names this site the holder of may be
    /// the one a request of this volume's, its answer lost, won (`adopt_lost_grant`): that
    /// request was asked at an epoch at which its replica was complete, and the witness grants
    /// a request asked at `k` at `k + 1` (docs/witness-protocol.md). Above, a grant came
    /// between whose writes this replica misses (another site's, given back without resyncing
    /// this volume), and the group's grant named now was asked by another volume of the group
    /// at the epoch it taught: as with an answered grant ([`Witness::complete_for`]).
    ///
    /// One grant above `k + 1` is the request's too: `g + 1`, where `g` is the peer's grant
    /// that denied this site and was then seen given back (`peer_given_back`), when the
    /// group's plain requests in this process were asked at `g − 1` at most (`asked_plain`,
    /// the highest such epoch + 1, 0: none: `FailoverSlot::asked_plain`) and this replica was
    /// complete at `g − 1`. After that word (nobody holding the group at `g`) the witness
    /// grants this site `g + 1` only to a request asked at `g` (none was: `asked_plain`; an
    /// older process's would have known `g` in sync, which its denial at `g` rules out) or at
    /// `g − 1` while the group is marked released unused at `g` by the peer
    /// (docs/witness-protocol.md, "An unused release": no write was acknowledged on `g`, the
    /// replicas are as they were at `g − 1`). So this replica holds every acknowledged write.
    /// Not a grant a lost operator's takeover may have made (`takeover`: asked at the
    /// witness's epoch). Before, such a grant (denied while the peer held the group, asking
    /// again once the peer gave it back unused, the answer lost) was refused and given back:
    /// both sites stopped until the link returned (test
    /// `restart_fence::a_denied_site_adopts_the_grant_after_an_unused_give_back_when_its_answer_is_lost`).
    pub(super) fn may_adopt(&self, epoch: u64, asked_plain: u64, takeover: bool) -> bool {
        let g = self.peer_given_back;
        self.complete_unknown
            || epoch <= self.complete.saturating_add(1)
            || (!takeover
                && g != 0
                && epoch == g.saturating_add(1)
                && asked_plain != 0
                && asked_plain <= g
                && self.complete.saturating_add(1) >= g)
    }

    /// Whether this volume may serve on the group's grant answered to a plain request asked
    /// at the site's known epoch `asked` (`FailoverSlot::asked_epoch`): only if its replica was
    /// complete at that epoch. The site's known epoch is the group's: another volume of the
    /// group may have raised it (its own RESYNC_DONE) while this one was fenced, missing the
    /// writes of the grants between (before, it served on the next grant without them). An
    /// operator's takeover accepts that (not judged here).
    pub(super) fn complete_for(&self, asked: u64) -> bool {
        self.complete >= asked
    }

    /// Once per engine tick: publish whether the site is in sync, ask for the grant when due,
    /// and read the answer. `takeover_flag` is the operator's request (cleared once answered
    /// or refused).
    pub(super) fn tick(
        &mut self,
        slot: &FailoverSlot,
        takeover_flag: &AtomicBool,
        site: SiteNow,
    ) -> Grant {
        let takeover = takeover_flag.load(SeqCst)
            && matches!(site.mode, Mode::Waiting | Mode::Mirroring | Mode::Fenced);
        if !takeover && !self.takeover && takeover_flag.load(SeqCst) {
            // A request where the site asks the witness for nothing (a survivor holds the
            // grant, a resync's target is in session): dropped, never kept for a later state
            // (it was, at a survivor, until the site mirrored again: `takeover_pending` all
            // along, and asked as a takeover had the link just failed then).
            takeover_flag.store(false, SeqCst);
        }
        if takeover && !self.takeover {
            // A new request for the grant, whatever was asked before.
            self.takeover = true;
            self.asked = false;
            self.answered = false;
        }
        if site.up && self.asked && !self.answered {
            return self.answered_after_the_session(slot, takeover_flag);
        }
        let retry = self.fenced_retry && site.mode == Mode::Fenced;
        if !takeover
            && !self.takeover
            && (site.up
                || !(site.had_session || (retry && self.restored))
                || (site.mode != Mode::Mirroring && !retry)
                || site.draining)
        {
            if site.up || site.draining {
                self.fenced_retry = false;
                self.restored = false;
                self.peer_given_back = 0;
            }
            return Grant::Wait;
        }
        if takeover && (site.up || site.draining) {
            // Dropped, and for good: left marked as this site's request, it was asked at the
            // next tick beside a peer in session.
            takeover_flag.store(false, SeqCst);
            self.takeover = false;
            return Grant::Wait;
        }
        if !self.asked {
            self.asked = true;
            slot.outcome.store(0, SeqCst);
            if self.takeover {
                // (Kept until the failover thread sends the group's request: another volume
                // of the group asking meanwhile does not clear it.)
                slot.takeover.store(true, SeqCst);
            }
            slot.want.store(true, SeqCst);
            return Grant::Wait;
        }
        let outcome = slot.outcome.load(SeqCst);
        if outcome == 0 {
            return Grant::Wait;
        }
        takeover_flag.store(false, SeqCst);
        let takeover = std::mem::take(&mut self.takeover);
        self.answered = true;
        self.fenced_retry = false;
        self.answered_takeover = takeover;
        match outcome {
            GRANTED => Grant::Granted {
                epoch: slot.epoch.load(SeqCst),
                // The group's grant was asked as a takeover (by any of its volumes): each
                // volume's replica may be older than the last survivor's.
                takeover: takeover || slot.granted_takeover.load(SeqCst),
            },
            DENIED => Grant::Fence("the witness granted the volume to the peer"),
            UNREACHABLE => Grant::Unanswered { takeover },
            _ => Grant::Wait,
        }
    }
}

impl Witness {
    /// The session came back before the answer to the request (a loss's, or an operator's
    /// takeover: the peer returned meanwhile): a grant is not needed, and is given back
    /// ([`Grant::Unwanted`]); never acted on beside a peer in session with this site. A
    /// loss's request not sent yet is withdrawn; a takeover's goes (the operator's flag is
    /// shared by the group's volumes) and its answer is given back the same way.
    fn answered_after_the_session(
        &mut self,
        slot: &FailoverSlot,
        takeover_flag: &AtomicBool,
    ) -> Grant {
        // Never sent: withdrawn, only when this volume is its group's only one. The `want`
        // flag is the group's: another volume of the group whose link is still down may have
        // set it too (or set it again), and withdrawn with this one its request never reached
        // the witness: it waited for an answer for ever, neither serving nor fenced (and the
        // peer, denied on the tie while this site beat as preferred, fenced). In a group the
        // request goes, and a grant answered is given back below, unless another volume of
        // the group takes it first (`FailoverSlot::claim_grant` withdraws the release).
        if !self.takeover && slot.members.load(SeqCst) <= 1 && slot.want.swap(false, SeqCst) {
            self.asked = false;
            return Grant::Wait;
        }
        let outcome = slot.outcome.load(SeqCst);
        if outcome == 0 {
            return Grant::Wait;
        }
        self.answered = true;
        if std::mem::take(&mut self.takeover) {
            takeover_flag.store(false, SeqCst);
        }
        match outcome {
            GRANTED => Grant::Unwanted {
                epoch: slot.epoch.load(SeqCst),
            },
            // The witness may have recorded the grant, its answer lost: given back once its
            // word names this site (as by a site fenced for want of an answer, mirroring again).
            UNREACHABLE => Grant::LostInSession,
            _ => Grant::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(up: bool, mode: Mode) -> SiteNow {
        SiteNow {
            up,
            had_session: true,
            mode,
            draining: false,
        }
    }

    /// `may_adopt` above the epoch a lost request could win: only the grant one above the
    /// peer's grant seen given back, asked below it, this replica complete there.
    #[test]
    fn a_grant_two_above_the_replica_is_adopted_only_after_the_peers_give_back() {
        let mut w = Witness::default();
        w.link_lost(Some(3));
        assert!(w.may_adopt(4, 4, false), "the grant a request at 3 wins");
        assert!(!w.may_adopt(5, 4, false), "no give-back seen");
        w.ask_after_give_back(4);
        assert!(
            w.may_adopt(5, 4, false),
            "the grant through the unused mark at 4"
        );
        assert!(
            !w.may_adopt(5, 5, false),
            "a request asked at 4: 4's writes missing"
        );
        assert!(!w.may_adopt(5, 0, false), "nothing asked in this process");
        assert!(!w.may_adopt(5, 4, true), "a takeover's grant");
        assert!(!w.may_adopt(6, 4, false), "above the give-back's");
        let mut older = Witness::default();
        older.link_lost(Some(2));
        older.ask_after_give_back(4);
        assert!(
            !older.may_adopt(5, 3, false),
            "a replica complete below the epoch before the give-back"
        );
        let slot = FailoverSlot::default();
        let flag = AtomicBool::new(false);
        w.tick(&slot, &flag, site(true, Mode::Fenced));
        assert!(!w.may_adopt(5, 4, false), "kept once the link is up");
    }

    #[test]
    fn a_lost_peer_asks_once_and_acts_on_the_answer() {
        let slot = FailoverSlot::default();
        let flag = AtomicBool::new(false);
        let mut w = Witness::default();
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Wait
        );
        let never = SiteNow {
            had_session: false,
            ..site(false, Mode::Mirroring)
        };
        assert_eq!(w.tick(&slot, &flag, never), Grant::Wait);
        assert!(!slot.want.load(SeqCst), "a site just started does not ask");
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Wait
        );
        assert!(slot.want.load(SeqCst));
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Wait
        );
        slot.epoch.store(9, SeqCst);
        slot.outcome.store(GRANTED, SeqCst);
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Granted {
                epoch: 9,
                takeover: false
            }
        );
        slot.outcome.store(DENIED, SeqCst);
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Fence("the witness granted the volume to the peer")
        );
    }

    #[test]
    fn a_takeover_asks_anew_and_is_dropped_while_the_link_is_up() {
        let slot = FailoverSlot::default();
        let flag = AtomicBool::new(true);
        let mut w = Witness::default();
        assert_eq!(w.tick(&slot, &flag, site(true, Mode::Waiting)), Grant::Wait);
        assert!(!flag.load(SeqCst), "refused while up");
        // Dropped for good: the next ticks, link still up, ask nothing (before, the dropped
        // takeover was asked at the next tick, beside a peer in session).
        for _ in 0..2 {
            assert_eq!(w.tick(&slot, &flag, site(true, Mode::Waiting)), Grant::Wait);
        }
        assert!(!slot.want.load(SeqCst), "a dropped takeover was asked");
        flag.store(true, SeqCst);
        let started = SiteNow {
            had_session: false,
            ..site(false, Mode::Fenced)
        };
        assert_eq!(w.tick(&slot, &flag, started), Grant::Wait);
        assert!(slot.want.load(SeqCst));
        slot.outcome.store(GRANTED, SeqCst);
        assert_eq!(
            w.tick(&slot, &flag, started),
            Grant::Granted {
                epoch: 0,
                takeover: true
            }
        );
        assert!(!flag.load(SeqCst));
    }

    /// Two volumes of one group: x asks as an operator's takeover, y (its peer lost) asks the
    /// normal way in the same interval. The group's request stays a takeover, and both
    /// volumes take the grant as one (each replica may be older than the last survivor's).
    #[test]
    fn a_group_asked_as_a_takeover_by_one_volume_is_taken_over_by_all() {
        let slot = FailoverSlot::default();
        let (fx, fy) = (AtomicBool::new(true), AtomicBool::new(false));
        let (mut x, mut y) = (Witness::default(), Witness::default());
        let fenced = site(false, Mode::Fenced);
        assert_eq!(x.tick(&slot, &fx, fenced), Grant::Wait);
        assert_eq!(
            y.tick(&slot, &fy, site(false, Mode::Mirroring)),
            Grant::Wait
        );
        assert!(
            slot.takeover.load(SeqCst),
            "y's request cleared x's takeover"
        );
        // The failover thread sends one request for the group, as a takeover, and is granted.
        assert!(slot.takeover.swap(false, SeqCst));
        slot.granted_takeover.store(true, SeqCst);
        slot.epoch.store(4, SeqCst);
        slot.outcome.store(GRANTED, SeqCst);
        for (w, f, s) in [
            (&mut x, &fx, fenced),
            (&mut y, &fy, site(false, Mode::Mirroring)),
        ] {
            assert_eq!(
                w.tick(&slot, f, s),
                Grant::Granted {
                    epoch: 4,
                    takeover: true
                }
            );
        }
    }

    /// An operator's takeover is asked, then the session comes back (the peer returned)
    /// before the witness's answer: a grant that arrives then is given back like a loss's
    /// (before, it was acted on: the site became the survivor beside a peer in session with
    /// it, acknowledging alone while the peer read under its lease).
    #[test]
    fn a_takeover_answered_after_the_session_came_back_is_given_back() {
        let slot = FailoverSlot::default();
        let flag = AtomicBool::new(true);
        let mut w = Witness::default();
        assert_eq!(w.tick(&slot, &flag, site(false, Mode::Fenced)), Grant::Wait);
        assert!(slot.want.swap(false, SeqCst), "the takeover is not asked");
        // The peer is back: a session (mirroring, say, after a reconciliation here).
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Wait
        );
        slot.epoch.store(3, SeqCst);
        slot.outcome.store(GRANTED, SeqCst);
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Unwanted { epoch: 3 }
        );
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Wait
        );
        assert!(
            !flag.load(SeqCst),
            "the operator's request is still pending"
        );
    }

    /// The session comes back before the witness answers the loss's request: a grant that
    /// arrives then is given back (once); a request not sent yet is withdrawn; a grant acted on
    /// (this site the survivor, the link up again for its resync) is kept.
    #[test]
    fn a_grant_answered_after_the_session_came_back_is_given_back() {
        let flag = AtomicBool::new(false);
        // Asked, sent, then the link is back; the grant arrives.
        let slot = FailoverSlot::default();
        let mut w = Witness::default();
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Wait
        );
        assert!(slot.want.swap(false, SeqCst), "no request");
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Wait
        );
        slot.epoch.store(4, SeqCst);
        slot.outcome.store(GRANTED, SeqCst);
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Unwanted { epoch: 4 }
        );
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Wait
        );
        // A later loss asks anew.
        w.link_lost(Some(0));
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Wait
        );
        assert!(slot.want.load(SeqCst));
        // Asked but not sent yet when the link is back: withdrawn, nothing to give back.
        let slot = FailoverSlot::default();
        let mut w = Witness::default();
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Wait
        );
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Wait
        );
        assert!(!slot.want.load(SeqCst), "the request was not withdrawn");
        slot.outcome.store(GRANTED, SeqCst);
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Mirroring)),
            Grant::Wait
        );
        // Granted and acted on, then the link comes back (the survivor resyncs its peer).
        let slot = FailoverSlot::default();
        let mut w = Witness::default();
        w.tick(&slot, &flag, site(false, Mode::Mirroring));
        slot.want.store(false, SeqCst);
        slot.epoch.store(7, SeqCst);
        slot.outcome.store(GRANTED, SeqCst);
        assert_eq!(
            w.tick(&slot, &flag, site(false, Mode::Mirroring)),
            Grant::Granted {
                epoch: 7,
                takeover: false
            }
        );
        assert_eq!(
            w.tick(&slot, &flag, site(true, Mode::Survivor)),
            Grant::Wait
        );
    }
}
