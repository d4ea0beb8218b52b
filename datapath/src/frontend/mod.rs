//! Front ends: the protocols initiators speak (NBD, NVMe over Fabrics/TCP, iSCSI).
//!
//! Model: each front end registers an acceptor for its listeners with the runtime
//! ([`crate::runtime::Acceptor`]) and gets its own shared state (exports, subsystems,
//! controllers, reservations) when the daemon builds it; its connections keep a handle on that
//! state. Front ends read a volume's path state ([`crate::bdev::volume::PathState`]), turn it
//! into what their host sees with the one shared mapping ([`crate::bdev::host_path`]: the host
//! list, looked up once per session or controller) and map it to their own vocabulary.
//! Nothing here is known to the runtime or the layers below.

pub mod iscsi;
pub mod nbd;
pub mod nvmf;
