//! Segments of a journal, mapped: in memory (tmpfs, ramfs), so the retention thread reads
//! a sealed segment's records where they lie instead of copying the whole segment into a
//! buffer first (session 12's profile: that copy was a quarter of consolidation's CPU), and
//! the writer appends on tmpfs with a copy instead of a `pwrite` (session 19: a `pwrite` of a
//! 4 KiB record cost about 1 µs of the reactor's time, the copy a fifth of that). With
//! `sync = "flush"` the writer appends to a journal on a disk through a mapping too (session
//! 20: a buffered 4,160-byte `pwrite` into a fallocated file on ext4 cost 3-4 µs here, a copy
//! into pages made present and writable ahead about 0.2 µs).
//!
//! Model: [`Mapped::open`] maps a whole file as it is then, shared and read-only;
//! [`Mapped::shared`] maps it shared and writable. A mapping is removed when the value is
//! dropped. [`SegMaps`] keeps a volume's writable mappings from one use of a segment file to
//! the next: the writer, the segment thread (which maps each spare before the writer needs it)
//! and the retention thread share it. A recycled segment keeps its file (its inode), so its
//! mapping and the page-table entries in it serve every later use: on tmpfs neither the reactor
//! nor the retention thread takes page faults or unmaps in the steady state (on a disk, see
//! below: pages writeback cleaned or past the populated part fault; session 18 measured
//! mapping, populating and unmapping at about half a µs per 4 KiB record).
//!
//! A file is known by its device, inode number and birth time: on a tmpfs with 32-bit inode
//! numbers a number comes round again once the mount's counter wraps.
//!
//! Only a file with every byte allocated is mapped (both constructors refuse a sparse one): on
//! tmpfs, touching a hole through a shared mapping allocates a page, and on a full filesystem
//! that raises SIGBUS where a `read` of the hole returns zeroes and a `pwrite` ENOSPC (a
//! segment created while the journal's filesystem was full is sparse: `fallocate` failed,
//! `set_len` made it). On tmpfs `fallocate` allocates the pages themselves (ramfs has none);
//! on a disk it allocates the blocks, and [`Mapped::shared`] makes the pages of the first
//! [`POPULATE_DISK_MAX`] bytes present and writable at once (`MADV_POPULATE_WRITE`, Linux
//! 5.14, off the reactor; [`Mapped::shared_from`] from a given byte on, for an active
//! segment mapped part way, whose earlier bytes may have been written with O_DIRECT: no
//! O_DIRECT write to it is in flight or follows then), so the writer's stores there take no page fault unless writeback
//! has cleaned a page it has not reached yet. Writes go through
//! [`crate::bdev::sigbus::put`]: a page that cannot be brought in or made writable (a disk's
//! read error, a filesystem that aborted, a tmpfs page that cannot come back from swap) fails
//! the write, as a `pwrite` would, instead of raising SIGBUS in the daemon; the mapping is then
//! *broken* and never handed out again. The retention thread's reads of sealed segments in
//! memory through mappings are guarded too ([`crate::bdev::sigbus::ReadGuard`]): a page that
//! cannot come back from swap fails the consolidation pass and breaks the mapping. Sealed disk
//! segments are read the same way, mapped with their pages present at once
//! ([`Mapped::open_populated`]; session 23: the retention thread's copy of each segment into a
//! buffer was about half its CPU at 4 KiB writes); a disk's read error fails the pass. A full disk segment's mapping is dropped from the
//! cache ([`SegMaps::forget`]) and unmapped by the segment thread before the segment's last
//! sync (`Journal::disk_map_gone`): writeback under a mapping write-protects each page in
//! every CPU's TLB.
//!
//! Invariants:
//! - Nothing shrinks or punches a mapped file (touching a page past its end or in a hole
//!   raises SIGBUS). A segment is never truncated: it is zeroed, renamed or recycled (renamed,
//!   its header zeroed) only, and recovery's cuts zero records and run before the writer and
//!   the retention thread start.
//! - The writer writes only the active segment and never reads through its mapping; the
//!   retention thread reads only sealed segments. A file is active or sealed, never both, so no
//!   byte is written through one mapping while it is read through another reference to it.
//! - A file deleted while cached keeps its memory until its mapping is dropped:
//!   [`SegMaps::sweep`] drops the mappings of files no longer in the directory (the retention
//!   thread after each pass, the segment thread before it prepares a spare), and
//!   [`SegMaps::clear`] all of them for good (a run-time disable). The mappings are never
//!   unmapped on a reactor while the daemon serves: the writer only looks mappings up
//!   ([`SegMaps::cached`], and only for a file with every byte allocated still), and the sweep
//!   never drops a mapping someone else holds, so the cache's copy outlives the writer's.
//! - Mappings need the file's birth time (`statx`), which tmpfs gives from Linux 5.18: on an
//!   older kernel nothing is mapped and the appends are `pwrite`s (`mapped_appends` stays 0).
//! - The cache maps at most [`CACHE_MAX`] bytes (page tables: 2 MiB per GiB mapped); past it,
//!   reads map and unmap each time, and the writer appends with `pwrite`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// `statfs`'s `f_type` of tmpfs.
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The most bytes of segment files a volume's [`SegMaps`] keeps mapped.
pub const CACHE_MAX: u64 = 16 << 30;

