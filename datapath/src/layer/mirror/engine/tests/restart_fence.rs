//! A fenced site restarted while its link is still down: what it knew of the witness at its
//! fence (denied while the peer held the group, or fenced for want of an answer) must not
//! leave both sites stopped once the holder gives its grant back, nor let a site serve
//! without a write both sites acknowledged.
//!
//! Model: as `restart_grant.rs` (two engines back to back, the witness's own rules standing
//! in for the witness, `crash_and_restart` starting a new engine and failover slot from the
//! state files). Invariants checked: after the holder's give-back exactly one site serves, and
//! the write acknowledged before the cut is read back at both sites once they are in sync.

use super::restart_grant::Witness;
use super::*;

/// In sync with state files, W acknowledged (flushed nowhere), the link cut; both ask the
/// witness's rules: a's request is granted (epoch 1) and its answer lost (a fences for want of
/// it), b's denied while a holds the group (b fenced, denied by a's grant).
#[allow(clippy::type_complexity)]
pub(super) fn a_granted_unanswered_b_denied_by_the_rules(
    seed: u64,
    dir: &std::path::Path,
) -> (
    Site,
    Site,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
    Witness,
    IoCx,
    Rng,
) {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let mut wit = Witness::new();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(seed);
    let mut slot = 0;
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    for (s, n) in [(&mut a, "a"), (&mut b, "b")] {
        s.engine.cfg.state_file = Some(dir.join(n));
        s.engine
            .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
        s.engine.persist(false);
        assert!(s.engine.wait_persisted());
    }
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    write_at(&mut a, &mut io, &mut slot, OFF, W, 4096);
    exchange(&mut a, &mut b, &mut io, &mut rng, 4);
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1, 0), "W acknowledged");
    break_link(&mut a, &mut b);
    let now = Instant::now();
    both_ask(&mut a, &mut b, &mut io, now);
    assert_eq!(wit.ask(1, &sa), Some(1), "a's request is granted");
    sa.outcome.store(UNREACHABLE, SeqCst);
    assert_eq!(
        wit.ask(2, &sb),
        None,
        "b's request is denied while a holds it"
    );
    wit.show(&sb, 2);
    sb.outcome.store(DENIED, SeqCst);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    (a, b, sb, wit, io, rng)
}

pub(super) const OFF: u64 = 8192;
pub(super) const W: u8 = 0xB5;

/// Whether the 4 KiB at `OFF` hold W at `s`.
fn holds_w(s: &Site) -> bool {
    s.disk.borrow().bytes[OFF as usize..OFF as usize + 4096]
        .iter()
        .all(|&x| x == W)
}

/// a's power goes (its device keeps nothing it did not flush) and it restarts: fenced for want
/// of an answer with its host restarted, it gives the grant the witness holds for it back,
/// flagged unused (restart_grant.rs), through the failover thread's turn; b's failover slot
/// `sb` is then shown the witness's view, the grant given back.
fn a_restarts_after_a_power_loss_and_gives_back_unused(
    a: &mut Site,
    wit: &mut Witness,
    io: &mut IoCx,
    rng: &mut Rng,
    sb: &crate::layer::mirror::failover::FailoverSlot,
) -> Arc<crate::layer::mirror::failover::FailoverSlot> {
    use crate::layer::mirror::failover::{FailoverSlot, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    a.disk.borrow_mut().bytes = vec![0; SIZE as usize];
    a.engine.cfg.boot_id = 2;
    let sa2 = Arc::new(FailoverSlot::default());
    sa2.members.store(1, SeqCst);
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(a);
    wit.show(&sa2, 1);
    for _ in 0..3 {
        a.engine.tick(io, Instant::now());
        while complete_one(a, io, rng) {}
    }
    assert_eq!(a.engine.mode(), Mode::Fenced);
    let r = sa2.release.swap(0, SeqCst);
    assert_eq!(r, 1, "the grant held for a is not given back");
    assert!(decide_release(&sa2, r));
    assert!(
        sa2.release_is_unused(r),
        "the give-back is not flagged unused"
    );
    wit.release(1, &sa2, r, true);
    sa2.releasing.store(0, SeqCst);
    wit.show(sb, 2);
    assert_eq!(sb.view(), Some((false, 0, 1)), "the grant is given back");
    sa2
}

/// b, denied while a held the group (a's answer lost), is restarted (its process only: the
/// same boot, its device kept) with the link still down. a then loses its power and gives
/// the grant back unused. Before the restart b asked the witness again at that word
/// (`ask_again_if_released`) and served with W; restarted, it must do the same: its replica
/// held every acknowledged write at the denial, and the witness lets exactly that request
/// through. Failed before: the denial was in memory only (`denied_by`), the restarted b was a
/// plain fence that never asked (no session in its process), and neither site served until
/// the link returned. Once the link returns, b resyncs a (every region: a takeover), W at
/// both.
#[test]
fn a_site_restarted_after_a_denial_asks_again_once_the_holders_grant_is_given_back() {
    use crate::layer::mirror::failover::{FailoverSlot, GRANTED};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _sb, mut wit, mut io, mut rng) =
        a_granted_unanswered_b_denied_by_the_rules(211, dir.path());
    // b's process is killed and restarted on the same host, the link still down.
    let sb2 = Arc::new(FailoverSlot::default());
    sb2.members.store(1, SeqCst);
    b.engine.cfg.failover = Some(Arc::clone(&sb2));
    crash_and_restart(&mut b);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    // The new process's first word: a still holds the group. Nothing to ask.
    wit.show(&sb2, 2);
    b.engine.tick(&mut io, Instant::now());
    b.engine.tick(&mut io, Instant::now());
    assert!(
        !sb2.want.load(SeqCst),
        "b asks while the peer still holds the group"
    );
    let sa2 = a_restarts_after_a_power_loss_and_gives_back_unused(
        &mut a, &mut wit, &mut io, &mut rng, &sb2,
    );
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    assert!(
        sb2.want.swap(false, SeqCst),
        "restarted b never asks again once the grant that denied it is given back"
    );
    assert_eq!(
        wit.ask(2, &sb2),
        Some(2),
        "the witness refuses b's request (asked at the wrong epoch)"
    );
    sb2.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Survivor);
    past_peer_lease(&mut b, &mut io);
    assert!(b.engine.may_read(Instant::now()), "b does not serve");
    assert!(holds_w(&b), "b serves without W");
    assert!(
        !a.engine.may_read(Instant::now()) && a.engine.mode() != Mode::Survivor,
        "a serves beside b"
    );
    // The link returns: b resyncs a.
    wit.show(&sa2, 1);
    a.engine.tick(&mut io, now);
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(holds_w(&a) && holds_w(&b), "W lost at a site");
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the resync"
    );
}

