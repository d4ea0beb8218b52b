//! Points in time: the content of a volume at a past point, from its base copy and the redo
//! records up to that point (docs/cdp-format.md, "Point-in-time content"), read from the CDP
//! directory alone (never the live volume), and restore of a point as a new file.
//!
//! Model: point `P` (a sequence number; a time `T` names the last record with time ≤ `T`) is
//! `base.img` with every record of sequence ≤ `P` applied in sequence order. Invariant: only
//! points inside the window `[0, last durable record]` (times inside `[creation, last record's
//! time]`) are served; anything else is refused with the window named. While a daemon journals
//! the history, its window ends at that writer's done watermark (`store::load` leaves the
//! records after it out: their updates' base operations are still to come, or failed).

use super::format::{Entry, Op, REC_HEADER, RecHeader};
use super::store::{self, CdpError, History};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// A point in a volume's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// After the record with this sequence number (0: the history's start).
    Seq(u64),
    /// After every record with a site time at or before this one (ns).
    Time(u64),
}

/// The window of a history, for messages; with where it is whole up to while `degraded.map`
/// says it is not whole (the points after that are refused too).
pub fn window(h: &History) -> String {
    let whole = h.open_gap.map_or(String::new(), |(after, t)| {
        format!("; whole only up to sequence {after} (time {t} ns): later points are refused")
    });
    // A writer runs: the window ends at its done watermark (docs/cdp-format.md, "Readers of a
    // running history").
    let running = if h.running.is_some() {
        "; the daemon journaling it runs: records whose updates are not done yet are not in it"
    } else {
        ""
    };
    format!(
        "sequence {}..={}, time {}..={} (ns){whole}{running}",
        h.first_seq(),
        h.last_seq,
        h.first_time(),
        h.last_time
    )
}

/// The sequence number `p` names in `h`; points inside a gap (docs/cdp-format.md, "Degraded
/// mode") are refused with the gap's ends.
pub fn resolve(h: &History, p: Point) -> Result<u64, CdpError> {
    let outside = |what: String| CdpError::Outside {
        what,
        window: window(h),
    };
    let seq = match p {
        Point::Seq(s) if (h.first_seq()..=h.last_seq).contains(&s) => s,
        Point::Seq(s) => return Err(outside(format!("sequence {s}"))),
        Point::Time(t) if t < h.first_time() || t > h.last_time => {
            return Err(outside(format!("time {t}")));
        }
        Point::Time(t) => h
            .entries()
            .take_while(|(_, e)| e.time <= t)
            .last()
            .map_or(h.meta.base_seq, |(_, e)| e.seq),
    };
    if let Some((after, after_time)) = h.open_gap {
        // An X of 0: a history begun at run time, whose start (the empty base copy) never was
        // the volume's content.
        let inside = seq > after || after == 0 || matches!(p, Point::Time(t) if t > after_time);
        if inside {
            return Err(CdpError::NotWhole {
                what: match p {
                    Point::Seq(s) => format!("sequence {s}"),
                    Point::Time(t) => format!("time {t}"),
                },
                after,
                after_time,
                start: if after == 0 {
                    ", and not at its start"
                } else {
                    ""
                },
            });
        }
    }
    for (_, g) in h.entries().filter(|(_, e)| e.op == Op::Gap) {
        let after = g.offset;
        // Time of the last record before the gap (the window's start when it was consolidated).
        let after_time = h
            .entries()
            .take_while(|(_, e)| e.seq <= after)
            .last()
            .map_or(h.meta.window_start(), |(_, e)| e.time);
        // A time after record `after` and before the gap record saw changes the journal
        // does not hold; a sequence between the two is a catch-up record.
        // A gap after sequence 0 also covers the history's start when that start is not a
        // content the volume had (a history begun at run time: its base copy is empty and
        // the gap's records are the whole volume).
        let from_start = after == 0;
        let inside = ((after < seq || from_start) && seq < g.seq)
            || matches!(p, Point::Time(t) if (after_time < t || from_start) && t < g.time);
        if inside {
            return Err(CdpError::InGap {
                what: match p {
                    Point::Seq(s) => format!("sequence {s}"),
                    Point::Time(t) => format!("time {t}"),
                },
                after,
                after_time,
                resumed: g.seq,
                resumed_time: g.time,
            });
        }
    }
    Ok(seq)
}

