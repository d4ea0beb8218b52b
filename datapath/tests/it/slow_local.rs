//! Local I/O that is slow, or fails late, at one site of a mirrored pair (the fault layer's
//! `slow_range`/`slow_ms`, `slow_flush`, with `fail_range` a late failure) while the link
//! drops, the witness decides, a resync runs or a site stops: every acknowledged write is read
//! back at whichever site serves, in order; a site that says "up" at both ends has the same
//! replica as its peer; nothing waits for ever. Two `twinblk serve` processes on loopback, an
//! in-process witness, and a relay on the link where a test cuts it.

use crate::failover::{KEY, WitnessProc};
use crate::harness::{
    PATIENCE, Progress, Server, counts, free_port, mirror_state, pattern, same_files,
    wait_mirror_state, wait_progress, wait_until,
};
use crate::rawnbd::Client;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twinblk::frontend::nbd::proto::cmd;

/// The slow 4 KiB block: the last block of the first 64 KiB region (`dirty_granularity`), so
/// an 8 KiB write from it spans two regions, only the first of which is slow.
const S: u64 = 60 << 10;

/// One site of vol0 (16 MiB file, leader `a`, `state_dir`), its `[mirror]` table extended by
/// `mirror` and its volume table by `faults` (the fault layer's keys), dialling `peer_port`
/// unless it leads; with a witness when `witness` is given.
#[allow(clippy::too_many_arguments)]
fn site(
    root: &Path,
    me: &str,
    peer: &str,
    listen: u16,
    peer_port: u16,
    witness: Option<SocketAddr>,
    mirror: &str,
    faults: &str,
) -> Server {
    let d = root.join(me);
    std::fs::create_dir_all(&d).unwrap();
    let state = root.join(format!("state-{me}"));
    std::fs::create_dir_all(&state).unwrap();
    let key = root.join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    let witness = witness.map_or(String::new(), |w| {
        format!("witness='{w}'\nwitness_timeout_ms=1500\n")
    });
    // (10 s unless `mirror` says otherwise.)
    let timeout = if mirror.contains("peer_timeout_ms") {
        ""
    } else {
        "peer_timeout_ms=10000\n"
    };
    Server::start(
        &d,
        &format!(
            "[reactor]\ncores=[0]\npin=false\n\
             [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{listen}']\n\
             peer='127.0.0.1:{peer_port}'\n{timeout}peer_dead_ms=400\n\
             witness_key_file='{}'\nstate_dir='{}'\n{witness}{mirror}\n\
             [[volume]]\nname='vol0'\nbackend='uring'\nsize='16MiB'\npath='{}'\nmirror=true\n\
             leader='a'\n{faults}\n",
            key.display(),
            state.display(),
            root.join(format!("{me}.img")).display(),
        ),
    )
}

/// A TCP relay for the replication link: `cut` shuts every relayed connection down (both
/// directions, as a network failure would) and refuses new ones until `heal`.
struct Relay {
    conns: Arc<Mutex<Vec<TcpStream>>>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(listen: TcpListener, to: SocketAddr) -> Relay {
        listen.set_nonblocking(true).unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, d, s) = (Arc::clone(&conns), Arc::clone(&down), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((inner, _)) = listen.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if d.load(Ordering::Relaxed) {
                    continue; // dropped: the dialler sees the link fail
                }
                inner.set_nonblocking(false).unwrap();
                let Ok(outer) = TcpStream::connect(to) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (inner.try_clone().unwrap(), outer.try_clone().unwrap()),
                    (outer.try_clone().unwrap(), inner.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
                c.lock().unwrap().extend([inner, outer]);
            }
        });
        Relay { conns, down, stop }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// A pair a (leader) and b, b dialling a through a relay the test may cut, both up.
pub(crate) struct Pair {
    pub(crate) root: tempfile::TempDir,
    pub(crate) w: Option<WitnessProc>,
    pub(crate) a: Server,
    pub(crate) b: Server,
    relay: Relay,
}

pub(crate) fn pair(witness: bool, faults_a: &str, faults_b: &str) -> Pair {
    pair_with(witness, "", faults_a, faults_b)
}

/// As [`pair`], both `[mirror]` tables extended by `mirror`.
pub(crate) fn pair_with(witness: bool, mirror: &str, faults_a: &str, faults_b: &str) -> Pair {
    let root = tempfile::tempdir().unwrap();
    let w = witness.then(|| WitnessProc::start(root.path(), KEY, None));
    let wa = w.as_ref().map(|w| w.addr);
    let (pa, pb) = (free_port(), free_port());
    let relay_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let pr = relay_l.local_addr().unwrap().port();
    let relay = Relay::start(relay_l, SocketAddr::from(([127, 0, 0, 1], pa)));
    let a = site(root.path(), "a", "b", pa, pb, wa, mirror, faults_a);
    let b = site(root.path(), "b", "a", pb, pr, wa, mirror, faults_b);
    wait_mirror_state(&a, "up", Duration::from_secs(10));
    wait_mirror_state(&b, "up", Duration::from_secs(10));
    if witness {
        // The premise of every test here that cuts the link: a (the leader) is granted.
        crate::failover::wait_preferred_recorded(root.path());
    }
    Pair {
        root,
        w,
        a,
        b,
        relay,
    }
}

/// The site's config without the fault layer's keys (a repaired device), for its next start.
pub(crate) fn repair(s: &Server) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            !["slow_", "fail_", "stall_"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    std::fs::write(&s.config, kept.join("\n") + "\n").unwrap();
}

/// Kill `s` and start it again with its config, once its replication port is free again
/// (`ss` shows what held it, when something did).
pub(crate) fn respawn(mut s: Server) -> Server {
    kill_and_free_port(&mut s);
    s.respawn()
}

