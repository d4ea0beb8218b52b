//! Cross-reactor messages: a lock-free MPSC queue plus an eventfd wake-up.
//!
//! Model: any thread may [`Mailbox::send`]; only the owning reactor drains. The eventfd is
//! written only when the owner says it is about to block (`sleeping`), so a busy reactor
//! receives messages without any syscall.
//!
//! Invariant (no lost wake-up): the owner stores `sleeping = true`, issues a SeqCst fence, then
//! checks the queue once more before blocking; a sender pushes, issues a SeqCst fence, then
//! reads `sleeping`. One of the two always sees the other's write.
//!
//! Invariant (no deadlock when full): a reactor thread never waits for room in another
//! reactor's queue (two reactors filling each other's queues would wait for ever). What does
//! not fit is held, in order, in the sending thread's own list and delivered by
//! [`flush_held`] at every turn of its loop; while anything is held for a mailbox, later
//! messages to it are held behind it, so per-destination order is kept. The held list is
//! bounded by what the thread's connections and pollers have in flight (each request is
//! answered once). Other threads (the daemon's stop, tests) yield and retry instead.

use super::conn::{Conn, Note};
use crate::bdev::BlockRequest;
use crate::bdev::volume::Volume;
use crate::uring::{Errno, IoTag};
use crossbeam_queue::ArrayQueue;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::SyncSender;

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
    /// Open this reactor's channel to a volume created at run time, in slot `vol` (empty on
    /// this reactor until now), and answer on `done` (the error says why it could not).
    OpenVolume {
        /// The slot.
        vol: usize,
        /// The volume.
        volume: Arc<Volume>,
        /// Where the outcome goes.
        done: SyncSender<Result<(), String>>,
    },
    /// Close this reactor's channel to the volume in slot `vol` once nothing it started is
    /// in flight, empty the slot, and answer on `done`.
    CloseVolume {
        /// The slot.
        vol: usize,
        /// Where the answer goes.
        done: SyncSender<()>,
    },
    /// Change this reactor's channel to the served volume in slot `vol` in place, between
    /// two requests ([`super::Restack`]), publish `volume` as the slot's volume, and answer on
    /// `done` once the restack says the old stack's work has settled (or at once with the
    /// error, the old channel kept).
    Restack {
        /// The slot.
        vol: usize,
        /// The volume with its new stack.
        volume: Arc<Volume>,
        /// What to do on this reactor.
        how: Box<dyn super::Restack>,
        /// Where the outcome goes.
        done: SyncSender<Result<(), String>>,
    },
    /// Stop connection `conn` cleanly ([`super::Conn::stop`]: finish what is in flight, take
    /// nothing new, close) if it is still the one registered as host `host_id` (a key may
    /// have been reused since the registry was read).
    Disconnect {
        /// The connection's key on this reactor.
        conn: u32,
        /// Its registration in the hosts registry.
        host_id: u64,
    },
    /// Counted and dropped (benchmarks and tests of the message path).
    Nop,
}

thread_local! {
    /// This thread runs a reactor loop (it must never wait for room in a mailbox).
    static REACTOR: Cell<bool> = const { Cell::new(false) };
    /// Messages this reactor thread could not deliver yet, in sending order.
    static HELD: RefCell<VecDeque<(Arc<Mailbox>, Msg)>> = const { RefCell::new(VecDeque::new()) };
    /// `HELD`'s length, kept with it: what every loop turn asks (`held`, `flush_held`) is one
    /// load, not a borrow of the queue.
    static HELD_N: Cell<usize> = const { Cell::new(0) };
}

/// Mark the calling thread as a reactor: its sends to a full mailbox are held, not waited for.
pub fn enter_reactor() {
    REACTOR.with(|r| r.set(true));
}

/// Deliver what this thread holds, in order, as far as the receivers have room. True when
/// something was delivered.
pub fn flush_held() -> bool {
    if HELD_N.with(Cell::get) == 0 {
        return false;
    }
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_empty() {
            return false;
        }
        let mut delivered = false;
        let mut blocked: Vec<*const Mailbox> = Vec::new();
        let mut rest = VecDeque::with_capacity(h.len());
        while let Some((m, msg)) = h.pop_front() {
            let ptr = Arc::as_ptr(&m);
            if blocked.contains(&ptr) {
                rest.push_back((m, msg));
                continue;
            }
            match m.queue.push(msg) {
                Ok(()) => {
                    delivered = true;
                    m.notify();
                }
                Err(msg) => {
                    blocked.push(ptr);
                    rest.push_back((m, msg));
                }
            }
        }
        *h = rest;
        HELD_N.with(|n| n.set(h.len()));
        delivered
    })
}

