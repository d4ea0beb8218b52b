//! Faults at every phase of a takeover's resync, beyond a cut link: after each message of the
//! resync session (both directions: suspect list, copies, the last pass, RESYNC_DONE and its
//! confirmation, the first mirrored updates) the link is cut and, besides, the source, the
//! target or both restart from their state files, or the target restarts without its state (a
//! new replica); the witness answers as docs/witness-protocol.md decides (holder, stale known
//! epochs, views at every heartbeat, the preferred site's tie (a's claims, withdrawn while
//! it does not compete; b's request waits three turns, then is denied); a restarted site
//! knows no epoch until in sync again).
//!
//! Also with one direction lagging the other at random (delays), and for the takeover before
//! the resync: a restart of either site at each of its turns, the witness's answers all lost
//! at one turn (a grant recorded but unanswered, a release retried, no heartbeat answered);
//! and, the link kept down, the same with restarts around that turn, after which one site
//! must serve alone (never neither while a site whose replica is whole could). At every turn,
//! a site that serves reads (the survivor, or mirroring under its lease) holds at each offset
//! written the last acknowledged write or a later one (never a stale read).
//! (A message is never duplicated or lost alone inside a session: the link is TCP; a
//! duplicate is an injection, refused by the checks or beyond them, docs/mirror-protocol.md,
//! "Limits".)
//!
//! Model: as `resyncloss.rs` (two engines back to back, one message each way per turn), with
//! state files at both sites and a fresh failover slot for a restarted site (a new process).
//! Invariants checked: never two sites serving alone; once the sites meet again (as often as
//! they must) both end in sync with byte-identical replicas holding every acknowledged write,
//! and the witness holds no grant, and no site still counts a volume as watching for a grant
//! or as a survivor (`FailoverSlot::watching`, `survivors`: a leaked count holds every later
//! give-back for good).

use super::resyncloss::{Source, leader_and_new_follower};
use super::*;
use crate::layer::mirror::failover::{DENIED, FailoverSlot, GRANTED};
use std::sync::atomic::Ordering::SeqCst;

/// What happens once the messages before it are delivered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The link is cut (what is on the wire is lost).
    Cut,
    /// Cut, and the resync source restarts from its state.
    RestartSource,
    /// Cut, and the target restarts from its state.
    RestartTarget,
    /// Cut, and both restart from their states.
    RestartBoth,
    /// Cut, and the target restarts without its state (a new, empty replica's file: removed).
    TargetLosesState,
}

/// The witness of one group with the sites' known epochs (site ids: a 1, b 2).
#[derive(Default)]
pub(super) struct Wit {
    pub(super) holder: Option<usize>,
    pub(super) epoch: u64,
    /// Each site's failover thread's known epoch (0 after a restart).
    pub(super) known: [u64; 2],
    /// This turn every answer is lost: a grant is recorded but the site hears nothing (it
    /// fences for want of an answer), a release is not taken (the thread retries it at the
    /// next turn), no heartbeat is answered.
    pub(super) lossy: bool,
    /// The group's recorded preferred site (the claims of requests and heartbeats,
    /// docs/witness-protocol.md "Preferred site"), and whether it asked and lost (stale)
    /// since the last grant or release. Both sites beat every turn, so a preferred site that
    /// has not asked and lost always wins the tie: the other is denied (TIE_WAIT until the
    /// client's deadline).
    pub(super) preferred: Option<usize>,
    pub(super) preferred_lost: bool,
    /// Turns each site's request has been waiting out a tie (the client asks again within its
    /// deadline: three turns here, then it is denied).
    pub(super) tie_turns: [u32; 2],
    /// This turn every datagram arrives twice: each request and release is seen twice by the
    /// witness (a retransmission, or the network's duplicate: the second is idempotent, or
    /// answered NOT_HOLDER), a release is taken but the answer the site waits for is the
    /// second one, lost (the thread retries it at the next turn, when it is seen a third
    /// time), and each answer reaches the failover thread twice (the client takes the first
    /// matching one; a second answer of the same call is the same word again, a new view).
    pub(super) dup: bool,
}

impl Wit {
    /// A claim of site `i` as preferred (`claim`), or a heartbeat entry without it.
    fn claim(&mut self, i: usize, claim: bool, heartbeat: bool) {
        match (claim, self.preferred) {
            (true, None) => self.preferred = Some(i),
            (false, Some(p)) if p == i && heartbeat => self.preferred = None,
            _ => {}
        }
    }

