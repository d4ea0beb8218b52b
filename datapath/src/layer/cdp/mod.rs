//! Continuous data protection: a layer that journals every update of a volume at this site,
//! so any moment of its history can be restored (design and formats: docs/cdp-format.md).
//!
//! Model: [`CdpDevice`] wraps the volume's base (under the mirror when the volume is
//! mirrored: every update this site applies to its replica passes through it). On the
//! volume's home reactor (`index % cores`, the mirror engine's reactor too) its channel
//! ([`CdpChannel`]) issues each update to the base and, in the same turn, copies its record
//! into the journal writer's batch ([`journal::Journal`]); the layer's poller ([`CdpPoller`],
//! registered after the mirror's so it runs last in a turn) appends the turn's batches and
//! hands finished updates back. An update completes when its base operation is done and its
//! records are durable. Reads and flushes of local callers pass straight to the base. Other
//! reactors' channels ([`CdpRemote`]) read the base directly and hand updates to the home
//! reactor, like the mirror's.
//!
//! Own I/O: base operations and journal appends carry tags owned by the volume's channel with
//! [`crate::bdev::LOWER_SLOT`] set, so a layer above (the mirror) hands their completions down
//! to this channel ([`Channel::on_own_io`]); this layer answers its callers through the
//! poller, whether they are connections or the layer above (its tags route back to it).
//!
//! A base operation or flush that fails after its update's record was journaled stops the
//! journal (degraded mode, [`degraded`]), or lowers where the history ends if it had ended
//! already: the record is not what the volume holds (`failure.rs`).
//!
//! Recovery ([`store::load`]) runs when the device is built, before the reactors start:
//! it cuts a torn tail, sets damaged segments aside, rebuilds missing indexes, and the writer
//! starts a new segment; after a crash the tail's records are compared with the base and the
//! base's bytes journaled where they differ ([`tail`]); after a clean stop, a base file
//! written since (without the layer, or the directory put back from an older copy: [`stamp`])
//! has the whole volume journaled again. Points in time are read from the directory alone
//! ([`pit`]).
//!
//! At run time ([`live`]) the layer is inserted into a served volume's stack (each reactor's
//! channel is wrapped in place, the home's first) and journals the whole volume again before
//! a gap record makes its history whole; taking it out stamps a last time mark, stops
//! journaling, and unwraps the channels once nothing is in flight (the segment is sealed as
//! at a clean stop). Each layer instance has a generation ([`CdpDevice::instance`]): a poller
//! serves only the channel of its own generation and retires when it is gone.

pub mod base_direct;
pub mod base_map;
pub mod bookmark;
pub mod clock;
pub mod degraded;
pub mod done;
pub mod error;
mod failure;
pub mod format;
pub mod journal;
pub mod kept;
pub mod live;
pub mod mapped;
pub mod names;
pub mod pit;
pub mod ranges;
pub mod retain;
pub mod rollback;
pub mod stamp;
pub mod startlog;
pub mod store;
pub mod tail;
pub mod view;
pub mod vouch;

#[cfg(test)]
mod audit27_tests;
#[cfg(test)]
mod audit_tests;

use crate::bdev::{
    BdevError, BlockDevice, BlockOp, BlockRequest, Channel, DeviceInfo, LOWER_SLOT, ReadStart,
    Start, find_layer,
};
use crate::runtime::poller::Completion;
use crate::runtime::{Mailbox, Msg, PollCx, Poller, PollerSource};
use crate::uring::{Errno, IoCx, IoTag};
use format::Op;
use journal::{CdpStats, JOURNAL_SLOT, Journal};
use slab::Slab;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use store::CdpError;

/// How a volume's CDP layer is set up.
#[derive(Clone, Debug)]
pub struct CdpSettings {
    /// The volume's CDP directory.
    pub dir: PathBuf,
    /// Bytes per segment file.
    pub segment_size: u64,
    /// The base is a file whose content the history starts from (its first start copies it
    /// into the base copy; a run-time switch-on, whose catch-up journals the whole volume,
    /// passes it only for the clean stop's sync of the base); `None`: the base starts all
    /// zeroes.
    pub seed: Option<PathBuf>,
    /// The base loses its content at every start (RAM): each start journals an unmap of the
    /// whole volume first.
    pub volatile: bool,
    /// The base's device keeps written data in a volatile cache that it writes back only on a
    /// flush, a FUA write or when it is dropped, after this layer (`volatile_cache`, a test
    /// device): a clean stop cannot make the base durable before it seals the log, so it never
    /// seals it clean, and the next start compares the tail with the base as after a crash.
    pub base_cache: bool,
    /// Segments prepared ahead are written with zeroes once (their appends then need no
    /// allocation by the filesystem), at the cost of writing each segment twice.
    pub prezero: bool,
    /// When appends are durable: `sync = "flush"` (made durable by the volume's flushes and
    /// FUA writes, not each by itself; docs/cdp-format.md, "Write path"), and `fail_sync`.
    pub sync: journal::SyncPolicy,
    /// A layer above vouches for the replica (the mirror, [`crate::bdev::Vouch`]): the history
    /// is whole only while it says the replica is current ([`vouch`]); until it first does,
    /// nothing after the recovered end is served.
    pub vouched: bool,
}

/// A CDP volume's facts for the control plane.
#[derive(Clone)]
pub struct CdpInfo {
    /// Volume index.
    pub vol: usize,
    /// Its group (restored to one time together).
    pub group: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The reactor running its journal.
    pub home: usize,
    /// Where its history starts (site time, ns).
    pub created: u64,
    /// Published counters.
    pub stats: Arc<CdpStats>,
    /// The history's age target (`retention_age`), if any.
    pub retention_age_ns: Option<u64>,
    /// The layer (switched off at run time: its history stays readable).
    pub device: Arc<CdpDevice>,
}

