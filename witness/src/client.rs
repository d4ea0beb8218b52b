//! The sites' blocking witness client.
//!
//! Model: a call sends its request(s) and then, every `retransmit` until a matching answer
//! arrives or the call's deadline passes, a *new* request (fresh counter, fresh MAC) with the same
//! intent; every request is idempotent at the witness, so whichever copy is answered first
//! counts. Hundreds of ms of link delay therefore cost one round trip, not a failure.
//!
//! Invariants:
//! - Counters strictly increase for the life of the process and across restarts (seeded from the
//!   wall clock in ns: `max(previous + 1, now_ns)`); a BEHIND answer to one of the call's
//!   requests raises them above the highest the witness accepted, and that request is resent.
//! - An answer is believed only if its MAC is right, its type answers the request, it names this
//!   site, and its counter is one this call sent; everything else is ignored.
//! - The client never blocks past its deadline (plus one socket timeout slice, at most
//!   `retransmit`).
//!
//! One client per site; a call takes `&mut self`, so concurrent callers share it behind a lock.
//! Blocking: call it from a control thread, never from a reactor.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proto::{
    self, Body, Claim, DenyReason, Epoch, GroupId, GroupView, Key, MAX_ENTRIES, Msg, ReleaseStatus,
    SiteId,
};

/// Default interval between retransmissions: several per second of a WAN round trip, few enough
/// to be no load on the witness.
pub const DEFAULT_RETRANSMIT: Duration = Duration::from_millis(150);
/// Default deadline of one call: above the default tie grace (1 s) plus a slow round trip, so a
/// `request_grant` that has to wait out a tie still gets its answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the witness said to a grant request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantOutcome {
    /// This site is the group's survivor at `epoch`.
    Granted { epoch: Epoch },
    /// Not granted: fence. `holder` is the current holder (for `Held`). Never `TieWait`: a tie
    /// lasting until the deadline is [`ClientError::TieWait`] (a retransmission may have been
    /// granted, its answer lost).
    Denied {
        reason: DenyReason,
        holder: Option<SiteId>,
        epoch: Epoch,
        preferred: Option<SiteId>,
    },
}

/// What the witness said to a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The group has no holder any more (or already had none at that epoch).
    Released(GroupView),
    /// This site did not hold the group at that epoch; `GroupView` is the group's state.
    NotHolder(GroupView),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("witness address {0} does not resolve")]
    Resolve(String),
    #[error("opening the client socket")]
    Socket(#[source] std::io::Error),
    #[error("sending to the witness")]
    Send(#[source] std::io::Error),
    #[error("receiving from the witness")]
    Recv(#[source] std::io::Error),
    #[error("no answer from the witness within {0:?}")]
    Timeout(Duration),
    /// `request_grant` only: the witness answered TIE_WAIT until the deadline (the preferred
    /// site, alive, kept its right of way and did not ask). Not a denial: a retransmission
    /// sent as the grace ended may have been granted and its answer lost, so the caller treats
    /// it as unanswered, as a timeout.
    #[error(
        "the witness kept the group for its preferred site {preferred} (alive, not asking) until the deadline {timeout:?}; a last retransmission may have been granted"
    )]
    TieWait { preferred: u32, timeout: Duration },
    #[error(
        "the witness has accepted the largest counter there is from this site id: no request of this site can be above it (reset the witness's state for the site)"
    )]
    CounterExhausted,
}

/// One request of a call in progress.
struct Pending {
    body: Body,
    /// Counters this request was sent with (any may be answered).
    sent: Vec<u64>,
    next_send: Instant,
    answer: Option<Body>,
}

