//! A userspace NVMe/TCP initiator with blocking std sockets: enough to connect (ICReq, Connect,
//! CC.EN / CSTS.RDY), discover, identify, open I/O queues and run I/O at a queue depth.
//!
//! Model: a [`Queue`] is one TCP connection (one queue pair). Commands are submitted with
//! [`Queue::submit`] (several may be outstanding) and their completions collected with
//! [`Queue::complete`], which also answers R2Ts with H2CData from the write data kept for that
//! command and gathers C2HData into the command's read buffer. A [`Controller`] owns the admin
//! queue and opens I/O queues against its cntlid.
//!
//! This is written from the specifications independently of the target's own codec
//! (`twinblk::frontend::nvmf::pdu`), so the tests that use it check the target's wire format
//! rather than share its mistakes. Layouts: `docs/nvmf.md`.

pub mod perf;

use anyhow::{Context, Result, bail, ensure};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The discovery subsystem's NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Host NQN used when none is given.
pub const DEFAULT_HOSTNQN: &str =
    "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";

/// PDU types.
pub mod t {
    /// ICReq.
    pub const IC_REQ: u8 = 0;
    /// ICResp.
    pub const IC_RESP: u8 = 1;
    /// H2CTermReq.
    pub const H2C_TERM: u8 = 2;
    /// C2HTermReq.
    pub const C2H_TERM: u8 = 3;
    /// CapsuleCmd.
    pub const CMD: u8 = 4;
    /// CapsuleResp.
    pub const RSP: u8 = 5;
    /// H2CData.
    pub const H2C_DATA: u8 = 6;
    /// C2HData.
    pub const C2H_DATA: u8 = 7;
    /// R2T.
    pub const R2T: u8 = 9;
}

/// Digest choices for a queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct Digests {
    /// Header digest.
    pub header: bool,
    /// Data digest.
    pub data: bool,
}

/// Who the host is.
#[derive(Clone, Debug)]
pub struct Host {
    /// Host NQN.
    pub nqn: String,
    /// Host identifier.
    pub id: [u8; 16],
}

impl Default for Host {
    fn default() -> Self {
        Self {
            nqn: DEFAULT_HOSTNQN.into(),
            id: *b"twinblk-host-id\0",
        }
    }
}

/// A received PDU.
#[derive(Debug, Clone)]
pub struct RawPdu {
    /// Type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Header (hlen bytes).
    pub header: Vec<u8>,
    /// Data.
    pub data: Vec<u8>,
}

/// A completion.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// Command id.
    pub cid: u16,
    /// SCT << 8 | SC.
    pub status: u16,
    /// DNR bit.
    pub dnr: bool,
    /// Dwords 0-1.
    pub result: u64,
    /// SQ head.
    pub sqhd: u16,
    /// Data received for the command (reads, identify, logs).
    pub data: Vec<u8>,
}

struct Pending {
    write: Vec<u8>,
    read: Vec<u8>,
}

/// One queue pair over one TCP connection.
pub struct Queue {
    s: TcpStream,
    dg: Digests,
    /// Queue id (after Connect).
    pub qid: u16,
    /// MAXH2CDATA the target announced.
    pub maxh2cdata: u32,
    next_cid: u16,
    pending: HashMap<u16, Pending>,
    incapsule: usize,
}

fn crc(b: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(b)
}

/// An SQE under construction.
#[derive(Clone, Copy)]
pub struct Sqe(pub [u8; 64]);