impl CdpInfo {
    /// `cdp_status`'s view (docs/control.md).
    pub fn snapshot(&self) -> serde_json::Value {
        let s = &self.stats;
        let start = s.window_start.load(Relaxed).max(self.created);
        let end = s.window_end();
        let history_s = end.saturating_sub(start) as f64 / 1e9;
        let short = s.short_by_size.load(Relaxed);
        serde_json::json!({
            "group": self.group,
            "dir": self.dir.display().to_string(),
            "home_reactor": self.home,
            "window_start_ns": start,
            "window_end_ns": end,
            "durable_seq": s.durable_seq.load(Relaxed),
            "done_seq": s.done_seq.load(Relaxed),
            "sync": if self.device.sync.on_flush { "flush" } else { "append" },
            "synced_seq": s.synced_seq.load(Relaxed),
            "syncs": s.syncs.load(Relaxed),
            "records": s.records.load(Relaxed),
            "journal_bytes": s.journal_bytes.load(Relaxed),
            "appends": s.batches.load(Relaxed),
            "cached_appends": s.cached_appends.load(Relaxed),
            "mapped_appends": s.mapped_appends.load(Relaxed),
            "segment": s.segment.load(Relaxed),
            "switches_prepared": s.switches_prepared.load(Relaxed),
            "switches_created": s.switches_created.load(Relaxed),
            "switches_unmapped": s.switches_unmapped.load(Relaxed),
            "unmap_waits_expired": s.unmap_waits_expired.load(Relaxed),
            "mapped_late": s.mapped_late.load(Relaxed),
            "journal": if s.off.load(Relaxed) {
                "off"
            } else if s.stopped.load(Relaxed) {
                "degraded"
            } else {
                "running"
            },
            "catching_up": self.device.live.as_ref().is_some_and(|l| {
                !s.off.load(Relaxed) && !l.whole.load(Relaxed) && l.failed.get().is_none()
            }),
            // The catch-up's progress (bytes of the volume journaled again).
            "catch_up_bytes": self.device.live.as_ref().map(|l| l.done_bytes.load(Relaxed)),
            // Under the mirror: the replica is not vouched for (down, fenced, resynced).
            "vouched": s.unvouched.load(Relaxed) == 0,
            "whole_until_seq": s.unvouched.load(Relaxed).checked_sub(1),
            "changed_regions": s.changed_regions.load(Relaxed),
            "changed_bytes": s.changed_regions.load(Relaxed) << degraded::REGION_SHIFT,
            "degraded_since_ns": Some(s.stopped_at.load(Relaxed)).filter(|&t| t > 0),
            "degraded_note": s.stopped.load(Relaxed).then(|| format!(
                "the journal stopped after sequence {}: tracking changed regions only ({} MiB); the next start journals them again and the history is whole from there",
                s.durable_seq.load(Relaxed),
                s.changed_regions.load(Relaxed)
            )),
            // What held retention's last pass back (a bookmark or an open view and its point).
            "consolidation_held_by": s.held.lock().unwrap_or_else(|e| e.into_inner()).what.clone(),
            "rollback": rollback::load_marker(&self.dir)
                .map(|m| m.map(|m| m.describe()))
                .unwrap_or_else(|e| Some(e.to_string())),
            "history_s": history_s,
            "history_target_s": self.retention_age_ns.map(|a| a as f64 / 1e9),
            "history_short": short,
            "history_note": (short && self.retention_age_ns.is_some()).then(|| format!(
                "history now {:.1} h, target {:.1} h: retention_bytes consolidated records younger than retention_age",
                history_s / 3600.0,
                self.retention_age_ns.unwrap_or(0) as f64 / 3.6e12
            )),
        })
    }
}

/// Smallest segment: two of the largest batches (a 1 MiB record with its padding) fit.
pub const MIN_SEGMENT: u64 = 4 << 20;

/// A volume's CDP layer.
pub struct CdpDevice {
    inner: Arc<dyn BlockDevice>,
    /// This layer instance (a poller serves only its own instance's channel).
    pub instance: u64,
    /// Set when the layer was switched on at run time: the catch-up's progress.
    pub live: Option<Arc<live::LiveStart>>,
    vol: usize,
    /// The reactor that runs the journal.
    pub home: usize,
    /// Every reactor's mailbox (set before the reactors open their channels).
    pub mailboxes: OnceLock<Vec<Arc<Mailbox>>>,
    /// Published counters.
    pub stats: Arc<CdpStats>,
    /// The directory.
    pub dir: PathBuf,
    /// Where the history starts (site time, ns).
    pub created: u64,
    /// The next segment, prepared off the reactors ([`journal::spare_thread`]).
    pub spare: Arc<journal::Spare>,
    /// Segment size.
    pub segment_size: u64,
    /// When appends are durable (`sync = "flush"`, `fail_sync`).
    pub sync: journal::SyncPolicy,
    start: Mutex<Option<(journal::Start, degraded::RegionMap, vouch::Vouched)>>,
    /// What a clean stop does with the base before it seals the journal.
    at_stop: AtStop,
    /// The last record the base is known to hold durably when the writer starts, and its
    /// time (the channel's first `flushed`).
    start_flushed: (u64, u64),
    /// `daemon.lock`, held until the daemon stops (a rollback in place is refused meanwhile).
    lock: Mutex<Option<std::fs::File>>,
    /// The done watermark readers of the running history stop at ([`done`]), published before
    /// the first record; the home channel takes it (and holds its lock while it exists).
    done: Mutex<Option<done::Published>>,
}

/// The volume of `dir`'s history (`size` bytes) is about to be served without its journal,
/// because the layer could not start (its device is full or failing): `degraded.map` says the
/// history is not whole after where it is whole now, every region unknown, before anything is
/// served. The next start, or a run-time `cdp_enable`, then journals the whole volume again
/// and refuses the points in between (a rollback in place is refused meanwhile: the history
/// has not caught up). Returns that point (sequence, time). If the history cannot be read
/// (where it is whole is then unknown: writing "not whole after 0" would give up every
/// point for good), another process holds the directory, or the map cannot be written, the
/// volume must not be served: the error is returned.
pub fn not_journaled(dir: &std::path::Path, size: u64) -> Result<(u64, u64), CdpError> {
    // Held while the map is written: no rollback may start on a history that still looks
    // whole while the volume is about to be served.
    let (_lock, marker) = rollback::claim_dir(dir)?;
    if let Some(m) = marker.filter(|m| !m.done) {
        return Err(CdpError::Refused(format!(
            "{}: {}",
            dir.display(),
            m.describe()
        )));
    }
    let h = store::load(dir, store::Load::ReadOnly)?;
    // The map's times below come after the history's (a read-only load leaves the clock).
    clock::not_before(h.last_time);
    let (mut map, prior) = degraded::RegionMap::open(dir, size)?;
    let (after, after_time) = prior.whole_until(h.last_seq, h.last_time);
    map.unknown(after, after_time, clock::now())?;
    Ok((after, after_time))
}

