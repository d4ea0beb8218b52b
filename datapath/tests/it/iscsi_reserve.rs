//! SPC-2 RESERVE / RELEASE across the two sites of a mirrored volume: decided by the volume's
//! leader site and enforced at both, released at both when the holder's I_T nexus goes (logout,
//! a dropped connection); READ FULL STATUS naming the target port each registration came
//! through and its initiator port (name and ISID), and the ALL_TG_PT and SPEC_I_PT bits of
//! PERSISTENT RESERVE OUT.

use crate::iscsi::{Raw, bhs, prin, prout, prout_flags, put32, status_of, two_sites, write_one};
use std::time::{Duration, Instant};

const CONFLICT: u8 = 0x18;
const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
const TUR: [u8; 6] = [0; 6];

/// A session logged in as `name` at `addr`, past its first unit attentions; with the block size.
fn session(addr: std::net::SocketAddr, name: &str) -> (Raw, usize) {
    let mut r = Raw::login_as(addr, name);
    let t = Instant::now();
    loop {
        let s = status_of(&mut r, 1, &TUR, 0);
        if s.0 == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "TEST UNIT READY never GOOD for {name} at {addr}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, _, _, _, cap) = status_of(&mut r, 2, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    (
        r,
        u32::from_be_bytes(cap[4..8].try_into().unwrap()) as usize,
    )
}

fn st(r: &mut Raw, itt: u32, cdb: &[u8]) -> u8 {
    status_of(r, itt, cdb, 0).0
}

/// Until `f` is true (10 s at most).
fn eventually(what: &str, mut f: impl FnMut(u32) -> bool) {
    let t = Instant::now();
    let mut itt = 5000;
    while !f(itt) {
        assert!(t.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(20));
        itt += 1;
    }
}

/// Logout (close the session) and its response.
fn logout(r: &mut Raw, itt: u32) {
    let mut h = bhs(0x06, 0x80);
    put32(&mut h, 16, itt);
    put32(&mut h, 24, r.cmd_sn);
    r.send(h, &[]);
    let (h, _) = r.read_pdu().expect("a Logout Response");
    assert_eq!((h[0] & 0x3F, h[2]), (0x26, 0), "logout response, success");
}

