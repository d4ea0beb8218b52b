//! The leader's record of what the follower acknowledged and may not have made durable
//! (peer_cache.rs): an update both sites acknowledged and the follower has not flushed since
//! is copied back to the follower when the leader serves alone (dirty) or gives its copy up
//! (suspect, listed for the survivor); a flush the follower answered after the
//! acknowledgement forgets it.

use super::*;

/// a (leader) and b in sync after a's 8 KiB write at 16 KiB and b's 4 KiB write at 40 KiB
/// (forwarded), both acknowledged; with `flush`, then a flush from a, answered by both.
fn in_sync_after_writes(
    flush: bool,
) -> (
    Site,
    Site,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
    Arc<crate::layer::mirror::failover::FailoverSlot>,
    IoCx,
) {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(9);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 16384, 0x31, 8192);
    write_at(&mut b, &mut io, &mut slot, 40960, 0x32, 4096);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!((a.ok, b.ok), (1, 1));
    if flush {
        flush_at(&mut a, &mut io, &mut slot);
        run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
        assert_eq!(a.ok, 2);
    }
    (a, b, sa, sb, io)
}

#[test]
fn a_surviving_leader_copies_back_what_the_follower_acknowledged_and_never_flushed() {
    for (flush, dirty) in [(false, 3 * 4096), (true, 0)] {
        let (mut a, mut b, sa, sb, mut io) = in_sync_after_writes(flush);
        break_link(&mut a, &mut b);
        grant_b_fence_a(&mut b, &mut a, &sb, &sa, &mut io);
        assert_eq!(a.engine.dirty_bytes(), dirty, "flushed: {flush}");
        assert_eq!(b.engine.suspect_bytes(), 0, "flushed: {flush}");
    }
}

#[test]
fn a_fenced_leader_lists_what_the_follower_acknowledged_and_never_flushed() {
    for (flush, suspect) in [(false, 3 * 4096), (true, 0)] {
        let (mut a, mut b, sa, sb, mut io) = in_sync_after_writes(flush);
        break_link(&mut a, &mut b);
        grant_b_fence_a(&mut a, &mut b, &sa, &sb, &mut io);
        assert_eq!(a.engine.suspect_bytes(), suspect, "flushed: {flush}");
        assert_eq!(b.engine.dirty_bytes(), 0, "flushed: {flush}");
    }
}

#[test]
fn a_flush_sent_before_the_acknowledgement_does_not_cover_it() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(10);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    // The write and the flush leave together: the FLUSH reaches b before b's ACK of the
    // write reaches a, so the flush may have run before the write was applied there.
    write_at(&mut a, &mut io, &mut slot, 16384, 0x33, 4096);
    flush_at(&mut a, &mut io, &mut slot);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(a.ok, 2);
    break_link(&mut a, &mut b);
    grant_b_fence_a(&mut b, &mut a, &sb, &sa, &mut io);
    assert_eq!(a.engine.dirty_bytes(), 4096);
}

#[test]
fn without_a_host_flush_the_leader_flushes_the_follower_once_a_region_waited_a_second() {
    let (mut a, mut b, sa, sb, mut io) = in_sync_after_writes(false);
    let mut rng = Rng(11);
    let before = b.disk.borrow().flushes;
    a.engine.peer_flush_tick(Instant::now());
    exchange(&mut a, &mut b, &mut io, &mut rng, 3);
    assert_eq!(b.disk.borrow().flushes, before, "not yet a second");
    a.engine
        .peer_flush_tick(Instant::now() + super::super::peer_cache::PEER_FLUSH_EVERY);
    exchange(&mut a, &mut b, &mut io, &mut rng, 3);
    assert_eq!(b.disk.borrow().flushes, before + 1, "the follower flushed");
    assert_eq!(
        a.engine.ops.len(),
        0,
        "the flush of its own is gone once answered"
    );
    break_link(&mut a, &mut b);
    grant_b_fence_a(&mut b, &mut a, &sb, &sa, &mut io);
    assert_eq!(a.engine.dirty_bytes(), 0, "nothing left to copy back");
}
