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
    // (The witness's denial named a the holder at epoch 1.)
    sb.publish_view(1, 1, 2);
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(sb.learned_epoch.load(SeqCst), 1);
}

/// Two sites with state files, in sync, the link cut with traffic in flight; both ask the
/// witness: it grants a (epoch 1) and a's answer is lost (a fences for want of it), b is
/// denied (a holds the group).
#[allow(clippy::type_complexity)]
fn a_granted_unanswered_b_denied(
    seed: u64,
    dir: &std::path::Path,
) -> (
    Site,
    Site,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
    IoCx,
    Rng,
    u32,
) {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(seed);
    let mut slot = 0;
    let (mut a, sa, mut b, sb) = super::failover::traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    for (s, n) in [(&mut a, "a"), (&mut b, "b")] {
        s.engine.cfg.state_file = Some(dir.join(n));
        s.engine
            .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
        s.engine.persist(false);
        assert!(s.engine.wait_persisted());
    }
    let now = Instant::now();
    both_ask(&mut a, &mut b, &mut io, now);
    sa.outcome.store(UNREACHABLE, SeqCst);
    sb.publish_view(1, 1, 2);
    sb.outcome.store(DENIED, SeqCst);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut a);
    collect(&mut b);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    (a, b, sb, io, rng, slot)
}

/// The witness granted a (epoch 1), its answer lost: a fenced for want of it, b was denied.
/// a restarts from its state (a new process, a new failover slot) before the witness's word
/// names it the holder. Once it does, a must serve as the survivor (its replica held every
/// acknowledged write at the fence, and nobody served alone since: the grant is a's), after
/// the peer's read lease the old process may have given (unknown here: waited out from the
/// adoption), and resync b, and give the grant back. Before, the restart forgot the fence's
/// reason: a stayed fenced on the grant the witness held for it, b denied, and neither site
/// served until the link returned.
#[test]
fn a_site_restarted_before_it_adopted_a_lost_grant_serves_on_it_once_the_witness_says_so() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _sb, mut io, mut rng, mut slot) =
        a_granted_unanswered_b_denied(139, dir.path());
    let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    // The witness's first word to the new process: a holds the group at epoch 1.
    sa2.publish_view(1, 1, 1);
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    assert_eq!(
        (a.engine.mode(), a.engine.grant_epoch),
        (Mode::Survivor, 1),
        "restarted, a never adopts the grant the witness holds for it: nobody serves"
    );
    assert_eq!(sa2.watching.load(SeqCst), 0, "watching leaks");
    // Nothing is acknowledged alone before the lease b may hold from a's old process.
    assert!(a.engine.wait_persisted());
    a.engine.tick(&mut io, now);
    let before = a.ok;
    write_at(&mut a, &mut io, &mut slot, 8192, 0x43, 4096);
    while complete_one(&mut a, &mut io, &mut rng) {}
    a.engine.tick(&mut io, now);
    collect(&mut a);
    assert_eq!(a.ok, before, "acknowledged alone within the peer's lease");
    assert_eq!(a.engine.alone_held(), 1);
    past_peer_lease(&mut a, &mut io);
    collect(&mut a);
    assert_eq!(a.ok, before + 1, "the survivor's write is not acknowledged");
    b.engine.link_down("a restarted");
    b.wire.clear();
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the resync"
    );
    assert_eq!(
        b.disk.borrow().bytes[8192],
        0x43,
        "an acknowledged write lost"
    );
    a.engine.wait_persisted();
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(
        sa2.release.load(SeqCst),
        1,
        "the grant was never given back"
    );
}

/// As above, but a's state file says "resyncing" when it restarts (a session in which it
/// received was cut in the middle: its replica half copied, the source serving alone
/// meanwhile; stood in for here by saving that mode): restored fenced, it must never serve
/// on the witness's word naming it the holder of a grant asked before. Guards the fix above:
/// only a fence for want of an answer, persisted as such, is adopted after a restart.
#[test]
fn a_site_restarted_in_the_middle_of_a_resync_never_adopts_a_grant_from_before_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b, _sb, mut io, _rng, _slot) = a_granted_unanswered_b_denied(149, dir.path());
    let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    // (Stand-in for a session in which a receives: its state saved as resyncing.)
    a.engine.mode = Mode::Resyncing;
    a.engine.persist(false);
    assert!(a.engine.wait_persisted());
    crash_and_restart(&mut a);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    sa2.publish_view(1, 1, 1);
    for _ in 0..3 {
        a.engine.tick(&mut io, Instant::now());
    }
    assert_eq!(
        a.engine.mode(),
        Mode::Fenced,
        "a replica restored from the middle of a resync serves as the survivor"
    );
    assert_eq!(sa2.release.load(SeqCst), 0);
}

