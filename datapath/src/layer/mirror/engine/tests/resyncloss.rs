//! Every message of a resync lost: the link cut after each message of a resync session (both
//! directions, every phase: suspect list, copies, the last pass, RESYNC_DONE and its
//! confirmation, the first mirrored updates), with the witness answered as the real one
//! decides. Invariants checked: after every cut at least one site serves (never both down),
//! the next session is accepted at both sites, and both end in sync with byte-identical
//! replicas holding every acknowledged write.

use super::*;
use crate::layer::mirror::failover::{DENIED, FailoverSlot, GRANTED};
use std::sync::atomic::Ordering::SeqCst;

/// The witness as docs/witness-protocol.md decides for one group: a holder keeps the grant
/// until it gives it back; with no holder, the first site asking gets it (a new epoch).
#[derive(Default)]
struct Witness {
    holder: Option<usize>,
    epoch: u64,
}

impl Witness {
    /// Take releases and answer requests of the two sites' slots.
    fn serve(&mut self, slots: [&FailoverSlot; 2]) {
        for (i, s) in slots.iter().enumerate() {
            let r = s.release.swap(0, SeqCst);
            if r != 0 && r == self.epoch && self.holder == Some(i) {
                self.holder = None;
            }
        }
        for (i, s) in slots.iter().enumerate() {
            if !s.want.swap(false, SeqCst) {
                continue;
            }
            match self.holder {
                Some(h) if h != i => s.outcome.store(DENIED, SeqCst),
                _ => {
                    if self.holder.is_none() {
                        self.epoch += 1;
                        self.holder = Some(i);
                    }
                    s.epoch.store(self.epoch, SeqCst);
                    s.outcome.store(GRANTED, SeqCst);
                }
            }
        }
    }
}

/// One turn of both sites: ticks (the witness answering between them), local completions,
/// and at most one message each way while `budget` lasts (each delivered message takes one).
/// Returns whether anything moved.
fn turn(
    a: &mut Site,
    b: &mut Site,
    x: &mut Around,
    io: &mut IoCx,
    rng: &mut Rng,
    budget: &mut usize,
) -> bool {
    let (b_writes, src_is_a) = (&mut x.writes, x.src_is_a);
    let now = Instant::now();
    a.engine.tick(io, now);
    b.engine.tick(io, now);
    x.w.serve(x.slots);
    a.engine.tick(io, now);
    b.engine.tick(io, now);
    let mut any = complete_one(a, io, rng);
    any |= complete_one(b, io, rng);
    for dir in 0..2 {
        if *budget == 0 {
            break;
        }
        let n = if dir == 0 {
            deliver(b, a, io, 1)
        } else {
            deliver(a, b, io, 1)
        };
        *budget -= n;
        any |= n > 0;
    }
    let src = if src_is_a { &*a } else { &*b };
    for (_, tag, r) in &src.engine.done {
        if let Some(w) = b_writes.iter_mut().find(|w| w.0 == tag.slot) {
            w.3 = Some(r.is_ok());
        }
    }
    collect(a);
    collect(b);
    any
}

/// What surrounds the two sites: the witness and their slots, and the source's writes.
struct Around<'s> {
    w: Witness,
    slots: [&'s FailoverSlot; 2],
    writes: Vec<BWrite>,
    /// The resync source is a (else b).
    src_is_a: bool,
}

/// A write of the resync source's initiator: (slot, offset, byte, outcome once answered: acknowledged?).
type BWrite = (u32, u64, u8, Option<bool>);

/// Both sites past the lost peer's read lease (a survivor holds answers until then).
fn past_leases(a: &mut Site, b: &mut Site, io: &mut IoCx) {
    past_peer_lease(a, io);
    past_peer_lease(b, io);
}

/// Which resync is cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Source {
    /// The follower (b), survivor with the witness's grant, resyncs the fenced leader.
    FollowerGranted,
    /// The leader (a), survivor with the grant, resyncs the follower.
    LeaderGranted,
    /// The leader (a), in sync, sends every region ever written to a follower restarted
    /// without its state (a new replica): serving alone without any grant meanwhile.
    LeaderWithoutGrant,
}

