//! Sends in flight: messages leave as scatter lists that reference their updates' buffers
//! (txq.rs), so those buffers must stay alive and unchanged until the send completed, also
//! when the link is cut and the updates are confirmed, freed or re-sent meanwhile. And the
//! copies: one per update at the site that takes it, none at the follower for an update it
//! applies at once.
//!
//! Model: a test link per direction takes the engine's queue as a batch, copies its bytes to
//! the wire at once (the kernel's copy), and completes the batch only turns later (or after
//! the link was cut and a new session started): then the batch's bytes must be the same as
//! when it was sent, and each payload must still match its header's checksum.

use super::super::super::txq::TxQueue;
use super::*;
use std::collections::VecDeque;

/// Batches sent by one site whose sends have not completed: the queue (holding its payload
/// references), the bytes it sent, and the turns left until its completion.
#[derive(Default)]
struct Link {
    batches: VecDeque<(TxQueue, Vec<u8>, u64)>,
    /// Payloads whose update was freed while their send was in flight.
    orphans: usize,
    completed: usize,
}

/// Take `from`'s messages as a batch in flight; its bytes go on the wire now.
fn send(from: &mut Site, link: &mut Link, turns: u64) {
    let mut q = TxQueue::default();
    from.engine.take_tx(&mut q);
    if q.is_empty() {
        return;
    }
    let mut bytes = Vec::new();
    q.gather(&mut bytes);
    from.wire.extend_from_slice(&bytes);
    link.batches.push_back((q, bytes, turns));
}

/// Complete the batches whose time came (all with `all`): each must be what it was when sent.
fn complete_sends(from: &mut Site, link: &mut Link, all: bool) {
    for b in link.batches.iter_mut() {
        b.2 = b.2.saturating_sub(1);
    }
    while let Some((q, bytes, left)) = link.batches.front() {
        if *left > 0 && !all {
            break;
        }
        let mut now = Vec::new();
        q.gather(&mut now);
        assert!(
            now == *bytes,
            "a buffer was reused or changed while its send was in flight"
        );
        assert!(
            q.intact(),
            "a payload no longer matches its header's checksum"
        );
        let (mut q, _, _) = link.batches.pop_front().expect("checked");
        link.orphans += q.orphans();
        link.completed += 1;
        q.clear(|d| from.engine.recycle(d));
    }
}

/// Turns until a send completes: mostly soon, one in four long after its update was
/// answered (as a send stuck behind a full socket buffer, or on a link being torn down).
fn late(rng: &mut Rng) -> u64 {
    if rng.below(4) == 0 {
        100 + rng.below(400)
    } else {
        1 + rng.below(30)
    }
}

/// Hand up to `max` whole messages on `from`'s wire to `to`.
fn receive(from: &mut Site, to: &mut Site, io: &mut IoCx, max: usize) -> usize {
    let (mut n, mut at) = (0, 0);
    while n < max {
        match wire::decode(&from.wire[at..]) {
            wire::Decoded::Msg(h, r) => {
                let payload = from.wire[at + r.start..at + r.end].to_vec();
                at += r.end;
                to.engine
                    .on_msg(io, &h, &payload)
                    .expect("valid message refused");
                n += 1;
            }
            wire::Decoded::Partial(_) => break,
            wire::Decoded::Bad(why) => panic!("engine produced a bad message: {why}"),
        }
    }
    from.wire.drain(..at);
    n
}

