//! Fused Compare+Write: checked on the queue, executed by the volume's home.
//!
//! Model: the halves are paired by the order their capsules arrive and wait for each other's
//! data (`fusing.rs`); the pair is
//! checked here (same namespace and range, at most ACWU blocks, reservation access to read and
//! write) and handed whole to the volume's home executor (`atomic::Home`) as a
//! `Note::Fused`, which runs it with every other access to the volume excluded and answers
//! both commands with one `Note::Done`.
//!
//! Invariants:
//! - Both halves get exactly one response each: a pair refused here answers the Compare with
//!   the reason and the Write with "aborted due to failed fused command".
//! - `begin_fused` is called before the note is sent, so accesses that follow on any reactor
//!   are diverted to the home until the pair is done.

use super::{MAX_XFER, NvmfConn, OP_FUSED, Req, Role};
use crate::bdev::in_range;
use crate::frontend::nvmf::NvmfShared;
use crate::frontend::nvmf::atomic::{FusedReq, Note, Origin};
use crate::frontend::nvmf::cmd::{self, Sqe, Status, io};
use crate::runtime::Env;
use crate::runtime::Shared;

impl NvmfConn {
    /// Execute a fused Compare (`first`, with `cmp` data) + Write (`sqe`, with `data`) pair:
    /// checked here, run atomically by the volume's home.
    pub(super) fn fused(
        &mut self,
        env: &mut Env<'_>,
        nv: &NvmfShared,
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
        let (idx, vol) = match self.io_ns(env.vols, c.nsid()) {
            Ok(x) => x,
            Err(s) => return fail(self, s),
        };
        let access = self.resv_access(idx);
        if !access.read || !access.write {
            return fail(self, Status::RESERVATION_CONFLICT);
        }
        let vols = env.vols;
        let Some(v) = vols.get(vol).and_then(Option::as_ref) else {
            return fail(self, Status::INVALID_NS);
        };
        let info = &v.info;
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
        let Some(sections) = nv.sections(shared) else {
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
            vol,
            ns: self.ns_key(idx),
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
                locate: false,
                vol,
                from,
                off,
                cmp,
                data: data.to_vec(),
                fua: sqe.fua(),
            })),
        );
    }
}