/// The most mappings of files on a disk a volume's [`SegMaps`] keeps: the active segment's,
/// the spare's and one more (a full segment's mapping is forgotten and unmapped before its
/// last sync, but not where the segment thread is behind; the retention thread reads a sealed
/// segment on a disk through a mapping of its own, [`Mapped::open_populated`], made for the
/// pass and never kept).
pub const DISK_KEEP: usize = 3;

/// Of a file on a disk, at most this many bytes from its start are made present and writable
/// ahead: each such page is dirty until written back, and a volume's spare should not push
/// the host's dirty memory toward its writeback limits (a page past it is faulted in by the
/// writer's first store to it: about 1.2 µs per 4 KiB here, against 3-4 µs for a `pwrite`).
pub const POPULATE_DISK_MAX: usize = 64 << 20;

/// Whether the kernel makes pages present and writable on request (`MADV_POPULATE_WRITE`,
/// Linux 5.14): without it no file on a disk is mapped (its appends stay `pwrite`s).
pub fn populate_write_supported() -> bool {
    static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *YES.get_or_init(|| {
        // SAFETY: a new private anonymous page, checked for MAP_FAILED, advised, unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return false;
            }
            let ok = libc::madvise(p, 4096, libc::MADV_POPULATE_WRITE) == 0;
            libc::munmap(p, 4096);
            ok
        }
    })
}

/// A shared mapping of a whole file.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
    /// The file's identity, for a writable mapping.
    id: Option<FileId>,
    /// A write through it faulted ([`crate::bdev::sigbus`]): it holds pages that are not the
    /// file's, and is never used again.
    broken: AtomicBool,
    /// The file is not on tmpfs ([`DISK_KEEP`]).
    on_disk: bool,
}

/// Which file a mapping maps: device, inode number and birth time. The inode number alone is
/// not enough: a tmpfs with 32-bit inode numbers (no `inode64`) reuses them once its counter
/// wraps, even for files that are still there, and a mapping of another file taken for a new
/// spare would put acknowledged records into that file's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    born: std::time::SystemTime,
}

impl FileId {
    /// The identity in `m`; None where the filesystem does not give a birth time.
    fn of(m: &std::fs::Metadata) -> Option<FileId> {
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            born: m.created().ok()?,
        })
    }
}

// SAFETY: the mapping is owned by this value; it is only read through shared references to
// sealed segments, and written (through `write`) only by the active segment's writer (the
// module's invariants), so sending or sharing the value between threads adds no data race.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

