//! The engine's routing of an update between the parts: the leader's sequencing (through
//! [`Leader`], the session and the apply queue), the compare-and-write decision, flushes, the
//! ops of the peer's updates, and the follower's watermark. The lists are the parts'; this
//! file only routes between them.
//!
//! Model: an update taken here goes to the leader part (which says whether it starts or
//! waits behind a compare-and-write) or the follower part (which says whether it is forwarded
//! now); started, it gets its seq from the session, is sent through it and applied through
//! the apply queue; the peer's watermark goes to the part that keeps the update (backlog or
//! forwards), which returns what is confirmed, and the engine settles those.
//!
//! Invariants: updates are sent in `seq` order; the backlog keeps every update's data until
//! the follower's watermark passes it and is re-sent, in order, at the next session; a backlog
//! over `max_backlog` marks the volume diverged; a compare-and-write is decided (read and
//! compared through the apply queue) before anything after it is sequenced.

use super::*;

impl Engine {
    /// Leader: an update (this site's or forwarded) to sequence, unless a compare-and-write
    /// is being decided: then it waits behind it.
    pub(super) fn leader_take(&mut self, io: &mut IoCx, k: usize) {
        if self.sw.holds() {
            // A switchover drains (or the new leader's term is not on disk yet): it waits.
            self.sw.held.push_back(k);
            return;
        }
        // Its extents must be in the activity log, on disk, first (actlog.rs); while it waits,
        // everything taken after it waits too, in order.
        if !self.al_admit(k) {
            self.leader.wait(k);
            self.al.blocked = true;
            return;
        }
        if self.leader.take(k) {
            if self.backlog_room(k) {
                self.leader_start(io, k);
            } else {
                self.leader.wait(k);
                self.leader.room_wait = true;
            }
        }
    }

    /// Leader: whether `k` may be sequenced now as far as the backlog goes. While the session
    /// is up the backlog only grows while the follower is slow to acknowledge (a slow
    /// device there holds its cumulative watermark back), so an update that would take it past
    /// `max_backlog` waits until acknowledgements make room; a backlog over the limit means
    /// divergence only when the peer is away. (An empty backlog takes any update: one update
    /// is at most one message, and the limit is at least that.)
    fn backlog_room(&self, k: usize) -> bool {
        !self.sess.up
            || self.leader.backlog_len() == 0
            || self.leader.backlog_bytes() + self.ops[k].data.len() as u64 <= self.cfg.max_backlog
    }

    /// Leader: start the updates that waited for room in the backlog, as far as there is
    /// room now (after acknowledgements, or the session's end; during a switchover's drain
    /// too, like those a compare-and-write held: they were taken before it). With the link
    /// down and a witness they keep waiting: its answer settles them (the survivor applies
    /// them alone, a fence fails them), as it settles the backlog.
    pub(super) fn release_room_wait(&mut self, io: &mut IoCx) {
        if self.leader.room_wait
            && self.role == Role::Leader
            && (self.sess.up || self.cfg.failover.is_none())
        {
            self.release_barrier(io);
        }
    }

    pub(super) fn leader_start(&mut self, io: &mut IoCx, k: usize) {
        if self.ops[k].upd == Upd::Caw {
            // Read and compared through the apply queue, sequenced only once decided.
            self.leader.deciding(k);
            self.enqueue_apply(io, k, 0, 0);
            return;
        }
        self.backlog_push(k);
        if self.sess.up {
            self.sequence_and_send(io, k);
        } else {
            self.enqueue_apply(io, k, 0, 0);
        }
    }

    /// Leader: the compare-and-write holding the barrier is decided; sequence what waited.
    pub(super) fn release_barrier(&mut self, io: &mut IoCx) {
        // (Forwards kept while a resync's last copies are applied wait for mirroring.)
        if self.mode != Mode::Mirroring {
            return;
        }
        self.al.blocked = false;
        self.leader.room_wait = false;
        while let Some(k) = self.leader.peek_unblocked() {
            if !self.backlog_room(k) {
                self.leader.room_wait = true;
                return;
            }
            if !self.al_admit(k) {
                self.al.blocked = true;
                return;
            }
            self.leader.next_unblocked();
            self.leader_start(io, k);
        }
    }

