//! Retention: consolidating the oldest journal segments into the base copy so a history's
//! space stays bounded (docs/cdp-format.md, "Point-in-time content"), on a thread of its own,
//! never on a reactor.
//!
//! Model: one pass ([`consolidate_once`]) looks at the oldest segment of a directory; when a
//! later segment exists (so it is sealed) and retention releases it (its newest record is
//! older than `age`, or the segments hold more than `bytes`), its records are applied to
//! `base.img` in order (but for those a later record of the segment overwrites whole:
//! [`superseded`]), the base copy is synced, `cdp.meta` records the new base point, and
//! the segment is retired (kept as `recycled-N.seg` for the spare thread to reuse as a later
//! segment, at most [`store::RECYCLED_MAX`] of them; deleted beyond, and beyond
//! [`store::RECYCLED_KEEP`] once the volume's consolidation is idle for [`ACTIVE_FOR`], its
//! device is short of room, or it is no longer looked after, and before and after the
//! thread's first look at the volume: files a stop left). The thread ([`spawn`])
//! looks at a volume ten times a second while it consolidated in the last ten seconds
//! ([`LOOK_EVERY`]), else (or while its passes fail or a hold keeps its oldest segment) once
//! a second; a volume whose retention releases segments has them
//! consolidated one after the other, up to [`BACKLOG_TURN`] before the next volume's turn, and
//! the thread goes round again at once while any volume had work. So space stays bounded at
//! any write rate the thread can copy: a pass of one segment a second (the first design) let a
//! journal written faster than a segment a second grow without bound. The throttle is that it
//! is one thread, consolidating only what retention releases. A base copy on tmpfs is written
//! through a mapping the thread keeps from pass to pass (base_map.rs: a `memcpy` per record
//! instead of a `pwrite`, each piece allocated before its first byte so that a full tmpfs
//! fails the pass with ENOSPC, not SIGBUS).
//!
//! A segment holding a record at or after the newest segment's mark (an update whose base
//! operation may be in flight, `SegHeader::low`: a crash comparison needs its record,
//! tail.rs) is not consolidated, nor one holding a record newer than the oldest bookmark, or
//! than the point of an open view (`view::hold`), whatever retention says (the bookmark
//! stays restorable and the view readable). The base copy is changed only under the directory's
//! consolidation lock (`store::lock_consolidation`).
//!
//! Invariants: the base copy never holds a record the meta's base point does not cover once
//! the meta is written, and a crash anywhere leaves either the old meta with the segment still
//! there (the pass is repeated: records are whole overwrites applied in order, so applying
//! them again gives the same base) or the new meta with the segment deleted or skipped by
//! recovery; the active segment (the newest) is never consolidated. From before the first
//! byte a pass applies until the meta names its end, the marker `consolidating`
//! ([`store::write_moving`]) makes every reader refuse the points before that end (the base
//! copy then holds some of the segment's records: the content of no point); a pass cut part
//! way leaves it, and the next pass finishes the segment whatever retention says then.

use super::base_direct::DirectBase;
use super::base_map::BaseMap;
use super::format::{self, Op, REC_HEADER};
use super::mapped::{Mapped, SegMaps};
use super::store::{self, CdpError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a history keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep records younger than this (ns of site time).
    pub age_ns: Option<u64>,
    /// Keep at most about this many bytes of segments.
    pub bytes: Option<u64>,
}

