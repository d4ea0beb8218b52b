//! A sealed segment of a journal kept in memory (tmpfs, ramfs), mapped read-only, so the
//! retention thread reads its records where they lie instead of copying the whole segment
//! into a buffer first (session 12's profile: that copy was a quarter of consolidation's CPU).
//!
//! Model: [`Mapped::open`] maps the whole file as it is then, shared and read-only; the
//! mapping is removed when the value is dropped. Only files in memory are mapped: reading a
//! mapped page of a file on a disk that fails raises SIGBUS, where a `read` returns EIO.
//!
//! Invariant the caller keeps: nothing shrinks the file while it is mapped (a read past the
//! file's end raises SIGBUS). A sealed segment is only ever grown, zeroed or renamed while
//! its directory's consolidation lock is held by the pass that maps it; recovery's cuts zero
//! records, never truncate, and run before the retention thread starts.

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
    /// Map `file` (its length now) read-only; an error for an empty file or a failed `mmap`.
    pub fn open(file: &File) -> std::io::Result<Mapped> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        if len == 0 {
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
    fn a_mapped_file_reads_its_bytes_and_an_empty_one_is_refused() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        f.write_all(&data).unwrap();
        let m = Mapped::open(&f).unwrap();
        assert_eq!(m.bytes(), &data[..]);
        let empty = tempfile::tempfile().unwrap();
        assert!(Mapped::open(&empty).is_err());
    }
}
