//! CDP switched on and off while the volume is served (docs/cdp-format.md, "Enabling and
//! disabling at run time"; control methods `cdp_enable`, `cdp_disable`).
//!
//! Model. **On**: [`CdpDevice::open_live`] opens (or creates) the directory off the reactors
//! as a start does, but journals nothing synchronously: it writes `degraded.map` state 1
//! ("not whole after `X`", `X` the history's last sequence, 0 for a new history) first, so
//! readers refuse every point after `X` from then on. Then every reactor's channel is wrapped
//! in place ([`Enable`]; the home's first, so no update handed over finds the base's plain
//! channel), each answering once the updates its old channel started have finished. The
//! control thread then sets [`LiveStart::go`]: the home channel's [`Catchup`] reads the
//! volume in chunks through the base and journals each chunk as an ordinary record, then
//! appends a gap record `after = X`; once it is durable `degraded.map` goes back to state 0.
//! Points up to `X` and from the gap record on are exact; the ones in between are refused
//! (`pit::resolve`), naming both ends.
//!
//! Why the catch-up is exact from the gap on: each chunk is read only once every update that
//! overlaps it and arrived before it finished its base operation (their records are earlier),
//! and an update arriving while a chunk's read is pending or in flight ("the barrier") is held
//! **with** its record until the read completed, then journaled after the chunk's record and
//! only then issued (so is any update held behind such a one). So in sequence order every
//! chunk's record holds what the base held after the updates recorded before it, and the
//! replay of all records up to the gap equals the base. Updates the old stack started are
//! all finished before the first read (the answers of [`Enable::settled`]).
//!
//! **Off** ([`Disable`], three steps, each answered by every reactor concerned before the
//! next): the home stamps a last time mark and stops journaling (updates of its own
//! connections go straight to the base from then on; those handed over still pass through
//! the channel, unjournaled); the other reactors unwrap their channels (they write the base
//! directly again); the home unwraps its channel once nothing is in flight, which seals the
//! segment (its index is written) as a clean stop does, and writes `degraded.map` state 1
//! after the last record (nothing records what changes while CDP is off: a start or a
//! `cdp_enable` that resumes the history journals the whole volume again first). The history
//! ends at the last mark. Each step does nothing where it was done already (the journal
//! stopped, the channel unwrapped), so a disable that failed part way is asked again.
//!
//! Invariant: no acknowledged update is ever missing from a point the history serves: an
//! update is either journaled (before its acknowledgement) or made after the last whole
//! point (switched off: after the last mark; switched on: inside the refused stretch).

use super::degraded::RegionMap;
use super::format::Op;
use super::store::{self, CdpError};
use super::{CdpChannel, CdpDevice, CdpRemote, CdpSettings, clock, journal, rollback, startlog};
use crate::bdev::{BlockDevice, Channel, LOWER_SLOT, ReadStart, find_layer};
use crate::runtime::{Poller, Restack, Restacked, restack_at};
use crate::uring::{Errno, IoCx, IoTag};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};

/// Own-I/O slot of the catch-up's read (under [`LOWER_SLOT`]; no journal or update slot is
/// this large).
pub const CATCHUP_SLOT: u32 = (1 << 30) - 1;

/// Bytes the catch-up reads and journals at a time.
pub const CHUNK: u64 = 256 << 10;

/// A run-time start's progress, shared by the home channel and the control thread.
#[derive(Debug, Default)]
pub struct LiveStart {
    /// Every reactor's old stack has settled: the catch-up may read.
    pub go: AtomicBool,
    /// The history was whole only up to this sequence (0: a new history).
    pub after: AtomicU64,
    /// Its time.
    pub after_time: AtomicU64,
    /// The gap record's sequence once appended (0: not yet).
    pub gap: AtomicU64,
    /// Its time.
    pub gap_time: AtomicU64,
    /// The gap record is durable and `degraded.map` says whole again.
    pub whole: AtomicBool,
    /// Bytes journaled again so far.
    pub done_bytes: AtomicU64,
    /// Updates held with their records behind a chunk's read (overlapping it, or behind
    /// one that did).
    pub held: AtomicU64,
    /// Why the catch-up stopped (the journal stopped, a read failed, switched off first).
    pub failed: OnceLock<String>,
}