fn segments(dir: &Path) -> Result<Vec<(u64, u64)>, CdpError> {
    let mut v = Vec::new();
    let err = |source| CdpError::Io {
        what: "list",
        path: dir.to_path_buf(),
        source,
    };
    for e in std::fs::read_dir(dir).map_err(err)? {
        let e = e.map_err(err)?;
        let name = e.file_name();
        let Some(s) = name.to_str() else { continue };
        if let Some(hex) = s.strip_prefix("seg-").and_then(|r| r.strip_suffix(".cdp"))
            && let Ok(n) = u64::from_str_radix(hex, 16)
        {
            v.push((n, e.metadata().map_err(err)?.len()));
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// What one consolidation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consolidated {
    /// The new base point's sequence.
    pub base_seq: u64,
    /// Retention by age released the segment.
    pub by_age: bool,
    /// Retention by size released it.
    pub by_size: bool,
}

/// One pass over `dir` at site time `now`: consolidate its oldest segment if retention
/// releases it. Returns what it did, when it did.
pub fn consolidate_once(
    dir: &Path,
    r: &Retention,
    now: u64,
) -> Result<Option<Consolidated>, CdpError> {
    consolidate_once_in(
        dir,
        r,
        now,
        &mut Vec::new(),
        &mut Notes::default(),
        &mut None,
        None,
    )
}

/// What one pass tells the next ones of a volume (the retention thread keeps it per volume).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Notes {
    /// The hold that stopped the last pass (its time), if one did.
    pub blocked: Option<u64>,
    /// The oldest segment's newest record time, as a scan found it: ([`SegKey`], time). A
    /// look that retention by age may not release yet then needs no scan to know it
    /// (the scan that checks the records before they are applied is never skipped).
    pub newest: Option<(SegKey, u64)>,
}

/// A segment as its header names it (a number is used again by a history made anew).
pub(crate) type SegKey = (u64, u64, u64);

fn seg_key(h: &format::SegHeader) -> SegKey {
    (h.segno, h.first_seq, h.created)
}

/// [`consolidate_once`] with `bytes`, a buffer the caller keeps from one segment to the next
/// (the retention thread's: fresh pages cost more than the copy into them), and `base_map`,
/// the directory's base copy as mapped by an earlier pass, if any (base_map.rs: kept, its
/// pages are faulted in once, not once per pass), and `maps`, the volume's mappings of its
/// segment files (mapped.rs: kept from one use of a file to the next).
///
/// A pass a hold stopped says which in `notes.blocked` (the hold's time).
fn consolidate_once_in(
    dir: &Path,
    r: &Retention,
    now: u64,
    bytes: &mut Vec<u8>,
    notes: &mut Notes,
    base_map: &mut Option<BaseMap>,
    maps: Option<&SegMaps>,
) -> Result<Option<Consolidated>, CdpError> {
    let (in_use, _) = store::segments_in_use(dir)?;
    let segs: Vec<(u64, u64)> = segments(dir)?
        .into_iter()
        .filter(|(n, _)| in_use.contains(n))
        .collect();
    if segs.len() < 2 {
        return Ok(None); // the only segment in use is the active one (a spare is not)
    }
    let meta = store::read_meta(dir)?;
    let (segno, _) = segs[0];
    let header = store::segment_header(dir, segno)?;
    let next = store::segment_header(dir, segs[1].0)?;
    if header.first_seq <= meta.base_seq && next.first_seq <= meta.base_seq + 1 {
        // Wholly in the base copy already: a pass wrote the meta, then could not retire the
        // segment (or crashed first). Retire it now, or no later pass would get past it
        // (under the lock, as every pass changes the directory).
        let _lock = store::lock_consolidation(dir).map_err(|source| CdpError::Io {
            what: "lock",
            path: store::consolidate_lock(dir),
            source,
        })?;
        retire(dir, segno)?;
        tracing::warn!(dir = %dir.display(), segment = segno,
            "cdp: retired a segment an earlier pass consolidated but did not retire");
        return Ok(None);
    }
    // Whether retention releases the segment is decided before its records are read: a look
    // that finds nothing to do reads no more than a few headers (a scan of the whole segment
    // at every look, ten a second while the volume is busy, cost CDP in memory about a fifth
    // of its IOPS at 4 KiB QD32: benches/RESULTS.md, session 27). Its last record is the one
    // before the next segment's first (the scan below checks that); its newest time is at most
    // the next segment's creation (stamped by the writer's switch, after every record of this
    // one: site time never goes back), or, when that bound does not settle it, what an earlier
    // look's scan found (`notes.newest`) or a scan now.
    if header.first_seq != meta.base_seq + 1 {
        // Not the next segment of the chain (damaged, or already consolidated): recovery at
        // the next start sorts it out; nothing is applied here.
        return Ok(None);
    }
    let last = next.first_seq.saturating_sub(1);
    let total: u64 = segs.iter().map(|(_, len)| len).sum();
    let by_size = r.bytes.is_some_and(|b| total > b);
    let old_enough = |newest: u64| r.age_ns.is_some_and(|a| newest.saturating_add(a) < now);
    let known = notes
        .newest
        .filter(|(k, _)| *k == seg_key(&header))
        .map(|(_, t)| t);
    let by_age_bound = old_enough(known.unwrap_or(next.created));
    // A pass cut part way is finished whatever retention says now: until it is, the points
    // before its end are refused (the base copy holds some of its records).
    let unfinished = store::read_moving(dir, &meta)?.is_some_and(|m| m.to == last);
    let undecided = r.age_ns.is_some() && known.is_none() && !by_age_bound;
    if !(by_age_bound || by_size || unfinished || undecided) {
        return Ok(None);
    }
    // A record whose update may not be in the base yet (at or after the newest segment's
    // mark) stays in the journal: after a crash its range is compared with the base
    // (tail.rs), which needs the record. (Not after a clean stop: nothing is compared then.)
    let newest_seg = segs.last().map_or(segno, |s| s.0);
    if !unfinished
        && store::segment_header(dir, newest_seg)?
            .low
            .is_some_and(|low| last >= low)
        && !store::sealed_clean(dir, &meta, newest_seg)
    {
        return Ok(None);
    }
    // The segment is read where it lies (mapped.rs): no copy of it first. In memory through
    // the volume's kept mapping of the file (on tmpfs); on a disk through a mapping with its
    // pages present at once (most are still in the page cache). A file that cannot be mapped
    // (a sparse one) is read into `bytes`.
    let p = store::seg_path(dir, segno);
    let mapped = if super::journal::in_memory(dir) {
        let kept = maps.and_then(|c| c.map_path(&p, 0).ok());
        kept.or_else(|| {
            File::open(&p)
                .and_then(|f| Mapped::open(&f))
                .ok()
                .map(Arc::new)
        })
    } else {
        File::open(&p)
            .and_then(|f| Mapped::open_populated(&f))
            .ok()
            .map(Arc::new)
    };
    // Reads of the mapping are guarded (bdev::sigbus): a page that cannot be read back (a
    // tmpfs that swaps, a disk's read error) reads as zeroes instead of ending the daemon, and the pass fails
    // before the meta names a new base point (the next pass maps the file again).
    let guard = mapped
        .as_ref()
        .map(|m| crate::bdev::sigbus::ReadGuard::new(m.bytes()));
    let faulted = || -> Result<(), CdpError> {
        if guard.as_ref().is_some_and(|g| g.faulted()) {
            if let Some(m) = &mapped {
                m.set_broken();
            }
            return Err(CdpError::Io {
                what: "read (a page of the segment's mapping could not be read back)",
                path: store::seg_path(dir, segno),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    };
    #[cfg(test)]
    SCANS.set(SCANS.get() + 1);
    let scan = store::segment_index_in(
        dir,
        &meta,
        segno,
        meta.base_seq,
        meta.window_start(),
        bytes,
        mapped.as_ref().map(|m| m.bytes()),
    );
    faulted()?;
    let (_, index, scanned) = scan?;
    // Its log must end where the next segment begins. A scan that stopped early (a damaged
    // record) would leave records out of the base copy, and the file's reuse would keep
    // records above the base point behind a later segment's: nothing is applied; the next
    // start's recovery cuts the history there (docs/cdp-format.md, "Torn tail").
    let scanned_last = index.entries.last().map_or(meta.base_seq, |e| e.seq);
    if scanned_last != last {
        return Err(CdpError::Meta {
            path: store::seg_path(dir, segno),
            why: format!(
                "its log ends at byte {} after sequence {scanned_last}, but the next segment starts at {}: a damaged record; not consolidated (the next start's recovery cuts the history there)",
                index.end, next.first_seq
            ),
        });
    }
    let newest = index.entries.last().map_or(header.created, |e| e.time);
    notes.newest = Some((seg_key(&header), newest));
    let by_age = old_enough(newest);
    if !(by_age || by_size || unfinished) {
        return Ok(None);
    }
    // The base copy changes only under the lock, so a view that registers its hold and then
    // takes the lock once never sees a pass that missed its hold (view.rs).
    let _lock = store::lock_consolidation(dir).map_err(|source| CdpError::Io {
        what: "lock",
        path: store::consolidate_lock(dir),
        source,
    })?;
    // A base copy put in this one's place is never written into (nor given this history's
    // identity: docs/cdp-integrity.md); the pass fails naming it.
    if super::kept::is_kept(dir, &in_use) {
        super::kept::check_base(dir, &meta, store::read_moving(dir, &meta)?.as_ref())?;
    }
    let held = [
        super::bookmark::hold(dir),
        super::view::hold(dir),
        super::rollback::hold(dir),
    ]
    .into_iter()
    .flatten()
    .min();
    if let Some(b) = held
        && newest > b
    {
        // A bookmark, an open view or a rollback's undo point inside this segment (or before
        // it) must stay readable.
        notes.blocked = Some(b);
        return Ok(None);
    }
    // From the first byte applied until the meta names the new base point, the base copy is
    // the content of no point: the marker makes every reader refuse the points before it, and
    // stays if the pass fails part way (the next pass applies the whole segment again).
    let moving = index.entries.last().map(|last| format::Moving {
        vol_id: meta.vol_id,
        from: meta.base_seq,
        to: last.seq,
        to_time: last.time,
    });
    if let Some(mv) = &moving {
        store::write_moving(dir, mv)?;
    }
    let src = match &mapped {
        Some(m) => Source::Whole(m.bytes()),
        None if scanned => Source::Whole(bytes),
        None => Source::Windows(bytes),
    };
    // A base copy on tmpfs is written through a mapping (base_map.rs), checked first to be
    // still the file at the path (a history made again has a new one).
    let bp = store::base_path(dir);
    if base_map.as_ref().is_some_and(|m| !m.current(&bp)) {
        *base_map = None;
    }
    if base_map.is_none() {
        *base_map = BaseMap::open(&bp).unwrap_or_else(|e| {
            tracing::debug!(path = %bp.display(), error = %e, "cdp: base copy not mapped; written with pwrite");
            None
        });
    }
    if let Some(m) = base_map.as_mut() {
        m.refresh();
    }
    let skipped = apply(
        dir,
        segno,
        &index.entries,
        src,
        base_map.as_mut(),
        meta.block_size,
    );
    faulted()?;
    let skipped = skipped?;
    drop(guard);
    // Unmapped before the file is retired (renamed for reuse, or deleted).
    drop(mapped);
    let mut m = meta;
    if let Some(mv) = moving {
        m.base_seq = mv.to;
        m.base_time = mv.to_time;
        // The base copy's identity names the new point before the meta does
        // (docs/cdp-integrity.md).
        super::kept::write_id(dir, meta.size, meta.vol_id, mv.to)?;
        store::write_meta(dir, &m)?;
        store::clear_moving(dir)?;
    }
    retire(dir, segno)?;
    tracing::info!(dir = %dir.display(), segment = segno, base_seq = m.base_seq, by_age, by_size,
        records = index.entries.len(), overwritten_in_segment = skipped,
        "cdp: consolidated the oldest segment into the base copy");
    Ok(Some(Consolidated {
        base_seq: m.base_seq,
        by_age,
        by_size,
    }))
}

/// Retire consolidated segment `segno`. An open view may still read its records through the
/// file it opened (its hold only keeps segments after its point): deleted, the inode stays
/// readable for it; recycled, it would be written again under the view. So a segment is kept
/// for reuse only while no view is open.
fn retire(dir: &Path, segno: u64) -> Result<(), CdpError> {
    if super::view::hold(dir).is_some() {
        store::remove_segment(dir, segno)
    } else {
        store::recycle_segment(dir, segno)
    }
}

/// How much of a segment consolidation reads at once.
const APPLY_WINDOW: u64 = 4 << 20;

/// Which of a segment's `entries` a later entry of the same segment overwrites whole (a write,
/// write-zeroes or unmap covering every byte of it): applying the segment without them gives
/// the same base copy, since only the last update of every byte survives a pass. A hot block
/// (a database's log, a file system's journal or heartbeat) is then copied once per segment,
/// not once per write.
fn superseded(entries: &[super::format::Entry]) -> Vec<bool> {
    let mut later = super::ranges::Ranges::new();
    let mut skip = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate().rev() {
        if matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap) && e.len > 0 {
            let end = e.offset + e.len;
            skip[i] = super::ranges::covers(&later, e.offset, end);
            super::ranges::mark(&mut later, e.offset, end);
        }
    }
    skip
}

/// Where [`apply`] finds a segment's records.
enum Source<'a> {
    /// The whole segment file's bytes (just scanned into a buffer, or mapped).
    Whole(&'a [u8]),
    /// A buffer to read the segment into, a window at a time.
    Windows(&'a mut Vec<u8>),
}

/// The entries of `entries` to apply (indices, in the order to apply them) and how many were
/// left out: those a later entry overwrites whole. When the entries left are pairwise
/// disjoint (the usual segment: block-sized writes, a hot block written again and again), the
/// order of the applied ones does not matter, and they come sorted by offset when `by_offset`
/// (the base copy's pages then visited in order: session 12 measured a write into tmpfs 15-20 %
/// cheaper so); else in log order ([`superseded`] then decides, for ranges that overlap in
/// part). A sort finds the disjoint case at less cost than [`superseded`]'s range map.
fn plan(entries: &[super::format::Entry], by_offset: bool) -> (Vec<usize>, usize) {
    let data =
        |e: &super::format::Entry| matches!(e.op, Op::Write | Op::Zeroes | Op::Unmap) && e.len > 0;
    let mut order: Vec<usize> = (0..entries.len()).filter(|&i| data(&entries[i])).collect();
    let n = order.len();
    order.sort_unstable_by_key(|&i| (entries[i].offset, i));
    let mut keep = Vec::with_capacity(n);
    let mut disjoint = true;
    let mut k = 0;
    while k < n {
        let e = &entries[order[k]];
        // A run of entries of exactly this range: the last one (in log order) overwrites the
        // others whole.
        let mut last = k;
        while last + 1 < n && {
            let f = &entries[order[last + 1]];
            f.offset == e.offset && f.len == e.len
        } {
            last += 1;
        }
        if last + 1 < n && entries[order[last + 1]].offset < e.offset + e.len {
            disjoint = false;
            break;
        }
        keep.push(order[last]);
        k = last + 1;
    }
    if !disjoint {
        let skip = superseded(entries);
        let keep: Vec<usize> = (0..entries.len())
            .filter(|&i| data(&entries[i]) && !skip[i])
            .collect();
        let left_out = n - keep.len();
        return (keep, left_out);
    }
    let left_out = n - keep.len();
    if !by_offset {
        keep.sort_unstable();
    }
    (keep, left_out)
}

/// The base copy as a pass writes it: through its mapping (on tmpfs), with O_DIRECT (on a
/// disk, blocks of 4 KiB or more) or with `pwrite`.
enum Base<'a> {
    Mapped(&'a mut BaseMap),
    Direct(Box<DirectBase>),
    File(File),
}

impl Base<'_> {
    fn file(&self) -> &File {
        match self {
            Base::Mapped(m) => m.file(),
            Base::Direct(d) => d.file(),
            Base::File(f) => f,
        }
    }

    /// Every write given so far is in the file (O_DIRECT ones are staged until then).
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Base::Direct(d) => d.flush(),
            _ => Ok(()),
        }
    }

    /// Write a record's bytes into the base copy.
    fn write(&mut self, data: &[u8], at: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = WRITES_BEFORE_EIO.get() {
            if n == 0 {
                // The writes before it are in the file (O_DIRECT ones were only staged), as
                // after a device that fails part way.
                self.flush()?;
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            WRITES_BEFORE_EIO.set(Some(n - 1));
        }
        match self {
            Base::Mapped(m) => m.write(data, at),
            Base::Direct(d) => d.write(data, at),
            Base::File(f) => f.write_all_at(data, at),
        }
    }

    /// Zeroes at `at..at + len`: a hole punched, or zeroes written where that fails.
    fn zero(&mut self, at: u64, len: u64, zero: &[u8]) -> std::io::Result<()> {
        // After the writes staged before it (a later one may overlap the hole).
        self.flush()?;
        let punched = super::base_map::punch_hole(self.file(), at, len);
        if let Base::Mapped(m) = self {
            // Even a failed punch may have freed some of the range's pages.
            m.punched(at, len);
        }
        if punched {
            return Ok(());
        }
        let mut pos = at;
        while pos < at + len {
            let n = (at + len - pos).min(zero.len() as u64) as usize;
            self.write(&zero[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

/// Apply segment `segno`'s `entries` to the base copy, but for those a later entry overwrites
/// whole, in the order [`plan`] gives; how many were left out. `mapped`: the base copy's
/// mapping, to write through instead of `pwrite`.
fn apply(
    dir: &Path,
    segno: u64,
    entries: &[super::format::Entry],
    src: Source<'_>,
    mapped: Option<&mut BaseMap>,
    block_size: u32,
) -> Result<usize, CdpError> {
    let bp = store::base_path(dir);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CdpError::Io { what, path, source }
    };
    // Disjoint records go to the base copy in offset order (its pages visited in order), but
    // in log order when both ends are memory and the base takes streamed stores: the segment
    // is then read in order, which the CPU prefetches (session 19: consolidation's CPU per
    // record fell by about a quarter, 0.95 against 1.25 µs, medians of 6 pairs).
    let by_offset =
        matches!(src, Source::Whole(_)) && !mapped.as_ref().is_some_and(|m| m.streams());
    // On a disk, with blocks of a page or more (every record then aligned), O_DIRECT
    // (base_direct.rs): no page of the cache allocated, written back and dropped per record.
    let direct = || {
        (!super::journal::in_memory(dir) && block_size >= 4096)
            .then(|| DirectBase::open(&bp).ok())
            .flatten()
    };
    let mut base = match mapped {
        Some(m) => Base::Mapped(m),
        None => match direct() {
            Some(d) => Base::Direct(Box::new(d)),
            None => Base::File(
                OpenOptions::new()
                    .write(true)
                    .open(&bp)
                    .map_err(io("open", &bp))?,
            ),
        },
    };
    let sp = store::seg_path(dir, segno);
    let seg = File::open(&sp).map_err(io("open", &sp))?;
    // The records lie in the segment in order: read it in large windows, not a read per record.
    let seg_len = seg.metadata().map_err(io("stat", &sp))?.len();
    let mut src = src;
    if let Source::Windows(w) = &mut src {
        w.clear();
    }
    let mut win_at = 0u64;
    let zero = vec![0u8; 1 << 20];
    let (order, left_out) = plan(entries, by_offset);
    for e in order.iter().map(|&i| &entries[i]) {
        match e.op {
            Op::Write => {
                let at = e.pos + REC_HEADER as u64;
                let end = at + e.len;
                let data = match &mut src {
                    Source::Whole(b) => b
                        .get(at as usize..end as usize)
                        .ok_or_else(|| io("read", &sp)(std::io::ErrorKind::UnexpectedEof.into()))?,
                    Source::Windows(win) => {
                        if at < win_at || end > win_at + win.len() as u64 {
                            let want = (end - at).max(APPLY_WINDOW);
                            let n = want.min(seg_len.saturating_sub(at)).max(end - at);
                            win.resize(n as usize, 0);
                            win_at = at;
                            seg.read_exact_at(win, at).map_err(io("read", &sp))?;
                        }
                        let from = (at - win_at) as usize;
                        &win[from..from + e.len as usize]
                    }
                };
                base.write(data, e.offset).map_err(io("write", &bp))?;
            }
            Op::Zeroes | Op::Unmap => {
                base.zero(e.offset, e.len, &zero)
                    .map_err(io("write", &bp))?;
            }
            Op::Mark | Op::Pad | Op::Gap => {}
        }
    }
    base.flush().map_err(io("write", &bp))?;
    base.file().sync_all().map_err(io("sync", &bp))?;
    if let Base::File(f) = &base
        && !super::journal::in_memory(dir)
        && block_size >= 4096
    {
        // On a disk, the base copy's cached pages (all clean after the sync) are dropped: a
        // 4 KiB `pwrite` into a cached large folio (a large record's, or read ahead) walks
        // every block of the folio, 5.95 µs against 2.36 µs into pages not cached (session
        // 20, ext4, by hand), and the next pass writes scattered 4 KiB records into them.
        // Only with blocks of a page or more: a smaller record into a page not cached would
        // make the kernel read the page from the disk first. Views read the base copy from
        // the disk then.
        // SAFETY: posix_fadvise on an open descriptor; only a hint.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
    }
    Ok(left_out)
}

#[cfg(test)]
thread_local! {
    /// Tests: how many more base-copy writes succeed before one fails with EIO (a pass cut
    /// part way, as by a full or failing device or a crash).
    static WRITES_BEFORE_EIO: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    /// Tests: how many passes of this thread scanned a segment.
    static SCANS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How often the thread looks at a volume that consolidated in the last [`ACTIVE_FOR`]. Often
/// enough that a journal written at hundreds of MB/s has its segments consolidated one at a
/// time as retention releases them: in bursts (a look once a second found five at a time at
/// 300 MB/s), the retired files overflow the [`store::RECYCLED_MAX`] kept for reuse, are
/// deleted, and the helper allocates new ones (session 17's profile: 8 % of the thread in
/// deleting files).
pub const LOOK_EVERY: Duration = Duration::from_millis(100);

/// How often the thread looks at any other volume (a look with nothing to do is a directory
/// listing and a few small reads: many idle volumes cost little).
pub const LOOK_IDLE: Duration = Duration::from_secs(1);

/// A volume that consolidated within this long is looked at every [`LOOK_EVERY`].
const ACTIVE_FOR: Duration = Duration::from_secs(10);

/// How many segments of one volume are consolidated in a row before the next volume's turn.
pub const BACKLOG_TURN: usize = 8;

/// A volume the retention thread looks after.
#[derive(Clone)]
pub struct Retained {
    /// Its directory.
    pub dir: PathBuf,
    /// What it keeps.
    pub retention: Retention,
    /// Its counters: where its window starts now (published after each consolidation),
    /// where it ends, and whether size cut the history short of its age target.
    pub stats: Arc<super::journal::CdpStats>,
    /// Its mappings of segment files (the writer's, [`super::journal::Spare::maps`]), if kept.
    pub maps: Option<Arc<SegMaps>>,
}

/// How often "history now X, target Y" is logged again while size keeps winning over age.
const SHORT_LOG_EVERY: Duration = Duration::from_secs(60);

/// `ns` as hours with one decimal (for an operator's log line).
fn hours(ns: u64) -> String {
    format!("{:.1} h", ns as f64 / 3.6e12)
}

/// What the retention thread keeps of a volume between its turns.
struct Kept {
    /// When to look at it next.
    next: std::time::Instant,
    /// When it last consolidated.
    worked: Option<std::time::Instant>,
    /// When "history now X, target Y" was last logged for it.
    last_log: Option<std::time::Instant>,
    /// Its base copy's mapping (base_map.rs), if on tmpfs.
    map: Option<BaseMap>,
    /// What its last pass found.
    notes: Notes,
}

impl Kept {
    /// Whether it has not consolidated in the last [`ACTIVE_FOR`] at `now`.
    fn idle(&self, now: std::time::Instant) -> bool {
        self.worked
            .is_none_or(|w| now.duration_since(w) >= ACTIVE_FOR)
    }

    /// Schedule the next look after a turn that came to `turn` at `now`; true when the turn
    /// worked (the thread then goes round again at once, this volume included).
    fn after(&mut self, turn: Turn, now: std::time::Instant) -> bool {
        match turn {
            Turn::Worked => {
                self.worked = Some(now);
                self.next = now;
                return true;
            }
            Turn::Nothing if !self.idle(now) => {
                self.next = now + LOOK_EVERY;
            }
            Turn::Nothing | Turn::Stuck => self.next = now + LOOK_IDLE,
        }
        false
    }
}

/// What a volume's turn of the retention thread came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// It consolidated at least one segment.
    Worked,
    /// Nothing was releasable.
    Nothing,
    /// A pass failed, or a hold (bookmark, view, rollback) kept the releasable segment: looked
    /// at again only every [`LOOK_IDLE`] (a failing pass logs each time, and writes its marker
    /// and part of the segment again).
    Stuck,
}

/// Consolidate what retention releases in `v`, up to [`BACKLOG_TURN`] segments (fewer when
/// `stop` is set). Publishes the new window start and says when
/// size cut the history short of its age target (logged at most every [`SHORT_LOG_EVERY`],
/// `last_log` remembering when).
fn consolidate_backlog(
    v: &Retained,
    stop: &AtomicBool,
    last_log: &mut Option<std::time::Instant>,
    bytes: &mut Vec<u8>,
    base_map: &mut Option<BaseMap>,
    notes: &mut Notes,
) -> Turn {
    let mut turn = Turn::Nothing;
    for _ in 0..BACKLOG_TURN {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let now = super::clock::now();
        notes.blocked = None;
        let c = match consolidate_once_in(
            &v.dir,
            &v.retention,
            now,
            bytes,
            notes,
            base_map,
            v.maps.as_deref(),
        ) {
            Ok(Some(c)) => c,
            Ok(None) => {
                if notes.blocked.is_some() {
                    turn = Turn::Stuck;
                }
                note_held(v, notes.blocked);
                break;
            }
            Err(e) => {
                turn = Turn::Stuck;
                tracing::warn!(dir = %v.dir.display(), error = %e, "cdp: consolidation failed; retried later");
                // A pass cut part way: its marker moved the window's start already.
                if let Ok(m) = store::read_meta(&v.dir)
                    && let Ok(Some(mv)) = store::read_moving(&v.dir, &m)
                {
                    v.stats.window_start.store(mv.to_time, Ordering::Relaxed);
                }
                break;
            }
        };
        turn = Turn::Worked;
        note_held(v, None);
        if let Ok(m) = store::read_meta(&v.dir) {
            v.stats
                .window_start
                .store(m.window_start(), Ordering::Relaxed);
        }
        if c.by_size && !c.by_age {
            v.stats.short_by_size.store(true, Ordering::Relaxed);
            if last_log.is_none_or(|t| t.elapsed() >= SHORT_LOG_EVERY) {
                *last_log = Some(std::time::Instant::now());
                let start = v.stats.window_start.load(Ordering::Relaxed);
                tracing::warn!(dir = %v.dir.display(),
                    "cdp: history now {}, target {}: retention_bytes consolidated records younger than retention_age (give the journal more space, or accept the shorter history)",
                    hours(now.saturating_sub(start)),
                    hours(v.retention.age_ns.unwrap_or(0)));
            }
        }
    }
    turn
}

/// How often a held volume's hold is logged again.
const HELD_LOG_EVERY: Duration = Duration::from_secs(60);

/// The hold of `dir` at time `at` (what stopped a pass), for status and logs.
pub fn describe_hold(dir: &Path, at: u64) -> serde_json::Value {
    match super::bookmark::load(dir) {
        Ok(b) => {
            if let Some((n, t)) = b.iter().find(|(_, t)| **t == at) {
                return serde_json::json!({"bookmark": n, "time_ns": t});
            }
        }
        Err(e) if at == 0 => {
            return serde_json::json!({"bookmarks_unreadable": e, "time_ns": 0});
        }
        Err(_) => {}
    }
    match super::view::holders(dir)
        .into_iter()
        .find(|(_, t)| *t == at)
    {
        Some((pid, t)) => serde_json::json!({"view_pid": pid, "time_ns": t}),
        None if super::rollback::hold(dir) == Some(at) => {
            serde_json::json!({"rollback_not_confirmed": true, "time_ns": at})
        }
        None => serde_json::json!({"time_ns": at}),
    }
}

/// Publish what held `v`'s last pass (`blocked`: the hold's time; none: not held), logging a
/// held volume at most every [`HELD_LOG_EVERY`].
fn note_held(v: &Retained, blocked: Option<u64>) {
    let mut h = v.stats.held.lock().unwrap_or_else(|e| e.into_inner());
    let Some(at) = blocked else {
        h.what = None;
        return;
    };
    let what = describe_hold(&v.dir, at);
    if h.logged.is_none_or(|t| t.elapsed() >= HELD_LOG_EVERY) {
        h.logged = Some(std::time::Instant::now());
        tracing::warn!(dir = %v.dir.display(), hold = %what,
            "cdp: consolidation held: retention releases the oldest segment, but a bookmark or an open view is at or before its newest record; the journal grows until the bookmark is deleted or the view closed");
    }
    h.what = Some(what);
}

/// Start the retention thread over `vols`; it stops when `stop` is set.
pub fn spawn(
    list: Arc<std::sync::Mutex<Vec<Retained>>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cdp-retention".into())
        .spawn(move || {
            let mut bytes = Vec::new();
            let mut kept: std::collections::HashMap<PathBuf, Kept> =
                std::collections::HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                // The list changes at run time (CDP switched on or off): a copy per pass.
                let vols = list.lock().unwrap_or_else(|e| e.into_inner()).clone();
                // A volume no longer listed is forgotten (its mapping would keep a removed
                // file's memory), and the files it kept for reuse beyond two are deleted.
                kept.retain(|d, _| {
                    let listed = vols.iter().any(|v| &v.dir == d);
                    if !listed {
                        store::trim_recycled(d, store::RECYCLED_KEEP);
                    }
                    listed
                });
                let mut busy = false;
                let now = std::time::Instant::now();
                for v in &vols {
                    // The thread's first look (a start, or CDP switched on): files a stop left
                    // waiting beyond two go, before this turn (their space may be needed) and
                    // after it (what the turn consolidated, a start's backlog, is not the
                    // burst the files beyond two are kept for).
                    let first = !kept.contains_key(&v.dir);
                    if first {
                        store::trim_recycled(&v.dir, store::RECYCLED_KEEP);
                    }
                    let k = kept.entry(v.dir.clone()).or_insert_with(|| Kept {
                        next: now,
                        worked: None,
                        last_log: None,
                        map: None,
                        notes: Notes::default(),
                    });
                    if now < k.next {
                        continue;
                    }
                    let turn = consolidate_backlog(
                        v,
                        &stop,
                        &mut k.last_log,
                        &mut bytes,
                        &mut k.map,
                        &mut k.notes,
                    );
                    busy |= k.after(turn, now);
                    // Idle a while, or the device short of room: the files kept for a burst of
                    // consolidations give their space back (before the sweep, so their
                    // mappings go with them).
                    store::trim_recycled_when(&v.dir, first || k.idle(now));
                    // Mappings of the segment files this pass deleted go (their memory with them).
                    if let Some(m) = &v.maps {
                        m.sweep(&v.dir);
                    }
                }
                if busy {
                    continue; // a backlog: go round again at once
                }
                std::thread::sleep(LOOK_EVERY);
            }
        })
}

#[cfg(test)]
mod tests;