/// A clean stop keeps the denial: the stop drains the engine and ticks it (as the layer's
/// poller does while stopping), and its last state, written at the engine's drop, must still
/// say "denied while the peer held the group". Failed before: the drain's tick dropped the
/// denial, so the stop saved a plain fence and the restarted site never asked again once the
/// holder gave the grant back (found by a review of the denial's save).
#[test]
fn a_clean_stop_keeps_the_saved_denial() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, mut b, _sb, _wit, mut io, _rng) =
        a_granted_unanswered_b_denied_by_the_rules(229, dir.path());
    assert!(b.engine.wait_persisted());
    // The stop: the poller drains and ticks the engine, then the engine is dropped (its clean
    // stop's state written then).
    b.engine.begin_drain();
    b.engine.tick(&mut io, Instant::now());
    b.engine.tick(&mut io, Instant::now());
    let fresh = Engine::new(
        b.engine.cfg.clone(),
        Box::new(SlowChannel(Rc::clone(&b.disk))),
        0,
        Arc::new(MirrorStats::default()),
    );
    drop(std::mem::replace(&mut b.engine, fresh));
    let p = crate::layer::mirror::state::load(&dir.path().join("b"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.mode, p.clean, p.fenced_denied, p.epoch),
        (2, true, true, 1),
        "the clean stop did not keep the denial"
    );
}

/// The denial is saved in the fence's one state (flags bit 5, with one more than the epoch at
/// which b's replica was complete), and restored only while b's device kept what it applied
/// before the fence: restarted on another boot (a power loss may have dropped W from its
/// cache, which a kept), b never asks again on the give-back, so never serves without W.
#[test]
fn a_denial_is_saved_with_the_fence_and_not_acted_on_after_a_host_restart() {
    use crate::layer::mirror::failover::FailoverSlot;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _sb, mut wit, mut io, mut rng) =
        a_granted_unanswered_b_denied_by_the_rules(223, dir.path());
    assert!(b.engine.wait_persisted());
    let p = crate::layer::mirror::state::load(&dir.path().join("b"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.mode, p.fenced_denied, p.fenced_unanswered, p.epoch),
        (2, true, None, 1),
        "the denial is not saved with the fence"
    );
    // b's host restarts: its device keeps nothing it did not flush.
    b.disk.borrow_mut().bytes = vec![0; SIZE as usize];
    b.engine.cfg.boot_id = 2;
    let sb2 = Arc::new(FailoverSlot::default());
    sb2.members.store(1, SeqCst);
    b.engine.cfg.failover = Some(Arc::clone(&sb2));
    crash_and_restart(&mut b);
    let _sa2 = a_restarts_after_a_power_loss_and_gives_back_unused(
        &mut a, &mut wit, &mut io, &mut rng, &sb2,
    );
    for _ in 0..3 {
        b.engine.tick(&mut io, Instant::now());
        while complete_one(&mut b, &mut io, &mut rng) {}
    }
    assert!(
        !sb2.want.load(SeqCst),
        "b, its host restarted, asks for the grant without W"
    );
    assert_eq!(b.engine.mode(), Mode::Fenced);
    assert!(!b.engine.may_read(Instant::now()));
}

