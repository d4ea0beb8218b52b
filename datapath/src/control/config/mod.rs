//! Typed configuration: one [`Config`] shared by the TOML file, the command line and the
//! control socket, checked by [`Config::validate`] before anything starts.
//!
//! The default (no file) is the README's quick start: one reactor on core 0 in `adaptive` mode,
//! a 1 GiB RAM volume `vol0` exported over NBD on 127.0.0.1:10809 and over NVMe/TCP on
//! 127.0.0.1:4420 as subsystem `nqn.2026-11.io.twinblk:vol0`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use thiserror::Error;

mod paths;
mod units;
pub use paths::{
    STATE_LOCK_FILE, check_case_unique, check_not_a_state_file, check_volume_paths, first_line,
    inside, iscsi_pr_path, private_dir, same_file,
};
pub use units::{Size, parse_age, parse_size};

/// The whole daemon configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Reactors.
    #[serde(default)]
    pub reactor: ReactorConfig,
    /// NBD front end.
    #[serde(default)]
    pub nbd: NbdConfig,
    /// NVMe/TCP front end.
    #[serde(default)]
    pub nvmf: NvmfConfig,
    /// iSCSI front end.
    #[serde(default)]
    pub iscsi: IscsiConfig,
    /// Control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// Volumes.
    #[serde(default, rename = "volume")]
    pub volumes: Vec<VolumeConfig>,
    /// Two-site mirroring (absent: a single site).
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    /// Changes made at run time through the control socket.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Where hosts are (`[[host]]`; empty: every host sees the leader's ports optimised).
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostConfig>,
}

/// `[[host]]`: one host at one site (uniform access, docs/architecture.md "Where hosts
/// are"): it sees that site's ports of every mirrored volume optimised and the other site's
/// non-optimised (iSCSI ALUA per I_T nexus, NVMe ANA per controller), whichever site leads.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host's iSCSI initiator name or NVMe host NQN, exactly as it logs in.
    pub name: String,
    /// Its site: `mirror.site` or `mirror.peer_site`.
    pub site: String,
}

/// `[runtime]`: room for volumes created at run time (docs/control.md, "Run-time changes").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Volume slots, configured volumes included: every reactor keeps one channel entry per
    /// slot, so a volume's index stays the same while it exists (1 to 4096).
    #[serde(default = "default_max_volumes")]
    pub max_volumes: usize,
}

/// Most volume slots `[runtime] max_volumes` may ask for.
pub const MAX_MAX_VOLUMES: usize = 4096;

fn default_max_volumes() -> usize {
    crate::runtime::volumes::DEFAULT_MAX_VOLUMES
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_volumes: default_max_volumes(),
        }
    }
}

/// This site and its peer, for mirrored volumes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// This site's name.
    pub site: String,
    /// The peer site's name.
    pub peer_site: String,
    /// Replication listen addresses (the follower of a volume dials its leader here).
    pub listen: Vec<SocketAddr>,
    /// The peer's replication address.
    pub peer: SocketAddr,
    /// How long a request may wait for an unreachable peer before it fails, in ms.
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    /// Most unacknowledged update data the leader keeps for an absent follower, in MiB.
    #[serde(default = "default_max_backlog_mib")]
    pub max_backlog_mib: u64,
    /// The link is declared dead after this many ms without a byte from the peer.
    #[serde(default = "default_peer_dead_ms")]
    pub peer_dead_ms: u64,
    /// Site-to-site heartbeat: an up link is PINGed this often, ms.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// The witness (`twinblk-witness`) deciding which site carries on when the sites lose each
    /// other. Without it a site holds writes until `peer_timeout_ms` and then fails them.
    #[serde(default)]
    pub witness: Option<SocketAddr>,
    /// The sites' shared key (16 ..= 1024 bytes), the witness's: required with `[mirror]`, it
    /// authenticates the replication links (docs/mirror-protocol.md, "Link authentication")
    /// and, with `witness`, the witness's messages.
    #[serde(default)]
    pub witness_key_file: Option<PathBuf>,
    /// This site's id at the witness (default: 1 for the site name that sorts first, else 2).
    #[serde(default)]
    pub site_id: Option<u32>,
    /// Heartbeat interval to the witness, ms.
    #[serde(default = "default_witness_heartbeat_ms")]
    pub witness_heartbeat_ms: u64,
    /// How long a survivor-grant request may take before the site fences itself, ms.
    #[serde(default = "default_witness_timeout_ms")]
    pub witness_timeout_ms: u64,
    /// Bytes per bit of the dirty-region bitmap kept while serving alone.
    #[serde(default = "default_dirty_granularity")]
    pub dirty_granularity: Size,
    /// Most bytes per second a resync copies to a returning peer.
    #[serde(default = "default_resync_rate")]
    pub resync_rate: Size,
    /// Directory for each mirrored volume's persisted replica state (mode, witness epoch,
    /// dirty bitmap). With it, a restarted site serves no I/O until its first session shows
    /// whether its peer moved on; without it the state lives in memory only, and a restarted
    /// site is a new replica (docs/architecture.md, "Replica state").
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Where the host's boot id is read (a UUID that changes at every boot), recorded in the
    /// replica state: a site that did not stop cleanly and finds another boot id knows its
    /// host restarted (a power loss may have dropped what its disk had not flushed), so its
    /// peer's copy wins (docs/mirror-protocol.md, "Power loss"). Unreadable: unknown, logged.
    #[serde(default = "default_boot_id_file")]
    pub boot_id_file: PathBuf,
    /// Keep an activity log of hot extents (docs/mirror-protocol.md, "Activity log"), so that
    /// a leader that crashed while in sync copies only those extents at its next session;
    /// false: the whole volume is one extent (a crash copies every region ever written).
    #[serde(default = "default_true")]
    pub activity_log: bool,
    /// Bytes per activity log extent (a power of two from `dirty_granularity` to 1 GiB;
    /// default 4 MiB, or `dirty_granularity` if larger).
    #[serde(default)]
    pub activity_log_extent: Option<Size>,
    /// Most extents in the activity log (1 ..= 65536).
    #[serde(default = "default_activity_log_extents")]
    pub activity_log_extents: u32,
}

/// Most `activity_log_extents`.
pub const MAX_ACTLOG_EXTENTS: u32 = 65536;
/// Most regions (bits of each region bitmap) a mirrored volume may have.
pub const MAX_REGIONS: u64 = 1 << 32;
/// Most `max_backlog_mib` (16 TiB: more than any machine's memory, and `<< 20` cannot
/// overflow).
pub const MAX_BACKLOG_MIB: u64 = 1 << 24;