    /// The failover threads' turn: releases, requests, then a heartbeat each.
    pub(super) fn serve(&mut self, slots: &[Arc<FailoverSlot>; 2]) {
        for (i, s) in slots.iter().enumerate() {
            let r = s.release.swap(0, SeqCst);
            if r != 0 && self.lossy {
                // Sent (the thread marks it so), unanswered: retried at the next turn.
                if crate::layer::mirror::failover::decide_release(s, r) {
                    let _ = s.release.compare_exchange(0, r, SeqCst, SeqCst);
                }
            } else if r != 0 && crate::layer::mirror::failover::decide_release(s, r) {
                for _ in 0..1 + self.dup as usize {
                    if r == self.epoch && self.holder == Some(i) {
                        self.holder = None;
                        self.preferred_lost = false;
                    }
                    let h = self.holder.map_or(0, |h| h as u32 + 1);
                    s.publish_view(h, self.epoch, i as u32 + 1);
                }
                if self.dup {
                    // Taken, its answer lost: retried at the next turn.
                    let _ = s.release.compare_exchange(0, r, SeqCst, SeqCst);
                }
            }
            s.releasing.store(0, SeqCst);
        }
        for (i, s) in slots.iter().enumerate() {
            if !s.want.swap(false, SeqCst) {
                continue;
            }
            let takeover = s.takeover.swap(false, SeqCst);
            // (The failover thread's known epoch: raised to one learned from a resync.)
            self.known[i] = self.known[i].max(s.learned_epoch.load(SeqCst));
            let asked = if takeover {
                self.known[i].max(s.view_epoch.load(SeqCst))
            } else {
                self.known[i]
            };
            s.asked_epoch.store(asked, SeqCst);
            let me = i as u32 + 1;
            let lost = crate::layer::mirror::failover::UNREACHABLE;
            for _ in 0..1 + self.dup as usize {
                if !self.lossy {
                    // (The request's PREFERRED flag: the configured or led preference, not
                    // withdrawn.)
                    self.claim(i, s.preferred_now(), false);
                }
                if !(self.holder.is_none() && self.preferred.is_some_and(|p| p != i)) {
                    self.tie_turns[i] = 0;
                }
                let tie = self.holder.is_none()
                    && asked >= self.epoch
                    && self.preferred.is_some_and(|p| p != i)
                    && !self.preferred_lost;
                if self.holder.is_none() && asked < self.epoch && self.preferred == Some(i) {
                    self.preferred_lost = true;
                }
                match self.holder {
                    None if tie && self.tie_turns[i] < 3 && !self.lossy => {
                        // TIE_WAIT: the client asks again (next turn), within its deadline.
                        self.tie_turns[i] += 1;
                        s.want.store(true, SeqCst);
                    }
                    None if tie => {
                        // TIE_WAIT until the client's deadline: denied, nobody named.
                        self.tie_turns[i] = 0;
                        s.outcome
                            .store(if self.lossy { lost } else { DENIED }, SeqCst);
                        if !self.lossy {
                            s.publish_view(0, self.epoch, me);
                        }
                    }
                    Some(h) if h != i && self.lossy => s.outcome.store(lost, SeqCst),
                    Some(h) if h != i => {
                        s.publish_view(h as u32 + 1, self.epoch, me);
                        s.outcome.store(DENIED, SeqCst);
                    }
                    None if asked < self.epoch => {
                        s.outcome
                            .store(if self.lossy { lost } else { DENIED }, SeqCst);
                        if !self.lossy {
                            s.publish_view(0, self.epoch, me);
                        }
                    }
                    _ => {
                        if self.holder.is_none() {
                            self.epoch = self.epoch.max(asked) + 1;
                            self.holder = Some(i);
                            self.preferred_lost = false;
                        }
                        if self.lossy {
                            // Recorded, the answer lost (the thread learns nothing of it).
                            s.outcome
                                .store(crate::layer::mirror::failover::UNREACHABLE, SeqCst);
                            continue;
                        }
                        self.known[i] = self.epoch;
                        s.epoch.store(self.epoch, SeqCst);
                        s.known_epoch.store(self.epoch, SeqCst);
                        s.granted_takeover.store(takeover, SeqCst);
                        s.publish_view(me, self.epoch, me);
                        s.outcome.store(GRANTED, SeqCst);
                    }
                }
            }
        }
        if self.lossy {
            return;
        }
        for (i, s) in slots.iter().enumerate() {
            let claim = s.preferred_now() && s.withdrawn.load(SeqCst) == 0;
            self.claim(i, claim, true);
            let h = self.holder.map_or(0, |h| h as u32 + 1);
            for _ in 0..1 + self.dup as usize {
                s.publish_view(h, self.epoch, i as u32 + 1);
            }
            if s.in_sync_now() {
                self.known[i] = self.known[i].max(self.epoch);
            }
        }
    }
}

