//! One NVMe/TCP queue pair (one TCP connection), driven by its reactor: the queue core.
//!
//! ```text
//!  start ──> AwaitIcReq ──(ICReq / ICResp)──> Ready ──(Connect qid 0)──> Admin
//!                 │                             └──(Connect qid n)──> Io
//!                 └─ anything else: C2HTermReq ──> Closing <── EOF, H2CTermReq, TermReq,
//!                                                              keep-alive expiry, stop
//! ```
//! - AwaitIcReq: only an ICReq is accepted; it fixes the digests and the host's data alignment.
//! - Ready (no role yet): only a fabrics Connect is executed; other commands get
//!   "command sequence error".
//! - Admin: admin and fabrics property commands for the controller this queue created. The
//!   Keep Alive Timer is command based (restarted only by Keep Alive, Set Features KATO and
//!   CC.EN 0 to 1) and stopped while the controller is disabled or shut down after having
//!   been enabled; every receive carries a linked timeout of what is left of it, and a timer
//!   that ran out tears the controller down (its I/O queues' sockets are shut down and they
//!   close on their own reactors). Once an ANA change event could be reported (an
//!   Asynchronous Event Request held, the ANA notice enabled and not masked), the queue
//!   watches the path state cells of its subsystem's ANA groups: a change sends it a note, so
//!   an idle admin queue reports it in the turn it happens instead of at the host's next
//!   command (its next Keep Alive: seconds, for which a host's I/O waits on a failover).
//! - Io: NVM commands on the namespaces of the controller's subsystem (as it is now: a queue
//!   takes a changed namespace set at its next command capsule, and a command never runs on a
//!   namespace added after it arrived, `namespaces`). Media accesses enter
//!   the volume's atomic section (`atomic`) or are diverted to its home while a fused pair is
//!   pending; fused pairs go to the home; reservation permissions are cached per namespace
//!   and re-read only when the namespace's reservation version moves (`resv`).
//! - Closing: no new PDU is parsed; in-flight device operations finish; the connection is
//!   `done` once no receive, send or device operation is in flight. After a TermReq (sent or
//!   received) or a broken socket no further response is sent.
//!
//! The queue is split by concern; each file adds methods to [`NvmfConn`]:
//! - this file: the state, the socket (receive, send, backpressure, close), PDU dispatch,
//!   responses, command dispatch and device completions;
//! - [`transfer`]: command data in (R2T, H2CData) and out (C2HData);
//! - [`fabrics`]: ICReq, Connect, Property Get/Set;
//! - [`admin`]: admin commands (Identify, log pages incl. ANA, Abort, events);
//! - [`namespaces`]: namespace changes at run time (following the subsystem's newest copy,
//!   the Changed Namespace List log page, the Namespace Attribute Changed event);
//! - [`features`]: Get/Set Features (scopes, values, capabilities);
//! - [`io`]: NVM I/O commands;
//! - [`atomics`]: fused Compare+Write handed to the volume's home;
//! - [`reservations`]: reservation commands, local or decided by the mirror's leader;
//! - errors and path states become statuses in `super::status` (one table).
//!
//! The NVMe-oF state (subsystems, controllers, ANA groups, atomic sections) is the
//! [`NvmfShared`] given at construction (`self.nv`), never read through the runtime.
//!
//! Invariants:
//! - `rx` is resized or compacted only while no receive is armed; the bytes being sent are
//!   not touched while their send is armed (`transport::tcp::SendQueue`).
//! - Every command taken from the wire gets exactly one response (CapsuleResp, or C2HData with
//!   SUCCESS), unless the connection terminated or the socket broke; Async Event Requests are
//!   answered when an event occurs or never (the queue closing ends them).
//! - Bad input never panics: every length and index from the wire is checked (`pdu`, `cmd`).
//! - Backpressure: at most [`MAX_INFLIGHT`] commands at the device and about
//!   [`TX_HIGH_WATER`] unsent bytes; past either, the connection stops receiving (both drain
//!   without the host's help, so this cannot deadlock on H2CData still to come). At most
//!   [`MAX_R2T`] R2Ts are outstanding, so a host cannot make a queue hold more than
//!   `MAX_R2T * MAX_XFER` bytes of half-received write data.

mod admin;
mod atomics;
mod fabrics;
mod features;
mod fusing;
mod io;
mod namespaces;
mod reservations;
mod transfer;