impl CdpDevice {
    /// Journal updates of `inner` (volume index `vol`, journal on reactor `home`): open or
    /// create the directory, recover its history and start a new segment.
    pub fn open(
        inner: Arc<dyn BlockDevice>,
        s: &CdpSettings,
        vol: usize,
        home: usize,
    ) -> Result<Self, CdpError> {
        let info = inner.info();
        // No rollback in place runs, none was left half done, no other daemon journals here.
        let (lock, marker) = rollback::claim_dir(&s.dir)?;
        match marker {
            Some(m) if !m.done => {
                return Err(CdpError::Refused(format!(
                    "{}: {}; the volume is not served until then (twinblk cdp rollback)",
                    s.dir.display(),
                    m.describe()
                )));
            }
            Some(m) => {
                tracing::warn!(dir = %s.dir.display(), "cdp: {}", m.describe());
            }
            None => {}
        }
        let meta = store::open_or_create(&s.dir, info.size, info.block_size, s.seed.as_deref())?;
        let h = rollback::load_for_writing(&s.dir)?;
        // Before any record of this run: readers of the history stop at the done watermark
        // while this writer runs (done.rs).
        let mut published = done::Published::create(&s.dir, meta.vol_id, h.last_seq)?;
        let segno = h.segments.last().map_or(0, |g| g.header.segno) + 1;
        let (mut regions, mut prior) = degraded::RegionMap::open(&s.dir, info.size)?;
        // A log sealed by a clean stop says the volume is its newest point, unless the base
        // was written since (without the layer, or the directory put back from an older copy):
        // then the history is not whole after its end, and the whole volume is journaled
        // again below (stamp.rs). Also when the journal had stopped in that run (the map's
        // changed regions do not name the writes made since; before session 27 only they were
        // journaled again): the history stays whole up to where it stopped.
        // A log not sealed (a crash, or a directory put back from a copy taken while a daemon
        // ran) over a base file written well after the history's last record: the same
        // (stamp::written_after; before session 28 only the tail was compared).
        if let Some(base) = s.seed.as_deref()
            && !s.volatile
            && !matches!(prior, degraded::Prior::Stopped { regions: None, .. })
            && let Some(last) = h.segments.last()
            && if h.sealed {
                stamp::changed(&s.dir, &meta, &last.header, base)
            } else {
                stamp::written_after(base, h.last_time)
            }
        {
            let (after, after_time) = prior.whole_until(h.last_seq, h.last_time);
            tracing::warn!(dir = %s.dir.display(), base = %base.display(), after,
                "cdp: the base was written since the clean stop that sealed the history (without this journal, or the directory is an older copy): the history is not whole after its end, and the whole volume is journaled again");
            regions.unknown(after, after_time, clock::now())?;
            prior = degraded::Prior::Stopped {
                after,
                after_time,
                regions: None,
            };
        }
        // After a crash: updates in flight then may have records the base never got
        // (tail.rs); from now on the volume is what the base holds. (Not when the catch-up
        // below journals the whole volume from the base anyway.)
        let compare = match s.seed.as_deref() {
            Some(base)
                if !s.volatile
                    && !h.sealed
                    && !matches!(prior, degraded::Prior::Stopped { regions: None, .. }) =>
            {
                tail::compare_from(&h).map(|from| (base, from))
            }
            _ => None,
        };
        // Until the comparison's records are durable, the segments this start creates keep
        // the crashed run's mark: a start killed part way compares again from there.
        let low = compare.map_or(h.last_seq + 1, |(_, from)| from);
        // And the base is not known to hold anything from the mark on durably (the killed
        // run's last writes, and the base's bytes journaled below, may sit in the device's
        // cache) until a flush of this run completes (the writer's first turn issues one).
        let start_flushed = {
            let seq = low - 1;
            let time = h
                .entries()
                .map(|(_, e)| e)
                .take_while(|e| e.seq <= seq)
                .last()
                .map_or(h.first_time(), |e| e.time);
            (seq, if seq == h.last_seq { h.last_time } else { time })
        };
        let mut log = startlog::StartLog::new(
            &s.dir,
            meta,
            s.segment_size,
            segno,
            (h.last_seq, h.last_time),
            low,
        )?;
        // Under the mirror: not vouched for after the recovered end (or after where an earlier
        // run's map said the history ended) until the mirror says the replica is current.
        // (Never past what was recovered: a map may name a record a cut removed.)
        let end = prior.whole_until(h.last_seq, h.last_time);
        if s.vouched && s.volatile && prior == degraded::Prior::Whole {
            // Before the record of the empty base: that is no moment of a mirrored volume.
            regions.unvouched(end.0, end.1, clock::now())?;
        }
        if s.volatile {
            // The base starts empty: the history says so before anything else.
            log.append(Op::Unmap, 0, info.size, &[])?;
        } else if let Some((base, _)) = compare {
            let journaled_again = match &prior {
                degraded::Prior::Stopped {
                    regions: Some(bits),
                    ..
                } => Some(bits),
                _ => None,
            };
            let pieces = tail::differences(&h, base, |off, bytes| {
                // Regions journaled from the base below anyway are left to that.
                if let Some(bits) = journaled_again {
                    let first = off >> degraded::REGION_SHIFT;
                    let last = (off + bytes.len() as u64 - 1) >> degraded::REGION_SHIFT;
                    if (first..=last).all(|r| degraded::is_set(bits, r)) {
                        return Ok(());
                    }
                }
                if bytes.iter().all(|&b| b == 0) {
                    log.append(Op::Zeroes, off, bytes.len() as u64, &[])?;
                } else {
                    log.append(Op::Write, off, bytes.len() as u64, bytes)?;
                }
                Ok(())
            })?;
            if pieces > 0 {
                tracing::warn!(dir = %s.dir.display(), pieces,
                    "cdp: after a crash, the base differs from the history's newest records (updates in flight, never acknowledged); its content is journaled");
            }
        }
        if prior != degraded::Prior::Whole {
            if !s.volatile && s.seed.is_none() {
                return Err(CdpError::Meta {
                    path: s.dir.join(degraded::FILE),
                    why: "the journal stopped in an earlier run and this base is neither a file nor RAM: its changed regions cannot be journaled again".into(),
                });
            }
            let base = if s.volatile { None } else { s.seed.as_deref() };
            log.catch_up(&prior, end.0, base, info.size)?;
        }
        let vouched = if s.vouched {
            regions.unvouched(end.0, end.1, clock::now())?;
            // A RAM replica lost its content: it is stale until resynced; so may be one whose
            // previous run ended not whole (a resync cut short).
            vouch::Vouched::under(Some(end), s.volatile || prior != degraded::Prior::Whole)
        } else {
            regions.whole()?;
            vouch::Vouched::none()
        };
        tracing::info!(dir = %s.dir.display(), segments = h.segments.len(), last_seq = h.last_seq,
            cut = ?h.cut, damaged = h.damaged.len(), "cdp: history recovered");
        let spare = Arc::new(journal::Spare::default());
        spare
            .zero
            .store(s.prezero, std::sync::atomic::Ordering::Relaxed);
        spare
            .map_disk
            .store(s.sync.maps_disk(), std::sync::atomic::Ordering::Relaxed);
        spare
            .want
            .store(log.segno() + 1, std::sync::atomic::Ordering::Release);
        let stats = CdpStats::default();
        stats
            .window_start
            .store(h.first_time(), std::sync::atomic::Ordering::Relaxed);
        vouched.publish(&stats);
        let start = log.into_start(Arc::clone(&spare));
        // The start's records (read from the base) are done as they are journaled.
        published.set(start.next_seq - 1);
        stats.published(start.next_seq - 1, start.last_time);
        Ok(Self {
            inner,
            instance: next_instance(),
            live: None,
            vol,
            home,
            mailboxes: OnceLock::new(),
            stats: Arc::new(stats),
            dir: s.dir.clone(),
            created: meta.created,
            spare: Arc::clone(&spare),
            segment_size: s.segment_size,
            sync: s.sync,
            start: Mutex::new(Some((start, regions, vouched))),
            at_stop: AtStop::of(s),
            start_flushed,
            lock: Mutex::new(Some(lock)),
            done: Mutex::new(Some(published)),
        })
    }
}

