//! The engine's routing at the session's edges and for every message from the peer: link up
//! and down (what each part re-sends or holds), and the checks and dispatch of each message
//! to the part it is for. The session's own state is [`PeerSession`] (`session.rs`); this
//! file only routes.
//!
//! Model: a session starts after HELLO/WELCOME (`link_up`, which re-sends what the peer may
//! not have) and ends with the link (`link_down`, which holds everything until the next one).
//! [`Engine::on_msg`] checks a message and routes it.
//!
//! Invariants: a message that fails a check is never applied (`on_msg` returns the reason and
//! the link is dropped); sequence numbers arrive exactly in order; an ACK never passes the
//! highest `seq` given or received.

use super::*;

impl Engine {
    // ---- the link -------------------------------------------------------------------------

    /// A session started (after HELLO/WELCOME): re-send what the peer may not have.
    pub fn link_up(&mut self, io: &mut IoCx) {
        self.sess.start();
        // The first read lease: from the WELCOME this leader sent, or (follower) from the
        // HELLO the WELCOME answered, before its AUTH reaches the leader (docs/mirror-protocol.md,
        // "Read lease"); now where no handshake ran (tests).
        let now = Instant::now();
        let base = self.handshake_sent.take().unwrap_or(now);
        self.sess.start_lease(base, now, self.cfg.heartbeat);
        self.publish_lease();
        self.aq.applied = apply::Window::default();
        self.held_logged = false;
        self.last_rx = Instant::now();
        self.kill_link = None;
        tracing::info!(volume = %self.cfg.name, session = self.sess.number, role = ?self.role,
            resend = self.leader.backlog_len() + self.follower.len(), "mirror: link up");
        match self.role {
            Role::Leader => {
                // Applies of forwarded updates already under way (this session's re-sends
                // start after the snapshot).
                let ops = &self.ops;
                let backlog = self.leader.session_started(
                    self.aq
                        .active()
                        .filter(|(_, a)| ops[a.op].origin == Origin::PeerFwd)
                        .map(|(s, _)| s),
                );
                for k in backlog {
                    self.sequence_and_send(io, k);
                }
                self.leader.resends_sent();
                self.maybe_send_resent();
            }
            Role::Follower => {
                // Nothing is forwarded until the leader's re-sends are in (RESENT): they say
                // which forwards the leader already has.
                for k in self.follower.session_started() {
                    self.ops[k].stage.session_ended();
                }
            }
        }
        for k in self.flushes.waiting() {
            if !self.ops[k].stage.confirmed() {
                self.send_flush(k);
            }
        }
    }

    /// The session ended: hold everything until the next one (or the timeout).
    pub fn link_down(&mut self, why: &str) {
        if !self.sess.end() {
            return;
        }
        // The read lease is revoked at once (the peer may be granted the volume).
        self.publish_lease();
        match self.sw.phase {
            switchover::Phase::Draining { .. } => self.switch_abort(
                "the session ended during the drain; rolled back, the leader is unchanged",
            ),
            switchover::Phase::Idle => self.stats.set_switch_phase(None),
            switchover::Phase::Handed { .. } | switchover::Phase::Handing { .. } => {
                // A follower of the new term either way (SWITCH sent or not: the next
                // session's agreement gives the peer the term this site follows at); what
                // waited goes on as this site's forwards at the next tick.
                self.sw.phase = switchover::Phase::Idle;
                self.stats.set_switch_phase(None);
            }
            switchover::Phase::Taking { ref mut ack, .. } => {
                // The peer's hand-over ended with this session (above, at its end): a
                // SWITCH_ACK in the next one would be refused, the link dropped again.
                *ack = false;
            }
        }
        // In sync until now, this replica holds every write of the grants up to the group's
        // epoch: the known one, and one another volume's RESYNC_DONE taught the site
        // (`learned_epoch`, at which the failover thread asks before it takes it as known).
        let in_sync_at = (self.mode == Mode::Mirroring)
            .then_some(self.cfg.failover.as_ref())
            .flatten()
            .map(|s| {
                use std::sync::atomic::Ordering::SeqCst;
                s.known_epoch.load(SeqCst).max(s.learned_epoch.load(SeqCst))
            });
        self.witness.link_lost(in_sync_at);
        self.peer_unflushed.session_ended();
        self.fail_held();
        self.fail_metas();
        // The MISCOMPAREs still waiting: their outcome is final, answered once the updates
        // they compared against, still being applied here, are (a host that re-reads after a
        // miscompare sees what it failed against, even at this site as the survivor).
        self.follower.session_ended();
        if self.follower.miscompares_waiting() {
            self.release_miscompares();
        }
        // Forwards still waiting behind a compare-and-write: the follower sends them again.
        for k in self.leader.session_ended(&self.ops) {
            let op = self.ops.remove(k);
            self.recycle(op.data);
        }
        self.sess.publish_down();
        tracing::warn!(volume = %self.cfg.name, session = self.sess.number, why,
            held = self.ops.len(), "mirror: link down; updates are held until the peer returns");
    }

