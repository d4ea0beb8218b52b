//! Leader: the compare-and-write barrier, the backlog of updates the follower has not
//! acknowledged, the RESENT that ends a session's re-sends, and divergence.
//!
//! Model: [`Leader`] owns the lists of op keys (into the engine's slab) that only the leader
//! keeps. It decides which update goes next and which are done with the follower, and returns
//! those keys; the engine sequences, sends, applies and settles them (it gives the seq from
//! the session, sends through the session, applies through the apply queue).
//!
//! - An update is *taken* ([`Leader::take`]): it starts at once unless a compare-and-write is
//!   being decided or others already wait, then it waits in the `barrier`, in arrival order.
//!   It waits there too while the session is up and the backlog has no room for it
//!   (`room_wait`: the follower is slow to acknowledge, the backlog drains as it does; only
//!   with the link down does a full backlog mean divergence).
//! - A started update (other than a compare-and-write being decided) is pushed on the
//!   `backlog` ([`Leader::push_backlog`]) and stays until the follower's watermark passes its
//!   `seq` in the current session ([`Leader::acked`]).
//! - At a session start the backlog is re-sent in its order, and RESENT is due once the applies
//!   of forwarded updates under way at that moment are done ([`Leader::session_started`],
//!   [`Leader::apply_done`], [`Leader::resent_now`]).
//!
//! Invariants:
//! - `backlog` is in `seq` order, old sessions first; `backlog_bytes` is the sum of its ops'
//!   data lengths.
//! - While `caw_active` is set or `barrier` is not empty, nothing new is started (taken updates
//!   wait in arrival order).
//! - Once diverged (a backlog over `max_backlog`), always diverged (until the process restarts
//!   from a resync).

use super::op::{Op, Origin};
use slab::Slab;
use std::collections::VecDeque;

/// The leader's lists (see the module doc).
pub(super) struct Leader {
    /// Updates the follower has not acknowledged, in `seq` order (old sessions first).
    backlog: VecDeque<usize>,
    backlog_bytes: u64,
    /// The compare-and-write being decided; updates arriving meanwhile wait in `barrier`
    /// (unsequenced, in arrival order).
    caw_active: Option<usize>,
    barrier: VecDeque<usize>,
    /// RESENT waits for these applies (running or queued when the session started), so that a
    /// forward it does not re-send is applied here when the follower learns so.
    resent_wait: Vec<usize>,
    resent_due: bool,
    diverged: bool,
    /// Updates wait in the barrier for room in the backlog (the engine releases them as the
    /// follower's acknowledgements drain it, or when the session ends).
    pub(super) room_wait: bool,
}

impl Leader {
    pub(super) fn new() -> Self {
        Self {
            backlog: VecDeque::with_capacity(1024),
            backlog_bytes: 0,
            caw_active: None,
            barrier: VecDeque::new(),
            resent_wait: Vec::new(),
            resent_due: false,
            diverged: false,
            room_wait: false,
        }
    }

    /// An update to sequence: true when it starts now, false when it waits behind a
    /// compare-and-write (in the barrier).
    pub(super) fn take(&mut self, k: usize) -> bool {
        if self.caw_active.is_some() || !self.barrier.is_empty() {
            self.barrier.push_back(k);
            false
        } else {
            true
        }
    }

    /// An update that must wait in the barrier whatever happens (a forward that arrives while
    /// this site still applies its last resync copies).
    pub(super) fn wait(&mut self, k: usize) {
        self.barrier.push_back(k);
    }

    /// Take `k` off the barrier (its initiator gave up before it was sequenced); false when
    /// it was not waiting there.
    pub(super) fn unwait(&mut self, k: usize) -> bool {
        match self.barrier.iter().position(|&w| w == k) {
            Some(p) => {
                self.barrier.remove(p);
                true
            }
            None => false,
        }
    }

