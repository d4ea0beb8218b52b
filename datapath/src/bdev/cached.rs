//! `volatile_cache`: a file behind a simulated volatile write cache, for power-loss tests.
//!
//! Model: a disk whose write cache loses what was not flushed when the power goes. The
//! volume's data lives in RAM ([`MallocDevice`]), loaded from the file at the start; every
//! update completes once it is in RAM and marks its blocks dirty; a flush (or a FUA write)
//! writes every dirty block back to the file and `fdatasync`s it; dropping the device (the
//! daemon's clean exit: the disk keeps its power) writes them back too. A process killed
//! with SIGKILL is therefore a power loss of its disks: the file holds exactly what was
//! flushed, plus whatever a write-back of a later flush or FUA write had already carried.
//!
//! It exists for the tests ("every process can restart with or without its state"): a
//! replica must never count on a write that its device has not made durable. Its flushes
//! and FUA writes are synchronous on the reactor (a whole write-back of the dirty blocks):
//! never a production backend.
//!
//! Invariants:
//! - A block is marked dirty only after its new content is in RAM, and a write-back clears
//!   a block's mark before it copies the block out: an update that completes before a flush
//!   starts is in the file when the flush completes; one that lands during the write-back
//!   stays marked for the next.
//! - A write-back that fails marks its blocks dirty again and fails the flush (EIO).

use super::malloc::MallocDevice;
use super::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start};
use crate::uring::{Errno, IoCx, IoTag};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A file behind a volatile write cache (see the module doc).
pub struct CachedDevice {
    mem: Arc<MallocDevice>,
    file: File,
    path: String,
    block: u64,
    /// One bit per block: written in RAM, not yet in the file.
    dirty: Box<[AtomicU64]>,
}

impl CachedDevice {
    /// Open (and with `create`, create or extend) `path` as a device of `size` bytes, its
    /// content read into RAM.
    pub fn open(
        path: &str,
        size: u64,
        block_size: u32,
        create: bool,
    ) -> Result<Arc<Self>, BdevError> {
        super::malloc::check_fits_memory(size)?;
        let file = super::file::open_sized(path, size, block_size, create, 0)?;
        let mem = MallocDevice::new(size, block_size)?;
        let err = |source| BdevError::Open {
            path: path.to_string(),
            source,
        };
        let mut buf = vec![0u8; (1 << 20).min(size) as usize];
        let mut at = 0;
        while at < size {
            let n = buf.len().min((size - at) as usize);
            file.read_exact_at(&mut buf[..n], at).map_err(err)?;
            mem.copy_in(at, &buf[..n]);
            at += n as u64;
        }
        let blocks = size / block_size as u64;
        Ok(Arc::new(Self {
            mem,
            file,
            path: path.to_string(),
            block: block_size as u64,
            dirty: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }))
    }

    /// Mark the blocks of `[offset, offset + len)` dirty (their new content is in RAM).
    fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (offset / self.block, (offset + len - 1) / self.block);
        for b in first..=last {
            self.dirty[(b / 64) as usize].fetch_or(1 << (b % 64), Ordering::AcqRel);
        }
    }

    /// Write every dirty block back to the file and make it durable.
    fn write_back(&self) -> Result<(), Errno> {
        let mut buf = Vec::new();
        let mut failed = false;
        for (i, word) in self.dirty.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                // One run of consecutive dirty blocks within this word.
                let lo = bits.trailing_zeros() as u64;
                let run = (bits >> lo).trailing_ones() as u64;
                let mask = if run == 64 {
                    u64::MAX
                } else {
                    ((1u64 << run) - 1) << lo
                };
                bits &= !mask;
                let offset = (i as u64 * 64 + lo) * self.block;
                buf.resize((run * self.block) as usize, 0);
                let ok = self.mem.copy_out(offset, &mut buf)
                    && self.file.write_all_at(&buf, offset).is_ok();
                if !ok {
                    word.fetch_or(mask, Ordering::AcqRel);
                    failed = true;
                }
            }
        }
        if failed || self.file.sync_data().is_err() {
            tracing::error!(path = %self.path, "volatile_cache: the write-back failed");
            return Err(Errno::IO);
        }
        Ok(())
    }
}

impl Drop for CachedDevice {
    fn drop(&mut self) {
        // A clean exit: the disk keeps its power, its cache reaches the medium.
        let _ = self.write_back();
    }
}