/// A volume fenced for want of an answer (flags bit 3) restarted, whose new process's first
/// word names its site the group's holder at an epoch above any grant its lost request could
/// have won: it fences again as a plain fence (`adopt_lost_grant`), as it does without the
/// restart. As `group_grant::a_volume_fenced_for_want_of_an_answer_never_adopts_a_grant_newer_than_its_replica`,
/// with b (both volumes x and y of its group) restarted from its state files on the same host
/// right after x was granted the group at epoch 2 (asked at 1, which x learned in sync with
/// a's grant at 1), before y saw that word; y at b was complete only at 0 (saved with its
/// fence as 1). After the restart x serves on its grant, y at b must neither serve (its
/// replica may lack writes of a's grant at 1) nor give the grant back under x; and y is not
/// stopped for good: once a's y (which kept every acknowledged write of y) meets it, a
/// reconciles it and both serve with identical replicas.
#[test]
fn a_volume_restarted_fenced_for_want_of_an_answer_that_finds_a_newer_grant_stays_fenced_safely() {
    use crate::layer::mirror::failover::{FailoverSlot, GRANTED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut ax, mut bx, mut io) = lose_peer(true);
    let mut rng = Rng(229);
    let mut slot = 0;
    let sb = bx.engine.cfg.failover.clone().unwrap();
    let (mut ay, _, mut by, _) = super::failover::traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    by.engine.cfg.failover = Some(Arc::clone(&sb));
    sb.members.store(2, SeqCst);
    for (s, n) in [(&mut bx, "bx"), (&mut by, "by")] {
        s.engine.cfg.state_file = Some(dir.path().join(n));
        s.engine
            .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
        s.engine.persist(false);
        assert!(s.engine.wait_persisted());
    }
    let now = Instant::now();
    by.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "y does not ask");
    sb.outcome.store(UNREACHABLE, SeqCst);
    by.engine.tick(&mut io, now);
    assert_eq!(
        (bx.engine.mode(), by.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    // a holds the group at 1; x at a resyncs x at b, which learns epoch 1.
    sb.publish_view(1, 1, 2);
    by.engine.tick(&mut io, now);
    bx.engine.tick(&mut io, now);
    meet(&mut ax, &mut bx, &mut io);
    run_until_in_sync(&mut ax, &mut bx, &mut io, &mut rng);
    assert_eq!(sb.learned_epoch.load(SeqCst), 1, "x in sync at 1");
    // a gives epoch 1 back without resyncing y, and is lost; x at b asks at 1, granted 2.
    break_link(&mut ax, &mut bx);
    sb.publish_view(0, 1, 2);
    let now = Instant::now();
    bx.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "x does not ask");
    sb.asked_epoch.store(1, SeqCst);
    sb.epoch.store(2, SeqCst);
    sb.outcome.store(GRANTED, SeqCst);
    bx.engine.tick(&mut io, now);
    assert_eq!(
        (bx.engine.mode(), bx.engine.grant_epoch),
        (Mode::Survivor, 2)
    );
    assert_eq!(by.engine.mode(), Mode::Fenced);
    // b restarts (both volumes: a new process, a new failover slot), y before its tick saw
    // the grant.
    assert!(bx.engine.wait_persisted() && by.engine.wait_persisted());
    let p = crate::layer::mirror::state::load(&dir.path().join("by"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.mode, p.fenced_unanswered.is_some(), p.epoch),
        (2, true, 1),
        "y's fence for want of an answer not saved so"
    );
    let sb2 = Arc::new(FailoverSlot::default());
    sb2.members.store(2, SeqCst);
    for s in [&mut bx, &mut by] {
        s.engine.cfg.failover = Some(Arc::clone(&sb2));
        crash_and_restart(s);
    }
    assert_eq!(
        (bx.engine.mode(), by.engine.mode()),
        (Mode::Survivor, Mode::Fenced)
    );
    // The new process's first word: b holds the group at 2.
    sb2.publish_view(2, 2, 2);
    for _ in 0..3 {
        let now = Instant::now();
        bx.engine.tick(&mut io, now);
        by.engine.tick(&mut io, now);
        while complete_one(&mut bx, &mut io, &mut rng) || complete_one(&mut by, &mut io, &mut rng) {
        }
    }
    past_peer_lease(&mut bx, &mut io);
    assert!(
        bx.engine.may_read(Instant::now()),
        "x does not serve on its grant"
    );
    assert!(
        by.engine.mode() == Mode::Fenced && !by.engine.may_read(Instant::now()),
        "y at b serves ({:?}) on a grant newer than its replica",
        by.engine.mode()
    );
    assert_eq!(
        sb2.release.load(SeqCst),
        0,
        "the grant x serves on is given back"
    );
    // The link returns for y: a's y, which holds every acknowledged write of y, reconciles b's.
    meet(&mut ay, &mut by, &mut io);
    run_until_in_sync(&mut ay, &mut by, &mut io, &mut rng);
    assert_eq!(
        (ay.engine.mode(), by.engine.mode()),
        (Mode::Mirroring, Mode::Mirroring),
        "y not in sync again"
    );
    assert!(
        ay.disk.borrow().bytes == by.disk.borrow().bytes,
        "y's replicas differ"
    );
    let now = Instant::now();
    assert!(
        ay.engine.may_read(now) && by.engine.may_read(now),
        "y serves nowhere"
    );
}

