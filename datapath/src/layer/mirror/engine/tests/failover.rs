//! Losing the peer with a witness (survivor and fenced sites), resyncs and their suspect
//! regions, and the replica state persisted across a stop.
//!
//! Model: two engines back to back (see `tests/mod.rs`), each with its failover slot, which
//! the test answers in the witness's place. Invariants checked: one survivor at most; the survivor records every
//! region written alone; after a resync the replicas are byte-identical, including regions
//! the fenced site applied without the peer's confirmation.

use super::*;

#[test]
fn the_granted_site_finishes_held_writes_and_the_other_fences() {
    for grant_to_a in [true, false] {
        let (mut a, mut b, mut io) = lose_peer(grant_to_a);
        let (win, lose) = if grant_to_a {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_eq!(win.engine.mode(), Mode::Survivor);
        assert_eq!(lose.engine.mode(), Mode::Fenced);
        assert_eq!(
            (win.outstanding, win.failed),
            (0, 0),
            "survivor left requests"
        );
        assert_eq!(
            (lose.outstanding, lose.ok),
            (0, 0),
            "fenced site acknowledged"
        );
        assert!(
            win.engine.dirty_bytes() > 0,
            "nothing recorded for the resync"
        );
        // New writes: the survivor acknowledges alone, the fenced site refuses.
        let mut rng = Rng(9);
        let mut slot = 1000;
        submit(win, &mut io, &mut rng, &mut slot);
        while complete_one(win, &mut io, &mut rng) {}
        collect(win);
        assert_eq!(win.outstanding, 0);
        let r = lose.engine.submit(
            &mut io,
            0,
            IoTag { conn: 1, slot: 7 },
            Update::Write(&[1; 512]),
            0,
            false,
        );
        assert_eq!(r, Start::Done(Err(Errno::UNAVAILABLE)));
    }
}

/// A site that fences (the witness granted its peer) answers the updates it held (its own
/// unconfirmed ones, its unsent forwards, a flush) as unavailable: NVMe ANA Inaccessible,
/// SCSI NOT READY / TARGET PORT IN UNAVAILABLE STATE, which a multipath host retries at the
/// site that won, where writing the same data again is harmless. Before, they failed with
/// EIO, a media error to NVMe and SCSI that Linux fails the host's write on (the Linux
/// guest's link cut, `nvmf_ana::linux_nvme_multipath_moves_a_fenced_volume_...`, saw a dd
/// fail with it). A compare-and-write decided and sent has an unknown outcome (the winner may
/// have applied it, and compared again there it would miscompare against itself): still an
/// I/O error.
#[test]
fn a_fenced_site_answers_its_held_updates_unavailable_for_the_host_to_retry_at_the_winner() {
    for grant_to_a in [true, false] {
        let (a, b, _io) = lose_peer_holding(
            grant_to_a,
            11,
            1,
            &mut |s, io, rng, slot| {
                for _ in 0..10 {
                    submit(s, io, rng, slot);
                }
                submit_caw(s, io, slot, 0);
                flush_at(s, io, slot);
            },
            &mut |_, _, _| {},
        );
        let lose = if grant_to_a { &b } else { &a };
        assert_eq!(lose.engine.mode(), Mode::Fenced);
        assert_eq!(
            (lose.outstanding, lose.ok),
            (0, 0),
            "answered every request, none ok"
        );
        assert_eq!(lose.errors.len(), 11, "ten updates and a flush failed");
        assert!(
            lose.errors.iter().all(|e| *e == Errno::UNAVAILABLE),
            "grant to a: {grant_to_a}: {:?}",
            lose.errors
        );
        // The leader's compare-and-write was decided (its compare read done) and sequenced:
        // its outcome at the winner is unknown, EIO. The follower's was never forwarded (no
        // RESENT came in that session): applied nowhere, unavailable (the next test).
        let caw = if grant_to_a {
            Errno::UNAVAILABLE
        } else {
            Errno::IO
        };
        assert_eq!(lose.caw_errors, vec![caw], "grant to a: {grant_to_a}");
    }
}

/// A compare-and-write taken after the link went down and given up by the fence before it
/// was decided or sent to the peer was applied nowhere (the leader's compare read still at its
/// device; the follower's forward held, never sent): answered unavailable, so an ATS heartbeat
/// is retried at the site that won instead of failing. One decided or sent stays EIO (above).
#[test]
fn a_compare_and_write_applied_nowhere_is_answered_unavailable_at_a_fence() {
    for grant_to_a in [true, false] {
        let (a, b, _io) = lose_peer_holding(
            grant_to_a,
            13,
            0,
            &mut |_, _, _, _| {},
            &mut |s, io, slot| submit_caw(s, io, slot, 0),
        );
        let lose = if grant_to_a { &b } else { &a };
        assert_eq!(lose.engine.mode(), Mode::Fenced);
        assert_eq!(lose.outstanding, 0, "grant to a: {grant_to_a}");
        assert_eq!(
            lose.caw_errors,
            vec![Errno::UNAVAILABLE],
            "grant to a: {grant_to_a}"
        );
    }
}

#[test]
fn a_fenced_leader_gets_back_the_regions_only_it_had_applied() {
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    redial(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the resync"
    );
    // The survivor's two regions and the fenced leader's two suspect ones.
    assert_eq!(
        b.engine
            .stats()
            .resync_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        4 * 4096
    );
    assert_eq!(a.engine.suspect_bytes(), 0);
    assert_eq!(b.engine.dirty_bytes(), 0);
}

#[test]
fn the_source_finishes_a_resync_only_after_the_targets_suspect_list() {
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    redial(&mut a, &mut b, &mut io);
    // a's list is held back: b copies its own dirty regions but must not finish.
    for _ in 0..2000 {
        b.engine.tick(&mut io, Instant::now());
        complete_one(&mut b, &mut io, &mut rng);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        complete_one(&mut a, &mut io, &mut rng);
    }
    assert_eq!(b.engine.dirty_bytes(), 0, "b's own regions not copied");
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Resyncing, Mode::Survivor),
        "the resync finished before the target's suspect regions arrived"
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
}

