//! A local replica that fails one write (an injected EIO over a range, `Disk::fail`): the
//! failing site takes its replica out of service (fenced, status `failed` and why, no I/O,
//! link dropped, no grant asked), the other site is granted the volume and acknowledges its
//! held and later writes alone, and a restart of the failed site with a working device
//! resyncs it to a byte-identical replica.
//!
//! Model: two engines back to back with state files (a restart reads the fenced state and
//! its suspect regions); the test answers the witness: it grants whichever site asks, and
//! records every site that asked.

use super::*;
use crate::layer::mirror::failover::{FailoverSlot, GRANTED};
use std::sync::atomic::Ordering::SeqCst;

/// The failing range: one 4 KiB region.
const BAD: (u64, u64) = (8192, 4096);

struct Pair {
    a: Site,
    b: Site,
    sa: Arc<FailoverSlot>,
    sb: Arc<FailoverSlot>,
    io: IoCx,
    rng: Rng,
    dir: tempfile::TempDir,
    /// Sites that asked the witness for a grant (a, b).
    asked: [bool; 2],
}

fn with_state(role: Role, dir: &std::path::Path, name: &str) -> (Site, Arc<FailoverSlot>) {
    let (mut s, slot) = with_witness(role);
    s.engine.cfg.state_file = Some(dir.join(name));
    s.engine.restore().expect("restore");
    (s, slot)
}

/// Two sites in sync with a witness and state files, one write acknowledged on both.
fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (a, sa) = with_state(Role::Leader, dir.path(), "a");
    let (b, sb) = with_state(Role::Follower, dir.path(), "b");
    let mut p = Pair {
        a,
        b,
        sa,
        sb,
        io: IoCx::new(8, 2, 4096, 4).expect("ring"),
        rng: Rng(17),
        dir,
        asked: [false; 2],
    };
    redial_pair(&mut p);
    let mut slot = 0;
    write_at(&mut p.a, &mut p.io, &mut slot, 0, 0x11, 4096);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert_eq!(p.a.ok, 1);
    p
}

/// The follower dials: the leader starts the session first.
fn redial_pair(p: &mut Pair) {
    let (sa, sb) = (p.a.engine.replica_state(), p.b.engine.replica_state());
    p.a.engine
        .session_start(&mut p.io, sb)
        .expect("session at a");
    p.b.engine
        .session_start(&mut p.io, sa)
        .expect("session at b");
}

/// Turns of: ticks (the witness grants whoever asks), messages both ways, every local
/// operation finished, a link a site asked to drop dropped.
fn pump(p: &mut Pair, rounds: usize) {
    for _ in 0..rounds {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        for (i, slot) in [&p.sa, &p.sb].into_iter().enumerate() {
            if slot.want.swap(false, SeqCst) {
                p.asked[i] = true;
                slot.epoch.store(1, SeqCst);
                slot.outcome.store(GRANTED, SeqCst);
            }
        }
        // A survivor's first alone answers wait for the lost peer's read lease: let it pass.
        for s in [&mut p.a, &mut p.b] {
            if s.engine.mode() == Mode::Survivor && s.engine.alone_held() > 0 {
                past_peer_lease(s, &mut p.io);
            }
        }
        if p.a.engine.is_up() {
            deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
            deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        }
        while complete_one(&mut p.a, &mut p.io, &mut p.rng)
            || complete_one(&mut p.b, &mut p.io, &mut p.rng)
        {}
        if p.a.engine.kill_link.take().is_some() | p.b.engine.kill_link.take().is_some() {
            break_link(&mut p.a, &mut p.b);
        }
        // (The daemon polls the persister every turn; here, wait for it.)
        assert!(p.a.engine.wait_persisted() && p.b.engine.wait_persisted());
        p.a.engine.poll_durable();
        p.b.engine.poll_durable();
        collect(&mut p.a);
        collect(&mut p.b);
        std::thread::sleep(ACK_WINDOW);
    }
}

/// Restart site `s` (a clean stop, its state on disk) over the same replica, the device
/// working again.
fn restart(s: Site, role: Role, dir: &std::path::Path, name: &str) -> Site {
    let disk = Rc::clone(&s.disk);
    drop(s);
    disk.borrow_mut().fail = None;
    disk.borrow_mut().pending.clear();
    let (mut n, _) = with_state(role, dir, name);
    n.disk = Rc::clone(&disk);
    n.engine.inner = Box::new(SlowChannel(disk));
    n
}

/// The failed site serves nothing and says why.
fn assert_failed(s: &mut Site, io: &mut IoCx) {
    assert!(s.engine.no_io(), "the failed site still serves I/O");
    assert_eq!(s.engine.mode(), Mode::Fenced);
    let snap = s.engine.stats().snapshot("t", true);
    assert_eq!(snap.state, "failed", "{snap:?}");
    assert_eq!(
        s.engine.path_state(Instant::now()),
        crate::bdev::volume::PathState::Inaccessible,
        "path state still accessible"
    );
    let tag = IoTag { conn: 1, slot: 999 };
    assert_eq!(
        s.engine
            .submit(io, 0, tag, Update::Write(&[1; 512]), 40960, false),
        Start::Done(Err(Errno::UNAVAILABLE))
    );
    assert!(
        s.engine.session_start(io, 1).is_err(),
        "the failed site accepts a session before it is restarted"
    );
}

