//! Explicit ALUA across the two sites of a mirrored volume: SET TARGET PORT GROUPS asking for
//! a site's port group to be active/optimised is a planned switchover of the volume's
//! leadership to that site; REPORT TARGET PORT GROUPS at both sites then agrees, writes go on
//! through both, and every other I_T nexus (at both sites) reports ASYMMETRIC ACCESS STATE
//! CHANGED once, the nexus that asked does not. Malformed parameter lists are refused with
//! the SPC-4 sense and change nothing; a pair that is not in sync refuses the move.

use crate::harness::pattern;
use crate::iscsi::{Raw, read_blocks, status_of, two_sites, write_one};
use std::time::{Duration, Instant};

pub(crate) const TUR: [u8; 6] = [0; 6];
const RTPG: [u8; 12] = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
/// (status, sense key, ASC, ASCQ).
pub(crate) type Status = (u8, u8, u8, u8);
/// An RTPG descriptor: (group id, PREF, asymmetric access state).
pub(crate) type Group = (u16, bool, u8);
/// RTPG at site a and at site b.
type Both = ([Group; 2], [Group; 2]);
/// A unit attention ASYMMETRIC ACCESS STATE CHANGED.
pub(crate) const ALUA_CHANGED: Status = (0x02, 0x06, 0x2A, 0x06);

/// A session as `name` at `addr`, past its first unit attentions (TEST UNIT READY GOOD).
pub(crate) fn session(addr: std::net::SocketAddr, name: &str) -> Raw {
    let mut r = Raw::login_as(addr, name);
    let t = Instant::now();
    let mut itt = 1;
    while status_of(&mut r, itt, &TUR, 0).0 != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "TEST UNIT READY never GOOD for {name} at {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
        itt += 1;
    }
    r
}

/// SET TARGET PORT GROUPS with parameter list `list` (immediate data): (status, key, ASC,
/// ASCQ). The answer comes once the switchover is done (a few seconds at most).
pub(crate) fn stpg(r: &mut Raw, itt: u32, list: &[u8]) -> Status {
    let mut cdb = [0u8; 12];
    cdb[0] = 0xA4;
    cdb[1] = 0x0A;
    cdb[6..10].copy_from_slice(&(list.len() as u32).to_be_bytes());
    let flags = if list.is_empty() { 0x80 } else { 0xA0 };
    r.s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    r.scsi(itt, &cdb, list.len() as u32, flags, list);
    let (h, d) = r.read_pdu().expect("a SCSI Response");
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response");
    let s = if d.len() >= 16 {
        (d[4] & 0x0F, d[14], d[15])
    } else {
        (0, 0, 0)
    };
    (h[3], s.0, s.1, s.2)
}

/// A parameter list: 4 reserved bytes, then (state, group) descriptors.
pub(crate) fn list(descs: &[(u8, u16)]) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    for &(state, g) in descs {
        v.extend_from_slice(&[state, 0]);
        v.extend_from_slice(&g.to_be_bytes());
    }
    v
}

/// RTPG: (group id, PREF, state) per descriptor, or the sense of a refusal.
pub(crate) fn groups(r: &mut Raw, itt: u32) -> Result<Vec<Group>, Status> {
    let (st, k, a, q, d) = status_of(r, itt, &RTPG, 256);
    if st != 0 {
        return Err((st, k, a, q));
    }
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    Ok(d[4..]
        .chunks(12)
        .map(|g| {
            (
                u16::from_be_bytes([g[2], g[3]]),
                g[0] & 0x80 != 0,
                g[0] & 0x0F,
            )
        })
        .collect())
}

/// Site a leads: RTPG at a and at b as they are then.
const A_LEADS: Both = (
    [(1, true, 0x0), (2, false, 0x1)],
    [(2, false, 0x1), (1, true, 0x0)],
);
/// Site b leads.
const B_LEADS: Both = (
    [(1, false, 0x1), (2, true, 0x0)],
    [(2, true, 0x0), (1, false, 0x1)],
);