#[test]
fn reserve6_at_one_site_conflicts_at_the_other_until_released_or_its_nexus_goes() {
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let (mut h1, bs) = session(ia, "iqn.2026-12.test:host1");
    let (mut h2, _) = session(ib, "iqn.2026-12.test:host2");
    // Host 1 reserves through site a (the leader); again is GOOD.
    assert_eq!(st(&mut h1, 10, &RESERVE6), 0);
    assert_eq!(st(&mut h1, 11, &RESERVE6), 0);
    // Site b refuses host 2 a write and a RESERVE as soon as host 1's RESERVE completed.
    assert_eq!(write_one(&mut h2, 12, bs), CONFLICT);
    assert_eq!(st(&mut h2, 13, &RESERVE6), CONFLICT);
    assert_eq!(st(&mut h2, 14, &TUR), CONFLICT);
    // Host 2's RELEASE does nothing (GOOD), INQUIRY is still served.
    assert_eq!(st(&mut h2, 15, &RELEASE6), 0);
    assert_eq!(write_one(&mut h2, 16, bs), CONFLICT);
    assert_eq!(status_of(&mut h2, 17, &[0x12, 0, 0, 0, 36, 0], 36).0, 0);
    // The holder writes; PERSISTENT RESERVE IN conflicts while a RESERVE is held (SPC-2).
    assert_eq!(write_one(&mut h1, 18, bs), 0);
    let prin = [0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
    assert_eq!(status_of(&mut h1, 19, &prin, 4096).0, CONFLICT);
    // Host 1 releases: host 2 reserves through site b, and host 1 is refused at site a.
    assert_eq!(st(&mut h1, 20, &RELEASE6), 0);
    assert_eq!(st(&mut h2, 21, &RESERVE6), 0);
    assert_eq!(write_one(&mut h2, 22, bs), 0);
    assert_eq!(write_one(&mut h1, 23, bs), CONFLICT);
    assert_eq!(st(&mut h1, 24, &RESERVE6), CONFLICT);
    // Host 2 logs out at site b: its reservation goes at both sites.
    logout(&mut h2, 25);
    drop(h2);
    eventually("site a never saw host 2's logout release", |itt| {
        write_one(&mut h1, itt, bs) == 0
    });
    let (mut h3, _) = session(ib, "iqn.2026-12.test:host3");
    assert_eq!(write_one(&mut h3, 30, bs), 0, "site b: no reservation left");
    // Host 1 reserves at site a and its connection drops (no logout): host 3 at site b gets the
    // reservation once site a carried the nexus loss.
    assert_eq!(st(&mut h1, 31, &RESERVE6), 0);
    assert_eq!(write_one(&mut h3, 32, bs), CONFLICT);
    drop(h1);
    eventually("site b never saw host 1's connection loss", |itt| {
        st(&mut h3, itt, &RESERVE6) == 0
    });
    assert_eq!(write_one(&mut h3, 40, bs), 0);
    // And host 3's reservation holds at site a for a new session there.
    let mut h4 = Raw::login_as(ia, "iqn.2026-12.test:host4");
    assert_eq!(st(&mut h4, 41, &TUR), CONFLICT);
    assert_eq!(write_one(&mut h4, 42, bs), CONFLICT);
    drop((h3, h4));
    drop((a, b));
}

/// The relative target port identifier of the port `r` is logged in through, as its Device
/// Identification VPD page (83h) reports it (target port association, designator type 4).
fn relative_port(r: &mut Raw, itt: u32) -> u16 {
    let (st, _, _, _, d) = status_of(r, itt, &[0x12, 0x01, 0x83, 0x10, 0x00, 0], 4096);
    assert_eq!((st, d[1]), (0, 0x83), "INQUIRY VPD 83h");
    let end = 4 + u16::from_be_bytes([d[2], d[3]]) as usize;
    let mut at = 4;
    while at + 4 <= end {
        let len = d[at + 3] as usize;
        if (d[at + 1] >> 4) & 3 == 1 && d[at + 1] & 0x0F == 4 {
            assert_eq!(len, 4);
            return u16::from_be_bytes([d[at + 6], d[at + 7]]);
        }
        at += 4 + len;
    }
    panic!("no relative target port designator in {d:?}");
}

/// One READ FULL STATUS descriptor (SPC-4 §6.15.5): reservation key, byte 12 (ALL_TG_PT,
/// R_HOLDER), byte 13 (SCOPE, TYPE), RELATIVE TARGET PORT IDENTIFIER, TransportID.
#[derive(Debug, PartialEq, Eq)]
struct Full {
    key: u64,
    flags: u8,
    scope_type: u8,
    rtpi: u16,
    tid: Vec<u8>,
}

fn full_status(r: &mut Raw, itt: u32) -> Vec<Full> {
    let b = prin(r, itt, 3);
    let n = 8 + u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize;
    assert_eq!(b.len(), n, "ADDITIONAL LENGTH covers the descriptors");
    let mut out = Vec::new();
    let mut at = 8;
    while at < n {
        let d = &b[at..];
        assert_eq!(&d[8..12], &[0; 4], "bytes 8..12 reserved");
        assert_eq!(&d[14..18], &[0; 4], "bytes 14..18 reserved");
        let len = u32::from_be_bytes(d[20..24].try_into().unwrap()) as usize;
        out.push(Full {
            key: u64::from_be_bytes(d[0..8].try_into().unwrap()),
            flags: d[12],
            scope_type: d[13],
            rtpi: u16::from_be_bytes([d[18], d[19]]),
            tid: d[24..24 + len].to_vec(),
        });
        at += 24 + len;
    }
    assert_eq!(at, n);
    out
}

/// The iSCSI TransportID of an initiator port (SPC-4 §7.6.4.6, FORMAT CODE 01b, PROTOCOL
/// IDENTIFIER 5): the ISCSI INITIATOR PORT NAME, the iSCSI name, `,i,0x` and the ISID in hex,
/// NUL-ended and padded to a multiple of 4 (ADDITIONAL LENGTH at least 20).
fn port_tid(name: &str, isid: [u8; 6]) -> Vec<u8> {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    let mut t = vec![0x45, 0, 0, 0];
    t.extend_from_slice(format!("{name},i,0x{hex}").as_bytes());
    t.push(0);
    t.resize(t.len().next_multiple_of(4).max(24), 0);
    let n = (t.len() - 4) as u16;
    t[2..4].copy_from_slice(&n.to_be_bytes());
    t
}

/// SPC-4 §6.15.5: each READ FULL STATUS descriptor's RELATIVE TARGET PORT IDENTIFIER is that of
/// the target port its registration came through (ALL_TG_PT 0): site a's port for a host that
/// registered there, site b's for one that registered at site b, whichever site reports it.
/// §6.16.3: ALL_TG_PT is ignored but for REGISTER and REGISTER AND IGNORE EXISTING KEY, which
/// refuse it (not supported: ATP_C 0); SPEC_I_PT (not supported) is refused for every action.
#[test]
fn read_full_status_names_each_registrations_target_port_and_all_tg_pt_is_ignored_elsewhere() {
    const INVALID_PARAM: (u8, u8, u8, u8) = (2, 5, 0x26, 0);
    let (ka, kb) = (0xA1u64, 0xB2u64);
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let (mut h1, _) = session(ia, "iqn.2026-12.test:host1");
    let (mut h2, _) = session(ib, "iqn.2026-12.test:host2");
    let (port_a, port_b) = (relative_port(&mut h1, 3), relative_port(&mut h2, 3));
    assert_ne!(port_a, port_b, "one port per site");
    assert_eq!(prout(&mut h1, 4, 0, 0, 0, ka).0, 0);
    assert_eq!(prout(&mut h2, 4, 0, 0, 0, kb).0, 0);
    assert_eq!(prout(&mut h1, 5, 1, 1, ka, 0).0, 0, "Write Exclusive");
    let (fa, fb) = (full_status(&mut h1, 6), full_status(&mut h2, 6));
    assert_eq!(fa, fb, "both sites report one state");
    assert_eq!(fa.len(), 2);
    let tid = |name: &str| port_tid(name, crate::iscsi::ISID);
    let want = [
        Full {
            key: ka,
            flags: 0x01,
            scope_type: 0x01,
            rtpi: port_a,
            tid: tid("iqn.2026-12.test:host1"),
        },
        Full {
            key: kb,
            flags: 0,
            scope_type: 0,
            rtpi: port_b,
            tid: tid("iqn.2026-12.test:host2"),
        },
    ];
    assert_eq!(fa, want);
    // ALL_TG_PT with REGISTER or REGISTER AND IGNORE EXISTING KEY: not supported, refused.
    assert_eq!(prout_flags(&mut h2, 7, 0, 0, kb, 0xB3, 0x04), INVALID_PARAM);
    assert_eq!(prout_flags(&mut h2, 8, 6, 0, 0, 0xB3, 0x04), INVALID_PARAM);
    // SPEC_I_PT: refused with any action.
    assert_eq!(prout_flags(&mut h1, 9, 0, 0, ka, ka, 0x08), INVALID_PARAM);
    assert_eq!(prout_flags(&mut h1, 10, 1, 1, ka, 0, 0x08), INVALID_PARAM);
    // ALL_TG_PT with any other action is ignored: RESERVE (again), RELEASE, PREEMPT, CLEAR.
    assert_eq!(prout_flags(&mut h1, 11, 1, 1, ka, 0, 0x04).0, 0);
    assert_eq!(prout_flags(&mut h1, 12, 2, 1, ka, 0, 0x04).0, 0);
    assert_eq!(prout_flags(&mut h2, 13, 1, 1, kb, 0, 0x04).0, 0);
    assert_eq!(prout_flags(&mut h1, 14, 4, 1, ka, kb, 0x04).0, 0);
    let f = full_status(&mut h2, 15);
    assert_eq!(
        f.iter()
            .map(|d| (d.key, d.flags, d.rtpi))
            .collect::<Vec<_>>(),
        [(ka, 0x01, port_a)],
        "host 1 preempted host 2 and holds the reservation"
    );
    assert_eq!(prout_flags(&mut h1, 16, 3, 0, ka, 0, 0x04).0, 0);
    assert!(full_status(&mut h2, 17).is_empty(), "cleared");
    drop((h1, h2));
    drop((a, b));
}

/// One initiator port (one name and ISID) logged in at both sites is two I_T nexuses (an I_T
/// nexus is an initiator port with a target port, SAM-5 4.6; each site is a target port): it
/// registers through each, as multipath hosts do (Linux's mpathpersist sends REGISTER with
/// reservation key 0 on every path), each registration is its own (READ FULL STATUS lists both,
/// each with its port), and unregistering through one path leaves the other registered.
#[test]
fn one_initiator_port_at_both_sites_is_two_i_t_nexuses_each_registered_on_its_own() {
    let k = 0xC3u64;
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let (mut pa, bs) = session(ia, "iqn.2026-12.test:host1");
    let (mut pb, _) = session(ib, "iqn.2026-12.test:host1");
    let (port_a, port_b) = (relative_port(&mut pa, 3), relative_port(&mut pb, 3));
    assert_eq!(
        prout(&mut pa, 4, 0, 0, 0, k).0,
        0,
        "REGISTER through site a"
    );
    assert_eq!(
        prout(&mut pb, 5, 0, 0, 0, k).0,
        0,
        "REGISTER through site b: a nexus of its own, not registered yet"
    );
    let keys_and_ports = |f: Vec<Full>| {
        let mut v: Vec<(u64, u16)> = f.iter().map(|d| (d.key, d.rtpi)).collect();
        v.sort_unstable();
        v
    };
    let mut both = vec![(k, port_a), (k, port_b)];
    both.sort_unstable();
    assert_eq!(keys_and_ports(full_status(&mut pa, 6)), both);
    assert_eq!(keys_and_ports(full_status(&mut pb, 7)), both);
    // Write Exclusive - Registrants Only, reserved through site a: both paths write.
    assert_eq!(prout(&mut pa, 8, 1, 5, k, 0).0, 0);
    assert_eq!(write_one(&mut pa, 9, bs), 0);
    assert_eq!(write_one(&mut pb, 10, bs), 0);
    // Unregistered through site b: the registration through site a stays.
    assert_eq!(prout(&mut pb, 11, 0, 0, k, 0).0, 0);
    assert_eq!(keys_and_ports(full_status(&mut pb, 12)), [(k, port_a)]);
    assert_eq!(
        write_one(&mut pb, 13, bs),
        CONFLICT,
        "the path through site b is no registrant any more"
    );
    assert_eq!(write_one(&mut pa, 14, bs), 0);
    drop((pa, pb));
    drop((a, b));
}

/// SPC-4 §6.15.5: a READ FULL STATUS descriptor's TransportID identifies the initiator port of
/// its I_T nexus; for iSCSI that is the name with the ISID (§7.6.4.6, format 01b). Two sessions
/// of one initiator name with different ISIDs are two initiator ports, each registered on its
/// own, and are reported as two TransportIDs (the name alone, format 00b, would report them
/// the same).
#[test]
fn read_full_status_names_the_initiator_port_with_its_isid() {
    let (_d, addr) = crate::iscsi::daemon("16MiB");
    let name = "iqn.2026-12.test:twoports";
    let isid2 = [0x80, 0, 0, 0, 0, 2];
    let mut p1 = Raw::login_port(
        addr,
        name,
        crate::iscsi::ISID,
        crate::iscsi::IQN,
        false,
        false,
    );
    let mut p2 = Raw::login_port(addr, name, isid2, crate::iscsi::IQN, false, false);
    for (r, itt) in [(&mut p1, 1), (&mut p2, 1)] {
        // Past the first unit attention (power on).
        let _ = st(r, itt, &TUR);
    }
    assert_eq!(prout(&mut p1, 2, 0, 0, 0, 0x11).0, 0);
    assert_eq!(prout(&mut p2, 2, 0, 0, 0, 0x22).0, 0);
    let mut got: Vec<(u64, Vec<u8>)> = full_status(&mut p1, 3)
        .into_iter()
        .map(|d| (d.key, d.tid))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (0x11, port_tid(name, crate::iscsi::ISID)),
            (0x22, port_tid(name, isid2))
        ]
    );
    drop((p1, p2));
}
