//! Multiple connections per session (MC/S, RFC 7143 §4.2, §6.3.2, §7.1.5): the session object
//! the connections of a session share, the login that joins one, and the notes its connections
//! send each other.
//!
//! Model:
//! - A session has a home reactor: the one its leading login (TSIH 0) completed on. Every
//!   connection of the session runs there. A login naming an existing TSIH that arrives on
//!   another reactor is handed over before it is answered: its socket (a duplicate of the
//!   descriptor; the old connection then closes without touching the socket) and the bytes
//!   received so far become a fresh connection spawned on the home reactor
//!   (`runtime::Msg::Spawn`), which parses the login from its first byte.
//! - The session state shared by its connections ([`Session`]: the CmdSN window and the
//!   commands held for a gap, the unit attentions, the RESERVEs sent, the member list) lives in
//!   a reactor-local table (`SESSIONS`, a thread-local slab): a connection holds its index and
//!   the session's nexus number, and every access checks the number (a slot reused by a later
//!   session is never mistaken for this one). No lock is taken per command; a connection never
//!   keeps the table borrowed while it calls anything else.
//! - The daemon-wide table ([`SessEntry`], `IscsiShared::sessions`, a mutex) maps a TSIH to its
//!   home reactor, initiator name, ISID and target: taken only at login and when the last
//!   connection of a session closes.
//! - StatSN, R2T / Data-Out / Data-In and the tasks themselves stay with the connection that
//!   received the command (connection allegiance, ErrorRecoveryLevel 0); a non-immediate
//!   command is executed in CmdSN order across the connections: one that arrives ahead of
//!   ExpCmdSN is held in the session with its connection's key, and whoever fills the gap
//!   wakes the connection that holds the next one ([`SessNote`] `Wake`).
//! - Task management reaches the other connections' tasks by notes (`Abort`), each holding a
//!   share of a `reset::Settle` the TMF answer waits for (released once that connection's
//!   aborted tasks have left the device).
//! - Closing: a Logout "close the connection" (its own CID or another's) closes one
//!   connection; "close the session" closes them all. A connection that ends in any other way
//!   (socket failure, protocol violation, EOF without Logout, a target cold reset or I_T nexus
//!   reset) fails the session: at ErrorRecoveryLevel 0 recovery is session recovery (RFC 7143
//!   §7.1.5, §7.12), so its other connections are closed too and their tasks terminated. A
//!   login with the CID of a connection of the session reinstates it: the old connection is
//!   closed first (tasks terminated, no answers), the session stays. A leading login (TSIH 0)
//!   of the same initiator port (InitiatorName and ISID) to the same target reinstates the
//!   *session* (RFC 7143 §6.3.5): the old session leaves the daemon-wide table at once and
//!   its connections, wherever they run, are closed as by "close the session" (tasks
//!   terminated, no answers; the last carries the I_T nexus loss, releasing a RESERVE). The
//!   close reaches them by note, and the new login is answered only once they are all gone
//!   (their tasks off the device, their RESERVEs released: `IscsiConn::held_login`).
//!
//! - A held command whose connection leaves (Logout, reinstatement) or that ABORT TASK names
//!   is terminated but keeps its place: its CmdSN is passed over when ExpCmdSN reaches it, so
//!   the commands after it on the other connections still run.
//!
//! Invariants: a session's entry in the daemon-wide table exists exactly while its local
//! [`Session`] has members; a connection is a member from its final Login Response until it
//! closes or is replaced by a reinstatement; held commands of a connection leave with it (their CmdSNs passed over); the
//! I_T nexus (reservation identity, unit attentions) is the session's, and its loss is carried
//! by the last connection to close.

