//! One iSCSI connection of a session, driven by its reactor (the session's state shared by its
//! connections: `mcs.rs`).
//!
//! ```text
//!  start ──> Login (security ─> operational) ──(T, NSG=3)──> Full feature ──(Logout)──> Closing
//!               │ reject, violation                            │ EOF, violation, stop
//!               └───────────────────────> Closing <────────────┘
//! ```
//! - Login: every Login Request is answered by one Login Response; a failed login is answered
//!   with its status and the connection closes. Digests start with the first PDU after the
//!   final Login Response.
//! - Full feature: every whole PDU in the receive buffer is acted on in arrival order. SCSI
//!   commands become tasks (`task.rs`); NOP-Out, Text, Task Management and Logout are answered
//!   here. A discovery session takes only SendTargets and Logout (`discovery.rs`). Answers accumulate in the send queue (`transport::tcp::SendQueue`) and leave in one
//!   send per turn.
//! - Closing: no new PDU is acted on; the connection is `done` once no receive, send or
//!   device operation is in flight. A stop from outside (the daemon stopping, a forced
//!   removal) in full feature phase first queues an Async Message saying the session is
//!   dropped, which leaves before the socket closes.
//!
//! Session state (RFC 7143 §4.2.2, shared by the session's connections: `mcs::Session`):
//! ExpCmdSN moves by one for every non-immediate command taken in order, on whichever
//! connection; a non-immediate command outside `[ExpCmdSN, MaxCmdSN]` is silently ignored
//! (§4.2.2.1), one ahead of ExpCmdSN waits in the session's `held` until the gap closes; a
//! second command with the CmdSN of one already held is a duplicate, silently ignored too.
//! `stat_sn` is the connection's: it moves by one for every PDU that carries a status (SCSI
//! Response, the Data-In with status, NOP-In answering a NOP-Out, Text, TMF, Logout, Login
//! Responses, Reject, Async Message).
//!
//! Invariants:
//! - `rx` is resized or compacted only while no receive is armed; the bytes being sent are not
//!   touched while their send is armed (`SendQueue`). The kernel never sees a buffer move.
//! - Every task that reached a device gets exactly one SCSI status, unless it was aborted by a
//!   task management function or the socket broke.
//! - Backpressure: at most [`MAX_TASKS`] tasks and about [`TX_HIGH_WATER`] unsent bytes; past
//!   either, the connection stops reading until they drain.

mod alua;
mod copy;
mod dataout;
mod discovery;
mod excl;
mod mcs;
mod session;
mod task;

use crate::frontend::iscsi::IscsiShared;
use crate::frontend::iscsi::login::{self, Negotiation, Params, SessionType};
use crate::frontend::iscsi::pdu::{self, Bhs, Digests, NO_TAG, Req, Violation, op, reject};
use crate::runtime::{Conn, Env};
use crate::transport::tcp::{Lifecycle, SendQueue};
use crate::uring::{Errno, Kind, UserData};
use io_uring::{opcode, squeue, types};
pub use mcs::SessEntry;
use slab::Slab;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use task::Task;

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Collecting Data-Out.
    Collect,
    /// Operations at a device (or at the home executor).
    Device,
    /// Refused (or its data sequence broken): the Data-Out still owed is read and dropped,
    /// then the task is answered (`dataout.rs`; RESERVATION CONFLICT when `conflict`).
    Drain { conflict: bool },
}

/// The CmdSN window: MaxCmdSN = ExpCmdSN + CMD_WINDOW - 1.
pub const CMD_WINDOW: u32 = 128;
/// Tasks one connection may have before it stops reading: twice the window, so an initiator
/// that keeps to the window never meets it (its Data-Out for tasks waiting on R2Ts is always
/// read); only a flood of immediate commands does.
pub const MAX_TASKS: usize = 2 * CMD_WINDOW as usize;
/// Seconds an initiator is asked to wait before logging in again after the target dropped
/// its session (Async Message, Parameter2).
pub(super) const DROP_TIME2WAIT: u16 = 2;

/// Unsent bytes past which the connection stops reading.
pub const TX_HIGH_WATER: usize = 64 << 20;
const RX_INITIAL: usize = 512 << 10;
const RX_MIN_FREE: usize = 64 << 10;
/// Commands held for a CmdSN gap at most, per session: every command the window admits
/// (ExpCmdSN itself is the one missing), so an initiator that keeps to the announced window
/// is never refused (RFC 7143 §4.2.2.1; MC/S spreads commands over connections, and one
/// lagging connection leaves gaps). Memory: at most this many PDUs, each with at most the
/// negotiated immediate data.
const MAX_HELD: usize = CMD_WINDOW as usize - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Login,
    Full,
}

/// A Text exchange spanning several PDUs (RFC 7143 §11.10-11.11), tied to its ITT and to the
/// TTT the target gave it.
struct TextSeq {
    itt: u32,
    ttt: u32,
    /// Request text gathered (C bit) and not answered yet.
    req: Vec<u8>,
    /// The answer, and how much of it was sent.
    rsp: Vec<u8>,
    sent: usize,
}

