//! One NBD connection, driven by its reactor.
//!
//! ```text
//!  start ──> ClientFlags ──> Options ──(EXPORT_NAME / GO)──> Transmission
//!                 │             │ ABORT, violation                │ DISC, EOF, violation, stop
//!                 └─────────────┴──────────────> Closing <────────┘
//! ```
//! - ClientFlags / Options: the server greeting is queued at start; options are answered one
//!   by one (the client waits for each reply). An option longer than the server keeps is
//!   skipped as it arrives and then answered (`skipping`), so its data is never buffered.
//! - Transmission: every whole request in the receive buffer is executed in arrival order;
//!   requests a device finishes at once (RAM) are answered in the same turn, the others when
//!   their completion arrives. Replies accumulate in the connection's send queue
//!   (`transport::tcp::SendQueue`) and leave in one send per turn.
//! - Closing: no new request is executed (requests already received are answered ESHUTDOWN
//!   when the server is stopping); the connection is `done` once no receive, send or device
//!   operation is in flight.
//!
//! Invariants:
//! - `rx` is resized or compacted only while no receive is armed; the bytes being sent are
//!   not touched while their send is armed (`SendQueue`). The kernel never sees a buffer move.
//! - Every request that reached a device gets exactly one reply, unless the socket broke.
//! - Backpressure: at most [`MAX_INFLIGHT`] device operations and about [`TX_HIGH_WATER`]
//!   bytes of unsent replies; past either, the connection stops reading until they drain.

use super::proto::{self, cflag, chunk, cmd, err, info, opt, rep, tflag};
use super::{NbdExport, NbdExports};
use crate::bdev::{ReadStart, Start, in_range};
use crate::runtime::hosts::{HostHandle, HostRecord};
use crate::runtime::{Conn, Env};
use crate::transport::tcp::{Lifecycle, SendQueue};
use crate::uring::{Errno, IoTag};
use slab::Slab;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Device operations one connection may have in flight before it stops reading.
pub const MAX_INFLIGHT: usize = 1024;
/// Unsent reply bytes past which the connection stops reading.
pub const TX_HIGH_WATER: usize = 64 << 20;
/// Initial receive buffer: room for many 4 KiB writes per receive.
const RX_INITIAL: usize = 256 << 10;
/// Free space below which the receive buffer is compacted before the next receive.
const RX_MIN_FREE: usize = 64 << 10;
/// Longest option data skipped and answered (`ERR_TOO_BIG`, `ERR_UNSUP`) instead of kept;
/// longer is taken for a denial of service and closes. 2^25, the payload the protocol says
/// no peer should take for one.
const OPTION_SKIP_MAX: u32 = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    Options,
    Transmission,
}

#[derive(Clone, Copy)]
struct Pending {
    cookie: u64,
    kind: u16,
    offset: u64,
    len: u32,
}

/// An NBD connection.
pub struct NbdConn {
    fd: OwnedFd,
    /// The daemon's exports.
    exports: Arc<NbdExports>,
    phase: Phase,
    fixed: bool,
    no_zeroes: bool,
    structured: bool,
    vol: usize,
    size: u64,
    min_io: u32,
    read_only: bool,
    rx: Vec<u8>,
    rx_lo: usize,
    rx_hi: usize,
    /// An option longer than [`proto::MAX_OPTION_LEN`] being skipped: its code and the bytes
    /// of its data still to come (never buffered; answered once all are in).
    skipping: Option<(u32, u64)>,
    /// Outgoing bytes (one send per turn).
    tx: SendQueue,
    /// Receive armed, closing, broken, stopping, closed.
    pub(super) life: Lifecycle,
    reqs: Slab<Pending>,
    /// Take no more requests (DISC, ABORT, EOF, server stop).
    /// The socket is unusable: drop unsent replies.
    /// The server is stopping: answer received requests with ESHUTDOWN.
    /// Failed operations not yet added to the reactor's per-volume counters.
    errors: u64,
    /// The export chosen (a copy, taken when it was selected).
    export: Option<NbdExport>,
    /// This connection's entry in the hosts registry (from transmission until closed).
    host: Option<HostHandle>,
}

