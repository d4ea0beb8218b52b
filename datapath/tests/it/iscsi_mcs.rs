//! iSCSI multiple connections per session (MC/S, RFC 7143; docs/iscsi.md "Sessions with
//! several connections"): a daemon with two reactors, so a session's connections are accepted
//! on different reactors and handed to the session's home reactor; commands spread over the
//! connections with interleaved CmdSNs, executed in CmdSN order across them; logout of one
//! connection or of the session; connection reinstatement; task management reaching another
//! connection's tasks; MaxConnections; logins naming a wrong session refused (never a panic).

use crate::harness::pattern;
use crate::iscsi::{IQN, Raw, bhs, frame, put32, read_blocks, read10, status_of, write10};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const TUR: [u8; 6] = [0; 6];
const ISID: [u8; 6] = [0x80, 0, 0, 0x4d, 0x43, 1];
const NAME: &str = "iqn.2026-12.test:mcs";

/// A daemon with two reactors (connections are accepted round-robin over them) and two
/// volumes (two targets).
fn daemon2() -> (twinblk::Daemon, SocketAddr) {
    daemon2_with("")
}

/// As [`daemon2`], with `iscsi` added to the `[iscsi]` table.
fn daemon2_with(iscsi: &str) -> (twinblk::Daemon, SocketAddr) {
    let text = format!(
        "[reactor]\ncores=[0,1]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[iscsi]\nlisten=['127.0.0.1:0']\n{iscsi}\n[control]\nsocket=''\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='16MiB'\n[[volume]]\nname='vol1'\nbackend='malloc'\nsize='16MiB'\n"
    );
    crate::iscsi::daemon_from(&text)
}

/// A login's outcome: status class and detail, TSIH, answered keys.
struct Login {
    status: (u8, u8),
    tsih: u16,
    keys: String,
}

/// One Login Request straight to full feature phase: initiator `name`, ISID `isid`, TSIH
/// `tsih` (0: a new session), CID `cid`, to `target` (`None`: a discovery session).
fn login(
    addr: SocketAddr,
    name: &str,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    target: Option<&str>,
    cmd_sn: u32,
) -> (Raw, Login) {
    let s = login_send(addr, name, isid, tsih, cid, target, cmd_sn);
    let mut r = Raw {
        s,
        cmd_sn,
        hd: false,
        dd: false,
    };
    let (h, data) = r.read_pdu().expect("a login response");
    assert_eq!(h[0] & 0x3F, 0x23, "login response");
    let l = Login {
        status: (h[36], h[37]),
        tsih: u16::from_be_bytes([h[14], h[15]]),
        keys: String::from_utf8_lossy(&data).replace('\0', " "),
    };
    (r, l)
}

/// The Login Request of [`login`], sent without waiting for its answer: the connection.
fn login_send(
    addr: SocketAddr,
    name: &str,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    target: Option<&str>,
    cmd_sn: u32,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = bhs(0x43, 0x80 | (1 << 2) | 3);
    h[8..14].copy_from_slice(&isid);
    h[14..16].copy_from_slice(&tsih.to_be_bytes());
    put32(&mut h, 16, 1);
    h[20..22].copy_from_slice(&cid.to_be_bytes());
    put32(&mut h, 24, cmd_sn);
    let kind = match target {
        Some(t) => format!("SessionType=Normal\0TargetName={t}\0"),
        None => "SessionType=Discovery\0".to_string(),
    };
    let lead = if tsih == 0 {
        "MaxConnections=8\0ImmediateData=Yes\0InitialR2T=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0"
    } else {
        ""
    };
    let keys = format!("InitiatorName={name}\0{kind}HeaderDigest=None\0DataDigest=None\0{lead}");
    s.write_all(&frame(h, keys.as_bytes(), false)).unwrap();
    s
}

/// A new session's first connection (CID 0) to vol0's target; its TSIH.
fn lead(addr: SocketAddr, name: &str, isid: [u8; 6]) -> (Raw, u16, String) {
    let (r, l) = login(addr, name, isid, 0, 0, Some(IQN), 1);
    assert_eq!(l.status, (0, 0), "leading login: {}", l.keys);
    assert_ne!(l.tsih, 0);
    (r, l.tsih, l.keys)
}

/// Connection `cid` added to session `tsih`.
fn join(addr: SocketAddr, tsih: u16, cid: u16, cmd_sn: u32) -> Raw {
    let (r, l) = login(addr, NAME, ISID, tsih, cid, Some(IQN), cmd_sn);
    assert_eq!(l.status, (0, 0), "login adding CID {cid}: {}", l.keys);
    assert_eq!(l.tsih, tsih, "the session's TSIH");
    r
}

/// The SCSI Response of task `itt` (no Data-In expected): its status.
fn response(r: &mut Raw, itt: u32) -> u8 {
    let (h, _) = r.read_pdu().expect("a SCSI Response");
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
    assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), itt);
    h[3]
}