struct Run {
    a: Site,
    b: Site,
    io: IoCx,
    rng: Rng,
    w: Wit,
    slots: [Arc<FailoverSlot>; 2],
    /// The source's writes: (slot, offset, byte, acknowledged once answered).
    writes: Vec<(u32, u64, u8, Option<bool>)>,
    src_is_a: bool,
    dir: tempfile::TempDir,
    /// What must be on both replicas at the end (offset, byte), from before the resync.
    acked: Vec<(u64, u8)>,
    /// Delays: with it, each turn delivers 0 to 2 messages each way (chosen at random), so
    /// one direction lags the other by several messages at times.
    jitter: Option<Rng>,
}

impl Run {
    fn new(setup: Source) -> Self {
        let (mut a, mut b, io, rng, acked) = match setup {
            Source::LeaderGranted => {
                let (a, b, io) = lose_peer(true);
                (a, b, io, Rng(77), Vec::new())
            }
            Source::FollowerGranted => {
                let (a, b, io, rng) = fenced_leader_with_unconfirmed_updates();
                (a, b, io, rng, vec![(0, 0x11), (8192, 0xB1), (57344, 0xB2)])
            }
            Source::LeaderWithoutGrant => leader_and_new_follower(),
        };
        let dir = tempfile::tempdir().unwrap();
        for (s, n) in [(&mut a, "a"), (&mut b, "b")] {
            s.engine.cfg.state_file = Some(dir.path().join(n));
            s.engine.set_persister(
                crate::layer::mirror::persist::Persister::spawn().expect("persister"),
            );
            s.engine.persist(false);
            assert!(s.engine.wait_persisted());
        }
        let slots = [
            a.engine.cfg.failover.clone().expect("slot"),
            b.engine.cfg.failover.clone().expect("slot"),
        ];
        // (a, the configured leader, is the group's preferred site.)
        slots[0].configured_preferred.store(true, SeqCst);
        let w = match setup {
            Source::LeaderGranted => Wit {
                holder: Some(0),
                epoch: 1,
                known: [1, 0],
                ..Wit::default()
            },
            Source::FollowerGranted => Wit {
                holder: Some(1),
                epoch: 1,
                known: [0, 1],
                ..Wit::default()
            },
            Source::LeaderWithoutGrant => Wit::default(),
        };
        Run {
            a,
            b,
            io,
            rng,
            w,
            slots,
            writes: Vec::new(),
            src_is_a: setup != Source::FollowerGranted,
            dir,
            acked,
            jitter: None,
        }
    }

    /// One turn: ticks with the witness between them, local completions, and at most one
    /// message each way while `budget` lasts.
    fn turn(&mut self, budget: &mut usize) -> bool {
        let now = Instant::now();
        self.a.engine.tick(&mut self.io, now);
        self.b.engine.tick(&mut self.io, now);
        self.w.serve(&self.slots);
        self.a.engine.tick(&mut self.io, now);
        self.b.engine.tick(&mut self.io, now);
        let mut any = complete_one(&mut self.a, &mut self.io, &mut self.rng);
        any |= complete_one(&mut self.b, &mut self.io, &mut self.rng);
        for dir in 0..2 {
            if *budget == 0 {
                break;
            }
            let most = match self.jitter.as_mut() {
                Some(j) => (j.below(3) as usize).min(*budget),
                None => 1,
            };
            let n = if dir == 0 {
                deliver(&mut self.b, &mut self.a, &mut self.io, most)
            } else {
                deliver(&mut self.a, &mut self.b, &mut self.io, most)
            };
            *budget -= n;
            any |= n > 0;
        }
        for s in [&self.a, &self.b] {
            for (_, tag, r) in &s.engine.done {
                if let Some(w) = self.writes.iter_mut().find(|w| w.0 == tag.slot) {
                    w.3 = Some(r.is_ok());
                }
            }
        }
        collect(&mut self.a);
        collect(&mut self.b);
        assert!(
            self.a.engine.mode() != Mode::Survivor || self.b.engine.mode() != Mode::Survivor,
            "both sites serve alone"
        );
        self.check_reads();
        any
    }

