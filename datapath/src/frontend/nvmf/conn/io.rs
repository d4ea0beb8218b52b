//! NVM I/O commands: Read, Write, Write Zeroes, Flush, Dataset Management, Compare.
//!
//! Model: a command is checked (namespace, ANA path state, reservation access, LBA range,
//! data length) and sent to the volume's channel on this reactor, inside the volume's atomic
//! section; while a fused pair is pending at the volume's home the access is diverted there
//! and answered by a `Note::Done`. DSM issues one unmap per range and completes when all have.
//!
//! Invariants:
//! - I/O to a namespace whose ANA group is not served here is refused with the ANA path
//!   status (`status::path_status`) before any device access; it is never a media error.
//! - Every access counted in an atomic section is left exactly once (`leaves`, in `flush`).
//! - Reservation access is re-evaluated only when the namespace's reservation version moved.

use super::{MAX_XFER, NvmfConn, Req, Role};
use crate::bdev::volume::Volume;
use crate::bdev::{ReadStart, Start, in_range};
use crate::frontend::nvmf::NvmfShared;
use crate::frontend::nvmf::atomic::{Note, OpKind, OpReq, Origin};
use crate::frontend::nvmf::cmd::{Sqe, Status, io, sgl};
use crate::frontend::nvmf::resv::Access;
use crate::frontend::nvmf::status::{path_status, status_of};
use crate::runtime::Env;
use crate::runtime::Shared;
use crate::uring::IoTag;
use std::sync::Arc;

impl NvmfConn {
    /// The namespace `nsid` of this queue's subsystem (its index and volume), with its ANA
    /// group's state checked. No reference count is taken: the subsystem is shared by every
    /// queue on every reactor, and an atomic on it per command would bounce its cache line.
    pub(super) fn io_ns(
        &self,
        vols: &[Option<Arc<Volume>>],
        nsid: u32,
    ) -> Result<(usize, usize), Status> {
        let Some(sub) = self.subsys.as_ref() else {
            return Err(Status::INVALID_NS);
        };
        let Some(idx) = sub.ns_index(nsid) else {
            return Err(Status::INVALID_NS);
        };
        if sub.namespaces[idx].since > self.cmd_gen {
            // Added after the command arrived (its NSID was then inactive, or another
            // namespace's that was removed since): not the namespace it named.
            return Err(Status::INVALID_NS);
        }
        // The namespace's ANA group is its volume's: refused with a path status (never a
        // media error) unless this site serves the volume.
        let Some(Some(vol)) = vols.get(sub.namespaces[idx].volume) else {
            return Err(Status::INVALID_NS);
        };
        path_status(vol.path.get())?;
        Ok((idx, sub.namespaces[idx].volume))
    }

    /// The namespace index `idx` of this queue's copy as a request records it: (NSID, the
    /// generation it was added in).
    pub(super) fn ns_key(&self, idx: usize) -> (u32, u64) {
        self.subsys
            .as_ref()
            .and_then(|s| s.namespaces.get(idx))
            .map_or((0, 0), |n| (n.nsid, n.since))
    }

    /// The bytes a Write or Compare moves by its NLB (`None`: another command, or a namespace
    /// not known here), to tell an SGL longer than its command from a command above MDTS.
    pub(super) fn nlb_bytes(&self, vols: &[Option<Arc<Volume>>], sqe: &Sqe<'_>) -> Option<u64> {
        if !matches!(self.role, Role::Io) || !matches!(sqe.opcode(), io::WRITE | io::COMPARE) {
            return None;
        }
        let sub = self.subsys.as_ref()?;
        let idx = sub.ns_index(sqe.nsid())?;
        let v = vols.get(sub.namespaces[idx].volume)?.as_ref()?;
        Some(u64::from(sqe.nlb()) * u64::from(v.info.block_size.max(1)))
    }

    /// What this host may do on namespace index `idx` of its subsystem: one atomic load, and
    /// the lock only when the reservation state changed since the last look. The cache is by
    /// reservation slot (nsid - 1) and emptied when the queue takes a new namespace set.
    pub(super) fn resv_access(&mut self, idx: usize) -> Access {
        let Some(sub) = self.subsys.as_deref() else {
            return Access {
                read: false,
                write: false,
            };
        };
        let idx = sub.resv_slot(idx);
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
    pub(super) fn divert(
        &mut self,
        env: &Env<'_>,
        nv: &NvmfShared,
        vol: usize,
        mut req: Req,
        kind: OpKind,
        ranges: Vec<(u64, u64)>,
        data: Vec<u8>,
        fua: bool,
    ) {
        let Some(sections) = nv.sections(env.shared) else {
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

    pub(super) fn io(&mut self, env: &mut Env<'_>, nv: &NvmfShared, sqe: Sqe<'_>, data: &[u8]) {
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
        let (idx, vol) = match self.io_ns(env.vols, sqe.nsid()) {
            Ok(x) => x,
            Err(s) => return self.respond(cid, s, 0),
        };
        if matches!(
            op,
            io::RESV_REGISTER | io::RESV_REPORT | io::RESV_ACQUIRE | io::RESV_RELEASE
        ) && let Some(sub) = self.subsys.clone()
        {
            return self.reservation(env, &sub, idx, sqe, data);
        }
        let access = self.resv_access(idx);
        let allowed = match op {
            io::READ | io::COMPARE => access.read,
            _ => access.write,
        };
        if !allowed {
            return self.respond(cid, Status::RESERVATION_CONFLICT, 0);
        }
        let vols = env.vols;
        let Some(v) = vols.get(vol).and_then(Option::as_ref) else {
            return self.respond(cid, Status::INVALID_NS, 0);
        };
        let info = &v.info;
        let bs = u64::from(info.block_size.max(1));
        let size = info.size;
        let ranged = |slba: u64, nlb: u64| -> Option<(u64, u64)> {
            let off = slba.checked_mul(bs)?;
            let len = nlb.checked_mul(bs)?;
            in_range(off, len, size).then_some((off, len))
        };
        let me = env.io.reactor;
        let section = nv.sections(shared).and_then(|s| s.get(vol));
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
            vol,
            ns: self.ns_key(idx),
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
                    return self.divert(env, nv, vol, req, kind, vec![(off, len)], d, fua);
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
                        nv,
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
                    return self.divert(env, nv, vol, req, OpKind::Unmap, list, Vec::new(), false);
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
}
