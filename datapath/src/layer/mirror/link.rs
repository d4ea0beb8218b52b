//! A mirror link over TCP: one socket carrying one volume's session, driven by the volume's
//! home reactor like any connection (io_uring connect, receive and send).
//!
//! Model: the follower's reactor dials (`LinkConn::dial`), sends HELLO (with a fresh nonce)
//! and waits for WELCOME; the leader's reactor accepts on the replication listener
//! (`LinkConn::accepted`), waits for HELLO, checks it against its volumes and answers WELCOME
//! (its nonce and its proof of the shared key) or REFUSE, then waits for the follower's AUTH
//! (its proof) before it starts the session (docs/mirror-protocol.md, "Link authentication").
//! From then on the link only frames bytes: every whole message goes to the engine, decoded in
//! place in the receive buffer (the engine applies a write's payload from there), and
//! whatever the engine queued leaves as one batch: one `sendmsg` whose scatter list holds each
//! message's header and its payload straight from the update's own buffer (txq.rs; several
//! messages per send, so one ACK per batch at most). What the engine queues while a batch is
//! in flight goes in the next one.
//!
//! A handshake must be complete within [`HANDSHAKE_TIMEOUT`] of the link's creation: every
//! receive armed before it is linked to a timeout (io_uring `LINK_TIMEOUT`), so a peer that
//! connects and sends nothing, or half a header, is dropped instead of held open for ever.
//! A dial's connect is linked to [`CONNECT_TIMEOUT`] the same way.
//!
//! Invariants: the receive buffer is not moved while a receive is armed; the batch in flight
//! and its scatter list are not changed while a send is armed, and hold a reference to every
//! payload they point at until the send's completion (also when the link fails: the link is
//! not done before), so no payload is freed, reused or changed under the kernel (checked
//! against the headers' checksums in debug builds); a message that fails decoding or the
//! engine's checks drops the link and is never applied; nothing reaches the engine (no session
//! start, no message) before both proofs are verified; the engine is told `link_down` exactly
//! once per session, when the link closes.

use super::engine::Role;
use super::txq::TxQueue;
use super::wire::{self, AuthRole, Decoded, Handshake, Header, NONCE, Type};
use crate::runtime::{Acceptor, Conn, Env};
use crate::uring::iov::SendList;
use crate::uring::{Errno, Kind, UserData};
use io_uring::{opcode, types};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinblk_witness::Key;

/// A link's handshake (HELLO, WELCOME, AUTH) must be complete this long after the link was
/// created (accepted, adopted or dialled), or the link is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// A dialled connection must be established this long after the dial, or it is given up and
/// dialled again ([`super::engine`]'s redial delay later): a network that drops packets
/// silently (a cut WAN link) would otherwise hold the dial in the kernel's SYN retries, ever
/// further apart (measured: 7 s without a link after a 12 s cut, 15 s after a 20 s one).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

const RX_INITIAL: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    AwaitWelcome,
    AwaitHello,
    AwaitAuth,
    Up,
    Closing,
}

/// One replication link.
pub struct LinkConn {
    fd: OwnedFd,
    state: State,
    /// Volume index, once known.
    vol: Option<usize>,
    addr: Box<libc::sockaddr_storage>,
    addr_len: u32,
    rx: Vec<u8>,
    lo: usize,
    hi: usize,
    /// Messages waiting for the next send (headers; payloads by reference, txq.rs).
    tx: TxQueue,
    /// The messages of the send in flight, and their scatter list: neither changes while the
    /// send is armed, and the payloads they reference stay alive and unchanged until then.
    inflight: TxQueue,
    list: SendList,
    recv_armed: bool,
    send_armed: bool,
    connect_armed: bool,
    attached: bool,
    stopping: bool,
    closed: bool,
    why: &'static str,
    /// For a link accepted on the listener: where each volume's engine runs (a link for a
    /// volume homed elsewhere is handed over there after its HELLO).
    homes: Option<Arc<Vec<Option<usize>>>>,
    /// The sites' shared key (the witness's): both ends prove they hold it.
    key: Arc<Key>,
    /// The handshake under way (follower: after HELLO; leader: after WELCOME).
    pending: Option<Pending>,
    /// When the link was created: its handshake must be complete by `born + HANDSHAKE_TIMEOUT`.
    born: Instant,
    /// The handshake deadline's timespec (read by the kernel when the receive is submitted).
    hs_ts: Box<types::Timespec>,
    /// The receive armed is linked to the handshake deadline.
    hs_timeout_armed: bool,
}