/// A site's connection to its witness.
pub struct WitnessClient {
    sock: UdpSocket,
    site: SiteId,
    key: Key,
    counter: u64,
    retransmit: Duration,
    timeout: Duration,
    tx: Vec<u8>,
    rx: Box<[u8; proto::MAX_LEN + 1]>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The counter after `prev` with the wall clock at `wall` ns (docs/witness-protocol.md,
/// "Authentication and replay protection"): the clock counts up to [`WALL_MAX`] only, so a
/// clock stepped far ahead leaves 2^63 counters for the datagrams after it.
fn counter_after(prev: u64, wall: u64) -> u64 {
    prev.saturating_add(1).max(wall.min(WALL_MAX))
}

/// The largest counter taken from the wall clock: 2^63 - 1 ns after the Unix epoch (the year
/// 2262).
const WALL_MAX: u64 = u64::MAX / 2;

impl WitnessClient {
    /// A client for `site` talking to the witness at `addr` (UDP; the socket is connected, so
    /// only datagrams from that address are read).
    pub fn new(addr: impl ToSocketAddrs, site: SiteId, key: Key) -> Result<Self, ClientError> {
        let addr: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|_| ClientError::Resolve("(unresolvable)".into()))?
            .next()
            .ok_or_else(|| ClientError::Resolve("(no address)".into()))?;
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local).map_err(ClientError::Socket)?;
        sock.connect(addr).map_err(ClientError::Socket)?;
        Ok(WitnessClient {
            sock,
            site,
            key,
            counter: 0,
            retransmit: DEFAULT_RETRANSMIT,
            timeout: DEFAULT_TIMEOUT,
            tx: Vec::with_capacity(proto::MAX_LEN),
            rx: Box::new([0u8; proto::MAX_LEN + 1]),
        })
    }

    /// Sets the interval between retransmissions (at least 1 ms).
    pub fn set_retransmit(&mut self, every: Duration) {
        self.retransmit = every.max(Duration::from_millis(1));
    }

