//! Leadership at run time: the term, its agreement at a session start, and the planned
//! switchover (docs/mirror-protocol.md, "Leadership and planned switchover").
//!
//! Model: the engine's `role` (who sequences) is separate from the configured role, which
//! only says who dials the link (`cfg.role`). Each site holds `(term, role)`; term 0 is the
//! configuration, each switchover adds one, and the site leading term T is the only one that
//! creates T + 1. A switchover is a drain at the leader ([`Phase::Draining`]: nothing new is
//! sequenced, everything sequenced gets confirmed), then the leader becomes the follower of
//! T + 1 and waits until that is on disk ([`Phase::Handing`]), SWITCH ([`Phase::Handed`]
//! until SWITCH_ACK), and at the other site a take-over that
//! sequences nothing before its new term is on disk ([`Phase::Taking`]), then SWITCH_ACK.
//! Updates arriving meanwhile wait in [`Switch::held`] (op keys, arrival order) and take the
//! normal path once the phase is idle again ([`Engine::resume_held`]): so none fails because
//! of the switchover. A drain that does not finish within [`DRAIN_LIMIT`], or whose session
//! ends, is rolled back (nothing was sent; the leader keeps leading).
//!
//! Invariants:
//! - At most one site leads a term; a site sequences as leader of a term only once that term
//!   is durable here (or there is no state file).
//! - A SWITCH is sent only when no update sequenced by this site is outstanding, so the
//!   receiver has applied everything up to its `seq` and the session's numbering simply
//!   continues at the new leader.
//! - A SWITCH is sent only once "follower of T + 1" is on disk here: a site that applies an
//!   update as the follower of T + 1 (which no activity log of its covers) never restarts as
//!   the leader of T, whose activity log would then decide what it may have lost (test
//!   `actlog::an_old_leader_losing_power_after_its_switch_gets_back_what_b_ordered`).
//! - An op is in `held` only while the phase is not idle (or until the next tick resumes it),
//!   and is not in any other list meanwhile.

use super::*;
use std::collections::VecDeque;

/// The longest a drain may take before the switchover is rolled back.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The switchover step under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// None.
    Idle,
    /// Leader: nothing new is sequenced; SWITCH with `term` goes once nothing sequenced is
    /// outstanding, or the switchover is rolled back at `until`.
    Draining { term: u64, until: Instant },
    /// Old leader, drained and now a follower of `term`: SWITCH goes once persister
    /// generation `generation` (that role) is on disk; until then nothing new is forwarded,
    /// and forwards and META of the peer (sent as follower) are dropped, as in `Handed`.
    Handing { term: u64, generation: u64 },
    /// Old leader (now a follower of `term`): SWITCH sent, waiting for SWITCH_ACK; forwards
    /// and META that cross it are dropped.
    Handed { term: u64 },
    /// New leader of `term`: waits until persister generation `generation` is on disk, then
    /// sends SWITCH_ACK if `ack` (taken over at a SWITCH). Not after a lead adopted at a
    /// session start: the peer's hand-over, if any, ended with the old session (`link_down`),
    /// so it refused SWITCH_ACK ("for no switchover") and dropped the link, one more
    /// reconnection (test `actlog::a_lead_adopted_at_a_session_start_sends_no_switch_ack`).
    Taking {
        term: u64,
        generation: u64,
        ack: bool,
    },
}

/// The switchover's state.
pub(super) struct Switch {
    pub(super) phase: Phase,
    /// Updates (op keys) that wait for the phase to end, in arrival order.
    pub(super) held: VecDeque<usize>,
    /// The persister generation of a hand-over's "follower of T + 1" while it may not be on
    /// disk yet: kept past the phase (a session that ends during `Handing` sets it back to
    /// `Idle`), so that no later session starts on a role the disk does not hold
    /// ([`Engine::leadership_durable`]).
    pub(super) role_unsaved: Option<u64>,
}