    /// Move pending messages (and an ACK if the watermark moved) to `out`: headers, and
    /// payloads by reference to their updates' buffers (txq.rs).
    pub fn take_tx(&mut self, out: &mut TxQueue) {
        self.sess.take_outbox(out, self.ack_wm());
    }

    /// [`Engine::take_tx`] gathered into one byte buffer (tests, which read the stream as
    /// bytes).
    pub fn take_outbox(&mut self, out: &mut Vec<u8>) {
        let mut q = TxQueue::default();
        self.take_tx(&mut q);
        q.gather(out);
        q.clear(|d| self.recycle(d));
    }

    /// Queue a PING carrying the current clock.
    pub fn ping(&mut self) {
        self.sess.ping();
    }

    pub(super) fn check_range(&self, h: &Header) -> Result<(), &'static str> {
        let b = self.cfg.block as u64;
        let end = h
            .offset
            .checked_add(h.count as u64)
            .ok_or("range overflows")?;
        if h.count == 0 || end > self.cfg.size {
            return Err("range outside the volume");
        }
        if !h.offset.is_multiple_of(b) || !(h.count as u64).is_multiple_of(b) {
            return Err("range not aligned to the block size");
        }
        Ok(())
    }

    pub(super) fn check_next_seq(&mut self, seq: u64) -> Result<(), &'static str> {
        self.sess.check_next_seq(seq)
    }

    /// One message from the peer. An `Err` is the reason to drop the link; nothing of that
    /// message was applied.
    pub fn on_msg(
        &mut self,
        io: &mut IoCx,
        h: &Header,
        payload: &[u8],
    ) -> Result<(), &'static str> {
        self.sess.received();
        // Every field against its meaning for the type (the link's decoder checked it too).
        let r = wire::check_fields(h, payload).and_then(|()| self.handle(io, h, payload));
        if r.is_err() {
            self.stats.inc(&self.stats.rejected);
        }
        r
    }

    pub(super) fn handle(
        &mut self,
        io: &mut IoCx,
        h: &Header,
        payload: &[u8],
    ) -> Result<(), &'static str> {
        use Type::*;
        let leader = self.role == Role::Leader;
        match h.ty {
            // Sent by the peer as follower before it saw this site's SWITCH: it takes them
            // back as the leader (switchover.rs).
            FwdWrite | FwdZeroes | FwdUnmap | FwdCaw | Meta if self.sw.handed() => {
                if h.ty != Meta {
                    self.check_range(h)?;
                }
            }
            Switch => self.on_switch(h)?,
            SwitchAck => self.on_switch_ack(h)?,
            SwitchAsk => self.on_switch_ask(h),
            Write | Zeroes | Unmap
                if !leader && h.flags & wire::FLAG_RESENT != 0 && self.claim_resent(io, h)? => {}
            Write | Zeroes | Unmap if !leader => {
                self.check_range(h)?;
                if self.mode != Mode::Mirroring {
                    // The leader sequences updates only while both mirror (a resync target
                    // says so with RESYNC_DONE_ACK before any reaches it): applied here, one
                    // would break the target's copy or a survivor's replica.
                    return Err("sequenced update at a site that does not mirror");
                }
                self.check_next_seq(h.seq)?;
                let upd = match h.ty {
                    Write => Upd::Write,
                    Zeroes => Upd::Zeroes,
                    _ => Upd::Unmap,
                };
                let k = self.new_peer_op(Origin::PeerSeq, upd, h, Data::default());
                self.ops[k].seq = h.seq;
                // Applied from the received message (no copy unless it must wait); settled
                // by its apply's completion (at once for a RAM replica).
                self.enqueue_apply_from(io, k, (self.sess.number, h.seq), payload);
            }
            Order if !leader => {
                let (_, k) = self
                    .follower
                    .awaiting(&self.ops)
                    .ok_or("ORDER with no forwarded request outstanding")?;
                if h.id != self.ops[k].uid {
                    return Err("ORDER for a request not outstanding");
                }
                self.check_next_seq(h.seq)?;
                let op = &mut self.ops[k];
                if op.upd == Upd::Caw {
                    // The leader found it matching: apply the write data at this seq.
                    let len = op.len as usize;
                    op.data.make_mut().drain(..len);
                    op.upd = Upd::Write;
                }
                op.stage.order(self.sess.number);
                op.seq = h.seq;
                op.session = self.sess.number;
                op.fwd_inc = self.peer_incarnation;
                self.enqueue_apply(io, k, self.sess.number, h.seq);
            }
            FwdWrite | FwdZeroes | FwdUnmap | FwdCaw
                if leader
                    && !self.draining
                    && self.mode == Mode::Resyncing
                    && self.target.is_done() =>
            {
                // The source is mirroring already; this site still applies its last copies:
                // the forward waits, in order, until they are done.
                let k = self.forwarded_op(h, payload)?;
                self.leader.wait(k);
            }
            FwdWrite | FwdZeroes | FwdUnmap | FwdCaw
                if leader && (self.draining || self.mode != Mode::Mirroring) =>
            {
                // Not taken (stopping, or a survivor resyncing the peer): the follower fails
                // it on its timeout; neither replica applies it.
                self.check_range(h)?;
            }
            FwdWrite | FwdZeroes | FwdUnmap | FwdCaw if leader => {
                let k = self.forwarded_op(h, payload)?;
                self.leader_take(io, k);
            }
            Miscompare if !leader => {
                let (pos, k) = self
                    .follower
                    .awaiting(&self.ops)
                    .ok_or("MISCOMPARE with no forwarded request outstanding")?;
                if h.id != self.ops[k].uid || self.ops[k].upd != Upd::Caw {
                    return Err("MISCOMPARE for a request not outstanding");
                }
                if h.seq > self.sess.last_seq() {
                    return Err("MISCOMPARE after a seq not received");
                }
                self.follower.remove_at(pos);
                let op = &mut self.ops[k];
                op.stage.confirm();
                op.apply_err = Some(Errno::MISCOMPARE);
                let uid = op.uid;
                if self.aq.applied.wm >= h.seq {
                    self.settle(k);
                } else {
                    // Answered once this site has what the leader compared against.
                    op.applying += 1;
                    self.follower
                        .wait_miscompare(k, uid, self.sess.number, h.seq);
                }
            }
            Resent if !leader => {
                self.after_resent()?;
            }
            Ack => {
                // Leader: the highest seq given; follower: the highest seq received.
                self.sess.on_ack(h.seq)?;
                self.on_peer_wm();
                self.release_room_wait(io);
            }
            Flush => {
                let k = self.new_peer_op(Origin::PeerFlush(h.id), Upd::Flush, h, Data::default());
                self.ops[k].session = self.sess.number;
                self.enqueue_apply(io, k, 0, 0);
            }
            FlushDone => {
                let k = h.id as usize;
                if !self.flushes.remove(k) {
                    return Err("FLUSH_DONE for no outstanding flush");
                }
                self.peer_unflushed.flush_done(h.id, payload.len() != 4);
                let op = &mut self.ops[k];
                op.stage.confirm();
                if payload.len() == 4 {
                    let e = i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    op.apply_err = Some(Errno(e));
                }
                self.settle(k);
            }
            Ping => self.sess.on_ping(h),
            Pong => {
                if let Some((n, at)) = self.resync_received
                    && (n != self.sess.number || (h.seq >= at && h.seq <= self.sess.clock()))
                {
                    // The resync's source has read this site's confirmation (or the session
                    // is another): it pushes no more metadata states. (A PONG carrying a
                    // clock not reached yet answers no PING of this site's: `on_pong` ignores
                    // it too.)
                    self.resync_received = None;
                    self.submit_crossing_metas();
                }
                if self.sess.on_pong(h) {
                    self.publish_lease();
                }
            }
            ResyncAlso if self.resync.as_ref().is_some_and(|r| r.listing()) => {
                let (b, size) = (self.cfg.block as u64, self.cfg.size);
                for (offset, len) in wire::decode_resync_also(payload) {
                    let end = offset.checked_add(len).ok_or("range overflows")?;
                    if len == 0 || end > size {
                        return Err("RESYNC_ALSO range outside the volume");
                    }
                    if !offset.is_multiple_of(b) || !len.is_multiple_of(b) {
                        return Err("RESYNC_ALSO range not aligned to the block size");
                    }
                }
                for (offset, len) in wire::decode_resync_also(payload) {
                    self.dirty.set_range(offset, len);
                }
                self.stats
                    .dirty_bytes
                    .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
                if h.count == 0 {
                    self.resync.as_mut().expect("checked").list_ended();
                }
            }
            Resync if self.mode == Mode::Resyncing && !self.target.is_done() => {
                self.check_range(h)?;
                self.take_copy(io, h, payload);
            }
            ResyncDone if self.mode == Mode::Resyncing && !self.target.is_done() => {
                self.target.done_received(h.seq);
                self.maybe_end_resync_target(io);
            }
            ResyncDoneAck if self.resync.as_ref().is_some_and(|r| r.awaiting_ack()) => {
                self.finish_resync(io);
            }
            Meta if leader => {
                if self.mode != Mode::Mirroring {
                    // The follower sends META only while both mirror (a resync target or a
                    // survivor decides or refuses its own commands): executed here, a forged
                    // or misplaced one would change the state this site decides on (a
                    // survivor's wins) for a command no host gave.
                    return Err("META at a leader that does not mirror");
                }
                let (status, state, settles) = match &self.cfg.meta {
                    Some(m) => {
                        let (status, state) = m.execute(self.vol, payload);
                        (status, state, m.settling(self.vol))
                    }
                    None => (META_INTERNAL, None, Vec::new()),
                };
                self.send_meta_state(h.id, status, state.as_deref().unwrap_or(&[]), settles);
            }
            MetaState => {
                if h.id != wire::META_NO_ID && (leader || !self.metas.asked(h.id)) {
                    return Err("META_STATE answers no outstanding request");
                }
                if h.id == wire::META_NO_ID && !self.takes_peer_meta_state() {
                    return Err("META_STATE at the site whose metadata state wins");
                }
                let (installed, settles) = match (&self.cfg.meta, payload.is_empty()) {
                    (_, true) => (Install::Done, Vec::new()),
                    (Some(m), false) => (m.install(self.vol, payload), m.settling(self.vol)),
                    (None, false) => (Install::Failed, Vec::new()),
                };
                if installed == Install::Malformed {
                    return Err("malformed metadata state");
                }
                let failed = installed == Install::Failed;
                if failed {
                    tracing::error!(volume = %self.cfg.name,
                        "mirror: the peer's metadata (reservation) state could not be installed here");
                }
                // Acknowledged (and this site's initiator answered) once the work the install
                // started here is done (`MetaHandler::settling`).
                let count = if failed { u32::from(META_INTERNAL) } else { 0 };
                let mut out = vec![Held::Ack(h.seq, count)];
                if h.id != wire::META_NO_ID {
                    let status = if failed {
                        META_INTERNAL
                    } else {
                        h.count.min(0xFFFF) as u16
                    };
                    if let Some((from, tag, r)) = self.metas.answered(h.id, status) {
                        out.push(Held::Answer(from, tag, r));
                    }
                }
                for m in out {
                    if let Some(m) = self.metas.hold(settles.clone(), m) {
                        self.give_meta(m);
                    }
                }
            }
            MetaAck => {
                let answers = self.metas.acked(h.seq, h.count)?;
                self.done.extend(answers);
            }
            Hello | Welcome | Refuse => return Err("handshake message inside a session"),
            _ => return Err("message not allowed in this direction"),
        }
        Ok(())
    }
}

