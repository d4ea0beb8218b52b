//! SCSI command layer, part two: the data-in pages (INQUIRY and its VPD pages, mode pages,
//! READ CAPACITY, REPORT LUNS, REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES,
//! GET LBA STATUS), as pure builders over a [`LunInfo`].
//!
//! Model: every page states only what the connection does (`docs/iscsi.md`): write cache on
//! (SYNCHRONIZE CACHE and FUA are honoured), no protection information, resource-provisioned
//! logical block provisioning with UNMAP and WRITE SAME (UNMAP) and zeroes read after unmap,
//! implicit ALUA with the volume's path state, one target port per site.
//!
//! Invariants: builders never panic and return the whole page; the caller cuts it to the
//! allocation length (and reports the residual).

use super::scsi::{SUPPORTED, Sense};
use crate::bdev::volume::PathState;

/// Most blocks one READ or WRITE may move (Block Limits MAXIMUM TRANSFER LENGTH is this in
/// blocks of the volume).
pub const MAX_XFER_BYTES: u32 = 1 << 20;
/// Most blocks one COMPARE AND WRITE may cover.
pub const MAX_CAW_BLOCKS: u8 = 32;
/// Most UNMAP block descriptors in one command.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Most blocks one WRITE SAME may cover (Block Limits MAXIMUM WRITE SAME LENGTH).
pub const MAX_WRITE_SAME_BLOCKS: u64 = 65535;
/// Vendor identification (8 bytes).
pub const VENDOR: &[u8; 8] = b"TWINBLK ";
/// Product identification (16 bytes).
pub const PRODUCT: &[u8; 16] = b"twinblk volume  ";
/// Product revision (4 bytes).
pub const REVISION: &[u8; 4] = b"0001";

/// What the pages say about one logical unit.
#[derive(Clone, Debug)]
pub struct LunInfo {
    /// Logical blocks.
    pub blocks: u64,
    /// Logical block length in bytes.
    pub block: u32,
    /// NAA (locally assigned, type 3) identifier: the same at both sites for a volume.
    pub naa: [u8; 8],
    /// Unit serial number (ASCII).
    pub serial: String,
    /// The target's name (IQN).
    pub target: String,
    /// This site's target port group id (also its relative target port id).
    pub tpg: u16,
    /// This site's path state for the volume.
    pub path: PathState,
    /// The other site's path state as this site knows it (`None`: the volume is not
    /// mirrored: one port group only).
    pub peer: Option<PathState>,
    /// The volume refuses every update: MODE SENSE reports the LUN write protected.
    pub read_only: bool,
}

/// ALUA asymmetric access state of a path state (SPC-4 §6.37).
pub fn alua_state(p: PathState) -> u8 {
    match p {
        PathState::Optimized => 0x0,
        PathState::NonOptimized => 0x1,
        PathState::Inaccessible => 0x3,
        PathState::Transitioning => 0xF,
    }
}

fn put16(v: &mut [u8], at: usize, x: u16) {
    v[at..at + 2].copy_from_slice(&x.to_be_bytes());
}
fn put32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_be_bytes());
}
fn put64(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_be_bytes());
}

/// Standard INQUIRY data; `present`: false for a LUN that does not exist (peripheral
/// qualifier 011b); `multiport`: the logical unit has a target port at each site (a mirrored
/// volume, whose REPORT TARGET PORT GROUPS lists both), so MULTIP is set (SPC-4 §6.6.2).
pub fn inquiry(present: bool, multiport: bool) -> Vec<u8> {
    let mut b = vec![0u8; 66];
    b[0] = if present { 0x00 } else { 0x7F };
    if present && multiport {
        b[6] = 0x10; // MULTIP
    }
    b[2] = 0x06; // SPC-4
    b[3] = 0x12; // HISUP, response data format 2
    b[4] = (b.len() - 5) as u8;
    // TPGS 11b: implicit and explicit (SET TARGET PORT GROUPS) asymmetric access; 3PC:
    // EXTENDED COPY (LID1).
    b[5] = 0x38;
    b[7] = 0x02; // CMDQUE
    b[8..16].copy_from_slice(VENDOR);
    b[16..32].copy_from_slice(PRODUCT);
    b[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-5, iSCSI (RFC 7143), SPC-4, SBC-3.
    for (i, d) in [0x00A0u16, 0x0960, 0x0460, 0x04C0].iter().enumerate() {
        put16(&mut b, 58 + 2 * i, *d);
    }
    b
}

/// The VPD pages the target has, in ascending order.
pub const VPD_PAGES: &[u8] = &[0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2];

fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8, page, 0, 0];
    put16(&mut b, 2, body.len() as u16);
    b.extend_from_slice(body);
    b
}