/// The fields of a handshake under way (docs/mirror-protocol.md, "Link authentication").
struct Pending {
    vol: usize,
    nonce_f: [u8; NONCE],
    nonce_l: [u8; NONCE],
    f_state: u32,
    f_inc: u64,
    l_state: u32,
    l_inc: u64,
    /// The follower's and the leader's leadership words (HELLO and WELCOME `offset`).
    f_lead: u64,
    l_lead: u64,
    /// When this site queued its half of the handshake (before it went out): the leader's
    /// WELCOME, the follower's HELLO. Its first read lease runs from then.
    welcome_at: Instant,
}

impl Pending {
    fn handshake<'a>(&self, size: u64, block: u32, name: &'a str) -> Handshake<'a> {
        Handshake {
            nonce_f: self.nonce_f,
            nonce_l: self.nonce_l,
            size,
            block,
            f_state: self.f_state,
            f_inc: self.f_inc,
            l_state: self.l_state,
            l_inc: self.l_inc,
            f_lead: self.f_lead,
            l_lead: self.l_lead,
            name,
        }
    }
}

use super::engine_of as engine;

/// The replication listener's acceptor: accepted sockets become links that wait for HELLO.
pub struct LinkAcceptor {
    /// Per volume index: the reactor running its engine, for mirrored volumes.
    homes: Arc<Vec<Option<usize>>>,
    key: Arc<Key>,
}

impl LinkAcceptor {
    /// An acceptor for a daemon whose mirrored volumes run on `homes` (index = volume), whose
    /// links authenticate with `key`.
    pub fn new(homes: Vec<Option<usize>>, key: Arc<Key>) -> Self {
        Self {
            homes: Arc::new(homes),
            key,
        }
    }
}

impl Acceptor for LinkAcceptor {
    fn proto(&self) -> &'static str {
        "mirror"
    }

    fn accept(&self, fd: OwnedFd) -> Box<dyn Conn> {
        Box::new(LinkConn::accepted(
            fd,
            Arc::clone(&self.homes),
            Arc::clone(&self.key),
        ))
    }
}

