//! iSCSI for twinperf (RFC 7143): a minimal initiator. Login is blocking, once per connection
//! (one session per connection, each with its own ISID); the full feature phase is driven by
//! [`IscsiWire`] in the event loop.
//!
//! Model:
//! - Login: without CHAP, straight to the operational stage; with `--chap-user`/`--chap-secret`,
//!   a security stage with one-way CHAP (MD5, CHAP_A=5) first. Offered: no digests,
//!   ImmediateData=Yes, InitialR2T=No, MaxRecvDataSegmentLength 256 KiB, MaxBurstLength 1 MiB,
//!   FirstBurstLength 256 KiB, ErrorRecoveryLevel 0. The target's answers are used as
//!   negotiated (RFC 7143 §13: the results of "min"/"and"/"or" keys, which a conforming target
//!   sends back).
//! - I/O: SCSI Command with READ(10)/WRITE(10) (READ(16)/WRITE(16) past 2^32 blocks or 65535
//!   blocks per command), ITT = the request slot, the F bit always set: a write's first bytes
//!   travel as immediate data when negotiated (up to FirstBurstLength and the target's
//!   MaxRecvDataSegmentLength), no unsolicited Data-Out PDU, the rest after R2T as Data-Out
//!   PDUs. Reads complete on the Data-In with the S bit or on the SCSI Response. NOP-In pings
//!   are answered.
//! - CmdSN: commands are numbered from the login's CmdSN and sent only while CmdSN ≤ MaxCmdSN
//!   (serial arithmetic), the newest MaxCmdSN any target PDU announced (RFC 7143 §4.2.2.1: a
//!   MaxCmdSN below ExpCmdSN - 1 or older than the one known is ignored), so no command is ever
//!   sent outside the window; a `qd` larger than the window waits for it to open (some targets,
//!   tgt among them, open a window of 1 at login and widen it with their responses).
//!
//! Invariants: every PDU's lengths are checked against the largest PDU expected before use;
//! Reject, a logout request from the target, an ITT that is not outstanding, Data-In for a
//! write, R2T for a read or outside its write, and unknown opcodes end the run with an error.

use super::engine::{Link, Parsed, Req, Slots, Wire};
use super::{Connected, Opts};
use anyhow::{Context, Result, bail, ensure};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Initiator name used when none is given.
pub const DEFAULT_INITIATOR: &str = "iqn.2026-11.io.twinblk:twinperf";
/// Bytes of a Basic Header Segment.
pub const BHS: usize = 48;
/// MaxRecvDataSegmentLength twinperf declares (bounds Data-In segments).
pub const MY_MRDSL: u32 = 256 << 10;
/// Largest login response data accepted.
const MAX_LOGIN_DATA: usize = 64 << 10;

/// Opcodes (initiator).
mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Immediate-delivery bit of byte 0.
const IMMEDIATE: u8 = 0x40;

fn be24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// The 8-byte LUN field (peripheral addressing below 256, flat addressing up to 16383).
pub fn lun_field(lun: u64) -> Result<[u8; 8]> {
    ensure!(lun < 16384, "LUN {lun} out of range (0..16383)");
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        b[0] = 0x40 | ((lun >> 8) as u8 & 0x3F);
        b[1] = lun as u8;
    }
    Ok(b)
}

/// CHAP credentials (one-way).
#[derive(Clone, Debug)]
pub struct Chap {
    /// CHAP_N.
    pub user: String,
    /// The shared secret.
    pub secret: Vec<u8>,
}

/// What login settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// CmdSN of the first command.
    pub cmdsn: u32,
    /// ExpStatSN to send.
    pub exp_statsn: u32,
    /// Commands the target accepts beyond ExpCmdSN (MaxCmdSN - ExpCmdSN + 1).
    pub window: u32,
    /// The target's MaxRecvDataSegmentLength (bounds what we send per PDU).
    pub target_mrdsl: u32,
    /// FirstBurstLength.
    pub first_burst: u32,
    /// ImmediateData=Yes.
    pub immediate: bool,
}

fn put_key(out: &mut Vec<u8>, k: &str, v: &str) {
    out.extend_from_slice(k.as_bytes());
    out.push(b'=');
    out.extend_from_slice(v.as_bytes());
    out.push(0);
}

