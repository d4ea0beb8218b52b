//! iSCSI details of RFC 7143, SPC-4 and SBC-3 an audit found wrong, each checked with the raw
//! initiator (`iscsi::Raw`): the CmdSN window, residuals of writes without data, text keys in
//! full feature phase, discovery sessions and SCSI fields.

use crate::harness::pattern;
use crate::iscsi::{Raw, bhs, daemon, put32, read_blocks, read10, write10};
use crate::iscsi_limits::{discovery, logout, text, text_rsp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// A SCSI Response with its sense: (flags, status, residual, sense key, ASC, ASCQ).
fn scsi_rsp_sense(r: &mut Raw, itt: u32) -> (u8, u8, u32, u8, u8, u8) {
    let (h, d) = r.read_pdu().expect("SCSI Response");
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
    assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), itt);
    let res = u32::from_be_bytes(h[44..48].try_into().unwrap());
    // The data segment: SenseLength (2 bytes), then fixed-format sense data.
    let (k, asc, ascq) = if d.len() >= 2 + 14 {
        (d[2 + 2] & 0x0F, d[2 + 12], d[2 + 13])
    } else {
        (0, 0, 0)
    };
    (h[1], h[3], res, k, asc, ascq)
}

/// A WRITE without the W bit (RFC 7143 §11.3.1: no data will follow) is never answered GOOD:
/// CHECK CONDITION, ILLEGAL REQUEST / INVALID FIELD IN INFORMATION UNIT, with the overflow
/// residual of all the bytes the CDB wanted; nothing is written. With the W bit and its data
/// the same write succeeds.
#[test]
fn a_write_without_the_w_bit_is_refused_with_its_residual() {
    let (_d, addr) = daemon("16MiB");
    let mut r = Raw::login(addr, false);
    for (itt, flags) in [(1, 0x80), (2, 0xC0)] {
        r.scsi(itt, &write10(0, 8), 4096, flags, &[]);
        assert_eq!(
            scsi_rsp_sense(&mut r, itt),
            (0x84, 0x02, 4096, 0x05, 0x0E, 0x03),
            "flags {flags:#x}"
        );
    }
    assert!(read_blocks(&mut r, 3, 0, 8).iter().all(|&b| b == 0));
    let data = pattern(9, 4096);
    r.scsi(4, &write10(0, 8), 4096, 0xA0, &data);
    assert_eq!(scsi_rsp_sense(&mut r, 4), (0x80, 0, 0, 0, 0, 0));
    assert_eq!(read_blocks(&mut r, 5, 0, 8), data);
}

/// RFC 7143 §13.12: MaxRecvDataSegmentLength (Use: ALL) declared in a full feature phase Text
/// Request is accepted, answered with the target's own declaration, and bounds what the target
/// sends on that connection from then on: Data-In in a normal session, Text Responses in a
/// discovery session. A value out of range is answered Reject and changes nothing.
#[test]
fn max_recv_data_segment_length_declared_in_full_feature_phase_applies() {
    let portals: Vec<String> = (0..20).map(|i| format!("'10.0.{i}.2:3260,2'")).collect();
    let (_d, addr) =
        crate::iscsi::daemon_with("8MiB", &format!("extra_portals = [{}]", portals.join(",")));
    // Normal session: the default 8192, then 1024 declared.
    let mut r = Raw::login(addr, false);
    text(
        &mut r,
        0x80,
        1,
        0xFFFF_FFFF,
        b"MaxRecvDataSegmentLength=100\0",
    );
    let (flags, _, d) = text_rsp(&mut r, 1);
    assert_eq!(flags & 0x80, 0x80);
    assert_eq!(d, b"MaxRecvDataSegmentLength=Reject\0");
    text(
        &mut r,
        0x80,
        2,
        0xFFFF_FFFF,
        b"MaxRecvDataSegmentLength=1024\0",
    );
    let (_, _, d) = text_rsp(&mut r, 2);
    assert_eq!(d, b"MaxRecvDataSegmentLength=262144\0");
    r.scsi(3, &read10(0, 8), 4096, 0xC0, &[]);
    let mut lens = Vec::new();
    loop {
        let (h, d) = r.read_pdu().expect("Data-In");
        assert_eq!(h[0] & 0x3F, 0x25, "Data-In, got opcode {:#x}", h[0]);
        lens.push(d.len());
        if h[1] & 0x01 != 0 {
            break;
        }
    }
    assert_eq!(lens, [1024; 4]);
    // Discovery session: declared 8192 at login, then 512.
    let mut r = discovery(addr, 8192);
    text(
        &mut r,
        0x80,
        5,
        0xFFFF_FFFF,
        b"MaxRecvDataSegmentLength=512\0",
    );
    let (_, _, d) = text_rsp(&mut r, 5);
    assert_eq!(d, b"MaxRecvDataSegmentLength=262144\0");
    text(&mut r, 0x80, 6, 0xFFFF_FFFF, b"SendTargets=All\0");
    let mut all = Vec::new();
    loop {
        let (flags, ttt, d) = text_rsp(&mut r, 6);
        assert!(d.len() <= 512, "a Text Response of {} bytes", d.len());
        all.extend_from_slice(&d);
        if flags & 0x80 != 0 {
            break;
        }
        text(&mut r, 0x80, 6, ttt, &[]);
    }
    assert!(all.len() > 512);
    assert!(
        String::from_utf8(all)
            .unwrap()
            .contains("TargetAddress=10.0.19.2:3260,2\0")
    );
}