use super::IscsiConn;
use crate::frontend::iscsi::login::{LoginStatus, Params};
use crate::frontend::iscsi::reset::Settle;
use crate::frontend::iscsi::scsi::Sense;
use crate::runtime::{Env, Msg, NoteTo};
use slab::Slab;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the daemon-wide session table knows of a session (enough to route a login naming its
/// TSIH and to check it comes from the same initiator port for the same target).
#[derive(Clone, Debug)]
pub struct SessEntry {
    /// The home reactor.
    pub reactor: usize,
    /// Index of the session in the home reactor's local table.
    pub slot: usize,
    /// The session's nexus number (checks the slot).
    pub nexus: u64,
    /// Initiator session id.
    pub isid: [u8; 6],
    /// InitiatorName.
    pub initiator: String,
    /// TargetName.
    pub target: String,
    /// Its connections on the home reactor: (CID, connection key). A leading login of the
    /// same initiator port (name and ISID) to the same target reinstates the session: these
    /// are closed ([`IscsiConn::reinstate_sessions`]).
    pub members: Vec<(u16, u32)>,
    /// What this session's leading login waited for before it was answered (the close of
    /// the sessions it reinstated): a login that reinstates this session before they are done
    /// waits for them too (an initiator retrying a login that was held would otherwise
    /// reinstate only the held one).
    pub closing: Vec<Arc<Settle>>,
}

/// A connection of a session.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    pub(super) cid: u16,
    pub(super) key: u32,
}

/// Session state shared by the connections of a session, on its home reactor.
pub(super) struct Session {
    pub(super) nexus: u64,
    pub(super) tsih: u16,
    /// Normal session (in the daemon-wide table).
    pub(super) normal: bool,
    pub(super) exp_cmd_sn: u32,
    /// Non-immediate commands received ahead of ExpCmdSN: by CmdSN, the receiving
    /// connection's key and the PDU (header and data, no digests); [`VOID`]: terminated (its
    /// connection left, or aborted), its CmdSN is passed over when its turn comes.
    pub(super) held: BTreeMap<u32, (u32, Vec<u8>)>,
    /// The CmdSN whose holder was last woken (one wake per gap filled).
    pub(super) woken: Option<u32>,
    pub(super) members: Vec<Member>,
    /// Negotiated at the leading login: MaxConnections and the leading-only values.
    pub(super) params: Params,
    /// The session is being closed (Logout "close the session", or it failed).
    pub(super) ending: bool,
    /// LUN indexes a RESERVE was sent for (its I_T nexus loss is carried for them).
    pub(super) reserved_luns: Vec<usize>,
    /// A unit attention to report on the next command, per LUN index.
    pub(super) ua: Vec<Option<Sense>>,
    /// Path-state change and reset counts and the ALUA states last seen, per LUN index.
    pub(super) path_seen: Vec<Option<super::alua::Seen>>,
    /// Immediate task-set TMFs waiting for the commands before them (RFC 7143 §11.5.1: a
    /// task set's commands with a lower CmdSN, still in a gap, are aborted on arrival, and the
    /// answer waits until they all came): (the TMF's CmdSN, its LUN; `None`: every LUN; the
    /// key of the connection that answers it, woken when ExpCmdSN reaches the CmdSN).
    pub(super) abort_prior: Vec<(u32, Option<[u8; 8]>, u32)>,
}

/// The owner of a held command that was terminated (see [`Session::held`]).
pub(super) const VOID: u32 = u32::MAX;

impl Session {
    /// Terminate the held commands of connection `key` (or the one of CmdSN `sn`): their
    /// CmdSNs are passed over, so the window does not stall on them.
    /// (Both `None`: all of them, a reset.)
    pub(super) fn void(&mut self, key: Option<u32>, sn: Option<u32>) {
        let all = key.is_none() && sn.is_none();
        for (n, (k, pdu)) in self.held.iter_mut() {
            if all || Some(*k) == key || Some(*n) == sn {
                *k = VOID;
                *pdu = Vec::new();
            }
        }
    }
}

