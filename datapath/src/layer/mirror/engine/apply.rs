//! The apply queue: which of the engine's operations on the local replica may start, and the
//! applied watermark of the session.
//!
//! Model: every operation the engine runs on the local replica is an *apply* (a slot of
//! `applies`, whose key is the tag's slot). An apply of a range starts only when no earlier
//! apply (lower *ticket*, i.e. enqueued before it) that overlaps it is still queued or running,
//! so overlapping updates reach the replica in the order they were enqueued (`seq` order) and
//! both replicas end identical. Non-overlapping applies run concurrently.
//!
//! The overlap lookup is an interval index: a vector sorted by `(offset, ticket)` of every
//! queued or running apply with a non-empty range, plus a count of their lengths per power of
//! two (a bound on the longest); the applies that may overlap `[o, o + l)` are those with an
//! offset in `[o - bound + 1, o + l)`, so a lookup costs a binary search plus the entries in
//! that window instead of a scan of every apply. A sorted vector rather than a `BTreeMap`: one
//! contiguous buffer that keeps its capacity, whose insert and remove at the queue depths a
//! volume sees are one short `memmove` (the map's node operations showed as 8-10 % of a
//! mirrored write's profile samples at QD32, mostly cache misses; the vector measured within
//! the spread of the map, slightly ahead at QD1: benches/RESULTS.md, session 6).
//! When an apply finishes, only the queued applies overlapping its range can become
//! startable; they are looked at in ticket order.
//!
//! The engine routes: [`ApplyQueue::push`] says whether the new apply starts now,
//! [`ApplyQueue::finish`] and [`ApplyQueue::unblocked_by`] say which start next; the engine
//! starts them on the replica (a part never starts I/O itself).
//!
//! Invariants:
//! - A queued apply overlaps some running apply or some queued apply with a lower ticket; a
//!   running apply overlaps no other running apply with a lower ticket that was running when
//!   it started (empty ranges overlap nothing).
//! - `applied.wm` is the highest `seq` such that every `seq` up to it of the current session
//!   was applied (cumulative over out-of-order completions).

use slab::Slab;
use std::collections::VecDeque;

/// Cumulative applied watermark over out-of-order completions.
#[derive(Default)]
pub(super) struct Window {
    pub(super) wm: u64,
    done: VecDeque<bool>,
}

