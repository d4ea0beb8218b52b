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
//!
//! A read that finds no read lease while one may come soon is held by the channel it came to
//! and answered at a later turn of the reactor's mirror poller ([`held`]): the home reactor's
//! [`MirrorPoller`], and on every other reactor a [`HeldReadPoller`] that does nothing else
//! (one look at an empty list per turn; dormant while it holds nothing, so it changes
//! neither how long that reactor sleeps nor its loop: [`crate::runtime::Poller::dormant`]).

pub mod alfile;
pub mod engine;
pub mod failover;
pub mod held;
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
use crate::runtime::{AfterWork, Completion, Mailbox, Msg, PollCx, Poller, PollerSource, ReadData};
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
        if reactor != self.home {
            return Some(Box::new(HeldReadPoller {
                vol: self.vol,
                from: reactor as u32,
                done: Vec::new(),
                reads: Vec::new(),
            }));
        }
        Some(Box::new(MirrorPoller {
            vol: self.vol,
            peer: self.peer,
            path: Arc::clone(&self.path),
            peer_path: Arc::clone(&self.peer_path),
            next_tick: Instant::now(),
            last_tick: Instant::now(),
            sleeping: false,
            done: Vec::new(),
            reads: Vec::new(),
            key: Arc::clone(&self.key),
        }))
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
    /// Held reads served this turn with their data (empty between turns).
    reads: Vec<ReadData>,
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
        let mut worked = !e.done.is_empty();
        if worked {
            std::mem::swap(&mut e.done, &mut self.done);
            // Parts of split updates answer their original.
            c.splits.join(&mut self.done);
        }
        if !c.held.is_empty() {
            let e = &mut c.engine;
            let v = held::verdict(e.may_read(Instant::now()), e.may_read_soon());
            let mut read = |io: &mut IoCx, h: &held::Held| {
                held::Outcome::of(e.host_read(io, h.tag, h.offset, h.len), io)
            };
            let to = Answers {
                from: c.reactor,
                done: &mut self.done,
                reads: &mut self.reads,
            };
            worked |= answer_held(&mut c.held, v, &c.stats, cx.io, to, &mut read);
        }
        for (tag, data) in self.reads.drain(..) {
            cx.complete_read(tag, data);
        }
        if !self.done.is_empty() {
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
        let c = channel_of(chans, self.vol)?;
        let held = c.held.deadline();
        Self::sleep_until(&c.engine, now)
            .into_iter()
            .chain(held)
            .min()
    }

    fn after_work(&self, chans: &mut [Box<dyn Channel>], now: Instant) -> AfterWork {
        // The periodic work when due (as before, at the first turn after it), and whatever
        // the engine has for the next poll.
        if now >= self.next_tick {
            return AfterWork::Work;
        }
        match channel_of(chans, self.vol) {
            // (The verdict reads the clock: asked only while reads are held.)
            Some(c) if !c.held.is_empty() && c.held.due(held_verdict(&c.engine), now) => {
                AfterWork::Work
            }
            Some(c) if !c.engine.has_work(now) => {
                let held = c.held.deadline();
                AfterWork::Sleep(
                    Self::sleep_until(&c.engine, now)
                        .into_iter()
                        .chain(held)
                        .min(),
                )
            }
            _ => AfterWork::Work,
        }
    }

    fn busy(&self, chans: &mut [Box<dyn Channel>]) -> bool {
        engine_of(chans, self.vol).is_some_and(|e| e.answering())
    }

    fn abort(&mut self, chans: &mut [Box<dyn Channel>]) {
        if let Some(c) = channel_of(chans, self.vol) {
            c.engine.abort_requests();
            c.held.expire();
        }
    }
}

/// The verdict for the reads held at the home reactor, now.
fn held_verdict(e: &Engine) -> held::Verdict {
    held::verdict(e.may_read(Instant::now()), e.may_read_soon())
}

/// Where a poller's answers to held reads go: completions for reactor `from` (this one), and
/// the data of reads served at once (for [`PollCx::complete_read`]).
struct Answers<'a> {
    from: u32,
    done: &'a mut Vec<Completion>,
    reads: &'a mut Vec<ReadData>,
}

/// Answer what `held` may answer under verdict `v` (taken on a clock read after the reads
/// were held): serve through `read`, refuse with [`Errno::UNAVAILABLE`]; answers go `to`.
/// True when any was answered.
fn answer_held(
    held: &mut held::HeldReads,
    v: held::Verdict,
    stats: &MirrorStats,
    io: &mut IoCx,
    to: Answers<'_>,
    read: &mut dyn FnMut(&mut IoCx, &held::Held) -> held::Outcome,
) -> bool {
    let Answers { from, done, reads } = to;
    let now = Instant::now();
    if !held.due(v, now) {
        return false;
    }
    held.release(v, now, |h, v| match v {
        held::Verdict::Serve => match read(io, h) {
            held::Outcome::Pending => {}
            held::Outcome::Data(d) => reads.push((h.tag, d)),
            held::Outcome::Failed(e) => done.push((from, h.tag, Err(e))),
        },
        _ => {
            stats.inc_shared(&stats.reads_held_refused);
            done.push((from, h.tag, Err(Errno::UNAVAILABLE)));
        }
    });
    true
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
                held: held::HeldReads::new(self.cfg.peer_timeout),
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
            held: held::HeldReads::new(self.cfg.peer_timeout),
            stats: Arc::clone(&self.stats),
        }))
    }
}

