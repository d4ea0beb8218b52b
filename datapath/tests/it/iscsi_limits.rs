//! iSCSI at its limits: negotiated values at their extremes and the PDUs the target sends under
//! them, checked field by field against RFC 7143 with the raw initiator (`iscsi::Raw`).

use crate::harness::pattern;
use crate::iscsi::{IQN, Raw, bhs, daemon, daemon_with, frame, put32, read10, write10};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Log in (one Login Request straight to full feature phase) offering `keys` (each
/// `key=value`) after the names.
pub(crate) fn login_with(addr: SocketAddr, keys: &[&str]) -> Raw {
    login_at(addr, keys, 1)
}

/// [`login_with`], the Login Request carrying CmdSN `cmd_sn` (the session's first ExpCmdSN).
fn login_at(addr: SocketAddr, keys: &[&str], cmd_sn: u32) -> Raw {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = bhs(0x43, 0x80 | (1 << 2) | 3);
    h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 7]);
    put32(&mut h, 16, 1);
    put32(&mut h, 24, cmd_sn);
    let mut text =
        format!("InitiatorName=iqn.2026-12.test:limits\0SessionType=Normal\0TargetName={IQN}\0");
    for k in keys {
        text.push_str(k);
        text.push('\0');
    }
    std::io::Write::write_all(&mut s, &frame(h, text.as_bytes(), false)).unwrap();
    let mut r = Raw {
        s,
        cmd_sn,
        hd: false,
        dd: false,
    };
    let (h, _) = r.read_pdu().expect("a login response");
    assert_eq!(h[0] & 0x3F, 0x23, "login response");
    assert_eq!((h[36], h[37]), (0, 0), "login status");
    assert_eq!(h[1] & 0x83, 0x83, "transit to full feature phase");
    r
}

/// One Data-In PDU: flags (byte 1), DataSN, BufferOffset, data segment length.
type DataIn = (u8, u32, u32, usize);

/// The Data-In PDUs of one READ, and the data.
fn data_in_pdus(r: &mut Raw, itt: u32) -> (Vec<DataIn>, Vec<u8>) {
    let mut pdus = Vec::new();
    let mut data = Vec::new();
    loop {
        let (h, d) = r.read_pdu().expect("Data-In");
        assert_eq!(h[0] & 0x3F, 0x25, "Data-In, got opcode {:#x}", h[0]);
        assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), itt);
        let sn = u32::from_be_bytes(h[36..40].try_into().unwrap());
        let off = u32::from_be_bytes(h[40..44].try_into().unwrap());
        pdus.push((h[1], sn, off, d.len()));
        data.extend_from_slice(&d);
        if h[1] & 0x01 != 0 {
            assert_eq!(h[3], 0, "status GOOD");
            return (pdus, data);
        }
    }
}

/// MaxBurstLength bounds every Data-In sequence (RFC 7143 §13.13: "maximum SCSI data payload
/// in a Data-In ... sequence"), also when the initiator's MaxRecvDataSegmentLength is larger:
/// no PDU carries more than MaxBurstLength, and the F bit closes each sequence at every
/// MaxBurstLength bytes.
#[test]
fn data_in_sequences_keep_to_max_burst_length_below_max_recv_data_segment_length() {
    let (_d, addr) = daemon("16MiB");
    let data = pattern(11, 256 * 512);
    let mut r = login_with(
        addr,
        &[
            "MaxRecvDataSegmentLength=16777215",
            "MaxBurstLength=65536",
            "FirstBurstLength=65536",
            "ImmediateData=Yes",
            "InitialR2T=No",
        ],
    );
    // 128 KiB written: immediate 64 KiB then an R2T of at most MaxBurstLength.
    r.scsi(1, &write10(0, 256), 256 * 512, 0x80 | 0x20, &data[..65536]);
    let (h, _) = r.read_pdu().expect("R2T");
    assert_eq!(h[0] & 0x3F, 0x31, "R2T, got opcode {:#x}", h[0]);
    assert_eq!(u32::from_be_bytes(h[44..48].try_into().unwrap()), 65536);
    let ttt = u32::from_be_bytes(h[20..24].try_into().unwrap());
    let mut dout = bhs(0x05, 0x80);
    put32(&mut dout, 16, 1);
    put32(&mut dout, 20, ttt);
    put32(&mut dout, 40, 65536);
    r.send(dout, &data[65536..]);
    let (h, _) = r.read_pdu().expect("SCSI Response");
    assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0), "write GOOD");

    r.scsi(2, &read10(0, 256), 256 * 512, 0xC0, &[]);
    let (pdus, got) = data_in_pdus(&mut r, 2);
    assert_eq!(got, data, "the data read back");
    let mut off = 0u32;
    for (i, &(flags, sn, at, len)) in pdus.iter().enumerate() {
        assert_eq!(sn, i as u32, "DataSN counts every Data-In of the command");
        assert_eq!(at, off, "BufferOffset");
        assert!(
            len <= 65536,
            "a Data-In of {len} bytes, over MaxBurstLength: {pdus:?}"
        );
        off += len as u32;
        let end_of_burst = off.is_multiple_of(65536) || off as usize == data.len();
        assert_eq!(
            flags & 0x80 != 0,
            end_of_burst,
            "F bit at the end of each MaxBurstLength sequence only: {pdus:?}"
        );
    }
    assert_eq!(off as usize, data.len());
}

