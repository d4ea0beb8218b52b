//! A site that crashes while in sync and restarts at once (before any failover): its next
//! session must reconcile the updates it (or its peer) applied without the other's
//! confirmation, so that both replicas end byte-identical and both sites read the same data.
//! The activity log (engine/actlog.rs) keeps that copy small.
//!
//! Model: two engines back to back (tests/mod.rs) with state files in a temporary directory
//! and file-like replicas (the `Disk` outlives the engine). A *crash* forgets the engine
//! without its clean stop (nothing more is written) and drops the local writes it still had
//! pending (they never reach the replica); a *restart* builds a new engine over the same disk
//! and restores it from the state files. The test drives the handshake itself
//! (`reconnect`), as the link would.

use super::*;
use crate::layer::mirror::persist::Persister;

/// Releases a held persister when dropped (also when the test fails).
pub(super) struct Unhold(pub(super) Arc<Persister>);

impl Drop for Unhold {
    fn drop(&mut self) {
        self.0.hold(false);
    }
}

/// Site `a`, leading in sync, is asked to hand the leadership over with its persister `p`
/// held: it drains at once and then waits in `handing` for "follower of term 1" to reach the
/// disk. The guard releases `p` when dropped.
pub(super) fn start_held_hand_over(a: &mut Site, io: &mut IoCx, p: &Arc<Persister>) -> Unhold {
    use crate::layer::mirror::stats::SWITCH_GIVE;
    use std::sync::atomic::Ordering::Relaxed;
    p.hold(true);
    let unhold = Unhold(Arc::clone(p));
    a.engine.stats().switch_req.store(SWITCH_GIVE, Relaxed);
    a.engine.tick(io, Instant::now());
    assert!(
        matches!(
            a.engine.sw.phase,
            super::super::switchover::Phase::Handing { .. }
        ),
        "a does not wait for its new role on disk: {:?}",
        a.engine.sw.phase
    );
    unhold
}

/// Activity log extents in these tests: 4 KiB, at most 8 (the volume has 16).
const EXTENT: u64 = 4096;
const EXTENTS: u32 = 8;

/// A site with its state file (and activity log) in `dir`.
fn stateful(role: Role, dir: &std::path::Path) -> Site {
    stateful_with(role, dir, true)
}

/// The same, with the activity log switched on or off.
fn stateful_with(role: Role, dir: &std::path::Path, log: bool) -> Site {
    stateful_on(role, dir, log, Persister::spawn().expect("persister"))
}

/// The same, with the persister `p`.
fn stateful_on(role: Role, dir: &std::path::Path, log: bool, p: Arc<Persister>) -> Site {
    let mut s = site(role, Duration::from_secs(3600));
    let name = if role == Role::Leader { "a" } else { "b" };
    s.engine.cfg.state_file = Some(dir.join(format!("{name}.mirror-state")));
    s.engine.cfg.actlog = ActLogConfig {
        enabled: log,
        extent: EXTENT,
        extents: EXTENTS,
    };
    s.engine.al = super::super::actlog::ActLog::new(&s.engine.cfg);
    s.engine.set_persister(p);
    s.engine.restore().expect("restore");
    s
}

/// The site stops cleanly (the engine's drop) and starts again from its state files over the
/// same replica.
fn stop_and_restart(s: &mut Site) {
    stop_and_restart_on(s, Persister::spawn().expect("persister"));
}

/// The same, the new engine with the persister `p`.
fn stop_and_restart_on(s: &mut Site, p: Arc<Persister>) {
    let fresh = Engine::new(
        s.engine.cfg.clone(),
        Box::new(SlowChannel(Rc::clone(&s.disk))),
        0,
        Arc::new(MirrorStats::default()),
    );
    drop(std::mem::replace(&mut s.engine, fresh));
    s.engine.set_persister(p);
    s.engine.restore().expect("restore after a clean stop");
}

/// The follower dials the leader: both learn the other's incarnation and replica state and
/// start the session (the leader first).
fn reconnect(a: &mut Site, b: &mut Site, io: &mut IoCx) {
    a.engine.link_down("test");
    b.engine.link_down("test");
    a.wire.clear();
    b.wire.clear();
    let (sa, sb) = (a.engine.replica_state(), b.engine.replica_state());
    a.engine.set_peer_incarnation(b.engine.incarnation());
    b.engine.set_peer_incarnation(a.engine.incarnation());
    a.engine.session_start(io, sb).expect("session at a");
    b.engine.session_start(io, sa).expect("session at b");
}

/// As [`reconnect`], each site's leadership word (HELLO's, WELCOME's) taken before either
/// starts its session, so the sites agree on the leader as the link's handshake makes them.
fn reconnect_agreeing(a: &mut Site, b: &mut Site, io: &mut IoCx) {
    a.engine.link_down("test");
    b.engine.link_down("test");
    a.wire.clear();
    b.wire.clear();
    let (sa, sb) = (a.engine.replica_state(), b.engine.replica_state());
    let (la, lb) = (a.engine.leadership(), b.engine.leadership());
    a.engine.set_peer_incarnation(b.engine.incarnation());
    b.engine.set_peer_incarnation(a.engine.incarnation());
    a.engine.start_session(io, sb, lb).expect("session at a");
    b.engine.start_session(io, sa, la).expect("session at b");
}

/// Tick both sites until the leader's activity log has admitted what waits for it.
fn pump(a: &mut Site, b: &mut Site, io: &mut IoCx) {
    for _ in 0..50 {
        a.engine.wait_actlog_persisted();
        b.engine.wait_actlog_persisted();
        let now = Instant::now();
        a.engine.tick(io, now);
        b.engine.tick(io, now);
    }
}

fn same_replicas(a: &Site, b: &Site) -> bool {
    a.disk.borrow().bytes == b.disk.borrow().bytes
}

/// Both sites in sync, one acknowledged write (0x11 over the first 8 KiB) on both.
fn in_sync_pair(dir: &std::path::Path) -> (Site, Site, IoCx, Rng, u32) {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(31);
    let mut a = stateful(Role::Leader, dir);
    let mut b = stateful(Role::Follower, dir);
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 0, 0x11, 8192);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1, 0));
    (a, b, io, rng, slot)
}

