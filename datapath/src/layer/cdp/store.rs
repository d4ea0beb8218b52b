//! A volume's CDP directory off the reactor: creating it (identity, base copy), reading its
//! history (segments, indexes), recovery at start (cut a torn tail, set damaged segments
//! aside, rebuild missing or wrong indexes) and creating segments. Plain blocking std I/O: it
//! runs before the reactors start, on the control thread or in `twinblk cdp` commands.
//!
//! Invariants:
//! - The history is the chain of segments 1, 2, ... whose headers check and whose first
//!   sequence continues the previous segment's last record; it ends at the first record that
//!   does not check (docs/cdp-format.md, "Torn tail").
//! - Only [`Load::Recover`] changes the directory's log (zeroes after the cut, renames damaged
//!   segments); any reader may write a sealed segment's index (a cache, written to a temporary
//!   file and renamed).
//! - A `cdp.meta` that is not the segments' (another volume id in a valid header, or a base
//!   point the first segment does not continue) refuses every load before anything changes.
//! - A cut that leaves out records that were journaled (a damaged record with records after
//!   it, a damaged or zeroed header with records after it, segments set aside) has
//!   `degraded.map` say the history is not whole after the cut before anything changes.
//! - A [`Load::ReadOnly`] of a history whose writer runs (it holds `done` locked) leaves out
//!   every record after that writer's done watermark, read after the records, and reads
//!   `degraded.map` last ([`super::done`]): no record whose update's base operation is still
//!   to come, or failed, is part of the history it returns.

use super::clock;
use super::error::io_err;
pub use super::error::{CdpError, sync_dir};
use super::format::{self, Entry, Index, Meta, Moving, SegHeader};
#[cfg(test)]
use super::names::is_spare;
pub use super::names::{base_path, read_meta, seg_path, segments_in_use};
use super::names::{meta_path, segment_numbers};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How to read a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Read only (a restore, with or without the daemon running).
    ReadOnly,
    /// The layer's start: cut the tail, set damaged segments aside.
    Recover,
}

/// One segment of the history.
#[derive(Debug)]
pub struct Segment {
    /// Its header.
    pub header: SegHeader,
    /// Its records and where its log ends.
    pub index: Index,
}

/// A volume's history as read from its directory.
#[derive(Debug)]
pub struct History {
    /// The directory.
    pub dir: PathBuf,
    /// Its identity.
    pub meta: Meta,
    /// The segments of the chain, in order.
    pub segments: Vec<Segment>,
    /// Last sequence number (0: no record).
    pub last_seq: u64,
    /// Time of the last record (the creation time when none).
    pub last_time: u64,
    /// Segments set aside (by [`Load::Recover`]) or ignored (read only) after the chain ended.
    pub damaged: Vec<u64>,
    /// Where and why the chain ended before the end of the last segment file, if it did.
    pub cut: Option<String>,
    /// The cut left out records that were journaled (a damaged record with records after it,
    /// or segments after it): acknowledged writes the volume holds and the history does not.
    /// [`Load::Recover`] then has `degraded.map` say the history is not whole after the cut
    /// (the start journals the whole volume again).
    pub lost: bool,
    /// `degraded.map` says the journal is not whole after this sequence (and its time): points
    /// after it are refused ([`CdpError::NotWhole`]).
    pub open_gap: Option<(u64, u64)>,
    /// A consolidation pass under way (or stopped part way): the points before its `to` are
    /// refused ([`read_moving`]).
    pub moving: Option<Moving>,
    /// The last segment was sealed by a clean stop (its index written then and still true):
    /// no update was in flight when its writer stopped.
    pub sealed: bool,
    /// A writer runs ([`Load::ReadOnly`] only): its done watermark ([`super::done`]). The
    /// records after it (their updates' base operations still to come, or failed) were left
    /// out: the history ends there.
    pub running: Option<u64>,
}

impl History {
    /// The first readable point's sequence: the base point, or the one a consolidation under
    /// way moves it to (the base copy is then the content of no point before it).
    pub fn first_seq(&self) -> u64 {
        self.moving.map_or(self.meta.base_seq, |m| m.to)
    }

    /// The first readable point's time ([`History::first_seq`]).
    pub fn first_time(&self) -> u64 {
        self.moving.map_or(self.meta.window_start(), |m| m.to_time)
    }

    /// Every data record, in sequence order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.segments
            .iter()
            .flat_map(|s| s.index.entries.iter().map(move |e| (s.header.segno, e)))
    }

    /// Leave out every record after sequence `done` (a running writer's done watermark): the
    /// history then ends at `done`, at a time just before the first record left out (every
    /// moment up to then reads `done`'s content). Nothing when no record lies after it.
    pub fn keep_until(&mut self, done: u64) {
        let done = done.max(self.first_seq());
        let Some(next) = self
            .entries()
            .find(|(_, e)| e.seq > done)
            .map(|(_, e)| e.time)
        else {
            return;
        };
        for s in &mut self.segments {
            s.index.entries.retain(|e| e.seq <= done);
        }
        self.last_seq = done;
        self.last_time = next.saturating_sub(1);
    }
}

fn idx_path(dir: &Path, segno: u64) -> PathBuf {
    dir.join(format!("seg-{segno:016x}.idx"))
}

/// Read `out.len()` bytes of `f` at `at`; what lies past the file's end (a shorter, sparse
/// base copy; a volume file shorter than its volume) reads as zeroes.
pub fn read_or_zero(f: &File, out: &mut [u8], at: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        let n = f.read_at(&mut out[done..], at + done as u64)?;
        if n == 0 {
            out[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

fn moving_path(dir: &Path) -> PathBuf {
    dir.join("consolidating")
}

/// Record, before a consolidation pass changes the base copy, where it moves the base point.
pub fn write_moving(dir: &Path, m: &Moving) -> Result<(), CdpError> {
    write_atomic(dir, &moving_path(dir), &m.encode())
}

/// The pass is over (the meta names its point) or stale: remove its marker.
pub fn clear_moving(dir: &Path) -> Result<(), CdpError> {
    let p = moving_path(dir);
    match std::fs::remove_file(&p) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CdpError::Io {
            what: "remove",
            path: p,
            source: e,
        }),
    }
}

/// The consolidation pass under way from `meta`'s base point, if there is one: the base copy
/// may hold some of its records, so the points before its `to` are not readable. A marker
/// of an earlier pass (another base point) means nothing; one that does not decode is an
/// error (the window would be unknown).
pub fn read_moving(dir: &Path, meta: &Meta) -> Result<Option<Moving>, CdpError> {
    let p = moving_path(dir);
    let b = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &p)(e)),
    };
    let m = Moving::decode(&b).map_err(|e| CdpError::Meta {
        path: p,
        why: e.to_string(),
    })?;
    Ok((m.vol_id == meta.vol_id && m.from == meta.base_seq && m.to > m.from).then_some(m))
}