/// A new layer generation.
fn next_instance() -> u64 {
    static GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    GEN.fetch_add(1, Relaxed)
}

impl CdpDevice {
    /// Release `daemon.lock` (the daemon's stop, once nothing journals any more).
    pub fn release_lock(&self) {
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The device under the layer.
    pub fn inner(&self) -> Arc<dyn BlockDevice> {
        Arc::clone(&self.inner)
    }

    /// The volume's index.
    pub fn vol(&self) -> usize {
        self.vol
    }

    /// The channel of a reactor other than the home over `inner` (that reactor's channel to
    /// the device under the layer).
    fn remote_channel(&self, io: &IoCx, inner: Box<dyn Channel>) -> Result<CdpRemote, BdevError> {
        let home = self
            .mailboxes
            .get()
            .and_then(|m| m.get(self.home))
            .cloned()
            .ok_or_else(|| {
                BdevError::Register(std::io::Error::other("cdp: reactor mailboxes not set"))
            })?;
        Ok(CdpRemote {
            inner,
            home,
            vol: self.vol as u32,
            from: io.reactor as u32,
        })
    }

    /// The home reactor's channel over `inner`: it takes the journal (once). On error
    /// `inner` is given back.
    #[allow(clippy::result_large_err)]
    fn home_channel(
        &self,
        io: &mut IoCx,
        inner: Box<dyn Channel>,
    ) -> Result<CdpChannel, (Box<dyn Channel>, BdevError)> {
        let Some((start, regions, vouched)) =
            self.start.lock().unwrap_or_else(|e| e.into_inner()).take()
        else {
            return Err((
                inner,
                BdevError::Register(std::io::Error::other("cdp: the journal is already open")),
            ));
        };
        let size = start.meta.size;
        let mut regions = regions;
        regions.fail_writes(self.sync.fail_map_writes);
        let journal = match Journal::new(
            io,
            self.vol as u32,
            start,
            Arc::clone(&self.stats),
            self.sync,
        ) {
            Ok(j) => j,
            Err(e) => return Err((inner, BdevError::Register(e))),
        };
        let catchup = self
            .live
            .as_ref()
            .map(|l| live::Catchup::new(Arc::clone(l)));
        let watermark = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        let whole_after = catchup.as_ref().map(|c| c.after());
        Ok(CdpChannel {
            // A catch-up's map says "not whole after X" already: X stands for the vouch too.
            vouched: vouched.or_whole_after(whole_after),
            whole_after,
            catchup,
            off: false,
            off_prev: None,
            instance: self.instance,
            inner,
            vol: self.vol as u32,
            reactor: io.reactor as u32,
            size,
            align: u64::from(self.inner.info().min_io.max(1)),
            journal,
            regions,
            map_retry: None,
            base_failed: None,
            lower_retry: None,
            flushed: self.start_flushed,
            flush_failed: false,
            watermark,
            failed_floor: None,
            done_stale: true,
            done_seen: 0,
            // (Unlike the journal's: the first turn flushes the base.)
            flush_segno: 0,
            at_stop: self.at_stop.clone(),
            stats: Arc::clone(&self.stats),
            ops: Slab::with_capacity(256),
            held: std::collections::VecDeque::new(),
            done: Vec::with_capacity(256),
            scratch: Vec::with_capacity(256),
        })
    }

    fn poller(&self) -> CdpPoller {
        CdpPoller {
            vol: self.vol,
            instance: self.instance,
            final_mark: false,
        }
    }
}

impl BlockDevice for CdpDevice {
    fn info(&self) -> DeviceInfo {
        let mut i = self.inner.info();
        i.kind = format!("cdp>{}", i.kind);
        i
    }

    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        let inner = self.inner.open_channel(io)?;
        if io.reactor != self.home {
            return Ok(Box::new(self.remote_channel(io, inner)?));
        }
        match self.home_channel(io, inner) {
            Ok(c) => Ok(Box::new(c)),
            Err((_, e)) => Err(e),
        }
    }

