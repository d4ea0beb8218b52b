//! Where hosts are (uniform access, as in a vSphere Metro Storage Cluster): with a host list
//! (`[[host]]`) placing H1 at site a and H2 at site b, each site tells H1 that a's ports are
//! optimised and b's non-optimised, and H2 the reverse, whichever site leads; an unlisted
//! host H3 is told today's rule (the leader's ports optimised). iSCSI reports it per I_T
//! nexus (REPORT TARGET PORT GROUPS, unit attentions), NVMe per controller (ANA log page,
//! ANA change events). A fenced site's inaccessible states are the same for every host.

use crate::failover::{KEY, WitnessProc};
use crate::harness::{Server, free_port};
use crate::iscsi::{Raw, status_of, two_sites};
use crate::iscsi_alua::{ALUA_CHANGED, Group, Status, TUR, groups, list, session, stpg};
use crate::nvmf_ana::{NQN, Proxy, ana_log, site_with, wait_states};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use twinblk_tools::nvmf::{Completion, Controller, Host, Opts, Sqe};

/// iSCSI initiators: H1 at site a, H2 at site b, H3 not listed.
const H1: &str = "iqn.2026-12.test:h1";
const H2: &str = "iqn.2026-12.test:h2";
const H3: &str = "iqn.2026-12.test:h3";
/// NVMe hosts: N1 at site a, N2 at site b, N3 not listed.
const N1: &str = "nqn.2026-12.test:h1";
const N2: &str = "nqn.2026-12.test:h2";
const N3: &str = "nqn.2026-12.test:h3";

const INVALID_FIELD: Status = (0x02, 0x05, 0x26, 0x00);
const GOOD: Status = (0, 0, 0, 0);

/// The host list, the same at both sites.
fn host_list() -> String {
    [(H1, "a"), (H2, "b"), (N1, "a"), (N2, "b")]
        .iter()
        .map(|(n, s)| format!("[[host]]\nname='{n}'\nsite='{s}'\n"))
        .collect()
}

