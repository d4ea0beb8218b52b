//! Two engines joined back to back, with a replica that completes writes late and in a
//! random order, random traffic from both sites, and link drops: both replicas must end
//! identical and every request must be answered correctly.
//!
//! Model: each `Site` is an engine over a `SlowChannel` (completions held and released in a
//! random order); the sites' outboxes are delivered to each other by the test loop.
//! Invariants checked: replicas byte-identical once quiet, every request answered, nothing
//! acknowledged on one site only.

use super::*;
use crate::bdev::ReadStart;
use std::cell::RefCell;
use std::rc::Rc;

const SIZE: u64 = 64 * 1024;
const BLOCK: u32 = 512;

#[derive(Default)]
struct Disk {
    bytes: Vec<u8>,
    /// Started, not yet done: (slot, offset, data to write, or None: a read of `len`).
    pending: Vec<(u32, u64, Option<Vec<u8>>, usize)>,
    /// Injected error: every write or read overlapping this range (offset, length) fails
    /// with EIO and changes nothing (tests/diskerr.rs).
    fail: Option<(u64, u64)>,
    /// Flushes done (they finish at once: every write done before is in `bytes`).
    flushes: usize,
    /// Injected error: every flush fails with EIO (tests/diskerr.rs).
    fail_flush: bool,
    /// A failing flush loses this range from the device's volatile cache (zeroed).
    lose_on_failed_flush: Option<(u64, u64)>,
    /// Writes complete inside the call (`Start::Done`), failing over `fail`.
    sync_writes: bool,
    /// Flushes wait among the pending operations (an entry of no bytes at offset 0) instead
    /// of finishing at once (a slow device, tests/diskerr.rs).
    slow_flush: bool,
}

struct SlowChannel(Rc<RefCell<Disk>>);

impl Channel for SlowChannel {
    fn read(&mut self, _: &mut IoCx, tag: IoTag, offset: u64, len: u32) -> ReadStart<'_> {
        self.0
            .borrow_mut()
            .pending
            .push((tag.slot, offset, None, len as usize));
        ReadStart::Pending
    }
    fn write(&mut self, _: &mut IoCx, tag: IoTag, offset: u64, data: &[u8], _: bool) -> Start {
        if self.0.borrow().sync_writes {
            let mut d = self.0.borrow_mut();
            if let Some((fo, fl)) = d.fail
                && offset < fo + fl
                && fo < offset + data.len() as u64
            {
                return Start::Done(Err(Errno::IO));
            }
            d.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            return Start::Done(Ok(()));
        }
        self.0
            .borrow_mut()
            .pending
            .push((tag.slot, offset, Some(data.to_vec()), data.len()));
        Start::Pending
    }
    fn flush(&mut self, _: &mut IoCx, tag: IoTag) -> Start {
        if self.0.borrow().slow_flush {
            self.0.borrow_mut().pending.push((tag.slot, 0, None, 0));
            return Start::Pending;
        }
        if self.0.borrow().fail_flush {
            let lose = self.0.borrow().lose_on_failed_flush;
            if let Some((o, l)) = lose {
                self.0.borrow_mut().bytes[o as usize..(o + l) as usize].fill(0);
            }
            return Start::Done(Err(Errno::IO));
        }
        self.0.borrow_mut().flushes += 1;
        Start::Done(Ok(()))
    }
    fn write_zeroes(&mut self, _: &mut IoCx, tag: IoTag, o: u64, l: u64, _: bool) -> Start {
        self.0
            .borrow_mut()
            .pending
            .push((tag.slot, o, Some(vec![0; l as usize]), l as usize));
        Start::Pending
    }
    fn unmap(&mut self, io: &mut IoCx, tag: IoTag, o: u64, l: u64, f: bool) -> Start {
        self.write_zeroes(io, tag, o, l, f)
    }
}

struct Site {
    engine: Engine,
    disk: Rc<RefCell<Disk>>,
    /// Bytes sent towards the other site and not yet delivered.
    wire: Vec<u8>,
    /// Requests in flight.
    outstanding: usize,
    ok: usize,
    failed: usize,
    /// The errors of those failed (plain updates and flushes), in the order answered.
    errors: Vec<Errno>,
    /// Slots of this site's compare-and-writes in flight.
    caws: std::collections::HashSet<u32>,
    caw_ok: usize,
    caw_miscompare: usize,
    /// Compare-and-writes failed with an I/O error (outcome unknown: link drops).
    caw_failed: usize,
    /// Their errors.
    caw_errors: Vec<Errno>,
    /// Slots of compare-and-writes on the hot blocks (racing plain writes).
    hot_caws: std::collections::HashSet<u32>,
    /// Their outcomes: written, miscompared, failed.
    hot: [usize; 3],
}