/// The leader crashes while in sync holding updates only one site has, and restarts before
/// the follower could fail over: a write it applied that the follower never received
/// (0xA1), and a forward of the follower it ordered but had not applied yet (0xB1, on the
/// follower only). After the next session the replicas must be byte-identical, both sites
/// must serve reads, and the acknowledged write must be intact.
#[test]
fn a_leader_that_crashed_in_sync_and_restarted_at_once_is_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    // The follower's forward: ordered by the leader and applied at the follower; the
    // leader's own apply of it is still pending when it crashes.
    write_at(&mut b, &mut io, &mut slot, 32768, 0xB1, 4096);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    pump(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    while complete_one(&mut b, &mut io, &mut rng) {}
    assert_eq!(
        b.disk.borrow().bytes[32768],
        0xB1,
        "not applied at the follower"
    );
    // The leader's write: applied at the leader, never sent on (the link dies with it).
    write_at(&mut a, &mut io, &mut slot, 16384, 0xA1, 4096);
    pump(&mut a, &mut b, &mut io);
    let pending: Vec<_> = a.disk.borrow().pending.iter().map(|p| p.1).collect();
    assert_eq!(pending.len(), 2, "the leader's two applies: {pending:?}");
    let i = a
        .disk
        .borrow()
        .pending
        .iter()
        .position(|p| p.1 == 16384)
        .unwrap();
    let (s, o, d, _) = a.disk.borrow_mut().pending.swap_remove(i);
    a.disk.borrow_mut().bytes[o as usize..o as usize + 4096].copy_from_slice(&d.unwrap());
    a.engine.apply_finished(&mut io, s as usize, Ok(()), &[]);
    assert!(a.disk.borrow().bytes[16384] == 0xA1 && b.disk.borrow().bytes[16384] == 0);
    assert!(a.disk.borrow().bytes[32768] == 0 && b.disk.borrow().bytes[32768] == 0xB1);
    // Crash and restart the leader; the follower sees the link drop and is redialled at
    // once.
    crash_and_restart(&mut a);
    // It knows it stopped uncleanly, and which extents to reconcile: those its log held
    // (the acknowledged write's two, and the two updates' ones), not the whole volume.
    assert_eq!(a.engine.replica_state(), 5);
    assert_eq!(a.engine.suspect_bytes(), 4 * EXTENT);
    b.engine.link_down("test");
    reconnect(&mut a, &mut b, &mut io);
    // The follower (it kept running) is the source: the leader serves nothing meanwhile.
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Resyncing, Mode::Survivor)
    );
    assert!(!a.engine.may_read(Instant::now()));
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut b);
    let copied = b
        .engine
        .stats()
        .resync_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    // The four logged extents (the follower's held forward's region, dirty at the source
    // from the start, may be copied once more when the leader's list names it), not the
    // whole volume (16 extents).
    assert!(
        (4 * EXTENT..=5 * EXTENT).contains(&copied),
        "copied {copied} bytes for 4 logged extents"
    );
    assert_eq!(a.engine.replica_state(), 0);
    assert!(
        same_replicas(&a, &b),
        "the replicas differ after the leader's crash: a has {:#x}/{:#x}, b {:#x}/{:#x} at \
         16384/32768",
        a.disk.borrow().bytes[16384],
        a.disk.borrow().bytes[32768],
        b.disk.borrow().bytes[16384],
        b.disk.borrow().bytes[32768]
    );
    assert!(a.disk.borrow().bytes[..8192].iter().all(|&x| x == 0x11));
    let now = Instant::now();
    assert!(a.engine.may_read(now) && b.engine.may_read(now));
    // Mirroring again: a new write reaches both.
    write_at(&mut a, &mut io, &mut slot, 49152, 0x22, 4096);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(same_replicas(&a, &b));
    assert_eq!(b.disk.borrow().bytes[49152], 0x22);
}

/// The follower crashes while in sync with updates of the leader applied (or being applied)
/// that it never acknowledged, and restarts at once: after the next session the replicas
/// are byte-identical.
#[test]
fn a_follower_that_crashed_in_sync_and_restarted_at_once_is_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    // Two writes of the leader reach the follower; it applies the first (its ACK never
    // leaves) and crashes with the second still pending.
    write_at(&mut a, &mut io, &mut slot, 16384, 0xA1, 4096);
    write_at(&mut a, &mut io, &mut slot, 24576, 0xA2, 4096);
    pump(&mut a, &mut b, &mut io);
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    let i = b
        .disk
        .borrow()
        .pending
        .iter()
        .position(|p| p.1 == 16384)
        .unwrap();
    let (s, o, d, _) = b.disk.borrow_mut().pending.swap_remove(i);
    b.disk.borrow_mut().bytes[o as usize..o as usize + 4096].copy_from_slice(&d.unwrap());
    b.engine.apply_finished(&mut io, s as usize, Ok(()), &[]);
    crash_and_restart(&mut b);
    // Its state file says it did not stop cleanly: the leader (it kept running) is the
    // source.
    assert_eq!(b.engine.replica_state(), 5);
    a.engine.link_down("test");
    reconnect(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut a);
    assert!(
        same_replicas(&a, &b),
        "the replicas differ after the follower's crash"
    );
    assert_eq!(b.disk.borrow().bytes[24576], 0xA2);
    assert!(b.disk.borrow().bytes[..8192].iter().all(|&x| x == 0x11));
    let now = Instant::now();
    assert!(a.engine.may_read(now) && b.engine.may_read(now));
}

/// The log holds at most `EXTENTS` extents: writing every extent of the volume in turn
/// drops the least recently used idle ones; the file on disk never holds more either.
#[test]
fn the_activity_log_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    let extents = SIZE / EXTENT;
    for i in 0..extents {
        write_at(&mut a, &mut io, &mut slot, i * EXTENT, i as u8 + 1, 4096);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert!(a.engine.actlog_len() <= EXTENTS as usize, "extent {i}");
    }
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1 + extents as usize, 0));
    assert!(same_replicas(&a, &b));
    a.engine.wait_actlog_persisted();
    let path = actlog_path(a.engine.cfg.state_file.as_ref().unwrap());
    let crate::layer::mirror::alfile::AlLoad::Valid(s) = crate::layer::mirror::alfile::load(&path)
    else {
        panic!("no valid activity log");
    };
    // The most recently written ones, in order.
    let want: Vec<u64> = (extents - EXTENTS as u64..extents).collect();
    assert_eq!((s.extents, s.extent, s.clean), (want, EXTENT, false));
}

/// An extent leaves the log only once the leader's replica has flushed the updates written
/// to it (a power loss would drop them from its device's cache, and a reconciliation copies
/// back only the log's extents): when the log is full of extents whose writes are not known
/// durable, the leader flushes its replica itself, then drops the oldest.
#[test]
fn an_extent_leaves_the_log_only_once_the_leaders_replica_flushed_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    let before = a.disk.borrow().flushes;
    // Fills the log (extent 0 holds the first write already).
    for i in 1..EXTENTS as u64 {
        write_at(&mut a, &mut io, &mut slot, i * EXTENT, 0x40 + i as u8, 4096);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    }
    assert_eq!(a.engine.actlog_len(), EXTENTS as usize);
    assert_eq!(
        a.disk.borrow().flushes,
        before,
        "no flush while the log has room"
    );
    // One more extent: the others' writes are confirmed, but not flushed here.
    write_at(
        &mut a,
        &mut io,
        &mut slot,
        EXTENTS as u64 * EXTENT,
        0x4F,
        4096,
    );
    for _ in 0..20 {
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        pump(&mut a, &mut b, &mut io);
    }
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1 + EXTENTS as usize, 0));
    assert_eq!(
        a.disk.borrow().flushes,
        before + 1,
        "the leader flushed its replica once before dropping extents"
    );
    assert!(a.engine.actlog_len() <= EXTENTS as usize);
    assert!(same_replicas(&a, &b));
}