/// An UNMAP command with parameter list `list` (immediate data); its status and sense key,
/// ASC, ASCQ.
fn unmap(r: &mut Raw, itt: u32, list: &[u8]) -> (u8, u8, u8, u8) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x42;
    cdb[7..9].copy_from_slice(&(list.len() as u16).to_be_bytes());
    r.scsi(itt, &cdb, list.len() as u32, 0x80 | 0x20, list);
    let (h, d) = r.read_pdu().expect("SCSI Response");
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
    if d.len() >= 16 {
        (h[3], d[4] & 0x0F, d[14], d[15])
    } else {
        (h[3], 0, 0, 0)
    }
}

/// SBC-3 §5.28.2: an UNMAP BLOCK DESCRIPTOR DATA LENGTH that is no multiple of 16 leaves an
/// incomplete last descriptor, which is ignored; one larger than the parameter list received
/// (the CDB's PARAMETER LIST LENGTH truncated the list) is no error either: the complete
/// descriptors are unmapped, GOOD. Neither touches a block the complete descriptors do not
/// name.
#[test]
fn unmap_ignores_an_incomplete_last_descriptor_and_a_truncated_list() {
    let (_d, addr) = daemon("16MiB");
    let mut r = login_with(addr, &["ImmediateData=Yes"]);
    let data = pattern(12, 32 * 512);
    r.scsi(1, &write10(0, 32), 32 * 512, 0x80 | 0x20, &data);
    let (h, _) = r.read_pdu().expect("SCSI Response");
    assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0), "write GOOD");
    let desc = |lba: u64, n: u32| {
        let mut d = lba.to_be_bytes().to_vec();
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d
    };
    let list = |bdl: u16, body: &[u8]| {
        let mut l = vec![0u8; 8];
        l[0..2].copy_from_slice(&((6 + body.len()) as u16).to_be_bytes());
        l[2..4].copy_from_slice(&bdl.to_be_bytes());
        l.extend_from_slice(body);
        l
    };
    // Descriptor data length 24: one whole descriptor (blocks 0..8) and 8 stray bytes.
    let mut body = desc(0, 8);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 16]);
    assert_eq!(
        unmap(&mut r, 2, &list(24, &body)),
        (0, 0, 0, 0),
        "GOOD with an incomplete last descriptor"
    );
    // Descriptor data length 32 (two descriptors) in a list cut after the first one and half
    // of the second (PARAMETER LIST LENGTH 8 + 16 + 8): blocks 8..16 unmapped.
    let mut body = desc(8, 8);
    body.extend_from_slice(&desc(24, 8)[..8]);
    assert_eq!(
        unmap(&mut r, 3, &list(32, &body)),
        (0, 0, 0, 0),
        "GOOD with a truncated list"
    );
    let back = crate::iscsi::read_blocks(&mut r, 4, 0, 32);
    assert!(
        back[..16 * 512].iter().all(|&b| b == 0),
        "blocks 0..16 unmapped"
    );
    assert_eq!(
        &back[16 * 512..],
        &data[16 * 512..],
        "blocks 16..32 untouched"
    );
    // A range past the end is still refused: LOGICAL BLOCK ADDRESS OUT OF RANGE.
    let blocks = 16 << 11;
    assert_eq!(
        unmap(&mut r, 5, &list(16, &desc(blocks - 4, 8))),
        (2, 5, 0x21, 0)
    );
}