impl Default for Switch {
    fn default() -> Self {
        Self {
            phase: Phase::Idle,
            held: VecDeque::new(),
            role_unsaved: None,
        }
    }
}

impl Switch {
    /// New updates wait (not sequenced, not forwarded) in this phase.
    pub(super) fn holds(&self) -> bool {
        matches!(
            self.phase,
            Phase::Draining { .. } | Phase::Handing { .. } | Phase::Taking { .. }
        )
    }

    /// Forwards and META of the peer are dropped: it sent them as follower before it saw this
    /// site's SWITCH, and takes them back as the leader.
    pub(super) fn handed(&self) -> bool {
        matches!(self.phase, Phase::Handing { .. } | Phase::Handed { .. })
    }
}

/// The largest term a leadership word carries (`term << 1` must not lose a bit): no
/// switchover goes beyond it.
pub const MAX_TERM: u64 = u64::MAX >> 1;

/// The leadership word of HELLO/WELCOME `offset`: `term << 1 | leads`.
pub fn leadership_word(term: u64, leads: bool) -> u64 {
    (term << 1) | u64::from(leads)
}

/// The agreement of a session start (docs/mirror-protocol.md, "Leadership"): from this
/// site's `(term, leads)` and the peer's leadership word, the `(term, leads)` this site takes,
/// or the reason to refuse the session.
pub fn agree(term: u64, leads: bool, peer_word: u64) -> Result<(u64, bool), String> {
    let (pt, pl) = (peer_word >> 1, peer_word & 1 == 1);
    if pt > term {
        Ok((pt, !pl))
    } else if pt < term {
        Ok((term, leads))
    } else if pl == leads {
        Err(format!(
            "the sites disagree on the leader at term {term} ({}): refusing; check both sites' `leader` settings and state files",
            if leads { "both lead" } else { "neither leads" }
        ))
    } else {
        Ok((term, leads))
    }
}

impl Engine {
    /// This site's leadership word for HELLO/WELCOME.
    pub fn leadership(&self) -> u64 {
        leadership_word(self.term, self.role == Role::Leader)
    }

    /// This site orders the volume's updates now.
    pub fn leads(&self) -> bool {
        self.role == Role::Leader
    }

    /// The leadership term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Take `role` at `term` (persisted; published; the failover slot's count moves).
    /// Returns the persister generation that holds it (0: nothing to wait for).
    pub(super) fn set_role(&mut self, role: Role, term: u64, reason: &str) -> u64 {
        let was = self.role;
        self.role = role;
        self.term = term;
        if role == Role::Leader {
            self.led = true;
            if self.cfg.state_file.is_some() && !self.al.enabled {
                // The new leader keeps the activity log from its first update on.
                self.al.enabled = true;
                self.al.changed = true;
            }
        }
        if was != role
            && let Some(slot) = &self.cfg.failover
        {
            use std::sync::atomic::Ordering::SeqCst;
            if role == Role::Leader {
                slot.leads.fetch_add(1, SeqCst);
            } else {
                slot.leads.fetch_sub(1, SeqCst);
            }
        }
        self.stats
            .set_leadership(role == Role::Leader, term, reason, was != role);
        tracing::info!(volume = %self.cfg.name, term, role = ?role, reason, "mirror: leadership");
        self.persist(false)
    }

    /// At the start, once the state is restored: publish the leadership and count it.
    pub(super) fn publish_restored_role(&mut self, reason: &str) {
        self.stats
            .set_leadership(self.role == Role::Leader, self.term, reason, false);
        if let Some(slot) = &self.cfg.failover {
            use std::sync::atomic::Ordering::SeqCst;
            if self.role == Role::Leader {
                slot.leads.fetch_add(1, SeqCst);
            }
            slot.restored.fetch_add(1, SeqCst);
        }
    }

