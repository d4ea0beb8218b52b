//! The per-volume mirror engine: orders updates, applies them to the local replica, exchanges
//! them with the peer site, and completes an initiator's request only when both replicas have
//! it (docs/mirror-protocol.md).
//!
//! Model: one engine per mirrored volume, owned by the volume's channel on its home reactor
//! (single-threaded: no locks). It knows nothing about sockets: the link hands it decoded
//! messages ([`Engine::on_msg`]) and drains what it has to send ([`Engine::take_outbox`]), so
//! another transport (RDMA) can drive it the same way.
//!
//! - The **leader** numbers every update (its own and those forwarded by the follower) with the
//!   session's next `seq`, applies it, and sends WRITE/ZEROES/UNMAP or ORDER, in `seq` order.
//! - The **follower** forwards its initiators' updates, keeps their data, and applies each
//!   update (the leader's and its own) when the stream gives it its `seq`.
//! - On both sites the **apply queue** starts an update only when no earlier update that
//!   overlaps it is still queued or being applied, so overlapping updates reach the replica in
//!   `seq` order and both replicas end identical.
//!
//! Invariants:
//! - An initiator's update is completed with success only when it is applied locally and the
//!   peer's applied watermark covers its `seq` in the current session.
//! - The leader keeps the data of every update until the follower's watermark passes it, and
//!   re-sends those updates, in their old order, at the start of the next session.
//! - A message that fails a check is never applied: [`Engine::on_msg`] returns the reason and
//!   the link is dropped.
//! - A site that fences records the regions of every update it still tracks (applied or being
//!   applied here, not confirmed by the peer) as *suspect*; as a resync target it lists them to
//!   the source (RESYNC_ALSO), which copies them too and finishes only after the list's end.

mod apply;
mod region;
mod replica;

use super::stats::MirrorStats;
use super::wire::{self, Header, Type};
use crate::bdev::{Channel, Start};
use crate::uring::{Errno, IoCx, IoTag};
use apply::ApplyQueue;
pub use region::RegionMap;
pub use replica::{Mode, Session, decide, state_name};
use slab::Slab;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Decides and installs a volume's replicated metadata (NVMe reservations). The engine only
/// carries its opaque commands and states between the sites (docs/mirror-protocol.md).
pub trait MetaHandler: Send + Sync + std::fmt::Debug {
    /// Decide `cmd` at this site (the leader, or a survivor): its status (0: success) and,
    /// when the state changed, the new state to copy to the peer.
    fn execute(&self, vol: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>);
    /// Install a state the peer decided.
    fn install(&self, vol: usize, state: &[u8]) -> Install;
    /// This site's whole state of the volume, one META_STATE payload each.
    fn full_state(&self, vol: usize) -> Vec<Vec<u8>>;
}

/// What installing a peer's metadata state did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Installed (and persisted).
    Done,
    /// Not a valid state: the message is refused and the link dropped.
    Malformed,
    /// Valid but not installed here (not configured here, or not persisted): logged, and
    /// reported to the peer in META_ACK; the link stays up.
    Failed,
}

/// Status 0x006, Internal Error.
const META_INTERNAL: u16 = 6;

/// A metadata command's non-zero status travels to the initiator as `Errno(META_STATUS |
/// status)`.
pub const META_STATUS: i32 = 0x4000_0000;

/// The completion of a metadata command with `status`.
pub fn meta_result(status: u16) -> Result<(), Errno> {
    if status == 0 {
        Ok(())
    } else {
        Err(Errno(META_STATUS | i32::from(status)))
    }
}

/// A metadata command waiting for the peer.
///
/// An entry stays until its answer (or the end of the session) even when its initiator was
/// already failed on the timeout, so a late answer never finds another request in its slot.
struct MetaWait {
    /// Who to answer, until answered.
    initiator: Option<(u32, IoTag)>,
    /// Leader: the META_STATE token whose META_ACK completes it (follower: 0, the answer's
    /// `id` is this entry's key).
    token: u64,
    status: u16,
    deadline: Instant,
}

/// Which site orders this volume's updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Orders updates; listens for the follower's link.
    Leader,
    /// Forwards its updates; dials the leader.
    Follower,
}

/// Tags of the engine's own inner operations use connection keys from here up.
pub const LAYER_KEY_BASE: u32 = 0xFF00_0000;

