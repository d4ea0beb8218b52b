//! Connections: what the reactor drives, and what a connection may touch while it runs.
//!
//! Model: a [`Conn`] is anything with events on a reactor: a front end's queue (a TCP
//! connection), a layer's network link, or a service without a socket (a front end's
//! per-reactor executor). The reactor calls it for its socket completions, its block-device
//! completions, notes addressed to it, and once at the end of every turn in which it had
//! events ([`Conn::flush`]).
//!
//! Invariants: a connection lives on one reactor; it is dropped only once it reports
//! [`Conn::done`], so nothing in flight ever names a connection that is gone.

use super::Shared;
use super::stats::{Counters, VolCounters};
use crate::bdev::Channel;
use crate::bdev::volume::Volume;
use crate::uring::{Errno, IoCx};
use std::any::Any;
use std::sync::Arc;

/// A message for one connection from another (or the same) reactor: opaque to the runtime,
/// the connection downcasts it to its own type.
pub type Note = Box<dyn Any + Send>;

/// What a connection may touch while it handles an event.
pub struct Env<'a> {
    /// The reactor's ring, pool and in-flight table.
    pub io: &'a mut IoCx,
    /// This reactor's channel to every volume slot (index = volume index; an empty slot's
    /// channel fails everything).
    pub chans: &'a mut [Box<dyn Channel>],
    /// This reactor's copy of the volume table (index = volume index; `None`: empty slot).
    /// Read per I/O: no lock, no atomic.
    pub vols: &'a [Option<Arc<Volume>>],
    /// Daemon-wide read-only runtime state.
    pub shared: &'a Shared,
    /// This reactor's counters.
    pub counters: &'a mut Counters,
    /// This reactor's per-volume counters (index = volume index).
    pub vol_counters: &'a mut [VolCounters],
    /// The connection's key (for user_data and I/O tags).
    pub key: u32,
    /// This reactor's id (index in [`Shared::mailboxes`]: where notes to this connection go).
    pub reactor: usize,
    /// The reactor is stopping: take no new requests.
    pub stopping: bool,
}

/// A connection driven by the reactor.
pub trait Conn {
    /// Called once on the owning reactor: queue the first receive/send.
    fn start(&mut self, env: &mut Env<'_>);
    /// The receive queued under this connection's key completed.
    fn on_recv(&mut self, env: &mut Env<'_>, res: i32);
    /// The send queued under this connection's key completed.
    fn on_send(&mut self, env: &mut Env<'_>, res: i32);
    /// A block-device operation finished; `data` holds read data (empty otherwise).
    fn on_io(&mut self, slot: u32, result: Result<(), Errno>, data: &[u8]);
    /// The volume (slot in the reactor's table) whose device operation request `slot` is
    /// waiting for, when the connection knows it: a read the device fails in its completion
    /// is first shown to that volume's channel ([`crate::bdev::Channel::read_failed`]).
    fn volume_of(&self, _slot: u32) -> Option<usize> {
        None
    }
    /// End of a turn in which this connection had events: send what is ready, re-arm.
    fn flush(&mut self, env: &mut Env<'_>);
    /// Server shutdown: finish in-flight requests, take no more, then close.
    fn stop(&mut self, env: &mut Env<'_>);
    /// Shutdown deadline passed: cancel socket I/O and close as soon as device I/O drains.
    fn abort(&mut self, env: &mut Env<'_>);
    /// Nothing of this connection is in flight and it is closed.
    fn done(&self) -> bool;
    /// A one-line account of what the connection still waits for (logged when it is aborted).
    fn describe(&self) -> String {
        String::new()
    }
    /// A note from another reactor (or this one) addressed to this connection.
    fn on_note(&mut self, _env: &mut Env<'_>, _note: Note) {}
    /// The connection's registration in the hosts registry (`HostHandle::id`), while it has
    /// one: [`super::Msg::Disconnect`] stops only the connection it names.
    fn host_id(&self) -> Option<u64> {
        None
    }
}

impl Env<'_> {
    /// The volume in slot `i` on this reactor (`None`: empty slot).
    pub fn vol(&self, i: usize) -> Option<&Arc<Volume>> {
        self.vols.get(i).and_then(Option::as_ref)
    }
}