fn site(role: Role, timeout: Duration) -> Site {
    let disk = Rc::new(RefCell::new(Disk {
        bytes: vec![0; SIZE as usize],
        pending: Vec::new(),
        fail: None,
        flushes: 0,
        fail_flush: false,
        lose_on_failed_flush: None,
        sync_writes: false,
        slow_flush: false,
    }));
    let cfg = EngineConfig {
        name: "t".into(),
        role,
        size: SIZE,
        block: BLOCK,
        peer_timeout: timeout,
        max_backlog: 1 << 30,
        peer_dead: Duration::from_millis(400),
        heartbeat: Duration::from_millis(100),
        failover: None,
        dirty_granularity: 4096,
        resync_rate: 1 << 30,
        state_file: None,
        replica_data: Default::default(),
        replica_path: None,
        meta: None,
        actlog: Default::default(),
        boot_id: 1,
    };
    Site {
        engine: Engine::new(
            cfg,
            Box::new(SlowChannel(Rc::clone(&disk))),
            0,
            Arc::new(MirrorStats::default()),
        ),
        disk,
        wire: Vec::new(),
        outstanding: 0,
        ok: 0,
        failed: 0,
        errors: Vec::new(),
        caws: Default::default(),
        caw_ok: 0,
        caw_miscompare: 0,
        caw_failed: 0,
        caw_errors: Vec::new(),
        hot_caws: Default::default(),
        hot: [0; 3],
    }
}

/// The layers' seeded generator, for every randomised test of the engine and its parts.
pub(super) use crate::layer::testing::Rng;

/// Finish one pending local write or read of `s`, chosen at random (out of order).
fn complete_one(s: &mut Site, io: &mut IoCx, rng: &mut Rng) -> bool {
    let n = s.disk.borrow().pending.len();
    if n == 0 {
        return false;
    }
    let (slot, off, data, len) = s
        .disk
        .borrow_mut()
        .pending
        .swap_remove(rng.below(n as u64) as usize);
    let range = off as usize..off as usize + len;
    // (Copied out: the engine may start I/O on this disk from the completion.)
    let fail = s.disk.borrow().fail;
    if let Some((fo, fl)) = fail
        && off < fo + fl
        && fo < off + len as u64
    {
        s.engine
            .apply_finished(io, slot as usize, Err(Errno::IO), &[]);
        return true;
    }
    match data {
        Some(data) => {
            s.disk.borrow_mut().bytes[range].copy_from_slice(&data);
            s.engine.apply_finished(io, slot as usize, Ok(()), &[]);
        }
        None => {
            let read = s.disk.borrow().bytes[range].to_vec();
            s.engine.apply_finished(io, slot as usize, Ok(()), &read);
        }
    }
    true
}

/// Deliver whole messages from `from.wire` to `to`, at most `max`.
fn deliver(from: &mut Site, to: &mut Site, io: &mut IoCx, max: usize) -> usize {
    from.engine.take_outbox(&mut from.wire);
    receive(from, to, io, max)
}

