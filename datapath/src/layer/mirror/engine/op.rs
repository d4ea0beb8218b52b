//! One update's record ([`Op`]) and its lifecycle towards the peer ([`Stage`]).
//!
//! Model: an op lives in the engine's slab from the moment an update is taken (from this
//! site's initiator, from the peer, or by the resync) until nothing more is needed of it. Two
//! things progress independently and concurrently:
//!
//! - the **local apply** (`applying`, `applied`, `apply_err`): how many applies of the op are
//!   queued or running on the local replica, whether one succeeded, the last error. They are
//!   independent facts (an update re-applied at a new `seq` after a link drop may have failed
//!   once and succeeded once), so they stay a counter and an outcome;
//! - the **peer stage** ([`Stage`]): what the peer has of the update and which of the engine's
//!   lists holds it. This used to be six booleans and a session number (`awaiting_order`,
//!   `order_due`, `listed`, `remote_done`, `caw`, `fwd_session`); every combination that
//!   cannot happen is now unrepresentable.
//!
//! ```text
//!  leader, this site's update        leader, the follower's forward (FWD_*)
//!    New ──sequence (WRITE)──┐         OrderDue ──sequence (ORDER, data is there)──┐
//!     ▲                      ▼             │ session ended before a CAW was decided │
//!     └─────────────────── Sent ◀──────────┴──▶ New ──sequence (WRITE)──▶ ... ◀─────┘
//!                            │ follower's watermark passes its seq
//!                            ▼
//!                        Confirmed
//!
//!  follower, this site's update (in `forwards`)
//!    New ──▶ Held ──forward──▶ Forwarded{s} ──ORDER──────────────▶ Ordered{s}
//!                 ▲                │ next link up           ▲          │ leader's watermark
//!                 │                ▼                        │ re-sent  ▼ passes its seq
//!                 └──forward── Unanswered{s} ──────────────┘ WRITE   Confirmed
//!                                             (claim)
//!    Forwarded{s} ──MISCOMPARE──▶ Confirmed          Ordered{s} ──claim──▶ Ordered{s'}
//!
//!  flush of this site's initiator:   New ──▶ Flushing ──FLUSH_DONE──▶ Confirmed
//!  any listed stage ──timeout while the link is down──▶ Abandoned
//!  any stage ──survivor / fence / end of a forward / decided CAW──▶ Confirmed
//!  the leader's updates at the follower, the peer's flushes, resync copies: Confirmed from the
//!  start (nothing is asked of the peer).
//! ```
//!
//! A compare-and-write follows the same paths: at the leader it is `New`/`OrderDue` while it
//! is read and compared, then `Sent` (match) or `Confirmed` with `apply_err` MISCOMPARE; at
//! the follower it is `Forwarded` until the ORDER (match: `Ordered`, its write data applied at
//! that seq) or MISCOMPARE (`Confirmed`).
//!
//! Invariants:
//! - An op is in the follower's `forwards` exactly when its stage is `Held`, `Forwarded`,
//!   `Unanswered` or `Ordered`, and in `flushes` exactly when `Flushing` ([`Stage::listed`]).
//! - `Confirmed` is final: nothing moves an op out of it.
//! - Transitions happen only through the methods of [`Stage`]; one asked in a stage it cannot
//!   leave that way is a bug: it fails a debug assertion and leaves the stage unchanged.
//! - An op's data may outlive the op and its stage: every message carrying it (queued, or in a
//!   send in flight, also across a link failure and the re-sends of a new session) holds its
//!   own reference (txq.rs), so an op freed or changed in any stage never frees, reuses or
//!   changes bytes a send still reads.

use super::super::txq::Data;
use crate::uring::{Errno, IoTag};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Upd {
    Write,
    /// Compare-and-write not yet decided (`data` = compare data, then write data). Once
    /// decided it becomes a `Write` of the write data (match) or ends (miscompare).
    Caw,
    Zeroes,
    Unmap,
    Flush,
    /// Read a dirty region and send it to the returning peer (resync source).
    ResyncRead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// From this site's initiator.
    Local,
    /// Leader's update applied at the follower.
    PeerSeq,
    /// Follower's update, sequenced at the leader (`id` is the follower's).
    PeerFwd,
    /// Flush asked by the peer (`id` is the peer's).
    PeerFlush(u32),
    /// A resync copy: read here (source) or applied here (target).
    Resync,
    /// A flush nobody waits for: of this replica (the activity log needs an extent flushed
    /// before it may drop it), or the leader's FLUSH to the follower (peer_cache.rs).
    Own,
}