/// Write `bytes` to `path` atomically (temporary file, fsync, rename, directory fsync).
pub(super) fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CdpError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    sync_dir(dir)
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    let r = u64::from_le_bytes(b);
    if n == 8 && r != 0 {
        r
    } else {
        clock::now() ^ ((std::process::id() as u64) << 32) | 1
    }
}

/// Open the CDP directory of a volume of `size` bytes, creating it (identity and base copy)
/// when it holds no history yet. The base copy is a copy of `seed` (the base device's file)
/// or, without one, all zeroes.
pub fn open_or_create(
    dir: &Path,
    size: u64,
    block_size: u32,
    seed: Option<&Path>,
) -> Result<Meta, CdpError> {
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let mp = meta_path(dir);
    match std::fs::read(&mp) {
        Ok(b) => {
            let m = Meta::decode(&b).map_err(|e| CdpError::Meta {
                path: mp.clone(),
                why: e.to_string(),
            })?;
            if m.size != size || m.block_size != block_size {
                return Err(CdpError::Meta {
                    path: mp,
                    why: format!(
                        "the history is of a volume of {} bytes in blocks of {}, this volume has {size} in blocks of {block_size}: use another directory",
                        m.size, m.block_size
                    ),
                });
            }
            clock::not_before(m.created);
            Ok(m)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // `cdp.meta` is written before any segment and only ever replaced by a rename:
            // missing beside segments, it was lost, and a new history made here would write
            // over the base copy (every consolidated record) and set every segment aside.
            // Refused, as a damaged one is.
            if !segment_numbers(dir)?.is_empty() {
                return Err(CdpError::Meta {
                    path: mp,
                    why: "missing, but the directory holds a history's segments: refused (a new history would replace its base copy); put cdp.meta back, or move the directory's files away to start a new history".into(),
                });
            }
            let base = base_path(dir);
            let tmp = base.with_extension("tmp");
            File::create(&tmp).map_err(io_err("create", &tmp))?;
            if let Some(src) = seed {
                copy_data(src, &tmp, size).map_err(io_err("copy the base into", &tmp))?;
            }
            let f = OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(io_err("open", &tmp))?;
            f.set_len(size).map_err(io_err("size", &tmp))?;
            let m = Meta {
                block_size,
                vol_id: random_id(),
                size,
                created: clock::now(),
                base_seq: 0,
                base_time: 0,
            };
            // Its identity after the volume's bytes (docs/cdp-integrity.md).
            f.write_all_at(&super::kept::encode_id(m.vol_id, 0), size)
                .map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("sync", &tmp))?;
            std::fs::rename(&tmp, &base).map_err(io_err("rename", &base))?;
            write_atomic(dir, &mp, &m.encode())?;
            // Its map (whole) before any segment is marked (docs/cdp-integrity.md).
            drop(super::degraded::RegionMap::open(dir, size)?);
            Ok(m)
        }
        Err(e) => Err(io_err("read", &mp)(e)),
    }
}

