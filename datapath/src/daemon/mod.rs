//! The daemon: builds volumes and listeners from a [`Config`], starts one reactor thread per
//! configured core and the control socket, and stops them all cleanly.
//!
//! Invariants:
//! - Everything reactors share ([`Shared`]) is complete before the first reactor starts and
//!   read-only afterwards.
//! - [`Daemon::stop`] returns only after every reactor has finished its in-flight I/O (or hit
//!   its deadline) and exited, so nothing acknowledged is lost on SIGINT/SIGTERM.

pub mod demo;
pub mod state_lock;

pub use crate::control::build::build_device;

use crate::bdev::BdevError;
use crate::bdev::volume::Volume;
use crate::control::ControlCx;
use crate::control::ControlServer;
use crate::control::config::{Backend, Config, Wait};
use crate::frontend::iscsi::chap::Chap;
use crate::frontend::iscsi::{IscsiAcceptor, IscsiLun, IscsiShared, IscsiTarget};
use crate::frontend::nbd::{NbdAcceptor, NbdExport};
use crate::frontend::nvmf::atomic::HomeService;
use crate::frontend::nvmf::{NvmfAcceptor, NvmfShared, ctrl::Subsystem};
use crate::layer::cdp::journal::{SpareOf, spare_thread};
use crate::layer::cdp::retain::{self, Retained, Retention};
use crate::layer::cdp::store::CdpError;
use crate::layer::cdp::{self as cdp, CdpDevice, CdpInfo, CdpSettings};
use crate::layer::mirror::engine::{EngineConfig, Role};
use crate::layer::mirror::failover::{self, FailoverConfig, FailoverSlot};
use crate::layer::mirror::link::LinkAcceptor;
use crate::layer::mirror::persist::Persister;
use crate::layer::mirror::state::{ReplicaData, identity_of};
use crate::layer::mirror::{MirrorDevice, MirrorInfo};
use crate::runtime::{
    self, Acceptor, Listener, Mailbox, Msg, Reactor, ReactorStats, RingSizes, Shared, WaitPolicy,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

/// The runtime service index of the checksum executors (`volume_checksums`); service 0 is
/// the NVMe atomic-section executors (`nvmf.home_service`).
const CHECKSUM_SERVICE: u32 = 1;

/// Why the daemon could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A volume's device could not be set up.
    #[error("volume {name}")]
    Volume {
        /// The volume.
        name: String,
        /// Why.
        #[source]
        source: BdevError,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The NVMe-oF reservation state could not be loaded.
    #[error("NVMe-oF reservations")]
    Reservations(#[source] crate::frontend::nvmf::resv::ResvError),
    /// The iSCSI persistent reservation state could not be loaded.
    #[error("iSCSI persistent reservations: {0}")]
    IscsiReservations(String),
    /// An iSCSI target's CHAP secret file could not be read.
    #[error("iSCSI target {target}: cannot read its CHAP secret file")]
    ChapSecret {
        /// The target.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A reactor could not start (io_uring setup, pinning, channel opening).
    #[error("reactor {id} on core {core}")]
    Reactor {
        /// Reactor id.
        id: usize,
        /// Its core.
        core: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error("control socket")]
    Control(#[source] std::io::Error),
    /// The metrics endpoint could not be started (`[control] metrics`).
    #[error("metrics endpoint")]
    Metrics(#[source] std::io::Error),
    /// The mirror's replica-state persister thread could not be started.
    #[error("cannot start the replica-state persister thread")]
    Persister(#[source] std::io::Error),
    /// The witness client could not be set up (key file, address).
    #[error("cannot set up the witness client")]
    Witness(#[source] std::io::Error),
    /// `[reactor] background_cores` names a CPU this process may not run on.
    #[error(
        "reactor.background_cores names CPU {cpu}, which this process may not run on (its CPUs: {allowed:?})"
    )]
    BackgroundCores {
        /// The CPU.
        cpu: usize,
        /// The CPUs the process may use.
        allowed: Vec<usize>,
    },
    /// The CDP retention thread could not be started.
    #[error("cannot start the CDP retention thread")]
    CdpThread(#[source] std::io::Error),
    /// A volume's CDP journal could not be opened or recovered.
    #[error("volume {name}: continuous data protection")]
    Cdp {
        /// The volume.
        name: String,
        /// Why.
        #[source]
        source: crate::layer::cdp::store::CdpError,
    },
    /// A state directory (`[mirror]`, `[nvmf]` or `[iscsi] state_dir`) is held by another
    /// process, or its lock cannot be taken ([`state_lock`]).
    #[error("{0}")]
    StateDir(String),
    /// The sites' shared key (`mirror.witness_key_file`), which authenticates the replication
    /// links, could not be loaded.
    #[error("mirror: the link key (mirror.witness_key_file)")]
    LinkKey(#[source] twinblk_witness::proto::KeyError),
}

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
    /// iSCSI (RFC 7143).
    Iscsi,
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    nvmf: Arc<NvmfShared>,
    iscsi: Arc<IscsiShared>,
    nbd_exports: Arc<crate::frontend::nbd::NbdExports>,
    listen: Vec<(Proto, SocketAddr)>,
    threads: Vec<JoinHandle<()>>,
    control: Option<ControlServer>,
    metrics: Option<crate::control::metrics::MetricsServer>,
    /// The control socket's context: its views and restores are stopped with the daemon.
    control_cx: Option<Arc<ControlCx>>,
    cores: Vec<usize>,
    failover: Option<JoinHandle<()>>,
    failover_stop: Arc<AtomicBool>,
    /// Writes the mirrored volumes' replica states off the reactors.
    persister: Option<Arc<Persister>>,
    /// Consolidates CDP journals under retention (off the reactors).
    retention: Option<JoinHandle<()>>,
    /// The CDP layers (also those switched on at run time): their directories'
    /// `daemon.lock` is released at the stop.
    cdp: Arc<std::sync::RwLock<Vec<CdpInfo>>>,
    /// Prepares each CDP journal's next segment (off the reactors).
    segments: Option<JoinHandle<()>>,
    retention_stop: Arc<AtomicBool>,
    /// The state directories' locks, released at the stop.
    state_locks: Option<state_lock::StateLocks>,
}

/// What survives of volume `v`'s data at a restart, for its mirror's replica state.
fn replica_data(v: &crate::control::config::VolumeConfig) -> ReplicaData {
    match (&v.backend, &v.path) {
        (Backend::Malloc, _) => ReplicaData::Volatile,
        (Backend::Uring, Some(path)) => ReplicaData::Kept {
            identity: identity_of(path).unwrap_or_else(|e| {
                tracing::warn!(volume = %v.name, path = %path.display(), error = %e,
                    "mirror: cannot identify the replica's data; a replaced device will not be detected");
                0
            }),
        },
        (Backend::Uring, None) | (Backend::CdpView, _) => ReplicaData::default(),
    }
}

/// How long a start waits for an address still in use (`listen_waiting`).
const LISTEN_IN_USE_WAIT: Duration = Duration::from_secs(3);

/// Listen on `addr`. An address in use is tried again for up to [`LISTEN_IN_USE_WAIT`]: a
/// daemon restarted right after a crash finds its old listening sockets still bound while the
/// kernel tears the dead process's io_uring down, which it does asynchronously.
fn listen_waiting(addr: SocketAddr) -> Result<(std::os::fd::OwnedFd, SocketAddr), StartError> {
    listen_within(addr, LISTEN_IN_USE_WAIT)
}

/// [`listen_waiting`] with the wait `wait`.
fn listen_within(
    addr: SocketAddr,
    wait: Duration,
) -> Result<(std::os::fd::OwnedFd, SocketAddr), StartError> {
    let t = std::time::Instant::now();
    let mut logged = false;
    loop {
        match crate::transport::tcp::listen(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && t.elapsed() < wait => {
                if !logged {
                    logged = true;
                    tracing::warn!(%addr, wait_ms = wait.as_millis() as u64,
                        "address in use (the sockets of a process that just died may still be \
                         being released); trying again");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r.map_err(|source| StartError::Listen { addr, source }),
        }
    }
}

fn bind(addr: SocketAddr, acceptor: Arc<dyn Acceptor>) -> Result<Listener, StartError> {
    let (fd, bound) = listen_waiting(addr)?;
    Ok(Listener {
        fd,
        addr: bound,
        acceptor,
    })
}

impl Daemon {
    /// Start everything `cfg` describes.
    pub fn start(cfg: &Config) -> Result<Self, StartError> {
        if let Some(bg) = &cfg.reactor.background_cores
            && let Some(allowed) = runtime::Housekeeping::off(&[]).map(|h| h.cpus())
            && let Some(&cpu) = bg.iter().find(|c| !allowed.contains(c))
        {
            return Err(StartError::BackgroundCores { cpu, allowed });
        }
        // Every history directory holding files but no history is refused before anything is
        // written (a new history would take its files' names: cdp_enable checks the same).
        for v in &cfg.volumes {
            if let Some(c) = v.cdp.as_ref().filter(|c| c.enabled) {
                cdp::names::refuse_foreign_files(&c.dir).map_err(|source| StartError::Cdp {
                    name: v.name.clone(),
                    source,
                })?;
            }
        }
        // One daemon per state directory: taken before any state file is read or written.
        let state_locks = state_lock::lock_state_dirs(cfg).map_err(StartError::StateDir)?;
        let mut volumes = Vec::new();
        let mut mirror_devs: Vec<Arc<MirrorDevice>> = Vec::new();
        let mut cdp_devs: Vec<Arc<CdpDevice>> = Vec::new();
        let mut cdp_infos: Vec<CdpInfo> = Vec::new();
        let mut retained: Vec<Retained> = Vec::new();
        let mut mirrors: Vec<MirrorInfo> = Vec::new();
        let mut failover_vols = Vec::new();
        let boot_id = cfg.mirror.as_ref().map_or(0, |m| {
            let id = crate::layer::mirror::state::boot_id(&m.boot_id_file);
            if id == 0 {
                tracing::warn!(path = %m.boot_id_file.display(),
                    "mirror: the host's boot id cannot be read; a site that did not stop \
                     cleanly cannot tell a power loss from a crash of its process, and is \
                     reconciled as after a crash");
            }
            id
        });
        // The replication links authenticate with the sites' shared key: no key, no mirror
        // (the configuration requires the file with a `[mirror]` section).
        let link_key = match cfg.mirror.as_ref().map(|m| m.witness_key_file.as_ref()) {
            Some(Some(f)) => Some(Arc::new(
                twinblk_witness::Key::from_file(f).map_err(StartError::LinkKey)?,
            )),
            Some(None) => {
                return Err(StartError::LinkKey(
                    twinblk_witness::proto::KeyError::TooShort(0),
                ));
            }
            None => None,
        };
        for (index, v) in cfg.volumes.iter().enumerate() {
            let mut device = build_device(v).map_err(|source| StartError::Volume {
                name: v.name.clone(),
                source,
            })?;
            if let Some(c) = v.cdp.as_ref().filter(|c| c.enabled) {
                // Under the mirror: every update this site applies is journaled here.
                let settings = CdpSettings {
                    dir: c.dir.clone(),
                    segment_size: c.segment_size.0,
                    seed: v.path.clone().filter(|_| v.backend == Backend::Uring),
                    volatile: v.backend == Backend::Malloc,
                    base_cache: v.volatile_cache,
                    prezero: c.prezero,
                    sync: c.sync_policy(),
                    // The mirror says when this site's replica is the volume.
                    vouched: v.mirror && cfg.mirror.is_some(),
                };
                let home = index % cfg.reactor.cores.len();
                let cd = match CdpDevice::open(Arc::clone(&device), &settings, index, home) {
                    Ok(cd) => Some(Arc::new(cd)),
                    // The journal's device cannot take the start (full or failing): the volume
                    // is served without its journal rather than not at all, once its map says
                    // the history is not whole from here (else it is not served).
                    Err(e @ CdpError::Io { .. }) => {
                        let Ok((after, _)) = cdp::not_journaled(&c.dir, device.info().size) else {
                            return Err(StartError::Cdp {
                                name: v.name.clone(),
                                source: e,
                            });
                        };
                        tracing::error!(volume = %v.name, dir = %c.dir.display(), error = %e, after,
                            "cdp: the journal cannot start; the volume is served WITHOUT continuous data protection (not in cdp_status); its history is whole up to sequence {after}. Make room and switch it on (cdp_enable), or restart");
                        None
                    }
                    Err(source) => {
                        return Err(StartError::Cdp {
                            name: v.name.clone(),
                            source,
                        });
                    }
                };
                if let Some(cd) = cd {
                    if c.retention_age.is_some() || c.retention_bytes.is_some() {
                        retained.push(Retained {
                            dir: c.dir.clone(),
                            retention: Retention {
                                age_ns: c.retention_age_ns(),
                                bytes: c.retention_bytes.map(|b| b.0),
                            },
                            stats: Arc::clone(&cd.stats),
                            maps: Some(Arc::clone(&cd.spare.maps)),
                        });
                    }
                    cdp_devs.push(Arc::clone(&cd));
                    cdp_infos.push(CdpInfo {
                        vol: index,
                        group: v.group.clone().unwrap_or_else(|| v.name.clone()),
                        dir: c.dir.clone(),
                        home,
                        created: cd.created,
                        stats: Arc::clone(&cd.stats),
                        retention_age_ns: c.retention_age_ns(),
                        device: Arc::clone(&cd),
                    });
                    device = cd;
                }
            }
            let volume = match (&cfg.mirror, v.mirror) {
                (Some(m), true) => {
                    let leader = m.leader_of(v) == m.site;
                    let info = device.info();
                    let engine = EngineConfig {
                        name: v.name.clone(),
                        role: if leader { Role::Leader } else { Role::Follower },
                        size: info.size,
                        block: info.block_size,
                        peer_timeout: Duration::from_millis(m.peer_timeout_ms),
                        max_backlog: m.max_backlog_mib << 20,
                        peer_dead: Duration::from_millis(m.peer_dead_ms),
                        heartbeat: Duration::from_millis(m.heartbeat_ms),
                        failover: m.witness.map(|_| {
                            // One slot (one grant) per volume group.
                            let group = v.group.clone().unwrap_or_else(|| v.name.clone());
                            let slot = match failover_vols.iter().find(|(g, _, _)| *g == group) {
                                Some((_, _, slot)) => Arc::clone(slot),
                                None => {
                                    let slot = Arc::new(FailoverSlot::default());
                                    slot.configured_preferred
                                        .store(leader, std::sync::atomic::Ordering::SeqCst);
                                    failover_vols.push((group, leader, Arc::clone(&slot)));
                                    slot
                                }
                            };
                            slot.members
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            slot
                        }),
                        dirty_granularity: m.dirty_granularity.0,
                        resync_rate: m.resync_rate.0.max(1 << 20),
                        state_file: m
                            .state_dir
                            .as_ref()
                            .map(|d| d.join(format!("{}.mirror-state", v.name))),
                        replica_data: replica_data(v),
                        replica_path: v.path.clone().filter(|_| v.backend == Backend::Uring),
                        meta: None,
                        actlog: crate::layer::mirror::engine::ActLogConfig {
                            enabled: m.activity_log,
                            extent: m.actlog_extent(),
                            extents: m.activity_log_extents,
                        },
                        boot_id,
                    };
                    let home = index % cfg.reactor.cores.len();
                    let slot = engine.failover.clone();
                    let md = Arc::new(MirrorDevice::new(
                        device,
                        engine,
                        index,
                        home,
                        m.peer,
                        Arc::clone(link_key.as_ref().expect("loaded with [mirror]")),
                    ));
                    mirror_devs.push(Arc::clone(&md));
                    mirrors.push(MirrorInfo {
                        vol: index,
                        stats: Arc::clone(&md.stats),
                        leader,
                        home,
                        group: v.group.clone().unwrap_or_else(|| v.name.clone()),
                        failover: slot,
                    });
                    Volume::with_path(v.name.clone(), md.clone(), Arc::clone(&md.path))
                        .with_peer_path(Arc::clone(&md.peer_path))
                }
                _ => Volume::new(v.name.clone(), device),
            };
            volumes.push(Arc::new(volume));
        }
        let nbd_exports: Vec<NbdExport> = cfg
            .effective_exports()
            .into_iter()
            .map(|e| NbdExport {
                volume: volumes
                    .iter()
                    .position(|v| v.name == e.volume)
                    .expect("validated"),
                name: e.name,
                read_only: e.read_only,
                description: e.description,
                runtime: false,
            })
            .collect();
        let nbd_exports = Arc::new(crate::frontend::nbd::NbdExports::new(nbd_exports));
        // The NVMe-oF listeners are bound before the front end is built (its discovery log
        // lists their bound addresses); their acceptor is set once it exists.
        let mut nvmf_socks = Vec::new();
        for addr in &cfg.nvmf.listen {
            nvmf_socks.push(listen_waiting(*addr)?);
        }
        // Where hosts are, resolved against this site once (looked up at login and connect).
        let host_sites = Arc::new(cfg.host_sites());
        let mut nvmf = NvmfShared::empty();
        nvmf.host_sites = Arc::clone(&host_sites);
        nvmf.registry = crate::frontend::nvmf::ctrl::Registry::new(cfg.cntlid_range());
        nvmf.first_port_id = cfg.nvmf_first_port_id();
        nvmf.listen = nvmf_socks.iter().map(|(_, a)| *a).collect();
        nvmf.subsystems = std::sync::RwLock::new(
            cfg.effective_subsystems()
                .into_iter()
                .map(|s| {
                    let vols: Vec<usize> = s
                        .namespaces
                        .iter()
                        .map(|n| {
                            volumes
                                .iter()
                                .position(|v| &v.name == n)
                                .expect("validated")
                        })
                        .collect();
                    Arc::new(Subsystem::new(s.nqn, s.allowed_hosts, &vols))
                })
                .collect(),
        );
        if let Some(dir) = &cfg.nvmf.state_dir {
            nvmf.load_reservations(dir.clone())
                .map_err(StartError::Reservations)?;
        }
        // The atomic-section executors are the runtime's service 0.
        nvmf.home_service = 0;
        let n = cfg.reactor.cores.len();
        // Reservations of mirrored volumes are decided by the volume's leader site.
        let replicator = Arc::new(crate::frontend::nvmf::resv::ResvReplicator::new(
            nvmf.subs()
                .iter()
                .map(|s| {
                    let nss = s.namespaces.iter().map(|n| (n.nsid, n.volume)).collect();
                    (s.nqn.clone(), Arc::clone(&s.resv), nss)
                })
                .collect(),
        ));
        let mut mailboxes = Vec::with_capacity(n);
        for id in 0..n {
            let core = cfg.reactor.cores[id];
            mailboxes.push(Arc::new(
                Mailbox::new().map_err(|source| StartError::Reactor { id, core, source })?,
            ));
        }
        let persister = if cfg.mirror.as_ref().is_some_and(|m| m.state_dir.is_some()) {
            Some(Persister::spawn().map_err(StartError::Persister)?)
        } else {
            None
        };
        for md in &mirror_devs {
            if let Some(p) = &persister {
                let _ = md.persister.set(Arc::clone(p));
            }
            let _ = md.mailboxes.set(mailboxes.clone());
        }
        for cd in &cdp_devs {
            let _ = cd.mailboxes.set(mailboxes.clone());
        }
        let capacity = cfg.runtime.max_volumes.max(volumes.len());
        let stats = (0..n)
            .map(|_| Arc::new(ReactorStats::new(capacity)))
            .collect();
        let nvmf = Arc::new(nvmf);
        let mut listen = Vec::new();
        let mut listeners = Vec::new();
        let nbd: Arc<dyn Acceptor> = Arc::new(NbdAcceptor::new(Arc::clone(&nbd_exports)));
        for addr in &cfg.nbd.listen {
            listeners.push(bind(*addr, Arc::clone(&nbd))?);
            listen.push((Proto::Nbd, listeners.last().expect("pushed").addr));
        }
        let nvmf_acceptor: Arc<dyn Acceptor> = Arc::new(NvmfAcceptor::new(Arc::clone(&nvmf)));
        for (fd, addr) in nvmf_socks {
            listeners.push(Listener {
                fd,
                addr,
                acceptor: Arc::clone(&nvmf_acceptor),
            });
            listen.push((Proto::Nvmf, addr));
        }
        let mut iscsi_socks = Vec::new();
        for addr in &cfg.iscsi.listen {
            iscsi_socks.push(listen_waiting(*addr)?);
        }
        let mut iscsi_targets = Vec::new();
        for t in cfg.effective_iscsi_targets() {
            let secret = match (&t.chap_secret, &t.chap_secret_file) {
                (Some(s), _) => Some(s.as_bytes().to_vec()),
                (None, Some(f)) => {
                    let line = crate::control::config::first_line(f).map_err(|source| {
                        StartError::ChapSecret {
                            target: t.iqn.clone(),
                            source,
                        }
                    })?;
                    Some(line.into_bytes())
                }
                (None, None) => None,
            };
            let chap = t.chap_user.clone().zip(secret).map(|(user, secret)| Chap {
                user,
                secret,
                mutual: t
                    .chap_mutual_user
                    .clone()
                    .zip(t.chap_mutual_secret.clone())
                    .map(|(u, s)| (u, s.into_bytes())),
            });
            if chap.is_none() && !iscsi_socks.is_empty() {
                tracing::warn!(
                    target_name = %t.iqn,
                    "iSCSI target without CHAP: any initiator its allow list admits can log in"
                );
            }
            iscsi_targets.push(IscsiTarget {
                luns: t
                    .luns
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let v = volumes
                            .iter()
                            .position(|v| &v.name == n)
                            .expect("validated");
                        IscsiLun::new(i as u16, v, n)
                    })
                    .collect(),
                iqn: t.iqn,
                allowed: t.allowed_initiators,
                chap,
                runtime: false,
            });
        }
        // SCSI persistent reservations persist (APTPL) in [iscsi] state_dir, one file a LUN.
        if let Some(dir) = &cfg.iscsi.state_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::IscsiReservations(format!("{}: {e}", dir.display())))?;
            for t in &iscsi_targets {
                for l in &t.luns {
                    let path = crate::control::config::iscsi_pr_path(dir, &t.iqn, l.lun);
                    l.pr.attach(path, &t.iqn, l.lun)
                        .map_err(StartError::IscsiReservations)?;
                }
            }
        }
        // A logical unit reset reaches every iSCSI session of the LUN at this site through the
        // reactors' mailboxes and the hosts registry (frontend::iscsi::reset).
        let hosts: Arc<crate::runtime::hosts::Hosts> = Arc::default();
        let fanout = Arc::new(crate::frontend::iscsi::reset::Fanout::new(
            mailboxes.clone(),
            Arc::clone(&hosts),
        ));
        for t in &iscsi_targets {
            for l in &t.luns {
                l.pr.set_fanout(Arc::clone(&fanout), l.volume);
            }
        }
        // ... and so are the SCSI persistent reservations of their iSCSI logical units.
        let pr_replicator = Arc::new(
            crate::frontend::iscsi::prs::PrReplicator::new(
                iscsi_targets
                    .iter()
                    .flat_map(|t| {
                        t.luns
                            .iter()
                            .map(|l| (t.iqn.clone(), l.lun, l.volume, Arc::clone(&l.pr)))
                    })
                    .collect(),
            )
            .for_site(cfg.iscsi_tpg()),
        );
        let mut router = crate::layer::mirror::engine::MetaRouter::new();
        router.add(crate::frontend::nvmf::resv::META_KIND, replicator);
        router.add(crate::frontend::iscsi::prs::META_KIND, pr_replicator);
        let meta = Arc::new(router);
        for md in &mirror_devs {
            let _ = md.meta.set(Arc::clone(&meta) as _);
        }
        let iscsi = Arc::new(IscsiShared {
            targets: std::sync::RwLock::new(iscsi_targets.into_iter().map(Arc::new).collect()),
            portals: iscsi_socks.iter().map(|(_, a)| *a).collect(),
            extra_portals: cfg.iscsi.extra_portals.clone(),
            tpg: cfg.iscsi_tpg(),
            nvmf: Arc::clone(&nvmf),
            next_tsih: std::sync::atomic::AtomicU16::new(1),
            sessions: Default::default(),
            next_nexus: std::sync::atomic::AtomicU64::new(1),
            incarnation: crate::frontend::iscsi::spc2::new_incarnation(),
            nop_in_interval_ms: cfg.iscsi.nop_in_interval_ms,
            max_connections: cfg.iscsi.max_connections,
            copies: std::sync::atomic::AtomicU32::new(0),
            mirrors: (0..volumes.len())
                .map(|v| {
                    mirrors.iter().find(|m| m.vol == v).map(|m| {
                        crate::frontend::iscsi::MirrorHandle {
                            stats: Arc::clone(&m.stats),
                            leader: m.leader,
                        }
                    })
                })
                .collect(),
            switchovers: std::sync::atomic::AtomicU32::new(0),
            host_sites: Arc::clone(&host_sites),
        });
        let iscsi_acceptor: Arc<dyn Acceptor> = Arc::new(IscsiAcceptor::new(Arc::clone(&iscsi)));
        for (fd, addr) in iscsi_socks {
            listeners.push(Listener {
                fd,
                addr,
                acceptor: Arc::clone(&iscsi_acceptor),
            });
            listen.push((Proto::Iscsi, addr));
        }
        let mut homes = vec![None; capacity];
        for m in &mirrors {
            homes[m.vol] = Some(m.home);
        }
        if let Some(key) = &link_key {
            let links: Arc<dyn Acceptor> = Arc::new(LinkAcceptor::new(homes, Arc::clone(key)));
            for addr in cfg.mirror.iter().flat_map(|m| m.listen.iter()) {
                listeners.push(bind(*addr, Arc::clone(&links))?);
                listen.push((Proto::Mirror, listeners.last().expect("pushed").addr));
            }
        }
        let shared = Arc::new(Shared {
            volumes: runtime::VolumeTable::new(volumes, capacity),
            listeners,
            // Service 0: the NVMe atomic-section executors; 1: the checksum executors.
            services: vec![
                Arc::new(HomeService::new(Arc::clone(&nvmf))),
                Arc::new(crate::control::verify::ChecksumService {
                    index: CHECKSUM_SERVICE,
                }),
            ],
            // CDP's pollers after the mirror's: a turn's applies are journaled in that turn.
            // (The fault-injection layer's slow updates, for tests and drills, first.)
            pollers: cfg
                .volumes
                .iter()
                .enumerate()
                .filter(|(_, v)| v.slow_range.is_some() || v.slow_flush)
                .map(|(vol, _)| {
                    Arc::new(crate::layer::slow::SlowUpdates { vol })
                        as Arc<dyn runtime::PollerSource>
                })
                .chain(
                    mirror_devs
                        .iter()
                        .map(|m| Arc::clone(m) as Arc<dyn runtime::PollerSource>),
                )
                .chain(cdp_devs.iter().map(|c| Arc::clone(c) as _))
                .collect(),
            mailboxes,
            stats,
            running: std::sync::atomic::AtomicUsize::new(n),
            hosts,
        });
        let policy = match cfg.reactor.wait {
            Wait::Poll => WaitPolicy::Poll,
            Wait::Interrupt => WaitPolicy::Interrupt,
            Wait::Adaptive => WaitPolicy::Adaptive(Duration::from_micros(cfg.reactor.spin_us)),
        };
        // Published before any thread starts: `reactor_stats` never shows a reactor without
        // its policy (a tool that saves the policies to restore them later reads them at once).
        for s in &shared.stats {
            s.wait.init(policy);
        }
        let mut daemon = Daemon {
            shared: Arc::clone(&shared),
            nvmf: Arc::clone(&nvmf),
            iscsi: Arc::clone(&iscsi),
            nbd_exports: Arc::clone(&nbd_exports),
            listen: listen.clone(),
            threads: Vec::new(),
            control: None,
            metrics: None,
            control_cx: None,
            cores: cfg.reactor.cores.clone(),
            failover: None,
            failover_stop: Arc::new(AtomicBool::new(false)),
            persister,
            retention: None,
            cdp: Arc::new(std::sync::RwLock::new(cdp_infos)),
            segments: None,
            retention_stop: Arc::new(AtomicBool::new(false)),
            state_locks: Some(state_locks),
        };
        // The helper threads run also without a journal at start: CDP can be switched on at
        // run time (their lists change then).
        let cdp_lists = crate::control::cdp_admin::CdpLists::default();
        *cdp_lists.spares.lock().unwrap_or_else(|e| e.into_inner()) = cdp_devs
            .iter()
            .map(|cd| SpareOf {
                dir: cd.dir.clone(),
                size: cd.segment_size,
                spare: Arc::clone(&cd.spare),
            })
            .collect();
        *cdp_lists.retained.lock().unwrap_or_else(|e| e.into_inner()) = retained;
        daemon.segments = Some(
            spare_thread(
                Arc::clone(&cdp_lists.spares),
                Arc::clone(&daemon.retention_stop),
            )
            .map_err(StartError::CdpThread)?,
        );
        daemon.retention = Some(
            retain::spawn(
                Arc::clone(&cdp_lists.retained),
                Arc::clone(&daemon.retention_stop),
            )
            .map_err(StartError::CdpThread)?,
        );
        if let Some(m) = &cfg.mirror
            && let (Some(witness), Some(key_file)) = (m.witness, &m.witness_key_file)
            && !failover_vols.is_empty()
        {
            let fc = FailoverConfig {
                witness,
                key_file: key_file.clone(),
                site_id: m.site_id(),
                heartbeat: Duration::from_millis(m.witness_heartbeat_ms),
                request_timeout: Duration::from_millis(m.witness_timeout_ms),
                volumes: failover_vols,
            };
            daemon.failover = Some(
                failover::spawn(fc, Arc::clone(&daemon.failover_stop))
                    .map_err(StartError::Witness)?,
            );
        }
        for (id, &core) in cfg.reactor.cores.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            let sh = Arc::clone(&shared);
            let pin = cfg.reactor.pin;
            let t = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || {
                    let setup = (|| {
                        if pin {
                            runtime::pin_to_core(core)?;
                        }
                        Reactor::new(id, sh, policy, RingSizes::default())
                    })();
                    match setup {
                        Ok(r) => {
                            let _ = tx.send(Ok(()));
                            r.run();
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
                .map_err(|source| StartError::Reactor { id, core, source })?;
            daemon.threads.push(t);
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    daemon.stop();
                    return Err(StartError::Reactor { id, core, source });
                }
                Err(_) => {
                    daemon.stop();
                    return Err(StartError::Reactor {
                        id,
                        core,
                        source: std::io::Error::other("reactor thread died"),
                    });
                }
            }
        }
        // Where the daemon's own threads and its views run: `[reactor] background_cores`, else
        // the CPUs no pinned reactor takes.
        let housekeeping = match &cfg.reactor.background_cores {
            Some(cpus) => runtime::Housekeeping::on(cpus),
            None => cfg
                .reactor
                .pin
                .then(|| runtime::Housekeeping::off(&cfg.reactor.cores))
                .flatten(),
        };
        let cx = Arc::new(ControlCx {
            rt: Arc::clone(&shared),
            nbd_exports,
            nvmf: Arc::clone(&nvmf),
            iscsi: Some(Arc::clone(&iscsi)),
            admin: std::sync::Mutex::default(),
            mirrors,
            cdp: Arc::clone(&daemon.cdp),
            cdp_lists,
            volume_configs: cfg.volumes.clone(),
            state_files: cfg.state_files(),
            cdp_jobs: crate::control::cdp_jobs::CdpJobs::new(
                cfg.reactor.cores.clone(),
                cfg.reactor.pin,
                housekeeping.map(|h| h.cpus()).unwrap_or_default(),
            ),
            checksums: Some(CHECKSUM_SERVICE),
        });
        daemon.control_cx = Some(Arc::clone(&cx));
        if !cfg.control.socket.as_os_str().is_empty() {
            match ControlServer::start(&cfg.control.socket, Arc::clone(&cx), cfg.clone()) {
                Ok(c) => daemon.control = Some(c),
                Err(e) => {
                    daemon.stop();
                    return Err(StartError::Control(e));
                }
            }
        }
        if let Some(addr) = cfg.control.metrics {
            let site_id = cfg.mirror.as_ref().map(|m| m.site_id());
            match crate::control::metrics::MetricsServer::start(addr, cx, site_id) {
                Ok(m) => daemon.metrics = Some(m),
                Err(e) => {
                    daemon.stop();
                    return Err(StartError::Metrics(e));
                }
            }
        }
        if let Some(h) = housekeeping {
            daemon.place_background_threads(&h);
        }
        Ok(daemon)
    }

    /// Move the daemon's own long-lived threads (control socket and metrics, whose client
    /// threads inherit it, CDP's segment and retention threads, the mirror's persister and
    /// witness client) onto `h`: `[reactor] background_cores` when given, else the CPUs no
    /// pinned reactor takes ([`runtime::Housekeeping`]), so they never preempt a reactor. (Not
    /// called without `background_cores` when the reactors are not pinned or take every CPU.)
    fn place_background_threads(&self, h: &runtime::Housekeeping) {
        use std::os::unix::thread::JoinHandleExt;
        let threads = [
            (
                "cdp-retention",
                self.retention.as_ref().map(|t| t.as_pthread_t()),
            ),
            (
                "cdp-segments",
                self.segments.as_ref().map(|t| t.as_pthread_t()),
            ),
            (
                "witness-client",
                self.failover.as_ref().map(|t| t.as_pthread_t()),
            ),
            ("control", self.control.as_ref().and_then(|c| c.pthread())),
            ("metrics", self.metrics.as_ref().and_then(|m| m.pthread())),
        ];
        let warn = |name: &str, e: std::io::Error| {
            tracing::warn!(thread = name, error = %e, "cannot move a background thread off the reactors' cores");
        };
        for (name, t) in threads {
            if let Some(t) = t
                && let Err(e) = h.place(t)
            {
                warn(name, e);
            }
        }
        // Under the persister's own lock: its handle is never one already joined.
        if let Some(p) = &self.persister
            && let Err(e) = p.place(|t| h.place(t))
        {
            warn("mirror-persist", e);
        }
        tracing::info!(cpus = ?h.cpus(), "background threads placed (reactor.background_cores, else the CPUs no reactor takes)");
    }

    /// The metrics endpoint's bound address (`[control] metrics`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    /// Addresses the daemon listens on, with their protocols.
    pub fn listeners(&self) -> Vec<(Proto, SocketAddr)> {
        self.listen.clone()
    }

    /// Runtime state (volumes, statistics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The NVMe-oF front end's state (subsystems, controllers, ANA, reservations).
    pub fn nvmf(&self) -> &Arc<NvmfShared> {
        &self.nvmf
    }

    /// The iSCSI front end's state (targets, portals).
    pub fn iscsi(&self) -> &Arc<IscsiShared> {
        &self.iscsi
    }

    /// The NBD front end's export table.
    pub fn nbd_exports(&self) -> &Arc<crate::frontend::nbd::NbdExports> {
        &self.nbd_exports
    }

    /// The mirrored volumes' replica-state persister (with a `[mirror] state_dir`). Its test
    /// hook [`Persister::hold`] stands in for a state write that hangs without an error, for
    /// the integration tests of an in-process daemon.
    #[doc(hidden)]
    pub fn mirror_persister(&self) -> Option<Arc<Persister>> {
        self.persister.clone()
    }

    /// Cores the reactors run on.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// Stop accepting, finish in-flight I/O, close every connection, join every reactor.
    pub fn stop(&mut self) {
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some(cx) = self.control_cx.take() {
            cx.cdp_jobs.stop_all();
        }
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        for m in &self.shared.mailboxes {
            m.send(Msg::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Every engine waited for its clean-stop state; write whatever is left and stop.
        if let Some(p) = self.persister.take() {
            p.shutdown();
        }
        self.retention_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.retention.take() {
            let _ = t.join();
        }
        if let Some(t) = self.segments.take() {
            let _ = t.join();
        }
        self.failover_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.failover.take() {
            let _ = t.join();
        }
        // Nothing journals any more: a rollback in place (or the next daemon) may take them.
        for c in self.cdp.read().unwrap_or_else(|e| e.into_inner()).iter() {
            c.device.release_lock();
        }
        // Nothing writes a state file any more: the next daemon may take the directories.
        self.state_locks = None;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    /// An address freed within the wait is taken; one held longer is an error naming it.
    #[test]
    fn an_address_in_use_is_waited_for_a_bounded_time() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let (_, bound) = listen_within(addr, Duration::from_secs(5)).expect("freed in time");
        assert_eq!(bound, addr);
        freer.join().unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let t = std::time::Instant::now();
        match listen_within(addr, Duration::from_millis(300)) {
            Err(StartError::Listen { addr: a, source }) => {
                assert_eq!((a, source.kind()), (addr, std::io::ErrorKind::AddrInUse));
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_millis(300), "did not wait");
    }
}
