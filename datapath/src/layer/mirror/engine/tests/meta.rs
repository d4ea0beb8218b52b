//! Replicated volume metadata (reservations): decided by the leader, installed at the
//! follower before the command completes.
//!
//! Model: two engines back to back with a counting `MetaHandler` on each. Invariants
//! checked: a command completes only after the peer installed the state it produced; a late
//! answer never completes a newer command.

use super::*;

/// A metadata handler over one counter: a command adds its first byte (0: refused with
/// status 0x83, nothing changes); the state is the counter's 8 bytes.
#[derive(Debug, Default)]
struct Counter(std::sync::Mutex<u64>, std::sync::atomic::AtomicBool);

impl MetaHandler for Counter {
    fn execute(&self, _: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>) {
        let mut c = self.0.lock().unwrap();
        match cmd.first() {
            Some(&n) if n > 0 => {
                *c += u64::from(n);
                (0, Some(c.to_le_bytes().to_vec()))
            }
            _ => (0x83, None),
        }
    }
    fn install(&self, _: usize, state: &[u8]) -> Install {
        let Ok(b) = <[u8; 8]>::try_from(state) else {
            return Install::Malformed;
        };
        if self.1.load(std::sync::atomic::Ordering::Relaxed) {
            return Install::Failed;
        }
        *self.0.lock().unwrap() = u64::from_le_bytes(b);
        Install::Done
    }
    fn full_state(&self, _: usize) -> Vec<Vec<u8>> {
        vec![self.0.lock().unwrap().to_le_bytes().to_vec()]
    }
}

fn with_meta(role: Role) -> (Site, Arc<Counter>) {
    let mut s = site(role, Duration::from_secs(60));
    let c = Arc::new(Counter::default());
    s.engine.cfg.meta = Some(Arc::clone(&c) as _);
    (s, c)
}

fn meta(s: &mut Site, io: &mut IoCx, slot: u32, cmd: &[u8]) -> Start {
    let tag = IoTag { conn: 1, slot };
    let r = s.engine.submit(io, 0, tag, Update::Meta(cmd), 0, false);
    if r == Start::Pending {
        s.outstanding += 1;
    }
    r
}

#[test]
fn metadata_is_decided_by_the_leader_and_installed_at_the_follower_before_completing() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut a, ca) = with_meta(Role::Leader);
    let (mut b, cb) = with_meta(Role::Follower);
    // Before any session: nothing is decided, at either site.
    assert_eq!(meta(&mut a, &mut io, 1, &[5]), Start::Done(Err(Errno::IO)));
    assert_eq!(meta(&mut b, &mut io, 1, &[5]), Start::Done(Err(Errno::IO)));
    *ca.0.lock().unwrap() = 40;
    // A normal session: the leader sends its whole state first.
    a.engine.session_start(&mut io, 0).unwrap();
    b.engine.session_start(&mut io, 0).unwrap();
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    assert_eq!(
        *cb.0.lock().unwrap(),
        40,
        "the leader's state was not pushed"
    );
    // The leader's own change completes only once the follower installed it.
    assert_eq!(meta(&mut a, &mut io, 2, &[2]), Start::Pending);
    collect(&mut a);
    assert_eq!(a.ok, 0, "completed before the follower had it");
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    assert_eq!(*cb.0.lock().unwrap(), 42);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1, 0));
    // A refusal changes nothing and completes at once with its status.
    assert_eq!(
        meta(&mut a, &mut io, 3, &[0]),
        Start::Done(meta_result(0x83))
    );
    // The follower's command is decided at the leader and completes with the state here.
    assert_eq!(meta(&mut b, &mut io, 4, &[8]), Start::Pending);
    assert_eq!(
        *ca.0.lock().unwrap(),
        42,
        "decided before the leader saw it"
    );
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    assert_eq!(*ca.0.lock().unwrap(), 50);
    collect(&mut b);
    assert_eq!(b.ok, 0, "completed before the state came back");
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    collect(&mut b);
    assert_eq!((b.ok, b.outstanding, *cb.0.lock().unwrap()), (1, 0, 50));
    assert_eq!(meta(&mut b, &mut io, 5, &[0]), Start::Pending);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    let (_, _, r) = b.engine.done.pop().unwrap();
    assert_eq!(r, meta_result(0x83));
    // A command in flight when the link breaks fails (its effect is settled by the next
    // session's full state).
    assert_eq!(meta(&mut b, &mut io, 6, &[1]), Start::Pending);
    b.engine.link_down("test");
    let (_, _, r) = b.engine.done.pop().unwrap();
    assert_eq!(r, Err(Errno::IO));
    assert!(b.engine.idle());
    // Forged answers are refused.
    a.engine.link_down("test");
    b.wire.clear();
    a.wire.clear();
    a.engine.session_start(&mut io, 0).unwrap();
    b.engine.session_start(&mut io, 0).unwrap();
    let forged = Header {
        id: 77,
        seq: 1,
        ..Header::new(Type::MetaState)
    };
    assert_eq!(
        b.engine.on_msg(&mut io, &forged, &[0; 8]),
        Err("META_STATE answers no outstanding request")
    );
    let bad = Header {
        id: wire::META_NO_ID,
        seq: 1,
        ..Header::new(Type::MetaState)
    };
    assert_eq!(
        b.engine.on_msg(&mut io, &bad, &[0; 3]),
        Err("malformed metadata state")
    );
    assert!(
        b.engine
            .on_msg(&mut io, &Header::new(Type::Meta), &[1])
            .is_err()
    );
}

