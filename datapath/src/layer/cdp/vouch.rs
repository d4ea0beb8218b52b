//! A replica's history under a layer that vouches for it: the mirror says whether this site's
//! replica is the volume ([`Vouch`]; docs/cdp-format.md, "Under the mirror: moments the
//! replica was not the volume").
//!
//! Model: a mirrored site's replica holds every acknowledged write only while the site holds
//! its read lease or serves alone as the survivor ([`Vouch::Current`]). Its peer may
//! acknowledge writes alone once this site's lease has expired, and a resync then copies them
//! in (a mixture of old and new until it ends). So the history serves a moment only while the
//! replica was vouched for:
//! - The mirror says it at every turn of its home reactor (while the daemon stops too). When
//!   it stops vouching ([`Vouch::Unsure`], [`Vouch::Stale`]), `degraded.map` is written "not
//!   whole after X" ([`super::degraded::RegionMap::unvouched`]), X being the last record
//!   appended when it last said current (its previous turn), or the last durable one if that
//!   is earlier: readers refuse every later point. Updates are still journaled (the resync's
//!   copies too).
//! - Vouched for again, never stale meanwhile (the peer acknowledged nothing alone): the map
//!   is made whole again; the records of the stretch were the volume's.
//! - Vouched for again after being stale: a gap record after X is appended, and the map made
//!   whole once it is durable. Every change to the base since X passed through this layer, so
//!   the replay up to the gap is the base, which is the volume again: points from X to the gap
//!   are refused ([`super::pit`]), from the gap on exact.
//! - Under the mirror a start is not vouched for after the recovered end until the mirror
//!   first says so ([`Vouched::under`]; a RAM replica, empty at a start, is stale at once, and
//!   so is one whose previous run ended not whole: it may have been resynced half way).
//!   A catch-up after `cdp_enable` ends with its gap record only while vouched for.
//!
//! Invariants: the map's X never moves later while the history is not whole (an earlier X, a
//! catch-up's or a stopped journal's, stands), nor does X's time (no time mark is written
//! while not vouched for, so the idle journal's in-place rewrite of its last mark cannot move
//! it); a failed write of the map stops the journal (degraded mode), it never leaves unvouched
//! moments servable.

use super::CdpChannel;
use super::clock;
use super::format::Op;
use crate::bdev::Vouch;
use crate::uring::IoCx;

/// What the layer above last said, and what the history makes of it.
#[derive(Clone, Copy, Debug)]
pub struct Vouched {
    /// A layer above vouches for the replica (else it is always current).
    by_above: bool,
    /// What it said last.
    now: Vouch,
    /// `degraded.map` says "not whole after X" (sequence, time): written here, or by a
    /// catch-up, or at the start.
    pub unvouched: Option<(u64, u64)>,
    /// The replica missed updates since X: a gap record is due when it is current again.
    stale: bool,
    /// That gap record, appended, until it is durable.
    gap: Option<u64>,
    /// The last record appended when the layer above last said current (the next X).
    at: (u64, u64),
}

impl Vouched {
    /// No layer above vouches: always current.
    pub fn none() -> Self {
        Self {
            by_above: false,
            now: Vouch::Current,
            unvouched: None,
            stale: false,
            gap: None,
            at: (0, 0),
        }
    }

    /// Under a layer that vouches, not (yet) vouched for: the map says "not whole after
    /// `unvouched`" (when it does); `stale`: the replica is known to miss updates.
    pub fn under(unvouched: Option<(u64, u64)>, stale: bool) -> Self {
        Self {
            by_above: true,
            now: Vouch::Unsure,
            unvouched,
            stale,
            gap: None,
            at: unvouched.unwrap_or((0, 0)),
        }
    }

    /// A catch-up's map says "not whole after `w`": under a layer that vouches, that X
    /// stands for the vouch too.
    pub fn or_whole_after(mut self, w: Option<(u64, u64)>) -> Self {
        if self.by_above && self.unvouched.is_none() {
            self.unvouched = w;
        }
        self
    }

    /// The replica is current now.
    pub fn current(&self) -> bool {
        self.now == Vouch::Current
    }

