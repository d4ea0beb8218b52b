//! Planned switchover (`mirror_switchover`, docs/mirror-protocol.md "Leadership and planned
//! switchover") between two `twinblk serve` processes and an in-process witness, on loopback:
//! writes from both sites continue across it with no error and read back at both sites; it
//! goes back and forth; a restart keeps the new leader; the link cut in the middle ends with
//! exactly one leader and no stall; bad requests are refused with a clear error.

use crate::failover::{KEY, WitnessProc, persistent_pair, site_with};
use crate::harness::{
    Progress, Server, counts, free_port, pattern, wait_mirror_state, wait_progress,
};
use crate::rawnbd::Client;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Every write in order: (offset, seed, acknowledged); and how many failed.
type Log = (Vec<(u64, u64, bool)>, usize);

/// A QD1 writer over its own 2 MiB region at `base` until `stop`, counting each write
/// answered in `done`.
fn writer(
    addr: SocketAddr,
    base: u64,
    stop: Arc<AtomicBool>,
    done: Progress,
) -> std::thread::JoinHandle<Log> {
    std::thread::spawn(move || {
        let mut c = Client::connect(addr, "vol0", false);
        let (mut acked, mut failed) = (Vec::new(), 0);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let off = base + (i % 512) * 4096;
            let seed = base + i + 1;
            let ok = c.write(off, &pattern(seed, 4096)) == 0;
            acked.push((off, seed, ok));
            failed += usize::from(!ok);
            done.tick();
            i += 1;
        }
        (acked, failed)
    })
}

/// Every block's last write, when it was acknowledged, reads back at `s` (writers own
/// disjoint regions and write QD1; a block whose last write failed may hold either).
fn check_reads(s: &Server, logs: &[&Log]) {
    let mut last: HashMap<u64, (u64, bool)> = HashMap::new();
    for (writes, _) in logs {
        for &(off, seed, ok) in writes {
            last.insert(off, (seed, ok));
        }
    }
    let mut c = Client::connect(s.addr, "vol0", false);
    for (&off, &(seed, ok)) in &last {
        if !ok {
            continue;
        }
        let got = c.read(off, 4096).expect("read");
        assert!(
            got == pattern(seed, 4096),
            "the acknowledged write at {off} is not read back at {}",
            s.config.display()
        );
    }
}

/// (leads, term) of vol0 at `s`.
fn leadership(s: &Server) -> (bool, u64) {
    let m = &s.rpc("mirror_status")[0];
    (
        m["role"].as_str() == Some("leader"),
        m["leader_term"].as_u64().expect("leader_term"),
    )
}

fn switch(at: &Server, to: &str, wait_s: f64) -> Value {
    at.rpc_with(
        "mirror_switchover",
        json!({"volume": "vol0", "to": to, "wait_s": wait_s}),
    )
}