impl Sqe {
    /// An SQE with this opcode.
    pub fn new(opcode: u8) -> Self {
        let mut s = [0u8; 64];
        s[0] = opcode;
        Sqe(s)
    }
    /// A fabrics command of this type.
    pub fn fabrics(fctype: u8) -> Self {
        let mut s = Self::new(0x7F);
        s.0[4] = fctype;
        s
    }
    /// Set the namespace id.
    pub fn nsid(mut self, v: u32) -> Self {
        self.0[4..8].copy_from_slice(&v.to_le_bytes());
        self
    }
    /// Set command dword `n` (10..=15).
    pub fn cdw(mut self, n: usize, v: u32) -> Self {
        let at = 40 + (n - 10) * 4;
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    /// Set bytes at an offset.
    pub fn bytes(mut self, at: usize, v: &[u8]) -> Self {
        self.0[at..at + v.len()].copy_from_slice(v);
        self
    }
    /// Read/Write style: SLBA and NLB (1-based here).
    pub fn lba(self, slba: u64, nlb: u32) -> Self {
        self.cdw(10, slba as u32)
            .cdw(11, (slba >> 32) as u32)
            .cdw(12, nlb - 1)
    }
    /// Set the FUSE bits (1: first of a fused pair, 2: second).
    pub fn fuse(mut self, f: u8) -> Self {
        self.0[1] = (self.0[1] & !3) | (f & 3);
        self
    }
}

/// Reservation Register actions (RREGA).
pub mod rrega {
    /// Register a key.
    pub const REGISTER: u8 = 0;
    /// Unregister.
    pub const UNREGISTER: u8 = 1;
    /// Replace the key.
    pub const REPLACE: u8 = 2;
}

/// Reservation Acquire actions (RACQA).
pub mod racqa {
    /// Acquire.
    pub const ACQUIRE: u8 = 0;
    /// Preempt.
    pub const PREEMPT: u8 = 1;
    /// Preempt and abort.
    pub const PREEMPT_ABORT: u8 = 2;
}

/// Status codes the tests look for (SCT << 8 | SC).
pub mod sc {
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: u16 = 0x007;
    /// Command Aborted due to Failed Fused Command.
    pub const FUSED_FAILED: u16 = 0x009;
    /// Command Aborted due to Missing Fused Command.
    pub const FUSED_MISSING: u16 = 0x00A;
    /// Host Identifier Inconsistent Format.
    pub const HOST_ID_INCONSISTENT: u16 = 0x018;
    /// Reservation Conflict.
    pub const RESERVATION_CONFLICT: u16 = 0x083;
    /// Compare Failure.
    pub const COMPARE_FAILURE: u16 = 0x285;
}

/// A decoded Reservation Report (extended data structure).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResvReport {
    /// Persistent reservation generation.
    pub generation: u32,
    /// Reservation type (0: none).
    pub rtype: u8,
    /// Persist through power loss state.
    pub ptpls: bool,
    /// Registrants: (host id, key, holds the reservation).
    pub registrants: Vec<([u8; 16], u64, bool)>,
}

impl ResvReport {
    /// Decode the extended Reservation Status data structure.
    pub fn parse(d: &[u8]) -> Result<Self> {
        ensure!(d.len() >= 64, "report shorter than its header");
        let n = u16::from_le_bytes([d[5], d[6]]) as usize;
        let mut r = ResvReport {
            generation: u32::from_le_bytes(d[0..4].try_into()?),
            rtype: d[4],
            ptpls: d[9] & 1 != 0,
            registrants: Vec::with_capacity(n),
        };
        for i in 0..n {
            let Some(e) = d.get(64 * (i + 1)..64 * (i + 2)) else {
                break;
            };
            r.registrants.push((
                e[16..32].try_into()?,
                u64::from_le_bytes(e[8..16].try_into()?),
                e[2] & 1 != 0,
            ));
        }
        Ok(r)
    }
}