/// Sites a (leader, in sync, having written 0x31 at 0 and 0x32 at 16384) and b (the
/// follower restarted without state: a new, empty replica), their link down, no grant held.
pub(super) fn leader_and_new_follower() -> (Site, Site, IoCx, Rng, Vec<(u64, u8)>) {
    leader_and_new_follower_with(true)
}

/// [`leader_and_new_follower`], with a witness or without.
fn leader_and_new_follower_with(witness: bool) -> (Site, Site, IoCx, Rng, Vec<(u64, u8)>) {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(31);
    let pair = |role| {
        if witness {
            with_witness(role).0
        } else {
            site(role, Duration::from_secs(60))
        }
    };
    let (mut a, mut b) = (pair(Role::Leader), pair(Role::Follower));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 100;
    write_at(&mut a, &mut io, &mut slot, 0, 0x31, 4096);
    write_at(&mut a, &mut io, &mut slot, 16384, 0x32, 8192);
    exchange(&mut a, &mut b, &mut io, &mut rng, 5);
    collect(&mut a);
    collect(&mut b);
    assert_eq!(a.ok, 2, "the writes before the follower's restart");
    break_link(&mut a, &mut b);
    // b restarts without its state over an empty device (a new replica, as restore()
    // finds it without a state file).
    b = pair(Role::Follower);
    b.engine.start_new_replica(None);
    assert_eq!(b.engine.replica_state(), 4);
    (a, b, io, rng, vec![(0, 0x31), (16384, 0x32), (20480, 0x32)])
}

/// Turns of the copy from `a` to `b` (sessions started) until `done(a, b)`: both engines
/// ticked, every local operation finished, `each` run, a's messages delivered and b's only
/// while it is resyncing (its RESYNC_DONE_ACK never reaches a). False if it never was done.
fn copy_until(
    a: &mut Site,
    b: &mut Site,
    io: &mut IoCx,
    rng: &mut Rng,
    mut each: impl FnMut(&mut Site, &mut IoCx),
    done: impl Fn(&Site, &Site) -> bool,
) -> bool {
    for _ in 0..20_000 {
        let now = Instant::now();
        a.engine.tick(io, now);
        b.engine.tick(io, now);
        while complete_one(a, io, rng) || complete_one(b, io, rng) {}
        each(a, io);
        if done(a, b) {
            return true;
        }
        deliver(a, b, io, usize::MAX);
        while complete_one(b, io, rng) {}
        b.engine.tick(io, Instant::now());
        if b.engine.mode() != Mode::Mirroring {
            deliver(b, a, io, usize::MAX);
        }
        a.engine.wait_persisted();
    }
    false
}

/// [`leader_and_new_follower`] with a state file for a (in the directory returned), the copy's
/// session started.
fn grantless_source_with_a_state_file() -> (tempfile::TempDir, Site, Site, IoCx, Rng) {
    let (mut a, mut b, mut io, rng, _) = leader_and_new_follower();
    let dir = tempfile::tempdir().unwrap();
    a.engine.cfg.state_file = Some(dir.path().join("a.mirror-state"));
    a.engine
        .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
    meet(&mut a, &mut b, &mut io);
    (dir, a, b, io, rng)
}

/// [`grantless_source_with_a_state_file`], its copy run until its RESYNC_DONE is out (not yet
/// delivered).
fn grantless_source_past_resync_done() -> (tempfile::TempDir, Site, Site, IoCx) {
    let (dir, mut a, mut b, mut io, mut rng) = grantless_source_with_a_state_file();
    let sent = copy_until(
        &mut a,
        &mut b,
        &mut io,
        &mut rng,
        |_, _| {},
        |a, _| done_sent(a),
    );
    assert!(sent, "RESYNC_DONE never sent");
    (dir, a, b, io)
}

/// RESYNC_DONE is out (not merely decided: a grant-less source's state saved first).
fn done_sent(a: &Site) -> bool {
    a.engine
        .resync
        .as_ref()
        .is_some_and(|r| r.awaiting_ack() && r.done_gate.is_none())
}