/// A site that starts mirroring answers nothing before that state is on disk: a power loss
/// right after would restart it from the state before (here the follower's first start:
/// no state yet; after a clean stop, one that reconciles nothing). The follower's own
/// persister is held; its initiator's write is applied at both sites but answered only once
/// the follower's "mirroring" is written.
#[test]
fn a_site_that_starts_mirroring_answers_only_once_that_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(43);
    let pb = Persister::spawn().unwrap();
    let mut a = stateful(Role::Leader, dir.path());
    let mut b = stateful_on(Role::Follower, dir.path(), true, Arc::clone(&pb));
    pb.hold(true);
    let _unhold = Unhold(Arc::clone(&pb));
    reconnect(&mut a, &mut b, &mut io);
    let mut slot = 0;
    write_at(&mut b, &mut io, &mut slot, 0, 0x11, 4096);
    for _ in 0..50 {
        pump(&mut a, &mut b, &mut io);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
        std::thread::sleep(ACK_WINDOW);
    }
    collect(&mut b);
    assert_eq!(b.disk.borrow().bytes[0], 0x11, "applied at the follower");
    assert_eq!(b.ok, 0, "answered before 'mirroring' was on disk");
    pb.hold(false);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut b);
    assert_eq!(b.ok, 1);
}

/// An update to an extent not in the log waits (neither sent nor applied) until the log's
/// new version is on disk; one to an extent already logged goes at once.
#[test]
fn an_update_to_a_new_extent_waits_for_the_log_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(41);
    let p = Persister::spawn().unwrap();
    let mut a = stateful(Role::Leader, dir.path());
    a.engine.set_persister(Arc::clone(&p));
    let mut b = stateful(Role::Follower, dir.path());
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 0, 0x11, 4096);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    p.hold(true);
    let _unhold = Unhold(Arc::clone(&p));
    // A new extent: held back.
    write_at(&mut a, &mut io, &mut slot, 3 * EXTENT, 0x33, 4096);
    for _ in 0..20 {
        a.engine.tick(&mut io, Instant::now());
        std::thread::sleep(Duration::from_millis(1));
    }
    a.engine.take_outbox(&mut a.wire);
    let mut at = 0;
    while let wire::Decoded::Msg(h, r) = wire::decode(&a.wire[at..]) {
        assert_ne!(h.ty, wire::Type::Write, "sent before its extent was logged");
        at += r.end;
    }
    a.wire.clear();
    assert!(
        a.disk.borrow().pending.is_empty(),
        "applied before its extent was logged"
    );
    assert!(a.engine.actlog_deadline(Instant::now()).is_some());
    // The disk catches up: it goes.
    p.hold(false);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(b.disk.borrow().bytes[3 * EXTENT as usize], 0x33);
    // A logged extent: at once, even with the disk held.
    p.hold(true);
    write_at(&mut a, &mut io, &mut slot, 3 * EXTENT + 512, 0x34, 512);
    assert_eq!(a.disk.borrow().pending.len(), 1, "a logged extent waited");
    p.hold(false);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (3, 0));
    assert!(same_replicas(&a, &b));
}

/// A clean stop leaves the log empty (marked clean), and the restarted leader mirrors at
/// once, with nothing to reconcile.
#[test]
fn a_clean_stop_leaves_the_activity_log_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    write_at(&mut a, &mut io, &mut slot, 5 * EXTENT, 0x55, 4096);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    // Flushed at both (as before an unmount): b's copy is durable, nothing is left suspect.
    flush_at(&mut a, &mut io, &mut slot);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.engine.actlog_len() > 0);
    let cfg = a.engine.cfg.clone();
    let path = actlog_path(cfg.state_file.as_ref().unwrap());
    let fresh = Engine::new(
        cfg,
        Box::new(SlowChannel(Rc::clone(&a.disk))),
        0,
        Arc::new(MirrorStats::default()),
    );
    // The clean stop (the engine's drop).
    drop(std::mem::replace(&mut a.engine, fresh));
    let crate::layer::mirror::alfile::AlLoad::Valid(s) = crate::layer::mirror::alfile::load(&path)
    else {
        panic!("no valid activity log");
    };
    assert!(s.extents.is_empty() && s.clean, "{s:?}");
    a.engine
        .set_persister(Persister::spawn().expect("persister"));
    a.engine.restore().unwrap();
    assert_eq!(a.engine.replica_state(), 0);
    assert_eq!(a.engine.suspect_bytes(), 0);
    b.engine.link_down("test");
    reconnect(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Mirroring, Mode::Mirroring)
    );
}

/// Both sites crash while in sync (each holding an update the other lacks) and restart:
/// the leader's copy wins, both logs' extents are copied.
#[test]
fn both_sites_crashed_in_sync_are_reconciled_from_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    // Ordered and applied at the follower; the leader's apply is lost with it.
    write_at(&mut b, &mut io, &mut slot, 32768, 0xB1, 4096);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    pump(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    while complete_one(&mut b, &mut io, &mut rng) {}
    assert_eq!(b.disk.borrow().bytes[32768], 0xB1);
    crash_and_restart(&mut a);
    crash_and_restart(&mut b);
    assert_eq!((a.engine.replica_state(), b.engine.replica_state()), (5, 5));
    reconnect(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(same_replicas(&a, &b));
    assert_eq!(b.disk.borrow().bytes[32768], 0, "the leader's copy wins");
    assert!(b.disk.borrow().bytes[..8192].iter().all(|&x| x == 0x11));
}

/// With the activity log switched off the leader still knows it crashed: the whole volume
/// (every region ever written) is reconciled.
#[test]
fn without_the_activity_log_a_crashed_leader_reconciles_everything_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(51);
    let mut a = stateful_with(Role::Leader, dir.path(), false);
    let mut b = stateful_with(Role::Follower, dir.path(), false);
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 0, 0x11, 4096);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(a.engine.actlog_len(), 1, "one extent: the whole volume");
    write_at(&mut a, &mut io, &mut slot, 16384, 0xA1, 4096);
    pump(&mut a, &mut b, &mut io);
    while complete_one(&mut a, &mut io, &mut rng) {}
    crash_and_restart(&mut a);
    assert_eq!(a.engine.replica_state(), 5);
    assert_eq!(a.engine.suspect_bytes(), SIZE);
    b.engine.link_down("test");
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(same_replicas(&a, &b));
}