/// The SendTargets answer of a session that reached address `at` of a target listening on
/// `listen` (one portal).
fn send_targets_via(listen: &str, at: IpAddr) -> String {
    let cfg = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[iscsi]\nlisten=['{listen}']\n[control]\nsocket=''\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='4MiB'\n"
    );
    let (_d, addr) = crate::iscsi::daemon_from(&cfg);
    let mut r = discovery(SocketAddr::new(at, addr.port()), 8192);
    text(&mut r, 0x80, 1, 0xFFFF_FFFF, b"SendTargets=All\0");
    let (_, _, d) = text_rsp(&mut r, 1);
    String::from_utf8(d).unwrap()
}

/// RFC 7143 §13.8: a TargetAddress must be one the initiator can reach. A portal listening on
/// a wildcard address is listed with the address the discovery connection reached (IPv6 in
/// brackets), never as 0.0.0.0 or ::.
#[test]
fn send_targets_lists_the_reached_address_for_a_wildcard_portal() {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let a = send_targets_via("0.0.0.0:0", v4);
    assert!(a.contains("TargetAddress=127.0.0.1:"), "{a:?}");
    assert!(!a.contains("0.0.0.0"), "{a:?}");
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let a = send_targets_via("[::]:0", IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert!(a.contains("TargetAddress=[::1]:"), "{a:?}");
        // An IPv4 initiator reaching the IPv6 wildcard socket gets its IPv4 address.
        let a = send_targets_via("[::]:0", v4);
        assert!(a.contains("TargetAddress=127.0.0.1:"), "{a:?}");
    }
}

/// RFC 7143 §4.3: a discovery session takes only Text Requests with SendTargets (and the
/// declarative MaxRecvDataSegmentLength) and a Logout closing the session; every other request
/// is rejected (protocol error, the header returned) without taking its CmdSN, and the session
/// goes on.
#[test]
fn a_discovery_session_rejects_everything_but_send_targets_and_logout() {
    let (_d, addr) = daemon("8MiB");
    let mut r = discovery(addr, 8192);
    let sn = r.cmd_sn;
    let req = |opcode: u8, flags: u8, itt: u32| {
        let mut h = bhs(opcode, flags);
        put32(&mut h, 16, itt);
        put32(&mut h, 20, 0xFFFF_FFFF);
        put32(&mut h, 24, sn);
        h
    };
    let mut cases: Vec<([u8; 48], Vec<u8>)> = vec![
        // TARGET WARM RESET, LUN RESET, ABORT TASK.
        (req(0x02, 0x86, 1), vec![]),
        (req(0x02, 0x85, 2), vec![]),
        (req(0x02, 0x81, 3), vec![]),
        // A NOP-Out asking for an answer, immediate and not.
        (req(0x40, 0x80, 4), b"ping".to_vec()),
        (req(0x00, 0x80, 5), vec![]),
        // Logout: close the connection, remove it for recovery.
        (req(0x06, 0x81, 6), vec![]),
        (req(0x06, 0x82, 7), vec![]),
        // Text without SendTargets, or with other keys beside it.
        (req(0x04, 0x80, 8), b"X-com.example.Foo=1\0".to_vec()),
        (
            req(0x04, 0x80, 9),
            b"SendTargets=All\0MaxBurstLength=512\0".to_vec(),
        ),
        // A SCSI command (TEST UNIT READY), a SNACK.
        (req(0x01, 0x80, 10), vec![]),
        (req(0x10, 0x80, 11), vec![]),
    ];
    for (h, d) in cases.drain(..) {
        r.send(h, &d);
        let (rh, rd) = r.read_pdu().expect("Reject");
        assert_eq!(
            (rh[0] & 0x3F, rh[2]),
            (0x3F, 0x04),
            "opcode {:#x} flags {:#x}: Reject, protocol error",
            h[0],
            h[1]
        );
        assert_eq!(&rd[..4], &h[..4], "the rejected header returned");
        assert_eq!(&rd[8..20], &h[8..20], "the rejected header returned");
    }
    // The CmdSN was never taken: SendTargets with it is answered, then the Logout closes.
    text(&mut r, 0x80, 20, 0xFFFF_FFFF, b"SendTargets=All\0");
    let (flags, _, d) = text_rsp(&mut r, 20);
    assert_eq!(flags & 0x80, 0x80);
    assert!(String::from_utf8(d).unwrap().starts_with("TargetName="));
    logout(&mut r, 21);
}