use super::NvmfShared;
use super::atomic::Note;
use super::cmd::{self, Sqe, Status, admin as adm, fctype, fuse, io as nvm, sgl};
use super::ctrl::Controller;
use super::pdu::{self, Digests, Violation, fes, pdu_type};
use super::resv::Access;
use super::status::status_of;
use crate::bdev::volume::PathState;
use crate::runtime::{Conn, Env};
use crate::transport::tcp::{Lifecycle, SendQueue};
use crate::uring::{Errno, Kind, UserData};
use fabrics::host_to_ctrl;
use io_uring::{opcode, squeue, types};
use slab::Slab;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Device operations one queue may have in flight before it stops receiving; also the most
/// commands that may wait for their data.
pub const MAX_INFLIGHT: usize = 1024;
/// Unsent bytes past which the queue stops parsing.
pub const TX_HIGH_WATER: usize = 64 << 20;
/// In-capsule data accepted on every queue (IOCCSZ = (64 + this) / 16).
pub const INCAPSULE_MAX: u32 = 8192;
/// Largest H2CData PDU payload (ICResp MAXH2CDATA).
pub const MAXH2CDATA: u32 = 64 << 10;
/// Maximum data transfer size, as a power of two of 4 KiB pages (5: 128 KiB, a pool buffer).
pub const MDTS: u8 = 5;
/// Maximum data transfer size in bytes.
pub const MAX_XFER: u32 = 4096 << MDTS;
/// Largest I/O queue (0's based): CAP.MQES and the I/O queues' Connect SQSIZE limit.
pub const MQES: u16 = 1023;
/// Largest admin queue (0's based Connect SQSIZE): on a fabric CAP.MQES bounds only the I/O
/// submission queues; an Admin Queue has at most 4096 entries, and the discovery log's ASQSZ
/// says so.
pub const ADMIN_SQSIZE_MAX: u16 = cmd::ASQSZ - 1;
/// R2Ts outstanding per queue: bounds the assembly buffers a host can make a queue hold to
/// `MAX_R2T * MAX_XFER` (4 MiB); further commands needing data wait (64 bytes each) for one.
pub const MAX_R2T: usize = 32;
/// Async Event Requests held at once (AERL + 1).
const MAX_AERS: usize = 4;
/// `Req::op` of a fused Compare+Write pair (not an NVMe opcode: bit 7 is never set in one
/// this queue accepts).
const OP_FUSED: u8 = 0xFF;
const RX_INITIAL: usize = 256 << 10;
const RX_MIN_FREE: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    Ready,
}

struct AdminState {
    cc: u32,
    csts: u32,
    aec: u32,
    aers: Vec<u16>,
    /// Abort commands sent to another queue's reactor and not answered yet (at most
    /// `cmd::ACL + 1`).
    aborts: usize,
    ana_seen: u64,
    /// The ANA group states last reported (log page or event), per group of the subsystem in
    /// order, as this controller's host sees them: a host the host list places hears of a
    /// change only when one of these moved.
    ana_view: Vec<Option<PathState>>,
    /// An ANA change event was reported and the host has not read the ANA log page since
    /// with RAE clear: no further ANA event until it does (Base 2.0, Asynchronous Event
    /// Request: events of a reported type are masked until their log page is read).
    ana_masked: bool,
    /// Registrations with the path state cells of the subsystem's ANA groups (each group's
    /// volume: this site's and the other site's), made once an ANA change event could be
    /// reported: a change sends this queue a note, so an idle admin queue reports it at once
    /// instead of at the host's next command ([`NvmfConn::watch_ana`]).
    ana_watch: Vec<crate::bdev::volume::PathWatch>,
    /// The Feature values the host set (`features`; defaults until it does).
    features: features::FeatureValues,
    /// The Changed Namespace List log page and the state of its event (`namespaces`).
    ns_changed: namespaces::ChangedNs,
    /// The Keep Alive Timer is not active: the controller was disabled (CC.EN 1 to 0) or shut
    /// down (CC.SHN) and not enabled again since. (From Connect to the first CC.EN = 1 it
    /// runs, so an association that is never enabled does not stay for ever.)
    ka_off: bool,
}

enum Role {
    None,
    Admin(AdminState),
    Io,
}

/// A command waiting for its data (R2T sent).
struct Xfer {
    sqe: [u8; cmd::SQE_LEN],
    total: u32,
    received: u32,
    buf: Vec<u8>,
    /// Aborted, or its data damaged: the data is received and dropped.
    discard: bool,
    /// Its data was damaged on the way: answered with this once all of it has arrived.
    fail: Option<Status>,
    /// The namespace generation of the queue's copy when its capsule arrived (`cmd_gen`).
    arrived_gen: u64,
}

