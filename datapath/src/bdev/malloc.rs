//! `malloc`: a RAM block device.
//!
//! Model: one anonymous, lazily committed mapping shared by every reactor; every operation
//! finishes synchronously (a copy), so this device never queues an SQE.
//!
//! A RAM volume is refused when it is larger than the memory the process can ever have
//! ([`memory_limit`]: MemTotal + SwapTotal, lowered to a cgroup v2 limit): such a volume would
//! only fail once written, by the OOM killer ending the daemon. Smaller ones stay sparse (the
//! check is per volume; RAM volumes that together exceed memory are the operator's call).
//!
//! Invariants:
//! - Every access is range-checked before the copy; nothing outside the mapping is touched.
//! - Concurrent writes to overlapping ranges from different reactors leave some interleaving of
//!   their bytes, as on any disk; ordering of overlapping in-flight writes is the initiator's
//!   (or the mirror's) business. The bytes are plain memory with no Rust references held across
//!   operations: each copy is a raw copy within one call (`copy_nonoverlapping`, or
//!   [`super::stream::copy`] for a write of a page or more into a device at least four times
//!   the largest CPU cache: whole lines stored without reading them first).

use super::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start, in_range};
use crate::uring::{Errno, IoCx, IoTag};
use std::sync::Arc;

/// `b` bytes in the largest binary unit that keeps one digit before the point ("64.0 TiB").
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The value of `key` (e.g. "MemTotal:") in the text of /proc/meminfo, in bytes.
fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(key))?;
    let mut w = rest.split_whitespace();
    let n: u64 = w.next()?.parse().ok()?;
    if w.next() != Some("kB") {
        return None;
    }
    n.checked_mul(1024)
}

/// `MemTotal + SwapTotal` in bytes from the text of /proc/meminfo; None when either is
/// missing or unreadable.
pub fn meminfo_total(text: &str) -> Option<u64> {
    meminfo_bytes(text, "MemTotal:")?.checked_add(meminfo_bytes(text, "SwapTotal:")?)
}

/// The cgroup v2 limit of this process (memory.max + memory.swap.max of its cgroup, a
/// missing or unlimited swap.max counted as no swap limit: `swap` bytes); None without one.
fn cgroup_limit(swap: u64) -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mem = read("memory.max")?;
    Some(mem.saturating_add(read("memory.swap.max").unwrap_or(swap).min(swap)))
}

/// The most memory this process can ever have, in bytes, and where that number comes from;
/// None when /proc/meminfo cannot be read (no check is made then).
pub fn memory_limit() -> Option<(u64, &'static str)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo_total(&text)?;
    let swap = meminfo_bytes(&text, "SwapTotal:")?;
    match cgroup_limit(swap) {
        Some(c) if c < total => Some((c, "its cgroup's memory.max + memory.swap.max")),
        _ => Some((total, "MemTotal + SwapTotal in /proc/meminfo")),
    }
}

/// Refuse a RAM volume of `size` bytes larger than [`memory_limit`].
pub fn check_fits_memory(size: u64) -> Result<(), BdevError> {
    match memory_limit() {
        Some((memory, from)) if size > memory => {
            Err(BdevError::LargerThanMemory { size, memory, from })
        }
        _ => Ok(()),
    }
}

