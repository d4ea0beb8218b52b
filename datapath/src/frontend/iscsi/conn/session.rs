//! Login phase and task management: the parts of a session that are not SCSI data.
//!
//! Model (RFC 7143 §6.3, §11.12-11.14): a login is a series of Login Request / Response pairs
//! in one or two stages (security negotiation, operational negotiation) ending with the final
//! response (T bit, NSG = full feature phase). The first request names the initiator, the
//! session type and (normal sessions) the target; its ISID must stay the same. A failed step is
//! answered with its status class and detail and the connection closes.
//!
//! Task management: ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LUN RESET, TARGET WARM RESET,
//! TARGET COLD RESET and I_T NEXUS RESET abort the tasks they name (an I_T NEXUS RESET only
//! its own nexus's, whose next login reports I_T NEXUS LOSS OCCURRED); CLEAR ACA, the query
//! functions and TASK REASSIGN are answered "not supported" (no ACA, RFC 7144 not negotiated,
//! ErrorRecoveryLevel 0). A response waits until every aborted task's device operations have
//! finished (an aborted task itself is never answered), also on the session's other
//! connections, which are asked by notes (`mcs.rs`): ITTs and task sets are the session's.
//!
//! A login naming a TSIH joins that session (`mcs.rs`): it is handed to the session's home
//! reactor at its first request when it arrived elsewhere, checked against the session's
//! initiator, ISID and target when they are known, and added (or reinstating its CID) with
//! the final response.
//!
//! Invariants: every Login Request and every TMF request gets exactly one response; TSIHs
//! handed out are never 0.

use super::{IscsiConn, LoginState, Phase, mcs};
use crate::frontend::iscsi::login::{self, LoginStatus, Negotiation, SessionType};
use crate::frontend::iscsi::pdu::{Bhs, Digests, Req, op, sn_le, sn_lt};
use crate::frontend::iscsi::reset;
use crate::runtime::Env;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Login keys, as parsed.
type Keys<'a> = Vec<(&'a str, &'a str)>;

/// A Task Management Function response waiting to be sent.
pub(crate) struct TmfWait {
    itt: u32,
    code: u8,
    func: u8,
    /// This session's aborted tasks still at a device, and placeholders of carried resets.
    slots: Vec<u32>,
    /// Other sessions of this site still aborting (a reset not carried through a mirror).
    settles: Vec<Arc<reset::Settle>>,
    /// LUN indexes this session's reset is in flight for (`PrState::set_origin`).
    origins: Vec<usize>,
    /// ABORT TASK of a task not on this connection: set when another connection of the
    /// session had it (the answer is then "function complete").
    found: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// An immediate task-set TMF with this CmdSN: answered once every command before it has
    /// come (ExpCmdSN reached it; those of its task set aborted on arrival).
    until_sn: Option<u32>,
}

/// How a reset was carried to the volume's other site.
enum Carried {
    /// Under way: the TMF answer waits for this placeholder task.
    Pending(u32),
    /// Decided at once by this site's engine (which reached this site's sessions).
    Done,
    /// Not carried (not mirrored, or no session with the peer and no grant): this site's
    /// sessions are reached directly.
    No,
}

/// TMF response codes (RFC 7143 §11.6.1).
mod tmf_rsp {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const REASSIGN_UNSUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const REJECTED: u8 = 255;
}

