//! A site restarted (with or without its state) in the middle of the witness's business: a
//! grant the witness may hold for it that nothing in the new process knows of (a lost answer
//! watched in session, a release not yet sent or not yet answered) must still be given back
//! once it is in sync again, or the witness denies the peer at the next loss for good.
//!
//! Model: as `failover.rs` (two engines back to back, the test answering in the witness's
//! place; `crash_and_restart` starts a new engine from the state files). Invariant checked: a
//! grant the witness holds for a site in sync with its peer, which no volume of the group
//! serves on, is given back.

use super::failover::traffic_then_cut;
use super::*;

/// a watches for a lost grant in session (`Grant::LostInSession`: its request, sent while the
/// link was down, was unanswered after the session came back; the witness recorded it) and
/// crashes before the witness's words name it the holder; it restarts from its state (in
/// sync) and mirrors again. The witness's words then name a the group's holder: a must give
/// the grant back. Before, the watch was in memory only: restarted, a held the group at the
/// witness for good, and at the next loss the peer was denied even with a the site gone.
#[test]
fn a_lost_grant_watched_in_session_is_given_back_after_a_restart() {
    use crate::layer::mirror::failover::UNREACHABLE;
    use std::sync::atomic::Ordering::SeqCst;
    for with_state in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let mut rng = Rng(101);
        let mut slot = 0;
        let (mut a, sa, mut b, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
        a.engine.cfg.state_file = Some(dir.path().join("a"));
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        assert!(sa.want.swap(false, SeqCst), "sent");
        meet(&mut a, &mut b, &mut io);
        a.engine.tick(&mut io, now);
        sa.outcome.store(UNREACHABLE, SeqCst);
        a.engine.tick(&mut io, now);
        assert_eq!(a.engine.mode(), Mode::Mirroring);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        // a crashes before the witness's word (a new process: a new failover slot too).
        if !with_state {
            // (Restarted over a new, empty replica: its state gone with its disk.)
            a.engine.cfg.state_file = Some(dir.path().join("a-new"));
        }
        let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
        a.engine.cfg.failover = Some(Arc::clone(&sa2));
        crash_and_restart(&mut a);
        b.engine.link_down("a restarted");
        b.wire.clear();
        meet(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_eq!(a.engine.mode(), Mode::Mirroring);
        // The witness's words: a holds the group at epoch 1.
        for _ in 0..3 {
            sa2.publish_view(1, 1, 1);
            a.engine.tick(&mut io, Instant::now());
        }
        assert_eq!(
            sa2.release.load(SeqCst),
            1,
            "with state: {with_state}: the grant the witness holds for a restarted site in sync \
             is never given back"
        );
    }
}

/// A survivor (a, epoch 1) resyncs its peer; "in sync" is durable and its release handed to
/// the failover thread, which has not sent it when a crashes. Restarted from its state (in
/// sync), a must hold no grant of its own (it serves on none), and give the grant the witness
/// still holds for it back once mirroring again. Before, the state in sync still carried epoch
/// 1 (saved before the engine dropped it) and the restart took it as a grant held: never given
/// back (the peer denied at the next loss), and taken for a grant by the rules of a grant-less
/// resync source (a reconciliation's source went on alone after a lost RESYNC_DONE while the
/// witness, holding nothing, could grant the finished target: two sites serving alone).
#[test]
fn a_survivor_restarted_in_sync_before_its_release_went_out_holds_no_grant_and_gives_it_back() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut io) = lose_peer(true);
    let mut rng = Rng(113);
    a.engine.cfg.state_file = Some(dir.path().join("a"));
    a.engine
        .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
    a.engine.persist(false);
    assert!(a.engine.wait_persisted());
    let sa = a.engine.cfg.failover.clone().unwrap();
    meet(&mut a, &mut b, &mut io);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.engine.wait_persisted());
    // The release, not yet sent, dies with the process (a new slot).
    let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    let _ = sa;
    assert_eq!(
        a.engine.grant_epoch, 0,
        "restarted in sync, a takes itself for the holder of epoch 1"
    );
    b.engine.link_down("a restarted");
    b.wire.clear();
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    for _ in 0..2 {
        sa2.publish_view(1, 1, 1);
        a.engine.tick(&mut io, Instant::now());
    }
    assert_eq!(
        sa2.release.load(SeqCst),
        1,
        "the grant the witness still holds for a is never given back"
    );
}

/// A survivor (a, epoch 1) resyncs b; its RESYNC_DONE carries the grant's epoch, and b, once
/// complete, knows it (`learned_epoch`): asked at once after a's loss (a killed or fail-stopped
/// right after the resync, before any heartbeat of b's in sync was answered), b is not refused
/// as stale once a's grant is given back. Before, b knew the epoch only from such a heartbeat:
/// refused as stale, the volume served nowhere.
#[test]
fn a_resynced_site_knows_its_sources_grant_epoch_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let (mut a, mut b, mut io) = lose_peer(true);
    let mut rng = Rng(127);
    let sb = b.engine.cfg.failover.clone().unwrap();
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(sb.learned_epoch.load(SeqCst), 1);
}