/// Kill `s` and wait until its replication port is free again.
pub(crate) fn kill_and_free_port(s: &mut Server) {
    s.kill();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let port: u16 = text
        .split("[mirror]")
        .nth(1)
        .and_then(|m| m.split("listen=['127.0.0.1:").nth(1))
        .and_then(|r| r.split('\'').next())
        .and_then(|p| p.parse().ok())
        .expect("the replication port");
    let t = Instant::now();
    while TcpListener::bind(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_millis(100) && t.elapsed() < Duration::from_millis(130) {
            let out = std::process::Command::new("ss")
                .args(["-tanp"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let held: Vec<&str> = out
                .lines()
                .filter(|l| l.contains(&format!(":{port} ")))
                .collect();
            eprintln!("port {port} still held: {held:#?}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "port {port} never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if t.elapsed() > Duration::from_millis(100) {
        eprintln!("port {port} was held for {:?} after the kill", t.elapsed());
    }
}

/// Send a write without waiting for its answer.
fn send_write(c: &mut Client, cookie: u64, offset: u64, data: &[u8]) {
    c.send_request(cmd::WRITE, 0, cookie, offset, data.len() as u32, data);
}

/// Run `send` (requests to a site) and wait until the mirror counter `field` of vol0 at `s`
/// moved past its value before: `updates` counts the requests (flushes too) that site's
/// mirror took from its hosts, `replicated` the updates (not flushes) a leader sequenced and
/// sent its follower. A test that needs its request that far before it acts (a kill, a cut,
/// a switchover) waits for it instead of sleeping (a loaded machine makes it slow).
fn taken<T>(s: &Server, field: &str, send: impl FnOnce() -> T) -> T {
    taken_n(s, field, 1, send)
}

/// As [`taken`], for `n` requests.
fn taken_n<T>(s: &Server, field: &str, n: u64, send: impl FnOnce() -> T) -> T {
    let count = || s.rpc("mirror_status")[0][field].as_u64().unwrap_or(0);
    let from = count();
    let sent = send();
    wait_until(
        PATIENCE,
        || count() >= from + n,
        || {
            format!(
                "{field} at {} is {} of {from} + {n}",
                s.config.display(),
                count()
            )
        },
    );
    sent
}

/// Read the answers of `n` requests (no reads among them): cookie -> NBD error.
fn answers(c: &mut Client, n: usize) -> std::collections::HashMap<u64, u32> {
    (0..n)
        .map(|_| {
            let (cookie, e, _) = c.read_reply(0);
            (cookie, e)
        })
        .collect()
}

/// Poll a read at `s` until it is served (a site just granted may refuse for a moment).
pub(crate) fn read_at(s: &Server, offset: u64, len: u32) -> Vec<u8> {
    let mut c = Client::connect(s.addr, "vol0", false);
    let t = Instant::now();
    loop {
        match c.read(offset, len) {
            Ok(d) => return d,
            Err(e) => assert!(
                t.elapsed() < PATIENCE,
                "reads at {} refused for {PATIENCE:?} (error {e}), state {}",
                s.config.display(),
                mirror_state(s)
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop both sites cleanly and compare their replicas.
fn stop_and_compare(mut p: Pair, what: &str) {
    assert!(p.a.stop(), "a's clean stop failed");
    assert!(p.b.stop(), "b's clean stop failed");
    same_files(
        &p.root.path().join("a.img"),
        &p.root.path().join("b.img"),
        what,
    );
    drop(p.w);
}

/// The 8 KiB write W1 from the slow block, then W2 over its second half, the expected content.
fn w1_w2() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let w1 = pattern(11, 8192);
    let w2 = pattern(22, 4096);
    let mut want = w1[..4096].to_vec();
    want.extend_from_slice(&w2);
    (w1, w2, want)
}

/// The leader's own apply of W1 is slow; the follower has it and is killed; the leader, now
/// survivor, acknowledges W2 over W1's second half: W1's late apply must not land over W2.
#[test]
fn a_survivors_slow_apply_never_lands_over_a_newer_write() {
    let mut p = pair(true, &format!("slow_range=[{S}, 4096]\nslow_ms=1500"), "");
    let (w1, w2, want) = w1_w2();
    let mut c1 = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || send_write(&mut c1, 1, S, &w1));
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", PATIENCE);
    let mut c2 = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c2.write(S + 4096, &w2), 0, "W2 failed at the survivor");
    assert_eq!(answers(&mut c1, 1)[&1], 0, "W1 failed at the survivor");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        read_at(&p.a, S, 8192) == want,
        "W1's late apply overwrote the newer W2 at the survivor"
    );
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(
        read_at(&p.b, S, 8192) == want,
        "the resynced follower lacks W2"
    );
    stop_and_compare(p, "replicas differ after the resync");
}

/// The follower's apply of its own forwarded W1 is slow; the leader is killed; the follower,
/// survivor after the witness's tie grace, acknowledges W2 over W1's second half.
#[test]
fn a_follower_survivors_slow_apply_never_lands_over_a_newer_write() {
    let mut p = pair(true, "", &format!("slow_range=[{S}, 4096]\nslow_ms=2500"));
    let (w1, w2, want) = w1_w2();
    let mut c1 = Client::connect(p.b.addr, "vol0", false);
    taken(&p.b, "updates", || send_write(&mut c1, 1, S, &w1));
    p.a.kill();
    wait_mirror_state(&p.b, "survivor", PATIENCE);
    let mut c2 = Client::connect(p.b.addr, "vol0", false);
    assert_eq!(c2.write(S + 4096, &w2), 0, "W2 failed at the survivor");
    let e1 = answers(&mut c1, 1)[&1];
    eprintln!("W1 answered {e1}");
    std::thread::sleep(Duration::from_millis(2500));
    let got = read_at(&p.b, S, 8192);
    assert!(
        got[4096..] == w2[..],
        "W1's late apply overwrote the newer W2 at the survivor"
    );
    if e1 == 0 {
        assert!(got == want, "the acknowledged W1 is not read back");
    }
    p.a = respawn(p.a);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(
        read_at(&p.a, S + 4096, 4096) == w2,
        "the resynced leader lacks W2"
    );
    stop_and_compare(p, "replicas differ after the resync");
}

/// The follower's apply of W1 is still running when the link is cut and the leader is granted;
/// the follower fences, the link comes back and the survivor resyncs it, W2 (acknowledged
/// alone over W1's second half, another dirty region) among its copies, while W1's apply is
/// still on its way: the copy must not be overtaken by it.
#[test]
fn a_fenced_sites_apply_still_running_never_lands_over_its_resync() {
    let p = pair(true, "", &format!("slow_range=[{S}, 4096]\nslow_ms=3000"));
    let (w1, w2, want) = w1_w2();
    let mut c1 = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || send_write(&mut c1, 1, S, &w1));
    p.relay.cut();
    wait_mirror_state(&p.a, "survivor", PATIENCE);
    assert_eq!(answers(&mut c1, 1)[&1], 0, "W1 failed at the survivor");
    assert_eq!(c1.write(S + 4096, &w2), 0, "W2 failed at the survivor");
    wait_mirror_state(&p.b, "fenced", PATIENCE);
    p.relay.heal();
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    let fast = read_at(&p.b, S + 4096, 4096);
    std::thread::sleep(Duration::from_millis(3500));
    let late = read_at(&p.b, S, 8192);
    assert!(
        fast == w2,
        "the resynced follower served W1's old second half before its late apply"
    );
    assert!(
        late == want,
        "W1's late apply landed over the resync's copy of W2 at the follower"
    );
    stop_and_compare(p, "replicas differ after the resync");
}

/// A write still slow at the leader's device when the leader is stopped (SIGTERM): the stop
/// ends at its deadline (the fault layer fails what still waits), the follower has the write.
/// After the restart the two sites must not both say "up" with different data there.
fn a_write_slow_at_a_stopping_leader(witness: bool) {
    let mut p = pair(
        witness,
        &format!("slow_range=[{S}, 4096]\nslow_ms=60000"),
        "",
    );
    let w1 = pattern(11, 4096);
    let mut c1 = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || send_write(&mut c1, 1, S, &w1));
    let t = Instant::now();
    assert!(p.a.stop(), "the leader's stop failed or hung");
    eprintln!("the leader stopped in {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the stop took {:?}, beyond its 10 s deadline",
        t.elapsed()
    );
    drop(c1);
    repair(&p.a);
    p.a = respawn(p.a);
    let t = Instant::now();
    while !(mirror_state(&p.a) == "up" && mirror_state(&p.b) == "up") {
        assert!(
            t.elapsed() < PATIENCE,
            "the pair never came back: a {}, b {}",
            mirror_state(&p.a),
            mirror_state(&p.b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (at_a, at_b) = (read_at(&p.a, S, 4096), read_at(&p.b, S, 4096));
    eprintln!(
        "a: {}, b: {}",
        p.a.rpc("mirror_status")[0],
        p.b.rpc("mirror_status")[0]
    );
    assert!(
        at_a == at_b,
        "both sites up, yet they read different data at the block whose write failed at the \
         leader's stop (a has W1: {}, b has W1: {})",
        at_a == w1,
        at_b == w1
    );
    stop_and_compare(p, "replicas differ");
}

#[test]
fn a_write_slow_at_a_stopping_leader_leaves_no_silent_difference() {
    a_write_slow_at_a_stopping_leader(false);
}

#[test]
fn a_write_slow_at_a_stopping_leader_leaves_no_silent_difference_with_a_witness() {
    a_write_slow_at_a_stopping_leader(true);
}

/// A host's flush at the leader waits for the follower's flush, which its device makes slow;
/// the link is cut meanwhile and the leader is granted: the survivor answers the flush (its
/// replica has every acknowledged write), without waiting for the peer timeout or failing it.
#[test]
fn a_flush_waiting_for_a_slow_peer_flush_is_answered_by_the_survivor() {
    let p = pair(true, "", "slow_flush=true\nslow_ms=3000");
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(0, &pattern(1, 4096)), 0);
    taken(&p.a, "updates", || {
        c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[])
    });
    let cut = Instant::now();
    p.relay.cut();
    let (cookie, e, _) = c.read_reply(0);
    eprintln!("the flush answered {e} {:?} after the cut", cut.elapsed());
    assert_eq!(cookie, 7);
    assert_eq!(e, 0, "the survivor failed a flush its own replica could do");
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "the flush waited {:?} after the cut",
        cut.elapsed()
    );
    assert_eq!(mirror_state(&p.a), "survivor");
    p.relay.heal();
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    stop_and_compare(p, "replicas differ after the resync");
}

/// The follower's apply of W1 fails late (slow, then EIO): it takes its replica out of
/// service, the leader is granted and acknowledges W1 and W2; the follower, restarted with a
/// working device, is resynced.
#[test]
fn a_late_failure_at_the_follower_leaves_the_leader_serving_alone() {
    let mut p = pair(
        true,
        "",
        &format!(
            "slow_range=[{S}, 4096]\nslow_ms=700\nfail_range=[{S}, 4096]\nfail_writes_only=true"
        ),
    );
    let (w1, w2, want) = w1_w2();
    let mut c1 = Client::connect(p.a.addr, "vol0", false);
    let t = Instant::now();
    assert_eq!(c1.write(S, &w1), 0, "W1 failed at the leader");
    eprintln!("W1 acknowledged after {:?}", t.elapsed());
    assert_eq!(mirror_state(&p.a), "survivor");
    assert_eq!(c1.write(S + 4096, &w2), 0, "W2 failed at the survivor");
    assert!(read_at(&p.a, S, 8192) == want);
    wait_mirror_state(&p.b, "failed", PATIENCE);
    let mut cb = Client::connect(p.b.addr, "vol0", false);
    assert!(cb.read(S, 4096).is_err(), "a failed replica served a read");
    repair(&p.b);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(
        read_at(&p.b, S, 8192) == want,
        "the resynced follower lacks W1 or W2"
    );
    stop_and_compare(p, "replicas differ after the resync");
}

/// A resync copy fails late at the target (its device slow, then EIO, over the copied
/// region): the target fails; the source stays the survivor and keeps acknowledging; a later
/// start with a working device resyncs it.
#[test]
fn a_resync_copy_failing_late_at_the_target_leaves_the_source_serving() {
    let mut p = pair(true, "", "");
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", PATIENCE);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(S, &pattern(3, 4096)), 0);
    let text = std::fs::read_to_string(&p.b.config).unwrap();
    std::fs::write(
        &p.b.config,
        format!(
            "{text}slow_range=[{S}, 4096]\nslow_ms=700\nfail_range=[{S}, 4096]\n\
             fail_writes_only=true\n"
        ),
    )
    .unwrap();
    p.b = respawn(p.b);
    wait_mirror_state(&p.b, "failed", Duration::from_secs(10));
    // The source keeps serving alone, and takes writes to the region it was copying.
    let t = Instant::now();
    assert_eq!(
        c.write(S, &pattern(4, 4096)),
        0,
        "the source failed a write"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the source held a write {:?}",
        t.elapsed()
    );
    assert_eq!(mirror_state(&p.a), "survivor");
    repair(&p.b);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(read_at(&p.b, S, 4096) == pattern(4, 4096));
    stop_and_compare(p, "replicas differ after the resync");
}

/// A planned switchover while the follower's apply of a write is slower than the drain's 5 s:
/// the drain gives up, the switchover is rolled back (a still leads), the write completes, and
/// a second switchover, asked once the device is quick again, succeeds. (The peer timeout is
/// 20 s here, so a 7 s apply stays below the half of it after which the follower would take
/// its device out of service: `a_slow_sector_at_the_follower_fails_it_over_...`.)
#[test]
fn a_switchover_whose_drain_waits_for_a_slow_follower_apply_rolls_back_cleanly() {
    let p = pair_with(
        true,
        "peer_timeout_ms=20000",
        "",
        &format!("slow_range=[{S}, 4096]\nslow_ms=7000"),
    );
    let mut c = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || {
        send_write(&mut c, 1, S, &pattern(5, 4096))
    });
    let t = Instant::now();
    let r = p.a.rpc_with(
        "mirror_switchover",
        serde_json::json!({"volume": "vol0", "to": "b", "wait_s": 10.0}),
    );
    eprintln!("the switchover answered after {:?}: {r}", t.elapsed());
    // Meanwhile a write elsewhere waited unsequenced and goes on after the rollback.
    let mut c2 = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c2.write(1 << 20, &pattern(6, 4096)), 0);
    assert_eq!(answers(&mut c, 1)[&1], 0, "the slow write failed");
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "waited {:?}",
        t.elapsed()
    );
    let la = p.a.rpc("mirror_status")[0]["role"].clone();
    let lb = p.b.rpc("mirror_status")[0]["role"].clone();
    assert_ne!(la, lb, "both sites have the same role {la}");
    let (to, at) = if la == "leader" {
        ("b", &p.a)
    } else {
        ("a", &p.b)
    };
    let r = at.rpc_with(
        "mirror_switchover",
        serde_json::json!({"volume": "vol0", "to": to, "wait_s": 10.0}),
    );
    assert!(r["error"].is_null(), "the next switchover failed: {r}");
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(read_at(&p.b, S, 4096) == pattern(5, 4096));
    assert!(read_at(&p.a, 1 << 20, 4096) == pattern(6, 4096));
    stop_and_compare(p, "replicas differ");
}

