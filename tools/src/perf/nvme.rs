//! NVMe/TCP for twinperf: the controller and its I/O queues are set up with the initiator in
//! [`crate::nvmf`] (ICReq, Connect, CC.EN, Identify, Set Features), then each I/O queue's socket
//! is driven by [`NvmeWire`], a nonblocking codec for Read/Write capsules and their
//! CapsuleResp, C2HData and R2T PDUs.
//!
//! Model: the command id is the request slot. Writes up to `IN_CAPSULE` bytes go in the
//! capsule; larger ones are announced with a transport SGL and their data follows the target's
//! R2T as H2CData PDUs of at most MAXH2CDATA bytes. No digests (twinperf measures the data
//! path; `twinblk-nvme` covers digests). Layouts: `docs/nvmf.md`.
//!
//! Invariants: every PDU's lengths are checked against its header and against the largest PDU
//! expected (`max_reply`) before use; R2T ranges must lie inside the write; C2HTermReq and
//! unknown PDU types end the run with an error.

use super::engine::{Link, Parsed, Req, Slots, Wire};
use super::{Connected, Opts};
use crate::nvmf::{self, Controller, t};
use anyhow::{Context, Result, bail, ensure};

/// Writes up to this size travel inside the command capsule (the size the target accepts,
/// as `nvmf::Queue` assumes).
pub const IN_CAPSULE: u32 = 8192;
/// Common header plus SQE.
const CMD_HLEN: usize = 72;
/// CapsuleResp, C2HData, R2T and H2CData headers.
const HLEN24: usize = 24;

/// The I/O-queue codec.
pub struct NvmeWire {
    nsid: u32,
    lba_shift: u32,
    maxh2c: u32,
    max_reply: usize,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl NvmeWire {
    /// A codec for `bs`-byte requests (512-byte blocks, no MAXH2CDATA limit), for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(bs: u32) -> NvmeWire {
        NvmeWire {
            nsid: 1,
            lba_shift: 9,
            maxh2c: bs,
            max_reply: HLEN24 + (bs as usize).max(4096),
        }
    }
}

