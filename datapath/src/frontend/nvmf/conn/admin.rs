//! Admin commands: Identify, Get Log Page, Async Event Request, Keep Alive and Abort; Get/Set
//! Features are dispatched here and decided in `features`.
//!
//! Model: data returned to the host is built whole in `scratch` and sent from it; Identify,
//! Features and log pages describe the queue's copy of the subsystem, the newest one
//! (`namespaces`: namespace changes at run time). ANA: each
//! namespace is in its volume's group (id = volume index + 1); the ANA log page has one
//! descriptor per group of the subsystem, with the state its volume publishes (a
//! `PathCell`), and the subsystem's change count is the sum of its volumes' change counts.
//! An admin queue remembers the count it last reported (log page read or event sent) and
//! completes a held Async Event Request when the count moved and ANA notices are enabled.
//! Where hosts are: the states are those the controller's host sees
//! (`ctrl::host_group_state`: for a host the host list places, its site's optimised); such a
//! controller also remembers the states it last reported, and an event is sent to it only
//! when one of them moved.
//!
//! Invariants:
//! - Identify and log data never exceed the host's SGL length; log page offsets are checked.
//! - Abort of a command on another queue is asked of that queue's reactor (`Note::Abort`) and
//!   answered when it replies (`Note::AbortDone`), or "not aborted" when the request is dropped
//!   on the way (the queue closed: `AbortReply`'s drop); a held AER is aborted here.
//! - At most `cmd::ACL + 1` Aborts are outstanding (asked of another queue, not answered
//!   yet); an Abort beyond them completes at once with Abort Command Limit Exceeded.

use super::{INCAPSULE_MAX, MAX_AERS, MAX_XFER, MDTS, MQES, NvmfConn, Role};
use crate::bdev::volume::{PathCell, PathState};
use crate::frontend::nvmf::atomic::{AbortReply, Note};
use crate::frontend::nvmf::cmd::{self, Sqe, Status, admin, feat, lid, sgl};
use crate::frontend::nvmf::ctrl::{self, Controller};
use crate::frontend::nvmf::{NvmfShared, status};
use crate::runtime::{Env, Msg, NoteTo};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Get Log Page, Command Dword 10 bit 15: Retain Asynchronous Event.
const RAE: u32 = 1 << 15;

