//! The follower's forwards across sessions: never applied twice, never acknowledged on one
//! replica only; forwarded compare-and-writes.
//!
//! Model: two engines back to back (see `tests/mod.rs`); links dropped at chosen moments
//! between a forward, its ORDER and the watermark. Invariants checked: a forward is applied
//! once, its initiator gets success only when both replicas have it, and the replicas end
//! identical.

use super::*;

#[test]
fn a_forward_is_never_applied_twice_so_a_later_compare_and_write_stands() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(3);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESENT
    let (va, vb) = ([0xAAu8; 512], [0xBBu8; 512]);
    let tag = |slot| IoTag { conn: 1, slot };
    // b writes A; a orders and applies it; b's ACK reaches a, a's ACKs never reach b.
    let w = b
        .engine
        .submit(&mut io, 0, tag(1), Update::Write(&va), 0, false);
    assert_eq!(w, Start::Pending);
    b.outstanding += 1;
    deliver_without_acks(&mut b, &mut a, &mut io);
    while complete_one(&mut a, &mut io, &mut rng) {}
    // a's compare-and-write compares against A and writes B.
    let u = Update::CompareWrite {
        cmp: &va,
        data: &vb,
    };
    assert_eq!(
        a.engine.submit(&mut io, 0, tag(2), u, 0, false),
        Start::Pending
    );
    a.outstanding += 1;
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver_without_acks(&mut a, &mut b, &mut io);
    while complete_one(&mut b, &mut io, &mut rng) {}
    for _ in 0..10 {
        std::thread::sleep(ACK_WINDOW);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        collect(&mut a);
    }
    assert_eq!(a.ok, 1, "the compare-and-write was not acknowledged");
    // The link breaks; a new session must not apply A again after B.
    break_link(&mut a, &mut b);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    exchange(&mut a, &mut b, &mut io, &mut rng, 20);
    collect(&mut b);
    assert_eq!(b.outstanding, 0, "b's write was never answered");
    // Same leader process, which had b's acknowledgement: on both replicas, never
    // applied twice.
    assert_eq!((b.ok, b.failed), (1, 0), "b's write was answered wrongly");
    for s in [&a, &b] {
        assert_eq!(
            s.disk.borrow().bytes[..512],
            vb,
            "an acknowledged compare-and-write was undone"
        );
    }
    assert!(a.engine.idle() && b.engine.idle());
}

#[test]
fn a_follower_that_is_resynced_fails_its_held_forwards_and_mirrors_afterwards() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(3);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    // a became the survivor while b, not yet told, held a compare-and-write.
    a.engine.set_mode(Mode::Survivor);
    let mut slot = 0;
    submit_caw(&mut b, &mut io, &mut slot, 0);
    a.engine.session_start(&mut io, 0).unwrap();
    b.engine.session_start(&mut io, 1).unwrap();
    assert_eq!(b.engine.mode(), Mode::Resyncing);
    collect(&mut b);
    assert_eq!(
        (b.caw_failed, b.outstanding),
        (1, 0),
        "the held forward was not failed"
    );
    for _ in 0..200 {
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
        a.engine.tick(&mut io, Instant::now());
        b.engine.tick(&mut io, Instant::now());
        if a.engine.mode() == Mode::Mirroring && b.engine.mode() == Mode::Mirroring {
            break;
        }
    }
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Mirroring, Mode::Mirroring)
    );
    // Mirroring again: b's write is ordered and acknowledged.
    submit(&mut b, &mut io, &mut rng, &mut slot);
    exchange(&mut a, &mut b, &mut io, &mut rng, 20);
    collect(&mut b);
    assert_eq!((b.ok, b.outstanding), (1, 0));
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ"
    );
}