    /// A session is starting with a peer whose leadership word is `peer_word`: agree on the
    /// leader (before the session is decided). A follower that becomes the leader settles
    /// its forwards as at RESENT and takes the others as its own, once its term is on disk.
    pub(super) fn agree_leader(&mut self, peer_word: u64) -> Result<(), String> {
        let (term, leads) = agree(self.term, self.role == Role::Leader, peer_word)?;
        let role = if leads { Role::Leader } else { Role::Follower };
        if term == self.term && role == self.role {
            return Ok(());
        }
        if role == self.role {
            self.term = term;
            self.stats
                .set_leadership(leads, term, "adopted at a session start", false);
            self.persist(false);
            return Ok(());
        }
        if role == Role::Follower {
            // Only a site that restarted can have led a term its peer has passed (the
            // leader hands over itself): nothing of its own is outstanding.
            if !self.leader.quiet() || !self.sw.held.is_empty() {
                return Err(format!(
                    "this site led term {} with updates outstanding, the peer has term {term}: refusing",
                    self.term
                ));
            }
            self.sw.phase = Phase::Idle;
            self.set_role(role, term, "adopted at a session start (follower)");
            return Ok(());
        }
        // Becoming the leader: what the old leader ordered is settled as at RESENT.
        let peer_inc = self.peer_incarnation;
        for k in self.follower.take_all() {
            let op = &mut self.ops[k];
            if op.stage.ordered() {
                let ok = op.fwd_inc == peer_inc;
                op.stage.confirm();
                if !ok && let Some((from, tag)) = op.initiator.take() {
                    self.done.push((from, tag, Err(Errno::IO)));
                }
                self.settle(k);
            } else if op.stage.forwarded_in().is_some() && op.upd == Upd::Caw {
                // The old leader may have decided it: outcome unknown.
                op.stage.confirm();
                if let Some((from, tag)) = op.initiator.take() {
                    self.done.push((from, tag, Err(Errno::IO)));
                }
                self.settle(k);
            } else {
                op.stage.adopt();
                op.seq = 0;
                self.sw.held.push_back(k);
            }
        }
        let generation = self.set_role(role, term, "adopted at a session start (leader)");
        self.sw.phase = Phase::Taking {
            term,
            generation,
            ack: false,
        };
        self.stats.set_switch_phase(Some("taking"));
        Ok(())
    }

    /// Every tick: take an operator's request, move the switchover on, and resume what
    /// waited once the phase is idle.
    pub(super) fn switch_tick(&mut self, io: &mut IoCx, now: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        match self.stats.switch_req.swap(0, Relaxed) {
            super::super::stats::SWITCH_GIVE => self.switch_begin(now, "requested here"),
            super::super::stats::SWITCH_TAKE => self.switch_ask(),
            super::super::stats::SWITCH_CANCEL => {
                if matches!(self.sw.phase, Phase::Draining { .. }) {
                    self.switch_abort(
                        "the asker's wait ran out during the drain; rolled back, the leader is unchanged",
                    );
                }
            }
            _ => {}
        }
        match self.sw.phase {
            Phase::Draining { term, until } => {
                if self.drained() {
                    self.hand_over(io, term);
                    if let Phase::Handing { term, generation } = self.sw.phase
                        && self.durable_at(generation)
                    {
                        // (No state file: at once.)
                        self.send_switch(io, term);
                    }
                } else if now >= until || !self.sess.up || self.mode != Mode::Mirroring {
                    self.switch_abort(if now >= until {
                        "the leader could not drain within 5 s (updates kept being outstanding); rolled back, the leader is unchanged"
                    } else {
                        "the session ended during the drain; rolled back, the leader is unchanged"
                    });
                }
            }
            Phase::Taking {
                term,
                generation,
                ack,
            } => {
                if self.durable_at(generation) {
                    self.sw.phase = Phase::Idle;
                    self.stats.set_switch_phase(None);
                    if ack && self.sess.up {
                        self.send(
                            Header {
                                offset: term,
                                ..Header::new(Type::SwitchAck)
                            },
                            None,
                        );
                    }
                }
            }
            Phase::Handing { term, generation } => {
                if self.durable_at(generation) && self.sess.up {
                    self.send_switch(io, term);
                }
            }
            Phase::Idle | Phase::Handed { .. } => {}
        }
        if !self.sw.holds() && !self.sw.held.is_empty() {
            for k in std::mem::take(&mut self.sw.held) {
                self.resume_held(io, k);
            }
        }
    }

