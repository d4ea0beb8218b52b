//! Follower: the forwards of this site's updates to the leader, their ids, the wait for the
//! leader's RESENT, and MISCOMPAREs waiting for the updates the leader compared against.
//!
//! Model: a forward keeps its data here; the leader answers with ORDER (its `seq`), a re-sent
//! WRITE in a later session (claimed as that forward's order), or MISCOMPARE. [`Follower`]
//! owns the list of forwards (op keys into the engine's slab, in the order sent) and decides,
//! from the ops' [`Stage`](super::op::Stage)s it is given, which forward an answer is for,
//! which forwards the watermark completes, and what each forward becomes when RESENT comes
//! ([`Resent`]). The engine sends, applies and settles.
//!
//! Invariants:
//! - Nothing is forwarded in a session before the leader's RESENT (`resent_pending`).
//! - `forwards` is in the order sent, so ORDERs, which come in that order, are for the first
//!   forward waiting for one.
//! - A forward is never applied twice, and one the leader may have lost is failed (outcome
//!   unknown), never acknowledged on one replica only.
//! - A forward's id is never 0 and unique while its op lives.

use super::op::{Op, Upd};
use slab::Slab;
use std::collections::VecDeque;

/// What a forward of an earlier session becomes once the leader's RESENT came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resent {
    /// Done with the peer (out of `forwards`): with `fail`, its initiator gets EIO (outcome
    /// unknown); else it is on both replicas and its local apply answers.
    End { k: usize, fail: bool },
    /// Never sequenced by the leader: forward it again (it stays in `forwards`).
    Forward(usize),
}

/// The follower's forwards (see the module doc).
pub(super) struct Follower {
    /// Forwards, in the order sent.
    forwards: VecDeque<usize>,
    /// The last forward id given.
    next_uid: u32,
    /// The session started and the leader's RESENT has not come yet (no forwards).
    resent_pending: bool,
    /// MISCOMPAREs answered once this site has applied every update up to their seq: (op, its
    /// uid, session, seq).
    miscompare_waits: Vec<(usize, u32, u32, u64)>,
}

impl Follower {
    pub(super) fn new() -> Self {
        Self {
            forwards: VecDeque::with_capacity(1024),
            next_uid: 0,
            resent_pending: false,
            miscompare_waits: Vec::new(),
        }
    }

    /// A new forward id (never 0).
    pub(super) fn new_uid(&mut self) -> u32 {
        self.next_uid = self.next_uid.wrapping_add(1).max(1);
        self.next_uid
    }

    /// Keep `k` as a forward; true when it is to be sent now (the session is `up` and RESENT
    /// came).
    pub(super) fn hold(&mut self, k: usize, up: bool) -> bool {
        self.forwards.push_back(k);
        up && !self.resent_pending
    }

    /// The leader's RESENT of this session has not come yet.
    pub(super) fn awaiting_resent(&self) -> bool {
        self.resent_pending
    }

    /// Forwards held.
    pub(super) fn len(&self) -> usize {
        self.forwards.len()
    }

    /// The last forward (tests).
    #[cfg(test)]
    pub(super) fn last(&self) -> Option<usize> {
        self.forwards.back().copied()
    }

    /// A session started: nothing goes out before RESENT. Returns the forwards (whose stage
    /// the engine moves on).
    pub(super) fn session_started(&mut self) -> Vec<usize> {
        self.resent_pending = true;
        self.forwards.iter().copied().collect()
    }

    /// The session ended. (MISCOMPAREs still waiting stay: their outcome is final, but the
    /// answer waits until the updates the leader compared against, all received here, are
    /// applied, which the engine tells without the session's watermark.)
    pub(super) fn session_ended(&mut self) {
        self.resent_pending = false;
    }

    /// The first forward waiting for its ORDER (or MISCOMPARE): its position and key.
    pub(super) fn awaiting(&self, ops: &Slab<Op>) -> Option<(usize, usize)> {
        let pos = self
            .forwards
            .iter()
            .position(|&k| ops[k].stage.awaiting_order())?;
        Some((pos, self.forwards[pos]))
    }

    /// Take the forward at `pos` (from [`Follower::awaiting`]) off the list.
    pub(super) fn remove_at(&mut self, pos: usize) {
        self.forwards.remove(pos);
    }

    /// Take `k` off the list; false when it was not there.
    pub(super) fn remove(&mut self, k: usize) -> bool {
        match self.forwards.iter().position(|&f| f == k) {
            Some(p) => {
                self.forwards.remove(p);
                true
            }
            None => false,
        }
    }

