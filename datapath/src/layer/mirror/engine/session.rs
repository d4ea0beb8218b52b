//! The session with the peer: its number, whether it is up, the sequence counter, both
//! applied watermarks as exchanged in ACKs, the ACK policy, the heartbeat and the outbox.
//!
//! Model: [`PeerSession`] owns everything about the exchange that is not about a particular
//! update. A session is numbered; [`PeerSession::start`] begins one after HELLO/WELCOME and
//! [`PeerSession::end`] ends it with the link. Messages are encoded into the outbox (headers;
//! an update's payload by reference to its buffer, txq.rs), which the link drains
//! ([`PeerSession::take_outbox`]), adding an ACK when the policy says one is due. It reads the
//! engine's applied watermark as an argument and returns what the engine must do (a seq to
//! use, a check's verdict, a reason to drop the link); it never touches an update.
//!
//! Invariants:
//! - `next_seq` starts at 1 in every session; on the follower a sequenced message is taken
//!   only with exactly the next `seq` (no duplicates, no gaps).
//! - An ACK received never goes backwards and never passes the highest `seq` given (leader)
//!   or received (follower); an ACK sent never passes the applied watermark.
//! - Nothing is queued while the session is down (the outbox is cleared at both ends).
//! - The read lease (docs/mirror-protocol.md, "Read lease") only ever comes from this
//!   session's handshake or from a PONG to one of this session's PINGs, and is measured from
//!   the PING's SEND time; it ends with the session. What the peer's lease can rest on here
//!   (`peer_lease_base`) is the latest session start or PING received.

use super::super::stats::MirrorStats;
use super::super::txq::{Data, TxQueue};
use super::super::wire::{self, Header, Type};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An ACK is sent at once when this many applied updates are unacknowledged. Otherwise: one
/// unacknowledged update (queue depth 1) is acknowledged in the first turn in which the peer
/// sent nothing new; several (a stream of concurrent updates) wait at most [`ACK_WINDOW`] from
/// the first of them, so a busy stream is acknowledged in batches and a lone update at once.
pub const ACK_BATCH: u64 = 16;
/// The longest an applied update waits for its ACK when others are pending with it.
pub const ACK_WINDOW: Duration = Duration::from_micros(50);

/// Pause between dial attempts.
pub const REDIAL_EVERY: Duration = Duration::from_millis(200);

/// The session with the peer (see the module doc).
pub(super) struct PeerSession {
    /// The current (or last) session's number; 0: none yet.
    pub(super) number: u32,
    pub(super) up: bool,
    /// Leader: next seq to give. Follower: next seq expected.
    next_seq: u64,
    /// The watermark of the last ACK sent.
    ack_sent: u64,
    /// The peer's applied watermark (its last ACK) in this session.
    pub(super) peer_wm: u64,
    outbox: TxQueue,
    /// Messages arrived since the last `take_outbox`.
    rx_since_flush: bool,
    /// When the oldest unacknowledged applied update was first seen waiting for an ACK.
    ack_pending_since: Option<Instant>,
    /// The clock of PING and PONG.
    epoch: Instant,
    next_ping: Instant,
    next_dial: Instant,
    /// The read lease's length (see the module doc).
    lease: Duration,
    /// Reads may be served (in mirroring mode) until then; none: no lease.
    lease_until: Option<Instant>,
    /// The peer's read lease rests on nothing later than this (the latest session start or
    /// PING received here): it has certainly expired at this + `lease` (+ a margin).
    peer_lease_base: Option<Instant>,
    stats: Arc<MirrorStats>,
}

/// The read lease's length for a peer-dead timeout: half of it (docs/mirror-protocol.md,
/// "Read lease").
pub fn lease_for(peer_dead: Duration) -> Duration {
    peer_dead / 2
}

/// What a site announces in HELLO/WELCOME `count`: its read lease in milliseconds, or 0
/// without a witness (no lease is enforced then). Both sites must announce the same value: a
/// site whose lease outlasts the survivor's wait would serve stale reads.
pub fn announced_lease_ms(peer_dead: Duration, witness: bool) -> u32 {
    if witness {
        u32::try_from(lease_for(peer_dead).as_millis())
            .unwrap_or(u32::MAX)
            .max(1)
    } else {
        0
    }
}

/// The refusal when the two sites' announced read leases differ.
pub fn lease_mismatch(mine: u32, peer: u32) -> Option<String> {
    let says = |ms: u32| {
        if ms == 0 {
            "no witness (no read lease)".to_string()
        } else {
            format!(
                "a witness and a read lease of {ms} ms (peer_dead_ms {})",
                u64::from(ms) * 2
            )
        }
    };
    (mine != peer).then(|| {
        format!(
            "the sites disagree on failover: this site has {}, the peer {}; set the same [mirror] witness and peer_dead_ms at both sites (a site whose read lease outlasts the survivor's wait would serve stale reads)",
            says(mine),
            says(peer)
        )
    })
}