/// A command at the device.
struct Req {
    cid: u16,
    /// Fused pair: the Write's cid (`cid` is the Compare's).
    cid2: u16,
    op: u8,
    /// Device operations still running (DSM issues one per range).
    parts: u32,
    status: Status,
    /// Compare: the host's data (a reused buffer; empty for other commands).
    cmp: Vec<u8>,
    /// Counted in this volume's atomic section (left when it finishes).
    counted: Option<usize>,
    /// Answered by a message from the volume's home, not by a device completion.
    remote: bool,
    /// The volume (reactor slot) it is for.
    vol: usize,
    /// The namespace it runs through: (NSID, the generation it was added in); NSID 0: none.
    /// A namespace change waits until no request of a namespace that is gone is left
    /// (`namespaces::settle_drains`).
    ns: (u32, u64),
}

/// An NVMe/TCP connection.
pub struct NvmfConn {
    /// The daemon's NVMe-oF state: subsystems, controllers, ANA groups, atomic sections.
    nv: Arc<NvmfShared>,
    fd: OwnedFd,
    phase: Phase,
    role: Role,
    ctrl: Option<Arc<Controller>>,
    /// The subsystem this queue serves, as its controller connected to it.
    subsys: Option<Arc<crate::frontend::nvmf::ctrl::Subsystem>>,
    qid: u16,
    qsize: u32,
    sqhd: u32,
    sqflow_off: bool,
    dg: Digests,
    c2h_align: usize,
    rx: Vec<u8>,
    rx_lo: usize,
    rx_hi: usize,
    /// Outgoing bytes (one send per turn).
    tx: SendQueue,
    /// Receive armed, closing, broken, stopping, closed.
    pub(super) life: Lifecycle,
    scratch: Vec<u8>,
    reqs: Slab<Req>,
    xfers: Slab<Xfer>,
    /// Commands waiting for an R2T slot, with the namespace generation they arrived in.
    r2t_wait: VecDeque<([u8; cmd::SQE_LEN], u64)>,
    spare: Vec<Vec<u8>>,
    kato_ts: Box<types::Timespec>,
    /// The armed receive carries a linked timeout (the Keep Alive Timer's).
    kato_armed: bool,
    /// Admin queue with a non-zero KATO: when the Keep Alive Timer expires. Restarted only
    /// by a Keep Alive command, a Set Features of KATO and the controller's enabling
    /// (command based: TBKAS is not advertised; Base 2.0 §3.9).
    ka_deadline: Option<Instant>,
    /// No more output: a TermReq went out or came in.
    terminated: bool,
    errors: u64,
    err_vol: usize,
    /// Fused pairs, by the order their capsules arrived (`fusing.rs`).
    fusing: fusing::Fusing,
    /// Data digest errors on this connection (the first is logged; all are counted).
    digest_errors: u64,
    /// Volumes whose atomic section a finished access still has to leave (done in `flush`,
    /// which has the environment).
    leaves: Vec<usize>,
    /// Per namespace index: (reservation version, access) last evaluated.
    resv_cache: Vec<(u64, Access)>,
    /// This queue's entry in the hosts registry (from its Connect until it closes).
    host: Option<crate::runtime::hosts::HostHandle>,
    /// The namespace generation of this queue's subsystem copy when the command being
    /// executed arrived: a namespace added after it (`Namespace::since` greater) is not the
    /// one the command named, so the command gets Invalid Namespace or Format
    /// (`namespaces`).
    cmd_gen: u64,
    /// Namespace removals waiting for this queue to have no request of a removed namespace
    /// left (`Note::NsDrain`; answered by `settle_drains`).
    ns_drains: Vec<std::sync::mpsc::SyncSender<()>>,
}
impl NvmfConn {
    /// A connection on an accepted socket, serving the subsystems of `nv`.
    pub fn new(fd: OwnedFd, nv: Arc<NvmfShared>) -> Self {
        crate::transport::tcp::set_nodelay(&fd);
        Self {
            nv,
            fd,
            phase: Phase::AwaitIcReq,
            role: Role::None,
            ctrl: None,
            subsys: None,
            qid: 0,
            qsize: 1,
            sqhd: 0,
            sqflow_off: false,
            dg: Digests::default(),
            c2h_align: 4,
            rx: vec![0; RX_INITIAL],
            rx_lo: 0,
            rx_hi: 0,
            tx: SendQueue::with_capacity(RX_INITIAL),
            life: Lifecycle::default(),
            scratch: Vec::with_capacity(cmd::IDENTIFY_LEN),
            reqs: Slab::with_capacity(128),
            xfers: Slab::with_capacity(MAX_R2T),
            r2t_wait: VecDeque::new(),
            spare: Vec::new(),
            kato_ts: Box::new(types::Timespec::new()),
            kato_armed: false,
            ka_deadline: None,
            terminated: false,
            errors: 0,
            err_vol: 0,
            fusing: fusing::Fusing::default(),
            digest_errors: 0,
            leaves: Vec::new(),
            resv_cache: Vec::new(),
            host: None,
            cmd_gen: 0,
            ns_drains: Vec::new(),
        }
    }