    /// A compare-and-write's read finished (apply `slot`): compare, then either write the
    /// new data under the same apply (which keeps holding the range) or end without writing.
    pub(super) fn caw_compared(
        &mut self,
        io: &mut IoCx,
        slot: usize,
        r: Result<(), Errno>,
        data: &[u8],
    ) {
        let k = self.aq.op_of(slot);
        let len = self.ops[k].len as usize;
        let offset = self.ops[k].offset;
        // Only the leader decides while mirroring; a survivor decides alone. Anything else
        // (fenced, or a follower whose survivorship ended meanwhile) writes nothing.
        let may_write = self.mode == Mode::Survivor
            || (self.mode == Mode::Mirroring && self.role == Role::Leader);
        let outcome = match r {
            Err(e) => Err(e),
            Ok(()) if !may_write => Err(Errno::IO),
            Ok(()) if data.len() == len && data == &self.ops[k].data[..len] => Ok(()),
            Ok(()) => Err(Errno::MISCOMPARE),
        };
        let leader_decides = self.mode == Mode::Mirroring && self.role == Role::Leader;
        let op = &mut self.ops[k];
        let same_session = op.session == self.sess.number && self.sess.up;
        op.upd = Upd::Write;
        match outcome {
            Ok(()) => {
                op.data.make_mut().drain(..len);
                if op.origin == Origin::PeerFwd && !same_session {
                    // Its follower's id is gone with the session: sent as a WRITE.
                    op.stage.order_lost();
                }
                let (offset, fua) = (op.offset, op.fua);
                if leader_decides {
                    self.backlog_push(k);
                    if self.sess.up {
                        // Retags this running apply with the seq.
                        self.sequence_and_send(io, k);
                    }
                } else {
                    self.ops[k].stage.confirm();
                    self.mark_dirty(offset, len as u64);
                }
                if self.leader.decided(k) {
                    self.release_barrier(io);
                }
                self.written.set_range(offset, len as u64);
                let tag = IoTag::channel(self.vol as u32, slot as u32);
                let op = &self.ops[k];
                if let Start::Done(r) = self.inner.write(io, tag, offset, &op.data, fua) {
                    self.apply_finished(io, slot, r, &[]);
                }
            }
            Err(e) => {
                op.data.clear();
                op.stage.confirm();
                let (origin, peer_id) = (op.origin, op.peer_id);
                if origin == Origin::PeerFwd && same_session {
                    if e == Errno::MISCOMPARE {
                        // Its seq: the last given, so the follower answers only once it has
                        // applied what the compare saw.
                        let seq = self.sess.last_seq();
                        self.send(
                            Header {
                                id: peer_id,
                                seq,
                                ..Header::new(Type::Miscompare)
                            },
                            None,
                        );
                    } else {
                        // The follower cannot be told "failed, nothing written" otherwise:
                        // dropping the link makes it fail the request (outcome unknown).
                        self.kill_link = Some("a forwarded compare-and-write could not be read");
                    }
                }
                self.leader.decided(k);
                // Ends like a failed apply (the initiator gets the error).
                self.apply_done(io, slot, Err(e), &[], false);
                self.release_barrier(io);
            }
        }
        if let Err(e) = r {
            // The local device failed the compare's read: the replica failed (failed.rs).
            self.local_failure("a compare-and-write's read", offset, len as u64, e);
        }
    }

    pub(super) fn backlog_push(&mut self, k: usize) {
        let bytes = self.ops[k].data.len() as u64;
        if self.leader.push_backlog(k, bytes, self.cfg.max_backlog) {
            self.stats
                .diverged
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(volume = %self.cfg.name, backlog_bytes = self.leader.backlog_bytes(),
                "mirror: the peer is away and the backlog is full; the replicas have diverged, writes now fail until a resync");
        }
    }

