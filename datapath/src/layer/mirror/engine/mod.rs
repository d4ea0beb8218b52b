//! The per-volume mirror engine: orders updates, applies them to the local replica, exchanges
//! them with the peer site, and completes an initiator's request only when both replicas have
//! it (docs/mirror-protocol.md).
//!
//! Model: one engine per mirrored volume, owned by the volume's channel on its home reactor
//! (single-threaded: no locks). It knows nothing about sockets: the link hands it decoded
//! messages ([`Engine::on_msg`]) and drains what it has to send ([`Engine::take_tx`]: headers,
//! and payloads by reference to the updates' own buffers, a scatter list), so another
//! transport (RDMA) can drive it the same way.
//!
//! Data: an update's write data is copied once, into a buffer of its own from the engine's
//! pool (`txq.rs`), at the site that takes it; messages send from that buffer; an update
//! received from the peer is applied from the received message and copied only when its apply
//! must wait. A buffer a message in flight references is never reused or changed.
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
//!
//! Layout (this folder):
//! - `region.rs`: [`RegionMap`], the dirty, written and suspect maps (owns its bits and their
//!   count).
//! - `apply.rs`: the apply queue (owns the applies, the interval index of in-flight ranges and
//!   the applied watermark); says which applies start, the engine starts them.
//! - `replica.rs`: [`Mode`], replica states and [`decide`], the session decision (pure).
//! - `restore.rs`: the replica state, leadership and unclean mark restored at a start.
//! - `op.rs`: an update's record and its lifecycle towards the peer, one `Stage` enum whose
//!   transitions are decided in one place (`Stage::next`), with the state diagram.
//! - `session.rs`: `PeerSession`, the session with the peer (number, up, the seq counter,
//!   both watermarks, the ACK policy, heartbeat and outbox); returns verdicts and seqs.
//! - `leader.rs`: `Leader`, the compare-and-write barrier, the backlog, RESENT and
//!   divergence (owns those lists; returns the op keys the engine must sequence or settle).
//! - `follower.rs`: `Follower`, the forwards, their ids, RESENT's wait and MISCOMPAREs
//!   waiting for the watermark (owns those; returns which forward an answer is for and what
//!   each forward becomes at RESENT).
//! - `meta.rs`: `MetaRepl`, the metadata commands waiting for the peer and the META_STATE
//!   tokens (returns the answers to give); the [`MetaHandler`] trait.
//! - `resync.rs`: `ResyncSource` (the cursor, rate budget, reads, last pass, deferred
//!   updates and the attempt's copied regions; says the next step: read, finish or stop) and
//!   `ResyncTarget` (copies being applied, RESYNC_DONE).
//! - `actlog.rs`: `ActLog`, the leader's activity log (a persisted, bounded set of hot
//!   extents written before the updates to them) and the reconciliation of a site that did
//!   not stop cleanly (replica state 5, `decide_session`).
//! - `survivor.rs`: `Witness`, asking the witness for the grant (and an operator's
//!   takeover); returns `Grant` (wait, survive, fence).
//! - `flush.rs`: `Flushes`, this site's flushes waiting for FLUSH_DONE.
//! - `peer_cache.rs`: `PeerUnflushed`, the regions the follower acknowledged and may not have
//!   made durable yet (copied to it again if it may have lost them).
//! - `dispatch.rs`, `flow.rs`, `alone.rs`: the engine's routing (not parts): link up/down,
//!   every message to its part and metadata commands; an update's path through the leader,
//!   the follower, the session and the apply queue; serving alone, fencing and resyncs over
//!   the region maps; `deadline.rs`, requests held past the peer timeout and a stop's
//!   deadline.
//! - `tests/`: two engines back to back (random traffic, failover, forwards, metadata).
//!
//! Routing: a part never calls another part or the engine. It takes what it needs as
//! arguments (the op slab read-only, the dirty map lent, the applied watermark, the session
//! number) and returns what the engine must do next (op keys, `Next`, `Grant`, `Resent`,
//! answers, verdicts). Only the engine (`impl Engine`: this file, `dispatch.rs`, `flow.rs`,
//! `alone.rs`, `deadline.rs`) calls parts and carries out what they return. The engine itself keeps the
//! ops, the local replica's channel and the replica state that `persist`/`restore` read and
//! write (mode, grant epoch, dirty, written and suspect maps, the resync's copied map).

mod actlog;
mod alone;
mod apply;
mod deadline;
mod dispatch;
mod durable;
mod failed;
pub(crate) use failed::host_read_failure;
mod flow;
mod flush;
mod follower;
mod leader;
mod meta;
mod op;
mod peer_cache;
mod region;
mod replica;
mod restore;
mod resync;
mod session;
mod survivor;
mod switchover;

use super::stats::MirrorStats;
use super::txq::{Data, DataPool, TxQueue};
use super::wire::{self, Header, Type};
use crate::bdev::{Channel, Start};
use crate::uring::{Errno, IoCx, IoTag};
pub use actlog::{ActLogConfig, actlog_path, decide_session};
use apply::ApplyQueue;
use flush::Flushes;
use follower::{Follower, Resent};
use leader::Leader;
use meta::Held;
use meta::META_INTERNAL;
use meta::MetaRepl;
pub use meta::{
    Install, META_STATUS, MetaHandler, MetaRouter, Settle, Settling, meta_result, tagged,
};
use op::{Op, Origin, Stage, Upd};
use peer_cache::PeerUnflushed;
pub use region::RegionMap;
pub use replica::{Mode, Session, decide, state_name};
use resync::{Next, ResyncSource, ResyncTarget};
use session::PeerSession;
pub use session::{
    ACK_BATCH, ACK_WINDOW, REDIAL_EVERY, announced_lease_ms, lease_for, lease_margin,
    lease_mismatch,
};

/// The longest a quiet engine goes without its periodic work ([`Engine::quiet_until`]).
pub const IDLE_TICK: Duration = Duration::from_millis(50);
use slab::Slab;
use std::sync::Arc;
use std::time::{Duration, Instant};
use survivor::{Grant, SiteNow, Witness};
pub use switchover::{DRAIN_LIMIT, agree, leadership_word};
use switchover::{Phase, Switch};

