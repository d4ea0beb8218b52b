//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 §6.4, §6.18), pure: the parameter
//! list parser, the resolution of its segments against this target's logical units, and the
//! RECEIVE COPY RESULTS pages.
//!
//! Model: the copy manager is the target itself and copies only between logical units of the
//! session's target (ESXi's "Clone" offload, `docs/iscsi.md`). [`parse`] checks a parameter
//! list against the limits [`operating_parameters`] advertises and returns its CSCD and segment
//! descriptors; [`resolve`] turns every block → block segment into an [`Extent`] (volume, byte
//! offsets, length), checking every CSCD a segment names and every range *before* anything is
//! copied, so a refused copy changes nothing. The connection (`conn/copy.rs`) then moves each
//! extent in chunks of [`CHUNK_BYTES`] through the volumes' channels, from its end backwards when
//! the destination overlaps the source from above, so an overlapping copy has the effect of one
//! whole read followed by one whole write.
//!
//! Supported: CSCD descriptors of type E4h (identification descriptor) whose designator is the
//! NAA designator VPD 83h reports for a logical unit of this target, peripheral device type 0;
//! segment descriptors of type 02h (block → block); LIST ID USAGE 00b (held for RECEIVE COPY
//! RESULTS), 10b and 11b (SNLID). No inline or embedded data, no stream devices.
//!
//! Sense (what libiscsi's `ExtendedCopy.*` expects, SPC-4 §6.4.3): a list shorter than its
//! header says or longer than MAXIMUM DESCRIPTOR LIST LENGTH: PARAMETER LIST LENGTH ERROR; more
//! descriptors than advertised: TOO MANY TARGET / SEGMENT DESCRIPTORS; another descriptor
//! type: UNSUPPORTED TARGET / SEGMENT DESCRIPTOR TYPE CODE (all ILLEGAL REQUEST); a segment
//! naming a CSCD that is not in the list or not a logical unit of this target, or a range
//! beyond the end of a logical unit: COPY ABORTED / COPY TARGET DEVICE NOT REACHABLE.
//!
//! Invariants: nothing here panics or reads out of bounds, whatever the bytes (fuzzed:
//! `scsi_xcopy`); descriptor counts and lengths are bounded by the advertised limits before
//! anything is allocated for them.

use super::scsi::Sense;

/// Most CSCD descriptors in one list (MAXIMUM CSCD DESCRIPTOR COUNT).
pub const MAX_CSCD: usize = 8;
/// Most segment descriptors in one list (MAXIMUM SEGMENT DESCRIPTOR COUNT).
pub const MAX_SEGMENTS: usize = 16;
/// Most bytes of CSCD and segment descriptors together (MAXIMUM DESCRIPTOR LIST LENGTH): room
/// for one more of each than allowed, so too many descriptors are reported as such.
pub const MAX_DESC_LIST_BYTES: usize = 1024;
// Room for one more descriptor of each kind than allowed, so a list with too many is reported
// as such rather than as too long (the order libiscsi's ExtendedCopy.DescrLimits checks).
const _: () = assert!((MAX_CSCD + 1) * CSCD_LEN + B2B_LEN <= MAX_DESC_LIST_BYTES);
const _: () = assert!(CSCD_LEN + (MAX_SEGMENTS + 1) * B2B_LEN <= MAX_DESC_LIST_BYTES);
/// Bytes copied per device round trip (one buffer of this size per running copy).
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Copies one session runs at once (MAXIMUM CONCURRENT COPIES).
pub const MAX_CONCURRENT: usize = 8;
/// Copies the whole daemon runs at once (TOTAL CONCURRENT COPIES): bounds the memory the copy
/// buffers take (64 MiB).
pub const TOTAL_CONCURRENT: u32 = 64;
/// Finished copies whose status a session keeps for RECEIVE COPY RESULTS (oldest dropped).
pub const HELD_RESULTS: usize = 16;

/// Length of the parameter list header.
pub const HEADER_LEN: usize = 16;
/// Length of a CSCD descriptor of the types E0h..E9h (E4h among them).
pub const CSCD_LEN: usize = 32;
/// Length of a block → block segment descriptor.
pub const B2B_LEN: usize = 28;
/// CSCD descriptor type: identification descriptor.
pub const CSCD_IDENT: u8 = 0xE4;
/// Segment descriptor type: block device to block device.
pub const SEG_B2B: u8 = 0x02;
/// The descriptor type codes implemented, as RECEIVE COPY RESULTS lists them.
pub const IMPLEMENTED: [u8; 2] = [SEG_B2B, CSCD_IDENT];