    /// Updates waiting in the barrier.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.barrier.len()
    }

    /// Compare-and-write `k` is being decided: nothing starts until it is.
    pub(super) fn deciding(&mut self, k: usize) {
        self.caw_active = Some(k);
    }

    /// `k` is decided: true when it was the one holding the barrier (now released).
    pub(super) fn decided(&mut self, k: usize) -> bool {
        if self.caw_active == Some(k) {
            self.caw_active = None;
            true
        } else {
            false
        }
    }

    /// The next update that waited and may start now (none while a compare-and-write is
    /// being decided).
    pub(super) fn next_unblocked(&mut self) -> Option<usize> {
        if self.caw_active.is_some() {
            return None;
        }
        self.barrier.pop_front()
    }

    /// The update `next_unblocked` would return, left in place.
    pub(super) fn peek_unblocked(&self) -> Option<usize> {
        if self.caw_active.is_some() {
            return None;
        }
        self.barrier.front().copied()
    }

    /// Keep `k` (with `bytes` of data) until the follower has it. True when the backlog just
    /// went over `max`: the volume has diverged.
    pub(super) fn push_backlog(&mut self, k: usize, bytes: u64, max: u64) -> bool {
        self.backlog.push_back(k);
        self.backlog_bytes += bytes;
        self.backlog_bytes > max && !std::mem::replace(&mut self.diverged, true)
    }

    /// Bytes of data kept in the backlog.
    pub(super) fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes
    }

    /// Updates kept in the backlog.
    pub(super) fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// The follower's watermark is `wm` in session `session`: the updates it passed leave the
    /// backlog, in order (pushed to `done`; the engine confirms and settles them).
    pub(super) fn acked(&mut self, ops: &Slab<Op>, session: u32, wm: u64, done: &mut Vec<usize>) {
        while let Some(&k) = self.backlog.front() {
            let op = &ops[k];
            if op.session != session || op.seq == 0 || op.seq > wm {
                break;
            }
            self.backlog.pop_front();
            self.backlog_bytes -= op.data.len() as u64;
            done.push(k);
        }
    }

    /// A session started; `forward_applies` are the apply slots of forwarded updates under
    /// way now. Returns the backlog, to re-send in its order; then [`Leader::resends_sent`].
    pub(super) fn session_started(
        &mut self,
        forward_applies: impl Iterator<Item = usize>,
    ) -> Vec<usize> {
        self.resent_wait.clear();
        self.resent_wait.extend(forward_applies);
        self.backlog.iter().copied().collect()
    }

    /// The backlog is re-sent: RESENT is due (not before, even if the applies it waits for
    /// finish while the re-sends go out).
    pub(super) fn resends_sent(&mut self) {
        self.resent_due = true;
    }

    /// Apply `slot` finished: true when RESENT was waiting for it.
    pub(super) fn apply_done(&mut self, slot: usize) -> bool {
        match self.resent_wait.iter().position(|&x| x == slot) {
            Some(i) => {
                self.resent_wait.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Whether to send RESENT now (once per session, when the applies it waits for are done
    /// and the session is `up`).
    pub(super) fn resent_now(&mut self, up: bool) -> bool {
        if self.resent_due && self.resent_wait.is_empty() && up {
            self.resent_due = false;
            return true;
        }
        false
    }

    /// The session ended: no RESENT is due; forwards waiting in the barrier are the
    /// follower's to send again (returned; the engine frees them).
    pub(super) fn session_ended(&mut self, ops: &Slab<Op>) -> Vec<usize> {
        self.resent_due = false;
        self.resent_wait.clear();
        let dropped: Vec<usize> = self
            .barrier
            .iter()
            .copied()
            .filter(|&k| ops[k].origin == Origin::PeerFwd)
            .collect();
        if !dropped.is_empty() {
            self.barrier.retain(|&k| ops[k].origin != Origin::PeerFwd);
        }
        dropped
    }

    /// Nothing sequenced is outstanding and nothing waits (switchover.rs, the drain): no
    /// backlog, no compare-and-write being decided, nothing in the barrier, no RESENT due.
    pub(super) fn quiet(&self) -> bool {
        self.backlog.is_empty()
            && self.caw_active.is_none()
            && self.barrier.is_empty()
            && !self.resent_due
            && self.resent_wait.is_empty()
    }

    /// Whether the volume has diverged (backlog overflow).
    pub(super) fn is_diverged(&self) -> bool {
        self.diverged
    }

    /// Give the backlog up (a diverged volume): returns its updates, in order.
    pub(super) fn drop_backlog(&mut self) -> Vec<usize> {
        self.backlog_bytes = 0;
        self.backlog.drain(..).collect()
    }

    /// Serving alone: no barrier any more. Returns the updates that waited (in arrival order)
    /// and the backlog (in order); the engine finishes them alone.
    pub(super) fn survive(&mut self) -> (Vec<usize>, Vec<usize>) {
        self.caw_active = None;
        self.room_wait = false;
        self.backlog_bytes = 0;
        (
            self.barrier.drain(..).collect(),
            self.backlog.drain(..).collect(),
        )
    }

    /// Fenced: forget every list (the engine fails every op).
    pub(super) fn fence(&mut self) {
        self.room_wait = false;
        self.backlog.clear();
        self.backlog_bytes = 0;
        self.barrier.clear();
        self.caw_active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::op::{Stage, Upd};
    use super::*;
    use std::time::Instant;

    /// What `acked` confirms, as a vector.
    fn acked(x: &mut Leader, ops: &Slab<Op>, session: u32, wm: u64) -> Vec<usize> {
        let mut done = Vec::new();
        x.acked(ops, session, wm, &mut done);
        done
    }

    fn op(ops: &mut Slab<Op>, origin: Origin, session: u32, seq: u64, bytes: usize) -> usize {
        let mut o = Op::new(
            origin,
            Upd::Write,
            (0, 512),
            false,
            vec![0; bytes],
            Stage::Sent,
            Instant::now(),
        );
        o.session = session;
        o.seq = seq;
        ops.insert(o)
    }

    #[test]
    fn updates_wait_behind_a_compare_and_write_in_arrival_order() {
        let mut l = Leader::new();
        assert!(l.take(1));
        l.deciding(1);
        assert!(!l.take(2));
        assert!(!l.take(3));
        assert_eq!(l.next_unblocked(), None, "still deciding");
        assert!(!l.decided(9));
        assert!(l.decided(1));
        assert!(!l.take(4), "behind those already waiting");
        assert_eq!(l.next_unblocked(), Some(2));
        l.deciding(2);
        assert_eq!(l.next_unblocked(), None);
        assert!(l.decided(2));
        assert_eq!(l.next_unblocked(), Some(3));
        assert_eq!(l.next_unblocked(), Some(4));
        assert!(l.take(5));
    }

    #[test]
    fn the_backlog_leaves_in_order_as_the_watermark_passes_and_overflows_once() {
        let mut ops = Slab::new();
        let mut l = Leader::new();
        let old = op(&mut ops, Origin::Local, 1, 7, 100);
        let a = op(&mut ops, Origin::Local, 2, 1, 100);
        let b = op(&mut ops, Origin::PeerFwd, 2, 2, 100);
        assert!(!l.push_backlog(old, 100, 1000));
        assert!(!l.push_backlog(a, 100, 1000));
        assert!(!l.push_backlog(b, 100, 1000));
        // The old session's update is re-sent first: nothing passes it.
        assert_eq!(acked(&mut l, &ops, 2, 2), Vec::<usize>::new());
        ops[old].session = 2;
        ops[old].seq = 1;
        ops[a].seq = 2;
        ops[b].seq = 3;
        assert_eq!(acked(&mut l, &ops, 2, 2), vec![old, a]);
        assert_eq!((l.backlog_len(), l.backlog_bytes()), (1, 100));
        assert!(l.push_backlog(a, 1000, 1000), "over the limit");
        assert!(!l.push_backlog(a, 1000, 1000), "diverged once");
        assert!(l.is_diverged());
        assert_eq!(l.drop_backlog(), vec![b, a, a]);
        assert_eq!(l.backlog_bytes(), 0);
    }

    #[test]
    fn resent_waits_for_the_forwards_applied_at_the_session_start() {
        let mut ops = Slab::new();
        let mut l = Leader::new();
        let k = op(&mut ops, Origin::Local, 1, 1, 0);
        l.push_backlog(k, 0, 10);
        assert_eq!(l.session_started([4, 5].into_iter()), vec![k]);
        assert!(l.apply_done(4));
        assert!(!l.resent_now(true), "the re-sends are not all out");
        l.resends_sent();
        assert!(!l.resent_now(true));
        l.session_started([4, 5].into_iter());
        l.resends_sent();
        assert!(l.apply_done(4));
        assert!(!l.apply_done(4));
        assert!(!l.resent_now(true));
        assert!(l.apply_done(5));
        assert!(!l.resent_now(false), "not while down");
        assert!(l.resent_now(true));
        assert!(!l.resent_now(true), "once per session");
        // A session's end drops the forwards that waited, keeps this site's updates.
        let f = op(&mut ops, Origin::PeerFwd, 1, 0, 0);
        l.deciding(k);
        assert!(!l.take(f));
        let mine = op(&mut ops, Origin::Local, 1, 0, 0);
        assert!(!l.take(mine));
        assert_eq!(l.session_ended(&ops), vec![f]);
        assert_eq!(l.waiting(), 1);
    }
}
