//! Point-in-time views: a past point of a CDP history served as a block device without copying
//! the volume (docs/cdp-format.md, "Views"), read-only, or as a sandbox whose writes go to a
//! RAM overlay that is discarded when the view closes.
//!
//! Model: opening a view resolves its point `P` (a sequence number) and builds an extent map of
//! the volume: every byte range says where its content at `P` lives: the base copy
//! (`base.img`), zeroes, or a record's payload in a segment file (the latest record `≤ P` that
//! covers it). A read copies the pieces of its range from those files into the channel's
//! buffer (synchronous `pread`s on the reactor: a view is served by a daemon of its own,
//! `twinblk cdp view`, never beside production volumes). A sandbox keeps a RAM overlay
//! (a lazily committed mapping of the volume's size) and the set of ranges written to it;
//! reads take those ranges from the overlay.
//!
//! Consolidation must not move the base copy past `P` while the view is open (it rewrites
//! `base.img` in place): the view registers a **hold** (`view-holds/<pid>-<n>` holding the
//! time consolidation must not pass), then waits for any consolidation pass in progress (the
//! pass holds `consolidate.lock`), and only then reads the history. Holds of processes that no
//! longer run are ignored. Segment files the view opened stay readable even if deleted:
//! consolidation deletes (never recycles) a segment while any view is open (`retain.rs`).
//!
//! Invariants: a read returns exactly the content of the volume at `P` (restore's content)
//! outside the sandbox's written ranges, and the sandbox's latest writes inside them; nothing
//! is ever written to the CDP directory but the hold file (and the empty lock file, created
//! if missing); the extent map covers `[0, size)`
//! with no gap or overlap.

use super::error::io_err;
use super::format::{Op, REC_HEADER};
use super::pit::{self, Point};
use super::ranges::mark;
use super::store::{self, CdpError};
use crate::bdev::malloc::MallocDevice;
use crate::bdev::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start, in_range};
use crate::uring::{Errno, IoCx, IoTag};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a range's content at the view's point lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// The same offset of the base copy.
    Base,
    /// Zeroes.
    Zero,
    /// Segment file `file` (index into the view's files) from position `pos` on.
    Seg { file: u32, pos: u64 },
}

impl Src {
    /// The source of the byte `n` bytes further on.
    fn advanced(self, n: u64) -> Src {
        match self {
            Src::Seg { file, pos } => Src::Seg { file, pos: pos + n },
            s => s,
        }
    }
}

/// A map of `[0, size)` as disjoint ranges: start → (end, source).
#[derive(Debug)]
struct Extents(BTreeMap<u64, (u64, Src)>);

impl Extents {
    fn new(size: u64) -> Self {
        let mut m = BTreeMap::new();
        m.insert(0, (size, Src::Base));
        Extents(m)
    }

    /// Make `at` the start of a range (if it is inside one).
    fn split(&mut self, at: u64) {
        if let Some((&s, &(e, src))) = self.0.range(..=at).next_back()
            && s < at
            && at < e
        {
            self.0.insert(s, (at, src));
            self.0.insert(at, (e, src.advanced(at - s)));
        }
    }

    /// `[start, end)` now comes from `src`.
    fn set(&mut self, start: u64, end: u64, src: Src) {
        self.split(start);
        self.split(end);
        while let Some((&k, _)) = self.0.range(start..end).next() {
            self.0.remove(&k);
        }
        self.0.insert(start, (end, src));
    }

    /// The pieces of `[offset, offset + len)`: (start, end, source at start).
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, Src)> + '_ {
        let end = offset + len;
        let first = self
            .0
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&s, _)| s);
        self.0
            .range(first..end)
            .filter(move |(_, (e, _))| *e > offset)
            .map(move |(&s, &(e, src))| {
                let from = s.max(offset);
                (from, e.min(end), src.advanced(from - s))
            })
    }
}

/// A write record a view reads from, and whether it was checked whole already.
#[derive(Debug)]
struct Checked {
    file: u32,
    segno: u64,
    entry: super::format::Entry,
    ok: std::sync::atomic::AtomicBool,
}

