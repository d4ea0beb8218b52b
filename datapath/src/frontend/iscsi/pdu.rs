//! iSCSI PDUs (RFC 7143 §11): pure, allocation-free parsers and encoders (`docs/iscsi.md`).
//!
//! Model: the connection keeps a receive buffer; [`parse`] looks at its head and answers "need
//! more bytes", "a whole PDU of `n` bytes" (its 48-byte Basic Header Segment, additional header
//! segments and data segment split out, both digests checked when negotiated), or a
//! [`Violation`]. Encoders ([`Bhs`]) fill a 48-byte header the connection appends to its send
//! buffer together with digests and padding ([`put_pdu`]).
//!
//! Invariants:
//! - No parser panics or reads outside its input, whatever the bytes; every length taken from
//!   the wire is checked against the input and against the limit given before it is used.
//! - A PDU is reported whole only when all its bytes (header, AHS, header digest, data,
//!   padding, data digest) are present; the data segment never exceeds the caller's limit, so a
//!   lying length cannot make the receive buffer grow without bound.

/// Basic Header Segment length.
pub const BHS_LEN: usize = 48;
/// Digest length (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// Most bytes of additional header segments accepted (TotalAHSLength is in 4-byte words).
pub const MAX_AHS: usize = 1020;
/// The reserved tag value ("no tag").
pub const NO_TAG: u32 = 0xFFFF_FFFF;

/// Opcodes (byte 0, bits 0..=5).
pub mod op {
    /// NOP-Out (initiator).
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// Task Management Function Request.
    pub const TMF_REQ: u8 = 0x02;
    /// Login Request.
    pub const LOGIN_REQ: u8 = 0x03;
    /// Text Request.
    pub const TEXT_REQ: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT_REQ: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In (target).
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RSP: u8 = 0x21;
    /// Task Management Function Response.
    pub const TMF_RSP: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RSP: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RSP: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RSP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3F;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    /// Data (payload) digest error.
    pub const DATA_DIGEST: u8 = 0x02;
    /// SNACK reject.
    pub const SNACK: u8 = 0x03;
    /// Protocol error.
    pub const PROTOCOL: u8 = 0x04;
    /// Command not supported.
    pub const NOT_SUPPORTED: u8 = 0x05;
    /// Immediate command rejected: too many immediate commands.
    pub const IMMEDIATE: u8 = 0x06;
    /// Invalid PDU field.
    pub const INVALID_FIELD: u8 = 0x09;
}

/// Which digests were negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// A CRC32C follows the header (and AHS).
    pub header: bool,
    /// A CRC32C follows the (padded) data segment.
    pub data: bool,
}

/// Why the head of the receive buffer is not a PDU the connection can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The header digest does not match: the PDU's boundaries cannot be trusted (close).
    HeaderDigest,
    /// The data segment is longer than the limit (close: the stream cannot be resynchronised).
    DataTooLong,
    /// The data digest does not match; the PDU is `len` bytes long and can be skipped (Reject).
    DataDigest {
        /// Bytes of the whole PDU.
        len: usize,
    },
}

/// A whole PDU at the head of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdu<'a> {
    /// The Basic Header Segment.
    pub bhs: &'a [u8; BHS_LEN],
    /// Additional header segments.
    pub ahs: &'a [u8],
    /// The data segment (without padding and digest).
    pub data: &'a [u8],
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// Round up to a multiple of 4.
pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes the PDU at the head of `b` needs in all (header only when fewer than 48 bytes are
/// present). Never more than what [`parse`] would consume for a PDU within `max_data`.
pub fn needs(b: &[u8], dg: Digests) -> usize {
    if b.len() < BHS_LEN {
        return BHS_LEN;
    }
    let ahs = usize::from(b[4]) * 4;
    let dlen = u24(&b[5..8]);
    let hd = if dg.header { DIGEST_LEN } else { 0 };
    let dd = if dg.data && dlen > 0 { DIGEST_LEN } else { 0 };
    BHS_LEN + ahs + hd + pad4(dlen) + dd
}

/// Parse the PDU at the head of `b`: `Ok(None)` while incomplete, `Ok(Some((pdu, len)))` once
/// whole, an error for a PDU the connection cannot accept. `max_data` bounds the data segment.
pub fn parse(
    b: &[u8],
    dg: Digests,
    max_data: usize,
) -> Result<Option<(Pdu<'_>, usize)>, Violation> {
    if b.len() < BHS_LEN {
        return Ok(None);
    }
    let dlen = u24(&b[5..8]);
    if dlen > max_data {
        return Err(Violation::DataTooLong);
    }
    let ahs = usize::from(b[4]) * 4;
    let hend = BHS_LEN + ahs;
    let hd = if dg.header { DIGEST_LEN } else { 0 };
    if dg.header && b.len() >= hend + hd {
        let want = crate::checksum::crc32c(&b[..hend]);
        if b[hend..hend + 4] != want.to_le_bytes() {
            return Err(Violation::HeaderDigest);
        }
    }
    let total = needs(b, dg);
    if b.len() < total {
        return Ok(None);
    }
    let dstart = hend + hd;
    let data = &b[dstart..dstart + dlen];
    if dg.data && dlen > 0 {
        let padded = &b[dstart..dstart + pad4(dlen)];
        let want = crate::checksum::crc32c(padded);
        let at = dstart + pad4(dlen);
        if b[at..at + 4] != want.to_le_bytes() {
            return Err(Violation::DataDigest { len: total });
        }
    }
    let bhs: &[u8; BHS_LEN] = b[..BHS_LEN]
        .try_into()
        .map_err(|_| Violation::DataTooLong)?;
    Ok(Some((
        Pdu {
            bhs,
            ahs: &b[BHS_LEN..hend],
            data,
        },
        total,
    )))
}

/// Accessors of a received Basic Header Segment (every field any request uses).
#[derive(Clone, Copy, Debug)]
pub struct Req<'a>(pub &'a [u8; BHS_LEN]);