impl Queue {
    /// Open a TCP connection and exchange ICReq/ICResp.
    pub fn open(addr: SocketAddr, dg: Digests) -> Result<Queue> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Queue {
            s,
            dg: Digests::default(),
            qid: 0,
            maxh2cdata: 0,
            next_cid: 0,
            pending: HashMap::new(),
            incapsule: 8192,
        };
        let mut ic = vec![0u8; 128];
        ic[0] = t::IC_REQ;
        ic[2] = 128;
        ic[4..8].copy_from_slice(&128u32.to_le_bytes());
        ic[11] = u8::from(dg.header) | (u8::from(dg.data) << 1);
        ic[12..16].copy_from_slice(&3u32.to_le_bytes());
        q.send_raw(&ic)?;
        let r = q.read_pdu()?;
        ensure!(
            r.kind == t::IC_RESP,
            "expected ICResp, got PDU type {}",
            r.kind
        );
        ensure!(r.header.len() == 128, "ICResp hlen {}", r.header.len());
        q.maxh2cdata = u32::from_le_bytes(r.header[12..16].try_into()?);
        ensure!(r.header[11] == ic[11], "target changed the digests");
        q.dg = dg;
        Ok(q)
    }

    /// A queue over a connected stream that has not exchanged ICReq/ICResp (for tests of what
    /// a target does before that).
    pub fn from_stream(s: TcpStream) -> Queue {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        Queue {
            s,
            dg: Digests::default(),
            qid: 0,
            maxh2cdata: 0,
            next_cid: 0,
            pending: HashMap::new(),
            incapsule: 8192,
        }
    }

    /// Write raw bytes to the socket.
    pub fn send_raw(&mut self, b: &[u8]) -> Result<()> {
        self.s.write_all(b).context("sending")?;
        Ok(())
    }

    /// Give up the queue's socket (a load generator drives it with its own codec from here;
    /// commands still pending here are forgotten).
    pub fn into_stream(self) -> TcpStream {
        self.s
    }

    /// The socket (for tests that misbehave on purpose).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.s
    }

    /// Digests in force.
    pub fn digests(&self) -> Digests {
        self.dg
    }

    /// Read one whole PDU, checking its digests.
    pub fn read_pdu(&mut self) -> Result<RawPdu> {
        let mut ch = [0u8; 8];
        self.s.read_exact(&mut ch).context("reading a PDU header")?;
        let (kind, flags, hlen, pdo) = (ch[0], ch[1], ch[2] as usize, ch[3] as usize);
        let plen = u32::from_le_bytes(ch[4..8].try_into()?) as usize;
        ensure!(
            hlen >= 8 && plen >= hlen && plen <= 16 << 20,
            "bad PDU lengths {hlen}/{plen}"
        );
        let mut rest = vec![0u8; plen - 8];
        self.s.read_exact(&mut rest).context("reading a PDU")?;
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        let header = all[..hlen].to_vec();
        let hd = if flags & 1 != 0 { 4 } else { 0 };
        if hd != 0 {
            let want = u32::from_le_bytes(all[hlen..hlen + 4].try_into()?);
            ensure!(crc(&header) == want, "bad header digest from the target");
        }
        let data = if pdo != 0 && pdo < plen {
            let dd = if flags & 2 != 0 { 4 } else { 0 };
            ensure!(pdo + dd <= plen, "bad pdo");
            let d = all[pdo..plen - dd].to_vec();
            if dd != 0 {
                let want = u32::from_le_bytes(all[plen - 4..plen].try_into()?);
                ensure!(crc(&d) == want, "bad data digest from the target");
            }
            d
        } else if kind == t::C2H_TERM {
            all[hlen..].to_vec()
        } else {
            Vec::new()
        };
        Ok(RawPdu {
            kind,
            flags,
            header,
            data,
        })
    }

    fn alloc_cid(&mut self) -> u16 {
        loop {
            let c = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1);
            if !self.pending.contains_key(&c) {
                return c;
            }
        }
    }

    /// Encode a command capsule (with in-capsule data when given) without sending it.
    pub fn capsule(&self, sqe: &[u8; 64], incapsule: &[u8]) -> Vec<u8> {
        let hd = if self.dg.header { 4 } else { 0 };
        let dd = if self.dg.data && !incapsule.is_empty() {
            4
        } else {
            0
        };
        let pdo = if incapsule.is_empty() { 0 } else { 72 + hd };
        let plen = 72 + hd + incapsule.len() + dd;
        let mut flags = 0u8;
        if self.dg.header {
            flags |= 1;
        }
        if dd != 0 {
            flags |= 2;
        }
        let mut b = Vec::with_capacity(plen);
        b.extend_from_slice(&[t::CMD, flags, 72, pdo as u8]);
        b.extend_from_slice(&(plen as u32).to_le_bytes());
        b.extend_from_slice(sqe);
        if hd != 0 {
            let c = crc(&b);
            b.extend_from_slice(&c.to_le_bytes());
        }
        b.extend_from_slice(incapsule);
        if dd != 0 {
            b.extend_from_slice(&crc(incapsule).to_le_bytes());
        }
        b
    }

    /// Submit a command; `write` is host-to-controller data (sent in the capsule when small
    /// enough, else after the target's R2T); `read_len` bytes are expected back. Returns the cid.
    pub fn submit(&mut self, sqe: Sqe, write: &[u8], read_len: u32) -> Result<u16> {
        let cid = self.alloc_cid();
        let mut s = sqe.0;
        s[2..4].copy_from_slice(&cid.to_le_bytes());
        let (len, incap) = if !write.is_empty() {
            (write.len() as u32, write.len() <= self.incapsule)
        } else {
            (read_len, false)
        };
        if len > 0 {
            s[24..32].fill(0);
            s[32..36].copy_from_slice(&len.to_le_bytes());
            s[36..39].fill(0);
            s[39] = if incap { 0x01 } else { 0x5A };
        }
        let b = self.capsule(&s, if incap { write } else { &[] });
        self.pending.insert(
            cid,
            Pending {
                write: if incap { Vec::new() } else { write.to_vec() },
                read: Vec::new(),
            },
        );
        self.send_raw(&b)?;
        Ok(cid)
    }

    fn h2c_data(
        &mut self,
        cid: u16,
        ttag: u16,
        offset: u32,
        data: &[u8],
        last: bool,
    ) -> Result<()> {
        let hd = if self.dg.header { 4 } else { 0 };
        let dd = if self.dg.data { 4 } else { 0 };
        let pdo = 24 + hd;
        let plen = pdo + data.len() + dd;
        let mut flags = if last { 4 } else { 0 };
        if self.dg.header {
            flags |= 1;
        }
        if self.dg.data {
            flags |= 2;
        }
        let mut b = Vec::with_capacity(plen);
        b.extend_from_slice(&[t::H2C_DATA, flags, 24, pdo as u8]);
        b.extend_from_slice(&(plen as u32).to_le_bytes());
        b.extend_from_slice(&cid.to_le_bytes());
        b.extend_from_slice(&ttag.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        if hd != 0 {
            let c = crc(&b);
            b.extend_from_slice(&c.to_le_bytes());
        }
        b.extend_from_slice(data);
        if dd != 0 {
            b.extend_from_slice(&crc(data).to_le_bytes());
        }
        self.send_raw(&b)
    }

    /// Wait for the next completion, answering R2Ts and gathering read data on the way.
    pub fn complete(&mut self) -> Result<Completion> {
        loop {
            let p = self.read_pdu()?;
            match p.kind {
                t::R2T => {
                    let cid = u16::from_le_bytes([p.header[8], p.header[9]]);
                    let ttag = u16::from_le_bytes([p.header[10], p.header[11]]);
                    let off = u32::from_le_bytes(p.header[12..16].try_into()?);
                    let len = u32::from_le_bytes(p.header[16..20].try_into()?);
                    let data = match self.pending.get_mut(&cid) {
                        Some(pd) => std::mem::take(&mut pd.write),
                        None => bail!("R2T for unknown cid {cid}"),
                    };
                    let end = off as usize + len as usize;
                    ensure!(end <= data.len(), "R2T beyond the data");
                    let max = self.maxh2cdata.max(4096) as usize;
                    let mut at = off as usize;
                    while at < end {
                        let n = (end - at).min(max);
                        self.h2c_data(cid, ttag, at as u32, &data[at..at + n], at + n == end)?;
                        at += n;
                    }
                    if let Some(pd) = self.pending.get_mut(&cid) {
                        pd.write = data;
                    }
                }
                t::C2H_DATA => {
                    let cid = u16::from_le_bytes([p.header[8], p.header[9]]);
                    let off = u32::from_le_bytes(p.header[12..16].try_into()?) as usize;
                    let len = u32::from_le_bytes(p.header[16..20].try_into()?) as usize;
                    ensure!(len == p.data.len(), "C2HData length field lies");
                    let Some(pd) = self.pending.get_mut(&cid) else {
                        bail!("C2HData for unknown cid {cid}");
                    };
                    if pd.read.len() < off + len {
                        pd.read.resize(off + len, 0);
                    }
                    pd.read[off..off + len].copy_from_slice(&p.data);
                    if p.flags & 8 != 0 {
                        let pd = self.pending.remove(&cid).unwrap_or(Pending {
                            write: Vec::new(),
                            read: Vec::new(),
                        });
                        return Ok(Completion {
                            cid,
                            data: pd.read,
                            ..Default::default()
                        });
                    }
                }
                t::RSP => {
                    let c = &p.header[8..24];
                    let cid = u16::from_le_bytes([c[12], c[13]]);
                    let st = u16::from_le_bytes([c[14], c[15]]);
                    let pd = self.pending.remove(&cid);
                    return Ok(Completion {
                        cid,
                        status: (st >> 1) & 0x7FF,
                        dnr: st & 0x8000 != 0,
                        result: u64::from_le_bytes(c[0..8].try_into()?),
                        sqhd: u16::from_le_bytes([c[8], c[9]]),
                        data: pd.map(|p| p.read).unwrap_or_default(),
                    });
                }
                t::C2H_TERM => {
                    let fes = u16::from_le_bytes([p.header[8], p.header[9]]);
                    let fei = u32::from_le_bytes(p.header[10..14].try_into()?);
                    bail!(TermReq { fes, fei });
                }
                k => bail!("unexpected PDU type {k}"),
            }
        }
    }

    /// Submit one command and wait for it (no other command may be outstanding).
    pub fn cmd(&mut self, sqe: Sqe, write: &[u8], read_len: u32) -> Result<Completion> {
        let cid = self.submit(sqe, write, read_len)?;
        let c = self.complete()?;
        ensure!(
            c.cid == cid,
            "completion for cid {} while waiting for {cid}",
            c.cid
        );
        Ok(c)
    }

    /// As [`Queue::cmd`], failing on a non-zero status.
    pub fn cmd_ok(&mut self, sqe: Sqe, write: &[u8], read_len: u32) -> Result<Completion> {
        let c = self.cmd(sqe, write, read_len)?;
        ensure!(c.status == 0, "NVMe status {:#05x}", c.status);
        Ok(c)
    }

    /// Fabrics Connect on this queue.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        subnqn: &str,
        host: &Host,
        cntlid: u16,
        kato_ms: u32,
        disable_sqflow: bool,
    ) -> Result<Completion> {
        let mut d = vec![0u8; 1024];
        d[..16].copy_from_slice(&host.id);
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        let n = subnqn.len().min(255);
        d[256..256 + n].copy_from_slice(&subnqn.as_bytes()[..n]);
        let n = host.nqn.len().min(255);
        d[512..512 + n].copy_from_slice(&host.nqn.as_bytes()[..n]);
        let mut sqe = Sqe::fabrics(0x01)
            .bytes(42, &qid.to_le_bytes())
            .bytes(44, &(sqsize - 1).to_le_bytes())
            .bytes(48, &kato_ms.to_le_bytes());
        if disable_sqflow {
            sqe.0[46] |= 1 << 2;
        }
        let c = self.cmd(sqe, &d, 0)?;
        if c.status == 0 {
            self.qid = qid;
        }
        Ok(c)
    }

    /// Read `nlb` blocks of `bs` bytes at `slba`.
    pub fn read(&mut self, nsid: u32, slba: u64, nlb: u32, bs: u32) -> Result<Vec<u8>> {
        let c = self.cmd_ok(Sqe::new(0x02).nsid(nsid).lba(slba, nlb), &[], nlb * bs)?;
        ensure!(c.data.len() == (nlb * bs) as usize, "short read");
        Ok(c.data)
    }

    /// Write `data` (whole blocks of `bs`) at `slba`.
    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8], bs: u32, fua: bool) -> Result<()> {
        let nlb = (data.len() / bs as usize) as u32;
        let mut sqe = Sqe::new(0x01).nsid(nsid).lba(slba, nlb);
        if fua {
            sqe = sqe.cdw(12, (nlb - 1) | (1 << 30));
        }
        self.cmd_ok(sqe, data, 0)?;
        Ok(())
    }

    /// Submit a fused Compare (`expect`) + Write (`new`) pair on `blocks` blocks at `slba`,
    /// back to back; returns the two cids (collect both completions with `complete`).
    pub fn submit_compare_and_write(
        &mut self,
        nsid: u32,
        slba: u64,
        expect: &[u8],
        new: &[u8],
        bs: u32,
    ) -> Result<(u16, u16)> {
        ensure!(
            expect.len() == new.len(),
            "compare and write data differ in length"
        );
        let nlb = (expect.len() / bs as usize) as u32;
        let a = self.submit(Sqe::new(0x05).nsid(nsid).lba(slba, nlb).fuse(1), expect, 0)?;
        let b = self.submit(Sqe::new(0x01).nsid(nsid).lba(slba, nlb).fuse(2), new, 0)?;
        Ok((a, b))
    }

    /// Fused compare-and-write; returns the (compare, write) statuses.
    pub fn compare_and_write(
        &mut self,
        nsid: u32,
        slba: u64,
        expect: &[u8],
        new: &[u8],
        bs: u32,
    ) -> Result<(u16, u16)> {
        let (a, b) = self.submit_compare_and_write(nsid, slba, expect, new, bs)?;
        let (mut sa, mut sb) = (None, None);
        for _ in 0..2 {
            let c = self.complete()?;
            if c.cid == a {
                sa = Some(c.status);
            } else if c.cid == b {
                sb = Some(c.status);
            } else {
                bail!("completion for unexpected cid {}", c.cid);
            }
        }
        Ok((
            sa.context("no compare completion")?,
            sb.context("no write completion")?,
        ))
    }

    /// Reservation Register; returns the status.
    pub fn resv_register(
        &mut self,
        nsid: u32,
        action: u8,
        iekey: bool,
        crkey: u64,
        nrkey: u64,
    ) -> Result<u16> {
        let mut d = crkey.to_le_bytes().to_vec();
        d.extend_from_slice(&nrkey.to_le_bytes());
        // CPTPL = 11b: persist through power loss.
        let cdw10 = u32::from(action & 7) | (u32::from(iekey) << 3) | (3 << 30);
        Ok(self
            .cmd(Sqe::new(0x0D).nsid(nsid).cdw(10, cdw10), &d, 0)?
            .status)
    }

    /// Reservation Acquire; returns the status.
    pub fn resv_acquire(
        &mut self,
        nsid: u32,
        action: u8,
        rtype: u8,
        crkey: u64,
        prkey: u64,
    ) -> Result<u16> {
        let mut d = crkey.to_le_bytes().to_vec();
        d.extend_from_slice(&prkey.to_le_bytes());
        let cdw10 = u32::from(action & 7) | (u32::from(rtype) << 8);
        Ok(self
            .cmd(Sqe::new(0x11).nsid(nsid).cdw(10, cdw10), &d, 0)?
            .status)
    }

    /// Reservation Release (`action` 0) or Clear (1); returns the status.
    pub fn resv_release(&mut self, nsid: u32, action: u8, rtype: u8, crkey: u64) -> Result<u16> {
        let cdw10 = u32::from(action & 7) | (u32::from(rtype) << 8);
        let d = crkey.to_le_bytes();
        Ok(self
            .cmd(Sqe::new(0x15).nsid(nsid).cdw(10, cdw10), &d, 0)?
            .status)
    }

    /// Reservation Report with the extended data structure (`len` bytes, a multiple of 4).
    pub fn resv_report(&mut self, nsid: u32, eds: bool, len: u32) -> Result<(u16, Vec<u8>)> {
        let sqe = Sqe::new(0x0E)
            .nsid(nsid)
            .cdw(10, len / 4 - 1)
            .cdw(11, u32::from(eds));
        let c = self.cmd(sqe, &[], len)?;
        Ok((c.status, c.data))
    }

    /// Send host-to-controller data in the capsule only up to `n` bytes (beyond it, after the
    /// target's R2T); the target's in-capsule limit still bounds it.
    pub fn set_incapsule(&mut self, n: usize) {
        self.incapsule = n;
    }

    /// Forget command `cid` (its completion was read with `read_pdu`).
    pub fn forget(&mut self, cid: u16) {
        self.pending.remove(&cid);
    }

    /// Commands outstanding.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