    /// Stop receiving. Only what drains without the host's help counts (device operations,
    /// unsent bytes): commands waiting for H2CData must not stop the receive that brings it.
    fn paused(&self) -> bool {
        self.reqs.len() >= MAX_INFLIGHT || self.tx.held() >= TX_HIGH_WATER
    }

    fn max_data(&self) -> u32 {
        match self.phase {
            Phase::AwaitIcReq => 0,
            Phase::Ready => INCAPSULE_MAX.max(MAXH2CDATA),
        }
    }

    /// Fatal transport error: a C2HTermReq, then close.
    fn fatal(&mut self, env: &mut Env<'_>, v: Violation, offending: &[u8]) {
        env.counters.violations += 1;
        tracing::warn!(
            conn = env.key,
            fes = v.fes,
            fei = v.fei,
            "NVMe/TCP protocol violation; terminating the connection"
        );
        if !self.terminated && !self.life.broken {
            pdu::put_c2h_term(&mut self.tx.pending, v, offending);
        }
        self.terminated = true;
        self.life.closing = true;
    }

    /// Parse and act on every whole PDU in the receive buffer.
    fn process(&mut self, env: &mut Env<'_>) {
        let rx = std::mem::take(&mut self.rx);
        // One reference count update per receive, none per command.
        let nv = Arc::clone(&self.nv);
        while !self.terminated && !self.life.broken && self.rx_lo < self.rx_hi {
            // While the daemon stops, commands already received are still answered.
            if (self.life.closing && !self.life.shutting_down) || self.paused() {
                break;
            }
            let avail = &rx[self.rx_lo..self.rx_hi];
            match pdu::parse(avail, self.dg, self.max_data()) {
                Err(v) => {
                    let hl = avail
                        .first()
                        .and_then(|&t| pdu::host_hlen(t))
                        .unwrap_or(pdu::CH_LEN);
                    self.fatal(env, v, &avail[..avail.len().min(hl)]);
                    break;
                }
                Ok(None) => break,
                Ok(Some((p, n))) => {
                    self.pdu(env, &nv, p);
                    self.rx_lo += n;
                }
            }
        }
        self.rx = rx;
        if self.rx_lo == self.rx_hi {
            self.rx_lo = 0;
            self.rx_hi = 0;
        }
    }

    fn pdu(&mut self, env: &mut Env<'_>, nv: &NvmfShared, p: pdu::Pdu<'_>) {
        match (self.phase, p.ch.kind) {
            (_, pdu_type::H2C_TERM) => {
                let (f, i) = pdu::term_req(p.header).unwrap_or((0, 0));
                tracing::info!(
                    conn = env.key,
                    fes = f,
                    fei = i,
                    "host terminated the connection"
                );
                self.terminated = true;
                self.life.closing = true;
            }
            (Phase::AwaitIcReq, pdu_type::IC_REQ) => self.ic_req(env, p),
            (Phase::Ready, pdu_type::CMD) => self.capsule(env, nv, p),
            (Phase::Ready, pdu_type::H2C_DATA) => self.h2c_data(env, nv, p),
            _ => self.fatal(
                env,
                Violation {
                    fes: fes::PDU_SEQUENCE,
                    fei: 0,
                },
                p.header,
            ),
        }
    }