/// The home channel's catch-up (see the module's model).
pub struct Catchup {
    state: Arc<LiveStart>,
    next: u64,
    /// The chunk to read next or being read: updates overlapping it are held with their
    /// records until it is journaled.
    chunk: Option<(u64, u64)>,
    reading: bool,
    gap: Option<u64>,
}

impl Catchup {
    /// The catch-up `state` describes, from the volume's start.
    pub fn new(state: Arc<LiveStart>) -> Self {
        Self {
            state,
            next: 0,
            chunk: None,
            reading: false,
            gap: None,
        }
    }

    /// Where the history was whole up to (sequence, time).
    pub fn after(&self) -> (u64, u64) {
        (
            self.state.after.load(Relaxed),
            self.state.after_time.load(Relaxed),
        )
    }

    /// One more update held behind a chunk's read.
    pub fn count_held(&self) {
        self.state.held.fetch_add(1, Relaxed);
    }

    /// The replica became stale after the gap record was appended (the mirror resyncs it):
    /// that record is not where the history is whole; another is appended once the replica is
    /// current again ([`super::vouch`]).
    pub fn restale(&mut self) {
        self.gap = None;
        self.state.gap.store(0, Release);
    }

    /// An update of `range` must wait for the chunk's read (and be journaled after it).
    pub fn blocks(&self, range: (u64, u64)) -> bool {
        self.chunk.is_some_and(|c| super::overlap(c, range))
    }
}

/// The catch-up still has work (the reactor should not sleep): not while it only waits for
/// the layer above to vouch for the replica.
pub fn busy(c: &CdpChannel) -> bool {
    c.catchup.as_ref().is_some_and(|k| {
        k.state.go.load(Acquire) && !k.reading && (k.next < c.size || c.vouched.current())
    })
}

/// One turn of the catch-up on the home reactor: read the next chunk when nothing earlier
/// overlaps it, append the gap record after the last, and mark the history whole once that
/// is durable. True when it did something.
pub fn step(c: &mut CdpChannel, io: &mut IoCx) -> bool {
    let Some(k) = c.catchup.as_mut() else {
        return false;
    };
    if !k.state.go.load(Acquire) || k.reading {
        return false;
    }
    if c.journal.stopped() {
        fail(c, io, "the journal stopped");
        return true;
    }
    if let Some(g) = k.gap {
        // Whole only while the layer above (the mirror) vouches for the replica.
        if c.journal.durable() < g || !c.vouched.current() {
            return false;
        }
        let state = Arc::clone(&k.state);
        c.catchup = None;
        match c.regions.whole() {
            Ok(()) => {
                c.whole_after = None;
                c.vouched
                    .made_whole((c.journal.last_seq(), c.journal.last_time()));
                c.vouched.publish(&c.stats);
                state.whole.store(true, Release);
                tracing::info!(
                    gap = g,
                    "cdp: switched on: the history is whole from the gap record on"
                );
            }
            Err(e) => {
                let _ = state.failed.set(format!(
                    "the gap record is durable but degraded.map cannot say so ({e}): points after sequence {} stay refused until the next start",
                    state.after.load(Relaxed)
                ));
            }
        }
        return true;
    }
    if k.next >= c.size {
        if !c.vouched.current() {
            // The replay equals the base; the base is the volume only once it is vouched for.
            return false;
        }
        let after = k.state.after.load(Relaxed);
        let g = c.journal.record(io, Op::Gap, after, 0, None);
        let k = c.catchup.as_mut().expect("checked above");
        k.gap = Some(g);
        k.state.gap.store(g, Release);
        k.state.gap_time.store(c.journal.last_time(), Relaxed);
        return true;
    }
    let range = *k
        .chunk
        .get_or_insert((k.next, (k.next + CHUNK).min(c.size)));
    // Every update that arrived before the chunk's barrier and overlaps it must have reached
    // the base (held ones too); the deferred ones come after the read.
    let earlier = c.ops.iter().any(|(key, p)| {
        p.base.is_none()
            && super::overlap(p.range, range)
            && !c.held.iter().any(|h| h.key == key && h.deferred)
    });
    if earlier {
        return false;
    }
    k.reading = true;
    let own = IoTag::channel(c.vol, LOWER_SLOT | CATCHUP_SLOT);
    let len = (range.1 - range.0) as u32;
    let mut data = io.spare_vecs.pop().unwrap_or_default();
    let r = match c.inner.read(io, own, range.0, len) {
        ReadStart::Pending => return true,
        ReadStart::Ready(d) => {
            data.clear();
            data.extend_from_slice(d);
            Ok(())
        }
        ReadStart::Failed(e) => Err(e),
    };
    read_done(c, io, r, &data);
    io.recycle_vec(data);
    true
}