/// Copy the first `size` bytes of `src` into `dst`, skipping holes where the filesystem
/// reports them (SEEK_DATA), so a new, sparse base copies in no time.
fn copy_data(src: &Path, dst: &Path, size: u64) -> std::io::Result<()> {
    let s = File::open(src)?;
    let d = OpenOptions::new().write(true).open(dst)?;
    let fd = s.as_raw_fd();
    let mut buf = vec![0u8; 1 << 20];
    let mut copy = |from: u64, to: u64| -> std::io::Result<()> {
        let mut at = from;
        while at < to {
            let n = (to - at).min(buf.len() as u64) as usize;
            s.read_exact_at(&mut buf[..n], at)?;
            d.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        Ok(())
    };
    let mut off = 0u64;
    while off < size {
        // SAFETY: plain syscall on an open descriptor.
        let data = unsafe { libc::lseek(fd, off as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return copy(off, size); // no hole information (a block device): copy it all
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let start = (data as u64).min(size);
        copy(start, end)?;
        off = end.max(start + 1);
    }
    Ok(())
}

/// A usable index of segment `segno` (checked against the segment), if there is one.
fn load_index(dir: &Path, file: &File, segno: u64, meta: &Meta) -> Option<Index> {
    let b = std::fs::read(idx_path(dir, segno)).ok()?;
    let i = Index::decode(&b).ok()?;
    if i.segno != segno {
        return None;
    }
    if let Some(last) = i.entries.last() {
        let mut h = [0u8; format::REC_HEADER];
        file.read_exact_at(&mut h, last.pos).ok()?;
        let r = format::RecHeader::decode(&h, meta.vol_id).ok()?;
        if r.seq != last.seq || last.pos + r.total() as u64 > i.end {
            return None;
        }
    }
    Some(i)
}

/// Whether segment `segno` of `dir` (the history `meta`) was sealed by a clean stop (its index
/// says so and still holds: nothing appended after it): no record of it or before it lacks its
/// base write (retain.rs then needs no mark to keep records for a crash comparison).
pub fn sealed_clean(dir: &Path, meta: &Meta, segno: u64) -> bool {
    let path = seg_path(dir, segno);
    let Ok(file) = File::open(&path) else {
        return false;
    };
    let Ok(header) = read_header(&file, &path) else {
        return false;
    };
    load_index(dir, &file, segno, meta)
        .is_some_and(|i| i.clean && ends_at(&file, i.end, meta, header.first_seq))
}

/// Whether the log of `file`, a segment whose first sequence number is `first_seq`, really
/// ends at `end`: no record header of this use of the file starts there (an index of the last
/// segment written at a clean stop is stale once anything was appended after it; an earlier
/// use's record or padding there is not an append).
fn ends_at(file: &File, end: u64, meta: &Meta, first_seq: u64) -> bool {
    let mut h = [0u8; format::REC_HEADER];
    match file.read_exact_at(&mut h, end) {
        Ok(()) => format::RecHeader::decode(&h, meta.vol_id)
            .ok()
            .is_none_or(|r| r.op == format::Op::Pad || r.seq < first_seq),
        Err(_) => true, // the file ends there
    }
}

/// Write the index of segment `segno`, whose log ends before byte `used`, from its bytes: the
/// daemon's clean stop seals its active segment this way, so readers (views, restores, the
/// next start) need not scan it.
pub fn seal_index(dir: &Path, meta: &Meta, segno: u64, used: u64) -> Result<(), CdpError> {
    let path = seg_path(dir, segno);
    let file = File::open(&path).map_err(io_err("open", &path))?;
    let mut bytes = vec![0u8; used as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(io_err("read", &path))?;
    let header = SegHeader::decode(&bytes).map_err(|e| CdpError::Meta {
        path: path.clone(),
        why: format!("segment header: {e}"),
    })?;
    let s = format::scan(&bytes, meta.vol_id, meta.size, header.first_seq - 1, 0);
    let i = Index {
        segno,
        end: s.end,
        entries: s.entries,
        clean: true,
    };
    write_atomic(dir, &idx_path(dir, segno), &i.encode())
}

/// Read the history of `dir` (see [`Load`]).
/// The lock a consolidation pass holds while it changes the base copy.
pub fn consolidate_lock(dir: &Path) -> PathBuf {
    dir.join("consolidate.lock")
}

/// Lock `dir`'s consolidation lock (exclusive: a consolidation pass, or a view waiting for
/// one to end) until the returned file is dropped.
pub fn lock_consolidation(dir: &Path) -> std::io::Result<std::fs::File> {
    lock_as(dir, libc::LOCK_EX)
}

/// Lock it shared (a reader of segments: consolidation, which deletes them, waits), if the
/// directory lets the lock file be made; `None` otherwise (a read-only copy of a history,
/// which nothing consolidates).
pub fn lock_reading(dir: &Path) -> Option<std::fs::File> {
    lock_as(dir, libc::LOCK_SH).ok()
}

fn lock_as(dir: &Path, how: i32) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(consolidate_lock(dir))?;
    // SAFETY: plain syscall on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

pub fn load(dir: &Path, mode: Load) -> Result<History, CdpError> {
    // A reader holds consolidation off while it lists and indexes the segments (a pass that
    // deleted one between the two would make the history look damaged).
    let _reading = (mode == Load::ReadOnly)
        .then(|| lock_reading(dir))
        .flatten();
    let meta = read_meta(dir)?;
    let (nums, spare) = segments_in_use(dir)?;
    let mut h = History {
        dir: dir.to_path_buf(),
        meta,
        segments: Vec::new(),
        last_seq: meta.base_seq,
        last_time: meta.window_start(),
        damaged: Vec::new(),
        cut: None,
        lost: false,
        open_gap: open_gap(dir, meta.size),
        moving: read_moving(dir, &meta)?,
        sealed: false,
        running: None,
    };
    refuse_another_history(dir, &meta, &nums)?;
    // A base copy put in this one's place is refused; a history of an earlier version gets
    // its map and the base copy's identity before this run marks a segment
    // (docs/cdp-integrity.md).
    if super::kept::is_kept(dir, &nums) {
        super::kept::check_base(dir, &meta, h.moving.as_ref())?;
    } else if mode == Load::Recover {
        super::kept::upgrade(dir, &meta)?;
    }
    let mut consolidated = Vec::new();
    for (i, &segno) in nums.iter().enumerate() {
        let last_file = i + 1 == nums.len();
        if h.cut.is_some() {
            h.damaged.push(segno);
            continue;
        }
        let path = seg_path(dir, segno);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let mut hb = vec![0u8; format::SEG_HEADER];
        // A file too short for its header is damage (cut there); any other read error is the
        // device's, maybe passing: the load fails rather than set acknowledged records aside.
        let header = match file.read_exact_at(&mut hb, 0) {
            Ok(()) => SegHeader::decode(&hb).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(e.to_string()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        // A segment the base copy already holds (consolidation stopped before deleting it).
        if let Ok(sh) = &header
            && sh.vol_id == meta.vol_id
            && meta.base_seq > 0
            && sh.first_seq <= meta.base_seq
            && h.segments.is_empty()
        {
            consolidated.push(segno);
            continue;
        }
        // A valid header of this history and number that starts after the recovered end: the
        // records between were written before it (a segment starts at the writer's durable
        // end), and are lost (a damaged record header, none seen after it).
        let starts_after = header.as_ref().is_ok_and(|sh| {
            sh.vol_id == meta.vol_id
                && sh.segno == segno
                && sh.first_seq > h.last_seq.saturating_add(1)
        });
        let header = header.and_then(|sh| {
            if sh.vol_id != meta.vol_id || sh.segno != segno {
                Err("belongs to another history or has another number".to_string())
            } else if h.last_seq.checked_add(1) != Some(sh.first_seq) {
                Err(format!(
                    "starts at sequence {}, the history's last is {}",
                    sh.first_seq, h.last_seq
                ))
            } else if h
                .segments
                .last()
                .is_some_and(|s| s.header.segno + 1 != segno)
            {
                Err("a segment number is missing before it".to_string())
            } else {
                Ok(sh)
            }
        });
        let header = match header {
            Ok(sh) => sh,
            Err(why) => {
                h.cut = Some(format!("segment {segno}: header: {why}"));
                // The newest segment's header torn by a crash while it was created holds
                // nothing acknowledged; but a record of this history after it (one that
                // continues the log) was acknowledged once the header was durable, so that
                // header was damaged since (before session 27 it counted as torn, and the
                // start journaled on from the cut).
                // So is one whose valid header starts after the recovered end (before session
                // 27 counted as a cut of nothing acknowledged when the segment held no record
                // yet). (With `sync = "flush"`, a power loss may also leave such a header
                // over records never synced: marked lost too, the safe answer.)
                h.lost = !last_file
                    || starts_after
                    || records_after_header(&file, &meta, h.last_seq, h.last_time);
                h.damaged.push(segno);
                continue;
            }
        };
        // The last segment's index exists only when a clean stop sealed it; it is used only
        // while nothing follows its end.
        let mut cache = false;
        let index = match load_index(dir, &file, segno, &meta)
            .filter(|i| {
                (i.entries.first()).is_none_or(|e| h.last_seq.checked_add(1) == Some(e.seq))
            })
            .filter(|i| !last_file || ends_at(&file, i.end, &meta, header.first_seq))
        {
            Some(i) => {
                // Only a clean stop's index says no record lacks its base write; one a
                // recovery wrote (maybe killed before it compared, tail.rs) does not.
                h.sealed = last_file && i.clean;
                i
            }
            None => {
                h.sealed = false;
                let mut bytes = Vec::new();
                (&file)
                    .read_to_end(&mut bytes)
                    .map_err(io_err("read", &path))?;
                let s = format::scan(&bytes, meta.vol_id, meta.size, h.last_seq, h.last_time);
                // Zeroes or an earlier use's records may follow the end; a record of this use
                // means the log was cut (docs/cdp-format.md, "Torn tail").
                let later = s.stopped.as_ref().and_then(|_| {
                    format::later_record(
                        &bytes,
                        s.end as usize,
                        meta.vol_id,
                        header.first_seq,
                        s.last_time,
                    )
                });
                // No record of this use found after the end, but the log stops short of the
                // records the next segment's header or the segment's own index (a clean stop's
                // seal, an earlier recovery's) says it held: its last record is damaged (an
                // acknowledged one; before, it was zeroed with no copy kept).
                let short = s.stopped.is_some()
                    && later.is_none()
                    && held_until(dir, segno, &meta, last_file)
                        .is_some_and(|until| until > s.last_seq);
                let i = Index {
                    segno,
                    end: s.end,
                    entries: s.entries,
                    clean: false,
                };
                // A cache (written below): a failure to write it costs a scan next time. Not a
                // reader's index of a cut log: recovery would take its end for the log's and
                // zero the records after the damage without scanning, so without keeping their
                // copy below.
                cache = mode == Load::Recover || (!last_file && later.is_none() && !short);
                if short && let Some(why) = &s.stopped {
                    if mode == Load::Recover {
                        keep_cut_copy(&path);
                    }
                    h.lost = true;
                    h.cut = Some(format!(
                        "segment {segno}: the log ends at byte {} ({why}) before records it held (its index or the next segment's header says so); what follows is cut",
                        s.end
                    ));
                }
                if let Some(why) = s.stopped
                    && let Some(at) = later
                {
                    // Records of this use after the damaged one: acknowledged ones if it is a
                    // corruption (in a sealed segment it always is; in the last, batches in
                    // flight at a crash may also follow a torn one). Before recovery zeroes
                    // them, a copy of the file is kept for an operator (`*.cut.damaged`).
                    // In the last segment, a record found at the end itself is the torn one
                    // (its header intact, its payload not): what matters is whether another
                    // follows it (a payload damaged in the middle of the log, records after
                    // it were acknowledged; before, they were zeroed with no copy kept).
                    let follows = at as u64 > s.end
                        || format::later_record(
                            &bytes,
                            at + 1,
                            meta.vol_id,
                            header.first_seq,
                            s.last_time,
                        )
                        .is_some();
                    if mode == Load::Recover && (!last_file || follows) {
                        keep_cut_copy(&path);
                    }
                    h.lost = !last_file || follows;
                    h.cut = Some(if at as u64 == s.end {
                        format!(
                            "segment {segno}: the record at byte {at} is torn or damaged ({why}); it and what follows are cut"
                        )
                    } else {
                        format!(
                            "segment {segno}: the log ends at byte {} ({why}), before a record of this segment at byte {at}; what follows is cut",
                            s.end
                        )
                    });
                }
                i
            }
        };
        if let Some(e) = index.entries.last() {
            h.last_seq = e.seq;
            h.last_time = e.time;
        }
        // Recovery has the map say "not whole after the cut" before it caches the cut index:
        // the next start takes a cached index without scanning, so it would no longer see the
        // records the cut left out (nor would it if the next segment holds none yet).
        if mode == Load::Recover {
            lost_before_changes(&mut h)?;
        }
        if cache && let Err(e) = write_atomic(dir, &idx_path(dir, segno), &index.encode()) {
            tracing::warn!(error = %e, "cdp: cannot write a segment index");
        }
        if mode == Load::Recover {
            zero_after(&path, index.end)?;
        }
        h.segments.push(Segment { header, index });
    }
    // A trailing segment whose header is all zeroes is a spare prepared ahead, unless records
    // of this history continuing the log follow it: then its header was durable once (they
    // were acknowledged only after it) and was lost since. Set aside, not deleted (before
    // session 27 it was deleted with its acknowledged records, and the start journaled on).
    // (Only its first bytes are read: the segment's first batch begins right after the
    // header; a spare is there at every start and reading it whole would cost a segment.)
    let (spare, zeroed): (Vec<u64>, Vec<u64>) = spare.into_iter().partition(|&segno| {
        let mut b = vec![0u8; format::SEG_HEADER + SPARE_LOOK];
        let n = File::open(seg_path(dir, segno)).and_then(|f| {
            let mut n = 0;
            while n < b.len() {
                match f.read_at(&mut b[n..], n as u64)? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(n)
        });
        n.is_ok_and(|n| {
            format::later_record(
                &b[..n],
                format::SEG_HEADER,
                meta.vol_id,
                h.last_seq.saturating_add(1),
                h.last_time,
            )
            .is_none()
        })
    });
    if let Some(&first) = zeroed.iter().min() {
        h.cut.get_or_insert_with(|| {
            format!("segment {first}: header zeroed, but records of this history follow it")
        });
        h.lost = true;
        h.damaged.extend(zeroed);
        h.damaged.sort_unstable();
    }
    if mode == Load::Recover {
        lost_before_changes(&mut h)?;
        for &segno in consolidated.iter().chain(&spare) {
            remove_segment(dir, segno)?;
        }
        for &segno in &h.damaged {
            let p = seg_path(dir, segno);
            let to = aside_name(&p, "damaged");
            tracing::warn!(segment = %p.display(), "cdp: setting a segment after the end of the history aside");
            // The index first: left behind by a kill, it would name the records of a later
            // segment of this number (the writer numbers its next one after the cut).
            let _ = std::fs::remove_file(idx_path(dir, segno));
            std::fs::rename(&p, &to).map_err(io_err("rename", &p))?;
        }
        if !h.damaged.is_empty() {
            sync_dir(dir)?;
        }
        if let Some(c) = &h.cut {
            tracing::warn!(dir = %dir.display(), cut = %c, "cdp: history cut");
        }
    }
    // A reader of a running writer's history takes the records only up to its done watermark,
    // read after the records (docs/cdp-format.md, "Readers of a running history"), and
    // `degraded.map` last: a writer that stopped meanwhile wrote any failure there first.
    if mode == Load::ReadOnly {
        h.running = super::done::running(dir, meta.vol_id)?;
        if let Some(done) = h.running {
            h.keep_until(done);
        }
        h.open_gap = open_gap(dir, meta.size);
    }
    // The writer's start: its next records must come after every time the directory names,
    // even if this process's wall clock is behind the one that named them: its records'
    // times, a bookmark set at site time just before a crash (no record reached it yet), a
    // rollback's start (`rollback::load_for_writing` adds that one: the rollback module sits
    // above this one) (else a bookmark's point would take in later writes). Not for a reader
    // (a restore, a view, a test reading a site's history): it stamps no records, and moving
    // its process's clock would misdate everything else that process does (the tests' own
    // clock, shared by every test of the binary, once moved 3 s ahead by a history whose
    // daemon's clock was, and failed other tests).
    if mode == Load::Recover {
        clock::not_before(h.last_time);
        if let Ok(b) = super::bookmark::load(dir)
            && let Some(&t) = b.values().max()
        {
            clock::not_before(t);
        }
    }
    Ok(h)
}

/// Where `degraded.map` says the history of `dir` (a volume of `size` bytes) is whole up to,
/// if it says it is not whole after that.
fn open_gap(dir: &Path, size: u64) -> Option<(u64, u64)> {
    match super::degraded::read_prior(dir, size) {
        super::degraded::Prior::Stopped {
            after, after_time, ..
        } => Some((after, after_time)),
        super::degraded::Prior::Whole => None,
    }
}

/// Refuse a directory whose segments `nums` include one whose header checks but names
/// another volume id than `meta`: `cdp.meta` is not this history's (copied from another, or
/// restored from the wrong backup). A segment of this directory never holds another id (a
/// reused file's header is zeroed before it is named a segment), so the history would
/// otherwise be cut before it and extended from the other meta's base point over this
/// directory's base copy (before session 27, with one segment, the start did so and served
/// the base copy where the volume held the segment's writes). Read before anything changes.
///
/// Also refused: a first segment (its header valid, this history's) that starts after the
/// record following the meta's base point. The base copy then is not that point (a `cdp.meta`
/// put back from an older copy, while consolidation moved the base copy on; or the oldest
/// segments deleted): before session 27 the history was cut before the segment and the base
/// point, its window start, was served as the base copy, the content of a later point.
fn refuse_another_history(dir: &Path, meta: &Meta, nums: &[u64]) -> Result<(), CdpError> {
    for (i, &segno) in nums.iter().enumerate() {
        let path = seg_path(dir, segno);
        let mut hb = vec![0u8; format::SEG_HEADER];
        let ok = File::open(&path).and_then(|f| f.read_exact_at(&mut hb, 0));
        let Some(sh) = ok.ok().and_then(|()| SegHeader::decode(&hb).ok()) else {
            continue;
        };
        if i == 0 && sh.vol_id == meta.vol_id && sh.first_seq > meta.base_seq.saturating_add(1) {
            return Err(CdpError::Meta {
                path: meta_path(dir),
                why: format!(
                    "names its base copy as the history up to sequence {}, but the first segment, {}, starts at sequence {}: the records between are missing (cdp.meta older than the base copy, or segments deleted), so no point can be read from the base copy: refused; put the matching cdp.meta back, or move the directory's files away to start a new history",
                    meta.base_seq,
                    path.display(),
                    sh.first_seq
                ),
            });
        }
        if sh.vol_id != meta.vol_id {
            return Err(CdpError::Meta {
                path: meta_path(dir),
                why: format!(
                    "names volume id {:#x}, but segment {} belongs to a history of volume id {:#x}: refused (the history would be extended over another's base copy); put this history's cdp.meta back, or move the directory's files away to start a new history",
                    meta.vol_id,
                    path.display(),
                    sh.vol_id
                ),
            });
        }
    }
    Ok(())
}

/// Whether segment `file`, whose header does not check, holds a record of this history that
/// would continue a log ending at `last_seq` (time `last_time`): a record written in this use
/// of the file, after a header that was durable then. A file that cannot be read counts as
/// holding one (the safe answer: the history is then not whole after the cut).
fn records_after_header(file: &File, meta: &Meta, last_seq: u64, last_time: u64) -> bool {
    let mut bytes = Vec::new();
    if (&*file).read_to_end(&mut bytes).is_err() {
        return true;
    }
    bytes.len() > format::SEG_HEADER
        && format::later_record(
            &bytes,
            format::SEG_HEADER,
            meta.vol_id,
            last_seq.saturating_add(1),
            last_time,
        )
        .is_some()
}

/// The last sequence segment `segno` held, as far as something other than
/// its records says: the next segment's header (valid, this history's, the next number) when
/// it is not the last file, else its index file (any that decodes and is of this segment,
/// even one its damaged last record no longer matches). `None`: nothing says.
fn held_until(dir: &Path, segno: u64, meta: &Meta, last_file: bool) -> Option<u64> {
    if !last_file {
        let next = segno.checked_add(1)?;
        let path = seg_path(dir, next);
        let f = File::open(&path).ok()?;
        return read_header(&f, &path)
            .ok()
            .filter(|sh| sh.vol_id == meta.vol_id && sh.segno == next)
            .map(|sh| sh.first_seq.saturating_sub(1));
    }
    let b = std::fs::read(idx_path(dir, segno)).ok()?;
    let i = Index::decode(&b).ok().filter(|i| i.segno == segno)?;
    i.entries.last().map(|e| e.seq)
}

/// How much of a spare (a trailing segment whose header is all zeroes) after its header is
/// read for a record that continues the log (its header was then lost, not never written).
const SPARE_LOOK: usize = 64 << 10;

/// Delete segment `segno` and its index (its records are in the base copy).
pub fn remove_segment(dir: &Path, segno: u64) -> Result<(), CdpError> {
    let p = seg_path(dir, segno);
    std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
    let _ = std::fs::remove_file(idx_path(dir, segno));
    sync_dir(dir)
}

/// Consolidated segment files always kept for reuse (`recycled-N.seg`) while the journal is
/// written: the next spares.
pub const RECYCLED_KEEP: usize = 2;

/// Consolidated segment files kept for reuse at most. Beyond [`RECYCLED_KEEP`] a file is kept
/// only while its filesystem has [`RECYCLED_ROOM`] segments' worth free besides, and the
/// retention thread deletes those beyond [`RECYCLED_KEEP`] once the volume's consolidation has
/// been idle a while ([`trim_recycled_when`]). A journal written faster than one segment per look
/// of the retention thread has several segments consolidated in a row; deleting all but two
/// of them made the helper allocate (and tmpfs zero) new files for the next ones: 128 KiB
/// writes on a journal in memory gave 0.57x the IOPS of CDP off with 2 kept, 0.81x with 8
/// (benches/RESULTS.md, session 21).
pub const RECYCLED_MAX: usize = 8;

/// Segments' worth of space a filesystem must have free for a consolidated segment beyond
/// [`RECYCLED_KEEP`] to be kept rather than deleted (so a journal device shared by several
/// volumes is not filled with one volume's waiting files).
pub const RECYCLED_ROOM: u64 = 4;

/// The name a consolidated segment `segno` waits under until it is reused.
fn recycled_path(dir: &Path, segno: u64) -> PathBuf {
    dir.join(format!("recycled-{segno:016x}.seg"))
}

/// The segment files waiting for reuse, with their sizes.
fn recycled(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, u64)> = rd
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("recycled-") && n.ends_with(".seg"))
        })
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    v.sort();
    v
}

/// Bytes free to an unprivileged writer on `dir`'s filesystem (0 if unknown).
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs fills the struct it is given; `c` is a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return 0;
        }
        (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
    }
}

/// Retire segment `segno` (its records are in the base copy): its index is deleted and the
/// file kept for reuse as a later segment (renamed `recycled-N.seg`: readers and recovery
/// never list it), so the journal device's allocation stays where it is. Deleted instead when
/// [`RECYCLED_MAX`] files wait, or [`RECYCLED_KEEP`] do and the filesystem has less than
/// [`RECYCLED_ROOM`] segments' worth free.
pub fn recycle_segment(dir: &Path, segno: u64) -> Result<(), CdpError> {
    let waiting = recycled(dir).len();
    let p = seg_path(dir, segno);
    let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(u64::MAX);
    if !keep_retired(waiting, len, || free_bytes(dir)) {
        return remove_segment(dir, segno);
    }
    let to = recycled_path(dir, segno);
    std::fs::rename(&p, &to).map_err(io_err("rename", &p))?;
    let _ = std::fs::remove_file(idx_path(dir, segno));
    sync_dir(dir)
}

/// Whether a consolidated segment of `len` bytes is kept for reuse when `waiting` files wait
/// already and `free()` bytes are free on the journal's filesystem ([`recycle_segment`]).
fn keep_retired(waiting: usize, len: u64, free: impl FnOnce() -> u64) -> bool {
    waiting < RECYCLED_KEEP || (waiting < RECYCLED_MAX && has_room(len, free))
}

/// Whether `free()` bytes hold [`RECYCLED_ROOM`] segments of `len` bytes (false when that
/// overflows: a length unknown).
fn has_room(len: u64, free: impl FnOnce() -> u64) -> bool {
    len.checked_mul(RECYCLED_ROOM)
        .is_some_and(|need| free() >= need)
}

/// Delete the waiting files beyond [`RECYCLED_KEEP`] when `idle` (the volume consolidated
/// nothing for a while) or when its filesystem has less than [`RECYCLED_ROOM`] segments' worth
/// free (another volume's journal, or this volume's base copy, needs the space now: the room
/// rule of [`recycle_segment`] holds only when a file is retired). Returns how many went.
pub fn trim_recycled_when(dir: &Path, idle: bool) -> usize {
    trim_recycled_if(dir, idle, || free_bytes(dir))
}

fn trim_recycled_if(dir: &Path, idle: bool, free: impl FnOnce() -> u64) -> usize {
    let waiting = recycled(dir);
    if waiting.len() <= RECYCLED_KEEP {
        return 0;
    }
    let len = waiting.iter().map(|&(_, l)| l).max().unwrap_or(0);
    if idle || !has_room(len, free) {
        trim_recycled(dir, RECYCLED_KEEP)
    } else {
        0
    }
}

/// Delete the oldest waiting consolidated segment files beyond `keep` (the retention thread:
/// [`trim_recycled_when`], and for a volume no longer looked after).
/// A file the helper takes meanwhile is simply not there to delete. Returns how many went.
pub fn trim_recycled(dir: &Path, keep: usize) -> usize {
    let waiting = recycled(dir);
    let surplus = waiting.len().saturating_sub(keep);
    waiting
        .iter()
        .take(surplus)
        .filter(|(p, _)| std::fs::remove_file(p).is_ok())
        .count()
}

/// Make a waiting recycled file of `size` bytes the spare segment `segno`: its header is
/// zeroed (synced) before it takes the segment's name, and the rest keeps the earlier use's
/// bytes (already written blocks: appends overwrite them with no extent conversion, and no
/// earlier record can pass for a later one, docs/cdp-format.md, "Segment recycling"). Files
/// of another size (the segment size changed) are deleted. False when none was there.
fn reuse_recycled(dir: &Path, segno: u64, size: u64) -> Result<bool, CdpError> {
    reuse_listed(dir, segno, size, recycled(dir))
}

/// [`reuse_recycled`] from `listed`, a listing of the waiting files that may be out of date
/// (a file trimmed since is skipped).
fn reuse_listed(
    dir: &Path,
    segno: u64,
    size: u64,
    listed: Vec<(PathBuf, u64)>,
) -> Result<bool, CdpError> {
    let path = seg_path(dir, segno);
    let tmp = path.with_extension("spare");
    if !take_listed(size, listed, &tmp)? {
        return Ok(false);
    }
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)?;
    Ok(true)
}

