//! The replica state written off the reactor: a survivor acknowledges nothing until its
//! state is durable, and fail-stops when it cannot be written.

use super::*;
use crate::layer::mirror::failover::{FailoverSlot, GRANTED};
use crate::layer::mirror::persist::Persister;
use std::sync::atomic::Ordering::SeqCst;

/// Leader `a` with a state file and the persister `p`, in a session with follower `b`;
/// writes from `a` are held when the link breaks; then the witness grants `a`.
fn granted_with(p: &Arc<Persister>, dir: &std::path::Path) -> (Site, Site, IoCx, Rng, u32) {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(11);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, _sb) = with_witness(Role::Follower);
    a.engine.cfg.state_file = Some(dir.join("a.mirror-state"));
    a.engine.set_persister(Arc::clone(p));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    for _ in 0..10 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
    }
    while complete_one(&mut a, &mut io, &mut rng) {}
    break_link(&mut a, &mut b);
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    assert!(sa.want.load(SeqCst), "no grant asked for");
    sa.epoch.store(7, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    a.engine.tick(&mut io, now);
    past_peer_lease(&mut a, &mut io);
    (a, b, io, rng, slot)
}

/// Lifts the hold when dropped, before the engine's clean stop waits for the persister (a
/// failing assertion must not leave the stop waiting).
struct Unhold(Arc<Persister>);
impl Drop for Unhold {
    fn drop(&mut self) {
        self.0.hold(false);
    }
}

/// The survivor state is handed to a persister that takes its time: the engine goes on at
/// once, finishes the held writes (applied before the link broke), applies no new write
/// alone (a crash now would restart it in sync, with nothing recording that write) and
/// acknowledges nothing until the persister reports "survivor, epoch 7" durable; then the new
/// writes are applied and all are acknowledged.
#[test]
fn a_survivor_acknowledges_no_write_until_its_state_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let p = Persister::spawn().unwrap();
    p.hold(true);
    let t = Instant::now();
    let (mut a, _b, mut io, mut rng, mut slot) = granted_with(&p, dir.path());
    let _unhold = Unhold(Arc::clone(&p));
    assert_eq!(a.engine.mode(), Mode::Survivor);
    for _ in 0..10 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
    }
    for _ in 0..20 {
        while complete_one(&mut a, &mut io, &mut rng) {}
        a.engine.tick(&mut io, Instant::now());
        a.engine.poll_durable();
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the engine waited for the disk"
    );
    collect(&mut a);
    assert_eq!(
        (a.ok, a.failed, a.outstanding),
        (0, 0, 20),
        "a survivor write acknowledged (or failed) before its state was durable"
    );
    assert_eq!(a.engine.held_answers(), 10);
    assert!(
        a.disk.borrow().pending.is_empty(),
        "applied alone before durable"
    );
    assert_eq!(
        crate::layer::mirror::state::load(&dir.path().join("a.mirror-state")).unwrap(),
        None
    );
    // The disk catches up: every write is applied and acknowledged.
    p.hold(false);
    assert!(a.engine.wait_persisted());
    a.engine.poll_durable();
    a.engine.poll_actlog(&mut io);
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!((a.ok, a.failed, a.outstanding), (20, 0, 0));
    let st = crate::layer::mirror::state::load(&dir.path().join("a.mirror-state"))
        .unwrap()
        .unwrap();
    assert_eq!((st.mode, st.epoch), (1, 7));
    // From now on a survivor write is acknowledged as soon as it is applied.
    submit(&mut a, &mut io, &mut rng, &mut slot);
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (21, 0));
}

