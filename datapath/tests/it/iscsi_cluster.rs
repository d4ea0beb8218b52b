//! What hypervisor clusters do over iSCSI against the two sites of a mirrored volume: a
//! Windows failover cluster's SCSI-3 persistent reservations (nodes registered through both
//! sites, the owner node removing the keys of nodes that left with PREEMPT, then a planned
//! switchover of the volume's leadership; a failover and the failed site's restart with a
//! stale APTPL file), and ESXi's ATS heartbeats (COMPARE AND WRITE of one block from hosts at
//! both sites on one LBA, with writes elsewhere interleaved, also while the leadership moves
//! back and forth and while either site is killed); UNMAP and WRITE SAME at their limits; the
//! identity (VPD 83h) and port groups (RTPG) of both sites; registrations during switchovers.

use crate::iscsi::{Raw, prout, status_of, two_sites, write_one};
use crate::iscsi_alua::{list, session, stpg};
use std::time::{Duration, Instant};

const CONFLICT: u8 = 0x18;
/// SCSI reservation type 5: Write Exclusive - Registrants Only (a Windows cluster's).
const WE_RO: u8 = 5;

/// PERSISTENT RESERVE IN service action `sa`: its data, after the unit attentions a host
/// takes on the way (10 s at most).
fn prin(r: &mut Raw, itt: u32, sa: u8) -> Vec<u8> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5E;
    cdb[1] = sa;
    cdb[7..9].copy_from_slice(&4096u16.to_be_bytes());
    let t = Instant::now();
    loop {
        let (st, key, asc, ascq, d) = status_of(r, itt, &cdb, 4096);
        if st == 0 {
            return d;
        }
        assert!(
            key == 0x06 && t.elapsed() < Duration::from_secs(10),
            "PERSISTENT RESERVE IN {sa}: {:?}",
            (st, key, asc, ascq)
        );
        eprintln!("PERSISTENT RESERVE IN {sa}: unit attention {asc:#04x}/{ascq:#04x}");
    }
}

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

/// A barrier of `n` threads whose wait gives up (panics) after 30 s: a thread that failed
/// never holds the others forever.
struct Gate {
    n: usize,
    state: std::sync::Mutex<(usize, u64)>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn new(n: usize) -> std::sync::Arc<Gate> {
        std::sync::Arc::new(Gate {
            n,
            state: std::sync::Mutex::new((0, 0)),
            cv: std::sync::Condvar::new(),
        })
    }

