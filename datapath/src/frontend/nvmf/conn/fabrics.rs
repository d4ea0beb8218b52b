//! Fabrics commands: the ICReq that opens the connection, Connect, Property Get/Set.
//!
//! Model: Connect decides the queue's role once: qid 0 creates a controller in the registry
//! (this queue becomes its admin queue), qid n attaches to a live, enabled controller of the
//! same host and subsystem. Properties (CAP, VS, CC, CSTS) live in the admin queue's state;
//! setting CC.EN enables the controller for I/O queues.
//!
//! Invariants:
//! - A queue connects at most once (a second Connect is a command sequence error).
//! - An I/O queue attaches only to a controller that is alive and enabled, for the host (NQN
//!   and host id) that created it; the registry is locked only here and on teardown.

use super::{ADMIN_SQSIZE_MAX, AdminState, MAX_AERS, MAXH2CDATA, MQES, NvmfConn, Phase, Role};
use crate::frontend::nvmf::NvmfShared;
use crate::frontend::nvmf::cmd::{self, Sqe, Status, admin, fctype, prop};
use crate::frontend::nvmf::ctrl::{self, AttachError};
use crate::frontend::nvmf::pdu::{self, Violation, fes};
use crate::runtime::Env;
use crate::runtime::hosts::HostRecord;
use std::sync::atomic::Ordering;

/// Data direction of a command: opcode bits 1:0 (fctype for fabrics commands) = 01.
pub(super) fn host_to_ctrl(sqe: &Sqe<'_>) -> bool {
    let op = if sqe.opcode() == admin::FABRICS {
        sqe.fctype()
    } else {
        sqe.opcode()
    };
    op & 3 == 1
}

impl NvmfConn {
    pub(super) fn ic_req(&mut self, env: &mut Env<'_>, p: pdu::Pdu<'_>) {
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
        pdu::put_ic_resp(&mut self.tx.pending, 0, ic.digests, MAXH2CDATA);
        self.dg = ic.digests;
        self.c2h_align = (usize::from(ic.hpda) + 1) * 4;
        self.phase = Phase::Ready;
    }

    pub(super) fn connect(
        &mut self,
        env: &mut Env<'_>,
        nv: &NvmfShared,
        sqe: Sqe<'_>,
        data: &[u8],
    ) {
        let cid = sqe.cid();
        let invalid = |iattr: u64, ipo: u64| (Status::CONNECT_INVALID_PARAM, (iattr << 16) | ipo);
        let r = self.try_connect(env, nv, sqe, data, invalid);
        match r {
            Ok(cntlid) => self.respond(cid, Status::SUCCESS, u64::from(cntlid)),
            Err((s, result)) => {
                tracing::info!(conn = env.key, status = s.0, "NVMe-oF connect refused");
                self.respond(cid, s, result)
            }
        }
    }