    fn lower(&self) -> Option<Arc<dyn BlockDevice>> {
        Some(Arc::clone(&self.inner))
    }
}

impl PollerSource for CdpDevice {
    fn poller_for(&self, reactor: usize) -> Option<Box<dyn Poller>> {
        (reactor == self.home).then(|| Box::new(self.poller()) as Box<dyn Poller>)
    }
}

/// An update waiting for its base operation and its records.
struct Pending {
    from: u32,
    tag: IoTag,
    last_seq: u64,
    base: Option<Result<(), Errno>>,
    /// Already failed to its caller (the stop deadline passed); kept until its base
    /// operation completes, so its slot is not reused while that is in flight.
    answered: bool,
    /// The volume bytes it changes, `[start, end)` (empty for a flush).
    range: (u64, u64),
    /// A flush or FUA update: it completes once its records (a flush: every record before
    /// it) are synced, not only written (`sync = "flush"`; the same with `"append"`).
    sync: bool,
    /// Where the history is whole up to should its base operation fail
    /// ([`CdpChannel::base_done`]): the journal's last record before this update's first, and
    /// a time before its records' (every moment up to it reads that record's content).
    before: (u64, u64),
}

/// An update whose base operation waits for an earlier overlapping one (see
/// [`CdpChannel::overlaps_earlier`]); its record is already in the journal.
struct Held {
    key: usize,
    /// Its record is not journaled yet: it arrived while the run-time catch-up reads a range
    /// it overlaps (or behind such an update); journaled, in order, after that read
    /// ([`live`]).
    deferred: bool,
    op: Op,
    offset: u64,
    len: u64,
    /// A write's data (a reused vector).
    data: Vec<u8>,
    fua: bool,
}

/// What an update does.
enum Upd<'a> {
    Write(&'a [u8]),
    Zeroes(u64),
    Unmap(u64),
    Flush,
}

/// The home reactor's channel: the journal writer and the updates in flight.
pub struct CdpChannel {
    inner: Box<dyn Channel>,
    /// The layer instance (its poller's).
    instance: u64,
    /// Switched on at run time: the whole volume is being journaled again.
    catchup: Option<live::Catchup>,
    /// The history is whole only up to this sequence (and time) until the catch-up's gap
    /// record is durable: a journal that stops meanwhile says so in `degraded.map`.
    whole_after: Option<(u64, u64)>,
    /// What the layer above last said of the replica, and what the history makes of it.
    vouched: vouch::Vouched,
    /// Switched off at run time: the last time mark is stamped; updates are no longer
    /// journaled, local ones go straight to the base ([`live`]).
    off: bool,
    /// Switching off wrote `degraded.map` before updates stopped being journaled: what the
    /// map said before (`None` inside: whole), for the final write once nothing is in flight.
    off_prev: Option<Option<(u64, u64)>>,
    vol: u32,
    reactor: u32,
    size: u64,
    /// Write alignment of the base.
    align: u64,
    journal: Journal,
    /// The changed regions once the journal stopped (degraded mode).
    regions: degraded::RegionMap,
    /// Writing "the journal stopped" into the map failed: when to try again, and what to
    /// write (after, its time, when it stopped).
    map_retry: Option<(Instant, (u64, u64, u64))>,
    /// A base update failed after its record was journaled: the history is whole only up
    /// to the record before it ([`CdpChannel::base_done`]).
    base_failed: Option<(u64, u64)>,
    /// Lowering the map's end to `base_failed` failed: when to try again.
    lower_retry: Option<Instant>,
    /// The last record whose update's base write a completed base flush made durable (with
    /// a time before the next record's): a failed flush leaves the history whole up to it.
    flushed: (u64, u64),
    /// A base flush failed: any region may have lost writes since `flushed` (their ranges are
    /// not kept), so the whole volume counts as changed.
    flush_failed: bool,
    /// The segment at whose start the layer last flushed the base itself ([`CdpChannel::own_flush`]).
    flush_segno: u64,
    /// The done watermark readers of the running history stop at ([`done`]; its lock is held
    /// while this channel exists); `None` if it could not be taken.
    watermark: Option<done::Published>,
    /// The first update whose base operation failed after its record was journaled: the
    /// record before its first, and a time before its records' ([`Pending::before`]). The done
    /// watermark never passes it.
    failed_floor: Option<(u64, u64)>,
    /// An update's base operation completed since the watermark was last computed.
    done_stale: bool,
    /// The journal's last sequence when the watermark was last computed.
    done_seen: u64,
    /// [`CdpDevice`]'s `at_stop`.
    at_stop: AtStop,
    stats: Arc<CdpStats>,
    ops: Slab<Pending>,
    /// Updates waiting for an earlier overlapping one, in arrival order.
    held: std::collections::VecDeque<Held>,
    done: Vec<Completion>,
    scratch: Vec<usize>,
}

