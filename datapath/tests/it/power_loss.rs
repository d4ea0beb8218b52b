//! Power loss at one site of a mirrored pair: both replicas sit behind a simulated volatile
//! write cache (`volatile_cache`, bdev/cached.rs), so a site killed with SIGKILL loses every
//! write its disk had not flushed, as a disk does when the power goes. A write acknowledged
//! to a host is on both replicas but durable on neither until a flush; the site that keeps
//! its power must make sure the one that lost it gets back whatever it may have lost. Each
//! test ends by losing the other site and reading the acknowledged write back at the one
//! that lost its power.

use crate::harness::Server;
use crate::harness::{pattern, same_files, wait_mirror_state};
use crate::rawnbd::Client;
use crate::slow_local::{Pair, kill_and_free_port, pair, pair_with, read_at};
use std::time::{Duration, Instant};

/// Wait until `s` and its peer are in sync and the survivor's grant is released at the
/// witness (until then, losing the former survivor stops the volume: the witness cannot tell
/// it from a survivor still acknowledging alone).
fn wait_in_sync_released(p: &Pair) {
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    let t = Instant::now();
    while [&p.a, &p.b]
        .iter()
        .any(|s| !s.rpc("mirror_status")[0]["witness"]["holder"].is_null())
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the grant was never released"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Both sites' replicas behind a volatile cache.
const CACHE: &str = "volatile_cache=true";

/// An acknowledged write's offset (the second 1 MiB of the 16 MiB volume).
const W_AT: u64 = 1 << 20;

/// Which site of the pair.
#[derive(Clone, Copy)]
enum At {
    A,
    B,
}

fn site(p: &mut Pair, at: At) -> &mut Server {
    match at {
        At::A => &mut p.a,
        At::B => &mut p.b,
    }
}

fn other(at: At) -> At {
    match at {
        At::A => At::B,
        At::B => At::A,
    }
}

/// Write `w` at `W_AT` through `at`; acknowledged, never flushed by the host.
fn write_w(p: &mut Pair, at: At, w: &[u8]) {
    let mut c = Client::connect(site(p, at).addr, "vol0", false);
    assert_eq!(c.write(W_AT, w), 0, "W failed");
}

/// `at` loses its power (its disk's cache with it); the other site is granted.
fn lose_power(p: &mut Pair, at: At) {
    site(p, at).kill();
    wait_mirror_state(site(p, other(at)), "survivor", Duration::from_secs(10));
}

/// `at` comes back with what its disk kept, and the pair is in sync again.
fn come_back(p: &mut Pair, at: At) {
    let s = site(p, at);
    kill_and_free_port(s);
    s.respawn_in_place();
    wait_in_sync_released(p);
}

/// The other site is lost too: `at`, granted, must serve `w`.
fn the_other_lost_serves(p: &mut Pair, at: At, w: &[u8], what: &str) {
    lose_power(p, other(at));
    assert!(read_at(site(p, at), W_AT, w.len() as u32) == w, "{what}");
}

/// One step of a scenario.
#[derive(Clone, Copy)]
enum Step {
    /// W written through that site (acknowledged, never flushed by the host).
    Write(At),
    /// That site loses its power; the other is granted.
    Lose(At),
    /// That site comes back; the pair is in sync again.
    Back(At),
    /// Writes at a to the volume's third and fourth MiB.
    More,
    /// a hands the leadership to b.
    SwitchToB,
}

/// Run `steps` over a pair (`mirror` added to both `[mirror]` tables), then lose the site
/// other than `serves`: `serves` must serve W (`what` says what was lost otherwise).
fn scenario(mirror: &str, seed: u64, steps: &[Step], serves: At, what: &str) {
    let mut p = pair_with(true, mirror, CACHE, CACHE);
    let w = pattern(seed, 8192);
    for &step in steps {
        match step {
            Step::Write(at) => write_w(&mut p, at, &w),
            Step::Lose(at) => lose_power(&mut p, at),
            Step::Back(at) => come_back(&mut p, at),
            Step::More => {
                let mut c = Client::connect(p.a.addr, "vol0", false);
                for i in 2..4u64 {
                    assert_eq!(c.write(i << 20, &pattern(50 + i, 4096)), 0, "write {i}");
                }
            }
            Step::SwitchToB => switch_to_b(&p),
        }
    }
    the_other_lost_serves(&mut p, serves, &w, what);
}

/// a hands the leadership to b, and b leads.
fn switch_to_b(p: &Pair) {
    let r = p.a.rpc_with(
        "mirror_switchover",
        serde_json::json!({"volume": "vol0", "to": "b", "wait_s": 10.0}),
    );
    assert!(r["error"].is_null(), "switchover: {r}");
    let t = Instant::now();
    while p.b.rpc("mirror_status")[0]["role"].as_str() != Some("leader") {
        assert!(t.elapsed() < Duration::from_secs(10), "b never led");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The follower b acknowledges W (applied, in its disk's cache), then loses its power; the
/// leader a serves alone; b comes back and is resynced; then a is lost: b must serve W.
#[test]
fn a_follower_losing_power_gets_back_every_acknowledged_write() {
    use {At::*, Step::*};
    scenario(
        "",
        41,
        &[Write(A), Lose(B), Back(B)],
        B,
        "the acknowledged W, lost with b's power, was never copied back to b",
    );
}

/// The survivor a resyncs the returning b with W (written while b was away); b's copy of W
/// is in its disk's cache when b says it is in sync, and b then loses its power; it comes
/// back, then a is lost: b must serve W.
#[test]
fn a_resync_target_losing_power_after_its_resync_gets_back_every_copy() {
    use {At::*, Step::*};
    scenario(
        "",
        42,
        &[Lose(B), Write(A), Back(B), Lose(B), Back(B)],
        B,
        "the resync's copy of W, lost with b's power, was never copied again",
    );
}

/// The survivor a writes W alone (in its disk's cache), resyncs the returning b and mirrors
/// again, then loses its power; b serves alone meanwhile; a comes back and is resynced; then b
/// is lost: a must serve W.
#[test]
fn a_resync_source_losing_power_after_its_resync_keeps_what_it_wrote_alone() {
    use {At::*, Step::*};
    scenario(
        "",
        44,
        &[Lose(B), Write(A), Back(B), Lose(A), Back(A)],
        A,
        "W, written alone at a and lost with its power, was never copied back to a",
    );
}

/// The leader a's activity log holds two 1 MiB extents: after W (extent 1) come writes to
/// extents 2 and 3, so W's extent leaves the log; then a loses its power; b serves alone; a
/// comes back and is reconciled over its log's extents; then b is lost: a must serve W.
#[test]
fn a_leader_losing_power_keeps_the_writes_of_extents_its_log_dropped() {
    use {At::*, Step::*};
    scenario(
        "activity_log_extent='1MiB'\nactivity_log_extents=2\n",
        45,
        &[Write(A), More, Lose(A), Back(A)],
        A,
        "W, lost with a's power after its extent left a's log, was never copied back to a",
    );
}

/// a (leader) acknowledges W, hands the leadership to b, then loses its power; b serves
/// alone; a comes back (a follower) and is reconciled; then b is lost: a must serve W.
#[test]
fn an_old_leader_losing_power_after_a_switchover_keeps_what_it_applied() {
    use {At::*, Step::*};
    scenario(
        "",
        46,
        &[Write(A), SwitchToB, Lose(A), Back(A)],
        A,
        "W, applied at a as leader and lost with its power after the switchover, was never copied back",
    );
}

/// a hands the leadership to b; W is then written through b (ordered by b) or through a
/// (forwarded to b), acknowledged, in a's disk's cache only; a loses its power right after; b
/// serves alone; a comes back (the follower of b's term: it sends SWITCH only once that is
/// on disk) and is resynced with what b recorded as acknowledged by a and not flushed there;
/// then b is lost: a must serve W. (The window in which a's state was not on disk yet, SWITCH
/// already sent, is closed by the engine; engine test
/// `actlog::an_old_leader_losing_power_after_its_switch_gets_back_what_b_ordered`.)
#[test]
fn an_old_leader_losing_power_after_a_switchover_gets_back_what_the_new_leader_acknowledged() {
    use {At::*, Step::*};
    for (seed, through) in [(47, B), (48, A)] {
        scenario(
            "",
            seed,
            &[SwitchToB, Write(through), Lose(A), Back(A)],
            A,
            "W, acknowledged under b's leadership and lost with a's power, was never copied back to a",
        );
    }
}

/// A clean stop of both sites writes their caches back: the files are the same. (The mirror's
/// clean-stop flush is an `fdatasync` of the replica's path, which does not reach this
/// device's RAM: what this checks is that the device is dropped, and writes back, at a clean
/// exit. A flush of the replica through the device stack at the stop is not built.)
#[test]
fn a_clean_stop_behind_a_volatile_cache_keeps_both_replicas_equal() {
    let mut p = pair(true, CACHE, CACHE);
    let w = pattern(43, 65536);
    write_w(&mut p, At::B, &w);
    assert!(p.a.stop() && p.b.stop(), "a clean stop failed");
    let a = std::fs::read(p.root.path().join("a.img")).unwrap();
    assert!(
        a[W_AT as usize..W_AT as usize + w.len()] == w[..],
        "the clean stop lost W"
    );
    same_files(
        &p.root.path().join("a.img"),
        &p.root.path().join("b.img"),
        "replicas differ after a clean stop",
    );
}

/// Both sites lose their power at once, after three writes a host made durable: W1 through a
/// and flushed there, W2 through b and flushed there, W3 through a with FUA. A write the host
/// never flushed may be lost then (as on one disk); these may not, at either site.
#[test]
fn both_sites_losing_power_keep_every_write_a_host_made_durable() {
    use twinblk::frontend::nbd::proto::{cflag, cmd};
    let mut p = pair(true, CACHE, CACHE);
    let (w1, w2, w3) = (pattern(61, 8192), pattern(62, 8192), pattern(63, 8192));
    let mut ca = Client::connect(p.a.addr, "vol0", false);
    let mut cb = Client::connect(p.b.addr, "vol0", false);
    assert_eq!(ca.write(W_AT, &w1), 0, "W1");
    assert_eq!(ca.flush(), 0, "a's flush");
    assert_eq!(cb.write(2 * W_AT, &w2), 0, "W2");
    assert_eq!(cb.flush(), 0, "b's flush");
    ca.send_request(cmd::WRITE, cflag::FUA, 7, 3 * W_AT, 8192, &w3);
    assert_eq!(ca.read_reply(0).1, 0, "W3");
    drop((ca, cb));
    p.a.kill();
    p.b.kill();
    kill_and_free_port(&mut p.a);
    kill_and_free_port(&mut p.b);
    p.a.respawn_in_place();
    p.b.respawn_in_place();
    wait_in_sync_released(&p);
    for (s, name) in [(&p.a, "a"), (&p.b, "b")] {
        for (at, w, what) in [(1, &w1, "W1"), (2, &w2, "W2"), (3, &w3, "W3")] {
            assert!(
                read_at(s, at * W_AT, 8192) == *w,
                "{what}, made durable by the host, is lost at {name} after both lost their power"
            );
        }
    }
}

/// a's host loses its power while the witness is out of reach: b, not granted, fences. a's
/// disk dropped W (acknowledged by both, flushed by neither); b's kept it. a comes back on a
/// host with another boot id (`boot_id_file`), so it knows its disk may have dropped writes:
/// the fenced b's copy wins, and both serve W. (A restarted process on the same boot is
/// trusted instead: its disk lost nothing.)
#[test]
fn a_site_losing_power_while_its_peer_fenced_gets_the_fenced_copy_back() {
    let mut p = pair(true, CACHE, CACHE);
    let w = pattern(47, 8192);
    write_w(&mut p, At::A, &w);
    p.w.take().expect("a witness").kill();
    p.a.kill();
    wait_mirror_state(&p.b, "fenced", Duration::from_secs(10));
    // a's host comes back with a new boot id.
    let boot = p.root.path().join("boot_id-a");
    std::fs::write(&boot, "6f1c9a52-0d3e-4b7a-9c11-2e5d8f4a7b60\n").unwrap();
    let text = std::fs::read_to_string(&p.a.config).unwrap();
    let text = text.replacen(
        "[mirror]\n",
        &format!("[mirror]\nboot_id_file='{}'\n", boot.display()),
        1,
    );
    std::fs::write(&p.a.config, text).unwrap();
    kill_and_free_port(&mut p.a);
    p.a.respawn_in_place();
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    for (s, name) in [(&p.a, "a"), (&p.b, "b")] {
        assert!(
            read_at(s, W_AT, w.len() as u32) == w,
            "W, acknowledged by both and dropped by a's disk, is lost at {name}"
        );
    }
}
