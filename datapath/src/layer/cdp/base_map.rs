//! The base copy (`base.img`) of a history kept on tmpfs, mapped shared and writable by the
//! retention thread, so consolidation copies each record into it with one `memcpy` instead of
//! a `pwrite` (session 12 measured 0.7 against 1.4 µs per 4 KiB record; consolidation is the
//! cost of a journal in memory once it reaches its retention). Into a base copy at least four
//! times the largest CPU cache, records of a page or more are streamed past the caches
//! (`bdev::stream`): nothing reads them back soon.
//!
//! Model: [`BaseMap::open`] maps the whole file as it is then. The retention thread keeps the
//! mapping from one pass to the next (a page is faulted into it once, not once per pass) and
//! checks before each pass that the path still names the mapped file at the same size
//! ([`BaseMap::current`]); when not, the caller maps it again.
//!
//! A write into a hole of a shared mapping allocates the page in the fault, and on a full
//! tmpfs that raises SIGBUS where a `pwrite` returns ENOSPC. So no byte is written through
//! the mapping before its page of the file is known to be allocated: the file is tracked in
//! pieces of [`PIECE`] bytes (a page; one bit each, 32 MiB of bits for a 1 TiB volume, touched
//! only where written), and a write into pieces not known to be allocated allocates them with
//! `fallocate` first (an error, such as ENOSPC, is returned, and nothing is written). A hole
//! punched into a piece (an unmap or write-zeroes record) makes it unknown again.
//!
//! How much is allocated: while less than half the file is allocated ([`BaseMap::refresh`],
//! once a pass), exactly the pages written, as `pwrite` would; from then on the whole
//! [`GROW`]-byte stretch around them, so a dense base copy learns its pages sixteen at a time
//! (a `fallocate` per new page costs as much as the `pwrite` it replaces). The base copy thus
//! never takes more than its whole size, and more than `pwrite` would only once half of it is
//! allocated anyway.
//!
//! Only tmpfs is mapped: its `fallocate` allocates the pages themselves (ramfs has none).
//! Every copy into the mapping is guarded ([`crate::bdev::sigbus`]): a page that faults
//! anyway (`base.img` shrunk by someone else while the daemon runs, the daemon never does; a
//! page of a tmpfs that swaps that cannot come back) fails the write with EIO instead of
//! raising SIGBUS in the daemon, and the mapping is not used again ([`BaseMap::current`] is
//! false from then on: the caller maps the file again, as it is then).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The unit in which the base copy's allocation is tracked: a page.
pub const PIECE: u64 = 4096;

/// The stretch allocated at once around a new page when the file is at least half allocated.
pub const GROW: u64 = 64 << 10;

/// A shared, writable mapping of a whole base copy on tmpfs.
pub struct BaseMap {
    file: File,
    dev: u64,
    ino: u64,
    ptr: *mut u8,
    len: u64,
    /// One bit per piece: every byte of the piece is allocated.
    allocated: Vec<u64>,
    /// At least half the file is allocated (as of the last [`BaseMap::refresh`]).
    dense: bool,
    /// Large enough that records stream past the caches (`bdev::stream`).
    stream: bool,
    /// A copy into it faulted (`bdev::sigbus`): it holds pages that are not the file's.
    broken: bool,
}

// SAFETY: the mapping is owned by this value alone; sending it to another thread moves the
// right to write (and to unmap) it.
unsafe impl Send for BaseMap {}

/// Whether `path` is on tmpfs.
fn on_tmpfs(path: &Path) -> bool {
    super::journal::fs_type(path) == Some(super::journal::TMPFS_MAGIC)
}

/// Punch a hole at `at..at + len` of `file` (its size kept); false when the filesystem
/// refuses (the caller then writes zeroes).
pub fn punch_hole(file: &File, at: u64, len: u64) -> bool {
    // SAFETY: plain syscall on an open descriptor.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at as i64,
            len as i64,
        ) == 0
    }
}

