//! The only place SQEs are built and pushed.
//!
//! Model: each reactor owns one [`IoCx`]: its io_uring, its buffer pool (registered as fixed
//! buffers), its table of fixed files, and the in-flight table of block-device operations.
//! Every SQE carries a [`UserData`] naming what its completion belongs to: a connection's
//! receive or send, a listener's accept, the reactor's wake-up eventfd, or a block-device
//! operation in [`IoCx::ops`].
//!
//! Invariants:
//! - An SQE's memory (buffer, iovec, socket address) stays owned by the in-flight entry or the
//!   connection that pushed it until its CQE is reaped; nobody frees or moves it before then.
//! - SQEs are only queued here; the reactor submits them all with one `io_uring_enter` per
//!   loop turn (or earlier, only when the submission queue is full).
//!
//! Kernel features relied on (minimum Linux): IORING_OP_READ_FIXED/WRITE_FIXED and registered
//! buffers (5.1), fixed files (5.1), IORING_OP_FSYNC (5.1), IORING_OP_SEND/RECV (5.6),
//! IORING_OP_FALLOCATE (5.6), IORING_OP_SENDMSG (5.3), multishot accept (5.19),
//! IORING_OP_ASYNC_CANCEL (5.5),
//! sparse file-table registration and updates (5.19 for IORING_REGISTER_FILES2 sparse);
//! io_uring's own retry of a short send under `MSG_WAITALL` on a stream socket (quiet sends,
//! [`IoCx::push_send_quiet`]; tested on 6.18: an older kernel completes such a send short, and
//! its connection sends the rest as for any short send, one event or bounded wait later).

pub mod buf;
pub mod iov;
pub mod ops;

use crate::uring::buf::BufPool;
use io_uring::{IoUring, squeue};
pub use ops::{BdevOp, OpBuf, OpKind};
use slab::Slab;
use std::io;

/// What a completion belongs to (top byte of `user_data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The reactor's wake-up eventfd read.
    Wake = 1,
    /// A listener's (multishot) accept; index = listener number.
    Accept = 2,
    /// A connection's receive; index = connection key.
    Recv = 3,
    /// A connection's send; index = connection key.
    Send = 4,
    /// A block-device operation; index = key in [`IoCx::ops`].
    Bdev = 5,
    /// A cancellation request; its completion carries no work.
    Cancel = 6,
    /// A timeout used to bound waits; no work.
    Timer = 7,
}

/// `user_data` of an SQE: kind in the top byte, a 32-bit index in the low bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData(pub u64);

impl UserData {
    /// Encode.
    pub fn new(kind: Kind, index: u32) -> Self {
        Self(((kind as u64) << 56) | index as u64)
    }

    /// Decode the kind; `None` for a value this crate never produced.
    pub fn kind(self) -> Option<Kind> {
        Some(match (self.0 >> 56) as u8 {
            1 => Kind::Wake,
            2 => Kind::Accept,
            3 => Kind::Recv,
            4 => Kind::Send,
            5 => Kind::Bdev,
            6 => Kind::Cancel,
            7 => Kind::Timer,
            _ => return None,
        })
    }

    /// The index part.
    pub fn index(self) -> u32 {
        self.0 as u32
    }
}

/// Names whose completion a block-device operation is: its owner and the owner's request
/// slot. The owner is a connection (`conn` is its key in the reactor's connection table) or,
/// when the top bit of `conn` is set ([`IoTag::channel`]), a volume's channel on the reactor
/// (a layer's own device operation: the runtime hands its completion to
/// [`crate::bdev::Channel::on_own_io`] of that volume). Build tags with [`IoTag::conn`] and
/// [`IoTag::channel`]; read the owner with [`IoTag::owner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoTag {
    /// The owner, encoded (see the type's doc).
    pub conn: u32,
    /// The owner's own request slot.
    pub slot: u32,
}

/// Whose a block-device operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A connection, by key.
    Conn(u32),
    /// A volume's channel (a layer in its stack), by volume index.
    Channel(u32),
}