/// Login progress.
pub(super) struct LoginState {
    pub(super) neg: Negotiation,
    /// The stage of the last request (0 security, 1 operational).
    pub(super) csg: u8,
    pub(super) isid: [u8; 6],
    pub(super) first: bool,
    /// Continued text (C bit) not yet answered.
    pub(super) text: Vec<u8>,
    /// The security stage passed (AuthMethod None, or CHAP done).
    pub(super) authenticated: bool,
    /// The CHAP exchange, once AuthMethod=CHAP was agreed.
    pub(super) chap: Option<crate::frontend::iscsi::chap::Stage>,
}

/// An iSCSI connection.
pub struct IscsiConn {
    pub(super) fd: OwnedFd,
    pub(super) sh: Arc<IscsiShared>,
    pub(super) phase: Phase,
    pub(super) login: Option<Box<LoginState>>,
    pub(super) session: SessionType,
    /// Index of the target (normal sessions).
    pub(super) target: Arc<super::IscsiTarget>,
    pub(super) initiator: String,
    pub(super) isid: [u8; 6],
    pub(super) tsih: u16,
    /// This connection's CID.
    pub(super) cid: u16,
    /// Its session in the reactor's local table (`mcs.rs`), from the final Login Response.
    pub(super) sess: Option<usize>,
    /// A joining login's session, found on this reactor at its first request.
    pub(super) join: Option<(usize, mcs::SessEntry)>,
    /// A joining login's session lives on this reactor: hand the connection over to it.
    pub(super) handoff: Option<usize>,
    /// Closed by its session (a Logout of it or of the session, a reinstatement, a failure).
    pub(super) told: bool,
    /// Shares of what waits for this connection to be gone (`mcs::What::Close`): released
    /// when it is dropped.
    held_until_dropped: Vec<mcs::Share>,
    /// The close of the sessions (or the connection) this login reinstated: done once all of
    /// their connections are gone (`mcs::IscsiConn::reinstate_sessions`).
    pub(super) old_closing: Vec<Arc<crate::frontend::iscsi::reset::Settle>>,
    /// The final Login Response, held until all of `old_closing` is done (its header and
    /// keys).
    pub(super) held_login: Option<(
        Vec<Arc<crate::frontend::iscsi::reset::Settle>>,
        Bhs,
        Vec<u8>,
    )>,
    /// Its Logout was answered.
    pub(super) logged_out: bool,
    /// This session's number at this site, 0 before login.
    pub(super) nexus: u64,
    /// Its RESERVE reservation id (`spc2::res_id`: site, process, session), 0 before login.
    pub(super) res: [u8; 16],
    /// The I_T nexus loss was carried (the session's RESERVEs released), or nothing to carry.
    pub(super) nexus_lost: bool,
    /// Its persistent-reservation registrant id (initiator name and ISID).
    pub(super) me: [u8; 16],
    /// Persistent-reservation access and RESERVE view per LUN index, with the state version
    /// they were read at.
    pub(super) pr_cache: Vec<
        Option<(
            u64,
            crate::frontend::nvmf::resv::Access,
            crate::frontend::iscsi::spc2::View,
        )>,
    >,
    pub(super) params: Params,
    pub(super) dg: Digests,
    pub(super) stat_sn: u32,
    /// ExpCmdSN during login (afterwards the session's: [`IscsiConn::exp`]).
    pub(super) exp_cmd_sn: u32,
    tasks: Slab<Task>,
    /// Recycled buffers for Data-Out and read data.
    pub(super) pool: Vec<Vec<u8>>,
    pub(super) next_ttt: u32,
    /// The Text exchange under way (a request gathered or an answer sent in parts).
    text_seq: Option<Box<TextSeq>>,
    /// A Logout waiting for the tasks to finish: its ITT and reason.
    pub(super) logout: Option<(u32, u8)>,
    /// Task management responses waiting for aborted tasks at the device and for other
    /// sessions' aborts (`session.rs`).
    pub(super) tmf_wait: Vec<session::TmfWait>,
    /// Aborts another session's reset asked for (`reset::LuAbort`), each with the slots of
    /// the aborted tasks still at a device: the note is dropped (its share released) once
    /// they have finished, or with the connection.
    /// Also another connection's task management (`mcs::Share`).
    pub(super) abort_wait: Vec<(Box<dyn std::any::Any + Send>, Vec<u32>)>,
    /// Volumes whose atomic section a retired task entered: left in `flush`.
    pub(super) leaves: Vec<usize>,
    /// EXTENDED COPY runs whose device operation completed: stepped in `flush` (`copy.rs`).
    pub(super) copy_ready: Vec<u32>,
    /// Statuses of finished copies with a held list identifier (RECEIVE COPY RESULTS).
    pub(super) copy_results: Vec<crate::frontend::iscsi::xcopy::Held>,
    /// Where this session's host is, from the host list (`None`: not listed), looked up once
    /// at login (`bdev::host_path`).
    pub(super) host_site: Option<crate::bdev::host_path::Site>,
    /// SET TARGET PORT GROUPS tasks waiting for their switchover (`alua.rs`).
    pub(super) stpg_waiting: u32,
    /// The idle-ping timeout of the armed receive (boxed: the kernel reads it at submission).
    ping_ts: Box<types::Timespec>,
    /// The armed receive carries the idle-ping timeout.
    ping_armed: bool,
    /// A NOP-In ping is out and nothing arrived since.
    ping_pending: bool,
    rx: Vec<u8>,
    rx_lo: usize,
    rx_hi: usize,
    pub(super) tx: SendQueue,
    /// Receive armed, closing, broken, stopping, closed.
    pub(super) life: Lifecycle,
    pub(super) errors: u64,
    /// This session's entry in the hosts registry (normal sessions, from login until closed).
    pub(super) host: Option<crate::runtime::hosts::HostHandle>,
}