impl MirrorConfig {
    /// Bytes per activity log extent (the default: 4 MiB, or `dirty_granularity` if larger).
    pub fn actlog_extent(&self) -> u64 {
        self.activity_log_extent
            .map_or(self.dirty_granularity.0.max(4 << 20), |s| s.0)
    }

    /// The sizes and times the mirror protocol and engine can work with; the error names the
    /// field, the limit and why.
    fn check_limits(&self, mirrored: &[&VolumeConfig]) -> Result<(), String> {
        use crate::layer::mirror::wire::MAX_PAYLOAD;
        let max_msg = u64::from(MAX_PAYLOAD);
        let g = self.dirty_granularity.0;
        if g < 4096 || !g.is_power_of_two() {
            return Err(format!(
                "mirror.dirty_granularity = {g} must be a power of two of at least 4096 bytes \
                 (4 KiB): a region is copied whole and must be a whole number of blocks"
            ));
        }
        if g > max_msg {
            return Err(format!(
                "mirror.dirty_granularity = {g} is above {max_msg} (8 MiB), the most one mirror \
                 message carries (wire::MAX_PAYLOAD): a resync sends each region in one message, \
                 so every resync would fail"
            ));
        }
        for v in mirrored {
            let regions = v.size.0.div_ceil(g);
            if regions > MAX_REGIONS {
                return Err(format!(
                    "volume {}: {} bytes make {regions} regions of mirror.dirty_granularity = {g} \
                     bytes, more than {MAX_REGIONS}: each of the dirty, written and suspect \
                     bitmaps holds one bit per region in memory and in the state file; raise \
                     dirty_granularity to at least {}",
                    v.name,
                    v.size.0,
                    v.size.0.div_ceil(MAX_REGIONS).next_power_of_two()
                ));
            }
        }
        let rate_min = g.max(1 << 20);
        if self.resync_rate.0 < rate_min {
            return Err(format!(
                "mirror.resync_rate = {} bytes/s is below {rate_min}: a resync copies at least \
                 1 MiB (1048576) per second and at least one region (mirror.dirty_granularity) \
                 per second",
                self.resync_rate.0
            ));
        }
        let e = self.actlog_extent();
        if !e.is_power_of_two() || e < g || e > 1 << 30 {
            return Err(format!(
                "mirror.activity_log_extent = {e} must be a power of two from \
                 mirror.dirty_granularity ({g}) to 1 GiB (1073741824): an extent is recorded as \
                 whole regions"
            ));
        }
        if !(1..=MAX_ACTLOG_EXTENTS).contains(&self.activity_log_extents) {
            return Err(format!(
                "mirror.activity_log_extents = {} must be between 1 and {MAX_ACTLOG_EXTENTS}: the \
                 activity log's file holds 8 bytes per extent and is rewritten whole when extents \
                 enter it",
                self.activity_log_extents
            ));
        }
        let backlog_min = max_msg >> 20;
        if !(backlog_min..=MAX_BACKLOG_MIB).contains(&self.max_backlog_mib) {
            return Err(format!(
                "mirror.max_backlog_mib = {} must be between {backlog_min} and {MAX_BACKLOG_MIB}: \
                 the leader keeps every update the follower has not acknowledged, and one update \
                 message carries up to {backlog_min} MiB (wire::MAX_PAYLOAD), so a smaller \
                 backlog marks the volume diverged at the first large write while the link is \
                 down; the upper bound is more memory than any machine has",
                self.max_backlog_mib
            ));
        }
        if self.heartbeat_ms < 10 {
            return Err(format!(
                "mirror.heartbeat_ms = {} is below 10: the link is pinged this often",
                self.heartbeat_ms
            ));
        }
        let dead_min = self.heartbeat_ms.saturating_mul(3) / 2;
        if self.peer_dead_ms < dead_min {
            return Err(format!(
                "mirror.peer_dead_ms = {} is below {dead_min} (1.5 x mirror.heartbeat_ms): a \
                 link would be declared dead between two pings",
                self.peer_dead_ms
            ));
        }
        if self.peer_timeout_ms < self.peer_dead_ms {
            return Err(format!(
                "mirror.peer_timeout_ms = {} is below mirror.peer_dead_ms = {}: requests held \
                 for an unreachable peer would fail before the link is even declared dead",
                self.peer_timeout_ms, self.peer_dead_ms
            ));
        }
        if self.witness.is_some() {
            if self.witness_heartbeat_ms < 10 {
                return Err(format!(
                    "mirror.witness_heartbeat_ms = {} is below 10: the witness is sent a \
                     heartbeat this often",
                    self.witness_heartbeat_ms
                ));
            }
            if self.witness_timeout_ms == 0 {
                return Err(
                    "mirror.witness_timeout_ms = 0: a grant request could never be answered".into(),
                );
            }
            let failover = self.peer_dead_ms.saturating_add(self.witness_timeout_ms);
            if self.peer_timeout_ms < failover {
                return Err(format!(
                    "mirror.peer_timeout_ms = {} is below {failover} (mirror.peer_dead_ms + \
                     mirror.witness_timeout_ms): requests held while the peer is lost would fail \
                     before the witness can make this site the survivor",
                    self.peer_timeout_ms
                ));
            }
        }
        Ok(())
    }

    /// This site's id at the witness.
    pub fn site_id(&self) -> u32 {
        self.site_id
            .unwrap_or(if self.site <= self.peer_site { 1 } else { 2 })
    }

    /// The leader of a volume: its configured one, else the site whose name sorts first.
    pub fn leader_of<'a>(&'a self, v: &'a VolumeConfig) -> &'a str {
        match &v.leader {
            Some(l) => l,
            None => self.site.as_str().min(self.peer_site.as_str()),
        }
    }
}

/// Reactor placement and waiting.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReactorConfig {
    /// One reactor per entry, pinned to that core.
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    /// `poll`, `adaptive` or `interrupt`.
    #[serde(default)]
    pub wait: Wait,
    /// For `adaptive`: microseconds to spin after the last work before blocking.
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
    /// Pin reactor threads to their cores.
    #[serde(default = "yes")]
    pub pin: bool,
    /// The CPUs the daemon's own threads run on (control, metrics, the mirror's persister and
    /// witness client, CDP's segment and retention threads, point-in-time views). Unset: every
    /// CPU the daemon may use less the reactors' cores when the reactors are pinned (so
    /// background work never preempts a reactor), anywhere otherwise. It may name a reactor's
    /// core: on a machine with few cores, where the reactor has idle time and the other cores
    /// belong to someone else (a client, virtual machines), that reactor then shares its core
    /// with them. Not with `wait = "poll"`, whose reactor never leaves its core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_cores: Option<Vec<usize>>,
}