impl Req<'_> {
    /// Opcode.
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3F
    }
    /// Immediate delivery bit.
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    /// Byte 1 (F bit and opcode-specific flags).
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    /// The F (final) bit.
    pub fn fin(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    /// Data segment length.
    pub fn data_len(&self) -> usize {
        u24(&self.0[5..8])
    }
    /// The 8-byte LUN field.
    pub fn lun(&self) -> [u8; 8] {
        self.0[8..16].try_into().unwrap_or([0; 8])
    }
    /// A big-endian u32 at byte `at` (`at` + 4 ≤ 48).
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.0[at..at + 4].try_into().unwrap_or([0; 4]))
    }
    /// Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    /// Target Transfer Tag (Data-Out, NOP-Out, Text), or EDTL (SCSI Command), or RTT (TMF).
    pub fn w20(&self) -> u32 {
        self.u32_at(20)
    }
    /// CmdSN (commands), or reserved.
    pub fn cmd_sn(&self) -> u32 {
        self.u32_at(24)
    }
    /// ExpStatSN.
    pub fn exp_stat_sn(&self) -> u32 {
        self.u32_at(28)
    }
    /// The 16-byte CDB of a SCSI Command.
    pub fn cdb(&self) -> [u8; 16] {
        self.0[32..48].try_into().unwrap_or([0; 16])
    }
}

/// A Basic Header Segment being built for the target's answer.
#[derive(Clone, Copy, Debug)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl Bhs {
    /// A header of opcode `op` with byte 1 = `flags`.
    pub fn new(op: u8, flags: u8) -> Self {
        let mut b = [0u8; BHS_LEN];
        b[0] = op;
        b[1] = flags;
        Bhs(b)
    }
    /// Set byte `at`.
    pub fn byte(mut self, at: usize, v: u8) -> Self {
        self.0[at] = v;
        self
    }
    /// Set the big-endian u32 at `at`.
    pub fn u32(mut self, at: usize, v: u32) -> Self {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
        self
    }
    /// Set the LUN field.
    pub fn lun(mut self, lun: [u8; 8]) -> Self {
        self.0[8..16].copy_from_slice(&lun);
        self
    }
    /// Set the Initiator Task Tag.
    pub fn itt(self, itt: u32) -> Self {
        self.u32(16, itt)
    }
    /// Set StatSN, ExpCmdSN and MaxCmdSN (bytes 24..36, the same in every target PDU that
    /// carries them).
    pub fn sns(self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) -> Self {
        self.u32(24, stat_sn)
            .u32(28, exp_cmd_sn)
            .u32(32, max_cmd_sn)
    }
}

/// Append a PDU (header, header digest, data, padding, data digest) to `out`.
pub fn put_pdu(out: &mut Vec<u8>, mut h: Bhs, data: &[u8], dg: Digests) {
    let n = data.len().min(0x00FF_FFFF);
    h.0[4] = 0;
    h.0[5] = (n >> 16) as u8;
    h.0[6] = (n >> 8) as u8;
    h.0[7] = n as u8;
    out.extend_from_slice(&h.0);
    if dg.header {
        out.extend_from_slice(&crate::checksum::crc32c(&h.0).to_le_bytes());
    }
    if n > 0 {
        let data = &data[..n];
        out.extend_from_slice(data);
        let pad = pad4(n) - n;
        out.extend_from_slice(&[0u8; 3][..pad]);
        if dg.data {
            let c = crate::checksum::crc32c_append(crate::checksum::crc32c(data), &[0u8; 3][..pad]);
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
}

/// Serial number arithmetic (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// Serial number arithmetic: `a <= b`.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_32_zero_bytes_is_the_rfc_example_on_the_wire() {
        // RFC 7143 appendix B.4: 32 bytes of zeroes give the bytes aa 36 91 8a.
        assert_eq!(
            crate::checksum::crc32c(&[0u8; 32]).to_le_bytes(),
            [0xaa, 0x36, 0x91, 0x8a]
        );
    }

    #[test]
    fn pdus_round_trip_with_digests_and_padding() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut out = Vec::new();
        put_pdu(&mut out, Bhs::new(op::NOP_IN, 0x80).itt(7), b"hello", dg);
        assert_eq!(out.len(), 48 + 4 + 8 + 4);
        for cut in 0..out.len() {
            assert_eq!(parse(&out[..cut], dg, 1024), Ok(None), "cut {cut}");
        }
        let (p, n) = parse(&out, dg, 1024).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(p.data, b"hello");
        assert_eq!(Req(p.bhs).itt(), 7);
        assert_eq!(needs(&out, dg), n);
        let mut bad = out.clone();
        bad[49] ^= 1;
        assert_eq!(parse(&bad, dg, 1024), Err(Violation::HeaderDigest));
        let mut bad = out.clone();
        bad[53] ^= 1;
        assert_eq!(parse(&bad, dg, 1024), Err(Violation::DataDigest { len: n }));
        assert_eq!(parse(&out, dg, 4), Err(Violation::DataTooLong));
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(0xFFFF_FFFF, 0));
        assert!(sn_lt(1, 2));
        assert!(!sn_lt(2, 2));
        assert!(sn_le(2, 2));
        assert!(!sn_lt(0, 0xFFFF_FFFF));
    }
}
