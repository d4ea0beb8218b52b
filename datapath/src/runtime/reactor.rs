//! Reactors: one pinned thread per configured core, each owning an io_uring, run to completion.
//!
//! One loop turn:
//! 1. reap every CQE and dispatch it (connection receive/send, block-device completion,
//!    accept, wake-up); a connection's read the device failed is first shown to its volume's
//!    channel (`Channel::read_failed`: a layer with another copy answers so the host retries
//!    elsewhere);
//! 2. drain the mailbox (new connections, stop, block requests handed over and their answers,
//!    notes for connections and services);
//! 3. run the layers' pollers, deliver what they completed, start the connections they made;
//! 4. let every connection touched this turn flush its replies (one send per connection per
//!    turn, however many requests completed) and drop connections that are finished;
//! 5. submit every SQE queued during the turn with one `io_uring_enter`, or, when the turn did
//!    no work and the wait policy allows, block in the same call until a completion arrives.
//!
//! Wait policies: `poll` never blocks (lowest latency, a core at 100 %); `interrupt` blocks
//! whenever a turn finds no work; `adaptive` spins for `spin` after the last work, then blocks.
//! A reactor with pollers never sleeps past the earliest poller deadline (nor 10 ms); a poller
//! that is dormant ([`Poller::dormant`]: nothing to do until a connection gives it some)
//! does not count, so a reactor whose pollers all are sleeps as one without pollers. The policy
//! can change while the reactor runs: it reads its [`super::wait::WaitCell`] once per turn.
//!
//! A reactor with pollers (whose every sleep is bounded) also sleeps right after a turn that
//! did work, where the policy would let an idle turn sleep, when no poller has work for the
//! next turn ([`Poller::after_work`]; with one that does not answer, such as CDP's, the loop
//! is as it was); when one has, the turn's SQEs wait for the next turn's enter (at most one
//! turn in a row). Such a
//! sleep counts the *quiet* sends it submits ([`crate::uring::IoCx::push_send_quiet`]: sends
//! whose completion their connection needs for nothing else) as expected completions and
//! wakes for one event beyond them. So under the `interrupt` policy a mirrored write at queue
//! depth 1 costs its leader one turn and one `io_uring_enter` per event (the host's request,
//! the peer's ACK) instead of a submit, a turn for the send's completion, an empty turn and a
//! sleep. (`adaptive` at queue depth 1 spins after work, as before.)
//!
//! Invariants:
//! - Everything a connection owns (socket, buffers, in-flight requests) lives on one reactor;
//!   other threads reach a reactor only through its [`Mailbox`].
//! - A connection is dropped only when it reports `done()`: no SQE of its own in flight and no
//!   block-device operation pending for it. The in-flight table therefore never names a
//!   connection that is gone.
//! - On `Stop`, the reactor stops accepting, asks every connection to finish what it has in
//!   flight and close, and exits only when no connection and no operation is left (or a
//!   deadline passes, after which connections are aborted but in-flight device operations are
//!   still reaped before the ring is dropped).

use super::conn::{Conn, Env};
use super::mailbox::{Msg, NoteTo};
use super::poller::{AfterWork, Completion, PollCx, Poller};
use super::stats::{Counters, ReactorStats, VolCounters};
use super::{Mailbox, Shared};
use crate::bdev::volume::Volume;
use crate::bdev::{BlockRequest, Channel, NoChannel, Start};
use crate::uring::{Errno, IoCx, IoTag, Kind, Owner, UserData};
use io_uring::{cqueue, opcode, types};
use slab::Slab;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use super::wait::WaitPolicy;

/// Ring and pool sizes for one reactor.
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    /// SQ entries.
    pub entries: u32,
    /// Buffers in the registered pool.
    pub bufs: u16,
    /// Bytes per pool buffer.
    pub buf_size: usize,
}

impl Default for RingSizes {
    fn default() -> Self {
        Self {
            entries: 1024,
            bufs: 512,
            buf_size: 128 * 1024,
        }
    }
}

/// How long a stopping reactor waits for connections to finish their in-flight I/O.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A restack waiting for the old stack's work to settle.
type Restacking = (
    usize,
    Box<dyn super::Restack>,
    std::sync::mpsc::SyncSender<Result<(), String>>,
);

struct Entry {
    conn: Box<dyn Conn>,
    dirty: bool,
}