/// Wait policy names.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// Busy-poll.
    Poll,
    /// Spin, then block.
    #[default]
    Adaptive,
    /// Block when idle.
    Interrupt,
}

/// NBD listeners and exports.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NbdConfig {
    /// Addresses to listen on (empty: NBD off).
    #[serde(default = "default_nbd_listen")]
    pub listen: Vec<SocketAddr>,
    /// Exports; when empty, every volume is exported under its own name.
    #[serde(default, rename = "export")]
    pub exports: Vec<ExportConfig>,
}

/// One NBD export.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Name clients ask for.
    pub name: String,
    /// Volume it serves.
    pub volume: String,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// NVMe/TCP listeners and subsystems.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfConfig {
    /// Addresses to listen on (empty: NVMe/TCP off).
    #[serde(default = "default_nvmf_listen")]
    pub listen: Vec<SocketAddr>,
    /// Subsystems; when empty, one per volume named `nqn.2026-11.io.twinblk:<volume>`.
    #[serde(default, rename = "subsystem")]
    pub subsystems: Vec<SubsystemConfig>,
    /// Directory of the reservation state files (one per subsystem); unset: reservations
    /// are kept in memory only and lost on restart.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Lowest controller id this site hands out (default: see [`Config::cntlid_range`]).
    #[serde(default)]
    pub min_cntlid: Option<u16>,
    /// Highest controller id this site hands out (default: see [`Config::cntlid_range`]).
    #[serde(default)]
    pub max_cntlid: Option<u16>,
}

/// iSCSI listeners (portals) and targets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiConfig {
    /// Addresses to listen on (empty: iSCSI off). A config file without it serves no iSCSI;
    /// the built-in default (`twinblk serve` without a file) listens on 127.0.0.1:3260.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// More portals SendTargets lists, as `host:port,tag` (e.g. the other site's).
    #[serde(default)]
    pub extra_portals: Vec<String>,
    /// Milliseconds without input after which an idle connection is pinged with a NOP-In
    /// (and closed if nothing arrives for as long again); 0: never.
    #[serde(default = "default_nop_in_interval_ms")]
    pub nop_in_interval_ms: u32,
    /// The most connections a session may have (MaxConnections: the lower of the initiator's
    /// offer and this), 1..=65535.
    #[serde(default = "default_iscsi_max_connections")]
    pub max_connections: u32,
    /// Directory of the persistent reservation state files (one per LUN), kept for LUNs whose
    /// last REGISTER set APTPL; unset: APTPL is refused and reservations live in memory.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Targets; when empty, one per volume named `iqn.2026-11.io.twinblk:<volume>`.
    #[serde(default, rename = "target")]
    pub targets: Vec<IscsiTargetConfig>,
}

/// One iSCSI target.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiTargetConfig {
    /// iSCSI name (`iqn.`, `eui.` or `naa.` form).
    pub iqn: String,
    /// Volumes served as LUN 0, 1, ... in this order.
    pub luns: Vec<String>,
    /// Initiator names allowed to log in (empty: any initiator).
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP: the user name initiators give (with a secret: CHAP is required).
    #[serde(default)]
    pub chap_user: Option<String>,
    /// CHAP secret (or `chap_secret_file`).
    #[serde(default)]
    pub chap_secret: Option<String>,
    /// A file holding the CHAP secret (its first line).
    #[serde(default)]
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the target's user name.
    #[serde(default)]
    pub chap_mutual_user: Option<String>,
    /// Mutual CHAP: the target's secret.
    #[serde(default)]
    pub chap_mutual_secret: Option<String>,
}

/// Highest controller id of the dynamic controller model (0xFFF0..=0xFFFF are reserved).
pub use crate::frontend::nvmf::ctrl::MAX_CNTLID;
/// Last controller id of the lower half: the site whose name sorts first hands out
/// `1..=CNTLID_SPLIT` by default, the other `CNTLID_SPLIT + 1..=MAX_CNTLID`.
pub const CNTLID_SPLIT: u16 = MAX_CNTLID / 2;

/// One NVM subsystem.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    /// NQN.
    pub nqn: String,
    /// Host NQNs allowed to connect (empty: any host).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Volumes served as namespaces 1, 2, ... in this order.
    pub namespaces: Vec<String>,
}