/// Which site orders this volume's updates. In [`EngineConfig::role`] it is the configured
/// role, which also says who keeps the link (the configured leader listens, the other
/// dials) for good; the engine's current role (who sequences) may differ after a
/// switchover (switchover.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Orders updates; (configured) listens for the follower's link.
    Leader,
    /// Forwards its updates; (configured) dials the leader.
    Follower,
}

/// At most this many bytes of spare data vectors per engine (they are reused for updates'
/// data; one 8 MiB update's vector may be kept, a thousand may not).
pub const SPARE_BYTES: usize = 16 << 20;

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

/// Static engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Volume name.
    pub name: String,
    /// This site's configured role: the leader of term 0, and who listens (leader) or dials
    /// (follower) for the link, whoever leads later.
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
    /// What survives of the replica's data at a restart (durable.rs, `state_not_of_this_data`).
    pub replica_data: super::state::ReplicaData,
    /// The replica's file or block device, when it outlives the process: a clean stop flushes
    /// it before the state calls the stop clean (`None`: RAM, or a test's device).
    pub replica_path: Option<std::path::PathBuf>,
    /// Replicated metadata (reservations) of the volume, when a front end keeps any.
    pub meta: Option<Arc<dyn MetaHandler>>,
    /// The activity log (actlog.rs; kept by a leader with a state file).
    pub actlog: ActLogConfig,
    /// This host's boot id (`state::boot_id`; 0: unknown), recorded in the state file: a site
    /// that stopped uncleanly in sync and finds another one at its start lost its host, not
    /// only its process (replica state 6).
    pub boot_id: u128,
}

/// One mirrored volume's engine.
pub struct Engine {
    cfg: EngineConfig,
    inner: Box<dyn Channel>,
    ops: Slab<Op>,
    /// The apply queue and the session's applied watermark.
    aq: ApplyQueue,
    /// Leader: the barrier, the backlog, RESENT and divergence.
    leader: Leader,
    /// Follower: the forwards, RESENT's wait and MISCOMPAREs.
    follower: Follower,
    /// Metadata commands waiting for the peer.
    metas: MetaRepl,
    /// This process's incarnation (random at start; the follower sends it in HELLO).
    incarnation: u64,
    /// The peer process's incarnation (from its HELLO or WELCOME).
    peer_incarnation: u64,
    vol: usize,
    /// Flushes waiting for FLUSH_DONE.
    flushes: Flushes,
    /// Leader: regions the follower acknowledged and may not have flushed (peer_cache.rs).
    peer_unflushed: PeerUnflushed,
    /// The session with the peer: number, up, seqs, watermarks, ACK policy, outbox.
    sess: PeerSession,
    /// Spare data buffers (at most [`SPARE_BYTES`] of capacity): every update's data is
    /// copied (or moved) into one of them once, and messages send from it (txq.rs).
    pool: DataPool,
    held_logged: bool,
    stats: Arc<MirrorStats>,
    /// Completions to initiators: (their reactor, tag, result).
    pub done: Vec<(u32, IoTag, Result<(), Errno>)>,
    /// The connection key of the link carrying the session (or being dialled).
    pub link_key: Option<u32>,
    /// Last time the link received bytes.
    pub last_rx: Instant,
    /// The link must be dropped (heartbeat timeout).
    pub kill_link: Option<&'static str>,
    /// By apply slot: the ticket of the running apply first seen there by a tick, and when
    /// ([`Engine::check_slow_apply`]).
    slow_watch: Vec<Option<(u64, Instant)>>,
    /// Rate limits of the link's warnings: a follower whose leader is gone redials every
    /// [`REDIAL_EVERY`] and each failed dial drops a link (cleared when a session starts).
    pub link_warns: crate::layer::mirror::ratelimit::WarnLimits,
    /// The daemon is stopping: take no new forwarded updates.
    draining: bool,
    mode: Mode,
    /// Asking the witness for the grant (and an operator's takeover).
    witness: Witness,
    /// Regions written while serving alone (one bit per `dirty_granularity` bytes).
    dirty: RegionMap,
    /// Source: the resync under way.
    resync: Option<ResyncSource>,
    /// Target: the copies being applied and RESYNC_DONE.
    target: ResyncTarget,
    /// Reused buffer for a region read at once.
    resync_buf: Vec<u8>,
    /// The ops an ACK confirmed (reused: no allocation per acknowledgement).
    acked_buf: Vec<usize>,
    /// The witness epoch this site holds as survivor.
    grant_epoch: u64,
    /// Fenced for want of the witness's answer (or left unanswered after the session came
    /// back, not fenced: `Grant::LostInSession`): the view sequence then (its later word may
    /// name this site the holder, `adopt_lost_grant`), and whether the request was an
    /// operator's takeover.
    fenced_unanswered: Option<(u64, bool)>,
    /// Fenced because the witness granted the group to the peer: the epoch of that grant and
    /// the view sequence of the denial; asked again once, if a later word shows that grant
    /// given back (`ask_again_if_released`).
    denied_by: Option<(u64, u64)>,
    /// The request outstanding is that second one (its denial is not watched again); dropped
    /// with any answer to it, and once the session is back (an answer read in session).
    witness_retried: bool,
    /// The newest epoch this site gave back (or is giving back): the witness's word naming
    /// this site at it is old news, never a lost grant.
    given_back: u64,
    /// The word (view sequence) at which a grant given back was last given back again
    /// (`give_back_again`: once per word).
    given_back_again: u64,
    /// Started in this process (with its state, fenced or in sync, or without it): nothing
    /// here knows whether the witness holds a grant for this site from before the start (a
    /// lost answer watched in session or fenced for, a release not yet sent or answered:
    /// none of them persisted), so once in sync again a grant the witness's word names this
    /// site's is given back (`adopt_lost_grant`), as after a fence for want of an answer seen
    /// here. Cleared at the first word that names no such grant, or at a grant taken here.
    since_start: bool,
    /// Counted in this group slot's `FailoverSlot::watching` (a request outstanding, or
    /// fenced for want of an answer: `publish_watching`).
    watching: Option<Arc<super::failover::FailoverSlot>>,
    /// Counted in this group slot's `FailoverSlot::withdrawn` (`publish_withdrawn`).
    withdrawn_in: Option<Arc<super::failover::FailoverSlot>>,
    /// `fenced_unanswered`'s request was asked again after the holder's grant was given back
    /// (`witness_retried`; its takeover flag set for that): asked once more as such when the
    /// witness's word names nobody (`adopt_lost_grant`), unlike an operator's takeover.
    unanswered_retried: bool,
    /// The witness's epoch as this site saw it when `fenced_unanswered`'s request went
    /// unanswered: a word naming nobody at a later one shows another grant came and went.
    unanswered_epoch: u64,
    /// Restored fenced for want of an answer whose device may have dropped acknowledged writes
    /// since (restore.rs): a grant the witness holds for it is given back, never served on.
    unadoptable: bool,
    /// Counted in this group slot's `FailoverSlot::synced` (`true`) or `unsynced`
    /// (`publish_sync`).
    sync_in: Option<(Arc<super::failover::FailoverSlot>, bool)>,
    /// A resync target that finished receiving in session `.0`: its source may still push
    /// metadata states (a change crossing the target's RESYNC_DONE_ACK) until a PONG for the
    /// PING sent right after that confirmation (clock `.1`) shows the source has read it
    /// (`takes_peer_meta_state`, `peer_meta_crossing`).
    resync_received: Option<(u32, u64)>,
    /// Regions ever written here (a new, empty replica is sent only these).
    written: RegionMap,
    /// Suspect regions: updates applied here that the peer never confirmed (recorded when
    /// this site fences); sent as RESYNC_ALSO when this site is resynced, so the source copies
    /// them too. Not used while serving as survivor (merged into `dirty`).
    suspect: RegionMap,
    /// Started with no persisted state: an empty replica that has never been in sync.
    new_replica: bool,
    /// The replica state's persistence (durable.rs).
    durable: durable::Durable,
    /// The local replica failed (failed.rs): why; this site serves nothing more.
    failed: Option<String>,
    /// Leader: when the WELCOME of the handshake under way was sent (its first read lease
    /// runs from then).
    handshake_sent: Option<Instant>,
    /// Survivor: nothing is acknowledged alone before then (the lost peer's read lease has
    /// certainly expired); none: no wait.
    alone_after: Option<Instant>,
    /// The activity log and the unclean mark (actlog.rs).
    al: actlog::ActLog,
    /// The answers waiting for `alone_after` (and a restored grant's check).
    alone_held: Vec<(u32, IoTag, Result<(), Errno>)>,
    /// A survivor restored from its state with a witness grant: where the check of that grant
    /// against the witness's word stands (alone.rs, `check_grant`).
    grant_check: alone::GrantCheck,
    /// Who sequences now (switchover.rs; `cfg.role` is the configured one).
    role: Role,
    /// The leadership term (0: the configuration).
    term: u64,
    /// This site led the volume in this process or before its restart (its activity log may
    /// hold extents); persisted.
    led: bool,
    /// The switchover under way and the updates waiting for it.
    sw: Switch,
}