/// The target terminated the connection with a C2HTermReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("target sent C2HTermReq (FES {fes:#x}, FEI {fei})")]
pub struct TermReq {
    /// Fatal error status.
    pub fes: u16,
    /// Fatal error information.
    pub fei: u32,
}

/// Options for connecting a controller.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Host identity.
    pub host: Host,
    /// Keep-alive timeout in ms (0: none).
    pub kato_ms: u32,
    /// Digests on every queue.
    pub digests: Digests,
    /// Admin queue size.
    pub admin_qsize: u16,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            host: Host::default(),
            kato_ms: 0,
            digests: Digests::default(),
            admin_qsize: 32,
        }
    }
}

/// Facts from Identify Namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsInfo {
    /// Size in blocks.
    pub blocks: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// ANA group id.
    pub anagrpid: u32,
}

/// A connected controller (its admin queue).
pub struct Controller {
    /// The admin queue.
    pub admin: Queue,
    /// Controller id.
    pub cntlid: u16,
    addr: SocketAddr,
    subnqn: String,
    opts: Opts,
}

impl Controller {
    /// Connect the admin queue, enable the controller and wait until it is ready.
    pub fn connect(addr: SocketAddr, subnqn: &str, opts: &Opts) -> Result<Controller> {
        let mut admin = Queue::open(addr, opts.digests)?;
        let c = admin.connect(
            0,
            opts.admin_qsize,
            subnqn,
            &opts.host,
            0xFFFF,
            opts.kato_ms,
            false,
        )?;
        ensure!(c.status == 0, "Connect refused: status {:#05x}", c.status);
        let cntlid = c.result as u16;
        let mut ctrl = Controller {
            admin,
            cntlid,
            addr,
            subnqn: subnqn.into(),
            opts: opts.clone(),
        };
        let cap = ctrl.prop_get(0x00, true)?;
        ensure!(cap & 0xFFFF > 0, "CAP.MQES is 0");
        ctrl.prop_set(0x14, 1 | (6 << 16) | (4 << 20))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while ctrl.prop_get(0x1C, false)? & 1 == 0 {
            ensure!(Instant::now() < deadline, "CSTS.RDY never came up");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(ctrl)
    }

    /// Property Get.
    pub fn prop_get(&mut self, offset: u32, eight: bool) -> Result<u64> {
        let sqe = Sqe::fabrics(0x04)
            .bytes(40, &[u8::from(eight)])
            .bytes(44, &offset.to_le_bytes());
        Ok(self.admin.cmd_ok(sqe, &[], 0)?.result)
    }

    /// Property Set (4 bytes).
    pub fn prop_set(&mut self, offset: u32, value: u32) -> Result<()> {
        let sqe = Sqe::fabrics(0x00)
            .bytes(44, &offset.to_le_bytes())
            .bytes(48, &u64::from(value).to_le_bytes());
        self.admin.cmd_ok(sqe, &[], 0)?;
        Ok(())
    }

    /// Identify with `cns` for `nsid`.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>> {
        let sqe = Sqe::new(0x06).nsid(nsid).cdw(10, u32::from(cns));
        Ok(self.admin.cmd_ok(sqe, &[], 4096)?.data)
    }