#[test]
fn a_late_metadata_answer_never_completes_a_newer_request() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut a, _) = with_meta(Role::Leader);
    let (mut b, cb) = with_meta(Role::Follower);
    a.engine.session_start(&mut io, 0).unwrap();
    b.engine.session_start(&mut io, 0).unwrap();
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    // The first command times out before its answer comes.
    assert_eq!(meta(&mut b, &mut io, 1, &[3]), Start::Pending);
    b.engine.expire(Instant::now() + Duration::from_secs(120));
    let (_, tag, r) = b.engine.done.pop().unwrap();
    assert_eq!((tag.slot, r), (1, Err(Errno::IO)));
    // A refused second command must get its own answer, not the first one's.
    assert_eq!(meta(&mut b, &mut io, 2, &[0]), Start::Pending);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    let got: Vec<(u32, Result<(), Errno>)> = b
        .engine
        .done
        .drain(..)
        .map(|(_, t, r)| (t.slot, r))
        .collect();
    assert_eq!(got, vec![(2, meta_result(0x83))]);
    // The first one did take effect at the leader; the follower installed it anyway.
    assert_eq!(*cb.0.lock().unwrap(), 3);
    assert!(b.engine.idle());
}

#[test]
fn metadata_answers_wait_for_earlier_changes_and_an_uninstallable_state_keeps_the_link() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut a, _) = with_meta(Role::Leader);
    let (mut b, cb) = with_meta(Role::Follower);
    a.engine.session_start(&mut io, 0).unwrap();
    b.engine.session_start(&mut io, 0).unwrap();
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    // A change, then a refusal decided on it: the refusal waits for the change's ACK.
    assert_eq!(meta(&mut a, &mut io, 1, &[4]), Start::Pending);
    assert_eq!(meta(&mut a, &mut io, 2, &[0]), Start::Pending);
    collect(&mut a);
    assert_eq!(
        a.outstanding, 2,
        "answered before the follower had the change"
    );
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    let mut got: Vec<(u32, Result<(), Errno>)> = a
        .engine
        .done
        .drain(..)
        .map(|(_, t, r)| (t.slot, r))
        .collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(got, vec![(1, Ok(())), (2, meta_result(0x83))]);
    // The follower cannot install a state: the command fails, the link stays up.
    cb.1.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(meta(&mut a, &mut io, 3, &[1]), Start::Pending);
    deliver(&mut a, &mut b, &mut io, usize::MAX); // would panic if refused
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    let (_, t, r) = a.engine.done.pop().unwrap();
    assert_eq!((t.slot, r), (3, meta_result(META_INTERNAL)));
    assert!(a.engine.is_up() && b.engine.is_up());
}

