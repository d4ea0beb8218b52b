//! `malloc`: a RAM block device.
//!
//! Model: one anonymous, lazily committed mapping shared by every reactor; every operation
//! finishes synchronously (a copy), so this device never queues an SQE.
//!
//! Invariants:
//! - Every access is range-checked before the copy; nothing outside the mapping is touched.
//! - Concurrent writes to overlapping ranges from different reactors leave some interleaving of
//!   their bytes, as on any disk; ordering of overlapping in-flight writes is the initiator's
//!   (or the mirror's) business. The bytes are plain memory with no Rust references held across
//!   operations: each copy is a raw `copy_nonoverlapping` within one call.

use super::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start, in_range};
use crate::uring::{Errno, IoCx, IoTag};
use std::sync::Arc;

/// A RAM device of `size` bytes.
pub struct MallocDevice {
    base: *mut u8,
    size: u64,
    block_size: u32,
}

// SAFETY: the mapping is plain memory valid for the device's whole life; all access goes
// through raw copies bounded by `size` (see the module invariants on concurrent writes).
unsafe impl Send for MallocDevice {}
// SAFETY: as above; no interior state besides the mapping's bytes.
unsafe impl Sync for MallocDevice {}

impl MallocDevice {
    /// Map `size` bytes of zeroed RAM (committed on first touch).
    pub fn new(size: u64, block_size: u32) -> Result<Arc<Self>, BdevError> {
        if size == 0 || block_size == 0 || !size.is_multiple_of(block_size as u64) {
            return Err(BdevError::BadSize {
                size,
                block: block_size,
            });
        }
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BdevError::Map {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Arc::new(Self {
            base: p.cast(),
            size,
            block_size,
        }))
    }

    fn zero(&self, offset: u64, len: u64) {
        // Whole pages are given back to the kernel (they read as zeroes again); the edges are
        // cleared by hand.
        const PAGE: u64 = 4096;
        let start = offset.next_multiple_of(PAGE);
        let end = (offset + len) / PAGE * PAGE;
        if end > start {
            // SAFETY: [offset, offset+len) is inside the mapping (checked by callers).
            unsafe {
                std::ptr::write_bytes(self.base.add(offset as usize), 0, (start - offset) as usize)
            };
            // SAFETY: page-aligned sub-range of the private anonymous mapping; MADV_DONTNEED
            // makes it read back as zeroes.
            unsafe {
                libc::madvise(
                    self.base.add(start as usize).cast(),
                    (end - start) as usize,
                    libc::MADV_DONTNEED,
                )
            };
            // SAFETY: inside the mapping.
            unsafe {
                std::ptr::write_bytes(
                    self.base.add(end as usize),
                    0,
                    (offset + len - end) as usize,
                )
            };
        } else {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_bytes(self.base.add(offset as usize), 0, len as usize) };
        }
    }
}

impl Drop for MallocDevice {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used by anyone (last Arc dropped).
        unsafe { libc::munmap(self.base.cast(), self.size as usize) };
    }
}

impl BlockDevice for Arc<MallocDevice> {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size: self.size,
            block_size: self.block_size,
            min_io: 1,
            kind: "malloc".into(),
            read_only: false,
        }
    }

    fn open_channel(&self, _io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        Ok(Box::new(MallocChannel {
            dev: Arc::clone(self),
        }))
    }
}

struct MallocChannel {
    dev: Arc<MallocDevice>,
}

impl Channel for MallocChannel {
    fn read(&mut self, _io: &mut IoCx, _tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        if !in_range(offset, len as u64, self.dev.size) {
            return ReadStart::Failed(Errno::INVAL);
        }
        // SAFETY: in range (checked); the slice lives only until the caller's next use of the
        // channel, during which the caller copies it out.
        ReadStart::Ready(unsafe {
            std::slice::from_raw_parts(self.dev.base.add(offset as usize), len as usize)
        })
    }

    fn write(
        &mut self,
        _io: &mut IoCx,
        _tag: IoTag,
        offset: u64,
        data: &[u8],
        _fua: bool,
    ) -> Start {
        if !in_range(offset, data.len() as u64, self.dev.size) {
            return Start::Done(Err(Errno::INVAL));
        }
        // SAFETY: destination in range (checked); source is the caller's slice, which cannot
        // overlap the device's private mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.dev.base.add(offset as usize),
                data.len(),
            )
        };
        Start::Done(Ok(()))
    }

    fn flush(&mut self, _io: &mut IoCx, _tag: IoTag) -> Start {
        Start::Done(Ok(()))
    }

    fn write_zeroes(
        &mut self,
        _io: &mut IoCx,
        _tag: IoTag,
        offset: u64,
        len: u64,
        _fua: bool,
    ) -> Start {
        if !in_range(offset, len, self.dev.size) {
            return Start::Done(Err(Errno::INVAL));
        }
        self.dev.zero(offset, len);
        Start::Done(Ok(()))
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        self.write_zeroes(io, tag, offset, len, fua)
    }
}