/// A buggy peer (the link is authenticated: not a forger) sends RESYNC_DONE with a grant epoch
/// beyond any the witness has issued (`2^40`, `2^64 - 2`, `2^64 - 1`). The target must not
/// take it as the group's epoch it knows: asked at it, the witness's stale check would pass
/// for grants whose writes this site never had (after an operator's release, a grant as a
/// plain survivor), or, at `2^64 - 2`, the group's epoch would reach the last one and every
/// later request be refused. Before, any value was adopted. The bound is the witness's epoch
/// as this site last saw it (no more than a heartbeat in sync would teach); the source's true
/// epoch (1) is adopted.
#[test]
fn an_implausible_grant_epoch_in_resync_done_is_not_adopted() {
    use std::sync::atomic::Ordering::SeqCst;
    for claimed in [1u64 << 40, u64::MAX - 1, u64::MAX] {
        let (mut a, mut b, mut io) = lose_peer(true);
        let mut rng = Rng(157);
        let sb = b.engine.cfg.failover.clone().unwrap();
        sb.publish_view(1, 1, 2);
        meet(&mut a, &mut b, &mut io);
        // (a's RESYNC_DONE carries its grant epoch: the buggy value.)
        a.engine.grant_epoch = claimed;
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_eq!(b.engine.mode(), Mode::Mirroring);
        assert_eq!(
            sb.learned_epoch.load(SeqCst),
            0,
            "claimed {claimed}: adopted beyond the witness's epoch"
        );
    }
}

/// As `a_site_restarted_before_it_adopted_a_lost_grant_serves_on_it_once_the_witness_says_so`,
/// with a second volume y of the group at a (one failover slot), restarted with it: y's link
/// returns and it mirrors, and it sees the witness's word naming a the holder before x's
/// engine ever ticked (x's reactor slower). y must not give the grant back while x, restored
/// fenced for want of its answer, may still adopt it: x counts as watching from its restore,
/// and a volume of the group restarted in sync gives back a grant from before the restart only
/// once every engine of the group restored its state. Before, y gave it back first: x found
/// it given back and stayed fenced, b (denied, its known epoch older) was refused as stale:
/// neither site served x.
#[test]
fn a_lost_grant_restored_with_one_volume_is_not_given_back_by_another_first() {
    use crate::layer::mirror::failover::{FailoverSlot, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut ax, _bx, _sb, mut io, mut rng, mut slot) =
        a_granted_unanswered_b_denied(173, dir.path());
    let (mut ay, _, mut by, _) = super::failover::traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    // Both of a's volumes restart (a new process: one new slot for the group).
    let sa2 = Arc::new(FailoverSlot::default());
    sa2.members.store(2, SeqCst);
    ax.engine.cfg.failover = Some(Arc::clone(&sa2));
    ay.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut ax);
    ay.engine.cfg.state_file = Some(dir.path().join("ay"));
    ay.engine.persist(false);
    assert!(ay.engine.wait_persisted());
    crash_and_restart(&mut ay);
    assert_eq!(
        (ax.engine.mode(), sa2.restored.load(SeqCst)),
        (Mode::Fenced, 2)
    );
    by.engine.link_down("a restarted");
    by.wire.clear();
    meet(&mut ay, &mut by, &mut io);
    run_until_in_sync(&mut ay, &mut by, &mut io, &mut rng);
    assert_eq!(ay.engine.mode(), Mode::Mirroring);
    // The witness's word: a holds the group at epoch 1. y ticks (and the thread turns)
    // before x.
    let thread = |s: &FailoverSlot| {
        let r = s.release.swap(0, SeqCst);
        if r != 0 {
            decide_release(s, r);
        }
        s.releasing.store(0, SeqCst);
    };
    for _ in 0..3 {
        sa2.publish_view(1, 1, 1);
        ay.engine.tick(&mut io, Instant::now());
        thread(&sa2);
    }
    ax.engine.tick(&mut io, Instant::now());
    assert_eq!(
        (ax.engine.mode(), sa2.released.load(SeqCst)),
        (Mode::Survivor, 0),
        "the grant x may adopt was given back by y first"
    );
}

