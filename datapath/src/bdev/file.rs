//! `uring`: a file or block device driven through each reactor's io_uring with O_DIRECT.
//!
//! Model: the device holds one O_DIRECT file descriptor; each reactor's channel registers it in
//! that reactor's fixed-file table and issues READ_FIXED/WRITE_FIXED from the reactor's
//! registered buffer pool. FUA is a write with RWF_DSYNC; flush is fdatasync through the ring;
//! write-zeroes is fallocate(ZERO_RANGE) and unmap fallocate(PUNCH_HOLE), each followed by an
//! fdatasync when FUA is asked.
//!
//! Invariants:
//! - Writes must be aligned to `block_size` (O_DIRECT); a misaligned write fails with EINVAL
//!   and touches nothing (no read-modify-write that could race a neighbour). Reads of any
//!   alignment are served by reading the aligned superset.
//! - The payload of a write is copied into a pool buffer before its SQE is queued, so the
//!   caller's receive buffer is free as soon as `write` returns.

use super::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start, in_range};
use crate::uring::{BdevOp, Errno, IoCx, IoTag, OpBuf, OpKind};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::Arc;

/// A file or block device opened with O_DIRECT.
pub struct FileDevice {
    file: File,
    path: String,
    size: u64,
    block_size: u32,
}

impl FileDevice {
    /// Open (and with `create`, create or extend) `path` as a device of `size` bytes.
    pub fn open(
        path: &str,
        size: u64,
        block_size: u32,
        create: bool,
    ) -> Result<Arc<Self>, BdevError> {
        let file = open_sized(path, size, block_size, create, libc::O_DIRECT)?;
        Ok(Arc::new(Self {
            file,
            path: path.to_string(),
            size,
            block_size,
        }))
    }

    /// The backing path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Open (and with `create`, create or extend) `path` with open flags `flags` as the backing of
/// a device of `size` bytes in blocks of `block_size`: refused when the sizes do not fit or the
/// file or block device is smaller.
pub(super) fn open_sized(
    path: &str,
    size: u64,
    block_size: u32,
    create: bool,
    flags: i32,
) -> Result<File, BdevError> {
    if size == 0 || block_size == 0 || !size.is_multiple_of(block_size as u64) {
        return Err(BdevError::BadSize {
            size,
            block: block_size,
        });
    }
    let err = |source| BdevError::Open {
        path: path.to_string(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .custom_flags(flags)
        .open(path)
        .map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    let have = if meta.file_type().is_block_device() {
        block_device_size(&file).map_err(err)?
    } else {
        if create && meta.len() < size {
            file.set_len(size).map_err(err)?;
        }
        file.metadata().map_err(err)?.len()
    };
    if have < size {
        return Err(BdevError::TooSmall {
            path: path.to_string(),
            have,
            want: size,
        });
    }
    Ok(file)
}

fn block_device_size(f: &File) -> std::io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(size)
    }
}

impl BlockDevice for Arc<FileDevice> {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size: self.size,
            block_size: self.block_size,
            min_io: self.block_size,
            kind: "uring".into(),
            read_only: false,
        }
    }

    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        let slot = io
            .register_file(self.file.as_raw_fd())
            .map_err(BdevError::Register)?;
        Ok(Box::new(FileChannel {
            dev: Arc::clone(self),
            slot,
        }))
    }
}

struct FileChannel {
    dev: Arc<FileDevice>,
    slot: u32,
}

impl FileChannel {
    fn aligned(&self, offset: u64, len: u64) -> bool {
        let b = self.dev.block_size as u64;
        offset.is_multiple_of(b) && len.is_multiple_of(b)
    }

    fn op(&self, tag: IoTag, offset: u64, len: u32, kind: OpKind, buf: OpBuf) -> BdevOp {
        BdevOp {
            tag,
            file: self.slot,
            offset,
            len,
            done: 0,
            kind,
            buf,
        }
    }

    fn fallocate(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        mode: i32,
        fua: bool,
    ) -> Start {
        if !in_range(offset, len, self.dev.size) {
            return Start::Done(Err(Errno::INVAL));
        }
        if len == 0 {
            return Start::Done(Ok(()));
        }
        // Of any length (an unmap of 4 GiB and more was refused with EINVAL here).
        io.start_bdev(self.op(
            tag,
            offset,
            0,
            OpKind::Fallocate { mode, fua, len },
            OpBuf::None,
        ));
        Start::Pending
    }
}