/// Nothing arrives on `r` for a while.
fn silent(r: &mut Raw) -> bool {
    r.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let quiet = matches!(std::io::Read::read(&mut r.s, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    quiet
}

/// Logout (immediate) with `reason` for connection `cid`: the response code.
fn logout(r: &mut Raw, itt: u32, reason: u8, cid: u16) -> u8 {
    let mut h = bhs(0x46, 0x80 | reason);
    put32(&mut h, 16, itt);
    h[20..22].copy_from_slice(&cid.to_be_bytes());
    put32(&mut h, 24, r.cmd_sn);
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("a Logout Response");
    assert_eq!(h[0] & 0x3F, 0x26, "Logout Response, got opcode {:#x}", h[0]);
    h[2]
}

/// The connection is closed by the target within a few seconds.
fn closed_soon(r: &mut Raw) -> bool {
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    r.closed()
}

/// Reactors of this initiator's registered connections.
fn reactors(d: &twinblk::Daemon, name: &str) -> Vec<usize> {
    d.shared()
        .hosts
        .list()
        .into_iter()
        .filter(|(_, h)| h.host.as_deref() == Some(name))
        .map(|(_, h)| h.reactor)
        .collect()
}

/// A WRITE(10) of 64 blocks at `lba` without immediate data: the task waits for the R2T's
/// data. The R2T's TTT.
fn write_waiting(r: &mut Raw, itt: u32, lba: u32) -> u32 {
    r.scsi(itt, &write10(lba, 64), 64 * 512, 0xA0, &[]);
    let (h, _) = r.read_pdu().expect("an R2T");
    assert_eq!(h[0] & 0x3F, 0x31, "R2T, got opcode {:#x}", h[0]);
    u32::from_be_bytes(h[20..24].try_into().unwrap())
}

/// An immediate TMF `func` for LUN 0 (ABORT TASK: `rtt`, `ref_sn`): the response code.
fn tmf(r: &mut Raw, itt: u32, func: u8, rtt: u32, ref_sn: u32) -> u8 {
    let mut h = bhs(0x42, 0x80 | func);
    put32(&mut h, 16, itt);
    put32(&mut h, 20, rtt);
    put32(&mut h, 24, r.cmd_sn);
    put32(&mut h, 32, ref_sn);
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("a TMF Response");
    assert_eq!(h[0] & 0x3F, 0x22, "TMF Response, got opcode {:#x}", h[0]);
    assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), itt);
    h[2]
}