    /// A time mark may extend the window: only while vouched for. (Not while the map refuses
    /// what it would extend either: an idle journal rewrites its last lone mark in place with
    /// a newer time, and that mark may be the map's X, whose time would then move past moments
    /// its peer wrote alone.)
    pub fn may_mark(&self) -> bool {
        self.current()
    }

    /// The history was made whole (by this module or by a catch-up's gap record) while the
    /// replica is current, up to `at` (the last record appended).
    pub fn made_whole(&mut self, at: (u64, u64)) {
        self.unvouched = None;
        self.stale = false;
        self.gap = None;
        self.at = at;
    }

    /// Publish where the history is whole up to for `cdp_status` (`CdpStats::unvouched`).
    pub fn publish(&self, stats: &super::journal::CdpStats) {
        let v = self.unvouched.map_or(0, |(s, _)| s + 1);
        stats
            .unvouched
            .store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The layer above says `v` (at each of its turns).
pub fn told(c: &mut CdpChannel, io: &mut IoCx, v: Vouch) {
    let k = &mut c.vouched;
    k.now = v;
    if v == Vouch::Current {
        k.at = (c.journal.last_seq(), c.journal.last_time());
    }
    if c.off || c.journal.stopped() || !k.by_above {
        return;
    }
    match v {
        Vouch::Current => {
            let Some((after, _)) = k.unvouched else {
                return;
            };
            if c.catchup.is_some() || k.gap.is_some() {
                // A catch-up ends with its own gap record; or this one is on its way.
                return;
            }
            if k.stale {
                let g = c.journal.record(io, Op::Gap, after, 0, None);
                c.vouched.gap = Some(g);
                tracing::info!(
                    after,
                    gap = g,
                    "cdp: the replica is current again; the history is whole from the gap record once it is durable"
                );
            } else {
                whole(c, io);
            }
        }
        Vouch::Unsure | Vouch::Stale => {
            if v == Vouch::Stale {
                if !k.stale {
                    tracing::warn!(
                        "cdp: the replica misses updates its peer acknowledged (resync or new replica): moments from its last current record until it is current again are refused"
                    );
                }
                k.stale = true;
                // A gap record appended before is no longer the history's whole point.
                k.gap = None;
                if let Some(cu) = c.catchup.as_mut() {
                    cu.restale();
                }
            }
            if k.unvouched.is_some() {
                return;
            }
            // The last record appended while vouched for, if it is durable already (one that
            // is not may be lost in a crash: the map must not name it).
            let durable = c.journal.whole_until();
            let (after, after_time) = if durable.0 < k.at.0 { durable } else { k.at };
            if let Err(e) = c.regions.unvouched(after, after_time, clock::now()) {
                tracing::error!(error = %e, "cdp: cannot record that the replica is not vouched for");
                // The stopped journal's map says no more than this X either.
                c.vouched.unvouched = Some((after, after_time));
                c.journal.stop(
                    io,
                    &format!("degraded.map cannot say the replica is not vouched for: {e}"),
                );
                c.degrade();
                return;
            }
            c.vouched.unvouched = Some((after, after_time));
            c.vouched.publish(&c.stats);
            tracing::info!(
                after,
                ?v,
                "cdp: the replica is not vouched for: points after this sequence are refused until it is"
            );
        }
    }
}

/// One turn on the home reactor: make the history whole once the gap record is durable and
/// the replica still current. True when it did.
pub fn step(c: &mut CdpChannel, io: &mut IoCx) -> bool {
    let Some(g) = c.vouched.gap else {
        return false;
    };
    if !c.vouched.current() || c.journal.stopped() || c.journal.durable() < g {
        return false;
    }
    whole(c, io);
    true
}

/// The map says whole again.
fn whole(c: &mut CdpChannel, io: &mut IoCx) {
    match c.regions.whole() {
        Ok(()) => {
            c.vouched
                .made_whole((c.journal.last_seq(), c.journal.last_time()));
            c.vouched.publish(&c.stats);
            tracing::info!("cdp: the replica is vouched for again; the history is whole");
        }
        Err(e) => {
            tracing::error!(error = %e, "cdp: cannot record that the history is whole again");
            c.journal.stop(
                io,
                &format!("degraded.map cannot say the history is whole: {e}"),
            );
            c.degrade();
        }
    }
}