    /// Identify Namespace, decoded.
    pub fn ns_info(&mut self, nsid: u32) -> Result<NsInfo> {
        let d = self.identify(0x00, nsid)?;
        ensure!(
            d.len() == 4096,
            "identify namespace returned {} bytes",
            d.len()
        );
        let flbas = (d[26] & 0xF) as usize;
        let lbads = d[128 + flbas * 4 + 2];
        ensure!((9..=16).contains(&lbads), "bad LBADS {lbads}");
        Ok(NsInfo {
            blocks: u64::from_le_bytes(d[0..8].try_into()?),
            block_size: 1 << lbads,
            anagrpid: u32::from_le_bytes(d[92..96].try_into()?),
        })
    }

    /// Active namespace ids.
    pub fn active_ns(&mut self) -> Result<Vec<u32>> {
        let d = self.identify(0x02, 0)?;
        Ok(d.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&id| id != 0)
            .collect())
    }

    /// Get Log Page: `len` bytes (a multiple of 4) of log `lid` from `offset`.
    pub fn log(&mut self, lid: u8, lsp: u8, offset: u64, len: u32) -> Result<Vec<u8>> {
        let numd = len / 4 - 1;
        let sqe = Sqe::new(0x02)
            .nsid(0xFFFF_FFFF)
            .cdw(
                10,
                u32::from(lid) | (u32::from(lsp & 0x7F) << 8) | ((numd & 0xFFFF) << 16),
            )
            .cdw(11, numd >> 16)
            .cdw(12, offset as u32)
            .cdw(13, (offset >> 32) as u32);
        Ok(self.admin.cmd_ok(sqe, &[], len)?.data)
    }

    /// Set Features, Number of Queues; returns the number granted.
    pub fn set_num_queues(&mut self, n: u16) -> Result<u16> {
        let v = u32::from(n - 1) | (u32::from(n - 1) << 16);
        let c = self
            .admin
            .cmd_ok(Sqe::new(0x09).cdw(10, 0x07).cdw(11, v), &[], 0)?;
        Ok((c.result & 0xFFFF) as u16 + 1)
    }

    /// Abort command `cid` of queue `sqid`; the completion's result bit 0 is 1 when the
    /// command was not aborted.
    pub fn abort(&mut self, sqid: u16, cid: u16) -> Result<Completion> {
        let sqe = Sqe::new(0x08).cdw(10, u32::from(sqid) | (u32::from(cid) << 16));
        self.admin.cmd(sqe, &[], 0)
    }

    /// Keep Alive.
    pub fn keep_alive(&mut self) -> Result<()> {
        self.admin.cmd_ok(Sqe::new(0x18), &[], 0)?;
        Ok(())
    }

    /// Open I/O queue `qid` of `qsize` entries on a new connection.
    pub fn io_queue(&self, qid: u16, qsize: u16) -> Result<Queue> {
        let mut q = Queue::open(self.addr, self.opts.digests)?;
        let c = q.connect(
            qid,
            qsize,
            &self.subnqn,
            &self.opts.host,
            self.cntlid,
            0,
            true,
        )?;
        ensure!(
            c.status == 0,
            "I/O queue {qid} Connect refused: status {:#05x}",
            c.status
        );
        Ok(q)
    }
}