impl IoTag {
    const CHANNEL: u32 = 1 << 31;

    /// A connection's request: connection `key`, request `slot`.
    pub fn conn(key: u32, slot: u32) -> Self {
        debug_assert!(key & Self::CHANNEL == 0, "connection keys stay below 2^31");
        Self { conn: key, slot }
    }

    /// A layer's own request, completed to volume `vol`'s channel.
    pub fn channel(vol: u32, slot: u32) -> Self {
        Self {
            conn: Self::CHANNEL | vol,
            slot,
        }
    }

    /// Whose it is.
    pub fn owner(self) -> Owner {
        if self.conn & Self::CHANNEL != 0 {
            Owner::Channel(self.conn & !Self::CHANNEL)
        } else {
            Owner::Conn(self.conn)
        }
    }
}

/// Plain-data I/O error carried to front ends: an errno value (no allocation on the hot path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// Invalid argument (misaligned or malformed request).
    pub const INVAL: Errno = Errno(libc::EINVAL);
    /// I/O error.
    pub const IO: Errno = Errno(libc::EIO);
    /// A compare-and-write found different data (nothing was written).
    pub const MISCOMPARE: Errno = Errno(libc::EILSEQ);
    /// Out of space / beyond the end of the device.
    pub const NOSPC: Errno = Errno(libc::ENOSPC);
    /// Operation not supported.
    pub const NOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    /// Read-only.
    pub const PERM: Errno = Errno(libc::EPERM);
    /// Shutting down.
    pub const SHUTDOWN: Errno = Errno(libc::ESHUTDOWN);
    /// This path cannot serve the volume now, another site's path may (the site is fenced,
    /// resyncing, waiting for its first session or its replica failed, or it holds no read
    /// lease): path-related for a multipath front end (NVMe: ANA inaccessible, so the host
    /// retries on the other path), an I/O error for NBD.
    pub const UNAVAILABLE: Errno = Errno(libc::ENOTCONN);
    /// The volume's leadership moved (a planned switchover) while the request waited for the
    /// old leader's decision, and nothing was decided: the same request may be sent again
    /// (NVMe: ANA transition; SCSI: NOT READY, ASYMMETRIC ACCESS STATE TRANSITION), an I/O
    /// error for NBD.
    pub const TRANSITION: Errno = Errno(libc::EAGAIN);
}

/// Counters the ring side keeps (published by the reactor with its own).
#[derive(Default, Clone, Copy, Debug)]
pub struct RingCounters {
    /// SQEs queued for submission.
    pub sqes: u64,
    /// Times the submission queue was full and had to be submitted early.
    pub sq_full: u64,
    /// Bounce buffers allocated because the pool was empty or the request too large.
    pub bounces: u64,
}

/// The reactor's ring and everything that must live exactly as long as it.
pub struct IoCx {
    /// The ring.
    pub ring: IoUring,
    /// Registered buffer pool (buffer index == fixed-buffer index).
    pub pool: BufPool,
    /// In-flight block-device operations.
    pub ops: Slab<BdevOp>,
    /// Counters.
    pub counters: RingCounters,
    /// The reactor that owns this ring (set by the reactor before opening channels).
    pub reactor: usize,
    /// Reused byte vectors for requests handed to another reactor (see `mirror`); kept by
    /// [`IoCx::recycle_vec`] within [`SPARE_VECS`] vectors of at most [`SPARE_VEC_MAX`] bytes.
    pub spare_vecs: Vec<Vec<u8>>,
    /// Bounce buffers given back ([`IoCx::put_buf`], [`IoCx::release`]) for
    /// [`IoCx::take_buf`] to reuse, at most [`SPARE_BOUNCES`] of at most
    /// [`SPARE_BOUNCE_BYTES`] together.
    spare_bounces: Vec<buf::Bounce>,
    /// Their bytes.
    spare_bounce_bytes: usize,
    /// Next never-used slot in the fixed-file table.
    next_file: u32,
    file_slots: u32,
    /// Slots given back by [`IoCx::unregister_file`], reused first.
    free_files: Vec<u32>,
    /// Quiet sends queued since the last submission ([`IoCx::push_send_quiet`]).
    quiet_sends: u32,
}