/// A write fails at the follower's replica: the follower fails its replica and drops the
/// link, the leader is granted the volume and acknowledges that write and every later one,
/// and the follower, restarted with a working device, is resynced byte-identical.
#[test]
fn a_write_failing_at_the_follower_fails_its_replica_and_the_leader_serves_alone() {
    let mut p = pair();
    p.b.disk.borrow_mut().fail = Some(BAD);
    let mut slot = 100;
    write_at(&mut p.a, &mut p.io, &mut slot, BAD.0, 0x22, 4096);
    // Later writes of other blocks, from both sites.
    for i in 0..4u64 {
        write_at(
            &mut p.a,
            &mut p.io,
            &mut slot,
            16384 + i * 4096,
            0x30 + i as u8,
            4096,
        );
    }
    write_at(&mut p.b, &mut p.io, &mut slot, 36864, 0x44, 4096);
    pump(&mut p, 20);
    assert_eq!(
        (p.a.ok, p.a.failed, p.a.outstanding),
        (6, 0, 0),
        "the leader's writes are not all acknowledged"
    );
    assert_eq!(p.a.engine.mode(), Mode::Survivor);
    assert_eq!(p.b.outstanding, 0, "the failed site left requests");
    // Its own write, held: unavailable, for its host to retry at the leader (was EIO).
    assert_eq!((p.b.ok, p.b.errors.clone()), (0, vec![Errno::UNAVAILABLE]));
    assert_eq!(p.asked, [true, false], "the failed site asked for a grant");
    assert_failed(&mut p.b, &mut p.io);
    assert!(
        p.sb.withdrawn.load(SeqCst) != 0,
        "preferred claim not withdrawn"
    );
    // Later writes: acknowledged by the survivor.
    write_at(&mut p.a, &mut p.io, &mut slot, 49152, 0x55, 4096);
    pump(&mut p, 2);
    assert_eq!((p.a.ok, p.a.outstanding), (7, 0));
    // b is back with a working device.
    p.b = restart(p.b, Role::Follower, p.dir.path(), "b");
    assert_eq!(p.b.engine.mode(), Mode::Fenced);
    redial_pair(&mut p);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(
        p.a.disk.borrow().bytes == p.b.disk.borrow().bytes,
        "replicas differ after the failed follower's resync"
    );
    assert_eq!(p.b.disk.borrow().bytes[BAD.0 as usize], 0x22);
}

/// A write fails at the leader's replica after the follower applied it: the leader answers
/// it, and the other write it held, as unavailable (NVMe ANA Inaccessible: a multipath host
/// retries them at the follower; before, EIO, a media error), fails its replica (the region suspect) and drops the link; the follower is granted
/// the volume and acknowledges its writes alone; the leader, restarted with a working
/// device, gets the follower's copy of that region back.
#[test]
fn a_write_failing_at_the_leader_fails_its_replica_and_the_follower_serves_alone() {
    let mut p = pair();
    p.a.disk.borrow_mut().fail = Some(BAD);
    let mut slot = 100;
    write_at(&mut p.a, &mut p.io, &mut slot, BAD.0, 0x22, 4096);
    for i in 0..4u64 {
        write_at(
            &mut p.b,
            &mut p.io,
            &mut slot,
            16384 + i * 4096,
            0x30 + i as u8,
            4096,
        );
    }
    write_at(&mut p.a, &mut p.io, &mut slot, 36864, 0x44, 4096);
    pump(&mut p, 20);
    assert_eq!(
        (p.b.ok, p.b.failed, p.b.outstanding),
        (4, 0, 0),
        "the follower's writes are not all acknowledged"
    );
    assert_eq!(p.b.engine.mode(), Mode::Survivor);
    assert_eq!(p.a.outstanding, 0, "the failed site left requests");
    assert!(p.a.failed >= 1, "the failed write was acknowledged");
    assert!(
        p.a.errors.iter().all(|e| *e == Errno::UNAVAILABLE),
        "answered as unavailable (the follower has them): {:?}",
        p.a.errors
    );
    assert_eq!(p.asked, [false, true], "the failed site asked for a grant");
    assert_failed(&mut p.a, &mut p.io);
    assert!(
        p.sa.withdrawn.load(SeqCst) != 0,
        "preferred claim not withdrawn"
    );
    assert!(
        p.a.engine.suspect_bytes() >= 4096,
        "the failed region is not suspect"
    );
    write_at(&mut p.b, &mut p.io, &mut slot, 49152, 0x55, 4096);
    pump(&mut p, 2);
    assert_eq!((p.b.ok, p.b.outstanding), (5, 0));
    p.a = restart(p.a, Role::Leader, p.dir.path(), "a");
    assert_eq!(p.a.engine.mode(), Mode::Fenced);
    redial_pair(&mut p);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(
        p.a.disk.borrow().bytes == p.b.disk.borrow().bytes,
        "replicas differ after the failed leader's resync"
    );
}

/// Two sites in sync (`pair`), the link cut, the witness granting `a` and denying `b`:
/// `a` the survivor, `b` fenced, nothing written alone yet.
fn granted_a() -> Pair {
    use crate::layer::mirror::failover::DENIED;
    let mut p = pair();
    break_link(&mut p.a, &mut p.b);
    let now = Instant::now();
    p.a.engine.tick(&mut p.io, now);
    p.b.engine.tick(&mut p.io, now);
    p.sa.epoch.store(1, SeqCst);
    p.sa.outcome.store(GRANTED, SeqCst);
    p.sb.outcome.store(DENIED, SeqCst);
    p.a.engine.tick(&mut p.io, now);
    p.b.engine.tick(&mut p.io, now);
    assert_eq!(
        (p.a.engine.mode(), p.b.engine.mode()),
        (Mode::Survivor, Mode::Fenced)
    );
    p
}

/// Two sites, `a` the survivor (granted) and `b` fenced, after `a` wrote alone at 16384
/// (acknowledged once b's read lease had expired).
fn survivor_a() -> Pair {
    let mut p = granted_a();
    let mut slot = 100;
    write_at(&mut p.a, &mut p.io, &mut slot, 16384, 0x66, 4096);
    while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
    assert!(p.a.engine.wait_persisted());
    p.a.engine.poll_durable();
    // (Applied alone once the survivor state is on disk.)
    p.a.engine.poll_actlog(&mut p.io);
    while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
    // Its first alone answers wait for b's read lease to have expired.
    past_peer_lease(&mut p.a, &mut p.io);
    collect(&mut p.a);
    assert_eq!(p.a.ok, 2);
    p
}