impl Engine {
    // ---- replicated metadata (the waits are `MetaRepl`'s) ------------------------------

    /// Whether the peer may push its metadata state here (META_STATE with no id). Only the
    /// site whose state wins sends one: the leader of a mirroring session, and a resync source
    /// (a survivor deciding alone), until it has RESYNC_DONE_ACK. So only a mirroring follower
    /// and a resync target take one, the target also after its confirmation until the source
    /// has read it ([`Self::peer_meta_crossing`]: a source's change may cross it). Anywhere
    /// else (the leader of a mirroring session, a survivor, a fenced or waiting site) it would
    /// overwrite the state this site decides on with the peer's copy: forged or misplaced, it
    /// is refused. (Before, a target took one for the rest of the session.)
    pub(super) fn takes_peer_meta_state(&self) -> bool {
        match self.mode {
            Mode::Resyncing => true,
            Mode::Mirroring => self.role == Role::Follower || self.peer_meta_crossing(),
            _ => false,
        }
    }

    /// A resync target mirroring again whose source may not have read its RESYNC_DONE_ACK
    /// yet (no PONG for the PING sent behind it): the source may still decide metadata alone
    /// and push its state. Meanwhile a target that leads decides no command of its own
    /// (`submit_meta` holds them, `submit_crossing_metas`): its state and the source's would
    /// cross, each site installing the other's, and stay different with both commands
    /// answered.
    pub(super) fn peer_meta_crossing(&self) -> bool {
        self.resync_received
            .is_some_and(|(n, _)| n == self.sess.number && self.sess.up)
    }