/// One reactor.
pub struct Reactor {
    id: usize,
    io: IoCx,
    chans: Vec<Box<dyn Channel>>,
    /// This reactor's copy of the volume table (same index as `chans`).
    vols: Vec<Option<Arc<Volume>>>,
    /// Channels asked to close, waiting for what they started to finish.
    closing: Vec<(usize, std::sync::mpsc::SyncSender<()>)>,
    /// Restacked channels whose old stack's work has not settled yet (answered when it has).
    restacking: Vec<Restacking>,
    conns: Slab<Entry>,
    dirty: Vec<u32>,
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
    stats: Arc<ReactorStats>,
    counters: Counters,
    vol_counters: Vec<VolCounters>,
    /// One past the highest volume slot this reactor has served: the slots above it hold
    /// zeroes, so each turn publishes only `vol_counters[..vol_hwm]` (not every slot of
    /// `max_volumes`: that was most of a turn's own work).
    vol_hwm: usize,
    policy: WaitPolicy,
    /// The last `reactor_set_wait` request seen in `stats.wait` (0: none yet).
    wait_seen: u64,
    wake_buf: Box<u64>,
    wake_armed: bool,
    accepts_armed: usize,
    next_target: usize,
    stopping: Option<Instant>,
    aborted: bool,
    cqes: Vec<(u64, i32, u32)>,
    /// Layers' pollers running on this reactor.
    pollers: Vec<Box<dyn Poller>>,
    completions: Vec<Completion>,
    /// Reads the pollers served this turn with their data (`PollCx::complete_read`).
    read_data: Vec<super::poller::ReadData>,
    spawned: Vec<Box<dyn Conn>>,
    wakes: Vec<u32>,
    /// Connection keys of the services (index as in `Shared::services`).
    services: Vec<u32>,
    drained: bool,
    pipelining: Pipelining,
    /// The last turn left its SQEs to this turn's enter (`Reactor::nothing_left`).
    deferred: bool,
}

/// Whether the clients of this reactor pipeline their requests (the adaptive policy's signal).
///
/// A client at queue depth 1 sends its next request only after it has the answer to the
/// previous one, so a receive never starts more than one block I/O; the time to its next
/// request is its round trip, and spinning through it saves the wake-up latency the client
/// would otherwise see on every request. A client that keeps several requests in flight sends
/// them back to back, so receives regularly start two or more I/Os; it does not wait for each
/// answer, and a reactor that sleeps between its requests loses it nothing but saves the spin
/// (the CPU per I/O of an otherwise idle-spinning core). The score rises by 16 at a receive
/// that started two or more I/Os and falls by 1 at one that started one, so a mix with at
/// least one pipelined receive in 17 counts as pipelining; a queue-depth-1 client scores 0.
#[derive(Default, Debug, Clone, Copy)]
struct Pipelining {
    score: u32,
}

impl Pipelining {
    const RISE: u32 = 16;
    const MAX: u32 = 1024;

    /// A receive started `ios` block I/Os.
    fn on_receive(&mut self, ios: u64) {
        match ios {
            0 => {}
            1 => self.score = self.score.saturating_sub(1),
            _ => self.score = (self.score + Self::RISE).min(Self::MAX),
        }
    }

    /// The clients pipeline: an idle reactor may sleep at once.
    fn active(&self) -> bool {
        self.score > 0
    }
}

/// Longest sleep of a reactor that runs pollers (their deadlines may shorten it).
const POLLER_MAX_SLEEP: Duration = Duration::from_millis(10);

/// Longest sleep while stopping, so the stop deadline is noticed.
const STOPPING_MAX_SLEEP: Duration = Duration::from_millis(50);