/// The reconciliation's source writes alone while its survivor state is not on disk yet: the
/// write is applied only once it is (a crash before would leave nothing recording it), the
/// reconciliation does not finish before, and the write reaches the peer.
#[test]
fn a_write_at_the_reconciling_source_before_its_state_is_durable_reaches_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(61);
    let pb = Persister::spawn().unwrap();
    let mut a = stateful(Role::Leader, dir.path());
    let mut b = stateful_on(Role::Follower, dir.path(), true, Arc::clone(&pb));
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 16384, 0xA1, 4096);
    pump(&mut a, &mut b, &mut io);
    while complete_one(&mut a, &mut io, &mut rng) {}
    crash_and_restart(&mut a);
    pb.hold(true);
    let _unhold = Unhold(Arc::clone(&pb));
    b.engine.link_down("test");
    reconnect(&mut a, &mut b, &mut io);
    assert_eq!(b.engine.mode(), Mode::Survivor);
    write_at(&mut b, &mut io, &mut slot, 16384 + 512, 0xB2, 512);
    for _ in 0..200 {
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        complete_one(&mut a, &mut io, &mut rng);
        complete_one(&mut b, &mut io, &mut rng);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
    }
    assert_eq!(
        b.disk.borrow().bytes[16384 + 512],
        0,
        "applied alone before durable"
    );
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Resyncing, Mode::Survivor),
        "the reconciliation ended with a write not applied"
    );
    pb.hold(false);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut b);
    assert_eq!((b.ok, b.outstanding), (1, 0));
    assert!(same_replicas(&a, &b));
    assert_eq!(a.disk.borrow().bytes[16384 + 512], 0xB2);
}

/// A leader restarted after a crash in sync (state 5; 6 when its host restarted too), stopped
/// cleanly before its peer came back, starts again: still unclean, its log's extents still
/// to reconcile, and still known to have lost its host. (The clean stop saved state 5 as a
/// mode, which no start could read: the daemon did not start.)
#[test]
fn an_unclean_site_stopped_cleanly_before_its_reconciliation_starts_again_unclean() {
    for (boot, state) in [(1, 5), (2, 6)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _b, _io, _rng, _slot) = in_sync_pair(dir.path());
        a.engine.cfg.boot_id = boot;
        crash_and_restart(&mut a);
        assert_eq!(a.engine.replica_state(), state);
        let suspect = a.engine.suspect_bytes();
        // A clean stop, and a start in the same boot.
        stop_and_restart(&mut a);
        assert_eq!(a.engine.replica_state(), state);
        assert!(a.engine.suspect_bytes() >= suspect);
    }
}

/// One site's host loses its power while the pair is in sync: its disk drops an acknowledged
/// write W it had not flushed (both sites applied W). Its peer, which could not be granted
/// the volume (no witness answering), fenced. The restarted site finds another boot id, so it
/// announces state 6 and the fenced peer's copy wins: W is back at both sites. (State 5, a
/// crash of the process only, makes the restarted site the source: its stale copy of W's
/// region would overwrite the fenced site's.)
#[test]
fn a_site_whose_host_restarted_while_its_peer_fenced_gets_the_fenced_copy() {
    for lost in [Role::Leader, Role::Follower] {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
        let (off, w) = (3 * EXTENT, 0xA7);
        {
            let (down, _) = if lost == Role::Leader {
                (&a, &b)
            } else {
                (&b, &a)
            };
            // What its disk holds durably: everything before W (as after a flush).
            let durable = down.disk.borrow().bytes.clone();
            write_at(&mut a, &mut io, &mut slot, off, w, 4096);
            run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
            collect(&mut a);
            assert_eq!((a.ok, a.outstanding), (2, 0), "W acknowledged");
            let (down, up) = if lost == Role::Leader {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            // The link goes with the power; the other site, without a grant, fences.
            up.engine.link_down("test");
            up.engine.fence("test: no grant");
            assert!(up.engine.wait_persisted());
            // The host restarts: the disk kept only what was flushed.
            assert!(down.engine.wait_persisted());
            down.disk.borrow_mut().bytes = durable;
            down.engine.cfg.boot_id = 2;
            crash_and_restart(down);
            assert_eq!(down.engine.replica_state(), 6, "{lost:?}");
            assert_eq!(up.engine.replica_state(), 2, "{lost:?}");
        }
        reconnect(&mut a, &mut b, &mut io);
        pump(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_both_hold(&a, &b, off, w, |name| {
            format!("{lost:?} lost its power: the acknowledged W is gone at {name}")
        });
        assert!(same_replicas(&a, &b), "{lost:?}");
        assert_eq!(
            (a.engine.mode(), b.engine.mode()),
            (Mode::Mirroring, Mode::Mirroring)
        );
    }
}

/// Both sites crash in sync; the leader, the reconciliation's source (a survivor without a
/// grant, its log not yet emptied), stops cleanly before the copy ends: its state is saved as
/// a clean stop (the regions still to copy exact), not as a crash (every region ever
/// written, and a whole-volume resync).
#[test]
fn a_reconciliation_source_stopped_cleanly_keeps_its_exact_regions() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, _rng, _slot) = in_sync_pair(dir.path());
    crash_and_restart(&mut a);
    crash_and_restart(&mut b);
    reconnect(&mut a, &mut b, &mut io);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    let dirty = a.engine.dirty_bytes();
    assert!(dirty > 0 && dirty < SIZE, "{dirty}");
    stop_and_restart(&mut a);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    assert!(
        a.engine.dirty_bytes() <= dirty,
        "saved as a crash: {} dirty against {dirty}",
        a.engine.dirty_bytes()
    );
}