    fn wait(&self) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let round = g.1;
        g.0 += 1;
        if g.0 == self.n {
            *g = (0, round + 1);
            self.cv.notify_all();
            return;
        }
        let t = Instant::now();
        while g.1 == round {
            assert!(t.elapsed() < Duration::from_secs(30), "a party never came");
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// COMPARE AND WRITE (16) of one block at `lba` sent as task `itt` (immediate data).
fn send_caw(r: &mut Raw, itt: u32, lba: u64, cmp: &[u8], data: &[u8]) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = 1;
    r.scsi(
        itt,
        &cdb,
        (cmp.len() + data.len()) as u32,
        0xA0,
        &[cmp, data].concat(),
    );
}

/// The SCSI Responses of tasks `itts` (in any order): (status, sense key) of each, in `itts`'
/// order.
fn responses(r: &mut Raw, itts: &[u32]) -> Vec<(u8, u8)> {
    let mut got = vec![None; itts.len()];
    while got.iter().any(Option::is_none) {
        let (h, d) = r.read_pdu().expect("a SCSI Response");
        assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
        let itt = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let i = itts.iter().position(|&t| t == itt).expect("a task sent");
        let key = if d.len() >= 16 { d[4] & 0x0F } else { 0 };
        got[i] = Some((h[3], key));
    }
    got.into_iter().map(Option::unwrap).collect()
}

/// ESXi's ATS heartbeat through round-robin paths to both sites: hosts at site a and at site
/// b read the heartbeat block, then all send COMPARE AND WRITE of that block at once, each
/// with its own new data, while each also writes the block next to it and a block of its own
/// (two commands in flight per session). In every round exactly one COMPARE AND WRITE is GOOD
/// and every other one is MISCOMPARE (never another error, never two winners); every host,
/// at either site, then reads the winner's data; no write is lost, and both sites read the
/// same blocks at the end.
#[test]
fn ats_heartbeats_from_both_sites_have_one_winner_per_round_and_lose_no_write() {
    use crate::harness::pattern;
    use crate::iscsi::{read_blocks, write10};
    const HOSTS: usize = 4;
    const ROUNDS: u64 = 25;
    const HB: u32 = 8;
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let barrier = Gate::new(HOSTS);
    // (`pattern` ignores its seed's lowest bit: even seeds only.)
    let seed = |round: u64, host: usize| 1000 * round + 2 * host as u64 + 2;
    let threads: Vec<_> = (0..HOSTS)
        .map(|i| {
            let addr = if i % 2 == 0 { ia } else { ib };
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut r = session(addr, &format!("iqn.2026-12.test:esx{i}"));
                let mut itt = 1000;
                let mut out = Vec::new();
                for round in 0..ROUNDS {
                    itt += 10;
                    let cur = read_blocks(&mut r, itt, HB, 1);
                    barrier.wait();
                    let mine = pattern(seed(round, i), 512);
                    // The neighbour block (every host, the last one's stays) and its own.
                    r.scsi(itt + 1, &write10(HB + 1, 1), 512, 0xA0, &mine);
                    send_caw(&mut r, itt + 2, u64::from(HB), &cur, &mine);
                    r.scsi(itt + 3, &write10(100 + i as u32, 1), 512, 0xA0, &mine);
                    let s = responses(&mut r, &[itt + 1, itt + 2, itt + 3]);
                    assert_eq!((s[0], s[2]), ((0, 0), (0, 0)), "host {i} round {round}");
                    assert!(
                        s[1] == (0, 0) || s[1] == (0x02, 0x0E),
                        "host {i} round {round}: COMPARE AND WRITE {:?}",
                        s[1]
                    );
                    barrier.wait();
                    let after = read_blocks(&mut r, itt + 4, HB, 1);
                    barrier.wait();
                    out.push((s[1].0 == 0, after));
                }
                out
            })
        })
        .collect();
    let results: Vec<Vec<(bool, Vec<u8>)>> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    for round in 0..ROUNDS as usize {
        let winners: Vec<usize> = (0..HOSTS).filter(|&i| results[i][round].0).collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let want = pattern(seed(round as u64, winners[0]), 512);
        for (i, r) in results.iter().enumerate() {
            assert!(
                r[round].1 == want,
                "round {round}: host {i} reads another heartbeat"
            );
        }
    }
    let mut ra = session(ia, "iqn.2026-12.test:check-a");
    let mut rb = session(ib, "iqn.2026-12.test:check-b");
    let (da, db) = (
        read_blocks(&mut ra, 50, 0, 128),
        read_blocks(&mut rb, 50, 0, 128),
    );
    assert!(da == db, "both sites read the same blocks");
    for i in 0..HOSTS {
        let at = (100 + i) * 512;
        assert!(
            da[at..at + 512] == pattern(seed(ROUNDS - 1, i), 512),
            "host {i}'s last write"
        );
    }
    drop((ra, rb));
    drop((a, b));
}