    pub(super) fn try_connect(
        &mut self,
        env: &mut Env<'_>,
        nv: &NvmfShared,
        sqe: Sqe<'_>,
        data: &[u8],
        invalid: impl Fn(u64, u64) -> (Status, u64),
    ) -> Result<u16, (Status, u64)> {
        if !matches!(self.role, Role::None) {
            return Err((Status::CMD_SEQ_ERROR, 0));
        }
        if sqe.connect_recfmt() != 0 {
            return Err((Status::CONNECT_FORMAT, 0));
        }
        let Some(cd) = cmd::connect_data(data) else {
            return Err((Status::SGL_INVALID_DATA, 0));
        };
        if let Some(ipo) = cd.unterminated_nqn() {
            return Err(invalid(1, ipo));
        }
        let discovery = cd.subnqn == cmd::DISCOVERY_NQN.as_bytes();
        let found = if discovery {
            None
        } else {
            Some(nv.find(cd.subnqn).ok_or_else(|| invalid(1, 256))?)
        };
        if let Some(s) = &found
            && !s.allows(cd.hostnqn)
        {
            return Err((Status::CONNECT_INVALID_HOST, 0));
        }
        let Ok(hostnqn) = std::str::from_utf8(cd.hostnqn) else {
            return Err(invalid(1, 512));
        };
        let sqsize = sqe.connect_sqsize();
        let qid = sqe.connect_qid();
        // On a fabric CAP.MQES bounds the I/O submission queues only; an admin queue may have
        // up to 4096 entries.
        let max = if qid == 0 { ADMIN_SQSIZE_MAX } else { MQES };
        if sqsize == 0 || sqsize > max {
            return Err(invalid(0, 44));
        }
        // An admin queue takes the subsystem as it is now; an I/O queue takes its controller's.
        let (ctrl, sub) = if qid == 0 {
            if cd.cntlid != 0xFFFF {
                return Err(invalid(1, 16));
            }
            let c = nv
                .registry
                .create(
                    found.clone(),
                    hostnqn,
                    nv.host_sites.site_of(hostnqn),
                    cd.hostid,
                    cmd::kato_granular(sqe.connect_kato()),
                )
                .ok_or((Status::CONNECT_BUSY, 0))?;
            self.role = Role::Admin(AdminState {
                cc: 0,
                csts: 0,
                aec: 0,
                aers: Vec::with_capacity(MAX_AERS),
                aborts: 0,
                ana_seen: found.as_ref().map_or(0, |s| s.ana_changes(env.vols)),
                ana_view: found.as_ref().map_or_else(Vec::new, |s| {
                    s.ana_groups
                        .iter()
                        .map(|g| ctrl::host_group_state(env.vols, g.volume, c.host_site))
                        .collect()
                }),
                ana_masked: false,
                ana_watch: Vec::new(),
                features: Default::default(),
                ns_changed: Default::default(),
                ka_off: false,
            });
            (c, found)
        } else {
            let c = nv.registry.get(cd.cntlid).ok_or_else(|| invalid(1, 16))?;
            let same = match (&c.subsys, &found) {
                (Some(a), Some(b)) => a.nqn == b.nqn,
                _ => false,
            };
            if !same {
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
                // NVMe Base 2.0, Connect: a queue that already exists is a Command Sequence
                // Error (Linux's and SPDK's targets answer so too).
                Err(AttachError::InUse) => return Err((Status::CMD_SEQ_ERROR, 0)),
                Err(AttachError::Dead) | Err(AttachError::NoFd) => {
                    return Err((Status::CONNECT_BUSY, 0));
                }
            }
            self.role = Role::Io;
            let sub = c.subsys.clone();
            (c, sub)
        };
        self.qid = qid;
        self.qsize = u32::from(sqsize) + 1;
        // The Connect itself took the queue's first entry (the head was counted before the
        // queue had its size).
        self.sqhd = 1 % self.qsize;
        self.sqflow_off = sqe.connect_cattr() & cmd::CATTR_DISABLE_SQFLOW != 0;
        self.resv_cache.clear();
        let id = ctrl.cntlid;
        self.ctrl = Some(ctrl);
        // An admin queue's Keep Alive Timer runs from its Connect (KATO 0: none).
        self.restart_keep_alive();
        let target = match &sub {
            Some(s) => s.nqn.clone(),
            None => cmd::DISCOVERY_NQN.to_string(),
        };
        let mut rec = HostRecord::new("nvmf", env.io.reactor, env.key, target);
        rec.peer = crate::transport::tcp::peer_addr(&self.fd);
        rec.host = Some(hostnqn.to_string());
        rec.site = self
            .ctrl
            .as_ref()
            .and_then(|c| c.host_site)
            .map(|s| nv.host_sites.name_of(s).to_string());
        rec.queue = Some(qid);
        rec.controller = Some(id);
        // Registered under the table's read lock, and only while the subsystem is still
        // there (see the module's model): a removal then either sees this host or is seen.
        // An admin queue must hold the very copy in the table (its controller's state was
        // set up from it); an I/O queue takes the copy in the table now (the namespaces its
        // controller has now), and its record lists that copy's volumes: a namespace change
        // (under the write lock) then either updates this record or was made before it.
        let mut sub = sub;
        {
            let subs = nv.subs();
            let current = match &sub {
                None => true,
                Some(s) if qid == 0 => subs.iter().any(|x| std::sync::Arc::ptr_eq(x, s)),
                Some(s) => match subs.iter().find(|x| x.nqn == s.nqn) {
                    Some(x) => {
                        sub = Some(std::sync::Arc::clone(x));
                        true
                    }
                    None => false,
                },
            };
            if !current {
                drop(subs);
                if qid == 0 {
                    nv.registry.remove(id);
                } else if let Some(c) = &self.ctrl {
                    c.detach_queue(qid);
                }
                self.ctrl = None;
                self.role = Role::None;
                return Err((Status::CONNECT_BUSY, 0));
            }
            rec.set_volumes(
                sub.as_ref()
                    .map(|s| s.namespaces.iter().map(|n| n.volume).collect())
                    .unwrap_or_default(),
            );
            self.host = Some(env.shared.hosts.register(rec));
        }
        self.subsys = sub;
        Ok(id)
    }