/// A device errno as the protocol's error value ("Error values"): EDQUOT and EFBIG are
/// ENOSPC, EROFS is EPERM; EOVERFLOW and EOPNOTSUPP are EINVAL, because NBD_EOVERFLOW and
/// NBD_ENOTSUP are reserved for NBD_CMD_FLAG_DF and NBD_CMD_FLAG_FAST_ZERO, which this server
/// does not advertise; anything else is EIO.
fn nbd_error(e: Errno) -> u32 {
    match e.0 {
        libc::EPERM | libc::EROFS => err::EPERM,
        libc::EIO => err::EIO,
        libc::ENOMEM => err::ENOMEM,
        libc::EINVAL | libc::EOVERFLOW | libc::EOPNOTSUPP => err::EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => err::ENOSPC,
        libc::ESHUTDOWN => err::ESHUTDOWN,
        _ => err::EIO,
    }
}

/// What to do with an option before looking at it.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Answer it.
    Serve,
    /// A protocol violation: close.
    Violation,
    /// It cannot be answered (no reply format): close.
    Close,
    /// Answer with this error reply.
    Refuse(u32),
}

/// The checks every option passes first. Plain newstyle has no option replies, so only
/// `EXPORT_NAME` can be answered; while the server stops, options get `ERR_SHUTDOWN` (the
/// protocol: "SHOULD error further options ... other than NBD_OPT_ABORT"), except
/// `EXPORT_NAME`, which has no error reply: the server must hang up instead.
fn gate(fixed: bool, stopping: bool, code: u32) -> Gate {
    if !fixed && code != opt::EXPORT_NAME {
        return Gate::Violation;
    }
    if stopping && code == opt::EXPORT_NAME {
        return Gate::Close;
    }
    if stopping && code != opt::ABORT {
        return Gate::Refuse(rep::ERR_SHUTDOWN);
    }
    Gate::Serve
}

impl NbdConn {
    /// A connection on an accepted socket.
    pub fn new(fd: OwnedFd, exports: Arc<NbdExports>) -> Self {
        crate::transport::tcp::set_nodelay(&fd);
        Self {
            fd,
            exports,
            phase: Phase::ClientFlags,
            fixed: false,
            no_zeroes: false,
            structured: false,
            vol: 0,
            size: 0,
            min_io: 1,
            read_only: false,
            rx: vec![0; RX_INITIAL],
            rx_lo: 0,
            rx_hi: 0,
            skipping: None,
            tx: SendQueue::with_capacity(RX_INITIAL),
            life: Lifecycle::default(),
            reqs: Slab::with_capacity(64),
            errors: 0,
            export: None,
            host: None,
        }
    }

    fn paused(&self) -> bool {
        self.reqs.len() >= MAX_INFLIGHT || self.tx.held() >= TX_HIGH_WATER
    }

    fn violation(&mut self, env: &mut Env<'_>, what: &str) {
        env.counters.violations += 1;
        tracing::warn!(conn = env.key, phase = ?self.phase, what, "NBD protocol violation; closing connection");
        self.life.closing = true;
        self.life.broken = true;
    }

