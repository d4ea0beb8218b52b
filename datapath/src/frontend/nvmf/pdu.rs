//! NVMe/TCP PDUs: pure, allocation-free parsers and encoders (layouts: `docs/nvmf.md`).
//!
//! Model: the connection keeps a receive buffer; [`parse`] looks at its head and answers
//! "need more bytes", "a whole PDU of `n` bytes" (with its header and data split out and both
//! digests checked: a data digest that does not match is reported with the PDU, which stays
//! well framed), or a [`Violation`] naming the TermReq fatal error status and field.
//! Encoders append to a caller-owned `Vec<u8>` that is reused from turn to turn.
//!
//! Invariants:
//! - No parser panics or reads outside its input, whatever the bytes; every length taken from
//!   the wire is checked against the input and against the limits given before it is used.
//! - A PDU is reported whole only when all `plen` bytes are present; `plen` never exceeds
//!   [`max_plen`] for its type, so a lying length cannot make the receive buffer grow without
//!   bound.

/// PDU types.
pub mod pdu_type {
    /// Initialize Connection Request.
    pub const IC_REQ: u8 = 0x00;
    /// Initialize Connection Response.
    pub const IC_RESP: u8 = 0x01;
    /// Host-to-controller terminate request.
    pub const H2C_TERM: u8 = 0x02;
    /// Controller-to-host terminate request.
    pub const C2H_TERM: u8 = 0x03;
    /// Command capsule.
    pub const CMD: u8 = 0x04;
    /// Response capsule.
    pub const RSP: u8 = 0x05;
    /// Host-to-controller data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller-to-host data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to transfer.
    pub const R2T: u8 = 0x09;
}

/// Common-header flags.
pub mod flag {
    /// A header digest follows the header.
    pub const HDGST: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGST: u8 = 0x02;
    /// Last data PDU of a transfer.
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData: the command succeeded; no response capsule follows.
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// TermReq fatal error status.
pub mod fes {
    /// Invalid PDU header field (FEI: byte offset of the field).
    pub const INVALID_HEADER: u16 = 0x01;
    /// PDU sequence error.
    pub const PDU_SEQUENCE: u16 = 0x02;
    /// Header digest error.
    pub const HEADER_DIGEST: u16 = 0x03;
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// Data transfer limit exceeded.
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported parameter.
    pub const UNSUPPORTED_PARAM: u16 = 0x06;
}

/// Common header length.
pub const CH_LEN: usize = 8;
/// ICReq / ICResp length.
pub const IC_LEN: usize = 128;
/// CapsuleCmd header: common header + 64-byte SQE.
pub const CMD_HLEN: usize = 72;
/// CapsuleResp header: common header + 16-byte CQE.
pub const RSP_HLEN: usize = 24;
/// H2CData / C2HData / R2T / TermReq header length.
pub const DATA_HLEN: usize = 24;
/// Digest length.
pub const DIGEST_LEN: usize = 4;
/// Most bytes of an offending header copied into a TermReq.
pub const TERM_MAX_DATA: usize = 128;
/// Padding a host may put between header (and digest) and data: PDA is at most 31, so data is
/// aligned to at most 128 bytes.
const MAX_PAD: usize = 128;

/// Digests in force on a connection (negotiated by ICReq/ICResp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// Header digest.
    pub header: bool,
    /// Data digest.
    pub data: bool,
}

/// Why a PDU cannot be accepted: the fatal error status and field to put in a TermReq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Fatal error status ([`fes`]).
    pub fes: u16,
    /// Fatal error information: for [`fes::INVALID_HEADER`], the offending field's offset.
    pub fei: u32,
}

impl Violation {
    const fn header(field: u32) -> Self {
        Violation {
            fes: fes::INVALID_HEADER,
            fei: field,
        }
    }
}

/// The common header of a PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    /// PDU type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Header length.
    pub hlen: u8,
    /// Data offset (0: no data).
    pub pdo: u8,
    /// Total PDU length.
    pub plen: u32,
}

/// Read the common header, if 8 bytes are there.
pub fn common(b: &[u8]) -> Option<Common> {
    let h = b.get(..CH_LEN)?;
    Some(Common {
        kind: h[0],
        flags: h[1],
        hlen: h[2],
        pdo: h[3],
        plen: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
    })
}

