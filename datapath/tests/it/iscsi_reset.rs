//! A LOGICAL UNIT RESET of a mirrored volume's LUN decided at one site aborts the LU's tasks of
//! every I_T nexus at both sites (SAM-5; TAS=0: an aborted task gets no response), each of those
//! nexuses then reports the reset as a unit attention (29h/03h), and the TMF answer comes only
//! once both sites have aborted (docs/iscsi.md, "Resets across the sites"). With the peer gone,
//! the reset still completes at the deciding site.

use crate::harness::pattern;
use crate::iscsi::{Raw, bhs, put32, read_blocks, status_of, two_sites, write10};
use std::time::{Duration, Instant};

const TUR: [u8; 6] = [0; 6];

/// Logged in as `name` at `addr`, past its first unit attentions.
fn session(addr: std::net::SocketAddr, name: &str) -> Raw {
    let mut r = Raw::login_as(addr, name);
    let t = Instant::now();
    while status_of(&mut r, 1, &TUR, 0).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{name}: never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    r
}

/// A WRITE(10) of 64 blocks at `lba` without immediate data (InitialR2T=Yes): the target asks
/// for the data with an R2T and the task waits for it. Returns the R2T's TTT.
fn write_waiting_for_data(r: &mut Raw, itt: u32, lba: u32) -> u32 {
    r.scsi(itt, &write10(lba, 64), 64 * 512, 0xA0, &[]);
    let (h, d) = r.read_pdu().expect("an R2T");
    // (Once seen under load: a SCSI Response instead; its status and sense say why.)
    assert_eq!(
        h[0] & 0x3F,
        0x31,
        "R2T, got opcode {:#x}, response {:#x}, status {:#x}, sense {:02x?}",
        h[0],
        h[2],
        h[3],
        &d[..d.len().min(20)]
    );
    assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), itt);
    u32::from_be_bytes(h[20..24].try_into().unwrap())
}

/// The Data-Out answering R2T `ttt` of task `itt` (the whole 32 KiB, F bit).
fn data_out(r: &mut Raw, itt: u32, ttt: u32, data: &[u8]) {
    let mut h = bhs(0x05, 0x80);
    put32(&mut h, 16, itt);
    put32(&mut h, 20, ttt);
    r.send(h, data);
}

/// LOGICAL UNIT RESET of LUN 0: the TMF response code.
fn lun_reset(r: &mut Raw, itt: u32) -> u8 {
    tmf(r, itt, 5)
}

/// Task management function `func` (LUN 0, no referenced task): the response code.
fn tmf(r: &mut Raw, itt: u32, func: u8) -> u8 {
    let mut h = bhs(0x02, 0x80 | func);
    put32(&mut h, 16, itt);
    put32(&mut h, 20, 0xFFFF_FFFF);
    put32(&mut h, 24, r.cmd_sn);
    r.cmd_sn += 1;
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("a TMF Response");
    assert_eq!(h[0] & 0x3F, 0x22, "TMF Response, got opcode {:#x}", h[0]);
    assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), itt);
    h[2]
}

/// After the reset: the aborted write's data is dropped and the write is never answered; the
/// next command reports the reset (UNIT ATTENTION 29h/03h), the one after is GOOD.
fn aborted_then_unit_attention(r: &mut Raw, itt: u32, ttt: u32, who: &str) {
    data_out(r, itt, ttt, &[0xEE; 64 * 512]);
    let s = status_of(r, itt + 1, &TUR, 0);
    assert_eq!(
        (s.0, s.1, s.2, s.3),
        (2, 6, 0x29, 0x03),
        "{who}: the first answer after the reset is the TEST UNIT READY's unit attention (not the aborted write's status)"
    );
    assert_eq!(status_of(r, itt + 2, &TUR, 0).0, 0, "{who}: reported once");
}