/// The link drops and comes back at once (shorter than the heartbeat timeout) while the
/// follower's flush is slow: the leader's flush is sent again in the new session and answered,
/// neither failed nor left waiting for the peer timeout.
#[test]
fn a_flush_across_a_short_link_flap_is_answered() {
    let p = pair(true, "", "slow_flush=true\nslow_ms=1000");
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(0, &pattern(1, 4096)), 0);
    taken(&p.a, "updates", || {
        c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[])
    });
    let cut = Instant::now();
    p.relay.cut();
    p.relay.heal();
    let (cookie, e, _) = c.read_reply(0);
    eprintln!("the flush answered {e} {:?} after the cut", cut.elapsed());
    assert_eq!((cookie, e), (7, 0), "the flush failed");
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "the flush waited {:?} after the cut",
        cut.elapsed()
    );
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert_eq!(c.write(4096, &pattern(2, 4096)), 0);
    stop_and_compare(p, "replicas differ");
}

/// The follower's flush fails late: its replica fails, the leader is granted and answers its
/// host's flush with success (its own flush worked), then keeps serving.
#[test]
fn a_peer_flush_failing_late_leaves_the_leader_flushing_alone() {
    let mut p = pair(true, "", "slow_flush=true\nslow_ms=700\nfail_flush=true");
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(0, &pattern(1, 4096)), 0);
    c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[]);
    let t = Instant::now();
    let (cookie, e, _) = c.read_reply(0);
    eprintln!("the flush answered {e} after {:?}", t.elapsed());
    assert_eq!(cookie, 7);
    assert_eq!(e, 0, "the leader failed a flush its own replica did");
    wait_mirror_state(&p.b, "failed", PATIENCE);
    assert_eq!(mirror_state(&p.a), "survivor");
    assert_eq!(c.write(4096, &pattern(2, 4096)), 0);
    repair(&p.b);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    stop_and_compare(p, "replicas differ after the resync");
}