/// The resync of `setup` with the link cut after `cut` delivered messages (`usize::MAX`:
/// never). Returns the number of messages delivered before the cut (or in all, when never
/// cut). `settle`: after the last delivered message both sites run a few more turns with
/// nothing delivered (what they send then is lost too).
fn resync_cut_after(cut: usize, settle: bool, setup: Source) -> usize {
    let leader_source = setup != Source::FollowerGranted;
    let (mut a, mut b, mut io, mut rng, mut acked) = match setup {
        Source::LeaderGranted => {
            // Random writes from both sites before the loss (their outcomes are not
            // tracked: only that the replicas end identical).
            let (a, b, io) = lose_peer(true);
            (a, b, io, Rng(77), Vec::new())
        }
        Source::FollowerGranted => {
            let (a, b, io, rng) = fenced_leader_with_unconfirmed_updates();
            (a, b, io, rng, vec![(0, 0x11), (8192, 0xB1), (57344, 0xB2)])
        }
        Source::LeaderWithoutGrant => leader_and_new_follower(),
    };
    let (sa, sb) = (
        a.engine.cfg.failover.clone().expect("slot"),
        b.engine.cfg.failover.clone().expect("slot"),
    );
    // A survivor holds the grant (epoch 1), as the witness of the setup gave it; the source
    // of a new replica's copy holds none.
    let w = match setup {
        Source::LeaderGranted => Witness {
            holder: Some(0),
            epoch: 1,
        },
        Source::FollowerGranted => Witness {
            holder: Some(1),
            epoch: 1,
        },
        Source::LeaderWithoutGrant => Witness::default(),
    };
    let mut x = Around {
        w,
        slots: [&*sa, &*sb],
        writes: Vec::new(),
        src_is_a: leader_source,
    };
    let mut slot = 5000;
    let (ra, rb) = (a.engine.replica_state(), b.engine.replica_state());
    a.engine.session_start(&mut io, rb).expect("session at a");
    b.engine.session_start(&mut io, ra).expect("session at b");
    let mut budget = cut;
    let mut delivered = 0;
    // The survivor's initiators keep writing during the resync (three writes, at the
    // start, in the middle and near the end of the session).
    let writes = [(3usize, 24576u64, 0xC1u8), (9, 0, 0xC2), (15, 49152, 0xC3)];
    for round in 0..20_000 {
        for &(at, off, byte) in &writes {
            if round == at {
                let src = if leader_source { &mut a } else { &mut b };
                write_at(src, &mut io, &mut slot, off, byte, 4096);
                x.writes.push((slot, off, byte, None));
            }
        }
        let before = budget;
        let any = turn(&mut a, &mut b, &mut x, &mut io, &mut rng, &mut budget);
        delivered += before - budget;
        if budget == 0 && cut != usize::MAX {
            if settle {
                for _ in 0..5 {
                    turn(&mut a, &mut b, &mut x, &mut io, &mut rng, &mut budget);
                }
            }
            break;
        }
        let synced = a.engine.mode() == Mode::Mirroring && b.engine.mode() == Mode::Mirroring;
        if !any && synced && round > 20 && a.engine.idle() && b.engine.idle() {
            break;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    if cut != usize::MAX {
        // The link breaks: what is on the wire is lost, both sessions end.
        break_link(&mut a, &mut b);
        let mut unused = usize::MAX;
        for _ in 0..10 {
            turn(&mut a, &mut b, &mut x, &mut io, &mut rng, &mut unused);
        }
        past_leases(&mut a, &mut b, &mut io);
        let serving = [&a, &b].iter().filter(|s| !s.engine.no_io()).count();
        assert!(
            serving >= 1,
            "{setup:?}, cut after {cut} messages: both sites stopped ({:?} / {:?})",
            a.engine.mode(),
            b.engine.mode()
        );
        // Never two sites acknowledging alone (a split brain).
        assert!(
            a.engine.mode() != Mode::Survivor || b.engine.mode() != Mode::Survivor,
            "{setup:?}, cut after {cut} messages: both sites serve alone"
        );
        // The next session: both sides accept it.
        let (ra, rb) = (a.engine.replica_state(), b.engine.replica_state());
        a.engine
            .session_start(&mut io, rb)
            .unwrap_or_else(|e| panic!("{setup:?}, cut after {cut}: session refused at a: {e}"));
        b.engine
            .session_start(&mut io, ra)
            .unwrap_or_else(|e| panic!("{setup:?}, cut after {cut}: session refused at b: {e}"));
        let mut unused = usize::MAX;
        for _ in 0..200_000 {
            let any = turn(&mut a, &mut b, &mut x, &mut io, &mut rng, &mut unused);
            let synced = a.engine.mode() == Mode::Mirroring && b.engine.mode() == Mode::Mirroring;
            if !any && synced && a.engine.idle() && b.engine.idle() {
                break;
            }
        }
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    }
    past_leases(&mut a, &mut b, &mut io);
    collect(&mut a);
    collect(&mut b);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Mirroring, Mode::Mirroring),
        "cut after {cut}: not back in sync"
    );
    assert!(
        x.writes.iter().all(|w| w.3.is_some()),
        "cut after {cut}: a write never answered"
    );
    if cut == usize::MAX {
        assert!(
            x.writes.iter().all(|w| w.3 == Some(true)),
            "failed without a cut"
        );
    }
    // The last acknowledged write to each offset; a failed one may or may not be there,
    // the same at both sites.
    let mut failed = Vec::new();
    for w in &x.writes {
        match w.3 {
            Some(true) => acked.push((w.1, w.2)),
            _ => failed.push(w.1),
        }
    }
    let acked: std::collections::BTreeMap<u64, u8> = acked.into_iter().collect();
    let (da, db) = (a.disk.borrow(), b.disk.borrow());
    for (off, byte) in acked {
        if failed.contains(&off) {
            continue;
        }
        assert_eq!(
            db.bytes[off as usize], byte,
            "cut after {cut}: acknowledged write at {off} lost"
        );
    }
    assert!(
        da.bytes == db.bytes,
        "cut after {cut}: replicas differ after the resync"
    );
    // Back in sync, the survivor gave the grant back.
    x.w.serve(x.slots);
    assert_eq!(
        x.w.holder, None,
        "cut after {cut}: the grant was never given back"
    );
    delivered
}

