//! NVMe over Fabrics, TCP transport: the target side (`docs/nvmf.md`).
//!
//! - [`pdu`]: NVMe/TCP PDUs as pure parsers and encoders (fuzzed by `datapath/fuzz`).
//! - [`cmd`]: SQE/CQE layouts, status codes, Identify / log-page / discovery builders.
//! - [`ctrl`]: subsystems, the controller registry and ANA groups.
//! - [`conn`]: one queue pair (one TCP connection) as a reactor connection.
//!
//! Model: everything in [`NvmfShared`] is built before the reactors start. Subsystems and
//! listener addresses are read-only; the controller registry is locked only on the
//! Connect/teardown path; ANA states are atomics.

pub mod cmd;
pub mod conn;
pub mod ctrl;
pub mod pdu;

pub use conn::NvmfConn;
use ctrl::{AnaGroups, Registry, Subsystem};
use std::net::SocketAddr;

/// Prefix of the NQN of a default per-volume subsystem: `nqn.2026-11.io.twinblk:<volume>`.
pub const DEFAULT_NQN_PREFIX: &str = "nqn.2026-11.io.twinblk:";

/// Daemon-wide NVMe-oF state.
pub struct NvmfShared {
    /// Subsystems (the discovery subsystem is implicit).
    pub subsystems: Vec<Subsystem>,
    /// Addresses NVMe/TCP listens on (bound addresses), for the discovery log.
    pub listen: Vec<SocketAddr>,
    /// Live controllers.
    pub registry: Registry,
    /// ANA group states (group 1 holds every namespace).
    pub ana: AnaGroups,
}

impl NvmfShared {
    /// No subsystems, no listeners.
    pub fn empty() -> Self {
        Self {
            subsystems: Vec::new(),
            listen: Vec::new(),
            registry: Registry::default(),
            ana: AnaGroups::new(1),
        }
    }

    /// The subsystem named `nqn`.
    pub fn find(&self, nqn: &[u8]) -> Option<usize> {
        self.subsystems.iter().position(|s| s.nqn.as_bytes() == nqn)
    }
}