impl Session {
    /// A command with CmdSN `sn` to `lun` that arrived after a task-set TMF with a higher
    /// CmdSN for its LUN (or every LUN): aborted on arrival (see `abort_prior`).
    pub(super) fn aborted_before(&self, sn: u32, lun: &[u8; 8]) -> bool {
        self.abort_prior.iter().any(|(n, l, _)| {
            crate::frontend::iscsi::pdu::sn_lt(sn, *n) && l.is_none_or(|l| l == *lun)
        })
    }

    /// Terminate the held commands with a CmdSN below `n` addressed to `lun` (`None`: any).
    pub(super) fn void_before(&mut self, n: u32, lun: Option<&[u8; 8]>) {
        self.void_where(|sn, pdu| {
            crate::frontend::iscsi::pdu::sn_lt(sn, n)
                && lun.is_none_or(|l| pdu.get(8..16) == Some(&l[..]))
        });
    }

    /// Terminate the held commands `f` names (by CmdSN and held PDU).
    fn void_where(&mut self, f: impl Fn(u32, &[u8]) -> bool) {
        for (&sn, (k, pdu)) in self.held.iter_mut() {
            if f(sn, pdu) {
                *k = VOID;
                *pdu = Vec::new();
            }
        }
    }

    /// The per-LUN state (`ua`, `path_seen`) grown to hold LUN index `i`.
    pub(super) fn grow_luns(&mut self, i: usize) {
        if self.ua.len() <= i {
            self.ua.resize(i + 1, None);
        }
        if self.path_seen.len() <= i {
            self.path_seen.resize(i + 1, None);
        }
    }

    /// Terminate the held commands addressed to logical unit `lun` (a LOGICAL UNIT RESET: the
    /// session's commands to its other LUs keep waiting for their turn). The held copy is the
    /// command's PDU: its LUN field is bytes 8..16.
    pub(super) fn void_lun(&mut self, lun: &[u8; 8]) {
        self.void_where(|_, pdu| pdu.get(8..16) == Some(&lun[..]));
    }
}

/// CmdSN `sn` is inside the command window that starts at ExpCmdSN `exp` (RFC 7143 §4.2.2.1).
pub(super) fn in_window(exp: u32, sn: u32) -> bool {
    crate::frontend::iscsi::pdu::sn_le(exp, sn)
        && crate::frontend::iscsi::pdu::sn_le(sn, exp.wrapping_add(super::CMD_WINDOW - 1))
}

/// Take the sessions `pick` names out of the daemon-wide `table`.
fn take_sessions(
    table: &mut std::collections::HashMap<u16, SessEntry>,
    pick: impl Fn(&SessEntry) -> bool,
) -> Vec<SessEntry> {
    let tsihs: Vec<u16> = table
        .iter()
        .filter(|(_, e)| pick(e))
        .map(|(t, _)| *t)
        .collect();
    tsihs.iter().filter_map(|t| table.remove(t)).collect()
}

thread_local! {
    /// This reactor's sessions (see the module's model).
    static SESSIONS: RefCell<Slab<Session>> = const { RefCell::new(Slab::new()) };
}

/// Which tasks an `Abort` note names.
#[derive(Clone, Copy, Debug)]
pub(super) enum Filter {
    /// ABORT TASK: by initiator task tag, on the TMF's LUN.
    Itt(u32, [u8; 8]),
    /// ABORT / CLEAR TASK SET, LUN RESET: by LUN.
    Lun([u8; 8]),
    /// Target resets, I_T nexus reset.
    All,
}

/// A share of a TMF's settle: released when dropped.
#[derive(Debug)]
pub(super) struct Share(Option<Arc<Settle>>);

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.release();
        }
    }
}

/// What one connection of a session asks of another.
#[derive(Debug)]
pub(super) enum What {
    /// The next command in CmdSN order is held here: run it.
    Wake,
    /// Close (terminate the tasks, no answers): logout of it or of the session, reinstatement,
    /// session failure. The share (of a login or TMF waiting for the close) is held until the
    /// connection is dropped: after its tasks left the device and its RESERVEs were released.
    Close(Share),
    /// Abort the tasks `filter` names; `found` is set when any matched; the share is released
    /// once they have left the device.
    Abort {
        filter: Filter,
        found: Arc<AtomicBool>,
        share: Share,
    },
}