/// The resync of `setup` cut after each of its messages in turn, with and without a few
/// turns more after the last one delivered.
fn cut_after_every_message(setup: Source) {
    let all = resync_cut_after(usize::MAX, false, setup);
    assert!(all > 8, "the resync exchanged only {all} messages");
    for cut in 0..=all {
        resync_cut_after(cut, false, setup);
        resync_cut_after(cut, true, setup);
    }
}

#[test]
fn a_lost_resync_done_leaves_the_source_serving_and_both_sites_converge() {
    cut_after_every_message(Source::FollowerGranted);
    cut_after_every_message(Source::LeaderGranted);
}

/// The source of a new replica's copy holds no grant. Once it has sent RESYNC_DONE, the
/// target may finish and serve as a mirroring site, which asks the witness for the volume
/// when the link goes. Before, the source went on alone when its session ended there, while
/// the witness (holding no grant) gave the target the volume: two sites acknowledging alone,
/// and a next session refused as a split brain.
#[test]
fn a_source_without_a_grant_that_lost_its_session_after_resync_done_asks_the_witness() {
    cut_after_every_message(Source::LeaderWithoutGrant);
}

/// The grant-less source waiting for the witness's answer after RESYNC_DONE (above) turns into
/// a mirroring site once: its replica state is handed to the persister once, not at every
/// engine tick (5 ms) until the answer comes (before, each tick wrote it again, fsyncs and
/// all).
#[test]
fn a_grantless_source_waiting_for_the_witness_persists_its_state_once() {
    let (_dir, mut a, mut b, mut io) = grantless_source_past_resync_done();
    break_link(&mut a, &mut b);
    a.engine.tick(&mut io, Instant::now());
    assert_eq!(a.engine.mode(), Mode::Mirroring);
    let before = a.engine.persists_submitted();
    for _ in 0..100 {
        a.engine.tick(&mut io, Instant::now());
    }
    assert!(
        a.engine.persists_submitted() <= before + 1,
        "the state handed to the persister {} times in 100 ticks",
        a.engine.persists_submitted() - before
    );
}