/// Where an update is in its exchange with the peer (see the diagram in the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Taken here, nothing asked of the peer yet (the leader's update not sent in any session,
    /// an update deferred by a resync's last pass, a forward's CAW decided after its session).
    New,
    /// Leader: a forward of the current session whose follower holds the data: its ORDER is
    /// due when it is sequenced.
    OrderDue,
    /// Leader: sent to the follower at least once; kept (backlog) until its watermark passes.
    Sent,
    /// Follower: in `forwards`, not forwarded in this session.
    Held,
    /// Follower: forwarded in session `s` (the current one), waiting for its ORDER.
    Forwarded(u32),
    /// Follower: forwarded in session `s`, which ended before its ORDER came.
    Unanswered(u32),
    /// Follower: ordered in session `s` (ORDER, or a re-sent WRITE claimed as its order);
    /// waiting for the leader's watermark.
    Ordered(u32),
    /// A flush of this site's initiator, in `flushes`: FLUSH_DONE due.
    Flushing,
    /// Taken off its list by the timeout while the link was down: the peer's outcome is
    /// unknown and nothing more is asked of it.
    Abandoned,
    /// The peer has it (watermark passed, FLUSH_DONE), or nothing is asked of it.
    Confirmed,
}

/// What happens to an update, as far as its [`Stage`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// Follower: put in `forwards`.
    Hold,
    /// This site's flush: put in `flushes` (and sent when the link is up).
    Flush,
    /// Follower: sent to the leader in this session.
    Forward(u32),
    /// Follower: a new session started.
    SessionEnded,
    /// Follower: ORDER, or a re-sent WRITE claimed as its order, in this session.
    Order(u32),
    /// Leader: given a seq and sent.
    Sequence,
    /// Leader: a forward's session ended before it was sequenced.
    OrderLost,
    /// Taken off `forwards` or `flushes` by the timeout while the link is down.
    Abandon,
    /// Follower becoming the leader (switchover.rs): a forward never sequenced becomes this
    /// site's own update.
    Adopt,
    /// The peer has it, or nothing more is asked of it.
    Confirm,
}

/// A transition the lifecycle does not have (see [`Stage::next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) from: Stage,
    pub(super) event: Event,
}

impl Stage {
    /// The one place transitions are decided: the stage after `event`, or `Refused` for one
    /// the diagram does not have.
    pub(super) fn next(self, event: Event) -> Result<Stage, Refused> {
        use Event as E;
        use Stage as S;
        Ok(match (self, event) {
            (_, E::Confirm) => S::Confirmed,
            (S::New, E::Hold) => S::Held,
            (S::New, E::Flush) => S::Flushing,
            (S::Held | S::Unanswered(_), E::Forward(s)) => S::Forwarded(s),
            (S::Forwarded(s), E::SessionEnded) => S::Unanswered(s),
            (other, E::SessionEnded) => other,
            (S::Forwarded(s), E::Order(now)) if s == now => S::Ordered(now),
            (S::Unanswered(s) | S::Ordered(s), E::Order(now)) if s != now => S::Ordered(now),
            (S::New | S::OrderDue | S::Sent, E::Sequence) => S::Sent,
            (S::OrderDue, E::OrderLost) => S::New,
            (other, E::OrderLost) => other,
            (s, E::Abandon) if s.listed() => S::Abandoned,
            (S::Held | S::Forwarded(_) | S::Unanswered(_), E::Adopt) => S::New,
            (from, event) => return Err(Refused { from, event }),
        })
    }

    /// Take `event`; a refused one is a bug: a debug assertion, and the stage stays.
    fn step(&mut self, event: Event) {
        match self.next(event) {
            Ok(s) => *self = s,
            Err(r) => debug_assert!(false, "mirror op: {r:?}"),
        }
    }

    /// In the follower's `forwards` or in `flushes`.
    pub(super) fn listed(self) -> bool {
        matches!(
            self,
            Stage::Held
                | Stage::Forwarded(_)
                | Stage::Unanswered(_)
                | Stage::Ordered(_)
                | Stage::Flushing
        )
    }

    /// The peer has it, or nothing is asked of it.
    pub(super) fn confirmed(self) -> bool {
        self == Stage::Confirmed
    }

    /// Follower: forwarded in the current session and waiting for its ORDER.
    pub(super) fn awaiting_order(self) -> bool {
        matches!(self, Stage::Forwarded(_))
    }

    /// Follower: ordered (in any session).
    pub(super) fn ordered(self) -> bool {
        matches!(self, Stage::Ordered(_))
    }