    fn capsule(&mut self, env: &mut Env<'_>, nv: &NvmfShared, p: pdu::Pdu<'_>) {
        let Some(sqe) = Sqe::new(&p.header[pdu::CH_LEN..]) else {
            return;
        };
        self.sqhd = (self.sqhd + 1) % self.qsize.max(1);
        // The namespace set the command names is the newest at its arrival (one atomic
        // load); its data may come later, after another change (`cmd_gen`).
        if self.subsys.as_ref().is_some_and(|s| s.stale()) {
            self.follow_subsys(env.vols);
        }
        let arrived_gen = self.subsys.as_ref().map_or(0, |s| s.ns_gen);
        self.cmd_gen = arrived_gen;
        let cid = sqe.cid();
        if let Some(first) = self.fusing.arrived(cid, sqe.fuse()) {
            // A whole first half whose next capsule is not its second.
            self.respond(first, Status::ABORTED_FUSED_MISSING, 0);
        }
        if self.life.shutting_down {
            return self.fail_early(&sqe, Status::NS_NOT_READY);
        }
        if !p.data_ok {
            // In-capsule data damaged on the way: the command fails, the connection stays.
            self.digest_error(env);
            return self.fail_early(&sqe, Status::TRANSIENT_TRANSPORT);
        }
        if !p.data.is_empty() {
            if sqe.sgl_type() != sgl::INCAPSULE {
                return self.fail_early(&sqe, Status::SGL_INVALID_TYPE);
            }
            if p.data.len() > INCAPSULE_MAX as usize {
                return self.fail_early(&sqe, Status::SGL_INVALID_DATA);
            }
            // The Address is an offset into the capsule's data (ICDOFF 0, SGLS bit 20).
            let (off, len) = (sqe.sgl_addr(), u64::from(sqe.sgl_len()));
            let end = off.checked_add(len).filter(|&e| e <= p.data.len() as u64);
            let Some(end) = end else {
                let s = if off == 0 {
                    Status::SGL_INVALID_DATA
                } else {
                    Status::SGL_OFFSET_INVALID
                };
                return self.fail_early(&sqe, s);
            };
            if end != p.data.len() as u64 {
                // Data beyond what the descriptor describes.
                return self.fail_early(&sqe, Status::SGL_INVALID_DATA);
            }
            return self.execute(env, nv, sqe, &p.data[off as usize..end as usize]);
        }
        if host_to_ctrl(&sqe) && sqe.sgl_len() > 0 {
            if sqe.sgl_type() == sgl::INCAPSULE {
                // An in-capsule descriptor of a capsule that carries no data: its length.
                return self.fail_early(&sqe, Status::SGL_INVALID_DATA);
            }
            if sqe.sgl_type() != sgl::TRANSPORT {
                return self.fail_early(&sqe, Status::SGL_INVALID_TYPE);
            }
            let total = sqe.sgl_len();
            if total > MAX_XFER {
                // A transfer above MDTS: Invalid Field in Command (as for a Read), unless the
                // command's own length (NLB) is within MDTS and only its SGL is too long.
                let s = match self.nlb_bytes(env.vols, &sqe) {
                    Some(n) if n <= u64::from(MAX_XFER) => Status::SGL_INVALID_DATA,
                    _ => Status::INVALID_FIELD,
                };
                return self.fail_early(&sqe, s);
            }
            if total % 4 != 0 {
                // No R2T can ask for it: R2TL (and the host's DATAL) shall be whole dwords
                // (TCP 1.0 §3.6.2.10, §3.6.2.8), and every command here takes whole dwords of
                // data, so this descriptor's length is not its command's.
                return self.fail_early(&sqe, Status::SGL_INVALID_DATA);
            }
            if self.xfers.len() + self.r2t_wait.len() >= MAX_INFLIGHT {
                // More commands waiting for data than any legal queue (MQES + 1) can hold.
                return self.fail_early(&sqe, Status::INTERNAL);
            }
            if self.xfers.len() >= MAX_R2T {
                self.r2t_wait.push_back((*sqe.0, arrived_gen));
            } else {
                self.issue_r2t(*sqe.0, arrived_gen);
            }
            return;
        }
        self.execute(env, nv, sqe, &[])
    }

    /// A data digest did not match (counted; the first of the connection logged, so a peer
    /// cannot flood the log; the command fails with Transient Transport Error, the connection
    /// stays).
    fn digest_error(&mut self, env: &mut Env<'_>) {
        env.counters.violations += 1;
        self.digest_errors += 1;
        if self.digest_errors == 1 {
            // The host's address: which host's path damages data.
            let peer = crate::transport::tcp::peer_addr(&self.fd)
                .map_or_else(|| "unknown".to_string(), |a| a.to_string());
            tracing::warn!(
                conn = env.key,
                peer = %peer,
                "NVMe/TCP data digest mismatch; the command fails with Transient Transport Error (further ones on this connection are counted, not logged)"
            );
        }
    }

    /// Answer `sqe` with `status` before it was executed (its data damaged, its descriptor
    /// refused, aborted while its data was coming), and its fused partner with it (Base 2.0,
    /// fused operations): a first half held for this second one is aborted as Failed Fused
    /// Command, and if this is a first half, the second half that comes next is too; any other
    /// command leaves a held first half without its second (Missing Fused Command).
    pub(super) fn fail_early(&mut self, sqe: &Sqe<'_>, status: Status) {
        self.respond(sqe.cid(), status, 0);
        if let Some(partner) = self.fusing.answered(sqe.cid(), sqe.fuse()) {
            self.respond(partner, Status::ABORTED_FUSED_FAIL, 0);
        }
    }

    // ----- responses -----

    fn respond(&mut self, cid: u16, status: Status, result: u64) {
        if self.terminated || self.life.broken {
            return;
        }
        // With SQ flow control disabled the host does not track the head: SQHD is FFFFh.
        let sqhd = if self.sqflow_off {
            0xFFFF
        } else {
            self.sqhd as u16
        };
        let c = cmd::cqe(result, sqhd, self.qid, cid, status);
        pdu::put_rsp(&mut self.tx.pending, &c, self.dg);
    }

