//! The read lease (docs/mirror-protocol.md, "Read lease"): a site that lost its peer, or
//! heard nothing from it for a lease, serves no reads; a survivor acknowledges nothing alone
//! before the lost peer's lease has certainly expired.
//!
//! Model: two engines back to back (see `tests/mod.rs`); a freeze is simulated by time
//! passing with no message delivered. Invariant checked: never a read at one site while the
//! other acknowledges alone.

use super::*;

/// The tests' lease (their peer-dead timeout is 400 ms).
fn lease() -> Duration {
    lease_for(Duration::from_millis(400))
}

/// Both sites up, a few PING/PONG round trips done.
fn mirrored(seed: u64) -> (Site, Site, IoCx, Rng) {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(seed);
    let (mut a, _) = with_witness(Role::Leader);
    let (mut b, _) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    exchange(&mut a, &mut b, &mut io, &mut rng, 3);
    let now = Instant::now();
    for s in [&a, &b] {
        assert!(s.engine.may_read(now), "no read lease while mirroring");
        assert!(s.engine.stats().may_read(), "no read lease published");
    }
    (a, b, io, rng)
}

#[test]
fn reads_are_refused_at_once_when_the_link_drops() {
    let (mut a, mut b, _io, _) = mirrored(31);
    break_link(&mut a, &mut b);
    let now = Instant::now();
    for s in [&a, &b] {
        assert!(
            !s.engine.may_read(now),
            "read served after the link dropped"
        );
        assert!(
            !s.engine.stats().may_read(),
            "read served on another reactor after the link dropped"
        );
    }
}

#[test]
fn a_silent_peer_ends_the_lease_before_the_heartbeat_timeout() {
    let (mut a, mut b, mut io, _) = mirrored(32);
    // Nothing heard for a lease (a frozen peer, or this site frozen): no reads, although
    // the link is still up (the heartbeat timeout is twice as long).
    let later = Instant::now() + lease() + Duration::from_millis(1);
    for s in [&a, &b] {
        assert!(s.engine.is_up());
        assert!(!s.engine.may_read(later), "read served on an old lease");
    }
    // Frozen after sending a PING: its PONG comes back after the freeze; the lease runs
    // from the PING's send time, so it does not serve.
    a.engine.ping();
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    std::thread::sleep(lease() + Duration::from_millis(20));
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    assert!(a.engine.is_up());
    assert!(
        !a.engine.may_read(Instant::now()),
        "read served on the PONG of a PING sent before the freeze"
    );
    assert!(!a.engine.stats().may_read());
    // A fresh round trip renews it.
    a.engine.ping();
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    assert!(a.engine.may_read(Instant::now()));
    assert!(a.engine.stats().may_read());
}

#[test]
fn the_survivor_acknowledges_alone_only_once_the_peers_lease_has_expired() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(33);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    exchange(&mut a, &mut b, &mut io, &mut rng, 3);
    // a loses the link (EOF: no heartbeat timeout) and b is granted at once.
    break_link(&mut a, &mut b);
    {
        use crate::layer::mirror::failover::{DENIED, GRANTED};
        use std::sync::atomic::Ordering::SeqCst;
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        sb.epoch.store(1, SeqCst);
        sb.outcome.store(GRANTED, SeqCst);
        sa.outcome.store(DENIED, SeqCst);
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
    }
    assert_eq!(b.engine.mode(), Mode::Survivor);
    let mut slot = 0;
    write_at(&mut b, &mut io, &mut slot, 0, 0xB1, 4096);
    while complete_one(&mut b, &mut io, &mut rng) {}
    b.engine.tick(&mut io, Instant::now());
    collect(&mut b);
    assert_eq!(
        b.ok, 0,
        "acknowledged alone while the peer's read lease may run"
    );
    assert_eq!(b.engine.alone_held(), 1);
    // Still held just before the lease (and its margin) ends...
    b.engine.tick(&mut io, Instant::now() + lease() / 2);
    collect(&mut b);
    assert_eq!(b.ok, 0);
    // ...released after it; later writes are not held.
    b.engine
        .tick(&mut io, Instant::now() + lease() + lease_margin(lease()));
    collect(&mut b);
    assert_eq!((b.ok, b.outstanding), (1, 0));
    write_at(&mut b, &mut io, &mut slot, 4096, 0xB2, 4096);
    while complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut b);
    assert_eq!((b.ok, b.outstanding), (2, 0));
}

/// The leader queued WELCOME for a returning follower (which starts its session, and serves
/// reads under its lease, as soon as it reads it) and then was granted the volume before the
/// follower's AUTH was checked (its grant request had been asked when the old session went,
/// long before). The survivor's writes wait out the lease the WELCOME allowed. Before, it
/// waited only on the old session's last PING, long past, and acknowledged alone while the
/// follower could still read the old data.
#[test]
fn a_grant_after_welcome_waits_out_the_lease_the_welcome_allowed() {
    use crate::layer::mirror::failover::GRANTED;
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(34);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, _) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    exchange(&mut a, &mut b, &mut io, &mut rng, 3);
    break_link(&mut a, &mut b);
    let t0 = Instant::now();
    a.engine.tick(&mut io, t0);
    assert!(sa.want.load(SeqCst), "no grant asked for");
    // The old session's lease is long over; the follower dials again and gets WELCOME.
    let later = t0 + 3 * lease();
    a.engine.welcome_sent(later);
    sa.epoch.store(1, SeqCst);
    sa.outcome.store(GRANTED, SeqCst);
    a.engine.tick(&mut io, later);
    assert_eq!(a.engine.mode(), Mode::Survivor);
    let mut slot = 0;
    write_at(&mut a, &mut io, &mut slot, 0, 0xA1, 4096);
    while complete_one(&mut a, &mut io, &mut rng) {}
    a.engine.wait_persisted();
    a.engine.tick(&mut io, later + lease() / 2);
    collect(&mut a);
    assert_eq!(
        a.ok, 0,
        "acknowledged alone while the lease the WELCOME allowed may run"
    );
    a.engine
        .tick(&mut io, later + lease() + lease_margin(lease()));
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1, 0));
}

#[test]
fn without_a_witness_reads_are_served_with_the_link_down() {
    // No site can be granted the volume: nothing is ever acknowledged alone.
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    break_link(&mut a, &mut b);
    let later = Instant::now() + lease() * 4;
    for s in [&a, &b] {
        assert!(s.engine.may_read(later) && s.engine.stats().may_read());
    }
}