#[test]
fn a_lun_reset_at_one_site_aborts_the_lus_tasks_at_both_sites() {
    let root = tempfile::tempdir().unwrap();
    let (a, ia, mut b, ib) = two_sites(root.path(), "");
    let mut ha = session(ia, "iqn.2026-12.test:resetter");
    let mut hb = session(ib, "iqn.2026-12.test:at-b");
    let mut hc = session(ia, "iqn.2026-12.test:other-at-a");
    // A write waiting for its data at site b, and another at site a (another nexus).
    let tb = write_waiting_for_data(&mut hb, 10, 64);
    let tc = write_waiting_for_data(&mut hc, 10, 128);
    // Site a resets the LU; its answer comes once both sites have aborted.
    assert_eq!(lun_reset(&mut ha, 20), 0, "function complete");
    aborted_then_unit_attention(&mut hb, 10, tb, "site b");
    aborted_then_unit_attention(&mut hc, 10, tc, "site a's other nexus");
    // The resetter reports it too (it raised it for every nexus of the LU).
    assert_eq!(status_of(&mut ha, 21, &TUR, 0).1, 6);
    // Nothing of the aborted writes reached the medium, and new commands work at both sites.
    assert!(read_blocks(&mut ha, 22, 64, 64).iter().all(|&x| x == 0));
    assert!(read_blocks(&mut hb, 23, 128, 64).iter().all(|&x| x == 0));
    let data = pattern(7, 64 * 512);
    hb.scsi(24, &write10(64, 64), 64 * 512, 0xA0, &data);
    let (h, _) = hb.read_pdu().expect("a SCSI Response");
    assert_eq!(
        (h[0] & 0x3F, h[3]),
        (0x21, 0),
        "site b writes after the reset"
    );
    assert_eq!(
        read_blocks(&mut ha, 25, 64, 64),
        data,
        "and site a reads it"
    );
    // The peer gone: the reset still completes at the deciding site, and its other nexus's
    // waiting write is still aborted.
    b.kill();
    let tc = write_waiting_for_data(&mut hc, 30, 256);
    ha.s.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(
        lun_reset(&mut ha, 40),
        0,
        "function complete without the peer"
    );
    data_out(&mut hc, 30, tc, &[0xEE; 64 * 512]);
    let s = status_of(&mut hc, 31, &TUR, 0);
    assert_eq!(
        (s.1, s.2),
        (6, 0x29),
        "site a's other nexus: the reset's unit attention, not the write's status"
    );
    drop((ha, hb, hc, a));
}

/// SAM-5: an I_T NEXUS RESET concerns its own I_T nexus only. The other nexuses of the logical
/// unit see no unit attention and keep their RESERVE; the reset nexus's session ends, and when
/// that nexus (same initiator name and ISID) logs in again, its first command reports I_T
/// NEXUS LOSS OCCURRED (29h/07h), once.
#[test]
fn an_it_nexus_reset_touches_only_its_own_nexus() {
    let (_d, addr) = crate::iscsi::daemon("8M");
    let mut holder = session(addr, "iqn.2026-12.test:holder");
    let mut resetter = session(addr, "iqn.2026-12.test:resetter");
    assert_eq!(
        status_of(&mut holder, 2, &[0x16, 0, 0, 0, 0, 0], 0).0,
        0,
        "RESERVE(6) by the holder"
    );
    assert_eq!(tmf(&mut resetter, 3, 11), 0, "function complete");
    let t = Instant::now();
    while !resetter.closed() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the reset nexus's session ends"
        );
    }
    let s = status_of(&mut holder, 4, &TUR, 0);
    assert_eq!(
        (s.0, s.1, s.2, s.3),
        (0, 0, 0, 0),
        "another nexus sees no unit attention"
    );
    let mut again = Raw::login_as(addr, "iqn.2026-12.test:resetter");
    let s = status_of(&mut again, 5, &TUR, 0);
    assert_eq!(
        (s.0, s.1, s.2, s.3),
        (2, 6, 0x29, 0x07),
        "the same nexus, logged in again: I_T NEXUS LOSS OCCURRED"
    );
    assert_eq!(
        status_of(&mut again, 7, &write10(0, 1), 0).0,
        0x18,
        "reported once, and the holder's RESERVE survived another nexus's reset: RESERVATION CONFLICT"
    );
    let mut other = Raw::login_as(addr, "iqn.2026-12.test:third");
    assert_eq!(
        status_of(&mut other, 8, &write10(0, 1), 0).0,
        0x18,
        "a new nexus has no I_T nexus loss to report (the unit attention would come first)"
    );
}