/// WRITE SAME(10) (`sixteen` false) or WRITE SAME(16) of `blocks` blocks at `lba` with CDB
/// byte 1 `flags` and the one block `block` (immediate data); its status.
fn write_same(
    r: &mut Raw,
    itt: u32,
    sixteen: bool,
    flags: u8,
    lba: u32,
    blocks: u16,
    block: &[u8],
) -> u8 {
    let mut cdb = [0u8; 16];
    let len = if sixteen {
        cdb[0] = 0x93;
        cdb[2..10].copy_from_slice(&u64::from(lba).to_be_bytes());
        cdb[10..14].copy_from_slice(&u32::from(blocks).to_be_bytes());
        16
    } else {
        cdb[0] = 0x41;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        10
    };
    cdb[1] = flags;
    r.scsi(itt, &cdb[..len], block.len() as u32, 0x80 | 0x20, block);
    let (h, _) = r.read_pdu().expect("SCSI Response");
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
    h[3]
}

/// SBC-3 §5.45/§5.46: with the UNMAP bit set the device server may unmap the blocks only where
/// they then read back as the block sent (LBPRZ: a block of zeroes); any other block is
/// written. Either way the blocks read back as the block sent.
#[test]
fn write_same_with_unmap_and_a_nonzero_block_writes_the_block() {
    let (_d, addr) = daemon("16MiB");
    let mut r = login_with(addr, &["ImmediateData=Yes"]);
    let data = pattern(15, 32 * 512);
    r.scsi(1, &write10(0, 32), 32 * 512, 0x80 | 0x20, &data);
    let (h, _) = r.read_pdu().expect("SCSI Response");
    assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0), "write GOOD");
    let block = pattern(16, 512);
    // WRITE SAME(10), UNMAP: blocks 0..8; WRITE SAME(16), UNMAP: blocks 8..16.
    assert_eq!(write_same(&mut r, 2, false, 0x08, 0, 8, &block), 0);
    assert_eq!(write_same(&mut r, 3, true, 0x08, 8, 8, &block), 0);
    // A block of zeroes with UNMAP (may be unmapped: reads back as zeroes) at 16..24.
    assert_eq!(write_same(&mut r, 4, true, 0x08, 16, 8, &[0; 512]), 0);
    let back = crate::iscsi::read_blocks(&mut r, 5, 0, 32);
    for (i, b) in back.chunks(512).enumerate() {
        match i {
            0..16 => assert_eq!(b, &block[..], "block {i} holds the block written"),
            16..24 => assert!(b.iter().all(|&x| x == 0), "block {i} reads as zeroes"),
            _ => assert_eq!(b, &data[i * 512..(i + 1) * 512], "block {i} untouched"),
        }
    }
}

/// Log in to a discovery session declaring MaxRecvDataSegmentLength `mrdsl`.
pub(crate) fn discovery(addr: SocketAddr, mrdsl: u32) -> Raw {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = bhs(0x43, 0x80 | (1 << 2) | 3);
    h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 8]);
    put32(&mut h, 16, 1);
    put32(&mut h, 24, 1);
    let text = format!(
        "InitiatorName=iqn.2026-12.test:limits\0SessionType=Discovery\0MaxRecvDataSegmentLength={mrdsl}\0"
    );
    std::io::Write::write_all(&mut s, &frame(h, text.as_bytes(), false)).unwrap();
    let mut r = Raw {
        s,
        cmd_sn: 1,
        hd: false,
        dd: false,
    };
    let (h, _) = r.read_pdu().expect("a login response");
    assert_eq!((h[36], h[37]), (0, 0), "login status");
    assert_eq!(h[1] & 0x83, 0x83, "transit to full feature phase");
    r
}

/// A Text Request (non-immediate, its CmdSN taken) with flags `flags`, ITT `itt`, TTT `ttt`.
pub(crate) fn text(r: &mut Raw, flags: u8, itt: u32, ttt: u32, data: &[u8]) {
    let mut h = bhs(0x04, flags);
    put32(&mut h, 16, itt);
    put32(&mut h, 20, ttt);
    put32(&mut h, 24, r.cmd_sn);
    r.cmd_sn += 1;
    r.send(h, data);
}