fn designator(out: &mut Vec<u8>, code_set: u8, assoc_type: u8, id: &[u8]) {
    out.extend_from_slice(&[code_set, assoc_type, 0, id.len() as u8]);
    out.extend_from_slice(id);
}

/// A SCSI name string: NUL-terminated, padded to a multiple of 4.
fn name_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// VPD page `page`, or INVALID FIELD IN CDB.
pub fn vpd_page(l: &LunInfo, page: u8) -> Result<Vec<u8>, Sense> {
    Ok(match page {
        0x00 => vpd(0x00, VPD_PAGES),
        0x80 => vpd(0x80, l.serial.as_bytes()),
        0x83 => {
            let mut d = Vec::new();
            // Logical unit: NAA (binary), T10 vendor id (ASCII).
            designator(&mut d, 0x01, 0x03, &l.naa);
            let mut t10 = VENDOR.to_vec();
            t10.extend_from_slice(l.serial.as_bytes());
            designator(&mut d, 0x02, 0x01, &t10);
            // Target port (association 01b, PIV set): relative target port, target port group,
            // SCSI name string of the port.
            let mut rel = [0u8; 4];
            put16(&mut rel, 2, l.tpg);
            designator(&mut d, 0x51, 0x94, &rel);
            designator(&mut d, 0x51, 0x95, &rel);
            let port = name_string(&format!("{},t,0x{:04x}", l.target, l.tpg));
            designator(&mut d, 0x53, 0x98, &port);
            // Target device (association 10b): its SCSI name string.
            designator(&mut d, 0x53, 0xA8, &name_string(&l.target));
            vpd(0x83, &d)
        }
        0x86 => {
            let mut d = vec![0u8; 60];
            d[1] = 0x01; // SIMPSUP: simple task attribute
            vpd(0x86, &d)
        }
        // Third-party Copy (SPC-4 §7.8.17): what EXTENDED COPY (LID1) supports.
        0x8F => vpd(0x8F, &super::xcopy::third_party_copy_descriptors(l.block)),
        0xB0 => {
            // Offsets in `d` are the page's minus 4 (SBC-3 §6.5.3).
            let mut d = vec![0u8; 60];
            d[1] = MAX_CAW_BLOCKS;
            // OPTIMAL TRANSFER LENGTH GRANULARITY (bytes 6..8): 4 KiB.
            let granularity = (4096 / l.block.max(1)).max(1);
            put16(&mut d, 2, u16::try_from(granularity).unwrap_or(u16::MAX));
            let max_blocks = MAX_XFER_BYTES / l.block.max(1);
            put32(&mut d, 4, max_blocks); // MAXIMUM TRANSFER LENGTH (bytes 8..12)
            // OPTIMAL TRANSFER LENGTH (bytes 12..16): 0, not reported (an initiator takes it as
            // its largest request size: Linux's sd limits max_sectors to it).
            put32(&mut d, 16, u32::MAX); // MAXIMUM UNMAP LBA COUNT
            put32(&mut d, 20, MAX_UNMAP_DESCRIPTORS);
            put32(&mut d, 24, 1); // OPTIMAL UNMAP GRANULARITY
            put64(&mut d, 32, MAX_WRITE_SAME_BLOCKS);
            vpd(0xB0, &d)
        }
        0xB1 => {
            let mut d = vec![0u8; 60];
            put16(&mut d, 0, 1); // MEDIUM ROTATION RATE: non-rotating
            vpd(0xB1, &d)
        }
        0xB2 => {
            // LBPU, LBPWS, LBPWS10, LBPRZ (001b in bits 2..4); resource provisioned.
            vpd(0xB2, &[0, 0xE4, 0x01, 0])
        }
        _ => return Err(Sense::INVALID_FIELD_CDB),
    })
}

/// READ CAPACITY (10) data.
pub fn read_capacity10(l: &LunInfo) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    let last = l.blocks.saturating_sub(1);
    put32(&mut b, 0, u32::try_from(last).unwrap_or(u32::MAX));
    put32(&mut b, 4, l.block);
    b
}