/// What a survivor adds to the lease before it acknowledges alone: clock-rate differences
/// between the sites and the tick's granularity.
pub fn lease_margin(lease: Duration) -> Duration {
    lease / 8 + Duration::from_millis(5)
}

impl PeerSession {
    pub(super) fn new(stats: Arc<MirrorStats>, lease: Duration) -> Self {
        let now = Instant::now();
        Self {
            number: 0,
            up: false,
            next_seq: 1,
            ack_sent: 0,
            peer_wm: 0,
            outbox: TxQueue::with_capacity(1 << 20),
            rx_since_flush: false,
            ack_pending_since: None,
            epoch: now,
            next_ping: now,
            next_dial: now,
            lease,
            lease_until: None,
            peer_lease_base: None,
            stats,
        }
    }

    /// A new session starts: returns its number.
    pub(super) fn start(&mut self) -> u32 {
        self.number += 1;
        self.up = true;
        self.next_seq = 1;
        self.ack_sent = 0;
        self.peer_wm = 0;
        self.outbox.clear(drop);
        self.stats.set_up(true, self.number);
        self.number
    }

    /// The session ends with the link; false when none was up (nothing to do).
    pub(super) fn end(&mut self) -> bool {
        if !self.up {
            return false;
        }
        self.up = false;
        self.lease_until = None;
        self.outbox.clear(drop);
        true
    }

    /// The session just started (`start`): this site's first lease runs from `base` (when
    /// this site sent the handshake message that the peer answered, or now: see
    /// docs/mirror-protocol.md), the peer's may run from now; a PING goes out at once.
    pub(super) fn start_lease(&mut self, base: Instant, now: Instant, every: Duration) {
        self.lease_until = Some(base + self.lease);
        self.peer_lease_base = Some(self.peer_lease_base.map_or(now, |b| b.max(now)));
        self.next_ping = now + self.ping_every(every);
        self.ping();
    }

    /// Reads may be served (in mirroring mode) at `now`.
    pub(super) fn leased(&self, now: Instant) -> bool {
        self.up && self.lease_until.is_some_and(|u| now < u)
    }

    /// The lease's end, while the session is up.
    pub(super) fn lease_until(&self) -> Option<Instant> {
        self.lease_until.filter(|_| self.up)
    }

    /// The peer may hold a lease from `at` on (this site sent the handshake message it starts
    /// its session with: WELCOME), though this session has not started here yet.
    pub(super) fn peer_may_lease_from(&mut self, at: Instant) {
        self.peer_lease_base = Some(self.peer_lease_base.map_or(at, |b| b.max(at)));
    }

    /// When every lease the peer may hold from this site has certainly expired (none: the
    /// peer never had one).
    pub(super) fn peer_lease_end(&self) -> Option<Instant> {
        self.peer_lease_base
            .map(|b| b + self.lease + lease_margin(self.lease))
    }

    /// The lease's length.
    pub(super) fn lease(&self) -> Duration {
        self.lease
    }

    /// How often to PING: the heartbeat, and at least four times per lease.
    fn ping_every(&self, every: Duration) -> Duration {
        every.min(self.lease / 4)
    }

    /// The session ended: publish it (after the engine held what it holds).
    pub(super) fn publish_down(&self) {
        self.stats.set_up(false, self.number);
    }

