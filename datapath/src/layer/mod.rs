//! Layers: block devices that wrap a volume's local replica and add a service to it
//! (the two-site mirror, the CDP journal).
//!
//! A layer implements [`crate::bdev::BlockDevice`] and [`crate::bdev::Channel`] like any
//! device, so front ends never know it is there. What a layer needs beyond one request at a
//! time (timers, its own device operations, a network link) it gets through the runtime's
//! generic hooks: a channel's poller, completions routed to the channel that issued them, and
//! connections it registers itself. Layers know nothing of the front ends above them.

pub mod cdp;
pub mod mirror;
pub mod slow;
#[cfg(test)]
pub mod testing;