impl IscsiConn {
    /// A connection on an accepted socket.
    pub fn new(fd: OwnedFd, sh: Arc<IscsiShared>) -> Self {
        crate::transport::tcp::set_nodelay(&fd);
        Self {
            fd,
            sh,
            phase: Phase::Login,
            login: None,
            session: SessionType::Normal,
            target: Arc::new(super::IscsiTarget {
                iqn: String::new(),
                luns: Vec::new(),
                allowed: Vec::new(),
                chap: None,
                runtime: false,
            }),
            initiator: String::new(),
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            sess: None,
            join: None,
            handoff: None,
            told: false,
            held_until_dropped: Vec::new(),
            old_closing: Vec::new(),
            held_login: None,
            logged_out: false,
            nexus: 0,
            res: [0; 16],
            nexus_lost: false,
            me: [0; 16],
            pr_cache: Vec::new(),
            params: Params::default(),
            dg: Digests::default(),
            stat_sn: 0,
            exp_cmd_sn: 0,
            tasks: Slab::with_capacity(64),
            pool: Vec::new(),
            next_ttt: 1,
            text_seq: None,
            logout: None,
            tmf_wait: Vec::new(),
            abort_wait: Vec::new(),
            leaves: Vec::new(),
            copy_ready: Vec::new(),
            copy_results: Vec::new(),
            host_site: None,
            stpg_waiting: 0,
            ping_ts: Box::new(types::Timespec::new()),
            ping_armed: false,
            ping_pending: false,
            rx: vec![0; RX_INITIAL],
            rx_lo: 0,
            rx_hi: 0,
            tx: SendQueue::with_capacity(RX_INITIAL),
            life: Lifecycle::default(),
            errors: 0,
            host: None,
        }
    }

    /// A connection handed over from another reactor (`mcs.rs`): the socket and the bytes
    /// received so far, parsed from the first.
    fn handed(fd: OwnedFd, sh: Arc<IscsiShared>, bytes: &[u8]) -> Self {
        let mut c = Self::new(fd, sh);
        if c.rx.len() < bytes.len() + RX_MIN_FREE {
            c.rx.resize(bytes.len() + RX_MIN_FREE, 0);
        }
        c.rx[..bytes.len()].copy_from_slice(bytes);
        c.rx_hi = bytes.len();
        c
    }

    /// MaxCmdSN: the window is [`CMD_WINDOW`] commands wide.
    pub(super) fn max_cmd_sn(&self) -> u32 {
        self.exp().wrapping_add(CMD_WINDOW - 1)
    }

    /// ExpCmdSN and MaxCmdSN, for a response header (one look at the session).
    pub(super) fn window(&self) -> (u32, u32) {
        let exp = self.exp();
        (exp, exp.wrapping_add(CMD_WINDOW - 1))
    }

    /// The next StatSN (it moves by one).
    pub(super) fn take_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    /// Append a PDU with this connection's digests.
    pub(super) fn put(&mut self, h: Bhs, data: &[u8]) {
        pdu::put_pdu(&mut self.tx.pending, h, data, self.dg);
    }

    /// A PDU that carries a status: StatSN (taken), ExpCmdSN, MaxCmdSN set.
    pub(super) fn put_status(&mut self, h: Bhs, data: &[u8]) {
        let s = self.take_stat_sn();
        let (exp, max) = self.window();
        let h = h.sns(s, exp, max);
        self.put(h, data);
    }

    /// Async Message (RFC 7143 §11.9) before the target closes a session in full feature
    /// phase (daemon stop, forced removal, a host disconnected through the control socket):
    /// AsyncEvent 3, "the target will drop all the connections of this session", Parameter2
    /// (Time2Wait) [`DROP_TIME2WAIT`] seconds, Parameter3 (Time2Retain) 0 (no task survives
    /// the session). It carries a StatSN like any status PDU; `try_close` sends it before the
    /// socket closes.
    fn announce_drop(&mut self) {
        let h = Bhs::new(pdu::op::ASYNC, 0x80)
            .itt(u32::MAX)
            .byte(36, 3)
            .u32(40, u32::from(DROP_TIME2WAIT) << 16);
        self.put_status(h, &[]);
    }

    pub(super) fn violation(&mut self, env: &mut Env<'_>, what: &str) {
        env.counters.violations += 1;
        tracing::warn!(conn = env.key, phase = ?self.phase, what, "iSCSI protocol violation; closing connection");
        self.life.closing = true;
        self.life.broken = true;
    }

