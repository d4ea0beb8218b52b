//! iSCSI target (RFC 7143), TCP: the front end hypervisors attach (`docs/iscsi.md`).
//!
//! - [`pdu`]: PDUs as pure parsers and encoders, digests, serial number arithmetic (fuzzed).
//! - [`login`]: the key=value text parser and operational parameter negotiation (fuzzed).
//! - [`scsi`]: the CDB decoder and sense data (fuzzed); [`pages`]: INQUIRY / VPD, mode pages,
//!   capacity, REPORT LUNS, ALUA target port groups, supported operation codes; [`prs`]:
//!   persistent reservations; [`reset`]: a logical unit reset reaching every session of the
//!   logical unit (the abort fan-out); [`spc2`]: RESERVE / RELEASE rules; [`xcopy`]: the EXTENDED COPY parameter list parser and the
//!   RECEIVE COPY RESULTS pages (fuzzed); [`alua`]: the SET TARGET PORT GROUPS parameter list.
//! - `conn`: one connection on a reactor: receive, dispatch, NOP, Text, Logout, Reject, CmdSN
//!   window and StatSN; `mcs`: the session its connections share (multiple connections per
//!   session); `session`: the login phase and task management;
//!   `task`: SCSI tasks, R2T / Data-Out / Data-In and execution against the volume's channel;
//!   `excl`: media accesses inside the volumes' atomic sections (COMPARE AND WRITE exclusion);
//!   `copy`: EXTENDED COPY runs, chunk by chunk through the volumes' channels.
//!
//! Model: everything in [`IscsiShared`] is built before the reactors start and read-only
//! afterwards (the TSIH counter is an atomic), except the target table, which the control
//! socket may change at run time under its `RwLock`: a target is immutable (a change replaces
//! it with a changed copy), a session keeps the `Arc<IscsiTarget>` it logged in to, and the
//! lock is taken only at login, by SendTargets and by the control socket, never per command.
//! A connection registers as a host under the read lock and only while its target is still in
//! the table, so a removal that finds no host of a target knows none will log in to it.
//!
//! Sessions (MC/S, `conn/mcs.rs`): a session has up to MaxConnections connections (the lower
//! of the initiator's offer and [`IscsiShared::max_connections`], by default
//! [`login::TARGET_MAX_CONNECTIONS`]), all on its home reactor (a
//! login naming its TSIH that was accepted elsewhere is handed over before it is answered). The
//! session state they share (CmdSN window, held commands, unit attentions, RESERVEs) lives in
//! that reactor's local table, so the I/O path takes no lock; the TSIH table
//! ([`IscsiShared::sessions`]) is a mutex taken only at login and when a session ends.
//! Volumes are reached through the reactor's channels, the same path NVMe/TCP and NBD take;
//! COMPARE AND WRITE goes to the NVMe-oF atomic-section executor of the volume's home reactor
//! (the path NVMe fused Compare+Write takes), so a mirrored volume's compare-and-write is
//! decided by its leader site and is atomic across both sites.
//!
//! ALUA: one target port group per site (id [`IscsiShared::tpg`], also the relative target
//! port id); its asymmetric access state is the volume's published path state
//! (`bdev::volume::PathCell`) as the session's initiator sees it (`bdev::host_path`: the host
//! list, looked up once at login), read lock-free per command; a change of it is reported once
//! to every session as a unit attention (ASYMMETRIC ACCESS STATE CHANGED; to a listed
//! initiator only when what it sees changed). Explicit ALUA: SET
//! TARGET PORT GROUPS asking for a group to be active/optimised is a planned switchover of
//! the volume's leadership to that group's site (`conn/alua.rs`, the control socket's
//! `mirror_switchover` steps, run on a helper thread).

pub mod alua;
pub mod chap;
mod conn;
pub mod login;
pub mod pages;
pub mod pdu;
pub mod prs;
pub mod reset;
pub mod scsi;
pub mod spc2;
pub mod xcopy;

pub use conn::{IscsiConn, SessEntry};

use crate::frontend::nvmf::NvmfShared;
use crate::runtime::{Acceptor, Conn};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Prefix of the name of a default per-volume target: `iqn.2026-11.io.twinblk:<volume>`.
pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-11.io.twinblk:";

