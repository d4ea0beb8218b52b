//! The in-flight table of block-device operations on files and block devices.
//!
//! Model: a [`BdevOp`] is created when a channel starts an operation, owns its buffer until the
//! final completion, and is resubmitted (for the remainder) when the kernel reports a short
//! transfer. [`IoCx::finish_bdev`] turns the final CQE into a [`Finished`] for the front end.
//!
//! Invariants:
//! - An op's buffer is returned to the pool (or its bounce freed) only in `release`, after the
//!   final CQE, never while the kernel may still read or write it.
//! - `done <= len` at all times; a zero-byte transfer before `len` is an error (EIO), so an op
//!   cannot loop forever.

use super::{Errno, IoCx, IoTag, Kind, UserData};
use crate::uring::buf::{Bounce, BufId};
use io_uring::{opcode, types};

/// Which buffer an op reads into or writes from.
pub enum OpBuf {
    /// No data (flush, fallocate).
    None,
    /// A registered pool buffer (READ_FIXED / WRITE_FIXED).
    Pool(BufId),
    /// A one-off aligned allocation (plain READ / WRITE).
    Bounce(Bounce),
}

/// What the op does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read `len` bytes at `offset`; the front end wants bytes `[skip, skip + want)` of them.
    Read {
        /// Leading bytes read only for alignment.
        skip: u32,
        /// Bytes the front end asked for.
        want: u32,
    },
    /// Write `len` bytes at `offset`; `fua` asks for RWF_DSYNC.
    Write {
        /// Force unit access.
        fua: bool,
    },
    /// fdatasync.
    Flush,
    /// fallocate(mode) over `[offset, offset + len)`, then fdatasync when `fua`. The length
    /// is here, not in [`BdevOp::len`] (a transfer's `u32`): a write-zeroes or unmap may span
    /// 4 GiB and more (an iSCSI UNMAP descriptor or an NVMe DSM range: up to 2^32 blocks).
    Fallocate {
        /// FALLOC_FL_* flags.
        mode: i32,
        /// Follow with an fdatasync before completing.
        fua: bool,
        /// Bytes.
        len: u64,
    },
}

/// One in-flight block-device operation.
pub struct BdevOp {
    /// Whose completion this is.
    pub tag: IoTag,
    /// Fixed-file slot.
    pub file: u32,
    /// Byte offset on the device.
    pub offset: u64,
    /// Bytes to transfer (aligned); for a flush, the bytes from `offset` to sync (0 with
    /// `offset` 0: the whole file).
    pub len: u32,
    /// Bytes already transferred.
    pub done: u32,
    /// The operation.
    pub kind: OpKind,
    /// Its buffer.
    pub buf: OpBuf,
}

/// The outcome of a block-device operation, for the front end.
pub struct Finished {
    /// Whose completion this is.
    pub tag: IoTag,
    /// Success or an errno.
    pub result: Result<(), Errno>,
    /// For reads: where the data is (`buf`, `skip`, `want`) until [`IoCx::release`].
    pub read: Option<(u32, u32)>,
    /// The op key, to release after the data is consumed.
    pub key: usize,
}

impl IoCx {
    /// Put `op` in the in-flight table and queue its SQE.
    pub fn start_bdev(&mut self, op: BdevOp) {
        let key = self.ops.insert(op);
        self.queue_bdev(key);
    }