/// Hand up to `max` whole messages already on `from`'s wire to `to`.
fn receive(from: &mut Site, to: &mut Site, io: &mut IoCx, max: usize) -> usize {
    let mut n = 0;
    let mut at = 0;
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

fn collect(s: &mut Site) {
    for (_, tag, r) in s.engine.done.drain(..) {
        s.outstanding -= 1;
        if s.hot_caws.remove(&tag.slot) {
            let i = match r {
                Ok(()) => 0,
                Err(Errno::MISCOMPARE) => 1,
                Err(_) => 2,
            };
            s.hot[i] += 1;
            continue;
        }
        if s.caws.remove(&tag.slot) {
            match r {
                Ok(()) => s.caw_ok += 1,
                Err(Errno::MISCOMPARE) => s.caw_miscompare += 1,
                Err(e) => {
                    s.caw_failed += 1;
                    s.caw_errors.push(e);
                }
            }
            continue;
        }
        match r {
            Ok(()) => s.ok += 1,
            Err(e) => {
                s.failed += 1;
                s.errors.push(e);
            }
        }
    }
}

/// Where the compare-and-write counter lives (random writes stay below it).
const COUNTER: u64 = 32 * BLOCK as u64;

fn counter(s: &Site) -> u64 {
    let b = &s.disk.borrow().bytes;
    u64::from_le_bytes(
        b[COUNTER as usize..COUNTER as usize + 8]
            .try_into()
            .unwrap(),
    )
}

/// Increment the counter block by compare-and-write from site `s`, guessing its value `v`
/// (a stale guess miscompares).
fn submit_caw(s: &mut Site, io: &mut IoCx, slot: &mut u32, v: u64) {
    let (mut cmp, mut new) = (vec![0u8; BLOCK as usize], vec![0u8; BLOCK as usize]);
    cmp[..8].copy_from_slice(&v.to_le_bytes());
    new[..8].copy_from_slice(&(v + 1).to_le_bytes());
    *slot += 1;
    let tag = IoTag {
        conn: 1,
        slot: *slot,
    };
    let u = Update::CompareWrite {
        cmp: &cmp,
        data: &new,
    };
    assert_eq!(
        s.engine.submit(io, 0, tag, u, COUNTER, false),
        Start::Pending
    );
    s.caws.insert(*slot);
    s.outstanding += 1;
}

/// A compare-and-write on the hot blocks, expecting what the leader's replica holds now.
fn submit_hot_caw(s: &mut Site, io: &mut IoCx, rng: &mut Rng, slot: &mut u32, now: &[u8]) {
    let off = rng.below(8) * BLOCK as u64;
    let cmp = now[off as usize..(off + BLOCK as u64) as usize].to_vec();
    let new = vec![(rng.next() & 0xff) as u8; BLOCK as usize];
    *slot += 1;
    let tag = IoTag {
        conn: 1,
        slot: *slot,
    };
    let u = Update::CompareWrite {
        cmp: &cmp,
        data: &new,
    };
    assert_eq!(s.engine.submit(io, 0, tag, u, off, false), Start::Pending);
    s.hot_caws.insert(*slot);
    s.outstanding += 1;
}

fn submit(s: &mut Site, io: &mut IoCx, rng: &mut Rng, slot: &mut u32) {
    // Eight hot blocks: writes overlap all the time.
    let off = rng.below(8) * BLOCK as u64;
    let len = (1 + rng.below(3)) * BLOCK as u64;
    let len = len.min(SIZE - off);
    *slot += 1;
    let tag = IoTag {
        conn: 1,
        slot: *slot,
    };
    let r = if rng.below(10) == 0 {
        let u = if rng.below(2) == 0 {
            Update::Unmap(len)
        } else {
            Update::Zeroes(len)
        };
        s.engine.submit(io, 0, tag, u, off, false)
    } else {
        let byte = (rng.next() & 0xff) as u8;
        let data = vec![byte; len as usize];
        s.engine
            .submit(io, 0, tag, Update::Write(&data), off, rng.below(4) == 0)
    };
    assert_eq!(r, Start::Pending);
    s.outstanding += 1;
}

/// Returns the counter's compare-and-writes that succeeded at a and at b, those that
/// miscompared, and the hot blocks' ones that succeeded.
fn run(seed: u64, drops: bool) -> [usize; 4] {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(seed);
    let mut a = site(Role::Leader, Duration::from_secs(3600));
    let mut b = site(Role::Follower, Duration::from_secs(3600));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    for step in 0..2000 {
        match rng.below(9) {
            0 => submit(&mut a, &mut io, &mut rng, &mut slot),
            1 => submit(&mut b, &mut io, &mut rng, &mut slot),
            // At most two at once (both may guess the same value: one must lose).
            8 if a.caws.len() + b.caws.len() < 2 => {
                // Guessed from the leader's replica, the freshest.
                let v = counter(&a);
                let s = if rng.below(2) == 0 { &mut a } else { &mut b };
                submit_caw(s, &mut io, &mut slot, v);
            }
            8 => {
                let now = a.disk.borrow().bytes.clone();
                let s = if rng.below(2) == 0 { &mut a } else { &mut b };
                submit_hot_caw(s, &mut io, &mut rng, &mut slot, &now);
            }
            2 => {
                complete_one(&mut a, &mut io, &mut rng);
            }
            3 => {
                complete_one(&mut b, &mut io, &mut rng);
            }
            4 | 5 => {
                let n = 1 + rng.below(4) as usize;
                deliver(&mut a, &mut b, &mut io, n);
            }
            _ => {
                let n = 1 + rng.below(4) as usize;
                deliver(&mut b, &mut a, &mut io, n);
            }
        }
        if drops && step % 500 == 250 {
            // The link breaks: whatever is on the wire is lost; a new session starts.
            break_link(&mut a, &mut b);
            a.engine.link_up(&mut io);
            b.engine.link_up(&mut io);
        }
        collect(&mut a);
        collect(&mut b);
    }
    // Quiesce.
    for _ in 0..100_000 {
        let mut any = complete_one(&mut a, &mut io, &mut rng);
        any |= complete_one(&mut b, &mut io, &mut rng);
        any |= deliver(&mut a, &mut b, &mut io, usize::MAX) > 0;
        any |= deliver(&mut b, &mut a, &mut io, usize::MAX) > 0;
        collect(&mut a);
        collect(&mut b);
        if !any {
            if a.engine.ack_deadline().is_none() && b.engine.ack_deadline().is_none() {
                break;
            }
            // A held-back ACK falls due within ACK_WINDOW.
            std::thread::sleep(ACK_WINDOW);
        }
    }
    assert_eq!(a.outstanding, 0, "seed {seed}: leader requests unanswered");
    assert_eq!(
        b.outstanding, 0,
        "seed {seed}: follower requests unanswered"
    );
    assert_eq!(a.failed + b.failed, 0, "seed {seed}: requests failed");
    assert!(a.ok > 100 && b.ok > 100, "seed {seed}: too little traffic");
    assert!(a.engine.idle() && b.engine.idle(), "seed {seed}: ops left");
    assert!(
        a.disk.borrow().bytes == b.disk.borrow().bytes,
        "seed {seed}: replicas differ"
    );
    // Compare-and-write is atomic across the sites: every success incremented the
    // counter once and no two of them saw the same value. Only a failed one (a forward
    // whose session broke) may or may not have counted.
    let (oks, unknown) = (a.caw_ok + b.caw_ok, a.caw_failed + b.caw_failed);
    let c = counter(&a);
    assert!(
        c >= oks as u64 && c <= (oks + unknown) as u64,
        "seed {seed}: counter {c} after {oks} successful and {unknown} failed increments"
    );
    if !drops {
        assert_eq!(unknown, 0, "seed {seed}: compare-and-writes failed");
        assert_eq!(
            a.hot[2] + b.hot[2],
            0,
            "seed {seed}: compare-and-writes failed"
        );
    }

    [
        a.caw_ok,
        b.caw_ok,
        a.caw_miscompare + b.caw_miscompare,
        a.hot[0] + b.hot[0],
    ]
}

fn caw_exercised(counts: [usize; 4]) {
    assert!(
        counts.iter().all(|&n| n > 0),
        "compare-and-write not exercised: {} ok at a, {} ok at b, {} miscompared, {} ok \
         among plain writes",
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
}

#[test]
fn overlapping_writes_and_compare_and_writes_from_both_sites_leave_identical_replicas() {
    let mut caws = [0; 4];
    for seed in 1..13 {
        let c = run(seed * 0x9E37_79B9, false);
        (0..4).for_each(|i| caws[i] += c[i]);
    }
    caw_exercised(caws);
}

#[test]
fn replicas_stay_identical_across_link_drops() {
    let mut caws = [0; 4];
    for seed in 1..13 {
        let c = run(seed * 0x2545_F491, true);
        (0..4).for_each(|i| caws[i] += c[i]);
    }
    caw_exercised(caws);
}

#[test]
fn nothing_is_acknowledged_without_the_peer_and_held_requests_time_out() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(7);
    let mut a = site(Role::Leader, Duration::from_millis(1));
    let mut slot = 0;
    submit(&mut a, &mut io, &mut rng, &mut slot);
    while complete_one(&mut a, &mut io, &mut rng) {}
    collect(&mut a);
    assert_eq!(a.ok, 0, "acknowledged with one replica only");
    std::thread::sleep(Duration::from_millis(5));
    a.engine.expire(Instant::now());
    collect(&mut a);
    assert_eq!((a.ok, a.failed), (0, 1));
    // The leader still keeps the update for the follower.
    assert!(!a.engine.idle());
}

fn with_witness(role: Role) -> (Site, Arc<super::super::failover::FailoverSlot>) {
    let mut s = site(role, Duration::from_secs(60));
    let slot = Arc::new(super::super::failover::FailoverSlot::default());
    s.engine.cfg.failover = Some(Arc::clone(&slot));
    (s, slot)
}

/// `rounds` turns of: deliver both ways, finish every local operation, let ACKs fall due.
fn exchange(a: &mut Site, b: &mut Site, io: &mut IoCx, rng: &mut Rng, rounds: usize) {
    for _ in 0..rounds {
        deliver(a, b, io, usize::MAX);
        deliver(b, a, io, usize::MAX);
        while complete_one(a, io, rng) || complete_one(b, io, rng) {}
        std::thread::sleep(ACK_WINDOW);
    }
}

/// The link breaks: both sessions end and whatever is on the wire is lost.
fn break_link(a: &mut Site, b: &mut Site) {
    a.engine.link_down("test");
    b.engine.link_down("test");
    a.wire.clear();
    b.wire.clear();
}

/// With the link down, the witness grants b and denies a: b survives, a fences.
fn grant_b_fence_a(
    a: &mut Site,
    b: &mut Site,
    sa: &super::super::failover::FailoverSlot,
    sb: &super::super::failover::FailoverSlot,
    io: &mut IoCx,
) {
    use super::super::failover::{DENIED, GRANTED};
    use std::sync::atomic::Ordering::SeqCst;
    let now = Instant::now();
    a.engine.tick(io, now);
    b.engine.tick(io, now);
    sb.epoch.store(1, SeqCst);
    sb.outcome.store(GRANTED, SeqCst);
    sa.outcome.store(DENIED, SeqCst);
    a.engine.tick(io, now);
    b.engine.tick(io, now);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Fenced, Mode::Survivor)
    );
    past_peer_lease(b, io);
}