/// A RAM device of `size` bytes.
pub struct MallocDevice {
    base: *mut u8,
    size: u64,
    block_size: u32,
    /// Large enough that writes of whole blocks stream past the caches ([`super::stream`]).
    stream: bool,
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
            stream: super::stream::worth_streaming(size),
        }))
    }

    /// Copy `buf.len()` bytes at `offset` out of the device (false: out of range).
    pub(crate) fn copy_out(&self, offset: u64, buf: &mut [u8]) -> bool {
        if !in_range(offset, buf.len() as u64, self.size) {
            return false;
        }
        // SAFETY: the source is inside the mapping (checked); `buf` is the caller's, which
        // cannot overlap the private mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    }

    /// Copy `data` into the device at `offset` (false: out of range).
    pub(crate) fn copy_in(&self, offset: u64, data: &[u8]) -> bool {
        if !in_range(offset, data.len() as u64, self.size) {
            return false;
        }
        // SAFETY: the destination is inside the mapping (checked); `data` cannot overlap it.
        unsafe { self.put(offset, data) };
        true
    }

    /// Copy `data` to `offset`, streamed past the caches when the device is large and the
    /// copy a whole page or more.
    ///
    /// # Safety
    /// `[offset, offset + data.len())` is inside the mapping.
    unsafe fn put(&self, offset: u64, data: &[u8]) {
        // SAFETY: the caller's contract; `data` is the caller's, which cannot overlap the
        // private mapping.
        unsafe {
            super::stream::put(
                self.base.add(offset as usize),
                data.as_ptr(),
                data.len(),
                self.stream,
            )
        }
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
        // SAFETY: destination in range (checked).
        unsafe { self.dev.put(offset, data) };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A device at least four times the largest cache streams its whole-page writes; what is
    /// read back is what was written, at edges not on a line and with a partial last line,
    /// and the bytes around are untouched.
    #[test]
    fn a_large_device_streams_its_writes_and_reads_them_back() {
        let size = (super::super::stream::REGION_PER_CACHE * super::super::stream::largest_cache())
            .next_multiple_of(4096);
        let dev = MallocDevice::new(size, 512).unwrap();
        assert!(dev.stream, "{size} bytes stream");
        let small = MallocDevice::new(1 << 20, 512).unwrap();
        assert!(!small.stream, "1 MiB does not");
        let data: Vec<u8> = (0..12_345u32).map(|i| (i * 7 + 1) as u8).collect();
        for (off, len) in [
            (0u64, 4096usize),
            (size / 2 + 512, 8192 + 100),
            (size - 12_345, 12_345),
        ] {
            assert!(dev.copy_in(off, &data[..len]));
            let mut back = vec![0u8; len + 2];
            let from = off.saturating_sub(1);
            let n = (len + 2).min((size - from) as usize);
            assert!(dev.copy_out(from, &mut back[..n]));
            let at = (off - from) as usize;
            assert_eq!(back[at..at + len], data[..len], "at {off} len {len}");
            if at == 1 {
                assert_eq!(back[0], 0, "the byte before {off}");
            }
            if at + len < n {
                assert_eq!(back[at + len], 0, "the byte after {off} + {len}");
            }
        }
        assert!(!dev.copy_in(size - 4095, &data[..4096]), "past the end");
    }

    #[test]
    fn memory_is_memtotal_plus_swaptotal_and_unreadable_meminfo_is_none() {
        let text = "MemTotal:       24683792 kB\nMemFree:         1000 kB\nSwapCached:      0 kB\nSwapTotal:       2097152 kB\n";
        assert_eq!(meminfo_total(text), Some((24683792 + 2097152) * 1024));
        assert_eq!(meminfo_total("MemTotal: 1 kB\n"), None, "no SwapTotal");
        assert_eq!(meminfo_total("MemTotal: x kB\nSwapTotal: 0 kB\n"), None);
        assert_eq!(meminfo_total("MemTotal: 1 MB\nSwapTotal: 0 kB\n"), None);
        assert_eq!(
            meminfo_total("MemTotal: 18446744073709551615 kB\nSwapTotal: 0 kB\n"),
            None,
            "overflow"
        );
    }

    #[test]
    fn a_ram_volume_past_memory_is_refused_with_both_sizes_and_one_within_it_passes() {
        let (memory, _) = memory_limit().expect("/proc/meminfo");
        let size = (memory + 1).next_multiple_of(4096);
        let e = check_fits_memory(size).unwrap_err().to_string();
        assert!(
            e.contains(&size.to_string()) && e.contains(&memory.to_string()),
            "{e}"
        );
        assert!(e.contains("backend uring"), "{e}");
        check_fits_memory(memory / 4096 * 4096).unwrap();
        assert_eq!(human_bytes(64 << 40), "64.0 TiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(512), "512 B");
    }
}