/// A note between connections of a session (checked against the addressee's session and CID:
/// a key may have been reused).
#[derive(Debug)]
pub(super) struct SessNote {
    nexus: u64,
    cid: u16,
    pub(super) what: What,
}

/// What the first login request of a joining connection found.
pub(super) enum Found {
    /// The session is on this reactor (its local slot).
    Here(usize, SessEntry),
    /// On another reactor: hand the connection over.
    There(usize),
}

/// ExpCmdSN of session `slot` of this reactor (the one `e` names).
pub(super) fn slot_exp(slot: usize, e: &SessEntry) -> Option<u32> {
    SESSIONS.with(|t| {
        t.borrow()
            .get(slot)
            .filter(|s| s.nexus == e.nexus)
            .map(|s| s.exp_cmd_sn)
    })
}

impl IscsiConn {
    /// Run `f` on this connection's session (`None`: none, or it is gone).
    pub(super) fn with_sess<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let idx = self.sess?;
        SESSIONS.with(|t| {
            let mut t = t.borrow_mut();
            match t.get_mut(idx) {
                Some(s) if s.nexus == self.nexus => Some(f(s)),
                _ => None,
            }
        })
    }

    /// ExpCmdSN: the session's (during login, this connection's).
    pub(super) fn exp(&self) -> u32 {
        self.with_sess(|s| s.exp_cmd_sn).unwrap_or(self.exp_cmd_sn)
    }

    /// Another connection of this session (by key) is asked `what`.
    fn tell(&self, env: &Env<'_>, m: Member, what: What) {
        if let Some(mb) = env.shared.mailboxes.get(env.io.reactor) {
            mb.send(Msg::Note {
                to: NoteTo::Conn(m.key),
                note: Box::new(SessNote {
                    nexus: self.nexus,
                    cid: m.cid,
                    what,
                }),
            });
        }
    }

    /// The other connections of this session.
    pub(super) fn siblings(&self, env: &Env<'_>) -> Vec<Member> {
        self.with_sess(|s| {
            s.members
                .iter()
                .filter(|m| m.key != env.key)
                .copied()
                .collect()
        })
        .unwrap_or_default()
    }

    /// Close every other connection of the session (Logout "close the session", failure).
    pub(super) fn close_siblings(&mut self, env: &Env<'_>) {
        self.with_sess(|s| s.ending = true);
        for m in self.siblings(env) {
            self.tell(env, m, What::Close(Share(None)));
        }
    }

    /// Close the connection `cid` of this session (Logout "close the connection" naming
    /// another connection): false when the session has none.
    pub(super) fn close_cid(&mut self, env: &Env<'_>, cid: u16) -> bool {
        match self.siblings(env).into_iter().find(|m| m.cid == cid) {
            Some(m) => {
                self.tell(env, m, What::Close(Share(None)));
                true
            }
            None => false,
        }
    }

    /// Ask the other connections to abort the tasks `filter` names: the settle the TMF answer
    /// waits for, and the flag set when one of them had such a task (`None`: no other
    /// connection).
    pub(super) fn abort_siblings(
        &mut self,
        env: &Env<'_>,
        filter: Filter,
    ) -> Option<(Arc<Settle>, Arc<AtomicBool>)> {
        let sib = self.siblings(env);
        if sib.is_empty() {
            return None;
        }
        let me = Arc::clone(&env.shared.mailboxes[env.io.reactor]);
        let settle = Settle::new(Some((me, env.key)));
        let found = Arc::new(AtomicBool::new(false));
        for m in sib {
            settle.add();
            self.tell(
                env,
                m,
                What::Abort {
                    filter,
                    found: Arc::clone(&found),
                    share: Share(Some(Arc::clone(&settle))),
                },
            );
        }
        settle.release();
        Some((settle, found))
    }

    /// A note from another connection of this session.
    pub(super) fn sess_note(&mut self, env: &mut Env<'_>, n: SessNote) {
        if self.sess.is_none() || n.nexus != self.nexus || n.cid != self.cid {
            return;
        }
        match n.what {
            What::Wake => {
                if !self.life.closing && !self.paused() {
                    self.run_held(env);
                }
            }
            What::Close(share) => {
                self.told = true;
                self.held_until_dropped.push(share);
                if self.life.shutting_down {
                    // Already stopping (its Async Message on its way): it closes by itself.
                    return;
                }
                tracing::info!(conn = env.key, cid = self.cid, initiator = %self.initiator, "iSCSI connection closed by its session");
                self.tx.drop_pending();
                self.life.abort(env.io, env.key, self.tx.armed());
                let slots: Vec<usize> = self.tasks.iter().map(|(s, _)| s).collect();
                for s in slots {
                    self.abort_task(s);
                }
                self.logout = None;
            }
            What::Abort {
                filter,
                found,
                share,
            } => {
                let slots: Vec<usize> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| match filter {
                        Filter::Itt(itt, lun) => t.itt == itt && t.lun == lun,
                        Filter::Lun(l) => t.lun == l,
                        Filter::All => true,
                    })
                    .map(|(s, _)| s)
                    .collect();
                if !slots.is_empty() && !matches!(filter, Filter::All) {
                    found.store(true, Ordering::Release);
                }
                let mut wait = Vec::new();
                for s in slots {
                    wait.extend(self.abort_task(s));
                }
                if !wait.is_empty() {
                    self.abort_wait.push((Box::new(share), wait));
                }
            }
        }
    }

    /// The first Login Request named TSIH `tsih`: where its session is.
    pub(super) fn find_session(&self, env: &Env<'_>, tsih: u16) -> Option<Found> {
        let e = self.sh.session_table().get(&tsih).cloned()?;
        if e.reactor != env.io.reactor {
            return Some(Found::There(e.reactor));
        }
        let ok = SESSIONS.with(|t| {
            t.borrow()
                .get(e.slot)
                .is_some_and(|s| s.nexus == e.nexus && !s.ending)
        });
        ok.then_some(Found::Here(e.slot, e))
    }

    /// A leading login completed: a new session with this connection as its first member;
    /// its TSIH (never 0, not in use). The close of the sessions it reinstated is left in
    /// `old_closing` (the login's answer waits for it).
    pub(super) fn begin_session(&mut self, env: &Env<'_>, isid: [u8; 6], params: &Params) -> u16 {
        let normal = self.session == crate::frontend::iscsi::login::SessionType::Normal;
        let s = Session {
            nexus: self.nexus,
            tsih: 0,
            normal,
            exp_cmd_sn: self.exp_cmd_sn,
            held: BTreeMap::new(),
            woken: None,
            members: vec![Member {
                cid: self.cid,
                key: env.key,
            }],
            params: params.clone(),
            ending: false,
            reserved_luns: Vec::new(),
            ua: Vec::new(),
            path_seen: Vec::new(),
            abort_prior: Vec::new(),
        };
        let slot = SESSIONS.with(|t| t.borrow_mut().insert(s));
        self.sess = Some(slot);
        let mut table = self.sh.session_table();
        let tsih = loop {
            let t = self
                .sh
                .next_tsih
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if t != 0 && !table.contains_key(&t) {
                break t;
            }
        };
        if normal {
            let old = self.take_reinstated(&mut table, isid);
            let waits = self.reinstate_sessions(env, old);
            table.insert(
                tsih,
                SessEntry {
                    reactor: env.io.reactor,
                    slot,
                    nexus: self.nexus,
                    isid,
                    initiator: self.initiator.clone(),
                    target: self.target.iqn.clone(),
                    members: vec![(self.cid, env.key)],
                    closing: waits.clone(),
                },
            );
            drop(table);
            self.old_closing = waits;
        } else {
            drop(table);
        }
        self.with_sess(|s| s.tsih = tsih);
        tsih
    }

    /// Session reinstatement (RFC 7143 §6.3.5): the sessions of this initiator port (name and
    /// ISID) with this target, taken out of `table` (a login naming their TSIH now fails).
    fn take_reinstated(
        &self,
        table: &mut std::collections::HashMap<u16, SessEntry>,
        isid: [u8; 6],
    ) -> Vec<SessEntry> {
        take_sessions(table, |e| {
            e.isid == isid && e.initiator == self.initiator && e.target == self.target.iqn
        })
    }

    /// Close every connection of the reinstated sessions `old` (their tasks terminated, no
    /// answers: the implicit logout of RFC 7143 §6.3.5); the last to close carries the
    /// session's I_T nexus loss (a RESERVE it held is released), and each nexus reports I_T
    /// NEXUS LOSS OCCURRED at its next login (SAM-5). Returns what is done once every one of
    /// those connections is gone (its tasks off the device, its RESERVEs released), with
    /// what their own leading logins still waited for (empty when there were none): the new
    /// login's answer (LIO waits so too) and a cold reset's TMF response wait for them, so no
    /// command of the initiator's next session meets an old write still in flight or an old
    /// RESERVE.
    pub(super) fn reinstate_sessions(
        &self,
        env: &Env<'_>,
        old: Vec<SessEntry>,
    ) -> Vec<Arc<Settle>> {
        if old.is_empty() {
            return Vec::new();
        }
        let waiter = Arc::clone(&env.shared.mailboxes[env.io.reactor]);
        let mut waits: Vec<Arc<Settle>> = old
            .iter()
            .flat_map(|e| e.closing.iter())
            .filter(|s| !s.done())
            .cloned()
            .collect();
        for s in &waits {
            // (Its own waiter is the held login, which is closing: this one is told too.)
            s.also_wake(Arc::clone(&waiter), env.key);
        }
        let settle = Settle::new(Some((waiter, env.key)));
        for e in &old {
            let me = crate::frontend::iscsi::prs::nexus_id(&e.initiator, &e.isid, self.sh.tpg);
            self.target.note_nexus_loss(me);
        }
        for e in old {
            tracing::info!(conn = env.key, initiator = %e.initiator,
                connections = e.members.len(),
                "iSCSI session closed: reinstated by a new leading login of the same initiator port, or a target cold reset");
            let Some(mb) = env.shared.mailboxes.get(e.reactor) else {
                continue;
            };
            for (cid, key) in e.members {
                settle.add();
                mb.send(Msg::Note {
                    to: NoteTo::Conn(key),
                    note: Box::new(SessNote {
                        nexus: e.nexus,
                        cid,
                        what: What::Close(Share(Some(Arc::clone(&settle)))),
                    }),
                });
            }
        }
        settle.release();
        waits.push(settle);
        waits
    }

    /// A TARGET COLD RESET: every other session of this target, of any initiator, leaves the
    /// table and its connections are closed (as a reinstated session's: tasks terminated, no
    /// answers, the nexus loss carried by the last). Returns what the TMF response waits for.
    pub(super) fn close_target_sessions(&self, env: &Env<'_>) -> Vec<Arc<Settle>> {
        let old = take_sessions(&mut self.sh.session_table(), |e| {
            e.target == self.target.iqn && e.nexus != self.nexus
        });
        if !old.is_empty() {
            tracing::warn!(conn = env.key, initiator = %self.initiator, sessions = old.len(),
                "iSCSI TARGET COLD RESET: closing every session of the target");
        }
        self.reinstate_sessions(env, old)
    }

    /// A non-immediate command with CmdSN `sn` is to be ignored silently (RFC 7143 §4.2.2.1):
    /// outside the window, or a duplicate of one held for a gap. (Checked before a command
    /// is judged, so a retransmission is never rejected, e.g. as a tag in use.)
    pub(super) fn cmd_sn_ignored(&self, sn: u32) -> bool {
        self.with_sess(|s| !in_window(s.exp_cmd_sn, sn) || s.held.contains_key(&sn))
            .unwrap_or(false)
    }

    /// Keep the daemon-wide entry's member list in step (`f` edits it).
    fn table_members(&self, f: impl FnOnce(&mut Vec<(u16, u32)>)) {
        let mut table = self.sh.session_table();
        if let Some(e) = table.values_mut().find(|e| e.nexus == self.nexus) {
            f(&mut e.members);
        }
    }

    /// A login adding a connection to session `slot` completed: its leading-only values, its
    /// nexus identity, a member (reinstating the connection of the same CID). Fails when the
    /// session is gone or full.
    pub(super) fn join_session(
        &mut self,
        env: &Env<'_>,
        slot: usize,
        e: &SessEntry,
    ) -> Result<Params, LoginStatus> {
        let (cid, key) = (self.cid, env.key);
        let r = SESSIONS.with(|t| {
            let mut t = t.borrow_mut();
            let s = match t.get_mut(slot) {
                Some(s) if s.nexus == e.nexus && !s.ending => s,
                _ => return Err(LoginStatus::NO_SESSION),
            };
            let old = s.members.iter().position(|m| m.cid == cid);
            if old.is_none() && s.members.len() >= s.params.max_connections as usize {
                return Err(LoginStatus::TOO_MANY_CONNECTIONS);
            }
            let old = old.map(|i| s.members.remove(i));
            if let Some(o) = old {
                s.void(Some(o.key), None);
            }
            s.members.push(Member { cid, key });
            Ok((old, s.params.clone(), s.exp_cmd_sn))
        });
        let (old, params, exp) = r?;
        if !self.sh.session_table().values().any(|t| t.nexus == e.nexus) {
            // Reinstated (or closed by a cold reset) since this login found it: the session
            // is ending; joining it would keep it alive past its close.
            SESSIONS.with(|t| {
                if let Some(s) = t.borrow_mut().get_mut(slot) {
                    s.members.retain(|m| m.key != key);
                }
            });
            return Err(LoginStatus::NO_SESSION);
        }
        self.sess = Some(slot);
        self.nexus = e.nexus;
        self.exp_cmd_sn = exp;
        self.table_members(|m| {
            m.retain(|&(c, _)| c != cid);
            m.push((cid, key));
        });
        if let Some(o) = old {
            tracing::info!(conn = env.key, cid, initiator = %self.initiator, "iSCSI connection reinstatement: the old connection of this CID is closed");
            // Its tasks leave the device before this login is answered (as a session's
            // reinstatement: no command on the new connection meets one of them in flight).
            let waiter = Arc::clone(&env.shared.mailboxes[env.io.reactor]);
            let settle = Settle::new(Some((waiter, env.key)));
            settle.add();
            self.tell(env, o, What::Close(Share(Some(Arc::clone(&settle)))));
            settle.release();
            self.old_closing = vec![settle];
        }
        Ok(params)
    }

    /// This connection closed: it leaves its session. A connection that ends without a Logout
    /// or its session's say fails the session (ErrorRecoveryLevel 0); the last one ends it.
    pub(super) fn leave_session(&mut self, env: &Env<'_>) {
        if self.sess.is_none() {
            return;
        }
        let failed = !self.told && !self.logged_out;
        if failed && self.phase == super::Phase::Full {
            let others = !self.siblings(env).is_empty();
            if others {
                tracing::info!(conn = env.key, cid = self.cid, initiator = %self.initiator, "iSCSI connection failed: the session's other connections are closed (ErrorRecoveryLevel 0)");
                self.close_siblings(env);
            }
        }
        let key = env.key;
        self.table_members(|m| m.retain(|&(_, k)| k != key));
        let gone = self.with_sess(|s| {
            // Its task-set TMFs' waits end with it (never answered now).
            s.abort_prior.retain(|&(_, _, k)| k != key);
            s.members.retain(|m| m.key != key);
            s.void(Some(key), None);
            s.members.is_empty().then_some((s.tsih, s.normal))
        });
        // The next command in CmdSN order was this connection's (now passed over): a Wake for
        // it may have been dropped while this connection was closing, so another member is
        // told to run the window on, or the commands held behind it would wait for unrelated
        // input.
        let next = self
            .with_sess(|s| {
                let void = s.held.get(&s.exp_cmd_sn).is_some_and(|(k, _)| *k == VOID);
                if void {
                    s.woken = None;
                    s.members.first().copied()
                } else {
                    None
                }
            })
            .flatten();
        if let Some(m) = next {
            self.tell(env, m, What::Wake);
        }
        if let Some(Some((tsih, normal))) = gone {
            if normal {
                let mut table = self.sh.session_table();
                if table.get(&tsih).is_some_and(|e| e.nexus == self.nexus) {
                    table.remove(&tsih);
                }
            }
            if let Some(idx) = self.sess {
                SESSIONS.with(|t| {
                    t.borrow_mut().try_remove(idx);
                });
            }
        }
        self.sess = None;
    }

    /// Whether this is the last connection of its session (or it has none): it carries the
    /// I_T nexus loss.
    pub(super) fn last_of_session(&self, key: u32) -> bool {
        self.with_sess(|s| s.members.iter().all(|m| m.key == key))
            .unwrap_or(true)
    }

    /// Wake the other connections whose task-set TMF waits for ExpCmdSN to reach its CmdSN
    /// once it has (`Session::abort_prior`): their answer goes out at their next turn.
    fn wake_tmf_waiters(&self, env: &Env<'_>) {
        let key = env.key;
        let who: Vec<Member> = self
            .with_sess(|s| {
                if s.abort_prior.is_empty() {
                    return Vec::new();
                }
                let exp = s.exp_cmd_sn;
                s.abort_prior
                    .iter()
                    .filter(|(n, _, k)| *k != key && crate::frontend::iscsi::pdu::sn_le(*n, exp))
                    .filter_map(|(_, _, k)| s.members.iter().find(|m| m.key == *k).copied())
                    .collect()
            })
            .unwrap_or_default();
        for m in who {
            self.tell(env, m, What::Wake);
        }
    }

    /// Run the held commands whose turn has come; wake the connection holding the next one.
    pub(super) fn run_held(&mut self, env: &mut Env<'_>) {
        self.wake_tmf_waiters(env);
        enum Next {
            Mine(Vec<u8>),
            Other(Member),
            Passed,
            Nothing,
        }
        let key = env.key;
        loop {
            if self.life.closing {
                return;
            }
            let next = self
                .with_sess(|s| {
                    let exp = s.exp_cmd_sn;
                    match s.held.get(&exp) {
                        Some((VOID, _)) => {
                            s.held.remove(&exp);
                            s.exp_cmd_sn = exp.wrapping_add(1);
                            Next::Passed
                        }
                        Some((k, _)) if *k == key => {
                            Next::Mine(s.held.remove(&exp).map(|x| x.1).unwrap_or_default())
                        }
                        Some((k, _)) if s.woken != Some(exp) => {
                            s.woken = Some(exp);
                            let k = *k;
                            s.members
                                .iter()
                                .find(|m| m.key == k)
                                .map_or(Next::Nothing, |m| Next::Other(*m))
                        }
                        _ => Next::Nothing,
                    }
                })
                .unwrap_or(Next::Nothing);
            match next {
                Next::Mine(raw) => self.run_raw(env, &raw),
                Next::Passed => {}
                Next::Other(m) => return self.tell(env, m, What::Wake),
                Next::Nothing => return,
            }
        }
    }
}