impl Engine {
    /// An engine over the local replica's channel `inner`; `vol` is the volume's index.
    pub fn new(
        cfg: EngineConfig,
        inner: Box<dyn Channel>,
        vol: usize,
        stats: Arc<MirrorStats>,
    ) -> Self {
        let (size, g) = (cfg.size, cfg.dirty_granularity);
        let lease = lease_for(cfg.peer_dead);
        let al = actlog::ActLog::new(&cfg);
        let cfg_role = cfg.role;
        Self {
            cfg,
            inner,
            ops: Slab::with_capacity(1024),
            aq: ApplyQueue::new(),
            leader: Leader::new(),
            follower: Follower::new(),
            metas: MetaRepl::new(),
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
            vol,
            flushes: Flushes::default(),
            peer_unflushed: PeerUnflushed::new(size, g),
            sess: PeerSession::new(Arc::clone(&stats), lease),
            pool: DataPool::new(SPARE_BYTES),
            held_logged: false,
            stats,
            done: Vec::with_capacity(256),
            link_key: None,
            last_rx: Instant::now(),
            kill_link: None,
            slow_watch: Vec::new(),
            link_warns: Default::default(),
            draining: false,
            mode: Mode::Mirroring,
            witness: Witness::default(),
            dirty: RegionMap::new(size, g),
            resync: None,
            target: ResyncTarget::default(),
            resync_buf: Vec::new(),
            acked_buf: Vec::with_capacity(1024),
            grant_epoch: 0,
            fenced_unanswered: None,
            denied_by: None,
            witness_retried: false,
            given_back: 0,
            given_back_again: 0,
            resync_received: None,
            watching: None,
            withdrawn_in: None,
            unanswered_retried: false,
            unanswered_epoch: 0,
            unadoptable: false,
            sync_in: None,
            since_start: true,
            written: RegionMap::new(size, g),
            suspect: RegionMap::new(size, g),
            new_replica: false,
            durable: Default::default(),
            failed: None,
            handshake_sent: None,
            alone_after: None,
            alone_held: Vec::new(),
            grant_check: alone::GrantCheck::Done,
            al,
            role: cfg_role,
            term: 0,
            led: cfg_role == Role::Leader,
            sw: Switch::default(),
        }
    }

    /// Change mode, publish it and persist it (durable.rs: what waits until it is durable).
    fn set_mode(&mut self, m: Mode) {
        if m == Mode::Mirroring {
            self.al_mirroring();
        }
        // A resync target that leaves the resync fenced (its replica failed) is half-copied
        // as well: it says 3 until a resync to it completes, never 2 (the leader of two fenced
        // sites is the source of their session).
        self.target.half_copied =
            (self.target.half_copied || self.mode == Mode::Resyncing) && m == Mode::Fenced;
        self.mode = m;
        self.stats.set_mode(m);
        self.publish_lease();
        self.persist_mode(m);
    }

