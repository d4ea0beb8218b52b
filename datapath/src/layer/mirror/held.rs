//! Host reads held while a site that is about to serve again has no read lease.
//!
//! Model: a mirroring site serves reads only under its read lease (docs/mirror-protocol.md,
//! "Read lease"); a PONG a little late (a loaded host, a slow WAN) lets the lease lapse with
//! the session still up, and a survivor just granted waits out its peer's lease before it
//! serves. Both end soon, one way or the other: the lease is renewed, or the session ends and
//! the witness makes this site the survivor (it serves) or fences it (it serves nothing). A
//! read that comes meanwhile is held here, by the volume's channel on the reactor it came to,
//! and looked at again at every turn of that reactor's mirror poller ([`HeldReads::release`]):
//! served once reads may be served, refused ([`Errno::UNAVAILABLE`], as before) once the site
//! is in a mode that serves nothing or the read waited `peer_timeout` (as an update waits for
//! the peer). Before, such a read was refused at once: over NBD an EIO to a host with one
//! path while nothing had failed.
//!
//! Invariants: a held read is served only when [`Verdict::Serve`] is decided with a clock
//! read after the hold (never the turn's time: a process stopped in the middle of a turn
//! resumes with a time from before the stop), so it never returns data the lease does not
//! vouch for; every held read is answered exactly once (served, refused, or failed at a stop's
//! deadline); holding allocates only on this path (the vector grows to the number of reads
//! in flight at once, bounded by the hosts' queue depths).

use crate::bdev::ReadStart;
use crate::uring::{Errno, IoCx, IoTag};
use std::time::{Duration, Instant};

/// What to do with a read that finds no read lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Reads may be served now.
    Serve,
    /// Not now, but the site is in a mode that serves again soon (mirroring without its
    /// lease, or a survivor waiting out its peer's): hold it.
    Hold,
    /// The site serves nothing (fenced, resyncing, waiting, failed): refuse it.
    Refuse,
}

/// The verdict for a read at `now`, from whether reads may be served and whether the site's
/// mode serves again soon.
pub fn verdict(may_read: bool, holdable: bool) -> Verdict {
    match (may_read, holdable) {
        (true, _) => Verdict::Serve,
        (false, true) => Verdict::Hold,
        (false, false) => Verdict::Refuse,
    }
}

/// Reads refused now may be served soon, so a read is held rather than refused: the site is
/// mirroring (its lease lapsed, or the link was just lost and the witness is being asked) or a
/// survivor waiting out its peer's lease, and its replica has not failed. (The one rule for
/// the home reactor's engine and the other reactors' published state.)
pub fn may_come(mode: super::mode::Mode, failed: bool) -> bool {
    use super::mode::Mode;
    !failed && matches!(mode, Mode::Mirroring | Mode::Survivor)
}

/// One held read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The request's tag (its owner is on this reactor: reads never cross reactors).
    pub tag: IoTag,
    /// Where and how much.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
    /// Refused if still held then.
    until: Instant,
}

/// The reads one channel holds.
#[derive(Debug)]
pub struct HeldReads {
    reads: Vec<Held>,
    /// How long a read may be held (the volume's `peer_timeout`).
    limit: Duration,
}

impl HeldReads {
    /// None held; each read held at most `limit`.
    pub fn new(limit: Duration) -> Self {
        Self {
            reads: Vec::new(),
            limit,
        }
    }