/// The control socket.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket path (empty: no control socket). Its directory is created 0750 when
    /// missing; the daemon refuses a directory or socket file owned by another user.
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
    /// Group (name or number) given the socket (mode 0660) and a directory the daemon creates
    /// (mode 0750): its members may use the socket. Unset: the daemon's group.
    #[serde(default)]
    pub group: Option<String>,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`, plain HTTP; unset: none).
    /// Anyone who reaches it reads the counters: bind it to an address only monitoring reaches.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

/// Where a volume's data lives.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// RAM.
    Malloc,
    /// A file or block device through io_uring with O_DIRECT.
    Uring,
    /// A point in time of a CDP history, read-only or as a sandbox (`[volume.view]`;
    /// docs/cdp-format.md, "Views"). Its reads are synchronous on the reactor: serve a view
    /// from a daemon of its own (`twinblk cdp view`), never beside production volumes.
    #[serde(rename = "cdp-view")]
    CdpView,
}

/// One volume.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Name: 1 to 64 of `A-Z a-z 0-9 . _ - :` ([`valid_volume_name`]).
    pub name: String,
    /// Backend.
    pub backend: Backend,
    /// Size: bytes, or a string with a unit ("1GiB", "512M").
    pub size: Size,
    /// Block size in bytes (512 or 4096).
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// For `uring`: the file or block device.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// For `uring`: create the file (or extend it) to `size`.
    #[serde(default = "yes")]
    pub create: bool,
    /// Insert an error-injecting layer failing I/O over this byte range (tests, drills).
    #[serde(default)]
    pub fail_range: Option<[u64; 2]>,
    /// Insert an error-injecting layer failing every flush (tests, drills).
    #[serde(default)]
    pub fail_flush: bool,
    /// Insert an error-injecting layer failing every flush issued this many milliseconds
    /// after the volume's channels opened (those before pass: tests, drills).
    #[serde(default)]
    pub fail_flush_after_ms: Option<u64>,
    /// `fail_range` fails writes, write-zeroes and unmaps only; reads of it pass (a device
    /// that cannot write a sector but still reads what it held: tests, drills).
    #[serde(default)]
    pub fail_writes_only: bool,
    /// `fail_range` fails reads only; updates of it pass (a latent sector error: written as
    /// usual, unreadable: tests).
    #[serde(default)]
    pub fail_reads_only: bool,
    /// Insert an error-injecting layer under which updates over this byte range never
    /// complete (a device that hangs on a sector: tests that kill the daemon; a clean stop
    /// waits for them).
    #[serde(default)]
    pub stall_range: Option<[u64; 2]>,
    /// Insert an error-injecting layer under which updates over this byte range wait
    /// `slow_ms` before they go on (to `fail_range`, then the device): a slow sector, or one
    /// that fails late (tests, drills).
    #[serde(default)]
    pub slow_range: Option<[u64; 2]>,
    /// How long an update over `slow_range` (or a flush, with `slow_flush`) waits, in
    /// milliseconds.
    #[serde(default = "default_slow_ms")]
    pub slow_ms: u64,
    /// Insert an error-injecting layer under which every flush waits `slow_ms` first (a device
    /// whose cache takes long to flush: tests, drills).
    #[serde(default)]
    pub slow_flush: bool,
    /// For `uring`: keep the data in RAM behind a simulated volatile write cache, written
    /// back to `path` only by flushes and FUA writes (and a clean exit), so a killed daemon
    /// loses what was not flushed, as a disk does at a power loss (tests, drills;
    /// `bdev/cached.rs`).
    #[serde(default)]
    pub volatile_cache: bool,
    /// Mirror this volume with the peer site (`[mirror]`).
    #[serde(default)]
    pub mirror: bool,
    /// For a mirrored volume: the site that orders its updates (default: the site whose name
    /// sorts first). It is also the preferred site of the volume's group at the witness.
    #[serde(default)]
    pub leader: Option<String>,
    /// For a mirrored volume: its volume group at the witness (default: its own name). The
    /// volumes of a group fail over together (one survivor grant); they must share a leader.
    /// With `[volume.cdp]`, also the group restored to one point in time together.
    #[serde(default)]
    pub group: Option<String>,
    /// Continuous data protection: journal every update (docs/cdp-format.md). Absent: off.
    #[serde(default)]
    pub cdp: Option<CdpConfig>,
    /// For `cdp-view`: the history and the point it shows.
    #[serde(default)]
    pub view: Option<ViewConfig>,
}

/// A `cdp-view` volume's point in time (`[volume.view]`): exactly one of `seq`, `time`,
/// `bookmark`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// The volume's CDP directory.
    pub dir: PathBuf,
    /// A sequence number: every record up to it.
    #[serde(default)]
    pub seq: Option<u64>,
    /// A site time (ns since the epoch): every record at or before it.
    #[serde(default)]
    pub time: Option<u64>,
    /// A bookmark's time.
    #[serde(default)]
    pub bookmark: Option<String>,
    /// Writable: writes go to a RAM overlay, discarded when the daemon stops.
    #[serde(default)]
    pub sandbox: bool,
}

/// A volume's continuous data protection (`[volume.cdp]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CdpConfig {
    /// The volume's journal directory (its own; on any device).
    pub dir: PathBuf,
    /// Journal the volume's updates (false: the section is kept but the layer is off).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bytes per journal segment file (at least 4 MiB, a multiple of 4096).
    #[serde(default = "default_cdp_segment_size")]
    pub segment_size: Size,
    /// Keep at least this much history ("90s", "30m", "12h", "30d"); older segments are
    /// consolidated into the base copy. Unset (and no `retention_bytes`): kept for ever.
    #[serde(default)]
    pub retention_age: Option<String>,
    /// Keep at most about this many bytes of journal segments; the oldest are consolidated.
    #[serde(default)]
    pub retention_bytes: Option<Size>,
    /// Write each segment with zeroes when preparing it, ahead of use (appends then need no
    /// block allocation by the filesystem; each segment is written twice).
    #[serde(default)]
    pub prezero: bool,
    /// When a journal record is durable: `"append"` (default), each append is written with
    /// `RWF_DSYNC` before its update is acknowledged; `"flush"`, appends are plain writes and
    /// the volume's flushes and FUA writes sync the journal, as they make the base durable
    /// (docs/cdp-format.md, "Write path").
    #[serde(default)]
    pub sync: CdpSync,
    /// Every sync of the journal fails with EIO (tests, drills: the journal then stops and
    /// the volume keeps serving, degraded).
    #[serde(default)]
    pub fail_sync: bool,
    /// The first N writes of `degraded.map` after the layer started fail with EIO (tests,
    /// drills: a journal device failing as the journal stops).
    #[serde(default)]
    pub fail_map_writes: u32,
    /// With `sync = "flush"` on a disk, appends are copies into the segments' mappings
    /// (default); false: `pwrite`s into the page cache and O_DIRECT writes instead.
    #[serde(default = "yes")]
    pub map_segments: bool,
}

/// When a CDP journal record is durable (`[volume.cdp] sync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CdpSync {
    /// Each append is durable before its updates are acknowledged.
    #[default]
    Append,
    /// Appends are written; flushes and FUA writes make them durable.
    Flush,
}

impl CdpConfig {
    /// When the journal's appends are durable (`sync`, `fail_sync`).
    pub fn sync_policy(&self) -> crate::layer::cdp::journal::SyncPolicy {
        crate::layer::cdp::journal::SyncPolicy {
            on_flush: self.sync == CdpSync::Flush,
            fail: self.fail_sync,
            fail_map_writes: self.fail_map_writes,
            unmapped: !self.map_segments,
        }
    }

    /// `retention_age` in ns (validated by [`Config::validate`]).
    pub fn retention_age_ns(&self) -> Option<u64> {
        self.retention_age
            .as_deref()
            .and_then(|a| parse_age(a).ok())
    }
}

fn default_cdp_segment_size() -> Size {
    Size(64 << 20)
}

fn default_peer_timeout_ms() -> u64 {
    10_000
}
fn default_max_backlog_mib() -> u64 {
    256
}
fn default_peer_dead_ms() -> u64 {
    400
}
fn default_heartbeat_ms() -> u64 {
    100
}
fn default_witness_heartbeat_ms() -> u64 {
    200
}
fn default_witness_timeout_ms() -> u64 {
    3_000
}
fn default_resync_rate() -> Size {
    Size(200 << 20)
}
fn default_dirty_granularity() -> Size {
    Size(64 << 10)
}
fn default_boot_id_file() -> PathBuf {
    PathBuf::from(crate::layer::mirror::state::DEFAULT_BOOT_ID)
}