fn keys(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// A blocking PDU read: (BHS, data segment without padding).
fn read_pdu(s: &mut TcpStream, max_data: usize) -> Result<([u8; BHS], Vec<u8>)> {
    let mut h = [0u8; BHS];
    s.read_exact(&mut h).context("reading an iSCSI PDU")?;
    let ahs = usize::from(h[4]) * 4;
    let dsl = be24(&h[5..8]);
    ensure!(
        dsl <= max_data,
        "iSCSI PDU (opcode {:#04x}) with {dsl} data bytes (more than {max_data})",
        h[0] & 0x3F
    );
    let mut rest = vec![0u8; ahs + pad4(dsl)];
    s.read_exact(&mut rest).context("reading an iSCSI PDU")?;
    Ok((h, rest[ahs..ahs + dsl].to_vec()))
}

fn hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .with_context(|| format!("CHAP value {s:?} is not hex"))?;
    ensure!(
        h.len().is_multiple_of(2) && !h.is_empty(),
        "bad CHAP hex {s:?}"
    );
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).context("bad CHAP hex"))
        .collect()
}

/// Log in to `target` on a fresh connection.
pub fn login(
    s: &mut TcpStream,
    initiator: &str,
    target: &str,
    isid: [u8; 6],
    chap: Option<&Chap>,
) -> Result<Session> {
    use md5::Digest;
    let cmdsn = 1u32;
    let mut exp_statsn = 0u32;
    let mut csg = if chap.is_some() { 0u8 } else { 1 };
    let mut data = Vec::new();
    put_key(&mut data, "InitiatorName", initiator);
    put_key(&mut data, "TargetName", target);
    put_key(&mut data, "SessionType", "Normal");
    let op_keys = |d: &mut Vec<u8>| {
        for (k, v) in [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("ErrorRecoveryLevel", "0"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
        ] {
            put_key(d, k, v);
        }
    };
    if chap.is_some() {
        put_key(&mut data, "AuthMethod", "CHAP");
    } else {
        op_keys(&mut data);
    }
    let mut transit = chap.is_none();
    let mut chap_step = 0;
    let mut got: Vec<(String, String)> = Vec::new();
    for _ in 0..16 {
        let nsg = if csg == 0 { 1 } else { 3 };
        let mut h = [0u8; BHS];
        h[0] = op::LOGIN_REQ | IMMEDIATE;
        h[1] = (u8::from(transit) << 7) | (csg << 2) | if transit { nsg } else { 0 };
        h[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        h[8..14].copy_from_slice(&isid);
        h[24..28].copy_from_slice(&cmdsn.to_be_bytes());
        h[28..32].copy_from_slice(&exp_statsn.to_be_bytes());
        let mut m = h.to_vec();
        m.extend_from_slice(&data);
        m.resize(BHS + pad4(data.len()), 0);
        s.write_all(&m).context("sending a login request")?;
        let (r, d) = read_pdu(s, MAX_LOGIN_DATA)?;
        ensure!(
            r[0] & 0x3F == op::LOGIN_RSP,
            "expected a login response, got opcode {:#04x}",
            r[0] & 0x3F
        );
        let (class, detail) = (r[36], r[37]);
        ensure!(
            class == 0,
            "login to {target} refused: status {class:02x}{detail:02x} ({})",
            match (class, detail) {
                (2, 1) => "authentication failed",
                (2, 2) => "authorisation failure",
                (2, 3) => "no such target",
                (2, 7) => "missing parameter",
                (2, _) => "initiator error",
                (3, _) => "target error",
                (1, _) => "redirected",
                _ => "unknown",
            }
        );
        exp_statsn = be32(&r, 24).wrapping_add(1);
        let window = be32(&r, 32).wrapping_sub(be32(&r, 28)).wrapping_add(1);
        let rk = keys(&d);
        got.extend(rk.iter().cloned());
        let r_transit = r[1] & 0x80 != 0;
        let r_nsg = r[1] & 3;
        data.clear();
        if csg == 0 {
            let c = chap.context("security stage without CHAP")?;
            let get = |k: &str| rk.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
            if r_transit && r_nsg == 1 {
                ensure!(chap_step == 2, "the target skipped CHAP");
                csg = 1;
                transit = true;
                op_keys(&mut data);
                continue;
            }
            match chap_step {
                0 => {
                    ensure!(
                        get("AuthMethod").as_deref() == Some("CHAP"),
                        "the target did not agree to CHAP (AuthMethod={:?})",
                        get("AuthMethod")
                    );
                    put_key(&mut data, "CHAP_A", "5");
                    transit = false;
                    chap_step = 1;
                }
                1 => {
                    ensure!(get("CHAP_A").as_deref() == Some("5"), "CHAP_A is not MD5");
                    let id: u8 = get("CHAP_I")
                        .context("no CHAP_I")?
                        .parse()
                        .context("bad CHAP_I")?;
                    let challenge = unhex(&get("CHAP_C").context("no CHAP_C")?)?;
                    let mut md = md5::Md5::new();
                    md.update([id]);
                    md.update(&c.secret);
                    md.update(&challenge);
                    put_key(&mut data, "CHAP_N", &c.user);
                    put_key(&mut data, "CHAP_R", &hex(&md.finalize()));
                    transit = true;
                    chap_step = 2;
                }
                _ => bail!("the target did not conclude CHAP"),
            }
            continue;
        }
        if r_transit && r_nsg == 3 {
            let get = |k: &str| {
                got.iter()
                    .rev()
                    .find(|(a, _)| a == k)
                    .map(|(_, v)| v.as_str())
            };
            let num = |k: &str, dflt: u32| -> Result<u32> {
                match get(k) {
                    Some(v) => v.parse().with_context(|| format!("bad {k}={v}")),
                    None => Ok(dflt),
                }
            };
            ensure!(
                get("HeaderDigest").is_none_or(|v| v == "None")
                    && get("DataDigest").is_none_or(|v| v == "None"),
                "the target insists on digests"
            );
            let first_burst = num("FirstBurstLength", 65536)?.min(num("MaxBurstLength", 262144)?);
            return Ok(Session {
                cmdsn,
                exp_statsn,
                window,
                target_mrdsl: num("MaxRecvDataSegmentLength", 8192)?.max(512),
                first_burst,
                immediate: get("ImmediateData").is_none_or(|v| v == "Yes"),
            });
        }
        transit = true;
    }
    bail!("login did not reach the full feature phase")
}

/// The full-feature-phase codec.
pub struct IscsiWire {
    lun: [u8; 8],
    lba_shift: u32,
    cmdsn: u32,
    exp_statsn: u32,
    target_mrdsl: usize,
    immediate: usize,
    max_reply: usize,
    /// The newest MaxCmdSN the target announced.
    max_cmdsn: u32,
}

/// `a` < `b` in 32-bit serial number arithmetic (RFC 1982).
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

impl IscsiWire {
    /// A codec for a session that `login` settled.
    pub fn new(s: &Session, lun: [u8; 8], block: u32) -> IscsiWire {
        IscsiWire {
            lun,
            lba_shift: block.trailing_zeros(),
            cmdsn: s.cmdsn,
            exp_statsn: s.exp_statsn,
            target_mrdsl: s.target_mrdsl as usize,
            immediate: if s.immediate {
                s.first_burst.min(s.target_mrdsl) as usize
            } else {
                0
            },
            max_reply: BHS + 255 * 4 + MY_MRDSL as usize + 4,
            max_cmdsn: s.cmdsn.wrapping_add(s.window).wrapping_sub(1),
        }
    }

    /// Take the ExpCmdSN / MaxCmdSN a target PDU `h` carries (bytes 28..36 of every full
    /// feature phase response, RFC 7143 §11).
    fn window_from(&mut self, h: &[u8]) {
        let (exp, max) = (be32(h, 28), be32(h, 32));
        if !sn_lt(max, exp.wrapping_sub(1)) && sn_lt(self.max_cmdsn, max) {
            self.max_cmdsn = max;
        }
    }

    fn cdb(&self, write: bool, offset: u64, len: u32) -> [u8; 16] {
        let lba = offset >> self.lba_shift;
        let blocks = len >> self.lba_shift;
        let mut c = [0u8; 16];
        if lba <= u64::from(u32::MAX) && blocks <= 0xFFFF {
            c[0] = if write { 0x2A } else { 0x28 };
            c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        } else {
            c[0] = if write { 0x8A } else { 0x88 };
            c[2..10].copy_from_slice(&lba.to_be_bytes());
            c[10..14].copy_from_slice(&blocks.to_be_bytes());
        }
        c
    }

    /// Encode a SCSI Command (no data) for `cdb`, used by the blocking set-up path too.
    fn command(&mut self, itt: u32, flags: u8, edtl: u32, cdb: &[u8; 16], data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; BHS];
        h[0] = op::SCSI_CMD;
        h[1] = flags;
        h[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        h[8..16].copy_from_slice(&self.lun);
        h[16..20].copy_from_slice(&itt.to_be_bytes());
        h[20..24].copy_from_slice(&edtl.to_be_bytes());
        h[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        h[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        h[32..48].copy_from_slice(cdb);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        let mut m = h.to_vec();
        m.extend_from_slice(data);
        m.resize(BHS + pad4(data.len()), 0);
        m
    }
}

/// SCSI Command flags: final, read, write, simple task attribute.
const F_FINAL: u8 = 0x80;
const F_READ: u8 = 0x40;
const F_WRITE: u8 = 0x20;
const ATTR_SIMPLE: u8 = 1;

impl Wire for IscsiWire {
    fn request(&mut self, r: &Req, payload: &[u8], out: &mut Vec<u8>) {
        let cdb = self.cdb(r.write, r.offset, r.len);
        let mut h = [0u8; BHS];
        let imm = if r.write {
            self.immediate.min(payload.len())
        } else {
            0
        };
        h[0] = op::SCSI_CMD;
        h[1] = F_FINAL | ATTR_SIMPLE | if r.write { F_WRITE } else { F_READ };
        h[5..8].copy_from_slice(&(imm as u32).to_be_bytes()[1..]);
        h[8..16].copy_from_slice(&self.lun);
        h[16..20].copy_from_slice(&u32::from(r.slot).to_be_bytes());
        h[20..24].copy_from_slice(&r.len.to_be_bytes());
        h[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        h[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        h[32..48].copy_from_slice(&cdb);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        out.extend_from_slice(&h);
        if imm > 0 {
            out.extend_from_slice(&payload[..imm]);
            out.resize(out.len() + pad4(imm) - imm, 0);
        }
    }

    fn parse(&mut self, inb: &[u8], slots: &Slots, out: &mut Vec<u8>) -> Result<Option<Parsed>> {
        if inb.len() < BHS {
            return Ok(None);
        }
        let opcode = inb[0] & 0x3F;
        let ahs = usize::from(inb[4]) * 4;
        let dsl = be24(&inb[5..8]);
        let total = BHS + ahs + pad4(dsl);
        ensure!(
            total <= self.max_reply,
            "iSCSI PDU (opcode {opcode:#04x}) of {total} bytes, more than the {} expected",
            self.max_reply
        );
        if inb.len() < total {
            return Ok(None);
        }
        let h = &inb[..BHS];
        self.window_from(h);
        let data = BHS + ahs..BHS + ahs + dsl;
        let itt = be32(h, 16);
        let slot_of = |want_write: bool| -> Result<u16> {
            let slot = u16::try_from(itt).ok().filter(|&s| slots.op(s).is_some());
            let Some(slot) = slot else {
                bail!("iSCSI opcode {opcode:#04x} for task {itt:#x}, which is not outstanding");
            };
            match slots.op(slot) {
                Some((w, _)) if w == want_write => Ok(slot),
                _ => bail!(
                    "iSCSI opcode {opcode:#04x} for task {itt}, which is a {}",
                    if want_write { "read" } else { "write" }
                ),
            }
        };
        let status_seen = |me: &mut Self| me.exp_statsn = be32(h, 24).wrapping_add(1);
        match opcode {
            op::DATA_IN => {
                let slot = slot_of(false)?;
                let done = if h[1] & 0x01 != 0 {
                    status_seen(self);
                    Some(u32::from(h[3]))
                } else {
                    None
                };
                Ok(Some(Parsed {
                    used: total,
                    slot: Some(slot),
                    data: Some((be32(h, 40), data)),
                    done,
                }))
            }
            op::SCSI_RSP => {
                let slot = match u16::try_from(itt).ok().filter(|&s| slots.op(s).is_some()) {
                    Some(s) => s,
                    None => bail!("SCSI Response for task {itt:#x}, which is not outstanding"),
                };
                status_seen(self);
                let (response, status) = (h[2], h[3]);
                let code = if response != 0 {
                    0x100 | u32::from(response)
                } else {
                    u32::from(status)
                };
                Ok(Some(Parsed {
                    used: total,
                    slot: Some(slot),
                    data: None,
                    done: Some(code),
                }))
            }
            op::R2T => {
                let slot = slot_of(true)?;
                let ttt = be32(h, 20);
                let offset = be32(h, 40) as usize;
                let want = be32(h, 44) as usize;
                let payload = slots.payload(slot);
                ensure!(
                    want > 0 && offset.checked_add(want).is_some_and(|e| e <= payload.len()),
                    "R2T for bytes {offset}+{want} of a {}-byte write",
                    payload.len()
                );
                let mut at = offset;
                let mut datasn = 0u32;
                while at < offset + want {
                    let n = (offset + want - at).min(self.target_mrdsl);
                    let mut d = [0u8; BHS];
                    d[0] = op::DATA_OUT;
                    d[1] = if at + n == offset + want { F_FINAL } else { 0 };
                    d[5..8].copy_from_slice(&(n as u32).to_be_bytes()[1..]);
                    d[8..16].copy_from_slice(&self.lun);
                    d[16..20].copy_from_slice(&itt.to_be_bytes());
                    d[20..24].copy_from_slice(&ttt.to_be_bytes());
                    d[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
                    d[36..40].copy_from_slice(&datasn.to_be_bytes());
                    d[40..44].copy_from_slice(&(at as u32).to_be_bytes());
                    out.extend_from_slice(&d);
                    out.extend_from_slice(&payload[at..at + n]);
                    out.resize(out.len() + pad4(n) - n, 0);
                    at += n;
                    datasn += 1;
                }
                Ok(Some(Parsed {
                    used: total,
                    slot: Some(slot),
                    data: None,
                    done: None,
                }))
            }
            op::NOP_IN => {
                let ttt = be32(h, 20);
                if ttt != u32::MAX {
                    // A ping from the target: echo it (immediate, CmdSN not advanced).
                    let mut d = [0u8; BHS];
                    d[0] = op::NOP_OUT | IMMEDIATE;
                    d[1] = F_FINAL;
                    d[5..8].copy_from_slice(&(dsl as u32).to_be_bytes()[1..]);
                    d[8..16].copy_from_slice(&h[8..16]);
                    d[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
                    d[20..24].copy_from_slice(&ttt.to_be_bytes());
                    d[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
                    d[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
                    out.extend_from_slice(&d);
                    out.extend_from_slice(&inb[data.clone()]);
                    out.resize(out.len() + pad4(dsl) - dsl, 0);
                }
                Ok(Some(Parsed {
                    used: total,
                    slot: None,
                    data: None,
                    done: None,
                }))
            }
            op::REJECT => bail!("the target rejected a PDU (reason {:#04x})", h[2]),
            op::ASYNC => match h[36] {
                0 | 4 | 5 => Ok(Some(Parsed {
                    used: total,
                    slot: None,
                    data: None,
                    done: None,
                })),
                e => bail!("the target ends the session (async event {e})"),
            },
            op::LOGOUT_RSP => bail!("unexpected Logout Response"),
            o => bail!("unexpected iSCSI opcode {o:#04x}"),
        }
    }

    fn goodbye(&mut self, out: &mut Vec<u8>) {
        let mut h = [0u8; BHS];
        h[0] = op::LOGOUT_REQ | IMMEDIATE;
        h[1] = F_FINAL; // reason 0: close the session
        h[16..20].copy_from_slice(&0xFFFF_FFFEu32.to_be_bytes());
        h[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        h[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        out.extend_from_slice(&h);
    }

    fn max_reply(&self) -> usize {
        self.max_reply
    }

    fn may_send(&self) -> bool {
        !sn_lt(self.max_cmdsn, self.cmdsn)
    }
}

/// READ CAPACITY(16) on a fresh session (blocking); retried over unit attentions.
fn capacity(s: &mut TcpStream, w: &mut IscsiWire) -> Result<(u64, u32)> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    for _ in 0..4 {
        let itt = 0x1000_0000;
        let m = w.command(itt, F_FINAL | F_READ | ATTR_SIMPLE, 32, &cdb, &[]);
        s.write_all(&m).context("sending READ CAPACITY")?;
        let mut data = Vec::new();
        let status = loop {
            let (h, d) = read_pdu(s, MY_MRDSL as usize)?;
            w.window_from(&h);
            match h[0] & 0x3F {
                op::DATA_IN => {
                    ensure!(be32(&h, 16) == itt, "Data-In for another task");
                    data.extend_from_slice(&d);
                    if h[1] & 1 != 0 {
                        w.exp_statsn = be32(&h, 24).wrapping_add(1);
                        break h[3];
                    }
                }
                op::SCSI_RSP => {
                    ensure!(be32(&h, 16) == itt, "SCSI Response for another task");
                    w.exp_statsn = be32(&h, 24).wrapping_add(1);
                    ensure!(h[2] == 0, "READ CAPACITY: iSCSI response {:#x}", h[2]);
                    break h[3];
                }
                op::NOP_IN | op::ASYNC => {}
                o => bail!("unexpected iSCSI opcode {o:#04x} during READ CAPACITY"),
            }
        };
        if status == 0x02 {
            continue; // CHECK CONDITION: a unit attention after login; ask again.
        }
        ensure!(status == 0, "READ CAPACITY failed: SCSI status {status:#x}");
        ensure!(
            data.len() >= 12,
            "READ CAPACITY returned {} bytes",
            data.len()
        );
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[0..8]);
        let last = u64::from_be_bytes(b);
        let bs = be32(&data, 8);
        ensure!(
            bs >= 512 && bs.is_power_of_two() && bs <= 65536,
            "implausible block length {bs}"
        );
        return Ok((
            last.checked_add(1).context("bad capacity")? * u64::from(bs),
            bs,
        ));
    }
    bail!("READ CAPACITY kept failing with CHECK CONDITION")
}

/// Log `o.conns` sessions in and hand their sockets to the engine.
pub fn connect(o: &Opts) -> Result<Connected> {
    let lun = lun_field(o.target.lun)?;
    ensure!(
        !o.target.name.is_empty(),
        "iscsi:// needs the target IQN as its path"
    );
    let mut conns = Vec::new();
    let mut dev: Option<(u64, u32)> = None;
    for i in 0..o.conns {
        let mut s = TcpStream::connect_timeout(&o.target.addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {}", o.target.addr))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(o.timeout))?;
        s.set_write_timeout(Some(o.timeout))?;
        let pid = std::process::id();
        // ISID: "random" format (type 10b), unique per process and connection.
        let isid = [
            0x80,
            (pid >> 16) as u8,
            (pid >> 8) as u8,
            pid as u8,
            (i >> 8) as u8,
            i as u8,
        ];
        let sess = login(&mut s, &o.initiator, &o.target.name, isid, o.chap.as_ref())
            .with_context(|| format!("iSCSI login to {}", o.target.addr))?;
        let mut w = IscsiWire::new(&sess, lun, 512);
        let (size, block) = capacity(&mut s, &mut w)?;
        if let Some(d) = dev {
            ensure!(d == (size, block), "sessions see different capacities");
        }
        dev = Some((size, block));
        w.lba_shift = block.trailing_zeros();
        s.set_read_timeout(None)?;
        s.set_write_timeout(None)?;
        conns.push(Link {
            sock: s,
            wire: Box::new(w),
        });
    }
    let (size, block) = dev.context("no connection")?;
    Ok(Connected {
        conns,
        size,
        block,
        keep: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            cmdsn: 1,
            exp_statsn: 5,
            window: 128,
            target_mrdsl: 1024,
            first_burst: 2048,
            immediate: true,
        }
    }

    fn pdu(opcode: u8, flags: u8, itt: u32, f: impl Fn(&mut [u8; BHS]), data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; BHS];
        h[0] = opcode;
        h[1] = flags;
        h[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        h[16..20].copy_from_slice(&itt.to_be_bytes());
        f(&mut h);
        let mut m = h.to_vec();
        m.extend_from_slice(data);
        m.resize(BHS + pad4(data.len()), 0);
        m
    }

    #[test]
    fn commands_carry_cdb_immediate_data_and_sequence_numbers() {
        let mut w = IscsiWire::new(&session(), lun_field(3).unwrap(), 4096);
        let mut out = Vec::new();
        let r = Req {
            slot: 9,
            write: true,
            offset: 8192,
            len: 8192,
        };
        w.request(&r, &[0xEE; 8192], &mut out);
        assert_eq!(
            out.len(),
            BHS + 1024,
            "immediate data up to the target's MRDSL"
        );
        assert_eq!((out[0], out[1]), (op::SCSI_CMD, F_FINAL | F_WRITE | 1));
        assert_eq!(be24(&out[5..8]), 1024);
        assert_eq!(out[9], 3, "LUN 3");
        assert_eq!(
            (be32(&out, 16), be32(&out, 20), be32(&out, 24)),
            (9, 8192, 1)
        );
        assert_eq!(
            &out[32..42],
            &[0x2A, 0, 0, 0, 0, 2, 0, 0, 2, 0],
            "WRITE(10) LBA 2, 2 blocks"
        );
        out.clear();
        let far = Req {
            write: false,
            offset: 1 << 45,
            ..r
        };
        w.request(&far, &[], &mut out);
        assert_eq!(out.len(), BHS);
        assert_eq!(be32(&out, 24), 2, "CmdSN advances");
        assert_eq!(out[32], 0x88, "READ(16) past 2^32 blocks");
        assert_eq!(u64::from_be_bytes(out[34..42].try_into().unwrap()), 1 << 33);
    }

    /// A window of 2 at login: two commands go, the third waits until a response widens the
    /// window; a MaxCmdSN older than the known one, or below ExpCmdSN - 1, changes nothing.
    #[test]
    fn commands_wait_for_the_command_window() {
        let s = Session {
            window: 2,
            ..session()
        };
        let mut w = IscsiWire::new(&s, lun_field(0).unwrap(), 512);
        let slots = Slots::with_busy(512, &[]);
        let mut out = Vec::new();
        let r = Req {
            slot: 0,
            write: false,
            offset: 0,
            len: 512,
        };
        assert!(w.may_send());
        w.request(&r, &[], &mut out);
        assert!(w.may_send());
        w.request(&Req { slot: 1, ..r }, &[], &mut out);
        assert!(!w.may_send(), "CmdSN 3 is outside the window [1, 2]");
        let nop = |exp: u32, max: u32| {
            pdu(
                op::NOP_IN,
                0x80,
                u32::MAX,
                |h| {
                    h[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
                    h[28..32].copy_from_slice(&exp.to_be_bytes());
                    h[32..36].copy_from_slice(&max.to_be_bytes());
                },
                &[],
            )
        };
        let mut o2 = Vec::new();
        w.parse(&nop(1, 0xFFFF_FFF0), &slots, &mut o2).unwrap();
        assert!(!w.may_send(), "MaxCmdSN below ExpCmdSN - 1: ignored");
        w.parse(&nop(3, 34), &slots, &mut o2).unwrap();
        assert!(w.may_send(), "widened to 34");
        w.parse(&nop(3, 10), &slots, &mut o2).unwrap();
        for i in 3..=34u16 {
            assert!(
                w.may_send(),
                "CmdSN {i} inside the window (an older MaxCmdSN is ignored)"
            );
            w.request(&Req { slot: i % 4, ..r }, &[], &mut out);
        }
        assert!(!w.may_send(), "CmdSN 35 is outside");
    }

    #[test]
    fn replies_r2t_and_nop_in() {
        let mut w = IscsiWire::new(&session(), lun_field(0).unwrap(), 512);
        let slots = Slots::with_busy(4096, &[(1, false), (2, true)]);
        let mut out = Vec::new();
        let d = pdu(
            op::DATA_IN,
            0x81,
            1,
            |h| h[40..44].copy_from_slice(&512u32.to_be_bytes()),
            &[7; 100],
        );
        assert_eq!(w.parse(&d[..60], &slots, &mut out).unwrap(), None);
        let p = w.parse(&d, &slots, &mut out).unwrap().unwrap();
        assert_eq!(
            (p.used, p.slot, p.data, p.done),
            (BHS + 100, Some(1), Some((512, BHS..BHS + 100)), Some(0))
        );
        let rsp = pdu(op::SCSI_RSP, 0x80, 2, |h| h[3] = 2, &[]);
        assert_eq!(
            w.parse(&rsp, &slots, &mut out).unwrap().unwrap().done,
            Some(2)
        );
        let r2t = pdu(
            op::R2T,
            0x80,
            2,
            |h| {
                h[20..24].copy_from_slice(&77u32.to_be_bytes());
                h[40..44].copy_from_slice(&1024u32.to_be_bytes());
                h[44..48].copy_from_slice(&2048u32.to_be_bytes());
            },
            &[],
        );
        let p = w.parse(&r2t, &slots, &mut out).unwrap().unwrap();
        assert_eq!((p.slot, p.done), (Some(2), None));
        assert_eq!(
            out.len(),
            2 * (BHS + 1024),
            "Data-Out split by the target's MRDSL"
        );
        assert_eq!(
            (out[0], out[1], be32(&out, 20), be32(&out, 40)),
            (op::DATA_OUT, 0, 77, 1024)
        );
        let second = &out[BHS + 1024..];
        assert_eq!(
            (second[1], be32(second, 36), be32(second, 40)),
            (F_FINAL, 1, 2048)
        );
        out.clear();
        let nop = pdu(
            op::NOP_IN,
            0x80,
            u32::MAX,
            |h| h[20..24].copy_from_slice(&5u32.to_be_bytes()),
            b"ping",
        );
        let p = w.parse(&nop, &slots, &mut out).unwrap().unwrap();
        assert_eq!((p.slot, p.done), (None, None));
        assert_eq!((out[0], be32(&out, 20)), (op::NOP_OUT | IMMEDIATE, 5));
        assert_eq!(&out[BHS..BHS + 4], b"ping");
    }

    #[test]
    fn malformed_pdus_are_errors() {
        let mut w = IscsiWire::new(&session(), lun_field(0).unwrap(), 512);
        let slots = Slots::with_busy(4096, &[(1, false), (2, true)]);
        let mut out = Vec::new();
        let mut e = |b: &[u8]| w.parse(b, &slots, &mut out).unwrap_err().to_string();
        assert!(e(&pdu(op::SCSI_RSP, 0x80, 3, |_| {}, &[])).contains("not outstanding"));
        assert!(e(&pdu(op::DATA_IN, 0x80, 2, |_| {}, &[0; 4])).contains("which is a write"));
        assert!(e(&pdu(op::R2T, 0x80, 1, |_| {}, &[])).contains("which is a read"));
        let r2t = pdu(
            op::R2T,
            0x80,
            2,
            |h| {
                h[40..44].copy_from_slice(&4000u32.to_be_bytes());
                h[44..48].copy_from_slice(&200u32.to_be_bytes());
            },
            &[],
        );
        assert!(e(&r2t).contains("R2T for bytes 4000+200"));
        let mut big = pdu(op::DATA_IN, 0x80, 1, |_| {}, &[]);
        big[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        assert!(e(&big).contains("more than"));
        assert!(e(&pdu(op::REJECT, 0x80, 0, |h| h[2] = 9, &[])).contains("rejected"));
        assert!(e(&pdu(op::ASYNC, 0x80, 0, |h| h[36] = 1, &[])).contains("ends the session"));
        assert!(e(&pdu(0x3A, 0x80, 0, |_| {}, &[])).contains("unexpected"));
    }

    #[test]
    fn keys_and_hex() {
        assert_eq!(
            keys(b"A=1\0B=x=y\0\0junk\0"),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(unhex("0x0aFF").unwrap(), vec![0x0A, 0xFF]);
        assert!(unhex("12").is_err() && unhex("0x1").is_err());
        assert_eq!(hex(&[1, 0xAB]), "0x01ab");
    }
}
