//! Power loss at one site of a mirrored pair: both replicas sit behind a simulated volatile
//! write cache (`volatile_cache`, bdev/cached.rs), so a site killed with SIGKILL loses every
//! write its disk had not flushed, as a disk does when the power goes. A write acknowledged
//! to a host is on both replicas but durable on neither until a flush; the site that keeps
//! its power must make sure the one that lost it gets back whatever it may have lost. Each
//! test ends by losing the other site and reading the acknowledged write back at the one
//! that lost its power.

use crate::harness::{pattern, same_files, wait_mirror_state};
use crate::rawnbd::Client;
use crate::slow_local::{pair, read_at, respawn};
use std::time::{Duration, Instant};

/// Wait until `s` and its peer are in sync and the survivor's grant is released at the
/// witness (until then, losing the former survivor stops the volume: the witness cannot tell
/// it from a survivor still acknowledging alone).
fn wait_in_sync_released(p: &crate::slow_local::Pair) {
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

/// The follower b acknowledges W (applied, in its disk's cache), then loses its power; the
/// leader a serves alone; b comes back and is resynced; then a is lost: b must serve W.
#[test]
fn a_follower_losing_power_gets_back_every_acknowledged_write() {
    let mut p = pair(true, CACHE, CACHE);
    let w = pattern(41, 8192);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(W_AT, &w), 0, "W failed");
    drop(c);
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(5));
    p.b = respawn(p.b);
    wait_in_sync_released(&p);
    p.a.kill();
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    assert!(
        read_at(&p.b, W_AT, 8192) == w,
        "the acknowledged W, lost with b's power, was never copied back to b"
    );
}

/// The survivor a resyncs the returning b with W (written while b was away); b's copy of W
/// is in its disk's cache when b says it is in sync, and b then loses its power; it comes
/// back, then a is lost: b must serve W.
#[test]
fn a_resync_target_losing_power_after_its_resync_gets_back_every_copy() {
    let mut p = pair(true, CACHE, CACHE);
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(5));
    let w = pattern(42, 8192);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(W_AT, &w), 0, "W failed at the survivor");
    drop(c);
    p.b = respawn(p.b);
    wait_mirror_state(&p.a, "up", Duration::from_secs(10));
    wait_mirror_state(&p.b, "up", Duration::from_secs(10));
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(5));
    p.b = respawn(p.b);
    wait_in_sync_released(&p);
    p.a.kill();
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    assert!(
        read_at(&p.b, W_AT, 8192) == w,
        "the resync's copy of W, lost with b's power, was never copied again"
    );
}

/// A clean stop of both sites writes their caches back: the files are the same.
#[test]
fn a_clean_stop_behind_a_volatile_cache_keeps_both_replicas_equal() {
    let mut p = pair(true, CACHE, CACHE);
    let w = pattern(43, 65536);
    let mut c = Client::connect(p.b.addr, "vol0", false);
    assert_eq!(c.write(W_AT, &w), 0, "W failed");
    drop(c);
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

/// The survivor a writes W alone (in its disk's cache), resyncs the returning b and mirrors
/// again, then loses its power; b serves alone meanwhile; a comes back and is resynced; then b
/// is lost: a must serve W.
#[test]
fn a_resync_source_losing_power_after_its_resync_keeps_what_it_wrote_alone() {
    let mut p = pair(true, CACHE, CACHE);
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(5));
    let w = pattern(44, 8192);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(W_AT, &w), 0, "W failed at the survivor");
    drop(c);
    p.b = respawn(p.b);
    wait_in_sync_released(&p);
    p.a.kill();
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    p.a = respawn(p.a);
    wait_in_sync_released(&p);
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(10));
    assert!(
        read_at(&p.a, W_AT, 8192) == w,
        "W, written alone at a and lost with its power, was never copied back to a"
    );
}

/// The leader a's activity log holds two 1 MiB extents: after W (extent 1) come writes to
/// extents 2 and 3, so W's extent leaves the log; then a loses its power; b serves alone; a
/// comes back and is reconciled over its log's extents; then b is lost: a must serve W.
#[test]
fn a_leader_losing_power_keeps_the_writes_of_extents_its_log_dropped() {
    let log = "activity_log_extent='1MiB'\nactivity_log_extents=2\n";
    let mut p = crate::slow_local::pair_with(true, log, CACHE, CACHE);
    let w = pattern(45, 8192);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(W_AT, &w), 0, "W failed");
    for i in 2..4u64 {
        assert_eq!(
            c.write(i << 20, &pattern(50 + i, 4096)),
            0,
            "write {i} failed"
        );
    }
    drop(c);
    p.a.kill();
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    p.a = respawn(p.a);
    wait_in_sync_released(&p);
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(10));
    assert!(
        read_at(&p.a, W_AT, 8192) == w,
        "W, lost with a's power after its extent left a's log, was never copied back to a"
    );
}

/// a (leader) acknowledges W, hands the leadership to b, then loses its power; b serves
/// alone; a comes back (a follower) and is reconciled; then b is lost: a must serve W.
#[test]
fn an_old_leader_losing_power_after_a_switchover_keeps_what_it_applied() {
    let mut p = pair(true, CACHE, CACHE);
    let w = pattern(46, 8192);
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(W_AT, &w), 0, "W failed");
    drop(c);
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
    p.a.kill();
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    p.a = respawn(p.a);
    wait_in_sync_released(&p);
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(10));
    assert!(
        read_at(&p.a, W_AT, 8192) == w,
        "W, applied at a as leader and lost with its power after the switchover, was never copied back"
    );
}