/// An operator's takeover at a (its state saved fenced) whose answer is lost (the witness
/// granted it), and a restarts before the witness's word: restarted, a adopts the grant as a
/// takeover (every region ever written copied to the peer, the history below told it may be
/// stale), as it would have without the restart (state flags bit 4).
#[test]
fn a_takeover_whose_answer_was_lost_is_adopted_as_one_after_a_restart() {
    use crate::layer::mirror::failover::{FailoverSlot, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b, _sb, mut io, _rng, _slot) = a_granted_unanswered_b_denied(179, dir.path());
    // (A fenced site, whatever its first request's answer: say the witness denied it, and the
    // operator takes over.)
    crash_and_restart(&mut a);
    let sa = a.engine.cfg.failover.clone().unwrap();
    a.engine.fenced_unanswered = None;
    a.engine.persist(false);
    sa.publish_view(2, 1, 1);
    a.engine.stats().takeover.store(true, SeqCst);
    a.engine.tick(&mut io, Instant::now());
    assert!(sa.want.swap(false, SeqCst), "the takeover is not asked");
    sa.outcome.store(UNREACHABLE, SeqCst);
    a.engine.tick(&mut io, Instant::now());
    assert_eq!(a.engine.mode(), Mode::Fenced);
    let sa2 = Arc::new(FailoverSlot::default());
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    // (Regions mirrored in earlier sessions: written, neither dirty nor suspect.)
    let (size, g) = (a.engine.cfg.size, a.engine.cfg.dirty_granularity);
    a.engine.written = RegionMap::all(size, g);
    sa2.publish_view(1, 2, 1);
    a.engine.tick(&mut io, Instant::now());
    assert_eq!((a.engine.mode(), a.engine.grant_epoch), (Mode::Survivor, 2));
    assert_eq!(
        a.engine.dirty_bytes(),
        a.engine.written.bytes(),
        "adopted after the restart as a plain grant"
    );
}

/// As `a_site_restarted_before_it_adopted_a_lost_grant_serves_on_it_once_the_witness_says_so`,
/// but a's *host* restarted (a power loss: another boot id), not only its process: its device
/// dropped what it had never flushed, an acknowledged write W among them (both sites applied
/// it; b, denied, keeps it). a must not serve on the witness's word: its replica no longer
/// holds every acknowledged write, and serving it would read without W and, as the resync's
/// source, copy its stale region over b's (W lost at both). Failed before: the fence's reason
/// was restored whatever became of the device since. Nor may it keep the grant: it gives it
/// back, b asks again and serves, and the two converge with W (before the give-back, nobody
/// served until the link returned).
#[test]
fn a_site_whose_host_restarted_after_a_fence_for_want_of_an_answer_never_adopts_the_grant() {
    use crate::layer::mirror::failover::{GRANTED, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    // The witness's own rules (not a stand-in): a's request is granted (its answer lost), b's
    // denied while a holds the group, and b's second request answered as the witness would.
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, sb, mut wit, mut io, mut rng) =
        super::restart_fence::a_granted_unanswered_b_denied_by_the_rules(151, dir.path());
    let sa = a.engine.cfg.failover.clone().expect("a's failover slot");
    let (off, w) = (super::restart_fence::OFF, super::restart_fence::W);
    assert_eq!(
        a.disk.borrow().flushes,
        0,
        "a's device flushed W: no loss to model"
    );
    // The power goes at a: its device keeps only what it flushed (nothing).
    a.disk.borrow_mut().bytes = vec![0; SIZE as usize];
    a.engine.cfg.boot_id = 2;
    let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
    sa2.members.store(1, SeqCst);
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    // The witness's first word to the new process: a holds the group at epoch 1.
    wit.show(&sa2, 1);
    assert_eq!(sa2.view(), Some((true, 1, 1)));
    for _ in 0..3 {
        a.engine.tick(&mut io, Instant::now());
        while complete_one(&mut a, &mut io, &mut rng) {}
        past_peer_lease(&mut a, &mut io);
    }
    assert!(
        !a.engine.may_read(Instant::now()) && a.engine.mode() != Mode::Survivor,
        "a serves alone ({:?}) with the acknowledged W gone from its device",
        a.engine.mode()
    );
    assert_eq!(b.disk.borrow().bytes[off as usize], w, "b keeps W");
    // a gives the grant back (kept, b stayed denied and nobody served until the link
    // returned), flagged unused (its state proves it never served on it); b, denied while a
    // held it, asks again once the witness shows it given back, at the epoch it knows (0,
    // before a's grant: the witness refused it as stale after a plain give-back, and nobody
    // served), is granted (a takeover: a gets every region), and serves with W.
    assert_eq!(
        sa2.release.load(SeqCst),
        1,
        "the grant held for a not given back"
    );
    // (The failover thread's turn.)
    let r = sa2.release.swap(0, SeqCst);
    assert!(decide_release(&sa2, r));
    assert!(
        sa2.release_is_unused(r),
        "the give-back is not flagged unused"
    );
    wit.release(1, &sa2, r, true);
    sa2.releasing.store(0, SeqCst);
    sa.want.store(false, SeqCst);
    sb.want.store(false, SeqCst);
    wit.show(&sb, 2);
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "b does not ask again");
    assert_eq!(
        wit.ask(2, &sb),
        Some(2),
        "the witness refuses b's second request"
    );
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Survivor);
    wit.show(&sa2, 1);
    a.engine.tick(&mut io, now);
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    for (s, name) in [(&a, "a"), (&b, "b")] {
        assert!(
            s.disk.borrow().bytes[off as usize..off as usize + 4096]
                .iter()
                .all(|&x| x == w),
            "the acknowledged W is gone at {name}"
        );
    }
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the resync"
    );
}