/// One discovery log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscEntry {
    /// Transport type (3: TCP).
    pub trtype: u8,
    /// Port id.
    pub portid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Address.
    pub traddr: String,
    /// Port.
    pub trsvcid: String,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

/// Connect to the discovery subsystem at `addr` and read the whole discovery log.
pub fn discover(addr: SocketAddr, opts: &Opts) -> Result<Vec<DiscEntry>> {
    let mut c = Controller::connect(addr, DISCOVERY_NQN, opts)?;
    let id = c.identify(0x01, 0)?;
    ensure!(
        id[111] == 2,
        "not a discovery controller (CNTRLTYPE {})",
        id[111]
    );
    let head = c.log(0x70, 0, 0, 1024)?;
    let numrec = u64::from_le_bytes(head[8..16].try_into()?);
    ensure!(numrec <= 1024, "implausible numrec {numrec}");
    let mut out = Vec::new();
    for i in 0..numrec {
        let e = c.log(0x70, 0, 1024 * (i + 1), 1024)?;
        out.push(DiscEntry {
            trtype: e[0],
            portid: u16::from_le_bytes([e[4], e[5]]),
            trsvcid: cstr(&e[32..64]),
            subnqn: cstr(&e[256..512]),
            traddr: cstr(&e[512..768]),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_builder_places_fields_per_spec() {
        let s = Sqe::new(0x01).nsid(7).lba(0x1_0000_0002, 16).cdw(15, 9);
        assert_eq!(s.0[0], 0x01);
        assert_eq!(u32::from_le_bytes(s.0[4..8].try_into().unwrap()), 7);
        assert_eq!(
            u64::from_le_bytes(s.0[40..48].try_into().unwrap()),
            0x1_0000_0002
        );
        assert_eq!(
            u32::from_le_bytes(s.0[48..52].try_into().unwrap()),
            15,
            "NLB 0's based"
        );
        assert_eq!(u32::from_le_bytes(s.0[60..64].try_into().unwrap()), 9);
        let f = Sqe::fabrics(0x04);
        assert_eq!((f.0[0], f.0[4]), (0x7F, 0x04));
    }

    #[test]
    fn capsule_layout_and_digests() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let mut q = Queue::from_stream(s);
        q.dg = Digests {
            header: true,
            data: true,
        };
        let c = q.capsule(&[0xAB; 64], b"data");
        assert_eq!(&c[..4], &[t::CMD, 0x03, 72, 76]);
        assert_eq!(
            u32::from_le_bytes(c[4..8].try_into().unwrap()) as usize,
            c.len()
        );
        assert_eq!(c.len(), 72 + 4 + 4 + 4);
        assert_eq!(crc(&c[..72]).to_le_bytes(), c[72..76]);
        assert_eq!(&c[76..80], b"data");
        assert_eq!(crc(b"data").to_le_bytes(), c[80..84]);
        let plain = Queue::from_stream(TcpStream::connect(tcp.local_addr().unwrap()).unwrap());
        let c = plain.capsule(&[0; 64], &[]);
        assert_eq!((c.len(), c[1], c[3]), (72, 0, 0));
    }

    #[test]
    fn perf_pattern_depends_on_lba_and_sequence() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        perf::fill(&mut a, 10, 1);
        perf::fill(&mut b, 10, 1);
        assert_eq!(a, b);
        perf::fill(&mut b, 10, 2);
        assert_ne!(a, b);
        perf::fill(&mut b, 11, 1);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
    }
}
