//! The base copy (`base.img`) of a history kept on a disk, written by a consolidation pass
//! with O_DIRECT through a private io_uring, instead of a `pwrite` per record into the page
//! cache. A record's bytes are copied into an aligned staging buffer (records that follow one
//! another in the volume merge into one write of up to [`RUN_MAX`] bytes), and the staged
//! writes go to the disk together, up to [`DEPTH`] at a time. The page cache's cost per 4 KiB
//! record (a page allocated, its buffer heads, the writeback at the pass's sync, the pages
//! dropped after it) was most of the retention thread's time at 4 KiB QD32 on a disk
//! (session 22's profile), on the core the client needs.
//!
//! Invariants:
//! - Writes reach the file in the order they were given wherever they overlap: a write that
//!   overlaps one staged and not yet written waits until the staged ones are written
//!   ([`DirectBase::flush`]); writes that do not overlap may reach it in any order.
//! - Nothing is in flight outside [`DirectBase::flush`], which waits for every write it
//!   started, so the staging buffer is never freed or reused under the kernel. If the ring
//!   fails so that this cannot be known, the buffer is leaked rather than freed.
//! - A write whose offset or length is not a multiple of [`ALIGN`] (a volume with blocks under
//!   4 KiB) is written with `pwrite` through a second, buffered descriptor, after the staged
//!   ones: the kernel keeps the two coherent (a direct write invalidates the cached pages of
//!   its range).
//! - Durable only after the caller's sync of [`DirectBase::file`] (the writes carry no FUA),
//!   which must follow [`DirectBase::flush`].

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use io_uring::{IoUring, opcode, types};

use crate::uring::buf::Bounce;

/// Offsets and lengths written with O_DIRECT are multiples of this (every Linux block device's
/// logical block size divides it).
pub const ALIGN: u64 = 4096;
/// Bytes staged before they are written.
pub const STAGE: usize = 4 << 20;
/// The largest single write (records following one another merge up to it).
pub const RUN_MAX: usize = 1 << 20;
/// Writes in flight together (the ring's size).
pub const DEPTH: usize = 64;

/// A staged write: `len` bytes at `at` in the file, from `off` in the staging buffer.
#[derive(Clone, Copy, Debug)]
struct Run {
    at: u64,
    len: usize,
    off: usize,
}

/// The base copy opened for O_DIRECT writes.
pub struct DirectBase {
    direct: File,
    plain: File,
    ring: IoUring,
    stage: Option<Bounce>,
    used: usize,
    runs: Vec<Run>,
}

impl DirectBase {
    /// Open the base copy at `path` for O_DIRECT writes; an error where its filesystem has no
    /// O_DIRECT or no ring can be made (the caller then writes with `pwrite`).
    pub fn open(path: &Path) -> std::io::Result<DirectBase> {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        if !fits_alignment(&direct) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "O_DIRECT needs more than 4 KiB alignment here",
            ));
        }
        let plain = OpenOptions::new().read(true).write(true).open(path)?;
        let ring = IoUring::new(DEPTH as u32)?;
        Ok(DirectBase {
            direct,
            plain,
            ring,
            stage: Some(Bounce::new(STAGE)),
            used: 0,
            runs: Vec::with_capacity(DEPTH),
        })
    }

    /// The buffered descriptor (for a sync, or a hole punched, after [`DirectBase::flush`]).
    pub fn file(&self) -> &File {
        &self.plain
    }

    /// Write `data` at `at`: staged (written by a later [`DirectBase::flush`]), or at once
    /// with `pwrite` where it is not aligned to [`ALIGN`].
    pub fn write(&mut self, data: &[u8], at: u64) -> std::io::Result<()> {
        if !at.is_multiple_of(ALIGN) || !(data.len() as u64).is_multiple_of(ALIGN) {
            self.flush()?;
            return self.plain.write_all_at(data, at);
        }
        let (mut data, mut at) = (data, at);
        while !data.is_empty() {
            if self.overlaps(at, data.len()) || self.used == STAGE {
                self.flush()?;
            }
            let room = STAGE - self.used;
            let used = self.used;
            let n = match self.runs.last_mut() {
                // Right after the last staged write, in the file and in the buffer.
                Some(r)
                    if r.at + r.len as u64 == at && r.off + r.len == used && r.len < RUN_MAX =>
                {
                    let n = data.len().min(room).min(RUN_MAX - r.len);
                    r.len += n;
                    n
                }
                _ => {
                    if self.runs.len() == DEPTH {
                        self.flush()?;
                        continue;
                    }
                    let n = data.len().min(room).min(RUN_MAX);
                    self.runs.push(Run {
                        at,
                        len: n,
                        off: used,
                    });
                    n
                }
            };
            let stage = self.stage.as_mut().expect("kept while the value lives");
            stage.slice_mut(used + n)[used..].copy_from_slice(&data[..n]);
            self.used += n;
            data = &data[n..];
            at += n as u64;
        }
        Ok(())
    }

    /// Whether `at..at + len` overlaps a staged write.
    fn overlaps(&self, at: u64, len: usize) -> bool {
        let end = at + len as u64;
        self.runs
            .iter()
            .any(|r| at < r.at + r.len as u64 && r.at < end)
    }

    /// Write everything staged and wait for it: an error if a write failed or was short
    /// (after every write started has completed).
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.runs.is_empty() {
            self.used = 0;
            return Ok(());
        }
        let base = self
            .stage
            .as_mut()
            .expect("kept while the value lives")
            .ptr();
        for (i, r) in self.runs.iter().enumerate() {
            let sqe = opcode::Write::new(
                types::Fd(self.direct.as_raw_fd()),
                // SAFETY: `off + len` is within the staging buffer (`write` keeps it so).
                unsafe { base.add(r.off) },
                r.len as u32,
            )
            .offset(r.at)
            .build()
            .user_data(i as u64);
            // SAFETY: the buffer stays valid and untouched until every completion is reaped
            // below (or is leaked when that cannot be known).
            unsafe { self.ring.submission().push(&sqe) }
                .expect("the ring has room for DEPTH writes");
        }
        let total = self.runs.len();
        let mut done = 0;
        let mut failed: Option<std::io::Error> = None;
        while done < total {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    // Which writes are in flight is unknown: the buffer must outlive them.
                    std::mem::forget(self.stage.take());
                    self.runs.clear();
                    return Err(e);
                }
            }
            for cqe in self.ring.completion() {
                let r = self.runs[cqe.user_data() as usize];
                done += 1;
                let res = cqe.result();
                if res < 0 {
                    failed.get_or_insert(std::io::Error::from_raw_os_error(-res));
                } else if res as usize != r.len {
                    failed.get_or_insert(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write at {}: {res} of {} bytes", r.at, r.len),
                    ));
                }
            }
        }
        self.runs.clear();
        self.used = 0;
        failed.map_or(Ok(()), Err)
    }
}