/// The survivor state cannot be written: nothing is acknowledged, every held and new
/// request fails with EIO, reads are refused, no session or grant is taken again, and the
/// status says why.
#[test]
fn a_survivor_that_cannot_persist_its_state_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let p = Persister::spawn().unwrap();
    p.hold(true);
    p.fail_saves(true);
    let (mut a, _b, mut io, mut rng, mut slot) = granted_with(&p, dir.path());
    let _unhold = Unhold(Arc::clone(&p));
    for _ in 0..5 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
    }
    while complete_one(&mut a, &mut io, &mut rng) {}
    p.hold(false);
    assert!(!a.engine.wait_persisted());
    a.engine.tick(&mut io, Instant::now());
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!(
        (a.ok, a.failed, a.outstanding),
        (0, 15, 0),
        "acknowledged without a durable state"
    );
    assert!(a.engine.persist_failed());
    assert_eq!(a.engine.mode(), Mode::Fenced);
    assert!(a.engine.no_io());
    assert_ne!(a.engine.replica_state(), 1, "still claims survivorship");
    let tag = IoTag { conn: 1, slot: 999 };
    assert_eq!(
        a.engine
            .submit(&mut io, 0, tag, Update::Write(&[1; 512]), 0, false),
        Start::Done(Err(Errno::UNAVAILABLE))
    );
    let snap = a.engine.stats().snapshot("t", true);
    assert_eq!(snap.state, "failed");
    assert!(
        snap.persist_error
            .as_deref()
            .is_some_and(|e| e.contains("injected")),
        "{snap:?}"
    );
    // No session and no grant any more.
    assert!(a.engine.session_start(&mut io, 1).is_err());
    let slot_a: Arc<FailoverSlot> = a.engine.cfg.failover.clone().unwrap();
    slot_a.want.store(false, SeqCst);
    a.engine.stats().takeover.store(true, SeqCst);
    a.engine.tick(&mut io, Instant::now());
    a.engine.tick(&mut io, Instant::now());
    assert!(!slot_a.want.load(SeqCst), "asked for a grant after failing");
    // Nothing was ever written, and a stop writes nothing either.
    drop(a);
    assert_eq!(
        crate::layer::mirror::state::load(&dir.path().join("a.mirror-state")).unwrap(),
        None
    );
}

/// A survivor (epoch 7) with a write acknowledged alone at 32 KiB stops cleanly (its dirty map
/// exact) and restarts from its state with a fresh failover slot; a new write at 0 waits for
/// the witness, reads are refused here and at other reactors, and no session is accepted.
fn restarted_survivor(dir: &std::path::Path) -> (Site, Arc<FailoverSlot>, IoCx, Rng, u32) {
    let p = Persister::spawn().unwrap();
    let (mut a, _b, mut io, mut rng, mut slot) = granted_with(&p, dir);
    assert!(a.engine.wait_persisted());
    a.engine.poll_durable();
    write_at(&mut a, &mut io, &mut slot, 32768, 0x5A, 4096);
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!(a.outstanding, 0);
    let mut cfg = a.engine.cfg.clone();
    let fresh = Arc::new(FailoverSlot::default());
    cfg.failover = Some(Arc::clone(&fresh));
    let new = Engine::new(
        cfg,
        Box::new(SlowChannel(Rc::clone(&a.disk))),
        0,
        Arc::new(MirrorStats::default()),
    );
    // The clean stop (the engine's drop), then the start.
    drop(std::mem::replace(&mut a.engine, new));
    a.engine.set_persister(Persister::spawn().unwrap());
    a.engine.restore().unwrap();
    a.outstanding = 0;
    a.ok = 0;
    assert_eq!(a.engine.mode(), Mode::Survivor);
    assert_eq!(fresh.survivors.load(SeqCst), 1);
    let dirty = a.engine.dirty_bytes();
    assert!(
        (4096..SIZE).contains(&dirty),
        "the dirty map not exact: {dirty}"
    );
    write_at(&mut a, &mut io, &mut slot, 0, 0x6B, 4096);
    for _ in 0..5 {
        while complete_one(&mut a, &mut io, &mut rng) {}
        a.engine.tick(&mut io, Instant::now());
    }
    collect(&mut a);
    assert_eq!(
        (a.ok, a.failed, a.outstanding),
        (0, 0, 1),
        "answered before the witness confirmed the grant"
    );
    assert!(
        !a.engine.may_read(Instant::now()),
        "read before the witness confirmed"
    );
    assert!(
        !a.engine.stats().may_read(),
        "other reactors may read before the witness confirmed"
    );
    assert!(
        a.engine.session_start(&mut io, 2).is_err(),
        "a session (a resync from here) before the witness confirmed"
    );
    (a, fresh, io, rng, slot)
}