/// Take the first waiting file of `size` bytes in `listed` as `to`, its header zeroed and
/// synced (files of another size are deleted). False when none was there.
fn take_listed(size: u64, listed: Vec<(PathBuf, u64)>, to: &Path) -> Result<bool, CdpError> {
    for (p, len) in listed {
        if len != size {
            let _ = std::fs::remove_file(&p);
            continue;
        }
        match std::fs::rename(&p, to) {
            Ok(()) => {}
            // Trimmed by the retention thread since the listing ([`trim_recycled`]), or taken
            // by the writer or the segment thread meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("rename", &p)(e)),
        }
        let f = OpenOptions::new()
            .write(true)
            .open(to)
            .map_err(io_err("open", to))?;
        f.write_all_at(&[0u8; format::SEG_HEADER], 0)
            .map_err(io_err("zero", to))?;
        f.sync_all().map_err(io_err("sync", to))?;
        return Ok(true);
    }
    Ok(false)
}

/// Replace `cdp.meta` (atomically).
pub fn write_meta(dir: &Path, m: &Meta) -> Result<(), CdpError> {
    write_atomic(dir, &meta_path(dir), &m.encode())
}

/// The records of sealed segment `segno` (a scan, which writes its index), continuing a log
/// whose last record had `prev_seq` and `prev_time`.
pub fn segment_index(
    dir: &Path,
    meta: &Meta,
    segno: u64,
    prev_seq: u64,
    prev_time: u64,
) -> Result<(SegHeader, Index), CdpError> {
    let (h, i, _) = segment_index_in(dir, meta, segno, prev_seq, prev_time, &mut Vec::new(), None)?;
    Ok((h, i))
}