/// Until RTPG through `ra` (site a) and `rb` (site b) reports `want` (unit attentions on the
/// way are taken); whether either session met ASYMMETRIC ACCESS STATE CHANGED.
fn rtpg_until(ra: &mut Raw, rb: &mut Raw, want: Both, itt: &mut u32) {
    let t = Instant::now();
    loop {
        *itt += 2;
        let (ga, gb) = (groups(ra, *itt), groups(rb, *itt + 1));
        if ga.as_deref() == Ok(&want.0[..]) && gb.as_deref() == Ok(&want.1[..]) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "site a {ga:?}, site b {gb:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn set_target_port_groups_at_the_follower_moves_the_optimised_state_there() {
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    // Three nexuses: one at a, two at b (the second asks).
    let mut ha = session(ia, "iqn.2026-12.test:host-a");
    let mut hb = session(ib, "iqn.2026-12.test:host-b");
    let mut asker = session(ib, "iqn.2026-12.test:asker");
    let mut itt = 100;
    rtpg_until(&mut ha, &mut hb, A_LEADS, &mut itt);
    // Everyone past the unit attentions of the session's start.
    for r in [&mut ha, &mut hb, &mut asker] {
        itt += 1;
        let _ = status_of(r, itt, &TUR, 0);
        itt += 1;
        assert_eq!(status_of(r, itt, &TUR, 0).0, 0);
    }

    // Through site b (the follower): group 2 (site b) active/optimised.
    assert_eq!(stpg(&mut asker, 500, &list(&[(0x0, 2)])), (0, 0, 0, 0));
    // The asker sees no unit attention, and both its site and the other agree at once.
    assert_eq!(
        status_of(&mut asker, 501, &TUR, 0).0,
        0,
        "no UA for the asker"
    );
    assert_eq!(
        groups(&mut asker, 502).as_deref(),
        Ok(&B_LEADS.1[..]),
        "site b's RTPG once the command completed"
    );
    let m = crate::mirror::status(&b);
    assert_eq!(m["role"], "leader", "{m}");
    assert_eq!(m["leader_term"], 1, "{m}");
    assert_eq!(crate::mirror::status(&a)["role"], "follower");
    // Every other nexus, at both sites, reports the change (first thing it hears).
    for (r, site) in [(&mut ha, "a"), (&mut hb, "b")] {
        let (st, k, asc, q, _) = status_of(r, 600, &TUR, 0);
        assert_eq!(
            (st, k, asc, q),
            ALUA_CHANGED,
            "the other nexus at site {site}"
        );
    }
    let mut itt = 700;
    rtpg_until(&mut ha, &mut hb, B_LEADS, &mut itt);
    for r in [&mut ha, &mut hb, &mut asker] {
        assert_eq!(status_of(r, 750, &TUR, 0).0, 0, "settled");
    }
    // Writes go on through both sites, and each reads the other's.
    assert_eq!(
        write_one(&mut ha, 800, 512),
        0,
        "write at a after the switchover"
    );
    assert_eq!(read_blocks(&mut asker, 801, 0, 1), pattern(800, 512));
    assert_eq!(
        write_one(&mut hb, 810, 512),
        0,
        "write at b after the switchover"
    );
    assert_eq!(read_blocks(&mut ha, 811, 0, 1), pattern(810, 512));
    // Asking for what is already so changes nothing (GOOD, no unit attention anywhere).
    assert_eq!(stpg(&mut asker, 900, &list(&[(0x0, 2)])), (0, 0, 0, 0));
    assert_eq!(stpg(&mut ha, 901, &list(&[(0x1, 1)])), (0, 0, 0, 0));
    assert_eq!(status_of(&mut hb, 902, &TUR, 0).0, 0);
    assert_eq!(crate::mirror::status(&b)["leader_term"], 1);

    // Back, through site a, asking for the optimised group 2 to be non-optimised.
    assert_eq!(stpg(&mut ha, 1000, &list(&[(0x1, 2)])), (0, 0, 0, 0));
    assert_eq!(
        status_of(&mut ha, 1001, &TUR, 0).0,
        0,
        "no UA for the asker"
    );
    for (r, site) in [(&mut hb, "b"), (&mut asker, "b")] {
        let (st, k, asc, q, _) = status_of(r, 1002, &TUR, 0);
        assert_eq!((st, k, asc, q), ALUA_CHANGED, "a nexus at site {site}");
    }
    let mut itt = 1100;
    rtpg_until(&mut ha, &mut hb, A_LEADS, &mut itt);
    assert_eq!(crate::mirror::status(&a)["leader_term"], 2);
    assert_eq!(write_one(&mut asker, 1200, 512), 0);
    assert_eq!(read_blocks(&mut ha, 1201, 0, 1), pattern(1200, 512));
    drop((a, b));
}

#[test]
fn malformed_or_impossible_set_target_port_groups_are_refused_and_change_nothing() {
    const INVALID_FIELD: Status = (0x02, 0x05, 0x26, 0x00);
    const LENGTH_ERROR: Status = (0x02, 0x05, 0x1A, 0x00);
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let mut ha = session(ia, "iqn.2026-12.test:host-a");
    let mut hb = session(ib, "iqn.2026-12.test:host-b");
    let mut itt = 100;
    rtpg_until(&mut ha, &mut hb, A_LEADS, &mut itt);
    // The logical unit has a target port at each site (RTPG lists both): the standard INQUIRY
    // sets MULTIP (byte 6 bit 4, SPC-4 §6.6.2) at both.
    for (r, at) in [(&mut ha, "a"), (&mut hb, "b")] {
        let (st, _, _, _, inq) = status_of(r, 150, &[0x12, 0, 0, 0, 96, 0], 96);
        assert_eq!((st, inq[6] & 0x10), (0, 0x10), "MULTIP at site {at}");
    }
    let mut truncated = list(&[(0x0, 2)]);
    truncated.truncate(6);
    let cases: [(&str, Vec<u8>, Status); 9] = [
        ("a truncated descriptor", truncated, LENGTH_ERROR),
        ("a header cut short", vec![0, 0], LENGTH_ERROR),
        ("standby", list(&[(0x2, 2)]), INVALID_FIELD),
        ("unavailable", list(&[(0x3, 2)]), INVALID_FIELD),
        ("offline", list(&[(0xE, 2)]), INVALID_FIELD),
        ("an unknown group", list(&[(0x0, 3)]), INVALID_FIELD),
        ("both optimised", list(&[(0x0, 1), (0x0, 2)]), INVALID_FIELD),
        (
            "both non-optimised",
            list(&[(0x1, 1), (0x1, 2)]),
            INVALID_FIELD,
        ),
        (
            "one group, two states",
            list(&[(0x0, 2), (0x1, 2)]),
            INVALID_FIELD,
        ),
    ];
    for (i, (what, l, want)) in cases.iter().enumerate() {
        assert_eq!(stpg(&mut hb, 200 + i as u32, l), *want, "{what}");
    }
    // An empty list (length 0) and a header alone: nothing to do, not an error.
    assert_eq!(stpg(&mut hb, 300, &[]), (0, 0, 0, 0));
    assert_eq!(stpg(&mut hb, 301, &[0; 4]), (0, 0, 0, 0));
    // Nothing moved: no unit attention, the same groups, the same leader and term.
    assert_eq!(status_of(&mut ha, 302, &TUR, 0).0, 0);
    assert_eq!(groups(&mut ha, 303).as_deref(), Ok(&A_LEADS.0[..]));
    assert_eq!(groups(&mut hb, 304).as_deref(), Ok(&A_LEADS.1[..]));
    assert_eq!(crate::mirror::status(&a)["leader_term"], 0);
    assert_eq!(write_one(&mut hb, 305, 512), 0);

    // With site a gone the pair is not in sync: the move is refused (SET TARGET PORT GROUPS
    // COMMAND FAILED), b still follows.
    drop(ha);
    let mut a = a;
    a.kill();
    let t = Instant::now();
    while crate::mirror::status(&b)["state"] == "up" {
        assert!(t.elapsed() < Duration::from_secs(15), "b never saw a go");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past the unit attention of the lost peer (the path may be unavailable now).
    for i in 0..3 {
        if status_of(&mut hb, 390 + i, &TUR, 0).1 != 0x06 {
            break;
        }
    }
    assert_eq!(
        stpg(&mut hb, 400, &list(&[(0x0, 2)])),
        (0x02, 0x04, 0x67, 0x0A)
    );
    assert_eq!(crate::mirror::status(&b)["role"], "follower");
    drop(b);
}

/// A volume that is not mirrored has one port group (1), always active/optimised.
#[test]
fn a_single_site_volume_keeps_its_one_group_optimised() {
    let (d, addr) = crate::iscsi::daemon("16MiB");
    let mut r = session(addr, "iqn.2026-12.test:single");
    assert_eq!(stpg(&mut r, 10, &list(&[(0x0, 1)])), (0, 0, 0, 0));
    for (i, l) in [list(&[(0x1, 1)]), list(&[(0x0, 2)])].iter().enumerate() {
        assert_eq!(
            stpg(&mut r, 11 + i as u32, l),
            (0x02, 0x05, 0x26, 0x00),
            "case {i}"
        );
    }
    assert_eq!(groups(&mut r, 20).as_deref(), Ok(&[(1, true, 0x0)][..]));
    // The standard INQUIRY reports TPGS 11b (implicit and explicit ALUA).
    let (st, _, _, _, inq) = status_of(&mut r, 21, &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(st, 0);
    assert_eq!((inq[5] >> 4) & 0x03, 0x03);
    // One target port: MULTIP clear.
    assert_eq!(inq[6] & 0x10, 0);
    drop(d);
}

/// A site dies under the kernel's iSCSI initiator: two sites of a mirrored volume with a
/// witness; the guest, which the host list places at site b, logs in to site b alone (its
/// path active/optimized) and writes a pattern a MiB at a time while site a, the leader, is
/// SIGKILLed (the guest rewrites MiB 4 until it sees site a gone). What site b answers while
/// it waits for the witness must be something Linux retries: no write fails, the pattern
/// reads back whole, the kernel log shows no I/O error; site b's replica holds the pattern
/// and site b serves as the survivor.
/// (The guest runs in `crate::linux_guest`; the test sits in this module, apart from the other
/// guest tests in name order, so that the two test threads seldom both wait for one guest.)
#[test]
fn linux_iscsi_initiator_carries_on_at_site_b_when_site_a_is_killed() {
    crate::linux_guest::iscsi_failover_guest();
}