/// A Text Response: (flags, TTT, data).
pub(crate) fn text_rsp(r: &mut Raw, itt: u32) -> (u8, u32, Vec<u8>) {
    let (h, d) = r.read_pdu().expect("Text Response");
    assert_eq!(h[0] & 0x3F, 0x24, "Text Response, got opcode {:#x}", h[0]);
    assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), itt);
    (h[1], u32::from_be_bytes(h[20..24].try_into().unwrap()), d)
}

/// A SendTargets answer longer than the initiator's MaxRecvDataSegmentLength goes out in
/// several Text Responses (RFC 7143 §11.11: C bit set and F bit clear with a TTT on every one
/// but the last; the initiator asks for the next with an empty Text Request carrying that TTT;
/// the last has F set and TTT FFFFFFFFh), none longer than the initiator takes, and nothing of
/// the answer is lost.
#[test]
fn a_long_text_answer_is_continued_across_text_responses() {
    let portals: Vec<String> = (0..40).map(|i| format!("'10.0.{i}.2:3260,2'")).collect();
    let (_d, addr) =
        crate::iscsi::daemon_with("8MiB", &format!("extra_portals = [{}]", portals.join(",")));
    let mut r = discovery(addr, 512);
    text(&mut r, 0x80, 5, 0xFFFF_FFFF, b"SendTargets=All\0");
    let mut all = Vec::new();
    let mut pdus = 0;
    loop {
        let (flags, ttt, d) = text_rsp(&mut r, 5);
        pdus += 1;
        assert!(d.len() <= 512, "a Text Response of {} bytes", d.len());
        all.extend_from_slice(&d);
        if flags & 0x80 != 0 {
            assert_eq!(flags & 0x40, 0, "no C bit with the F bit");
            assert_eq!(ttt, 0xFFFF_FFFF, "the last Text Response's TTT");
            break;
        }
        assert_eq!(flags & 0x40, 0x40, "C bit: the text continues");
        assert_ne!(ttt, 0xFFFF_FFFF, "a TTT to continue with");
        text(&mut r, 0x80, 5, ttt, &[]);
    }
    assert!(pdus > 1, "one Text Response only");
    let answer = String::from_utf8(all).unwrap();
    assert!(
        answer.starts_with(&format!("TargetName={IQN}\0")),
        "{answer}"
    );
    for i in 0..40 {
        assert!(
            answer.contains(&format!("TargetAddress=10.0.{i}.2:3260,2\0")),
            "portal {i} missing: {answer:?}"
        );
    }
    // The session goes on.
    logout(&mut r, 6);
}

/// Log out (close the session, non-immediate): answered 0 and the connection closes.
pub(crate) fn logout(r: &mut Raw, itt: u32) {
    let mut h = bhs(0x06, 0x80);
    put32(&mut h, 16, itt);
    put32(&mut h, 24, r.cmd_sn);
    r.cmd_sn += 1;
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("Logout Response");
    assert_eq!((h[0] & 0x3F, h[2]), (0x26, 0), "Logout Response, close");
    assert!(r.closed());
}

/// A Text Request whose text continues in the next one (C bit, RFC 7143 §11.10.2) is answered
/// by an empty Text Response (F clear, a TTT), and the whole text once it is complete.
#[test]
fn a_continued_text_request_is_gathered_before_it_is_answered() {
    let (_d, addr) = daemon("8MiB");
    let mut r = discovery(addr, 8192);
    text(&mut r, 0x40, 7, 0xFFFF_FFFF, b"SendTar");
    let (flags, ttt, d) = text_rsp(&mut r, 7);
    assert_eq!(
        flags & 0xC0,
        0,
        "neither F nor C in the answer to a continued request"
    );
    assert_ne!(ttt, 0xFFFF_FFFF);
    assert!(d.is_empty());
    text(&mut r, 0x80, 7, ttt, b"gets=All\0");
    let (flags, ttt, d) = text_rsp(&mut r, 7);
    assert_eq!((flags & 0xC0, ttt), (0x80, 0xFFFF_FFFF));
    let answer = String::from_utf8(d).unwrap();
    assert!(
        answer.starts_with(&format!("TargetName={IQN}\0")),
        "{answer}"
    );
    // A TTT the target never gave: Reject (invalid PDU field), the session goes on.
    text(&mut r, 0x80, 8, 0x1234_5678, b"SendTargets=All\0");
    let (h, _) = r.read_pdu().expect("Reject");
    assert_eq!((h[0] & 0x3F, h[2]), (0x3F, 0x09));
    logout(&mut r, 9);
}