    /// Sets the deadline of each call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn site(&self) -> SiteId {
        self.site
    }

    fn next_counter(&mut self) -> u64 {
        self.counter = counter_after(self.counter, wall_ns());
        self.counter
    }

    /// Tells the witness this site is alive and which groups it serves (with its preferred flag
    /// for each); returns the witness's view of each group, in the same order. An empty list is
    /// a liveness-only heartbeat.
    pub fn heartbeat(&mut self, groups: &[Claim]) -> Result<Vec<GroupView>, ClientError> {
        let bodies: Vec<Body> = if groups.is_empty() {
            vec![Body::Heartbeat { claims: vec![] }]
        } else {
            groups
                .chunks(MAX_ENTRIES)
                .map(|c| Body::Heartbeat { claims: c.to_vec() })
                .collect()
        };
        let deadline = Instant::now() + self.timeout;
        let answers = self.exchange(bodies, deadline)?;
        let mut out = Vec::with_capacity(groups.len());
        for a in answers {
            if let Body::View { views } = a {
                out.extend(views);
            }
        }
        Ok(out)
    }

    /// Asks to become the survivor of `group`. `known_epoch` is the highest epoch at which this
    /// site's replica was complete; `preferred` is whether this site is the group's preferred
    /// site. Keeps asking while the witness answers TIE_WAIT, up to the deadline; still waiting
    /// then, [`ClientError::TieWait`].
    pub fn request_grant(
        &mut self,
        group: GroupId,
        known_epoch: Epoch,
        preferred: bool,
    ) -> Result<GrantOutcome, ClientError> {
        self.ask(group, known_epoch, preferred, false)
    }

    /// This site serves alone on its grant of `group` at `held`, and the witness's word shows
    /// no holder at an older epoch (it forgot the grant: restarted from an older state): asks
    /// it to record the grant again (GRANT_REQUEST with `HOLDS`, docs/witness-protocol.md, "A
    /// witness that forgot a grant"). Granted at `held`: recorded; denied: another site holds
    /// the group, or the grant was released. An older witness drops the request: `Timeout`.
    pub fn reclaim_grant(
        &mut self,
        group: GroupId,
        held: Epoch,
    ) -> Result<GrantOutcome, ClientError> {
        self.ask(group, held, false, true)
    }

    fn ask(
        &mut self,
        group: GroupId,
        known_epoch: Epoch,
        preferred: bool,
        holds: bool,
    ) -> Result<GrantOutcome, ClientError> {
        let deadline = Instant::now() + self.timeout;
        // The preferred site of the last TIE_WAIT answered, if the last answer was one.
        let mut tie: Option<u32> = None;
        loop {
            let body = Body::GrantRequest {
                group,
                known: known_epoch,
                preferred,
                holds,
            };
            let answer = match self.exchange(vec![body], deadline) {
                Ok(mut a) => a.pop(),
                Err(ClientError::Timeout(timeout)) if let Some(preferred) = tie => {
                    return Err(ClientError::TieWait { preferred, timeout });
                }
                Err(e) => return Err(e),
            };
            match answer {
                Some(Body::Grant { view }) => {
                    return Ok(GrantOutcome::Granted { epoch: view.epoch });
                }
                Some(Body::Deny {
                    reason,
                    view,
                    wait_ms,
                }) => {
                    let now = Instant::now();
                    if reason == DenyReason::TieWait {
                        tie = Some(view.preferred.map_or(0, SiteId::get));
                    }
                    if reason == DenyReason::TieWait && now < deadline {
                        let wait = Duration::from_millis(wait_ms.into())
                            .min(self.retransmit)
                            .min(deadline - now);
                        std::thread::sleep(wait);
                        continue;
                    }
                    if reason == DenyReason::TieWait {
                        // (Past the deadline: as above, not a denial.)
                        return Err(ClientError::TieWait {
                            preferred: tie.unwrap_or(0),
                            timeout: self.timeout,
                        });
                    }
                    return Ok(GrantOutcome::Denied {
                        reason,
                        holder: view.holder,
                        epoch: view.epoch,
                        preferred: view.preferred,
                    });
                }
                _ => return Err(ClientError::Timeout(self.timeout)),
            }
        }
    }

    /// Gives back this site's grant of `group` at `epoch` (once both sites are in sync).
    pub fn release(&mut self, group: GroupId, epoch: Epoch) -> Result<ReleaseOutcome, ClientError> {
        self.release_as(group, epoch, false)
    }

    /// Gives back this site's grant of `group` at `epoch`, never served on (flag `UNUSED`:
    /// docs/witness-protocol.md, "An unused release"). Only where this site's state proves
    /// that no write was acknowledged on the grant. An older witness drops it unanswered
    /// (`Timeout`): the caller then gives the grant back with [`WitnessClient::release`].
    pub fn release_unused(
        &mut self,
        group: GroupId,
        epoch: Epoch,
    ) -> Result<ReleaseOutcome, ClientError> {
        self.release_as(group, epoch, true)
    }

    fn release_as(
        &mut self,
        group: GroupId,
        epoch: Epoch,
        unused: bool,
    ) -> Result<ReleaseOutcome, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let body = Body::Release {
            group,
            epoch,
            unused,
        };
        match self.exchange(vec![body], deadline)?.pop() {
            Some(Body::State {
                status: ReleaseStatus::Ok,
                view,
            }) => Ok(ReleaseOutcome::Released(view)),
            Some(Body::State {
                status: ReleaseStatus::NotHolder,
                view,
            }) => Ok(ReleaseOutcome::NotHolder(view)),
            _ => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// Whether `answer` answers `req`.
    fn answers(req: &Body, answer: &Body) -> bool {
        match (req, answer) {
            (Body::Heartbeat { claims }, Body::View { views }) => {
                claims.len() == views.len()
                    && claims.iter().zip(views).all(|(c, v)| c.group == v.group)
            }
            (Body::GrantRequest { group, .. }, Body::Grant { view })
            | (Body::GrantRequest { group, .. }, Body::Deny { view, .. })
            | (Body::Release { group, .. }, Body::State { view, .. }) => view.group == *group,
            _ => false,
        }
    }

    /// Sends every request, retransmits the unanswered ones, and returns the answers in request
    /// order once all have one; `Timeout` at `deadline`.
    fn exchange(&mut self, bodies: Vec<Body>, deadline: Instant) -> Result<Vec<Body>, ClientError> {
        let now = Instant::now();
        let mut pending: Vec<Pending> = bodies
            .into_iter()
            .map(|body| Pending {
                body,
                sent: Vec::new(),
                next_send: now,
                answer: None,
            })
            .collect();
        loop {
            let now = Instant::now();
            for p in pending.iter_mut() {
                if p.answer.is_none() && p.next_send <= now {
                    let counter = self.next_counter();
                    let msg = Msg {
                        site: self.site,
                        counter,
                        body: p.body.clone(),
                    };
                    // Bodies are built here with at most MAX_ENTRIES entries.
                    if proto::encode(&mut self.tx, &msg, &self.key).is_ok() {
                        match self.sock.send(&self.tx) {
                            Ok(_) => {}
                            // No witness listening (ICMP port unreachable) or a transient
                            // error: the next retransmission may get through.
                            Err(e) if transient(&e) => {}
                            Err(e) => return Err(ClientError::Send(e)),
                        }
                    }
                    p.sent.push(counter);
                    p.next_send = now + self.retransmit;
                }
            }
            if pending.iter().all(|p| p.answer.is_some()) {
                return Ok(pending.into_iter().filter_map(|p| p.answer).collect());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(self.timeout));
            }
            let next = pending
                .iter()
                .filter(|p| p.answer.is_none())
                .map(|p| p.next_send)
                .min()
                .unwrap_or(deadline)
                .min(deadline);
            let wait = next
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.sock
                .set_read_timeout(Some(wait))
                .map_err(ClientError::Recv)?;
            let n = match self.sock.recv(&mut self.rx[..]) {
                Ok(n) => n,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(ClientError::Recv(e)),
            };
            let Ok(msg) = proto::decode_answer(&self.rx[..n], &self.key) else {
                tracing::debug!("witness client: datagram ignored (bad MAC or form)");
                continue;
            };
            if msg.site != self.site {
                continue;
            }
            if let Body::Behind { highest } = msg.body {
                // One of this call's requests was stale: the witness had accepted a higher
                // counter from this site (its clock stepped back, or it ran ahead before a
                // restart). Continue above it, and resend that request now.
                if let Some(p) = pending
                    .iter_mut()
                    .find(|p| p.answer.is_none() && p.sent.contains(&msg.counter))
                {
                    if highest == u64::MAX {
                        return Err(ClientError::CounterExhausted);
                    }
                    if highest > self.counter {
                        tracing::warn!(
                            site = self.site.get(),
                            counter = msg.counter,
                            highest,
                            behind_ms = (highest - msg.counter) / 1_000_000,
                            "witness: this site's counter was behind the highest the witness accepted from it (its clock is behind what it sent before): continuing above it"
                        );
                        self.counter = highest;
                    }
                    p.next_send = Instant::now();
                }
                continue;
            }
            if let Some(p) = pending
                .iter_mut()
                .find(|p| p.answer.is_none() && p.sent.contains(&msg.counter))
                && Self::answers(&p.body, &msg.body)
            {
                p.answer = Some(msg.body);
            }
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A site's clock stepped far ahead (past 2262: a broken RTC) must not send the largest
    /// counter there is: the witness would take it, and never hear that site again (every
    /// later counter BEHIND it, `CounterExhausted`, until its state is reset for the site).
    /// Failed before: a clock past 2554 (beyond u64 ns) sent 2^64 - 1.
    #[test]
    fn a_clock_far_ahead_leaves_room_for_later_counters() {
        let c = counter_after(0, u64::MAX);
        assert!(c <= u64::MAX / 2, "{c}");
        assert_eq!(counter_after(c, u64::MAX), c + 1);
        // An ordinary clock, ahead of or behind the counter: as before.
        assert_eq!(counter_after(5, 1_000), 1_000);
        assert_eq!(counter_after(1_000, 5), 1_001);
    }
}
