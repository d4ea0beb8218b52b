//! SPC-2 RESERVE / RELEASE across the two sites of a mirrored volume: decided by the volume's
//! leader site and enforced at both, released at both when the holder's I_T nexus goes (logout,
//! a dropped connection).

use crate::iscsi::{Raw, bhs, put32, status_of, two_sites, write_one};
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
