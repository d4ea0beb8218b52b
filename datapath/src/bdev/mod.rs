//! Block devices: one interface for every layer of a volume's stack.
//!
//! Model (SPDK's bdev + io_channel): a [`BlockDevice`] is shared by every reactor
//! (`Send + Sync`, no locks on the I/O path); each reactor opens its own [`Channel`] to it, which
//! owns that reactor's per-device state (for a file: its fixed-file slot in that reactor's ring).
//! Front ends call the channel; layers (mirror, CDP, error injection) implement the same two
//! traits and wrap an inner device, so inserting one never touches a front end.
//!
//! An operation either finishes at once ([`Start::Done`], [`ReadStart::Ready`]) or is
//! `Pending` and finishes later as a completion carrying its [`IoTag`].
//!
//! Invariants every implementation keeps:
//! - Requests are range-checked by the caller against [`DeviceInfo::size`]; a device still
//!   refuses an out-of-range request with `EINVAL` and never touches memory outside itself.
//! - A write is acknowledged only once it is in the device; with `fua` only once it is
//!   durable; a `flush` covers every write acknowledged before it was issued, on any channel.

pub mod cached;
pub mod errinj;
pub mod file;
pub mod host_path;
pub mod malloc;
pub mod sigbus;
pub mod stream;
pub mod volume;
use crate::uring::{Errno, IoCx, IoTag};
use thiserror::Error;

/// Static facts about a device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Size in bytes.
    pub size: u64,
    /// Smallest write granularity and alignment in bytes (reads of any alignment are served).
    pub block_size: u32,
    /// Alignment writes must keep, in bytes (1: any); advertised to initiators.
    pub min_io: u32,
    /// Short name of the layer stack, top first (e.g. "errinj>uring").
    pub kind: String,
    /// Refuses every update (with `EPERM`): front ends advertise the device as read-only or
    /// write protected, so initiators attach it so. Layers above pass it on.
    pub read_only: bool,
}

/// How an operation started.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Finished already.
    Done(Result<(), Errno>),
    /// Will finish as a completion with the caller's tag.
    Pending,
}

/// How a read started.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStart<'a> {
    /// The data, valid until the channel is used again.
    Ready(&'a [u8]),
    /// Failed at once.
    Failed(Errno),
    /// Will finish as a completion with the caller's tag.
    Pending,
}

/// How a replica's content stands against its volume's, as the layer above it that decides
/// with another site knows it (the mirror, [`Channel::vouch`]). A layer that records the
/// replica's history (CDP) serves a moment of it only while it was vouched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vouch {
    /// Every update acknowledged anywhere is in it (the site holds its read lease, or serves
    /// alone as the survivor).
    Current,
    /// It may miss updates acknowledged elsewhere from now on (the site lost its lease or its
    /// peer and is not the survivor); none is known to be missing yet.
    Unsure,
    /// It missed updates acknowledged elsewhere since it was last current (being resynced,
    /// fenced, taken over by an operator, or a new replica): its content is no moment of the
    /// volume until it is `Current` again.
    Stale,
}

/// A device shared by all reactors.
pub trait BlockDevice: Send + Sync {
    /// Static facts.
    fn info(&self) -> DeviceInfo;
    /// Open this reactor's channel (called on the reactor's own thread).
    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError>;
    /// The device under this one, if this is a layer.
    fn lower(&self) -> Option<std::sync::Arc<dyn BlockDevice>> {
        None
    }
    /// Put `dev` under this layer in place of its lower device (a layer inserted or taken
    /// out under it at run time, once every reactor's channels were changed the same way:
    /// the device's stack then names what the channels are). False: this device has no
    /// lower device or cannot change it.
    fn set_lower(&self, _dev: std::sync::Arc<dyn BlockDevice>) -> bool {
        false
    }
}