/// The witness's rules (`twinblk_witness::state::Arbiter`) driven as each site's failover
/// thread would, for group `GROUP` of these tests' sites 1 (a) and 2 (b).
pub(super) struct Witness {
    rules: twinblk_witness::state::Arbiter,
    counter: u64,
}

impl Witness {
    const GROUP: twinblk_witness::GroupId = twinblk_witness::GroupId(7);

    pub(super) fn new() -> Self {
        let rules = twinblk_witness::state::Arbiter::new(
            twinblk_witness::state::Table::default(),
            Duration::ZERO,
            Instant::now(),
        );
        Witness { rules, counter: 0 }
    }

    fn send(
        &mut self,
        site: u32,
        body: twinblk_witness::proto::Body,
    ) -> twinblk_witness::proto::Body {
        self.counter += 1;
        let msg = twinblk_witness::proto::Msg {
            site: twinblk_witness::SiteId::new(site).expect("site"),
            counter: self.counter,
            body,
        };
        match self.rules.handle(Instant::now(), &msg) {
            twinblk_witness::state::Outcome::Answer { body, .. } => body,
            other => panic!("no answer: {other:?}"),
        }
    }

    /// The thread's plain request (at its known epoch, raised to the learned one), its answer
    /// stored as the thread stores it when it is a grant: the granted epoch, or `None`.
    pub(super) fn ask(
        &mut self,
        site: u32,
        slot: &crate::layer::mirror::failover::FailoverSlot,
    ) -> Option<u64> {
        use std::sync::atomic::Ordering::SeqCst;
        let e = self.ask_lost(site, slot)?;
        slot.epoch.store(e, SeqCst);
        slot.known_epoch.store(e, SeqCst);
        slot.publish_view(site, e, site);
        Some(e)
    }

    /// The thread's plain request as [`Witness::ask`], its answer lost: only the asked epoch
    /// is stored (the thread sets it before it sends); returns the epoch granted, if any.
    pub(super) fn ask_lost(
        &mut self,
        site: u32,
        slot: &crate::layer::mirror::failover::FailoverSlot,
    ) -> Option<u64> {
        use std::sync::atomic::Ordering::SeqCst;
        let known = slot
            .known_epoch
            .load(SeqCst)
            .max(slot.learned_epoch.load(SeqCst));
        slot.asked_epoch.store(known, SeqCst);
        slot.asked_plain.fetch_max(known + 1, SeqCst);
        let body = twinblk_witness::proto::Body::GrantRequest {
            group: Self::GROUP,
            known: twinblk_witness::Epoch(known),
            preferred: false,
            holds: false,
        };
        match self.send(site, body) {
            twinblk_witness::proto::Body::Grant { view } => Some(view.epoch.0),
            _ => None,
        }
    }

    pub(super) fn release(
        &mut self,
        site: u32,
        slot: &crate::layer::mirror::failover::FailoverSlot,
        epoch: u64,
        unused: bool,
    ) {
        let body = twinblk_witness::proto::Body::Release {
            group: Self::GROUP,
            epoch: twinblk_witness::Epoch(epoch),
            unused,
        };
        match self.send(site, body) {
            twinblk_witness::proto::Body::State { view, .. } => {
                slot.publish_view(view.holder.map_or(0, |h| h.get()), view.epoch.0, site)
            }
            other => panic!("{other:?}"),
        }
    }

    /// The witness's word (a heartbeat's view) to `site`.
    pub(super) fn show(&self, slot: &crate::layer::mirror::failover::FailoverSlot, site: u32) {
        let v = self.rules.view(Self::GROUP);
        slot.publish_view(v.holder.map_or(0, |h| h.get()), v.epoch.0, site);
    }
}