impl BlockDevice for Arc<CachedDevice> {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: "volatile-cache".into(),
            ..self.mem.info()
        }
    }

    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        Ok(Box::new(CachedChannel {
            dev: Arc::clone(self),
            mem: self.mem.open_channel(io)?,
        }))
    }
}

struct CachedChannel {
    dev: Arc<CachedDevice>,
    mem: Box<dyn Channel>,
}

impl CachedChannel {
    /// After an update of `[offset, offset + len)` that started as `r`: mark it, and with
    /// `fua` make it durable.
    fn updated(&self, r: Start, offset: u64, len: u64, fua: bool) -> Start {
        match r {
            Start::Done(Ok(())) => {
                self.dev.mark(offset, len);
                if fua {
                    return Start::Done(self.dev.write_back());
                }
                Start::Done(Ok(()))
            }
            other => other,
        }
    }
}

impl Channel for CachedChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        self.mem.read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        let r = self.mem.write(io, tag, offset, data, false);
        self.updated(r, offset, data.len() as u64, fua)
    }

    fn flush(&mut self, _io: &mut IoCx, _tag: IoTag) -> Start {
        Start::Done(self.dev.write_back())
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        let r = self.mem.write_zeroes(io, tag, offset, len, false);
        self.updated(r, offset, len, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        let r = self.mem.unmap(io, tag, offset, len, false);
        self.updated(r, offset, len, fua)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> crate::uring::IoCx {
        crate::uring::IoCx::new(8, 2, 4096, 4).expect("ring")
    }

    #[test]
    fn only_flushed_writes_survive_a_power_loss_and_a_clean_drop_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let p = path.to_str().unwrap();
        let mut io = io();
        let tag = IoTag::channel(0, 0);
        let dev = CachedDevice::open(p, 1 << 20, 4096, true).unwrap();
        let mut ch = dev.open_channel(&mut io).unwrap();
        // Flushed, then overwritten in part.
        assert_eq!(
            ch.write(&mut io, tag, 4096, &[1; 8192], false),
            Start::Done(Ok(()))
        );
        assert_eq!(ch.flush(&mut io, tag), Start::Done(Ok(())));
        assert_eq!(
            ch.write(&mut io, tag, 8192, &[2; 4096], false),
            Start::Done(Ok(()))
        );
        assert_eq!(
            ch.write_zeroes(&mut io, tag, 4096, 4096, false),
            Start::Done(Ok(()))
        );
        // The last 4 KiB block, and one past 64 blocks (a second bitmap word), with FUA.
        assert_eq!(
            ch.write(&mut io, tag, (1 << 20) - 4096, &[3; 4096], true),
            Start::Done(Ok(()))
        );
        match ch.read(&mut io, tag, 4096, 8192) {
            ReadStart::Ready(d) => {
                assert!(d[..4096].iter().all(|&b| b == 0) && d[4096..].iter().all(|&b| b == 2))
            }
            other => panic!("{other:?}"),
        }
        // The power goes: what the file holds is what a new device reads.
        let file = std::fs::read(&path).unwrap();
        std::mem::forget(ch);
        std::mem::forget(dev);
        // The FUA write carried every dirty block with it (a write-back writes them all).
        assert!(file[(1 << 20) - 4096..].iter().all(|&b| b == 3));
        assert!(
            file[4096..8192].iter().all(|&b| b == 0) && file[8192..12288].iter().all(|&b| b == 2)
        );

        // A power loss right after an unflushed write.
        let dev = CachedDevice::open(p, 1 << 20, 4096, false).unwrap();
        let mut ch = dev.open_channel(&mut io).unwrap();
        assert_eq!(
            ch.write(&mut io, tag, 0, &[9; 4096], false),
            Start::Done(Ok(()))
        );
        std::mem::forget(ch);
        std::mem::forget(dev);
        assert!(
            std::fs::read(&path).unwrap()[..4096]
                .iter()
                .all(|&b| b == 0),
            "lost"
        );

        // A clean drop writes everything back.
        let dev = CachedDevice::open(p, 1 << 20, 4096, false).unwrap();
        let mut ch = dev.open_channel(&mut io).unwrap();
        assert_eq!(
            ch.write(&mut io, tag, 0, &[7; 4096], false),
            Start::Done(Ok(()))
        );
        drop(ch);
        drop(dev);
        assert!(
            std::fs::read(&path).unwrap()[..4096]
                .iter()
                .all(|&b| b == 7)
        );
        // A file shorter than the device, not to be created: refused.
        assert!(CachedDevice::open(p, 2 << 20, 4096, false).is_err());
    }
}
