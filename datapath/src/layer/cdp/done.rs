//! The done watermark of a running writer (file `done`; docs/cdp-format.md, "Readers of a
//! running history: the done watermark"): how far the updates it journaled have had their base
//! operations complete successfully, so that readers of the directory while it runs never take
//! a record whose base write is still to come, or failed.
//!
//! Model: the writer ([`Published`], made off the reactors by a start or `cdp_enable`) writes
//! the file under a temporary name with its first watermark, takes an exclusive `flock` on it,
//! maps it shared and renames it `done`; it then moves the watermark with one guarded atomic
//! store into the mapping ([`Published::set`]) and holds the lock until it is dropped (its home
//! channel goes) or its process ends. A reader ([`running`]) probes the lock without waiting:
//! refused, the writer runs and its watermark is read from a read-only mapping with an atomic
//! load; granted, or no file, no writer runs and the watermark means nothing.
//!
//! Invariants:
//! - While the lock is held, the word at [`AT`] is a sequence such that every update with a
//!   record up to it had its base operation complete successfully (the layer computes it,
//!   `failure.rs`); it is written only with aligned 8-byte atomic stores and read only with
//!   atomic loads, so a reader never sees a torn value.
//! - The header (magic, version, volume id, CRC) is written before the lock is taken and the
//!   file renamed into place, and never changed after: a reader that finds the lock held
//!   finds it whole; one that does not check fails the read (how far updates are done is
//!   then unknown).
//! - Nothing is synced: after a crash the lock is gone and the file means nothing.
//! - A store that faults (the file's device failing) leaves the watermark where it was and
//!   the mapping unused from then on: readers see a window that stops growing, never a record
//!   that is not done.

use super::error::CdpError;
use super::error::io_err;
use super::format;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The file's name in the directory.
pub const FILE: &str = "done";
/// Its name while a start writes it.
const TMP: &str = "done.tmp";
const MAGIC: &[u8; 8] = b"TBCDPDN1";
/// The file's length: one page, mapped whole.
pub const LEN: usize = 4096;
/// Where the watermark lies (an aligned 8-byte word).
pub const AT: usize = 64;
/// Bytes the CRC covers.
const HEAD: usize = 60;

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The file's first [`AT`] bytes for history `vol_id`.
fn header(vol_id: u64) -> [u8; AT] {
    let mut b = [0u8; AT];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    format::put64(&mut b, 16, vol_id);
    let crc = crate::checksum::crc32c(&b[..HEAD]);
    b[HEAD..AT].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why `b` (the file's first [`AT`] bytes) is not a header of history `vol_id`, if it is not.
fn check(b: &[u8; AT], vol_id: u64) -> Option<String> {
    if &b[..8] != MAGIC {
        return Some("bad magic".into());
    }
    if crate::checksum::crc32c(&b[..HEAD]).to_le_bytes() != b[HEAD..AT] {
        return Some("bad CRC".into());
    }
    if b[8..12] != 1u32.to_le_bytes() {
        return Some("unknown version".into());
    }
    let id = format::le64(b, 16);
    (id != vol_id).then(|| format!("names volume id {id:#x}, the history is {vol_id:#x}"))
}

/// A shared mapping of the file's [`LEN`] bytes, unmapped when dropped.
struct Map {
    ptr: *mut u8,
}

// SAFETY: the mapping is owned by this value alone (its address is not shared), and the word
// written through it is only ever accessed with atomic operations.
unsafe impl Send for Map {}

impl Map {
    fn new(file: &File, prot: libc::c_int, path: &Path) -> Result<Map, CdpError> {
        // SAFETY: a new shared mapping of an open file of at least LEN bytes (checked by the
        // callers), checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io_err("map", path)(std::io::Error::last_os_error()));
        }
        Ok(Map { ptr: p.cast() })
    }

    /// The watermark's word.
    fn word(&self) -> *mut u64 {
        // SAFETY: AT + 8 <= LEN, inside the mapping; page-aligned base, so the word is aligned.
        unsafe { self.ptr.add(AT).cast() }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Map::new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), LEN) };
    }
}

/// A running writer's watermark: the file locked and mapped (see the module's model).
pub struct Published {
    /// Holds the lock while this value lives.
    _file: File,
    /// `None` once a store faulted.
    map: Option<Map>,
    /// The value last stored.
    last: u64,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("last", &self.last)
            .finish()
    }
}

impl Published {
    /// Write `dir`'s `done` for history `vol_id` with watermark `seq`, locked and mapped (see
    /// the module's model). An I/O error when the file cannot be written, locked or mapped.
    pub fn create(dir: &Path, vol_id: u64, seq: u64) -> Result<Published, CdpError> {
        crate::bdev::sigbus::install();
        let tmp = dir.join(TMP);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let mut b = vec![0u8; LEN];
        b[..AT].copy_from_slice(&header(vol_id));
        format::put64(&mut b, AT, seq);
        file.write_all_at(&b, 0).map_err(io_err("write", &tmp))?;
        // Only a writer holding daemon.lock makes this file, and readers open `done` only:
        // nobody else can hold a lock on it.
        // SAFETY: plain syscall on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io_err("lock", &tmp)(std::io::Error::last_os_error()));
        }
        let map = Map::new(&file, libc::PROT_READ | libc::PROT_WRITE, &tmp)?;
        std::fs::rename(&tmp, path(dir)).map_err(io_err("rename", &tmp))?;
        Ok(Published {
            _file: file,
            map: Some(map),
            last: seq,
        })
    }

    /// Move the watermark to `seq` (one atomic store when it changed; no system call).
    pub fn set(&mut self, seq: u64) {
        if seq == self.last {
            return;
        }
        self.last = seq;
        let Some(m) = &self.map else {
            return;
        };
        // SAFETY: the word is aligned and writable in this live shared mapping; no one else
        // writes it.
        if !unsafe { crate::bdev::sigbus::store_u64(m.word(), seq) } {
            tracing::error!(
                seq,
                "cdp: cannot update the done watermark (its file's page faulted): readers of the running history see it end where it was"
            );
            self.map = None;
        }
    }

    /// The value last stored.
    pub fn value(&self) -> u64 {
        self.last
    }
}