#[test]
fn an_interrupted_resync_copies_again_what_it_had_sent() {
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    redial(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    // b reads every dirty region (its own and a's suspect ones) and queues the copies...
    for _ in 0..2000 {
        if b.engine.dirty_bytes() == 0 {
            break;
        }
        b.engine.tick(&mut io, Instant::now());
    }
    assert_eq!(b.engine.dirty_bytes(), 0);
    while complete_one(&mut b, &mut io, &mut rng) {}
    assert_eq!(b.engine.mode(), Mode::Survivor);
    // ...which the link loses.
    break_link(&mut a, &mut b);
    b.engine.tick(&mut io, Instant::now());
    assert_eq!(
        b.engine.dirty_bytes(),
        4 * 4096,
        "copies lost, not dirty again"
    );
    redial(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the resumed resync"
    );
}

#[test]
fn suspect_regions_are_persisted_and_unknown_ones_after_a_leaders_crash_are_everything() {
    use crate::layer::mirror::state::{Persisted, save};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.mirror-state");
    // A fenced leader persists its suspect regions; a restart restores them.
    let (mut a, _b, _io, _rng) = fenced_leader_with_unconfirmed_updates();
    a.engine.cfg.state_file = Some(path.clone());
    a.engine.persist(false);
    assert!(a.engine.wait_persisted());
    let mut r = site(Role::Leader, Duration::from_secs(1));
    r.engine.cfg.state_file = Some(path.clone());
    r.engine.restore().unwrap();
    assert_eq!(r.engine.mode(), Mode::Fenced);
    assert_eq!(r.engine.suspect_bytes(), 2 * 4096);
    // (mode, clean, led, suspect, role here) -> suspect bytes restored.
    let all = SIZE;
    let one = Some(vec![1u64 << 3]);
    let cases = [
        // In sync and stopped cleanly: exact.
        (0, true, true, one.clone(), Role::Leader, 4096),
        // A leader that crashed: what it applied last is unknown.
        (0, false, true, Some(vec![]), Role::Leader, all),
        // The same file at a site now configured as follower: still the leader's file.
        (0, false, true, Some(vec![]), Role::Follower, all),
        // A follower that crashed applied only what the leader ordered.
        (0, false, false, Some(vec![]), Role::Follower, 0),
        (0, false, false, None, Role::Follower, 0),
        // Fenced or resyncing: recorded at the fence, exact even after a crash.
        (2, false, true, one.clone(), Role::Leader, 4096),
        (3, false, true, one.clone(), Role::Leader, 4096),
        // Version 1 (not recorded): every region ever written (two here, a clean stop).
        (2, true, false, None, Role::Leader, 2 * 4096),
        (2, true, false, None, Role::Follower, 0),
        // A survivor's suspect regions become dirty; a new replica has none.
        (1, true, true, one.clone(), Role::Leader, 0),
        (4, false, true, one.clone(), Role::Leader, 0),
    ];
    for (i, (mode, clean, led, suspect, role, want)) in cases.into_iter().enumerate() {
        let p = Persisted {
            mode,
            clean,
            epoch: 1,
            size: SIZE,
            granularity: 4096,
            bitmap: vec![],
            written: vec![0b11],
            led,
            suspect,
            identity: 0,
            leads: None,
            boot: 0,
            host_restarted: false,
            fenced_unanswered: None,
            fenced_denied: false,
        };
        let v1 = p.suspect.is_none();
        save(&path, &p).unwrap();
        if v1 {
            // As version 1 wrote it: no flags and no suspect bitmap (an empty one here).
            let mut b = std::fs::read(&path).unwrap();
            b.truncate(b.len() - 40);
            b[4] = 1;
            b[7] = 0;
            let crc = crate::checksum::crc32c(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, &b).unwrap();
            assert_eq!(
                crate::layer::mirror::state::load(&path)
                    .unwrap()
                    .unwrap()
                    .suspect,
                None
            );
        }
        let mut s = site(role, Duration::from_secs(1));
        s.engine.cfg.state_file = Some(path.clone());
        s.engine.restore().unwrap();
        assert_eq!(s.engine.suspect_bytes(), want, "case {i}");
        if mode == 1 {
            assert_eq!(s.engine.dirty_bytes(), 4096, "case {i}: not made dirty");
        }
    }
}

/// A resync source stopped cleanly mid-resync persists its dirty bitmap without the
/// regions copied in the interrupted attempt.
#[test]
fn a_stop_in_the_middle_of_a_resync_keeps_what_it_copied_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.mirror-state");
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    b.engine.cfg.state_file = Some(path.clone());
    redial(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    for _ in 0..2000 {
        if b.engine.dirty_bytes() == 0 {
            break;
        }
        b.engine.tick(&mut io, Instant::now());
    }
    while complete_one(&mut b, &mut io, &mut rng) {}
    assert_eq!(b.engine.mode(), Mode::Survivor);
    // The copies never arrive (the link is lost as b stops); b stops cleanly.
    b.engine.link_down("test");
    b.wire.clear();
    drop(b);
    let p = crate::layer::mirror::state::load(&path).unwrap().unwrap();
    let bits: u32 = p.bitmap.iter().map(|w| w.count_ones()).sum();
    assert_eq!(p.mode, 1);
    assert_eq!(
        bits, 4,
        "regions copied in the interrupted attempt are not dirty after restart"
    );
}

/// Tick the resync source `b` (its own completions done at once) until it has sent
/// RESYNC_DONE. (Bounded by time, not by turns: 100 turns were not always enough while the
/// whole library suite ran at once.)
fn source_sends_resync_done(b: &mut Site, io: &mut IoCx, rng: &mut Rng) {
    let until = Instant::now() + std::time::Duration::from_secs(20);
    while Instant::now() < until {
        b.engine.tick(io, Instant::now());
        while complete_one(b, io, rng) {}
        if b.engine.resync.as_ref().is_some_and(|r| r.awaiting_ack()) {
            return;
        }
    }
    panic!("the source did not send RESYNC_DONE");
}

/// `fenced_leader_with_unconfirmed_updates` redialled, and the follower's resync of the
/// leader run until its RESYNCs and RESYNC_DONE are delivered (the leader's applies pending).
fn resync_done_delivered() -> (Site, Site, IoCx, Rng) {
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    redial(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESYNC_ALSO list, RESENT
    source_sends_resync_done(&mut b, &mut io, &mut rng);
    deliver(&mut b, &mut a, &mut io, usize::MAX); // RESYNCs + RESYNC_DONE
    (a, b, io, rng)
}

/// A write at the resync source after RESYNC_DONE waits until the target has applied every
/// copy and confirmed (RESYNC_DONE_ACK); only then is it forwarded, and the leader (the
/// target) sequences it as a mirroring leader. (Before the confirmation existed, the source
/// forwarded at once and the leader still applying its copies had to keep the forward.)
#[test]
fn a_write_at_the_source_waits_until_the_target_confirmed_the_resync() {
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    redial(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESYNC_ALSO list, RESENT
    source_sends_resync_done(&mut b, &mut io, &mut rng);
    assert_eq!(b.engine.mode(), Mode::Survivor, "mirroring before the ack");
    deliver(&mut b, &mut a, &mut io, usize::MAX); // RESYNCs + RESYNC_DONE, a's applies pending
    assert_eq!(a.engine.mode(), Mode::Resyncing);
    let mut slot = 100;
    write_at(&mut b, &mut io, &mut slot, 0, 0x77, 512);
    assert_eq!(
        deliver(&mut b, &mut a, &mut io, usize::MAX),
        0,
        "forwarded before the target confirmed"
    );
    while complete_one(&mut a, &mut io, &mut rng) {}
    assert_eq!(a.engine.mode(), Mode::Mirroring);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESYNC_DONE_ACK
    assert_eq!(b.engine.mode(), Mode::Mirroring);
    write_at(&mut b, &mut io, &mut slot, 4096, 0x78, 512);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!((b.ok, b.failed), (4, 0));
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
    assert_eq!(a.disk.borrow().bytes[4096], 0x78);
}

/// The link ends after the target finished (it serves reads under the lease the source's
/// PONGs gave it) and before its RESYNC_DONE_ACK reached the source, which holds the grant
/// and goes on alone: the write the last pass deferred is answered only once the target's
/// lease has certainly expired. Before, at once: the target could still read the old data of
/// a write acknowledged alone.
#[test]
fn a_deferred_write_waits_out_the_finished_targets_lease_when_the_link_ends_before_its_ack() {
    let (mut a, mut b, mut io, mut rng) = resync_done_delivered();
    collect(&mut b);
    let ok_before = b.ok;
    let mut slot = 100;
    write_at(&mut b, &mut io, &mut slot, 0, 0x77, 512);
    while complete_one(&mut a, &mut io, &mut rng) {}
    assert_eq!(a.engine.mode(), Mode::Mirroring, "the target finished");
    // Its RESYNC_DONE_ACK is lost with the link.
    let cut = Instant::now();
    break_link(&mut a, &mut b);
    b.engine.tick(&mut io, cut);
    while complete_one(&mut b, &mut io, &mut rng) {}
    b.engine.wait_persisted();
    b.engine.tick(&mut io, cut);
    collect(&mut b);
    assert_eq!(b.engine.mode(), Mode::Survivor);
    assert_eq!(
        b.engine.resync.as_ref().map(|_| ()),
        None,
        "the attempt ended"
    );
    assert_eq!(
        b.ok, ok_before,
        "answered alone while the finished target's lease may run"
    );
    let l = lease_for(b.engine.cfg.peer_dead);
    b.engine.tick(&mut io, cut + l + lease_margin(l));
    collect(&mut b);
    assert_eq!(b.ok, ok_before + 1, "the deferred write is never answered");
    assert_eq!(b.disk.borrow().bytes[0], 0x77);
}

/// A write deferred by the resync's last pass whose initiator's timeout passes before the
/// target's confirmation fails (applied nowhere) and is dropped: the resync's end must not
/// start its key, vacant by then or another op's (a second deferred write takes it here).
#[test]
fn a_deferred_write_that_times_out_is_dropped_before_the_resync_ends() {
    let (mut a, mut b, mut io, mut rng) = resync_done_delivered();
    collect(&mut b);
    let failed_before = b.failed;
    let mut slot = 100;
    write_at(&mut b, &mut io, &mut slot, 0, 0x77, 512);
    b.engine
        .expire(Instant::now() + std::time::Duration::from_secs(3600));
    collect(&mut b);
    assert_eq!(b.failed, failed_before + 1, "the deferred write's timeout");
    write_at(&mut b, &mut io, &mut slot, 4096, 0x78, 512);
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESYNC_DONE_ACK
    assert_eq!(b.engine.mode(), Mode::Mirroring);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut b);
    assert_eq!(b.failed, failed_before + 1);
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
    assert_eq!(a.disk.borrow().bytes[4096], 0x78);
    assert_ne!(
        a.disk.borrow().bytes[0],
        0x77,
        "the failed write was applied"
    );
}

/// A resync target re-sessions while copies of the previous attempt are still
/// being applied: `resync_applies` is reset to 0 and the old copies' completions underflow.
#[test]
fn copies_of_an_earlier_resync_attempt_do_not_count_for_the_next() {
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    redial(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESYNC_ALSO list, RESENT
    b.engine.tick(&mut io, Instant::now());
    while complete_one(&mut b, &mut io, &mut rng) {}
    assert_eq!(b.engine.mode(), Mode::Survivor);
    deliver(&mut b, &mut a, &mut io, usize::MAX); // RESYNC copies; a's applies pending
    assert!(!a.disk.borrow().pending.is_empty());
    break_link(&mut a, &mut b);
    redial(&mut a, &mut b, &mut io); // (3, 1): target again
    while complete_one(&mut a, &mut io, &mut rng) {} // old copies finish
}

/// RESYNC_DONE lost with the link: the source had not had the target's confirmation, so it
/// is still the survivor (grant kept) and the regions of the attempt are dirty again; the
/// next session resyncs them (not everything) and is not refused.
#[test]
fn a_resync_whose_done_message_was_lost_copies_its_regions_again() {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    redial(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // a's suspect list
    // b copies everything and sends RESYNC_DONE; nothing of it reaches a (lost with the link).
    source_sends_resync_done(&mut b, &mut io, &mut rng);
    let first = b.engine.stats().resync_bytes.load(Relaxed);
    break_link(&mut a, &mut b);
    b.engine.tick(&mut io, Instant::now());
    assert_eq!(
        b.engine.mode(),
        Mode::Survivor,
        "the source left survivor mode"
    );
    assert_eq!(
        b.engine.dirty_bytes(),
        first,
        "the attempt's regions are not dirty again"
    );
    assert_eq!((a.engine.replica_state(), b.engine.replica_state()), (3, 1));
    redial(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the repeated resync"
    );
}

/// A leader frozen (SIGSTOP) while the follower became the survivor: when it resumes, the
/// survivor dials it before it has asked the witness, so it is still "mirroring" with an
/// update the follower never confirmed in its backlog. That update must not be re-sent over
/// the survivor's newer acknowledged write: the survivor's copy wins, and the leader's held
/// update becomes a suspect region the survivor copies back (found by the fault soak as an
/// acknowledged write lost at both sites after SIGCONT).
#[test]
fn a_frozen_leaders_held_update_never_overwrites_the_survivors_newer_write() {
    use crate::layer::mirror::failover::GRANTED;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(31);
    let (mut a, _sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    // a writes; b applies it, but b's ACK is lost with the link (a is frozen).
    write_at(&mut a, &mut io, &mut slot, 0, 0x11, 4096);
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    while complete_one(&mut b, &mut io, &mut rng) {}
    break_link(&mut a, &mut b);
    // b is granted the volume and acknowledges a newer write to the same block alone.
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    sb.epoch.store(1, SeqCst);
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Survivor);
    past_peer_lease(&mut b, &mut io);
    // a, frozen, serves no read meanwhile.
    assert!(!a.engine.may_read(Instant::now()));
    write_at(&mut b, &mut io, &mut slot, 0, 0x22, 4096);
    for _ in 0..100 {
        while complete_one(&mut b, &mut io, &mut rng) {}
        b.engine.tick(&mut io, Instant::now());
        collect(&mut b);
        if b.ok == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(b.ok, 1, "the survivor acknowledged its write");
    // a resumes, never having asked the witness: still mirroring, W1 held. b dials.
    assert_eq!(a.engine.mode(), Mode::Mirroring);
    redial(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(
        (a.disk.borrow().bytes[0], b.disk.borrow().bytes[0]),
        (0x22, 0x22),
        "the survivor's acknowledged write was overwritten by the leader's held one"
    );
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
    // a's held write was never acknowledged: it fails (its outcome is unknown).
    collect(&mut a);
    assert_eq!((a.ok, a.failed), (0, 1));
}

/// A survivor that is the leader resyncs its returning follower while its own initiator keeps
/// writing the same regions: the resync must still finish (its last pass defers new writes).
#[test]
fn a_leader_survivors_resync_finishes_under_a_continuous_writer() {
    let (mut a, mut b, mut io) = lose_peer(true);
    let mut rng = Rng(77);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Fenced)
    );
    let (sa, sb) = (a.engine.replica_state(), b.engine.replica_state());
    // The follower dials: the leader answers first (its session on AUTH comes after the
    // follower's own start, which queues its suspect list behind AUTH).
    b.engine.session_start(&mut io, sa).expect("session at b");
    a.engine.session_start(&mut io, sb).expect("session at a");
    assert_eq!(b.engine.mode(), Mode::Resyncing);
    let mut slot = 10_000;
    let mut rounds = 0;
    while a.engine.mode() != Mode::Mirroring {
        rounds += 1;
        assert!(
            rounds < 5_000,
            "the resync never finished under a continuous writer"
        );
        if a.outstanding < 4 {
            write_at(
                &mut a,
                &mut io,
                &mut slot,
                (rounds % 16) * 4096,
                rounds as u8,
                4096,
            );
        }
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
        collect(&mut a);
        collect(&mut b);
    }
}

/// The link is cut while the witness is unreachable from both sites: both fence (neither
/// acknowledges alone; the writes in flight fail). When the link returns the pair (fenced,
/// fenced) used to be refused at both sites for ever; now the leader reconciles: it serves
/// and copies both sites' unconfirmed regions, and the replicas end identical.
#[test]
fn two_fenced_sites_reconcile_from_the_leader_when_the_link_returns() {
    use crate::layer::mirror::failover::UNREACHABLE;
    let (mut a, _, mut b, _, mut io, mut rng, mut slot) =
        cut_and_answer(13, UNREACHABLE, UNREACHABLE);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    assert_eq!((a.outstanding, b.outstanding), (0, 0));
    assert_eq!((a.engine.replica_state(), b.engine.replica_state()), (2, 2));
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing),
        "the leader is not the source"
    );
    // The leader serves meanwhile.
    write_at(&mut a, &mut io, &mut slot, 0, 0x5A, 4096);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after reconciling two fenced sites"
    );
    assert_eq!(a.disk.borrow().bytes[0], 0x5A);
}

/// The witness recorded a's grant but its answer was lost (the request timed out at a:
/// UNREACHABLE), and b was denied (a holds the volume). Before, both sites stayed fenced with
/// the witness reachable, and the grant was never given back. Now a, told by the witness's
/// next word that it holds the volume, is the survivor: it serves alone, resyncs b when the
/// link returns and gives the grant back. In `also_reconnect_first`, the link returns before
/// that word: a reconciles b as a source without a grant, adopts the grant when the word
/// comes, and gives it back at the resync's end.
#[test]
fn a_grant_whose_answer_was_lost_makes_its_site_the_survivor_once_the_witness_says_so() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    for reconnect_first in [false, true] {
        let (mut a, sa, mut b, sb, mut io, mut rng, mut slot) =
            cut_and_answer(17, UNREACHABLE, DENIED);
        assert_eq!(
            (a.engine.mode(), b.engine.mode()),
            (Mode::Fenced, Mode::Fenced)
        );
        // A word from before the fence changes nothing; a view naming b neither.
        a.engine.tick(&mut io, Instant::now());
        sa.publish_view(2, 1, 1);
        a.engine.tick(&mut io, Instant::now());
        assert_eq!(a.engine.mode(), Mode::Fenced, "a view naming the peer");
        if reconnect_first {
            meet(&mut a, &mut b, &mut io);
            assert_eq!(
                (a.engine.mode(), b.engine.mode()),
                (Mode::Survivor, Mode::Resyncing)
            );
        }
        // The witness's next word (a heartbeat's answer): a holds the group, epoch 1.
        sa.publish_view(1, 1, 1);
        sb.publish_view(1, 1, 2);
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        if !reconnect_first {
            assert_eq!(
                (a.engine.mode(), b.engine.mode()),
                (Mode::Survivor, Mode::Fenced),
                "the grant the witness holds for a is not used"
            );
            past_peer_lease(&mut a, &mut io);
            // a serves alone.
            let before = a.ok;
            write_at(&mut a, &mut io, &mut slot, 8192, 0x43, 4096);
            while complete_one(&mut a, &mut io, &mut rng) {}
            a.engine.wait_persisted();
            a.engine.tick(&mut io, Instant::now());
            collect(&mut a);
            assert_eq!(a.ok, before + 1, "the survivor's write is not acknowledged");
            meet(&mut a, &mut b, &mut io);
        }
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert!(
            a.disk.borrow().bytes == b.disk.borrow().bytes,
            "replicas differ after the resync"
        );
        if !reconnect_first {
            assert_eq!(b.disk.borrow().bytes[8192], 0x43);
        }
        // In sync again, the grant goes back to the witness.
        a.engine.wait_persisted();
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_eq!(
            sa.release.load(SeqCst),
            1,
            "reconnect first: {reconnect_first}: the grant was never given back"
        );
    }
}

