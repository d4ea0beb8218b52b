//! `errinj`: a layer that fails I/O touching a chosen byte range with EIO, for fault tests.
//!
//! Model: wraps any device; reads, writes, write-zeroes and unmaps overlapping
//! `[offset, offset + len)` fail at once with EIO and never reach the inner device, and so do
//! flushes when the layer is told to fail them (with `writes_only`, reads of the range pass:
//! a device that cannot write a sector but still reads it); everything else passes through
//! unchanged. It proves the stack works (a layer inserted between front end
//! and base device without the front end knowing) and drives the front ends' error paths.

use super::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start};
use crate::uring::{Errno, IoCx, IoTag};
use std::sync::Arc;

/// The failing range.
#[derive(Clone, Copy, Debug)]
pub struct FaultRange {
    /// First failing byte.
    pub offset: u64,
    /// Length of the failing range.
    pub len: u64,
}

impl FaultRange {
    fn hits(&self, offset: u64, len: u64) -> bool {
        len > 0
            && offset < self.offset.saturating_add(self.len)
            && self.offset < offset.saturating_add(len)
    }
}

/// An error-injecting layer over `inner`.
pub struct ErrInjDevice {
    inner: Arc<dyn BlockDevice>,
    fault: FaultRange,
    fail_flush: bool,
    reads_pass: bool,
}

impl ErrInjDevice {
    /// Wrap `inner`: I/O over `fault` fails (a range of length 0: none), and every flush when
    /// `fail_flush`.
    pub fn new(inner: Arc<dyn BlockDevice>, fault: FaultRange, fail_flush: bool) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fault,
            fail_flush,
            reads_pass: false,
        })
    }

    /// [`ErrInjDevice::new`], but reads of `fault` pass: only updates over it fail (a device
    /// that cannot write a sector but still reads what it held).
    pub fn writes_only(
        inner: Arc<dyn BlockDevice>,
        fault: FaultRange,
        fail_flush: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fault,
            fail_flush,
            reads_pass: true,
        })
    }
}

impl BlockDevice for Arc<ErrInjDevice> {
    fn info(&self) -> DeviceInfo {
        let mut i = self.inner.info();
        i.kind = format!("errinj>{}", i.kind);
        i
    }

    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        Ok(Box::new(ErrInjChannel {
            inner: self.inner.open_channel(io)?,
            fault: self.fault,
            fail_flush: self.fail_flush,
            reads_pass: self.reads_pass,
        }))
    }
}

struct ErrInjChannel {
    inner: Box<dyn Channel>,
    fault: FaultRange,
    fail_flush: bool,
    reads_pass: bool,
}

impl Channel for ErrInjChannel {
    fn idle(&self, io: &IoCx) -> bool {
        self.inner.idle(io)
    }

    fn close(&mut self, io: &mut IoCx) {
        self.inner.close(io)
    }

    fn updates_in_flight(&self, io: &IoCx) -> bool {
        self.inner.updates_in_flight(io)
    }

    fn vouch(&mut self, io: &mut IoCx, v: crate::bdev::Vouch) {
        self.inner.vouch(io, v)
    }

    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        if !self.reads_pass && self.fault.hits(offset, len as u64) {
            return ReadStart::Failed(Errno::IO);
        }
        self.inner.read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        if self.fault.hits(offset, data.len() as u64) {
            return Start::Done(Err(Errno::IO));
        }
        self.inner.write(io, tag, offset, data, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        if self.fail_flush {
            return Start::Done(Err(Errno::IO));
        }
        self.inner.flush(io, tag)
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        if self.fault.hits(offset, len) {
            return Start::Done(Err(Errno::IO));
        }
        self.inner.write_zeroes(io, tag, offset, len, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        if self.fault.hits(offset, len) {
            return Start::Done(Err(Errno::IO));
        }
        self.inner.unmap(io, tag, offset, len, fua)
    }

    fn on_own_io(&mut self, io: &mut IoCx, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        // A layer below made it.
        self.inner.on_own_io(io, slot, result, data);
    }

    fn lower_box(&mut self) -> Option<&mut Box<dyn Channel>> {
        Some(&mut self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::FaultRange;

    #[test]
    fn overlap_is_exact() {
        let f = FaultRange {
            offset: 4096,
            len: 4096,
        };
        assert!(!f.hits(0, 4096));
        assert!(f.hits(0, 4097));
        assert!(f.hits(8191, 1));
        assert!(!f.hits(8192, 4096));
        assert!(!f.hits(5000, 0));
    }
}