/// The catch-up's read of its chunk finished: journal it, then the updates held behind it.
pub fn read_done(c: &mut CdpChannel, io: &mut IoCx, result: Result<(), Errno>, data: &[u8]) {
    let Some(k) = c.catchup.as_mut() else {
        return;
    };
    k.reading = false;
    let Some((off, end)) = k.chunk else {
        return;
    };
    match result {
        Ok(()) if data.len() as u64 == end - off => {
            let (op, payload) = if data.iter().all(|&b| b == 0) {
                (Op::Zeroes, None)
            } else {
                (Op::Write, Some(data))
            };
            k.next = end;
            k.chunk = None;
            k.state.done_bytes.store(end, Relaxed);
            c.journal.record(io, op, off, end - off, payload);
        }
        Ok(()) => fail(c, io, &format!("reading the volume at {off}: short read")),
        Err(e) => fail(
            c,
            io,
            &format!("reading the volume at {off}: errno {}", e.0),
        ),
    }
    release_deferred(c, io);
}

/// Journal the held updates whose records waited for the chunk (in arrival order), then
/// start what may start.
fn release_deferred(c: &mut CdpChannel, io: &mut IoCx) {
    if c.catchup.as_ref().is_some_and(|k| k.chunk.is_some()) {
        return;
    }
    for i in 0..c.held.len() {
        if !c.held[i].deferred {
            continue;
        }
        c.held[i].deferred = false;
        let (key, op, offset, len) = {
            let h = &c.held[i];
            (h.key, h.op, h.offset, h.len)
        };
        let data = std::mem::take(&mut c.held[i].data);
        let prev = c.journal.last_seq();
        let q = c.record(io, op, offset, len, &data);
        c.ops[key].before = (prev, c.journal.last_time().saturating_sub(1));
        c.held[i].data = data;
        c.ops[key].last_seq = q;
    }
    c.release_held(io);
}

/// The catch-up cannot finish: the journal stops (degraded mode: `degraded.map` keeps saying
/// the history is whole only up to where it was before), updates held for it go on.
fn fail(c: &mut CdpChannel, io: &mut IoCx, why: &str) {
    let Some(k) = c.catchup.take() else {
        return;
    };
    let _ = k.state.failed.set(format!(
        "the catch-up stopped after {} bytes: {why}",
        k.next
    ));
    if !c.journal.stopped() && !c.off {
        c.journal
            .stop(io, &format!("switched on at run time: {why}"));
    }
    c.degrade();
    release_deferred(c, io);
}