/// A source without a grant, with a state file, crashes right after its RESYNC_DONE reached
/// the target, which finishes, loses the link and is granted the volume. Restarted from its
/// state, the source must not serve alone: it was saved as in sync before RESYNC_DONE went
/// out. Before, it restarted as a survivor (without a grant, so nothing checked it) and
/// acknowledged alone beside the granted target: a split brain.
#[test]
fn a_grantless_source_restarted_after_resync_done_does_not_serve_alone() {
    use crate::layer::mirror::failover::GRANTED;
    use std::sync::atomic::Ordering::SeqCst;
    let (_dir, mut a, mut b, mut io, mut rng) = grantless_source_with_a_state_file();
    assert_eq!(a.engine.mode(), Mode::Survivor, "a is the source");
    // Until the target has finished (its RESYNC_DONE_ACK is never delivered).
    let finished = copy_until(
        &mut a,
        &mut b,
        &mut io,
        &mut rng,
        |_, _| {},
        |_, b| b.engine.mode() == Mode::Mirroring,
    );
    assert!(finished, "the target never finished");
    // a crashes (its state as last saved) and restarts over the same replica.
    crash_and_restart(&mut a);
    b.engine.link_down("test");
    b.wire.clear();
    // b, in sync, is granted the volume.
    let sb = b.engine.cfg.failover.clone().expect("slot");
    let now = Instant::now();
    b.engine.tick(&mut io, now);
    assert!(sb.want.load(SeqCst), "b asks for the grant");
    sb.epoch.store(1, SeqCst);
    sb.outcome.store(GRANTED, SeqCst);
    b.engine.tick(&mut io, now);
    assert_eq!(b.engine.mode(), Mode::Survivor);
    a.engine.tick(&mut io, Instant::now());
    assert_ne!(
        a.engine.mode(),
        Mode::Survivor,
        "the restarted source serves alone beside the granted target"
    );
    assert_ne!(a.engine.replica_state(), 1);
    // When they meet, the granted target's copy wins.
    let (ra, rb) = (a.engine.replica_state(), b.engine.replica_state());
    b.engine.session_start(&mut io, ra).expect("session at b");
    a.engine.session_start(&mut io, rb).expect("session at a");
    assert_eq!(a.engine.mode(), Mode::Resyncing);
}

/// Without a witness, the source of a new replica's copy whose session ends after RESYNC_DONE
/// waits for the peer as a mirroring site does: the target may have finished and serve reads
/// (a mirroring site without a witness serves them with the link down, nobody being able to
/// write alone), so the source must not acknowledge alone the update its last pass deferred.
/// Before, it did, and the target read the old data.
#[test]
fn without_a_witness_a_source_that_lost_its_session_after_resync_done_writes_nothing_alone() {
    let (mut a, mut b, mut io, mut rng, _) = leader_and_new_follower_with(false);
    meet(&mut a, &mut b, &mut io);
    let mut slot = 500;
    let mut deferred = false;
    let finished = copy_until(
        &mut a,
        &mut b,
        &mut io,
        &mut rng,
        |a, io| {
            if !deferred && a.engine.resync.as_ref().is_some_and(|r| r.awaiting_ack()) {
                // A write the last pass defers.
                write_at(a, io, &mut slot, 4096, 0x5C, 4096);
                deferred = true;
            }
        },
        |_, b| b.engine.mode() == Mode::Mirroring,
    );
    assert!(finished && deferred, "the target never finished");
    collect(&mut a);
    let ok = a.ok;
    break_link(&mut a, &mut b);
    for _ in 0..10 {
        a.engine
            .tick(&mut io, Instant::now() + Duration::from_secs(1));
        while complete_one(&mut a, &mut io, &mut rng) {}
    }
    collect(&mut a);
    assert_eq!(
        a.ok, ok,
        "acknowledged alone while the finished target serves reads"
    );
    assert_eq!(a.engine.mode(), Mode::Mirroring);
    assert!(
        b.engine.may_read(Instant::now()),
        "(the target reads, as designed)"
    );
    // Back: in sync, the deferred write goes out mirrored.
    let (ra, rb) = (a.engine.replica_state(), b.engine.replica_state());
    a.engine.session_start(&mut io, rb).expect("session at a");
    b.engine.session_start(&mut io, ra).expect("session at b");
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
    assert_eq!(b.disk.borrow().bytes[4096], 0x5C);
}