/// A LOGICAL UNIT RESET terminates the session's commands held for a CmdSN gap only when they
/// are addressed to the reset LU: a command to another LU of the target, waiting for its turn,
/// still runs once the gap closes (it was dropped with the reset and never answered before).
#[test]
fn a_lun_reset_keeps_held_commands_of_other_lus() {
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[iscsi]\nlisten=['127.0.0.1:0']\n[[iscsi.target]]\niqn='{}'\nluns=['vol0','vol1']\n[control]\nsocket=''\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='8M'\n[[volume]]\nname='vol1'\nbackend='malloc'\nsize='8M'\n",
        crate::iscsi::IQN
    );
    let (d, addr) = crate::iscsi::daemon_from(&text);
    let mut r = session(addr, "iqn.2026-12.test:two-lus");
    let tur = |lun: u8, itt: u32, sn: u32| {
        let mut h = bhs(0x01, 0x80);
        h[9] = lun;
        put32(&mut h, 16, itt);
        put32(&mut h, 24, sn);
        h
    };
    // LUN 1's first command reports its power-on unit attention, if any: past it.
    let sn = r.cmd_sn;
    r.send(tur(1, 50, sn), &[]);
    r.read_pdu().expect("LUN 1's answer");
    let sn = sn + 1;
    // LUN 1's command waits for CmdSN sn, which has not come.
    r.send(tur(1, 60, sn + 1), &[]);
    std::thread::sleep(Duration::from_millis(100));
    // An immediate LOGICAL UNIT RESET of LUN 0.
    let mut h = bhs(0x02 | 0x40, 0x80 | 5);
    put32(&mut h, 16, 61);
    put32(&mut h, 20, 0xFFFF_FFFF);
    put32(&mut h, 24, sn);
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("the TMF Response");
    assert_eq!((h[0] & 0x3F, h[2]), (0x22, 0), "LUN RESET complete");
    // CmdSN sn (LUN 0) closes the gap: both commands are answered.
    r.send(tur(0, 62, sn), &[]);
    let mut answered = Vec::new();
    while answered.len() < 2 {
        match r.read_pdu() {
            Some((h, _)) if h[0] & 0x3F == 0x21 => {
                answered.push(u32::from_be_bytes(h[16..20].try_into().unwrap()))
            }
            Some(_) => {}
            None => break,
        }
    }
    answered.sort();
    assert_eq!(
        answered,
        vec![60, 62],
        "LUN 1's held command and LUN 0's gap-closing one are both answered"
    );
    drop(d);
}

/// A session that has not sent a command to the logical unit yet still hears of a LOGICAL
/// UNIT RESET made after its login: its first command gets UNIT ATTENTION 29h/03h (SAM-5: the
/// reset sets it for every I_T nexus). (Before, the unit attention was raised only for
/// sessions that had used the unit.)
#[test]
fn a_lun_reset_reaches_a_session_that_has_not_used_the_unit_yet() {
    let (_d, addr) = crate::iscsi::daemon("16MiB");
    let mut quiet = Raw::login_as(addr, "iqn.2026-12.test:quiet");
    let mut b = session(addr, "iqn.2026-12.test:resetter");
    assert_eq!(lun_reset(&mut b, 50), 0, "LUN RESET complete");
    let s = status_of(&mut quiet, 1, &TUR, 0);
    assert_eq!(
        (s.0, s.1, s.2, s.3),
        (2, 6, 0x29, 0x03),
        "the reset's unit attention"
    );
    assert_eq!(status_of(&mut quiet, 2, &TUR, 0).0, 0, "reported once");
}

/// TARGET COLD RESET closes every connection of the target, of every initiator (RFC 7143
/// §11.5.1), not only the requester's; a new login is served afterwards. (Before, another
/// initiator's session stayed connected.)
#[test]
fn a_target_cold_reset_closes_every_session_of_the_target() {
    let (_d, addr) = crate::iscsi::daemon("16MiB");
    let mut a = session(addr, "iqn.2026-12.test:bystander");
    let mut b = session(addr, "iqn.2026-12.test:cold");
    assert_eq!(tmf(&mut b, 60, 7), 0, "TARGET COLD RESET complete");
    for (r, who) in [
        (&mut a, "the other initiator's"),
        (&mut b, "the requester's"),
    ] {
        r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(r.closed(), "{who} connection left open after a cold reset");
    }
    let mut c = session(addr, "iqn.2026-12.test:after");
    assert_eq!(status_of(&mut c, 2, &TUR, 0).0, 0);
}