pub use super::scsi::rcr;

/// Sense data of the copy manager.
pub mod sense {
    use super::Sense;
    use crate::frontend::iscsi::scsi::key;

    const fn s(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }
    /// ILLEGAL REQUEST / TOO MANY TARGET DESCRIPTORS.
    pub const TOO_MANY_CSCD: Sense = s(key::ILLEGAL_REQUEST, 0x26, 0x06);
    /// ILLEGAL REQUEST / UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_CSCD: Sense = s(key::ILLEGAL_REQUEST, 0x26, 0x07);
    /// ILLEGAL REQUEST / TOO MANY SEGMENT DESCRIPTORS.
    pub const TOO_MANY_SEGMENTS: Sense = s(key::ILLEGAL_REQUEST, 0x26, 0x08);
    /// ILLEGAL REQUEST / UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_SEGMENT: Sense = s(key::ILLEGAL_REQUEST, 0x26, 0x09);
    /// ILLEGAL REQUEST / OPERATION IN PROGRESS (a held list identifier in use).
    pub const OPERATION_IN_PROGRESS: Sense = s(key::ILLEGAL_REQUEST, 0x00, 0x16);
    /// ILLEGAL REQUEST / INSUFFICIENT RESOURCES (too many concurrent copies).
    pub const INSUFFICIENT_RESOURCES: Sense = s(key::ILLEGAL_REQUEST, 0x55, 0x03);
    /// COPY ABORTED / COPY TARGET DEVICE NOT REACHABLE.
    pub const NOT_REACHABLE: Sense = s(key::COPY_ABORTED, 0x0D, 0x02);
}

/// LIST ID USAGE (header byte 1, bits 4..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListUsage {
    /// 00b: the status is held for RECEIVE COPY RESULTS.
    Hold,
    /// 10b: the list identifier is unique among running copies, nothing is held.
    Discard,
    /// 11b: no list identifier (it must be 0), nothing is held.
    NoList,
}

/// A CSCD identification descriptor (type E4h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cscd {
    /// NUL bit (SPC-3; obsolete in SPC-4): a null device, refused when a segment uses it.
    pub nul: bool,
    /// PERIPHERAL DEVICE TYPE.
    pub peripheral: u8,
    /// Designator: code set, association, type (as in VPD 83h).
    pub code_set: u8,
    /// Designator association.
    pub assoc: u8,
    /// Designator type.
    pub kind: u8,
    /// Designator bytes (`len` of them).
    pub id: [u8; 16],
    /// Designator length.
    pub len: u8,
    /// DISK BLOCK LENGTH (peripheral device type 0).
    pub block_len: u32,
}

impl Cscd {
    /// The logical unit NAA designator (binary, association 00b, 8 bytes) it names, if that is
    /// what it is.
    pub fn naa(&self) -> Option<[u8; 8]> {
        if self.code_set != 1 || self.assoc != 0 || self.kind != 3 || self.len != 8 {
            return None;
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&self.id[..8]);
        Some(n)
    }
}

/// A block → block segment descriptor (type 02h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// SOURCE CSCD DESCRIPTOR ID.
    pub src: u16,
    /// DESTINATION CSCD DESCRIPTOR ID.
    pub dst: u16,
    /// DC: the block count is in destination blocks (the same here: block lengths must match).
    pub dc: bool,
    /// BLOCK DEVICE NUMBER OF BLOCKS.
    pub blocks: u16,
    /// SOURCE BLOCK DEVICE LOGICAL BLOCK ADDRESS.
    pub src_lba: u64,
    /// DESTINATION BLOCK DEVICE LOGICAL BLOCK ADDRESS.
    pub dst_lba: u64,
}