impl LinkConn {
    fn new(
        fd: OwnedFd,
        state: State,
        vol: Option<usize>,
        addr: Option<SocketAddr>,
        key: Arc<Key>,
    ) -> Self {
        crate::transport::tcp::set_nodelay(&fd);
        let (addr, addr_len) =
            crate::transport::tcp::sockaddr(addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))));
        Self {
            fd,
            state,
            vol,
            addr,
            addr_len,
            rx: vec![0; RX_INITIAL],
            lo: 0,
            hi: 0,
            tx: TxQueue::with_capacity(1 << 16),
            inflight: TxQueue::with_capacity(1 << 16),
            list: SendList::default(),
            recv_armed: false,
            send_armed: false,
            connect_armed: false,
            attached: false,
            stopping: false,
            closed: false,
            why: "closed",
            homes: None,
            key,
            pending: None,
            born: Instant::now(),
            hs_ts: Box::new(types::Timespec::new()),
            hs_timeout_armed: false,
        }
    }

    /// A link the follower dials to `peer` for volume `vol`, authenticated with `key`.
    pub fn dial(peer: SocketAddr, vol: usize, key: Arc<Key>) -> std::io::Result<Self> {
        let fd = crate::transport::tcp::stream_socket(peer)?;
        Ok(Self::new(fd, State::Connecting, Some(vol), Some(peer), key))
    }

    /// A link accepted on the replication listener.
    pub fn accepted(fd: OwnedFd, homes: Arc<Vec<Option<usize>>>, key: Arc<Key>) -> Self {
        let mut l = Self::new(fd, State::AwaitHello, None, None, key);
        l.homes = Some(homes);
        l
    }

    /// A link accepted on another reactor, handed here (its volume's home) with the HELLO it
    /// already received; the HELLO is processed when the link starts.
    pub fn adopted(fd: OwnedFd, hello: &[u8], key: Arc<Key>) -> Self {
        let mut l = Self::new(fd, State::AwaitHello, None, None, key);
        if l.rx.len() < hello.len() {
            l.rx.resize(hello.len(), 0);
        }
        l.rx[..hello.len()].copy_from_slice(hello);
        l.hi = hello.len();
        l
    }

    /// A session started: the link's warnings start afresh (the next failure is logged at
    /// once), and failures not logged since the last warning are reported.
    fn link_warnings_end(e: &mut super::engine::Engine) {
        let n = e.link_warns.clear();
        if n > 0 {
            tracing::info!(volume = %e.config().name, not_logged = n,
                "mirror: link up; {n} link failures were not logged since the last warning");
        }
    }

    fn close(&mut self, env: &mut Env<'_>, why: &'static str) {
        if self.state == State::Closing {
            return;
        }
        if why != "closed" {
            // A follower whose leader is gone fails a dial every 200 ms: the first failure
            // is logged, then one a minute with the count of those not logged.
            let limited = self
                .vol
                .and_then(|vol| engine(env.chans, vol))
                .map(|e| e.link_warns.check(why, Instant::now()));
            match limited {
                None | Some(Some(0)) => {
                    tracing::warn!(volume = ?self.vol, why, "mirror: dropping the link")
                }
                Some(Some(n)) => tracing::warn!(volume = ?self.vol, why, not_logged = n,
                    "mirror: dropping the link (again; {n} more since the last warning)"),
                Some(None) => {}
            }
        }
        self.why = why;
        self.state = State::Closing;
        // Make pending socket operations finish now.
        // SAFETY: shutdown(2) on a descriptor we own.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        self.detach(env);
    }

    fn detach(&mut self, env: &mut Env<'_>) {
        let key = env.key;
        if let Some(vol) = self.vol
            && let Some(e) = engine(env.chans, vol)
        {
            if std::mem::take(&mut self.attached) {
                e.link_down(self.why);
            }
            if e.link_key == Some(key) {
                e.link_key = None;
            }
        }
    }

    fn arm_recv(&mut self, env: &mut Env<'_>) {
        if self.rx.len() - self.hi < 64 * 1024 {
            self.rx.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
        }
        let need = match wire::decode(&self.rx[self.lo..self.hi]) {
            Decoded::Partial(n) => n,
            _ => 0,
        };
        if self.rx.len() < need + 64 * 1024 {
            self.rx.resize(need + 64 * 1024, 0);
        }
        let free = &mut self.rx[self.hi..];
        if matches!(
            self.state,
            State::AwaitHello | State::AwaitAuth | State::AwaitWelcome
        ) {
            // The handshake's deadline bounds this receive.
            let left = HANDSHAKE_TIMEOUT
                .saturating_sub(self.born.elapsed())
                .max(Duration::from_millis(1));
            *self.hs_ts = types::Timespec::from(left);
            let recv = opcode::Recv::new(
                types::Fd(self.fd.as_raw_fd()),
                free.as_mut_ptr(),
                free.len() as u32,
            )
            .build()
            .flags(io_uring::squeue::Flags::IO_LINK)
            .user_data(UserData::new(Kind::Recv, env.key).0);
            let timeout = opcode::LinkTimeout::new(&*self.hs_ts)
                .build()
                .user_data(UserData::new(Kind::Cancel, env.key).0);
            // SAFETY: rx is not resized or compacted while the receive is armed; the
            // timespec is boxed in the link, which is not done while the receive is armed,
            // and the kernel copies it at submission.
            unsafe { env.io.push_pair(&recv, &timeout) };
            self.hs_timeout_armed = true;
        } else {
            // SAFETY: rx is not resized or compacted while the receive is armed, and the link
            // is not done while anything is armed.
            unsafe { env.io.push_recv(self.fd.as_raw_fd(), free, env.key) };
            self.hs_timeout_armed = false;
        }
        self.recv_armed = true;
    }

    /// Arm a send: the rest of the batch in flight, or else everything queued as a new batch
    /// (one `sendmsg`: every message's header and payload as a scatter list).
    fn arm_send(&mut self, env: &mut Env<'_>) {
        // A new batch of everything queued on an open link whose receive is armed (by the
        // flush) is a quiet send: its completion only gives the payloads back. The rest of a
        // short send, a handshake's or a closing link's send is not.
        let mut quiet = self.state == State::Up && !self.stopping;
        if self.list.left() == 0 {
            debug_assert!(self.inflight.is_empty(), "the last batch was not released");
            self.inflight.append(&mut self.tx);
            self.list.clear();
            self.inflight.fill(&mut self.list);
        } else {
            quiet = false;
        }
        // SAFETY: the list and `inflight` (which holds a reference to every payload the list
        // points at, so none is freed, reused or changed) are not modified while the send is
        // armed, and the link is not done while it is.
        unsafe {
            env.io
                .push_sendmsg_quiet(self.fd.as_raw_fd(), &mut self.list, env.key, quiet)
        };
        self.send_armed = true;
    }

    /// Bytes queued or in flight, not sent yet.
    fn unsent(&self) -> usize {
        self.tx.len() + self.list.left()
    }

    /// The batch in flight is done with (all sent, or the send failed): its payload
    /// references go back to the engine's pool (or are dropped without an engine).
    fn release_sent(&mut self, env: &mut Env<'_>) {
        debug_assert!(
            self.inflight.intact(),
            "mirror link: a payload changed while its send was in flight"
        );
        self.list.clear();
        match self.vol.and_then(|v| engine(env.chans, v)) {
            Some(e) => self.inflight.clear(|d| e.recycle(d)),
            None => self.inflight.clear(drop),
        }
    }

    fn hello(&mut self, env: &mut Env<'_>, h: &Header, payload: &[u8]) -> Result<(), String> {
        if h.ty != Type::Hello {
            return Err("expected HELLO".into());
        }
        let hello =
            wire::decode_hello(payload).ok_or_else(|| "HELLO payload malformed".to_string())?;
        let (size, block, name) = (hello.size, hello.block, hello.name);
        let vol = env
            .shared
            .volumes
            .find(name)
            .ok_or_else(|| format!("no volume named {name:?}"))?;
        let home = self
            .homes
            .as_ref()
            .and_then(|h| h.get(vol).copied().flatten());
        if home.is_some_and(|h| h != env.io.reactor) {
            // The volume's engine runs on another reactor: hand the socket over, with the
            // HELLO, and forget it here (the duplicate keeps the connection open).
            let fd = self
                .fd
                .try_clone()
                .map_err(|e| format!("cannot hand the link over: {e}"))?;
            let mut raw = Vec::with_capacity(wire::HEADER + payload.len());
            wire::encode(&mut raw, h, payload);
            let home = home.expect("checked");
            let link = LinkConn::adopted(fd, &raw, Arc::clone(&self.key));
            env.shared.mailboxes[home].send(crate::runtime::Msg::Spawn(Box::new(link)));
            self.state = State::Closing;
            self.why = "handed over";
            return Ok(());
        }
        let Some(e) = engine(env.chans, vol) else {
            return Err(format!("volume {name:?} is not mirrored here"));
        };
        if !e.leadership_durable() {
            return Err(format!(
                "{name:?}: this site's new role (a switchover's) is not on disk yet; the peer dials again"
            ));
        }
        let c = e.config();
        if c.role != Role::Leader {
            return Err(format!("this site is not the leader of {name:?}"));
        }
        if c.size != size || c.block != block {
            return Err(format!(
                "geometry differs: here {} bytes / {} block, peer {size} / {block}",
                c.size, c.block
            ));
        }
        e.check_peer_lease(h.count)?;
        if e.link_key.is_some() {
            return Err(format!("{name:?} already has a link"));
        }
        if e.is_diverged() {
            return Err(format!(
                "{name:?}: the replicas diverged while the follower was away; a resync is needed"
            ));
        }
        let (size, block) = (c.size, c.block);
        // Nothing reaches the engine before the follower has proved it holds the key (AUTH):
        // answer with this site's nonce and proof, and remember the handshake.
        let nonce_l = wire::nonce().map_err(|e| format!("no random nonce: {e}"))?;
        let (mine, incarnation) = (e.replica_state(), e.incarnation());
        let p = Pending {
            vol,
            nonce_f: hello.nonce,
            nonce_l,
            f_state: h.id,
            f_inc: h.seq,
            l_state: mine,
            l_inc: incarnation,
            f_lead: h.offset,
            l_lead: e.leadership(),
            welcome_at: Instant::now(),
        };
        // From here the follower may serve reads under a lease (it starts its session on
        // WELCOME): a grant this site gets before AUTH waits that lease out.
        e.welcome_sent(p.welcome_at);
        let proof = p
            .handshake(size, block, name)
            .proof(&self.key, AuthRole::Leader);
        wire::encode(
            self.tx.bytes_mut(),
            &Header {
                id: mine,
                seq: incarnation,
                count: e.announced_lease_ms(),
                offset: p.l_lead,
                ..Header::new(Type::Welcome)
            },
            &wire::encode_welcome(&wire::Welcome {
                size,
                block,
                nonce: nonce_l,
                proof,
            }),
        );
        self.pending = Some(p);
        self.state = State::AwaitAuth;
        Ok(())
    }

    /// The leader's end of the handshake: the follower's AUTH. Only a valid proof starts the
    /// session.
    fn auth(&mut self, env: &mut Env<'_>, h: &Header, payload: &[u8]) -> Result<(), String> {
        if h.ty != Type::Auth {
            return Err("expected AUTH".into());
        }
        let p = self.pending.take().ok_or("no handshake under way")?;
        let Some(e) = engine(env.chans, p.vol) else {
            return Err("volume not mirrored here".into());
        };
        let name = e.config().name.clone();
        let hs = p.handshake(e.config().size, e.config().block, &name);
        if !hs.verify(&self.key, AuthRole::Follower, payload) {
            tracing::warn!(volume = %name,
                "mirror: link authentication failed (the peer does not hold the key, or replayed or forged a handshake)");
            return Err("authentication failed".into());
        }
        if e.link_key.is_some() {
            return Err(format!("{name:?} already has a link"));
        }
        if e.is_diverged() {
            return Err(format!(
                "{name:?}: the replicas diverged while the follower was away; a resync is needed"
            ));
        }
        if !e.leadership_durable() {
            return Err(format!(
                "{name:?}: this site's new role (a switchover's) is not on disk yet; the peer dials again"
            ));
        }
        if e.replica_state() != p.l_state
            || e.incarnation() != p.l_inc
            || e.leadership() != p.l_lead
        {
            return Err(format!(
                "{name:?}: the replica state changed during the handshake"
            ));
        }
        // Both sites' replica states decide the session (normal, or a resync one way).
        e.set_peer_incarnation(p.f_inc);
        e.set_handshake_sent(p.welcome_at);
        e.start_session(env.io, p.f_state, p.f_lead)?;
        e.link_key = Some(env.key);
        Self::link_warnings_end(e);
        self.vol = Some(p.vol);
        self.attached = true;
        self.state = State::Up;
        Ok(())
    }

    /// Send REFUSE with `why` and close once it is out.
    fn refuse(&mut self, why: &str) {
        // A follower redials every 200 ms: the refusal is logged the first time, then once a
        // minute with the count.
        match super::ratelimit::check_unbound("refusing a link", Instant::now()) {
            Some(0) => tracing::warn!(%why, "mirror: refusing a link"),
            Some(n) => tracing::warn!(%why, not_logged = n,
                "mirror: refusing a link (again; {n} more since the last warning)"),
            None => {}
        }
        let n = why.len().min(1024);
        wire::encode(
            self.tx.bytes_mut(),
            &Header::new(Type::Refuse),
            &why.as_bytes()[..n],
        );
        self.state = State::Closing;
        self.why = "refused";
    }

    fn process(&mut self, env: &mut Env<'_>) {
        while self.state != State::Closing {
            let (h, range) = match wire::decode(&self.rx[self.lo..self.hi]) {
                Decoded::Partial(_) => return,
                Decoded::Bad(why) => {
                    if let Some(e) = self.vol.and_then(|v| engine(env.chans, v)) {
                        e.stats().inc(&e.stats().rejected);
                    }
                    tracing::warn!(volume = ?self.vol, why, "mirror: rejected a message");
                    return self.close(env, why);
                }
                Decoded::Msg(h, r) => (h, r.start + self.lo..r.end + self.lo),
            };
            self.lo = range.end;
            let payload = &self.rx[range];
            match self.state {
                State::AwaitHello => {
                    let payload = payload.to_vec();
                    if let Err(why) = self.hello(env, &h, &payload) {
                        return self.refuse(&why);
                    }
                }
                State::AwaitAuth => {
                    let payload = payload.to_vec();
                    if let Err(why) = self.auth(env, &h, &payload) {
                        return self.refuse(&why);
                    }
                }
                State::AwaitWelcome => {
                    let vol = self.vol.expect("dialled links know their volume");
                    match h.ty {
                        Type::Welcome => {
                            let Some(e) = engine(env.chans, vol) else {
                                return self.close(env, "volume not mirrored");
                            };
                            let Some(w) = wire::decode_welcome(payload) else {
                                return self.close(env, "malformed WELCOME");
                            };
                            if w.size != e.config().size || w.block != e.config().block {
                                tracing::error!(volume = %e.config().name,
                                    "mirror: the leader's volume geometry differs");
                                return self.close(env, "geometry differs");
                            }
                            if let Err(why) = e.check_peer_lease(h.count) {
                                if e.link_warns.check("lease mismatch", Instant::now()) == Some(0) {
                                    tracing::error!(volume = %e.config().name, %why,
                                        "mirror: refusing the session");
                                }
                                return self.close(env, "the sites disagree on failover");
                            }
                            let Some(mut p) = self.pending.take() else {
                                return self.close(env, "WELCOME without HELLO");
                            };
                            (p.nonce_l, p.l_state, p.l_inc, p.l_lead) =
                                (w.nonce, h.id, h.seq, h.offset);
                            let name = e.config().name.clone();
                            let hs = p.handshake(w.size, w.block, &name);
                            if !hs.verify(&self.key, AuthRole::Leader, &w.proof) {
                                tracing::error!(volume = %name,
                                    "mirror: the leader failed link authentication (it does not hold the key, or the WELCOME is replayed or forged)");
                                return self.close(env, "the leader failed authentication");
                            }
                            if e.replica_state() != p.f_state || e.leadership() != p.f_lead {
                                return self
                                    .close(env, "replica state changed during the handshake");
                            }
                            // Our proof goes out before anything of the session.
                            let proof = hs.proof(&self.key, AuthRole::Follower);
                            wire::encode(self.tx.bytes_mut(), &Header::new(Type::Auth), &proof);
                            e.set_peer_incarnation(h.seq);
                            // Its first lease runs from its HELLO, which the WELCOME answered
                            // (the leader counts the lease it may have given from that
                            // WELCOME, sent later).
                            e.set_handshake_sent(p.welcome_at);
                            if let Err(why) = e.start_session(env.io, h.id, h.offset) {
                                match e.link_warns.check("refusing the session", Instant::now()) {
                                    Some(0) => tracing::error!(volume = %e.config().name, %why,
                                        "mirror: refusing the session"),
                                    Some(n) => tracing::error!(volume = %e.config().name, %why,
                                        not_logged = n,
                                        "mirror: refusing the session (again; {n} more since the last error)"),
                                    None => {}
                                }
                                return self.close(env, "no session possible");
                            }
                            self.state = State::Up;
                            self.attached = true;
                            Self::link_warnings_end(e);
                        }
                        Type::Refuse => {
                            let why = String::from_utf8_lossy(payload);
                            let limited = self
                                .vol
                                .and_then(|v| engine(env.chans, v))
                                .map(|e| e.link_warns.check("the leader refused", Instant::now()));
                            match limited {
                                None | Some(Some(0)) => {
                                    tracing::error!(%why, "mirror: the leader refused the link")
                                }
                                Some(Some(n)) => tracing::error!(%why, not_logged = n,
                                    "mirror: the leader refused the link (again; {n} more since the last error)"),
                                Some(None) => {}
                            }
                            return self.close(env, "refused by the leader");
                        }
                        _ => return self.close(env, "expected WELCOME"),
                    }
                }
                State::Up if h.ty == Type::Refuse => {
                    // The leader refused our AUTH (or the session).
                    let why = String::from_utf8_lossy(payload);
                    tracing::error!(volume = ?self.vol, %why, "mirror: the leader refused the link");
                    return self.close(env, "refused by the leader");
                }
                State::Up => {
                    let vol = self.vol.expect("up links know their volume");
                    let Some(e) = engine(env.chans, vol) else {
                        return self.close(env, "volume not mirrored");
                    };
                    if let Err(why) = e.on_msg(env.io, &h, payload) {
                        tracing::warn!(volume = %e.config().name, why, seq = h.seq,
                            ty = ?h.ty, "mirror: rejected a message");
                        return self.close(env, why);
                    }
                }
                State::Connecting | State::Closing => return,
            }
        }
    }
}