    /// The metadata commands held while the resync's source could still decide alone
    /// (`peer_meta_crossing`), or while this site, handing the leadership over, has not sent
    /// SWITCH yet: decided (or sent as META) once it cannot (or failed, the session gone).
    /// Each keeps its deadline: one held longer than its peer timeout (a state write that
    /// hangs without an error keeps a hand-over in `Handing`) fails with EIO, as any request
    /// waiting for the peer (`MetaRepl::expire`), never decided.
    pub(super) fn submit_crossing_metas(&mut self) {
        if !self.metas.crossing()
            || self.peer_meta_crossing()
            || matches!(self.sw.phase, switchover::Phase::Handing { .. })
        {
            return;
        }
        for c in self.metas.take_crossing() {
            let (from, tag) = c.who;
            if let Start::Done(r) = self.submit_meta_until(from, tag, &c.cmd, c.deadline) {
                self.done.push((from, tag, r));
            }
        }
    }

    /// A metadata command from this site's initiator.
    pub(super) fn submit_meta(&mut self, from: u32, tag: IoTag, cmd: &[u8]) -> Start {
        let deadline = Instant::now() + self.cfg.peer_timeout;
        self.submit_meta_until(from, tag, cmd, deadline)
    }

    /// Hold `from`'s command `cmd` (answered by `deadline` at most) until it may be decided or
    /// sent (`submit_crossing_metas`); refused with Internal Error when `meta::MAX_WAITS`
    /// commands wait or are held already, rather than held without limit.
    fn hold_meta(&mut self, from: u32, tag: IoTag, cmd: &[u8], deadline: Instant) -> Start {
        if self.metas.cross((from, tag), cmd, deadline) {
            return Start::Pending;
        }
        tracing::warn!(volume = %self.cfg.name, waiting = self.metas.len(),
            "mirror: too many metadata commands wait or are held; refusing one");
        Start::Done(meta_result(META_INTERNAL))
    }