/// A file's length as a `usize`, when every byte of it is allocated and it is not empty.
fn whole_len(m: &std::fs::Metadata) -> std::io::Result<usize> {
    let len =
        usize::try_from(m.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    if len == 0 || m.blocks().saturating_mul(512) < m.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(len)
}

fn map(
    file: &File,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: a new mapping (no address given) of `len` bytes of an open descriptor; the
    // result is checked for MAP_FAILED below.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ptr)
}

impl Mapped {
    /// Map `file` (its length now) read-only; an error for an empty file, a sparse one (not
    /// every byte allocated: see the module doc) or a failed `mmap`.
    pub fn open(file: &File) -> std::io::Result<Mapped> {
        Self::read_only(file, 0, false)
    }

    /// [`Mapped::open`] with every page present at once (`MAP_POPULATE`): a sealed segment on a
    /// disk, read by the retention thread. Its pages are mostly in the page cache still (written
    /// through a mapping or `pwrite`), and are then mapped in one call instead of copied into a
    /// buffer; those that are not are read in first, as a `read` would. A page that cannot be
    /// read is left out and raises SIGBUS when touched (the reader guards it).
    pub fn open_populated(file: &File) -> std::io::Result<Mapped> {
        Self::read_only(file, libc::MAP_POPULATE, true)
    }

    /// A shared read-only mapping of the whole of `file`, with `flags` besides `MAP_SHARED`.
    fn read_only(file: &File, flags: libc::c_int, on_disk: bool) -> std::io::Result<Mapped> {
        let len = whole_len(&file.metadata()?)?;
        let ptr = map(file, len, libc::PROT_READ, libc::MAP_SHARED | flags)?;
        Ok(Mapped {
            ptr,
            len,
            id: None,
            broken: AtomicBool::new(false),
            on_disk,
        })
    }

    /// Map `file` (its length now) shared and writable, its pages present and writable at once
    /// where `populate` (`MAP_POPULATE` on tmpfs; on a disk `MADV_POPULATE_WRITE` of the first
    /// [`POPULATE_DISK_MAX`] bytes, which fails here, not later, if a page cannot be made
    /// writable); an error for a file without a
    /// birth time (its identity could not be told), an empty or sparse one, or a failed `mmap`.
    pub fn shared(file: &File, populate: bool) -> std::io::Result<Mapped> {
        Self::shared_from(file, populate, 0)
    }

    /// [`Mapped::shared`], its pages on a disk made present from byte `from` (rounded down to
    /// a page) on: the active segment mapped part way ([`SegMaps::map_from`]), whose bytes
    /// before are written already. (The populate's faults may read pages around `from` in
    /// too, some written with O_DIRECT: the caller makes sure no O_DIRECT write to the file
    /// is in flight or follows, `Journal::ask_map`.)
    pub fn shared_from(file: &File, populate: bool, from: u64) -> std::io::Result<Mapped> {
        crate::bdev::sigbus::install();
        let m = file.metadata()?;
        let len = whole_len(&m)?;
        let id =
            FileId::of(&m).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EOPNOTSUPP))?;
        let tmpfs = fstat_type(file) == Some(TMPFS_MAGIC);
        let flags = libc::MAP_SHARED
            | if populate && tmpfs {
                libc::MAP_POPULATE
            } else {
                0
            };
        let ptr = map(file, len, libc::PROT_READ | libc::PROT_WRITE, flags)?;
        let mapped = Mapped {
            ptr,
            len,
            id: Some(id),
            broken: AtomicBool::new(false),
            on_disk: !tmpfs,
        };
        // (A shared mapping's MAP_POPULATE faults pages in for reading: on a disk, whose
        // pages are write-protected until written, each first store would still fault.)
        if populate && !tmpfs {
            mapped.populate_from(from)?; // unmapped by the drop on an error
        }
        Ok(mapped)
    }

    /// Make the pages of a writable mapping present and writable from byte `from` (rounded
    /// down to a page) on, at most [`POPULATE_DISK_MAX`] bytes (`MADV_POPULATE_WRITE`); an
    /// error where one cannot be (its page stays as it was).
    pub fn populate_from(&self, from: u64) -> std::io::Result<()> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let from = (usize::try_from(from).unwrap_or(usize::MAX) / page * page).min(self.len);
        if self.id.is_none() || from >= self.len {
            return Ok(());
        }
        let n = (self.len - from).min(POPULATE_DISK_MAX);
        // SAFETY: madvise over `n` bytes of the writable mapping `self` owns, from the
        // page-aligned `from` inside it.
        if unsafe {
            libc::madvise(
                self.ptr.cast::<u8>().add(from).cast(),
                n,
                libc::MADV_POPULATE_WRITE,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The file's bytes (read only sealed segments through it: the module's invariants).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`; the file is not shrunk while
        // mapped (the module's invariant), so every byte stays backed.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// Copy `src` into the file at `at` through a writable mapping, past the CPU's caches for
    /// a batch of a page or more (`bdev::stream::put`: the retention thread reads the record
    /// back minutes later, if at all; a lone mark or a header is an ordinary copy). False when
    /// the mapping is read-only or broken or the range is not inside the file (nothing
    /// written), or when a page faulted ([`crate::bdev::sigbus`]: part of `src` may be in the
    /// file; the mapping is broken from then on).
    pub fn write(&self, at: u64, src: &[u8]) -> bool {
        let Ok(at) = usize::try_from(at) else {
            return false;
        };
        if self.id.is_none()
            || self.broken.load(Relaxed)
            || at.checked_add(src.len()).is_none_or(|end| end > self.len)
        {
            return false;
        }
        // SAFETY: `at..at + src.len()` is inside the writable mapping (checked above), which
        // stays mapped while `self` lives; `src` is another object's memory, so they do not
        // overlap; only the active segment's writer writes (the module's invariants).
        let ok = unsafe {
            crate::bdev::sigbus::put(self.ptr.cast::<u8>().add(at), src.as_ptr(), src.len(), true)
        };
        if !ok {
            self.broken.store(true, Relaxed);
        }
        ok
    }

    /// It maps a file on a disk (not tmpfs).
    pub fn on_disk(&self) -> bool {
        self.on_disk
    }

    /// A write through it faulted: it is never handed out again.
    pub fn broken(&self) -> bool {
        self.broken.load(Relaxed)
    }

    /// A guarded read of it faulted (`bdev::sigbus::ReadGuard`): never hand it out again.
    pub fn set_broken(&self) {
        self.broken.store(true, Relaxed);
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapped({} bytes, on disk {})", self.len, self.on_disk)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping `mmap` returned, unmapped once; no borrow of `bytes` outlives
        // `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// `fstatfs`'s filesystem type of an open file.
fn fstat_type(file: &File) -> Option<i64> {
    // SAFETY: fstatfs fills the zeroed struct it is given, for a descriptor `file` owns.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointer is valid for the call.
    (unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// A volume's writable mappings of its segment files (on tmpfs; on a disk with
/// `sync = "flush"`), kept from one use of a file to the next (see the module doc).
#[derive(Default)]
pub struct SegMaps {
    state: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    maps: Vec<Arc<Mapped>>,
    /// [`SegMaps::clear`] was called: nothing is kept any more.
    closed: bool,
}

impl std::fmt::Debug for SegMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, bytes) = self.kept();
        write!(f, "SegMaps({n} mappings, {bytes} bytes)")
    }
}