/// A flush slow beyond the stop deadline at the follower: its stop ends within the deadline
/// (the flush failed by it, so the replica fails), the leader serves alone, and the next start
/// is resynced, not "up" on a replica whose flush failed.
#[test]
fn a_flush_slow_beyond_the_stop_deadline_ends_the_stop_and_is_repaired() {
    let mut p = pair(true, "", "slow_flush=true\nslow_ms=60000");
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(0, &pattern(1, 4096)), 0);
    taken(&p.a, "updates", || {
        c.send_request(cmd::FLUSH, 0, 7, 0, 0, &[])
    });
    let t = Instant::now();
    assert!(p.b.stop(), "the follower's stop failed or hung");
    eprintln!("the follower stopped in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15));
    // The flush waited for the peer past `peer_timeout_ms` (10 s) while the link was up: it
    // failed then, as any held request does.
    let (cookie, e, _) = c.read_reply(0);
    eprintln!("the flush answered {e} after {:?}", t.elapsed());
    assert_eq!(cookie, 7);
    assert!(e == 0 || e == twinblk::frontend::nbd::proto::err::EIO);
    wait_mirror_state(&p.a, "survivor", PATIENCE);
    assert_eq!(c.write(4096, &pattern(2, 4096)), 0);
    repair(&p.b);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    stop_and_compare(p, "replicas differ after the resync");
}

/// One slow sector at the follower's device (12 s, beyond `peer_timeout_ms`) while the link
/// and both sites are healthy otherwise: a write at the leader to any other block waits for
/// it, since the follower's acknowledgement is a cumulative watermark (every `seq` up to it
/// applied) stuck below the slow update, and fails with EIO at the peer timeout. Nothing fails
/// over (the link is up, no device returned an error), so the whole volume takes no write at
/// either site for as long as the sector is slow (for ever with a hung one, `stall_range`).
#[test]
#[ignore = "limit: an unrelated write still waits for one slow sector at the peer (the ACK is \
            a cumulative applied watermark) until the leader fails the peer over after half \
            the peer timeout (a_slow_sector_at_the_follower_fails_it_over_instead_of_stopping_\
            the_volume); per-update acknowledgements would need a protocol change"]
fn an_unrelated_write_does_not_wait_for_a_slow_sector_at_the_peer() {
    let p = pair(true, "", &format!("slow_range=[{S}, 4096]\nslow_ms=12000"));
    let mut c1 = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || {
        send_write(&mut c1, 1, S, &pattern(1, 4096))
    });
    let mut c2 = Client::connect(p.a.addr, "vol0", false);
    let t = Instant::now();
    let e = c2.write(1 << 20, &pattern(2, 4096));
    eprintln!("the unrelated write answered {e} after {:?}", t.elapsed());
    assert!(
        e == 0 && t.elapsed() < Duration::from_secs(3),
        "an unrelated write at the leader answered {e} after {:?}: it waited for the \
         follower's slow sector",
        t.elapsed()
    );
    let e1 = answers(&mut c1, 1)[&1];
    eprintln!("the slow write answered {e1}");
    stop_and_compare(p, "replicas differ");
}