    /// Leader: the next seq of this session.
    pub(super) fn give_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The highest seq given (leader) or received (follower) in this session.
    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Follower: take a sequenced message's `seq`, which must be exactly the next one.
    pub(super) fn check_next_seq(&mut self, seq: u64) -> Result<(), &'static str> {
        if seq != self.next_seq {
            return Err(if seq < self.next_seq {
                "duplicate sequence number"
            } else {
                "sequence number out of window"
            });
        }
        self.next_seq += 1;
        Ok(())
    }

    /// An ACK from the peer: its new watermark, or the reason to drop the link.
    pub(super) fn on_ack(&mut self, seq: u64) -> Result<u64, &'static str> {
        if seq < self.peer_wm || seq > self.last_seq() {
            return Err("ACK outside the window");
        }
        self.stats.inc(&self.stats.acks_received);
        self.peer_wm = seq;
        Ok(seq)
    }

    /// A message arrived (before it is handled).
    pub(super) fn received(&mut self) {
        self.stats.inc(&self.stats.msgs_received);
        self.rx_since_flush = true;
    }

    /// The applied watermark last sent in an ACK this session.
    pub(super) fn acked(&self) -> u64 {
        self.ack_sent
    }

    /// Whether the ACK policy (see [`ACK_BATCH`]) says to send an ACK now, the applied
    /// watermark being `wm`.
    pub(super) fn ack_due(&mut self, now: Instant, wm: u64) -> bool {
        if wm == self.ack_sent {
            self.ack_pending_since = None;
            return false;
        }
        let since = *self.ack_pending_since.get_or_insert(now);
        self.ack_policy(now, wm, since)
    }

    /// The ACK policy itself, the oldest unacknowledged update having waited since `since`.
    fn ack_policy(&self, now: Instant, wm: u64, since: Instant) -> bool {
        match wm - self.ack_sent {
            0 => false,
            1 => !self.rx_since_flush,
            l => l >= ACK_BATCH || now.duration_since(since) >= ACK_WINDOW,
        }
    }

    /// When a held-back ACK falls due.
    pub(super) fn ack_deadline(&self, wm: u64) -> Option<Instant> {
        if self.up && wm > self.ack_sent {
            self.ack_pending_since.map(|s| s + ACK_WINDOW)
        } else {
            None
        }
    }

    /// Anything to send (messages or an ACK).
    pub(super) fn wants_send(&mut self, now: Instant, wm: u64) -> bool {
        self.up && (!self.outbox.is_empty() || self.ack_due(now, wm))
    }

    /// What [`Self::wants_send`] would answer at `now`, without starting the ACK window.
    pub(super) fn would_send(&self, now: Instant, wm: u64) -> bool {
        if !self.up {
            return false;
        }
        if !self.outbox.is_empty() {
            return true;
        }
        self.ack_policy(now, wm, self.ack_pending_since.unwrap_or(now))
    }

    /// Move pending messages (and an ACK up to `wm` if one is due) to `out`.
    pub(super) fn take_outbox(&mut self, out: &mut TxQueue, wm: u64) {
        if !self.up {
            return;
        }
        // (The clock only when there is something to acknowledge.)
        let due = wm != self.ack_sent && self.ack_due(Instant::now(), wm);
        if wm == self.ack_sent {
            self.ack_pending_since = None;
        }
        self.rx_since_flush = false;
        if due {
            self.ack_pending_since = None;
            self.ack_sent = wm;
            let h = Header {
                seq: self.ack_sent,
                ..Header::new(Type::Ack)
            };
            self.outbox.push(&h, &[]);
            self.stats.inc(&self.stats.acks_sent);
        }
        out.append(&mut self.outbox);
    }

    /// Queue a message, counted in `msgs_sent`.
    pub(super) fn send(&mut self, h: &Header, payload: &[u8]) {
        self.outbox.push(h, payload);
        self.stats.inc(&self.stats.msgs_sent);
    }

    /// Queue a message whose payload is sent from `data` itself (an update's buffer, shared
    /// until the send completed), counted in `msgs_sent`.
    pub(super) fn send_data(&mut self, h: &Header, data: &Data) {
        self.outbox.push_data(h, data);
        self.stats.inc(&self.stats.msgs_sent);
    }

    /// Queue a message not counted in `msgs_sent` (copies, answers, control).
    pub(super) fn queue(&mut self, h: &Header, payload: &[u8]) {
        self.outbox.push(h, payload);
    }

    /// Queue the RESYNC_ALSO messages listing `ranges` and the list's end.
    pub(super) fn send_resync_also(&mut self, ranges: &[(u64, u64)]) {
        wire::encode_resync_also(self.outbox.bytes_mut(), ranges);
        for _ in 0..ranges.len().div_ceil(wire::MAX_RESYNC_ALSO as usize) + 1 {
            self.stats.inc(&self.stats.msgs_sent);
        }
    }

    /// Queue a PING carrying the current clock.
    pub(super) fn ping(&mut self) {
        self.ping_marked();
    }

    /// Queue a PING carrying the current clock, and return that clock: a PONG carrying it
    /// (or a later one) comes back only after the peer read everything queued before this PING.
    pub(super) fn ping_marked(&mut self) -> u64 {
        let seq = self.clock();
        if self.up {
            let h = Header {
                seq,
                ..Header::new(Type::Ping)
            };
            self.queue(&h, &[]);
        }
        seq
    }

    /// The clock PINGs carry (nanoseconds since this session object began): a PONG carrying
    /// a later one answers no PING sent here.
    pub(super) fn clock(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The peer's PING: answer it.
    pub(super) fn on_ping(&mut self, h: &Header) {
        // The peer's lease may rest on this PING (sent before now).
        self.peer_lease_base = Some(Instant::now());
        let h = Header {
            seq: h.seq,
            ..Header::new(Type::Pong)
        };
        self.queue(&h, &[]);
    }

    /// The peer's PONG: a round-trip sample, and the lease renewed from the PING's send time.
    /// True when the lease moved.
    pub(super) fn on_pong(&mut self, h: &Header) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64;
        if h.seq > now {
            return false;
        }
        self.stats.rtt_sample(now - h.seq);
        let until = self.epoch + Duration::from_nanos(h.seq) + self.lease;
        if self.up && self.lease_until.is_none_or(|u| u < until) {
            self.lease_until = Some(until);
            return true;
        }
        false
    }

    /// The heartbeat at `now`: ping when due; the reason to drop the link when the peer sent
    /// nothing (last at `last_rx`) for longer than `peer_dead`.
    pub(super) fn heartbeat(
        &mut self,
        now: Instant,
        every: Duration,
        peer_dead: Duration,
        last_rx: Instant,
    ) -> Option<&'static str> {
        if !self.up {
            return None;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.ping_every(every);
            self.ping();
        }
        (now.duration_since(last_rx) > peer_dead)
            .then_some("peer silent past the heartbeat timeout")
    }

    /// When the next PING is due (a session is up).
    pub(super) fn next_ping(&self) -> Option<Instant> {
        self.up.then_some(self.next_ping)
    }

    /// Follower without a link: whether to dial now (at most every [`REDIAL_EVERY`]).
    pub(super) fn dial_due(&mut self, now: Instant) -> bool {
        if now >= self.next_dial {
            self.next_dial = now + REDIAL_EVERY;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> PeerSession {
        PeerSession::new(Arc::new(MirrorStats::default()), Duration::from_millis(200))
    }

    #[test]
    fn seqs_are_taken_exactly_in_order_and_restart_with_each_session() {
        let mut s = session();
        assert_eq!(s.start(), 1);
        assert_eq!(s.check_next_seq(2), Err("sequence number out of window"));
        assert_eq!(s.check_next_seq(1), Ok(()));
        assert_eq!(s.check_next_seq(1), Err("duplicate sequence number"));
        assert_eq!(s.last_seq(), 1);
        assert!(s.end());
        assert!(!s.end());
        assert_eq!(s.start(), 2);
        assert_eq!(s.give_seq(), 1);
        assert_eq!(s.give_seq(), 2);
    }

    #[test]
    fn acks_never_go_backwards_nor_past_the_last_seq() {
        let mut s = session();
        s.start();
        s.give_seq();
        s.give_seq();
        assert_eq!(s.on_ack(3), Err("ACK outside the window"));
        assert_eq!(s.on_ack(2), Ok(2));
        assert_eq!(s.on_ack(1), Err("ACK outside the window"));
        assert_eq!(s.on_ack(2), Ok(2));
    }

    #[test]
    fn the_ack_policy() {
        let mut s = session();
        s.start();
        let t = Instant::now();
        // Nothing applied: no ACK.
        assert!(!s.ack_due(t, 0));
        // A lone update: at once, unless the peer just sent more.
        s.received();
        assert!(!s.ack_due(t, 1));
        let mut out = TxQueue::default();
        s.take_outbox(&mut out, 1);
        assert!(out.is_empty(), "held while the peer is sending");
        assert!(s.ack_due(t, 1));
        s.take_outbox(&mut out, 1);
        assert!(!out.is_empty());
        assert!(!s.ack_due(t, 1));
        // Several: a batch, or the window from the first.
        s.received();
        assert!(!s.ack_due(t, 3));
        assert_eq!(s.ack_deadline(3), Some(t + ACK_WINDOW));
        assert!(s.ack_due(t + ACK_WINDOW, 3));
        assert!(s.ack_due(t, 1 + ACK_BATCH));
        // Down: nothing is due, nothing is sent.
        s.end();
        assert_eq!(s.ack_deadline(3), None);
        assert!(!s.wants_send(t, 3));
    }

    /// `would_send` (asked before a reactor sleeps) answers what `wants_send` (the next
    /// turn's) would, and starts no ACK window.
    #[test]
    fn would_send_answers_as_wants_send_without_starting_the_window() {
        let mut s = session();
        assert!(!s.would_send(Instant::now(), 1), "down: nothing to send");
        s.start();
        let t = Instant::now();
        s.received();
        for (at, wm) in [
            (t, 0),
            (t, 1),
            (t, 3),
            (t + ACK_WINDOW, 3),
            (t, 1 + ACK_BATCH),
        ] {
            let mut probe = session();
            probe.start();
            probe.received();
            let would = probe.would_send(at, wm);
            assert_eq!(probe.ack_pending_since, None, "would_send starts no window");
            assert_eq!(would, probe.wants_send(at, wm), "at +{:?}, wm {wm}", at - t);
        }
        // Once the window runs, both measure from its start.
        assert!(!s.wants_send(t, 3));
        let later = t + ACK_WINDOW;
        assert_eq!(s.would_send(later, 3), s.wants_send(later, 3));
        assert!(s.would_send(later, 3));
        // Messages queued: something to send whatever the watermark.
        s.take_outbox(&mut TxQueue::default(), 3);
        s.ping();
        assert!(s.would_send(t, 3));
    }
}