fn default_true() -> bool {
    true
}
fn default_activity_log_extents() -> u32 {
    1024
}
fn default_cores() -> Vec<usize> {
    vec![0]
}
fn default_spin_us() -> u64 {
    50
}
fn yes() -> bool {
    true
}
/// The longest wait `slow_ms` may ask (a day: an update's due time stays representable).
pub const MAX_SLOW_MS: u64 = 86_400_000;

fn default_slow_ms() -> u64 {
    100
}

fn default_block_size() -> u32 {
    512
}
fn default_nbd_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:10809".parse().expect("literal address")]
}
fn default_nop_in_interval_ms() -> u32 {
    15_000
}
fn default_iscsi_max_connections() -> u32 {
    crate::frontend::iscsi::login::TARGET_MAX_CONNECTIONS
}
fn default_nvmf_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:4420".parse().expect("literal address")]
}
/// Default control socket: in a directory of its own under /run (created 0750), never in a
/// world-writable directory.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/twinblk/twinblk.sock";

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

impl ReactorConfig {
    /// Whether `background_cores` names the core of reactor `id` (a reactor there may not
    /// poll: it would never leave the core to the daemon's own threads).
    pub fn shares_core(&self, id: usize) -> bool {
        self.background_cores
            .as_ref()
            .zip(self.cores.get(id))
            .is_some_and(|(bg, c)| bg.contains(c))
    }
}

impl Default for ReactorConfig {
    fn default() -> Self {
        Self {
            cores: default_cores(),
            wait: Wait::default(),
            spin_us: default_spin_us(),
            pin: true,
            background_cores: None,
        }
    }
}

impl Default for NbdConfig {
    fn default() -> Self {
        Self {
            listen: default_nbd_listen(),
            exports: Vec::new(),
        }
    }
}

impl Default for NvmfConfig {
    fn default() -> Self {
        Self {
            listen: default_nvmf_listen(),
            subsystems: Vec::new(),
            state_dir: None,
            min_cntlid: None,
            max_cntlid: None,
        }
    }
}