    fn queue_bdev(&mut self, key: usize) {
        let op = &self.ops[key];
        let ud = UserData::new(Kind::Bdev, key as u32).0;
        let file = types::Fixed(op.file);
        let off = op.offset + op.done as u64;
        let rest = op.len - op.done;
        let ptr = match &op.buf {
            OpBuf::None => std::ptr::null_mut(),
            // SAFETY: done < len <= buffer size, so the pointer stays inside the buffer.
            OpBuf::Pool(id) => unsafe { self.pool.ptr(id).add(op.done as usize) },
            // SAFETY: as above for the bounce allocation.
            OpBuf::Bounce(b) => unsafe { b.ptr().add(op.done as usize) },
        };
        let sqe = match (op.kind, &op.buf) {
            (OpKind::Read { .. }, OpBuf::Pool(id)) => opcode::ReadFixed::new(file, ptr, rest, id.0)
                .offset(off)
                .build(),
            (OpKind::Read { .. }, _) => opcode::Read::new(file, ptr, rest).offset(off).build(),
            (OpKind::Write { fua }, OpBuf::Pool(id)) => {
                opcode::WriteFixed::new(file, ptr, rest, id.0)
                    .offset(off)
                    .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            (OpKind::Write { fua }, _) => opcode::Write::new(file, ptr, rest)
                .offset(off)
                .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                .build(),
            // `offset..offset + len` only; both 0: the whole file.
            (OpKind::Flush, _) => opcode::Fsync::new(file)
                .offset(op.offset)
                .len(op.len)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            (OpKind::Fallocate { mode, len, .. }, _) => opcode::Fallocate::new(file, len)
                .offset(op.offset)
                .mode(mode)
                .build(),
        }
        .user_data(ud);
        // SAFETY: the op's buffer is owned by the in-flight table until `release`, which only
        // runs after the final completion of this key.
        unsafe { self.push(&sqe) };
    }

    /// Handle the CQE of op `key`; `None` when the op was resubmitted for a short transfer.
    pub fn finish_bdev(&mut self, key: usize, res: i32) -> Option<Finished> {
        let op = self.ops.get_mut(key)?;
        let result = match op.kind {
            OpKind::Read { .. } | OpKind::Write { .. } if res > 0 => {
                op.done += res as u32;
                if op.done < op.len {
                    self.queue_bdev(key);
                    return None;
                }
                Ok(())
            }
            OpKind::Read { .. } | OpKind::Write { .. } if res == 0 => Err(Errno::IO),
            OpKind::Fallocate { fua: true, .. } if res >= 0 => {
                // The range is zeroed; make it durable before completing (FUA): the whole
                // file (the extent tree changed).
                op.kind = OpKind::Flush;
                op.offset = 0;
                op.len = 0;
                self.queue_bdev(key);
                return None;
            }
            _ if res < 0 => Err(Errno(-res)),
            _ => Ok(()),
        };
        let read = match (op.kind, result) {
            (OpKind::Read { skip, want }, Ok(())) => Some((skip, want)),
            _ => None,
        };
        Some(Finished {
            tag: op.tag,
            result,
            read,
            key,
        })
    }

    /// The device span (offset, length) of finished op `key` when it is a read (error
    /// reports: a failed read's [`Finished`] carries no data position).
    pub fn read_span(&self, key: usize) -> Option<(u64, u64)> {
        self.ops
            .get(key)
            .filter(|op| matches!(op.kind, OpKind::Read { .. }))
            .map(|op| (op.offset, u64::from(op.len)))
    }

    /// The bytes a finished read produced.
    pub fn read_data(&self, key: usize, skip: u32, want: u32) -> &[u8] {
        let op = &self.ops[key];
        let end = (skip + want) as usize;
        match &op.buf {
            OpBuf::Pool(id) => &self.pool.slice(id, end)[skip as usize..],
            OpBuf::Bounce(b) => &b.slice(end)[skip as usize..],
            OpBuf::None => &[],
        }
    }

    /// Take finished op `fin` out of the in-flight table with its buffer, so its read data can
    /// be used while the ring is used again (a layer's own reads: no copy). Hand it back with
    /// [`IoCx::reattach`].
    pub fn detach(&mut self, fin: &Finished) -> Detached {
        let op = self.ops.remove(fin.key);
        let (ptr, len) = match (fin.read, &op.buf) {
            // SAFETY: skip + want <= len <= the buffer's size (checked when the op started).
            (Some((skip, want)), OpBuf::Pool(id)) => unsafe {
                (
                    self.pool.ptr(id).add(skip as usize).cast_const(),
                    want as usize,
                )
            },
            // SAFETY: as above, for the bounce allocation.
            (Some((skip, want)), OpBuf::Bounce(b)) => unsafe {
                (b.ptr().add(skip as usize).cast_const(), want as usize)
            },
            _ => (std::ptr::null(), 0),
        };
        Detached {
            buf: op.buf,
            ptr,
            len,
        }
    }

    /// Give a detached op's buffer back.
    pub fn reattach(&mut self, d: Detached) {
        if let OpBuf::Pool(id) = d.buf {
            self.pool.put(id);
        }
    }

    /// Drop a finished op and give its buffer back.
    pub fn release(&mut self, key: usize) {
        let op = self.ops.remove(key);
        self.put_buf(op.buf);
    }

    /// A buffer of at least `len` bytes, its contents unspecified: a pool buffer when one is
    /// free and large enough, else a bounce buffer given back earlier and large enough, else
    /// a new one (counted in `bounces`).
    pub fn take_buf(&mut self, len: usize) -> OpBuf {
        if len <= self.pool.buf_size()
            && let Some(id) = self.pool.get()
        {
            return OpBuf::Pool(id);
        }
        if let Some(i) = self.spare_bounces.iter().position(|b| b.size() >= len) {
            let b = self.spare_bounces.swap_remove(i);
            self.spare_bounce_bytes -= b.size();
            return OpBuf::Bounce(b);
        }
        self.counters.bounces += 1;
        OpBuf::Bounce(Bounce::new(len))
    }

    /// Give back a buffer [`IoCx::take_buf`] gave: a pool buffer to the pool, a bounce buffer
    /// kept for reuse while the kept ones stay within [`super::SPARE_BOUNCES`] and
    /// [`super::SPARE_BOUNCE_BYTES`] (else freed).
    pub fn put_buf(&mut self, buf: OpBuf) {
        match buf {
            OpBuf::Pool(id) => self.pool.put(id),
            OpBuf::Bounce(b)
                if self.spare_bounces.len() < super::SPARE_BOUNCES
                    && self.spare_bounce_bytes + b.size() <= super::SPARE_BOUNCE_BYTES =>
            {
                self.spare_bounce_bytes += b.size();
                self.spare_bounces.push(b);
            }
            OpBuf::Bounce(_) | OpBuf::None => {}
        }
    }

    /// Writable view of the first `len` bytes of `buf`.
    pub fn buf_mut<'a>(&'a mut self, buf: &'a mut OpBuf, len: usize) -> &'a mut [u8] {
        match buf {
            OpBuf::Pool(id) => self.pool.slice_mut(id, len),
            OpBuf::Bounce(b) => b.slice_mut(len),
            OpBuf::None => &mut [],
        }
    }
}

/// A finished op out of the in-flight table, owning its buffer: neither the kernel (its last
/// completion was reaped) nor the pool (the buffer is not on the free list) touches it until
/// [`IoCx::reattach`].
#[must_use = "hand the buffer back with IoCx::reattach"]
pub struct Detached {
    buf: OpBuf,
    ptr: *const u8,
    len: usize,
}

impl Detached {
    /// The bytes the read produced (empty for other ops).
    pub fn data(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len lie inside the buffer this value owns (see `IoCx::detach`); a pool
        // buffer's memory lives as long as the IoCx, which outlives every Detached (they are
        // handed back within the completion that made them), and a bounce allocation lives in
        // `buf`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