/// A Windows cluster's reservation through a failover: nodes registered with APTPL through
/// both sites, node 1 holding Write Exclusive - Registrants Only through site a (the leader),
/// which is killed; site b becomes the survivor (witness) and reports the same keys, holder
/// and PRgeneration; node 2 takes over there with PREEMPT AND ABORT. Site a restarts with its
/// own (now stale) APTPL file: once resynced it reports the survivor's state, never the one
/// on its disk (node 1's reservation is not resurrected, PRgeneration does not go back), and
/// refuses node 1's writes. Then, after a CLEAR and a new reservation, site b restarts without
/// any state of its own and reports and enforces site a's.
#[test]
fn a_restarted_sites_stale_aptpl_state_never_comes_back_after_a_failover() {
    use crate::failover::{KEY, WitnessProc};
    use crate::harness::free_port;
    use crate::nvmf_ana::{site_with, wait_claims, wait_states};
    use std::net::SocketAddr;
    let (k1, k2) = (0x11u64, 0x22u64);
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let (ia, ib) = (free_port(), free_port());
    let front = |me: &str, port: u16| {
        format!(
            "[iscsi]\nlisten=['127.0.0.1:{port}']\nstate_dir='{}'\n[[iscsi.target]]\n\
             iqn='{}'\nluns=['va']\n",
            root.path().join(me).join("pr").display(),
            crate::iscsi::IQN
        )
    };
    let mut a = site_with(root.path(), "a", "b", pa, pb, &w, &front("a", ia), "");
    let b = site_with(root.path(), "b", "a", pb, pa, &w, &front("b", ib), "");
    for s in [&a, &b] {
        wait_states(s, &[("va", "up")]);
    }
    wait_claims(root.path());
    let (ia, ib) = (
        SocketAddr::from(([127, 0, 0, 1], ia)),
        SocketAddr::from(([127, 0, 0, 1], ib)),
    );
    let mut n1 = session(ia, "iqn.2026-12.test:node1");
    let mut n2 = session(ib, "iqn.2026-12.test:node2");
    let bs = 512;
    assert_eq!(
        crate::iscsi::prout_flags(&mut n1, 10, 0, 0, 0, k1, 0x01).0,
        0
    );
    assert_eq!(
        crate::iscsi::prout_flags(&mut n2, 10, 0, 0, 0, k2, 0x01).0,
        0
    );
    assert_eq!(prout(&mut n1, 11, 1, WE_RO, k1, 0).0, 0);
    let before = keys(&mut n2, 12);
    assert_eq!(before.1, vec![k1, k2]);
    // Site a dies: site b survives with the same state.
    drop(n1);
    a.kill();
    wait_states(&b, &[("va", "survivor")]);
    let t = Instant::now();
    let mut itt = 100;
    loop {
        itt += 1;
        if status_of(&mut n2, itt, &[0; 6], 0).0 == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "site b never served");
    }
    assert_eq!(keys(&mut n2, 20), before);
    assert_eq!(reservation(&mut n2, 21), (before.0, Some((k1, WE_RO))));
    // Node 2 takes the disk over at the survivor.
    assert_eq!(prout(&mut n2, 22, 5, WE_RO, k2, k1).0, 0);
    let after = (before.0 + 1, vec![k2]);
    assert_eq!(keys(&mut n2, 23), after);
    assert_eq!(write_one(&mut n2, 24, bs), 0);
    // Site a comes back with its own APTPL file (node 1 holding): resynced from b, it
    // reports b's state.
    let a = a.respawn();
    wait_states(&a, &[("va", "up")]);
    wait_states(&b, &[("va", "up")]);
    let mut n1 = session(ia, "iqn.2026-12.test:node1");
    assert_eq!(keys(&mut n1, 30), after, "site a: the survivor's keys");
    assert_eq!(reservation(&mut n1, 31), (after.0, Some((k2, WE_RO))));
    assert_eq!(write_one(&mut n1, 32, bs), CONFLICT, "node 1 preempted");
    assert_eq!(keys(&mut n2, 33), after);
    // CLEAR through site a, node 1 registers again and reserves (APTPL); then site b restarts
    // without any state of its own (its state directory gone): it reports and enforces site
    // a's state, PRgeneration included.
    assert_eq!(prout(&mut n1, 34, 6, 0, 0, k1).0, 0);
    assert_eq!(prout(&mut n1, 35, 3, 0, k1, 0).0, 0, "CLEAR");
    assert_eq!(keys(&mut n2, 36), (after.0 + 2, vec![]));
    assert_eq!(
        crate::iscsi::prout_flags(&mut n1, 37, 0, 0, 0, k1, 0x01).0,
        0
    );
    assert_eq!(prout(&mut n1, 38, 1, WE_RO, k1, 0).0, 0);
    let last = keys(&mut n1, 39);
    assert_eq!(last, (after.0 + 3, vec![k1]));
    drop(n2);
    let mut b = b;
    b.kill();
    std::fs::remove_dir_all(root.path().join("b").join("pr")).unwrap();
    let b = b.respawn();
    wait_states(&b, &[("va", "up")]);
    let mut n2 = session(ib, "iqn.2026-12.test:node2");
    assert_eq!(keys(&mut n2, 40), last, "site b: site a's keys");
    assert_eq!(reservation(&mut n2, 41), (last.0, Some((k1, WE_RO))));
    assert_eq!(
        write_one(&mut n2, 42, bs),
        CONFLICT,
        "node 2 is no registrant"
    );
    assert_eq!(keys(&mut n1, 43), last);
    drop((n1, n2));
    drop((a, b, w));
}

/// (status, sense key) of a command a host retries on another try: a unit attention or NOT
/// READY (an ALUA state in transition or unavailable).
fn retryable(s: (u8, u8)) -> bool {
    s.0 == 0x02 && matches!(s.1, 0x06 | 0x02)
}

/// READ(10) of one block: its data, or (status, sense key).
fn try_read(r: &mut Raw, itt: u32, lba: u32) -> Result<Vec<u8>, (u8, u8)> {
    r.scsi(itt, &crate::iscsi::read10(lba, 1), 512, 0xC0, &[]);
    let mut out = Vec::new();
    loop {
        let (h, d) = r.read_pdu().expect("Data-In or a SCSI Response");
        match h[0] & 0x3F {
            0x25 => {
                out.extend_from_slice(&d);
                if h[1] & 0x01 != 0 {
                    assert_eq!(h[3], 0);
                    return Ok(out);
                }
            }
            0x21 => {
                let key = if d.len() >= 16 { d[4] & 0x0F } else { 0 };
                return if h[3] == 0 { Ok(out) } else { Err((h[3], key)) };
            }
            op => panic!("opcode {op:#x}"),
        }
    }
}