    /// Reject a PDU (its header is returned in the data segment).
    pub(super) fn reject(&mut self, env: &mut Env<'_>, reason: u8, bhs: &[u8; pdu::BHS_LEN]) {
        env.counters.violations += 1;
        tracing::debug!(
            conn = env.key,
            reason,
            opcode = bhs[0] & 0x3F,
            "iSCSI Reject"
        );
        let h = Bhs::new(op::REJECT, 0x80).byte(2, reason).itt(NO_TAG);
        self.put_status(h, bhs);
    }

    pub(super) fn paused(&self) -> bool {
        self.tasks.len() >= MAX_TASKS
            || self.tx.held() >= TX_HIGH_WATER
            || self.held_login.is_some()
    }

    /// Send the final Login Response held for a reinstatement once the old connections are
    /// gone.
    fn answer_held_login(&mut self) {
        if self
            .held_login
            .as_ref()
            .is_some_and(|(w, _, _)| w.iter().all(|s| s.done()))
            && let Some((_, h, out)) = self.held_login.take()
        {
            self.put_status(h, &out);
        }
    }

    /// The largest data segment accepted: the target's MaxRecvDataSegmentLength (during
    /// login: the login text limit).
    fn max_data(&self) -> usize {
        match self.phase {
            Phase::Login => login::MAX_TEXT.min(login::TARGET_MAX_RECV_DSL as usize),
            Phase::Full => login::TARGET_MAX_RECV_DSL as usize,
        }
    }