/// How many messages this thread holds.
pub fn held() -> usize {
    HELD_N.with(Cell::get)
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
        Self::with_capacity(MAILBOX_CAPACITY)
    }

    /// A new empty mailbox holding at most `capacity` messages.
    pub fn with_capacity(capacity: usize) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            queue: ArrayQueue::new(capacity.max(1)),
            sleeping: AtomicBool::new(false),
            eventfd,
        })
    }

    /// Deliver `msg`, waking the owner if it sleeps. On a reactor thread a full queue holds
    /// the message for [`flush_held`]; elsewhere the caller yields until there is room.
    pub fn send(self: &Arc<Self>, mut msg: Msg) {
        if REACTOR.with(Cell::get) {
            let held = HELD.with(|h| {
                let mut h = h.borrow_mut();
                if h.iter().any(|(m, _)| Arc::ptr_eq(m, self)) {
                    h.push_back((Arc::clone(self), msg));
                    HELD_N.with(|n| n.set(h.len()));
                    return None;
                }
                match self.queue.push(msg) {
                    Ok(()) => Some(()),
                    Err(msg) => {
                        h.push_back((Arc::clone(self), msg));
                        HELD_N.with(|n| n.set(h.len()));
                        None
                    }
                }
            });
            // Held or delivered: either way the owner is told (it may drain and make room).
            let _ = held;
            self.notify();
            return;
        }
        while let Err(m) = self.queue.push(msg) {
            msg = m;
            self.wake();
            std::thread::yield_now();
        }
        self.notify();
    }

    /// After a push: wake the owner if it announced it sleeps.
    fn notify(&self) {
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
        // Every turn asks, and nearly every time the queue is empty: `is_empty` (two loads)
        // says so without the full fence `ArrayQueue::pop` takes to say it. A message pushed
        // meanwhile is taken at the next turn, or stops the sleep (`prepare_sleep`), as one
        // pushed just after a `pop` always was.
        if self.queue.is_empty() {
            return None;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &Mailbox) -> Vec<usize> {
        let mut got = Vec::new();
        while let Some(msg) = m.pop() {
            if let Msg::Note {
                to: NoteTo::Conn(k),
                ..
            } = msg
            {
                got.push(k as usize);
            }
        }
        got
    }

    fn note(k: usize) -> Msg {
        Msg::Note {
            to: NoteTo::Conn(k as u32),
            note: Box::new(()),
        }
    }

    #[test]
    fn a_reactor_never_waits_for_a_full_mailbox_and_keeps_the_order() {
        // Two reactors each sending more than the other's queue holds, neither draining while
        // it sends: with waiting sends both would block for ever.
        let a = Arc::new(Mailbox::with_capacity(4).unwrap());
        let b = Arc::new(Mailbox::with_capacity(4).unwrap());
        let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
        // Both send everything before either drains.
        let sent = Arc::new(std::sync::Barrier::new(2));
        let sent2 = Arc::clone(&sent);
        let t = std::thread::spawn(move || {
            enter_reactor();
            for k in 0..10 {
                a2.send(note(k));
            }
            let held_here = held();
            sent2.wait();
            assert_eq!(held_here, 6, "what does not fit is held");
            // Wait until the other side drained its inbox, then deliver the rest.
            let mut got = Vec::new();
            while held() > 0 || got.len() < 10 {
                flush_held();
                got.extend(drain(&b2));
                std::thread::yield_now();
            }
            got
        });
        enter_reactor();
        for k in 100..110 {
            b.send(note(k));
        }
        let held_here = held();
        sent.wait();
        assert_eq!(held_here, 6);
        let mut got = Vec::new();
        while held() > 0 || got.len() < 10 {
            flush_held();
            got.extend(drain(&a));
            std::thread::yield_now();
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>(), "every message, in order");
        let theirs = t.join().unwrap();
        assert_eq!(theirs, (100..110).collect::<Vec<_>>());
    }

    #[test]
    fn a_held_message_keeps_later_ones_to_the_same_mailbox_behind_it() {
        let full = Arc::new(Mailbox::with_capacity(1).unwrap());
        let other = Arc::new(Mailbox::with_capacity(8).unwrap());
        std::thread::spawn(move || {
            enter_reactor();
            full.send(note(1));
            full.send(note(2)); // held
            other.send(note(7)); // another destination is not held back
            assert_eq!(drain(&other), vec![7]);
            assert_eq!(drain(&full), vec![1]);
            full.send(note(3)); // room now, but 2 is held: 3 must wait behind it
            assert_eq!(drain(&full), Vec::<usize>::new());
            assert!(flush_held());
            assert_eq!(drain(&full), vec![2]);
            assert!(flush_held());
            assert_eq!(drain(&full), vec![3]);
            assert_eq!(held(), 0);
        })
        .join()
        .unwrap();
    }
}