/// One slow sector at the follower's device (12 s) while the link and both sites are healthy
/// otherwise: the follower's acknowledgement (a cumulative applied watermark) stops moving,
/// so every later update of the volume waits. Half the peer timeout (5 s) after the apply
/// began, the follower takes its replica out of service as for a device error, the leader is
/// granted by the witness and acknowledges the waiting writes alone: the unrelated write
/// succeeds before the peer timeout would have failed it (before, it failed with EIO at 10 s
/// and nothing failed over). Repaired and restarted, the follower is resynced and the replicas
/// end identical.
#[test]
fn a_slow_sector_at_the_follower_fails_it_over_instead_of_stopping_the_volume() {
    let mut p = pair(true, "", &format!("slow_range=[{S}, 4096]\nslow_ms=12000"));
    let mut c1 = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || {
        send_write(&mut c1, 1, S, &pattern(1, 4096))
    });
    let mut c2 = Client::connect(p.a.addr, "vol0", false);
    let t = Instant::now();
    let e = c2.write(1 << 20, &pattern(2, 4096));
    eprintln!("the unrelated write answered {e} after {:?}", t.elapsed());
    assert_eq!(e, 0, "the unrelated write failed");
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "answered only after {:?}",
        t.elapsed()
    );
    assert_eq!(mirror_state(&p.a), "survivor");
    assert_eq!(
        answers(&mut c1, 1)[&1],
        0,
        "the slow write, acknowledged alone"
    );
    // The follower took its replica out of service (as for a device error): repaired and
    // restarted, it is resynced from the survivor.
    assert_eq!(mirror_state(&p.b), "failed");
    repair(&p.b);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(
        read_at(&p.b, S, 4096) == pattern(1, 4096),
        "the follower's copy"
    );
    stop_and_compare(p, "replicas differ after the resync");
}

/// The same at the leader: its own apply of a host write stays slow (12 s). Half the peer
/// timeout later the leader takes its replica out of service, the follower is granted and
/// serves alone (a multipath host's writes go on there), and the leader's host gets an error
/// for the write (never acknowledged at one site only). Repaired and restarted, the leader is
/// resynced from the follower.
#[test]
fn a_slow_sector_at_the_leader_hands_the_volume_to_the_follower() {
    let mut p = pair(true, &format!("slow_range=[{S}, 4096]\nslow_ms=12000"), "");
    let mut c1 = Client::connect(p.a.addr, "vol0", false);
    send_write(&mut c1, 1, S, &pattern(1, 4096));
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(9));
    assert_eq!(mirror_state(&p.a), "failed");
    let mut cb = Client::connect(p.b.addr, "vol0", false);
    assert_eq!(
        cb.write(1 << 20, &pattern(2, 4096)),
        0,
        "the follower serves alone"
    );
    let e1 = answers(&mut c1, 1)[&1];
    eprintln!("the slow write answered {e1} at the failed leader");
    repair(&p.a);
    p.a = respawn(p.a);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(
        read_at(&p.a, 1 << 20, 4096) == pattern(2, 4096),
        "the leader's copy"
    );
    stop_and_compare(p, "replicas differ after the resync");
}

