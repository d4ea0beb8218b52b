//! Follower: forwarding this site's updates to the leader and taking the leader's order.
//!
//! Model: a forward keeps its data here; the leader answers with ORDER (its `seq`), a re-sent
//! WRITE in a later session (claimed as that forward's order), or MISCOMPARE.
//!
//! Invariants: nothing is forwarded in a session before the leader's RESENT; a forward is
//! never applied twice, and one the leader may have lost is failed (outcome unknown), never
//! acknowledged on one replica only.

use super::*;

impl Engine {
    /// Follower: send `k` to the leader in this session.
    pub(super) fn forward(&mut self, k: usize) {
        let h = self.upd_header(k, true);
        let p = matches!(self.ops[k].upd, Upd::Write | Upd::Caw).then_some(k);
        self.send(h, p);
        let op = &mut self.ops[k];
        op.stage.forward(self.sess.number);
        op.seq = 0;
    }

    /// Follower, before RESENT: a re-sent WRITE for forward `h.id` of an earlier session is
    /// that forward's ORDER (its own copy is applied at this seq). False: no such forward here;
    /// the WRITE is an ordinary one.
    pub(super) fn claim_resent(&mut self, io: &mut IoCx, h: &Header) -> Result<bool, &'static str> {
        if !self.resent_pending {
            return Ok(false);
        }
        let session = self.sess.number;
        let Some(k) = self.forwards.iter().copied().find(|&k| {
            let op = &self.ops[k];
            op.uid == h.id && op.stage.forwarded_in().is_some_and(|s| s != session)
        }) else {
            return Ok(false);
        };
        self.check_range(h)?;
        let op = &self.ops[k];
        let same_kind = match h.ty {
            Type::Write => matches!(op.upd, Upd::Write | Upd::Caw),
            Type::Zeroes => op.upd == Upd::Zeroes,
            _ => op.upd == Upd::Unmap,
        };
        if !same_kind || op.offset != h.offset || op.len != u64::from(h.count) {
            return Err("re-sent forward does not match the forward");
        }
        self.check_next_seq(h.seq)?;
        let op = &mut self.ops[k];
        if op.upd == Upd::Caw {
            // Re-sent, so the leader found it matching.
            let len = op.len as usize;
            op.data.drain(..len);
            op.upd = Upd::Write;
        }
        op.stage.order(session);
        op.seq = h.seq;
        op.session = session;
        op.fwd_inc = self.peer_incarnation;
        self.enqueue_apply(io, k, session, h.seq);
        Ok(true)
    }

    /// Fail every held forward (nothing of them reached the peer's order).
    pub(super) fn fail_forwards(&mut self) {
        while let Some(k) = self.forwards.pop_front() {
            self.end_forward(k, true);
        }
    }

    /// Follower: forward `k`, already out of `forwards`, needs nothing more from the peer;
    /// with `fail` its initiator gets EIO (outcome unknown), else its local apply answers.
    pub(super) fn end_forward(&mut self, k: usize, fail: bool) {
        let op = &mut self.ops[k];
        op.stage.confirm();
        if fail && let Some((from, tag)) = op.initiator.take() {
            self.done.push((from, tag, Err(Errno::IO)));
        }
        self.settle(k);
    }

    /// Follower: the leader's re-sends are in. A forward of an earlier session that none
    /// claimed and that got its ORDER from this same leader process is on both replicas (the
    /// leader had this site's acknowledgement, so it did not re-send it, and it sends RESENT
    /// only once its applies of then are done): complete. One ordered by an earlier leader
    /// process (which may have lost its apply), or a compare-and-write the leader may have
    /// decided: failed, outcome unknown, never applied twice. One that never got its ORDER is
    /// forwarded again (the leader never sequenced it). Then the new ones go out, in order.
    pub(super) fn after_resent(&mut self) {
        let session = self.sess.number;
        let fwds: Vec<usize> = self.forwards.iter().copied().collect();
        for k in fwds {
            let op = &mut self.ops[k];
            if op.stage.forwarded_in() == Some(session) {
                continue; // claimed by a re-send
            }
            let ordered = op.stage.ordered();
            // (A compare-and-write stays `Caw` until its ORDER.)
            if ordered || (op.stage.forwarded_in().is_some() && op.upd == Upd::Caw) {
                let on_both = ordered && op.fwd_inc == self.peer_incarnation;
                self.forwards.retain(|&f| f != k);
                self.end_forward(k, !on_both);
                continue;
            }
            self.forward(k);
        }
    }

    /// Follower: answer the MISCOMPAREs whose seq the applied watermark reached (all of them
    /// when the session ended: the outcome is final).
    pub(super) fn release_miscompares(&mut self, all: bool) {
        let wm = self.aq.applied.wm;
        let mut i = 0;
        while i < self.miscompare_waits.len() {
            let (k, uid, seq) = self.miscompare_waits[i];
            if all || seq <= wm {
                self.miscompare_waits.swap_remove(i);
                if let Some(op) = self.ops.get_mut(k)
                    && op.uid == uid
                {
                    op.applying -= 1;
                    self.settle(k);
                }
            } else {
                i += 1;
            }
        }
    }
}