/// As `a_site_whose_host_restarted_after_a_fence_for_want_of_an_answer_never_adopts_the_grant`,
/// a's volume x in a group of two (one failover slot), x's engine restored before the other
/// volume's. x gives the grant back only once every engine of the group restored its state
/// (the other may be a survivor on that grant, adopted before the power went: given back
/// under it, its writes acknowledged alone would be given up; before, x gave it back at its
/// first tick), and flagged unused only when every volume of the group was restored fenced for
/// want of an answer with its host restarted (`FailoverSlot::unadoptable`): only then do the
/// states prove that nobody served on it.
#[test]
fn a_grant_is_given_back_unused_only_when_every_volume_of_the_group_proves_it_unused() {
    use crate::layer::mirror::failover::FailoverSlot;
    use std::sync::atomic::Ordering::SeqCst;
    for other_unadoptable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _b, _sb, mut io, mut rng, _slot) =
            a_granted_unanswered_b_denied(193, dir.path());
        a.engine.cfg.boot_id = 2;
        let sa2 = Arc::new(FailoverSlot::default());
        sa2.members.store(2, SeqCst);
        a.engine.cfg.failover = Some(Arc::clone(&sa2));
        crash_and_restart(&mut a);
        assert_eq!(
            (sa2.restored.load(SeqCst), sa2.unadoptable.load(SeqCst)),
            (1, 1)
        );
        sa2.publish_view(1, 1, 1);
        for _ in 0..3 {
            a.engine.tick(&mut io, Instant::now());
            while complete_one(&mut a, &mut io, &mut rng) {}
        }
        assert_eq!(a.engine.mode(), Mode::Fenced);
        assert_eq!(
            sa2.release.load(SeqCst),
            0,
            "given back before the group's other volume restored its state"
        );
        // The other volume's engine restores its state: fenced for want of an answer with its
        // host restarted too, or anything else.
        if other_unadoptable {
            sa2.unadoptable.fetch_add(1, SeqCst);
        }
        sa2.restored.fetch_add(1, SeqCst);
        a.engine.tick(&mut io, Instant::now());
        assert_eq!(sa2.release.load(SeqCst), 1, "the grant is not given back");
        assert_eq!(
            sa2.release_is_unused(1),
            other_unadoptable,
            "unused (other volume unadoptable: {other_unadoptable})"
        );
    }
}

/// Two sites with state files, in sync at the group's epoch 3 (a grant and its release
/// before), the link cut with traffic in flight; both ask the witness, which answers neither
/// (out of reach for the requests' deadline: it granted nothing), so both fence for want of
/// an answer. a restarts from its state (a new process, a new failover slot, the same boot)
/// before the witness is heard again; its first word names nobody holding the group at epoch
/// 3. a must ask again, plain and at the epoch it knew at its fence (3: asked at the new
/// process's 0, the witness refuses it as stale), and serve on the grant once answered, after
/// the read lease b may hold from a's old process; it then resyncs b. Failed before: the new
/// process never asked (the fenced site's second request needed a session in this process),
/// and nobody served until the link returned or an operator took over.
#[test]
fn a_site_restarted_fenced_for_an_unanswered_request_asks_again_in_its_new_process() {
    use crate::layer::mirror::failover::{FailoverSlot, GRANTED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(181);
    let mut slot = 0;
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    // (The failover threads' known epoch, learned in sync.)
    sa.known_epoch.store(3, SeqCst);
    sb.known_epoch.store(3, SeqCst);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    for _ in 0..20 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
        submit(&mut b, &mut io, &mut rng, &mut slot);
    }
    deliver(&mut a, &mut b, &mut io, 5);
    deliver(&mut b, &mut a, &mut io, 5);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    break_link(&mut a, &mut b);
    for (s, n) in [(&mut a, "a"), (&mut b, "b")] {
        s.engine.cfg.state_file = Some(dir.path().join(n));
        s.engine
            .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
        s.engine.persist(false);
        assert!(s.engine.wait_persisted());
    }
    sa.publish_view(0, 3, 1);
    sb.publish_view(0, 3, 2);
    let now = Instant::now();
    both_ask(&mut a, &mut b, &mut io, now);
    sa.outcome.store(UNREACHABLE, SeqCst);
    sb.outcome.store(UNREACHABLE, SeqCst);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut a);
    collect(&mut b);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    let sa2 = Arc::new(FailoverSlot::default());
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    // The witness's first word to the new process: nobody holds the group, at epoch 3.
    sa2.publish_view(0, 3, 1);
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    a.engine.tick(&mut io, now);
    assert!(
        sa2.want.swap(false, SeqCst),
        "restarted fenced for want of an answer, a never asks again: nobody serves"
    );
    assert!(
        !sa2.takeover.load(SeqCst),
        "asked as an operator's takeover"
    );
    assert_eq!(
        sa2.learned_epoch
            .load(SeqCst)
            .max(sa2.known_epoch.load(SeqCst)),
        3,
        "asked at an epoch other than the one a knew at its fence (the witness refuses 0 as stale)"
    );
    // Granted at 4: a plain grant (nobody served since a's fence).
    sa2.epoch.store(4, SeqCst);
    sa2.publish_view(1, 4, 1);
    sa2.outcome.store(GRANTED, SeqCst);
    a.engine.tick(&mut io, now);
    assert_eq!((a.engine.mode(), a.engine.grant_epoch), (Mode::Survivor, 4));
    assert!(!sa2.takeover_at(4), "taken as a takeover");
    assert_eq!(sa2.watching.load(SeqCst), 0, "watching leaks");
    // Nothing is acknowledged alone before the lease b may hold from a's old process.
    assert!(a.engine.wait_persisted());
    a.engine.tick(&mut io, now);
    let before = a.ok;
    write_at(&mut a, &mut io, &mut slot, 8192, 0x5A, 4096);
    while complete_one(&mut a, &mut io, &mut rng) {}
    a.engine.tick(&mut io, now);
    collect(&mut a);
    assert_eq!(a.ok, before, "acknowledged alone within the peer's lease");
    past_peer_lease(&mut a, &mut io);
    collect(&mut a);
    assert_eq!(a.ok, before + 1, "the survivor's write is not acknowledged");
    b.engine.link_down("a restarted");
    b.wire.clear();
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the resync"
    );
    assert_eq!(
        b.disk.borrow().bytes[8192],
        0x5A,
        "an acknowledged write lost"
    );
}

