//! Replicated volume metadata (NVMe reservations, SCSI persistent reservations): opaque
//! commands and states carried between the sites, decided by the leader (or a survivor alone).
//!
//! Model: the follower sends META and waits for the leader's META_STATE; the leader executes,
//! sends META_STATE to the follower and completes once its META_ACK comes. [`MetaRepl`] owns
//! the commands waiting for the peer (a slab), this site's commands held before they are
//! decided or sent ([`Crossing`]) and the META_STATE tokens; it returns the
//! answers to give ((reactor, tag, result)); the engine executes and installs through the
//! [`MetaHandler`] and sends through the session.
//!
//! Settling: a handler may start work at this site with a decision or an install that the
//! peer must not be answered before (the iSCSI front end aborting the tasks of a reset logical
//! unit on every session of this site: [`MetaHandler::settling`]). The answer (META_STATE,
//! META_ACK, or this site's initiator's completion) is then held in order, with everything
//! sent after it, until that work is done ([`MetaRepl::hold`], released by the engine's tick).
//!
//! Invariants: an entry stays until its answer even when its initiator was failed on the
//! timeout, so a late answer never completes a newer request; a held command is failed at its
//! deadline and dropped, never decided; waiting and held ones together are at most
//! [`MAX_WAITS`]; an unchanged answer decided on
//! state the follower may not have yet waits for every earlier change's META_ACK; tokens
//! increase by one per META_STATE sent, from 1, and META_STATEs and META_ACKs leave in the
//! order they were decided (a held one holds every later one); a META_ACK for a token beyond
//! the last one sent is refused (it completes nothing).

use crate::uring::{Errno, IoTag};
use slab::Slab;
use std::time::Instant;

/// Decides and installs a volume's replicated metadata (NVMe reservations). The engine only
/// carries its opaque commands and states between the sites (docs/mirror-protocol.md).
pub trait MetaHandler: Send + Sync + std::fmt::Debug {
    /// Decide `cmd` at this site (the leader, or a survivor): its status (0: success) and,
    /// when the state changed, the new state to copy to the peer.
    fn execute(&self, vol: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>);
    /// Install a state the peer decided.
    fn install(&self, vol: usize, state: &[u8]) -> Install;
    /// This site's whole state of the volume, one META_STATE payload each.
    fn full_state(&self, vol: usize) -> Vec<Vec<u8>>;
    /// A session starts with a peer process other than the previous session's (it restarted):
    /// state that belonged to the peer's earlier process (its sessions) is dropped here, before
    /// the session's full state is sent or received. Nothing by default.
    fn peer_restarted(&self, _vol: usize) {}
    /// The work the last [`Self::execute`] or [`Self::install`] of `vol` started at this site
    /// and that its answer to the peer (or to this site's initiator) must wait for; taken once.
    /// Nothing by default.
    fn settling(&self, _vol: usize) -> Vec<Settle> {
        Vec::new()
    }
}

/// Work at this site a metadata answer waits for: done once [`Settling::settled`] says so
/// (polled by the engine's tick, every few milliseconds; never blocks).
pub trait Settling: Send + Sync + std::fmt::Debug {
    /// The work is done.
    fn settled(&self) -> bool;
}

/// A shared [`Settling`].
pub type Settle = std::sync::Arc<dyn Settling>;

/// A metadata message or answer held until the work before it settled.
#[derive(Debug)]
pub(super) enum Held {
    /// META_STATE: (answering id, token, status, state).
    State(u32, u64, u16, Vec<u8>),
    /// META_ACK of token `seq` with status `count`.
    Ack(u64, u32),
    /// An answer to this site's initiator.
    Answer(u32, IoTag, Result<(), Errno>),
}

/// What installing a peer's metadata state did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Installed (and persisted).
    Done,
    /// Not a valid state: the message is refused and the link dropped.
    Malformed,
    /// Valid but not installed here (not configured here, or not persisted): logged, and
    /// reported to the peer in META_ACK; the link stays up.
    Failed,
}