/// The fixed header length of a host-to-controller PDU type, or `None` for a type a host may
/// not send.
pub fn host_hlen(kind: u8) -> Option<usize> {
    match kind {
        pdu_type::IC_REQ => Some(IC_LEN),
        pdu_type::H2C_TERM => Some(DATA_HLEN),
        pdu_type::CMD => Some(CMD_HLEN),
        pdu_type::H2C_DATA => Some(DATA_HLEN),
        _ => None,
    }
}

/// Whether PDUs of this type carry digests when they are negotiated.
fn digested(kind: u8) -> bool {
    matches!(
        kind,
        pdu_type::CMD | pdu_type::RSP | pdu_type::H2C_DATA | pdu_type::C2H_DATA | pdu_type::R2T
    )
}

/// Largest `plen` accepted for a host PDU of `kind` when at most `max_data` data bytes may ride
/// in it.
pub fn max_plen(kind: u8, max_data: u32) -> usize {
    match host_hlen(kind) {
        None => CH_LEN,
        Some(_) if kind == pdu_type::IC_REQ => IC_LEN,
        Some(h) if kind == pdu_type::H2C_TERM => h + TERM_MAX_DATA,
        Some(h) => h + DIGEST_LEN + MAX_PAD + max_data as usize + DIGEST_LEN,
    }
}

/// A whole PDU at the head of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdu<'a> {
    /// Common header.
    pub ch: Common,
    /// The header (`hlen` bytes, common header included, digest excluded).
    pub header: &'a [u8],
    /// The data (digest excluded; empty when none).
    pub data: &'a [u8],
    /// The data digest matched, or there is none. A mismatch is no transport error (the PDU
    /// is framed by its header): the command the data belongs to fails with Transient
    /// Transport Error (NVMe/TCP, data digest).
    pub data_ok: bool,
}

/// How many bytes the PDU at the head of `b` needs in all (at least the common header).
pub fn needs(b: &[u8]) -> usize {
    match common(b) {
        Some(ch) => (ch.plen as usize).max(CH_LEN),
        None => CH_LEN,
    }
}

/// Parse the host PDU at the head of `b`. `max_data` bounds the data a PDU may carry (for a
/// CapsuleCmd the in-capsule limit, for H2CData MAXH2CDATA; take the larger and let the
/// connection check the type-specific one). `Ok(None)`: more bytes are needed.
pub fn parse(b: &[u8], dg: Digests, max_data: u32) -> Result<Option<(Pdu<'_>, usize)>, Violation> {
    let Some(ch) = common(b) else {
        return Ok(None);
    };
    let Some(hlen) = host_hlen(ch.kind) else {
        return Err(Violation::header(0));
    };
    if ch.hlen as usize != hlen {
        return Err(Violation::header(2));
    }
    let plen = ch.plen as usize;
    let digests = digested(ch.kind);
    let hd = if digests && dg.header { DIGEST_LEN } else { 0 };
    let dd_on = digests && dg.data;
    // Flags: digests must match what was negotiated; other bits are type-specific.
    let known = match ch.kind {
        pdu_type::CMD => flag::HDGST | flag::DDGST,
        pdu_type::H2C_DATA => flag::HDGST | flag::DDGST | flag::DATA_LAST,
        _ => 0,
    };
    if ch.flags & !known != 0
        || (digests && ((ch.flags & flag::HDGST != 0) != dg.header))
        || (ch.flags & flag::DDGST != 0 && !dg.data)
    {
        return Err(Violation::header(1));
    }
    if plen < hlen + hd || plen > max_plen(ch.kind, max_data) {
        return Err(Violation::header(4));
    }
    // Where data starts and ends.
    let (data_lo, data_hi) = if ch.kind == pdu_type::H2C_TERM || ch.kind == pdu_type::IC_REQ {
        if ch.pdo != 0 {
            return Err(Violation::header(3));
        }
        if ch.kind == pdu_type::IC_REQ && plen != IC_LEN {
            return Err(Violation::header(4));
        }
        (hlen, plen)
    } else if plen == hlen + hd {
        // No data: a data digest flag without data is meaningless; pdo is ignored.
        if ch.flags & flag::DDGST != 0 {
            return Err(Violation::header(1));
        }
        (plen, plen)
    } else {
        let dd = if ch.flags & flag::DDGST != 0 {
            DIGEST_LEN
        } else if dd_on {
            return Err(Violation::header(1));
        } else {
            0
        };
        let pdo = ch.pdo as usize;
        if pdo < hlen + hd || pdo > hlen + hd + MAX_PAD || pdo + dd > plen {
            return Err(Violation::header(3));
        }
        if plen - pdo - dd > max_data as usize {
            return Err(Violation {
                fes: fes::DATA_LIMIT_EXCEEDED,
                fei: 0,
            });
        }
        (pdo, plen - dd)
    };
    if b.len() < plen {
        return Ok(None);
    }
    let header = &b[..hlen];
    if hd != 0 {
        let want = u32::from_le_bytes([b[hlen], b[hlen + 1], b[hlen + 2], b[hlen + 3]]);
        if crate::checksum::crc32c(header) != want {
            // FEI: the HDGST that was received (TCP 1.0 §3.6.2.5, Figure 23).
            return Err(Violation {
                fes: fes::HEADER_DIGEST,
                fei: want,
            });
        }
    }
    let data = &b[data_lo..data_hi];
    let mut data_ok = true;
    if data_hi < plen && ch.flags & flag::DDGST != 0 {
        let d = &b[data_hi..plen];
        let want = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        data_ok = crate::checksum::crc32c(data) == want;
    }
    Ok(Some((
        Pdu {
            ch,
            header,
            data,
            data_ok,
        },
        plen,
    )))
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// ICReq fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment (0's based, in dwords).
    pub hpda: u8,
    /// Digests asked for.
    pub digests: Digests,
    /// Most outstanding R2Ts per command (0's based).
    pub maxr2t: u32,
}

