//! The NBD front end (fixed newstyle negotiation; simple and structured replies).
//!
//! [`proto`] holds the wire format as pure functions; [`conn`] the per-connection state
//! machine that drives them from the reactor. docs/nbd.md describes what is supported.
//!
//! Exports ([`NbdExports`]) may be added and removed at run time (control socket). A
//! connection looks its export up during negotiation, under the table's read lock, and keeps
//! its own copy from then on: the I/O path takes no lock. Invariant: a connection enters
//! transmission (and registers as a host) only while holding the read lock and only if its
//! export is still in the table, so a removal (write lock) that finds no host of an export
//! knows no connection will ever use it. It does so before it queues any byte accepting the
//! export (`NBD_REP_ACK` to `NBD_OPT_GO`, the size and flags after `NBD_OPT_EXPORT_NAME`): an
//! export removed while a client negotiates is refused (`NBD_REP_ERR_UNKNOWN`, or a hang-up
//! for `EXPORT_NAME`, which has no error reply), never accepted and then dropped.

pub mod conn;
pub mod proto;

pub use conn::NbdConn;

use crate::runtime::{Acceptor, Conn};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A test hook run with an export's name (see [`NbdExports::set_negotiation_hook`]).
pub type NegotiationHook = Arc<dyn Fn(&str) + Send + Sync>;

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
    /// Added through the control socket (lasts until the daemon stops), not from the config.
    pub runtime: bool,
}

/// The daemon's NBD exports (see the module's invariant).
#[derive(Default)]
pub struct NbdExports {
    list: RwLock<Vec<NbdExport>>,
    /// Test hook (see [`NbdExports::set_negotiation_hook`]).
    hook: Mutex<Option<NegotiationHook>>,
}

impl NbdExports {
    /// A table holding `exports`.
    pub fn new(exports: Vec<NbdExport>) -> Self {
        Self {
            list: RwLock::new(exports),
            hook: Mutex::default(),
        }
    }

    /// The table, for reading (off the I/O path).
    pub fn read(&self) -> RwLockReadGuard<'_, Vec<NbdExport>> {
        // Every change is one push or one remove: a poisoned table is still whole.
        self.list.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The table, for changing (control socket).
    pub fn write(&self) -> RwLockWriteGuard<'_, Vec<NbdExport>> {
        self.list.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of every export.
    pub fn snapshot(&self) -> Vec<NbdExport> {
        self.read().clone()
    }

    /// Test hook: `hook` runs, on the connection's reactor, when a connection has chosen an
    /// export (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`) and before it checks the export is still
    /// there and enters transmission, the window a removal through the control socket can
    /// fall into. A hook that blocks stalls that reactor.
    pub fn set_negotiation_hook(&self, hook: Option<NegotiationHook>) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// Run the test hook, if any, for export `name`.
    fn negotiation_hook(&self, name: &str) {
        let hook = self.hook.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            h(name);
        }
    }
}

/// The NBD listeners' acceptor: every accepted socket is a session over the daemon's exports.
pub struct NbdAcceptor {
    exports: Arc<NbdExports>,
}

impl NbdAcceptor {
    /// An acceptor serving `exports`.
    pub fn new(exports: Arc<NbdExports>) -> Self {
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