impl CdpDevice {
    /// The layer of volume `vol` (home reactor `home`) over `inner`, a served volume's stack,
    /// to be switched on at run time: the directory is opened or created and recovered as at
    /// a start, `degraded.map` says "not whole after the history's end" before anything is
    /// journaled, and the catch-up ([`Catchup`]) journals the whole volume once the channels
    /// are wrapped ([`Enable`]). Refused as at a start (another daemon or a rollback holds the
    /// directory, a rollback not done, a history of another size).
    pub fn open_live(
        inner: Arc<dyn BlockDevice>,
        s: &CdpSettings,
        vol: usize,
        home: usize,
    ) -> Result<Self, CdpError> {
        let info = inner.info();
        let (lock, marker) = rollback::claim_dir(&s.dir)?;
        if let Some(m) = marker
            && !m.done
        {
            return Err(CdpError::Refused(format!(
                "{}: {}",
                s.dir.display(),
                m.describe()
            )));
        }
        // A new history's base copy is empty: the catch-up journals the whole volume.
        let meta = store::open_or_create(&s.dir, info.size, info.block_size, None)?;
        let h = rollback::load_for_writing(&s.dir)?;
        // Before any record of this run (done.rs); the catch-up's records are done as they
        // are journaled.
        let published = super::done::Published::create(&s.dir, meta.vol_id, h.last_seq)?;
        let segno = h.segments.last().map_or(0, |g| g.header.segno) + 1;
        let (mut regions, prior) = RegionMap::open(&s.dir, info.size)?;
        let (after, after_time) = prior.whole_until(h.last_seq, h.last_time);
        regions.unknown(after, after_time, clock::now())?;
        // (The catch-up journals the whole volume again: nothing is compared.)
        let log = startlog::StartLog::new(
            &s.dir,
            meta,
            s.segment_size,
            segno,
            (h.last_seq, h.last_time),
            h.last_seq + 1,
        )?;
        let spare = Arc::new(journal::Spare::default());
        spare.zero.store(s.prezero, Relaxed);
        spare.map_disk.store(s.sync.maps_disk(), Relaxed);
        spare.want.store(log.segno() + 1, Release);
        let stats = journal::CdpStats::default();
        stats.window_start.store(h.first_time(), Relaxed);
        stats.published(published.value(), h.last_time);
        let live = LiveStart::default();
        live.after.store(after, Relaxed);
        live.after_time.store(after_time, Relaxed);
        tracing::info!(dir = %s.dir.display(), after, "cdp: switched on at run time; the volume is journaled again before the history is whole");
        Ok(Self {
            inner,
            instance: super::next_instance(),
            live: Some(Arc::new(live)),
            vol,
            home,
            mailboxes: OnceLock::new(),
            stats: Arc::new(stats),
            dir: s.dir.clone(),
            created: meta.created,
            spare: Arc::clone(&spare),
            segment_size: s.segment_size,
            sync: s.sync,
            start: Mutex::new(Some((
                log.into_start(spare),
                regions,
                if s.vouched {
                    super::vouch::Vouched::under(None, false)
                } else {
                    super::vouch::Vouched::none()
                },
            ))),
            lock: Mutex::new(Some(lock)),
            done: Mutex::new(Some(published)),
            at_stop: super::AtStop::of(s),
            // (Its catch-up journals the whole volume after the history's end.)
            start_flushed: (h.last_seq, h.last_time),
        })
    }
}

/// One reactor's part of switching CDP on: wrap the channel `depth` layers down (0: the
/// volume's channel; 1: the one under the mirror) in place (the home: the journal writer and
/// the catch-up; another: hand updates to the home), answered once the updates the old
/// channel started have finished.
pub struct Enable {
    /// The layer switched on.
    pub dev: Arc<CdpDevice>,
    /// Where it goes in the stack.
    pub depth: usize,
}

impl Enable {
    fn wrap(&self, io: &mut IoCx, reactor: usize, old: Box<dyn Channel>) -> Restacked {
        if reactor == self.dev.home {
            self.dev
                .home_channel(io, old)
                .map(|c| Box::new(c) as Box<dyn Channel>)
                .map_err(|(old, e)| (old, e.to_string()))
        } else if self.dev.mailboxes.get().is_none() {
            Err((old, "cdp: reactor mailboxes not set".into()))
        } else {
            let c = self
                .dev
                .remote_channel(io, old)
                .expect("mailboxes checked above");
            Ok(Box::new(c))
        }
    }
}

impl Restack for Enable {
    fn restack(&mut self, io: &mut IoCx, reactor: usize, old: Box<dyn Channel>) -> Restacked {
        restack_at(old, self.depth, |c| self.wrap(io, reactor, c))
    }

    fn poller(&mut self, reactor: usize) -> Option<Box<dyn Poller>> {
        (reactor == self.dev.home).then(|| Box::new(self.dev.poller()) as Box<dyn Poller>)
    }

    fn settled(&mut self, io: &crate::uring::IoCx, chan: &mut dyn Channel) -> bool {
        // Under the mirror the base's updates in flight are the engine's own operations
        // (`Channel::updates_in_flight` counts them).
        if let Some(c) = find_layer::<CdpChannel>(chan) {
            return !c.inner.updates_in_flight(io);
        }
        find_layer::<CdpRemote>(chan).is_none_or(|c| !c.inner.updates_in_flight(io))
    }
}

/// One step of switching CDP off (see the module's model) on the layer `depth` layers down
/// the volume's stack (as [`Enable`]).
pub struct Disable {
    /// Which step.
    pub step: DisableStep,
    /// Where the layer is in the stack.
    pub depth: usize,
}