    /// Persister generation `generation` is on disk (or nothing is persisted).
    fn durable_at(&self, generation: u64) -> bool {
        self.durable.is_durable(generation)
    }

    /// The role this site would announce at a session start (its leadership word) is on
    /// disk. False from a hand-over until its "follower of T + 1" is durable, also once the
    /// session that carried it ended (the hand-over's phase is then over): a session started
    /// meanwhile would have this site apply the new leader's updates as its follower while
    /// its file still says "leader of T", and a power loss then restarted it as that leader
    /// with nothing covering those updates (found by a review: a link cut during `Handing`
    /// and back before the state write ended). The link refuses to start a session while
    /// false (link.rs: the HELLO it would send or answer); the peer dials again.
    pub fn leadership_durable(&mut self) -> bool {
        match self.sw.role_unsaved {
            Some(g) if !self.durable_at(g) => false,
            _ => {
                self.sw.role_unsaved = None;
                true
            }
        }
    }

    /// The leader starts a switchover to the peer (an operator here, or the peer's
    /// SWITCH_ASK); refused (recorded) unless the pair mirrors in sync.
    pub(super) fn switch_begin(&mut self, now: Instant, who: &str) {
        let why = if self.role != Role::Leader {
            Some("this site does not lead the volume")
        } else if self.sw.phase != Phase::Idle {
            Some("a switchover is already under way")
        } else if self.mode != Mode::Mirroring || !self.sess.up {
            Some(
                "the pair is not mirroring in sync (no session, or a site serves alone, is fenced or resyncing)",
            )
        } else if self.resync.is_some() || self.leader.is_diverged() {
            Some("the pair is not in sync (a resync runs, or the volume diverged)")
        } else if self.failed.is_some() || self.draining {
            Some("this site is stopping or its replica failed")
        } else if self.term >= MAX_TERM {
            Some("the term is the largest a leadership word carries")
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(volume = %self.cfg.name, who, why, "mirror: switchover refused");
            self.stats.switch_failed(why);
            return;
        }
        tracing::info!(volume = %self.cfg.name, term = self.term + 1, who,
            "mirror: switchover: draining");
        self.sw.phase = Phase::Draining {
            term: self.term + 1,
            until: now + DRAIN_LIMIT,
        };
        self.stats.set_switch_phase(Some("draining"));
    }

    /// A follower asks the leader for the leadership (SWITCH_ASK).
    fn switch_ask(&mut self) {
        if self.role == Role::Leader {
            return;
        }
        if self.mode != Mode::Mirroring || !self.sess.up || self.sw.phase != Phase::Idle {
            self.stats.switch_failed(
                "the pair is not mirroring in sync (no session, or a site serves alone, is fenced or resyncing)",
            );
            return;
        }
        self.send(
            Header {
                offset: self.term,
                ..Header::new(Type::SwitchAsk)
            },
            None,
        );
        self.stats.set_switch_phase(Some("asked"));
    }

    /// The drain is complete: nothing this site sequenced is outstanding, and every op left
    /// is a held one or a flush.
    fn drained(&self) -> bool {
        self.mode == Mode::Mirroring
            && self.sess.up
            && self.leader.quiet()
            && self.metas.is_empty()
            && !self.al.blocked
            && self.resync.is_none()
            && self.aq.applied.wm == self.sess.last_seq()
            && self
                .ops
                .iter()
                .all(|(k, op)| op.upd == Upd::Flush || self.sw.held.contains(&k))
    }