/// What a view shows.
#[derive(Clone, Debug)]
pub struct ViewSpec {
    /// The volume's CDP directory.
    pub dir: PathBuf,
    /// The point.
    pub point: Point,
    /// Writable: writes go to a RAM overlay, discarded when the view closes.
    pub sandbox: bool,
}

/// A sandbox's written ranges (start → end, disjoint), shared by its channels.
type Written = Arc<Mutex<BTreeMap<u64, u64>>>;

/// An open view: the device a daemon serves.
pub struct ViewDevice {
    inner: Arc<PointContent>,
    /// Sandbox: the overlay's data and the ranges written to it (start → end, disjoint).
    overlay: Option<(Arc<MallocDevice>, Written)>,
}

/// The content at the point, shared by the view's channels.
struct PointContent {
    size: u64,
    block: u32,
    seq: u64,
    map: Extents,
    base: File,
    files: Vec<File>,
    /// The write records the map may read from, in (file, position) order, each checked
    /// (header and payload CRCs, [`pit::check_record`]) the first time a read takes a piece
    /// of it: a segment's index says nothing of damage since it was written, and a view's
    /// content feeds a rollback in place as well as hosts.
    records: Vec<Checked>,
    hold: HoldFile,
    /// The history's id (records of another never check).
    vol_id: u64,
    /// The history's directory (to name a damaged segment).
    dir: PathBuf,
}

/// The directory of a history's view holds.
pub fn holds_dir(dir: &Path) -> PathBuf {
    dir.join("view-holds")
}

/// The time consolidation must not pass for the open views of `dir` (the oldest hold of a
/// process that still runs), if any; a hold that cannot be read holds everything (`Some(0)`).
pub fn hold(dir: &Path) -> Option<u64> {
    let rd = match std::fs::read_dir(holds_dir(dir)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cdp: view holds unreadable; consolidation held");
            return Some(0);
        }
    };
    let mut min: Option<u64> = None;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let t = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        min = Some(min.map_or(t, |m| m.min(t)));
    }
    min
}

/// The open views of `dir` holding consolidation: (process id, time of its point), for
/// status and log lines ([`hold`] is what consolidation obeys).
pub fn holders(dir: &Path) -> Vec<(u32, u64)> {
    let Ok(rd) = std::fs::read_dir(holds_dir(dir)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e
                .file_name()
                .to_str()?
                .split('-')
                .next()?
                .parse::<u32>()
                .ok()?;
            let t = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Path::new(&format!("/proc/{pid}"))
                .exists()
                .then_some((pid, t))
        })
        .collect()
}

/// A hold registered by this process, removed when dropped.
struct HoldFile(PathBuf);