/// SYNCHRONIZE CACHE (10) and (16) check their range like any command addressing blocks (SBC-3
/// §5.22-5.23: LBA + NUMBER OF LOGICAL BLOCKS past the capacity is LOGICAL BLOCK ADDRESS OUT
/// OF RANGE; 0 blocks: from the LBA to the end), also where the end overflows 64 bits.
#[test]
fn synchronize_cache_checks_its_range() {
    let (_d, addr) = daemon("16MiB");
    let blocks: u64 = 16 << 11;
    let mut r = login_with(addr, &[]);
    let sync10 = |lba: u32, n: u16| {
        let mut c = [0u8; 10];
        c[0] = 0x35;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&n.to_be_bytes());
        c
    };
    let sync16 = |lba: u64, n: u32| {
        let mut c = [0u8; 16];
        c[0] = 0x91;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&n.to_be_bytes());
        c
    };
    // Status, sense key, ASC, ASCQ.
    type Answer = (u8, u8, u8, u8);
    let oor = (2, 5, 0x21, 0);
    let cases: [(&[u8], Answer); 8] = [
        (&sync10(0, 0), (0, 0, 0, 0)),
        (&sync10(blocks as u32 - 1, 1), (0, 0, 0, 0)),
        (&sync10(blocks as u32, 0), (0, 0, 0, 0)),
        (&sync10(blocks as u32 - 1, 2), oor),
        (&sync10(blocks as u32 + 1, 0), oor),
        (&sync16(0, u32::MAX), oor),
        (&sync16(u64::MAX, 2), oor),
        (&sync16(blocks, 1), oor),
    ];
    for (i, (cdb, want)) in cases.iter().enumerate() {
        let (st, key, asc, ascq, _) = crate::iscsi::status_of(&mut r, 10 + i as u32, cdb, 0);
        assert_eq!((st, key, asc, ascq), *want, "case {i}: {cdb:02x?}");
    }
}

