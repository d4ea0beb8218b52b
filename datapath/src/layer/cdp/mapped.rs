//! A sealed segment of a journal kept in memory (tmpfs, ramfs), mapped read-only, so the
//! retention thread reads its records where they lie instead of copying the whole segment
//! into a buffer first (session 12's profile: that copy was a quarter of consolidation's CPU).
//!
//! Model: [`Mapped::open`] maps the whole file as it is then, shared and read-only; the
//! mapping is removed when the value is dropped. Only files in memory are mapped: reading a
//! mapped page of a file on a disk that fails raises SIGBUS, where a `read` returns EIO.
//!
//! Only a file with every byte allocated is mapped ([`Mapped::open`] refuses a sparse one):
//! on tmpfs, reading a hole through a shared mapping allocates a page, and on a full
//! filesystem that raises SIGBUS where a `read` of the hole returns zeroes (a segment created
//! while the journal's filesystem was full is sparse: `fallocate` failed, `set_len` made it).
//!
//! Invariant the caller keeps: nothing shrinks the file while it is mapped (a read past the
//! file's end raises SIGBUS). A sealed segment is never truncated: it is zeroed, renamed or
//! recycled (renamed, its header zeroed) only, and recovery's cuts zero records and run
//! before the retention thread starts.

use std::fs::File;
use std::os::fd::AsRawFd;

/// A read-only shared mapping of a whole file.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; sending it to another thread
// moves the right to read (and to unmap) it.
unsafe impl Send for Mapped {}

impl Mapped {
    /// Map `file` (its length now) read-only; an error for an empty file, a sparse one (not
    /// every byte allocated: see the module doc) or a failed `mmap`.
    pub fn open(file: &File) -> std::io::Result<Mapped> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        let len =
            usize::try_from(m.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        if len == 0 || m.blocks().saturating_mul(512) < m.len() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new mapping (no address given) of `len` bytes of an open descriptor,
        // read-only; the result is checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`; the file is not shrunk while
        // mapped (the module's invariant), so every byte stays backed.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping `mmap` returned, unmapped once; no borrow of `bytes` outlives
        // `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        }
    }
}
