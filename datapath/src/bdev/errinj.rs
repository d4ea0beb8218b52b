//! `errinj`: a layer that fails, hangs or delays I/O touching chosen byte ranges, for fault
//! tests.
//!
//! Model: wraps any device. What it does ([`Faults`]):
//! - reads, writes, write-zeroes and unmaps overlapping `fail` fail at once with EIO and never
//!   reach the inner device, and so do flushes with `fail_flush`, or those issued once
//!   `fail_flush_after_ms` have passed since the channel opened (with `reads_pass`, reads of
//!   the range pass: a device that cannot write a sector but still reads it; with
//!   `updates_pass`, only reads of it fail: a latent sector error);
//! - updates overlapping `stall` are taken and never completed (a device that hangs on a
//!   sector while the rest of it works: the caller's operation stays in flight until the
//!   process dies, so only a test that kills the daemon uses it);
//! - updates overlapping `slow` (and flushes, with `slow_flush`) wait `slow_ms` milliseconds
//!   before they go on (to the checks above, then the inner device): a slow sector, or with
//!   `fail` over it too, one that fails late; a device whose cache takes long to flush. The channel keeps them (a write's data copied) until its owner's poller
//!   ([`ErrInjChannel::release_due`], driven by `layer::slow`) releases them.
//!
//! Everything else passes through unchanged. It proves the stack works (a layer inserted
//! between front end and base device without the front end knowing) and drives the front
//! ends' and layers' error paths.

use super::{BdevError, BlockDevice, Channel, DeviceInfo, ReadStart, Start};
use crate::uring::{Errno, IoCx, IoTag};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A byte range of the device.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultRange {
    /// First byte.
    pub offset: u64,
    /// Length (0: none).
    pub len: u64,
}

impl FaultRange {
    fn hits(&self, offset: u64, len: u64) -> bool {
        len > 0
            && offset < self.offset.saturating_add(self.len)
            && self.offset < offset.saturating_add(len)
    }
}

/// What the layer injects (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// I/O over it fails with EIO.
    pub fail: FaultRange,
    /// Every flush fails with EIO.
    pub fail_flush: bool,
    /// Flushes issued this long after the channel opened fail with EIO (those before pass).
    pub fail_flush_after_ms: Option<u64>,
    /// Reads of `fail` pass.
    pub reads_pass: bool,
    /// Updates of `fail` pass (only its reads fail).
    pub updates_pass: bool,
    /// Updates over it never complete.
    pub stall: FaultRange,
    /// Updates over it wait `slow_ms` first.
    pub slow: FaultRange,
    /// How long a slow update waits.
    pub slow_ms: u64,
    /// Flushes wait `slow_ms` too.
    pub slow_flush: bool,
}

/// An error-injecting layer over `inner`.
pub struct ErrInjDevice {
    inner: Arc<dyn BlockDevice>,
    faults: Faults,
}

impl ErrInjDevice {
    /// Wrap `inner` with `faults`.
    pub fn with(inner: Arc<dyn BlockDevice>, faults: Faults) -> Arc<Self> {
        Arc::new(Self { inner, faults })
    }

    /// Wrap `inner`: I/O over `fault` fails (a range of length 0: none), and every flush when
    /// `fail_flush`.
    pub fn new(inner: Arc<dyn BlockDevice>, fault: FaultRange, fail_flush: bool) -> Arc<Self> {
        Self::with(
            inner,
            Faults {
                fail: fault,
                fail_flush,
                ..Faults::default()
            },
        )
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
            faults: self.faults,
            waiting: VecDeque::new(),
            opened: Instant::now(),
        }))
    }
}

/// An update held by a slow range.
struct Waiting {
    due: Instant,
    tag: IoTag,
    offset: u64,
    what: Held,
    fua: bool,
}

enum Held {
    Write(Vec<u8>),
    Zeroes(u64),
    Unmap(u64),
    Flush,
}

/// The layer's channel on one reactor.
pub struct ErrInjChannel {
    inner: Box<dyn Channel>,
    faults: Faults,
    /// Slow updates, in arrival order (so in due order).
    waiting: VecDeque<Waiting>,
    /// When it opened (`fail_flush_after_ms`).
    opened: Instant,
}

impl ErrInjChannel {
    /// What an update of `[offset, offset + len)` meets once past any slow wait: an error, a
    /// hang, or nothing.
    fn update(&self, offset: u64, len: u64) -> Option<Start> {
        if !self.faults.updates_pass && self.faults.fail.hits(offset, len) {
            Some(Start::Done(Err(Errno::IO)))
        } else if self.faults.stall.hits(offset, len) {
            Some(Start::Pending)
        } else {
            None
        }
    }