/// What the witness says decides (`failover::verdict` judges its answer against the held
/// epoch 7): still this site's grant, a witness started anew (no holder, an older epoch), or
/// no witness answering: serve; given to another site, or released (no holder at epoch 7):
/// fence, the write failed, the regions written alone suspect (copied back from the peer
/// taken over).
#[test]
fn a_restarted_survivor_serves_only_once_the_witness_confirms_its_grant() {
    use crate::layer::mirror::failover::{WITNESS_REACHABLE, WITNESS_UNREACHABLE};
    // (witness, its answer: (holder, 0: none, epoch); this site is 1) -> serves
    let cases = [
        (WITNESS_REACHABLE, Some((1, 7)), true),
        (WITNESS_REACHABLE, Some((0, 0)), true),
        (WITNESS_UNREACHABLE, None, true),
        (WITNESS_REACHABLE, Some((2, 8)), false),
        (WITNESS_REACHABLE, Some((0, 7)), false),
    ];
    for (i, (w, view, serves)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, slot, mut io, mut rng, _) = restarted_survivor(dir.path());
        let dirty = a.engine.dirty_bytes();
        if let Some((holder, epoch)) = view {
            slot.publish_view(holder, epoch, 1);
        }
        slot.witness.store(w, SeqCst);
        for _ in 0..5 {
            a.engine.tick(&mut io, Instant::now());
            while complete_one(&mut a, &mut io, &mut rng) {}
        }
        collect(&mut a);
        if serves {
            assert_eq!((a.ok, a.outstanding), (1, 0), "case {i}");
            assert_eq!(a.engine.mode(), Mode::Survivor, "case {i}");
            assert!(a.engine.may_read(Instant::now()), "case {i}");
            assert!(a.engine.stats().may_read(), "case {i}");
        } else {
            assert_eq!((a.ok, a.failed, a.outstanding), (0, 1, 0), "case {i}");
            assert_eq!(a.engine.mode(), Mode::Fenced, "case {i}");
            assert_eq!(a.engine.dirty_bytes(), 0, "case {i}");
            // What it wrote alone (the failed write at 0 included): suspect now.
            assert!(
                a.engine.suspect_bytes() >= dirty,
                "case {i}: the writes made alone are not suspect"
            );
            assert_eq!(slot.survivors.load(SeqCst), 0, "case {i}");
        }
    }
}

/// [`restarted_survivor`] trusted while the witness is out of reach: serving alone, its
/// restart's write done.
fn trusted_survivor(dir: &std::path::Path) -> (Site, Arc<FailoverSlot>, IoCx, Rng, u32) {
    use crate::layer::mirror::failover::WITNESS_UNREACHABLE;
    let (mut a, slot, mut io, mut rng, n) = restarted_survivor(dir);
    slot.witness.store(WITNESS_UNREACHABLE, SeqCst);
    a.engine.tick(&mut io, Instant::now());
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    (a, slot, io, rng, n)
}

/// The witness reachable again, its first word naming another holder (an operator released
/// this site's grant); one tick of `a`.
fn release(slot: &FailoverSlot, a: &mut Site, io: &mut IoCx) {
    slot.witness
        .store(crate::layer::mirror::failover::WITNESS_REACHABLE, SeqCst);
    slot.publish_view(2, 8, 1);
    a.engine.tick(io, Instant::now());
}

/// A restored survivor trusted while the witness was out of reach takes the witness's first
/// answer when it comes: released, it fences then.
#[test]
fn a_survivor_trusted_without_the_witness_fences_at_its_first_answer_if_released() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, slot, mut io, mut rng, mut n) = trusted_survivor(dir.path());
    assert_eq!((a.ok, a.outstanding), (1, 0));
    write_at(&mut a, &mut io, &mut n, 8192, 0x7C, 4096);
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!(a.ok, 2);
    release(&slot, &mut a, &mut io);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    assert!(!a.engine.stats().may_read());
}

/// A survivor whose grant an operator released fences with a write and a flush still at its
/// device: they are answered EIO, not unavailable. The site granted now lacks the writes this
/// one acknowledged alone, so a host's retry there (a flush answered done) would claim what
/// is gone (unlike a site that fences while its peer holds everything it acknowledged:
/// `failover::a_fenced_site_answers_its_held_updates_unavailable_...`).
#[test]
fn a_released_survivor_answers_what_it_held_with_eio_not_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, slot, mut io, mut rng, mut n) = trusted_survivor(dir.path());
    let (ok, errors) = (a.ok, a.errors.len());
    // Held at the device when the release comes.
    write_at(&mut a, &mut io, &mut n, 8192, 0x7C, 4096);
    a.disk.borrow_mut().slow_flush = true;
    flush_at(&mut a, &mut io, &mut n);
    collect(&mut a);
    assert_eq!((a.ok, a.disk.borrow().pending.len()), (ok, 2), "both held");
    release(&slot, &mut a, &mut io);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!(a.ok, ok, "nothing acknowledged after the release");
    assert_eq!(a.errors[errors..], [Errno::IO, Errno::IO]);
}

/// A survivor granted while running never second-guesses its grant: a later answer naming
/// no holder (a release meant for an older grant, a view from before the grant) leaves it
/// serving.
#[test]
fn a_survivor_granted_while_running_is_not_fenced_by_a_later_view() {
    let dir = tempfile::tempdir().unwrap();
    let p = Persister::spawn().unwrap();
    let (mut a, _b, mut io, _rng, _n) = granted_with(&p, dir.path());
    let slot = a.engine.cfg.failover.clone().unwrap();
    slot.publish_view(0, 7, 1);
    a.engine.tick(&mut io, Instant::now());
    assert_eq!(a.engine.mode(), Mode::Survivor);
}