    /// Parse and act on everything whole in the receive buffer.
    fn process(&mut self, env: &mut Env<'_>) {
        let rx = std::mem::take(&mut self.rx);
        while !self.life.broken && self.rx_lo < self.rx_hi {
            let avail = &rx[self.rx_lo..self.rx_hi];
            let used = match self.phase {
                Phase::ClientFlags => match proto::parse_client_flags(avail) {
                    Err(_) => {
                        self.violation(env, "unknown client flags");
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some((flags, n))) => {
                        self.fixed = flags & proto::FLAG_C_FIXED_NEWSTYLE != 0;
                        self.no_zeroes = flags & proto::FLAG_C_NO_ZEROES != 0;
                        self.phase = Phase::Options;
                        n
                    }
                },
                Phase::Options => {
                    if self.life.closing {
                        break;
                    }
                    if let Some((code, left)) = self.skipping {
                        let n = (avail.len() as u64).min(left);
                        if n == left {
                            self.skipping = None;
                            self.skipped_option(env, code);
                        } else {
                            self.skipping = Some((code, left - n));
                        }
                        self.rx_lo += n as usize;
                        continue;
                    }
                    match proto::parse_option(avail) {
                        Err(proto::Violation::OptionTooLong) if self.skippable(avail) => {
                            let len =
                                u32::from_be_bytes([avail[12], avail[13], avail[14], avail[15]]);
                            let code =
                                u32::from_be_bytes([avail[8], avail[9], avail[10], avail[11]]);
                            self.skipping = Some((code, len as u64));
                            proto::OPTION_HEADER_LEN
                        }
                        Err(v) => {
                            self.violation(
                                env,
                                if v == proto::Violation::BadMagic {
                                    "bad option magic"
                                } else {
                                    "option too long"
                                },
                            );
                            break;
                        }
                        Ok(None) => break,
                        Ok(Some((o, n))) => {
                            self.option(env, o.code, o.data);
                            n
                        }
                    }
                }
                Phase::Transmission => {
                    if self.life.closing && !self.life.shutting_down {
                        break;
                    }
                    if !self.life.shutting_down && self.paused() {
                        break;
                    }
                    match proto::parse_request(avail) {
                        Err(v) => {
                            self.violation(
                                env,
                                if v == proto::Violation::BadMagic {
                                    "bad request magic"
                                } else {
                                    "write payload too long"
                                },
                            );
                            break;
                        }
                        Ok(None) => break,
                        Ok(Some((r, n))) => {
                            let need = n + r.payload_len();
                            if avail.len() < need {
                                break;
                            }
                            self.request(env, r, &avail[n..need]);
                            need
                        }
                    }
                }
            };
            self.rx_lo += used;
        }
        self.rx = rx;
        if self.rx_lo == self.rx_hi {
            self.rx_lo = 0;
            self.rx_hi = 0;
        }
    }

    /// Bytes the message at the head of the receive buffer needs in all.
    fn head_needs(&self) -> usize {
        let avail = &self.rx[self.rx_lo..self.rx_hi];
        match self.phase {
            Phase::ClientFlags => 4,
            Phase::Options if self.skipping.is_some() => 1,
            Phase::Options => proto::option_needs(avail),
            Phase::Transmission => match proto::parse_request(avail) {
                Ok(Some((r, n))) => n + r.payload_len(),
                _ => proto::REQUEST_LEN,
            },
        }
    }

    /// Make room for the next receive (only while no receive is armed).
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

    fn arm_recv(&mut self, env: &mut Env<'_>) {
        self.make_room();
        let free = &mut self.rx[self.rx_hi..];
        // SAFETY: rx is neither resized nor compacted while the receive is armed (invariant),
        // and the connection outlives it (it is not `done` while armed).
        unsafe { env.io.push_recv(self.fd.as_raw_fd(), free, env.key) };
        self.life.recv_armed = true;
    }

    // ----- negotiation -----

    fn reply(&mut self, option: u32, kind: u32, data: &[&[u8]]) {
        proto::put_option_reply(&mut self.tx.pending, option, kind, data);
    }

    fn find_export(exports: &NbdExports, name: &[u8]) -> Option<NbdExport> {
        let list = exports.read();
        if name.is_empty() {
            return list.first().cloned();
        }
        list.iter().find(|e| e.name.as_bytes() == name).cloned()
    }

    /// The transmission flags: a read-only export says so and offers no command that only
    /// updates (TRIM, WRITE_ZEROES), so a client attaches it read-only.
    fn tflags(&self) -> u16 {
        let f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::CAN_MULTI_CONN;
        if self.read_only {
            f | tflag::READ_ONLY
        } else {
            f | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES
        }
    }

    /// Take `e` as the export; false when its volume is not served on this reactor (an
    /// export being removed with its volume).
    fn select(&mut self, env: &Env<'_>, e: NbdExport) -> bool {
        let Some(v) = env.vol(e.volume) else {
            return false;
        };
        self.vol = e.volume;
        self.size = v.info.size;
        self.min_io = v.info.min_io;
        // Read-only when the export is configured so or its volume refuses updates.
        self.read_only = e.read_only || v.read_only();
        self.export = Some(e);
        true
    }