    pub(super) fn property(&mut self, sqe: Sqe<'_>) {
        let cid = sqe.cid();
        let Role::Admin(st) = &mut self.role else {
            return;
        };
        let set = sqe.fctype() == fctype::PROPERTY_SET;
        // ATTRIB bits 2:0: 0 four bytes, 1 eight bytes, the rest reserved.
        let eight = match sqe.prop_attrib() & 7 {
            0 => false,
            1 => true,
            _ => return self.respond(cid, Status::INVALID_FIELD, 0),
        };
        let cap = u64::from(MQES) | (1 << 16) | (10 << 24) | (1 << 37);
        // An 8-byte access is CAP itself; a 4-byte access is a 4-byte property or either half
        // of CAP. Anything else (misaligned, straddling two properties) is refused.
        let (status, result) = match (set, eight, sqe.prop_offset()) {
            (false, true, prop::CAP) => (Status::SUCCESS, cap),
            (false, false, prop::CAP) => (Status::SUCCESS, cap & 0xFFFF_FFFF),
            (false, false, o) if o == prop::CAP + 4 => (Status::SUCCESS, cap >> 32),
            (false, false, prop::VS) => (Status::SUCCESS, u64::from(cmd::VERSION)),
            (false, false, prop::CC) => (Status::SUCCESS, u64::from(st.cc)),
            (false, false, prop::CSTS) => (Status::SUCCESS, u64::from(st.csts)),
            (true, false, prop::CC) => {
                let cc = sqe.prop_value() as u32;
                let was = st.cc & 1 != 0;
                st.cc = cc;
                let en = cc & 1 != 0;
                if was && !en {
                    // Controller reset (Base 2.0 §3.7.2): its I/O queues are deleted and the
                    // commands held here (Async Event Requests) end unanswered.
                    st.aers.clear();
                    // No Feature is saveable: the ones a host can change are back to their
                    // defaults (Base 2.0, Feature Values: current value after a reset), the
                    // async event configuration too (KATO stays: it came with Connect).
                    st.features = Default::default();
                    st.aec = 0;
                    // An event owed or reported is forgotten with the requests; the changed
                    // namespaces stay listed until the log page is read.
                    st.ns_changed.reset_events();
                    if let Some(c) = &self.ctrl {
                        c.reset_queues();
                    }
                }
                st.csts = u32::from(en);
                let shutdown = (cc >> 14) & 3 != 0;
                if shutdown {
                    st.csts |= 2 << 2; // SHST: shutdown complete
                }
                // The Keep Alive Timer is active only while the controller is enabled and
                // not shut down (Base spec, Keep Alive Timer Activation): a host that shut the
                // controller down (or disabled it) is not torn down for sending no Keep Alive.
                // Only once the controller has been enabled: before its first enabling the
                // timer runs from Connect (a CC write with EN = 0, as hosts make to set CC's
                // fields before enabling, must not stop it, or an association that is never
                // enabled would stay for ever).
                let was_off = st.ka_off;
                st.ka_off = (!en || shutdown) && (was || was_off);
                let (ka_off, ka_on) = (st.ka_off, was_off && !st.ka_off);
                if let Some(c) = &self.ctrl {
                    c.enabled.store(en, Ordering::Release);
                }
                if ka_off {
                    self.ka_deadline = None;
                } else if (en && !was) || ka_on {
                    // Enabling activates the Keep Alive Timer (Base 2.0 §3.9): KATO from now.
                    self.restart_keep_alive();
                }
                (Status::SUCCESS, 0)
            }
            _ => (Status::INVALID_FIELD, 0),
        };
        self.respond(cid, status, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::nvmf::cmd::io;

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
}