/// Both sites up, and exactly one leads, at the same term; returns (a leads, term).
fn one_leader(a: &Server, b: &Server) -> (bool, u64) {
    wait_mirror_state(a, "up", Duration::from_secs(20));
    wait_mirror_state(b, "up", Duration::from_secs(20));
    let t = Instant::now();
    loop {
        let (la, ta) = leadership(a);
        let (lb, tb) = leadership(b);
        if la != lb && ta == tb {
            return (la, ta);
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no single leader: a leads {la} at term {ta}, b leads {lb} at term {tb}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pair(root: &Path) -> (WitnessProc, Server, Server) {
    let w = WitnessProc::start(root, KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = persistent_pair(root, pa, pb, w.addr);
    wait_mirror_state(&a, "up", Duration::from_secs(10));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    (w, a, b)
}

/// Writes each writer does before the first switchover and after each one.
const WRITES_BETWEEN: usize = 12;

/// (1) and (2): a writer at each site keeps writing while the leadership goes a → b → a →
/// b → a, asked alternately at the leader and at the follower: no write fails, the path
/// states follow, and every acknowledged write reads back at both sites.
#[test]
fn writes_from_both_sites_continue_across_switchovers_back_and_forth() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, b) = pair(root.path());
    assert_eq!(leadership(&a), (true, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let done = [Progress::default(), Progress::default()];
    let wa = writer(a.addr, 0, Arc::clone(&stop), done[0].clone());
    let wb = writer(b.addr, 4 << 20, Arc::clone(&stop), done[1].clone());
    // Both writers write before each switchover and after the last (counted, not timed: a
    // loaded machine makes them slow).
    wait_progress(
        &done,
        &[0, 0],
        WRITES_BETWEEN,
        "before the first switchover",
    );
    for (i, (to, at)) in [("b", &a), ("a", &a), ("b", &b), ("a", &b)]
        .into_iter()
        .enumerate()
    {
        let r = switch(at, to, 10.0);
        assert!(r["error"].is_null(), "switchover {i} to {to}: {r}");
        assert_eq!(r["result"]["volumes"][0]["changed"], true, "{r}");
        let (la, term) = one_leader(&a, &b);
        assert_eq!(
            (la, term),
            (to == "a", i as u64 + 1),
            "after switchover {i}"
        );
        let sa = &a.rpc("mirror_status")[0];
        let want = if to == "a" {
            "optimized"
        } else {
            "non_optimized"
        };
        assert_eq!(sa["path_state"], want, "{sa}");
        assert!(sa["leader_since_unix_ms"].as_u64().is_some(), "{sa}");
        wait_progress(&done, &counts(&done), WRITES_BETWEEN, "after a switchover");
    }
    stop.store(true, Ordering::SeqCst);
    let (la, lb) = (wa.join().unwrap(), wb.join().unwrap());
    assert_eq!((la.1, lb.1), (0, 0), "writes failed across the switchovers");
    assert!(
        la.0.len() > 50 && lb.0.len() > 50,
        "too few writes: {} {}",
        la.0.len(),
        lb.0.len()
    );
    check_reads(&a, &[&la, &lb]);
    check_reads(&b, &[&la, &lb]);
}

/// (4): the new leader survives a restart of both sites (persisted with the replica state).
#[test]
fn a_restart_after_a_switchover_keeps_the_new_leader() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, b) = pair(root.path());
    let r = switch(&a, "b", 10.0);
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(one_leader(&a, &b), (false, 1));
    let (a, b) = (a.restart(), b.restart());
    assert_eq!(
        one_leader(&a, &b),
        (false, 1),
        "the leader moved back at restart"
    );
    let m = &b.rpc("mirror_status")[0];
    assert!(
        m["leader_reason"]
            .as_str()
            .unwrap_or("")
            .contains("restored"),
        "{m}"
    );
    // Writes at both sites work with the restored leader.
    let mut ca = Client::connect(a.addr, "vol0", false);
    assert_eq!(ca.write(0, &pattern(7, 4096)), 0);
    let mut cb = Client::connect(b.addr, "vol0", false);
    assert_eq!(cb.read(0, 4096).unwrap(), pattern(7, 4096));
    // Only b restarted: its term is on disk, a follows.
    let b = b.restart();
    assert_eq!(one_leader(&a, &b), (false, 1));
}

/// (5): unknown volume or site, a bad group, and a pair that is not in sync are refused with
/// the reason; nothing changes.
#[test]
fn a_switchover_is_refused_for_unknown_names_and_out_of_sync() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, mut b) = pair(root.path());
    let e = a.rpc_with("mirror_switchover", json!({"volume": "nope", "to": "b"}));
    assert_eq!(e["error"]["code"], -32602, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("nope"),
        "{e}"
    );
    let e = switch(&a, "c", 1.0);
    assert_eq!(e["error"]["code"], -32602, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no site named \"c\""),
        "{e}"
    );
    let e = a.rpc_with("mirror_switchover", json!({"group": "g9", "to": "b"}));
    assert_eq!(e["error"]["code"], -32602, "{e}");
    // To the site that leads already: nothing to do.
    let r = switch(&a, "a", 1.0);
    assert_eq!(r["result"]["volumes"][0]["changed"], false, "{r}");
    // The follower gone: a serves alone, which is not in sync.
    b.kill();
    wait_mirror_state(&a, "survivor", Duration::from_secs(10));
    let e = switch(&a, "b", 1.0);
    assert_eq!(e["error"]["code"], -32010, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not up and in sync"),
        "{e}"
    );
    assert_eq!(leadership(&a), (true, 0));
}