/// A survivor without a witness grant (the source of a full copy or of a reconciliation,
/// epoch 0) restored from its state serves at once: there is nothing to confirm.
#[test]
fn a_restored_survivor_without_a_grant_does_not_wait_for_the_witness() {
    use crate::layer::mirror::state::{Persisted, save};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mirror-state");
    save(
        &path,
        &Persisted {
            mode: 1,
            clean: true,
            epoch: 0,
            size: SIZE,
            granularity: 4096,
            bitmap: vec![1],
            written: vec![1],
            led: true,
            suspect: Some(vec![]),
            identity: 0,
            leads: None,
            boot: 0,
            host_restarted: false,
            fenced_unanswered: None,
            fenced_denied: false,
        },
    )
    .unwrap();
    let (mut a, slot) = with_witness(Role::Leader);
    a.engine.cfg.state_file = Some(path);
    a.engine.restore().unwrap();
    assert_eq!(a.engine.mode(), Mode::Survivor);
    assert!(a.engine.may_read(Instant::now()));
    assert_eq!(slot.survivors.load(SeqCst), 0, "counted as holding a grant");
}

/// A restored survivor trusted while the witness was out of reach starts resyncing its
/// returning peer; then the witness's first answer says its grant was released: it fences in
/// the middle of the resync, abandons it (no RESYNC_DONE, the link dropped) and the peer never
/// calls itself in sync with half a copy.
#[test]
fn a_survivor_fenced_in_the_middle_of_a_resync_never_ends_it() {
    use crate::layer::mirror::failover::{WITNESS_REACHABLE, WITNESS_UNREACHABLE};
    let dir = tempfile::tempdir().unwrap();
    let (mut a, slot, mut io, mut rng, _) = restarted_survivor(dir.path());
    slot.witness.store(WITNESS_UNREACHABLE, SeqCst);
    a.engine.tick(&mut io, Instant::now());
    assert!(
        a.engine.may_read(Instant::now()),
        "trusted while out of reach"
    );
    let (mut b, _sb) = with_witness(Role::Follower);
    // (What the engine before the restart left on the wire never reaches b.)
    a.wire.clear();
    let (sa, sb) = (a.engine.replica_state(), b.engine.replica_state());
    a.engine.session_start(&mut io, sb).expect("session at a");
    b.engine.session_start(&mut io, sa).expect("session at b");
    assert_eq!(b.engine.mode(), Mode::Resyncing);
    // b's list of suspect regions reaches a (it ends at once: b has none); a starts reading
    // the regions to copy.
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    a.engine.tick(&mut io, Instant::now());
    assert!(
        !a.disk.borrow().pending.is_empty(),
        "no copy under way at the fence"
    );
    // The witness answers: released.
    slot.witness.store(WITNESS_REACHABLE, SeqCst);
    slot.publish_view(2, 8, 1);
    a.engine.tick(&mut io, Instant::now());
    assert_eq!(a.engine.mode(), Mode::Fenced);
    assert!(a.engine.kill_link.is_some(), "the link is not dropped");
    // What a still had to send reaches b before the link goes: no RESYNC_DONE in it.
    for _ in 0..5 {
        a.engine.tick(&mut io, Instant::now());
        while complete_one(&mut a, &mut io, &mut rng) {}
    }
    a.engine.take_outbox(&mut a.wire);
    let mut at = 0;
    while let wire::Decoded::Msg(h, r) = wire::decode(&a.wire[at..]) {
        assert_ne!(h.ty, Type::ResyncDone, "a fenced source ended its resync");
        at += r.end;
    }
    receive(&mut a, &mut b, &mut io, usize::MAX);
    a.wire.clear();
    a.engine.link_down("test");
    b.engine.link_down("test");
    for _ in 0..5 {
        b.engine.tick(&mut io, Instant::now());
        while complete_one(&mut b, &mut io, &mut rng) {}
    }
    assert_eq!(
        b.engine.mode(),
        Mode::Resyncing,
        "b in sync with half a copy"
    );
    assert_eq!(a.engine.mode(), Mode::Fenced);
    assert_eq!(slot.survivors.load(SeqCst), 0);
}