/// Write `byte` at `off` from the survivor `a` and finish it: true when it was acknowledged.
fn survivor_writes(p: &mut Pair, slot: &mut u32, off: u64, byte: u8) -> bool {
    let ok = p.a.ok;
    write_at(&mut p.a, &mut p.io, slot, off, byte, 4096);
    for _ in 0..100 {
        p.a.engine.tick(&mut p.io, Instant::now());
        p.a.engine.poll_actlog(&mut p.io);
        while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
        collect(&mut p.a);
        if p.a.outstanding == 0 {
            break;
        }
        std::thread::sleep(ACK_WINDOW);
    }
    assert_eq!(
        p.a.outstanding, 0,
        "the survivor's write was never answered"
    );
    p.a.ok > ok
}

/// The survivor still serves, is not failed, and reports `errors` local errors.
fn assert_serving(p: &Pair, errors: u64) {
    assert!(!p.a.engine.no_io(), "the survivor stopped serving");
    assert_eq!(p.a.engine.replica_failed(), None);
    assert_eq!(p.a.engine.mode(), Mode::Survivor);
    assert_eq!(
        p.a.engine.path_state(Instant::now()),
        crate::bdev::volume::PathState::Optimized,
        "the survivor's path state"
    );
    let snap = p.a.engine.stats().snapshot("t", true);
    assert_eq!(snap.state, "survivor", "{snap:?}");
    assert_eq!(snap.local_errors, errors, "{snap:?}");
    assert!((errors == 0) == snap.last_local_error.is_none(), "{snap:?}");
}