/// Fenced for want of an answer, the site is taken over by its operator; the witness answers
/// the takeover, and its word (the view naming the site) comes before the answer. The site is
/// the survivor once, counted once (before, the word made it the survivor and the answer did
/// again: the count of survivors went to 2, and the resync's end never gave the grant back),
/// with the takeover's copy of everything written. And a takeover whose answer is lost too is
/// adopted from the word as a takeover.
#[test]
fn a_takeover_after_a_lost_answer_is_counted_once_and_keeps_its_meaning() {
    use crate::layer::mirror::failover::{DENIED, GRANTED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    for answer_lost_again in [false, true] {
        let (mut a, sa, mut b, _, mut io, mut rng, _) = cut_and_answer(19, UNREACHABLE, DENIED);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        // The operator's takeover at a.
        a.engine.stats().takeover.store(true, SeqCst);
        a.engine.tick(&mut io, Instant::now());
        assert!(sa.want.swap(false, SeqCst), "the takeover is not asked");
        sa.publish_view(1, 1, 1);
        if answer_lost_again {
            sa.outcome.store(UNREACHABLE, SeqCst);
            a.engine.tick(&mut io, Instant::now());
            assert_eq!(a.engine.mode(), Mode::Fenced);
            sa.publish_view(1, 1, 1);
        } else {
            sa.epoch.store(1, SeqCst);
            sa.granted_takeover.store(true, SeqCst);
            sa.outcome.store(GRANTED, SeqCst);
        }
        a.engine.tick(&mut io, Instant::now());
        a.engine.tick(&mut io, Instant::now());
        assert_eq!(a.engine.mode(), Mode::Survivor);
        assert_eq!(sa.survivors.load(SeqCst), 1, "the survivor counted twice");
        assert_eq!(
            a.engine.dirty_bytes(),
            a.engine.written.bytes(),
            "a takeover's copy of everything written"
        );
        past_peer_lease(&mut a, &mut io);
        meet(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        a.engine.wait_persisted();
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_eq!(sa.release.load(SeqCst), 1, "the grant was never given back");
        assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
    }
}

/// Both sites fenced, the witness holding the grant whose answer b lost; the link returns
/// first and the leader (a) reconciles b. In sync again, b gives the grant the witness still
/// holds for it back (before, nobody did: at the next loss the witness denied a).
#[test]
fn a_lost_grant_held_for_the_reconciliation_target_is_given_back() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let (mut a, sa, mut b, sb, mut io, mut rng, _) = cut_and_answer(23, DENIED, UNREACHABLE);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    // The witness's word: b holds the group at epoch 1.
    sa.publish_view(2, 1, 1);
    sb.publish_view(2, 1, 2);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    // (Given back at once: no volume of b's group may still take it, `FailoverSlot::watching`.)
    b.engine.tick(&mut io, Instant::now());
    assert_eq!(
        sb.release.load(SeqCst),
        1,
        "the grant held for b was never given back"
    );
    assert_eq!(sa.release.load(SeqCst), 0);
    assert_eq!(
        (sa.survivors.load(SeqCst), sb.survivors.load(SeqCst)),
        (0, 0)
    );
}

/// A site fenced (the witness unreachable from it) while its peer saw only a short link flap
/// and is still in sync: the pair (in sync, fenced) used to be refused; the in-sync site
/// reconciles (its held updates fail, their regions and the fenced site's suspect ones are
/// copied) and the replicas end identical.
#[test]
fn an_in_sync_site_reconciles_a_fenced_peer() {
    use crate::layer::mirror::failover::UNREACHABLE;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(17);
    let mut slot = 0;
    let (mut a, sa, mut b, sb) = traffic_then_cut(&mut io, &mut rng, &mut slot, 7);
    // Only b asks the witness (a's session comes back before it does) and cannot reach it.
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    sb.outcome.store(UNREACHABLE, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    assert!(!sa.want.load(SeqCst));
    assert_eq!((a.engine.replica_state(), b.engine.replica_state()), (0, 2));
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    collect(&mut a);
    collect(&mut b);
    assert_eq!((a.outstanding, b.outstanding), (0, 0));
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after reconciling a fenced peer"
    );
}

/// A refused session says why in the status, with the command an operator needs, until a
/// session starts.
#[test]
fn a_refused_session_is_shown_in_the_status_with_what_to_do() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut a, mut b, _io) = lose_peer(true);
    // (new, fenced): no replica is known to hold every acknowledged write.
    let why = b.engine.session_start(&mut io, 4).unwrap_err();
    assert!(why.contains("mirror_takeover"), "{why}");
    let snap = b.engine.stats().snapshot("t", false);
    assert_eq!(snap.session_refused.as_deref(), Some(why.as_str()));
    // Both survivors: split brain, named.
    let why = a.engine.session_start(&mut io, 1).unwrap_err();
    assert!(why.contains("split brain"), "{why}");
    // The real pair (survivor, fenced) starts: the refusal is cleared.
    meet(&mut a, &mut b, &mut io);
    assert_eq!(b.engine.stats().snapshot("t", false).session_refused, None);
    assert_eq!(a.engine.stats().snapshot("t", true).session_refused, None);
}