impl Conn for LinkConn {
    fn start(&mut self, env: &mut Env<'_>) {
        if self.hi > 0 {
            // Adopted with its HELLO already received.
            return self.process(env);
        }
        match self.state {
            State::Connecting => {
                // A dialled link is its volume's link from the start (the engine then dials
                // no other until this one closes).
                if let Some(e) = self.vol.and_then(|v| engine(env.chans, v)) {
                    e.link_key = Some(env.key);
                }
                let sqe = opcode::Connect::new(
                    types::Fd(self.fd.as_raw_fd()),
                    (&*self.addr as *const libc::sockaddr_storage).cast(),
                    self.addr_len,
                )
                .build()
                .flags(io_uring::squeue::Flags::IO_LINK)
                .user_data(UserData::new(Kind::Send, env.key).0);
                *self.hs_ts = types::Timespec::from(CONNECT_TIMEOUT);
                let timeout = opcode::LinkTimeout::new(&*self.hs_ts)
                    .build()
                    .user_data(UserData::new(Kind::Cancel, env.key).0);
                // SAFETY: the address and the timespec are boxed in the link, which outlives
                // the connect; the kernel copies the timespec at submission.
                unsafe { env.io.push_pair(&sqe, &timeout) };
                self.connect_armed = true;
            }
            _ => self.arm_recv(env),
        }
    }