    /// Parse and act on everything whole in the receive buffer.
    fn process(&mut self, env: &mut Env<'_>) {
        let rx = std::mem::take(&mut self.rx);
        while !self.life.closing && self.rx_lo < self.rx_hi {
            if !self.life.shutting_down && self.paused() {
                break;
            }
            let avail = &rx[self.rx_lo..self.rx_hi];
            match pdu::parse(avail, self.dg, self.max_data()) {
                Ok(None) => break,
                Err(Violation::HeaderDigest) => {
                    self.violation(env, "header digest error");
                    break;
                }
                Err(Violation::DataTooLong) => {
                    self.violation(env, "data segment longer than MaxRecvDataSegmentLength");
                    break;
                }
                Err(Violation::DataDigest { len }) => {
                    // RFC 7143 §7.8: the PDU is rejected and discarded; at ErrorRecoveryLevel
                    // 0 a lost Data-Out fails its task, so the connection is dropped after.
                    let bhs: [u8; pdu::BHS_LEN] = avail[..pdu::BHS_LEN]
                        .try_into()
                        .unwrap_or([0; pdu::BHS_LEN]);
                    self.reject(env, reject::DATA_DIGEST, &bhs);
                    self.rx_lo += len;
                    if bhs[0] & 0x3F == op::DATA_OUT || bhs[0] & 0x3F == op::SCSI_CMD {
                        self.life.closing = true;
                    }
                    continue;
                }
                Ok(Some((p, n))) => {
                    self.pdu(env, p);
                    if let Some(to) = self.handoff.take() {
                        self.hand_over(env, to, &rx[self.rx_lo..self.rx_hi]);
                        break;
                    }
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
        let r = Req(p.bhs);
        if self.phase == Phase::Login {
            if r.opcode() != op::LOGIN_REQ {
                return self.violation(env, "a PDU other than Login Request during login");
            }
            return self.login_req(env, r, p.data);
        }
        if self.session == SessionType::Discovery && !self.discovery_allows(r, p.data) {
            return self.reject(env, reject::PROTOCOL, p.bhs);
        }
        match r.opcode() {
            op::SCSI_CMD => self.scsi_cmd(env, r, p.ahs, p.data),
            op::DATA_OUT => self.data_out(env, r, p.data),
            op::NOP_OUT => self.nop_out(env, r, p.data),
            op::TEXT_REQ => self.text_req(env, r, p.data),
            op::TMF_REQ => self.tmf(env, r),
            op::LOGOUT_REQ => self.logout_req(env, r),
            op::LOGIN_REQ => {
                // A login on a connection in full feature phase is a protocol error.
                self.reject(env, reject::PROTOCOL, p.bhs);
                self.life.closing = true;
            }
            op::SNACK => self.reject(env, reject::NOT_SUPPORTED, p.bhs),
            _ => self.reject(env, reject::NOT_SUPPORTED, p.bhs),
        }
    }

    /// CmdSN check for a non-immediate command: `Some(true)` to run it now, `Some(false)` held
    /// for a gap (a copy of the PDU with its `data` is kept), `None` ignored (outside the
    /// window, or a duplicate of a command already held: RFC 7143 §4.2.2.1).
    pub(super) fn admit(&mut self, env: &mut Env<'_>, r: Req<'_>, data: &[u8]) -> Option<bool> {
        if r.immediate() {
            return Some(true);
        }
        let sn = r.cmd_sn();
        enum Adm {
            Now,
            Held,
            Full,
            Duplicate,
            Outside(u32),
        }
        let key = env.key;
        let adm = self.with_sess(|s| {
            let exp = s.exp_cmd_sn;
            if sn == exp {
                s.exp_cmd_sn = exp.wrapping_add(1);
                return Adm::Now;
            }
            if sn != exp && mcs::in_window(exp, sn) {
                if s.held.contains_key(&sn) {
                    // A duplicate within the window: silently ignored (RFC 7143 §4.2.2.1).
                    return Adm::Duplicate;
                }
                if s.held.len() >= MAX_HELD {
                    return Adm::Full;
                }
                s.held.insert(sn, (key, pdu_bytes(r, data)));
                return Adm::Held;
            }
            Adm::Outside(exp)
        });
        match adm {
            Some(Adm::Now) => Some(true),
            Some(Adm::Held) => Some(false),
            Some(Adm::Full) => {
                self.violation(env, "too many commands held for a CmdSN gap");
                None
            }
            Some(Adm::Duplicate) => {
                env.counters.violations += 1;
                tracing::debug!(
                    conn = env.key,
                    cmd_sn = sn,
                    "CmdSN of a command already held for a gap; ignored"
                );
                None
            }
            Some(Adm::Outside(exp)) => {
                env.counters.violations += 1;
                tracing::debug!(
                    conn = env.key,
                    cmd_sn = sn,
                    exp,
                    "CmdSN outside the window; ignored"
                );
                None
            }
            None => None,
        }
    }

    /// Run a held command (`mcs::IscsiConn::run_held` finds whose turn it is).
    fn run_raw(&mut self, env: &mut Env<'_>, raw: &[u8]) {
        let dg = self.dg;
        // Re-parse without digests: the held copy is header + data only.
        self.dg = Digests::default();
        if let Ok(Some((p, _))) = pdu::parse(raw, self.dg, usize::MAX >> 8) {
            self.dg = dg;
            self.pdu(env, p);
        } else {
            self.dg = dg;
            self.violation(env, "held command unreadable");
        }
    }

    /// Hand this connection (its socket and the bytes from `bytes` on) over to reactor `to`,
    /// home of the session its login joins (`mcs.rs`); this one then closes without touching
    /// the socket.
    fn hand_over(&mut self, env: &mut Env<'_>, to: usize, bytes: &[u8]) {
        let fd = match self.fd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(conn = env.key, error = %e, "iSCSI: cannot hand a connection over to its session's reactor");
                self.life.broken = true;
                self.life.closing = true;
                return;
            }
        };
        let c = IscsiConn::handed(fd, Arc::clone(&self.sh), bytes);
        tracing::debug!(
            conn = env.key,
            to,
            "iSCSI login joins a session of another reactor: handed over"
        );
        if let Some(m) = env.shared.mailboxes.get(to) {
            m.send(crate::runtime::Msg::Spawn(Box::new(c)));
        }
        self.rx_lo = self.rx_hi;
        self.life.closing = true;
    }

    fn nop_out(&mut self, env: &mut Env<'_>, r: Req<'_>, data: &[u8]) {
        if r.itt() == NO_TAG {
            // An answer to a NOP-In ping, or an ExpStatSN update: nothing to say (and it
            // must be immediate, RFC 7143 §11.18).
            if !r.immediate() {
                self.reject(env, reject::PROTOCOL, r.0);
            }
            return;
        }
        if r.w20() != NO_TAG {
            // The target never pings with a TTT, so no NOP-Out may answer one.
            return self.reject(env, reject::INVALID_FIELD, r.0);
        }
        match self.admit(env, r, data) {
            Some(true) => {}
            _ => return,
        }
        let n = data.len().min(self.params.send_dsl as usize);
        let h = Bhs::new(op::NOP_IN, 0x80)
            .lun(r.lun())
            .itt(r.itt())
            .u32(20, NO_TAG);
        self.put_status(h, &data[..n]);
    }

    fn logout_req(&mut self, env: &mut Env<'_>, r: Req<'_>) {
        let reason = r.flags() & 0x7F;
        if reason > 2 {
            // A reserved reason code (RFC 7143 §11.14.1): rejected, its CmdSN not taken.
            return self.reject(env, reject::INVALID_FIELD, r.0);
        }
        if self.admit(env, r, &[]) != Some(true) {
            return;
        }
        let cid = u16::from_be_bytes([r.0[20], r.0[21]]);
        match reason {
            // Close the session: every connection of it (RFC 7143 §11.14.1); this one answers
            // once its tasks are done.
            0 => self.close_siblings(env),
            // Close another connection of the session: at once; an unknown CID is answered 1.
            1 if cid != self.cid => {
                let code = if self.close_cid(env, cid) { 0 } else { 1 };
                let h = Bhs::new(op::LOGOUT_RSP, 0x80).byte(2, code).itt(r.itt());
                return self.put_status(h, &[]);
            }
            1 => {}
            // Remove the connection for recovery: not at ErrorRecoveryLevel 0.
            _ => {
                let h = Bhs::new(op::LOGOUT_RSP, 0x80).byte(2, 2).itt(r.itt());
                return self.put_status(h, &[]);
            }
        }
        self.logout = Some((r.itt(), reason));
    }

    /// Send the Logout Response once the tasks are done, then close.
    pub(super) fn finish_logout(&mut self) {
        if self.logout.is_some() && self.tasks.is_empty() {
            let (itt, _) = self.logout.take().unwrap_or((0, 0));
            let h = Bhs::new(op::LOGOUT_RSP, 0x80)
                .byte(2, 0)
                .itt(itt)
                .u32(40, 0);
            self.put_status(h, &[]);
            self.logged_out = true;
            self.life.closing = true;
        }
    }

    /// A Text Request (RFC 7143 §11.10). One exchange at a time per connection
    /// ([`TextSeq`]): a request with the C bit is gathered (each part answered by an empty Text
    /// Response with a TTT), the whole text is answered once complete, and an answer longer than
    /// the initiator's MaxRecvDataSegmentLength goes out in parts (C bit, a TTT), each asked for
    /// by an empty Text Request carrying that TTT; the last part has the F bit (when the request
    /// had it) and TTT FFFFFFFFh.
    fn text_req(&mut self, env: &mut Env<'_>, r: Req<'_>, data: &[u8]) {
        if self.admit(env, r, data) != Some(true) {
            return;
        }
        let (fin, cont, ttt) = (r.fin(), r.flags() & 0x40 != 0, r.w20());
        if fin && cont {
            // A request with the C bit MUST have the F bit clear (§11.10.2).
            self.text_seq = None;
            return self.reject(env, reject::PROTOCOL, r.0);
        }
        if ttt == NO_TAG {
            // A new request: whatever exchange was under way is reset (§11.10.4).
            self.text_seq = None;
        } else if !self
            .text_seq
            .as_ref()
            .is_some_and(|t| t.itt == r.itt() && t.ttt == ttt)
        {
            self.text_seq = None;
            return self.reject(env, reject::INVALID_FIELD, r.0);
        }
        // A MaxRecvDataSegmentLength the initiator declared in this request.
        let mut new_dsl = None;
        let mut seq = self.text_seq.take().unwrap_or_else(|| {
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1);
            if self.next_ttt == NO_TAG || self.next_ttt == 0 {
                self.next_ttt = 1;
            }
            Box::new(TextSeq {
                itt: r.itt(),
                ttt,
                req: Vec::new(),
                rsp: Vec::new(),
                sent: 0,
            })
        });
        if seq.sent < seq.rsp.len() {
            // The initiator asks for the rest of the answer: its request carries no text.
            if !data.is_empty() || cont {
                return self.reject(env, reject::PROTOCOL, r.0);
            }
        } else {
            if seq.req.len() + data.len() > login::MAX_TEXT {
                return self.reject(env, reject::PROTOCOL, r.0);
            }
            seq.req.extend_from_slice(data);
            if !cont {
                let keys = match login::parse_keys(&seq.req) {
                    Ok(k) => k,
                    Err(_) => return self.reject(env, reject::PROTOCOL, r.0),
                };
                let mut out = Vec::new();
                for (k, v) in keys {
                    match k {
                        "SendTargets" => self.send_targets(v, &mut out),
                        // Declarative, usable in full feature phase (RFC 7143 §13.12): what
                        // the target sends on this connection from now on; answered with the
                        // target's own declaration.
                        "MaxRecvDataSegmentLength" => match login::number(v, 512, 0x00FF_FFFF) {
                            Some(n) => {
                                new_dsl = Some(n);
                                let ours = login::TARGET_MAX_RECV_DSL.to_string();
                                login::put_key(&mut out, k, &ours);
                            }
                            None => login::put_key(&mut out, k, "Reject"),
                        },
                        _ => login::put_key(&mut out, k, "NotUnderstood"),
                    }
                }
                seq.req.clear();
                seq.rsp = out;
                seq.sent = 0;
            }
        }
        // The next part of the answer (empty while the request is still being gathered),
        // within both the old and a newly declared MaxRecvDataSegmentLength; the new one
        // applies to everything after it.
        let seg = self.params.send_dsl.min(new_dsl.unwrap_or(u32::MAX));
        if let Some(n) = new_dsl {
            self.params.send_dsl = n;
        }
        let n = (seq.rsp.len() - seq.sent).min(seg as usize);
        let part = seq.rsp[seq.sent..seq.sent + n].to_vec();
        seq.sent += n;
        let more = seq.sent < seq.rsp.len();
        let (flags, ttt) = if more {
            (0x40, seq.ttt)
        } else if fin {
            (0x80, NO_TAG)
        } else {
            // The initiator has more to say (F clear): the exchange goes on.
            (0x00, seq.ttt)
        };
        if ttt != NO_TAG {
            self.text_seq = Some(seq);
        }
        let h = Bhs::new(op::TEXT_RSP, flags)
            .lun(r.lun())
            .itt(r.itt())
            .u32(20, ttt);
        self.put_status(h, &part);
    }