impl CdpChannel {
    fn update(
        &mut self,
        io: &mut IoCx,
        from: u32,
        tag: IoTag,
        upd: Upd<'_>,
        offset: u64,
        fua: bool,
    ) -> Start {
        let len = match upd {
            Upd::Write(d) => d.len() as u64,
            Upd::Zeroes(l) | Upd::Unmap(l) => l,
            Upd::Flush => 0,
        };
        if !matches!(upd, Upd::Flush) {
            if !crate::bdev::in_range(offset, len, self.size) {
                return Start::Done(Err(Errno::INVAL));
            }
            if len == 0 {
                return Start::Done(Ok(()));
            }
            // A write the base refuses for its alignment (O_DIRECT) must not be journaled as
            // if it had happened.
            if matches!(upd, Upd::Write(_))
                && !(offset.is_multiple_of(self.align) && len.is_multiple_of(self.align))
            {
                return Start::Done(Err(Errno::INVAL));
            }
        }
        let range = match upd {
            Upd::Flush => (0, 0),
            _ => (offset, offset + len),
        };
        if self.off && from == self.reactor {
            // Switched off: the history ended at the last time mark; straight to the base.
            return match upd {
                Upd::Write(d) => self.inner.write(io, tag, offset, d, fua),
                Upd::Zeroes(l) => self.inner.write_zeroes(io, tag, offset, l, fua),
                Upd::Unmap(l) => self.inner.unmap(io, tag, offset, l, fua),
                Upd::Flush => self.inner.flush(io, tag),
            };
        }
        if self.journal.stopped() && !self.off {
            // Degraded: the update is not journaled; its regions are remembered.
            self.degrade();
            self.regions.mark(range.0, range.1 - range.0);
            self.stats
                .changed_regions
                .store(self.regions.marked(), Relaxed);
        }
        // The journal orders updates as they arrive; overlapping ones must reach the base in
        // that order too (two writes to a block in flight at once could otherwise land in
        // the other order, and the journal's newest point would differ from the base).
        // Behind the catch-up's read of an overlapping range (or behind an update that is):
        // held with its record, journaled after the read's.
        let deferred = range.0 < range.1
            && (self.catchup.as_ref().is_some_and(|c| c.blocks(range))
                || self
                    .held
                    .iter()
                    .any(|h| h.deferred && overlap(self.ops[h.key].range, range)));
        let wait = deferred || range.0 < range.1 && self.overlaps_earlier(range, self.held.len());
        let sync = fua || matches!(upd, Upd::Flush);
        let key = self.ops.insert(Pending {
            from,
            tag,
            last_seq: 0,
            base: None,
            answered: false,
            range,
            sync,
            // A flush: the writes it makes durable (those done before it is issued).
            before: match upd {
                Upd::Flush => self.done_before(),
                _ => (self.journal.last_seq(), 0),
            },
        });
        if wait {
            let (op, data) = match upd {
                Upd::Write(d) => {
                    let mut v = io.spare_vecs.pop().unwrap_or_default();
                    v.clear();
                    v.extend_from_slice(d);
                    (Op::Write, v)
                }
                Upd::Zeroes(_) => (Op::Zeroes, Vec::new()),
                _ => (Op::Unmap, Vec::new()),
            };
            if deferred {
                if let Some(c) = &self.catchup {
                    c.count_held();
                }
            } else {
                let q = self.record(io, op, offset, len, &data);
                self.ops[key].last_seq = q;
                self.ops[key].before.1 = self.journal.last_time().saturating_sub(1);
                if sync {
                    self.journal.want_sync(q);
                }
            }
            self.held.push_back(Held {
                key,
                deferred,
                op,
                offset,
                len,
                data,
                fua,
            });
            return Start::Pending;
        }
        let own = IoTag::channel(self.vol, LOWER_SLOT | key as u32);
        let (started, last_seq) = match upd {
            Upd::Write(d) => {
                let s = self.inner.write(io, own, offset, d, fua);
                (s, self.record(io, Op::Write, offset, len, d))
            }
            Upd::Zeroes(l) => {
                let s = self.inner.write_zeroes(io, own, offset, l, fua);
                (s, self.record(io, Op::Zeroes, offset, l, &[]))
            }
            Upd::Unmap(l) => {
                let s = self.inner.unmap(io, own, offset, l, fua);
                (s, self.record(io, Op::Unmap, offset, l, &[]))
            }
            // A flush covers every record before it.
            Upd::Flush => (self.inner.flush(io, own), self.journal.last_seq()),
        };
        if sync {
            self.journal.want_sync(last_seq);
        }
        self.ops[key].last_seq = last_seq;
        if range.0 < range.1 {
            self.ops[key].before.1 = self.journal.last_time().saturating_sub(1);
        }
        if let Start::Done(r) = started {
            self.base_done(io, key, r);
        }
        Start::Pending
    }

    /// Journal an update (`data`: a write's payload); 0 once switched off (the history has
    /// ended).
    fn record(&mut self, io: &mut IoCx, op: Op, offset: u64, len: u64, data: &[u8]) -> u64 {
        if self.off {
            return 0;
        }
        match op {
            Op::Write => self.journal.record(io, op, offset, len, Some(data)),
            _ => self.journal.record(io, op, offset, len, None),
        }
    }

    /// Whether `range` overlaps an update that arrived before it and whose base operation
    /// has not finished: one in flight, or one of the first `held` held ones.
    fn overlaps_earlier(&self, range: (u64, u64), held: usize) -> bool {
        let hit = |r: (u64, u64)| r.0 < range.1 && range.0 < r.1;
        self.ops
            .iter()
            .any(|(k, p)| p.base.is_none() && hit(p.range) && !self.held.iter().any(|h| h.key == k))
            || self
                .held
                .iter()
                .take(held)
                .any(|h| hit(self.ops[h.key].range))
    }

    /// Start the held updates no earlier overlapping update blocks any more, in order.
    fn release_held(&mut self, io: &mut IoCx) {
        let mut i = 0;
        while i < self.held.len() {
            let range = self.ops[self.held[i].key].range;
            if self.held[i].deferred || self.overlaps_earlier(range, i) {
                i += 1;
                continue;
            }
            let h = self.held.remove(i).expect("index in range");
            let own = IoTag::channel(self.vol, LOWER_SLOT | h.key as u32);
            let started = match h.op {
                Op::Write => self.inner.write(io, own, h.offset, &h.data, h.fua),
                Op::Zeroes => self.inner.write_zeroes(io, own, h.offset, h.len, h.fua),
                _ => self.inner.unmap(io, own, h.offset, h.len, h.fua),
            };
            io.recycle_vec(h.data);
            if let Start::Done(r) = started {
                self.base_done(io, h.key, r);
                i = 0; // it finished at once: what it blocked may go now
            }
        }
    }

    fn try_complete(&mut self, key: usize) {
        if self.journal.stopped() && !self.regions.active {
            self.degrade();
        }
        let p = &self.ops[key];
        let covered = if p.sync {
            self.journal.synced()
        } else {
            self.journal.durable()
        };
        if let Some(r) = p.base
            && (p.last_seq <= covered || self.journal.stopped() || p.answered)
        {
            if !p.answered {
                self.done.push((p.from, p.tag, r));
            }
            self.ops.remove(key);
        }
    }