    /// The export is chosen: serve requests, and list the connection in the hosts registry.
    /// Only while the export is still in the table (checked and registered under its read
    /// lock, see the module's invariant); false when it was removed since it was looked up.
    /// Called before any byte saying the export was accepted is queued, so a removed export
    /// is answered as unknown (GO) or with a hang-up (EXPORT_NAME), never accepted and then
    /// dropped.
    fn enter_transmission(&mut self, env: &Env<'_>) -> bool {
        let exports = Arc::clone(&self.exports);
        if let Some(e) = &self.export {
            exports.negotiation_hook(&e.name);
        }
        let list = exports.read();
        let Some(e) = self.export.as_ref().filter(|e| {
            list.iter()
                .any(|x| x.name == e.name && x.volume == e.volume)
        }) else {
            tracing::info!(
                conn = env.key,
                "the export was removed during negotiation; refusing it"
            );
            self.export = None;
            return false;
        };
        self.phase = Phase::Transmission;
        let mut rec = HostRecord::new("nbd", env.io.reactor, env.key, e.name.clone());
        rec.peer = crate::transport::tcp::peer_addr(&self.fd);
        rec.set_volumes(vec![e.volume]);
        self.host = Some(env.shared.hosts.register(rec));
        true
    }

    /// Whether the too-long option at the head of `avail` (a whole header) can be skipped and
    /// answered: it can be answered (fixed newstyle, not `EXPORT_NAME`) and is not absurdly
    /// long.
    fn skippable(&self, avail: &[u8]) -> bool {
        let code = u32::from_be_bytes([avail[8], avail[9], avail[10], avail[11]]);
        let len = u32::from_be_bytes([avail[12], avail[13], avail[14], avail[15]]);
        self.fixed && code != opt::EXPORT_NAME && len <= OPTION_SKIP_MAX
    }

    /// The data of a skipped option has all arrived: answer it. `ABORT` is still an abort (its
    /// data is to be ignored); an option this server does not know gets `ERR_UNSUP`; a known one
    /// `ERR_TOO_BIG`.
    fn skipped_option(&mut self, env: &mut Env<'_>, code: u32) {
        let known = matches!(
            code,
            opt::LIST
                | opt::STARTTLS
                | opt::INFO
                | opt::GO
                | opt::STRUCTURED_REPLY
                | opt::LIST_META_CONTEXT
                | opt::SET_META_CONTEXT
        );
        match code {
            opt::ABORT => self.option(env, code, &[]),
            _ => match gate(self.fixed, env.stopping, code) {
                Gate::Refuse(kind) => self.reply(code, kind, &[]),
                _ if known => self.reply(code, rep::ERR_TOO_BIG, &[]),
                _ => self.reply(code, rep::ERR_UNSUP, &[]),
            },
        }
    }