    /// SendTargets (RFC 7143 §12.3, appendix C): the targets this initiator may see, with the
    /// portals that serve them.
    fn send_targets(&self, v: &str, out: &mut Vec<u8>) {
        let sh = Arc::clone(&self.sh);
        let targets = sh.tgts().clone();
        // The address this connection reached (for portals listening on a wildcard address).
        let local = self
            .fd
            .try_clone()
            .map(std::net::TcpStream::from)
            .and_then(|s| s.local_addr())
            .ok()
            .map(|a| a.ip());
        for t in targets.iter() {
            let wanted = match v {
                "All" => self.session == SessionType::Discovery,
                "" => self.session == SessionType::Normal && t.iqn == self.target.iqn,
                name => name == t.iqn,
            };
            if !wanted || !t.allows(&self.initiator) {
                continue;
            }
            login::put_key(out, "TargetName", &t.iqn);
            for a in sh.portal_addresses(local) {
                login::put_key(out, "TargetAddress", &a);
            }
        }
    }

    /// The I_T nexus is gone: its RESERVE reservations are released (SPC-2 §5.5.1), decided
    /// like a RELEASE (by a mirrored volume's leader, for both sites). Once per session; true
    /// while a release is still on its way (the connection stays until it is done).
    fn release_reservations(&mut self, env: &mut Env<'_>) -> bool {
        if self.nexus_lost {
            return false;
        }
        self.nexus_lost = true;
        // The session's other connections still hold the nexus: the last one carries it.
        if self.nexus == 0 || self.session != SessionType::Normal || !self.last_of_session(env.key)
        {
            return false;
        }
        let reserved = self
            .with_sess(|s| s.reserved_luns.clone())
            .unwrap_or_default();
        let target = Arc::clone(&self.target);
        let luns = &target.luns;
        let mut pending = false;
        for (i, l) in luns.iter().enumerate() {
            let held = l.pr.reserve_view(&self.res) == crate::frontend::iscsi::spc2::View::Mine;
            if held || reserved.contains(&i) {
                pending |= self.carry_nexus_loss(env, i);
            }
        }
        pending
    }