/// Until `f` (given a fresh task tag) answers something a host does not retry (10 s at most).
fn until_final<T>(
    itt: &mut u32,
    mut f: impl FnMut(u32) -> Result<T, (u8, u8)>,
) -> Result<T, (u8, u8)> {
    let t = Instant::now();
    loop {
        *itt += 1;
        match f(*itt) {
            Err(s) if retryable(s) && t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// ATS heartbeats from hosts at both sites while the volume's leadership moves to site b and
/// back (SET TARGET PORT GROUPS from another host). A host retries a command answered with a
/// unit attention or NOT READY (ALUA transitioning), as ESXi does; such an answer says the
/// command was not carried out. Every round: at most one COMPARE AND WRITE is GOOD; the block
/// then holds the GOOD one's data, or, without a GOOD one, the data it held or that of a
/// host whose outcome was reported unknown (an error other than MISCOMPARE and the retried
/// ones), never that of a host that saw only retried answers and MISCOMPARE (a CAW applied
/// while answered as not done, the retry then miscomparing against its own data).
#[test]
fn ats_heartbeats_keep_one_winner_per_round_across_switchovers() {
    use crate::harness::pattern;
    const HOSTS: usize = 4;
    const ROUNDS: u64 = 150;
    const HB: u32 = 8;
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let barrier = Gate::new(HOSTS);
    let start = Gate::new(HOSTS + 1);
    // (`pattern` ignores its seed's lowest bit: even seeds only.)
    let seed = |round: u64, host: usize| 1000 * round + 2 * host as u64 + 2;
    let threads: Vec<_> = (0..HOSTS)
        .map(|i| {
            let addr = if i % 2 == 0 { ia } else { ib };
            let barrier = std::sync::Arc::clone(&barrier);
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                let mut r = session(addr, &format!("iqn.2026-12.test:esx{i}"));
                r.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut itt = 1000;
                let mut out = Vec::new();
                start.wait();
                for round in 0..ROUNDS {
                    let cur = until_final(&mut itt, |t| try_read(&mut r, t, HB)).expect("read");
                    barrier.wait();
                    let mine = pattern(seed(round, i), 512);
                    let w = until_final(&mut itt, |t| {
                        r.scsi(
                            t,
                            &crate::iscsi::write10(100 + i as u32, 1),
                            512,
                            0xA0,
                            &mine,
                        );
                        match responses(&mut r, &[t])[0] {
                            (0, _) => Ok(()),
                            s => Err(s),
                        }
                    });
                    assert_eq!(w, Ok(()), "host {i} round {round}: write");
                    let mut seen = Vec::new();
                    let _ = until_final(&mut itt, |t| {
                        send_caw(&mut r, t, u64::from(HB), &cur, &mine);
                        let s = responses(&mut r, &[t])[0];
                        seen.push(s);
                        if s.0 == 0 { Ok(()) } else { Err(s) }
                    });
                    barrier.wait();
                    let after = until_final(&mut itt, |t| try_read(&mut r, t, HB)).expect("read");
                    barrier.wait();
                    out.push((cur, seen, after));
                }
                out
            })
        })
        .collect();
    // The switchovers, while the rounds run.
    let mut asker = session(ib, "iqn.2026-12.test:asker");
    start.wait();
    std::thread::sleep(Duration::from_millis(20));
    let mut moves = 0;
    let mut itt = 5000;
    for target in [2u16, 1, 2, 1] {
        itt += 10;
        let s = until_final(&mut itt, |t| {
            match stpg(&mut asker, t, &list(&[(0x0, target)])) {
                (0, ..) => Ok(()),
                (st, k, ..) => Err((st, k)),
            }
        });
        moves += usize::from(s.is_ok());
    }
    assert!(moves >= 2, "the leadership moved {moves} times");
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let retried = results
        .iter()
        .flatten()
        .filter(|(_, seen, _)| seen.iter().any(|&s| retryable(s)))
        .count();
    eprintln!("{moves} moves, {retried} COMPARE AND WRITEs retried");
    for round in 0..ROUNDS as usize {
        let prev = &results[0][round].0;
        let after = &results[0][round].2;
        for (i, r) in results.iter().enumerate() {
            assert!(
                r[round].2 == *after,
                "round {round}: host {i} reads another block"
            );
        }
        let good: Vec<usize> = (0..HOSTS)
            .filter(|&i| results[i][round].1.iter().any(|s| s.0 == 0))
            .collect();
        let holder = (0..HOSTS).find(|&i| *after == pattern(seed(round as u64, i), 512));
        match (good.as_slice(), holder) {
            ([w], Some(h)) if *w == h => {}
            ([], None) => assert!(
                after == prev,
                "round {round}: the block changed to no host's data"
            ),
            ([], Some(h)) => {
                let seen = &results[h][round].1;
                assert!(
                    seen.iter()
                        .any(|&s| s.0 != 0 && !retryable(s) && s.1 != 0x0E),
                    "round {round}: host {h}'s COMPARE AND WRITE was applied, answered {seen:?}"
                );
            }
            (g, h) => panic!(
                "round {round}: GOOD for {g:?}, the block holds host {h:?}'s data; answers {:?}",
                results.iter().map(|r| &r[round].1).collect::<Vec<_>>()
            ),
        }
    }
    drop(asker);
    drop((a, b));
}

/// SCSI command `cdb` with `data` (immediate) as task `itt`: (status, sense key, ASC, ASCQ).
fn out_cmd(r: &mut Raw, itt: u32, cdb: &[u8], data: &[u8]) -> (u8, u8, u8, u8) {
    r.scsi(itt, cdb, data.len() as u32, 0xA0, data);
    let (h, d) = r.read_pdu().expect("a SCSI Response");
    assert_eq!(h[0] & 0x3F, 0x21, "SCSI Response, got opcode {:#x}", h[0]);
    if d.len() >= 16 {
        (h[3], d[4] & 0x0F, d[14], d[15])
    } else {
        (h[3], 0, 0, 0)
    }
}

/// Blocks `from..to` read through `r` (1 MiB at a time, the MAXIMUM TRANSFER LENGTH).
fn read_range(r: &mut Raw, itt: &mut u32, from: u32, to: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let n = (to - at).min(2048) as u16;
        *itt += 1;
        out.extend_from_slice(&crate::iscsi::read_blocks(r, *itt, at, n));
        at += u32::from(n);
    }
    out
}