/// An update an initiator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update<'a> {
    /// Write these bytes.
    Write(&'a [u8]),
    /// Write zeroes over this many bytes.
    Zeroes(u64),
    /// Deallocate this many bytes.
    Unmap(u64),
    /// Make completed writes durable.
    Flush,
    /// A volume metadata command (an NVMe reservation command), decided by the leader.
    Meta(&'a [u8]),
    /// Compare `cmp` with the data at the offset and, when equal, write `data` (the same
    /// length) there, atomically across both sites. A mismatch fails with
    /// [`Errno::MISCOMPARE`] and writes nothing.
    CompareWrite {
        /// Expected data.
        cmp: &'a [u8],
        /// Data to write when it matches.
        data: &'a [u8],
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upd {
    Write,
    /// Compare-and-write not yet decided (`data` = compare data, then write data). Once
    /// decided it becomes a `Write` of the write data (match) or ends (miscompare).
    Caw,
    Zeroes,
    Unmap,
    Flush,
    /// Read a dirty region and send it to the returning peer (resync source).
    ResyncRead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// From this site's initiator.
    Local,
    /// Leader's update applied at the follower.
    PeerSeq,
    /// Follower's update, sequenced at the leader (`id` is the follower's).
    PeerFwd,
    /// Flush asked by the peer (`id` is the peer's).
    PeerFlush(u32),
    /// A resync copy: read here (source) or applied here (target).
    Resync,
}

struct Op {
    origin: Origin,
    upd: Upd,
    offset: u64,
    len: u64,
    fua: bool,
    data: Vec<u8>,
    /// Sequence number in `session` (0: none yet).
    seq: u64,
    session: u32,
    /// Applied locally at least once.
    applied: bool,
    apply_err: Option<Errno>,
    /// Applies queued or in flight.
    applying: u32,
    /// The peer has it (watermark passed, or FLUSH_DONE).
    remote_done: bool,
    /// Who to answer (reactor, tag), until answered.
    initiator: Option<(u32, IoTag)>,
    deadline: Instant,
    /// Follower: a forward waiting for its ORDER in the current session.
    awaiting_order: bool,
    /// Leader, forwarded update: the follower's request id, and whether its ORDER is still to
    /// be sent (false once sent, or when re-sent as a WRITE in a later session).
    peer_id: u32,
    order_due: bool,
    /// In `forwards` or `flushes` (kept so `settle` need not search those lists).
    listed: bool,
    /// Submitted as a compare-and-write (still so, or decided and now a write).
    caw: bool,
    /// Follower: the session its forward was sent in (0: not sent yet).
    fwd_session: u32,
    /// Follower: the forward's id, unique while the op lives (across sessions).
    uid: u32,
    /// Leader, forwarded update: the incarnation of the follower process that sent it.
    /// Follower, forward: the incarnation of the leader process that ordered it.
    fwd_inc: u64,
}

/// Static engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Volume name.
    pub name: String,
    /// This site's role.
    pub role: Role,
    /// Volume size in bytes.
    pub size: u64,
    /// Block size.
    pub block: u32,
    /// How long an initiator's request may wait for the peer.
    pub peer_timeout: Duration,
    /// Most bytes of unacknowledged update data the leader keeps while the peer is away.
    pub max_backlog: u64,
    /// A link that received nothing for this long is dropped.
    pub peer_dead: Duration,
    /// How often an up link is pinged (the site-to-site heartbeat).
    pub heartbeat: Duration,
    /// With a witness: where the engine asks for a survivor grant when the peer is lost.
    pub failover: Option<Arc<super::failover::FailoverSlot>>,
    /// Bytes per bit of the dirty-region bitmap kept while serving alone.
    pub dirty_granularity: u64,
    /// Resync copy rate limit, bytes per second.
    pub resync_rate: u64,
    /// Where the replica state is persisted (none: in memory only).
    pub state_file: Option<std::path::PathBuf>,
    /// Replicated metadata (reservations) of the volume, when a front end keeps any.
    pub meta: Option<Arc<dyn MetaHandler>>,
}

/// The survivor's side of a resync.
struct ResyncSource {
    /// Next bitmap bit to look at in this pass.
    cursor: u64,
    /// Region reads in flight.
    reads: u32,
    /// Last pass: new updates wait (deferred) so the dirty set can drain to empty.
    last_pass: bool,
    deferred: VecDeque<usize>,
    /// Byte budget of the rate limiter.
    budget: f64,
    last_refill: Instant,
    started: Instant,
    total: u64,
    /// The target's list of suspect regions has ended (RESYNC_ALSO with no range): only then
    /// may the last pass start.
    also_done: bool,
    /// Regions copied in this attempt: dirty again if it is interrupted (they may not have
    /// arrived).
    copied: RegionMap,
}

/// One mirrored volume's engine.
pub struct Engine {
    cfg: EngineConfig,
    inner: Box<dyn Channel>,
    layer_key: u32,
    ops: Slab<Op>,
    /// The apply queue and the session's applied watermark.
    aq: ApplyQueue,
    /// Leader: updates the follower has not acknowledged, in `seq` order (old sessions first).
    backlog: VecDeque<usize>,
    backlog_bytes: u64,
    /// Follower: forwards, in the order sent.
    forwards: VecDeque<usize>,
    /// Leader: the compare-and-write being decided; updates arriving meanwhile wait in
    /// `barrier` (unsequenced, in arrival order).
    caw_active: Option<usize>,
    barrier: VecDeque<usize>,
    /// Metadata commands waiting for the peer.
    metas: Slab<MetaWait>,
    next_token: u64,
    /// Follower: the last forward id given.
    next_uid: u32,
    /// Follower: the session started and the leader's RESENT has not come yet (no forwards).
    resent_pending: bool,
    /// This process's incarnation (random at start; the follower sends it in HELLO).
    incarnation: u64,
    /// The peer process's incarnation (from its HELLO or WELCOME).
    peer_incarnation: u64,
    /// Leader: RESENT waits for these applies (running or queued when the session started),
    /// so that a forward it does not re-send is applied here when the follower learns so.
    resent_wait: Vec<usize>,
    resent_due: bool,
    /// Follower: MISCOMPAREs answered once the applied watermark reaches their seq:
    /// (op, its uid, seq).
    miscompare_waits: Vec<(usize, u32, u64)>,
    vol: usize,
    /// Flushes waiting for FLUSH_DONE.
    flushes: Vec<usize>,
    session: u32,
    up: bool,
    /// Leader: next seq to give. Follower: next seq expected.
    next_seq: u64,
    ack_sent: u64,
    peer_wm: u64,
    outbox: Vec<u8>,
    spare: Vec<Vec<u8>>,
    diverged: bool,
    held_logged: bool,
    stats: Arc<MirrorStats>,
    epoch: Instant,
    /// Completions to initiators: (their reactor, tag, result).
    pub done: Vec<(u32, IoTag, Result<(), Errno>)>,
    /// The connection key of the link carrying the session (or being dialled).
    pub link_key: Option<u32>,
    /// Last time the link received bytes.
    pub last_rx: Instant,
    /// The link must be dropped (heartbeat timeout).
    pub kill_link: Option<&'static str>,
    next_ping: Instant,
    next_dial: Instant,
    /// Messages arrived since the last `take_outbox`.
    rx_since_flush: bool,
    /// When the oldest unacknowledged applied update was first seen waiting for an ACK.
    ack_pending_since: Option<Instant>,
    /// The daemon is stopping: take no new forwarded updates.
    draining: bool,
    mode: Mode,
    /// A grant was asked for since the link went down.
    grant_asked: bool,
    /// Regions written while serving alone (one bit per `dirty_granularity` bytes).
    dirty: RegionMap,
    resync: Option<ResyncSource>,
    /// Target: resync copies still being applied.
    resync_applies: u32,
    /// Target: RESYNC_DONE received.
    resync_done: bool,
    /// Reused buffer for a region read at once.
    resync_buf: Vec<u8>,
    /// The witness epoch this site holds as survivor.
    grant_epoch: u64,
    /// Regions ever written here (a new, empty replica is sent only these).
    written: RegionMap,
    /// Suspect regions: updates applied here that the peer never confirmed (recorded when
    /// this site fences); sent as RESYNC_ALSO when this site is resynced, so the source copies
    /// them too. Not used while serving as survivor (merged into `dirty`).
    suspect: RegionMap,
    /// Started with no persisted state: an empty replica that has never been in sync.
    new_replica: bool,
    /// An operator's takeover is being asked for.
    takeover_started: bool,
}

/// An ACK is sent at once when this many applied updates are unacknowledged. Otherwise: one
/// unacknowledged update (queue depth 1) is acknowledged in the first turn in which the peer
/// sent nothing new; several (a stream of concurrent updates) wait at most [`ACK_WINDOW`] from
/// the first of them, so a busy stream is acknowledged in batches and a lone update at once.
pub const ACK_BATCH: u64 = 16;
/// The longest an applied update waits for its ACK when others are pending with it.
pub const ACK_WINDOW: Duration = Duration::from_micros(50);

/// Pause between dial attempts.
pub const REDIAL_EVERY: Duration = Duration::from_millis(200);

impl Engine {
    /// An engine over the local replica's channel `inner`; `vol` is the volume's index.
    pub fn new(
        cfg: EngineConfig,
        inner: Box<dyn Channel>,
        vol: usize,
        stats: Arc<MirrorStats>,
    ) -> Self {
        let (size, g) = (cfg.size, cfg.dirty_granularity);
        Self {
            cfg,
            inner,
            layer_key: LAYER_KEY_BASE + vol as u32,
            ops: Slab::with_capacity(1024),
            aq: ApplyQueue::new(),
            backlog: VecDeque::with_capacity(1024),
            backlog_bytes: 0,
            forwards: VecDeque::with_capacity(1024),
            caw_active: None,
            barrier: VecDeque::new(),
            metas: Slab::new(),
            next_token: 1,
            next_uid: 0,
            resent_pending: false,
            incarnation: {
                // Differs between processes (clock, pid) and between engines of one process.
                static ENGINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = ENGINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                t ^ (u64::from(std::process::id()) << 32) ^ n.rotate_left(48)
            },
            peer_incarnation: 0,
            resent_wait: Vec::new(),
            resent_due: false,
            miscompare_waits: Vec::new(),
            vol,
            flushes: Vec::new(),
            session: 0,
            up: false,
            next_seq: 1,
            ack_sent: 0,
            peer_wm: 0,
            outbox: Vec::with_capacity(1 << 20),
            spare: Vec::new(),
            diverged: false,
            held_logged: false,
            stats,
            epoch: Instant::now(),
            done: Vec::with_capacity(256),
            link_key: None,
            last_rx: Instant::now(),
            kill_link: None,
            next_ping: Instant::now(),
            next_dial: Instant::now(),
            rx_since_flush: false,
            ack_pending_since: None,
            draining: false,
            mode: Mode::Mirroring,
            grant_asked: false,
            dirty: RegionMap::new(size, g),
            resync: None,
            resync_applies: 0,
            resync_done: false,
            resync_buf: Vec::new(),
            grant_epoch: 0,
            written: RegionMap::new(size, g),
            suspect: RegionMap::new(size, g),
            new_replica: false,
            takeover_started: false,
        }
    }

    /// Change mode, publish it and persist it.
    fn set_mode(&mut self, m: Mode) {
        self.mode = m;
        self.stats.set_mode(m);
        self.persist(false);
    }

    /// Write the replica state (mode, epoch, bitmaps) if a state file is configured.
    /// `clean`: a clean stop, the bitmaps are exact.
    fn persist(&self, clean: bool) {
        let Some(path) = &self.cfg.state_file else {
            return;
        };
        let mut suspect = self.suspect.clone();
        if self.mode != Mode::Survivor {
            // At a stop, or a mode change, with updates not confirmed yet.
            self.unconfirmed_into(&mut suspect);
        }
        let p = super::state::Persisted {
            mode: self.replica_state() as u8,
            clean,
            epoch: self.grant_epoch,
            size: self.cfg.size,
            granularity: self.cfg.dirty_granularity,
            bitmap: {
                // Regions a resync under way already copied may not have reached the peer.
                let mut d = self.dirty.clone();
                if let Some(r) = &self.resync {
                    d.or_with(&r.copied);
                }
                d.words().to_vec()
            },
            written: self.written.words().to_vec(),
            led: self.cfg.role == Role::Leader,
            suspect: Some(suspect.words().to_vec()),
        };
        if let Err(e) = super::state::save(path, &p) {
            tracing::error!(volume = %self.cfg.name, error = %e, path = %path.display(),
                "mirror: cannot persist the replica state");
        }
    }

    /// Load the persisted replica state (called once, before any I/O).
    pub fn restore(&mut self) -> Result<(), String> {
        let Some(path) = self.cfg.state_file.clone() else {
            return Ok(());
        };
        let Some(p) = super::state::load(&path)? else {
            // A new, empty replica: the first session gives it the peer's data.
            self.new_replica = true;
            self.mode = Mode::Waiting;
            self.stats.set_mode(Mode::Waiting);
            self.persist(false);
            return Ok(());
        };
        if p.size != self.cfg.size {
            return Err(format!(
                "{} is for a volume of {} bytes, this one has {}",
                path.display(),
                p.size,
                self.cfg.size
            ));
        }
        self.grant_epoch = p.epoch;
        let same_geometry = p.granularity == self.cfg.dirty_granularity;
        let (size, g) = (self.cfg.size, self.cfg.dirty_granularity);
        self.written = if p.clean && same_geometry {
            RegionMap::from_words(size, g, p.written)
        } else {
            RegionMap::all(size, g)
        };
        // Suspect regions (docs/mirror-protocol.md, "Suspect regions").
        let led = p.led || self.cfg.role == Role::Leader;
        let suspect = match (p.mode, p.suspect) {
            // A new replica has applied nothing; a survivor's own dirty bitmap covers them.
            (4, _) => Vec::new(),
            (1, s) if same_geometry => s.unwrap_or_default(),
            (1, _) => Vec::new(),
            // Exact: written at a clean stop, or at the fence (a fenced or resyncing site
            // applies nothing of its own after it).
            (m, Some(s)) if same_geometry && (p.clean || m != 0 || !led) => s,
            // A follower applies only what its leader ordered, which the leader (or the
            // survivor that resyncs it) has.
            (_, None) if !led => Vec::new(),
            // Unknown (a leader that did not stop cleanly, a version-1 file): every region
            // ever written ("everything" after a crash, see above).
            _ => self.written.words().to_vec(),
        };
        self.suspect = RegionMap::from_words(size, g, suspect);
        let mode = match p.mode {
            0 => Mode::Waiting,
            4 => {
                self.new_replica = true;
                Mode::Waiting
            }
            1 => Mode::Survivor,
            _ => Mode::Fenced,
        };
        if mode == Mode::Survivor {
            if p.clean && same_geometry {
                self.dirty = RegionMap::from_words(size, g, p.bitmap);
            } else {
                // Not stopped cleanly: what was written last is unknown; resync everything.
                self.dirty = RegionMap::all(size, g);
                tracing::warn!(volume = %self.cfg.name,
                    "mirror: the survivor did not stop cleanly; the whole volume will be resynced");
            }
            self.absorb_suspect();
            self.stats
                .dirty_bytes
                .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
        }
        if mode == Mode::Survivor
            && let Some(slot) = &self.cfg.failover
        {
            slot.survivors
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.mode = mode;
        self.stats.set_mode(mode);
        tracing::info!(volume = %self.cfg.name, mode = ?mode, epoch = p.epoch, clean = p.clean,
            suspect_bytes = self.suspect_bytes(), "mirror: replica state restored");
        Ok(())
    }

    /// This site's replica state as told to the peer in HELLO/WELCOME (`id` field):
    /// 0 in sync (or fresh), 1 survivor, 2 fenced, 3 resyncing.
    pub fn replica_state(&self) -> u32 {
        replica::replica_state(self.mode, self.new_replica)
    }

    /// I/O is refused here for now (fenced, resyncing, or waiting for the first session).
    pub fn no_io(&self) -> bool {
        matches!(self.mode, Mode::Fenced | Mode::Resyncing | Mode::Waiting)
    }

    /// Decide what a new session is, from both sites' replica states, and start it.
    pub fn session_start(&mut self, io: &mut IoCx, peer: u32) -> Result<(), String> {
        let me = self.replica_state();
        match decide(me, peer) {
            Session::InSync => {
                // In sync (or both new and empty).
                self.new_replica = false;
                if self.mode == Mode::Waiting {
                    self.set_mode(Mode::Mirroring);
                }
                self.link_up(io);
                if self.cfg.role == Role::Leader {
                    self.push_meta();
                }
            }
            Session::SendAll => {
                // A new, empty replica, or one whose resync from here ended without its
                // RESYNC_DONE (this site finished, the peer never heard): send it every region
                // ever written here, serving alone meanwhile (the peer serves nothing until it
                // has the data).
                self.dirty_everything_written();
                self.set_mode(Mode::Survivor);
                self.session_start_source(io);
                self.push_meta();
                tracing::warn!(volume = %self.cfg.name, bytes = self.dirty_bytes(),
                    "mirror: the peer is a new replica; sending it every region ever written");
            }
            Session::SplitBrain => {
                return Err("both sites claim to be the survivor (split brain): refusing to serve; an operator must choose the replica to keep".into());
            }
            Session::Resync { everything_written } => {
                if everything_written {
                    self.dirty_everything_written();
                }
                self.session_start_source(io);
                self.push_meta();
                tracing::warn!(volume = %self.cfg.name, dirty_bytes = self.dirty_bytes(),
                    "mirror: the peer is back; resyncing it with the regions written since it was lost");
            }
            Session::Receive => {
                // This replica is about to be overwritten by the peer's: updates still held
                // here are failed, never sent (the peer would not take them).
                self.fail_forwards();
                self.set_mode(Mode::Resyncing);
                self.resync_applies = 0;
                self.resync_done = false;
                self.link_up(io);
                self.send_suspect();
                tracing::warn!(volume = %self.cfg.name,
                    "mirror: the peer is the survivor; receiving its changes (no I/O here until done)");
            }
            Session::Refuse => {
                return Err(format!(
                    "no survivor to resync from (this site {}, peer {}): the replicas may differ; refusing",
                    state_name(me),
                    state_name(peer)
                ));
            }
        }
        Ok(())
    }

    /// Mark every region ever written dirty (for a new, empty peer).
    fn dirty_everything_written(&mut self) {
        self.dirty.or_with(&self.written);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    fn session_start_source(&mut self, io: &mut IoCx) {
        // An attempt whose end no tick saw yet.
        self.abandon_resync(io);
        // This replica wins: its own suspect regions are copied to the peer too.
        self.absorb_suspect();
        self.link_up(io);
        let now = Instant::now();
        self.resync = Some(ResyncSource {
            cursor: 0,
            reads: 0,
            last_pass: false,
            deferred: VecDeque::new(),
            budget: 0.0,
            last_refill: now,
            started: now,
            total: 0,
            also_done: false,
            copied: RegionMap::new(self.cfg.size, self.cfg.dirty_granularity),
        });
    }

    /// A resync attempt ended with its session: every region it copied is dirty again (the
    /// copies may not have arrived), and the deferred updates go ahead alone.
    fn abandon_resync(&mut self, io: &mut IoCx) {
        let Some(r) = self.resync.take() else {
            return;
        };
        self.dirty.or_with(&r.copied);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_rate
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_eta_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        for k in r.deferred {
            self.survivor_apply(io, k);
        }
    }

    /// Resync target: list the suspect regions for the source (RESYNC_ALSO), then end the
    /// list; the source copies them too and does not finish before the end of the list.
    fn send_suspect(&mut self) {
        let mut map = self.take_suspect();
        self.unconfirmed_into(&mut map);
        let ranges = map.ranges();
        self.suspect = map;
        wire::encode_resync_also(&mut self.outbox, &ranges);
        for _ in 0..ranges.len().div_ceil(wire::MAX_RESYNC_ALSO as usize) + 1 {
            self.stats.inc(&self.stats.msgs_sent);
        }
        if !ranges.is_empty() {
            tracing::warn!(volume = %self.cfg.name, suspect_bytes = self.suspect_bytes(),
                "mirror: this replica may hold updates the peer never confirmed; asking the peer to copy those regions too");
        }
    }

    /// Survivor: copy dirty regions to the returning peer within the rate budget; switch
    /// back to mirroring once nothing is left.
    fn resync_step(&mut self, io: &mut IoCx, now: Instant) {
        let Some(r) = self.resync.as_mut() else {
            return;
        };
        if !self.up {
            // The peer left again: keep every region dirty for the next attempt.
            return self.abandon_resync(io);
        }
        let rate = self.cfg.resync_rate as f64;
        let dt = now.duration_since(r.last_refill).as_secs_f64();
        r.last_refill = now;
        r.budget = (r.budget + rate * dt).min(rate * 0.05 + self.cfg.dirty_granularity as f64);
        let g = self.cfg.dirty_granularity;
        while self
            .resync
            .as_ref()
            .is_some_and(|r| r.budget > 0.0 && r.reads < 16)
        {
            let r = self.resync.as_mut().expect("checked");
            let found = self.dirty.next_set(r.cursor);
            let Some(b) = found else {
                // End of a pass.
                r.cursor = 0;
                if !r.also_done {
                    // The target's suspect regions are still coming: no last pass yet.
                    break;
                }
                let empty = self.dirty.none();
                if !empty || r.reads > 0 {
                    if !r.last_pass && empty {
                        // Wait for the reads; the next tick starts over.
                    } else if !r.last_pass {
                        r.last_pass = true;
                    }
                    break;
                }
                let writes_in_flight = self
                    .ops
                    .iter()
                    .any(|(_, op)| op.origin == Origin::Local && op.applying > 0);
                if !r.last_pass {
                    r.last_pass = true;
                    break;
                }
                if !writes_in_flight {
                    self.finish_resync(io);
                }
                break;
            };
            r.cursor = b + 1;
            self.dirty.clear_bit(b);
            let offset = b * g;
            let len = g.min(self.cfg.size - offset);
            r.copied.set_range(offset, len);
            r.reads += 1;
            r.budget -= len as f64;
            r.total += len;
            let k = self.ops.insert(Op {
                origin: Origin::Resync,
                upd: Upd::ResyncRead,
                offset,
                len,
                fua: false,
                data: Vec::new(),
                seq: 0,
                session: self.session,
                applied: false,
                apply_err: None,
                applying: 0,
                remote_done: true,
                initiator: None,
                deadline: now,
                awaiting_order: false,
                peer_id: 0,
                order_due: false,
                listed: false,
                caw: false,
                fwd_session: 0,
                uid: 0,
                fwd_inc: 0,
            });
            // Through the apply queue: it waits for overlapping writes still in flight, and
            // later ones wait for it, so the copy holds every write acknowledged before it.
            self.enqueue_apply(io, k, 0, 0);
        }
        let dirty = self.dirty_bytes();
        self.stats
            .dirty_bytes
            .store(dirty, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = &self.resync {
            let secs = r.started.elapsed().as_secs_f64().max(1e-3);
            let rate = ((r.total as f64 / secs) as u64).max(1);
            self.stats
                .resync_rate
                .store(rate, std::sync::atomic::Ordering::Relaxed);
            self.stats.resync_eta_ms.store(
                dirty.saturating_mul(1000) / rate,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn finish_resync(&mut self, io: &mut IoCx) {
        let Some(r) = self.resync.take() else {
            return;
        };
        wire::encode(&mut self.outbox, &Header::new(Type::ResyncDone), &[]);
        self.stats
            .resync_rate
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .resync_eta_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.set_mode(Mode::Mirroring);
        self.dirty.clear();
        self.stats
            .dirty_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(slot) = &self.cfg.failover
            && self.grant_epoch != 0
        {
            // The last volume of the group back in sync gives the group's grant back.
            if slot
                .survivors
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                <= 1
            {
                slot.release
                    .store(self.grant_epoch, std::sync::atomic::Ordering::SeqCst);
            }
            self.grant_epoch = 0;
        }
        tracing::warn!(volume = %self.cfg.name, copied_bytes = r.total,
            seconds = r.started.elapsed().as_secs_f64(), deferred = r.deferred.len(),
            "mirror: resync complete; both replicas in sync, mirroring again");
        for k in r.deferred {
            self.start_mirrored(io, k);
        }
    }

    /// Start an initiator's update the normal (mirrored) way.
    fn start_mirrored(&mut self, io: &mut IoCx, k: usize) {
        let upd = self.ops[k].upd;
        if upd == Upd::Flush {
            return self.start_flush(io, k);
        }
        match self.cfg.role {
            Role::Leader => self.leader_take(io, k),
            Role::Follower => {
                self.forwards.push_back(k);
                self.ops[k].listed = true;
                if self.up && !self.resent_pending {
                    self.forward(k);
                }
            }
        }
    }

    /// Follower: send `k` to the leader in this session.
    fn forward(&mut self, k: usize) {
        let h = self.upd_header(k, true);
        let p = matches!(self.ops[k].upd, Upd::Write | Upd::Caw).then_some(k);
        self.send(h, p);
        let op = &mut self.ops[k];
        op.awaiting_order = true;
        op.seq = 0;
        op.fwd_session = self.session;
    }

    /// Leader: an update (this site's or forwarded) to sequence, unless a compare-and-write
    /// is being decided: then it waits behind it.
    fn leader_take(&mut self, io: &mut IoCx, k: usize) {
        if self.caw_active.is_some() || !self.barrier.is_empty() {
            self.barrier.push_back(k);
        } else {
            self.leader_start(io, k);
        }
    }

    fn leader_start(&mut self, io: &mut IoCx, k: usize) {
        if self.ops[k].upd == Upd::Caw {
            // Read and compared through the apply queue, sequenced only once decided.
            self.caw_active = Some(k);
            self.enqueue_apply(io, k, 0, 0);
            return;
        }
        self.backlog_push(k);
        if self.up {
            self.sequence_and_send(io, k);
        } else {
            self.enqueue_apply(io, k, 0, 0);
        }
    }

    /// Leader: the compare-and-write holding the barrier is decided; sequence what waited.
    fn release_barrier(&mut self, io: &mut IoCx) {
        // (Forwards kept while a resync's last copies are applied wait for mirroring.)
        if self.mode != Mode::Mirroring {
            return;
        }
        while self.caw_active.is_none() {
            let Some(k) = self.barrier.pop_front() else {
                break;
            };
            self.leader_start(io, k);
        }
    }

    /// A compare-and-write's read finished (apply `slot`): compare, then either write the
    /// new data under the same apply (which keeps holding the range) or end without writing.
    fn caw_compared(&mut self, io: &mut IoCx, slot: usize, r: Result<(), Errno>, data: &[u8]) {
        let k = self.aq.op_of(slot);
        let len = self.ops[k].len as usize;
        // Only the leader decides while mirroring; a survivor decides alone. Anything else
        // (fenced, or a follower whose survivorship ended meanwhile) writes nothing.
        let may_write = self.mode == Mode::Survivor
            || (self.mode == Mode::Mirroring && self.cfg.role == Role::Leader);
        let outcome = match r {
            Err(e) => Err(e),
            Ok(()) if !may_write => Err(Errno::IO),
            Ok(()) if data.len() == len && data == &self.ops[k].data[..len] => Ok(()),
            Ok(()) => Err(Errno::MISCOMPARE),
        };
        let leader_decides = self.mode == Mode::Mirroring && self.cfg.role == Role::Leader;
        let op = &mut self.ops[k];
        let same_session = op.session == self.session && self.up;
        op.upd = Upd::Write;
        match outcome {
            Ok(()) => {
                op.data.drain(..len);
                if op.origin == Origin::PeerFwd && !same_session {
                    // Its follower's id is gone with the session: sent as a WRITE.
                    op.order_due = false;
                }
                let (offset, fua) = (op.offset, op.fua);
                if leader_decides {
                    self.backlog_push(k);
                    if self.up {
                        // Retags this running apply with the seq.
                        self.sequence_and_send(io, k);
                    }
                } else {
                    self.ops[k].remote_done = true;
                    self.mark_dirty(offset, len as u64);
                }
                if self.caw_active == Some(k) {
                    self.caw_active = None;
                    self.release_barrier(io);
                }
                self.written.set_range(offset, len as u64);
                let tag = IoTag {
                    conn: self.layer_key,
                    slot: slot as u32,
                };
                let op = &self.ops[k];
                if let Start::Done(r) = self.inner.write(io, tag, offset, &op.data, fua) {
                    self.apply_finished(io, slot, r, &[]);
                }
            }
            Err(e) => {
                op.data.clear();
                op.remote_done = true;
                let (origin, peer_id) = (op.origin, op.peer_id);
                if origin == Origin::PeerFwd && same_session {
                    if e == Errno::MISCOMPARE {
                        // Its seq: the last given, so the follower answers only once it has
                        // applied what the compare saw.
                        let seq = self.next_seq - 1;
                        self.send(
                            Header {
                                id: peer_id,
                                seq,
                                ..Header::new(Type::Miscompare)
                            },
                            None,
                        );
                    } else {
                        // The follower cannot be told "failed, nothing written" otherwise:
                        // dropping the link makes it fail the request (outcome unknown).
                        self.kill_link = Some("a forwarded compare-and-write could not be read");
                    }
                }
                if self.caw_active == Some(k) {
                    self.caw_active = None;
                }
                // Ends like a failed apply (the initiator gets the error).
                self.apply_finished(io, slot, Err(e), &[]);
                self.release_barrier(io);
            }
        }
    }

    /// Survivor: an update done when the local replica has it.
    fn survivor_apply(&mut self, io: &mut IoCx, k: usize) {
        self.ops[k].remote_done = true;
        let (o, l, upd) = (self.ops[k].offset, self.ops[k].len, self.ops[k].upd);
        if upd != Upd::Flush {
            self.mark_dirty(o, l);
        }
        self.enqueue_apply(io, k, 0, 0);
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bytes of the volume marked dirty (written while serving alone).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.bytes()
    }

    fn mark_dirty(&mut self, offset: u64, len: u64) {
        self.dirty.set_range(offset, len);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes of the volume in suspect regions (updates applied here the peer never
    /// confirmed; see `suspect`).
    pub fn suspect_bytes(&self) -> u64 {
        self.suspect.bytes()
    }

    /// Add the regions of every update still tracked here (applied or possibly applied, and
    /// not confirmed by the peer, or just confirmed) to `map`.
    fn unconfirmed_into(&self, map: &mut RegionMap) {
        for (_, op) in self.ops.iter() {
            if !matches!(op.upd, Upd::Flush | Upd::ResyncRead) {
                map.set_range(op.offset, op.len);
            }
        }
    }

    /// The suspect map, leaving an empty one.
    fn take_suspect(&mut self) -> RegionMap {
        let empty = RegionMap::new(self.cfg.size, self.cfg.dirty_granularity);
        std::mem::replace(&mut self.suspect, empty)
    }

    /// This replica's copy wins (it serves alone or is a resync source): its suspect regions
    /// become dirty, to be copied to the peer.
    fn absorb_suspect(&mut self) {
        if self.suspect.unallocated() {
            return;
        }
        let suspect = self.take_suspect();
        self.dirty.or_with(&suspect);
        self.stats
            .dirty_bytes
            .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The peer is gone and the witness granted this site the volume: acknowledge alone from
    /// now on, finishing every held update, and record what the peer misses.
    fn become_survivor(&mut self, io: &mut IoCx, epoch: u64) {
        self.grant_epoch = epoch;
        self.absorb_suspect();
        if let Some(slot) = &self.cfg.failover {
            slot.survivors
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.set_mode(Mode::Survivor);
        tracing::warn!(volume = %self.cfg.name, epoch, held = self.ops.len(),
            "mirror: survivor; this site acknowledges writes alone and records them for the peer's resync");
        // Updates waiting behind a compare-and-write go ahead alone (forwarded ones are the
        // lost peer's: dropped).
        self.caw_active = None;
        while let Some(k) = self.barrier.pop_front() {
            if self.ops[k].origin == Origin::PeerFwd {
                let op = self.ops.remove(k);
                self.recycle(op.data);
            } else {
                self.survivor_apply(io, k);
            }
        }
        while let Some(k) = self.backlog.pop_front() {
            self.backlog_bytes -= self.ops[k].data.len() as u64;
            let (o, l) = (self.ops[k].offset, self.ops[k].len);
            self.mark_dirty(o, l);
            self.ops[k].remote_done = true;
            self.settle(k);
        }
        while let Some(k) = self.forwards.pop_front() {
            let (o, l) = (self.ops[k].offset, self.ops[k].len);
            self.mark_dirty(o, l);
            let op = &mut self.ops[k];
            op.listed = false;
            op.remote_done = true;
            op.awaiting_order = false;
            if op.applying == 0 && !op.applied {
                self.enqueue_apply(io, k, 0, 0);
            } else {
                self.settle(k);
            }
        }
        for k in std::mem::take(&mut self.flushes) {
            self.ops[k].listed = false;
            self.ops[k].remote_done = true;
            self.settle(k);
        }
        self.stats
            .backlog_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// No grant: fail everything held and serve no I/O.
    fn fence(&mut self, why: &str) {
        // Updates applied here (or being applied) that the peer never confirmed may be on this
        // replica only: the survivor must copy those regions too when it resyncs this site.
        let mut suspect = self.take_suspect();
        self.unconfirmed_into(&mut suspect);
        self.suspect = suspect;
        self.set_mode(Mode::Fenced);
        tracing::error!(volume = %self.cfg.name, why, suspect_bytes = self.suspect_bytes(),
            "mirror: fenced; this site serves no I/O for the volume");
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        self.backlog.clear();
        self.backlog_bytes = 0;
        self.forwards.clear();
        self.flushes.clear();
        self.barrier.clear();
        self.caw_active = None;
        for k in keys {
            let op = &mut self.ops[k];
            op.listed = false;
            op.remote_done = true;
            if let Some((from, tag)) = op.initiator.take() {
                self.done.push((from, tag, Err(Errno::IO)));
            }
            self.settle(k);
        }
    }

    /// Target: once RESYNC_DONE came and every copy is applied, serve I/O again.
    fn maybe_end_resync_target(&mut self, io: &mut IoCx) {
        if self.mode == Mode::Resyncing && self.resync_done && self.resync_applies == 0 {
            self.new_replica = false;
            // The source copied them (it finishes only after the end of our list).
            self.suspect.clear();
            self.set_mode(Mode::Mirroring);
            tracing::warn!(volume = %self.cfg.name, "mirror: resync received; in sync, serving again");
            // Forwards that came after RESYNC_DONE, while copies were still being applied.
            if self.cfg.role == Role::Leader {
                self.release_barrier(io);
            }
        }
    }

    fn failover_tick(&mut self, io: &mut IoCx) {
        use super::failover::{DENIED, GRANTED, UNREACHABLE};
        use std::sync::atomic::Ordering::SeqCst;
        let Some(slot) = self.cfg.failover.clone() else {
            return;
        };
        slot.in_sync
            .store(self.up && self.mode == Mode::Mirroring, SeqCst);
        // Only a site that has had a session lost its peer; a site just started waits for
        // its first session (it must not win a grant against a peer it has never seen) unless
        // an operator asked it to take over (`mirror_takeover`).
        let takeover = self.stats.takeover.load(SeqCst)
            && matches!(self.mode, Mode::Waiting | Mode::Mirroring | Mode::Fenced);
        if takeover && !self.takeover_started {
            // A new request for the grant, whatever was asked before.
            self.takeover_started = true;
            self.grant_asked = false;
        }
        if !takeover
            && !self.takeover_started
            && (self.up || self.session == 0 || self.mode != Mode::Mirroring || self.draining)
        {
            return;
        }
        if takeover && (self.up || self.draining) {
            self.stats.takeover.store(false, SeqCst);
            return;
        }
        if !self.grant_asked {
            self.grant_asked = true;
            slot.outcome.store(0, SeqCst);
            slot.want.store(true, SeqCst);
            return;
        }
        let outcome = slot.outcome.load(SeqCst);
        if outcome != 0 {
            self.stats.takeover.store(false, SeqCst);
        }
        if outcome == GRANTED && std::mem::take(&mut self.takeover_started) {
            // Taken over by an operator: which regions differ from the peer is unknown, so
            // the peer gets every region ever written when it returns.
            self.dirty_everything_written();
        }
        if outcome != 0 {
            self.takeover_started = false;
        }
        match outcome {
            GRANTED => self.become_survivor(io, slot.epoch.load(SeqCst)),
            DENIED => self.fence("the witness granted the volume to the peer"),
            UNREACHABLE => self.fence("neither the peer nor the witness is reachable"),
            _ => {}
        }
    }

    /// The daemon is stopping. A leader stops taking the follower's new forwarded updates (the
    /// follower holds them and fails them on its timeout; neither replica applies them), so
    /// its engine can become idle and its link close while the follower keeps writing.
    pub fn begin_drain(&mut self) {
        if !self.draining {
            self.draining = true;
            tracing::info!(volume = %self.cfg.name, "mirror: stopping; no new forwarded updates are taken");
        }
    }

    /// The stop deadline passed: answer every request still waiting with EIO (the data may or
    /// may not be on the replicas, as for any failed write), so the reactor can exit.
    pub fn abort_requests(&mut self) {
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some((from, tag)) = self.ops[k].initiator.take() {
                self.done.push((from, tag, Err(Errno::IO)));
            }
        }
        if let Some(r) = self.resync.as_mut() {
            r.deferred.clear();
        }
        self.fail_metas();
    }

    /// Published counters.
    pub fn stats(&self) -> &MirrorStats {
        &self.stats
    }

    /// Periodic work (the reactor calls it every few milliseconds): fail requests held past
    /// the peer timeout, ping, and notice a silent peer. True when the follower should dial.
    pub fn tick(&mut self, io: &mut IoCx, now: Instant) -> bool {
        self.failover_tick(io);
        self.resync_step(io, now);
        self.expire(now);
        if self.diverged && !self.backlog.is_empty() {
            self.drop_backlog();
        }
        if self.up {
            if now >= self.next_ping {
                self.next_ping = now + self.cfg.heartbeat;
                self.ping();
            }
            if now.duration_since(self.last_rx) > self.cfg.peer_dead {
                self.kill_link = Some("peer silent past the heartbeat timeout");
            }
        }
        // The follower dials in every mode: a survivor or fenced site meets its peer again
        // through a resync (decided at the session start).
        if self.cfg.role == Role::Follower
            && !self.diverged
            && self.link_key.is_none()
            && now >= self.next_dial
        {
            self.next_dial = now + REDIAL_EVERY;
            return true;
        }
        false
    }

    /// Settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The local replica's channel (reads go straight to it).
    pub fn inner(&mut self) -> &mut dyn Channel {
        &mut *self.inner
    }

    /// This process's incarnation, sent in HELLO (a follower's forward ids are unique only
    /// within one incarnation).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The peer's incarnation, from its HELLO (leader) or WELCOME (follower), before
    /// `session_start`.
    pub fn set_peer_incarnation(&mut self, v: u64) {
        self.peer_incarnation = v;
    }

    /// A session is running.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Nothing is in flight or waiting.
    pub fn idle(&self) -> bool {
        self.ops.is_empty() && self.metas.is_empty()
    }

    /// Some initiator still waits for an answer.
    pub fn answering(&self) -> bool {
        self.metas.iter().any(|(_, m)| m.initiator.is_some())
            || self.ops.iter().any(|(_, op)| op.initiator.is_some())
    }

    /// Anything to send (messages or an ACK).
    pub fn wants_send(&mut self, now: Instant) -> bool {
        self.up && (!self.outbox.is_empty() || self.ack_due(now))
    }

    /// Whether the ACK policy (see [`ACK_BATCH`]) says to send an ACK now.
    fn ack_due(&mut self, now: Instant) -> bool {
        let lag = self.aq.applied.wm - self.ack_sent;
        if lag == 0 {
            self.ack_pending_since = None;
            return false;
        }
        let since = *self.ack_pending_since.get_or_insert(now);
        match lag {
            1 => !self.rx_since_flush,
            l => l >= ACK_BATCH || now.duration_since(since) >= ACK_WINDOW,
        }
    }

    /// When a held-back ACK falls due (the reactor may sleep until then, not longer).
    pub fn ack_deadline(&self) -> Option<Instant> {
        if self.up && self.aq.applied.wm > self.ack_sent {
            self.ack_pending_since.map(|s| s + ACK_WINDOW)
        } else {
            None
        }
    }

    fn buf(&mut self, data: &[u8]) -> Vec<u8> {
        let mut v = self.spare.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        v
    }

    fn recycle(&mut self, mut v: Vec<u8>) {
        if v.capacity() > 0 && self.spare.len() < 1024 {
            v.clear();
            self.spare.push(v);
        }
    }

    fn send(&mut self, h: Header, payload_of: Option<usize>) {
        let payload: &[u8] = match payload_of {
            Some(k) => &self.ops[k].data,
            None => &[],
        };
        wire::encode(&mut self.outbox, &h, payload);
        self.stats.inc(&self.stats.msgs_sent);
    }

    fn upd_header(&self, k: usize, fwd: bool) -> Header {
        let op = &self.ops[k];
        // A re-sent forward names its forward only to the process that forwarded it (a
        // restarted follower reuses ids).
        let resent = !fwd && op.origin == Origin::PeerFwd && op.fwd_inc == self.peer_incarnation;
        let ty = match (op.upd, fwd) {
            (Upd::Write | Upd::Caw, false) => Type::Write,
            (Upd::Caw, true) => Type::FwdCaw,
            (Upd::Zeroes, false) => Type::Zeroes,
            (Upd::Unmap, false) => Type::Unmap,
            (Upd::Write, true) => Type::FwdWrite,
            (Upd::Zeroes, true) => Type::FwdZeroes,
            (Upd::Unmap, true) => Type::FwdUnmap,
            (Upd::Flush, _) => Type::Flush,
            (Upd::ResyncRead, _) => Type::Resync,
        };
        Header {
            flags: if op.fua { wire::FLAG_FUA } else { 0 }
                | if resent { wire::FLAG_RESENT } else { 0 },
            id: if fwd {
                op.uid
            } else if resent {
                op.peer_id
            } else {
                0
            },
            seq: if fwd { 0 } else { op.seq },
            offset: op.offset,
            count: op.len as u32,
            ..Header::new(ty)
        }
    }

    // ---- initiator side -------------------------------------------------------------------

    /// Start an update from this site's initiator.
    pub fn submit(
        &mut self,
        io: &mut IoCx,
        from: u32,
        tag: IoTag,
        update: Update<'_>,
        offset: u64,
        fua: bool,
    ) -> Start {
        if self.diverged || self.no_io() {
            return Start::Done(Err(Errno::IO));
        }
        let (upd, len, data) = match update {
            Update::Meta(cmd) => return self.submit_meta(from, tag, cmd),
            Update::Write(d) => (Upd::Write, d.len() as u64, self.buf(d)),
            Update::Zeroes(len) => (Upd::Zeroes, len, Vec::new()),
            Update::Unmap(len) => (Upd::Unmap, len, Vec::new()),
            Update::Flush => (Upd::Flush, 0, Vec::new()),
            Update::CompareWrite { cmp, data } => {
                if cmp.len() != data.len() || cmp.is_empty() {
                    return Start::Done(Err(Errno::INVAL));
                }
                let mut v = self.buf(cmp);
                v.extend_from_slice(data);
                (Upd::Caw, cmp.len() as u64, v)
            }
        };
        let k = self.ops.insert(Op {
            origin: Origin::Local,
            upd,
            offset,
            len,
            fua,
            data,
            seq: 0,
            session: 0,
            applied: false,
            apply_err: None,
            applying: 0,
            remote_done: false,
            initiator: Some((from, tag)),
            deadline: Instant::now() + self.cfg.peer_timeout,
            awaiting_order: false,
            peer_id: 0,
            order_due: false,
            listed: false,
            caw: upd == Upd::Caw,
            fwd_session: 0,
            uid: 0,
            fwd_inc: 0,
        });
        if self.cfg.role == Role::Follower {
            self.next_uid = self.next_uid.wrapping_add(1).max(1);
            self.ops[k].uid = self.next_uid;
        }
        self.stats.inc(&self.stats.updates);
        if self.mode == Mode::Survivor {
            if let Some(r) = self.resync.as_mut()
                && r.last_pass
            {
                // The resync's last pass: wait, so the dirty set drains; mirrored after it.
                r.deferred.push_back(k);
                return Start::Pending;
            }
            // Alone: done when the local replica has it; the peer gets it by resync.
            self.survivor_apply(io, k);
            return Start::Pending;
        }
        self.start_mirrored(io, k);
        Start::Pending
    }

    /// A metadata command from this site's initiator.
    fn submit_meta(&mut self, from: u32, tag: IoTag, cmd: &[u8]) -> Start {
        let Some(h) = self.cfg.meta.clone() else {
            return Start::Done(Err(Errno::NOTSUP));
        };
        let deadline = Instant::now() + self.cfg.peer_timeout;
        match (self.mode, self.cfg.role, self.up) {
            (Mode::Survivor, _, _) => {
                // Alone; a peer being resynced meanwhile gets the change too.
                let (status, state) = h.execute(self.vol, cmd);
                if self.up
                    && let Some(state) = state
                {
                    self.send_meta_state(wire::META_NO_ID, 0, &state);
                }
                Start::Done(meta_result(status))
            }
            (Mode::Mirroring, Role::Leader, true) => match h.execute(self.vol, cmd) {
                // Unchanged, but decided on state the follower may not have yet: answered
                // only once every earlier change is acknowledged.
                (status, None) if self.metas.iter().any(|(_, m)| m.token != 0) => {
                    self.metas.insert(MetaWait {
                        initiator: Some((from, tag)),
                        token: self.next_token - 1,
                        status,
                        deadline,
                    });
                    Start::Pending
                }
                (status, None) => Start::Done(meta_result(status)),
                (status, Some(state)) => {
                    let token = self.send_meta_state(wire::META_NO_ID, status, &state);
                    self.metas.insert(MetaWait {
                        initiator: Some((from, tag)),
                        token,
                        status,
                        deadline,
                    });
                    Start::Pending
                }
            },
            (Mode::Mirroring, Role::Follower, true) if cmd.len() <= wire::MAX_META as usize => {
                let k = self.metas.insert(MetaWait {
                    initiator: Some((from, tag)),
                    token: 0,
                    status: 0,
                    deadline,
                });
                let h = Header {
                    id: k as u32,
                    ..Header::new(Type::Meta)
                };
                wire::encode(&mut self.outbox, &h, cmd);
                self.stats.inc(&self.stats.msgs_sent);
                Start::Pending
            }
            // No session and no grant: deciding alone could split the state.
            _ => Start::Done(Err(Errno::IO)),
        }
    }

    /// Send a metadata state (answering META `id`, or none); returns its token.
    fn send_meta_state(&mut self, id: u32, status: u16, state: &[u8]) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let h = Header {
            id,
            seq: token,
            count: u32::from(status),
            ..Header::new(Type::MetaState)
        };
        wire::encode(&mut self.outbox, &h, state);
        self.stats.inc(&self.stats.msgs_sent);
        token
    }

    /// At a session start, the site whose replica wins sends its whole metadata state.
    fn push_meta(&mut self) {
        if let Some(h) = self.cfg.meta.clone() {
            for state in h.full_state(self.vol) {
                self.send_meta_state(wire::META_NO_ID, 0, &state);
            }
        }
    }

    /// Fail every metadata command waiting for the peer (its effect is settled by the next
    /// session's full state).
    fn fail_metas(&mut self) {
        for m in self.metas.drain() {
            if let Some((from, tag)) = m.initiator {
                self.done.push((from, tag, Err(Errno::IO)));
            }
        }
    }

    fn backlog_push(&mut self, k: usize) {
        self.backlog.push_back(k);
        self.backlog_bytes += self.ops[k].data.len() as u64;
        if self.backlog_bytes > self.cfg.max_backlog {
            self.diverge();
        }
    }

    /// Leader: give `k` the next seq, send it, and apply it if not applied yet.
    fn sequence_and_send(&mut self, io: &mut IoCx, k: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let op = &mut self.ops[k];
        op.seq = seq;
        op.session = self.session;
        let already = op.applied && op.applying == 0;
        let upd = op.upd;
        let id = op.peer_id;
        if std::mem::take(&mut op.order_due) {
            // A forward of this session: the follower has the data and only needs the order.
            // (One from an old session is re-sent as a WRITE: the follower's ids are gone.)
            self.send(
                Header {
                    seq,
                    id,
                    ..Header::new(Type::Order)
                },
                None,
            );
        } else {
            let h = self.upd_header(k, false);
            self.send(h, (upd == Upd::Write).then_some(k));
            self.stats.inc(&self.stats.replicated);
        }
        if already {
            self.aq.applied.mark(seq);
        } else if self.ops[k].applying == 0 {
            self.enqueue_apply(io, k, self.session, seq);
        } else {
            // Being applied (queued before this session): the watermark follows its apply.
            self.retag_running(k, seq);
        }
    }

    fn retag_running(&mut self, k: usize, seq: u64) {
        self.aq.retag(k, self.session, seq);
    }

    fn start_flush(&mut self, io: &mut IoCx, k: usize) {
        self.flushes.push(k);
        self.ops[k].listed = true;
        if self.up {
            self.send(
                Header {
                    id: k as u32,
                    ..Header::new(Type::Flush)
                },
                None,
            );
        }
        self.ops[k].applying += 1;
        let tag = IoTag {
            conn: self.layer_key,
            slot: self.aq.push_outside(k) as u32,
        };
        if let Start::Done(r) = self.inner.flush(io, tag) {
            self.apply_finished(io, tag.slot as usize, r, &[]);
        }
    }

    // ---- the apply queue ------------------------------------------------------------------

    fn enqueue_apply(&mut self, io: &mut IoCx, k: usize, session: u32, seq: u64) {
        let op = &mut self.ops[k];
        op.applying += 1;
        let (a, now) = self.aq.push(k, session, seq, op.offset, op.len);
        if now {
            self.start_apply(io, a);
        }
    }

    fn start_apply(&mut self, io: &mut IoCx, a: usize) {
        let (k, offset, len) = {
            let ap = self.aq.get(a).expect("queued apply");
            (ap.op, ap.offset, ap.len)
        };
        let tag = IoTag {
            conn: self.layer_key,
            slot: a as u32,
        };
        let op = &self.ops[k];
        let r = match op.upd {
            Upd::Write => {
                self.written.set_range(offset, len);
                self.inner.write(io, tag, offset, &op.data, op.fua)
            }
            Upd::Zeroes => self.inner.write_zeroes(io, tag, offset, len, op.fua),
            Upd::Unmap => self.inner.unmap(io, tag, offset, len, op.fua),
            Upd::Flush => self.inner.flush(io, tag),
            Upd::Caw => {
                match self.inner.read(io, tag, offset, len as u32) {
                    crate::bdev::ReadStart::Ready(d) => {
                        let mut buf = std::mem::take(&mut self.resync_buf);
                        buf.clear();
                        buf.extend_from_slice(d);
                        self.caw_compared(io, a, Ok(()), &buf);
                        self.resync_buf = buf;
                    }
                    crate::bdev::ReadStart::Failed(e) => self.caw_compared(io, a, Err(e), &[]),
                    crate::bdev::ReadStart::Pending => {}
                }
                return;
            }
            Upd::ResyncRead => match self.inner.read(io, tag, offset, len as u32) {
                crate::bdev::ReadStart::Ready(d) => {
                    let mut buf = std::mem::take(&mut self.resync_buf);
                    buf.clear();
                    buf.extend_from_slice(d);
                    self.apply_finished(io, a, Ok(()), &buf);
                    self.resync_buf = buf;
                    return;
                }
                crate::bdev::ReadStart::Failed(e) => Start::Done(Err(e)),
                crate::bdev::ReadStart::Pending => Start::Pending,
            },
        };
        if let Start::Done(r) = r {
            self.apply_finished(io, a, r, &[]);
        }
    }

    /// An inner operation the engine started finished (`slot` from its tag).
    pub fn apply_finished(
        &mut self,
        io: &mut IoCx,
        slot: usize,
        r: Result<(), Errno>,
        data: &[u8],
    ) {
        if let Some(ap) = self.aq.get(slot)
            && self.ops.get(ap.op).is_some_and(|op| op.upd == Upd::Caw)
        {
            return self.caw_compared(io, slot, r, data);
        }
        let Some(ap) = self.aq.finish(slot) else {
            tracing::error!(volume = %self.cfg.name, slot, "mirror: completion for an unknown apply");
            return;
        };
        if let Some(i) = self.resent_wait.iter().position(|&x| x == slot) {
            self.resent_wait.swap_remove(i);
            self.maybe_send_resent();
        }
        let k = ap.op;
        {
            let op = &mut self.ops[k];
            op.applying -= 1;
            if let Err(e) = r {
                op.apply_err = Some(e);
            } else {
                op.applied = true;
            }
        }
        if let Err(e) = r
            && e != Errno::MISCOMPARE
        {
            tracing::error!(volume = %self.cfg.name, offset = ap.offset, errno = e.0,
                "mirror: applying an update to the local replica failed");
        }
        if ap.session == self.session && ap.seq != 0 && r.is_ok() {
            self.aq.applied.mark(ap.seq);
            if !self.miscompare_waits.is_empty() {
                self.release_miscompares(false);
            }
        }
        if self.ops[k].origin == Origin::Resync {
            if self.ops[k].upd == Upd::ResyncRead {
                // Source: send the region as read (or mark it dirty again if the read failed
                // or the peer left).
                // (A read of an earlier attempt, from an earlier session, is not this one's.)
                if self.ops[k].session == self.session
                    && let Some(rs) = self.resync.as_mut()
                {
                    rs.reads = rs.reads.saturating_sub(1);
                }
                if r.is_ok() && self.up && self.ops[k].session == self.session {
                    let h = Header {
                        offset: ap.offset,
                        count: ap.len as u32,
                        ..Header::new(Type::Resync)
                    };
                    wire::encode(&mut self.outbox, &h, data);
                    self.stats
                        .resync_bytes
                        .fetch_add(ap.len, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.mark_dirty(ap.offset, ap.len);
                }
            } else if self.ops[k].session == self.session {
                // (A copy of an earlier attempt, from an earlier session, is not this one's.)
                self.resync_applies = self.resync_applies.saturating_sub(1);
                self.maybe_end_resync_target(io);
            }
        }
        if let Origin::PeerFlush(id) = self.ops[k].origin
            && self.up
            && self.ops[k].session == self.session
        {
            let payload = r.err().map(|e| e.0.to_le_bytes());
            let h = Header {
                id,
                ..Header::new(Type::FlushDone)
            };
            wire::encode(
                &mut self.outbox,
                &h,
                payload.as_ref().map_or(&[][..], |p| p),
            );
        }
        self.start_unblocked(io, &ap);
        self.settle(k);
    }

    /// Start the queued applies that `done` held back.
    fn start_unblocked(&mut self, io: &mut IoCx, done: &apply::Apply) {
        for a in self.aq.unblocked_by(done) {
            self.start_apply(io, a);
        }
    }

    /// Answer the initiator and free the op when nothing more is needed of it.
    fn settle(&mut self, k: usize) {
        let op = &self.ops[k];
        let local_ok = op.applied && op.applying == 0;
        let local_failed = op.apply_err.is_some() && op.applying == 0;
        if op.initiator.is_some() && op.applying == 0 {
            let result = if local_failed {
                Some(Err(op.apply_err.unwrap_or(Errno::IO)))
            } else if local_ok && op.remote_done {
                Some(Ok(()))
            } else {
                None
            };
            if let Some(result) = result {
                let (from, tag) = self.ops[k].initiator.take().expect("checked");
                self.done.push((from, tag, result));
            }
        }
        let op = &self.ops[k];
        let finished = op.applying == 0
            && op.initiator.is_none()
            && match (op.origin, self.cfg.role) {
                // The leader keeps data until the follower has it.
                (Origin::Local | Origin::PeerFwd, Role::Leader) => {
                    op.remote_done || op.upd == Upd::Flush
                }
                _ => true,
            }
            && !op.listed;
        if finished {
            let op = self.ops.remove(k);
            self.recycle(op.data);
        }
    }

    // ---- the link -------------------------------------------------------------------------

    /// A session started (after HELLO/WELCOME): re-send what the peer may not have.
    pub fn link_up(&mut self, io: &mut IoCx) {
        self.session += 1;
        self.up = true;
        self.next_seq = 1;
        self.aq.applied = apply::Window::default();
        self.ack_sent = 0;
        self.peer_wm = 0;
        self.outbox.clear();
        self.held_logged = false;
        self.last_rx = Instant::now();
        self.kill_link = None;
        self.stats.set_up(true, self.session);
        tracing::info!(volume = %self.cfg.name, session = self.session, role = ?self.cfg.role,
            resend = self.backlog.len() + self.forwards.len(), "mirror: link up");
        match self.cfg.role {
            Role::Leader => {
                // Applies of forwarded updates already under way (this session's re-sends
                // start after the snapshot).
                self.resent_wait.clear();
                let ops = &self.ops;
                self.resent_wait.extend(
                    self.aq
                        .active()
                        .filter(|(_, a)| ops[a.op].origin == Origin::PeerFwd)
                        .map(|(s, _)| s),
                );
                let backlog: Vec<usize> = self.backlog.iter().copied().collect();
                for k in backlog {
                    self.sequence_and_send(io, k);
                }
                self.resent_due = true;
                self.maybe_send_resent();
            }
            Role::Follower => {
                // Nothing is forwarded until the leader's re-sends are in (RESENT): they say
                // which forwards the leader already has.
                self.resent_pending = true;
                for &k in &self.forwards {
                    self.ops[k].awaiting_order = false;
                }
            }
        }
        for i in 0..self.flushes.len() {
            let k = self.flushes[i];
            if !self.ops[k].remote_done {
                self.send(
                    Header {
                        id: k as u32,
                        ..Header::new(Type::Flush)
                    },
                    None,
                );
            }
        }
    }

    /// The session ended: hold everything until the next one (or the timeout).
    pub fn link_down(&mut self, why: &str) {
        if !self.up {
            return;
        }
        self.up = false;
        self.grant_asked = false;
        self.outbox.clear();
        self.fail_metas();
        self.resent_pending = false;
        self.resent_due = false;
        self.resent_wait.clear();
        self.release_miscompares(true);
        // Forwards still waiting behind a compare-and-write: the follower sends them again.
        let ops = &self.ops;
        let dropped: Vec<usize> = self
            .barrier
            .iter()
            .copied()
            .filter(|&k| ops[k].origin == Origin::PeerFwd)
            .collect();
        if !dropped.is_empty() {
            self.barrier
                .retain(|&k| self.ops[k].origin != Origin::PeerFwd);
            for k in dropped {
                let op = self.ops.remove(k);
                self.recycle(op.data);
            }
        }
        self.stats.set_up(false, self.session);
        tracing::warn!(volume = %self.cfg.name, session = self.session, why,
            held = self.ops.len(), "mirror: link down; updates are held until the peer returns");
    }

    /// Move pending messages (and an ACK if the watermark moved) to `out`.
    pub fn take_outbox(&mut self, out: &mut Vec<u8>) {
        if !self.up {
            return;
        }
        let due = self.ack_due(Instant::now());
        self.rx_since_flush = false;
        if due {
            self.ack_pending_since = None;
            self.ack_sent = self.aq.applied.wm;
            let h = Header {
                seq: self.ack_sent,
                ..Header::new(Type::Ack)
            };
            wire::encode(&mut self.outbox, &h, &[]);
            self.stats.inc(&self.stats.acks_sent);
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.outbox);
        } else {
            out.extend_from_slice(&self.outbox);
            self.outbox.clear();
        }
    }

    /// Queue a PING carrying the current clock.
    pub fn ping(&mut self) {
        if self.up {
            let h = Header {
                seq: self.epoch.elapsed().as_nanos() as u64,
                ..Header::new(Type::Ping)
            };
            wire::encode(&mut self.outbox, &h, &[]);
        }
    }

    fn check_range(&self, h: &Header) -> Result<(), &'static str> {
        let b = self.cfg.block as u64;
        let end = h
            .offset
            .checked_add(h.count as u64)
            .ok_or("range overflows")?;
        if h.count == 0 || end > self.cfg.size {
            return Err("range outside the volume");
        }
        if !h.offset.is_multiple_of(b) || !(h.count as u64).is_multiple_of(b) {
            return Err("range not aligned to the block size");
        }
        Ok(())
    }

    fn check_next_seq(&mut self, seq: u64) -> Result<(), &'static str> {
        if seq != self.next_seq {
            return Err(if seq < self.next_seq {
                "duplicate sequence number"
            } else {
                "sequence number out of window"
            });
        }
        self.next_seq += 1;
        Ok(())
    }

    /// One message from the peer. An `Err` is the reason to drop the link; nothing of that
    /// message was applied.
    pub fn on_msg(
        &mut self,
        io: &mut IoCx,
        h: &Header,
        payload: &[u8],
    ) -> Result<(), &'static str> {
        self.stats.inc(&self.stats.msgs_received);
        self.rx_since_flush = true;
        let r = self.handle(io, h, payload);
        if r.is_err() {
            self.stats.inc(&self.stats.rejected);
        }
        r
    }

    fn handle(&mut self, io: &mut IoCx, h: &Header, payload: &[u8]) -> Result<(), &'static str> {
        use Type::*;
        let leader = self.cfg.role == Role::Leader;
        match h.ty {
            Write | Zeroes | Unmap
                if !leader && h.flags & wire::FLAG_RESENT != 0 && self.claim_resent(io, h)? => {}
            Write | Zeroes | Unmap if !leader => {
                self.check_range(h)?;
                self.check_next_seq(h.seq)?;
                let upd = match h.ty {
                    Write => Upd::Write,
                    Zeroes => Upd::Zeroes,
                    _ => Upd::Unmap,
                };
                let data = if upd == Upd::Write {
                    self.buf(payload)
                } else {
                    Vec::new()
                };
                let k = self.new_peer_op(Origin::PeerSeq, upd, h, data);
                self.ops[k].seq = h.seq;
                // Settled by its apply's completion (at once for a RAM replica).
                self.enqueue_apply(io, k, self.session, h.seq);
            }
            Order if !leader => {
                let pos = self
                    .forwards
                    .iter()
                    .position(|&k| self.ops[k].awaiting_order)
                    .ok_or("ORDER with no forwarded request outstanding")?;
                let k = self.forwards[pos];
                if h.id != self.ops[k].uid {
                    return Err("ORDER for a request not outstanding");
                }
                self.check_next_seq(h.seq)?;
                let op = &mut self.ops[k];
                if op.upd == Upd::Caw {
                    // The leader found it matching: apply the write data at this seq.
                    let len = op.len as usize;
                    op.data.drain(..len);
                    op.upd = Upd::Write;
                }
                op.awaiting_order = false;
                op.seq = h.seq;
                op.session = self.session;
                op.fwd_inc = self.peer_incarnation;
                self.enqueue_apply(io, k, self.session, h.seq);
            }
            FwdWrite | FwdZeroes | FwdUnmap | FwdCaw
                if leader && !self.draining && self.mode == Mode::Resyncing && self.resync_done =>
            {
                // The source is mirroring already; this site still applies its last copies:
                // the forward waits, in order, until they are done.
                let k = self.forwarded_op(h, payload)?;
                self.barrier.push_back(k);
            }
            FwdWrite | FwdZeroes | FwdUnmap | FwdCaw
                if leader && (self.draining || self.mode != Mode::Mirroring) =>
            {
                // Not taken (stopping, or a survivor resyncing the peer): the follower fails
                // it on its timeout; neither replica applies it.
                self.check_range(h)?;
            }
            FwdWrite | FwdZeroes | FwdUnmap | FwdCaw if leader => {
                let k = self.forwarded_op(h, payload)?;
                self.leader_take(io, k);
            }
            Miscompare if !leader => {
                let pos = self
                    .forwards
                    .iter()
                    .position(|&k| self.ops[k].awaiting_order)
                    .ok_or("MISCOMPARE with no forwarded request outstanding")?;
                let k = self.forwards[pos];
                if h.id != self.ops[k].uid || self.ops[k].upd != Upd::Caw {
                    return Err("MISCOMPARE for a request not outstanding");
                }
                if h.seq >= self.next_seq {
                    return Err("MISCOMPARE after a seq not received");
                }
                self.forwards.remove(pos);
                let op = &mut self.ops[k];
                op.listed = false;
                op.awaiting_order = false;
                op.remote_done = true;
                op.apply_err = Some(Errno::MISCOMPARE);
                let uid = op.uid;
                if self.aq.applied.wm >= h.seq {
                    self.settle(k);
                } else {
                    // Answered once this site has what the leader compared against.
                    op.applying += 1;
                    self.miscompare_waits.push((k, uid, h.seq));
                }
            }
            Resent if !leader => {
                if !std::mem::take(&mut self.resent_pending) {
                    return Err("RESENT twice in a session");
                }
                self.after_resent();
            }
            Ack => {
                // Leader: the highest seq given; follower: the highest seq received.
                if h.seq < self.peer_wm || h.seq > self.next_seq - 1 {
                    return Err("ACK outside the window");
                }
                self.stats.inc(&self.stats.acks_received);
                self.peer_wm = h.seq;
                self.on_peer_wm();
            }
            Flush => {
                let k = self.new_peer_op(Origin::PeerFlush(h.id), Upd::Flush, h, Vec::new());
                self.ops[k].session = self.session;
                self.enqueue_apply(io, k, 0, 0);
            }
            FlushDone => {
                let k = h.id as usize;
                let pos = self
                    .flushes
                    .iter()
                    .position(|&f| f == k)
                    .ok_or("FLUSH_DONE for no outstanding flush")?;
                self.flushes.swap_remove(pos);
                let op = &mut self.ops[k];
                op.listed = false;
                op.remote_done = true;
                if payload.len() == 4 {
                    let e = i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    op.apply_err = Some(Errno(e));
                }
                self.settle(k);
            }
            Ping => {
                let h = Header {
                    seq: h.seq,
                    ..Header::new(Pong)
                };
                wire::encode(&mut self.outbox, &h, &[]);
            }
            Pong => {
                let now = self.epoch.elapsed().as_nanos() as u64;
                if h.seq <= now {
                    self.stats.rtt_sample(now - h.seq);
                }
            }
            ResyncAlso if self.resync.as_ref().is_some_and(|r| !r.also_done) => {
                let (b, size) = (self.cfg.block as u64, self.cfg.size);
                for (offset, len) in wire::decode_resync_also(payload) {
                    let end = offset.checked_add(len).ok_or("range overflows")?;
                    if len == 0 || end > size {
                        return Err("RESYNC_ALSO range outside the volume");
                    }
                    if !offset.is_multiple_of(b) || !len.is_multiple_of(b) {
                        return Err("RESYNC_ALSO range not aligned to the block size");
                    }
                }
                for (offset, len) in wire::decode_resync_also(payload) {
                    self.dirty.set_range(offset, len);
                }
                self.stats
                    .dirty_bytes
                    .store(self.dirty_bytes(), std::sync::atomic::Ordering::Relaxed);
                if h.count == 0 {
                    self.resync.as_mut().expect("checked").also_done = true;
                }
            }
            Resync if self.mode == Mode::Resyncing && !self.resync_done => {
                self.check_range(h)?;
                let data = self.buf(payload);
                let k = self.new_peer_op(Origin::Resync, Upd::Write, h, data);
                self.resync_applies += 1;
                self.enqueue_apply(io, k, 0, 0);
            }
            ResyncDone if self.mode == Mode::Resyncing && !self.resync_done => {
                self.resync_done = true;
                self.maybe_end_resync_target(io);
            }
            Meta if leader => {
                let (status, state) = match &self.cfg.meta {
                    Some(m) => m.execute(self.vol, payload),
                    None => (META_INTERNAL, None),
                };
                self.send_meta_state(h.id, status, state.as_deref().unwrap_or(&[]));
            }
            MetaState => {
                if h.id != wire::META_NO_ID
                    && (leader || self.metas.get(h.id as usize).is_none_or(|m| m.token != 0))
                {
                    return Err("META_STATE answers no outstanding request");
                }
                let installed = match (&self.cfg.meta, payload.is_empty()) {
                    (_, true) => Install::Done,
                    (Some(m), false) => m.install(self.vol, payload),
                    (None, false) => Install::Failed,
                };
                if installed == Install::Malformed {
                    return Err("malformed metadata state");
                }
                let failed = installed == Install::Failed;
                if failed {
                    tracing::error!(volume = %self.cfg.name,
                        "mirror: the peer's metadata (reservation) state could not be installed here");
                }
                let ack = Header {
                    seq: h.seq,
                    count: if failed { u32::from(META_INTERNAL) } else { 0 },
                    ..Header::new(MetaAck)
                };
                wire::encode(&mut self.outbox, &ack, &[]);
                self.stats.inc(&self.stats.msgs_sent);
                if h.id != wire::META_NO_ID {
                    let m = self.metas.remove(h.id as usize);
                    let status = if failed {
                        META_INTERNAL
                    } else {
                        h.count.min(0xFFFF) as u16
                    };
                    if let Some((from, tag)) = m.initiator {
                        self.done.push((from, tag, meta_result(status)));
                    }
                }
            }
            MetaAck => {
                // Every wait up to this token is settled (ACKs come in order; a push's has no
                // waiter). A state the peer could not install fails the command it carried.
                let done: Vec<usize> = self
                    .metas
                    .iter()
                    .filter(|(_, m)| m.token != 0 && m.token <= h.seq)
                    .map(|(k, _)| k)
                    .collect();
                for k in done {
                    let m = self.metas.remove(k);
                    let status = if m.token == h.seq && h.count != 0 {
                        h.count.min(0xFFFF) as u16
                    } else {
                        m.status
                    };
                    if let Some((from, tag)) = m.initiator {
                        self.done.push((from, tag, meta_result(status)));
                    }
                }
            }
            Hello | Welcome | Refuse => return Err("handshake message inside a session"),
            _ => return Err("message not allowed in this direction"),
        }
        Ok(())
    }

    /// Leader: send RESENT once the applies under way at the session start are done.
    fn maybe_send_resent(&mut self) {
        if self.resent_due && self.resent_wait.is_empty() && self.up {
            self.resent_due = false;
            self.send(Header::new(Type::Resent), None);
        }
    }

    /// Follower, before RESENT: a re-sent WRITE for forward `h.id` of an earlier session is
    /// that forward's ORDER (its own copy is applied at this seq). False: no such forward here;
    /// the WRITE is an ordinary one.
    fn claim_resent(&mut self, io: &mut IoCx, h: &Header) -> Result<bool, &'static str> {
        if !self.resent_pending {
            return Ok(false);
        }
        let session = self.session;
        let Some(k) = self.forwards.iter().copied().find(|&k| {
            let op = &self.ops[k];
            op.uid == h.id && op.fwd_session != 0 && op.fwd_session != session
        }) else {
            return Ok(false);
        };
        self.check_range(h)?;
        let op = &self.ops[k];
        let same_kind = match h.ty {
            Type::Write => matches!(op.upd, Upd::Write | Upd::Caw),
            Type::Zeroes => op.upd == Upd::Zeroes,
            _ => op.upd == Upd::Unmap,
        };
        if !same_kind || op.offset != h.offset || op.len != u64::from(h.count) {
            return Err("re-sent forward does not match the forward");
        }
        self.check_next_seq(h.seq)?;
        let op = &mut self.ops[k];
        if op.upd == Upd::Caw {
            // Re-sent, so the leader found it matching.
            let len = op.len as usize;
            op.data.drain(..len);
            op.upd = Upd::Write;
        }
        op.awaiting_order = false;
        op.seq = h.seq;
        op.session = session;
        op.fwd_session = session;
        op.fwd_inc = self.peer_incarnation;
        self.enqueue_apply(io, k, session, h.seq);
        Ok(true)
    }

    /// Fail every held forward (nothing of them reached the peer's order).
    fn fail_forwards(&mut self) {
        while let Some(k) = self.forwards.pop_front() {
            self.end_forward(k, true);
        }
    }

    /// Follower: forward `k`, already out of `forwards`, needs nothing more from the peer;
    /// with `fail` its initiator gets EIO (outcome unknown), else its local apply answers.
    fn end_forward(&mut self, k: usize, fail: bool) {
        let op = &mut self.ops[k];
        op.listed = false;
        op.awaiting_order = false;
        op.remote_done = true;
        if fail && let Some((from, tag)) = op.initiator.take() {
            self.done.push((from, tag, Err(Errno::IO)));
        }
        self.settle(k);
    }

    /// Follower: the leader's re-sends are in. A forward of an earlier session that none
    /// claimed and that got its ORDER from this same leader process is on both replicas (the
    /// leader had this site's acknowledgement, so it did not re-send it, and it sends RESENT
    /// only once its applies of then are done): complete. One ordered by an earlier leader
    /// process (which may have lost its apply), or a compare-and-write the leader may have
    /// decided: failed, outcome unknown, never applied twice. One that never got its ORDER is
    /// forwarded again (the leader never sequenced it). Then the new ones go out, in order.
    fn after_resent(&mut self) {
        let session = self.session;
        let fwds: Vec<usize> = self.forwards.iter().copied().collect();
        for k in fwds {
            let op = &mut self.ops[k];
            if op.fwd_session == session {
                continue; // claimed by a re-send
            }
            let ordered = op.fwd_session != 0 && op.seq != 0;
            if ordered || (op.fwd_session != 0 && op.caw) {
                let on_both = ordered && op.fwd_inc == self.peer_incarnation;
                self.forwards.retain(|&f| f != k);
                self.end_forward(k, !on_both);
                continue;
            }
            self.forward(k);
        }
    }

    /// Follower: answer the MISCOMPAREs whose seq the applied watermark reached (all of them
    /// when the session ended: the outcome is final).
    fn release_miscompares(&mut self, all: bool) {
        let wm = self.aq.applied.wm;
        let mut i = 0;
        while i < self.miscompare_waits.len() {
            let (k, uid, seq) = self.miscompare_waits[i];
            if all || seq <= wm {
                self.miscompare_waits.swap_remove(i);
                if let Some(op) = self.ops.get_mut(k)
                    && op.uid == uid
                {
                    op.applying -= 1;
                    self.settle(k);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Leader: the op of a forwarded update (FWD_WRITE, FWD_ZEROES, FWD_UNMAP, FWD_CAW).
    fn forwarded_op(&mut self, h: &Header, payload: &[u8]) -> Result<usize, &'static str> {
        self.check_range(h)?;
        let upd = match h.ty {
            Type::FwdWrite => Upd::Write,
            Type::FwdZeroes => Upd::Zeroes,
            Type::FwdCaw => Upd::Caw,
            _ => Upd::Unmap,
        };
        let data = if matches!(upd, Upd::Write | Upd::Caw) {
            self.buf(payload)
        } else {
            Vec::new()
        };
        Ok(self.new_peer_op(Origin::PeerFwd, upd, h, data))
    }

    fn new_peer_op(&mut self, origin: Origin, upd: Upd, h: &Header, data: Vec<u8>) -> usize {
        self.ops.insert(Op {
            origin,
            upd,
            offset: h.offset,
            len: h.count as u64,
            fua: h.fua(),
            data,
            seq: 0,
            session: self.session,
            applied: false,
            apply_err: None,
            applying: 0,
            // A forwarded update is the leader's to keep until the follower's watermark
            // passes it.
            remote_done: origin != Origin::PeerFwd,
            initiator: None,
            deadline: Instant::now() + self.cfg.peer_timeout,
            awaiting_order: false,
            peer_id: h.id,
            order_due: origin == Origin::PeerFwd,
            listed: false,
            caw: upd == Upd::Caw,
            fwd_session: 0,
            uid: 0,
            fwd_inc: self.peer_incarnation,
        })
    }

    fn on_peer_wm(&mut self) {
        let wm = self.peer_wm;
        match self.cfg.role {
            Role::Leader => {
                while let Some(&k) = self.backlog.front() {
                    let op = &self.ops[k];
                    if op.session != self.session || op.seq == 0 || op.seq > wm {
                        break;
                    }
                    self.backlog.pop_front();
                    self.backlog_bytes -= op.data.len() as u64;
                    self.ops[k].remote_done = true;
                    self.settle(k);
                }
            }
            Role::Follower => {
                while let Some(&k) = self.forwards.front() {
                    let op = &self.ops[k];
                    if op.awaiting_order || op.seq == 0 || op.seq > wm || op.session != self.session
                    {
                        break;
                    }
                    self.forwards.pop_front();
                    self.ops[k].listed = false;
                    self.ops[k].remote_done = true;
                    self.settle(k);
                }
            }
        }
        self.stats
            .backlog_bytes
            .store(self.backlog_bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fail initiators whose requests waited longer than the peer timeout.
    pub fn expire(&mut self, now: Instant) {
        for (_, m) in self.metas.iter_mut() {
            if m.deadline <= now
                && let Some((from, tag)) = m.initiator.take()
            {
                // The entry stays for the answer (see `MetaWait`).
                self.stats.inc(&self.stats.timeouts);
                self.done.push((from, tag, Err(Errno::IO)));
            }
        }
        let mut expired = Vec::new();
        for (k, op) in self.ops.iter() {
            if op.initiator.is_some() && op.deadline <= now && op.origin == Origin::Local {
                expired.push(k);
            }
        }
        if expired.is_empty() {
            return;
        }
        if !self.held_logged {
            self.held_logged = true;
            tracing::error!(volume = %self.cfg.name, failed = expired.len(),
                timeout_ms = self.cfg.peer_timeout.as_millis() as u64,
                "mirror: peer unreachable; failing held requests (never acknowledged on one site only)");
        }
        for k in expired {
            self.stats.inc(&self.stats.timeouts);
            let (from, tag) = self.ops[k].initiator.take().expect("checked");
            self.done.push((from, tag, Err(Errno::IO)));
            if self.cfg.role == Role::Follower
                && !self.up
                && let Some(p) = self.forwards.iter().position(|&f| f == k)
            {
                // Not re-sent: if the leader sequenced it, the leader re-sends it itself.
                self.forwards.remove(p);
                self.ops[k].listed = false;
            }
            // A flush stays outstanding while the link is up: its FLUSH_DONE will come and must
            // find it (its id must not be reused meanwhile). A new session re-sends it.
            if !self.up
                && let Some(p) = self.flushes.iter().position(|&f| f == k)
            {
                self.flushes.swap_remove(p);
                self.ops[k].listed = false;
            }
            self.settle(k);
        }
    }

    /// The replicas have diverged (backlog overflow): refuse sessions until a resync.
    pub fn is_diverged(&self) -> bool {
        self.diverged
    }

    /// Give up the backlog of a diverged volume: its requests fail, its memory is freed, and
    /// the session (if any) is dropped.
    fn drop_backlog(&mut self) {
        // Applied here, never confirmed, and forgotten now: suspect.
        for &k in &self.backlog {
            let op = &self.ops[k];
            self.suspect.set_range(op.offset, op.len);
        }
        while let Some(k) = self.backlog.pop_front() {
            self.backlog_bytes -= self.ops[k].data.len() as u64;
            let op = &mut self.ops[k];
            op.remote_done = true;
            if let Some((from, tag)) = op.initiator.take() {
                self.done.push((from, tag, Err(Errno::IO)));
            }
            self.settle(k);
        }
        self.stats
            .backlog_bytes
            .store(self.backlog_bytes, std::sync::atomic::Ordering::Relaxed);
        if self.up {
            self.kill_link = Some("the volume diverged");
        }
    }

    fn diverge(&mut self) {
        if self.diverged {
            return;
        }
        self.diverged = true;
        self.stats
            .diverged
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(volume = %self.cfg.name, backlog_bytes = self.backlog_bytes,
            "mirror: the peer is away and the backlog is full; the replicas have diverged, writes now fail until a resync");
    }
}

impl Drop for Engine {
    /// A clean stop: the persisted bitmap is exact.
    fn drop(&mut self) {
        self.persist(true);
    }
}

#[cfg(test)]
mod tests;