/// A fence for want of an answer saves the epoch at which this volume's replica was last
/// complete (the site's known epoch when its session ended in sync: 0 here), not the group's
/// known epoch at the save: another volume of the group may have raised that since (its own
/// RESYNC_DONE, say to 5) while this one, fenced, missed the writes of the grants between;
/// restarted at 5, its request would pass the witness's stale check and it would serve
/// without them.
#[test]
fn a_fence_for_want_of_an_answer_saves_the_epoch_its_replica_was_complete_at() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b, _sb, _io, _rng, _slot) = a_granted_unanswered_b_denied(187, dir.path());
    let sa = a.engine.cfg.failover.clone().unwrap();
    sa.learned_epoch.store(5, SeqCst);
    sa.known_epoch.store(5, SeqCst);
    a.engine.persist(false);
    assert!(a.engine.wait_persisted());
    let p = crate::layer::mirror::state::load(&dir.path().join("a"))
        .unwrap()
        .unwrap();
    assert_eq!((p.mode, p.fenced_unanswered.is_some()), (2, true));
    // (One more than the epoch, 0: version 7.)
    assert_eq!(p.epoch, 1, "the group's epoch saved as this replica's");
}

/// Restarted fenced for want of an answer (flags bit 3, the same boot), the epoch its replica
/// was last complete at saved with the fence (3): the witness's first word names a the
/// group's holder at 5, above any grant a's lost request (asked at 3) could have won (4): a
/// grant came between (b's at 4, given back without resyncing a), and the grant at 5 is
/// another volume's of a's group. a must stay fenced (3007fd7's rule, after a restart); so too
/// complete at 0. And a version-6 state file with no such epoch (0, as versions before 1166a25
/// wrote with bit 3, and version 6 at epoch 0: read compatibility) adopts the lost grant
/// whatever its epoch, as those versions did.
#[test]
fn a_site_restarted_fenced_for_want_of_an_answer_adopts_only_a_grant_its_request_could_have_won() {
    use crate::layer::mirror::failover::{FailoverSlot, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    for (known, v6) in [(3, false), (0, false), (0, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let mut rng = Rng(191);
        let mut slot = 0;
        let (mut a, sa) = with_witness(Role::Leader);
        let (mut b, sb) = with_witness(Role::Follower);
        sa.known_epoch.store(known, SeqCst);
        sb.known_epoch.store(known, SeqCst);
        a.engine.link_up(&mut io);
        b.engine.link_up(&mut io);
        for _ in 0..20 {
            submit(&mut a, &mut io, &mut rng, &mut slot);
            submit(&mut b, &mut io, &mut rng, &mut slot);
        }
        deliver(&mut a, &mut b, &mut io, 5);
        deliver(&mut b, &mut a, &mut io, 5);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
        break_link(&mut a, &mut b);
        for (s, n) in [(&mut a, "a"), (&mut b, "b")] {
            s.engine.cfg.state_file = Some(dir.path().join(n));
            s.engine.set_persister(
                crate::layer::mirror::persist::Persister::spawn().expect("persister"),
            );
            s.engine.persist(false);
            assert!(s.engine.wait_persisted());
        }
        let now = Instant::now();
        both_ask(&mut a, &mut b, &mut io, now);
        sa.outcome.store(UNREACHABLE, SeqCst);
        sb.outcome.store(UNREACHABLE, SeqCst);
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
        collect(&mut a);
        collect(&mut b);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        assert!(a.engine.wait_persisted());
        let p = crate::layer::mirror::state::load(&dir.path().join("a"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.mode, p.fenced_unanswered.is_some(), p.epoch),
            (2, true, known + 1)
        );
        if v6 {
            // As version 6 wrote it: the epoch itself, 0.
            let path = dir.path().join("a");
            let mut b = std::fs::read(&path).unwrap();
            b.truncate(b.len() - 4);
            b[4] = 6;
            b[8..16].copy_from_slice(&known.to_le_bytes());
            let crc = crate::checksum::crc32c(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, &b).unwrap();
        }
        let sa2 = Arc::new(FailoverSlot::default());
        a.engine.cfg.failover = Some(Arc::clone(&sa2));
        crash_and_restart(&mut a);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        sa2.epoch.store(5, SeqCst);
        sa2.publish_view(1, 5, 1);
        let now = Instant::now();
        for _ in 0..2 {
            a.engine.tick(&mut io, now);
        }
        if !v6 {
            assert_eq!(
                a.engine.mode(),
                Mode::Fenced,
                "complete at {known}, a adopted a grant at 5 (another came between)"
            );
        } else {
            assert_eq!(
                (a.engine.mode(), a.engine.grant_epoch),
                (Mode::Survivor, 5),
                "a state file without the fence's epoch no longer adopts the lost grant"
            );
        }
    }
}

/// As `group_grant::a_volume_fenced_for_want_of_an_answer_never_adopts_a_grant_newer_than_its_replica`,
/// after a restart: a asked at epoch 0 (its replica complete there; the group's first
/// failover) and fenced for want of the answer; restarted from its state on the same host, the
/// witness's first word to the new process names a the group's holder at epoch 3. A request
/// asked at 0 is granted at 1: grants came and went meanwhile (the peer's, given back without
/// resyncing this volume), and this one is another volume's of the group, asked at the epoch
/// that volume taught. a's replica misses their writes: it must not serve on it, as it does not
/// without the restart. Failed before: the fence's epoch was saved as 0, which the restore took
/// for "not saved" (a file of an earlier version) and adopted whatever epoch: a served alone
/// without the writes of the grants between. The state file (version 7) now saves one more
/// than that epoch, 0 only for an earlier version's file.
#[test]
fn a_site_restarted_fenced_at_epoch_0_never_adopts_a_grant_newer_than_its_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b, _sb, mut io, _rng, _slot) = a_granted_unanswered_b_denied(181, dir.path());
    let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    sa2.publish_view(1, 3, 1);
    let now = Instant::now();
    for _ in 0..3 {
        a.engine.tick(&mut io, now);
    }
    assert_ne!(
        a.engine.mode(),
        Mode::Survivor,
        "restarted, a adopted a grant newer than its replica and serves alone without its writes"
    );
    // Its own grant (asked at 0, granted at 1) is still adopted after a restart.
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b, _sb, mut io, _rng, _slot) = a_granted_unanswered_b_denied(183, dir.path());
    let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    sa2.publish_view(1, 1, 1);
    a.engine.tick(&mut io, Instant::now());
    assert_eq!((a.engine.mode(), a.engine.grant_epoch), (Mode::Survivor, 1));
}