/// Let a survivor's wait for the lost peer's read lease pass (a tick that much later).
fn past_peer_lease(s: &mut Site, io: &mut IoCx) {
    let l = lease_for(s.engine.cfg.peer_dead);
    s.engine.tick(io, Instant::now() + l + lease_margin(l));
}

/// Run the link down with writes held at both sites, then let the witness answer.
fn lose_peer(grant_to_a: bool) -> (Site, Site, IoCx) {
    lose_peer_holding(
        grant_to_a,
        5,
        20,
        &mut |s, io, rng, slot| submit(s, io, rng, slot),
        &mut |_, _, _| {},
    )
}

/// As [`lose_peer`], what each site holds when the link goes down submitted by `each` (`rounds`
/// times at a, then at b; the generator seeded with `seed`; their device operations done),
/// and by `down` once at each site after the link went down (their device operations left
/// pending until the witness has answered).
fn lose_peer_holding(
    grant_to_a: bool,
    seed: u64,
    rounds: usize,
    each: &mut dyn FnMut(&mut Site, &mut IoCx, &mut Rng, &mut u32),
    down: &mut dyn FnMut(&mut Site, &mut IoCx, &mut u32),
) -> (Site, Site, IoCx) {
    use super::super::failover::{DENIED, GRANTED};
    use std::sync::atomic::Ordering::SeqCst;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(seed);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    for _ in 0..rounds {
        each(&mut a, &mut io, &mut rng, &mut slot);
        each(&mut b, &mut io, &mut rng, &mut slot);
    }
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    a.engine.link_down("test");
    b.engine.link_down("test");
    down(&mut a, &mut io, &mut slot);
    down(&mut b, &mut io, &mut slot);
    let now = Instant::now();
    both_ask(&mut a, &mut b, &mut io, now);
    collect(&mut a);
    collect(&mut b);
    assert_eq!(a.ok + b.ok, 0, "acknowledged before the witness answered");
    let (win, lose) = if grant_to_a { (&sa, &sb) } else { (&sb, &sa) };
    win.epoch.store(1, SeqCst);
    win.outcome.store(GRANTED, SeqCst);
    lose.outcome.store(DENIED, SeqCst);
    a.engine.tick(&mut io, now);
    b.engine.tick(&mut io, now);
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    past_peer_lease(if grant_to_a { &mut a } else { &mut b }, &mut io);
    collect(&mut a);
    collect(&mut b);
    (a, b, io)
}