    /// Drained: this site follows term `term` from now, and sends SWITCH once that is on disk
    /// (`Phase::Handing`). Sent before, a power loss (or a kill) before the state was written
    /// restarted this site as the leader of the old term while it had applied the new
    /// leader's updates as its follower, which no activity log of its covers: with its log
    /// empty (a clean start just before) it announced state 0 and mirrored without the
    /// acknowledged writes its device dropped (test
    /// `actlog::an_old_leader_losing_power_after_its_switch_gets_back_what_b_ordered`). Restored
    /// as the follower of `term` and not clean, it is reconciled from the new leader, which
    /// copies the regions it acknowledged since its last flush. Nothing is sequenced or
    /// forwarded meanwhile (its updates wait, as in the drain), so a crash before the state is
    /// on disk restarts it as the leader of the old term with nothing applied since.
    fn hand_over(&mut self, _io: &mut IoCx, term: u64) {
        let generation = self.set_role(Role::Follower, term, "switchover: handed to the peer");
        self.sw.phase = Phase::Handing { term, generation };
        self.sw.role_unsaved = Some(generation);
        self.stats.set_switch_phase(Some("handing"));
    }

    /// "Follower of `term`" is on disk: SWITCH, then what waited is the new leader's to order.
    fn send_switch(&mut self, io: &mut IoCx, term: u64) {
        let seq = self.sess.last_seq();
        self.send(
            Header {
                seq,
                offset: term,
                ..Header::new(Type::Switch)
            },
            None,
        );
        self.sw.phase = Phase::Handed { term };
        self.stats.set_switch_phase(Some("handed"));
        for k in std::mem::take(&mut self.sw.held) {
            if self.ops[k].origin == Origin::PeerFwd {
                // The peer still holds it as its forward and sequences it itself.
                let op = self.ops.remove(k);
                self.recycle(op.data);
            } else {
                self.ops[k].uid = self.follower.new_uid();
                self.resume_held(io, k);
            }
        }
    }

    /// The drain failed: nothing was sent, this site keeps leading; what waited goes on at
    /// the next tick.
    pub(super) fn switch_abort(&mut self, why: &str) {
        tracing::warn!(volume = %self.cfg.name, why, "mirror: switchover rolled back");
        self.sw.phase = Phase::Idle;
        self.stats.switch_failed(why);
    }

