//! iSCSI Data-Out at the edges of RFC 7143: a command refused while its unsolicited data is
//! still to come is answered only after that data (§11.4.2, §11.17.1), the data conditions
//! of §11.4.7.2 are answered with their sense, and a rejected command PDU does not take its
//! CmdSN (§11.17.1). Raw PDUs (`iscsi::Raw`) against an in-process daemon.

use crate::harness::pattern;
use crate::iscsi::{Raw, bhs, daemon, put32, read_blocks, write10};
use crate::iscsi_limits::login_with;
use std::time::Duration;

/// Nothing arrives from the target within 300 ms.
fn silent(r: &mut Raw, what: &str) {
    r.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(r.read_pdu().is_none(), "{what}");
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

/// A SCSI Response with CHECK CONDITION: (sense key, ASC, ASCQ).
fn check_condition(r: &mut Raw) -> (u8, u8, u8) {
    let (h, d) = r.read_pdu().expect("SCSI Response");
    assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0x02), "CHECK CONDITION");
    (d[4] & 0x0F, d[14], d[15])
}

/// An unsolicited Data-Out (TTT FFFFFFFFh) of task `itt`.
fn unsolicited(r: &mut Raw, itt: u32, offset: u32, data: &[u8], fin: bool) {
    let mut dout = bhs(0x05, if fin { 0x80 } else { 0 });
    put32(&mut dout, 16, itt);
    put32(&mut dout, 20, 0xFFFF_FFFF);
    put32(&mut dout, 40, offset);
    r.send(dout, data);
}

/// A WRITE to a LUN the target does not have, its F bit clear (unsolicited Data-Out to
/// follow): no SCSI Response before the last of that Data-Out, then CHECK CONDITION (LOGICAL
/// UNIT NOT SUPPORTED). (Before, the response came at once, with Data-Out still expected.)
#[test]
fn a_refused_write_is_answered_only_after_its_unsolicited_data() {
    let (_d, addr) = daemon("16MiB");
    let mut r = login_with(
        addr,
        &[
            "InitialR2T=No",
            "ImmediateData=Yes",
            "FirstBurstLength=65536",
        ],
    );
    let mut h = bhs(0x01, 0x20);
    put32(&mut h, 16, 1);
    put32(&mut h, 20, 4096);
    put32(&mut h, 24, r.cmd_sn);
    r.cmd_sn += 1;
    h[8..16].copy_from_slice(&[0, 9, 0, 0, 0, 0, 0, 0]);
    h[32..42].copy_from_slice(&write10(0, 8));
    r.send(h, &[0xAB; 1024]);
    silent(
        &mut r,
        "a response while unsolicited Data-Out is still expected",
    );
    unsolicited(&mut r, 1, 1024, &[0xAB; 1024], false);
    silent(&mut r, "a response before the F bit");
    unsolicited(&mut r, 1, 2048, &[0xAB; 2048], true);
    assert_eq!(
        check_condition(&mut r),
        (0x05, 0x25, 0x00),
        "LUN not supported"
    );
}

/// An unsolicited burst ended (F bit) before min(EDTL, FirstBurstLength): CHECK CONDITION,
/// ABORTED COMMAND / incorrect amount of data (0Ch/0Dh), nothing written. (Before, the
/// target asked for the rest with an R2T and answered GOOD.)
#[test]
fn a_short_unsolicited_burst_is_an_incorrect_amount_of_data() {
    let (_d, addr) = daemon("16MiB");
    let mut r = login_with(
        addr,
        &[
            "InitialR2T=No",
            "ImmediateData=Yes",
            "FirstBurstLength=4096",
            "MaxBurstLength=65536",
        ],
    );
    r.scsi(1, &write10(0, 16), 8192, 0x20, &[]);
    unsolicited(&mut r, 1, 0, &[0xCD; 2048], true);
    assert_eq!(check_condition(&mut r), (0x0B, 0x0C, 0x0D));
    assert_eq!(
        read_blocks(&mut r, 2, 0, 16),
        vec![0; 8192],
        "nothing was written"
    );
}