/// Submit a write of `len` bytes of `byte` at `off` from site `s`.
fn write_at(s: &mut Site, io: &mut IoCx, slot: &mut u32, off: u64, byte: u8, len: usize) {
    *slot += 1;
    let tag = IoTag {
        conn: 1,
        slot: *slot,
    };
    let r = s
        .engine
        .submit(io, 0, tag, Update::Write(&vec![byte; len]), off, false);
    assert_eq!(r, Start::Pending);
    s.outstanding += 1;
}

/// Submit a flush from site `s`.
fn flush_at(s: &mut Site, io: &mut IoCx, slot: &mut u32) {
    *slot += 1;
    let tag = IoTag {
        conn: 1,
        slot: *slot,
    };
    let r = s.engine.submit(io, 0, tag, Update::Flush, 0, false);
    assert_eq!(r, Start::Pending);
    s.outstanding += 1;
}

/// Run both sites (ticks, messages both ways, local completions) until both mirror again
/// and nothing moves.
fn run_until_in_sync(a: &mut Site, b: &mut Site, io: &mut IoCx, rng: &mut Rng) {
    for _ in 0..200_000 {
        let now = Instant::now();
        a.engine.tick(io, now);
        b.engine.tick(io, now);
        let mut any = complete_one(a, io, rng);
        any |= complete_one(b, io, rng);
        any |= deliver(a, b, io, usize::MAX) > 0;
        any |= deliver(b, a, io, usize::MAX) > 0;
        collect(a);
        collect(b);
        let synced = a.engine.mode() == Mode::Mirroring && b.engine.mode() == Mode::Mirroring;
        if synced && (a.engine.durable.waiting() || b.engine.durable.waiting()) {
            // Answers wait until "mirroring" is on disk (durable.rs).
            a.engine.wait_persisted();
            b.engine.wait_persisted();
            continue;
        }
        if !any && synced && a.engine.idle() && b.engine.idle() {
            if a.engine.ack_deadline().is_none() && b.engine.ack_deadline().is_none() {
                return;
            }
            std::thread::sleep(ACK_WINDOW);
        }
    }
    panic!(
        "not back in sync: {:?} / {:?}",
        a.engine.mode(),
        b.engine.mode()
    );
}