fn overlap(e: &Entry, offset: u64, len: u64) -> Option<(u64, u64)> {
    let s = e.offset.max(offset);
    let end = (e.offset + e.len).min(offset + len);
    (s < end).then_some((s, end))
}

/// Open segment files as the records are visited.
struct Segs<'a> {
    dir: &'a Path,
    open: Option<(u64, File)>,
}

impl Segs<'_> {
    fn file(&mut self, segno: u64) -> Result<&File, CdpError> {
        if self.open.as_ref().is_none_or(|(n, _)| *n != segno) {
            let p = store::seg_path(self.dir, segno);
            let f = File::open(&p).map_err(|source| CdpError::Io {
                what: "open",
                path: p,
                source,
            })?;
            self.open = Some((segno, f));
        }
        Ok(&self.open.as_ref().expect("just opened").1)
    }

    /// Read the whole of write record `e` (header and payload) into `buf` and check it
    /// ([`check_record`]); its payload is then `buf[REC_HEADER..]`.
    fn record(
        &mut self,
        segno: u64,
        e: &Entry,
        vol_id: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), CdpError> {
        buf.resize(REC_HEADER + e.len as usize, 0);
        let dir = self.dir;
        let path = store::seg_path(dir, segno);
        self.file(segno)?
            .read_exact_at(buf, e.pos)
            .map_err(|source| CdpError::Io {
                what: "read",
                path: path.clone(),
                source,
            })?;
        check_record(buf, e, vol_id, &path)
    }

    /// Read the payload bytes `[from, from + out.len())` of record `e` (a volume offset range).
    fn payload(
        &mut self,
        segno: u64,
        e: &Entry,
        from: u64,
        out: &mut [u8],
    ) -> Result<(), CdpError> {
        let at = e.pos + REC_HEADER as u64 + (from - e.offset);
        let dir = self.dir;
        self.file(segno)?
            .read_exact_at(out, at)
            .map_err(|source| CdpError::Io {
                what: "read",
                path: store::seg_path(dir, segno),
                source,
            })
    }
}

/// Check that `rec`, the bytes of record `e` (header and payload) of history `vol_id` read
/// from segment file `path`, is still that record: its header CRC and fields, and its payload's
/// CRC. The index an entry comes from was written when the segment was whole and says nothing
/// of damage to the segment since; a reader that copies a record's payload into a file or a
/// volume (a restore, a rollback in place, a view) must not copy a damaged one.
pub(crate) fn check_record(
    rec: &[u8],
    e: &Entry,
    vol_id: u64,
    path: &Path,
) -> Result<(), CdpError> {
    let damaged = |why: &str| CdpError::Meta {
        path: path.to_path_buf(),
        why: format!(
            "record {} at byte {} is damaged ({why}): it cannot be read back as it was journaled",
            e.seq, e.pos
        ),
    };
    let h = RecHeader::decode(rec, vol_id).map_err(|x| damaged(&x.to_string()))?;
    if h.seq != e.seq || h.op != e.op || h.offset != e.offset || h.len != e.len {
        return Err(damaged("its header names another record than the index"));
    }
    let payload = &rec[REC_HEADER..];
    if payload.len() != h.payload_len as usize
        || (!payload.is_empty() && crate::checksum::crc32c(payload) != h.payload_crc)
    {
        return Err(damaged("payload CRC"));
    }
    Ok(())
}