    /// This site's replica state as told to the peer in HELLO/WELCOME (`id` field):
    /// 0 in sync (or fresh), 1 survivor, 2 fenced, 3 resyncing, 4 new, 5 in sync but stopped
    /// uncleanly (actlog.rs), 6 as 5 with its host restarted since.
    pub fn replica_state(&self) -> u32 {
        if self.al.unclean && self.al_state_mode() && !self.new_replica {
            // In sync, stopped uncleanly: its next session reconciles (actlog.rs); 6 when its
            // host restarted too (its device may have dropped unflushed writes).
            return if self.al.host_restarted { 6 } else { 5 };
        }
        replica::replica_state(self.mode, self.new_replica, self.target.half_copied)
    }

    /// Reads may be served at `now` (docs/mirror-protocol.md, "Read lease"): always as the
    /// survivor; while mirroring, only under a read lease (always without a witness: no
    /// site can be granted the volume); never in the other modes.
    pub fn may_read(&self, now: Instant) -> bool {
        if self.failed.is_some() {
            return false;
        }
        match self.mode {
            Mode::Survivor => !self.grant_unconfirmed(),
            Mode::Mirroring => self.cfg.failover.is_none() || self.sess.leased(now),
            Mode::Fenced | Mode::Resyncing | Mode::Waiting => false,
        }
    }

    /// How this site's replica stands against the volume's, for a layer under the mirror that
    /// keeps its history (CDP, [`crate::bdev::Channel::vouch`]): stale while it receives a
    /// resync, is fenced or is a new replica; current while reads may be served ([`Engine::may_read`]:
    /// its read lease, or alone as the survivor), since the peer acknowledges nothing alone
    /// before this site's lease expired; unsure otherwise.
    ///
    /// The lease is checked against the clock read here, not the reactor turn's (`turn_now`,
    /// used when no lease is involved): a process
    /// stopped in the middle of a turn (SIGSTOP, a long stall) resumes with the turn's time from
    /// before the stop, while the records it appended since carry later times; judged by the
    /// turn's time the replica would be vouched for past the moment its peer may have gone on
    /// alone (the randomised soak's Freeze caught it).
    pub fn vouch(&self, turn_now: Instant) -> crate::bdev::Vouch {
        // Fenced: its peer may have been granted the volume and written alone (and an
        // operator's takeover makes this replica the volume again without a resync).
        if self.new_replica || matches!(self.mode, Mode::Resyncing | Mode::Fenced) {
            return crate::bdev::Vouch::Stale;
        }
        let lease_bound = self.mode == Mode::Mirroring && self.cfg.failover.is_some();
        // (Not bound to a lease, the time does not matter.)
        let now = if lease_bound {
            Instant::now()
        } else {
            turn_now
        };
        if self.may_read(now) {
            crate::bdev::Vouch::Current
        } else {
            crate::bdev::Vouch::Unsure
        }
    }

    /// Publish `may_read` for the volume's channels on the other reactors.
    pub(super) fn publish_lease(&self) {
        let ns = match self.mode {
            _ if self.failed.is_some() => 0,
            Mode::Survivor if self.grant_unconfirmed() => 0,
            Mode::Survivor => u64::MAX,
            Mode::Mirroring if self.cfg.failover.is_none() => u64::MAX,
            Mode::Mirroring => self
                .sess
                .lease_until()
                .map_or(0, |u| super::stats::mono_ns(u).max(1)),
            Mode::Fenced | Mode::Resyncing | Mode::Waiting => 0,
        };
        self.stats.set_read_until(ns);
    }

    /// Leader: the WELCOME of the handshake that is about to start a session was sent at
    /// `at` (the session's first read lease runs from then).
    pub fn set_handshake_sent(&mut self, at: Instant) {
        self.handshake_sent = Some(at);
    }

    /// The leader queued WELCOME at `at`: the follower starts its session, and serves reads
    /// under its lease, as soon as it reads it, before this site has checked its AUTH (which
    /// may never come, or be refused). A grant this site gets meanwhile waits that lease out
    /// like any other ([`Self::become_survivor`]'s wait on the peer's lease).
    pub fn welcome_sent(&mut self, at: Instant) {
        self.sess.peer_may_lease_from(at);
    }

    /// Survivor: release the answers held for the lost peer's read lease once it expired.
    pub(super) fn release_alone(&mut self, now: Instant) {
        if self.alone_after.is_some_and(|t| now >= t) {
            self.alone_after = None;
        }
        if !self.holding_alone() && !self.alone_held.is_empty() {
            for (from, tag, r) in std::mem::take(&mut self.alone_held) {
                self.answer(from, tag, r);
            }
        }
    }

    /// Survivor: answers are held (the lost peer's read lease, or a restored grant not
    /// confirmed by the witness yet).
    pub(super) fn holding_alone(&self) -> bool {
        self.alone_after.is_some() || self.grant_unconfirmed()
    }

    /// Survivor: answers held until the lost peer's read lease expired.
    pub fn alone_held(&self) -> usize {
        self.alone_held.len()
    }

    /// I/O is refused here for now (fenced, resyncing, or waiting for the first session).
    pub fn no_io(&self) -> bool {
        self.mode.serves_nothing() || self.failed.is_some()
    }

    /// When the periodic work ([`Engine::tick`]) is next needed, if this engine is quiet (in
    /// sync, the link up, nothing in flight, held or waiting, no resync, not stopping): the
    /// next PING, the heartbeat timeout, the read lease's end, at most [`IDLE_TICK`] away.
    /// `None`: busy, tick at the normal rate. (An idle mirrored volume used to run its
    /// periodic work every 5 ms; the reactor still wakes at its longest sleep, 10 ms.)
    pub fn quiet_until(&self, now: Instant) -> Option<Instant> {
        if !self.quiet() {
            return None;
        }
        let due = [
            self.sess.next_ping(),
            Some(self.last_rx + self.cfg.peer_dead),
            self.sess.lease_until(),
            Some(now + IDLE_TICK),
        ];
        due.into_iter().flatten().min()
    }