    /// SWITCH from the leader (checked): this site leads the new term once it is on disk.
    pub(super) fn on_switch(&mut self, h: &Header) -> Result<(), &'static str> {
        if self.role != Role::Follower
            || self.mode != Mode::Mirroring
            || self.sw.phase != Phase::Idle && !matches!(self.sw.phase, Phase::Handed { .. })
        {
            return Err("SWITCH not expected here");
        }
        if self.follower.awaiting_resent() {
            // A leader drains (RESENT included) before it hands over: the forwards of earlier
            // sessions are settled by the RESENT rules first, never by the take-over.
            return Err("SWITCH before RESENT");
        }
        if h.offset > MAX_TERM {
            return Err("SWITCH for a term a leadership word cannot carry");
        }
        if h.offset != self.term + 1 {
            return Err("SWITCH for another term");
        }
        if h.seq != self.sess.last_seq() {
            return Err("SWITCH before every sequenced update was received");
        }
        // It acknowledges everything up to its seq: forwards ordered before it complete.
        self.sess.on_ack(h.seq)?;
        self.on_peer_wm();
        // Metadata commands sent to the old leader after it stopped deciding: not decided,
        // answered as a path in transition, which hosts send again (an internal error they
        // do not: Linux and ESXi fail a SCSI command on HARDWARE ERROR).
        for (from, tag) in self.metas.fail_all() {
            self.done.push((from, tag, Err(Errno::TRANSITION)));
        }
        for k in self.follower.take_all() {
            let op = &mut self.ops[k];
            if op.stage.ordered() {
                // (Not reached: SWITCH acknowledged every ORDER before it.)
                op.stage.confirm();
                self.settle(k);
                continue;
            }
            op.stage.adopt();
            op.seq = 0;
            self.sw.held.push_back(k);
        }
        let generation = self.set_role(
            Role::Leader,
            h.offset,
            "switchover: taken over from the peer",
        );
        self.sw.phase = Phase::Taking {
            term: h.offset,
            generation,
            ack: true,
        };
        self.stats.set_switch_phase(Some("taking"));
        Ok(())
    }

    /// SWITCH_ACK: the switchover this site handed over is complete.
    pub(super) fn on_switch_ack(&mut self, h: &Header) -> Result<(), &'static str> {
        match self.sw.phase {
            Phase::Handed { term } if term == h.offset => {
                self.sw.phase = Phase::Idle;
                self.stats.set_switch_phase(None);
                tracing::info!(volume = %self.cfg.name, term, "mirror: switchover complete");
                Ok(())
            }
            _ => Err("SWITCH_ACK for no switchover"),
        }
    }

    /// SWITCH_ASK from the follower.
    pub(super) fn on_switch_ask(&mut self, h: &Header) {
        if self.role == Role::Leader && h.offset == self.term {
            self.switch_begin(Instant::now(), "asked by the peer");
        } else {
            tracing::info!(volume = %self.cfg.name, term = self.term, asked = h.offset,
                "mirror: a switchover asked by the peer is moot (this site follows, or another term)");
        }
    }

    /// An update that waited for the switchover takes its normal path now.
    fn resume_held(&mut self, io: &mut IoCx, k: usize) {
        let Some(op) = self.ops.get(k) else {
            return;
        };
        if op.origin == Origin::PeerFwd {
            // The old leader's forward (sent after its SWITCH): sequenced in its session only.
            if self.role == Role::Leader
                && self.mode == Mode::Mirroring
                && self.sess.up
                && op.session == self.sess.number
            {
                self.leader_take(io, k);
            } else {
                let op = self.ops.remove(k);
                self.recycle(op.data);
            }
            return;
        }
        if op.initiator.is_none() {
            // Answered meanwhile (expired): nothing more.
            let op = self.ops.remove(k);
            self.recycle(op.data);
            return;
        }
        if self.role == Role::Follower && op.uid == 0 {
            self.ops[k].uid = self.follower.new_uid();
        }
        if self.no_io() || self.leader.is_diverged() {
            let (from, tag) = self.ops[k].initiator.take().expect("checked");
            let op = self.ops.remove(k);
            self.recycle(op.data);
            self.done.push((from, tag, Err(Errno::UNAVAILABLE)));
        } else if self.mode == Mode::Survivor {
            self.survivor_apply(io, k);
        } else {
            self.start_mirrored(io, k);
        }
    }

    /// An op in `held` expired: answered (EIO) and freed; true when it was held.
    pub(super) fn expire_held(&mut self, k: usize) -> bool {
        let Some(pos) = self.sw.held.iter().position(|&x| x == k) else {
            return false;
        };
        self.sw.held.remove(pos);
        let op = self.ops.remove(k);
        if let Some((from, tag)) = op.initiator {
            self.done.push((from, tag, Err(Errno::IO)));
        }
        self.recycle(op.data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_higher_term_wins_and_equal_terms_need_exactly_one_leader() {
        // Configured: a leads, b follows, term 0.
        assert_eq!(agree(0, true, leadership_word(0, false)), Ok((0, true)));
        assert_eq!(agree(0, false, leadership_word(0, true)), Ok((0, false)));
        // a handed over (term 1, b leads) and b never heard: b adopts, a keeps.
        assert_eq!(agree(0, false, leadership_word(1, false)), Ok((1, true)));
        assert_eq!(agree(1, false, leadership_word(0, false)), Ok((1, false)));
        // A restarted old leader adopts the follower role.
        assert_eq!(agree(0, true, leadership_word(1, true)), Ok((1, false)));
        // Two leaders or none at one term: refused.
        assert!(agree(2, true, leadership_word(2, true)).is_err());
        assert!(agree(2, false, leadership_word(2, false)).is_err());
        assert_eq!(leadership_word(3, true), 7);
    }
}