    /// A metadata command from this site's initiator, answered by `deadline` at most.
    fn submit_meta_until(&mut self, from: u32, tag: IoTag, cmd: &[u8], deadline: Instant) -> Start {
        let Some(h) = self.cfg.meta.clone() else {
            return Start::Done(Err(Errno::NOTSUP));
        };
        if self.metas.full() && matches!(self.mode, Mode::Mirroring) {
            // The peer has left MAX_WAITS commands unanswered (their initiators may have
            // given up long ago): refuse more rather than keep them for ever.
            tracing::warn!(volume = %self.cfg.name, waiting = self.metas.len(),
                "mirror: too many metadata commands wait for the peer; refusing one");
            return Start::Done(meta_result(META_INTERNAL));
        }
        if matches!(self.sw.phase, switchover::Phase::Handing { .. }) {
            // The old leader of a switchover before its SWITCH (its new role not on disk
            // yet): the peer still follows and would refuse a META. Held, and sent to the new
            // leader after SWITCH (`submit_crossing_metas`, at the next tick).
            return self.hold_meta(from, tag, cmd, deadline);
        }
        match (self.mode, self.role, self.sess.up) {
            (Mode::Survivor, _, _) => {
                // Alone; a peer being resynced meanwhile gets the change too.
                let (status, state) = h.execute(self.vol, cmd);
                let settles = h.settling(self.vol);
                if self.sess.up
                    && let Some(state) = state
                {
                    self.send_meta_state(wire::META_NO_ID, 0, &state, Vec::new());
                }
                if !settles.iter().all(|s| s.settled()) {
                    // Answered once the work the decision started here is done.
                    let held = Held::Answer(from, tag, meta_result(status));
                    if let Some(m) = self.metas.hold(settles, held) {
                        self.give_meta(m);
                    }
                    return Start::Pending;
                }
                if meta_result(status).is_ok() && (self.durable.waiting() || self.holding_alone()) {
                    // Answered once the survivor state is durable (durable.rs) and the lost
                    // peer's read lease has expired.
                    self.answer(from, tag, meta_result(status));
                    return Start::Pending;
                }
                Start::Done(meta_result(status))
            }
            (Mode::Mirroring, Role::Leader, true) if self.peer_meta_crossing() => {
                // The resync's source may still decide alone (`peer_meta_crossing`): held for
                // that round trip, then decided (`submit_crossing_metas`).
                self.hold_meta(from, tag, cmd, deadline)
            }
            (Mode::Mirroring, Role::Leader, true) => match h.execute(self.vol, cmd) {
                // Unchanged, but decided on state the follower may not have yet: answered
                // only once every earlier change is acknowledged.
                (status, None) => match self.metas.unchanged((from, tag), status, deadline) {
                    Some(r) => Start::Done(r),
                    None => Start::Pending,
                },
                (status, Some(state)) => {
                    // Sent once the work the decision started here is done: the answer comes
                    // with the follower's META_ACK, after its own.
                    let settles = h.settling(self.vol);
                    let token = self.send_meta_state(wire::META_NO_ID, status, &state, settles);
                    self.metas.changed((from, tag), token, status, deadline);
                    Start::Pending
                }
            },
            (Mode::Mirroring, Role::Follower, true) if cmd.len() <= wire::MAX_META as usize => {
                let id = self.metas.ask((from, tag), deadline);
                let h = Header {
                    id,
                    ..Header::new(Type::Meta)
                };
                self.sess.send(&h, cmd);
                Start::Pending
            }
            // No session and no grant: deciding alone could split the state.
            _ => Start::Done(Err(Errno::IO)),
        }
    }