/// CDB fields at their largest (and smallest) values: the sense SBC-3 names for each, and the
/// target goes on serving (no panic, no dropped connection).
#[test]
fn cdb_fields_at_their_limits_get_the_sbc3_sense() {
    let (_d, addr) = daemon("16MiB");
    let blocks: u64 = 16 << 11;
    let mut r = login_with(addr, &["ImmediateData=Yes"]);
    let rw16 = |op: u8, lba: u64, n: u32| {
        let mut c = [0u8; 16];
        c[0] = op;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&n.to_be_bytes());
        c
    };
    type Answer = (u8, u8, u8, u8);
    let good = (0, 0, 0, 0);
    let oor = (2, 5, 0x21, 0);
    let bad_cdb = (2, 5, 0x24, 0);
    // (CDB, EDTL, expected answer)
    let cases: Vec<(Vec<u8>, u32, Answer)> = vec![
        // READ (16): 0 blocks at the end and past it; an LBA + length that overflows u64.
        (rw16(0x88, blocks, 0).to_vec(), 0, good),
        (rw16(0x88, blocks + 1, 0).to_vec(), 0, oor),
        (rw16(0x88, u64::MAX, 1).to_vec(), 512, oor),
        (rw16(0x88, u64::MAX - 1, 2).to_vec(), 1024, oor),
        (rw16(0x88, blocks - 1, 2).to_vec(), 1024, oor),
        // Within the medium but over MAXIMUM TRANSFER LENGTH (2048 blocks).
        (rw16(0x88, 0, 4096).to_vec(), 4096 * 512, bad_cdb),
        // VERIFY (16), BYTCHK 0, past the end.
        (rw16(0x8F, u64::MAX, 1).to_vec(), 0, oor),
        // PRE-FETCH (16) past the end.
        (rw16(0x90, u64::MAX, u32::MAX).to_vec(), 0, oor),
        // WRITE SAME (16), NDOB: 0 blocks (to the end) from past the end, and at LBA 2^64-1.
        (
            {
                let mut c = rw16(0x93, blocks + 1, 0);
                c[1] = 0x01;
                c.to_vec()
            },
            0,
            oor,
        ),
        (
            {
                let mut c = rw16(0x93, u64::MAX, 0);
                c[1] = 0x01;
                c.to_vec()
            },
            0,
            oor,
        ),
        // GET LBA STATUS at the capacity and at 2^64-1.
        (
            {
                let mut c = rw16(0x9E, blocks, 24);
                c[1] = 0x12;
                c.to_vec()
            },
            24,
            oor,
        ),
        (
            {
                let mut c = rw16(0x9E, u64::MAX, 24);
                c[1] = 0x12;
                c.to_vec()
            },
            24,
            oor,
        ),
        // COMPARE AND WRITE: 0 blocks is no error; 255 blocks is over the maximum (32).
        (
            {
                let mut c = [0u8; 16];
                c[0] = 0x89;
                c.to_vec()
            },
            0,
            good,
        ),
        (
            {
                let mut c = [0u8; 16];
                c[0] = 0x89;
                c[13] = 255;
                c.to_vec()
            },
            0,
            bad_cdb,
        ),
        // READ (10) at the largest LBA with the largest length.
        (crate::iscsi::read10(u32::MAX, u16::MAX).to_vec(), 0, oor),
    ];
    for (i, (cdb, edtl, want)) in cases.iter().enumerate() {
        let (st, key, asc, ascq, _) = crate::iscsi::status_of(&mut r, 100 + i as u32, cdb, *edtl);
        assert_eq!((st, key, asc, ascq), *want, "case {i}: {cdb:02x?}");
    }
    r.nop(1);
}

/// CmdSN across 2^32 (RFC 7143 §4.2.2.1, serial number arithmetic, RFC 1982): commands in
/// order across the wrap run; one sent ahead of a gap at the wrap waits for it; MaxCmdSN is
/// ExpCmdSN + 127 modulo 2^32; a CmdSN just past MaxCmdSN is ignored, one at MaxCmdSN is held.
#[test]
fn cmd_sn_wraps_at_two_to_the_32() {
    let (_d, addr) = daemon("8MiB");
    let tur = [0u8; 6];
    let mut r = login_at(addr, &[], 0xFFFF_FFFE);
    // Status of a TEST UNIT READY with CmdSN `sn` (its ExpCmdSN and MaxCmdSN).
    let send = |r: &mut Raw, itt: u32, sn: u32| {
        let mut h = bhs(0x01, 0x80);
        put32(&mut h, 16, itt);
        put32(&mut h, 24, sn);
        h[32..38].copy_from_slice(&tur);
        r.send(h, &[]);
    };
    let answer = |r: &mut Raw| {
        let (h, _) = r.read_pdu().expect("SCSI Response");
        assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0), "TEST UNIT READY GOOD");
        let be = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().unwrap());
        (be(16), be(28), be(32))
    };
    send(&mut r, 1, 0xFFFF_FFFE);
    assert_eq!(
        answer(&mut r),
        (1, 0xFFFF_FFFF, 0xFFFF_FFFF_u32.wrapping_add(127))
    );
    // CmdSN 0 before 0xFFFFFFFF: held until the gap closes, then both run in order.
    send(&mut r, 3, 0);
    send(&mut r, 2, 0xFFFF_FFFF);
    assert_eq!(answer(&mut r), (2, 0, 127));
    assert_eq!(answer(&mut r), (3, 1, 128));
    // ExpCmdSN 1, MaxCmdSN 128: CmdSN 129 is outside (ignored), 128 is held for the gap.
    send(&mut r, 4, 129);
    send(&mut r, 5, 128);
    for sn in 1..128 {
        send(&mut r, 100 + sn, sn);
        let (itt, exp, max) = answer(&mut r);
        assert_eq!((itt, exp, max), (100 + sn, sn + 1, sn + 128));
    }
    assert_eq!(answer(&mut r), (5, 129, 256), "the held CmdSN 128 ran");
    // CmdSN 129 was ignored: a NOP answers, nothing else is left to come.
    r.nop(6);
}