/// The home reactor's channel: the engine.
pub struct MirrorChannel {
    engine: Engine,
    reactor: u32,
    /// Updates too long for one message, in parts.
    splits: split::Splits,
    /// Reads held for want of a read lease ([`held`]).
    held: held::HeldReads,
    stats: Arc<MirrorStats>,
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
        // Without a read lease (docs/mirror-protocol.md, "Read lease"): held while one may
        // come soon, else refused (the other site's path may serve it).
        let now = Instant::now();
        match held::verdict(self.engine.may_read(now), self.engine.may_read_soon()) {
            held::Verdict::Serve => self.engine.host_read(io, tag, offset, len),
            held::Verdict::Hold => {
                self.stats.inc_shared(&self.stats.reads_held);
                self.held.hold(tag, offset, len, now);
                ReadStart::Pending
            }
            held::Verdict::Refuse => ReadStart::Failed(Errno::UNAVAILABLE),
        }
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
    /// Reads held for want of a read lease ([`held`]; answered by this reactor's
    /// [`HeldReadPoller`]).
    held: held::HeldReads,
}

/// A host read of the local replica on a reactor other than the volume's home (`inner`: the
/// replica's channel there); a failure is reported to the home engine ([`engine::host_read_failure`]).
fn local_read<'a>(
    inner: &'a mut dyn Channel,
    stats: &MirrorStats,
    io: &mut IoCx,
    tag: IoTag,
    offset: u64,
    len: u32,
) -> ReadStart<'a> {
    match inner.read(io, tag, offset, len) {
        ReadStart::Failed(e) => {
            let only_copy = stats.mode() == Mode::Survivor;
            ReadStart::Failed(engine::host_read_failure(
                stats,
                only_copy,
                offset,
                u64::from(len),
                e,
            ))
        }
        r => r,
    }
}

impl RemoteChannel {
    /// The verdict for a read here now, from what the home reactor's engine published.
    fn verdict(&self) -> held::Verdict {
        // (The mode is looked at only without a lease: a served read costs one load.)
        if self.stats.may_read() {
            return held::Verdict::Serve;
        }
        held::verdict(
            false,
            held::may_come(self.stats.mode(), self.stats.failed()),
        )
    }

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
        // The home reactor's engine publishes its read lease (`MirrorStats::may_read`);
        // without one, held while one may come soon, else refused.
        match self.verdict() {
            held::Verdict::Serve => {}
            held::Verdict::Hold => {
                self.stats.inc_shared(&self.stats.reads_held);
                self.held.hold(tag, offset, len, Instant::now());
                return ReadStart::Pending;
            }
            held::Verdict::Refuse => return ReadStart::Failed(Errno::UNAVAILABLE),
        }
        local_read(&mut *self.inner, &self.stats, io, tag, offset, len)
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

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn lower_box(&mut self) -> Option<&mut Box<dyn Channel>> {
        Some(&mut self.inner)
    }
}

/// A mirrored volume's work on a reactor other than its home: answering the reads its
/// [`RemoteChannel`] held for want of a read lease. It looks at the engine's published
/// lease (`MirrorStats`) every millisecond while it holds any (the lease comes back on the
/// home reactor, not through an event here); with none held, one look at an empty list.
pub struct HeldReadPoller {
    vol: usize,
    /// This reactor.
    from: u32,
    /// Answers of this turn (empty between turns).
    done: Vec<Completion>,
    reads: Vec<ReadData>,
}

/// How often a reactor other than the home looks at its held reads.
const HELD_LOOK: Duration = Duration::from_millis(1);

fn remote_of(chans: &mut [Box<dyn Channel>], vol: usize) -> Option<&mut RemoteChannel> {
    chans
        .get_mut(vol)?
        .as_any_mut()?
        .downcast_mut::<RemoteChannel>()
}

impl Poller for HeldReadPoller {
    fn poll(&mut self, cx: &mut PollCx<'_>) -> bool {
        let Some(c) = remote_of(cx.chans, self.vol) else {
            return false;
        };
        if c.held.is_empty() {
            return false;
        }
        let v = c.verdict();
        let (inner, stats) = (&mut *c.inner, &*c.stats);
        let mut read = |io: &mut IoCx, h: &held::Held| {
            held::Outcome::of(local_read(inner, stats, io, h.tag, h.offset, h.len), io)
        };
        let to = Answers {
            from: self.from,
            done: &mut self.done,
            reads: &mut self.reads,
        };
        let worked = answer_held(&mut c.held, v, &c.stats, cx.io, to, &mut read);
        for (tag, data) in self.reads.drain(..) {
            cx.complete_read(tag, data);
        }
        cx.complete_all(&mut self.done);
        worked
    }

    fn deadline(&self, chans: &mut [Box<dyn Channel>], now: Instant) -> Option<Instant> {
        let c = remote_of(chans, self.vol)?;
        (!c.held.is_empty()).then(|| now + HELD_LOOK)
    }

    fn after_work(&self, chans: &mut [Box<dyn Channel>], now: Instant) -> AfterWork {
        match remote_of(chans, self.vol) {
            Some(c) if !c.held.is_empty() && c.held.due(c.verdict(), now) => AfterWork::Work,
            Some(c) if !c.held.is_empty() => AfterWork::Sleep(Some(now + HELD_LOOK)),
            _ => AfterWork::Sleep(None),
        }
    }

    fn busy(&self, _chans: &mut [Box<dyn Channel>]) -> bool {
        false
    }

    fn dormant(&self, chans: &mut [Box<dyn Channel>]) -> bool {
        // Holding nothing: the reactor sleeps as if this poller were not there (a read held
        // during a turn wakes it before the reactor decides how long to sleep).
        remote_of(chans, self.vol).is_none_or(|c| c.held.is_empty())
    }

    fn abort(&mut self, chans: &mut [Box<dyn Channel>]) {
        if let Some(c) = remote_of(chans, self.vol) {
            c.held.expire();
        }
    }
}