/// An immediate ABORT TASK SET whose CmdSN is past a gap (RFC 7143 §11.5.1): the command held
/// behind the gap and the one that fills it (both to the LU, both before the TMF) are aborted,
/// never answered (TAS=0), nothing is written, and the TMF answer comes only once the gap is
/// filled; the next command runs. (Before, the TMF was answered at once and the held WRITE
/// ran GOOD once the gap was filled.)
#[test]
fn abort_task_set_aborts_the_commands_still_in_a_cmd_sn_gap() {
    let (_d, addr) = crate::iscsi::daemon("16MiB");
    let mut r = session(addr, "iqn.2026-12.test:gap");
    let exp = r.cmd_sn;
    // CmdSN exp is left missing; a WRITE with immediate data waits behind it.
    r.cmd_sn = exp + 1;
    r.scsi(30, &write10(8, 1), 512, 0xA0, &[0xEE; 512]);
    // Immediate ABORT TASK SET, CmdSN exp + 2.
    let mut h = bhs(0x42, 0x80 | 2);
    put32(&mut h, 16, 31);
    put32(&mut h, 20, 0xFFFF_FFFF);
    put32(&mut h, 24, exp + 2);
    r.send(h, &[]);
    r.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        r.read_pdu().is_none(),
        "the TMF answered before the commands before it came"
    );
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The gap is filled by a WRITE to the same LU: aborted too.
    r.cmd_sn = exp;
    r.scsi(32, &write10(9, 1), 512, 0xA0, &[0xDD; 512]);
    let (h, _) = r.read_pdu().expect("the TMF Response");
    assert_eq!(
        h[0] & 0x3F,
        0x22,
        "TMF Response first, got opcode {:#x}",
        h[0]
    );
    assert_eq!(
        (u32::from_be_bytes(h[16..20].try_into().unwrap()), h[2]),
        (31, 0)
    );
    r.cmd_sn = exp + 2;
    assert_eq!(
        read_blocks(&mut r, 33, 8, 2),
        vec![0; 1024],
        "an aborted write was written"
    );
}

/// CLEAR TASK SET clears the logical unit's one task set (TST=000b): another I_T nexus's
/// task is aborted (never answered, its data dropped, nothing written) and that nexus's next
/// command reports COMMANDS CLEARED BY ANOTHER INITIATOR (2Fh/00h), once. (Before, only the
/// requester's own tasks were aborted and the other's write completed GOOD.)
#[test]
fn clear_task_set_aborts_the_tasks_of_every_nexus_of_the_unit() {
    let (_d, addr) = crate::iscsi::daemon("16MiB");
    let mut a = session(addr, "iqn.2026-12.test:victim");
    let mut b = session(addr, "iqn.2026-12.test:clearer");
    let ttt = write_waiting_for_data(&mut a, 40, 128);
    assert_eq!(tmf(&mut b, 70, 4), 0, "CLEAR TASK SET complete");
    data_out(&mut a, 40, ttt, &[0xEE; 64 * 512]);
    let s = status_of(&mut a, 41, &TUR, 0);
    assert_eq!(
        (s.0, s.1, s.2, s.3),
        (2, 6, 0x2F, 0x00),
        "the first answer after the clear is the TUR's unit attention (not the write's status)"
    );
    assert_eq!(status_of(&mut a, 42, &TUR, 0).0, 0, "reported once");
    assert_eq!(
        read_blocks(&mut b, 71, 128, 64),
        vec![0; 64 * 512],
        "the cleared write was written"
    );
}