impl Drop for HoldFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl ViewDevice {
    /// Open the view: hold consolidation, read the history, resolve the point, build the map.
    pub fn open(spec: &ViewSpec) -> Result<Self, CdpError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = &spec.dir;
        // A first look: the point's time, for the hold.
        let h = store::load(dir, store::Load::ReadOnly)?;
        let seq = pit::resolve(&h, spec.point)?;
        let t = h
            .entries()
            .find(|(_, e)| e.seq == seq)
            .map_or(h.meta.window_start(), |(_, e)| e.time);
        let hd = holds_dir(dir);
        std::fs::create_dir_all(&hd).map_err(io_err("create", &hd))?;
        let hp = hd.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // Records are in time order: holding at the point's time less one keeps every segment
        // with a record after the point out of the base copy.
        std::fs::write(&hp, format!("{}\n", t.saturating_sub(1))).map_err(io_err("write", &hp))?;
        let hold = HoldFile(hp);
        // A pass that began before the hold existed finishes before the history is read.
        drop(
            store::lock_consolidation(dir)
                .map_err(io_err("lock", &store::consolidate_lock(dir)))?,
        );
        // Consolidation waits until the listed segments and the base copy are open (a pass
        // may retire a segment wholly before the point, which the hold does not keep: opened,
        // its inode stays readable; not yet opened, it would be gone).
        let reading = store::lock_reading(dir);
        let h = store::load(dir, store::Load::ReadOnly)?;
        let seq = pit::resolve(&h, spec.point)?;
        let mut map = Extents::new(h.meta.size);
        let mut files = Vec::with_capacity(h.segments.len());
        let mut file_of = BTreeMap::new();
        for s in &h.segments {
            let p = store::seg_path(dir, s.header.segno);
            file_of.insert(s.header.segno, files.len() as u32);
            files.push(File::open(&p).map_err(io_err("open", &p))?);
        }
        let mut records = Vec::new();
        for (segno, e) in h.entries().take_while(|(_, e)| e.seq <= seq) {
            let end = e.offset.saturating_add(e.len).min(h.meta.size);
            if e.offset >= end {
                continue;
            }
            if e.op == Op::Write {
                records.push(Checked {
                    file: file_of[&segno],
                    segno,
                    entry: *e,
                    ok: false.into(),
                });
            }
            match e.op {
                Op::Write => map.set(
                    e.offset,
                    end,
                    Src::Seg {
                        file: file_of[&segno],
                        pos: e.pos + REC_HEADER as u64,
                    },
                ),
                Op::Zeroes | Op::Unmap => map.set(e.offset, end, Src::Zero),
                Op::Mark | Op::Pad | Op::Gap => {}
            }
        }
        // Only the records the map still reads from are kept (a hot block's older records,
        // overwritten before the point, are not read).
        let mut used = vec![false; records.len()];
        for &(_, src) in map.0.values() {
            if let Src::Seg { file, pos } = src {
                let i = records.partition_point(|r: &Checked| (r.file, r.entry.pos) <= (file, pos));
                if let Some(u) = i.checked_sub(1).and_then(|i| used.get_mut(i)) {
                    *u = true;
                }
            }
        }
        let mut used = used.into_iter();
        records.retain(|_| used.next().unwrap_or(false));
        let bp = store::base_path(dir);
        let base = File::open(&bp).map_err(io_err("open", &bp))?;
        pit::base_whole(&base, &bp, h.meta.size)?;
        drop(reading);
        let overlay = if spec.sandbox {
            let m =
                MallocDevice::new(h.meta.size, h.meta.block_size).map_err(|e| CdpError::Io {
                    what: "map the sandbox overlay for",
                    path: dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            Some((m, Arc::new(Mutex::new(BTreeMap::new()))))
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(PointContent {
                size: h.meta.size,
                block: h.meta.block_size,
                seq,
                map,
                base,
                files,
                records,
                hold,
                vol_id: h.meta.vol_id,
                dir: dir.clone(),
            }),
            overlay,
        })
    }

    /// The sequence number the view shows.
    pub fn seq(&self) -> u64 {
        self.inner.seq
    }

    /// Ranges in the extent map (for status and tests).
    pub fn extents(&self) -> usize {
        self.inner.map.0.len()
    }

    /// The hold file (tests).
    pub fn hold_path(&self) -> &Path {
        &self.inner.hold.0
    }

    /// Fill `out` with the content at the view's point of `[offset, offset + out.len())`
    /// (synchronously, off any reactor: a rollback in place compares with it). The range must
    /// be inside the volume.
    pub fn read_point(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        if !in_range(offset, out.len() as u64, self.inner.size) {
            return Err(std::io::Error::other("range outside the volume"));
        }
        self.inner.read_point(offset, out)
    }
}

impl PointContent {
    /// Fill `out` with the content at the point of `[offset, offset + out.len())`.
    fn read_point(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        for (s, e, src) in self.map.pieces(offset, out.len() as u64) {
            let dst = &mut out[(s - offset) as usize..(e - offset) as usize];
            match src {
                Src::Zero => dst.fill(0),
                Src::Base => store::read_or_zero(&self.base, dst, s)?,
                Src::Seg { file, pos } => {
                    self.check(file, pos)?;
                    self.files[file as usize].read_exact_at(dst, pos)?
                }
            }
        }
        Ok(())
    }