impl Default for IscsiConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            extra_portals: Vec::new(),
            nop_in_interval_ms: default_nop_in_interval_ms(),
            max_connections: default_iscsi_max_connections(),
            state_dir: None,
            targets: Vec::new(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: default_control_socket(),
            group: None,
            metrics: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            reactor: ReactorConfig::default(),
            nbd: NbdConfig::default(),
            nvmf: NvmfConfig::default(),
            iscsi: IscsiConfig {
                listen: vec!["127.0.0.1:3260".parse().expect("literal address")],
                ..IscsiConfig::default()
            },
            control: ControlConfig::default(),
            volumes: vec![VolumeConfig {
                name: "vol0".into(),
                backend: Backend::Malloc,
                size: Size(1 << 30),
                block_size: 512,
                path: None,
                create: true,
                fail_range: None,
                fail_flush: false,
                fail_flush_after_ms: None,
                stall_range: None,
                slow_range: None,
                slow_ms: default_slow_ms(),
                slow_flush: false,
                volatile_cache: false,
                fail_writes_only: false,
                fail_reads_only: false,
                mirror: false,
                leader: None,
                group: None,
                cdp: None,
                view: None,
            }],
            mirror: None,
            runtime: RuntimeConfig::default(),
            hosts: Vec::new(),
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// TOML syntax or a field of the wrong type.
    #[error("config: {0}")]
    Parse(String),
    /// A semantic problem, said plainly.
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parse TOML text (unknown fields are errors) and validate it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Check everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.reactor.cores.is_empty() {
            return bad("reactor.cores must list at least one core".into());
        }
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpus = num_configured_cpus().max(ncpu);
        for (i, c) in self.reactor.cores.iter().enumerate() {
            if *c >= cpus {
                return bad(format!(
                    "reactor.cores[{i}] = {c}, but this machine has cores 0..{}",
                    cpus - 1
                ));
            }
            if self.reactor.cores[..i].contains(c) {
                return bad(format!("core {c} is listed twice in reactor.cores"));
            }
        }
        if let Some(bg) = &self.reactor.background_cores {
            if bg.is_empty() {
                return bad(
                    "reactor.background_cores is empty: list at least one core, or leave it out (every core no reactor takes)"
                        .into(),
                );
            }
            for (i, c) in bg.iter().enumerate() {
                if *c >= cpus {
                    return bad(format!(
                        "reactor.background_cores[{i}] = {c}, but this machine has cores 0..{}",
                        cpus - 1
                    ));
                }
                if bg[..i].contains(c) {
                    return bad(format!(
                        "core {c} is listed twice in reactor.background_cores"
                    ));
                }
            }
            // (`reactor_set_wait` asks the same at run time.)
            if self.reactor.wait == Wait::Poll
                && let Some(i) =
                    (0..self.reactor.cores.len()).find(|&i| self.reactor.shares_core(i))
            {
                return bad(format!(
                    "reactor.background_cores names core {}, whose reactor polls (wait = \"poll\") and never leaves it: name other cores, or wait = \"adaptive\" or \"interrupt\"",
                    self.reactor.cores[i]
                ));
            }
        }
        let max_spin = crate::runtime::wait::MAX_SPIN_US;
        if self.reactor.spin_us > max_spin {
            return bad(format!(
                "reactor.spin_us = {}: give 0 to {max_spin} µs (as reactor_set_wait takes)",
                self.reactor.spin_us
            ));
        }
        if self.runtime.max_volumes == 0 || self.runtime.max_volumes > MAX_MAX_VOLUMES {
            return bad(format!(
                "runtime.max_volumes = {}: give 1 to {MAX_MAX_VOLUMES}",
                self.runtime.max_volumes
            ));
        }
        if self.volumes.len() > self.runtime.max_volumes {
            return bad(format!(
                "{} volumes are configured but runtime.max_volumes is {}: raise it",
                self.volumes.len(),
                self.runtime.max_volumes
            ));
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.volumes {
            if !valid_volume_name(&v.name) {
                return bad(format!(
                    "volume name {:?}: give 1 to 64 of A-Z a-z 0-9 . _ - : (it becomes part of file names, NQNs and IQNs)",
                    v.name
                ));
            }
            if !names.insert(v.name.as_str()) {
                return bad(format!("volume name {:?} is used twice", v.name));
            }
            if !matches!(v.block_size, 512 | 4096) {
                return bad(format!("volume {}: block_size must be 512 or 4096", v.name));
            }
            if v.size.0 == 0 || v.size.0 % v.block_size as u64 != 0 {
                return bad(format!(
                    "volume {}: size {} is not a non-zero multiple of {}",
                    v.name, v.size.0, v.block_size
                ));
            }
            if v.size.0 > MAX_VOLUME_SIZE {
                return bad(format!(
                    "volume {}: size {} is too large: at most {MAX_VOLUME_SIZE} bytes (2^63 - 1: file offsets are signed 64-bit)",
                    v.name, v.size.0
                ));
            }
            if v.fail_writes_only && v.fail_reads_only {
                return bad(format!(
                    "volume {}: give at most one of fail_writes_only and fail_reads_only",
                    v.name
                ));
            }
            if v.slow_ms > MAX_SLOW_MS {
                return bad(format!(
                    "volume {}: slow_ms {} is too large: at most {MAX_SLOW_MS} (a day)",
                    v.name, v.slow_ms
                ));
            }
            match (&v.backend, &v.path) {
                (Backend::Uring, None) => {
                    return bad(format!("volume {}: backend uring needs a path", v.name));
                }
                (Backend::Malloc, Some(_)) => {
                    return bad(format!("volume {}: backend malloc takes no path", v.name));
                }
                _ if v.volatile_cache && v.backend != Backend::Uring => {
                    return bad(format!(
                        "volume {}: volatile_cache is for backend uring",
                        v.name
                    ));
                }
                (Backend::CdpView, Some(_)) => {
                    return bad(format!(
                        "volume {}: backend cdp-view takes no path (its [volume.view] dir names the history)",
                        v.name
                    ));
                }
                _ => {}
            }
            match (&v.backend, &v.view) {
                (Backend::CdpView, None) => {
                    return bad(format!(
                        "volume {}: backend cdp-view needs a [volume.view] section",
                        v.name
                    ));
                }
                (Backend::CdpView, Some(w)) => {
                    let given = [w.seq.is_some(), w.time.is_some(), w.bookmark.is_some()]
                        .iter()
                        .filter(|g| **g)
                        .count();
                    if given != 1 {
                        return bad(format!(
                            "volume {}: view: give exactly one of seq, time, bookmark",
                            v.name
                        ));
                    }
                    if v.mirror
                        || v.cdp.is_some()
                        || v.fail_range.is_some()
                        || v.fail_flush
                        || v.fail_flush_after_ms.is_some()
                        || v.stall_range.is_some()
                        || v.slow_range.is_some()
                        || v.slow_flush
                    {
                        return bad(format!(
                            "volume {}: a cdp-view volume cannot be mirrored, journaled or have injected faults",
                            v.name
                        ));
                    }
                }
                (_, Some(_)) => {
                    return bad(format!(
                        "volume {}: [volume.view] belongs to backend cdp-view only",
                        v.name
                    ));
                }
                _ => {}
            }
        }
        let mirrored: Vec<&VolumeConfig> = self.volumes.iter().filter(|v| v.mirror).collect();
        match &self.mirror {
            None if !mirrored.is_empty() => {
                return bad(format!(
                    "volume {} is mirrored but there is no [mirror] section",
                    mirrored[0].name
                ));
            }
            Some(m) => {
                if m.site.is_empty() || m.peer_site.is_empty() || m.site == m.peer_site {
                    return bad(
                        "mirror.site and mirror.peer_site must be two different names".into(),
                    );
                }
                if m.listen.is_empty() {
                    return bad("mirror.listen needs at least one address".into());
                }
                if m.peer_timeout_ms == 0 {
                    return bad("mirror.peer_timeout_ms must be at least 1".into());
                }
                if m.witness_key_file.is_none() {
                    return bad("mirror.witness_key_file is required: the replication links are authenticated with the sites' shared key (there is no unauthenticated mode)".into());
                }
                if m.site_id == Some(0) {
                    return bad("mirror.site_id must not be 0".into());
                }
                m.check_limits(&mirrored).or_else(bad)?;
                let mut groups: std::collections::HashMap<&str, &str> = Default::default();
                for v in &mirrored {
                    let l = m.leader_of(v);
                    if l != m.site && l != m.peer_site {
                        return bad(format!(
                            "volume {}: leader {l:?} is neither {:?} nor {:?}",
                            v.name, m.site, m.peer_site
                        ));
                    }
                    let g = v.group.as_deref().unwrap_or(&v.name);
                    if let Some(other) = groups.insert(g, l)
                        && other != l
                    {
                        return bad(format!(
                            "volume group {g:?}: its volumes have different leaders ({other:?} and {l:?}); a group fails over as one, with one preferred site"
                        ));
                    }
                }
            }
            None => {}
        }
        for v in &self.volumes {
            if let Some(c) = &v.cdp {
                if c.dir.as_os_str().is_empty() {
                    return bad(format!("volume {}: cdp.dir is empty", v.name));
                }
                let seg = c.segment_size.0;
                let min = crate::layer::cdp::MIN_SEGMENT;
                if seg < min || seg % 4096 != 0 || seg > 1 << 40 {
                    return bad(format!(
                        "volume {}: cdp.segment_size = {seg} must be a multiple of 4096 between {min} (4 MiB: two of the largest journal appends) and 1 TiB",
                        v.name
                    ));
                }
                if let Some(a) = &c.retention_age
                    && let Err(e) = parse_age(a)
                {
                    return bad(format!("volume {}: cdp.retention_age: {e}", v.name));
                }
                if let Some(b) = c.retention_bytes
                    && b.0 < 2 * seg
                {
                    return bad(format!(
                        "volume {}: cdp.retention_bytes = {} is below two segments ({}): the active segment is never consolidated",
                        v.name,
                        b.0,
                        2 * seg
                    ));
                }
                if let Some(o) = self
                    .volumes
                    .iter()
                    .find(|o| o.name != v.name && o.cdp.as_ref().is_some_and(|oc| oc.dir == c.dir))
                {
                    return bad(format!(
                        "volumes {} and {} have the same cdp.dir: each volume needs its own",
                        v.name, o.name
                    ));
                }
            }
        }
        let files: Vec<_> = (self.volumes.iter())
            .filter_map(|v| Some((v.name.as_str(), v.path.as_deref()?)))
            .collect();
        let dirs: Vec<_> = (self.volumes.iter())
            .filter_map(|v| Some((v.name.as_str(), v.cdp.as_ref()?.dir.as_path())))
            .collect();
        check_volume_paths(&files, &dirs).or_else(bad)?;
        let state_files = self.state_files();
        for (name, f) in &files {
            check_not_a_state_file(f, &state_files)
                .or_else(|e| bad(format!("volume {name}: {e}")))?;
        }
        for v in &self.volumes {
            if (v.leader.is_some() || (v.group.is_some() && v.cdp.is_none())) && !v.mirror {
                return bad(format!(
                    "volume {}: leader is set but mirror is not",
                    v.name
                ));
            }
        }
        let mut exports = std::collections::HashSet::new();
        for e in &self.nbd.exports {
            if !names.contains(e.volume.as_str()) {
                return bad(format!("export {}: no volume named {:?}", e.name, e.volume));
            }
            if e.name.len() > 4096 || !exports.insert(e.name.as_str()) {
                return bad(format!(
                    "export name {:?} is too long or used twice",
                    e.name
                ));
            }
        }
        self.check_hosts().or_else(bad)?;
        if self.control.group.as_deref() == Some("") {
            return bad("control.group is empty: name a group or leave it out".into());
        }
        for (name, v) in [
            ("min_cntlid", self.nvmf.min_cntlid),
            ("max_cntlid", self.nvmf.max_cntlid),
        ] {
            if let Some(v) = v
                && !(1..=MAX_CNTLID).contains(&v)
            {
                return bad(format!(
                    "nvmf.{name} = {v:#x} is outside 1..=0xFFEF (the dynamic controller ids)"
                ));
            }
        }
        let ids = self.cntlid_range();
        if ids.is_empty() {
            return bad(format!(
                "nvmf.min_cntlid ({:#x}) is above nvmf.max_cntlid ({:#x})",
                ids.start(),
                ids.end()
            ));
        }
        let mut nqns = std::collections::HashSet::new();
        for s in &self.nvmf.subsystems {
            if !s.nqn.starts_with("nqn.")
                || s.nqn.len() > 223
                || !plain_text(&s.nqn)
                || !nqns.insert(s.nqn.as_str())
            {
                return bad(format!(
                    "subsystem NQN {:?} must start with \"nqn.\", be at most 223 bytes without spaces or control characters, and be unique",
                    s.nqn
                ));
            }
            if s.nqn == "nqn.2014-08.org.nvmexpress.discovery" {
                return bad("the discovery NQN cannot name a subsystem".into());
            }
            if s.namespaces.is_empty() {
                return bad(format!("subsystem {}: no namespaces", s.nqn));
            }
            for v in &s.namespaces {
                if !names.contains(v.as_str()) {
                    return bad(format!("subsystem {}: no volume named {v:?}", s.nqn));
                }
            }
            if s.allowed_hosts
                .iter()
                .any(|h| h.is_empty() || h.len() > 223 || !plain_text(h))
            {
                return bad(format!(
                    "subsystem {}: a host NQN is empty, too long or has spaces or control characters",
                    s.nqn
                ));
            }
        }
        for p in &self.iscsi.extra_portals {
            check_portal(p).map_err(|why| {
                ConfigError::Invalid(format!(
                    "iscsi.extra_portals {p:?}: {why}; give HOST:PORT,TAG (e.g. \"10.0.0.2:3260,2\")"
                ))
            })?;
        }
        if !(1..=65535).contains(&self.iscsi.max_connections) {
            return bad(format!(
                "iscsi.max_connections = {}: must be 1..65535",
                self.iscsi.max_connections
            ));
        }
        self.check_names_to_files().or_else(bad)?;
        let mut iqns = std::collections::HashSet::new();
        for t in &self.iscsi.targets {
            let form = ["iqn.", "eui.", "naa."]
                .iter()
                .any(|p| t.iqn.starts_with(p));
            if !form || t.iqn.len() > 223 || !plain_text(&t.iqn) || !iqns.insert(t.iqn.as_str()) {
                return bad(format!(
                    "iSCSI target name {:?} must start with \"iqn.\", \"eui.\" or \"naa.\", be at most 223 bytes without spaces or control characters, and be unique",
                    t.iqn
                ));
            }
            if t.luns.is_empty() || t.luns.len() > 16384 {
                return bad(format!("iSCSI target {}: 1 to 16384 LUNs", t.iqn));
            }
            for v in &t.luns {
                if !names.contains(v.as_str()) {
                    return bad(format!("iSCSI target {}: no volume named {v:?}", t.iqn));
                }
            }
            let secret = t.chap_secret.is_some() || t.chap_secret_file.is_some();
            if t.chap_secret.is_some() && t.chap_secret_file.is_some() {
                return bad(format!(
                    "iSCSI target {}: chap_secret and chap_secret_file both set",
                    t.iqn
                ));
            }
            if t.chap_user.is_some() != secret
                || t.chap_mutual_user.is_some() != t.chap_mutual_secret.is_some()
                || (t.chap_mutual_user.is_some() && !secret)
            {
                return bad(format!(
                    "iSCSI target {}: CHAP needs a user and a secret (and mutual CHAP both of its own)",
                    t.iqn
                ));
            }
            if t.allowed_initiators
                .iter()
                .any(|h| h.is_empty() || h.len() > 223 || !plain_text(h))
            {
                return bad(format!(
                    "iSCSI target {}: an initiator name is empty, too long or has spaces or control characters",
                    t.iqn
                ));
            }
        }
        Ok(())
    }

    /// The host list: names unique and not empty, each site one of the mirror's two.
    fn check_hosts(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for h in &self.hosts {
            if h.name.is_empty() || h.name.len() > 223 || !plain_text(&h.name) {
                return Err(format!(
                    "host {:?}: a host name (iSCSI initiator name or NVMe host NQN) must be 1 to 223 bytes without spaces or control characters",
                    h.name
                ));
            }
            if !seen.insert(h.name.as_str()) {
                return Err(format!(
                    "host {:?} is listed twice: a host is at one site",
                    h.name
                ));
            }
            let Some(m) = &self.mirror else {
                return Err(format!(
                    "host {:?}: site {:?} is unknown: a [[host]] list names the sites of [mirror], and there is no [mirror] section",
                    h.name, h.site
                ));
            };
            if h.site != m.site && h.site != m.peer_site {
                return Err(format!(
                    "host {:?}: site {:?} is unknown: give mirror.site ({:?}) or mirror.peer_site ({:?})",
                    h.name, h.site, m.site, m.peer_site
                ));
            }
        }
        Ok(())
    }

    /// The host list resolved against this site (`HostSites`, looked up at login/connect).
    pub fn host_sites(&self) -> crate::bdev::host_path::HostSites {
        use crate::bdev::host_path::{HostSites, Site};
        let here = self.mirror.as_ref().map(|m| m.site.as_str());
        let sites = HostSites::new(self.hosts.iter().map(|h| {
            let site = if Some(h.site.as_str()) == here {
                Site::Here
            } else {
                Site::Peer
            };
            (h.name.clone(), site)
        }));
        match &self.mirror {
            Some(m) => sites.named(&m.site, &m.peer_site),
            None => sites,
        }
    }

    /// This site's iSCSI target portal group tag (also its ALUA target port group and
    /// relative target port id): 1 at a single site and at the mirror site whose name sorts
    /// first, 2 at the other, so a host that sees both sites sees two port groups.
    pub fn iscsi_tpg(&self) -> u16 {
        if self.lower_site() { 1 } else { 2 }
    }

    /// The iSCSI targets actually served: the configured ones, or one per volume named
    /// `iqn.2026-11.io.twinblk:<volume>` with that volume as LUN 0 and any initiator allowed.
    pub fn effective_iscsi_targets(&self) -> Vec<IscsiTargetConfig> {
        if !self.iscsi.targets.is_empty() {
            return self.iscsi.targets.clone();
        }
        self.volumes
            .iter()
            .map(|v| IscsiTargetConfig {
                iqn: format!("iqn.2026-11.io.twinblk:{}", v.name),
                luns: vec![v.name.clone()],
                allowed_initiators: Vec::new(),
                chap_user: None,
                chap_secret: None,
                chap_secret_file: None,
                chap_mutual_user: None,
                chap_mutual_secret: None,
            })
            .collect()
    }

    /// Whether this site is the mirror's lower site (its name sorts first; a single site is).
    /// The lower site takes the lower half of the controller ids and its port ids start at 1.
    pub fn lower_site(&self) -> bool {
        self.mirror.as_ref().is_none_or(|m| m.site < m.peer_site)
    }

    /// The controller ids this site hands out. Controller ids must be unique within an NVM
    /// subsystem, and the two sites present each subsystem together (a multipath host rejects
    /// a second path with a cntlid it already has), so each site has its own range:
    /// `[nvmf] min_cntlid`/`max_cntlid`, by default `1..=0x7FF7` at the mirror site whose name
    /// sorts first, `0x7FF8..=0xFFEF` at the other, and `1..=0xFFEF` without a mirror.
    pub fn cntlid_range(&self) -> std::ops::RangeInclusive<u16> {
        let (lo, hi) = if self.mirror.is_none() {
            (1, MAX_CNTLID)
        } else if self.lower_site() {
            (1, CNTLID_SPLIT)
        } else {
            (CNTLID_SPLIT + 1, MAX_CNTLID)
        };
        self.nvmf.min_cntlid.unwrap_or(lo)..=self.nvmf.max_cntlid.unwrap_or(hi)
    }

    /// The discovery log's port id of this site's first NVMe/TCP listener (the others follow):
    /// 1 at a single site and at the mirror site whose name sorts first, 0x101 at the other,
    /// so a host that discovers both sites sees distinct ports.
    pub fn nvmf_first_port_id(&self) -> u16 {
        if self.lower_site() { 1 } else { 0x101 }
    }

    /// The NVMe-oF subsystems actually served: the configured ones, or one per volume named
    /// `nqn.2026-11.io.twinblk:<volume>` with that volume as namespace 1 and any host allowed.
    pub fn effective_subsystems(&self) -> Vec<SubsystemConfig> {
        if !self.nvmf.subsystems.is_empty() {
            return self.nvmf.subsystems.clone();
        }
        self.volumes
            .iter()
            .map(|v| SubsystemConfig {
                nqn: format!("nqn.2026-11.io.twinblk:{}", v.name),
                allowed_hosts: Vec::new(),
                namespaces: vec![v.name.clone()],
            })
            .collect()
    }

    /// The exports actually served: the configured ones, or every volume under its own name.
    pub fn effective_exports(&self) -> Vec<ExportConfig> {
        if !self.nbd.exports.is_empty() {
            return self.nbd.exports.clone();
        }
        self.volumes
            .iter()
            .map(|v| ExportConfig {
                name: v.name.clone(),
                volume: v.name.clone(),
                read_only: false,
                description: String::new(),
            })
            .collect()
    }
}