    /// Every forward, taken off the list, in order.
    pub(super) fn take_all(&mut self) -> Vec<usize> {
        self.forwards.drain(..).collect()
    }

    /// Before RESENT, in session `session`: the forward of an earlier session with id `uid`,
    /// which a re-sent WRITE with that id is the order of (none: an ordinary WRITE).
    pub(super) fn claimable(&self, ops: &Slab<Op>, uid: u32, session: u32) -> Option<usize> {
        if !self.resent_pending {
            return None;
        }
        self.forwards.iter().copied().find(|&k| {
            let op = &ops[k];
            op.uid == uid && op.stage.forwarded_in().is_some_and(|s| s != session)
        })
    }

    /// The leader's RESENT came in session `session` (the leader process is `peer_inc`). A
    /// forward of an earlier session that none claimed and that got its ORDER from this same
    /// leader process is on both replicas (the leader had this site's acknowledgement, so it
    /// did not re-send it, and it sends RESENT only once its applies of then are done):
    /// complete. One ordered by an earlier leader process (which may have lost its apply), or
    /// a compare-and-write the leader may have decided: failed, outcome unknown, never applied
    /// twice. One that never got its ORDER is forwarded again (the leader never sequenced it).
    /// Returns those steps in the list's order, or the reason to drop the link.
    pub(super) fn resent(
        &mut self,
        ops: &Slab<Op>,
        session: u32,
        peer_inc: u64,
    ) -> Result<Vec<Resent>, &'static str> {
        if !std::mem::take(&mut self.resent_pending) {
            return Err("RESENT twice in a session");
        }
        let mut steps = Vec::new();
        self.forwards.retain(|&k| {
            let op = &ops[k];
            if op.stage.forwarded_in() == Some(session) {
                return true; // claimed by a re-send
            }
            let ordered = op.stage.ordered();
            // (A compare-and-write stays `Caw` until its ORDER.)
            if ordered || (op.stage.forwarded_in().is_some() && op.upd == Upd::Caw) {
                let on_both = ordered && op.fwd_inc == peer_inc;
                steps.push(Resent::End { k, fail: !on_both });
                return false;
            }
            steps.push(Resent::Forward(k));
            true
        });
        Ok(steps)
    }

    /// The leader's watermark is `wm` in session `session`: the forwards ordered at or below
    /// it leave the list, in order (pushed to `done`; the engine confirms and settles them).
    pub(super) fn acked(&mut self, ops: &Slab<Op>, session: u32, wm: u64, done: &mut Vec<usize>) {
        while let Some(&k) = self.forwards.front() {
            let op = &ops[k];
            if !op.stage.ordered() || op.seq == 0 || op.seq > wm || op.session != session {
                break;
            }
            self.forwards.pop_front();
            done.push(k);
        }
    }

    /// A MISCOMPARE for forward `k` (id `uid`) at `seq` of `session` waits until this site
    /// has applied every update of that session up to `seq`.
    pub(super) fn wait_miscompare(&mut self, k: usize, uid: u32, session: u32, seq: u64) {
        self.miscompare_waits.push((k, uid, session, seq));
    }

    /// MISCOMPAREs are waiting.
    pub(super) fn miscompares_waiting(&self) -> bool {
        !self.miscompare_waits.is_empty()
    }

    /// The MISCOMPAREs for which `applied(session, seq)` says every update up to their seq is
    /// applied: `(op, uid)`, to answer if the op is still that forward.
    pub(super) fn miscompares_due(
        &mut self,
        applied: impl Fn(u32, u64) -> bool,
    ) -> Vec<(usize, u32)> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.miscompare_waits.len() {
            let (k, uid, session, seq) = self.miscompare_waits[i];
            if applied(session, seq) {
                self.miscompare_waits.swap_remove(i);
                due.push((k, uid));
            } else {
                i += 1;
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::super::op::{Origin, Stage};
    use super::*;
    use std::time::Instant;

    /// What `acked` confirms, as a vector.
    fn acked(x: &mut Follower, ops: &Slab<Op>, session: u32, wm: u64) -> Vec<usize> {
        let mut done = Vec::new();
        x.acked(ops, session, wm, &mut done);
        done
    }

    fn fwd(ops: &mut Slab<Op>, f: &mut Follower, upd: Upd, stage: Stage) -> usize {
        let mut o = Op::new(
            Origin::Local,
            upd,
            (0, 512),
            false,
            Vec::new(),
            stage,
            Instant::now(),
        );
        o.uid = f.new_uid();
        let k = ops.insert(o);
        f.hold(k, false);
        k
    }

    #[test]
    fn nothing_goes_out_before_resent_and_resent_comes_once() {
        let ops = Slab::new();
        let mut f = Follower::new();
        assert!(f.hold(1, true));
        assert!(!f.hold(2, false));
        f.take_all();
        f.session_started();
        assert!(!f.hold(3, true), "RESENT not in yet");
        f.take_all();
        assert_eq!(f.resent(&ops, 1, 0), Ok(vec![]));
        assert_eq!(f.resent(&ops, 1, 0), Err("RESENT twice in a session"));
        assert!(f.hold(4, true));
        assert_ne!(f.new_uid(), 0);
    }

    #[test]
    fn resent_ends_ordered_forwards_and_forwards_the_others_again() {
        let mut ops = Slab::new();
        let mut f = Follower::new();
        let held = fwd(&mut ops, &mut f, Upd::Write, Stage::Held);
        let same_leader = fwd(&mut ops, &mut f, Upd::Write, Stage::Ordered(1));
        let old_leader = fwd(&mut ops, &mut f, Upd::Write, Stage::Ordered(1));
        let unanswered = fwd(&mut ops, &mut f, Upd::Write, Stage::Unanswered(1));
        let caw = fwd(&mut ops, &mut f, Upd::Caw, Stage::Unanswered(1));
        let claimed = fwd(&mut ops, &mut f, Upd::Write, Stage::Ordered(1));
        ops[same_leader].fwd_inc = 7;
        ops[old_leader].fwd_inc = 6;
        f.session_started();
        let uid = ops[claimed].uid;
        assert_eq!(f.claimable(&ops, uid, 2), Some(claimed));
        assert_eq!(f.claimable(&ops, uid + 100, 2), None);
        ops[claimed].stage.order(2);
        assert_eq!(f.claimable(&ops, uid, 2), None, "claimed once");
        let steps = f.resent(&ops, 2, 7).unwrap();
        assert_eq!(
            steps,
            vec![
                Resent::Forward(held),
                Resent::End {
                    k: same_leader,
                    fail: false
                },
                Resent::End {
                    k: old_leader,
                    fail: true
                },
                Resent::Forward(unanswered),
                Resent::End { k: caw, fail: true },
            ]
        );
        assert_eq!(f.len(), 3);
        assert_eq!(f.claimable(&ops, ops[held].uid, 2), None, "after RESENT");
    }

    #[test]
    fn the_watermark_completes_ordered_forwards_in_order() {
        let mut ops = Slab::new();
        let mut f = Follower::new();
        let a = fwd(&mut ops, &mut f, Upd::Write, Stage::Ordered(2));
        let b = fwd(&mut ops, &mut f, Upd::Write, Stage::Forwarded(2));
        let c = fwd(&mut ops, &mut f, Upd::Write, Stage::Ordered(2));
        for (k, seq) in [(a, 1), (c, 2)] {
            ops[k].seq = seq;
            ops[k].session = 2;
        }
        assert_eq!(f.awaiting(&ops), Some((1, b)));
        assert_eq!(acked(&mut f, &ops, 2, 5), vec![a], "b waits for its ORDER");
        f.remove_at(0);
        assert_eq!(
            acked(&mut f, &ops, 3, 5),
            Vec::<usize>::new(),
            "another session"
        );
        assert_eq!(acked(&mut f, &ops, 2, 1), Vec::<usize>::new());
        assert_eq!(acked(&mut f, &ops, 2, 2), vec![c]);
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn miscompares_are_answered_once_what_they_compared_against_is_applied() {
        let mut f = Follower::new();
        f.wait_miscompare(1, 11, 2, 5);
        f.wait_miscompare(2, 12, 2, 3);
        f.wait_miscompare(3, 13, 2, 9);
        assert!(f.miscompares_waiting());
        let wm = |_: u32, seq: u64| seq <= 4;
        assert_eq!(f.miscompares_due(wm), vec![(2, 12)]);
        assert_eq!(f.miscompares_due(wm), vec![]);
        // The session ended: still waiting, until the engine says their updates are applied.
        f.session_ended();
        assert!(f.miscompares_waiting());
        let mut rest = f.miscompares_due(|s, _| s == 2);
        rest.sort();
        assert_eq!(rest, vec![(1, 11), (3, 13)]);
        assert!(!f.miscompares_waiting());
    }
}