/// At most this many bytes of bounce buffers (for operations larger than a pool buffer, or
/// when the pool is empty) are kept per reactor for reuse: a 128 KiB write's journal record
/// or a large read of a file volume took a zeroed allocation and a free per I/O otherwise.
pub const SPARE_BOUNCE_BYTES: usize = 8 << 20;
/// At most this many of them (`take_buf` looks through them for one large enough: small ones,
/// taken when the pool is empty, would make that a long scan per I/O).
pub const SPARE_BOUNCES: usize = 64;

/// At most this many spare vectors per reactor.
pub const SPARE_VECS: usize = 1024;
/// A spare vector larger than this is freed rather than kept (so a reactor keeps at most
/// `SPARE_VECS * SPARE_VEC_MAX` = 128 MiB of them, and far less for usual request sizes).
pub const SPARE_VEC_MAX: usize = 128 * 1024;

impl IoCx {
    /// Keep `v` for reuse if the bounds allow it (else it is freed).
    pub fn recycle_vec(&mut self, mut v: Vec<u8>) {
        if v.capacity() > 0 && v.capacity() <= SPARE_VEC_MAX && self.spare_vecs.len() < SPARE_VECS {
            v.clear();
            self.spare_vecs.push(v);
        }
    }

    /// A ring of `entries` SQEs with a pool of `bufs` x `buf_size` registered buffers and a
    /// sparse fixed-file table of `file_slots` entries.
    pub fn new(entries: u32, bufs: u16, buf_size: usize, file_slots: u32) -> io::Result<Self> {
        // One thread owns the ring (SINGLE_ISSUER), and completions are only run when that
        // thread enters the ring (DEFER_TASKRUN): a socket receive completing while the reactor
        // is busy costs no cross-core interrupt, it waits for the next turn. TASKRUN_FLAG tells
        // the loop, without a syscall, that such deferred completions are waiting.
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(entries)?;
        let pool = BufPool::new(bufs, buf_size);
        let iovecs = pool.iovecs();
        // SAFETY: the iovecs describe the pool's allocation, which outlives the ring's use of
        // it: the pool is a field of this struct and is only dropped with the ring, after the
        // reactor has drained every operation.
        unsafe { ring.submitter().register_buffers(&iovecs)? };
        ring.submitter().register_files_sparse(file_slots)?;
        Ok(Self {
            ring,
            pool,
            ops: Slab::with_capacity(1024),
            counters: RingCounters::default(),
            reactor: 0,
            spare_vecs: Vec::new(),
            spare_bounces: Vec::new(),
            spare_bounce_bytes: 0,
            next_file: 0,
            file_slots,
            free_files: Vec::new(),
            quiet_sends: 0,
        })
    }

    /// Register `fd` in the next fixed-file slot and return the slot.
    pub fn register_file(&mut self, fd: i32) -> io::Result<u32> {
        if let Some(slot) = self.free_files.pop() {
            if let Err(e) = self.ring.submitter().register_files_update(slot, &[fd]) {
                self.free_files.push(slot);
                return Err(e);
            }
            return Ok(slot);
        }
        if self.next_file >= self.file_slots {
            return Err(io::Error::other("fixed-file table full"));
        }
        let slot = self.next_file;
        self.ring.submitter().register_files_update(slot, &[fd])?;
        self.next_file += 1;
        Ok(slot)
    }

    /// Empty fixed-file `slot` (from [`IoCx::register_file`]) and keep it for the next
    /// registration (a channel closed at run time). The caller makes sure no operation on the
    /// slot is queued or in flight.
    pub fn unregister_file(&mut self, slot: u32) -> io::Result<()> {
        if slot >= self.next_file || self.free_files.contains(&slot) {
            return Err(io::Error::other("fixed-file slot not registered"));
        }
        self.ring.submitter().register_files_update(slot, &[-1])?;
        self.free_files.push(slot);
        Ok(())
    }