/// Both sites fence (the link cut, no witness answering either), then one site's host loses
/// its power: its disk drops an acknowledged write W it had not flushed (both sites applied W
/// before the cut; the other site keeps it). Restarted, the site is fenced (state 2) as its
/// peer, and two fenced sites reconcile from the leader: if the leader's host is the one that
/// restarted, its copy of W's region (stale: W gone) must not win, nor may it serve reads of
/// it. The power-loss rule (state 6) covered only a site stopped in sync. Failed before for
/// the leader: W was gone at both sites (its region neither suspect at the leader nor listed
/// by the follower), or the replicas differed.
#[test]
fn a_fenced_leader_whose_host_restarted_never_reconciles_its_stale_copy_over_the_peer() {
    for lost in [Role::Leader, Role::Follower] {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
        let (off, w) = (3 * EXTENT, 0xA7);
        {
            let durable = if lost == Role::Leader {
                a.disk.borrow().bytes.clone()
            } else {
                b.disk.borrow().bytes.clone()
            };
            write_at(&mut a, &mut io, &mut slot, off, w, 4096);
            run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
            collect(&mut a);
            assert_eq!((a.ok, a.outstanding), (2, 0), "W acknowledged");
            // The link is cut; neither site is granted the volume: both fence.
            for s in [&mut a, &mut b] {
                s.engine.link_down("test");
                s.engine.fence("test: no grant");
                assert!(s.engine.wait_persisted());
            }
            let down = if lost == Role::Leader { &mut a } else { &mut b };
            // The host restarts: the disk kept only what was flushed.
            down.disk.borrow_mut().bytes = durable;
            down.engine.cfg.boot_id = 2;
            crash_and_restart(down);
        }
        reconnect(&mut a, &mut b, &mut io);
        pump(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_both_hold(&a, &b, off, w, |name| {
            format!("{lost:?} lost its power while fenced: the acknowledged W is gone at {name}")
        });
        assert!(same_replicas(&a, &b), "{lost:?}: replicas differ");
        assert_eq!(
            (a.engine.mode(), b.engine.mode()),
            (Mode::Mirroring, Mode::Mirroring)
        );
    }
}

/// As `a_fenced_leader_whose_host_restarted_never_reconciles_its_stale_copy_over_the_peer`,
/// but the site restarted after its power loss is stopped cleanly (and started again in the
/// same boot) before its peer comes back: still state 6, its suspect regions kept, and its
/// stale copy never wins. (40e2dc8 read the power loss only from a state file written by an
/// unclean stop; the clean stop saved flags bit 2 but the next start ignored it for a fenced
/// site: it announced state 2, and two fenced sites reconcile from the leader.)
#[test]
fn a_fenced_site_whose_host_restarted_stays_state_6_across_a_clean_stop() {
    for lost in [Role::Leader, Role::Follower] {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
        let (off, w) = (3 * EXTENT, 0xA7);
        {
            let durable = if lost == Role::Leader {
                a.disk.borrow().bytes.clone()
            } else {
                b.disk.borrow().bytes.clone()
            };
            write_at(&mut a, &mut io, &mut slot, off, w, 4096);
            run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
            collect(&mut a);
            assert_eq!((a.ok, a.outstanding), (2, 0), "W acknowledged");
            for s in [&mut a, &mut b] {
                s.engine.link_down("test");
                s.engine.fence("test: no grant");
                assert!(s.engine.wait_persisted());
            }
            let down = if lost == Role::Leader { &mut a } else { &mut b };
            down.disk.borrow_mut().bytes = durable;
            down.engine.cfg.boot_id = 2;
            crash_and_restart(down);
            assert_eq!(
                down.engine.replica_state(),
                6,
                "{lost:?}: after the power loss"
            );
            let suspect = down.engine.suspect_bytes();
            // A clean stop, and a start in the same boot, before the peer is back.
            stop_and_restart(down);
            assert_eq!(
                down.engine.replica_state(),
                6,
                "{lost:?}: the power loss forgotten across a clean stop"
            );
            assert!(
                down.engine.suspect_bytes() >= suspect,
                "{lost:?}: suspect regions lost"
            );
        }
        reconnect(&mut a, &mut b, &mut io);
        pump(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_both_hold(&a, &b, off, w, |name| {
            format!("{lost:?} lost its power while fenced: the acknowledged W is gone at {name}")
        });
        assert!(same_replicas(&a, &b), "{lost:?}: replicas differ");
    }
}

/// A follower that holds a log file from a leadership before (here: one extent left in it)
/// is reconciled, and mirroring again empties that file (`al_mirroring`), which it never
/// writes again while it follows. It then loses its power in sync, its device dropping a
/// write both sites acknowledged (W): restarted, it must announce state 6 and get W back
/// from the leader. Before, its emptied log file counted as the proof of a clean stop (a
/// leader's log covers what it applied; a follower's says nothing of what it applied since),
/// so it announced 0 and mirrored with W gone from its replica: it served data older than an
/// acknowledged write.
#[test]
fn a_follower_whose_old_log_was_emptied_and_that_lost_its_power_gets_the_leaders_copy() {
    use crate::layer::mirror::alfile::{self, AlLoad, AlSnapshot};
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    let log = super::super::actlog::actlog_path(b.engine.cfg.state_file.as_ref().unwrap());
    let left = AlSnapshot {
        generation: 1,
        clean: false,
        extent: EXTENT,
        size: b.engine.cfg.size,
        extents: vec![5],
        slot_bytes: alfile::slot_bytes(EXTENTS),
    };
    alfile::save(&log, &left).unwrap();
    stop_and_restart(&mut b);
    assert_eq!(b.engine.replica_state(), 5, "the old log's extent not seen");
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(b.engine.mode(), Mode::Mirroring);
    assert!(b.engine.wait_actlog_persisted());
    assert!(
        matches!(alfile::load(&log), AlLoad::Valid(s) if s.extents.is_empty()),
        "the old log is not emptied once reconciled"
    );
    let (off, w) = (3 * EXTENT, 0xA7);
    let durable = b.disk.borrow().bytes.clone();
    write_at(&mut a, &mut io, &mut slot, off, w, 4096);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (2, 0), "W acknowledged");
    // The power goes at b: its disk kept only what was flushed; the leader sees the link drop.
    a.engine.link_down("test");
    b.disk.borrow_mut().bytes = durable;
    b.engine.cfg.boot_id = 2;
    crash_and_restart(&mut b);
    assert_eq!(
        b.engine.replica_state(),
        6,
        "a follower that lost its power announces itself as one that stopped cleanly"
    );
    reconnect(&mut a, &mut b, &mut io);
    pump(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_both_hold(&a, &b, off, w, |name| {
        format!("the acknowledged W is gone at {name}")
    });
    assert!(same_replicas(&a, &b), "replicas differ");
}

/// The leader is the target of a reconciliation from its peer (b, in sync, a fenced), which
/// acknowledges a write alone (W) and copies it; the leader restarts from its state saved
/// at the session start ("resyncing", 3) before it applied the copy, and b, its RESYNC_DONE
/// out but unconfirmed, is fenced (the witness's denial, stood in for here). When they meet,
/// the half-copied leader must not be the source: b holds W, and the pair must end with it.
#[test]
fn a_leader_restarted_in_the_middle_of_its_resync_is_never_the_source_of_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io, mut rng, mut slot) = in_sync_pair(dir.path());
    a.engine.link_down("test");
    a.engine.fence("test: no grant");
    assert!(a.engine.wait_persisted());
    reconnect(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Resyncing, Mode::Survivor)
    );
    assert!(b.engine.wait_persisted());
    let (off, w) = (3 * EXTENT, 0xA7);
    write_at(&mut b, &mut io, &mut slot, off, w, 4096);
    // b copies (W among the regions) and sends RESYNC_DONE; a never applies the copies.
    let mut sent = false;
    for _ in 0..2000 {
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        while complete_one(&mut b, &mut io, &mut rng) {}
        b.engine.wait_persisted();
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        if b.engine
            .resync
            .as_ref()
            .is_some_and(|r| r.awaiting_ack() && r.done_gate.is_none())
        {
            sent = true;
            break;
        }
    }
    assert!(sent, "RESYNC_DONE never sent");
    collect(&mut b);
    assert_eq!(b.ok, 1, "W acknowledged");
    assert_ne!(a.disk.borrow().bytes[off as usize], w, "W applied at a");
    // a restarts from its state (resyncing); b, unsure, is fenced.
    crash_and_restart(&mut a);
    b.engine.link_down("test");
    b.engine.tick(&mut io, Instant::now());
    assert_eq!(b.engine.mode(), Mode::Mirroring, "the source is unsure");
    b.engine.fence("test: the witness denied it");
    assert!(b.engine.wait_persisted());
    assert_eq!(
        (a.engine.replica_state(), b.engine.replica_state()),
        (3, 2),
        "the half-copied leader announces itself fenced (it would be the source of two fenced sites)"
    );
    reconnect(&mut a, &mut b, &mut io);
    pump(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_both_hold(&a, &b, off, w, |name| {
        format!(
            "the acknowledged W is gone at {name} (a announced {}, modes {:?}/{:?})",
            a.engine.replica_state(),
            a.engine.mode(),
            b.engine.mode()
        )
    });
    assert!(same_replicas(&a, &b), "replicas differ");
}

