//! The mirror layer: a volume replicated synchronously to a second site.
//!
//! Model: [`MirrorDevice`] wraps the local replica (any [`BlockDevice`]) and is the top of a
//! mirrored volume's stack. Its channel holds the volume's [`engine::Engine`]; reads go straight
//! to the local replica while the site holds a read lease (docs/mirror-protocol.md), every update (write, write-zeroes, unmap, flush) goes through the
//! engine, which completes it only when both sites have it. A compare-and-write is decided by
//! the leader alone (docs/mirror-protocol.md), so it is atomic across the sites. The link ([`link::LinkConn`]) is a
//! reactor connection that carries the engine's messages (docs/mirror-protocol.md).
//!
//! Invariant: a mirrored volume's engine lives on one reactor per site, its *home* (volume
//! index modulo the number of reactors), so the engine needs no lock. On the other reactors
//! the volume's channel ([`RemoteChannel`]) serves reads from the local replica directly and
//! hands every update to the home reactor as a runtime block request
//! ([`crate::bdev::BlockRequest`]), answered with the runtime's `BlockDone`; the byte vectors
//! travel back and forth and are reused, so steady state allocates nothing.
//!
//! The engine's periodic work (timeouts, pings, dialling the leader, held-back ACKs, answers
//! to requests) runs in the volume's [`MirrorPoller`], which [`MirrorDevice`] registers with
//! the runtime as a poller source for the home reactor; the engine's own device operations
//! complete to the channel ([`crate::uring::IoTag::channel`]). The poller also publishes the
//! volume's path state ([`path_state`]) for the front ends.

pub mod alfile;
pub mod engine;
pub mod failover;
pub mod link;
pub mod mode;
pub mod persist;
pub mod ratelimit;
pub mod rollback;
pub mod split;
pub mod state;
pub mod stats;
pub mod switch_request;
pub mod txq;
pub mod wire;

#[cfg(test)]
mod tests;

use crate::bdev::volume::{PathCell, PathState};
use crate::bdev::{
    BdevError, BlockDevice, BlockOp, BlockRequest, Channel, DeviceInfo, LOWER_SLOT, ReadStart,
    Start,
};
use crate::runtime::{AfterWork, Completion, Mailbox, Msg, PollCx, Poller, PollerSource};
use crate::uring::{Errno, IoCx, IoTag};
use engine::{Engine, EngineConfig, Mode, Role, Update};
use stats::MirrorStats;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A mirrored volume's facts for the control plane.
pub struct MirrorInfo {
    /// Volume index.
    pub vol: usize,
    /// Published counters and state.
    pub stats: Arc<MirrorStats>,
    /// This site orders the volume's updates.
    pub leader: bool,
    /// The reactor running the volume's engine.
    pub home: usize,
    /// The volume's group at the witness (its own name when it has none).
    pub group: String,
    /// The group's line to the failover thread (`None` without a witness): the control
    /// socket reads what the witness last said.
    pub failover: Option<Arc<failover::FailoverSlot>>,
}

/// The path state of this site for a mirrored volume: optimised at the volume's leader (and
/// at a survivor), non-optimised at the follower (its writes take a round trip to the leader
/// first), inaccessible while fenced, resyncing or waiting for its peer, and transitioning
/// while mirroring without a read lease (`leased`: `Engine::may_read`): the link was just
/// lost and the witness is being asked, or a session has not granted the lease yet, so this
/// site is about to serve again or to fence. A host told "inaccessible" then gives the path
/// up: Linux's iSCSI initiator marks the port group unavailable and fails every later I/O on
/// it without sending it, so a single-path host lost its disk for good when the other site
/// died (`iscsi_alua::linux_iscsi_initiator_carries_on_at_site_b_when_site_a_is_killed`).
pub fn path_state(mode: Mode, role: Role, leased: bool) -> PathState {
    match (mode, role) {
        (Mode::Mirroring, _) if !leased => PathState::Transitioning,
        (Mode::Survivor, _) | (Mode::Mirroring, Role::Leader) => PathState::Optimized,
        (Mode::Mirroring, Role::Follower) => PathState::NonOptimized,
        (Mode::Fenced | Mode::Resyncing | Mode::Waiting, _) => PathState::Inaccessible,
    }
}