    /// Reads: a site that serves them now (`Engine::may_read`: the survivor, or mirroring
    /// under its lease) holds, at every offset written, the last acknowledged write or one
    /// submitted after it (never an older one: a stale read).
    fn check_reads(&self) {
        let now = Instant::now();
        let mut log: Vec<(u64, u8, bool)> = self.acked.iter().map(|&(o, b)| (o, b, true)).collect();
        log.extend(self.writes.iter().map(|w| (w.1, w.2, w.3 == Some(true))));
        for (name, s) in [("a", &self.a), ("b", &self.b)] {
            if !s.engine.may_read(now) {
                continue;
            }
            let disk = s.disk.borrow();
            for &(off, _, _) in &log {
                let at: Vec<(u8, bool)> = log
                    .iter()
                    .filter(|w| w.0 == off)
                    .map(|w| (w.1, w.2))
                    .collect();
                let Some(last) = at.iter().rposition(|w| w.1) else {
                    continue;
                };
                let b = disk.bytes[off as usize];
                assert!(
                    at[last..].iter().any(|w| w.0 == b),
                    "{name} ({:?}) serves reads and holds {b:#x} at {off}, older than the write acknowledged there ({:#x})",
                    s.engine.mode(),
                    at[last].0
                );
            }
        }
    }

    /// Site `i` restarts (a new process: a new failover slot, no epoch known), with its state
    /// file or without it.
    /// The link returns: sessions are started (again, after a cut, if one is refused or ends
    /// unfinished, up to four times) and run until both sites mirror and are idle.
    fn meet_again(&mut self, what: &str, unused: &mut usize) {
        let r = self;
        for attempt in 0..4 {
            if r.a.engine.mode() == Mode::Mirroring
                && r.b.engine.mode() == Mode::Mirroring
                && r.a.engine.sess.up
            {
                break;
            }
            if attempt > 0 {
                break_link(&mut r.a, &mut r.b);
                for _ in 0..10 {
                    r.turn(unused);
                }
            }
            let (ra, rb) = (r.a.engine.replica_state(), r.b.engine.replica_state());
            let sa = r.a.engine.session_start(&mut r.io, rb);
            let sb = r.b.engine.session_start(&mut r.io, ra);
            assert!(
                sa.is_ok() && sb.is_ok(),
                "{what}: the next session refused ({ra} / {rb}): {sa:?} / {sb:?}"
            );
            for _ in 0..200_000 {
                let any = r.turn(unused);
                let synced =
                    r.a.engine.mode() == Mode::Mirroring && r.b.engine.mode() == Mode::Mirroring;
                if !any && synced && r.a.engine.idle() && r.b.engine.idle() {
                    break;
                }
            }
        }
    }

    fn restart(&mut self, i: usize, with_state: bool) {
        let slot = Arc::new(FailoverSlot::default());
        slot.configured_preferred.store(i == 0, SeqCst);
        let s = if i == 0 { &mut self.a } else { &mut self.b };
        if !with_state {
            let path = s.engine.cfg.state_file.clone().expect("state file");
            assert!(s.engine.wait_persisted());
            std::fs::remove_file(&path).unwrap();
            // (The replica's data goes with it: a new, empty device.)
            s.disk.borrow_mut().bytes.fill(0);
        }
        crash_and_restart_with(s, Arc::clone(&slot), with_state);
        self.slots[i] = slot;
        self.w.known[i] = 0;
    }
}

/// `crash_and_restart` with a new failover slot; `with_state` false: the state file is gone
/// (removed by the caller), so what is pending for the persister is not waited for.
pub(super) fn crash_and_restart_with(s: &mut Site, slot: Arc<FailoverSlot>, with_state: bool) {
    if with_state {
        assert!(s.engine.wait_persisted());
        s.engine.wait_actlog_persisted();
    }
    s.engine.stop_watching();
    s.engine.stop_withdrawn();
    let mut cfg = s.engine.cfg.clone();
    cfg.failover = Some(slot);
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
    s.outstanding = 0;
}