/// A follower restarted after a clean stop (its state "in sync, stopped cleanly") starts
/// mirroring; its "in sync, not stopped cleanly" is not on disk yet (its persister held)
/// when the leader's initiator writes W. The follower applies W but must not acknowledge it
/// to the leader before that state is on disk: a power loss in between would restart it from
/// the clean stop's state, announcing 0 (nothing to reconcile) without W, which its device
/// dropped, while the leader had acknowledged W to its host. (Only the follower's own
/// initiators' answers waited for that state; its ACK, which answers the leader's, did not.)
#[test]
fn a_site_that_starts_mirroring_acknowledges_the_peers_updates_only_once_that_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(47);
    let mut a = stateful(Role::Leader, dir.path());
    let mut b = stateful(Role::Follower, dir.path());
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    // b stops cleanly and starts again, its persister held from then on.
    let pb = Persister::spawn().unwrap();
    let fresh = Engine::new(
        b.engine.cfg.clone(),
        Box::new(SlowChannel(Rc::clone(&b.disk))),
        0,
        Arc::new(MirrorStats::default()),
    );
    drop(std::mem::replace(&mut b.engine, fresh));
    b.engine.set_persister(Arc::clone(&pb));
    b.engine.restore().expect("restore");
    assert_eq!(b.engine.replica_state(), 0);
    pb.hold(true);
    let _unhold = Unhold(Arc::clone(&pb));
    reconnect(&mut a, &mut b, &mut io);
    assert_eq!(b.engine.mode(), Mode::Mirroring);
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 0, 0x11, 4096);
    for _ in 0..50 {
        pump(&mut a, &mut b, &mut io);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
        std::thread::sleep(ACK_WINDOW);
    }
    collect(&mut a);
    assert_eq!(b.disk.borrow().bytes[0], 0x11, "applied at the follower");
    assert_eq!(
        a.ok, 0,
        "acknowledged before the follower's 'in sync, not stopped cleanly' was on disk"
    );
    pb.hold(false);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut a);
    assert_eq!(a.ok, 1);
}

/// Both sites' replicas hold W (`w` repeated over the 4 KiB at `off`); `what` names the
/// failure for a site.
fn assert_both_hold(a: &Site, b: &Site, off: u64, w: u8, what: impl Fn(&str) -> String) {
    for (s, name) in [(a, "a"), (b, "b")] {
        let d = s.disk.borrow();
        assert!(
            d.bytes[off as usize..off as usize + 4096]
                .iter()
                .all(|&x| x == w),
            "{}",
            what(name)
        );
    }
}

/// A link cut while the old leader waits for its "follower of term 1" to reach the disk
/// (`Handing`) ends the phase, but not the wait: until that state is durable the site must not
/// start a session (the link asks `leadership_durable` before it sends or answers a HELLO), or
/// it would apply the new leader's updates as its follower while its file still says "leader
/// of term 0", and a power loss would restart it as that leader with nothing covering them
/// (a review found it: the phase went back to idle at the cut and nothing else waited).
#[test]
fn a_link_cut_during_the_hand_over_starts_no_session_before_the_new_role_is_on_disk() {
    use crate::layer::mirror::stats::SWITCH_GIVE;
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(239);
    let p = Persister::spawn().unwrap();
    let mut a = stateful_on(Role::Leader, dir.path(), true, Arc::clone(&p));
    let mut b = stateful(Role::Follower, dir.path());
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.engine.wait_persisted());
    assert!(a.engine.leadership_durable(), "nothing handed over yet");
    p.hold(true);
    let _unhold = Unhold(Arc::clone(&p));
    a.engine.stats().switch_req.store(SWITCH_GIVE, Relaxed);
    for _ in 0..200 {
        a.engine.tick(&mut io, Instant::now());
        if matches!(
            a.engine.sw.phase,
            super::super::switchover::Phase::Handing { .. }
        ) {
            break;
        }
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        b.engine.tick(&mut io, Instant::now());
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    }
    assert!(
        matches!(
            a.engine.sw.phase,
            super::super::switchover::Phase::Handing { .. }
        ),
        "a never handed over"
    );
    assert!(
        !a.engine.leadership_durable(),
        "handing, the new role not on disk"
    );
    a.engine
        .link_down("test: the link cut during the hand-over");
    b.engine
        .link_down("test: the link cut during the hand-over");
    assert_eq!(a.engine.sw.phase, super::super::switchover::Phase::Idle);
    assert!(
        !a.engine.leadership_durable(),
        "a session may start on a role the disk does not hold"
    );
    p.hold(false);
    assert!(a.engine.wait_persisted());
    assert!(
        a.engine.leadership_durable(),
        "the new role is on disk: sessions may start again"
    );
    let st = crate::layer::mirror::state::load(&a.engine.cfg.state_file.clone().unwrap())
        .unwrap()
        .unwrap();
    assert!(
        !st.leads.is_some_and(|(t, l)| l && t == 0),
        "the state on disk still says leader of term 0: {:?}",
        st.leads
    );
}