/// The holder restarted without its state after its grant's answer was lost
/// (docs/mirror-protocol.md, "The holder restarted without its state"): the witness granted a
/// (epoch 1), a fenced for want of the answer, b was denied; a's process and its state are
/// then lost (a new, empty replica). Its old process may have served alone on that grant, which
/// nobody can tell now, so neither site may serve: a never serves nor gives the grant back on
/// the witness's word, b stays fenced while a holds the group, and with the link back the
/// session is refused at both (a new replica facing a fenced peer). The operator's way out
/// (the grant released at the witness, then `twinblk-ctl takeover` at b, asked at the epoch b
/// last saw) makes b the survivor; a is given every region ever written and the replicas
/// match, with every write acknowledged before the cut.
#[test]
fn a_holder_restarted_without_its_state_after_a_lost_answer_waits_for_an_operator() {
    use super::phasefault::crash_and_restart_with;
    use crate::layer::mirror::failover::{FailoverSlot, GRANTED};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, sb, mut io, mut rng, _slot) = a_granted_unanswered_b_denied(197, dir.path());
    let before_cut = b.disk.borrow().bytes.clone();
    // (b's request, denied, taken by the failover thread.)
    sb.want.store(false, SeqCst);
    assert!(a.engine.wait_persisted());
    std::fs::remove_file(dir.path().join("a")).unwrap();
    a.disk.borrow_mut().bytes.fill(0);
    let sa2 = Arc::new(FailoverSlot::default());
    crash_and_restart_with(&mut a, Arc::clone(&sa2), false);
    assert_eq!(
        a.engine.replica_state(),
        4,
        "a restarted without state is not new"
    );
    // The witness's words: a holds the group at 1.
    sa2.publish_view(1, 1, 1);
    sb.publish_view(1, 1, 2);
    let now = Instant::now();
    for _ in 0..3 {
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
    }
    assert_ne!(a.engine.mode(), Mode::Survivor, "a new replica serves");
    assert_eq!(b.engine.mode(), Mode::Fenced);
    assert_eq!(
        sa2.release.load(SeqCst),
        0,
        "a gave back a grant its old process may have served on"
    );
    assert!(!sb.want.load(SeqCst), "b asks while a holds the group");
    // The link returns: refused at both.
    let (ra, rb) = (a.engine.replica_state(), b.engine.replica_state());
    assert_eq!((ra, rb), (4, 2));
    assert!(a.engine.session_start(&mut io, rb).is_err(), "a accepts");
    assert!(b.engine.session_start(&mut io, ra).is_err(), "b accepts");
    assert_ne!(a.engine.mode(), Mode::Survivor);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    // The operator releases a's grant at the witness (epoch kept) and takes over at b.
    sb.publish_view(0, 1, 2);
    b.engine.stats().takeover.store(true, SeqCst);
    b.engine.tick(&mut io, Instant::now());
    assert!(sb.want.swap(false, SeqCst), "the takeover is not asked");
    sb.epoch.store(2, SeqCst);
    sb.publish_view(2, 2, 2);
    sb.granted_takeover.store(true, SeqCst);
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, Instant::now());
    b.engine.tick(&mut io, Instant::now());
    assert_eq!(b.engine.mode(), Mode::Survivor);
    past_peer_lease(&mut b, &mut io);
    meet(&mut b, &mut a, &mut io);
    run_until_in_sync(&mut b, &mut a, &mut io, &mut rng);
    b.engine.wait_persisted();
    run_until_in_sync(&mut b, &mut a, &mut io, &mut rng);
    assert_eq!(sb.release.load(SeqCst), 2, "the grant was never given back");
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ"
    );
    assert!(
        b.disk.borrow().bytes == before_cut,
        "b's replica changed without a write"
    );
}