/// Several [`MetaHandler`]s behind one engine (NVMe reservations, SCSI persistent
/// reservations, ...): every command and every state starts with its handler's kind byte,
/// chosen by the handler's owner (docs/mirror-protocol.md, "Metadata"). Commands are built
/// with the byte by their front end ([`tagged`]); states get it here.
///
/// Invariant: kinds are unique (a second handler of a kind is refused at construction); a
/// command or state of a kind no handler has is refused (Invalid Field / malformed), never
/// given to another handler.
#[derive(Debug, Default)]
pub struct MetaRouter {
    handlers: Vec<(u8, std::sync::Arc<dyn MetaHandler>)>,
}

/// `body` with its handler's kind byte in front (a command for [`MetaRouter`]).
pub fn tagged(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + body.len());
    v.push(kind);
    v.extend_from_slice(body);
    v
}

/// Status 0x002, Invalid Field: a command of no known kind.
const META_INVALID: u16 = 2;

impl MetaRouter {
    /// No handler yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `h` for commands and states of `kind`; false (and nothing added) when the kind is
    /// taken.
    pub fn add(&mut self, kind: u8, h: std::sync::Arc<dyn MetaHandler>) -> bool {
        if self.handlers.iter().any(|(k, _)| *k == kind) {
            return false;
        }
        self.handlers.push((kind, h));
        true
    }

    fn split<'a>(&self, b: &'a [u8]) -> Option<(u8, &dyn MetaHandler, &'a [u8])> {
        let (&kind, rest) = b.split_first()?;
        let (_, h) = self.handlers.iter().find(|(k, _)| *k == kind)?;
        Some((kind, &**h, rest))
    }
}

impl MetaHandler for MetaRouter {
    fn execute(&self, vol: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>) {
        let Some((kind, h, body)) = self.split(cmd) else {
            return (META_INVALID, None);
        };
        let (status, state) = h.execute(vol, body);
        (status, state.map(|s| tagged(kind, &s)))
    }

    fn install(&self, vol: usize, state: &[u8]) -> Install {
        match self.split(state) {
            Some((_, h, body)) => h.install(vol, body),
            None => Install::Malformed,
        }
    }

    fn full_state(&self, vol: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (kind, h) in &self.handlers {
            out.extend(h.full_state(vol).iter().map(|s| tagged(*kind, s)));
        }
        out
    }

    fn peer_restarted(&self, vol: usize) {
        for (_, h) in &self.handlers {
            h.peer_restarted(vol);
        }
    }

    fn settling(&self, vol: usize) -> Vec<Settle> {
        self.handlers
            .iter()
            .flat_map(|(_, h)| h.settling(vol))
            .collect()
    }
}

/// Status 0x006, Internal Error.
pub(super) const META_INTERNAL: u16 = 6;

/// A metadata command's non-zero status travels to the initiator as `Errno(META_STATUS |
/// status)`.
pub const META_STATUS: i32 = 0x4000_0000;

/// The completion of a metadata command with `status`.
pub fn meta_result(status: u16) -> Result<(), Errno> {
    if status == 0 {
        Ok(())
    } else {
        Err(Errno(META_STATUS | i32::from(status)))
    }
}

/// Who to answer: (their reactor, tag).
pub(super) type Initiator = (u32, IoTag);

/// An answer to give an initiator: (reactor, tag, result).
pub(super) type Answer = (u32, IoTag, Result<(), Errno>);

/// A metadata command waiting for the peer.
///
/// An entry stays until its answer (or the end of the session) even when its initiator was
/// already failed on the timeout, so a late answer never finds another request in its slot.
struct MetaWait {
    /// Who to answer, until answered.
    initiator: Option<Initiator>,
    /// Leader: the META_STATE token whose META_ACK completes it (follower: 0, the answer's
    /// `id` is this entry's key).
    token: u64,
    status: u16,
    deadline: Instant,
}

/// At most this many metadata commands wait for the peer at once (each entry stays until its
/// answer or the session's end, even after its initiator was failed on the timeout), those
/// held before they are decided or sent ([`MetaRepl::cross`]) included; more are refused with
/// Internal Error.
pub(super) const MAX_WAITS: usize = 1024;

/// This site's initiator's command held before it is decided or sent: while the resync's
/// source may still decide alone, or while this site, handing the leadership over, has not
/// sent SWITCH (`Engine::submit_crossing_metas`). Failed at `deadline` (its peer timeout from
/// its arrival, kept when it is submitted later), never decided.
pub(super) struct Crossing {
    pub(super) who: Initiator,
    pub(super) cmd: Vec<u8>,
    pub(super) deadline: Instant,
}