/// [`segment_index`] for consolidation, which copies the records into the base copy and then
/// retires the segment: always a scan (every record's CRCs checked), never the index, which
/// was written when the segment was whole and says nothing of damage since (a pass that
/// trusted it copied a damaged payload into the base copy, served at every later point, and
/// retired the only other copy). It scans `mapped`, the segment file's whole bytes when the
/// caller has them mapped, or else reads the file into `bytes`, a buffer the caller keeps from
/// one segment to the next (fresh pages cost more than the copy); the last value says whether
/// it read into `bytes`. A scan that finds a cut (a record of this use after where the log
/// stops) removes the segment's index, so that the next start's recovery scans it and cuts
/// there (keeping the copy of what it cuts) instead of trusting the index.
pub fn segment_index_in(
    dir: &Path,
    meta: &Meta,
    segno: u64,
    prev_seq: u64,
    prev_time: u64,
    bytes: &mut Vec<u8>,
    mapped: Option<&[u8]>,
) -> Result<(SegHeader, Index, bool), CdpError> {
    let path = seg_path(dir, segno);
    let file = File::open(&path).map_err(io_err("open", &path))?;
    let header = read_header(&file, &path)?;
    let read = mapped.is_none();
    let seg: &[u8] = match mapped {
        Some(m) => m,
        None => {
            bytes.clear();
            (&file).read_to_end(bytes).map_err(io_err("read", &path))?;
            bytes
        }
    };
    let s = format::scan(seg, meta.vol_id, meta.size, prev_seq, prev_time);
    let cut = s.stopped.is_some()
        && format::later_record(
            seg,
            s.end as usize,
            meta.vol_id,
            header.first_seq,
            s.last_time,
        )
        .is_some();
    let i = Index {
        segno,
        end: s.end,
        entries: s.entries,
        clean: false,
    };
    if cut {
        let _ = std::fs::remove_file(idx_path(dir, segno));
    } else if load_index(dir, &file, segno, meta).is_none_or(|x| x != i)
        && let Err(e) = write_atomic(dir, &idx_path(dir, segno), &i.encode())
    {
        // (Written only when missing or wrong: a pass that is held is repeated.)
        tracing::warn!(error = %e, "cdp: cannot write a segment index");
    }
    Ok((header, i, read))
}

