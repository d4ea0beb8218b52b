//! The volumes of one group sharing a site's failover slot (one witness grant for the group):
//! a lost answer adopted, given back or served on by one volume while another mirrors,
//! requests withdrawn or asked again, takeovers of the group. Split from `failover.rs`.
//!
//! Model: as `failover.rs` (two engines back to back, the test answering in the witness's
//! place and stepping the failover thread's decisions). Invariants checked: the grant one
//! volume serves on is never given back by another; a grant nobody serves on is given back;
//! no volume waits for an answer that never comes.

use super::failover::{cut_and_answer, traffic_then_cut};
use super::*;

/// Two volumes of one group at a site (one failover slot). Volume 1 fenced for want of an
/// answer (the witness recorded nothing) and was resynced by its peer; later only volume 2's
/// link goes and it is granted the group. The witness's view then names this site the holder:
/// volume 1, mirroring, must not give that grant back while volume 2 serves alone on it
/// (before, it did: the witness held nothing while volume 2 acknowledged alone).
#[test]
fn a_lost_answer_never_gives_back_the_grant_another_volume_of_the_group_serves_on() {
    use crate::layer::mirror::failover::{DENIED, GRANTED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let (mut a, sa, mut b, _, mut io, mut rng, _) = cut_and_answer(29, UNREACHABLE, DENIED);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    // The witness says nothing new; the link returns, the leader reconciles (a is the
    // leader: it is the source here, mirroring at the end).
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(a.engine.mode(), Mode::Mirroring);
    // Volume 2 of the group at this site is granted epoch 1 and serves alone.
    sa.survivors.fetch_add(1, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    sa.publish_view(1, 1, 1);
    for _ in 0..3 {
        a.engine.tick(&mut io, Instant::now());
    }
    assert_eq!(
        sa.release.load(SeqCst),
        0,
        "the group's grant given back while another volume serves alone on it"
    );
}

/// A survivor back in sync gives its grant (epoch 1) back; before the witness has taken the
/// release, a heartbeat's view still names it the holder at epoch 1. Its peer restarts as a new
/// replica at once, so this site becomes the source of a full copy, serving alone without a
/// grant. It must not take that view for a lost grant (before, it adopted epoch 1, which the
/// witness was releasing: at the next loss it would have gone on alone on a grant the witness
/// no longer held, while the peer could be granted).
#[test]
fn a_grant_given_back_is_never_taken_for_a_lost_one() {
    use std::sync::atomic::Ordering::SeqCst;
    let (mut a, mut b, mut io) = lose_peer(true);
    let mut rng = Rng(31);
    let sa = a.engine.cfg.failover.clone().expect("slot");
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    a.engine.wait_persisted();
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(sa.release.load(SeqCst), 1, "the grant is given back");
    // The release not taken yet: a heartbeat still names a at epoch 1.
    sa.publish_view(1, 1, 1);
    break_link(&mut a, &mut b);
    b.engine.start_new_replica(None);
    meet(&mut a, &mut b, &mut io);
    assert_eq!(a.engine.mode(), Mode::Survivor, "the source of a full copy");
    a.engine.tick(&mut io, Instant::now());
    assert_eq!(
        a.engine.grant_epoch, 0,
        "a grant given back taken for a lost one"
    );
    assert_eq!(sa.survivors.load(SeqCst), 0);
}

/// Two volumes of one group at site a (one failover slot). This volume fenced for want of an
/// answer to its own, plain request; then the operator takes over the group's other volume,
/// and the witness grants the group to a as a takeover (its answer received, or lost too).
/// This volume, told by the witness's word that a holds the group, adopts that grant: as a
/// takeover too (the replica may be older than the last survivor's, so the peer must get every
/// region ever written). Before, only the volume whose own flag asked adopted it as a
/// takeover: this one sent its peer only its dirty regions, and the pair could differ after a
/// resync that called itself in sync.
#[test]
fn a_group_takeover_is_adopted_as_a_takeover_by_every_volume_of_the_group() {
    use crate::layer::mirror::failover::{DENIED, GRANTED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    for answered in [true, false] {
        let (mut a, sa, _b, _, mut io, _rng, _) = cut_and_answer(37, UNREACHABLE, DENIED);
        assert_eq!(a.engine.mode(), Mode::Fenced);
        // A region written long before (confirmed and flushed at the peer: not suspect).
        a.engine.written.set_range(SIZE - 4096, 4096);
        assert!(a.engine.written.bytes() > a.engine.suspect_bytes());
        // The other volume's takeover, as the failover thread records it: asked at epoch 0,
        // then answered (and that volume serves alone) or not.
        sa.asking_takeover(0);
        if answered {
            sa.epoch.store(1, SeqCst);
            sa.granted_takeover.store(true, SeqCst);
            sa.outcome.store(GRANTED, SeqCst);
            sa.survivors.fetch_add(1, SeqCst);
        }
        sa.publish_view(1, 1, 1);
        a.engine.tick(&mut io, Instant::now());
        assert_eq!(a.engine.mode(), Mode::Survivor);
        assert_eq!(
            a.engine.dirty_bytes(),
            a.engine.written.bytes(),
            "answered: {answered}: the group's takeover adopted as a plain grant"
        );
    }
}

/// Two volumes of one group at site a (x and y, one failover slot) lost their links together;
/// the group's request was granted but its answer lost: both fenced for want of it. y's link
/// returns first and the leader reconciles it: y mirrors again. Then the witness's word names
/// a the holder: x adopts the grant (survivor), y would give it back. Whatever order their
/// ticks run in, the release must not reach the witness while x serves alone on that grant
/// (before, with y first, y asked for the release, x adopted the grant, and the failover thread
/// sent the release: `release_wanted` knew only grants answered to the thread, so the witness
/// forgot a holder that acknowledged alone, and the peer could be granted too).
#[test]
fn a_lost_grant_adopted_by_one_volume_is_never_given_back_by_another() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE, release_wanted};
    use std::sync::atomic::Ordering::SeqCst;
    for y_first in [true, false] {
        let (mut ax, sa, _bx, _, mut io, _, _) = cut_and_answer(41, UNREACHABLE, DENIED);
        let (mut ay, _, mut by, _, _, mut rng, _) = cut_and_answer(43, UNREACHABLE, DENIED);
        ay.engine.cfg.failover = Some(Arc::clone(&sa));
        meet(&mut ay, &mut by, &mut io);
        run_until_in_sync(&mut ay, &mut by, &mut io, &mut rng);
        assert_eq!(
            (ax.engine.mode(), ay.engine.mode()),
            (Mode::Fenced, Mode::Mirroring)
        );
        sa.publish_view(1, 1, 1);
        for _ in 0..3 {
            if y_first {
                ay.engine.tick(&mut io, Instant::now());
            }
            ax.engine.tick(&mut io, Instant::now());
            if !y_first {
                ay.engine.tick(&mut io, Instant::now());
            }
        }
        assert_eq!(ax.engine.mode(), Mode::Survivor, "y first: {y_first}");
        let epoch = sa.release.load(SeqCst);
        assert!(
            epoch == 0 || !release_wanted(&sa, epoch),
            "y first: {y_first}: the grant x serves alone on is given back"
        );
    }
}

/// Two volumes of one group at site a (x and y, one failover slot) lose their links; the
/// group's request goes out. y's link returns before the answer, so y gives the grant back
/// (`Grant::Unwanted`), and the failover thread sends that release before x's tick reads the
/// same answer. x must not serve alone on the grant given back (the witness holds nothing for
/// this site any more, so the peer could be granted too): it asks again. Before, x became the
/// survivor on it.
#[test]
fn a_grant_given_back_by_one_volume_of_the_group_is_never_served_on_by_another() {
    use crate::layer::mirror::failover::{GRANTED, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(47);
    let mut slot = 0;
    let (mut ax, sa, _bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut ay, _, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    ay.engine.cfg.failover = Some(Arc::clone(&sa));
    let now = Instant::now();
    ax.engine.tick(&mut io, now);
    ay.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "the group's request");
    // y's link is back; then the answer.
    ay.engine.link_up(&mut io);
    by.engine.link_up(&mut io);
    sa.epoch.store(1, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    sa.publish_view(1, 1, 1);
    ay.engine.tick(&mut io, now);
    assert_eq!(sa.release.swap(0, SeqCst), 1, "y gives the grant back");
    assert!(decide_release(&sa, 1), "nobody serves on it yet: sent");
    ax.engine.tick(&mut io, now);
    assert_ne!(
        ax.engine.mode(),
        Mode::Survivor,
        "x serves alone on a grant given back"
    );
    ax.engine.tick(&mut io, now);
    assert!(sa.want.load(SeqCst), "x does not ask again");
    // Granted anew (epoch 2): x serves on that one.
    sa.want.store(false, SeqCst);
    sa.epoch.store(2, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    ax.engine.tick(&mut io, now);
    assert_eq!(
        (ax.engine.mode(), ax.engine.grant_epoch),
        (Mode::Survivor, 2)
    );
}

/// The follower fenced for want of the witness's answer (the witness recorded its grant, the
/// leader was denied) and restarted from its state before the link returned: its state says
/// only "fenced". The leader reconciles it; mirroring again, the follower sees the witness's
/// word naming it the holder: it gives that grant back, as a site fenced so without the
/// restart does (before, it kept it for good: at the next loss the witness denied the leader,
/// even if the follower was the site gone).
#[test]
fn a_lost_grant_of_a_site_restarted_fenced_is_given_back_once_in_sync() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(53);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    b.engine.cfg.state_file = Some(dir.path().join("b"));
    b.engine.restore().expect("restore");
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    let mut slot = 0;
    for _ in 0..10 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
        submit(&mut b, &mut io, &mut rng, &mut slot);
    }
    exchange(&mut a, &mut b, &mut io, &mut rng, 3);
    break_link(&mut a, &mut b);
    let now = Instant::now();
    both_ask(&mut a, &mut b, &mut io, now);
    sa.outcome.store(DENIED, SeqCst);
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
    crash_and_restart(&mut b);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    // The witness's word: b holds the group at epoch 1.
    sb.publish_view(2, 1, 2);
    b.engine.tick(&mut io, Instant::now());
    // (Given back once no volume of the group may still take it; a second word changes nothing.)
    sb.publish_view(2, 1, 2);
    b.engine.tick(&mut io, Instant::now());
    assert_eq!(
        sb.release.load(SeqCst),
        1,
        "the grant held for the restarted site was never given back"
    );
}

/// Two volumes of one group at site a (x and y, one failover slot: one `want` flag) lose their
/// links; both tick, so the group's request is wanted. y's link returns before the failover
/// thread took the request: y's request is not needed any more, but x's still is. x's request
/// must still reach the witness (x is left asking, neither serving nor fenced, if it never
/// does: and with a the group's preferred site, the peer is denied on the tie for as long as a
/// beats, so the volume stops at both sites). Before, y withdrew the group's `want` flag, x's
/// request with it, and x waited for an answer for ever.
#[test]
fn a_request_withdrawn_by_one_volume_of_the_group_still_reaches_the_witness_for_another() {
    use crate::layer::mirror::failover::GRANTED;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(59);
    let mut slot = 0;
    let (mut ax, sa, _bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut ay, _, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    ay.engine.cfg.failover = Some(Arc::clone(&sa));
    sa.members.store(2, SeqCst);
    let now = Instant::now();
    ax.engine.tick(&mut io, now);
    ay.engine.tick(&mut io, now);
    assert!(sa.want.load(SeqCst), "the group's request");
    // y's link is back before the failover thread took the request.
    ay.engine.link_up(&mut io);
    by.engine.link_up(&mut io);
    for _ in 0..3 {
        ay.engine.tick(&mut io, now);
        ax.engine.tick(&mut io, now);
    }
    assert!(
        sa.want.swap(false, SeqCst),
        "x's request was withdrawn with y's: x waits for an answer for ever"
    );
    // The thread answers: x serves alone, y gives nothing back (x serves on it).
    sa.epoch.store(1, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    for _ in 0..2 {
        ay.engine.tick(&mut io, now);
        ax.engine.tick(&mut io, now);
    }
    assert_eq!(
        (ax.engine.mode(), ax.engine.grant_epoch),
        (Mode::Survivor, 1)
    );
    let epoch = sa.release.load(SeqCst);
    assert!(
        epoch == 0 || !crate::layer::mirror::failover::release_wanted(&sa, epoch),
        "the grant x serves on is given back"
    );
}

/// Site b restarted fenced (its state says only "fenced"), was reconciled by a and mirrors
/// again: the witness's word since names no grant of b's, so b holds none. Later, another
/// volume x of b's group (one failover slot) loses its link and the group's request is granted
/// to b, its answer lost: x fenced for want of it, and adopts the grant once the witness's
/// word names b. Whatever order their ticks run in, the mirroring volume must not give that
/// grant back: it is x's, not a lost grant of its own restart (given back, the failover thread
/// released it before x could claim it, and x stayed fenced, as its peer, denied while b held
/// the group: the volume stopped at both sites). Before, the restored fence was kept for good
/// and every later grant of the group the mirroring volume saw was given back.
#[test]
fn a_site_restarted_fenced_gives_back_only_a_grant_held_when_it_came_in_sync() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(61);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    b.engine.cfg.state_file = Some(dir.path().join("b"));
    b.engine.restore().expect("restore");
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    break_link(&mut a, &mut b);
    let now = Instant::now();
    both_ask(&mut a, &mut b, &mut io, now);
    sa.outcome.store(DENIED, SeqCst);
    sb.outcome.store(DENIED, SeqCst);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut a);
    collect(&mut b);
    crash_and_restart(&mut b);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(b.engine.mode(), Mode::Mirroring);
    // The witness's word, b in sync: nobody holds the group (nothing of b's to give back).
    sb.publish_view(0, 0, 2);
    b.engine.tick(&mut io, Instant::now());
    assert_eq!(sb.release.load(SeqCst), 0);
    for x_first in [false, true] {
        // Another volume of b's group: its link lost, the request granted, the answer lost.
        let (_ax, _, mut bx, _) = traffic_then_cut(&mut io, &mut rng, &mut 0, 5);
        bx.engine.cfg.failover = Some(Arc::clone(&sb));
        bx.engine.tick(&mut io, now);
        assert!(sb.want.swap(false, SeqCst), "x asks");
        sb.outcome.store(UNREACHABLE, SeqCst);
        bx.engine.tick(&mut io, now);
        assert_eq!(bx.engine.mode(), Mode::Fenced);
        let e = if x_first { 3 } else { 2 };
        // (x was in sync at e - 1 when its link went: the grant its request won is at e, one
        // above, as the witness grants; a grant further above came between, and x, missing
        // its writes, never adopts it: `a_volume_fenced_for_want_of_an_answer_never_adopts_a_grant_newer_than_its_replica`.)
        bx.engine.witness.complete_at(e - 1);
        sb.publish_view(2, e, 2);
        // The ticks, and the failover thread's release decision between them.
        let thread = |sb: &crate::layer::mirror::failover::FailoverSlot| {
            let r = sb.release.swap(0, SeqCst);
            if r != 0 {
                decide_release(sb, r);
            }
            sb.releasing.store(0, SeqCst);
        };
        if x_first {
            bx.engine.tick(&mut io, now);
            thread(&sb);
            b.engine.tick(&mut io, now);
            thread(&sb);
        } else {
            b.engine.tick(&mut io, now);
            thread(&sb);
            bx.engine.tick(&mut io, now);
        }
        assert_eq!(
            (bx.engine.mode(), sb.released.load(SeqCst) >= e),
            (Mode::Survivor, false),
            "x first: {x_first}: the group's grant x adopts was given back by the mirroring volume"
        );
        // (x's resync ends later; here it just stops counting.)
        sb.survivors.store(0, SeqCst);
    }
}

/// a loses its link and asks the witness; the failover thread sends the request; the session
/// comes back before the answer, and the answer is lost (the witness recorded the grant: the
/// thread says unreachable). a mirrors on, in session: it must still give back the grant the
/// witness's word then names its own, as a site fenced for a lost answer does once mirroring
/// again. Before, nothing did: the witness held the group for a for good, and at the next loss
/// denied the peer, even with a the site gone.
#[test]
fn a_lost_answer_after_the_session_came_back_is_given_back() {
    use crate::layer::mirror::failover::UNREACHABLE;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(67);
    let mut slot = 0;
    let (mut a, sa, mut b, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "sent");
    meet(&mut a, &mut b, &mut io);
    a.engine.tick(&mut io, now);
    sa.outcome.store(UNREACHABLE, SeqCst);
    a.engine.tick(&mut io, now);
    assert_eq!(a.engine.mode(), Mode::Mirroring, "fenced beside its peer");
    // The witness's next word: a holds the group at epoch 1.
    sa.publish_view(1, 1, 1);
    a.engine.tick(&mut io, now);
    // (Given back once no volume of the group may still take it; a second word changes nothing.)
    sa.publish_view(1, 1, 1);
    a.engine.tick(&mut io, now);
    assert_eq!(
        sa.release.load(SeqCst),
        1,
        "the grant of a request answered after the session came back, its answer lost, is held for good"
    );
}

/// An operator's takeover at a (fenced) is granted, but another volume of the group gave the
/// group's grant back before a's tick could take it (its session came back before the answer,
/// and the failover thread sent the release first). a does not serve on it (the witness may
/// hold nothing for it now); it asks again, as the operator's takeover it was. Before, the
/// grant was refused and nothing was asked: the operator's takeover vanished, the volume
/// fenced, while the log said it asked again.
#[test]
fn a_takeover_whose_grant_another_volume_gave_back_is_asked_again() {
    use crate::layer::mirror::failover::{DENIED, GRANTED, UNREACHABLE, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let (mut a, sa, _b, _, mut io, _rng, _) = cut_and_answer(71, UNREACHABLE, DENIED);
    assert_eq!(a.engine.mode(), Mode::Fenced);
    // (Nothing adopted from a word meanwhile.)
    a.engine.fenced_unanswered = None;
    let now = Instant::now();
    a.engine.stats().takeover.store(true, SeqCst);
    a.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "the takeover is not asked");
    assert!(sa.takeover.swap(false, SeqCst));
    sa.asking_takeover(0);
    sa.epoch.store(1, SeqCst);
    sa.granted_takeover.store(true, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    sa.publish_view(1, 1, 1);
    // Another volume of the group gives it back, the thread sends the release first.
    assert!(decide_release(&sa, 1));
    sa.releasing.store(0, SeqCst);
    sa.publish_view(0, 1, 1);
    a.engine.tick(&mut io, now);
    assert_ne!(a.engine.mode(), Mode::Survivor);
    a.engine.tick(&mut io, now);
    assert!(
        sa.want.load(SeqCst) && sa.takeover.load(SeqCst),
        "the operator's takeover is not asked again"
    );
}

/// As `a_lost_grant_adopted_by_one_volume_is_never_given_back_by_another`, with the failover
/// thread's release decision between the ticks: y (mirroring again) reads the word naming a
/// the holder first, and the thread takes y's release before x's tick. x, fenced for want of
/// the answer, must still become the survivor (its peer was denied while a held the group, so
/// if x stays fenced the volume serves nowhere). Before, y's release went out at once and x,
/// rightly refusing a grant given back, stayed fenced with its peer.
#[test]
fn a_lost_grant_is_given_back_by_a_mirroring_volume_only_after_the_fenced_ones_could_adopt_it() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let (mut ax, sa, _bx, _, mut io, _, _) = cut_and_answer(73, UNREACHABLE, DENIED);
    let (mut ay, _, mut by, _, _, mut rng, _) = cut_and_answer(79, UNREACHABLE, DENIED);
    ay.engine.cfg.failover = Some(Arc::clone(&sa));
    meet(&mut ay, &mut by, &mut io);
    run_until_in_sync(&mut ay, &mut by, &mut io, &mut rng);
    assert_eq!(
        (ax.engine.mode(), ay.engine.mode()),
        (Mode::Fenced, Mode::Mirroring)
    );
    let thread = |s: &crate::layer::mirror::failover::FailoverSlot| {
        let r = s.release.swap(0, SeqCst);
        if r != 0 {
            decide_release(s, r);
        }
        s.releasing.store(0, SeqCst);
    };
    sa.publish_view(1, 1, 1);
    ay.engine.tick(&mut io, Instant::now());
    thread(&sa);
    ax.engine.tick(&mut io, Instant::now());
    thread(&sa);
    // The next heartbeat's word.
    sa.publish_view(1, 1, 1);
    ay.engine.tick(&mut io, Instant::now());
    thread(&sa);
    ax.engine.tick(&mut io, Instant::now());
    assert_eq!(
        (ax.engine.mode(), sa.released.load(SeqCst)),
        (Mode::Survivor, 0),
        "the lost grant was given back before the fenced volume could adopt it"
    );
}

/// x (link down) and y (link flapped, session back) share one request, its answer lost.
/// y reads the answer before the witness's first word, x only after it (the heartbeat follows
/// the failed request at once, the engines tick on their own): x's fence is newer than that
/// word, so x adopts only at the second word. y must not give the grant back before x could
/// adopt it. Before, y counted the first word anyway and released at the second, racing x's
/// adoption: the thread sent the release first, x refused the grant given back and stayed
/// fenced, as its peer, denied while a held the group: the volume served nowhere. (Now y gives
/// it back only while no volume of the group may still take it, `FailoverSlot::watching`.)
#[test]
fn a_lost_grant_is_not_given_back_before_a_volume_fenced_after_the_first_word_adopts_it() {
    use crate::layer::mirror::failover::{UNREACHABLE, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(83);
    let mut slot = 0;
    let (mut ax, sa, _bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut ay, _, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    ay.engine.cfg.failover = Some(Arc::clone(&sa));
    sa.members.store(2, SeqCst);
    let now = Instant::now();
    ax.engine.tick(&mut io, now);
    ay.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "sent");
    meet(&mut ay, &mut by, &mut io);
    ay.engine.tick(&mut io, now);
    sa.outcome.store(UNREACHABLE, SeqCst);
    ay.engine.tick(&mut io, now);
    assert_eq!(ay.engine.mode(), Mode::Mirroring);
    let thread = |s: &crate::layer::mirror::failover::FailoverSlot| {
        let r = s.release.swap(0, SeqCst);
        if r != 0 {
            decide_release(s, r);
        }
        s.releasing.store(0, SeqCst);
    };
    // The heartbeat right after the failed request: the witness holds the group for a.
    sa.publish_view(1, 1, 1);
    ax.engine.tick(&mut io, now);
    assert_eq!(ax.engine.mode(), Mode::Fenced);
    ay.engine.tick(&mut io, now);
    thread(&sa);
    ax.engine.tick(&mut io, now);
    // The next heartbeat.
    sa.publish_view(1, 1, 1);
    ay.engine.tick(&mut io, now);
    thread(&sa);
    ax.engine.tick(&mut io, now);
    for _ in 0..3 {
        sa.publish_view(1, 1, 1);
        ay.engine.tick(&mut io, now);
        thread(&sa);
        ax.engine.tick(&mut io, now);
    }
    assert_eq!(
        (ax.engine.mode(), sa.released.load(SeqCst)),
        (Mode::Survivor, 0),
        "the lost grant was given back before x, fenced after the first word, could adopt it"
    );
}

/// a one-volume group watching for a lost grant (`LostInSession`) gives it back at the
/// witness's first word naming it (no volume of the group may still take it); its link goes
/// again: its new request is answered with a new grant, and it serves on that one; nothing of
/// it is given back.
#[test]
fn a_lost_grant_watched_in_session_is_served_on_when_the_link_goes_again() {
    use crate::layer::mirror::failover::{GRANTED, UNREACHABLE, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(89);
    let mut slot = 0;
    let (mut a, sa, mut b, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "sent");
    meet(&mut a, &mut b, &mut io);
    a.engine.tick(&mut io, now);
    sa.outcome.store(UNREACHABLE, SeqCst);
    a.engine.tick(&mut io, now);
    sa.publish_view(1, 1, 1);
    a.engine.tick(&mut io, now);
    assert_eq!(sa.release.swap(0, SeqCst), 1, "not given back");
    assert!(decide_release(&sa, 1));
    sa.releasing.store(0, SeqCst);
    sa.publish_view(0, 1, 1);
    break_link(&mut a, &mut b);
    a.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "asked again");
    sa.publish_view(0, 1, 1);
    a.engine.tick(&mut io, now);
    let r = sa.release.swap(0, SeqCst);
    assert_eq!(r, 0, "given back while asking");
    sa.epoch.store(2, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    sa.publish_view(1, 2, 1);
    for _ in 0..3 {
        a.engine.tick(&mut io, now);
        let r = sa.release.swap(0, SeqCst);
        if r != 0 {
            decide_release(&sa, r);
        }
        sa.releasing.store(0, SeqCst);
        sa.publish_view(1, 2, 1);
    }
    assert_eq!(
        (
            a.engine.mode(),
            a.engine.grant_epoch,
            sa.released.load(SeqCst)
        ),
        (Mode::Survivor, 2, 1)
    );
}

/// y watches for a lost grant in session; x (its link lost later) is answered with that
/// grant; y, ticking twice on the two words that follow at once (the grant's, the heartbeat's)
/// before x's tick, gives it back. x must still end up serving (asking again), and y must not
/// give back x's new grant.
#[test]
fn a_grant_answered_to_another_volume_while_one_watches_in_session_is_served_on() {
    use crate::layer::mirror::failover::{GRANTED, UNREACHABLE, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(97);
    let mut slot = 0;
    let (mut ay, sa, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut ax, _, mut bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    ax.engine.cfg.failover = Some(Arc::clone(&sa));
    sa.members.store(2, SeqCst);
    meet(&mut ax, &mut bx, &mut io);
    let now = Instant::now();
    ay.engine.tick(&mut io, now);
    ax.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "sent");
    meet(&mut ay, &mut by, &mut io);
    ay.engine.tick(&mut io, now);
    sa.outcome.store(UNREACHABLE, SeqCst);
    ay.engine.tick(&mut io, now);
    ax.engine.tick(&mut io, now);
    // x's link goes; it asks.
    break_link(&mut ax, &mut bx);
    ax.engine.tick(&mut io, now);
    assert!(sa.want.swap(false, SeqCst), "x asks");
    let thread = |s: &crate::layer::mirror::failover::FailoverSlot| {
        let r = s.release.swap(0, SeqCst);
        if r != 0 {
            decide_release(s, r);
        }
        s.releasing.store(0, SeqCst);
    };
    // Granted (the grant the witness holds), then the heartbeat at once.
    sa.epoch.store(1, SeqCst);
    sa.publish_view(1, 1, 1);
    sa.outcome.store(GRANTED, SeqCst);
    ay.engine.tick(&mut io, now);
    sa.publish_view(1, 1, 1);
    ay.engine.tick(&mut io, now);
    thread(&sa);
    sa.publish_view(0, 1, 1);
    for _ in 0..2 {
        ax.engine.tick(&mut io, now);
        ay.engine.tick(&mut io, now);
    }
    if ax.engine.mode() != Mode::Survivor {
        assert!(sa.want.swap(false, SeqCst), "x does not ask again");
        sa.epoch.store(2, SeqCst);
        sa.publish_view(1, 2, 1);
        sa.outcome.store(GRANTED, SeqCst);
        for _ in 0..3 {
            ay.engine.tick(&mut io, now);
            thread(&sa);
            ax.engine.tick(&mut io, now);
            sa.publish_view(1, 2, 1);
        }
    }
    assert_eq!(ax.engine.mode(), Mode::Survivor);
    let e = ax.engine.grant_epoch;
    assert!(sa.released.load(SeqCst) < e, "x's grant given back");
}

/// x (link down) and y (its session back) share one request, its answer lost. x's reactor
/// stalls for many heartbeats, before or after it read the answer, while y ticks at every
/// word of the witness naming a the holder and the failover thread runs between. When x ticks
/// at last it must still adopt the grant (its peer was denied while a held the group: if x
/// stays fenced the volume serves nowhere), so y must not give the grant back while x may
/// still take it, however long x takes. Before, y gave it back at the second word (a
/// heartbeat later): a stall of x longer than that lost the race.
#[test]
fn a_lost_grant_is_not_given_back_while_a_stalled_volume_may_still_adopt_it() {
    use crate::layer::mirror::failover::{UNREACHABLE, decide_release};
    use std::sync::atomic::Ordering::SeqCst;
    for x_read_the_answer in [true, false] {
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let mut rng = Rng(109);
        let mut slot = 0;
        let (mut ax, sa, _bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
        let (mut ay, _, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
        ay.engine.cfg.failover = Some(Arc::clone(&sa));
        sa.members.store(2, SeqCst);
        let now = Instant::now();
        ax.engine.tick(&mut io, now);
        ay.engine.tick(&mut io, now);
        assert!(sa.want.swap(false, SeqCst), "sent");
        meet(&mut ay, &mut by, &mut io);
        ay.engine.tick(&mut io, now);
        sa.outcome.store(UNREACHABLE, SeqCst);
        ay.engine.tick(&mut io, now);
        assert_eq!(ay.engine.mode(), Mode::Mirroring);
        if x_read_the_answer {
            ax.engine.tick(&mut io, now);
            assert_eq!(ax.engine.mode(), Mode::Fenced);
        }
        let thread = |s: &crate::layer::mirror::failover::FailoverSlot| {
            let r = s.release.swap(0, SeqCst);
            if r != 0 {
                decide_release(s, r);
            }
            s.releasing.store(0, SeqCst);
        };
        // x stalls: ten heartbeats, each naming a the holder at epoch 1.
        for _ in 0..10 {
            sa.publish_view(1, 1, 1);
            ay.engine.tick(&mut io, now);
            thread(&sa);
        }
        // x runs again, and the witness's words go on.
        for _ in 0..3 {
            ax.engine.tick(&mut io, now);
            thread(&sa);
            sa.publish_view(1, 1, 1);
            ay.engine.tick(&mut io, now);
            thread(&sa);
        }
        assert_eq!(
            (ax.engine.mode(), sa.released.load(SeqCst)),
            (Mode::Survivor, 0),
            "x read the answer before its stall: {x_read_the_answer}: the lost grant was given \
             back before x could adopt it"
        );
    }
}

/// Two volumes of one group at site a (one failover slot), both links down: volume 1 asks
/// the witness; before the failover thread takes the request, volume 2's replica fails. The
/// group's request must still reach the witness, and volume 1 stop counting as watching once
/// answered. Before, the failed volume withdrew the group's request (`want`) as if it were its
/// own: volume 1 waited for an answer for ever, neither serving nor fenced, counted in
/// `FailoverSlot::watching` for good, so a lost grant of the group was never given back by a
/// volume mirroring again (the peer denied at the next loss).
#[test]
fn a_volume_failing_never_withdraws_another_volumes_request() {
    use crate::layer::mirror::failover::GRANTED;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(137);
    let mut slot = 0;
    let (mut a, sa, _b, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut a2, _, _b2, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    a2.engine.cfg.failover = Some(Arc::clone(&sa));
    sa.members.store(2, SeqCst);
    let now = Instant::now();
    a.engine.tick(&mut io, now);
    assert!(sa.want.load(SeqCst), "volume 1 does not ask");
    assert_eq!(sa.watching.load(SeqCst), 1);
    a2.engine.fail_replica("a write", 0, 4096, Errno::IO);
    a2.engine.tick(&mut io, now);
    assert!(
        sa.want.load(SeqCst),
        "a failed volume withdrew the request another volume of the group waits on"
    );
    sa.want.store(false, SeqCst);
    sa.epoch.store(1, SeqCst);
    sa.publish_view(1, 1, 1);
    sa.outcome.store(GRANTED, SeqCst);
    a.engine.tick(&mut io, now);
    a2.engine.tick(&mut io, now);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    assert_eq!(sa.watching.load(SeqCst), 0, "watching leaks");
}

/// Two volumes of one group at site a, the group's preferred site (one failover slot): y's
/// request is in flight (its link down) when x's replica fails. The group's request is
/// answered (y serves alone, nobody waits), and for as long as x is failed a's heartbeat must
/// not claim the group as preferred, whatever y does and whichever volume ticks last: a
/// failed volume is served only by the peer, which the witness must grant without the tie
/// wait once a's grant is given back (after y's resync). Before, each engine wrote its own
/// state into the group's one `withdrawn` flag: y's tick (survivor, then mirroring) cleared
/// x's withdrawal, and b, asking for x, waited out a tie a kept renewing (denied: x served
/// nowhere with b whole).
#[test]
fn a_failed_volume_withdraws_its_groups_preferred_claim_whatever_the_other_volume_does() {
    use crate::layer::mirror::failover::GRANTED;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(151);
    let mut slot = 0;
    let (mut ay, sa, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut ax, _, _bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    ax.engine.cfg.failover = Some(Arc::clone(&sa));
    sa.members.store(2, SeqCst);
    sa.configured_preferred.store(true, SeqCst);
    let claims = |s: &crate::layer::mirror::failover::FailoverSlot| {
        s.preferred_now() && s.withdrawn.load(SeqCst) == 0
    };
    let now = Instant::now();
    // x mirrors (its link back); y's link is down: y asks.
    ax.engine.link_up(&mut io);
    ay.engine.tick(&mut io, now);
    ax.engine.tick(&mut io, now);
    assert!(sa.want.load(SeqCst), "y does not ask");
    assert!(claims(&sa), "a healthy group is not claimed");
    // x's replica fails while y's request is in flight.
    ax.engine.fail_replica("a write", 0, 4096, Errno::IO);
    assert!(sa.want.swap(false, SeqCst), "y's request withdrawn");
    for order in [true, false] {
        if order {
            ax.engine.tick(&mut io, now);
            ay.engine.tick(&mut io, now);
        } else {
            ay.engine.tick(&mut io, now);
            ax.engine.tick(&mut io, now);
        }
        assert!(
            !claims(&sa),
            "x failed, y asking (x ticks first: {order}): the group claimed as preferred"
        );
    }
    // The group's request is answered: y serves alone.
    sa.epoch.store(1, SeqCst);
    sa.publish_view(1, 1, 1);
    sa.outcome.store(GRANTED, SeqCst);
    ay.engine.tick(&mut io, now);
    ax.engine.tick(&mut io, now);
    assert_eq!(ay.engine.mode(), Mode::Survivor);
    assert_eq!(sa.watching.load(SeqCst), 0, "a volume waits for an answer");
    // y resyncs its peer and mirrors again; x stays failed.
    by.engine.link_down("cut");
    by.wire.clear();
    meet(&mut ay, &mut by, &mut io);
    run_until_in_sync(&mut ay, &mut by, &mut io, &mut rng);
    assert_eq!(ay.engine.mode(), Mode::Mirroring);
    assert_eq!(sa.release.load(SeqCst), 1, "y's grant not given back");
    for order in [true, false] {
        if order {
            ax.engine.tick(&mut io, now);
            ay.engine.tick(&mut io, now);
        } else {
            ay.engine.tick(&mut io, now);
            ax.engine.tick(&mut io, now);
        }
        assert!(
            !claims(&sa),
            "x failed, y mirroring (x ticks first: {order}): the group claimed as preferred"
        );
    }
    // Dropped (the daemon stops, or the volume is removed), x's withdrawal goes with it.
    drop(ax);
    ay.engine.tick(&mut io, now);
    assert!(claims(&sa), "a withdrawal outlives its volume");
}

/// Two volumes of one group at site a (one failover slot), both links down. x asks; the
/// failover thread takes the request; y asks before its answer (the group's request wanted
/// again, the outcome reset). The answer (a denial: b holds the group) is read by both as
/// their own; the thread sends the request y wanted again, and by then b's grant was given
/// back: the witness grants a. Every volume had its answer, none takes this one: the thread
/// must give it back (or a volume serve on it). Before, nobody did: the witness held the
/// group for a, nobody served, and b was denied at every request.
#[test]
fn a_grant_answered_to_a_request_no_volume_waits_on_is_given_back() {
    use crate::layer::mirror::failover::{DENIED, GRANTED, decide_release, unclaimed_grant};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(167);
    let mut slot = 0;
    let (mut ax, sa, _bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut ay, _, _by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    ay.engine.cfg.failover = Some(Arc::clone(&sa));
    sa.members.store(2, SeqCst);
    let now = Instant::now();
    // The failover thread's turn: a grant no volume took given back (`unclaimed_grant`),
    // then the releases.
    let thread = |s: &crate::layer::mirror::failover::FailoverSlot,
                  mark: &mut Option<(u64, bool)>| {
        if let Some(e) = unclaimed_grant(s, mark) {
            let _ = s.release.compare_exchange(0, e, SeqCst, SeqCst);
        }
        let r = s.release.swap(0, SeqCst);
        if r != 0 {
            decide_release(s, r);
        }
        s.releasing.store(0, SeqCst);
    };
    ax.engine.tick(&mut io, now);
    assert!(
        sa.want.swap(false, SeqCst),
        "x's request, taken by the thread"
    );
    ay.engine.tick(&mut io, now);
    assert!(sa.want.load(SeqCst), "y's request");
    // x's request answered: denied, b holds the group at epoch 3.
    sa.publish_view(2, 3, 1);
    sa.outcome.store(DENIED, SeqCst);
    ax.engine.tick(&mut io, now);
    ay.engine.tick(&mut io, now);
    assert_eq!(
        (ax.engine.mode(), ay.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    // The thread sends the request wanted again; b's grant was given back meanwhile, and the
    // witness grants a (epoch 4).
    assert!(sa.want.swap(false, SeqCst));
    sa.epoch.store(4, SeqCst);
    sa.publish_view(1, 4, 1);
    sa.outcome.store(GRANTED, SeqCst);
    // (The thread marks the grant it stored.)
    let mut mark = Some((4, false));
    for _ in 0..3 {
        ax.engine.tick(&mut io, now);
        ay.engine.tick(&mut io, now);
        thread(&sa, &mut mark);
        sa.publish_view(1, 4, 1);
    }
    let served = [&ax, &ay]
        .iter()
        .any(|s| s.engine.mode() == Mode::Survivor && s.engine.grant_epoch == 4);
    assert!(
        served || sa.released.load(SeqCst) == 4,
        "the witness holds the group for a, and nobody serves on it nor gives it back"
    );
    assert_eq!(sa.watching.load(SeqCst), 0, "watching leaks");
}

/// The group's preferred site (a, leader) restarts while its link to b is down (a partition,
/// or a crash and a quick restart): a has had no session since its start, so it never asks
/// for a grant (it must not win one against a peer it has not seen), and b, which lost its
/// peer, asks. a must not claim the group as preferred meanwhile: the witness would deny b on
/// the tie for as long as a beats (b fenced, a waiting: nobody serves while the link is
/// down). Before, a Waiting site claimed the group; it withdraws the claim until its first
/// session, as a fenced or resyncing one does.
#[test]
fn a_preferred_site_restarted_without_its_peer_does_not_claim_the_group() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(181);
    let mut slot = 0;
    let (mut a, _sa, _b, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let dir = tempfile::tempdir().unwrap();
    a.engine.cfg.state_file = Some(dir.path().join("a"));
    a.engine.persist(false);
    let sa2 = Arc::new(crate::layer::mirror::failover::FailoverSlot::default());
    sa2.members.store(1, SeqCst);
    sa2.configured_preferred.store(true, SeqCst);
    a.engine.cfg.failover = Some(Arc::clone(&sa2));
    crash_and_restart(&mut a);
    let claims = |s: &crate::layer::mirror::failover::FailoverSlot| {
        s.preferred_now() && s.withdrawn.load(SeqCst) == 0
    };
    for _ in 0..3 {
        a.engine.tick(&mut io, Instant::now());
        assert_eq!(a.engine.mode(), Mode::Waiting);
        assert!(
            !sa2.want.load(SeqCst),
            "a asks without having seen its peer"
        );
        assert!(
            !claims(&sa2),
            "a, restarted without its peer, claims the group as preferred"
        );
    }
}

/// Volume x of the group is fenced at site a (denied: the peer serves it alone at the
/// group's grant, its replica missing those writes), volume y mirrors in sync. The site must
/// not count as in sync for the group: the failover thread would take the witness's epoch
/// as known (`FailoverSlot::in_sync_now`), and x's next request (asked again once that
/// grant is given back, or once more after an unanswered one) would pass the witness's stale
/// check for writes x never had. Failed before: `in_sync` was one flag each volume
/// overwrote with its own state at each tick, so y's tick made the group in sync.
#[test]
fn a_group_is_in_sync_at_a_site_only_while_every_volume_of_it_is() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(157);
    let mut slot = 0;
    let (mut ay, sa, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    let (mut ax, _, _bx, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    ax.engine.cfg.failover = Some(Arc::clone(&sa));
    ax.engine.fence("test: denied, the peer holds the group");
    by.engine.link_down("cut");
    by.wire.clear();
    ay.engine.link_down("cut");
    ay.wire.clear();
    meet(&mut ay, &mut by, &mut io);
    run_until_in_sync(&mut ay, &mut by, &mut io, &mut rng);
    assert_eq!(
        (ay.engine.mode(), ax.engine.mode()),
        (Mode::Mirroring, Mode::Fenced)
    );
    let now = Instant::now();
    for order in [true, false] {
        if order {
            ax.engine.tick(&mut io, now);
            ay.engine.tick(&mut io, now);
        } else {
            ay.engine.tick(&mut io, now);
            ax.engine.tick(&mut io, now);
        }
        assert!(
            !sa.in_sync_now(),
            "x fenced (x ticks first: {order}): the group taken as in sync at a"
        );
    }
    // x is a resync target (or a replica before its first session): it asks for no grant
    // until in sync, so it must not keep the site from learning the epoch (the witness would
    // refuse y as stale when its peer is lost during x's resync).
    ax.engine.mode = Mode::Resyncing;
    ax.engine.tick(&mut io, now);
    ay.engine.tick(&mut io, now);
    assert!(
        sa.in_sync_now(),
        "y in sync, x resyncing: the group not in sync"
    );
    ax.engine.mode = Mode::Fenced;
    ax.engine.tick(&mut io, now);
    assert!(!sa.in_sync_now(), "x fenced again: the group in sync");
    // x's replica fails: it never asks for a grant again, so y alone decides (a volume
    // failed for good must not keep the site from learning the epoch).
    ax.engine.fail_replica("a write", 0, 4096, Errno::IO);
    ax.engine.tick(&mut io, now);
    ay.engine.tick(&mut io, now);
    assert!(
        sa.in_sync_now(),
        "y in sync, x failed: the group not in sync"
    );
    // Once x is gone (its engine dropped), y alone decides.
    drop(ax);
    ay.engine.tick(&mut io, now);
    assert!(sa.in_sync_now(), "y in sync, x gone: the group not in sync");
}

/// The epoch of RESYNC_DONE is the group's knowledge, taken from one volume: the witness's
/// epochs are the group's. Two volumes x and y of one group at b: a holds the group (epoch 1,
/// survivor for both), both fenced at b, denied; y's replica misses a's writes at epoch 1.
/// x's link returns and a resyncs b's x, whose RESYNC_DONE carries epoch 1: b knows epoch 1
/// (so x, in sync at 1, is granted when a is lost: kept). Then a gives its grant back without
/// resyncing y (an operator's release of a lost survivor, or a's y failed) and is lost: y,
/// denied at 1 while a held it, asks again, and b's group is granted at 2 (asked at 1, which
/// x taught). x must serve on it; y must not: its replica was complete only at the epoch the
/// site knew at its denial (0), and a grant came between. Failed before: y served without
/// a's writes at epoch 1.
#[test]
fn a_volume_denied_before_another_taught_the_groups_epoch_never_serves_on_the_next_grant() {
    use crate::layer::mirror::failover::{DENIED, GRANTED};
    use std::sync::atomic::Ordering::SeqCst;
    let (mut ax, mut bx, mut io) = lose_peer(true);
    let mut rng = Rng(163);
    let mut slot = 0;
    let sb = bx.engine.cfg.failover.clone().unwrap();
    let (_ay, _, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    by.engine.cfg.failover = Some(Arc::clone(&sb));
    let now = Instant::now();
    by.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "y does not ask");
    sb.publish_view(1, 1, 2);
    sb.outcome.store(DENIED, SeqCst);
    by.engine.tick(&mut io, now);
    bx.engine.tick(&mut io, now);
    assert_eq!(
        (bx.engine.mode(), by.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    meet(&mut ax, &mut bx, &mut io);
    assert_eq!(
        (ax.engine.mode(), bx.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    run_until_in_sync(&mut ax, &mut bx, &mut io, &mut rng);
    assert_eq!(bx.engine.mode(), Mode::Mirroring);
    assert_eq!(sb.learned_epoch.load(SeqCst), 1, "x in sync at 1");
    // a gives epoch 1 back without resyncing y, and is lost.
    break_link(&mut ax, &mut bx);
    sb.publish_view(0, 1, 2);
    let now = Instant::now();
    by.engine.tick(&mut io, now);
    bx.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "nobody asks");
    // (The failover thread asks at 1, which x taught, and is granted 2.)
    sb.asked_epoch.store(1, SeqCst);
    sb.epoch.store(2, SeqCst);
    sb.publish_view(2, 2, 2);
    sb.outcome.store(GRANTED, SeqCst);
    for _ in 0..2 {
        bx.engine.tick(&mut io, now);
        by.engine.tick(&mut io, now);
    }
    assert_eq!(
        (bx.engine.mode(), bx.engine.grant_epoch),
        (Mode::Survivor, 2),
        "x, in sync at 1, does not serve on the grant"
    );
    assert_ne!(
        by.engine.mode(),
        Mode::Survivor,
        "y serves alone at b without a's writes at epoch 1"
    );
}

/// As `a_volume_denied_before_another_taught_the_groups_epoch_never_serves_on_the_next_grant`,
/// but y at b fenced for want of an answer (the witness out of reach for its request's
/// deadline: it granted nothing) instead of denied, and its reactor stalled while the
/// witness's word named nobody (a gave its grant back without resyncing y): the next word it
/// sees names b the group's holder at epoch 2, a grant x asked at 1 (which x taught) and serves
/// on. y must not take that grant for the one its lost request may have won: its replica was
/// complete only at 0, and a's grant at 1 came between. Failed before (4145b52 judged only a
/// grant answered to y's request, not one adopted from the witness's word): y adopted the
/// grant and served without a's writes at epoch 1.
#[test]
fn a_volume_fenced_for_want_of_an_answer_never_adopts_a_grant_newer_than_its_replica() {
    use crate::layer::mirror::failover::{GRANTED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let (mut ax, mut bx, mut io) = lose_peer(true);
    let mut rng = Rng(167);
    let mut slot = 0;
    let sb = bx.engine.cfg.failover.clone().unwrap();
    let (_ay, _, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    by.engine.cfg.failover = Some(Arc::clone(&sb));
    let now = Instant::now();
    by.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "y does not ask");
    sb.outcome.store(UNREACHABLE, SeqCst);
    by.engine.tick(&mut io, now);
    assert_eq!(
        (bx.engine.mode(), by.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    // The witness's word since: a holds the group at 1.
    sb.publish_view(1, 1, 2);
    by.engine.tick(&mut io, now);
    bx.engine.tick(&mut io, now);
    assert_eq!(by.engine.mode(), Mode::Fenced);
    meet(&mut ax, &mut bx, &mut io);
    run_until_in_sync(&mut ax, &mut bx, &mut io, &mut rng);
    assert_eq!(bx.engine.mode(), Mode::Mirroring);
    assert_eq!(sb.learned_epoch.load(SeqCst), 1, "x in sync at 1");
    // a gives epoch 1 back without resyncing y, and is lost; y's reactor stalls meanwhile.
    break_link(&mut ax, &mut bx);
    sb.publish_view(0, 1, 2);
    let now = Instant::now();
    bx.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "x does not ask");
    // (The failover thread asks at 1, which x taught, and is granted 2.)
    sb.asked_epoch.store(1, SeqCst);
    sb.epoch.store(2, SeqCst);
    sb.publish_view(2, 2, 2);
    sb.outcome.store(GRANTED, SeqCst);
    for _ in 0..3 {
        bx.engine.tick(&mut io, now);
        by.engine.tick(&mut io, now);
    }
    assert_eq!(
        (bx.engine.mode(), bx.engine.grant_epoch),
        (Mode::Survivor, 2),
        "x, in sync at 1, does not serve on the grant"
    );
    assert_ne!(
        by.engine.mode(),
        Mode::Survivor,
        "y adopted the group's grant and serves alone at b without a's writes at epoch 1"
    );
}

/// A volume mirroring in sync when its link goes holds every write of the grants up to the
/// epoch its site learned, also one another volume of the group taught by its RESYNC_DONE
/// (`learned_epoch`) before the failover thread took it as known: the failover thread asks
/// at that epoch. Its request's answer lost, the volume fenced for want of it must adopt the
/// grant won (one above), as any lost grant of its own. Failed with 3007fd7's adoption rule
/// alone (the volume's completeness was the known epoch only: fenced, and its peer, denied
/// while this site held the group, fenced too); 4145b52's rule for an answered grant had the
/// same gap.
#[test]
fn a_volume_in_sync_when_its_link_went_adopts_the_grant_asked_at_the_epoch_another_volume_taught() {
    use crate::layer::mirror::failover::UNREACHABLE;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(171);
    let mut slot = 0;
    let (mut a, _sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    for _ in 0..10 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
        submit(&mut b, &mut io, &mut rng, &mut slot);
    }
    deliver(&mut a, &mut b, &mut io, 5);
    deliver(&mut b, &mut a, &mut io, 5);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    // Another volume of b's group finished its resync from a's grant at 1 (not known yet).
    sb.publish_view(0, 1, 2);
    sb.learned_epoch.store(1, SeqCst);
    break_link(&mut a, &mut b);
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "b does not ask");
    // (Asked at 1; the witness grants it at 2, and the answer is lost.)
    sb.asked_epoch.store(1, SeqCst);
    sb.outcome.store(UNREACHABLE, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    sb.epoch.store(2, SeqCst);
    sb.publish_view(2, 2, 2);
    for _ in 0..2 {
        b.engine.tick(&mut io, now);
    }
    assert_eq!(
        (b.engine.mode(), b.engine.grant_epoch),
        (Mode::Survivor, 2),
        "b, in sync when its link went, does not serve on the grant its lost request won"
    );
}

/// As `a_volume_denied_before_another_taught_the_groups_epoch_never_serves_on_the_next_grant`,
/// but the answer to y's second request (asked at 1, which x taught, once a gave its grant
/// back) is lost: the witness granted it at 2. y, fenced for want of that answer, must not
/// adopt the grant from the witness's word either: its replica was complete only at 0 (the
/// answered grant fences it, 4145b52). 3007fd7 skipped its rule for a request asked again
/// after a give-back (kept as a takeover's, for the regions it copies), not only for an
/// operator's takeover: y adopted the grant and served without a's writes at epoch 1.
#[test]
fn a_volume_whose_second_request_was_lost_never_adopts_a_grant_newer_than_its_replica() {
    use crate::layer::mirror::failover::{DENIED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let (mut ax, mut bx, mut io) = lose_peer(true);
    let mut rng = Rng(173);
    let mut slot = 0;
    let sb = bx.engine.cfg.failover.clone().unwrap();
    let (_ay, _, mut by, _) = traffic_then_cut(&mut io, &mut rng, &mut slot, 5);
    by.engine.cfg.failover = Some(Arc::clone(&sb));
    let now = Instant::now();
    by.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "y does not ask");
    sb.publish_view(1, 1, 2);
    sb.outcome.store(DENIED, SeqCst);
    by.engine.tick(&mut io, now);
    bx.engine.tick(&mut io, now);
    assert_eq!(
        (bx.engine.mode(), by.engine.mode()),
        (Mode::Fenced, Mode::Fenced)
    );
    meet(&mut ax, &mut bx, &mut io);
    run_until_in_sync(&mut ax, &mut bx, &mut io, &mut rng);
    assert_eq!(bx.engine.mode(), Mode::Mirroring);
    assert_eq!(sb.learned_epoch.load(SeqCst), 1, "x in sync at 1");
    // a gives epoch 1 back without resyncing y; x's link stays up.
    sb.publish_view(0, 1, 2);
    let now = Instant::now();
    by.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "y does not ask again");
    // (Asked at 1, which x taught; granted at 2, the answer lost.)
    sb.asked_epoch.store(1, SeqCst);
    sb.outcome.store(UNREACHABLE, SeqCst);
    by.engine.tick(&mut io, now);
    assert_eq!(by.engine.mode(), Mode::Fenced);
    sb.epoch.store(2, SeqCst);
    sb.publish_view(2, 2, 2);
    for _ in 0..3 {
        by.engine.tick(&mut io, now);
    }
    assert_ne!(
        by.engine.mode(),
        Mode::Survivor,
        "y adopted the grant its second request won and serves alone at b without a's writes at epoch 1"
    );
}

/// As `a_volume_in_sync_when_its_link_went_adopts_the_grant_asked_at_the_epoch_another_volume_taught`,
/// but the witness granted nothing to the lost request (out of reach for its deadline): its
/// word then names nobody at 1, the volume asks once more (at 1, as the failover thread does
/// with the epoch learned) and is answered with the grant at 2. In sync when its link went,
/// it must serve on it (4145b52's rule took its completeness from the known epoch only, 0:
/// fenced, the grant given back, and the peer, fenced too, never served).
#[test]
fn a_volume_in_sync_when_its_link_went_serves_on_the_grant_answered_to_its_second_request() {
    use crate::layer::mirror::failover::{GRANTED, UNREACHABLE};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(179);
    let mut slot = 0;
    let (mut a, _sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    for _ in 0..10 {
        submit(&mut a, &mut io, &mut rng, &mut slot);
        submit(&mut b, &mut io, &mut rng, &mut slot);
    }
    deliver(&mut a, &mut b, &mut io, 5);
    deliver(&mut b, &mut a, &mut io, 5);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    // Another volume of b's group finished its resync from a's grant at 1 (not known yet).
    sb.publish_view(0, 1, 2);
    sb.learned_epoch.store(1, SeqCst);
    break_link(&mut a, &mut b);
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "b does not ask");
    sb.asked_epoch.store(1, SeqCst);
    sb.outcome.store(UNREACHABLE, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    // The witness's word: nobody holds the group at 1.
    sb.publish_view(0, 1, 2);
    b.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "b does not ask again");
    sb.asked_epoch.store(1, SeqCst);
    sb.epoch.store(2, SeqCst);
    sb.publish_view(2, 2, 2);
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(
        (b.engine.mode(), b.engine.grant_epoch),
        (Mode::Survivor, 2),
        "b, in sync when its link went, does not serve on the grant answered to it"
    );
}

/// The other side of the check above: a volume mirroring in session while the witness's word
/// shows the group at epoch 1 (the peer's grant, taken by another volume of the group there)
/// holds every write of that grant: denied once its own link is lost (the peer holds the
/// group), then asking again once that grant is given back, at 1, it serves on the grant.
/// Counted complete only at the site's known epoch (0: learned only while the whole group
/// is in sync), it stayed fenced.
#[test]
fn a_volume_mirroring_through_the_peers_grant_serves_on_the_next_one() {
    use crate::layer::mirror::failover::{DENIED, GRANTED};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut a, _sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let now = Instant::now();
    // The witness's word: a holds the group at epoch 1; b's volume mirrors in session.
    sb.publish_view(1, 1, 2);
    b.engine.tick(&mut io, now);
    break_link(&mut a, &mut b);
    b.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "b does not ask");
    sb.outcome.store(DENIED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Fenced);
    // a's grant is given back; b asks again, at 1, and is granted 2.
    sb.publish_view(0, 1, 2);
    b.engine.tick(&mut io, now);
    assert!(sb.want.swap(false, SeqCst), "b does not ask again");
    sb.asked_epoch.store(1, SeqCst);
    sb.epoch.store(2, SeqCst);
    sb.publish_view(2, 2, 2);
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(
        (b.engine.mode(), b.engine.grant_epoch),
        (Mode::Survivor, 2),
        "a volume in sync through the peer's grant refuses the next one"
    );
}