/// Two sites with witness slots, random writes from both, `n` messages each way delivered
/// (some updates applied at both sites, some at one only), every local write finished, and
/// the link cut: (a, a's slot, b, b's slot), nothing asked of the witness yet.
pub(super) fn traffic_then_cut(
    io: &mut IoCx,
    rng: &mut Rng,
    slot: &mut u32,
    n: usize,
) -> (
    Site,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
    Site,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
) {
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(io);
    b.engine.link_up(io);
    for _ in 0..20 {
        submit(&mut a, io, rng, slot);
        submit(&mut b, io, rng, slot);
    }
    deliver(&mut a, &mut b, io, n);
    deliver(&mut b, &mut a, io, n);
    while complete_one(&mut a, io, rng) || complete_one(&mut b, io, rng) {}
    break_link(&mut a, &mut b);
    (a, sa, b, sb)
}

/// [`traffic_then_cut`], then both sites ask the witness and get `to_a` and `to_b` (outcome
/// codes of `failover.rs`), act on them, and finish every local operation.
#[allow(clippy::type_complexity)]
pub(super) fn cut_and_answer(
    seed: u64,
    to_a: u8,
    to_b: u8,
) -> (
    Site,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
    Site,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
    IoCx,
    Rng,
    u32,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(seed);
    let mut slot = 0;
    let (mut a, sa, mut b, sb) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let now = Instant::now();
    both_ask(&mut a, &mut b, &mut io, now);
    sa.outcome.store(to_a, SeqCst);
    sb.outcome.store(to_b, SeqCst);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut a);
    collect(&mut b);
    (a, sa, b, sb, io, rng, slot)
}