/// The header of segment `segno`.
pub fn segment_header(dir: &Path, segno: u64) -> Result<SegHeader, CdpError> {
    let path = seg_path(dir, segno);
    let file = File::open(&path).map_err(io_err("open", &path))?;
    read_header(&file, &path)
}

fn read_header(file: &File, path: &Path) -> Result<SegHeader, CdpError> {
    let mut hb = vec![0u8; format::SEG_HEADER];
    file.read_exact_at(&mut hb, 0)
        .map_err(io_err("read", path))?;
    SegHeader::decode(&hb).map_err(|e| CdpError::Meta {
        path: path.to_path_buf(),
        why: format!("segment header: {e}"),
    })
}

/// A free name to set segment file `path` (or a copy of it) aside under: `seg-N.cdp.TAIL`,
/// or `seg-N.cdp.K.TAIL` (K = 2, 3, ...) when that is taken. The writer numbers its next
/// segment after the one cut, so a later recovery can set aside a segment of a number an
/// earlier one set aside already: it must never replace those (acknowledged records) files.
fn aside_name(path: &Path, tail: &str) -> PathBuf {
    let first = path.with_extension(format!("cdp.{tail}"));
    if !first.exists() {
        return first;
    }
    (2u32..)
        .map(|k| path.with_extension(format!("cdp.{k}.{tail}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// A recovery about to cut `h` ahead of records that were journaled ([`History::lost`]): the
/// history is marked not whole after the cut before any segment is changed
/// ([`super::degraded::RegionMap::cut_before_journaled`]). Before session 27 it was not: the
/// start went on journaling after the cut, and every later point read the blocks those
/// records wrote as they were before them, while the volume held the acknowledged writes
/// (test `cdp_cut::after_a_cut_in_a_sealed_segment_the_newest_point_is_still_the_volume`).
fn lost_before_changes(h: &mut History) -> Result<(), CdpError> {
    if !h.lost {
        return Ok(());
    }
    let gap = super::degraded::RegionMap::cut_before_journaled(
        &h.dir,
        h.meta.size,
        h.last_seq,
        h.last_time,
    )?;
    h.open_gap = Some(gap);
    Ok(())
}

/// Keep a copy of segment file `path`, cut before records that follow a damaged one, as
/// `*.cut.damaged` (never read as history). Failing that (a full device), the cut goes on: the
/// volume is served from a history that ends at the cut; the log says what was not kept.
fn keep_cut_copy(path: &Path) {
    let to = aside_name(path, "cut.damaged");
    // Durable (the copy and its name) before the original's records are zeroed.
    let copied = std::fs::copy(path, &to)
        .and_then(|_| File::open(&to)?.sync_all())
        .map_err(|source| CdpError::Io {
            what: "copy",
            path: to.clone(),
            source,
        });
    match copied.and_then(|()| sync_dir(path.parent().unwrap_or(Path::new(".")))) {
        Ok(()) => {
            tracing::warn!(segment = %path.display(), copy = %to.display(),
                "cdp: records found after a damaged one are cut from the history; the segment as it was is kept");
        }
        Err(e) => {
            let _ = std::fs::remove_file(&to);
            tracing::error!(segment = %path.display(), error = %e,
                "cdp: records found after a damaged one are cut from the history, and no copy of them could be kept");
        }
    }
}

/// Zero a segment after its log's end (so nothing behind the cut can pass for a record later).
fn zero_after(path: &Path, end: u64) -> Result<(), CdpError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let len = f.metadata().map_err(io_err("stat", path))?.len();
    if end < len {
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                end as i64,
                (len - end) as i64,
            )
        };
        if rc != 0 {
            // Not every filesystem zeroes ranges: write the zeroes.
            let zero = vec![0u8; 1 << 20];
            let mut at = end;
            while at < len {
                let n = (len - at).min(zero.len() as u64) as usize;
                f.write_all_at(&zero[..n], at)
                    .map_err(io_err("zero", path))?;
                at += n as u64;
            }
        }
        f.sync_all().map_err(io_err("sync", path))?;
    }
    Ok(())
}

/// Create segment `segno` of `size` bytes for the records from `first_seq` (a waiting
/// consolidated segment's file if there is one, as [`prepare_spare`] does: on a full journal
/// device that is the space there is; else a new file, preallocated), header written and
/// synced, and open it for O_DIRECT appends. `low`: the first sequence whose base operation
/// may not be done ([`SegHeader::low`]).
pub fn create_segment(
    dir: &Path,
    meta: &Meta,
    segno: u64,
    first_seq: u64,
    low: u64,
    size: u64,
) -> Result<File, CdpError> {
    let path = seg_path(dir, segno);
    // An index of this number left by a segment set aside or retired (a kill between the
    // rename and the index's removal) is not this segment's.
    remove_index(dir, segno)?;
    let f = if reuse_recycled(dir, segno, size)? {
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?
    } else {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as i64) };
        if rc != 0 {
            f.set_len(size).map_err(io_err("size", &path))?;
        }
        f
    };
    let header = SegHeader {
        vol_id: meta.vol_id,
        segno,
        first_seq,
        created: clock::now(),
        size,
        low: Some(low.min(first_seq)),
    };
    f.write_all_at(&header.encode(), 0)
        .map_err(io_err("write", &path))?;
    f.sync_all().map_err(io_err("sync", &path))?;
    sync_dir(dir)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(io_err("open", &path))
}