/// The grant-less source saved itself as in sync for its RESYNC_DONE, then the session ended
/// and a new one began at once (before a tick saw the end): it copies to the target again,
/// serving alone, and is saved as the survivor again before it answers anything alone. A crash
/// then restarts it as the survivor, the source of the copy. Before, the file went on saying
/// in sync for the whole new attempt, so a restart lost track of what it wrote alone.
#[test]
fn a_grantless_source_serving_alone_again_is_saved_as_the_survivor() {
    let (_dir, mut a, mut b, mut io) = grantless_source_past_resync_done();
    assert!(a.engine.wait_persisted());
    break_link(&mut a, &mut b);
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Survivor, Mode::Resyncing)
    );
    crash_and_restart(&mut a);
    assert_eq!(
        a.engine.replica_state(),
        1,
        "restarted as anything but the survivor it was"
    );
}

/// A source without a grant whose session ended after its RESYNC_DONE (never delivered: the
/// target did not finish) asks the witness, which denies it: it fences. When the link
/// returns, the pair is (fenced, resyncing): the fenced site was the target's source and the
/// target never served, so the fenced site sends everything again and both end in sync with
/// every acknowledged write. (Before, the session was refused at both sites until an
/// operator ran `mirror_takeover`: the volume stayed down.)
#[test]
fn a_grantless_source_fenced_after_resync_done_resumes_the_copy_to_its_unfinished_target() {
    use crate::layer::mirror::failover::DENIED;
    use std::sync::atomic::Ordering::SeqCst;
    let (_dir, mut a, mut b, mut io) = grantless_source_past_resync_done();
    break_link(&mut a, &mut b);
    assert_eq!(b.engine.mode(), Mode::Resyncing);
    a.engine.tick(&mut io, Instant::now());
    assert_eq!(a.engine.mode(), Mode::Mirroring, "the source is unsure");
    let slot = a.engine.cfg.failover.clone().expect("a witness");
    for _ in 0..100 {
        if slot.want.swap(false, SeqCst) {
            slot.outcome.store(DENIED, SeqCst);
        }
        a.engine.tick(&mut io, Instant::now());
        if a.engine.mode() == Mode::Fenced {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!((a.engine.replica_state(), b.engine.replica_state()), (2, 3));
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        a.engine.mode(),
        Mode::Survivor,
        "the fenced source sends again"
    );
    let mut rng = Rng(5);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ after the resumed copy"
    );
    for (off, byte) in [(0usize, 0x31u8), (16384, 0x32), (20480, 0x32)] {
        assert_eq!(
            b.disk.borrow().bytes[off],
            byte,
            "acknowledged write at {off}"
        );
    }
}

/// A grant-less source (copy to a new replica) cannot read a region: stays serving,
/// target not in sync, retried, then in sync byte-identical; its state never said in sync
/// before the region was copied.
#[test]
fn a_grantless_source_stalls_on_an_unreadable_region_and_finishes_after_the_retry() {
    let (_dir, mut a, mut b, mut io, mut rng) = grantless_source_with_a_state_file();
    a.disk.borrow_mut().fail = Some((16384, 4096));
    let stalled = copy_until(
        &mut a,
        &mut b,
        &mut io,
        &mut rng,
        |_, _| {},
        |a, _| {
            a.engine
                .resync
                .as_ref()
                .is_some_and(|r| r.unreadable_bytes() > 0)
        },
    );
    assert!(stalled);
    for _ in 0..50 {
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        a.engine.wait_persisted();
    }
    assert_eq!(b.engine.mode(), Mode::Resyncing);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    assert!(!a.engine.resync.as_ref().unwrap().awaiting_ack());
    let mut slot = 500;
    write_at(&mut a, &mut io, &mut slot, 40960, 0x77, 4096);
    past_peer_lease(&mut a, &mut io);
    for _ in 0..20 {
        while complete_one(&mut a, &mut io, &mut rng) {}
        a.engine.tick(&mut io, Instant::now());
        a.engine.wait_persisted();
        a.engine.poll_durable();
        collect(&mut a);
    }
    assert_eq!(
        a.outstanding, 0,
        "a write at the stalled grant-less source never answered"
    );
    a.disk.borrow_mut().fail = None;
    a.engine.retry_unreadable_now();
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
}