/// A peer that never answers cannot make the follower keep metadata commands without bound:
/// their entries outlive their initiators (so a late answer finds no newer command in their
/// slot), but at most `MAX_WAITS` wait; one more is refused at once, and the session's end
/// frees them all.
#[test]
fn unanswered_metadata_commands_are_bounded() {
    use super::super::meta::MAX_WAITS;
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut b, _) = with_meta(Role::Follower);
    b.engine.session_start(&mut io, 0).unwrap();
    for slot in 0..MAX_WAITS as u32 {
        assert_eq!(meta(&mut b, &mut io, slot, &[1]), Start::Pending);
    }
    // Their initiators give up; the entries stay for the answers that never come.
    b.engine.expire(Instant::now() + Duration::from_secs(120));
    assert_eq!(b.engine.done.len(), MAX_WAITS);
    b.engine.done.clear();
    assert_eq!(b.engine.metas.len(), MAX_WAITS);
    assert_eq!(
        meta(&mut b, &mut io, 99_999, &[1]),
        Start::Done(meta_result(0x006)),
        "one more than the bound is refused at once"
    );
    assert_eq!(b.engine.metas.len(), MAX_WAITS);
    b.engine.link_down("test");
    assert_eq!(b.engine.metas.len(), 0);
}

/// Metadata commands from both sites with the link cut after every message (each way, every
/// phase: the session's full state, META, META_STATE, META_ACK), then a new session: both
/// sites hold the same state, every command is answered, and the state holds every command
/// answered OK (a failed one may or may not have taken effect: its outcome is unknown).
#[test]
fn metadata_converges_when_the_link_is_cut_after_any_message() {
    // Commands: (site 0 = leader a / 1 = follower b, increment).
    const CMDS: [(usize, u8); 4] = [(0, 1), (1, 2), (0, 4), (1, 8)];
    let run = |cut: usize| -> (usize, usize) {
        let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
        let (mut a, ca) = with_meta(Role::Leader);
        let (mut b, cb) = with_meta(Role::Follower);
        *ca.0.lock().unwrap() = 100;
        a.engine.session_start(&mut io, 0).unwrap();
        b.engine.session_start(&mut io, 0).unwrap();
        let mut outcome: Vec<Option<bool>> = vec![None; CMDS.len()];
        let mut budget = cut;
        let mut delivered = 0;
        let record = |s: &mut Site, outcome: &mut Vec<Option<bool>>| {
            for (_, tag, r) in s.engine.done.drain(..) {
                outcome[tag.slot as usize - 1] = Some(r.is_ok());
            }
        };
        for (i, &(at, inc)) in CMDS.iter().enumerate() {
            let s = if at == 0 { &mut a } else { &mut b };
            let r = meta(s, &mut io, i as u32 + 1, &[inc]);
            if let Start::Done(r) = r {
                outcome[i] = Some(r.is_ok());
            }
            // A few messages between commands, one at a time each way.
            for _ in 0..3 {
                for dir in 0..2 {
                    if budget == 0 {
                        break;
                    }
                    let n = if dir == 0 {
                        deliver(&mut a, &mut b, &mut io, 1)
                    } else {
                        deliver(&mut b, &mut a, &mut io, 1)
                    };
                    budget -= n;
                    delivered += n;
                }
            }
            record(&mut a, &mut outcome);
            record(&mut b, &mut outcome);
        }
        // Whatever is left goes while the budget lasts.
        while budget > 0 {
            let n = deliver(&mut a, &mut b, &mut io, 1) + deliver(&mut b, &mut a, &mut io, 1);
            if n == 0 {
                break;
            }
            budget = budget.saturating_sub(n);
            delivered += n;
        }
        record(&mut a, &mut outcome);
        record(&mut b, &mut outcome);
        if cut != usize::MAX {
            a.engine.link_down("test");
            b.engine.link_down("test");
            a.wire.clear();
            b.wire.clear();
            record(&mut a, &mut outcome);
            record(&mut b, &mut outcome);
            a.engine.session_start(&mut io, 0).unwrap();
            b.engine.session_start(&mut io, 0).unwrap();
            for _ in 0..20 {
                deliver(&mut a, &mut b, &mut io, usize::MAX);
                deliver(&mut b, &mut a, &mut io, usize::MAX);
            }
            record(&mut a, &mut outcome);
            record(&mut b, &mut outcome);
        }
        let (va, vb) = (*ca.0.lock().unwrap(), *cb.0.lock().unwrap());
        assert_eq!(va, vb, "cut after {cut}: the sites' metadata differ");
        assert!(
            outcome.iter().all(Option::is_some),
            "cut after {cut}: a command was never answered: {outcome:?}"
        );
        let ok: u64 = CMDS
            .iter()
            .zip(&outcome)
            .filter(|(_, o)| **o == Some(true))
            .map(|((_, inc), _)| u64::from(*inc))
            .sum();
        let all: u64 = CMDS.iter().map(|(_, inc)| u64::from(*inc)).sum();
        // Increments are distinct powers of two: the state names the commands applied.
        let applied = va - 100;
        assert!(
            applied & ok == ok && applied <= all,
            "cut after {cut}: state {va} lacks a command answered OK ({outcome:?})"
        );
        if cut == usize::MAX {
            assert_eq!(applied, all, "without a cut every command applies");
            assert!(outcome.iter().all(|o| *o == Some(true)));
        }
        assert!(a.engine.idle() && b.engine.idle(), "cut after {cut}");
        let failed = outcome.iter().filter(|o| **o == Some(false)).count();
        (delivered, failed)
    };
    let (all, _) = run(usize::MAX);
    assert!(all >= 8, "only {all} messages");
    let mut cuts_with_failures = 0;
    for cut in 0..=all {
        cuts_with_failures += usize::from(run(cut).1 > 0);
    }
    // The cuts do land in the middle of commands (the check above is exercised).
    assert!(cuts_with_failures > 0, "no cut failed a command");
}

