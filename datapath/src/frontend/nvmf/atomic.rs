//! Atomic sections: fused Compare and Write executed atomically per volume (`docs/nvmf.md`).
//!
//! Model: every volume has one *home* reactor (volume index % reactors) that owns its atomic
//! section. A fused Compare+Write pair is handed to the home by message ([`Note::Fused`]); the
//! home's [`Home`] executor runs the pairs of a volume one at a time, in arrival order.
//!
//! Exclusion without a lock on the I/O path (a Dekker handshake on two atomics per volume):
//! - A queue that is about to start a media access (read, write, write zeroes, deallocate,
//!   compare) on volume `v` increments its reactor's in-flight counter of `v` (a cache line
//!   written only by that reactor) and then loads `busy[v]` (both SeqCst). `busy == 0`: it
//!   goes ahead and decrements the counter when the device completes. `busy > 0`: it takes the
//!   increment back and *diverts* the operation to the home ([`Note::Op`]), which runs it after
//!   the fused pairs queued before it.
//! - A queue that submits a fused pair increments `busy[v]` (SeqCst) before sending it.
//!   The home starts a pair only when every reactor's counter of `v` reads zero; a queue whose
//!   decrement brings its counter to zero while `busy > 0` sends [`Note::Drained`].
//!
//! In the SeqCst order either the queue sees `busy > 0` (and diverts), or the home sees its
//! increment (and waits for the decrement, which then sees `busy > 0` and wakes the home). So
//! while a pair runs no other NVMe/TCP media access of that volume is at the device, from any
//! queue, controller or host on this daemon: the pair is atomic with respect to all of them,
//! and a read never sees its write half done. `busy` falls back to zero when the last queued
//! pair finished, after which queues go straight to the device again.
//!
//! A mirrored volume's pair is handed whole to its mirror engine ([`crate::bdev::Channel::
//! compare_and_write`]), where the leader site decides it, so it is atomic with respect to
//! both sites' updates. The exclusion above only waits for this site's accesses in flight to
//! drain before the hand-over and is lifted at once (so queues do not divert for a round
//! trip); a plain Read may then overlap the pair's write at either site.
//!
//! The iSCSI front end's media accesses take part the same way (`frontend/iscsi/excl.rs`) and
//! its COMPARE AND WRITE is sent here as a fused pair.
//!
//! Limits: NBD writes do not take part in the exclusion, and at the site that did not
//! initiate a pair, a read may run concurrently with its write (see the doc).

use super::cmd::Status;
use crate::runtime::{Conn, Env, Mailbox, Msg, NoteTo, Service};
use crate::uring::{Errno, IoTag};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One reactor's in-flight counter, alone on its cache line (only that reactor writes it).
#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A volume's atomic section.
#[derive(Default)]
pub struct Section {
    /// Fused pairs submitted and not yet finished.
    busy: AtomicU32,
    /// Per reactor: media accesses of this volume at the device.
    inflight: Box<[Padded]>,
}

impl Section {
    fn new(reactors: usize) -> Self {
        Self {
            busy: AtomicU32::new(0),
            inflight: (0..reactors).map(|_| Padded::default()).collect(),
        }
    }

    /// Before a media access from `reactor`: true to go ahead (counted), false to divert.
    pub fn enter(&self, reactor: usize) -> bool {
        let Some(c) = self.inflight.get(reactor) else {
            return false;
        };
        c.0.fetch_add(1, Ordering::SeqCst);
        if self.busy.load(Ordering::SeqCst) == 0 {
            return true;
        }
        c.0.fetch_sub(1, Ordering::SeqCst);
        // Our own earlier accesses may still be running: if this was the last, the home may be
        // waiting for it, but the one that brought it to zero before us already woke it (or
        // the home saw zero). Nothing to do.
        false
    }

    /// After a counted access finished: true when the home must be woken.
    pub fn leave(&self, reactor: usize) -> bool {
        let Some(c) = self.inflight.get(reactor) else {
            return false;
        };
        let prev = c.0.fetch_sub(1, Ordering::SeqCst);
        prev == 1 && self.busy.load(Ordering::SeqCst) > 0
    }