/// A command refused while its unsolicited Data-Out is owed (Stage::Drain) is a task of
/// the LU's task set: another nexus's LOGICAL UNIT RESET aborts it (TAS=0: no response).
#[test]
fn a_refused_task_still_owed_data_is_aborted_by_another_nexus_lun_reset() {
    let (_d, addr) = crate::iscsi::daemon("16MiB");
    let mut a = crate::iscsi_limits::login_with(
        addr,
        &[
            "InitialR2T=No",
            "ImmediateData=Yes",
            "FirstBurstLength=65536",
        ],
    );
    let t = Instant::now();
    while status_of(&mut a, 1, &TUR, 0).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    let mut b = session(addr, "iqn.2026-12.test:resetter2");
    assert_eq!(lun_reset(&mut b, 50), 0);
    let mut h = bhs(0x01, 0x20);
    put32(&mut h, 16, 60);
    put32(&mut h, 20, 4096);
    put32(&mut h, 24, a.cmd_sn);
    a.cmd_sn += 1;
    h[32..42].copy_from_slice(&write10(0, 8));
    a.send(h, &[0xAB; 1024]);
    a.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(a.read_pdu().is_none());
    a.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(lun_reset(&mut b, 51), 0);
    let mut d = bhs(0x05, 0x80);
    put32(&mut d, 16, 60);
    put32(&mut d, 20, 0xFFFF_FFFF);
    put32(&mut d, 40, 1024);
    a.send(d, &[0xAB; 3072]);
    a.scsi(61, &TUR, 0, 0x80, &[]);
    let (h, _) = a.read_pdu().expect("a response");
    assert_eq!(
        u32::from_be_bytes(h[16..20].try_into().unwrap()),
        61,
        "the write aborted by the other nexus's LU reset was answered (status {:#x})",
        h[3]
    );
}

/// A Data-Out that fills its R2T without the F bit: Reject; all the R2T's bytes are in,
/// so nothing more is owed: the task should still be answered (CHECK CONDITION).
#[test]
fn a_task_whose_r2t_was_filled_without_the_f_bit_is_still_answered() {
    let (_d, addr) = crate::iscsi::daemon("16MiB");
    let mut r = session(addr, "iqn.2026-12.test:filled");
    r.scsi(70, &write10(0, 2), 1024, 0xA0, &[]);
    let (h, _) = r.read_pdu().expect("R2T");
    assert_eq!(h[0] & 0x3F, 0x31);
    let ttt = u32::from_be_bytes(h[20..24].try_into().unwrap());
    let mut d = bhs(0x05, 0x00);
    put32(&mut d, 16, 70);
    put32(&mut d, 20, ttt);
    r.send(d, &[0xEE; 1024]);
    let (h, _) = r.read_pdu().expect("Reject");
    assert_eq!(h[0] & 0x3F, 0x3F);
    // Answered at once; a loaded machine may take seconds (never answered is the failure).
    r.s.set_read_timeout(Some(crate::harness::PATIENCE))
        .unwrap();
    let got = r.read_pdu();
    assert!(
        got.as_ref().is_some_and(|(h, _)| h[0] & 0x3F == 0x21),
        "the task whose R2T was filled (no F bit) is never answered"
    );
}

/// TARGET COLD RESET waits for the closed sessions' writes (SAM-5: the reset completes once
/// their tasks are gone) and every closed I_T nexus reports I_T NEXUS LOSS OCCURRED at its
/// next login. (Before, the TMF was answered while another session's write was still held at
/// the device, and the bystander's next session saw no unit attention.)
#[test]
fn a_target_cold_reset_waits_for_the_closed_sessions_writes_and_reports_their_nexus_loss() {
    // LBA 64 is slow: updates over it wait 1.5 s at the device.
    let text = "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='16MiB'\nslow_range=[32768, 4096]\nslow_ms=1500\n";
    let (_d, addr) = crate::iscsi::daemon_from(text);
    let mut a = session(addr, "iqn.2026-12.test:bystander");
    let mut b = session(addr, "iqn.2026-12.test:cold");
    let data = pattern(27, 8 * 512);
    let written = a.write_taken(40, &write10(64, 8), &data);
    assert_eq!(tmf(&mut b, 60, 7), 0, "TARGET COLD RESET complete");
    // From the write's sending, which is before its 1.5 s at the device began however slow
    // the machine is (from the reset's sending, a slow start of the write ate into it).
    let answered = written.elapsed();
    assert!(
        answered >= Duration::from_millis(1300),
        "the cold reset was answered {answered:?} after another session's write was sent, while that write was still at the device"
    );
    let mut again = Raw::login_as(addr, "iqn.2026-12.test:bystander");
    let s = status_of(&mut again, 1, &TUR, 0);
    assert_eq!(
        (s.0, s.1, s.2, s.3),
        (2, 6, 0x29, 0x07),
        "I_T NEXUS LOSS OCCURRED at the bystander's next session"
    );
    let mut c = session(addr, "iqn.2026-12.test:after");
    assert!(
        read_blocks(&mut c, 3, 64, 8) == data,
        "the closed session's write is there"
    );
}