/// A fence for want of the witness's answer is saved as one state that says so (flags bit 3).
/// Before, the fence was handed to the persister first as a plain one and the flag a moment
/// later: a site killed while the first was being written (milliseconds) restarted fenced with
/// nothing saying its request may have been granted, so it neither adopted nor gave back the
/// grant the witness held for it, the peer denied while it was held: neither site served until
/// the link returned (seen end to end in `failover::the_peer_of_a_site_whose_host_restarted_after_a_lost_answer_serves`
/// on a loaded machine: a restored fenced, no give-back).
#[test]
fn a_fence_for_want_of_an_answer_is_saved_in_one_state_with_its_flag() {
    use crate::layer::mirror::failover::UNREACHABLE;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(131);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, _sb) = with_witness(Role::Follower);
    a.engine.cfg.state_file = Some(dir.path().join("a"));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    for _ in 0..8 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
    }
    exchange(&mut a, &mut b, &mut io, &mut rng, 4);
    a.engine.link_down("test");
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    assert!(sa.want.load(SeqCst), "no grant asked for");
    while complete_one(&mut a, &mut io, &mut rng) {}
    a.engine.persist(false);
    let h = Arc::clone(a.engine.durable.handle.as_ref().expect("a state file"));
    let before = h.submitted();
    sa.outcome.store(UNREACHABLE, SeqCst);
    a.engine.tick(&mut io, now);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    assert_eq!(
        h.submitted() - before,
        1,
        "the fence is handed to the persister as more than one state: the first without its flag"
    );
    assert!(h.wait(h.submitted(), Duration::from_secs(10)));
    let p = crate::layer::mirror::state::load(&dir.path().join("a"))
        .unwrap()
        .expect("saved");
    assert_eq!(p.mode, 2, "saved fenced");
    assert!(p.fenced_unanswered.is_some(), "saved without its flag");
}

/// A survivor (a, epoch 1) resyncs b and gives its grant back; the witness is then restarted
/// from an older copy of its state (a backup taken while a held the group), whose word names a
/// the holder at epoch 1 again. a, in sync and serving alone on nothing, must give that grant
/// back once more: kept, the witness denies b at the next loss (a gone with its host, say) and
/// b, waiting for that grant's give-back, never asks again: the volume serves nowhere. Failed
/// before: a took the word for an echo of its own release (`epoch <= given_back`) and kept
/// quiet for good.
#[test]
fn a_grant_a_rolled_back_witness_shows_again_is_given_back_again() {
    use crate::layer::mirror::failover::decide_release;
    use std::sync::atomic::Ordering::SeqCst;
    let (mut a, mut b, mut io) = lose_peer(true);
    let mut rng = Rng(131);
    let sa = a.engine.cfg.failover.clone().unwrap();
    meet(&mut a, &mut b, &mut io);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    // The failover thread gives epoch 1 back; the witness answers: nobody holds it.
    assert_eq!(sa.release.swap(0, SeqCst), 1, "the grant given back");
    assert!(decide_release(&sa, 1));
    sa.releasing.store(0, SeqCst);
    sa.publish_view(0, 1, 1);
    a.engine.tick(&mut io, Instant::now());
    // A heartbeat answered before the release took effect (the same word as the rolled-back
    // witness's): nothing to do yet, the release is on its way.
    assert_eq!(sa.release.load(SeqCst), 0);
    // The witness, restarted from the backup: a holds epoch 1.
    for _ in 0..3 {
        sa.publish_view(1, 1, 1);
        a.engine.tick(&mut io, Instant::now());
        b.engine.tick(&mut io, Instant::now());
    }
    assert_eq!(
        (a.engine.mode(), sa.release.load(SeqCst)),
        (Mode::Mirroring, 1),
        "a grant the witness holds again for a site in sync, after its give-back, is kept"
    );
}
