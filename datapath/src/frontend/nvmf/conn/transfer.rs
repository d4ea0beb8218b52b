//! Command data movement: R2T and H2CData in, C2HData out.
//!
//! Model: write data arrives in the capsule (at most [`INCAPSULE_MAX`] bytes) or, when larger,
//! after one R2T for the whole transfer in H2CData PDUs of at most [`MAXH2CDATA`] bytes, in
//! order. A transfer that arrives in one PDU is executed straight from the receive buffer; one
//! in several PDUs is assembled in a reused buffer (`spare`). Read data leaves in one C2HData
//! PDU (with the SUCCESS flag and no response capsule when the host disabled SQ flow control).
//!
//! Invariants:
//! - At most [`MAX_R2T`] transfers are outstanding (`xfers`); further commands needing data
//!   wait in `r2t_wait` (their SQE only) and get an R2T in arrival order as slots free up.
//! - An H2CData PDU must name an outstanding transfer tag, its command, carry data, have a
//!   DATAO and DATAL that are multiples of dwords, continue exactly where the previous one
//!   ended without passing the transfer's end, and set LAST_PDU exactly when it completes
//!   the transfer; anything else is a fatal transport error (C2HTermReq).
//! - An aborted transfer (`discard`) still receives its data, then drops it unexecuted; so
//!   does one whose data arrived with a data digest that did not match (its command is
//!   answered Transient Transport Error at once).

#[cfg(doc)]
use super::INCAPSULE_MAX;
use super::{MAX_R2T, MAXH2CDATA, NvmfConn, Xfer};
use crate::frontend::nvmf::NvmfShared;
use crate::frontend::nvmf::cmd::{self, Sqe, Status};
use crate::frontend::nvmf::pdu::{self, Violation, fes};
use crate::runtime::Env;

impl NvmfConn {
    /// Ask for a command's data with one R2T covering the whole transfer.
    /// `arrived_gen`: the namespace generation the command arrived in (`NvmfConn::cmd_gen`).
    pub(super) fn issue_r2t(&mut self, sqe: [u8; cmd::SQE_LEN], arrived_gen: u64) {
        let (cid, total) = (Sqe(&sqe).cid(), Sqe(&sqe).sgl_len());
        let buf = self.spare.pop().unwrap_or_default();
        let ttag = self.xfers.insert(Xfer {
            sqe,
            total,
            received: 0,
            buf,
            discard: false,
            fail: None,
            arrived_gen,
        });
        pdu::put_r2t(&mut self.tx.pending, cid, ttag as u16, 0, total, self.dg);
    }

    /// A transfer finished: give its slot to the oldest command waiting for an R2T.
    pub(super) fn next_r2t(&mut self) {
        if self.xfers.len() < MAX_R2T
            && !self.terminated
            && let Some((sqe, arrived_gen)) = self.r2t_wait.pop_front()
        {
            self.issue_r2t(sqe, arrived_gen);
        }
    }