    /// Follower: the session the forward was last sent or ordered in (none: never sent).
    pub(super) fn forwarded_in(self) -> Option<u32> {
        match self {
            Stage::Forwarded(s) | Stage::Unanswered(s) | Stage::Ordered(s) => Some(s),
            _ => None,
        }
    }

    /// Follower: `New` → `Held` (put in `forwards`).
    pub(super) fn hold(&mut self) {
        self.step(Event::Hold);
    }

    /// A flush of this site's initiator: `New` → `Flushing` (put in `flushes`).
    pub(super) fn flush(&mut self) {
        self.step(Event::Flush);
    }

    /// Follower: sent to the leader in `session` (`Held` or `Unanswered` → `Forwarded`).
    pub(super) fn forward(&mut self, session: u32) {
        self.step(Event::Forward(session));
    }

    /// Follower: a new session started; a forward still waiting for its ORDER will not get
    /// it (`Forwarded` → `Unanswered`); other stages stay.
    pub(super) fn session_ended(&mut self) {
        self.step(Event::SessionEnded);
    }

    /// Follower: ordered in `session`: an ORDER for a `Forwarded` one, or a re-sent WRITE
    /// claimed for one forwarded (`Unanswered`) or ordered (`Ordered`) in an earlier session.
    pub(super) fn order(&mut self, session: u32) {
        self.step(Event::Order(session));
    }

    /// Leader: given a seq and sent (`New`, `OrderDue` or `Sent` → `Sent`). True when what is
    /// due is an ORDER (the follower holds the data), false for the whole update.
    pub(super) fn sequence(&mut self) -> bool {
        let order = *self == Stage::OrderDue;
        self.step(Event::Sequence);
        order
    }

    /// Leader: a forward's session ended before it was sequenced: its follower's id is gone,
    /// it is sent as a whole update (`OrderDue` → `New`); other stages stay.
    pub(super) fn order_lost(&mut self) {
        self.step(Event::OrderLost);
    }

    /// Taken off `forwards` or `flushes` by the timeout while the link is down.
    pub(super) fn abandon(&mut self) {
        self.step(Event::Abandon);
    }

    /// This site now leads: a forward never sequenced is its own new update (`Held`,
    /// `Forwarded`, `Unanswered` → `New`).
    pub(super) fn adopt(&mut self) {
        self.step(Event::Adopt);
    }

    /// The peer has it, or nothing more is asked of it (from any stage; final).
    pub(super) fn confirm(&mut self) {
        self.step(Event::Confirm);
    }
}

pub(super) struct Op {
    pub(super) origin: Origin,
    pub(super) upd: Upd,
    /// Began as a compare-and-write (`upd` is `Write` once it matched): an initiator whose
    /// update is given up is told EIO, not to retry it elsewhere (`Engine::give_up_held`).
    pub(super) caw: bool,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) fua: bool,
    /// The update's data (its own buffer; messages carrying it share it, txq.rs).
    pub(super) data: Data,
    /// Sequence number in `session` (0: none yet).
    pub(super) seq: u64,
    pub(super) session: u32,
    /// What the peer has of it (see [`Stage`]).
    pub(super) stage: Stage,
    /// Applied locally at least once.
    pub(super) applied: bool,
    pub(super) apply_err: Option<Errno>,
    /// Applies queued or in flight (and a MISCOMPARE's wait for the watermark).
    pub(super) applying: u32,
    /// Who to answer (reactor, tag), until answered.
    pub(super) initiator: Option<(u32, IoTag)>,
    pub(super) deadline: Instant,
    /// Leader, forwarded update: the follower's request id.
    pub(super) peer_id: u32,
    /// Follower: the forward's id, unique while the op lives (across sessions).
    pub(super) uid: u32,
    /// Leader, forwarded update: the incarnation of the follower process that sent it.
    /// Follower, forward: the incarnation of the leader process that ordered it.
    pub(super) fwd_inc: u64,
}