/// A leader restarts (its apply of an ordered forward lost); the follower completes
/// the forward OK at RESENT although the leader never had it.
#[test]
fn a_forward_ordered_before_the_leader_restarted_is_never_acknowledged_on_one_replica() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(9);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    // (What WELCOME tells the follower.)
    b.engine.set_peer_incarnation(a.engine.incarnation());
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESENT
    let mut slot = 0;
    write_at(&mut b, &mut io, &mut slot, 0, 0xCC, 512);
    deliver(&mut b, &mut a, &mut io, usize::MAX); // FWD_WRITE; a sends ORDER, apply pending
    deliver_without_acks(&mut a, &mut b, &mut io); // ORDER
    while complete_one(&mut b, &mut io, &mut rng) {}
    // a crashes before its apply reached its disk: a new process, replica without it.
    b.engine.link_down("test");
    b.wire.clear();
    let mut a = site(Role::Leader, Duration::from_secs(60));
    b.engine.set_peer_incarnation(a.engine.incarnation());
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    exchange(&mut a, &mut b, &mut io, &mut rng, 10);
    collect(&mut b);
    let on_a = a.disk.borrow().bytes[0] == 0xCC;
    assert!(
        b.ok == 0 || on_a,
        "follower acknowledged OK a write only its replica holds (b.ok={}, on_a={on_a})",
        b.ok
    );
}

/// Forward ids restart with a follower process; the leader still re-sends the old
/// process's forward with the same id: the new process takes it as the ORDER of its own
/// compare-and-write (which the leader found a MISCOMPARE) and completes it OK.
#[test]
fn a_restarted_follower_never_takes_an_old_re_send_for_its_own_forward() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(11);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    a.engine.set_peer_incarnation(b.engine.incarnation());
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESENT
    let mut slot = 0;
    // Old follower process: forward uid 1 (write 0x11 at 0), sequenced at a, never acked.
    write_at(&mut b, &mut io, &mut slot, 0, 0x11, 512);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    while complete_one(&mut a, &mut io, &mut rng) {}
    a.engine.link_down("test");
    a.wire.clear();
    // The follower restarts: a new process (ids from 1 again).
    let mut b = site(Role::Follower, Duration::from_secs(60));
    // (What its HELLO tells the leader.)
    a.engine.set_peer_incarnation(b.engine.incarnation());
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // re-send of uid 1 (ordinary here), RESENT
    while complete_one(&mut b, &mut io, &mut rng) {}
    // New process: a compare-and-write with uid 1 at the same range; it miscompares at a.
    let u = Update::CompareWrite {
        cmp: &[0xEE; 512],
        data: &[0xFF; 512],
    };
    let tag = IoTag { conn: 1, slot: 99 };
    assert_eq!(
        b.engine.submit(&mut io, 0, tag, u, 0, false),
        Start::Pending
    );
    b.outstanding += 1;
    b.caws.insert(99);
    deliver_without_acks(&mut b, &mut a, &mut io); // FWD_CAW; b's ACK of seq 1 held back
    while complete_one(&mut a, &mut io, &mut rng) {} // a compares: MISCOMPARE (lost)
    break_link(&mut a, &mut b);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    exchange(&mut a, &mut b, &mut io, &mut rng, 10);
    collect(&mut b);
    assert_eq!(
        b.caw_ok, 0,
        "a compare-and-write the leader miscompared was acknowledged OK"
    );
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "replicas differ: a={:#x} b={:#x}",
        a.disk.borrow().bytes[0],
        b.disk.borrow().bytes[0]
    );
}

/// A stale compare-and-write (in flight at the fence) fails while the leader, now a resync
/// target with RESYNC_DONE, still applies its copies: nothing is sequenced while it is
/// Resyncing (the source's new writes wait for RESYNC_DONE_ACK), and the caw's Err path
/// does not end the resync early.
#[test]
fn a_stale_compare_and_write_does_not_release_kept_forwards_before_mirroring() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(21);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    // a's own compare-and-write: its read stays pending.
    let u = Update::CompareWrite {
        cmp: &[0xEE; 512],
        data: &[0xFF; 512],
    };
    let tag = IoTag { conn: 1, slot: 77 };
    assert_eq!(
        a.engine.submit(&mut io, 0, tag, u, 0, false),
        Start::Pending
    );
    a.outstanding += 1;
    a.caws.insert(77);
    let caw_read = a.disk.borrow_mut().pending.pop().expect("caw read pending");
    break_link(&mut a, &mut b);
    grant_b_fence_a(&mut a, &mut b, &sa, &sb, &mut io);
    let mut slot = 0;
    write_at(&mut b, &mut io, &mut slot, 8192, 0xB2, 4096);
    while complete_one(&mut b, &mut io, &mut rng) {}
    redial(&mut a, &mut b, &mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    for _ in 0..100 {
        b.engine.tick(&mut io, Instant::now());
        while complete_one(&mut b, &mut io, &mut rng) {}
        if b.engine.resync.as_ref().is_some_and(|r| r.awaiting_ack()) {
            break;
        }
    }
    assert!(b.engine.resync.as_ref().is_some_and(|r| r.awaiting_ack()));
    deliver(&mut b, &mut a, &mut io, usize::MAX); // copies + RESYNC_DONE, applies pending
    assert_eq!(a.engine.mode(), Mode::Resyncing);
    let mut slot = 100;
    write_at(&mut b, &mut io, &mut slot, 4096 * 3, 0x77, 512);
    deliver(&mut b, &mut a, &mut io, usize::MAX); // nothing: b's write waits for the ack
    assert_eq!(a.engine.leader.waiting(), 0);
    // The stale read completes: a resync target writes nothing, the compare fails (EIO).
    a.engine
        .apply_finished(&mut io, caw_read.0 as usize, Ok(()), &[0xEE; 512]);
    assert_eq!(a.engine.mode(), Mode::Resyncing);
    assert_eq!(a.engine.leader.waiting(), 0);
    // The copies are applied, a confirms, b's write goes through; the replicas converge.
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
    assert_eq!(a.disk.borrow().bytes[4096 * 3], 0x77);
}

