//! Reservation commands on a queue: Register, Report, Acquire, Release.
//!
//! Model: Report is answered from the namespace's reservation snapshot. Register, Acquire and
//! Release are validated once and built as one `ResvCmd`: on a mirrored volume it goes to the
//! volume's mirror engine, whose leader site decides it for both sites (the completion
//! carries the decided status); on any other volume it is applied here, under the
//! subsystem's reservation lock (docs/nvmf.md).
//!
//! Invariants:
//! - A command is decided at exactly one place (the leader's engine or this table).
//! - A mirrored command that could not reach the other site answers Internal Error, never a
//!   decided status (`status::status_of`).

use super::{MAX_XFER, NvmfConn, Req};
use crate::bdev::Start;
use crate::frontend::nvmf::cmd::{Sqe, Status, io, sgl};
use crate::frontend::nvmf::ctrl::Subsystem;
use crate::frontend::nvmf::status::status_of;
use crate::runtime::Env;
use crate::uring::IoTag;

/// Where a reservation command goes.
enum Routed {
    /// Decided here, alone (the volume is not mirrored).
    Local,
    /// Decided (or refused) already: answer with this.
    Answer(Status),
    /// Sent to the mirror engine; its completion answers.
    Pending,
}

impl NvmfConn {
    /// Reservation Register / Report / Acquire / Release on namespace index `idx`.
    pub(super) fn reservation(
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
        // Reservations persist through a power loss when kept in a state file.
        let ptpl = self.nv.state_dir.is_some();
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
            // NUMD is a 0's based dword count (up to 2^32): above MDTS is Invalid Field.
            let numd = u64::from(cdw10) + 1;
            if numd * 4 > u64::from(MAX_XFER) {
                return self.respond(cid, Status::INVALID_FIELD, 0);
            }
            // The SGL describes exactly NUMD dwords (Data SGL Length Invalid otherwise).
            if u64::from(sqe.sgl_len()) != numd * 4 {
                return self.respond(cid, Status::SGL_INVALID_DATA, 0);
            }
            let want = (numd * 4) as u32;
            let Some(snap) = sub.resv.snapshot(sub.resv_slot(idx)) else {
                return self.respond(cid, Status::INVALID_NS, 0);
            };
            snap.report_ext(&mut self.scratch, ptpl);
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
            // CPTPL (Base 2.0, Reservation Register): 00b no change, 01b reserved, 10b PTPL 0,
            // 11b PTPL 1. PTPL is whether the daemon keeps reservations in a state file: with
            // one, 10b (stop persisting) cannot be honoured; without one, 10b asks for what
            // is, and 11b is accepted though nothing persists (Linux's host asks 11b on every
            // Register, and refusing it would refuse its reservations altogether); PTPLS,
            // RESCAP PTPLC and Get Features 83h say 0 then.
            match cdw10 >> 30 {
                1 => true,
                2 => ptpl,
                _ => false,
            }
        } else {
            iekey
        };
        if invalid {
            return self.respond(cid, Status::INVALID_FIELD, 0);
        }
        let cmd = crate::frontend::nvmf::resv::ResvCmd {
            nqn: sub.nqn.clone(),
            // The namespace's own id (the leader finds it by id): not idx + 1, which differs
            // once a subsystem's nsids have gaps.
            nsid: sub.namespaces.get(idx).map_or(0, |ns| ns.nsid),
            opcode: op,
            cdw10,
            host: self.ctrl.as_ref().map_or([0; 16], |c| c.hostid),
            key1,
            key2,
        };
        let status = match self.replicated_reservation(env, sub, idx, cid, &cmd) {
            Routed::Local => sub.resv.update(sub.resv_slot(idx), |n| cmd.apply(n)),
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
        cmd: &crate::frontend::nvmf::resv::ResvCmd,
    ) -> Routed {
        let Some(vol) = sub.namespaces.get(idx).map(|ns| ns.volume) else {
            return Routed::Local;
        };
        let tag = IoTag {
            conn: env.key,
            slot: self.reqs.vacant_key() as u32,
        };
        let Some(started) = env.chans.get_mut(vol).and_then(|c| {
            let bytes = crate::layer::mirror::engine::tagged(
                crate::frontend::nvmf::resv::META_KIND,
                &cmd.encode(),
            );
            c.meta(env.io, tag, &bytes)
        }) else {
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
                    vol,
                    // Decided by the leader: no media access through the namespace.
                    ns: (0, 0),
                });
                debug_assert_eq!(k as u32, tag.slot);
                Routed::Pending
            }
        }
    }
}