/// The resync of `setup` with `fault` after `at` delivered messages (`usize::MAX`: none).
/// Returns the number of messages delivered.
fn resync_with_fault(setup: Source, at: usize, fault: Fault) -> usize {
    resync_with_fault_jittered(setup, at, fault, None)
}

/// [`resync_with_fault`], with the deliveries of `jitter`'s seed (see `Run::jitter`).
fn resync_with_fault_jittered(
    setup: Source,
    at: usize,
    fault: Fault,
    jitter: Option<u64>,
) -> usize {
    let mut r = Run::new(setup);
    r.jitter = jitter.map(Rng);
    let what = format!("{setup:?}, {fault:?} after {at} messages, jitter {jitter:?}");
    let (ra, rb) = (r.a.engine.replica_state(), r.b.engine.replica_state());
    r.a.engine
        .session_start(&mut r.io, rb)
        .expect("session at a");
    r.b.engine
        .session_start(&mut r.io, ra)
        .expect("session at b");
    let mut budget = at;
    let mut delivered = 0;
    let mut slot = 5000;
    let writes = [(3usize, 24576u64, 0xC1u8), (9, 0, 0xC2), (15, 49152, 0xC3)];
    for round in 0..20_000 {
        for &(when, off, byte) in &writes {
            if round == when {
                let src = if r.src_is_a { &mut r.a } else { &mut r.b };
                write_at(src, &mut r.io, &mut slot, off, byte, 4096);
                r.writes.push((slot, off, byte, None));
            }
        }
        let before = budget;
        let any = r.turn(&mut budget);
        delivered += before - budget;
        if budget == 0 && at != usize::MAX {
            break;
        }
        let synced = r.a.engine.mode() == Mode::Mirroring && r.b.engine.mode() == Mode::Mirroring;
        if !any && synced && round > 20 && r.a.engine.idle() && r.b.engine.idle() {
            break;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    if at != usize::MAX {
        break_link(&mut r.a, &mut r.b);
        let (src, tgt) = if r.src_is_a { (0, 1) } else { (1, 0) };
        match fault {
            Fault::Cut => {}
            Fault::RestartSource => r.restart(src, true),
            Fault::RestartTarget => r.restart(tgt, true),
            Fault::RestartBoth => {
                r.restart(src, true);
                r.restart(tgt, true);
            }
            Fault::TargetLosesState => r.restart(tgt, false),
        }
        // (Delays end with the session: the next ones deliver at once.)
        r.jitter = None;
        let mut unused = usize::MAX;
        for _ in 0..10 {
            r.turn(&mut unused);
        }
        past_peer_lease(&mut r.a, &mut r.io);
        past_peer_lease(&mut r.b, &mut r.io);
        // They meet again (a session refused, or one that ends unfinished, is tried again).
        r.meet_again(&what, &mut unused);
    }
    past_peer_lease(&mut r.a, &mut r.io);
    past_peer_lease(&mut r.b, &mut r.io);
    let mut unused = usize::MAX;
    for i in 0..100_000 {
        // (Answers wait for the state on disk.)
        r.a.engine.wait_persisted();
        r.b.engine.wait_persisted();
        let any = r.turn(&mut unused);
        let synced = r.a.engine.mode() == Mode::Mirroring && r.b.engine.mode() == Mode::Mirroring;
        if i > 5 && !any && synced && r.a.engine.idle() && r.b.engine.idle() {
            if r.a.engine.ack_deadline().is_none() && r.b.engine.ack_deadline().is_none() {
                break;
            }
            std::thread::sleep(ACK_WINDOW);
        }
    }
    assert_eq!(
        (r.a.engine.mode(), r.b.engine.mode()),
        (Mode::Mirroring, Mode::Mirroring),
        "{what}: not back in sync"
    );
    let restarted_src = matches!(fault, Fault::RestartSource | Fault::RestartBoth);
    // Answered ones (a restarted source's initiators' requests died with it).
    let mut acked = r.acked.clone();
    let mut failed = Vec::new();
    for w in &r.writes {
        match w.3 {
            Some(true) => acked.push((w.1, w.2)),
            None if !restarted_src => panic!(
                "{what}: a write never answered: {:?}, modes {:?} / {:?}, outstanding {} / {}, \
                 held {} waiting {} ops {}",
                r.writes,
                r.a.engine.mode(),
                r.b.engine.mode(),
                r.a.outstanding,
                r.b.outstanding,
                r.a.engine.held_answers(),
                r.a.engine.durable.waiting(),
                r.a.engine.ops.len(),
            ),
            _ => failed.push(w.1),
        }
    }
    let acked: std::collections::BTreeMap<u64, u8> = acked.into_iter().collect();
    let (da, db) = (r.a.disk.borrow(), r.b.disk.borrow());
    for (off, byte) in acked {
        if failed.contains(&off) {
            continue;
        }
        assert_eq!(
            (da.bytes[off as usize], db.bytes[off as usize]),
            (byte, byte),
            "{what}: acknowledged write at {off} lost"
        );
    }
    assert!(da.bytes == db.bytes, "{what}: replicas differ");
    drop((da, db));
    r.w.serve(&r.slots);
    assert_eq!(
        r.w.holder,
        None,
        "{what}: the grant was never given back (a {:?} {} {:?}, b {:?} {} {:?}, watching {} {}, survivors {} {}; b up {} epoch {} given back {} view {:?} seq {} witness epoch {})",
        r.a.engine.mode(),
        r.a.engine.since_start,
        r.a.engine.fenced_unanswered,
        r.b.engine.mode(),
        r.b.engine.since_start,
        r.b.engine.fenced_unanswered,
        r.slots[0].watching.load(SeqCst),
        r.slots[1].watching.load(SeqCst),
        r.slots[0].survivors.load(SeqCst),
        r.slots[1].survivors.load(SeqCst),
        r.b.engine.sess.up,
        r.b.engine.grant_epoch,
        r.b.engine.given_back,
        r.slots[1].view(),
        r.slots[1].view_seq.load(SeqCst),
        r.w.epoch,
    );
    converged_counts(&r, &what);
    let _ = &r.dir;
    delivered
}

/// Both sites mirroring again with nothing asked: no volume counted as watching for a grant
/// (`FailoverSlot::watching`, which holds a lost grant's give-back) nor as a survivor (a count
/// left over would hold every later give-back for good).
fn converged_counts(r: &Run, what: &str) {
    for (i, s) in r.slots.iter().enumerate() {
        assert_eq!(
            (s.watching.load(SeqCst), s.survivors.load(SeqCst)),
            (0, 0),
            "{what}: site {i}'s counts (watching, survivors) do not return to zero"
        );
    }
}

fn every_phase(setup: Source, fault: Fault) {
    let all = resync_with_fault(setup, usize::MAX, Fault::Cut);
    assert!(all > 4, "{setup:?}: a resync of {all} messages");
    for at in 0..=all {
        resync_with_fault(setup, at, fault);
    }
}

#[test]
fn a_restarted_source_at_any_phase_of_its_resync_converges() {
    every_phase(Source::LeaderGranted, Fault::RestartSource);
    every_phase(Source::FollowerGranted, Fault::RestartSource);
    every_phase(Source::LeaderWithoutGrant, Fault::RestartSource);
}

#[test]
fn a_restarted_target_at_any_phase_of_its_resync_converges() {
    every_phase(Source::LeaderGranted, Fault::RestartTarget);
    every_phase(Source::FollowerGranted, Fault::RestartTarget);
    every_phase(Source::LeaderWithoutGrant, Fault::RestartTarget);
}

#[test]
fn both_sites_restarted_at_any_phase_of_a_resync_converge() {
    every_phase(Source::LeaderGranted, Fault::RestartBoth);
    every_phase(Source::FollowerGranted, Fault::RestartBoth);
    every_phase(Source::LeaderWithoutGrant, Fault::RestartBoth);
}

#[test]
fn a_target_that_lost_its_state_at_any_phase_of_its_resync_converges() {
    every_phase(Source::LeaderGranted, Fault::TargetLosesState);
    every_phase(Source::FollowerGranted, Fault::TargetLosesState);
    every_phase(Source::LeaderWithoutGrant, Fault::TargetLosesState);
}

#[test]
fn a_cut_at_any_phase_of_a_resync_with_views_and_stale_epochs_converges() {
    every_phase(Source::LeaderGranted, Fault::Cut);
    every_phase(Source::FollowerGranted, Fault::Cut);
    every_phase(Source::LeaderWithoutGrant, Fault::Cut);
}

/// A takeover with a restart at each of its turns: the sites in sync with writes from both in
/// flight lose their link; both ask the witness, which grants the leader (a) and denies b; at
/// turn `step` of that (asking, answered, waiting out b's lease, serving alone) site `who`
/// restarts from its state (or b without it, a new replica; the survivor's data has no other
/// copy). Then the link returns, and they meet as often as they must. Checked: never two
/// sites serving alone, both end in sync with identical replicas holding every acknowledged
/// write, and the witness holds no grant.
fn takeover_with_restart(step: usize, who: usize, with_state: bool) {
    takeover_with_faults(step, who, with_state, None, false);
}

/// [`takeover_with_restart`], and every answer of the witness lost at turn `lose_at`.
/// `served`: the link stays down four turns longer, after which one site must serve alone
/// (a site in sync lost its peer, the witness answers again, and a restart kept its state:
/// nobody serving then would be for good while the link is down).
fn takeover_with_faults(
    step: usize,
    who: usize,
    with_state: bool,
    lose_at: Option<usize>,
    served: bool,
) {
    let what = format!(
        "takeover, site {who} restarted (state: {with_state}) at turn {step}, the witness's \
         answers lost at turn {lose_at:?}"
    );
    let (mut a, sa) = with_witness(Role::Leader);
    let (mut b, sb) = with_witness(Role::Follower);
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let mut rng = Rng(131 + step as u64);
    let dir = tempfile::tempdir().unwrap();
    for (s, n) in [(&mut a, "a"), (&mut b, "b")] {
        s.engine.cfg.state_file = Some(dir.path().join(n));
        s.engine
            .set_persister(crate::layer::mirror::persist::Persister::spawn().expect("persister"));
        s.engine.restore().expect("restore");
    }
    meet(&mut a, &mut b, &mut io);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    sa.configured_preferred.store(true, SeqCst);
    let mut r = Run {
        a,
        b,
        io,
        rng,
        w: Wit::default(),
        slots: [sa, sb],
        writes: Vec::new(),
        src_is_a: true,
        dir,
        acked: Vec::new(),
        jitter: None,
    };
    let mut slot = 7000;
    // Writes from both sites, each to a block of its own; some reach the peer.
    let mut next = 0u64;
    let mut write = |r: &mut Run, at_a: bool, slot: &mut u32| {
        let off = next * 1024;
        next += 1;
        let byte = 0x40 + next as u8;
        let s = if at_a { &mut r.a } else { &mut r.b };
        *slot += 1;
        let tag = IoTag {
            conn: 1,
            slot: *slot,
        };
        let data = vec![byte; 1024];
        match s
            .engine
            .submit(&mut r.io, 0, tag, Update::Write(&data), off, false)
        {
            Start::Pending => {
                s.outstanding += 1;
                r.writes.push((*slot, off, byte, None));
            }
            Start::Done(res) => r.writes.push((*slot, off, byte, Some(res.is_ok()))),
        }
    };
    for i in 0..6 {
        write(&mut r, i % 2 == 0, &mut slot);
    }
    let mut budget = 3;
    for _ in 0..3 {
        r.turn(&mut budget);
    }
    break_link(&mut r.a, &mut r.b);
    let mut none = 0;
    let mut restarted = false;
    for turn in 0..if served { 16 } else { 12 } {
        if turn == step {
            r.restart(who, with_state);
            restarted = true;
        }
        if turn == 4 {
            // Past the lost peer's lease (the survivor answers from then on).
            past_peer_lease(&mut r.a, &mut r.io);
            past_peer_lease(&mut r.b, &mut r.io);
        }
        if turn % 3 == 1 {
            write(&mut r, turn % 2 == 1, &mut slot);
        }
        r.w.lossy = lose_at == Some(turn);
        r.turn(&mut none);
        r.w.lossy = false;
        r.a.engine.wait_persisted();
        r.b.engine.wait_persisted();
    }
    assert!(restarted || step >= 12);
    if served {
        assert!(
            r.a.engine.mode() == Mode::Survivor || r.b.engine.mode() == Mode::Survivor,
            "{what}: neither site serves with the link down (a {:?}, b {:?}, witness holder {:?})",
            r.a.engine.mode(),
            r.b.engine.mode(),
            r.w.holder,
        );
    }
    // The link returns.
    let mut unused = usize::MAX;
    r.meet_again(&what, &mut unused);
    for i in 0..100_000 {
        r.a.engine.wait_persisted();
        r.b.engine.wait_persisted();
        let any = r.turn(&mut unused);
        let synced = r.a.engine.mode() == Mode::Mirroring && r.b.engine.mode() == Mode::Mirroring;
        if i > 5 && !any && synced && r.a.engine.idle() && r.b.engine.idle() {
            if r.a.engine.ack_deadline().is_none() && r.b.engine.ack_deadline().is_none() {
                break;
            }
            std::thread::sleep(ACK_WINDOW);
        }
    }
    assert_eq!(
        (r.a.engine.mode(), r.b.engine.mode()),
        (Mode::Mirroring, Mode::Mirroring),
        "{what}: not back in sync"
    );
    let (da, db) = (r.a.disk.borrow(), r.b.disk.borrow());
    for w in &r.writes {
        if w.3 == Some(true) {
            assert_eq!(
                (da.bytes[w.1 as usize], db.bytes[w.1 as usize]),
                (w.2, w.2),
                "{what}: acknowledged write at {} lost",
                w.1
            );
        }
    }
    assert!(da.bytes == db.bytes, "{what}: replicas differ");
    drop((da, db));
    r.w.serve(&r.slots);
    assert_eq!(r.w.holder, None, "{what}: the grant was never given back");
    converged_counts(&r, &what);
}

#[test]
fn a_restart_at_any_turn_of_a_takeover_converges() {
    for step in 0..12 {
        takeover_with_restart(step, 0, true);
        takeover_with_restart(step, 1, true);
        takeover_with_restart(step, 1, false);
    }
}

/// Every fault after every message with one direction lagging the other at random (three
/// seeds): the order in which the two sites see each other's messages changes, not what is
/// delivered.
#[test]
fn faults_at_any_phase_of_a_resync_with_delayed_messages_converge() {
    for seed in [3, 17, 29] {
        for setup in [
            Source::LeaderGranted,
            Source::FollowerGranted,
            Source::LeaderWithoutGrant,
        ] {
            let all = resync_with_fault_jittered(setup, usize::MAX, Fault::Cut, Some(seed));
            for at in 0..=all {
                let fault = [
                    Fault::Cut,
                    Fault::RestartSource,
                    Fault::RestartTarget,
                    Fault::RestartBoth,
                    Fault::TargetLosesState,
                ][at % 5];
                resync_with_fault_jittered(setup, at, fault, Some(seed));
            }
        }
    }
}

/// A takeover whose witness answers are all lost at one turn (a grant recorded, its answer
/// lost; a release not taken; no heartbeat answered), with and without a restart at another.
#[test]
fn a_takeover_with_the_witness_answers_lost_at_any_turn_converges() {
    for lose in 0..12 {
        takeover_with_faults(99, 0, true, Some(lose), false);
        for step in [1, 3, 6] {
            takeover_with_faults(step, lose % 2, true, Some(lose), false);
        }
    }
}

/// The link stays down: the witness's answers all lost at any turn, and either site restarted
/// from its state at any turn, or the denied one without it (before or after the loss: a site fenced for want of an answer
/// restarted before the witness's word named it the holder included). Once the witness answers
/// again, one site must serve alone (never both, checked every turn), and all converge when
/// the link returns. Before the persisted fence for want of an answer, a restart after the
/// lost grant left both sites stopped for as long as the link was down.
#[test]
fn with_the_link_down_a_lost_answer_and_a_restart_at_any_turn_leave_one_site_serving() {
    for lose in 0..12usize {
        // (Restarts around the loss: before it, with it, and in the turns after it.)
        let mut steps = vec![lose.saturating_sub(1), lose, lose + 1, lose + 2, lose + 4];
        steps.retain(|&s| s < 12);
        steps.dedup();
        for step in steps {
            for who in 0..2 {
                takeover_with_faults(step, who, true, Some(lose), true);
            }
            // (b, denied, restarted as a new replica: a serves. a without its state is a
            // new replica that cannot serve, and b, denied, must not without an operator:
            // a may have served alone on the grant before it lost its disk.)
            takeover_with_faults(step, 1, false, Some(lose), true);
        }
    }
}