impl NvmfConn {
    pub(super) fn admin(&mut self, env: &mut Env<'_>, nv: &NvmfShared, sqe: Sqe<'_>, _data: &[u8]) {
        let cid = sqe.cid();
        let Some(ctrl) = self.ctrl.clone() else {
            return self.respond(cid, Status::CMD_SEQ_ERROR, 0);
        };
        if !ctrl.enabled.load(Ordering::Acquire) {
            // Only Fabrics commands before CC.EN = 1 (Base 2.0 §3.5, controller
            // initialisation; Linux nvmet answers the same).
            return self.respond(cid, Status::CMD_SEQ_ERROR, 0);
        }
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
                // The data is 4 KiB, and the SGL must describe exactly that (as Linux's nvmet
                // checks too): a shorter one would take part of it and be answered success.
                if sqe.sgl_len() != cmd::IDENTIFY_LEN as u32 {
                    return self.respond(cid, Status::SGL_INVALID_DATA, 0);
                }
                let s = self.identify(env, nv, &ctrl, sqe);
                if s == Status::SUCCESS {
                    self.respond_scratch(cid, cmd::IDENTIFY_LEN as u32);
                } else {
                    self.respond(cid, s, 0);
                }
            }
            admin::GET_LOG_PAGE => {
                // NUMDU:NUMDL is a 0's based dword count: up to 2^32 dwords (16 GiB), so
                // counted in u64. A transfer above MDTS is Invalid Field in Command.
                let numd = u64::from((sqe.cdw(11) & 0xFFFF) << 16 | (sqe.cdw(10) >> 16)) + 1;
                if numd * 4 > u64::from(MAX_XFER) {
                    return self.respond(cid, Status::INVALID_FIELD, 0);
                }
                // The SGL describes exactly NUMD dwords (Data SGL Length Invalid otherwise).
                if u64::from(sqe.sgl_len()) != numd * 4 {
                    return self.respond(cid, Status::SGL_INVALID_DATA, 0);
                }
                let want = (numd * 4) as u32;
                let lpo = u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32);
                // What the host has seen of ANA changes moves only with a log it receives.
                let seen = match &self.role {
                    Role::Admin(st) => Some((st.ana_seen, st.ana_view.clone())),
                    _ => None,
                };
                let s = self.log_page(env, nv, discovery, sqe);
                if s != Status::SUCCESS {
                    return self.respond(cid, s, 0);
                }
                if lpo % 4 != 0 || lpo > self.scratch.len() as u64 {
                    if let (Role::Admin(st), Some((chg, view))) = (&mut self.role, seen) {
                        st.ana_seen = chg;
                        st.ana_view = view;
                    }
                    return self.respond(cid, Status::INVALID_FIELD, 0);
                }
                self.scratch.drain(..lpo as usize);
                if (sqe.cdw(10) & 0xFF) as u8 == lid::CHANGED_NS
                    && sqe.cdw(10) & RAE == 0
                    && let Role::Admin(st) = &mut self.role
                {
                    // Read with RAE clear: the list starts over and the event may be
                    // reported again (Base 2.0, Get Log Page RAE; Changed Namespace List).
                    st.ns_changed.acknowledge();
                }
                self.respond_scratch(cid, want);
            }
            admin::SET_FEATURES => {
                let (s, r) = self.set_features(&ctrl, sqe, nv.state_dir.is_some());
                if s == Status::SUCCESS && (sqe.cdw(10) & 0xFF) as u8 == feat::KATO {
                    // The new timeout runs from now.
                    self.restart_keep_alive();
                }
                self.respond(cid, s, r)
            }
            admin::GET_FEATURES => match self.get_features(&ctrl, sqe, nv.state_dir.is_some()) {
                Err(s) => self.respond(cid, s, 0),
                Ok(Some(v)) => self.respond(cid, Status::SUCCESS, v),
                // The Host Identifier: only the 128-bit one (EXHID = 1) exists on a fabrics
                // controller, and it is data.
                Ok(None) => {
                    if sqe.cdw(11) & 1 == 0 {
                        return self.respond(cid, Status::INVALID_FIELD, 0);
                    }
                    if sqe.sgl_type() != sgl::TRANSPORT {
                        return self.respond(cid, Status::SGL_INVALID_TYPE, 0);
                    }
                    // The data is the 16-byte identifier, and the SGL must describe exactly
                    // that, as for Identify and log pages (a shorter one took part of it, and
                    // a C2HData DATAL that is no multiple of dwords, TCP 1.0 §3.6.2.9).
                    if sqe.sgl_len() != 16 {
                        return self.respond(cid, Status::SGL_INVALID_DATA, 0);
                    }
                    self.scratch.clear();
                    self.scratch.extend_from_slice(&ctrl.hostid);
                    self.respond_scratch(cid, 16);
                }
            },
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
            admin::KEEP_ALIVE => {
                // The only command that restarts the Keep Alive Timer (TBKAS not
                // advertised: Base 2.0 §3.9, Keep Alive command).
                self.restart_keep_alive();
                self.respond(cid, Status::SUCCESS, 0)
            }
            admin::ABORT => self.abort_request(env, nv, &ctrl, sqe),
            _ => self.respond(cid, Status::INVALID_OPCODE, 0),
        }
    }

    /// Fill `self.scratch` with Identify data.
    pub(super) fn identify(
        &mut self,
        env: &Env<'_>,
        nv: &NvmfShared,
        ctrl: &Controller,
        sqe: Sqe<'_>,
    ) -> Status {
        let cns = sqe.cdw(10) & 0xFF;
        self.scratch.clear();
        self.scratch.resize(cmd::IDENTIFY_LEN, 0);
        // The queue's copy: the namespaces the subsystem has now.
        let sub = self.subsys.clone();
        let sub = sub.as_deref();
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
                        anagrpmax: sub.map_or(0, |s| s.ana_grpmax()),
                        nanagrpid: sub.map_or(0, |s| s.ana_groups_max()),
                    },
                );
                Status::SUCCESS
            }
            (0x00, Some(s)) => {
                let nsid = sqe.nsid();
                match s.ns(nsid).zip(s.ns(nsid).and_then(|ns| env.vol(ns.volume))) {
                    Some((ns, v)) => {
                        let info = &v.info;
                        let bs = info.block_size.max(1);
                        cmd::identify_ns(
                            &mut self.scratch,
                            info.size / u64::from(bs),
                            bs,
                            ns.ana_group,
                            &ns.ids,
                            v.read_only(),
                            nv.state_dir.is_some(),
                        );
                        Status::SUCCESS
                    }
                    // An inactive NSID (1..=NN, no namespace now): a zero-filled structure
                    // (Base 2.0, Identify CNS 00h).
                    None if (1..=s.nn()).contains(&nsid) => Status::SUCCESS,
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
                    cmd::ns_descriptors(&mut self.scratch, &ns.ids);
                    Status::SUCCESS
                }
                None => Status::INVALID_NS,
            },
            _ => Status::INVALID_FIELD,
        }
    }

    /// Fill `self.scratch` with the whole log page.
    pub(super) fn log_page(
        &mut self,
        env: &Env<'_>,
        nv: &NvmfShared,
        discovery: bool,
        sqe: Sqe<'_>,
    ) -> Status {
        let id = (sqe.cdw(10) & 0xFF) as u8;
        let lsp = (sqe.cdw(10) >> 8) & 0x7F;
        self.scratch.clear();
        match (id, discovery) {
            (lid::DISCOVERY, true) => {
                let host = self.ctrl.as_ref().map(|c| c.hostnqn.as_str()).unwrap_or("");
                let subs: Vec<Arc<ctrl::Subsystem>> = nv
                    .subs()
                    .iter()
                    .filter(|s| s.allows(host.as_bytes()))
                    .cloned()
                    .collect();
                let n = (subs.len() * nv.listen.len()) as u64;
                cmd::disc_header(&mut self.scratch, nv.discovery_generation(), n);
                for s in subs {
                    for (i, a) in nv.listen.iter().enumerate() {
                        let port = a.port().to_string();
                        let addr = a.ip().to_string();
                        cmd::disc_entry(
                            &mut self.scratch,
                            &cmd::DiscEntry {
                                ipv6: a.is_ipv6(),
                                portid: nv.first_port_id + i as u16,
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
                let warn = match &self.role {
                    Role::Admin(st) => st.features.temperature_warning(),
                    _ => false,
                };
                cmd::smart_log(&mut self.scratch, warn);
            }
            (lid::FW_SLOT, false) => {
                self.scratch.resize(cmd::LOG_512, 0);
                cmd::fw_slot_log(&mut self.scratch);
            }
            (lid::CHANGED_NS, false) => {
                if let Role::Admin(st) = &self.role {
                    st.ns_changed.log(&mut self.scratch);
                }
                self.scratch.resize(cmd::IDENTIFY_LEN, 0);
            }
            // Reservation notification: none is ever posted, so always the empty page (log
            // page count 0, type 0: empty; 64 bytes).
            (lid::RESV_NOTIFICATION, false) => self.scratch.resize(64, 0),
            (lid::ANA, false) => {
                if sqe.cdw(10) & RAE == 0
                    && let Role::Admin(st) = &mut self.role
                {
                    // Read with RAE clear: ANA change events may be reported again.
                    st.ana_masked = false;
                }
                let Some(c) = self.ctrl.clone() else {
                    return Status::INTERNAL;
                };
                let Some(s) = self.subsys.clone() else {
                    return Status::INTERNAL;
                };
                let vols = env.vols;
                // The count first: a state that changes after it is read moves the count past
                // what this queue saw, so the host hears of it again.
                let chg = s.ana_changes(vols);
                // Each group's state as this controller's host sees it (the host list).
                let states: Vec<Option<PathState>> = s
                    .ana_groups
                    .iter()
                    .map(|g| ctrl::host_group_state(vols, g.volume, c.host_site))
                    .collect();
                let groups: Vec<cmd::AnaDesc<'_>> = s
                    .ana_groups
                    .iter()
                    .zip(&states)
                    .filter_map(|(g, state)| {
                        let path = &vols.get(g.volume)?.as_ref()?.path;
                        Some(cmd::AnaDesc {
                            id: g.id,
                            chgcnt: path.changes(),
                            state: status::ana_state((*state)?),
                            nsids: &g.nsids,
                        })
                    })
                    .collect();
                cmd::ana_log(&mut self.scratch, chg, &groups, lsp & 1 != 0);
                if let Role::Admin(st) = &mut self.role {
                    st.ana_seen = chg;
                    st.ana_view = states;
                }
            }
            _ => return Status::INVALID_LOG_PAGE,
        }
        Status::SUCCESS
    }

    /// An Abort from the admin queue for command `cid` of this queue.
    pub(super) fn abort_cmd(&mut self, cntlid: u16, sqid: u16, cid: u16) -> bool {
        let mine = matches!(self.role, Role::Io)
            && self.qid == sqid
            && self.ctrl.as_ref().is_some_and(|c| c.cntlid == cntlid);
        if !mine || self.terminated || self.life.broken {
            return false;
        }
        // Not yet given an R2T: drop it.
        // (A fused half aborted takes its partner with it: `fail_early`.)
        if let Some(pos) = self.r2t_wait.iter().position(|(s, _)| Sqe(s).cid() == cid) {
            let (sqe, _) = self.r2t_wait.remove(pos).expect("found");
            self.fail_early(&Sqe(&sqe), Status::ABORT_REQUESTED);
            return true;
        }
        // R2T sent, data still to come: the data will be received and dropped.
        if let Some((_, x)) = self
            .xfers
            .iter_mut()
            .find(|(_, x)| !x.discard && Sqe(&x.sqe).cid() == cid)
        {
            x.discard = true;
            let sqe = x.sqe;
            self.fail_early(&Sqe(&sqe), Status::ABORT_REQUESTED);
            return true;
        }
        // A half of a fused pair waiting for its partner's data.
        if self.fusing.abort_waiting(cid) {
            self.respond(cid, Status::ABORT_REQUESTED, 0);
            return true;
        }
        false
    }

    /// Admin Abort: cdw10 = SQID (bits 15:0), CID (bits 31:16). A held Async Event Request is
    /// aborted here; a command of an I/O queue is looked for by that queue's reactor, which
    /// answers with `Note::AbortDone`.
    pub(super) fn abort_request(
        &mut self,
        env: &Env<'_>,
        nv: &NvmfShared,
        ctrl: &Controller,
        sqe: Sqe<'_>,
    ) {
        let cid = sqe.cid();
        let sqid = (sqe.cdw(10) & 0xFFFF) as u16;
        let target = (sqe.cdw(10) >> 16) as u16;
        let Role::Admin(st) = &mut self.role else {
            return;
        };
        // ACL + 1 Aborts already outstanding: this one is the excess (Base 2.0, Abort).
        if st.aborts > usize::from(cmd::ACL) {
            return self.respond(cid, Status::ABORT_LIMIT, 0);
        }
        if sqid == 0 {
            return match st.aers.iter().position(|&c| c == target) {
                Some(pos) => {
                    st.aers.remove(pos);
                    self.respond(target, Status::ABORT_REQUESTED, 0);
                    self.respond(cid, Status::SUCCESS, 0)
                }
                None => self.respond(cid, Status::SUCCESS, 1),
            };
        }
        let (Some((reactor, key)), Some(sections)) = (ctrl.queue_at(sqid), nv.sections(env.shared))
        else {
            // No such queue: nothing to abort (result bit 0 = 1, "not aborted").
            return self.respond(cid, Status::SUCCESS, 1);
        };
        let Some(here) = sections.mailbox(env.io.reactor) else {
            return self.respond(cid, Status::SUCCESS, 1);
        };
        let reply = AbortReply::new(Arc::clone(here), env.key, ctrl.cntlid, cid);
        if let Role::Admin(st) = &mut self.role {
            st.aborts += 1;
        }
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

    /// Whether an ANA change could be reported now if one happened: an admin queue holding
    /// an Asynchronous Event Request, with the ANA change notice enabled and not masked.
    pub(super) fn ana_event_possible(&self) -> bool {
        matches!(&self.role, Role::Admin(st)
            if !st.aers.is_empty() && st.aec & (1 << 11) != 0 && !st.ana_masked)
    }

    /// Watch the path state cells of the subsystem's ANA groups once an ANA change event
    /// could be reported (and again when the groups' volumes or cells changed): each change
    /// sends this queue a note through its reactor's mailbox, so it reports the event in the
    /// turn the change arrives, idle or not. The registrations go with the queue.
    pub(super) fn watch_ana(&mut self, env: &Env<'_>) {
        if !self.ana_event_possible() {
            return;
        }
        let (Some(s), Role::Admin(st)) = (self.subsys.as_ref(), &mut self.role) else {
            return;
        };
        let cells = || {
            s.ana_groups
                .iter()
                .filter_map(|g| env.vols.get(g.volume)?.as_ref())
                .flat_map(|v| std::iter::once(&v.path).chain(v.peer_path.as_ref()))
        };
        let same = cells().count() == st.ana_watch.len()
            && cells().zip(&st.ana_watch).all(|(c, w)| w.watches(c));
        if same {
            return;
        }
        let mailbox = Arc::clone(&env.shared.mailboxes[env.reactor]);
        let key = env.key;
        let wake: crate::bdev::volume::Wake = Arc::new(move || {
            mailbox.send(Msg::Note {
                to: NoteTo::Conn(key),
                note: Box::new(Note::AnaChanged { key }),
            })
        });
        st.ana_watch = cells()
            .map(|c| PathCell::watch(c, Arc::clone(&wake)))
            .collect();
    }

    /// Complete one held Async Event Request when the subsystem's namespace set changed
    /// (`namespaces`) or the state of one of its ANA groups changed since this controller
    /// last reported it.
    pub(super) fn async_events(&mut self, env: &Env<'_>) {
        self.namespace_event();
        let Role::Admin(st) = &self.role else {
            return;
        };
        if !self.ana_event_possible() {
            return;
        }
        let (Some(c), Some(s)) = (self.ctrl.as_ref(), self.subsys.as_ref()) else {
            return;
        };
        let chg = s.ana_changes(env.vols);
        if st.ana_seen == chg {
            return;
        }
        // A host the host list places hears of a change only when a state it sees moved
        // (e.g. not of a switchover between two sites that are both up).
        let host = c.host_site;
        let moved = host.is_none()
            || st.ana_view.len() != s.ana_groups.len()
            || s.ana_groups
                .iter()
                .zip(&st.ana_view)
                .any(|(g, seen)| ctrl::host_group_state(env.vols, g.volume, host) != *seen);
        let Some(s) = self.subsys.clone() else {
            return;
        };
        let Role::Admin(st) = &mut self.role else {
            return;
        };
        st.ana_seen = chg;
        if !moved {
            return;
        }
        st.ana_view.clear();
        st.ana_view.extend(
            s.ana_groups
                .iter()
                .map(|g| ctrl::host_group_state(env.vols, g.volume, host)),
        );
        let cid = st.aers.remove(0);
        st.ana_masked = true;
        // Notice (type 2), ANA change (info 0x03), log page 0x0C.
        let result = 0x2 | (0x03 << 8) | (u64::from(lid::ANA) << 16);
        self.respond(cid, Status::SUCCESS, result);
    }
}