    pub(super) fn get_buf(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.reserve(len);
        b
    }

    pub(super) fn put_buf(&mut self, b: Vec<u8>) {
        if self.pool.len() < 16 && b.capacity() <= (8 << 20) {
            self.pool.push(b);
        }
    }

    // ----- socket -----

    fn make_room(&mut self) {
        debug_assert!(!self.life.recv_armed);
        let avail = &self.rx[self.rx_lo..self.rx_hi];
        let need = pdu::needs(avail, self.dg).max(RX_MIN_FREE);
        if self.rx.len() - self.rx_lo < need || self.rx.len() - self.rx_hi < RX_MIN_FREE {
            self.rx.copy_within(self.rx_lo..self.rx_hi, 0);
            self.rx_hi -= self.rx_lo;
            self.rx_lo = 0;
        }
        if self.rx.len() < need + RX_MIN_FREE {
            self.rx.resize(need + RX_MIN_FREE, 0);
        }
    }

    fn arm_recv(&mut self, env: &mut Env<'_>) {
        self.make_room();
        let ms = self.sh.nop_in_interval_ms;
        let idle = self.phase == Phase::Full && self.tasks.is_empty();
        let free = &mut self.rx[self.rx_hi..];
        if ms > 0 && idle {
            // An idle connection is pinged (NOP-In) when nothing arrives for `ms`; the receive
            // carries a linked timeout, as the NVMe/TCP keep-alive does.
            *self.ping_ts = types::Timespec::new()
                .sec(u64::from(ms / 1000))
                .nsec((ms % 1000) * 1_000_000);
            let recv = opcode::Recv::new(
                types::Fd(self.fd.as_raw_fd()),
                free.as_mut_ptr(),
                free.len() as u32,
            )
            .build()
            .user_data(UserData::new(Kind::Recv, env.key).0)
            .flags(squeue::Flags::IO_LINK);
            let timeout = opcode::LinkTimeout::new(&*self.ping_ts)
                .build()
                .user_data(UserData::new(Kind::Cancel, env.key).0);
            // SAFETY: rx is neither resized nor compacted while the receive is armed; the
            // timespec is boxed in the connection, which outlives the submission (it is not
            // `done` while the receive is armed), and the kernel copies it at submission.
            unsafe { env.io.push_pair(&recv, &timeout) };
            self.ping_armed = true;
        } else {
            // SAFETY: rx is neither resized nor compacted while the receive is armed
            // (invariant), and the connection outlives it (it is not `done` while armed).
            unsafe { env.io.push_recv(self.fd.as_raw_fd(), free, env.key) };
            self.ping_armed = false;
        }
        self.life.recv_armed = true;
    }

    /// The idle-ping timeout fired: ping, or give up on an initiator that did not answer the
    /// last ping (nothing arrived for two intervals).
    fn idle_timeout(&mut self, env: &mut Env<'_>) {
        if self.ping_pending {
            tracing::warn!(conn = env.key, initiator = %self.initiator, "iSCSI initiator silent after a NOP-In ping; closing the connection");
            self.life.broken = true;
            self.life.closing = true;
            return;
        }
        self.ping_pending = true;
        // A ping carries the current StatSN without taking it (RFC 7143 §11.19).
        let h = Bhs::new(op::NOP_IN, 0x80).itt(NO_TAG).u32(20, 1).sns(
            self.stat_sn,
            self.exp(),
            self.max_cmd_sn(),
        );
        self.put(h, &[]);
    }

    fn cancel(&mut self, env: &mut Env<'_>, kind: Kind) {
        Lifecycle::cancel(env.io, env.key, kind);
    }

    fn try_close(&mut self, env: &mut Env<'_>) {
        if self.life.closing
            && !self.life.recv_armed
            && !self.tx.armed()
            && self.tasks_at_device() == 0
            && (self.tx.unsent() == 0 || self.life.broken)
            && !self.release_reservations(env)
            && self.tasks_at_device() == 0
        {
            self.life.closed = true;
        }
    }
}