/// Random overlapping traffic from both sites; sends complete late, and the link is cut with
/// sends in flight (which complete only in a later session). Every batch completes as it was
/// sent, both replicas end identical, and updates were freed under sends in flight.
#[test]
fn buffers_in_flight_are_neither_reused_nor_changed_across_link_cuts() {
    let mut orphans = 0;
    for seed in 1..9u64 {
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut a = site(Role::Leader, Duration::from_secs(3600));
        let mut b = site(Role::Follower, Duration::from_secs(3600));
        let (mut la, mut lb) = (Link::default(), Link::default());
        a.engine.link_up(&mut io);
        b.engine.link_up(&mut io);
        let mut slot = 0;
        for step in 0..3000 {
            match rng.below(10) {
                0 => submit(&mut a, &mut io, &mut rng, &mut slot),
                1 => submit(&mut b, &mut io, &mut rng, &mut slot),
                2 => {
                    complete_one(&mut a, &mut io, &mut rng);
                }
                3 => {
                    complete_one(&mut b, &mut io, &mut rng);
                }
                4 => {
                    let turns = late(&mut rng);
                    send(&mut a, &mut la, turns)
                }
                5 => {
                    let turns = late(&mut rng);
                    send(&mut b, &mut lb, turns)
                }
                6 => {
                    receive(&mut a, &mut b, &mut io, 1 + rng.below(4) as usize);
                }
                7 => {
                    receive(&mut b, &mut a, &mut io, 1 + rng.below(4) as usize);
                }
                _ => {}
            }
            complete_sends(&mut a, &mut la, false);
            complete_sends(&mut b, &mut lb, false);
            if step % 600 == 300 {
                // Cut with sends in flight: the wire's bytes are lost, the batches complete
                // later (as a closing link's sends do), while a new session re-sends.
                break_link(&mut a, &mut b);
                a.engine.link_up(&mut io);
                b.engine.link_up(&mut io);
            }
            collect(&mut a);
            collect(&mut b);
        }
        for _ in 0..100_000 {
            let mut any = complete_one(&mut a, &mut io, &mut rng);
            any |= complete_one(&mut b, &mut io, &mut rng);
            send(&mut a, &mut la, 0);
            send(&mut b, &mut lb, 0);
            any |= !la.batches.is_empty() || !lb.batches.is_empty();
            complete_sends(&mut a, &mut la, true);
            complete_sends(&mut b, &mut lb, true);
            any |= receive(&mut a, &mut b, &mut io, usize::MAX) > 0;
            any |= receive(&mut b, &mut a, &mut io, usize::MAX) > 0;
            collect(&mut a);
            collect(&mut b);
            if !any {
                if a.engine.ack_deadline().is_none() && b.engine.ack_deadline().is_none() {
                    break;
                }
                std::thread::sleep(ACK_WINDOW);
            }
        }
        assert_eq!(
            (a.outstanding, b.outstanding),
            (0, 0),
            "seed {seed}: unanswered"
        );
        assert_eq!(a.failed + b.failed, 0, "seed {seed}: requests failed");
        assert!(a.ok > 100 && b.ok > 100, "seed {seed}: too little traffic");
        assert!(a.engine.idle() && b.engine.idle(), "seed {seed}: ops left");
        assert!(
            a.disk.borrow().bytes == b.disk.borrow().bytes,
            "seed {seed}: replicas differ"
        );
        assert!(
            la.completed > 100 && lb.completed > 100,
            "seed {seed}: few sends"
        );
        orphans += la.orphans + lb.orphans;
    }
    assert!(
        orphans > 0,
        "no update was freed while its send was in flight: the case is not exercised"
    );
}

/// The copy count of a 4 KiB mirrored write: one at the leader (into the update's buffer),
/// none in the link's send (the WRITE's payload is the update's buffer) and none at the
/// follower (applied from the received message).
#[test]
fn a_mirrored_write_is_copied_once_at_the_leader_and_not_at_the_follower() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut a = site(Role::Leader, Duration::from_secs(3600));
    let mut b = site(Role::Follower, Duration::from_secs(3600));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let (a0, b0) = (a.engine.data_copies(), b.engine.data_copies());
    for i in 0..8u8 {
        let data = vec![i + 1; 4096];
        let tag = IoTag {
            conn: 1,
            slot: u32::from(i),
        };
        let off = u64::from(i) * 4096;
        assert_eq!(
            a.engine
                .submit(&mut io, 0, tag, Update::Write(&data), off, false),
            Start::Pending
        );
        a.outstanding += 1;
    }
    let mut q = TxQueue::default();
    a.engine.take_tx(&mut q);
    assert_eq!(
        q.refs(),
        8,
        "each WRITE's payload is sent from its update's buffer"
    );
    let mut bytes = Vec::new();
    q.gather(&mut bytes);
    a.wire.extend_from_slice(&bytes);
    assert!(receive(&mut a, &mut b, &mut io, usize::MAX) >= 8);
    assert_eq!(
        a.engine.data_copies() - a0,
        8,
        "one copy per write at the leader"
    );
    assert_eq!(b.engine.data_copies() - b0, 0, "no copy at the follower");
    q.clear(|d| a.engine.recycle(d));
    let mut rng = Rng(7);
    for _ in 0..1000 {
        let mut any = complete_one(&mut a, &mut io, &mut rng);
        any |= complete_one(&mut b, &mut io, &mut rng);
        let mut lb = Link::default();
        send(&mut b, &mut lb, 0);
        complete_sends(&mut b, &mut lb, true);
        any |= receive(&mut b, &mut a, &mut io, usize::MAX) > 0;
        collect(&mut a);
        if !any && a.outstanding == 0 {
            break;
        }
        std::thread::sleep(ACK_WINDOW);
    }
    assert_eq!((a.ok, a.outstanding), (8, 0));
    assert!(a.disk.borrow().bytes == b.disk.borrow().bytes);
}