/// Counts `peer_restarted` calls.
#[derive(Debug, Default)]
struct Restarts(std::sync::atomic::AtomicU32);

impl MetaHandler for Restarts {
    fn execute(&self, _: usize, _: &[u8]) -> (u16, Option<Vec<u8>>) {
        (0, None)
    }
    fn install(&self, _: usize, _: &[u8]) -> Install {
        Install::Done
    }
    fn full_state(&self, _: usize) -> Vec<Vec<u8>> {
        Vec::new()
    }
    fn peer_restarted(&self, _: usize) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The handlers hear of a peer process other than the previous session's (its sessions'
/// RESERVEs go), not of this process's first session nor of a session with the same process.
#[test]
fn a_new_peer_incarnation_is_told_to_the_metadata_handlers() {
    let mut s = site(Role::Leader, Duration::from_secs(60));
    let r = Arc::new(Restarts::default());
    let mut router = MetaRouter::new();
    assert!(router.add(2, Arc::clone(&r) as _));
    s.engine.cfg.meta = Some(Arc::new(router) as _);
    let n = || r.0.load(std::sync::atomic::Ordering::Relaxed);
    s.engine.set_peer_incarnation(7);
    assert_eq!(n(), 0, "the first peer this process meets");
    s.engine.set_peer_incarnation(7);
    assert_eq!(n(), 0, "the same peer process again (a link flap)");
    s.engine.set_peer_incarnation(8);
    assert_eq!(n(), 1, "the peer restarted");
}

/// A META_ACK for a token this site never sent (beyond the last META_STATE it sent: a buggy
/// or compromised peer, or `seq` at its largest value) is refused and the link dropped; it
/// must not complete commands whose state the peer has not installed.
#[test]
fn a_meta_ack_for_a_token_never_sent_is_refused_and_completes_nothing() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let (mut a, _ca) = with_meta(Role::Leader);
    let (mut b, cb) = with_meta(Role::Follower);
    a.engine.session_start(&mut io, 0).unwrap();
    b.engine.session_start(&mut io, 0).unwrap();
    // The full-state push (token 1), installed and acknowledged.
    deliver(&mut a, &mut b, &mut io, usize::MAX);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    // The leader's change (token 2) is queued, not delivered.
    assert_eq!(meta(&mut a, &mut io, 1, &[3]), Start::Pending);
    a.engine.take_outbox(&mut a.wire);
    for token in [3, u64::MAX] {
        let forged = Header {
            seq: token,
            ..Header::new(Type::MetaAck)
        };
        assert_eq!(
            a.engine.on_msg(&mut io, &forged, &[]),
            Err("META_ACK for a state not sent")
        );
        collect(&mut a);
        assert_eq!(
            (a.ok, a.outstanding),
            (0, 1),
            "completed before the follower installed the state"
        );
    }
    // The real acknowledgement still completes it.
    receive(&mut a, &mut b, &mut io, usize::MAX);
    assert_eq!(*cb.0.lock().unwrap(), 3);
    deliver(&mut b, &mut a, &mut io, usize::MAX);
    collect(&mut a);
    assert_eq!((a.ok, a.outstanding), (1, 0));
}