/// Immediate data in a session that negotiated ImmediateData=No: CHECK CONDITION, ABORTED
/// COMMAND / unexpected unsolicited data (0Ch/0Ch; RFC 7143 §13.11: "the target MUST reject
/// unsolicited data with the corresponding response code"), nothing written, the command's
/// CmdSN taken. (Before: a Reject PDU and no response.)
#[test]
fn immediate_data_without_immediate_data_negotiated_is_unexpected_unsolicited_data() {
    let (_d, addr) = daemon("16MiB");
    let mut r = login_with(addr, &["ImmediateData=No"]);
    r.scsi(1, &write10(0, 1), 512, 0xA0, &[0xEE; 512]);
    assert_eq!(check_condition(&mut r), (0x0B, 0x0C, 0x0C));
    assert_eq!(
        read_blocks(&mut r, 2, 0, 1),
        vec![0; 512],
        "nothing written"
    );
}

/// A command PDU the target rejects does not take its CmdSN: the initiator sends its next
/// command with the same CmdSN, and it runs. (Before, ExpCmdSN moved past the rejected one
/// and the corrected command was ignored as a duplicate.)
#[test]
fn a_rejected_command_does_not_take_its_cmd_sn() {
    let (_d, addr) = daemon("16MiB");
    let mut r = login_with(addr, &[]);
    // R and W both set: Reject (command not supported).
    r.scsi(1, &write10(0, 1), 512, 0x80 | 0x40 | 0x20, &[]);
    let (h, _) = r.read_pdu().expect("Reject");
    assert_eq!((h[0] & 0x3F, h[2]), (0x3F, 0x05));
    let exp = u32::from_be_bytes(h[28..32].try_into().unwrap());
    assert_eq!(exp, r.cmd_sn - 1, "ExpCmdSN still the rejected command's");
    r.cmd_sn -= 1;
    let data = pattern(3, 512);
    r.scsi(2, &write10(0, 1), 512, 0xA0, &data);
    let (h, _) = r.read_pdu().expect("SCSI Response");
    assert_eq!((h[0] & 0x3F, h[3]), (0x21, 0), "the resent command runs");
    assert_eq!(read_blocks(&mut r, 3, 0, 1), data);
}

/// A COMPARE AND WRITE of one block at `lba`: compare `cmp`, write `data`; the SCSI
/// Response's status and its sense data (empty when GOOD).
fn compare_and_write(r: &mut Raw, itt: u32, lba: u32, cmp: &[u8], data: &[u8]) -> (u8, Vec<u8>) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&u64::from(lba).to_be_bytes());
    cdb[13] = 1;
    let mut both = cmp.to_vec();
    both.extend_from_slice(data);
    r.scsi(itt, &cdb, both.len() as u32, 0xA0, &both);
    let (h, d) = r.read_pdu().expect("SCSI Response");
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
    (h[3], d)
}

/// The miscompare of COMPARE AND WRITE reports the offset of the first byte that differs in
/// INFORMATION, VALID set (SBC-3 §5.2), on a plain volume and on a mirrored one (whose
/// compare is decided by the mirror). (Before, VALID was 0 and INFORMATION 0.)
#[test]
fn a_compare_and_write_miscompare_reports_the_offset_of_the_first_difference() {
    let check = |r: &mut Raw, who: &str| {
        let block = pattern(21, 512);
        let t = std::time::Instant::now();
        loop {
            // (A mirrored site may answer a unit attention or path state first.)
            let (st, _) = compare_and_write(r, 1, 4, &[0; 512], &block);
            if st == 0 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{who}: never GOOD");
        }
        let mut wrong = block.clone();
        wrong[100] ^= 0xFF;
        wrong[300] ^= 0xFF;
        let (st, d) = compare_and_write(r, 2, 4, &wrong, &[0x55; 512]);
        assert_eq!(st, 0x02, "{who}: CHECK CONDITION");
        let sense = &d[2..];
        assert_eq!(
            (sense[0] & 0x80, sense[2] & 0x0F, sense[12], sense[13]),
            (0x80, 0x0E, 0x1D, 0x00),
            "{who}: VALID, MISCOMPARE DURING VERIFY OPERATION"
        );
        assert_eq!(
            u32::from_be_bytes(sense[3..7].try_into().unwrap()),
            100,
            "{who}: INFORMATION = offset of the first differing byte"
        );
        assert_eq!(read_blocks(r, 3, 4, 1), block, "{who}: unchanged");
    };
    let (_d, addr) = daemon("16MiB");
    let mut r = login_with(addr, &[]);
    check(&mut r, "a plain volume");
    let root = tempfile::tempdir().unwrap();
    let (_a, ia, _b, _ib) = crate::iscsi::two_sites(root.path(), "");
    let mut r = login_with(ia, &[]);
    check(&mut r, "a mirrored volume");
}