/// ESXi's space reclamation and zeroing at the block limits the target advertises (VPD B0h),
/// sent through the follower site of a mirrored volume: UNMAP with 256 descriptors (the
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT; 257 are refused, INVALID FIELD IN PARAMETER LIST),
/// WRITE SAME(16) of 65535 blocks (the MAXIMUM WRITE SAME LENGTH; 65536 are refused, INVALID
/// FIELD IN CDB) with UNMAP and a zero block, and with a pattern. Both sites then read the
/// same blocks, and exactly the blocks named changed.
#[test]
fn unmap_and_write_same_at_their_limits_through_the_follower_leave_both_sites_equal() {
    use crate::harness::pattern;
    use crate::iscsi::write10;
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let mut ra = session(ia, "iqn.2026-12.test:esx-a");
    let mut rb = session(ib, "iqn.2026-12.test:esx-b");
    let mut itt = 10;
    // Blocks 0..2048 written through site a.
    let data = pattern(77, 2048 * 512);
    for (i, c) in data.chunks(64 * 512).enumerate() {
        itt += 1;
        assert_eq!(out_cmd(&mut ra, itt, &write10(64 * i as u32, 64), c).0, 0);
    }
    // UNMAP through site b: 256 descriptors, every other 4-block run of 0..2048.
    let list = |n: usize| {
        let mut l = vec![0u8; 8];
        l[0..2].copy_from_slice(&((6 + 16 * n) as u16).to_be_bytes());
        l[2..4].copy_from_slice(&((16 * n) as u16).to_be_bytes());
        for i in 0..n as u64 {
            l.extend_from_slice(&(8 * i % 2048).to_be_bytes());
            l.extend_from_slice(&4u32.to_be_bytes());
            l.extend_from_slice(&[0; 4]);
        }
        l
    };
    let unmap = |len: usize| {
        let mut c = [0u8; 10];
        c[0] = 0x42;
        c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
        c
    };
    let l257 = list(257);
    assert_eq!(
        out_cmd(&mut rb, 2, &unmap(l257.len()), &l257),
        (0x02, 0x05, 0x26, 0x00),
        "257 descriptors"
    );
    let l256 = list(256);
    assert_eq!(out_cmd(&mut rb, 3, &unmap(l256.len()), &l256).0, 0);
    // WRITE SAME(16) through site b: a pattern over 65536..131071, then UNMAP with zeroes over
    // it; a pattern over 2048..67583.
    let ws16 = |lba: u64, n: u32, flags: u8| {
        let mut c = [0u8; 16];
        c[0] = 0x93;
        c[1] = flags;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&n.to_be_bytes());
        c
    };
    let blk = pattern(78, 512);
    assert_eq!(
        out_cmd(&mut rb, 4, &ws16(2048, 65536, 0), &blk),
        (0x02, 0x05, 0x24, 0x00),
        "65536 blocks"
    );
    assert_eq!(out_cmd(&mut rb, 5, &ws16(65536, 65535, 0), &blk).0, 0);
    assert_eq!(
        out_cmd(&mut rb, 6, &ws16(65536, 65535, 0x08), &[0; 512]).0,
        0
    );
    assert_eq!(out_cmd(&mut rb, 7, &ws16(2048, 65535, 0), &blk).0, 0);
    // Both sites read the same, and what was asked.
    let total = 131072u32;
    let (da, db) = (
        read_range(&mut ra, &mut itt, 0, total),
        read_range(&mut rb, &mut itt, 0, total),
    );
    assert!(da == db, "both sites read the same blocks");
    for (i, c) in da.chunks(512).enumerate() {
        let want: &[u8] = match i {
            0..2048 if i % 8 < 4 => &[0; 512],
            0..2048 => &data[i * 512..(i + 1) * 512],
            2048..67583 => &blk,
            _ => &[0; 512],
        };
        assert!(c == want, "block {i}");
    }
    drop((ra, rb));
    drop((a, b));
}