/// A META_STATE with no id (a state pushed by the site whose state wins) sent to the site
/// that decides: the leader of a normal session, or a survivor resyncing its peer. Neither
/// ever receives one (the follower and a resync target only send META and META_ACK), so it is
/// forged or misplaced: refused like any forged message (the link dropped), and never
/// installed. Before, it was installed in any phase: the follower could overwrite the
/// leader's (or the survivor's) reservations, which the leader then persisted and decided on.
#[test]
fn a_meta_state_at_the_site_that_decides_is_refused_and_never_installed() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let forged = Header {
        id: wire::META_NO_ID,
        seq: 1,
        ..Header::new(Type::MetaState)
    };
    // The leader of a normal session.
    let (mut a, ca) = with_meta(Role::Leader);
    let (mut b, _cb) = with_meta(Role::Follower);
    *ca.0.lock().unwrap() = 40;
    a.engine.session_start(&mut io, 0).unwrap();
    b.engine.session_start(&mut io, 0).unwrap();
    exchange_meta(&mut a, &mut b, &mut io);
    assert!(
        a.engine
            .on_msg(&mut io, &forged, &7u64.to_le_bytes())
            .is_err()
    );
    assert_eq!(
        *ca.0.lock().unwrap(),
        40,
        "the leader installed a follower's state"
    );
    // A survivor resyncing its peer (the leader or the follower).
    for grant_to_a in [true, false] {
        let (mut a, mut b, mut io) = lose_peer(grant_to_a);
        let c = Arc::new(Counter::default());
        *c.0.lock().unwrap() = 40;
        meet(&mut a, &mut b, &mut io);
        let source = if grant_to_a { &mut a } else { &mut b };
        assert_eq!(source.engine.mode(), Mode::Survivor);
        source.engine.cfg.meta = Some(Arc::clone(&c) as _);
        assert!(
            source
                .engine
                .on_msg(&mut io, &forged, &7u64.to_le_bytes())
                .is_err()
        );
        assert_eq!(
            *c.0.lock().unwrap(),
            40,
            "the survivor installed its target's state"
        );
    }
}

/// Deliver both ways until nothing moves.
fn exchange_meta(a: &mut Site, b: &mut Site, io: &mut IoCx) {
    for _ in 0..10 {
        deliver(a, b, io, usize::MAX);
        deliver(b, a, io, usize::MAX);
    }
}

/// The legitimate META_STATEs with no id still install: the leader's at the follower, a
/// resync source's at its target, and a survivor's change that crosses the target's
/// RESYNC_DONE_ACK (the target, the leader here, mirrors already; the source decides alone
/// until it has the confirmation).
#[test]
fn a_sources_meta_state_crossing_the_targets_confirmation_is_installed() {
    let (mut a, mut b, mut io) = lose_peer(false);
    let mut rng = Rng(3);
    let (ca, cb) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
    *cb.0.lock().unwrap() = 40;
    a.engine.cfg.meta = Some(Arc::clone(&ca) as _);
    b.engine.cfg.meta = Some(Arc::clone(&cb) as _);
    meet(&mut a, &mut b, &mut io);
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Resyncing, Mode::Survivor)
    );
    // Until the target (a, the leader) mirrors again, without letting its confirmation out.
    for _ in 0..100_000 {
        if a.engine.mode() == Mode::Mirroring {
            break;
        }
        let now = Instant::now();
        b.engine.tick(&mut io, now);
        a.engine.tick(&mut io, now);
        complete_one(&mut a, &mut io, &mut rng);
        complete_one(&mut b, &mut io, &mut rng);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        if a.engine.mode() != Mode::Mirroring {
            deliver(&mut a, &mut b, &mut io, usize::MAX);
        }
    }
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Mirroring, Mode::Survivor)
    );
    assert_eq!(*ca.0.lock().unwrap(), 40, "the source's full state");
    // The survivor decides alone; its change crosses a's confirmation.
    let r = meta(&mut b, &mut io, 1, &[2]);
    assert!(matches!(r, Start::Done(Ok(())) | Start::Pending), "{r:?}");
    b.engine.take_outbox(&mut b.wire);
    assert!(receive(&mut b, &mut a, &mut io, usize::MAX) > 0);
    assert_eq!(
        *ca.0.lock().unwrap(),
        42,
        "the survivor's change was not installed"
    );
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    assert_eq!(*cb.0.lock().unwrap(), 42);
}