impl BaseMap {
    /// Map the base copy at `path`: `None` when it is not on tmpfs or is empty, an error when
    /// it cannot be opened or mapped.
    pub fn open(path: &Path) -> std::io::Result<Option<BaseMap>> {
        if !on_tmpfs(path) {
            return Ok(None);
        }
        crate::bdev::sigbus::install();
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let m = file.metadata()?;
        let len = m.len();
        if len == 0 {
            return Ok(None);
        }
        let size =
            usize::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: a new mapping (no address given) of `size` bytes of an open descriptor,
        // shared and writable; the result is checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(BaseMap {
            dev: m.dev(),
            ino: m.ino(),
            file,
            ptr: ptr.cast(),
            len,
            allocated: vec![0; len.div_ceil(PIECE).div_ceil(64) as usize],
            dense: false,
            stream: crate::bdev::stream::worth_streaming(len),
            broken: false,
        }))
    }

    /// Whether records of a page or more are streamed past the caches (`bdev::stream`).
    pub fn streams(&self) -> bool {
        self.stream
    }

    /// Whether `path` still names the mapped file, at the mapped size.
    pub fn current(&self, path: &Path) -> bool {
        !self.broken
            && std::fs::metadata(path)
                .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino && m.len() == self.len)
    }

    /// Look again at how much of the file is allocated (see the module doc); once a pass.
    pub fn refresh(&mut self) {
        if let Ok(m) = self.file.metadata() {
            self.dense = m.blocks().saturating_mul(512).saturating_mul(2) >= self.len;
        }
    }

    /// The mapped file (for what is not a copy: punching holes, syncing).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn known(&self, piece: u64) -> bool {
        self.allocated[(piece / 64) as usize] & (1 << (piece % 64)) != 0
    }

    fn set_known(&mut self, piece: u64, on: bool) {
        let (w, b) = ((piece / 64) as usize, piece % 64);
        if on {
            self.allocated[w] |= 1 << b;
        } else {
            self.allocated[w] &= !(1 << b);
        }
    }

    /// Copy `data` into the base copy at byte `at`, allocating first every piece it touches
    /// that is not known to be allocated. An error (ENOSPC from `fallocate`; EINVAL for a range
    /// past the file's end) leaves the bytes unwritten.
    pub fn write(&mut self, data: &[u8], at: u64) -> std::io::Result<()> {
        let end = at
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        if data.is_empty() {
            return Ok(());
        }
        // The pieces not known to be allocated, in runs: one `fallocate` per run.
        let last = (end - 1) / PIECE;
        let mut piece = at / PIECE;
        while piece <= last {
            if self.known(piece) {
                piece += 1;
                continue;
            }
            let mut first = piece;
            while piece <= last && !self.known(piece) {
                piece += 1;
            }
            if self.dense {
                // The whole stretch around the run (pieces already allocated in it are
                // allocated again at no cost).
                let per = GROW / PIECE;
                first -= first % per;
                piece = piece.div_ceil(per) * per;
                piece = piece.min(self.len.div_ceil(PIECE));
            }
            let from = first * PIECE;
            let n = (piece * PIECE).min(self.len) - from;
            // SAFETY: plain syscall on an open descriptor; mode 0 inside the file's size
            // allocates without changing the size.
            if unsafe { libc::fallocate(self.file.as_raw_fd(), 0, from as i64, n as i64) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for p in first..piece {
                self.set_known(p, true);
            }
        }
        // SAFETY: `ptr` maps `len` writable bytes until drop and `at + data.len() <= len`
        // (checked above); every page of the range is allocated (each piece it touches was
        // allocated above or before, and nothing punched it since: `punched`), so the write
        // faults only in present pages (and a fault is caught: `bdev::sigbus`); `data` is not
        // inside the mapping (a segment's bytes or a buffer), so the ranges do not overlap.
        let ok = !self.broken
            && unsafe {
                crate::bdev::sigbus::put(
                    self.ptr.add(at as usize),
                    data.as_ptr(),
                    data.len(),
                    self.stream,
                )
            };
        if !ok {
            self.broken = true;
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// A hole was punched (or may have been) at `at..at + len`: its pieces are no longer
    /// known to be allocated.
    pub fn punched(&mut self, at: u64, len: u64) {
        let end = at.saturating_add(len).min(self.len);
        if end <= at {
            return;
        }
        for piece in at / PIECE..=(end - 1) / PIECE {
            self.set_known(piece, false);
        }
    }
}

impl Drop for BaseMap {
    fn drop(&mut self) {
        // SAFETY: the mapping `mmap` returned, of `len` bytes (it fitted a usize then),
        // unmapped once; no pointer into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn shm_file(len: u64) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
        let d = tempfile::tempdir_in("/dev/shm").ok()?;
        let p = d.path().join("base.img");
        File::create(&p).unwrap().set_len(len).unwrap();
        Some((d, p))
    }

    fn allocated_bytes(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().blocks() * 512
    }

    #[test]
    fn writes_through_the_map_are_the_files_bytes_and_allocate_only_their_pieces() {
        let Some((_d, p)) = shm_file(16 * PIECE + 1000) else {
            return; // no /dev/shm on this machine
        };
        let mut m = BaseMap::open(&p).unwrap().expect("tmpfs is mapped");
        assert!(m.current(&p));
        assert_eq!(allocated_bytes(&p), 0, "a sparse file to start with");
        let a: Vec<u8> = (0..4096u32).map(|i| (i * 3) as u8).collect();
        // Across the boundary of pieces 2 and 3, and in the short last piece.
        m.write(&a, 3 * PIECE - 100).unwrap();
        m.write(&a[..1000], 16 * PIECE).unwrap();
        assert_eq!(
            allocated_bytes(&p),
            2 * PIECE + 4096,
            "pieces 2, 3 and the last"
        );
        let f = File::open(&p).unwrap();
        let mut back = vec![0u8; 4096];
        f.read_exact_at(&mut back, 3 * PIECE - 100).unwrap();
        assert_eq!(back, a);
        f.read_exact_at(&mut back[..1000], 16 * PIECE).unwrap();
        assert_eq!(back[..1000], a[..1000]);
        // Past the end: refused, nothing written.
        assert!(m.write(&a, 16 * PIECE).is_err());
        assert!(m.write(&a[..1], u64::MAX).is_err());
    }

    /// `base.img` shrunk by someone else under the mapping: a write into a page past its
    /// new end fails with EIO (not SIGBUS), the mapping is not current any more, and a new
    /// one of the file as it is then takes writes again.
    #[test]
    fn a_write_into_a_page_gone_from_under_the_map_fails_and_the_map_is_not_current() {
        let Some((_d, p)) = shm_file(16 * PIECE) else {
            return; // no /dev/shm on this machine
        };
        let mut m = BaseMap::open(&p).unwrap().expect("tmpfs is mapped");
        let a = vec![7u8; 4096];
        m.write(&a, 8 * PIECE).unwrap(); // allocated and known
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4 * PIECE)
            .unwrap();
        let e = m.write(&a, 8 * PIECE).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(16 * PIECE)
            .unwrap(); // the same file at its mapped length again
        assert!(!m.current(&p), "a broken mapping is not current");
        assert!(m.write(&a, 0).is_err(), "nor written again");
        let mut again = BaseMap::open(&p).unwrap().expect("mapped again");
        again.write(&a, 8 * PIECE).unwrap();
        let mut back = vec![0u8; 4096];
        File::open(&p)
            .unwrap()
            .read_exact_at(&mut back, 8 * PIECE)
            .unwrap();
        assert_eq!(back, a);
    }

    /// A base copy at least four times the largest cache takes its records with streaming
    /// stores: the file holds exactly their bytes.
    #[test]
    fn a_large_base_copy_streams_its_records_into_the_file() {
        let len = (crate::bdev::stream::REGION_PER_CACHE * crate::bdev::stream::largest_cache())
            .next_multiple_of(PIECE);
        let Some((_d, p)) = shm_file(len) else {
            return;
        };
        let mut m = BaseMap::open(&p).unwrap().expect("tmpfs is mapped");
        assert!(m.stream, "{len} bytes stream");
        let a: Vec<u8> = (0..8292u32).map(|i| (i * 5 + 3) as u8).collect();
        let f = File::open(&p).unwrap();
        for (at, n) in [(0u64, 4096usize), (len / 2 - 100, 8292), (len - 4096, 4096)] {
            m.write(&a[..n], at).unwrap();
            let mut back = vec![0u8; n];
            f.read_exact_at(&mut back, at).unwrap();
            assert_eq!(back, a[..n], "at {at} len {n}");
        }
        let mut before = [9u8; 1];
        f.read_exact_at(&mut before, len / 2 - 101).unwrap();
        assert_eq!(before, [0], "the byte before a record");
    }

    #[test]
    fn a_punched_piece_is_allocated_again_before_the_next_write_into_it() {
        let Some((_d, p)) = shm_file(4 * PIECE) else {
            return;
        };
        let mut m = BaseMap::open(&p).unwrap().unwrap();
        m.write(&[7u8; 8192], PIECE).unwrap();
        assert_eq!(allocated_bytes(&p), 2 * PIECE);
        assert!(punch_hole(m.file(), PIECE, 2 * PIECE));
        m.punched(PIECE, 2 * PIECE);
        assert_eq!(allocated_bytes(&p), 0);
        // Into the first punched piece, and across the second into the last (never written).
        m.write(&[9u8; 512], PIECE + 1024).unwrap();
        m.write(&[5u8; 4096], 2 * PIECE + 2048).unwrap();
        assert_eq!(allocated_bytes(&p), 3 * PIECE, "the pieces allocated again");
        let mut back = vec![1u8; 3 * PIECE as usize];
        File::open(&p)
            .unwrap()
            .read_exact_at(&mut back, PIECE)
            .unwrap();
        assert!(
            back[..1024].iter().all(|&b| b == 0),
            "the punched bytes read zero"
        );
        assert!(back[1024..1536].iter().all(|&b| b == 9));
        assert!(back[1536..6144].iter().all(|&b| b == 0));
        assert!(back[6144..10240].iter().all(|&b| b == 5));
        assert!(back[10240..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_file_half_allocated_grows_by_whole_stretches_and_a_sparser_one_by_pages() {
        let Some((_d, p)) = shm_file(64 * PIECE) else {
            return;
        };
        let mut m = BaseMap::open(&p).unwrap().unwrap();
        m.refresh();
        m.write(&[1u8; 100], 5 * PIECE + 10).unwrap();
        assert_eq!(allocated_bytes(&p), PIECE, "sparse: the page written");
        // Half of the file allocated by someone else: from the next pass on, stretches.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&vec![2u8; 32 * PIECE as usize], 32 * PIECE)
            .unwrap();
        m.refresh();
        m.write(&[3u8; 100], 20 * PIECE + 10).unwrap();
        assert_eq!(
            allocated_bytes(&p),
            PIECE + 32 * PIECE + GROW,
            "dense: the 64 KiB stretch around the page"
        );
        let mut back = vec![9u8; GROW as usize];
        File::open(&p)
            .unwrap()
            .read_exact_at(&mut back, 16 * PIECE)
            .unwrap();
        let at = (4 * PIECE + 10) as usize;
        assert!(back[..at].iter().all(|&b| b == 0));
        assert!(back[at..at + 100].iter().all(|&b| b == 3));
        assert!(back[at + 100..].iter().all(|&b| b == 0));
        // The stretch's other pages are known now: a write there allocates nothing more.
        m.write(&[4u8; 4096], 23 * PIECE).unwrap();
        assert_eq!(allocated_bytes(&p), PIECE + 32 * PIECE + GROW);
    }

    #[test]
    fn a_replaced_or_resized_file_is_not_current_and_a_disk_file_is_not_mapped() {
        let Some((d, p)) = shm_file(PIECE) else {
            return;
        };
        let m = BaseMap::open(&p).unwrap().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(2 * PIECE)
            .unwrap();
        assert!(!m.current(&p), "resized");
        let m = BaseMap::open(&p).unwrap().unwrap();
        let other = d.path().join("other");
        File::create(&other).unwrap().set_len(2 * PIECE).unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert!(!m.current(&p), "replaced");
        let disk = tempfile::tempdir().unwrap();
        if !on_tmpfs(disk.path()) {
            let q = disk.path().join("base.img");
            File::create(&q).unwrap().set_len(PIECE).unwrap();
            assert!(BaseMap::open(&q).unwrap().is_none());
        }
    }
}