    /// Check, once, the whole record whose payload holds byte `pos` of file `file`.
    fn check(&self, file: u32, pos: u64) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let i = self
            .records
            .partition_point(|r| (r.file, r.entry.pos) <= (file, pos));
        let Some(r) = i.checked_sub(1).map(|i| &self.records[i]) else {
            return Err(std::io::Error::other("no record holds this piece"));
        };
        if r.ok.load(Relaxed) {
            return Ok(());
        }
        let mut rec = vec![0u8; REC_HEADER + r.entry.len as usize];
        self.files[file as usize].read_exact_at(&mut rec, r.entry.pos)?;
        let path = store::seg_path(&self.dir, r.segno);
        pit::check_record(&rec, &r.entry, self.vol_id, &path).map_err(std::io::Error::other)?;
        r.ok.store(true, Relaxed);
        Ok(())
    }
}

impl BlockDevice for ViewDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size: self.inner.size,
            block_size: self.inner.block,
            min_io: self.inner.block,
            kind: if self.overlay.is_some() {
                "cdp-sandbox".into()
            } else {
                "cdp-view".into()
            },
            // Only a sandbox takes writes (into its overlay).
            read_only: self.overlay.is_none(),
        }
    }

    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        let overlay = match &self.overlay {
            Some((m, r)) => Some((m.open_channel(io)?, Arc::clone(r))),
            None => None,
        };
        Ok(Box::new(ViewChannel {
            dev: Arc::clone(&self.inner),
            buf: Vec::new(),
            overlay,
        }))
    }
}

/// One reactor's channel of a view.
struct ViewChannel {
    dev: Arc<PointContent>,
    buf: Vec<u8>,
    overlay: Option<(Box<dyn Channel>, Written)>,
}

impl ViewChannel {
    fn dev(&self) -> &PointContent {
        &self.dev
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), Errno> {
        let d = self.dev();
        if !in_range(offset, len, d.size) {
            return Err(Errno::NOSPC);
        }
        if !offset.is_multiple_of(u64::from(d.block)) || !len.is_multiple_of(u64::from(d.block)) {
            return Err(Errno::INVAL);
        }
        Ok(())
    }

    /// A sandbox update of `[offset, offset + len)` through the overlay's channel.
    fn sandbox(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        apply: impl FnOnce(&mut dyn Channel, &mut IoCx, IoTag) -> Start,
    ) -> Start {
        if let Err(e) = self.check(offset, len) {
            return Start::Done(Err(e));
        }
        let Some((chan, ranges)) = self.overlay.as_mut() else {
            return Start::Done(Err(Errno::PERM));
        };
        let r = apply(chan.as_mut(), io, tag);
        if r == Start::Done(Ok(())) && len > 0 {
            mark(
                &mut ranges.lock().unwrap_or_else(|e| e.into_inner()),
                offset,
                offset + len,
            );
        }
        r
    }
}

