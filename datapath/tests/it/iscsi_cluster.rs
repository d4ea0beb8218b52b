//! What hypervisor clusters do over iSCSI against the two sites of a mirrored volume: a
//! Windows failover cluster's SCSI-3 persistent reservations (nodes registered through both
//! sites, the owner node removing the keys of nodes that left with PREEMPT, then a planned
//! switchover of the volume's leadership), and ESXi's ATS heartbeats (COMPARE AND WRITE of one
//! block from hosts at both sites on one LBA, with writes elsewhere interleaved).

use crate::iscsi::{Raw, prin, prout, status_of, two_sites, write_one};
use crate::iscsi_alua::{list, session, stpg};
use std::time::{Duration, Instant};

const CONFLICT: u8 = 0x18;
/// SCSI reservation type 5: Write Exclusive - Registrants Only (a Windows cluster's).
const WE_RO: u8 = 5;

/// READ KEYS: (PRgeneration, the keys).
fn keys(r: &mut Raw, itt: u32) -> (u32, Vec<u64>) {
    let d = prin(r, itt, 0);
    let n = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(d.len(), 8 + n, "ADDITIONAL LENGTH");
    let mut k: Vec<u64> = d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    k.sort_unstable();
    (u32::from_be_bytes(d[0..4].try_into().unwrap()), k)
}

/// READ RESERVATION: (PRgeneration, the holder's key, SCOPE and TYPE), None without one.
fn reservation(r: &mut Raw, itt: u32) -> (u32, Option<(u64, u8)>) {
    let d = prin(r, itt, 1);
    let g = u32::from_be_bytes(d[0..4].try_into().unwrap());
    match u32::from_be_bytes(d[4..8].try_into().unwrap()) {
        0 => (g, None),
        16 => (
            g,
            Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21])),
        ),
        n => panic!("READ RESERVATION ADDITIONAL LENGTH {n}"),
    }
}

/// SPC-4 §5.13.11.4.3: a PREEMPT whose SERVICE ACTION RESERVATION KEY is not the holder's
/// removes the registrations with that key and leaves the reservation as it is, also when the
/// holder sends it. A Windows failover cluster's owner node does exactly that to remove the
/// key of a node that left the cluster (its "scrub"): that node must then be refused writes
/// at both sites. Each site reports the same keys, holder and PRgeneration, and they stay so
/// (PRgeneration never going back) across a planned switchover of the volume's leadership.
/// Before the fix, the holder's PREEMPT only set the type again: the removed node kept its
/// registration and wrote on.
#[test]
fn a_cluster_owner_preempting_a_departed_nodes_key_removes_it_at_both_sites() {
    let (k1, k2, k3) = (0x11u64, 0x22u64, 0x33u64);
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    // Node 1 (the owner) at site a, nodes 2 and 3 at site b.
    let mut n1 = session(ia, "iqn.2026-12.test:node1");
    let mut n2 = session(ib, "iqn.2026-12.test:node2");
    let mut n3 = session(ib, "iqn.2026-12.test:node3");
    let bs = 512;
    assert_eq!(prout(&mut n1, 10, 0, 0, 0, k1).0, 0);
    assert_eq!(prout(&mut n2, 10, 6, 0, 0, k2).0, 0, "REGISTER AND IGNORE");
    assert_eq!(prout(&mut n3, 10, 0, 0, 0, k3).0, 0);
    assert_eq!(prout(&mut n1, 11, 1, WE_RO, k1, 0).0, 0);
    assert_eq!(write_one(&mut n2, 12, bs), 0, "a registrant writes");
    let (g0, _) = keys(&mut n1, 13);
    // Node 2 leaves the cluster; the owner removes its key through site a.
    assert_eq!(prout(&mut n1, 14, 4, WE_RO, k1, k2).0, 0, "PREEMPT");
    for (r, at) in [(&mut n1, "a"), (&mut n3, "b")] {
        assert_eq!(
            keys(r, 15),
            (g0 + 1, vec![k1, k3]),
            "READ KEYS at site {at}: node 2's key is gone"
        );
        assert_eq!(
            reservation(r, 16),
            (g0 + 1, Some((k1, WE_RO))),
            "READ RESERVATION at site {at}: node 1 still holds it"
        );
    }
    assert_eq!(
        write_one(&mut n2, 17, bs),
        CONFLICT,
        "node 2 is no registrant"
    );
    assert_eq!(write_one(&mut n3, 18, bs), 0);
    // PREEMPT AND ABORT of a key nobody has: RESERVATION CONFLICT, nothing changes.
    assert_eq!(prout(&mut n3, 19, 5, WE_RO, k3, 0x99).0, CONFLICT);
    assert_eq!(keys(&mut n3, 20), (g0 + 1, vec![k1, k3]));
    // Node 2 comes back and registers again; node 3 (at site b) takes over as owner with
    // PREEMPT AND ABORT of node 1's key.
    assert_eq!(prout(&mut n2, 21, 6, 0, 0, k2).0, 0);
    assert_eq!(prout(&mut n3, 22, 5, WE_RO, k3, k1).0, 0);
    assert_eq!(write_one(&mut n1, 23, bs), CONFLICT, "node 1 preempted");
    let want = (g0 + 3, vec![k2, k3]);
    assert_eq!(keys(&mut n1, 24), want);
    assert_eq!(keys(&mut n2, 24), want);
    assert_eq!(reservation(&mut n1, 25), (g0 + 3, Some((k3, WE_RO))));
    // The leadership moves to site b (SET TARGET PORT GROUPS through site b): the same state
    // at both sites after it, enforced the same way, PRgeneration where it was.
    assert_eq!(stpg(&mut n3, 26, &list(&[(0x0, 2)])), (0, 0, 0, 0));
    let t = Instant::now();
    let mut itt = 100;
    for r in [&mut n1, &mut n2, &mut n3] {
        loop {
            // Past the unit attention of the move.
            itt += 1;
            if status_of(r, itt, &[0; 6], 0).0 == 0 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10));
        }
        itt += 1;
        assert_eq!(keys(r, itt), want);
        itt += 1;
        assert_eq!(reservation(r, itt), (g0 + 3, Some((k3, WE_RO))));
    }
    assert_eq!(write_one(&mut n1, 200, bs), CONFLICT);
    assert_eq!(write_one(&mut n2, 201, bs), 0);
    // The new leader (site b) decides: node 3 removes node 2's key through site b, site a
    // enforces it.
    assert_eq!(prout(&mut n3, 202, 4, WE_RO, k3, k2).0, 0);
    assert_eq!(keys(&mut n1, 203), (g0 + 4, vec![k3]));
    assert_eq!(write_one(&mut n2, 204, bs), CONFLICT);
    drop((n1, n2, n3));
    drop((a, b));
}