/// An operator's pause (`mirror_resync`) stops the source's copies until resumed; the resync
/// then finishes and the replicas are identical.
#[test]
fn a_paused_resync_copies_nothing_until_resumed() {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut a, mut b, mut io, mut rng) = fenced_leader_with_unconfirmed_updates();
    b.engine.stats().resync_paused.store(true, Relaxed);
    redial(&mut a, &mut b, &mut io);
    for _ in 0..200 {
        b.engine.tick(&mut io, Instant::now());
        complete_one(&mut b, &mut io, &mut rng);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        complete_one(&mut a, &mut io, &mut rng);
    }
    assert_eq!(
        b.engine.stats().resync_bytes.load(Relaxed),
        0,
        "copied while paused"
    );
    assert_eq!(a.engine.mode(), Mode::Resyncing);
    assert!(b.engine.dirty_bytes() > 0);
    b.engine.stats().resync_paused.store(false, Relaxed);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
    assert!(b.engine.stats().resync_bytes.load(Relaxed) > 0);
}

/// A survivor resyncing its returning peer (the link up) whose device is slow on a write is
/// not failed for it: it is the volume's only whole copy, and failing it would stop the
/// volume (the slow-apply failover is for a pair mirroring in sync).
#[test]
fn a_slow_apply_at_a_resyncing_survivor_does_not_fail_its_replica() {
    let (mut a, mut b, mut io) = lose_peer(true);
    let (sa, sb) = (a.engine.replica_state(), b.engine.replica_state());
    a.engine.session_start(&mut io, sb).expect("session at a");
    b.engine.session_start(&mut io, sa).expect("session at b");
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    let mut slot = 500;
    // Its apply is never completed here: a hung sector.
    write_at(&mut a, &mut io, &mut slot, 0, 0x5A, 512);
    let now = Instant::now();
    a.engine.check_slow_apply(now);
    a.engine.check_slow_apply(now + a.engine.cfg.peer_timeout);
    assert!(
        a.engine.replica_failed().is_none(),
        "the survivor failed its replica: {:?}",
        a.engine.replica_failed()
    );
    assert_eq!(a.engine.mode(), Mode::Survivor);
}