/// A PDU's header and data as one buffer (to hold a command for a CmdSN gap).
pub(super) fn pdu_bytes(r: Req<'_>, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(pdu::BHS_LEN + pdu::pad4(data.len()));
    let mut h = *r.0;
    h[4] = 0; // the held copy carries no AHS
    v.extend_from_slice(&h);
    v.extend_from_slice(data);
    v.resize(pdu::BHS_LEN + pdu::pad4(data.len()), 0);
    v
}

impl Conn for IscsiConn {
    fn start(&mut self, env: &mut Env<'_>) {
        if self.rx_hi > 0 {
            // Handed over from another reactor with its login received (`mcs.rs`).
            self.process(env);
        }
        if !self.life.closing {
            self.arm_recv(env);
        }
    }

    fn on_recv(&mut self, env: &mut Env<'_>, res: i32) {
        self.life.recv_armed = false;
        if res == -libc::ECANCELED
            && self.ping_armed
            && !self.life.cancel_sent
            && !self.life.closing
        {
            self.ping_armed = false;
            return self.idle_timeout(env);
        }
        if res > 0 {
            self.ping_pending = false;
        }
        if res <= 0 {
            if res < 0 && res != -libc::ECANCELED {
                tracing::debug!(conn = env.key, error = %std::io::Error::from_raw_os_error(-res), "receive failed");
                self.life.broken = true;
            }
            self.life.closing = true;
            return;
        }
        self.rx_hi += res as usize;
        self.process(env);
        self.run_held(env);
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
        // (A copy's reads are of its source volume, not the task's: not reported.)
        self.tasks
            .get(slot as usize)
            .filter(|t| t.copy.is_none())
            .map(|t| t.vol)
    }

    fn on_io(&mut self, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        self.device_done(slot, result, data);
    }

    fn on_note(&mut self, env: &mut Env<'_>, note: crate::runtime::Note) {
        let note = match note.downcast::<alua::StpgDone>() {
            Ok(d) => return self.set_tpg_done(env, *d),
            Err(n) => n,
        };
        let note = match note.downcast::<crate::frontend::iscsi::reset::LuAbort>() {
            Ok(a) => return self.lu_abort(*a),
            Err(n) => n,
        };
        let note = match note.downcast::<mcs::SessNote>() {
            Ok(n) => return self.sess_note(env, *n),
            Err(n) => n,
        };
        // `reset::Settled`: a fan-out this session's TMF waits for is done (`flush` answers).
        // Anything else is a `copy::Kick`: the turn it asks for is this one (`flush` follows).
        if let Ok(n) = note.downcast::<crate::frontend::nvmf::Note>() {
            self.home_done(*n);
        }
    }

    fn flush(&mut self, env: &mut Env<'_>) {
        self.drive_copies(env);
        self.leave_sections(env);
        if self.errors > 0 {
            // Counted against the session's target's first LUN's volume.
            if let Some(l) = self.target.luns.first() {
                env.vol_counters[l.volume].errors += std::mem::take(&mut self.errors);
            }
        }
        if env.stopping && !self.life.shutting_down {
            self.stop(env);
        }
        self.answer_held_login();
        self.finish_tmfs();
        self.finish_logout();
        if !self.life.broken && !self.life.recv_armed && !self.paused() && !self.life.closing {
            self.process(env);
        }
        if !self.life.broken && !self.paused() && !self.life.closing {
            self.run_held(env);
        }
        if self.life.broken {
            self.tx.drop_pending();
        } else {
            // SAFETY: the connection is not done while a send is armed (`try_close`).
            unsafe { self.tx.start(env.io, self.fd.as_raw_fd(), env.key) };
        }
        if !self.life.closing && !self.life.recv_armed && !self.paused() {
            self.arm_recv(env);
        }
        if self.life.closing && self.life.recv_armed && !self.life.cancel_sent {
            self.life.cancel_sent = true;
            self.cancel(env, Kind::Recv);
        }
        self.try_close(env);
        if let Some(h) = &self.host {
            h.set_inflight(self.tasks.len());
        }
        if self.life.closed {
            self.host = None;
            self.leave_session(env);
        }
    }

    fn stop(&mut self, env: &mut Env<'_>) {
        if self.phase == Phase::Full && !self.life.closing && !self.life.broken {
            self.announce_drop();
        }
        self.life.stop(env.io, env.key);
    }

    fn host_id(&self) -> Option<u64> {
        self.host.as_ref().map(|h| h.id())
    }

    fn abort(&mut self, env: &mut Env<'_>) {
        self.life.abort(env.io, env.key, self.tx.armed());
    }

    fn done(&self) -> bool {
        self.life.closed
    }

    fn describe(&self) -> String {
        format!(
            "iscsi: phase {:?}, {} task(s) ({} at a device), closing {}, receive armed {}, send armed {}, {} byte(s) unsent",
            self.phase,
            self.tasks.len(),
            self.tasks_at_device(),
            self.life.closing,
            self.life.recv_armed,
            self.tx.armed(),
            self.tx.unsent(),
        )
    }
}