    fn on_recv(&mut self, env: &mut Env<'_>, res: i32) {
        self.recv_armed = false;
        if res <= 0 {
            return self.close(
                env,
                match (res, self.state) {
                    (r, _) if r == -libc::ECANCELED && self.hs_timeout_armed => {
                        "the handshake was not complete within 2 s (HANDSHAKE_TIMEOUT)"
                    }
                    (0, State::AwaitWelcome) => {
                        "the leader closed the link during the handshake (it refused our HELLO, or runs an older protocol version)"
                    }
                    (0, _) => "peer closed",
                    _ => "receive failed",
                },
            );
        }
        self.hi += res as usize;
        if let Some(e) = self.vol.and_then(|v| engine(env.chans, v)) {
            e.last_rx = Instant::now();
        }
        self.process(env);
    }

    fn on_send(&mut self, env: &mut Env<'_>, res: i32) {
        if self.connect_armed {
            self.connect_armed = false;
            if res == -libc::ECANCELED {
                return self.close(
                    env,
                    "the connection was not established in time (CONNECT_TIMEOUT)",
                );
            }
            if res < 0 {
                tracing::debug!(error = %std::io::Error::from_raw_os_error(-res), "mirror: connect failed");
                return self.close(env, "connect failed");
            }
            let vol = self.vol.expect("dialled links know their volume");
            let Some(e) = engine(env.chans, vol) else {
                return self.close(env, "volume not mirrored");
            };
            if !e.leadership_durable() {
                // (A switchover's new role not on disk yet: no session on it; dialled again.)
                return self.close(env, "this site's new role is not on disk yet");
            }
            let nonce_f = match wire::nonce() {
                Ok(n) => n,
                Err(err) => {
                    tracing::error!(%err, "mirror: no random nonce for the handshake");
                    return self.close(env, "no random nonce");
                }
            };
            let c = e.config();
            let p = wire::encode_hello(c.size, c.block, &nonce_f, &c.name);
            let hello = Header {
                id: e.replica_state(),
                seq: e.incarnation(),
                count: e.announced_lease_ms(),
                offset: e.leadership(),
                ..Header::new(Type::Hello)
            };
            wire::encode(self.tx.bytes_mut(), &hello, &p);
            self.pending = Some(Pending {
                vol,
                nonce_f,
                nonce_l: [0; NONCE],
                f_state: hello.id,
                f_inc: hello.seq,
                l_state: 0,
                l_inc: 0,
                f_lead: hello.offset,
                l_lead: 0,
                welcome_at: Instant::now(),
            });
            self.state = State::AwaitWelcome;
            return;
        }
        self.send_armed = false;
        if res <= 0 {
            // Nothing more can go out on this socket: drop what is unsent, or the flush
            // below would re-arm the send forever and the link would never be done. (The
            // kernel is done with the batch: its completion is this.)
            self.release_sent(env);
            match self.vol.and_then(|v| engine(env.chans, v)) {
                Some(e) => self.tx.clear(|d| e.recycle(d)),
                None => self.tx.clear(drop),
            }
            return self.close(env, "send failed");
        }
        self.list.advance(res as usize);
        if self.list.left() > 0 {
            self.arm_send(env);
        } else {
            self.release_sent(env);
        }
    }