impl IscsiConn {
    fn login_fail(&mut self, env: &mut Env<'_>, itt: u32, isid: [u8; 6], st: LoginStatus) {
        tracing::info!(
            conn = env.key,
            class = st.0,
            detail = st.1,
            "iSCSI login refused"
        );
        let mut h = Bhs::new(op::LOGIN_RSP, 0)
            .itt(itt)
            .byte(36, st.0)
            .byte(37, st.1);
        h.0[8..14].copy_from_slice(&isid);
        h.0[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        self.put_status(h, &[]);
        self.life.closing = true;
    }

    /// A Login Request.
    pub(super) fn login_req(&mut self, env: &mut Env<'_>, r: Req<'_>, data: &[u8]) {
        let flags = r.flags();
        let (mut transit, cont) = (flags & 0x80 != 0, flags & 0x40 != 0);
        let (csg, nsg) = ((flags >> 2) & 3, flags & 3);
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&r.0[8..14]);
        let tsih = u16::from_be_bytes([r.0[14], r.0[15]]);
        let itt = r.itt();
        if self.login.is_none() {
            self.exp_cmd_sn = r.cmd_sn();
            self.stat_sn = r.exp_stat_sn();
            self.cid = u16::from_be_bytes([r.0[20], r.0[21]]);
            self.tsih = tsih;
            self.login = Some(Box::new(LoginState {
                neg: Negotiation::with_max_connections(self.sh.max_connections),
                csg,
                isid,
                first: true,
                text: Vec::new(),
                authenticated: false,
                chap: None,
            }));
            // Version-min must be 0 (RFC 7143 is version 0).
            if r.0[3] != 0 {
                return self.login_fail(env, itt, isid, LoginStatus::UNSUPPORTED_VERSION);
            }
        }
        let Some(mut st) = self.login.take() else {
            return;
        };
        let bad = LoginStatus::INITIATOR_ERROR;
        if st.isid != isid || (transit && cont) || csg == 2 || csg == 3 {
            return self.login_fail(env, itt, isid, bad);
        }
        if transit && (nsg == 2 || nsg <= csg) {
            return self.login_fail(env, itt, isid, bad);
        }
        if csg < st.csg {
            return self.login_fail(env, itt, isid, bad);
        }
        if tsih != self.tsih {
            // The TSIH stays the same throughout a login.
            return self.login_fail(env, itt, isid, bad);
        }
        if st.first && tsih != 0 {
            // Adding a connection to a session, or reinstating one of its connections (same
            // CID): the session must exist, at its home reactor (`mcs.rs`).
            match self.find_session(env, tsih) {
                None => return self.login_fail(env, itt, isid, LoginStatus::NO_SESSION),
                Some(mcs::Found::There(to)) => {
                    self.handoff = Some(to);
                    return;
                }
                Some(mcs::Found::Here(slot, e)) => {
                    self.exp_cmd_sn = mcs::slot_exp(slot, &e).unwrap_or(self.exp_cmd_sn);
                    self.join = Some((slot, e));
                }
            }
        }
        st.csg = csg;
        if st.text.len() + data.len() > login::MAX_TEXT {
            return self.login_fail(env, itt, isid, bad);
        }
        st.text.extend_from_slice(data);
        if cont {
            let h = Bhs::new(op::LOGIN_RSP, csg << 2).itt(itt);
            let mut h = h;
            h.0[8..14].copy_from_slice(&isid);
            h.0[14..16].copy_from_slice(&self.tsih.to_be_bytes());
            self.put_status(h, &[]);
            self.login = Some(st);
            return;
        }
        let text = std::mem::take(&mut st.text);
        let Ok(keys) = login::parse_keys(&text) else {
            return self.login_fail(env, itt, isid, bad);
        };
        let (chap_keys, keys): (Keys<'_>, Keys<'_>) = keys
            .into_iter()
            .partition(|(k, _)| crate::frontend::iscsi::chap::is_chap_key(k));
        if st.first {
            // The target decides whether AuthMethod must be CHAP: look it up before answering.
            let tn = keys
                .iter()
                .find(|(k, _)| *k == "TargetName")
                .map(|(_, v)| *v);
            let discovery = keys
                .iter()
                .any(|&(k, v)| k == "SessionType" && v == "Discovery");
            st.neg.chap_required = !discovery
                && tn
                    .and_then(|n| self.sh.find(n))
                    .is_some_and(|t| t.chap.is_some());
        }
        let mut out = Vec::new();
        if let Err(s) = st.neg.offer(&keys, csg == 0, &mut out) {
            return self.login_fail(env, itt, isid, s);
        }
        if st.first {
            st.first = false;
            let d = &st.neg.declared;
            let Some(name) = d.initiator_name.clone() else {
                return self.login_fail(env, itt, isid, LoginStatus::MISSING_PARAMETER);
            };
            self.initiator = name;
            self.session = d.session_type.unwrap_or(SessionType::Normal);
            if self.session != SessionType::Normal && self.join.is_some() {
                // Discovery sessions have one connection.
                return self.login_fail(env, itt, isid, LoginStatus::NO_SESSION);
            }
            if self.session == SessionType::Normal {
                let Some(tn) = d.target_name.clone() else {
                    return self.login_fail(env, itt, isid, LoginStatus::MISSING_PARAMETER);
                };
                let Some(t) = self.sh.find(&tn) else {
                    return self.login_fail(env, itt, isid, LoginStatus::NOT_FOUND);
                };
                if !t.allows(&self.initiator) {
                    return self.login_fail(env, itt, isid, LoginStatus::NOT_AUTHORIZED);
                }
                if let Some((_, e)) = &self.join
                    && (e.isid != isid || e.initiator != self.initiator || e.target != t.iqn)
                {
                    // Another initiator port's session, or another target's: not this one's.
                    return self.login_fail(env, itt, isid, LoginStatus::NO_SESSION);
                }
                self.target = t;
                login::put_key(&mut out, "TargetPortalGroupTag", &self.sh.tpg.to_string());
            }
        }
        let required = if self.session == SessionType::Normal {
            self.target.chap.clone()
        } else {
            None
        };
        let auth_failed = LoginStatus::AUTH_FAILED;
        if csg == 0 {
            let methods = &st.neg.declared.auth_methods;
            match &required {
                Some(c) => {
                    if st.chap.is_none() && st.neg.offered("AuthMethod") {
                        if !methods.iter().any(|m| m == "CHAP") {
                            return self.login_fail(env, itt, isid, auth_failed);
                        }
                        st.chap = Some(crate::frontend::iscsi::chap::Stage::default());
                    }
                    match st.chap.as_mut() {
                        Some(stage) => {
                            if let Err(s) =
                                crate::frontend::iscsi::chap::step(stage, c, &chap_keys, &mut out)
                            {
                                tracing::warn!(conn = env.key, initiator = %self.initiator, "iSCSI CHAP authentication failed");
                                return self.login_fail(env, itt, isid, s);
                            }
                        }
                        None if !chap_keys.is_empty() => {
                            return self.login_fail(env, itt, isid, auth_failed);
                        }
                        None => {}
                    }
                    st.authenticated = st.chap == Some(crate::frontend::iscsi::chap::Stage::Done);
                }
                None => {
                    if !chap_keys.is_empty()
                        || (st.neg.offered("AuthMethod") && !methods.iter().any(|m| m == "None"))
                    {
                        return self.login_fail(env, itt, isid, auth_failed);
                    }
                    st.authenticated = true;
                }
            }
            if transit && !st.authenticated {
                // The target decides when the security stage ends (RFC 7143 §6.2): answer
                // without the T bit until the exchange is done.
                transit = false;
            }
        } else if !chap_keys.is_empty() || (required.is_some() && !st.authenticated) {
            // Operational stage without having passed CHAP (or CHAP keys out of place).
            return self.login_fail(env, itt, isid, auth_failed);
        }
        let full = transit && nsg == 3;
        let mut joined = None;
        if full {
            st.neg.finish(&mut out);
            if let Some((slot, e)) = self.join.take() {
                // The session's leading-only values; the digests and the initiator's
                // MaxRecvDataSegmentLength are this connection's.
                match self.join_session(env, slot, &e) {
                    Ok(mut p) => {
                        let own = &st.neg.params;
                        p.header_digest = own.header_digest;
                        p.data_digest = own.data_digest;
                        p.send_dsl = own.send_dsl;
                        joined = Some(p);
                    }
                    Err(s) => return self.login_fail(env, itt, isid, s),
                }
            } else {
                self.nexus = self.sh.next_nexus.fetch_add(1, Ordering::Relaxed).max(1);
                self.tsih = self.begin_session(env, isid, &st.neg.params);
            }
        }
        let rflags = if transit { 0x80 | nsg } else { 0 } | (csg << 2);
        let mut h = Bhs::new(op::LOGIN_RSP, rflags).itt(itt);
        h.0[8..14].copy_from_slice(&isid);
        // The initiator's TSIH, except in the final response of a new session: the new one
        // (RFC 7143 §11.13.4).
        h.0[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        if out.len() > self.params.send_dsl.max(8192) as usize {
            // (Not reached with the keys the target answers: well under 8 KiB.)
            return self.login_fail(env, itt, isid, LoginStatus::TARGET_ERROR);
        }
        let waits = std::mem::take(&mut self.old_closing);
        if full && waits.iter().any(|s| !s.done()) {
            // The login reinstated a session or a connection: answered once the old one is
            // gone (its tasks off the device, its RESERVEs released).
            self.held_login = Some((waits, h, out));
        } else {
            self.put_status(h, &out);
        }
        if full {
            self.isid = isid;
            self.res =
                crate::frontend::iscsi::spc2::res_id(self.sh.tpg, self.sh.incarnation, self.nexus);
            self.me = crate::frontend::iscsi::prs::nexus_id(&self.initiator, &isid, self.sh.tpg);
            // Where the host is: looked up once, kept for the session (no lookup per command).
            self.host_site = self.sh.host_sites.site_of(&self.initiator);
            let leading = joined.is_none();
            self.params = joined.unwrap_or_else(|| st.neg.params.clone());
            self.phase = Phase::Full;
            // Digests apply from the first PDU after the final Login Response.
            self.dg = Digests {
                header: self.params.header_digest,
                data: self.params.data_digest,
            };
            tracing::info!(conn = env.key, initiator = %self.initiator, session = ?self.session,
                tsih = self.tsih, cid = self.cid,
                site = self.host_site.map(|s| self.sh.host_sites.name_of(s)),
                "iSCSI login complete");
            if self.session == SessionType::Normal {
                if leading {
                    // (Once the host's site is known: the path states it sees.)
                    self.baseline_unit_attentions(env);
                }
                let t = std::sync::Arc::clone(&self.target);
                self.take_nexus_losses(&t);
                let mut rec = crate::runtime::hosts::HostRecord::new(
                    "iscsi",
                    env.io.reactor,
                    env.key,
                    t.iqn.clone(),
                );
                rec.peer = crate::transport::tcp::peer_addr(&self.fd);
                rec.host = Some(self.initiator.clone());
                rec.site = self
                    .host_site
                    .map(|s| self.sh.host_sites.name_of(s).to_string());
                rec.set_volumes(t.luns.iter().map(|l| l.volume).collect());
                // Registered under the table's read lock and only while the target is still
                // there (the module's model); else the session ends at once.
                let sh = std::sync::Arc::clone(&self.sh);
                let tgts = sh.tgts();
                if tgts.iter().any(|x| std::sync::Arc::ptr_eq(x, &t)) {
                    self.host = Some(env.shared.hosts.register(rec));
                } else {
                    drop(tgts);
                    tracing::info!(conn = env.key, target = %t.iqn, "the target was removed during the login; closing");
                    self.life.stop(env.io, env.key);
                }
            }
        } else {
            self.login = Some(st);
        }
    }

    /// Abort task `slot`: at once, or once its device operations finish. Returns the slot when
    /// the response must wait for it.
    pub(super) fn abort_task(&mut self, slot: usize) -> Option<u32> {
        let t = self.tasks.get_mut(slot)?;
        t.aborted = true;
        if t.parts > 0 {
            return Some(slot as u32);
        }
        let t = self.tasks.remove(slot);
        if t.entered {
            self.leaves.push(t.vol);
        }
        self.put_buf(t.buf);
        None
    }

    /// Carry a reset of `l` to the other site of its mirrored volume (a [`prs::RESET_EVENT`]
    /// through the volume's channel, decided at the leader; it names this session by its
    /// reservation id, which no other session shares).
    fn carry_reset(&mut self, env: &mut Env<'_>, l: &crate::frontend::iscsi::IscsiLun) -> Carried {
        use crate::frontend::iscsi::prs;
        let cmd = prs::PrCmd {
            target: self.target.iqn.clone(),
            lun: l.lun,
            me: self.res,
            name: self.initiator.clone(),
            port: self.sh.tpg,
            out: prs::PrOut {
                sa: prs::RESET_EVENT,
                nt: 0,
                key: 0,
                sa_key: 0,
                aptpl: false,
            },
        };
        let bytes = crate::layer::mirror::engine::tagged(prs::META_KIND, &cmd.encode());
        let slot = self.placeholder_task(l.volume) as u32;
        let tag = crate::uring::IoTag {
            conn: env.key,
            slot,
        };
        match env.chans[l.volume].meta(env.io, tag, &bytes) {
            Some(crate::bdev::Start::Pending) => {
                self.tasks[slot as usize].parts = 1;
                self.tasks[slot as usize].stage = super::Stage::Device;
                Carried::Pending(slot)
            }
            Some(crate::bdev::Start::Done(r)) => {
                self.tasks.remove(slot as usize);
                if r.is_err() {
                    tracing::warn!(
                        lun = l.lun,
                        "iscsi: a LUN reset could not be carried to the other site"
                    );
                    return Carried::No;
                }
                Carried::Done
            }
            None => {
                self.tasks.remove(slot as usize);
                Carried::No
            }
        }
    }

    /// Another session's reset of a logical unit (`reset.rs`): abort this session's tasks of
    /// it, unless this session's own reset of it is in flight. Tasks not at a device are
    /// dropped; tasks at one finish there unanswered (TAS=0), and the note's share is released
    /// once they have (the note is dropped).
    pub(super) fn lu_abort(&mut self, n: reset::LuAbort) {
        if self.phase != Phase::Full || self.session != SessionType::Normal {
            return;
        }
        let t = Arc::clone(&self.target);
        let idxs: Vec<usize> = t
            .luns
            .iter()
            .enumerate()
            .filter(|(_, l)| l.pr.id() == n.lu && !l.pr.is_origin(&self.res))
            .map(|(i, _)| i)
            .collect();
        if idxs.is_empty() {
            return;
        }
        let slots: Vec<usize> = self
            .tasks
            .iter()
            .filter(|(_, t)| idxs.contains(&t.lun_idx))
            .map(|(s, _)| s)
            .collect();
        let aborted = slots.len();
        if n.clear && aborted > 0 {
            // SAM-5 (TAS=0): COMMANDS CLEARED BY ANOTHER INITIATOR, once, on the next command.
            let cleared: Vec<usize> = slots.iter().map(|&s| self.tasks[s].lun_idx).collect();
            self.with_sess(|s| {
                for i in cleared {
                    s.grow_luns(i);
                    s.ua[i].get_or_insert(crate::frontend::iscsi::scsi::Sense::COMMANDS_CLEARED);
                }
            });
        }
        let mut wait = Vec::new();
        for s in slots {
            wait.extend(self.abort_task(s));
        }
        tracing::debug!(
            initiator = %self.initiator,
            aborted,
            at_device = wait.len(),
            clear = n.clear,
            "iscsi: tasks aborted by a logical unit reset or CLEAR TASK SET of another I_T nexus"
        );
        if !wait.is_empty() {
            self.abort_wait.push((Box::new(n), wait));
        }
    }

    pub(super) fn tmf(&mut self, env: &mut Env<'_>, r: Req<'_>) {
        let tmf_sn = r.cmd_sn();
        if self.admit(env, r, &[]) != Some(true) {
            return;
        }
        let func = r.flags() & 0x7F;
        let lun = r.lun();
        let lun_ok = crate::frontend::iscsi::pages::lun_of(&lun)
            .is_some_and(|n| self.target.luns.iter().any(|l| l.lun == n));
        let mut wait = Vec::new();
        let mut settles = Vec::new();
        let mut origins = Vec::new();
        let mut found = None;
        let mut until_sn = None;
        let code = match func {
            1 if !lun_ok => tmf_rsp::NO_LUN,
            1 => {
                let rtt = r.w20();
                let ref_sn = r.u32_at(32);
                let exp = self.exp();
                // The task of that tag on the TMF's logical unit (RFC 7143 §11.5.1: ABORT TASK
                // addresses an LU): one of another LU "does not exist" for it.
                match self
                    .tasks
                    .iter()
                    .find(|(_, t)| t.itt == rtt && t.lun == lun)
                    .map(|(s, _)| s)
                {
                    Some(s) => {
                        wait.extend(self.abort_task(s));
                        tmf_rsp::COMPLETE
                    }
                    None => {
                        // Another connection of the session may have it (ITTs are
                        // session-wide): asked, the answer waits for it.
                        if let Some((st, f)) = self.abort_siblings(env, mcs::Filter::Itt(rtt, lun))
                        {
                            settles.push(st);
                            found = Some(f);
                        }
                        if sn_le(exp, ref_sn) && sn_lt(ref_sn, tmf_sn) {
                            // RFC 7143 §11.5.1 a): not yet received, within the window and
                            // before the TMF: treated as received (and aborted: a held command
                            // is dropped). A task that already completed is below ExpCmdSN:
                            // "does not exist".
                            // (Not held yet: a VOID placeholder takes its CmdSN, so the window
                            // goes on, and the command is ignored if it still comes, e.g. one
                            // the target rejected, which did not take its CmdSN.)
                            self.with_sess(|s| {
                                s.void(None, Some(ref_sn));
                                s.held.entry(ref_sn).or_insert((mcs::VOID, Vec::new()));
                            });
                            tmf_rsp::COMPLETE
                        } else {
                            tmf_rsp::NO_TASK
                        }
                    }
                }
            }
            2 | 4 | 5 if !lun_ok => tmf_rsp::NO_LUN,
            2 | 4 | 5 | 6 | 7 | 11 => {
                let exp = self.exp();
                if r.immediate()
                    && func != 11
                    && sn_lt(exp, tmf_sn)
                    && sn_le(tmf_sn, exp.wrapping_add(super::CMD_WINDOW))
                {
                    // Commands before the TMF are still in a CmdSN gap: those of its task set
                    // are aborted, held or on arrival, and the answer waits for them all. (A
                    // CmdSN past the window names no command the initiator may have sent.)
                    let which = (func <= 5).then_some(lun);
                    let key = env.key;
                    self.with_sess(|s| {
                        s.void_before(tmf_sn, which.as_ref());
                        s.abort_prior.push((tmf_sn, which, key));
                    });
                    until_sn = Some(tmf_sn);
                }
                let slots: Vec<usize> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| func >= 6 || t.lun == lun)
                    .map(|(s, _)| s)
                    .collect();
                for s in slots {
                    wait.extend(self.abort_task(s));
                }
                // The session's other connections abort theirs (one I_T nexus).
                let filter = if func >= 6 {
                    mcs::Filter::All
                } else {
                    mcs::Filter::Lun(lun)
                };
                if let Some((st, _)) = self.abort_siblings(env, filter) {
                    settles.push(st);
                }
                if func >= 5 {
                    // Held commands of the reset LU (all of them for the target and nexus
                    // resets) are terminated; the session's others keep their place.
                    if func == 5 {
                        self.with_sess(|s| s.void_lun(&lun));
                    } else {
                        self.with_sess(|s| s.void(None, None));
                    }
                    // Every session sees the reset once, as a unit attention.
                    let n = crate::frontend::iscsi::pages::lun_of(&lun);
                    let target = std::sync::Arc::clone(&self.target);
                    let me = (Arc::clone(&env.shared.mailboxes[env.io.reactor]), env.key);
                    if func == 11 {
                        // SAM-5: only this nexus is reset. Its tasks were aborted above; its
                        // session ends once answered, which releases its RESERVEs at both
                        // sites (the nexus loss); its next login reports the loss.
                        target.note_nexus_loss(self.me);
                    }
                    for (i, l) in target.luns.iter().enumerate() {
                        if func != 11 && (func != 5 || Some(l.lun) == n) {
                            l.resets.fetch_add(1, Ordering::AcqRel);
                            // A reset releases RESERVE reservations (SPC-2 §5.5.1): here at
                            // once, at both sites with the carried reset.
                            l.pr.clear_reserve();
                            // SAM-5: every I_T nexus's tasks of the LU are aborted. This
                            // session aborted its own above; the others, at both sites of a
                            // mirrored volume, are reached where the carried reset is decided
                            // and installed, and the answer waits until they all have (the
                            // mirror holds its answers for it); otherwise here directly.
                            l.pr.set_origin(&self.res, true);
                            origins.push(i);
                            match self.carry_reset(env, l) {
                                Carried::Pending(slot) => wait.push(slot),
                                Carried::Done => {}
                                Carried::No => {
                                    settles.extend(l.pr.abort_here(Some(me.clone())));
                                }
                            }
                        }
                    }
                }
                if func == 4 {
                    // One task set per logical unit (TST=000b): its tasks of every I_T nexus
                    // at this site are aborted too (SAM-5; a mirrored volume's other site is
                    // not reached), and the answer waits for them.
                    let n = crate::frontend::iscsi::pages::lun_of(&lun);
                    let target = Arc::clone(&self.target);
                    let me = (Arc::clone(&env.shared.mailboxes[env.io.reactor]), env.key);
                    for (i, l) in target.luns.iter().enumerate() {
                        if Some(l.lun) == n {
                            l.pr.set_origin(&self.res, true);
                            origins.push(i);
                            settles.extend(l.pr.clear_here(Some(me.clone())));
                        }
                    }
                }
                if func == 7 {
                    // RFC 7143 §11.5.1: a cold reset also closes every connection of the
                    // target's other sessions, of every initiator (this one closes once its
                    // answer is out, which waits until they are gone).
                    settles.extend(self.close_target_sessions(env));
                }
                tmf_rsp::COMPLETE
            }
            3 | 9 | 10 | 12 => tmf_rsp::NOT_SUPPORTED,
            8 => tmf_rsp::REASSIGN_UNSUPPORTED,
            _ => tmf_rsp::REJECTED,
        };
        // A cold reset or an I_T nexus reset ends the session once answered (finish_tmfs).
        self.tmf_wait.push(TmfWait {
            itt: r.itt(),
            code,
            func,
            slots: wait,
            settles,
            origins,
            found,
            until_sn,
        });
        self.finish_tmfs();
    }