/// Until RTPG through `r` reports `want` (unit attentions on the way are taken).
fn rtpg_is(r: &mut Raw, want: &[Group], itt: &mut u32, what: &str) {
    let t = Instant::now();
    loop {
        *itt += 1;
        let g = groups(r, *itt);
        if g.as_deref() == Ok(want) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: RTPG {g:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TEST UNIT READY until it answers something else than a unit attention: that answer.
fn past_unit_attentions(r: &mut Raw, itt: &mut u32) -> Status {
    for _ in 0..4 {
        *itt += 1;
        let (st, k, a, q, _) = status_of(r, *itt, &TUR, 0);
        if k != 0x06 {
            return (st, k, a, q);
        }
    }
    panic!("unit attentions without end");
}

/// A controller of `nqn` (subsystem `sub`) connected as host `host`.
fn nvme(addr: SocketAddr, sub: &str, host: &str, id: u8) -> Controller {
    let opts = Opts {
        host: Host {
            nqn: host.into(),
            id: [id; 16],
        },
        ..Opts::default()
    };
    Controller::connect(addr, sub, &opts).unwrap()
}

/// Until the controller's ANA log page shows `want` (one state per group, groups 1, 2, ...
/// each with the nsid of the same number).
fn ana_is(c: &mut Controller, want: &[u8], what: &str) {
    let t = Instant::now();
    loop {
        let (_, g) = ana_log(c);
        let expect: Vec<(u32, u8, Vec<u32>)> = want
            .iter()
            .enumerate()
            .map(|(i, &s)| (i as u32 + 1, s, vec![i as u32 + 1]))
            .collect();
        if g == expect {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: ANA log {g:?}, want states {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Enable ANA change notices on `c` and hold an Async Event Request: its command id.
fn hold_aer(c: &mut Controller) -> u16 {
    let aen = Sqe::new(0x09).cdw(10, 0x0B).cdw(11, 1 << 11);
    assert_eq!(c.admin.cmd(aen, &[], 0).unwrap().status, 0);
    c.admin.submit(Sqe::new(0x0C), &[], 0).unwrap()
}

/// Send a Keep Alive and collect the admin completions up to its own: whether the held
/// Async Event Request `aer` completed (an ANA change notice) by then.
fn aer_completed(c: &mut Controller, aer: u16) -> bool {
    let ka = c.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    let mut seen: Vec<Completion> = Vec::new();
    while !seen.iter().any(|x| x.cid == ka) {
        seen.push(c.admin.complete().unwrap());
    }
    match seen.iter().find(|x| x.cid == aer) {
        Some(ev) => {
            assert_eq!(
                ev.result & 0xFF_FFFF,
                0x0C_03_02,
                "notice, ANA change, log 0Ch"
            );
            true
        }
        None => false,
    }
}

/// Site a leads `vol0` (no witness). At site b, H2 sees b's group optimised and a's
/// non-optimised, H1 the reverse and H3 the leader's; at site a likewise. A switchover to b
/// asked by H3 changes what H3 sees only: H1 and H2 get no unit attention and no ANA change
/// event, and a SET TARGET PORT GROUPS from a listed host that would change what it sees is
/// refused.
#[test]
fn listed_hosts_see_their_own_sites_ports_optimised_whichever_site_leads() {
    let root = tempfile::tempdir().unwrap();
    let (a, ia, b, ib) = two_sites(root.path(), &host_list());
    // Site a leads: what each host sees, at b (group 2 first) and at a (group 1 first).
    let b_h1: [Group; 2] = [(2, false, 0x1), (1, true, 0x0)];
    let b_h2: [Group; 2] = [(2, true, 0x0), (1, false, 0x1)];
    let a_h1: [Group; 2] = [(1, true, 0x0), (2, false, 0x1)];
    let a_h2: [Group; 2] = [(1, false, 0x1), (2, true, 0x0)];
    let mut at_b: Vec<Raw> = [H1, H2, H3].iter().map(|h| session(ib, h)).collect();
    let mut at_a: Vec<Raw> = [H1, H2, H3].iter().map(|h| session(ia, h)).collect();
    let mut itt = 100;
    for (r, (want, what)) in at_b.iter_mut().zip([
        (b_h1, "H1 at b"),
        (b_h2, "H2 at b"),
        (b_h1, "H3 (unlisted) at b: the leader's rule"),
    ]) {
        rtpg_is(r, &want, &mut itt, what);
    }
    for (r, (want, what)) in at_a.iter_mut().zip([
        (a_h1, "H1 at a"),
        (a_h2, "H2 at a"),
        (a_h1, "H3 (unlisted) at a: the leader's rule"),
    ]) {
        rtpg_is(r, &want, &mut itt, what);
    }
    for r in at_b.iter_mut().chain(at_a.iter_mut()) {
        assert_eq!(past_unit_attentions(r, &mut itt), GOOD);
    }

    // A listed host's optimised group is its site's: asking for the other one is refused,
    // asking for what it sees is GOOD; neither moves the leadership.
    assert_eq!(stpg(&mut at_b[0], 300, &list(&[(0x0, 2)])), INVALID_FIELD);
    assert_eq!(stpg(&mut at_b[0], 301, &list(&[(0x0, 1)])), GOOD);
    assert_eq!(stpg(&mut at_b[1], 302, &list(&[(0x1, 2)])), INVALID_FIELD);
    assert_eq!(stpg(&mut at_b[1], 303, &list(&[(0x0, 2), (0x1, 1)])), GOOD);
    assert_eq!(crate::mirror::status(&a)["leader_term"], 0);
    assert_eq!(crate::mirror::status(&b)["role"], "follower");

    // NVMe at b, per controller: N2 (at b) sees b's group optimised, N3 the leader's rule.
    let sub = "nqn.2026-11.io.twinblk:vol0";
    let mut n2 = nvme(b.nvmf_addr, sub, N2, 2);
    let mut n3 = nvme(b.nvmf_addr, sub, N3, 3);
    let mut n1 = nvme(b.nvmf_addr, sub, N1, 1);
    ana_is(&mut n2, &[0x01], "N2 at b");
    ana_is(&mut n3, &[0x02], "N3 at b");
    ana_is(&mut n1, &[0x02], "N1 at b");
    let (aer2, aer3) = (hold_aer(&mut n2), hold_aer(&mut n3));
    // The control socket's host list says where each connected host is (null: not listed).
    let list_b = b.rpc("host_list");
    for (host, site) in [
        (H1, Some("a")),
        (H2, Some("b")),
        (H3, None),
        (N1, Some("a")),
        (N2, Some("b")),
        (N3, None),
    ] {
        let recs: Vec<&serde_json::Value> = list_b
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["host"] == host)
            .collect();
        assert!(!recs.is_empty(), "{host} in {list_b}");
        for r in recs {
            assert_eq!(r["site"].as_str(), site, "{r}");
        }
    }

    // The unlisted H3 moves the leadership to b (SET TARGET PORT GROUPS, a switchover).
    assert_eq!(stpg(&mut at_b[2], 500, &list(&[(0x0, 2)])), GOOD);
    assert_eq!(crate::mirror::status(&b)["role"], "leader");
    // What H1 and H2 see did not change: no unit attention, the same groups.
    for (i, want) in [(0, b_h1), (1, b_h2)] {
        assert_eq!(
            status_of(&mut at_b[i], 501, &TUR, 0).0,
            0,
            "no unit attention for {}",
            [H1, H2][i]
        );
        assert_eq!(groups(&mut at_b[i], 502).as_deref(), Ok(&want[..]));
    }
    // H3 asked: no unit attention, and it sees b's group optimised now.
    assert_eq!(status_of(&mut at_b[2], 503, &TUR, 0).0, 0);
    assert_eq!(
        groups(&mut at_b[2], 504).as_deref(),
        Ok(&[(2, true, 0x0), (1, false, 0x1)][..])
    );
    // Site a agrees (its view of b follows the session); H3 there is told of the change.
    let mut itt = 600;
    let t = Instant::now();
    loop {
        itt += 1;
        let (st, k, asc, q, _) = status_of(&mut at_a[2], itt, &TUR, 0);
        if (st, k, asc, q) == ALUA_CHANGED {
            break;
        }
        assert_eq!(st, 0, "H3 at a: TEST UNIT READY");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no unit attention for H3 at a"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rtpg_is(&mut at_a[0], &a_h1, &mut itt, "H1 at a, b leads");
    rtpg_is(&mut at_a[1], &a_h2, &mut itt, "H2 at a, b leads");
    rtpg_is(
        &mut at_a[2],
        &[(1, false, 0x1), (2, true, 0x0)],
        &mut itt,
        "H3 at a, b leads",
    );
    // NVMe: N3's state changed (an ANA change event), N2's did not (none).
    ana_is(&mut n1, &[0x02], "N1 at b, b leads");
    let t = Instant::now();
    let mut n3_told = false;
    while !n3_told {
        n3_told = aer_completed(&mut n3, aer3);
        assert!(t.elapsed() < Duration::from_secs(10), "no ANA event for N3");
    }
    ana_is(&mut n3, &[0x01], "N3 at b, b leads");
    assert!(!aer_completed(&mut n2, aer2), "an ANA event for N2");
    ana_is(&mut n2, &[0x01], "N2 at b, b leads");
    assert!(!aer_completed(&mut n2, aer2), "an ANA event for N2");
    drop((at_a, at_b, n1, n2, n3, a, b));
}

/// Two volumes, `va` led by a and `vb` by b, over NVMe/TCP and iSCSI (LUN 0 is `va`), with
/// a witness; the link is then cut, each site keeps the volume it leads and fences the other.
/// Before: each listed host sees its own site optimised in both groups, the unlisted one each
/// volume's leader. After: the fenced volume is inaccessible for every host at its fenced
/// site (the same states for all), and the surviving one optimised for every host: a host
/// whose own site's group is inaccessible is told the survivor is its best path; I/O to the
/// fenced namespace answers ANA Inaccessible.
#[test]
fn after_a_failover_the_inaccessible_states_are_the_same_for_every_host() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start_with_grace(root.path(), KEY, None, crate::harness::PATIENCE);
    let (pa, pb) = (free_port(), free_port());
    let (to_a, to_b) = (Proxy::new(pa), Proxy::new(pb));
    let (ia, ib) = (free_port(), free_port());
    let front = |port: u16| {
        format!(
            "[iscsi]\nlisten=['127.0.0.1:{port}']\n[[iscsi.target]]\n\
             iqn='{}'\nluns=['va','vb']\n",
            crate::iscsi::IQN
        )
    };
    let hosts = host_list();
    let a: Server = site_with(root.path(), "a", "b", pa, to_b.port, &w, &front(ia), &hosts);
    let b: Server = site_with(root.path(), "b", "a", pb, to_a.port, &w, &front(ib), &hosts);
    for s in [&a, &b] {
        wait_states(s, &[("va", "up"), ("vb", "up")]);
    }
    crate::nvmf_ana::wait_claims(root.path());
    let (ia, ib) = (
        SocketAddr::from(([127, 0, 0, 1], ia)),
        SocketAddr::from(([127, 0, 0, 1], ib)),
    );
    let ids = [(N1, 1u8), (N2, 2), (N3, 3)];
    let mut nb: Vec<Controller> = ids
        .iter()
        .map(|&(h, id)| nvme(b.nvmf_addr, NQN, h, id))
        .collect();
    let mut na: Vec<Controller> = ids
        .iter()
        .map(|&(h, id)| nvme(a.nvmf_addr, NQN, h, id + 10))
        .collect();
    // Mirroring (groups: 1 = va led by a, 2 = vb led by b).
    for (c, (want, what)) in nb.iter_mut().chain(na.iter_mut()).zip([
        ([0x02, 0x02], "N1 at b"),
        ([0x01, 0x01], "N2 at b"),
        ([0x02, 0x01], "N3 at b"),
        ([0x01, 0x01], "N1 at a"),
        ([0x02, 0x02], "N2 at a"),
        ([0x01, 0x02], "N3 at a"),
    ]) {
        ana_is(c, &want, what);
    }
    let mut sb: Vec<Raw> = [H1, H2, H3].iter().map(|h| session(ib, h)).collect();
    let mut sa: Vec<Raw> = [H1, H2, H3].iter().map(|h| session(ia, h)).collect();
    let mut itt = 100;
    let b_h1: [Group; 2] = [(2, false, 0x1), (1, true, 0x0)];
    let a_h1: [Group; 2] = [(1, true, 0x0), (2, false, 0x1)];
    for (r, (want, what)) in sb.iter_mut().chain(sa.iter_mut()).zip([
        (b_h1, "H1 at b"),
        ([(2, true, 0x0), (1, false, 0x1)], "H2 at b"),
        (b_h1, "H3 at b"),
        (a_h1, "H1 at a"),
        ([(1, false, 0x1), (2, true, 0x0)], "H2 at a"),
        (a_h1, "H3 at a"),
    ]) {
        rtpg_is(r, &want, &mut itt, what);
    }
    let aer = hold_aer(&mut nb[1]);

    to_a.cut();
    to_b.cut();
    wait_states(&a, &[("va", "survivor"), ("vb", "fenced")]);
    wait_states(&b, &[("va", "fenced"), ("vb", "survivor")]);
    // N2 sees va go from optimised to inaccessible: an ANA change event (taken first: the
    // log page reads below would meet its completion).
    let t = Instant::now();
    while !aer_completed(&mut nb[1], aer) {
        assert!(t.elapsed() < Duration::from_secs(10), "no ANA event for N2");
    }
    // NVMe: the fenced group inaccessible for every host; the survivor's optimised for every
    // host (N1 at b and N2 at a: their own site's group of that volume is fenced).
    for (c, (want, what)) in nb.iter_mut().chain(na.iter_mut()).zip([
        ([0x03, 0x01], "N1 at b, cut"),
        ([0x03, 0x01], "N2 at b, cut"),
        ([0x03, 0x01], "N3 at b, cut"),
        ([0x01, 0x03], "N1 at a, cut"),
        ([0x01, 0x03], "N2 at a, cut"),
        ([0x01, 0x03], "N3 at a, cut"),
    ]) {
        ana_is(c, &want, what);
    }
    // iSCSI, va (LUN 0): fenced at b, the same for all (this group unavailable, a's not
    // known: transitioning); at a, the survivor's group optimised for every host (H2's own
    // site's group is unavailable), b's unavailable.
    let fenced: [Group; 2] = [(2, false, 0x3), (1, false, 0xF)];
    for (i, r) in sb.iter_mut().enumerate() {
        rtpg_is(
            r,
            &fenced,
            &mut itt,
            &format!("{} at b, cut", [H1, H2, H3][i]),
        );
    }
    for (r, (want, what)) in sa.iter_mut().zip([
        ([(1, true, 0x0), (2, false, 0x3)], "H1 at a, cut"),
        ([(1, true, 0x0), (2, false, 0x3)], "H2 at a, cut"),
        ([(1, true, 0x0), (2, false, 0x3)], "H3 at a, cut"),
    ]) {
        rtpg_is(r, &want, &mut itt, what);
    }
    // I/O on the fenced volume: NVMe ANA Inaccessible, iSCSI NOT READY (ALUA unavailable),
    // for listed and unlisted hosts alike; the survivor serves every host.
    for c in nb.iter_mut() {
        let mut q = c.io_queue(1, 8).unwrap();
        let r = q.cmd(Sqe::new(0x02).nsid(1).lba(0, 1), &[], 512).unwrap();
        assert_eq!(r.status, 0x302, "read of va at b");
        let r = q.cmd(Sqe::new(0x02).nsid(2).lba(0, 1), &[], 512).unwrap();
        assert_eq!(r.status, 0, "read of vb at b");
    }
    for r in sb.iter_mut() {
        assert_eq!(past_unit_attentions(r, &mut itt), (0x02, 0x02, 0x04, 0x0C));
    }
    for r in sa.iter_mut() {
        assert_eq!(past_unit_attentions(r, &mut itt), GOOD);
    }
    drop((sa, sb, na, nb, a, b, w));
}