/// The steps of [`Disable`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisableStep {
    /// The home: stamp the last time mark, stop journaling; answered once every record
    /// queued is durable.
    Stop,
    /// Another reactor: unwrap (its updates go to the base directly again); answered once
    /// every message it holds for the home is delivered.
    Remote,
    /// The home, once nothing is in flight: write `degraded.map` (whole up to the last
    /// record), unwrap and seal the segment (refused while anything is in flight, the
    /// control thread asks again; or when the map cannot be written, the layer then stays).
    Unwrap,
}

impl Restack for Disable {
    fn restack(&mut self, io: &mut IoCx, _reactor: usize, mut old: Box<dyn Channel>) -> Restacked {
        match self.step {
            DisableStep::Stop => {
                let Some(c) = find_layer::<CdpChannel>(&mut *old) else {
                    // Unwrapped by an earlier disable whose answer came too late.
                    return Ok(old);
                };
                match stop(c, io) {
                    Ok(()) => Ok(old),
                    Err(e) => Err((old, e)),
                }
            }
            DisableStep::Remote => restack_at(old, self.depth, |mut c| {
                let Some(r) = find_layer::<CdpRemote>(&mut *c) else {
                    // Unwrapped by an earlier disable that failed later.
                    return Ok(c);
                };
                Ok(std::mem::replace(
                    &mut r.inner,
                    Box::new(crate::bdev::NoChannel),
                ))
            }),
            DisableStep::Unwrap => restack_at(old, self.depth, |mut layer| {
                let Some(c) = find_layer::<CdpChannel>(&mut *layer) else {
                    // Unwrapped by an earlier disable whose answer came too late.
                    return Ok(layer);
                };
                match unwrap(c, io) {
                    Ok(inner) => {
                        // Dropping the layer's channel seals the segment (a clean stop's
                        // index; not over a `volatile_cache` device, CdpSettings::base_cache).
                        drop(layer);
                        Ok(inner)
                    }
                    Err(e) => Err((layer, e)),
                }
            }),
        }
    }

    fn settled(&mut self, _io: &crate::uring::IoCx, chan: &mut dyn Channel) -> bool {
        match self.step {
            DisableStep::Stop => find_layer::<CdpChannel>(chan).is_none_or(|c| {
                !c.journal.has_queued()
                    && c.journal.in_flight() == 0
                    && (c.journal.stopped()
                        || c.journal.synced() >= c.journal.durable() && c.journal.marks_synced())
            }),
            DisableStep::Remote => crate::runtime::mailbox::held() == 0,
            DisableStep::Unwrap => true,
        }
    }
}

/// [`DisableStep::Stop`] on the home channel.
fn stop(c: &mut CdpChannel, io: &mut IoCx) -> Result<(), String> {
    if c.off {
        // Stopped by an earlier disable that failed later: its last mark stands.
        return Ok(());
    }
    if c.catchup.is_some() {
        fail(c, io, "switched off before it finished");
    }
    // From here on updates reach the base without a record: `degraded.map` says so first
    // (whole only up to what is durable now), so a crash before the final write below
    // (Unwrap) cannot leave a history that looks whole but misses acknowledged writes.
    let prev = c.regions.stopped_after();
    let end = prev
        .or(c.whole_after)
        .unwrap_or_else(|| c.journal.whole_until());
    // (Never past a record whose base update failed.)
    let (after, after_time) = c.base_failed.map_or(end, |b| b.min(end));
    if let Err(e) = c.regions.unknown(after, after_time, clock::now()) {
        return Err(format!(
            "degraded.map cannot say the history ends here: {e}"
        ));
    }
    c.off_prev = Some(prev);
    // The last mark ends the window: only while vouched for (an idle journal rewrites its last
    // lone mark in place, which may be the map's X).
    if c.vouched.may_mark() {
        c.journal.mark(io);
    }
    // With `sync = "flush"` the last mark (and every record before it) is synced before this
    // step is settled: the history the disable answers is durable (a lone mark rewritten in
    // place too: its sequence number may have been synced before, its newer time not).
    c.journal.want_sync_marks();
    c.off = true;
    c.stats.off.store(true, Relaxed);
    Ok(())
}