/// FirstBurstLength and MaxBurstLength at their smallest (512): immediate data of one
/// FirstBurstLength, then one R2T of at most MaxBurstLength at a time, R2TSN counting from 0,
/// each answered by one Data-Out (DataSN 0, F bit); the data reads back whole.
#[test]
fn the_smallest_bursts_move_a_write_512_bytes_at_a_time() {
    let (_d, addr) = daemon("8MiB");
    let mut r = login_with(
        addr,
        &[
            "MaxBurstLength=512",
            "FirstBurstLength=512",
            "InitialR2T=No",
            "ImmediateData=Yes",
            "MaxRecvDataSegmentLength=512",
        ],
    );
    let data = pattern(14, 8 * 512);
    r.scsi(1, &write10(8, 8), 8 * 512, 0x80 | 0x20, &data[..512]);
    for i in 1..8u32 {
        let (h, _) = r.read_pdu().expect("R2T");
        assert_eq!(h[0] & 0x3F, 0x31, "R2T, got opcode {:#x}", h[0]);
        let be = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().unwrap());
        assert_eq!(
            (be(36), be(40), be(44)),
            (i - 1, i * 512, 512),
            "R2TSN, offset, length"
        );
        let mut dout = bhs(0x05, 0x80);
        put32(&mut dout, 16, 1);
        put32(&mut dout, 20, be(20));
        put32(&mut dout, 40, i * 512);
        r.send(dout, &data[i as usize * 512..(i as usize + 1) * 512]);
    }
    let (h, _) = r.read_pdu().expect("SCSI Response");
    assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0), "write GOOD");
    // Read back: one 512-byte Data-In per MaxBurstLength sequence, each with the F bit.
    r.scsi(2, &read10(8, 8), 8 * 512, 0xC0, &[]);
    let (pdus, got) = data_in_pdus(&mut r, 2);
    assert_eq!(got, data);
    assert_eq!(pdus.len(), 8);
    assert!(
        pdus.iter().all(|p| p.0 & 0x80 != 0 && p.3 == 512),
        "{pdus:?}"
    );
}

/// A CHAP login to a target of user `alice`, secret `secretsecret12`, answering the target's
/// challenge with CHAP_R `r(id, challenge)`: the last Login Response's status class and detail.
fn chap_login(addr: SocketAddr, r: impl Fn(u8, &[u8]) -> String) -> (u8, u8) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut raw = Raw {
        s,
        cmd_sn: 1,
        hd: false,
        dd: false,
    };
    let mut stat_sn = 0;
    let mut step = |raw: &mut Raw, keys: &str| {
        // T bit, CSG 0 (security), NSG 1 (operational).
        let mut h = bhs(0x43, 0x80 | 1);
        h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 9]);
        put32(&mut h, 16, 1);
        put32(&mut h, 24, 1);
        put32(&mut h, 28, stat_sn);
        raw.send(h, keys.as_bytes());
        let (h, d) = raw.read_pdu().expect("a Login Response");
        assert_eq!(h[0] & 0x3F, 0x23, "Login Response");
        stat_sn = u32::from_be_bytes(h[24..28].try_into().unwrap()) + 1;
        let text = String::from_utf8(d).unwrap();
        let keys: Vec<(String, String)> = text
            .split('\0')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ((h[36], h[37]), keys)
    };
    let first = format!(
        "InitiatorName=iqn.2026-12.test:chap\0SessionType=Normal\0TargetName={IQN}\0AuthMethod=CHAP\0"
    );
    let (st, keys) = step(&mut raw, &first);
    assert_eq!(st, (0, 0), "AuthMethod answered");
    assert!(
        keys.contains(&("AuthMethod".into(), "CHAP".into())),
        "{keys:?}"
    );
    let (st, keys) = step(&mut raw, "CHAP_A=5\0");
    assert_eq!(st, (0, 0), "challenge sent");
    let get = |k: &str| {
        keys.iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let id: u8 = get("CHAP_I").parse().unwrap();
    let c = get("CHAP_C");
    let c = c.strip_prefix("0x").expect("the target's challenge in hex");
    let challenge: Vec<u8> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&c[i..i + 2], 16).unwrap())
        .collect();
    let answer = format!("CHAP_N=alice\0CHAP_R={}\0", r(id, &challenge));
    step(&mut raw, &answer).0
}