/// Refuse a base copy shorter than the volume: it is made at the volume's size and only
/// written in place, so short it was damaged, and what lies past its end is not known (read
/// as zeroes, a view and a restore served zeroes as the point's content).
pub(crate) fn base_whole(base: &File, path: &Path, size: u64) -> Result<(), CdpError> {
    let len = base
        .metadata()
        .map_err(|source| CdpError::Io {
            what: "stat",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len < size {
        return Err(CdpError::Meta {
            path: path.to_path_buf(),
            why: format!("the base copy holds {len} bytes of a volume of {size}: damaged"),
        });
    }
    Ok(())
}

/// The content of `[offset, offset + len)` of the volume at point `p`.
pub fn read_at(h: &History, p: Point, offset: u64, len: u64) -> Result<Vec<u8>, CdpError> {
    // Consolidation waits while the segments are read.
    let reading = store::lock_reading(&h.dir);
    again_if_retired(
        h,
        reading.is_some(),
        |h| read_listed(h, p, offset, len),
        || Ok(true),
    )
}

/// `read` through `h`, and when a segment `h` lists is gone (a consolidation between the
/// load of `h` and now retired it; its point may still be in the window) once more through the
/// history as it is now, which no consolidation changes while the caller holds the reading
/// lock (`locked`). `undo` first removes what the failed attempt left; false: the missing
/// file was not a segment, and the error stands.
fn again_if_retired<T>(
    h: &History,
    locked: bool,
    mut read: impl FnMut(&History) -> Result<T, CdpError>,
    undo: impl FnOnce() -> Result<bool, CdpError>,
) -> Result<T, CdpError> {
    match read(h) {
        Err(e @ CdpError::Io { .. })
            if locked
                && matches!(&e, CdpError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound) =>
        {
            if !undo()? {
                return Err(e);
            }
            let now = store::load(&h.dir, store::Load::ReadOnly)?;
            read(&now)
        }
        r => r,
    }
}

/// [`read_at`] through the segments `h` lists.
fn read_listed(h: &History, p: Point, offset: u64, len: u64) -> Result<Vec<u8>, CdpError> {
    let seq = resolve(h, p)?;
    if !crate::bdev::in_range(offset, len, h.meta.size) {
        return Err(CdpError::Outside {
            what: format!("range {offset}+{len}"),
            window: format!("a volume of {} bytes", h.meta.size),
        });
    }
    let mut out = vec![0u8; len as usize];
    let start_seq = seq;
    let bp = store::base_path(&h.dir);
    File::open(&bp)
        .and_then(|f| f.read_exact_at(&mut out, offset))
        .map_err(|source| CdpError::Io {
            what: "read",
            path: bp,
            source,
        })?;
    let mut segs = Segs {
        dir: &h.dir,
        open: None,
    };
    for (segno, e) in h.entries().take_while(|(_, e)| e.seq <= seq) {
        let Some((s, end)) = overlap(e, offset, len) else {
            continue;
        };
        let dst = &mut out[(s - offset) as usize..(end - offset) as usize];
        match e.op {
            Op::Write => segs.payload(segno, e, s, dst)?,
            Op::Zeroes | Op::Unmap => dst.fill(0),
            Op::Mark | Op::Pad | Op::Gap => {}
        }
    }
    still_inside(h, start_seq)?;
    Ok(out)
}

/// Consolidation may have moved the base copy past `seq` (or begun to) while it was being
/// read: then what was read is not the point (it is outside the window now).
fn still_inside(h: &History, seq: u64) -> Result<(), CdpError> {
    let m = store::read_meta(&h.dir)?;
    // A pass that began (its marker is written before it changes the base copy) counts as done.
    let first = store::read_moving(&h.dir, &m)?.map_or(m.base_seq, |p| p.to);
    if first > seq {
        return Err(CdpError::Outside {
            what: format!("sequence {seq} (consolidated while it was read)"),
            window: format!("from sequence {first}"),
        });
    }
    Ok(())
}

/// Materialise point `p` of `h` as the new file `out` (refused if it exists); `progress` is
/// told (records applied, records to apply) as it goes. Returns the sequence restored. The
/// file is written under a temporary name beside `out` ([`partial_path`]) and named `out`
/// only once whole and synced; on any failure nothing is left.
pub fn restore(
    h: &History,
    p: Point,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, CdpError> {
    let r = restore_unnamed(h, p, out, |pr| {
        if let Progress::Records { applied, total } = pr {
            progress(applied, total);
        }
        ControlFlow::Continue(())
    })?;
    let seq = r.seq();
    r.finish()?;
    Ok(seq)
}

/// How far a restore is, for its progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Copying the base copy: bytes copied of `total`.
    Base { copied: u64, total: u64 },
    /// Applying the records: applied of `total`.
    Records { applied: u64, total: u64 },
}

/// Whether `p` lies in directory `dir` or below it: by its path (once `.` and repeated
/// separators are dropped), or, where both exist, by the real directory of `p`'s parent.
pub fn in_dir(p: &Path, dir: &Path) -> bool {
    if p.starts_with(dir) {
        return true;
    }
    let (Some(parent), Ok(d)) = (p.parent(), dir.canonicalize()) else {
        return false;
    };
    parent.canonicalize().is_ok_and(|x| x.starts_with(&d))
}

/// Refuse a restore's output `out` in one of the history directories `dirs`: there it would
/// take one of a history's own names (a segment not used yet, `consolidating`, `bookmarks`),
/// and that history would no longer load.
pub fn check_out(out: &Path, dirs: &[&Path]) -> Result<(), CdpError> {
    match dirs.iter().find(|d| in_dir(out, d)) {
        Some(d) => Err(CdpError::Refused(format!(
            "{} is in the history's directory {}: restore to a file outside every history directory",
            out.display(),
            d.display()
        ))),
        None => Ok(()),
    }
}

/// The temporary name a restore into `out` writes under (same directory, so the final rename
/// stays on one file system): `.NAME.restore-partial`.
pub fn partial_path(out: &Path) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| std::ffi::OsString::from("restore"), |n| n.to_os_string());
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".restore-partial");
    out.with_file_name(tmp)
}