/// A planned switchover from a (leader of term 0) to b; writes are then acknowledged under
/// b's leadership through both sites (W1 ordered by b, W2 forwarded by a), in a's device cache
/// only. a loses its power right after its SWITCH went out: its state and activity log files
/// are what was on disk then (a's persister is held, as a slow `fsync`, until after the SWITCH
/// or, if the SWITCH waits for it, for a while first), its device keeps what it had before the
/// switchover, and it restarts on another boot. `clean_first`: a was stopped cleanly and
/// restarted just before (its log empty and clean), else its log holds W0's extents.
/// `killed`: a's process only (the same boot, its device kept). b kept running, its link lost;
/// `b_fenced`: b fenced meanwhile (the witness out of its reach: two fenced sites reconcile
/// from the leader, and a must not be the source).
/// When they meet, the agreement must make b the leader (term 1), and both sites must hold W1
/// and W2 with identical replicas (so a serves them after a later failover to it). Failed
/// before with `clean_first` and the power lost: SWITCH went before "follower of term 1" was on
/// disk, a restarted as the leader of term 0 with an empty, clean log, announced state 0 and
/// mirrored with W1 and W2 gone from its replica.
#[test]
fn an_old_leader_losing_power_after_its_switch_gets_back_what_b_ordered() {
    use crate::layer::mirror::stats::SWITCH_GIVE;
    use std::sync::atomic::Ordering::Relaxed;
    for (clean_first, killed, b_fenced) in [
        (true, false, false),
        (true, false, true),
        (false, false, false),
        (true, true, false),
        (true, true, true),
    ] {
        let what = format!("clean_first {clean_first} killed {killed} b_fenced {b_fenced}");
        let dir = tempfile::tempdir().unwrap();
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let mut rng = Rng(233);
        let p = Persister::spawn().unwrap();
        let mut a = stateful_on(Role::Leader, dir.path(), true, Arc::clone(&p));
        let mut b = stateful(Role::Follower, dir.path());
        reconnect(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        let mut slot = 0;
        write_at(&mut a, &mut io, &mut slot, 0, 0x11, 8192);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        if clean_first {
            stop_and_restart_on(&mut a, Arc::clone(&p));
            reconnect(&mut a, &mut b, &mut io);
            run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
            assert_eq!(a.engine.mode(), Mode::Mirroring, "{what}");
        }
        assert!(a.engine.wait_persisted());
        assert!(a.engine.wait_actlog_persisted());
        let state = a.engine.cfg.state_file.clone().unwrap();
        let log = super::super::actlog::actlog_path(&state);
        // (A clean stop flushed a's device: all of it is durable now.)
        let durable = a.disk.borrow().bytes.clone();
        // The switchover, a's state writes held back.
        p.hold(true);
        let _unhold = Unhold(Arc::clone(&p));
        a.engine.stats().switch_req.store(SWITCH_GIVE, Relaxed);
        let mut at_switch = None;
        for i in 0..400 {
            let now = Instant::now();
            a.engine.tick(&mut io, now);
            if at_switch.is_none()
                && matches!(
                    a.engine.sw.phase,
                    super::super::switchover::Phase::Handed { .. }
                )
            {
                // SWITCH is in a's outbox: the power may go from now on.
                at_switch = Some((std::fs::read(&state).unwrap(), std::fs::read(&log).ok()));
                p.hold(false);
            }
            if i == 100 {
                p.hold(false);
            }
            deliver(&mut a, &mut b, &mut io, usize::MAX);
            b.engine.tick(&mut io, now);
            b.engine.wait_persisted();
            deliver(&mut b, &mut a, &mut io, usize::MAX);
            while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng)
            {
            }
            if at_switch.is_some()
                && b.engine.leads()
                && b.engine.sw.phase == super::super::switchover::Phase::Idle
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (state_at_switch, log_at_switch) = at_switch.expect("no SWITCH");
        assert!(
            b.engine.leads() && !a.engine.leads(),
            "{what}: no switchover"
        );
        assert_eq!((a.engine.term(), b.engine.term()), (1, 1), "{what}");
        // W1 through b (ordered by b), W2 through a (forwarded to b): acknowledged.
        let (w1, w2) = ((3 * EXTENT, 0xA7u8), (5 * EXTENT, 0xB7u8));
        let (oka, okb) = (a.ok, b.ok);
        write_at(&mut b, &mut io, &mut slot, w1.0, w1.1, 4096);
        write_at(&mut a, &mut io, &mut slot, w2.0, w2.1, 4096);
        for _ in 0..4 {
            pump(&mut a, &mut b, &mut io);
            run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        }
        collect(&mut a);
        collect(&mut b);
        assert_eq!(
            (a.ok - oka, b.ok - okb, a.outstanding, b.outstanding),
            (1, 1, 0, 0),
            "{what}: W1 and W2 not acknowledged"
        );
        // a's power goes: its files as they were on disk when SWITCH left, its device's cache
        // gone.
        assert!(a.engine.wait_persisted());
        assert!(a.engine.wait_actlog_persisted());
        std::fs::write(&state, &state_at_switch).unwrap();
        match &log_at_switch {
            Some(l) => std::fs::write(&log, l).unwrap(),
            None => drop(std::fs::remove_file(&log)),
        }
        if !killed {
            a.disk.borrow_mut().bytes = durable;
            a.engine.cfg.boot_id = 2;
        }
        b.engine.link_down("a lost its power");
        b.wire.clear();
        if b_fenced {
            b.engine.fence("test: the witness out of reach");
            assert!(b.engine.wait_persisted());
        }
        crash_and_restart(&mut a);
        reconnect_agreeing(&mut a, &mut b, &mut io);
        assert!(
            b.engine.leads() && !a.engine.leads() && a.engine.term() == 1,
            "{what}: the agreement did not make b the leader of term 1"
        );
        for _ in 0..4 {
            pump(&mut a, &mut b, &mut io);
            run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        }
        assert_eq!(
            (a.engine.mode(), b.engine.mode()),
            (Mode::Mirroring, Mode::Mirroring),
            "{what}"
        );
        for (off, w) in [w1, w2] {
            assert_both_hold(&a, &b, off, w, |name| {
                format!("{what}: the acknowledged {w:#x} is gone at {name}")
            });
        }
        assert!(same_replicas(&a, &b), "{what}: replicas differ");
        let now = Instant::now();
        assert!(a.engine.may_read(now) && b.engine.may_read(now), "{what}");
    }
}

/// While the old leader waits for "follower of term 1" to reach its disk before it sends
/// SWITCH (its persister held), an initiator's write and flush at it are held: nothing is
/// forwarded to b, which still follows and would drop the link at a forward. Once the state
/// is on disk, SWITCH goes first, then the write as a forward to b: answered without an
/// error, on both replicas, b leading term 1.
#[test]
fn the_old_leader_forwards_nothing_before_its_switch() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(239);
    let p = Persister::spawn().unwrap();
    let mut a = stateful_on(Role::Leader, dir.path(), true, Arc::clone(&p));
    let mut b = stateful(Role::Follower, dir.path());
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.engine.wait_persisted());
    let _unhold = start_held_hand_over(&mut a, &mut io, &p);
    let mut slot = 0;
    let (off, w) = (3 * EXTENT, 0xC3u8);
    write_at(&mut a, &mut io, &mut slot, off, w, 4096);
    flush_at(&mut a, &mut io, &mut slot);
    for _ in 0..20 {
        a.engine.tick(&mut io, Instant::now());
        std::thread::sleep(Duration::from_millis(1));
    }
    a.engine.take_outbox(&mut a.wire);
    let mut at = 0;
    while let wire::Decoded::Msg(h, r) = wire::decode(&a.wire[at..]) {
        assert!(
            !matches!(
                h.ty,
                wire::Type::Switch | wire::Type::FwdWrite | wire::Type::Flush
            ),
            "{:?} sent before a's new role is on disk",
            h.ty
        );
        at += r.end;
    }
    p.hold(false);
    for _ in 0..4 {
        pump(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    }
    collect(&mut a);
    assert_eq!(
        (a.ok, a.failed, a.outstanding),
        (2, 0, 0),
        "the write and flush held during the hand-over"
    );
    assert!(b.engine.leads() && !a.engine.leads() && b.engine.term() == 1);
    assert_both_hold(&a, &b, off, w, |name| format!("the write is not at {name}"));
    assert!(same_replicas(&a, &b));
}