    /// Leader: give `k` the next seq, send it, and apply it if not applied yet.
    pub(super) fn sequence_and_send(&mut self, io: &mut IoCx, k: usize) {
        let seq = self.sess.give_seq();
        let op = &mut self.ops[k];
        op.seq = seq;
        op.session = self.sess.number;
        let already = op.applied && op.applying == 0;
        let upd = op.upd;
        let id = op.peer_id;
        if op.stage.sequence() {
            // A forward of this session: the follower has the data and only needs the order.
            // (One from an old session is re-sent as a WRITE: the follower's ids are gone.)
            self.send(
                Header {
                    seq,
                    id,
                    ..Header::new(Type::Order)
                },
                None,
            );
        } else {
            let h = self.upd_header(k, false);
            self.send(h, (upd == Upd::Write).then_some(k));
            self.stats.inc(&self.stats.replicated);
        }
        if already {
            self.aq.applied.mark(seq);
        } else if self.ops[k].applying == 0 {
            self.enqueue_apply(io, k, self.sess.number, seq);
        } else {
            // Being applied (queued before this session): the watermark follows its apply.
            self.retag_running(k, seq);
        }
    }

    pub(super) fn retag_running(&mut self, k: usize, seq: u64) {
        self.aq.retag(k, self.sess.number, seq);
    }

    pub(super) fn start_flush(&mut self, io: &mut IoCx, k: usize) {
        self.flushes.push(k);
        self.ops[k].stage.flush();
        if self.sess.up {
            self.send_flush(k);
        }
        self.ops[k].applying += 1;
        let tag = IoTag::channel(self.vol as u32, self.aq.push_outside(k) as u32);
        self.al_flush_started(k);
        if let Start::Done(r) = self.inner.flush(io, tag) {
            self.apply_finished(io, tag.slot as usize, r, &[]);
        }
    }

    /// Leader, mirroring: a FLUSH of its own to the follower when regions it acknowledged
    /// have waited long enough (peer_cache.rs); answered like an initiator's, nobody waits.
    pub(super) fn peer_flush_tick(&mut self, now: Instant) {
        if self.role != Role::Leader
            || self.mode != Mode::Mirroring
            || !self.sess.up
            || !self.peer_unflushed.flush_due(now)
        {
            return;
        }
        let k = self.own_flush_op(Origin::Own, Stage::New);
        self.flushes.push(k);
        self.ops[k].stage.flush();
        self.send_flush(k);
    }

    /// Send FLUSH for this site's flush `k` (its id is the op's key).
    pub(super) fn send_flush(&mut self, k: usize) {
        self.send(
            Header {
                id: k as u32,
                ..Header::new(Type::Flush)
            },
            None,
        );
        if self.role == Role::Leader {
            self.peer_unflushed.flush_sent(k as u32);
        }
    }

    /// Leader: send RESENT once the applies under way at the session start are done.
    pub(super) fn maybe_send_resent(&mut self) {
        if self.leader.resent_now(self.sess.up) {
            self.send(Header::new(Type::Resent), None);
        }
    }