    /// Hold a read that came at `now`.
    pub fn hold(&mut self, tag: IoTag, offset: u64, len: u32, now: Instant) {
        self.reads.push(Held {
            tag,
            offset,
            len,
            until: now + self.limit,
        });
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// Reads held now.
    pub fn len(&self) -> usize {
        self.reads.len()
    }

    /// When the first held read's wait ends (`None`: none held).
    pub fn deadline(&self) -> Option<Instant> {
        self.reads.iter().map(|h| h.until).min()
    }

    /// A look at `now` would answer a read: reads may be served (`serve`), or one is due to
    /// be refused (the site serves nothing, or a wait ended).
    pub fn due(&self, v: Verdict, now: Instant) -> bool {
        !self.is_empty() && (v != Verdict::Hold || self.deadline().is_some_and(|d| now >= d))
    }

    /// Every held read is refused at the next look (a stop's deadline passed), and so is any
    /// read held from now on (its connection or the NVMe atomic-section executor may still
    /// start one: holding it `limit` would keep the reactor that long past the deadline).
    pub fn expire(&mut self) {
        self.limit = Duration::ZERO;
        let now = Instant::now();
        for h in &mut self.reads {
            h.until = h.until.min(now);
        }
    }

    /// Answer what verdict `v` (decided at `now`) allows: with [`Verdict::Serve`] every held
    /// read goes to `answer` with `Serve`; otherwise the reads whose wait ended, and with
    /// [`Verdict::Refuse`] all, go to `answer` with `Refuse`. The rest stay held, in their
    /// order.
    pub fn release(&mut self, v: Verdict, now: Instant, mut answer: impl FnMut(&Held, Verdict)) {
        self.reads.retain(|h| match v {
            Verdict::Hold if now < h.until => true,
            Verdict::Hold | Verdict::Refuse => {
                answer(h, Verdict::Refuse);
                false
            }
            Verdict::Serve => {
                answer(h, Verdict::Serve);
                false
            }
        });
    }
}

/// What serving a held read gave: the device completes it to its owner itself, its data at
/// once (copied into a vector for [`crate::runtime::PollCx::complete_read`]), or an error.
pub enum Outcome {
    /// The device completes it to the read's owner.
    Pending,
    /// The data, to deliver to the owner.
    Data(Vec<u8>),
    /// It failed with this answer.
    Failed(Errno),
}

impl Outcome {
    /// The outcome of a read started with `r` (a vector for data taken from `io`'s spares).
    pub fn of(r: ReadStart<'_>, io: &mut IoCx) -> Self {
        match r {
            ReadStart::Pending => Self::Pending,
            ReadStart::Failed(e) => Self::Failed(e),
            ReadStart::Ready(d) => {
                let mut v = io.spare_vecs.pop().unwrap_or_default();
                v.clear();
                v.extend_from_slice(d);
                Self::Data(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(slot: u32) -> IoTag {
        IoTag::conn(1, slot)
    }

    fn answers(served: &mut Vec<IoTag>, refused: &mut Vec<IoTag>, r: &Held, v: Verdict) {
        match v {
            Verdict::Serve => served.push(r.tag),
            Verdict::Refuse => refused.push(r.tag),
            Verdict::Hold => panic!("a held read answered with Hold"),
        }
    }

    #[test]
    fn the_verdict_serves_under_a_lease_holds_while_one_may_come_and_refuses_otherwise() {
        assert_eq!(verdict(true, true), Verdict::Serve);
        assert_eq!(verdict(true, false), Verdict::Serve);
        assert_eq!(verdict(false, true), Verdict::Hold);
        assert_eq!(verdict(false, false), Verdict::Refuse);
    }

    #[test]
    fn held_reads_are_served_refused_or_kept_each_exactly_once() {
        let t0 = Instant::now();
        let mut h = HeldReads::new(Duration::from_millis(100));
        h.hold(tag(1), 0, 4096, t0);
        h.hold(tag(2), 4096, 512, t0 + Duration::from_millis(50));
        assert_eq!(h.len(), 2);
        assert_eq!(h.deadline(), Some(t0 + Duration::from_millis(100)));
        let (mut served, mut refused) = (Vec::new(), Vec::new());
        // Held: nothing answered before a wait ends.
        assert!(!h.due(Verdict::Hold, t0 + Duration::from_millis(99)));
        h.release(Verdict::Hold, t0 + Duration::from_millis(99), |r, v| {
            answers(&mut served, &mut refused, r, v)
        });
        assert!(served.is_empty() && refused.is_empty());
        // The first one's wait ends: it alone is refused.
        assert!(h.due(Verdict::Hold, t0 + Duration::from_millis(100)));
        h.release(Verdict::Hold, t0 + Duration::from_millis(100), |r, v| {
            answers(&mut served, &mut refused, r, v)
        });
        assert_eq!((served.len(), refused.as_slice()), (0, &[tag(1)][..]));
        // The lease is back: the other is served, with its span.
        assert!(h.due(Verdict::Serve, t0));
        let mut spans = Vec::new();
        h.release(Verdict::Serve, t0, |r, v| {
            spans.push((r.offset, r.len));
            answers(&mut served, &mut refused, r, v)
        });
        assert_eq!(served, vec![tag(2)]);
        assert_eq!(spans, vec![(4096, 512)]);
        assert!(h.is_empty() && !h.due(Verdict::Serve, t0));
        // Refused at once when the site serves nothing; expired ones too.
        h.hold(tag(3), 0, 1, t0);
        h.hold(tag(4), 0, 1, t0);
        h.release(Verdict::Refuse, t0, |r, v| {
            answers(&mut served, &mut refused, r, v)
        });
        assert_eq!(refused, vec![tag(1), tag(3), tag(4)]);
        h.hold(tag(5), 0, 1, Instant::now());
        h.expire();
        h.release(Verdict::Hold, Instant::now(), |r, v| {
            answers(&mut served, &mut refused, r, v)
        });
        assert_eq!(refused.last(), Some(&tag(5)));
        assert_eq!(served, vec![tag(2)], "nothing served twice");
        assert!(h.is_empty());
    }

    /// After a stop's deadline a read is held no more: one that comes then (a connection
    /// still finishing its work, the NVMe atomic-section executor running its queue) is
    /// refused at the next look, not `limit` later, so the reactor exits soon after the
    /// deadline.
    #[test]
    fn a_read_held_after_the_stop_deadline_is_refused_at_the_next_look() {
        let mut h = HeldReads::new(Duration::from_secs(10));
        h.expire();
        let t = Instant::now();
        h.hold(tag(1), 0, 512, t);
        assert_eq!(
            h.deadline(),
            Some(t),
            "held for the whole limit after the deadline"
        );
        assert!(h.due(Verdict::Hold, t));
        let mut refused = Vec::new();
        h.release(Verdict::Hold, t, |r, v| {
            assert_eq!(v, Verdict::Refuse);
            refused.push(r.tag)
        });
        assert_eq!(refused, vec![tag(1)]);
    }
}