    /// A nexus that an I_T NEXUS RESET ended reports I_T NEXUS LOSS OCCURRED on each logical
    /// unit at its first command after logging in again (SAM-5), once.
    fn take_nexus_losses(&mut self, t: &crate::frontend::iscsi::IscsiTarget) {
        for (i, l) in t.luns.iter().enumerate() {
            let mut lost = l.nexus_losses.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = lost.iter().position(|n| *n == self.me) {
                lost.remove(at);
                self.with_sess(|s| {
                    s.grow_luns(i);
                    s.ua[i] = Some(crate::frontend::iscsi::scsi::Sense::NEXUS_LOSS);
                });
            }
        }
    }

    /// Send the TMF responses whose aborted tasks have all finished.
    pub(super) fn finish_tmfs(&mut self) {
        let tasks = &self.tasks;
        self.abort_wait.retain_mut(|(_, slots)| {
            slots.retain(|&s| tasks.contains(s as usize));
            // Dropping the note releases its share.
            !slots.is_empty()
        });
        let mut i = 0;
        while i < self.tmf_wait.len() {
            let tasks = &self.tasks;
            let w = &mut self.tmf_wait[i];
            w.slots.retain(|&s| tasks.contains(s as usize));
            w.settles.retain(|s| !s.done());
            if let Some(n) = w.until_sn {
                // Every command before it came: its task set's were aborted on arrival.
                let exp = self.exp();
                if sn_le(n, exp) {
                    self.with_sess(|s| s.abort_prior.retain(|(m, _, _)| *m != n));
                    self.tmf_wait[i].until_sn = None;
                }
            }
            let w = &self.tmf_wait[i];
            if w.slots.is_empty() && w.settles.is_empty() && w.until_sn.is_none() {
                let TmfWait {
                    itt,
                    mut code,
                    func,
                    origins,
                    found,
                    ..
                } = self.tmf_wait.remove(i);
                if found.is_some_and(|f| f.load(Ordering::Acquire)) {
                    code = tmf_rsp::COMPLETE;
                }
                let target = Arc::clone(&self.target);
                for l in origins {
                    if let Some(l) = target.luns.get(l) {
                        l.pr.set_origin(&self.res, false);
                    }
                }
                let h = Bhs::new(op::TMF_RSP, 0x80).byte(2, code).itt(itt);
                self.put_status(h, &[]);
                if matches!(func, 7 | 11) && code == tmf_rsp::COMPLETE {
                    self.life.closing = true;
                }
            } else {
                i += 1;
            }
        }
    }
}