/// [`DisableStep::Unwrap`] on the home channel: the channel under it, taken out of it (the
/// caller drops the layer's channel).
fn unwrap(c: &mut CdpChannel, io: &mut IoCx) -> Result<Box<dyn Channel>, String> {
    if !c.ops.is_empty()
        || !c.held.is_empty()
        || c.journal.in_flight() > 0
        || c.journal.has_queued()
        || !c.done.is_empty()
    {
        return Err("busy".into());
    }
    // Nothing records what changes from now on: `degraded.map` says the history is whole
    // only up to its end, so a start that resumes it (`[volume.cdp]`) journals the whole
    // volume again, and so does the next `cdp_enable`. Every record of an update started
    // before the switch is durable now: the history is whole up to the last of them (the
    // final time mark), unless the map already said less before the switch.
    let before = match c.off_prev.take() {
        Some(prev) => prev,
        None => c.regions.stopped_after(),
    };
    let end = before
        .or(c.whole_after)
        .unwrap_or_else(|| c.journal.whole_until());
    // Never past a record whose base update failed (also one that failed after the first
    // step: the map says so already, and this write must not raise it again).
    let (after, after_time) = c.base_failed.map_or(end, |b| b.min(end));
    if let Err(e) = c.regions.unknown(after, after_time, clock::now()) {
        // The map still says what the first step wrote (whole only up to what was durable
        // then: safe, but short of the last mark this disable answers). The layer stays, the
        // journal stopped; asked again, this step writes it.
        c.off_prev = Some(before);
        return Err(format!(
            "degraded.map cannot say the history ends at sequence {after}: {e}"
        ));
    }
    c.regions.active = false;
    c.journal.close(io);
    Ok(std::mem::replace(
        &mut c.inner,
        Box::new(crate::bdev::NoChannel),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::degraded::RegionMap;
    use super::super::pit::{self, Point};
    use super::super::startlog::StartLog;
    use super::super::store::{self, CdpError, Load};
    use super::Op;

    /// What readers make of a history switched on at run time: while `degraded.map` says
    /// "whole only up to X" every later point is refused; once the gap record is durable and
    /// the map whole, the points between are refused as a gap; with X = 0 (a new history)
    /// nothing before the gap record is served, its start neither.
    #[test]
    fn readers_refuse_what_a_run_time_start_has_not_made_whole() {
        for x0 in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let size = 1 << 20;
            let meta = store::open_or_create(d.path(), size, 4096, None).unwrap();
            let mut log = StartLog::new(d.path(), meta, 4 << 20, 1, (0, meta.created), 1).unwrap();
            let before = if x0 {
                0
            } else {
                log.append(Op::Write, 0, 4096, &[7u8; 4096]).unwrap()
            };
            let (mut m, _) = RegionMap::open(d.path(), size).unwrap();
            m.unknown(before, log.last_time, super::clock::now())
                .unwrap();
            // The catch-up's record, then a reader.
            let caught = log
                .append(Op::Write, 0, size, &vec![9u8; size as usize])
                .unwrap();
            let h = store::load(d.path(), Load::ReadOnly).unwrap();
            assert_eq!(h.open_gap.map(|g| g.0), Some(before));
            let r = pit::resolve(&h, Point::Seq(caught));
            assert!(matches!(r, Err(CdpError::NotWhole { .. })), "{r:?}");
            let r = pit::resolve(&h, Point::Seq(before));
            assert_eq!(r.is_ok(), !x0, "the old end (x0 {x0}): {r:?}");
            // The gap record, then whole.
            let gap = log.append(Op::Gap, before, 0, &[]).unwrap();
            m.whole().unwrap();
            let h = store::load(d.path(), Load::ReadOnly).unwrap();
            assert_eq!(h.open_gap, None);
            let r = pit::resolve(&h, Point::Seq(caught));
            assert!(matches!(r, Err(CdpError::InGap { .. })), "{r:?}");
            assert_eq!(pit::resolve(&h, Point::Seq(gap)).unwrap(), gap);
            let r = pit::resolve(&h, Point::Seq(before));
            assert_eq!(r.is_ok(), !x0, "the old end (x0 {x0}): {r:?}");
            let r = pit::resolve(&h, Point::Time(meta.created));
            assert_eq!(r.is_ok(), !x0, "the history's start (x0 {x0}): {r:?}");
        }
    }
}