/// One reactor's handle on a device.
pub trait Channel {
    /// Read `len` bytes at `offset`.
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_>;
    /// Write `data` at `offset`; `fua`: durable before it completes. `data` is lent for the
    /// call only (callers pass receive buffers reused right after it): a device that
    /// finishes later has taken its own copy by then.
    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start;
    /// Make every completed write durable.
    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start;
    /// Zero `len` bytes at `offset`.
    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start;
    /// Deallocate `len` bytes at `offset` (reads afterwards return zeroes).
    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start;
    /// Compare `cmp` with the data at `offset` and write `data` there when they are equal,
    /// atomically with respect to every other update of the volume (of a mirrored volume:
    /// at both sites). A mismatch completes with [`Errno::MISCOMPARE`]. `None`: this layer
    /// does not do it; the caller reads, compares and writes under its own exclusion.
    #[allow(clippy::too_many_arguments)]
    fn compare_and_write(
        &mut self,
        _io: &mut IoCx,
        _tag: IoTag,
        _offset: u64,
        _cmp: &[u8],
        _data: &[u8],
        _fua: bool,
    ) -> Option<Start> {
        None
    }
    /// A metadata command (an NVMe reservation command, docs/nvmf.md) to decide with the
    /// volume's other site. `None`: the volume is not mirrored; the caller decides it alone.
    fn meta(&mut self, _io: &mut IoCx, _tag: IoTag, _cmd: &[u8]) -> Option<Start> {
        None
    }
    /// A request handed over by another reactor (see [`BlockRequest`]): a layer that runs a
    /// volume's updates on one home reactor executes it here. `Pending` requests complete
    /// through the layer's poller, to the reactor and tag in the request. A plain device is
    /// never handed requests and refuses them.
    /// The channel may take `req.data` (the runtime recycles what is left).
    fn submit_request(&mut self, _io: &mut IoCx, _req: &mut BlockRequest) -> Start {
        Start::Done(Err(Errno::IO))
    }
    /// A read a connection issued through this channel failed at the device in its
    /// completion (`offset`, `len`: the device operation's span), with `e`: what the
    /// connection is answered instead. A layer that keeps another copy of the data (the
    /// mirror) takes the failure as its replica's and answers so the host retries the read
    /// elsewhere; a device, and any layer that does not care, passes `e` on.
    fn read_failed(&mut self, _offset: u64, _len: u64, e: Errno) -> Errno {
        e
    }
    /// A device operation this channel started with a tag of its own
    /// ([`IoTag::channel`]) finished; `data` holds what a read produced.
    fn on_own_io(&mut self, _io: &mut IoCx, _slot: u32, _result: Result<(), Errno>, _data: &[u8]) {}
    /// The layer above says how this replica's content stands against the volume's
    /// ([`Vouch`]), at every turn of its reactor. Layers pass it down to the one that keeps a
    /// history; devices ignore it.
    fn vouch(&mut self, _io: &mut IoCx, _v: Vouch) {}
    /// The concrete channel, for the layer that made it (its poller and its connections find
    /// their own state this way); `None` for channels nobody needs to reach.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
    /// The box holding the channel of the layer below this one, if this is a layer: a layer
    /// inserted or taken out under this one at run time takes its place
    /// ([`crate::runtime::restack_at`]).
    fn lower_box(&mut self) -> Option<&mut Box<dyn Channel>> {
        None
    }
    /// The channel of the layer below this one, if this is a layer (see [`find_layer`]).
    fn lower(&mut self) -> Option<&mut dyn Channel> {
        match self.lower_box() {
            Some(b) => Some(&mut **b),
            None => None,
        }
    }
    /// Nothing this channel started is still in flight in the reactor's ring (a channel
    /// closed at run time is closed only once it is idle).
    fn idle(&self, _io: &IoCx) -> bool {
        true
    }
    /// An update (write, write-zeroes, unmap, flush) this channel started for a caller (a
    /// connection, or a layer above: not an own operation of a layer under another one, whose
    /// slot has [`LOWER_SLOT`]) is still in flight in the reactor's ring: a layer inserted
    /// above it at run time waits for those before it relies on the device's content.
    fn updates_in_flight(&self, _io: &IoCx) -> bool {
        false
    }
    /// The volume is being deleted: give back what the channel holds in the reactor (its
    /// fixed-file slot). Called once, when [`Channel::idle`], just before it is dropped.
    fn close(&mut self, _io: &mut IoCx) {}
}

/// The channel of an empty volume slot (a volume deleted at run time, or never created):
/// every operation fails with `ENODEV`. Front ends never reach it (they resolve a volume
/// before they use its channel); it exists so a reactor's channel table keeps one entry per
/// slot and indexes stay stable.
pub struct NoChannel;

impl Channel for NoChannel {
    fn read(&mut self, _io: &mut IoCx, _tag: IoTag, _offset: u64, _len: u32) -> ReadStart<'_> {
        ReadStart::Failed(Errno(libc::ENODEV))
    }
    fn write(&mut self, _io: &mut IoCx, _tag: IoTag, _o: u64, _d: &[u8], _fua: bool) -> Start {
        Start::Done(Err(Errno(libc::ENODEV)))
    }
    fn flush(&mut self, _io: &mut IoCx, _tag: IoTag) -> Start {
        Start::Done(Err(Errno(libc::ENODEV)))
    }
    fn write_zeroes(&mut self, _io: &mut IoCx, _t: IoTag, _o: u64, _l: u64, _f: bool) -> Start {
        Start::Done(Err(Errno(libc::ENODEV)))
    }
    fn unmap(&mut self, _io: &mut IoCx, _t: IoTag, _o: u64, _l: u64, _f: bool) -> Start {
        Start::Done(Err(Errno(libc::ENODEV)))
    }
}