/// A cluster node's registration commands through both sites while the volume's leadership
/// moves to site b and back (SET TARGET PORT GROUPS from another host): every PERSISTENT
/// RESERVE OUT is answered GOOD, or with an answer a multipath host retries (a unit attention,
/// or NOT READY: ALUA state transition); never HARDWARE ERROR for a command that was simply not
/// decided while the leadership moved. Both sites then report the same keys, the last each
/// node registered.
#[test]
fn registrations_during_switchovers_are_good_or_retryable() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let start = Gate::new(3);
    let nodes: Vec<_> = [(ia, 0x1000u64), (ib, 0x2000)]
        .into_iter()
        .enumerate()
        .map(|(i, (addr, base))| {
            let stop = std::sync::Arc::clone(&stop);
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                let mut r = session(addr, &format!("iqn.2026-12.test:node{i}"));
                r.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                start.wait();
                let (mut itt, mut key, mut bad) = (100u32, 0u64, Vec::new());
                let t = Instant::now();
                while !stop.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(30) {
                    itt += 1;
                    let next = base + u64::from(itt);
                    // REGISTER AND IGNORE EXISTING KEY: the new key, whatever the old.
                    let s = prout(&mut r, itt, 6, 0, 0, next);
                    if s.0 == 0 {
                        key = next;
                    } else if !retryable((s.0, s.1)) {
                        bad.push(s);
                    }
                }
                (r, key, bad)
            })
        })
        .collect();
    let mut asker = session(ib, "iqn.2026-12.test:asker");
    start.wait();
    let mut itt = 5000;
    let mut moves = 0;
    for target in [2u16, 1, 2, 1, 2, 1] {
        itt += 10;
        let s = until_final(&mut itt, |t| {
            match stpg(&mut asker, t, &list(&[(0x0, target)])) {
                (0, ..) => Ok(()),
                (st, k, ..) => Err((st, k)),
            }
        });
        moves += usize::from(s.is_ok());
    }
    stop.store(true, Ordering::Release);
    let mut done: Vec<_> = nodes.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(moves >= 3, "the leadership moved {moves} times");
    for (i, (_, _, bad)) in done.iter().enumerate() {
        assert!(bad.is_empty(), "node {i}: answers {bad:?}");
    }
    let mut want: Vec<u64> = done.iter().map(|d| d.1).collect();
    want.sort_unstable();
    let ka = keys(&mut done[0].0, 90_000);
    assert_eq!(ka.1, want, "site a's keys");
    assert_eq!(
        keys(&mut done[1].0, 90_000),
        ka,
        "site b reports site a's state"
    );
    drop(asker);
    drop((a, b));
}

/// The designators of VPD page 83h: (association, designator type, identifier) each.
fn designators(r: &mut Raw, itt: u32) -> Vec<(u8, u8, Vec<u8>)> {
    let (st, _, _, _, d) = status_of(r, itt, &[0x12, 0x01, 0x83, 0x10, 0x00, 0], 4096);
    assert_eq!((st, d[1]), (0, 0x83), "INQUIRY VPD 83h");
    let end = 4 + u16::from_be_bytes([d[2], d[3]]) as usize;
    assert_eq!(d.len(), end, "PAGE LENGTH");
    let mut out = Vec::new();
    let mut at = 4;
    while at < end {
        let len = d[at + 3] as usize;
        out.push((
            (d[at + 1] >> 4) & 3,
            d[at + 1] & 0x0F,
            d[at + 4..at + 4 + len].to_vec(),
        ));
        at += 4 + len;
    }
    assert_eq!(at, end);
    out
}

