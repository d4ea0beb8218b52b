//! Restacking a served volume at run time: a layer inserted into or taken out of its stack
//! while hosts keep using it (CDP switched on or off through the control socket).
//!
//! Model: the control thread sends each reactor a [`super::Msg::Restack`] with a [`Restack`]
//! of its own. The reactor handles it between two requests (mailbox messages are drained
//! between turns' completions and pollers, never inside a request): it hands its current
//! channel to [`Restack::restack`], which wraps it into the new stack or unwraps it, installs
//! the result in place (same slot, same index), adds the poller the new stack needs, and
//! answers once [`Restack::settled`] says what the old stack started has finished (checked
//! every turn). Requests already started keep their channel state: the old channel is moved,
//! not reopened, so its in-flight operations complete as before.
//!
//! The runtime knows nothing of what a restack does; the layer's `Restack` decides the order
//! of the steps across reactors with the control thread (which waits for every answer of one
//! step before the next).

use super::poller::Poller;
use crate::bdev::Channel;
use crate::uring::IoCx;

/// One reactor's part of a run-time change of a volume's stack.
pub trait Restack: Send {
    /// Build this reactor's new channel from its current one `old`. On error give `old`
    /// back, unchanged, with the reason.
    #[allow(clippy::type_complexity)]
    fn restack(
        &mut self,
        io: &mut IoCx,
        reactor: usize,
        old: Box<dyn Channel>,
    ) -> Result<Box<dyn Channel>, (Box<dyn Channel>, String)>;

    /// The poller the new stack runs on this reactor, if any (asked once, after
    /// [`Restack::restack`] succeeded).
    fn poller(&mut self, _reactor: usize) -> Option<Box<dyn Poller>> {
        None
    }

    /// Whether what the old stack started on this reactor has finished (the reactor answers
    /// only then). `chan` is the volume's channel now.
    fn settled(&mut self, _io: &IoCx, _chan: &mut dyn Channel) -> bool {
        true
    }
}