impl Reactor {
    /// Build reactor `id` on the calling thread (its ring must be created there).
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        policy: WaitPolicy,
        sizes: RingSizes,
    ) -> std::io::Result<Self> {
        let cap = shared.volumes.capacity();
        let file_slots = (cap as u32 + 16).max(64);
        let mut io = IoCx::new(sizes.entries, sizes.bufs, sizes.buf_size, file_slots)?;
        io.reactor = id;
        let mut chans: Vec<Box<dyn Channel>> = Vec::with_capacity(cap);
        let mut vols = Vec::with_capacity(cap);
        for i in 0..cap {
            match shared.volumes.get(i) {
                Some(v) => {
                    chans.push(
                        v.device
                            .open_channel(&mut io)
                            .map_err(std::io::Error::other)?,
                    );
                    vols.push(Some(v));
                }
                None => {
                    chans.push(Box::new(NoChannel));
                    vols.push(None);
                }
            }
        }
        let vol_hwm = vols.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        let pollers = shared
            .pollers
            .iter()
            .filter_map(|p| p.poller_for(id))
            .collect();
        Ok(Self {
            id,
            io,
            chans,
            vols,
            closing: Vec::new(),
            restacking: Vec::new(),
            pollers,
            completions: Vec::with_capacity(256),
            read_data: Vec::new(),
            spawned: Vec::new(),
            wakes: Vec::new(),
            services: Vec::new(),
            drained: false,
            pipelining: Pipelining::default(),
            deferred: false,
            conns: Slab::with_capacity(64),
            dirty: Vec::with_capacity(64),
            mailbox: Arc::clone(&shared.mailboxes[id]),
            stats: Arc::clone(&shared.stats[id]),
            vol_counters: vec![VolCounters::default(); cap],
            vol_hwm,
            shared,
            counters: Counters::default(),
            policy,
            wait_seen: 0,
            wake_buf: Box::new(0),
            wake_armed: false,
            accepts_armed: 0,
            next_target: id,
            stopping: None,
            aborted: false,
            cqes: Vec::with_capacity(256),
        })
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::Read::new(
            types::Fd(self.mailbox.eventfd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(UserData::new(Kind::Wake, 0).0);
        // SAFETY: wake_buf is a heap u64 owned by the reactor; the reactor cancels and reaps
        // this read before it drops the buffer (see `drain_and_close`).
        unsafe { self.io.push(&sqe) };
        self.wake_armed = true;
    }

    fn arm_accept(&mut self, listener: usize) {
        let fd = self.shared.listeners[listener].fd.as_raw_fd();
        let sqe = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(UserData::new(Kind::Accept, listener as u32).0);
        // SAFETY: multishot accept references no user memory.
        unsafe { self.io.push(&sqe) };
        self.accepts_armed += 1;
    }

    /// Run until stopped.
    pub fn run(mut self) {
        super::mailbox::enter_reactor();
        self.stats.wait.init(self.policy);
        self.arm_wake();
        if self.id == 0 {
            for l in 0..self.shared.listeners.len() {
                self.arm_accept(l);
            }
        }
        for i in 0..self.shared.services.len() {
            let conn = self.shared.services[i].start_on(self.id);
            let key = self.insert_conn(conn);
            self.services.push(key);
        }
        let mut last_work = Instant::now();
        let mut turn_start = Instant::now();
        loop {
            let worked = self.turn(turn_start);
            if let Some(since) = self.stopping {
                if !self.aborted && since.elapsed() > STOP_DEADLINE {
                    self.abort_all();
                }
                let chans = &mut self.chans;
                let answering = self.pollers.iter().any(|p| p.busy(chans));
                if !self.drained
                    && self.conns.is_empty()
                    && self.io.ops.is_empty()
                    && self.accepts_armed == 0
                    && !answering
                {
                    self.drained = true;
                    self.shared.running.fetch_sub(1, Ordering::SeqCst);
                }
                // A reactor running pollers serves the other reactors' requests until every
                // reactor has drained.
                if self.drained
                    && super::mailbox::held() == 0
                    && (!self.pollers_awake() || self.shared.running.load(Ordering::SeqCst) == 0)
                {
                    break;
                }
            }
            let now = Instant::now();
            let spent = now.duration_since(turn_start).as_nanos() as u64;
            if worked {
                self.counters.busy_ns += spent;
                last_work = now;
            } else {
                self.counters.idle_ns += spent;
            }
            turn_start = now;
            // A wait policy asked for at run time: one relaxed load per turn.
            let wanted = self.stats.wait.wanted();
            if wanted != self.wait_seen {
                self.wait_seen = wanted;
                if let Some(p) = super::wait::decode(wanted) {
                    self.policy = p;
                    self.stats.wait.publish(p);
                }
            }
            // Messages held for a full mailbox are retried every turn, so never sleep on them.
            let may_sleep = super::mailbox::held() == 0
                && match self.policy {
                    WaitPolicy::Poll => false,
                    WaitPolicy::Interrupt => true,
                    // A pipelining client does not wait for each answer: spinning for its
                    // next request buys no latency it would see, so sleep at once.
                    WaitPolicy::Adaptive(spin) => {
                        self.pipelining.active() || now.duration_since(last_work) >= spin
                    }
                };
            let may_block = !worked && may_sleep;
            // After a working turn, sleep at once when the next turn would find nothing
            // (see `nothing_left`); else submit now, or, when a poller has work for the next
            // turn anyway, leave this turn's SQEs to that turn's enter (once in a row, so a
            // poller that always has work never holds them back).
            let (sleep_now, defer, until) = if worked && may_sleep && self.stopping.is_none() {
                match self.nothing_left(now) {
                    Some(AfterWork::Sleep(until)) => (true, false, Some(until)),
                    Some(AfterWork::Work) => (false, !self.deferred, None),
                    Some(AfterWork::Unknown) | None => (false, false, None),
                }
            } else {
                (false, false, None)
            };
            self.deferred = defer;
            let blocked = if defer {
                false
            } else {
                self.submit(
                    may_block
                        || sleep_now
                        || self.stopping.is_some() && !worked && super::mailbox::held() == 0,
                    now,
                    until,
                )
            };
            if blocked {
                // Time spent blocked in the ring is idle time, not part of the next turn.
                let after = Instant::now();
                let slept = after.duration_since(turn_start).as_nanos() as u64;
                self.counters.idle_ns += slept;
                self.counters.sleep_ns += slept;
                turn_start = after;
            }
            self.counters.turns += 1;
            self.counters.sqes = self.io.counters.sqes;
            self.counters.bounces = self.io.counters.bounces;
            self.stats.publish(&self.counters);
            self.stats
                .publish_volumes(&self.vol_counters[..self.vol_hwm]);
        }
        self.drain_and_close();
        self.stats.publish(&self.counters);
        self.stats
            .publish_volumes(&self.vol_counters[..self.vol_hwm]);
    }

    /// After a working turn (not stopping): whether the next turn would find nothing to do
    /// but completions, so the reactor may sleep at once instead of running it
    /// (`AfterWork::Sleep`, with the pollers' earliest deadline), or a poller has work for it
    /// (`AfterWork::Work`). `None`: not known (a poller that does not answer); the reactor
    /// submits and runs the next turn as always. Only a reactor with pollers (whose every
    /// sleep is bounded, at most `POLLER_MAX_SLEEP`) asks its pollers; with none it keeps its
    /// old loop.
    fn nothing_left(&mut self, now: Instant) -> Option<AfterWork> {
        if !self.pollers_awake() || !self.closing.is_empty() || !self.restacking.is_empty() {
            return None;
        }
        let mut until: Option<Instant> = None;
        let mut work = false;
        for p in &self.pollers {
            match p.after_work(&mut self.chans, now) {
                AfterWork::Unknown => return None,
                AfterWork::Work => work = true,
                AfterWork::Sleep(Some(d)) => until = Some(until.map_or(d, |u| u.min(d))),
                AfterWork::Sleep(None) => {}
            }
        }
        Some(if work {
            AfterWork::Work
        } else {
            AfterWork::Sleep(until)
        })
    }

    /// The reactor has a poller that is not dormant ([`Poller::dormant`]): its sleeps are
    /// bounded and it asks its pollers after a working turn. (One call per poller, only
    /// when the reactor is about to sleep.)
    fn pollers_awake(&mut self) -> bool {
        let chans = &mut self.chans;
        self.pollers.iter().any(|p| !p.dormant(chans))
    }

    /// Submit queued SQEs; with `block`, wait for a completion (pollers' deadlines measured
    /// from `now`, the loop's clock reading just before; `until`: their earliest, when the
    /// caller has it already). True when it blocked.
    fn submit(&mut self, block: bool, now: Instant, until: Option<Option<Instant>>) -> bool {
        // With DEFER_TASKRUN, completions wait in the kernel until this thread enters the ring
        // with GETEVENTS; the TASKRUN flag says some are waiting (the crate's submit sets
        // GETEVENTS when it sees the flag).
        let queued = {
            let sq = self.io.ring.submission();
            !sq.is_empty() || sq.taskrun()
        };
        // Quiet sends (`IoCx::push_send_quiet`) submitted by this enter: their completions
        // are expected, not events to wake for.
        let quiet = self.io.take_quiet_sends();
        if block && self.mailbox.prepare_sleep() {
            self.counters.enters += 1;
            let r = if self.stopping.is_some() || self.pollers_awake() {
                // Bounded wait while stopping, so the deadline is noticed, and while pollers
                // have periodic work: never past the earliest poller deadline.
                let mut ns = if self.stopping.is_some() {
                    STOPPING_MAX_SLEEP
                } else {
                    POLLER_MAX_SLEEP
                }
                .as_nanos() as u64;
                let mut bound = |d: Instant| {
                    ns = ns.min(d.saturating_duration_since(now).as_nanos() as u64 + 1_000);
                };
                match until {
                    Some(until) => until.into_iter().for_each(&mut bound),
                    None => {
                        for p in &self.pollers {
                            if let Some(d) = p.deadline(&mut self.chans, now) {
                                bound(d);
                            }
                        }
                    }
                }
                let ts = types::Timespec::new().nsec(ns as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                // Wake for one event beyond the quiet sends' completions (so a send that
                // completes within this very call does not end the sleep at once); only
                // under this bounded wait, and not while stopping. A quiet send that
                // completes later, or fails, is seen at the next event or the timeout.
                let want = if self.stopping.is_none() {
                    1 + quiet
                } else {
                    1
                };
                self.io
                    .ring
                    .submitter()
                    .submit_with_args(want as usize, &args)
            } else {
                self.io.ring.submit_and_wait(1)
            };
            self.mailbox.woke();
            if let Err(e) = r
                && !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY)
                )
            {
                panic!("reactor {}: io_uring_enter failed: {e}", self.id);
            }
            return true;
        }
        if queued {
            self.counters.enters += 1;
            if let Err(e) = self.io.ring.submit()
                && !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY))
            {
                panic!("reactor {}: io_uring_enter failed: {e}", self.id);
            }
        }
        false
    }

    /// One turn, which started at `now` (the loop's last clock reading: pollers get it
    /// instead of reading the clock again); true when it did any work.
    fn turn(&mut self, now: Instant) -> bool {
        let mut worked = false;
        self.cqes.clear();
        for cqe in self.io.ring.completion() {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        if !self.cqes.is_empty() {
            worked = true;
            self.counters.cqes += self.cqes.len() as u64;
            let cqes = std::mem::take(&mut self.cqes);
            for &(ud, res, flags) in &cqes {
                self.dispatch(UserData(ud), res, flags);
            }
            self.cqes = cqes;
        }
        if super::mailbox::flush_held() {
            worked = true;
        }
        while let Some(msg) = self.mailbox.pop() {
            worked = true;
            self.counters.msgs += 1;
            match msg {
                Msg::NewConn { fd, listener } => self.add_conn(fd, listener),
                Msg::Stop => self.begin_stop(),
                Msg::Block(r) => self.on_block_request(r),
                Msg::BlockDone { tag, result, data } => {
                    self.io.recycle_vec(data);
                    self.deliver(tag, result, &[]);
                }
                Msg::Spawn(conn) => {
                    if self.stopping.is_none() {
                        self.insert_conn(conn);
                    }
                }
                Msg::Note { to, note } => self.on_note(to, note),
                Msg::OpenVolume { vol, volume, done } => {
                    let _ = done.send(self.open_volume(vol, volume));
                }
                Msg::CloseVolume { vol, done } => self.closing.push((vol, done)),
                Msg::Restack {
                    vol,
                    volume,
                    how,
                    done,
                } => self.restack(vol, volume, how, done),
                Msg::Disconnect { conn, host_id } => self.disconnect(conn, host_id),
                Msg::Nop => {}
            }
        }
        if !self.closing.is_empty() {
            worked |= self.close_idle_volumes();
        }
        if !self.restacking.is_empty() {
            worked |= self.answer_settled();
        }
        if !self.pollers.is_empty() {
            worked |= self.run_pollers(now);
        }
        if !self.dirty.is_empty() {
            worked = true;
            let mut dirty = std::mem::take(&mut self.dirty);
            for &key in &dirty {
                self.flush_conn(key);
            }
            dirty.clear();
            self.dirty = dirty;
        }
        worked
    }

    fn env(&mut self, key: u32) -> (&mut Entry, Env<'_>) {
        let entry = &mut self.conns[key as usize];
        let env = Env {
            io: &mut self.io,
            chans: &mut self.chans,
            vols: &self.vols,
            shared: &self.shared,
            counters: &mut self.counters,
            vol_counters: &mut self.vol_counters,
            key,
            reactor: self.id,
            stopping: self.stopping.is_some(),
        };
        (entry, env)
    }

    fn mark(&mut self, key: u32) {
        if let Some(e) = self.conns.get_mut(key as usize)
            && !e.dirty
        {
            e.dirty = true;
            self.dirty.push(key);
        }
    }

    fn flush_conn(&mut self, key: u32) {
        if !self.conns.contains(key as usize) {
            return;
        }
        let (entry, mut env) = self.env(key);
        entry.dirty = false;
        entry.conn.flush(&mut env);
        if entry.conn.done() {
            self.conns.remove(key as usize);
            self.counters.conns_closed += 1;
            self.stats.open_conns.store(
                self.conns.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn dispatch(&mut self, ud: UserData, res: i32, flags: u32) {
        match ud.kind() {
            Some(Kind::Wake) => {
                self.wake_armed = false;
                // While stopping the read is not re-armed, so nothing is left to cancel.
                if self.stopping.is_none() {
                    self.arm_wake();
                }
            }
            Some(Kind::Accept) => self.on_accept(ud.index() as usize, res, flags),
            Some(Kind::Recv) | Some(Kind::Send) => {
                let key = ud.index();
                if !self.conns.contains(key as usize) {
                    tracing::error!(
                        reactor = self.id,
                        key,
                        "completion for a connection that is gone"
                    );
                    return;
                }
                let (entry, mut env) = self.env(key);
                if ud.kind() == Some(Kind::Recv) {
                    let before = env.counters.ios;
                    entry.conn.on_recv(&mut env, res);
                    let started = self.counters.ios - before;
                    self.pipelining.on_receive(started);
                } else {
                    entry.conn.on_send(&mut env, res);
                }
                self.mark(key);
            }
            Some(Kind::Bdev) => {
                let Some(fin) = self.io.finish_bdev(ud.index() as usize, res) else {
                    return;
                };
                let key = match fin.tag.owner() {
                    Owner::Conn(key) => key,
                    Owner::Channel(vol) => {
                        // A layer's own operation: its channel takes the data in place.
                        let d = self.io.detach(&fin);
                        if let Some(c) = self.chans.get_mut(vol as usize) {
                            c.on_own_io(&mut self.io, fin.tag.slot, fin.result, d.data());
                        }
                        self.io.reattach(d);
                        return;
                    }
                };
                if let Some(entry) = self.conns.get_mut(key as usize) {
                    let mut result = fin.result;
                    if let Err(e) = result
                        && let Some((offset, len)) = self.io.read_span(fin.key)
                        && let Some(c) = entry
                            .conn
                            .volume_of(fin.tag.slot)
                            .and_then(|v| self.chans.get_mut(v))
                    {
                        // (Error path only.) The volume's layers see the failed read first.
                        result = Err(c.read_failed(offset, len, e));
                    }
                    let data = match fin.read {
                        Some((skip, want)) => self.io.read_data(fin.key, skip, want),
                        None => &[],
                    };
                    entry.conn.on_io(fin.tag.slot, result, data);
                } else {
                    tracing::error!(
                        reactor = self.id,
                        key,
                        "device completion for a connection that is gone"
                    );
                }
                self.io.release(fin.key);
                self.mark(key);
            }
            Some(Kind::Cancel) | Some(Kind::Timer) => {}
            None => tracing::error!(
                reactor = self.id,
                user_data = ud.0,
                "completion with unknown user_data"
            ),
        }
    }

    /// Run every poller, then deliver what they completed, start the connections they made
    /// and wake the ones they named. True when anything happened.
    fn run_pollers(&mut self, now: Instant) -> bool {
        let mut worked = false;
        let stopping = self.stopping.is_some();
        for p in &mut self.pollers {
            let mut cx = PollCx {
                io: &mut self.io,
                chans: &mut self.chans,
                now,
                stopping,
                completions: &mut self.completions,
                reads: &mut self.read_data,
                spawned: &mut self.spawned,
                wakes: &mut self.wakes,
            };
            worked |= p.poll(&mut cx);
        }
        // (Most turns have none of these: each is looked at before it is taken.)
        if !self.spawned.is_empty() {
            let mut spawned = std::mem::take(&mut self.spawned);
            for conn in spawned.drain(..) {
                if self.stopping.is_none() {
                    self.insert_conn(conn);
                }
            }
            self.spawned = spawned;
        }
        if !self.wakes.is_empty() {
            let mut wakes = std::mem::take(&mut self.wakes);
            for key in wakes.drain(..) {
                self.mark(key);
            }
            self.wakes = wakes;
        }
        if !self.completions.is_empty() {
            worked = true;
            let mut done = std::mem::take(&mut self.completions);
            for (from, tag, result) in done.drain(..) {
                self.answer(from, tag, result);
            }
            self.completions = done;
        }
        if !self.read_data.is_empty() {
            worked = true;
            let mut reads = std::mem::take(&mut self.read_data);
            for (tag, data) in reads.drain(..) {
                self.deliver(tag, Ok(()), &data);
                self.io.recycle_vec(data);
            }
            self.read_data = reads;
        }
        worked
    }

    /// Complete a request for its owner (a connection, or a volume's channel: a layer's
    /// request to the layer under it) here or on reactor `from`.
    fn answer(&mut self, from: u32, tag: IoTag, result: Result<(), Errno>) {
        if from as usize == self.id {
            self.deliver(tag, result, &[]);
        } else {
            let data = self.io.spare_vecs.pop().unwrap_or_default();
            self.shared.mailboxes[from as usize].send(Msg::BlockDone { tag, result, data });
        }
    }

    /// Hand a finished request to its owner on this reactor (`data`: what a read produced).
    fn deliver(&mut self, tag: IoTag, result: Result<(), Errno>, data: &[u8]) {
        match tag.owner() {
            Owner::Conn(key) => {
                if let Some(entry) = self.conns.get_mut(key as usize) {
                    entry.conn.on_io(tag.slot, result, data);
                    self.mark(key);
                }
            }
            Owner::Channel(vol) => {
                if let Some(c) = self.chans.get_mut(vol as usize) {
                    c.on_own_io(&mut self.io, tag.slot, result, data);
                }
            }
        }
    }

    /// A block request from another reactor's connection for a volume executed here.
    fn on_block_request(&mut self, mut r: BlockRequest) {
        let started = match self.chans.get_mut(r.vol as usize) {
            Some(c) => c.submit_request(&mut self.io, &mut r),
            None => {
                tracing::error!(
                    reactor = self.id,
                    vol = r.vol,
                    "block request for no volume"
                );
                Start::Done(Err(Errno::IO))
            }
        };
        let data = std::mem::take(&mut r.data);
        self.io.recycle_vec(data);
        if let Start::Done(result) = started {
            self.answer(r.from, r.tag, result);
        }
    }

    /// Open the channel of a volume created at run time in the empty slot `vol`.
    fn open_volume(&mut self, vol: usize, volume: Arc<Volume>) -> Result<(), String> {
        if self.stopping.is_some() {
            return Err("the reactor is stopping".into());
        }
        match self.vols.get(vol) {
            None => return Err(format!("no volume slot {vol}")),
            Some(Some(v)) => return Err(format!("slot {vol} holds volume {:?}", v.name)),
            Some(None) => {}
        }
        let chan = volume
            .device
            .open_channel(&mut self.io)
            .map_err(|e| format!("reactor {}: cannot open the channel: {e}", self.id))?;
        self.chans[vol] = chan;
        self.vols[vol] = Some(volume);
        // The slot's counters start again from zero (a deleted volume may have used it).
        self.vol_counters[vol] = VolCounters::default();
        self.vol_hwm = self.vol_hwm.max(vol + 1);
        Ok(())
    }

    /// Change the stack of the served volume in slot `vol` in place ([`super::Restack`]).
    fn restack(
        &mut self,
        vol: usize,
        volume: Arc<Volume>,
        mut how: Box<dyn super::Restack>,
        done: std::sync::mpsc::SyncSender<Result<(), String>>,
    ) {
        if self.stopping.is_some() {
            let _ = done.send(Err("the reactor is stopping".into()));
            return;
        }
        if !matches!(self.vols.get(vol), Some(Some(_))) {
            let _ = done.send(Err(format!("no volume is served in slot {vol}")));
            return;
        }
        let old = std::mem::replace(&mut self.chans[vol], Box::new(NoChannel));
        match how.restack(&mut self.io, self.id, old) {
            Ok(new) => {
                self.chans[vol] = new;
                self.vols[vol] = Some(volume);
                let chans = &mut self.chans;
                self.pollers.retain(|p| !p.retired(chans));
                if let Some(p) = how.poller(self.id) {
                    self.pollers.push(p);
                }
                self.restacking.push((vol, how, done));
                self.answer_settled();
            }
            Err((old, e)) => {
                self.chans[vol] = old;
                let _ = done.send(Err(format!("reactor {}: {e}", self.id)));
            }
        }
    }

    /// Answer the restacks whose old stack's work has settled. True when one was answered.
    fn answer_settled(&mut self) -> bool {
        let mut answered = false;
        let mut i = 0;
        while i < self.restacking.len() {
            let (vol, how, _) = &mut self.restacking[i];
            let chan = &mut *self.chans[*vol];
            if how.settled(&self.io, chan) {
                let (_, _, done) = self.restacking.swap_remove(i);
                let _ = done.send(Ok(()));
                answered = true;
            } else {
                i += 1;
            }
        }
        answered
    }

    /// Close the channels asked to close once nothing they started is in flight; answer
    /// each. True when one was closed.
    fn close_idle_volumes(&mut self) -> bool {
        let mut closed = false;
        let mut i = 0;
        while i < self.closing.len() {
            let vol = self.closing[i].0;
            let idle = self.chans.get(vol).is_none_or(|c| c.idle(&self.io));
            if !idle {
                i += 1;
                continue;
            }
            let (vol, done) = self.closing.swap_remove(i);
            if vol < self.chans.len() && self.vols[vol].is_some() {
                let mut old = std::mem::replace(&mut self.chans[vol], Box::new(NoChannel));
                old.close(&mut self.io);
                self.vols[vol] = None;
                self.vol_counters[vol] = VolCounters::default();
            }
            let _ = done.send(());
            closed = true;
        }
        closed
    }

    /// Stop connection `key` cleanly if it is still host `host_id`.
    fn disconnect(&mut self, key: u32, host_id: u64) {
        let Some(entry) = self.conns.get(key as usize) else {
            return;
        };
        if entry.conn.host_id() != Some(host_id) {
            return;
        }
        let (entry, mut env) = self.env(key);
        entry.conn.stop(&mut env);
        self.mark(key);
    }

    /// Deliver a note to its connection or service (dropped when that is gone).
    fn on_note(&mut self, to: NoteTo, note: super::Note) {
        let key = match to {
            NoteTo::Conn(k) => k,
            NoteTo::Service(i) => match self.services.get(i as usize) {
                Some(&k) => k,
                None => return,
            },
        };
        if !self.conns.contains(key as usize) {
            return;
        }
        let (entry, mut env) = self.env(key);
        entry.conn.on_note(&mut env, note);
        self.mark(key);
    }

    fn on_accept(&mut self, listener: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accepts_armed -= 1;
            if self.stopping.is_none() {
                self.arm_accept(listener);
            }
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                tracing::warn!(listener, error = %std::io::Error::from_raw_os_error(-res), "accept failed");
            }
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        if self.stopping.is_some() {
            return; // dropped: closes the socket
        }
        let n = self.shared.mailboxes.len();
        let target = self.next_target % n;
        self.next_target = self.next_target.wrapping_add(1);
        if target == self.id {
            self.add_conn(fd, listener);
        } else {
            self.shared.mailboxes[target].send(Msg::NewConn { fd, listener });
        }
    }

    fn add_conn(&mut self, fd: OwnedFd, listener: usize) {
        if self.stopping.is_some() {
            return;
        }
        let conn = self.shared.listeners[listener].acceptor.accept(fd);
        self.insert_conn(conn);
    }

    /// Add a connection to this reactor and start it.
    fn insert_conn(&mut self, conn: Box<dyn Conn>) -> u32 {
        let key = self.conns.insert(Entry { conn, dirty: false }) as u32;
        self.counters.conns_opened += 1;
        self.stats.open_conns.store(
            self.conns.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let (entry, mut env) = self.env(key);
        entry.conn.start(&mut env);
        self.mark(key);
        key
    }

    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        tracing::debug!(reactor = self.id, conns = self.conns.len(), "stopping");
        if self.accepts_armed > 0 {
            for l in 0..self.shared.listeners.len() {
                let sqe = opcode::AsyncCancel::new(UserData::new(Kind::Accept, l as u32).0)
                    .build()
                    .user_data(UserData::new(Kind::Cancel, 0).0);
                // SAFETY: a cancel references no user memory.
                unsafe { self.io.push(&sqe) };
            }
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            let (entry, mut env) = self.env(key);
            entry.conn.stop(&mut env);
            self.mark(key);
        }
    }

    fn abort_all(&mut self) {
        self.aborted = true;
        tracing::warn!(
            reactor = self.id,
            conns = self.conns.len(),
            "stop deadline passed; aborting connections"
        );
        for p in &mut self.pollers {
            p.abort(&mut self.chans);
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            let (entry, mut env) = self.env(key);
            tracing::warn!(key, state = %entry.conn.describe(), "aborting a connection still busy at the deadline");
            entry.conn.abort(&mut env);
            self.mark(key);
        }
    }

    /// Cancel the wake-up read and reap it, so its buffer is not freed under the kernel.
    fn drain_and_close(&mut self) {
        if self.wake_armed {
            let sqe = opcode::AsyncCancel::new(UserData::new(Kind::Wake, 0).0)
                .build()
                .user_data(UserData::new(Kind::Cancel, 0).0);
            // SAFETY: a cancel references no user memory.
            unsafe { self.io.push(&sqe) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.wake_armed && Instant::now() < deadline {
                let _ = self.io.ring.submit_and_wait(1);
                let mut seen = false;
                for cqe in self.io.ring.completion() {
                    if UserData(cqe.user_data()).kind() == Some(Kind::Wake) {
                        seen = true;
                    }
                }
                if seen {
                    self.wake_armed = false;
                }
            }
        }
        tracing::debug!(reactor = self.id, "stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::Pipelining;

    #[test]
    fn a_queue_depth_one_client_never_counts_as_pipelining() {
        let mut p = Pipelining::default();
        for _ in 0..10_000 {
            p.on_receive(1);
            p.on_receive(0);
        }
        assert!(!p.active());
    }

    #[test]
    fn pipelined_receives_switch_spinning_off_until_they_stop() {
        let mut p = Pipelining::default();
        // One receive in ten carries several requests: pipelining.
        for i in 0..1000 {
            p.on_receive(if i % 10 == 0 { 3 } else { 1 });
        }
        assert!(p.active());
        // Back to one request per receive: the score drains and spinning returns.
        for _ in 0..Pipelining::MAX {
            p.on_receive(1);
        }
        assert!(!p.active());
    }
}
