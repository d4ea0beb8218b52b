//! NVMe over Fabrics, TCP transport: the target side (`docs/nvmf.md`).
//!
//! - [`pdu`]: NVMe/TCP PDUs as pure parsers and encoders (fuzzed by `datapath/fuzz`).
//! - [`cmd`]: SQE/CQE layouts, status codes, Identify / log-page / discovery builders.
//! - [`ctrl`]: subsystems, the controller registry and ANA groups.
//! - [`conn`]: one queue pair (one TCP connection) as a reactor connection, split by concern
//!   (queue core, data transfer, fabrics, admin, I/O, fused commands, reservations).
//! - [`status`]: the one table from device errors (and path states) to NVMe statuses.
//! - [`atomic`]: per-volume atomic sections: fused Compare+Write run by the volume's home
//!   reactor, excluded from every other NVMe/TCP media access by a lock-free handshake.
//! - [`resv`]: reservations per namespace, persisted in one state file per subsystem.
//!
//! Model: everything in [`NvmfShared`] is built before the reactors start and handed to each
//! connection at construction. Listener addresses are read-only; the subsystem table may
//! change at run time (control socket) under its `RwLock`, taken only at Connect, by the
//! discovery log page, by the control socket and once per namespace change by each queue,
//! never per I/O: a queue keeps an `Arc<Subsystem>` (immutable; a change replaces it in the
//! table), and takes the new one when its copy's namespace generation is no longer the
//! subsystem's (one atomic load per command: `ctrl::Subsystem::stale`). A queue
//! registers as a host under the table's read lock, and only while its subsystem is still
//! there, so a removal that finds no host of a subsystem knows none will connect to it; the controller
//! registry is locked only on the Connect/teardown path; the reservation lock is taken only by
//! reservation commands and when a namespace's reservation version moved. ANA: one group per
//! volume (id = volume index + 1) whose state is the volume's published path state
//! (`bdev::volume::PathCell`, written by the volume's top layer), read lock-free.

pub mod atomic;
pub mod cmd;
pub mod conn;
pub mod ctrl;
pub mod pdu;
pub mod resv;
pub mod status;

use crate::bdev::host_path::HostSites;
pub use atomic::Note;
pub use conn::NvmfConn;
use ctrl::{Registry, Subsystem};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Prefix of the NQN of a default per-volume subsystem: `nqn.2026-11.io.twinblk:<volume>`.
pub const DEFAULT_NQN_PREFIX: &str = "nqn.2026-11.io.twinblk:";

/// Daemon-wide NVMe-oF state.
pub struct NvmfShared {
    /// Subsystems (the discovery subsystem is implicit); see the module's model.
    pub subsystems: RwLock<Vec<Arc<Subsystem>>>,
    /// Addresses NVMe/TCP listens on (bound addresses), for the discovery log.
    pub listen: Vec<SocketAddr>,
    /// Live controllers.
    pub registry: Registry,
    /// The discovery log's port id of the first listener (the others follow): distinct per
    /// site, since a host discovering both sites must see two ports.
    pub first_port_id: u16,
    /// Directory of the reservation state files (`None`: reservations are not persisted).
    pub state_dir: Option<PathBuf>,
    /// Atomic sections per volume (built on first use, when the reactors exist).
    sections: OnceLock<atomic::Sections>,
    /// Changes of the subsystem table (each [`Self::subs_mut`]): the discovery log's GENCTR
    /// moves with it, so a host reading the log in parts sees that it changed.
    generation: std::sync::atomic::AtomicU64,
    /// The runtime service index of the atomic-section executors ([`atomic::HomeService`]).
    pub home_service: u32,
    /// Where hosts are (the configuration's host list): a controller looks its host NQN up
    /// once, at Connect, for the ANA states it reports (`bdev::host_path`).
    pub host_sites: Arc<HostSites>,
}

impl NvmfShared {
    /// No subsystems, no listeners.
    pub fn empty() -> Self {
        Self {
            subsystems: RwLock::new(Vec::new()),
            listen: Vec::new(),
            registry: Registry::default(),
            first_port_id: 1,
            state_dir: None,
            sections: OnceLock::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
            home_service: 0,
            host_sites: Arc::default(),
        }
    }

    /// The atomic sections (`None` before any reactor exists).
    pub fn sections(&self, shared: &crate::runtime::Shared) -> Option<&atomic::Sections> {
        if shared.mailboxes.is_empty() {
            return None;
        }
        Some(self.sections.get_or_init(|| {
            atomic::Sections::new(
                shared.volumes.capacity(),
                shared.mailboxes.clone(),
                self.home_service,
            )
        }))
    }

    /// Load every subsystem's reservation state from `dir` and persist changes there.
    pub fn load_reservations(&mut self, dir: PathBuf) -> Result<(), resv::ResvError> {
        std::fs::create_dir_all(&dir).map_err(|source| resv::ResvError::Io {
            path: dir.clone(),
            source,
        })?;
        for s in self.subs().iter() {
            s.resv.load(&dir, &s.nqn)?;
        }
        self.state_dir = Some(dir);
        Ok(())
    }

    /// The subsystem table, for reading (never per I/O).
    pub fn subs(&self) -> RwLockReadGuard<'_, Vec<Arc<Subsystem>>> {
        // Every change is one assignment, push or remove: a poisoned table is still whole.
        self.subsystems.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The subsystem table, for changing (control socket).
    pub fn subs_mut(&self) -> RwLockWriteGuard<'_, Vec<Arc<Subsystem>>> {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.subsystems.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The discovery log's generation counter (GENCTR): 1 at the start, more after every
    /// change of the subsystem table.
    pub fn discovery_generation(&self) -> u64 {
        1 + self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The subsystem named `nqn`, as it is now.
    pub fn find(&self, nqn: &[u8]) -> Option<Arc<Subsystem>> {
        self.subs()
            .iter()
            .find(|s| s.nqn.as_bytes() == nqn)
            .cloned()
    }
}

/// The NVMe/TCP listeners' acceptor: every accepted socket is a queue pair.
pub struct NvmfAcceptor {
    nv: Arc<NvmfShared>,
}

impl NvmfAcceptor {
    /// An acceptor serving the subsystems of `nv`.
    pub fn new(nv: Arc<NvmfShared>) -> Self {
        Self { nv }
    }
}

impl crate::runtime::Acceptor for NvmfAcceptor {
    fn proto(&self) -> &'static str {
        "nvmf"
    }

    fn accept(&self, fd: OwnedFd) -> Box<dyn crate::runtime::Conn> {
        Box::new(NvmfConn::new(fd, Arc::clone(&self.nv)))
    }
}