    /// A fused pair is on its way to the home.
    pub fn begin_fused(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    fn end_fused(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    fn drained(&self) -> bool {
        self.inflight
            .iter()
            .all(|c| c.0.load(Ordering::SeqCst) == 0)
    }
}

/// Every volume's section plus the mailboxes to reach the homes.
pub struct Sections {
    sections: Vec<Section>,
    mailboxes: Vec<Arc<Mailbox>>,
    /// The executors' service index on every reactor.
    service: u32,
}

impl Sections {
    /// Sections for `volumes` volumes served by the reactors behind `mailboxes`, whose
    /// executors run as runtime service `service`.
    pub fn new(volumes: usize, mailboxes: Vec<Arc<Mailbox>>, service: u32) -> Self {
        let n = mailboxes.len();
        Self {
            sections: (0..volumes).map(|_| Section::new(n)).collect(),
            mailboxes,
            service,
        }
    }

    /// Volume `vol`'s section.
    pub fn get(&self, vol: usize) -> Option<&Section> {
        self.sections.get(vol)
    }

    /// The home reactor of `vol`.
    pub fn home(&self, vol: usize) -> usize {
        vol % self.mailboxes.len().max(1)
    }

    /// Reactor `reactor`'s mailbox.
    pub fn mailbox(&self, reactor: usize) -> Option<&Arc<Mailbox>> {
        self.mailboxes.get(reactor)
    }

    /// Send `note` to reactor `reactor`.
    pub fn send(&self, reactor: usize, note: Note) {
        if let Some(m) = self.mailboxes.get(reactor) {
            let to = match note.conn() {
                Some(key) => NoteTo::Conn(key),
                None => NoteTo::Service(self.service),
            };
            m.send(Msg::Note {
                to,
                note: Box::new(note),
            });
        }
    }

    /// Send `note` to `vol`'s home executor.
    pub fn to_home(&self, vol: usize, note: Note) {
        self.send(self.home(vol), note);
    }

    /// A counted access of `vol` from `reactor` finished.
    pub fn leave(&self, vol: usize, reactor: usize) {
        if self.get(vol).is_some_and(|s| s.leave(reactor)) {
            self.to_home(vol, Note::Drained);
        }
    }
}

/// Where an answer goes: a queue (connection `key` on `reactor`) and its request slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Reactor of the queue.
    pub reactor: usize,
    /// The queue's connection key there.
    pub key: u32,
    /// The queue's request slot.
    pub slot: u32,
}

/// A fused Compare+Write pair.
pub struct FusedReq {
    /// Volume index.
    pub vol: usize,
    /// Who asked.
    pub from: Origin,
    /// Byte offset.
    pub off: u64,
    /// The host's compare data (its length is the range).
    pub cmp: Vec<u8>,
    /// The data to write when the compare matches.
    pub data: Vec<u8>,
    /// Write with FUA.
    pub fua: bool,
    /// A miscompare's answer carries the offset of the first differing byte (iSCSI's
    /// INFORMATION; NVMe has no field for it, so no re-read is spent on it).
    pub locate: bool,
}

/// What a diverted operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read `len` bytes at `off` (also used for a plain Compare: the queue compares).
    Read,
    /// Write the data.
    Write,
    /// Write zeroes.
    Zeroes,
    /// Deallocate every range.
    Unmap,
}

/// A media access diverted to the home while a fused pair was pending.
pub struct OpReq {
    /// Volume index.
    pub vol: usize,
    /// Who asked.
    pub from: Origin,
    /// What to do.
    pub kind: OpKind,
    /// (offset, length) in bytes; several only for `Unmap`.
    pub ranges: Vec<(u64, u64)>,
    /// Write data.
    pub data: Vec<u8>,
    /// Write with FUA.
    pub fua: bool,
}