impl SegMaps {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached mapping of `file`, if there is one of this very file at its length now and
    /// the file still has every byte allocated (the writer at a segment switch: it never maps
    /// nor unmaps).
    pub fn cached(&self, file: &File) -> Option<Arc<Mapped>> {
        let m = file.metadata().ok()?;
        whole_len(&m).ok()?;
        let id = FileId::of(&m)?;
        self.lock()
            .maps
            .iter()
            .find(|x| x.id == Some(id) && x.len as u64 == m.len() && !x.broken())
            .cloned()
    }

    /// The writable mapping of `file` (every byte allocated): the cached one, else a new one,
    /// cached (and populated) while the cache has room ([`CACHE_MAX`]) and is not cleared;
    /// past that a lazy one, unmapped when its last holder drops it. A mapping of the same
    /// file at another length is dropped, and so are the oldest mappings of disk files past
    /// [`DISK_KEEP`] that no one else holds.
    pub fn map(&self, file: &File) -> std::io::Result<Arc<Mapped>> {
        self.map_from(file, 0)
    }

    /// [`SegMaps::map_from`] of the file at `path`, opened for reading and writing.
    pub fn map_path(&self, path: &std::path::Path, from: u64) -> std::io::Result<Arc<Mapped>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        self.map_from(&f, from)
    }

    /// [`SegMaps::map`], a new mapping's pages on a disk made present from byte `from` on
    /// ([`Mapped::shared_from`]).
    pub fn map_from(&self, file: &File, from: u64) -> std::io::Result<Arc<Mapped>> {
        if let Some(m) = self.cached(file) {
            // A mapping an earlier use of the file left: its pages from `from` on made present
            // too (an active segment mapped part way; a spare, `from` 0, is taken as it is).
            if from > 0 && m.on_disk {
                m.populate_from(from)?;
            }
            return Ok(m);
        }
        let len = file.metadata()?.len();
        let room = {
            let k = self.lock();
            !k.closed && k.maps.iter().map(|x| x.len as u64).sum::<u64>() + len <= CACHE_MAX
        };
        let new = Arc::new(Mapped::shared_from(file, room, from)?);
        let dropped = {
            let mut k = self.lock();
            let id = new.id;
            let (same, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut k.maps)
                .into_iter()
                .partition(|x| x.id == id);
            k.maps = keep;
            let total: u64 = k.maps.iter().map(|x| x.len as u64).sum();
            if room && !k.closed && total + new.len as u64 <= CACHE_MAX {
                k.maps.push(Arc::clone(&new));
            }
            // The oldest mappings of disk files past [`DISK_KEEP`] go, if the cache alone
            // holds them (so never the writer's).
            let mut old = Vec::new();
            while k.maps.iter().filter(|x| x.on_disk).count() > DISK_KEEP {
                let Some(i) = k
                    .maps
                    .iter()
                    .position(|x| x.on_disk && Arc::strong_count(x) == 1)
                else {
                    break;
                };
                old.push(k.maps.remove(i));
            }
            (same, old)
        };
        drop(dropped); // unmapped outside the lock
        Ok(new)
    }

    /// Drop the mappings of files no longer in `dir` (deleted: their memory is freed only once
    /// unmapped; a file renamed within `dir`, as a recycled segment is, stays); called off the
    /// reactors. Only a mapping the cache alone holds goes, and only one cached before `dir`
    /// was listed: the writer's (the active segment's) is never dropped here, so the last
    /// holder of a mapping, which unmaps it, is never the reactor, and a spare mapped while
    /// `dir` was listed stays. A file being renamed while `dir` is listed may be missed and its
    /// mapping dropped (when no one holds it): the retention thread maps it again when it
    /// consolidates it, and a spare that lost it is appended with `pwrite`.
    pub fn sweep(&self, dir: &std::path::Path) {
        let before: std::collections::HashSet<usize> = {
            let k = self.lock();
            if k.maps.is_empty() {
                return;
            }
            k.maps.iter().map(|x| Arc::as_ptr(x) as usize).collect()
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return; // the directory cannot be read now: keep everything
        };
        let present: std::collections::HashSet<FileId> = rd
            .flatten()
            .filter_map(|e| FileId::of(&e.metadata().ok()?))
            .collect();
        let gone: Vec<Arc<Mapped>> = {
            let mut k = self.lock();
            // (Copies are made only under this lock, so a count of 1 stays 1 until it is
            // dropped below.)
            let (gone, keep) = std::mem::take(&mut k.maps).into_iter().partition(|x| {
                Arc::strong_count(x) == 1
                    && before.contains(&(Arc::as_ptr(x) as usize))
                    && (x.broken() || x.id.is_none_or(|id| !present.contains(&id)))
            });
            k.maps = keep;
            gone
        };
        drop(gone); // unmapped outside the lock
    }

    /// Drop every mapping and keep none from now on (CDP switched off at run time: the
    /// history's files may be deleted next, and a mapping would keep their memory, while a
    /// pass of the retention or segment thread that started before may still map); called off
    /// the reactors, once the writer is gone.
    pub fn clear(&self) {
        let all = {
            let mut k = self.lock();
            k.closed = true;
            std::mem::take(&mut k.maps)
        };
        drop(all); // unmapped outside the lock
    }

    /// Stop keeping `m` (a full disk segment's, retired by its writer: whoever holds it last
    /// unmaps it).
    pub fn forget(&self, m: &Arc<Mapped>) {
        self.lock().maps.retain(|x| !Arc::ptr_eq(x, m));
    }

    /// How many mappings are kept, and their bytes.
    pub fn kept(&self) -> (usize, u64) {
        let k = self.lock();
        (k.maps.len(), k.maps.iter().map(|x| x.len as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_mapped_file_reads_its_bytes_and_an_empty_or_sparse_one_is_refused() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        f.write_all(&data).unwrap();
        let m = Mapped::open(&f).unwrap();
        assert_eq!(m.bytes(), &data[..]);
        let empty = tempfile::tempfile().unwrap();
        assert!(Mapped::open(&empty).is_err());
        // A hole (as a segment made by set_len when fallocate found no room), in memory too.
        for d in [std::env::temp_dir(), "/dev/shm".into()] {
            let Ok(mut sparse) = tempfile::tempfile_in(&d) else {
                continue;
            };
            sparse.write_all(&data).unwrap();
            sparse.set_len(1 << 20).unwrap();
            assert!(
                Mapped::open(&sparse).is_err(),
                "a sparse file in {}",
                d.display()
            );
            assert!(Mapped::shared(&sparse, false).is_err(), "{}", d.display());
        }
    }

    /// A preallocated file on tmpfs, as the segment thread makes a spare (None without a tmpfs
    /// that gives birth times: Linux before 5.18 maps nothing).
    fn preallocated(len: u64) -> Option<File> {
        let f = tempfile::tempfile_in("/dev/shm").ok()?;
        if f.metadata().ok()?.created().is_err() {
            eprintln!("skipped: no birth time on tmpfs here");
            return None;
        }
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as i64) };
        assert_eq!(rc, 0);
        Some(f)
    }

    #[test]
    fn a_write_through_the_mapping_is_what_a_read_of_the_file_sees_and_stays_inside_it() {
        let Some(f) = preallocated(64 << 10) else {
            return; // no tmpfs on this machine
        };
        let m = Mapped::shared(&f, true).unwrap();
        let rec: Vec<u8> = (0..4160u32).map(|i| (i * 13 + 1) as u8).collect();
        for at in [0u64, 3, 4096, 64 * 1024 - 4160] {
            assert!(m.write(at, &rec));
            let mut back = vec![0u8; rec.len()];
            f.read_exact_at(&mut back, at).unwrap();
            assert_eq!(back, rec, "at {at}");
        }
        // Past the end, or from an offset that wraps: refused, nothing written.
        assert!(!m.write(64 * 1024 - 4159, &rec));
        assert!(!m.write(u64::MAX - 10, &rec));
        assert!(!m.write(64 * 1024 + 1, &[]));
        // A read-only mapping is never written.
        let ro = Mapped::open(&f).unwrap();
        assert!(!ro.write(0, &rec));
    }

    /// A file on a disk (`sync = "flush"`'s journal) is mapped writable with its pages made
    /// present ahead; a write reaches the file; a page that faults (here: past the end of a
    /// file shrunk under the mapping, a failing disk's stand-in) fails the write instead of
    /// ending the process, and the broken mapping is never handed out again.
    #[test]
    fn a_disk_files_mapping_writes_through_and_a_faulting_page_breaks_it() {
        let Ok(dir) = tempfile::tempdir_in("/var/tmp") else {
            return;
        };
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("a.seg"))
            .unwrap();
        if fstat_type(&disk) == Some(TMPFS_MAGIC)
            || disk.metadata().unwrap().created().is_err()
            || !populate_write_supported()
        {
            eprintln!("skipped: /var/tmp is not a disk with birth times, or Linux before 5.14");
            return;
        }
        let len = 64 * 1024;
        // SAFETY: fallocate on an open descriptor.
        assert_eq!(unsafe { libc::fallocate(disk.as_raw_fd(), 0, 0, len) }, 0);
        let maps = SegMaps::default();
        let m = maps.map(&disk).unwrap();
        let rec: Vec<u8> = (0..4160u32).map(|i| (i * 7) as u8).collect();
        assert!(m.write(4096, &rec));
        let mut back = vec![0u8; rec.len()];
        disk.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, rec, "a read of the file sees the write");
        assert!(Arc::ptr_eq(&maps.cached(&disk).unwrap(), &m));
        disk.set_len(8192).unwrap();
        assert!(
            !m.write(16 * 1024, &rec),
            "a page past the end faults: an error"
        );
        assert!(m.broken());
        assert!(!m.write(0, &rec), "a broken mapping is not written again");
        // Its length is not the file's any more either way; grown back to it, the file is
        // still not handed the broken mapping.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fallocate(disk.as_raw_fd(), 0, 0, len) }, 0);
        assert!(maps.cached(&disk).is_none());
        drop(m);
        maps.sweep(dir.path());
        assert_eq!(maps.kept().0, 0, "the sweep drops a broken mapping");
        // At most DISK_KEEP mappings of disk files are kept, never one someone holds.
        let held = maps.map(&disk).unwrap();
        for n in 0..5 {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dir.path().join(format!("{n}.seg")))
                .unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8192) }, 0);
            maps.map(&f).unwrap();
        }
        assert_eq!(maps.kept().0, DISK_KEEP);
        assert!(
            Arc::ptr_eq(&maps.cached(&disk).unwrap(), &held),
            "the held one stays"
        );
    }

    #[test]
    fn a_file_keeps_its_mapping_across_renames_and_a_deleted_one_is_swept() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        if preallocated(4096).is_none() {
            return;
        }
        let p = dir.path().join("a.seg");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        // SAFETY: plain syscall on an open descriptor.
        assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
        let maps = SegMaps::default();
        let first = maps.map(&f).unwrap();
        assert_eq!(maps.kept(), (1, 1 << 20));
        // Recycled: renamed, opened again by its new name; the same mapping.
        let q = dir.path().join("recycled.seg");
        std::fs::rename(&p, &q).unwrap();
        let again = std::fs::File::open(&q).unwrap();
        assert!(Arc::ptr_eq(&first, &maps.cached(&again).unwrap()));
        assert!(Arc::ptr_eq(&first, &maps.map(&again).unwrap()));
        // Another file is not that mapping.
        let other = preallocated(1 << 20).unwrap();
        assert!(maps.cached(&other).is_none());
        // Still in the directory: the sweep keeps it. Deleted: the sweep keeps it while
        // someone else holds it (as the writer holds the active segment's: the last holder
        // unmaps, and that must not be the reactor), and drops it once only the cache does.
        maps.sweep(dir.path());
        assert_eq!(maps.kept().0, 1);
        std::fs::remove_file(&q).unwrap();
        maps.sweep(dir.path());
        assert_eq!(maps.kept().0, 1, "held by `first`");
        assert!(first.write(0, &[7; 64]));
        drop(first);
        maps.sweep(dir.path());
        assert_eq!(maps.kept(), (0, 0));
        assert!(maps.cached(&again).is_none());
        // Cleared: nothing kept, then or later (a pass that began before may still map).
        let kept = maps.map(&other).unwrap();
        assert_eq!(maps.kept().0, 1);
        maps.clear();
        assert_eq!(maps.kept(), (0, 0));
        assert!(kept.write(0, &[1; 8]));
        let later = maps.map(&other).unwrap();
        assert!(later.write(0, &[2; 8]), "a mapping is still given");
        assert_eq!(maps.kept(), (0, 0), "but not kept");
    }

    /// A mapped file that has a hole now (something punched it) is not handed out again:
    /// touching the hole through the mapping could raise SIGBUS on a full tmpfs.
    #[test]
    fn a_file_with_a_hole_is_not_handed_its_mapping() {
        let Some(f) = preallocated(1 << 20) else {
            return;
        };
        let maps = SegMaps::default();
        let m = maps.map(&f).unwrap();
        assert!(Arc::ptr_eq(&m, &maps.cached(&f).unwrap()));
        assert!(super::super::base_map::punch_hole(&f, 4096, 8192));
        assert!(maps.cached(&f).is_none());
        assert!(maps.map(&f).is_err(), "nor mapped again");
    }
}