    fn option(&mut self, env: &mut Env<'_>, code: u32, data: &[u8]) {
        match gate(self.fixed, env.stopping, code) {
            Gate::Serve => {}
            Gate::Violation => {
                self.violation(env, "option other than EXPORT_NAME without fixed newstyle");
                return;
            }
            Gate::Close => {
                tracing::info!(conn = env.key, "EXPORT_NAME while stopping; closing");
                self.life.closing = true;
                return;
            }
            Gate::Refuse(kind) => {
                self.reply(code, kind, &[]);
                return;
            }
        }
        match code {
            opt::EXPORT_NAME => match Self::find_export(&self.exports, data) {
                Some(x) if self.select(env, x.clone()) && self.enter_transmission(env) => {
                    let flags = self.tflags();
                    self.tx.pending.extend_from_slice(&self.size.to_be_bytes());
                    self.tx.pending.extend_from_slice(&flags.to_be_bytes());
                    if !self.no_zeroes {
                        self.tx.pending.extend_from_slice(&[0u8; 124]);
                    }
                }
                _ => {
                    tracing::info!(conn = env.key, "EXPORT_NAME for an unknown export; closing");
                    self.life.closing = true;
                }
            },
            opt::ABORT => {
                self.reply(code, rep::ACK, &[]);
                self.life.closing = true;
            }
            opt::LIST => {
                if !data.is_empty() {
                    self.reply(code, rep::ERR_INVALID, &[]);
                    return;
                }
                for e in self.exports.snapshot().iter() {
                    let name = e.name.as_bytes();
                    proto::put_option_reply(
                        &mut self.tx.pending,
                        code,
                        rep::SERVER,
                        &[&(name.len() as u32).to_be_bytes(), name],
                    );
                }
                self.reply(code, rep::ACK, &[]);
            }
            opt::STRUCTURED_REPLY => {
                if data.is_empty() {
                    self.structured = true;
                    self.reply(code, rep::ACK, &[]);
                } else {
                    self.reply(code, rep::ERR_INVALID, &[]);
                }
            }
            opt::INFO | opt::GO => self.info_or_go(env, code, data),
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                match proto::parse_meta_request(data) {
                    _ if !self.structured => self.reply(code, rep::ERR_INVALID, &[]),
                    None => self.reply(code, rep::ERR_INVALID, &[]),
                    Some((name, _)) if Self::find_export(&self.exports, name).is_none() => {
                        self.reply(code, rep::ERR_UNKNOWN, &[])
                    }
                    // No metadata context is offered: an empty list is a valid answer.
                    Some(_) => self.reply(code, rep::ACK, &[]),
                }
            }
            _ => self.reply(code, rep::ERR_UNSUP, &[]),
        }
    }

    /// `INFO(BLOCK_SIZE)`: minimum, preferred, maximum payload.
    fn reply_block_size(&mut self, code: u32) {
        let mut b = [0u8; 14];
        b[0..2].copy_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        b[2..6].copy_from_slice(&self.min_io.to_be_bytes());
        b[6..10].copy_from_slice(&self.min_io.max(4096).to_be_bytes());
        b[10..14].copy_from_slice(&proto::MAX_PAYLOAD.to_be_bytes());
        self.reply(code, rep::INFO, &[&b]);
    }

    fn info_or_go(&mut self, env: &mut Env<'_>, code: u32, data: &[u8]) {
        let Some(req) = proto::parse_info_request(data) else {
            self.reply(code, rep::ERR_INVALID, &[]);
            return;
        };
        let Some(export) = Self::find_export(&self.exports, req.name) else {
            self.reply(code, rep::ERR_UNKNOWN, &[]);
            return;
        };
        // GO enters transmission before any reply is queued: an export removed since the
        // look-up is refused here, not acked and then dropped.
        if !self.select(env, export.clone()) || (code == opt::GO && !self.enter_transmission(env)) {
            self.reply(code, rep::ERR_UNKNOWN, &[]);
            return;
        }
        let mut buf = [0u8; 12];
        buf[0..2].copy_from_slice(&info::EXPORT.to_be_bytes());
        buf[2..10].copy_from_slice(&self.size.to_be_bytes());
        buf[10..12].copy_from_slice(&self.tflags().to_be_bytes());
        self.reply(code, rep::INFO, &[&buf]);
        let mut asked_block_size = false;
        for t in req.types() {
            match t {
                info::NAME => {
                    let name = export.name.clone();
                    self.reply(
                        code,
                        rep::INFO,
                        &[&info::NAME.to_be_bytes(), name.as_bytes()],
                    );
                }
                info::DESCRIPTION if !export.description.is_empty() => {
                    let d = export.description.clone();
                    self.reply(
                        code,
                        rep::INFO,
                        &[&info::DESCRIPTION.to_be_bytes(), d.as_bytes()],
                    );
                }
                info::BLOCK_SIZE if !asked_block_size => {
                    asked_block_size = true;
                    self.reply_block_size(code);
                }
                _ => {}
            }
        }
        if code == opt::INFO && !asked_block_size && self.min_io > 1 {
            // The protocol: a server sending ERR_BLOCK_SIZE_REQD SHOULD first send
            // INFO(BLOCK_SIZE), sparing the client a round trip.
            self.reply_block_size(code);
            self.reply(code, rep::ERR_BLOCK_SIZE_REQD, &[]);
            return;
        }
        self.reply(code, rep::ACK, &[]);
    }

    // ----- transmission -----

    fn reply_ok(&mut self, cookie: u64) {
        proto::put_simple_reply(&mut self.tx.pending, 0, cookie);
    }

    fn reply_err(&mut self, cookie: u64, e: u32) {
        if self.structured {
            proto::put_chunk_error(&mut self.tx.pending, cookie, e);
        } else {
            proto::put_simple_reply(&mut self.tx.pending, e, cookie);
        }
    }

    fn reply_read(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        if self.structured && data.is_empty() {
            // An OFFSET_DATA chunk must describe at least one byte (length >= 9): a read of
            // length 0 is answered with the final NONE chunk alone.
            proto::put_chunk_header(
                &mut self.tx.pending,
                chunk::FLAG_DONE,
                chunk::NONE,
                cookie,
                0,
            );
        } else if self.structured {
            proto::put_chunk_header(
                &mut self.tx.pending,
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                cookie,
                8 + data.len() as u32,
            );
            self.tx.pending.extend_from_slice(&offset.to_be_bytes());
        } else {
            proto::put_simple_reply(&mut self.tx.pending, 0, cookie);
        }
        self.tx.pending.extend_from_slice(data);
    }

    fn finish(&mut self, p: Pending, result: Result<(), Errno>, data: &[u8]) {
        if result.is_err() {
            self.errors += 1;
        }
        match result {
            Err(e) => self.reply_err(p.cookie, nbd_error(e)),
            Ok(()) if p.kind == cmd::READ => self.reply_read(p.cookie, p.offset, data),
            Ok(()) => self.reply_ok(p.cookie),
        }
    }

    fn request(&mut self, env: &mut Env<'_>, r: proto::Request, payload: &[u8]) {
        if r.kind == cmd::DISC {
            self.life.closing = true;
            return;
        }
        if self.life.shutting_down {
            self.reply_err(r.cookie, err::ESHUTDOWN);
            return;
        }
        let known = cflag::FUA | cflag::NO_HOLE;
        if r.flags & !known != 0 || (r.flags & cflag::NO_HOLE != 0 && r.kind != cmd::WRITE_ZEROES) {
            self.reply_err(r.cookie, err::EINVAL);
            return;
        }
        let is_write = matches!(r.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if is_write && self.read_only {
            self.reply_err(r.cookie, err::EPERM);
            return;
        }
        let ranged = matches!(
            r.kind,
            cmd::READ | cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES
        );
        if ranged && !in_range(r.offset, r.len as u64, self.size) {
            // The protocol's "Error values": ENOSPC for a write or write zeroes past the end,
            // EINVAL for a read or a trim.
            let grows = matches!(r.kind, cmd::WRITE | cmd::WRITE_ZEROES);
            self.reply_err(r.cookie, if grows { err::ENOSPC } else { err::EINVAL });
            return;
        }
        if r.kind == cmd::READ && r.len > proto::MAX_PAYLOAD {
            self.reply_err(r.cookie, err::EINVAL);
            return;
        }
        let fua = r.flags & cflag::FUA != 0;
        let p = Pending {
            cookie: r.cookie,
            kind: r.kind,
            offset: r.offset,
            len: r.len,
        };
        let tag = IoTag {
            conn: env.key,
            slot: self.reqs.vacant_key() as u32,
        };
        let chan = &mut env.chans[self.vol];
        let vc = &mut env.vol_counters[self.vol];
        vc.ops += 1;
        env.counters.ios += 1;
        let started = match r.kind {
            cmd::READ => {
                env.counters.read_bytes += r.len as u64;
                vc.read_bytes += r.len as u64;
                match chan.read(env.io, tag, r.offset, r.len) {
                    ReadStart::Ready(data) => {
                        self.reply_read(r.cookie, r.offset, data);
                        return;
                    }
                    ReadStart::Failed(e) => Start::Done(Err(e)),
                    ReadStart::Pending => Start::Pending,
                }
            }
            cmd::WRITE => {
                env.counters.write_bytes += r.len as u64;
                vc.write_bytes += r.len as u64;
                chan.write(env.io, tag, r.offset, payload, fua)
            }
            cmd::FLUSH => chan.flush(env.io, tag),
            cmd::TRIM => chan.unmap(env.io, tag, r.offset, r.len as u64, fua),
            cmd::WRITE_ZEROES => chan.write_zeroes(env.io, tag, r.offset, r.len as u64, fua),
            _ => Start::Done(Err(Errno::INVAL)),
        };
        match started {
            Start::Done(res) => self.finish(p, res, &[]),
            Start::Pending => {
                let k = self.reqs.insert(p);
                debug_assert_eq!(k as u32, tag.slot);
            }
        }
    }

    fn try_close(&mut self) {
        if self.life.closing
            && !self.life.recv_armed
            && !self.tx.armed()
            && self.reqs.is_empty()
            && (self.tx.unsent() == 0 || self.life.broken)
        {
            self.life.closed = true;
        }
    }
}