/// ABORT TASK addresses a task of the TMF's logical unit (RFC 7143 §11.5.1): a task with that
/// tag on another LU "does not exist" for it and goes on; an LU the target lacks is answered
/// "LUN does not exist". A Logout with a reserved reason code (3..127) is rejected without
/// taking its CmdSN (§11.14.1). (Before, the LUN was ignored and the task aborted; the
/// reserved reason was answered "recovery not supported".)
#[test]
fn abort_task_keeps_to_its_lun_and_a_reserved_logout_reason_is_rejected() {
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[iscsi]\nlisten=['127.0.0.1:0']\n[[iscsi.target]]\niqn='{}'\nluns=['vol0','vol1']\n[control]\nsocket=''\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='8M'\n[[volume]]\nname='vol1'\nbackend='malloc'\nsize='8M'\n",
        crate::iscsi::IQN
    );
    let (_d, addr) = crate::iscsi::daemon_from(&text);
    let mut r = Raw::login(addr, false);
    let t = std::time::Instant::now();
    loop {
        let sn = r.cmd_sn;
        tur_at(&mut r, 1, sn);
        r.cmd_sn = sn + 1;
        if scsi_rsp(&mut r).2 == 0 {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "never ready"
        );
    }
    // A WRITE on LUN 0 waits for its data.
    r.scsi(20, &write10(16, 1), 512, 0xA0, &[]);
    let (h, _) = r.read_pdu().expect("R2T");
    assert_eq!(h[0] & 0x3F, 0x31, "R2T");
    let ttt = u32::from_be_bytes(h[20..24].try_into().unwrap());
    let abort = |r: &mut Raw, itt: u32, lun: u8| {
        let mut h = bhs(0x42, 0x80 | 1);
        h[9] = lun;
        put32(&mut h, 16, itt);
        put32(&mut h, 20, 20);
        put32(&mut h, 24, r.cmd_sn);
        put32(&mut h, 32, r.cmd_sn - 1);
        r.send(h, &[]);
        let (h, _) = r.read_pdu().expect("TMF Response");
        assert_eq!(h[0] & 0x3F, 0x22);
        h[2]
    };
    assert_eq!(
        abort(&mut r, 21, 1),
        1,
        "ABORT TASK on LUN 1: task does not exist"
    );
    assert_eq!(
        abort(&mut r, 22, 7),
        2,
        "ABORT TASK on a LUN the target lacks"
    );
    let data = pattern(9, 512);
    let mut d = bhs(0x05, 0x80);
    put32(&mut d, 16, 20);
    put32(&mut d, 20, ttt);
    r.send(d, &data);
    let (itt, _, st) = scsi_rsp(&mut r);
    assert_eq!((itt, st), (20, 0), "the write on LUN 0 was not aborted");
    assert_eq!(read_blocks(&mut r, 23, 16, 1), data);
    // Logout with reason 5: Reject (invalid PDU field), CmdSN not taken.
    let mut h = bhs(0x06, 0x80 | 5);
    put32(&mut h, 16, 24);
    put32(&mut h, 24, r.cmd_sn);
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("Reject");
    assert_eq!((h[0] & 0x3F, h[2]), (0x3F, 0x09));
    logout(&mut r, 25);
}

/// SPC-4 §6.33: REPORT LUNS with SELECT REPORT 01h lists the well known logical units only;
/// the target has none, so its LUN LIST LENGTH is 0 (00h and 02h list LUN 0). An ALLOCATION
/// LENGTH under 16 is INVALID FIELD IN CDB.
#[test]
fn report_luns_selecting_well_known_units_lists_none() {
    let (_d, addr) = daemon("16MiB");
    let mut r = Raw::login(addr, false);
    // Past the power-on unit attention (REPORT LUNS is not held by it, TEST UNIT READY is).
    let _ = crate::iscsi::status_of(&mut r, 1, &[0u8; 6], 0);
    let report = |r: &mut Raw, itt: u32, select: u8, alloc: u32| {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xA0;
        cdb[2] = select;
        cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
        crate::iscsi::status_of(r, itt, &cdb, alloc)
    };
    for select in [0u8, 2] {
        let (st, _, _, _, d) = report(&mut r, 10 + u32::from(select), select, 64);
        assert_eq!(st, 0);
        assert_eq!(
            &d[..4],
            &8u32.to_be_bytes(),
            "SELECT REPORT {select}: LUN 0"
        );
        assert_eq!(d.len(), 16);
    }
    let (st, _, _, _, d) = report(&mut r, 20, 1, 64);
    assert_eq!(st, 0);
    assert_eq!(d, [0u8; 8], "no well known logical unit");
    let (st, key, asc, ascq, _) = report(&mut r, 21, 0, 15);
    assert_eq!((st, key, asc, ascq), (2, 5, 0x24, 0));
}