/// A switchover whose SWITCH is lost (the link cut right after a handed over): at the next
/// session b takes the lead of term 1 from the agreement, with no switchover of its own to
/// acknowledge. It must send no SWITCH_ACK: a (whose handing-over ended with the old
/// session) refused it ("SWITCH_ACK for no switchover") and dropped the link, one extra
/// reconnection after every such switchover (seen in the log of
/// `it::switchover::a_link_cut_during_a_switchover_ends_with_exactly_one_leader`). Failed
/// before: a refused b's SWITCH_ACK.
#[test]
fn a_lead_adopted_at_a_session_start_sends_no_switch_ack() {
    use crate::layer::mirror::stats::SWITCH_GIVE;
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(241);
    let mut a = stateful(Role::Leader, dir.path());
    let mut b = stateful(Role::Follower, dir.path());
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    a.engine.stats().switch_req.store(SWITCH_GIVE, Relaxed);
    for _ in 0..200 {
        a.engine.tick(&mut io, Instant::now());
        if matches!(
            a.engine.sw.phase,
            super::super::switchover::Phase::Handed { .. }
        ) {
            break;
        }
        a.engine.wait_persisted();
    }
    assert!(
        matches!(
            a.engine.sw.phase,
            super::super::switchover::Phase::Handed { .. }
        ),
        "a did not hand over: {:?}",
        a.engine.sw.phase
    );
    // SWITCH is lost with the link.
    a.engine.take_outbox(&mut a.wire);
    a.wire.clear();
    assert!(!a.engine.leads() && a.engine.term() == 1);
    assert!(b.engine.leads() || b.engine.term() == 0);
    reconnect_agreeing(&mut a, &mut b, &mut io);
    assert!(
        b.engine.leads() && b.engine.term() == 1,
        "b does not lead term 1 after the agreement"
    );
    let rejected = |s: &Site| s.engine.stats().rejected.load(Relaxed);
    let (ra, rb) = (rejected(&a), rejected(&b));
    for _ in 0..20 {
        let now = Instant::now();
        a.engine.wait_persisted();
        b.engine.wait_persisted();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        b.engine.take_outbox(&mut b.wire);
        let mut at = 0;
        while let wire::Decoded::Msg(h, r) = wire::decode(&b.wire[at..]) {
            assert_ne!(
                h.ty,
                wire::Type::SwitchAck,
                "b acknowledges a switchover it adopted at a session start"
            );
            at += r.end;
        }
        receive(&mut b, &mut a, &mut io, usize::MAX);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
    }
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(
        (rejected(&a), rejected(&b)),
        (ra, rb),
        "a message was refused"
    );
    assert!(a.engine.is_up() && b.engine.is_up(), "the session ended");
    assert!(b.engine.leads() && !a.engine.leads());
    assert_eq!((a.engine.term(), b.engine.term()), (1, 1));
}

/// As `a_lead_adopted_at_a_session_start_sends_no_switch_ack`, with SWITCH received: b takes
/// over, its new term not on disk yet, when the link is cut; at the next session a's
/// hand-over is over (it ended with the old session), so b, its term on disk now, must not
/// send the SWITCH_ACK it owed the old session (a refused it and dropped the link).
#[test]
fn a_switch_ack_owed_to_an_ended_session_is_not_sent_in_the_next() {
    use crate::layer::mirror::stats::SWITCH_GIVE;
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(251);
    let p = Persister::spawn().unwrap();
    let mut a = stateful(Role::Leader, dir.path());
    let mut b = stateful_on(Role::Follower, dir.path(), true, Arc::clone(&p));
    reconnect(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(b.engine.wait_persisted());
    a.engine.stats().switch_req.store(SWITCH_GIVE, Relaxed);
    p.hold(true);
    let unhold = Unhold(Arc::clone(&p));
    for _ in 0..200 {
        a.engine.tick(&mut io, Instant::now());
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        if matches!(
            b.engine.sw.phase,
            super::super::switchover::Phase::Taking { .. }
        ) {
            break;
        }
        a.engine.wait_persisted();
    }
    assert!(
        matches!(
            b.engine.sw.phase,
            super::super::switchover::Phase::Taking { .. }
        ),
        "b did not take over: {:?}",
        b.engine.sw.phase
    );
    reconnect_agreeing(&mut a, &mut b, &mut io);
    drop(unhold);
    assert!(b.engine.wait_persisted());
    let rejected = |s: &Site| s.engine.stats().rejected.load(Relaxed);
    let ra = rejected(&a);
    for _ in 0..20 {
        b.engine.tick(&mut io, Instant::now());
        b.engine.take_outbox(&mut b.wire);
        let mut at = 0;
        while let wire::Decoded::Msg(h, r) = wire::decode(&b.wire[at..]) {
            assert_ne!(
                h.ty,
                wire::Type::SwitchAck,
                "b acknowledges a switchover in a session after it"
            );
            at += r.end;
        }
        receive(&mut b, &mut a, &mut io, usize::MAX);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
    }
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(rejected(&a), ra, "a refused a message");
    assert!(a.engine.is_up() && b.engine.is_up(), "the session ended");
    assert!(b.engine.leads() && !a.engine.leads());
    assert_eq!((a.engine.term(), b.engine.term()), (1, 1));
}