/// NVMe-oF messages between reactors (carried boxed by the runtime's `Msg::Note`).
pub enum Note {
    /// To a home: run a fused pair.
    Fused(Box<FusedReq>),
    /// To a home: run a diverted access.
    Op(Box<OpReq>),
    /// To a home: some reactor's in-flight count reached zero while a pair was pending.
    Drained,
    /// To an admin queue: a path state cell it watches changed (`NvmfConn::watch_ana`).
    AnaChanged {
        /// The admin queue's connection key.
        key: u32,
    },
    /// To an admin queue, from the control thread: its subsystem's namespace set changed
    /// (`NvmfConn::follow_subsys` takes the new one in the turn this arrives).
    NsChanged {
        /// The admin queue's connection key.
        key: u32,
    },
    /// To an I/O queue, from the control thread, after a namespace was removed: take the
    /// newest namespace set, then answer on `done` once no request of a namespace that is not
    /// in it is left at the device (`NvmfConn::settle_drains`); a queue that closes first
    /// drops `done`, which answers too.
    NsDrain {
        /// The queue's connection key.
        key: u32,
        /// Where the answer goes.
        done: std::sync::mpsc::SyncSender<()>,
    },
    /// To a queue: the outcome of a fused pair (`status`: compare, `status2`: write) or of a
    /// diverted access (`status`; read data in `data`).
    Done {
        /// The queue's connection key.
        key: u32,
        /// The request slot.
        slot: u32,
        /// First (or only) status.
        status: Status,
        /// Second status (fused write).
        status2: Status,
        /// Read data.
        data: Vec<u8>,
    },
    /// To an I/O queue: abort command `cid` if it has not reached the device.
    Abort {
        /// The I/O queue's connection key.
        key: u32,
        /// Controller of the queue (checked: keys are reused).
        cntlid: u16,
        /// Queue id (checked).
        sqid: u16,
        /// Command to abort.
        cid: u16,
        /// The admin queue's answer, owed once ([`AbortReply`]).
        reply: AbortReply,
    },
    /// To an admin queue: the outcome of an Abort.
    AbortDone {
        /// The admin queue's connection key.
        key: u32,
        /// Controller (checked).
        cntlid: u16,
        /// The Abort command's cid.
        cid: u16,
        /// True when the command was aborted.
        aborted: bool,
    },
}

/// The answer an Abort owes its admin queue ([`Note::AbortDone`]): given once, by the I/O
/// queue that looked for the command ([`AbortReply::answer`]), or by its drop, "not aborted",
/// when the note never reaches that queue (it closed while the note was on its way, and the
/// reactor drops notes for connections that are gone). Without it, such an Abort was never
/// answered and the host's admin command timed out.
pub struct AbortReply {
    /// The admin queue's reactor; `None` once answered.
    to: Option<Arc<Mailbox>>,
    /// The admin queue's connection key there.
    key: u32,
    /// Its controller (checked there: keys are reused).
    cntlid: u16,
    /// The Abort command's cid.
    cid: u16,
}

impl AbortReply {
    /// The answer for Abort `cid` of controller `cntlid`, to connection `key` behind `to`.
    pub fn new(to: Arc<Mailbox>, key: u32, cntlid: u16, cid: u16) -> Self {
        Self {
            to: Some(to),
            key,
            cntlid,
            cid,
        }
    }

    /// Answer: the command was aborted or not.
    pub fn answer(mut self, aborted: bool) {
        self.send(aborted);
    }

    fn send(&mut self, aborted: bool) {
        if let Some(m) = self.to.take() {
            m.send(Msg::Note {
                to: NoteTo::Conn(self.key),
                note: Box::new(Note::AbortDone {
                    key: self.key,
                    cntlid: self.cntlid,
                    cid: self.cid,
                    aborted,
                }),
            });
        }
    }
}

impl Drop for AbortReply {
    fn drop(&mut self) {
        self.send(false);
    }
}

impl Note {
    /// The connection it is for; `None`: the reactor's executor (a runtime service).
    pub fn conn(&self) -> Option<u32> {
        match self {
            Note::Fused(_) | Note::Op(_) | Note::Drained => None,
            Note::Done { key, .. }
            | Note::Abort { key, .. }
            | Note::AbortDone { key, .. }
            | Note::AnaChanged { key }
            | Note::NsChanged { key }
            | Note::NsDrain { key, .. } => Some(*key),
        }
    }
}

enum Item {
    Fused(Box<FusedReq>),
    Op(Box<OpReq>),
}

/// Where the head item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Not started (a pair waits here for the volume to drain).
    Start,
    /// Pair: reading for the compare.
    Reading,
    /// Pair: writing after a match.
    Writing,
    /// Pair: handed whole to the volume's stack (a mirrored volume: decided by the leader).
    Delegated,
    /// Pair: the stack answered a miscompare; reading the range again to find the first
    /// byte that differs (SCSI's INFORMATION field; only for the answer).
    Locating,
    /// Access: device operation `n` of the item running.
    Op(usize),
}

/// A reactor's executor of atomic sections: a connection without a socket that every reactor
/// runs as a runtime service ([`HomeService`]), reached by [`Note`]s.
///
/// Invariant: at most one device operation in flight (request slot 0); items run strictly one
/// after another in arrival order.
pub struct Home {
    nv: Arc<super::NvmfShared>,
    queue: VecDeque<Item>,
    stage: Stage,
    in_flight: bool,
    /// Outcome of the finished device operation, and read data.
    last: Option<Result<(), Errno>>,
    rbuf: Vec<u8>,
    stopping: bool,
}