/// Decode an ICReq header (the caller passes [`Pdu::header`] of an IC_REQ PDU).
pub fn ic_req(h: &[u8]) -> Option<IcReq> {
    if h.len() < IC_LEN {
        return None;
    }
    Some(IcReq {
        pfv: le16(h, 8),
        hpda: h[10],
        digests: Digests {
            header: h[11] & 1 != 0,
            data: h[11] & 2 != 0,
        },
        maxr2t: le32(h, 12),
    })
}

/// H2CData / C2HData / R2T header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHdr {
    /// Command capsule cid.
    pub cid: u16,
    /// Transfer tag (from the R2T).
    pub ttag: u16,
    /// Offset of this data in the command's transfer.
    pub offset: u32,
    /// Bytes of data.
    pub len: u32,
}

/// Byte offset of [`DataHdr::ttag`] (for FEI).
pub const FEI_TTAG: u32 = 10;
/// Byte offset of [`DataHdr::offset`] (for FEI).
pub const FEI_DATAO: u32 = 12;
/// Byte offset of [`DataHdr::len`] (for FEI).
pub const FEI_DATAL: u32 = 16;

/// Decode a data or R2T header.
pub fn data_hdr(h: &[u8]) -> Option<DataHdr> {
    if h.len() < DATA_HLEN {
        return None;
    }
    Some(DataHdr {
        cid: le16(h, 8),
        ttag: le16(h, 10),
        offset: le32(h, 12),
        len: le32(h, 16),
    })
}

/// TermReq fields.
pub fn term_req(h: &[u8]) -> Option<(u16, u32)> {
    if h.len() < DATA_HLEN {
        return None;
    }
    Some((le16(h, 8), u32::from_le_bytes([h[10], h[11], h[12], h[13]])))
}

fn put_common(out: &mut Vec<u8>, kind: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) {
    out.extend_from_slice(&[kind, flags, hlen, pdo]);
    out.extend_from_slice(&plen.to_le_bytes());
}

/// Append the header digest of the header that starts at `start`.
fn put_hdgst(out: &mut Vec<u8>, start: usize) {
    let c = crate::checksum::crc32c(&out[start..]);
    out.extend_from_slice(&c.to_le_bytes());
}