    /// Whether the engine has nothing to do but its periodic work (see [`Self::quiet_until`]):
    /// a few loads and compares, cheap enough for every reactor turn.
    pub fn quiet(&self) -> bool {
        self.mode == Mode::Mirroring
            && self.sess.up
            && self.ops.is_empty()
            && self.resync.is_none()
            && !self.draining
            && self.failed.is_none()
            && self.alone_held.is_empty()
            && self.durable.held.is_empty()
            && self.kill_link.is_none()
            && self.metas.is_empty()
            && self.sw.phase == Phase::Idle
            && self.sw.held.is_empty()
            && self.done.is_empty()
    }

    /// Whether the poller's next turn has work here that must not wait for the reactor's
    /// next wake-up (`Poller::after_work`): finished requests to hand back, messages or an
    /// ACK to send, a link to drop. Outside plain mirroring with a session up, or with
    /// anything unusual pending (a drain, a resync, answers or updates waiting for the state
    /// file or the activity log, a switchover, a failure), always true: the reactor then runs
    /// the extra turn it always ran before sleeping.
    pub fn has_work(&self, now: Instant) -> bool {
        let steady = self.mode == Mode::Mirroring
            && self.sess.up
            && self.resync.is_none()
            && !self.draining
            && self.failed.is_none()
            && self.alone_held.is_empty()
            && !self.durable.pending()
            && !self.actlog_pending()
            && self.kill_link.is_none()
            && self.sw.phase == Phase::Idle
            && self.sw.held.is_empty()
            && self.done.is_empty();
        !steady || self.sess.would_send(now, self.ack_wm())
    }

    /// The read lease this site announces in HELLO/WELCOME (`announced_lease_ms`).
    pub fn announced_lease_ms(&self) -> u32 {
        announced_lease_ms(self.cfg.peer_dead, self.cfg.failover.is_some())
    }

    /// Check the peer's announced read lease against this site's; on a mismatch the refusal
    /// (also kept in the status).
    pub fn check_peer_lease(&self, peer_ms: u32) -> Result<(), String> {
        match lease_mismatch(self.announced_lease_ms(), peer_ms) {
            None => Ok(()),
            Some(why) => {
                self.stats.set_refused(Some(&why));
                Err(why)
            }
        }
    }

    /// Decide what a new session is, from both sites' replica states, and start it. A refusal
    /// is kept in the status (`session_refused`) until a session starts.
    /// `peer` is the peer's replica state, `peer_lead` its leadership word (switchover.rs).
    pub fn start_session(
        &mut self,
        io: &mut IoCx,
        peer: u32,
        peer_lead: u64,
    ) -> Result<(), String> {
        let r = self.decide_and_start(io, peer, peer_lead);
        self.stats.set_refused(r.as_ref().err().map(String::as_str));
        r
    }

    /// [`Engine::start_session`] with a peer that agrees on the leader (engine tests).
    #[cfg(test)]
    pub fn session_start(&mut self, io: &mut IoCx, peer: u32) -> Result<(), String> {
        let peer_lead = leadership_word(self.term, self.role != Role::Leader);
        self.start_session(io, peer, peer_lead)
    }