/// The resync target is stopped while its last copy is slow beyond the stop deadline (after
/// RESYNC_DONE came): the copy fails at the deadline, the stop ends, and the next start is
/// resynced again, never "up" without the copy.
#[test]
fn a_resync_target_stopped_with_a_slow_copy_is_resynced_again() {
    let mut p = pair(true, "", "");
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", PATIENCE);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(S, &pattern(3, 4096)), 0);
    let text = std::fs::read_to_string(&p.b.config).unwrap();
    std::fs::write(
        &p.b.config,
        format!("{text}slow_range=[{S}, 4096]\nslow_ms=60000\n"),
    )
    .unwrap();
    p.b = respawn(p.b);
    wait_mirror_state(&p.b, "resyncing", PATIENCE);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert!(p.b.stop(), "the target's stop failed or hung");
    eprintln!("the target stopped in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(mirror_state(&p.a), "survivor");
    assert_eq!(c.write(S + 4096, &pattern(4, 4096)), 0);
    repair(&p.b);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert!(
        read_at(&p.b, S, 4096) == pattern(3, 4096),
        "the target lacks the copy"
    );
    stop_and_compare(p, "replicas differ after the second resync");
}

/// A planned switchover while a host's flush at each site waits for its slow flushes (both
/// devices flush slowly): the switchover completes (flushes are not sequenced updates), both
/// flushes are answered with success, and writes at both sites go on under the new leader.
#[test]
fn a_switchover_with_slow_flushes_at_both_sites_answers_them() {
    let p = pair(
        true,
        "slow_flush=true\nslow_ms=1500",
        "slow_flush=true\nslow_ms=1500",
    );
    let mut ca = Client::connect(p.a.addr, "vol0", false);
    let mut cb = Client::connect(p.b.addr, "vol0", false);
    assert_eq!(ca.write(0, &pattern(1, 4096)), 0);
    assert_eq!(cb.write(4096, &pattern(2, 4096)), 0);
    taken(&p.a, "updates", || {
        taken(&p.b, "updates", || {
            ca.send_request(cmd::FLUSH, 0, 7, 0, 0, &[]);
            cb.send_request(cmd::FLUSH, 0, 8, 0, 0, &[]);
        })
    });
    let t = Instant::now();
    let r = p.a.rpc_with(
        "mirror_switchover",
        serde_json::json!({"volume": "vol0", "to": "b", "wait_s": 10.0}),
    );
    eprintln!("the switchover answered after {:?}: {r}", t.elapsed());
    assert!(r["error"].is_null(), "the switchover failed: {r}");
    let (k, e, _) = ca.read_reply(0);
    assert_eq!((k, e), (7, 0), "a's flush");
    let (k, e, _) = cb.read_reply(0);
    assert_eq!((k, e), (8, 0), "b's flush");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert_eq!(p.b.rpc("mirror_status")[0]["role"], "leader");
    assert_eq!(ca.write(8192, &pattern(3, 4096)), 0);
    assert_eq!(cb.write(12288, &pattern(4, 4096)), 0);
    for s in [&p.a, &p.b] {
        assert!(read_at(s, 0, 16384)[8192..12288] == pattern(3, 4096)[..]);
    }
    stop_and_compare(p, "replicas differ");
}

/// The follower's apply of a forwarded write is slow when a switchover to it is asked: the
/// drain waits for it (under 5 s), then the follower leads; the write completes, and a write
/// at the old leader right after the switch is ordered after it.
#[test]
fn a_switchover_waits_for_a_slow_apply_at_the_new_leader() {
    let p = pair(true, "", &format!("slow_range=[{S}, 4096]\nslow_ms=1500"));
    let mut cb = Client::connect(p.b.addr, "vol0", false);
    taken(&p.b, "updates", || {
        send_write(&mut cb, 1, S, &pattern(1, 4096))
    });
    let r = p.a.rpc_with(
        "mirror_switchover",
        serde_json::json!({"volume": "vol0", "to": "b", "wait_s": 10.0}),
    );
    assert!(r["error"].is_null(), "the switchover failed: {r}");
    let mut ca = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(ca.write(S, &pattern(2, 4096)), 0);
    assert_eq!(answers(&mut cb, 1)[&1], 0);
    for s in [&p.a, &p.b] {
        assert!(
            read_at(s, S, 4096) == pattern(2, 4096),
            "the later write is not the content at {}",
            s.config.display()
        );
    }
    stop_and_compare(p, "replicas differ");
}

/// A compare-and-write at the follower miscompares against W, the leader's newer write, which
/// the follower is still applying (slow sector); the leader is then killed. The follower
/// answers a forwarded MISCOMPARE only once it has applied what the compare saw
/// (docs/mirror-protocol.md, "Compare and write"), so a host that re-reads at the follower,
/// now the survivor, sees the data it failed against, not the older data it compared with.
#[test]
fn after_a_miscompare_the_follower_serves_what_the_compare_saw_even_when_the_leader_dies() {
    use twinblk_tools::nvmf::{Controller, sc};
    const NQN: &str = "nqn.2026-11.io.twinblk:vol0";
    let mut p = pair(true, "", &format!("slow_range=[{S}, 4096]\nslow_ms=3000"));
    let w = pattern(1, 4096);
    let mut ca = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || send_write(&mut ca, 1, S, &w));
    let mut cb = Controller::connect(p.b.nvmf_addr, NQN, &crate::nvmf_fused_resv::host(2)).unwrap();
    let bs = cb.ns_info(1).unwrap().block_size;
    let mut q = cb.io_queue(1, 8).unwrap();
    let caw = taken(&p.b, "updates", || {
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = q
                .compare_and_write(
                    1,
                    S / u64::from(bs),
                    &vec![0u8; 4096],
                    &pattern(2, 4096),
                    bs,
                )
                .unwrap();
            (r, t.elapsed(), q)
        })
    });
    // Taken at b and forwarded; its arrival at a is not counted anywhere: a margin for it.
    std::thread::sleep(Duration::from_millis(300));
    p.a.kill();
    let (r, took, _q) = caw.join().unwrap();
    eprintln!("the compare-and-write answered {r:x?} after {took:?}");
    assert_eq!(
        r,
        (sc::COMPARE_FAILURE, sc::FUSED_FAILED),
        "it compared against W"
    );
    wait_mirror_state(&p.b, "survivor", PATIENCE);
    let got = read_at(&p.b, S, 4096);
    assert!(
        got == w,
        "after the miscompare the follower served the data the host compared with (W is {} \
         there yet)",
        if got == w { "" } else { "not" }
    );
    drop(ca);
}

/// Volume `db` of group `vm1` fails late at the leader (its device slow, then EIO, over one
/// block), volume `log` of the same group is healthy: `db` fails over to the follower, `log`
/// keeps mirroring (writes at both sites), and a restart of the leader with a working device
/// resyncs `db`; both volumes end identical.
#[test]
fn a_late_failure_of_one_volume_of_a_group_leaves_the_other_mirroring() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let key = root.path().join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    let body = |me: &str, peer: &str, listen: u16, peer_port: u16, faults: &str| {
        let state = root.path().join(format!("state-{me}"));
        std::fs::create_dir_all(&state).unwrap();
        let mut b = format!(
            "[reactor]\ncores=[0]\npin=false\n\
             [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{listen}']\n\
             peer='127.0.0.1:{peer_port}'\npeer_dead_ms=400\nstate_dir='{}'\n\
             witness='{}'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n",
            state.display(),
            w.addr,
            key.display()
        );
        for v in ["db", "log"] {
            b += &format!(
                "[[volume]]\nname='{v}'\nbackend='uring'\nsize='4MiB'\npath='{}'\nmirror=true\n\
                 leader='a'\ngroup='vm1'\n{}\n",
                root.path().join(format!("{me}-{v}.img")).display(),
                if v == "db" { faults } else { "" }
            );
        }
        b
    };
    let mk = |me: &str, peer: &str, l: u16, p: u16, faults: &str| {
        let d = root.path().join(me);
        std::fs::create_dir_all(&d).unwrap();
        Server::start(&d, &body(me, peer, l, p, faults))
    };
    let state = |s: &Server, i: usize| -> String {
        s.rpc("mirror_status")[i]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let wait = |s: &Server, i: usize, want: &str| {
        let t = Instant::now();
        while state(s, i) != want {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "volume {i} at {}: {}, wanted {want}",
                s.config.display(),
                state(s, i)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let a = mk(
        "a",
        "b",
        pa,
        pb,
        &format!(
            "slow_range=[{S}, 4096]\nslow_ms=700\nfail_range=[{S}, 4096]\nfail_writes_only=true"
        ),
    );
    let b = mk("b", "a", pb, pa, "");
    for i in 0..2 {
        wait(&a, i, "up");
        wait(&b, i, "up");
    }
    let mut db = Client::connect(a.addr, "db", false);
    send_write(&mut db, 1, S, &pattern(1, 4096));
    wait(&a, 0, "failed");
    wait(&b, 0, "survivor");
    let e = answers(&mut db, 1)[&1];
    eprintln!("the write that failed late answered {e}");
    let mut dbb = Client::connect(b.addr, "db", false);
    assert_eq!(dbb.write(0, &pattern(2, 4096)), 0, "db at the survivor");
    // log: still mirrored, written at both sites.
    assert_eq!(state(&a, 1), "up");
    assert_eq!(state(&b, 1), "up");
    let mut la = Client::connect(a.addr, "log", false);
    let mut lb = Client::connect(b.addr, "log", false);
    let t = Instant::now();
    assert_eq!(la.write(0, &pattern(3, 4096)), 0, "log at a");
    assert_eq!(lb.write(4096, &pattern(4, 4096)), 0, "log at b");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop((db, dbb, la, lb));
    let mut a = a;
    let text = std::fs::read_to_string(&a.config).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("slow_") && !l.starts_with("fail_"))
        .collect();
    std::fs::write(&a.config, kept.join("\n") + "\n").unwrap();
    a = respawn(a);
    for i in 0..2 {
        wait(&a, i, "up");
        wait(&b, i, "up");
    }
    let mut b = b;
    assert!(a.stop() && b.stop(), "clean stops");
    for v in ["db", "log"] {
        same_files(
            &root.path().join(format!("a-{v}.img")),
            &root.path().join(format!("b-{v}.img")),
            &format!("{v}: replicas differ"),
        );
    }
}

/// The survivor's device is slow on a block a writer keeps rewriting (QD1) while the returning
/// follower is resynced: every resync read of that region waits behind a slow write, and the
/// region is dirty again after each; the resync still ends (its last pass defers the writer),
/// and the last acknowledged write is the content at both sites.
#[test]
fn a_resync_ends_under_a_writer_on_a_slow_block_of_the_source() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut p = pair(true, &format!("slow_range=[{S}, 4096]\nslow_ms=150"), "");
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", PATIENCE);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let addr = p.a.addr;
    let done = Progress::default();
    let acked = done.clone();
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(addr, "vol0", false);
        let mut last = None;
        let mut i = 0u64;
        while !s2.load(Ordering::SeqCst) {
            i += 1;
            if c.write(S, &pattern(100 + i, 4096)) == 0 {
                last = Some(i);
                acked.tick();
            }
        }
        last
    });
    // The writer writes before the resync and after it (counted, not timed).
    let done = [done];
    wait_progress(&done, &[0], 3, "before the resync");
    p.b = respawn(p.b);
    let t = Instant::now();
    wait_mirror_state(&p.b, "up", Duration::from_secs(15));
    wait_mirror_state(&p.a, "up", PATIENCE);
    eprintln!("resynced in {:?} under the writer", t.elapsed());
    wait_progress(&done, &counts(&done), 3, "after the resync");
    stop.store(true, Ordering::SeqCst);
    let last = writer.join().unwrap().expect("writes acknowledged");
    for s in [&p.a, &p.b] {
        assert!(
            read_at(s, S, 4096) == pattern(100 + last, 4096),
            "the last acknowledged write is not the content at {}",
            s.config.display()
        );
    }
    stop_and_compare(p, "replicas differ");
}