    fn complete_durable(&mut self) {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.extend(self.ops.iter().map(|(k, _)| k));
        for &k in &keys {
            self.try_complete(k);
        }
        keys.clear();
        self.scratch = keys;
    }

    /// The journal's counters' view: last durable sequence.
    pub fn durable(&self) -> u64 {
        self.journal.durable()
    }
}

/// What a clean stop does with the base before it seals the journal (a sealed log tells the
/// next start that no record lacks its base write).
#[derive(Clone, Debug)]
enum AtStop {
    /// Nothing to make durable (a RAM base, journaled anew at every start): seal.
    Seal,
    /// A file or block device that outlives the process (`seed`): `fsync` it by its path,
    /// then seal.
    SyncThenSeal(PathBuf),
    /// Its device writes a volatile cache back only after this layer is gone
    /// ([`CdpSettings::base_cache`]): never seal clean.
    NoSeal,
}

impl AtStop {
    fn of(s: &CdpSettings) -> AtStop {
        match &s.seed {
            _ if s.base_cache => AtStop::NoSeal,
            Some(p) if !s.volatile => AtStop::SyncThenSeal(p.clone()),
            _ => AtStop::Seal,
        }
    }
}

impl Drop for CdpChannel {
    /// A clean stop: while degraded it keeps the changed regions for the next start; it seals
    /// the active segment's index, so readers need not scan it.
    fn drop(&mut self) {
        // The watermark as the channel leaves it (`cdp_status` after a run-time switch-off);
        // its lock goes with the channel: readers then take every record.
        self.publish_done();
        // A map that could not be written says nothing of this run's stop (its failed updates,
        // its updates without a record): the log is then not sealed, so that the next start
        // compares its tail with the base (a failed update's record is not the newest point).
        let map_saved = match self.regions.persist() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cdp: cannot save the changed regions; the log is not sealed, so the next start compares its tail with the base, but updates made without a record since the journal stopped are not in the history");
                false
            }
        };
        if self.journal.in_flight() == 0
            && let Err(e) = self.journal.sync_now()
        {
            tracing::error!(error = %e, "cdp: cannot sync the journal at the stop; records since the last flush may not survive a power loss");
        }
        // Sealed only with no update whose base operation is not done (held behind another,
        // or issued and not completed) and the base made durable (a power loss after the stop
        // must not take writes the history keeps): a sealed log tells the next start that no
        // record lacks its base write, and it then skips the comparison of tail.rs.
        // (Not after CDP was switched off at run time: no start compares a history that ended
        // so, it journals the whole volume again; and the reactor must not wait for the sync.)
        // (Nor when the base's device writes its cache back only after this layer is gone, nor
        // when the map could not be written: above.)
        if map_saved
            && !matches!(self.at_stop, AtStop::NoSeal)
            && self.journal.in_flight() == 0
            && self.ops.iter().all(|(_, p)| p.base.is_some())
        {
            let synced = match &self.at_stop {
                // fsync, not fdatasync: the stamp below records the base's modification time,
                // which fdatasync leaves unwritten; a power loss after the stop would put an
                // older one back and the next start would take the base for written since.
                AtStop::SyncThenSeal(p) if !self.off => {
                    std::fs::File::open(p).and_then(|f| f.sync_all())
                }
                _ => Ok(()),
            };
            if let Err(e) = synced {
                tracing::warn!(error = %e, "cdp: cannot sync the base at the stop; the log is not sealed, so the next start compares its tail with the base");
            } else {
                // The base as this stop leaves it, so that the next start sees it written
                // since (stamp.rs).
                if let AtStop::SyncThenSeal(p) = &self.at_stop
                    && !self.off
                    && let Err(e) = self.journal.stamp(p)
                {
                    tracing::warn!(error = %e, "cdp: cannot record the base as the stop leaves it; the next start cannot tell whether it was written since");
                }
                if let Err(e) = self.journal.seal() {
                    tracing::warn!(error = %e, "cdp: cannot write the last segment's index; readers scan it instead");
                }
            }
        }
    }
}