/// READ CAPACITY (16) data.
pub fn read_capacity16(l: &LunInfo) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    put64(&mut b, 0, l.blocks.saturating_sub(1));
    put32(&mut b, 8, l.block);
    b[14] = 0xC0; // LBPME, LBPRZ
    b
}

/// GET LBA STATUS data: every block from `lba` is mapped (resource provisioned).
pub fn lba_status(l: &LunInfo, lba: u64) -> Result<Vec<u8>, Sense> {
    if lba >= l.blocks {
        return Err(Sense::LBA_OUT_OF_RANGE);
    }
    let mut b = vec![0u8; 24];
    put32(&mut b, 0, 20);
    put64(&mut b, 8, lba);
    put32(
        &mut b,
        16,
        u32::try_from(l.blocks - lba).unwrap_or(u32::MAX),
    );
    Ok(b)
}

/// The 8-byte LUN field of logical unit `lun` (peripheral or flat addressing).
pub fn lun_field(lun: u16) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        b[0] = 0x40 | ((lun >> 8) as u8 & 0x3F);
        b[1] = lun as u8;
    }
    b
}

/// The logical unit a LUN field addresses (single level, peripheral or flat); `None` for
/// other formats.
pub fn lun_of(f: &[u8; 8]) -> Option<u16> {
    if f[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match f[0] >> 6 {
        0 if f[0] == 0 => Some(u16::from(f[1])),
        1 => Some((u16::from(f[0] & 0x3F) << 8) | u16::from(f[1])),
        _ => None,
    }
}

/// REPORT LUNS data.
pub fn report_luns(luns: &[u16]) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    put32(&mut b, 0, (luns.len() * 8) as u32);
    for &l in luns {
        b.extend_from_slice(&lun_field(l));
    }
    b
}

/// REPORT TARGET PORT GROUPS data: this site's group, holding this site's port.
pub fn report_tpg(l: &LunInfo, extended: bool) -> Vec<u8> {
    // One descriptor per port group: this site's, and for a mirrored volume the other
    // site's (group 1 or 2, whichever this site is not), each with its one relative port.
    let group = |tpg: u16, state: PathState, pref: bool| {
        let mut d = [0u8; 12];
        d[0] = (u8::from(pref) << 7) | alua_state(state);
        d[1] = 0x80 | 0x08 | 0x02 | 0x01; // T_SUP, U_SUP, AN_SUP, AO_SUP
        put16(&mut d, 2, tpg);
        d[5] = 0x02; // status: altered by an implicit transition (or never altered)
        d[7] = 1;
        put16(&mut d, 10, tpg);
        d
    };
    let mut d = Vec::with_capacity(24);
    match l.peer {
        None => d.extend_from_slice(&group(l.tpg, l.path, true)),
        Some(peer) => {
            // PREF marks the group that is active/optimised, the same answer at both sites.
            d.extend_from_slice(&group(l.tpg, l.path, l.path == PathState::Optimized));
            let other = if l.tpg == 1 { 2 } else { 1 };
            d.extend_from_slice(&group(other, peer, peer == PathState::Optimized));
        }
    }
    let mut b = if extended {
        vec![0u8, 0, 0, 0, 0x10, 0, 0, 0]
    } else {
        vec![0u8; 4]
    };
    let n = (d.len() + b.len() - 4) as u32;
    put32(&mut b, 0, n);
    b.extend_from_slice(&d);
    b
}

/// Nominal and recommended timeouts (seconds) given in command timeouts descriptors.
const TIMEOUT_S: u32 = 30;

fn timeouts(out: &mut Vec<u8>) {
    let mut t = [0u8; 12];
    put16(&mut t, 0, 0x0A);
    put32(&mut t, 4, TIMEOUT_S);
    put32(&mut t, 8, TIMEOUT_S);
    out.extend_from_slice(&t);
}