    /// Send a metadata state (answering META `id`, or none) once `settles` are done (and
    /// everything held before it is sent); returns its token.
    pub(super) fn send_meta_state(
        &mut self,
        id: u32,
        status: u16,
        state: &[u8],
        settles: Vec<Settle>,
    ) -> u64 {
        let token = self.metas.next_token();
        let m = Held::State(id, token, status, state.to_vec());
        if let Some(m) = self.metas.hold(settles, m) {
            self.give_meta(m);
        }
        token
    }

    /// Send a metadata message, or give an answer, now.
    pub(super) fn give_meta(&mut self, m: Held) {
        match m {
            Held::State(id, token, status, state) => {
                self.metas.state_sent(token);
                let h = Header {
                    id,
                    seq: token,
                    count: u32::from(status),
                    ..Header::new(Type::MetaState)
                };
                self.sess.send(&h, &state);
            }
            Held::Ack(seq, count) => {
                let ack = Header {
                    seq,
                    count,
                    ..Header::new(Type::MetaAck)
                };
                self.sess.send(&ack, &[]);
            }
            Held::Answer(from, tag, r) => self.done.push((from, tag, r)),
        }
    }

    /// Send and give what was held for work that has now settled (the tick calls it).
    pub(super) fn release_metas(&mut self) {
        for m in self.metas.release() {
            self.give_meta(m);
        }
    }

    /// At a session start, the site whose replica wins sends its whole metadata state.
    pub(super) fn push_meta(&mut self) {
        if let Some(h) = self.cfg.meta.clone() {
            for state in h.full_state(self.vol) {
                self.send_meta_state(wire::META_NO_ID, 0, &state, Vec::new());
            }
        }
    }

    /// Fail every metadata command waiting for the peer (its effect is settled by the next
    /// session's full state).
    pub(super) fn fail_metas(&mut self) {
        for m in self.metas.drop_held() {
            self.give_meta(m);
        }
        for (from, tag) in self.metas.fail_all() {
            self.done.push((from, tag, Err(Errno::IO)));
        }
        for c in self.metas.take_crossing() {
            self.done.push((c.who.0, c.who.1, Err(Errno::IO)));
        }
    }
}