/// The watermark of `dir`'s running writer for history `vol_id`, or `None` when no writer
/// runs (the lock is free) or none of this version ever published one (no file). Read after
/// the records it is to bound (see the module's model). An error when the file cannot be
/// opened or probed, or does not check while its writer runs.
pub fn running(dir: &Path, vol_id: u64) -> Result<Option<u64>, CdpError> {
    let p = path(dir);
    let file = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", &p)(e)),
    };
    // SAFETY: plain syscall on an open descriptor (its lock goes with it when it is closed).
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Ok(None);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(io_err("lock", &p)(e));
    }
    let bad = |why: String| CdpError::Meta {
        path: p.clone(),
        why: format!(
            "the running writer's done watermark cannot be read ({why}): how far its updates are done is unknown"
        ),
    };
    let len = file.metadata().map_err(io_err("stat", &p))?.len();
    if len < LEN as u64 {
        return Err(bad(format!("{len} bytes")));
    }
    let m = Map::new(&file, libc::PROT_READ, &p)?;
    // SAFETY: the range of the live mapping, named only for the guard (not read through).
    let guard =
        crate::bdev::sigbus::ReadGuard::new(unsafe { std::slice::from_raw_parts(m.ptr, LEN) });
    let mut head = [0u8; AT];
    // SAFETY: the header lies inside the mapping and is never written once the file is named
    // `done`; the word is aligned, inside the mapping, and written only with atomic stores (a
    // plain atomic load no larger than a machine word, 8 bytes on the 64-bit Linux targets the
    // daemon runs on, is allowed on read-only memory).
    let seq = unsafe {
        std::ptr::copy_nonoverlapping(m.ptr, head.as_mut_ptr(), AT);
        std::sync::atomic::AtomicU64::from_ptr(m.word()).load(std::sync::atomic::Ordering::Acquire)
    };
    if guard.faulted() {
        return Err(bad("a page of it could not be read".into()));
    }
    drop(guard);
    if let Some(why) = check(&head, vol_id) {
        return Err(bad(why));
    }
    Ok(Some(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watermark is read while its writer holds the file, moves with it, and means nothing
    /// once the writer is gone (dropped, as a killed process's lock goes); no file: none.
    #[test]
    fn a_running_writers_watermark_is_read_and_a_gone_ones_is_not() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert_eq!(running(dir, 7).unwrap(), None, "no file");
        let mut w = Published::create(dir, 7, 10).unwrap();
        assert!(!dir.join(TMP).exists(), "renamed into place");
        assert_eq!(running(dir, 7).unwrap(), Some(10));
        w.set(25);
        assert_eq!((running(dir, 7).unwrap(), w.value()), (Some(25), 25));
        drop(w);
        assert_eq!(running(dir, 7).unwrap(), None, "the writer is gone");
        // A later writer replaces it, and what a start killed while writing it left.
        std::fs::write(dir.join(TMP), b"left by a kill").unwrap();
        let w = Published::create(dir, 7, 30).unwrap();
        assert!(!dir.join(TMP).exists());
        assert_eq!(running(dir, 7).unwrap(), Some(30));
        drop(w);
    }

    /// A file that does not check while its writer runs fails the read (never a guess); the
    /// same file with no writer means nothing.
    #[test]
    fn a_running_writers_file_that_does_not_check_fails_the_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let w = Published::create(dir, 7, 10).unwrap();
        let e = running(dir, 8).unwrap_err().to_string();
        assert!(e.contains("volume id"), "{e}");
        let f = OpenOptions::new().write(true).open(path(dir)).unwrap();
        f.write_all_at(b"X", 0).unwrap();
        let e = running(dir, 7).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        f.set_len(100).unwrap();
        let e = running(dir, 7).unwrap_err().to_string();
        assert!(e.contains("100 bytes"), "{e}");
        drop(w);
        assert_eq!(running(dir, 7).unwrap(), None);
    }

    /// Files no writer of this history left at `done`, or a watermark at the top of its range:
    /// never a panic. Unlocked, whatever lies there means nothing (a directory, an empty file);
    /// held exclusively by some other process (any reader of the file may lock it), one that
    /// does not check fails the read; a start cannot put its file over a directory and fails
    /// with an error naming it; a watermark of `u64::MAX` is read as is.
    #[test]
    fn odd_files_at_done_are_errors_or_nothing_never_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        std::fs::create_dir(path(dir)).unwrap();
        assert_eq!(running(dir, 7).unwrap(), None, "an unlocked directory");
        let e = Published::create(dir, 7, 1).unwrap_err().to_string();
        assert!(e.contains("rename"), "{e}");
        std::fs::remove_dir(path(dir)).unwrap();
        std::fs::write(path(dir), b"").unwrap();
        assert_eq!(running(dir, 7).unwrap(), None, "an unlocked empty file");
        let other = File::open(path(dir)).unwrap();
        // SAFETY: plain syscall on an open descriptor.
        assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX) }, 0);
        let e = running(dir, 7).unwrap_err().to_string();
        assert!(e.contains("0 bytes"), "{e}");
        drop(other);
        let mut w = Published::create(dir, 7, u64::MAX - 1).unwrap();
        w.set(u64::MAX);
        assert_eq!(running(dir, 7).unwrap(), Some(u64::MAX));
        drop(w);
    }
}