/// The other site's path state as this site knows it from its own mode: with a session up
/// and mirroring, [`path_state`] of the peer's role (the leader optimised, the follower
/// non-optimised); while this site serves alone (a survivor), inaccessible (the peer holds no
/// grant); while this site is resynced, optimised (the peer is the survivor); otherwise
/// (fenced, waiting, a link just lost) not known: transitioning.
pub fn peer_path_state(mode: Mode, role: Role, session_up: bool) -> PathState {
    let peer_role = match role {
        Role::Leader => Role::Follower,
        Role::Follower => Role::Leader,
    };
    match mode {
        Mode::Mirroring if session_up => path_state(Mode::Mirroring, peer_role, true),
        Mode::Survivor => PathState::Inaccessible,
        Mode::Resyncing => PathState::Optimized,
        Mode::Mirroring | Mode::Fenced | Mode::Waiting => PathState::Transitioning,
    }
}

/// How often an engine gets its periodic work (timeouts, pings, dialling).
const TICK: Duration = Duration::from_millis(5);

/// A mirrored volume's top layer.
pub struct MirrorDevice {
    /// The local replica's device (a lock: a layer inserted under the mirror at run time
    /// changes it; read when a channel opens and for the stack's facts, never per I/O).
    inner: std::sync::RwLock<Arc<dyn BlockDevice>>,
    cfg: EngineConfig,
    vol: usize,
    /// The reactor that runs this volume's engine.
    pub home: usize,
    /// Every reactor's mailbox (set once the reactors' mailboxes exist).
    pub mailboxes: OnceLock<Vec<Arc<Mailbox>>>,
    /// The leader's replication address (the follower dials it).
    pub peer: SocketAddr,
    /// Published counters.
    pub stats: Arc<MirrorStats>,
    /// The volume's replicated metadata (set once the front ends exist).
    pub meta: OnceLock<Arc<dyn engine::MetaHandler>>,
    /// The volume's path state, published by the poller.
    pub path: Arc<PathCell>,
    /// The other site's path state as this site knows it, published by the poller
    /// ([`engine::Engine::peer_path_state`]).
    pub peer_path: Arc<PathCell>,
    /// The daemon's replica-state persister (set before the channels open; none: the engine
    /// starts its own when it has a state file).
    pub persister: OnceLock<Arc<persist::Persister>>,
    /// The sites' shared key: the link's handshake proves both ends hold it.
    key: Arc<twinblk_witness::Key>,
}

impl MirrorDevice {
    /// Mirror `inner` (volume index `vol`) with the peer at `peer`; links authenticate with
    /// `key`.
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        cfg: EngineConfig,
        vol: usize,
        home: usize,
        peer: SocketAddr,
        key: Arc<twinblk_witness::Key>,
    ) -> Self {
        Self {
            inner: std::sync::RwLock::new(inner),
            cfg,
            vol,
            home,
            mailboxes: OnceLock::new(),
            peer,
            stats: Arc::new(MirrorStats::default()),
            meta: OnceLock::new(),
            // Nothing is served before the engine has decided its mode.
            path: Arc::new(PathCell::new(PathState::Inaccessible)),
            peer_path: Arc::new(PathCell::new(PathState::Transitioning)),
            persister: OnceLock::new(),
            key,
        }
    }
}