/// REPORT SUPPORTED OPERATION CODES data (SPC-4 §6.35).
pub fn report_opcodes(options: u8, rctd: bool, op: u8, sa: u16) -> Result<Vec<u8>, Sense> {
    if options == 0 {
        let mut b = vec![0u8; 4];
        for s in SUPPORTED {
            let mut d = [0u8; 8];
            d[0] = s.op;
            if let Some(sa) = s.sa {
                put16(&mut d, 2, sa);
                d[5] |= 0x01;
            }
            if rctd {
                d[5] |= 0x02;
            }
            put16(&mut d, 6, s.usage.len() as u16);
            b.extend_from_slice(&d);
            if rctd {
                timeouts(&mut b);
            }
        }
        let n = (b.len() - 4) as u32;
        put32(&mut b, 0, n);
        return Ok(b);
    }
    let has_sa = SUPPORTED.iter().any(|s| s.op == op && s.sa.is_some());
    let found = match options {
        1 if has_sa => return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(2)),
        1 => SUPPORTED.iter().find(|s| s.op == op && s.sa.is_none()),
        2 if !has_sa && SUPPORTED.iter().any(|s| s.op == op) => {
            return Err(Sense::INVALID_FIELD_CDB.at_cdb_byte(2));
        }
        2 => SUPPORTED.iter().find(|s| s.op == op && s.sa == Some(sa)),
        _ => SUPPORTED
            .iter()
            .find(|s| s.op == op && (s.sa.is_none() || s.sa == Some(sa))),
    };
    let mut b = vec![0u8; 4];
    match found {
        None => b[1] = 0x01,
        Some(s) => {
            b[1] = 0x03 | if rctd { 0x80 } else { 0 };
            put16(&mut b, 2, s.usage.len() as u16);
            b.extend_from_slice(s.usage);
            if rctd {
                timeouts(&mut b);
            }
        }
    }
    Ok(b)
}

/// Mode page codes the target has.
pub mod mode {
    /// Caching.
    pub const CACHING: u8 = 0x08;
    /// Control.
    pub const CONTROL: u8 = 0x0A;
    /// Informational exceptions control.
    pub const IEC: u8 = 0x1C;
    /// Every page.
    pub const ALL: u8 = 0x3F;
}

/// Mode page `page` (current values; `changeable`: the mask of changeable bits, all zero).
fn mode_page(page: u8, changeable: bool) -> Vec<u8> {
    let mut p = match page {
        mode::CACHING => {
            let mut p = vec![0u8; 20];
            p[2] = 0x04; // WCE: a write cache that SYNCHRONIZE CACHE and FUA flush
            p
        }
        mode::CONTROL => {
            let mut p = vec![0u8; 12];
            p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
            put16(&mut p, 8, 0xFFFF); // BUSY TIMEOUT PERIOD: unlimited
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[2] = 0x08; // DEXCPT: informational exceptions are not reported
            p
        }
    };
    p[0] = page;
    p[1] = (p.len() - 2) as u8;
    if changeable {
        for b in &mut p[2..] {
            *b = 0;
        }
    }
    p
}

/// MODE SENSE data (6- or 10-byte header, an 8-byte block descriptor unless `dbd`).
pub fn mode_sense(
    l: &LunInfo,
    ten: bool,
    dbd: bool,
    pc: u8,
    page: u8,
    subpage: u8,
) -> Result<Vec<u8>, Sense> {
    if pc == 3 {
        return Err(Sense::SAVING_NOT_SUPPORTED);
    }
    if subpage != 0 && subpage != 0xFF {
        return Err(Sense::INVALID_FIELD_CDB);
    }
    let pages: &[u8] = match page {
        mode::ALL => &[mode::CACHING, mode::CONTROL, mode::IEC],
        mode::CACHING => &[mode::CACHING],
        mode::CONTROL => &[mode::CONTROL],
        mode::IEC => &[mode::IEC],
        _ => return Err(Sense::INVALID_FIELD_CDB),
    };
    let hlen = if ten { 8 } else { 4 };
    let mut b = vec![0u8; hlen];
    // Device-specific parameter (SBC-3 6.3.1): WP (bit 7) for a read-only volume, and
    // DPOFUA (bit 4).
    let dev_specific = if l.read_only { 0x80 | 0x10 } else { 0x10 };
    if ten {
        b[3] = dev_specific;
    } else {
        b[2] = dev_specific;
    }
    if !dbd {
        // Short LBA mode parameter block descriptor (SBC-3 §6.4.2), the same after either
        // header: NUMBER OF LOGICAL BLOCKS in bytes 0..4 (FFFFFFFFh for a larger medium), byte
        // 4 reserved, LOGICAL BLOCK LENGTH in bytes 5..8.
        let mut d = [0u8; 8];
        let n = if changeable_pc(pc) {
            0
        } else {
            u32::try_from(l.blocks).unwrap_or(u32::MAX)
        };
        put32(&mut d, 0, n);
        put32(
            &mut d,
            4,
            if changeable_pc(pc) {
                0
            } else {
                l.block & 0xFF_FFFF
            },
        );
        b.extend_from_slice(&d);
        if ten {
            put16(&mut b, 6, 8);
        } else {
            b[3] = 8;
        }
    }
    for &p in pages {
        b.extend_from_slice(&mode_page(p, changeable_pc(pc)));
    }
    if ten {
        let n = (b.len() - 2) as u16;
        put16(&mut b, 0, n);
    } else {
        b[0] = (b.len() - 1).min(255) as u8;
    }
    Ok(b)
}

