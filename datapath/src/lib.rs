//! twinblk: a userspace, SPDK-style block target.
//!
//! # Architecture in a page
//!
//! ```text
//!  initiators ──TCP──> listener (reactor 0 accepts, round-robin hand-off by mailbox)
//!                        │ the listener's acceptor builds the connection (NBD, NVMe/TCP, iSCSI, link)
//!          ┌─────────────┴──────────────┐
//!      reactor 0 (core a)          reactor 1 (core b)        one pinned thread per core,
//!      io_uring + buffer pool      io_uring + buffer pool    each owning its ring, buffers,
//!      connections, pollers        connections, pollers      connections and channels
//!                   v                           v
//!      channel(vol) per reactor ──> volume stack: [mirror >] [cdp >] [errinj >] base
//!                                    the mirror's engine runs on the volume's home reactor;
//!                                    other reactors hand it updates by mailbox
//! ```
//!
//! Modules, bottom first; each imports only from those above it in this list (the test
//! `layering::no_module_imports_one_above_it` reads every file's `crate::` paths):
//! - [`checksum`]: CRC32C, for every format, wire and digest.
//! - [`uring`]: the only place SQEs are built; the in-flight table of device operations; the
//!   per-reactor pools of aligned, registered buffers ([`uring::buf`]); scatter lists for
//!   socket sends ([`uring::iov`]).
//! - [`bdev`]: the block-device interface, its devices (`malloc`, `file`, `errinj`, and
//!   `cached`: a file behind a simulated volatile cache, for power-loss tests), and
//!   [`bdev::volume`]: a named stack of layers with its published path state.
//! - [`runtime`]: reactors, connections, pollers, acceptors, services, mailboxes, counters;
//!   knows no protocol and no layer.
//! - [`transport`]: sockets (TCP today; RDMA and TLS later): a connection's send queue and
//!   lifecycle flags, shared by every front end; the payload cursor of peers' messages.
//! - [`layer`]: devices that wrap a replica and add a service: the two-site mirror, and under
//!   it continuous data protection (the CDP journal; point-in-time views).
//! - [`frontend`]: protocols initiators speak (NBD, NVMe over Fabrics/TCP, iSCSI).
//! - [`control`]: typed configuration (file, CLI) and the JSON-RPC control socket.
//! - [`daemon`]: ties them together; `twinblk demo`.
//!
//! Invariants that hold everywhere: no lock or allocation per I/O on the data path (the
//! control plane, connection setup and reservation changes may take locks); SQEs are queued
//! during a reactor turn and submitted together with at most one `io_uring_enter` per turn (a
//! connection's replies leave in one send per turn; the enter may also sleep, after a turn
//! that found no work or, on a reactor with pollers, after one that left nothing for the next;
//! a turn whose pollers have work for the next leaves its SQEs to that turn's enter), and a
//! completion handed to another reactor costs an eventfd write
//! only when that reactor sleeps; a connection and its I/O live on one reactor; every buffer
//! handed to the kernel is owned by the in-flight table (or its connection) until its
//! completion (a mirror link's payloads: by the references its batch in flight holds); a mirrored volume's updates are ordered by one engine on one reactor per site.

pub mod checksum;

pub mod uring;

pub mod bdev;

pub mod runtime;

pub mod transport;

pub mod layer;

pub mod frontend;

pub mod control;

pub mod daemon;

pub use control::config::Config;
pub use daemon::Daemon;