    /// Hold an update over the slow range; false when it is not over it.
    fn hold(&mut self, tag: IoTag, offset: u64, len: u64, what: impl FnOnce() -> Held) -> bool {
        if !self.faults.slow.hits(offset, len) {
            return false;
        }
        self.waiting.push_back(Waiting {
            due: Instant::now() + Duration::from_millis(self.faults.slow_ms),
            tag,
            offset,
            what: what(),
            fua: false,
        });
        true
    }

    /// Whether a flush issued now fails.
    fn flush_fails(&self) -> bool {
        self.faults.fail_flush
            || self
                .faults
                .fail_flush_after_ms
                .is_some_and(|ms| self.opened.elapsed() >= Duration::from_millis(ms))
    }

    /// When the next slow update is due (`None`: none waits).
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.front().map(|w| w.due)
    }

    /// Send on every slow update due at `now`; those that finish at once are pushed on `done`
    /// as (tag, result), the others complete from the inner device with their own tags.
    pub fn release_due(
        &mut self,
        io: &mut IoCx,
        now: Instant,
        done: &mut Vec<(IoTag, Result<(), Errno>)>,
    ) {
        while self.waiting.front().is_some_and(|w| w.due <= now) {
            let w = self.waiting.pop_front().expect("front exists");
            let started = match &w.what {
                Held::Flush if self.flush_fails() => Start::Done(Err(Errno::IO)),
                Held::Flush => self.inner.flush(io, w.tag),
                Held::Write(d) => match self.update(w.offset, d.len() as u64) {
                    Some(s) => s,
                    None => self.inner.write(io, w.tag, w.offset, d, w.fua),
                },
                Held::Zeroes(l) => match self.update(w.offset, *l) {
                    Some(s) => s,
                    None => self.inner.write_zeroes(io, w.tag, w.offset, *l, w.fua),
                },
                Held::Unmap(l) => match self.update(w.offset, *l) {
                    Some(s) => s,
                    None => self.inner.unmap(io, w.tag, w.offset, *l, w.fua),
                },
            };
            if let Start::Done(r) = started {
                done.push((w.tag, r));
            }
        }
    }

    /// The stop's deadline passed: every slow update still waiting fails (EIO), pushed on
    /// `done`.
    pub fn fail_waiting(&mut self, done: &mut Vec<(IoTag, Result<(), Errno>)>) {
        done.extend(self.waiting.drain(..).map(|w| (w.tag, Err(Errno::IO))));
    }

    fn with_fua(&mut self, fua: bool) {
        if let Some(w) = self.waiting.back_mut() {
            w.fua = fua;
        }
    }
}

impl Channel for ErrInjChannel {
    fn idle(&self, io: &IoCx) -> bool {
        self.waiting.is_empty() && self.inner.idle(io)
    }

    fn close(&mut self, io: &mut IoCx) {
        self.inner.close(io)
    }

    fn updates_in_flight(&self, io: &IoCx) -> bool {
        !self.waiting.is_empty() || self.inner.updates_in_flight(io)
    }

    fn vouch(&mut self, io: &mut IoCx, v: crate::bdev::Vouch) {
        self.inner.vouch(io, v)
    }

    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        if !self.faults.reads_pass && self.faults.fail.hits(offset, len as u64) {
            return ReadStart::Failed(Errno::IO);
        }
        self.inner.read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        if self.hold(tag, offset, data.len() as u64, || {
            Held::Write(data.to_vec())
        }) {
            self.with_fua(fua);
            return Start::Pending;
        }
        if let Some(s) = self.update(offset, data.len() as u64) {
            return s;
        }
        self.inner.write(io, tag, offset, data, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        if self.faults.slow_flush {
            self.waiting.push_back(Waiting {
                due: Instant::now() + Duration::from_millis(self.faults.slow_ms),
                tag,
                offset: 0,
                what: Held::Flush,
                fua: false,
            });
            return Start::Pending;
        }
        if self.flush_fails() {
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
        if self.hold(tag, offset, len, || Held::Zeroes(len)) {
            self.with_fua(fua);
            return Start::Pending;
        }
        if let Some(s) = self.update(offset, len) {
            return s;
        }
        self.inner.write_zeroes(io, tag, offset, len, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        if self.hold(tag, offset, len, || Held::Unmap(len)) {
            self.with_fua(fua);
            return Start::Pending;
        }
        if let Some(s) = self.update(offset, len) {
            return s;
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

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
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
