//! One NVMe/TCP queue pair (one TCP connection), driven by its reactor.
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
//! - Admin: admin and fabrics property commands for the controller this queue created. Every
//!   receive carries a linked timeout of KATO; a receive that times out tears the controller
//!   down (its I/O queues' sockets are shut down and they close on their own reactors).
//! - Io: NVM commands on the namespaces of the controller's subsystem. Media accesses enter
//!   the volume's atomic section (`atomic`) or are diverted to its home while a fused pair is
//!   pending; fused pairs go to the home; reservation permissions are cached per namespace
//!   and re-read only when the namespace's reservation version moves (`resv`).
//! - Closing: no new PDU is parsed; in-flight device operations finish; the connection is
//!   `done` once no receive, send or device operation is in flight. After a TermReq (sent or
//!   received) or a broken socket no further response is sent.
//!
//! Data movement: write data arrives in the capsule (at most [`INCAPSULE_MAX`] bytes) or, when
//! larger, after one R2T for the whole transfer in H2CData PDUs of at most [`MAXH2CDATA`]
//! bytes. A transfer that arrives in one PDU is written straight from the receive buffer; one
//! in several PDUs is assembled in a reused buffer. Read data leaves in one C2HData PDU (with
//! the SUCCESS flag and no response capsule when the host disabled SQ flow control).
//!
//! Invariants:
//! - `rx` is resized or compacted only while no receive is armed; `tx_sending` is not touched
//!   while its send is armed.
//! - Every command taken from the wire gets exactly one response (CapsuleResp, or C2HData with
//!   SUCCESS), unless the connection terminated or the socket broke; Async Event Requests are
//!   answered when an event occurs or never (the queue closing ends them).
//! - Bad input never panics: every length and index from the wire is checked (`pdu`, `cmd`).
//! - Backpressure: at most [`MAX_INFLIGHT`] commands at the device and about
//!   [`TX_HIGH_WATER`] unsent bytes; past either, the connection stops receiving (both drain
//!   without the host's help, so this cannot deadlock on H2CData still to come). At most
//!   [`MAX_R2T`] R2Ts are outstanding, so a host cannot make a queue hold more than
//!   `MAX_R2T * MAX_XFER` bytes of half-received write data.

use super::atomic::{FusedReq, Note, OpKind, OpReq, Origin};
use super::cmd::{self, Sqe, Status, admin, fctype, feat, fuse, io, lid, prop, sgl};
use super::ctrl::{AttachError, Controller, MAX_IO_QUEUES, Subsystem};
use super::pdu::{self, Digests, Violation, fes, pdu_type};
use super::resv::Access;
use super::{NvmfShared, ctrl};
use crate::bdev::{ReadStart, Start, in_range};
use crate::runtime::Shared;
use crate::runtime::{Conn, Env};
use crate::uring::{Errno, IoTag, Kind, UserData};
use io_uring::{opcode, squeue, types};
use slab::Slab;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
/// Largest queue (0's based): CAP.MQES and the Connect SQSIZE limit.
pub const MQES: u16 = 1023;
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
    ana_seen: u64,
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
    /// Aborted: the data is received and dropped, the command already answered.
    discard: bool,
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
}

/// An NVMe/TCP connection.
pub struct NvmfConn {
    fd: OwnedFd,
    /// The daemon's NVMe-oF state.
    nv: Arc<NvmfShared>,
    phase: Phase,
    role: Role,
    ctrl: Option<Arc<Controller>>,
    subsys: usize,
    qid: u16,
    qsize: u32,
    sqhd: u32,
    sqflow_off: bool,
    dg: Digests,
    c2h_align: usize,
    rx: Vec<u8>,
    rx_lo: usize,
    rx_hi: usize,
    recv_armed: bool,
    tx_sending: Vec<u8>,
    tx_sent: usize,
    send_armed: bool,
    tx_pending: Vec<u8>,
    scratch: Vec<u8>,
    reqs: Slab<Req>,
    xfers: Slab<Xfer>,
    r2t_wait: VecDeque<[u8; cmd::SQE_LEN]>,
    spare: Vec<Vec<u8>>,
    kato_ts: Box<types::Timespec>,
    kato_armed: bool,
    closing: bool,
    /// No more output: a TermReq went out or came in.
    terminated: bool,
    broken: bool,
    shutting_down: bool,
    cancel_sent: bool,
    closed: bool,
    errors: u64,
    err_vol: usize,
    /// The first command of a fused pair, waiting for the second (SQE, data).
    fused_first: Option<([u8; cmd::SQE_LEN], Vec<u8>)>,
    /// Volumes whose atomic section a finished access still has to leave (done in `flush`,
    /// which has the environment).
    leaves: Vec<usize>,
    /// Per namespace index: (reservation version, access) last evaluated.
    resv_cache: Vec<(u64, Access)>,
}

/// The NVMe status for a device error of command `op`.
pub(super) fn status_of(e: Errno, op: u8) -> Status {
    use crate::layer::mirror::engine::META_STATUS;
    match e.0 {
        // A reservation command's status, decided by the mirror's leader site.
        x if x & META_STATUS != 0 => Status((x & 0xFFFF) as u16),
        // The other site could not be reached: nothing was decided.
        libc::EIO if matches!(op, io::RESV_REGISTER | io::RESV_ACQUIRE | io::RESV_RELEASE) => {
            Status::INTERNAL
        }
        libc::EIO if op == io::READ => Status::READ_ERROR,
        libc::EIO => Status::WRITE_FAULT,
        libc::EINVAL => Status::INVALID_FIELD,
        libc::ENOSPC => Status::LBA_RANGE,
        libc::EOPNOTSUPP => Status::INVALID_OPCODE,
        libc::ESHUTDOWN => Status::NS_NOT_READY,
        _ => Status::INTERNAL,
    }
}

/// Where a reservation command goes.
enum Routed {
    /// Decided here, alone (the volume is not mirrored).
    Local,
    /// Decided (or refused) already: answer with this.
    Answer(Status),
    /// Sent to the mirror engine; its completion answers.
    Pending,
}

/// Data direction of a command: opcode bits 1:0 (fctype for fabrics commands) = 01.
fn host_to_ctrl(sqe: &Sqe<'_>) -> bool {
    let op = if sqe.opcode() == admin::FABRICS {
        sqe.fctype()
    } else {
        sqe.opcode()
    };
    op & 3 == 1
}

impl NvmfConn {
    /// A connection on an accepted socket.
    pub fn new(fd: OwnedFd, nv: Arc<NvmfShared>) -> Self {
        crate::transport::tcp::set_nodelay(&fd);
        Self {
            fd,
            nv,
            phase: Phase::AwaitIcReq,
            role: Role::None,
            ctrl: None,
            subsys: 0,
            qid: 0,
            qsize: 1,
            sqhd: 0,
            sqflow_off: false,
            dg: Digests::default(),
            c2h_align: 4,
            rx: vec![0; RX_INITIAL],
            rx_lo: 0,
            rx_hi: 0,
            recv_armed: false,
            tx_sending: Vec::with_capacity(RX_INITIAL),
            tx_sent: 0,
            send_armed: false,
            tx_pending: Vec::with_capacity(RX_INITIAL),
            scratch: Vec::with_capacity(cmd::IDENTIFY_LEN),
            reqs: Slab::with_capacity(128),
            xfers: Slab::with_capacity(MAX_R2T),
            r2t_wait: VecDeque::new(),
            spare: Vec::new(),
            kato_ts: Box::new(types::Timespec::new()),
            kato_armed: false,
            closing: false,
            terminated: false,
            broken: false,
            shutting_down: false,
            cancel_sent: false,
            closed: false,
            errors: 0,
            err_vol: 0,
            fused_first: None,
            leaves: Vec::new(),
            resv_cache: Vec::new(),
        }
    }