/// A parsed parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamList {
    /// LIST IDENTIFIER.
    pub list_id: u8,
    /// LIST ID USAGE.
    pub usage: ListUsage,
    /// CSCD descriptors, by CSCD descriptor ID.
    pub cscds: Vec<Cscd>,
    /// Segment descriptors, in processing order.
    pub segments: Vec<Segment>,
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Parse an EXTENDED COPY (LID1) parameter list; `Ok(None)` for an empty one (nothing to do,
/// SPC-4 §6.4.1).
pub fn parse(p: &[u8]) -> Result<Option<ParamList>, Sense> {
    if p.is_empty() {
        return Ok(None);
    }
    if p.len() < HEADER_LEN {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let list_id = p[0];
    let usage = match (p[1] >> 3) & 0x03 {
        0 => ListUsage::Hold,
        2 => ListUsage::Discard,
        3 => ListUsage::NoList,
        _ => return Err(Sense::INVALID_FIELD_PARAM),
    };
    if usage == ListUsage::NoList && list_id != 0 {
        return Err(Sense::INVALID_FIELD_PARAM);
    }
    let cscd_len = be16(p, 2);
    let seg_len = be32(p, 8) as usize;
    let inline_len = be32(p, 12) as usize;
    // Lengths first (spec order: the combined length, then the counts), each compared before
    // it is added so nothing overflows.
    if seg_len > MAX_DESC_LIST_BYTES || cscd_len + seg_len > MAX_DESC_LIST_BYTES {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if inline_len != 0 {
        // MAXIMUM INLINE DATA LENGTH is 0.
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if HEADER_LEN + cscd_len + seg_len > p.len() {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if cscd_len.div_ceil(CSCD_LEN) > MAX_CSCD {
        return Err(sense::TOO_MANY_CSCD);
    }
    let mut cscds = Vec::with_capacity(cscd_len / CSCD_LEN);
    let list = &p[HEADER_LEN..HEADER_LEN + cscd_len];
    let mut at = 0;
    while at < list.len() {
        if list[at] != CSCD_IDENT {
            return Err(sense::UNSUPPORTED_CSCD);
        }
        let Some(d) = list.get(at..at + CSCD_LEN) else {
            return Err(Sense::PARAM_LIST_LENGTH);
        };
        let peripheral = d[1] & 0x1F;
        let len = d[7];
        if len > 16 {
            // The designator must fit its 20 bytes (4 of header, at most 16 of designator).
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        let mut id = [0u8; 16];
        id[..usize::from(len)].copy_from_slice(&d[8..8 + usize::from(len)]);
        cscds.push(Cscd {
            nul: d[1] & 0x20 != 0,
            peripheral,
            code_set: d[4] & 0x0F,
            assoc: (d[5] >> 4) & 0x03,
            kind: d[5] & 0x0F,
            id,
            len,
            block_len: be32(d, 28) & 0x00FF_FFFF,
        });
        at += CSCD_LEN;
    }
    let mut segments = Vec::new();
    let list = &p[HEADER_LEN + cscd_len..HEADER_LEN + cscd_len + seg_len];
    let mut at = 0;
    while at < list.len() {
        if segments.len() == MAX_SEGMENTS {
            return Err(sense::TOO_MANY_SEGMENTS);
        }
        if list[at] != SEG_B2B {
            return Err(sense::UNSUPPORTED_SEGMENT);
        }
        let Some(d) = list.get(at..at + B2B_LEN) else {
            return Err(Sense::PARAM_LIST_LENGTH);
        };
        if be16(d, 2) != B2B_LEN - 4 {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        segments.push(Segment {
            src: be16(d, 4) as u16,
            dst: be16(d, 6) as u16,
            dc: d[1] & 0x02 != 0,
            blocks: be16(d, 10) as u16,
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        });
        at += B2B_LEN;
    }
    Ok(Some(ParamList {
        list_id,
        usage,
        cscds,
        segments,
    }))
}

/// A logical unit of this target a CSCD descriptor resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Index of the LUN in the target's list.
    pub lun_idx: usize,
    /// Volume index.
    pub vol: usize,
    /// Logical blocks.
    pub blocks: u64,
    /// Logical block length in bytes.
    pub block: u32,
}

/// One segment's copy, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Source unit.
    pub src: Unit,
    /// Destination unit.
    pub dst: Unit,
    /// Source byte offset.
    pub src_off: u64,
    /// Destination byte offset.
    pub dst_off: u64,
    /// Bytes.
    pub len: u64,
    /// Copy from the end backwards: the destination overlaps the source from above (same
    /// volume), so a forward copy would read blocks it already overwrote.
    pub backward: bool,
}

/// Resolve every segment of `l` with `unit` (a logical unit of this target by its NAA
/// designator): the extents to copy, or the index of the first segment that cannot be done and
/// why. Nothing is copied unless every segment resolves.
pub fn resolve(
    l: &ParamList,
    unit: impl Fn(&[u8; 8]) -> Option<Unit>,
) -> Result<Vec<Extent>, (usize, Sense)> {
    let find = |id: u16| -> Result<Unit, Sense> {
        // IDs 0000h..07FFh index the list; the others (the copy manager itself, null
        // devices) are not supported.
        let c = l.cscds.get(usize::from(id)).ok_or(sense::NOT_REACHABLE)?;
        if c.nul || c.peripheral != 0 {
            return Err(sense::NOT_REACHABLE);
        }
        let u = c.naa().and_then(|n| unit(&n)).ok_or(sense::NOT_REACHABLE)?;
        if c.block_len != u.block {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        Ok(u)
    };
    let mut out = Vec::with_capacity(l.segments.len());
    for (i, s) in l.segments.iter().enumerate() {
        let src = find(s.src).map_err(|e| (i, e))?;
        let dst = find(s.dst).map_err(|e| (i, e))?;
        if src.block != dst.block {
            return Err((i, Sense::INVALID_FIELD_PARAM));
        }
        let n = u64::from(s.blocks);
        let fits = |lba: u64, u: &Unit| lba <= u.blocks && n <= u.blocks - lba;
        if !fits(s.src_lba, &src) || !fits(s.dst_lba, &dst) {
            return Err((i, sense::NOT_REACHABLE));
        }
        let bs = u64::from(src.block);
        let (src_off, dst_off, len) = (s.src_lba * bs, s.dst_lba * bs, n * bs);
        out.push(Extent {
            src,
            dst,
            src_off,
            dst_off,
            len,
            backward: src.vol == dst.vol && dst_off > src_off && dst_off < src_off + len,
        });
    }
    Ok(out)
}

fn put16(v: &mut [u8], at: usize, x: u16) {
    v[at..at + 2].copy_from_slice(&x.to_be_bytes());
}
fn put32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_be_bytes());
}

/// RECEIVE COPY RESULTS, OPERATING PARAMETERS (SPC-4 §6.18.4) for a logical unit with blocks
/// of `block` bytes.
pub fn operating_parameters(block: u32) -> Vec<u8> {
    let mut b = vec![0u8; 44 + IMPLEMENTED.len()];
    let n = (b.len() - 4) as u32;
    put32(&mut b, 0, n);
    b[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
    put16(&mut b, 8, MAX_CSCD as u16);
    put16(&mut b, 10, MAX_SEGMENTS as u16);
    put32(&mut b, 12, MAX_DESC_LIST_BYTES as u32);
    // MAXIMUM SEGMENT LENGTH: a block → block segment moves at most 65535 blocks.
    put32(
        &mut b,
        16,
        u32::try_from(u64::from(u16::MAX) * u64::from(block)).unwrap_or(u32::MAX),
    );
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0.
    put16(&mut b, 34, TOTAL_CONCURRENT as u16);
    b[36] = MAX_CONCURRENT as u8;
    b[37] = block.max(1).trailing_zeros() as u8; // DATA SEGMENT GRANULARITY (log2)
    b[43] = IMPLEMENTED.len() as u8;
    b[44..].copy_from_slice(&IMPLEMENTED);
    b
}

/// Third-party copy descriptor types of the Third-party Copy VPD page (SPC-4 §7.8.17).
pub mod tpc {
    /// Supported Commands.
    pub const SUPPORTED_COMMANDS: u16 = 0x0001;
    /// Parameter Data.
    pub const PARAMETER_DATA: u16 = 0x0004;
    /// Supported Descriptors.
    pub const SUPPORTED_DESCRIPTORS: u16 = 0x0008;
    /// Supported CSCD Descriptor IDs.
    pub const SUPPORTED_CSCD_IDS: u16 = 0x000C;
    /// General Copy Operations.
    pub const GENERAL_COPY_OPERATIONS: u16 = 0x8001;
}

/// One third-party copy descriptor: type, length, `body`, padded with zeroes to a multiple of
/// four bytes (the length counts the bytes after the length field, pad included).
fn tpc_descriptor(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(padded as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// The descriptors of the Third-party Copy VPD page (8Fh, SPC-4 §7.8.17; the page header is the
/// caller's) for a logical unit with blocks of `block` bytes: what [`operating_parameters`]
/// says, in the VPD's form. Supported Commands: EXTENDED COPY (83h) service action 00h (LID1)
/// and RECEIVE COPY RESULTS (84h) service actions 00h, 03h, 04h; Parameter Data: the descriptor
/// limits, no inline data; Supported Descriptors: [`IMPLEMENTED`]; Supported CSCD Descriptor
/// IDs: none (only IDs 0000h..07FFh, indexes into the list, are accepted); General Copy
/// Operations: the concurrency limits, the longest segment and the data segment granularity
/// (one block).
pub fn third_party_copy_descriptors(block: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    // Supported Commands: COMMANDS SUPPORTED LIST LENGTH, then per command its opcode, the
    // length of its service action list and the service actions.
    let commands: [(u8, &[u8]); 2] = [
        (0x83, &[0x00]),
        (
            0x84,
            &[
                rcr::COPY_STATUS,
                rcr::OPERATING_PARAMETERS,
                rcr::FAILED_SEGMENT_DETAILS,
            ],
        ),
    ];
    let mut list = Vec::new();
    for (op, sas) in commands {
        list.push(op);
        list.push(sas.len() as u8);
        list.extend_from_slice(sas);
    }
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    tpc_descriptor(&mut out, tpc::SUPPORTED_COMMANDS, &body);
    // Parameter Data: 4 reserved bytes, MAXIMUM CSCD DESCRIPTOR COUNT, MAXIMUM SEGMENT
    // DESCRIPTOR COUNT, MAXIMUM DESCRIPTOR LIST LENGTH, MAXIMUM INLINE DATA LENGTH (0), 12
    // reserved bytes.
    let mut body = vec![0u8; 28];
    put16(&mut body, 4, MAX_CSCD as u16);
    put16(&mut body, 6, MAX_SEGMENTS as u16);
    put32(&mut body, 8, MAX_DESC_LIST_BYTES as u32);
    tpc_descriptor(&mut out, tpc::PARAMETER_DATA, &body);
    // Supported Descriptors: SUPPORTED DESCRIPTOR LIST LENGTH, then the type codes.
    let mut body = vec![IMPLEMENTED.len() as u8];
    body.extend_from_slice(&IMPLEMENTED);
    tpc_descriptor(&mut out, tpc::SUPPORTED_DESCRIPTORS, &body);
    // Supported CSCD Descriptor IDs: SUPPORTED CSCD DESCRIPTOR IDS LIST LENGTH 0.
    tpc_descriptor(&mut out, tpc::SUPPORTED_CSCD_IDS, &[0, 0]);
    // General Copy Operations: TOTAL CONCURRENT COPIES, MAXIMUM IDENTIFIED CONCURRENT COPIES,
    // MAXIMUM SEGMENT LENGTH (bytes), DATA SEGMENT GRANULARITY and INLINE DATA GRANULARITY
    // (log2 of bytes), 14 reserved bytes.
    let mut body = vec![0u8; 28];
    put32(&mut body, 0, TOTAL_CONCURRENT);
    put32(&mut body, 4, MAX_CONCURRENT as u32);
    put32(
        &mut body,
        8,
        u32::try_from(u64::from(u16::MAX) * u64::from(block)).unwrap_or(u32::MAX),
    );
    body[12] = block.max(1).trailing_zeros() as u8;
    tpc_descriptor(&mut out, tpc::GENERAL_COPY_OPERATIONS, &body);
    out
}

/// COPY MANAGER STATUS values.
pub mod status {
    /// The copy is running.
    pub const IN_PROGRESS: u8 = 0x00;
    /// Finished without error.
    pub const GOOD: u8 = 0x01;
    /// Finished with an error.
    pub const ERROR: u8 = 0x02;
}

/// What a session knows about a copy with a held list identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// LIST IDENTIFIER.
    pub list_id: u8,
    /// COPY MANAGER STATUS.
    pub status: u8,
    /// Segments processed (the whole ones).
    pub segments: u16,
    /// Bytes written to destinations.
    pub bytes: u64,
    /// The sense data the copy ended with (status [`status::ERROR`]).
    pub sense: Option<Sense>,
}

/// RECEIVE COPY RESULTS, COPY STATUS (SPC-4 §6.18.3).
pub fn copy_status(h: &Held) -> Vec<u8> {
    let mut b = vec![0u8; 12];
    put32(&mut b, 0, 8);
    b[4] = h.status & 0x7F; // HDD 0: no held data
    put16(&mut b, 5, h.segments);
    // TRANSFER COUNT UNITS: bytes, or KiB when the count does not fit.
    let (units, count) = match u32::try_from(h.bytes) {
        Ok(c) => (0u8, c),
        Err(_) => (1u8, u32::try_from(h.bytes >> 10).unwrap_or(u32::MAX)),
    };
    b[7] = units;
    put32(&mut b, 8, count);
    b
}

/// RECEIVE COPY RESULTS, FAILED SEGMENT DETAILS (SPC-4 §6.18.5): the status and sense data a
/// copy that failed ended with (GOOD and no sense data for one that did not).
pub fn failed_segment_details(h: &Held) -> Vec<u8> {
    let f = h
        .sense
        .filter(|_| h.status == status::ERROR)
        .map(|s| s.fixed());
    let sense: &[u8] = f.as_ref().map_or(&[], |f| &f[..]);
    let mut b = vec![0u8; 60 + sense.len()];
    let n = (b.len() - 4) as u32;
    put32(&mut b, 0, n);
    if !sense.is_empty() {
        b[56] = super::scsi::status::CHECK_CONDITION;
    }
    put16(&mut b, 58, sense.len() as u16);
    b[60..].copy_from_slice(sense);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn third_party_copy_vpd_descriptors_have_spc4_offsets() {
        let d = third_party_copy_descriptors(512);
        assert_eq!(d.len(), 16 + 32 + 8 + 8 + 32);
        // Supported Commands (0001h): length 12 (13 bytes padded to 16), list length 8:
        // 83h with 1 service action (00h), 84h with 3 (00h, 03h, 04h).
        assert_eq!(&d[0..4], &[0x00, 0x01, 0x00, 0x0C]);
        assert_eq!(d[4], 8);
        assert_eq!(&d[5..13], &[0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04]);
        assert_eq!(&d[13..16], &[0, 0, 0]);
        // Parameter Data (0004h): length 28; reserved 4..8; MAXIMUM CSCD DESCRIPTOR COUNT at 8,
        // MAXIMUM SEGMENT DESCRIPTOR COUNT at 10, MAXIMUM DESCRIPTOR LIST LENGTH at 12, MAXIMUM
        // INLINE DATA LENGTH at 16.
        let p = &d[16..48];
        assert_eq!(&p[0..4], &[0x00, 0x04, 0x00, 0x1C]);
        assert_eq!(&p[4..8], &[0; 4]);
        assert_eq!(&p[8..10], &(MAX_CSCD as u16).to_be_bytes());
        assert_eq!(&p[10..12], &(MAX_SEGMENTS as u16).to_be_bytes());
        assert_eq!(&p[12..16], &(MAX_DESC_LIST_BYTES as u32).to_be_bytes());
        assert_eq!(&p[16..32], &[0; 16]);
        // Supported Descriptors (0008h): length 4, list length 2: 02h, E4h.
        assert_eq!(&d[48..56], &[0x00, 0x08, 0x00, 0x04, 2, 0x02, 0xE4, 0]);
        // Supported CSCD Descriptor IDs (000Ch): length 4, list length 0.
        assert_eq!(&d[56..64], &[0x00, 0x0C, 0x00, 0x04, 0, 0, 0, 0]);
        // General Copy Operations (8001h): length 28; TOTAL CONCURRENT COPIES at 4, MAXIMUM
        // IDENTIFIED CONCURRENT COPIES at 8, MAXIMUM SEGMENT LENGTH at 12, DATA SEGMENT
        // GRANULARITY at 16, INLINE DATA GRANULARITY at 17.
        let g = &d[64..96];
        assert_eq!(&g[0..4], &[0x80, 0x01, 0x00, 0x1C]);
        assert_eq!(&g[4..8], &TOTAL_CONCURRENT.to_be_bytes());
        assert_eq!(&g[8..12], &(MAX_CONCURRENT as u32).to_be_bytes());
        assert_eq!(&g[12..16], &(65535u32 * 512).to_be_bytes());
        assert_eq!((g[16], g[17]), (9, 0));
        assert_eq!(&g[18..32], &[0; 14]);
        // Every descriptor's length is a multiple of 4 and they tile the page.
        let mut at = 0;
        while at < d.len() {
            let len = usize::from(u16::from_be_bytes([d[at + 2], d[at + 3]]));
            assert_eq!(len % 4, 0);
            at += 4 + len;
        }
        assert_eq!(at, d.len());
        // 4 KiB blocks: granularity 12.
        assert_eq!(third_party_copy_descriptors(4096)[64 + 16], 12);
    }

    const NAA: [u8; 8] = [0x3A, 1, 2, 3, 4, 5, 6, 7];

    fn cscd(out: &mut Vec<u8>, naa: &[u8; 8]) {
        let mut d = [0u8; CSCD_LEN];
        d[0] = CSCD_IDENT;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = 8;
        d[8..16].copy_from_slice(naa);
        d[29..32].copy_from_slice(&[0, 2, 0]);
        out.extend_from_slice(&d);
    }

    fn seg(out: &mut Vec<u8>, src: u16, dst: u16, blocks: u16, s: u64, d: u64) {
        let mut x = [0u8; B2B_LEN];
        x[0] = SEG_B2B;
        x[3] = 0x18;
        x[4..6].copy_from_slice(&src.to_be_bytes());
        x[6..8].copy_from_slice(&dst.to_be_bytes());
        x[10..12].copy_from_slice(&blocks.to_be_bytes());
        x[12..20].copy_from_slice(&s.to_be_bytes());
        x[20..28].copy_from_slice(&d.to_be_bytes());
        out.extend_from_slice(&x);
    }

    fn list(ncscd: usize, segs: &[(u16, u16, u16, u64, u64)]) -> Vec<u8> {
        let mut c = Vec::new();
        for _ in 0..ncscd {
            cscd(&mut c, &NAA);
        }
        let mut s = Vec::new();
        for &(a, b, n, x, y) in segs {
            seg(&mut s, a, b, n, x, y);
        }
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 7;
        p[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        p[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        p.extend_from_slice(&c);
        p.extend_from_slice(&s);
        p
    }

    fn unit(n: &[u8; 8]) -> Option<Unit> {
        (n == &NAA).then_some(Unit {
            lun_idx: 0,
            vol: 3,
            blocks: 1000,
            block: 512,
        })
    }

    #[test]
    fn a_well_formed_list_parses_and_resolves_to_byte_extents() {
        let p = list(1, &[(0, 0, 10, 0, 990), (0, 0, 0, 5, 5)]);
        let l = parse(&p).unwrap().unwrap();
        assert_eq!((l.list_id, l.usage), (7, ListUsage::Hold));
        assert_eq!(l.cscds[0].naa(), Some(NAA));
        let e = resolve(&l, unit).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].src_off, e[0].dst_off, e[0].len), (0, 990 * 512, 5120));
        assert_eq!(e[1].len, 0);
        assert!(!e[0].backward);
        let l = parse(&list(
            1,
            &[(0, 0, 10, 0, 9), (0, 0, 10, 9, 0), (0, 0, 10, 0, 10)],
        ))
        .unwrap()
        .unwrap();
        let b: Vec<bool> = resolve(&l, unit)
            .unwrap()
            .iter()
            .map(|e| e.backward)
            .collect();
        assert_eq!(b, [true, false, false]);
        assert_eq!(parse(&[]), Ok(None));
    }

    #[test]
    fn malformed_lists_get_the_sense_spc4_names() {
        let good = list(1, &[(0, 0, 10, 0, 0)]);
        // Truncated anywhere: parameter list length error.
        for n in [1, 15, 16, 47, good.len() - 1] {
            assert_eq!(parse(&good[..n]), Err(Sense::PARAM_LIST_LENGTH), "{n}");
        }
        // Too many CSCD descriptors, too many segments, a list longer than allowed.
        let p = list(MAX_CSCD + 1, &[(0, 0, 1, 0, 0)]);
        assert_eq!(parse(&p), Err(sense::TOO_MANY_CSCD));
        let p = list(1, &[(0, 0, 1, 0, 0); MAX_SEGMENTS + 1]);
        assert_eq!(parse(&p), Err(sense::TOO_MANY_SEGMENTS));
        let p = list(MAX_CSCD + 1, &[(0, 0, 1, 0, 0); 30]);
        assert_eq!(parse(&p), Err(Sense::PARAM_LIST_LENGTH));
        // Other descriptor types.
        let mut p = good.clone();
        p[HEADER_LEN] = 0xE0;
        assert_eq!(parse(&p), Err(sense::UNSUPPORTED_CSCD));
        let mut p = good.clone();
        p[HEADER_LEN + CSCD_LEN] = 0x03;
        assert_eq!(parse(&p), Err(sense::UNSUPPORTED_SEGMENT));
        // A wrong segment descriptor length, reserved LIST ID USAGE, inline data.
        let mut p = good.clone();
        p[HEADER_LEN + CSCD_LEN + 3] = 0x14;
        assert_eq!(parse(&p), Err(Sense::INVALID_FIELD_PARAM));
        let mut p = good.clone();
        p[1] = 0x08;
        assert_eq!(parse(&p), Err(Sense::INVALID_FIELD_PARAM));
        let mut p = good.clone();
        p[1] = 0x18; // no list identifier, but one given
        assert_eq!(parse(&p), Err(Sense::INVALID_FIELD_PARAM));
        let mut p = good.clone();
        p[15] = 4;
        assert_eq!(parse(&p), Err(Sense::PARAM_LIST_LENGTH));
        // Huge lengths do not overflow.
        let mut p = good.clone();
        p[2..4].copy_from_slice(&[0xFF, 0xFF]);
        p[8..12].copy_from_slice(&[0xFF; 4]);
        assert_eq!(parse(&p), Err(Sense::PARAM_LIST_LENGTH));
    }

    #[test]
    fn unknown_units_bad_indexes_and_ranges_abort_the_copy_before_it_starts() {
        let l = parse(&list(1, &[(0, 0, 1, 0, 0), (0, 1, 1, 0, 0)]))
            .unwrap()
            .unwrap();
        assert_eq!(resolve(&l, unit), Err((1, sense::NOT_REACHABLE)));
        let l = parse(&list(1, &[(0, 0, 11, 0, 990)])).unwrap().unwrap();
        assert_eq!(resolve(&l, unit), Err((0, sense::NOT_REACHABLE)));
        let l = parse(&list(1, &[(0, 0, 1, u64::MAX, 0)])).unwrap().unwrap();
        assert_eq!(resolve(&l, unit), Err((0, sense::NOT_REACHABLE)));
        let l = parse(&list(1, &[(0, 0, 1, 0, 0)])).unwrap().unwrap();
        assert_eq!(resolve(&l, |_| None), Err((0, sense::NOT_REACHABLE)));
        let mut p = list(1, &[(0, 0, 1, 0, 0)]);
        p[HEADER_LEN + 1] = 0x20; // NUL
        let l = parse(&p).unwrap().unwrap();
        assert_eq!(resolve(&l, unit), Err((0, sense::NOT_REACHABLE)));
        let mut p = list(1, &[(0, 0, 1, 0, 0)]);
        p[HEADER_LEN + 30] = 0x10; // DISK BLOCK LENGTH 4096
        let l = parse(&p).unwrap().unwrap();
        assert_eq!(resolve(&l, unit), Err((0, Sense::INVALID_FIELD_PARAM)));
    }

    #[test]
    fn mutated_lists_never_panic_and_keep_to_the_limits() {
        // A cheap stand-in for the `scsi_xcopy` fuzz target in the unit tests: every single-byte
        // change of a valid list, at every position, with a few values.
        let base = list(3, &[(0, 1, 40, 0, 900), (2, 0, 3, 7, 8), (1, 1, 0, 0, 0)]);
        for i in 0..base.len() {
            for v in [0x00, 0x01, 0x02, 0x7F, 0x80, 0xE4, 0xFF] {
                let mut p = base.clone();
                p[i] = v;
                for k in [p.len(), i, i / 2] {
                    if let Ok(Some(l)) = parse(&p[..k]) {
                        assert!(l.cscds.len() <= MAX_CSCD && l.segments.len() <= MAX_SEGMENTS);
                        if let Ok(e) = resolve(&l, unit) {
                            assert!(e.iter().all(|e| e.dst_off + e.len <= 1000 * 512));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn result_pages_have_the_spc4_layout() {
        let op = operating_parameters(512);
        assert_eq!(
            u32::from_be_bytes(op[0..4].try_into().unwrap()) as usize,
            op.len() - 4
        );
        assert_eq!(u16::from_be_bytes([op[8], op[9]]) as usize, MAX_CSCD);
        assert_eq!(u16::from_be_bytes([op[10], op[11]]) as usize, MAX_SEGMENTS);
        assert_eq!(op[37], 9);
        assert_eq!(&op[44..], &IMPLEMENTED);
        let h = Held {
            list_id: 1,
            status: status::GOOD,
            segments: 2,
            bytes: 5 << 32,
            sense: None,
        };
        let cs = copy_status(&h);
        assert_eq!((cs[3], cs[4], cs[6], cs[7]), (8, 1, 2, 1));
        assert_eq!(u32::from_be_bytes(cs[8..12].try_into().unwrap()), 5 << 22);
        assert_eq!(failed_segment_details(&h)[..4], [0, 0, 0, 56]);
        let f = failed_segment_details(&Held {
            status: status::ERROR,
            sense: Some(sense::NOT_REACHABLE),
            ..h
        });
        assert_eq!((f[56], f[59], f[62]), (2, 18, 0x0A));
    }
}
