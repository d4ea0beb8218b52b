//! Host reads at a site without its read lease for a moment (datapath/src/layer/mirror/held.rs,
//! docs/mirror-protocol.md "Read lease"): held until the lease is back and then served, or
//! refused once the site serves nothing; never served from a replica the lease does not
//! vouch for. (The single-reactor, file-backed case is
//! `failover::a_peer_late_by_less_than_the_heartbeat_timeout_costs_no_read`.)

use crate::failover::{KEY, WitnessProc, witness_site_body};
use crate::harness::{PATIENCE, Server, free_port, pattern, wait_mirror_state};
use crate::rawnbd::Client;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A witnessed pair whose sites run two reactors each and keep `vol0` in memory (a RAM
/// replica answers a read at once: the held read's data is delivered by the poller), each
/// with a state directory.
fn ram_pair_on_two_reactors(root: &Path) -> (WitnessProc, Server, Server) {
    let w = WitnessProc::start(root, KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let site = |me: &str, peer: &str, listen: u16, to: u16| {
        let state = root.join(format!("state-{me}"));
        std::fs::create_dir_all(&state).unwrap();
        let body = witness_site_body(
            root,
            me,
            peer,
            listen,
            to,
            w.addr,
            &format!("state_dir='{}'", state.display()),
            "backend='malloc'\nsize='16MiB'",
        )
        .replacen("cores=[0]", "cores=[0,1]", 1);
        let d = root.join(me);
        std::fs::create_dir_all(&d).unwrap();
        Server::start(&d, &body)
    };
    let a = site("a", "b", pa, pb);
    let b = site("b", "a", pb, pa);
    wait_mirror_state(&a, "up", PATIENCE);
    wait_mirror_state(&b, "up", PATIENCE);
    (w, a, b)
}

/// The reactor each connected NBD host of `s` runs on (`host_list`).
fn host_reactors(s: &Server) -> Vec<u64> {
    let hosts = s.rpc("host_list");
    let mut r: Vec<u64> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reactor"].as_u64().unwrap())
        .collect();
    r.sort_unstable();
    r
}

/// Site b frozen for 300 ms (under `peer_dead_ms`, 400), three times: site a's read lease
/// lapses each time with the session up. Two hosts read at a, one on each of its reactors
/// (the volume's home and the other one, whose channel holds its reads itself), from a RAM
/// replica: no read is refused, every one returns what was written, and reads were held.
#[test]
fn reads_held_on_either_reactor_from_a_ram_replica_are_served_once_the_lease_is_back() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, b) = ram_pair_on_two_reactors(root.path());
    let data = pattern(7, 8192);
    let mut c0 = Client::connect(a.addr, "vol0", false);
    assert_eq!(c0.write(0, &data), 0);
    let c1 = Client::connect(a.addr, "vol0", false);
    assert_eq!(host_reactors(&a), vec![0, 1], "one host on each reactor");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [c0, c1]
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let stop = Arc::clone(&stop);
            let want = data.clone();
            std::thread::spawn(move || {
                let (mut refused, mut reads) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let off = (i as u64 % 2) * 4096;
                    match c.read(off, 4096) {
                        Ok(d) => assert!(d == want[off as usize..][..4096], "a served other data"),
                        Err(_) => refused += 1,
                    }
                    reads += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                (refused, reads)
            })
        })
        .collect();
    for _ in 0..3 {
        b.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(300));
        b.signal(libc::SIGCONT);
        wait_mirror_state(&a, "up", PATIENCE);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for (i, r) in readers.into_iter().enumerate() {
        let (refused, reads) = r.join().unwrap();
        assert!(reads > 10, "host {i} read {reads} times");
        assert_eq!(refused, 0, "host {i}: reads refused at a mirroring site");
    }
    let st = crate::mirror::status(&a);
    assert!(
        st["reads_held"].as_u64().unwrap() > 0,
        "no read was held: the lease never lapsed ({st})"
    );
    assert_eq!(st["reads_held_refused"], 0, "{st}");
}

/// Site b frozen until site a serves alone and has acknowledged `new` at offset 0 (through
/// `ca`); then a read of offset 0 is sent to b through `late` (it waits in b's socket) and b is
/// resumed. When a acknowledged, and the read's answer.
fn read_sent_to_a_resumed_site(
    a: &Server,
    b: &Server,
    ca: &mut Client,
    mut late: Client,
    new: &[u8],
) -> (Instant, Result<Vec<u8>, u32>) {
    b.signal(libc::SIGSTOP);
    wait_mirror_state(a, "survivor", PATIENCE);
    assert_eq!(ca.write(0, new), 0);
    let acked = Instant::now();
    let late_read = std::thread::spawn(move || late.read(0, 4096));
    std::thread::sleep(Duration::from_millis(100));
    b.signal(libc::SIGCONT);
    (acked, late_read.join().unwrap())
}