/// The leader applies its updates before the follower has them. Site a (leader) applies
/// two updates the follower never receives (one still being applied when the link
/// breaks), the witness grants b (follower), a fences, and b writes alone elsewhere.
/// Returns the sites, with the replicas different, before b dials again.
fn fenced_leader_with_unconfirmed_updates() -> (Site, Site, IoCx, Rng) {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(21);
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    let mut slot = 0;
    // On both replicas, acknowledged and flushed (so b's copy is durable: not suspect).
    write_at(&mut a, &mut io, &mut slot, 0, 0x11, 8192);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    flush_at(&mut a, &mut io, &mut slot);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(a.ok, 2);
    a.ok -= 1;
    // Applied at a only; then one a is still applying; and b's forward, never delivered.
    write_at(&mut a, &mut io, &mut slot, 16384, 0xA1, 4096);
    assert!(complete_one(&mut a, &mut io, &mut rng));
    write_at(&mut a, &mut io, &mut slot, 40960, 0xA2, 4096);
    write_at(&mut b, &mut io, &mut slot, 8192, 0xB1, 4096);
    break_link(&mut a, &mut b);
    grant_b_fence_a(&mut a, &mut b, &sa, &sb, &mut io);
    // The apply in flight at the fence reaches a's replica afterwards.
    while complete_one(&mut a, &mut io, &mut rng) || complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut a);
    collect(&mut b);
    assert_eq!((a.ok, a.failed, b.ok), (1, 2, 1));
    // Both of a's unconfirmed updates are suspect (4 KiB regions).
    assert_eq!(a.engine.suspect_bytes(), 2 * 4096);
    // b alone.
    write_at(&mut b, &mut io, &mut slot, 57344, 0xB2, 4096);
    while complete_one(&mut b, &mut io, &mut rng) {}
    collect(&mut b);
    assert_eq!(b.ok, 2);
    assert!(a.disk.borrow().bytes[16384] == 0xA1 && b.disk.borrow().bytes[16384] == 0);
    (a, b, io, rng)
}

/// The follower dials again: both start the session from the other's replica state
/// (the leader first, as it answers HELLO before the follower reads WELCOME).
fn redial(a: &mut Site, b: &mut Site, io: &mut IoCx) {
    meet(a, b, io);
    assert_eq!(a.engine.mode(), Mode::Resyncing);
}

#[test]
fn acks_are_batched_for_a_stream_and_immediate_for_a_lone_update() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(3);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    // A stream: 32 updates arrive in one receive and are applied: one ACK covers them.
    let mut slot = 0;
    for i in 0..32u64 {
        slot += 1;
        let tag = IoTag { conn: 1, slot };
        let r = a.engine.submit(
            &mut io,
            0,
            tag,
            Update::Write(&[i as u8; 512]),
            i * 1024,
            false,
        );
        assert_eq!(r, Start::Pending);
        a.outstanding += 1;
    }
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    while complete_one(&mut b, &mut io, &mut rng) {}
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    collect(&mut a);
    assert_eq!(a.ok, 32, "the stream was not acknowledged");
    assert_eq!(
        b.engine.stats().acks_sent.load(Relaxed),
        1,
        "32 updates took more than one ACK"
    );
    // A lone update: held back while the peer's message is fresh, sent on the next turn.
    slot += 1;
    let tag = IoTag { conn: 1, slot };
    a.engine
        .submit(&mut io, 0, tag, Update::Write(&[9; 512]), 0, false);
    a.outstanding += 1;
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    while complete_one(&mut b, &mut io, &mut rng) {}
    let before = b.engine.stats().acks_sent.load(Relaxed);
    let mut out = Vec::new();
    b.engine.take_outbox(&mut out); // the turn the WRITE arrived in
    assert_eq!(
        b.engine.stats().acks_sent.load(Relaxed),
        before,
        "ACK sent before the turn ended"
    );
    b.engine.take_outbox(&mut out); // the next turn: nothing new came
    assert_eq!(b.engine.stats().acks_sent.load(Relaxed), before + 1);
}