/// Append an ICResp.
pub fn put_ic_resp(out: &mut Vec<u8>, cpda: u8, dg: Digests, maxh2cdata: u32) {
    let start = out.len();
    put_common(out, pdu_type::IC_RESP, 0, IC_LEN as u8, 0, IC_LEN as u32);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.push(cpda);
    out.push(u8::from(dg.header) | (u8::from(dg.data) << 1));
    out.extend_from_slice(&maxh2cdata.to_le_bytes());
    out.resize(start + IC_LEN, 0);
}

/// Append a CapsuleResp carrying `cqe`.
pub fn put_rsp(out: &mut Vec<u8>, cqe: &[u8; 16], dg: Digests) {
    let start = out.len();
    let hd = if dg.header { DIGEST_LEN } else { 0 };
    let flags = if dg.header { flag::HDGST } else { 0 };
    put_common(
        out,
        pdu_type::RSP,
        flags,
        RSP_HLEN as u8,
        0,
        (RSP_HLEN + hd) as u32,
    );
    out.extend_from_slice(cqe);
    if dg.header {
        put_hdgst(out, start);
    }
}

/// Append an R2T asking for `len` bytes at `offset` of command `cid`, tagged `ttag`.
pub fn put_r2t(out: &mut Vec<u8>, cid: u16, ttag: u16, offset: u32, len: u32, dg: Digests) {
    let start = out.len();
    let hd = if dg.header { DIGEST_LEN } else { 0 };
    let flags = if dg.header { flag::HDGST } else { 0 };
    put_common(
        out,
        pdu_type::R2T,
        flags,
        DATA_HLEN as u8,
        0,
        (DATA_HLEN + hd) as u32,
    );
    out.extend_from_slice(&cid.to_le_bytes());
    out.extend_from_slice(&ttag.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    if dg.header {
        put_hdgst(out, start);
    }
}

/// Append a C2HData PDU carrying `data` (offset `offset` of command `cid`'s transfer), the
/// last of its transfer; `success` sets the SUCCESS flag. `align` is the host's data alignment
/// in bytes ((HPDA + 1) * 4).
pub fn put_c2h_data(
    out: &mut Vec<u8>,
    cid: u16,
    offset: u32,
    data: &[u8],
    success: bool,
    dg: Digests,
    align: usize,
) {
    let start = out.len();
    let hd = if dg.header { DIGEST_LEN } else { 0 };
    let dd = if dg.data { DIGEST_LEN } else { 0 };
    let pdo = (DATA_HLEN + hd).next_multiple_of(align.max(1));
    let plen = pdo + data.len() + dd;
    let mut flags = flag::DATA_LAST;
    if success {
        flags |= flag::DATA_SUCCESS;
    }
    if dg.header {
        flags |= flag::HDGST;
    }
    if dg.data {
        flags |= flag::DDGST;
    }
    put_common(
        out,
        pdu_type::C2H_DATA,
        flags,
        DATA_HLEN as u8,
        pdo as u8,
        plen as u32,
    );
    out.extend_from_slice(&cid.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    if dg.header {
        put_hdgst(out, start);
    }
    out.resize(start + pdo, 0);
    out.extend_from_slice(data);
    if dg.data {
        out.extend_from_slice(&crate::checksum::crc32c(data).to_le_bytes());
    }
}

/// Append a C2HTermReq with the offending PDU's header (at most [`TERM_MAX_DATA`] bytes).
pub fn put_c2h_term(out: &mut Vec<u8>, v: Violation, offending: &[u8]) {
    let data = &offending[..offending.len().min(TERM_MAX_DATA)];
    put_common(
        out,
        pdu_type::C2H_TERM,
        0,
        DATA_HLEN as u8,
        0,
        (DATA_HLEN + data.len()) as u32,
    );
    out.extend_from_slice(&v.fes.to_le_bytes());
    out.extend_from_slice(&v.fei.to_le_bytes());
    out.extend_from_slice(&[0; 10]);
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd_pdu(dg: Digests, data: &[u8]) -> Vec<u8> {
        let hd = if dg.header { 4 } else { 0 };
        let dd = if dg.data && !data.is_empty() { 4 } else { 0 };
        let pdo = if data.is_empty() { 0 } else { CMD_HLEN + hd };
        let plen = CMD_HLEN + hd + data.len() + dd;
        let mut flags = 0;
        if dg.header {
            flags |= flag::HDGST;
        }
        if dd != 0 {
            flags |= flag::DDGST;
        }
        let mut v = vec![pdu_type::CMD, flags, CMD_HLEN as u8, pdo as u8];
        v.extend_from_slice(&(plen as u32).to_le_bytes());
        v.resize(CMD_HLEN, 0x11);
        if dg.header {
            let c = crate::checksum::crc32c(&v);
            v.extend_from_slice(&c.to_le_bytes());
        }
        v.extend_from_slice(data);
        if dd != 0 {
            v.extend_from_slice(&crate::checksum::crc32c(data).to_le_bytes());
        }
        v
    }

    #[test]
    fn capsule_with_digests_parses_and_prefixes_wait() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let b = cmd_pdu(dg, b"payload!");
        let (p, n) = parse(&b, dg, 8192).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(p.data, b"payload!");
        assert_eq!(p.header.len(), CMD_HLEN);
        for cut in 0..b.len() {
            assert_eq!(parse(&b[..cut], dg, 8192), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn bad_header_digest_and_bad_data_digest_are_caught() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut b = cmd_pdu(dg, b"abcd");
        b[20] ^= 1;
        let received = u32::from_le_bytes(b[72..76].try_into().unwrap());
        let v = parse(&b, dg, 8192).unwrap_err();
        assert_eq!((v.fes, v.fei), (fes::HEADER_DIGEST, received));
        let b = cmd_pdu(dg, b"abcd");
        assert!(parse(&b, dg, 8192).unwrap().unwrap().0.data_ok);
        let mut b = cmd_pdu(dg, b"abcd");
        let n = b.len();
        b[n - 5] ^= 1;
        let (p, len) = parse(&b, dg, 8192).unwrap().unwrap();
        assert_eq!(
            (p.data_ok, p.data.len(), len),
            (false, 4, n),
            "framed, flagged"
        );
    }

    #[test]
    fn lying_lengths_and_types_are_violations() {
        let dg = Digests::default();
        let mut b = cmd_pdu(dg, &[]);
        b[0] = 0x05; // a controller-to-host type
        assert_eq!(parse(&b, dg, 8192).unwrap_err(), Violation::header(0));
        let mut b = cmd_pdu(dg, &[]);
        b[2] = 70;
        assert_eq!(parse(&b, dg, 8192).unwrap_err(), Violation::header(2));
        let mut b = cmd_pdu(dg, &[]);
        b[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(parse(&b, dg, 8192).unwrap_err(), Violation::header(4));
        let mut b = cmd_pdu(dg, &[]);
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&b, dg, 8192).unwrap_err(), Violation::header(4));
        let b = cmd_pdu(dg, &[0u8; 100]);
        assert_eq!(parse(&b, dg, 64).unwrap_err().fes, fes::DATA_LIMIT_EXCEEDED);
        // Header digest flag without having negotiated it.
        let b = cmd_pdu(
            Digests {
                header: true,
                data: false,
            },
            &[],
        );
        assert_eq!(parse(&b, dg, 8192).unwrap_err(), Violation::header(1));
    }

    #[test]
    fn encoders_round_trip_through_the_common_header() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut out = Vec::new();
        put_c2h_data(&mut out, 7, 4096, &[9u8; 10], true, dg, 8);
        let ch = common(&out).unwrap();
        assert_eq!(ch.kind, pdu_type::C2H_DATA);
        assert_eq!(ch.plen as usize, out.len());
        assert_eq!(ch.pdo, 32);
        assert_eq!(ch.flags & flag::DATA_SUCCESS, flag::DATA_SUCCESS);
        let h = data_hdr(&out).unwrap();
        assert_eq!((h.cid, h.offset, h.len), (7, 4096, 10));
        assert_eq!(
            crate::checksum::crc32c(&out[..24]).to_le_bytes(),
            out[24..28],
            "header digest"
        );
        out.clear();
        put_ic_resp(&mut out, 0, dg, 65536);
        assert_eq!(out.len(), IC_LEN);
        assert_eq!(out[11], 3);
        out.clear();
        put_c2h_term(&mut out, Violation::header(4), &[0u8; 200]);
        assert_eq!(out.len(), DATA_HLEN + TERM_MAX_DATA);
        assert_eq!(term_req(&out), Some((fes::INVALID_HEADER, 4)));
    }
}