#[test]
fn a_forwarded_miscompare_is_answered_only_once_the_follower_has_what_it_compared() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(5);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // RESENT
    // a writes 0x11 at block 0; b receives it but has not applied it yet.
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 0, 0x11, 512);
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    assert_eq!(
        b.disk.borrow().pending.len(),
        1,
        "b applied the write already"
    );
    // b's compare-and-write expects the old zeroes: a miscompares it against 0x11.
    let u = Update::CompareWrite {
        cmp: &[0; 512],
        data: &[0x22; 512],
    };
    let tag = IoTag { conn: 1, slot: 50 };
    assert_eq!(
        b.engine.submit(&mut io, 0, tag, u, 0, false),
        Start::Pending
    );
    b.outstanding += 1;
    b.caws.insert(50);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX); // MISCOMPARE
    collect(&mut b);
    assert_eq!(
        b.caw_miscompare, 0,
        "answered before b had the data it failed on"
    );
    // Once b has applied the write, the miscompare is answered.
    while complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut b);
    assert_eq!((b.caw_miscompare, b.outstanding), (1, 0));
    assert_eq!(b.disk.borrow().bytes[0], 0x11);
}

/// A SWITCH that comes before the leader's RESENT (a buggy or forged one: a correct leader
/// drains, so sends RESENT, first) is refused: taking it would settle the forwards of an
/// earlier session without the RESENT rules, acknowledging one whose ORDER came from an
/// earlier leader process (which may have lost its apply) as if both replicas had it.
#[test]
fn a_switch_before_resent_is_refused_and_acknowledges_no_forward() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(3);
    let mut b = site(Role::Follower, Duration::from_secs(60));
    b.engine.set_peer_incarnation(7);
    b.engine.link_up(&mut io);
    let resent = Header::new(Type::Resent);
    b.engine.on_msg(&mut io, &resent, &[]).unwrap();
    // b forwards a write; leader process 7 orders it; b applies it; the leader's watermark
    // never comes.
    let tag = IoTag { conn: 1, slot: 1 };
    let w = b
        .engine
        .submit(&mut io, 0, tag, Update::Write(&[0xAB; 512]), 0, false);
    assert_eq!(w, Start::Pending);
    b.outstanding += 1;
    b.engine.take_outbox(&mut b.wire);
    b.wire.clear();
    let k = b.engine.follower.last().unwrap();
    let order = Header {
        seq: 1,
        id: b.engine.ops[k].uid,
        ..Header::new(Type::Order)
    };
    b.engine.on_msg(&mut io, &order, &[]).unwrap();
    while complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut b);
    assert_eq!(b.ok, 0);
    // The link breaks; the leader restarted (process 8) and, before its RESENT, says SWITCH.
    b.engine.link_down("test");
    b.engine.set_peer_incarnation(8);
    b.engine.link_up(&mut io);
    let switch = Header {
        seq: 0,
        offset: b.engine.term() + 1,
        ..Header::new(Type::Switch)
    };
    assert_eq!(
        b.engine.on_msg(&mut io, &switch, &[]),
        Err("SWITCH before RESENT")
    );
    collect(&mut b);
    assert_eq!(
        b.ok, 0,
        "a forward ordered by a lost leader process was acknowledged"
    );
}