/// Site b frozen past the heartbeat timeout: site a is granted the volume and acknowledges new
/// data alone while b is stopped. A host read sent to b after that acknowledgement (it waits
/// in b's socket) finds b resumed without a lease: it is held, then refused once b learns it
/// is fenced, never served with the old data; a host that read at b the whole time got every
/// read answered, and none it issued after the acknowledgement returned the old data.
#[test]
fn a_read_held_at_a_resumed_site_that_is_then_fenced_is_refused_never_served_stale() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, b) = crate::failover::witnessed_pair_up(root.path());
    crate::failover::wait_preferred_recorded(root.path());
    let old = pattern(21, 4096);
    let new = pattern(22, 4096);
    let mut ca = Client::connect(a.addr, "vol0", false);
    assert_eq!(ca.write(0, &old), 0);
    let mut cb = Client::connect(b.addr, "vol0", false);
    let late = Client::connect(b.addr, "vol0", false);
    assert_eq!(cb.read(0, 4096).unwrap(), old);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let (old, new) = (old.clone(), new.clone());
        std::thread::spawn(move || {
            // (issued, returned the old data)
            let mut log = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = cb.read(0, 4096);
                if let Ok(d) = &r {
                    assert!(*d == old || *d == new, "b served data never written");
                }
                log.push((t, matches!(&r, Ok(d) if *d == old)));
                std::thread::sleep(Duration::from_millis(3));
            }
            log
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let (acked, got) = read_sent_to_a_resumed_site(&a, &b, &mut ca, late, &new);
    assert!(
        got.as_ref().map_or(true, |d| *d == new),
        "b served the old data for a read sent after a acknowledged the new"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let log = reader.join().unwrap();
    assert!(log.len() > 10, "the reader at b read {} times", log.len());
    for (issued, was_old) in &log {
        assert!(
            !(*was_old && *issued > acked),
            "b returned the old data for a read issued {:?} after a acknowledged the new",
            *issued - acked
        );
    }
    let st = crate::mirror::status(&b);
    assert!(st["reads_held"].as_u64().unwrap() > 0, "{st}");
    assert!(st["reads_held_refused"].as_u64().unwrap() > 0, "{st}");
}

/// The reactor `c` (a host connected to `s`) runs on, from `host_list`.
fn reactor_of(s: &Server, c: &Client) -> u64 {
    let me = c.s.local_addr().unwrap().to_string();
    let hosts = s.rpc("host_list");
    let h = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["peer"].as_str() == Some(me.as_str()))
        .unwrap_or_else(|| panic!("host {me} not listed: {hosts}"));
    h["reactor"].as_u64().unwrap()
}

/// As `a_read_held_at_a_resumed_site_that_is_then_fenced_is_refused_never_served_stale`, on
/// the reactor that is not the volume's home (its channel holds the read itself and its
/// `HeldReadPoller` answers it from the lease the home engine publishes): site b frozen past
/// the heartbeat timeout, a granted the volume acknowledges new data alone, and a host read
/// sent to b's other reactor after that acknowledgement is held once b resumes without a
/// lease (the only read b gets then: `reads_held` grows), then refused or served the new
/// data, never the old.
#[test]
fn a_read_held_on_the_other_reactor_of_a_resumed_site_that_is_then_fenced_is_never_served_stale() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, b) = ram_pair_on_two_reactors(root.path());
    crate::failover::wait_preferred_recorded(root.path());
    assert_eq!(crate::mirror::status(&b)["home_reactor"], 0, "vol0's home");
    let old = pattern(31, 4096);
    let new = pattern(32, 4096);
    let mut ca = Client::connect(a.addr, "vol0", false);
    assert_eq!(ca.write(0, &old), 0);
    // A host of b on reactor 1 (connections are dealt round-robin: one of two lands there).
    let mut late = (0..4)
        .map(|_| Client::connect(b.addr, "vol0", false))
        .find(|c| reactor_of(&b, c) == 1)
        .expect("no host of b on reactor 1");
    assert_eq!(late.read(0, 4096).unwrap(), old);
    let (_, got) = read_sent_to_a_resumed_site(&a, &b, &mut ca, late, &new);
    assert!(
        got.as_ref().map_or(true, |d| *d == new),
        "b's other reactor served the old data for a read sent after a acknowledged the new"
    );
    let st = crate::mirror::status(&b);
    assert!(
        st["reads_held"].as_u64().unwrap() > 0,
        "the read was not held (the premise: it reached b without a lease): {st}"
    );
}

/// A reactor other than a mirrored volume's home, holding no read, sleeps as a reactor
/// without pollers does (until its next event): its `HeldReadPoller` is dormant
/// (`Poller::dormant`) and bounds no sleep. Idle for a second, site a's reactor 1 (no
/// connection with work, no link) entered its ring a few times at most, where a 10 ms bound
/// on every sleep woke it about 100 times. (Entries, not turns: a turn with work is followed
/// by the adaptive policy's spin, many turns without an entry.)
#[test]
fn a_reactor_holding_no_read_sleeps_unbounded_as_without_a_poller() {
    let root = tempfile::tempdir().unwrap();
    let (_w, a, _b) = ram_pair_on_two_reactors(root.path());
    let st = crate::mirror::status(&a);
    assert_eq!(st["home_reactor"], 0, "vol0's home");
    let enters = || a.rpc("reactor_stats")[1]["enters"].as_u64().unwrap();
    // (Settled: the adaptive policy's spin after the start's last work is long over.)
    std::thread::sleep(Duration::from_millis(300));
    let before = enters();
    std::thread::sleep(Duration::from_secs(1));
    let idle = enters() - before;
    assert!(
        idle < 30,
        "an idle reactor holding no read entered its ring {idle} times in 1 s: {}",
        a.rpc("reactor_stats")
    );
}