    /// Send the first `want` bytes of `self.scratch` (zero-padded) for `cid`.
    fn respond_scratch(&mut self, cid: u16, want: u32) {
        let want = want as usize;
        if self.scratch.len() < want {
            self.scratch.resize(want, 0);
        }
        let scratch = std::mem::take(&mut self.scratch);
        self.respond_data(cid, &scratch[..want]);
        self.scratch = scratch;
    }

    // ----- commands -----

    fn execute(&mut self, env: &mut Env<'_>, nv: &NvmfShared, sqe: Sqe<'_>, data: &[u8]) {
        let cid = sqe.cid();
        // The namespace set is the newest (`capsule`, `transfer_done`); `cmd_gen` is the one
        // the command arrived in.
        if self.life.shutting_down {
            return self.fail_early(&sqe, Status::NS_NOT_READY);
        }
        match sqe.fuse() {
            fuse::NONE => {}
            f @ (fuse::FIRST | fuse::SECOND) => {
                if f == fuse::FIRST
                    && (!matches!(self.role, Role::Io) || sqe.opcode() != nvm::COMPARE)
                {
                    return self.fail_early(&sqe, Status::INVALID_FIELD);
                }
                // Paired by the order the capsules came (`fusing.rs`), run once both halves
                // have their data.
                return match self
                    .fusing
                    .ready(cid, f, (*sqe.0, data.to_vec(), self.cmd_gen))
                {
                    fusing::Ready::Run((first, cmp, g1), (second, wdata, g2)) => {
                        // The pair names what was there when its first half arrived.
                        self.cmd_gen = g1.min(g2);
                        self.fused(env, nv, first, cmp, Sqe(&second), &wdata)
                    }
                    fusing::Ready::Wait => {}
                    fusing::Ready::Missing => self.respond(cid, Status::ABORTED_FUSED_MISSING, 0),
                    fusing::Ready::Failed => self.respond(cid, Status::ABORTED_FUSED_FAIL, 0),
                };
            }
            _ => return self.respond(cid, Status::INVALID_FIELD, 0),
        }
        if sqe.opcode() == adm::FABRICS {
            return match sqe.fctype() {
                fctype::CONNECT => self.connect(env, nv, sqe, data),
                fctype::PROPERTY_GET | fctype::PROPERTY_SET
                    if matches!(self.role, Role::Admin(_)) =>
                {
                    self.property(sqe)
                }
                fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                    self.respond(cid, Status::CMD_SEQ_ERROR, 0)
                }
                _ => self.respond(cid, Status::INVALID_OPCODE, 0),
            };
        }
        match self.role {
            Role::None => self.respond(cid, Status::CMD_SEQ_ERROR, 0),
            Role::Admin(_) => self.admin(env, nv, sqe, data),
            Role::Io => self.io(env, nv, sqe, data),
        }
    }

    fn finish(&mut self, mut req: Req, data: &[u8]) {
        if req.status != Status::SUCCESS {
            self.errors += 1;
        }
        self.leaves.extend(req.counted.take());
        if req.op == nvm::COMPARE && req.status == Status::SUCCESS && req.cmp != data {
            req.status = Status::COMPARE_FAILED;
        }
        if req.op == nvm::READ && req.status == Status::SUCCESS {
            self.respond_data(req.cid, data);
        } else {
            self.respond(req.cid, req.status, 0);
        }
        if req.cmp.capacity() > 0 {
            self.spare.push(std::mem::take(&mut req.cmp));
        }
    }

    // ----- socket -----

    fn head_needs(&self) -> usize {
        pdu::needs(&self.rx[self.rx_lo..self.rx_hi])
    }

    fn make_room(&mut self) {
        debug_assert!(!self.life.recv_armed);
        let need = self.head_needs().max(RX_MIN_FREE);
        if self.rx.len() - self.rx_lo < need || self.rx.len() - self.rx_hi < RX_MIN_FREE {
            self.rx.copy_within(self.rx_lo..self.rx_hi, 0);
            self.rx_hi -= self.rx_lo;
            self.rx_lo = 0;
        }
        if self.rx.len() < need + RX_MIN_FREE.min(need) {
            self.rx.resize(need + RX_MIN_FREE, 0);
        }
    }

    fn kato_ms(&self) -> u32 {
        match (&self.role, &self.ctrl) {
            (Role::Admin(_), Some(c)) => c.kato_ms.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// (Re)start the Keep Alive Timer of this admin queue's controller: KATO from now, or
    /// none when KATO is 0 or the timer is not active (`AdminState::ka_off`: disabled or
    /// shut down). Command based (Base 2.0 §3.9, Keep Alive command): called on a Keep Alive
    /// command, a Set Features of KATO, the Connect and the controller's enabling (CC.EN 0
    /// to 1), never on other traffic.
    pub(super) fn restart_keep_alive(&mut self) {
        if matches!(&self.role, Role::Admin(st) if st.ka_off) {
            self.ka_deadline = None;
            return;
        }
        let kato = self.kato_ms();
        self.ka_deadline =
            (kato > 0).then(|| Instant::now() + Duration::from_millis(u64::from(kato)));
    }

    /// The Keep Alive Timer expired: tear the controller down now, so its I/O queues stop at
    /// once, not when this queue closes.
    fn keep_alive_expired(&mut self, env: &Env<'_>) {
        tracing::warn!(
            conn = env.key,
            cntlid = self.ctrl.as_ref().map(|c| c.cntlid),
            "keep-alive timeout: tearing the controller down"
        );
        self.leave();
        self.life.broken = true;
        self.life.closing = true;
    }

    fn arm_recv(&mut self, env: &mut Env<'_>) {
        self.make_room();
        let free = &mut self.rx[self.rx_hi..];
        let recv = opcode::Recv::new(
            types::Fd(self.fd.as_raw_fd()),
            free.as_mut_ptr(),
            free.len() as u32,
        )
        .build()
        .user_data(UserData::new(Kind::Recv, env.key).0);
        let deadline = match self.ka_deadline {
            Some(d) if self.kato_ms() > 0 => Some(d),
            _ => None,
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            return self.keep_alive_expired(env);
        }
        if let Some(deadline) = deadline {
            // The receive waits at most until the Keep Alive Timer expires.
            let left = deadline
                .saturating_duration_since(now)
                .max(Duration::from_micros(1));
            *self.kato_ts = types::Timespec::new()
                .sec(left.as_secs())
                .nsec(left.subsec_nanos());
            let recv = recv.flags(squeue::Flags::IO_LINK);
            let timeout = opcode::LinkTimeout::new(&*self.kato_ts)
                .build()
                .user_data(UserData::new(Kind::Cancel, env.key).0);
            // SAFETY: rx is neither resized nor compacted while the receive is armed; the
            // timespec is boxed in the connection, which outlives the submission (it is not
            // `done` while the receive is armed), and the kernel copies it at submission.
            unsafe { env.io.push_pair(&recv, &timeout) };
            self.kato_armed = true;
        } else {
            // SAFETY: as above; the connection outlives the receive.
            unsafe { env.io.push(&recv) };
            self.kato_armed = false;
        }
        self.life.recv_armed = true;
    }

    /// Leave the controller: an admin queue removes and tears it down, an I/O queue detaches.
    fn leave(&mut self) {
        let Some(c) = self.ctrl.take() else {
            return;
        };
        match self.role {
            Role::Admin(_) => self.nv.registry.remove(c.cntlid),
            Role::Io => c.detach_queue(self.qid),
            Role::None => {}
        }
    }

    fn try_close(&mut self) {
        if self.life.closing
            && !self.life.recv_armed
            && !self.tx.armed()
            && self.reqs.is_empty()
            && (self.tx.unsent() == 0 || self.life.broken)
        {
            self.leave();
            self.life.closed = true;
        }
    }
}

impl Conn for NvmfConn {
    fn start(&mut self, env: &mut Env<'_>) {
        self.arm_recv(env);
    }

    fn on_recv(&mut self, env: &mut Env<'_>, res: i32) {
        self.life.recv_armed = false;
        if res <= 0 {
            if res == -libc::ECANCELED && self.kato_armed && !self.life.cancel_sent {
                // The receive's timeout ran out: the Keep Alive Timer expired, unless the
                // clocks' granularity ended it a little early (then the next receive waits
                // the rest).
                let expired = self.kato_ms() > 0
                    && self
                        .ka_deadline
                        .is_some_and(|d| d.saturating_duration_since(Instant::now()).is_zero());
                if !expired {
                    return;
                }
                return self.keep_alive_expired(env);
            } else if res < 0 && res != -libc::ECANCELED {
                tracing::debug!(conn = env.key, error = %std::io::Error::from_raw_os_error(-res), "receive failed");
                self.life.broken = true;
            }
            self.life.closing = true;
            return;
        }
        self.rx_hi += res as usize;
        self.process(env);
    }

    fn on_send(&mut self, env: &mut Env<'_>, res: i32) {
        // SAFETY: the connection is not done while a send is armed (`try_close`).
        if let Err(res) = unsafe { self.tx.on_send(env.io, self.fd.as_raw_fd(), env.key, res) } {
            if res != -libc::ECANCELED {
                tracing::debug!(conn = env.key, error = %std::io::Error::from_raw_os_error(-res), "send failed");
            }
            self.life.broken = true;
            self.life.closing = true;
        }
    }

    fn volume_of(&self, slot: u32) -> Option<usize> {
        self.reqs.get(slot as usize).map(|r| r.vol)
    }

    fn on_io(&mut self, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        let Some(req) = self.reqs.get_mut(slot as usize) else {
            tracing::error!(slot, "completion for an unknown command slot");
            return;
        };
        if let Err(e) = result {
            req.status = status_of(e, req.op);
        }
        req.parts = req.parts.saturating_sub(1);
        if req.parts > 0 {
            return;
        }
        let req = self.reqs.remove(slot as usize);
        self.finish(req, data);
    }

    fn flush(&mut self, env: &mut Env<'_>) {
        if !self.leaves.is_empty()
            && let Some(sections) = self.nv.sections(env.shared)
        {
            for vol in self.leaves.drain(..) {
                sections.leave(vol, env.io.reactor);
            }
        }
        if self.errors > 0
            && let Some(vc) = env.vol_counters.get_mut(self.err_vol)
        {
            vc.errors += std::mem::take(&mut self.errors);
        }
        if env.stopping && !self.life.shutting_down {
            self.stop(env);
        }
        if !self.life.broken && !self.life.recv_armed && !self.paused() {
            // Commands left in the buffer by backpressure (or by a stop) can run now.
            self.process(env);
        }
        if matches!(self.role, Role::Admin(_)) && self.subsys.as_ref().is_some_and(|s| s.stale()) {
            // A namespace change reaches an idle admin queue here (the control thread's note).
            self.follow_subsys(env.vols);
        }
        self.watch_ana(env);
        self.async_events(env);
        self.settle_drains();
        if self.life.broken {
            self.tx.drop_pending();
        } else {
            // Quiet (its completion needs no turn) when the receive is armed below and the
            // send holds back nothing: not closing, not paused (a pause waits for the send).
            let quiet = !self.life.closing && !self.paused();
            // SAFETY: the connection is not done while a send is armed (`try_close`).
            unsafe {
                self.tx
                    .start_quiet(env.io, self.fd.as_raw_fd(), env.key, quiet)
            };
        }
        if !self.life.closing && !self.life.recv_armed && !self.paused() {
            self.arm_recv(env);
        }
        self.try_close();
        if let Some(h) = &self.host {
            h.set_inflight(self.reqs.len());
        }
        if self.life.closed {
            self.host = None;
        }
    }

    fn stop(&mut self, env: &mut Env<'_>) {
        self.life.stop(env.io, env.key);
    }

    fn host_id(&self) -> Option<u64> {
        self.host.as_ref().map(|h| h.id())
    }

    fn abort(&mut self, env: &mut Env<'_>) {
        // Answers from a home reactor may never come now: stop waiting for them.
        self.reqs.retain(|_, r| !r.remote);
        self.life.abort(env.io, env.key, self.tx.armed());
    }

    fn done(&self) -> bool {
        self.life.closed
    }

    fn on_note(&mut self, env: &mut Env<'_>, note: crate::runtime::Note) {
        let Ok(note) = note.downcast::<Note>() else {
            return;
        };
        match *note {
            Note::Done {
                slot,
                status,
                status2,
                data,
                ..
            } => {
                if !self.reqs.get(slot as usize).is_some_and(|r| r.remote) {
                    return;
                }
                let mut req = self.reqs.remove(slot as usize);
                if req.op == OP_FUSED {
                    if status != Status::SUCCESS || status2 != Status::SUCCESS {
                        self.errors += 1;
                    }
                    self.respond(req.cid, status, 0);
                    self.respond(req.cid2, status2, 0);
                } else {
                    req.status = status;
                    self.finish(req, &data);
                }
            }
            Note::Abort {
                cntlid,
                sqid,
                cid,
                reply,
                ..
            } => {
                reply.answer(self.abort_cmd(cntlid, sqid, cid));
            }
            Note::NsDrain { done, .. } => {
                if self.subsys.as_ref().is_some_and(|s| s.stale()) {
                    self.follow_subsys(env.vols);
                }
                self.ns_drains.push(done);
                self.settle_drains();
            }
            Note::AbortDone {
                cntlid,
                cid,
                aborted,
                ..
            } => {
                let mine = self.ctrl.as_ref().is_some_and(|c| c.cntlid == cntlid);
                if let (true, Role::Admin(st)) = (mine, &mut self.role) {
                    st.aborts = st.aborts.saturating_sub(1);
                    self.respond(cid, Status::SUCCESS, u64::from(!aborted));
                }
            }
            // A path state this admin queue watches changed: `flush`, at the end of this
            // turn, reports it (`async_events`).
            // Likewise for a namespace change (`follow_subsys` in `flush`).
            Note::AnaChanged { .. }
            | Note::NsChanged { .. }
            | Note::Fused(_)
            | Note::Op(_)
            | Note::Drained => {}
        }
    }
}