    fn on_io(&mut self, _slot: u32, _result: Result<(), Errno>, _data: &[u8]) {}

    fn flush(&mut self, env: &mut Env<'_>) {
        if env.stopping && !self.stopping {
            self.stopping = true;
        }
        let mut why = None;
        if self.state == State::Up
            && let Some(e) = self.vol.and_then(|v| engine(env.chans, v))
        {
            if let Some(reason) = e.kill_link.take() {
                why = Some(reason);
            } else if self.stopping && e.idle() && self.unsent() == 0 {
                why = Some("closed");
            } else if !self.send_armed {
                e.take_tx(&mut self.tx);
            }
        }
        // Closing falls through to the checks below, so a link with nothing armed is done in
        // this same flush (nothing else would wake it).
        if let Some(why) = why {
            self.close(env, why);
        }
        if !self.send_armed && !self.connect_armed && self.unsent() > 0 {
            self.arm_send(env);
        }
        let receiving = matches!(
            self.state,
            State::AwaitHello | State::AwaitAuth | State::AwaitWelcome | State::Up
        );
        if receiving && !self.recv_armed {
            self.arm_recv(env);
        }
        if self.state == State::Closing
            && !self.recv_armed
            && !self.connect_armed
            && !self.send_armed
        {
            self.detach(env);
            self.closed = true;
        }
    }

    fn stop(&mut self, _env: &mut Env<'_>) {
        self.stopping = true;
    }

    fn abort(&mut self, env: &mut Env<'_>) {
        // Even a link already closing (say, flushing a REFUSE to a peer that never reads) is
        // shut down here, so whatever is armed completes.
        // SAFETY: shutdown(2) on a descriptor we own.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        self.close(env, "daemon stopping");
    }

    fn done(&self) -> bool {
        self.closed
    }

    fn describe(&self) -> String {
        format!(
            "mirror link: volume {:?}, state {:?}, receive armed {}, send armed {}, {} byte(s) unsent",
            self.vol,
            self.state,
            self.recv_armed,
            self.send_armed,
            self.unsent()
        )
    }
}