/// A logical unit of a target.
#[derive(Clone, Debug)]
pub struct IscsiLun {
    /// LUN number.
    pub lun: u16,
    /// Index into the daemon's volumes.
    pub volume: usize,
    /// NAA designator (VPD 0x83).
    pub naa: [u8; 8],
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// Resets of the logical unit (LUN RESET, target resets) so far: every session reports a
    /// change once as a unit attention.
    pub resets: Arc<AtomicU64>,
    /// Persistent reservations and the RESERVE (6/10) holder: decided by a mirrored volume's
    /// leader site and installed at both (docs/iscsi.md).
    pub pr: Arc<prs::PrState>,
    /// I_T nexuses (`prs::nexus_id`) lost (an I_T NEXUS RESET, a session reinstatement, a
    /// TARGET COLD RESET) whose next session has not yet reported I_T NEXUS LOSS OCCURRED
    /// (SAM-5); taken at login only, at most
    /// [`NEXUS_LOSSES_KEPT`] (the oldest forgotten first).
    pub nexus_losses: Arc<std::sync::Mutex<Vec<[u8; 16]>>>,
}

/// I_T nexus losses remembered per logical unit for the nexus's next login.
pub const NEXUS_LOSSES_KEPT: usize = 64;

impl IscsiLun {
    /// LUN `lun` over volume index `volume` named `name`: its identifiers are derived from
    /// the volume's NVMe-oF identity (the NGUID of namespace 1 of the volume's default
    /// subsystem), which depends on the volume name only, so both sites of a mirrored volume
    /// report the same NAA and serial, and the same volume is recognisable across protocols.
    pub fn new(lun: u16, volume: usize, name: &str) -> Self {
        let g = crate::frontend::nvmf::cmd::nguid(
            &format!("{}{name}", crate::frontend::nvmf::DEFAULT_NQN_PREFIX),
            1,
        );
        let mut naa = [0u8; 8];
        naa.copy_from_slice(&g[8..16]);
        // NAA 3h: locally assigned (SPC-4 §7.8.6.6.3).
        naa[0] = 0x30 | (naa[0] & 0x0F);
        let serial: String = g[..8].iter().map(|b| format!("{b:02X}")).collect();
        let resets = Arc::new(AtomicU64::new(0));
        let pr = Arc::new(prs::PrState::default());
        pr.set_lu_resets(Arc::clone(&resets));
        Self {
            lun,
            volume,
            naa,
            serial,
            resets,
            pr,
            nexus_losses: Arc::default(),
        }
    }
}

/// An iSCSI target.
#[derive(Clone, Debug)]
pub struct IscsiTarget {
    /// Its iSCSI name (IQN).
    pub iqn: String,
    /// Logical units, by ascending LUN.
    pub luns: Vec<IscsiLun>,
    /// Initiator names allowed in (empty: any).
    pub allowed: Vec<String>,
    /// CHAP credentials (`None`: no authentication).
    pub chap: Option<chap::Chap>,
    /// Added through the control socket (lasts until the daemon stops), not from the config.
    pub runtime: bool,
}

impl IscsiTarget {
    /// I_T nexus `me` (`prs::nexus_id`) was lost: its next session reports I_T NEXUS LOSS
    /// OCCURRED once on each logical unit (SAM-5).
    pub fn note_nexus_loss(&self, me: [u8; 16]) {
        for l in &self.luns {
            let mut lost = l.nexus_losses.lock().unwrap_or_else(|e| e.into_inner());
            if !lost.contains(&me) {
                if lost.len() >= NEXUS_LOSSES_KEPT {
                    lost.remove(0);
                }
                lost.push(me);
            }
        }
    }

    /// Whether initiator `name` may log in.
    pub fn allows(&self, name: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|a| a == name)
    }
}