/// A restore written and synced under its temporary name: [`Restored::finish`] names it `out`;
/// dropped unfinished, the temporary file is removed.
pub struct Restored {
    tmp: std::path::PathBuf,
    out: std::path::PathBuf,
    /// Open (and locked) until finished or dropped.
    file: Option<File>,
    seq: u64,
}

impl Restored {
    /// The sequence restored.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The final name.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Name the file `out` (never replacing a file of that name) and sync the directory. On
    /// failure nothing is named `out` (a name that could not be made durable is taken back: a
    /// group restore reports the failure with none of its files left behind).
    pub fn finish(mut self) -> Result<(), CdpError> {
        let err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| CdpError::Io { what, path, source }
        };
        rename_noreplace(&self.tmp, &self.out).map_err(err("name the restored file", &self.out))?;
        self.file = None;
        let dir = match self.out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let synced = File::open(dir).and_then(|d| {
            #[cfg(test)]
            if FAIL_DIR_SYNC.get() {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            d.sync_all()
        });
        if let Err(e) = synced {
            // Ours: named by the rename above, which never replaces a file.
            let _ = std::fs::remove_file(&self.out);
            return Err(err("sync the directory of", &self.out)(e));
        }
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the directory sync after the rename fails (EIO).
    static FAIL_DIR_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for Restored {
    fn drop(&mut self) {
        // Still locked: a restore waiting for the name finds it gone and makes its own.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `rename(from, to)` failing with `AlreadyExists` when `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths, valid for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(e);
    }
    // A file system without RENAME_NOREPLACE: a hard link fails on an existing name too.
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Create (or take over, when a killed restore left it) the temporary file of a restore into
/// `out`, locked; refused while another restore into `out` holds it, or when `out` exists.
fn create_partial(out: &Path) -> Result<(std::path::PathBuf, File), CdpError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let tmp = partial_path(out);
    let io = |what: &'static str, source| CdpError::Io {
        what,
        path: tmp.clone(),
        source,
    };
    let f = loop {
        // Never through a link at the name (anyone who can write `out`'s directory could
        // have put one there): it would be truncated and written, then named `out`.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io("create (not through a link)", e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(io(
                "lock (another restore into the same file is running?)",
                e,
            ));
        }
        // The name may have been renamed to `out` or removed by its holder meanwhile.
        let mine = f.metadata().map_err(|e| io("stat", e))?;
        match std::fs::symlink_metadata(&tmp) {
            Ok(m) if m.ino() == mine.ino() && m.dev() == mine.dev() => break f,
            _ => continue,
        }
    };
    if out.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(CdpError::Io {
            what: "create (a restore only writes a new file)",
            path: out.to_path_buf(),
            source: std::io::ErrorKind::AlreadyExists.into(),
        });
    }
    f.set_len(0).map_err(|e| io("truncate", e))?;
    Ok((tmp, f))
}