/// What ESXi and Windows MPIO merge paths by and group them by, at both sites of a mirrored
/// volume (SPC-4 §7.8.6, §6.37): the logical unit's designators (NAA, T10 vendor id) and the
/// target device name are the same at both sites; each site's target port has its own relative
/// target port identifier and target port group (designator types 4 and 5, association 01b),
/// and REPORT TARGET PORT GROUPS at that site lists that group first with that one port, and
/// the other site's group with the other site's port; the target port's SCSI name string
/// ends with the site's target portal group tag.
#[test]
fn both_sites_identify_one_logical_unit_and_a_port_and_group_of_their_own() {
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), "");
    let mut ra = session(ia, "iqn.2026-12.test:esx");
    let mut rb = session(ib, "iqn.2026-12.test:esx");
    let (da, db) = (designators(&mut ra, 10), designators(&mut rb, 10));
    let lu = |d: &[(u8, u8, Vec<u8>)]| -> Vec<(u8, u8, Vec<u8>)> {
        d.iter().filter(|x| x.0 != 1).cloned().collect()
    };
    assert_eq!(lu(&da), lu(&db), "one logical unit and target device");
    assert!(
        lu(&da).iter().any(|x| (x.0, x.1) == (0, 3)),
        "an NAA designator"
    );
    let port = |d: &[(u8, u8, Vec<u8>)], ty: u8| -> Vec<u8> {
        let v: Vec<_> = d.iter().filter(|x| (x.0, x.1) == (1, ty)).collect();
        assert_eq!(v.len(), 1, "one target port designator of type {ty}");
        v[0].2.clone()
    };
    let id = |v: Vec<u8>| {
        assert_eq!(v.len(), 4);
        u16::from_be_bytes([v[2], v[3]])
    };
    let (rel_a, tpg_a) = (id(port(&da, 4)), id(port(&da, 5)));
    let (rel_b, tpg_b) = (id(port(&db, 4)), id(port(&db, 5)));
    assert_ne!(rel_a, rel_b, "a relative target port per site");
    assert_ne!(tpg_a, tpg_b, "a target port group per site");
    for (d, tpg) in [(&da, tpg_a), (&db, tpg_b)] {
        let name = String::from_utf8(port(d, 8)).unwrap();
        assert!(
            name.trim_end_matches('\0')
                .ends_with(&format!(",t,0x{tpg:04x}")),
            "{name}"
        );
    }
    // RTPG: (group, its relative ports) per descriptor.
    let rtpg = |r: &mut Raw, itt: u32| -> Vec<(u16, Vec<u16>)> {
        let cdb = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let (st, _, _, _, d) = status_of(r, itt, &cdb, 256);
        assert_eq!(st, 0);
        let mut out = Vec::new();
        let mut at = 4;
        while at < d.len() {
            let n = d[at + 7] as usize;
            let ports = (0..n)
                .map(|i| u16::from_be_bytes([d[at + 8 + 4 * i + 2], d[at + 8 + 4 * i + 3]]))
                .collect();
            out.push((u16::from_be_bytes([d[at + 2], d[at + 3]]), ports));
            at += 8 + 4 * n;
        }
        out
    };
    assert_eq!(
        rtpg(&mut ra, 11),
        [(tpg_a, vec![rel_a]), (tpg_b, vec![rel_b])]
    );
    assert_eq!(
        rtpg(&mut rb, 11),
        [(tpg_b, vec![rel_b]), (tpg_a, vec![rel_a])]
    );
    drop((ra, rb));
    drop((a, b));
}

