//! twinblk: a userspace, SPDK-style block target.
//!
//! # Architecture in a page
//!
//! ```text
//!  initiators ──TCP──> listener (reactor 0 accepts, round-robin hand-off by mailbox)
//!                        │
//!          ┌─────────────┴──────────────┐
//!      reactor 0 (core a)          reactor 1 (core b)        one pinned thread per core,
//!      io_uring + buffer pool      io_uring + buffer pool    each owning its ring, buffers,
//!      connections ─┐              connections ─┐            connections and channels
//!                   v                           v
//!      channel(vol) per reactor ──> volume stack (errinj?) ──> base device (malloc | uring)
//! ```
//!
//! - [`reactor`]: the run-to-completion loop, wait policies, mailboxes, counters.
//! - [`uring`]: the only place SQEs are built; the in-flight table of device operations.
//! - [`buf`]: per-reactor pools of aligned, registered buffers.
//! - [`bdev`]: the block-device interface and its layers (`malloc`, `uring`, `errinj`).
//! - [`volume`]: a named stack of block-device layers.
//! - [`frontend`]: protocols initiators speak (NBD, NVMe over Fabrics/TCP).
//! - [`config`]: typed configuration shared by file, CLI and control socket.
//! - [`control`]: the JSON-RPC control socket.
//! - [`server`]: the daemon that ties them together.
//!
//! Invariants that hold everywhere: no lock, allocation or syscall per I/O on the data path
//! beyond the one `io_uring_enter` per loop turn; a connection and its I/O live on one reactor;
//! every buffer handed to the kernel is owned by the in-flight table until its completion.

pub mod bdev;
pub mod control;
pub mod daemon;
pub mod frontend;
pub mod layer;
pub mod runtime;
pub mod transport;
pub mod uring;

pub use control::config::Config;
pub use daemon::Daemon;