/// A survivor's device fails a write: the survivor holds the volume's only current copy, so
/// (as Linux md with its last mirror leg) it answers that write with the error and goes on
/// serving: later writes, elsewhere and at the same place once the device takes them, are
/// acknowledged, the failed region stays dirty, and the fenced peer is resynced from it to a
/// byte-identical replica. (Before, the survivor took its replica out of service: one bad
/// sector stopped the volume at both sites until a restart.)
#[test]
fn a_survivor_whose_write_fails_answers_that_write_with_the_error_and_goes_on_serving() {
    let mut p = survivor_a();
    let mut slot = 200;
    p.a.disk.borrow_mut().fail = Some(BAD);
    assert!(!survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    assert_eq!((p.a.ok, p.a.failed), (2, 1));
    assert_serving(&p, 1);
    assert!(survivor_writes(&mut p, &mut slot, 20480, 0x33));
    // The two written alone, the failed one, and the first write of `pair`: b acknowledged
    // it and never flushed it, so it may have lost it with its power (peer_cache.rs).
    assert_eq!(p.a.engine.dirty_bytes(), 4 * 4096);
    // The sector works again (the drive remapped it): written anew.
    p.a.disk.borrow_mut().fail = None;
    assert!(survivor_writes(&mut p, &mut slot, BAD.0, 0x44));
    assert_serving(&p, 1);
    redial_pair(&mut p);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(
        p.a.disk.borrow().bytes == p.b.disk.borrow().bytes,
        "replicas differ after the survivor's resync"
    );
    assert_eq!(p.a.disk.borrow().bytes[BAD.0 as usize], 0x44);
}

/// A survivor's device fails a write, and it restarts (its state on disk): still the
/// survivor, the failed region dirty, and the peer is resynced from it.
#[test]
fn a_survivor_whose_write_failed_keeps_the_region_dirty_across_a_restart() {
    let mut p = survivor_a();
    let mut slot = 200;
    p.a.disk.borrow_mut().fail = Some(BAD);
    assert!(!survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    assert_eq!(p.a.engine.dirty_bytes(), 3 * 4096);
    p.a = restart(p.a, Role::Leader, p.dir.path(), "a");
    assert_eq!(p.a.engine.mode(), Mode::Survivor);
    assert_eq!(p.a.engine.dirty_bytes(), 3 * 4096);
    // The witness's first answer confirms the restored grant (until then no session).
    let slot = p.a.engine.cfg.failover.clone().expect("a witness");
    slot.publish_view(1, 1, 1);
    p.a.engine.tick(&mut p.io, Instant::now());
    redial_pair(&mut p);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(
        p.a.disk.borrow().bytes == p.b.disk.borrow().bytes,
        "replicas differ after the restarted survivor's resync"
    );
}

/// A resync source's device cannot read a region it must copy: the survivor goes on serving
/// (its writes are acknowledged, never held for a last pass that cannot end), the target
/// does not finish (it would say it is in sync without that region), the status says how
/// much could not be read, and the copy is retried: once the region reads, the resync
/// finishes byte-identical. (Before, the source took its replica out of service: one
/// unreadable sector stopped the volume at both sites.)
#[test]
fn a_resync_read_failing_at_the_source_keeps_it_serving_and_is_retried() {
    let mut p = survivor_a();
    let mut slot = 200;
    assert!(survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    p.a.disk.borrow_mut().fail = Some(BAD);
    redial_pair(&mut p);
    pump(&mut p, 50);
    assert_serving(&p, 1);
    assert_eq!(
        p.b.engine.mode(),
        Mode::Resyncing,
        "the target finished without the region"
    );
    let snap = p.a.engine.stats().snapshot("t", true);
    assert_eq!(snap.resync_unreadable_bytes, BAD.1, "{snap:?}");
    assert!(snap.resync_running, "{snap:?}");
    // Writes go on, alone, while the copy waits to be retried.
    assert!(survivor_writes(&mut p, &mut slot, 24576, 0x55));
    pump(&mut p, 5);
    assert_eq!(p.b.engine.mode(), Mode::Resyncing);
    // The sector reads again: the next retry copies it and the resync ends.
    p.a.disk.borrow_mut().fail = None;
    p.a.engine.retry_unreadable_now();
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(
        p.a.disk.borrow().bytes == p.b.disk.borrow().bytes,
        "replicas differ after the retried resync"
    );
    let snap = p.a.engine.stats().snapshot("t", true);
    assert_eq!(snap.resync_unreadable_bytes, 0, "{snap:?}");
}

/// A resync source's flush before RESYNC_DONE fails: RESYNC_DONE is not sent (what it wrote
/// alone may not be durable), the survivor goes on serving, and the flush is retried.
#[test]
fn a_failed_flush_before_resync_done_is_retried_and_the_source_goes_on_serving() {
    let mut p = survivor_a();
    p.a.disk.borrow_mut().fail_flush = true;
    redial_pair(&mut p);
    pump(&mut p, 50);
    assert_eq!(
        p.b.engine.mode(),
        Mode::Resyncing,
        "RESYNC_DONE went out unflushed"
    );
    assert!(!p.a.engine.no_io() && p.a.engine.replica_failed().is_none());
    assert_eq!(p.a.engine.mode(), Mode::Survivor);
    let mut slot = 200;
    assert!(survivor_writes(&mut p, &mut slot, 24576, 0x55));
    p.a.disk.borrow_mut().fail_flush = false;
    p.a.engine.retry_unreadable_now();
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(
        p.a.disk.borrow().bytes == p.b.disk.borrow().bytes,
        "replicas differ after the retried flush"
    );
}

/// A sequenced WRITE reaching a follower that is a resync target (only a broken or forged
/// peer sends one: the leader sequences nothing before RESYNC_DONE_ACK) is refused and never
/// applied: it would land in the middle of the copy. (Before, it was applied.)
#[test]
fn a_sequenced_write_at_a_resync_target_is_refused_and_not_applied() {
    let mut p = survivor_a();
    redial_pair(&mut p);
    assert_eq!(p.b.engine.mode(), Mode::Resyncing);
    let before = p.b.disk.borrow().pending.len();
    let w = Header {
        seq: p.b.engine.sess.last_seq() + 1,
        offset: 0,
        count: 4096,
        len: 4096,
        ..Header::new(Type::Write)
    };
    assert_eq!(
        p.b.engine.on_msg(&mut p.io, &w, &[0xEE; 4096]),
        Err("sequenced update at a site that does not mirror")
    );
    assert_eq!(
        p.b.disk.borrow().pending.len(),
        before,
        "the forged write was applied"
    );
}

/// Turns of site a alone: its device operations finished, ticks, answers collected.
fn run_a(p: &mut Pair) {
    for _ in 0..20 {
        while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
        p.a.engine.tick(&mut p.io, Instant::now());
        collect(&mut p.a);
    }
}

/// a's device works again, what waited for a retry is retried now: both end in sync and
/// byte-identical.
fn heal_and_sync(p: &mut Pair) {
    p.a.disk.borrow_mut().fail = None;
    p.a.engine.retry_unreadable_now();
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(p.a.disk.borrow().bytes == p.b.disk.borrow().bytes);
}

/// Run a's resync (b the target) until a is in its last pass with reads in flight; the
/// reads stay pending.
fn to_last_pass(p: &mut Pair) {
    redial_pair(p);
    for _ in 0..20 {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
        deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        if p.a.engine.resync.as_ref().is_some_and(|r| r.in_last_pass()) {
            return;
        }
    }
    panic!("no last pass");
}

/// A write deferred by the last pass, released by a failed resync read (stall),
/// is applied, acknowledged before any retry, and copied to the target.
#[test]
fn a_deferred_write_released_by_a_stall_is_acknowledged_and_copied() {
    let mut p = survivor_a();
    let mut slot = 200;
    assert!(survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    to_last_pass(&mut p);
    assert!(!p.a.disk.borrow().pending.is_empty(), "reads in flight");
    let ok = p.a.ok;
    write_at(&mut p.a, &mut p.io, &mut slot, 20480, 0x66, 4096);
    assert_eq!(
        p.a.engine.resync.as_ref().unwrap().deferred.len(),
        1,
        "deferred"
    );
    p.a.disk.borrow_mut().fail = Some(BAD);
    run_a(&mut p);
    assert!(p.a.engine.resync.as_ref().unwrap().unreadable_bytes() > 0);
    assert_eq!(p.a.ok, ok + 1, "the released write was not acknowledged");
    heal_and_sync(&mut p);
    assert_eq!(p.b.disk.borrow().bytes[20480], 0x66);
}

/// A compare-and-write whose compare read fails at the survivor answers EIO,
/// settles its op, and the survivor goes on serving.
#[test]
fn a_caw_read_failing_at_the_survivor_answers_eio_and_serves_on() {
    let mut p = survivor_a();
    let mut slot = 200;
    p.a.disk.borrow_mut().fail = Some((COUNTER, 512));
    submit_caw(&mut p.a, &mut p.io, &mut slot, 0);
    run_a(&mut p);
    assert_eq!((p.a.caw_failed, p.a.outstanding), (1, 0));
    assert_serving(&p, 1);
    assert!(p.a.engine.ops.is_empty(), "an op left behind");
    p.a.disk.borrow_mut().fail = None;
    redial_pair(&mut p);
    heal_and_sync(&mut p);
}

/// The resync's closing flush fails and the device loses what it held in its volatile cache
/// (a region written alone, already copied to the target in this attempt); the retried flush
/// succeeds: every region ever written is copied again, so the two end the same. (Before, the
/// resync ended "in sync" with the replicas different.)
#[test]
fn a_failed_closing_flush_that_lost_cached_data_is_copied_again() {
    let mut p = survivor_a();
    let mut slot = 200;
    assert!(survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    p.a.disk.borrow_mut().fail_flush = true;
    p.a.disk.borrow_mut().lose_on_failed_flush = Some(BAD);
    redial_pair(&mut p);
    pump(&mut p, 50);
    assert_eq!(p.b.engine.mode(), Mode::Resyncing);
    p.a.disk.borrow_mut().fail_flush = false;
    p.a.engine.retry_unreadable_now();
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(
        p.a.disk.borrow().bytes == p.b.disk.borrow().bytes,
        "in sync, but a holds {:#x} and b {:#x} at the region the failed flush lost",
        p.a.disk.borrow().bytes[BAD.0 as usize],
        p.b.disk.borrow().bytes[BAD.0 as usize]
    );
}

/// The session ends while the resync is stalled on an unreadable region; the
/// next session copies it once it reads.
#[test]
fn a_session_ending_while_stalled_keeps_the_region_for_the_next() {
    let mut p = survivor_a();
    let mut slot = 200;
    assert!(survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    p.a.disk.borrow_mut().fail = Some(BAD);
    redial_pair(&mut p);
    pump(&mut p, 20);
    assert!(p.a.engine.resync.as_ref().unwrap().unreadable_bytes() > 0);
    break_link(&mut p.a, &mut p.b);
    pump(&mut p, 3);
    assert!(p.a.engine.resync.is_none());
    assert_eq!(p.a.engine.mode(), Mode::Survivor);
    p.a.disk.borrow_mut().fail = None;
    redial_pair(&mut p);
    heal_and_sync(&mut p);
}

/// The retry of an unreadable region never starts a last pass with that read in flight: host
/// writes are not deferred behind the (known bad, possibly slow) read. (Before, they were,
/// and timed out with EIO when the read took longer than the peer timeout.)
#[test]
fn the_retry_of_an_unreadable_region_never_holds_host_writes_behind_its_read() {
    let mut p = survivor_a();
    let mut slot = 200;
    assert!(survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    p.a.disk.borrow_mut().fail = Some(BAD);
    redial_pair(&mut p);
    pump(&mut p, 20);
    assert!(p.a.engine.resync.as_ref().unwrap().unreadable_bytes() > 0);
    // The retry is due; the device takes its time to fail the read again.
    p.a.engine.retry_unreadable_now();
    for _ in 0..3 {
        p.a.engine.tick(&mut p.io, Instant::now());
    }
    assert!(
        !p.a.disk.borrow().pending.is_empty(),
        "the retried read in flight"
    );
    let ok = p.a.ok;
    write_at(&mut p.a, &mut p.io, &mut slot, 24576, 0x55, 4096);
    p.a.engine.tick(&mut p.io, Instant::now());
    assert_eq!(
        p.a.engine.resync.as_ref().unwrap().deferred.len(),
        0,
        "a host write held behind the retry of a known-unreadable region"
    );
    // The device finishes the write while the retried read is still in flight: acknowledged.
    let i = p.a.disk.borrow().pending.iter().position(|e| e.1 == 24576);
    let (k, off, data, len) =
        p.a.disk
            .borrow_mut()
            .pending
            .swap_remove(i.expect("the write at the device"));
    p.a.disk.borrow_mut().bytes[off as usize..off as usize + len]
        .copy_from_slice(&data.expect("a write"));
    p.a.engine
        .apply_finished(&mut p.io, k as usize, Ok(()), &[]);
    collect(&mut p.a);
    assert_eq!(p.a.ok, ok + 1, "the write was not acknowledged");
    assert!(
        p.a.disk.borrow().pending.iter().any(|e| e.1 == BAD.0),
        "the retried read is still in flight"
    );
}

/// As the deferred-write release, with writes completing inside the call (the
/// release re-enters apply_done from apply_done), one released write failing too.
#[test]
fn released_writes_completing_inline_reenter_apply_done_safely() {
    let mut p = survivor_a();
    let mut slot = 200;
    assert!(survivor_writes(&mut p, &mut slot, BAD.0, 0x22));
    to_last_pass(&mut p);
    let (ok, failed) = (p.a.ok, p.a.failed);
    write_at(&mut p.a, &mut p.io, &mut slot, 20480, 0x66, 4096);
    write_at(&mut p.a, &mut p.io, &mut slot, BAD.0, 0x67, 4096);
    write_at(&mut p.a, &mut p.io, &mut slot, 24576, 0x68, 4096);
    assert_eq!(p.a.engine.resync.as_ref().unwrap().deferred.len(), 3);
    p.a.disk.borrow_mut().fail = Some(BAD);
    p.a.disk.borrow_mut().sync_writes = true;
    run_a(&mut p);
    assert_eq!(
        (p.a.ok, p.a.failed, p.a.outstanding),
        (ok + 2, failed + 1, 0)
    );
    assert!(!p.a.engine.no_io() && p.a.engine.replica_failed().is_none());
    heal_and_sync(&mut p);
}

/// An update waiting for the survivor state on disk whose initiator's timeout passes leaves
/// that wait with its slot: the slot, freed, is never taken from the wait again (a later
/// update given the same slot would have been applied from it a second time). (Before, the
/// key stayed in the list after the op was freed.)
#[test]
fn an_update_expired_while_waiting_for_the_survivor_state_leaves_that_wait() {
    let mut p = granted_a();
    let mut slot = 100;
    write_at(&mut p.a, &mut p.io, &mut slot, 16384, 0x66, 4096);
    assert!(
        p.a.engine.al.waiting_alone(),
        "the write waits for the survivor state"
    );
    let failed = p.a.failed;
    p.a.engine.expire(Instant::now() + Duration::from_secs(61));
    collect(&mut p.a);
    assert_eq!(p.a.failed, failed + 1, "the expired write answered EIO");
    assert!(
        !p.a.engine.al.waiting_alone(),
        "the expired write's slot still in the wait"
    );
    assert!(
        p.a.disk.borrow().pending.is_empty(),
        "applied after its timeout"
    );
}

/// A resync target whose device fails a copy takes its replica out of service half-copied. It
/// must say so (replica state 3, as when it restarts in the middle of a resync), never plain
/// "fenced" (2): two fenced sites reconcile from the leader, and a half-copied leader would
/// copy its stale regions over its source's acknowledged writes. Here the leader a is a new
/// replica, b (in sync) the source of its first sync, without a grant; a's copy of one region
/// fails after b sent RESYNC_DONE, the link goes with a's replica, b asks the witness, which
/// does not grant it (unreachable from b, say), and b fences. Restarted with a working device,
/// a must receive again. (Before, a said 2 and, the leader, reconciled from its half-copied
/// replica: b's acknowledged write at 16384 was overwritten with a's zeroes.)
#[test]
fn a_target_failing_during_its_resync_is_never_the_source_of_the_next_session() {
    use crate::layer::mirror::failover::DENIED;
    let mut p = pair();
    let mut slot = 100;
    write_at(&mut p.b, &mut p.io, &mut slot, 16384, 0x22, 8192);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert_eq!(p.b.ok, 1);
    // a restarts without its state over an empty device: a new replica.
    break_link(&mut p.a, &mut p.b);
    let disk = Rc::clone(&p.a.disk);
    let a = std::mem::replace(&mut p.a, site(Role::Leader, Duration::from_secs(60)));
    drop(a);
    std::fs::remove_file(p.dir.path().join("a")).unwrap();
    disk.borrow_mut().bytes.fill(0);
    p.a = restart(
        Site {
            disk,
            ..site(Role::Leader, Duration::from_secs(60))
        },
        Role::Leader,
        p.dir.path(),
        "a",
    );
    assert_eq!(p.a.engine.replica_state(), 4);
    p.a.disk.borrow_mut().fail = Some((16384, 4096));
    redial_pair(&mut p);
    assert_eq!(p.a.engine.mode(), Mode::Resyncing);
    // The copy, a's device operations left pending, until b's RESYNC_DONE is out.
    let mut sent = false;
    for _ in 0..100 {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
        deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        while complete_one(&mut p.b, &mut p.io, &mut p.rng) {}
        assert!(p.b.engine.wait_persisted());
        p.b.engine.poll_durable();
        if p.b
            .engine
            .resync
            .as_ref()
            .is_some_and(|r| r.awaiting_ack() && r.done_gate.is_none())
        {
            sent = true;
            break;
        }
    }
    assert!(sent, "RESYNC_DONE never sent");
    deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
    // a's copies land, one failing: its replica is out of service, the link dropped.
    while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
    assert!(p.a.engine.replica_failed().is_some());
    assert!(p.a.engine.kill_link.take().is_some());
    break_link(&mut p.a, &mut p.b);
    assert_eq!(
        p.a.engine.replica_state(),
        3,
        "a half-copied target that failed says it is fenced"
    );
    // b, unsure whether a finished, asks the witness, which does not grant it: fenced.
    let now = Instant::now();
    p.b.engine.tick(&mut p.io, now);
    p.b.engine.tick(&mut p.io, now);
    assert!(p.sb.want.load(SeqCst), "b never asked the witness");
    p.sb.outcome.store(DENIED, SeqCst);
    p.b.engine.tick(&mut p.io, now);
    assert_eq!(p.b.engine.mode(), Mode::Fenced);
    assert!(p.a.engine.wait_persisted() && p.b.engine.wait_persisted());
    // a restarts with a working device; the link returns.
    let a = std::mem::replace(&mut p.a, site(Role::Leader, Duration::from_secs(60)));
    p.a = restart(a, Role::Leader, p.dir.path(), "a");
    assert_eq!(p.a.engine.replica_state(), 3, "restarted as fenced");
    redial_pair(&mut p);
    assert_eq!(p.a.engine.mode(), Mode::Resyncing, "a is the source");
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(p.a.disk.borrow().bytes == p.b.disk.borrow().bytes);
    for (off, byte) in [(0usize, 0x11u8), (16384, 0x22), (20480, 0x22)] {
        assert_eq!(
            p.b.disk.borrow().bytes[off],
            byte,
            "acknowledged write at {off}"
        );
    }
}

/// The resync target's device is slow (its copies do not complete) once RESYNC_DONE has come:
/// the source defers its hosts' writes until the target confirms (RESYNC_DONE_ACK), so they
/// would wait for that slow device and fail at the peer timeout, the volume taking no write
/// although its only current copy is healthy. As a mirroring site whose apply is slow, the
/// target takes its replica out of service at half the peer timeout: the source goes on alone
/// and acknowledges the write in time; the target, restarted with a quick device, is
/// resynced. Real time (a 2 s peer timeout): the link's heartbeats run as in a daemon.
#[test]
fn a_slow_target_after_resync_done_never_makes_the_sources_writes_time_out() {
    let mut p = survivor_a();
    for s in [&mut p.a, &mut p.b] {
        s.engine.cfg.peer_timeout = Duration::from_secs(2);
    }
    redial_pair(&mut p);
    // The copy runs; the target's device never completes a copy.
    let mut done = false;
    for _ in 0..50 {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
        deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
        assert!(p.a.engine.wait_persisted() && p.b.engine.wait_persisted());
        p.a.engine.poll_durable();
        // (b's copies reach its device once its "resyncing" state is on disk.)
        p.b.engine.tick(&mut p.io, Instant::now());
        collect(&mut p.a);
        if p.b.engine.target.is_done() {
            done = true;
            break;
        }
        std::thread::sleep(ACK_WINDOW);
    }
    assert!(done, "RESYNC_DONE never reached the target");
    assert!(!p.b.disk.borrow().pending.is_empty(), "no copy is slow");
    assert!(p.a.engine.resync.as_ref().is_some_and(|r| r.awaiting_ack()));
    let (ok, failed) = (p.a.ok, p.a.failed);
    let mut slot = 300;
    write_at(&mut p.a, &mut p.io, &mut slot, 20480, 0x77, 4096);
    assert_eq!(
        p.a.engine.resync.as_ref().map(|r| r.deferred.len()),
        Some(1),
        "the write is not deferred by the last pass"
    );
    // Both sites' reactors run (heartbeats answered), the target's copies stay slow.
    run_with_slow_ops(
        &mut p,
        |_| false,
        true,
        |p| {
            assert!(
                !p.b.engine.may_read(Instant::now()),
                "the target serves reads without its copies"
            )
        },
    );
    assert_eq!(
        (p.a.ok, p.a.failed),
        (ok + 1, failed),
        "the source's write waited for the slow target and failed"
    );
    assert_eq!(p.a.engine.mode(), Mode::Survivor);
    assert!(
        p.b.engine.replica_failed().is_some(),
        "the slow target still holds the source"
    );
    // Repaired and restarted, the target is resynced: the two replicas the same, the write
    // read back from both.
    let b = std::mem::replace(&mut p.b, site(Role::Follower, Duration::from_secs(60)));
    p.b = restart(b, Role::Follower, p.dir.path(), "b");
    redial_pair(&mut p);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(p.a.disk.borrow().bytes == p.b.disk.borrow().bytes);
    assert_eq!(p.b.disk.borrow().bytes[20480], 0x77);
}

/// A resync source's own device is slow on a region it copies (the read does not complete)
/// while the copy is in its last pass, which defers the hosts' writes until the resync ends:
/// a write to another region must not wait for that read and fail at the peer timeout (the
/// source is the only current copy, and healthy there). Real time (a 2 s peer timeout), the
/// link's heartbeats running as in a daemon.
#[test]
fn a_slow_read_at_the_source_never_makes_its_writes_time_out() {
    let mut p = survivor_a();
    for s in [&mut p.a, &mut p.b] {
        s.engine.cfg.peer_timeout = Duration::from_secs(2);
    }
    to_last_pass(&mut p);
    assert!(!p.a.disk.borrow().pending.is_empty(), "no read in flight");
    let (ok, failed) = (p.a.ok, p.a.failed);
    let mut slot = 300;
    write_at(&mut p.a, &mut p.io, &mut slot, 20480, 0x77, 4096);
    assert_eq!(
        p.a.engine.resync.as_ref().map(|r| r.deferred.len()),
        Some(1),
        "the write is not deferred by the last pass"
    );
    // The reads in flight stay slow; every other operation of a's device completes.
    let slow: Vec<u32> = p.a.disk.borrow().pending.iter().map(|x| x.0).collect();
    run_with_slow_ops(&mut p, |op| slow.contains(&op.0), false, |_| {});
    assert_eq!(
        (p.a.ok, p.a.failed),
        (ok + 1, failed),
        "the source's write waited for its slow resync read and failed"
    );
    assert_eq!(p.a.engine.mode(), Mode::Survivor);
    assert_eq!(p.b.engine.mode(), Mode::Resyncing, "the target finished");
    // The read completes: the resync ends, both replicas the same.
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(p.a.disk.borrow().bytes == p.b.disk.borrow().bytes);
    assert_eq!(p.b.disk.borrow().bytes[20480], 0x77);
}

/// A pending operation of the test disk: (slot, offset, data to write or none, length).
type PendingOp = (u32, u64, Option<Vec<u8>>, usize);

/// Real time, up to 5 s or until a's requests are all answered: both sites tick (their
/// heartbeats answered, as the link layer notes each arrival), a link a site drops is broken,
/// and every device operation finishes but those of a's that `slow` keeps pending (and all of
/// b's when `b_slow`); `check` looks at the pair after every turn.
fn run_with_slow_ops(
    p: &mut Pair,
    slow: impl Fn(&PendingOp) -> bool,
    b_slow: bool,
    check: impl Fn(&Pair),
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.a.outstanding > 0 && Instant::now() < deadline {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        if p.a.engine.kill_link.take().is_some() | p.b.engine.kill_link.take().is_some() {
            break_link(&mut p.a, &mut p.b);
        }
        if p.a.engine.is_up() {
            if deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX) > 0 {
                p.b.engine.last_rx = Instant::now();
            }
            if deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX) > 0 {
                p.a.engine.last_rx = Instant::now();
            }
        }
        p.a.engine.poll_actlog(&mut p.io);
        loop {
            let i = p.a.disk.borrow().pending.iter().position(|x| !slow(x));
            let Some(i) = i else { break };
            let (s, off, data, len) = p.a.disk.borrow_mut().pending.remove(i);
            let range = off as usize..off as usize + len;
            match data {
                Some(d) => {
                    p.a.disk.borrow_mut().bytes[range].copy_from_slice(&d);
                    p.a.engine
                        .apply_finished(&mut p.io, s as usize, Ok(()), &[]);
                }
                None => {
                    let r = p.a.disk.borrow().bytes[range].to_vec();
                    p.a.engine.apply_finished(&mut p.io, s as usize, Ok(()), &r);
                }
            }
        }
        while !b_slow && complete_one(&mut p.b, &mut p.io, &mut p.rng) {}
        assert!(p.a.engine.wait_persisted() && p.b.engine.wait_persisted());
        p.a.engine.poll_durable();
        collect(&mut p.a);
        check(p);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A resync source's own device is slow to flush: its closing flush (before RESYNC_DONE,
/// which waits for it) does not complete, and the last pass defers the hosts' writes behind
/// it. As with a slow read, a write must not wait for it and fail at the peer timeout; the
/// flush's late success must not send RESYNC_DONE for regions written since (they are
/// copied first, after a good flush).
#[test]
fn a_slow_closing_flush_at_the_source_never_makes_its_writes_time_out() {
    let mut p = survivor_a();
    for s in [&mut p.a, &mut p.b] {
        s.engine.cfg.peer_timeout = Duration::from_secs(2);
    }
    p.a.disk.borrow_mut().slow_flush = true;
    redial_pair(&mut p);
    let flushing = |p: &Pair| p.a.disk.borrow().pending.iter().any(|x| x.3 == 0);
    for _ in 0..50 {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
        deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        while p.a.disk.borrow().pending.iter().any(|x| x.3 > 0) {
            complete_one(&mut p.a, &mut p.io, &mut p.rng);
        }
        while complete_one(&mut p.b, &mut p.io, &mut p.rng) {}
        assert!(p.a.engine.wait_persisted());
        if flushing(&p) {
            break;
        }
        std::thread::sleep(ACK_WINDOW);
    }
    assert!(flushing(&p), "the closing flush never started");
    let (ok, failed) = (p.a.ok, p.a.failed);
    let mut slot = 300;
    write_at(&mut p.a, &mut p.io, &mut slot, 20480, 0x77, 4096);
    assert_eq!(
        p.a.engine.resync.as_ref().map(|r| r.deferred.len()),
        Some(1),
        "the write is not deferred by the last pass"
    );
    let flush_slot =
        p.a.disk
            .borrow()
            .pending
            .iter()
            .find(|x| x.3 == 0)
            .unwrap()
            .0;
    run_with_slow_ops(&mut p, |op| op.0 == flush_slot, false, |_| {});
    assert_eq!(
        (p.a.ok, p.a.failed),
        (ok + 1, failed),
        "the source's write waited for its slow flush and failed"
    );
    // Another write alone, applied before its region is read; then the slow flush succeeds
    // late: no RESYNC_DONE while that write is copied to nobody yet.
    write_at(&mut p.a, &mut p.io, &mut slot, 24576, 0x78, 4096);
    while p.a.disk.borrow().pending.iter().any(|x| x.3 > 0) {
        complete_one(&mut p.a, &mut p.io, &mut p.rng);
    }
    assert!(p.a.engine.wait_persisted());
    p.a.engine.poll_durable();
    p.a.engine.poll_actlog(&mut p.io);
    while p.a.disk.borrow().pending.iter().any(|x| x.3 > 0) {
        complete_one(&mut p.a, &mut p.io, &mut p.rng);
    }
    p.a.disk.borrow_mut().slow_flush = false;
    while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
    for _ in 0..5 {
        p.a.engine.tick(&mut p.io, Instant::now());
        deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
        deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        while complete_one(&mut p.a, &mut p.io, &mut p.rng)
            || complete_one(&mut p.b, &mut p.io, &mut p.rng)
        {}
        assert!(p.a.engine.wait_persisted() && p.b.engine.wait_persisted());
        p.b.engine.tick(&mut p.io, Instant::now());
        if p.b.engine.mode() == Mode::Mirroring {
            for (off, byte) in [(20480usize, 0x77u8), (24576, 0x78)] {
                assert_eq!(
                    p.b.disk.borrow().bytes[off],
                    byte,
                    "the target finished without the write at {off}"
                );
            }
        }
    }
    p.a.engine.retry_unreadable_now();
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(p.a.disk.borrow().bytes == p.b.disk.borrow().bytes);
    assert_eq!(p.b.disk.borrow().bytes[20480], 0x77);
    assert_eq!(p.b.disk.borrow().bytes[24576], 0x78);
}

/// A resync target applies no copy before its "resyncing" state (replica state 3) is on disk.
/// Its state file says fenced (2) until then, or in sync; a crash with copies applied would
/// restart it from that state with a half-copied replica, which, as the leader of two fenced
/// sites (or in sync beside a fenced peer), would be the source of the next session and copy
/// its stale regions over the acknowledged writes of its source (as in
/// `a_target_failing_during_its_resync_is_never_the_source_of_the_next_session`). Here the
/// target's persister takes its time; the copies wait for it. (Before, they were applied at
/// once.)
#[test]
fn a_resync_target_applies_no_copy_before_it_is_saved_as_resyncing() {
    let mut p = survivor_a();
    assert!(p.b.engine.wait_persisted());
    let persister = p.b.engine.persister().expect("persister");
    persister.hold(true);
    redial_pair(&mut p);
    assert_eq!(p.b.engine.mode(), Mode::Resyncing);
    let before = p.b.disk.borrow().bytes.clone();
    let on_disk = |p: &Pair| {
        crate::layer::mirror::state::load(&p.dir.path().join("b"))
            .unwrap()
            .unwrap()
            .mode
    };
    for _ in 0..20 {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
        deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        while complete_one(&mut p.a, &mut p.io, &mut p.rng)
            || complete_one(&mut p.b, &mut p.io, &mut p.rng)
        {}
        assert_eq!(on_disk(&p), 2, "the target's state on disk");
        assert!(
            p.b.disk.borrow().bytes == before,
            "a copy was applied while the target's state on disk said fenced"
        );
        std::thread::sleep(ACK_WINDOW);
    }
    assert_eq!(p.b.engine.mode(), Mode::Resyncing);
    persister.hold(false);
    run_until_in_sync(&mut p.a, &mut p.b, &mut p.io, &mut p.rng);
    assert!(p.a.disk.borrow().bytes == p.b.disk.borrow().bytes);
    assert_eq!(p.b.disk.borrow().bytes[16384], 0x66);
}

/// The last copy of a resync fails at the target's device after RESYNC_DONE came, its flush
/// completing within the call (a device that answers flushes at once). The failed copy must
/// not count as applied: the target never calls itself in sync (nor learns the source's grant
/// epoch, nor answers RESYNC_DONE_ACK) before its replica is taken out of service. (Before,
/// the count reached zero, the flush ran and completed, and the target was "in sync" for a
/// moment: its state handed to the persister as such, the source's epoch learned, the
/// confirmation queued.)
#[test]
fn a_failed_last_copy_never_completes_the_resync_at_the_target() {
    let mut p = survivor_a();
    p.sb.view_epoch.store(1, SeqCst);
    p.b.disk.borrow_mut().fail = Some((16384, 4096));
    redial_pair(&mut p);
    for _ in 0..50 {
        let now = Instant::now();
        p.a.engine.tick(&mut p.io, now);
        p.b.engine.tick(&mut p.io, now);
        deliver(&mut p.a, &mut p.b, &mut p.io, usize::MAX);
        deliver(&mut p.b, &mut p.a, &mut p.io, usize::MAX);
        while complete_one(&mut p.a, &mut p.io, &mut p.rng) {}
        assert!(p.a.engine.wait_persisted() && p.b.engine.wait_persisted());
        p.a.engine.poll_durable();
        p.b.engine.tick(&mut p.io, Instant::now());
        if p.b.engine.target.is_done() {
            break;
        }
        std::thread::sleep(ACK_WINDOW);
    }
    assert!(p.b.engine.target.is_done(), "RESYNC_DONE never came");
    assert!(
        !p.b.disk.borrow().pending.is_empty(),
        "the copy is not pending"
    );
    while complete_one(&mut p.b, &mut p.io, &mut p.rng) {}
    assert!(p.b.engine.replica_failed().is_some());
    assert_eq!(
        p.sb.learned_epoch.load(SeqCst),
        0,
        "the source's epoch learned"
    );
    p.b.engine.take_outbox(&mut p.b.wire);
    let mut at = 0;
    while let wire::Decoded::Msg(h, r) = wire::decode(&p.b.wire[at..]) {
        assert_ne!(h.ty, Type::ResyncDoneAck, "RESYNC_DONE_ACK queued");
        at += r.end;
    }
}
