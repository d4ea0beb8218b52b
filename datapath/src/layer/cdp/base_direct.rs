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
//!   started, so the staging buffer is never freed or reused under the kernel. The ring's
//!   passing refusals (EINTR, EAGAIN, EBUSY, ENOMEM) are tried again. Any other error of the
//!   ring leaves the value *broken*: the writes it had submitted are waited for by reaping
//!   without entering the ring (at most [`BROKEN_WAIT`]; past that the buffer is leaked, never
//!   freed under the kernel), those it had not are never submitted, and every later call
//!   fails, so a caller's next pass starts with a new value.
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
/// How long a broken ring's submitted writes are waited for.
pub const BROKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The ring failed: every call fails (the module's invariants).
    broken: bool,
    /// Tests: staged writes merged into the one before them.
    #[cfg(test)]
    merges: usize,
    /// Tests: the next flush submits its writes, then takes the ring's answer as EBADF.
    #[cfg(test)]
    fail_enter: bool,
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
            broken: false,
            #[cfg(test)]
            merges: 0,
            #[cfg(test)]
            fail_enter: false,
        })
    }

    /// The buffered descriptor (for a sync, or a hole punched, after [`DirectBase::flush`]).
    pub fn file(&self) -> &File {
        &self.plain
    }

    /// Write `data` at `at`: staged (written by a later [`DirectBase::flush`]), or at once
    /// with `pwrite` where it is not aligned to [`ALIGN`].
    pub fn write(&mut self, data: &[u8], at: u64) -> std::io::Result<()> {
        self.usable()?;
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
                    #[cfg(test)]
                    {
                        self.merges += 1;
                    }
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
            let stage = self
                .stage
                .as_mut()
                .expect("kept while the value is not broken");
            stage.slice_mut(used + n)[used..].copy_from_slice(&data[..n]);
            self.used += n;
            data = &data[n..];
            at += n as u64;
        }
        Ok(())
    }

    /// An error once the ring broke.
    fn usable(&self) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other(
                "the base copy's ring failed earlier: written with a new one next pass",
            ));
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
        self.usable()?;
        if self.runs.is_empty() {
            self.used = 0;
            return Ok(());
        }
        let base = self
            .stage
            .as_mut()
            .expect("kept while the value is not broken")
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
            let entered = self.ring.submit_and_wait(1);
            #[cfg(test)]
            let entered = match std::mem::take(&mut self.fail_enter) {
                true => entered.and(Err(std::io::Error::from_raw_os_error(libc::EBADF))),
                false => entered,
            };
            done += self.reap(&mut failed);
            match entered {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOMEM)
                    ) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => {
                    self.break_ring(total, done);
                    return Err(e);
                }
            }
        }
        self.runs.clear();
        self.used = 0;
        failed.map_or(Ok(()), Err)
    }

    /// Reap the completions there are; how many. The first failure (an error, or a short
    /// write) goes to `failed`.
    fn reap(&mut self, failed: &mut Option<std::io::Error>) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            let r = self.runs[cqe.user_data() as usize];
            n += 1;
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
        n
    }

    /// The ring failed with `done` of `total` writes reaped: wait for the others it had
    /// submitted without entering it (their completions still arrive; a sleep runs the
    /// task's pending work), at most [`BROKEN_WAIT`], then leak the buffer if any is still
    /// out. The writes never submitted stay unsubmitted: the value is broken for good.
    fn break_ring(&mut self, total: usize, mut done: usize) {
        self.broken = true;
        let submitted = total - self.ring.submission().len();
        let until = std::time::Instant::now() + BROKEN_WAIT;
        let mut ignored = None;
        while done < submitted && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
            done += self.reap(&mut ignored);
        }
        if done < submitted {
            std::mem::forget(self.stage.take());
        }
        self.runs.clear();
        self.used = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A base copy of `size` bytes in a new directory under /var/tmp, opened for O_DIRECT
    /// writes; None (skipped) where there is no O_DIRECT.
    fn base_of(size: u64) -> Option<(tempfile::TempDir, std::path::PathBuf, DirectBase)> {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = d.path().join("base.img");
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        match DirectBase::open(&path) {
            Ok(b) => Some((d, path, b)),
            Err(e) => {
                eprintln!("skipped: no O_DIRECT here ({e})");
                None
            }
        }
    }

    /// Random writes (aligned, of every size up to twice the staging buffer, overlapping
    /// often, some unaligned) and holes punched between flushes give the file the content of a
    /// model that applies them in order.
    #[test]
    fn writes_reach_the_file_in_order_wherever_they_overlap() {
        const SIZE: u64 = 24 << 20;
        let Some((_d, path, mut b)) = base_of(SIZE) else {
            return;
        };
        let mut model = vec![0u8; SIZE as usize];
        let mut r = crate::layer::testing::Rng(0x9E37_79B9_7F4A_7C15);
        let mut rnd = |n: u64| r.below(n);
        // Where the last aligned write ended, for the next to follow it.
        let mut prev_end = 0u64;
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
            } else if kind < 8 && prev_end + 4 * ALIGN <= SIZE {
                // Right after the previous aligned write: merged with it (when still staged).
                (prev_end, ALIGN * (1 + rnd(4)))
            } else {
                (rnd(SIZE / ALIGN - 64) * ALIGN, ALIGN * (1 + rnd(48)))
            };
            let len = len.min(SIZE - at);
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + round * 13) as u8).collect();
            b.write(&data, at).unwrap();
            if kind != 1 {
                prev_end = at + len;
            }
            model[at as usize..(at + len) as usize].copy_from_slice(&data);
            if round % 50 == 49 {
                // A hole punched: after what is staged (the caller flushes first).
                b.flush().unwrap();
                let at = rnd(SIZE / ALIGN - 8) * ALIGN;
                assert!(super::super::base_map::punch_hole(b.file(), at, 4 * ALIGN));
                model[at as usize..(at + 4 * ALIGN) as usize].fill(0);
            }
        }
        assert!(b.merges >= 50, "{} writes merged", b.merges);
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
        let Some((_d, path, mut b)) = base_of(1 << 20) else {
            return;
        };
        // At an offset that is negative as a file position: EINVAL on every filesystem.
        b.write(&[1u8; 4096], 0).unwrap();
        b.write(&[2u8; 4096], 1u64 << 63).unwrap();
        assert!(b.flush().is_err());
        b.write(&[3u8; 4096], 4096).unwrap();
        b.flush().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got[..4096].iter().all(|&x| x == 1));
        assert!(got[4096..8192].iter().all(|&x| x == 3));
    }

    /// A ring that fails: the writes it had submitted are waited for (reaped without
    /// entering it), the flush fails, and so does every later call.
    #[test]
    fn a_broken_ring_waits_for_its_submitted_writes_and_fails_from_then_on() {
        let Some((_d, path, mut b)) = base_of(1 << 20) else {
            return;
        };
        for i in 0..8u64 {
            b.write(&[i as u8 + 1; 4096], i * 8192).unwrap();
        }
        b.fail_enter = true;
        let e = b.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert!(
            b.stage.is_some(),
            "every submitted write was reaped: nothing leaked"
        );
        assert!(b.write(&[9u8; 4096], 0).is_err());
        assert!(b.flush().is_err());
        // The submitted writes are in the file.
        let got = std::fs::read(&path).unwrap();
        for i in 0..8usize {
            assert!(
                got[i * 8192..i * 8192 + 4096]
                    .iter()
                    .all(|&x| x == i as u8 + 1)
            );
        }
    }
}