/// The runtime service that runs a [`Home`] on every reactor.
pub struct HomeService {
    nv: Arc<super::NvmfShared>,
}

impl HomeService {
    /// Executors for the daemon's NVMe-oF state `nv`.
    pub fn new(nv: Arc<super::NvmfShared>) -> Self {
        Self { nv }
    }
}

impl Service for HomeService {
    fn start_on(&self, _reactor: usize) -> Box<dyn Conn> {
        Box::new(Home::new(Arc::clone(&self.nv)))
    }
}

impl Home {
    /// An idle executor.
    pub fn new(nv: Arc<super::NvmfShared>) -> Self {
        Self {
            nv,
            queue: VecDeque::new(),
            stage: Stage::Start,
            in_flight: false,
            last: None,
            rbuf: Vec::new(),
            stopping: false,
        }
    }

    fn answer(
        nv: &super::NvmfShared,
        env: &Env<'_>,
        to: Origin,
        status: Status,
        status2: Status,
        data: Vec<u8>,
    ) {
        let note = Note::Done {
            key: to.key,
            slot: to.slot,
            status,
            status2,
            data,
        };
        if let Some(s) = nv.sections(env.shared) {
            s.send(to.reactor, note);
        }
    }

    /// Advance the head item as far as it goes without waiting.
    fn run(&mut self, env: &mut Env<'_>) {
        let shared: &crate::runtime::Shared = env.shared;
        while !self.in_flight {
            let Some(sections) = self.nv.sections(shared) else {
                return;
            };
            let tag = IoTag {
                conn: env.key,
                slot: 0,
            };
            let Some(head) = self.queue.front() else {
                return;
            };
            match head {
                Item::Fused(f) => {
                    let vol = f.vol;
                    let Some(sec) = sections.get(vol) else {
                        return;
                    };
                    let Some(chan) = env.chans.get_mut(vol) else {
                        return;
                    };
                    // A miscompare's answer carries the offset of the first byte that differs
                    // (8 bytes, little endian; iSCSI reports it in INFORMATION, SBC-3 §5.2).
                    let mut located = Vec::new();
                    let outcome: Option<(Status, Status)> = match (self.stage, self.last.take()) {
                        (Stage::Start, _) => {
                            if !sec.drained() {
                                return; // a Drained note brings us back
                            }
                            if let Some(started) =
                                chan.compare_and_write(env.io, tag, f.off, &f.cmp, &f.data, f.fua)
                            {
                                self.stage = Stage::Delegated;
                                // The engine orders it against every update of both sites;
                                // this site's queues need not wait the round trip for it.
                                sec.end_fused();
                                match started {
                                    crate::bdev::Start::Done(r) => self.last = Some(r),
                                    crate::bdev::Start::Pending => self.in_flight = true,
                                }
                                continue;
                            }
                            self.stage = Stage::Reading;
                            let r = chan.read(env.io, tag, f.off, f.cmp.len() as u32);
                            read_started(r, &mut self.rbuf, &mut self.last, &mut self.in_flight);
                            None
                        }
                        (Stage::Reading, Some(Err(e))) => Some((
                            super::status::status_of(e, super::cmd::io::READ),
                            Status::ABORTED_FUSED_FAIL,
                        )),
                        (Stage::Reading, Some(Ok(()))) => {
                            if self.rbuf != f.cmp {
                                if f.locate {
                                    located = first_difference(&self.rbuf, &f.cmp);
                                }
                                Some((Status::COMPARE_FAILED, Status::ABORTED_FUSED_FAIL))
                            } else {
                                self.stage = Stage::Writing;
                                match chan.write(env.io, tag, f.off, &f.data, f.fua) {
                                    crate::bdev::Start::Done(r) => self.last = Some(r),
                                    crate::bdev::Start::Pending => self.in_flight = true,
                                }
                                None
                            }
                        }
                        (Stage::Delegated, Some(Err(Errno::MISCOMPARE))) if f.locate => {
                            // Read what the stack compared against (a write since may change
                            // it: the offset is only a report).
                            self.stage = Stage::Locating;
                            let r = chan.read(env.io, tag, f.off, f.cmp.len() as u32);
                            read_started(r, &mut self.rbuf, &mut self.last, &mut self.in_flight);
                            None
                        }
                        (Stage::Locating, Some(r)) => {
                            if r.is_ok() {
                                located = first_difference(&self.rbuf, &f.cmp);
                            }
                            Some((Status::COMPARE_FAILED, Status::ABORTED_FUSED_FAIL))
                        }
                        (Stage::Delegated, Some(r)) => Some(match r {
                            Ok(()) => (Status::SUCCESS, Status::SUCCESS),
                            // (A miscompare to locate takes the arm above.)
                            Err(Errno::MISCOMPARE) => {
                                (Status::COMPARE_FAILED, Status::ABORTED_FUSED_FAIL)
                            }
                            Err(e) => (
                                super::status::status_of(e, super::cmd::io::WRITE),
                                Status::ABORTED_FUSED_FAIL,
                            ),
                        }),
                        (Stage::Writing, Some(r)) => Some((
                            Status::SUCCESS,
                            match r {
                                Ok(()) => Status::SUCCESS,
                                Err(e) => super::status::status_of(e, super::cmd::io::WRITE),
                            },
                        )),
                        _ => return,
                    };
                    if let Some((s1, s2)) = outcome {
                        Self::answer(&self.nv, env, f.from, s1, s2, located);
                        if !matches!(self.stage, Stage::Delegated | Stage::Locating) {
                            sec.end_fused();
                        }
                        self.queue.pop_front();
                        self.stage = Stage::Start;
                    }
                }
                Item::Op(o) => {
                    let Some(chan) = env.chans.get_mut(o.vol) else {
                        return;
                    };
                    let n = match self.stage {
                        Stage::Op(n) => n,
                        _ => 0,
                    };
                    let failed = matches!(self.last, Some(Err(_)));
                    if n >= o.ranges.len() || failed {
                        let r = self.last.take().unwrap_or(Ok(()));
                        let op = if o.kind == OpKind::Read {
                            super::cmd::io::READ
                        } else {
                            super::cmd::io::WRITE
                        };
                        let status = match r {
                            Ok(()) => Status::SUCCESS,
                            Err(e) => super::status::status_of(e, op),
                        };
                        let data = if o.kind == OpKind::Read && status == Status::SUCCESS {
                            std::mem::take(&mut self.rbuf)
                        } else {
                            Vec::new()
                        };
                        Self::answer(&self.nv, env, o.from, status, Status::SUCCESS, data);
                        self.queue.pop_front();
                        self.stage = Stage::Start;
                        continue;
                    }
                    self.last = None;
                    self.stage = Stage::Op(n + 1);
                    let (off, len) = o.ranges[n];
                    let started = match o.kind {
                        OpKind::Read => match chan.read(env.io, tag, off, len as u32) {
                            crate::bdev::ReadStart::Ready(d) => {
                                self.rbuf.clear();
                                self.rbuf.extend_from_slice(d);
                                crate::bdev::Start::Done(Ok(()))
                            }
                            crate::bdev::ReadStart::Failed(e) => crate::bdev::Start::Done(Err(e)),
                            crate::bdev::ReadStart::Pending => crate::bdev::Start::Pending,
                        },
                        OpKind::Write => chan.write(env.io, tag, off, &o.data, o.fua),
                        OpKind::Zeroes => chan.write_zeroes(env.io, tag, off, len, o.fua),
                        OpKind::Unmap => chan.unmap(env.io, tag, off, len, false),
                    };
                    match started {
                        crate::bdev::Start::Done(Ok(())) => {}
                        crate::bdev::Start::Done(Err(e)) => self.last = Some(Err(e)),
                        crate::bdev::Start::Pending => self.in_flight = true,
                    }
                }
            }
        }
    }
}