/// No word at all from the failover thread (no answer, not even "out of reach"): after
/// `GRANT_CHECK_MAX` the restored survivor serves on its persisted grant, as when the witness
/// is out of reach.
#[test]
fn a_restored_survivor_that_hears_nothing_serves_after_a_bounded_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _slot, mut io, mut rng, _) = restarted_survivor(dir.path());
    a.engine.tick(&mut io, Instant::now());
    assert!(!a.engine.may_read(Instant::now()), "served at once");
    a.engine.grant_check =
        super::super::alone::GrantCheck::Waiting(Instant::now() - Duration::from_secs(6));
    a.engine.tick(&mut io, Instant::now());
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1, 0));
    assert!(a.engine.may_read(Instant::now()));
}

/// A survivor (a, epoch 7) resyncs its peer; the target confirms, and the source's "in sync"
/// cannot be written (its state directory fails at that moment): it fail-stops, its file still
/// saying "survivor, epoch 7". The peer, in sync, then loses its link and asks the witness,
/// which denies it while a holds the group: the volume stops at both sites. The grant must be
/// given back, and safely: a restart of a from its file must not serve alone on that grant
/// (the witness may have granted the peer meanwhile, and be out of reach at the restart). So
/// a removes its state file first (a restart is then a new replica, which serves nothing until
/// its peer sent it everything) and gives the grant back once the removal is durable. Before,
/// the grant was kept for good.
#[test]
fn a_source_that_cannot_persist_in_sync_after_its_resync_gives_the_grant_back_safely() {
    let dir = tempfile::tempdir().unwrap();
    let p = Persister::spawn().unwrap();
    let (mut a, mut b, mut io, mut rng, _) = granted_with(&p, dir.path());
    assert!(a.engine.wait_persisted());
    let sa: Arc<FailoverSlot> = a.engine.cfg.failover.clone().unwrap();
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    for _ in 0..100_000 {
        if b.engine.mode() == Mode::Mirroring {
            break;
        }
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        complete_one(&mut a, &mut io, &mut rng);
        complete_one(&mut b, &mut io, &mut rng);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        if b.engine.mode() != Mode::Mirroring {
            deliver(&mut b, &mut a, &mut io, usize::MAX);
        }
    }
    assert_eq!(b.engine.mode(), Mode::Mirroring);
    // The state directory fails now (writes only: a full file system).
    p.fail_saves(true);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    assert_eq!(
        a.engine.mode(),
        Mode::Mirroring,
        "the confirmation was not taken"
    );
    for _ in 0..1000 {
        a.engine.tick(&mut io, Instant::now());
        if sa.release.load(SeqCst) != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(a.engine.persist_failed());
    assert_eq!(
        sa.release.load(SeqCst),
        7,
        "a fail-stopped source in sync keeps the grant: its peer is denied at the next loss"
    );
    // The peer lost its link when a stopped and asked at once: the witness denied it while a
    // still held the group. Once a's release is taken (the witness's word: nobody holds the
    // group at epoch 7) it asks again, and is granted.
    use crate::layer::mirror::failover::DENIED;
    let sb: Arc<FailoverSlot> = b.engine.cfg.failover.clone().unwrap();
    b.engine.link_down("the peer fail-stopped");
    b.wire.clear();
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "b does not ask");
    sb.publish_view(1, 7, 2);
    sb.outcome.store(DENIED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    sb.publish_view(0, 7, 2);
    b.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    assert!(
        sb.want.swap(false, SeqCst),
        "b, denied while a held the grant, does not ask again once a gave it back"
    );
    sb.epoch.store(8, SeqCst);
    sb.publish_view(2, 8, 2);
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!((b.engine.mode(), b.engine.grant_epoch), (Mode::Survivor, 8));
    // Restarted from what is on disk: never the survivor of epoch 7.
    p.fail_saves(false);
    crash_and_restart(&mut a);
    assert_ne!(a.engine.mode(), Mode::Survivor, "restarted as the survivor");
    assert_eq!(a.engine.replica_state(), 4, "not a new replica");
}

/// A site denied because its peer holds the group asks again only when the witness's word
/// shows that very grant given back (nobody holds the group at the denial's epoch), and once:
/// not while the peer holds it, not for a newer grant, and not again when denied again.
#[test]
fn a_denied_site_asks_again_only_once_the_holder_gave_that_grant_back() {
    use crate::layer::mirror::failover::DENIED;
    let (mut a, sa, _b, _, mut io, _rng, _) = super::failover::cut_and_answer(107, DENIED, GRANTED);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    sa.want.store(false, SeqCst);
    let now = Instant::now();
    // (The denial's word: b (site 2) holds the group at epoch 0 here; say 3.)
    a.engine.denied_by = Some((3, sa.view_seq.load(SeqCst)));
    for (holder, epoch) in [(2, 3), (2, 3), (0, 4), (2, 4)] {
        sa.publish_view(holder, epoch, 1);
        a.engine.tick(&mut io, now);
        assert!(!sa.want.load(SeqCst), "asked at ({holder}, {epoch})");
    }
    a.engine.denied_by = Some((3, sa.view_seq.load(SeqCst)));
    sa.publish_view(0, 3, 1);
    a.engine.tick(&mut io, now);
    a.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "not asked again");
    // Denied again (stale, say: nobody holds it): not asked a third time.
    sa.publish_view(0, 3, 1);
    sa.outcome.store(DENIED, SeqCst);
    a.engine.tick(&mut io, now);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    for _ in 0..3 {
        sa.publish_view(0, 3, 1);
        a.engine.tick(&mut io, now);
    }
    assert!(!sa.want.load(SeqCst), "asked again and again");
}

