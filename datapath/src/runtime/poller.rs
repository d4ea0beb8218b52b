//! Pollers: a layer's own work on a reactor, called every loop turn (SPDK's `spdk_poller`).
//!
//! Model: a layer that needs more than one request at a time (timers, its own device
//! operations, a network link, answering requests other reactors handed over) registers a
//! [`PollerSource`] with the runtime; every reactor asks each source once, at start, whether
//! it runs a poller there. A poller reaches its volume's channel through [`PollCx::chans`]
//! (its layer downcasts it), and tells the reactor what to do through the context: complete a
//! request to the reactor that issued it, start a connection, wake a connection. Its
//! [`Poller::deadline`] bounds how long the reactor may sleep.
//!
//! The runtime knows nothing of what a poller does: the mirror engine is one, the CDP flusher
//! will be another.

use super::conn::Conn;
use crate::bdev::Channel;
use crate::uring::{Errno, IoCx, IoTag};
use std::time::Instant;

/// A finished request to deliver: the issuing reactor, its tag, the outcome.
pub type Completion = (u32, IoTag, Result<(), Errno>);

/// A read's data to deliver to its owner on the poller's reactor ([`PollCx::complete_read`]).
pub type ReadData = (IoTag, Vec<u8>);

/// What a poller may touch and ask for.
pub struct PollCx<'a> {
    /// The reactor's ring.
    pub io: &'a mut IoCx,
    /// This reactor's channel to every volume.
    pub chans: &'a mut [Box<dyn Channel>],
    /// The time this turn's pollers run at.
    pub now: Instant,
    /// The reactor is stopping.
    pub stopping: bool,
    pub(super) completions: &'a mut Vec<Completion>,
    pub(super) reads: &'a mut Vec<ReadData>,
    pub(super) spawned: &'a mut Vec<Box<dyn Conn>>,
    pub(super) wakes: &'a mut Vec<u32>,
}

impl PollCx<'_> {
    /// Deliver a finished request to its connection (on this reactor or another).
    pub fn complete(&mut self, from: u32, tag: IoTag, result: Result<(), Errno>) {
        self.completions.push((from, tag, result));
    }

    /// Deliver a read's data to its owner on this reactor (a read a layer held and then
    /// served from a device that answered it at once: the owner gets it as a device
    /// completion with this data). The vector is recycled after the delivery.
    pub fn complete_read(&mut self, tag: IoTag, data: Vec<u8>) {
        self.reads.push((tag, data));
    }

    /// Every finished request of `done`, drained.
    pub fn complete_all(&mut self, done: &mut Vec<Completion>) {
        self.completions.append(done);
    }

    /// Start `conn` on this reactor (after the pollers of this turn ran).
    pub fn spawn(&mut self, conn: Box<dyn Conn>) {
        self.spawned.push(conn);
    }

    /// Give connection `key` a [`Conn::flush`] at the end of this turn.
    pub fn wake(&mut self, key: u32) {
        self.wakes.push(key);
    }
}

/// A poller's answer after a turn that did work ([`Poller::after_work`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterWork {
    /// Not answered: the reactor submits the turn's SQEs and runs the next turn, as it did
    /// before it asked.
    Unknown,
    /// Its next poll has work: the reactor runs the next turn before it sleeps, and may leave
    /// this turn's SQEs to that turn's enter.
    Work,
    /// Nothing for the next turn: the reactor may sleep, not past this deadline.
    Sleep(Option<Instant>),
}

/// A layer's per-reactor work.
pub trait Poller {
    /// One turn's work; true when it did any.
    fn poll(&mut self, cx: &mut PollCx<'_>) -> bool;
    /// The latest moment the reactor may sleep until, for work that must not wait for the
    /// reactor's longest sleep (10 ms while it runs pollers); `None`: none. Periodic work
    /// should not give its next due time here but run at the first turn after it: a short
    /// timeout on every wait costs far more than the work (see the mirror's poller).
    fn deadline(&self, chans: &mut [Box<dyn Channel>], now: Instant) -> Option<Instant>;
    /// Asked after a turn that did work, before the reactor sleeps at once instead of running
    /// one more turn to find nothing: [`AfterWork::Work`] when this poller's next
    /// [`Poller::poll`] has work that must not wait for the reactor's next wake-up (a
    /// completion, a wake, a message to send, something its state changed for during the
    /// turn's later steps); else [`AfterWork::Sleep`] with what [`Poller::deadline`] would
    /// say. The default, [`AfterWork::Unknown`], keeps the reactor's loop as it was without
    /// this question.
    fn after_work(&self, _chans: &mut [Box<dyn Channel>], _now: Instant) -> AfterWork {
        AfterWork::Unknown
    }
    /// While stopping: this poller still serves other reactors' requests (the reactor keeps
    /// running until every reactor has drained).
    fn busy(&self, chans: &mut [Box<dyn Channel>]) -> bool;
    /// The stop deadline passed: fail what still waits.
    fn abort(&mut self, chans: &mut [Box<dyn Channel>]);
    /// Nothing to do until a connection on this reactor gives it some (no periodic work,
    /// nothing waiting: the mirror's `HeldReadPoller` holding no read): the reactor then runs
    /// as if it had no such poller (its sleeps unbounded, its old loop after a working turn,
    /// [`Poller::after_work`] and [`Poller::deadline`] not asked for it alone). Asked before
    /// each sleep, after the turn's work, so a poller given work in a turn is awake when the
    /// reactor decides how long to sleep. The default: never dormant.
    fn dormant(&self, _chans: &mut [Box<dyn Channel>]) -> bool {
        false
    }
    /// Its layer left the volume's stack (a run-time restack): the reactor drops it. Asked
    /// after each restack on the reactor.
    fn retired(&self, _chans: &mut [Box<dyn Channel>]) -> bool {
        false
    }
}

/// Registered with the runtime by a layer: makes the layer's poller on the reactors that need
/// one.
pub trait PollerSource: Send + Sync {
    /// The poller reactor `reactor` runs for this source, if any (called on that reactor
    /// after its channels are open).
    fn poller_for(&self, reactor: usize) -> Option<Box<dyn Poller>>;
}