/// A META (a follower's metadata command) at a leader that does not mirror: a survivor
/// resyncing the follower, or a resync target. The follower sends META only while it mirrors
/// (a resync target, or a survivor, decides or refuses its commands itself), so this one is
/// forged or misplaced: refused (the link dropped), never executed. Before, the leader
/// executed it in any mode: a survivor's state (the one that wins) changed by a command no
/// host gave, and persisted.
#[test]
fn a_meta_at_a_leader_that_does_not_mirror_is_refused_and_never_executed() {
    for grant_to_a in [true, false] {
        let (mut a, mut b, mut io) = lose_peer(grant_to_a);
        let c = Arc::new(Counter::default());
        *c.0.lock().unwrap() = 40;
        meet(&mut a, &mut b, &mut io);
        let mode = if grant_to_a {
            Mode::Survivor
        } else {
            Mode::Resyncing
        };
        assert_eq!(a.engine.mode(), mode);
        a.engine.cfg.meta = Some(Arc::clone(&c) as _);
        let forged = Header {
            id: 1,
            ..Header::new(Type::Meta)
        };
        assert_eq!(
            a.engine.on_msg(&mut io, &forged, &[5]),
            Err("META at a leader that does not mirror"),
            "{mode:?}"
        );
        assert_eq!(*c.0.lock().unwrap(), 40, "{mode:?}: executed");
    }
}

/// Run a resync of a (the leader, fenced) by b (the survivor) until a mirrors again, its
/// RESYNC_DONE_ACK not yet delivered to b. Both sites carry a counter at 40.
fn target_leader_mirroring() -> (Site, Site, IoCx, Rng, Arc<Counter>, Arc<Counter>) {
    let (mut a, mut b, mut io) = lose_peer(false);
    let mut rng = Rng(5);
    let (ca, cb) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
    *cb.0.lock().unwrap() = 40;
    a.engine.cfg.meta = Some(Arc::clone(&ca) as _);
    b.engine.cfg.meta = Some(Arc::clone(&cb) as _);
    meet(&mut a, &mut b, &mut io);
    for _ in 0..100_000 {
        if a.engine.mode() == Mode::Mirroring {
            break;
        }
        let now = Instant::now();
        b.engine.tick(&mut io, now);
        a.engine.tick(&mut io, now);
        complete_one(&mut a, &mut io, &mut rng);
        complete_one(&mut b, &mut io, &mut rng);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        if a.engine.mode() != Mode::Mirroring {
            deliver(&mut a, &mut b, &mut io, usize::MAX);
        }
    }
    assert_eq!(
        (a.engine.mode(), b.engine.mode()),
        (Mode::Mirroring, Mode::Survivor)
    );
    (a, b, io, rng, ca, cb)
}

/// A resync target that leads the session takes its source's metadata states only until the
/// source has its confirmation (a change may cross it): once the source mirrors (as the
/// follower, sending META, never META_STATE), the target is the site whose state wins, and a
/// META_STATE without id is refused like at any leader of a mirroring session. Before, it was
/// taken for the rest of the session: forged or misplaced, it overwrote the leader's state.
#[test]
fn a_resync_target_leading_the_session_refuses_meta_states_once_its_source_mirrors() {
    let (mut a, mut b, mut io, mut rng, ca, _cb) = target_leader_mirroring();
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    exchange_meta(&mut a, &mut b, &mut io);
    let forged = Header {
        id: wire::META_NO_ID,
        seq: 1,
        ..Header::new(Type::MetaState)
    };
    assert!(
        a.engine
            .on_msg(&mut io, &forged, &7u64.to_le_bytes())
            .is_err(),
        "a META_STATE at the leader of a mirroring session, its resync's source in sync, was taken"
    );
    assert_eq!(*ca.0.lock().unwrap(), 40, "installed");
}

