//! Cross-reactor messages: a lock-free MPSC queue plus an eventfd wake-up.
//!
//! Model: any thread may [`Mailbox::send`]; only the owning reactor drains. The eventfd is
//! written only when the owner says it is about to block (`sleeping`), so a busy reactor
//! receives messages without any syscall.
//!
//! Invariant (no lost wake-up): the owner stores `sleeping = true`, issues a SeqCst fence, then
//! checks the queue once more before blocking; a sender pushes, issues a SeqCst fence, then
//! reads `sleeping`. One of the two always sees the other's write.

use super::conn::{Conn, Note};
use crate::bdev::BlockRequest;
use crate::uring::{Errno, IoTag};
use crossbeam_queue::ArrayQueue;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};

/// Where a [`Msg::Note`] goes on the receiving reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteTo {
    /// A connection, by key (dropped when it is gone).
    Conn(u32),
    /// A service, by its index in [`super::Shared::services`].
    Service(u32),
}

/// Messages a reactor accepts: only the runtime's own vocabulary.
pub enum Msg {
    /// Serve an accepted connection on this reactor: the socket and the listener it came on.
    NewConn {
        /// The accepted socket (ownership passes to the reactor).
        fd: OwnedFd,
        /// Listener index in the runtime's listener table.
        listener: usize,
    },
    /// Run a connection built elsewhere on this reactor (e.g. a link whose first message
    /// said it belongs to a volume homed here).
    Spawn(Box<dyn Conn + Send>),
    /// Finish in-flight I/O, close connections, then exit the loop.
    Stop,
    /// A block request for a volume executed on this reactor, from a connection on another
    /// (answered with [`Msg::BlockDone`]).
    Block(BlockRequest),
    /// The answer to a [`Msg::Block`]; `data` is a spare buffer for the next request.
    BlockDone {
        /// Whose request.
        tag: IoTag,
        /// Outcome.
        result: Result<(), Errno>,
        /// A buffer handed back for reuse.
        data: Vec<u8>,
    },
    /// A note for a connection or service on this reactor.
    Note {
        /// Its addressee.
        to: NoteTo,
        /// The note.
        note: Note,
    },
    /// Counted and dropped (benchmarks and tests of the message path).
    Nop,
}

/// A reactor's inbox.
pub struct Mailbox {
    queue: ArrayQueue<Msg>,
    sleeping: AtomicBool,
    eventfd: OwnedFd,
}

/// Capacity of a mailbox; a sender that finds it full yields and retries.
pub const MAILBOX_CAPACITY: usize = 64 * 1024;

impl Mailbox {
    /// A new empty mailbox with its eventfd.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            queue: ArrayQueue::new(MAILBOX_CAPACITY),
            sleeping: AtomicBool::new(false),
            eventfd,
        })
    }

    /// Deliver `msg`, waking the owner if it sleeps.
    pub fn send(&self, mut msg: Msg) {
        while let Err(m) = self.queue.push(msg) {
            msg = m;
            self.wake();
            std::thread::yield_now();
        }
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; EAGAIN (counter full) is fine,
        // the owner is being woken anyway.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Owner: take one message.
    pub fn pop(&self) -> Option<Msg> {
        self.queue.pop()
    }

    /// Owner: about to block. Returns false (and stays awake) when a message is already queued.
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.queue.is_empty() {
            self.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Owner: awake again.
    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// The eventfd the owner keeps a read posted on.
    pub fn eventfd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }
}