/// Daemon-wide iSCSI state.
pub struct IscsiShared {
    /// Targets (see the module's model).
    pub targets: RwLock<Vec<Arc<IscsiTarget>>>,
    /// Portals of this site (bound listener addresses), listed by SendTargets.
    pub portals: Vec<SocketAddr>,
    /// More portals SendTargets lists ("host:port", e.g. the other site's).
    pub extra_portals: Vec<String>,
    /// This site's target portal group tag, target port group and relative target port id.
    pub tpg: u16,
    /// The NVMe-oF front end's state: its atomic-section executors run COMPARE AND WRITE.
    pub nvmf: Arc<NvmfShared>,
    /// Next TSIH to hand out.
    pub next_tsih: AtomicU16,
    /// Normal sessions by TSIH: where a login adding a connection goes (`conn/mcs.rs`). Taken
    /// only at login and when a session ends, never per command.
    pub sessions: Mutex<HashMap<u16, SessEntry>>,
    /// Next session number to hand out (never 0): with [`Self::tpg`] and [`Self::incarnation`]
    /// a session's RESERVE reservation id (`spc2::res_id`).
    pub next_nexus: AtomicU64,
    /// This process's incarnation (random at start): a RESERVE held by a session of an earlier
    /// process of this site is known to be gone.
    pub incarnation: u64,
    /// An idle connection (full feature phase, no task) is pinged with a NOP-In after this
    /// many milliseconds without input, and closed when nothing arrives for as long again
    /// (0: never).
    pub nop_in_interval_ms: u32,
    /// The most connections a session may have (`[iscsi] max_connections`).
    pub max_connections: u32,
    /// EXTENDED COPY commands running in the daemon (at most `xcopy::TOTAL_CONCURRENT`).
    pub copies: AtomicU32,
    /// Per volume index: its mirror's published state, for SET TARGET PORT GROUPS (`None`:
    /// not mirrored).
    pub mirrors: Vec<Option<MirrorHandle>>,
    /// SET TARGET PORT GROUPS commands waiting for their switchover (helper threads).
    pub switchovers: AtomicU32,
    /// Where hosts are (the configuration's host list): a session looks its initiator name
    /// up once, at login, for the ALUA states it reports (`bdev::host_path`).
    pub host_sites: Arc<crate::bdev::host_path::HostSites>,
}

/// What SET TARGET PORT GROUPS needs of a mirrored volume.
#[derive(Clone)]
pub struct MirrorHandle {
    /// The mirror engine's published state (the switchover request and its outcome).
    pub stats: Arc<crate::layer::mirror::stats::MirrorStats>,
    /// This site is the configured leader (term 0).
    pub leader: bool,
}

impl IscsiShared {
    /// The target table, for reading (never per command).
    pub fn tgts(&self) -> RwLockReadGuard<'_, Vec<Arc<IscsiTarget>>> {
        // Every change is one assignment, push or remove: a poisoned table is still whole.
        self.targets.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The target table, for changing (control socket).
    pub fn tgts_mut(&self) -> RwLockWriteGuard<'_, Vec<Arc<IscsiTarget>>> {
        self.targets.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The session table (at login and session end only).
    pub fn session_table(&self) -> MutexGuard<'_, HashMap<u16, SessEntry>> {
        // Every change is one insert or remove: a poisoned table is still whole.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The target named `iqn`, as it is now.
    pub fn find(&self, iqn: &str) -> Option<Arc<IscsiTarget>> {
        self.tgts().iter().find(|t| t.iqn == iqn).cloned()
    }

    /// "TargetAddress" values: this site's portals, then the extra ones, with the group tag. A
    /// portal listening on a wildcard address (0.0.0.0, ::) is listed with `local`, the address
    /// the asking connection reached (RFC 7143 §13.8: an address the initiator can use; IPv6 in
    /// brackets), or left out when that is unknown.
    pub fn portal_addresses(&self, local: Option<IpAddr>) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for a in &self.portals {
            let ip = match (a.ip().is_unspecified(), local) {
                (false, _) => a.ip(),
                (true, Some(l)) => l,
                (true, None) => continue,
            };
            // An IPv4 peer reaching an IPv6 wildcard socket sees a mapped address.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            let s = match ip {
                IpAddr::V4(v4) => format!("{v4}:{},{}", a.port(), self.tpg),
                IpAddr::V6(v6) => format!("[{v6}]:{},{}", a.port(), self.tpg),
            };
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v.extend(self.extra_portals.iter().cloned());
        v
    }
}

/// The iSCSI listeners' acceptor: every accepted socket is a connection (of a new session, or
/// handed over to the home reactor of the session its login joins).
pub struct IscsiAcceptor {
    sh: Arc<IscsiShared>,
}

impl IscsiAcceptor {
    /// An acceptor serving the targets of `sh`.
    pub fn new(sh: Arc<IscsiShared>) -> Self {
        Self { sh }
    }
}

impl Acceptor for IscsiAcceptor {
    fn proto(&self) -> &'static str {
        "iscsi"
    }

    fn accept(&self, fd: OwnedFd) -> Box<dyn Conn> {
        Box::new(IscsiConn::new(fd, Arc::clone(&self.sh)))
    }
}