/// The target (the leader) mirrors again and its host's metadata command arrives while the
/// survivor's own change crosses the target's RESYNC_DONE_ACK: each site then installs the
/// other's state over its own, and with both commands acknowledged the sites' states differ
/// for good. The target must not decide before the source has its confirmation (the
/// command is refused as without a session, the host retries), or the states must converge.
#[test]
fn a_target_leaders_metadata_command_never_splits_the_state_with_a_crossing_survivors() {
    let (mut a, mut b, mut io, mut rng, ca, cb) = target_leader_mirroring();
    // The survivor decides alone; its state goes out behind nothing from a.
    let rb = meta(&mut b, &mut io, 1, &[2]);
    b.engine.take_outbox(&mut b.wire);
    // a's host's command, decided by a (mirroring, the leader) before b's state arrives.
    let ra = meta(&mut a, &mut io, 2, &[5]);
    a.engine.take_outbox(&mut a.wire);
    receive(&mut b, &mut a, &mut io, usize::MAX);
    receive(&mut a, &mut b, &mut io, usize::MAX);
    run_until_in_sync(&mut a, &mut b, &mut io, &mut rng);
    exchange_meta(&mut a, &mut b, &mut io);
    collect(&mut a);
    collect(&mut b);
    let (va, vb) = (*ca.0.lock().unwrap(), *cb.0.lock().unwrap());
    // Both commands done (a's held until b had its confirmation, then decided).
    assert_eq!((a.ok, a.failed, b.ok, b.failed, va), (1, 20, 20, 0, 47));
    assert_eq!(
        va, vb,
        "metadata differs between the sites (a's command {ra:?}, b's {rb:?}; a ok {} failed {}, b ok {} failed {})",
        a.ok, a.failed, b.ok, b.failed
    );
}

/// The target's window for its source's crossing META_STATE closes only at a PONG for the
/// PING sent behind its confirmation: a PONG carrying a clock this site never sent (later
/// than its own clock now: forged, or a peer's bug) leaves it open, as `on_pong` ignores such
/// a PONG for the lease. Before, any PONG at or past the mark closed it: the target decided
/// its host's commands while the source could still decide alone (both states crossing).
#[test]
fn a_pong_for_a_ping_never_sent_does_not_close_the_targets_window() {
    let (mut a, _b, mut io, _rng, _ca, _cb) = target_leader_mirroring();
    assert!(a.engine.peer_meta_crossing(), "the window is not open");
    let forged = Header {
        seq: u64::MAX / 2,
        ..Header::new(Type::Pong)
    };
    let _ = a.engine.on_msg(&mut io, &forged, &[]);
    assert!(
        a.engine.peer_meta_crossing(),
        "a PONG for a PING never sent closed the window"
    );
}

/// Sites a (leader, its state file in `dir` written by the returned persister) and b
/// (follower), each with a metadata handler counting commands, in session and in sync.
#[allow(clippy::type_complexity)]
fn meta_pair_in_session(
    dir: &std::path::Path,
    io: &mut IoCx,
) -> (
    (Site, Arc<Counter>),
    (Site, Arc<Counter>),
    Arc<crate::layer::mirror::persist::Persister>,
) {
    let (mut a, ca) = with_meta(Role::Leader);
    let (mut b, cb) = with_meta(Role::Follower);
    let p = crate::layer::mirror::persist::Persister::spawn().unwrap();
    a.engine.cfg.state_file = Some(dir.join("a"));
    a.engine.set_persister(Arc::clone(&p));
    b.engine.cfg.state_file = Some(dir.join("b"));
    b.engine
        .set_persister(crate::layer::mirror::persist::Persister::spawn().unwrap());
    a.engine.session_start(io, 0).unwrap();
    b.engine.session_start(io, 0).unwrap();
    for _ in 0..3 {
        deliver(&mut a, &mut b, io, usize::MAX);
        deliver(&mut b, &mut a, io, usize::MAX);
    }
    assert!(a.engine.wait_persisted());
    ((a, ca), (b, cb), p)
}