/// What a reactor asks before it sleeps right after a working turn (`Engine::has_work`): a
/// message to send, the follower's ACK due at the next turn and an answer not handed back
/// are work; in between, and once everything is answered, there is none.
#[test]
fn work_for_the_next_turn_is_what_to_send_and_the_answers_not_handed_back() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(5);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    let mut b = site(Role::Follower, Duration::from_secs(60));
    a.engine.link_up(&mut io);
    b.engine.link_up(&mut io);
    // (The session's first messages.)
    exchange(&mut a, &mut b, &mut io, &mut rng, 2);
    let now = Instant::now();
    assert!(
        !a.engine.has_work(now) && !b.engine.has_work(now),
        "in sync, idle"
    );
    let tag = IoTag { conn: 1, slot: 1 };
    let r = a
        .engine
        .submit(&mut io, 0, tag, Update::Write(&[7; 512]), 0, false);
    assert_eq!(r, Start::Pending);
    a.outstanding += 1;
    assert!(a.engine.has_work(now), "the WRITE to send");
    while complete_one(&mut a, &mut io, &mut rng) {}
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    assert!(
        !a.engine.has_work(now),
        "sent: nothing until the peer's ACK"
    );
    while complete_one(&mut b, &mut io, &mut rng) {}
    b.engine.take_outbox(&mut b.wire); // the turn the WRITE arrived in: the ACK waits
    assert!(b.wire.is_empty());
    assert!(b.engine.has_work(now), "the ACK due at the next turn");
    b.engine.take_outbox(&mut b.wire);
    assert!(!b.wire.is_empty());
    assert!(!b.engine.has_work(now), "the ACK is out");
    receive(&mut b, &mut a, &mut io, usize::MAX);
    assert!(a.engine.has_work(now), "the answer to hand back");
    collect(&mut a);
    assert_eq!(a.ok, 1);
    assert!(!a.engine.has_work(now), "answered");
    // Not in plain mirroring: always work (the reactor keeps its extra turn).
    a.engine.link_down("test");
    assert!(a.engine.has_work(now));
}

#[test]
fn a_full_backlog_marks_the_volume_diverged_and_frees_it() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(11);
    let mut a = site(Role::Leader, Duration::from_secs(60));
    a.engine.cfg.max_backlog = 8 * 1024;
    let mut slot = 0;
    while !a.engine.is_diverged() {
        submit(&mut a, &mut io, &mut rng, &mut slot);
        while complete_one(&mut a, &mut io, &mut rng) {}
        assert!(slot < 100, "backlog never overflowed");
    }
    a.engine.tick(&mut io, Instant::now());
    collect(&mut a);
    assert_eq!(a.ok, 0, "acknowledged without the follower");
    assert_eq!(a.outstanding, 0, "requests left hanging");
    assert!(a.engine.idle(), "backlog not freed");
    let r = a.engine.submit(
        &mut io,
        0,
        IoTag { conn: 1, slot: 999 },
        Update::Write(&[1; 512]),
        0,
        false,
    );
    assert_eq!(
        r,
        Start::Done(Err(Errno::IO)),
        "a diverged volume must refuse writes"
    );
}

#[test]
fn forged_sequence_numbers_and_ranges_are_refused_and_not_applied() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut b = site(Role::Follower, Duration::from_secs(10));
    b.engine.link_up(&mut io);
    let resent = Header::new(Type::Resent);
    assert_eq!(b.engine.on_msg(&mut io, &resent, &[]), Ok(()));
    let w = |seq: u64, offset: u64, count: u32| Header {
        seq,
        offset,
        count,
        len: count,
        ..Header::new(Type::Write)
    };
    let data = vec![0xAB; 512];
    assert_eq!(
        b.engine.on_msg(&mut io, &w(2, 0, 512), &data),
        Err("sequence number out of window")
    );
    assert_eq!(
        b.engine.on_msg(&mut io, &w(1, SIZE, 512), &data),
        Err("range outside the volume")
    );
    assert_eq!(
        b.engine.on_msg(&mut io, &w(1, 100, 512), &data),
        Err("range not aligned to the block size")
    );
    assert!(
        b.disk.borrow().pending.is_empty(),
        "a refused message was applied"
    );
    assert_eq!(b.engine.on_msg(&mut io, &w(1, 0, 512), &data), Ok(()));
    assert_eq!(
        b.engine.on_msg(&mut io, &w(1, 0, 512), &data),
        Err("duplicate sequence number")
    );
    assert_eq!(b.disk.borrow().pending.len(), 1);
    let ack = Header {
        seq: 5,
        ..Header::new(Type::Ack)
    };
    assert_eq!(
        b.engine.on_msg(&mut io, &ack, &[]),
        Err("ACK outside the window")
    );
    let order = Header {
        seq: 2,
        id: 3,
        ..Header::new(Type::Order)
    };
    assert!(b.engine.on_msg(&mut io, &order, &[]).is_err());
    let fwd = Header {
        count: 512,
        len: 512,
        ..Header::new(Type::FwdWrite)
    };
    assert_eq!(
        b.engine.on_msg(&mut io, &fwd, &data),
        Err("message not allowed in this direction")
    );
    // A MISCOMPARE for no forwarded compare-and-write, or for a forwarded plain write.
    let miscompare = |id: u32| Header {
        id,
        ..Header::new(Type::Miscompare)
    };
    assert_eq!(
        b.engine.on_msg(&mut io, &miscompare(0), &[]),
        Err("MISCOMPARE with no forwarded request outstanding")
    );
    let mut slot = 0;
    let mut rng = Rng(3);
    submit(&mut b, &mut io, &mut rng, &mut slot);
    let k = b.engine.follower.last().unwrap() as u32;
    assert_eq!(
        b.engine.on_msg(&mut io, &miscompare(k), &[]),
        Err("MISCOMPARE for a request not outstanding")
    );
    // The leader refuses FWD_CAW outside the volume, and a follower never takes one.
    let mut a = site(Role::Leader, Duration::from_secs(10));
    a.engine.link_up(&mut io);
    let caw = Header {
        offset: SIZE,
        count: 512,
        len: 1024,
        ..Header::new(Type::FwdCaw)
    };
    let two = vec![0u8; 1024];
    assert_eq!(
        a.engine.on_msg(&mut io, &caw, &two),
        Err("range outside the volume")
    );
    assert!(a.disk.borrow().pending.is_empty(), "a refused FWD_CAW read");
    assert!(b.engine.on_msg(&mut io, &caw, &two).is_err());
}

