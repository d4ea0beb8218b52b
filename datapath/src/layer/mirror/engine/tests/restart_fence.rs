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
fn a_granted_unanswered_b_denied_by_the_rules(
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

const OFF: u64 = 8192;
const W: u8 = 0xB5;

/// Whether the 4 KiB at `OFF` hold W at `s`.
fn holds_w(s: &Site) -> bool {
    s.disk.borrow().bytes[OFF as usize..OFF as usize + 4096]
        .iter()
        .all(|&x| x == W)
}

/// a's power goes (its device keeps nothing it did not flush) and it restarts: fenced for want
/// of an answer with its host restarted, it gives the grant the witness holds for it back,
/// flagged unused (restart_grant.rs), through the failover thread's turn.
fn a_restarts_after_a_power_loss_and_gives_back_unused(
    a: &mut Site,
    wit: &mut Witness,
    io: &mut IoCx,
    rng: &mut Rng,
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
    let sa2 =
        a_restarts_after_a_power_loss_and_gives_back_unused(&mut a, &mut wit, &mut io, &mut rng);
    wit.show(&sb2, 2);
    assert_eq!(sb2.view(), Some((false, 0, 1)), "the grant is given back");
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
    let _sa2 =
        a_restarts_after_a_power_loss_and_gives_back_unused(&mut a, &mut wit, &mut io, &mut rng);
    wit.show(&sb2, 2);
    assert_eq!(sb2.view(), Some((false, 0, 1)), "the grant is given back");
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