/// ATS heartbeats from hosts at both sites of a mirrored volume with a witness while one site
/// is killed (`kill_leader`: site a, the volume's leader, else site b, its follower): the other
/// site goes on as the survivor. Hosts at the killed site lose their connection (the outcome of
/// a COMPARE AND WRITE they had sent is unknown) and stop; the other hosts retry what is
/// answered with a unit attention or NOT READY. Every round: at most one GOOD, and the block
/// holds the GOOD one's data, or without one, the data it held or that of a host whose outcome
/// is unknown; never that of a host answered MISCOMPARE (or only retryable answers).
fn ats_heartbeats_with_a_site_killed(kill_leader: bool) {
    use crate::failover::{KEY, WitnessProc};
    use crate::harness::{free_port, pattern};
    use crate::nvmf_ana::{site_with, wait_claims, wait_states};
    use std::net::SocketAddr;
    const HOSTS: usize = 4;
    const ROUNDS: u64 = 120;
    const HB: u32 = 8;
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let (ia, ib) = (free_port(), free_port());
    let front = |port: u16| {
        format!(
            "[iscsi]\nlisten=['127.0.0.1:{port}']\n[[iscsi.target]]\niqn='{}'\nluns=['va']\n",
            crate::iscsi::IQN
        )
    };
    let mut a = site_with(root.path(), "a", "b", pa, pb, &w, &front(ia), "");
    let mut b = site_with(root.path(), "b", "a", pb, pa, &w, &front(ib), "");
    // Hosts at the killed site: odd indexes at site b, even ones at site a.
    let dies = move |i: usize| i.is_multiple_of(2) == kill_leader;
    for s in [&a, &b] {
        wait_states(s, &[("va", "up")]);
    }
    wait_claims(root.path());
    let (ia, ib) = (
        SocketAddr::from(([127, 0, 0, 1], ia)),
        SocketAddr::from(([127, 0, 0, 1], ib)),
    );
    let barrier = Gate::new(HOSTS);
    let start = Gate::new(HOSTS + 1);
    // (`pattern` ignores its seed's lowest bit: even seeds only.)
    let seed = |round: u64, host: usize| 1000 * round + 2 * host as u64 + 2;
    let threads: Vec<_> = (0..HOSTS)
        .map(|i| {
            let addr = if i % 2 == 0 { ia } else { ib };
            let (barrier, start) = (
                std::sync::Arc::clone(&barrier),
                std::sync::Arc::clone(&start),
            );
            std::thread::spawn(move || {
                let mut r = Some(session(addr, &format!("iqn.2026-12.test:esx{i}")));
                let mut itt = 1000;
                let mut out = Vec::new();
                start.wait();
                let mut cur = Vec::new();
                for round in 0..ROUNDS {
                    // (answers, unknown outcome, the block after the round)
                    let mut seen = Vec::new();
                    let mut unknown = false;
                    let mut step = |f: &mut dyn FnMut(&mut Raw, &mut u32)| {
                        if let Some(c) = r.as_mut() {
                            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                f(c, &mut itt)
                            }));
                            if ok.is_err() {
                                // The connection broke (site b killed): nothing more here.
                                assert!(dies(i), "host {i} lost its connection");
                                r = None;
                                return false;
                            }
                        }
                        r.is_some()
                    };
                    step(&mut |c, itt| {
                        cur = until_final(itt, |t| try_read(c, t, HB)).expect("read");
                    });
                    barrier.wait();
                    let mine = pattern(seed(round, i), 512);
                    let alive = step(&mut |c, itt| {
                        let _ = until_final(itt, |t| {
                            send_caw(c, t, u64::from(HB), &cur, &mine);
                            let s = responses(c, &[t])[0];
                            seen.push(s);
                            if s.0 == 0 { Ok(()) } else { Err(s) }
                        });
                    });
                    unknown |= !alive && !seen.iter().any(|s| s.0 == 0 || s.1 == 0x0E);
                    barrier.wait();
                    let mut after = None;
                    step(&mut |c, itt| {
                        after = Some(until_final(itt, |t| try_read(c, t, HB)).expect("read"));
                    });
                    barrier.wait();
                    out.push((seen, unknown, after));
                }
                out
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_millis(30));
    let (gone, stays) = if kill_leader {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    gone.kill();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    wait_states(stays, &[("va", "survivor")]);
    let (seer, dier) = if kill_leader { (1, 0) } else { (0, 1) };
    let mut prev = vec![0u8; 512];
    for round in 0..ROUNDS as usize {
        let after = results[seer][round]
            .2
            .clone()
            .expect("a host at the survivor reads");
        for (i, r) in results.iter().enumerate() {
            if let Some(x) = &r[round].2 {
                assert!(*x == after, "round {round}: host {i} reads another block");
            }
        }
        let good: Vec<usize> = (0..HOSTS)
            .filter(|&i| results[i][round].0.iter().any(|s| s.0 == 0))
            .collect();
        let holder = (0..HOSTS).find(|&i| after == pattern(seed(round as u64, i), 512));
        match (good.as_slice(), holder) {
            ([w], Some(h)) if *w == h => {}
            ([], None) => assert!(
                after == prev,
                "round {round}: the block changed to no host's data"
            ),
            ([], Some(h)) => {
                let (seen, unknown, _) = &results[h][round];
                assert!(
                    *unknown
                        || seen
                            .iter()
                            .any(|&s| s.0 != 0 && !retryable(s) && s.1 != 0x0E),
                    "round {round}: host {h}'s COMPARE AND WRITE was applied, answered {seen:?}"
                );
            }
            (g, h) => panic!(
                "round {round}: GOOD for {g:?}, the block holds host {h:?}'s data; answers {:?}",
                results.iter().map(|r| &r[round].0).collect::<Vec<_>>()
            ),
        }
        prev = after;
    }
    let died = results[dier].iter().position(|r| r.2.is_none());
    eprintln!("the killed site's hosts stopped in round {died:?}");
    assert!(died.is_some(), "the site was killed while the rounds ran");
    drop((a, b, w));
}

#[test]
fn ats_heartbeats_keep_one_winner_per_round_when_the_follower_is_killed() {
    ats_heartbeats_with_a_site_killed(false);
}

/// As above with the leader killed: hosts at site b had COMPARE AND WRITEs forwarded to site a
/// undecided or decided when it died (docs/mirror-protocol.md, "Compare and write").
#[test]
fn ats_heartbeats_keep_one_winner_per_round_when_the_leader_is_killed() {
    ats_heartbeats_with_a_site_killed(true);
}