impl MirrorDevice {
    /// The device under the mirror now.
    fn lower_device(&self) -> Arc<dyn BlockDevice> {
        Arc::clone(&self.inner.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl PollerSource for MirrorDevice {
    fn poller_for(&self, reactor: usize) -> Option<Box<dyn Poller>> {
        (reactor == self.home).then(|| {
            Box::new(MirrorPoller {
                vol: self.vol,
                peer: self.peer,
                path: Arc::clone(&self.path),
                peer_path: Arc::clone(&self.peer_path),
                next_tick: Instant::now(),
                last_tick: Instant::now(),
                sleeping: false,
                done: Vec::new(),
                key: Arc::clone(&self.key),
            }) as Box<dyn Poller>
        })
    }
}

/// The engine of `chans[vol]`, when that is a mirrored volume's home channel.
pub fn engine_of(chans: &mut [Box<dyn Channel>], vol: usize) -> Option<&mut Engine> {
    channel_of(chans, vol).map(|c| &mut c.engine)
}

fn channel_of(chans: &mut [Box<dyn Channel>], vol: usize) -> Option<&mut MirrorChannel> {
    chans
        .get_mut(vol)?
        .as_any_mut()?
        .downcast_mut::<MirrorChannel>()
}

/// A mirrored volume's work on its home reactor: the engine's periodic work, dialling the
/// leader, waking the link, answering finished requests and publishing the path state.
pub struct MirrorPoller {
    vol: usize,
    peer: SocketAddr,
    path: Arc<PathCell>,
    peer_path: Arc<PathCell>,
    next_tick: Instant,
    /// When the engine's periodic work last ran.
    last_tick: Instant,
    /// `next_tick` is past the normal rate (`last_tick + TICK`): the engine was quiet.
    sleeping: bool,
    /// The engine's finished requests of this turn, swapped out of it (empty between turns;
    /// swapped rather than taken so both vectors keep their capacity).
    done: Vec<Completion>,
    key: Arc<twinblk_witness::Key>,
}

impl MirrorPoller {
    /// The poller's deadline ([`Poller::deadline`]) for engine `e`.
    fn sleep_until(e: &Engine, now: Instant) -> Option<Instant> {
        // (An update waiting for the activity log's write is looked at again soon.)
        let soon = e.ack_deadline().into_iter().chain(e.actlog_deadline(now));
        soon.min()
    }

    /// Dial the peer (the follower's side of the link), off the common path.
    #[cold]
    fn dial(&self, cx: &mut PollCx<'_>) {
        match link::LinkConn::dial(self.peer, self.vol, Arc::clone(&self.key)) {
            Ok(l) => cx.spawn(Box::new(l)),
            Err(err) => tracing::warn!(%err, "mirror: cannot create a socket"),
        }
    }
}

impl Poller for MirrorPoller {
    fn poll(&mut self, cx: &mut PollCx<'_>) -> bool {
        let now = cx.now;
        let stopping = cx.stopping;
        let Some(c) = channel_of(cx.chans, self.vol) else {
            return false;
        };
        let e = &mut c.engine;
        if self.sleeping && !e.quiet() {
            // Busy again (a request, a lost link): back to the normal rate.
            self.next_tick = self.last_tick + TICK;
            self.sleeping = false;
        }
        let tick = now >= self.next_tick;
        if stopping {
            e.begin_drain();
        }
        // Answers that waited for a durable replica state, or the fail-stop; the activity
        // log's write and the updates that waited for it.
        e.poll_durable();
        e.poll_actlog(cx.io);
        // A layer below that keeps the replica's history (CDP) learns every turn whether the
        // replica is the volume (while stopping too: a stop may outlast the read lease).
        let v = e.vouch(now);
        e.inner().vouch(cx.io, v);
        // Timeouts and pings run while stopping too; only dialling stops.
        let dial = tick && e.tick(cx.io, now) && !stopping;
        if tick {
            self.last_tick = now;
            // A quiet engine sleeps until its next PING, heartbeat check or lease end.
            self.next_tick = e.quiet_until(now).map_or(now + TICK, |t| t.max(now + TICK));
            self.sleeping = self.next_tick > now + TICK;
        }
        let state = e.path_state(now);
        let peer_state = e.peer_path_state();
        let kick = e.wants_send(now) || e.kill_link.is_some() || (stopping && e.idle());
        let link = e.link_key;
        let worked = !e.done.is_empty();
        if worked {
            std::mem::swap(&mut e.done, &mut self.done);
            // Parts of split updates answer their original.
            c.splits.join(&mut self.done);
            cx.complete_all(&mut self.done);
        }
        if self.path.set(state) {
            tracing::info!(volume = self.vol, ?state, "mirror: path state set");
        }
        self.peer_path.set(peer_state);
        if let Some(k) = link
            && kick
        {
            cx.wake(k);
        }
        if dial {
            self.dial(cx);
        }
        worked
    }

    fn deadline(&self, chans: &mut [Box<dyn Channel>], now: Instant) -> Option<Instant> {
        // Only what must not wait for the reactor's longest sleep: a held-back ACK, an update
        // waiting for the activity log. The periodic work (`next_tick`: pings, heartbeat
        // timeouts, dialling) runs at the next turn after it falls due, at most the reactor's
        // longest sleep (10 ms) late, as before the reshaping. Giving `next_tick` here made
        // every wait's timeout fall anywhere in (0, 5 ms] instead of 10 ms, and that alone
        // cost 7 µs of server CPU per mirrored write at QD1 on the Xeon VM (45.0 against 37.8
        // µs, same number of timer starts and wakeups per write: benches/RESULTS.md, session 7).
        Self::sleep_until(engine_of(chans, self.vol)?, now)
    }

    fn after_work(&self, chans: &mut [Box<dyn Channel>], now: Instant) -> AfterWork {
        // The periodic work when due (as before, at the first turn after it), and whatever
        // the engine has for the next poll.
        if now >= self.next_tick {
            return AfterWork::Work;
        }
        match engine_of(chans, self.vol) {
            Some(e) if !e.has_work(now) => AfterWork::Sleep(Self::sleep_until(e, now)),
            _ => AfterWork::Work,
        }
    }

    fn busy(&self, chans: &mut [Box<dyn Channel>]) -> bool {
        engine_of(chans, self.vol).is_some_and(|e| e.answering())
    }

    fn abort(&mut self, chans: &mut [Box<dyn Channel>]) {
        if let Some(e) = engine_of(chans, self.vol) {
            e.abort_requests();
        }
    }
}

impl BlockDevice for MirrorDevice {
    fn info(&self) -> DeviceInfo {
        let mut i = self.lower_device().info();
        i.kind = format!("mirror>{}", i.kind);
        // The wire carries whole blocks only: initiators are told so (a RAM replica alone
        // takes any alignment).
        i.min_io = i.min_io.max(self.cfg.block);
        i
    }

    fn lower(&self) -> Option<Arc<dyn BlockDevice>> {
        Some(self.lower_device())
    }

    fn set_lower(&self, dev: Arc<dyn BlockDevice>) -> bool {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = dev;
        true
    }

    fn open_channel(&self, io: &mut IoCx) -> Result<Box<dyn Channel>, BdevError> {
        let inner = self.lower_device().open_channel(io)?;
        if io.reactor != self.home {
            let home = self
                .mailboxes
                .get()
                .and_then(|m| m.get(self.home))
                .cloned()
                .ok_or_else(|| {
                    BdevError::Register(std::io::Error::other("mirror: reactor mailboxes not set"))
                })?;
            return Ok(Box::new(RemoteChannel {
                inner,
                stats: Arc::clone(&self.stats),
                home,
                vol: self.vol as u32,
                from: io.reactor as u32,
            }));
        }
        let mut cfg = self.cfg.clone();
        cfg.meta = self.meta.get().cloned();
        let mut engine = Engine::new(cfg, inner, self.vol, Arc::clone(&self.stats));
        if let Some(p) = self.persister.get() {
            engine.set_persister(Arc::clone(p));
        }
        engine
            .restore()
            .map_err(|e| BdevError::Register(std::io::Error::other(e)))?;
        Ok(Box::new(MirrorChannel {
            reactor: io.reactor as u32,
            engine,
            splits: split::Splits::default(),
        }))
    }
}

/// The home reactor's channel: the engine.
pub struct MirrorChannel {
    engine: Engine,
    reactor: u32,
    /// Updates too long for one message, in parts.
    splits: split::Splits,
}

impl MirrorChannel {
    fn submit(
        &mut self,
        io: &mut IoCx,
        from: u32,
        tag: IoTag,
        update: Update<'_>,
        offset: u64,
        fua: bool,
    ) -> Start {
        self.splits
            .submit(&mut self.engine, io, from, tag, update, offset, fua)
    }
}

impl Channel for MirrorChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        // Refused without a read lease (docs/mirror-protocol.md, "Read lease"): the other
        // site's path may serve it.
        if !self.engine.may_read(Instant::now()) {
            return ReadStart::Failed(Errno::UNAVAILABLE);
        }
        self.engine.host_read(io, tag, offset, len)
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        let from = self.reactor;
        self.submit(io, from, tag, Update::Write(data), offset, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        let from = self.reactor;
        self.submit(io, from, tag, Update::Flush, 0, false)
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        let from = self.reactor;
        self.submit(io, from, tag, Update::Zeroes(len), offset, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        let from = self.reactor;
        self.submit(io, from, tag, Update::Unmap(len), offset, fua)
    }

    fn compare_and_write(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        cmp: &[u8],
        data: &[u8],
        fua: bool,
    ) -> Option<Start> {
        Some(self.engine.submit(
            io,
            self.reactor,
            tag,
            Update::CompareWrite { cmp, data },
            offset,
            fua,
        ))
    }

    fn meta(&mut self, io: &mut IoCx, tag: IoTag, cmd: &[u8]) -> Option<Start> {
        Some(
            self.engine
                .submit(io, self.reactor, tag, Update::Meta(cmd), 0, false),
        )
    }

    fn submit_request(&mut self, io: &mut IoCx, r: &mut BlockRequest) -> Start {
        let update = match r.op {
            BlockOp::Write if r.data.len() <= split::MAX_WRITE => {
                // The data moved here with the request: the update takes it over (no copy).
                // A spare vector goes back in its place, for the answer to carry home.
                return self.engine.submit_write_owned(
                    io,
                    r.from,
                    r.tag,
                    &mut r.data,
                    r.offset,
                    r.fua,
                );
            }
            // Too long for one message: split (and copied) like a local one.
            BlockOp::Write => Update::Write(&r.data),
            BlockOp::Zeroes => Update::Zeroes(r.len),
            BlockOp::Unmap => Update::Unmap(r.len),
            BlockOp::Flush => Update::Flush,
            BlockOp::Meta => Update::Meta(&r.data),
        };
        self.submit(io, r.from, r.tag, update, r.offset, r.fua)
    }

    fn read_failed(&mut self, offset: u64, len: u64, e: Errno) -> Errno {
        self.engine.host_read_failed(offset, len, e)
    }

    fn on_own_io(&mut self, io: &mut IoCx, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        if slot & LOWER_SLOT != 0 {
            // A layer under the mirror (CDP) made it.
            return self.engine.inner().on_own_io(io, slot, result, data);
        }
        self.engine.apply_finished(io, slot as usize, result, data);
    }

    fn lower_box(&mut self) -> Option<&mut Box<dyn Channel>> {
        Some(self.engine.inner_box())
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

/// A mirrored volume's channel on a reactor other than its home.
pub struct RemoteChannel {
    inner: Box<dyn Channel>,
    stats: Arc<MirrorStats>,
    home: Arc<Mailbox>,
    vol: u32,
    from: u32,
}

impl RemoteChannel {
    fn hand_over(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        update: Update<'_>,
        offset: u64,
        fua: bool,
    ) -> Start {
        let mut data = io.spare_vecs.pop().unwrap_or_default();
        data.clear();
        let (op, len) = match update {
            Update::Write(d) => {
                data.extend_from_slice(d);
                (BlockOp::Write, d.len() as u64)
            }
            Update::Zeroes(len) => (BlockOp::Zeroes, len),
            Update::Unmap(len) => (BlockOp::Unmap, len),
            Update::Flush => (BlockOp::Flush, 0),
            Update::Meta(cmd) => {
                data.extend_from_slice(cmd);
                (BlockOp::Meta, 0)
            }
            // Never handed over: the NVMe atomic section runs on the home reactor.
            Update::CompareWrite { .. } => {
                io.recycle_vec(data);
                return Start::Done(Err(Errno::NOTSUP));
            }
        };
        self.home.send(Msg::Block(BlockRequest {
            vol: self.vol,
            from: self.from,
            tag,
            op,
            offset,
            len,
            fua,
            data,
        }));
        Start::Pending
    }
}

impl Channel for RemoteChannel {
    fn read(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        // The home reactor's engine publishes its read lease (`MirrorStats::may_read`).
        if !self.stats.may_read() {
            return ReadStart::Failed(Errno::UNAVAILABLE);
        }
        match self.inner.read(io, tag, offset, len) {
            ReadStart::Failed(e) => {
                let only_copy = self.stats.mode() == Mode::Survivor;
                ReadStart::Failed(engine::host_read_failure(
                    &self.stats,
                    only_copy,
                    offset,
                    u64::from(len),
                    e,
                ))
            }
            r => r,
        }
    }

    fn write(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], fua: bool) -> Start {
        self.hand_over(io, tag, Update::Write(data), offset, fua)
    }

    fn flush(&mut self, io: &mut IoCx, tag: IoTag) -> Start {
        self.hand_over(io, tag, Update::Flush, 0, false)
    }

    fn write_zeroes(
        &mut self,
        io: &mut IoCx,
        tag: IoTag,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Start {
        self.hand_over(io, tag, Update::Zeroes(len), offset, fua)
    }

    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, offset: u64, len: u64, fua: bool) -> Start {
        self.hand_over(io, tag, Update::Unmap(len), offset, fua)
    }

    fn meta(&mut self, io: &mut IoCx, tag: IoTag, cmd: &[u8]) -> Option<Start> {
        Some(self.hand_over(io, tag, Update::Meta(cmd), 0, false))
    }

    fn read_failed(&mut self, offset: u64, len: u64, e: Errno) -> Errno {
        // As one refused at once (`read`).
        let only_copy = self.stats.mode() == Mode::Survivor;
        engine::host_read_failure(&self.stats, only_copy, offset, len, e)
    }

    fn on_own_io(&mut self, io: &mut IoCx, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        // Only a layer under the mirror issues I/O here.
        self.inner.on_own_io(io, slot, result, data);
    }

    fn lower_box(&mut self) -> Option<&mut Box<dyn Channel>> {
        Some(&mut self.inner)
    }
}