/// A site killed while its own apply of W1 is slow and restarted at once (state 5, in sync but
/// stopped uncleanly): the reconciliation leaves both replicas identical, W1's outcome being
/// either (it was never acknowledged: a write at the killed site's peer answers it).
fn a_quick_kill_during_a_slow_apply(kill_leader: bool) {
    let slow = format!("slow_range=[{S}, 4096]\nslow_ms=2000");
    let (fa, fb) = if kill_leader {
        (&slow[..], "")
    } else {
        ("", &slow[..])
    };
    let mut p = pair(true, fa, fb);
    let w1 = pattern(1, 4096);
    // The write comes in at the site that stays.
    let stays = if kill_leader { p.b.addr } else { p.a.addr };
    let mut c = Client::connect(stays, "vol0", false);
    // Taken where it came in (and sent by the leader), then a margin for it to reach the
    // killed site's apply (not counted anywhere).
    if kill_leader {
        taken(&p.b, "updates", || send_write(&mut c, 1, S, &w1));
    } else {
        taken(&p.a, "replicated", || send_write(&mut c, 1, S, &w1));
    }
    std::thread::sleep(Duration::from_millis(300));
    if kill_leader {
        p.a = respawn(p.a);
    } else {
        p.b = respawn(p.b);
    }
    let e = answers(&mut c, 1)[&1];
    eprintln!("W1 answered {e}");
    let t = Instant::now();
    while !(mirror_state(&p.a) == "up" && mirror_state(&p.b) == "up") {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "never both up: a {}, b {}",
            mirror_state(&p.a),
            mirror_state(&p.b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (at_a, at_b) = (read_at(&p.a, S, 4096), read_at(&p.b, S, 4096));
    assert!(at_a == at_b, "both up, different data at W1's block");
    if e == 0 {
        assert!(at_a == w1, "W1 was acknowledged and is lost");
    }
    std::thread::sleep(Duration::from_millis(2000));
    stop_and_compare(p, "replicas differ");
}

#[test]
fn a_leader_killed_during_its_slow_apply_and_restarted_at_once_is_reconciled() {
    a_quick_kill_during_a_slow_apply(true);
}

#[test]
fn a_follower_killed_during_its_slow_apply_and_restarted_at_once_is_reconciled() {
    a_quick_kill_during_a_slow_apply(false);
}

/// A switchover to the follower is asked while the follower's apply of a write is slow and
/// then fails: the drain ends with the session, the switchover is rolled back, the leader is
/// granted and serves alone; the follower, restarted with a working device, is resynced and
/// the old leader still leads.
#[test]
fn a_late_failure_at_the_follower_during_a_switchover_drain_rolls_it_back() {
    let mut p = pair(
        true,
        "",
        &format!(
            "slow_range=[{S}, 4096]\nslow_ms=1000\nfail_range=[{S}, 4096]\nfail_writes_only=true"
        ),
    );
    let mut c = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || {
        send_write(&mut c, 1, S, &pattern(1, 4096))
    });
    let t = Instant::now();
    let r = p.a.rpc_with(
        "mirror_switchover",
        serde_json::json!({"volume": "vol0", "to": "b", "wait_s": 10.0}),
    );
    eprintln!("the switchover answered after {:?}: {r}", t.elapsed());
    assert!(
        !r["error"].is_null(),
        "a switchover to a failed replica: {r}"
    );
    assert_eq!(answers(&mut c, 1)[&1], 0, "the write failed at the leader");
    wait_mirror_state(&p.a, "survivor", PATIENCE);
    wait_mirror_state(&p.b, "failed", PATIENCE);
    assert_eq!(c.write(S + 4096, &pattern(2, 4096)), 0);
    repair(&p.b);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    assert_eq!(p.a.rpc("mirror_status")[0]["role"], "leader");
    assert_eq!(p.b.rpc("mirror_status")[0]["role"], "follower");
    assert!(read_at(&p.b, S, 4096) == pattern(1, 4096));
    stop_and_compare(p, "replicas differ after the resync");
}

/// A few seconds of one slow sector at the follower while a host writes at the leader with
/// more in flight than `max_backlog_mib` (8 MiB here; 256 MiB by default): the follower
/// applies every later update at once, but its cumulative acknowledgement waits for the slow
/// one, so the leader's backlog of unacknowledged updates would pass the limit. The leader
/// holds the updates that do not fit until acknowledgements make room, and once the sector is
/// quick again they go on: the pair is mirroring, not `diverged` (it was: every write failed
/// at once and the leader refused sessions until an operator gave the follower a new replica).
#[test]
fn a_short_slow_sector_at_the_follower_never_leaves_the_volume_diverged() {
    let p = pair_with(
        true,
        "max_backlog_mib=8",
        "",
        &format!("slow_range=[{S}, 4096]\nslow_ms=3000"),
    );
    let mut c = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || {
        send_write(&mut c, 1, S, &pattern(1, 4096))
    });
    // 14 MiB in flight behind it, elsewhere.
    for i in 0..14u64 {
        send_write(&mut c, 2 + i, (1 + i) << 20, &pattern(2 + i, 1 << 20));
    }
    let got = answers(&mut c, 15);
    let failed = got.values().filter(|&&e| e != 0).count();
    assert_eq!(failed, 0, "writes failed while the follower was slow");
    std::thread::sleep(Duration::from_millis(500));
    let st = p.a.rpc("mirror_status")[0].clone();
    eprintln!("a: {st}");
    let t = Instant::now();
    let e = c.write(0, &pattern(99, 4096));
    assert!(
        e == 0,
        "a write {:?} after the slow sector passed answered {e}: state {}",
        t.elapsed(),
        st["state"]
    );
    wait_mirror_state(&p.b, "up", PATIENCE);
    stop_and_compare(p, "replicas differ");
}