/// Whether O_DIRECT writes of `f` at [`ALIGN`]-aligned offsets and lengths, from
/// [`ALIGN`]-aligned memory, are allowed: what `statx` says (Linux 6.1 and later; 0 means no
/// O_DIRECT on this file), or true where the kernel does not say (every Linux block device's
/// logical block size divides 4 KiB).
fn fits_alignment(f: &File) -> bool {
    // SAFETY: a plain C struct, all zeroes valid.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on an open descriptor with an empty path (AT_EMPTY_PATH) into the struct
    // it fills.
    let rc = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    if rc != 0 || st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return true;
    }
    let (mem, off) = (st.stx_dio_mem_align as u64, st.stx_dio_offset_align as u64);
    mem != 0 && off != 0 && ALIGN.is_multiple_of(off) && ALIGN.is_multiple_of(mem)
}

impl Drop for DirectBase {
    fn drop(&mut self) {
        // Staged writes not flushed are dropped (a pass that failed): nothing is in flight.
        debug_assert!(self.ring.submission().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random writes (aligned, of every size up to twice the staging buffer, overlapping
    /// often, some unaligned) and holes punched between flushes give the file the content of a
    /// model that applies them in order.
    #[test]
    fn writes_reach_the_file_in_order_wherever_they_overlap() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = d.path().join("base.img");
        const SIZE: u64 = 24 << 20;
        std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
        let mut b = match DirectBase::open(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: no O_DIRECT here ({e})");
                return;
            }
        };
        let mut model = vec![0u8; SIZE as usize];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut merged_or_split = 0;
        for round in 0..400u64 {
            let kind = rnd(20);
            let (at, len) = if kind == 0 {
                // Larger than the staging buffer: split across flushes.
                (
                    rnd(SIZE / ALIGN - 2400) * ALIGN,
                    (STAGE + 2 * RUN_MAX) as u64 + ALIGN,
                )
            } else if kind == 1 {
                // Unaligned: through the buffered descriptor.
                (rnd(SIZE - 10_000), 512 + rnd(8000))
            } else if kind < 8 {
                // Right after the previous aligned write: merged.
                merged_or_split += 1;
                (
                    round % 64 * 16 * ALIGN + ALIGN * (round % 7),
                    ALIGN * (1 + rnd(4)),
                )
            } else {
                (rnd(SIZE / ALIGN - 64) * ALIGN, ALIGN * (1 + rnd(48)))
            };
            let len = len.min(SIZE - at);
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + round * 13) as u8).collect();
            b.write(&data, at).unwrap();
            model[at as usize..(at + len) as usize].copy_from_slice(&data);
            if round % 50 == 49 {
                // A hole punched: after what is staged (the caller flushes first).
                b.flush().unwrap();
                let at = rnd(SIZE / ALIGN - 8) * ALIGN;
                assert!(super::super::base_map::punch_hole(b.file(), at, 4 * ALIGN));
                model[at as usize..(at + 4 * ALIGN) as usize].fill(0);
            }
        }
        assert!(merged_or_split > 0);
        b.flush().unwrap();
        b.file().sync_all().unwrap();
        let got = std::fs::read(&path).unwrap();
        let first = got.iter().zip(&model).position(|(a, b)| a != b);
        assert!(first.is_none(), "first difference at byte {first:?}");
    }

    /// A failed write is returned by the flush, after every write of the batch completed, and
    /// the value stays usable.
    #[test]
    fn a_failed_write_is_returned_by_the_flush() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = d.path().join("base.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut b = match DirectBase::open(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: no O_DIRECT here ({e})");
                return;
            }
        };
        // Past the largest file size ext4 and XFS take: EFBIG or EINVAL.
        b.write(&[1u8; 4096], 0).unwrap();
        b.write(&[2u8; 4096], (1u64 << 62) - 4096).unwrap();
        assert!(b.flush().is_err());
        b.write(&[3u8; 4096], 4096).unwrap();
        b.flush().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got[..4096].iter().all(|&x| x == 1));
        assert!(got[4096..8192].iter().all(|&x| x == 3));
    }
}