/// The metadata commands waiting for the peer and the META_STATE tokens (see the module doc).
pub(super) struct MetaRepl {
    waits: Slab<MetaWait>,
    next_token: u64,
    /// The highest token of a META_STATE sent (0: none): a META_ACK beyond it is refused.
    sent_token: u64,
    /// Messages and answers held, in order, each behind the work it waits for.
    held: std::collections::VecDeque<(Vec<Settle>, Held)>,
    /// This site's commands held before they are decided or sent, in arrival order.
    crossing: std::collections::VecDeque<Crossing>,
}

impl MetaRepl {
    pub(super) fn new() -> Self {
        Self {
            waits: Slab::new(),
            next_token: 1,
            sent_token: 0,
            held: std::collections::VecDeque::new(),
            crossing: std::collections::VecDeque::new(),
        }
    }

    /// Hold `who`'s command `cmd` until it may be decided or sent (until `deadline` at most:
    /// [`MetaRepl::expire`]); false, nothing held, when [`MAX_WAITS`] commands wait already.
    pub(super) fn cross(&mut self, who: Initiator, cmd: &[u8], deadline: Instant) -> bool {
        if self.full() {
            return false;
        }
        self.crossing.push_back(Crossing {
            who,
            cmd: cmd.to_vec(),
            deadline,
        });
        true
    }

    /// Some command is held before it is decided or sent.
    pub(super) fn crossing(&self) -> bool {
        !self.crossing.is_empty()
    }

    /// The commands held before they are decided or sent, in arrival order (none held after).
    pub(super) fn take_crossing(&mut self) -> std::collections::VecDeque<Crossing> {
        std::mem::take(&mut self.crossing)
    }

    /// `h` waits for `settles` (and for everything held before it): `Some(h)` to send or give
    /// now, `None` held.
    pub(super) fn hold(&mut self, settles: Vec<Settle>, h: Held) -> Option<Held> {
        if self.held.is_empty() && settles.iter().all(|s| s.settled()) {
            return Some(h);
        }
        self.held.push_back((settles, h));
        None
    }

    /// The held messages and answers whose work has settled, in order (up to the first that
    /// has not).
    pub(super) fn release(&mut self) -> Vec<Held> {
        let mut out = Vec::new();
        while let Some((s, _)) = self.held.front() {
            if !s.iter().all(|s| s.settled()) {
                break;
            }
            if let Some((_, h)) = self.held.pop_front() {
                out.push(h);
            }
        }
        out
    }

    /// The session ended: held messages are dropped (the next session's full state settles
    /// them), held answers are given now.
    pub(super) fn drop_held(&mut self) -> Vec<Held> {
        self.held
            .drain(..)
            .map(|(_, h)| h)
            .filter(|h| matches!(h, Held::Answer(..)))
            .collect()
    }

    /// The token of a META_STATE about to be sent.
    pub(super) fn next_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Leader: `who`'s command decided `status` without changing the state. Answered now
    /// (the result), or, when earlier changes are not acknowledged yet, after them (None).
    pub(super) fn unchanged(
        &mut self,
        who: Initiator,
        status: u16,
        deadline: Instant,
    ) -> Option<Result<(), Errno>> {
        if !self.waits.iter().any(|(_, m)| m.token != 0) {
            return Some(meta_result(status));
        }
        self.waits.insert(MetaWait {
            initiator: Some(who),
            token: self.next_token - 1,
            status,
            deadline,
        });
        None
    }

    /// Leader: `who`'s command changed the state, sent with `token`: answered at its META_ACK.
    pub(super) fn changed(&mut self, who: Initiator, token: u64, status: u16, deadline: Instant) {
        self.waits.insert(MetaWait {
            initiator: Some(who),
            token,
            status,
            deadline,
        });
    }

    /// Follower: `who`'s command goes to the leader; returns the id its META_STATE answers.
    pub(super) fn ask(&mut self, who: Initiator, deadline: Instant) -> u32 {
        self.waits.insert(MetaWait {
            initiator: Some(who),
            token: 0,
            status: 0,
            deadline,
        }) as u32
    }

    /// Follower: whether `id` is a command waiting for the leader's META_STATE.
    pub(super) fn asked(&self, id: u32) -> bool {
        self.waits.get(id as usize).is_some_and(|m| m.token == 0)
    }