    /// Leader: the op of a forwarded update (FWD_WRITE, FWD_ZEROES, FWD_UNMAP, FWD_CAW).
    pub(super) fn forwarded_op(
        &mut self,
        h: &Header,
        payload: &[u8],
    ) -> Result<usize, &'static str> {
        self.check_range(h)?;
        let upd = match h.ty {
            Type::FwdWrite => Upd::Write,
            Type::FwdZeroes => Upd::Zeroes,
            Type::FwdCaw => Upd::Caw,
            _ => Upd::Unmap,
        };
        let data = if matches!(upd, Upd::Write | Upd::Caw) {
            self.buf(payload)
        } else {
            Data::default()
        };
        Ok(self.new_peer_op(Origin::PeerFwd, upd, h, data))
    }

    pub(super) fn new_peer_op(
        &mut self,
        origin: Origin,
        upd: Upd,
        h: &Header,
        data: Data,
    ) -> usize {
        // A forwarded update is the leader's to keep until the follower's watermark passes
        // it; nothing is asked of the peer for the others.
        let stage = if origin == Origin::PeerFwd {
            Stage::OrderDue
        } else {
            Stage::Confirmed
        };
        let mut op = Op::new(
            origin,
            upd,
            (h.offset, h.count as u64),
            h.fua(),
            data,
            stage,
            Instant::now() + self.cfg.peer_timeout,
        );
        op.session = self.sess.number;
        op.peer_id = h.id;
        op.fwd_inc = self.peer_incarnation;
        self.ops.insert(op)
    }

    pub(super) fn on_peer_wm(&mut self) {
        let wm = self.sess.peer_wm;
        let mut done = std::mem::take(&mut self.acked_buf);
        done.clear();
        match self.role {
            Role::Leader => self
                .leader
                .acked(&self.ops, self.sess.number, wm, &mut done),
            Role::Follower => self
                .follower
                .acked(&self.ops, self.sess.number, wm, &mut done),
        }
        for &k in &done {
            if self.role == Role::Leader && self.ops[k].upd != Upd::Flush {
                // Applied at the follower, not known to be durable there.
                self.peer_unflushed
                    .confirmed(self.ops[k].offset, self.ops[k].len);
            }
            self.ops[k].stage.confirm();
            self.settle(k);
        }
        self.acked_buf = done;
        self.stats.backlog_bytes.store(
            self.leader.backlog_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The replicas have diverged (backlog overflow): refuse sessions until a resync.
    pub fn is_diverged(&self) -> bool {
        self.leader.is_diverged()
    }

    /// Give up the backlog of a diverged volume: its requests fail, its memory is freed, and
    /// the session (if any) is dropped.
    pub(super) fn drop_backlog(&mut self) {
        // Applied here, never confirmed, and forgotten now: suspect.
        for k in self.leader.drop_backlog() {
            let op = &mut self.ops[k];
            self.suspect.set_range(op.offset, op.len);
            op.stage.confirm();
            if let Some((from, tag)) = op.initiator.take() {
                self.done.push((from, tag, Err(Errno::IO)));
            }
            self.settle(k);
        }
        self.stats.backlog_bytes.store(
            self.leader.backlog_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.sess.up {
            self.kill_link = Some("the volume diverged");
        }
    }
}

impl Engine {
    // ---- the follower's forwards -----------------------------------------------------------

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
        let session = self.sess.number;
        let Some(k) = self.follower.claimable(&self.ops, h.id, session) else {
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
            op.data.make_mut().drain(..len);
            op.upd = Upd::Write;
        }
        op.stage.order(session);
        op.seq = h.seq;
        op.session = session;
        op.fwd_inc = self.peer_incarnation;
        self.enqueue_apply(io, k, session, h.seq);
        Ok(true)
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

    /// Follower: the leader's re-sends are in (see [`Follower::resent`]); then the new
    /// forwards go out, in order.
    pub(super) fn after_resent(&mut self) -> Result<(), &'static str> {
        let steps = self
            .follower
            .resent(&self.ops, self.sess.number, self.peer_incarnation)?;
        for step in steps {
            match step {
                Resent::End { k, fail } => self.end_forward(k, fail),
                Resent::Forward(k) => self.forward(k),
            }
        }
        Ok(())
    }

    /// Follower: answer the MISCOMPAREs whose updates up to their seq are applied here: in
    /// the session that is up, those the applied watermark reached; of an ended session, those
    /// with no update at or below their seq still queued or running (every one of them was
    /// received before the MISCOMPARE; one that failed fails the replica).
    pub(super) fn release_miscompares(&mut self) {
        let (aq, sess) = (&self.aq, &self.sess);
        let due = self.follower.miscompares_due(|session, seq| {
            if sess.up && session == sess.number {
                aq.applied.wm >= seq
            } else {
                !aq.active()
                    .any(|(_, a)| a.session == session && a.seq != 0 && a.seq <= seq)
            }
        });
        self.answer_miscompares(due);
    }

    /// Answer these MISCOMPAREs `(op, uid)` (if the op is still that forward).
    pub(super) fn answer_miscompares(&mut self, due: Vec<(usize, u32)>) {
        for (k, uid) in due {
            if let Some(op) = self.ops.get_mut(k)
                && op.uid == uid
            {
                op.applying -= 1;
                self.settle(k);
            }
        }
    }
}