    pub(super) fn h2c_data(&mut self, env: &mut Env<'_>, nv: &NvmfShared, p: pdu::Pdu<'_>) {
        let Some(h) = pdu::data_hdr(p.header) else {
            return;
        };
        let header = |fei| Violation {
            fes: fes::INVALID_HEADER,
            fei,
        };
        // (The other statuses carry no field offset.)
        let status = |fes| Violation { fes, fei: 0 };
        let Some(x) = self.xfers.get_mut(h.ttag as usize) else {
            return self.fatal(env, header(pdu::FEI_TTAG), p.header);
        };
        if Sqe(&x.sqe).cid() != h.cid {
            return self.fatal(env, header(8), p.header);
        }
        // DATAO and DATAL shall be multiples of dwords (TCP 1.0 §3.6.2.8, Figure 26); every
        // transfer this target asks for is a whole number of dwords, so only a host that
        // splits it against that rule sends another: the lowest offending field is named.
        if h.offset % 4 != 0 {
            return self.fatal(env, header(pdu::FEI_DATAO), p.header);
        }
        // DATAL is the length of the PDU-Data (TCP 1.0 §3.6.2.8), which an H2CData PDU
        // exists to carry (§3.3.2.2: the PDUs transfer the R2T's data contiguously): one
        // that disagrees with the data, carries none, or is not a multiple of dwords has an
        // invalid DATAL.
        if h.len as usize != p.data.len() || h.len == 0 || h.len % 4 != 0 {
            return self.fatal(env, header(pdu::FEI_DATAL), p.header);
        }
        if h.len > MAXH2CDATA {
            return self.fatal(env, status(fes::DATA_LIMIT_EXCEEDED), p.header);
        }
        let end = u64::from(h.offset) + u64::from(h.len);
        if end > u64::from(x.total) {
            return self.fatal(env, status(fes::DATA_OUT_OF_RANGE), p.header);
        }
        // A PDU Sequence Error (TCP 1.0 §3.3.2.2): not where the previous PDU ended (a
        // non-contiguous H2CData PDU), or a LAST_PDU flag that disagrees with the R2T: it
        // is set in the PDU that satisfies the R2T and cleared in all others, so one set
        // while data is still owed, or cleared in the PDU that completes the transfer, is a
        // PDU out of the sequence the R2T asked for.
        let last = p.ch.flags & pdu::flag::DATA_LAST != 0;
        if h.offset != x.received || last != (end == u64::from(x.total)) {
            return self.fatal(env, status(fes::PDU_SEQUENCE), p.header);
        }
        if !p.data_ok && !x.discard {
            // Data damaged on the way: the rest of it is received and dropped (as for an
            // aborted transfer), and once it has all come the command fails with Transient
            // Transport Error (never while the host is still sending it).
            x.discard = true;
            x.fail = Some(Status::TRANSIENT_TRANSPORT);
            self.digest_error(env);
        }
        let Some(x) = self.xfers.get_mut(h.ttag as usize) else {
            return;
        };
        if h.offset == 0 && h.len == x.total {
            // The whole transfer in one PDU: straight from the receive buffer.
            let x = self.xfers.remove(h.ttag as usize);
            self.transfer_done(env, nv, &x, p.data);
            self.spare.push(x.buf);
            self.next_r2t();
            return;
        }
        if x.buf.len() < x.total as usize {
            x.buf.resize(x.total as usize, 0);
        }
        x.buf[h.offset as usize..end as usize].copy_from_slice(p.data);
        x.received = end as u32;
        if x.received == x.total {
            let x = self.xfers.remove(h.ttag as usize);
            self.transfer_done(env, nv, &x, &x.buf[..x.total as usize]);
            self.spare.push(x.buf);
            self.next_r2t();
        }
    }

    /// All of a transfer's data has come: execute its command, or answer the failure its
    /// damaged data earned; an aborted one was answered already.
    fn transfer_done(&mut self, env: &mut Env<'_>, nv: &NvmfShared, x: &Xfer, data: &[u8]) {
        match (x.discard, x.fail) {
            (false, _) => {
                // It runs on the newest namespace set (one atomic load), but names the set
                // of its arrival: a namespace added since is not the one it named.
                if self.subsys.as_ref().is_some_and(|s| s.stale()) {
                    self.follow_subsys(env.vols);
                }
                self.cmd_gen = x.arrived_gen;
                self.execute(env, nv, Sqe(&x.sqe), data)
            }
            (true, Some(status)) => self.fail_early(&Sqe(&x.sqe), status),
            (true, None) => {}
        }
    }

    /// Send `data` to the host for command `cid`, then its success response.
    pub(super) fn respond_data(&mut self, cid: u16, data: &[u8]) {
        if self.terminated || self.life.broken {
            return;
        }
        if data.is_empty() {
            // Nothing to transfer (a zero-length SGL): a data PDU would carry no data.
            return self.respond(cid, Status::SUCCESS, 0);
        }
        let success = self.sqflow_off;
        pdu::put_c2h_data(
            &mut self.tx.pending,
            cid,
            0,
            data,
            success,
            self.dg,
            self.c2h_align,
        );
        if !success {
            self.respond(cid, Status::SUCCESS, 0);
        }
    }
}