/// A request that ties until its deadline (the witness kept the group for the preferred site,
/// alive and not asking: `ClientError::TieWait`) is unanswered for the engine, not denied: b
/// fences for want of the answer and asks again at every word of the witness naming nobody
/// holding the group, however many ties in a row, and serves once granted (the preferred site
/// gone silent). A denial would end the asking (a denied site asks again only when a holder it
/// was denied for gives the grant back): b would stay fenced until the link returned.
#[test]
fn a_request_tied_until_its_deadline_is_asked_again_at_each_word_until_granted() {
    use crate::layer::mirror::failover::{GRANTED, PENDING, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let (_a, _sa, mut b, sb, mut io, _rng, _) = cut_and_answer(29, PENDING, UNREACHABLE);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    for tie in 0..3 {
        // The witness's word: nobody holds the group (the tie goes on).
        sb.publish_view(0, 0, 2);
        b.engine.tick(&mut io, Instant::now());
        assert!(
            sb.want.swap(false, SeqCst),
            "tie {tie}: b does not ask again"
        );
        sb.outcome.store(UNREACHABLE, SeqCst);
        b.engine.tick(&mut io, Instant::now());
        assert_eq!(b.engine.mode(), Mode::Fenced);
    }
    sb.publish_view(0, 0, 2);
    b.engine.tick(&mut io, Instant::now());
    assert!(sb.want.swap(false, SeqCst), "b does not ask again");
    sb.epoch.store(1, SeqCst);
    sb.publish_view(2, 1, 2);
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, Instant::now());
    b.engine.tick(&mut io, Instant::now());
    assert_eq!((b.engine.mode(), b.engine.grant_epoch), (Mode::Survivor, 1));
}