impl Channel for FileChannel {
    fn idle(&self, io: &IoCx) -> bool {
        !io.ops.iter().any(|(_, op)| op.file == self.slot)
    }

    fn updates_in_flight(&self, io: &IoCx) -> bool {
        io.ops.iter().any(|(_, op)| {
            op.file == self.slot
                && !matches!(op.kind, OpKind::Read { .. })
                && match op.tag.owner() {
                    crate::uring::Owner::Conn(_) => true,
                    // A layer's own: one above counts (the mirror's replica writes), one
                    // under another layer does not (CDP's own, under the mirror or alone).
                    crate::uring::Owner::Channel(_) => op.tag.slot & super::LOWER_SLOT == 0,
                }
        })
    }

    fn close(&mut self, io: &mut IoCx) {
        if let Err(e) = io.unregister_file(self.slot) {
            tracing::warn!(path = %self.dev.path, error = %e, "cannot unregister a closed volume's file");
        }
    }

    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        if !in_range(offset, len as u64, self.dev.size) {
            return ReadStart::Failed(Errno::INVAL);
        }
        if len == 0 {
            return ReadStart::Ready(&[]);
        }
        let b = self.dev.block_size as u64;
        let start = offset / b * b;
        let end = (offset + len as u64).next_multiple_of(b).min(self.dev.size);
        let span = (end - start) as u32;
        let buf = io.take_buf(span as usize);
        let skip = (offset - start) as u32;
        io.start_bdev(self.op(tag, start, span, OpKind::Read { skip, want: len }, buf));
        ReadStart::Pending
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        let len = data.len() as u64;
        if !in_range(offset, len, self.dev.size) || !self.aligned(offset, len) {
            return Start::Done(Err(Errno::INVAL));
        }
        if len == 0 {
            return Start::Done(Ok(()));
        }
        let mut buf = io.take_buf(data.len());
        io.buf_mut(&mut buf, data.len()).copy_from_slice(data);
        io.start_bdev(self.op(tag, offset, data.len() as u32, OpKind::Write { fua }, buf));
        Start::Pending
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        io.start_bdev(self.op(tag, 0, 0, OpKind::Flush, OpBuf::None));
        Start::Pending
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        self.fallocate(
            io,
            tag,
            offset,
            len,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            fua,
        )
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        self.fallocate(
            io,
            tag,
            offset,
            len,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            fua,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::FileDevice;
    use crate::bdev::{BlockDevice, LOWER_SLOT, Start};
    use crate::uring::{IoCx, IoTag};

    /// A layer inserted above a file at run time waits for the updates in flight that came
    /// from above: a connection's and a layer's over it (the mirror's replica writes), not
    /// the own operations of a layer under another one (`LOWER_SLOT`: CDP's, which belong
    /// to the new stack). Reads never count. (The operations are queued, never submitted.)
    #[test]
    fn updates_in_flight_count_what_came_from_above() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f.img");
        let dev = FileDevice::open(path.to_str().unwrap(), 1 << 20, 4096, true).unwrap();
        let mut io = IoCx::new(16, 8, 4096, 4).expect("ring");
        let mut c = dev.open_channel(&mut io).unwrap();
        let data = vec![5u8; 4096];
        assert!(!c.updates_in_flight(&io));
        let _ = c.read(&mut io, IoTag::conn(1, 0), 0, 4096);
        assert!(!c.updates_in_flight(&io), "a read");
        let w = c.write(&mut io, IoTag::channel(0, LOWER_SLOT | 3), 0, &data, false);
        assert_eq!(w, Start::Pending);
        assert!(
            !c.updates_in_flight(&io),
            "a layer's own under another layer"
        );
        let w = c.write(&mut io, IoTag::channel(0, 3), 4096, &data, false);
        assert_eq!(w, Start::Pending);
        assert!(
            c.updates_in_flight(&io),
            "the top layer's own (the mirror's)"
        );
        let mut io2 = IoCx::new(16, 8, 4096, 4).expect("ring");
        let mut c2 = dev.open_channel(&mut io2).unwrap();
        let w = c2.flush(&mut io2, IoTag::conn(1, 0));
        assert_eq!(w, Start::Pending);
        assert!(c2.updates_in_flight(&io2), "a connection's");
    }
}