impl Channel for CdpChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        self.inner.read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        let from = self.reactor;
        self.update(io, from, tag, Upd::Write(data), offset, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        let from = self.reactor;
        self.update(io, from, tag, Upd::Flush, 0, false)
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        let from = self.reactor;
        self.update(io, from, tag, Upd::Zeroes(len), offset, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        let from = self.reactor;
        self.update(io, from, tag, Upd::Unmap(len), offset, fua)
    }

    fn submit_request(&mut self, io: &mut IoCx, r: &mut BlockRequest) -> Start {
        let data = std::mem::take(&mut r.data);
        let upd = match r.op {
            BlockOp::Write => Upd::Write(&data),
            BlockOp::Zeroes => Upd::Zeroes(r.len),
            BlockOp::Unmap => Upd::Unmap(r.len),
            BlockOp::Flush => Upd::Flush,
            BlockOp::Meta => {
                r.data = data;
                return Start::Done(Err(Errno::NOTSUP));
            }
        };
        let s = self.update(io, r.from, r.tag, upd, r.offset, r.fua);
        r.data = data;
        s
    }

    fn on_own_io(&mut self, io: &mut IoCx, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        if slot & LOWER_SLOT == 0 {
            // Not ours: a layer below this one made it (none does today).
            return self.inner.on_own_io(io, slot, result, data);
        }
        let slot = slot & !LOWER_SLOT;
        if slot == live::CATCHUP_SLOT {
            return live::read_done(self, io, result, data);
        }
        if slot & JOURNAL_SLOT != 0 {
            if self.journal.finished(io, slot & !JOURNAL_SLOT, result) || self.journal.stopped() {
                self.complete_durable();
            }
            return;
        }
        let key = slot as usize;
        if self.ops.contains(key) {
            self.base_done(io, key, result);
            if !self.held.is_empty() {
                self.release_held(io);
            }
        }
    }

    fn lower_box(&mut self) -> Option<&mut Box<dyn Channel>> {
        Some(&mut self.inner)
    }

    fn vouch(&mut self, io: &mut IoCx, v: crate::bdev::Vouch) {
        vouch::told(self, io, v);
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

/// The volume's journal work on its home reactor: append the turn's batches, answer
/// finished updates.
pub struct CdpPoller {
    vol: usize,
    /// The layer instance it serves.
    instance: u64,
    /// The stop's final time mark is stamped.
    final_mark: bool,
}

fn channel_of(
    chans: &mut [Box<dyn Channel>],
    vol: usize,
    instance: u64,
) -> Option<&mut CdpChannel> {
    find_layer::<CdpChannel>(&mut **chans.get_mut(vol)?).filter(|c| c.instance == instance)
}

impl Poller for CdpPoller {
    fn poll(&mut self, cx: &mut PollCx<'_>) -> bool {
        let Some(c) = channel_of(cx.chans, self.vol, self.instance) else {
            return false;
        };
        // Time marks: while idle, and once when stopping (the window reaches the stop);
        // none once switched off (the history ended at its last mark).
        // (While stopping only the one final mark: a stop may last seconds.)
        if !c.off
            && c.vouched.may_mark()
            && ((!cx.stopping && c.journal.mark_due().is_some_and(|d| cx.now >= d))
                || (cx.stopping && !self.final_mark))
        {
            self.final_mark |= cx.stopping;
            c.journal.mark(cx.io);
        }
        let mut worked = c.retry_map(cx.now);
        worked |= live::step(c, cx.io);
        worked |= vouch::step(c, cx.io);
        c.publish_done();
        let (ops, flushed) = (&c.ops, c.flushed.0 + 1);
        worked |= c
            .journal
            .issue(cx.io, &|next| failure::base_low(ops, next).min(flushed));
        if c.journal.segno() != c.flush_segno {
            c.flush_segno = c.journal.segno();
            c.own_flush(cx.io);
        }
        if c.journal.take_moved() || c.journal.stopped() {
            c.complete_durable();
        }
        worked |= !c.done.is_empty();
        let mut done = std::mem::take(&mut c.done);
        cx.complete_all(&mut done);
        if let Some(c) = channel_of(cx.chans, self.vol, self.instance) {
            c.done = done;
        }
        worked
    }

    fn deadline(&self, chans: &mut [Box<dyn Channel>], now: Instant) -> Option<Instant> {
        let c = channel_of(chans, self.vol, self.instance)?;
        if c.journal.has_queued() || !c.done.is_empty() || live::busy(c) {
            return Some(now);
        }
        [
            c.journal.mark_due(),
            c.map_retry.map(|(at, _)| at),
            c.lower_retry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn busy(&self, chans: &mut [Box<dyn Channel>]) -> bool {
        channel_of(chans, self.vol, self.instance)
            .is_some_and(|c| !c.ops.is_empty() || c.journal.in_flight() > 0)
    }

    fn retired(&self, chans: &mut [Box<dyn Channel>]) -> bool {
        channel_of(chans, self.vol, self.instance).is_none()
    }

    fn abort(&mut self, chans: &mut [Box<dyn Channel>]) {
        if let Some(c) = channel_of(chans, self.vol, self.instance) {
            for (_, p) in c.ops.iter_mut().filter(|(_, p)| !p.answered) {
                p.answered = true;
                c.done.push((p.from, p.tag, Err(Errno::IO)));
            }
            // Their base operations not done: failed updates for the history too, written
            // now (a device hung on one keeps the process from exiting: it is killed).
            c.fail_unfinished();
            c.complete_durable();
        }
    }
}

/// The volume's channel on a reactor other than its home: reads go to the base, updates to
/// the home reactor.
pub struct CdpRemote {
    inner: Box<dyn Channel>,
    home: Arc<Mailbox>,
    vol: u32,
    from: u32,
}

impl CdpRemote {
    #[allow(clippy::too_many_arguments)]
    fn hand_over(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        op: BlockOp,
        offset: u64,
        len: u64,
        bytes: &[u8],
        fua: bool,
    ) -> Start {
        let mut data = io.spare_vecs.pop().unwrap_or_default();
        data.clear();
        data.extend_from_slice(bytes);
        self.home.send(Msg::Block(BlockRequest {
            vol: self.vol,
            from: self.from,
            tag,
            op,
            offset,
            len,
            fua,
            data,
        }));
        Start::Pending
    }
}

impl Channel for CdpRemote {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        self.inner.read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        let len = data.len() as u64;
        self.hand_over(io, tag, BlockOp::Write, offset, len, data, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        self.hand_over(io, tag, BlockOp::Flush, 0, 0, &[], false)
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        self.hand_over(io, tag, BlockOp::Zeroes, offset, len, &[], fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        self.hand_over(io, tag, BlockOp::Unmap, offset, len, &[], fua)
    }

    fn on_own_io(&mut self, io: &mut IoCx, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        self.inner.on_own_io(io, slot, result, data);
    }

    fn lower_box(&mut self) -> Option<&mut Box<dyn Channel>> {
        Some(&mut self.inner)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

/// Whether two byte ranges `[start, end)` overlap.
fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history that cannot be read gives no point to say "not whole after": the volume
    /// is not served without its journal (the map untouched) rather than every point given
    /// up for good; a readable one gets "not whole after its end".
    #[test]
    fn not_journaled_refuses_when_the_history_cannot_be_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let size = 1 << 20;
        let meta = format::Meta {
            block_size: 4096,
            vol_id: 0x70,
            size,
            created: 1,
            base_seq: 0,
            base_time: 0,
        };
        store::write_meta(dir, &meta).unwrap();
        let img = format::testing::segment_image(meta.vol_id, 1, 1..=10);
        std::fs::write(store::seg_path(dir, 1), img).unwrap();
        std::fs::create_dir(store::seg_path(dir, 2)).unwrap();
        let e = not_journaled(dir, size).unwrap_err().to_string();
        assert!(e.contains("read"), "{e}");
        let (_, prior) = degraded::RegionMap::open(dir, size).unwrap();
        assert_eq!(prior, degraded::Prior::Whole, "the map is untouched");
        std::fs::remove_dir(store::seg_path(dir, 2)).unwrap();
        assert_eq!(not_journaled(dir, size).unwrap().0, 10);
        let (_, prior) = degraded::RegionMap::open(dir, size).unwrap();
        assert!(
            matches!(prior, degraded::Prior::Stopped { after: 10, .. }),
            "{prior:?}"
        );
    }
}