/// Deliver `from`'s messages to `to`, dropping its ACKs (as a link that breaks would).
fn deliver_without_acks(from: &mut Site, to: &mut Site, io: &mut IoCx) {
    from.engine.take_outbox(&mut from.wire);
    let mut at = 0;
    while let wire::Decoded::Msg(h, r) = wire::decode(&from.wire[at..]) {
        let payload = from.wire[at + r.start..at + r.end].to_vec();
        at += r.end;
        if h.ty != Type::Ack {
            to.engine
                .on_msg(io, &h, &payload)
                .expect("valid message refused");
        }
    }
    from.wire.drain(..at);
}

mod actlog;
mod diskerr;
mod durable;
mod extremes;
mod failover;
mod forwards;
mod group_grant;
mod groupfault;
mod inflight;
mod lease;
mod meta;
mod peercache;
mod phasefault;
mod restart_fence;
mod restart_grant;
mod resyncfuzz;
mod resyncloss;
mod takeover_flag;

/// Spare data vectors are bounded in bytes, not only in count: a burst of 8 MiB updates
/// leaves at most `SPARE_BYTES` behind (it could leave 8 GiB when the bound was 1024 vectors).
#[test]
fn spare_data_vectors_are_bounded_in_bytes() {
    let mut s = site(Role::Leader, Duration::from_secs(1));
    for _ in 0..100 {
        s.engine
            .recycle(super::super::txq::Data::from_vec(Vec::with_capacity(
                8 << 20,
            )));
    }
    assert!(s.engine.spare_bytes() <= super::SPARE_BYTES);
    assert_eq!(s.engine.spare_bytes(), 16 << 20);
    let v = s.engine.take_spare();
    assert_eq!(s.engine.spare_bytes(), (16 << 20) - v.capacity());
}

/// The site crashes (no clean stop; its pending local writes are lost) and restarts from its
/// state files over the same replica.
fn crash_and_restart(s: &mut Site) {
    // What the persister has been given reaches the disk (a crash just after it).
    assert!(s.engine.wait_persisted());
    s.engine.wait_actlog_persisted();
    let cfg = s.engine.cfg.clone();
    // (Its failover slot went with the process; here the test keeps it: the old engine's
    // count in it goes.)
    s.engine.stop_watching();
    s.engine.stop_withdrawn();
    s.engine.stop_sync();
    s.disk.borrow_mut().pending.clear();
    let fresh = Engine::new(
        cfg,
        Box::new(SlowChannel(Rc::clone(&s.disk))),
        0,
        Arc::new(MirrorStats::default()),
    );
    std::mem::forget(std::mem::replace(&mut s.engine, fresh));
    s.engine
        .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
    s.engine.restore().expect("restore after the crash");
    s.wire.clear();
    // Its initiators' requests died with it.
    s.outstanding = 0;
}

/// Both sites start a session from the other's replica state (the leader `a` first).
fn meet(a: &mut Site, b: &mut Site, io: &mut IoCx) {
    let (ra, rb) = (a.engine.replica_state(), b.engine.replica_state());
    a.engine.session_start(io, rb).expect("session at a");
    b.engine.session_start(io, ra).expect("session at b");
}

/// Both sites tick at `now` with their link down: each must ask its witness for the grant.
fn both_ask(a: &mut Site, b: &mut Site, io: &mut IoCx, now: Instant) {
    use std::sync::atomic::Ordering::SeqCst;
    a.engine.tick(io, now);
    b.engine.tick(io, now);
    let asked = |s: &Site| {
        s.engine
            .cfg
            .failover
            .as_ref()
            .is_some_and(|f| f.want.load(SeqCst))
    };
    assert!(asked(a) && asked(b), "no grant asked for");
}