/// Own-I/O slot bit of a layer that sits under another layer (CDP under the mirror): the
/// runtime hands every completion of a volume-owned tag ([`IoTag::channel`]) to the volume's
/// top channel, and a layer that finds this bit in a slot it did not make passes the
/// completion to [`Channel::lower`]'s `on_own_io`. Layers that are always on top (the mirror)
/// never set it.
pub const LOWER_SLOT: u32 = 1 << 31;

/// The channel of type `T` in the stack under (and including) `c`: a layer's poller finds its
/// own channel this way wherever the layer sits.
pub fn find_layer<T: 'static>(c: &mut dyn Channel) -> Option<&mut T> {
    if c.as_any_mut().is_some_and(|a| a.is::<T>()) {
        return c.as_any_mut()?.downcast_mut::<T>();
    }
    find_layer(c.lower()?)
}

/// What a [`BlockRequest`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOp {
    /// Write `data`.
    Write,
    /// Write zeroes over `len` bytes.
    Zeroes,
    /// Deallocate `len` bytes.
    Unmap,
    /// Make every completed write durable.
    Flush,
    /// A metadata command (`data`; see [`Channel::meta`]).
    Meta,
}

/// A block request handed from the reactor of the connection that issued it to the reactor
/// that executes it (a volume's home): plain data, moved through the runtime's mailbox and
/// answered with the request's tag.
#[derive(Debug)]
pub struct BlockRequest {
    /// Volume index.
    pub vol: u32,
    /// The reactor of the issuing connection (where the answer goes).
    pub from: u32,
    /// The issuing connection's tag.
    pub tag: IoTag,
    /// What to do.
    pub op: BlockOp,
    /// Byte offset.
    pub offset: u64,
    /// Bytes (zeroes, unmap).
    pub len: u64,
    /// Force unit access.
    pub fua: bool,
    /// Write data or the metadata command; recycled by the receiver.
    pub data: Vec<u8>,
}

/// Errors setting a device up.
#[derive(Debug, Error)]
pub enum BdevError {
    /// Opening or sizing the backing file failed.
    #[error("cannot open {path}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backing store is smaller than the configured size.
    #[error("{path} holds {have} bytes, the volume needs {want}")]
    TooSmall {
        /// The path.
        path: String,
        /// Bytes available.
        have: u64,
        /// Bytes configured.
        want: u64,
    },
    /// A size that is zero or not a multiple of the block size.
    #[error("size {size} is not a non-zero multiple of the block size {block}")]
    BadSize {
        /// Configured size.
        size: u64,
        /// Block size.
        block: u32,
    },
    /// RAM for a malloc device could not be mapped.
    #[error("cannot map {size} bytes of memory")]
    Map {
        /// Requested bytes.
        size: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A RAM volume larger than all the memory the process can have (it would fail only once
    /// written, by the OOM killer ending the daemon).
    #[error(
        "a RAM (malloc) volume of {size} bytes ({}) is larger than the memory this machine can give it: {memory} bytes ({}, {from}); give a smaller size, or back the volume with a file or device (backend uring)",
        crate::bdev::malloc::human_bytes(*.size),
        crate::bdev::malloc::human_bytes(*.memory)
    )]
    LargerThanMemory {
        /// Requested bytes.
        size: u64,
        /// The most memory the process can have.
        memory: u64,
        /// Where `memory` comes from.
        from: &'static str,
    },
    /// Registering the file with a reactor's ring failed.
    #[error("cannot register the device with the reactor's ring")]
    Register(#[source] std::io::Error),
}

/// True when `[offset, offset + len)` lies inside a device of `size` bytes.
pub fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

#[cfg(test)]
mod tests {
    use super::in_range;

    #[test]
    fn range_checks_catch_overflow_and_the_end() {
        assert!(in_range(0, 4096, 4096));
        assert!(in_range(4096, 0, 4096));
        assert!(!in_range(1, 4096, 4096));
        assert!(!in_range(u64::MAX, 2, u64::MAX));
        assert!(!in_range(4097, 0, 4096));
    }
}