/// A CHAP_R from the target's CHAP_I and CHAP_C.
type ChapAnswer<'a> = Box<dyn Fn(u8, &[u8]) -> String + 'a>;

/// `b` in base64 (RFC 4648 §4, padded), without a prefix.
fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// RFC 7143 §6.1, §12.1.3: CHAP_R is a binary-value, in hex (`0x`/`0X`) or base64 (`0b`/`0B`):
/// each form of the right response logs in; a malformed value fails the login as the
/// initiator's error (0200), a well-formed wrong one as an authentication failure (0201).
#[test]
fn chap_responses_in_hex_and_base64_and_malformed_ones_get_their_status() {
    let one_way = format!(
        "[[iscsi.target]]\niqn='{IQN}'\nluns=['vol0']\nchap_user='alice'\nchap_secret='secretsecret12'\n"
    );
    let (_d, addr) = daemon_with("16MiB", &one_way);
    let md5 = |id: u8, c: &[u8]| twinblk::frontend::iscsi::chap::response(id, b"secretsecret12", c);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    let cases: [(&str, ChapAnswer, (u8, u8)); 6] = [
        (
            "lower-case hex",
            Box::new(|i, c| format!("0x{}", hex(&md5(i, c)).to_lowercase())),
            (0, 0),
        ),
        (
            "0X and upper-case hex",
            Box::new(|i, c| format!("0X{}", hex(&md5(i, c)))),
            (0, 0),
        ),
        (
            "base64",
            Box::new(|i, c| format!("0b{}", base64(&md5(i, c)))),
            (0, 0),
        ),
        (
            "0B base64",
            Box::new(|i, c| format!("0B{}", base64(&md5(i, c)))),
            (0, 0),
        ),
        (
            "not hex",
            Box::new(|i, c| format!("0x{}zz", hex(&md5(i, c)))),
            (2, 0),
        ),
        (
            "a wrong response",
            Box::new(|i, c| format!("0b{}", base64(&md5(i ^ 1, c)))),
            (2, 1),
        ),
    ];
    for (what, r, want) in cases {
        assert_eq!(chap_login(addr, r), want, "{what}");
    }
}

/// An UNMAP of 5 GiB in one descriptor on a file-backed volume is GOOD and unmaps exactly its
/// blocks: the file backend took the length as a 32-bit number and refused 4 GiB and more
/// with EINVAL (an iSCSI descriptor, like an NVMe DSM range, spans up to 2^32 blocks).
#[test]
fn an_unmap_of_five_gib_on_a_file_volume_unmaps_exactly_its_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\n[[volume]]\nname='vol0'\nbackend='uring'\npath='{}'\nsize='8GiB'\nblock_size=4096\n",
        img.display()
    );
    let (_d, addr) = crate::iscsi::daemon_from(&text);
    let mut r = login_with(addr, &["ImmediateData=Yes"]);
    const GIB_BLOCKS: u32 = (1 << 30) / 4096;
    let inside = 5 * GIB_BLOCKS - 1; // the last block of the 5 GiB
    let after = 5 * GIB_BLOCKS; // the first block after them
    for (itt, lba) in [(1, inside), (2, after)] {
        let data = pattern(u64::from(lba), 4096);
        r.scsi(itt, &write10(lba, 1), 4096, 0x80 | 0x20, &data);
        let (h, _) = r.read_pdu().expect("SCSI Response");
        assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0), "write GOOD");
    }
    let mut list = vec![0u8; 8];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list.extend_from_slice(&0u64.to_be_bytes());
    list.extend_from_slice(&(5 * GIB_BLOCKS).to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    assert_eq!(
        unmap(&mut r, 3, &list),
        (0, 0, 0, 0),
        "UNMAP of 5 GiB: GOOD"
    );
    let read =
        |r: &mut Raw, itt: u32, lba: u32| crate::iscsi::status_of(r, itt, &read10(lba, 1), 4096).4;
    assert_eq!(read(&mut r, 4, inside), vec![0u8; 4096], "unmapped: zeroes");
    assert_eq!(
        read(&mut r, 5, after),
        pattern(u64::from(after), 4096),
        "the block after the range is kept"
    );
}