/// A denied site's second request (the holder's grant given back) answered only after the
/// session came back (in session: a denial, or no answer) still leaves the next loss's denial
/// watched: that request was answered, so a later release of the holder's grant makes the
/// site ask again. Before, the mark of the second request stayed set when the answer came in
/// session, and the next denial was taken for that second request's: with the holder's grant
/// given back then (a source fail-stopped right after a resync), the site never asked again
/// and the volume served nowhere.
#[test]
fn a_second_request_answered_in_session_leaves_the_next_denial_watched() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    for in_session in [DENIED, UNREACHABLE] {
        let (mut a, sa, mut b, _, mut io, mut rng, _) =
            super::failover::cut_and_answer(131, DENIED, GRANTED);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        sa.want.store(false, SeqCst);
        let now = Instant::now();
        // Denied while b (site 2) held epoch 3; the witness's word then shows it given back.
        a.engine.denied_by = Some((3, sa.view_seq.load(SeqCst)));
        sa.publish_view(0, 3, 1);
        a.engine.tick(&mut io, now);
        a.engine.tick(&mut io, now);
        assert!(sa.want.swap(false, SeqCst), "not asked again");
        // The link comes back before the answer, which comes in session.
        meet(&mut a, &mut b, &mut io);
        sa.outcome.store(in_session, SeqCst);
        a.engine.tick(&mut io, now);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_eq!(a.engine.mode(), Mode::Mirroring);
        // The next loss: b holds the group (epoch 5), a is denied; then b gives it back.
        break_link(&mut a, &mut b);
        a.engine.tick(&mut io, now);
        assert!(sa.want.swap(false, SeqCst), "a does not ask at the loss");
        sa.publish_view(2, 5, 1);
        sa.outcome.store(DENIED, SeqCst);
        a.engine.tick(&mut io, now);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        sa.publish_view(0, 5, 1);
        a.engine.tick(&mut io, now);
        a.engine.tick(&mut io, now);
        assert!(
            sa.want.swap(false, SeqCst),
            "answered in session ({in_session}), the second request's mark stays: the next \
             denial is not watched and the site never asks again once the holder gave back"
        );
    }
}

/// A site denied because its peer held the group asks again once that grant is given back
/// without a session between them, and the witness grants it (it knew the group's epoch: in
/// sync with the holder at that grant). The holder may have given it back itself (a resync
/// source fail-stopped after its target confirmed: nothing missing here) or an operator may
/// have released it (a survivor lost for good, `--accept-data-loss`): then the holder may
/// have acknowledged writes alone at that epoch after this site was last in sync with it (a
/// source that lost its session after RESYNC_DONE keeps its grant and serves on). Which is
/// unknown here, so the grant is taken as a takeover, by every volume of the group: every
/// region ever written goes to the peer, and the history below is told this replica may be
/// stale. Before, it was a plain grant: the peer got only the dirty and suspect regions, and
/// a CDP history below claimed the moments the lost holder's writes were missing from.
#[test]
fn a_grant_asked_again_after_the_holders_grant_was_given_back_is_a_takeover() {
    use crate::layer::mirror::failover::DENIED;
    let (mut a, sa, _b, _, mut io, _rng, _) = super::failover::cut_and_answer(163, DENIED, GRANTED);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    sa.want.store(false, SeqCst);
    let now = Instant::now();
    // Denied while b (site 2) held epoch 3; the witness's word then shows it given back.
    a.engine.denied_by = Some((3, sa.view_seq.load(SeqCst)));
    sa.publish_view(0, 3, 1);
    a.engine.tick(&mut io, now);
    a.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "not asked again");
    // (Regions mirrored in earlier sessions: written, neither dirty nor suspect.)
    let (size, g) = (a.engine.cfg.size, a.engine.cfg.dirty_granularity);
    a.engine.written = RegionMap::all(size, g);
    sa.epoch.store(4, SeqCst);
    sa.publish_view(1, 4, 1);
    sa.outcome.store(GRANTED, SeqCst);
    a.engine.tick(&mut io, now);
    assert_eq!((a.engine.mode(), a.engine.grant_epoch), (Mode::Survivor, 4));
    assert_eq!(
        a.engine.dirty_bytes(),
        a.engine.written.bytes(),
        "the peer is not given every region ever written"
    );
    assert!(
        sa.takeover_at(4),
        "another volume of the group takes the grant as a plain one"
    );
}