impl Conn for NbdConn {
    fn start(&mut self, env: &mut Env<'_>) {
        proto::put_greeting(&mut self.tx.pending);
        self.arm_recv(env);
    }

    fn on_recv(&mut self, env: &mut Env<'_>, res: i32) {
        self.life.recv_armed = false;
        if res <= 0 {
            if res < 0 && res != -libc::ECANCELED {
                tracing::debug!(conn = env.key, error = %std::io::Error::from_raw_os_error(-res), "receive failed");
                self.life.broken = true;
            }
            // EOF or cancelled: the client is gone or we are stopping; finish what is in
            // flight, then close.
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
        self.reqs.get(slot as usize).map(|_| self.vol)
    }

    fn on_io(&mut self, slot: u32, result: Result<(), Errno>, data: &[u8]) {
        let Some(p) = self.reqs.try_remove(slot as usize) else {
            tracing::error!(slot, "completion for an unknown request slot");
            return;
        };
        if !self.life.broken {
            debug_assert!(p.kind != cmd::READ || result.is_err() || data.len() == p.len as usize);
            self.finish(p, result, data);
        }
    }

    fn flush(&mut self, env: &mut Env<'_>) {
        if self.errors > 0 && self.phase == Phase::Transmission {
            env.vol_counters[self.vol].errors += std::mem::take(&mut self.errors);
        }
        if env.stopping && !self.life.shutting_down {
            self.stop(env);
        }
        if !self.life.broken && !self.life.recv_armed && !self.paused() {
            // Requests left in the buffer by backpressure can run now.
            self.process(env);
        }
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
        self.life.abort(env.io, env.key, self.tx.armed());
    }

    fn done(&self) -> bool {
        self.life.closed
    }

    fn describe(&self) -> String {
        format!(
            "nbd: phase {:?}, {} request(s) in flight, closing {}, receive armed {}, send armed {}, {} byte(s) unsent, {} byte(s) unparsed",
            self.phase,
            self.reqs.len(),
            self.life.closing,
            self.life.recv_armed,
            self.tx.armed(),
            self.tx.unsent(),
            self.rx_hi - self.rx_lo
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_name_while_stopping_closes_instead_of_getting_an_option_reply() {
        // doc/proto.md: NBD_OPT_EXPORT_NAME has no error reply ("If the server is unwilling
        // to allow the export, it MUST terminate the session"); any option reply bytes would
        // be read as the export size and flags. Plain newstyle has no option replies at all.
        for fixed in [false, true] {
            assert_eq!(
                gate(fixed, true, opt::EXPORT_NAME),
                Gate::Close,
                "fixed {fixed}"
            );
            assert_eq!(gate(fixed, false, opt::EXPORT_NAME), Gate::Serve);
            assert_ne!(gate(fixed, true, opt::GO), Gate::Serve);
        }
        assert_eq!(gate(true, true, opt::GO), Gate::Refuse(rep::ERR_SHUTDOWN));
        assert_eq!(gate(true, true, opt::INFO), Gate::Refuse(rep::ERR_SHUTDOWN));
        assert_eq!(gate(true, true, opt::ABORT), Gate::Serve);
        assert_eq!(gate(false, false, opt::GO), Gate::Violation);
        assert_eq!(gate(false, true, opt::ABORT), Gate::Violation);
    }

    #[test]
    fn device_errors_map_to_the_values_the_protocol_allows() {
        // doc/proto.md, "Error values": EDQUOT and EFBIG SHOULD become NBD_ENOSPC;
        // NBD_EOVERFLOW and NBD_ENOTSUP SHOULD NOT be returned except for NBD_CMD_FLAG_DF and
        // NBD_CMD_FLAG_FAST_ZERO (never advertised here), so those errnos become EINVAL.
        let cases = [
            (libc::EPERM, err::EPERM),
            (libc::EIO, err::EIO),
            (libc::ENOMEM, err::ENOMEM),
            (libc::EINVAL, err::EINVAL),
            (libc::ENOSPC, err::ENOSPC),
            (libc::EDQUOT, err::ENOSPC),
            (libc::EFBIG, err::ENOSPC),
            (libc::EOVERFLOW, err::EINVAL),
            (libc::EOPNOTSUPP, err::EINVAL),
            (libc::ESHUTDOWN, err::ESHUTDOWN),
            (libc::EROFS, err::EPERM),
            (libc::ENOTCONN, err::EIO),
        ];
        let got: Vec<(i32, u32)> = cases
            .iter()
            .map(|&(e, _)| (e, nbd_error(Errno(e))))
            .collect();
        let want: Vec<(i32, u32)> = cases.to_vec();
        assert_eq!(got, want);
    }
}