/// As `a_site_restarted_after_a_denial_asks_again_once_the_holders_grant_is_given_back`,
/// with b's process kept or restarted, but the answer to b's second request lost: the witness
/// granted it at epoch 2 (asked at 0, the epoch before a's grant at 1, which a gave back
/// unused) and b fenced for want of that answer. The witness's next word names b the holder
/// at 2: b must adopt it and serve with W (its replica is complete at 0, and a grant at 2
/// answering a request asked at 0 is one the witness makes only through a's unused release:
/// no write was acknowledged on 1). Failed before: b took the grant for one newer than its
/// replica (`may_adopt` accepted 1 at most), fenced and gave it back, and neither site served
/// until the link returned. a never serves meanwhile, and once the link returns b resyncs a.
#[test]
fn a_denied_site_adopts_the_grant_after_an_unused_give_back_when_its_answer_is_lost() {
    use crate::layer::mirror::failover::{FailoverSlot, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    for restart_b in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b, mut sb, mut wit, mut io, mut rng) =
            a_granted_unanswered_b_denied_by_the_rules(233, dir.path());
        if restart_b {
            // b's process is killed and restarted on the same host, the link still down.
            sb = Arc::new(FailoverSlot::default());
            sb.members.store(1, SeqCst);
            b.engine.cfg.failover = Some(Arc::clone(&sb));
            crash_and_restart(&mut b);
            assert_eq!(b.engine.mode(), Mode::Fenced);
            wit.show(&sb, 2);
            b.engine.tick(&mut io, Instant::now());
        }
        let sa2 = a_restarts_after_a_power_loss_and_gives_back_unused(
            &mut a, &mut wit, &mut io, &mut rng, &sb,
        );
        let now = Instant::now();
        b.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        assert!(
            sb.want.swap(false, SeqCst),
            "b never asks again once the grant that denied it is given back"
        );
        // The witness grants b's request at 2; its answer is lost.
        assert_eq!(
            wit.ask_lost(2, &sb),
            Some(2),
            "the witness refuses b's request"
        );
        sb.outcome.store(UNREACHABLE, SeqCst);
        b.engine.tick(&mut io, now);
        assert_eq!(b.engine.mode(), Mode::Fenced, "restart {restart_b}");
        // The witness's next word: b holds the group at 2.
        wit.show(&sb, 2);
        assert_eq!(sb.view(), Some((true, 2, 2)));
        for _ in 0..3 {
            b.engine.tick(&mut io, Instant::now());
            while complete_one(&mut b, &mut io, &mut rng) {}
        }
        assert_eq!(
            sb.release.load(SeqCst),
            0,
            "b gives back the grant it won (restart {restart_b})"
        );
        assert_eq!(
            b.engine.mode(),
            Mode::Survivor,
            "b does not adopt its grant (restart {restart_b})"
        );
        past_peer_lease(&mut b, &mut io);
        assert!(b.engine.may_read(Instant::now()), "b does not serve");
        assert!(holds_w(&b), "b serves without W");
        assert!(
            !a.engine.may_read(Instant::now()) && a.engine.mode() != Mode::Survivor,
            "a serves beside b"
        );
        // The link returns: b resyncs a.
        wit.show(&sa2, 1);
        a.engine.tick(&mut io, Instant::now());
        meet(&mut a, &mut b, &mut io);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert!(holds_w(&a) && holds_w(&b), "W lost at a site");
        assert!(
            a.disk.borrow().bytes == b.disk.borrow().bytes,
            "replicas differ after the resync"
        );
    }
}
