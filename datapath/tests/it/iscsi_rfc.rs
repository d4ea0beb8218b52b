//! iSCSI details of RFC 7143, SPC-4 and SBC-3 an audit found wrong, each checked with the raw
//! initiator (`iscsi::Raw`): the CmdSN window, residuals of writes without data, text keys in
//! full feature phase, discovery sessions and SCSI fields.

use crate::iscsi::{Raw, bhs, daemon, put32};

/// TEST UNIT READY with ITT `itt` and CmdSN `sn` (non-immediate).
fn tur_at(r: &mut Raw, itt: u32, sn: u32) {
    r.cmd_sn = sn;
    r.scsi(itt, &[0u8; 6], 0, 0x80, &[]);
}

/// A SCSI Response: (ITT, flags, status).
fn scsi_rsp(r: &mut Raw) -> (u32, u8, u8) {
    let (h, _) = r.read_pdu().expect("SCSI Response");
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
    (
        u32::from_be_bytes(h[16..20].try_into().unwrap()),
        h[1],
        h[3],
    )
}

/// RFC 7143 §4.2.2.1: a non-immediate command whose CmdSN duplicates one waiting for a gap is
/// silently ignored; the connection stays and the held command runs once the gap closes.
#[test]
fn a_duplicate_cmd_sn_in_the_window_is_ignored() {
    let (_d, addr) = daemon("16MiB");
    let mut r = Raw::login(addr, false);
    tur_at(&mut r, 10, 2);
    tur_at(&mut r, 11, 2);
    tur_at(&mut r, 12, 1);
    assert_eq!(scsi_rsp(&mut r), (12, 0x80, 0));
    assert_eq!(scsi_rsp(&mut r), (10, 0x80, 0));
    // The duplicate got nothing; the connection serves on.
    tur_at(&mut r, 13, 3);
    assert_eq!(scsi_rsp(&mut r), (13, 0x80, 0));
    let mut h = bhs(0x40, 0x80);
    put32(&mut h, 16, 14);
    put32(&mut h, 20, 0xFFFF_FFFF);
    put32(&mut h, 24, 4);
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("NOP-In");
    assert_eq!(h[0] & 0x3F, 0x20);
}