/// A metadata command at the old leader while it waits for "follower of term 1" to reach its
/// disk before it sends SWITCH (its persister held): b still follows and would drop the link
/// at a META, so none goes; it is held and sent after SWITCH, decided by the new leader b and
/// answered without an error, the state the same at both sites.
#[test]
fn a_metadata_command_at_the_old_leader_before_its_switch_waits_for_the_new_leader() {
    use crate::layer::mirror::stats::SWITCH_GIVE;
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let ((mut a, ca), (mut b, cb), p) = meta_pair_in_session(dir.path(), &mut io);
    p.hold(true);
    a.engine.stats().switch_req.store(SWITCH_GIVE, Relaxed);
    a.engine.tick(&mut io, Instant::now());
    let handing = matches!(
        a.engine.sw.phase,
        super::super::switchover::Phase::Handing { .. }
    );
    assert_eq!(meta(&mut a, &mut io, 1, &[3]), Start::Pending);
    for _ in 0..10 {
        a.engine.tick(&mut io, Instant::now());
    }
    a.engine.take_outbox(&mut a.wire);
    let mut at = 0;
    let mut early = Vec::new();
    while let wire::Decoded::Msg(h, r) = wire::decode(&a.wire[at..]) {
        if matches!(
            h.ty,
            wire::Type::Meta | wire::Type::MetaState | wire::Type::Switch
        ) {
            early.push(h.ty);
        }
        at += r.end;
    }
    p.hold(false);
    assert!(handing, "a does not wait for its new role on disk");
    assert!(
        early.is_empty(),
        "{early:?} sent before a's new role is on disk"
    );
    for _ in 0..50 {
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        a.engine.wait_persisted();
        b.engine.wait_persisted();
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
        collect(&mut a);
        if a.outstanding == 0 {
            break;
        }
    }
    assert_eq!((a.ok, a.failed, a.outstanding), (1, 0, 0), "the command");
    assert!(b.engine.leads() && !a.engine.leads(), "no switchover");
    assert_eq!((*ca.0.lock().unwrap(), *cb.0.lock().unwrap()), (3, 3));
}

/// The old leader's metadata commands held while its "follower of term 1" does not reach the
/// disk (its persister hangs without an error) are bounded like everything else a host waits
/// for in the mirror: each fails with EIO at its peer timeout (counted as a timeout, never
/// decided: the counter is unchanged at both sites), and at most `MAX_WAITS` are held at once,
/// one more refused at once with Internal Error. Before, they waited, without limit, until
/// the link dropped.
#[test]
fn metadata_commands_held_by_a_hand_over_that_never_reaches_the_disk_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    let ((mut a, ca), (mut b, cb), p) = meta_pair_in_session(dir.path(), &mut io);
    let _unhold = super::actlog::start_held_hand_over(&mut a, &mut io, &p);
    use std::sync::atomic::Ordering::Relaxed;
    let limit = super::super::meta::MAX_WAITS;
    for i in 0..limit {
        assert_eq!(
            meta(&mut a, &mut io, i as u32, &[1]),
            Start::Pending,
            "command {i}"
        );
    }
    assert_eq!(
        meta(&mut a, &mut io, limit as u32, &[1]),
        Start::Done(meta_result(META_INTERNAL)),
        "held beyond the limit"
    );
    a.engine.tick(&mut io, Instant::now());
    assert!(a.engine.done.is_empty(), "answered before the timeout");
    let late = Instant::now() + a.engine.cfg.peer_timeout + Duration::from_millis(1);
    a.engine.tick(&mut io, late);
    assert!(
        matches!(
            a.engine.sw.phase,
            super::super::switchover::Phase::Handing { .. }
        ),
        "the hand-over ended: {:?}",
        a.engine.sw.phase
    );
    let results: Vec<_> = a.engine.done.drain(..).map(|(_, _, r)| r).collect();
    assert_eq!(results.len(), limit, "held past the peer timeout");
    assert!(results.iter().all(|r| *r == Err(Errno::IO)), "{results:?}");
    assert_eq!(a.engine.stats().timeouts.load(Relaxed), limit as u64);
    a.outstanding -= limit;
    // Not decided anywhere, not even later.
    p.hold(false);
    for _ in 0..20 {
        let now = Instant::now();
        a.engine.tick(&mut io, now);
        b.engine.tick(&mut io, now);
        a.engine.wait_persisted();
        deliver(&mut a, &mut b, &mut io, usize::MAX);
        deliver(&mut b, &mut a, &mut io, usize::MAX);
    }
    assert!(a.engine.done.is_empty(), "{:?}", a.engine.done);
    assert_eq!((*ca.0.lock().unwrap(), *cb.0.lock().unwrap()), (0, 0));
}