    /// Follower: command `id` (which must be [`MetaRepl::asked`]) is answered with `status`.
    pub(super) fn answered(
        &mut self,
        id: u32,
        status: u16,
    ) -> Option<(u32, IoTag, Result<(), Errno>)> {
        let m = self.waits.remove(id as usize);
        m.initiator
            .map(|(from, tag)| (from, tag, meta_result(status)))
    }

    /// The META_STATE with `token` goes on the wire now.
    pub(super) fn state_sent(&mut self, token: u64) {
        self.sent_token = self.sent_token.max(token);
    }

    /// Leader: META_ACK of `token` (`status`: non-zero when the peer could not install that
    /// state). Every wait up to it is settled (ACKs come in order; a push's has no waiter).
    /// A token never sent (a buggy or forged META_ACK) is refused: it would complete commands
    /// whose state the peer does not have.
    pub(super) fn acked(&mut self, token: u64, status: u32) -> Result<Vec<Answer>, &'static str> {
        if token > self.sent_token {
            return Err("META_ACK for a state not sent");
        }
        let done: Vec<usize> = self
            .waits
            .iter()
            .filter(|(_, m)| m.token != 0 && m.token <= token)
            .map(|(k, _)| k)
            .collect();
        let mut answers = Vec::new();
        for k in done {
            let m = self.waits.remove(k);
            // A state the peer could not install fails the command it carried.
            let status = if m.token == token && status != 0 {
                status.min(0xFFFF) as u16
            } else {
                m.status
            };
            if let Some((from, tag)) = m.initiator {
                answers.push((from, tag, meta_result(status)));
            }
        }
        Ok(answers)
    }

    /// The initiators whose commands waited past their deadline (a wait's entry stays for the
    /// answer; a held command, never decided nor sent, is dropped).
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Initiator> {
        let mut expired = Vec::new();
        if self.crossing.iter().any(|c| c.deadline <= now) {
            self.crossing.retain(|c| {
                let keep = c.deadline > now;
                if !keep {
                    expired.push(c.who);
                }
                keep
            });
        }
        for (_, m) in self.waits.iter_mut() {
            if m.deadline <= now
                && let Some(who) = m.initiator.take()
            {
                expired.push(who);
            }
        }
        expired
    }

    /// Forget every command waiting for the peer (the session ended, the daemon stops, or a
    /// take-over): their initiators. (Held ones: [`MetaRepl::take_crossing`].)
    pub(super) fn fail_all(&mut self) -> Vec<Initiator> {
        self.waits.drain().filter_map(|m| m.initiator).collect()
    }

    /// [`MAX_WAITS`] commands wait (held ones included): take no more.
    pub(super) fn full(&self) -> bool {
        self.len() >= MAX_WAITS
    }

    /// Commands waiting for the peer (answered or given up by their initiators) or held.
    pub(super) fn len(&self) -> usize {
        self.waits.len() + self.crossing.len()
    }

    /// Nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }

    /// Some initiator still waits for an answer.
    pub(super) fn answering(&self) -> bool {
        self.waits.iter().any(|(_, m)| m.initiator.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u32) -> Initiator {
        (0, IoTag { conn: n, slot: 0 })
    }

    /// Echoes: executes by answering the command's length as status and the command as state;
    /// installs "ok" only.
    #[derive(Debug)]
    struct Echo(u8);

    impl MetaHandler for Echo {
        fn execute(&self, _vol: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>) {
            (cmd.len() as u16, Some([&[self.0], cmd].concat()))
        }
        fn install(&self, _vol: usize, state: &[u8]) -> Install {
            if state == [self.0] {
                Install::Done
            } else {
                Install::Failed
            }
        }
        fn full_state(&self, _vol: usize) -> Vec<Vec<u8>> {
            vec![vec![self.0]]
        }
    }

    #[test]
    fn the_router_hands_each_kind_to_its_own_handler_and_refuses_unknown_ones() {
        let mut r = MetaRouter::new();
        assert!(r.add(1, std::sync::Arc::new(Echo(0xA1))));
        assert!(r.add(2, std::sync::Arc::new(Echo(0xB2))));
        assert!(
            !r.add(2, std::sync::Arc::new(Echo(0xC3))),
            "a kind is taken once"
        );
        // The kind byte is stripped for the handler and put back in front of its state.
        assert_eq!(
            r.execute(0, &tagged(2, b"xyz")),
            (3, Some(vec![2, 0xB2, b'x', b'y', b'z']))
        );
        assert_eq!(r.execute(0, &tagged(1, b"")), (0, Some(vec![1, 0xA1])));
        assert_eq!(r.execute(0, &[9, 1, 2]), (META_INVALID, None));
        assert_eq!(r.execute(0, &[]), (META_INVALID, None));
        assert_eq!(r.install(0, &[1, 0xA1]), Install::Done);
        assert_eq!(
            r.install(0, &[2, 0xA1]),
            Install::Failed,
            "B's handler got it"
        );
        assert_eq!(r.install(0, &[7, 0xA1]), Install::Malformed);
        assert_eq!(r.install(0, &[]), Install::Malformed);
        assert_eq!(r.full_state(0), vec![vec![1, 0xA1], vec![2, 0xB2]]);
    }

    #[test]
    fn the_leader_answers_once_the_follower_acknowledged_every_earlier_change() {
        let mut m = MetaRepl::new();
        let t = Instant::now();
        assert_eq!(m.unchanged(who(1), 0, t), Some(Ok(())), "nothing pending");
        let t1 = m.next_token();
        m.changed(who(2), t1, 0, t);
        assert_eq!(
            m.unchanged(who(3), 5, t),
            None,
            "decided on a change in flight"
        );
        let t2 = m.next_token();
        m.changed(who(4), t2, 0, t);
        m.state_sent(t1);
        m.state_sent(t2);
        // The follower could not install the second state.
        let a = m.acked(t1, 0).unwrap();
        let mut got: Vec<_> = a.iter().map(|(_, tag, r)| (tag.conn, *r)).collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(got, vec![(2, Ok(())), (3, meta_result(5))]);
        let a = m.acked(t2, 6).unwrap();
        assert_eq!(a[0].2, meta_result(6));
        assert!(m.is_empty());
    }

    #[test]
    fn an_entry_outlives_its_timeout_until_its_answer() {
        let mut m = MetaRepl::new();
        let t = Instant::now();
        let id = m.ask(who(1), t);
        assert!(m.asked(id));
        assert!(!m.asked(id + 1));
        assert_eq!(m.expire(t), vec![who(1)]);
        assert!(!m.answering() && !m.is_empty());
        assert_eq!(m.answered(id, 0), None, "already failed");
        assert!(m.is_empty());
        m.ask(who(2), t);
        assert_eq!(m.fail_all(), vec![who(2)]);
    }

    #[derive(Debug)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl Settling for Flag {
        fn settled(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Acquire)
        }
    }

    #[test]
    fn held_answers_wait_for_their_work_and_keep_later_ones_behind_in_order() {
        let mut m = MetaRepl::new();
        let f = std::sync::Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let settle: Settle = f.clone();
        // Nothing to wait for: out at once.
        assert!(matches!(
            m.hold(Vec::new(), Held::Ack(1, 0)),
            Some(Held::Ack(1, 0))
        ));
        // A state waiting for unfinished work is held, and so is an ACK after it.
        assert!(
            m.hold(vec![settle], Held::State(0, 2, 0, vec![9]))
                .is_none()
        );
        assert!(m.hold(Vec::new(), Held::Ack(3, 0)).is_none());
        assert!(m.release().is_empty(), "the work is not done");
        f.0.store(true, std::sync::atomic::Ordering::Release);
        let out = m.release();
        assert!(matches!(
            out.as_slice(),
            [Held::State(0, 2, 0, _), Held::Ack(3, 0)]
        ));
        assert!(m.release().is_empty());
        // The session ends: held messages are dropped, held answers are given.
        let g: Settle = std::sync::Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let t = IoTag { conn: 4, slot: 1 };
        assert!(m.hold(vec![g.clone()], Held::Ack(5, 0)).is_none());
        assert!(m.hold(vec![g], Held::Answer(0, t, Ok(()))).is_none());
        let left = m.drop_held();
        assert!(matches!(left.as_slice(), [Held::Answer(0, _, Ok(()))]));
        assert!(m.release().is_empty());
    }
}