impl Op {
    /// An op of `(offset, len)` in stage `stage` with no seq, no apply and nobody to answer.
    pub(super) fn new(
        origin: Origin,
        upd: Upd,
        (offset, len): (u64, u64),
        fua: bool,
        data: impl Into<Data>,
        stage: Stage,
        deadline: Instant,
    ) -> Self {
        Self {
            origin,
            upd,
            caw: upd == Upd::Caw,
            offset,
            len,
            fua,
            data: data.into(),
            seq: 0,
            session: 0,
            stage,
            applied: false,
            apply_err: None,
            applying: 0,
            initiator: None,
            deadline,
            peer_id: 0,
            uid: 0,
            fwd_inc: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Event::{self, *};
    use super::Stage::{self, *};

    fn stages() -> Vec<Stage> {
        vec![
            New,
            OrderDue,
            Sent,
            Held,
            Forwarded(3),
            Unanswered(2),
            Ordered(2),
            Flushing,
            Abandoned,
            Confirmed,
        ]
    }

    #[test]
    fn the_leader_path() {
        let mut s = New;
        assert!(!s.sequence());
        assert_eq!(s, Sent);
        // Re-sent at the next session.
        assert!(!s.sequence());
        assert_eq!(s, Sent);
        s.confirm();
        assert!(s.confirmed() && !s.listed());

        let mut f = OrderDue;
        assert!(
            f.sequence(),
            "a forward of this session is ordered, not re-sent"
        );
        assert_eq!(f, Sent);
        let mut f = OrderDue;
        f.order_lost();
        assert_eq!(f, New);
        assert!(!f.sequence(), "its follower's id is gone: sent whole");
    }

    #[test]
    fn the_follower_path() {
        let mut s = New;
        s.hold();
        assert!(s.listed() && s.forwarded_in().is_none());
        s.forward(1);
        assert!(s.awaiting_order());
        assert_eq!(s.forwarded_in(), Some(1));
        s.order(1);
        assert_eq!(s, Ordered(1));
        assert!(!s.awaiting_order() && s.listed() && s.ordered());
        // The link dropped before the watermark: claimed by the leader's re-send.
        s.session_ended();
        assert_eq!(s, Ordered(1));
        s.order(2);
        assert_eq!(s, Ordered(2));
        s.confirm();
        assert!(!s.listed());

        let mut u = Forwarded(1);
        u.session_ended();
        assert_eq!(u, Unanswered(1));
        assert!(!u.awaiting_order());
        u.forward(2);
        assert_eq!(u, Forwarded(2));
        let mut c = Unanswered(1);
        c.order(2);
        assert_eq!(c, Ordered(2));
    }

    #[test]
    fn flushes_and_the_timeout() {
        let mut s = New;
        s.flush();
        assert!(s.listed());
        s.abandon();
        assert_eq!(s, Abandoned);
        assert!(!s.listed() && !s.confirmed());
        s.confirm();
        assert!(s.confirmed());
    }

    /// Every (stage, event) pair: exactly the drawn transitions are taken (session 3 is the
    /// current one).
    #[test]
    fn only_the_drawn_transitions_are_taken() {
        let cases: [(Event, &[(Stage, Stage)]); 6] = [
            (Hold, &[(New, Held)]),
            (Flush, &[(New, Flushing)]),
            (
                Forward(3),
                &[(Held, Forwarded(3)), (Unanswered(2), Forwarded(3))],
            ),
            (
                Order(3),
                &[
                    (Forwarded(3), Ordered(3)),
                    (Unanswered(2), Ordered(3)),
                    (Ordered(2), Ordered(3)),
                ],
            ),
            (Sequence, &[(New, Sent), (OrderDue, Sent), (Sent, Sent)]),
            (
                Abandon,
                &[
                    (Held, Abandoned),
                    (Forwarded(3), Abandoned),
                    (Unanswered(2), Abandoned),
                    (Ordered(2), Abandoned),
                    (Flushing, Abandoned),
                ],
            ),
        ];
        for (event, taken) in cases {
            for s in stages() {
                let want = taken.iter().find(|(from, _)| *from == s).map(|&(_, to)| to);
                match (s.next(event), want) {
                    (Ok(got), Some(to)) => assert_eq!(got, to, "{event:?} from {s:?}"),
                    (Err(r), None) => assert_eq!((r.from, r.event), (s, event)),
                    (got, want) => panic!("{event:?} from {s:?}: {got:?}, want {want:?}"),
                }
            }
        }
        // An ORDER is for this session's forward only; a claim for an earlier session's.
        assert!(Forwarded(2).next(Order(3)).is_err());
        assert!(Ordered(3).next(Order(3)).is_err());
        // Never refused, and they move only what the diagram moves.
        for s in stages() {
            assert_eq!(s.next(Confirm), Ok(Confirmed));
            let ended = if let Forwarded(n) = s {
                Unanswered(n)
            } else {
                s
            };
            assert_eq!(s.next(SessionEnded), Ok(ended));
            let lost = if s == OrderDue { New } else { s };
            assert_eq!(s.next(OrderLost), Ok(lost));
        }
        // Confirmed is final.
        for e in [Hold, Flush, Forward(3), Order(3), Sequence, Abandon] {
            assert!(Confirmed.next(e).is_err(), "{e:?} left Confirmed");
        }
    }
}