impl Wire for NvmeWire {
    fn request(&mut self, r: &Req, payload: &[u8], out: &mut Vec<u8>) {
        let incap = r.write && r.len <= IN_CAPSULE;
        let plen = CMD_HLEN + if incap { payload.len() } else { 0 };
        let mut h = [0u8; CMD_HLEN];
        h[0] = t::CMD;
        h[2] = CMD_HLEN as u8;
        h[3] = if incap { CMD_HLEN as u8 } else { 0 };
        h[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        let sqe = &mut h[8..];
        sqe[0] = if r.write { 0x01 } else { 0x02 };
        sqe[2..4].copy_from_slice(&r.slot.to_le_bytes());
        sqe[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        sqe[32..36].copy_from_slice(&r.len.to_le_bytes());
        // SGL descriptor type: data block with offset (in capsule) or transport data block.
        sqe[39] = if incap { 0x01 } else { 0x5A };
        let slba = r.offset >> self.lba_shift;
        sqe[40..48].copy_from_slice(&slba.to_le_bytes());
        let nlb = (r.len >> self.lba_shift) - 1;
        sqe[48..52].copy_from_slice(&nlb.to_le_bytes());
        out.extend_from_slice(&h);
        if incap {
            out.extend_from_slice(payload);
        }
    }

    fn parse(&mut self, inb: &[u8], slots: &Slots, out: &mut Vec<u8>) -> Result<Option<Parsed>> {
        if inb.len() < 8 {
            return Ok(None);
        }
        let (kind, flags, hlen, pdo) = (inb[0], inb[1], inb[2] as usize, inb[3] as usize);
        let plen = le32(inb, 4) as usize;
        ensure!(
            hlen >= 8 && plen >= hlen,
            "bad PDU lengths (type {kind}, hlen {hlen}, plen {plen})"
        );
        ensure!(
            plen <= self.max_reply,
            "PDU type {kind} of {plen} bytes, more than the {} expected",
            self.max_reply
        );
        if inb.len() < plen {
            return Ok(None);
        }
        let p = &inb[..plen];
        let slot_of = |cid: u16, want_write: bool| -> Result<u16> {
            match slots.op(cid) {
                Some((w, _)) if w == want_write => Ok(cid),
                Some(_) => bail!(
                    "PDU type {kind} for command {cid}, which is a {}",
                    if want_write { "read" } else { "write" }
                ),
                None => bail!("PDU type {kind} for command {cid}, which is not outstanding"),
            }
        };
        match kind {
            t::RSP => {
                ensure!(
                    hlen == HLEN24 && plen == HLEN24,
                    "CapsuleResp of {plen} bytes"
                );
                let cid = le16(p, 8 + 12);
                let st = le16(p, 8 + 14);
                let slot = match slots.op(cid) {
                    Some(_) => cid,
                    None => bail!("CapsuleResp for command {cid}, which is not outstanding"),
                };
                Ok(Some(Parsed {
                    used: plen,
                    slot: Some(slot),
                    data: None,
                    done: Some(u32::from((st >> 1) & 0x7FF)),
                }))
            }
            t::C2H_DATA => {
                ensure!(hlen == HLEN24, "C2HData hlen {hlen}");
                let slot = slot_of(le16(p, 8), false)?;
                let datao = le32(p, 12);
                let datal = le32(p, 16) as usize;
                ensure!(
                    pdo >= hlen && pdo + datal == plen,
                    "C2HData lengths do not add up (pdo {pdo}, datal {datal}, plen {plen})"
                );
                // SUCCESS (bit 3): no CapsuleResp follows.
                let done = (flags & 0x08 != 0).then_some(0);
                Ok(Some(Parsed {
                    used: plen,
                    slot: Some(slot),
                    data: Some((datao, pdo..plen)),
                    done,
                }))
            }
            t::R2T => {
                ensure!(hlen == HLEN24 && plen == HLEN24, "R2T of {plen} bytes");
                let slot = slot_of(le16(p, 8), true)?;
                let ttag = le16(p, 10);
                let r2to = le32(p, 12) as usize;
                let r2tl = le32(p, 16) as usize;
                let data = slots.payload(slot);
                ensure!(
                    r2tl > 0 && r2to.checked_add(r2tl).is_some_and(|e| e <= data.len()),
                    "R2T for bytes {r2to}+{r2tl} of a {}-byte write",
                    data.len()
                );
                let max = self.maxh2c as usize;
                let mut at = r2to;
                while at < r2to + r2tl {
                    let n = (r2to + r2tl - at).min(max);
                    let last = at + n == r2to + r2tl;
                    let mut h = [0u8; HLEN24];
                    h[0] = t::H2C_DATA;
                    h[1] = if last { 0x04 } else { 0 };
                    h[2] = HLEN24 as u8;
                    h[3] = HLEN24 as u8;
                    h[4..8].copy_from_slice(&((HLEN24 + n) as u32).to_le_bytes());
                    h[8..10].copy_from_slice(&slot.to_le_bytes());
                    h[10..12].copy_from_slice(&ttag.to_le_bytes());
                    h[12..16].copy_from_slice(&(at as u32).to_le_bytes());
                    h[16..20].copy_from_slice(&(n as u32).to_le_bytes());
                    out.extend_from_slice(&h);
                    out.extend_from_slice(&data[at..at + n]);
                    at += n;
                }
                Ok(Some(Parsed {
                    used: plen,
                    slot: Some(slot),
                    data: None,
                    done: None,
                }))
            }
            t::C2H_TERM => {
                let fes = if plen >= 10 { le16(p, 8) } else { 0 };
                bail!("the target terminated the queue (C2HTermReq, FES {fes:#x})")
            }
            k => bail!("unexpected NVMe/TCP PDU type {k}"),
        }
    }

    fn max_reply(&self) -> usize {
        self.max_reply
    }
}

/// Connect the controller, open `o.conns` I/O queues, hand their sockets to the engine.
pub fn connect(o: &Opts) -> Result<Connected> {
    let nconns = u16::try_from(o.conns).context("too many NVMe queues")?;
    let qsize = u16::try_from(o.qd + 1).context("--qd too large for an NVMe queue")?;
    let mut ctrl = Controller::connect(o.target.addr, &o.target.name, &nvmf::Opts::default())
        .with_context(|| format!("NVMe/TCP connect to {}", o.target.addr))?;
    let granted = ctrl.set_num_queues(nconns)?;
    ensure!(
        granted >= nconns,
        "the target granted only {granted} I/O queues"
    );
    let ns = ctrl
        .ns_info(o.nsid)
        .with_context(|| format!("Identify Namespace {} of {}", o.nsid, o.target.name))?;
    let mut conns = Vec::new();
    for i in 0..nconns {
        let q = ctrl.io_queue(i + 1, qsize)?;
        let maxh2c = if q.maxh2cdata == 0 {
            o.bs
        } else {
            q.maxh2cdata
        };
        let sock = q.into_stream();
        sock.set_read_timeout(None)?;
        conns.push(Link {
            sock,
            wire: Box::new(NvmeWire {
                nsid: o.nsid,
                lba_shift: ns.block_size.trailing_zeros(),
                maxh2c,
                max_reply: HLEN24 + (o.bs as usize).max(4096),
            }),
        });
    }
    Ok(Connected {
        conns,
        size: ns.blocks * u64::from(ns.block_size),
        block: ns.block_size,
        keep: Some(Box::new(ctrl)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(bs: usize) -> NvmeWire {
        NvmeWire {
            nsid: 1,
            lba_shift: 9,
            maxh2c: 4096,
            max_reply: HLEN24 + bs.max(4096),
        }
    }

    fn pdu(kind: u8, flags: u8, pdo: u8, header: &[u8], data: &[u8]) -> Vec<u8> {
        let mut p = vec![kind, flags, HLEN24 as u8, pdo];
        p.extend_from_slice(&((HLEN24 + data.len()) as u32).to_le_bytes());
        let mut h = header.to_vec();
        h.resize(16, 0);
        p.extend_from_slice(&h);
        p.extend_from_slice(data);
        p
    }

    fn resp(cid: u16, status: u16) -> Vec<u8> {
        let mut cqe = [0u8; 16];
        cqe[12..14].copy_from_slice(&cid.to_le_bytes());
        cqe[14..16].copy_from_slice(&status.to_le_bytes());
        pdu(t::RSP, 0, 0, &cqe, &[])
    }

    #[test]
    fn requests_follow_the_capsule_layout() {
        let mut w = wire(4096);
        let mut out = Vec::new();
        let r = Req {
            slot: 7,
            write: true,
            offset: 8192,
            len: 4096,
        };
        w.request(&r, &[0xCC; 4096], &mut out);
        assert_eq!(&out[..4], &[t::CMD, 0, 72, 72]);
        assert_eq!(le32(&out, 4) as usize, out.len());
        assert_eq!(out.len(), 72 + 4096);
        let sqe = &out[8..72];
        assert_eq!((sqe[0], le16(sqe, 2), le32(sqe, 4)), (0x01, 7, 1));
        assert_eq!(
            (le32(sqe, 40), le32(sqe, 48)),
            (16, 7),
            "SLBA 16, NLB 8 (0's based)"
        );
        assert_eq!(sqe[39], 0x01);
        out.clear();
        let big = Req { len: 65536, ..r };
        w.request(&big, &[0; 65536], &mut out);
        assert_eq!(
            (out.len(), out[3], out[8 + 39]),
            (72, 0, 0x5A),
            "data after R2T"
        );
    }

    #[test]
    fn replies_parse_and_partial_pdus_wait() {
        let mut w = wire(4096);
        let slots = Slots::with_busy(4096, &[(3, false), (5, true)]);
        let mut out = Vec::new();
        let r = resp(5, 0);
        assert_eq!(w.parse(&r[..10], &slots, &mut out).unwrap(), None);
        let p = w.parse(&r, &slots, &mut out).unwrap().unwrap();
        assert_eq!((p.used, p.slot, p.done), (24, Some(5), Some(0)));
        // Status: SCT 0, SC 0x80 (LBA out of range) sits above the phase bit.
        let p = w
            .parse(&resp(5, 0x80 << 1), &slots, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(p.done, Some(0x80));
        let mut h = vec![0u8; 16];
        h[0..2].copy_from_slice(&3u16.to_le_bytes());
        h[4..8].copy_from_slice(&1024u32.to_le_bytes());
        h[8..12].copy_from_slice(&512u32.to_le_bytes());
        let d = pdu(t::C2H_DATA, 0x0C, 24, &h, &[9; 512]);
        let p = w.parse(&d, &slots, &mut out).unwrap().unwrap();
        assert_eq!(p.data, Some((1024, 24..536)));
        assert_eq!(p.done, Some(0), "SUCCESS flag completes the read");
        // R2T: H2CData PDUs of at most MAXH2CDATA bytes from the write's payload.
        let mut h = vec![0u8; 16];
        h[0..2].copy_from_slice(&5u16.to_le_bytes());
        h[2..4].copy_from_slice(&0x44u16.to_le_bytes());
        h[4..8].copy_from_slice(&0u32.to_le_bytes());
        h[8..12].copy_from_slice(&4096u32.to_le_bytes());
        let mut w2 = NvmeWire {
            maxh2c: 1024,
            ..wire(4096)
        };
        let p = w2
            .parse(&pdu(t::R2T, 0, 0, &h, &[]), &slots, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!((p.done, p.data), (None, None));
        assert_eq!(out.len(), 4 * (24 + 1024));
        assert_eq!(out[0], t::H2C_DATA);
        assert_eq!(out[3 * 1048 + 1] & 0x04, 0x04, "LAST on the final PDU only");
        assert_eq!(out[1] & 0x04, 0);
        assert_eq!(le32(&out, 1048 + 12), 1024, "second PDU's offset");
    }

    #[test]
    fn malformed_pdus_are_errors() {
        let mut w = wire(4096);
        let slots = Slots::with_busy(4096, &[(3, false), (5, true)]);
        let mut out = Vec::new();
        let mut e = |b: &[u8]| w.parse(b, &slots, &mut out).unwrap_err().to_string();
        assert!(e(&resp(4, 0)).contains("not outstanding"));
        let mut bad = resp(5, 0);
        bad[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(e(&bad).contains("more than"));
        let mut bad = resp(5, 0);
        bad[2] = 4;
        assert!(e(&bad).contains("bad PDU lengths"));
        // Read data for a write; data lengths that do not add up; R2T for a read or out of range.
        let mut h = vec![0u8; 16];
        h[0..2].copy_from_slice(&5u16.to_le_bytes());
        h[8..12].copy_from_slice(&16u32.to_le_bytes());
        assert!(e(&pdu(t::C2H_DATA, 0, 24, &h, &[0; 16])).contains("which is a write"));
        h[0..2].copy_from_slice(&3u16.to_le_bytes());
        assert!(e(&pdu(t::C2H_DATA, 0, 24, &h, &[0; 8])).contains("do not add up"));
        assert!(e(&pdu(t::R2T, 0, 0, &h, &[])).contains("which is a read"));
        h[0..2].copy_from_slice(&5u16.to_le_bytes());
        h[4..8].copy_from_slice(&4000u32.to_le_bytes());
        h[8..12].copy_from_slice(&200u32.to_le_bytes());
        assert!(e(&pdu(t::R2T, 0, 0, &h, &[])).contains("R2T for bytes 4000+200"));
        assert!(e(&pdu(t::C2H_TERM, 0, 0, &[1, 0], &[])).contains("C2HTermReq"));
        assert!(e(&pdu(0x42, 0, 0, &[], &[])).contains("unexpected"));
    }
}