/// [`restore`] without naming the result: the file is whole and synced under its temporary
/// name; [`Restored::finish`] names it `out`. `progress` may stop the restore
/// (`ControlFlow::Break`: an `Interrupted` error, the temporary file removed). A group
/// restores every volume this way, then names them all.
pub fn restore_unnamed(
    h: &History,
    p: Point,
    out: &Path,
    mut progress: impl FnMut(Progress) -> ControlFlow<()>,
) -> Result<Restored, CdpError> {
    check_out(out, &[&h.dir])?;
    // Consolidation waits while the base copy and the segments are read.
    let reading = store::lock_reading(&h.dir);
    // A segment retired since `h` was loaded: the partial file is gone (dropped), and the
    // restore runs again; not when the missing file was `out`'s directory.
    again_if_retired(
        h,
        reading.is_some(),
        |h| restore_listed(h, p, out, &mut progress),
        || {
            Ok(out
                .parent()
                .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir()))
        },
    )
}

/// [`restore_unnamed`] through the segments `h` lists.
fn restore_listed(
    h: &History,
    p: Point,
    out: &Path,
    progress: &mut impl FnMut(Progress) -> ControlFlow<()>,
) -> Result<Restored, CdpError> {
    let seq = resolve(h, p)?;
    let (tmp, f) = create_partial(out)?;
    let r = Restored {
        tmp: tmp.clone(),
        out: out.to_path_buf(),
        file: Some(f),
        seq,
    };
    let f = r.file.as_ref().expect("open until finished");
    let err = |what: &'static str| {
        let path = tmp.clone();
        move |source| CdpError::Io { what, path, source }
    };
    let stopped = || CdpError::Io {
        what: "restore (stopped)",
        path: tmp.clone(),
        source: std::io::ErrorKind::Interrupted.into(),
    };
    // The base copy first (kernel copy, sparse where the filesystem allows), a piece at a
    // time so the progress shows.
    let base = File::open(store::base_path(&h.dir)).map_err(err("open the base copy for"))?;
    let base_len = base
        .metadata()
        .map_err(err("stat the base copy for"))?
        .len();
    base_whole(&base, &store::base_path(&h.dir), h.meta.size)?;
    let mut copied = 0u64;
    let mut w = f;
    loop {
        if progress(Progress::Base {
            copied,
            total: base_len,
        })
        .is_break()
        {
            return Err(stopped());
        }
        let n = std::io::copy(&mut (&base).take(BASE_PIECE), &mut w)
            .map_err(err("copy the base copy into"))?;
        if n == 0 {
            break;
        }
        copied += n;
    }
    f.set_len(h.meta.size).map_err(err("size"))?;
    let total = h.entries().take_while(|(_, e)| e.seq <= seq).count() as u64;
    let mut segs = Segs {
        dir: &h.dir,
        open: None,
    };
    let mut buf = Vec::new();
    let zero = vec![0u8; 1 << 20];
    for (done, (segno, e)) in h.entries().take_while(|(_, e)| e.seq <= seq).enumerate() {
        match e.op {
            Op::Write => {
                // Checked: a damaged record fails the restore (no file named), it is never
                // written into a file that looks restored.
                segs.record(segno, e, h.meta.vol_id, &mut buf)?;
                f.write_all_at(&buf[REC_HEADER..], e.offset)
                    .map_err(err("write"))?;
            }
            Op::Mark | Op::Pad | Op::Gap => {}
            Op::Zeroes | Op::Unmap => {
                let mut at = e.offset;
                while at < e.offset + e.len {
                    let n = (e.offset + e.len - at).min(zero.len() as u64) as usize;
                    f.write_all_at(&zero[..n], at).map_err(err("write"))?;
                    at += n as u64;
                }
            }
        }
        if (done % 256 == 0 || done as u64 + 1 == total)
            && progress(Progress::Records {
                applied: done as u64 + 1,
                total,
            })
            .is_break()
        {
            return Err(stopped());
        }
    }
    f.sync_all().map_err(err("sync"))?;
    still_inside(h, seq)?;
    Ok(r)
}