impl Window {
    /// `seq` is applied.
    pub(super) fn mark(&mut self, seq: u64) {
        if seq <= self.wm {
            return;
        }
        let i = (seq - self.wm - 1) as usize;
        if self.done.len() <= i {
            self.done.resize(i + 1, false);
        }
        self.done[i] = true;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.wm += 1;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Queued,
    Running,
    /// Not ordered by the queue (a flush of this site's initiator).
    Outside,
}

/// One operation on the local replica.
pub(super) struct Apply {
    /// The engine's op.
    pub(super) op: usize,
    /// The session and seq its completion marks applied (seq 0: none).
    pub(super) session: u32,
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
    ticket: u64,
    state: State,
}

impl Apply {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
    fn overlaps(&self, o: u64, end: u64) -> bool {
        self.offset < end && o < self.end()
    }
}

/// What the engine needs of a finished apply, copied by [`ApplyQueue::finished`] before
/// [`ApplyQueue::finish`] removes it (see `Engine::apply_done` for why not returned by it).
#[derive(Clone, Copy, Debug)]
pub(super) struct Finished {
    pub(super) op: usize,
    pub(super) session: u32,
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl Finished {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// The apply queue and the applied watermark.
pub(super) struct ApplyQueue {
    applies: Slab<Apply>,
    /// Queued or running applies with a non-empty range: `(offset, ticket, slot)`, sorted.
    index: Vec<(u64, u64, usize)>,
    /// How many indexed applies have a length in `[2^(i-1), 2^i)` (i = bits of the length).
    len_bits: [u32; 65],
    /// Bit `i` set when `len_bits[i] > 0`: the bound in two instructions, not a scan of 65
    /// counts on every lookup (most of a push's work at low queue depth).
    len_mask: u128,
    next_ticket: u64,
    /// The session's applied watermark.
    pub(super) applied: Window,
}

impl ApplyQueue {
    pub(super) fn new() -> Self {
        Self {
            applies: Slab::with_capacity(1024),
            index: Vec::with_capacity(1024),
            len_bits: [0; 65],
            len_mask: 0,
            next_ticket: 0,
            applied: Window::default(),
        }
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Apply> {
        self.applies.get(slot)
    }

    /// The op of apply `slot` (which must exist).
    pub(super) fn op_of(&self, slot: usize) -> usize {
        self.applies[slot].op
    }

    /// An upper bound on the longest indexed apply (0: none).
    fn max_len(&self) -> u64 {
        match 128 - self.len_mask.leading_zeros() {
            0 => 0,
            65 => u64::MAX,
            b => (1u64 << (b - 1)) - 1,
        }
    }

    /// Indexed applies that may overlap `[o, end)`: `(slot, apply)`.
    fn near(&self, o: u64, end: u64) -> impl Iterator<Item = (usize, &Apply)> {
        let from = if self.index.is_empty() {
            0
        } else {
            let lo = o.saturating_sub(self.max_len().saturating_sub(1));
            self.index.partition_point(|&(off, _, _)| off < lo)
        };
        self.index[from..]
            .iter()
            .take_while(move |&&(off, _, _)| off < end)
            .map(|&(_, _, s)| (s, &self.applies[s]))
            .filter(move |(_, a)| a.overlaps(o, end))
    }

    fn index_add(&mut self, slot: usize) {
        let a = &self.applies[slot];
        if a.len > 0 {
            let key = (a.offset, a.ticket);
            let at = self.index.partition_point(|&(o, t, _)| (o, t) < key);
            if at == self.index.len() {
                // (Last, as at a low queue depth: a push, no `memmove` call.)
                self.index.push((a.offset, a.ticket, slot));
            } else {
                self.index.insert(at, (a.offset, a.ticket, slot));
            }
            let b = (64 - a.len.leading_zeros()) as usize;
            self.len_bits[b] += 1;
            self.len_mask |= 1 << b;
        }
    }

    fn index_remove(&mut self, slot: usize) {
        let a = &self.applies[slot];
        if a.len == 0 {
            return;
        }
        let key = (a.offset, a.ticket);
        let at = self.index.partition_point(|&(o, t, _)| (o, t) < key);
        if self.index.get(at).is_some_and(|&(o, t, _)| (o, t) == key) {
            if at + 1 == self.index.len() {
                self.index.pop();
            } else {
                self.index.remove(at);
            }
            let b = (64 - a.len.leading_zeros()) as usize;
            self.len_bits[b] -= 1;
            if self.len_bits[b] == 0 {
                self.len_mask &= !(1 << b);
            }
        }
    }

    /// Enqueue an apply of `[offset, offset + len)` for `op`. Returns its slot and whether it
    /// starts now (nothing queued or running overlaps it); if not, it waits in the queue.
    pub(super) fn push(
        &mut self,
        op: usize,
        session: u32,
        seq: u64,
        offset: u64,
        len: u64,
    ) -> (usize, bool) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let end = offset.saturating_add(len);
        let blocked = len > 0 && self.near(offset, end).next().is_some();
        let slot = self.applies.insert(Apply {
            op,
            session,
            seq,
            offset,
            len,
            ticket,
            state: if blocked {
                State::Queued
            } else {
                State::Running
            },
        });
        self.index_add(slot);
        (slot, !blocked)
    }

    /// An apply the queue does not order (runs at once, blocks nothing).
    pub(super) fn push_outside(&mut self, op: usize) -> usize {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.applies.insert(Apply {
            op,
            session: 0,
            seq: 0,
            offset: 0,
            len: 0,
            ticket,
            state: State::Outside,
        })
    }

    /// What the engine needs of apply `slot` once it finished (None: no such apply); then
    /// [`Self::finish`] it.
    pub(super) fn finished(&self, slot: usize) -> Option<Finished> {
        self.applies.get(slot).map(|a| Finished {
            op: a.op,
            session: a.session,
            seq: a.seq,
            offset: a.offset,
            len: a.len,
        })
    }

    /// Apply `slot` finished: forget it (false: no such apply).
    pub(super) fn finish(&mut self, slot: usize) -> bool {
        if !self.applies.contains(slot) {
            return false;
        }
        self.index_remove(slot);
        self.applies.remove(slot);
        true
    }

    /// After `done` finished: the queued applies that may start now, in ticket order (marked
    /// running; the engine starts them).
    pub(super) fn unblocked_by(&mut self, done: &Finished) -> Vec<usize> {
        if done.len == 0 {
            return Vec::new();
        }
        let mut cands: Vec<(u64, usize)> = self
            .near(done.offset, done.end())
            .filter(|(_, a)| a.state == State::Queued)
            .map(|(s, a)| (a.ticket, s))
            .collect();
        cands.sort_unstable();
        let mut ready = Vec::new();
        for (ticket, s) in cands {
            let (o, end) = (self.applies[s].offset, self.applies[s].end());
            let blocked = self.near(o, end).any(|(t, a)| {
                t != s
                    && (a.state == State::Running
                        || (a.state == State::Queued && a.ticket < ticket))
            });
            if !blocked {
                self.applies[s].state = State::Running;
                ready.push(s);
            }
        }
        ready
    }

    /// Give `op`'s applies the seq they now carry (an update sequenced while being applied).
    pub(super) fn retag(&mut self, op: usize, session: u32, seq: u64) {
        for (_, a) in self.applies.iter_mut() {
            if a.op == op {
                a.session = session;
                a.seq = seq;
            }
        }
    }

    /// The running applies (their device operations issued, not completed): slot, ticket.
    pub(super) fn running(&self) -> impl Iterator<Item = (usize, u64, &Apply)> {
        self.applies
            .iter()
            .filter(|(_, a)| a.state == State::Running)
            .map(|(s, a)| (s, a.ticket, a))
    }

    /// Slots of the queued and running applies (not those outside the queue).
    pub(super) fn active(&self) -> impl Iterator<Item = (usize, &Apply)> {
        self.applies
            .iter()
            .filter(|(_, a)| a.state != State::Outside)
    }
}

#[cfg(test)]
mod tests {
    //! The interval index against the linear scan it replaced (running list plus FIFO of
    //! queued applies), on random enqueues and out-of-order completions.
    use super::*;

    use super::super::tests::Rng;

    /// The algorithm before the split.
    #[derive(Default)]
    struct Linear {
        ranges: Vec<Option<(u64, u64)>>,
        queued: VecDeque<usize>,
        running: Vec<usize>,
    }

    impl Linear {
        fn overlaps(&self, a: usize, b: usize) -> bool {
            let (x, y) = (self.ranges[a].unwrap(), self.ranges[b].unwrap());
            x.0 < y.0 + y.1 && y.0 < x.0 + x.1
        }
        fn push(&mut self, id: usize, o: u64, l: u64) -> bool {
            self.ranges.push(Some((o, l)));
            let blocked = self.running.iter().any(|&r| self.overlaps(r, id))
                || self.queued.iter().any(|&q| self.overlaps(q, id));
            if blocked {
                self.queued.push_back(id);
            } else {
                self.running.push(id);
            }
            !blocked
        }
        fn finish(&mut self, id: usize) -> Vec<usize> {
            let i = self.running.iter().position(|&x| x == id).unwrap();
            self.running.swap_remove(i);
            let mut started = Vec::new();
            let mut i = 0;
            while i < self.queued.len() {
                let a = self.queued[i];
                let blocked = self.running.iter().any(|&r| self.overlaps(r, a))
                    || self.queued.iter().take(i).any(|&q| self.overlaps(q, a));
                if blocked {
                    i += 1;
                } else {
                    self.queued.remove(i);
                    self.running.push(a);
                    started.push(a);
                }
            }
            started
        }
    }

    #[test]
    fn the_interval_index_starts_the_same_applies_as_the_linear_scan() {
        for seed in 1..80u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut q = ApplyQueue::new();
            let mut lin = Linear::default();
            // id (the op) -> slot, and the running ones.
            let mut slots = Vec::new();
            let mut running: Vec<usize> = Vec::new();
            let span = 1 + rng.below(64);
            for _ in 0..400 {
                if running.is_empty() || rng.below(3) != 0 {
                    let id = slots.len();
                    let o = rng.below(span);
                    let l = if rng.below(10) == 0 {
                        1 + rng.below(span)
                    } else {
                        1 + rng.below(4)
                    };
                    let (slot, now) = q.push(id, 0, 0, o, l);
                    assert_eq!(now, lin.push(id, o, l), "seed {seed}: push {id}");
                    slots.push(slot);
                    if now {
                        running.push(id);
                    }
                } else {
                    let id = running.swap_remove(rng.below(running.len() as u64) as usize);
                    let done = q.finished(slots[id]).expect("apply");
                    assert!(q.finish(slots[id]));
                    assert_eq!(done.op, id);
                    let mut got: Vec<usize> = q
                        .unblocked_by(&done)
                        .into_iter()
                        .map(|s| q.op_of(s))
                        .collect();
                    let mut want = lin.finish(id);
                    got.sort_unstable();
                    want.sort_unstable();
                    assert_eq!(got, want, "seed {seed}: started after {id}");
                    running.extend(want);
                }
                let mut act: Vec<usize> = q.active().map(|(_, a)| a.op).collect();
                let mut lact: Vec<usize> = lin.running.iter().chain(&lin.queued).copied().collect();
                act.sort_unstable();
                lact.sort_unstable();
                assert_eq!(act, lact, "seed {seed}: active");
            }
        }
    }

    #[test]
    fn empty_ranges_and_outside_applies_block_nothing() {
        let mut q = ApplyQueue::new();
        let (_, now) = q.push(0, 0, 0, 0, 4096);
        assert!(now);
        assert!(q.push(1, 0, 0, 0, 0).1);
        let f = q.push_outside(2);
        assert_eq!(q.active().count(), 2);
        let done = q.finished(f).unwrap();
        assert!(q.finish(f));
        assert!(q.unblocked_by(&done).is_empty());
    }

    #[test]
    fn the_length_bound_covers_every_indexed_length_up_to_the_largest() {
        let mut q = ApplyQueue::new();
        assert_eq!(q.max_len(), 0);
        let mut slots = Vec::new();
        for (i, l) in [1u64, 4096, 4097, 1 << 40, (1 << 63) + 5, u64::MAX]
            .into_iter()
            .enumerate()
        {
            // Far apart, so none blocks another; each longer than all before it.
            let (s, _) = q.push(i, 0, 0, (i as u64) << 56, l);
            slots.push(s);
            assert!(q.max_len() >= l, "bound {} < {l}", q.max_len());
            assert!(q.max_len() / 2 < l, "bound {} far above {l}", q.max_len());
        }
        // A long apply far below still blocks one that starts inside it.
        assert!(!q.push(9, 0, 0, 3 << 56, 1).1);
        for s in slots.into_iter().rev() {
            q.finish(s);
        }
        assert_eq!(q.max_len(), 1, "only the blocked one-byte apply is left");
    }

    #[test]
    fn the_watermark_follows_out_of_order_completions() {
        let mut w = Window::default();
        w.mark(2);
        assert_eq!(w.wm, 0);
        w.mark(1);
        assert_eq!(w.wm, 2);
        w.mark(2);
        w.mark(4);
        assert_eq!(w.wm, 2);
        w.mark(3);
        assert_eq!(w.wm, 4);
    }
}