/// As above, but the answer to the second request is lost (the witness granted it, its reply
/// dropped): a fences for want of it and adopts the grant from the witness's word. That grant
/// is the same one, after the holder's grant was given back: a takeover (every region ever
/// written to the peer, the history below told it may be stale), for every volume of the
/// group, and so after a restart before the word (state flags bit 4). Failed before: the
/// request's lost answer was adopted as a plain grant.
#[test]
fn a_lost_answer_to_a_request_asked_again_after_a_give_back_is_adopted_as_a_takeover() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, sa, _b, _, mut io, _rng, _) =
            super::failover::cut_and_answer(167, DENIED, GRANTED);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        a.engine.cfg.state_file = Some(dir.path().join("a"));
        a.engine
            .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
        sa.want.store(false, SeqCst);
        let now = Instant::now();
        // Denied while b (site 2) held epoch 3; the witness's word then shows it given back.
        // (a's replica complete at 3: b, holding 3, had resynced it and fail-stopped before
        // giving 3 back, the case a request asked again is for; asked at 3, granted at 4.
        // Complete at less, a grant at 4 is not one a's request could win: never adopted,
        // `group_grant::a_volume_whose_second_request_was_lost_never_adopts_a_grant_newer_than_its_replica`.)
        a.engine.witness.complete_at(3);
        a.engine.denied_by = Some((3, sa.view_seq.load(SeqCst)));
        sa.publish_view(0, 3, 1);
        a.engine.tick(&mut io, now);
        a.engine.tick(&mut io, now);
        assert!(sa.want.swap(false, SeqCst), "not asked again");
        // The witness grants it (epoch 4); the answer is lost.
        sa.outcome.store(UNREACHABLE, SeqCst);
        a.engine.tick(&mut io, now);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        let sa = if restart {
            let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
            a.engine.cfg.failover = Some(Arc::clone(&sa2));
            crash_and_restart(&mut a);
            assert_eq!(a.engine.mode(), Mode::Fenced);
            sa2
        } else {
            sa
        };
        // (Regions mirrored in earlier sessions: written, neither dirty nor suspect.)
        let (size, g) = (a.engine.cfg.size, a.engine.cfg.dirty_granularity);
        a.engine.written = RegionMap::all(size, g);
        // The witness's word: a holds the group at epoch 4.
        sa.publish_view(1, 4, 1);
        a.engine.tick(&mut io, now);
        assert_eq!(
            (a.engine.mode(), a.engine.grant_epoch),
            (Mode::Survivor, 4),
            "restart {restart}"
        );
        assert_eq!(
            a.engine.dirty_bytes(),
            a.engine.written.bytes(),
            "restart {restart}: the lost answer adopted as a plain grant (the peer is not given every region ever written)"
        );
        assert!(
            sa.takeover_at(4),
            "restart {restart}: another volume of the group takes the grant as a plain one"
        );
    }
}

