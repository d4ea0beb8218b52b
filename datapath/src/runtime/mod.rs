//! Reactors: one pinned thread per configured core, each owning an io_uring, run to completion.
//!
//! One loop turn:
//! 1. reap every CQE and dispatch it (connection receive/send, block-device completion,
//!    accept, wake-up);
//! 2. drain the mailbox (new connections from the acceptor, stop);
//! 3. let every connection touched this turn flush its replies (one send per connection per
//!    turn, however many requests completed) and drop connections that are finished;
//! 4. submit every SQE queued during the turn with one `io_uring_enter`, or, when the turn did
//!    no work and the wait policy allows, block in the same call until a completion arrives.
//!
//! Wait policies: `poll` never blocks (lowest latency, a core at 100 %); `interrupt` blocks
//! whenever a turn finds no work; `adaptive` spins for `spin` after the last work, then blocks.
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

pub mod mailbox;
pub mod stats;

use crate::bdev::Channel;
use crate::bdev::volume::PathState;
use crate::frontend::{self, Shared};
use crate::layer::mirror::engine::LAYER_KEY_BASE;
use crate::uring::{Errno, IoCx, IoTag, Kind, UserData};
use io_uring::{cqueue, opcode, types};
pub use mailbox::{Mailbox, Msg};
use slab::Slab;
pub use stats::{Counters, ReactorStats, VolCounters};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How a reactor waits when it has no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Never block.
    Poll,
    /// Spin this long after the last work, then block.
    Adaptive(Duration),
    /// Block as soon as a turn finds no work.
    Interrupt,
}

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

/// What a connection may touch while it handles an event.
pub struct Env<'a> {
    /// The reactor's ring, pool and in-flight table.
    pub io: &'a mut IoCx,
    /// This reactor's channel to every volume (index = volume index).
    pub chans: &'a mut [Box<dyn Channel>],
    /// Daemon-wide read-only state.
    pub shared: &'a Shared,
    /// This reactor's counters.
    pub counters: &'a mut Counters,
    /// This reactor's per-volume counters (index = volume index).
    pub vol_counters: &'a mut [VolCounters],
    /// The connection's key (for user_data and I/O tags).
    pub key: u32,
    /// The reactor is stopping: take no new requests.
    pub stopping: bool,
}