    /// Stop receiving. Only what drains without the host's help counts (device operations,
    /// unsent bytes): commands waiting for H2CData must not stop the receive that brings it.
    fn paused(&self) -> bool {
        self.reqs.len() >= MAX_INFLIGHT
            || self.tx_pending.len() + self.tx_sending.len() >= TX_HIGH_WATER
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
        if !self.terminated && !self.broken && v != pdu::DATA_DIGEST_MISMATCH {
            pdu::put_c2h_term(&mut self.tx_pending, v, offending);
        }
        if v == pdu::DATA_DIGEST_MISMATCH {
            self.broken = true;
        }
        self.terminated = true;
        self.closing = true;
    }

    /// Parse and act on every whole PDU in the receive buffer.
    fn process(&mut self, env: &mut Env<'_>) {
        let rx = std::mem::take(&mut self.rx);
        while !self.terminated && !self.broken && self.rx_lo < self.rx_hi {
            // While the daemon stops, commands already received are still answered.
            if (self.closing && !self.shutting_down) || self.paused() {
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
                    self.pdu(env, p);
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

    fn pdu(&mut self, env: &mut Env<'_>, p: pdu::Pdu<'_>) {
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
                self.closing = true;
            }
            (Phase::AwaitIcReq, pdu_type::IC_REQ) => self.ic_req(env, p),
            (Phase::Ready, pdu_type::CMD) => self.capsule(env, p),
            (Phase::Ready, pdu_type::H2C_DATA) => self.h2c_data(env, p),
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

    fn ic_req(&mut self, env: &mut Env<'_>, p: pdu::Pdu<'_>) {
        let Some(ic) = pdu::ic_req(p.header) else {
            return self.fatal(
                env,
                Violation {
                    fes: fes::INVALID_HEADER,
                    fei: 0,
                },
                p.header,
            );
        };
        if ic.pfv != 0 {
            return self.fatal(
                env,
                Violation {
                    fes: fes::INVALID_HEADER,
                    fei: 8,
                },
                p.header,
            );
        }
        if ic.hpda > 31 {
            return self.fatal(
                env,
                Violation {
                    fes: fes::INVALID_HEADER,
                    fei: 10,
                },
                p.header,
            );
        }
        pdu::put_ic_resp(&mut self.tx_pending, 0, ic.digests, MAXH2CDATA);
        self.dg = ic.digests;
        self.c2h_align = (usize::from(ic.hpda) + 1) * 4;
        self.phase = Phase::Ready;
    }

    fn capsule(&mut self, env: &mut Env<'_>, p: pdu::Pdu<'_>) {
        let Some(sqe) = Sqe::new(&p.header[pdu::CH_LEN..]) else {
            return;
        };
        self.sqhd = (self.sqhd + 1) % self.qsize.max(1);
        let cid = sqe.cid();
        if self.shutting_down {
            return self.respond(cid, Status::NS_NOT_READY, 0);
        }
        if !p.data.is_empty() {
            if sqe.sgl_type() != sgl::INCAPSULE || sqe.sgl_addr() != 0 {
                return self.respond(cid, Status::SGL_INVALID_TYPE, 0);
            }
            if sqe.sgl_len() as usize != p.data.len() || p.data.len() > INCAPSULE_MAX as usize {
                return self.respond(cid, Status::SGL_INVALID_DATA, 0);
            }
            return self.execute(env, sqe, p.data);
        }
        if host_to_ctrl(&sqe) && sqe.sgl_len() > 0 {
            if sqe.sgl_type() != sgl::TRANSPORT {
                return self.respond(cid, Status::SGL_INVALID_TYPE, 0);
            }
            let total = sqe.sgl_len();
            if total > MAX_XFER {
                return self.respond(cid, Status::SGL_INVALID_DATA, 0);
            }
            if self.xfers.len() + self.r2t_wait.len() >= MAX_INFLIGHT {
                // More commands waiting for data than any legal queue (MQES + 1) can hold.
                return self.respond(cid, Status::INTERNAL, 0);
            }
            if self.xfers.len() >= MAX_R2T {
                self.r2t_wait.push_back(*sqe.0);
            } else {
                self.issue_r2t(*sqe.0);
            }
            return;
        }
        self.execute(env, sqe, &[])
    }

    /// Ask for a command's data with one R2T covering the whole transfer.
    fn issue_r2t(&mut self, sqe: [u8; cmd::SQE_LEN]) {
        let (cid, total) = (Sqe(&sqe).cid(), Sqe(&sqe).sgl_len());
        let buf = self.spare.pop().unwrap_or_default();
        let ttag = self.xfers.insert(Xfer {
            sqe,
            total,
            received: 0,
            buf,
            discard: false,
        });
        pdu::put_r2t(&mut self.tx_pending, cid, ttag as u16, 0, total, self.dg);
    }

    /// A transfer finished: give its slot to the oldest command waiting for an R2T.
    fn next_r2t(&mut self) {
        if self.xfers.len() < MAX_R2T
            && !self.terminated
            && let Some(sqe) = self.r2t_wait.pop_front()
        {
            self.issue_r2t(sqe);
        }
    }

    fn h2c_data(&mut self, env: &mut Env<'_>, p: pdu::Pdu<'_>) {
        let Some(h) = pdu::data_hdr(p.header) else {
            return;
        };
        let header = |fei| Violation {
            fes: fes::INVALID_HEADER,
            fei,
        };
        let Some(x) = self.xfers.get_mut(h.ttag as usize) else {
            return self.fatal(env, header(pdu::FEI_TTAG), p.header);
        };
        if Sqe(&x.sqe).cid() != h.cid {
            return self.fatal(env, header(8), p.header);
        }
        if h.len as usize != p.data.len() {
            return self.fatal(env, header(pdu::FEI_DATAL), p.header);
        }
        if h.len > MAXH2CDATA {
            let v = Violation {
                fes: fes::DATA_LIMIT_EXCEEDED,
                fei: 0,
            };
            return self.fatal(env, v, p.header);
        }
        let end = u64::from(h.offset) + u64::from(h.len);
        if end > u64::from(x.total) {
            let v = Violation {
                fes: fes::DATA_OUT_OF_RANGE,
                fei: 0,
            };
            return self.fatal(env, v, p.header);
        }
        if h.offset != x.received {
            return self.fatal(env, header(pdu::FEI_DATAO), p.header);
        }
        if h.offset == 0 && h.len == x.total {
            // The whole transfer in one PDU: straight from the receive buffer.
            let x = self.xfers.remove(h.ttag as usize);
            if !x.discard {
                self.execute(env, Sqe(&x.sqe), p.data);
            }
            self.spare.push(x.buf);
            self.next_r2t();
            return;
        }
        if x.buf.len() < x.total as usize {
            x.buf.resize(x.total as usize, 0);
        }
        x.buf[h.offset as usize..end as usize].copy_from_slice(p.data);
        x.received = end as u32;
        if x.received == x.total {
            let x = self.xfers.remove(h.ttag as usize);
            if !x.discard {
                self.execute(env, Sqe(&x.sqe), &x.buf[..x.total as usize]);
            }
            self.spare.push(x.buf);
            self.next_r2t();
        }
    }

    // ----- responses -----

    fn respond(&mut self, cid: u16, status: Status, result: u64) {
        if self.terminated || self.broken {
            return;
        }
        let c = cmd::cqe(result, self.sqhd as u16, self.qid, cid, status);
        pdu::put_rsp(&mut self.tx_pending, &c, self.dg);
    }

    /// Send `data` to the host for command `cid`, then its success response.
    fn respond_data(&mut self, cid: u16, data: &[u8]) {
        if self.terminated || self.broken {
            return;
        }
        if data.is_empty() {
            // Nothing to transfer (a zero-length SGL): a data PDU would carry no data.
            return self.respond(cid, Status::SUCCESS, 0);
        }
        let success = self.sqflow_off;
        pdu::put_c2h_data(
            &mut self.tx_pending,
            cid,
            0,
            data,
            success,
            self.dg,
            self.c2h_align,
        );
        if !success {
            self.respond(cid, Status::SUCCESS, 0);
        }
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

    fn execute(&mut self, env: &mut Env<'_>, sqe: Sqe<'_>, data: &[u8]) {
        let cid = sqe.cid();
        if self.shutting_down {
            return self.respond(cid, Status::NS_NOT_READY, 0);
        }
        match sqe.fuse() {
            fuse::NONE => {
                if let Some((first, _)) = self.fused_first.take() {
                    self.respond(Sqe(&first).cid(), Status::ABORTED_FUSED_MISSING, 0);
                }
            }
            fuse::FIRST => {
                if let Some((first, _)) = self.fused_first.take() {
                    self.respond(Sqe(&first).cid(), Status::ABORTED_FUSED_MISSING, 0);
                }
                if !matches!(self.role, Role::Io) || sqe.opcode() != io::COMPARE {
                    return self.respond(cid, Status::INVALID_FIELD, 0);
                }
                self.fused_first = Some((*sqe.0, data.to_vec()));
                return;
            }
            fuse::SECOND => {
                let Some((first, cmp)) = self.fused_first.take() else {
                    return self.respond(cid, Status::ABORTED_FUSED_MISSING, 0);
                };
                return self.fused(env, first, cmp, sqe, data);
            }
            _ => return self.respond(cid, Status::INVALID_FIELD, 0),
        }
        if sqe.opcode() == admin::FABRICS {
            return match sqe.fctype() {
                fctype::CONNECT => self.connect(env, sqe, data),
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
            Role::Admin(_) => self.admin(env, sqe, data),
            Role::Io => self.io(env, sqe, data),
        }
    }

    fn connect(&mut self, env: &mut Env<'_>, sqe: Sqe<'_>, data: &[u8]) {
        let cid = sqe.cid();
        let invalid = |iattr: u64, ipo: u64| (Status::CONNECT_INVALID_PARAM, (iattr << 16) | ipo);
        let r = self.try_connect(env, sqe, data, invalid);
        match r {
            Ok(cntlid) => self.respond(cid, Status::SUCCESS, u64::from(cntlid)),
            Err((s, result)) => {
                tracing::info!(conn = env.key, status = s.0, "NVMe-oF connect refused");
                self.respond(cid, s, result)
            }
        }
    }

    fn try_connect(
        &mut self,
        env: &mut Env<'_>,
        sqe: Sqe<'_>,
        data: &[u8],
        invalid: impl Fn(u64, u64) -> (Status, u64),
    ) -> Result<u16, (Status, u64)> {
        let nv: &NvmfShared = &self.nv;
        if !matches!(self.role, Role::None) {
            return Err((Status::CMD_SEQ_ERROR, 0));
        }
        if sqe.connect_recfmt() != 0 {
            return Err((Status::CONNECT_FORMAT, 0));
        }
        let Some(cd) = cmd::connect_data(data) else {
            return Err((Status::SGL_INVALID_DATA, 0));
        };
        let discovery = cd.subnqn == cmd::DISCOVERY_NQN.as_bytes();
        let subsys = if discovery {
            None
        } else {
            Some(nv.find(cd.subnqn).ok_or_else(|| invalid(1, 256))?)
        };
        if let Some(s) = subsys
            && !nv.subsystems[s].allows(cd.hostnqn)
        {
            return Err((Status::CONNECT_INVALID_HOST, 0));
        }
        let Ok(hostnqn) = std::str::from_utf8(cd.hostnqn) else {
            return Err(invalid(1, 512));
        };
        let sqsize = sqe.connect_sqsize();
        if sqsize == 0 || sqsize > MQES {
            return Err(invalid(0, 44));
        }
        let qid = sqe.connect_qid();
        let ctrl = if qid == 0 {
            if cd.cntlid != 0xFFFF {
                return Err(invalid(1, 16));
            }
            let c = nv
                .registry
                .create(subsys, hostnqn, cd.hostid, sqe.connect_kato())
                .ok_or((Status::CONNECT_BUSY, 0))?;
            self.role = Role::Admin(AdminState {
                cc: 0,
                csts: 0,
                aec: 0,
                aers: Vec::with_capacity(MAX_AERS),
                ana_seen: nv.ana.change_count(),
            });
            c
        } else {
            let c = nv.registry.get(cd.cntlid).ok_or_else(|| invalid(1, 16))?;
            if c.subsys != subsys || subsys.is_none() {
                return Err(invalid(1, 256));
            }
            if c.hostnqn.as_bytes() != cd.hostnqn || c.hostid != cd.hostid {
                return Err((Status::CONNECT_INVALID_HOST, 0));
            }
            if !c.enabled.load(Ordering::Acquire) {
                return Err((Status::CMD_SEQ_ERROR, 0));
            }
            match c.attach_queue(qid, &self.fd, (env.io.reactor, env.key)) {
                Ok(()) => {}
                Err(AttachError::BadQid) => return Err(invalid(0, 42)),
                Err(AttachError::Dead) | Err(AttachError::NoFd) => {
                    return Err((Status::CONNECT_BUSY, 0));
                }
            }
            self.role = Role::Io;
            c
        };
        self.subsys = subsys.unwrap_or(0);
        self.qid = qid;
        self.qsize = u32::from(sqsize) + 1;
        self.sqflow_off = sqe.connect_cattr() & cmd::CATTR_DISABLE_SQFLOW != 0;
        self.resv_cache.clear();
        let id = ctrl.cntlid;
        self.ctrl = Some(ctrl);
        Ok(id)
    }

    fn property(&mut self, sqe: Sqe<'_>) {
        let cid = sqe.cid();
        let Role::Admin(st) = &mut self.role else {
            return;
        };
        let set = sqe.fctype() == fctype::PROPERTY_SET;
        let eight = sqe.prop_attrib() & 7 == 1;
        let (status, result) = match (set, sqe.prop_offset()) {
            (false, prop::CAP) => {
                let cap = u64::from(MQES) | (1 << 16) | (10 << 24) | (1 << 37);
                (Status::SUCCESS, if eight { cap } else { cap & 0xFFFF_FFFF })
            }
            (false, prop::VS) => (Status::SUCCESS, u64::from(cmd::VERSION)),
            (false, prop::CC) => (Status::SUCCESS, u64::from(st.cc)),
            (false, prop::CSTS) => (Status::SUCCESS, u64::from(st.csts)),
            (true, prop::CC) if !eight => {
                let cc = sqe.prop_value() as u32;
                st.cc = cc;
                let en = cc & 1 != 0;
                st.csts = u32::from(en);
                if (cc >> 14) & 3 != 0 {
                    st.csts |= 2 << 2; // SHST: shutdown complete
                }
                if let Some(c) = &self.ctrl {
                    c.enabled.store(en, Ordering::Release);
                }
                (Status::SUCCESS, 0)
            }
            _ => (Status::INVALID_FIELD, 0),
        };
        self.respond(cid, status, result)
    }

    fn admin(&mut self, env: &mut Env<'_>, sqe: Sqe<'_>, _data: &[u8]) {
        let cid = sqe.cid();
        let Some(ctrl) = self.ctrl.clone() else {
            return self.respond(cid, Status::CMD_SEQ_ERROR, 0);
        };
        let discovery = ctrl.subsys.is_none();
        let wants_data = matches!(sqe.opcode(), admin::IDENTIFY | admin::GET_LOG_PAGE);
        if wants_data && sqe.sgl_type() != sgl::TRANSPORT {
            return self.respond(cid, Status::SGL_INVALID_TYPE, 0);
        }
        if wants_data && sqe.sgl_len() > MAX_XFER {
            return self.respond(cid, Status::SGL_INVALID_DATA, 0);
        }
        match sqe.opcode() {
            admin::IDENTIFY => {
                let s = self.identify(env, &ctrl, sqe);
                if s == Status::SUCCESS {
                    self.respond_scratch(cid, sqe.sgl_len().min(cmd::IDENTIFY_LEN as u32));
                } else {
                    self.respond(cid, s, 0);
                }
            }
            admin::GET_LOG_PAGE => {
                let numd = ((sqe.cdw(11) & 0xFFFF) << 16 | (sqe.cdw(10) >> 16)) + 1;
                let want = (u64::from(numd) * 4).min(u64::from(sqe.sgl_len())) as u32;
                let lpo = u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32);
                let s = self.log_page(env, discovery, sqe);
                if s != Status::SUCCESS {
                    return self.respond(cid, s, 0);
                }
                if lpo % 4 != 0 || lpo > self.scratch.len() as u64 {
                    return self.respond(cid, Status::INVALID_FIELD, 0);
                }
                self.scratch.drain(..lpo as usize);
                self.respond_scratch(cid, want);
            }
            admin::SET_FEATURES => {
                let (s, r) = self.set_features(&ctrl, sqe);
                self.respond(cid, s, r)
            }
            admin::GET_FEATURES if (sqe.cdw(10) & 0xFF) as u8 == feat::HOST_ID => {
                // Only the 128-bit identifier (EXHID = 1) exists on a fabrics controller.
                if sqe.cdw(11) & 1 == 0 {
                    return self.respond(cid, Status::INVALID_FIELD, 0);
                }
                if sqe.sgl_type() != sgl::TRANSPORT {
                    return self.respond(cid, Status::SGL_INVALID_TYPE, 0);
                }
                self.scratch.clear();
                self.scratch.extend_from_slice(&ctrl.hostid);
                self.respond_scratch(cid, sqe.sgl_len().min(16));
            }
            admin::GET_FEATURES => {
                let (s, r) = self.get_features(&ctrl, sqe);
                self.respond(cid, s, r)
            }
            admin::ASYNC_EVENT => {
                let Role::Admin(st) = &mut self.role else {
                    return;
                };
                if st.aers.len() >= MAX_AERS {
                    self.respond(cid, Status::AER_LIMIT, 0)
                } else {
                    st.aers.push(cid);
                }
            }
            admin::KEEP_ALIVE => self.respond(cid, Status::SUCCESS, 0),
            admin::ABORT => self.abort_request(env, &ctrl, sqe),
            _ => self.respond(cid, Status::INVALID_OPCODE, 0),
        }
    }

    /// Fill `self.scratch` with Identify data.
    fn identify(&mut self, env: &Env<'_>, ctrl: &Controller, sqe: Sqe<'_>) -> Status {
        let nv = &self.nv;
        let cns = sqe.cdw(10) & 0xFF;
        self.scratch.clear();
        self.scratch.resize(cmd::IDENTIFY_LEN, 0);
        let sub = ctrl.subsys.and_then(|s| nv.subsystems.get(s));
        match (cns, sub) {
            (0x01, _) => {
                let (subnqn, serial, nn) = match sub {
                    Some(s) => (s.nqn.as_str(), s.serial.as_str(), s.nn()),
                    None => (cmd::DISCOVERY_NQN, "TBDISCOVERY", 0),
                };
                cmd::identify_ctrl(
                    &mut self.scratch,
                    &cmd::CtrlIdentity {
                        cntlid: ctrl.cntlid,
                        subnqn,
                        serial,
                        discovery: sub.is_none(),
                        nn,
                        mdts: MDTS,
                        maxcmd: MQES + 1,
                        incapsule: INCAPSULE_MAX,
                    },
                );
                Status::SUCCESS
            }
            (0x00, Some(s)) => {
                let nsid = sqe.nsid();
                match s.ns(nsid) {
                    Some(ns) => {
                        let info = &env.shared.volumes[ns.volume].info;
                        let bs = info.block_size.max(1);
                        cmd::identify_ns(
                            &mut self.scratch,
                            info.size / u64::from(bs),
                            bs,
                            ns.ana_group,
                            &ns.nguid,
                        );
                        Status::SUCCESS
                    }
                    None => Status::INVALID_NS,
                }
            }
            (0x02, Some(s)) => {
                if sqe.nsid() >= 0xFFFF_FFFE {
                    return Status::INVALID_NS;
                }
                cmd::active_ns_list(
                    &mut self.scratch,
                    s.namespaces.iter().map(|n| n.nsid),
                    sqe.nsid(),
                );
                Status::SUCCESS
            }
            // I/O command set specific namespace / controller for CSI 0 (NVM): nothing beyond
            // the common structures, so all zero (no extra limits).
            (0x05, Some(s)) if sqe.cdw(11) >> 24 == 0 => match s.ns(sqe.nsid()) {
                Some(_) => Status::SUCCESS,
                None => Status::INVALID_NS,
            },
            (0x06, Some(_)) if sqe.cdw(11) >> 24 == 0 => Status::SUCCESS,
            (0x03, Some(s)) => match s.ns(sqe.nsid()) {
                Some(ns) => {
                    cmd::ns_descriptors(&mut self.scratch, &ns.nguid);
                    Status::SUCCESS
                }
                None => Status::INVALID_NS,
            },
            _ => Status::INVALID_FIELD,
        }
    }

    /// Fill `self.scratch` with the whole log page.
    fn log_page(&mut self, _env: &Env<'_>, discovery: bool, sqe: Sqe<'_>) -> Status {
        let nv = &self.nv;
        let id = (sqe.cdw(10) & 0xFF) as u8;
        let lsp = (sqe.cdw(10) >> 8) & 0x7F;
        self.scratch.clear();
        match (id, discovery) {
            (lid::DISCOVERY, true) => {
                let host = self.ctrl.as_ref().map(|c| c.hostnqn.as_str()).unwrap_or("");
                let subs: Vec<&ctrl::Subsystem> = nv
                    .subsystems
                    .iter()
                    .filter(|s| s.allows(host.as_bytes()))
                    .collect();
                let n = (subs.len() * nv.listen.len()) as u64;
                cmd::disc_header(&mut self.scratch, 1, n);
                for s in subs {
                    for (i, a) in nv.listen.iter().enumerate() {
                        let port = a.port().to_string();
                        let addr = a.ip().to_string();
                        cmd::disc_entry(
                            &mut self.scratch,
                            &cmd::DiscEntry {
                                ipv6: a.is_ipv6(),
                                portid: i as u16 + 1,
                                trsvcid: &port,
                                subnqn: &s.nqn,
                                traddr: &addr,
                            },
                        );
                    }
                }
            }
            (lid::DISCOVERY, false) | (_, true) => return Status::INVALID_LOG_PAGE,
            (lid::ERROR, false) => self.scratch.resize(64, 0),
            (lid::SMART, false) => {
                self.scratch.resize(cmd::LOG_512, 0);
                cmd::smart_log(&mut self.scratch);
            }
            (lid::FW_SLOT, false) => {
                self.scratch.resize(cmd::LOG_512, 0);
                cmd::fw_slot_log(&mut self.scratch);
            }
            (lid::CHANGED_NS, false) => self.scratch.resize(cmd::IDENTIFY_LEN, 0),
            (lid::ANA, false) => {
                let Some(s) = self
                    .ctrl
                    .as_ref()
                    .and_then(|c| c.subsys)
                    .and_then(|i| nv.subsystems.get(i))
                else {
                    return Status::INTERNAL;
                };
                let nsids: Vec<u32> = s
                    .namespaces
                    .iter()
                    .filter(|n| n.ana_group == 1)
                    .map(|n| n.nsid)
                    .collect();
                cmd::ana_log(
                    &mut self.scratch,
                    nv.ana.change_count(),
                    &[(1, nv.ana.state(1), &nsids)],
                    lsp & 1 != 0,
                );
                if let Role::Admin(st) = &mut self.role {
                    st.ana_seen = nv.ana.change_count();
                }
            }
            _ => return Status::INVALID_LOG_PAGE,
        }
        Status::SUCCESS
    }

    fn set_features(&mut self, ctrl: &Controller, sqe: Sqe<'_>) -> (Status, u64) {
        let Role::Admin(st) = &mut self.role else {
            return (Status::CMD_SEQ_ERROR, 0);
        };
        if sqe.cdw(10) & (1 << 31) != 0 {
            return (Status::FEAT_NOT_SAVEABLE, 0);
        }
        let v = sqe.cdw(11);
        match (sqe.cdw(10) & 0xFF) as u8 {
            feat::NUM_QUEUES if ctrl.subsys.is_some() => {
                let (nsqr, ncqr) = (v & 0xFFFF, v >> 16);
                if nsqr == 0xFFFF || ncqr == 0xFFFF {
                    return (Status::INVALID_FIELD, 0);
                }
                if ctrl.attached() > 0 {
                    return (Status::CMD_SEQ_ERROR, 0);
                }
                let granted = (nsqr.max(ncqr) + 1).min(u32::from(MAX_IO_QUEUES));
                ctrl.io_queues.store(granted as u16, Ordering::Relaxed);
                let g = u64::from(granted - 1);
                (Status::SUCCESS, (g << 16) | g)
            }
            feat::KATO => {
                ctrl.kato_ms.store(v, Ordering::Relaxed);
                (Status::SUCCESS, 0)
            }
            feat::ASYNC_EVENT => {
                st.aec = v;
                (Status::SUCCESS, 0)
            }
            feat::VOLATILE_WC if ctrl.subsys.is_some() => (Status::SUCCESS, 0),
            // The host identifier comes with Connect and cannot change afterwards.
            feat::HOST_ID => (Status::CMD_SEQ_ERROR, 0),
            _ => (Status::INVALID_FIELD, 0),
        }
    }

    fn get_features(&mut self, ctrl: &Controller, sqe: Sqe<'_>) -> (Status, u64) {
        let Role::Admin(st) = &self.role else {
            return (Status::CMD_SEQ_ERROR, 0);
        };
        match (sqe.cdw(10) & 0xFF) as u8 {
            feat::NUM_QUEUES if ctrl.subsys.is_some() => {
                let g = u64::from(ctrl.io_queues.load(Ordering::Relaxed).max(1) - 1);
                (Status::SUCCESS, (g << 16) | g)
            }
            feat::KATO => (
                Status::SUCCESS,
                u64::from(ctrl.kato_ms.load(Ordering::Relaxed)),
            ),
            feat::ASYNC_EVENT => (Status::SUCCESS, u64::from(st.aec)),
            feat::VOLATILE_WC if ctrl.subsys.is_some() => (Status::SUCCESS, 1),
            _ => (Status::INVALID_FIELD, 0),
        }
    }

    /// The namespace `nsid` of this queue's subsystem, with its ANA state checked.
    fn io_ns<'s>(&self, nv: &'s NvmfShared, nsid: u32) -> Result<(&'s Subsystem, usize), Status> {
        let Some(sub) = nv.subsystems.get(self.subsys) else {
            return Err(Status::INVALID_NS);
        };
        let Some(ns) = sub.ns(nsid) else {
            return Err(Status::INVALID_NS);
        };
        match nv.ana.state(ns.ana_group) {
            cmd::ana::OPTIMIZED | cmd::ana::NON_OPTIMIZED => {}
            cmd::ana::PERSISTENT_LOSS => return Err(Status::ANA_PERSISTENT_LOSS),
            cmd::ana::CHANGE => return Err(Status::ANA_TRANSITION),
            _ => return Err(Status::ANA_INACCESSIBLE),
        }
        Ok((sub, nsid as usize - 1))
    }

    /// What this host may do on namespace index `idx`: one atomic load, and the lock only
    /// when the reservation state changed since the last look.
    fn resv_access(&mut self, sub: &Subsystem, idx: usize) -> Access {
        let v = sub.resv.version(idx);
        if let Some(&(cv, a)) = self.resv_cache.get(idx)
            && cv == v
        {
            return a;
        }
        let host = self.ctrl.as_ref().map_or([0; 16], |c| c.hostid);
        let (v, a) = sub.resv.access(idx, &host);
        if self.resv_cache.len() <= idx {
            self.resv_cache.resize(idx + 1, (u64::MAX, a));
        }
        self.resv_cache[idx] = (v, a);
        a
    }

    /// Hand a media access to the volume's home while a fused pair is pending there.
    #[allow(clippy::too_many_arguments)]
    fn divert(
        &mut self,
        env: &Env<'_>,
        vol: usize,
        mut req: Req,
        kind: OpKind,
        ranges: Vec<(u64, u64)>,
        data: Vec<u8>,
        fua: bool,
    ) {
        let Some(sections) = self.nv.sections(env.shared) else {
            return self.respond(req.cid, Status::INTERNAL, 0);
        };
        req.remote = true;
        let slot = self.reqs.insert(req) as u32;
        let from = Origin {
            reactor: env.io.reactor,
            key: env.key,
            slot,
        };
        sections.to_home(
            vol,
            Note::Op(Box::new(OpReq {
                vol,
                from,
                kind,
                ranges,
                data,
                fua,
            })),
        );
    }

    fn io(&mut self, env: &mut Env<'_>, sqe: Sqe<'_>, data: &[u8]) {
        let cid = sqe.cid();
        let op = sqe.opcode();
        if !matches!(
            op,
            io::READ
                | io::WRITE
                | io::WRITE_ZEROES
                | io::FLUSH
                | io::DSM
                | io::COMPARE
                | io::RESV_REGISTER
                | io::RESV_REPORT
                | io::RESV_ACQUIRE
                | io::RESV_RELEASE
        ) {
            return self.respond(cid, Status::INVALID_OPCODE, 0);
        }
        let shared: &Shared = env.shared;
        let nv = Arc::clone(&self.nv);
        let (sub, idx) = match self.io_ns(&nv, sqe.nsid()) {
            Ok(x) => x,
            Err(s) => return self.respond(cid, s, 0),
        };
        if matches!(
            op,
            io::RESV_REGISTER | io::RESV_REPORT | io::RESV_ACQUIRE | io::RESV_RELEASE
        ) {
            return self.reservation(env, sub, idx, sqe, data);
        }
        let access = self.resv_access(sub, idx);
        let allowed = match op {
            io::READ | io::COMPARE => access.read,
            _ => access.write,
        };
        if !allowed {
            return self.respond(cid, Status::RESERVATION_CONFLICT, 0);
        }
        let vol = sub.namespaces[idx].volume;
        let info = &shared.volumes[vol].info;
        let bs = u64::from(info.block_size.max(1));
        let size = info.size;
        let ranged = |slba: u64, nlb: u64| -> Option<(u64, u64)> {
            let off = slba.checked_mul(bs)?;
            let len = nlb.checked_mul(bs)?;
            in_range(off, len, size).then_some((off, len))
        };
        let me = env.io.reactor;
        let section = self.nv.sections(shared).and_then(|s| s.get(vol));
        // Enter the volume's atomic section (false: divert to its home).
        let enter = || section.is_none_or(|s| s.enter(me));
        let tag = IoTag {
            conn: env.key,
            slot: self.reqs.vacant_key() as u32,
        };
        let mut req = Req {
            cid,
            cid2: 0,
            op,
            parts: 1,
            status: Status::SUCCESS,
            cmp: Vec::new(),
            counted: None,
            remote: false,
        };
        let counted = section.map(|_| vol);
        let started = match op {
            io::READ | io::WRITE | io::WRITE_ZEROES => {
                let Some((off, len)) = ranged(sqe.slba(), u64::from(sqe.nlb())) else {
                    return self.respond(cid, Status::LBA_RANGE, 0);
                };
                let fua = sqe.fua();
                if op != io::WRITE_ZEROES {
                    if len > u64::from(MAX_XFER) {
                        return self.respond(cid, Status::INVALID_FIELD, 0);
                    }
                    if u64::from(sqe.sgl_len()) != len {
                        return self.respond(cid, Status::SGL_INVALID_DATA, 0);
                    }
                    if op == io::WRITE && data.len() as u64 != len {
                        return self.respond(cid, Status::SGL_INVALID_DATA, 0);
                    }
                    if op == io::READ && sqe.sgl_type() != sgl::TRANSPORT {
                        return self.respond(cid, Status::SGL_INVALID_TYPE, 0);
                    }
                }
                env.counters.ios += 1;
                env.vol_counters[vol].ops += 1;
                if op == io::READ {
                    env.counters.read_bytes += len;
                    env.vol_counters[vol].read_bytes += len;
                } else if op == io::WRITE {
                    env.counters.write_bytes += len;
                    env.vol_counters[vol].write_bytes += len;
                }
                if !enter() {
                    let kind = match op {
                        io::READ => OpKind::Read,
                        io::WRITE => OpKind::Write,
                        _ => OpKind::Zeroes,
                    };
                    let d = if op == io::WRITE {
                        data.to_vec()
                    } else {
                        Vec::new()
                    };
                    return self.divert(env, vol, req, kind, vec![(off, len)], d, fua);
                }
                req.counted = counted;
                let chan = &mut env.chans[vol];
                if op == io::WRITE_ZEROES {
                    chan.write_zeroes(env.io, tag, off, len, fua)
                } else if op == io::WRITE {
                    chan.write(env.io, tag, off, data, fua)
                } else {
                    match chan.read(env.io, tag, off, len as u32) {
                        ReadStart::Ready(d) => {
                            self.leaves.extend(counted);
                            self.respond_data(cid, d);
                            return;
                        }
                        ReadStart::Failed(e) => Start::Done(Err(e)),
                        ReadStart::Pending => Start::Pending,
                    }
                }
            }
            io::COMPARE => {
                let Some((off, len)) = ranged(sqe.slba(), u64::from(sqe.nlb())) else {
                    return self.respond(cid, Status::LBA_RANGE, 0);
                };
                if len > u64::from(MAX_XFER) {
                    return self.respond(cid, Status::INVALID_FIELD, 0);
                }
                if data.len() as u64 != len || u64::from(sqe.sgl_len()) != len {
                    return self.respond(cid, Status::SGL_INVALID_DATA, 0);
                }
                env.counters.ios += 1;
                env.vol_counters[vol].ops += 1;
                env.counters.read_bytes += len;
                env.vol_counters[vol].read_bytes += len;
                let mut b = self.spare.pop().unwrap_or_default();
                b.clear();
                b.extend_from_slice(data);
                req.cmp = b;
                if !enter() {
                    return self.divert(
                        env,
                        vol,
                        req,
                        OpKind::Read,
                        vec![(off, len)],
                        Vec::new(),
                        false,
                    );
                }
                req.counted = counted;
                match env.chans[vol].read(env.io, tag, off, len as u32) {
                    ReadStart::Ready(d) => {
                        self.leaves.extend(counted);
                        let s = if d == data {
                            Status::SUCCESS
                        } else {
                            Status::COMPARE_FAILED
                        };
                        self.spare.push(std::mem::take(&mut req.cmp));
                        return self.respond(cid, s, 0);
                    }
                    ReadStart::Failed(e) => Start::Done(Err(e)),
                    ReadStart::Pending => Start::Pending,
                }
            }
            io::FLUSH => {
                env.counters.ios += 1;
                env.vol_counters[vol].ops += 1;
                env.chans[vol].flush(env.io, tag)
            }
            io::DSM => {
                let nr = (sqe.cdw(10) & 0xFF) as usize + 1;
                if sqe.cdw(11) & (1 << 2) == 0 {
                    // Only hints, no deallocation asked: nothing to do.
                    return self.respond(cid, Status::SUCCESS, 0);
                }
                if data.len() < nr * 16 {
                    return self.respond(cid, Status::SGL_INVALID_DATA, 0);
                }
                let ranges = data[..nr * 16].chunks_exact(16).map(|r| {
                    let nlb = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                    let slba =
                        u64::from_le_bytes([r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]]);
                    (slba, u64::from(nlb))
                });
                if ranges.clone().any(|(s, n)| ranged(s, n).is_none()) {
                    return self.respond(cid, Status::LBA_RANGE, 0);
                }
                let ranges = ranges
                    .filter_map(|(s, n)| ranged(s, n))
                    .filter(|&(_, len)| len > 0);
                if !enter() {
                    let list: Vec<(u64, u64)> = ranges.collect();
                    env.counters.ios += list.len() as u64;
                    env.vol_counters[vol].ops += list.len() as u64;
                    return self.divert(env, vol, req, OpKind::Unmap, list, Vec::new(), false);
                }
                req.counted = counted;
                req.parts = 0;
                for (off, len) in ranges {
                    env.counters.ios += 1;
                    env.vol_counters[vol].ops += 1;
                    match env.chans[vol].unmap(env.io, tag, off, len, false) {
                        Start::Pending => req.parts += 1,
                        Start::Done(Err(e)) => req.status = status_of(e, op),
                        Start::Done(Ok(())) => {}
                    }
                }
                if req.parts == 0 {
                    Start::Done(Ok(()))
                } else {
                    Start::Pending
                }
            }
            _ => return self.respond(cid, Status::INVALID_OPCODE, 0),
        };
        match started {
            Start::Done(res) => {
                if let Err(e) = res {
                    req.status = status_of(e, op);
                }
                self.err_vol = vol;
                // Only failures (or DSM/flush/write results) get here: no data to compare.
                if req.cmp.capacity() > 0 {
                    self.spare.push(std::mem::take(&mut req.cmp));
                }
                self.finish(req, &[]);
            }
            Start::Pending => {
                self.err_vol = vol;
                let k = self.reqs.insert(req);
                debug_assert_eq!(k as u32, tag.slot);
            }
        }
    }

    /// Execute a fused Compare (`first`, with `cmp` data) + Write (`sqe`, with `data`) pair:
    /// checked here, run atomically by the volume's home.
    fn fused(
        &mut self,
        env: &mut Env<'_>,
        first: [u8; cmd::SQE_LEN],
        cmp: Vec<u8>,
        sqe: Sqe<'_>,
        data: &[u8],
    ) {
        let c = Sqe(&first);
        let (cid1, cid2) = (c.cid(), sqe.cid());
        let fail = |s: &mut Self, st: Status| {
            s.respond(cid1, st, 0);
            s.respond(cid2, Status::ABORTED_FUSED_FAIL, 0);
        };
        if !matches!(self.role, Role::Io) {
            return fail(self, Status::INVALID_FIELD);
        }
        if c.opcode() != io::COMPARE || sqe.opcode() != io::WRITE {
            return fail(self, Status::INVALID_FIELD);
        }
        if c.nsid() != sqe.nsid() || c.slba() != sqe.slba() || c.nlb() != sqe.nlb() {
            return fail(self, Status::INVALID_FIELD);
        }
        let shared: &Shared = env.shared;
        let nv = Arc::clone(&self.nv);
        let (sub, idx) = match self.io_ns(&nv, c.nsid()) {
            Ok(x) => x,
            Err(s) => return fail(self, s),
        };
        let access = self.resv_access(sub, idx);
        if !access.read || !access.write {
            return fail(self, Status::RESERVATION_CONFLICT);
        }
        let vol = sub.namespaces[idx].volume;
        let info = &shared.volumes[vol].info;
        let bs = u64::from(info.block_size.max(1));
        let nlb = u64::from(c.nlb());
        let Some((off, len)) = c
            .slba()
            .checked_mul(bs)
            .zip(nlb.checked_mul(bs))
            .filter(|&(o, l)| in_range(o, l, info.size))
        else {
            return fail(self, Status::LBA_RANGE);
        };
        if nlb > u64::from(cmd::ACWU_BLOCKS) || len > u64::from(MAX_XFER) {
            return fail(self, Status::INVALID_FIELD);
        }
        if cmp.len() as u64 != len || data.len() as u64 != len {
            return fail(self, Status::SGL_INVALID_DATA);
        }
        let Some(sections) = self.nv.sections(shared) else {
            return fail(self, Status::INTERNAL);
        };
        let Some(sec) = sections.get(vol) else {
            return fail(self, Status::INTERNAL);
        };
        env.counters.ios += 2;
        env.vol_counters[vol].ops += 2;
        env.counters.read_bytes += len;
        env.vol_counters[vol].read_bytes += len;
        env.counters.write_bytes += len;
        env.vol_counters[vol].write_bytes += len;
        let slot = self.reqs.insert(Req {
            cid: cid1,
            cid2,
            op: OP_FUSED,
            parts: 1,
            status: Status::SUCCESS,
            cmp: Vec::new(),
            counted: None,
            remote: true,
        }) as u32;
        sec.begin_fused();
        let from = Origin {
            reactor: env.io.reactor,
            key: env.key,
            slot,
        };
        sections.to_home(
            vol,
            Note::Fused(Box::new(FusedReq {
                vol,
                from,
                off,
                cmp,
                data: data.to_vec(),
                fua: sqe.fua(),
            })),
        );
    }

    /// Reservation Register / Report / Acquire / Release on namespace index `idx`.
    fn reservation(
        &mut self,
        env: &mut Env<'_>,
        sub: &Subsystem,
        idx: usize,
        sqe: Sqe<'_>,
        data: &[u8],
    ) {
        let cid = sqe.cid();
        let op = sqe.opcode();
        let cdw10 = sqe.cdw(10);
        let key = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
        };
        if op == io::RESV_REPORT {
            // Report: NVMe over Fabrics hosts have 128-bit identifiers, so only the
            // extended data structure (EDS = 1) can describe them.
            if sqe.cdw(11) & 1 == 0 {
                return self.respond(cid, Status::HOST_ID_INCONSISTENT, 0);
            }
            if sqe.sgl_type() != sgl::TRANSPORT {
                return self.respond(cid, Status::SGL_INVALID_TYPE, 0);
            }
            let numd = u64::from(cdw10) + 1;
            let want = (numd * 4)
                .min(u64::from(sqe.sgl_len()))
                .min(u64::from(MAX_XFER)) as u32;
            let Some(snap) = sub.resv.snapshot(idx) else {
                return self.respond(cid, Status::INVALID_NS, 0);
            };
            snap.report_ext(&mut self.scratch);
            return self.respond_scratch(cid, want);
        }
        // Register (CRKEY, NRKEY), Acquire (CRKEY, PRKEY), Release (CRKEY).
        let key2 = if op == io::RESV_RELEASE {
            Some(0)
        } else {
            key(8)
        };
        let (Some(key1), Some(key2)) = (key(0), key2) else {
            return self.respond(cid, Status::SGL_INVALID_DATA, 0);
        };
        let iekey = cdw10 & (1 << 3) != 0;
        let invalid = if op == io::RESV_REGISTER {
            // CPTPL: 00b no change, 11b persist; the state always persists, so 10b (stop
            // persisting) cannot be honoured.
            matches!(cdw10 >> 30, 1 | 2)
        } else {
            iekey
        };
        if invalid {
            return self.respond(cid, Status::INVALID_FIELD, 0);
        }
        let cmd = super::resv::ResvCmd {
            nqn: sub.nqn.clone(),
            nsid: idx as u32 + 1,
            opcode: op,
            cdw10,
            host: self.ctrl.as_ref().map_or([0; 16], |c| c.hostid),
            key1,
            key2,
        };
        let status = match self.replicated_reservation(env, sub, idx, cid, &cmd) {
            Routed::Local => sub.resv.update(idx, |n| cmd.apply(n)),
            Routed::Answer(status) => status,
            Routed::Pending => return,
        };
        if status != Status::SUCCESS {
            self.errors += 1;
        }
        self.respond(cid, status, 0)
    }

    /// A Register/Acquire/Release on a mirrored volume's namespace goes to the volume's mirror
    /// engine, whose leader site decides it for both sites (docs/nvmf.md); on any other
    /// namespace it is decided here (`Routed::Local`).
    fn replicated_reservation(
        &mut self,
        env: &mut Env<'_>,
        sub: &Subsystem,
        idx: usize,
        cid: u16,
        cmd: &super::resv::ResvCmd,
    ) -> Routed {
        let Some(vol) = sub.namespaces.get(idx).map(|ns| ns.volume) else {
            return Routed::Local;
        };
        let tag = IoTag {
            conn: env.key,
            slot: self.reqs.vacant_key() as u32,
        };
        let Some(started) = env
            .chans
            .get_mut(vol)
            .and_then(|c| c.meta(env.io, tag, &cmd.encode()))
        else {
            return Routed::Local;
        };
        match started {
            Start::Done(Ok(())) => Routed::Answer(Status::SUCCESS),
            Start::Done(Err(e)) => Routed::Answer(status_of(e, cmd.opcode)),
            Start::Pending => {
                self.err_vol = vol;
                let k = self.reqs.insert(Req {
                    cid,
                    cid2: 0,
                    op: cmd.opcode,
                    parts: 1,
                    status: Status::SUCCESS,
                    cmp: Vec::new(),
                    counted: None,
                    remote: false,
                });
                debug_assert_eq!(k as u32, tag.slot);
                Routed::Pending
            }
        }
    }

    /// An Abort from the admin queue for command `cid` of this queue.
    fn abort_cmd(&mut self, cntlid: u16, sqid: u16, cid: u16) -> bool {
        let mine = matches!(self.role, Role::Io)
            && self.qid == sqid
            && self.ctrl.as_ref().is_some_and(|c| c.cntlid == cntlid);
        if !mine || self.terminated || self.broken {
            return false;
        }
        // Not yet given an R2T: drop it.
        if let Some(pos) = self.r2t_wait.iter().position(|s| Sqe(s).cid() == cid) {
            self.r2t_wait.remove(pos);
            self.respond(cid, Status::ABORT_REQUESTED, 0);
            return true;
        }
        // R2T sent, data still to come: the data will be received and dropped.
        if let Some((_, x)) = self
            .xfers
            .iter_mut()
            .find(|(_, x)| !x.discard && Sqe(&x.sqe).cid() == cid)
        {
            x.discard = true;
            self.respond(cid, Status::ABORT_REQUESTED, 0);
            return true;
        }
        // The first half of a fused pair still waiting for its second.
        if self
            .fused_first
            .as_ref()
            .is_some_and(|(s, _)| Sqe(s).cid() == cid)
        {
            self.fused_first = None;
            self.respond(cid, Status::ABORT_REQUESTED, 0);
            return true;
        }
        false
    }

    fn finish(&mut self, mut req: Req, data: &[u8]) {
        if req.status != Status::SUCCESS {
            self.errors += 1;
        }
        self.leaves.extend(req.counted.take());
        if req.op == io::COMPARE && req.status == Status::SUCCESS && req.cmp != data {
            req.status = Status::COMPARE_FAILED;
        }
        if req.op == io::READ && req.status == Status::SUCCESS {
            self.respond_data(req.cid, data);
        } else {
            self.respond(req.cid, req.status, 0);
        }
        if req.cmp.capacity() > 0 {
            self.spare.push(std::mem::take(&mut req.cmp));
        }
    }

    /// Admin Abort: cdw10 = SQID (bits 15:0), CID (bits 31:16). A held Async Event Request is
    /// aborted here; a command of an I/O queue is looked for by that queue's reactor, which
    /// answers with `Note::AbortDone`.
    fn abort_request(&mut self, env: &Env<'_>, ctrl: &Controller, sqe: Sqe<'_>) {
        let cid = sqe.cid();
        let sqid = (sqe.cdw(10) & 0xFFFF) as u16;
        let target = (sqe.cdw(10) >> 16) as u16;
        if sqid == 0 {
            let Role::Admin(st) = &mut self.role else {
                return;
            };
            return match st.aers.iter().position(|&c| c == target) {
                Some(pos) => {
                    st.aers.remove(pos);
                    self.respond(target, Status::ABORT_REQUESTED, 0);
                    self.respond(cid, Status::SUCCESS, 0)
                }
                None => self.respond(cid, Status::SUCCESS, 1),
            };
        }
        let (Some((reactor, key)), Some(sections)) =
            (ctrl.queue_at(sqid), self.nv.sections(env.shared))
        else {
            // No such queue: nothing to abort (result bit 0 = 1, "not aborted").
            return self.respond(cid, Status::SUCCESS, 1);
        };
        let reply = Origin {
            reactor: env.io.reactor,
            key: env.key,
            slot: u32::from(cid),
        };
        sections.send(
            reactor,
            Note::Abort {
                key,
                cntlid: ctrl.cntlid,
                sqid,
                cid: target,
                reply,
            },
        );
    }

    /// Complete one held Async Event Request when the ANA state changed.
    fn async_events(&mut self, _env: &Env<'_>) {
        let chg = self.nv.ana.change_count();
        let Role::Admin(st) = &mut self.role else {
            return;
        };
        if st.ana_seen == chg || st.aers.is_empty() || st.aec & (1 << 11) == 0 {
            return;
        }
        st.ana_seen = chg;
        let cid = st.aers.remove(0);
        // Notice (type 2), ANA change (info 0x03), log page 0x0C.
        let result = 0x2 | (0x03 << 8) | (u64::from(lid::ANA) << 16);
        self.respond(cid, Status::SUCCESS, result);
    }

    // ----- socket -----

    fn head_needs(&self) -> usize {
        pdu::needs(&self.rx[self.rx_lo..self.rx_hi])
    }

    fn make_room(&mut self) {
        debug_assert!(!self.recv_armed);
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
        let kato = self.kato_ms();
        if kato > 0 {
            *self.kato_ts = types::Timespec::new()
                .sec(u64::from(kato / 1000))
                .nsec((kato % 1000) * 1_000_000);
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
        self.recv_armed = true;
    }

    fn arm_send(&mut self, env: &mut Env<'_>) {
        let rest = &self.tx_sending[self.tx_sent..];
        // SAFETY: tx_sending is not modified while the send is armed (invariant), and the
        // connection outlives it.
        unsafe { env.io.push_send(self.fd.as_raw_fd(), rest, env.key) };
        self.send_armed = true;
    }

    fn cancel(&mut self, env: &mut Env<'_>, kind: Kind) {
        let sqe = opcode::AsyncCancel::new(UserData::new(kind, env.key).0)
            .build()
            .user_data(UserData::new(Kind::Cancel, env.key).0);
        // SAFETY: a cancel references no user memory.
        unsafe { env.io.push(&sqe) };
    }

    /// Leave the controller: an admin queue removes and tears it down, an I/O queue detaches.
    fn leave(&mut self, _env: &Env<'_>) {
        let Some(c) = self.ctrl.take() else {
            return;
        };
        match self.role {
            Role::Admin(_) => self.nv.registry.remove(c.cntlid),
            Role::Io => c.detach_queue(self.qid),
            Role::None => {}
        }
    }

    fn try_close(&mut self, env: &Env<'_>) {
        if self.closing && !self.recv_armed && !self.send_armed && self.reqs.is_empty() {
            let unsent = self.tx_pending.len() + self.tx_sending.len() - self.tx_sent;
            if unsent == 0 || self.broken {
                self.leave(env);
                self.closed = true;
            }
        }
    }
}

impl Conn for NvmfConn {
    fn start(&mut self, env: &mut Env<'_>) {
        self.arm_recv(env);
    }

    fn on_recv(&mut self, env: &mut Env<'_>, res: i32) {
        self.recv_armed = false;
        if res <= 0 {
            if res == -libc::ECANCELED && self.kato_armed && !self.cancel_sent {
                tracing::warn!(
                    conn = env.key,
                    cntlid = self.ctrl.as_ref().map(|c| c.cntlid),
                    "keep-alive timeout: tearing the controller down"
                );
                // Tear down now so the I/O queues stop at once, not when this one closes.
                self.leave(env);
                self.broken = true;
            } else if res < 0 && res != -libc::ECANCELED {
                tracing::debug!(conn = env.key, error = %std::io::Error::from_raw_os_error(-res), "receive failed");
                self.broken = true;
            }
            self.closing = true;
            return;
        }
        self.rx_hi += res as usize;
        self.process(env);
    }

    fn on_send(&mut self, env: &mut Env<'_>, res: i32) {
        self.send_armed = false;
        if res <= 0 {
            if res != -libc::ECANCELED {
                tracing::debug!(conn = env.key, error = %std::io::Error::from_raw_os_error(-res), "send failed");
            }
            self.broken = true;
            self.closing = true;
            return;
        }
        self.tx_sent += res as usize;
        if self.tx_sent < self.tx_sending.len() {
            self.arm_send(env);
        } else {
            self.tx_sending.clear();
            self.tx_sent = 0;
        }
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
        if env.stopping && !self.shutting_down {
            self.stop(env);
        }
        if !self.broken && !self.recv_armed && !self.paused() {
            // Commands left in the buffer by backpressure (or by a stop) can run now.
            self.process(env);
        }
        self.async_events(env);
        if self.broken {
            self.tx_pending.clear();
        } else if !self.send_armed && !self.tx_pending.is_empty() {
            std::mem::swap(&mut self.tx_sending, &mut self.tx_pending);
            self.tx_pending.clear();
            self.tx_sent = 0;
            self.arm_send(env);
        }
        if !self.closing && !self.recv_armed && !self.paused() {
            self.arm_recv(env);
        }
        self.try_close(env);
    }

    fn stop(&mut self, env: &mut Env<'_>) {
        self.shutting_down = true;
        self.closing = true;
        if self.recv_armed && !self.cancel_sent {
            self.cancel_sent = true;
            self.cancel(env, Kind::Recv);
        }
    }

    fn abort(&mut self, env: &mut Env<'_>) {
        self.broken = true;
        self.closing = true;
        // Answers from a home reactor may never come now: stop waiting for them.
        self.reqs.retain(|_, r| !r.remote);
        if self.recv_armed {
            self.cancel_sent = true;
            self.cancel(env, Kind::Recv);
        }
        if self.send_armed {
            self.cancel(env, Kind::Send);
        }
    }

    fn done(&self) -> bool {
        self.closed
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
                let aborted = self.abort_cmd(cntlid, sqid, cid);
                if let Some(s) = self.nv.sections(env.shared) {
                    s.send(
                        reply.reactor,
                        Note::AbortDone {
                            key: reply.key,
                            cntlid,
                            cid: reply.slot as u16,
                            aborted,
                        },
                    );
                }
            }
            Note::AbortDone {
                cntlid,
                cid,
                aborted,
                ..
            } => {
                let mine = matches!(self.role, Role::Admin(_))
                    && self.ctrl.as_ref().is_some_and(|c| c.cntlid == cntlid);
                if mine {
                    self.respond(cid, Status::SUCCESS, u64::from(!aborted));
                }
            }
            Note::Fused(_) | Note::Op(_) | Note::Drained => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_direction_follows_opcode_bits() {
        let mut s = [0u8; 64];
        s[0] = io::WRITE;
        assert!(host_to_ctrl(&Sqe(&s)));
        s[0] = io::READ;
        assert!(!host_to_ctrl(&Sqe(&s)));
        s[0] = admin::FABRICS;
        s[4] = fctype::CONNECT;
        assert!(host_to_ctrl(&Sqe(&s)));
        s[4] = fctype::PROPERTY_GET;
        assert!(!host_to_ctrl(&Sqe(&s)));
    }

    #[test]
    fn errno_maps_to_status() {
        assert_eq!(status_of(Errno::IO, io::READ), Status::READ_ERROR);
        assert_eq!(status_of(Errno::IO, io::WRITE), Status::WRITE_FAULT);
        assert_eq!(status_of(Errno::SHUTDOWN, io::WRITE), Status::NS_NOT_READY);
        assert_eq!(status_of(Errno(libc::EBADF), io::WRITE), Status::INTERNAL);
    }
}
