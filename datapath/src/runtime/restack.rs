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
//! step before the next). A layer that goes under another one (CDP under the mirror) changes
//! the stack at a depth ([`restack_at`]): the layers above keep their state and find the new
//! one through [`Channel::lower_box`].

use super::poller::Poller;
use crate::bdev::{Channel, NoChannel};
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

/// What a [`Restack::restack`] answers: the new channel, or the old one given back with why.
pub type Restacked = Result<Box<dyn Channel>, (Box<dyn Channel>, String)>;

/// Change the channel `depth` layers under `top` (0: `top` itself) with `f`, which gets that
/// channel and gives back what takes its place (on error: the channel it got, unchanged).
/// The layers above keep their state. On error `top` comes back unchanged.
pub fn restack_at(
    mut top: Box<dyn Channel>,
    depth: usize,
    f: impl FnOnce(Box<dyn Channel>) -> Restacked,
) -> Restacked {
    if depth == 0 {
        return f(top);
    }
    let Some(slot) = box_at(&mut *top, depth) else {
        return Err((
            top,
            format!("the volume's stack is not {depth} layer(s) deep"),
        ));
    };
    let cur = std::mem::replace(slot, Box::new(NoChannel));
    match f(cur) {
        Ok(new) => {
            *slot = new;
            Ok(top)
        }
        Err((cur, e)) => {
            *slot = cur;
            Err((top, e))
        }
    }
}

/// The box holding the channel `depth` (at least 1) layers under `c`.
fn box_at(c: &mut dyn Channel, depth: usize) -> Option<&mut Box<dyn Channel>> {
    let b = c.lower_box()?;
    if depth <= 1 {
        Some(b)
    } else {
        box_at(&mut **b, depth - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::{Restacked, restack_at};
    use crate::bdev::errinj::{ErrInjDevice, FaultRange};
    use crate::bdev::malloc::MallocDevice;
    use crate::bdev::{BlockDevice, Channel, NoChannel, Start};
    use crate::uring::{Errno, IoCx, IoTag};
    use std::sync::Arc;

    /// An error-injecting layer failing 4 KiB at `at` (none: `u64::MAX`) over `inner`.
    fn failing(inner: Arc<dyn BlockDevice>, at: u64) -> Arc<dyn BlockDevice> {
        let len = if at == u64::MAX { 0 } else { 4096 };
        Arc::new(ErrInjDevice::new(
            inner,
            FaultRange { offset: at, len },
            false,
        ))
    }

    fn write(io: &mut IoCx, c: &mut dyn Channel, at: u64) -> Start {
        c.write(io, IoTag::conn(1, 0), at, &[7u8; 4096], false)
    }

    /// A layer inserted two layers down acts there with the layers above unchanged; taken
    /// out again, the stack is as before; a depth the stack does not have, or a layer that
    /// refuses, leaves the stack whole.
    #[test]
    fn a_layer_goes_in_and_out_at_a_depth() {
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let base: Arc<dyn BlockDevice> = Arc::new(MallocDevice::new(1 << 20, 4096).unwrap());
        let dev = failing(failing(base, u64::MAX), 0);
        let top = dev.open_channel(&mut io).unwrap();
        let tiny: Arc<dyn BlockDevice> = Arc::new(MallocDevice::new(4096, 4096).unwrap());
        let layer = failing(tiny, 8192);
        let mut c = layer.open_channel(&mut io).unwrap();
        let Ok(mut top) = restack_at(top, 2, |inner| {
            *c.lower_box().unwrap() = inner;
            Ok(c)
        }) else {
            panic!("inserted")
        };
        let failed = Start::Done(Err(Errno::IO));
        assert_eq!(write(&mut io, &mut *top, 0), failed, "the top layer stays");
        assert_eq!(
            write(&mut io, &mut *top, 8192),
            failed,
            "the new layer acts"
        );
        assert_eq!(write(&mut io, &mut *top, 16384), Start::Done(Ok(())));
        let unwrap = |mut c: Box<dyn Channel>| -> Restacked {
            Ok(std::mem::replace(
                c.lower_box().unwrap(),
                Box::new(NoChannel),
            ))
        };
        let Ok(mut top) = restack_at(top, 2, unwrap) else {
            panic!("taken out")
        };
        assert_eq!(
            write(&mut io, &mut *top, 8192),
            Start::Done(Ok(())),
            "taken out"
        );
        assert_eq!(write(&mut io, &mut *top, 0), failed);
        let (top, e) = restack_at(top, 3, Ok).err().unwrap();
        assert!(e.contains("not 3 layer"), "{e}");
        let (mut top, e) = restack_at(top, 1, |c| Err((c, "no".into()))).err().unwrap();
        assert_eq!(e, "no");
        assert_eq!(write(&mut io, &mut *top, 0), failed, "the stack is whole");
        assert_eq!(write(&mut io, &mut *top, 8192), Start::Done(Ok(())));
    }
}