impl Channel for ViewChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        if !in_range(offset, u64::from(len), self.dev().size) {
            return ReadStart::Failed(Errno::NOSPC);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        if let Err(e) = self.dev().read_point(offset, &mut buf) {
            tracing::error!(offset, len, error = %e, "cdp view: read failed");
            self.buf = buf;
            return ReadStart::Failed(Errno::IO);
        }
        if let Some((chan, ranges)) = self.overlay.as_mut() {
            let written: Vec<(u64, u64)> = {
                let r = ranges.lock().unwrap_or_else(|e| e.into_inner());
                let end = offset + u64::from(len);
                let first = r.range(..=offset).next_back().map_or(offset, |(&s, _)| s);
                r.range(first..end)
                    .filter(|(_, e)| **e > offset)
                    .map(|(&s, &e)| (s.max(offset), e.min(end)))
                    .collect()
            };
            for (s, e) in written {
                match chan.read(io, tag, s, (e - s) as u32) {
                    ReadStart::Ready(d) => {
                        buf[(s - offset) as usize..(e - offset) as usize].copy_from_slice(d)
                    }
                    _ => {
                        self.buf = buf;
                        return ReadStart::Failed(Errno::IO);
                    }
                }
            }
        }
        self.buf = buf;
        ReadStart::Ready(&self.buf)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        self.sandbox(io, tag, offset, data.len() as u64, |c, io, tag| {
            c.write(io, tag, offset, data, fua)
        })
    }

    fn flush(&mut self, _io: &mut IoCx, _tag: IoTag) -> Start {
        // Nothing of a view is durable: a read-only view has nothing to flush, a sandbox is
        // discarded when it closes.
        Start::Done(Ok(()))
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        self.sandbox(io, tag, offset, len, |c, io, tag| {
            c.write_zeroes(io, tag, offset, len, fua)
        })
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        // In the overlay an unmapped range reads as zeroes (the malloc device's unmap).
        self.sandbox(io, tag, offset, len, |c, io, tag| {
            c.write_zeroes(io, tag, offset, len, fua)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(x: &Extents) -> Vec<(u64, u64, Src)> {
        x.0.iter().map(|(&s, &(e, src))| (s, e, src)).collect()
    }

    #[test]
    fn the_extent_map_keeps_the_latest_source_of_every_byte() {
        let mut x = Extents::new(100);
        x.set(10, 20, Src::Seg { file: 0, pos: 1000 });
        x.set(15, 30, Src::Zero);
        x.set(0, 5, Src::Seg { file: 1, pos: 50 });
        assert_eq!(
            ranges(&x),
            vec![
                (0, 5, Src::Seg { file: 1, pos: 50 }),
                (5, 10, Src::Base),
                (10, 15, Src::Seg { file: 0, pos: 1000 }),
                (15, 30, Src::Zero),
                (30, 100, Src::Base),
            ]
        );
        // A read across them starts each piece at the right byte of its source.
        let p: Vec<_> = x.pieces(12, 10).collect();
        assert_eq!(
            p,
            vec![
                (12, 15, Src::Seg { file: 0, pos: 1002 }),
                (15, 22, Src::Zero)
            ]
        );
        let p: Vec<_> = x.pieces(40, 10).collect();
        assert_eq!(p, vec![(40, 50, Src::Base)]);
        // Covering everything leaves one range.
        x.set(0, 100, Src::Zero);
        assert_eq!(ranges(&x), vec![(0, 100, Src::Zero)]);
    }

    #[test]
    fn the_map_matches_a_byte_model_under_random_updates() {
        let size = 4096u64;
        let mut x = Extents::new(size);
        // Model: per byte, the source tag (0 base, 1 zero, 2+n: record n's byte index).
        let mut model = vec![(0u32, 0u64); size as usize];
        let mut r = 0x2545_F491_4F6C_DD1Du64;
        for n in 0..400u32 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            let a = r % size;
            let b = (r >> 20) % size;
            let (s, e) = (a.min(b), a.max(b) + 1);
            if r & 1 == 0 {
                x.set(s, e, Src::Zero);
                for m in &mut model[s as usize..e as usize] {
                    *m = (1, 0);
                }
            } else {
                x.set(s, e, Src::Seg { file: n, pos: 0 });
                for (i, m) in model[s as usize..e as usize].iter_mut().enumerate() {
                    *m = (2 + n, i as u64);
                }
            }
        }
        // Contiguous, no gap or overlap, and every byte's source as the model says.
        let mut at = 0;
        for (s, e, _) in ranges(&x) {
            assert_eq!(s, at);
            assert!(e > s);
            at = e;
        }
        assert_eq!(at, size);
        for off in 0..size {
            let (_, _, src) = x.pieces(off, 1).next().unwrap();
            let want = match model[off as usize] {
                (0, _) => Src::Base,
                (1, _) => Src::Zero,
                (k, i) => Src::Seg {
                    file: k - 2,
                    pos: i,
                },
            };
            assert_eq!(src, want, "byte {off}");
        }
    }
}