#[test]
fn a_session_of_four_connections_on_two_reactors_spreads_commands_in_cmdsn_order() {
    let (d, addr) = daemon2();
    let (mut a, tsih, keys) = lead(addr, NAME, ISID);
    assert!(
        keys.contains("MaxConnections=4"),
        "the lower of 8 and the target's 4: {keys}"
    );
    // The next CmdSN of the session; every connection takes from it.
    let mut sn = 1u32;
    let mut b = join(addr, tsih, 1, sn);
    let mut c = join(addr, tsih, 2, sn);
    let mut e = join(addr, tsih, 3, sn);
    // A fifth is one too many.
    let (_, l) = login(addr, NAME, ISID, tsih, 4, Some(IQN), sn);
    assert_eq!(l.status, (2, 6), "too many connections");
    // Accepted round-robin on two reactors, all served by the session's home reactor.
    let rs = reactors(&d, NAME);
    assert_eq!(rs.len(), 4, "{rs:?}");
    assert!(rs.iter().all(|&x| x == rs[0]), "one home reactor: {rs:?}");
    // Past the unit attentions (the session's, reported once).
    let conns = [&mut a, &mut b, &mut c, &mut e];
    let t = Instant::now();
    loop {
        conns[0].cmd_sn = sn;
        sn += 1;
        if status_of(conns[0], 1, &TUR, 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    // Writes spread over the four connections, CmdSNs interleaved.
    let data = pattern(11, 16 * 32 * 512);
    for i in 0..16u32 {
        let r = &mut *conns[(i % 4) as usize];
        r.cmd_sn = sn;
        sn += 1;
        let chunk = &data[(i as usize) * 32 * 512..(i as usize + 1) * 32 * 512];
        r.scsi(100 + i, &write10(i * 32, 32), 32 * 512, 0xA0, chunk);
    }
    for i in 0..16u32 {
        assert_eq!(response(conns[(i % 4) as usize], 100 + i), 0, "write {i}");
    }
    // Read back through another connection than the one that wrote each chunk.
    let mut back = Vec::new();
    for i in 0..16u32 {
        let r = &mut *conns[((i + 1) % 4) as usize];
        r.cmd_sn = sn;
        sn += 1;
        back.extend(read_blocks(r, 200 + i, i * 32, 32));
    }
    assert!(back == data, "read back identical");
    // Out of CmdSN order across connections: CmdSN n+1 (a read) on one connection waits for
    // CmdSN n (a write of the same blocks) sent later on another; both complete, in order.
    let newer = pattern(12, 8 * 512);
    conns[1].cmd_sn = sn + 1;
    conns[1].scsi(300, &read10(1000, 8), 8 * 512, 0xC0, &[]);
    assert!(silent(conns[1]), "CmdSN n+1 waits for the gap to close");
    conns[0].cmd_sn = sn;
    conns[0].scsi(301, &write10(1000, 8), 8 * 512, 0xA0, &newer);
    sn += 2;
    assert_eq!(response(conns[0], 301), 0, "CmdSN n: the write");
    let mut got = Vec::new();
    loop {
        let (h, dd) = conns[1].read_pdu().expect("Data-In of the held read");
        assert_eq!(h[0] & 0x3F, 0x25);
        got.extend(dd);
        if h[1] & 1 != 0 {
            assert_eq!(h[3], 0);
            break;
        }
    }
    assert!(got == newer, "the read ran after the write (CmdSN order)");
    // Logout of one connection (its own CID): the others go on.
    assert_eq!(logout(conns[3], 1, 1, 3), 0, "close the connection");
    assert!(closed_soon(conns[3]));
    // Logout of another connection, named by its CID: it is closed, the asker goes on.
    assert_eq!(logout(conns[0], 2, 1, 2), 0, "close connection CID 2");
    assert!(closed_soon(conns[2]));
    assert_eq!(logout(conns[0], 3, 1, 9), 1, "an unknown CID: not found");
    for (k, i) in [0usize, 1].into_iter().zip(0u32..) {
        conns[k].cmd_sn = sn;
        sn += 1;
        assert_eq!(
            status_of(conns[k], 400 + i, &TUR, 0).0,
            0,
            "conn {k} serves"
        );
    }
    // Logout "close the session": every connection closes.
    assert_eq!(logout(conns[0], 4, 0, 0), 0, "close the session");
    assert!(closed_soon(conns[0]));
    assert!(
        closed_soon(conns[1]),
        "the session's other connection is closed too"
    );
    let t = Instant::now();
    while !reactors(&d, NAME).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "still registered");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its TSIH is gone.
    let (_, l) = login(addr, NAME, ISID, tsih, 0, Some(IQN), sn);
    assert_eq!(l.status, (2, 10), "session does not exist");
}

#[test]
fn logins_naming_a_wrong_session_are_refused() {
    let (_d, addr) = daemon2();
    // A TSIH no session has.
    let (_, l) = login(addr, NAME, ISID, 0x7777, 1, Some(IQN), 1);
    assert_eq!(l.status, (2, 10), "unknown TSIH: session does not exist");
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    // Another initiator, another ISID, another target, a discovery session: not this session.
    let (_, l) = login(addr, "iqn.2026-12.test:other", ISID, tsih, 1, Some(IQN), 1);
    assert_eq!(l.status, (2, 10), "another initiator's session");
    let mut isid2 = ISID;
    isid2[5] = 2;
    let (_, l) = login(addr, NAME, isid2, tsih, 1, Some(IQN), 1);
    assert_eq!(l.status, (2, 10), "another ISID");
    let (_, l) = login(
        addr,
        NAME,
        ISID,
        tsih,
        1,
        Some("iqn.2026-11.io.twinblk:vol1"),
        1,
    );
    assert_eq!(l.status, (2, 10), "another target");
    let (_, l) = login(addr, NAME, ISID, tsih, 1, None, 1);
    assert_eq!(l.status, (2, 10), "a discovery login naming it");
    // The session is untouched.
    a.cmd_sn = 1;
    let t = Instant::now();
    while status_of(&mut a, 1, &TUR, 0).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    // Another ISID of the same initiator is another session.
    let (_r2, l) = login(addr, NAME, isid2, 0, 0, Some(IQN), 1);
    assert_eq!(l.status, (0, 0));
    let tsih2 = l.tsih;
    assert_ne!(tsih2, tsih);
}

#[test]
fn reinstating_a_cid_closes_the_old_connection_and_the_session_goes_on() {
    let (d, addr) = daemon2();
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    let mut sn = 1u32;
    let mut b = join(addr, tsih, 1, sn);
    let t = Instant::now();
    loop {
        b.cmd_sn = sn;
        sn += 1;
        if status_of(&mut b, 1, &TUR, 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    // A write waiting for its data on CID 1, then CID 1 logs in again.
    b.cmd_sn = sn;
    sn += 1;
    let _ttt = write_waiting(&mut b, 5, 64);
    let mut b2 = join(addr, tsih, 1, sn);
    assert!(closed_soon(&mut b), "the old connection of CID 1 is closed");
    let rs = reactors(&d, NAME);
    assert_eq!(rs.len(), 2, "two connections: {rs:?}");
    // The session serves on both, the new one writes, the first reads it.
    let data = pattern(5, 16 * 512);
    b2.cmd_sn = sn;
    sn += 1;
    b2.scsi(6, &write10(64, 16), 16 * 512, 0xA0, &data);
    assert_eq!(response(&mut b2, 6), 0);
    a.cmd_sn = sn;
    assert!(read_blocks(&mut a, 7, 64, 16) == data);
}

#[test]
fn task_management_on_one_connection_reaches_the_tasks_of_another() {
    let (_d, addr) = daemon2();
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    let mut sn = 1u32;
    let mut b = join(addr, tsih, 1, sn);
    let t = Instant::now();
    loop {
        a.cmd_sn = sn;
        sn += 1;
        if status_of(&mut a, 1, &TUR, 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    // ABORT TASK on A of a write waiting for its data on B.
    b.cmd_sn = sn;
    sn += 1;
    let ttt = write_waiting(&mut b, 10, 64);
    a.cmd_sn = sn;
    assert_eq!(tmf(&mut a, 11, 1, 10, sn - 1), 0, "function complete");
    // Its data is then dropped and it is never answered: B's next answer is the TUR's.
    let mut h = bhs(0x05, 0x80);
    put32(&mut h, 16, 10);
    put32(&mut h, 20, ttt);
    b.send(h, &[0xEE; 64 * 512]);
    b.cmd_sn = sn;
    sn += 1;
    assert_eq!(
        status_of(&mut b, 12, &TUR, 0).0,
        0,
        "TUR, not the aborted write"
    );
    a.cmd_sn = sn;
    assert!(read_blocks(&mut a, 13, 64, 64).iter().all(|&x| x == 0));
    sn += 1;
    // A task no connection has: "task does not exist".
    a.cmd_sn = sn;
    assert_eq!(tmf(&mut a, 14, 1, 0x999, sn - 5), 1, "task does not exist");
    // LUN RESET on A aborts B's waiting write; the session (one I_T nexus) reports the reset
    // once, on whichever connection asks first.
    b.cmd_sn = sn;
    sn += 1;
    let ttt = write_waiting(&mut b, 20, 128);
    a.cmd_sn = sn;
    assert_eq!(tmf(&mut a, 21, 5, 0xFFFF_FFFF, 0), 0, "LUN RESET complete");
    let mut h = bhs(0x05, 0x80);
    put32(&mut h, 16, 20);
    put32(&mut h, 20, ttt);
    b.send(h, &[0xEE; 64 * 512]);
    b.cmd_sn = sn;
    sn += 1;
    let s = status_of(&mut b, 22, &TUR, 0);
    assert_eq!(
        (s.0, s.1, s.2, s.3),
        (2, 6, 0x29, 0x03),
        "the reset's unit attention"
    );
    a.cmd_sn = sn;
    assert_eq!(
        status_of(&mut a, 23, &TUR, 0).0,
        0,
        "reported once per session"
    );
    a.cmd_sn = sn + 1;
    assert!(read_blocks(&mut a, 24, 128, 64).iter().all(|&x| x == 0));
    sn += 2;
    // ABORT TASK SET on A: B's waiting write is aborted too (no unit attention).
    b.cmd_sn = sn;
    sn += 1;
    let ttt = write_waiting(&mut b, 30, 192);
    a.cmd_sn = sn;
    assert_eq!(
        tmf(&mut a, 31, 2, 0xFFFF_FFFF, 0),
        0,
        "ABORT TASK SET complete"
    );
    let mut h = bhs(0x05, 0x80);
    put32(&mut h, 16, 30);
    put32(&mut h, 20, ttt);
    b.send(h, &[0xEE; 64 * 512]);
    b.cmd_sn = sn;
    sn += 1;
    assert_eq!(
        status_of(&mut b, 32, &TUR, 0).0,
        0,
        "TUR, not the aborted write"
    );
    a.cmd_sn = sn;
    assert!(read_blocks(&mut a, 33, 192, 64).iter().all(|&x| x == 0));
    sn += 1;
    // Logout "close the session" on A while B has a write waiting: B is closed, its write
    // never reaches the medium.
    b.cmd_sn = sn;
    sn += 1;
    let _ = write_waiting(&mut b, 40, 256);
    a.cmd_sn = sn;
    assert_eq!(logout(&mut a, 41, 0, 0), 0, "close the session");
    assert!(closed_soon(&mut b));
    assert!(closed_soon(&mut a));
    let mut isid2 = ISID;
    isid2[5] = 9;
    let (mut c, _, _) = lead(addr, NAME, isid2);
    let t = Instant::now();
    while status_of(&mut c, 1, &TUR, 0).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    assert!(read_blocks(&mut c, 2, 256, 64).iter().all(|&x| x == 0));
}

#[test]
fn a_failed_connection_fails_its_session() {
    let (d, addr) = daemon2();
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    let b = join(addr, tsih, 1, 1);
    assert_eq!(reactors(&d, NAME).len(), 2);
    // B goes away without a Logout: at ErrorRecoveryLevel 0 the session fails, A is closed.
    drop(b);
    assert!(
        closed_soon(&mut a),
        "the session's other connection is closed"
    );
    let t = Instant::now();
    while !reactors(&d, NAME).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "still registered");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, l) = login(addr, NAME, ISID, tsih, 1, Some(IQN), 1);
    assert_eq!(l.status, (2, 10), "the session is gone");
}

#[test]
fn a_command_held_on_a_connection_that_logs_out_does_not_stall_the_session() {
    let (_d, addr) = daemon2();
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    let mut sn = 1u32;
    let mut b = join(addr, tsih, 1, sn);
    let t = Instant::now();
    loop {
        a.cmd_sn = sn;
        sn += 1;
        if status_of(&mut a, 1, &TUR, 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    // B sends CmdSN n+1 (held for the gap), then logs out: its command is terminated with it.
    b.cmd_sn = sn + 1;
    b.scsi(2, &TUR, 0, 0x80, &[]);
    assert!(silent(&mut b), "held for the gap");
    assert_eq!(logout(&mut b, 3, 1, 1), 0, "close the connection");
    assert!(closed_soon(&mut b));
    // CmdSN n and n+2 on A: the terminated n+1 does not hold the session's window.
    a.cmd_sn = sn;
    assert_eq!(status_of(&mut a, 4, &TUR, 0).0, 0, "CmdSN n");
    a.cmd_sn = sn + 2;
    assert_eq!(status_of(&mut a, 5, &TUR, 0).0, 0, "CmdSN n+2 runs");
}

#[test]
fn malformed_joining_logins_are_refused_and_never_panic() {
    let (d, addr) = daemon2();
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    // A two-step login naming the session (security stage, then operational) whose second
    // request names another TSIH: initiator error (0200), on whichever reactor it runs.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = bhs(0x43, 0x80 | 1);
    h[8..14].copy_from_slice(&ISID);
    h[14..16].copy_from_slice(&tsih.to_be_bytes());
    h[20..22].copy_from_slice(&1u16.to_be_bytes());
    put32(&mut h, 24, 1);
    let keys =
        format!("InitiatorName={NAME}\0SessionType=Normal\0TargetName={IQN}\0AuthMethod=None\0");
    s.write_all(&frame(h, keys.as_bytes(), false)).unwrap();
    let mut r = Raw {
        s,
        cmd_sn: 1,
        hd: false,
        dd: false,
    };
    let (rh, _) = r.read_pdu().expect("a login response");
    assert_eq!((rh[36], rh[37]), (0, 0), "the security stage passes");
    assert_eq!(u16::from_be_bytes([rh[14], rh[15]]), tsih);
    let mut h = bhs(0x43, 0x80 | (1 << 2) | 3);
    h[8..14].copy_from_slice(&ISID);
    h[14..16].copy_from_slice(&(tsih ^ 0x5555).to_be_bytes());
    h[20..22].copy_from_slice(&1u16.to_be_bytes());
    put32(&mut h, 24, 1);
    r.send(h, b"HeaderDigest=None\0");
    let (rh, _) = r.read_pdu().expect("a login response");
    assert_eq!(
        (rh[36], rh[37]),
        (2, 0),
        "the TSIH changed within the login"
    );
    assert!(closed_soon(&mut r));
    // Truncated and random login headers naming the TSIH: refused or dropped, no panic.
    for seed in 0..8u64 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut h = bhs(0x43, 0x80 | (1 << 2) | 3);
        h[14..16].copy_from_slice(&tsih.to_be_bytes());
        let junk = crate::harness::pattern(seed, 48);
        h[8..14].copy_from_slice(&junk[8..14]);
        h[20..22].copy_from_slice(&junk[20..22]);
        let n = (seed as usize * 7) % 40;
        let _ = s.write_all(&frame(h, &junk[..n], false));
        let mut r = Raw {
            s,
            cmd_sn: 1,
            hd: false,
            dd: false,
        };
        if let Some((rh, _)) = r.read_pdu() {
            assert_eq!(rh[0] & 0x3F, 0x23);
            assert_eq!(rh[36], 2, "an initiator error");
        }
    }
    // The session is untouched by all of them.
    a.cmd_sn = 1;
    let t = Instant::now();
    while status_of(&mut a, 1, &TUR, 0).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(reactors(&d, NAME).len(), 1);
    // A joining login followed at once by a protocol error in the same segment (a second
    // Login Request): it reaches the home reactor with the login and closes that connection.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = bhs(0x43, 0x80 | (1 << 2) | 3);
    h[8..14].copy_from_slice(&ISID);
    h[14..16].copy_from_slice(&tsih.to_be_bytes());
    h[20..22].copy_from_slice(&2u16.to_be_bytes());
    put32(&mut h, 24, 1);
    let keys = format!("InitiatorName={NAME}\0SessionType=Normal\0TargetName={IQN}\0");
    let mut bytes = frame(h, keys.as_bytes(), false);
    // A second Login Request: a protocol error in full feature phase.
    bytes.extend(frame(h, keys.as_bytes(), false));
    s.write_all(&bytes).unwrap();
    let mut r = Raw {
        s,
        cmd_sn: 1,
        hd: false,
        dd: false,
    };
    let (rh, _) = r.read_pdu().expect("a login response");
    assert_eq!((rh[36], rh[37]), (0, 0), "the login itself is fine");
    assert!(
        closed_soon(&mut r),
        "the protocol error closes the connection"
    );
    // It was a connection of the session in full feature phase: at ErrorRecoveryLevel 0 its
    // failure fails the session.
    assert!(closed_soon(&mut a), "the session failed with it");
}

#[test]
fn max_connections_is_the_configured_maximum_when_the_initiator_offers_more() {
    let (_d, addr) = daemon2_with("max_connections=2");
    let (_a, tsih, keys) = lead(addr, NAME, ISID);
    assert!(keys.contains("MaxConnections=2"), "{keys}");
    let _b = join(addr, tsih, 1, 1);
    let (_, l) = login(addr, NAME, ISID, tsih, 2, Some(IQN), 1);
    assert_eq!(l.status, (2, 6), "a third connection: too many connections");
    // Reinstating CID 1 is not a third connection.
    let _b2 = join(addr, tsih, 1, 1);
}

/// The target announces a window of 128 (MaxCmdSN = ExpCmdSN + 127): every command inside it
/// may wait for a gap. One connection lagging (CID 0's command is the missing one) while the
/// other sends 126 commands behind it: all run once the gap closes, and the session stays
/// (it was dropped past 32 held commands before).
#[test]
fn commands_inside_the_window_held_for_a_gap_are_all_run() {
    let (_d, addr) = daemon2();
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    let mut sn = 1u32;
    let mut b = join(addr, tsih, 1, sn);
    let t = Instant::now();
    loop {
        a.cmd_sn = sn;
        sn += 1;
        if status_of(&mut a, 1, &TUR, 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    let n_cmds: u32 = 126;
    // CmdSN sn is A's (late); B sends sn+1 ..= sn+126, all inside [ExpCmdSN, MaxCmdSN].
    b.cmd_sn = sn + 1;
    for i in 0..n_cmds {
        b.scsi(1000 + i, &TUR, 0, 0x80, &[]);
    }
    // An immediate NOP-Out after them is answered once the target read them (they are held,
    // so its NOP-In comes first): no fixed time for them to arrive.
    b.nop(0x7000);
    a.cmd_sn = sn;
    assert_eq!(status_of(&mut a, 5, &TUR, 0).0, 0, "CmdSN sn on A");
    let mut answered = 0;
    for i in 0..n_cmds {
        match b.read_pdu() {
            Some((h, _))
                if h[0] & 0x3F == 0x21
                    && u32::from_be_bytes(h[16..20].try_into().unwrap()) == 1000 + i =>
            {
                answered += 1
            }
            other => {
                eprintln!(
                    "B: after {answered} answers, got {:?}",
                    other.map(|(h, _)| h[0] & 0x3F)
                );
                break;
            }
        }
    }
    eprintln!("B answered {answered} of {n_cmds} commands inside the window");
    assert_eq!(answered, n_cmds);
}

/// The connection holding the next CmdSN is told to run it (Wake) just as it is being closed
/// by a Logout naming its CID: the closing connection drops the Wake and its held command is
/// passed over when it leaves, and the command held behind it on the other connection must
/// still run at once (it waited for unrelated input before: only a NOP-Out moved it).
#[test]
fn a_command_held_behind_a_closed_connections_command_runs() {
    use crate::iscsi::{bhs, frame, put32};
    let (_d, addr) = daemon2();
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    let mut sn = 1u32;
    let mut x = join(addr, tsih, 1, sn);
    let t = Instant::now();
    loop {
        a.cmd_sn = sn;
        sn += 1;
        if status_of(&mut a, 1, &TUR, 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    // X (CID 1) holds sn+1; A holds sn+2.
    x.cmd_sn = sn + 1;
    x.scsi(10, &TUR, 0, 0x80, &[]);
    a.cmd_sn = sn + 2;
    a.scsi(20, &TUR, 0, 0x80, &[]);
    // The target read X's command (held: the NOP-In of an immediate NOP-Out after it comes
    // first) before the Logout closes X; no fixed time for it to arrive.
    x.nop(0x7000);
    // One segment on A: CmdSN sn (fills the gap), then Logout "close the connection" CID 1.
    let mut c = bhs(0x01, 0x80);
    put32(&mut c, 16, 21);
    put32(&mut c, 24, sn);
    let mut l = bhs(0x46, 0x80 | 1);
    put32(&mut l, 16, 22);
    l[20..22].copy_from_slice(&1u16.to_be_bytes());
    put32(&mut l, 24, sn + 3);
    let mut seg = frame(c, &[], false);
    seg.extend(frame(l, &[], false));
    a.s.write_all(&seg).unwrap();
    // At once, or it never runs; a loaded machine may take seconds.
    a.s.set_read_timeout(Some(crate::harness::PATIENCE))
        .unwrap();
    let mut got20 = false;
    let mut seen = Vec::new();
    while let Some((h, _)) = a.read_pdu() {
        let itt = u32::from_be_bytes(h[16..20].try_into().unwrap());
        seen.push((h[0] & 0x3F, itt));
        if itt == 20 {
            got20 = true;
            break;
        }
    }
    eprintln!("A received (opcode, itt): {seen:x?}; CmdSN sn+2 answered: {got20}");
    if !got20 {
        a.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut h = bhs(0x40, 0x80 | 0x40);
        put32(&mut h, 16, 0xFFFF_FFFF);
        put32(&mut h, 20, 0xFFFF_FFFF);
        put32(&mut h, 24, sn + 3);
        a.send(h, &[]);
        let after = a.read_pdu().map(|(h, _)| {
            (
                h[0] & 0x3F,
                u32::from_be_bytes(h[16..20].try_into().unwrap()),
            )
        });
        eprintln!("after an immediate NOP-Out on A: {after:x?}");
    }
    assert!(got20, "CmdSN sn+2 held on A ran");
}

/// A leading login (TSIH 0) of the same initiator port (InitiatorName and ISID) to the same
/// target reinstates the session (RFC 7143 §6.3.5): the old session's connections are closed
/// (its tasks terminated), its RESERVE released with its I_T nexus, its TSIH no longer
/// joinable; the new session serves. A login with another ISID is another session and is
/// left alone. (Before, a second session ran beside the old one, which kept its tasks and its
/// RESERVE: the new session's READ met RESERVATION CONFLICT.)
#[test]
fn a_new_leading_login_of_the_same_initiator_port_reinstates_the_session() {
    let (_d, addr) = daemon2();
    let other_isid = [0x80, 0, 0, 0x4d, 0x43, 2];
    let (mut other, _, _) = lead(addr, NAME, other_isid);
    let (mut a, old_tsih, _) = lead(addr, NAME, ISID);
    let t = Instant::now();
    while status_of(&mut a, 1, &TUR, 0).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    // RESERVE(6), and a write waiting for its data.
    assert_eq!(
        status_of(&mut a, 2, &[0x16, 0, 0, 0, 0, 0], 0).0,
        0,
        "RESERVE"
    );
    let _ttt = write_waiting(&mut a, 3, 64);
    let (mut b, new_tsih, keys) = lead(addr, NAME, ISID);
    assert_ne!(new_tsih, old_tsih, "{keys}");
    assert!(
        closed_soon(&mut a),
        "the old session's connection is closed"
    );
    let t = Instant::now();
    loop {
        let st = status_of(&mut b, 10, &TUR, 0).0;
        if st == 0 {
            break;
        }
        assert_ne!(
            st, 0x18,
            "RESERVATION CONFLICT: the old session's RESERVE survived"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    let data = pattern(8, 16 * 512);
    b.scsi(11, &write10(64, 16), 16 * 512, 0xA0, &data);
    assert_eq!(response(&mut b, 11), 0, "the new session writes");
    assert!(read_blocks(&mut b, 12, 64, 16) == data);
    // The old TSIH cannot be joined.
    let (_r, l) = login(addr, NAME, ISID, old_tsih, 1, Some(IQN), 1);
    assert_ne!(l.status, (0, 0), "joined the reinstated session");
    // The session of the other ISID still serves.
    let t = Instant::now();
    loop {
        let st = status_of(&mut other, 20, &TUR, 0).0;
        if st == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the other session stopped: {st}"
        );
    }
}

/// Past the session's first unit attentions (TEST UNIT READY until GOOD); `sn` the next CmdSN.
fn past_ua(a: &mut Raw, sn: &mut u32) {
    let t = Instant::now();
    loop {
        a.cmd_sn = *sn;
        *sn += 1;
        if status_of(a, 1, &TUR, 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
    }
    a.cmd_sn = *sn;
}

/// An immediate TMF `func` (LUN 0) with CmdSN `cmd_sn` (ABORT TASK: `rtt`, `ref_sn`).
fn immediate_tmf(r: &mut Raw, itt: u32, func: u8, rtt: u32, cmd_sn: u32, ref_sn: u32) {
    let mut h = bhs(0x42, 0x80 | func);
    put32(&mut h, 16, itt);
    put32(&mut h, 20, rtt);
    put32(&mut h, 24, cmd_sn);
    put32(&mut h, 32, ref_sn);
    r.send(h, &[]);
}

/// The next PDU within `ms` milliseconds, if any.
fn read_within(r: &mut Raw, ms: u64) -> Option<([u8; 48], Vec<u8>)> {
    r.s.set_read_timeout(Some(Duration::from_millis(ms)))
        .unwrap();
    let p = r.read_pdu();
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    p
}

/// A rejected command leaves a CmdSN gap; ABORT TASK naming it (RefCmdSN = the gap,
/// RFC 7143 §11.5.1: "consider the CmdSN as received") must plug it, so the TUR held behind
/// it runs.
#[test]
fn abort_task_plugs_the_cmd_sn_gap_of_a_rejected_command() {
    let (_d, addr) = daemon2();
    let (mut a, _, _) = lead(addr, NAME, ISID);
    let mut sn = 1;
    past_ua(&mut a, &mut sn);
    // R+W: Reject, CmdSN sn not taken.
    a.scsi(5, &write10(0, 1), 512, 0x80 | 0x40 | 0x20, &[]);
    let (h, _) = a.read_pdu().expect("Reject");
    assert_eq!(h[0] & 0x3F, 0x3F);
    // TUR with CmdSN sn+1: held behind the gap.
    a.scsi(6, &TUR, 0, 0x80, &[]);
    assert!(read_within(&mut a, 300).is_none());
    // Immediate ABORT TASK of ITT 5, RefCmdSN sn, CmdSN sn+2.
    immediate_tmf(&mut a, 7, 1, 5, sn + 2, sn);
    let (h, _) = a.read_pdu().expect("TMF response");
    assert_eq!(
        (h[0] & 0x3F, h[2]),
        (0x22, 0),
        "ABORT TASK: function complete"
    );
    let got = read_within(&mut a, 2000);
    assert!(
        got.as_ref()
            .is_some_and(|(h, _)| h[0] & 0x3F == 0x21
                && u32::from_be_bytes(h[16..20].try_into().unwrap()) == 6),
        "the TUR held behind the rejected command's CmdSN never ran: the gap was not plugged ({:?})",
        got.map(|(h, _)| h[0])
    );
}

/// ABORT TASK of a command not yet received (RefCmdSN = ExpCmdSN) answers "function
/// complete"; the command arriving later must not run (its CmdSN was considered received).
#[test]
fn a_command_aborted_before_it_arrived_never_runs() {
    let (_d, addr) = daemon2();
    let (mut a, _, _) = lead(addr, NAME, ISID);
    let mut sn = 1;
    past_ua(&mut a, &mut sn);
    immediate_tmf(&mut a, 8, 1, 9, sn + 1, sn);
    let (h, _) = a.read_pdu().expect("TMF response");
    assert_eq!((h[0] & 0x3F, h[2]), (0x22, 0), "function complete");
    a.cmd_sn = sn;
    a.scsi(9, &write10(100, 1), 512, 0xA0, &[0xEE; 512]);
    let got = read_within(&mut a, 500);
    assert!(
        got.is_none(),
        "the aborted command ran after ABORT TASK answered function complete: {:?}",
        got.map(|(h, _)| (h[0] & 0x3F, h[3]))
    );
}

/// MC/S: Immediate ABORT TASK SET on A past a gap; the gap is filled by a command on B.
/// The TMF answer must come (idle pings off, nothing else sent on A).
#[test]
fn a_task_set_tmf_is_answered_when_its_gap_fills_on_another_connection() {
    let (_d, addr) = daemon2_with("nop_in_interval_ms = 0");
    let (mut a, tsih, _) = lead(addr, NAME, ISID);
    let mut sn = 1;
    let mut b = join(addr, tsih, 1, sn);
    past_ua(&mut a, &mut sn);
    // ABORT TASK SET (immediate) with CmdSN sn+1: sn is missing.
    immediate_tmf(&mut a, 31, 2, 0xFFFF_FFFF, sn + 1, 0);
    assert!(
        read_within(&mut a, 300).is_none(),
        "answered before the gap filled"
    );
    // The gap is filled on B (a TUR to LUN 0, aborted on arrival).
    b.cmd_sn = sn;
    b.scsi(32, &TUR, 0, 0x80, &[]);
    let got = read_within(&mut a, 3000);
    assert!(
        got.as_ref().is_some_and(|(h, _)| h[0] & 0x3F == 0x22),
        "TMF on A not answered 3 s after the gap was filled on B: {:?}",
        got.map(|(h, _)| h[0] & 0x3F)
    );
}

/// An immediate ABORT TASK SET whose CmdSN is far past MaxCmdSN: the commands after it
/// to LUN 0 must still be served.
#[test]
fn an_immediate_tmf_with_a_cmd_sn_past_the_window_stops_nothing() {
    let (_d, addr) = daemon2();
    let (mut a, _, _) = lead(addr, NAME, ISID);
    let mut sn = 1;
    past_ua(&mut a, &mut sn);
    immediate_tmf(&mut a, 40, 2, 0xFFFF_FFFF, sn + 1000, 0);
    let tmf = read_within(&mut a, 500);
    a.cmd_sn = sn;
    a.scsi(41, &TUR, 0, 0x80, &[]);
    let got = read_within(&mut a, 2000);
    assert!(
        got.as_ref().is_some_and(|(h, _)| h[0] & 0x3F == 0x21),
        "TUR after the TMF not answered (TMF answer: {:?}; got {:?})",
        tmf.map(|(h, _)| (h[0] & 0x3F, h[2])),
        got.map(|(h, _)| h[0] & 0x3F)
    );
}

/// A daemon (two reactors) whose LBA 64 (512-byte blocks) is slow: updates over it wait
/// `slow_ms` at the device; a session of [`NAME`]/[`ISID`] past its unit attentions has a
/// write of `data` (8 blocks, immediate) over it in flight, taken by the target
/// ([`Raw::write_taken`]). The daemon, its address, the session and when the write was sent.
fn old_write_held(slow_ms: u64, data: &[u8]) -> (twinblk::Daemon, SocketAddr, Raw, Instant) {
    let text = format!(
        "[reactor]\ncores=[0,1]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='16MiB'\nslow_range=[32768, 4096]\nslow_ms={slow_ms}\n"
    );
    let (d, addr) = crate::iscsi::daemon_from(&text);
    let (mut a, _, _) = lead(addr, NAME, ISID);
    let mut sn = 1;
    past_ua(&mut a, &mut sn);
    a.cmd_sn = sn;
    let written = a.write_taken(sn, &write10(64, 8), data);
    (d, addr, a, written)
}

/// A reinstatement waits for the old session's writes (RFC 7143 §6.3.5; SAM-5 I_T nexus
/// loss): the new leading login is answered only once the old session's tasks have left the
/// device, so the new session never reads data older than a write the old one had in flight,
/// nor sees it land later; its first command reports I_T NEXUS LOSS OCCURRED (29h/07h).
/// (Before, the login was answered at once: a read of the new session returned the block's
/// old content while the old session's write was still held at the device, and no unit
/// attention told the initiator that its nexus had been lost.)
#[test]
fn a_reinstatement_waits_for_the_old_sessions_writes_and_reports_the_nexus_loss() {
    // An old write over the slow blocks, its data immediate: at the device for 1.5 s.
    let data = pattern(26, 8 * 512);
    let (_d, addr, _a, written) = old_write_held(1500, &data);
    let (mut b, _, keys) = lead(addr, NAME, ISID);
    // From the write's sending, which is before its 1.5 s at the device began however slow
    // the machine is (from the login's sending, a slow start of the write ate into it).
    let answered = written.elapsed();
    assert!(
        answered >= Duration::from_millis(1300),
        "the new login was answered {answered:?} after the old session's write was sent, while that write was still at the device: {keys}"
    );
    // The first command of the new session: the nexus loss, once.
    let (st, key, asc, ascq, _) = status_of(&mut b, 1, &TUR, 0);
    assert_eq!(
        (st, key, asc, ascq),
        (2, 6, 0x29, 0x07),
        "I_T NEXUS LOSS OCCURRED expected first"
    );
    let mut sn = 2;
    past_ua(&mut b, &mut sn);
    b.cmd_sn = sn;
    assert!(
        read_blocks(&mut b, sn, 64, 8) == data,
        "the new session read the blocks without the old session's write"
    );
}

/// A login retried while the reinstating one is held (an initiator whose login timed out
/// sends it again) waits for the first reinstated session too: the held login's session is
/// reinstated in turn, and what it waited for is passed on. (Before, the retry reinstated
/// only the held session, whose connection had nothing in flight: it was answered at once
/// while the first session's write was still at the device.)
#[test]
fn a_retried_login_still_waits_for_the_session_the_held_one_reinstated() {
    // The old session's write is at the device for 2.5 s.
    let data = pattern(28, 8 * 512);
    let (_d, addr, _a, written) = old_write_held(2500, &data);
    // The first reinstating login, held; its initiator gives up on it.
    let first = login_send(addr, NAME, ISID, 0, 0, Some(IQN), 1);
    std::thread::sleep(Duration::from_millis(300));
    drop(first);
    std::thread::sleep(Duration::from_millis(100));
    let (mut b, _, keys) = lead(addr, NAME, ISID);
    let answered = written.elapsed();
    assert!(
        answered >= Duration::from_millis(2200),
        "the retried login was answered {answered:?} after the old session's write, which the device held 2.5 s: {keys}"
    );
    let mut sn = 1;
    past_ua(&mut b, &mut sn);
    b.cmd_sn = sn;
    assert!(
        read_blocks(&mut b, sn, 64, 8) == data,
        "the new session read the blocks without the old session's write"
    );
}