/// A front-end connection driven by the reactor.
pub trait Conn {
    /// Called once on the owning reactor: queue the first receive/send.
    fn start(&mut self, env: &mut Env<'_>);
    /// The receive queued under this connection's key completed.
    fn on_recv(&mut self, env: &mut Env<'_>, res: i32);
    /// The send queued under this connection's key completed.
    fn on_send(&mut self, env: &mut Env<'_>, res: i32);
    /// A block-device operation finished; `data` holds read data (empty otherwise).
    fn on_io(&mut self, slot: u32, result: Result<(), Errno>, data: &[u8]);
    /// End of a turn in which this connection had events: send what is ready, re-arm.
    fn flush(&mut self, env: &mut Env<'_>);
    /// Server shutdown: finish in-flight requests, take no more, then close.
    fn stop(&mut self, env: &mut Env<'_>);
    /// Shutdown deadline passed: cancel socket I/O and close as soon as device I/O drains.
    fn abort(&mut self, env: &mut Env<'_>);
    /// Nothing of this connection is in flight and it is closed.
    fn done(&self) -> bool;
    /// A one-line account of what the connection still waits for (logged when it is aborted).
    fn describe(&self) -> String {
        String::new()
    }
    /// A message from another reactor (or this one) addressed to this connection.
    fn on_note(&mut self, _env: &mut Env<'_>, _note: crate::frontend::nvmf::Note) {}
}

struct Entry {
    conn: Box<dyn Conn>,
    dirty: bool,
}

/// One reactor.
pub struct Reactor {
    id: usize,
    io: IoCx,
    chans: Vec<Box<dyn Channel>>,
    conns: Slab<Entry>,
    dirty: Vec<u32>,
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
    stats: Arc<ReactorStats>,
    counters: Counters,
    vol_counters: Vec<VolCounters>,
    policy: WaitPolicy,
    wake_buf: Box<u64>,
    wake_armed: bool,
    accepts_armed: usize,
    next_target: usize,
    stopping: Option<Instant>,
    aborted: bool,
    cqes: Vec<(u64, i32, u32)>,
    /// Volumes whose mirror engine lives on this reactor.
    mirrors: Vec<usize>,
    next_tick: Instant,
    mirror_done: Vec<(u32, IoTag, Result<(), Errno>)>,
    /// Key of this reactor's NVMe-oF atomic-section executor, once created.
    nvmf_home: Option<u32>,
    drained: bool,
    /// The path state last published for each mirrored volume (index as in `mirrors`).
    announced: Vec<Option<PathState>>,
}

/// How this site serves a mirrored volume (front ends map it to NVMe ANA): optimised at the
/// volume's leader (and at a survivor), non-optimised at the follower (its writes take a round
/// trip to the leader first), inaccessible while fenced, resyncing or waiting for its peer.
fn path_state(
    mode: crate::layer::mirror::engine::Mode,
    role: crate::layer::mirror::engine::Role,
) -> PathState {
    use crate::layer::mirror::engine::{Mode, Role};
    match (mode, role) {
        (Mode::Survivor, _) | (Mode::Mirroring, Role::Leader) => PathState::Optimized,
        (Mode::Mirroring, Role::Follower) => PathState::NonOptimized,
        (Mode::Fenced | Mode::Resyncing | Mode::Waiting, _) => PathState::Inaccessible,
    }
}

/// How often mirror engines get their periodic work (timeouts, pings, dialling).
const MIRROR_TICK: Duration = Duration::from_millis(5);

impl Reactor {
    /// Build reactor `id` on the calling thread (its ring must be created there).
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        policy: WaitPolicy,
        sizes: RingSizes,
    ) -> std::io::Result<Self> {
        let file_slots = (shared.volumes.len() as u32 + 16).max(64);
        let mut io = IoCx::new(sizes.entries, sizes.bufs, sizes.buf_size, file_slots)?;
        io.reactor = id;
        let mut chans = Vec::with_capacity(shared.volumes.len());
        for v in &shared.volumes {
            chans.push(
                v.device
                    .open_channel(&mut io)
                    .map_err(std::io::Error::other)?,
            );
        }
        let mirrors: Vec<usize> = (0..chans.len())
            .filter(|&i| chans[i].mirror().is_some())
            .collect();
        let n_mirrors = mirrors.len();
        Ok(Self {
            id,
            io,
            chans,
            mirrors,
            next_tick: Instant::now(),
            mirror_done: Vec::with_capacity(256),
            drained: false,
            announced: vec![None; n_mirrors],
            conns: Slab::with_capacity(64),
            dirty: Vec::with_capacity(64),
            mailbox: Arc::clone(&shared.mailboxes[id]),
            stats: Arc::clone(&shared.stats[id]),
            vol_counters: vec![VolCounters::default(); shared.volumes.len()],
            shared,
            counters: Counters::default(),
            policy,
            wake_buf: Box::new(0),
            wake_armed: false,
            accepts_armed: 0,
            next_target: id,
            stopping: None,
            aborted: false,
            cqes: Vec::with_capacity(256),
            nvmf_home: None,
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
        self.arm_wake();
        if self.id == 0 {
            for l in 0..self.shared.listeners.len() {
                self.arm_accept(l);
            }
        }
        let mut last_work = Instant::now();
        let mut turn_start = Instant::now();
        loop {
            let worked = self.turn();
            if let Some(since) = self.stopping {
                if !self.aborted && since.elapsed() > STOP_DEADLINE {
                    self.abort_all();
                }
                let answering = self
                    .mirrors
                    .iter()
                    .any(|&v| self.chans[v].mirror().is_some_and(|(e, _)| e.answering()));
                if !self.drained
                    && self.conns.is_empty()
                    && self.io.ops.is_empty()
                    && self.accepts_armed == 0
                    && !answering
                {
                    self.drained = true;
                    self.shared.running.fetch_sub(1, Ordering::SeqCst);
                }
                // A reactor running mirror engines serves the other reactors' requests until
                // every reactor has drained.
                if self.drained
                    && (self.mirrors.is_empty() || self.shared.running.load(Ordering::SeqCst) == 0)
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
            let may_block = !worked
                && match self.policy {
                    WaitPolicy::Poll => false,
                    WaitPolicy::Interrupt => true,
                    WaitPolicy::Adaptive(spin) => now.duration_since(last_work) >= spin,
                };
            let blocked = self.submit(may_block || self.stopping.is_some() && !worked);
            if blocked {
                // Time spent blocked in the ring is idle time, not part of the next turn.
                let after = Instant::now();
                self.counters.idle_ns += after.duration_since(turn_start).as_nanos() as u64;
                turn_start = after;
            }
            self.counters.turns += 1;
            self.counters.sqes = self.io.counters.sqes;
            self.counters.bounces = self.io.counters.bounces;
            self.stats.publish(&self.counters);
            self.stats.publish_volumes(&self.vol_counters);
        }
        self.drain_and_close();
        self.stats.publish(&self.counters);
        self.stats.publish_volumes(&self.vol_counters);
    }

    /// Submit queued SQEs; with `block`, wait for a completion. True when it blocked.
    fn submit(&mut self, block: bool) -> bool {
        // With DEFER_TASKRUN, completions wait in the kernel until this thread enters the ring
        // with GETEVENTS; the TASKRUN flag says some are waiting (the crate's submit sets
        // GETEVENTS when it sees the flag).
        let queued = {
            let sq = self.io.ring.submission();
            !sq.is_empty() || sq.taskrun()
        };
        if block && self.mailbox.prepare_sleep() {
            self.counters.enters += 1;
            let r = if self.stopping.is_some() || !self.mirrors.is_empty() {
                // Bounded wait while stopping, so the deadline is noticed, and while mirror
                // engines need their periodic work.
                let mut ns: u64 = if self.stopping.is_some() {
                    50_000_000
                } else {
                    10_000_000
                };
                // A held-back mirror ACK must not wait for the next message.
                let now = Instant::now();
                for &v in &self.mirrors {
                    if let Some(d) = self.chans[v].mirror().and_then(|(e, _)| e.ack_deadline()) {
                        ns = ns.min(d.saturating_duration_since(now).as_nanos() as u64 + 1_000);
                    }
                }
                let ts = types::Timespec::new().nsec(ns as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.io.ring.submitter().submit_with_args(1, &args)
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

    /// One turn; true when it did any work.
    fn turn(&mut self) -> bool {
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
        while let Some(msg) = self.mailbox.pop() {
            worked = true;
            self.counters.msgs += 1;
            match msg {
                Msg::NewConn { fd, listener } => self.add_conn(fd, listener),
                Msg::Stop => self.begin_stop(),
                Msg::MirrorIo(r) => self.on_mirror_io(r),
                Msg::MirrorDone { tag, result, data } => {
                    if data.capacity() > 0 && self.io.spare_vecs.len() < 4096 {
                        self.io.spare_vecs.push(data);
                    }
                    if let Some(entry) = self.conns.get_mut(tag.conn as usize) {
                        entry.conn.on_io(tag.slot, result, &[]);
                        self.mark(tag.conn);
                    }
                }
                Msg::AdoptLink { fd, hello } => {
                    if self.stopping.is_none() {
                        let l = crate::layer::mirror::link::LinkConn::adopted(fd, &hello);
                        self.insert_conn(Box::new(l));
                    }
                }
                Msg::Nvmf(n) => self.on_nvmf(n),
                Msg::Nop => {}
            }
        }
        if !self.mirrors.is_empty() {
            worked |= self.service_mirrors();
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
            shared: &self.shared,
            counters: &mut self.counters,
            vol_counters: &mut self.vol_counters,
            key,
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
                    entry.conn.on_recv(&mut env, res);
                } else {
                    entry.conn.on_send(&mut env, res);
                }
                self.mark(key);
            }
            Some(Kind::Bdev) => {
                let Some(fin) = self.io.finish_bdev(ud.index() as usize, res) else {
                    return;
                };
                let key = fin.tag.conn;
                if key >= LAYER_KEY_BASE {
                    // An update the mirror engine applied to the local replica.
                    let vol = (key - LAYER_KEY_BASE) as usize;
                    // Only resync reads carry data here (rare: a copy is fine).
                    let data = fin
                        .read
                        .map(|(skip, want)| self.io.read_data(fin.key, skip, want).to_vec())
                        .unwrap_or_default();
                    if let Some((e, _)) = self.chans.get_mut(vol).and_then(|c| c.mirror()) {
                        e.apply_finished(&mut self.io, fin.tag.slot as usize, fin.result, &data);
                    }
                    self.io.release(fin.key);
                    return;
                }
                if let Some(entry) = self.conns.get_mut(key as usize) {
                    let data = match fin.read {
                        Some((skip, want)) => self.io.read_data(fin.key, skip, want),
                        None => &[],
                    };
                    entry.conn.on_io(fin.tag.slot, fin.result, data);
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

    /// Deliver mirror completions, wake links with something to send, and run the engines'
    /// periodic work. True when anything happened.
    fn service_mirrors(&mut self) -> bool {
        let now = Instant::now();
        let tick = now >= self.next_tick;
        if tick {
            self.next_tick = now + MIRROR_TICK;
        }
        let mut worked = false;
        for i in 0..self.mirrors.len() {
            let vol = self.mirrors[i];
            let Some((e, peer)) = self.chans[vol].mirror() else {
                continue;
            };
            if self.stopping.is_some() {
                e.begin_drain();
            }
            // Timeouts and pings run while stopping too; only dialling stops.
            let dial = tick && e.tick(&mut self.io, now) && self.stopping.is_none();
            let path_state = path_state(e.mode(), e.config().role);
            std::mem::swap(&mut self.mirror_done, &mut e.done);
            let link = e.link_key;
            let kick =
                e.wants_send(now) || e.kill_link.is_some() || (self.stopping.is_some() && e.idle());
            if dial {
                match crate::layer::mirror::link::LinkConn::dial(peer, vol) {
                    Ok(l) => {
                        let key = self.insert_conn(Box::new(l));
                        if let Some((e, _)) = self.chans[vol].mirror() {
                            e.link_key = Some(key);
                        }
                    }
                    Err(err) => tracing::warn!(%err, "mirror: cannot create a socket"),
                }
            }
            if let Some(k) = link
                && kick
            {
                self.mark(k);
            }
            if self.announced[i] != Some(path_state) {
                self.announced[i] = Some(path_state);
                self.announce_path_state(vol, path_state);
            }
            let mut done = std::mem::take(&mut self.mirror_done);
            worked |= !done.is_empty();
            for (from, tag, result) in done.drain(..) {
                self.answer(from, tag, result);
            }
            self.mirror_done = done;
        }
        worked
    }

    /// Publish how this site serves a mirrored volume (see [`path_state`]) in the volume's
    /// path cell, which front ends read (NVMe: the volume's ANA group, with a change notice).
    fn announce_path_state(&self, vol: usize, state: PathState) {
        if self.shared.volumes[vol].path.set(state) {
            tracing::info!(volume = vol, ?state, "path state published");
        }
    }

    /// Complete a mirrored update for a connection here or on reactor `from`.
    fn answer(&mut self, from: u32, tag: IoTag, result: Result<(), Errno>) {
        if from as usize == self.id {
            if let Some(entry) = self.conns.get_mut(tag.conn as usize) {
                entry.conn.on_io(tag.slot, result, &[]);
                self.mark(tag.conn);
            }
        } else {
            let data = self.io.spare_vecs.pop().unwrap_or_default();
            self.shared.mailboxes[from as usize].send(Msg::MirrorDone { tag, result, data });
        }
    }

    /// An update from another reactor's connection for a volume whose engine lives here.
    fn on_mirror_io(&mut self, r: crate::layer::mirror::RemoteIo) {
        use crate::layer::mirror::RemoteOp;
        let vol = r.vol as usize;
        let started = match self.chans.get_mut(vol).and_then(|c| c.mirror()) {
            Some((e, _)) => {
                use crate::layer::mirror::engine::Update;
                let update = match r.op {
                    RemoteOp::Write => Update::Write(&r.data),
                    RemoteOp::Zeroes => Update::Zeroes(r.len),
                    RemoteOp::Unmap => Update::Unmap(r.len),
                    RemoteOp::Flush => Update::Flush,
                    RemoteOp::Meta => Update::Meta(&r.data),
                };
                e.submit(&mut self.io, r.from, r.tag, update, r.offset, r.fua)
            }
            None => {
                tracing::error!(
                    reactor = self.id,
                    vol,
                    "mirror request for a volume not homed here"
                );
                crate::bdev::Start::Done(Err(Errno::IO))
            }
        };
        if r.data.capacity() > 0 && self.io.spare_vecs.len() < 4096 {
            self.io.spare_vecs.push(r.data);
        }
        if let crate::bdev::Start::Done(result) = started {
            self.answer(r.from, r.tag, result);
        }
    }

    /// Deliver an NVMe-oF message to its connection (dropped when that is gone) or to the
    /// atomic-section executor, creating it on first use.
    fn on_nvmf(&mut self, n: crate::frontend::nvmf::Note) {
        let key = match n.conn() {
            Some(k) => k,
            None => match self.nvmf_home.filter(|&k| self.conns.contains(k as usize)) {
                Some(k) => k,
                None => {
                    let home = crate::frontend::nvmf::atomic::Home::new();
                    let k = self.insert_conn(Box::new(home));
                    self.nvmf_home = Some(k);
                    k
                }
            },
        };
        if !self.conns.contains(key as usize) {
            return;
        }
        let (entry, mut env) = self.env(key);
        entry.conn.on_note(&mut env, n);
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
        let conn = frontend::new_conn(&self.shared, listener, fd);
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
        for i in 0..self.mirrors.len() {
            let v = self.mirrors[i];
            if let Some((e, _)) = self.chans[v].mirror() {
                e.abort_requests();
            }
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

/// Pin the calling thread to `core`.
pub fn pin_to_core(core: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set`; core is bounds-checked by the caller's config
    // validation against the machine's CPU count, and CPU_SET itself ignores out-of-range.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: passes a valid pointer to a cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