/// How much of the base copy a restore copies between progress reports.
const BASE_PIECE: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore whose output directory cannot be synced after the rename leaves nothing
    /// named (a group restore named its first volume's file, failed on the second's directory
    /// sync, and left the first in place while reporting the failure).
    #[test]
    fn a_restore_whose_name_cannot_be_made_durable_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("j");
        std::fs::create_dir(&dir).unwrap();
        store::testing::history(&dir, 0xfeed, 64 * 4096, 0, &[(1, 1..=20)]);
        let h = store::load(&dir, store::Load::ReadOnly).unwrap();
        let out = d.path().join("restored.img");
        FAIL_DIR_SYNC.set(true);
        let e = restore(&h, Point::Seq(h.last_seq), &out, |_, _| {}).unwrap_err();
        FAIL_DIR_SYNC.set(false);
        assert!(e.to_string().contains("sync the directory"), "{e}");
        assert!(!out.exists(), "the output is not left named");
        assert!(!partial_path(&out).exists(), "nor its temporary file");
        // Without the failure the same restore names it.
        assert_eq!(
            restore(&h, Point::Seq(h.last_seq), &out, |_, _| {}).unwrap(),
            h.last_seq
        );
        assert!(out.exists());
    }

    /// The temporary name beside `out` is never opened through a link: a link there (made by
    /// anyone who can write `out`'s directory, e.g. a shared one) made the restore truncate
    /// and write the link's target, then name the link `out`.
    #[test]
    fn a_restore_never_writes_through_a_link_at_its_temporary_name() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("j");
        std::fs::create_dir(&dir).unwrap();
        store::testing::history(&dir, 0xfeed, 64 * 4096, 0, &[(1, 1..=20)]);
        let h = store::load(&dir, store::Load::ReadOnly).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let out = d.path().join("restored.img");
        std::os::unix::fs::symlink(&victim, partial_path(&out)).unwrap();
        let r = restore(&h, Point::Seq(h.last_seq), &out, |_, _| {});
        let now = std::fs::read(&victim).unwrap();
        assert!(
            r.is_err(),
            "{r:?}: the link's target now holds {} bytes",
            now.len()
        );
        assert_eq!(now, b"precious");
        assert!(!out.exists());
    }

    /// A restore's output is a new file outside the history it reads: in the history's
    /// directory it would be one of the history's own names (a segment number not used yet,
    /// `consolidating`, `bookmarks`) and the history would no longer load.
    #[test]
    fn a_restore_into_the_history_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("j");
        std::fs::create_dir(&dir).unwrap();
        store::testing::history(&dir, 0xfeed, 64 * 4096, 0, &[(1, 1..=20)]);
        let h = store::load(&dir, store::Load::ReadOnly).unwrap();
        for name in [
            "consolidating",
            "bookmarks",
            "seg-0000000000000009.cdp",
            "x.img",
        ] {
            for out in [dir.join(name), d.path().join("j/./").join(name)] {
                let r = restore(&h, Point::Seq(h.last_seq), &out, |_, _| {});
                let after = store::load(&dir, store::Load::ReadOnly).map(|h| h.last_seq);
                let e = r.expect_err(&format!("{}: loads after: {after:?}", out.display()));
                assert!(e.to_string().contains("history's directory"), "{e}");
                assert!(!out.exists() && !partial_path(&out).exists());
            }
        }
        assert_eq!(
            store::load(&dir, store::Load::ReadOnly).unwrap().last_seq,
            20
        );
    }
}
