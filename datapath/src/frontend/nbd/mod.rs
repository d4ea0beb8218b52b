//! The NBD front end (fixed newstyle negotiation; simple and structured replies).
//!
//! [`proto`] holds the wire format as pure functions; [`conn`] the per-connection state
//! machine that drives them from the reactor. docs/nbd.md describes what is supported.

pub mod conn;
pub mod proto;

pub use conn::NbdConn;

use crate::runtime::{Acceptor, Conn};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// An NBD export: a volume under a name.
#[derive(Clone, Debug)]
pub struct NbdExport {
    /// Export name clients ask for.
    pub name: String,
    /// Index into the runtime's volumes.
    pub volume: usize,
    /// Refuse writes.
    pub read_only: bool,
    /// Free text shown by clients.
    pub description: String,
}

/// The NBD listeners' acceptor: every accepted socket is a session over the daemon's exports.
pub struct NbdAcceptor {
    exports: Arc<Vec<NbdExport>>,
}

impl NbdAcceptor {
    /// An acceptor serving `exports`.
    pub fn new(exports: Arc<Vec<NbdExport>>) -> Self {
        Self { exports }
    }
}

impl Acceptor for NbdAcceptor {
    fn proto(&self) -> &'static str {
        "nbd"
    }

    fn accept(&self, fd: OwnedFd) -> Box<dyn Conn> {
        Box::new(NbdConn::new(fd, Arc::clone(&self.exports)))
    }
}