/// Both sites lose their link while the witness is out of reach: both requests go
/// unanswered and the witness records nothing; both fence for want of an answer. The witness
/// is heard again (its word: nobody holds the group), the link still down: a site fenced so
/// must ask once more (its replica held every acknowledged write at the fence, and nobody
/// served since: the witness would show a holder, or a later epoch and refuse it as stale),
/// and the one granted serves. Before, neither asked again: nobody served until the link
/// returned, with the witness back and both replicas whole.
#[test]
fn a_site_fenced_for_an_unanswered_request_the_witness_never_granted_asks_again() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    let (mut a, sa, mut b, sb, mut io, _rng, _) =
        super::failover::cut_and_answer(191, UNREACHABLE, UNREACHABLE);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    sa.want.store(false, SeqCst);
    sb.want.store(false, SeqCst);
    let now = Instant::now();
    // The witness's word: nobody holds the group (epoch 0).
    sa.publish_view(0, 0, 1);
    sb.publish_view(0, 0, 2);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    assert!(
        sa.want.swap(false, SeqCst) && sb.want.swap(false, SeqCst),
        "a site fenced for a request the witness never granted does not ask again"
    );
    // The witness grants a, denies b (a holds it).
    sa.epoch.store(1, SeqCst);
    sa.publish_view(1, 1, 1);
    sa.outcome.store(GRANTED, SeqCst);
    sb.publish_view(1, 1, 2);
    sb.outcome.store(DENIED, SeqCst);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    assert_eq!(
        (a.engine.mode(), a.engine.grant_epoch, b.engine.mode()),
        (Mode::Survivor, 1, Mode::Fenced)
    );
    // Asked once per unanswered fence: b, denied, does not ask again at the next words.
    for _ in 0..3 {
        sb.publish_view(1, 1, 2);
        b.engine.tick(&mut io, now);
    }
    assert!(!sb.want.load(SeqCst), "asked again and again");
}

/// As above, but the witness's word, once heard again, names nobody holding the group at a
/// later epoch than a last saw (3): a grant came and went while a was fenced, the peer's
/// (only another site's grant is given back while a watches for its answer). Nobody may have
/// served since a's fence no more: the peer's grant was given back without resyncing a (an
/// operator's release of a survivor lost for good, say). a asks once more, and a grant
/// answered so is a takeover, as a denied site's second request (every region ever written
/// to the peer, the history below told it may be stale). Failed before: a plain grant.
#[test]
fn a_site_fenced_for_an_unanswered_request_asks_again_as_a_takeover_after_another_grant_came_and_went()
 {
    use crate::layer::mirror::failover::UNREACHABLE;
    let (mut a, sa, _b, _, mut io, _rng, _) =
        super::failover::cut_and_answer(193, UNREACHABLE, UNREACHABLE);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    sa.want.store(false, SeqCst);
    let now = Instant::now();
    // The witness's word: nobody holds the group, at epoch 3 (b's grant, given back).
    sa.publish_view(0, 3, 1);
    a.engine.tick(&mut io, now);
    a.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "not asked again");
    let (size, g) = (a.engine.cfg.size, a.engine.cfg.dirty_granularity);
    a.engine.written = RegionMap::all(size, g);
    sa.epoch.store(4, SeqCst);
    sa.publish_view(1, 4, 1);
    sa.outcome.store(GRANTED, SeqCst);
    a.engine.tick(&mut io, now);
    assert_eq!((a.engine.mode(), a.engine.grant_epoch), (Mode::Survivor, 4));
    assert_eq!(
        a.engine.dirty_bytes(),
        a.engine.written.bytes(),
        "a plain grant after another site's grant was given back (the peer is not given every region ever written)"
    );
    assert!(
        sa.takeover_at(4),
        "the group's other volumes take it as plain"
    );
}

/// b's request goes unanswered (fenced for want of it) while a is granted epoch 1 and serves
/// alone; b hears the witness again and its word names a the holder at 1. The witness is then
/// restarted from an older copy of its state (or anew): its word names nobody, at epoch 0. b
/// must not take that for "nobody was granted since my fence" and ask again: the witness went
/// back (epochs never go down otherwise), and a, whose grant it forgot, may be serving alone
/// (its claim-back, if it comes, is the witness's business: docs/witness-protocol.md, "A
/// witness that forgot a grant"). Failed before: b asked, and with a down or slow to claim its
/// grant back, was granted epoch 1 too.
#[test]
fn a_site_fenced_for_an_unanswered_request_does_not_ask_again_on_a_word_older_than_one_it_saw() {
    use crate::layer::mirror::failover::UNREACHABLE;
    let (mut a, sa, mut b, sb, mut io, _rng, _) =
        super::failover::cut_and_answer(197, GRANTED, UNREACHABLE);
    let _ = &sa;
    assert_eq!(b.engine.mode(), Mode::Fenced);
    sb.want.store(false, SeqCst);
    let now = Instant::now();
    sb.publish_view(1, 1, 2);
    b.engine.tick(&mut io, now);
    a.engine.tick(&mut io, now);
    assert!(!sb.want.load(SeqCst), "asked while a holds the group");
    for _ in 0..3 {
        sb.publish_view(0, 0, 2);
        b.engine.tick(&mut io, now);
    }
    assert!(
        !sb.want.load(SeqCst),
        "b asked again on a witness word older than one it had seen"
    );
    assert_eq!(b.engine.mode(), Mode::Fenced);
}
