//! The poller of an error-injecting layer's slow updates (`bdev::errinj`, `slow_range`): on
//! each reactor it sends on the updates whose wait is over, and completes those that finish at
//! once to the reactor's own callers (an update is held by the channel of the reactor it was
//! issued on). The error-injecting layer sits with the block devices, below the runtime, so
//! its poller lives here; the daemon registers one for each volume configured with
//! `slow_range`.

use crate::bdev::errinj::ErrInjChannel;
use crate::bdev::{Channel, find_layer};
use crate::runtime::{PollCx, Poller, PollerSource};
use crate::uring::{Errno, IoTag};
use std::time::Instant;

/// Makes the poller of volume `vol`'s slow updates on every reactor.
pub struct SlowUpdates {
    /// The volume's index.
    pub vol: usize,
}

impl PollerSource for SlowUpdates {
    fn poller_for(&self, _reactor: usize) -> Option<Box<dyn Poller>> {
        Some(Box::new(SlowPoller {
            vol: self.vol,
            done: Vec::new(),
        }))
    }
}

struct SlowPoller {
    vol: usize,
    /// Finished at once, to complete (also what an abort failed).
    done: Vec<(IoTag, Result<(), Errno>)>,
}

fn channel(chans: &mut [Box<dyn Channel>], vol: usize) -> Option<&mut ErrInjChannel> {
    find_layer::<ErrInjChannel>(&mut **chans.get_mut(vol)?)
}

impl Poller for SlowPoller {
    fn poll(&mut self, cx: &mut PollCx<'_>) -> bool {
        if let Some(c) = channel(cx.chans, self.vol) {
            c.release_due(cx.io, cx.now, &mut self.done);
        }
        let worked = !self.done.is_empty();
        let me = cx.io.reactor as u32;
        for (tag, r) in self.done.drain(..) {
            cx.complete(me, tag, r);
        }
        worked
    }

    fn deadline(&self, chans: &mut [Box<dyn Channel>], _now: Instant) -> Option<Instant> {
        channel(chans, self.vol)?.next_due()
    }

    fn busy(&self, chans: &mut [Box<dyn Channel>]) -> bool {
        channel(chans, self.vol).is_some_and(|c| c.next_due().is_some())
    }

    fn abort(&mut self, chans: &mut [Box<dyn Channel>]) {
        if let Some(c) = channel(chans, self.vol) {
            c.fail_waiting(&mut self.done);
        }
    }
}