/// Delete a leftover index of segment number `segno` (a new segment of that number is
/// being made), durably.
fn remove_index(dir: &Path, segno: u64) -> Result<(), CdpError> {
    let p = idx_path(dir, segno);
    match std::fs::remove_file(&p) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &p)(e)),
    }
}

/// Prepare segment `segno` as a spare (off the reactor): [`stage_spare`], then
/// [`install_spare`].
pub fn prepare_spare(dir: &Path, segno: u64, size: u64, zero: bool) -> Result<(), CdpError> {
    stage_spare(dir, size, zero)?;
    install_spare(dir, segno)
}

/// Where the segment thread prepares the next segment's file ([`stage_spare`]) before it
/// takes a segment number ([`install_spare`]).
pub fn staged_path(dir: &Path) -> PathBuf {
    dir.join("next.spare")
}

/// Prepare the next segment's file under [`staged_path`] (the segment thread, holding no
/// lock the writer takes: this is the part that can take long): a waiting consolidated
/// segment's file if there is one (its blocks already written), else a new file
/// preallocated, all zeroes where `zero` (its blocks written once, so later appends need no
/// allocation by the filesystem); header all zeroes (the writer writes it as the segment's
/// first append); synced. A file left there before (a crash, a preparation never installed)
/// is replaced.
pub fn stage_spare(dir: &Path, size: u64, zero: bool) -> Result<PathBuf, CdpError> {
    let tmp = staged_path(dir);
    // A consolidated segment's file first: its blocks stay allocated, so the journal
    // device's use does not move with every segment.
    if take_listed(size, recycled(dir), &tmp)? {
        return Ok(tmp);
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as i64) };
    if rc != 0 {
        f.set_len(size).map_err(io_err("size", &tmp))?;
    }
    if zero {
        let z = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(z.len() as u64) as usize;
            f.write_all_at(&z[..n], at).map_err(io_err("zero", &tmp))?;
            at += n as u64;
        }
    }
    f.sync_all().map_err(io_err("sync", &tmp))?;
    Ok(tmp)
}