    fn decide_and_start(&mut self, io: &mut IoCx, peer: u32, peer_lead: u64) -> Result<(), String> {
        if self.durable.failed {
            return Err("the replica state cannot be persisted at this site: refusing".into());
        }
        if self.grant_unconfirmed() {
            return Err(
                "this site's survivor grant, restored from its state, is not confirmed by the \
                 witness yet: refusing until it is"
                    .into(),
            );
        }
        if let Some(why) = &self.failed {
            return Err(format!(
                "{why}: refusing until a restart with a working device"
            ));
        }
        // Who leads this session (docs/mirror-protocol.md, "Leadership"), before the table's
        // "the leader" is read.
        self.agree_leader(peer_lead)?;
        let me = self.replica_state();
        match self.al_decide_session(me, peer)? {
            Session::InSync => {
                // In sync (or both new and empty).
                self.new_replica = false;
                if self.mode == Mode::Waiting {
                    self.set_mode(Mode::Mirroring);
                }
                self.link_up(io);
                // A source that lost its session right after RESYNC_DONE (`source_unsure`)
                // meets its target in sync: the resync is done, as with the confirmation.
                self.finish_resync(io);
                if self.role == Role::Leader {
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
                // here (a leader's backlog, a follower's forwards) are failed and never sent,
                // and their regions are suspect, so the survivor copies them back. (A leader
                // that was frozen while the peer became the survivor comes here without
                // having fenced: re-sending its backlog would overwrite the survivor's newer
                // acknowledged writes.)
                self.give_up_held(true);
                self.set_mode(Mode::Resyncing);
                self.start_target();
                self.link_up(io);
                self.send_suspect();
                tracing::warn!(volume = %self.cfg.name,
                    "mirror: the peer is the survivor; receiving its changes (no I/O here until done)");
            }
            Session::Reconcile => {
                // Neither site acknowledged alone: this replica holds every acknowledged
                // write. Serve (no grant is needed: the peer serves nothing until resynced)
                // and copy both sites' unconfirmed regions to the peer. Updates still held
                // here (an in-sync site's backlog) have an unknown outcome: failed, and their
                // regions copied too.
                self.give_up_held(true);
                self.set_mode(Mode::Survivor);
                self.session_start_source(io);
                self.push_meta();
                tracing::warn!(volume = %self.cfg.name, this_site = state_name(me),
                    peer = state_name(peer), dirty_bytes = self.dirty_bytes(),
                    "mirror: neither site served alone; reconciling the unconfirmed regions from this site");
            }
            Session::Refuse => {
                return Err(format!(
                    "no replica is known to hold every acknowledged write (this site {}, peer {}): refusing; an operator must choose the replica to keep with `twinblk-ctl mirror_takeover` at that site (writes acknowledged only by the other are lost)",
                    state_name(me),
                    state_name(peer)
                ));
            }
        }
        Ok(())
    }

    /// Start an initiator's update the normal (mirrored) way.
    fn start_mirrored(&mut self, io: &mut IoCx, k: usize) {
        if self.role == Role::Follower && self.sw.holds() {
            // The old leader of a switchover, waiting for its new role to reach the disk
            // before it sends SWITCH (`Phase::Handing`): the peer still follows, so nothing is
            // forwarded (or flushed through it) yet; resumed after SWITCH.
            self.sw.held.push_back(k);
            return;
        }
        let upd = self.ops[k].upd;
        if upd == Upd::Flush {
            return self.start_flush(io, k);
        }
        match self.role {
            Role::Leader => self.leader_take(io, k),
            Role::Follower => {
                self.ops[k].stage.hold();
                if self.follower.hold(k, self.sess.up) {
                    self.forward(k);
                }
            }
        }
    }

    /// Published counters.
    pub fn stats(&self) -> &MirrorStats {
        &self.stats
    }

    /// Periodic work (the reactor calls it every few milliseconds): fail requests held past
    /// the peer timeout, ping, and notice a silent peer. True when the follower should dial.
    pub fn tick(&mut self, io: &mut IoCx, now: Instant) -> bool {
        self.poll_durable();
        self.poll_actlog(io);
        self.release_metas();
        self.submit_crossing_metas();
        if let Some((offset, len, e)) = self.stats.take_read_failure() {
            // A host read another reactor issued failed at the local device.
            self.local_failure("a read", offset, len, e);
        }
        self.failover_tick(io);
        self.switch_tick(io, now);
        self.release_alone(now);
        self.release_waiting_copies(io);
        self.resync_step(io, now);
        self.expire(now);
        self.release_room_wait(io);
        if self.leader.is_diverged() && self.leader.backlog_len() > 0 {
            self.drop_backlog();
        }
        if let Some(why) =
            self.sess
                .heartbeat(now, self.cfg.heartbeat, self.cfg.peer_dead, self.last_rx)
        {
            self.kill_link = Some(why);
        }
        self.check_slow_apply(now);
        self.peer_flush_tick(now);
        // Every change is published where it happens; this only repeats it (a lease lapses
        // by itself: readers compare its end with their clock).
        self.publish_lease();
        // The follower dials in every mode: a survivor or fenced site meets its peer again
        // through a resync (decided at the session start).
        if self.cfg.role == Role::Follower
            && !self.leader.is_diverged()
            && self.failed.is_none()
            && self.link_key.is_none()
        {
            return self.sess.dial_due(now);
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

    /// The box holding the channel below the engine (a layer inserted under the mirror at run
    /// time takes its place).
    pub fn inner_box(&mut self) -> &mut Box<dyn Channel> {
        &mut self.inner
    }

    /// This process's incarnation, sent in HELLO (a follower's forward ids are unique only
    /// within one incarnation).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The peer's incarnation, from its HELLO (leader) or WELCOME (follower), before
    /// `session_start`. Another incarnation than the previous session's (the peer process
    /// restarted) is told to the metadata handlers (`MetaHandler::peer_restarted`).
    pub fn set_peer_incarnation(&mut self, v: u64) {
        if self.peer_incarnation != 0
            && self.peer_incarnation != v
            && let Some(h) = &self.cfg.meta
        {
            h.peer_restarted(self.vol);
        }
        self.peer_incarnation = v;
    }

    /// A session is running.
    pub fn is_up(&self) -> bool {
        self.sess.up
    }

    /// Nothing is in flight or waiting.
    pub fn idle(&self) -> bool {
        self.ops.is_empty() && self.metas.is_empty()
    }

    /// Some initiator still waits for an answer.
    pub fn answering(&self) -> bool {
        !self.durable.held.is_empty()
            || !self.alone_held.is_empty()
            || self.metas.answering()
            || self.ops.iter().any(|(_, op)| op.initiator.is_some())
    }

    /// Anything to send (messages or an ACK).
    pub fn wants_send(&mut self, now: Instant) -> bool {
        self.sess.wants_send(now, self.ack_wm())
    }

    /// When a held-back ACK falls due (the reactor may sleep until then, not longer).
    pub fn ack_deadline(&self) -> Option<Instant> {
        self.sess.ack_deadline(self.ack_wm())
    }

    /// `data` copied into a buffer of the update's own: the one copy of write data at a site.
    fn buf(&mut self, data: &[u8]) -> Data {
        self.pool.fill(data)
    }

    /// A spare data vector (empty, maybe with capacity) for the caller to reuse: a request
    /// that moved its data into an update takes one back, so vectors keep circulating
    /// between reactors without allocations.
    pub fn take_spare(&mut self) -> Vec<u8> {
        self.pool.take_vec()
    }

    /// Keep `d` for reuse within [`SPARE_BYTES`] (else it is freed). A buffer a message in
    /// flight still references is not kept: the link gives it back once its send completed.
    pub fn recycle(&mut self, d: Data) {
        self.pool.put(d);
    }

    /// Bytes held by spare data buffers.
    pub fn spare_bytes(&self) -> usize {
        self.pool.bytes()
    }

    /// Copies of update data into this engine's buffers so far (one per update taken from
    /// this site's initiator or forwarded to the leader; none for an update received from
    /// the peer and applied at once).
    pub fn data_copies(&self) -> u64 {
        self.pool.fills()
    }

    /// Queue `h` with the payload of op `payload_of` (sent from the op's own buffer).
    fn send(&mut self, h: Header, payload_of: Option<usize>) {
        match payload_of {
            Some(k) => self.sess.send_data(&h, &self.ops[k].data),
            None => self.sess.send(&h, &[]),
        }
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
            // Never truncated: the mirror channel splits what does not fit (split.rs).
            count: wire::count(op.len).expect("an update longer than one message"),
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
        if self.leader.is_diverged() {
            return Start::Done(Err(Errno::IO));
        }
        if self.no_io() {
            // Another site's path may serve it (NVMe: ANA inaccessible).
            return Start::Done(Err(Errno::UNAVAILABLE));
        }
        let (upd, len, data) = match update {
            Update::Meta(cmd) => return self.submit_meta(from, tag, cmd),
            Update::Write(d) => (Upd::Write, d.len() as u64, self.buf(d)),
            Update::Zeroes(len) => (Upd::Zeroes, len, Data::default()),
            Update::Unmap(len) => (Upd::Unmap, len, Data::default()),
            Update::Flush => (Upd::Flush, 0, Data::default()),
            Update::CompareWrite { cmp, data } => {
                if cmp.len() != data.len() || cmp.is_empty() {
                    return Start::Done(Err(Errno::INVAL));
                }
                let mut v = self.buf(cmp);
                v.make_mut().extend_from_slice(data);
                (Upd::Caw, cmp.len() as u64, v)
            }
        };
        self.submit_op(io, from, tag, (upd, len, data), offset, fua)
    }

    /// The answer to an update the wire cannot carry (docs/mirror-protocol.md, "Messages"):
    /// of no bytes, done at once; off the block size, refused. Sent, the peer would refuse the
    /// message and drop the link, and the update, kept for the next session, with it. `None`:
    /// it can be sent.
    pub fn unsendable(&self, offset: u64, len: u64) -> Option<Result<(), Errno>> {
        let b = u64::from(self.cfg.block);
        if len == 0 {
            Some(Ok(()))
        } else if !offset.is_multiple_of(b) || !len.is_multiple_of(b) {
            Some(Err(Errno::INVAL))
        } else {
            None
        }
    }

    /// Start a write whose data the caller hands over (a request another reactor moved
    /// here): the update takes the bytes of `data` (no copy) and leaves a spare vector in
    /// their place, for the answer to carry home.
    pub fn submit_write_owned(
        &mut self,
        io: &mut IoCx,
        from: u32,
        tag: IoTag,
        data: &mut Vec<u8>,
        offset: u64,
        fua: bool,
    ) -> Start {
        if self.leader.is_diverged() || self.no_io() {
            let e = if self.no_io() {
                Errno::UNAVAILABLE
            } else {
                Errno::IO
            };
            return Start::Done(Err(e));
        }
        let data = self.pool.adopt(data);
        let len = data.len() as u64;
        self.submit_op(io, from, tag, (Upd::Write, len, data), offset, fua)
    }

    fn submit_op(
        &mut self,
        io: &mut IoCx,
        from: u32,
        tag: IoTag,
        (upd, len, data): (Upd, u64, Data),
        offset: u64,
        fua: bool,
    ) -> Start {
        if upd != Upd::Flush
            && let Some(r) = self.unsendable(offset, len)
        {
            self.recycle(data);
            return Start::Done(r);
        }
        let mut op = Op::new(
            Origin::Local,
            upd,
            (offset, len),
            fua,
            data,
            Stage::New,
            Instant::now() + self.cfg.peer_timeout,
        );
        op.initiator = Some((from, tag));
        let k = self.ops.insert(op);
        if self.role == Role::Follower {
            self.ops[k].uid = self.follower.new_uid();
        }
        self.stats.inc(&self.stats.updates);
        if self.mode == Mode::Survivor {
            if let Some(r) = self.resync.as_mut()
                && r.defer(k)
            {
                // The resync's last pass: wait, so the dirty set drains; mirrored after it.
                return Start::Pending;
            }
            // Alone: done when the local replica has it; the peer gets it by resync.
            self.survivor_apply(io, k);
            return Start::Pending;
        }
        self.start_mirrored(io, k);
        Start::Pending
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

    /// Queue the apply of `k` (an update received from the peer, its data not copied yet)
    /// with `payload`, the write data in the received message: applied straight from it when
    /// the apply starts now (the device takes the bytes during the call), else copied into
    /// the op's own buffer to wait.
    pub(super) fn enqueue_apply_from(
        &mut self,
        io: &mut IoCx,
        k: usize,
        (session, seq): (u32, u64),
        payload: &[u8],
    ) {
        let op = &mut self.ops[k];
        op.applying += 1;
        let (a, now) = self.aq.push(k, session, seq, op.offset, op.len);
        if now {
            self.start_apply_from(io, a, Some(payload));
        } else if !payload.is_empty() {
            self.ops[k].data = self.buf(payload);
        }
    }

    /// A flush for the engine itself (no initiator waits), of this session, not started yet:
    /// the op's key. `Origin::Own` or `Origin::Resync`; `stage` `Confirmed` for a flush of
    /// this replica (`enqueue_apply` starts it; its end reaches `apply_done`, possibly within
    /// that call), `New` for a FLUSH to the peer.
    fn own_flush_op(&mut self, origin: Origin, stage: Stage) -> usize {
        let mut op = Op::new(
            origin,
            Upd::Flush,
            (0, 0),
            false,
            Vec::new(),
            stage,
            Instant::now() + self.cfg.peer_timeout,
        );
        op.session = self.sess.number;
        self.ops.insert(op)
    }

    fn start_apply(&mut self, io: &mut IoCx, a: usize) {
        self.start_apply_from(io, a, None);
    }

    /// Start apply `a`; a write writes `payload` when given, else its op's data.
    fn start_apply_from(&mut self, io: &mut IoCx, a: usize, payload: Option<&[u8]>) {
        let (k, offset, len) = {
            let ap = self.aq.get(a).expect("queued apply");
            (ap.op, ap.offset, ap.len)
        };
        let tag = IoTag::channel(self.vol as u32, a as u32);
        let op = &self.ops[k];
        let r = match op.upd {
            Upd::Write => {
                self.written.set_range(offset, len);
                let data = payload.unwrap_or(&op.data);
                self.inner.write(io, tag, offset, data, op.fua)
            }
            Upd::Zeroes => self.inner.write_zeroes(io, tag, offset, len, op.fua),
            Upd::Unmap => self.inner.unmap(io, tag, offset, len, op.fua),
            Upd::Flush => {
                self.al_flush_started(k);
                self.inner.flush(io, tag)
            }
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
        self.apply_done(io, slot, r, data, true);
    }

    /// An apply finished with `r`: from the local device (`device`: an error there fails the
    /// replica, failed.rs), or decided by the engine (a compare-and-write that writes
    /// nothing).
    pub(super) fn apply_done(
        &mut self,
        io: &mut IoCx,
        slot: usize,
        r: Result<(), Errno>,
        data: &[u8],
        device: bool,
    ) {
        if let Some(ap) = self.aq.get(slot)
            && self.ops.get(ap.op).is_some_and(|op| op.upd == Upd::Caw)
        {
            return self.caw_compared(io, slot, r, data);
        }
        // (Copied before the removal, not returned by it: a load of the removal's result right
        // after its stores stalled 0.5-0.7 µs per write on the Xeon VM, returned as an `Apply`
        // or as `Finished` alike; benches/RESULTS.md, session 7.)
        let Some(ap) = self.aq.finished(slot) else {
            tracing::error!(volume = %self.cfg.name, slot, "mirror: completion for an unknown apply");
            return;
        };
        self.aq.finish(slot);
        if self.leader.apply_done(slot) {
            self.maybe_send_resent();
        }
        let k = ap.op;
        let upd = self.ops[k].upd;
        if upd == Upd::Flush {
            self.al_flush_done(k, r.is_ok());
        }
        // A device error where the peer takes over (`local_failure`): answered as the fence
        // answers what it held (`give_up_held`: unavailable; a compare-and-write EIO).
        let handed_over = device && !self.only_current_copy() && self.cfg.failover.is_some();
        {
            let op = &mut self.ops[k];
            op.applying -= 1;
            if let Err(e) = r {
                let retry_there =
                    handed_over && e != Errno::MISCOMPARE && !op.caw && upd != Upd::ResyncRead;
                op.apply_err = Some(if retry_there { Errno::UNAVAILABLE } else { e });
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
        if ap.session == self.sess.number && ap.seq != 0 && r.is_ok() {
            self.aq.applied.mark(ap.seq);
        }
        if ap.seq != 0 && self.follower.miscompares_waiting() {
            self.release_miscompares();
        }
        if self.ops[k].origin == Origin::Resync {
            if self.ops[k].upd == Upd::ResyncRead {
                // Source: send the region as read (or mark it dirty again if the read failed
                // or the peer left).
                // (A read of an earlier attempt, from an earlier session, is not this one's.)
                if self.ops[k].session == self.sess.number
                    && let Some(rs) = self.resync.as_mut()
                {
                    rs.read_done(ap.offset);
                }
                let this_attempt = self.sess.up && self.ops[k].session == self.sess.number;
                if let (Err(e), true) = (r, this_attempt)
                    && let Some(rs) = self.resync.as_mut()
                {
                    // Kept for a retry; this site, the only whole copy, goes on serving
                    // (what the last pass held goes ahead alone).
                    let held = rs.read_failed(ap.offset, ap.len, Instant::now());
                    self.stats
                        .resync_unreadable_bytes
                        .store(rs.unreadable_bytes(), std::sync::atomic::Ordering::Relaxed);
                    self.local_error_noted("a resync read", ap.offset, ap.len, e);
                    self.go_alone(io, held);
                } else if r.is_ok() && this_attempt {
                    if let Some(rs) = self.resync.as_mut() {
                        rs.read_ok(ap.offset, self.cfg.dirty_granularity);
                    }
                    let h = Header {
                        offset: ap.offset,
                        count: wire::count(ap.len).expect("a resync copy longer than one message"),
                        ..Header::new(Type::Resync)
                    };
                    self.sess.queue(&h, data);
                    self.stats
                        .resync_bytes
                        .fetch_add(ap.len, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.mark_dirty(ap.offset, ap.len);
                }
            } else if self.ops[k].session == self.sess.number {
                // (A copy, or the closing flush, of an earlier attempt, from an earlier
                // session, is not this one's.)
                if upd == Upd::Flush && self.resync.is_some() {
                    self.resync_source_flushed(io, k, r.is_ok());
                } else if upd == Upd::Flush {
                    self.target.flush_done(r.is_ok());
                } else if r.is_ok() {
                    // (A failed copy is never counted: the replica fails below.)
                    self.target.copy_applied();
                }
                self.maybe_end_resync_target(io);
            }
        }
        if let Origin::PeerFlush(id) = self.ops[k].origin
            && self.sess.up
            && self.ops[k].session == self.sess.number
        {
            let payload = r.err().map(|e| e.0.to_le_bytes());
            let h = Header {
                id,
                ..Header::new(Type::FlushDone)
            };
            self.sess.queue(&h, payload.as_ref().map_or(&[][..], |p| p));
        }
        self.start_unblocked(io, &ap);
        self.settle(k);
        if let Err(e) = r
            && device
            && e != Errno::MISCOMPARE
            && upd != Upd::ResyncRead
        {
            // The replica failed (failed.rs): a watermark stopped at this update would stop
            // every later acknowledgement of the volume. (A resync read never fails it: the
            // region waits for a retry, above.)
            let what = match upd {
                Upd::Write | Upd::Caw => "a write",
                Upd::Zeroes => "a write-zeroes",
                Upd::Unmap => "an unmap",
                Upd::Flush => "a flush",
                Upd::ResyncRead => "a resync read",
            };
            self.local_failure(what, ap.offset, ap.len, e);
        }
    }

    /// Start the queued applies that `done` held back.
    fn start_unblocked(&mut self, io: &mut IoCx, done: &apply::Finished) {
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
            } else if local_ok && op.stage.confirmed() {
                Some(Ok(()))
            } else {
                None
            };
            if let Some(result) = result {
                let (from, tag) = self.ops[k].initiator.take().expect("checked");
                self.answer(from, tag, result);
            }
        }
        let op = &self.ops[k];
        let finished = op.applying == 0
            && op.initiator.is_none()
            && match (op.origin, self.role) {
                // The leader keeps data until the follower has it.
                (Origin::Local | Origin::PeerFwd, Role::Leader) => {
                    op.stage.confirmed() || op.upd == Upd::Flush
                }
                _ => true,
            }
            && !op.stage.listed();
        if finished {
            let op = self.ops.remove(k);
            self.recycle(op.data);
        }
    }
}

impl Drop for Engine {
    /// A clean stop: the persisted bitmap is exact. (A replica whose device could not be
    /// flushed keeps its activity log as it was: the stop was not clean.)
    fn drop(&mut self) {
        self.stop_watching();
        self.stop_withdrawn();
        self.stop_sync();
        if self.persist_clean_stop() {
            self.actlog_clean_stop();
        }
    }
}

#[cfg(test)]
mod tests;