/// Both devices flush slowly (60 s), nothing is written: the clean stop of each site ends at
/// once, well within its deadline (no flush of its own waits).
#[test]
fn an_idle_pair_with_slow_flushes_stops_at_once() {
    let mut p = pair(
        true,
        "slow_flush=true\nslow_ms=60000",
        "slow_flush=true\nslow_ms=60000",
    );
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(0, &pattern(1, 4096)), 0);
    drop(c);
    for s in [&mut p.b, &mut p.a] {
        let t = Instant::now();
        assert!(s.stop(), "the stop failed");
        eprintln!("stopped in {:?}", t.elapsed());
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the stop took {:?}",
            t.elapsed()
        );
    }
}

/// One site's device never completes a flush through the stack (a volatile cache;
/// `slow_flush` with a long `slow_ms`), and at its clean stop the flush of the replica's file
/// (by its path) fails too: here the file is moved away for the stop, as a device may refuse
/// a flush. A write is acknowledged (applied at both sites, never flushed); after the stop the
/// site loses power: its device drops that write (emulated by putting the block back to what
/// the device held before). The stop must not have called the replica clean: after its restart
/// the site is reconciled and serves the write, never "up" with older data. (A flush that
/// works at the stop cannot be told apart from outside: the write is durable then.) `leader`:
/// the site stopped is the leader (the follower serves alone meanwhile), else the follower.
fn a_clean_stop_that_cannot_flush(leader: bool) {
    let slow = "slow_flush=true\nslow_ms=600000";
    let mut p = if leader {
        pair(true, slow, "")
    } else {
        pair(true, "", slow)
    };
    let mut c = Client::connect(p.a.addr, "vol0", false);
    let w = pattern(5, 4096);
    assert_eq!(c.write(S, &w), 0);
    drop(c);
    let (name, stopped) = if leader {
        ("a", &mut p.a)
    } else {
        ("b", &mut p.b)
    };
    let img = p.root.path().join(format!("{name}.img"));
    let away = p.root.path().join(format!("{name}.img.away"));
    std::fs::rename(&img, &away).unwrap();
    assert!(stopped.stop(), "{name}'s stop");
    std::fs::rename(&away, &img).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0u8; 4096], S).unwrap();
    }
    // It comes back with a device that flushes again (a resync ends with a flush of both
    // replicas, which a device that never completes one would hold for ever).
    if leader {
        wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
        repair(&p.a);
        p.a = respawn(p.a);
    } else {
        repair(&p.b);
        p.b = respawn(p.b);
    }
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    let back = if leader { &p.a } else { &p.b };
    assert!(
        read_at(back, S, 4096) == w,
        "{name}, up and in sync, serves older data than an acknowledged write"
    );
}

#[test]
fn a_clean_stop_that_cannot_flush_the_replica_is_not_called_clean() {
    a_clean_stop_that_cannot_flush(false);
}

/// (The leader's activity log is kept as it was, and every region it ever wrote is suspect.)
#[test]
fn a_leaders_clean_stop_that_cannot_flush_the_replica_is_not_called_clean() {
    a_clean_stop_that_cannot_flush(true);
}

/// Updates waiting for room in the backlog (the follower slow, 8 MiB limit, 14 MiB in flight)
/// when the link is cut: the leader, granted, applies them alone and acknowledges every one
/// (the volume never diverges), and the resync after the heal leaves identical replicas.
#[test]
fn updates_waiting_for_backlog_room_are_served_by_the_survivor_after_a_cut() {
    let p = pair_with(
        true,
        "max_backlog_mib=8",
        "",
        &format!("slow_range=[{S}, 4096]\nslow_ms=3000"),
    );
    let mut c = Client::connect(p.a.addr, "vol0", false);
    taken(&p.a, "replicated", || {
        send_write(&mut c, 1, S, &pattern(1, 4096))
    });
    taken_n(&p.a, "updates", 14, || {
        for i in 0..14u64 {
            send_write(&mut c, 2 + i, (1 + i) << 20, &pattern(2 + i, 1 << 20));
        }
    });
    p.relay.cut();
    let got = answers(&mut c, 15);
    let failed: Vec<_> = got.iter().filter(|(_, e)| **e != 0).collect();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert_eq!(mirror_state(&p.a), "survivor");
    p.relay.heal();
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    for i in 0..14u64 {
        assert!(read_at(&p.b, (1 + i) << 20, 4096) == pattern(2 + i, 1 << 20)[..4096]);
    }
    stop_and_compare(p, "replicas differ after the resync");
}