/// An `iscsi.extra_portals` entry, `HOST:PORT,TAG` as SendTargets lists it: a host name or
/// address (IPv6 in brackets) without spaces or control characters, a port and a portal group
/// tag of 1 to 65535.
fn check_portal(p: &str) -> Result<(), String> {
    if !plain_text(p) {
        return Err("spaces or control characters".into());
    }
    let (addr, tag) = p.rsplit_once(',').ok_or("no \",TAG\"")?;
    let (host, port) = addr.rsplit_once(':').ok_or("no \":PORT\"")?;
    let in_range = |v: &str| v.parse::<u16>().is_ok_and(|n| n >= 1);
    if host.is_empty() || host.contains(',') {
        return Err("no host".into());
    }
    if !in_range(port) {
        return Err(format!("port {port:?} is not 1 to 65535"));
    }
    if !in_range(tag) {
        return Err(format!("portal group tag {tag:?} is not 1 to 65535"));
    }
    Ok(())
}

/// The largest volume size: offsets into a file or block device are signed 64-bit (`off_t`),
/// so a volume ends at or below `i64::MAX` (rounded down to its blocks).
pub const MAX_VOLUME_SIZE: u64 = i64::MAX as u64;

/// A volume name: 1 to 64 of `A-Z a-z 0-9 . _ - :`, in the config file as at run time (no
/// path separator, NUL, space or non-ASCII: it becomes part of file names, NQNs and IQNs).
pub fn valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// An NQN, iSCSI name or host name's text: no spaces and no control characters (NUL ends a
/// name on the wire: NVMe's NUL-padded NQN fields, iSCSI's NUL-separated text keys).
pub fn plain_text(s: &str) -> bool {
    !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn num_configured_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n > 0 { n as usize } else { 1 }
}

#[cfg(test)]
mod tests;
