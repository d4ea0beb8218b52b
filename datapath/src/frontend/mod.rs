//! Front ends: the protocols initiators speak, and the daemon-wide state they read.
//!
//! Model: a listener belongs to one protocol; the acceptor (reactor 0) hands each accepted
//! socket to a reactor, which builds the protocol's connection with [`new_conn`]. Everything
//! here is read-only once the reactors start.

pub mod nbd;
pub mod nvmf;

use crate::bdev::volume::Volume;
use crate::runtime::{Conn, Mailbox, ReactorStats};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Protocols a listener can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// The NBD protocol (fixed newstyle).
    Nbd,
    /// The mirror's replication links (docs/mirror-protocol.md).
    Mirror,
    /// NVMe over Fabrics, TCP transport.
    Nvmf,
}

/// A listening socket.
pub struct Listener {
    /// The socket (non-blocking, listening).
    pub fd: OwnedFd,
    /// Its protocol.
    pub proto: Proto,
    /// The address it is bound to.
    pub addr: SocketAddr,
}

/// An NBD export: a volume under a name.
#[derive(Clone, Debug)]
pub struct NbdExport {
    /// Export name clients ask for.
    pub name: String,
    /// Index into [`Shared::volumes`].
    pub volume: usize,
    /// Refuse writes.
    pub read_only: bool,
    /// Free text shown by clients.
    pub description: String,
}

/// Daemon-wide state shared read-only by all reactors.
pub struct Shared {
    /// Volumes (index = channel index on every reactor).
    pub volumes: Vec<Arc<Volume>>,
    /// NBD exports.
    pub nbd_exports: Vec<NbdExport>,
    /// Listening sockets (accepted on reactor 0).
    pub listeners: Vec<Listener>,
    /// Every reactor's mailbox (index = reactor id).
    pub mailboxes: Vec<Arc<Mailbox>>,
    /// Every reactor's published counters.
    pub stats: Vec<Arc<ReactorStats>>,
    /// Reactors that have not yet drained their own connections while stopping; a reactor
    /// that runs mirror engines keeps serving other reactors' requests until this is zero.
    pub running: std::sync::atomic::AtomicUsize,
    /// NVMe-oF subsystems, controllers and atomic sections (each NVMe/TCP connection holds
    /// its own reference, given at construction).
    pub nvmf: Arc<nvmf::NvmfShared>,
}

/// Build the connection object for a socket accepted on `listener`.
pub fn new_conn(shared: &Shared, listener: usize, fd: OwnedFd) -> Box<dyn Conn> {
    match shared.listeners[listener].proto {
        Proto::Nbd => Box::new(nbd::NbdConn::new(fd)),
        Proto::Mirror => Box::new(crate::layer::mirror::link::LinkConn::accepted(fd)),
        Proto::Nvmf => Box::new(nvmf::NvmfConn::new(fd, Arc::clone(&shared.nvmf))),
    }
}