    /// Point fixed-file `slot` (from [`IoCx::register_file`]) at `fd` instead. Operations
    /// already submitted keep the old file; the caller makes sure none is queued but not yet
    /// submitted.
    pub fn replace_file(&mut self, slot: u32, fd: i32) -> io::Result<()> {
        if slot >= self.next_file {
            return Err(io::Error::other("fixed-file slot not registered"));
        }
        self.ring.submitter().register_files_update(slot, &[fd])?;
        Ok(())
    }

    /// Queue a socket receive into `buf` for connection `key` (completion kind `Recv`).
    ///
    /// # Safety
    /// `buf` must stay valid and must not be moved or read until the completion is reaped.
    pub unsafe fn push_recv(&mut self, fd: i32, buf: &mut [u8], key: u32) {
        let sqe = io_uring::opcode::Recv::new(
            io_uring::types::Fd(fd),
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
        .build()
        .user_data(UserData::new(Kind::Recv, key).0);
        // SAFETY: the caller keeps `buf` alive and in place until the completion.
        unsafe { self.push(&sqe) };
    }

    /// Queue a socket send of `buf` for connection `key` (completion kind `Send`).
    ///
    /// # Safety
    /// `buf` must stay valid and unmodified until the completion is reaped.
    pub unsafe fn push_send(&mut self, fd: i32, buf: &[u8], key: u32) {
        let sqe =
            io_uring::opcode::Send::new(io_uring::types::Fd(fd), buf.as_ptr(), buf.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(UserData::new(Kind::Send, key).0);
        // SAFETY: the caller keeps `buf` alive and untouched until the completion.
        unsafe { self.push(&sqe) };
    }

    /// Queue a *quiet* send of `buf` for connection `key`: one whose completion the
    /// connection needs for nothing but its bookkeeping (everything it had to send is in it,
    /// its receive is armed), so a reactor that sleeps right after submitting it may count its
    /// completion as expected rather than as an event to wake for
    /// ([`IoCx::take_quiet_sends`]). Sent with `MSG_WAITALL`, under which io_uring retries a
    /// short send on a stream socket itself (`io_net_retry`), so it completes whole unless
    /// the socket fails.
    ///
    /// # Safety
    /// As for [`IoCx::push_send`].
    pub unsafe fn push_send_quiet(&mut self, fd: i32, buf: &[u8], key: u32) {
        let sqe =
            io_uring::opcode::Send::new(io_uring::types::Fd(fd), buf.as_ptr(), buf.len() as u32)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                .build()
                .user_data(UserData::new(Kind::Send, key).0);
        // SAFETY: the caller keeps `buf` alive and untouched until the completion.
        unsafe { self.push(&sqe) };
        self.quiet_sends += 1;
    }

    /// A quiet sendmsg or send was queued by this module's other pushes.
    pub(crate) fn quiet_pushed(&mut self) {
        self.quiet_sends += 1;
    }

    /// The quiet sends queued since the last submission, and forget them: the caller is
    /// about to submit. A sleep that submits them waits for that many completions more than
    /// it wants events (each completes within the submission, or later on its own).
    pub fn take_quiet_sends(&mut self) -> u32 {
        std::mem::take(&mut self.quiet_sends)
    }

    /// Queue one SQE, submitting early only if the queue is full.
    ///
    /// # Safety
    /// Every buffer, iovec or address the entry points at must stay valid and untouched until
    /// its completion is reaped.
    pub unsafe fn push(&mut self, sqe: &squeue::Entry) {
        self.counters.sqes += 1;
        loop {
            // SAFETY: the caller guarantees the entry's memory outlives its completion.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            self.counters.sq_full += 1;
            // The queue is full: hand what is queued to the kernel now. EBUSY means the
            // completion queue is full; the reactor reaps it on its next turn, and the kernel
            // keeps overflowed completions, so submitting again is safe. (Quiet sends
            // submitted here are reaped by the next turn like any completion.)
            self.quiet_sends = 0;
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let _ = self.ring.submit_and_wait(1);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring_enter failed: {e}"),
            }
        }
    }

    /// Queue two SQEs so that they reach the kernel in the same submission (a request and its
    /// `LINK_TIMEOUT`: a link split across two submissions would be broken).
    ///
    /// # Safety
    /// As for [`IoCx::push`], for both entries.
    pub unsafe fn push_pair(&mut self, first: &squeue::Entry, second: &squeue::Entry) {
        loop {
            {
                let mut sq = self.ring.submission();
                if sq.capacity() - sq.len() >= 2 {
                    // SAFETY: the caller guarantees both entries' memory outlives their
                    // completions; two free slots were checked just above.
                    unsafe {
                        let _ = sq.push(first);
                        let _ = sq.push(second);
                    }
                    self.counters.sqes += 2;
                    return;
                }
            }
            self.counters.sq_full += 1;
            self.quiet_sends = 0;
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let _ = self.ring.submit_and_wait(1);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring_enter failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        IoCx, IoTag, OpBuf, Owner, SPARE_BOUNCE_BYTES, SPARE_BOUNCES, SPARE_VEC_MAX, SPARE_VECS,
    };

    /// A bounce buffer given back is reused by the next operation it is large enough for
    /// (one allocation for many), and the kept ones stay within SPARE_BOUNCE_BYTES.
    #[test]
    fn bounce_buffers_are_reused_within_a_bound() {
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        for _ in 0..20 {
            let b = io.take_buf(130 << 10);
            assert!(matches!(b, OpBuf::Bounce(_)));
            io.put_buf(b);
        }
        assert_eq!(io.counters.bounces, 1, "one allocation for twenty");
        // A larger one is a new allocation; the smaller kept one is not handed out for it.
        let big = io.take_buf(1 << 20);
        assert_eq!(io.counters.bounces, 2);
        io.put_buf(big);
        let held: Vec<OpBuf> = (0..80).map(|_| io.take_buf(200 << 10)).collect();
        for b in held {
            io.put_buf(b);
        }
        assert!(io.spare_bounce_bytes <= SPARE_BOUNCE_BYTES);
        let kept: usize = io.spare_bounces.iter().map(|b| b.size()).sum();
        assert_eq!(kept, io.spare_bounce_bytes);
        assert!(kept > SPARE_BOUNCE_BYTES - (1 << 20), "{kept} kept");
        // Small ones (the pool empty): at most SPARE_BOUNCES of them are kept.
        let mut io = IoCx::new(8, 2, 4096, 1).expect("ring");
        let held: Vec<OpBuf> = (0..200).map(|_| io.take_buf(4096)).collect();
        for b in held {
            io.put_buf(b);
        }
        assert_eq!(io.spare_bounces.len(), SPARE_BOUNCES);
    }

    #[test]
    fn spare_vectors_are_bounded_in_count_and_size() {
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        for _ in 0..SPARE_VECS + 10 {
            io.recycle_vec(Vec::with_capacity(4096));
        }
        assert_eq!(io.spare_vecs.len(), SPARE_VECS);
        io.spare_vecs.clear();
        io.recycle_vec(Vec::with_capacity(SPARE_VEC_MAX + 1));
        io.recycle_vec(Vec::new());
        assert!(
            io.spare_vecs.is_empty(),
            "too large or empty vectors are not kept"
        );
    }

    #[test]
    fn a_tag_names_its_owner() {
        assert_eq!(IoTag::conn(7, 3).owner(), Owner::Conn(7));
        assert_eq!(IoTag::channel(0, 3).owner(), Owner::Channel(0));
        assert_eq!(
            IoTag::channel(u32::MAX >> 1, 1).owner(),
            Owner::Channel(u32::MAX >> 1)
        );
        assert_ne!(IoTag::conn(5, 1), IoTag::channel(5, 1));
    }
}