fn changeable_pc(pc: u8) -> bool {
    pc == 1
}

/// Check a MODE SELECT parameter list: the header, an optional block descriptor (short, or
/// long with MODE SELECT(10)'s LONGLBA) whose block length is the volume's, and pages equal to
/// the current ones (nothing is changeable).
pub fn mode_select(l: &LunInfo, ten: bool, data: &[u8]) -> Result<(), Sense> {
    let hlen = if ten { 8 } else { 4 };
    if data.is_empty() {
        return Ok(());
    }
    if data.len() < hlen {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let bdl = if ten {
        usize::from(u16::from_be_bytes([data[6], data[7]]))
    } else {
        usize::from(data[3])
    };
    // LONGLBA (MODE SELECT(10) only, header byte 4 bit 0): one 16-byte long LBA block
    // descriptor (SBC-3 §6.4.2.3) instead of the 8-byte short one (§6.4.2.2).
    let long = ten && data[4] & 0x01 != 0;
    let dlen = if long { 16 } else { 8 };
    let mut at = hlen;
    if bdl != 0 {
        if bdl != dlen || data.len() < at + dlen {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        // LOGICAL BLOCK LENGTH: the descriptor's last 3 (short) or 4 (long) bytes.
        let e = at + dlen;
        let top = if long { data[e - 4] } else { 0 };
        let blen = u32::from_be_bytes([top, data[e - 3], data[e - 2], data[e - 1]]);
        if blen != l.block {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        at = e;
    }
    while at < data.len() {
        if data.len() < at + 2 {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        let code = data[at] & 0x3F;
        if data[at] & 0x40 != 0 {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        let len = usize::from(data[at + 1]) + 2;
        if data.len() < at + len {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        if !matches!(code, mode::CACHING | mode::CONTROL | mode::IEC) {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        let cur = mode_page(code, false);
        if cur.len() != len || data[at + 2..at + len] != cur[2..] {
            return Err(Sense::INVALID_FIELD_PARAM);
        }
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lun() -> LunInfo {
        LunInfo {
            blocks: 1 << 21,
            block: 512,
            naa: [0x3A, 1, 2, 3, 4, 5, 6, 7],
            serial: "TB0001".into(),
            target: "iqn.2026-11.io.twinblk:vol0".into(),
            tpg: 1,
            path: PathState::Optimized,
            peer: None,
            read_only: false,
        }
    }

    #[test]
    fn vpd_pages_list_themselves_and_carry_the_naa() {
        let l = lun();
        let p0 = vpd_page(&l, 0).unwrap();
        assert_eq!(&p0[4..], VPD_PAGES);
        for &p in VPD_PAGES {
            let b = vpd_page(&l, p).unwrap();
            assert_eq!(b[1], p);
            assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len() - 4);
        }
        let p83 = vpd_page(&l, 0x83).unwrap();
        assert_eq!(&p83[4..8], &[0x01, 0x03, 0, 8]);
        assert_eq!(&p83[8..16], &l.naa);
        assert!(vpd_page(&l, 0x55).is_err());
    }

    #[test]
    fn third_party_copy_page_and_explicit_alua_are_announced() {
        let l = lun();
        // Supported VPD Pages lists 8Fh between 86h and B0h (ascending).
        let p0 = vpd_page(&l, 0).unwrap();
        let at = p0[4..].iter().position(|&p| p == 0x8F).unwrap();
        assert_eq!((p0[4 + at - 1], p0[4 + at + 1]), (0x86, 0xB0));
        // The page: qualifier/type 0, code 8Fh, PAGE LENGTH = the descriptors.
        let p = vpd_page(&l, 0x8F).unwrap();
        assert_eq!(&p[0..2], &[0x00, 0x8F]);
        assert_eq!(&p[2..4], &96u16.to_be_bytes());
        assert_eq!(
            &p[4..],
            &crate::frontend::iscsi::xcopy::third_party_copy_descriptors(512)
        );
        // Standard INQUIRY byte 5: TPGS 11b (implicit and explicit ALUA), 3PC; byte 6: MULTIP
        // with a port at each site only.
        let i = inquiry(true, false);
        assert_eq!((i[5] >> 4) & 0x03, 0x03);
        assert_eq!(i[5] & 0x08, 0x08);
        assert_eq!(i[6], 0);
        assert_eq!(inquiry(true, true)[6], 0x10);
        assert_eq!(inquiry(false, true)[6], 0);
    }

    #[test]
    fn mode_sense_round_trips_through_mode_select() {
        let l = lun();
        for ten in [false, true] {
            let b = mode_sense(&l, ten, false, 0, mode::ALL, 0).unwrap();
            mode_select(&l, ten, &b).unwrap();
            let mut changed = b.clone();
            let n = changed.len();
            changed[n - 1] ^= 1;
            assert!(mode_select(&l, ten, &changed).is_err());
        }
        assert_eq!(
            mode_sense(&l, false, true, 3, mode::ALL, 0),
            Err(Sense::SAVING_NOT_SUPPORTED)
        );
    }

    /// MODE SELECT(10) with LONGLBA (byte 4 bit 0 of its header, SPC-4 §7.5.5) carries a
    /// 16-byte long LBA block descriptor (SBC-3 §6.4.2.3: NUMBER OF LOGICAL BLOCKS in 8 bytes,
    /// LOGICAL BLOCK LENGTH in bytes 12..16): accepted when it matches the medium, its block
    /// length checked like the short one's; an 8-byte one under LONGLBA is a length error.
    #[test]
    fn mode_select_ten_takes_a_long_lba_block_descriptor() {
        let l = lun();
        let list = |longlba: bool, desc: &[u8]| {
            let mut b = vec![0u8; 8];
            b[4] = u8::from(longlba);
            b[6..8].copy_from_slice(&(desc.len() as u16).to_be_bytes());
            b.extend_from_slice(desc);
            b.extend_from_slice(&mode_page(mode::CACHING, false));
            b
        };
        let mut long = [0u8; 16];
        long[0..8].copy_from_slice(&l.blocks.to_be_bytes());
        long[12..16].copy_from_slice(&l.block.to_be_bytes());
        assert_eq!(mode_select(&l, true, &list(true, &long)), Ok(()));
        let mut other = long;
        other[12..16].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(
            mode_select(&l, true, &list(true, &other)),
            Err(Sense::INVALID_FIELD_PARAM)
        );
        let short = mode_sense(&l, true, false, 0, mode::CACHING, 0).unwrap()[8..16].to_vec();
        assert_eq!(mode_select(&l, true, &list(false, &short)), Ok(()));
        assert_eq!(
            mode_select(&l, true, &list(true, &short)),
            Err(Sense::PARAM_LIST_LENGTH)
        );
        assert_eq!(
            mode_select(&l, true, &list(false, &long)),
            Err(Sense::PARAM_LIST_LENGTH)
        );
    }

    #[test]
    fn mode_sense_reports_a_read_only_volume_write_protected() {
        let mut l = lun();
        // The device-specific parameter: byte 2 of the 6-byte header, byte 3 of the 10-byte one.
        let dsp = |l: &LunInfo, ten: bool| {
            mode_sense(l, ten, true, 0, mode::CACHING, 0).unwrap()[if ten { 3 } else { 2 }]
        };
        assert_eq!((dsp(&l, false), dsp(&l, true)), (0x10, 0x10));
        l.read_only = true;
        assert_eq!((dsp(&l, false), dsp(&l, true)), (0x90, 0x90));
    }

    #[test]
    fn block_limits_fields_are_at_their_sbc3_offsets() {
        // SBC-3 §6.5.3: byte 5 MAXIMUM COMPARE AND WRITE LENGTH, bytes 6..8 OPTIMAL TRANSFER
        // LENGTH GRANULARITY, 8..12 MAXIMUM TRANSFER LENGTH, 12..16 OPTIMAL TRANSFER LENGTH,
        // 20..24 MAXIMUM UNMAP LBA COUNT, 24..28 MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT, 28..32
        // OPTIMAL UNMAP GRANULARITY, 36..44 MAXIMUM WRITE SAME LENGTH.
        for block in [512u32, 4096] {
            let l = LunInfo { block, ..lun() };
            let p = vpd_page(&l, 0xB0).unwrap();
            let be16 = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
            let be32 = |at: usize| u32::from_be_bytes(p[at..at + 4].try_into().unwrap());
            assert_eq!(be16(2), 0x3C, "page length");
            assert_eq!(
                p[4] & 0x01,
                0,
                "WSNZ: WRITE SAME with 0 blocks runs to the end"
            );
            assert_eq!(p[5], MAX_CAW_BLOCKS);
            assert_eq!(
                u32::from(be16(6)) * block,
                4096,
                "optimal transfer length granularity: 4 KiB"
            );
            assert_eq!(be32(8) * block, MAX_XFER_BYTES, "maximum transfer length");
            assert_eq!(be32(12), 0, "optimal transfer length: not reported");
            assert_eq!(be32(16), 0);
            assert_eq!(be32(20), u32::MAX, "maximum unmap LBA count: unlimited");
            assert_eq!(be32(24), MAX_UNMAP_DESCRIPTORS);
            assert_eq!(be32(28), 1, "optimal unmap granularity");
            assert_eq!(be32(32), 0, "no unmap granularity alignment");
            assert_eq!(
                u64::from_be_bytes(p[36..44].try_into().unwrap()),
                MAX_WRITE_SAME_BLOCKS
            );
        }
    }

    #[test]
    fn mode_sense_block_descriptor_counts_blocks_in_four_bytes() {
        // SBC-3 §6.4.2, short LBA mode parameter block descriptor: NUMBER OF LOGICAL BLOCKS in
        // bytes 0..4 (FFFFFFFFh when the medium has more), byte 4 reserved, LOGICAL BLOCK
        // LENGTH in bytes 5..8; after a 4-byte (MODE SENSE 6) or 8-byte (10) header.
        for (blocks, want) in [
            (1u64 << 21, 1u32 << 21),
            (1 << 25, 1 << 25),
            (0xFFFF_FFFE, 0xFFFF_FFFE),
            (1 << 33, u32::MAX),
        ] {
            let l = LunInfo { blocks, ..lun() };
            for ten in [false, true] {
                let b = mode_sense(&l, ten, false, 0, mode::CACHING, 0).unwrap();
                let h = if ten { 8 } else { 4 };
                let d = &b[h..h + 8];
                assert_eq!(
                    u32::from_be_bytes(d[0..4].try_into().unwrap()),
                    want,
                    "{blocks} blocks, MODE SENSE({})",
                    if ten { 10 } else { 6 }
                );
                assert_eq!(d[4], 0);
                assert_eq!(u32::from_be_bytes([0, d[5], d[6], d[7]]), 512);
                // MODE SELECT takes back what MODE SENSE gave.
                mode_select(&l, ten, &b).unwrap();
            }
        }
    }

    #[test]
    fn luns_and_opcodes() {
        assert_eq!(lun_of(&lun_field(5)), Some(5));
        assert_eq!(lun_of(&lun_field(300)), Some(300));
        assert_eq!(lun_of(&[0x80, 0, 0, 0, 0, 0, 0, 0]), None);
        let all = report_opcodes(0, false, 0, 0).unwrap();
        assert_eq!(all.len(), 4 + 8 * SUPPORTED.len());
        let one = report_opcodes(1, true, 0x28, 0).unwrap();
        assert_eq!(one[1], 0x83);
        assert_eq!(report_opcodes(1, false, 0xC5, 0).unwrap()[1], 0x01);
        assert!(report_opcodes(1, false, 0x9E, 0x10).is_err());
        assert_eq!(report_opcodes(2, false, 0x9E, 0x10).unwrap()[1], 0x03);
    }

    #[test]
    fn rtpg_lists_the_other_sites_group_of_a_mirrored_volume() {
        let mut l = lun();
        l.tpg = 2;
        l.path = PathState::NonOptimized;
        l.peer = Some(PathState::Optimized);
        let d = report_tpg(&l, false);
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 24);
        // This site's group 2 first, not preferred; the other site's group 1, preferred.
        assert_eq!(
            (d[4], u16::from_be_bytes([d[6], d[7]]), d[15]),
            (0x01, 2, 2)
        );
        assert_eq!(
            (d[16], u16::from_be_bytes([d[18], d[19]]), d[27]),
            (0x80, 1, 1)
        );
        l.peer = None;
        assert_eq!(report_tpg(&l, false).len(), 16, "one group without a peer");
    }
}