/// Make the file [`stage_spare`] prepared segment `segno` (the segment thread, under the
/// spare's lock: a rename and a directory sync), synced with its directory. A newest segment
/// whose header is all zeroes is an unused spare to recovery.
pub fn install_spare(dir: &Path, segno: u64) -> Result<(), CdpError> {
    // (As in `create_segment`: a leftover index of the number is not this segment's.)
    remove_index(dir, segno)?;
    let path = seg_path(dir, segno);
    std::fs::rename(staged_path(dir), &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

/// Open a prepared spare segment for O_DIRECT appends.
pub fn open_spare(dir: &Path, segno: u64) -> Result<File, CdpError> {
    let path = seg_path(dir, segno);
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(io_err("open", &path))
}

/// Append whole records `bytes` (a multiple of 4096 bytes) at `pos` of segment `segno`
/// synchronously (the layer's start, before the reactors run).
pub fn append_sync(dir: &Path, segno: u64, pos: u64, bytes: &[u8]) -> Result<(), CdpError> {
    let path = seg_path(dir, segno);
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    f.write_all_at(bytes, pos).map_err(io_err("write", &path))?;
    f.sync_data().map_err(io_err("sync", &path))
}

/// Fixtures for the layer's tests.
#[cfg(test)]
pub mod testing {
    use std::path::Path;

    /// A history in `dir`: `meta` (created at 1, block 4096), an empty base copy of its size
    /// and the segments `segs` (1 MiB images, [`crate::layer::cdp::format::testing::segment_image`]).
    pub fn history(
        dir: &Path,
        vol_id: u64,
        size: u64,
        base_seq: u64,
        segs: &[(u64, std::ops::RangeInclusive<u64>)],
    ) -> crate::layer::cdp::format::Meta {
        let meta = crate::layer::cdp::format::Meta {
            block_size: 4096,
            vol_id,
            size,
            created: 1,
            base_seq,
            base_time: base_seq,
        };
        super::write_meta(dir, &meta).unwrap();
        std::fs::File::create(super::base_path(dir))
            .unwrap()
            .set_len(size)
            .unwrap();
        for (segno, seqs) in segs {
            let img =
                crate::layer::cdp::format::testing::segment_image(vol_id, *segno, seqs.clone());
            std::fs::write(super::seg_path(dir, *segno), img).unwrap();
        }
        meta
    }
}

#[cfg(test)]
mod tests;