/// (3): the link is cut while a switchover runs (before the request, so SWITCH itself is held
/// in the cut link; and at several moments after it): both sites hold or fail over as for any
/// cut, and once the link is back they agree on exactly one leader at one term, stay in
/// sync, and every acknowledged write reads back at both sites.
#[test]
fn a_link_cut_during_a_switchover_ends_with_exactly_one_leader() {
    use twinblk_tools::twinlink::{Dir, LinkSpec, Proxy, Shape, ShapePatch};
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb, pp) = (free_port(), free_port(), free_port());
    // b dials a through the proxy.
    let proxy = Proxy::start(
        &[(
            LinkSpec {
                name: "ab".into(),
                listen: format!("127.0.0.1:{pp}").parse().unwrap(),
                target: format!("127.0.0.1:{pa}").parse().unwrap(),
                udp: false,
            },
            [Shape::default(), Shape::default()],
        )],
        twinblk_tools::twinlink::DEFAULT_MAX_QUEUE,
    )
    .expect("proxy");
    let state = |me: &str| {
        let d = root.path().join(format!("state-{me}"));
        std::fs::create_dir_all(&d).unwrap();
        format!("state_dir='{}'", d.display())
    };
    let a = site_with(root.path(), "a", "b", pa, pb, w.addr, &state("a"));
    let b = site_with(root.path(), "b", "a", pb, pp, w.addr, &state("b"));
    let cut = |on: bool, dir: Dir| {
        proxy
            .set(
                Some("ab"),
                dir,
                &ShapePatch {
                    cut: Some(on),
                    ..Default::default()
                },
            )
            .unwrap()
    };
    one_leader(&a, &b);
    // SWITCH itself lost: the link a → b cut while nothing is outstanding, so a drains at
    // once, hands over into the cut link and follows term 1; b never hears it. After the
    // heal the session's agreement makes b the leader of term 1.
    cut(true, Dir::Rev);
    let r = switch(&a, "b", 1.0);
    assert!(
        r["error"].is_null(),
        "a hands over even if SWITCH is lost: {r}"
    );
    assert_eq!(leadership(&a), (false, 1));
    assert_eq!(leadership(&b), (false, 0), "b heard nothing yet");
    std::thread::sleep(Duration::from_millis(800));
    cut(false, Dir::Rev);
    assert_eq!(
        one_leader(&a, &b),
        (false, 1),
        "b did not take term 1 at the next session"
    );
    // b took the lead at that session's start, with no switchover of its own to acknowledge:
    // no SWITCH_ACK refused by a ("SWITCH_ACK for no switchover"), no reconnection for it
    // (before, a dropped the link at it and the sites met once more).
    let status = |s: &Server| s.rpc("mirror_status")[0].clone();
    std::thread::sleep(Duration::from_millis(300));
    let (sa, sb) = (status(&a), status(&b));
    assert_eq!(
        (sa["rejected"].as_u64(), sb["rejected"].as_u64()),
        (Some(0), Some(0)),
        "a message refused after the lead taken at a session start: {sa} {sb}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (sa2, sb2) = (status(&a), status(&b));
    assert_eq!(
        (
            sa2["session"].as_u64(),
            sb2["session"].as_u64(),
            sa2["rejected"].as_u64()
        ),
        (sa["session"].as_u64(), sb["session"].as_u64(), Some(0)),
        "the sites met again: {sa2} {sb2}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let wa = writer(a.addr, 0, Arc::clone(&stop), Progress::default());
    let wb = writer(b.addr, 4 << 20, Arc::clone(&stop), Progress::default());
    // (cut before the request in direction a → b only, delay after the request)
    let cases = [
        (Some(Dir::Rev), 0u64),
        (Some(Dir::Fwd), 0),
        (None, 0),
        (None, 1),
        (None, 3),
        (None, 10),
    ];
    for (i, (before, delay)) in cases.into_iter().enumerate() {
        let (leads_a, term) = one_leader(&a, &b);
        let to = if leads_a { "b" } else { "a" };
        let at = if i % 2 == 0 { &a } else { &b };
        if let Some(d) = before {
            cut(true, d);
        }
        let r = std::thread::scope(|s| {
            let h = s.spawn(|| switch(at, to, 3.0));
            std::thread::sleep(Duration::from_millis(delay));
            cut(true, Dir::Both);
            std::thread::sleep(Duration::from_millis(1200));
            cut(false, Dir::Both);
            h.join().unwrap()
        });
        let (la, t2) = one_leader(&a, &b);
        eprintln!(
            "case {i}: before {before:?} delay {delay} ms: {} -> a leads {la} at term {t2}",
            if r["error"].is_null() {
                "done".to_string()
            } else {
                r["error"]["message"].to_string()
            }
        );
        assert!(t2 == term || t2 == term + 1, "term {term} -> {t2}");
        assert_eq!(
            la,
            (t2 == term) == leads_a,
            "the term and the leader disagree"
        );
        if r["error"].is_null() {
            assert_eq!(
                la,
                to == "a",
                "a switchover answered done did not move: {r}"
            );
        }
        // No stall: both sites take writes again.
        for s in [&a, &b] {
            let mut c = Client::connect(s.addr, "vol0", false);
            assert_eq!(
                c.write(12 << 20, &pattern(99, 4096)),
                0,
                "no write after the heal"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (la, lb) = (wa.join().unwrap(), wb.join().unwrap());
    wait_mirror_state(&a, "up", Duration::from_secs(20));
    wait_mirror_state(&b, "up", Duration::from_secs(20));
    check_reads(&a, &[&la, &lb]);
    check_reads(&b, &[&la, &lb]);
    proxy.stop();
}

/// Both sites asked at the same moment (two operators, one at each site): to the same site,
/// and then crossing (each asks for the other). Whatever the interleaving, exactly one site
/// leads afterwards, at one term, and each answer says what happened: a success names the
/// leader that now leads (and `changed` only if the term moved), an error leaves the
/// leadership as `mirror_status` shows it.
#[test]
fn switchovers_asked_at_both_sites_at_once_end_with_one_leader_and_true_answers() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, b) = pair(root.path());
    assert_eq!(leadership(&a), (true, 0));
    for (round, (to_a, to_b)) in [("b", "b"), ("a", "a"), ("b", "a"), ("a", "b")]
        .into_iter()
        .enumerate()
    {
        let before = one_leader(&a, &b);
        let (ra, rb) = std::thread::scope(|s| {
            let ra = s.spawn(|| switch(&a, to_a, 10.0));
            let rb = s.spawn(|| switch(&b, to_b, 10.0));
            (ra.join().unwrap(), rb.join().unwrap())
        });
        let (la, term) = one_leader(&a, &b);
        let now = if la { "a" } else { "b" };
        eprintln!(
            "round {round}: before {before:?}, a→{to_a}: {ra}\n  b→{to_b}: {rb}\n  now {now} at term {term}"
        );
        for (r, to) in [(&ra, to_a), (&rb, to_b)] {
            if r["error"].is_null() {
                let v = &r["result"]["volumes"][0];
                if v["changed"] == true {
                    // It moved the leadership to `to`; a later move may have followed.
                    assert_eq!(v["leader"], to, "round {round}: {r}");
                    assert!(v["term"].as_u64().unwrap() > before.1, "round {round}: {r}");
                } else {
                    assert_eq!(v["leader"], to, "round {round}: {r}");
                }
            }
        }
        assert!(
            term <= before.1 + 2,
            "round {round}: term {term} after {before:?}"
        );
        if to_a == to_b {
            assert_eq!(now, to_a, "round {round}: both asked for {to_a}: {ra} {rb}");
        }
    }
}