impl Conn for Home {
    fn start(&mut self, env: &mut Env<'_>) {
        // Created while the reactor stops (a late message): finish the work and go.
        self.stopping = env.stopping;
    }

    fn on_recv(&mut self, _env: &mut Env<'_>, _res: i32) {}

    fn on_send(&mut self, _env: &mut Env<'_>, _res: i32) {}

    fn volume_of(&self, _slot: u32) -> Option<usize> {
        // (A read failing at the device is shown to its volume's layers: `Channel::read_failed`.)
        match self.queue.front()? {
            Item::Fused(f) => Some(f.vol),
            Item::Op(o) => Some(o.vol),
        }
    }

    fn on_io(&mut self, _slot: u32, result: Result<(), Errno>, data: &[u8]) {
        self.in_flight = false;
        if result.is_ok() && !data.is_empty() {
            self.rbuf.clear();
            self.rbuf.extend_from_slice(data);
        }
        self.last = Some(result);
    }

    fn on_note(&mut self, _env: &mut Env<'_>, note: crate::runtime::Note) {
        let Ok(note) = note.downcast::<Note>() else {
            return;
        };
        match *note {
            Note::Fused(f) => self.queue.push_back(Item::Fused(f)),
            Note::Op(o) => self.queue.push_back(Item::Op(o)),
            // Only a wake-up: the next flush re-checks the counters.
            _ => {}
        }
    }

    fn flush(&mut self, env: &mut Env<'_>) {
        // Items are finished even while the daemon stops: their queues wait for the answers.
        self.run(env);
    }

    fn stop(&mut self, _env: &mut Env<'_>) {
        self.stopping = true;
    }

    fn abort(&mut self, _env: &mut Env<'_>) {
        self.stopping = true;
    }

    fn done(&self) -> bool {
        self.stopping && self.queue.is_empty() && !self.in_flight
    }

    fn describe(&self) -> String {
        format!(
            "NVMe-oF atomic-section executor: {} queued, stage {:?}",
            self.queue.len(),
            self.stage
        )
    }
}

/// A read of the executor's (slot 0) started with `r`: its data into `rbuf` and `last`, its
/// error into `last`, or in flight.
fn read_started(
    r: crate::bdev::ReadStart<'_>,
    rbuf: &mut Vec<u8>,
    last: &mut Option<Result<(), Errno>>,
    in_flight: &mut bool,
) {
    match r {
        crate::bdev::ReadStart::Ready(d) => {
            rbuf.clear();
            rbuf.extend_from_slice(d);
            *last = Some(Ok(()));
        }
        crate::bdev::ReadStart::Failed(e) => *last = Some(Err(e)),
        crate::bdev::ReadStart::Pending => *in_flight = true,
    }
}

/// The offset of the first byte where `read` and `cmp` differ, as 8 bytes little endian
/// (empty when they do not differ).
fn first_difference(read: &[u8], cmp: &[u8]) -> Vec<u8> {
    read.iter()
        .zip(cmp)
        .position(|(a, b)| a != b)
        .map_or(Vec::new(), |p| (p as u64).to_le_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Abort's answer is owed once: given by the queue that handled it, or "not aborted"
    /// when the note is dropped undelivered (its queue closed while it was on the way).
    #[test]
    fn an_abort_note_dropped_undelivered_still_answers_not_aborted() {
        let m = Arc::new(Mailbox::new().unwrap());
        let answers = |m: &Mailbox| {
            let mut v = Vec::new();
            while let Some(msg) = m.pop() {
                let Msg::Note {
                    to: NoteTo::Conn(k),
                    note,
                } = msg
                else {
                    panic!("a note to a connection");
                };
                match note.downcast::<Note>().map(|n| *n) {
                    Ok(Note::AbortDone {
                        key,
                        cntlid,
                        cid,
                        aborted,
                    }) => v.push((k, key, cntlid, cid, aborted)),
                    _ => panic!("an AbortDone"),
                }
            }
            v
        };
        // Dropped undelivered (the reactor's note for a connection that is gone).
        let note: crate::runtime::Note = Box::new(Note::Abort {
            key: 9,
            cntlid: 3,
            sqid: 1,
            cid: 17,
            reply: AbortReply::new(Arc::clone(&m), 4, 3, 12),
        });
        drop(note);
        assert_eq!(answers(&m), [(4, 4, 3, 12, false)]);
        // Answered: once, with the queue's outcome.
        AbortReply::new(Arc::clone(&m), 4, 3, 13).answer(true);
        assert_eq!(answers(&m), [(4, 4, 3, 13, true)]);
    }

    #[test]
    fn writers_divert_while_a_pair_is_pending_and_wake_the_home() {
        let s = Section::new(2);
        assert!(s.enter(0));
        assert!(!s.drained());
        s.begin_fused();
        // A new access now diverts and leaves the counters as they were.
        assert!(!s.enter(1));
        assert!(!s.drained());
        // The access that was in flight finishes: the home must be woken.
        assert!(s.leave(0));
        assert!(s.drained());
        s.end_fused();
        assert!(s.enter(1));
        assert!(!s.leave(1), "no pair pending: no wake-up");
        assert!(!s.enter(7), "unknown reactor diverts");
    }
}
